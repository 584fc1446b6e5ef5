//! `clientgone-bench`: what clientgone costs, measured against bare axum and the
//! peers a user would otherwise reach for, and how fast it notices a break.
//!
//! ```sh
//! cargo run --release -p clientgone-bench -- all
//! ```
//!
//! Every subcommand prints Markdown tables on stdout and its progress on
//! stderr, so `… all > results.md` keeps only the tables.

#![forbid(unsafe_code)]

mod agent;
mod bare_proxy;
mod breaks;
mod close;
mod detect;
mod grpc;
mod instructions;
mod memory;
mod overhead;
mod proxy;
mod receiver;
mod scrape;
mod servers;
mod tls;
mod wrk;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "clientgone-bench",
    about = "Benchmarks for clientgone: overhead, detection latency, /metrics cost, memory"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Throughput and latency of six server configurations under wrk.
    Overhead(overhead::Args),
    /// Time from a client's FIN or RST to the `ClientGone` token firing.
    Detect(detect::Args),
    /// Cost of rendering `/metrics` with 10 to 2000 label children.
    Scrape(scrape::Args),
    /// RSS per idle keep-alive connection, bare axum against clientgone.
    Memory(memory::Args),
    /// The demo server under break-heavy load: highest rate with exact counters.
    Breaks(breaks::Args),
    /// `clientgone proxy` against nginx and the bare hyper stack: throughput,
    /// p99, upstream-cancel latency.
    Proxy(proxy::Args),
    /// User-space instructions per request under valgrind's callgrind:
    /// deterministic where CPU time is noisy (needs valgrind).
    Instructions(instructions::Args),
    /// A unary gRPC call on one core: bare tonic against tonic with
    /// clientgone's gRPC layer, and through `clientgone proxy` (needs h2load,
    /// and valgrind for the instruction counts).
    Grpc(grpc::Args),
    /// HTTPS: clientgone beside bare axum on the same rustls stack (keep-alive
    /// and a handshake per request), and `clientgone proxy` terminating TLS
    /// beside nginx (needs wrk and nginx).
    Tls(tls::Args),
    /// Runs overhead, detect, scrape, memory, breaks and proxy in that order.
    All(AllArgs),
    /// Runs one server configuration (the bench re-executes itself with this).
    #[command(hide = true)]
    Serve(servers::ServeArgs),
    /// Runs a discarding OTLP receiver (the bench re-executes itself with this).
    #[command(hide = true)]
    Receive,
    /// Runs `clientgone demo|proxy …` through the library (the bench
    /// re-executes itself with this).
    #[command(hide = true)]
    Agent(agent::AgentArgs),
    /// Runs one tonic server of the `grpc` part (the bench re-executes itself with this).
    #[command(hide = true)]
    GrpcServe(grpc::ServeArgs),
    /// Runs the bare axum + hyper-util proxy the `proxy` part compares with
    /// (the bench re-executes itself with this).
    #[command(hide = true)]
    BareProxy(bare_proxy::BareProxyArgs),
}

#[derive(Debug, Args)]
struct AllArgs {
    #[command(flatten)]
    overhead: overhead::Args,
    #[command(flatten)]
    detect: detect::Args,
    #[command(flatten)]
    scrape: scrape::Args,
    #[command(flatten)]
    memory: memory::Args,
    #[command(flatten)]
    breaks: breaks::Args,
    #[command(flatten)]
    proxy: proxy::Args,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Overhead(args) => overhead::run(&args).map(|t| print!("{t}")),
        Command::Detect(args) => detect::run(&args).map(|t| print!("{t}")),
        Command::Scrape(args) => scrape::run(&args).map(|t| print!("{t}")),
        Command::Memory(args) => memory::run(&args).map(|t| print!("{t}")),
        Command::Breaks(args) => breaks::run(&args).map(|t| print!("{t}")),
        Command::Proxy(args) => proxy::run(&args).map(|t| print!("{t}")),
        Command::Instructions(args) => instructions::run(&args).map(|t| print!("{t}")),
        Command::Grpc(args) => grpc::run(&args).map(|t| print!("{t}")),
        Command::Tls(args) => tls::run(&args).map(|t| print!("{t}")),
        Command::GrpcServe(args) => grpc::serve(&args),
        Command::All(args) => all(&args),
        Command::Serve(args) => servers::serve(&args),
        Command::Receive => receiver::receive(),
        Command::Agent(args) => agent::serve(&args),
        Command::BareProxy(args) => bare_proxy::serve(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("clientgone-bench: {message}");
            ExitCode::FAILURE
        }
    }
}

/// A multi-thread tokio runtime, as a user's `#[tokio::main]` builds; with
/// `workers`, that many worker threads (pinned by `taskset`, it sizes itself
/// to the CPUs it may use anyway).
pub(crate) fn runtime(workers: Option<usize>) -> Result<tokio::runtime::Runtime, String> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers {
        builder.worker_threads(n);
    }
    builder
        .enable_all()
        .build()
        .map_err(|e| format!("cannot build the runtime: {e}"))
}

/// Prints each part's tables as soon as it is done, so a late failure does not
/// lose the earlier results.
fn all(args: &AllArgs) -> Result<(), String> {
    print!("{}", overhead::run(&args.overhead)?);
    println!();
    print!("{}", detect::run(&args.detect)?);
    println!();
    print!("{}", scrape::run(&args.scrape)?);
    println!();
    print!("{}", memory::run(&args.memory)?);
    println!();
    print!("{}", breaks::run(&args.breaks)?);
    println!();
    print!("{}", proxy::run(&args.proxy)?);
    Ok(())
}

/// The `q`-quantile (0.0–1.0) of `values`, nearest rank; sorts in place.
pub(crate) fn quantile<T: Copy + PartialOrd>(values: &mut [T], q: f64) -> Option<T> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    Some(values[nearest_rank(values.len(), q)])
}

/// The index of the `q`-quantile among `n` sorted values, by nearest rank.
fn nearest_rank(n: usize, q: f64) -> usize {
    ((q * n as f64).ceil() as usize).clamp(1, n) - 1
}

/// One end of a confidence interval from [`quantile_ci`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Bound<T> {
    /// The order statistic at the end's rank.
    Within(T),
    /// The rank falls outside the samples: the true end lies beyond this,
    /// the smallest or largest sample.
    Beyond(T),
}

/// The `q`-quantile of `sorted` (nearest rank) with a distribution-free 95 %
/// confidence interval: the order statistics whose ranks lie 1.96 binomial
/// standard deviations either side of `n·q` (normal approximation to the
/// binomial). With few samples for the tail asked about (200 samples for a
/// p99) a rank falls outside them; that end is then [`Bound::Beyond`], not a
/// false bound.
pub(crate) fn quantile_ci<T: Copy + Ord>(sorted: &[T], q: f64) -> Option<(T, Bound<T>, Bound<T>)> {
    let n = sorted.len();
    if n == 0 {
        return None;
    }
    let nf = n as f64;
    let spread = 1.96 * (nf * q * (1.0 - q)).sqrt();
    let at = sorted[nearest_rank(n, q)];
    // 1-based ranks.
    let low = (q * nf - spread).floor();
    let high = (q * nf + spread).ceil();
    let low = if low >= 1.0 {
        Bound::Within(sorted[low as usize - 1])
    } else {
        Bound::Beyond(sorted[0])
    };
    let high = if high <= nf {
        Bound::Within(sorted[high as usize - 1])
    } else {
        Bound::Beyond(sorted[n - 1])
    };
    Some((at, low, high))
}

/// The median, averaging the two middle values of an even count (rounds are
/// few, so nearest rank would just pick the lower one).
pub(crate) fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// A duration for a table: µs below 10 ms, ms above.
pub(crate) fn fmt_duration(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 10_000.0 {
        format!("{us:.0} µs")
    } else {
        format!("{:.2} ms", us / 1000.0)
    }
}

/// Parses a whole number of seconds, at least one ("5", "5s").
pub(crate) fn parse_seconds(s: &str) -> Result<u64, String> {
    let digits = s.strip_suffix('s').unwrap_or(s);
    match digits.parse::<u64>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!(
            "'{s}' is not a whole number of seconds ≥ 1 (wrk counts in seconds)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_and_medians() {
        let mut v = [5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(quantile(&mut v, 0.5), Some(3.0));
        assert_eq!(quantile(&mut v, 0.99), Some(5.0));
        assert_eq!(quantile(&mut v, 0.0), Some(1.0));
        assert_eq!(median(&[1.0, 2.0, 3.0, 4.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn quantile_confidence_intervals() {
        use Bound::{Beyond, Within};
        let v: Vec<u32> = (1..=1000).collect();
        // n·q = 990, spread 1.96·√9.9 ≈ 6.2: ranks 983 and 997.
        assert_eq!(quantile_ci(&v, 0.99), Some((990, Within(983), Within(997))));
        // The median: 500 ± 31 → ranks 469 and 531.
        assert_eq!(quantile_ci(&v, 0.5), Some((500, Within(469), Within(531))));
        // 200 samples for a p99: the upper rank (201) lies past the largest.
        let v: Vec<u32> = (1..=200).collect();
        assert_eq!(quantile_ci(&v, 0.99), Some((198, Within(195), Beyond(200))));
        // And a low quantile of few samples, past the smallest.
        assert_eq!(
            quantile_ci(&[7u32, 8, 9], 0.01),
            Some((7, Beyond(7), Within(7)))
        );
        assert_eq!(quantile_ci::<u32>(&[], 0.5), None);
    }

    #[test]
    fn seconds() {
        assert_eq!(parse_seconds("5"), Ok(5));
        assert_eq!(parse_seconds("5s"), Ok(5));
        assert!(parse_seconds("0").is_err());
        assert!(parse_seconds("500ms").is_err());
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
