//! Metrics pushed over OTLP equal `/metrics`, series by series: the demo under
//! scripted completed and broken requests, its registry pushed to in-process
//! receivers (gRPC and HTTP, on the official `opentelemetry-proto` messages),
//! compared with a scrape taken at the same counts. The expected points are
//! built from the scrape's text with the contract's names — not with the
//! bridge's own table.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clientgone_agent::demo::{self, DemoConfig, RunningDemo};
use clientgone_exporter::otlp::{MetricsConfig, OtlpMetrics, OtlpProtocol};
use clientgone_tests::client::{Http1Connection, close_rst, send_raw};
use clientgone_tests::otlp::{
    Point, black_hole, closed_port_endpoint, grpc_metrics_receiver, http_metrics_receiver,
};
use clientgone_tests::{DEADLINE, Scrape, scrape, wait_for_value, wait_until};

/// The contract's "Metrics over OTLP" names.
const NAMES: &[(&str, &str)] = &[
    (
        "http_server_request_duration_seconds",
        "http.server.request.duration",
    ),
    ("http_server_active_requests", "http.server.active_requests"),
    (
        "http_server_client_disconnects_total",
        "http.server.client_disconnects",
    ),
    (
        "http_server_client_disconnect_elapsed_seconds",
        "http.server.client_disconnect.elapsed",
    ),
    (
        "http_server_open_connections",
        "http.server.open_connections",
    ),
    (
        "http_server_connection_closes_total",
        "http.server.connection.closes",
    ),
    (
        "http_server_connection_duration_seconds",
        "http.server.connection.duration",
    ),
];

fn attribute_key(label: &str) -> &str {
    match label {
        "http_request_method" => "http.request.method",
        "http_route" => "http.route",
        "http_response_status_code" => "http.response.status_code",
        other => other,
    }
}

/// A histogram's count, sum and cumulative buckets `(le, count)`.
type HistogramSeries = (f64, f64, Vec<(f64, f64)>);

/// What the collector should hold, from the scrape's text.
fn expected(s: &Scrape) -> Vec<Point> {
    let mut points: BTreeMap<(String, Vec<String>), Vec<f64>> = BTreeMap::new();
    let attrs = |labels: &clientgone_tests::Labels| {
        let mut a: Vec<String> = labels
            .iter()
            .filter(|(k, _)| *k != "le")
            .map(|(k, v)| format!("{}={v}", attribute_key(k)))
            .collect();
        a.sort();
        a
    };
    for (prom, otel) in NAMES {
        match s.types.get(*prom).map(String::as_str) {
            Some("histogram") => {
                // count, sum, then per-bucket counts from the cumulative `le`s.
                let mut series: BTreeMap<Vec<String>, HistogramSeries> = BTreeMap::new();
                for (name, labels, v) in &s.samples {
                    let entry = series.entry(attrs(labels)).or_default();
                    if *name == format!("{prom}_count") {
                        entry.0 = *v;
                    } else if *name == format!("{prom}_sum") {
                        entry.1 = *v;
                    } else if *name == format!("{prom}_bucket") {
                        let le = labels["le"].parse::<f64>().unwrap_or(f64::INFINITY);
                        entry.2.push((le, *v));
                    }
                }
                for (a, (count, sum, mut buckets)) in series {
                    if buckets.is_empty() {
                        continue;
                    }
                    buckets.sort_by(|x, y| x.0.total_cmp(&y.0));
                    let mut values = vec![count, sum];
                    let mut below = 0.0;
                    for (_, cumulative) in buckets {
                        values.push(cumulative - below);
                        below = cumulative;
                    }
                    points.insert((otel.to_string(), a), values);
                }
            }
            Some(_) => {
                for (labels, v) in s.matching(prom, &[]) {
                    points.insert((otel.to_string(), attrs(labels)), vec![v]);
                }
            }
            None => {}
        }
    }
    points
        .into_iter()
        .map(|((metric, attributes), values)| Point {
            metric,
            attributes,
            values,
        })
        .collect()
}

fn sums_close(a: &[Point], b: &[Point]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.metric == y.metric
                && x.attributes == y.attributes
                && x.values.len() == y.values.len()
                && x.values
                    .iter()
                    .zip(&y.values)
                    .all(|(p, q)| (p - q).abs() <= 1e-9 * p.abs().max(1.0))
        })
}

async fn start_demo(registry: prometheus::Registry) -> RunningDemo {
    demo::start(DemoConfig {
        listen: "127.0.0.1:0".into(),
        metrics_listen: "127.0.0.1:0".into(),
        options: Default::default(),
        registry,
        tracer: None,
        buckets: Default::default(),
        tls: None,
    })
    .await
    .expect("demo starts")
}

/// Completed requests, a FIN-broken and an RST-broken one.
async fn scripted(demo: &RunningDemo) -> Scrape {
    let mut conn = Http1Connection::open(demo.addr).await;
    for i in 0..5 {
        assert_eq!(conn.request("GET", &format!("/items/{i}")).await.0, 200);
    }
    conn.close().await;
    for rst in [false, true] {
        let stream = send_raw(
            demo.addr,
            b"GET /hello?delay_ms=60000 HTTP/1.1\r\nHost: t\r\n\r\n",
        )
        .await;
        wait_for_value(demo.metrics_addr, "http_server_active_requests", &[], 1.0).await;
        if rst {
            close_rst(stream);
        } else {
            drop(stream);
        }
        wait_for_value(demo.metrics_addr, "http_server_active_requests", &[], 0.0).await;
    }
    wait_for_value(demo.metrics_addr, "http_server_open_connections", &[], 0.0).await
}

async fn pushed_equals_scraped(protocol: OtlpProtocol) {
    let (endpoint, mut received) = match protocol {
        OtlpProtocol::Grpc => grpc_metrics_receiver().await,
        _ => http_metrics_receiver().await,
    };
    let registry = prometheus::Registry::new();
    let demo = start_demo(registry.clone()).await;
    let push = OtlpMetrics::start(
        MetricsConfig::new(protocol, endpoint, Duration::from_millis(100)),
        &registry,
    )
    .expect("the bridge starts");
    let s = scripted(&demo).await;
    let want = expected(&s);
    assert!(
        want.iter()
            .any(|p| p.metric == "http.server.client_disconnects"),
        "the script broke requests: {}",
        s.text
    );
    // The counts stand still now; the next exports carry exactly them.
    let got = received
        .wait_for(DEADLINE, |points| sums_close(points, &want))
        .await;
    assert!(
        got.is_some(),
        "no export equal to /metrics within {DEADLINE:?}; wanted {want:#?}"
    );
    // Attributes are spelt with dots; the status code is a number.
    assert!(want.iter().any(|p| {
        p.attributes
            .contains(&"http.response.status_code=499".to_owned())
    }));
    push.shutdown().await;
}

#[tokio::test]
async fn pushed_over_grpc_the_points_equal_metrics() {
    pushed_equals_scraped(OtlpProtocol::Grpc).await;
}

#[tokio::test]
async fn pushed_over_http_the_points_equal_metrics() {
    pushed_equals_scraped(OtlpProtocol::HttpProtobuf).await;
}

#[tokio::test]
async fn a_collector_that_is_down_costs_requests_nothing_and_drops_are_counted() {
    for endpoint in [closed_port_endpoint(), black_hole().await] {
        let registry = prometheus::Registry::new();
        let demo = start_demo(registry.clone()).await;
        let mut config =
            MetricsConfig::new(OtlpProtocol::Grpc, endpoint, Duration::from_millis(50));
        config.timeout = Duration::from_secs(2);
        let push = OtlpMetrics::start(config, &registry).expect("the bridge starts");
        let mut conn = Http1Connection::open(demo.addr).await;
        let mut slowest = Duration::ZERO;
        for i in 0..200 {
            let started = Instant::now();
            assert_eq!(conn.request("GET", &format!("/items/{i}")).await.0, 200);
            slowest = slowest.max(started.elapsed());
        }
        conn.close().await;
        // Exports fail (or hang for 2 s) meanwhile; no request waited on one.
        assert!(
            slowest < Duration::from_secs(1),
            "slowest request {slowest:?}"
        );
        wait_until("failed exports' points counted as dropped", || async {
            scrape(demo.metrics_addr).await.value(
                "clientgone_otlp_metric_points_dropped_total",
                &[("reason", "export_failed")],
            ) > 0.0
        })
        .await;
        push.shutdown().await;
    }
}
