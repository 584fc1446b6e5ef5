//! Tail sampling in-process, in two halves. [`RatioOrRecord`] decides at a
//! span's start — as the caller decided if the request came with a
//! `traceparent`, else by trace id at the configured ratio (so a trace is
//! sampled or not as a whole) — and *records* the spans it does not sample
//! instead of dropping them. [`KeepBreaks`] decides at the end: sampled spans, and the
//! ones that matter — a `client.disconnect` event or an Error status — are kept,
//! the others dropped.
//!
//! The trade-off: a span is started for every request, even one later left
//! out. That is the price of knowing, at the end, whether the client broke off;
//! clientgone's layer keeps it small by writing attributes only onto spans that
//! will be kept.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::trace::{Link, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceId};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    IdGenerator, RandomIdGenerator, SamplingDecision, SamplingResult, ShouldSample, Span, SpanData,
    SpanProcessor,
};

use super::stats::OtlpStats;

/// Samples by trace id at `ratio` — or, with `follow_parent`, as the parent
/// did when there is one (the SDK's default, parent-based). Spans not sampled
/// are recorded rather than dropped, so [`KeepBreaks`] can still keep the ones
/// that break.
#[derive(Clone, Debug)]
pub(crate) struct RatioOrRecord {
    pub(crate) ratio: f64,
    pub(crate) follow_parent: bool,
}

impl RatioOrRecord {
    /// The decision, by the parent (when followed) and the trace id alone.
    fn decide(&self, parent: Option<&SpanContext>, trace_id: TraceId) -> bool {
        match parent {
            Some(parent) if self.follow_parent => parent.is_sampled(),
            _ => ratio_keeps(trace_id, self.ratio),
        }
    }
}

/// The same decision at a request's start, for clientgone's layer to defer
/// building the span (`clientgone::DeferredTracer`); a span it never builds
/// is counted sampled out, as [`KeepBreaks`] counts the ones it drops.
#[derive(Debug)]
pub(crate) struct AtStart {
    pub(crate) sampler: RatioOrRecord,
    pub(crate) stats: Arc<OtlpStats>,
}

impl clientgone::StartSampler for AtStart {
    fn sampled(&self, parent: &Context, trace_id: TraceId) -> bool {
        let span = parent.span();
        let parent = Some(span.span_context()).filter(|sc| sc.is_valid());
        self.sampler.decide(parent, trace_id)
    }

    fn sampled_out(&self) {
        self.stats.sampled_out.inc();
    }
}

/// The provider's ids: random, except for a span clientgone's layer builds
/// at its request's end, which takes the ids its children already carry.
#[derive(Debug, Default)]
pub(crate) struct PresetIds(RandomIdGenerator);

impl IdGenerator for PresetIds {
    fn new_trace_id(&self) -> TraceId {
        clientgone::DeferredTracer::preset_trace_id().unwrap_or_else(|| self.0.new_trace_id())
    }

    fn new_span_id(&self) -> SpanId {
        clientgone::DeferredTracer::preset_span_id().unwrap_or_else(|| self.0.new_span_id())
    }
}

impl ShouldSample for RatioOrRecord {
    fn should_sample(
        &self,
        parent_context: Option<&Context>,
        trace_id: TraceId,
        _name: &str,
        _span_kind: &SpanKind,
        _attributes: &[KeyValue],
        _links: &[Link],
    ) -> SamplingResult {
        let parent = parent_context
            .map(|cx| cx.span().span_context().clone())
            .filter(SpanContext::is_valid);
        let sampled = self.decide(parent.as_ref(), trace_id);
        let decision = if sampled {
            SamplingDecision::RecordAndSample
        } else {
            SamplingDecision::RecordOnly
        };
        SamplingResult {
            decision,
            attributes: Vec::new(),
            trace_state: parent.map(|p| p.trace_state().clone()).unwrap_or_default(),
        }
    }
}

/// Keeps sampled spans and every broken or failed one; drops the rest.
#[derive(Debug)]
pub(crate) struct KeepBreaks<P> {
    pub(crate) inner: P,
    pub(crate) queue_cap: usize,
    pub(crate) stats: Arc<OtlpStats>,
}

/// The same decision as the SDK's `TraceIdRatioBased(ratio)` for this trace.
pub(crate) fn ratio_keeps(trace_id: TraceId, ratio: f64) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    let bound = (ratio.max(0.0) * (1u64 << 63) as f64) as u64;
    let bytes = trace_id.to_bytes();
    let mut low = [0u8; 8];
    low.copy_from_slice(&bytes[8..16]);
    (u64::from_be_bytes(low) >> 1) < bound
}

/// A request's server span that broke or failed. Only server spans: an error
/// in a handler's own span under an unsampled, successful request would arrive
/// without its parent.
pub(crate) fn must_keep(span: &SpanData) -> bool {
    span.span_kind == SpanKind::Server
        && (matches!(span.status, Status::Error { .. })
            || span
                .events
                .iter()
                .any(|e| e.name == clientgone::DISCONNECT_EVENT))
}

/// Share of the queue that ordinary spans may fill: the rest is kept for
/// breaks and errors, so a flood of sampled spans (a high ratio, or callers
/// whose `traceparent` says "sampled") cannot crowd them out.
const ORDINARY_SHARE: f64 = 0.75;

impl<P: SpanProcessor> SpanProcessor for KeepBreaks<P> {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, mut span: SpanData) {
        if !span.span_context.is_sampled() {
            if !must_keep(&span) {
                self.stats.sampled_out.inc();
                return;
            }
            // Exported after all: say so in its flags, as a collector expects.
            let sc = &span.span_context;
            span.span_context = SpanContext::new(
                sc.trace_id(),
                sc.span_id(),
                sc.trace_flags().with_sampled(true),
                sc.is_remote(),
                sc.trace_state().clone(),
            );
        }
        // Admit no more than the batch processor's queue holds, so it never
        // drops silently and our count is exact.
        let limit = if must_keep(&span) {
            self.queue_cap
        } else {
            ((self.queue_cap as f64 * ORDINARY_SHARE) as usize).max(1)
        };
        if self.stats.admit(limit) {
            self.inner.on_end(span);
        } else {
            self.stats.queue_full();
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{TraceFlags, TraceState};

    fn decide(sampler: &RatioOrRecord, parent_sampled: Option<bool>) -> SamplingDecision {
        let trace_id = TraceId::from_bytes([0x42; 16]);
        let parent = parent_sampled.map(|sampled| {
            Context::new().with_remote_span_context(SpanContext::new(
                trace_id,
                opentelemetry::trace::SpanId::from_bytes([7; 8]),
                if sampled {
                    TraceFlags::SAMPLED
                } else {
                    TraceFlags::default()
                },
                true,
                TraceState::default(),
            ))
        });
        sampler
            .should_sample(
                parent.as_ref(),
                trace_id,
                "HTTP",
                &SpanKind::Server,
                &[],
                &[],
            )
            .decision
    }

    #[test]
    fn parents_are_followed_only_when_asked_and_nothing_is_ever_dropped() {
        use SamplingDecision::{RecordAndSample, RecordOnly};
        let parent_based = RatioOrRecord {
            ratio: 0.0,
            follow_parent: true,
        };
        assert_eq!(decide(&parent_based, Some(true)), RecordAndSample);
        assert_eq!(decide(&parent_based, Some(false)), RecordOnly);
        assert_eq!(decide(&parent_based, None), RecordOnly, "a root: the ratio");
        let ratio_only = RatioOrRecord {
            ratio: 0.0,
            follow_parent: false,
        };
        assert_eq!(decide(&ratio_only, Some(true)), RecordOnly);
        let all = RatioOrRecord {
            ratio: 1.0,
            follow_parent: false,
        };
        assert_eq!(decide(&all, Some(false)), RecordAndSample);
    }

    #[test]
    fn ratio_is_by_trace_id_and_matches_the_bounds() {
        let ids: Vec<TraceId> = (1..=1000u128)
            .map(|i| {
                TraceId::from_bytes(
                    (i.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835)).to_be_bytes(),
                )
            })
            .collect();
        assert!(ids.iter().all(|id| ratio_keeps(*id, 1.0)));
        assert!(ids.iter().all(|id| !ratio_keeps(*id, 0.0)));
        let kept = ids.iter().filter(|id| ratio_keeps(**id, 0.5)).count();
        assert!((400..=600).contains(&kept), "kept {kept} of 1000 at 0.5");
        // The same trace id always gets the same answer.
        assert!(
            ids.iter()
                .all(|id| ratio_keeps(*id, 0.5) == ratio_keeps(*id, 0.5))
        );
    }
}
