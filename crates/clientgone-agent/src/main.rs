//! `clientgone`: the demo server, the break generator and the proxy.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use clap::error::ErrorKind;
use clientgone::DeferredTracer;
use clientgone_agent::cli::{Cli, Command, ProxyArgs, TrafficArgs, WatchArgs};
use clientgone_agent::demo::{self, DemoConfig};
use clientgone_agent::proxy::{self, ProxyConfig, RouteTable, Upstream};
use clientgone_agent::server::{RunningServer, ServerConfig};
use clientgone_agent::traffic::{self, TrafficConfig};
use clientgone_agent::watch::{self, WatchConfig};
use clientgone_exporter::otlp::{MetricsConfig, OtlpConfig, OtlpMetrics, OtlpPipeline};
use prometheus::Registry;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// With `--features mimalloc`: faster allocation for the proxy, at more
/// memory per idle connection (BENCHMARKS.md, *What each optimisation was worth*, commit 43bf993).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `eprintln!` without its panic: a closed stderr must not stop the server.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

/// Exit code for bad flags, bad environment and start-up failures.
const USAGE: u8 = 2;

/// How long queued spans get to reach the collector at shutdown.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            say!("clientgone: {} (see '{}')", usage_error(&e), help_command());
            return ExitCode::from(USAGE);
        }
    };
    let otlp = match OtlpConfig::from_env() {
        Ok(config) => config,
        Err(e) => {
            say!("clientgone: {e}");
            return ExitCode::from(USAGE);
        }
    };
    // Metrics pushed over OTLP: only by the commands that serve metrics.
    let push = match MetricsConfig::from_env() {
        Ok(config) => config.filter(|_| !matches!(cli.command, Command::Traffic(_))),
        Err(e) => {
            say!("clientgone: {e}");
            return ExitCode::from(USAGE);
        }
    };
    let runtime = match clientgone_agent::runtime::build() {
        Ok(rt) => rt,
        Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
            say!("clientgone: {e}");
            return ExitCode::from(USAGE);
        }
        Err(e) => {
            say!("clientgone: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let registry = Registry::new();
    // The exporter spawns onto the runtime, so it is built inside it.
    let described = otlp.as_ref().map(OtlpConfig::describe);
    let pipeline = match otlp.map(|c| runtime.block_on(async { OtlpPipeline::start(c, &registry) }))
    {
        Some(Ok(p)) => {
            if let Some(line) = described {
                say!("clientgone: {line}");
            }
            Some(p)
        }
        Some(Err(e)) => {
            say!("clientgone: {e}");
            return ExitCode::from(USAGE);
        }
        None => None,
    };
    let push = match push.map(|c| {
        let line = c.describe();
        runtime
            .block_on(async { OtlpMetrics::start(c, &registry) })
            .map(|p| (p, line))
    }) {
        Some(Ok((push, line))) => {
            say!("clientgone: {line}");
            Some(push)
        }
        Some(Err(e)) => {
            say!("clientgone: {e}");
            return ExitCode::from(USAGE);
        }
        None => None,
    };
    let log_filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                // Colours only for a terminal, not for a file or a log collector.
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_filter(log_filter),
        )
        .init();

    let tracer = pipeline.as_ref().map(OtlpPipeline::tracer);
    let code = runtime.block_on(run(cli, registry, tracer));
    if let Some(push) = push {
        // One last export, so the final counts reach the collector.
        let pushed = runtime.block_on(tokio::time::timeout(FLUSH_TIMEOUT, push.shutdown()));
        if pushed.is_err() {
            say!("clientgone: the last metrics export did not finish in {FLUSH_TIMEOUT:?}");
        }
    }
    if let Some(pipeline) = pipeline {
        // The flush blocks until the exports it waits for have run on the
        // runtime: it waits on a blocking thread while this one drives the
        // runtime (on one CPU the runtime has no thread of its own).
        let flush = runtime.spawn_blocking(move || pipeline.shutdown(FLUSH_TIMEOUT));
        let flushed = runtime
            .block_on(flush)
            .map_err(|e| e.to_string())
            .and_then(|flushed| flushed);
        if let Err(e) = flushed {
            say!("clientgone: traces not flushed: {e}");
        }
    }
    code
}

async fn run(cli: Cli, registry: Registry, tracer: Option<DeferredTracer>) -> ExitCode {
    match cli.command {
        Command::Demo(args) => {
            let tls = args.tls.files();
            if tls.is_some() && args.traffic {
                say!(
                    "clientgone: --traffic speaks plaintext HTTP to the demo: leave out --tls-cert/--tls-key to use it"
                );
                return ExitCode::from(USAGE);
            }
            let config = DemoConfig {
                listen: args.listen,
                metrics_listen: args.metrics_listen,
                options: args.connection.options(),
                registry,
                tracer,
                buckets: args.buckets.buckets(),
                tls,
            };
            let running = match demo::start(config).await {
                Ok(running) => running,
                Err(e) => {
                    say!("clientgone: {e}");
                    return ExitCode::from(USAGE);
                }
            };
            if running.tls {
                say!(
                    "clientgone demo: serving https://{0}/hello and gRPC clientgone.demo.v1.Demo (h2 by ALPN), metrics on http://{1}/metrics; SIGHUP reads the certificate again",
                    running.addr,
                    running.metrics_addr
                );
            } else {
                say!(
                    "clientgone demo: serving http://{0}/hello and gRPC clientgone.demo.v1.Demo (h2c), metrics on http://{1}/metrics",
                    running.addr,
                    running.metrics_addr
                );
            }
            if args.traffic {
                let mut config = TrafficConfig::new(running.addr);
                config.rate = args.traffic_rate;
                config.duration = None;
                say!(
                    "clientgone demo: sending break traffic to itself at {}/s",
                    args.traffic_rate
                );
                tokio::spawn(traffic::run(config, running.shutdown_token()));
            }
            serve_until_signal(running, "demo").await
        }
        Command::Proxy(args) => run_proxy(args, registry, tracer).await,
        Command::Traffic(args) => run_traffic(args).await,
        Command::Watch(args) => run_watch(args, registry, tracer).await,
    }
}

/// "1 route template", "3 route templates": for the start-up lines.
fn templates(count: usize) -> String {
    format!(
        "{count} route template{}",
        if count == 1 { "" } else { "s" }
    )
}

fn route_table(
    routes: Vec<String>,
    openapi: Option<&std::path::Path>,
) -> Result<RouteTable, String> {
    RouteTable::new(routes)
        .and_then(|flags| match openapi {
            Some(path) => flags.merge(RouteTable::from_openapi(path)?),
            None => Ok(flags),
        })
        .map_err(|e| e.to_string())
}

async fn run_watch(
    args: WatchArgs,
    registry: Registry,
    tracer: Option<DeferredTracer>,
) -> ExitCode {
    if args.ports.is_empty() && args.pids.is_empty() && args.comms.is_empty() {
        say!(
            "clientgone: watch needs --port, --pid or --comm to know what to watch (see 'clientgone watch --help')"
        );
        return ExitCode::from(USAGE);
    }
    let routes = match route_table(args.routes, args.openapi.as_deref()) {
        Ok(routes) => routes,
        Err(e) => {
            say!("clientgone: {e}");
            return ExitCode::from(USAGE);
        }
    };
    let grpc = match args.grpc_descriptor.as_deref() {
        None => clientgone::GrpcMethods::new(),
        Some(path) => match grpc_methods(path) {
            Ok(methods) => methods,
            Err(e) => {
                say!("clientgone: --grpc-descriptor {}: {e}", path.display());
                return ExitCode::from(USAGE);
            }
        },
    };
    let count = routes.templates().len();
    let grpc_count = grpc.len();
    let config = WatchConfig {
        ports: args.ports,
        pids: args.pids,
        comms: args.comms,
        routes,
        grpc,
        metrics_listen: args.metrics_listen,
        user: args.user,
        ring_bytes: args.ring_buffer_mib << 20,
        capture: args.capture,
        registry,
        tracer,
        buckets: args.buckets.buckets(),
    };
    let running = match watch::start(config).await {
        Ok(running) => running,
        Err(e) => {
            say!("clientgone: {e}");
            return ExitCode::from(USAGE);
        }
    };
    let ports: Vec<String> = running.ports.iter().map(u16::to_string).collect();
    say!(
        "clientgone watch: watching port{} {} ({}{}), metrics on http://{}/metrics",
        if ports.len() == 1 { "" } else { "s" },
        ports.join(", "),
        templates(count),
        match grpc_count {
            0 => String::new(),
            n => format!(", {n} gRPC method{}", if n == 1 { "" } else { "s" }),
        },
        running.metrics_addr
    );
    say!(
        "clientgone watch: capture {} (tracepoints {}{}); {} connection{} already open, followed from their next request",
        running.capture.as_str(),
        running.attached.join(", "),
        match running.capture {
            watch::bpf::CaptureMode::Socket => "; no system-call hook",
            _ => "; sys_enter slows every system call on this host",
        },
        running.found_open,
        if running.found_open == 1 { "" } else { "s" },
    );
    say!("clientgone watch: {}", tls_line(&running));
    let token = running.shutdown_token();
    tokio::spawn(async move {
        shutdown_signal().await;
        token.cancel();
    });
    match running.wait().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            say!("clientgone: {e}");
            ExitCode::FAILURE
        }
    }
}

/// What the start-up line says of TLS: the OpenSSL files probed, and the
/// servers on the watched ports whose TLS cannot be read.
fn tls_line(running: &watch::RunningWatch) -> String {
    let probed: Vec<String> = running
        .tls_probed
        .iter()
        .map(|c| c.path.display().to_string())
        .collect();
    let mut line = if probed.is_empty() {
        "TLS plaintext: no OpenSSL found to probe (TLS connections are skipped as tls)".to_owned()
    } else {
        format!("TLS plaintext from OpenSSL in {}", probed.join(", "))
    };
    if !running.tls_uncovered.is_empty() {
        let missed: Vec<String> = running
            .tls_uncovered
            .iter()
            .map(|(pid, comm)| format!("{pid} ({comm})"))
            .collect();
        line.push_str(&format!(
            "; servers with no OpenSSL, whose TLS is skipped as tls: {}",
            missed.join(", ")
        ));
    }
    line
}

/// Runs until SIGINT/SIGTERM, then stops gracefully.
async fn serve_until_signal(running: RunningServer, what: &'static str) -> ExitCode {
    let token = running.shutdown_token();
    tokio::spawn(async move {
        shutdown_signal().await;
        say!("clientgone {what}: shutting down, letting requests in flight finish");
        token.cancel();
    });
    match running.wait().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            say!("clientgone: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run_proxy(
    args: ProxyArgs,
    registry: prometheus::Registry,
    tracer: Option<DeferredTracer>,
) -> ExitCode {
    let upstream = match Upstream::parse(&args.upstream) {
        Ok(u) => u,
        Err(e) => {
            say!("clientgone: --upstream {}: {e}", args.upstream);
            return ExitCode::from(USAGE);
        }
    };
    let routes = match route_table(args.routes, args.openapi.as_deref()) {
        Ok(routes) => routes,
        Err(e) => {
            say!("clientgone: {e}");
            return ExitCode::from(USAGE);
        }
    };
    let grpc = match args.grpc_descriptor.as_deref() {
        None => None,
        Some(_) if !upstream.h2c => {
            say!(
                "clientgone: --grpc-descriptor needs an h2c:// upstream (gRPC runs over HTTP/2): \
                 write --upstream h2c://{}",
                upstream.authority
            );
            return ExitCode::from(USAGE);
        }
        Some(path) => match grpc_methods(path) {
            Ok(methods) => Some(methods),
            Err(e) => {
                say!("clientgone: --grpc-descriptor {}: {e}", path.display());
                return ExitCode::from(USAGE);
            }
        },
    };
    let count = routes.templates().len();
    let grpc_count = grpc.as_ref().map(clientgone::GrpcMethods::len);
    let config = ProxyConfig {
        server: ServerConfig {
            listen: args.listen,
            metrics_listen: args.metrics_listen,
            options: args.connection.options(),
            registry,
            tracer,
            buckets: args.buckets.buckets(),
            tls: args.tls.files(),
        },
        upstream,
        upstream_ca: args.upstream_ca,
        routes,
        upstream_timeout: args.upstream_timeout,
        grpc,
        skip: args.skip_routes,
    };
    let running = match proxy::start(config).await {
        Ok(running) => running,
        Err(e) => {
            say!("clientgone: {e}");
            return ExitCode::from(USAGE);
        }
    };
    let grpc_line = match grpc_count {
        Some(n) => format!(", {n} gRPC method{}", if n == 1 { "" } else { "s" }),
        None => String::new(),
    };
    say!(
        "clientgone proxy: {}://{} -> {} ({}{grpc_line}), metrics on http://{}/metrics",
        if running.tls { "https" } else { "http" },
        running.addr,
        args.upstream,
        templates(count),
        running.metrics_addr
    );
    serve_until_signal(running, "proxy").await
}

/// The gRPC methods of a descriptor set file.
fn grpc_methods(path: &std::path::Path) -> Result<clientgone::GrpcMethods, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    clientgone::GrpcMethods::from_file_descriptor_set(&bytes).map_err(|e| e.to_string())
}

async fn run_traffic(args: TrafficArgs) -> ExitCode {
    let target = match tokio::net::lookup_host(&args.target.authority).await {
        Ok(mut addrs) => match addrs.next() {
            Some(addr) => addr,
            None => {
                say!(
                    "clientgone: --target {} resolves to no address",
                    args.target.authority
                );
                return ExitCode::from(USAGE);
            }
        },
        Err(e) => {
            say!(
                "clientgone: cannot resolve --target {}: {e}",
                args.target.authority
            );
            return ExitCode::from(USAGE);
        }
    };
    let weights = args.weights();
    if weights.iter().all(|w| *w == 0) {
        say!("clientgone: every kind has weight 0; give at least one a weight");
        return ExitCode::from(USAGE);
    }
    let config = TrafficConfig {
        rate: args.rate,
        duration: (!args.duration.is_zero()).then_some(args.duration),
        requests: args.requests,
        concurrency: args.concurrency as usize,
        weights,
        patience: args.patience,
        seed: args.seed,
        progress: true,
        ..TrafficConfig::new(target)
    };
    let stop = CancellationToken::new();
    let on_signal = stop.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        on_signal.cancel();
    });
    let summary = traffic::run(config, stop).await;
    println!("{summary}");
    if summary.failed_total() > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// clap's error on one line: its first paragraph (a missing argument's name
/// is on the line after the message), without the usage that follows.
fn usage_error(e: &clap::Error) -> String {
    if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        return "a command is required: demo, traffic, proxy or watch".to_owned();
    }
    let rendered = e.render().to_string();
    let paragraph = rendered.split("\n\n").next().unwrap_or("invalid arguments");
    let line = paragraph
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    line.strip_prefix("error: ").unwrap_or(&line).to_owned()
}

/// The help to point at: the command's own, if the arguments name one.
fn help_command() -> String {
    match std::env::args().nth(1) {
        Some(command) if ["demo", "traffic", "proxy", "watch"].contains(&command.as_str()) => {
            format!("clientgone {command} --help")
        }
        _ => "clientgone --help".to_owned(),
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
