//! What every server command shares: bind the app and metrics listeners, serve
//! the app through `TrackedListener` + `clientgone::serve`, `/metrics` beside it,
//! and stop both gracefully.

use std::io;
use std::net::SocketAddr;

use axum::Router;
use clientgone::DeferredTracer;
use clientgone::{Buckets, ConnectionOptions, DisconnectLayer, Metrics, TrackedListener};
use prometheus::Registry;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::tls::TlsFiles;

/// Where a server command listens, and with which options.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Address of the instrumented server.
    pub listen: String,
    /// Address of the metrics listener.
    pub metrics_listen: String,
    /// Connection options of the instrumented server.
    pub options: ConnectionOptions,
    /// The registry the metrics go into (and `/metrics` serves).
    pub registry: Registry,
    /// Gives each request an OTel server span when set (see
    /// `OtlpPipeline::tracer`).
    pub tracer: Option<DeferredTracer>,
    /// The histograms' bucket bounds.
    pub buckets: Buckets,
    /// Serve HTTPS with these files (`--tls-cert`, `--tls-key`), read again
    /// on `SIGHUP`; `None`: plaintext.
    pub tls: Option<TlsFiles>,
}

/// Why a server could not start: one line, fit for stderr.
#[derive(Debug)]
pub struct StartError(pub(crate) String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

/// A running server: its addresses, its registry, and how to stop it.
#[derive(Debug)]
pub struct RunningServer {
    /// The instrumented server's address.
    pub addr: SocketAddr,
    /// The metrics listener's address.
    pub metrics_addr: SocketAddr,
    /// The registry the metrics live in.
    pub registry: Registry,
    /// Whether it serves HTTPS.
    pub tls: bool,
    shutdown: CancellationToken,
    server: JoinHandle<io::Result<()>>,
    metrics_server: JoinHandle<io::Result<()>>,
}

impl RunningServer {
    /// The token that stops both servers gracefully when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stops accepting, lets requests in flight finish, and waits for both servers.
    pub async fn shutdown(self) -> io::Result<()> {
        self.shutdown.cancel();
        self.wait().await
    }

    /// Waits until both servers have stopped.
    pub async fn wait(self) -> io::Result<()> {
        for task in [self.server, self.metrics_server] {
            task.await.map_err(io::Error::other)??;
        }
        Ok(())
    }
}

/// Binds both listeners, registers the request metrics, builds the app with
/// `make_app` (which gets the `DisconnectLayer` to put outermost) and serves it.
pub async fn start(
    config: ServerConfig,
    make_app: impl FnOnce(DisconnectLayer) -> Router,
) -> Result<RunningServer, StartError> {
    let registry = config.registry;
    let metrics = Metrics::builder()
        .buckets(config.buckets)
        .register(&registry)
        .map_err(|e| StartError(e.to_string()))?;
    let mut layer = DisconnectLayer::new(metrics.clone());
    if let Some(tracer) = config.tracer {
        layer = layer.with_tracer(tracer);
    }
    let listener = bind(&config.listen, "--listen").await?;
    let metrics_listener = match bind(&config.metrics_listen, "--metrics-listen").await {
        // Port 0 picks a free port each time: the same text is no clash then.
        Err(_)
            if local_addr(&listener)
                .is_ok_and(|a| a.port() != 0 && a.to_string() == config.metrics_listen) =>
        {
            return Err(StartError(format!(
                "--listen and --metrics-listen are both {}: give one of them another port",
                config.metrics_listen
            )));
        }
        other => other?,
    };
    let addr = local_addr(&listener)?;
    let metrics_addr = local_addr(&metrics_listener)?;
    let tls = match config.tls {
        None => None,
        Some(files) => Some(
            crate::tls::acceptor(files)
                .map_err(|e| StartError(format!("--tls-cert/--tls-key: {e}")))?,
        ),
    };

    let shutdown = CancellationToken::new();
    let listener = TrackedListener::from_tcp(listener, &metrics).with_options(config.options);
    let mut serve = clientgone::serve(listener, make_app(layer))
        .with_graceful_shutdown(shutdown.clone().cancelled_owned());
    let https = tls.is_some();
    if let Some((acceptor, certificate)) = tls {
        crate::tls::reload_on_sighup(certificate, shutdown.clone());
        serve = serve.tls(acceptor);
    }
    let server = tokio::spawn(serve.into_future());
    let metrics_server = tokio::spawn(clientgone_exporter::serve_metrics(
        metrics_listener,
        registry.clone(),
        shutdown.clone().cancelled_owned(),
    ));
    Ok(RunningServer {
        addr,
        metrics_addr,
        registry,
        tls: https,
        shutdown,
        server,
        metrics_server,
    })
}

async fn bind(addr: &str, flag: &str) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| StartError(format!("cannot listen on {addr} ({flag}): {e}")))
}

fn local_addr(listener: &TcpListener) -> Result<SocketAddr, StartError> {
    listener
        .local_addr()
        .map_err(|e| StartError(format!("cannot read the bound address: {e}")))
}
