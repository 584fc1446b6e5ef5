//! `clientgone watch` against servers no one here wrote — Python's
//! `http.server` and Debian's nginx — broken by real clients, with the real
//! binary and real BPF programs in the kernel. They need root and kernel BTF
//! (and nginx for its test): elsewhere they are skipped with the reason.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use clientgone_tests::client::{Http1Connection, close_fin, close_rst, read_until, send_raw};
use clientgone_tests::prom::{Scrape, scrape};
use clientgone_tests::{free_port, wait_for_value, wait_until};

const BIN: &str = env!("CARGO_BIN_EXE_clientgone");
const SERVER_PY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/watch/server.py");

const DISCONNECTS: &str = "http_server_client_disconnects_total";
const DURATION_COUNT: &str = "http_server_request_duration_seconds_count";
const ACTIVE: &str = "http_server_active_requests";
const CLOSES: &str = "http_server_connection_closes_total";

/// A child process, killed when the test ends (or fails).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Python's `http.server` (tests/watch/server.py) on a port of its choosing.
fn python_server() -> (Killed, SocketAddr) {
    python_server_with(&[])
}

/// The same with `args` (`--tls CERT KEY`, a port).
fn python_server_with(args: &[&str]) -> (Killed, SocketAddr) {
    server_on_printed_port(Command::new("python3").arg(SERVER_PY).args(args))
}

/// A server that prints the loopback port it listens on as its first line.
fn server_on_printed_port(command: &mut Command) -> (Killed, SocketAddr) {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {command:?}: {e}"));
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .expect("the server's port");
    let port: u16 = line.trim().parse().expect("a port on the first line");
    (Killed(child), SocketAddr::from(([127, 0, 0, 1], port)))
}

/// Runs a watch test once per capture mode, as `NAME::socket` and
/// `NAME::syscall`: both stay fully tested.
macro_rules! both_captures {
    ($name:ident, $($attr:meta),*) => {
        mod $name {
            #[tokio::test]
            $(#[$attr])*
            async fn socket() {
                super::$name("socket").await
            }

            #[tokio::test]
            $(#[$attr])*
            async fn syscall() {
                super::$name("syscall").await
            }
        }
    };
}

/// `clientgone watch` with `args`, once its programs are attached.
struct Watch {
    child: Killed,
    metrics: SocketAddr,
    /// Its start-up lines.
    startup: Vec<String>,
}

fn watch(capture: &str, args: &[&str]) -> Watch {
    watch_with_env(capture, args, &[])
}

fn watch_with_env(capture: &str, args: &[&str], env: &[(&str, &str)]) -> Watch {
    let mut child = Command::new(BIN)
        .envs(env.iter().copied())
        .arg("watch")
        .args(["--metrics-listen", "127.0.0.1:0", "--capture", capture])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn clientgone watch");
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut startup = Vec::new();
    // The last start-up line is the one on TLS.
    while !startup
        .last()
        .is_some_and(|l: &String| l.starts_with("clientgone watch: TLS"))
    {
        let mut line = String::new();
        let read = stderr.read_line(&mut line).expect("start-up line");
        assert!(read > 0, "watch exited before watching: {startup:?} {line}");
        startup.push(line.trim_end().to_owned());
    }
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    // "clientgone watch: watching port P (1 route template), metrics on http://A/metrics"
    let line = startup
        .iter()
        .find(|l| l.contains(" watching "))
        .expect("the watching line");
    let metrics = line
        .split("http://")
        .nth(1)
        .and_then(|s| s.split('/').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("unexpected start-up line: {line}"));
    Watch {
        child: Killed(child),
        metrics,
        startup,
    }
}

impl Watch {
    async fn wait(&self, name: &str, labels: &[(&str, &str)], expected: f64) -> Scrape {
        wait_for_value(self.metrics, name, labels, expected).await
    }

    fn pid(&self) -> u32 {
        self.child.0.id()
    }
}

/// The label of a watched port.
fn on(port: &str) -> (&'static str, &str) {
    ("server_port", port)
}

/// A fresh scratch directory for one test (and capture mode).
fn scratch_dir(name: &str, capture: &str) -> std::path::PathBuf {
    let dir =
        std::env::temp_dir().join(format!("cg-watch-{name}-{capture}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Debian's nginx, one process, its files in `dir`, listening on a free
/// loopback port once this returns: `http` is added to its `http` block and
/// `server` to its one `server` block.
async fn nginx(dir: &Path, http: &str, server: &str) -> (Killed, SocketAddr) {
    nginx_listen(dir, "", http, server).await
}

/// The same with `listen` parameters (`ssl`).
async fn nginx_listen(dir: &Path, listen: &str, http: &str, server: &str) -> (Killed, SocketAddr) {
    let port = free_port();
    let conf = format!(
        "user root; master_process off; daemon off; pid {d}/nginx.pid; error_log {d}/error.log;
         events {{ worker_connections 256; }}
         http {{
           access_log off; {http}
           client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;
           fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
           server {{ listen 127.0.0.1:{port} {listen}; {server} }}
         }}",
        d = dir.display()
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let child = Killed(
        Command::new("nginx")
            .args(["-e", "stderr", "-c"])
            .arg(dir.join("nginx.conf"))
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn nginx"),
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_until("nginx listening", || async {
        tokio::net::TcpStream::connect(addr).await.is_ok()
    })
    .await;
    (child, addr)
}

/// The contract's label set of a break.
fn brk<'a>(route: &'a str, phase: &'a str, cause: &'a str) -> [(&'a str, &'a str); 3] {
    [("http_route", route), ("phase", phase), ("cause", cause)]
}

both_captures!(
    python_http_server_breaks_are_counted_exactly,
    cfg_attr(
        not(ebpf),
        ignore = "needs root and kernel BTF (/sys/kernel/btf/vmlinux)"
    )
);
async fn python_http_server_breaks_are_counted_exactly(capture: &'static str) {
    let (_server, addr) = python_server();
    let port = addr.port().to_string();
    let w = watch(capture, &["--port", &port, "--route", "/users/{id}"]);

    // After start-up the agent holds no capability at all.
    let status = std::fs::read_to_string(format!("/proc/{}/status", w.pid())).unwrap();
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        let line = status.lines().find(|l| l.starts_with(set)).unwrap();
        assert!(line.ends_with("0000000000000000"), "{line}");
    }

    // A normal keep-alive sequence: three requests, then a clean close.
    let mut conn = Http1Connection::open(addr).await;
    for _ in 0..3 {
        assert_eq!(conn.request("GET", "/users/7").await.0, 200);
    }
    conn.close().await;
    let s = w
        .wait(DURATION_COUNT, &[("http_route", "/users/{id}")], 3.0)
        .await;
    s.assert_value(
        DURATION_COUNT,
        &[
            ("http_route", "/users/{id}"),
            ("http_response_status_code", "200"),
            ("outcome", "completed"),
            ("server_port", &port),
        ],
        3.0,
    );
    w.wait(CLOSES, &[("reason", "idle")], 1.0).await;

    // FIN, then RST, while the handler sleeps.
    for (close, cause) in [(close_fin as fn(_), "closed"), (close_rst, "reset")] {
        let stream = send_raw(addr, b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n").await;
        w.wait(ACTIVE, &[("http_route", "unmatched")], 1.0).await;
        close(stream);
        let s = w
            .wait(DISCONNECTS, &brk("unmatched", "handler", cause), 1.0)
            .await;
        s.assert_value(ACTIVE, &[], 0.0);
    }

    // A declared body sent in part, then FIN.
    let mut head = b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n".to_vec();
    head.extend([b'a'; 100]);
    let stream = send_raw(addr, &head).await;
    w.wait(ACTIVE, &[("http_request_method", "POST")], 1.0)
        .await;
    close_fin(stream);
    let s = w
        .wait(
            DISCONNECTS,
            &brk("unmatched", "request_body", "closed"),
            1.0,
        )
        .await;
    s.assert_value(
        DURATION_COUNT,
        &[
            ("http_request_method", "POST"),
            ("http_response_status_code", "499"),
        ],
        1.0,
    );

    // RST in the middle of a 32 MiB response.
    let mut stream = send_raw(addr, b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n").await;
    read_until(&mut stream, b"xxxxxxxx").await;
    close_rst(stream);
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

    // 300 paths no route has: all `unmatched`, no label value more.
    let mut conn = Http1Connection::open(addr).await;
    let mut rng = fastrand::Rng::with_seed(300);
    for _ in 0..300 {
        let path = format!("/r/{}/{}", rng.u64(..), rng.alphanumeric());
        assert_eq!(conn.request("GET", &path).await.0, 200);
    }
    conn.close().await;
    let s = w
        .wait(
            DURATION_COUNT,
            &[("http_route", "unmatched"), ("outcome", "completed")],
            300.0,
        )
        .await;
    assert_eq!(
        s.label_values(DURATION_COUNT, "http_route"),
        ["/users/{id}", "unmatched"].map(String::from).into()
    );
    // Exactly the four breaks, nothing for the normal requests.
    s.assert_value(DISCONNECTS, &[], 4.0);
    s.assert_value(DURATION_COUNT, &[], 307.0);
    // Each connection closed once: two clean, four aborted (the sleeping
    // handler's close comes when it wakes, up to 5 s later).
    let s = w.wait(CLOSES, &[("reason", "client_abort")], 4.0).await;
    s.assert_value(CLOSES, &[("reason", "idle")], 2.0);
    s.assert_value(CLOSES, &[], 6.0);
    s.assert_value("http_server_open_connections", &[], 0.0);
    s.assert_value("clientgone_watch_events_lost_total", &[], 0.0);
}

both_captures!(
    every_broken_request_gets_a_span,
    cfg_attr(
        not(ebpf),
        ignore = "needs root and kernel BTF (/sys/kernel/btf/vmlinux)"
    )
);
/// With OTLP on and a sampling ratio of 0, a completed request exports no span
/// and a broken one does, with the layer's attributes and `client.disconnect` event.
async fn every_broken_request_gets_a_span(capture: &'static str) {
    use clientgone_tests::otlp::{
        assert_broken_span, assert_span_lasts_its_elapsed, grpc_receiver, string_attr,
    };
    let (endpoint, mut received) = grpc_receiver().await;
    let (_server, addr) = python_server();
    let port = addr.port().to_string();
    let w = watch_with_env(
        capture,
        &[
            "--port",
            &port,
            "--route",
            "/users/{id}",
            "--route",
            "/slow",
        ],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0"),
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
        ],
    );
    let mut conn = Http1Connection::open(addr).await;
    assert_eq!(conn.request("GET", "/users/1").await.0, 200);
    conn.close().await;
    let stream = send_raw(addr, b"GET /slow?x=1 HTTP/1.1\r\nHost: t\r\n\r\n").await;
    w.wait(ACTIVE, &[("http_route", "/slow")], 1.0).await;
    close_fin(stream);
    w.wait(DISCONNECTS, &brk("/slow", "handler", "closed"), 1.0)
        .await;
    let mut seen = Vec::new();
    let span = received
        .wait_for(clientgone_tests::DEADLINE, &mut seen, |s| {
            s.span.name == "GET /slow"
        })
        .await
        .expect("the broken request's span");
    let attrs = &span.span.attributes;
    assert_eq!(string_attr(attrs, "http.route").as_deref(), Some("/slow"));
    assert_eq!(string_attr(attrs, "url.path").as_deref(), Some("/slow"));
    let event = assert_broken_span(&span.span, "handler", "closed");
    assert_span_lasts_its_elapsed(&span.span, event);
    // The completed request, at ratio 0, was not exported.
    assert!(
        seen.iter().all(|s| s.span.name != "GET /users/{id}"),
        "{:?}",
        seen.iter().map(|s| &s.span.name).collect::<Vec<_>>()
    );
}

both_captures!(
    nginx_static_and_proxied_breaks_are_counted_exactly,
    cfg_attr(
        not(ebpf),
        ignore = "needs root and kernel BTF (/sys/kernel/btf/vmlinux)"
    ),
    cfg_attr(not(nginx), ignore = "needs nginx (Debian's nginx package)")
);
/// nginx (Debian's), serving a large file with sendfile and proxying /api/ to
/// the Python server; both ports watched by one agent.
async fn nginx_static_and_proxied_breaks_are_counted_exactly(capture: &'static str) {
    let (_server, upstream) = python_server();
    let dir = scratch_dir("nginx", capture);
    std::fs::create_dir_all(dir.join("www")).unwrap();
    std::fs::write(dir.join("www/big.bin"), vec![b'x'; 64 << 20]).unwrap();
    std::fs::write(dir.join("www/small.txt"), b"small\n").unwrap();
    let www = format!(
        "root {}/www;
         location /api/ {{ proxy_pass http://{upstream}/; proxy_http_version 1.1;
                           proxy_set_header Connection \"\"; }}",
        dir.display()
    );
    let (_nginx, addr) = nginx(&dir, "sendfile on; keepalive_timeout 60s;", &www).await;
    let (port_s, up_s) = (addr.port().to_string(), upstream.port().to_string());
    let w = watch(
        capture,
        &[
            "--port",
            &port_s,
            "--port",
            &up_s,
            "--route",
            "/big.bin",
            "--route",
            "/api/{*rest}",
            "--route",
            "/{*rest}",
        ],
    );
    let (nginx_port, python_port) = (port_s.as_str(), up_s.as_str());

    // Keep-alive: a small file twice and a proxied request.
    let mut conn = Http1Connection::open(addr).await;
    assert_eq!(conn.request("GET", "/small.txt").await.0, 200);
    assert_eq!(conn.request("GET", "/small.txt").await.0, 200);
    assert_eq!(conn.request("GET", "/api/users/1").await.0, 200);
    conn.close().await;
    w.wait(
        DURATION_COUNT,
        &[on(nginx_port), ("outcome", "completed")],
        3.0,
    )
    .await;
    // nginx's own request upstream, seen on the Python port.
    w.wait(
        DURATION_COUNT,
        &[on(python_port), ("outcome", "completed")],
        1.0,
    )
    .await;

    // RST in the middle of the large file (sent with sendfile).
    let mut stream = send_raw(addr, b"GET /big.bin HTTP/1.1\r\nHost: t\r\n\r\n").await;
    read_until(&mut stream, b"xxxxxxxx").await;
    close_rst(stream);
    w.wait(
        DISCONNECTS,
        &[
            on(nginx_port),
            ("http_route", "/big.bin"),
            ("phase", "response_body"),
            ("cause", "reset"),
        ],
        1.0,
    )
    .await;

    // FIN while the proxied handler sleeps: nginx drops its upstream request,
    // which the Python port shows as nginx's own break.
    let stream = send_raw(addr, b"GET /api/slow HTTP/1.1\r\nHost: t\r\n\r\n").await;
    w.wait(ACTIVE, &[on(python_port)], 1.0).await;
    close_fin(stream);
    let s = w
        .wait(
            DISCONNECTS,
            &[
                on(nginx_port),
                ("http_route", "/api/{*rest}"),
                ("phase", "handler"),
                ("cause", "closed"),
            ],
            1.0,
        )
        .await;
    s.assert_value(DISCONNECTS, &[on(nginx_port)], 2.0);
    let s = w
        .wait(DISCONNECTS, &[on(python_port), ("phase", "handler")], 1.0)
        .await;
    s.assert_value(DISCONNECTS, &[], 3.0);
    s.assert_value("clientgone_watch_events_lost_total", &[], 0.0);
    let _ = std::fs::remove_dir_all(&dir);
}

both_captures!(
    an_nginx_upstream_pool_warmed_before_the_agent_is_followed,
    cfg_attr(
        not(ebpf),
        ignore = "needs root and kernel BTF (/sys/kernel/btf/vmlinux)"
    ),
    cfg_attr(not(nginx), ignore = "needs nginx (Debian's nginx package)")
);
/// nginx as a reverse proxy with an upstream `keepalive` pool to Python's
/// `http.server`, the pool warmed before the agent starts, the backend's port
/// watched: the requests on the pooled connection and a client that leaves
/// mid-wait (nginx's 499, which closes its upstream connection) are counted.
async fn an_nginx_upstream_pool_warmed_before_the_agent_is_followed(capture: &'static str) {
    let (_server, upstream) = python_server();
    let dir = scratch_dir("pool", capture);
    let (_nginx, addr) = nginx(
        &dir,
        &format!("upstream backend {{ server {upstream}; keepalive 4; }}"),
        "location / { proxy_pass http://backend; proxy_http_version 1.1;
                      proxy_set_header Connection \"\"; }",
    )
    .await;
    // Warm the pool: one request at a time, so nginx keeps one upstream
    // connection and reuses it.
    let mut client = Http1Connection::open(addr).await;
    for _ in 0..3 {
        assert_eq!(client.request("GET", "/users/0").await.0, 200);
    }
    let backend = upstream.port().to_string();
    let w = watch(capture, &["--port", &backend, "--route", "/users/{id}"]);
    scrape(w.metrics)
        .await
        .assert_value("http_server_open_connections", &[], 1.0);

    for i in 1..=30 {
        let path = format!("/users/{i}");
        assert_eq!(client.request("GET", &path).await.0, 200);
    }
    // As in the adoption test: with the system-call capture, the read the
    // pooled connection's server thread was already blocked in is unseen.
    let unseen = if capture == "syscall" { 1.0 } else { 0.0 };
    w.wait(
        DURATION_COUNT,
        &[("http_route", "/users/{id}"), ("outcome", "completed")],
        30.0 - unseen,
    )
    .await;
    let stream = send_raw(addr, b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n").await;
    w.wait(ACTIVE, &[("http_route", "unmatched")], 1.0).await;
    close_fin(stream);
    let s = w
        .wait(DISCONNECTS, &brk("unmatched", "handler", "closed"), 1.0)
        .await;
    s.assert_value(DISCONNECTS, &[], 1.0);
    s.assert_value(DURATION_COUNT, &[], 31.0 - unseen);
    s.assert_value(
        "clientgone_watch_connections_adopted_total",
        &[on(&backend)],
        1.0,
    );
    s.assert_value("clientgone_watch_events_lost_total", &[], 0.0);
    client.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

both_captures!(
    watch_agrees_with_the_layer_on_the_demo_under_traffic,
    cfg_attr(
        not(ebpf),
        ignore = "needs root and kernel BTF (/sys/kernel/btf/vmlinux)"
    )
);
/// The cross-check: `clientgone watch` on `clientgone demo`'s port while
/// `clientgone traffic` runs every kind against it — HTTP/1 breaks, HTTP/2
/// stream resets, gRPC calls completed, cancelled, past their deadline,
/// streams dropped — the layer's `/metrics` and the watch's agree on every
/// request and call count, per route or method, phase, cause and status.
async fn watch_agrees_with_the_layer_on_the_demo_under_traffic(capture: &'static str) {
    let mut demo = Command::new(BIN)
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn demo");
    let mut stderr = BufReader::new(demo.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains(" serving ") {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "demo exited");
    }
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    let _demo = Killed(demo);
    let addrs: Vec<SocketAddr> = line
        .split("http://")
        .skip(1)
        .map(|s| s.split('/').next().unwrap().parse().unwrap())
        .collect();
    let (app, demo_metrics) = (addrs[0], addrs[1]);
    let port = app.port().to_string();
    let descriptor = concat!(env!("CARGO_MANIFEST_DIR"), "/src/demo/grpc/demo.bin");
    let w = watch(
        capture,
        &[
            "--port",
            &port,
            "--route",
            "/hello",
            "--route",
            "/stream",
            "--route",
            "/upload",
            "--route",
            "/items/{id}",
            "--grpc-descriptor",
            descriptor,
        ],
    );

    const REQUESTS: f64 = 160.0;
    let traffic = Command::new(BIN)
        .args(["traffic", "--target", &format!("http://{app}")])
        .args(["--requests", "160", "--rate", "300", "--seed", "5"])
        .stdin(Stdio::null())
        .output()
        .expect("run traffic");
    assert!(
        traffic.status.success(),
        "{}",
        String::from_utf8_lossy(&traffic.stdout)
    );

    // Both have seen every request and call end.
    let ended = |s: &Scrape| s.value(DURATION_COUNT, &[]) + s.value(CALLS, &[]);
    wait_until("the layer counts every request and call", || async {
        ended(&scrape(demo_metrics).await) == REQUESTS
    })
    .await;
    wait_until("the watch counts every request and call", || async {
        ended(&scrape(w.metrics).await) == REQUESTS
    })
    .await;
    let layer = scrape(demo_metrics).await;
    let watched = scrape(w.metrics).await;
    for kind in [DISCONNECTS, CALL_BREAKS] {
        assert!(layer.value(kind, &[]) > 0.0, "{kind}: {}", layer.text);
    }
    assert!(layer.value(CALLS, &[]) > 0.0, "{}", layer.text);
    for name in [DURATION_COUNT, DISCONNECTS, CALLS, CALL_BREAKS] {
        assert_eq!(
            counts(&watched, name),
            counts(&layer, name),
            "{name}\nlayer:\n{}\nwatch:\n{}",
            layer.text,
            watched.text
        );
    }
    watched.assert_value("clientgone_watch_events_lost_total", &[], 0.0);
    watched.assert_value("clientgone_watch_connections_skipped_total", &[], 0.0);
}

const CALLS: &str = "rpc_server_call_duration_seconds_count";
const CALL_BREAKS: &str = "rpc_server_client_disconnects_total";

/// The non-zero samples of `name`, by their labels but `server_port` (the
/// watch's own).
fn counts(s: &Scrape, name: &str) -> std::collections::BTreeMap<String, f64> {
    s.samples
        .iter()
        .filter(|(n, _, v)| n == name && *v > 0.0)
        .map(|(_, labels, v)| {
            let key: Vec<String> = labels
                .iter()
                .filter(|(k, _)| *k != "server_port")
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            (key.join(","), *v)
        })
        .collect()
}

both_captures!(
    a_client_cut_off_while_the_server_writes_is_a_timeout,
    cfg_attr(
        not(ebpf),
        ignore = "needs root and kernel BTF (/sys/kernel/btf/vmlinux)"
    ),
    cfg_attr(not(netns), ignore = "needs root, iproute2 and iptables")
);
/// A client that vanishes without a trace (iptables DROP in its network
/// namespace) while the server writes: the server's kernel gives up after its
/// retransmissions (`tcp_retries2` = 3 in the server's namespace, about 6 s) and
/// the break is `timeout`.
async fn a_client_cut_off_while_the_server_writes_is_a_timeout(capture: &'static str) {
    use clientgone_tests::netns::{NetnsPair, SERVER_IP};
    let pair = NetnsPair::create(&format!("w{capture}"));
    pair.exec_ok(&pair.server, &["sysctl", "-qw", "net.ipv4.tcp_retries2=3"]);
    // A port no other test uses at once: the programs watch it in every namespace.
    let port =
        20000 + (std::process::id() % 10000) as u16 + if capture == "socket" { 0 } else { 10000 };
    let mut server = pair.command(&pair.server, "python3");
    server
        .args([SERVER_PY, &port.to_string(), SERVER_IP])
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let mut server = server.spawn().expect("python3 in the server namespace");
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut line)
        .expect("the server's port");
    let _server = Killed(server);
    let port_s = port.to_string();
    let w = watch(capture, &["--port", &port_s]);

    // The client reads a first piece of the large answer, says so, then keeps
    // reading at most 400 KB/s: slow enough that the server, whose socket
    // buffers hold a few MiB, is still writing the 32 MiB when the client is
    // cut off (a reader as fast as the server lets it hand the whole answer
    // to its kernel first, which is a completed response, not a break).
    let script = format!(
        "import socket,sys,time\n\
         s=socket.create_connection(('{SERVER_IP}',{port}))\n\
         s.sendall(b'GET /big HTTP/1.1\\r\\nHost: t\\r\\n\\r\\n')\n\
         n=0\n\
         while n<65536: n+=len(s.recv(65536))\n\
         print('reading',flush=True)\n\
         while s.recv(4096): time.sleep(0.01)\n"
    );
    let mut client = pair.command(&pair.client, "python3");
    client
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let mut client = client.spawn().expect("python3 in the client namespace");
    let mut line = String::new();
    BufReader::new(client.stdout.take().unwrap())
        .read_line(&mut line)
        .expect("the client's first read");
    assert_eq!(line.trim(), "reading");
    let _client = Killed(client);
    pair.cut_client();
    let s = w
        .wait(
            DISCONNECTS,
            &brk("unmatched", "response_body", "timeout"),
            1.0,
        )
        .await;
    s.assert_value(DISCONNECTS, &[], 1.0);
    w.wait(CLOSES, &[("reason", "timeout")], 1.0).await;
}

/// The tracepoints the watch process holds links to, as the kernel lists them
/// in its descriptors' fdinfo (not as the agent says).
fn attached_tracepoints(pid: u32) -> Vec<String> {
    let mut names = Vec::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .flatten()
    {
        let Ok(info) = std::fs::read_to_string(fd.path()) else {
            continue;
        };
        if let Some(name) = info.lines().find_map(|l| l.strip_prefix("tp_name:")) {
            names.push(name.trim().to_owned());
        }
    }
    names.sort();
    names
}

/// `--capture socket` (and `auto` here, where the kernel allows it) attaches
/// nothing to a system-call tracepoint; `--capture syscall` does.
#[tokio::test]
#[cfg_attr(
    not(ebpf),
    ignore = "needs root and kernel BTF (/sys/kernel/btf/vmlinux)"
)]
async fn socket_capture_attaches_nothing_to_a_system_call() {
    let (_server, addr) = python_server();
    let port = addr.port().to_string();
    let socket_links = [
        "inet_sock_set_state",
        "sock_recv_length",
        "sock_send_length",
        "tcp_receive_reset",
    ];
    for capture in ["auto", "socket", "syscall"] {
        let w = watch(capture, &["--port", &port]);
        let links = attached_tracepoints(w.pid());
        let mode = if capture == "syscall" {
            "syscall"
        } else {
            "socket"
        };
        if mode == "socket" {
            assert_eq!(links, socket_links, "--capture {capture}");
        } else {
            assert!(links.iter().any(|l| l == "sys_enter"), "{links:?}");
        }
        let s = scrape(w.metrics).await;
        s.assert_value("clientgone_watch_capture", &[("mode", mode)], 1.0);
        s.assert_value("clientgone_watch_capture", &[], 1.0);
        // The capture works: one request is counted.
        let mut conn = Http1Connection::open(addr).await;
        assert_eq!(conn.request("GET", "/users/1").await.0, 200);
        conn.close().await;
        w.wait(DURATION_COUNT, &[on(&port)], 1.0).await;
    }
}

both_captures!(
    connections_open_before_the_agent_are_adopted,
    cfg_attr(
        not(ebpf),
        ignore = "needs root and kernel BTF (/sys/kernel/btf/vmlinux)"
    )
);
/// Connections open before the agent started (Python's `http.server`): one
/// idle after a request, one in the middle of a 32 MiB response, one that never
/// sent a byte. The open gauge counts them from the first scrape; each is
/// followed from its next request head — never the exchange it was found in.
async fn connections_open_before_the_agent_are_adopted(capture: &'static str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const BIG: usize = 512 * 65536;
    let (_server, addr) = python_server();
    let port = addr.port().to_string();
    let mut idle = send_raw(addr, b"GET /users/0 HTTP/1.1\r\nHost: t\r\n\r\n").await;
    read_until(&mut idle, b"user\n").await;
    let mut big = send_raw(addr, b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n").await;
    let seen = read_until(&mut big, b"xxxxxxxx").await;
    let head_len = seen.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let quiet = tokio::net::TcpStream::connect(addr).await.unwrap();

    let w = watch(capture, &["--port", &port, "--route", "/users/{id}"]);
    let s = scrape(w.metrics).await;
    s.assert_value("http_server_open_connections", &[on(&port)], 3.0);
    s.assert_value(ACTIVE, &[], 0.0);

    // Ten requests on the idle connection, then a FIN mid-handler. The server
    // thread was already waiting in its read when the programs attached: the
    // system-call capture learns a buffer only at a system call's entry, so
    // the bytes of that first read are unknown there, and its request is
    // waited out (never guessed); the socket capture reads them.
    let unseen = if capture == "syscall" { 1.0 } else { 0.0 };
    for i in 1..=10 {
        let get = format!("GET /users/{i} HTTP/1.1\r\nHost: t\r\n\r\n");
        idle.write_all(get.as_bytes()).await.unwrap();
        read_until(&mut idle, b"user\n").await;
    }
    w.wait(
        DURATION_COUNT,
        &[("http_route", "/users/{id}"), ("outcome", "completed")],
        10.0 - unseen,
    )
    .await;
    idle.write_all(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    w.wait(ACTIVE, &[("http_route", "unmatched")], 1.0).await;
    close_fin(idle);
    w.wait(DISCONNECTS, &brk("unmatched", "handler", "closed"), 1.0)
        .await;

    // The response in progress is read to its end, uncounted; the next
    // request on that connection counts.
    let mut rest = vec![0u8; BIG - (seen.len() - head_len)];
    big.read_exact(&mut rest).await.unwrap();
    big.write_all(b"GET /users/11 HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    read_until(&mut big, b"user\n").await;
    w.wait(
        DURATION_COUNT,
        &[("http_route", "/users/{id}"), ("outcome", "completed")],
        11.0 - unseen,
    )
    .await;
    drop(big);
    drop(quiet);

    let s = w.wait(CLOSES, &[], 3.0).await;
    s.assert_value(
        "clientgone_watch_connections_adopted_total",
        &[on(&port)],
        3.0,
    );
    s.assert_value(DURATION_COUNT, &[], 12.0 - unseen);
    s.assert_value(DISCONNECTS, &[], 1.0);
    s.assert_value("http_server_open_connections", &[], 0.0);
    // Their lifetimes are unknown: none is guessed.
    s.assert_value("http_server_connection_duration_seconds_count", &[], 0.0);
    s.assert_value("clientgone_watch_events_lost_total", &[], 0.0);
}

/// Without root (here: as `nobody`, every capability gone) watch says what is
/// missing and exits 2.
#[test]
#[cfg_attr(not(ebpf), ignore = "needs root (to become nobody) and kernel BTF")]
fn without_privileges_watch_says_so_and_exits_2() {
    assert!(
        Path::new("/usr/bin/setpriv").exists(),
        "util-linux's setpriv"
    );
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .args([
            BIN,
            "watch",
            "--port",
            "8080",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("needs root") && err.contains("CAP_BPF"),
        "{err}"
    );
}

#[path = "watch/tls.rs"]
mod tls;

#[path = "watch/h2.rs"]
mod h2;
