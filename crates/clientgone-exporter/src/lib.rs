//! Ships clientgone's measurements: `GET /metrics` (Prometheus text format 0.0.4)
//! and `GET /healthz` on their own listener, and OTLP traces ([`otlp`]).

#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod metrics_endpoint;
pub mod otlp;

pub use metrics_endpoint::{PROMETHEUS_CONTENT_TYPE, metrics_router, serve_metrics};
