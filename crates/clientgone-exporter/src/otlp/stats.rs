//! [`OtlpStats`]: what happened to the spans, counted on `/metrics`, and logged
//! at most once a minute — never once per span.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

const LOG_EVERY: Duration = Duration::from_secs(60);

/// Span counters, registered in the user's registry.
#[derive(Debug)]
pub struct OtlpStats {
    /// Spans handed to the batch processor and not yet through an export.
    pub(crate) in_flight: AtomicUsize,
    pub(crate) dropped_queue_full: IntCounter,
    pub(crate) dropped_export_failed: IntCounter,
    pub(crate) exported: IntCounter,
    pub(crate) sampled_out: IntCounter,
    last_log: Mutex<Option<Instant>>,
}

impl OtlpStats {
    pub(crate) fn new(registry: &Registry) -> prometheus::Result<Self> {
        let dropped = IntCounterVec::new(
            Opts::new(
                "clientgone_otlp_spans_dropped_total",
                "Spans not delivered: the export queue was full, or the collector failed.",
            ),
            &["reason"],
        )?;
        let exported = IntCounter::new(
            "clientgone_otlp_spans_exported_total",
            "Spans the collector accepted.",
        )?;
        let sampled_out = IntCounter::new(
            "clientgone_otlp_spans_sampled_out_total",
            "Spans of ordinary requests left out by OTEL_TRACES_SAMPLER_ARG.",
        )?;
        registry.register(Box::new(dropped.clone()))?;
        registry.register(Box::new(exported.clone()))?;
        registry.register(Box::new(sampled_out.clone()))?;
        Ok(OtlpStats {
            in_flight: AtomicUsize::new(0),
            dropped_queue_full: dropped.with_label_values(&["queue_full"]),
            dropped_export_failed: dropped.with_label_values(&["export_failed"]),
            exported,
            sampled_out,
            last_log: Mutex::new(None),
        })
    }

    /// Spans dropped so far, for any reason.
    pub fn dropped(&self) -> u64 {
        self.dropped_queue_full.get() + self.dropped_export_failed.get()
    }

    /// Spans the collector accepted so far.
    pub fn exported(&self) -> u64 {
        self.exported.get()
    }

    /// Spans of ordinary requests left out by the sampling ratio so far.
    pub fn sampled_out(&self) -> u64 {
        self.sampled_out.get()
    }

    pub(crate) fn admit(&self, cap: usize) -> bool {
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < cap).then_some(n + 1)
            })
            .is_ok()
    }

    pub(crate) fn export_done(&self, spans: usize, result: Result<(), String>) {
        self.in_flight.fetch_sub(spans, Ordering::AcqRel);
        match result {
            Ok(()) => self.exported.inc_by(spans as u64),
            Err(error) => {
                self.dropped_export_failed.inc_by(spans as u64);
                self.warn_limited(|| format!("OTLP export failed: {error}"));
            }
        }
    }

    pub(crate) fn queue_full(&self) {
        self.dropped_queue_full.inc();
        self.warn_limited(|| "OTLP export queue full; dropping spans".to_owned());
    }

    /// Logs at most once per minute, with the totals so far.
    fn warn_limited(&self, message: impl FnOnce() -> String) {
        let mut last = self.last_log.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|t| t.elapsed() < LOG_EVERY) {
            return;
        }
        *last = Some(Instant::now());
        drop(last);
        tracing::warn!(
            target: "clientgone::otlp",
            dropped_queue_full = self.dropped_queue_full.get(),
            dropped_export_failed = self.dropped_export_failed.get(),
            "{} (logged at most once a minute; see clientgone_otlp_spans_dropped_total)",
            message()
        );
    }
}
