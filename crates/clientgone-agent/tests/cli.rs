//! The real `clientgone` binary, driven as a user would.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use clientgone_tests::client::{close_fin, send_raw};
use clientgone_tests::{DEADLINE, wait_for_value};

const BIN: &str = env!("CARGO_BIN_EXE_clientgone");

/// `clientgone demo` on ports of its own choosing (it prints them).
const DEMO_ON_ANY_PORT: [&str; 5] = [
    "demo",
    "--listen",
    "127.0.0.1:0",
    "--metrics-listen",
    "127.0.0.1:0",
];

fn run_to_end(args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run clientgone");
    (
        out.status.code().expect("exited, not killed"),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_flags_are_one_line_and_exit_2() {
    for args in [
        &["demo", "--no-such-flag"][..],
        &["demo", "--tcp-keepalive-idle", "soon"],
        &["demo", "--tcp-keepalive-retries", "0"],
        &["demo", "--listen", "not an address"],
        &["frobnicate"],
        &[],
        &["proxy"],
        &["proxy", "--upstream", "ftp://x"],
        &[
            "proxy",
            "--upstream",
            "http://127.0.0.1:1",
            "--route",
            "users/{id}",
        ],
        &[
            "proxy",
            "--upstream",
            "http://127.0.0.1:1",
            "--route",
            "/a/{x}",
            "--route",
            "/a/{y}",
        ],
        &[
            "proxy",
            "--upstream",
            "http://127.0.0.1:1",
            "--openapi",
            "/nonexistent.yaml",
        ],
        &[
            "proxy",
            "--upstream",
            "http://127.0.0.1:1",
            "--upstream-timeout",
            "0s",
        ],
        &["traffic", "--target", "https://x"],
        &["traffic", "--target", "http://127.0.0.1:1", "--rate", "0"],
        &["demo", "--tcp-keepalive-idle", "10h"],
        &["demo", "--tcp-user-timeout", "30d"],
        &["proxy", "--upstream", "http://127.0.0.1:80800"],
        &[
            "proxy",
            "--upstream",
            "http://127.0.0.1:1",
            "--route",
            "/users/:id",
        ],
        &["demo", "--request-duration-buckets", "0.5,0.1"],
        &["demo", "--request-duration-buckets", ""],
        &["demo", "--disconnect-elapsed-buckets", "1,NaN"],
        &["demo", "--connection-duration-buckets", "1,2,soon"],
        &["demo", "--connection-duration-buckets", "-1,2"],
    ] {
        let (code, stderr) = run_to_end(args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("clientgone: "), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    // What is missing is named, and the help pointed at is the command's own.
    for (args, says) in [
        (&["proxy"][..], "--upstream"),
        (&["traffic"], "--target"),
        (&[], "a command is required"),
    ] {
        let (code, stderr) = run_to_end(args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    let (_, stderr) = run_to_end(&["proxy"]);
    assert!(stderr.contains("'clientgone proxy --help'"), "{stderr}");
}

#[test]
fn a_bad_grpc_descriptor_is_one_line_saying_what_is_wrong() {
    let dir = std::env::temp_dir().join(format!("clientgone-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let garbage = dir.join("garbage.bin");
    std::fs::write(&garbage, b"\xff\xff\xff not protobuf").unwrap();
    let empty = dir.join("empty.bin");
    std::fs::write(&empty, b"").unwrap();
    let (garbage, empty) = (garbage.to_str().unwrap(), empty.to_str().unwrap());
    for (args, says) in [
        (
            &[
                "proxy",
                "--upstream",
                "h2c://127.0.0.1:1",
                "--grpc-descriptor",
                "/nonexistent.bin",
            ][..],
            "/nonexistent.bin",
        ),
        (
            &[
                "proxy",
                "--upstream",
                "h2c://127.0.0.1:1",
                "--grpc-descriptor",
                garbage,
            ],
            "not a protobuf FileDescriptorSet",
        ),
        (
            &[
                "proxy",
                "--upstream",
                "h2c://127.0.0.1:1",
                "--grpc-descriptor",
                empty,
            ],
            "no service methods",
        ),
        (
            &[
                "proxy",
                "--upstream",
                "http://127.0.0.1:1",
                "--grpc-descriptor",
                empty,
            ],
            "needs an h2c:// upstream",
        ),
    ] {
        let (code, stderr) = run_to_end(args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn an_address_in_use_is_one_line_and_exit_2() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    for flag in ["--listen", "--metrics-listen"] {
        let (code, stderr) = run_to_end(&["demo", flag, &addr]);
        assert_eq!(code, 2, "{stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(&addr) && stderr.contains(flag), "{stderr}");
        assert!(stderr.contains("in use"), "{stderr}");
    }
}

#[test]
fn help_lists_the_connection_flags() {
    let out = Command::new(BIN).args(["demo", "--help"]).output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--listen",
        "--metrics-listen",
        "--tcp-keepalive-idle",
        "--tcp-keepalive-interval",
        "--tcp-keepalive-retries",
        "--tcp-user-timeout",
        "--header-read-timeout",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_TRACES_SAMPLER_ARG",
    ] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
}

/// The demo binary on ports of its own choosing; killed if the test fails.
struct Demo {
    child: Child,
    addr: SocketAddr,
    metrics_addr: SocketAddr,
}

impl Demo {
    fn start() -> Demo {
        Demo::start_with_env(&[])
    }

    fn start_with_env(env: &[(&str, &str)]) -> Demo {
        let mut child = Command::new(BIN)
            .args(DEMO_ON_ANY_PORT)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn clientgone demo");
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        // Other start-up lines (where traces go) may come first.
        let mut line = String::new();
        while !line.contains(" serving ") {
            line.clear();
            let read = stderr.read_line(&mut line).expect("start-up line");
            assert!(read > 0, "the demo exited before serving");
        }
        // Keep reading, so the demo never writes into a closed pipe.
        std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
        // "clientgone demo: serving http://A/hello and gRPC …, metrics on http://B/metrics"
        let addrs: Vec<SocketAddr> = line
            .split("http://")
            .skip(1)
            .map(|s| s.split('/').next().unwrap().parse().expect("address"))
            .collect();
        assert_eq!(addrs.len(), 2, "unexpected start-up line: {line}");
        Demo {
            child,
            addr: addrs[0],
            metrics_addr: addrs[1],
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends SIGTERM and waits (with the deadline) for a clean exit.
fn terminate(demo: &mut Demo) {
    let pid = demo.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(status) = demo.child.try_wait().unwrap() {
            break status;
        }
        assert!(start.elapsed() < DEADLINE, "demo did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sigterm_the_demo_flushes_queued_spans_to_the_collector() {
    flushes_queued_spans_on_sigterm(&[]).await;
}

/// On one CPU the runtime is tokio's single-threaded one, which runs nothing
/// unless driven: the flush must still get its exports through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_one_worker_the_demo_still_flushes_queued_spans_on_sigterm() {
    flushes_queued_spans_on_sigterm(&[("TOKIO_WORKER_THREADS", "1")]).await;
}

async fn flushes_queued_spans_on_sigterm(extra_env: &[(&str, &str)]) {
    let (endpoint, mut received) = clientgone_tests::otlp::grpc_receiver().await;
    let mut env = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_SERVICE_NAME", "demo-under-test"),
        // Nothing is exported on a schedule: only the shutdown flush sends it.
        ("OTEL_BSP_SCHEDULE_DELAY", "600000"),
    ];
    env.extend_from_slice(extra_env);
    let mut demo = Demo::start_with_env(&env);
    let stream = send_raw(demo.addr, b"GET /hello HTTP/1.1\r\nHost: t\r\n\r\n").await;
    wait_for_value(demo.metrics_addr, "http_server_active_requests", &[], 1.0).await;
    close_fin(stream);
    wait_for_value(
        demo.metrics_addr,
        "http_server_client_disconnects_total",
        &[],
        1.0,
    )
    .await;
    let started = std::time::Instant::now();
    terminate(&mut demo);
    let mut seen = Vec::new();
    let span = received
        .wait_for(DEADLINE, &mut seen, |s| s.span.name == "GET /hello")
        .await
        .expect("the broken request's span was flushed at shutdown");
    assert_eq!(span.service_name.as_deref(), Some("demo-under-test"));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "flush took {:?}",
        started.elapsed()
    );
}

/// Starts the demo with `env` and checks it refuses in one line naming `culprit`, exit 2.
fn refuses_bad_environment(env: &[(&str, &str)], culprit: &str) {
    let out = Command::new(BIN)
        .args(DEMO_ON_ANY_PORT)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains(culprit), "{stderr}");
}

#[test]
fn a_bad_worker_count_is_one_line_and_exit_2() {
    refuses_bad_environment(&[("TOKIO_WORKER_THREADS", "lots")], "TOKIO_WORKER_THREADS");
}

#[test]
fn a_bad_otel_variable_is_one_line_and_exit_2() {
    refuses_bad_environment(
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "carrier-pigeon"),
        ],
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    );
}

#[tokio::test]
async fn the_demo_binary_counts_a_curl_style_break_and_stops_on_sigterm() {
    let mut demo = Demo::start();
    // Like `curl --max-time 1 localhost:8080/hello`: ask, wait, give up with a FIN.
    let stream = send_raw(demo.addr, b"GET /hello HTTP/1.1\r\nHost: t\r\n\r\n").await;
    wait_for_value(demo.metrics_addr, "http_server_active_requests", &[], 1.0).await;
    close_fin(stream);
    let labels = [
        ("http_request_method", "GET"),
        ("http_route", "/hello"),
        ("phase", "handler"),
        ("cause", "closed"),
    ];
    wait_for_value(
        demo.metrics_addr,
        "http_server_client_disconnects_total",
        &labels,
        1.0,
    )
    .await;
    terminate(&mut demo);
}

/// Bad TLS files and flags: one line naming the file or the flag, exit 2.
#[test]
fn bad_tls_files_and_flags_are_one_line_and_exit_2() {
    let pki = clientgone_tests::tls::Pki::new("cli");
    let empty = pki.path("empty.pem");
    std::fs::write(&empty, "no PEM here\n").unwrap();
    let (cert, key, client_key) = (
        pki.cert.to_str().unwrap(),
        pki.key.to_str().unwrap(),
        pki.client_key.to_str().unwrap(),
    );
    let empty = empty.to_str().unwrap();
    let demo = |extra: &[&str]| -> Vec<String> {
        DEMO_ON_ANY_PORT
            .iter()
            .chain(extra)
            .map(|s| s.to_string())
            .collect()
    };
    for (args, says) in [
        (demo(&["--tls-cert", cert]), "--tls-key"),
        (demo(&["--tls-key", key]), "--tls-cert"),
        (
            demo(&["--tls-cert", "/nonexistent.pem", "--tls-key", key]),
            "/nonexistent.pem: cannot read it",
        ),
        (
            demo(&["--tls-cert", empty, "--tls-key", key]),
            "holds no certificate",
        ),
        (
            demo(&["--tls-cert", cert, "--tls-key", empty]),
            "holds no private key",
        ),
        (
            demo(&["--tls-cert", cert, "--tls-key", client_key]),
            "is not the key of the certificate",
        ),
        (
            demo(&["--tls-cert", cert, "--tls-key", key, "--traffic"]),
            "--traffic",
        ),
        (
            vec![
                "proxy".into(),
                "--upstream".into(),
                "https://localhost:1".into(),
                "--upstream-ca".into(),
                empty.into(),
            ],
            "--upstream-ca",
        ),
        (
            vec![
                "proxy".into(),
                "--upstream".into(),
                "http://localhost:1".into(),
                "--upstream-ca".into(),
                pki.ca.to_str().unwrap().into(),
            ],
            "https://",
        ),
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, stderr) = run_to_end(&args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("clientgone: "), "{args:?}: {stderr}");
        assert!(
            stderr.contains(says),
            "{args:?} should say {says:?}: {stderr}"
        );
    }
}

/// `clientgone demo --tls-cert … --tls-key …` as a user runs it, its stderr
/// lines kept for the test.
struct TlsDemo {
    child: Child,
    addr: SocketAddr,
    lines: std::sync::mpsc::Receiver<String>,
}

impl TlsDemo {
    fn start(pki: &clientgone_tests::tls::Pki) -> TlsDemo {
        let mut child = Command::new(BIN)
            .args(DEMO_ON_ANY_PORT)
            .arg("--tls-cert")
            .arg(&pki.cert)
            .arg("--tls-key")
            .arg(&pki.key)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn clientgone demo");
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut demo = TlsDemo {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            lines,
        };
        let line = demo.line_containing(" serving ");
        // "clientgone demo: serving https://A/hello and gRPC …, metrics on http://B/metrics; …"
        let https = line.split("https://").nth(1).expect("an https:// address");
        demo.addr = https.split('/').next().unwrap().parse().expect("address");
        demo
    }

    /// The next stderr line containing `text` (with the deadline).
    fn line_containing(&self, text: &str) -> String {
        let start = std::time::Instant::now();
        loop {
            let left = DEADLINE.saturating_sub(start.elapsed());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no line containing {text:?}"));
            if line.contains(text) {
                return line;
            }
        }
    }

    fn hangup(&self) {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-HUP", &pid])
                .status()
                .unwrap()
                .success()
        );
    }
}

impl Drop for TlsDemo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn sighup_serves_a_new_certificate_to_new_connections_and_keeps_open_ones() {
    use clientgone_tests::tls::{Pki, TlsClient};
    let pki = Pki::new("sighup");
    let demo = TlsDemo::start(&pki);
    let (mut open, cn) = TlsClient::session(demo.addr, &pki.ca);
    assert_eq!(cn, "clientgone test server 1");
    assert_eq!(open.get("/items/1"), 200);

    pki.rotate("clientgone test server 2");
    demo.hangup();
    demo.line_containing("SIGHUP: serving the certificate in");
    let (mut fresh, cn) = TlsClient::session(demo.addr, &pki.ca);
    assert_eq!(
        cn, "clientgone test server 2",
        "a new connection gets the new certificate"
    );
    assert_eq!(fresh.get("/items/2"), 200);
    assert_eq!(
        open.get("/items/3"),
        200,
        "the connection opened before still serves"
    );

    // A bad new file: the old certificate stays, and the log says why.
    std::fs::write(&pki.cert, "-----BEGIN CERTIFICATE-----\ngarbage\n").unwrap();
    demo.hangup();
    let line = demo.line_containing("SIGHUP: kept the old certificate");
    assert!(line.contains(pki.cert.to_str().unwrap()), "{line}");
    let (mut after, cn) = TlsClient::session(demo.addr, &pki.ca);
    assert_eq!(cn, "clientgone test server 2");
    assert_eq!(after.get("/items/4"), 200);
}
