//! `tls`: HTTPS on the Rust side (issue 25's goals).
//!
//! 1. Keep-alive HTTPS: (b-tls) clientgone — `TrackedListener`,
//!    `clientgone::serve(…).tls(TlsAcceptor)`, `DisconnectLayer` — beside
//!    (a-tls) bare axum on the same rustls stack (tokio-rustls with the `ring`
//!    provider, hyper-util's auto server), both on the server CPU, each driven
//!    by its own wrk on the client CPU at the same moment: CPU per request of
//!    each, paired within the run (the steadiest figure this VM gives).
//! 2. Handshakes: the same pair with `Connection: close`, so every request is
//!    a new TCP connection and a new TLS handshake: handshakes per second and
//!    CPU per handshake, side by side.
//! 3. `clientgone proxy` terminating TLS beside nginx terminating TLS, the
//!    same certificate, keep-alive, in front of the `proxy` part's upstream.
//!
//! The certificate is made here with rcgen (P-256, as `openssl req -newkey
//! ec` makes) and written to a temporary directory both servers read.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use crate::agent::{AgentProcess, PinSelf, tree_cpu_time};
use crate::proxy::{Nginx, clientgone_proxy_args, start_upstream};
use crate::servers::{Config, ServerProcess, http_get, wait_for_quiet};
use crate::wrk::{self, Load, WrkResult};
use crate::{median, parse_seconds, quantile};

/// Flags of `tls`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Seconds of each wrk run.
    #[arg(long, default_value = "3", value_parser = parse_seconds)]
    pub duration: u64,
    /// Side-by-side rounds of each of the three comparisons.
    #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub rounds: u32,
    /// Keep-alive connections each wrk holds open (wrk -c).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub connections: u32,
}

/// A certificate for 127.0.0.1 and its key, in a directory removed on drop.
struct CertDir(PathBuf);

impl CertDir {
    fn new() -> Result<Self, String> {
        let dir = std::env::temp_dir().join(format!("clientgone-bench-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
        let params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .map_err(|e| e.to_string())?;
        let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
        let write = |file: &str, text: String| {
            std::fs::write(dir.join(file), text).map_err(|e| format!("cannot write {file}: {e}"))
        };
        write("cert.pem", cert.pem())?;
        write("key.pem", key.serialize_pem())?;
        Ok(CertDir(dir))
    }

    fn cert(&self) -> PathBuf {
        self.0.join("cert.pem")
    }

    fn key(&self) -> PathBuf {
        self.0.join("key.pem")
    }
}

impl Drop for CertDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One side-by-side run: ours beside the reference, at the same moment.
struct Pair {
    cpu_us: [f64; 2],
    rps: [f64; 2],
    errors: [u64; 2],
}

/// Drives `urls[0]` (pid `pids[0]`) and `urls[1]` at the same moment, each by
/// its own wrk on CPU 1; CPU per request of each process tree.
fn side_by_side(
    urls: [&str; 2],
    pids: [u32; 2],
    load: Load,
    extra: &[&str],
) -> Result<Pair, String> {
    let before = [tree_cpu_time(pids[0])?, tree_cpu_time(pids[1])?];
    let [a, b]: [Result<WrkResult, String>; 2] = std::thread::scope(|scope| {
        let runs = urls.map(|url| scope.spawn(move || wrk::run_with(url, load, extra)));
        runs.map(|run| {
            run.join()
                .unwrap_or_else(|_| Err("wrk thread panicked".into()))
        })
    });
    let (a, b) = (a?, b?);
    let used = [
        tree_cpu_time(pids[0])?.saturating_sub(before[0]),
        tree_cpu_time(pids[1])?.saturating_sub(before[1]),
    ];
    Ok(Pair {
        cpu_us: [
            used[0].as_secs_f64() * 1e6 / a.requests.max(1) as f64,
            used[1].as_secs_f64() * 1e6 / b.requests.max(1) as f64,
        ],
        rps: [a.rps, b.rps],
        errors: [a.errors(), b.errors()],
    })
}

/// Runs the three comparisons and returns their Markdown tables.
pub fn run(args: &Args) -> Result<String, String> {
    let certs = CertDir::new()?;
    let dir = certs.0.to_string_lossy().into_owned();
    let bare = ServerProcess::spawn(Config::BareTls, Some(0), &["--tls-dir", &dir])?;
    let ours = ServerProcess::spawn(Config::MetricsTls, Some(0), &["--tls-dir", &dir])?;

    // The proxy part's upstream, on CPU 1 with wrk (this process).
    let _pin = PinSelf::to(1)?;
    let runtime = crate::runtime(Some(1))?;
    let (upstream, _events) = runtime.block_on(start_upstream())?;
    let mut proxy_args: Vec<String> = clientgone_proxy_args(upstream).into();
    proxy_args.extend([
        "--tls-cert".to_owned(),
        certs.cert().to_string_lossy().into_owned(),
        "--tls-key".to_owned(),
        certs.key().to_string_lossy().into_owned(),
    ]);
    let proxy_args: Vec<&str> = proxy_args.iter().map(String::as_str).collect();
    let proxy = AgentProcess::spawn(0, &proxy_args)?;
    let (cert, key) = (certs.cert(), certs.key());
    let mut nginx = Nginx::start_tls(0, upstream, Some((cert.as_path(), key.as_path())))?;
    // Plain HTTP to a TLS port is refused by all four: they really speak TLS.
    for (name, addr) in [
        ("bare", bare.addr),
        ("clientgone", ours.addr),
        ("proxy", proxy.addr),
        ("nginx", nginx.addr),
    ] {
        if http_get(addr, "/hello").is_ok_and(|body| body.contains("Hello")) {
            return Err(format!("{name} answered plaintext HTTP on its TLS port"));
        }
    }

    let load = Load {
        threads: 1,
        connections: args.connections,
        seconds: args.duration,
        cpu: Some(1),
    };
    let url = |addr: std::net::SocketAddr, path: &str| format!("https://{addr}{path}");
    let keepalive_urls = [url(ours.addr, "/hello"), url(bare.addr, "/hello")];
    let proxy_urls = [url(proxy.addr, "/hello"), url(nginx.addr, "/hello")];
    for u in keepalive_urls.iter().chain(&proxy_urls) {
        wrk::run(u, Load { seconds: 1, ..load })?;
    }
    wait_for_quiet(Duration::from_secs(120));

    let close = ["-H", "Connection: close"];
    let mut sections = Vec::new();
    for (title, urls, pids, extra) in [
        (
            "Keep-alive HTTPS `GET /hello`: (b-tls) clientgone beside (a-tls) bare axum on the same rustls stack",
            [&keepalive_urls[0], &keepalive_urls[1]],
            [ours.pid(), bare.pid()],
            &[][..],
        ),
        (
            "A handshake per request (`Connection: close`): (b-tls) beside (a-tls)",
            [&keepalive_urls[0], &keepalive_urls[1]],
            [ours.pid(), bare.pid()],
            &close[..],
        ),
        (
            "`clientgone proxy --tls-cert …` beside nginx `listen … ssl` (same certificate, keep-alive, same upstream)",
            [&proxy_urls[0], &proxy_urls[1]],
            [proxy.pid(), nginx.guard.pid()],
            &[][..],
        ),
    ] {
        let mut pairs = Vec::new();
        for round in 1..=args.rounds {
            eprintln!("tls: {title}: round {round}/{}", args.rounds);
            let pair = side_by_side([urls[0].as_str(), urls[1].as_str()], pids, load, extra)?;
            eprintln!(
                "  {:.2} µs beside {:.2} µs CPU/req, {:.0} beside {:.0} req/s",
                pair.cpu_us[0], pair.cpu_us[1], pair.rps[0], pair.rps[1]
            );
            pairs.push(pair);
        }
        sections.push((title, pairs));
    }
    nginx.guard.check_alive()?;
    Ok(render(args, &sections))
}

fn render(args: &Args, sections: &[(&str, Vec<Pair>)]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Side by side, {} rounds of {} s: both servers on CPU 0, each driven by its own \
         `wrk -t1 -c{} --latency` (HTTPS, TLS 1.3) on CPU 1 at the same moment. CPU/req is the \
         server's process tree's CPU time (from /proc) per completed request; the ratio is \
         paired within each round: median, interquartile range in brackets.\n",
        args.rounds, args.duration, args.connections
    );
    for (title, pairs) in sections {
        let ratios: Vec<f64> = pairs.iter().map(|p| p.cpu_us[0] / p.cpu_us[1]).collect();
        let rps_ratios: Vec<f64> = pairs.iter().map(|p| p.rps[0] / p.rps[1]).collect();
        let col = |f: &dyn Fn(&Pair) -> f64| median(&pairs.iter().map(f).collect::<Vec<_>>());
        let _ = writeln!(out, "**{title}**\n");
        let _ = writeln!(
            out,
            "| CPU/req ×reference | CPU/req | reference beside it | req/s | reference req/s | req/s ×reference | errors |\n|--:|--:|--:|--:|--:|--:|--:|"
        );
        let _ = writeln!(
            out,
            "| **{:.3}** ({:.3}–{:.3}) | {:.2} µs | {:.2} µs | {:.0} | {:.0} | {:.3} | {} / {} |\n",
            median(&ratios),
            quantile(&mut ratios.clone(), 0.25).unwrap_or(f64::NAN),
            quantile(&mut ratios.clone(), 0.75).unwrap_or(f64::NAN),
            col(&|p| p.cpu_us[0]),
            col(&|p| p.cpu_us[1]),
            col(&|p| p.rps[0]),
            col(&|p| p.rps[1]),
            median(&rps_ratios),
            pairs.iter().map(|p| p.errors[0]).sum::<u64>(),
            pairs.iter().map(|p| p.errors[1]).sum::<u64>(),
        );
    }
    out
}
