//! [`RequestSpan`]: the request's OpenTelemetry server span — the trace sink of
//! a [`Record`].
//!
//! The span is built directly with the tracer given to
//! [`DisconnectLayer::with_tracer`](super::DisconnectLayer::with_tracer), not
//! through `tracing` and tracing-opentelemetry: that path builds a registry
//! entry, visits a dozen fields and allocates attributes for every request,
//! which measured at more than half of the traced server's CPU (BENCHMARKS.md).
//! Here the span is started with no attributes, and the attributes, status and
//! `client.disconnect` event are written once, at the end, only if the span
//! will be exported: sampled at its start, or broken, or failed.
//!
//! While the inner service runs, the span's context is the current
//! OpenTelemetry context, so the handler's own spans (through the OTel API, or
//! `tracing` with tracing-opentelemetry) and outgoing `traceparent` headers
//! join the request's trace.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderName, Request, Version};
use opentelemetry::global::BoxedTracer;
use opentelemetry::propagation::Extractor;
use opentelemetry::trace::{SpanBuilder, SpanKind, SpanRef, Status, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue, StringValue};

use crate::classify::{Cause, Phase};
use crate::grpc::GrpcStatus;
use crate::record::{CallRecord, End, Record};

/// The name of the event a broken request's span gets.
pub const DISCONNECT_EVENT: &str = "client.disconnect";

/// The tracer a [`DisconnectLayer`](super::DisconnectLayer) builds spans with.
pub(crate) type SharedTracer = Arc<BoxedTracer>;

/// What the span needs from the request, kept until the end so attributes are
/// built only for spans that are exported.
#[derive(Debug)]
struct RequestFacts {
    /// A cheap clone (shared bytes) of the request's path, copied out only if
    /// the span is exported.
    path: Option<PathAndQuery>,
    version: &'static str,
    /// The client's address as text, shared with its connection.
    client: Option<Arc<str>>,
}

/// The OTel context holding one request's server span, and what its
/// attributes will be made of.
#[derive(Debug)]
pub(crate) struct RequestSpan {
    context: Context,
    facts: RequestFacts,
}

impl RequestSpan {
    /// Starts the span of one request, as a child of the caller's trace if the
    /// request carries a W3C `traceparent` (through the global propagator,
    /// which the exporter installs).
    pub(crate) fn start<B>(
        tracer: &BoxedTracer,
        name: &str,
        req: &Request<B>,
        client: Option<Arc<str>>,
    ) -> Self {
        let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.extract(&HeaderExtractor(req.headers()))
        });
        // Named at the start, so a sampler that decides by name (say, to leave
        // out health checks) sees the real one.
        let builder = SpanBuilder::from_name(name.to_owned()).with_kind(SpanKind::Server);
        let span = tracer.build_with_context(builder, &parent);
        RequestSpan {
            context: parent.with_span(span),
            facts: RequestFacts {
                path: req.uri().path_and_query().cloned(),
                version: protocol_version(req.version()),
                client,
            },
        }
    }

    /// The context to make current while the request's code runs.
    pub(crate) fn context(&self) -> &Context {
        &self.context
    }

    /// Writes the end of a gRPC call onto the span and ends it.
    pub(crate) fn finish_call(self, record: &CallRecord<'_>, unacked_bytes: Option<u64>) {
        let span = self.context.span();
        let broken = matches!(record.end, End::Disconnect { .. });
        let failed = is_server_error(record.status);
        if !span.span_context().is_sampled() && !broken && !failed {
            return span.end();
        }
        let attributes = vec![
            KeyValue::new("rpc.system.name", "grpc"),
            KeyValue::new("rpc.method", record.method.to_owned()),
            KeyValue::new("rpc.response.status_code", record.status.as_str()),
            KeyValue::new("network.protocol.version", self.facts.version),
        ];
        let failure = failed.then(|| record.status.as_str().into());
        let disconnect = |phase, cause| Disconnect {
            phase,
            cause,
            elapsed: record.elapsed,
            body_bytes_sent: record.body_bytes_sent,
            unacked_bytes,
        };
        write_outcome(
            &span,
            attributes,
            self.facts.client,
            record.end,
            failure,
            disconnect,
            None,
        );
        span.end();
    }

    /// Writes the end of the request onto the span and ends it.
    pub(crate) fn finish(self, route: &Arc<str>, record: &Record<'_>, unacked_bytes: Option<u64>) {
        let path = self.facts.path.as_ref().map_or("/", PathAndQuery::path);
        let facts = SpanEnd {
            path,
            version: self.facts.version,
            client: self.facts.client,
            unacked_bytes,
            at: None,
        };
        write_end(self.context.span(), route, record, facts);
    }
}

/// What the end of a span is written with, beside the [`Record`].
struct SpanEnd<'a> {
    path: &'a str,
    version: &'static str,
    client: Option<Arc<str>>,
    unacked_bytes: Option<u64>,
    /// When the request ended, if not now.
    at: Option<SystemTime>,
}

/// The attributes, status and `client.disconnect` event of a request's span,
/// written once at its end — the one writer of both the layer's spans and
/// [`export_request_span`]'s.
fn write_end(span: SpanRef<'_>, route: &Arc<str>, record: &Record<'_>, facts: SpanEnd<'_>) {
    let end = |span: SpanRef<'_>| match facts.at {
        Some(at) => span.end_with_timestamp(at),
        None => span.end(),
    };
    let broken = matches!(record.end, End::Disconnect { .. });
    let failed = record.status >= 500;
    if !span.span_context().is_sampled() && !broken && !failed {
        // Recorded only in case it broke; it did not, and the pipeline
        // will drop it: no attributes to build.
        return end(span);
    }
    let mut attributes = Vec::with_capacity(8);
    attributes.extend([
        KeyValue::new("http.request.method", record.method),
        KeyValue::new("http.route", StringValue::from(Arc::clone(route))),
        KeyValue::new("http.response.status_code", i64::from(record.status)),
        KeyValue::new("url.path", facts.path.to_owned()),
        KeyValue::new("url.scheme", "http"),
        KeyValue::new("network.protocol.version", facts.version),
    ]);
    let failure = failed.then(|| record.status.to_string().into());
    let disconnect = |phase, cause| Disconnect {
        phase,
        cause,
        elapsed: record.elapsed,
        body_bytes_sent: record.body_bytes_sent,
        unacked_bytes: facts.unacked_bytes,
    };
    write_outcome(
        &span,
        attributes,
        facts.client,
        record.end,
        failure,
        disconnect,
        facts.at,
    );
    end(span)
}

/// What the end of every span writes after its own attributes —
/// `client.address`, then the outcome: a break's Error status and
/// `client.disconnect` event (at `at`, if not now), a failure's Error status
/// and `error.type`, or nothing more. The one writer for requests and calls.
fn write_outcome(
    span: &SpanRef<'_>,
    mut attributes: Vec<KeyValue>,
    client: Option<Arc<str>>,
    end: End,
    failure: Option<opentelemetry::Value>,
    disconnect: impl FnOnce(Phase, Cause) -> Disconnect,
    at: Option<SystemTime>,
) {
    if let Some(client) = client {
        attributes.push(KeyValue::new("client.address", StringValue::from(client)));
    }
    match (end, failure) {
        (End::Disconnect { phase, cause }, _) => {
            attributes.push(KeyValue::new("error.type", "client_disconnect"));
            span.set_attributes(attributes);
            span.set_status(Status::error("client disconnected"));
            let event = disconnect(phase, cause).attributes();
            match at {
                Some(at) => span.add_event_with_timestamp(DISCONNECT_EVENT, at, event),
                None => span.add_event(DISCONNECT_EVENT, event),
            }
        }
        (_, Some(error_type)) => {
            attributes.push(KeyValue::new("error.type", error_type));
            span.set_attributes(attributes);
            span.set_status(Status::error(""));
        }
        _ => span.set_attributes(attributes),
    }
}

/// The `client.disconnect` event of a broken request or call.
struct Disconnect {
    phase: Phase,
    cause: Cause,
    elapsed: Duration,
    body_bytes_sent: u64,
    unacked_bytes: Option<u64>,
}

impl Disconnect {
    fn attributes(&self) -> Vec<KeyValue> {
        let mut event = vec![
            KeyValue::new("disconnect.phase", self.phase.as_str()),
            KeyValue::new("disconnect.cause", self.cause.as_str()),
            KeyValue::new("disconnect.elapsed_s", self.elapsed.as_secs_f64()),
            KeyValue::new(
                "http.response.body.bytes_sent",
                i64::try_from(self.body_bytes_sent).unwrap_or(i64::MAX),
            ),
        ];
        if let Some(bytes) = self.unacked_bytes {
            event.push(KeyValue::new(
                "disconnect.unacked_bytes",
                i64::try_from(bytes).unwrap_or(i64::MAX),
            ));
        }
        event
    }
}

/// The statuses the OpenTelemetry RPC conventions call a server's error:
/// `CANCELLED`, `INVALID_ARGUMENT`, `NOT_FOUND` and the like are the
/// client's doing or an answer, not the server failing.
fn is_server_error(status: GrpcStatus) -> bool {
    matches!(
        status.as_str(),
        "UNKNOWN"
            | "DEADLINE_EXCEEDED"
            | "UNIMPLEMENTED"
            | "INTERNAL"
            | "UNAVAILABLE"
            | "DATA_LOSS"
    )
}

/// Exports the server span of a request another source saw whole —
/// `clientgone watch` learns of each request from kernel events — with the
/// same name, attributes and `client.disconnect` event as the layer's spans,
/// started at `started` and ended at `started + record.elapsed`;
/// `protocol_version` is `network.protocol.version` (`"1.0"`, `"1.1"`). With the
/// exporter's tail sampling, a broken request's span is kept whatever the ratio.
///
/// ```
/// use clientgone::{Cause, End, Phase, Record, export_request_span};
/// use opentelemetry::trace::noop::NoopTracer;
/// use std::time::{Duration, SystemTime};
///
/// let record = Record {
///     method: "GET",
///     route: "/users/{id}",
///     status: 499,
///     end: End::Disconnect { phase: Phase::Handler, cause: Cause::Closed },
///     elapsed: Duration::from_secs(1),
///     body_bytes_sent: 0,
/// };
/// export_request_span(&NoopTracer::new(), &record, "/users/7", "1.1", SystemTime::now(), Some(0));
/// ```
pub fn export_request_span<T>(
    tracer: &T,
    record: &Record<'_>,
    path: &str,
    protocol_version: &'static str,
    started: SystemTime,
    unacked_bytes: Option<u64>,
) where
    T: Tracer,
    T::Span: Send + Sync + 'static,
{
    let builder = SpanBuilder::from_name(format!("{} {}", record.method, record.route))
        .with_kind(SpanKind::Server)
        .with_start_time(started);
    let context = Context::new().with_span(tracer.build(builder));
    let route: Arc<str> = Arc::from(record.route);
    let facts = SpanEnd {
        path,
        version: protocol_version,
        client: None,
        unacked_bytes,
        at: Some(started + record.elapsed),
    };
    write_end(context.span(), &route, record, facts);
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

// The W3C names the propagator asks for on every request, built once: a
// `&str` key is parsed into a header name again at each lookup.
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        let value = match key {
            "traceparent" => self.0.get(TRACEPARENT),
            "tracestate" => self.0.get(TRACESTATE),
            other => self.0.get(other),
        };
        value.and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}
