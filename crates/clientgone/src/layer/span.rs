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
//!
//! With a [`DeferredTracer`] (clientgone-exporter's pipeline gives one) not
//! even the span is built at the start: the layer draws the span's ids, asks
//! the pipeline's sampler, and makes that span context current — children and
//! `traceparent` headers see exactly what they would see of a real span — and
//! builds the SDK span at the end, with those ids and the start time, only if
//! it will be exported. A request that is neither sampled, broken nor failed
//! costs two random numbers and a clock read.

use std::cell::Cell;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderName, Request, Version};
use opentelemetry::global::{BoxedSpan, BoxedTracer};
use opentelemetry::propagation::Extractor;
use opentelemetry::trace::{
    SpanBuilder, SpanContext, SpanId, SpanKind, SpanRef, Status, TraceContextExt, TraceFlags,
    TraceId, Tracer,
};
use opentelemetry::{Context, KeyValue, StringValue};

use crate::classify::{Cause, Phase};
use crate::grpc::GrpcStatus;
use crate::record::{CallRecord, End, Record};

/// The name of the event a broken request's span gets.
pub const DISCONNECT_EVENT: &str = "client.disconnect";

/// The tracer a [`DisconnectLayer`](super::DisconnectLayer) builds spans with.
pub(crate) type SharedTracer = Arc<Tracing>;

/// How a layer traces.
pub(crate) enum Tracing {
    /// Any tracer: each request's span is built at its start (its sampler,
    /// whatever it is, decides then).
    Eager(BoxedTracer),
    /// Spans built at the end, only when they will be exported.
    Deferred(DeferredTracer),
}

impl std::fmt::Debug for Tracing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Tracing::Eager(_) => "Eager",
            Tracing::Deferred(_) => "Deferred",
        })
    }
}

impl Tracing {
    /// `tracer` as the layer uses it: a [`DeferredTracer`] is recognised,
    /// anything else is boxed.
    pub(crate) fn new<T>(tracer: T) -> Tracing
    where
        T: Tracer + Send + Sync + 'static,
        T::Span: Send + Sync + 'static,
    {
        let mut slot = Some(tracer);
        let deferred = (&mut slot as &mut dyn std::any::Any)
            .downcast_mut::<Option<DeferredTracer>>()
            .and_then(Option::take);
        match (deferred, slot) {
            (Some(deferred), _) => Tracing::Deferred(deferred),
            (None, Some(tracer)) => Tracing::Eager(BoxedTracer::new(Box::new(tracer))),
            // The slot is emptied only when it held a DeferredTracer.
            (None, None) => Tracing::Eager(BoxedTracer::new(Box::new(
                opentelemetry::trace::noop::NoopTracer::new(),
            ))),
        }
    }
}

/// Decides, at a request's start, whether its span is sampled — the same
/// decision the tracer's own sampler makes when the span is built: the
/// other half of a [`DeferredTracer`].
pub trait StartSampler: Send + Sync + 'static {
    /// Whether the span of a request whose caller's context is `parent`
    /// (empty for a root) and whose trace is `trace_id` is sampled.
    fn sampled(&self, parent: &Context, trace_id: TraceId) -> bool;

    /// A span was never built: not sampled, and its request neither broke
    /// nor failed (for the pipeline's count of spans sampled out).
    fn sampled_out(&self) {}
}

/// A tracer whose request spans [`DisconnectLayer`](super::DisconnectLayer)
/// builds only at the request's end, and only when they will be exported
/// (sampled, broken or failed): clientgone-exporter's pipeline hands one out
/// (`OtlpPipeline::tracer`). Used as a plain [`Tracer`] it builds spans as the
/// tracer it wraps does.
///
/// Its contract with the tracer it wraps, which the pipeline keeps: the
/// global propagator is W3C trace context (a request without `traceparent` is
/// taken for a root without asking it), `sampler` decides as that tracer's
/// sampler does (by the parent and the trace id alone), and that tracer's
/// provider takes its ids from
/// [`DeferredTracer::preset_trace_id`] and [`DeferredTracer::preset_span_id`]
/// when they are set, so the span built at the end has the ids its children
/// already carry.
///
/// ```
/// use clientgone::{DeferredTracer, StartSampler};
/// use opentelemetry::Context;
/// use opentelemetry::trace::TraceId;
///
/// struct Never;
/// impl StartSampler for Never {
///     fn sampled(&self, _: &Context, _: TraceId) -> bool {
///         false
///     }
/// }
/// let tracer = DeferredTracer::new(opentelemetry::trace::noop::NoopTracer::new(), Never);
/// assert_eq!(DeferredTracer::preset_span_id(), None);
/// # drop(tracer);
/// ```
#[derive(Clone)]
pub struct DeferredTracer {
    tracer: Arc<BoxedTracer>,
    sampler: Arc<dyn StartSampler>,
}

impl std::fmt::Debug for DeferredTracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeferredTracer").finish_non_exhaustive()
    }
}

thread_local! {
    /// The ids of the span being built at its request's end, on this thread,
    /// for the provider's id generator to hand out.
    static PRESET: Cell<(Option<TraceId>, Option<SpanId>)> = const { Cell::new((None, None)) };
}

impl DeferredTracer {
    /// `tracer`, whose sampler decides as `sampler` does.
    pub fn new<T>(tracer: T, sampler: impl StartSampler) -> Self
    where
        T: Tracer + Send + Sync + 'static,
        T::Span: Send + Sync + 'static,
    {
        DeferredTracer {
            tracer: Arc::new(BoxedTracer::new(Box::new(tracer))),
            sampler: Arc::new(sampler),
        }
    }

    /// For the provider's id generator: the trace id of the span being built
    /// on this thread at its request's end (taken: asked once).
    pub fn preset_trace_id() -> Option<TraceId> {
        PRESET.with(|p| {
            let (trace, span) = p.get();
            p.set((None, span));
            trace
        })
    }

    /// For the provider's id generator: the span id of the span being built
    /// on this thread at its request's end (taken: asked once).
    pub fn preset_span_id() -> Option<SpanId> {
        PRESET.with(|p| {
            let (trace, span) = p.get();
            p.set((trace, None));
            span
        })
    }
}

impl DeferredTracer {
    /// [`export_request_span`], deciding first: a request that was not
    /// sampled and neither broke nor failed builds no span at all.
    pub fn export_request_span(
        &self,
        record: &Record<'_>,
        path: &str,
        protocol_version: &'static str,
        started: SystemTime,
        unacked_bytes: Option<u64>,
    ) {
        let trace_id = TraceId::from_bytes(random_nonzero(|| fastrand::u128(..).to_be_bytes()));
        if !must_keep(record) && !self.sampler.sampled(&Context::new(), trace_id) {
            self.sampler.sampled_out();
            return;
        }
        // The tracer's sampler then sees the trace id decided on.
        PRESET.with(|p| p.set((Some(trace_id), None)));
        export_request_span(self, record, path, protocol_version, started, unacked_bytes);
        PRESET.with(|p| p.set((None, None)));
    }

    /// [`export_call_span`], deciding first: a call that was not sampled
    /// and neither broke nor failed builds no span at all.
    pub fn export_call_span(
        &self,
        record: &CallRecord<'_>,
        started: SystemTime,
        unacked_bytes: Option<u64>,
    ) {
        let trace_id = TraceId::from_bytes(random_nonzero(|| fastrand::u128(..).to_be_bytes()));
        if !call_must_keep(record) && !self.sampler.sampled(&Context::new(), trace_id) {
            self.sampler.sampled_out();
            return;
        }
        PRESET.with(|p| p.set((Some(trace_id), None)));
        export_call_span(self, record, started, unacked_bytes);
        PRESET.with(|p| p.set((None, None)));
    }
}

impl Tracer for DeferredTracer {
    type Span = BoxedSpan;

    fn build_with_context(&self, builder: SpanBuilder, parent_cx: &Context) -> BoxedSpan {
        self.tracer.build_with_context(builder, parent_cx)
    }
}

/// A request span not built yet: what building it at the end takes.
struct Pending {
    tracer: SharedTracer,
    /// The caller's context (empty for a root).
    parent: Context,
    started: SystemTime,
}

impl Pending {
    /// Builds the span, ended, as it would have been built at the start —
    /// same ids, same parent, same start time — with its end's attributes,
    /// and event in the builder (moved in whole, not added one by one) and
    /// its status, and ends it now.
    fn build_ended(self, name: String, ids: &SpanContext, ending: Ending) {
        use opentelemetry::trace::Span as _;
        let Tracing::Deferred(deferred) = &*self.tracer else {
            return;
        };
        let now = SystemTime::now();
        let mut builder = SpanBuilder::from_name(name)
            .with_kind(SpanKind::Server)
            .with_start_time(self.started)
            .with_attributes(ending.attributes);
        if let Some(event) = ending.event {
            builder = builder.with_events(vec![opentelemetry::trace::Event::new(
                DISCONNECT_EVENT,
                now,
                event,
                0,
            )]);
        }
        PRESET.with(|p| p.set((Some(ids.trace_id()), Some(ids.span_id()))));
        let mut span = deferred.build_with_context(builder, &self.parent);
        PRESET.with(|p| p.set((None, None)));
        if ending.status != Status::Unset {
            span.set_status(ending.status);
        }
        span.end_with_timestamp(now);
    }
}

/// A new random id, never all zeros (which means "none").
fn random_nonzero<const N: usize>(draw: impl Fn() -> [u8; N]) -> [u8; N] {
    loop {
        let id = draw();
        if id.iter().any(|b| *b != 0) {
            return id;
        }
    }
}

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

/// The OTel context holding one request's server span (or, deferred, its
/// span context), and what its attributes will be made of.
pub(crate) struct RequestSpan {
    context: Context,
    facts: RequestFacts,
    /// Set when the span is to be built at the end.
    pending: Option<Pending>,
}

impl std::fmt::Debug for RequestSpan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestSpan")
            .field("facts", &self.facts)
            .field("deferred", &self.pending.is_some())
            .finish_non_exhaustive()
    }
}

impl RequestSpan {
    /// Starts the span of one request, as a child of the caller's trace if the
    /// request carries a W3C `traceparent` (through the global propagator,
    /// which the exporter installs).
    pub(crate) fn start<B>(
        tracer: &SharedTracer,
        name: &str,
        req: &Request<B>,
        client: Option<Arc<str>>,
    ) -> Self {
        // The pipeline that hands out a DeferredTracer propagates W3C trace
        // context: a request without `traceparent` is a root, with no need to
        // go through the global propagator (a fifth of what a request span
        // that is never built costs).
        let parent = if matches!(**tracer, Tracing::Deferred(_))
            && !req.headers().contains_key(TRACEPARENT)
        {
            Context::new()
        } else {
            opentelemetry::global::get_text_map_propagator(|propagator| {
                propagator.extract(&HeaderExtractor(req.headers()))
            })
        };
        let facts = RequestFacts {
            path: req.uri().path_and_query().cloned(),
            version: protocol_version(req.version()),
            client,
        };
        match &**tracer {
            Tracing::Eager(eager) => {
                // Named at the start, so a sampler that decides by name (say,
                // to leave out health checks) sees the real one.
                let builder = SpanBuilder::from_name(name.to_owned()).with_kind(SpanKind::Server);
                let span = eager.build_with_context(builder, &parent);
                RequestSpan {
                    context: parent.with_span(span),
                    facts,
                    pending: None,
                }
            }
            Tracing::Deferred(deferred) => {
                let caller = parent.span().span_context().clone();
                let trace_id = if caller.is_valid() {
                    caller.trace_id()
                } else {
                    TraceId::from_bytes(random_nonzero(|| fastrand::u128(..).to_be_bytes()))
                };
                let span_id =
                    SpanId::from_bytes(random_nonzero(|| fastrand::u64(..).to_be_bytes()));
                let sampled = deferred.sampler.sampled(&parent, trace_id);
                let flags = if caller.is_valid() {
                    caller.trace_flags()
                } else {
                    TraceFlags::default()
                };
                let ids = SpanContext::new(
                    trace_id,
                    span_id,
                    flags.with_sampled(sampled),
                    false,
                    caller.trace_state().clone(),
                );
                RequestSpan {
                    context: parent.with_remote_span_context(ids),
                    facts,
                    pending: Some(Pending {
                        tracer: Arc::clone(tracer),
                        parent,
                        started: SystemTime::now(),
                    }),
                }
            }
        }
    }

    /// The context to make current while the request's code runs.
    pub(crate) fn context(&self) -> &Context {
        &self.context
    }

    /// What the span's end is to do: a span neither sampled, broken
    /// (`must_keep`) nor failed is ended now, or — deferred — never built
    /// (counted as sampled out); otherwise its end is written onto the span
    /// built at the start, or the deferred span is built.
    fn at_end(&mut self, must_keep: bool) -> AtEnd {
        let ids = self.context.span().span_context().clone();
        let keep = must_keep || ids.is_sampled();
        match self.pending.take() {
            None if keep => AtEnd::Write,
            None => {
                self.context.span().end();
                AtEnd::Nothing
            }
            Some(pending) if keep => AtEnd::Build(pending, ids),
            Some(pending) => {
                if let Tracing::Deferred(deferred) = &*pending.tracer {
                    deferred.sampler.sampled_out();
                }
                AtEnd::Nothing
            }
        }
    }

    /// Writes the end of a gRPC call onto the span and ends it.
    pub(crate) fn finish_call(mut self, record: &CallRecord<'_>, unacked_bytes: Option<u64>) {
        let at_end = self.at_end(call_must_keep(record));
        if matches!(at_end, AtEnd::Nothing) {
            return;
        }
        let ending = call_ending(
            record,
            self.facts.version,
            self.facts.client.take(),
            unacked_bytes,
        );
        self.end_with(at_end, || record.method.to_owned(), ending);
    }

    /// Writes the end of the request onto the span and ends it; `name` is
    /// the span's (`{method} {route}`), for a span built only now.
    pub(crate) fn finish(
        mut self,
        route: &Arc<str>,
        name: &str,
        record: &Record<'_>,
        unacked_bytes: Option<u64>,
    ) {
        let at_end = self.at_end(must_keep(record));
        if matches!(at_end, AtEnd::Nothing) {
            return;
        }
        let path = self.facts.path.as_ref().map_or("/", PathAndQuery::path);
        let facts = SpanEnd {
            path,
            version: self.facts.version,
            client: self.facts.client.take(),
            unacked_bytes,
            at: None,
        };
        let ending = request_ending(route, record, facts);
        self.end_with(at_end, || name.to_owned(), ending);
    }

    /// Ends the span with `ending`: written onto the one built at the start,
    /// or into the deferred one, built now with `name`.
    fn end_with(&self, at_end: AtEnd, name: impl FnOnce() -> String, ending: Ending) {
        match at_end {
            AtEnd::Build(pending, ids) => pending.build_ended(name(), &ids, ending),
            AtEnd::Write => {
                let span = self.context.span();
                ending.write(&span, None);
                span.end();
            }
            AtEnd::Nothing => {}
        }
    }
}

/// What a request span's end is to do ([`RequestSpan::at_end`]).
enum AtEnd {
    /// Nothing more: ended already, or never to be built.
    Nothing,
    /// Write the end onto the span built at the start.
    Write,
    /// Build the deferred span, with these ids.
    Build(Pending, SpanContext),
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

/// The end of [`export_request_span`]'s span, built before it: written
/// (with the layer's [`request_ending`]) only if it will be exported, and
/// ended at `facts.at`.
fn write_end(span: SpanRef<'_>, route: &Arc<str>, record: &Record<'_>, facts: SpanEnd<'_>) {
    let at = facts.at;
    let end = |span: SpanRef<'_>| match at {
        Some(at) => span.end_with_timestamp(at),
        None => span.end(),
    };
    if !span.span_context().is_sampled() && !must_keep(record) {
        // Recorded only in case it broke; it did not, and the pipeline
        // will drop it: no attributes to build.
        return end(span);
    }
    request_ending(route, record, facts).write(&span, at);
    end(span)
}

/// Whether a call's span is exported whatever the sampler said: it broke,
/// or the server failed it.
fn call_must_keep(record: &CallRecord<'_>) -> bool {
    matches!(record.end, End::Disconnect { .. }) || is_server_error(record.status)
}

/// The end of a call's span: its attributes, status and event.
fn call_ending(
    record: &CallRecord<'_>,
    version: &'static str,
    client: Option<Arc<str>>,
    unacked_bytes: Option<u64>,
) -> Ending {
    let attributes = vec![
        KeyValue::new("rpc.system.name", "grpc"),
        KeyValue::new("rpc.method", record.method.to_owned()),
        KeyValue::new("rpc.response.status_code", record.status.as_str()),
        KeyValue::new("network.protocol.version", version),
    ];
    let failure = is_server_error(record.status).then(|| record.status.as_str().into());
    let disconnect = |phase, cause| Disconnect {
        phase,
        cause,
        elapsed: record.elapsed,
        body_bytes_sent: record.body_bytes_sent,
        unacked_bytes,
    };
    Ending::new(attributes, client, record.end, failure, disconnect)
}

/// Whether a request's span is exported whatever the sampler said: it broke
/// or failed.
fn must_keep(record: &Record<'_>) -> bool {
    matches!(record.end, End::Disconnect { .. }) || record.status >= 500
}

/// The end of a request's span: its attributes, status and event.
fn request_ending(route: &Arc<str>, record: &Record<'_>, facts: SpanEnd<'_>) -> Ending {
    let mut attributes = Vec::with_capacity(9);
    attributes.extend([
        KeyValue::new("http.request.method", record.method),
        KeyValue::new("http.route", StringValue::from(Arc::clone(route))),
        KeyValue::new("http.response.status_code", i64::from(record.status)),
        KeyValue::new("url.path", facts.path.to_owned()),
        KeyValue::new("url.scheme", "http"),
        KeyValue::new("network.protocol.version", facts.version),
    ]);
    let failure = (record.status >= 500).then(|| record.status.to_string().into());
    let disconnect = |phase, cause| Disconnect {
        phase,
        cause,
        elapsed: record.elapsed,
        body_bytes_sent: record.body_bytes_sent,
        unacked_bytes: facts.unacked_bytes,
    };
    Ending::new(attributes, facts.client, record.end, failure, disconnect)
}

/// What the end of every span writes: its own attributes, `client.address`,
/// then the outcome — a break's Error status and `client.disconnect` event,
/// a failure's Error status and `error.type`, or nothing more. The one
/// description for requests and calls, written onto a span (`write`) or
/// into the builder of one built at its end (`Pending::build_ended`).
struct Ending {
    attributes: Vec<KeyValue>,
    status: Status,
    event: Option<Vec<KeyValue>>,
}

impl Ending {
    fn new(
        mut attributes: Vec<KeyValue>,
        client: Option<Arc<str>>,
        end: End,
        failure: Option<opentelemetry::Value>,
        disconnect: impl FnOnce(Phase, Cause) -> Disconnect,
    ) -> Ending {
        if let Some(client) = client {
            attributes.push(KeyValue::new("client.address", StringValue::from(client)));
        }
        match (end, failure) {
            (End::Disconnect { phase, cause }, _) => {
                attributes.push(KeyValue::new("error.type", "client_disconnect"));
                Ending {
                    attributes,
                    status: Status::error("client disconnected"),
                    event: Some(disconnect(phase, cause).attributes()),
                }
            }
            (_, Some(error_type)) => {
                attributes.push(KeyValue::new("error.type", error_type));
                Ending {
                    attributes,
                    status: Status::error(""),
                    event: None,
                }
            }
            _ => Ending {
                attributes,
                status: Status::Unset,
                event: None,
            },
        }
    }

    /// Onto a span built at the start; the event at `at`, if not now.
    fn write(self, span: &SpanRef<'_>, at: Option<SystemTime>) {
        span.set_attributes(self.attributes);
        if self.status != Status::Unset {
            span.set_status(self.status);
        }
        if let Some(event) = self.event {
            match at {
                Some(at) => span.add_event_with_timestamp(DISCONNECT_EVENT, at, event),
                None => span.add_event(DISCONNECT_EVENT, event),
            }
        }
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

/// Exports the server span of a gRPC call another source saw whole —
/// `clientgone watch` learns of each call from kernel events — with the same
/// name (the method), attributes and `client.disconnect` event as the
/// layer's call spans, started at `started` and ended at
/// `started + record.elapsed`. With the exporter's tail sampling, a broken
/// call's span is kept whatever the ratio.
///
/// ```
/// use clientgone::{CallRecord, Cause, End, GrpcStatus, Phase, RpcType, export_call_span};
/// use opentelemetry::trace::noop::NoopTracer;
/// use std::time::{Duration, SystemTime};
///
/// let record = CallRecord {
///     method: "shop.v1.Shop/Checkout",
///     rpc_type: RpcType::Unary,
///     status: GrpcStatus::CANCELLED,
///     end: End::Disconnect { phase: Phase::Handler, cause: Cause::StreamReset },
///     elapsed: Duration::from_millis(250),
///     body_bytes_sent: 0,
/// };
/// export_call_span(&NoopTracer::new(), &record, SystemTime::now(), None);
/// ```
pub fn export_call_span<T>(
    tracer: &T,
    record: &CallRecord<'_>,
    started: SystemTime,
    unacked_bytes: Option<u64>,
) where
    T: Tracer,
    T::Span: Send + Sync + 'static,
{
    let builder = SpanBuilder::from_name(record.method.to_owned())
        .with_kind(SpanKind::Server)
        .with_start_time(started);
    let context = Context::new().with_span(tracer.build(builder));
    let span = context.span();
    let at = started + record.elapsed;
    if span.span_context().is_sampled() || call_must_keep(record) {
        call_ending(record, "2", None, unacked_bytes).write(&span, Some(at));
    }
    span.end_with_timestamp(at);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::{Cause, Phase};
    use opentelemetry::trace::noop::NoopSpan;
    use std::sync::Mutex;

    /// A span asked for: its name and the ids the layer preset for it.
    type Built = (String, Option<TraceId>, Option<SpanId>);

    /// A tracer that records each span it is asked to build, and the ids
    /// the layer preset for it (what the pipeline's id generator takes).
    #[derive(Clone, Default)]
    struct Recording(Arc<Mutex<Vec<Built>>>);

    impl Tracer for Recording {
        type Span = NoopSpan;

        fn build_with_context(&self, builder: SpanBuilder, _: &Context) -> NoopSpan {
            let ids = (
                builder.name.to_string(),
                DeferredTracer::preset_trace_id(),
                DeferredTracer::preset_span_id(),
            );
            self.0.lock().unwrap().push(ids);
            NoopSpan::DEFAULT
        }
    }

    struct Fixed(bool);

    impl StartSampler for Fixed {
        fn sampled(&self, _: &Context, _: TraceId) -> bool {
            self.0
        }
    }

    fn record(end: End, status: u16) -> Record<'static> {
        Record {
            method: "GET",
            route: "/items/{id}",
            status,
            end,
            elapsed: Duration::from_millis(3),
            body_bytes_sent: 0,
        }
    }

    /// One request through a deferred tracer: the ids its code saw, and what
    /// the tracer was asked to build.
    fn one(sampled: bool, end: End, status: u16) -> (SpanContext, Recording) {
        let recording = Recording::default();
        let tracer: SharedTracer = Arc::new(Tracing::new(DeferredTracer::new(
            recording.clone(),
            Fixed(sampled),
        )));
        let req = Request::get("/items/7").body(()).unwrap();
        let span = RequestSpan::start(&tracer, "GET /items/{id}", &req, None);
        let seen = span.context().span().span_context().clone();
        assert!(
            recording.0.lock().unwrap().is_empty(),
            "nothing built at the start"
        );
        let route: Arc<str> = Arc::from("/items/{id}");
        span.finish(&route, "GET /items/{id}", &record(end, status), None);
        (seen, recording)
    }

    #[test]
    fn a_deferred_span_is_built_at_the_end_only_if_exported_with_the_ids_its_code_saw() {
        // Not sampled, completed: never built.
        let (seen, built) = one(false, End::Completed, 200);
        assert!(seen.is_valid() && !seen.is_sampled());
        assert!(built.0.lock().unwrap().is_empty());
        // Sampled, broken, failed: built once, with the same ids.
        let broken = End::Disconnect {
            phase: Phase::Handler,
            cause: Cause::Closed,
        };
        for (sampled, end, status) in [
            (true, End::Completed, 200),
            (false, broken, 499),
            (false, End::Completed, 503),
        ] {
            let (seen, built) = one(sampled, end, status);
            assert_eq!(seen.is_sampled(), sampled);
            let built = built.0.lock().unwrap().clone();
            assert_eq!(
                built,
                [(
                    "GET /items/{id}".to_owned(),
                    Some(seen.trace_id()),
                    Some(seen.span_id())
                )]
            );
        }
        // The presets never outlive the build.
        assert_eq!(DeferredTracer::preset_span_id(), None);
        assert_eq!(DeferredTracer::preset_trace_id(), None);
    }

    #[test]
    fn any_other_tracer_builds_at_the_start() {
        let recording = Recording::default();
        let tracer: SharedTracer = Arc::new(Tracing::new(recording.clone()));
        let req = Request::get("/").body(()).unwrap();
        let _span = RequestSpan::start(&tracer, "GET /", &req, None);
        assert_eq!(
            recording.0.lock().unwrap().clone(),
            [("GET /".to_owned(), None, None)]
        );
    }
}
