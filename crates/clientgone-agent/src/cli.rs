//! Command-line flags, as docs/metrics.md lists them (tests/reference.rs holds
//! the two equal).

use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use clientgone::{Buckets, ConnectionOptions};

use crate::traffic::{DEFAULT_WEIGHTS, Kind};

/// Catch, classify and count HTTP clients that break their connection before the
/// response is done.
#[derive(Debug, Parser)]
#[command(name = "clientgone", version, about, propagate_version = true)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the instrumented sample server: /hello, /stream, /upload, /items/{id}.
    #[command(after_help = OTEL_HELP)]
    Demo(DemoArgs),
    /// Send traffic that breaks connections on purpose (to the demo's routes),
    /// then print what it did, to hold against /metrics.
    Traffic(TrafficArgs),
    /// Put an HTTP service in any language under the same watch, as a reverse
    /// proxy in front of it; the upstream's work is dropped when the client is gone.
    #[command(after_help = OTEL_HELP)]
    Proxy(ProxyArgs),
    /// Watch the plaintext HTTP/1 servers on this Linux host that listen on the
    /// given ports (or of the given processes), whatever their language, from
    /// kernel tracepoints (eBPF): no code change, no proxy. Needs root (or
    /// CAP_BPF and CAP_PERFMON) and a kernel with BTF (Linux 6.3 or later).
    #[command(after_help = WATCH_HELP)]
    Watch(WatchArgs),
}

/// What `watch` cannot see, in its `--help`.
const WATCH_HELP: &str = "\
What watch sees, and what it cannot:
  Every request on a watched HTTP/1.x connection, counted as the layer counts
  it (phase and cause from the bytes read and written and the TCP state), with
  the metrics labelled server_port. Causes are closed (FIN), reset (RST) and
  timeout (the kernel gave the connection up).
  TLS of servers using OpenSSL (a libssl they map, or OpenSSL linked in) is
  read in plaintext by uprobes on the library file, which also cover servers
  started later on it; a handshake that never completes closes as
  tls_handshake.
  Not followed, connection-level closes only, and counted in
  clientgone_watch_connections_skipped_total{reason}: TLS it cannot read (tls:
  not OpenSSL; tls_unmapped: OpenSSL through memory buffers, as asyncio),
  HTTP/2 and h2c, pipelined requests, heads longer than 1024 bytes in one read,
  a response sent with sendfile/splice/io_uring before its head, upgrades.
  Connections open before watch started are adopted at their first event and
  followed from their next request head (the exchange in progress is waited
  out), counted in clientgone_watch_connections_adopted_total; their lifetime
  is unknown, so their close is left out of the connection-duration histogram.
  Kernel events the ring buffer had no room for:
  clientgone_watch_events_lost_total, and their connections are left out of
  the request metrics.
Capture: --capture socket reads each transfer's bytes in the socket
  tracepoints themselves, with no system-call hook; --capture syscall hooks
  sys_enter, which slows every system call of every process on the host (the
  fallback for kernels before 5.15); auto picks socket where it loads.
  clientgone_watch_capture{mode} says which is in use.
  Once attached, watch drops every capability (and switches to --user).
Traces: with OTEL_EXPORTER_OTLP_ENDPOINT set (the variables of 'clientgone demo
--help'), each request gets a server span, every broken one kept.";

/// Flags of `clientgone watch`.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// A local port whose accepted connections are watched (repeatable).
    #[arg(long = "port", value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub ports: Vec<u16>,
    /// Watch every TCP port this process listens on at start (repeatable).
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,
    /// Watch every TCP port the processes of this name listen on at start (repeatable).
    #[arg(long = "comm", value_name = "NAME")]
    pub comms: Vec<String>,
    /// A route template to count under, like /users/{id} (repeatable); other
    /// paths count as `unmatched`.
    #[arg(long = "route", value_name = "TEMPLATE")]
    pub routes: Vec<String>,
    /// Read route templates from an OpenAPI 3 document's `paths` (YAML or JSON).
    #[arg(long, value_name = "FILE")]
    pub openapi: Option<std::path::PathBuf>,
    /// Count gRPC calls per method: a protobuf FileDescriptorSet naming the
    /// watched servers' services (`protoc --descriptor_set_out`, `buf build
    /// -o`). Without it, gRPC calls count under _OTHER.
    #[arg(long, value_name = "FILE")]
    pub grpc_descriptor: Option<std::path::PathBuf>,
    /// Address of the metrics listener (GET /metrics, GET /healthz).
    #[arg(long, default_value = "127.0.0.1:9464", value_name = "ADDR")]
    pub metrics_listen: String,
    /// Run as this user once the programs are attached.
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// Size of the kernel-to-agent ring buffer in MiB (a power of two).
    #[arg(long, default_value_t = 16, value_parser = ring_mib, value_name = "MIB")]
    pub ring_buffer_mib: u32,
    /// Where the bytes of each read and write come from: socket (the socket
    /// tracepoints alone), syscall (a system-call hook, dearer for every
    /// process on the host), auto (socket where the kernel allows it).
    #[arg(long, value_enum, default_value = "auto", value_name = "MODE")]
    pub capture: crate::watch::bpf::Capture,
    /// Histogram buckets.
    #[command(flatten)]
    pub buckets: BucketArgs,
}

fn ring_mib(s: &str) -> Result<u32, String> {
    let n: u32 = s
        .parse()
        .map_err(|_| format!("'{s}' is not a whole number of MiB"))?;
    if !(1..=1024).contains(&n) || !n.is_power_of_two() {
        return Err(format!("{n} MiB: give a power of two from 1 to 1024"));
    }
    Ok(n)
}

/// Flags of `clientgone proxy`.
#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// The service to proxy: http://host:port[/prefix], h2c://… for HTTP/2
    /// with prior knowledge, or https://… (HTTP/1.1 or HTTP/2 by ALPN; SNI
    /// from the host, the system's trusted roots).
    #[arg(long, value_name = "URL")]
    pub upstream: String,
    /// Also trust the CA certificates in this PEM file for an https://
    /// upstream.
    #[arg(long, value_name = "FILE")]
    pub upstream_ca: Option<std::path::PathBuf>,
    /// Address of the proxy (HTTP/1.1 and h2c on one port).
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
    pub listen: String,
    /// Address of the metrics listener (GET /metrics, GET /healthz).
    #[arg(long, default_value = "127.0.0.1:9464", value_name = "ADDR")]
    pub metrics_listen: String,
    /// A route template to count under, like /users/{id} or /files/{*path}
    /// (repeatable). Other paths are forwarded too, counted as `unmatched`.
    #[arg(long = "route", value_name = "TEMPLATE")]
    pub routes: Vec<String>,
    /// Read route templates from an OpenAPI 3 document's `paths` (YAML or JSON).
    #[arg(long, value_name = "FILE")]
    pub openapi: Option<std::path::PathBuf>,
    /// A route template to forward but leave out of every metric, like
    /// /healthz or /assets/{*path} (repeatable); with --grpc-descriptor also a
    /// gRPC method, like grpc.health.v1.Health/Check.
    #[arg(long = "skip-route", value_name = "TEMPLATE")]
    pub skip_routes: Vec<String>,
    /// How long the upstream may take to send its response head (then 504),
    /// counted again from each piece of request body it takes.
    #[arg(long, default_value = "60s", value_parser = parse_positive_duration, value_name = "DURATION")]
    pub upstream_timeout: Duration,
    /// Count gRPC calls per method: a protobuf FileDescriptorSet naming the
    /// upstream's services (`protoc --descriptor_set_out`, `buf build -o`).
    /// Needs an h2c:// upstream. gRPC calls then wait for the upstream's
    /// answer as long as their own deadline (`grpc-timeout`) says, and an
    /// upstream that fails is answered with a gRPC status (UNAVAILABLE).
    #[arg(long, value_name = "FILE")]
    pub grpc_descriptor: Option<std::path::PathBuf>,
    /// HTTPS.
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Connection options.
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// Histogram buckets.
    #[command(flatten)]
    pub buckets: BucketArgs,
}

/// HTTPS on `--listen`, on `demo` and `proxy`.
#[derive(Debug, Args)]
pub struct TlsArgs {
    /// Serve HTTPS (HTTP/1.1 and HTTP/2 by ALPN) with this certificate chain,
    /// PEM, the server's own certificate first; needs --tls-key. Read again on
    /// SIGHUP (a bad new file keeps the old certificate). /metrics stays plain.
    #[arg(long, requires = "tls_key", value_name = "FILE")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The private key of --tls-cert, PEM (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, requires = "tls_cert", value_name = "FILE")]
    pub tls_key: Option<std::path::PathBuf>,
}

impl TlsArgs {
    /// The files, when both are given (clap holds that they come together).
    pub fn files(&self) -> Option<crate::tls::TlsFiles> {
        Some(crate::tls::TlsFiles {
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
        })
    }
}

/// The histograms' bucket bounds, on every server command.
#[derive(Debug, Args)]
pub struct BucketArgs {
    /// Upper bounds, in seconds, of the request (and gRPC call) duration
    /// histogram's buckets, comma-separated and increasing, like
    /// 0.005,0.05,0.5,5 (default: 1 ms to 300 s).
    #[arg(long, value_parser = buckets, value_name = "SECONDS,…")]
    pub request_duration_buckets: Option<Vec<f64>>,
    /// Upper bounds, in seconds, of the time-to-abandon histogram's buckets
    /// (*_client_disconnect_elapsed_seconds; default: 10 ms to 600 s).
    #[arg(long, value_parser = buckets, value_name = "SECONDS,…")]
    pub disconnect_elapsed_buckets: Option<Vec<f64>>,
    /// Upper bounds, in seconds, of the connection duration histogram's
    /// buckets (default: 10 ms to 1 h).
    #[arg(long, value_parser = buckets, value_name = "SECONDS,…")]
    pub connection_duration_buckets: Option<Vec<f64>>,
}

impl BucketArgs {
    /// The buckets, the defaults where no flag is given.
    pub fn buckets(&self) -> Buckets {
        let mut buckets = Buckets::default();
        if let Some(b) = &self.request_duration_buckets {
            buckets.request_duration = b.clone();
        }
        if let Some(b) = &self.disconnect_elapsed_buckets {
            buckets.disconnect_elapsed = b.clone();
        }
        if let Some(b) = &self.connection_duration_buckets {
            buckets.connection_duration = b.clone();
        }
        buckets
    }
}

/// A comma-separated list of bucket bounds in seconds, checked.
fn buckets(s: &str) -> Result<Vec<f64>, String> {
    let values = s
        .split(',')
        .map(|v| {
            let v = v.trim();
            v.parse::<f64>()
                .map_err(|_| format!("'{v}' is not a number of seconds"))
        })
        .collect::<Result<Vec<f64>, String>>()?;
    clientgone::check_buckets(&values)?;
    Ok(values)
}

/// The trace-export part of `--help`.
const OTEL_HELP: &str = "\
Traces (OTLP) are exported when OTEL_EXPORTER_OTLP_ENDPOINT or
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set. Every broken request's span is kept;
others as OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG say (default: all of
them). Honoured variables:
  OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
  OTEL_EXPORTER_OTLP_PROTOCOL, OTEL_EXPORTER_OTLP_TRACES_PROTOCOL
  (grpc | http/protobuf), OTEL_EXPORTER_OTLP_HEADERS, OTEL_EXPORTER_OTLP_TIMEOUT,
  OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER
  (parentbased_traceidratio | traceidratio | always_on | always_off |
  parentbased_always_on | parentbased_always_off), OTEL_TRACES_SAMPLER_ARG,
  OTEL_BSP_MAX_QUEUE_SIZE (up to 1000000), OTEL_BSP_SCHEDULE_DELAY (ms),
  OTEL_BSP_MAX_EXPORT_BATCH_SIZE, OTEL_SDK_DISABLED (true | false),
  OTEL_TRACES_EXPORTER (otlp | none). A malformed value stops the start (exit 2).
  https:// endpoints trust the system's roots plus OTEL_EXPORTER_OTLP_CERTIFICATE
  (PEM); OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE and OTEL_EXPORTER_OTLP_CLIENT_KEY
  give a client certificate (mTLS). Per signal, winning over those:
  OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE, OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE,
  OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY, OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE,
  OTEL_EXPORTER_OTLP_METRICS_CLIENT_CERTIFICATE, OTEL_EXPORTER_OTLP_METRICS_CLIENT_KEY.

Metrics are pushed over OTLP too (beside /metrics) with OTEL_METRICS_EXPORTER=otlp:
  OTEL_EXPORTER_OTLP_METRICS_ENDPOINT (else OTEL_EXPORTER_OTLP_ENDPOINT, else
  localhost), OTEL_EXPORTER_OTLP_METRICS_PROTOCOL (else OTEL_EXPORTER_OTLP_PROTOCOL),
  OTEL_METRIC_EXPORT_INTERVAL (ms, default 60000), OTEL_METRIC_EXPORT_TIMEOUT (ms,
  default 30000), OTEL_EXPORTER_OTLP_METRICS_HEADERS (else OTEL_EXPORTER_OTLP_HEADERS).
  Cumulative, under the OpenTelemetry names (http.server.request.duration, …).

TOKIO_WORKER_THREADS sets the number of worker threads (default: the CPUs this
process may use); with one, the runtime is single-threaded.";

/// Flags of `clientgone demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Address of the demo HTTP server (HTTP/1.1 and h2c on one port).
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
    pub listen: String,
    /// Address of the metrics listener (GET /metrics, GET /healthz).
    #[arg(long, default_value = "127.0.0.1:9464", value_name = "ADDR")]
    pub metrics_listen: String,
    /// Also run the break-traffic generator against the demo itself.
    #[arg(long)]
    pub traffic: bool,
    /// Requests per second of `--traffic`.
    #[arg(long, default_value_t = 20.0, value_parser = parse_rate, value_name = "N")]
    pub traffic_rate: f64,
    /// HTTPS.
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Connection options.
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// Histogram buckets.
    #[command(flatten)]
    pub buckets: BucketArgs,
}

/// Flags of `clientgone traffic`.
#[derive(Debug, Args)]
pub struct TrafficArgs {
    /// The server, e.g. http://127.0.0.1:8080 (it must serve the demo's routes).
    #[arg(long, value_name = "URL", value_parser = parse_target)]
    pub target: Target,
    /// Requests started per second.
    #[arg(long, default_value_t = 50.0, value_parser = parse_rate, value_name = "N")]
    pub rate: f64,
    /// How long to run (0s: until Ctrl-C).
    #[arg(long, default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    pub duration: Duration,
    /// Stop after this many requests.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..), value_name = "N")]
    pub requests: Option<u64>,
    /// Requests in flight at most.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=10_000), value_name = "N")]
    pub concurrency: u32,
    /// Weight of completed requests (GET /items/{id}).
    #[arg(long, default_value_t = DEFAULT_WEIGHTS[0], value_parser = weight, value_name = "W")]
    pub completed: u32,
    /// Weight of FIN while the handler waits (GET /hello).
    #[arg(long, default_value_t = DEFAULT_WEIGHTS[1], value_parser = weight, value_name = "W")]
    pub fin: u32,
    /// Weight of RST while the handler waits (GET /hello).
    #[arg(long, default_value_t = DEFAULT_WEIGHTS[2], value_parser = weight, value_name = "W")]
    pub rst: u32,
    /// Weight of half-sent bodies then FIN (POST /upload).
    #[arg(long, default_value_t = DEFAULT_WEIGHTS[3], value_parser = weight, value_name = "W")]
    pub half_body: u32,
    /// Weight of RST mid-stream (GET /stream).
    #[arg(long, default_value_t = DEFAULT_WEIGHTS[4], value_parser = weight, value_name = "W")]
    pub mid_stream: u32,
    /// Weight of HTTP/2 RST_STREAM (GET /hello over h2c).
    #[arg(long, default_value_t = DEFAULT_WEIGHTS[5], value_parser = weight, value_name = "W")]
    pub h2_reset: u32,
    /// Weight of completed gRPC calls (Demo/Wait).
    #[arg(long, default_value_t = DEFAULT_WEIGHTS[6], value_parser = weight, value_name = "W")]
    pub grpc_completed: u32,
    /// Weight of gRPC calls cancelled while the handler waits (Demo/Wait).
    #[arg(long, default_value_t = DEFAULT_WEIGHTS[7], value_parser = weight, value_name = "W")]
    pub grpc_cancel: u32,
    /// Weight of gRPC calls whose deadline runs out (Demo/Wait, grpc-timeout = --patience).
    #[arg(long, default_value_t = DEFAULT_WEIGHTS[8], value_parser = weight, value_name = "W")]
    pub grpc_deadline: u32,
    /// Weight of server streams dropped after three messages (Demo/Ticks).
    #[arg(long, default_value_t = DEFAULT_WEIGHTS[9], value_parser = weight, value_name = "W")]
    pub grpc_stream_cancel: u32,
    /// Weight of client streams dropped after three chunks (Demo/Upload).
    #[arg(long, default_value_t = DEFAULT_WEIGHTS[10], value_parser = weight, value_name = "W")]
    pub grpc_upload_abort: u32,
    /// How long a leaving client waits before it leaves.
    #[arg(long, default_value = "50ms", value_parser = patience, value_name = "DURATION")]
    pub patience: Duration,
    /// Seed of the mix, for a repeatable run.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

impl TrafficArgs {
    /// The weights in `Kind::ALL` order.
    pub fn weights(&self) -> [u32; Kind::COUNT] {
        [
            self.completed,
            self.fin,
            self.rst,
            self.half_body,
            self.mid_stream,
            self.h2_reset,
            self.grpc_completed,
            self.grpc_cancel,
            self.grpc_deadline,
            self.grpc_stream_cancel,
            self.grpc_upload_abort,
        ]
    }
}

/// A `--target` URL, checked but not yet resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// `host:port`, ready for resolution.
    pub authority: String,
}

fn parse_target(s: &str) -> Result<Target, String> {
    let uri: http::Uri = s
        .parse()
        .map_err(|e| format!("{e} (write it like http://127.0.0.1:8080)"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some(other) => return Err(format!("scheme '{other}' is not supported; use http://")),
        None => return Err("no scheme; write it like http://127.0.0.1:8080".into()),
    }
    let authority = uri.authority().ok_or("no host in the URL")?;
    if authority.as_str().contains('@') {
        return Err("the target takes no user or password".into());
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() || s.contains('#') {
        return Err(
            "the target is a server, not a page: give it without a path \
             (traffic requests the demo's own routes)"
                .into(),
        );
    }
    let port = port_or(authority, 80)?;
    Ok(Target {
        authority: format!("{}:{port}", authority.host()),
    })
}

/// The port a URL names, `default` (80 for `http://`) if none. `http` parses
/// a port that is not a number (or too big) as no port at all; here it is an
/// error, not a quiet default.
pub(crate) fn port_or(authority: &http::uri::Authority, default: u16) -> Result<u16, String> {
    let text = authority.as_str();
    let host_port = text.rsplit_once('@').map_or(text, |(_, rest)| rest);
    // After an IPv6 literal's `]`, if any: its colons are not the port's.
    let after_host = host_port
        .rsplit_once(']')
        .map_or(host_port, |(_, rest)| rest);
    match after_host.rsplit_once(':') {
        None => Ok(default),
        Some((_, port)) => match port.parse::<u16>() {
            Ok(port) if port > 0 => Ok(port),
            _ => Err(format!("port '{port}' is not a number from 1 to 65535")),
        },
    }
}

/// A traffic weight: bounded, so that the six of them add up without overflow.
fn weight(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(w) if w <= 1_000_000 => Ok(w),
        _ => Err("must be a whole number from 0 to 1000000".to_owned()),
    }
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 && r <= 1_000_000.0 => Ok(r),
        _ => Err("must be a number of requests per second above 0".to_owned()),
    }
}

/// Connection options shared by every server command. Durations read like
/// `10s`, `500ms`, `2m`.
#[derive(Debug, Clone, Args)]
pub struct ConnectionArgs {
    /// Idle time before TCP keepalive probes start, up to 32767s, in whole seconds (a fraction rounds up; 0s turns keepalive off).
    #[arg(long, default_value = "10s", value_parser = keepalive_or_off, value_name = "DURATION")]
    pub tcp_keepalive_idle: Duration,
    /// Time between TCP keepalive probes, up to 32767s, in whole seconds (a fraction rounds up).
    #[arg(long, default_value = "5s", value_parser = keepalive_time, value_name = "DURATION")]
    pub tcp_keepalive_interval: Duration,
    /// Unanswered keepalive probes before the connection is declared dead.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=127), value_name = "N")]
    pub tcp_keepalive_retries: u32,
    /// TCP_USER_TIMEOUT: how long sent data may stay unacknowledged, up to about 24.8 days (0s: kernel default).
    #[arg(long, default_value = "30s", value_parser = user_timeout, value_name = "DURATION")]
    pub tcp_user_timeout: Duration,
    /// Time a client gets to send a complete request head, up to 24h (0s: unbounded).
    #[arg(long, default_value = "10s", value_parser = header_read_timeout, value_name = "DURATION")]
    pub header_read_timeout: Duration,
}

impl ConnectionArgs {
    /// The options these flags describe.
    pub fn options(&self) -> ConnectionOptions {
        let nonzero = |d: Duration| (!d.is_zero()).then_some(d);
        ConnectionOptions::default()
            .tcp_keepalive_idle(nonzero(self.tcp_keepalive_idle))
            .tcp_keepalive_interval(self.tcp_keepalive_interval)
            .tcp_keepalive_retries(self.tcp_keepalive_retries)
            .tcp_user_timeout(nonzero(self.tcp_user_timeout))
            .header_read_timeout(nonzero(self.header_read_timeout))
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (write durations like 10s, 500ms, 2m)"))
}

/// A keepalive time Linux takes: up to 32767 s (whole seconds; the library
/// rounds a fraction up).
fn keepalive_time(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    let max = ConnectionOptions::MAX_TCP_KEEPALIVE;
    if d.is_zero() || d > max {
        return Err(format!(
            "the kernel takes keepalive times from 1s to {}s",
            max.as_secs()
        ));
    }
    Ok(d)
}

fn keepalive_or_off(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Ok(d),
        _ => keepalive_time(s).map_err(|e| format!("{e}, or 0s for no keepalive")),
    }
}

fn user_timeout(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    let max = ConnectionOptions::MAX_TCP_USER_TIMEOUT;
    if d > max {
        return Err(format!(
            "the kernel takes at most {} ({}ms), or 0s for its default",
            humantime::format_duration(max),
            max.as_millis()
        ));
    }
    Ok(d)
}

fn header_read_timeout(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d > Duration::from_secs(86_400) => {
            Err("at most 24h (0s for no limit at all)".to_owned())
        }
        d => Ok(d),
    }
}

/// A leaving client's patience: it must run out before the demo's slowest
/// answer (`delay_ms` up to an hour), with a minute to spare.
fn patience(s: &str) -> Result<Duration, String> {
    let most = Duration::from_millis(crate::demo::MAX_DELAY_MS) - Duration::from_secs(60);
    match parse_duration(s)? {
        d if d > most => Err(format!(
            "at most {}: the demo answers within an hour",
            humantime::format_duration(most)
        )),
        d => Ok(d),
    }
}

fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err("must be more than zero".to_owned()),
        d => Ok(d),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_names_every_honoured_variable() {
        for variable in clientgone_exporter::otlp::HONOURED_VARIABLES {
            // Whole words: OTEL_TRACES_SAMPLER must not pass as the prefix of
            // OTEL_TRACES_SAMPLER_ARG.
            let named = OTEL_HELP
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .any(|word| word == *variable);
            assert!(named, "--help does not name {variable}");
        }
    }

    #[test]
    fn defaults_match_the_contract() {
        let cli = Cli::try_parse_from(["clientgone", "demo"]).unwrap();
        let Command::Demo(args) = cli.command else {
            panic!("demo")
        };
        assert_eq!(args.listen, "127.0.0.1:8080");
        let cli = Cli::try_parse_from(["clientgone", "proxy", "--upstream", "http://x:1"]).unwrap();
        let Command::Proxy(proxy) = cli.command else {
            panic!("proxy")
        };
        assert_eq!(proxy.listen, "127.0.0.1:8080");
        assert_eq!(proxy.metrics_listen, "127.0.0.1:9464");
        assert_eq!(proxy.upstream_timeout, Duration::from_secs(60));
        assert_eq!(args.metrics_listen, "127.0.0.1:9464");
        assert_eq!(args.connection.options(), ConnectionOptions::default());
    }

    #[test]
    fn durations_parse_and_bad_ones_are_rejected() {
        let cli = Cli::try_parse_from([
            "clientgone",
            "demo",
            "--tcp-keepalive-idle",
            "2s",
            "--tcp-user-timeout",
            "2m",
            "--header-read-timeout",
            "0s",
        ])
        .unwrap();
        let Command::Demo(args) = cli.command else {
            panic!("demo")
        };
        let options = args.connection.options();
        assert_eq!(options.tcp_keepalive_idle, Some(Duration::from_secs(2)));
        assert_eq!(options.tcp_user_timeout, Some(Duration::from_secs(120)));
        assert_eq!(options.header_read_timeout, None);

        for bad in [
            ["--tcp-keepalive-idle", "ten"],
            ["--tcp-keepalive-idle", "10h"],
            ["--tcp-keepalive-interval", "10h"],
            ["--tcp-user-timeout", "30d"],
            ["--header-read-timeout", "500000years"],
            ["--tcp-keepalive-interval", "0s"],
            ["--tcp-keepalive-retries", "0"],
            ["--tcp-keepalive-retries", "-1"],
        ] {
            let args = ["clientgone", "demo", bad[0], bad[1]];
            assert!(Cli::try_parse_from(args).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn traffic_targets_are_checked() {
        assert_eq!(
            parse_target("http://127.0.0.1:8080").unwrap().authority,
            "127.0.0.1:8080"
        );
        assert_eq!(
            parse_target("http://localhost/").unwrap().authority,
            "localhost:80"
        );
        assert_eq!(
            parse_target("http://[::1]:8080").unwrap().authority,
            "[::1]:8080"
        );
        for bad in [
            "127.0.0.1:8080",
            "https://x:1",
            "ftp://x",
            "http://",
            "not a url",
            // Not a quiet :80.
            "http://127.0.0.1:80800",
            "http://127.0.0.1:808O",
            "http://127.0.0.1:0",
            "http://127.0.0.1:",
            "http://127.0.0.1:8080/sub/path",
            "http://u:p@127.0.0.1:8080",
        ] {
            assert!(parse_target(bad).is_err(), "{bad} accepted");
        }
        // Weights that would overflow their sum.
        let args = [
            "clientgone",
            "traffic",
            "--completed",
            "4294967295",
            "--fin",
            "1",
        ];
        assert!(
            Cli::try_parse_from(args).is_err(),
            "a weight over 10^6 accepted"
        );
        for bad in ["0", "-1", "nan", "inf", "lots"] {
            assert!(parse_rate(bad).is_err(), "{bad} accepted");
        }
    }
}
