//! `ClientGone`: handlers learn that their client left, in time to stop work.

use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use clientgone::{ClientGone, DisconnectLayer};
use clientgone_tests::client::{Http1Connection, close_fin, send_raw};
use clientgone_tests::{DEADLINE, serve_app, wait_for_registry_value};
use tokio::sync::mpsc;

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

    let stream = send_raw(addr, b"GET /wait HTTP/1.1\r\nHost: t\r\n\r\n").await;
    wait_for_registry_value(&registry, "http_server_active_requests", &[], 1.0).await;
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
