//! [`RequestGuard`]: the one place where "a request ends exactly once" is enforced.
//!
//! The guard is created when a request enters the layer, travels from the
//! response future into the response body, and ends either by
//! [`complete`](RequestGuard::complete) (the body reached its end) or by being
//! dropped early (the future or the body was dropped: the client is gone). It
//! decides `Phase` from the request's progress and `Cause` from the connection
//! state at that moment, builds the [`Record`] and hands it to the sinks.

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use opentelemetry::Context;
use tokio_util::sync::CancellationToken;

use crate::classify::{
    BodyProgress, Cause, Phase, break_cause, break_phase, hands_over_connection, recorded_status,
};
use crate::connection::{ClientLeftHook, ConnectionState, TrackedConnection};
use crate::grpc::{GrpcStatus, call_status, deadline_reached};
use crate::metrics::{RouteMetrics, RpcMethodMetrics};
use crate::record::{CallRecord, End, Record};

use super::span::RequestSpan;

/// State of one request shared by the guard, the request body wrapper and the
/// [`ClientGone`](crate::ClientGone) extractor.
#[derive(Debug)]
pub(crate) struct RequestShared {
    body: AtomicU8,
    token: OnceLock<CancellationToken>,
    /// Cancels `token` from the socket read that shows the client leaving
    /// (see `connection/hooks.rs`); registered with the token, released when
    /// the request ends.
    early_cancel: Mutex<Option<ClientLeftHook>>,
    connection: Option<TrackedConnection>,
    /// When reading the request body failed: a `request_body` break is
    /// noticed then, however much later the handler answers.
    body_failed_at: OnceLock<Instant>,
}

impl RequestShared {
    pub(crate) fn new(connection: Option<TrackedConnection>, body_empty: bool) -> Self {
        let body = if body_empty {
            BodyProgress::Done
        } else {
            BodyProgress::Untouched
        };
        RequestShared {
            body: AtomicU8::new(body as u8),
            token: OnceLock::new(),
            early_cancel: Mutex::new(None),
            connection,
            body_failed_at: OnceLock::new(),
        }
    }

    /// The connection's state, if no server sees this request but the layer:
    /// then the layer keeps the connection's request bookkeeping (see
    /// `ConnectionState::is_tracked_by_server`).
    fn untracked_connection(&self) -> Option<&ConnectionState> {
        self.connection
            .as_ref()
            .map(|c| &**c.state())
            .filter(|state| !state.is_tracked_by_server())
    }

    /// The request's connection, where the server gave its `ConnectInfo`.
    pub(crate) fn connection(&self) -> Option<&TrackedConnection> {
        self.connection.as_ref()
    }

    pub(crate) fn body_progress(&self) -> BodyProgress {
        BodyProgress::from_u8(self.body.load(Ordering::Acquire))
    }

    /// Marks the body as being read, unless it already ended.
    pub(crate) fn body_polled(&self) {
        let _ = self.body.compare_exchange(
            BodyProgress::Untouched as u8,
            BodyProgress::Reading as u8,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    pub(crate) fn body_ended(&self, progress: BodyProgress) {
        if progress == BodyProgress::Failed {
            let _ = self.body_failed_at.set(Instant::now());
        }
        // Failed is final: a body that failed never "ends" afterwards.
        let _ = self
            .body
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
                (cur != BodyProgress::Failed as u8).then_some(progress as u8)
            });
    }

    /// The token handed to handlers; created only if a handler asks for it.
    /// It is cancelled as soon as the connection shows the client leaving
    /// (before hyper drops the request), and in any case when the request
    /// ends as a break.
    pub(crate) fn token(&self) -> CancellationToken {
        self.token
            .get_or_init(|| {
                let token = CancellationToken::new();
                if let Some(connection) = &self.connection {
                    let hook = connection.on_client_left({
                        let token = token.clone();
                        move || token.cancel()
                    });
                    *self
                        .early_cancel
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner) = Some(hook);
                }
                token
            })
            .clone()
    }

    /// The request is over: a later client event is no longer its business.
    fn release_early_cancel(&self) {
        if self.token.get().is_some() {
            self.early_cancel
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
        }
    }

    fn cancel(&self) {
        if let Some(token) = self.token.get() {
            token.cancel();
        }
    }
}

/// Ends one request exactly once; see the module docs.
#[derive(Debug)]
pub(crate) struct RequestGuard {
    target: Target,
    start: Instant,
    http2: bool,
    shared: Arc<RequestShared>,
    status: Option<u16>,
    body_bytes_sent: u64,
    ended: bool,
    /// Boxed: the guard moves from the future into the body, and an untraced
    /// request should not copy a span's worth of nothing along.
    span: Option<Box<RequestSpan>>,
}

/// Where a request's end is recorded.
#[derive(Debug)]
pub(crate) enum Target {
    /// An HTTP request, in the `http_server_*` metrics.
    Http {
        route: Arc<RouteMetrics>,
        method: usize,
        method_label: &'static str,
    },
    /// A request left out on purpose (`DisconnectLayer::skip`): in no metric.
    Skipped,
    /// A gRPC call, in the `rpc_server_*` metrics. Inline, not boxed: an
    /// allocation per call costs more than the bytes the guard's two moves copy.
    Grpc(GrpcCall),
}

/// What a gRPC call's end needs beside an HTTP request's.
#[derive(Debug)]
pub(crate) struct GrpcCall {
    pub(crate) method: Arc<RpcMethodMetrics>,
    /// The client's deadline (`grpc-timeout`), from the call's arrival.
    pub(crate) timeout: Option<Duration>,
    /// The `grpc-status` sent, in the head (trailers-only) or the trailers.
    pub(crate) status: Option<GrpcStatus>,
}

impl RequestGuard {
    pub(crate) fn new(
        target: Target,
        start: Instant,
        http2: bool,
        shared: Arc<RequestShared>,
        span: Option<Box<RequestSpan>>,
    ) -> Self {
        match &target {
            Target::Http { route, method, .. } => route.request_started(*method),
            Target::Grpc(call) => call.method.call_started(),
            Target::Skipped => {}
        }
        if let Some(state) = shared.untracked_connection() {
            state.request_started(http2);
        }
        RequestGuard {
            target,
            start,
            http2,
            shared,
            status: None,
            body_bytes_sent: 0,
            ended: false,
            span,
        }
    }

    /// The OpenTelemetry context of the request's span, if it is traced.
    pub(crate) fn trace_context(&self) -> Option<&Context> {
        self.span.as_deref().map(RequestSpan::context)
    }

    /// The request's own code (handler, inner layers, response body)
    /// panicked: the server failed, recorded with status 500 if no head was
    /// sent — unless the request body had failed because the client left
    /// (a handler unwrapping that error), which stays the client's break.
    pub(crate) fn panicked(&mut self) {
        self.status.get_or_insert(500);
        self.complete();
    }

    /// The connection showed the client leaving while this request was in
    /// flight (its FIN or reset was read).
    pub(crate) fn client_left(&self) -> bool {
        self.shared
            .connection
            .as_ref()
            .is_some_and(|c| c.state().client_left_mid_request())
    }

    /// Ends the request as a break now, in the phase it had reached: the
    /// client left before its answer.
    pub(crate) fn end_client_left(&mut self) {
        let phase = break_phase(self.shared.body_progress(), self.status.is_some());
        match self.cause() {
            Some(cause) => self.end_broken(phase, cause),
            // A gRPC call dropped with nothing on the wire to explain it:
            // the server gave it up (tonic's own timeout answered CANCELLED
            // in its place), never the client.
            None => {
                if let Target::Grpc(call) = &mut self.target {
                    call.status.get_or_insert(GrpcStatus::CANCELLED);
                }
                self.end(End::Completed)
            }
        }
    }

    /// Whether this request is a gRPC call.
    pub(crate) fn is_grpc(&self) -> bool {
        matches!(self.target, Target::Grpc(_))
    }

    /// The call's `grpc-status`, from a trailers-only head or the trailers.
    pub(crate) fn grpc_status(&mut self, headers: &http::HeaderMap) {
        if let Target::Grpc(call) = &mut self.target
            && let Some(status) = GrpcStatus::from_headers(headers)
        {
            call.status = Some(status);
        }
    }

    /// The request is served over HTTP/2.
    pub(crate) fn is_http2(&self) -> bool {
        self.http2
    }

    /// The response head was produced with this status.
    pub(crate) fn head_sent(&mut self, status: u16) {
        self.status = Some(status);
        let connect = matches!(
            self.target,
            Target::Http {
                method_label: "CONNECT",
                ..
            }
        );
        if let Some(state) = self.shared.untracked_connection()
            && hands_over_connection(connect, status)
        {
            state.mark_upgraded();
        }
    }

    pub(crate) fn body_bytes(&mut self, n: usize) {
        self.body_bytes_sent += n as u64;
    }

    /// The response body bytes handed to the connection so far.
    pub(crate) fn body_bytes_sent(&self) -> u64 {
        self.body_bytes_sent
    }

    /// The response is done (its body reached its end, or it has none).
    ///
    /// A request whose body failed is still a break: the handler answered, but
    /// the client was gone before it could read the answer.
    pub(crate) fn complete(&mut self) {
        if self.ended {
            return;
        }
        if let Target::Grpc(call) = &self.target
            && call.status == Some(GrpcStatus::DEADLINE_EXCEEDED)
            && call
                .timeout
                .is_some_and(|timeout| deadline_reached(self.start.elapsed(), timeout))
        {
            // The server (a proxy, a handler that honours deadlines) ended the
            // call at the client's deadline: the client's patience ran out, as
            // when its own reset comes first. The phase is where the client
            // was left: no message of the answer sent yet is `handler`.
            let phase = break_phase(self.shared.body_progress(), self.body_bytes_sent > 0);
            return self.end_broken(phase, Cause::DeadlineExceeded);
        }
        if self.shared.body_progress() == BodyProgress::Failed {
            // A body error with no sign of the client leaving (on HTTP/1; on
            // a gRPC call, no reset either) is a malformed body — bad input,
            // answered by the handler, not a break.
            if let Some(cause) = self.cause()
                && cause != Cause::Unknown
            {
                return self.end_broken(Phase::RequestBody, cause);
            }
        }
        self.end(End::Completed);
    }

    /// How the client broke off, from what the connection saw — or, for a
    /// gRPC call, `None` when nothing did: the server dropped it itself.
    fn cause(&self) -> Option<Cause> {
        let state = self.shared.connection.as_ref().map(|c| c.state());
        let signal = state.map(|state| state.peer_signal());
        let quiet = signal.is_some_and(|s| s.error.is_none() && !s.eof);
        // A stream dropped on a live HTTP/2 connection takes the client's
        // reset that explains it, if one came.
        let reset_seen = quiet && self.http2 && state.is_some_and(|s| s.claim_stream_reset());
        let Target::Grpc(call) = &self.target else {
            return Some(break_cause(signal, self.http2));
        };
        let reached_deadline = call
            .timeout
            .is_some_and(|timeout| deadline_reached(self.start.elapsed(), timeout));
        if reached_deadline {
            // The client's patience ran out: its reset at the deadline, or
            // tonic's enforcement of it, whichever came first.
            return Some(Cause::DeadlineExceeded);
        }
        if quiet && self.http2 && !reset_seen {
            return None;
        }
        Some(break_cause(signal, self.http2))
    }

    fn end_broken(&mut self, phase: Phase, cause: Cause) {
        self.shared.cancel();
        self.end(End::Disconnect { phase, cause });
    }

    fn end(&mut self, end: End) {
        if self.ended {
            return;
        }
        self.ended = true;
        self.shared.release_early_cancel();
        let phase = match end {
            End::Completed => None,
            End::Disconnect { phase, .. } => Some(phase),
        };
        let elapsed = match (phase, self.shared.body_failed_at.get()) {
            (Some(Phase::RequestBody), Some(&failed)) => failed - self.start,
            _ => self.start.elapsed(),
        };
        let unacked = match end {
            // The connection is alive after a stream reset: nothing died with it.
            End::Disconnect { cause, .. } if cause != Cause::StreamReset => self
                .shared
                .connection
                .as_ref()
                .and_then(|c| c.state().unacked_at_break()),
            _ => None,
        };
        match &self.target {
            Target::Http {
                route,
                method,
                method_label,
            } => {
                let record = Record {
                    method: method_label,
                    route: route.route(),
                    status: recorded_status(phase, self.status),
                    end,
                    elapsed,
                    body_bytes_sent: self.body_bytes_sent,
                };
                route.record(*method, &record);
                if let Some(span) = self.span.take() {
                    span.finish(
                        route.route_shared(),
                        route.span_name(*method),
                        &record,
                        unacked,
                    );
                }
            }
            Target::Skipped => {}
            Target::Grpc(call) => {
                let record = CallRecord {
                    method: call.method.method(),
                    rpc_type: call.method.rpc_type(),
                    status: call_status(end, call.status, self.status),
                    end,
                    elapsed,
                    body_bytes_sent: self.body_bytes_sent,
                };
                call.method.record(&record);
                if let Some(span) = self.span.take() {
                    span.finish_call(&record, unacked);
                }
            }
        }
        if let Some(state) = self.shared.untracked_connection() {
            state.request_ended();
        }
    }
}

/// Runs the request's own code (the inner service's `call`, its future's
/// `poll`, the response body's `poll_frame`). A panic in it is recorded on the
/// guard as the server's failure before it goes on — to tokio, which drops the
/// request while unwinding, or to a `CatchPanicLayer` outside, which drops it
/// after answering 500; either way the guard's drop would have called it a
/// client disconnect.
pub(crate) fn recording_panics<T>(guard: Option<&mut RequestGuard>, run: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(run)) {
        Ok(value) => value,
        Err(panic) => {
            if let Some(guard) = guard {
                guard.panicked();
            }
            resume_unwind(panic)
        }
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        let server_closing = self
            .shared
            .connection
            .as_ref()
            .is_some_and(|c| c.state().is_server_closing());
        if server_closing {
            // The server gave up on this request (shutdown past its grace
            // period): never a client disconnect.
            self.status.get_or_insert(503);
            return self.end(End::Completed);
        }
        self.end_client_left();
    }
}
