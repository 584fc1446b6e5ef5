//! `scrape`: what rendering `/metrics` costs as label children multiply.
//!
//! A child is one (route × method × status) combination, which is what
//! clientgone's per-route histograms and gauges fan out over. Requests go
//! through the router in-process with `tower::ServiceExt::oneshot` — no
//! sockets — so that exactly the wanted children exist; then we time what a
//! `/metrics` handler does, `registry.gather()` plus `TextEncoder::encode`.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, Uri};
use axum::routing::get;
use clientgone::{DisconnectLayer, Metrics};
use http_body_util::BodyExt;
use prometheus::{Encoder, TextEncoder};
use tower::ServiceExt;

use crate::servers::{CpuSnapshot, wait_for_quiet};
use crate::{fmt_duration, quantile};

/// The shapes measured: (routes, statuses per route). Methods are GET only:
/// a second method multiplies children exactly as a second status does.
/// 200 routes × 3 statuses is there because a real service's routes answer
/// more than one status, and the goal is stated for "200 routes".
const SHAPES: [(usize, usize); 4] = [(10, 1), (200, 1), (200, 3), (2000, 1)];
/// Statuses a route answers, by `?s=` index.
const STATUSES: [StatusCode; 3] = [
    StatusCode::OK,
    StatusCode::NOT_FOUND,
    StatusCode::INTERNAL_SERVER_ERROR,
];

/// Flags of `scrape` (also part of `all`).
#[derive(Debug, clap::Args)]
#[group(id = "scrape_args")]
pub struct Args {
    /// Timed renders per shape; the median is reported.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub runs: u32,
}

struct Row {
    routes: usize,
    statuses: usize,
    size: usize,
    p50: Duration,
    p99: Duration,
}

/// Runs the benchmark and returns its Markdown table.
pub fn run(args: &Args) -> Result<String, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot build the runtime: {e}"))?;
    wait_for_quiet(Duration::from_secs(120));
    let before = CpuSnapshot::take();
    let start = Instant::now();
    let mut rows = Vec::new();
    for (routes, statuses) in SHAPES {
        eprintln!("scrape: {routes} routes × {statuses} status(es)");
        rows.push(runtime.block_on(measure(routes, statuses, args.runs))?);
    }

    let foreign =
        CpuSnapshot::take().foreign_since(&before).as_secs_f64() / start.elapsed().as_secs_f64();

    let mut out = String::new();
    let _ = writeln!(
        out,
        "## /metrics render cost (`registry.gather()` + `TextEncoder::encode`, \
         median of {} runs)\n",
        args.runs
    );
    let _ = writeln!(
        out,
        "| children (routes × methods × statuses) | p50 | p99 | size |"
    );
    let _ = writeln!(out, "|---|--:|--:|--:|");
    for r in rows {
        let _ = writeln!(
            out,
            "| {} ({} × 1 × {}) | {} | {} | {} bytes ({:.0} KiB) |",
            r.routes * r.statuses,
            r.routes,
            r.statuses,
            fmt_duration(r.p50),
            fmt_duration(r.p99),
            r.size,
            r.size as f64 / 1024.0
        );
    }
    let _ = writeln!(
        out,
        "\nOne thread, in-process. Other programs used {:.0} % of a CPU during the run.",
        foreign * 100.0
    );
    Ok(out)
}

async fn measure(routes: usize, statuses: usize, runs: u32) -> Result<Row, String> {
    let registry = prometheus::Registry::new();
    let metrics = Metrics::new(&registry).map_err(|e| e.to_string())?;
    let mut router = Router::new();
    for i in 0..routes {
        router = router.route(&format!("/r{i}/items/{{id}}"), get(answer));
    }
    let router = router.layer(DisconnectLayer::new(metrics));

    for i in 0..routes {
        for s in 0..statuses {
            let request = Request::get(format!("/r{i}/items/7?s={s}"))
                .body(Body::empty())
                .map_err(|e| e.to_string())?;
            let response = router
                .clone()
                .oneshot(request)
                .await
                .unwrap_or_else(|e| match e {});
            // Reading the body to its end is what completes the request.
            response
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("body: {e}"))?;
        }
    }

    let encoder = TextEncoder::new();
    let mut buffer = Vec::new();
    let mut times = Vec::with_capacity(runs as usize);
    let mut size = 0;
    for _ in 0..runs {
        buffer.clear();
        let start = Instant::now();
        encoder
            .encode(&registry.gather(), &mut buffer)
            .map_err(|e| format!("encode: {e}"))?;
        times.push(start.elapsed());
        size = buffer.len();
    }
    let text = String::from_utf8_lossy(&buffer);
    let counted = text
        .lines()
        .filter(|l| l.starts_with("http_server_request_duration_seconds_count{"))
        .count();
    if counted != routes * statuses {
        return Err(format!(
            "expected {} duration children, /metrics has {counted}",
            routes * statuses
        ));
    }
    Ok(Row {
        routes,
        statuses,
        size,
        p50: quantile(&mut times, 0.5).unwrap_or_default(),
        p99: quantile(&mut times, 0.99).unwrap_or_default(),
    })
}

/// Answers the status picked by `?s=N`.
async fn answer(uri: Uri) -> (StatusCode, &'static str) {
    let index = uri
        .query()
        .and_then(|q| q.strip_prefix("s="))
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or(0);
    (STATUSES[index.min(STATUSES.len() - 1)], "ok")
}
