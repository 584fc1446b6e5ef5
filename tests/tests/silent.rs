//! Silent breaks: a client that vanishes without FIN or RST — a pulled cable, a
//! NAT entry gone — is found by TCP keepalive or `TCP_USER_TIMEOUT`, counted as
//! `cause="timeout"`, and its handler's `ClientGone` token fires.
//!
//! Each test makes two network namespaces joined by veth, runs *itself* again
//! inside the server namespace (the `child_*` tests, ignored in a plain run), and
//! cuts the client off with iptables DROP rules in the client namespace.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::routing::get;
use clientgone::{ClientGone, ConnectionOptions, DisconnectLayer};
use clientgone_tests::netns::{NetnsPair, SERVER_IP};
use clientgone_tests::{DEADLINE, Scrape, serve_app_on, wait_for_registry_value};
use tokio::sync::mpsc;

/// Set in the child's environment: the client namespace's name.
const CHILD_ENV: &str = "CLIENTGONE_NETNS_CLIENT";

const KEEPALIVE_IDLE: Duration = Duration::from_secs(1);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
const KEEPALIVE_RETRIES: u32 = 2;
const USER_TIMEOUT: Duration = Duration::from_secs(3);

fn run_child_in_server_namespace(child_test: &str, tag: &str) {
    let pair = NetnsPair::create(tag);
    let exe = std::env::current_exe().expect("test binary path");
    let status = pair
        .command(&pair.server, exe.to_str().expect("utf-8 path"))
        .args([
            child_test,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &pair.client)
        .status()
        .expect("run the child test");
    assert!(
        status.success(),
        "{child_test} failed inside the namespace: {status}"
    );
}

#[test]
#[cfg_attr(
    not(netns),
    ignore = "needs root, iproute2 (ip netns) and iptables; see tests/build.rs"
)]
fn a_client_vanishing_while_the_handler_waits_is_found_by_keepalive() {
    run_child_in_server_namespace("child_vanish_while_handler_waits", "h");
}

#[test]
#[cfg_attr(
    not(netns),
    ignore = "needs root, iproute2 (ip netns) and iptables; see tests/build.rs"
)]
fn a_client_vanishing_while_the_response_streams_is_found_by_the_user_timeout() {
    run_child_in_server_namespace("child_vanish_while_streaming", "s");
}

/// What the child's server exposes to its test.
struct Server {
    registry: prometheus::Registry,
    port: u16,
    gone: mpsc::UnboundedReceiver<Instant>,
}

async fn start_server() -> Server {
    let (tx, gone) = mpsc::unbounded_channel::<Instant>();
    let options = ConnectionOptions::default()
        .tcp_keepalive_idle(KEEPALIVE_IDLE)
        .tcp_keepalive_interval(KEEPALIVE_INTERVAL)
        .tcp_keepalive_retries(KEEPALIVE_RETRIES)
        .tcp_user_timeout(USER_TIMEOUT);
    let (addr, registry) = serve_app_on((SERVER_IP, 0), options, |metrics| {
        Router::new()
            .route("/wait", get(wait))
            .route("/stream", get(endless))
            .with_state(tx)
            .layer(DisconnectLayer::new(metrics))
    })
    .await;
    Server {
        registry,
        port: addr.port(),
        gone,
    }
}

fn report_gone(gone: ClientGone, tx: mpsc::UnboundedSender<Instant>) {
    tokio::spawn(async move {
        gone.cancelled().await;
        let _ = tx.send(Instant::now());
    });
}

async fn wait(gone: ClientGone, State(tx): State<mpsc::UnboundedSender<Instant>>) -> &'static str {
    report_gone(gone, tx);
    tokio::time::sleep(Duration::from_secs(600)).await;
    "done"
}

async fn endless(gone: ClientGone, State(tx): State<mpsc::UnboundedSender<Instant>>) -> Body {
    report_gone(gone, tx);
    let chunk = Bytes::from(vec![b'x'; 16 * 1024]);
    let chunks = futures_util::stream::unfold(chunk, |chunk| async move {
        tokio::time::sleep(Duration::from_millis(2)).await;
        Some((Ok::<_, std::convert::Infallible>(chunk.clone()), chunk))
    });
    Body::from_stream(chunks)
}

/// A Python client in the client namespace: sends one GET, then reads forever,
/// printing `flowing` once 64 KiB have arrived.
fn start_client(client_ns: &str, port: u16, path: &str) -> Child {
    const SCRIPT: &str = r#"
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
s.sendall(("GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % sys.argv[3]).encode())
total, told = 0, False
while True:
    data = s.recv(65536)
    if not data:
        break
    total += len(data)
    if total >= 65536 and not told:
        print("flowing", flush=True)
        told = True
"#;
    let mut cmd = std::process::Command::new("ip");
    cmd.args(["netns", "exec", client_ns, "python3", "-c", SCRIPT])
        .args([SERVER_IP, &port.to_string(), path])
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    cmd.spawn().expect("start the python client")
}

fn cut(client_ns: &str) -> Instant {
    for chain in ["INPUT", "OUTPUT"] {
        let status = std::process::Command::new("ip")
            .args([
                "netns", "exec", client_ns, "iptables", "-A", chain, "-j", "DROP",
            ])
            .status()
            .expect("iptables");
        assert!(status.success());
    }
    Instant::now()
}

async fn expect_timeout_break(server: &mut Server, phase: &str, cut_at: Instant, bound: Duration) {
    let labels = [("phase", phase), ("cause", "timeout")];
    let s = wait_for_registry_value(
        &server.registry,
        "http_server_client_disconnects_total",
        &labels,
        1.0,
    )
    .await;
    let noticed = cut_at.elapsed();
    assert!(
        noticed <= bound,
        "noticed after {noticed:?}, bound {bound:?}"
    );
    s.assert_value("http_server_client_disconnects_total", &[], 1.0);
    let fired = tokio::time::timeout(DEADLINE, server.gone.recv())
        .await
        .expect("ClientGone fired")
        .expect("sender alive");
    assert!(fired >= cut_at);
    let s = wait_for_registry_value(
        &server.registry,
        "http_server_connection_closes_total",
        &[("reason", "timeout")],
        1.0,
    )
    .await;
    assert_eq!(s.value("http_server_open_connections", &[]), 0.0);
    eprintln!("silent break ({phase}) noticed {noticed:?} after the cut");
}

#[tokio::test]
#[ignore = "runs inside the server namespace, started by its parent test"]
async fn child_vanish_while_handler_waits() {
    let client_ns = std::env::var(CHILD_ENV).expect("started by the parent test");
    let mut server = start_server().await;
    let mut client = start_client(&client_ns, server.port, "/wait");
    wait_for_registry_value(&server.registry, "http_server_active_requests", &[], 1.0).await;
    let cut_at = cut(&client_ns);
    // idle + interval × retries, plus 2 s of slack, as promised in the README.
    let bound = KEEPALIVE_IDLE + KEEPALIVE_INTERVAL * KEEPALIVE_RETRIES + Duration::from_secs(2);
    let bound = bound.max(USER_TIMEOUT + Duration::from_secs(2));
    expect_timeout_break(&mut server, "handler", cut_at, bound).await;
    let _ = client.kill();
    let _ = client.wait();
}

#[tokio::test]
#[ignore = "runs inside the server namespace, started by its parent test"]
async fn child_vanish_while_streaming() {
    let client_ns = std::env::var(CHILD_ENV).expect("started by the parent test");
    let mut server = start_server().await;
    let mut client = start_client(&client_ns, server.port, "/stream");
    let stdout = client.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    });
    let line = tokio::time::timeout(DEADLINE, line)
        .await
        .expect("the client reports data flowing")
        .unwrap()
        .expect("client output");
    assert_eq!(line.trim(), "flowing");
    let cut_at = cut(&client_ns);
    let bound = USER_TIMEOUT + Duration::from_secs(2);
    expect_timeout_break(&mut server, "response_body", cut_at, bound).await;
    let s = Scrape::from_registry(&server.registry);
    let kept = [
        ("http_response_status_code", "200"),
        ("outcome", "client_disconnect"),
    ];
    assert_eq!(
        s.value("http_server_request_duration_seconds_count", &kept),
        1.0
    );
    let _ = client.kill();
    let _ = client.wait();
}
