//! Runs `wrk` and reads its report.

use std::process::Command;
use std::time::Duration;

/// How to drive a server.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    /// wrk threads (`-t`).
    pub threads: u32,
    /// Open keep-alive connections (`-c`).
    pub connections: u32,
    /// Seconds (`-d`).
    pub seconds: u64,
    /// CPU wrk is pinned to; `None` leaves it free.
    pub cpu: Option<u32>,
}

/// What one wrk run measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WrkResult {
    /// Completed requests.
    pub requests: u64,
    /// `Requests/sec`.
    pub rps: f64,
    /// Latency percentiles from `--latency`.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Socket errors (connect + read + write + timeout).
    pub socket_errors: u64,
    /// Answers that were not 2xx or 3xx.
    pub non_2xx: u64,
}

impl WrkResult {
    /// Failed requests of either kind: cheap failures would flatter CPU per request.
    pub fn errors(&self) -> u64 {
        self.socket_errors + self.non_2xx
    }
}

/// Runs wrk against `url` and parses its report.
pub fn run(url: &str, load: Load) -> Result<WrkResult, String> {
    run_with(url, load, &[])
}

/// [`run`] with more wrk arguments (`-H "Connection: close"`: a new
/// connection, and over HTTPS a new handshake, for every request).
pub fn run_with(url: &str, load: Load, extra: &[&str]) -> Result<WrkResult, String> {
    let mut command = match load.cpu {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(cpu.to_string()).arg("wrk");
            c
        }
        None => Command::new("wrk"),
    };
    command
        .arg(format!("-t{}", load.threads))
        .arg(format!("-c{}", load.connections))
        .arg(format!("-d{}s", load.seconds))
        .arg("--latency")
        .args(extra)
        .arg(url);
    let output = command.output().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            "taskset or wrk not found (apt-get install -y wrk util-linux)".to_owned()
        }
        _ => format!("cannot run wrk: {e}"),
    })?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        // `taskset -c 1 wrk` exits 127 when wrk is missing.
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(format!(
            "wrk failed ({}): {}{}",
            output.status,
            stderr.trim(),
            if output.status.code() == Some(127) {
                " — is wrk installed? (apt-get install -y wrk)"
            } else {
                ""
            }
        ));
    }
    parse(&stdout).map_err(|e| format!("{e}; wrk said:\n{stdout}"))
}

/// Parses wrk's report (4.x, with `--latency`).
pub fn parse(report: &str) -> Result<WrkResult, String> {
    let mut requests = None;
    let mut rps = None;
    let mut p50 = None;
    let mut p99 = None;
    let mut socket_errors = 0;
    let mut non_2xx = 0;
    for line in report.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            rps = v.trim().parse::<f64>().ok();
        } else if let Some(v) = line.strip_prefix("50%") {
            p50 = parse_latency(v.trim());
        } else if let Some(v) = line.strip_prefix("99%") {
            p99 = parse_latency(v.trim());
        } else if let Some((n, _)) = line.split_once(" requests in ") {
            requests = n.trim().parse::<u64>().ok();
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            socket_errors = v
                .split(',')
                .filter_map(|part| part.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum();
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            non_2xx = v.trim().parse().unwrap_or(0);
        }
    }
    match (requests, rps, p50, p99) {
        (Some(requests), Some(rps), Some(p50), Some(p99)) => Ok(WrkResult {
            requests,
            rps,
            p50,
            p99,
            socket_errors,
            non_2xx,
        }),
        _ => Err("cannot read wrk's report (requests, Requests/sec, 50%, 99%)".to_owned()),
    }
}

/// `290.00us`, `1.23ms`, `2.00s`, `1.00m`.
fn parse_latency(s: &str) -> Option<Duration> {
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = s.split_at(split);
    let number: f64 = number.parse().ok()?;
    let seconds = match unit.trim() {
        "us" => number / 1e6,
        "ms" => number / 1e3,
        "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => return None,
    };
    Some(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "Running 5s test @ http://127.0.0.1:8080/hello
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   301.22us  100.00us   5.00ms   90.00%
    Req/Sec   100.63k     1.00k  110.00k    80.00%
  Latency Distribution
     50%  290.00us
     75%  320.00us
     90%  350.00us
     99%    1.50ms
  500321 requests in 5.00s, 60.00MB read
  Socket errors: connect 0, read 2, write 1, timeout 0
  Non-2xx or 3xx responses: 5
Requests/sec: 100063.45
Transfer/sec:     12.00MB
";

    #[test]
    fn parses_a_report() {
        let r = parse(REPORT).unwrap();
        assert_eq!(r.requests, 500_321);
        assert_eq!(r.rps, 100_063.45);
        assert_eq!(r.p50, Duration::from_micros(290));
        assert_eq!(r.p99, Duration::from_micros(1500));
        assert_eq!(r.socket_errors, 3);
        assert_eq!(r.non_2xx, 5);
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse("wrk: command not found").is_err());
        assert_eq!(parse_latency("2.00s"), Some(Duration::from_secs(2)));
        assert_eq!(parse_latency("12.5"), None);
    }
}
