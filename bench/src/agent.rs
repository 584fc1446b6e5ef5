//! Running `clientgone`'s own servers (demo, proxy) in a process of their own,
//! and the process plumbing the `breaks` and `proxy` benchmarks share.
//!
//! The hidden `agent` subcommand takes a `clientgone` command line
//! (`demo …` or `proxy …`), parses it with the real binary's own clap
//! definitions — so every default (connection options, upstream timeout) is
//! the shipped one — and starts the server through the library, as
//! `clientgone`'s `main` does. We re-execute ourselves rather than run
//! `target/release/clientgone` so that one `cargo build -p clientgone-bench`
//! builds everything the bench needs, and so the server can be pinned to a
//! CPU of its own with `taskset`.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser as _;
use clientgone_agent::cli::{Cli as AgentCli, Command as AgentCommand};
use clientgone_agent::demo::{self, DemoConfig};
use clientgone_agent::proxy::{self, ProxyConfig, RouteTable, Upstream};
use clientgone_agent::server::{RunningServer, ServerConfig};

/// Flags of the hidden `agent` subcommand.
#[derive(Debug, clap::Args)]
#[group(id = "agent_args")]
pub struct AgentArgs {
    /// A `clientgone` command line without the program name: `demo …` or `proxy …`.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    pub args: Vec<String>,
}

/// Runs `clientgone demo` or `clientgone proxy` until killed. Prints
/// `listening on ADDR metrics on ADDR` once both listeners are bound.
pub fn serve(args: &AgentArgs) -> Result<(), String> {
    let cli =
        AgentCli::try_parse_from(std::iter::once("clientgone".to_owned()).chain(args.args.clone()))
            .map_err(|e| {
                format!(
                    "agent: {}",
                    e.to_string().lines().next().unwrap_or_default()
                )
            })?;
    // A helper server must not outlive the bench; exiting (not being killed)
    // also lets `instructions` read callgrind's count.
    crate::servers::exit_with_launcher();
    // What `clientgone`'s main builds: pinned by `taskset` to one CPU, that is
    // tokio's single-threaded scheduler.
    let runtime =
        clientgone_agent::runtime::build().map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(async move {
        let registry = prometheus::Registry::new();
        let running: RunningServer = match cli.command {
            AgentCommand::Demo(a) => demo::start(DemoConfig {
                listen: a.listen,
                metrics_listen: a.metrics_listen,
                options: a.connection.options(),
                registry,
                tracer: None,
                buckets: a.buckets.buckets(),
                tls: a.tls.files(),
            })
            .await
            .map_err(|e| e.to_string())?,
            AgentCommand::Proxy(a) => {
                let upstream =
                    Upstream::parse(&a.upstream).map_err(|e| format!("--upstream: {e}"))?;
                let routes = RouteTable::new(a.routes).map_err(|e| e.to_string())?;
                proxy::start(ProxyConfig {
                    server: ServerConfig {
                        listen: a.listen,
                        metrics_listen: a.metrics_listen,
                        options: a.connection.options(),
                        registry,
                        tracer: None,
                        buckets: a.buckets.buckets(),
                        tls: a.tls.files(),
                    },
                    upstream,
                    routes,
                    upstream_timeout: a.upstream_timeout,
                    grpc: match &a.grpc_descriptor {
                        Some(path) => Some(
                            std::fs::read(path)
                                .map_err(|e| e.to_string())
                                .and_then(|bytes| {
                                    clientgone::GrpcMethods::from_file_descriptor_set(&bytes)
                                        .map_err(|e| e.to_string())
                                })
                                .map_err(|e| format!("--grpc-descriptor: {e}"))?,
                        ),
                        None => None,
                    },
                    skip: a.skip_routes,
                    upstream_ca: a.upstream_ca,
                })
                .await
                .map_err(|e| e.to_string())?
            }
            AgentCommand::Traffic(_) | AgentCommand::Watch(_) => {
                return Err("agent runs demo or proxy only".to_owned());
            }
        };
        {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(
                out,
                "listening on {} metrics on {}",
                running.addr, running.metrics_addr
            );
            let _ = out.flush();
        }
        running.wait().await.map_err(|e| e.to_string())
    })
}

/// A child process we started, killed (by its own pid) when dropped, on every
/// path out of a benchmark — errors and `?` included.
pub struct ChildGuard {
    child: Child,
    name: String,
    /// Kept open: a closed pipe would make the child's next print fail.
    _stdout: Option<BufReader<ChildStdout>>,
    /// Kept open for the child's life: our helpers exit when it closes
    /// (`servers::exit_with_launcher`), so none outlives a killed bench.
    _stdin: Option<ChildStdin>,
    /// Send SIGTERM first and wait for the child (nginx: its master then stops
    /// its worker; SIGKILL would orphan the worker).
    graceful: bool,
}

impl ChildGuard {
    /// Starts `command` with stdin a pipe held open and stderr inherited.
    pub fn spawn(mut command: Command, name: &str, graceful: bool) -> Result<Self, String> {
        command.stdin(Stdio::piped()).stderr(Stdio::inherit());
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        Ok(ChildGuard {
            _stdin: child.stdin.take(),
            child,
            name: name.to_owned(),
            _stdout: None,
            graceful,
        })
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails if the child has already exited.
    pub fn check_alive(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!(
                "{} exited ({status}); its stderr is above",
                self.name
            )),
            Err(e) => Err(format!("cannot wait for {}: {e}", self.name)),
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.graceful {
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .stderr(Stdio::null())
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `clientgone demo|proxy …` in a child process, pinned to `cpu`.
pub struct AgentProcess {
    guard: ChildGuard,
    /// The served address.
    pub addr: SocketAddr,
    /// The `/metrics` listener.
    pub metrics_addr: SocketAddr,
}

impl AgentProcess {
    /// The server's pid (`taskset` execs it, so it is the child's).
    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    /// Starts it and waits for its `listening on` line.
    pub fn spawn(cpu: u32, args: &[&str]) -> Result<Self, String> {
        let exe = std::env::current_exe().map_err(|e| format!("cannot find myself: {e}"))?;
        let mut command = Command::new("taskset");
        command
            .arg("-c")
            .arg(cpu.to_string())
            .arg(exe)
            .arg("agent")
            .args(args)
            .stdout(Stdio::piped());
        let what = format!("clientgone {}", args.first().copied().unwrap_or_default());
        let mut guard = ChildGuard::spawn(command, &what, false)?;
        let stdout = guard
            .child
            .stdout
            .take()
            .ok_or("no stdout from the agent")?;
        let mut stdout = BufReader::new(stdout);
        let mut line = String::new();
        // A child that fails to start closes its stdout: read_line returns 0.
        let _ = stdout.read_line(&mut line);
        let parsed = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|rest| rest.split_once(" metrics on "))
            .and_then(|(a, m)| Some((a.parse().ok()?, m.parse().ok()?)));
        guard._stdout = Some(stdout);
        match parsed {
            Some((addr, metrics_addr)) => Ok(AgentProcess {
                guard,
                addr,
                metrics_addr,
            }),
            None => Err(format!("{what} did not start; its stderr is above")),
        }
    }
}

/// Pins this process (every thread it has, and so every thread it will start)
/// to `cpu` with `taskset -a -p`, and unpins it when dropped. Affinity is set
/// with an external command because the bench forbids `unsafe` (no
/// `sched_setaffinity` through libc). Runtimes must be built after this.
pub struct PinSelf {
    all: String,
}

impl PinSelf {
    /// Pins the process to `cpu`.
    pub fn to(cpu: u32) -> Result<Self, String> {
        let all = std::fs::read_to_string("/sys/devices/system/cpu/online")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "0-1".to_owned());
        taskset(&cpu.to_string())?;
        Ok(PinSelf { all })
    }
}

impl Drop for PinSelf {
    fn drop(&mut self) {
        let _ = taskset(&self.all);
    }
}

fn taskset(cpus: &str) -> Result<(), String> {
    let status = Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &std::process::id().to_string()])
        .stdout(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run taskset (Debian package util-linux): {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("taskset -a -p -c {cpus} failed ({status})"))
    }
}

/// User + system CPU time of process `pid`, all threads, from `/proc`.
pub fn cpu_time(pid: u32) -> Result<Duration, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("cannot read /proc/{pid}/stat: {e}"))?;
    // Fields after the parenthesised command name: utime is the 12th, stime the 13th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    match (ticks(11), ticks(12)) {
        (Some(u), Some(s)) => Ok(Duration::from_secs_f64(
            (u + s) as f64 / *crate::servers::CLOCK_TICKS as f64,
        )),
        _ => Err(format!("cannot parse /proc/{pid}/stat")),
    }
}

/// CPU time of `pid` and its direct children (nginx: the master and its
/// worker, which is not our child and so would otherwise count as "other
/// programs").
pub fn tree_cpu_time(pid: u32) -> Result<Duration, String> {
    let mut total = cpu_time(pid)?;
    for child in children(pid) {
        total += cpu_time(child).unwrap_or_default();
    }
    Ok(total)
}

/// Direct children of `pid`, from every process's `ppid` in `/proc`.
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    let rest = s.rsplit_once(')')?.1.to_owned();
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

/// A one-shot `GET /metrics` from `addr`; the body.
pub fn scrape(addr: SocketAddr) -> Result<String, String> {
    crate::servers::http_get(addr, "/metrics")
}

/// One sample line of the Prometheus text format: name, labels, value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    /// The value of label `name`, if present.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses the Prometheus text format (comments skipped, label values
/// unescaped). Lines it cannot read are an error, not silently dropped: a
/// check that compares counters must not compare against a half-read page.
pub fn parse_metrics(text: &str) -> Result<Vec<Sample>, String> {
    let mut samples = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = || format!("cannot read metrics line: {line}");
        let name_end = line.find(['{', ' ']).ok_or_else(bad)?;
        let name = line[..name_end].to_owned();
        let mut rest = &line[name_end..];
        let mut labels = Vec::new();
        if let Some(after) = rest.strip_prefix('{') {
            let mut chars = after.char_indices();
            let mut key = String::new();
            let mut value = String::new();
            let mut in_value = false;
            let mut escaped = false;
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                if in_value {
                    match (escaped, c) {
                        (true, c) => {
                            value.push(if c == 'n' { '\n' } else { c });
                            escaped = false;
                        }
                        (false, '\\') => escaped = true,
                        (false, '"') => {
                            labels.push((std::mem::take(&mut key), std::mem::take(&mut value)));
                            in_value = false;
                        }
                        (false, c) => value.push(c),
                    }
                } else {
                    match c {
                        '}' => {
                            end = Some(i);
                            break;
                        }
                        '=' => {
                            if chars.next().map(|(_, c)| c) != Some('"') {
                                return Err(bad());
                            }
                            in_value = true;
                        }
                        ',' | ' ' => {}
                        c => key.push(c),
                    }
                }
            }
            let end = end.ok_or_else(bad)?;
            rest = &after[end + 1..];
        }
        let value = rest.split_whitespace().next().ok_or_else(bad)?;
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse::<f64>().map_err(|_| bad())?,
        };
        samples.push(Sample {
            name,
            labels,
            value,
        });
    }
    Ok(samples)
}

/// Sum of every sample named `name` whose labels include all of `want`.
pub fn sum(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name && want.iter().all(|(k, v)| s.label(k) == Some(v)))
        .map(|s| s.value)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_text_format() {
        let text = "# HELP x y\n# TYPE x counter\n\
            http_server_client_disconnects_total{cause=\"closed\",http_route=\"/items/{id}\",phase=\"handler\"} 3\n\
            http_server_open_connections 0\n\
            weird{a=\"q\\\"uote,}\"} +Inf\n";
        let s = parse_metrics(text).unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].label("http_route"), Some("/items/{id}"));
        assert_eq!(
            sum(
                &s,
                "http_server_client_disconnects_total",
                &[("phase", "handler")]
            ),
            3.0
        );
        assert_eq!(s[1].value, 0.0);
        assert_eq!(s[2].label("a"), Some("q\"uote,}"));
        assert!(parse_metrics("broken{a=\"b\" 1").is_err());
        assert!(parse_metrics("x notanumber").is_err());
    }

    #[test]
    fn agent_command_lines_parse() {
        let ok =
            AgentCli::try_parse_from(["clientgone", "proxy", "--upstream", "http://127.0.0.1:1"]);
        assert!(ok.is_ok());
        assert!(AgentCli::try_parse_from(["clientgone", "proxy", "--bogus"]).is_err());
    }
}
