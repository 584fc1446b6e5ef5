//! `clientgone watch` through TLS: servers that terminate TLS with OpenSSL
//! (Python's `ssl`, Debian's nginx) are followed in their plaintext, read by
//! uprobes on the library; a server with its own TLS (Go's `crypto/tls`) is
//! skipped as `tls`. The clients are Python's `ssl` (tests/tls/tls_client.py of the workspace).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use clientgone_tests::tls::{TlsClient, requests};

use super::*;

const ASYNCIO_SERVER_PY: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/watch/asyncio_server.py");
const TLS_SERVER_GO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/watch/tls_server.go");
const SKIPPED: &str = "clientgone_watch_connections_skipped_total";

/// A self-signed certificate and its key for `localhost`, made by the
/// `openssl` command in `dir`.
fn certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let status = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=localhost", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run openssl");
    assert!(status.success(), "openssl req failed");
    (cert, key)
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A declared body sent in part over TLS to `path` (route `route`), then a
/// FIN: a break in the request body.
async fn half_body_then_fin(w: &Watch, addr: SocketAddr, path: &str, route: &str) {
    let upload = format!(
        "POST {path} HTTP/1.1\\r\\nHost: t\\r\\nContent-Length: 1000\\r\\n\\r\\n{}",
        "a".repeat(100)
    );
    let client = TlsClient::hold(addr, "hold", &[&upload]);
    w.wait(ACTIVE, &[("http_request_method", "POST")], 1.0)
        .await;
    client.close("fin");
    w.wait(DISCONNECTS, &brk(route, "request_body", "closed"), 1.0)
        .await;
}

/// What every TLS server test checks of the clients it broke: FIN and RST
/// while the handler waits on `slow` (route `slow_route`), with the server
/// at `addr` and its port watched by `w`.
async fn fin_and_rst_mid_handler(w: &Watch, addr: SocketAddr, slow: &str, slow_route: &str) {
    let request = format!("GET {slow} HTTP/1.1\\r\\nHost: t\\r\\n\\r\\n");
    for cause in ["closed", "reset"] {
        let client = TlsClient::hold(addr, "hold", &[&request]);
        w.wait(ACTIVE, &[("http_route", slow_route)], 1.0).await;
        client.close(if cause == "closed" { "fin" } else { "rst" });
        let s = w
            .wait(DISCONNECTS, &brk(slow_route, "handler", cause), 1.0)
            .await;
        s.assert_value(ACTIVE, &[("http_route", slow_route)], 0.0);
    }
}

both_captures!(
    python_https_server_breaks_are_counted_exactly,
    cfg_attr(
        not(ebpf),
        ignore = "needs root and kernel BTF (/sys/kernel/btf/vmlinux)"
    )
);
/// Python's `http.server` in `ssl`, started after the agent (its library's
/// probes cover it): exactly what the plaintext test counts.
async fn python_https_server_breaks_are_counted_exactly(capture: &'static str) {
    let dir = scratch_dir("tls-python", capture);
    let (cert, key) = certificate(&dir);
    let port = free_port();
    let port_s = port.to_string();
    let w = watch(
        capture,
        &[
            "--port",
            &port_s,
            "--route",
            "/users/{id}",
            "--user",
            "nobody",
        ],
    );
    assert!(
        w.startup.last().unwrap().contains("libssl.so"),
        "{:?}",
        w.startup
    );
    // It holds TLS plaintext: undumpable, which the kernel shows by leaving
    // its /proc entries to root though it now runs as nobody.
    let status = std::fs::read_to_string(format!("/proc/{}/status", w.pid())).unwrap();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uid.split_whitespace().skip(1).all(|u| u == "65534"),
        "{uid}"
    );
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::metadata(format!("/proc/{}/environ", w.pid())).unwrap();
    assert_eq!(
        owner.uid(),
        0,
        "a dumpable process's files are its own user's"
    );
    let (_server, addr) = python_server_with(&["--tls", path(&cert), path(&key), &port_s]);

    // 20 completed requests on one connection.
    let paths: Vec<String> = (0..20).map(|i| format!("/users/{i}")).collect();
    assert_eq!(requests(addr, &paths), [200; 20]);
    let s = w
        .wait(DURATION_COUNT, &[("http_route", "/users/{id}")], 20.0)
        .await;
    s.assert_value(
        DURATION_COUNT,
        &[
            ("http_route", "/users/{id}"),
            ("http_response_status_code", "200"),
            ("outcome", "completed"),
            ("server_port", &port_s),
        ],
        20.0,
    );
    w.wait(CLOSES, &[("reason", "idle")], 1.0).await;

    fin_and_rst_mid_handler(&w, addr, "/slow", "unmatched").await;

    // A declared body sent in part, then FIN.
    half_body_then_fin(&w, addr, "/upload", "unmatched").await;

    // RST in the middle of a 32 MiB response.
    TlsClient::hold(addr, "big", &["/big"]).close("rst");
    let s = w
        .wait(
            DISCONNECTS,
            &brk("unmatched", "response_body", "reset"),
            1.0,
        )
        .await;
    s.assert_value(
        DURATION_COUNT,
        &[
            ("http_response_status_code", "200"),
            ("outcome", "client_disconnect"),
        ],
        1.0,
    );

    // A client that leaves mid-handshake: a close, no request, no break.
    // This server lets its first read run the handshake (it never calls
    // SSL_do_handshake), which says nothing until the handshake is done:
    // the close is an idle one, as for plaintext.
    TlsClient::hold(addr, "hello-cut", &[]).close("fin");
    w.wait(CLOSES, &[("reason", "idle")], 2.0).await;

    // 200 random paths: only the template and `unmatched`.
    let mut rng = fastrand::Rng::with_seed(200);
    let paths: Vec<String> = (0..200)
        .map(|_| format!("/r/{}/{}", rng.u64(..), rng.alphanumeric()))
        .collect();
    assert_eq!(requests(addr, &paths), [200; 200]);
    let s = w
        .wait(
            DURATION_COUNT,
            &[("http_route", "unmatched"), ("outcome", "completed")],
            200.0,
        )
        .await;
    assert_eq!(
        s.label_values(DURATION_COUNT, "http_route"),
        ["/users/{id}", "unmatched"].map(String::from).into()
    );
    s.assert_value(DISCONNECTS, &[], 4.0);
    s.assert_value(DURATION_COUNT, &[], 224.0);
    // Each connection closed once (the sleeping handlers' closes come when
    // they wake): three idle (the cut handshake's among them), four aborted.
    let s = w.wait(CLOSES, &[("reason", "client_abort")], 4.0).await;
    s.assert_value(CLOSES, &[("reason", "idle")], 3.0);
    s.assert_value(CLOSES, &[], 7.0);
    s.assert_value(SKIPPED, &[], 0.0);
    s.assert_value("http_server_open_connections", &[], 0.0);
    s.assert_value("clientgone_watch_events_lost_total", &[], 0.0);
    let _ = std::fs::remove_dir_all(&dir);
}

both_captures!(
    nginx_terminating_tls_in_front_of_a_slow_backend_is_counted_exactly,
    cfg_attr(
        not(ebpf),
        ignore = "needs root and kernel BTF (/sys/kernel/btf/vmlinux)"
    ),
    cfg_attr(not(nginx), ignore = "needs nginx (Debian's nginx package)")
);
/// Debian's nginx with `listen … ssl`, proxying /api/ to the plain Python
/// server and serving a large file itself; only nginx's TLS port watched.
async fn nginx_terminating_tls_in_front_of_a_slow_backend_is_counted_exactly(
    capture: &'static str,
) {
    let (_server, upstream) = python_server();
    let dir = scratch_dir("tls-nginx", capture);
    let (cert, key) = certificate(&dir);
    std::fs::create_dir_all(dir.join("www")).unwrap();
    std::fs::write(dir.join("www/big.bin"), vec![b'x'; 32 << 20]).unwrap();
    let server = format!(
        "ssl_certificate {}; ssl_certificate_key {}; root {}/www;
         location /api/ {{ proxy_pass http://{upstream}/; proxy_http_version 1.1;
                           proxy_set_header Connection \"\"; }}",
        cert.display(),
        key.display(),
        dir.display()
    );
    let (_nginx, addr) = nginx_listen(&dir, "ssl http2", "keepalive_timeout 60s;", &server).await;
    let port_s = addr.port().to_string();
    let w = watch(
        capture,
        &[
            "--port",
            &port_s,
            "--route",
            "/api/users/{id}",
            "--route",
            "/api/{*rest}",
            "--route",
            "/big.bin",
        ],
    );
    // nginx's own library, found through its process.
    let tls_line = w.startup.last().unwrap();
    assert!(
        tls_line.contains("/root/") && tls_line.contains("libssl.so"),
        "{tls_line}"
    );

    let paths: Vec<String> = (0..20).map(|i| format!("/api/users/{i}")).collect();
    assert_eq!(requests(addr, &paths), [200; 20]);
    w.wait(
        DURATION_COUNT,
        &[("http_route", "/api/users/{id}"), ("outcome", "completed")],
        20.0,
    )
    .await;

    // The operator's case: a client gives up after a while on the slow
    // upstream (FIN), and one resets.
    fin_and_rst_mid_handler(&w, addr, "/api/slow", "/api/{*rest}").await;

    // A declared body sent in part, then FIN: nginx reads bodies before it
    // proxies, so the break is in the request body.
    half_body_then_fin(&w, addr, "/api/upload", "/api/{*rest}").await;

    // RST in the middle of the large file (written through SSL_write).
    TlsClient::hold(addr, "big", &["/big.bin"]).close("rst");
    w.wait(DISCONNECTS, &brk("/big.bin", "response_body", "reset"), 1.0)
        .await;

    // Mid-handshake: nginx runs the handshake itself (SSL_do_handshake), so
    // one that never completes is told: a close, no break.
    TlsClient::hold(addr, "hello-cut", &[]).close("fin");
    let s = w.wait(CLOSES, &[("reason", "tls_handshake")], 1.0).await;
    s.assert_value(CLOSES, &[("reason", "tls_handshake")], 1.0);

    let mut rng = fastrand::Rng::with_seed(200);
    let paths: Vec<String> = (0..200).map(|_| format!("/r{}", rng.u64(..))).collect();
    assert!(requests(addr, &paths).iter().all(|s| *s == 404));
    let s = w
        .wait(
            DURATION_COUNT,
            &[
                ("http_route", "unmatched"),
                ("http_response_status_code", "404"),
            ],
            200.0,
        )
        .await;
    assert_eq!(
        s.label_values(DURATION_COUNT, "http_route"),
        ["/api/users/{id}", "/api/{*rest}", "/big.bin", "unmatched"]
            .map(String::from)
            .into()
    );
    s.assert_value(DISCONNECTS, &[], 4.0);
    s.assert_value(DURATION_COUNT, &[], 224.0);
    s.assert_value(SKIPPED, &[], 0.0);
    s.assert_value("clientgone_watch_events_lost_total", &[], 0.0);

    // HTTP/2 by ALPN: its plaintext is read and followed. A stream the
    // client resets while nginx waits is that stream's break; the next one
    // on the same connection is answered and counted.
    let client =
        clientgone_tests::tls::H2TlsClient::start(addr, None, "/api/slow?h2", "/api/users/7");
    w.wait(ACTIVE, &[("http_route", "/api/{*rest}")], 1.0).await;
    let status = tokio::task::spawn_blocking(move || client.reset_then_get())
        .await
        .unwrap();
    assert_eq!(status, "200");
    let s = w
        .wait(
            DISCONNECTS,
            &brk("/api/{*rest}", "handler", "stream_reset"),
            1.0,
        )
        .await;
    s.assert_value(SKIPPED, &[], 0.0);
    // Both streams are in the duration histogram: the break and the answer.
    w.wait(DURATION_COUNT, &[], 226.0).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
#[cfg_attr(
    not(ebpf),
    ignore = "needs root and kernel BTF (/sys/kernel/btf/vmlinux)"
)]
#[cfg_attr(not(go), ignore = "needs Go (Debian's golang-go package)")]
/// A Go `net/http` server with its own TLS (`crypto/tls`, not OpenSSL): its
/// connections are skipped as `tls`, and counted open and closed all the same;
/// the start-up line names it as a server whose TLS cannot be read.
async fn a_go_tls_server_is_skipped_as_tls_and_its_connections_counted() {
    let dir = scratch_dir("tls-go", "socket");
    let (cert, key) = certificate(&dir);
    let binary = dir.join("tls_server");
    let built = Command::new("go")
        .args(["build", "-o"])
        .arg(&binary)
        .arg(TLS_SERVER_GO)
        .env("GOCACHE", std::env::temp_dir().join("cg-go-cache"))
        .env("GO111MODULE", "off")
        .status()
        .expect("run go build");
    assert!(built.success(), "go build failed");
    let (_server, addr) =
        server_on_printed_port(Command::new(&binary).args([path(&cert), path(&key)]));
    let port_s = addr.port().to_string();
    let w = watch("socket", &["--port", &port_s]);
    let tls_line = w.startup.last().unwrap();
    assert!(
        tls_line.contains("no OpenSSL") && tls_line.contains("(tls_server)"),
        "{tls_line}"
    );

    assert_eq!(requests(addr, &["/a".into(), "/b".into()]), [200, 200]);
    let client = TlsClient::hold(
        addr,
        "hold",
        &["GET /slow HTTP/1.1\\r\\nHost: t\\r\\n\\r\\n"],
    );
    w.wait("http_server_open_connections", &[], 1.0).await;
    client.close("fin");
    w.wait(SKIPPED, &[("reason", "tls")], 2.0).await;
    let s = w.wait(CLOSES, &[], 2.0).await;
    s.assert_value(DURATION_COUNT, &[], 0.0);
    s.assert_value(DISCONNECTS, &[], 0.0);
    s.assert_value("http_server_open_connections", &[], 0.0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
#[cfg_attr(
    not(ebpf),
    ignore = "needs root and kernel BTF (/sys/kernel/btf/vmlinux)"
)]
/// asyncio's TLS (OpenSSL over memory buffers): the process calls the probed
/// OpenSSL, but never on the socket, so its connections cannot be tied —
/// skipped as `tls_unmapped` (asyncio starts each handshake before it reads
/// the socket, so even the first connection is known to be OpenSSL's), never
/// counted as requests.
async fn an_asyncio_https_server_is_skipped_as_tls_unmapped() {
    let dir = scratch_dir("tls-asyncio", "socket");
    let (cert, key) = certificate(&dir);
    let (_server, addr) = server_on_printed_port(Command::new("python3").args([
        ASYNCIO_SERVER_PY,
        path(&cert),
        path(&key),
    ]));
    let w = watch("socket", &["--port", &addr.port().to_string()]);
    for _ in 0..2 {
        assert_eq!(requests(addr, &["/a".into(), "/b".into()]), [200, 200]);
    }
    let s = w.wait(SKIPPED, &[], 2.0).await;
    s.assert_value(SKIPPED, &[("reason", "tls_unmapped")], 2.0);
    s.assert_value(DURATION_COUNT, &[], 0.0);
    w.wait(CLOSES, &[], 2.0).await;
    let _ = std::fs::remove_dir_all(&dir);
}
