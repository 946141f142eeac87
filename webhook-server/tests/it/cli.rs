//! The `webhook-server` binary: `run` offline, and configs refused at start.

use std::path::Path;
use std::process::{Command, Output};

use base64::Engine as _;

use crate::common::{TempConfig, entry, guest, policy_module, workspace};

fn server(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_webhook-server"))
        .args(args)
        .env("RUST_LOG", "error")
        .output()
        .unwrap_or_else(|e| panic!("running webhook-server: {e}"))
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn run_fixture(file: &str) -> (Output, serde_json::Value) {
    run_policy("ingress-tls", &workspace().join("policies-wasm/ingress-tls/test_data").join(file))
}

/// `webhook-server run` of the default config's `policy` on a review file.
fn run_policy(policy: &str, request: &Path) -> (Output, serde_json::Value) {
    let config = workspace().join("webhook-server/config/default.yaml");
    let out = server(&[
        "run",
        "--config",
        &config.to_string_lossy(),
        "--policy",
        policy,
        "--request",
        &request.to_string_lossy(),
    ]);
    let review =
        serde_json::from_str(&stdout(&out)).unwrap_or_else(|e| panic!("{}: {e}: {}", request.display(), stderr(&out)));
    (out, review)
}

/// The mutating policy's acceptance through the binary: `run` answers with a
/// base64 JSONPatch whose application gives the fixture's expected object,
/// and a second `run` on that object answers with no patch.
#[test]
fn run_returns_a_patch_that_gives_the_expected_object_and_nothing_on_a_second_run() {
    let data = workspace().join("policies-wasm/service-account-identity/test_data");
    let scratch = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    for (fixture, expected) in [
        ("sa-bound-create.json", "patched/sa-bound-create.yaml"),
        ("pod-default-sa.json", "patched/pod-default-sa.yaml"),
    ] {
        let (out, answer) = run_policy("service-account-identity", &data.join(fixture));
        assert!(out.status.success(), "{fixture}: {}", stderr(&out));
        let response = &answer["response"];
        assert_eq!(response["allowed"], true, "{fixture}: {response}");
        assert_eq!(response["patchType"], "JSONPatch", "{fixture}: {response}");
        let b64 = response["patch"].as_str().unwrap_or_else(|| panic!("{fixture}: no patch: {response}"));
        let bytes = base64::engine::general_purpose::STANDARD.decode(b64).unwrap_or_else(|e| panic!("{fixture}: {e}"));
        let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{fixture}: {e}"));

        let mut review: serde_json::Value =
            serde_json::from_str(&fixture_text(&data.join(fixture))).unwrap_or_default();
        let object = review.pointer_mut("/request/object").unwrap_or_else(|| panic!("{fixture}: no object"));
        json_patch::patch(object, &patch).unwrap_or_else(|e| panic!("{fixture}: patch does not apply: {e}"));
        let wanted: serde_json::Value =
            serde_yaml::from_str(&fixture_text(&data.join(expected))).unwrap_or_else(|e| panic!("{expected}: {e}"));
        assert_eq!(*object, wanted, "{fixture}: patched object differs from {expected}");

        let again = scratch.path().join(fixture);
        std::fs::write(&again, review.to_string()).unwrap_or_else(|e| panic!("{e}"));
        let (out, second) = run_policy("service-account-identity", &again);
        assert!(out.status.success(), "{fixture}: {}", stderr(&out));
        assert_eq!(second["response"]["allowed"], true, "{fixture}: second run: {}", second["response"]);
        assert!(
            second["response"].get("patch").is_none(),
            "{fixture}: second run patched again: {}",
            second["response"]
        );
    }
}

/// `run --context`: a context-aware policy's lookups answered from a file
/// of objects, as documents or as the `kind: List` that `kubectl get -o
/// yaml` prints.
#[test]
fn run_answers_lookups_from_a_context_file() {
    let config = workspace().join("webhook-server/config/default.yaml");
    let data = workspace().join("policies-wasm/hpa-resource-requests/test_data");
    let run = |context: Option<&str>| {
        let request = data.join("hpa-target-lacks-requests.json");
        let mut args = vec![
            "run".to_string(),
            "--config".into(),
            config.to_string_lossy().into_owned(),
            "--policy".into(),
            "hpa-resource-requests".into(),
            "--request".into(),
            request.to_string_lossy().into_owned(),
        ];
        if let Some(file) = context {
            args.extend(["--context".into(), data.join(file).to_string_lossy().into_owned()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = server(&args);
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_str::<serde_json::Value>(&stdout(&out)).unwrap_or_else(|e| panic!("{e}: {}", stdout(&out)))
    };
    let denied = run(Some("context/deployment-lacking-requests.yaml"));
    assert_eq!(denied["response"]["allowed"], false, "{denied}");
    assert!(
        denied["response"]["status"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("container \"nginx\" has no cpu request")
    );
    let allowed = run(Some("context/deployment-with-requests.yaml"));
    assert_eq!(allowed["response"]["allowed"], true, "{allowed}");
    let without = run(None);
    assert_eq!(without["response"]["allowed"], true, "{without}");
    assert!(
        without["response"]["warnings"][0].as_str().unwrap_or_default().contains("does not exist yet"),
        "{without}"
    );
}

/// The README's `cargo xtask run` serves the default config with
/// `--context`: every built-in policy, no cluster. It gets ready and the
/// context-aware policy answers from the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_a_context_file_needs_no_cluster() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("{e}"));
    let config = workspace().join("webhook-server/config/default.yaml");
    let context = workspace().join("webhook-server/config/context.yaml");
    let mut child = Command::new(env!("CARGO_BIN_EXE_webhook-server"))
        .args(["serve", "--config"])
        .arg(&config)
        .arg("--context")
        .arg(&context)
        .args(["--addr", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "warn")
        .env_remove("KUBECONFIG")
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let ready = loop {
        let answer = client.get(format!("{base}/readyz")).send().await;
        if let Ok(r) = answer
            && r.status().is_success()
        {
            break r.text().await.unwrap_or_default();
        }
        if std::time::Instant::now() > deadline || child.try_wait().ok().flatten().is_some() {
            let _ = child.kill();
            panic!("serve did not get ready");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let body = std::fs::read(
        workspace().join("policies-wasm/hpa-resource-requests/test_data/deployment-update-lacks-requests.json"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let answer = client.post(format!("{base}/validate/hpa-resource-requests")).body(body).send().await;
    let review: serde_json::Value = match answer {
        Ok(r) => r.json().await.unwrap_or_default(),
        Err(e) => serde_json::json!({"error": e.to_string()}),
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(ready.contains("3 policies"), "{ready}");
    assert_eq!(review["response"]["allowed"], false, "{review}");
    let message = review["response"]["status"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("HorizontalPodAutoscaler \"clipper-backend\" scales it"), "{message}");
}

fn fixture_text(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn run_prints_the_same_verdicts_without_a_server() {
    let (out, denied) = run_fixture("no-tls.json");
    assert!(out.status.success(), "exit {:?}: {}", out.status, stderr(&out));
    assert_eq!(denied["response"]["allowed"], false);
    assert_eq!(denied["response"]["uid"], "8660cdff-db1c-4bcd-99bf-7eb8710856cd");
    assert!(denied["response"]["status"]["message"].as_str().unwrap_or_default().contains("api.example.com"));

    let (out, allowed) = run_fixture("covered.json");
    assert!(out.status.success());
    assert_eq!(allowed["response"]["allowed"], true);
}

#[test]
fn run_exits_non_zero_when_it_cannot_evaluate() {
    let config = TempConfig::new(&format!("policies:\n{}", entry("trap", &guest("trap"), "")));
    let request = workspace().join("webhook-server/tests/fixtures/pod-create.json");
    let out = server(&[
        "run",
        "--config",
        &config.path.to_string_lossy(),
        "--policy",
        "trap",
        "--request",
        &request.to_string_lossy(),
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("trapped"), "{}", stderr(&out));
    let review: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap_or_default();
    assert_eq!(review["response"]["allowed"], false, "the failurePolicy answer is still printed");

    let out = server(&["run", "--config", &config.path.to_string_lossy(), "--policy", "nope", "--request", "x"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("no policy named \"nope\" (it has: trap)"), "{}", stderr(&out));
}

/// `serve` refuses a bad config before binding; the message names the policy.
fn refused_at_start(yaml: &str) -> String {
    let config = TempConfig::new(yaml);
    let out = server(&["serve", "--config", &config.path.to_string_lossy(), "--addr", "127.0.0.1:0"]);
    assert_eq!(out.status.code(), Some(2), "serve should refuse: {}", stderr(&out));
    stderr(&out)
}

#[test]
fn config_with_a_wasi_module_is_refused_at_start() {
    let e = refused_at_start(&format!("policies:\n{}", entry("sneaky", &guest("forbidden_import"), "")));
    assert!(e.contains("policy \"sneaky\"") && e.contains("wasi_snapshot_preview1::fd_write"), "{e}");
}

#[test]
fn invalid_settings_are_refused_at_start() {
    let e = refused_at_start(&format!(
        "policies:\n{}",
        entry("ingress-tls", &policy_module("ingress-tls"), "settings: {allowDefaultCertificat: true}")
    ));
    assert!(e.contains("policy \"ingress-tls\": invalid settings") && e.contains("allowDefaultCertificat"), "{e}");
}

#[test]
fn unknown_config_field_and_missing_module_are_refused() {
    let e = refused_at_start("policies:\n- name: a\n  module: a.wasm\n  timeout: 3\n");
    assert!(e.contains("unknown field `timeout`"), "{e}");
    let e = refused_at_start("policies:\n- name: gone\n  module: /nonexistent/gone.wasm\n");
    assert!(e.contains("policy \"gone\": reading module /nonexistent/gone.wasm"), "{e}");
    let e = refused_at_start(&format!(
        "policies:\n{}",
        entry("pinned", &guest("allow_all"), &format!("sha256: \"{}\"", "0".repeat(64)))
    ));
    assert!(e.contains("policy \"pinned\"") && e.contains("but the config pins"), "{e}");
}

#[test]
fn check_validates_a_good_config() {
    let config = workspace().join("webhook-server/config/default.yaml");
    let out = server(&["check", "--config", &config.to_string_lossy()]);
    assert!(out.status.success(), "{}", stderr(&out));
    for policy in ["ingress-tls", "service-account-identity", "hpa-resource-requests"] {
        assert!(stdout(&out).contains(policy), "{policy} not in {}", stdout(&out));
    }
}

#[test]
fn budgets_and_bad_durations_are_refused_at_start() {
    let yaml = format!(
        "policies:\n{}{}",
        entry("a", &guest("allow_all"), "maxConcurrent: 8\nmemoryLimitMiB: 64"),
        entry("b", &guest("allow_all"), "maxConcurrent: 4\nmemoryLimitMiB: 32")
    );
    let config = TempConfig::new(&yaml);
    let path = config.path.to_string_lossy().into_owned();
    let out = server(&["serve", "--config", &path, "--addr", "127.0.0.1:0", "--memory-budget-mib", "512"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("640 MiB of guest memory") && stderr(&out).contains("a 8 × 64 MiB + b 4 × 32 MiB"),
        "{}",
        stderr(&out)
    );
    let out = server(&["serve", "--config", &path, "--addr", "127.0.0.1:0", "--max-instances", "10"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("12 evaluations at once"), "{}", stderr(&out));
    // Was a panic (Duration::from_secs_f64(inf)); now a usage error naming the value.
    for bad in ["inf", "NaN", "-1", "0"] {
        let out = server(&["serve", "--config", &path, &format!("--reload-interval={bad}")]);
        assert_eq!(out.status.code(), Some(2), "--reload-interval {bad}: {}", stderr(&out));
        assert!(stderr(&out).contains("--reload-interval") && !stderr(&out).contains("panicked"), "{}", stderr(&out));
    }
}

/// A rollout, as the pod sees it: on SIGTERM the server reports not ready
/// but keeps answering through `--shutdown-delay` (while endpoints move),
/// then closes its listener, finishes the request in flight, and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_keeps_serving_through_the_delay_then_drains() {
    use std::time::{Duration, Instant};
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("{e}"));
    let config = TempConfig::new(&format!(
        "policies:\n{}{}",
        entry("allow-all", &guest("allow_all"), ""),
        entry("slow", &guest("loop_forever"), "timeoutMs: 1500")
    ));
    let mut child = Command::new(env!("CARGO_BIN_EXE_webhook-server"))
        .args(["serve", "--config"])
        .arg(&config.path)
        .args(["--addr", &format!("127.0.0.1:{port}"), "--shutdown-delay", "1.5", "--shutdown-grace", "5"])
        .env("RUST_LOG", "error")
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    // A new connection per request, as after an endpoint change.
    let client = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap_or_else(|e| panic!("{e}"));
    let base = format!("http://127.0.0.1:{port}");
    let body = fixture_text(&workspace().join("webhook-server/tests/fixtures/pod-create.json"));
    let status = |path: &'static str| {
        let (client, base) = (client.clone(), base.clone());
        async move { client.get(format!("{base}{path}")).send().await.map(|r| r.status().as_u16()) }
    };
    let admit = |policy: &'static str| {
        let (client, base, body) = (client.clone(), base.clone(), body.clone());
        async move {
            let r = client.post(format!("{base}/validate/{policy}")).body(body).send().await?;
            r.json::<serde_json::Value>().await
        }
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while status("/readyz").await.ok() != Some(200) {
        assert!(Instant::now() < deadline && child.try_wait().ok().flatten().is_none(), "serve did not get ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let signalled = Instant::now();
    let kill = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    assert!(kill.is_ok_and(|s| s.success()), "kill -TERM failed");
    while status("/readyz").await.ok() != Some(503) {
        assert!(signalled.elapsed() < Duration::from_secs(1), "still ready after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Not ready, but serving: the API server may still send here.
    let mut answered = 0;
    while signalled.elapsed() < Duration::from_millis(1100) {
        let review = admit("allow-all").await.unwrap_or_else(|e| panic!("refused during the delay: {e}"));
        assert_eq!(review["response"]["allowed"], true, "{review}");
        answered += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(answered >= 5, "{answered}");
    // In flight when the listener closes (at 1.5 s): still answered, at its deadline.
    let in_flight = tokio::spawn(admit("slow"));
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(signalled.elapsed() > Duration::from_millis(1600));
    assert!(admit("allow-all").await.is_err(), "a new connection was accepted after the delay");
    let review =
        in_flight.await.unwrap_or_else(|e| panic!("{e}")).unwrap_or_else(|e| panic!("in-flight request lost: {e}"));
    let message = review["response"]["status"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("deadline"), "{review}");
    let exit = loop {
        if let Some(status) = child.try_wait().unwrap_or_else(|e| panic!("{e}")) {
            break status;
        }
        assert!(signalled.elapsed() < Duration::from_secs(8), "still running after delay + grace");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "exit status {exit}");
}

/// `webhook-server test`: one line per case and the count line; a case
/// whose expectation the module does not meet fails the run, naming why.
#[test]
fn test_runs_case_files_and_exits_non_zero_on_a_failing_case() {
    let module = policy_module("hpa-resource-requests");
    let cases = workspace().join("policies-wasm/hpa-resource-requests/test_data/cases.yaml");
    let out = server(&["test", "--module", &module.to_string_lossy(), &cases.to_string_lossy()]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}{}", stderr(&out));
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.iter().filter(|l| l.starts_with("ok   ")).count() >= 15, "{text}");
    let last = lines.last().copied().unwrap_or_default();
    assert!(last.ends_with(" passed, 0 failed"), "{last}");

    // The same cases with only the HPA granted: the pod cases' ReplicaSet lookups are refused.
    let out = server(&[
        "test",
        "--module",
        &module.to_string_lossy(),
        "--grant",
        "autoscaling/v2/HorizontalPodAutoscaler",
        &cases.to_string_lossy(),
    ]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("apps/v1 ReplicaSet is not granted to this policy"), "{text}");

    // A wrong expectation, in a case file of its own next to fixtures copied in.
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let data = workspace().join("policies-wasm/ingress-tls/test_data");
    for file in ["covered.json", "no-tls.json"] {
        std::fs::copy(data.join(file), dir.path().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    }
    let file = dir.path().join("mine.yaml");
    std::fs::write(
        &file,
        "- request: covered.json\n  allowed: true\n- request: no-tls.json\n  allowed: false\n  message: [\"not a fragment of it\"]\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let module = policy_module("ingress-tls");
    let out = server(&["test", "--module", &module.to_string_lossy(), &file.to_string_lossy()]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("ok   ") && text.contains("mine.yaml#1 covered.json"), "{text}");
    assert!(text.contains("FAIL ") && text.contains("message lacks \"not a fragment of it\""), "{text}");
    assert!(text.trim_end().ends_with("1 passed, 1 failed"), "{text}");
}

/// `webhook-server bench`: the percentiles of the runs and the verdict.
#[test]
fn bench_prints_evaluation_percentiles() {
    let data = workspace().join("policies-wasm/ingress-tls/test_data");
    let module = policy_module("ingress-tls");
    let out = server(&[
        "bench",
        "--module",
        &module.to_string_lossy(),
        "--request",
        &data.join("no-tls.json").to_string_lossy(),
        "--iterations",
        "50",
    ]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}{}", stderr(&out));
    assert!(text.contains("50 runs after 10 warm-up"), "{text}");
    assert!(text.contains("verdict: denied: "), "{text}");
    let figures: Vec<f64> = text
        .lines()
        .last()
        .unwrap_or_default()
        .split_whitespace()
        .map(|f| f.parse().unwrap_or_else(|e| panic!("{f}: {e}\n{text}")))
        .collect();
    assert_eq!(figures.len(), 4, "{text}");
    assert!(figures[0] > 0.0 && figures.windows(2).all(|w| w[0] <= w[1]), "p50 ≤ p90 ≤ p99 ≤ max: {text}");
}
