//! The upstream side of each proxied request: `http_client_request_duration_seconds`
//! with `outcome` = `completed`, `cancelled` (the client broke off and the upstream
//! request was dropped) or `error` (the upstream refused, reset or timed out).

use axum::extract::MatchedPath;
use clientgone::UNMATCHED_ROUTE;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use prometheus::{HistogramOpts, HistogramVec, Registry};

/// How an upstream request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamOutcome {
    /// The upstream's response body reached its end.
    Completed,
    /// The client left; the proxy dropped the upstream request.
    Cancelled,
    /// The upstream failed (refused, reset, timed out); the client got 502/504.
    Error,
}

impl UpstreamOutcome {
    fn as_str(self) -> &'static str {
        match self {
            UpstreamOutcome::Completed => "completed",
            UpstreamOutcome::Cancelled => "cancelled",
            UpstreamOutcome::Error => "error",
        }
    }
}

/// `http_client_request_duration_seconds`, registered once.
#[derive(Clone, Debug)]
pub struct UpstreamMetrics {
    duration: HistogramVec,
}

impl UpstreamMetrics {
    /// Registers the histogram in `registry`.
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "http_client_request_duration_seconds",
                "Duration of the proxy's requests to the upstream.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                60.0, 120.0, 300.0,
            ]),
            &[
                "http_request_method",
                "http_route",
                "http_response_status_code",
                "outcome",
            ],
        )?;
        registry.register(Box::new(duration.clone()))?;
        Ok(UpstreamMetrics { duration })
    }

    /// Starts timing one upstream request.
    /// `route` is the matched template (`None`: `unmatched`); kept as axum's
    /// shared string, so starting a guard allocates nothing.
    pub(crate) fn start(&self, method: &'static str, route: Option<MatchedPath>) -> UpstreamGuard {
        UpstreamGuard {
            metrics: self.clone(),
            method,
            route,
            status: None,
            start: Instant::now(),
            ended: false,
        }
    }
}

/// Records one upstream request exactly once; dropped unfinished, it is `cancelled`.
#[derive(Debug)]
pub(crate) struct UpstreamGuard {
    metrics: UpstreamMetrics,
    method: &'static str,
    route: Option<MatchedPath>,
    status: Option<http::StatusCode>,
    start: Instant,
    ended: bool,
}

impl UpstreamGuard {
    pub(crate) fn head(&mut self, status: http::StatusCode) {
        self.status = Some(status);
    }

    pub(crate) fn end(&mut self, outcome: UpstreamOutcome) {
        if self.ended {
            return;
        }
        self.ended = true;
        // No answer, no status: an empty label value is an absent label.
        let status = self.status.as_ref().map_or("", http::StatusCode::as_str);
        let route = self
            .route
            .as_ref()
            .map_or(UNMATCHED_ROUTE, MatchedPath::as_str);
        self.metrics
            .duration
            .with_label_values(&[self.method, route, status, outcome.as_str()])
            .observe(self.start.elapsed().as_secs_f64());
    }
}

impl Drop for UpstreamGuard {
    fn drop(&mut self) {
        self.end(UpstreamOutcome::Cancelled);
    }
}

pin_project! {
    /// The upstream's response body on its way to the client; its end completes
    /// the upstream request, its early drop cancels it.
    pub(crate) struct UpstreamBody<B> {
        #[pin]
        inner: B,
        guard: UpstreamGuard,
    }
}

impl<B> UpstreamBody<B> {
    pub(crate) fn new(inner: B, guard: UpstreamGuard) -> Self {
        UpstreamBody { inner, guard }
    }
}

impl<B: Body> Body for UpstreamBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        match &frame {
            None => this.guard.end(UpstreamOutcome::Completed),
            Some(Err(_)) => this.guard.end(UpstreamOutcome::Error),
            Some(Ok(_)) if this.inner.is_end_stream() => this.guard.end(UpstreamOutcome::Completed),
            Some(Ok(_)) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
