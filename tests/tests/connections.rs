//! Connection accounting on loopback: every connection closes exactly once, with
//! the right reason; slow-loris heads are cut off by the header-read timeout.

use std::time::{Duration, Instant};

use clientgone::ConnectionOptions;
use clientgone_tests::client::{
    Http1Connection, close_fin, close_rst, read_to_close, read_until, send_raw,
};
use clientgone_tests::{start_demo, start_demo_with, wait_for_value};
use tokio::io::AsyncWriteExt;

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
    let head =
        b"GET /hello?delay_ms=0 HTTP/1.1\r\nHost: slow\r\nX-Padding: aaaaaaaaaaaaaaaa\r\n\r\n";

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
            !answer.contains("Hello"),
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
    assert_eq!(s.value(CLOSES, &[("reason", "idle")]), 1.0, "{}", s.text);
    assert_eq!(s.value("http_server_client_disconnects_total", &[]), 0.0);
    let completed = [("http_route", "/items/{id}"), ("outcome", "completed")];
    assert_eq!(
        s.value("http_server_request_duration_seconds_count", &completed),
        20.0
    );
    assert_eq!(
        s.value("http_server_request_duration_seconds_count", &[]),
        20.0,
        "{}",
        s.text
    );
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
    assert_eq!(s.value(CLOSES, &[("reason", "idle")]), 3.0, "{}", s.text);
    assert_eq!(s.value(CLOSES, &[]), 3.0, "{}", s.text);
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
    assert_eq!(s.value(CLOSES, &[("reason", "idle")]), 2.0, "{}", s.text);
    assert_eq!(s.value(CLOSES, &[]), 2.0, "{}", s.text);
}
