//! The upstream connector: hyper-util's `HttpConnector`, plus a handle on each
//! upstream socket so that a request whose client is gone can shut its
//! connection down at once, from the task that saw the client leave.
//!
//! Without it, the upstream hears of the cancel only after hyper's upstream
//! connection task has been woken, scheduled and has noticed the dropped
//! request — a task switch and a teardown later. `shutdown(2)` sends the FIN
//! right away; hyper's task then finds the socket closed and drops the
//! connection, which it would have done anyway (an HTTP/1.1 connection whose
//! request was abandoned mid-way is never reused).

use std::future::Future;
use std::io;
use std::net::{Shutdown, TcpStream as StdTcpStream};
use std::os::fd::AsFd;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{
    CaptureConnection, Connected, Connection, HttpConnector,
};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Connects like `HttpConnector` and keeps a [`SocketHandle`] for each connection.
#[derive(Clone, Debug)]
pub(crate) struct UpstreamConnector {
    inner: HttpConnector,
}

impl UpstreamConnector {
    pub(crate) fn new(inner: HttpConnector) -> Self {
        UpstreamConnector { inner }
    }
}

impl tower::Service<Uri> for UpstreamConnector {
    type Response = UpstreamStream;
    type Error = <HttpConnector as tower::Service<Uri>>::Error;
    type Future = Pin<Box<dyn Future<Output = Result<UpstreamStream, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let connecting = self.inner.call(dst);
        Box::pin(async move {
            let io = connecting.await?;
            // A second descriptor of the same socket: `shutdown` acts on the
            // socket, so the handle can end the connection while hyper owns
            // the stream. Without it (out of descriptors), cancels still work,
            // through hyper's own teardown.
            let duplicate = io
                .inner()
                .as_fd()
                .try_clone_to_owned()
                .ok()
                .map(StdTcpStream::from);
            Ok(UpstreamStream {
                io,
                handle: SocketHandle(Arc::new(Mutex::new(duplicate))),
            })
        })
    }
}

/// Shuts one upstream connection down from outside hyper. Travels with the
/// connection's [`Connected`] metadata, so a request finds it through
/// [`CaptureConnection`].
#[derive(Clone, Debug)]
pub(crate) struct SocketHandle(Arc<Mutex<Option<StdTcpStream>>>);

impl SocketHandle {
    /// Sends the upstream a FIN now, unless the connection is already closed.
    fn shutdown(&self) {
        // The duplicate leaves the mutex only when the stream is dropped, so
        // under the lock the descriptor is ours and still open.
        // Taken out: a second cancel of the same connection costs nothing.
        if let Ok(mut socket) = self.0.lock()
            && let Some(socket) = socket.take()
        {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }

    /// Shuts down the connection that `capture` says the request went out on.
    pub(crate) fn shutdown_captured(capture: &CaptureConnection) {
        let mut extensions = http::Extensions::new();
        if let Some(connected) = capture.connection_metadata().as_ref() {
            // Never to be reused, whatever hyper learns first.
            connected.poison();
            connected.get_extras(&mut extensions);
        }
        if let Some(handle) = extensions.get::<SocketHandle>() {
            handle.shutdown();
        }
    }
}

/// One upstream connection: hyper-util's stream and the handle on its socket.
#[derive(Debug)]
pub(crate) struct UpstreamStream {
    io: TokioIo<TcpStream>,
    handle: SocketHandle,
}

impl Drop for UpstreamStream {
    fn drop(&mut self) {
        // The duplicate goes with the stream: the socket closes when hyper
        // lets go of it, as it would without the handle.
        if let Ok(mut socket) = self.handle.0.lock() {
            socket.take();
        }
    }
}

impl Connection for UpstreamStream {
    fn connected(&self) -> Connected {
        self.io.connected().extra(self.handle.clone())
    }
}

impl Read for UpstreamStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl Write for UpstreamStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
