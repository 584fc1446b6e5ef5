//! Metrics over OTLP: the contract's Prometheus families, read from the
//! registry at each export interval and pushed to a collector under their
//! OpenTelemetry names and attributes, cumulative — a bridge, as Go's
//! `contrib/bridges/prometheus` is: no second instrument on the hot path, the
//! registry the layer already writes is the only source.
//!
//! ```no_run
//! use clientgone_exporter::otlp::{MetricsConfig, OtlpMetrics};
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let registry = prometheus::Registry::new();
//! let metrics = clientgone::Metrics::new(&registry)?;
//! // OTEL_METRICS_EXPORTER=otlp, OTEL_EXPORTER_OTLP_METRICS_ENDPOINT, …
//! let push = MetricsConfig::from_env()?.map(|config| OtlpMetrics::start(config, &registry)).transpose()?;
//! // … serve with `DisconnectLayer::new(metrics)` …
//! if let Some(push) = push {
//!     push.shutdown().await; // one last export
//! }
//! # drop(metrics); Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prometheus::proto::{MetricFamily, MetricType};
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use prost::Message;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::config::{ConfigError, OtlpProtocol, metrics_from_lookup};
use super::{StartError, service_name};

/// Where and how often metrics are pushed: see [`MetricsConfig::from_env`].
#[derive(Clone, Debug, PartialEq)]
pub struct MetricsConfig {
    /// The transport.
    pub protocol: OtlpProtocol,
    /// The full endpoint: for HTTP with its path (`…/v1/metrics`).
    pub endpoint: String,
    /// Time between exports (`OTEL_METRIC_EXPORT_INTERVAL`, 60 s by default).
    pub interval: Duration,
    /// Time one export may take (`OTEL_METRIC_EXPORT_TIMEOUT`, 30 s by default).
    pub timeout: Duration,
    /// `service.name`; `None`: `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, or `clientgone`.
    pub service_name: Option<String>,
    /// Headers sent with every export, such as a collector's API key
    /// (`OTEL_EXPORTER_OTLP_METRICS_HEADERS`, else `OTEL_EXPORTER_OTLP_HEADERS`).
    pub headers: Vec<(String, String)>,
    /// TLS for an `https://` endpoint, beside the system's roots
    /// (`OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE`, … else the general ones).
    pub tls: super::OtlpTls,
}

impl MetricsConfig {
    /// A configuration that pushes to `endpoint` (for HTTP, the full URL with
    /// `/v1/metrics`) every `interval`.
    pub fn new(protocol: OtlpProtocol, endpoint: impl Into<String>, interval: Duration) -> Self {
        MetricsConfig {
            protocol,
            endpoint: endpoint.into(),
            // A timer of no period is no timer (tokio's interval refuses it).
            interval: interval.max(Duration::from_millis(1)),
            timeout: Duration::from_secs(30),
            service_name: None,
            headers: Vec::new(),
            tls: super::OtlpTls::default(),
        }
    }

    /// Reads the standard environment. `Ok(None)` unless
    /// `OTEL_METRICS_EXPORTER=otlp` (and the SDK is not disabled). The endpoint
    /// is `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT` as given, else
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` (plus `/v1/metrics` over HTTP), else the
    /// protocol's local default; the protocol `OTEL_EXPORTER_OTLP_METRICS_PROTOCOL`
    /// or `OTEL_EXPORTER_OTLP_PROTOCOL` (`grpc` by default).
    pub fn from_env() -> Result<Option<Self>, ConfigError> {
        metrics_from_lookup(|key| std::env::var(key).ok())
    }

    /// One line for a start-up message.
    pub fn describe(&self) -> String {
        format!(
            "metrics over OTLP ({}) to {} every {:?}",
            match self.protocol {
                OtlpProtocol::Grpc => "gRPC",
                _ => "HTTP",
            },
            self.endpoint,
            self.interval
        )
    }
}

/// The running bridge: one task that reads the registry and pushes.
#[derive(Debug)]
pub struct OtlpMetrics {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl OtlpMetrics {
    /// Starts pushing the registry's clientgone metrics. Its own counter,
    /// `clientgone_otlp_metric_points_dropped_total{reason="export_failed"}`,
    /// goes into `registry` too. Must be called inside a tokio runtime.
    ///
    /// A collector that is down or slow costs the server nothing: the export
    /// runs on its own task, bounded by the timeout, and what it could not
    /// deliver is counted and logged at most once a minute.
    pub fn start(config: MetricsConfig, registry: &Registry) -> Result<Self, StartError> {
        let dropped = IntCounterVec::new(
            Opts::new(
                "clientgone_otlp_metric_points_dropped_total",
                "Metric data points not delivered over OTLP (the collector failed or was too slow).",
            ),
            &["reason"],
        )
        .and_then(|vec| {
            registry.register(Box::new(vec.clone()))?;
            Ok(vec.with_label_values(&["export_failed"]))
        })
        .map_err(|e| StartError(format!("cannot register the OTLP metrics counter: {e}")))?;
        let transport = Transport::new(&config)?;
        let stop = CancellationToken::new();
        let registry = registry.clone();
        let resource = resource(&config);
        let task = tokio::spawn(run(
            config,
            transport,
            registry,
            resource,
            dropped,
            stop.clone(),
        ));
        Ok(OtlpMetrics { stop, task })
    }

    /// Stops, after one last export (bounded by the export timeout).
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

// Boxed: both are large, and there is one transport.
enum Transport {
    Grpc(Box<GrpcTransport>),
    Http(Box<HttpTransport>),
}

struct GrpcTransport {
    client: MetricsServiceClient<tonic::transport::Channel>,
    metadata: tonic::metadata::MetadataMap,
}

struct HttpTransport {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    uri: http::Uri,
    headers: http::HeaderMap,
}

impl Transport {
    fn new(config: &MetricsConfig) -> Result<Self, StartError> {
        let bad = |e: &dyn std::fmt::Display| {
            StartError(format!("OTLP metrics endpoint '{}': {e}", config.endpoint))
        };
        Ok(match config.protocol {
            OtlpProtocol::Grpc => {
                let channel =
                    super::tls::grpc_channel(&config.endpoint, &config.tls, config.timeout)?;
                let mut metadata = tonic::metadata::MetadataMap::new();
                for (key, value) in &config.headers {
                    let key = tonic::metadata::MetadataKey::from_bytes(key.as_bytes())
                        .map_err(|e| bad(&format!("header '{key}': {e}")))?;
                    let value = value
                        .parse()
                        .map_err(|e| bad(&format!("header value of '{key}': {e}")))?;
                    metadata.insert(key, value);
                }
                Transport::Grpc(Box::new(GrpcTransport {
                    client: MetricsServiceClient::new(channel),
                    metadata,
                }))
            }
            _ => {
                let uri = config.endpoint.parse().map_err(|e| bad(&e))?;
                let connector = super::tls::http_connector(&config.tls, config.timeout)?;
                let client = Client::builder(TokioExecutor::new()).build(connector);
                let mut headers = http::HeaderMap::new();
                for (key, value) in &config.headers {
                    let name = http::HeaderName::from_bytes(key.as_bytes())
                        .map_err(|e| bad(&format!("header '{key}': {e}")))?;
                    let value = http::HeaderValue::from_str(value)
                        .map_err(|e| bad(&format!("header value of '{key}': {e}")))?;
                    headers.insert(name, value);
                }
                Transport::Http(Box::new(HttpTransport {
                    client,
                    uri,
                    headers,
                }))
            }
        })
    }

    async fn export(&mut self, request: ExportMetricsServiceRequest) -> Result<(), String> {
        match self {
            Transport::Grpc(grpc) => {
                let GrpcTransport { client, metadata } = &mut **grpc;
                let mut request = tonic::Request::new(request);
                *request.metadata_mut() = metadata.clone();
                client
                    .export(request)
                    .await
                    .map(drop)
                    .map_err(|s| format!("{}: {}", s.code(), s.message()))
            }
            Transport::Http(http) => {
                let HttpTransport {
                    client,
                    uri,
                    headers,
                } = &**http;
                let body = Full::new(Bytes::from(request.encode_to_vec()));
                let mut req = http::Request::post(uri.clone())
                    .header(http::header::CONTENT_TYPE, "application/x-protobuf")
                    .body(body)
                    .map_err(|e| e.to_string())?;
                req.headers_mut()
                    .extend(headers.iter().map(|(k, v)| (k.clone(), v.clone())));
                let response = client.request(req).await.map_err(|e| e.to_string())?;
                match response.status() {
                    s if s.is_success() => Ok(()),
                    s => Err(format!("the collector answered {s}")),
                }
            }
        }
    }
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transport::Grpc(_) => "Transport::Grpc",
            Transport::Http(_) => "Transport::Http",
        })
    }
}

async fn run(
    config: MetricsConfig,
    mut transport: Transport,
    registry: Registry,
    resource: Resource,
    dropped: IntCounter,
    stop: CancellationToken,
) {
    let start = now_ns();
    let mut last_log: Option<std::time::Instant> = None;
    let mut tick = tokio::time::interval(config.interval.max(Duration::from_millis(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first tick is at once: wait one interval first
    loop {
        let last = tokio::select! {
            () = stop.cancelled() => true,
            _ = tick.tick() => false,
        };
        let request = export_request(&registry.gather(), &resource, start, now_ns());
        let points = points(&request);
        if points > 0 {
            let sent = tokio::time::timeout(config.timeout, transport.export(request)).await;
            let failure = match sent {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e),
                Err(_) => Some(format!("no answer within {:?}", config.timeout)),
            };
            if let Some(why) = failure {
                dropped.inc_by(points);
                if last_log.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
                    last_log = Some(std::time::Instant::now());
                    tracing::warn!(
                        endpoint = %config.endpoint,
                        "OTLP metrics export failed ({why}); {points} points dropped \
                         (counted in clientgone_otlp_metric_points_dropped_total)"
                    );
                }
            }
        }
        if last {
            return;
        }
    }
}

fn resource(config: &MetricsConfig) -> Resource {
    Resource {
        attributes: vec![string_kv(
            "service.name",
            service_name(config.service_name.clone()),
        )],
        dropped_attributes_count: 0,
        entity_refs: Vec::new(),
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// A label's attribute: dotted as the conventions spell it; a status code
/// and a port are numbers there.
fn attribute(label: &str, value: &str) -> Option<KeyValue> {
    let key = clientgone::names::label::otel_attribute(label);
    if matches!(key, "http.response.status_code" | "server.port") {
        // No status (a proxied request that got no answer): no attribute, as
        // the empty label is no label in Prometheus.
        let n: i64 = value.parse().ok()?;
        return Some(KeyValue {
            key: key.to_owned(),
            value: Some(AnyValue {
                value: Some(any_value::Value::IntValue(n)),
            }),
            ..Default::default()
        });
    }
    Some(string_kv(key, value.to_owned()))
}

fn string_kv(key: &str, value: String) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value)),
        }),
        ..Default::default()
    }
}

/// The OTLP request for what the registry holds now: pure, so tests hold it
/// against `/metrics`.
pub(crate) fn export_request(
    families: &[MetricFamily],
    resource: &Resource,
    start_ns: u64,
    now_ns: u64,
) -> ExportMetricsServiceRequest {
    let metrics = families
        .iter()
        .filter_map(|family| {
            let known = clientgone::names::FAMILIES
                .iter()
                .find(|f| f.prometheus == family.name())?;
            Some(convert(family, known.otel, known.unit, start_ns, now_ns))
        })
        .collect();
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(resource.clone()),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: "clientgone".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                metrics,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

/// A counter's or gauge's value, whichever form `prometheus::proto` has in this
/// build.
///
/// With prometheus's `protobuf` feature (on by default, and features unify
/// across a user's graph) `Metric::get_counter()` returns a protobuf
/// `MessageField` whose `Counter` reads with `value()`; without it, the
/// hand-written `Counter` reads with `get_value()`. Which one we get is not
/// ours to choose, and a crate cannot `cfg` on a dependency's feature. So this
/// trait gives each form the method it lacks: an inherent method always wins
/// over a trait's, so in each build one of the two bodies calls the inherent
/// reader and the other calls that one, with no recursion in either. The call
/// sites write `value()`, which reaches the protobuf `Counter` through
/// `MessageField`'s `Deref`, or this trait on the plain one.
/// The tests (`histograms_counters_and_gauges_keep_their_values_under_their_otel_names`),
/// run by CI with prometheus's `protobuf` feature on and off,
/// keep both compiling.
#[allow(dead_code)] // one of the two methods is unused in each build
trait ProtoValue {
    fn value(&self) -> f64;
    fn get_value(&self) -> f64;
}

macro_rules! proto_value {
    ($($ty:ty),*) => {$(
        impl ProtoValue for $ty {
            fn value(&self) -> f64 {
                self.get_value()
            }
            fn get_value(&self) -> f64 {
                self.value()
            }
        }
    )*};
}
proto_value!(prometheus::proto::Counter, prometheus::proto::Gauge);

fn attributes(m: &prometheus::proto::Metric) -> Vec<KeyValue> {
    let mut by_key = BTreeMap::new();
    for pair in m.get_label() {
        if let Some(kv) = attribute(pair.name(), pair.value()) {
            by_key.insert(kv.key.clone(), kv);
        }
    }
    by_key.into_values().collect()
}

fn convert(family: &MetricFamily, name: &str, unit: &str, start: u64, now: u64) -> Metric {
    let number = |m: &prometheus::proto::Metric, value: f64| NumberDataPoint {
        attributes: attributes(m),
        start_time_unix_nano: start,
        time_unix_nano: now,
        // Counts and gauges of whole things: integers, as the instruments are.
        value: Some(number_data_point::Value::AsInt(value as i64)),
        ..Default::default()
    };
    let data = match family.get_field_type() {
        MetricType::COUNTER => metric::Data::Sum(Sum {
            data_points: family
                .get_metric()
                .iter()
                .map(|m| number(m, m.get_counter().value()))
                .collect(),
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
            is_monotonic: true,
        }),
        // The gauges count things in flight or open: up-down counters, as the
        // conventions define them.
        MetricType::GAUGE => metric::Data::Sum(Sum {
            data_points: family
                .get_metric()
                .iter()
                .map(|m| number(m, m.get_gauge().value()))
                .collect(),
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
            is_monotonic: false,
        }),
        _ => metric::Data::Histogram(Histogram {
            data_points: family
                .get_metric()
                .iter()
                .map(|m| {
                    let h = m.get_histogram();
                    // Prometheus buckets are cumulative (`le`); OTLP's are per
                    // bucket, with the `+Inf` one last.
                    let mut bounds = Vec::with_capacity(h.get_bucket().len());
                    let mut counts = Vec::with_capacity(h.get_bucket().len() + 1);
                    let mut below = 0u64;
                    for b in h.get_bucket() {
                        if b.upper_bound().is_infinite() {
                            continue;
                        }
                        bounds.push(b.upper_bound());
                        counts.push(b.cumulative_count().saturating_sub(below));
                        below = b.cumulative_count();
                    }
                    counts.push(h.get_sample_count().saturating_sub(below));
                    HistogramDataPoint {
                        attributes: attributes(m),
                        start_time_unix_nano: start,
                        time_unix_nano: now,
                        count: h.get_sample_count(),
                        sum: Some(h.get_sample_sum()),
                        bucket_counts: counts,
                        explicit_bounds: bounds,
                        ..Default::default()
                    }
                })
                .collect(),
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
        }),
    };
    Metric {
        name: name.to_owned(),
        description: family.help().to_owned(),
        unit: unit.to_owned(),
        metadata: Vec::new(),
        data: Some(data),
    }
}

/// Data points in a request.
fn points(request: &ExportMetricsServiceRequest) -> u64 {
    request
        .resource_metrics
        .iter()
        .flat_map(|r| &r.scope_metrics)
        .flat_map(|s| &s.metrics)
        .map(|m| match &m.data {
            Some(metric::Data::Sum(s)) => s.data_points.len(),
            Some(metric::Data::Histogram(h)) => h.data_points.len(),
            _ => 0,
        } as u64)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_counters_and_gauges_keep_their_values_under_their_otel_names() {
        let registry = Registry::new();
        let metrics = clientgone::Metrics::builder()
            .const_label("server_port", "8080")
            .register(&registry)
            .unwrap();
        metrics.request_started("GET", "/users/{id}");
        metrics.request_ended(&clientgone::Record {
            method: "GET",
            route: "/users/{id}",
            status: 499,
            end: clientgone::End::Disconnect {
                phase: clientgone::Phase::Handler,
                cause: clientgone::Cause::Closed,
            },
            elapsed: Duration::from_millis(1200),
            body_bytes_sent: 0,
        });
        metrics.request_started("GET", "/users/{id}");
        let request = export_request(&registry.gather(), &Resource::default(), 1, 2);
        let all = &request.resource_metrics[0].scope_metrics[0].metrics;
        let find = |name: &str| all.iter().find(|m| m.name == name).expect(name);

        let Some(metric::Data::Histogram(h)) = &find("http.server.request.duration").data else {
            panic!("a histogram")
        };
        let p = &h.data_points[0];
        assert_eq!((p.count, p.sum), (1, Some(1.2)));
        assert_eq!(p.bucket_counts.len(), p.explicit_bounds.len() + 1);
        assert_eq!(p.bucket_counts.iter().sum::<u64>(), 1);
        // 1.2 s is in (1, 2.5].
        let i = p.explicit_bounds.iter().position(|b| *b == 2.5).unwrap();
        assert_eq!(p.bucket_counts[i], 1);
        assert_eq!(
            h.aggregation_temporality,
            AggregationTemporality::Cumulative as i32
        );
        let keys: Vec<&str> = p.attributes.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "http.request.method",
                "http.response.status_code",
                "http.route",
                "outcome",
                "server.port"
            ]
        );
        let status = p
            .attributes
            .iter()
            .find(|kv| kv.key == "http.response.status_code")
            .unwrap();
        assert_eq!(
            status.value.as_ref().unwrap().value,
            Some(any_value::Value::IntValue(499))
        );

        let Some(metric::Data::Sum(s)) = &find("http.server.client_disconnects").data else {
            panic!("a sum")
        };
        assert!(s.is_monotonic);
        assert_eq!(
            s.data_points[0].value,
            Some(number_data_point::Value::AsInt(1))
        );
        let Some(metric::Data::Sum(active)) = &find("http.server.active_requests").data else {
            panic!("a sum")
        };
        assert!(!active.is_monotonic);
        assert_eq!(
            active.data_points[0].value,
            Some(number_data_point::Value::AsInt(1))
        );
        assert_eq!(find("http.server.client_disconnect.elapsed").unit, "s");
        // Only the contract's families: nothing else in the registry goes out.
        assert!(
            all.iter()
                .all(|m| clientgone::names::FAMILIES.iter().any(|f| f.otel == m.name))
        );
        assert_eq!(
            points(&request),
            all.iter()
                .map(|m| match &m.data {
                    Some(metric::Data::Sum(s)) => s.data_points.len() as u64,
                    Some(metric::Data::Histogram(h)) => h.data_points.len() as u64,
                    _ => 0,
                })
                .sum::<u64>()
        );
    }
}
