//! Support for the cross-crate tests: start a server on port 0, real clients that
//! really break off (FIN, RST via `SO_LINGER 0`, half-sent bodies, HTTP/2
//! `RST_STREAM`), a strict parser for the Prometheus text format, and
//! `wait_until` with a deadline — never a bare sleep.

#![forbid(unsafe_code)]

pub mod client;
pub mod grpc;
pub mod netns;
pub mod otlp;
pub mod prom;
pub mod tls;

use std::future::Future;
use std::time::{Duration, Instant};

use clientgone::ConnectionOptions;
use clientgone_agent::demo::{self, DemoConfig, RunningDemo};

pub use prom::{Labels, Scrape, scrape};

/// How long any condition may take to become true before a test fails.
/// Generous, because CI is a loaded 2-core machine; tests pass as soon as the
/// condition holds, so it costs nothing when things work.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A loopback port free now, for a server started afterwards (one not ours,
/// which picks no port of its own).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind a free port")
        .local_addr()
        .expect("its address")
        .port()
}

/// Starts the demo on loopback, port 0, with default connection options.
pub async fn start_demo() -> RunningDemo {
    start_demo_with(ConnectionOptions::default()).await
}

/// Starts the demo on loopback, port 0, with these connection options.
pub async fn start_demo_with(options: ConnectionOptions) -> RunningDemo {
    demo::start(DemoConfig {
        listen: "127.0.0.1:0".into(),
        metrics_listen: "127.0.0.1:0".into(),
        options,
        registry: prometheus::Registry::new(),
        tracer: None,
        buckets: Default::default(),
        tls: None,
    })
    .await
    .expect("demo starts on loopback")
}

/// Serves `make_app(metrics)` the way a user would — `TrackedListener` +
/// `clientgone::serve`, metrics in a fresh registry — on `addr` with `options`.
/// `make_app` adds the `DisconnectLayer` itself, so tests can put other layers
/// inside it. Returns the bound address and the registry.
pub async fn serve_app_on(
    addr: impl tokio::net::ToSocketAddrs,
    options: ConnectionOptions,
    make_app: impl FnOnce(clientgone::Metrics) -> axum::Router,
) -> (std::net::SocketAddr, prometheus::Registry) {
    let registry = prometheus::Registry::new();
    let metrics = clientgone::Metrics::new(&registry).expect("fresh registry");
    let listener = clientgone::TrackedListener::bind(addr, &metrics)
        .await
        .expect("bind the test server")
        .with_options(options);
    let bound = listener.local_addr().expect("bound address");
    tokio::spawn(clientgone::serve(listener, make_app(metrics)).into_future());
    (bound, registry)
}

/// [`serve_app_on`] loopback port 0 with the default options.
pub async fn serve_app(
    make_app: impl FnOnce(clientgone::Metrics) -> axum::Router,
) -> (std::net::SocketAddr, prometheus::Registry) {
    serve_app_on("127.0.0.1:0", ConnectionOptions::default(), make_app).await
}

/// Polls `condition` every 5 ms until it holds; panics naming `what` after [`DEADLINE`].
pub async fn wait_until<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if condition().await {
            return;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "timed out after {DEADLINE:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until the metric `name{labels}` (summed over other labels) on the
/// `/metrics` endpoint at `metrics_addr` equals `expected`.
pub async fn wait_for_value(
    metrics_addr: std::net::SocketAddr,
    name: &str,
    labels: &[(&str, &str)],
    expected: f64,
) -> Scrape {
    wait_for(|| scrape(metrics_addr), name, labels, expected).await
}

/// Like [`wait_for_value`], reading an in-process registry.
pub async fn wait_for_registry_value(
    registry: &prometheus::Registry,
    name: &str,
    labels: &[(&str, &str)],
    expected: f64,
) -> Scrape {
    wait_for(
        || async { Scrape::from_registry(registry) },
        name,
        labels,
        expected,
    )
    .await
}

/// Polls `scrape` until `name{labels}` equals `expected`; on timeout the panic
/// shows the last value and the whole scrape.
pub async fn wait_for<F, Fut>(
    mut scrape: F,
    name: &str,
    labels: &[(&str, &str)],
    expected: f64,
) -> Scrape
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Scrape>,
{
    let start = Instant::now();
    loop {
        let scrape = scrape().await;
        let value = scrape.value(name, labels);
        if value == expected {
            return scrape;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "timed out after {DEADLINE:?}: {name}{labels:?} is {value}, expected {expected}\n{}",
            scrape.text
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
