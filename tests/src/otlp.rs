//! In-process OTLP receivers built on the official `opentelemetry-proto` types:
//! a tonic `TraceService` for gRPC and an axum route decoding
//! `ExportTraceServiceRequest` for http/protobuf. Both hand every span they get
//! to the test through a channel.

use std::net::SocketAddr;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
use tokio::sync::mpsc;

pub use opentelemetry_proto::tonic::trace::v1;

/// One received span with its resource's `service.name`.
#[derive(Clone, Debug)]
pub struct ReceivedSpan {
    /// `service.name` of the resource the span came with.
    pub service_name: Option<String>,
    /// The span as it came off the wire.
    pub span: Span,
}

/// What a receiver got; also counts export calls.
pub struct Received(mpsc::UnboundedReceiver<ExportTraceServiceRequest>);

impl Received {
    /// Waits (up to `within`) for a span satisfying `pred`, collecting all spans seen.
    pub async fn wait_for(
        &mut self,
        within: Duration,
        seen: &mut Vec<ReceivedSpan>,
        pred: impl Fn(&ReceivedSpan) -> bool,
    ) -> Option<ReceivedSpan> {
        if let Some(s) = seen.iter().find(|s| pred(s)) {
            return Some(s.clone());
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let request = tokio::time::timeout_at(deadline, self.0.recv())
                .await
                .ok()??;
            let before = seen.len();
            seen.extend(flatten(request));
            if let Some(s) = seen[before..].iter().find(|s| pred(s)) {
                return Some(s.clone());
            }
        }
    }

    /// Every span received so far, without waiting.
    pub fn drain(&mut self) -> Vec<ReceivedSpan> {
        let mut all = Vec::new();
        while let Ok(request) = self.0.try_recv() {
            all.extend(flatten(request));
        }
        all
    }
}

fn flatten(request: ExportTraceServiceRequest) -> Vec<ReceivedSpan> {
    let mut spans = Vec::new();
    for rs in request.resource_spans {
        let service_name = rs
            .resource
            .as_ref()
            .and_then(|r| string_attr(&r.attributes, "service.name"));
        for ss in rs.scope_spans {
            for span in ss.spans {
                spans.push(ReceivedSpan {
                    service_name: service_name.clone(),
                    span,
                });
            }
        }
    }
    spans
}

/// The value of attribute `key`.
pub fn attr<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v: &AnyValue| v.value.as_ref())
}

/// The string value of attribute `key`.
pub fn string_attr(attributes: &[KeyValue], key: &str) -> Option<String> {
    match attr(attributes, key) {
        Some(Value::StringValue(s)) => Some(s.clone()),
        _ => None,
    }
}

/// The integer value of attribute `key`.
pub fn int_attr(attributes: &[KeyValue], key: &str) -> Option<i64> {
    match attr(attributes, key) {
        Some(Value::IntValue(i)) => Some(*i),
        _ => None,
    }
}

/// The float value of attribute `key`.
pub fn double_attr(attributes: &[KeyValue], key: &str) -> Option<f64> {
    match attr(attributes, key) {
        Some(Value::DoubleValue(d)) => Some(*d),
        _ => None,
    }
}

struct Sink(mpsc::UnboundedSender<ExportTraceServiceRequest>);

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let _ = self.0.send(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// An OTLP/gRPC receiver on loopback; returns its endpoint (`http://127.0.0.1:P`).
pub async fn grpc_receiver() -> (String, Received) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Sink(tx)))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    (endpoint, Received(rx))
}

/// An OTLP/gRPC receiver on loopback behind TLS (`tls`, e.g. with the test
/// PKI's server certificate); returns its endpoint (`https://127.0.0.1:P`).
pub async fn grpc_receiver_tls(tls: clientgone::TlsAcceptor) -> (String, Received) {
    let (tx, rx) = mpsc::unbounded_channel();
    let router = tonic::service::Routes::new(TraceServiceServer::new(Sink(tx))).into_axum_router();
    (serve_tls(router, tls).await, Received(rx))
}

/// An OTLP/HTTP receiver behind TLS; returns its full traces URL.
pub async fn http_receiver_tls(tls: clientgone::TlsAcceptor) -> (String, Received) {
    let (tx, rx) = mpsc::unbounded_channel();
    let router = axum::Router::new()
        .route("/v1/traces", axum::routing::post(http_export))
        .with_state(tx);
    let base = serve_tls(router, tls).await;
    (format!("{base}/v1/traces"), Received(rx))
}

/// Serves `router` over HTTPS on loopback; its base URL.
async fn serve_tls(router: axum::Router, tls: clientgone::TlsAcceptor) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("https://{}", listener.local_addr().unwrap());
    let listener = clientgone::TrackedListener::without_metrics(listener);
    tokio::spawn(clientgone::serve(listener, router).tls(tls).into_future());
    base
}

async fn http_export(
    axum::extract::State(tx): axum::extract::State<
        mpsc::UnboundedSender<ExportTraceServiceRequest>,
    >,
    body: axum::body::Bytes,
) -> (axum::http::StatusCode, Vec<u8>) {
    use prost::Message as _;
    match ExportTraceServiceRequest::decode(body) {
        Ok(request) => {
            let _ = tx.send(request);
            (
                axum::http::StatusCode::OK,
                ExportTraceServiceResponse::default().encode_to_vec(),
            )
        }
        Err(_) => (axum::http::StatusCode::BAD_REQUEST, Vec::new()),
    }
}

/// An OTLP/HTTP (protobuf) receiver on loopback; returns its full traces URL.
pub async fn http_receiver() -> (String, Received) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let app = axum::Router::new()
        .route("/v1/traces", axum::routing::post(http_export))
        .with_state(tx);
    tokio::spawn(axum::serve(listener, app).into_future());
    (format!("http://{addr}/v1/traces"), Received(rx))
}

/// A "collector" that accepts connections and never answers.
pub async fn black_hole() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    endpoint
}

/// An endpoint on a port nothing listens on.
/// Checks the span of a request or call the client broke off: a server
/// span with an error status, `error.type` `client_disconnect`, and a
/// `client.disconnect` event saying `phase` and `cause`. Returns the
/// event's attributes.
pub fn assert_broken_span<'a>(span: &'a Span, phase: &str, cause: &str) -> &'a [KeyValue] {
    assert_eq!(
        span.kind,
        v1::span::SpanKind::Server as i32,
        "{}",
        span.name
    );
    assert_eq!(
        span.status.as_ref().map(|s| s.code),
        Some(v1::status::StatusCode::Error as i32),
        "{}",
        span.name
    );
    assert_eq!(
        string_attr(&span.attributes, "error.type").as_deref(),
        Some("client_disconnect")
    );
    let event = span
        .events
        .iter()
        .find(|e| e.name == "client.disconnect")
        .expect("a client.disconnect event");
    let e = &event.attributes;
    assert_eq!(string_attr(e, "disconnect.phase").as_deref(), Some(phase));
    assert_eq!(string_attr(e, "disconnect.cause").as_deref(), Some(cause));
    e
}

/// For a source that learns of a request whole (`clientgone watch`): the
/// span lasts exactly the event's `disconnect.elapsed_s` (within 1 ms).
pub fn assert_span_lasts_its_elapsed(span: &Span, event: &[KeyValue]) {
    let elapsed = double_attr(event, "disconnect.elapsed_s").expect("disconnect.elapsed_s");
    let span_s = (span.end_time_unix_nano - span.start_time_unix_nano) as f64 / 1e9;
    assert!((elapsed - span_s).abs() < 0.001, "{elapsed} vs {span_s}");
}

pub fn closed_port_endpoint() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    endpoint
}

/// What an OTLP metrics receiver got: every export request, in order.
pub struct ReceivedMetrics(mpsc::UnboundedReceiver<ExportMetricsServiceRequest>);

/// One data point, flattened: the metric's name, its attributes as text
/// (sorted), and its value — a counter's or gauge's number, a histogram's
/// count, sum and per-bucket counts.
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    /// The OpenTelemetry metric name.
    pub metric: String,
    /// `key=value`, sorted by key.
    pub attributes: Vec<String>,
    /// Number points: the value; histograms: `[count, sum, buckets…]`.
    pub values: Vec<f64>,
}

impl ReceivedMetrics {
    /// Waits (up to `within`) for an export whose points satisfy `pred`;
    /// returns those points.
    pub async fn wait_for(
        &mut self,
        within: Duration,
        pred: impl Fn(&[Point]) -> bool,
    ) -> Option<Vec<Point>> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let request = tokio::time::timeout_at(deadline, self.0.recv())
                .await
                .ok()??;
            let points = flatten_metrics(&request);
            if pred(&points) {
                return Some(points);
            }
        }
    }
}

fn text(v: &Option<AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        _ => String::new(),
    }
}

fn flatten_metrics(request: &ExportMetricsServiceRequest) -> Vec<Point> {
    use opentelemetry_proto::tonic::metrics::v1::{metric::Data, number_data_point};
    let mut points = Vec::new();
    let attrs = |kvs: &[KeyValue]| {
        let mut a: Vec<String> = kvs
            .iter()
            .map(|kv| format!("{}={}", kv.key, text(&kv.value)))
            .collect();
        a.sort();
        a
    };
    for r in &request.resource_metrics {
        for s in &r.scope_metrics {
            for m in &s.metrics {
                match &m.data {
                    Some(Data::Sum(sum)) => {
                        for p in &sum.data_points {
                            let v = match p.value {
                                Some(number_data_point::Value::AsInt(i)) => i as f64,
                                Some(number_data_point::Value::AsDouble(d)) => d,
                                None => f64::NAN,
                            };
                            points.push(Point {
                                metric: m.name.clone(),
                                attributes: attrs(&p.attributes),
                                values: vec![v],
                            });
                        }
                    }
                    Some(Data::Histogram(h)) => {
                        for p in &h.data_points {
                            let mut values = vec![p.count as f64, p.sum.unwrap_or(f64::NAN)];
                            values.extend(p.bucket_counts.iter().map(|c| *c as f64));
                            points.push(Point {
                                metric: m.name.clone(),
                                attributes: attrs(&p.attributes),
                                values,
                            });
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    points.sort_by(|a, b| (&a.metric, &a.attributes).cmp(&(&b.metric, &b.attributes)));
    points
}

struct MetricsSink(mpsc::UnboundedSender<ExportMetricsServiceRequest>);

#[tonic::async_trait]
impl opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::MetricsService
    for MetricsSink
{
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let _ = self.0.send(request.into_inner());
        Ok(tonic::Response::new(Default::default()))
    }
}

/// An OTLP/gRPC metrics receiver on loopback behind TLS; its endpoint.
pub async fn grpc_metrics_receiver_tls(tls: clientgone::TlsAcceptor) -> (String, ReceivedMetrics) {
    use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::MetricsServiceServer;
    let (tx, rx) = mpsc::unbounded_channel();
    let router =
        tonic::service::Routes::new(MetricsServiceServer::new(MetricsSink(tx))).into_axum_router();
    (serve_tls(router, tls).await, ReceivedMetrics(rx))
}

/// An OTLP/HTTP metrics receiver on loopback behind TLS; its full URL.
pub async fn http_metrics_receiver_tls(tls: clientgone::TlsAcceptor) -> (String, ReceivedMetrics) {
    let (tx, rx) = mpsc::unbounded_channel();
    let router = axum::Router::new()
        .route("/v1/metrics", axum::routing::post(http_metrics_export))
        .with_state(tx);
    let base = serve_tls(router, tls).await;
    (format!("{base}/v1/metrics"), ReceivedMetrics(rx))
}

/// An OTLP/gRPC metrics receiver on loopback; returns its endpoint.
pub async fn grpc_metrics_receiver() -> (String, ReceivedMetrics) {
    use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::MetricsServiceServer;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(MetricsServiceServer::new(MetricsSink(tx)))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    (endpoint, ReceivedMetrics(rx))
}

/// An OTLP/HTTP (protobuf) metrics receiver on loopback; returns its full URL.
pub async fn http_metrics_receiver() -> (String, ReceivedMetrics) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let app = axum::Router::new()
        .route("/v1/metrics", axum::routing::post(http_metrics_export))
        .with_state(tx);
    tokio::spawn(axum::serve(listener, app).into_future());
    (format!("http://{addr}/v1/metrics"), ReceivedMetrics(rx))
}

/// The OTLP/HTTP metrics route: protobuf bodies only.
async fn http_metrics_export(
    axum::extract::State(tx): axum::extract::State<
        mpsc::UnboundedSender<ExportMetricsServiceRequest>,
    >,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> (axum::http::StatusCode, Vec<u8>) {
    if headers.get("content-type").and_then(|v| v.to_str().ok()) != Some("application/x-protobuf") {
        return (axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE, Vec::new());
    }
    match ExportMetricsServiceRequest::decode(body) {
        Ok(request) => {
            let _ = tx.send(request);
            (
                axum::http::StatusCode::OK,
                ExportMetricsServiceResponse::default().encode_to_vec(),
            )
        }
        Err(_) => (axum::http::StatusCode::BAD_REQUEST, Vec::new()),
    }
}
