//! The runtime every `clientgone` command runs on, sized to the CPUs it may use.

use std::num::NonZeroUsize;

/// Builds the tokio runtime for `clientgone`: one worker per CPU the process
/// may use (its affinity mask, cgroup quota, or `TOKIO_WORKER_THREADS`), and
/// tokio's single-threaded scheduler when that is one.
///
/// On one CPU a multi-thread runtime has a single worker anyway, and still pays
/// for cross-thread wake-ups and queues; the proxy on one core spent about a
/// quarter more CPU per request with it (BENCHMARKS.md, session 3). Blocking
/// work (`/metrics` rendering) still goes to tokio's blocking pool, and the
/// trace exporter's thread spawns onto the runtime as before — the caller must
/// keep the runtime driven (`block_on`) while spans are flushed.
///
/// ```
/// let runtime = clientgone_agent::runtime::build().unwrap();
/// assert_eq!(runtime.block_on(async { 1 + 1 }), 2);
/// ```
pub fn build() -> std::io::Result<tokio::runtime::Runtime> {
    if workers() == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        // Reads `TOKIO_WORKER_THREADS` itself, like `#[tokio::main]`.
        tokio::runtime::Runtime::new()
    }
}

/// The worker count a multi-thread runtime would pick.
fn workers() -> usize {
    std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, NonZeroUsize::get))
}
