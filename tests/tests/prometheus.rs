//! The dashboard and the rules, proven on a real Prometheus (Debian's package):
//! the demo under break traffic is scraped every second with the shipped rules,
//! then every PromQL expression of the dashboard and of the rules is evaluated
//! through the HTTP API. A query that returns nothing fails the test and names
//! its panel. Alert expressions keep their thresholds, so for them it is enough
//! that Prometheus evaluates them without error.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clientgone_agent::traffic::{self, TrafficConfig};
use clientgone_tests::{DEADLINE, free_port, prom, start_demo};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

struct Prometheus {
    child: Child,
    addr: SocketAddr,
    _dir: TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("clientgone-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("temp dir");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn start_prometheus(target: SocketAddr) -> Prometheus {
    let dir = TempDir::new("prometheus");
    let rules = repo().join("deploy/prometheus/rules.yml");
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
         rule_files:\n  - {rules}\n\
         scrape_configs:\n  - job_name: clientgone\n    static_configs:\n      - targets: ['{target}']\n",
        rules = rules.canonicalize().expect("rules.yml").display()
    );
    std::fs::write(dir.0.join("prometheus.yml"), config).unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let child = Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.0.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.0.join("data").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prometheus");
    Prometheus {
        child,
        addr,
        _dir: dir,
    }
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `GET` a Prometheus API path; `None` while it is not answering yet.
///
/// HTTP/1.0, so the answer comes whole, not chunked, and ends with the connection.
async fn api(prom: &Prometheus, path: &str) -> Option<Value> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(prom.addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: prometheus\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.ok()?;
    let raw = String::from_utf8(raw).ok()?;
    let (_head, body) = raw.split_once("\r\n\r\n")?;
    serde_json::from_str(body).ok()
}

async fn query(prom: &Prometheus, expr: &str) -> Result<usize, String> {
    let v = api(prom, &format!("/api/v1/query?query={}", encode(expr)))
        .await
        .ok_or("no answer")?;
    if v["status"] != "success" {
        return Err(format!("{}: {}", v["errorType"], v["error"]));
    }
    Ok(v["data"]["result"].as_array().map_or(0, Vec::len))
}

/// Substitutes the dashboard's variables as Grafana would with "All" selected.
fn substitute(expr: &str) -> String {
    expr.replace("$__rate_interval", "15s")
        .replace("$__interval", "30s")
        .replace("${job}", ".*")
        .replace("$job", ".*")
        .replace("${instance}", ".*")
        .replace("$instance", ".*")
        .replace("${route}", ".*")
        .replace("$route", ".*")
        .replace("${rpc_method}", ".*")
        .replace("$rpc_method", ".*")
}

/// (where, PromQL) for every expression of the dashboard: panel targets, and the
/// variables' `label_values(metric, label)` as their metric selector.
fn dashboard_queries() -> Vec<(String, String)> {
    let path = repo().join("dashboards/clientgone.json");
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("dashboard")).expect("JSON");
    let mut out = Vec::new();
    fn walk(node: &Value, title: &str, out: &mut Vec<(String, String)>) {
        match node {
            Value::Object(map) => {
                let title = map.get("title").and_then(Value::as_str).unwrap_or(title);
                if let Some(expr) = map.get("expr").and_then(Value::as_str) {
                    out.push((format!("panel '{title}'"), substitute(expr)));
                }
                for (key, v) in map {
                    if key != "templating" {
                        walk(v, title, out);
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, title, out)),
            _ => {}
        }
    }
    walk(&dashboard, "", &mut out);
    for var in dashboard["templating"]["list"].as_array().unwrap() {
        let q = &var["query"];
        let q = q["query"].as_str().or(q.as_str()).unwrap_or("");
        if let Some(inner) = q
            .strip_prefix("label_values(")
            .and_then(|r| r.strip_suffix(')'))
        {
            let selector = inner.rsplit_once(',').map_or(inner, |(m, _)| m);
            out.push((format!("variable '{}'", var["name"]), substitute(selector)));
        }
    }
    assert!(out.len() >= 10, "too few dashboard queries found: {out:?}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(prometheus),
    ignore = "needs Debian's prometheus package (prometheus and promtool); see tests/build.rs"
)]
async fn every_dashboard_and_rule_query_returns_data_on_a_real_prometheus() {
    let demo = start_demo().await;
    let stop = CancellationToken::new();
    let mut config = TrafficConfig::new(demo.addr);
    config.rate = 200.0;
    config.duration = None;
    let generator = tokio::spawn(traffic::run(config, stop.clone()));
    let prom = start_prometheus(demo.metrics_addr);

    // Rules loaded and healthy, and every recording rule has produced a series.
    let start = Instant::now();
    let mut pending: Vec<(String, String)> = Vec::new();
    loop {
        if let Some(rules) = api(&prom, "/api/v1/rules").await {
            pending.clear();
            let groups = rules["data"]["groups"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            assert!(!groups.is_empty(), "no rule groups loaded: {rules}");
            for rule in groups
                .iter()
                .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            {
                let name = rule["name"].as_str().unwrap_or("?").to_owned();
                if rule["health"] == "err" {
                    panic!("rule {name} is unhealthy: {}", rule["lastError"]);
                }
                let check = match rule["type"].as_str() {
                    Some("recording") => query(&prom, &name).await.map(|n| n > 0),
                    _ => query(&prom, rule["query"].as_str().unwrap_or(""))
                        .await
                        .map(|_| true),
                };
                match check {
                    Ok(true) => {}
                    Ok(false) => pending.push((format!("rule {name}"), "no series yet".into())),
                    Err(e) => pending.push((format!("rule {name}"), e)),
                }
            }
            if pending.is_empty() {
                break;
            }
        }
        assert!(
            start.elapsed() < DEADLINE * 3,
            "rules without data after {:?}: {pending:?}",
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Every dashboard query parses and returns at least one series.
    let queries = dashboard_queries();
    loop {
        pending.clear();
        for (place, expr) in &queries {
            match query(&prom, expr).await {
                Ok(n) if n > 0 => {}
                Ok(_) => pending.push((place.clone(), format!("no series: {expr}"))),
                Err(e) => pending.push((place.clone(), format!("{e}: {expr}"))),
            }
        }
        if pending.is_empty() {
            break;
        }
        assert!(
            start.elapsed() < DEADLINE * 3,
            "dashboard queries without data: {pending:#?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // promtool's linter on a scrape under traffic.
    let (_, text) = prom::get(demo.metrics_addr, "/metrics").await;
    let mut lint = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    use std::io::Write as _;
    lint.stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = lint.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    stop.cancel();
    let summary = generator.await.unwrap();
    assert_eq!(summary.failed_total(), 0, "{summary}");
}

#[test]
#[cfg_attr(
    not(prometheus),
    ignore = "needs Debian's prometheus package (prometheus and promtool); see tests/build.rs"
)]
fn the_shipped_rules_pass_promtool_check_and_their_unit_tests() {
    let dir = repo().join("deploy/prometheus");
    for args in [
        vec!["check", "rules", "rules.yml"],
        vec!["test", "rules", "rules_test.yml"],
        vec!["check", "config", "prometheus.yml"],
    ] {
        let out = Command::new("promtool")
            .args(&args)
            .current_dir(&dir)
            .output()
            .expect("promtool");
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
