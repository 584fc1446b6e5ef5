//! [`RequestBody`]: the request body as the handler sees it, reporting how far
//! it was read — so a break can be placed in the `request_body` phase, and a body
//! that ended early is caught even when the handler answers afterwards.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::guard::RequestShared;
use crate::classify::BodyProgress;

pin_project! {
    /// A request body that tells the request guard how far it was read.
    #[derive(Debug)]
    pub struct RequestBody<B> {
        #[pin]
        inner: B,
        shared: Arc<RequestShared>,
    }
}

impl<B> RequestBody<B> {
    pub(crate) fn new(inner: B, shared: Arc<RequestShared>) -> Self {
        RequestBody { inner, shared }
    }
}

impl<B: Body> Body for RequestBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        this.shared.body_polled();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        match &frame {
            None => this.shared.body_ended(BodyProgress::Done),
            Some(Err(_)) => this.shared.body_ended(BodyProgress::Failed),
            Some(Ok(_)) if this.inner.is_end_stream() => this.shared.body_ended(BodyProgress::Done),
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
