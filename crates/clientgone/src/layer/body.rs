//! [`ResponseBody`]: the response body, carrying the request guard until the
//! last frame is handed to the connection.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Buf;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::guard::RequestGuard;

pin_project! {
    /// A response body whose end completes the request, and whose early drop
    /// records a `response_body` break.
    #[derive(Debug)]
    pub struct ResponseBody<B> {
        #[pin]
        inner: B,
        guard: Option<RequestGuard>,
    }
}

impl<B> ResponseBody<B> {
    pub(crate) fn new(inner: B, guard: Option<RequestGuard>) -> Self {
        ResponseBody { inner, guard }
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
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        drop(entered);
        if let Some(guard) = this.guard.as_mut() {
            match &frame {
                Some(Ok(f)) => {
                    if let Some(data) = f.data_ref() {
                        guard.body_bytes(data.remaining());
                    }
                    // hyper may stop polling once the body says it is at its
                    // end, so the last data frame is where completion happens.
                    if this.inner.is_end_stream() {
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
