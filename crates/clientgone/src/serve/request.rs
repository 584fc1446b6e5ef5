//! [`Served`]: what `clientgone::serve` keeps of every request on its
//! connection, whether a `DisconnectLayer` covers its route or not — that it is
//! in flight, from its head until hyper lets go of its response body, and
//! whether its response hands the connection over to another protocol.
//!
//! The head watcher and the close reasons read these marks. Kept only by the
//! layer, a request on a route the layer does not cover would look like a
//! connection waiting for its next head, and be cut off by the header-read
//! timeout mid-request.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::Response;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::classify::hands_over_connection;
use crate::connection::ConnectionState;

/// One request in flight on its connection, until dropped.
#[derive(Debug)]
pub(crate) struct InFlightMark {
    state: Arc<ConnectionState>,
    connect: bool,
}

impl InFlightMark {
    /// The request's head has arrived: it is in flight from now on.
    pub(crate) fn start<B>(state: &Arc<ConnectionState>, req: &http::Request<B>) -> Self {
        state.request_started(req.version() == http::Version::HTTP_2);
        InFlightMark {
            state: Arc::clone(state),
            connect: req.method() == http::Method::CONNECT,
        }
    }
}

impl Drop for InFlightMark {
    fn drop(&mut self) {
        self.state.request_ended();
    }
}

pin_project! {
    /// The router's future for one request, then (through [`ServedBody`]) its
    /// response body, carrying the request's in-flight mark.
    #[derive(Debug)]
    pub(crate) struct Served<F> {
        #[pin]
        inner: F,
        in_flight: Option<InFlightMark>,
    }
}

impl<F> Served<F> {
    pub(crate) fn new(inner: F, in_flight: InFlightMark) -> Self {
        Served {
            inner,
            in_flight: Some(in_flight),
        }
    }
}

impl<F, B, E> Future for Served<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<ServedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let in_flight = this.in_flight.take();
        Poll::Ready(result.map(|res| {
            if let Some(mark) = &in_flight
                && hands_over_connection(mark.connect, res.status().as_u16())
            {
                mark.state.mark_upgraded();
            }
            res.map(|inner| ServedBody {
                inner,
                _in_flight: in_flight,
            })
        }))
    }
}

pin_project! {
    /// A response body that ends its request's in-flight mark when hyper drops
    /// it: written whole, or abandoned.
    #[derive(Debug)]
    pub(crate) struct ServedBody<B> {
        #[pin]
        inner: B,
        _in_flight: Option<InFlightMark>,
    }
}

impl<B: Body> Body for ServedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
