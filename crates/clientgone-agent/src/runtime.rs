//! The runtime every `clientgone` command runs on, sized to the CPUs it may use.

use std::num::NonZeroUsize;

/// Builds the tokio runtime for `clientgone`: one worker per CPU the process
/// may use (its affinity mask, cgroup quota, or `TOKIO_WORKER_THREADS`), and
/// tokio's single-threaded scheduler when that is one.
///
/// On one CPU a multi-thread runtime has a single worker anyway, and still pays
/// for cross-thread wake-ups and queues; the proxy on one core spent about a
/// quarter more CPU per request with it (BENCHMARKS.md, *What each optimisation was worth*, commit f3c1f55). Blocking
/// work (`/metrics` rendering) still goes to tokio's blocking pool, and the
/// trace exporter's thread spawns onto the runtime as before — the caller must
/// keep the runtime driven (`block_on`) while spans are flushed.
///
/// ```
/// let runtime = clientgone_agent::runtime::build().unwrap();
/// assert_eq!(runtime.block_on(async { 1 + 1 }), 2);
/// ```
pub fn build() -> std::io::Result<tokio::runtime::Runtime> {
    match workers()? {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
    }
}

/// The worker count a multi-thread runtime would pick; a bad
/// `TOKIO_WORKER_THREADS` is an error here rather than tokio's panic.
fn workers() -> std::io::Result<usize> {
    match std::env::var("TOKIO_WORKER_THREADS") {
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("TOKIO_WORKER_THREADS={v:?} is not a positive whole number"),
            )),
        },
        Err(_) => Ok(std::thread::available_parallelism().map_or(1, NonZeroUsize::get)),
    }
}
