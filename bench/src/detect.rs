//! `detect`: how long after a client closes (FIN) or resets (RST) its connection
//! the `ClientGone` token of the request in flight fires.
//!
//! The token is cancelled in the same guard drop that counts the break, so its
//! firing time is the time the break is counted. The handler cannot await the
//! token itself — on a break hyper drops the handler's future — so, like a real
//! user, it moves the token into a spawned task, which stamps `Instant::now()`.

use std::fmt::Write as _;
use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::Uri;
use axum::routing::get;
use clientgone::{ClientGone, DisconnectLayer, Metrics, TrackedListener};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::close::Close;
use crate::servers::{CpuSnapshot, wait_for_quiet};
use crate::{fmt_duration, quantile};

/// Longest we wait for the handler to start or the token to fire.
const PATIENCE: Duration = Duration::from_secs(5);
/// Unrecorded samples of each kind first: the first requests create the
/// route's metric children and warm the allocator.
const WARMUP: u32 = 20;

/// Flags of `detect` (also part of `all`).
#[derive(Debug, clap::Args)]
#[group(id = "detect_args")]
pub struct Args {
    /// Samples of each kind of close (FIN and RST).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub samples: u32,
}

/// What the handler tells the client side: it started, and when the token fired.
struct Signals {
    started: mpsc::UnboundedSender<u64>,
    fired: mpsc::UnboundedSender<(u64, Instant)>,
}

/// Runs the benchmark and returns its Markdown table.
pub fn run(args: &Args) -> Result<String, String> {
    let runtime = crate::runtime(None)?;
    runtime.block_on(run_async(args))
}

async fn run_async(args: &Args) -> Result<String, String> {
    let registry = prometheus::Registry::new();
    let metrics = Metrics::new(&registry).map_err(|e| e.to_string())?;
    let (started_tx, started_rx) = mpsc::unbounded_channel();
    let (fired_tx, fired_rx) = mpsc::unbounded_channel();
    let app = Router::new()
        .route("/wait", get(wait))
        .with_state(Arc::new(Signals {
            started: started_tx,
            fired: fired_tx,
        }))
        .layer(DisconnectLayer::new(metrics.clone()));
    let listener = TrackedListener::bind("127.0.0.1:0", &metrics)
        .await
        .map_err(|e| format!("cannot listen: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let server = tokio::spawn(clientgone::serve(listener, app).into_future());

    let mut client = Client {
        addr,
        next_id: 0,
        started: started_rx,
        fired: fired_rx,
    };
    eprintln!(
        "detect: {} FIN and {} RST samples",
        args.samples, args.samples
    );
    // Latency tails are what other programs disturb most: start on a quiet
    // machine and say how quiet it stayed.
    tokio::task::spawn_blocking(|| wait_for_quiet(Duration::from_secs(120)))
        .await
        .map_err(|e| e.to_string())?;
    let before = CpuSnapshot::take();
    let start = Instant::now();
    for _ in 0..WARMUP {
        client.sample(Close::Fin).await?;
        client.sample(Close::Rst).await?;
    }
    let mut fin = Vec::new();
    let mut rst = Vec::new();
    let mut missed = [0u32; 2];
    // Interleaved, so drift affects both kinds alike.
    for _ in 0..args.samples {
        match client.sample(Close::Fin).await? {
            Some(d) => fin.push(d),
            None => missed[0] += 1,
        }
        match client.sample(Close::Rst).await? {
            Some(d) => rst.push(d),
            None => missed[1] += 1,
        }
    }
    let foreign =
        CpuSnapshot::take().foreign_since(&before).as_secs_f64() / start.elapsed().as_secs_f64();
    // The counter and the token change in the same drop; a moment for the
    // last one to settle is all that is needed.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let counted = disconnects_by_cause(&registry);
    server.abort();

    let mut out = String::new();
    let _ = writeln!(
        out,
        "## Detection latency (client close → `ClientGone` token fired; {} samples each, \
         after {WARMUP} warm-up samples)\n",
        args.samples
    );
    let _ = writeln!(
        out,
        "| close | p50 | p99 | max | missed (no token within {} s) | breaks counted (`cause`) |",
        PATIENCE.as_secs()
    );
    let _ = writeln!(out, "|---|--:|--:|--:|--:|---|");
    for (name, values, missed, cause) in [
        (Close::Fin.label(), &mut fin, missed[0], "closed"),
        (Close::Rst.label(), &mut rst, missed[1], "reset"),
    ] {
        let q = |values: &mut Vec<Duration>, p| {
            quantile(values, p).map_or_else(|| "—".to_owned(), fmt_duration)
        };
        let _ = writeln!(
            out,
            "| {name} | {} | {} | {} | {missed} | {} `{cause}` |",
            q(values, 0.5),
            q(values, 0.99),
            q(values, 1.0),
            counted
                .iter()
                .find(|(c, _)| c == cause)
                .map_or(0, |(_, n)| *n),
        );
    }
    let other: Vec<String> = counted
        .iter()
        .filter(|(c, _)| c != "closed" && c != "reset")
        .map(|(c, n)| format!("{n} `{c}`"))
        .collect();
    if !other.is_empty() {
        let _ = writeln!(out, "\nOther causes counted: {}", other.join(", "));
    }
    let _ = writeln!(
        out,
        "\n(Counts include the {WARMUP} warm-up samples of each kind. Other programs \
         used {:.0} % of a CPU during the run.)",
        foreign * 100.0
    );
    Ok(out)
}

/// `GET /wait?n=ID`: hands the token to a spawned task, says it started, and
/// never answers.
async fn wait(State(signals): State<Arc<Signals>>, gone: ClientGone, uri: Uri) -> &'static str {
    let id = uri
        .query()
        .and_then(|q| q.strip_prefix("n="))
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(u64::MAX);
    let token = gone.token();
    let fired = signals.fired.clone();
    tokio::spawn(async move {
        token.cancelled().await;
        let _ = fired.send((id, Instant::now()));
    });
    let _ = signals.started.send(id);
    std::future::pending().await
}

struct Client {
    addr: SocketAddr,
    next_id: u64,
    started: mpsc::UnboundedReceiver<u64>,
    fired: mpsc::UnboundedReceiver<(u64, Instant)>,
}

impl Client {
    /// One request, broken off once its handler runs. `None`: the token did
    /// not fire within [`PATIENCE`].
    async fn sample(&mut self, close: Close) -> Result<Option<Duration>, String> {
        let id = self.next_id;
        self.next_id += 1;
        let mut stream = TcpStream::connect(self.addr)
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        stream
            .write_all(format!("GET /wait?n={id} HTTP/1.1\r\nHost: b\r\n\r\n").as_bytes())
            .await
            .map_err(|e| format!("cannot send the request: {e}"))?;
        // Ids tell a late signal of an earlier sample from this one's.
        loop {
            match tokio::time::timeout(PATIENCE, self.started.recv()).await {
                Ok(Some(n)) if n == id => break,
                Ok(Some(_)) => continue,
                _ => return Err(format!("the handler of request {id} did not start")),
            }
        }
        let closed_at = close.close(stream)?;
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            match tokio::time::timeout_at(deadline, self.fired.recv()).await {
                Ok(Some((n, at))) if n == id => {
                    return Ok(Some(at.saturating_duration_since(closed_at)));
                }
                Ok(Some(_)) => continue,
                _ => return Ok(None),
            }
        }
    }
}

/// `http_server_client_disconnects_total` summed by `cause`.
fn disconnects_by_cause(registry: &prometheus::Registry) -> Vec<(String, u64)> {
    let mut by_cause: Vec<(String, u64)> = Vec::new();
    for family in registry.gather() {
        if family.name() != "http_server_client_disconnects_total" {
            continue;
        }
        for metric in family.get_metric() {
            let cause = metric
                .get_label()
                .iter()
                .find(|l| l.name() == "cause")
                .map(|l| l.value().to_owned())
                .unwrap_or_default();
            let n = metric.get_counter().get_value() as u64;
            match by_cause.iter_mut().find(|(c, _)| *c == cause) {
                Some((_, total)) => *total += n,
                None => by_cause.push((cause, n)),
            }
        }
    }
    by_cause
}
