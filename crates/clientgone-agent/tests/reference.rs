//! `docs/metrics.md` against the code: the families each part registers (name,
//! type, label names), every flag of every command, and the label values the
//! code's enums give. A name changed on one side only fails here.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use clientgone::{
    Buckets, CallRecord, Cause, CloseReason, End, GrpcStatus, Metrics, Phase, Record, RpcType,
};
use clientgone_agent::watch::bpf::CaptureMode;
use clientgone_agent::watch::sink::PortMetrics;
use clientgone_agent::watch::skip::Skip;
use clientgone_tests::prom::{Scrape, scrape};

const BIN: &str = env!("CARGO_BIN_EXE_clientgone");
const DOC: &str = include_str!("../../../docs/metrics.md");

/// family → (type, label names).
type Families = BTreeMap<String, (String, BTreeSet<String>)>;

/// The families of a scrape, histograms under their own name.
fn families(s: &Scrape) -> Families {
    let mut out = Families::new();
    for (family, kind) in &s.types {
        let mut labels = BTreeSet::new();
        for (name, l, _) in &s.samples {
            let base = name
                .strip_suffix("_bucket")
                .or_else(|| name.strip_suffix("_sum"))
                .or_else(|| name.strip_suffix("_count"))
                .filter(|_| kind == "histogram")
                .unwrap_or(name);
            if base == family {
                labels.extend(l.keys().filter(|k| *k != "le").cloned());
            }
        }
        out.insert(family.clone(), (kind.clone(), labels));
    }
    out
}

fn cells(line: &str) -> Vec<String> {
    line.trim()
        .trim_matches('|')
        .split('|')
        .map(|c| c.trim().to_owned())
        .collect()
}

fn names_in(cell: &str) -> BTreeSet<String> {
    cell.split(',')
        .map(|n| n.trim().trim_matches('`').to_owned())
        .filter(|n| !n.is_empty())
        .collect()
}

/// The metric tables of the document.
fn documented_families() -> Families {
    let mut out = Families::new();
    let metrics = DOC
        .split("\n## ")
        .find(|s| s.starts_with("Metrics"))
        .unwrap();
    for line in metrics.lines().filter(|l| l.starts_with("| `")) {
        let c = cells(line);
        let name = c[0].trim_matches('`').to_owned();
        assert!(
            out.insert(name.clone(), (c[1].clone(), names_in(&c[2])))
                .is_none(),
            "{name} twice"
        );
    }
    out
}

/// A row of a two-column table whose first cell is `key`.
fn documented(key: &str) -> BTreeSet<String> {
    let line = DOC
        .lines()
        .find(|l| l.starts_with(&format!("| {key} |")))
        .unwrap_or_else(|| panic!("docs/metrics.md has no row {key}"));
    names_in(&cells(line)[1])
}

/// Every family the code registers, each part touched so that its label
/// names show.
async fn registered_families() -> Families {
    let mut all = Families::new();
    // The server metrics, HTTP and gRPC, as the layer records them.
    let registry = prometheus::Registry::new();
    let m = Metrics::new(&registry).unwrap();
    let broken = End::Disconnect {
        phase: Phase::Handler,
        cause: Cause::Closed,
    };
    m.request_started("GET", "/a");
    m.request_ended(&Record {
        method: "GET",
        route: "/a",
        status: 499,
        end: broken,
        elapsed: Duration::from_millis(5),
        body_bytes_sent: 0,
    });
    m.connection_opened();
    m.connection_closed(CloseReason::ClientAbort, Duration::from_secs(1));
    m.call_started("pkg.S/M", RpcType::Unary);
    m.call_ended(&CallRecord {
        method: "pkg.S/M",
        rpc_type: RpcType::Unary,
        status: GrpcStatus::CANCELLED,
        end: broken,
        elapsed: Duration::from_millis(5),
        body_bytes_sent: 0,
    });
    all.extend(families(&Scrape::from_registry(&registry)));

    // watch's own families; its server families are the ones above with
    // `server_port` added.
    let registry = prometheus::Registry::new();
    let mut sink = PortMetrics::new(&registry, None, Buckets::default()).unwrap();
    sink.add_port(8080).unwrap();
    sink.set_capture(CaptureMode::Socket);
    for (name, (kind, mut labels)) in families(&Scrape::from_registry(&registry)) {
        if name.starts_with("http_") {
            labels.remove("server_port");
            assert_eq!(all.get(&name), Some(&(kind, labels)), "watch's {name}");
        } else {
            all.insert(name, (kind, labels));
        }
    }

    // The proxy's upstream side and the OTLP counters, from the binaries:
    // one request to an upstream that refuses, with traces and metrics on
    // towards a collector that is not there.
    let (child, addrs) = start(
        &[
            "proxy",
            "--upstream",
            "http://127.0.0.1:1",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
        "clientgone proxy: ",
    );
    let _child = Killed(child);
    // "clientgone proxy: http://LISTEN -> UPSTREAM (…), metrics on http://METRICS/metrics"
    let (listen, metrics) = (addrs[0], addrs[addrs.len() - 1]);
    let mut conn = clientgone_tests::client::Http1Connection::open(listen).await;
    assert_eq!(conn.request("GET", "/x").await.0, 502);
    all.extend(
        families(&scrape(metrics).await)
            .into_iter()
            .filter(|(n, _)| n.starts_with("http_client_") || n.starts_with("clientgone_otlp_")),
    );
    all
}

struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a server command with OTLP on, returns it and the addresses on the
/// start-up line that contains `marker`.
fn start(args: &[&str], marker: &str) -> (std::process::Child, Vec<SocketAddr>) {
    let mut child = Command::new(BIN)
        .args(args)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
        .env("OTEL_METRICS_EXPORTER", "otlp")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains(marker) {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "exited: {line}");
    }
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    let addrs = line
        .split("http://")
        .skip(1)
        .filter_map(|s| s.split(['/', ' ', ',', ')']).next()?.parse().ok())
        .collect();
    (child, addrs)
}

#[tokio::test]
async fn every_family_is_documented_with_its_type_and_labels() {
    let code = registered_families().await;
    let doc = documented_families();
    let missing: Vec<_> = code.keys().filter(|n| !doc.contains_key(*n)).collect();
    let stale: Vec<_> = doc.keys().filter(|n| !code.contains_key(*n)).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "registered, not in docs/metrics.md: {missing:?}; documented, not registered: {stale:?}"
    );
    for (name, registered) in &code {
        assert_eq!(
            &doc[name], registered,
            "{name}: docs/metrics.md against the code"
        );
    }
}

#[test]
fn every_flag_of_every_command_is_documented() {
    for command in ["demo", "traffic", "proxy", "watch"] {
        let help = Command::new(BIN)
            .args([command, "--help"])
            .output()
            .unwrap();
        let flags: BTreeSet<String> = String::from_utf8_lossy(&help.stdout)
            .lines()
            // Options are indented; the text after them is not.
            .filter(|l| l.starts_with("  "))
            .filter_map(|l| {
                let l = l.trim_start();
                let l = l
                    .strip_prefix("-h, ")
                    .or(l.strip_prefix("-V, "))
                    .unwrap_or(l);
                let flag = l.split([' ', '=', '<']).next()?;
                flag.starts_with("--").then(|| flag.to_owned())
            })
            .filter(|f| f != "--help" && f != "--version")
            .collect();
        assert_eq!(
            flags,
            documented(&format!("`clientgone {command}`")),
            "clientgone {command}: --help against docs/metrics.md"
        );
    }
}

#[test]
fn label_values_are_the_codes() {
    let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    let phases: Vec<&str> = Phase::ALL.iter().map(|p| p.as_str()).collect();
    assert_eq!(documented("`phase`"), set(&phases));
    let causes: Vec<&str> = Cause::ALL.iter().map(|c| c.as_str()).collect();
    assert_eq!(documented("`cause`"), set(&causes));
    let reasons: Vec<&str> = CloseReason::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(documented("`reason` (connection closes)"), set(&reasons));
    let skips: Vec<&str> = Skip::ALL.iter().map(|s| s.as_str()).collect();
    assert_eq!(
        documented("`reason` (`clientgone_watch_connections_skipped_total`)"),
        set(&skips)
    );
    let modes: Vec<&str> = CaptureMode::ALL.iter().map(|m| m.as_str()).collect();
    assert_eq!(documented("`mode`"), set(&modes));
    let types: Vec<&str> = RpcType::ALL.iter().map(|t| t.as_str()).collect();
    assert_eq!(documented("`rpc_type`"), set(&types));
}
