//! `ClientGone`: handlers learn that their client left, in time to stop work.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::routing::get;
use clientgone::{ClientGone, DisconnectLayer, TrackedConnection};
use clientgone_tests::client::{Http1Connection, close_fin, close_rst, read_until, send_raw};
use clientgone_tests::{DEADLINE, serve_app, wait_for_registry_value, wait_until};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

/// Sends `GET path` and returns the client's socket once the request is in flight.
async fn request_in_flight(
    addr: std::net::SocketAddr,
    registry: &prometheus::Registry,
    path: &str,
) -> tokio::net::TcpStream {
    let request = format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n");
    let stream = send_raw(addr, request.as_bytes()).await;
    wait_for_registry_value(registry, "http_server_active_requests", &[], 1.0).await;
    stream
}

async fn wait_for_client(
    gone: ClientGone,
    State(tx): State<mpsc::UnboundedSender<Instant>>,
) -> &'static str {
    let token = gone.token();
    // Spawned work outlives the handler's future; only the token reaches it.
    tokio::spawn(async move {
        token.cancelled().await;
        let _ = tx.send(Instant::now());
    });
    tokio::time::sleep(Duration::from_secs(60)).await;
    "done"
}

#[tokio::test]
async fn the_token_fires_within_100ms_of_a_fin() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (addr, registry) = serve_app(|metrics| {
        Router::new()
            .route("/wait", get(wait_for_client))
            .with_state(tx)
            .layer(DisconnectLayer::new(metrics))
    })
    .await;

    let stream = request_in_flight(addr, &registry, "/wait").await;
    let closed_at = Instant::now();
    close_fin(stream);
    let fired_at = tokio::time::timeout(DEADLINE, rx.recv())
        .await
        .expect("token fired")
        .expect("sender alive");
    let latency = fired_at - closed_at;
    assert!(
        latency < Duration::from_millis(100),
        "token fired after {latency:?}"
    );
}

#[tokio::test]
async fn the_token_stays_quiet_for_a_completed_request() {
    let (addr, _) = serve_app(|metrics| {
        Router::new()
            .route(
                "/quick",
                get(|gone: ClientGone| async move { if gone.is_gone() { "gone" } else { "here" } }),
            )
            .layer(DisconnectLayer::new(metrics))
    })
    .await;
    let mut conn = Http1Connection::open(addr).await;
    assert_eq!(&conn.request("GET", "/quick").await.1[..], b"here");
    conn.close().await;
}

/// Under a server that gives no `ConnectInfo<TrackedConnection>` (plain
/// `axum::serve` on a `TcpListener`), the layer still hands the extractor its
/// request: it finds it in an extension of its own.
#[tokio::test]
async fn the_extractor_works_without_a_tracked_connection() {
    let metrics = clientgone::Metrics::new(&prometheus::Registry::new()).unwrap();
    let app = Router::new()
        .route(
            "/quick",
            get(|gone: ClientGone| async move { if gone.is_gone() { "gone" } else { "here" } }),
        )
        .layer(DisconnectLayer::new(metrics));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(axum::serve(listener, app).into_future());
    let mut conn = Http1Connection::open(addr).await;
    let (status, body) = conn.request("GET", "/quick").await;
    assert_eq!((status, &body[..]), (200, &b"here"[..]));
    conn.close().await;
}

#[tokio::test]
async fn without_the_layer_the_extractor_says_what_to_do() {
    let app = Router::new().route("/x", get(|_gone: ClientGone| async { "x" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(axum::serve(listener, app).into_future());
    let mut conn = Http1Connection::open(addr).await;
    let (status, body) = conn.request("GET", "/x").await;
    assert_eq!(status, 500);
    assert!(String::from_utf8_lossy(&body).contains("DisconnectLayer"));
}

/// What happened to a request, in order.
type Events = Arc<Mutex<Vec<&'static str>>>;

/// Notes its own drop: the moment hyper dropped the handler's future.
struct NoteDrop(Events);

impl Drop for NoteDrop {
    fn drop(&mut self) {
        self.0.lock().unwrap().push("future dropped");
    }
}

async fn hooked(
    ConnectInfo(connection): ConnectInfo<TrackedConnection>,
    State(events): State<Events>,
) -> &'static str {
    let noted = events.clone();
    let _hook = connection.on_client_left(move || noted.lock().unwrap().push("hook ran"));
    let _note = NoteDrop(events);
    tokio::time::sleep(Duration::from_secs(60)).await;
    "done"
}

async fn hook_runs_before_the_future_is_dropped(close: fn(tokio::net::TcpStream)) {
    let events = Events::default();
    let (addr, registry) = serve_app(|metrics| {
        Router::new()
            .route("/hooked", get(hooked))
            .with_state(events.clone())
            .layer(DisconnectLayer::new(metrics))
    })
    .await;
    let stream = request_in_flight(addr, &registry, "/hooked").await;
    close(stream);
    wait_until("the future to be dropped", || async {
        events.lock().unwrap().contains(&"future dropped")
    })
    .await;
    assert_eq!(*events.lock().unwrap(), ["hook ran", "future dropped"]);
}

#[tokio::test]
async fn a_client_left_hook_runs_on_a_fin_before_the_request_future_is_dropped() {
    hook_runs_before_the_future_is_dropped(close_fin).await;
}

#[tokio::test]
async fn a_client_left_hook_runs_on_a_reset_before_the_request_future_is_dropped() {
    hook_runs_before_the_future_is_dropped(close_rst).await;
}

#[tokio::test]
async fn a_hook_dropped_with_its_request_never_runs() {
    let ran = Arc::new(AtomicBool::new(false));
    let (addr, registry) = serve_app(|metrics| {
        Router::new()
            .route(
                "/quick",
                get(
                    |ConnectInfo(connection): ConnectInfo<TrackedConnection>,
                     State(ran): State<Arc<AtomicBool>>| async move {
                        let _hook =
                            connection.on_client_left(move || ran.store(true, Ordering::Release));
                        "quick"
                    },
                ),
            )
            .route("/slow", get(|| tokio::time::sleep(Duration::from_secs(60))))
            .with_state(ran.clone())
            .layer(DisconnectLayer::new(metrics))
    })
    .await;
    // The hook's request completes; the next one on the same connection breaks.
    let mut stream = send_raw(addr, b"GET /quick HTTP/1.1\r\nHost: t\r\n\r\n").await;
    read_until(&mut stream, b"quick").await;
    stream
        .write_all(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    wait_for_registry_value(&registry, "http_server_active_requests", &[], 1.0).await;
    close_fin(stream);
    wait_for_registry_value(
        &registry,
        "http_server_client_disconnects_total",
        &[("http_route", "/slow")],
        1.0,
    )
    .await;
    assert!(
        !ran.load(Ordering::Acquire),
        "a hook ran for a request that had completed"
    );
}

/// Notes, when the handler's future is dropped, whether its token had fired.
struct NoteTokenAtDrop(
    tokio_util::sync::CancellationToken,
    Arc<Mutex<Option<bool>>>,
);

impl Drop for NoteTokenAtDrop {
    fn drop(&mut self) {
        *self.1.lock().unwrap() = Some(self.0.is_cancelled());
    }
}

#[tokio::test]
async fn the_token_fires_before_the_handler_is_dropped() {
    let seen = Arc::new(Mutex::new(None));
    let (addr, registry) = serve_app(|metrics| {
        Router::new()
            .route(
                "/wait",
                get(
                    |gone: ClientGone, State(seen): State<Arc<Mutex<Option<bool>>>>| async move {
                        let _note = NoteTokenAtDrop(gone.token(), seen);
                        tokio::time::sleep(Duration::from_secs(60)).await;
                        "done"
                    },
                ),
            )
            .with_state(seen.clone())
            .layer(DisconnectLayer::new(metrics))
    })
    .await;
    let stream = request_in_flight(addr, &registry, "/wait").await;
    close_fin(stream);
    wait_until("the handler to be dropped", || async {
        seen.lock().unwrap().is_some()
    })
    .await;
    assert_eq!(
        *seen.lock().unwrap(),
        Some(true),
        "the token had not fired when the handler was dropped"
    );
}

/// The README's handler: it answers as soon as the token fires. Its answer
/// reaches no one — on HTTP/2 the stream's task runs it before the connection
/// is torn down — so the break stays the handler's, with 499, as on HTTP/1.
#[tokio::test]
async fn a_handler_that_answers_after_its_client_left_is_still_a_handler_break() {
    let (addr, registry) = serve_app(|metrics| {
        Router::new()
            .route(
                "/hello",
                get(|gone: ClientGone| async move {
                    tokio::select! {
                        () = gone.cancelled() => "never sent: the client left",
                        () = tokio::time::sleep(Duration::from_secs(60)) => "late",
                    }
                }),
            )
            .layer(DisconnectLayer::new(metrics))
    })
    .await;

    // HTTP/2: the connection closes (FIN) under an open stream.
    let mut h2 = clientgone_tests::client::H2Connection::open(addr).await;
    let (_response, _stream) = h2.start_get("/hello").await;
    wait_for_registry_value(&registry, "http_server_active_requests", &[], 1.0).await;
    h2.close();
    // HTTP/1.1, the same.
    let stream = request_in_flight(addr, &registry, "/hello").await;
    close_fin(stream);

    // Any cause: the aborted HTTP/2 client closes with a FIN, or with a RST
    // when the server's last frames (a SETTINGS ack, a WINDOW_UPDATE) were
    // still unread in its socket — the kernel's choice, not the server's.
    let broken = [("http_route", "/hello"), ("phase", "handler")];
    let s = wait_for_registry_value(
        &registry,
        "http_server_client_disconnects_total",
        &broken,
        2.0,
    )
    .await;
    assert!(
        s.value(
            "http_server_client_disconnects_total",
            &[("cause", "closed")]
        ) >= 1.0,
        "the HTTP/1.1 client's FIN is `closed`\n{}",
        s.text
    );
    s.assert_value(
        "http_server_request_duration_seconds_count",
        &[
            ("http_response_status_code", "499"),
            ("outcome", "client_disconnect"),
        ],
        2.0,
    );
    s.assert_value("http_server_client_disconnects_total", &[], 2.0);
}
