//! gRPC calls broken off by a client that is not ours (Python grpcio), against
//! the demo's service under `clientgone::serve`, against tonic's router inside
//! `clientgone::serve`, and under tonic's own `Server` — whose timeout and
//! shutdown are the server's, never a client break.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clientgone::{ClientGone, DisconnectLayer, Metrics, TrackedListener};
use clientgone_agent::demo::grpc::{self, DemoService, pb};
use clientgone_tests::grpc::{GrpcDriver, RawCall};
use clientgone_tests::{
    DEADLINE, Scrape, serve_app, start_demo, wait_for_registry_value, wait_for_value, wait_until,
};
use serde_json::json;
use tokio::sync::{Notify, oneshot};
use tonic::{Request, Response, Status, Streaming};

const WAIT: &str = "clientgone.demo.v1.Demo/Wait";
const TICKS: &str = "clientgone.demo.v1.Demo/Ticks";
const UPLOAD: &str = "clientgone.demo.v1.Demo/Upload";
const ECHO: &str = "clientgone.demo.v1.Demo/Echo";

fn calls<'a>(method: &'a str, status: &'a str, outcome: &'a str) -> [(&'a str, &'a str); 3] {
    [
        ("rpc_method", method),
        ("rpc_response_status_code", status),
        ("outcome", outcome),
    ]
}

/// No HTTP request metric saw the calls, and nothing is left in flight.
fn assert_counted_once(s: &Scrape) {
    assert_eq!(
        s.value("http_server_request_duration_seconds_count", &[]),
        0.0,
        "gRPC calls are not HTTP requests too\n{}",
        s.text
    );
    assert_eq!(s.value("rpc_server_active_calls", &[]), 0.0, "{}", s.text);
}

#[tokio::test]
#[cfg_attr(not(grpcio), ignore = "needs Python grpcio: pip install grpcio")]
async fn a_unary_call_cancelled_mid_handler_is_a_stream_reset_recorded_cancelled() {
    let demo = start_demo().await;
    let m = demo.metrics_addr;
    let mut client = GrpcDriver::connect(demo.addr);
    client
        .start(
            "a",
            json!({"method": "Wait", "request": {"delay_ms": 60000}}),
        )
        .await;
    wait_for_value(m, "rpc_server_active_calls", &[("rpc_method", WAIT)], 1.0).await;
    client.cancel("a").await;
    let broken = [
        ("rpc_system_name", "grpc"),
        ("rpc_method", WAIT),
        ("rpc_type", "unary"),
        ("phase", "handler"),
        ("cause", "stream_reset"),
    ];
    let s = wait_for_value(m, "rpc_server_client_disconnects_total", &broken, 1.0).await;
    s.assert_value("rpc_server_client_disconnects_total", &[], 1.0);
    s.assert_value(
        "rpc_server_call_duration_seconds_count",
        &calls(WAIT, "CANCELLED", "client_disconnect"),
        1.0,
    );
    s.assert_value("rpc_server_call_duration_seconds_count", &[], 1.0);
    assert_counted_once(&s);
    assert_eq!(client.result("a").await.0, "CANCELLED");
    // The connection is still up: a stream reset is not a connection close.
    s.assert_value("http_server_open_connections", &[], 1.0);
}

#[tokio::test]
#[cfg_attr(not(grpcio), ignore = "needs Python grpcio: pip install grpcio")]
async fn a_call_whose_deadline_runs_out_is_deadline_exceeded() {
    let demo = start_demo().await;
    let m = demo.metrics_addr;
    let mut client = GrpcDriver::connect(demo.addr);
    client
        .start(
            "a",
            json!({"method": "Wait", "request": {"delay_ms": 60000}, "timeout": 0.3}),
        )
        .await;
    let broken = [
        ("rpc_method", WAIT),
        ("phase", "handler"),
        ("cause", "deadline_exceeded"),
    ];
    let s = wait_for_value(m, "rpc_server_client_disconnects_total", &broken, 1.0).await;
    s.assert_value("rpc_server_client_disconnects_total", &[], 1.0);
    s.assert_value(
        "rpc_server_call_duration_seconds_count",
        &calls(WAIT, "DEADLINE_EXCEEDED", "client_disconnect"),
        1.0,
    );
    let waited = s.value(
        "rpc_server_client_disconnect_elapsed_seconds_sum",
        &[("rpc_method", WAIT)],
    );
    assert!((0.28..5.0).contains(&waited), "waited {waited} s");
    assert_counted_once(&s);
    assert_eq!(client.result("a").await.0, "DEADLINE_EXCEEDED");
}

#[tokio::test]
#[cfg_attr(not(grpcio), ignore = "needs Python grpcio: pip install grpcio")]
async fn a_server_stream_cancelled_after_three_messages_breaks_in_the_response_body() {
    let demo = start_demo().await;
    let m = demo.metrics_addr;
    let mut client = GrpcDriver::connect(demo.addr);
    client
        .start(
            "t",
            json!({"method": "Ticks", "request": {"count": 1000, "interval_ms": 20}, "cancel_after": 3}),
        )
        .await;
    let broken = [
        ("rpc_method", TICKS),
        ("rpc_type", "server_streaming"),
        ("phase", "response_body"),
        ("cause", "stream_reset"),
    ];
    let s = wait_for_value(m, "rpc_server_client_disconnects_total", &broken, 1.0).await;
    s.assert_value("rpc_server_client_disconnects_total", &[], 1.0);
    s.assert_value(
        "rpc_server_call_duration_seconds_count",
        &calls(TICKS, "CANCELLED", "client_disconnect"),
        1.0,
    );
    assert_counted_once(&s);
    let (code, messages) = client.result("t").await;
    assert_eq!((code.as_str(), messages.len()), ("CANCELLED", 3));
}

#[tokio::test]
#[cfg_attr(not(grpcio), ignore = "needs Python grpcio: pip install grpcio")]
async fn a_client_stream_aborted_breaks_in_the_request_body() {
    let demo = start_demo().await;
    let m = demo.metrics_addr;
    let mut client = GrpcDriver::connect(demo.addr);
    // Three chunks, then the stream hangs open until the cancel.
    client
        .start("u", json!({"method": "Upload", "chunks": 3, "hang": true}))
        .await;
    wait_for_value(m, "rpc_server_active_calls", &[("rpc_method", UPLOAD)], 1.0).await;
    client.cancel("u").await;
    let broken = [
        ("rpc_method", UPLOAD),
        ("rpc_type", "client_streaming"),
        ("phase", "request_body"),
        ("cause", "stream_reset"),
    ];
    let s = wait_for_value(m, "rpc_server_client_disconnects_total", &broken, 1.0).await;
    s.assert_value("rpc_server_client_disconnects_total", &[], 1.0);
    s.assert_value(
        "rpc_server_call_duration_seconds_count",
        &calls(UPLOAD, "CANCELLED", "client_disconnect"),
        1.0,
    );
    assert_counted_once(&s);
    assert_eq!(client.result("u").await.0, "CANCELLED");
}

#[tokio::test]
async fn a_connection_reset_mid_call_is_reset() {
    let demo = start_demo().await;
    let m = demo.metrics_addr;
    // WaitRequest { delay_ms: 60000 }
    let call = RawCall::start(demo.addr, &format!("/{WAIT}"), &[0x08, 0xe0, 0xd4, 0x03]).await;
    wait_for_value(m, "rpc_server_active_calls", &[("rpc_method", WAIT)], 1.0).await;
    call.reset().await;
    let broken = [
        ("rpc_method", WAIT),
        ("phase", "handler"),
        ("cause", "reset"),
    ];
    let s = wait_for_value(m, "rpc_server_client_disconnects_total", &broken, 1.0).await;
    s.assert_value("rpc_server_client_disconnects_total", &[], 1.0);
    s.assert_value(
        "rpc_server_call_duration_seconds_count",
        &calls(WAIT, "CANCELLED", "client_disconnect"),
        1.0,
    );
    let s = wait_for_value(
        m,
        "http_server_connection_closes_total",
        &[("reason", "client_abort")],
        1.0,
    )
    .await;
    assert_counted_once(&s);
}

#[tokio::test]
#[cfg_attr(not(grpcio), ignore = "needs Python grpcio: pip install grpcio")]
async fn completed_calls_of_all_four_types_break_nothing() {
    let demo = start_demo().await;
    let m = demo.metrics_addr;
    let mut client = GrpcDriver::connect(demo.addr);
    client
        .start("w", json!({"method": "Wait", "request": {"delay_ms": 10}}))
        .await;
    client
        .start(
            "t",
            json!({"method": "Ticks", "request": {"count": 3, "interval_ms": 10}}),
        )
        .await;
    client
        .start("u", json!({"method": "Upload", "chunks": 3}))
        .await;
    client
        .start("e", json!({"method": "Echo", "chunks": 3}))
        .await;
    let (code, messages) = client.result("w").await;
    assert_eq!(code, "OK");
    assert_eq!(messages[0]["1"], "Hello, World!");
    let (code, messages) = client.result("t").await;
    assert_eq!((code.as_str(), messages.len()), ("OK", 3));
    let (code, messages) = client.result("u").await;
    assert_eq!((code.as_str(), &messages[0]["1"]), ("OK", &json!(3000)));
    let (code, messages) = client.result("e").await;
    assert_eq!((code.as_str(), messages.len()), ("OK", 3));

    let s = wait_for_value(m, "rpc_server_call_duration_seconds_count", &[], 4.0).await;
    for (method, rpc_type) in [
        (WAIT, "unary"),
        (TICKS, "server_streaming"),
        (UPLOAD, "client_streaming"),
        (ECHO, "bidi_streaming"),
    ] {
        s.assert_value(
            "rpc_server_call_duration_seconds_count",
            &[
                ("rpc_method", method),
                ("rpc_type", rpc_type),
                ("rpc_response_status_code", "OK"),
                ("outcome", "completed"),
            ],
            1.0,
        );
    }
    assert_eq!(s.value("rpc_server_client_disconnects_total", &[]), 0.0);
    assert_counted_once(&s);
}

#[tokio::test]
#[cfg_attr(not(grpcio), ignore = "needs Python grpcio: pip install grpcio")]
async fn a_handler_error_status_is_recorded_with_it_not_as_a_break() {
    let demo = start_demo().await;
    let m = demo.metrics_addr;
    let mut client = GrpcDriver::connect(demo.addr);
    client
        .start(
            "w",
            json!({"method": "Wait", "request": {"delay_ms": 4_000_000}}),
        )
        .await;
    assert_eq!(client.result("w").await.0, "INVALID_ARGUMENT");
    let s = wait_for_value(
        m,
        "rpc_server_call_duration_seconds_count",
        &calls(WAIT, "INVALID_ARGUMENT", "completed"),
        1.0,
    )
    .await;
    assert_eq!(s.value("rpc_server_client_disconnects_total", &[]), 0.0);
    assert_counted_once(&s);
}

#[tokio::test]
#[cfg_attr(not(grpcio), ignore = "needs Python grpcio: pip install grpcio")]
async fn a_thousand_invented_method_names_add_only_other() {
    let demo = start_demo().await;
    let m = demo.metrics_addr;
    let mut client = GrpcDriver::connect(demo.addr);
    let answer = client.send(json!({"op": "invented", "n": 1000})).await;
    assert_eq!(answer["codes"], json!({"UNIMPLEMENTED": 1000}), "{answer}");
    let s = wait_for_value(
        m,
        "rpc_server_call_duration_seconds_count",
        &[("rpc_method", "_OTHER"), ("rpc_type", "unknown")],
        1000.0,
    )
    .await;
    for family in [
        "rpc_server_call_duration_seconds_count",
        "rpc_server_active_calls",
    ] {
        assert_eq!(
            s.label_values(family, "rpc_method"),
            ["_OTHER".to_owned()].into(),
            "{family}"
        );
    }
    s.assert_value(
        "rpc_server_call_duration_seconds_count",
        &[("rpc_response_status_code", "UNIMPLEMENTED")],
        1000.0,
    );
    assert_counted_once(&s);
}

#[tokio::test]
#[cfg_attr(not(grpcio), ignore = "needs Python grpcio: pip install grpcio")]
async fn tonic_routes_inside_clientgone_serve_tell_cancel_from_deadline() {
    let (addr, registry) = serve_app(|metrics| {
        tonic::service::Routes::new(grpc::service())
            .into_axum_router()
            .layer(DisconnectLayer::new(metrics).grpc(grpc::methods()))
    })
    .await;
    let mut client = GrpcDriver::connect(addr);
    client
        .start(
            "c",
            json!({"method": "Wait", "request": {"delay_ms": 60000}}),
        )
        .await;
    client
        .start(
            "d",
            json!({"method": "Wait", "request": {"delay_ms": 60000}, "timeout": 0.3}),
        )
        .await;
    wait_for_registry_value(&registry, "rpc_server_active_calls", &[], 2.0).await;
    client.cancel("c").await;
    for cause in ["stream_reset", "deadline_exceeded"] {
        wait_for_registry_value(
            &registry,
            "rpc_server_client_disconnects_total",
            &[("rpc_method", WAIT), ("phase", "handler"), ("cause", cause)],
            1.0,
        )
        .await;
    }
    assert_eq!(client.result("c").await.0, "CANCELLED");
    assert_eq!(client.result("d").await.0, "DEADLINE_EXCEEDED");
    assert_counted_once(&Scrape::from_registry(&registry));
}

/// tonic's own `Server`, over `TrackedListener`, with `configure` applied;
/// stops gracefully when the sender is used or dropped.
async fn serve_tonic<S>(
    timeout: Option<Duration>,
    service: S,
) -> (
    SocketAddr,
    prometheus::Registry,
    oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
)
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + tonic::server::NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let registry = prometheus::Registry::new();
    let metrics = Metrics::new(&registry).expect("fresh registry");
    let listener = TrackedListener::bind("127.0.0.1:0", &metrics)
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("bound");
    let (stop, stopped) = oneshot::channel::<()>();
    let mut builder = tonic::transport::Server::builder();
    if let Some(timeout) = timeout {
        builder = builder.timeout(timeout);
    }
    let server = builder
        .layer(DisconnectLayer::new(metrics).grpc(grpc::methods()))
        .add_service(service)
        .serve_with_incoming_shutdown(listener.into_incoming(), async {
            let _ = stopped.await;
        });
    let task = tokio::spawn(async move { server.await.expect("tonic serves") });
    (addr, registry, stop, task)
}

#[tokio::test]
#[cfg_attr(not(grpcio), ignore = "needs Python grpcio: pip install grpcio")]
async fn tonic_server_timeout_is_the_servers_never_a_client_break() {
    let (addr, registry, _stop, _task) =
        serve_tonic(Some(Duration::from_millis(300)), grpc::service()).await;
    let mut client = GrpcDriver::connect(addr);
    // No deadline of the client's, and one longer than the server's timeout.
    client
        .start(
            "a",
            json!({"method": "Wait", "request": {"delay_ms": 60000}}),
        )
        .await;
    client
        .start(
            "b",
            json!({"method": "Wait", "request": {"delay_ms": 60000}, "timeout": 30}),
        )
        .await;
    assert_eq!(client.result("a").await.0, "CANCELLED");
    assert_eq!(client.result("b").await.0, "CANCELLED");
    let s = wait_for_registry_value(
        &registry,
        "rpc_server_call_duration_seconds_count",
        &calls(WAIT, "CANCELLED", "completed"),
        2.0,
    )
    .await;
    assert_eq!(
        s.value("rpc_server_client_disconnects_total", &[]),
        0.0,
        "{}",
        s.text
    );
    assert_counted_once(&s);
}

#[tokio::test]
#[cfg_attr(not(grpcio), ignore = "needs Python grpcio: pip install grpcio")]
async fn a_client_deadline_that_tonic_enforces_is_deadline_exceeded() {
    let (addr, registry, _stop, _task) =
        serve_tonic(Some(Duration::from_secs(30)), grpc::service()).await;
    let mut client = GrpcDriver::connect(addr);
    client
        .start(
            "a",
            json!({"method": "Wait", "request": {"delay_ms": 60000}, "timeout": 0.3}),
        )
        .await;
    assert_eq!(client.result("a").await.0, "DEADLINE_EXCEEDED");
    let s = wait_for_registry_value(
        &registry,
        "rpc_server_client_disconnects_total",
        &[("rpc_method", WAIT), ("cause", "deadline_exceeded")],
        1.0,
    )
    .await;
    s.assert_value(
        "rpc_server_call_duration_seconds_count",
        &calls(WAIT, "DEADLINE_EXCEEDED", "client_disconnect"),
        1.0,
    );
    assert_counted_once(&s);
}

#[tokio::test]
#[cfg_attr(not(grpcio), ignore = "needs Python grpcio: pip install grpcio")]
async fn tonic_graceful_shutdown_breaks_nothing() {
    let (addr, registry, stop, task) = serve_tonic(None, grpc::service()).await;
    let mut client = GrpcDriver::connect(addr);
    client
        .start("a", json!({"method": "Wait", "request": {"delay_ms": 500}}))
        .await;
    wait_for_registry_value(&registry, "rpc_server_active_calls", &[], 1.0).await;
    stop.send(()).expect("the server is running");
    // The call in flight finishes; then the server's task ends.
    assert_eq!(client.result("a").await.0, "OK");
    drop(client);
    tokio::time::timeout(DEADLINE, task)
        .await
        .expect("tonic stops in time")
        .expect("tonic's task");
    let s = wait_for_registry_value(&registry, "http_server_open_connections", &[], 0.0).await;
    s.assert_value(
        "rpc_server_call_duration_seconds_count",
        &calls(WAIT, "OK", "completed"),
        1.0,
    );
    assert_eq!(s.value("rpc_server_client_disconnects_total", &[]), 0.0);
    assert_eq!(
        s.value(
            "http_server_connection_closes_total",
            &[("reason", "client_abort")]
        ),
        0.0
    );
    assert_counted_once(&s);
}

/// The demo's service with a `Wait` that watches its `ClientGone`.
#[derive(Clone)]
struct Watching {
    gone: Arc<Notify>,
    peer: Arc<Mutex<Option<SocketAddr>>>,
}

#[tonic::async_trait]
impl pb::demo_server::Demo for Watching {
    async fn wait(
        &self,
        request: Request<pb::WaitRequest>,
    ) -> Result<Response<pb::WaitReply>, Status> {
        *self.peer.lock().unwrap() = request.remote_addr();
        let gone = ClientGone::from_tonic(&request).expect("served with DisconnectLayer");
        let token = gone.token();
        let notify = self.gone.clone();
        // Spawned work outlives the handler's future: the token reaches it.
        tokio::spawn(async move {
            token.cancelled().await;
            notify.notify_one();
        });
        tokio::time::sleep(Duration::from_secs(60)).await;
        Err(Status::internal("not reached"))
    }

    type TicksStream = <DemoService as pb::demo_server::Demo>::TicksStream;
    async fn ticks(
        &self,
        request: Request<pb::TicksRequest>,
    ) -> Result<Response<Self::TicksStream>, Status> {
        pb::demo_server::Demo::ticks(&DemoService, request).await
    }

    async fn upload(
        &self,
        request: Request<Streaming<pb::Chunk>>,
    ) -> Result<Response<pb::UploadReply>, Status> {
        pb::demo_server::Demo::upload(&DemoService, request).await
    }

    type EchoStream = <DemoService as pb::demo_server::Demo>::EchoStream;
    async fn echo(
        &self,
        request: Request<Streaming<pb::Chunk>>,
    ) -> Result<Response<Self::EchoStream>, Status> {
        pb::demo_server::Demo::echo(&DemoService, request).await
    }
}

#[tokio::test]
#[cfg_attr(not(grpcio), ignore = "needs Python grpcio: pip install grpcio")]
async fn client_gone_fires_in_a_tonic_handler_and_remote_addr_still_answers() {
    let watching = Watching {
        gone: Arc::new(Notify::new()),
        peer: Arc::new(Mutex::new(None)),
    };
    let service = pb::demo_server::DemoServer::new(watching.clone());
    let (addr, registry, _stop, _task) = serve_tonic(None, service).await;
    let mut client = GrpcDriver::connect(addr);
    client
        .start("a", json!({"method": "Wait", "request": {"delay_ms": 1}}))
        .await;
    wait_for_registry_value(&registry, "rpc_server_active_calls", &[], 1.0).await;
    client.cancel("a").await;
    tokio::time::timeout(DEADLINE, watching.gone.notified())
        .await
        .expect("ClientGone fires when the client cancels");
    let peer = watching
        .peer
        .lock()
        .unwrap()
        .expect("remote_addr() answers");
    assert!(peer.ip().is_loopback(), "{peer}");
    wait_until("the break is counted", || async {
        Scrape::from_registry(&registry).value(
            "rpc_server_client_disconnects_total",
            &[("cause", "stream_reset")],
        ) == 1.0
    })
    .await;
}
