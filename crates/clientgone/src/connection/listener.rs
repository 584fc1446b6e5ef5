//! [`TrackedListener`]: accepts TCP connections, sets their socket options and
//! wraps each in a [`TrackedStream`].

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use tokio::net::{TcpListener, ToSocketAddrs};

use super::options::ConnectionOptions;
use super::stream::{TrackedConnection, TrackedStream};
use crate::metrics::Metrics;

/// A TCP listener whose connections report what the socket saw.
///
/// Use it with [`clientgone::serve`](crate::serve()) (which also enforces the
/// header-read timeout), or with `axum::serve` and
/// `into_make_service_with_connect_info::<TrackedConnection>()`.
///
/// ```no_run
/// # async fn run() -> std::io::Result<()> {
/// let registry = prometheus::Registry::new();
/// let metrics = clientgone::Metrics::new(&registry).expect("fresh registry");
/// let listener = clientgone::TrackedListener::bind("127.0.0.1:8080", &metrics).await?;
/// println!("listening on {}", listener.local_addr()?);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct TrackedListener {
    inner: TcpListener,
    options: ConnectionOptions,
    metrics: Option<Metrics>,
}

impl TrackedListener {
    /// Binds a new listener that counts connections in `metrics`.
    pub async fn bind(addr: impl ToSocketAddrs, metrics: &Metrics) -> io::Result<Self> {
        Ok(Self::from_tcp(TcpListener::bind(addr).await?, metrics))
    }

    /// Wraps an already bound listener.
    pub fn from_tcp(inner: TcpListener, metrics: &Metrics) -> Self {
        TrackedListener {
            inner,
            options: ConnectionOptions::default(),
            metrics: Some(metrics.clone()),
        }
    }

    /// Wraps a listener without connection metrics (requests are still classified).
    pub fn without_metrics(inner: TcpListener) -> Self {
        TrackedListener {
            inner,
            options: ConnectionOptions::default(),
            metrics: None,
        }
    }

    /// Replaces the connection options.
    pub fn with_options(mut self, options: ConnectionOptions) -> Self {
        self.options = options;
        self
    }

    /// The connection options in force.
    pub fn options(&self) -> &ConnectionOptions {
        &self.options
    }

    /// The local address the listener is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    /// Accepts one connection, or returns the accept error.
    pub async fn accept_tracked(&self) -> io::Result<(TrackedStream, SocketAddr)> {
        let (stream, addr) = self.inner.accept().await?;
        self.options.apply(&stream);
        Ok((TrackedStream::new(stream, addr, self.metrics.clone()), addr))
    }

    /// The accepted connections as a stream, for servers that take one —
    /// tonic's `Server::serve_with_incoming`. Accept errors that concern one
    /// connection are skipped, a shortage of file descriptors waited out, as
    /// for `clientgone::serve`; the stream never ends.
    ///
    /// ```no_run
    /// # async fn run(routes: tonic::service::Routes) -> Result<(), Box<dyn std::error::Error>> {
    /// use clientgone::{DisconnectLayer, GrpcMethods, Metrics, TrackedListener};
    ///
    /// let metrics = Metrics::new(&prometheus::Registry::new())?;
    /// let listener = TrackedListener::bind("127.0.0.1:50051", &metrics).await?;
    /// tonic::transport::Server::builder()
    ///     .layer(DisconnectLayer::new(metrics).grpc(GrpcMethods::new()))
    ///     .add_routes(routes)
    ///     .serve_with_incoming(listener.into_incoming())
    ///     .await?;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "grpc")]
    #[cfg_attr(docsrs, doc(cfg(feature = "grpc")))]
    pub fn into_incoming(
        self,
    ) -> impl futures_util::Stream<Item = io::Result<TrackedStream>> + Send + 'static {
        futures_util::stream::unfold(self, |listener| async move {
            let (stream, _) = listener.accept_retrying().await;
            Some((Ok(stream), listener))
        })
    }

    /// Accepts one connection, waiting out errors that concern only one
    /// connection or a passing shortage of file descriptors.
    pub(crate) async fn accept_retrying(&self) -> (TrackedStream, SocketAddr) {
        loop {
            match self.accept_tracked().await {
                Ok(accepted) => return accepted,
                Err(e) => handle_accept_error(e).await,
            }
        }
    }
}

async fn handle_accept_error(e: io::Error) {
    if matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    // EMFILE and friends: back off instead of spinning, as axum::serve does.
    tracing::error!(error = %e, "accept error");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

impl axum::serve::Listener for TrackedListener {
    type Io = TrackedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        self.accept_retrying().await
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

impl Connected<IncomingStream<'_, TrackedListener>> for TrackedConnection {
    fn connect_info(stream: IncomingStream<'_, TrackedListener>) -> Self {
        stream.io().connection().clone()
    }
}
