//! A real client breaks a connection; the exact counter moves on `/metrics`.

use std::net::SocketAddr;

use clientgone_agent::demo::RunningDemo;
use clientgone_tests::client::{H2Connection, close_fin, close_rst, read_until, send_raw};
use clientgone_tests::{Scrape, scrape, start_demo, wait_for_value};

const DISCONNECTS: &str = "http_server_client_disconnects_total";
const DURATION_COUNT: &str = "http_server_request_duration_seconds_count";
const ELAPSED_COUNT: &str = "http_server_client_disconnect_elapsed_seconds_count";
const ACTIVE: &str = "http_server_active_requests";
const CLOSES: &str = "http_server_connection_closes_total";

/// Waits until the demo's handler for `route` is running (the request is in flight).
async fn wait_in_flight(metrics: SocketAddr, route: &str) {
    wait_for_value(metrics, ACTIVE, &[("http_route", route)], 1.0).await;
}

fn total_disconnects(s: &Scrape) -> f64 {
    s.value(DISCONNECTS, &[])
}

/// A client asks `/hello` to wait a minute, leaves with `close` while the
/// handler waits, and the break is counted as `handler` / `cause` — exactly once.
async fn leave_waiting_hello(
    close: fn(tokio::net::TcpStream),
    cause: &str,
) -> (RunningDemo, Scrape) {
    let demo = start_demo().await;
    let stream = send_raw(
        demo.addr,
        b"GET /hello?delay_ms=60000 HTTP/1.1\r\nHost: t\r\n\r\n",
    )
    .await;
    wait_in_flight(demo.metrics_addr, "/hello").await;
    close(stream);
    let labels = [
        ("http_route", "/hello"),
        ("phase", "handler"),
        ("cause", cause),
    ];
    let s = wait_for_value(demo.metrics_addr, DISCONNECTS, &labels, 1.0).await;
    assert_eq!(total_disconnects(&s), 1.0, "{}", s.text);
    (demo, s)
}

#[tokio::test]
async fn fin_while_the_handler_runs_is_handler_closed_with_499() {
    let (demo, s) = leave_waiting_hello(close_fin, "closed").await;
    let broken = [
        ("http_request_method", "GET"),
        ("http_route", "/hello"),
        ("http_response_status_code", "499"),
        ("outcome", "client_disconnect"),
    ];
    s.assert_value(DURATION_COUNT, &broken, 1.0);
    assert_eq!(s.value(DURATION_COUNT, &[]), 1.0, "observed exactly once");
    assert_eq!(s.value(ELAPSED_COUNT, &[("phase", "handler")]), 1.0);
    assert_eq!(s.value(ACTIVE, &[("http_route", "/hello")]), 0.0);
    wait_for_value(
        demo.metrics_addr,
        CLOSES,
        &[("reason", "client_abort")],
        1.0,
    )
    .await;
}

#[tokio::test]
async fn rst_while_the_handler_runs_is_handler_reset() {
    let (demo, s) = leave_waiting_hello(close_rst, "reset").await;
    assert_eq!(
        s.value(DURATION_COUNT, &[("http_response_status_code", "499")]),
        1.0
    );
    let s = wait_for_value(
        demo.metrics_addr,
        CLOSES,
        &[("reason", "client_abort")],
        1.0,
    )
    .await;
    assert_eq!(s.value(CLOSES, &[("reason", "reset")]), 0.0);
}

async fn half_body_then(close: fn(tokio::net::TcpStream), cause: &str) {
    let demo = start_demo().await;
    let mut raw = b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000\r\n\r\n".to_vec();
    raw.extend(std::iter::repeat_n(b'x', 1000));
    let stream = send_raw(demo.addr, &raw).await;
    wait_in_flight(demo.metrics_addr, "/upload").await;
    close(stream);

    let labels = [
        ("http_route", "/upload"),
        ("phase", "request_body"),
        ("cause", cause),
    ];
    let s = wait_for_value(demo.metrics_addr, DISCONNECTS, &labels, 1.0).await;
    assert_eq!(total_disconnects(&s), 1.0, "{}", s.text);
    // The handler answered 400 into a dead socket; that is not a completed request.
    s.assert_value(DURATION_COUNT, &[("outcome", "completed")], 0.0);
    let broken = [
        ("http_route", "/upload"),
        ("http_response_status_code", "499"),
        ("outcome", "client_disconnect"),
    ];
    s.assert_value(DURATION_COUNT, &broken, 1.0);
    wait_for_value(demo.metrics_addr, ACTIVE, &[("http_route", "/upload")], 0.0).await;
}

#[tokio::test]
async fn half_a_request_body_then_fin_is_request_body_closed() {
    half_body_then(close_fin, "closed").await;
}

#[tokio::test]
async fn half_a_request_body_then_rst_is_request_body_reset() {
    half_body_then(close_rst, "reset").await;
}

async fn mid_stream(close: fn(tokio::net::TcpStream)) -> Scrape {
    let demo = start_demo().await;
    let mut stream = send_raw(
        demo.addr,
        b"GET /stream?chunks=100000&interval_ms=5 HTTP/1.1\r\nHost: t\r\n\r\n",
    )
    .await;
    let seen = read_until(&mut stream, b"chunk 2\n").await;
    assert!(seen.starts_with(b"HTTP/1.1 200 OK"));
    close(stream);

    let labels = [("http_route", "/stream"), ("phase", "response_body")];
    let s = wait_for_value(demo.metrics_addr, DISCONNECTS, &labels, 1.0).await;
    assert_eq!(total_disconnects(&s), 1.0, "{}", s.text);
    let kept = [
        ("http_route", "/stream"),
        ("http_response_status_code", "200"),
        ("outcome", "client_disconnect"),
    ];
    assert_eq!(
        s.value(DURATION_COUNT, &kept),
        1.0,
        "status 200 kept: {}",
        s.text
    );
    assert_eq!(s.value(DURATION_COUNT, &[]), 1.0);
    wait_for_value(
        demo.metrics_addr,
        CLOSES,
        &[("reason", "client_abort")],
        1.0,
    )
    .await
}

#[tokio::test]
async fn rst_while_streaming_is_response_body_with_status_kept() {
    let s = mid_stream(close_rst).await;
    let labels = [("phase", "response_body"), ("cause", "reset")];
    s.assert_value(DISCONNECTS, &labels, 1.0);
}

#[tokio::test]
async fn fin_while_streaming_is_response_body_with_status_kept() {
    // The client closed with response bytes unread: its kernel answers the next
    // segment with RST, so the server may see the FIN, the RST, or a failed write
    // first. Any of the three is a true account of the wire; the phase is fixed.
    let s = mid_stream(|stream| {
        socket2::SockRef::from(&stream)
            .shutdown(std::net::Shutdown::Write)
            .expect("shutdown(SHUT_WR)");
        close_fin(stream)
    })
    .await;
    let cause = s
        .matching(DISCONNECTS, &[("phase", "response_body")])
        .find(|(_, v)| *v == 1.0)
        .map(|(l, _)| l["cause"].clone())
        .expect("one response_body break");
    assert!(
        ["closed", "reset", "write_error"].contains(&cause.as_str()),
        "cause {cause}"
    );
}

#[tokio::test]
async fn http2_rst_stream_is_stream_reset_and_the_connection_lives_on() {
    let demo = start_demo().await;
    let mut h2 = H2Connection::open(demo.addr).await;
    let (_response, mut send) = h2.start_get("/hello?delay_ms=60000").await;
    wait_in_flight(demo.metrics_addr, "/hello").await;
    send.send_reset(h2::Reason::CANCEL);

    let labels = [
        ("http_route", "/hello"),
        ("phase", "handler"),
        ("cause", "stream_reset"),
    ];
    let s = wait_for_value(demo.metrics_addr, DISCONNECTS, &labels, 1.0).await;
    assert_eq!(total_disconnects(&s), 1.0, "{}", s.text);

    let (status, body) = h2.get("/items/7").await;
    assert_eq!((status, &body[..]), (200, &b"item 7\n"[..]));
    let s = scrape(demo.metrics_addr).await;
    s.assert_value("http_server_open_connections", &[], 1.0);
    assert_eq!(
        s.value(CLOSES, &[]),
        0.0,
        "no connection closed: {}",
        s.text
    );
    h2.close();
}

#[tokio::test]
async fn an_http2_client_that_says_goaway_when_done_closes_idle_not_a_break() {
    let demo = start_demo().await;
    let mut h2 = H2Connection::open(demo.addr).await;
    let (status, _) = h2.get("/items/7").await;
    assert_eq!(status, 200);
    h2.close_gracefully().await;
    let s = wait_for_value(demo.metrics_addr, "http_server_open_connections", &[], 0.0).await;
    s.assert_value(CLOSES, &[("reason", "idle")], 1.0);
    s.assert_value(CLOSES, &[], 1.0);
    assert_eq!(total_disconnects(&s), 0.0, "{}", s.text);
}

#[tokio::test]
async fn an_http2_goaway_with_the_socket_left_open_is_the_client_closing_idle() {
    let demo = start_demo().await;
    // Preface, empty SETTINGS, then GOAWAY (last stream 0, NO_ERROR); the
    // socket stays open: the client leaves the closing to the server.
    let mut raw = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    raw.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    raw.extend_from_slice(&[0, 0, 8, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    let mut stream = send_raw(demo.addr, &raw).await;
    // The server answers with its own frames, then closes.
    clientgone_tests::client::read_to_close(&mut stream).await;
    let s = wait_for_value(demo.metrics_addr, "http_server_open_connections", &[], 0.0).await;
    s.assert_value(CLOSES, &[("reason", "idle")], 1.0);
    s.assert_value(CLOSES, &[], 1.0);
}

#[tokio::test]
async fn a_half_close_while_waiting_is_a_fin_like_nginx_499() {
    let demo = start_demo().await;
    let mut stream = send_raw(
        demo.addr,
        b"GET /hello?delay_ms=60000 HTTP/1.1\r\nHost: t\r\n\r\n",
    )
    .await;
    wait_in_flight(demo.metrics_addr, "/hello").await;
    socket2::SockRef::from(&stream)
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown(SHUT_WR)");

    let labels = [
        ("http_route", "/hello"),
        ("phase", "handler"),
        ("cause", "closed"),
    ];
    wait_for_value(demo.metrics_addr, DISCONNECTS, &labels, 1.0).await;
    // The server ends the connection: the still-reading client sees it close.
    let rest = clientgone_tests::client::read_to_close(&mut stream).await;
    assert!(rest.is_empty(), "no response was sent: {rest:?}");
}

/// The time to abandon of a `request_body` break is when the body failed, not
/// when the handler got round to answering.
#[tokio::test]
async fn a_request_body_break_is_timed_when_the_body_failed_not_when_the_handler_answered() {
    const LINGER: std::time::Duration = std::time::Duration::from_millis(1500);
    let (addr, registry) = clientgone_tests::serve_app(|metrics| {
        axum::Router::new()
            .route(
                "/upload",
                axum::routing::post(|body: axum::body::Body| async move {
                    let read = http_body_util::BodyExt::collect(body).await;
                    assert!(read.is_err(), "the body was cut off");
                    // Cleanup the handler does before it answers.
                    tokio::time::sleep(LINGER).await;
                    (http::StatusCode::BAD_REQUEST, "incomplete body")
                }),
            )
            .layer(clientgone::DisconnectLayer::new(metrics))
    })
    .await;
    let mut raw = b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000\r\n\r\n".to_vec();
    raw.extend(std::iter::repeat_n(b'x', 1000));
    let stream = send_raw(addr, &raw).await;
    clientgone_tests::wait_until("the upload is in flight", || async {
        Scrape::from_registry(&registry).value(ACTIVE, &[("http_route", "/upload")]) == 1.0
    })
    .await;
    close_fin(stream);

    let labels = [("http_route", "/upload"), ("phase", "request_body")];
    let elapsed = "http_server_client_disconnect_elapsed_seconds";
    let s = clientgone_tests::wait_for_registry_value(
        &registry,
        &format!("{elapsed}_count"),
        &labels,
        1.0,
    )
    .await;
    let waited = s.value(&format!("{elapsed}_sum"), &labels);
    assert!(
        waited < LINGER.as_secs_f64() - 0.5,
        "recorded {waited} s: the handler's linger counted as the client's wait\n{}",
        s.text
    );
}
