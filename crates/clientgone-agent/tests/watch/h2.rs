//! `clientgone watch` following HTTP/2: Debian's nginx serving h2c (prior
//! knowledge, `listen … http2`) in front of the slow Python server, driven by
//! the h2 crate's client (hyper's): streams counted under their routes, a
//! client's `RST_STREAM` a `stream_reset` of that stream while the
//! connection lives on, a FIN the break of the stream in flight.

use clientgone_tests::client::H2Connection;

use super::*;

const SKIPPED: &str = "clientgone_watch_connections_skipped_total";

both_captures!(
    nginx_h2c_streams_are_requests_and_a_stream_reset_is_that_streams_break,
    cfg_attr(
        not(ebpf),
        ignore = "needs root and kernel BTF (/sys/kernel/btf/vmlinux)"
    ),
    cfg_attr(not(nginx), ignore = "needs nginx (Debian's nginx package)")
);
async fn nginx_h2c_streams_are_requests_and_a_stream_reset_is_that_streams_break(
    capture: &'static str,
) {
    let (_server, upstream) = python_server();
    let dir = scratch_dir("h2c-nginx", capture);
    let server = format!(
        "location /api/ {{ proxy_pass http://{upstream}/; proxy_http_version 1.1;
                           proxy_set_header Connection \"\"; }}"
    );
    let (_nginx, addr) = nginx_listen(&dir, "http2", "keepalive_timeout 60s;", &server).await;
    let port = addr.port().to_string();
    let w = watch(
        capture,
        &[
            "--port",
            &port,
            "--route",
            "/api/users/{id}",
            "--route",
            "/api/slow",
        ],
    );
    let slow = [("http_route", "/api/slow")];

    // 20 streams on one connection, answered.
    let mut c = H2Connection::open(addr).await;
    for i in 0..20 {
        let (status, body) = c.get(&format!("/api/users/{i}")).await;
        assert_eq!((status, &body[..]), (200, &b"user\n"[..]));
    }
    let users = [("http_route", "/api/users/{id}"), ("outcome", "completed")];
    w.wait(DURATION_COUNT, &users, 20.0).await;

    // The client resets a stream while nginx waits for the backend.
    let (response, mut send) = c.start_get("/api/slow").await;
    w.wait(ACTIVE, &slow, 1.0).await;
    send.send_reset(::h2::Reason::CANCEL);
    drop(response);
    w.wait(
        DISCONNECTS,
        &brk("/api/slow", "handler", "stream_reset"),
        1.0,
    )
    .await;
    // The connection lives on: the next stream is answered and counted.
    let (status, _) = c.get("/api/users/99").await;
    assert_eq!(status, 200);
    w.wait(DURATION_COUNT, &users, 21.0).await;

    // A FIN while a stream waits.
    let (_response, _send) = c.start_get("/api/slow").await;
    w.wait(ACTIVE, &slow, 1.0).await;
    c.close();
    let s = w
        .wait(DISCONNECTS, &brk("/api/slow", "handler", "closed"), 1.0)
        .await;
    s.assert_value(DISCONNECTS, &[], 2.0);
    s.assert_value(SKIPPED, &[], 0.0);
    s.assert_value("clientgone_watch_events_lost_total", &[], 0.0);
    w.wait(CLOSES, &[("reason", "client_abort")], 1.0).await;
    let _ = std::fs::remove_dir_all(&dir);
}
