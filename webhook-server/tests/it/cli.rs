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
