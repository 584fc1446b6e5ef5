//! Catch, classify and count HTTP clients that break their connection before the
//! response is done.
//!
//! A plain axum service sees a dropped future when its client leaves, and records
//! nothing — so its latency metrics silently lose exactly the requests that were
//! too slow for their clients. `clientgone` wraps the accepted sockets
//! ([`TrackedListener`]) and the router ([`DisconnectLayer`]), and counts every
//! premature disconnect per route template, by [`Phase`] and [`Cause`], into a
//! Prometheus registry you own.
//!
//! ```no_run
//! use axum::{routing::get, Router};
//! use clientgone::{ClientGone, DisconnectLayer, Metrics, TrackedListener};
//!
//! async fn slow(gone: ClientGone) -> &'static str {
//!     tokio::select! {
//!         _ = gone.cancelled() => "never sent: the client left",
//!         _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => "Hello, World!",
//!     }
//! }
//!
//! #[tokio::main]
//! async fn main() -> std::io::Result<()> {
//!     let registry = prometheus::Registry::new();
//!     let metrics = Metrics::new(&registry).expect("fresh registry");
//!     let app = Router::new()
//!         .route("/hello", get(slow))
//!         .layer(DisconnectLayer::new(metrics.clone())); // last = outermost
//!     let listener = TrackedListener::bind("127.0.0.1:8080", &metrics).await?;
//!     clientgone::serve(listener, app).await
//! }
//! ```
//!
//! Data flows one way: socket → [`TrackedStream`] → [`ConnectionState`] →
//! request guard → [`Record`] → [`Metrics`], and, with
//! [`DisconnectLayer::with_tracer`], the request's OpenTelemetry span.

#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(unsafe_code)]

mod classify;
mod client_gone;
mod connection;
mod grpc;
mod layer;
mod metrics;
pub mod names;
mod record;
mod serve;
#[cfg(feature = "tls")]
#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
pub mod tls;

pub use classify::{
    BodyProgress, Cause, ClientEvent, CloseFacts, CloseReason, Direction, Outcome, PeerSignal,
    Phase, asks_to_close, break_cause, break_phase, close_reason, hands_over_connection,
    method_label, recorded_status, response_has_no_body,
};
pub use client_gone::{ClientGone, MissingDisconnectLayer};
pub use connection::{
    ClientLeftHook, ConnectionOptions, ConnectionState, TrackedConnection, TrackedListener,
    TrackedStream,
};
pub use grpc::{
    GrpcMethods, GrpcMethodsError, GrpcStatus, OTHER_METHOD, RpcType, call_status,
    deadline_reached, grpc_timeout, grpc_timeout_value, is_grpc_request,
};
pub use layer::{
    DISCONNECT_EVENT, DeferredTracer, DisconnectLayer, DisconnectService, RequestBody,
    ResponseBody, ResponseFuture, StartSampler, export_call_span, export_request_span,
};
pub use metrics::{Buckets, Metrics, MetricsBuilder, UNMATCHED_ROUTE, check_buckets};
pub use record::{CallRecord, End, Record};
pub use serve::{Serve, serve};
#[cfg(feature = "tls")]
#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
pub use tls::{TlsAcceptor, TrackedTlsStream};
/// The token [`ClientGone::token`] hands out, re-exported so handlers can name
/// it without a dependency on `tokio-util` of their own.
pub use tokio_util::sync::CancellationToken;

/// The boxed error type bodies are converted into.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
