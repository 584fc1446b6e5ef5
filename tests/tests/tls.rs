//! HTTPS on the Rust side: `clientgone demo` with `--tls-cert`/`--tls-key`
//! (in process), an accept loop of one's own with `TlsAcceptor`, and OTLP to
//! https collectors. The clients are curl, Python's `ssl` and Python's `h2`
//! over `ssl` — none of them ours; the certificates come from a test CA made
//! with rcgen.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clientgone::{ConnectionOptions, TlsAcceptor};
use clientgone_agent::demo::{self, DemoConfig, RunningDemo};
use clientgone_agent::tls::TlsFiles;
use clientgone_exporter::otlp::{
    MetricsConfig, OtlpConfig, OtlpMetrics, OtlpPipeline, OtlpProtocol, OtlpTls,
};
use clientgone_tests::otlp::{self, ReceivedSpan};
use clientgone_tests::tls::{H2TlsClient, Pki, TlsClient};
use clientgone_tests::{DEADLINE, wait_for_registry_value, wait_for_value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

const DISCONNECTS: &str = "http_server_client_disconnects_total";
const DURATION_COUNT: &str = "http_server_request_duration_seconds_count";
const ACTIVE: &str = "http_server_active_requests";
const CLOSES: &str = "http_server_connection_closes_total";

async fn start_tls_demo(
    pki: &Pki,
    options: ConnectionOptions,
    tracer: Option<clientgone::DeferredTracer>,
) -> RunningDemo {
    demo::start(DemoConfig {
        listen: "127.0.0.1:0".into(),
        metrics_listen: "127.0.0.1:0".into(),
        options,
        registry: prometheus::Registry::new(),
        tracer,
        buckets: Default::default(),
        tls: Some(TlsFiles {
            cert: pki.cert.clone(),
            key: pki.key.clone(),
        }),
    })
    .await
    .expect("the HTTPS demo starts")
}

/// curl, verifying the server against the test CA; its output.
async fn curl(pki: &Pki, args: &[&str]) -> (bool, String) {
    let out = Command::new("curl")
        .args(["-s", "--cacert"])
        .arg(&pki.ca)
        .args(args)
        .output()
        .await
        .expect("curl runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn brk<'a>(route: &'a str, phase: &'a str, cause: &'a str) -> [(&'a str, &'a str); 3] {
    [("http_route", route), ("phase", phase), ("cause", cause)]
}

/// The HTTP/2 client over TLS: GETs `slow`, resets it once `in_flight`
/// resolves, then GETs `fast` on the same connection; the status of `fast`.
async fn h2_reset_then_get(
    pki: &Pki,
    addr: SocketAddr,
    in_flight: impl std::future::Future<Output = ()>,
    slow: &str,
    fast: &str,
) -> String {
    let client = H2TlsClient::start(addr, Some(&pki.ca), slow, fast);
    in_flight.await;
    tokio::task::spawn_blocking(move || client.reset_then_get())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_https_requests_complete_and_breaks_keep_their_causes() {
    let pki = Pki::new("demo");
    let demo = start_tls_demo(&pki, ConnectionOptions::default(), None).await;
    let (m, port) = (demo.metrics_addr, demo.addr.port());
    let url = |path: &str| format!("https://127.0.0.1:{port}{path}");

    // 20 completed: ten over HTTP/1.1 and ten over HTTP/2 (ALPN), each curl
    // on one keep-alive connection.
    let urls: Vec<String> = (0..10).map(|i| url(&format!("/items/{i}"))).collect();
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    for version in ["--http1.1", "--http2"] {
        let mut args = vec![version, "-w", "%{http_code} %{http_version}\n"];
        for url in &urls {
            args.extend(["-o", "/dev/null", url]);
        }
        let (ok, out) = curl(&pki, &args).await;
        assert!(ok, "curl {version} failed: {out}");
        let want = if version == "--http2" {
            "200 2"
        } else {
            "200 1.1"
        };
        assert_eq!(
            out.lines().filter(|l| *l == want).count(),
            10,
            "{version}: {out}"
        );
    }
    wait_for_value(m, DURATION_COUNT, &[("http_route", "/items/{id}")], 20.0).await;

    // curl gives up while the handler waits: a FIN (after its close_notify).
    let (ok, _) = curl(&pki, &["-m", "1", &url("/hello?delay_ms=30000")]).await;
    assert!(!ok, "curl should have timed out");
    wait_for_value(m, DISCONNECTS, &brk("/hello", "handler", "closed"), 1.0).await;

    // Python's ssl: FIN and RST mid-handler, a RST mid-body.
    let hold = "GET /hello?delay_ms=30000 HTTP/1.1\\r\\nHost: t\\r\\n\\r\\n";
    for (how, cause, total) in [("fin", "closed", 2.0), ("rst", "reset", 1.0)] {
        let client = TlsClient::hold(demo.addr, "hold", &[hold]);
        wait_for_value(m, ACTIVE, &[("http_route", "/hello")], 1.0).await;
        client.close(how);
        wait_for_value(m, DISCONNECTS, &brk("/hello", "handler", cause), total).await;
    }
    let client = TlsClient::hold(demo.addr, "big", &["/stream?chunks=100000&interval_ms=1"]);
    client.close("rst");
    let s = wait_for_value(
        m,
        DISCONNECTS,
        &brk("/stream", "response_body", "reset"),
        1.0,
    )
    .await;

    assert_eq!(s.value(DISCONNECTS, &[]), 4.0, "exactly the four breaks");
    s.assert_value(CLOSES, &[("reason", "tls_handshake")], 0.0);
    s.assert_value(ACTIVE, &[], 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_stream_reset_read_through_tls_is_stream_reset_and_the_connection_lives_on() {
    let pki = Pki::new("h2");
    let demo = start_tls_demo(&pki, ConnectionOptions::default(), None).await;
    let m = demo.metrics_addr;
    let in_flight = async {
        wait_for_value(m, ACTIVE, &[("http_route", "/hello")], 1.0).await;
    };
    let status = h2_reset_then_get(
        &pki,
        demo.addr,
        in_flight,
        "/hello?delay_ms=30000",
        "/items/7",
    )
    .await;
    assert_eq!(status, "200", "the stream after the reset is answered");
    let s = wait_for_value(
        m,
        DISCONNECTS,
        &brk("/hello", "handler", "stream_reset"),
        1.0,
    )
    .await;
    assert_eq!(s.value(DISCONNECTS, &[]), 1.0, "{s:?}");
    wait_for_value(
        m,
        DURATION_COUNT,
        &[("http_route", "/items/{id}"), ("outcome", "completed")],
        1.0,
    )
    .await;
    // One connection, closed by the client's GOAWAY: a normal close.
    wait_for_value(m, CLOSES, &[("reason", "idle")], 1.0).await;
}

/// Sends `bytes` over plain TCP to `addr` and waits (with the deadline) for
/// the server to close the connection.
async fn send_and_wait_for_close(addr: SocketAddr, bytes: &[u8]) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut sink = Vec::new();
    // An error is a close too (the server's reset after its alert).
    let _ = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut sink))
        .await
        .expect("the server closes a connection whose handshake failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_that_never_complete_close_as_tls_handshake_never_as_breaks() {
    let pki = Pki::new("handshake");
    let mut options = ConnectionOptions::default();
    options.header_read_timeout = Some(Duration::from_millis(400));
    let demo = start_tls_demo(&pki, options, None).await;
    let m = demo.metrics_addr;
    let handshakes =
        |n: f64| async move { wait_for_value(m, CLOSES, &[("reason", "tls_handshake")], n).await };

    // Half a ClientHello, then the client leaves.
    TlsClient::hold(demo.addr, "hello-cut", &[]).close("fin");
    handshakes(1.0).await;
    // Plaintext HTTP to the TLS port, and garbage.
    send_and_wait_for_close(demo.addr, b"GET /hello HTTP/1.1\r\nHost: t\r\n\r\n").await;
    handshakes(2.0).await;
    send_and_wait_for_close(demo.addr, &[0xff; 64]).await;
    handshakes(3.0).await;
    // A client that connects and says nothing: cut by the header-read timeout.
    let started = std::time::Instant::now();
    send_and_wait_for_close(demo.addr, b"").await;
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "cut before the header-read timeout: {:?}",
        started.elapsed()
    );
    let s = handshakes(4.0).await;

    assert_eq!(s.value(CLOSES, &[]), 4.0, "no other close: {s:?}");
    assert_eq!(s.value(DISCONNECTS, &[]), 0.0);
    assert_eq!(s.value(DURATION_COUNT, &[]), 0.0);
    // And the server still serves.
    let (ok, out) = curl(
        &pki,
        &[&format!("https://127.0.0.1:{}/items/1", demo.addr.port())],
    )
    .await;
    assert!(ok && out == "item 1\n", "{out}");
}

/// The README's accept loop of one's own: hyper directly, `TlsAcceptor`
/// between the tracked socket and hyper, the connection handed to the layer
/// as `ConnectInfo`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accept_loop_of_your_own_under_tls_keeps_every_cause() {
    use axum::extract::ConnectInfo;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto::Builder;
    use tower::Service;

    let pki = Pki::new("own-loop");
    let registry = prometheus::Registry::new();
    let metrics = clientgone::Metrics::new(&registry).unwrap();
    let router = axum::Router::new()
        .route(
            "/hello",
            axum::routing::get(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "late"
            }),
        )
        .route("/items/{id}", axum::routing::get(|| async { "item\n" }))
        .layer(clientgone::DisconnectLayer::new(metrics.clone()));
    let tls = TlsAcceptor::from_pem_files(&pki.cert, &pki.key).unwrap();
    let listener = clientgone::TrackedListener::bind("127.0.0.1:0", &metrics)
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept_tracked().await else {
                continue;
            };
            let (tls, router) = (tls.clone(), router.clone());
            tokio::spawn(async move {
                let Ok(Ok(stream)) =
                    tokio::time::timeout(Duration::from_secs(10), tls.accept(tcp)).await
                else {
                    return;
                };
                let connection = stream.connection().clone();
                let service = hyper::service::service_fn(move |mut request| {
                    request
                        .extensions_mut()
                        .insert(ConnectInfo(connection.clone()));
                    router.clone().call(request)
                });
                let _ = Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    let url = format!("https://127.0.0.1:{}/hello", addr.port());
    let (ok, _) = curl(&pki, &["-m", "1", &url]).await;
    assert!(!ok, "curl should have timed out");
    wait_for_registry_value(
        &registry,
        DISCONNECTS,
        &brk("/hello", "handler", "closed"),
        1.0,
    )
    .await;

    let active = || wait_for_registry_value(&registry, ACTIVE, &[("http_route", "/hello")], 1.0);
    let in_flight = async {
        active().await;
    };
    let status = h2_reset_then_get(&pki, addr, in_flight, "/hello", "/items/7").await;
    assert_eq!(status, "200");
    let s = wait_for_registry_value(
        &registry,
        DISCONNECTS,
        &brk("/hello", "handler", "stream_reset"),
        1.0,
    )
    .await;
    assert_eq!(s.value(DISCONNECTS, &[]), 2.0, "{s:?}");
}

/// What an https collector got: the broken request's span, over either
/// transport, with the test CA trusted through the configuration.
async fn broken_span_reaches(
    protocol: OtlpProtocol,
    endpoint: String,
    tls: OtlpTls,
    received: &mut otlp::Received,
) -> ReceivedSpan {
    let pki = Pki::new("otlp-demo");
    let config = OtlpConfig::new(protocol).endpoint(endpoint).tls(tls);
    let pipeline =
        OtlpPipeline::start(config, &prometheus::Registry::new()).expect("the pipeline starts");
    let demo = start_tls_demo(&pki, ConnectionOptions::default(), Some(pipeline.tracer())).await;
    let url = format!(
        "https://127.0.0.1:{}/hello?delay_ms=30000",
        demo.addr.port()
    );
    let (ok, _) = curl(&pki, &["-m", "1", &url]).await;
    assert!(!ok, "curl should have timed out");
    wait_for_value(
        demo.metrics_addr,
        DISCONNECTS,
        &brk("/hello", "handler", "closed"),
        1.0,
    )
    .await;
    let flushed = tokio::task::spawn_blocking(move || pipeline.force_flush())
        .await
        .unwrap();
    assert_eq!(flushed, Ok(()), "the export over https succeeds");
    received
        .wait_for(DEADLINE, &mut Vec::new(), |s| s.span.name == "GET /hello")
        .await
        .expect("the broken request's span reaches the https collector")
}

fn server_tls(pki: &Pki) -> TlsAcceptor {
    TlsAcceptor::from_pem_files(&pki.cert, &pki.key).unwrap()
}

/// A collector that asks for a client certificate from the test CA.
fn mutual_tls(pki: &Pki) -> TlsAcceptor {
    use clientgone::tls::rustls::{self, RootCertStore, server::WebPkiClientVerifier};
    let mut roots = RootCertStore::empty();
    for ca in clientgone::tls::load_certificates(&pki.ca).unwrap() {
        roots.add(ca).unwrap();
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        clientgone::tls::crypto_provider(),
    )
    .build()
    .unwrap();
    let key = clientgone::tls::load_certified_key(&pki.cert, &pki.key).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(clientgone::tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(Arc::new(
            key,
        ))));
    TlsAcceptor::new(Arc::new(config))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_requests_spans_reach_https_collectors_over_grpc_and_http() {
    let pki = Pki::new("collector");
    let ca = OtlpTls::default().certificate(&pki.ca);
    let (endpoint, mut received) = otlp::grpc_receiver_tls(server_tls(&pki)).await;
    let span = broken_span_reaches(OtlpProtocol::Grpc, endpoint, ca.clone(), &mut received).await;
    assert!(
        span.span
            .events
            .iter()
            .any(|e| e.name == clientgone::DISCONNECT_EVENT)
    );
    let (endpoint, mut received) = otlp::http_receiver_tls(server_tls(&pki)).await;
    let span = broken_span_reaches(OtlpProtocol::HttpProtobuf, endpoint, ca, &mut received).await;
    assert!(
        span.span
            .events
            .iter()
            .any(|e| e.name == clientgone::DISCONNECT_EVENT)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_collectors_get_spans_from_a_client_certificate() {
    let pki = Pki::new("mtls");
    for protocol in [OtlpProtocol::Grpc, OtlpProtocol::HttpProtobuf] {
        let (endpoint, mut received) = match protocol {
            OtlpProtocol::Grpc => otlp::grpc_receiver_tls(mutual_tls(&pki)).await,
            _ => otlp::http_receiver_tls(mutual_tls(&pki)).await,
        };
        let tls = OtlpTls::default()
            .certificate(&pki.ca)
            .client_certificate(&pki.client_cert, &pki.client_key);
        broken_span_reaches(protocol, endpoint, tls, &mut received).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_cannot_be_trusted_fails_its_exports_and_requests_go_on() {
    let pki = Pki::new("untrusted");
    let untrusted = TlsAcceptor::from_pem_files(&pki.untrusted_cert, &pki.untrusted_key).unwrap();
    for protocol in [OtlpProtocol::Grpc, OtlpProtocol::HttpProtobuf] {
        let (endpoint, mut received) = match protocol {
            OtlpProtocol::Grpc => otlp::grpc_receiver_tls(untrusted.clone()).await,
            _ => otlp::http_receiver_tls(untrusted.clone()).await,
        };
        let registry = prometheus::Registry::new();
        let config = OtlpConfig::new(protocol)
            .endpoint(endpoint)
            .tls(OtlpTls::default().certificate(&pki.ca));
        let pipeline = OtlpPipeline::start(config, &registry).expect("the pipeline starts");
        let demo = demo::start(DemoConfig {
            listen: "127.0.0.1:0".into(),
            metrics_listen: "127.0.0.1:0".into(),
            options: Default::default(),
            registry,
            tracer: Some(pipeline.tracer()),
            buckets: Default::default(),
            tls: None,
        })
        .await
        .unwrap();
        let (ok, out) = curl(&pki, &[&format!("http://{}/items/1", demo.addr)]).await;
        assert!(ok && out == "item 1\n", "requests are unaffected: {out}");
        let flushed = tokio::task::spawn_blocking(move || pipeline.force_flush())
            .await
            .unwrap();
        assert!(flushed.is_err(), "{protocol:?}: the export must fail");
        wait_for_value(
            demo.metrics_addr,
            "clientgone_otlp_spans_dropped_total",
            &[],
            1.0,
        )
        .await;
        assert!(
            received.drain().is_empty(),
            "nothing reached the untrusted collector"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_reach_https_collectors_over_grpc_and_http_with_a_client_certificate() {
    let pki = Pki::new("otlp-metrics");
    for protocol in [OtlpProtocol::Grpc, OtlpProtocol::HttpProtobuf] {
        let (endpoint, mut received) = match protocol {
            OtlpProtocol::Grpc => otlp::grpc_metrics_receiver_tls(mutual_tls(&pki)).await,
            _ => otlp::http_metrics_receiver_tls(mutual_tls(&pki)).await,
        };
        let registry = prometheus::Registry::new();
        let metrics = clientgone::Metrics::new(&registry).unwrap();
        drop(metrics);
        let mut config = MetricsConfig::new(protocol, endpoint, Duration::from_millis(50));
        config.tls = OtlpTls::default()
            .certificate(&pki.ca)
            .client_certificate(&pki.client_cert, &pki.client_key);
        let push = OtlpMetrics::start(config, &registry).expect("the bridge starts");
        let points = received
            .wait_for(DEADLINE, |points| !points.is_empty())
            .await
            .expect("metric points reach the https collector");
        assert!(!points.is_empty());
        push.shutdown().await;
        let dropped = scrape_registry(&registry, "clientgone_otlp_metric_points_dropped_total");
        assert_eq!(dropped, 0.0, "{protocol:?}: nothing failed");
    }
}

fn scrape_registry(registry: &prometheus::Registry, name: &str) -> f64 {
    clientgone_tests::Scrape::from_registry(registry).value(name, &[])
}
