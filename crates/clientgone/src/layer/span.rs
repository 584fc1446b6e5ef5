//! The request's `tracing` span — the trace sink of a [`Record`].
//!
//! tracing-opentelemetry turns it into an OTel server span named
//! `{method} {route}` with the HTTP semantic-convention attributes. The span is
//! created at DEBUG level under the target `clientgone::request`: with no
//! subscriber interested it is disabled, and then nothing here allocates.

use std::net::SocketAddr;

use http::{HeaderMap, Request, Version};
use opentelemetry::KeyValue;
use opentelemetry::propagation::Extractor;
use tracing::Span;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::record::{End, Record};

/// The name of the event a broken request's span gets.
pub const DISCONNECT_EVENT: &str = "client.disconnect";

/// Opens the span of one request and joins the caller's trace if the request
/// carries a W3C `traceparent` (through the global propagator, which the
/// exporter installs).
pub(crate) fn request_span<B>(
    req: &Request<B>,
    name: &str,
    method: &'static str,
    route: &str,
    client: Option<SocketAddr>,
) -> Span {
    let span = tracing::debug_span!(
        target: "clientgone::request",
        "http.server.request",
        "otel.name" = name,
        "otel.kind" = "server",
        "http.request.method" = method,
        "http.route" = route,
        "url.path" = req.uri().path(),
        "url.scheme" = "http",
        "network.protocol.version" = protocol_version(req.version()),
        "client.address" = Empty,
        "http.response.status_code" = Empty,
        "error.type" = Empty,
        "otel.status_code" = Empty,
    );
    if span.is_disabled() {
        return span;
    }
    if let Some(addr) = client {
        span.record("client.address", tracing::field::display(addr.ip()));
    }
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&HeaderExtractor(req.headers()))
    });
    // Fails only when no OpenTelemetry layer is installed; then there is no
    // trace to join anyway.
    let _ = span.set_parent(parent);
    span
}

/// Writes the end of the request onto its span.
pub(crate) fn finish(span: &Span, record: &Record<'_>, unacked_bytes: Option<u64>) {
    if span.is_disabled() {
        return;
    }
    span.record("http.response.status_code", i64::from(record.status));
    match record.end {
        End::Disconnect { phase, cause } => {
            span.record("otel.status_code", "error");
            span.record("error.type", "client_disconnect");
            let mut attributes = vec![
                KeyValue::new("disconnect.phase", phase.as_str()),
                KeyValue::new("disconnect.cause", cause.as_str()),
                KeyValue::new("disconnect.elapsed_s", record.elapsed.as_secs_f64()),
                KeyValue::new(
                    "http.response.body.bytes_sent",
                    i64::try_from(record.body_bytes_sent).unwrap_or(i64::MAX),
                ),
            ];
            if let Some(bytes) = unacked_bytes {
                attributes.push(KeyValue::new(
                    "disconnect.unacked_bytes",
                    i64::try_from(bytes).unwrap_or(i64::MAX),
                ));
            }
            span.add_event(DISCONNECT_EVENT, attributes);
        }
        End::Completed if record.status >= 500 => {
            span.record("otel.status_code", "error");
            span.record("error.type", tracing::field::display(record.status));
        }
        End::Completed => {}
    }
}

fn protocol_version(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}
