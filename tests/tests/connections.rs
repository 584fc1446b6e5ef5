//! Connection accounting on loopback: every connection closes exactly once, with
//! the right reason; slow-loris heads are cut off by the header-read timeout.

use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use clientgone::{ConnectionOptions, DisconnectLayer};
use clientgone_tests::client::{
    H2Connection, Http1Connection, close_fin, close_rst, read_to_close, read_until, send_raw,
};
use clientgone_tests::{
    serve_app, serve_app_on, start_demo, start_demo_with, wait_for_registry_value, wait_for_value,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CLOSES: &str = "http_server_connection_closes_total";

#[tokio::test]
async fn close_reasons_are_exact_for_idle_client_abort_and_reset() {
    let demo = start_demo().await;
    // 3 × idle: a completed request, then FIN.
    for i in 0..3 {
        let mut conn = Http1Connection::open(demo.addr).await;
        conn.request("GET", &format!("/items/{i}")).await;
        conn.close().await;
    }
    // 4 × reset: a completed request, then RST with nothing in flight.
    for i in 0..4 {
        let mut stream = send_raw(
            demo.addr,
            format!("GET /items/{i} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes(),
        )
        .await;
        read_until(&mut stream, format!("item {i}\n").as_bytes()).await;
        close_rst(stream);
    }
    // 2 × client_abort: FIN and RST while the handler runs.
    for close in [close_fin, close_rst] {
        let stream = send_raw(
            demo.addr,
            b"GET /hello?delay_ms=60000 HTTP/1.1\r\nHost: t\r\n\r\n",
        )
        .await;
        wait_for_value(demo.metrics_addr, "http_server_active_requests", &[], 1.0).await;
        close(stream);
        wait_for_value(demo.metrics_addr, "http_server_active_requests", &[], 0.0).await;
    }

    let s = wait_for_value(demo.metrics_addr, "http_server_open_connections", &[], 0.0).await;
    for (reason, n) in [
        ("idle", 3.0),
        ("reset", 4.0),
        ("client_abort", 2.0),
        ("incomplete_request", 0.0),
        ("timeout", 0.0),
        ("server", 0.0),
    ] {
        assert_eq!(
            s.value(CLOSES, &[("reason", reason)]),
            n,
            "{reason}: {}",
            s.text
        );
    }
    assert_eq!(
        s.value("http_server_connection_duration_seconds_count", &[]),
        9.0
    );
    assert_eq!(s.value("http_server_client_disconnects_total", &[]), 2.0);
}

#[tokio::test]
async fn slowloris_heads_are_closed_as_incomplete_requests_while_others_are_served() {
    const LORIS: usize = 50;
    let timeout = Duration::from_secs(2);
    let demo = start_demo_with(ConnectionOptions::default().header_read_timeout(timeout)).await;
    // "P" first, like the HTTP/2 preface: one byte at a time it must not pass for one.
    let head =
        b"POST /upload HTTP/1.1\r\nHost: slow\r\nContent-Length: 0\r\nX-Padding: aaaa\r\n\r\n";

    let mut lorises = Vec::new();
    for _ in 0..LORIS {
        let addr = demo.addr;
        lorises.push(tokio::spawn(async move {
            let opened = Instant::now();
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            // One header byte per second, until the server hangs up. The pacing
            // is the attack itself, not a wait for a condition.
            for byte in head {
                if stream.write_all(&[*byte]).await.is_err() {
                    break;
                }
                let mut probe = [0u8; 1];
                tokio::select! {
                    _ = tokio::io::AsyncReadExt::read(&mut stream, &mut probe) => break,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
            let answer = read_to_close(&mut stream).await;
            (opened.elapsed(), answer)
        }));
    }
    wait_for_value(
        demo.metrics_addr,
        "http_server_open_connections",
        &[],
        LORIS as f64,
    )
    .await;

    // Normal traffic is served meanwhile.
    let mut conn = Http1Connection::open(demo.addr).await;
    for i in 0..20 {
        let (status, body) = conn.request("GET", &format!("/items/{i}")).await;
        assert_eq!((status, body), (200, format!("item {i}\n").into()));
    }
    conn.close().await;

    for loris in lorises {
        let (lived, answer) = loris.await.unwrap();
        assert!(
            lived >= timeout,
            "closed after {lived:?}, before the timeout"
        );
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            !answer.contains("HTTP/1.1 200"),
            "a slow head was served: {answer}"
        );
    }
    let s = wait_for_value(
        demo.metrics_addr,
        CLOSES,
        &[("reason", "incomplete_request")],
        LORIS as f64,
    )
    .await;
    let s = if s.value(CLOSES, &[]) == LORIS as f64 + 1.0 {
        s
    } else {
        wait_for_value(demo.metrics_addr, CLOSES, &[], LORIS as f64 + 1.0).await
    };
    s.assert_value(CLOSES, &[("reason", "idle")], 1.0);
    assert_eq!(s.value("http_server_client_disconnects_total", &[]), 0.0);
    let completed = [("http_route", "/items/{id}"), ("outcome", "completed")];
    assert_eq!(
        s.value("http_server_request_duration_seconds_count", &completed),
        20.0
    );
    s.assert_value("http_server_request_duration_seconds_count", &[], 20.0);
}

#[tokio::test]
async fn a_client_that_asks_for_the_close_closes_idle_even_though_the_server_closes_the_socket() {
    let demo = start_demo().await;
    for request in [
        "GET /items/1 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        "GET /items/2 HTTP/1.1\r\nHost: t\r\nConnection: Keep-Alive, Close\r\n\r\n",
        "GET /items/3 HTTP/1.0\r\n\r\n",
    ] {
        let mut stream = send_raw(demo.addr, request.as_bytes()).await;
        // The server answers and closes first; the client only reads.
        let answer = read_to_close(&mut stream).await;
        assert!(answer.starts_with(b"HTTP/1."), "{answer:?}");
    }
    let s = wait_for_value(demo.metrics_addr, "http_server_open_connections", &[], 0.0).await;
    s.assert_value(CLOSES, &[("reason", "idle")], 3.0);
    s.assert_value(CLOSES, &[], 3.0);
    assert_eq!(s.value("http_server_client_disconnects_total", &[]), 0.0);
}

/// The same under `axum::serve`, as the README allows: the layer reads the
/// requests for the client's close.
#[tokio::test]
async fn under_axum_serve_a_client_that_asks_for_the_close_closes_idle() {
    let registry = prometheus::Registry::new();
    let metrics = clientgone::Metrics::new(&registry).unwrap();
    let listener = clientgone::TrackedListener::bind("127.0.0.1:0", &metrics)
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new()
        .route("/items/{id}", axum::routing::get(|| async { "item" }))
        .layer(clientgone::DisconnectLayer::new(metrics));
    tokio::spawn(
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<clientgone::TrackedConnection>(),
        )
        .into_future(),
    );
    for request in [
        "GET /items/1 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        "GET /items/2 HTTP/1.0\r\n\r\n",
    ] {
        let mut stream = send_raw(addr, request.as_bytes()).await;
        let answer = read_to_close(&mut stream).await;
        assert!(answer.starts_with(b"HTTP/1."), "{answer:?}");
    }
    let s = clientgone_tests::wait_for_registry_value(
        &registry,
        "http_server_open_connections",
        &[],
        0.0,
    )
    .await;
    s.assert_value(CLOSES, &[("reason", "idle")], 2.0);
    s.assert_value(CLOSES, &[], 2.0);
}

/// `make_app` served as a user would, with this header-read timeout.
async fn serve_with_head_timeout(
    timeout: Duration,
    make_app: impl FnOnce(clientgone::Metrics) -> Router,
) -> (std::net::SocketAddr, prometheus::Registry) {
    let options = ConnectionOptions::default().header_read_timeout(timeout);
    serve_app_on("127.0.0.1:0", options, make_app).await
}

/// A request on a route the layer does not cover is still a request in flight
/// to `clientgone::serve`: the header-read timeout does not cut it off.
#[tokio::test]
async fn a_slow_request_on_a_route_outside_the_layer_is_not_cut_by_the_header_timeout() {
    let timeout = Duration::from_millis(300);
    let (addr, registry) = serve_with_head_timeout(timeout, |metrics| {
        Router::new()
            .route("/covered", get(|| async { "covered" }))
            .layer(DisconnectLayer::new(metrics))
            // Added after the layer: not covered by it.
            .route(
                "/uncovered",
                get(move || async move {
                    // Slower than the longest a head may wait (1.5 × timeout).
                    tokio::time::sleep(timeout * 4).await;
                    "uncovered"
                }),
            )
    })
    .await;

    let mut conn = Http1Connection::open(addr).await;
    assert_eq!(
        conn.request("GET", "/uncovered").await,
        (200, "uncovered".into())
    );
    assert_eq!(
        conn.request("GET", "/covered").await,
        (200, "covered".into())
    );
    conn.close().await;
    let s = wait_for_registry_value(&registry, CLOSES, &[], 1.0).await;
    s.assert_value(CLOSES, &[("reason", "idle")], 1.0);
}

/// An HTTP/2 connection that a pooled client opens ahead of its first request
/// has no head to wait for: the watcher leaves it alone, while an HTTP/1
/// connection that sends nothing is cut.
#[tokio::test]
async fn an_http2_connection_idle_before_its_first_request_is_not_cut() {
    let timeout = Duration::from_millis(300);
    let (addr, registry) = serve_with_head_timeout(timeout, |metrics| {
        Router::new()
            .route("/hello", get(|| async { "hello" }))
            .layer(DisconnectLayer::new(metrics))
    })
    .await;

    let mut h2 = H2Connection::open(addr).await;
    // Opened after the h2 one, so cut no sooner: once it is, the watcher has
    // had its ticks for the h2 connection as well.
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    assert!(read_to_close(&mut silent).await.is_empty());
    wait_for_registry_value(&registry, CLOSES, &[("reason", "incomplete_request")], 1.0).await;

    assert_eq!(h2.get("/hello").await, (200, "hello".into()));
    h2.close_gracefully().await;
    let s = wait_for_registry_value(&registry, CLOSES, &[], 2.0).await;
    s.assert_value(CLOSES, &[("reason", "idle")], 1.0);
}

/// After a `101`, the connection carries another protocol: what the client
/// sends then is no request head, and its FIN is a normal close.
#[tokio::test]
async fn an_upgraded_connection_closed_by_its_client_closes_idle() {
    let (addr, registry) = serve_app(|metrics| {
        Router::new()
            .route(
                "/echo",
                get(|mut req: axum::extract::Request| async move {
                    let upgrade = hyper::upgrade::on(&mut req);
                    tokio::spawn(async move {
                        let Ok(upgraded) = upgrade.await else { return };
                        let mut io = hyper_util::rt::TokioIo::new(upgraded);
                        let mut buf = [0u8; 64];
                        // Echo until the client closes.
                        while let Ok(n @ 1..) = io.read(&mut buf).await {
                            if io.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    });
                    axum::response::Response::builder()
                        .status(http::StatusCode::SWITCHING_PROTOCOLS)
                        .header(http::header::CONNECTION, "upgrade")
                        .header(http::header::UPGRADE, "echo")
                        .body(axum::body::Body::empty())
                        .expect("valid response")
                }),
            )
            .layer(DisconnectLayer::new(metrics))
    })
    .await;

    let mut stream = send_raw(
        addr,
        b"GET /echo HTTP/1.1\r\nHost: t\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n",
    )
    .await;
    let head = read_until(&mut stream, b"\r\n\r\n").await;
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    stream.write_all(b"ping").await.unwrap();
    assert_eq!(read_until(&mut stream, b"ping").await, b"ping");
    close_fin(stream);

    let s = wait_for_registry_value(&registry, CLOSES, &[], 1.0).await;
    s.assert_value(CLOSES, &[("reason", "idle")], 1.0);
    let upgraded = [
        ("http_response_status_code", "101"),
        ("outcome", "completed"),
    ];
    s.assert_value("http_server_request_duration_seconds_count", &upgraded, 1.0);
}
