//! `memory`: resident memory per idle keep-alive connection, bare axum (a)
//! against clientgone (b).
//!
//! Each server runs as its own process (the `serve` subcommand); we read its
//! `VmRSS` from /proc, open the connections — each with one completed request,
//! so hyper has allocated its buffers and clientgone its connection state —
//! leave them idle, and read `VmRSS` again. The server's open file descriptors
//! confirm that the connections are really still open when we measure.
//!
//! clientgone's default header-read timeout (10 s) would close idle keep-alive
//! connections while we measure, so (b) runs with it off
//! (`ConnectionOptions::default().header_read_timeout(None)`); bare axum has
//! no such timeout.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::servers::{Config, ServerProcess, http_get};

/// File descriptors beyond the connections: listeners, runtime, stdio.
const SPARE_FDS: u64 = 1024;
/// Connections being opened at once.
const OPENING_AT_ONCE: usize = 256;

/// Flags of `memory` (also part of `all`).
#[derive(Debug, clap::Args)]
#[group(id = "memory_args")]
pub struct Args {
    /// Idle keep-alive connections held open against each server.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=200_000))]
    pub idle_connections: u32,
}

struct Row {
    config: Config,
    opened: i64,
    before_kib: u64,
    after_kib: u64,
}

impl Row {
    fn kib_per_connection(&self, n: u32) -> f64 {
        (self.after_kib as f64 - self.before_kib as f64) / f64::from(n)
    }
}

/// Runs the benchmark and returns its Markdown table.
pub fn run(args: &Args) -> Result<String, String> {
    let n = args.idle_connections;
    // Both ends of every connection need a descriptor: ours here, the server's
    // in the child, which inherits this limit.
    raise_nofile(u64::from(n) + SPARE_FDS)?;
    let runtime = crate::runtime(None)?;
    let mut rows = Vec::new();
    // (b′) shares (a)'s accept loop (`axum::serve`), so (b′) − (a) is what
    // clientgone itself adds; (b) − (a) also holds the difference between
    // `clientgone::serve` and `axum::serve`.
    for config in [Config::Bare, Config::Metrics, Config::MetricsAxumServe] {
        eprintln!("memory: {n} idle connections to {}", config.label());
        rows.push(runtime.block_on(measure(config, n))?);
    }

    let mut out = String::new();
    let _ = writeln!(
        out,
        "## Memory per idle keep-alive connection ({n} connections, one completed \
         request each; server VmRSS)\n"
    );
    let _ = writeln!(
        out,
        "(b) runs with `header_read_timeout(None)`: the default 10 s header-read \
         timeout would close idle keep-alive connections. (b′) is (b) served by \
         `axum::serve` (which has no header-read timeout), so it shares (a)'s accept loop.\n"
    );
    let _ = writeln!(
        out,
        "| configuration | per connection | open at the server | VmRSS before | VmRSS after |"
    );
    let _ = writeln!(out, "|---|--:|--:|--:|--:|");
    for r in &rows {
        let _ = writeln!(
            out,
            "| {} | {:.2} KiB | {} | {} KiB | {} KiB |",
            r.config.label(),
            r.kib_per_connection(n),
            r.opened,
            r.before_kib,
            r.after_kib
        );
    }
    if let [bare, metrics, same_loop] = &rows[..] {
        let _ = writeln!(
            out,
            "\nExtra memory per connection against (a): (b) **{:.2} KiB**, \
             (b′) **{:.2} KiB** (goal ≤ 1 KiB).",
            metrics.kib_per_connection(n) - bare.kib_per_connection(n),
            same_loop.kib_per_connection(n) - bare.kib_per_connection(n)
        );
    }
    Ok(out)
}

async fn measure(config: Config, n: u32) -> Result<Row, String> {
    // Pinned to one CPU, the server runs one runtime worker, so its
    // allocations land in one malloc arena and the figure is reproducible.
    let server = ServerProcess::spawn(config, Some(0), &["--no-header-read-timeout"])?;
    // One request first, so the route's metric children and the runtime's
    // threads exist before the baseline.
    let addr = server.addr;
    tokio::task::spawn_blocking(move || http_get(addr, "/hello"))
        .await
        .map_err(|e| e.to_string())??;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before_kib = server.rss_kib()?;
    let fds_before = server.open_fds()?;

    let gate = Arc::new(Semaphore::new(OPENING_AT_ONCE));
    let mut opening = JoinSet::new();
    for _ in 0..n {
        let gate = gate.clone();
        opening.spawn(async move {
            let _permit = gate.acquire_owned().await.map_err(|e| e.to_string())?;
            open_with_one_request(addr).await
        });
    }
    let mut open = Vec::with_capacity(n as usize);
    while let Some(joined) = opening.join_next().await {
        open.push(joined.map_err(|e| e.to_string())??);
    }
    // Let the server finish whatever follows the last response.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after_kib = server.rss_kib()?;
    let opened = server.open_fds()? as i64 - fds_before as i64;

    // Reset rather than close: no TIME_WAIT left to crowd the port range for
    // the next configuration.
    for stream in &open {
        let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
    }
    drop(open);
    Ok(Row {
        config,
        opened,
        before_kib,
        after_kib,
    })
}

/// Connects, sends one keep-alive `GET /hello`, reads the whole answer, and
/// returns the still open connection.
async fn open_with_one_request(addr: SocketAddr) -> Result<TcpStream, String> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    stream
        .write_all(b"GET /hello HTTP/1.1\r\nHost: b\r\n\r\n")
        .await
        .map_err(|e| format!("cannot send: {e}"))?;
    let mut response = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    loop {
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .map_err(|_| "no answer within 10 s".to_owned())?
            .map_err(|e| format!("cannot read: {e}"))?;
        if read == 0 {
            return Err("the server closed a fresh keep-alive connection".into());
        }
        response.extend_from_slice(&chunk[..read]);
        if complete(&response) {
            return Ok(stream);
        }
    }
}

/// Whether `response` holds a whole head and a body of its `content-length`.
pub(crate) fn complete(response: &[u8]) -> bool {
    let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&response[..end]).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    response.len() >= end + 4 + length
}

/// Raises `RLIMIT_NOFILE` of this process to at least `need` with the
/// `prlimit` command (children inherit it), so no unsafe `setrlimit` call.
fn raise_nofile(need: u64) -> Result<(), String> {
    let limits = std::fs::read_to_string("/proc/self/limits")
        .map_err(|e| format!("cannot read /proc/self/limits: {e}"))?;
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    if soft >= need {
        return Ok(());
    }
    let status = Command::new("prlimit")
        .arg("--pid")
        .arg(std::process::id().to_string())
        .arg(format!("--nofile={need}:{need}"))
        .status()
        .map_err(|e| format!("cannot run prlimit (util-linux): {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "cannot raise the open-file limit to {need} (prlimit {status}); \
             run as root or with `ulimit -n {need}`, or pass fewer --idle-connections"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::complete;

    #[test]
    fn knows_a_complete_answer() {
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n";
        assert!(!complete(&head[..20]));
        assert!(!complete(&[&head[..], b"Hell"].concat()));
        assert!(complete(&[&head[..], b"Hello"].concat()));
    }
}
