//! [`KeepBreaks`]: tail sampling in-process. Every span is recorded; at span end
//! the ones that matter — a `client.disconnect` event or an Error status — are
//! always kept, the others by trace id at the configured ratio, so a trace is
//! kept or dropped whole.
//!
//! The trade-off: spans are built for every request, even those later left out.
//! That is the price of knowing, at the end, whether the client broke off.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry::trace::{Status, TraceId};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Span, SpanData, SpanProcessor};

use super::stats::OtlpStats;

/// Keeps every broken or failed span, and ordinary ones at `ratio`.
#[derive(Debug)]
pub(crate) struct KeepBreaks<P> {
    pub(crate) inner: P,
    pub(crate) ratio: f64,
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

pub(crate) fn must_keep(span: &SpanData) -> bool {
    matches!(span.status, Status::Error { .. })
        || span
            .events
            .iter()
            .any(|e| e.name == clientgone::DISCONNECT_EVENT)
}

impl<P: SpanProcessor> SpanProcessor for KeepBreaks<P> {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if !must_keep(&span) && !ratio_keeps(span.span_context.trace_id(), self.ratio) {
            self.stats.sampled_out.inc();
            return;
        }
        // Admit no more than the batch processor's queue holds, so it never
        // drops silently and our count is exact.
        if self.stats.admit(self.queue_cap) {
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
