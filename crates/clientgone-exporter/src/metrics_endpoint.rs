//! The metrics listener: `/metrics` and `/healthz`.

use std::future::Future;
use std::io;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::net::TcpListener;

/// The `Content-Type` of the Prometheus text exposition format 0.0.4.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A router serving `GET /metrics` from `registry` and `GET /healthz`.
///
/// ```
/// let registry = prometheus::Registry::new();
/// let app: axum::Router = clientgone_exporter::metrics_router(registry);
/// ```
pub fn metrics_router(registry: Registry) -> Router {
    Router::new()
        .route("/metrics", get(move || render(registry.clone())))
        .route("/healthz", get(|| async { "ok\n" }))
}

async fn render(registry: Registry) -> Response {
    let families = registry.gather();
    let mut body = Vec::with_capacity(16 * 1024);
    match TextEncoder::new().encode(&families, &mut body) {
        Ok(()) => ([(header::CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE)], body).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode metrics: {e}\n"),
        )
            .into_response(),
    }
}

/// Serves [`metrics_router`] on `listener` until `shutdown` resolves.
///
/// ```no_run
/// # async fn run() -> std::io::Result<()> {
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:9464").await?;
/// let registry = prometheus::Registry::new();
/// clientgone_exporter::serve_metrics(listener, registry, std::future::pending()).await
/// # }
/// ```
pub async fn serve_metrics(
    listener: TcpListener,
    registry: Registry,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    axum::serve(listener, metrics_router(registry))
        .with_graceful_shutdown(shutdown)
        .await
}
