//! The server configurations the benchmarks compare, and the launcher that runs
//! one of them as a separate process.
//!
//! Each configuration runs in a process of its own (the bench re-executes itself
//! with the hidden `serve` subcommand) so that one configuration's allocator
//! state, background threads and global tracing subscriber cannot leak into the
//! next one's numbers, and so the server can be pinned to a CPU of its own.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::LazyLock;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{Request, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::serve::ListenerExt;
use clap::ValueEnum;
use clientgone::tls::rustls;
use clientgone::{ConnectionOptions, DisconnectLayer, Metrics, TrackedConnection, TrackedListener};
use clientgone_exporter::otlp::{OtlpConfig, OtlpPipeline, OtlpProtocol};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use tokio::net::TcpListener;
use tower_http::on_early_drop::{OnBodyDropFn, OnEarlyDropLayer};
use tower_http::trace::TraceLayer;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// One server configuration. The letters are the ones the issue uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, ValueEnum)]
pub enum Config {
    /// (a) bare axum.
    Bare,
    /// (b) axum + clientgone metrics (`DisconnectLayer`, `TrackedListener`, `clientgone::serve`).
    Metrics,
    /// (c) as (b) + OTLP traces through `OtlpPipeline` at ratio 1.0.
    Traces,
    /// (d) axum + axum-prometheus.
    AxumPrometheus,
    /// (e) axum + tower-http `TraceLayer` + tracing-opentelemetry, plain SDK batch export.
    TraceLayer,
    /// (f) axum + tower-http `OnEarlyDropLayer` incrementing a prometheus counter.
    EarlyDrop,
    /// (c′) as (c) at ratio 0.01: every request still gets a span started,
    /// only the sampled ones and the breaks get attributes and are exported.
    /// Not in the default set.
    TracesSampled,
    /// (b′) as (b) but served by `axum::serve`, as the README allows: the same
    /// accept loop as (a), so the difference to (a) is clientgone's own
    /// (`TrackedStream`, `ConnectionState`, the layer). Not in the default set.
    MetricsAxumServe,
    /// (a-tls) bare axum over HTTPS: tokio-rustls (the `ring` provider, as
    /// clientgone's) and hyper-util's auto server, `TCP_NODELAY`. Needs
    /// `--tls-dir`. The `tls` part's baseline; not in the default set.
    BareTls,
    /// (b-tls) (b) over HTTPS: `clientgone::serve(…).tls(TlsAcceptor)` with
    /// the same certificate. Needs `--tls-dir`; not in the default set.
    MetricsTls,
}

impl Config {
    /// Every configuration, in table order; (a) first, since ratios are to it.
    pub const ALL: [Config; 6] = [
        Config::Bare,
        Config::Metrics,
        Config::Traces,
        Config::AxumPrometheus,
        Config::TraceLayer,
        Config::EarlyDrop,
    ];

    /// The flag value (`bare`, `axum-prometheus`, …).
    pub fn name(self) -> String {
        self.to_possible_value()
            .map(|v| v.get_name().to_owned())
            .unwrap_or_default()
    }

    /// The row label in tables.
    pub fn label(self) -> &'static str {
        match self {
            Config::Bare => "(a) bare axum",
            Config::Metrics => "(b) clientgone metrics",
            Config::Traces => "(c) clientgone metrics + OTLP traces (ratio 1.0)",
            Config::AxumPrometheus => "(d) axum-prometheus",
            Config::TraceLayer => "(e) TraceLayer + tracing-opentelemetry",
            Config::EarlyDrop => "(f) OnEarlyDropLayer + counter",
            Config::MetricsAxumServe => "(b′) clientgone metrics under axum::serve",
            Config::TracesSampled => "(c′) clientgone metrics + OTLP traces (ratio 0.01)",
            Config::BareTls => "(a-tls) bare axum over rustls",
            Config::MetricsTls => "(b-tls) clientgone metrics over rustls",
        }
    }

    /// Whether this configuration exports spans to the discarding receiver.
    pub fn exports_spans(self) -> bool {
        matches!(
            self,
            Config::Traces | Config::TracesSampled | Config::TraceLayer
        )
    }
}

/// Flags of the hidden `serve` subcommand.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Which configuration to run.
    #[arg(long, value_enum)]
    pub config: Config,
    /// Port on 127.0.0.1; 0 picks a free one. The bound address is printed on
    /// stdout as `listening on ADDR`.
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// clientgone configurations only: no header-read timeout, so idle
    /// keep-alive connections stay open (the `memory` benchmark needs that).
    #[arg(long)]
    pub no_header_read_timeout: bool,
    /// Traced configurations: the OTLP/gRPC endpoint to export to (the
    /// launcher starts a discarding receiver in a process of its own).
    #[arg(long)]
    pub otlp_endpoint: Option<String>,
    /// HTTPS configurations: the directory holding `cert.pem` and `key.pem`.
    #[arg(long)]
    pub tls_dir: Option<std::path::PathBuf>,
}

/// The fixed 4 KiB JSON body of `GET /json`: an array of small objects, padded
/// to exactly 4096 bytes so every configuration writes the same bytes.
pub static JSON_BODY: LazyLock<Bytes> = LazyLock::new(|| {
    const SIZE: usize = 4096;
    let mut body = String::from("{\"items\":[");
    let mut i = 0;
    loop {
        let item = format!(
            "{}{{\"id\":{i},\"name\":\"item-{i:04}\",\"price\":{}.{:02},\"in_stock\":{}}}",
            if i == 0 { "" } else { "," },
            10 + i % 90,
            i % 100,
            i % 3 != 0
        );
        // Leave room for the padding field and the closing `]}`.
        if body.len() + item.len() + 20 > SIZE {
            break;
        }
        body.push_str(&item);
        i += 1;
    }
    body.push_str("],\"pad\":\"");
    body.push_str(&" ".repeat(SIZE - body.len() - 2));
    body.push_str("\"}");
    debug_assert_eq!(body.len(), SIZE);
    Bytes::from(body)
});

/// The routes every configuration serves.
fn routes() -> Router {
    Router::new()
        .route("/hello", get(|| async { "Hello, World!" }))
        .route(
            "/json",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "application/json")],
                    JSON_BODY.clone(),
                )
                    .into_response()
            }),
        )
}

/// Span queue of the traced configurations, (c) and (e) alike: deep enough
/// that a burst of 1 s runs at full speed does not overflow it, so both do all
/// their export work instead of dropping spans (the SDK's default, 2048, drops
/// a third of them at these rates; see the spans table).
const TRACE_QUEUE: usize = 1 << 20;

/// Runs one configuration until killed.
pub fn serve(args: &ServeArgs) -> Result<(), String> {
    // A multi-thread runtime, as a user's `#[tokio::main]` would build. Pinned
    // by `taskset`, it sizes itself to the one CPU it may use.
    let runtime = crate::runtime(None)?;
    // Exiting (not being killed) lets `instructions` read callgrind's count.
    exit_with_launcher();
    runtime.block_on(serve_async(args))
}

/// (b) and (c): the app inside `DisconnectLayer`, served the way the README
/// shows — `TrackedListener` + `clientgone::serve`.
async fn serve_clientgone(
    listener: TcpListener,
    registry: &prometheus::Registry,
    app: Router,
    options: ConnectionOptions,
    addr: SocketAddr,
    tracer: Option<clientgone::DeferredTracer>,
    tls: Option<clientgone::TlsAcceptor>,
) -> Result<(), String> {
    let metrics = Metrics::new(registry).map_err(|e| e.to_string())?;
    let mut layer = DisconnectLayer::new(metrics.clone());
    if let Some(tracer) = tracer {
        layer = layer.with_tracer(tracer);
    }
    let app = app.layer(layer);
    let listener = TrackedListener::from_tcp(listener, &metrics).with_options(options);
    announce(addr);
    let mut serve = clientgone::serve(listener, app);
    if let Some(tls) = tls {
        serve = serve.tls(tls);
    }
    serve.await.map_err(|e| e.to_string())
}

async fn serve_async(args: &ServeArgs) -> Result<(), String> {
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], args.port)))
        .await
        .map_err(|e| format!("cannot listen on port {}: {e}", args.port))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let app = routes();
    let otlp_endpoint = || {
        args.otlp_endpoint
            .clone()
            .ok_or_else(|| format!("{} needs --otlp-endpoint", args.config.name()))
    };
    let mut options = ConnectionOptions::default();
    if args.no_header_read_timeout {
        options = options.header_read_timeout(None);
    }

    // Kept alive until the process is killed: dropping them would stop exports.
    let mut _pipeline = None;
    let mut _provider = None;

    let tls_files = || {
        let dir = args
            .tls_dir
            .as_ref()
            .ok_or_else(|| format!("{} needs --tls-dir", args.config.name()))?;
        Ok::<_, String>((dir.join("cert.pem"), dir.join("key.pem")))
    };

    match args.config {
        Config::Bare => {
            announce(addr);
            serve_axum(listener, app).await
        }
        Config::BareTls => {
            let (cert, key) = tls_files()?;
            let key = clientgone::tls::load_certified_key(cert, key).map_err(|e| e.to_string())?;
            let resolver = rustls::sign::SingleCertAndKey::from(std::sync::Arc::new(key));
            let mut config = clientgone::tls::server_config(std::sync::Arc::new(resolver));
            config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            announce(addr);
            serve_bare_tls(listener, app, std::sync::Arc::new(config)).await
        }
        Config::MetricsTls => {
            let (cert, key) = tls_files()?;
            let tls =
                clientgone::TlsAcceptor::from_pem_files(cert, key).map_err(|e| e.to_string())?;
            let registry = prometheus::Registry::new();
            serve_clientgone(listener, &registry, app, options, addr, None, Some(tls)).await
        }
        Config::Metrics => {
            let registry = prometheus::Registry::new();
            serve_clientgone(listener, &registry, app, options, addr, None, None).await
        }
        Config::Traces | Config::TracesSampled => {
            let endpoint = otlp_endpoint()?;
            let registry = prometheus::Registry::new();
            let ratio = if args.config == Config::Traces {
                1.0
            } else {
                0.01
            };
            let pipeline = OtlpPipeline::start(
                OtlpConfig::new(OtlpProtocol::Grpc)
                    .endpoint(endpoint)
                    .sample_ratio(ratio)
                    .max_queue_size(TRACE_QUEUE)
                    .service_name("bench"),
                &registry,
            )
            .map_err(|e| e.to_string())?;
            let tracer = pipeline.tracer();
            _pipeline = Some(pipeline);
            serve_clientgone(listener, &registry, app, options, addr, Some(tracer), None).await
        }
        Config::MetricsAxumServe => {
            let registry = prometheus::Registry::new();
            let metrics = Metrics::new(&registry).map_err(|e| e.to_string())?;
            let app = app.layer(DisconnectLayer::new(metrics.clone()));
            let listener = TrackedListener::from_tcp(listener, &metrics).with_options(options);
            announce(addr);
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<TrackedConnection>(),
            )
            .await
            .map_err(|e| e.to_string())
        }
        Config::AxumPrometheus => {
            // `pair()` installs the global `metrics` recorder and spawns its
            // upkeep task; `/metrics` is the route a user adds by hand.
            let (layer, handle) = axum_prometheus::PrometheusMetricLayer::pair();
            let app = app
                .route("/metrics", get(move || async move { handle.render() }))
                .layer(layer);
            announce(addr);
            serve_axum(listener, app).await
        }
        Config::TraceLayer => {
            let endpoint = otlp_endpoint()?;
            // What a user of TraceLayer writes from the opentelemetry-otlp
            // examples: a tonic exporter behind the SDK's batch processor, and
            // tracing-opentelemetry with its defaults. The filter keeps only
            // tower-http's spans, as clientgone's pipeline keeps only its own:
            // without it the exporter's own h2/tonic spans would be traced too.
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()
                .map_err(|e| format!("cannot build the OTLP exporter: {e}"))?;
            let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
                .with_span_processor(
                    opentelemetry_sdk::trace::BatchSpanProcessor::builder(exporter)
                        .with_batch_config(
                            opentelemetry_sdk::trace::BatchConfigBuilder::default()
                                .with_max_queue_size(TRACE_QUEUE)
                                .build(),
                        )
                        .build(),
                )
                .with_resource(
                    opentelemetry_sdk::Resource::builder()
                        .with_service_name("bench")
                        .build(),
                )
                .build();
            let layer = tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("bench"))
                .with_filter(Targets::new().with_target("tower_http", tracing::Level::DEBUG));
            tracing_subscriber::registry().with(layer).init();
            _provider = Some(provider);
            let app = app.layer(TraceLayer::new_for_http());
            announce(addr);
            serve_axum(listener, app).await
        }
        Config::EarlyDrop => {
            // The do-it-yourself alternative: count dropped futures and bodies.
            // One unlabelled counter — it knows no route, phase or cause.
            let counter = prometheus::IntCounter::new(
                "http_server_early_drops_total",
                "Requests whose future or body was dropped early",
            )
            .map_err(|e| e.to_string())?;
            let registry = prometheus::Registry::new();
            registry
                .register(Box::new(counter.clone()))
                .map_err(|e| e.to_string())?;
            let on_future = counter.clone();
            let on_body = counter;
            let layer = OnEarlyDropLayer::builder()
                .on_future_drop(move |_: &Request<Body>| {
                    let c = on_future.clone();
                    move || c.inc()
                })
                .on_body_drop(OnBodyDropFn::new(move |_: &Request<Body>| {
                    let c = on_body.clone();
                    move |_: &http::response::Parts| move || c.inc()
                }));
            let app = app.layer(layer);
            announce(addr);
            serve_axum(listener, app).await
        }
    }
}

/// `axum::serve` with `TCP_NODELAY`, which clientgone's listener sets by
/// default and `axum::serve` does not: the comparison is about the layers, not
/// about Nagle's algorithm.
async fn serve_axum(listener: TcpListener, app: Router) -> Result<(), String> {
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app).await.map_err(|e| e.to_string())
}

/// (a-tls): the accept loop a user writes for HTTPS without clientgone —
/// tokio-rustls's handshake on the connection's task, then hyper-util's auto
/// server (HTTP/1.1 or HTTP/2 by ALPN) as `axum::serve` runs it, the router
/// as a hyper service.
async fn serve_bare_tls(
    listener: TcpListener,
    app: Router,
    config: std::sync::Arc<rustls::ServerConfig>,
) -> Result<(), String> {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::service::TowerToHyperService;
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let builder = std::sync::Arc::new(Builder::new(TokioExecutor::new()));
    let service = TowerToHyperService::new(app.with_state::<()>(()));
    loop {
        let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        let (acceptor, builder, service) = (acceptor.clone(), builder.clone(), service.clone());
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            // With upgrades, as `axum::serve` and `clientgone::serve` do.
            let _ = builder
                .serve_connection_with_upgrades(TokioIo::new(tls), service)
                .await;
        });
    }
}

/// Ends this child process when its launcher goes away. The launcher holds
/// our stdin open ([`ChildProcess`]); when it exits, even killed, the pipe
/// closes, and a helper server must not outlive the benchmark.
pub(crate) fn exit_with_launcher() {
    std::thread::spawn(|| {
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new());
        std::process::exit(0);
    });
}

pub(crate) fn announce(addr: SocketAddr) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "listening on {addr}");
    let _ = out.flush();
}

/// A child process of this harness that announces `listening on ADDR` on its
/// first stdout line. Killed on drop. Its stdin stays open for its lifetime,
/// so a child can tell when the harness is gone.
pub struct ChildProcess {
    child: Child,
    _stdin: Option<ChildStdin>,
    _stdout: BufReader<ChildStdout>,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl ChildProcess {
    /// Runs this executable with `args`, pinned to `cpu` with `taskset` when
    /// given, and waits until it listens. `what` names it in errors.
    pub fn spawn(args: &[&str], cpu: Option<u32>, what: &str) -> Result<Self, String> {
        let exe = std::env::current_exe().map_err(|e| format!("cannot find myself: {e}"))?;
        let mut command = match cpu {
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(cpu.to_string()).arg(exe);
                c
            }
            None => Command::new(exe),
        };
        command
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = command.spawn().map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound if cpu.is_some() => {
                "taskset not found (Debian package util-linux)".to_owned()
            }
            _ => format!("cannot start the {what}: {e}"),
        })?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().ok_or("no stdout from the child")?;
        let mut stdout = BufReader::new(stdout);
        let mut line = String::new();
        let read = stdout.read_line(&mut line);
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|a| a.parse::<SocketAddr>().ok());
        match (read, addr) {
            // taskset execs the program, so the child's pid is the program's.
            (Ok(_), Some(addr)) => Ok(ChildProcess {
                child,
                _stdin: stdin,
                _stdout: stdout,
                addr,
            }),
            _ => {
                let _ = child.kill();
                let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
                Err(format!(
                    "the {what} did not start ({status}); its stderr is above"
                ))
            }
        }
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        // Only this child, by its pid.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A server configuration running in a child process. Killed on drop.
pub struct ServerProcess {
    process: ChildProcess,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl ServerProcess {
    /// Starts `config`, pinned to `cpu` with `taskset` when given, and waits
    /// until it listens.
    pub fn spawn(config: Config, cpu: Option<u32>, extra: &[&str]) -> Result<Self, String> {
        let name = config.name();
        let mut args = vec!["serve", "--config", &name, "--port", "0"];
        args.extend_from_slice(extra);
        let process = ChildProcess::spawn(&args, cpu, &format!("{name} server"))?;
        let addr = process.addr;
        Ok(ServerProcess { process, addr })
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// CPU time (user + system, all threads) the server has used so far.
    pub fn cpu_time(&self) -> Result<Duration, String> {
        process_cpu_time(self.pid())
    }

    /// Resident set size in KiB (`VmRSS`).
    pub fn rss_kib(&self) -> Result<u64, String> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .map_err(|e| format!("cannot read the server's /proc status: {e}"))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| "no VmRSS in /proc status".to_owned())
    }

    /// Open file descriptors: tells whether idle connections are still open.
    pub fn open_fds(&self) -> Result<usize, String> {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .map_err(|e| format!("cannot list the server's fds: {e}"))
    }
}

/// Clock ticks per second for `/proc/*/stat`; 100 on every Linux we run on,
/// asked of `getconf` to be sure.
/// CPU time (user + system, all threads) process `pid` has used so far.
pub(crate) fn process_cpu_time(pid: u32) -> Result<Duration, String> {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pid))
        .map_err(|e| format!("cannot read the server's /proc stat: {e}"))?;
    // Fields after the parenthesised command name, which may hold spaces:
    // state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    match (ticks(11), ticks(12)) {
        (Some(u), Some(s)) => Ok(Duration::from_secs_f64(
            (u + s) as f64 / *CLOCK_TICKS as f64,
        )),
        _ => Err(format!("cannot parse /proc/{}/stat", pid)),
    }
}

pub(crate) static CLOCK_TICKS: LazyLock<u64> = LazyLock::new(|| {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
});

/// CPU time of the other programs on the machine.
///
/// The bench shares a 2-CPU machine with whoever else works on it; a compiler
/// running during a round would make that round worthless. So we snapshot the
/// CPU time of every user-space process that is neither this one nor one of
/// its children (servers, wrk), before and after each measurement. Kernel
/// threads are left out: the softirq work they do is our own traffic.
/// Times of processes that exit in between reach their parent's `cutime`, so
/// they are counted too (generously, which errs on the side of "busy").
pub struct CpuSnapshot {
    ticks: std::collections::HashMap<u32, u64>,
}

impl CpuSnapshot {
    /// Reads `/proc/*/stat` now.
    pub fn take() -> Self {
        let me = std::process::id();
        let mut ticks = std::collections::HashMap::new();
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return CpuSnapshot { ticks };
        };
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if pid == me {
                continue;
            }
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
            let fields: Vec<u64> = rest
                .split_whitespace()
                .skip(1)
                .take(14)
                .map(|f| f.parse().unwrap_or(0))
                .collect();
            // After the state: ppid (0), …, utime (10), stime (11), cutime (12), cstime (13).
            let (Some(&ppid), Some(cpu)) = (fields.first(), fields.get(10..14)) else {
                continue;
            };
            if ppid == u64::from(me) || ppid == 2 || pid == 2 {
                continue;
            }
            ticks.insert(pid, cpu.iter().sum());
        }
        CpuSnapshot { ticks }
    }

    /// CPU time the other programs used between `earlier` and this snapshot.
    pub fn foreign_since(&self, earlier: &CpuSnapshot) -> Duration {
        let ticks: u64 = self
            .ticks
            .iter()
            .map(|(pid, &now)| now.saturating_sub(earlier.ticks.get(pid).copied().unwrap_or(0)))
            .sum();
        Duration::from_secs_f64(ticks as f64 / *CLOCK_TICKS as f64)
    }
}

/// Share of one CPU other programs may use while we measure.
pub const QUIET: f64 = 0.05;

/// Waits (up to `patience`) until other programs use less than [`QUIET`] of a
/// CPU over a one-second window. Returns whether the machine got quiet.
pub fn wait_for_quiet(patience: Duration) -> bool {
    let start = std::time::Instant::now();
    let mut said = false;
    loop {
        let before = CpuSnapshot::take();
        let window = std::time::Instant::now();
        std::thread::sleep(Duration::from_secs(1));
        let busy = CpuSnapshot::take().foreign_since(&before).as_secs_f64()
            / window.elapsed().as_secs_f64();
        if busy < QUIET {
            return true;
        }
        if start.elapsed() >= patience {
            eprintln!("  the machine is still busy; measuring anyway");
            return false;
        }
        if !said {
            eprintln!(
                "  other programs use {:.0} % of a CPU; waiting for quiet (up to {} s)",
                busy * 100.0,
                patience.as_secs()
            );
            said = true;
        }
    }
}

/// A one-shot `GET` with `Connection: close`; returns the body.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<String, String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| format!("GET {path}: {e}"))?;
    match response.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_owned()),
        _ => Err(format!(
            "GET {path}: unexpected answer {:?}",
            response.lines().next()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_body_is_4_kib() {
        assert_eq!(JSON_BODY.len(), 4096);
        assert!(JSON_BODY.starts_with(b"{\"items\":[{"));
        assert!(JSON_BODY.ends_with(b"\"}"));
    }

    #[test]
    fn config_names_round_trip() {
        for c in Config::value_variants().iter().copied() {
            assert_eq!(Config::from_str(&c.name(), false), Ok(c));
        }
    }
}
