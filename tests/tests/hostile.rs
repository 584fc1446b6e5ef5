//! Hostile input: label cardinality stays bounded, bad bytes get a clear answer,
//! the server keeps serving and nothing panics.

use std::sync::atomic::{AtomicUsize, Ordering};

use clientgone_tests::client::{Http1Connection, read_to_close, send_raw};
use clientgone_tests::{scrape, start_demo, wait_for_value};
use tokio::io::AsyncWriteExt;

static PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_panics() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        previous(info);
    }));
}

/// A small deterministic generator (xorshift), so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn path(&mut self) -> String {
        const CHARS: &[u8] = b"abcXYZ019-._~%20%2F%00!$&'()*+,;=:@";
        let segments = 1 + self.next() % 6;
        let mut path = String::from("/r");
        for _ in 0..segments {
            path.push('/');
            for _ in 0..1 + self.next() % 12 {
                path.push(CHARS[(self.next() % CHARS.len() as u64) as usize] as char);
            }
        }
        path
    }
}

#[tokio::test]
async fn five_hundred_random_paths_add_only_unmatched() {
    let demo = start_demo().await;
    let mut rng = Rng(0x5eed_cafe_f00d_0001);
    let mut paths: Vec<String> = (0..490).map(|_| rng.path()).collect();
    paths.extend(
        [
            "/..%2f..%2fetc/passwd",
            "/items",
            "/items/",
            "/hello/extra",
            "//hello",
            "/%ZZ",
            "/upload/../../x",
            "/stream%00",
            "/HELLO",
            "/%F0%9F%92%A5",
        ]
        .map(String::from),
    );
    let mut conn = Http1Connection::open(demo.addr).await;
    for path in &paths {
        let (status, _) = conn.request("GET", path).await;
        assert_eq!(status, 404, "{path}");
    }
    conn.close().await;

    let s = scrape(demo.metrics_addr).await;
    let routes = s.label_values("http_server_request_duration_seconds_count", "http_route");
    assert_eq!(
        routes.into_iter().collect::<Vec<_>>(),
        ["unmatched"],
        "{}",
        s.text
    );
    assert_eq!(
        s.value(
            "http_server_request_duration_seconds_count",
            &[("http_route", "unmatched")]
        ),
        500.0
    );
    let routes = s.label_values("http_server_active_requests", "http_route");
    assert_eq!(routes.into_iter().collect::<Vec<_>>(), ["unmatched"]);
}

#[tokio::test]
async fn unknown_methods_fold_to_other() {
    let demo = start_demo().await;
    let mut conn = Http1Connection::open(demo.addr).await;
    for method in ["PROPFIND", "BREW", "X-CUSTOM-1"] {
        conn.request(method, "/items/1").await;
    }
    conn.request("PATCH", "/items/1").await;
    conn.close().await;
    let s = scrape(demo.metrics_addr).await;
    let methods = s.label_values(
        "http_server_request_duration_seconds_count",
        "http_request_method",
    );
    assert_eq!(
        methods.into_iter().collect::<Vec<_>>(),
        ["PATCH", "_OTHER"],
        "{}",
        s.text
    );
    assert_eq!(
        s.value(
            "http_server_request_duration_seconds_count",
            &[("http_request_method", "_OTHER")]
        ),
        3.0
    );
}

#[tokio::test]
async fn malformed_requests_get_an_answer_and_the_server_keeps_serving() {
    count_panics();
    let demo = start_demo().await;
    let oversized_line = {
        let mut line = b"GET /".to_vec();
        line.extend(std::iter::repeat_n(b'a', 1 << 20));
        line.extend(b" HTTP/1.1\r\nHost: t\r\n\r\n");
        line
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", b"\x00\x01\x02\xff\xfe garbage \r\n\r\n".to_vec()),
        ("not http", b"HELLO THERE\r\n\r\n".to_vec()),
        (
            "negative content-length",
            b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: -5\r\n\r\nabc".to_vec(),
        ),
        (
            "two content-lengths",
            b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"
                .to_vec(),
        ),
        ("oversized request line", oversized_line),
        ("bad chunked body", {
            b"POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nZZZ\r\n".to_vec()
        }),
    ];
    for (name, bytes) in &cases {
        let mut stream = tokio::net::TcpStream::connect(demo.addr).await.unwrap();
        // The server may close before it has read everything: that is its answer.
        let _ = stream.write_all(bytes).await;
        let answer = read_to_close(&mut stream).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 4"),
            "{name}: {answer}"
        );
        // A normal request still works after each.
        let mut conn = Http1Connection::open(demo.addr).await;
        assert_eq!(
            conn.request("GET", "/items/ok").await.0,
            200,
            "after {name}"
        );
        conn.close().await;
    }
    let s = wait_for_value(demo.metrics_addr, "http_server_open_connections", &[], 0.0).await;
    let opened = 2.0 * cases.len() as f64;
    s.assert_value("http_server_connection_closes_total", &[], opened);
    s.assert_value("http_server_client_disconnects_total", &[], 0.0);
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "a panic was caught");
}

#[tokio::test]
async fn a_connection_that_only_sends_part_of_a_head_is_an_incomplete_request() {
    let demo = start_demo().await;
    let stream = send_raw(demo.addr, b"GET /hello HTTP/1.1\r\nHos").await;
    // The bytes precede the FIN on the wire, so the server always reads the
    // partial head before it sees the close.
    wait_for_value(demo.metrics_addr, "http_server_open_connections", &[], 1.0).await;
    drop(stream);
    let s = wait_for_value(
        demo.metrics_addr,
        "http_server_connection_closes_total",
        &[("reason", "incomplete_request")],
        1.0,
    )
    .await;
    assert_eq!(s.value("http_server_client_disconnects_total", &[]), 0.0);
    assert_eq!(
        s.value("http_server_request_duration_seconds_count", &[]),
        0.0
    );
}

/// One layered service can sit behind more than one route (`route_service`
/// with clones of it): each request is still counted under its own template,
/// not under the first one that service saw.
#[tokio::test]
async fn one_layered_service_under_two_routes_counts_each_route_apart() {
    use tower::Layer;
    let (addr, registry) = clientgone_tests::serve_app(|metrics| {
        let service = clientgone::DisconnectLayer::new(metrics)
            .layer(axum::routing::get(|| async { "x" }).with_state(()));
        axum::Router::new()
            .route_service("/a/{id}", service.clone())
            .route_service("/b", service)
    })
    .await;
    let mut conn = Http1Connection::open(addr).await;
    for path in ["/a/1", "/b", "/a/2", "/b", "/b"] {
        assert_eq!(conn.request("GET", path).await.0, 200, "{path}");
    }
    conn.close().await;
    let s = clientgone_tests::wait_for_registry_value(
        &registry,
        "http_server_request_duration_seconds_count",
        &[("http_route", "/b")],
        3.0,
    )
    .await;
    assert_eq!(
        s.value(
            "http_server_request_duration_seconds_count",
            &[("http_route", "/a/{id}")]
        ),
        2.0,
        "{}",
        s.text
    );
}
