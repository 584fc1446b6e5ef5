//! The metrics listener: `/metrics` and `/healthz`.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

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
    let last_size = Arc::new(AtomicUsize::new(16 * 1024));
    Router::new()
        .route(
            "/metrics",
            get(move || render(registry.clone(), last_size.clone())),
        )
        .route("/healthz", get(|| async { "ok\n" }))
}

/// Renders off the async workers: with thousands of label children a render
/// takes milliseconds, and on a worker it would stall every request queued
/// behind it for as long.
async fn render(registry: Registry, last_size: Arc<AtomicUsize>) -> Response {
    let rendered = tokio::task::spawn_blocking(move || {
        let families = registry.gather();
        // Sized like the last answer: a large exposition grows the buffer once.
        let mut body = Vec::with_capacity(last_size.load(Ordering::Relaxed));
        let result = TextEncoder::new().encode(&families, &mut body);
        last_size.store(body.len().max(1024), Ordering::Relaxed);
        result.map(|()| body)
    })
    .await;
    match rendered {
        Ok(Ok(body)) => ([(header::CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE)], body).into_response(),
        Ok(Err(e)) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode metrics: {e}\n"),
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot render metrics: {e}\n"),
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
