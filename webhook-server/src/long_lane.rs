//! The long lane: where an evaluation still running after
//! [`YIELD_AFTER`](crate::runtime::YIELD_AFTER) finishes.
//!
//! Nearly every evaluation ends within its first tick, on the request's own
//! task. One that does not — a slow policy, a looping guest — is handed, at
//! the tick where it yields, to a thread running at the lowest CPU priority
//! (nice 19), and finishes there: the async workers go back to short
//! evaluations at once, and the kernel gives the long ones only the CPU time
//! that nothing else wants. Without it, a looping guest took turns with
//! healthy requests on the workers and every one of them waited up to a tick
//! behind it (a healthy policy's p99 ×4 under load, `docs/reliability.md`).
//!
//! The price: nice orders threads within one cgroup. In a pod (its own
//! cgroup) a lane yields only to this server's own threads, so a long
//! evaluation is starved only while short ones saturate the container. In
//! a process sharing its cgroup with other busy work (a developer's machine
//! during a build) it yields to all of it: a guest past 2 ms can then reach
//! its deadline (a memory-hungry test guest answered `timeout` instead of
//! its memory error while a release build ran). Lanes at the process's own
//! priority were measured too and help nothing (a healthy policy's p99 next
//! to a looping one 3.9-4.6x its unloaded p99, as without lanes).
//!
//! There is one lane per core, each a thread with its own single-threaded
//! executor, chosen in turn, so slow policies still run in parallel.
//!
//! A long evaluation keeps its policy's slots while it runs here, and its
//! deadline stays what it was: wall-clock from the start. The caller answers
//! `timeout` itself if the lane, starved of CPU, has not ended it shortly
//! after its deadline (never later than the API server's own `?timeout=`);
//! dropping the caller cancels it. Its log lines keep the request's span.

use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tracing::Instrument as _;

use crate::runtime::EvalError;

/// The lane thread's nice value: the lowest priority there is.
#[cfg(target_os = "linux")]
const NICE: libc::c_int = 19;

/// How long past its deadline a caller waits for the lane before answering
/// `timeout` without it (the lane can be starved of CPU by design).
const GRACE: Duration = Duration::from_millis(50);

/// The lanes (empty where none could be started) and the next one to use.
static LANES: OnceLock<Vec<tokio::runtime::Handle>> = OnceLock::new();
static NEXT: AtomicUsize = AtomicUsize::new(0);

/// Finishes `evaluation` on a long lane; it ends by `deadline`, and the
/// caller's own deadline, if any, is `until`. Where no lane could be
/// started, it finishes on the caller's task.
pub(crate) async fn finish<F>(
    evaluation: Pin<Box<F>>,
    deadline: Instant,
    until: Option<Instant>,
    timeout_ms: u64,
) -> Result<Vec<u8>, EvalError>
where
    F: Future<Output = Result<Vec<u8>, EvalError>> + Send + 'static,
{
    let lanes = LANES.get_or_init(start_lanes);
    if lanes.is_empty() {
        return evaluation.await;
    }
    let lane = &lanes[NEXT.fetch_add(1, Ordering::Relaxed) % lanes.len()];
    let mut task = AbortOnDrop(lane.spawn(evaluation.in_current_span()));
    let answer_by = until.map_or(deadline + GRACE, |until| until.min(deadline + GRACE));
    match tokio::time::timeout_at(answer_by.into(), &mut task.0).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => Err(EvalError::Trap(format!("the evaluation's task ended without an answer: {e}"))),
        // `task` is dropped here, which cancels the evaluation.
        Err(_) => Err(EvalError::Timeout(timeout_ms)),
    }
}

/// One lane per core; as many as could be started.
fn start_lanes() -> Vec<tokio::runtime::Handle> {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let mut lanes = Vec::with_capacity(cores);
    for _ in 0..cores {
        match start_lane() {
            Ok(handle) => lanes.push(handle),
            Err(e) => {
                tracing::warn!(error = %e, "could not start a long lane");
                break;
            }
        }
    }
    if lanes.is_empty() {
        tracing::warn!("no long lane: long evaluations stay on the workers");
    }
    lanes
}

/// A thread at [`NICE`] running a single-threaded executor until the
/// process ends. The executor is built on that thread (a runtime must not be
/// dropped on an async worker, which a failed spawn would do).
fn start_lane() -> std::io::Result<tokio::runtime::Handle> {
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::Builder::new().name("long-lane".into()).spawn(move || {
        lower_priority();
        match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(runtime) => {
                let _ = sender.send(Ok(runtime.handle().clone()));
                runtime.block_on(std::future::pending::<()>());
            }
            Err(e) => {
                let _ = sender.send(Err(e));
            }
        }
    })?;
    receiver.recv().map_err(|e| std::io::Error::other(e.to_string()))?
}

/// Lowers the calling thread's CPU priority to [`NICE`]. On Linux the nice
/// value belongs to the thread, and `PRIO_PROCESS` with id 0 names the
/// calling thread. Lowering needs no privilege; failing only costs the
/// isolation, so it is logged, not fatal.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn lower_priority() {
    // SAFETY: setpriority takes plain integers and touches no memory of ours.
    // The `which` argument's C type differs between libc targets, hence `as _`.
    let result = unsafe { libc::setpriority(libc::PRIO_PROCESS as _, 0, NICE) };
    if result != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "could not lower the long lane's priority");
    }
}

/// Elsewhere the nice value belongs to the process: the lane keeps the
/// process's priority.
#[cfg(not(target_os = "linux"))]
fn lower_priority() {}

/// Cancels the task when the caller stops waiting for it.
struct AbortOnDrop(tokio::task::JoinHandle<Result<Vec<u8>, EvalError>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
