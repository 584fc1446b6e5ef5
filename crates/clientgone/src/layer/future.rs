//! [`ResponseFuture`]: the inner service's future, carrying the request guard
//! until the response head exists.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::{Response, header};
use http_body::Body;
use pin_project_lite::pin_project;

use super::body::ResponseBody;
use super::guard::{RequestGuard, recording_panics};
use crate::classify::response_has_no_body;

pin_project! {
    /// Response future of [`DisconnectService`](super::DisconnectService).
    /// Dropping it before it resolves records a `handler` (or `request_body`) break.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        guard: Option<RequestGuard>,
        head_request: bool,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(inner: F, guard: RequestGuard, head_request: bool) -> Self {
        ResponseFuture {
            inner,
            guard: Some(guard),
            head_request,
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        // The request's span is current while its code runs (see `span.rs`).
        let entered = this
            .guard
            .as_ref()
            .and_then(RequestGuard::trace_context)
            .map(|trace| trace.clone().attach());
        let polled = recording_panics(this.guard.as_mut(), || this.inner.as_mut().poll(cx));
        let result = ready!(polled);
        drop(entered);
        let Some(mut guard) = this.guard.take() else {
            // Polled after completion; the inner future decides what that means.
            return Poll::Ready(result.map(|res| res.map(|b| ResponseBody::new(b, None, None))));
        };
        match result {
            Ok(res) if guard.client_left() => {
                // The client was gone before this answer existed (a handler
                // that returns when its `ClientGone` fires does so): it reaches
                // no one. On HTTP/2 the stream's task gets here before the
                // connection is torn down; the break is the handler's, as on
                // HTTP/1, not its body's.
                guard.end_client_left();
                Poll::Ready(Ok(res.map(|b| ResponseBody::new(b, None, None))))
            }
            Ok(res) => {
                let status = res.status();
                guard.head_sent(status.as_u16());
                // Only HTTP/1 hyper stops at the declared length; HTTP/2 polls
                // the last frame before flow control lets it out, and ends
                // the body itself.
                let declared_len = (!guard.is_http2()).then(|| declared_len(&res)).flatten();
                // hyper never polls a body that HEAD, 1xx, 204 and 304 cannot
                // have, nor one declared empty.
                let bodiless = response_has_no_body(*this.head_request, status.as_u16())
                    || declared_len == Some(0)
                    || res.body().is_end_stream();
                if bodiless {
                    if guard.is_grpc() {
                        // A trailers-only answer (an error, most often)
                        // carries its status in the head; an answer with a
                        // body carries it in its trailers.
                        guard.grpc_status(res.headers());
                    }
                    guard.complete();
                    return Poll::Ready(Ok(res.map(|b| ResponseBody::new(b, None, None))));
                }
                Poll::Ready(Ok(
                    res.map(|b| ResponseBody::new(b, Some(guard), declared_len))
                ))
            }
            Err(e) => {
                // The service failed; hyper will answer 500 or close. Not the client.
                guard.head_sent(500);
                guard.complete();
                Poll::Ready(Err(e))
            }
        }
    }
}

/// The body length hyper will write: the body's exact size, else the
/// response's `Content-Length` (a streamed body the handler gave one to).
/// The exact size first: it is free, where a header lookup is not.
fn declared_len<B: Body>(res: &Response<B>) -> Option<u64> {
    if let Some(len) = res.body().size_hint().exact() {
        return Some(len);
    }
    let value = res.headers().get(header::CONTENT_LENGTH)?;
    value.to_str().ok()?.trim().parse().ok()
}
