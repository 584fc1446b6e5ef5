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
//! Traced configurations export to a discarding receiver (its own process,
//! not counted): their count includes building, batching and encoding
//! spans, which is the server's work.
//!
//! What it does not see: the kernel (syscalls per request are the same for
//! the servers and the Rust proxies, see BENCHMARKS.md), cache misses and the price of atomic
//! instructions, which callgrind counts as one instruction like any other.
//! So it ranks code paths exactly; CPU time still tells what they cost.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use clap::ValueEnum;

use crate::agent::PinSelf;
use crate::memory::complete;
use crate::proxy::{clientgone_proxy_args, nginx_setup, start_upstream};
use crate::receiver::ReceiverProcess;
use crate::servers::Config;

/// The signal that stops a server whose stdin does not (`kill -TERM`).
const SIGTERM: i32 = 15;

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
    /// Proxies to count, comma-separated (`GET /hello` through each to the
    /// bench's upstream, as in `proxy`); ratios are to nginx. `--proxies`
    /// alone: none.
    #[arg(long, value_enum, value_delimiter = ',', num_args = 0.., default_values_t = ProxyKind::ALL)]
    pub proxies: Vec<ProxyKind>,
    /// CPU the server (under valgrind) is pinned to; the proxies' upstream
    /// runs on the other one.
    #[arg(long, default_value_t = 0)]
    pub server_cpu: u32,
    /// Count the servers of another build of this bench (say, an earlier
    /// commit's), whose servers may not exit when their stdin closes: they
    /// are stopped with SIGTERM, which callgrind survives to write its count.
    #[arg(long, hide = true)]
    pub server_exe: Option<PathBuf>,
    /// Keep callgrind's output files in this directory (for
    /// `callgrind_annotate`); by default they are deleted.
    #[arg(long)]
    pub keep: Option<PathBuf>,
}

/// A proxy the `proxy` part compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ProxyKind {
    /// `clientgone proxy`.
    Clientgone,
    /// The bare axum + hyper-util proxy (`bare_proxy.rs`).
    Bare,
    /// nginx, one process (`master_process off`).
    Nginx,
}

impl ProxyKind {
    const ALL: [ProxyKind; 3] = [ProxyKind::Clientgone, ProxyKind::Bare, ProxyKind::Nginx];

    fn label(self) -> &'static str {
        match self {
            ProxyKind::Clientgone => "proxy: clientgone",
            ProxyKind::Bare => "proxy: bare hyper",
            ProxyKind::Nginx => "proxy: nginx",
        }
    }

    fn file_name(self) -> &'static str {
        match self {
            ProxyKind::Clientgone => "proxy-clientgone",
            ProxyKind::Bare => "proxy-bare",
            ProxyKind::Nginx => "proxy-nginx",
        }
    }
}

/// One counted row.
struct Row {
    label: &'static str,
    route: &'static str,
    per_request: f64,
    /// The row the others' ratios are to: (a) for servers, nginx for proxies.
    baseline: bool,
    proxy: bool,
}

/// Runs the benchmark and returns its Markdown table.
pub fn run(args: &Args) -> Result<String, String> {
    let dir = match &args.keep {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir().join(format!("clientgone-callgrind-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut rows = Vec::new();
    for &config in &args.configs {
        for route in ROUTES {
            let per_request = per_request(args, &Subject::Server(config), route, &dir)?;
            rows.push(Row {
                label: config.label(),
                route,
                per_request,
                baseline: config == Config::Bare,
                proxy: false,
            });
        }
    }
    if !args.proxies.is_empty() {
        // The proxies' upstream runs in this process, on the other CPU.
        let _pin = PinSelf::to(u32::from(args.server_cpu == 0))?;
        let runtime = crate::runtime(Some(1))?;
        let (upstream, _events) = runtime.block_on(start_upstream())?;
        for &kind in &args.proxies {
            let per_request = per_request(args, &Subject::Proxy(kind, upstream), "/hello", &dir)?;
            rows.push(Row {
                label: kind.label(),
                route: "/hello",
                per_request,
                baseline: kind == ProxyKind::Nginx,
                proxy: true,
            });
        }
    }
    if args.keep.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(table(args, &rows))
}

/// What runs under callgrind.
enum Subject {
    /// One of the `overhead` configurations.
    Server(Config),
    /// A proxy in front of the upstream at this address.
    Proxy(ProxyKind, SocketAddr),
}

impl Subject {
    fn label(&self) -> &'static str {
        match self {
            Subject::Server(config) => config.label(),
            Subject::Proxy(kind, _) => kind.label(),
        }
    }

    fn file_name(&self) -> String {
        match self {
            Subject::Server(config) => config.name(),
            Subject::Proxy(kind, _) => kind.file_name().to_owned(),
        }
    }
}

/// Instructions of one request: two counts, `requests` apart.
fn per_request(args: &Args, subject: &Subject, route: &str, dir: &Path) -> Result<f64, String> {
    let short = count(args, subject, route, args.warmup + args.requests, dir)?;
    let long = count(args, subject, route, args.warmup + 2 * args.requests, dir)?;
    let per_request = long.saturating_sub(short) as f64 / f64::from(args.requests);
    eprintln!(
        "  {:<48} {route:<6} {per_request:>9.0} instructions/request",
        subject.label()
    );
    Ok(per_request)
}

/// Total instructions of one server process that served `requests` requests.
fn count(
    args: &Args,
    subject: &Subject,
    route: &str,
    requests: u32,
    dir: &Path,
) -> Result<u64, String> {
    let route_name = route.trim_start_matches('/');
    let out = dir.join(format!(
        "callgrind.{}.{route_name}.{requests}",
        subject.file_name()
    ));
    eprintln!(
        "instructions: {} {route}, {requests} requests",
        subject.label()
    );
    let exe = match &args.server_exe {
        Some(exe) => exe.clone(),
        None => std::env::current_exe().map_err(|e| format!("cannot find myself: {e}"))?,
    };
    // Traced configurations export to a discarding receiver of their own,
    // on the other CPU and not under valgrind: a collector's work is not the
    // server's.
    let receiver = match subject {
        Subject::Server(config) if config.exports_spans() => Some(ReceiverProcess::spawn(Some(
            u32::from(args.server_cpu == 0),
        ))?),
        _ => None,
    };
    let endpoint = receiver.as_ref().map(ReceiverProcess::endpoint);
    let mut server = CallgrindServer::spawn(
        subject,
        &exe,
        args.server_cpu,
        &out,
        dir,
        endpoint.as_deref(),
        args.server_exe.is_some(),
    )?;
    let served = drive(server.addr, route, requests, args.connections);
    let totals = server.finish();
    served?;
    totals?;
    read_total(&out)
}

/// A server under `valgrind --tool=callgrind`. Callgrind writes its output
/// file when the server exits: ours exit when their stdin closes, nginx on
/// SIGTERM.
struct CallgrindServer {
    child: Option<Child>,
    addr: SocketAddr,
    /// Stopped with SIGTERM (nginx, and another build's servers).
    terminate: bool,
}

impl CallgrindServer {
    fn spawn(
        subject: &Subject,
        exe: &Path,
        cpu: u32,
        out: &Path,
        dir: &Path,
        otlp_endpoint: Option<&str>,
        foreign: bool,
    ) -> Result<Self, String> {
        let mut command = Command::new("taskset");
        command
            .arg("-c")
            .arg(cpu.to_string())
            .arg("valgrind")
            .arg("--tool=callgrind")
            .arg(format!("--callgrind-out-file={}", out.display()));
        // Where nginx will listen: known before it starts. Ours say it.
        let mut known = None;
        match *subject {
            Subject::Server(config) => {
                command
                    .arg(exe)
                    .args(["serve", "--config", &config.name(), "--port", "0"]);
                if let Some(endpoint) = otlp_endpoint {
                    command.args(["--otlp-endpoint", endpoint]);
                }
            }
            Subject::Proxy(ProxyKind::Clientgone, upstream) => {
                command
                    .arg(exe)
                    .arg("agent")
                    .args(clientgone_proxy_args(upstream));
            }
            Subject::Proxy(ProxyKind::Bare, upstream) => {
                command
                    .arg(exe)
                    .args(["bare-proxy", "--upstream", &upstream.to_string()]);
            }
            Subject::Proxy(ProxyKind::Nginx, upstream) => {
                let nginx_dir = dir.join("nginx");
                std::fs::create_dir_all(&nginx_dir)
                    .map_err(|e| format!("cannot create {}: {e}", nginx_dir.display()))?;
                let (addr, nginx_args) =
                    nginx_setup(&nginx_dir, upstream, "master_process off;\n")?;
                command.arg("nginx").args(nginx_args);
                known = Some(addr);
            }
        }
        let mut child = command
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
        let stdout = child.stdout.take();
        let mut server = CallgrindServer {
            child: Some(child),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            terminate: known.is_some() || foreign,
        };
        let addr = match known {
            Some(addr) => wait_until_listening(addr).then_some(addr),
            None => stdout.and_then(first_line_addr),
        };
        match addr {
            Some(addr) => {
                server.addr = addr;
                Ok(server)
            }
            None => {
                let _ = server.finish();
                Err(format!(
                    "{} did not start under valgrind (apt-get install valgrind{})",
                    subject.label(),
                    if known.is_some() { " nginx" } else { "" }
                ))
            }
        }
    }

    /// Stops the server (callgrind writes its file) and waits for it.
    fn finish(&mut self) -> Result<(), String> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        drop(child.stdin.take());
        if self.terminate {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .stderr(Stdio::null())
                .status();
        }
        let status = child.wait().map_err(|e| e.to_string())?;
        if status.success() || (self.terminate && status.signal() == Some(SIGTERM)) {
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

/// The address on the child's first line, `listening on ADDR[ …]`. Read byte
/// by byte, so nothing after it is taken from the pipe.
fn first_line_addr(mut stdout: std::process::ChildStdout) -> Option<SocketAddr> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while stdout.read(&mut byte).ok()? == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    String::from_utf8_lossy(&line)
        .trim()
        .strip_prefix("listening on ")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Waits until something accepts on `addr`: nginx under valgrind takes a
/// few seconds to start.
fn wait_until_listening(addr: SocketAddr) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        if TcpStream::connect(addr).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
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

fn table(args: &Args, rows: &[Row]) -> String {
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
         kernel's share, cache misses and the price of atomics are not in it. Servers are \
         compared with (a), proxies with nginx.\n"
    );
    let _ = writeln!(
        out,
        "| configuration | route | instructions/request × baseline | instructions/request | over baseline |"
    );
    let _ = writeln!(out, "|---|---|--:|--:|--:|");
    for row in rows {
        let baseline = rows
            .iter()
            .find(|b| b.baseline && b.proxy == row.proxy && b.route == row.route)
            .map(|b| b.per_request);
        let (ratio, over) = match baseline {
            Some(b) if b > 0.0 => (
                format!("{:.3}", row.per_request / b),
                format!("{:+.0}", row.per_request - b),
            ),
            _ => ("–".into(), "–".into()),
        };
        let _ = writeln!(
            out,
            "| {} | `{}` | {ratio} | {:.0} | {over} |",
            row.label, row.route, row.per_request
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
