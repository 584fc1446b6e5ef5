//! `clientgone traffic` is the proof users run themselves: its summary must equal
//! the counters' deltas on `/metrics`.

use clientgone_agent::traffic::{self, Kind, TrafficConfig};
use clientgone_tests::{scrape, start_demo, wait_for_value};
use tokio_util::sync::CancellationToken;

fn expected_labels(kind: Kind) -> (&'static str, Vec<(&'static str, &'static str)>) {
    let e = kind.expectation();
    (e.metric(), e.labels())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_summary_of_2000_requests_equals_the_counter_deltas() {
    let demo = start_demo().await;
    let before = scrape(demo.metrics_addr).await;
    let config = TrafficConfig {
        rate: 2000.0,
        requests: Some(2000),
        duration: None,
        concurrency: 128,
        seed: 42,
        ..TrafficConfig::new(demo.addr)
    };
    let summary = traffic::run(config, CancellationToken::new()).await;
    assert_eq!(summary.failed_total(), 0, "{summary}");
    assert_eq!(summary.sent(), 2000, "{summary}");
    for kind in Kind::ALL {
        assert!(
            summary.ok(kind) > 0,
            "the default mix has every kind: {summary}"
        );
        let (name, labels) = expected_labels(kind);
        let want = before.value(name, &labels) + summary.ok(kind) as f64;
        wait_for_value(demo.metrics_addr, name, &labels, want).await;
    }
    wait_for_value(demo.metrics_addr, "http_server_active_requests", &[], 0.0).await;
    let after = wait_for_value(demo.metrics_addr, "rpc_server_active_calls", &[], 0.0).await;
    let count = |grpc: bool, broken: bool| -> f64 {
        Kind::ALL
            .iter()
            .filter(|k| k.is_grpc() == grpc && k.expectation().disconnect.is_some() == broken)
            .map(|k| summary.ok(*k) as f64)
            .sum()
    };
    assert_eq!(
        after.value("http_server_client_disconnects_total", &[]),
        count(false, true),
        "no break beyond the scripted ones: {summary}\n{}",
        after.text
    );
    assert_eq!(
        after.value("rpc_server_client_disconnects_total", &[]),
        count(true, true),
        "no gRPC break beyond the scripted ones: {summary}\n{}",
        after.text
    );
    assert_eq!(
        after.value("http_server_request_duration_seconds_count", &[]),
        count(false, true) + count(false, false),
        "every request observed once"
    );
    assert_eq!(
        after.value("rpc_server_call_duration_seconds_count", &[]),
        count(true, true) + count(true, false),
        "every call observed once, and in the gRPC metrics only"
    );
    wait_for_value(demo.metrics_addr, "http_server_open_connections", &[], 0.0).await;
}
