//! The long lane: where an evaluation still running after
//! [`YIELD_AFTER`](crate::runtime::YIELD_AFTER) finishes.
//!
//! Nearly every evaluation ends within its first tick, on the request's own
//! task. One that does not — a slow policy, a looping guest — is handed, at
//! the tick where it yields, to a lane: a thread of its own with a
//! single-threaded executor, where long evaluations take turns a tick at a
//! time. The async workers go back to short evaluations at once, and the
//! kernel, not a worker's queue, shares the CPU between the two kinds.
//!
//! The lanes run at the process's own priority. Nice 19 was tried
//! (2026-11-27): next to a looping guest it lowered a healthy policy's
//! loaded p99 by about a fifth in paired `faults (e)` runs (10.8 against
//! 13.5 ms; its ratio to the unloaded p99 by about a tenth, inside the
//! run-to-run noise; 2.76x against 3.81x in single full-size runs), and it
//! starved legitimate work: a nice-19 thread gets about 1.5% of a core
//! while the container's CPU is saturated, so a policy needing 20 ms of CPU
//! reached its deadline and was denied (five tests failed that way in the
//! project's CI, next to the suite's own busy threads; four hostile-guest
//! tests under three CPU hogs on a developer's machine).
//! The lowered nice value cannot be raised back without privilege, and a
//! guest preempted on a starved thread cannot be moved until that thread
//! runs again, so no watchdog could rescue it in time. An admission
//! webhook must not turn load into denials of slow-but-valid requests;
//! `guests::busy` holds that line.
//!
//! There is one lane per core, chosen in turn, so slow policies still run
//! in parallel.
//!
//! A long evaluation keeps its policy's slots while it runs here, and its
//! deadline stays what it was: wall-clock from the start. The caller answers
//! `timeout` itself if the lane has not ended it shortly after its deadline
//! (never later than the API server's own `?timeout=`); dropping the caller
//! cancels it. Its log lines keep the request's span.

use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tracing::Instrument as _;

use crate::runtime::EvalError;

/// How long past its deadline a caller waits for the lane before answering
/// `timeout` without it (a lane shares the CPU with everything else).
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

/// A thread running a single-threaded executor until the process ends. The
/// executor is built on that thread (a runtime must not be dropped on an
/// async worker, which a failed spawn would do).
fn start_lane() -> std::io::Result<tokio::runtime::Handle> {
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::Builder::new().name("long-lane".into()).spawn(move || {
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

/// Cancels the task when the caller stops waiting for it.
struct AbortOnDrop(tokio::task::JoinHandle<Result<Vec<u8>, EvalError>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
