//! Ending an upstream request's connection the moment its client is gone:
//! hyper-util's `HttpConnector` plus a handle on each upstream socket, and
//! [`InFlight`], the request until its response head arrives.
//!
//! Without them, the upstream hears of the cancel only after hyper's upstream
//! connection task has been woken, scheduled and has noticed the dropped
//! request — a task switch and a teardown later. `shutdown(2)` sends the FIN
//! right away; the connection is poisoned first, so hyper-util's pool never
//! hands it out again, and hyper's task then finds it closed and drops it.

use std::future::Future;
use std::io;
use std::net::{Shutdown, TcpStream as StdTcpStream};
use std::os::fd::AsFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use clientgone::{ClientLeftHook, TrackedConnection};
use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{
    CaptureConnection, Connected, Connection, HttpConnector,
};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::ServerName;

use crate::server::StartError;

/// Connects like `HttpConnector` and keeps a [`SocketHandle`] for each
/// connection; speaks TLS on it for an `https://` upstream.
#[derive(Clone, Debug)]
pub(crate) struct UpstreamConnector {
    inner: HttpConnector,
    tls: Option<UpstreamTls>,
}

impl UpstreamConnector {
    pub(crate) fn new(inner: HttpConnector, tls: Option<UpstreamTls>) -> Self {
        UpstreamConnector { inner, tls }
    }
}

/// TLS to an `https://` upstream: the system's roots plus `--upstream-ca`,
/// the server name (SNI, and the name the certificate must carry) from the
/// upstream's host, ALPN `h2` and `http/1.1`.
#[derive(Clone)]
pub struct UpstreamTls {
    connector: tokio_rustls::TlsConnector,
    name: ServerName<'static>,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl UpstreamTls {
    /// The TLS client for `upstream`, trusting `ca` besides the system.
    pub fn new(
        upstream: &super::Upstream,
        ca: Option<&std::path::Path>,
    ) -> Result<Self, StartError> {
        let mut config = clientgone::tls::client_config(ca, None)
            .map_err(|e| StartError(format!("--upstream-ca {e}")))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let host = upstream.authority.host();
        // An IPv6 literal comes bracketed in a URL, bare in a server name.
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(host.to_owned()).map_err(|e| {
            StartError(format!(
                "--upstream: '{host}' cannot be a TLS server name: {e}"
            ))
        })?;
        Ok(UpstreamTls {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            name,
        })
    }
}

impl tower::Service<Uri> for UpstreamConnector {
    type Response = UpstreamStream;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = Pin<Box<dyn Future<Output = Result<UpstreamStream, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let connecting = self.inner.call(dst);
        let tls = self.tls.clone();
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
            let handle = SocketHandle(Arc::new(Mutex::new(duplicate)));
            let io = match tls {
                None => Io::Plain(io),
                Some(tls) => {
                    let tcp = io.into_inner();
                    // A certificate that does not verify is an upstream
                    // error like a refused connection: 502, `outcome="error"`.
                    let stream = tls.connector.connect(tls.name.clone(), tcp).await?;
                    Io::Tls(Box::new(TokioIo::new(stream)))
                }
            };
            Ok(UpstreamStream { io, handle })
        })
    }
}

/// Shuts one upstream connection down from outside hyper. Travels with the
/// connection's [`Connected`] metadata, so a request finds it through
/// [`CaptureConnection`].
#[derive(Clone, Debug)]
pub(crate) struct SocketHandle(Arc<Mutex<Option<StdTcpStream>>>);

impl SocketHandle {
    /// Takes the duplicate out: it is still there until the stream is dropped
    /// (or a cancel took it), so what comes out is open and ours.
    fn take(&self) -> Option<StdTcpStream> {
        self.0.lock().ok()?.take()
    }

    /// Sends the upstream a FIN now, unless the connection is already closed.
    /// A second cancel of the same connection finds nothing to take.
    fn shutdown(&self) {
        if let Some(socket) = self.take() {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }

    /// Shuts down the connection that `capture` says the request went out on.
    fn shutdown_captured(capture: &CaptureConnection) {
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

pin_project_lite::pin_project! {
    /// An upstream request until its response head arrives. Ended before that
    /// — its client is gone, or it timed out — it shuts its HTTP/1.1
    /// connection down, *before* hyper-util's request future (dropped after
    /// this `drop`) can release the connection to the pool.
    ///
    /// Until the head, the request owns its connection: the pool cannot hand
    /// it to another request while the request future holds it. After the
    /// head the connection may go back to the pool at any moment, so nothing
    /// here touches it any more; a response body dropped mid-way is hyper's
    /// to deal with (it closes or drains the connection).
    pub(crate) struct InFlight<F> {
        #[pin]
        inner: F,
        connection: Option<CaptureConnection>,
        hook: Option<ClientLeftHook>,
    }

    impl<F> PinnedDrop for InFlight<F> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(connection) = &this.connection {
                SocketHandle::shutdown_captured(connection);
            }
        }
    }
}

/// What an upstream request knows of its client's side.
#[derive(Debug)]
pub(crate) struct ClientSide {
    /// The client's body failed, or its socket showed it left: an upstream
    /// error after that is the client's doing, not the upstream's.
    pub(crate) gone: AtomicBool,
    /// The client's request body has gone upstream to its end.
    pub(crate) body_sent: AtomicBool,
    /// A piece of the request body went upstream: the upstream is taking it,
    /// and its deadline starts again (see `forward::upstream_deadline`).
    pub(crate) body_progress: Notify,
    /// The upstream asked for more body and the client has not sent it yet:
    /// a deadline that runs out now is the client's stall, not the upstream's.
    pub(crate) waiting_for_client: AtomicBool,
}

impl ClientSide {
    /// `body_sent`: the request has no body left to send (an empty one).
    pub(crate) fn new(body_sent: bool) -> Self {
        ClientSide {
            gone: AtomicBool::new(false),
            body_sent: AtomicBool::new(body_sent),
            body_progress: Notify::new(),
            waiting_for_client: AtomicBool::new(false),
        }
    }
}

impl<F> InFlight<F> {
    /// `connection`: where the request goes out (`None` for h2c upstreams,
    /// whose connection carries other streams; hyper resets just the one).
    /// `client`: the client's HTTP/1 connection; its socket is read on the
    /// task that polls this request, so a hook on it can shut the upstream
    /// connection down from the very read that shows the break — it cannot
    /// run between the head's arrival and `poll` returning it.
    ///
    /// The hook acts only once the request body has gone upstream whole (the
    /// upstream is working on its answer). A client that leaves mid-upload
    /// ends the upstream request through its body instead: hyper hands the
    /// body the error, the upstream request fails on it, and the layer sees
    /// the failed body and counts a `request_body` break. Cutting the upstream
    /// first would end the request before anyone read that error.
    pub(crate) fn new(
        inner: F,
        connection: Option<CaptureConnection>,
        client: Option<&TrackedConnection>,
        side: &Arc<ClientSide>,
    ) -> Self {
        let hook = connection.as_ref().zip(client).map(|(connection, client)| {
            let connection = connection.clone();
            let side = side.clone();
            client.on_client_left(move || {
                if side.body_sent.load(Ordering::Acquire) {
                    side.gone.store(true, Ordering::Release);
                    SocketHandle::shutdown_captured(&connection);
                }
            })
        });
        InFlight {
            inner,
            connection,
            hook,
        }
    }
}

impl<F: Future> Future for InFlight<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let output = ready!(this.inner.poll(cx));
        // The head (or an error) is here: the connection is no longer ours to end.
        *this.hook = None;
        *this.connection = None;
        Poll::Ready(output)
    }
}

/// One upstream connection: hyper-util's stream and the handle on its socket.
#[derive(Debug)]
pub(crate) struct UpstreamStream {
    io: Io,
    handle: SocketHandle,
}

/// The bytes of an upstream connection: the socket's, or TLS's above it

#[derive(Debug)]
enum Io {
    Plain(TokioIo<TcpStream>),
    Tls(Box<TokioIo<TlsStream<TcpStream>>>),
}

/// One body for each I/O method: the same call on either kind of stream.
macro_rules! each_io {
    ($io:expr, $s:ident => $call:expr) => {
        match $io {
            Io::Plain($s) => $call,
            Io::Tls($s) => $call,
        }
    };
}

impl Drop for UpstreamStream {
    fn drop(&mut self) {
        // The duplicate goes with the stream: the socket closes when hyper
        // lets go of it, as it would without the handle.
        drop(self.handle.take());
    }
}

impl Connection for UpstreamStream {
    fn connected(&self) -> Connected {
        let connected = match &self.io {
            Io::Plain(io) => io.connected(),
            Io::Tls(io) => {
                let (tcp, tls) = io.inner().get_ref();
                // HTTP/2 when the upstream chose it by ALPN: hyper's pool
                // then shares the connection between requests.
                if tls.alpn_protocol() == Some(b"h2") {
                    tcp.connected().negotiated_h2()
                } else {
                    tcp.connected()
                }
            }
        };
        connected.extra(self.handle.clone())
    }
}

impl Read for UpstreamStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        each_io!(&mut self.io, io => Pin::new(io).poll_read(cx, buf))
    }
}

impl Write for UpstreamStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        each_io!(&mut self.io, io => Pin::new(io).poll_write(cx, buf))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        each_io!(&mut self.io, io => Pin::new(io).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        each_io!(&self.io, io => io.is_write_vectored())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each_io!(&mut self.io, io => Pin::new(io).poll_flush(cx))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each_io!(&mut self.io, io => Pin::new(io).poll_shutdown(cx))
    }
}
