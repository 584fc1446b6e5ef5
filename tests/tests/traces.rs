//! OTLP traces of broken requests, delivered to real in-process receivers.
//!
//! The tests flush from `spawn_blocking`: the SDK's flush blocks.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::get;
use clientgone::DisconnectLayer;
use clientgone_agent::demo::{self, DemoConfig, RunningDemo};
use clientgone_exporter::otlp::{OtlpConfig, OtlpPipeline, OtlpProtocol};
use clientgone_tests::client::{Http1Connection, close_fin, send_raw};
use clientgone_tests::otlp::{
    ReceivedSpan, assert_broken_span, black_hole, closed_port_endpoint, double_attr, grpc_receiver,
    http_receiver, int_attr, string_attr, v1,
};
use clientgone_tests::{DEADLINE, Scrape, serve_app, wait_for_value};
use futures_util::StreamExt as _;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;

struct Traced {
    demo: RunningDemo,
    pipeline: Arc<OtlpPipeline>,
}

async fn start_traced(config: OtlpConfig) -> Traced {
    let registry = prometheus::Registry::new();
    let pipeline = Arc::new(OtlpPipeline::start(config, &registry).expect("pipeline"));
    let demo = demo::start(DemoConfig {
        listen: "127.0.0.1:0".into(),
        metrics_listen: "127.0.0.1:0".into(),
        options: Default::default(),
        registry,
        tracer: Some(pipeline.tracer()),
        buckets: Default::default(),
        tls: None,
    })
    .await
    .expect("demo starts");
    Traced { demo, pipeline }
}

impl Traced {
    async fn flush(&self) -> Result<(), String> {
        flush(&self.pipeline).await
    }

    /// A `/hello` that the client leaves with a FIN while the handler waits.
    async fn fin_broken_hello(&self, extra_header: &str) {
        let request =
            format!("GET /hello?delay_ms=60000 HTTP/1.1\r\nHost: t\r\n{extra_header}\r\n");
        let stream = send_raw(self.demo.addr, request.as_bytes()).await;
        wait_for_value(
            self.demo.metrics_addr,
            "http_server_active_requests",
            &[],
            1.0,
        )
        .await;
        close_fin(stream);
        wait_for_value(
            self.demo.metrics_addr,
            "http_server_client_disconnects_total",
            &[],
            1.0,
        )
        .await;
    }
}

/// Exports what the pipeline queued, off the runtime's threads (the SDK's
/// flush blocks).
async fn flush(pipeline: &Arc<OtlpPipeline>) -> Result<(), String> {
    let pipeline = pipeline.clone();
    tokio::task::spawn_blocking(move || pipeline.force_flush())
        .await
        .unwrap()
}

fn is_broken_hello(s: &ReceivedSpan) -> bool {
    s.span.name == "GET /hello"
}

fn assert_broken_hello_span(s: &ReceivedSpan) {
    let span = &s.span;
    assert_eq!(span.kind, v1::span::SpanKind::Server as i32);
    let status = span.status.as_ref().expect("status");
    assert_eq!(
        status.code,
        v1::status::StatusCode::Error as i32,
        "{span:?}"
    );
    let a = &span.attributes;
    assert_eq!(
        string_attr(a, "http.request.method").as_deref(),
        Some("GET")
    );
    assert_eq!(string_attr(a, "http.route").as_deref(), Some("/hello"));
    assert_eq!(string_attr(a, "url.path").as_deref(), Some("/hello"));
    assert_eq!(string_attr(a, "url.scheme").as_deref(), Some("http"));
    assert_eq!(
        string_attr(a, "network.protocol.version").as_deref(),
        Some("1.1")
    );
    assert_eq!(
        string_attr(a, "client.address").as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(int_attr(a, "http.response.status_code"), Some(499));
    assert_eq!(
        string_attr(a, "error.type").as_deref(),
        Some("client_disconnect")
    );
    let events: Vec<_> = span
        .events
        .iter()
        .filter(|e| e.name == "client.disconnect")
        .collect();
    assert_eq!(events.len(), 1, "{:?}", span.events);
    let e = &events[0].attributes;
    assert_eq!(
        string_attr(e, "disconnect.phase").as_deref(),
        Some("handler")
    );
    assert_eq!(
        string_attr(e, "disconnect.cause").as_deref(),
        Some("closed")
    );
    assert!(double_attr(e, "disconnect.elapsed_s").is_some_and(|s| s > 0.0 && s < 60.0));
    assert_eq!(int_attr(e, "http.response.body.bytes_sent"), Some(0));
    assert_eq!(
        int_attr(e, "disconnect.unacked_bytes"),
        Some(0),
        "nothing was sent"
    );
}

#[tokio::test]
async fn a_fin_broken_request_arrives_over_grpc_exactly_as_the_contract_says() {
    let (endpoint, mut received) = grpc_receiver().await;
    let traced = start_traced(
        OtlpConfig::new(OtlpProtocol::Grpc)
            .endpoint(endpoint)
            .service_name("clientgone-test"),
    )
    .await;
    traced.fin_broken_hello("").await;
    traced.flush().await.expect("flush");
    let mut seen = Vec::new();
    let span = received
        .wait_for(DEADLINE, &mut seen, is_broken_hello)
        .await
        .expect("the broken request's span arrives");
    assert_broken_hello_span(&span);
    assert_eq!(span.service_name.as_deref(), Some("clientgone-test"));
}

#[tokio::test]
async fn at_ratio_zero_only_breaks_and_sampled_callers_are_exported_over_http() {
    let (endpoint, mut received) = http_receiver().await;
    let traced = start_traced(
        OtlpConfig::new(OtlpProtocol::HttpProtobuf)
            .endpoint(endpoint)
            .sample_ratio(0.0),
    )
    .await;
    let mut conn = Http1Connection::open(traced.demo.addr).await;
    for i in 0..5 {
        assert_eq!(conn.request("GET", &format!("/items/{i}")).await.0, 200);
    }
    conn.close().await;
    // A caller that sampled its trace gets our span too, whatever our ratio.
    let sampled_trace = "0af7651916cd43dd8448eb211c80319c";
    let mut stream = send_raw(
        traced.demo.addr,
        format!(
            "GET /items/sampled HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\
             traceparent: 00-{sampled_trace}-b7ad6b7169203331-01\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    let mut answer = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut answer)
        .await
        .expect("the answer");
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
    // The caller's trace, with the "not sampled" flag: a break is kept anyway.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent_id = "00f067aa0ba902b7";
    traced
        .fin_broken_hello(&format!("traceparent: 00-{trace_id}-{parent_id}-00\r\n"))
        .await;
    traced.flush().await.expect("flush");

    let mut seen = Vec::new();
    let span = received
        .wait_for(DEADLINE, &mut seen, is_broken_hello)
        .await
        .expect("the broken request's span arrives");
    assert_broken_hello_span(&span);
    assert_eq!(
        hex(&span.span.trace_id),
        trace_id,
        "joined the caller's trace"
    );
    assert_eq!(hex(&span.span.parent_span_id), parent_id);
    received
        .wait_for(DEADLINE, &mut seen, |s| {
            hex(&s.span.trace_id) == sampled_trace
        })
        .await
        .expect("the span of the caller's sampled trace arrives");
    seen.extend(received.drain());
    let mut names: Vec<_> = seen.iter().map(|s| s.span.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["GET /hello", "GET /items/{id}"],
        "the break and the caller's sampled request; the rest sampled out"
    );
    assert_eq!(traced.pipeline.stats().sampled_out(), 5);
}

/// What a user's handler does: its own `tracing` span, exported through the
/// pipeline's layer for the user's targets.
async fn load_order() -> &'static str {
    tracing::info_span!(target: "shop", "load order").in_scope(|| "order")
}

/// A streaming body whose chunks are made as hyper polls it — after the
/// handler returned — each inside a span of its own.
async fn export_orders() -> axum::body::Body {
    let chunks = futures_util::stream::iter(0..2).map(|i| {
        tracing::info_span!(target: "shop", "render chunk")
            .in_scope(|| Ok::<_, std::convert::Infallible>(format!("chunk {i}\n")))
    });
    axum::body::Body::from_stream(chunks)
}

#[tokio::test]
async fn a_handlers_own_span_is_a_child_of_the_request_span_and_errors_are_marked() {
    let (endpoint, mut received) = grpc_receiver().await;
    let registry = prometheus::Registry::new();
    let pipeline = Arc::new(
        OtlpPipeline::start(
            OtlpConfig::new(OtlpProtocol::Grpc).endpoint(endpoint),
            &registry,
        )
        .expect("pipeline"),
    );
    // Thread-local: the test's current-thread runtime runs the handler here.
    let _subscriber = tracing::subscriber::set_default(
        tracing_subscriber::registry()
            .with(pipeline.layer(Targets::new().with_target("shop", tracing::Level::INFO))),
    );
    let tracer = pipeline.tracer();
    let (addr, _) = serve_app(move |metrics| {
        axum::Router::new()
            .route("/orders/{id}", get(load_order))
            .route("/orders", get(export_orders))
            .route(
                "/fail",
                get(|| async { axum::http::StatusCode::SERVICE_UNAVAILABLE }),
            )
            .layer(DisconnectLayer::new(metrics).with_tracer(tracer))
    })
    .await;
    let mut conn = Http1Connection::open(addr).await;
    assert_eq!(conn.request("GET", "/orders/7").await.0, 200);
    assert_eq!(conn.request("GET", "/fail").await.0, 503);
    let (status, body) = conn.request("GET", "/orders").await;
    assert_eq!((status, &body[..]), (200, &b"chunk 0\nchunk 1\n"[..]));
    conn.close().await;
    flush(&pipeline).await.expect("flush");

    let mut seen = Vec::new();
    for name in ["GET /orders/{id}", "load order", "GET /fail", "GET /orders"] {
        received
            .wait_for(DEADLINE, &mut seen, |s| s.span.name == name)
            .await
            .unwrap_or_else(|| panic!("span {name} arrives; got {seen:?}"));
    }
    let find = |name: &str| {
        seen.iter()
            .find(|s| s.span.name == name)
            .unwrap()
            .span
            .clone()
    };
    let (request, child, failed) = (
        find("GET /orders/{id}"),
        find("load order"),
        find("GET /fail"),
    );

    let streamed = find("GET /orders");
    let chunks: Vec<_> = seen
        .iter()
        .filter(|s| s.span.name == "render chunk")
        .map(|s| &s.span)
        .collect();
    assert_eq!(chunks.len(), 2, "{seen:?}");
    for chunk in chunks {
        assert_eq!(
            (&chunk.trace_id, &chunk.parent_span_id),
            (&streamed.trace_id, &streamed.span_id),
            "a span made while the body streams is the request's child"
        );
    }
    assert_eq!(child.trace_id, request.trace_id, "one trace");
    assert_eq!(
        child.parent_span_id, request.span_id,
        "the handler's span is the child"
    );
    assert!(
        request.parent_span_id.is_empty(),
        "the request span is the root"
    );
    let a = &request.attributes;
    assert_eq!(
        string_attr(a, "http.route").as_deref(),
        Some("/orders/{id}")
    );
    assert_eq!(string_attr(a, "url.path").as_deref(), Some("/orders/7"));
    assert_eq!(int_attr(a, "http.response.status_code"), Some(200));
    assert_eq!(string_attr(a, "error.type"), None);
    assert_ne!(
        request.status.as_ref().map(|s| s.code),
        Some(v1::status::StatusCode::Error as i32)
    );
    assert!(request.events.is_empty(), "{:?}", request.events);

    assert_eq!(
        int_attr(&failed.attributes, "http.response.status_code"),
        Some(503)
    );
    assert_eq!(
        string_attr(&failed.attributes, "error.type").as_deref(),
        Some("503")
    );
    assert_eq!(
        failed.status.as_ref().map(|s| s.code),
        Some(v1::status::StatusCode::Error as i32)
    );
}

#[tokio::test]
async fn with_the_collector_down_requests_are_not_slowed_and_drops_are_counted() {
    let traced = start_traced(
        OtlpConfig::new(OtlpProtocol::Grpc)
            .endpoint(closed_port_endpoint())
            .export_timeout(Duration::from_secs(1))
            .max_queue_size(64),
    )
    .await;
    let rss_before = rss_kib();
    let slowest = serve_many(&traced, 1000).await;
    // No request waited for the exporter's retries. Loose: debug builds on a
    // loaded 2-core machine; a request held by an export would take seconds.
    assert!(
        slowest < Duration::from_secs(5),
        "slowest request {slowest:?}"
    );
    let _ = traced.flush().await;
    let s = wait_for_dropped(&traced).await;
    assert_eq!(s.value("clientgone_otlp_spans_exported_total", &[]), 0.0);
    let grown = rss_kib().saturating_sub(rss_before);
    assert!(grown < 64 * 1024, "RSS grew {grown} KiB over 1000 requests");
}

#[tokio::test]
async fn a_collector_that_never_answers_does_not_stop_the_server() {
    let traced = start_traced(
        OtlpConfig::new(OtlpProtocol::Grpc)
            .endpoint(black_hole().await)
            .export_timeout(Duration::from_secs(30))
            .max_queue_size(16),
    )
    .await;
    let slowest = serve_many(&traced, 600).await;
    // A request held by the export would take its 30 s timeout.
    assert!(
        slowest < Duration::from_secs(5),
        "slowest request {slowest:?}"
    );
    let s = wait_for_dropped(&traced).await;
    assert!(
        s.value(
            "clientgone_otlp_spans_dropped_total",
            &[("reason", "queue_full")]
        ) > 0.0
    );
}

/// Serves `n` requests over 4 keep-alive connections; returns the slowest.
async fn serve_many(traced: &Traced, n: usize) -> Duration {
    let mut conns = Vec::new();
    for _ in 0..4 {
        conns.push(Http1Connection::open(traced.demo.addr).await);
    }
    let mut slowest = Duration::ZERO;
    for i in 0..n {
        let started = Instant::now();
        let (status, _) = conns[i % 4].request("GET", &format!("/items/{i}")).await;
        assert_eq!(status, 200);
        slowest = slowest.max(started.elapsed());
    }
    for conn in conns {
        conn.close().await;
    }
    slowest
}

async fn wait_for_dropped(traced: &Traced) -> Scrape {
    let start = Instant::now();
    loop {
        let s = clientgone_tests::scrape(traced.demo.metrics_addr).await;
        if s.value("clientgone_otlp_spans_dropped_total", &[]) > 0.0 {
            return s;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "no dropped spans counted:\n{}",
            s.text
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
#[cfg_attr(not(grpcio), ignore = "needs Python grpcio: pip install grpcio")]
async fn a_cancelled_grpc_call_is_exported_at_ratio_zero_with_rpc_attributes() {
    use clientgone_tests::grpc::GrpcDriver;
    use serde_json::json;

    let (endpoint, mut received) = grpc_receiver().await;
    let traced = start_traced(
        OtlpConfig::new(OtlpProtocol::Grpc)
            .endpoint(endpoint)
            .sample_ratio(0.0),
    )
    .await;
    let m = traced.demo.metrics_addr;
    let mut client = GrpcDriver::connect(traced.demo.addr);
    // A completed call (not exported at ratio 0), then a cancelled one.
    client
        .start("ok", json!({"method": "Wait", "request": {"delay_ms": 1}}))
        .await;
    assert_eq!(client.result("ok").await.0, "OK");
    client
        .start(
            "c",
            json!({"method": "Wait", "request": {"delay_ms": 60000}}),
        )
        .await;
    wait_for_value(m, "rpc_server_active_calls", &[], 1.0).await;
    client.cancel("c").await;
    wait_for_value(m, "rpc_server_client_disconnects_total", &[], 1.0).await;
    traced.flush().await.expect("flush");

    let mut seen = Vec::new();
    let call = received
        .wait_for(DEADLINE, &mut seen, |s| {
            s.span.name == "clientgone.demo.v1.Demo/Wait"
        })
        .await
        .expect("the cancelled call's span arrives");
    let span = &call.span;
    let e = assert_broken_span(span, "handler", "stream_reset");
    let a = &span.attributes;
    assert_eq!(string_attr(a, "rpc.system.name").as_deref(), Some("grpc"));
    assert_eq!(
        string_attr(a, "rpc.method").as_deref(),
        Some("clientgone.demo.v1.Demo/Wait")
    );
    assert_eq!(
        string_attr(a, "rpc.response.status_code").as_deref(),
        Some("CANCELLED")
    );
    assert_eq!(
        string_attr(a, "network.protocol.version").as_deref(),
        Some("2")
    );
    assert!(double_attr(e, "disconnect.elapsed_s").is_some_and(|s| s > 0.0));
    // The completed call was not exported: one span of the method in all.
    traced.flush().await.expect("flush");
    seen.extend(received.drain());
    let calls = seen
        .iter()
        .filter(|s| s.span.name == "clientgone.demo.v1.Demo/Wait")
        .count();
    assert_eq!(calls, 1, "only the broken call at ratio 0");
}

/// What the handler of `/work` saw of its own trace: the span id its children
/// got as their parent (the current context's), and the `traceparent` it sent
/// downstream.
type Seen = Arc<std::sync::Mutex<Vec<(String, String)>>>;

/// A handler that does what a traced service does: a child span through the
/// OpenTelemetry API and one through `tracing`, and a `traceparent` for a
/// downstream call; `?slow` then waits for a minute (for a client to leave).
fn work(tracer: clientgone::DeferredTracer, seen: Seen) -> axum::routing::MethodRouter {
    use opentelemetry::trace::{Span as _, TraceContextExt as _, Tracer as _};
    get(move |uri: axum::http::Uri| async move {
        let cx = opentelemetry::Context::current();
        tracer.start_with_context("otel child", &cx).end();
        tracing::info_span!(target: "shop", "tracing child").in_scope(|| ());
        let mut headers = std::collections::HashMap::new();
        opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut headers));
        let traceparent = headers.remove("traceparent").unwrap_or_default();
        let parent_id = cx.span().span_context().span_id().to_string();
        seen.lock().unwrap().push((parent_id, traceparent.clone()));
        if uri.query() == Some("slow") {
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
        traceparent
    })
}

#[tokio::test]
async fn deferred_spans_keep_their_children_and_downstream_headers_linked_at_ratio_0_01() {
    let (endpoint, mut received) = grpc_receiver().await;
    let registry = prometheus::Registry::new();
    let pipeline = Arc::new(
        OtlpPipeline::start(
            OtlpConfig::new(OtlpProtocol::Grpc)
                .endpoint(endpoint)
                .sample_ratio(0.01),
            &registry,
        )
        .expect("pipeline"),
    );
    let _subscriber = tracing::subscriber::set_default(
        tracing_subscriber::registry()
            .with(pipeline.layer(Targets::new().with_target("shop", tracing::Level::INFO))),
    );
    let seen: Seen = Arc::default();
    let (tracer, handler_seen) = (pipeline.tracer(), seen.clone());
    let (addr, registry) = serve_app(move |metrics| {
        axum::Router::new()
            .route("/work", work(tracer.clone(), handler_seen))
            .layer(DisconnectLayer::new(metrics).with_tracer(tracer))
    })
    .await;
    let traceparent =
        |trace: &str, flags: &str| format!("traceparent: 00-{trace}-00f067aa0ba902b7-{flags}\r\n");
    let (sampled, unsampled, broken) = (
        "11111111111111111111111111111111",
        "22222222222222222222222222222222",
        "33333333333333333333333333333333",
    );
    // A caller that sampled, and one that did not: both complete.
    for (trace, flags) in [(sampled, "01"), (unsampled, "00")] {
        let request = format!(
            "GET /work HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{}\r\n",
            traceparent(trace, flags)
        );
        let mut stream = send_raw(addr, request.as_bytes()).await;
        let mut answer = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut answer)
            .await
            .expect("the answer");
        let answer = String::from_utf8(answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let header = answer.rsplit("\r\n").next().unwrap().to_owned();
        assert!(
            header.starts_with(&format!("00-{trace}-")) && header.ends_with(&format!("-{flags}")),
            "the downstream header carries the caller's trace: {header}"
        );
    }
    // One that did not sample, and leaves mid-handler: exported all the same.
    let stream = send_raw(
        addr,
        format!(
            "GET /work?slow HTTP/1.1\r\nHost: t\r\n{}\r\n",
            traceparent(broken, "00")
        )
        .as_bytes(),
    )
    .await;
    let value = |name: &str| Scrape::from_registry(&registry).value(name, &[]);
    clientgone_tests::wait_until("the slow request in flight", || async {
        value("http_server_active_requests") == 1.0
    })
    .await;
    close_fin(stream);
    clientgone_tests::wait_until("the break counted", || async {
        value("http_server_client_disconnects_total") == 1.0
    })
    .await;
    flush(&pipeline).await.expect("flush");

    let mut spans = Vec::new();
    for trace in [sampled, broken] {
        received
            .wait_for(DEADLINE, &mut spans, |s| {
                s.span.name == "GET /work" && hex(&s.span.trace_id) == trace
            })
            .await
            .unwrap_or_else(|| panic!("the request span of {trace} arrives: {spans:?}"));
    }
    spans.extend(received.drain());
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3, "{seen:?}");
    for (trace, n) in [(sampled, 0), (broken, 2)] {
        let request = spans
            .iter()
            .find(|s| s.span.name == "GET /work" && hex(&s.span.trace_id) == trace)
            .unwrap();
        let id = hex(&request.span.span_id);
        let (parent_of_children, header) = &seen[n];
        assert_eq!(
            parent_of_children, &id,
            "the children's parent is the exported span"
        );
        assert!(
            header.contains(&format!("-{id}-")),
            "{header} names span {id}"
        );
        assert_eq!(hex(&request.span.parent_span_id), "00f067aa0ba902b7");
    }
    // The sampled request's children arrive, children of the exported span.
    let sampled_request = spans
        .iter()
        .find(|s| s.span.name == "GET /work" && hex(&s.span.trace_id) == sampled)
        .unwrap();
    for child in ["otel child", "tracing child"] {
        let child = spans
            .iter()
            .find(|s| s.span.name == child && hex(&s.span.trace_id) == sampled)
            .unwrap_or_else(|| panic!("{child} arrives: {spans:?}"));
        assert_eq!(child.span.parent_span_id, sampled_request.span.span_id);
    }
    // Nothing of the unsampled, completed request's trace is exported.
    assert!(
        !spans.iter().any(|s| hex(&s.span.trace_id) == unsampled),
        "{spans:?}"
    );
    assert!(pipeline.stats().sampled_out() >= 1);
}
