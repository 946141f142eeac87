//! The long lane: where an evaluation still running after
//! [`YIELD_AFTER`](crate::runtime::YIELD_AFTER) finishes.
//!
//! Nearly every evaluation ends within its first tick, on the request's own
//! task. One that does not — a slow policy, a looping guest — is handed, at
//! the tick where it yields, to a single thread running at the lowest CPU
//! priority (nice 19), and finishes there: the async workers go back to short
//! evaluations at once, and the kernel gives the long ones only the CPU time
//! that nothing else wants. Without it, a looping guest took turns with
//! healthy requests on the workers and every one of them waited up to a tick
//! behind it (a healthy policy's p99 ×4 under load, `docs/reliability.md`).
//!
//! A long evaluation keeps its policy's slots while it runs here, and its
//! deadline stays what it was: wall-clock from the start. The caller answers
//! `timeout` itself if the lane, starved of CPU, has not ended it shortly
//! after its deadline; dropping the caller cancels it.

use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::runtime::EvalError;

/// The lane thread's nice value: the lowest priority there is.
const NICE: libc::c_int = 19;

/// How long past its deadline a caller waits for the lane before answering
/// `timeout` without it (the lane can be starved of CPU by design).
const GRACE: Duration = Duration::from_millis(50);

static LANE: OnceLock<Option<tokio::runtime::Handle>> = OnceLock::new();

/// Finishes `evaluation` on the long lane; its answer is due by `deadline`.
/// Where the lane cannot be started, it finishes on the caller's task.
pub(crate) async fn finish<F>(evaluation: Pin<Box<F>>, deadline: Instant, timeout_ms: u64) -> Result<Vec<u8>, EvalError>
where
    F: Future<Output = Result<Vec<u8>, EvalError>> + Send + 'static,
{
    let Some(lane) = lane() else {
        return evaluation.await;
    };
    let mut task = AbortOnDrop(lane.spawn(evaluation));
    match tokio::time::timeout_at((deadline + GRACE).into(), &mut task.0).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => Err(EvalError::Trap(format!("the evaluation's task ended without an answer: {e}"))),
        // `task` is dropped here, which cancels the evaluation.
        Err(_) => Err(EvalError::Timeout(timeout_ms)),
    }
}

fn lane() -> Option<&'static tokio::runtime::Handle> {
    LANE.get_or_init(|| match start() {
        Ok(handle) => Some(handle),
        Err(e) => {
            tracing::warn!(error = %e, "could not start the long lane; long evaluations stay on the workers");
            None
        }
    })
    .as_ref()
}

fn start() -> std::io::Result<tokio::runtime::Handle> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let handle = runtime.handle().clone();
    std::thread::Builder::new().name("long-lane".into()).spawn(move || {
        lower_priority();
        runtime.block_on(std::future::pending::<()>());
    })?;
    Ok(handle)
}

/// Lowers the calling thread's CPU priority to [`NICE`]. On Linux the nice
/// value belongs to the thread, and `PRIO_PROCESS` with id 0 names the
/// calling thread. Lowering needs no privilege; failing only costs the
/// isolation, so it is logged, not fatal.
#[allow(unsafe_code)]
fn lower_priority() {
    // SAFETY: setpriority takes plain integers and touches no memory of ours.
    // The `which` argument's C type differs between libc targets, hence `as _`.
    let result = unsafe { libc::setpriority(libc::PRIO_PROCESS as _, 0, NICE) };
    if result != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "could not lower the long lane's priority");
    }
}

/// Cancels the task when the caller stops waiting for it.
struct AbortOnDrop(tokio::task::JoinHandle<Result<Vec<u8>, EvalError>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
