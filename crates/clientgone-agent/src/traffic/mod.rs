//! `clientgone traffic`: a load generator that breaks connections on purpose, so
//! users can try their own setup and hold its summary against the counters.
//!
//! It speaks to the demo's routes (`/items/{id}`, `/hello`, `/upload`, `/stream`)
//! and its gRPC service (`clientgone.demo.v1.Demo`); each request or call is
//! one of the scripted [`Kind`]s, drawn at the configured ratios.

mod client;
mod grpc;
mod kind;
mod summary;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::{Mutex, Semaphore};
use tokio_util::sync::CancellationToken;

pub use kind::{Expectation, Kind, Series};
pub use summary::Summary;

/// What to send, how fast, for how long.
#[derive(Clone, Debug)]
pub struct TrafficConfig {
    /// The server to talk to.
    pub target: SocketAddr,
    /// Requests started per second.
    pub rate: f64,
    /// Stop after this long (`None`: until cancelled or `requests` is reached).
    pub duration: Option<Duration>,
    /// Stop after this many requests (`None`: no limit).
    pub requests: Option<u64>,
    /// Requests in flight at most.
    pub concurrency: usize,
    /// Relative weight of each kind, in [`Kind::ALL`] order.
    pub weights: [u32; Kind::COUNT],
    /// How long a leaving client waits before it leaves.
    pub patience: Duration,
    /// Seed of the kind draw, for a repeatable mix.
    pub seed: u64,
    /// Draw a progress line on stderr.
    pub progress: bool,
}

impl TrafficConfig {
    /// The default mix against `target`: mostly completed requests, every kind
    /// of break present.
    pub fn new(target: SocketAddr) -> Self {
        TrafficConfig {
            target,
            rate: 50.0,
            duration: Some(Duration::from_secs(30)),
            requests: None,
            concurrency: 64,
            weights: DEFAULT_WEIGHTS,
            patience: Duration::from_millis(50),
            seed: 1,
            progress: false,
        }
    }
}

/// The default mix, in [`Kind::ALL`] order: mostly completed requests and
/// calls, every kind of break present.
pub const DEFAULT_WEIGHTS: [u32; Kind::COUNT] = [60, 6, 5, 4, 5, 4, 6, 3, 3, 2, 2];

/// Runs the generator until its duration or request count is reached, or
/// `stop` is cancelled; returns what it did.
pub async fn run(config: TrafficConfig, stop: CancellationToken) -> Summary {
    let summary = Arc::new(Mutex::new(Summary::default()));
    let permits = Arc::new(Semaphore::new(config.concurrency.max(1)));
    let progress = progress_bar(&config);
    let mut rng = fastrand::Rng::with_seed(config.seed);
    let total_weight: u32 = config.weights.iter().sum();
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / config.rate.max(0.001)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tasks = tokio::task::JoinSet::new();
    let mut n: u64 = 0;

    loop {
        if config.requests.is_some_and(|limit| n >= limit)
            || config.duration.is_some_and(|d| started.elapsed() >= d)
        {
            break;
        }
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let kind = draw(&mut rng, &config.weights, total_weight);
        n += 1;
        let summary = summary.clone();
        let progress = progress.clone();
        let (addr, patience) = (config.target, config.patience);
        tasks.spawn(async move {
            // Beyond the client's own patience, 30 s for the server to answer.
            let limit = patience.saturating_add(Duration::from_secs(30));
            let outcome = tokio::time::timeout(limit, client::run(kind, addr, n, patience))
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {limit:?}")));
            let mut summary = summary.lock().await;
            summary.record(kind, outcome);
            progress.set_message(summary.progress_line());
            progress.inc(1);
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    progress.finish_and_clear();
    let mut summary = summary.lock().await.clone();
    summary.elapsed = started.elapsed();
    summary
}

fn draw(rng: &mut fastrand::Rng, weights: &[u32; Kind::COUNT], total: u32) -> Kind {
    if total == 0 {
        return Kind::Completed;
    }
    let mut pick = rng.u32(0..total);
    for kind in Kind::ALL {
        let w = weights[kind.index()];
        if pick < w {
            return kind;
        }
        pick -= w;
    }
    Kind::Completed
}

fn progress_bar(config: &TrafficConfig) -> ProgressBar {
    let bar = match config.requests {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::no_length(),
    };
    if config.progress {
        bar.set_draw_target(ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{spinner} {elapsed_precise} {pos} sent  {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
    } else {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_draw_follows_the_weights() {
        let mut rng = fastrand::Rng::with_seed(7);
        let weights = [50, 0, 25, 0, 25, 0, 0, 0, 0, 0, 0];
        let mut counts = [0u32; Kind::COUNT];
        for _ in 0..10_000 {
            counts[draw(&mut rng, &weights, 100).index()] += 1;
        }
        assert_eq!(
            counts[1] + counts[3] + counts[5] + counts[6..].iter().sum::<u32>(),
            0
        );
        assert!((4_500..5_500).contains(&counts[0]), "{counts:?}");
        assert!((2_000..3_000).contains(&counts[2]), "{counts:?}");
    }
}
