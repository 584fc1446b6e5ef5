//! The upstream side of each proxied request: `http_client_request_duration_seconds`
//! with `outcome` = `completed`, `cancelled` (the client broke off and the upstream
//! request was dropped) or `error` (the upstream refused, reset or timed out).

use std::pin::Pin;
use std::sync::{Arc, PoisonError, RwLock};
use std::task::{Context, Poll, ready};
use std::time::Instant;

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use prometheus::{Histogram, HistogramOpts, HistogramVec, Registry};

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
    /// Registers the histogram in `registry`, with the request-duration buckets.
    pub fn new(registry: &Registry, buckets: &[f64]) -> prometheus::Result<Self> {
        let duration = HistogramVec::new(
            HistogramOpts::new(
                clientgone::names::HTTP_CLIENT_REQUEST_DURATION.prometheus,
                "Duration of the proxy's requests to the upstream.",
            )
            .buckets(buckets.to_vec()),
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

    /// The children of one route template (`unmatched` included), made
    /// once when the router is built: a request finds them through its
    /// route's handler, with no lookup by label values.
    pub(crate) fn route(&self, template: &str) -> Arc<UpstreamRoute> {
        Arc::new(UpstreamRoute {
            duration: self.duration.clone(),
            route: template.into(),
            children: RwLock::new(Vec::new()),
        })
    }
}

/// `http_client_request_duration_seconds` of one route.
#[derive(Debug)]
pub(crate) struct UpstreamRoute {
    duration: HistogramVec,
    route: Box<str>,
    /// The (method, status, outcome) children seen so far: a handful per
    /// route, scanned under the read lock, where `with_label_values` would
    /// hash four strings and clone the child on every request.
    children: RwLock<Vec<Child>>,
}

#[derive(Debug)]
struct Child {
    method: &'static str,
    status: Option<http::StatusCode>,
    outcome: UpstreamOutcome,
    histogram: Histogram,
}

impl UpstreamRoute {
    /// Starts timing one upstream request; `skipped` (a route or method
    /// left out on purpose, `--skip-route`) records nothing.
    pub(crate) fn start(self: &Arc<Self>, method: &'static str, skipped: bool) -> UpstreamGuard {
        UpstreamGuard {
            route: Arc::clone(self),
            method,
            status: None,
            start: Instant::now(),
            ended: skipped,
        }
    }

    fn observe(
        &self,
        method: &'static str,
        status: Option<http::StatusCode>,
        outcome: UpstreamOutcome,
        seconds: f64,
    ) {
        let observe = |children: &Vec<Child>| {
            children
                .iter()
                .find(|c| c.method == method && c.status == status && c.outcome == outcome)
                .map(|c| c.histogram.observe(seconds))
                .is_some()
        };
        if observe(&self.children.read().unwrap_or_else(PoisonError::into_inner)) {
            return;
        }
        let mut children = self
            .children
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if observe(&children) {
            return;
        }
        // No answer, no status: an empty label value is an absent label.
        let status_label = status.as_ref().map_or("", http::StatusCode::as_str);
        let histogram =
            self.duration
                .with_label_values(&[method, &self.route, status_label, outcome.as_str()]);
        histogram.observe(seconds);
        children.push(Child {
            method,
            status,
            outcome,
            histogram,
        });
    }
}

/// Records one upstream request exactly once; dropped unfinished, it is `cancelled`.
#[derive(Debug)]
pub(crate) struct UpstreamGuard {
    route: Arc<UpstreamRoute>,
    method: &'static str,
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
        self.route.observe(
            self.method,
            self.status,
            outcome,
            self.start.elapsed().as_secs_f64(),
        );
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
            // Trailers are the last frame (a gRPC call's status is in them).
            Some(Ok(f)) if f.is_trailers() || this.inner.is_end_stream() => {
                this.guard.end(UpstreamOutcome::Completed)
            }
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
