//! `clientgone demo`: the instrumented sample server, ready to try.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use clientgone::{ConnectionOptions, DisconnectLayer, Metrics, TrackedListener};
use futures_util::stream::{self, StreamExt};
use prometheus::Registry;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Longest `delay_ms` the demo accepts (one hour).
pub const MAX_DELAY_MS: u64 = 3_600_000;
/// Most `chunks` the demo streams.
pub const MAX_CHUNKS: u64 = 100_000;

/// Where and how the demo serves.
#[derive(Clone, Debug)]
pub struct DemoConfig {
    /// Address of the demo server.
    pub listen: String,
    /// Address of the metrics listener.
    pub metrics_listen: String,
    /// Connection options of the demo server.
    pub options: ConnectionOptions,
    /// The registry the demo's metrics go into (and `/metrics` serves).
    pub registry: Registry,
}

/// Why the demo could not start.
#[derive(Debug)]
pub struct StartError(String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

/// A running demo: its addresses, its registry, and how to stop it.
#[derive(Debug)]
pub struct RunningDemo {
    /// The demo server's address.
    pub addr: SocketAddr,
    /// The metrics listener's address.
    pub metrics_addr: SocketAddr,
    /// The registry the demo's metrics live in.
    pub registry: Registry,
    shutdown: CancellationToken,
    server: JoinHandle<io::Result<()>>,
    metrics_server: JoinHandle<io::Result<()>>,
}

impl RunningDemo {
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

/// The demo's routes, instrumented by `metrics`.
pub fn app(metrics: Metrics) -> Router {
    Router::new()
        .route("/hello", get(hello))
        .route("/stream", get(stream_chunks))
        .route("/upload", post(upload))
        .route("/items/{id}", get(item))
        .layer(DisconnectLayer::new(metrics))
}

/// Binds both listeners and starts serving. Fails with a one-line message when
/// an address is bad or in use.
pub async fn start(config: DemoConfig) -> Result<RunningDemo, StartError> {
    let registry = config.registry;
    let metrics = Metrics::new(&registry).map_err(|e| StartError(e.to_string()))?;
    let listener = bind(&config.listen, "--listen").await?;
    let metrics_listener = bind(&config.metrics_listen, "--metrics-listen").await?;
    let addr = listener
        .local_addr()
        .map_err(|e| StartError(e.to_string()))?;
    let metrics_addr = metrics_listener
        .local_addr()
        .map_err(|e| StartError(e.to_string()))?;

    let shutdown = CancellationToken::new();
    let listener = TrackedListener::from_tcp(listener, &metrics).with_options(config.options);
    let server = tokio::spawn(
        clientgone::serve(listener, app(metrics))
            .with_graceful_shutdown(shutdown.clone().cancelled_owned())
            .into_future(),
    );
    let metrics_server = tokio::spawn(clientgone_exporter::serve_metrics(
        metrics_listener,
        registry.clone(),
        shutdown.clone().cancelled_owned(),
    ));
    Ok(RunningDemo {
        addr,
        metrics_addr,
        registry,
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

#[derive(Debug, Deserialize)]
struct HelloParams {
    delay_ms: Option<u64>,
}

/// `GET /hello?delay_ms=N`: waits N ms (default 5000), then greets.
async fn hello(Query(params): Query<HelloParams>) -> Response {
    let delay = params.delay_ms.unwrap_or(5000);
    if delay > MAX_DELAY_MS {
        return bad_request(format!("delay_ms must be at most {MAX_DELAY_MS}"));
    }
    tokio::time::sleep(Duration::from_millis(delay)).await;
    "Hello, World!".into_response()
}

#[derive(Debug, Deserialize)]
struct StreamParams {
    chunks: Option<u64>,
    interval_ms: Option<u64>,
}

/// `GET /stream?chunks=N&interval_ms=M`: N lines, M ms apart (defaults 10, 500).
async fn stream_chunks(Query(params): Query<StreamParams>) -> Response {
    let chunks = params.chunks.unwrap_or(10);
    let interval = params.interval_ms.unwrap_or(500);
    if chunks > MAX_CHUNKS {
        return bad_request(format!("chunks must be at most {MAX_CHUNKS}"));
    }
    if interval > MAX_DELAY_MS {
        return bad_request(format!("interval_ms must be at most {MAX_DELAY_MS}"));
    }
    let interval = Duration::from_millis(interval);
    let body = stream::iter(0..chunks).then(move |i| async move {
        if i > 0 {
            tokio::time::sleep(interval).await;
        }
        Ok::<_, Infallible>(Bytes::from(format!("chunk {i}\n")))
    });
    Body::from_stream(body).into_response()
}

/// `POST /upload`: reads the whole body, answers its length in bytes.
async fn upload(body: Body) -> Response {
    let mut length: u64 = 0;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(bytes) => length += bytes.len() as u64,
            Err(e) => return bad_request(format!("request body failed: {e}")),
        }
    }
    format!("{length}\n").into_response()
}

/// `GET /items/{id}`: answers at once.
async fn item(Path(id): Path<String>) -> String {
    format!("item {id}\n")
}

fn bad_request(message: String) -> Response {
    (StatusCode::BAD_REQUEST, message + "\n").into_response()
}
