//! `clientgone watch` following HTTP/2: Debian's nginx serving h2c (prior
//! knowledge, `listen … http2`) in front of the slow Python server, driven by
//! the h2 crate's client (hyper's): streams counted under their routes, a
//! client's `RST_STREAM` a `stream_reset` of that stream while the
//! connection lives on, a FIN the break of the stream in flight. And an
//! unmodified Python grpcio server driven by grpcio's client: calls counted
//! per method from a descriptor set, a cancel, a deadline, a server stream
//! cancelled, a client stream aborted, a TCP reset mid-call, invented
//! methods as `_OTHER`.

use clientgone_tests::client::H2Connection;
use clientgone_tests::grpc::{GrpcDriver, GrpcUpstream, RawCall};
use serde_json::json;

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

both_captures!(
    large_h2c_bodies_are_followed_past_their_data_and_a_reset_mid_body_counted,
    cfg_attr(
        not(ebpf),
        ignore = "needs root and kernel BTF (/sys/kernel/btf/vmlinux)"
    ),
    cfg_attr(not(nginx), ignore = "needs nginx (Debian's nginx package)")
);
/// nginx writes a large body in writes of many DATA frames, with other
/// streams' HEADERS among them: the kernel passes over DATA payloads and
/// sends every frame header and header block, so the connection is followed
/// however large the bodies.
async fn large_h2c_bodies_are_followed_past_their_data_and_a_reset_mid_body_counted(
    capture: &'static str,
) {
    let dir = scratch_dir("h2c-big", capture);
    std::fs::create_dir_all(dir.join("www")).unwrap();
    let big: Vec<u8> = (0..2_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(dir.join("www/big.bin"), &big).unwrap();
    std::fs::write(dir.join("www/small.txt"), b"small\n").unwrap();
    let server = format!("root {}/www;", dir.display());
    let (_nginx, addr) = nginx_listen(&dir, "http2", "keepalive_timeout 60s;", &server).await;
    let port = addr.port().to_string();
    let w = watch(
        capture,
        &[
            "--port",
            &port,
            "--route",
            "/big.bin",
            "--route",
            "/small.txt",
        ],
    );

    // Four large bodies and eight small ones at once on one connection.
    let mut c = H2Connection::open_wide(addr).await;
    let mut pending = Vec::new();
    for i in 0..12 {
        let path = if i % 3 == 0 { "/big.bin" } else { "/small.txt" };
        pending.push(c.start_get(path).await);
    }
    for (i, (response, _send)) in pending.into_iter().enumerate() {
        let response = response.await.expect("h2 response");
        assert_eq!(response.status(), 200);
        let mut body = response.into_body();
        let mut got = 0;
        while let Some(chunk) = body.data().await {
            let chunk = chunk.expect("h2 body");
            let _ = body.flow_control().release_capacity(chunk.len());
            got += chunk.len();
        }
        assert_eq!(got, if i % 3 == 0 { big.len() } else { 6 });
    }
    let done = |route| [("http_route", route), ("outcome", "completed")];
    w.wait(DURATION_COUNT, &done("/big.bin"), 4.0).await;
    w.wait(DURATION_COUNT, &done("/small.txt"), 8.0).await;

    c.close();

    // The client resets a body it has begun to read (on a connection of the
    // default 64 KiB window, so nginx still has most of it to write).
    let mut c = H2Connection::open(addr).await;
    let (response, mut send) = c.start_get("/big.bin").await;
    let mut body = response.await.expect("h2 response").into_body();
    body.data().await.expect("a first chunk").expect("h2 body");
    send.send_reset(::h2::Reason::CANCEL);
    drop(body);
    w.wait(
        DISCONNECTS,
        &brk("/big.bin", "response_body", "stream_reset"),
        1.0,
    )
    .await;
    // The connection lives on.
    let (status, body) = c.get("/small.txt").await;
    assert_eq!((status, &body[..]), (200, &b"small\n"[..]));
    let s = w.wait(DURATION_COUNT, &done("/small.txt"), 9.0).await;
    s.assert_value(SKIPPED, &[], 0.0);
    s.assert_value("clientgone_watch_events_lost_total", &[], 0.0);
    s.assert_value(DISCONNECTS, &[], 1.0);
    s.assert_value(DURATION_COUNT, &done("/big.bin"), 4.0);
    c.close();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The demo service's descriptor set, which the Python server implements.
const DEMO_DESCRIPTOR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/demo/grpc/demo.bin");
const WAIT: &str = "clientgone.demo.v1.Demo/Wait";

both_captures!(
    grpcio_calls_are_counted_per_method_with_their_cancels_and_deadlines,
    cfg_attr(
        not(ebpf),
        ignore = "needs root and kernel BTF (/sys/kernel/btf/vmlinux)"
    ),
    cfg_attr(
        not(grpcio),
        ignore = "needs Python grpcio: pip install grpcio"
    )
);
async fn grpcio_calls_are_counted_per_method_with_their_cancels_and_deadlines(
    capture: &'static str,
) {
    let mut server = GrpcUpstream::start().await;
    let port = server.addr.port().to_string();
    let w = watch(
        capture,
        &["--port", &port, "--grpc-descriptor", DEMO_DESCRIPTOR],
    );
    assert!(
        w.startup.iter().any(|l| l.contains("4 gRPC methods")),
        "{:?}",
        w.startup
    );
    let mut client = GrpcDriver::connect(server.addr);
    let brk = |method: &'static str, phase: &'static str, cause: &'static str| {
        [("rpc_method", method), ("phase", phase), ("cause", cause)]
    };

    // 20 unary calls answered OK.
    for i in 0..20 {
        let id = format!("ok{i}");
        client
            .start(&id, json!({"method": "Wait", "request": {"delay_ms": 1}}))
            .await;
        assert_eq!(client.result(&id).await.0, "OK");
    }
    let ok = [
        ("rpc_method", WAIT),
        ("rpc_type", "unary"),
        ("rpc_response_status_code", "OK"),
    ];
    w.wait(CALLS, &ok, 20.0).await;

    // A cancel mid-handler, and a deadline.
    client
        .start(
            "c",
            json!({"method": "Wait", "request": {"delay_ms": 60000}}),
        )
        .await;
    server.wait_for("start", "Wait").await;
    client.cancel("c").await;
    w.wait(CALL_BREAKS, &brk(WAIT, "handler", "stream_reset"), 1.0)
        .await;
    client
        .start(
            "d",
            json!({"method": "Wait", "request": {"delay_ms": 60000}, "timeout": 0.3}),
        )
        .await;
    assert_eq!(client.result("d").await.0, "DEADLINE_EXCEEDED");
    w.wait(CALL_BREAKS, &brk(WAIT, "handler", "deadline_exceeded"), 1.0)
        .await;

    // A server stream cancelled after 3 messages; a client stream aborted.
    client
        .start(
            "t",
            json!({"method": "Ticks", "request": {"count": 100, "interval_ms": 50}, "cancel_after": 3}),
        )
        .await;
    w.wait(
        CALL_BREAKS,
        &brk(
            "clientgone.demo.v1.Demo/Ticks",
            "response_body",
            "stream_reset",
        ),
        1.0,
    )
    .await;
    client
        .start("u", json!({"method": "Upload", "chunks": 3, "hang": true}))
        .await;
    server.wait_for("start", "Upload").await;
    client.cancel("u").await;
    w.wait(
        CALL_BREAKS,
        &brk(
            "clientgone.demo.v1.Demo/Upload",
            "request_body",
            "stream_reset",
        ),
        1.0,
    )
    .await;

    // The TCP connection reset mid-call (WaitRequest { delay_ms: 60000 }).
    let call = RawCall::start(server.addr, &format!("/{WAIT}"), &[0x08, 0xe0, 0xd4, 0x03]).await;
    w.wait("rpc_server_active_calls", &[("rpc_method", WAIT)], 1.0)
        .await;
    call.reset().await;
    w.wait(CALL_BREAKS, &brk(WAIT, "handler", "reset"), 1.0)
        .await;

    // 200 invented methods: one label value, _OTHER.
    client.send(json!({"op": "invented", "n": 200})).await;
    let s = w.wait(CALLS, &[("rpc_method", "_OTHER")], 200.0).await;
    assert_eq!(
        s.label_values(CALLS, "rpc_method"),
        [
            "_OTHER",
            "clientgone.demo.v1.Demo/Ticks",
            "clientgone.demo.v1.Demo/Upload",
            WAIT
        ]
        .map(String::from)
        .into()
    );
    s.assert_value(CALL_BREAKS, &[], 5.0);
    s.assert_value(DURATION_COUNT, &[], 0.0);
    s.assert_value("rpc_server_active_calls", &[], 0.0);
    s.assert_value(SKIPPED, &[], 0.0);
    s.assert_value("clientgone_watch_events_lost_total", &[], 0.0);
}

both_captures!(
    every_broken_grpc_call_gets_a_span,
    cfg_attr(
        not(ebpf),
        ignore = "needs root and kernel BTF (/sys/kernel/btf/vmlinux)"
    ),
    cfg_attr(
        not(grpcio),
        ignore = "needs Python grpcio: pip install grpcio"
    )
);
/// With OTLP on and a sampling ratio of 0, a completed call exports no span
/// and a cancelled one does, named by its method, with the layer's call
/// attributes and `client.disconnect` event.
async fn every_broken_grpc_call_gets_a_span(capture: &'static str) {
    use clientgone_tests::otlp::{
        assert_broken_span, assert_span_lasts_its_elapsed, grpc_receiver, string_attr,
    };
    let (endpoint, mut received) = grpc_receiver().await;
    let server = GrpcUpstream::start().await;
    let port = server.addr.port().to_string();
    let w = watch_with_env(
        capture,
        &["--port", &port, "--grpc-descriptor", DEMO_DESCRIPTOR],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0"),
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
        ],
    );
    let mut client = GrpcDriver::connect(server.addr);
    client
        .start("ok", json!({"method": "Wait", "request": {"delay_ms": 1}}))
        .await;
    assert_eq!(client.result("ok").await.0, "OK");
    client
        .start(
            "c",
            json!({"method": "Wait", "request": {"delay_ms": 60000}}),
        )
        .await;
    w.wait("rpc_server_active_calls", &[("rpc_method", WAIT)], 1.0)
        .await;
    client.cancel("c").await;
    let s = w
        .wait(
            CALL_BREAKS,
            &[
                ("rpc_method", WAIT),
                ("phase", "handler"),
                ("cause", "stream_reset"),
            ],
            1.0,
        )
        .await;
    s.assert_value(CALLS, &[("rpc_response_status_code", "OK")], 1.0);
    let mut seen = Vec::new();
    let span = received
        .wait_for(clientgone_tests::DEADLINE, &mut seen, |s| {
            s.span.name == WAIT
        })
        .await
        .expect("the cancelled call's span");
    let attrs = &span.span.attributes;
    assert_eq!(string_attr(attrs, "rpc.method").as_deref(), Some(WAIT));
    assert_eq!(
        string_attr(attrs, "rpc.response.status_code").as_deref(),
        Some("CANCELLED")
    );
    assert_eq!(
        string_attr(attrs, "network.protocol.version").as_deref(),
        Some("2")
    );
    let event = assert_broken_span(&span.span, "handler", "stream_reset");
    assert_span_lasts_its_elapsed(&span.span, event);
    // One span: the completed call, at ratio 0, was not exported.
    assert!(
        seen.iter().all(|s| s.span.name == WAIT) && seen.len() == 1,
        "{:?}",
        seen.iter().map(|s| &s.span.name).collect::<Vec<_>>()
    );
}
