//! [`ResponseBody`]: the response body, carrying the request guard until the
//! last frame is handed to the connection.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Buf;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::guard::{RequestGuard, recording_panics};

pin_project! {
    /// A response body whose end completes the request, and whose early drop
    /// records a `response_body` break.
    #[derive(Debug)]
    pub struct ResponseBody<B> {
        #[pin]
        inner: B,
        guard: Option<RequestGuard>,
        // The length the response declared (`Content-Length`, or the body's
        // exact size): HTTP/1 hyper stops polling — and drops the body — once
        // that many bytes are out, without asking for the end.
        declared_len: Option<u64>,
    }
}

impl<B> ResponseBody<B> {
    pub(crate) fn new(inner: B, guard: Option<RequestGuard>, declared_len: Option<u64>) -> Self {
        ResponseBody {
            inner,
            guard,
            declared_len,
        }
    }
}

impl<B: Body> Body for ResponseBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        // The request's span stays current while its body is produced, so
        // spans made by a streaming body join the request's trace too.
        let entered = this
            .guard
            .as_ref()
            .and_then(RequestGuard::trace_context)
            .map(|trace| trace.clone().attach());
        let polled = recording_panics(this.guard.as_mut(), || this.inner.as_mut().poll_frame(cx));
        let frame = ready!(polled);
        drop(entered);
        if let Some(guard) = this.guard.as_mut() {
            match &frame {
                // Trailers are a body's last frame: hyper sends them with
                // END_STREAM and polls no more. A gRPC call's status is in them.
                Some(Ok(f)) if f.is_trailers() => {
                    if let Some(trailers) = f.trailers_ref() {
                        guard.grpc_status(trailers);
                    }
                    guard.complete();
                }
                Some(Ok(f)) => {
                    if let Some(data) = f.data_ref() {
                        guard.body_bytes(data.remaining());
                    }
                    // hyper may stop polling once the body says it is at its
                    // end, or once the declared length is out, so the last
                    // data frame is where completion happens.
                    let all_declared = this
                        .declared_len
                        .is_some_and(|len| guard.body_bytes_sent() >= len);
                    if all_declared || this.inner.is_end_stream() {
                        guard.complete();
                    }
                }
                // The server's own body failed: hyper aborts the connection,
                // but the client did nothing wrong.
                Some(Err(_)) | None => guard.complete(),
            }
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
