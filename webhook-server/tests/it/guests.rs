//! Every guest program of `policies-wasm/test-guests` through the real
//! runtime: well-behaved ones answer; hostile ones end in the right
//! [`EvalError`] within their deadline, or are refused at load, while good
//! requests on the same runtime keep being answered.
//!
//! One test per guest, named after it: `foreach_guest!` fails the build when
//! a guest has no test here.

use std::sync::Arc;
use std::time::{Duration, Instant};

use webhook_server::abi::AbiError;
use webhook_server::policy::{self, Policy, PolicySet};
use webhook_server::runtime::{EvalError, LoadError, Runtime};

use webhook_server::context::{ContextStore, Kind};

use crate::common::{chain, entry, fixture, guest, load, load_ok, load_with_context, raw_request, runtime};

macro_rules! assert_test_exists {
    ($name:ident) => {
        #[allow(unused_imports)]
        use self::$name as _;
    };
}
test_guests::foreach_guest!(assert_test_exists);

const HOSTILE_TIMEOUT_MS: u64 = 500;
/// Scheduling slack allowed past a deadline on a loaded CI machine.
const SLACK: Duration = Duration::from_millis(400);

fn request() -> String {
    raw_request(&fixture("policies-wasm/ingress-tls/test_data/covered.json"))
}

/// allow_all plus the named guest, under tight limits.
async fn with_baseline(rt: &Arc<Runtime>, name: &str) -> PolicySet {
    let limits = format!("timeoutMs: {HOSTILE_TIMEOUT_MS}\nmemoryLimitMiB: 64\nmaxOutputKiB: 64");
    load_ok(rt, &[entry("allow-all", &guest("allow_all"), ""), entry("hostile", &guest(name), &limits)]).await
}

fn get(set: &PolicySet, name: &str) -> Arc<Policy> {
    set.get(name).cloned().unwrap_or_else(|| panic!("policy {name} not loaded"))
}

/// Runs the hostile guest once while 20 baseline requests run on the same
/// runtime; checks the error, the deadline, and that every good request got
/// its verdict (before the hostile one finished, for guests that run long).
async fn contained(name: &str, check: impl Fn(&EvalError) -> bool) {
    let rt = runtime();
    let set = with_baseline(&rt, name).await;
    let (good, bad) = (get(&set, "allow-all"), get(&set, "hostile"));
    let req = Arc::new(request());

    let started = Instant::now();
    let hostile = {
        let req = req.clone();
        tokio::spawn(async move {
            let result = bad.evaluate(&req).await;
            (result, started.elapsed())
        })
    };
    // The baseline runs as a task of its own, as each connection does in the server.
    let baseline = {
        let name = name.to_owned();
        tokio::spawn(async move {
            for _ in 0..20 {
                let verdict =
                    good.evaluate(&req).await.unwrap_or_else(|e| panic!("baseline failed beside {name}: {e}"));
                assert!(verdict.allowed);
            }
            started.elapsed()
        })
    };
    let good_done = baseline.await.unwrap_or_else(|e| panic!("baseline task: {e}"));
    let (result, elapsed) = hostile.await.unwrap_or_else(|e| panic!("hostile task: {e}"));
    match result {
        Ok(v) => panic!("{name} produced a verdict: {v:?}"),
        Err(e) => assert!(check(&e), "{name}: unexpected error {e:?}"),
    }
    let deadline = Duration::from_millis(HOSTILE_TIMEOUT_MS) + SLACK;
    assert!(elapsed < deadline, "{name} took {elapsed:?}, past its deadline");
    if elapsed > Duration::from_millis(HOSTILE_TIMEOUT_MS / 2) {
        assert!(good_done < elapsed, "baseline requests finished at {good_done:?}, after {name} ({elapsed:?})");
    }
}

async fn refused(name: &str) -> policy::Error {
    let rt = runtime();
    match load(&rt, &[entry("hostile", &guest(name), "")]).await {
        Ok(_) => panic!("{name} was loaded"),
        Err(e) => e,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_all() {
    let rt = runtime();
    let set = with_baseline(&rt, "allow_all").await;
    let verdict = get(&set, "hostile").evaluate(&request()).await;
    assert!(matches!(verdict, Ok(v) if v.allowed && v.message.is_none()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_all() {
    let rt = runtime();
    let set = with_baseline(&rt, "deny_all").await;
    let verdict = get(&set, "hostile").evaluate(&request()).await;
    assert!(
        matches!(&verdict, Ok(v) if !v.allowed && v.code == Some(403) && v.message.as_deref() == Some("deny-all denies every Ingress")),
        "{verdict:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_label() {
    let rt = runtime();
    let set = with_baseline(&rt, "add_label").await;
    let verdict = get(&set, "hostile").evaluate(&request()).await.unwrap_or_else(|e| panic!("{e}"));
    let object = verdict.mutated_object.unwrap_or_else(|| panic!("no mutated object"));
    assert_eq!(object.pointer("/metadata/labels/portcullis.dev~1mutated"), Some(&serde_json::json!("true")));
    assert_eq!(object.pointer("/metadata/name"), Some(&serde_json::json!("api")), "other fields survive");
}

/// Runs on one thread: the looping guest yields at every epoch tick, so the
/// baseline requests interleave with it instead of waiting behind it.
#[tokio::test(flavor = "current_thread")]
async fn loop_forever() {
    contained("loop_forever", |e| *e == EvalError::Timeout(HOSTILE_TIMEOUT_MS)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_bomb() {
    contained("memory_bomb", |e| *e == EvalError::MemoryLimit(64)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_recursion() {
    contained("deep_recursion", |e| *e == EvalError::StackOverflow).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trap() {
    contained("trap", |e| matches!(e, EvalError::Trap(m) if m.contains("unreachable"))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_output() {
    contained("oversized_output", |e| matches!(e, EvalError::OutputTooLarge { max, .. } if *max == 64 << 10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_json() {
    contained("invalid_json", |e| matches!(e, EvalError::BadOutput(m) if m.contains("not a verdict"))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_import() {
    let e = refused("forbidden_import").await;
    let message = chain(&e);
    assert!(
        matches!(&e, policy::Error::Load { source, .. } if matches!(**source, LoadError::Abi(AbiError::ForbiddenImport { .. }))),
        "{message}"
    );
    assert!(
        message.contains("policy \"hostile\"") && message.contains("wasi_snapshot_preview1::fd_write"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_export() {
    let e = refused("missing_export").await;
    let message = chain(&e);
    assert!(message.contains("does not export `portcullis_validate`"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_abi_version() {
    let e = refused("wrong_abi_version").await;
    assert!(
        matches!(&e, policy::Error::SettingsCheck { source: EvalError::Abi(AbiError::Version(99)), .. }),
        "{}",
        chain(&e)
    );
}

/// Memory cap below what the module needs just to start: a clear error at load.
/// A guest's lookups go through the `portcullis::lookup` import to the
/// context store: filtered answers for granted kinds, a clear refusal for
/// the others, and modules that never look anything up load as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookup_echo() {
    let rt = runtime();
    let hpa = |ns: &str, name: &str, target: &str, app: &str| {
        serde_json::json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": name, "namespace": ns, "labels": {"app": app}},
            "spec": {"scaleTargetRef": {"kind": "Deployment", "name": target}, "maxReplicas": 3}})
    };
    let hpa_kind = Kind::new("autoscaling/v2", "HorizontalPodAutoscaler");
    let store = Arc::new(ContextStore::offline(
        vec![hpa("shop", "web", "web", "web"), hpa("shop", "api", "api", "api"), hpa("blog", "web", "web", "web")],
        std::slice::from_ref(&hpa_kind),
    ));
    let grant = "context: [{apiVersion: autoscaling/v2, kind: HorizontalPodAutoscaler}]";
    let ask = async |query: serde_json::Value, extra: &str| {
        let settings = format!("settings: {}\n{extra}", serde_json::json!({"query": query}));
        let set = load_with_context(&rt, &[entry("echo", &guest("lookup_echo"), &settings)], &store).await;
        get(&set, "echo").evaluate(&request()).await.unwrap_or_else(|e| panic!("{e}"))
    };
    let names = |v: &webhook_server::abi::GuestVerdict| -> Vec<String> {
        let items: Vec<serde_json::Value> =
            serde_json::from_str(v.warnings.first().map(String::as_str).unwrap_or("[]")).unwrap_or_default();
        items
            .iter()
            .map(|o| {
                format!(
                    "{}/{}",
                    o["metadata"]["namespace"].as_str().unwrap_or(""),
                    o["metadata"]["name"].as_str().unwrap_or("")
                )
            })
            .collect()
    };
    let q = serde_json::json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler"});
    let with = |extra: serde_json::Value| {
        let mut q = q.clone();
        if let Some(m) = q.as_object_mut() {
            m.extend(extra.as_object().cloned().unwrap_or_default());
        }
        q
    };
    let v = ask(q.clone(), grant).await;
    assert!(v.allowed, "{:?}", v.message);
    assert_eq!(names(&v), ["blog/web", "shop/api", "shop/web"]);
    let v = ask(with(serde_json::json!({"namespace": "shop", "fields": {"/spec/scaleTargetRef/name": "web"}})), grant)
        .await;
    assert_eq!(names(&v), ["shop/web"]);
    let v = ask(with(serde_json::json!({"labelSelector": "app in (api)"})), grant).await;
    assert_eq!(names(&v), ["shop/api"]);
    // Not granted: refused with the reason, as an answer (the guest decides).
    let v = ask(q.clone(), "").await;
    assert!(!v.allowed);
    let message = v.message.unwrap_or_default();
    assert!(message.contains("is not granted to this policy (it is granted no kinds"), "{message}");
    let v = ask(serde_json::json!({"apiVersion": "apps/v1", "kind": "Deployment"}), grant).await;
    assert!(v.message.is_some_and(|m| m.contains("apps/v1 Deployment is not granted")));
    // A module that imports nothing but `log` is untouched by all this.
    let imports: Vec<String> = {
        let module = wasmtime::Module::from_file(rt.engine(), guest("allow_all")).unwrap_or_else(|e| panic!("{e}"));
        module.imports().map(|i| format!("{}::{}", i.module(), i.name())).collect()
    };
    assert!(!imports.iter().any(|i| i.ends_with("::lookup")), "{imports:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_cap_below_initial_memory_is_reported() {
    let rt = runtime();
    let e = match load(&rt, &[entry("tiny", &guest("allow_all"), "memoryLimitMiB: 1")]).await {
        Ok(_) => panic!("loaded with 1 MiB"),
        Err(e) => e,
    };
    assert!(matches!(&e, policy::Error::SettingsCheck { source: EvalError::MemoryLimit(1), .. }), "{}", chain(&e));
}

/// A fresh instance per evaluation: nothing a guest does survives into the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_evaluation_gets_a_fresh_instance() {
    let rt = runtime();
    let set = with_baseline(&rt, "memory_bomb").await;
    for _ in 0..3 {
        assert_eq!(get(&set, "hostile").evaluate(&request()).await, Err(EvalError::MemoryLimit(64)));
        assert!(get(&set, "allow-all").evaluate(&request()).await.is_ok_and(|v| v.allowed));
    }
}

/// More concurrent hostile evaluations than worker threads: all end at their deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_loops_at_once_all_time_out() {
    let rt = runtime();
    let set = Arc::new(with_baseline(&rt, "loop_forever").await);
    let started = Instant::now();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let set = set.clone();
            tokio::spawn(async move { get(&set, "hostile").evaluate(&request()).await })
        })
        .collect();
    let good = get(&set, "allow-all").evaluate(&request()).await;
    assert!(good.is_ok_and(|v| v.allowed));
    for task in tasks {
        let result = task.await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(result, Err(EvalError::Timeout(HOSTILE_TIMEOUT_MS)));
    }
    assert!(started.elapsed() < Duration::from_millis(HOSTILE_TIMEOUT_MS) + SLACK, "{:?}", started.elapsed());
}

/// The ticker parks when no evaluation has run for a while; an evaluation
/// that starts then must wake it, or a looping guest runs with no deadline
/// (the ticker would sleep up to a second). Several rounds, each from parked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_ticker_still_stops_a_looping_guest_on_time() {
    let rt = runtime();
    let set = load_ok(&rt, &[entry("loop", &guest("loop_forever"), "timeoutMs: 50")]).await;
    for round in 0..3 {
        let waited = Instant::now();
        while !rt.ticker_parked() {
            assert!(waited.elapsed() < Duration::from_secs(5), "round {round}: the idle ticker never parked");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let started = Instant::now();
        let result = get(&set, "loop").evaluate(&request()).await;
        let elapsed = started.elapsed();
        assert_eq!(result, Err(EvalError::Timeout(50)), "round {round}");
        assert!(elapsed < Duration::from_millis(50) + SLACK, "round {round}: stopped after {elapsed:?}");
    }
}

/// Bulkheads: a looping policy fills only its own slots and queue; its
/// excess is refused at once (busy, answered by its own failurePolicy),
/// while another policy on the same runtime keeps answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_looping_policy_fills_only_its_own_slots() {
    let rt = runtime();
    let set = Arc::new(
        load_ok(
            &rt,
            &[
                entry("allow-all", &guest("allow_all"), ""),
                entry("loop", &guest("loop_forever"), "timeoutMs: 300\nmaxConcurrent: 2\nmaxQueued: 2"),
            ],
        )
        .await,
    );
    let started = Instant::now();
    let looping: Vec<_> = (0..10)
        .map(|_| {
            let set = set.clone();
            tokio::spawn(async move {
                let result = get(&set, "loop").evaluate(&request()).await;
                (result, started.elapsed())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(get(&set, "loop").queued(), 2, "two wait for the two slots");
    let good = get(&set, "allow-all");
    for _ in 0..50 {
        assert!(good.evaluate(&request()).await.is_ok_and(|v| v.allowed));
    }
    assert!(started.elapsed() < Duration::from_millis(300), "the healthy policy waited for the looping one");
    let (mut refused, mut timed_out) = (0, 0);
    for task in looping {
        let (result, at) = task.await.unwrap_or_else(|e| panic!("{e}"));
        match result {
            Err(EvalError::QueueFull(2)) => {
                refused += 1;
                assert!(at < Duration::from_millis(50), "a refusal took {at:?}");
            }
            // Two run and time out; the two queued ones either get a slot
            // just before their wait ends (and time out) or do not (busy).
            Err(EvalError::Timeout(_) | EvalError::Busy(2)) => timed_out += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((refused, timed_out), (6, 4));
}

/// Whether this process has a thread named `name`.
fn has_thread(name: &str) -> bool {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return false };
    tasks.flatten().any(|task| std::fs::read_to_string(task.path().join("comm")).is_ok_and(|c| c.trim_end() == name))
}

/// An evaluation still running after its first ticks finishes on a long
/// lane, a thread of its own, holding its
/// policy's slot there; short evaluations meanwhile answer from the workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_evaluation_finishes_on_a_long_lane() {
    let rt = runtime();
    let set = load_ok(
        &rt,
        &[
            entry("allow-all", &guest("allow_all"), ""),
            entry("loop", &guest("loop_forever"), "timeoutMs: 400\nmaxConcurrent: 1\nmaxQueued: 0"),
        ],
    )
    .await;
    let looping = get(&set, "loop");
    let started = Instant::now();
    let first = tokio::spawn(async move { looping.evaluate(&request()).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(has_thread("long-lane"), "no long lane was started");
    assert_eq!(
        get(&set, "loop").evaluate(&request()).await.err(),
        Some(EvalError::QueueFull(0)),
        "the evaluation on the lane still holds the policy's only slot"
    );
    let good = get(&set, "allow-all");
    for _ in 0..50 {
        assert!(good.evaluate(&request()).await.is_ok_and(|v| v.allowed));
    }
    assert!(started.elapsed() < Duration::from_millis(400), "short evaluations waited for the long one");
    let result = first.await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(result.err(), Some(EvalError::Timeout(400)));
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(400) && elapsed < Duration::from_millis(400) + SLACK, "{elapsed:?}");
}

/// A caller that stops waiting (the API server hung up) cancels its
/// evaluation on the long lane: the policy's slot is free again at once,
/// not at the guest's deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_long_evaluation_frees_its_slot() {
    let rt = runtime();
    let set =
        load_ok(&rt, &[entry("loop", &guest("loop_forever"), "timeoutMs: 5000\nmaxConcurrent: 1\nmaxQueued: 0")]).await;
    let looping = get(&set, "loop");
    let first = tokio::spawn(async move { looping.evaluate(&request()).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(get(&set, "loop").evaluate(&request()).await.err(), Some(EvalError::QueueFull(0)));
    first.abort();
    let cancelled = Instant::now();
    // The lane drops the evaluation at its next tick; then the slot is free.
    loop {
        let attempt = tokio::time::timeout(Duration::from_millis(50), get(&set, "loop").evaluate(&request())).await;
        match attempt {
            // Still refused: the slot is not free yet.
            Ok(Err(EvalError::QueueFull(0))) => {}
            // Took the slot and ran (then dropped by the timeout here).
            Err(_) => break,
            Ok(other) => panic!("unexpected {other:?}"),
        }
        assert!(cancelled.elapsed() < Duration::from_secs(1), "the slot stayed taken after the caller left");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Threads at normal priority that keep every core busy until dropped.
struct CpuHogs {
    stop: Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl CpuHogs {
    fn start(count: usize) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let threads = (0..count)
            .map(|_| {
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                })
            })
            .collect();
        Self { stop, threads }
    }
}

impl Drop for CpuHogs {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// A legitimately slow policy (~0.1 s of CPU) on a machine
/// whose every core is kept busy by other threads of the process: it gets
/// its fair share on its lane and answers. (With the lanes at nice 19, as
/// they once were, it got about 1.5% of a core and reached its deadline.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy() {
    let rt = runtime();
    let set = load_ok(&rt, &[entry("busy", &guest("busy"), "timeoutMs: 5000")]).await;
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let hogs = CpuHogs::start(2 * cores);
    let started = Instant::now();
    let verdict = get(&set, "busy").evaluate(&request()).await;
    let elapsed = started.elapsed();
    drop(hogs);
    assert!(matches!(&verdict, Ok(v) if v.allowed), "{verdict:?} after {elapsed:?}");
}
