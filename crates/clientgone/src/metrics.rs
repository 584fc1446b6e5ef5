//! [`Metrics`]: the Prometheus instruments of the contract, registered once in a
//! registry the user owns, with per-(route, method) children cached so the hot
//! path neither formats nor allocates label strings.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

use crate::classify::{Cause, CloseReason, METHODS, Outcome, Phase};
use crate::grpc::{GrpcStatus, RpcType};
use crate::names::{self, label};
use crate::record::{CallRecord, End, Record};

/// The route label of requests that matched no route.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// Request-duration buckets (seconds): fine at the fast end, and long enough at
/// the slow end to sit beside time-to-abandon.
const REQUEST_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0,
];

/// Time-to-abandon buckets (seconds): reach past 300 s, as the contract asks,
/// with marks at the usual client and load-balancer timeouts (30 s, 60 s, 120 s).
const ABANDON_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

const CONNECTION_BUCKETS: &[f64] = &[
    0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

/// The request and connection metrics of the contract.
///
/// Create it once per registry and clone it freely (it is a handle).
///
/// ```
/// let registry = prometheus::Registry::new();
/// let metrics = clientgone::Metrics::new(&registry).unwrap();
/// // Registering twice in one registry is an error, not a panic:
/// assert!(clientgone::Metrics::new(&registry).is_err());
/// # drop(metrics);
/// ```
#[derive(Clone, Debug)]
pub struct Metrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    vecs: Vecs,
    rpc_vecs: Vecs,
    open_connections: IntGauge,
    connection_closes: [IntCounter; CloseReason::ALL.len()],
    connection_duration: Histogram,
    routes: RwLock<HashMap<Box<str>, Arc<RouteMetrics>>>,
    rpc_methods: RwLock<HashMap<RpcKey, Arc<RpcMethodMetrics>>>,
}

/// A gRPC method's label and type.
type RpcKey = (Arc<str>, RpcType);

/// The four per-request families of one protocol: `http_server_*` keyed by
/// (method, route), `rpc_server_*` keyed by (system, method, type).
#[derive(Clone, Debug)]
struct Vecs {
    request_duration: HistogramVec,
    active_requests: IntGaugeVec,
    disconnects: IntCounterVec,
    disconnect_elapsed: HistogramVec,
}

impl Metrics {
    /// Creates the instruments and registers them in `registry`.
    ///
    /// Fails if any of the names is already registered there.
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        Metrics::builder().register(registry)
    }

    /// Settings before registration: labels every series carries, the
    /// histograms' buckets.
    ///
    /// ```
    /// let registry = prometheus::Registry::new();
    /// // Two sets of the same metrics in one registry, told apart by a constant label:
    /// let a = clientgone::Metrics::builder().const_label("server_port", "8080").register(&registry)?;
    /// let b = clientgone::Metrics::builder().const_label("server_port", "9000").register(&registry)?;
    /// # drop((a, b));
    /// # Ok::<(), prometheus::Error>(())
    /// ```
    pub fn builder() -> MetricsBuilder {
        MetricsBuilder::default()
    }

    /// The cached children of one route; created on first use.
    pub(crate) fn route(&self, route: &str) -> Arc<RouteMetrics> {
        if let Some(found) = self.read_routes().get(route) {
            return Arc::clone(found);
        }
        let mut routes = self
            .inner
            .routes
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Arc::clone(routes.entry(route.into()).or_insert_with(|| {
            Arc::new(RouteMetrics {
                route: route.into(),
                vecs: self.inner.vecs.clone(),
                methods: Default::default(),
                span_names: Default::default(),
            })
        }))
    }

    /// The children of one gRPC method (a label from
    /// [`GrpcMethods`](crate::GrpcMethods), or `_OTHER`); created on first use.
    pub(crate) fn rpc_method(&self, method: &Arc<str>, rpc_type: RpcType) -> Arc<RpcMethodMetrics> {
        let key = (Arc::clone(method), rpc_type);
        let read = self
            .inner
            .rpc_methods
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(found) = read.get(&key) {
            return Arc::clone(found);
        }
        drop(read);
        let mut methods = self
            .inner
            .rpc_methods
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Arc::clone(methods.entry(key).or_insert_with(|| {
            let labels = [RPC_SYSTEM, method, rpc_type.as_str()];
            Arc::new(RpcMethodMetrics {
                method: Arc::clone(method),
                rpc_type,
                series: Series::new(&self.inner.rpc_vecs, &labels),
            })
        }))
    }

    /// For a source of gRPC calls other than
    /// [`DisconnectLayer::grpc`](crate::DisconnectLayer::grpc): a call to
    /// `method` (`pkg.Service/Method` of a method the server implements, or
    /// [`OTHER_METHOD`](crate::OTHER_METHOD) — the caller keeps the label set
    /// bounded) of `rpc_type` is in flight. End it with
    /// [`call_ended`](Self::call_ended) — exactly once.
    ///
    /// ```
    /// use clientgone::{Cause, CallRecord, End, GrpcStatus, Metrics, Phase, RpcType};
    /// use std::time::Duration;
    ///
    /// let registry = prometheus::Registry::new();
    /// let metrics = Metrics::new(&registry).unwrap();
    /// metrics.call_started("helloworld.Greeter/SayHello", RpcType::Unary);
    /// metrics.call_ended(&CallRecord {
    ///     method: "helloworld.Greeter/SayHello",
    ///     rpc_type: RpcType::Unary,
    ///     status: GrpcStatus::DEADLINE_EXCEEDED,
    ///     end: End::Disconnect { phase: Phase::Handler, cause: Cause::DeadlineExceeded },
    ///     elapsed: Duration::from_millis(250),
    ///     body_bytes_sent: 0,
    /// });
    /// ```
    pub fn call_started(&self, method: &str, rpc_type: RpcType) {
        self.rpc_method(&method.into(), rpc_type).call_started();
    }

    /// Ends a call begun with [`call_started`](Self::call_started): observes
    /// it once in the duration histogram, and counts its break if it was one.
    pub fn call_ended(&self, record: &CallRecord<'_>) {
        self.rpc_method(&record.method.into(), record.rpc_type)
            .record(record);
    }

    /// Takes a call begun with [`call_started`](Self::call_started) out of
    /// the active-calls gauge without observing it anywhere: its source lost
    /// track of it (as [`request_lost`](Self::request_lost) for requests).
    ///
    /// ```
    /// use clientgone::{Metrics, RpcType};
    ///
    /// let metrics = Metrics::new(&prometheus::Registry::new()).unwrap();
    /// metrics.call_started("helloworld.Greeter/SayHello", RpcType::Unary);
    /// metrics.call_lost("helloworld.Greeter/SayHello", RpcType::Unary);
    /// ```
    pub fn call_lost(&self, method: &str, rpc_type: RpcType) {
        self.rpc_method(&method.into(), rpc_type).call_lost();
    }

    fn read_routes(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Box<str>, Arc<RouteMetrics>>> {
        // A panic while holding the lock cannot leave the map half-written in a
        // way that matters (insert is the only write), so poisoning is ignored.
        self.inner
            .routes
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// For a source of requests other than [`DisconnectLayer`](crate::DisconnectLayer)
    /// (`clientgone watch` reads them from kernel events): a request of `method`
    /// (a [`method_label`](crate::method_label) value; others count as `_OTHER`)
    /// on `route` (a template, or [`UNMATCHED_ROUTE`]) is in flight. End it with
    /// [`request_ended`](Self::request_ended) — exactly once.
    ///
    /// ```
    /// use clientgone::{Cause, End, Metrics, Phase, Record};
    /// use std::time::Duration;
    ///
    /// let registry = prometheus::Registry::new();
    /// let metrics = Metrics::new(&registry).unwrap();
    /// metrics.request_started("GET", "/users/{id}");
    /// metrics.request_ended(&Record {
    ///     method: "GET",
    ///     route: "/users/{id}",
    ///     status: 499,
    ///     end: End::Disconnect { phase: Phase::Handler, cause: Cause::Closed },
    ///     elapsed: Duration::from_millis(1200),
    ///     body_bytes_sent: 0,
    /// });
    /// ```
    pub fn request_started(&self, method: &str, route: &str) {
        self.route(route).request_started(method_position(method));
    }

    /// Ends a request begun with [`request_started`](Self::request_started):
    /// observes it once in the duration histogram, and counts its break if it
    /// was one.
    pub fn request_ended(&self, record: &Record<'_>) {
        self.route(record.route)
            .record(method_position(record.method), record);
    }

    /// Takes a request begun with [`request_started`](Self::request_started)
    /// out of the in-flight gauge without observing it anywhere: its source lost
    /// track of it (`clientgone watch` when kernel events were lost), and a
    /// guessed end would be a wrong count.
    pub fn request_lost(&self, method: &str, route: &str) {
        self.route(route).request_lost(method_position(method));
    }

    /// For a source other than [`TrackedListener`](crate::TrackedListener): a
    /// client connection opened. Close it with
    /// [`connection_closed`](Self::connection_closed) — exactly once.
    pub fn connection_opened(&self) {
        self.inner.open_connections.inc();
    }

    /// Takes a connection opened with [`connection_opened`](Self::connection_opened)
    /// out of the open gauge without counting a close: its source lost track of it.
    pub fn connection_lost(&self) {
        self.inner.open_connections.dec();
    }

    /// A connection opened with [`connection_opened`](Self::connection_opened)
    /// closed, for `reason`, after `lifetime`.
    pub fn connection_closed(&self, reason: CloseReason, lifetime: Duration) {
        self.connection_closed_untimed(reason);
        self.inner
            .connection_duration
            .observe(lifetime.as_secs_f64());
    }

    /// A connection opened with [`connection_opened`](Self::connection_opened)
    /// closed, for `reason`, after a lifetime its source does not know (it
    /// found the connection already open): counted by reason, and left out of
    /// `http_server_connection_duration_seconds` rather than guessed.
    ///
    /// ```
    /// let metrics = clientgone::Metrics::new(&prometheus::Registry::new())?;
    /// metrics.connection_opened();
    /// metrics.connection_closed_untimed(clientgone::CloseReason::Idle);
    /// # Ok::<(), prometheus::Error>(())
    /// ```
    pub fn connection_closed_untimed(&self, reason: CloseReason) {
        self.inner.open_connections.dec();
        self.inner.connection_closes[reason.index()].inc();
    }
}

/// The upper bounds (seconds) of the histograms' buckets; `+Inf` is always
/// added. The defaults are the ones documented on each field.
///
/// ```
/// let buckets = clientgone::Buckets {
///     request_duration: vec![0.01, 0.1, 1.0, 10.0],
///     ..Default::default()
/// };
/// let registry = prometheus::Registry::new();
/// let metrics = clientgone::Metrics::builder().buckets(buckets).register(&registry)?;
/// # drop(metrics);
/// # Ok::<(), prometheus::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Buckets {
    /// `http_server_request_duration_seconds` and
    /// `rpc_server_call_duration_seconds` (and the proxy's
    /// `http_client_request_duration_seconds`): 1 ms to 300 s.
    pub request_duration: Vec<f64>,
    /// `*_client_disconnect_elapsed_seconds`, the time to abandon: 10 ms to
    /// 600 s, with marks at the usual client and load-balancer timeouts.
    pub disconnect_elapsed: Vec<f64>,
    /// `http_server_connection_duration_seconds`: 10 ms to an hour.
    pub connection_duration: Vec<f64>,
}

impl Default for Buckets {
    fn default() -> Self {
        Buckets {
            request_duration: REQUEST_BUCKETS.to_vec(),
            disconnect_elapsed: ABANDON_BUCKETS.to_vec(),
            connection_duration: CONNECTION_BUCKETS.to_vec(),
        }
    }
}

impl Buckets {
    /// Checks every list: see [`check_buckets`].
    pub fn check(&self) -> Result<(), String> {
        for (name, buckets) in [
            ("request duration", &self.request_duration),
            ("disconnect elapsed", &self.disconnect_elapsed),
            ("connection duration", &self.connection_duration),
        ] {
            check_buckets(buckets).map_err(|e| format!("{name} buckets: {e}"))?;
        }
        Ok(())
    }
}

/// Checks a list of bucket upper bounds (seconds): at least one, each a
/// finite number, none negative, each larger than the one before. The error
/// says which value is wrong.
///
/// ```
/// use clientgone::check_buckets;
///
/// assert!(check_buckets(&[0.1, 0.5, 1.0]).is_ok());
/// assert_eq!(check_buckets(&[]).unwrap_err(), "no buckets: give at least one upper bound");
/// assert!(check_buckets(&[0.5, 0.1]).unwrap_err().contains("0.5 then 0.1"));
/// assert!(check_buckets(&[f64::NAN]).is_err());
/// ```
pub fn check_buckets(buckets: &[f64]) -> Result<(), String> {
    if buckets.is_empty() {
        return Err("no buckets: give at least one upper bound".into());
    }
    for &b in buckets {
        if !b.is_finite() {
            return Err(format!(
                "{b} is not a finite number of seconds (+Inf is always added)"
            ));
        }
        if b < 0.0 {
            return Err(format!("{b} is negative: durations are not"));
        }
    }
    for pair in buckets.windows(2) {
        if pair[1] <= pair[0] {
            return Err(format!(
                "buckets must increase, but {} then {} does not",
                pair[0], pair[1]
            ));
        }
    }
    Ok(())
}

/// Builds [`Metrics`]: see [`Metrics::builder`].
#[derive(Clone, Debug, Default)]
#[must_use = "a builder does nothing until `register` is called"]
pub struct MetricsBuilder {
    const_labels: HashMap<String, String>,
    buckets: Buckets,
}

impl MetricsBuilder {
    /// A label with one value on every series of these metrics, like
    /// `server_port="8080"`: several sets of the metrics can then share a
    /// registry (the label names must be the same in each set).
    pub fn const_label(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.const_labels.insert(name.into(), value.into());
        self
    }

    /// The histograms' bucket bounds, instead of the defaults.
    pub fn buckets(mut self, buckets: Buckets) -> Self {
        self.buckets = buckets;
        self
    }

    /// Creates the instruments and registers them in `registry`.
    ///
    /// Fails if the same names with the same constant labels are already
    /// registered there, a label name is not a valid Prometheus name, or a
    /// bucket list is not one ([`check_buckets`]).
    pub fn register(self, registry: &Registry) -> prometheus::Result<Metrics> {
        self.buckets.check().map_err(prometheus::Error::Msg)?;
        let buckets = self.buckets;
        let labels = self.const_labels;
        let opts = |name: &str, help: &str| Opts::new(name, help).const_labels(labels.clone());
        let hopts = |name: &str, help: &str, buckets: &[f64]| {
            HistogramOpts::new(name, help)
                .const_labels(labels.clone())
                .buckets(buckets.to_vec())
        };
        let request_duration = HistogramVec::new(
            hopts(
                names::HTTP_SERVER_REQUEST_DURATION.prometheus,
                "Duration of HTTP server requests, completed or broken off by the client.",
                &buckets.request_duration,
            ),
            &[
                label::HTTP_REQUEST_METHOD,
                label::HTTP_ROUTE,
                label::HTTP_RESPONSE_STATUS_CODE,
                label::OUTCOME,
            ],
        )?;
        let active_requests = IntGaugeVec::new(
            opts(
                names::HTTP_SERVER_ACTIVE_REQUESTS.prometheus,
                "HTTP server requests in flight.",
            ),
            &[label::HTTP_REQUEST_METHOD, label::HTTP_ROUTE],
        )?;
        let disconnects = IntCounterVec::new(
            opts(
                names::HTTP_SERVER_CLIENT_DISCONNECTS.prometheus,
                "Requests whose client broke the connection before the response was done.",
            ),
            &[
                label::HTTP_REQUEST_METHOD,
                label::HTTP_ROUTE,
                label::PHASE,
                label::CAUSE,
            ],
        )?;
        let disconnect_elapsed = HistogramVec::new(
            hopts(
                names::HTTP_SERVER_CLIENT_DISCONNECT_ELAPSED.prometheus,
                "Time from a request's arrival until its client's break was noticed.",
                &buckets.disconnect_elapsed,
            ),
            &[label::HTTP_REQUEST_METHOD, label::HTTP_ROUTE, label::PHASE],
        )?;
        let rpc_duration = HistogramVec::new(
            hopts(
                names::RPC_SERVER_CALL_DURATION.prometheus,
                "Duration of gRPC server calls, completed or broken off by the client.",
                &buckets.request_duration,
            ),
            &[
                label::RPC_SYSTEM_NAME,
                label::RPC_METHOD,
                label::RPC_TYPE,
                label::RPC_RESPONSE_STATUS_CODE,
                label::OUTCOME,
            ],
        )?;
        let rpc_active = IntGaugeVec::new(
            opts(
                names::RPC_SERVER_ACTIVE_CALLS.prometheus,
                "gRPC server calls in flight.",
            ),
            &[label::RPC_SYSTEM_NAME, label::RPC_METHOD, label::RPC_TYPE],
        )?;
        let rpc_disconnects = IntCounterVec::new(
            opts(
                names::RPC_SERVER_CLIENT_DISCONNECTS.prometheus,
                "gRPC calls whose client cancelled, gave up at its deadline or broke the \
                 connection before the call was done.",
            ),
            &[
                label::RPC_SYSTEM_NAME,
                label::RPC_METHOD,
                label::RPC_TYPE,
                label::PHASE,
                label::CAUSE,
            ],
        )?;
        let rpc_disconnect_elapsed = HistogramVec::new(
            hopts(
                names::RPC_SERVER_CLIENT_DISCONNECT_ELAPSED.prometheus,
                "Time from a gRPC call's arrival until its client's break was noticed.",
                &buckets.disconnect_elapsed,
            ),
            &[
                label::RPC_SYSTEM_NAME,
                label::RPC_METHOD,
                label::RPC_TYPE,
                label::PHASE,
            ],
        )?;
        let open_connections = IntGauge::with_opts(opts(
            names::HTTP_SERVER_OPEN_CONNECTIONS.prometheus,
            "Open client connections.",
        ))?;
        let closes = IntCounterVec::new(
            opts(
                names::HTTP_SERVER_CONNECTION_CLOSES.prometheus,
                "Closed client connections, by why they closed.",
            ),
            &[label::REASON],
        )?;
        let connection_duration = Histogram::with_opts(hopts(
            names::HTTP_SERVER_CONNECTION_DURATION.prometheus,
            "Lifetime of client connections.",
            &buckets.connection_duration,
        ))?;

        registry.register(Box::new(request_duration.clone()))?;
        registry.register(Box::new(active_requests.clone()))?;
        registry.register(Box::new(disconnects.clone()))?;
        registry.register(Box::new(disconnect_elapsed.clone()))?;
        registry.register(Box::new(open_connections.clone()))?;
        registry.register(Box::new(closes.clone()))?;
        registry.register(Box::new(connection_duration.clone()))?;
        // Empty until the first gRPC call: a registry of an HTTP-only server
        // shows none of them.
        registry.register(Box::new(rpc_duration.clone()))?;
        registry.register(Box::new(rpc_active.clone()))?;
        registry.register(Box::new(rpc_disconnects.clone()))?;
        registry.register(Box::new(rpc_disconnect_elapsed.clone()))?;

        // Every close reason exists from the start, so a rate() over it is never empty.
        let connection_closes = CloseReason::ALL.map(|r| closes.with_label_values(&[r.as_str()]));

        Ok(Metrics {
            inner: Arc::new(Inner {
                vecs: Vecs {
                    request_duration,
                    active_requests,
                    disconnects,
                    disconnect_elapsed,
                },
                rpc_vecs: Vecs {
                    request_duration: rpc_duration,
                    active_requests: rpc_active,
                    disconnects: rpc_disconnects,
                    disconnect_elapsed: rpc_disconnect_elapsed,
                },
                open_connections,
                connection_closes,
                connection_duration,
                routes: RwLock::new(HashMap::new()),
                rpc_methods: RwLock::new(HashMap::new()),
            }),
        })
    }
}

/// The index of a method label; `_OTHER` for anything else.
fn method_position(label: &str) -> usize {
    METHODS
        .iter()
        .position(|m| *m == label)
        .unwrap_or(METHODS.len() - 1)
}

/// The `rpc_system_name` label.
const RPC_SYSTEM: &str = "grpc";

/// The children of one route template, per method, created on first use.
#[derive(Debug)]
pub(crate) struct RouteMetrics {
    /// Shared, so a span's `http.route` attribute is a reference, not a copy.
    route: Arc<str>,
    vecs: Vecs,
    methods: [OnceLock<Series<u16>>; METHODS.len()],
    /// `{method} {route}`, the OTel span name, made once per method.
    span_names: [OnceLock<Box<str>>; METHODS.len()],
}

impl RouteMetrics {
    pub(crate) fn route(&self) -> &str {
        &self.route
    }

    pub(crate) fn route_shared(&self) -> &Arc<str> {
        &self.route
    }

    pub(crate) fn span_name(&self, method: usize) -> &str {
        self.span_names[method].get_or_init(|| format!("{} {}", METHODS[method], self.route).into())
    }

    fn method(&self, method: usize) -> &Series<u16> {
        self.methods[method]
            .get_or_init(|| Series::new(&self.vecs, &[METHODS[method], &self.route]))
    }

    pub(crate) fn request_started(&self, method: usize) {
        self.method(method).active.inc();
    }

    fn request_lost(&self, method: usize) {
        self.method(method).active.dec();
    }

    /// Hands one finished request to the instruments.
    pub(crate) fn record(&self, method: usize, record: &Record<'_>) {
        self.method(method)
            .record(record.status, record.end, record.elapsed);
    }
}

/// The children of one gRPC method (of one type).
#[derive(Debug)]
pub(crate) struct RpcMethodMetrics {
    method: Arc<str>,
    rpc_type: RpcType,
    series: Series<GrpcStatus>,
}

impl RpcMethodMetrics {
    /// The `rpc_method` label.
    pub(crate) fn method(&self) -> &Arc<str> {
        &self.method
    }

    pub(crate) fn rpc_type(&self) -> RpcType {
        self.rpc_type
    }

    pub(crate) fn call_started(&self) {
        self.series.active.inc();
    }

    fn call_lost(&self) {
        self.series.active.dec();
    }

    /// Hands one finished call to the instruments.
    pub(crate) fn record(&self, record: &CallRecord<'_>) {
        self.series
            .record(record.status, record.end, record.elapsed);
    }
}

/// A status as its label says it.
trait StatusLabel: Copy + PartialEq {
    fn label(self) -> String;
}

impl StatusLabel for u16 {
    fn label(self) -> String {
        self.to_string()
    }
}

impl StatusLabel for GrpcStatus {
    fn label(self) -> String {
        self.as_str().to_owned()
    }
}

/// The series of one key (an HTTP route and method, or a gRPC method):
/// children looked up once and kept, so the hot path neither formats nor
/// hashes label values.
#[derive(Debug)]
struct Series<S> {
    vecs: Vecs,
    /// The key's leading label values, for children made later.
    labels: Box<[Box<str>]>,
    active: IntGauge,
    /// A handful of (status, outcome) pairs per key: a short list scanned
    /// under a read lock beats hashing.
    durations: RwLock<Vec<(S, Outcome, Histogram)>>,
    disconnects: [[OnceLock<IntCounter>; Cause::ALL.len()]; Phase::ALL.len()],
    elapsed: [OnceLock<Histogram>; Phase::ALL.len()],
}

impl<S: StatusLabel> Series<S> {
    fn new(vecs: &Vecs, labels: &[&str]) -> Self {
        Series {
            vecs: vecs.clone(),
            labels: labels.iter().map(|l| Box::from(*l)).collect(),
            active: vecs.active_requests.with_label_values(labels),
            durations: RwLock::new(Vec::new()),
            disconnects: Default::default(),
            elapsed: Default::default(),
        }
    }

    /// The key's label values followed by `more`.
    fn values<'a>(&'a self, more: &[&'a str]) -> Vec<&'a str> {
        self.labels
            .iter()
            .map(|l| &**l)
            .chain(more.iter().copied())
            .collect()
    }

    fn record(&self, status: S, end: End, elapsed: Duration) {
        self.active.dec();
        let seconds = elapsed.as_secs_f64();
        self.observe_duration(status, end.outcome(), seconds);
        if let End::Disconnect { phase, cause } = end {
            self.disconnects[phase.index()][cause.index()]
                .get_or_init(|| {
                    self.vecs
                        .disconnects
                        .with_label_values(&self.values(&[phase.as_str(), cause.as_str()]))
                })
                .inc();
            self.elapsed[phase.index()]
                .get_or_init(|| {
                    self.vecs
                        .disconnect_elapsed
                        .with_label_values(&self.values(&[phase.as_str()]))
                })
                .observe(seconds);
        }
    }

    /// Observes one request in its (status, outcome) child, found in a short
    /// list under the read lock; created under the write lock the first time.
    fn observe_duration(&self, status: S, outcome: Outcome, seconds: f64) {
        let observe = |list: &Vec<(S, Outcome, Histogram)>| {
            list.iter()
                .find(|(s, o, _)| *s == status && *o == outcome)
                .map(|(_, _, h)| h.observe(seconds))
                .is_some()
        };
        if observe(&self.durations.read().unwrap_or_else(|p| p.into_inner())) {
            return;
        }
        let mut list = self.durations.write().unwrap_or_else(|p| p.into_inner());
        if observe(&list) {
            return;
        }
        let label = status.label();
        let h = self
            .vecs
            .request_duration
            .with_label_values(&self.values(&[&label, outcome.as_str()]));
        h.observe(seconds);
        list.push((status, outcome, h));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_lists_are_checked() {
        let cases: [(&[f64], Option<&str>); 8] = [
            (&[0.1], None),
            (&[0.0, 0.1, 1.0], None),
            (&[], Some("no buckets")),
            (&[0.5, 0.1], Some("0.5 then 0.1")),
            (&[0.1, 0.1], Some("0.1 then 0.1")),
            (&[0.1, f64::NAN], Some("NaN is not a finite")),
            (&[0.1, f64::INFINITY], Some("inf is not a finite")),
            (&[-1.0, 1.0], Some("-1 is negative")),
        ];
        for (buckets, want) in cases {
            match (check_buckets(buckets), want) {
                (Ok(()), None) => {}
                (Err(e), Some(w)) => assert!(e.contains(w), "{buckets:?}: {e}"),
                (got, want) => panic!("{buckets:?}: {got:?}, wanted {want:?}"),
            }
        }
    }

    #[test]
    fn bad_buckets_fail_registration_with_the_reason() {
        let registry = Registry::new();
        let err = Metrics::builder()
            .buckets(Buckets {
                disconnect_elapsed: vec![2.0, 1.0],
                ..Buckets::default()
            })
            .register(&registry)
            .unwrap_err();
        assert!(
            err.to_string().contains("disconnect elapsed buckets"),
            "{err}"
        );
        // Nothing was registered: the defaults still register afterwards.
        assert!(Metrics::new(&registry).is_ok());
    }
}
