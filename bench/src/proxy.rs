//! `proxy`: `clientgone proxy` against nginx, both on one CPU in front of the
//! same upstream — throughput and p99 under wrk, and how fast each one drops
//! the upstream request once its client is gone (issue 8).
//!
//! The upstream is a tiny hand-written HTTP/1.1 server on tokio in *this*
//! process (pinned to CPU 1 with wrk): `/hello` answers a fixed 13-byte body
//! on a keep-alive connection, cheaper than any framework, so the proxies are
//! the bottleneck. `/slow` never answers; it reports when it has the request
//! and then the instant its read side sees EOF or an error — taken from the
//! same monotonic clock the client uses when it closes, so the difference is
//! the cancel latency through the proxy.

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::agent::{AgentProcess, ChildGuard, PinSelf, tree_cpu_time};
use crate::close::Close;
use crate::servers::{CpuSnapshot, http_get, wait_for_quiet};
use crate::wrk::{self, Load, WrkResult};
use crate::{fmt_duration, median, parse_seconds, quantile};

/// Connections the upstream has accepted: shows whether a proxy reuses its
/// upstream connections under load (a proxy that reconnects per request
/// would be measuring connection setup, not proxying).
static ACCEPTED: AtomicU64 = AtomicU64::new(0);

/// How long a cancel may take before the sample counts as missed.
const CANCEL_PATIENCE: Duration = Duration::from_secs(2);
/// Missed samples in a row after which a series is given up: the proxy does
/// not cancel at all, and 200 × 2 s would only burn time.
const GIVE_UP_AFTER: u32 = 5;
/// Unrecorded cancel samples per series first.
const WARMUP: u32 = 10;

const HELLO: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\nHello, World!";

/// Flags of `proxy` (also part of `all`).
#[derive(Debug, clap::Args)]
#[group(id = "proxy_args")]
pub struct Args {
    /// Seconds of each wrk run.
    #[arg(long, default_value = "5", value_parser = parse_seconds)]
    pub proxy_duration: u64,
    /// Interleaved rounds (clientgone, nginx, clientgone, nginx, …).
    #[arg(long, default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub proxy_rounds: u32,
    /// Side-by-side rounds: both proxies driven at the same moment, each by
    /// its own wrk, both on CPU 0 — CPU per request compared within the same
    /// phase of the machine (0: none).
    #[arg(long, default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(0..=100))]
    pub proxy_side_by_side_rounds: u32,
    /// wrk connections, the same for both proxies.
    #[arg(long, default_value_t = 32,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub proxy_connections: u32,
    /// Cancel samples per proxy and kind of close (FIN, RST).
    #[arg(long, default_value_t = 200,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub cancel_samples: u32,
}

/// What the upstream tells the client side.
#[derive(Debug)]
enum Event {
    /// `/slow?n=ID` arrived.
    Got(u64),
    /// The connection that carried `/slow?n=ID` saw EOF or an error, at this instant.
    Closed(u64, Instant),
}

/// Runs the benchmark and returns its Markdown tables.
pub fn run(args: &Args) -> Result<String, String> {
    // Upstream, client and wrk on CPU 1; the runtime is built after the
    // pinning so its threads inherit it.
    let _pin = PinSelf::to(1)?;
    let runtime = crate::runtime(Some(1))?;
    let (upstream, mut events) = runtime.block_on(start_upstream())?;
    eprintln!("proxy: upstream on {upstream}");

    let clientgone = AgentProcess::spawn(
        0,
        &[
            "proxy",
            "--upstream",
            &format!("http://{upstream}"),
            "--route",
            "/users/{id}",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    )?;
    let mut nginx = Nginx::start(0, upstream)?;
    let proxies = [("clientgone", clientgone.addr), ("nginx", nginx.addr)];
    for (name, addr) in proxies {
        let body = http_get(addr, "/hello").map_err(|e| format!("{name}: {e}"))?;
        if body != "Hello, World!" {
            return Err(format!("{name} answered /hello with {body:?}"));
        }
    }

    // Throughput: warm-up, then interleaved rounds.
    let load = |seconds| Load {
        threads: 1,
        connections: args.proxy_connections,
        seconds,
        cpu: Some(1),
    };
    for (name, addr) in proxies {
        eprintln!("proxy: warm-up {name}");
        wrk::run(&format!("http://{addr}/hello"), load(1))?;
    }
    wait_for_quiet(Duration::from_secs(120));
    let before = CpuSnapshot::take();
    let start = Instant::now();
    let mut results: [Vec<WrkResult>; 2] = [Vec::new(), Vec::new()];
    // CPU per request, per run: the proxy's own processes, from /proc.
    let mut cpu_per_req: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let pids = [clientgone.pid(), nginx.guard.pid()];
    let mut nginx_cpu = Duration::ZERO;
    let mut opened: [Vec<u64>; 2] = [Vec::new(), Vec::new()];
    for round in 1..=args.proxy_rounds {
        for (i, (name, addr)) in proxies.iter().enumerate() {
            eprintln!("proxy: round {round}/{} {name}", args.proxy_rounds);
            let cpu_before = tree_cpu_time(pids[i])?;
            let accepted_before = ACCEPTED.load(Ordering::Relaxed);
            let result = wrk::run(&format!("http://{addr}/hello"), load(args.proxy_duration))?;
            let used = tree_cpu_time(pids[i])?.saturating_sub(cpu_before);
            opened[i].push(ACCEPTED.load(Ordering::Relaxed) - accepted_before);
            if i == 1 {
                nginx_cpu += used;
            }
            cpu_per_req[i].push(used.as_secs_f64() / result.requests.max(1) as f64);
            results[i].push(result);
        }
    }
    nginx.guard.check_alive()?;
    // nginx's worker is its master's child, not ours, so the snapshot counts
    // it as another program; take it out again.
    let foreign_wrk = CpuSnapshot::take()
        .foreign_since(&before)
        .saturating_sub(nginx_cpu)
        .as_secs_f64()
        / start.elapsed().as_secs_f64();
    let side_by_side = side_by_side(args, &proxies, pids)?;
    nginx.guard.check_alive()?;

    // Cancel latency: samples interleaved over proxies and closes, so drift
    // affects all four series alike.
    eprintln!(
        "proxy: cancel latency, {} samples per series",
        args.cancel_samples
    );
    let cancel = runtime.block_on(cancel_series(&proxies, args.cancel_samples, &mut events))?;

    let mut out = tables(args, &results, &cpu_per_req, &opened, &cancel, foreign_wrk);
    out.push_str(&side_by_side_table(args, &side_by_side));
    Ok(out)
}

/// One side-by-side round: per proxy, req/s and CPU per request.
struct SideBySide {
    rps: [f64; 2],
    cpu_per_req: [f64; 2],
    /// Socket errors and non-2xx answers: cheap failures would flatter CPU per request.
    errors: [u64; 2],
}

/// Both proxies under load at once, each by its own wrk: they share every fast
/// and slow phase of this VM, so their CPU per request compares steadily.
fn side_by_side(
    args: &Args,
    proxies: &[(&str, SocketAddr); 2],
    pids: [u32; 2],
) -> Result<Vec<SideBySide>, String> {
    let load = Load {
        threads: 1,
        connections: args.proxy_connections,
        seconds: args.proxy_duration,
        cpu: Some(1),
    };
    let mut rounds = Vec::new();
    for round in 1..=args.proxy_side_by_side_rounds {
        eprintln!(
            "proxy: side by side {round}/{}",
            args.proxy_side_by_side_rounds
        );
        let before = [tree_cpu_time(pids[0])?, tree_cpu_time(pids[1])?];
        let results = std::thread::scope(|scope| {
            let runs = proxies.map(|(_, addr)| {
                scope.spawn(move || wrk::run(&format!("http://{addr}/hello"), load))
            });
            runs.map(|run| {
                run.join()
                    .unwrap_or_else(|_| Err("wrk thread panicked".into()))
            })
        });
        let [clientgone, nginx] = results;
        let (clientgone, nginx) = (clientgone?, nginx?);
        let used = [
            tree_cpu_time(pids[0])?.saturating_sub(before[0]),
            tree_cpu_time(pids[1])?.saturating_sub(before[1]),
        ];
        rounds.push(SideBySide {
            rps: [clientgone.rps, nginx.rps],
            cpu_per_req: [
                used[0].as_secs_f64() / clientgone.requests.max(1) as f64,
                used[1].as_secs_f64() / nginx.requests.max(1) as f64,
            ],
            errors: [
                clientgone.socket_errors + clientgone.non_2xx,
                nginx.socket_errors + nginx.non_2xx,
            ],
        });
    }
    Ok(rounds)
}

fn side_by_side_table(args: &Args, rounds: &[SideBySide]) -> String {
    let mut out = String::new();
    if rounds.is_empty() {
        return out;
    }
    let _ = writeln!(
        out,
        "\n### Side by side: both proxies under load at the same moment\n\n\
         {} round(s) of {} s: each proxy driven by its own wrk (-t1 -c{}), both on CPU 0, so \
         they share every fast and slow phase of the machine. CPU per request is the \
         steadiest comparison; req/s only says how the scheduler split CPU 0.\n",
        rounds.len(),
        args.proxy_duration,
        args.proxy_connections
    );
    let _ = writeln!(
        out,
        "| round | CPU/req clientgone | CPU/req nginx | CPU/req ratio | req/s clientgone | req/s nginx | errors (cg / nginx) |"
    );
    let _ = writeln!(out, "|--:|--:|--:|--:|--:|--:|--:|");
    let mut ratios = Vec::new();
    for (i, r) in rounds.iter().enumerate() {
        let ratio = r.cpu_per_req[0] / r.cpu_per_req[1];
        ratios.push(ratio);
        let _ = writeln!(
            out,
            "| {} | {:.2} µs | {:.2} µs | {ratio:.3} | {:.0} | {:.0} | {} / {} |",
            i + 1,
            r.cpu_per_req[0] * 1e6,
            r.cpu_per_req[1] * 1e6,
            r.rps[0],
            r.rps[1],
            r.errors[0],
            r.errors[1]
        );
    }
    let _ = writeln!(out, "| **median** | | | **{:.3}** | | |", median(&ratios));
    out
}

/// Binds the upstream and spawns its accept loop on the current runtime.
async fn start_upstream() -> Result<(SocketAddr, mpsc::UnboundedReceiver<Event>), String> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("cannot bind the upstream: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            ACCEPTED.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(upstream_connection(stream, tx.clone()));
        }
    });
    Ok((addr, rx))
}

/// One upstream connection: answers `/hello` requests until `/slow` comes,
/// then only waits for the connection to close. Requests carry no bodies
/// (both proxies forward a body-less `GET` without one), so a request is its head.
async fn upstream_connection(mut stream: TcpStream, events: mpsc::UnboundedSender<Event>) {
    let _ = stream.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        let end = loop {
            if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break pos + 4;
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let slow = {
            let head = String::from_utf8_lossy(&buf[..end]);
            let target = head.split_whitespace().nth(1).unwrap_or_default();
            target
                .strip_prefix("/slow?n=")
                .and_then(|n| n.parse::<u64>().ok())
        };
        buf.drain(..end);
        let Some(id) = slow else {
            if stream.write_all(HELLO).await.is_err() {
                return;
            }
            continue;
        };
        let _ = events.send(Event::Got(id));
        // The proxy's cancel is what we wait for: EOF (it closed) or an
        // error (it reset). Anything it sends meanwhile is ignored.
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => {
                    let _ = events.send(Event::Closed(id, Instant::now()));
                    return;
                }
                Ok(_) => {}
            }
        }
    }
}

/// Per (proxy, close): the latencies, how many missed, and whether the
/// series was given up.
struct Series {
    proxy: &'static str,
    close: Close,
    times: Vec<Duration>,
    missed: u32,
    given_up: bool,
}

async fn cancel_series(
    proxies: &[(&'static str, SocketAddr); 2],
    samples: u32,
    events: &mut mpsc::UnboundedReceiver<Event>,
) -> Result<Vec<Series>, String> {
    let mut series: Vec<Series> = proxies
        .iter()
        .flat_map(|&(proxy, _)| {
            [Close::Fin, Close::Rst].map(|close| Series {
                proxy,
                close,
                times: Vec::new(),
                missed: 0,
                given_up: false,
            })
        })
        .collect();
    let mut id = 0u64;
    let mut streak = vec![0u32; series.len()];
    for i in 0..WARMUP + samples {
        for (s, streak) in series.iter_mut().zip(streak.iter_mut()) {
            if s.given_up {
                continue;
            }
            let addr = proxies
                .iter()
                .find(|(p, _)| *p == s.proxy)
                .map(|(_, a)| *a)
                .ok_or("unknown proxy")?;
            id += 1;
            let sample = cancel_sample(addr, s.close, id, events).await?;
            match sample {
                Some(d) => {
                    *streak = 0;
                    if i >= WARMUP {
                        s.times.push(d);
                    }
                }
                None => {
                    if i >= WARMUP {
                        s.missed += 1;
                    }
                    *streak += 1;
                    if *streak >= GIVE_UP_AFTER {
                        eprintln!(
                            "  {} never cancelled after {} in {GIVE_UP_AFTER} tries; giving up this series",
                            s.proxy,
                            s.close.label()
                        );
                        s.given_up = true;
                    }
                }
            }
        }
    }
    Ok(series)
}

/// One sample: `GET /slow` through the proxy, wait until the upstream has it,
/// close, and time until the upstream sees its connection close. `None` if it
/// does not within [`CANCEL_PATIENCE`].
async fn cancel_sample(
    addr: SocketAddr,
    close: Close,
    id: u64,
    events: &mut mpsc::UnboundedReceiver<Event>,
) -> Result<Option<Duration>, String> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    let _ = stream.set_nodelay(true);
    stream
        .write_all(format!("GET /slow?n={id} HTTP/1.1\r\nHost: bench\r\n\r\n").as_bytes())
        .await
        .map_err(|e| format!("send: {e}"))?;
    // Events of earlier, given-up samples may still come; only ours count.
    wait_for(
        events,
        Duration::from_secs(5),
        |e| matches!(e, Event::Got(n) if *n == id),
    )
    .await
    .ok_or_else(|| format!("the upstream never got /slow?n={id} through {addr}"))?;
    let closed_at = close.close(stream)?;
    let seen = wait_for(
        events,
        CANCEL_PATIENCE,
        |e| matches!(e, Event::Closed(n, _) if *n == id),
    )
    .await;
    Ok(match seen {
        Some(Event::Closed(_, at)) => Some(at.saturating_duration_since(closed_at)),
        _ => None,
    })
}

async fn wait_for(
    events: &mut mpsc::UnboundedReceiver<Event>,
    patience: Duration,
    wanted: impl Fn(&Event) -> bool,
) -> Option<Event> {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(e)) if wanted(&e) => return Some(e),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return None,
        }
    }
}

/// nginx as our own process: a generated config in a temporary directory,
/// `daemon off`, one worker, pinned with `taskset`. Stopped with SIGTERM (the
/// master then stops its worker) and the directory removed when dropped.
struct Nginx {
    // Field order is drop order: stop nginx before removing its directory.
    guard: ChildGuard,
    _dir: TempDir,
    addr: SocketAddr,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Nginx {
    fn start(cpu: u32, upstream: SocketAddr) -> Result<Self, String> {
        let dir = TempDir(
            std::env::temp_dir().join(format!("clientgone-bench-nginx-{}", std::process::id())),
        );
        std::fs::create_dir_all(&dir.0)
            .map_err(|e| format!("cannot create {}: {e}", dir.0.display()))?;
        // A free port: bind, read it, let go. nginx binds it a moment later.
        let addr = StdListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("cannot find a free port: {e}"))?;
        let d = dir.0.display();
        // Defaults everywhere the comparison does not need a setting: in
        // particular `proxy_ignore_client_abort off`, so nginx watches the
        // client's socket while it waits for the upstream.
        let conf = format!(
            "worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    upstream app {{
        server {upstream};
        keepalive 32;
    }}
    server {{
        listen {addr};
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }}
    }}
}}
"
        );
        let conf_path = dir.0.join("nginx.conf");
        std::fs::write(&conf_path, conf)
            .map_err(|e| format!("cannot write the nginx config: {e}"))?;
        let mut command = Command::new("taskset");
        command
            .arg("-c")
            .arg(cpu.to_string())
            .arg("nginx")
            .arg("-c")
            .arg(&conf_path)
            .arg("-p")
            .arg(&dir.0)
            .arg("-e")
            .arg(dir.0.join("error.log"))
            .args(["-g", "daemon off;"]);
        let mut guard = ChildGuard::spawn(command, "nginx", true)?;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            guard
                .check_alive()
                .map_err(|e| format!("{e} (is nginx installed? apt-get install -y nginx)"))?;
            if std::net::TcpStream::connect(addr).is_ok() {
                break;
            }
            if Instant::now() >= deadline {
                return Err(format!("nginx does not listen on {addr} after 5 s"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Nginx {
            guard,
            _dir: dir,
            addr,
        })
    }
}

fn tables(
    args: &Args,
    results: &[Vec<WrkResult>; 2],
    cpu_per_req: &[Vec<f64>; 2],
    opened: &[Vec<u64>; 2],
    cancel: &[Series],
    foreign: f64,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## Proxy: clientgone proxy against nginx (both on CPU 0; upstream and wrk on CPU 1)\n"
    );
    let _ = writeln!(
        out,
        "`GET /hello`, wrk -t1 -c{} keep-alive, {} s per run, {} interleaved rounds \
         (clientgone, nginx, …). Ratios are clientgone / nginx within a round, median over rounds.\n",
        args.proxy_connections, args.proxy_duration, args.proxy_rounds
    );
    let _ = writeln!(
        out,
        "| round | clientgone req/s | nginx req/s | req/s ratio | clientgone p99 | nginx p99 | \
         p99 ratio | CPU/req clientgone | CPU/req nginx | CPU/req ratio | upstream connections \
         opened (cg / nginx) | errors (cg / nginx) |"
    );
    let _ = writeln!(out, "|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    let (mut rps_ratio, mut p99_ratio) = (Vec::new(), Vec::new());
    let mut cpu_ratio = Vec::new();
    for (i, (c, n)) in results[0].iter().zip(&results[1]).enumerate() {
        let r = c.rps / n.rps;
        let p = c.p99.as_secs_f64() / n.p99.as_secs_f64();
        let (cc, nc) = (cpu_per_req[0][i], cpu_per_req[1][i]);
        rps_ratio.push(r);
        p99_ratio.push(p);
        cpu_ratio.push(cc / nc);
        let _ = writeln!(
            out,
            "| {} | {:.0} | {:.0} | {r:.3} | {} | {} | {p:.3} | {:.2} µs | {:.2} µs | {:.3} | {} / {} | {} / {} |",
            i + 1,
            c.rps,
            n.rps,
            fmt_duration(c.p99),
            fmt_duration(n.p99),
            cc * 1e6,
            nc * 1e6,
            cc / nc,
            opened[0][i],
            opened[1][i],
            c.socket_errors + c.non_2xx,
            n.socket_errors + n.non_2xx
        );
    }
    let med =
        |v: &[WrkResult], f: fn(&WrkResult) -> f64| median(&v.iter().map(f).collect::<Vec<_>>());
    let _ = writeln!(
        out,
        "| **median** | {:.0} | {:.0} | **{:.3}** | {} | {} | **{:.3}** | {:.2} µs | {:.2} µs | **{:.3}** | | |",
        med(&results[0], |r| r.rps),
        med(&results[1], |r| r.rps),
        median(&rps_ratio),
        fmt_duration(Duration::from_secs_f64(med(&results[0], |r| r
            .p99
            .as_secs_f64()))),
        fmt_duration(Duration::from_secs_f64(med(&results[1], |r| r
            .p99
            .as_secs_f64()))),
        median(&p99_ratio),
        median(&cpu_per_req[0]) * 1e6,
        median(&cpu_per_req[1]) * 1e6,
        median(&cpu_ratio)
    );
    let _ = writeln!(
        out,
        "\nOther programs used {:.0} % of a CPU during the wrk rounds.\n",
        foreign * 100.0
    );

    let _ = writeln!(
        out,
        "### Upstream-cancel latency: client close → upstream sees its connection close\n"
    );
    let _ = writeln!(
        out,
        "{} samples per row after {WARMUP} warm-ups; a sample is missed if the upstream \
         sees no close within {} s, and a row is given up after {GIVE_UP_AFTER} misses in a row.\n",
        args.cancel_samples,
        CANCEL_PATIENCE.as_secs()
    );
    let _ = writeln!(
        out,
        "| proxy | client close | samples | p50 | p99 | max | missed |"
    );
    let _ = writeln!(out, "|---|---|--:|--:|--:|--:|--:|");
    for s in cancel {
        let mut t = s.times.clone();
        let q = |t: &mut Vec<Duration>, q: f64| {
            quantile(t, q).map_or_else(|| "—".to_owned(), fmt_duration)
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {}{} |",
            s.proxy,
            s.close.label(),
            s.times.len(),
            q(&mut t, 0.5),
            q(&mut t, 0.99),
            q(&mut t, 1.0),
            s.missed,
            if s.given_up {
                " (never cancels: given up)"
            } else {
                ""
            }
        );
    }
    out
}
