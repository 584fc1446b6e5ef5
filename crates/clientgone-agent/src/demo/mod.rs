//! `clientgone demo`: the instrumented sample server, ready to try — HTTP
//! routes and, on the same port over h2c, the gRPC service of [`grpc`].

pub mod grpc;

use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use clientgone::DisconnectLayer;
use futures_util::stream::{self, StreamExt};
use serde::Deserialize;

use crate::server::{self, RunningServer, ServerConfig, StartError};

/// Longest `delay_ms` the demo accepts (one hour).
pub const MAX_DELAY_MS: u64 = 3_600_000;
/// Most `chunks` the demo streams.
pub const MAX_CHUNKS: u64 = 100_000;

/// Where and how the demo serves.
pub type DemoConfig = ServerConfig;

/// The running demo.
pub type RunningDemo = RunningServer;

/// The demo's routes, instrumented by `layer` (put in gRPC mode with the
/// demo service's methods).
pub fn app(layer: DisconnectLayer) -> Router {
    Router::new()
        .route("/hello", get(hello))
        .route("/stream", get(stream_chunks))
        .route("/upload", post(upload))
        .route("/items/{id}", get(item))
        // A health check on the app's own port, left out of the metrics on
        // purpose (`DisconnectLayer::skip`): probes are not traffic.
        .route("/healthz", get(|| async { "ok\n" }))
        // The service's own route, not `Routes::into_axum_router`: that
        // router's fallback answers every unknown path with a gRPC
        // UNIMPLEMENTED, HTTP requests included.
        .route_service(
            &format!("{}/{{*method}}", grpc::SERVICE_PATH),
            grpc::service(),
        )
        .layer(layer.grpc(grpc::methods()).skip(["/healthz"]))
}

/// Binds both listeners and starts serving. Fails with a one-line message when
/// an address is bad or in use.
pub async fn start(config: DemoConfig) -> Result<RunningDemo, StartError> {
    server::start(config, app).await
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
