//! [`TrackedTlsStream`]: the plaintext side of a tracked TLS connection.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::server::TlsStream;

use crate::connection::{PlaintextReader, TrackedConnection, TrackedStream};

/// A TLS connection over a [`TrackedStream`], made by
/// [`TlsAcceptor::accept`](super::TlsAcceptor::accept). Reads and writes
/// plaintext; what the client's plaintext shows (request heads, HTTP/2
/// stream resets, its `close_notify`) goes to the same connection state as
/// the TCP facts beneath.
///
/// ```no_run
/// # async fn run(listener: clientgone::TrackedListener, tls: clientgone::TlsAcceptor) -> std::io::Result<()> {
/// let (tcp, _) = listener.accept_tracked().await?;
/// let stream = tls.accept(tcp).await?;
/// let http2 = stream.alpn_protocol() == Some(b"h2");
/// println!("{} speaks HTTP/{}", stream.connection().remote_addr(), if http2 { 2 } else { 1 });
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct TrackedTlsStream {
    inner: TlsStream<TrackedStream>,
    plaintext: PlaintextReader,
}

impl TrackedTlsStream {
    pub(crate) fn new(inner: TlsStream<TrackedStream>, plaintext: PlaintextReader) -> Self {
        TrackedTlsStream { inner, plaintext }
    }

    /// The connection this stream belongs to (for `ConnectInfo`).
    pub fn connection(&self) -> &TrackedConnection {
        self.inner.get_ref().0.connection()
    }

    /// The application protocol the handshake agreed on (ALPN), if any.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.inner.get_ref().1.alpn_protocol()
    }

    /// The TLS stream, with the tracked TCP stream and rustls's connection.
    pub fn get_ref(&self) -> &TlsStream<TrackedStream> {
        &self.inner
    }
}

impl AsyncRead for TrackedTlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let wanted = buf.remaining() > 0;
        let result = ready!(Pin::new(&mut this.inner).poll_read(cx, buf));
        let tcp = this.inner.get_ref().0;
        match &result {
            Ok(()) if buf.filled().len() > before => {
                this.plaintext
                    .read(tcp.connection().state(), &buf.filled()[before..]);
            }
            // The client's `close_notify`: it closed its side, as a FIN
            // does in plaintext (which may not have arrived yet).
            Ok(()) if wanted => tcp.record_eof(),
            // Errors are the TCP stream's to record (a reset, a timeout) or
            // TLS's own (a record that does not decrypt), which says nothing
            // of the client leaving.
            _ => {}
        }
        Poll::Ready(result)
    }
}

impl AsyncWrite for TrackedTlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
