//! Ships clientgone's measurements: `GET /metrics` (Prometheus text format 0.0.4)
//! and `GET /healthz` on their own listener, and OTLP traces (`otlp`, with the
//! feature of that name, on by default; `default-features = false` leaves the
//! OpenTelemetry SDK and its exporters out).

#![warn(missing_docs)]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod metrics_endpoint;
#[cfg(feature = "otlp")]
#[cfg_attr(docsrs, doc(cfg(feature = "otlp")))]
pub mod otlp;

pub use metrics_endpoint::{PROMETHEUS_CONTENT_TYPE, metrics_router, serve_metrics};
