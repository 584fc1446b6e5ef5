//! `clientgone proxy` in front of a service that is not ours and not Rust
//! (`tests/upstream/upstream.py`): breaks are counted under the route template,
//! the upstream sees its request cancelled, and the upstream's own failures are
//! never client disconnects.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clientgone_agent::proxy::{self, ProxyConfig, RouteTable, Upstream};
use clientgone_agent::server::{RunningServer, ServerConfig};
use clientgone_agent::tls::TlsFiles;
use clientgone_tests::client::{
    H2Connection, Http1Connection, close_fin, close_rst, read_to_close, read_until, send_raw,
};
use clientgone_tests::tls::{Pki, TlsClient};
use clientgone_tests::{DEADLINE, scrape, wait_for_value, wait_until};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DISCONNECTS: &str = "http_server_client_disconnects_total";
const UPSTREAM: &str = "http_client_request_duration_seconds_count";

/// The Python upstream, killed when dropped.
struct PythonUpstream {
    child: Child,
    addr: SocketAddr,
    /// Where `GET /__events` is served in plain HTTP (`addr` unless TLS).
    events_addr: SocketAddr,
}

impl PythonUpstream {
    fn start() -> PythonUpstream {
        Self::start_with(&[])
    }

    /// The upstream serving HTTPS with this certificate and key.
    fn start_tls(cert: &std::path::Path, key: &std::path::Path) -> PythonUpstream {
        Self::start_with(&["--tls".as_ref(), cert.as_os_str(), key.as_os_str()])
    }

    fn start_with(args: &[&std::ffi::OsStr]) -> PythonUpstream {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/upstream/upstream.py");
        let mut child = Command::new("python3")
            .arg(script)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 runs the upstream");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
            &mut line,
        )
        .expect("the upstream prints its port");
        let ports: Vec<u16> = line
            .split_whitespace()
            .map(|p| p.parse().expect("a port"))
            .collect();
        let at = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        PythonUpstream {
            child,
            addr: at(ports[0]),
            events_addr: at(*ports.last().expect("a port")),
        }
    }

    /// What the upstream saw: connections, requests, cancellations.
    async fn events(&self) -> Value {
        let mut stream = tokio::net::TcpStream::connect(self.events_addr)
            .await
            .unwrap();
        stream
            .write_all(b"GET /__events HTTP/1.0\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let mut raw = String::new();
        stream.read_to_string(&mut raw).await.unwrap();
        let (_, body) = raw.split_once("\r\n\r\n").expect("response");
        serde_json::from_str(body).expect("JSON events")
    }

    async fn requested(&self, path: &str) -> bool {
        let events = self.events().await;
        events["requests"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["path"] == path)
    }
}

impl Drop for PythonUpstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_proxy(upstream: &str, routes: &[&str], timeout: Duration) -> RunningServer {
    let routes = RouteTable::new(routes.iter().map(|r| r.to_string())).unwrap();
    start_proxy_with(upstream, routes, timeout).await
}

async fn start_proxy_with(upstream: &str, routes: RouteTable, timeout: Duration) -> RunningServer {
    start_proxy_skipping(upstream, routes, timeout, Vec::new()).await
}

async fn start_proxy_skipping(
    upstream: &str,
    routes: RouteTable,
    timeout: Duration,
    skip: Vec<String>,
) -> RunningServer {
    start_proxy_tls(upstream, routes, timeout, skip, None, None).await
}

/// The proxy with HTTPS in front (`tls`) and an upstream CA file.
async fn start_proxy_tls(
    upstream: &str,
    routes: RouteTable,
    timeout: Duration,
    skip: Vec<String>,
    tls: Option<TlsFiles>,
    upstream_ca: Option<std::path::PathBuf>,
) -> RunningServer {
    proxy::start(ProxyConfig {
        server: ServerConfig {
            listen: "127.0.0.1:0".into(),
            metrics_listen: "127.0.0.1:0".into(),
            options: Default::default(),
            registry: prometheus::Registry::new(),
            tracer: None,
            buckets: Default::default(),
            tls,
        },
        upstream: Upstream::parse(upstream).unwrap(),
        routes,
        upstream_timeout: timeout,
        grpc: None,
        skip,
        upstream_ca,
    })
    .await
    .expect("proxy starts")
}

const ROUTES: &[&str] = &["/users/{id}", "/stream", "/echo/{n}", "/upload"];

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Waits until the upstream reports `path` cancelled; returns when it noticed.
async fn upstream_cancelled_at(upstream: &PythonUpstream, path: &str) -> f64 {
    let start = std::time::Instant::now();
    loop {
        let events = upstream.events().await;
        if let Some(t) = events["cancelled"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["path"] == path)
            .and_then(|c| c["t"].as_f64())
        {
            return t;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "the upstream never saw {path} cancelled: {events}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[derive(Clone, Copy, Debug)]
enum Break {
    Fin,
    Rst,
    H2Reset,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaks_are_counted_under_the_template_and_the_upstream_sees_its_request_cancelled() {
    let upstream = PythonUpstream::start();
    let proxy = start_proxy(&format!("http://{}", upstream.addr), ROUTES, DEADLINE).await;
    for (n, (kind, cause)) in [
        (Break::Fin, "closed"),
        (Break::Rst, "reset"),
        (Break::H2Reset, "stream_reset"),
    ]
    .into_iter()
    .enumerate()
    {
        let path = format!("/users/{kind:?}?delay_ms=30000");
        let mut h2 = None;
        let mut stream = None;
        match kind {
            Break::H2Reset => {
                let mut conn = H2Connection::open(proxy.addr).await;
                let (response, send) = conn.start_get(&path).await;
                h2 = Some((conn, response, send));
            }
            _ => {
                let request = format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n");
                stream = Some(send_raw(proxy.addr, request.as_bytes()).await);
            }
        }
        // The upstream is working on it before the client leaves.
        wait_until("the upstream got the request", || upstream.requested(&path)).await;
        let broke_at = now();
        match (kind, stream, h2) {
            (Break::Fin, Some(s), _) => close_fin(s),
            (Break::Rst, Some(s), _) => close_rst(s),
            (Break::H2Reset, _, Some((_conn, _response, mut send))) => {
                send.send_reset(h2::Reason::CANCEL);
                // Keep the connection up while the proxy handles the reset.
                let labels = [("http_route", "/users/{id}"), ("cause", cause)];
                wait_for_value(proxy.metrics_addr, DISCONNECTS, &labels, 1.0).await;
            }
            _ => unreachable!(),
        }
        let labels = [
            ("http_route", "/users/{id}"),
            ("phase", "handler"),
            ("cause", cause),
        ];
        let s = wait_for_value(proxy.metrics_addr, DISCONNECTS, &labels, 1.0).await;
        s.assert_value(DISCONNECTS, &[], (n + 1) as f64);
        let noticed = upstream_cancelled_at(&upstream, &path).await - broke_at;
        assert!(
            noticed < 0.2,
            "{kind:?}: the upstream noticed after {noticed:.3} s"
        );
        let cancelled = [("http_route", "/users/{id}"), ("outcome", "cancelled")];
        wait_for_value(proxy.metrics_addr, UPSTREAM, &cancelled, (n + 1) as f64).await;
    }
}

/// A client that stops mid-upload: the body's failure ends the upstream
/// request — a cancel, never an upstream error — and the layer counts a
/// `request_body` break. (The early shutdown leaves a mid-upload request
/// alone: cutting the upstream first once ended the request before anyone
/// read the body's error, and it was counted as a completed 400. This test
/// caught that under load.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_broken_midway_is_a_cancel_not_an_upstream_error() {
    let upstream = PythonUpstream::start();
    let proxy = start_proxy(&format!("http://{}", upstream.addr), ROUTES, DEADLINE).await;
    for (n, (close, cause)) in [
        (close_fin as fn(tokio::net::TcpStream), "closed"),
        (close_rst, "reset"),
    ]
    .into_iter()
    .enumerate()
    {
        let path = format!("/upload?n={n}");
        let head = format!("POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n");
        let mut stream = send_raw(proxy.addr, head.as_bytes()).await;
        stream.write_all(&[b'x'; 1000]).await.unwrap();
        wait_until("the upstream got the request", || upstream.requested(&path)).await;
        close(stream);
        let labels = [
            ("http_route", "/upload"),
            ("phase", "request_body"),
            ("cause", cause),
        ];
        wait_for_value(proxy.metrics_addr, DISCONNECTS, &labels, 1.0).await;
        let cancelled = [("http_route", "/upload"), ("outcome", "cancelled")];
        let s = wait_for_value(proxy.metrics_addr, UPSTREAM, &cancelled, (n + 1) as f64).await;
        assert_eq!(
            s.value(UPSTREAM, &[("outcome", "error")]),
            0.0,
            "an upstream error counted for a client's break: {}",
            s.text
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_response_broken_midway_is_response_body_with_its_status() {
    let upstream = PythonUpstream::start();
    let proxy = start_proxy(&format!("http://{}", upstream.addr), ROUTES, DEADLINE).await;
    let path = "/stream?chunks=100000&interval_ms=5";
    let mut stream = send_raw(
        proxy.addr,
        format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes(),
    )
    .await;
    let seen = read_until(&mut stream, b"chunk 2\n").await;
    assert!(seen.starts_with(b"HTTP/1.1 200"));
    close_rst(stream);
    let labels = [("http_route", "/stream"), ("phase", "response_body")];
    let s = wait_for_value(proxy.metrics_addr, DISCONNECTS, &labels, 1.0).await;
    let kept = [
        ("http_route", "/stream"),
        ("http_response_status_code", "200"),
        ("outcome", "client_disconnect"),
    ];
    s.assert_value("http_server_request_duration_seconds_count", &kept, 1.0);
    upstream_cancelled_at(&upstream, path).await;
    let cancelled = [
        ("http_route", "/stream"),
        ("http_response_status_code", "200"),
        ("outcome", "cancelled"),
    ];
    wait_for_value(proxy.metrics_addr, UPSTREAM, &cancelled, 1.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_keep_alive_requests_pass_byte_identical_over_reused_connections() {
    let upstream = PythonUpstream::start();
    let proxy = start_proxy(&format!("http://{}", upstream.addr), ROUTES, DEADLINE).await;
    let mut conns = Vec::new();
    for _ in 0..4 {
        conns.push(Http1Connection::open(proxy.addr).await);
    }
    for i in 0..1000u32 {
        let (status, body) = conns[i as usize % 4]
            .request("GET", &format!("/echo/{i}"))
            .await;
        assert_eq!(status, 200);
        assert_eq!(
            body,
            format!("echo {i}\n").repeat(i as usize % 97 + 1),
            "body of /echo/{i}"
        );
    }
    for conn in conns {
        conn.close().await;
    }
    let s = wait_for_value(proxy.metrics_addr, "http_server_open_connections", &[], 0.0).await;
    s.assert_value(DISCONNECTS, &[], 0.0);
    let done = [("http_route", "/echo/{n}"), ("outcome", "completed")];
    assert_eq!(
        s.value("http_server_request_duration_seconds_count", &done),
        1000.0
    );
    assert_eq!(s.value(UPSTREAM, &done), 1000.0);
    let connections = upstream.events().await["connections"].as_u64().unwrap();
    // One per events query too; a handful at most for 1000 proxied requests.
    assert!(
        connections <= 8,
        "the upstream saw {connections} connections: no reuse"
    );
}

/// The headers the upstream saw on its request for `path`.
async fn headers_received(upstream: &PythonUpstream, path: &str) -> serde_json::Map<String, Value> {
    let events = upstream.events().await;
    let request = events["requests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["path"] == path)
        .unwrap_or_else(|| panic!("the upstream never got {path}: {events}"));
    request["headers"].as_object().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_stay_behind_and_forwarded_headers_are_added() {
    let upstream = PythonUpstream::start();
    let proxy = start_proxy(&format!("http://{}", upstream.addr), ROUTES, DEADLINE).await;
    let mut stream = send_raw(
        proxy.addr,
        b"GET /users/1?probe=headers HTTP/1.1\r\n\
          Host: shop.example\r\n\
          Connection: keep-alive, X-Hop\r\n\
          X-Hop: secret\r\n\
          Keep-Alive: timeout=5\r\n\
          Proxy-Connection: keep-alive\r\n\
          TE: trailers\r\n\
          X-Forwarded-For: 203.0.113.9\r\n\
          X-Kept: yes\r\n\r\n",
    )
    .await;
    let answer = read_until(&mut stream, b"\r\n\r\n").await;
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let headers = headers_received(&upstream, "/users/1?probe=headers").await;
    for gone in [
        "connection",
        "x-hop",
        "keep-alive",
        "proxy-connection",
        "te",
    ] {
        assert!(
            !headers.contains_key(gone),
            "{gone} reached the upstream: {headers:?}"
        );
    }
    assert_eq!(headers["x-kept"], "yes");
    assert_eq!(headers["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert_eq!(headers["x-forwarded-host"], "shop.example");
    assert_eq!(headers["host"], upstream.addr.to_string());

    // Without a `Host` of its own, a client's X-Forwarded-Host does not pass.
    let mut stream = send_raw(
        proxy.addr,
        b"GET /users/2?probe=no-host HTTP/1.0\r\nX-Forwarded-Host: evil.example\r\n\r\n",
    )
    .await;
    let answer = read_to_close(&mut stream).await;
    assert!(
        answer.starts_with(b"HTTP/1.0 200") || answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let headers = headers_received(&upstream, "/users/2?probe=no-host").await;
    assert!(
        !headers.contains_key("x-forwarded-host"),
        "the client's X-Forwarded-Host reached the upstream: {headers:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_are_502_or_504_never_client_disconnects() {
    let upstream = PythonUpstream::start();
    let proxy = start_proxy(
        &format!("http://{}", upstream.addr),
        &["/reset", "/hang", "/echo/{n}"],
        // Long enough for a Python upstream on a loaded machine to answer
        // /echo in time; /hang waits it out once.
        Duration::from_secs(2),
    )
    .await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let down_addr = closed.local_addr().unwrap();
    drop(closed);
    let down = start_proxy(
        &format!("http://{down_addr}"),
        &["/x"],
        Duration::from_secs(5),
    )
    .await;

    let mut conn = Http1Connection::open(down.addr).await;
    let (status, body) = conn.request("GET", "/x").await;
    assert_eq!(status, 502, "{body:?}");
    conn.close().await;
    let mut conn = Http1Connection::open(proxy.addr).await;
    assert_eq!(conn.request("GET", "/reset").await.0, 502);
    assert_eq!(conn.request("GET", "/hang").await.0, 504);
    let (status, body) = conn.request("GET", "/echo/1").await;
    assert_eq!(
        (status, &body[..]),
        (200, &b"echo 1\necho 1\n"[..]),
        "still serving"
    );
    conn.close().await;

    for (server, errors) in [(&down, 1.0), (&proxy, 2.0)] {
        let s = scrape(server.metrics_addr).await;
        s.assert_value(DISCONNECTS, &[], 0.0);
        s.assert_value(UPSTREAM, &[("outcome", "error")], errors);
    }
    let s = scrape(proxy.metrics_addr).await;
    let timed_out = [
        ("http_route", "/hang"),
        ("http_response_status_code", "504"),
    ];
    assert_eq!(
        s.value("http_server_request_duration_seconds_count", &timed_out),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_attempts_and_oversized_heads_never_reach_the_upstream() {
    let upstream = PythonUpstream::start();
    let proxy = start_proxy(&format!("http://{}", upstream.addr), ROUTES, DEADLINE).await;
    let huge_header = format!("X-Big: {}\r\n", "a".repeat(1 << 20));
    let many_headers: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let rejected = [
        (
            "two Content-Lengths",
            "POST /upload?two-cl HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 40\r\n\r\nabc".to_owned(),
        ),
        ("oversized header", format!("GET /echo/1?big HTTP/1.1\r\nHost: t\r\n{huge_header}\r\n")),
        ("too many headers", format!("GET /echo/1?many HTTP/1.1\r\nHost: t\r\n{many_headers}\r\n")),
        (
            "bad Transfer-Encoding",
            "POST /upload?te-gzip HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\nabc".to_owned(),
        ),
    ];
    for (name, raw) in &rejected {
        let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        let _ = stream.write_all(raw.as_bytes()).await;
        let answer = read_to_close(&mut stream).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with("HTTP/1.1 4") || answer.is_empty(),
            "{name}: {answer}"
        );
    }

    // Content-Length and Transfer-Encoding together: hyper follows RFC 9112
    // §6.3 — the chunked framing wins, the length is dropped, and the
    // connection closes after this request. The request is forwarded with one
    // unambiguous framing; what was smuggled behind it is never read.
    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let cl_te = "POST /upload?cl-te HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n";
    stream.write_all(cl_te.as_bytes()).await.unwrap();
    let answer = String::from_utf8_lossy(&read_to_close(&mut stream).await).into_owned();
    assert_eq!(
        answer.matches("HTTP/1.1").count(),
        1,
        "one answer, then close: {answer}"
    );
    assert!(
        answer.ends_with("\r\n\r\n0\n"),
        "an empty body reached the upstream: {answer}"
    );

    // Still serving; the upstream saw the one well-framed POST and nothing else.
    let mut conn = Http1Connection::open(proxy.addr).await;
    assert_eq!(conn.request("GET", "/echo/2").await.0, 200);
    conn.close().await;
    let events = upstream.events().await;
    let seen: Vec<&str> = events["requests"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["path"].as_str())
        .collect();
    assert_eq!(seen, ["/upload?cl-te", "/echo/2"], "{events}");
    // Read whole, in the one framing the proxy sent: nothing left over on
    // the pooled connection for the upstream to take for a request.
    let bodies = &events["bodies"];
    assert_eq!(bodies.as_array().map(Vec::len), Some(1), "{events}");
    assert_eq!(bodies[0]["path"], "/upload?cl-te", "{events}");
    assert_eq!(bodies[0]["length"], 0, "{events}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_paths_add_only_unmatched_and_an_openapi_file_gives_its_templates() {
    let upstream = PythonUpstream::start();
    let dir = std::env::temp_dir().join(format!("clientgone-openapi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("openapi.yaml");
    let mut doc = String::from("openapi: 3.0.3\ninfo:\n  title: t\n  version: '1'\npaths:\n");
    for i in 0..50 {
        doc.push_str(&format!(
            "  /r{i}/{{id}}:\n    get:\n      responses: {{}}\n"
        ));
    }
    std::fs::write(&file, doc).unwrap();
    let routes = RouteTable::from_openapi(&file).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(routes.templates().len(), 50);

    let proxy = start_proxy_with(
        &format!("http://{}", upstream.addr),
        routes.clone(),
        DEADLINE,
    )
    .await;
    let mut conn = Http1Connection::open(proxy.addr).await;
    for i in 0..50 {
        assert_eq!(
            conn.request("GET", &format!("/r{i}/x")).await.0,
            404,
            "the upstream's 404"
        );
    }
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..500 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        conn.request("GET", &format!("/random/{rng:x}/{}", rng % 977))
            .await;
    }
    conn.close().await;
    let s = scrape(proxy.metrics_addr).await;
    let seen = s.label_values("http_server_request_duration_seconds_count", "http_route");
    let mut want: std::collections::BTreeSet<String> = routes.templates().iter().cloned().collect();
    want.insert("unmatched".into());
    assert_eq!(seen, want);
    assert_eq!(
        s.value(
            "http_server_request_duration_seconds_count",
            &[("http_route", "unmatched")]
        ),
        500.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_h2c_the_upstream_sees_a_stream_reset_when_the_client_leaves() {
    // The demo speaks h2c, so it can stand upstream and tell what it saw.
    let upstream = clientgone_tests::start_demo().await;
    let proxy = start_proxy(
        &format!("h2c://{}", upstream.addr),
        &["/hello", "/items/{id}"],
        DEADLINE,
    )
    .await;
    let mut conn = Http1Connection::open(proxy.addr).await;
    let (status, body) = conn.request("GET", "/items/1").await;
    assert_eq!((status, &body[..]), (200, &b"item 1\n"[..]));
    conn.close().await;

    let stream = send_raw(
        proxy.addr,
        b"GET /hello?delay_ms=60000 HTTP/1.1\r\nHost: t\r\n\r\n",
    )
    .await;
    wait_for_value(
        upstream.metrics_addr,
        "http_server_active_requests",
        &[],
        1.0,
    )
    .await;
    close_fin(stream);
    let at_proxy = [
        ("http_route", "/hello"),
        ("phase", "handler"),
        ("cause", "closed"),
    ];
    wait_for_value(proxy.metrics_addr, DISCONNECTS, &at_proxy, 1.0).await;
    let upstream_saw = [
        ("http_route", "/hello"),
        ("phase", "handler"),
        ("cause", "stream_reset"),
    ];
    wait_for_value(upstream.metrics_addr, DISCONNECTS, &upstream_saw, 1.0).await;
}

/// `--upstream-timeout` is the upstream's time to answer: an upload that takes
/// longer than it, but keeps flowing, is not cut off with a 504.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_slower_than_the_upstream_timeout_but_flowing_is_answered() {
    let upstream = PythonUpstream::start();
    let timeout = Duration::from_secs(1);
    let proxy = start_proxy(&format!("http://{}", upstream.addr), ROUTES, timeout).await;
    let mut stream = send_raw(
        proxy.addr,
        b"POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    .await;
    // Forty pieces 50 ms apart: twice the timeout in all, a twentieth of it
    // between pieces (room for a loaded machine). The pacing is the slow
    // client itself.
    for _ in 0..40 {
        stream.write_all(b"5\r\nhello\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stream.write_all(b"0\r\n\r\n").await.unwrap();
    let answer = read_until(&mut stream, b"200\n").await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    let s = wait_for_value(
        proxy.metrics_addr,
        "http_client_request_duration_seconds_count",
        &[("outcome", "completed")],
        1.0,
    )
    .await;
    assert_eq!(
        s.value(
            "http_client_request_duration_seconds_count",
            &[("outcome", "error")]
        ),
        0.0,
        "{}",
        s.text
    );
}

/// A client that stops sending its upload is not the upstream being slow: the
/// proxy answers 408 and ends the upstream request on the client's behalf.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upload_is_a_408_for_the_client_not_an_upstream_timeout() {
    let upstream = PythonUpstream::start();
    let timeout = Duration::from_millis(500);
    let proxy = start_proxy(&format!("http://{}", upstream.addr), ROUTES, timeout).await;
    let mut stream = send_raw(
        proxy.addr,
        b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n0123456789",
    )
    .await;
    // The client then sends nothing more, and waits.
    let answer = read_until(&mut stream, b"\r\n\r\n").await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");

    let s = wait_for_value(
        proxy.metrics_addr,
        "http_client_request_duration_seconds_count",
        &[("outcome", "cancelled")],
        1.0,
    )
    .await;
    s.assert_value(
        "http_client_request_duration_seconds_count",
        &[("outcome", "error")],
        0.0,
    );
    s.assert_value("http_server_client_disconnects_total", &[], 0.0);
}

#[tokio::test]
async fn skipped_routes_are_forwarded_and_in_no_metric() {
    let upstream = PythonUpstream::start();
    // Only the counted route is given: a skipped template is routed too.
    let routes = RouteTable::new(["/users/{id}".to_owned()]).unwrap();
    let proxy = start_proxy_skipping(
        &format!("http://{}", upstream.addr),
        routes,
        Duration::from_secs(60),
        vec!["/echo/{n}".to_owned()],
    )
    .await;
    let mut conn = Http1Connection::open(proxy.addr).await;
    assert_eq!(conn.request("GET", "/echo/5").await.0, 200);
    assert_eq!(conn.request("GET", "/users/7").await.0, 200);
    conn.close().await;
    assert!(upstream.requested("/echo/5").await, "forwarded");
    let duration = "http_server_request_duration_seconds_count";
    let s = wait_for_value(proxy.metrics_addr, duration, &[], 1.0).await;
    assert_eq!(
        s.label_values(duration, "http_route"),
        ["/users/{id}".to_owned()].into()
    );
    assert_eq!(s.value(UPSTREAM, &[]), 1.0, "nor on the upstream side");
    assert!(!s.text.contains("/echo"), "{}", s.text);
}

fn routes() -> RouteTable {
    RouteTable::new(ROUTES.iter().map(|r| r.to_string())).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tls_in_front_a_break_is_counted_and_cancels_the_plain_upstream() {
    let pki = Pki::new("proxy-front");
    let upstream = PythonUpstream::start();
    let files = TlsFiles {
        cert: pki.cert.clone(),
        key: pki.key.clone(),
    };
    let proxy = start_proxy_tls(
        &format!("http://{}", upstream.addr),
        routes(),
        DEADLINE,
        Vec::new(),
        Some(files),
        None,
    )
    .await;
    let statuses =
        clientgone_tests::tls::requests(proxy.addr, &["/echo/1".into(), "/users/2".into()]);
    assert_eq!(statuses, [200, 200]);
    let path = "/users/7?delay_ms=30000";
    let client = TlsClient::hold(
        proxy.addr,
        "hold",
        &[&format!("GET {path} HTTP/1.1\\r\\nHost: t\\r\\n\\r\\n")],
    );
    wait_until("the upstream got the request", || upstream.requested(path)).await;
    client.close("fin");
    upstream_cancelled_at(&upstream, path).await;
    let labels = [
        ("http_route", "/users/{id}"),
        ("phase", "handler"),
        ("cause", "closed"),
    ];
    let s = wait_for_value(proxy.metrics_addr, DISCONNECTS, &labels, 1.0).await;
    s.assert_value(UPSTREAM, &[("outcome", "cancelled")], 1.0);
    s.assert_value(UPSTREAM, &[("outcome", "completed")], 2.0);
    s.assert_value(
        "http_server_connection_closes_total",
        &[("reason", "tls_handshake")],
        0.0,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_is_reached_with_upstream_ca_and_cancelled_over_tls() {
    let pki = Pki::new("proxy-upstream");
    let upstream = PythonUpstream::start_tls(&pki.cert, &pki.key);
    let proxy = start_proxy_tls(
        &format!("https://localhost:{}", upstream.addr.port()),
        routes(),
        DEADLINE,
        Vec::new(),
        None,
        Some(pki.ca.clone()),
    )
    .await;
    let mut conn = Http1Connection::open(proxy.addr).await;
    let (status, body) = conn.request("GET", "/echo/1").await;
    assert_eq!((status, &body[..]), (200, &b"echo 1\necho 1\n"[..]));
    conn.close().await;

    let path = "/users/3?delay_ms=30000";
    let stream = send_raw(
        proxy.addr,
        format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes(),
    )
    .await;
    wait_until("the upstream got the request", || upstream.requested(path)).await;
    close_fin(stream);
    upstream_cancelled_at(&upstream, path).await;
    let labels = [
        ("http_route", "/users/{id}"),
        ("phase", "handler"),
        ("cause", "closed"),
    ];
    let s = wait_for_value(proxy.metrics_addr, DISCONNECTS, &labels, 1.0).await;
    s.assert_value(UPSTREAM, &[("outcome", "cancelled")], 1.0);
    s.assert_value(UPSTREAM, &[("outcome", "completed")], 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_certificate_that_does_not_verify_is_a_502_and_the_upstreams_error() {
    let pki = Pki::new("proxy-untrusted");
    let upstream = PythonUpstream::start_tls(&pki.untrusted_cert, &pki.untrusted_key);
    let proxy = start_proxy_tls(
        &format!("https://localhost:{}", upstream.addr.port()),
        routes(),
        DEADLINE,
        Vec::new(),
        None,
        Some(pki.ca.clone()),
    )
    .await;
    let mut conn = Http1Connection::open(proxy.addr).await;
    let (status, body) = conn.request("GET", "/echo/1").await;
    assert_eq!(status, 502, "{}", String::from_utf8_lossy(&body));
    assert!(
        String::from_utf8_lossy(&body).contains("certificate"),
        "the 502 says why: {}",
        String::from_utf8_lossy(&body)
    );
    conn.close().await;
    let s = scrape(proxy.metrics_addr).await;
    s.assert_value(UPSTREAM, &[("outcome", "error")], 1.0);
    s.assert_value(DISCONNECTS, &[], 0.0);
}
