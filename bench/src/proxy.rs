//! `proxy`: `clientgone proxy` against nginx, both on one CPU in front of the
//! same upstream — throughput and p99 under wrk, and how fast each one drops
//! the upstream request once its client is gone (issue 8). A third proxy, the
//! bare stack clientgone is built on (`bare_proxy.rs`), splits the gap to
//! nginx into the stack's share and clientgone's own.
//!
//! The upstream is a tiny hand-written HTTP/1.1 server on tokio in *this*
//! process (pinned to CPU 1 with wrk): `/hello` answers a fixed 13-byte body
//! on a keep-alive connection, cheaper than any framework, so the proxies are
//! the bottleneck. `/slow` never answers; it reports when it has the request
//! and then the instant its read side sees EOF or an error — taken from the
//! same monotonic clock the client uses when it closes, so the difference is
//! the cancel latency through the proxy.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::agent::{AgentProcess, ChildGuard, PinSelf, tree_cpu_time};
use crate::close::Close;
use crate::servers::{ChildProcess, CpuSnapshot, http_get, wait_for_quiet};
use crate::wrk::{self, Load, WrkResult};
use crate::{Bound, fmt_duration, median, parse_seconds, quantile, quantile_ci};

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
    /// Interleaved rounds (clientgone, bare hyper, nginx, clientgone, …).
    #[arg(long, default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub proxy_rounds: u32,
    /// Side-by-side rounds: in each, clientgone and then the bare stack driven
    /// at the same moment as nginx, each by its own wrk, both on CPU 0 — CPU per
    /// request compared within the same phase of the machine (0: none).
    #[arg(long, default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(0..=100))]
    pub proxy_side_by_side_rounds: u32,
    /// wrk connections, the same for every proxy.
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
pub(crate) enum Event {
    /// `/slow?n=ID` arrived.
    Got(u64),
    /// The connection that carried `/slow?n=ID` saw EOF or an error, at this instant.
    Closed(u64, Instant),
}

/// The proxies compared, in table order; nginx, the reference, last.
const NAMES: [&str; 3] = ["clientgone", "bare hyper", "nginx"];
/// Index of nginx in [`NAMES`].
const NGINX: usize = 2;
/// Index of the bare-stack proxy in [`NAMES`].
const BARE: usize = 1;
/// The ratios the tables report: (numerator, denominator) indices.
const PAIRS: [(usize, usize); 3] = [(0, NGINX), (BARE, NGINX), (0, BARE)];

/// One proxy under test.
#[derive(Clone, Copy)]
struct Proxy {
    name: &'static str,
    addr: SocketAddr,
    pid: u32,
}

/// Runs the benchmark and returns its Markdown tables.
pub fn run(args: &Args) -> Result<String, String> {
    // Upstream, client and wrk on CPU 1; the runtime is built after the
    // pinning so its threads inherit it.
    let _pin = PinSelf::to(1)?;
    let runtime = crate::runtime(Some(1))?;
    let (upstream, mut events) = runtime.block_on(start_upstream())?;
    eprintln!("proxy: upstream on {upstream}");

    let proxy_args = clientgone_proxy_args(upstream);
    let clientgone = AgentProcess::spawn(0, &proxy_args.each_ref().map(String::as_str))?;
    let bare = ChildProcess::spawn(
        &["bare-proxy", "--upstream", &upstream.to_string()],
        Some(0),
        "bare hyper proxy",
    )?;
    let mut nginx = Nginx::start(0, upstream)?;
    let proxies = [
        Proxy {
            name: NAMES[0],
            addr: clientgone.addr,
            pid: clientgone.pid(),
        },
        Proxy {
            name: NAMES[BARE],
            addr: bare.addr,
            pid: bare.pid(),
        },
        Proxy {
            name: NAMES[NGINX],
            addr: nginx.addr,
            pid: nginx.guard.pid(),
        },
    ];
    for p in &proxies {
        let body = http_get(p.addr, "/hello").map_err(|e| format!("{}: {e}", p.name))?;
        if body != "Hello, World!" {
            return Err(format!("{} answered /hello with {body:?}", p.name));
        }
    }

    // Throughput: warm-up, then interleaved rounds.
    let load = |seconds| Load {
        threads: 1,
        connections: args.proxy_connections,
        seconds,
        cpu: Some(1),
    };
    for p in &proxies {
        eprintln!("proxy: warm-up {}", p.name);
        wrk::run(&format!("http://{}/hello", p.addr), load(1))?;
    }
    wait_for_quiet(Duration::from_secs(120));
    let before = CpuSnapshot::take();
    let start = Instant::now();
    let mut runs: Vec<[Run; 3]> = Vec::new();
    let mut nginx_cpu = Duration::ZERO;
    for round in 1..=args.proxy_rounds {
        let mut row = Vec::with_capacity(3);
        for (i, p) in proxies.iter().enumerate() {
            eprintln!("proxy: round {round}/{} {}", args.proxy_rounds, p.name);
            let cpu_before = tree_cpu_time(p.pid)?;
            let accepted_before = ACCEPTED.load(Ordering::Relaxed);
            let wrk = wrk::run(
                &format!("http://{}/hello", p.addr),
                load(args.proxy_duration),
            )?;
            // CPU per request, per run: the proxy's own processes, from /proc.
            let used = tree_cpu_time(p.pid)?.saturating_sub(cpu_before);
            if i == NGINX {
                nginx_cpu += used;
            }
            row.push(Run {
                cpu_per_req: used.as_secs_f64() / wrk.requests.max(1) as f64,
                opened: ACCEPTED.load(Ordering::Relaxed) - accepted_before,
                wrk,
            });
        }
        runs.push(row.try_into().map_err(|_| "three runs per round")?);
    }
    nginx.guard.check_alive()?;
    // nginx's worker is its master's child, not ours, so the snapshot counts
    // it as another program; take it out again.
    let foreign_wrk = CpuSnapshot::take()
        .foreign_since(&before)
        .saturating_sub(nginx_cpu)
        .as_secs_f64()
        / start.elapsed().as_secs_f64();
    let side_by_side = side_by_side(args, &proxies)?;
    nginx.guard.check_alive()?;

    // Cancel latency: samples interleaved over proxies and closes, so drift
    // affects all series alike.
    eprintln!(
        "proxy: cancel latency, {} samples per series",
        args.cancel_samples
    );
    let cancel = runtime.block_on(cancel_series(&proxies, args.cancel_samples, &mut events))?;

    let mut out = tables(args, &runs, &cancel, foreign_wrk);
    out.push_str(&side_by_side_table(args, &side_by_side));
    Ok(out)
}

/// One proxy's wrk run in one interleaved round.
struct Run {
    wrk: WrkResult,
    /// The proxy's CPU time (all its processes) per completed request.
    cpu_per_req: f64,
    /// Connections the upstream accepted during the run.
    opened: u64,
}

/// One side-by-side run: a proxy and nginx under load at the same moment.
struct SideBySide {
    /// Index of the proxy run beside nginx.
    proxy: usize,
    rps: [f64; 2],
    cpu_per_req: [f64; 2],
    /// Socket errors and non-2xx answers: cheap failures would flatter CPU per request.
    errors: [u64; 2],
}

/// Each proxy and nginx under load at once, each by its own wrk: they share
/// every fast and slow phase of this VM, so their CPU per request compares
/// steadily. Every round runs clientgone beside nginx, then the bare stack.
fn side_by_side(args: &Args, proxies: &[Proxy; 3]) -> Result<Vec<SideBySide>, String> {
    let load = Load {
        threads: 1,
        connections: args.proxy_connections,
        seconds: args.proxy_duration,
        cpu: Some(1),
    };
    let mut rounds = Vec::new();
    for round in 1..=args.proxy_side_by_side_rounds {
        for proxy in [0, BARE] {
            eprintln!(
                "proxy: side by side {round}/{}, {} beside nginx",
                args.proxy_side_by_side_rounds, proxies[proxy].name
            );
            let pair = [proxies[proxy], proxies[NGINX]];
            let before = [tree_cpu_time(pair[0].pid)?, tree_cpu_time(pair[1].pid)?];
            let results = std::thread::scope(|scope| {
                let runs = pair.map(|p| {
                    scope.spawn(move || wrk::run(&format!("http://{}/hello", p.addr), load))
                });
                runs.map(|run| {
                    run.join()
                        .unwrap_or_else(|_| Err("wrk thread panicked".into()))
                })
            });
            let [ours, nginx] = results;
            let (ours, nginx) = (ours?, nginx?);
            let used = [
                tree_cpu_time(pair[0].pid)?.saturating_sub(before[0]),
                tree_cpu_time(pair[1].pid)?.saturating_sub(before[1]),
            ];
            rounds.push(SideBySide {
                proxy,
                rps: [ours.rps, nginx.rps],
                cpu_per_req: [
                    used[0].as_secs_f64() / ours.requests.max(1) as f64,
                    used[1].as_secs_f64() / nginx.requests.max(1) as f64,
                ],
                errors: [ours.errors(), nginx.errors()],
            });
        }
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
        "\n### Side by side: each proxy and nginx under load at the same moment\n\n\
         {} round(s) of {} s per proxy: the proxy and nginx each driven by its own wrk \
         (-t1 -c{}), both on CPU 0, so they share every fast and slow phase of the machine. \
         CPU per request is the steadiest comparison; req/s only says how the scheduler \
         split CPU 0.\n",
        args.proxy_side_by_side_rounds, args.proxy_duration, args.proxy_connections
    );
    let _ = writeln!(
        out,
        "| round | proxy | CPU/req proxy | CPU/req nginx | CPU/req ×nginx | req/s proxy | req/s nginx | errors (proxy / nginx) |"
    );
    let _ = writeln!(out, "|--:|---|--:|--:|--:|--:|--:|--:|");
    let mut ratios: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for (i, r) in rounds.iter().enumerate() {
        let ratio = r.cpu_per_req[0] / r.cpu_per_req[1];
        ratios[usize::from(r.proxy == BARE)].push(ratio);
        let _ = writeln!(
            out,
            "| {} | {} | {:.2} µs | {:.2} µs | {ratio:.3} | {:.0} | {:.0} | {} / {} |",
            i / 2 + 1,
            NAMES[r.proxy],
            r.cpu_per_req[0] * 1e6,
            r.cpu_per_req[1] * 1e6,
            r.rps[0],
            r.rps[1],
            r.errors[0],
            r.errors[1]
        );
    }
    let (ours, bare) = (median(&ratios[0]), median(&ratios[1]));
    let _ = writeln!(
        out,
        "\nMedian CPU per request ×nginx: clientgone **{ours:.3}** ({}), bare hyper **{bare:.3}** ({}); \
         clientgone ×bare hyper (ratio of the two medians): **{:.3}**.",
        iqr(&ratios[0]),
        iqr(&ratios[1]),
        ours / bare
    );
    out
}

/// The interquartile range of `values` as "low–high".
fn iqr(values: &[f64]) -> String {
    let mut v = values.to_vec();
    match (quantile(&mut v, 0.25), quantile(&mut v, 0.75)) {
        (Some(low), Some(high)) => format!("{low:.2}–{high:.2}"),
        _ => "—".to_owned(),
    }
}

/// Binds the upstream and spawns its accept loop on the current runtime.
pub(crate) async fn start_upstream() -> Result<(SocketAddr, mpsc::UnboundedReceiver<Event>), String>
{
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
    addr: SocketAddr,
    close: Close,
    times: Vec<Duration>,
    missed: u32,
    given_up: bool,
}

async fn cancel_series(
    proxies: &[Proxy; 3],
    samples: u32,
    events: &mut mpsc::UnboundedReceiver<Event>,
) -> Result<Vec<Series>, String> {
    let mut series: Vec<Series> = proxies
        .iter()
        .flat_map(|p| {
            [Close::Fin, Close::Rst].map(|close| Series {
                proxy: p.name,
                addr: p.addr,
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
            id += 1;
            let sample = cancel_sample(s.addr, s.close, id, events).await?;
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
pub(crate) struct Nginx {
    // Field order is drop order: stop nginx before removing its directory.
    pub(crate) guard: ChildGuard,
    _dir: TempDir,
    pub(crate) addr: SocketAddr,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Nginx {
    fn start(cpu: u32, upstream: SocketAddr) -> Result<Self, String> {
        Self::start_tls(cpu, upstream, None)
    }

    /// nginx terminating TLS with this certificate and key when given.
    pub(crate) fn start_tls(
        cpu: u32,
        upstream: SocketAddr,
        tls: Option<(&Path, &Path)>,
    ) -> Result<Self, String> {
        let dir = TempDir(
            std::env::temp_dir().join(format!("clientgone-bench-nginx-{}", std::process::id())),
        );
        std::fs::create_dir_all(&dir.0)
            .map_err(|e| format!("cannot create {}: {e}", dir.0.display()))?;
        let (addr, nginx_args) = nginx_setup_tls(&dir.0, upstream, "", tls)?;
        let mut command = Command::new("taskset");
        command
            .arg("-c")
            .arg(cpu.to_string())
            .arg("nginx")
            .args(nginx_args);
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

/// The `clientgone proxy` command line (after `agent`) every part that runs
/// the proxy uses: one route template, both listeners on free ports.
pub(crate) fn clientgone_proxy_args(upstream: SocketAddr) -> [String; 9] {
    [
        "proxy",
        "--upstream",
        &format!("http://{upstream}"),
        "--route",
        "/users/{id}",
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
    ]
    .map(str::to_owned)
}

/// Writes the bench's nginx configuration into `dir` for a free port on
/// loopback; returns that address and nginx's arguments (after the program
/// name). `extra` as for [`nginx_conf`].
pub(crate) fn nginx_setup(
    dir: &Path,
    upstream: SocketAddr,
    extra: &str,
) -> Result<(SocketAddr, Vec<OsString>), String> {
    nginx_setup_tls(dir, upstream, extra, None)
}

/// [`nginx_setup`], terminating TLS with `tls` (certificate, key) when given.
pub(crate) fn nginx_setup_tls(
    dir: &Path,
    upstream: SocketAddr,
    extra: &str,
    tls: Option<(&Path, &Path)>,
) -> Result<(SocketAddr, Vec<OsString>), String> {
    // A free port: bind, read it, let go. nginx binds it a moment later.
    let addr = StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("cannot find a free port: {e}"))?;
    let conf = dir.join("nginx.conf");
    let mut text = nginx_conf(dir, addr, upstream, extra);
    if let Some((cert, key)) = tls {
        text = text.replace(
            &format!("listen {addr};"),
            &format!(
                "listen {addr} ssl;\n        ssl_certificate {};\n        ssl_certificate_key {};",
                cert.display(),
                key.display()
            ),
        );
    }
    std::fs::write(&conf, text).map_err(|e| format!("cannot write the nginx config: {e}"))?;
    let args = vec![
        "-c".into(),
        conf.into_os_string(),
        "-p".into(),
        dir.into(),
        "-e".into(),
        dir.join("error.log").into_os_string(),
        "-g".into(),
        "daemon off;".into(),
    ];
    Ok((addr, args))
}

/// The bench's nginx configuration: a reverse proxy on `addr` to `upstream`
/// with a pool of 32 keep-alive connections, files under `dir`. `extra` goes
/// first (`master_process off;` for one process under valgrind).
pub(crate) fn nginx_conf(
    dir: &Path,
    addr: SocketAddr,
    upstream: SocketAddr,
    extra: &str,
) -> String {
    let d = dir.display();
    // Defaults everywhere the comparison does not need a setting: in
    // particular `proxy_ignore_client_abort off`, so nginx watches the
    // client's socket while it waits for the upstream.
    format!(
        "{extra}worker_processes 1;
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
    )
}

fn tables(args: &Args, runs: &[[Run; 3]], cancel: &[Series], foreign: f64) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## Proxy: clientgone proxy, the bare hyper stack and nginx (all on CPU 0; upstream and wrk on CPU 1)\n"
    );
    let _ = writeln!(
        out,
        "`GET /hello`, wrk -t1 -c{} keep-alive, {} s per run, {} interleaved rounds \
         (clientgone, bare hyper, nginx, …). \"bare hyper\" is the stack clientgone proxy is \
         built on without clientgone: axum::serve and hyper-util's legacy client on the same \
         runtime, forwarding as nginx does.\n",
        args.proxy_connections, args.proxy_duration, args.proxy_rounds
    );
    let _ = writeln!(
        out,
        "| round | req/s clientgone | req/s bare | req/s nginx | p99 clientgone | p99 bare | p99 nginx | \
         CPU/req clientgone | CPU/req bare | CPU/req nginx | upstream connections opened (cg / bare / nginx) | errors (cg / bare / nginx) |"
    );
    let _ = writeln!(out, "|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    let join = |f: &dyn Fn(&Run) -> String, row: &[Run; 3]| {
        row.iter().map(f).collect::<Vec<_>>().join(" / ")
    };
    for (i, row) in runs.iter().enumerate() {
        let _ = writeln!(
            out,
            "| {} | {:.0} | {:.0} | {:.0} | {} | {} | {} | {:.2} µs | {:.2} µs | {:.2} µs | {} | {} |",
            i + 1,
            row[0].wrk.rps,
            row[1].wrk.rps,
            row[2].wrk.rps,
            fmt_duration(row[0].wrk.p99),
            fmt_duration(row[1].wrk.p99),
            fmt_duration(row[2].wrk.p99),
            row[0].cpu_per_req * 1e6,
            row[1].cpu_per_req * 1e6,
            row[2].cpu_per_req * 1e6,
            join(&|r| r.opened.to_string(), row),
            join(&|r| r.wrk.errors().to_string(), row),
        );
    }
    let _ = writeln!(
        out,
        "\nRatios within each round, median over rounds (interquartile range; with fewer \
         than four rounds, the whole range):\n"
    );
    let _ = writeln!(out, "| ratio | req/s | p99 | CPU/req |");
    let _ = writeln!(out, "|---|--:|--:|--:|");
    for (a, b) in PAIRS {
        let ratio = |f: fn(&Run) -> f64| -> Vec<f64> {
            runs.iter().map(|row| f(&row[a]) / f(&row[b])).collect()
        };
        let rps = ratio(|r| r.wrk.rps);
        let p99 = ratio(|r| r.wrk.p99.as_secs_f64());
        let cpu = ratio(|r| r.cpu_per_req);
        let _ = writeln!(
            out,
            "| {} / {} | **{:.3}** ({}) | {:.3} ({}) | **{:.3}** ({}) |",
            NAMES[a],
            NAMES[b],
            median(&rps),
            iqr(&rps),
            median(&p99),
            iqr(&p99),
            median(&cpu),
            iqr(&cpu)
        );
    }
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
        "{} samples per row after {WARMUP} warm-ups, interleaved over the rows; a sample is \
         missed if the upstream sees no close within {} s, and a row is given up after \
         {GIVE_UP_AFTER} misses in a row. The brackets give a distribution-free 95 % \
         confidence interval of each percentile (order statistics): two rows whose p99 \
         intervals overlap are not told apart by this many samples (which does not make them \
         equal). An end marked ≤ or ≥ lies beyond the samples taken: more are needed to \
         bound it.\n",
        args.cancel_samples,
        CANCEL_PATIENCE.as_secs()
    );
    let _ = writeln!(
        out,
        "| proxy | client close | samples | p50 (95 % CI) | p99 (95 % CI) | max | missed |"
    );
    let _ = writeln!(out, "|---|---|--:|--:|--:|--:|--:|");
    for s in cancel {
        let mut t = s.times.clone();
        t.sort();
        let q = |q: f64| match quantile_ci(&t, q) {
            Some((at, low, high)) => {
                let low = match low {
                    Bound::Within(d) => fmt_duration(d),
                    Bound::Beyond(d) => format!("≤ {}", fmt_duration(d)),
                };
                let high = match high {
                    Bound::Within(d) => fmt_duration(d),
                    Bound::Beyond(d) => format!("≥ {}", fmt_duration(d)),
                };
                format!("{} ({low}–{high})", fmt_duration(at))
            }
            None => "—".to_owned(),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {}{} |",
            s.proxy,
            s.close.label(),
            t.len(),
            q(0.5),
            q(0.99),
            t.last()
                .map_or_else(|| "—".to_owned(), |&d| fmt_duration(d)),
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
