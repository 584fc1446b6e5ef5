//! What is *not* a break: clean keep-alive traffic, a server-side timeout inside
//! the layer, a graceful shutdown.

use std::future::IntoFuture;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use clientgone::DisconnectLayer;
use clientgone_tests::client::{Http1Connection, read_to_close, send_raw};
use clientgone_tests::{
    DEADLINE, Scrape, scrape, serve_app, start_demo, wait_for_registry_value, wait_for_value,
};
use http::StatusCode;
use tower_http::timeout::TimeoutLayer;

#[tokio::test]
async fn keep_alive_requests_closed_cleanly_are_never_breaks() {
    let demo = start_demo().await;
    let mut tasks = Vec::new();
    for c in 0..5 {
        let addr = demo.addr;
        tasks.push(tokio::spawn(async move {
            let mut conn = Http1Connection::open(addr).await;
            for r in 0..10 {
                let (status, body) = conn.request("GET", &format!("/items/{c}-{r}")).await;
                assert_eq!(status, 200);
                assert_eq!(body, format!("item {c}-{r}\n"));
            }
            conn.close().await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }

    let m = demo.metrics_addr;
    let s = wait_for_value(
        m,
        "http_server_connection_closes_total",
        &[("reason", "idle")],
        5.0,
    )
    .await;
    s.assert_value("http_server_connection_closes_total", &[], 5.0);
    assert_eq!(s.value("http_server_client_disconnects_total", &[]), 0.0);
    let completed = [
        ("http_request_method", "GET"),
        ("http_route", "/items/{id}"),
        ("http_response_status_code", "200"),
        ("outcome", "completed"),
    ];
    assert_eq!(
        s.value("http_server_request_duration_seconds_count", &completed),
        50.0
    );
    assert_eq!(
        s.value("http_server_request_duration_seconds_count", &[]),
        50.0
    );
    assert_eq!(s.value("http_server_open_connections", &[]), 0.0);
    assert_eq!(
        s.value("http_server_connection_duration_seconds_count", &[]),
        5.0
    );
    assert_eq!(s.value("http_server_active_requests", &[]), 0.0);
}

#[tokio::test]
async fn a_timeout_inside_the_layer_is_the_server_answering_not_a_client_leaving() {
    let (addr, registry) = serve_app(|metrics| {
        Router::new()
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    "too late"
                }),
            )
            .layer(TimeoutLayer::with_status_code(
                StatusCode::REQUEST_TIMEOUT,
                Duration::from_millis(50),
            ))
            .layer(DisconnectLayer::new(metrics))
    })
    .await;

    let mut conn = Http1Connection::open(addr).await;
    let (status, _) = conn.request("GET", "/slow").await;
    assert_eq!(status, 408);
    conn.close().await;

    let s = Scrape::from_registry(&registry);
    let timed_out = [
        ("http_route", "/slow"),
        ("http_response_status_code", "408"),
        ("outcome", "completed"),
    ];
    s.assert_value(
        "http_server_request_duration_seconds_count",
        &timed_out,
        1.0,
    );
    s.assert_value("http_server_client_disconnects_total", &[], 0.0);
}

#[tokio::test]
async fn graceful_shutdown_lets_requests_finish_and_counts_no_break() {
    let demo = start_demo().await;
    let addr = demo.addr;
    let request = tokio::spawn(async move {
        let mut conn = Http1Connection::open(addr).await;
        conn.request("GET", "/hello?delay_ms=300").await
    });
    wait_for_value(demo.metrics_addr, "http_server_active_requests", &[], 1.0).await;
    let registry = demo.registry.clone();
    demo.shutdown().await.expect("clean shutdown");

    let (status, body) = request.await.unwrap();
    assert_eq!((status, &body[..]), (200, &b"Hello, World!"[..]));
    assert_stopped_cleanly(&registry, "/hello", "200");
}

/// After a server stop: the one request on `route` is recorded as completed
/// with `status`, nothing counts as a client break, nothing is left open.
fn assert_stopped_cleanly(registry: &prometheus::Registry, route: &str, status: &str) {
    let s = Scrape::from_registry(registry);
    let ended = [
        ("http_route", route),
        ("outcome", "completed"),
        ("http_response_status_code", status),
    ];
    for (family, labels, want) in [
        (
            "http_server_request_duration_seconds_count",
            &ended[..],
            1.0,
        ),
        ("http_server_client_disconnects_total", &[], 0.0),
        ("http_server_active_requests", &[], 0.0),
        ("http_server_open_connections", &[], 0.0),
    ] {
        assert_eq!(s.value(family, labels), want, "{family}\n{}", s.text);
    }
}

#[tokio::test]
async fn metrics_endpoint_serves_healthz_and_the_contract_families() {
    let demo = start_demo().await;
    let (head, body) = clientgone_tests::prom::get(demo.metrics_addr, "/healthz").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, "ok\n");
    let mut conn = Http1Connection::open(demo.addr).await;
    conn.request("GET", "/items/1").await;
    conn.close().await;
    let s = scrape(demo.metrics_addr).await;
    for (family, kind) in [
        ("http_server_request_duration_seconds", "histogram"),
        ("http_server_active_requests", "gauge"),
        ("http_server_open_connections", "gauge"),
        ("http_server_connection_closes_total", "counter"),
        ("http_server_connection_duration_seconds", "histogram"),
    ] {
        assert_eq!(
            s.types.get(family).map(String::as_str),
            Some(kind),
            "{family}"
        );
    }
    // Time-to-abandon buckets reach at least 300 s (checked once a break exists).
    let stream = clientgone_tests::client::send_raw(
        demo.addr,
        b"GET /hello?delay_ms=60000 HTTP/1.1\r\nHost: t\r\n\r\n",
    )
    .await;
    wait_for_value(demo.metrics_addr, "http_server_active_requests", &[], 1.0).await;
    clientgone_tests::client::close_fin(stream);
    let s = wait_for_value(
        demo.metrics_addr,
        "http_server_client_disconnects_total",
        &[],
        1.0,
    )
    .await;
    let top = s
        .matching("http_server_client_disconnect_elapsed_seconds_bucket", &[])
        .filter_map(|(l, _)| l["le"].parse::<f64>().ok())
        .filter(|le| le.is_finite())
        .fold(0.0, f64::max);
    assert!(top >= 300.0, "largest finite bucket {top}");
}

#[tokio::test]
async fn past_the_grace_period_requests_still_running_are_the_servers_doing_not_breaks() {
    let registry = prometheus::Registry::new();
    let metrics = clientgone::Metrics::new(&registry).unwrap();
    let app = Router::new()
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(600)).await;
                "too late"
            }),
        )
        .layer(DisconnectLayer::new(metrics.clone()));
    let listener = clientgone::TrackedListener::bind("127.0.0.1:0", &metrics)
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        clientgone::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .grace_period(Duration::from_millis(200))
            .into_future(),
    );
    // One request that will outlive the grace period, one idle keep-alive
    // connection that the graceful stop closes at once.
    let busy = send_raw(addr, b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n").await;
    let mut idle = Http1Connection::open(addr).await;
    assert_eq!(idle.request("GET", "/nowhere").await.0, 404);
    wait_for_registry_value(&registry, "http_server_active_requests", &[], 1.0).await;
    stop.send(()).unwrap();

    tokio::time::timeout(DEADLINE, server)
        .await
        .expect("serve returns soon after the grace period")
        .unwrap()
        .expect("a clean stop");
    // The server gave up on it: 503, never a client disconnect.
    assert_stopped_cleanly(&registry, "/slow", "503");
    drop(busy);
}

#[tokio::test]
async fn a_streamed_body_with_a_content_length_is_completed_when_its_bytes_are_out() {
    // HTTP/1 hyper stops polling a body once the declared length is written
    // and drops it without asking for its end (as `ServeFile` bodies are).
    let (addr, registry) = serve_app(|metrics| {
        Router::new()
            .route(
                "/empty",
                get(|| async {
                    // Declared empty: hyper never polls the stream at all.
                    let nothing = futures_util::stream::empty::<Result<Bytes, std::io::Error>>();
                    axum::response::Response::builder()
                        .header(http::header::CONTENT_LENGTH, "0")
                        .body(axum::body::Body::from_stream(nothing))
                        .expect("valid response")
                }),
            )
            .route(
                "/file",
                get(|| async {
                    let chunks = futures_util::stream::iter(
                        ["hello ", "world"].map(|c| Ok::<_, std::io::Error>(Bytes::from(c))),
                    );
                    axum::response::Response::builder()
                        .header(http::header::CONTENT_LENGTH, "11")
                        .body(axum::body::Body::from_stream(chunks))
                        .expect("valid response")
                }),
            )
            .layer(DisconnectLayer::new(metrics))
    })
    .await;

    let mut conn = Http1Connection::open(addr).await;
    for _ in 0..3 {
        let (status, body) = conn.request("GET", "/file").await;
        assert_eq!(status, 200);
        assert_eq!(body, "hello world");
    }
    assert_eq!(conn.request("GET", "/empty").await, (200, Bytes::new()));
    conn.close().await;

    let s = wait_for_registry_value(
        &registry,
        "http_server_request_duration_seconds_count",
        &[],
        4.0,
    )
    .await;
    s.assert_value(
        "http_server_request_duration_seconds_count",
        &[("http_route", "/empty"), ("outcome", "completed")],
        1.0,
    );
    let completed = [
        ("http_route", "/file"),
        ("http_response_status_code", "200"),
        ("outcome", "completed"),
    ];
    s.assert_value(
        "http_server_request_duration_seconds_count",
        &completed,
        3.0,
    );
    s.assert_value("http_server_client_disconnects_total", &[], 0.0);
}

/// `GET /panics`, whose handler panics, under the layer.
fn panicking_app(metrics: clientgone::Metrics) -> Router {
    Router::new()
        .route(
            "/panics",
            get(|| async {
                if std::hint::black_box(true) {
                    panic!("the handler fails (expected by this test)");
                }
                "never"
            }),
        )
        .layer(DisconnectLayer::new(metrics))
}

/// Waits for `/panics` to be recorded as one 500, completed; asserts no break.
async fn assert_one_server_failure(registry: &prometheus::Registry) -> Scrape {
    let failed = [
        ("http_route", "/panics"),
        ("http_response_status_code", "500"),
        ("outcome", "completed"),
    ];
    let s = wait_for_registry_value(
        registry,
        "http_server_request_duration_seconds_count",
        &failed,
        1.0,
    )
    .await;
    s.assert_value("http_server_client_disconnects_total", &[], 0.0);
    s
}

/// The usual set-up: tower-http's `CatchPanicLayer` outside, answering 500.
#[tokio::test]
async fn a_panic_caught_outside_the_layer_is_a_500_not_a_break() {
    let (addr, registry) = serve_app(|metrics| {
        panicking_app(metrics).layer(tower_http::catch_panic::CatchPanicLayer::new())
    })
    .await;

    let mut conn = Http1Connection::open(addr).await;
    assert_eq!(conn.request("GET", "/panics").await.0, 500);
    conn.close().await;
    assert_one_server_failure(&registry).await;
}

#[tokio::test]
async fn a_handler_that_panics_is_the_servers_failure_not_a_client_leaving() {
    let (addr, registry) = serve_app(panicking_app).await;

    // The panic ends the connection's task: the client sees the connection close.
    let mut stream = send_raw(addr, b"GET /panics HTTP/1.1\r\nHost: test\r\n\r\n").await;
    let answer = read_to_close(&mut stream).await;
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));

    assert_one_server_failure(&registry).await.assert_value(
        "http_server_active_requests",
        &[],
        0.0,
    );
}

/// A tower service under the layer may panic in `call` itself, before any
/// future exists (axum's routes start only when polled; a plain service need not).
#[test]
fn a_service_that_panics_in_call_is_the_servers_failure() {
    type Answer =
        std::future::Ready<Result<http::Response<axum::body::Body>, std::convert::Infallible>>;
    let registry = prometheus::Registry::new();
    let metrics = clientgone::Metrics::new(&registry).expect("fresh registry");
    let inner = tower::service_fn(|_: http::Request<axum::body::Body>| -> Answer {
        panic!("call fails (expected by this test)")
    });
    let mut service = tower::Layer::layer(&DisconnectLayer::new(metrics), inner);
    let called = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        drop(tower::Service::call(
            &mut service,
            http::Request::new(axum::body::Body::empty()),
        ));
    }));
    assert!(called.is_err(), "the panic goes on to the caller");

    let s = Scrape::from_registry(&registry);
    s.assert_value(
        "http_server_request_duration_seconds_count",
        &[
            ("http_response_status_code", "500"),
            ("outcome", "completed"),
        ],
        1.0,
    );
    s.assert_value("http_server_client_disconnects_total", &[], 0.0);
    s.assert_value("http_server_active_requests", &[], 0.0);
}

/// The README's way to serve `/metrics` on the app's own port: the layered app
/// merged into the metrics router. Scrapes are not requests of the app, and
/// unmatched paths still reach the layer's fallback.
#[tokio::test]
async fn metrics_merged_as_the_readme_says_keep_scrapes_out_and_unmatched_in() {
    let (addr, registry) = serve_app(|metrics| {
        let app = Router::new()
            .route("/hello", get(|| async { "hello" }))
            .layer(DisconnectLayer::new(metrics));
        // Any registry will do here: what counts is the merge.
        clientgone_exporter::metrics_router(prometheus::Registry::new()).merge(app)
    })
    .await;
    let mut conn = Http1Connection::open(addr).await;
    assert_eq!(conn.request("GET", "/hello").await.0, 200);
    assert_eq!(conn.request("GET", "/no/such/path").await.0, 404);
    assert_eq!(conn.request("GET", "/metrics").await.0, 200);
    conn.close().await;

    let s = Scrape::from_registry(&registry);
    s.assert_value("http_server_request_duration_seconds_count", &[], 2.0);
    s.assert_value(
        "http_server_request_duration_seconds_count",
        &[("http_route", "unmatched")],
        1.0,
    );
}

#[tokio::test]
async fn histogram_buckets_given_to_the_demo_are_the_ones_on_metrics() {
    let demo = clientgone_agent::demo::start(clientgone_agent::demo::DemoConfig {
        listen: "127.0.0.1:0".into(),
        metrics_listen: "127.0.0.1:0".into(),
        options: Default::default(),
        registry: prometheus::Registry::new(),
        tracer: None,
        tls: None,
        buckets: clientgone::Buckets {
            request_duration: vec![0.05, 0.5],
            disconnect_elapsed: vec![1.0, 30.0, 300.0],
            connection_duration: vec![60.0],
        },
    })
    .await
    .expect("demo starts");
    let mut conn = Http1Connection::open(demo.addr).await;
    assert_eq!(conn.request("GET", "/items/1").await.0, 200);
    conn.close().await;
    let stream = send_raw(
        demo.addr,
        b"GET /hello?delay_ms=60000 HTTP/1.1\r\nHost: t\r\n\r\n",
    )
    .await;
    wait_for_value(demo.metrics_addr, "http_server_active_requests", &[], 1.0).await;
    drop(stream);
    wait_for_value(
        demo.metrics_addr,
        "http_server_client_disconnects_total",
        &[],
        1.0,
    )
    .await;
    let s = wait_for_value(
        demo.metrics_addr,
        "http_server_connection_duration_seconds_count",
        &[],
        2.0,
    )
    .await;
    for (family, want) in [
        (
            "http_server_request_duration_seconds_bucket",
            vec!["+Inf", "0.05", "0.5"],
        ),
        (
            "http_server_client_disconnect_elapsed_seconds_bucket",
            vec!["+Inf", "1", "30", "300"],
        ),
        (
            "http_server_connection_duration_seconds_bucket",
            vec!["+Inf", "60"],
        ),
    ] {
        let les: Vec<String> = s.label_values(family, "le").into_iter().collect();
        assert_eq!(les, want, "{family}\n{}", s.text);
    }
}

#[tokio::test]
async fn the_demos_health_check_is_in_no_metric() {
    let demo = start_demo().await;
    let mut conn = Http1Connection::open(demo.addr).await;
    for _ in 0..3 {
        let (status, body) = conn.request("GET", "/healthz").await;
        assert_eq!((status, &body[..]), (200, &b"ok\n"[..]));
    }
    assert_eq!(conn.request("GET", "/items/1").await.0, 200);
    conn.close().await;
    let s = wait_for_value(
        demo.metrics_addr,
        "http_server_connection_closes_total",
        &[("reason", "idle")],
        1.0,
    )
    .await;
    let routes = s.label_values("http_server_request_duration_seconds_count", "http_route");
    assert_eq!(routes, ["/items/{id}".to_owned()].into(), "{}", s.text);
    assert!(!s.text.contains("/healthz"), "{}", s.text);
}

#[tokio::test]
async fn a_skipped_route_broken_off_by_its_client_is_no_break() {
    // The skipped handler says when it runs: the metrics cannot.
    let entered = std::sync::Arc::new(tokio::sync::Notify::new());
    let probe_entered = entered.clone();
    let (addr, registry) = serve_app(move |metrics| {
        let slow = || async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            "late"
        };
        let probe = move || async move {
            probe_entered.notify_one();
            tokio::time::sleep(Duration::from_secs(60)).await;
            "late"
        };
        Router::new()
            .route("/probe/{*rest}", get(probe))
            .route("/slow", get(slow))
            .layer(DisconnectLayer::new(metrics).skip(["/probe/{*rest}"]))
    })
    .await;
    let skipped = send_raw(addr, b"GET /probe/deep HTTP/1.1\r\nHost: t\r\n\r\n").await;
    tokio::time::timeout(DEADLINE, entered.notified())
        .await
        .expect("the skipped handler runs");
    let counted = send_raw(addr, b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n").await;
    wait_for_registry_value(&registry, "http_server_active_requests", &[], 1.0).await;
    drop(skipped);
    drop(counted);
    let s =
        wait_for_registry_value(&registry, "http_server_connection_closes_total", &[], 2.0).await;
    s.assert_value(
        "http_server_client_disconnects_total",
        &[("http_route", "/slow")],
        1.0,
    );
    s.assert_value("http_server_client_disconnects_total", &[], 1.0);
    assert!(!s.text.contains("/probe"), "{}", s.text);
    assert_eq!(s.value("http_server_active_requests", &[]), 0.0);
}
