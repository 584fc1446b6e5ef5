//! `clientgone traffic` is the proof users run themselves: its summary must equal
//! the counters' deltas on `/metrics`.

use clientgone_agent::traffic::{self, Kind, TrafficConfig};
use clientgone_tests::{scrape, start_demo, wait_for_value};
use tokio_util::sync::CancellationToken;

fn expected_labels(kind: Kind) -> (&'static str, Vec<(&'static str, &'static str)>) {
    let e = kind.expectation();
    let mut labels = vec![("http_route", e.route), ("http_request_method", e.method)];
    match e.disconnect {
        None => {
            labels.push(("outcome", "completed"));
            ("http_server_request_duration_seconds_count", labels)
        }
        Some((phase, cause)) => {
            labels.extend([("phase", phase), ("cause", cause)]);
            ("http_server_client_disconnects_total", labels)
        }
    }
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
    let after = wait_for_value(demo.metrics_addr, "http_server_active_requests", &[], 0.0).await;
    let breaks: u64 = Kind::ALL
        .iter()
        .filter(|k| k.expectation().disconnect.is_some())
        .map(|k| summary.ok(*k))
        .sum();
    assert_eq!(
        after.value("http_server_client_disconnects_total", &[]),
        breaks as f64,
        "no break beyond the scripted ones: {summary}\n{}",
        after.text
    );
    assert_eq!(
        after.value("http_server_request_duration_seconds_count", &[]),
        2000.0,
        "every request observed once"
    );
    wait_for_value(demo.metrics_addr, "http_server_open_connections", &[], 0.0).await;
}
