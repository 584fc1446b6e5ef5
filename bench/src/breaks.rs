//! `breaks`: the demo server under break-heavy load (issue 6, part 5).
//!
//! The real demo server (`clientgone demo`, through the library, in a process
//! of its own pinned to CPU 0) is driven by the library's break generator
//! (`clientgone_agent::traffic::run`, in this process pinned to CPU 1) with
//! about a fifth of the requests broken off, one kind in each twenty-fifth.
//! At each rate we check that the counters are *exact*, not approximately
//! right: every kind's counter moved by exactly the number of requests the
//! generator says went as scripted, every request reached the duration
//! histogram once, and no gauge is left up once the last connection is gone.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clientgone_agent::traffic::{self, Kind, Summary, TrafficConfig};
use tokio_util::sync::CancellationToken;

use crate::agent::{AgentProcess, PinSelf, Sample, cpu_time, parse_metrics, scrape, sum};
use crate::servers::{CpuSnapshot, wait_for_quiet};

/// The mix: completed 80, and 4 of every HTTP break kind ([`Kind::ALL`]
/// order); no gRPC calls, so the figures stay comparable with earlier runs.
const WEIGHTS: [u32; Kind::COUNT] = [80, 4, 4, 4, 4, 4, 0, 0, 0, 0, 0];
/// A rate is sustained when the generator started at least this share of
/// the requests the target asked for.
const SUSTAINED: f64 = 0.95;
/// How long the last requests get to end after the generator stops: the
/// longest scripted client lingers 200 ms (HTTP/2), so this is ample.
const DRAIN: Duration = Duration::from_secs(15);

/// Flags of `breaks` (also part of `all`).
#[derive(Debug, clap::Args)]
#[group(id = "breaks_args")]
pub struct Args {
    /// Target rates in requests per second, tried in this order.
    #[arg(long, value_delimiter = ',', default_values_t = [1000u32, 2000, 4000, 8000, 10000, 12000, 14000],
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub break_rates: Vec<u32>,
    /// Seconds of traffic at each rate.
    #[arg(long, default_value = "4", value_parser = crate::parse_seconds)]
    pub break_seconds: u64,
    /// Requests in flight at most (each is a connection of its own).
    #[arg(long, default_value_t = 2048,
          value_parser = clap::value_parser!(u32).range(1..=15_000))]
    pub break_concurrency: u32,
}

/// What one rate showed.
struct Row {
    target: u32,
    summary: Summary,
    achieved: f64,
    /// Kinds whose counter did not move by exactly `Summary::ok(kind)`:
    /// (kind, expected, got).
    kind_mismatches: Vec<(Kind, u64, f64)>,
    duration_count: f64,
    active: f64,
    open: f64,
    drained_in: Option<Duration>,
    /// `http_server_connection_closes_total` deltas: `idle` beyond the
    /// completed requests (which all end idle), and `reset`. Both are 0 when
    /// the server read every request before its client left.
    idle_extra: f64,
    /// The kernel's `TcpExt ListenOverflows` delta (machine-wide): handshakes
    /// dropped because the server's accept queue was full. Such a client
    /// believes it is connected; if it leaves before the retransmission gets
    /// in, the server never sees it — and counts nothing, rightly.
    listen_overflows: u64,
    reset_closes: f64,
    server_cpu: f64,
    generator_cpu: f64,
}

impl Row {
    fn exact(&self) -> bool {
        self.kind_mismatches.is_empty() && self.duration_count == self.summary.sent() as f64
    }

    fn sustained(&self) -> bool {
        self.achieved >= SUSTAINED * f64::from(self.target)
            && self.summary.failed_total() == 0
            && self.exact()
            && self.active == 0.0
            && self.open == 0.0
    }
}

/// Runs the benchmark and returns its Markdown tables.
pub fn run(args: &Args) -> Result<String, String> {
    // Server first, on CPU 0; then this process (the generator) onto CPU 1,
    // before its runtime starts threads, so they all inherit the pinning.
    let demo = AgentProcess::spawn(
        0,
        &[
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    )?;
    let _pin = PinSelf::to(1)?;
    // One worker: the generator gets one CPU, as the server does.
    let runtime = crate::runtime(Some(1))?;
    wait_for_quiet(Duration::from_secs(120));
    let before_all = CpuSnapshot::take();
    let start_all = Instant::now();

    // Warm-up, unchecked: creates every metric child and warms both allocators.
    eprintln!("breaks: warm-up at 200 req/s for 1 s");
    runtime.block_on(traffic::run(
        config(demo.addr, 200, 1, args.break_concurrency, 0),
        CancellationToken::new(),
    ));
    wait_drained(demo.metrics_addr)?;

    let mut rows = Vec::new();
    for &rate in &args.break_rates {
        eprintln!("breaks: {rate} req/s for {} s", args.break_seconds);
        let row = one_rate(&runtime, &demo, rate, args)?;
        eprintln!(
            "  achieved {:.0}/s, {} failed, exact {}, active {} open {}",
            row.achieved,
            row.summary.failed_total(),
            row.exact(),
            row.active,
            row.open
        );
        rows.push(row);
    }
    let foreign = CpuSnapshot::take().foreign_since(&before_all).as_secs_f64()
        / start_all.elapsed().as_secs_f64();
    Ok(table(&rows, args, foreign))
}

fn config(
    target: SocketAddr,
    rate: u32,
    seconds: u64,
    concurrency: u32,
    seed: u64,
) -> TrafficConfig {
    TrafficConfig {
        rate: f64::from(rate),
        duration: Some(Duration::from_secs(seconds)),
        requests: None,
        concurrency: concurrency as usize,
        weights: WEIGHTS,
        seed,
        progress: false,
        // The default patience (50 ms): long enough that the request is in
        // the handler when the client leaves.
        ..TrafficConfig::new(target)
    }
}

fn one_rate(
    runtime: &tokio::runtime::Runtime,
    demo: &AgentProcess,
    rate: u32,
    args: &Args,
) -> Result<Row, String> {
    let before = parse_metrics(&scrape(demo.metrics_addr)?)?;
    let server_cpu_before = cpu_time(demo.pid())?;
    let overflows_before = listen_overflows();
    let self_cpu_before = cpu_time(std::process::id())?;
    let summary = runtime.block_on(traffic::run(
        config(
            demo.addr,
            rate,
            args.break_seconds,
            args.break_concurrency,
            u64::from(rate),
        ),
        CancellationToken::new(),
    ));
    // CPU over the traffic itself, as a share of one CPU over the run.
    let wall = summary.elapsed.as_secs_f64().max(1e-9);
    let server_cpu = (cpu_time(demo.pid())? - server_cpu_before).as_secs_f64() / wall;
    let generator_cpu = (cpu_time(std::process::id())? - self_cpu_before).as_secs_f64() / wall;
    let listen_overflows = listen_overflows().saturating_sub(overflows_before);
    let drain_start = Instant::now();
    let (after, drained) = wait_drained(demo.metrics_addr)?;
    let drained_in = drained.then(|| drain_start.elapsed());

    let delta =
        |name: &str, want: &[(&str, &str)]| sum(&after, name, want) - sum(&before, name, want);
    let mut kind_mismatches = Vec::new();
    for kind in Kind::ALL {
        let e = kind.expectation();
        let got = delta(e.metric(), &e.labels());
        if got != summary.ok(kind) as f64 {
            kind_mismatches.push((kind, summary.ok(kind), got));
        }
    }
    Ok(Row {
        target: rate,
        // Requests *started* per second of the configured duration: the
        // generator starts none after it, and `elapsed` also holds the wait
        // for the last ones to finish.
        achieved: summary.sent() as f64 / args.break_seconds as f64,
        duration_count: delta("http_server_request_duration_seconds_count", &[]),
        active: sum(&after, "http_server_active_requests", &[]),
        open: sum(&after, "http_server_open_connections", &[]),
        idle_extra: delta("http_server_connection_closes_total", &[("reason", "idle")])
            - summary.ok(Kind::Completed) as f64,
        listen_overflows,
        reset_closes: delta(
            "http_server_connection_closes_total",
            &[("reason", "reset")],
        ),
        summary,
        kind_mismatches,
        drained_in,
        server_cpu,
        generator_cpu,
    })
}

/// Scrapes until no request is active and no connection open, or [`DRAIN`]
/// has passed; returns the last scrape and whether it drained.
fn wait_drained(metrics: SocketAddr) -> Result<(Vec<Sample>, bool), String> {
    let deadline = Instant::now() + DRAIN;
    loop {
        let samples = parse_metrics(&scrape(metrics)?)?;
        let idle = sum(&samples, "http_server_active_requests", &[]) == 0.0
            && sum(&samples, "http_server_open_connections", &[]) == 0.0;
        if idle || Instant::now() >= deadline {
            return Ok((samples, idle));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `ListenOverflows` from `/proc/net/netstat` (0 if unreadable).
fn listen_overflows() -> u64 {
    let text = std::fs::read_to_string("/proc/net/netstat").unwrap_or_default();
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "ListenOverflows")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "**no**" }
}

fn table(rows: &[Row], args: &Args, foreign: f64) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## Break-heavy load (demo server on CPU 0, generator on CPU 1, {} s per rate, \
         concurrency {})\n",
        args.break_seconds, args.break_concurrency
    );
    let _ = writeln!(
        out,
        "| target req/s | achieved req/s | sent | failed | per-kind counters exact | \
         duration count = sent | active requests after | open connections after | drained in | \
         closes with nothing in flight (idle beyond completed / reset) | kernel accept-queue overflows | server CPU | generator CPU | sustained |"
    );
    let _ = writeln!(
        out,
        "|--:|--:|--:|--:|---|---|--:|--:|--:|--:|--:|--:|--:|---|"
    );
    for r in rows {
        let kinds = if r.kind_mismatches.is_empty() {
            "yes".to_owned()
        } else {
            let list: Vec<String> = r
                .kind_mismatches
                .iter()
                .map(|(k, want, got)| format!("{} {want}≠{got}", k.name()))
                .collect();
            format!("**no**: {}", list.join(", "))
        };
        let _ = writeln!(
            out,
            "| {} | {:.0} | {} | {} | {kinds} | {} ({} vs {}) | {} | {} | {} | {} / {} | {} | {:.0} % | {:.0} % | {} |",
            r.target,
            r.achieved,
            r.summary.sent(),
            r.summary.failed_total(),
            yes_no(r.duration_count == r.summary.sent() as f64),
            r.duration_count,
            r.summary.sent(),
            r.active,
            r.open,
            r.drained_in.map_or_else(
                || format!("not in {} s", DRAIN.as_secs()),
                crate::fmt_duration
            ),
            r.idle_extra,
            r.reset_closes,
            r.listen_overflows,
            r.server_cpu * 100.0,
            r.generator_cpu * 100.0,
            yes_no(r.sustained()),
        );
    }
    let best = rows
        .iter()
        .filter(|r| r.sustained())
        .map(|r| r.target)
        .max();
    let _ = writeln!(
        out,
        "\nHighest sustained rate: {}. Mix per kind (completed, fin, rst, half-body, mid-stream, \
         h2-reset) = {:?}, so {:.0} % of requests break.",
        best.map_or_else(
            || "none of the rates tried".to_owned(),
            |b| format!("{b} req/s")
        ),
        WEIGHTS,
        100.0 * f64::from(WEIGHTS[1..6].iter().sum::<u32>())
            / f64::from(WEIGHTS.iter().sum::<u32>())
    );
    let mut per_kind = String::new();
    if let Some(last) = rows.last() {
        for kind in Kind::ALL {
            let _ = write!(per_kind, "{} {}, ", kind.name(), last.summary.ok(kind));
        }
        let _ = writeln!(
            out,
            "At {} req/s the generator's per-kind counts were: {}.",
            last.target,
            per_kind.trim_end_matches(", ")
        );
    }
    for r in rows {
        // `first_failure` is in `Kind::ALL` order.
        for (kind, why) in Kind::ALL.iter().zip(&r.summary.first_failure) {
            if let Some(why) = why {
                let _ = writeln!(
                    out,
                    "\nAt {} req/s, first {} failure: {why}",
                    r.target,
                    kind.name()
                );
            }
        }
    }
    let _ = writeln!(
        out,
        "\nOther programs used {:.0} % of a CPU during the run.",
        foreign * 100.0
    );
    out
}
