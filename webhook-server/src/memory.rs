//! Memory a burst of requests leaves in the allocator, given back to the system.
//!
//! glibc's malloc keeps what a burst freed — the connections' TLS and HTTP
//! buffers, the requests' JSON — inside its arenas (one per worker
//! thread): free, but resident. After the benchmark's 32 connections that
//! was about 1 MiB per worker. [`release_after_bursts`] asks malloc to
//! return free pages (`malloc_trim`) once a burst is over: requests were
//! answered since the last look and none is in flight now. With another
//! allocator or C library, trimming does nothing.

use std::time::{Duration, Instant};

/// Returns the allocator's free pages to the system; true if any were released.
pub fn trim() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: `malloc_trim` releases only memory malloc holds free; it is
    // thread-safe (it takes each arena's lock) and touches no live block.
    let released = unsafe { libc::malloc_trim(0) == 1 };
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let released = false;
    released
}

/// What [`release_after_bursts`] looks at: how many requests were answered
/// so far, and whether any is in flight now.
pub trait Activity: Send + Sync + 'static {
    /// Requests answered since the start (any monotonic count).
    fn answered(&self) -> u64;
    /// No request is in flight.
    fn idle(&self) -> bool;
}

/// Every `period`: if requests were answered since the last trim and none
/// is in flight, runs `trim` on a blocking thread (it walks the heap under
/// malloc's locks). Runs until the task is dropped.
pub async fn release_after_bursts<A, T>(activity: std::sync::Arc<A>, period: Duration, trim: T)
where
    A: Activity,
    T: Fn() -> bool + Clone + Send + 'static,
{
    let mut trimmed_at = activity.answered();
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let answered = activity.answered();
        if answered == trimmed_at || !activity.idle() {
            continue;
        }
        trimmed_at = answered;
        let started = Instant::now();
        let released = tokio::task::spawn_blocking(trim.clone()).await.unwrap_or(false);
        tracing::debug!(
            released,
            duration_us = started.elapsed().as_micros() as u64,
            "allocator trimmed after a burst"
        );
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

    use super::*;

    #[derive(Default)]
    struct Fake {
        answered: AtomicU64,
        busy: AtomicBool,
    }

    impl Activity for Fake {
        fn answered(&self) -> u64 {
            self.answered.load(Ordering::SeqCst)
        }
        fn idle(&self) -> bool {
            !self.busy.load(Ordering::SeqCst)
        }
    }

    /// Waits (up to 10 s, for a loaded machine) until `trims` reaches `n`.
    async fn reaches(trims: &AtomicUsize, n: usize) -> bool {
        for _ in 0..1000 {
            if trims.load(Ordering::SeqCst) >= n {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    #[tokio::test]
    async fn trims_once_per_burst_and_only_when_idle() {
        let activity = Arc::new(Fake::default());
        let trims = Arc::new(AtomicUsize::new(0));
        let counter = trims.clone();
        let task = tokio::spawn(release_after_bursts(activity.clone(), Duration::from_millis(10), move || {
            counter.fetch_add(1, Ordering::SeqCst);
            true
        }));
        // Several periods each time: long enough for a wrong trim to show.
        let periods = || tokio::time::sleep(Duration::from_millis(80));
        periods().await;
        assert_eq!(trims.load(Ordering::SeqCst), 0, "nothing answered: nothing to give back");
        activity.busy.store(true, Ordering::SeqCst);
        activity.answered.store(100, Ordering::SeqCst);
        periods().await;
        assert_eq!(trims.load(Ordering::SeqCst), 0, "a request in flight: the burst is not over");
        activity.busy.store(false, Ordering::SeqCst);
        assert!(reaches(&trims, 1).await, "the burst ended but nothing was trimmed");
        periods().await;
        assert_eq!(trims.load(Ordering::SeqCst), 1, "one trim per burst, not one per period");
        activity.answered.store(101, Ordering::SeqCst);
        assert!(reaches(&trims, 2).await, "a second burst was not trimmed");
        task.abort();
    }

    #[test]
    fn trimming_the_real_allocator_keeps_live_memory() {
        let live: Vec<Vec<u8>> = (0..64u8).map(|i| vec![i; 64 << 10]).collect();
        drop((0..64).map(|_| vec![0u8; 64 << 10]).collect::<Vec<_>>());
        trim();
        assert!(live.iter().enumerate().all(|(i, block)| block.iter().all(|&b| usize::from(b) == i)));
    }
}
