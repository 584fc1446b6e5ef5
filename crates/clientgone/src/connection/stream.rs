//! [`TrackedStream`]: a `TcpStream` that records what the socket said.
//!
//! It only *records* — the first EOF, the first meaningful error, bytes written —
//! and knows nothing of HTTP (the pattern of linkerd2-proxy's `SensorIo`). When it
//! is dropped the connection is over, and it reports the close exactly once.

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::h2_frames::{FrameEvent, FrameScanner};

/// `RST_STREAM`'s NO_ERROR (RFC 9113, section 7).
const NO_ERROR: u32 = 0;
use super::hooks::ClientLeftHook;
use super::send_queue::unacked_bytes;
use super::state::ConnectionState;
use crate::classify::{Cause, Direction};
use crate::layer::RequestHandle;
use crate::metrics::Metrics;

/// An accepted TCP connection whose reads and writes feed a [`ConnectionState`].
#[derive(Debug)]
pub struct TrackedStream {
    inner: TcpStream,
    connection: TrackedConnection,
    metrics: Option<Metrics>,
    /// Reads what the client sends, while it is the plaintext: under TLS the
    /// TLS stream above holds it (see `take_plaintext`).
    plaintext: Option<PlaintextReader>,
}

/// What the client's plaintext bytes tell the connection: the start of a
/// request head, and the HTTP/2 frames that reset a stream. Reads the bytes
/// of the socket itself, or those a TLS stream decrypted from them.
#[derive(Debug, Default)]
pub(crate) struct PlaintextReader {
    /// Reads what an HTTP/2 client sends for its stream resets.
    frames: FrameScanner,
}

impl PlaintextReader {
    /// The client sent `bytes` (at least one), in order.
    pub(crate) fn read(&mut self, state: &ConnectionState, bytes: &[u8]) {
        if self.frames.is_on() {
            self.frames.scan(bytes, |event| match event {
                FrameEvent::Preface => state.mark_http2(),
                // Stream 0 is the connection (a protocol error), and
                // NO_ERROR ends a stream whose answer the client already
                // has: neither is a cancel.
                FrameEvent::StreamReset { stream, code } => {
                    if stream != 0 && code != NO_ERROR {
                        state.on_stream_reset();
                    }
                }
            });
        }
        state.on_read();
    }
}

/// What a request gets to know about its connection: the peer's address and the
/// shared [`ConnectionState`]. Cheap to clone.
///
/// With `axum::serve`, pass it as connect info so the layer finds it:
/// `app.into_make_service_with_connect_info::<TrackedConnection>()`.
#[derive(Clone, Debug)]
pub struct TrackedConnection {
    remote_addr: SocketAddr,
    local_addr: Option<SocketAddr>,
    state: Arc<ConnectionState>,
    /// The request this copy travels with, set by `DisconnectLayer` on the
    /// copy in the request's extensions (for `ClientGone`). Carried here, not
    /// as an extension of its own: a fourth extension makes hyper's request
    /// allocate twice more (the value's box and a bigger map), on every request.
    pub(crate) request: Option<RequestHandle>,
}

impl TrackedConnection {
    /// The client's address.
    pub fn remote_addr(&self) -> SocketAddr {
        self.remote_addr
    }

    /// The server's address of this connection, if the socket told it.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// The client's IP address as text (`203.0.113.9`, `2001:db8::1`),
    /// formatted once per connection: spans (`client.address`) and the
    /// proxy's `X-Forwarded-For` want it on every request, and formatting an
    /// address costs more than the rest of a span's attributes together.
    ///
    /// ```
    /// use axum::extract::ConnectInfo;
    /// use clientgone::TrackedConnection;
    ///
    /// async fn whoami(ConnectInfo(connection): ConnectInfo<TrackedConnection>) -> String {
    ///     connection.remote_ip_text().to_string()
    /// }
    /// # let _ = whoami;
    /// ```
    pub fn remote_ip_text(&self) -> Arc<str> {
        self.state
            .remote_ip_text(|| self.remote_addr.ip().to_string())
    }

    /// The connection's shared state.
    pub fn state(&self) -> &Arc<ConnectionState> {
        &self.state
    }

    /// Runs `callback` once, the instant this connection first shows its
    /// client leaving (FIN, reset, write error) while a request is in flight,
    /// on the task that reads the socket. If the client has already left
    /// mid-request, it runs synchronously inside this call.
    ///
    /// For work that must stop sooner than the request's future is dropped,
    /// such as an upstream request to shut down (Go's `context.AfterFunc`).
    /// Requests count as in flight while [`DisconnectLayer`](crate::DisconnectLayer)
    /// tracks them: without the layer the callback never runs.
    /// The callback must be quick and must not block: it runs inside a socket
    /// read. Keep the returned hook while the request runs; dropping it
    /// unregisters the callback. For a cancellation *signal*, use
    /// [`ClientGone`](crate::ClientGone) instead.
    ///
    /// On HTTP/1 the socket is read on the request's own task, so the
    /// callback runs before hyper drops the request's future and never after
    /// the request's code has moved on. On HTTP/2 it runs on the connection's
    /// task, concurrently with the streams: it may run just as a request
    /// ends, and dropping the hook then does not wait for it. A stream reset
    /// (`RST_STREAM`) of one HTTP/2 request is not a connection event and
    /// does not run it; the request's future is dropped as usual.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::sync::atomic::{AtomicBool, Ordering};
    /// use axum::extract::ConnectInfo;
    /// use clientgone::TrackedConnection;
    ///
    /// async fn handler(ConnectInfo(connection): ConnectInfo<TrackedConnection>) -> &'static str {
    ///     let stop = Arc::new(AtomicBool::new(false));
    ///     let flag = stop.clone();
    ///     let _hook = connection.on_client_left(move || flag.store(true, Ordering::Release));
    ///     // … work that checks `stop` …
    ///     "done"
    /// } // `_hook` dropped: the request ended, the callback is unregistered.
    /// # let _ = handler;
    /// ```
    pub fn on_client_left(&self, callback: impl FnOnce() + Send + 'static) -> ClientLeftHook {
        ClientLeftHook::register(&self.state, Box::new(callback))
    }
}

impl TrackedStream {
    pub(crate) fn new(inner: TcpStream, remote_addr: SocketAddr, metrics: Option<Metrics>) -> Self {
        if let Some(m) = &metrics {
            m.connection_opened();
        }
        let local_addr = inner.local_addr().ok();
        TrackedStream {
            inner,
            plaintext: Some(PlaintextReader::default()),
            connection: TrackedConnection {
                remote_addr,
                local_addr,
                state: Arc::new(ConnectionState::new()),
                request: None,
            },
            metrics,
        }
    }

    /// The connection this stream belongs to.
    pub fn connection(&self) -> &TrackedConnection {
        &self.connection
    }

    /// The underlying socket.
    pub fn get_ref(&self) -> &TcpStream {
        &self.inner
    }

    fn record_error(&self, error: &io::Error, direction: Direction) {
        if let Some(cause) = Cause::from_io_error(error, direction) {
            let first = self.connection.state.on_error(cause);
            self.after_client_event(first);
        }
    }

    /// Hands the reading of the client's bytes to a TLS stream above this
    /// one: what this stream reads from now on is ciphertext, whose bytes
    /// are neither request heads nor frames. The TCP facts (FIN, reset,
    /// errors, the send queue) stay here.
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    pub(crate) fn take_plaintext(&mut self) -> PlaintextReader {
        self.plaintext.take().unwrap_or_default()
    }

    pub(crate) fn record_eof(&self) {
        let first = self.connection.state.on_eof();
        self.after_client_event(first);
    }

    /// On the first sign of the client leaving, note what it never acknowledged:
    /// read now, because a reset empties the queue soon after.
    fn after_client_event(&self, first: bool) {
        if first && let Some(bytes) = unacked_bytes(&self.inner) {
            self.connection.state.set_unacked_at_event(bytes);
        }
    }
}

impl Drop for TrackedStream {
    fn drop(&mut self) {
        let state = &self.connection.state;
        if let Some(m) = &self.metrics {
            m.connection_closed(state.close_reason(), state.opened().elapsed());
        }
        if state.client_left_mid_request() {
            close_after_cancellations(&self.inner);
        }
    }
}

/// A client that left mid-request has work to cancel: the handler's
/// `ClientGone` token, a proxied upstream request. Closing our side of its
/// socket — the FIN and the kernel's processing of it — is not urgent, and on
/// one worker it would run before the tasks that cancellation woke. A
/// duplicate of the descriptor keeps the socket open (dropping the stream then
/// only releases a descriptor) until those tasks have had their turn.
///
/// Only for breaks, which are rare: a normal close pays nothing.
fn close_after_cancellations(stream: &TcpStream) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let Ok(socket) = stream.as_fd().try_clone_to_owned() else {
        return;
    };
    runtime.spawn(async move {
        tokio::task::yield_now().await;
        drop(socket);
    });
}

impl AsyncRead for TrackedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let wanted = buf.remaining() > 0;
        let result = ready!(Pin::new(&mut this.inner).poll_read(cx, buf));
        match &result {
            Ok(()) if buf.filled().len() > before => {
                if let Some(plaintext) = &mut this.plaintext {
                    plaintext.read(&this.connection.state, &buf.filled()[before..]);
                }
            }
            // A zero-byte read into a buffer with room is the peer's FIN.
            Ok(()) if wanted => this.record_eof(),
            Ok(()) => {}
            Err(e) => this.record_error(e, Direction::Read),
        }
        Poll::Ready(result)
    }
}

impl AsyncWrite for TrackedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = ready!(Pin::new(&mut this.inner).poll_write(cx, buf));
        this.after_write(&result);
        Poll::Ready(result)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, bufs));
        this.after_write(&result);
        Poll::Ready(result)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = ready!(Pin::new(&mut this.inner).poll_flush(cx));
        if let Err(e) = &result {
            this.record_error(e, Direction::Write);
        }
        Poll::Ready(result)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = ready!(Pin::new(&mut this.inner).poll_shutdown(cx));
        if let Err(e) = &result {
            this.record_error(e, Direction::Write);
        }
        Poll::Ready(result)
    }
}

impl TrackedStream {
    fn after_write(&self, result: &io::Result<usize>) {
        match result {
            Ok(n) => self.connection.state.on_written(*n),
            Err(e) => self.record_error(e, Direction::Write),
        }
    }
}
