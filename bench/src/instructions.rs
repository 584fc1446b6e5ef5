//! `instructions`: user-space instructions per request, counted by valgrind's
//! callgrind — a figure this VM's noise cannot move.
//!
//! Wall-clock and CPU-time ratios on this machine wander by 10–40 % between
//! few-second stretches, and the guest has no hardware counters, so a 2 %
//! change in a layer's cost hides in the noise. Callgrind counts instructions
//! executed instead: the same binary, input and request pattern give the same
//! count whatever else the machine does.
//!
//! For each configuration and route the server runs twice under callgrind
//! (pinned to one CPU, so its runtime has one worker, as in `overhead`): once
//! serving `warmup + requests` requests and once `warmup + 2 × requests`.
//! The difference of the two totals over the `requests` between them is the
//! cost of one request in steady state — start-up, warm-up and exit cancel.
//!
//! What it does not see: the kernel (syscalls are the same for every
//! configuration, see BENCHMARKS.md), cache misses and the price of atomic
//! instructions, which callgrind counts as one instruction like any other.
//! So it ranks code paths exactly; CPU time still tells what they cost.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::memory::complete;
use crate::servers::Config;

/// The routes measured, in table order (as in `overhead`).
const ROUTES: [&str; 2] = ["/hello", "/json"];

/// Flags of `instructions`.
#[derive(Debug, clap::Args)]
#[group(id = "instructions_args")]
pub struct Args {
    /// Requests between the two runs' counts; the per-request figure is the
    /// difference of the totals divided by this.
    #[arg(long, default_value_t = 4000, value_parser = clap::value_parser!(u32).range(100..=1_000_000))]
    pub requests: u32,
    /// Requests both runs serve first, so caches, pools and label children
    /// exist before counting.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub warmup: u32,
    /// Keep-alive connections the requests are spread over.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub connections: u32,
    /// Configurations to count, comma-separated; ratios need `bare`.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_values_t = [Config::Bare, Config::Metrics, Config::MetricsAxumServe, Config::EarlyDrop, Config::AxumPrometheus]
    )]
    pub configs: Vec<Config>,
    /// CPU the server (under valgrind) is pinned to.
    #[arg(long, default_value_t = 0)]
    pub server_cpu: u32,
    /// Keep callgrind's output files in this directory (for
    /// `callgrind_annotate`); by default they are deleted.
    #[arg(long)]
    pub keep: Option<PathBuf>,
}

/// Runs the benchmark and returns its Markdown table.
pub fn run(args: &Args) -> Result<String, String> {
    if args.configs.iter().any(|c| c.exports_spans()) {
        return Err(
            "instructions counts the configurations without an OTLP receiver; \
             leave out traces, traces-sampled and trace-layer"
                .into(),
        );
    }
    let dir = match &args.keep {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            dir.clone()
        }
        None => std::env::temp_dir().join(format!("clientgone-callgrind-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut rows: Vec<(Config, &str, f64)> = Vec::new();
    for &config in &args.configs {
        for route in ROUTES {
            let short = count(args, config, route, args.warmup + args.requests, &dir)?;
            let long = count(args, config, route, args.warmup + 2 * args.requests, &dir)?;
            let per_request = long.saturating_sub(short) as f64 / f64::from(args.requests);
            eprintln!(
                "  {:<48} {route:<6} {per_request:>9.0} instructions/request",
                config.label()
            );
            rows.push((config, route, per_request));
        }
    }
    if args.keep.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(table(args, &rows))
}

/// Total instructions of one server process that served `requests` requests.
fn count(
    args: &Args,
    config: Config,
    route: &str,
    requests: u32,
    dir: &Path,
) -> Result<u64, String> {
    let route_name = route.trim_start_matches('/');
    let out = dir.join(format!(
        "callgrind.{}.{route_name}.{requests}",
        config.name()
    ));
    eprintln!(
        "instructions: {} {route}, {requests} requests",
        config.label()
    );
    let mut server = CallgrindServer::spawn(config, args.server_cpu, &out)?;
    let served = drive(server.addr, route, requests, args.connections);
    let totals = server.finish();
    served?;
    totals?;
    read_total(&out)
}

/// A server configuration under `valgrind --tool=callgrind`. Its output file
/// is written when the server exits, which it does when its stdin closes.
struct CallgrindServer {
    child: Option<Child>,
    addr: SocketAddr,
}

impl CallgrindServer {
    fn spawn(config: Config, cpu: u32, out: &Path) -> Result<Self, String> {
        let exe = std::env::current_exe().map_err(|e| format!("cannot find myself: {e}"))?;
        let mut child = Command::new("taskset")
            .arg("-c")
            .arg(cpu.to_string())
            .arg("valgrind")
            .arg("--tool=callgrind")
            .arg(format!("--callgrind-out-file={}", out.display()))
            .arg(exe)
            .args(["serve", "--config", &config.name(), "--port", "0"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => {
                    "taskset not found (Debian package util-linux)".to_owned()
                }
                _ => format!("cannot start valgrind: {e}"),
            })?;
        let mut stdout = child.stdout.take().ok_or("no stdout from valgrind")?;
        // The first line is the server's `listening on ADDR`; byte by byte, so
        // nothing after it is read away.
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while stdout.read(&mut byte).map_err(|e| e.to_string())? == 1 && byte[0] != b'\n' {
            line.push(byte[0]);
        }
        let addr = String::from_utf8_lossy(&line)
            .trim()
            .strip_prefix("listening on ")
            .and_then(|a| a.parse::<SocketAddr>().ok());
        let mut server = CallgrindServer {
            child: Some(child),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        match addr {
            Some(addr) => {
                server.addr = addr;
                Ok(server)
            }
            None => {
                let _ = server.finish();
                Err(format!(
                    "{} did not start under valgrind (is valgrind installed? \
                     apt-get install valgrind)",
                    config.name()
                ))
            }
        }
    }

    /// Closes the server's stdin (it exits, and callgrind writes its file)
    /// and waits for it.
    fn finish(&mut self) -> Result<(), String> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        drop(child.stdin.take());
        let status = child.wait().map_err(|e| e.to_string())?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("the server under valgrind ended with {status}"))
        }
    }
}

impl Drop for CallgrindServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Sends `requests` keep-alive `GET route` requests over `connections`
/// connections, one at a time on each, and checks every answer is whole.
fn drive(addr: SocketAddr, route: &str, requests: u32, connections: u32) -> Result<(), String> {
    let connections = connections.min(requests).max(1);
    let request = format!("GET {route} HTTP/1.1\r\nHost: bench\r\n\r\n");
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..connections)
            .map(|i| {
                // Spread the remainder so the total is exact.
                let n = requests / connections + u32::from(i < requests % connections);
                let request = request.as_bytes();
                scope.spawn(move || one_connection(addr, request, n))
            })
            .collect();
        workers.into_iter().try_for_each(|w| {
            w.join()
                .unwrap_or_else(|_| Err("a client thread panicked".into()))
        })
    })
}

fn one_connection(addr: SocketAddr, request: &[u8], n: u32) -> Result<(), String> {
    let mut stream =
        TcpStream::connect(addr).map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    // Valgrind runs the server some 50 times slower; this only bounds a hang.
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    let mut response = Vec::with_capacity(8192);
    let mut chunk = [0u8; 8192];
    for _ in 0..n {
        stream
            .write_all(request)
            .map_err(|e| format!("cannot send: {e}"))?;
        response.clear();
        while !complete(&response) {
            let read = stream
                .read(&mut chunk)
                .map_err(|e| format!("cannot read an answer: {e}"))?;
            if read == 0 {
                return Err("the server closed a keep-alive connection".into());
            }
            response.extend_from_slice(&chunk[..read]);
        }
        if !response.starts_with(b"HTTP/1.1 200") {
            return Err(format!(
                "unexpected answer: {:?}",
                String::from_utf8_lossy(&response[..response.len().min(40)])
            ));
        }
    }
    Ok(())
}

/// The `summary:` (or `totals:`) line of a callgrind output file: the
/// instructions of the whole run.
fn read_total(path: &Path) -> Result<u64, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read callgrind's output {}: {e}", path.display()))?;
    parse_total(&text).ok_or_else(|| format!("no instruction total in {}", path.display()))
}

fn parse_total(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| {
            l.strip_prefix("summary:")
                .or_else(|| l.strip_prefix("totals:"))
        })
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

fn table(args: &Args, rows: &[(Config, &str, f64)]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### Instructions per request (callgrind; {} requests counted after {} of warm-up, {} connections)\n",
        args.requests, args.warmup, args.connections
    );
    let _ = writeln!(
        out,
        "User-space instructions the server executed per request: the difference of two runs' \
         totals (warm-up + N and warm-up + 2N requests) over N. Deterministic on this VM; the \
         kernel's share, cache misses and the price of atomics are not in it.\n"
    );
    let _ = writeln!(
        out,
        "| configuration | route | instructions/request ×(a) | instructions/request | over (a) |"
    );
    let _ = writeln!(out, "|---|---|--:|--:|--:|");
    for &(config, route, per_request) in rows {
        let bare = rows
            .iter()
            .find(|(c, r, _)| *c == Config::Bare && *r == route)
            .map(|(_, _, n)| *n);
        let (ratio, over) = match bare {
            Some(b) if b > 0.0 => (
                format!("{:.3}", per_request / b),
                format!("{:+.0}", per_request - b),
            ),
            _ => ("–".into(), "–".into()),
        };
        let _ = writeln!(
            out,
            "| {} | `{route}` | {ratio} | {per_request:.0} | {over} |",
            config.label()
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_callgrind_totals() {
        let file = "version: 1\ncreator: callgrind-3.19.0\nevents: Ir\nsummary: 123456789\n\ntotals: 123456789\n";
        assert_eq!(parse_total(file), Some(123_456_789));
        assert_eq!(parse_total("events: Ir\n"), None);
    }
}
