//! Where `watch`'s facts go: the [`Sink`] a connection tracker reports to, and
//! its implementation, the server metrics of docs/metrics.md — one set per
//! watched port told apart by the constant label `server_port`, through the
//! same `clientgone::Metrics` the layer records into — plus the watch's own
//! counters.

use std::collections::HashMap;
use std::time::Duration;

use std::time::SystemTime;

use clientgone::DeferredTracer;
use clientgone::{CallRecord, CloseReason, End, Metrics, Record, RpcType};
use prometheus::{IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry};

use super::bpf::CaptureMode;
use super::skip::Skip;

/// Where the facts go: the metrics (and spans) of each watched port.
pub trait Sink {
    /// A connection was established (or found open): it counts as open.
    fn connection_opened(&mut self, port: u16);
    /// A connection that predates the agent is followed from now on.
    fn connection_adopted(&mut self, port: u16);
    /// A connection closed, once, with its one reason; `lifetime` is `None`
    /// for one that predates the agent.
    fn connection_closed(&mut self, port: u16, reason: CloseReason, lifetime: Option<Duration>);
    /// A connection is forgotten without a close (its events were lost).
    fn connection_lost(&mut self, port: u16);
    /// A request head was read: the request is in flight.
    fn request_started(&mut self, port: u16, method: &'static str, route: &str);
    /// A request ended, completed or broken.
    fn request_ended(&mut self, port: u16, record: &Record<'_>, ended: &Ended<'_>);
    /// A request in flight whose end cannot be known.
    fn request_lost(&mut self, port: u16, method: &'static str, route: &str);
    /// A gRPC call's head was read: the call is active.
    fn call_started(&mut self, port: u16, method: &str, rpc_type: RpcType);
    /// A gRPC call ended, completed or broken.
    fn call_ended(&mut self, port: u16, record: &CallRecord<'_>, ended: &Ended<'_>);
    /// A gRPC call whose end cannot be known.
    fn call_lost(&mut self, port: u16, method: &str, rpc_type: RpcType);
    /// A connection's requests are left out from here on.
    fn skipped(&mut self, port: u16, why: Skip);
}

/// What a span needs of an ended request or call beside its [`Record`] or
/// [`CallRecord`].
#[derive(Debug)]
pub struct Ended<'a> {
    /// The raw path, without the query.
    pub path: &'a str,
    /// `"1.0"` or `"1.1"`.
    pub version: &'static str,
    /// When its head was read (`CLOCK_MONOTONIC`, ns).
    pub start_ns: u64,
    /// At a break: the response bytes the client never acknowledged.
    pub unacked: Option<u32>,
}

/// The metrics of every watched port.
#[derive(Debug)]
pub struct PortMetrics {
    ports: HashMap<u16, Metrics>,
    registry: Registry,
    skipped: IntCounterVec,
    adopted: IntCounterVec,
    capture: IntGaugeVec,
    /// `clientgone_watch_events_lost_total`.
    pub events_lost: IntCounter,
    /// Spans (OTLP), when traces are on.
    tracer: Option<DeferredTracer>,
    /// Every port's histogram buckets.
    buckets: clientgone::Buckets,
}

/// `CLOCK_MONOTONIC` now, in ns: the clock of the kernel's event times.
fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| (t.tv_sec() as u64).saturating_mul(1_000_000_000) + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// When an ended request or call started, on the wall clock: the kernel's
/// clock tells how long ago.
fn started(ended: &Ended<'_>) -> SystemTime {
    let ago = Duration::from_nanos(monotonic_ns().saturating_sub(ended.start_ns));
    SystemTime::now() - ago
}

/// The response bytes a client never acknowledged, told of a break only.
fn unacked_at_break(end: End, ended: &Ended<'_>) -> Option<u64> {
    match end {
        End::Disconnect { .. } => ended.unacked.map(u64::from),
        _ => None,
    }
}

impl PortMetrics {
    /// Registers the watch's counters; each port's metrics come with [`Self::add_port`].
    pub fn new(
        registry: &Registry,
        tracer: Option<DeferredTracer>,
        buckets: clientgone::Buckets,
    ) -> prometheus::Result<Self> {
        let skipped = IntCounterVec::new(
            Opts::new(
                "clientgone_watch_connections_skipped_total",
                "Watched connections whose requests are left out of the request metrics, \
                 by why (tls, tls_unmapped, http2, unparsed, pipelined, upgraded, lost_events).",
            ),
            &[
                clientgone::names::label::SERVER_PORT,
                clientgone::names::label::REASON,
            ],
        )?;
        let events_lost = IntCounter::new(
            "clientgone_watch_events_lost_total",
            "Kernel events that did not reach the agent (the ring buffer was full).",
        )?;
        let adopted = IntCounterVec::new(
            Opts::new(
                "clientgone_watch_connections_adopted_total",
                "Watched connections established before the agent started, followed \
                 from their next request head.",
            ),
            &[clientgone::names::label::SERVER_PORT],
        )?;
        let capture = IntGaugeVec::new(
            Opts::new(
                "clientgone_watch_capture",
                "Where the bytes come from: 1 for the capture mode in use (socket: socket \
                 tracepoints alone; syscall: a system-call hook), 0 for the other.",
            ),
            &["mode"],
        )?;
        registry.register(Box::new(skipped.clone()))?;
        registry.register(Box::new(adopted.clone()))?;
        registry.register(Box::new(capture.clone()))?;
        registry.register(Box::new(events_lost.clone()))?;
        Ok(PortMetrics {
            ports: HashMap::new(),
            registry: registry.clone(),
            skipped,
            adopted,
            capture,
            events_lost,
            tracer,
            buckets,
        })
    }

    /// Registers the server metrics of `port` (once per port).
    pub fn add_port(&mut self, port: u16) -> prometheus::Result<()> {
        if self.ports.contains_key(&port) {
            return Ok(());
        }
        let metrics = Metrics::builder()
            .const_label(clientgone::names::label::SERVER_PORT, port.to_string())
            .buckets(self.buckets.clone())
            .register(&self.registry)?;
        for why in Skip::ALL {
            self.skipped
                .with_label_values(&[&port.to_string(), why.as_str()]);
        }
        self.adopted.with_label_values(&[&port.to_string()]);
        self.ports.insert(port, metrics);
        Ok(())
    }

    /// Says which capture mode is in use.
    pub fn set_capture(&self, mode: CaptureMode) {
        for m in CaptureMode::ALL {
            self.capture
                .with_label_values(&[m.as_str()])
                .set(i64::from(m == mode));
        }
    }

    fn port(&self, port: u16) -> Option<&Metrics> {
        self.ports.get(&port)
    }
}

impl Sink for PortMetrics {
    fn connection_opened(&mut self, port: u16) {
        if let Some(m) = self.port(port) {
            m.connection_opened();
        }
    }

    fn connection_adopted(&mut self, port: u16) {
        if self.ports.contains_key(&port) {
            self.adopted.with_label_values(&[&port.to_string()]).inc();
        }
    }

    fn connection_closed(&mut self, port: u16, reason: CloseReason, lifetime: Option<Duration>) {
        if let Some(m) = self.port(port) {
            match lifetime {
                Some(lifetime) => m.connection_closed(reason, lifetime),
                None => m.connection_closed_untimed(reason),
            }
        }
    }

    fn connection_lost(&mut self, port: u16) {
        if let Some(m) = self.port(port) {
            m.connection_lost();
        }
    }

    fn request_started(&mut self, port: u16, method: &'static str, route: &str) {
        if let Some(m) = self.port(port) {
            m.request_started(method, route);
        }
    }

    fn request_ended(&mut self, port: u16, record: &Record<'_>, ended: &Ended<'_>) {
        if let Some(m) = self.port(port) {
            m.request_ended(record);
        }
        if let Some(tracer) = &self.tracer {
            let unacked = unacked_at_break(record.end, ended);
            tracer.export_request_span(record, ended.path, ended.version, started(ended), unacked);
        }
    }

    fn request_lost(&mut self, port: u16, method: &'static str, route: &str) {
        if let Some(m) = self.port(port) {
            m.request_lost(method, route);
        }
    }

    fn call_started(&mut self, port: u16, method: &str, rpc_type: RpcType) {
        if let Some(m) = self.port(port) {
            m.call_started(method, rpc_type);
        }
    }

    fn call_ended(&mut self, port: u16, record: &CallRecord<'_>, ended: &Ended<'_>) {
        if let Some(m) = self.port(port) {
            m.call_ended(record);
        }
        if let Some(tracer) = &self.tracer {
            let unacked = unacked_at_break(record.end, ended);
            tracer.export_call_span(record, started(ended), unacked);
        }
    }

    fn call_lost(&mut self, port: u16, method: &str, rpc_type: RpcType) {
        if let Some(m) = self.port(port) {
            m.call_lost(method, rpc_type);
        }
    }

    fn skipped(&mut self, port: u16, why: Skip) {
        self.skipped
            .with_label_values(&[&port.to_string(), why.as_str()])
            .inc();
    }
}
