//! gRPC through `clientgone proxy --grpc-descriptor`: Python grpcio on both
//! sides — the client cancels, runs out of time or completes; the upstream
//! reports when its call was cancelled, so the proxy's cancel is measured
//! where it lands.

use std::time::{Duration, Instant};

use clientgone_agent::demo::grpc;
use clientgone_agent::proxy::{self, ProxyConfig, RouteTable, Upstream};
use clientgone_agent::server::{RunningServer, ServerConfig};
use clientgone_tests::grpc::{GrpcDriver, GrpcUpstream};
use clientgone_tests::otlp::closed_port_endpoint;
use clientgone_tests::{Scrape, wait_for_value};
use serde_json::json;

const WAIT: &str = "clientgone.demo.v1.Demo/Wait";
const TICKS: &str = "clientgone.demo.v1.Demo/Ticks";
const UPLOAD: &str = "clientgone.demo.v1.Demo/Upload";
const ECHO: &str = "clientgone.demo.v1.Demo/Echo";

async fn start_proxy(upstream: &str) -> RunningServer {
    start_proxy_with(upstream, Some(grpc::methods())).await
}

async fn start_proxy_with(upstream: &str, grpc: Option<clientgone::GrpcMethods>) -> RunningServer {
    proxy::start(ProxyConfig {
        server: ServerConfig {
            listen: "127.0.0.1:0".into(),
            metrics_listen: "127.0.0.1:0".into(),
            options: Default::default(),
            registry: prometheus::Registry::new(),
            tracer: None,
            buckets: Default::default(),
            tls: None,
        },
        upstream: Upstream::parse(upstream).unwrap(),
        routes: RouteTable::new(Vec::new()).unwrap(),
        upstream_timeout: Duration::from_secs(60),
        grpc,
        skip: Vec::new(),
        upstream_ca: None,
    })
    .await
    .expect("proxy starts")
}

fn calls<'a>(method: &'a str, status: &'a str, outcome: &'a str) -> [(&'a str, &'a str); 3] {
    [
        ("rpc_method", method),
        ("rpc_response_status_code", status),
        ("outcome", outcome),
    ]
}

fn upstream_outcome(s: &Scrape, outcome: &str) -> f64 {
    s.value(
        "http_client_request_duration_seconds_count",
        &[("outcome", outcome)],
    )
}

#[tokio::test]
#[cfg_attr(not(grpcio), ignore = "needs Python grpcio: pip install grpcio")]
async fn a_cancel_is_counted_and_reaches_the_upstream_within_200_ms() {
    let mut upstream = GrpcUpstream::start().await;
    let proxy = start_proxy(&format!("h2c://{}", upstream.addr)).await;
    let mut client = GrpcDriver::connect(proxy.addr);
    client
        .start(
            "a",
            json!({"method": "Wait", "request": {"delay_ms": 60000}}),
        )
        .await;
    upstream.wait_for("start", "Wait").await;
    let cancelled_at = Instant::now();
    client.cancel("a").await;
    let seen = upstream.wait_for("cancelled", "Wait").await;
    let delay = seen.at.saturating_duration_since(cancelled_at);
    assert!(
        delay < Duration::from_millis(200),
        "the upstream saw the cancel {delay:?} after the client"
    );
    let m = proxy.metrics_addr;
    let s = wait_for_value(
        m,
        "rpc_server_client_disconnects_total",
        &[
            ("rpc_method", WAIT),
            ("phase", "handler"),
            ("cause", "stream_reset"),
        ],
        1.0,
    )
    .await;
    s.assert_value(
        "rpc_server_call_duration_seconds_count",
        &calls(WAIT, "CANCELLED", "client_disconnect"),
        1.0,
    );
    let s = wait_for_value(
        m,
        "http_client_request_duration_seconds_count",
        &[("outcome", "cancelled")],
        1.0,
    )
    .await;
    assert_eq!(
        s.value("http_server_request_duration_seconds_count", &[]),
        0.0
    );
    assert_eq!(client.result("a").await.0, "CANCELLED");
}

#[tokio::test]
#[cfg_attr(not(grpcio), ignore = "needs Python grpcio: pip install grpcio")]
async fn all_four_rpc_types_stream_through_with_their_trailers() {
    let upstream = GrpcUpstream::start().await;
    let proxy = start_proxy(&format!("h2c://{}", upstream.addr)).await;
    let mut client = GrpcDriver::connect(proxy.addr);
    client
        .start("w", json!({"method": "Wait", "request": {"delay_ms": 10}}))
        .await;
    client
        .start(
            "t",
            json!({"method": "Ticks", "request": {"count": 3, "interval_ms": 10}}),
        )
        .await;
    client
        .start("u", json!({"method": "Upload", "chunks": 3}))
        .await;
    client
        .start("e", json!({"method": "Echo", "chunks": 3}))
        .await;
    client
        .start(
            "x",
            json!({"method": "Wait", "request": {"delay_ms": 4_000_000}}),
        )
        .await;
    let (code, messages) = client.result("w").await;
    assert_eq!(
        (code.as_str(), &messages[0]["1"]),
        ("OK", &json!("Hello, World!"))
    );
    let (code, messages) = client.result("t").await;
    assert_eq!((code.as_str(), messages.len()), ("OK", 3));
    let (code, messages) = client.result("u").await;
    assert_eq!((code.as_str(), &messages[0]["1"]), ("OK", &json!(3000)));
    let (code, messages) = client.result("e").await;
    assert_eq!((code.as_str(), messages.len()), ("OK", 3));
    // The upstream's error status passes through, as a status, not a break.
    assert_eq!(client.result("x").await.0, "INVALID_ARGUMENT");

    let m = proxy.metrics_addr;
    let s = wait_for_value(m, "rpc_server_call_duration_seconds_count", &[], 5.0).await;
    for (method, rpc_type) in [
        (WAIT, "unary"),
        (TICKS, "server_streaming"),
        (UPLOAD, "client_streaming"),
        (ECHO, "bidi_streaming"),
    ] {
        s.assert_value(
            "rpc_server_call_duration_seconds_count",
            &[
                ("rpc_method", method),
                ("rpc_type", rpc_type),
                ("rpc_response_status_code", "OK"),
                ("outcome", "completed"),
            ],
            1.0,
        );
    }
    s.assert_value(
        "rpc_server_call_duration_seconds_count",
        &calls(WAIT, "INVALID_ARGUMENT", "completed"),
        1.0,
    );
    assert_eq!(s.value("rpc_server_client_disconnects_total", &[]), 0.0);
    let s = wait_for_value(
        m,
        "http_client_request_duration_seconds_count",
        &[("outcome", "completed")],
        5.0,
    )
    .await;
    assert_eq!(s.value("rpc_server_active_calls", &[]), 0.0);
}

#[tokio::test]
#[cfg_attr(not(grpcio), ignore = "needs Python grpcio: pip install grpcio")]
async fn a_server_stream_cancelled_and_a_deadline_through_the_proxy() {
    let mut upstream = GrpcUpstream::start().await;
    let proxy = start_proxy(&format!("h2c://{}", upstream.addr)).await;
    let mut client = GrpcDriver::connect(proxy.addr);
    client
        .start(
            "t",
            json!({"method": "Ticks", "request": {"count": 1000, "interval_ms": 20}, "cancel_after": 3}),
        )
        .await;
    let (code, messages) = client.result("t").await;
    assert_eq!((code.as_str(), messages.len()), ("CANCELLED", 3));
    upstream.wait_for("cancelled", "Ticks").await;
    client
        .start(
            "d",
            json!({"method": "Wait", "request": {"delay_ms": 60000}, "timeout": 0.3}),
        )
        .await;
    assert_eq!(client.result("d").await.0, "DEADLINE_EXCEEDED");
    upstream.wait_for("cancelled", "Wait").await;

    let m = proxy.metrics_addr;
    let s = wait_for_value(m, "rpc_server_client_disconnects_total", &[], 2.0).await;
    s.assert_value(
        "rpc_server_client_disconnects_total",
        &[
            ("rpc_method", TICKS),
            ("rpc_type", "server_streaming"),
            ("phase", "response_body"),
            ("cause", "stream_reset"),
        ],
        1.0,
    );
    s.assert_value(
        "rpc_server_client_disconnects_total",
        &[("rpc_method", WAIT), ("cause", "deadline_exceeded")],
        1.0,
    );
}

#[tokio::test]
#[cfg_attr(not(grpcio), ignore = "needs Python grpcio: pip install grpcio")]
async fn an_unreachable_upstream_answers_unavailable_and_is_no_client_break() {
    let closed = closed_port_endpoint();
    let closed = closed.trim_start_matches("http://");
    let proxy = start_proxy(&format!("h2c://{closed}")).await;
    let mut client = GrpcDriver::connect(proxy.addr);
    client
        .start("a", json!({"method": "Wait", "request": {"delay_ms": 10}}))
        .await;
    assert_eq!(client.result("a").await.0, "UNAVAILABLE");
    let m = proxy.metrics_addr;
    let s = wait_for_value(
        m,
        "rpc_server_call_duration_seconds_count",
        &calls(WAIT, "UNAVAILABLE", "completed"),
        1.0,
    )
    .await;
    assert_eq!(s.value("rpc_server_client_disconnects_total", &[]), 0.0);
    assert_eq!(upstream_outcome(&s, "error"), 1.0, "{}", s.text);
}

#[tokio::test]
#[cfg_attr(not(grpcio), ignore = "needs Python grpcio: pip install grpcio")]
async fn without_a_descriptor_grpc_passes_through_as_http() {
    let upstream = GrpcUpstream::start().await;
    let proxy = start_proxy_with(&format!("h2c://{}", upstream.addr), None).await;
    let mut client = GrpcDriver::connect(proxy.addr);
    client
        .start("w", json!({"method": "Wait", "request": {"delay_ms": 10}}))
        .await;
    client
        .start(
            "t",
            json!({"method": "Ticks", "request": {"count": 2, "interval_ms": 10}}),
        )
        .await;
    assert_eq!(client.result("w").await.0, "OK");
    let (code, messages) = client.result("t").await;
    assert_eq!((code.as_str(), messages.len()), ("OK", 2));
    let s = wait_for_value(
        proxy.metrics_addr,
        "http_server_request_duration_seconds_count",
        &[("http_request_method", "POST"), ("outcome", "completed")],
        2.0,
    )
    .await;
    assert_eq!(s.value("rpc_server_call_duration_seconds_count", &[]), 0.0);
}
