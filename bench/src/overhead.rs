//! `overhead`: throughput and latency of each server configuration under wrk.
//!
//! Every configuration runs in a server process of its own, all pinned to one
//! CPU, and wrk is pinned to the other, so client and server never steal each
//! other's time. Only one server is driven at a time; the others sit idle.
//!
//! The machines we run on are small VMs whose speed wanders by ±15 % from one
//! few-second stretch to the next, with nothing else running. So the runs are
//! short and interleaved — round 1: a b c d e f, round 2: a b c d e f, … —
//! and each configuration's ratio to bare axum is the median over rounds of
//! the ratio to the (a) run of the *same* round, which pairs measurements
//! taken seconds apart. The interquartile range of those per-round ratios is
//! printed beside the median so the noise is in plain view.
//!
//! Besides wrk's req/s and latency we read the server's CPU time from /proc:
//! CPU per request shows the cost of a layer even where the client, not the
//! server, limits throughput.
//!
//! A run during which other programs (a compiler, a test suite) used the CPUs
//! is thrown away and repeated once the machine is quiet again.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use crate::receiver::ReceiverProcess;
use crate::servers::{Config, CpuSnapshot, QUIET, ServerProcess, wait_for_quiet};
use crate::wrk::{self, Load, WrkResult};
use crate::{fmt_duration, median, parse_seconds, quantile};

/// The routes measured, in table order.
const ROUTES: [&str; 2] = ["/hello", "/json"];

/// Tries per run when other programs disturb it.
const MAX_ATTEMPTS: u32 = 4;
/// How long to wait for other programs to finish.
const QUIET_PATIENCE: Duration = Duration::from_secs(120);
/// Longer than the SDK batch processor's schedule delay (5 s): after it, every
/// span not dropped has reached the receiver.
const EXPORT_SETTLE: Duration = Duration::from_secs(6);

/// Flags of `overhead` (also part of `all`).
#[derive(Debug, clap::Args)]
#[group(id = "overhead_args")]
pub struct Args {
    /// Seconds each route of each configuration is driven per round (wrk -d).
    #[arg(long, default_value = "5", value_parser = parse_seconds)]
    pub duration: u64,
    /// Seconds of unmeasured load on each route of each server before round 1.
    #[arg(long, default_value = "1", value_parser = parse_seconds)]
    pub warmup: u64,
    /// Interleaved rounds; each figure is the median over them.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub rounds: u32,
    /// Side-by-side rounds after the interleaved ones (0: none): each
    /// configuration and (a) driven at the same time, sharing the server CPU.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub side_by_side_rounds: u32,
    /// Keep-alive connections wrk holds open (wrk -c).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub connections: u32,
    /// wrk threads (wrk -t); more than one only helps with more client CPUs.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub threads: u32,
    /// Configurations to run, comma-separated; ratios need `bare`. Also
    /// available: `metrics-axum-serve` (b′, clientgone under `axum::serve`).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = Config::ALL)]
    pub configs: Vec<Config>,
    /// CPU the servers are pinned to.
    #[arg(long, default_value_t = 0)]
    pub server_cpu: u32,
    /// CPU wrk is pinned to.
    #[arg(long, default_value_t = 1)]
    pub client_cpu: u32,
}

/// One measured run: one route of one configuration in one round.
#[derive(Clone, Copy, Debug)]
struct Sample {
    wrk: WrkResult,
    /// Server CPU time per completed request, µs.
    cpu_us: f64,
    /// Server CPU time over wall time (1.0 = the pinned CPU fully busy).
    busy: f64,
}

type Key = (Config, &'static str);

/// Runs the benchmark and returns its Markdown tables.
pub fn run(args: &Args) -> Result<String, String> {
    if args.server_cpu == args.client_cpu {
        return Err("--server-cpu and --client-cpu must differ".into());
    }
    let mut configs: Vec<Config> = Vec::new();
    for &c in &args.configs {
        if !configs.contains(&c) {
            configs.push(c);
        }
    }
    let load = |seconds: u64| Load {
        threads: args.threads,
        connections: args.connections,
        seconds,
        cpu: Some(args.client_cpu),
    };

    eprintln!("overhead: probing how steady the CPU is");
    let probe = speed_probe();
    let mut servers = Vec::new();
    // Traced configurations export to a receiver of their own, beside wrk:
    // a collector's decoding is not the server's cost.
    let mut receivers = BTreeMap::new();
    for &config in &configs {
        let server = if config.exports_spans() {
            let receiver = ReceiverProcess::spawn(Some(args.client_cpu))?;
            let endpoint = receiver.endpoint();
            receivers.insert(config, receiver);
            ServerProcess::spawn(
                config,
                Some(args.server_cpu),
                &["--otlp-endpoint", &endpoint],
            )?
        } else {
            ServerProcess::spawn(config, Some(args.server_cpu), &[])?
        };
        servers.push((config, server));
    }
    let mut served: BTreeMap<Config, u64> = BTreeMap::new();
    wait_for_quiet(QUIET_PATIENCE);
    for (config, server) in &servers {
        eprintln!("overhead: warming up {}", config.label());
        for route in ROUTES {
            let url = format!("http://{}{route}", server.addr);
            *served.entry(*config).or_default() += wrk::run(&url, load(args.warmup))?.requests;
        }
    }

    let mut samples: BTreeMap<Key, Vec<Sample>> = BTreeMap::new();
    let mut problems = Vec::new();
    let mut repeated = 0;
    for round in 1..=args.rounds {
        eprintln!("overhead: round {round}/{}", args.rounds);
        for (config, server) in &servers {
            for route in ROUTES {
                let (sample, tries) = measure(server, route, load(args.duration))?;
                repeated += tries - 1;
                eprintln!(
                    "  {:<48} {route:<6} {:>7.0} req/s  p50 {:>8}  p99 {:>8}  {:>6.2} µs CPU/req",
                    config.label(),
                    sample.wrk.rps,
                    fmt_duration(sample.wrk.p50),
                    fmt_duration(sample.wrk.p99),
                    sample.cpu_us
                );
                if tries > MAX_ATTEMPTS {
                    problems.push(format!(
                        "round {round}, {} {route}: other programs used the CPUs in all \
                         {MAX_ATTEMPTS} tries; the last one is kept",
                        config.label()
                    ));
                }
                let w = sample.wrk;
                if w.socket_errors > 0 || w.non_2xx > 0 || w.requests == 0 {
                    problems.push(format!(
                        "round {round}, {} {route}: {} socket errors, {} non-2xx, {} requests",
                        config.label(),
                        w.socket_errors,
                        w.non_2xx,
                        w.requests
                    ));
                }
                *served.entry(*config).or_default() += w.requests;
                samples.entry((*config, route)).or_default().push(sample);
            }
        }
    }
    if repeated > 0 {
        problems.push(format!(
            "{repeated} run(s) were repeated because other programs used the CPUs meanwhile"
        ));
    }

    let side_by_side = side_by_side(
        args,
        &servers,
        load(args.duration),
        &mut served,
        &mut problems,
    )?;

    let mut exported = Vec::new();
    if servers.iter().any(|(c, _)| c.exports_spans()) {
        eprintln!(
            "overhead: waiting {} s for the last spans to be exported",
            EXPORT_SETTLE.as_secs()
        );
        std::thread::sleep(EXPORT_SETTLE);
        for (config, receiver) in &receivers {
            let spans = receiver.spans_received()?;
            exported.push((*config, spans, served.get(config).copied().unwrap_or(0)));
        }
    }
    drop(servers);
    drop(receivers);
    let mut table = render(args, &configs, &samples, &exported, &problems);
    table.push_str(&render_side_by_side(args, &configs, &side_by_side));
    let _ = writeln!(
        table,
        "\nCPU steadiness probe (before the runs): the same {PROBE_TRIES} × fixed loop took \
         {} min, {} median, {} max — a spread of {:.0} % that no layer causes.",
        fmt_duration(probe.0),
        fmt_duration(probe.1),
        fmt_duration(probe.2),
        (probe.2.as_secs_f64() / probe.0.as_secs_f64() - 1.0) * 100.0
    );
    Ok(table)
}

/// How many times [`speed_probe`] times its loop.
const PROBE_TRIES: usize = 100;

/// Times one fixed, allocation-free loop (about 30 ms) [`PROBE_TRIES`] times
/// and returns (min, median, max). On a steady machine they agree within a few
/// per cent; on a VM whose host is busy they do not, and the same holds for
/// every figure above.
fn speed_probe() -> (Duration, Duration, Duration) {
    let mut times = Vec::with_capacity(PROBE_TRIES);
    for _ in 0..PROBE_TRIES {
        let start = Instant::now();
        let mut x: u64 = 1;
        for i in 0..30_000_000u64 {
            x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(i));
        }
        std::hint::black_box(x);
        times.push(start.elapsed());
    }
    let min = quantile(&mut times, 0.0).unwrap_or_default();
    let med = quantile(&mut times, 0.5).unwrap_or_default();
    let max = quantile(&mut times, 1.0).unwrap_or_default();
    (min, med, max)
}

/// One side-by-side run: CPU per request of a configuration and of (a).
#[derive(Clone, Copy, Debug)]
struct Pair {
    cpu_us: f64,
    bare_cpu_us: f64,
    rps: f64,
    bare_rps: f64,
}

/// Drives each configuration and (a) at the same time, each with its own wrk.
///
/// Both servers share the server CPU and both wrks the client CPU, so both
/// live through the same fast and slow phases of the VM; what differs is only
/// what each spends per request. The scheduler shares the CPU by thread, not
/// by work done, so req/s splits are not the measure here: CPU time per
/// request (each server's own, from /proc) is.
fn side_by_side(
    args: &Args,
    servers: &[(Config, ServerProcess)],
    load: Load,
    served: &mut BTreeMap<Config, u64>,
    problems: &mut Vec<String>,
) -> Result<BTreeMap<Key, Vec<Pair>>, String> {
    let mut pairs: BTreeMap<Key, Vec<Pair>> = BTreeMap::new();
    let Some((_, bare)) = servers.iter().find(|(c, _)| *c == Config::Bare) else {
        return Ok(pairs);
    };
    for round in 1..=args.side_by_side_rounds {
        eprintln!(
            "overhead: side by side, round {round}/{}",
            args.side_by_side_rounds
        );
        for (config, server) in servers.iter().filter(|(c, _)| *c != Config::Bare) {
            for route in ROUTES {
                let mut attempt = 1;
                let pair = loop {
                    let others = CpuSnapshot::take();
                    let start = Instant::now();
                    let cpu = (server.cpu_time()?, bare.cpu_time()?);
                    let (this, that) = std::thread::scope(|scope| {
                        let url = format!("http://{}{route}", server.addr);
                        let bare_url = format!("http://{}{route}", bare.addr);
                        let this = scope.spawn(move || wrk::run(&url, load));
                        let that = scope.spawn(move || wrk::run(&bare_url, load));
                        (
                            this.join()
                                .unwrap_or_else(|_| Err("wrk thread panicked".into())),
                            that.join()
                                .unwrap_or_else(|_| Err("wrk thread panicked".into())),
                        )
                    });
                    let (this, that) = (this?, that?);
                    let used = (
                        server.cpu_time()?.saturating_sub(cpu.0),
                        bare.cpu_time()?.saturating_sub(cpu.1),
                    );
                    let foreign = CpuSnapshot::take().foreign_since(&others).as_secs_f64()
                        / start.elapsed().as_secs_f64();
                    *served.entry(*config).or_default() += this.requests;
                    *served.entry(Config::Bare).or_default() += that.requests;
                    let pair = Pair {
                        cpu_us: used.0.as_secs_f64() * 1e6 / this.requests.max(1) as f64,
                        bare_cpu_us: used.1.as_secs_f64() * 1e6 / that.requests.max(1) as f64,
                        rps: this.rps,
                        bare_rps: that.rps,
                    };
                    if foreign < QUIET || attempt == MAX_ATTEMPTS {
                        if foreign >= QUIET {
                            problems.push(format!(
                                "side by side round {round}, {} {route}: other programs used \
                                 the CPUs in all {MAX_ATTEMPTS} tries; the last one is kept",
                                config.label()
                            ));
                        }
                        break pair;
                    }
                    eprintln!(
                        "  other programs used {:.0} % of a CPU meanwhile: measuring again",
                        foreign * 100.0
                    );
                    attempt += 1;
                    wait_for_quiet(QUIET_PATIENCE);
                };
                eprintln!(
                    "  {:<48} {route:<6} {:>6.2} µs CPU/req beside (a)'s {:>6.2}",
                    config.label(),
                    pair.cpu_us,
                    pair.bare_cpu_us
                );
                pairs.entry((*config, route)).or_default().push(pair);
            }
        }
    }
    Ok(pairs)
}

fn render_side_by_side(
    args: &Args,
    configs: &[Config],
    pairs: &BTreeMap<Key, Vec<Pair>>,
) -> String {
    let mut out = String::new();
    if pairs.is_empty() {
        return out;
    }
    let _ = writeln!(
        out,
        "\n### Side by side with (a) ({} round(s) of {} s per route)\n",
        args.side_by_side_rounds, args.duration
    );
    let _ = writeln!(
        out,
        "Each configuration and bare axum driven at the same time, each by its own wrk \
         (same flags), both servers on the server CPU: they share every fast and slow \
         phase of the VM. CPU/req ×(a) is the steadiest figure this machine gives: the \
         median over rounds of (CPU time per request of the configuration) / (that of (a) \
         in the same run), interquartile range in brackets. The req/s ratio only says \
         how the scheduler split the CPU.\n"
    );
    let _ = writeln!(
        out,
        "| configuration | route | CPU/req ×(a) | CPU/req | (a) beside it | req/s ×(a) |"
    );
    let _ = writeln!(out, "|---|---|--:|--:|--:|--:|");
    for route in ROUTES {
        for &config in configs {
            let Some(p) = pairs.get(&(config, route)) else {
                continue;
            };
            let mut ratios: Vec<f64> = p.iter().map(|p| p.cpu_us / p.bare_cpu_us).collect();
            let m = median(&ratios);
            let q1 = quantile(&mut ratios, 0.25).unwrap_or(f64::NAN);
            let q3 = quantile(&mut ratios, 0.75).unwrap_or(f64::NAN);
            let _ = writeln!(
                out,
                "| {} | `{route}` | {m:.3} ({q1:.2}–{q3:.2}) | {:.2} µs | {:.2} µs | {:.3} |",
                config.label(),
                median(&p.iter().map(|p| p.cpu_us).collect::<Vec<_>>()),
                median(&p.iter().map(|p| p.bare_cpu_us).collect::<Vec<_>>()),
                median(&p.iter().map(|p| p.rps / p.bare_rps).collect::<Vec<_>>()),
            );
        }
    }
    out
}

/// One wrk run against `server`, repeated (up to [`MAX_ATTEMPTS`] times) while
/// other programs disturb it. Returns the sample and the number of tries,
/// `MAX_ATTEMPTS + 1` when even the last try was disturbed.
fn measure(server: &ServerProcess, route: &str, load: Load) -> Result<(Sample, u32), String> {
    let url = format!("http://{}{route}", server.addr);
    let mut attempt = 1;
    loop {
        let others = CpuSnapshot::take();
        let cpu_before = server.cpu_time()?;
        let start = Instant::now();
        let result = wrk::run(&url, load)?;
        let wall = start.elapsed();
        let cpu = server.cpu_time()?.saturating_sub(cpu_before);
        let foreign = CpuSnapshot::take().foreign_since(&others).as_secs_f64() / wall.as_secs_f64();
        let sample = Sample {
            wrk: result,
            cpu_us: cpu.as_secs_f64() * 1e6 / result.requests.max(1) as f64,
            busy: cpu.as_secs_f64() / wall.as_secs_f64(),
        };
        if foreign < QUIET {
            return Ok((sample, attempt));
        }
        eprintln!(
            "  other programs used {:.0} % of a CPU meanwhile: measuring again",
            foreign * 100.0
        );
        if attempt == MAX_ATTEMPTS {
            return Ok((sample, MAX_ATTEMPTS + 1));
        }
        attempt += 1;
        wait_for_quiet(QUIET_PATIENCE);
    }
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Median and interquartile range of the per-round ratios `f(config) / f(a)`.
fn paired_ratio(
    samples: &[Sample],
    bare: Option<&Vec<Sample>>,
    f: fn(&Sample) -> f64,
) -> Option<(f64, f64, f64)> {
    let bare = bare?;
    let mut ratios: Vec<f64> = samples
        .iter()
        .zip(bare)
        .filter(|(_, b)| f(b) > 0.0)
        .map(|(s, b)| f(s) / f(b))
        .collect();
    if ratios.is_empty() {
        return None;
    }
    let m = median(&ratios);
    let q1 = quantile(&mut ratios, 0.25)?;
    let q3 = quantile(&mut ratios, 0.75)?;
    Some((m, q1, q3))
}

fn render(
    args: &Args,
    configs: &[Config],
    samples: &BTreeMap<Key, Vec<Sample>>,
    exported: &[(Config, u64, u64)],
    problems: &[String],
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## Overhead (wrk -t{} -c{} -d{}s --latency, keep-alive; {} interleaved round(s))\n",
        args.threads, args.connections, args.duration, args.rounds
    );
    let _ = writeln!(
        out,
        "Ratios are to (a) bare axum on the same route, paired within each round: the \
         median over rounds, with the interquartile range in brackets. req/s: higher \
         is better; latency and CPU per request: lower is better. Absolute figures are \
         medians over rounds. \"CPU/req\" is the server process's CPU time (all \
         threads, from /proc) per completed request; \"busy\" is how much of its one \
         CPU it used. \"Fast runs\" compares the 90th percentile of req/s (10th of \
         CPU/req) over rounds: the runs that caught the VM in its fast phase.\n"
    );
    let _ = writeln!(
        out,
        "| configuration | route | req/s ×(a) | p50 ×(a) | p99 ×(a) | CPU/req ×(a) \
         | fast runs: req/s ×(a) | fast runs: CPU/req ×(a) \
         | req/s | p50 | p99 | CPU/req | busy |"
    );
    let _ = writeln!(out, "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    for route in ROUTES {
        let bare = samples.get(&(Config::Bare, route));
        for &config in configs {
            let Some(s) = samples.get(&(config, route)) else {
                continue;
            };
            let ratio = |f: fn(&Sample) -> f64| match paired_ratio(s, bare, f) {
                Some((m, q1, q3)) if config != Config::Bare => {
                    format!("{m:.3} ({q1:.2}–{q3:.2})")
                }
                Some(_) => "1".to_owned(),
                None => "—".to_owned(),
            };
            // The runs that caught the VM in its fast phase: the 90th
            // percentile of req/s (10th of CPU/req), not the extreme, so one
            // lucky run does not decide.
            let fast_ratio = |q: f64, f: fn(&Sample) -> f64| {
                let pick = |v: &Vec<Sample>| quantile(&mut v.iter().map(f).collect::<Vec<_>>(), q);
                match (pick(s), bare.and_then(pick)) {
                    (Some(_), Some(_)) if config == Config::Bare => "1".to_owned(),
                    (Some(x), Some(b)) if b > 0.0 => format!("{:.3}", x / b),
                    _ => "—".to_owned(),
                }
            };
            let med = |f: fn(&Sample) -> f64| median(&s.iter().map(f).collect::<Vec<_>>());
            let _ = writeln!(
                out,
                "| {} | `{route}` | {} | {} | {} | {} | {} | {} | {:.0} | {} | {} | {:.2} µs | {:.0} % |",
                config.label(),
                ratio(|s| s.wrk.rps),
                ratio(|s| us(s.wrk.p50)),
                ratio(|s| us(s.wrk.p99)),
                ratio(|s| s.cpu_us),
                fast_ratio(0.9, |s| s.wrk.rps),
                fast_ratio(0.1, |s| s.cpu_us),
                med(|s| s.wrk.rps),
                fmt_duration(Duration::from_secs_f64(med(|s| us(s.wrk.p50)) / 1e6)),
                fmt_duration(Duration::from_secs_f64(med(|s| us(s.wrk.p99)) / 1e6)),
                med(|s| s.cpu_us),
                med(|s| s.busy) * 100.0,
            );
        }
    }
    if !exported.is_empty() {
        let _ = writeln!(
            out,
            "\nSpans that reached the discarding OTLP receiver, against requests served \
             (warm-up included), {} s after the last run:\n",
            EXPORT_SETTLE.as_secs()
        );
        let _ = writeln!(out, "| configuration | spans received | requests | share |");
        let _ = writeln!(out, "|---|--:|--:|--:|");
        for (config, spans, requests) in exported {
            let _ = writeln!(
                out,
                "| {} | {spans} | {requests} | {:.3} |",
                config.label(),
                *spans as f64 / (*requests).max(1) as f64
            );
        }
    }
    if !problems.is_empty() {
        let _ = writeln!(out, "\nProblems seen:\n");
        for p in problems {
            let _ = writeln!(out, "- {p}");
        }
    }
    out
}
