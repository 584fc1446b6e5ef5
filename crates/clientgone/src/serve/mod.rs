//! [`serve`]: an accept loop like `axum::serve`, which also enforces the
//! header-read timeout, hands each request its connection, and shuts down
//! gracefully without counting the server's own goodbyes as client breaks.

mod connections;
mod request;

use std::future::{Future, IntoFuture};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio_util::task::TaskTracker;
use tower::Service;

use crate::classify::request_asks_to_close;
use crate::connection::{TrackedConnection, TrackedListener, TrackedStream};
#[cfg(feature = "tls")]
use connections::ControlledHandshake;
use connections::{Connections, Controlled, Ended, Stop};
use request::{InFlightMark, Served};

type Signal = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Serves `router` on `listener`: HTTP/1.1 and HTTP/2 (prior knowledge, h2c)
/// on the same port.
///
/// ```no_run
/// use axum::{routing::get, Router};
/// use clientgone::{DisconnectLayer, Metrics, TrackedListener};
///
/// # async fn run() -> std::io::Result<()> {
/// let registry = prometheus::Registry::new();
/// let metrics = Metrics::new(&registry).expect("fresh registry");
/// let app = Router::new()
///     .route("/hello", get(|| async { "Hello, World!" }))
///     .layer(DisconnectLayer::new(metrics.clone()));
/// let listener = TrackedListener::bind("127.0.0.1:8080", &metrics).await?;
/// clientgone::serve(listener, app)
///     .with_graceful_shutdown(async { tokio::signal::ctrl_c().await.ok(); })
///     .await
/// # }
/// ```
pub fn serve(listener: TrackedListener, router: Router) -> Serve {
    Serve {
        listener,
        router,
        shutdown: None,
        grace_period: Duration::from_secs(30),
        #[cfg(feature = "tls")]
        tls: None,
    }
}

/// The future of [`serve`]; await it to run the server.
#[must_use = "a server does nothing until awaited"]
pub struct Serve {
    listener: TrackedListener,
    router: Router,
    shutdown: Option<Signal>,
    grace_period: Duration,
    #[cfg(feature = "tls")]
    tls: Option<crate::tls::TlsAcceptor>,
}

impl std::fmt::Debug for Serve {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serve")
            .field("listener", &self.listener)
            .field("grace_period", &self.grace_period)
            .finish_non_exhaustive()
    }
}

impl Serve {
    /// Stops accepting when `signal` resolves, lets requests in flight finish,
    /// closes idle connections, and returns.
    pub fn with_graceful_shutdown(
        mut self,
        signal: impl Future<Output = ()> + Send + 'static,
    ) -> Self {
        self.shutdown = Some(Box::pin(signal));
        self
    }

    /// How long in-flight requests get after the shutdown signal (default 30 s).
    /// Requests still running then are dropped — and recorded as the server's
    /// doing, never as client disconnects.
    pub fn grace_period(mut self, grace_period: Duration) -> Self {
        self.grace_period = grace_period;
        self
    }

    /// Serves HTTPS: every connection runs this TLS handshake first (HTTP/1.1
    /// and HTTP/2 by ALPN). The header-read timeout covers the handshake; a
    /// connection whose handshake does not complete closes with
    /// `reason="tls_handshake"`. Causes keep their meaning: the TCP facts are
    /// read beneath TLS, HTTP/2 stream resets in the plaintext above it.
    ///
    /// ```no_run
    /// # async fn run(app: axum::Router, metrics: clientgone::Metrics) -> Result<(), Box<dyn std::error::Error>> {
    /// let tls = clientgone::TlsAcceptor::from_pem_files("cert.pem", "key.pem")?;
    /// let listener = clientgone::TrackedListener::bind("0.0.0.0:8443", &metrics).await?;
    /// clientgone::serve(listener, app).tls(tls).await?;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls(mut self, acceptor: crate::tls::TlsAcceptor) -> Self {
        self.tls = Some(acceptor);
        self
    }

    async fn run(self) -> io::Result<()> {
        let Serve {
            listener,
            router,
            shutdown,
            grace_period,
            #[cfg(feature = "tls")]
            tls,
        } = self;
        // Handlers become routes once here, not on every request: a `Router`
        // called without its state converts each boxed handler (and every
        // layer on it) per call, as `axum::serve` avoids the same way.
        let router = router.with_state(());
        let builder = Arc::new(builder());
        let connections = Arc::new(Connections::default());
        // One task for all connections' head timeouts; it ends when the
        // server and its last connection are gone.
        if let Some(timeout) = listener.options().header_read_timeout {
            tokio::spawn(Connections::watch_heads(
                Arc::downgrade(&connections),
                timeout,
            ));
        }
        let tracker = TaskTracker::new();
        let mut shutdown = shutdown.unwrap_or_else(|| Box::pin(std::future::pending()));

        loop {
            let (stream, _addr) = tokio::select! {
                accepted = listener.accept_retrying() => accepted,
                () = &mut shutdown => break,
            };
            let state = stream.connection().state().clone();
            let (control, registration) = connections.register(state.clone());
            let (router, builder) = (router.clone(), builder.clone());
            #[cfg(feature = "tls")]
            if let Some(tls) = &tls {
                let tls = tls.clone();
                tracker.spawn(async move {
                    let handshake =
                        ControlledHandshake::new(tls.accept(stream), control.clone(), state);
                    match handshake.await {
                        Some(Ok(stream)) => {
                            serve_connection(stream, router, builder, control).await
                        }
                        // Dropped with its handshake pending: closed as `tls_handshake`.
                        Some(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                        None => tracing::debug!("TLS handshake cut off"),
                    }
                    drop(registration);
                });
                continue;
            }
            tracker.spawn(async move {
                serve_connection(stream, router, builder, control).await;
                drop(registration);
            });
        }
        drop(listener);
        tracker.close();
        connections.stop_all(Stop::Graceful);
        if tokio::time::timeout(grace_period, tracker.wait())
            .await
            .is_err()
        {
            connections.stop_all(Stop::Force);
            tracker.wait().await;
        }
        Ok(())
    }
}

impl IntoFuture for Serve {
    type Output = io::Result<()>;
    type IntoFuture = Pin<Box<dyn Future<Output = io::Result<()>> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.run())
    }
}

fn builder() -> Builder<TokioExecutor> {
    let mut builder = Builder::new(TokioExecutor::new());
    // hyper's own header-read timeout arms a timer for every request head; one
    // task per server does the same job (see `Connections::watch_heads`).
    // hyper defaults to 30 s once a timer is set: off.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None);
    builder.http2().timer(TokioTimer::new());
    builder
}

/// A stream `serve` serves: the tracked socket, or TLS above it.
trait ServedStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static {
    fn connection(&self) -> &TrackedConnection;
}

impl ServedStream for TrackedStream {
    fn connection(&self) -> &TrackedConnection {
        TrackedStream::connection(self)
    }
}

#[cfg(feature = "tls")]
impl ServedStream for crate::tls::TrackedTlsStream {
    fn connection(&self) -> &TrackedConnection {
        crate::tls::TrackedTlsStream::connection(self)
    }
}

async fn serve_connection(
    stream: impl ServedStream,
    router: Router,
    builder: Arc<Builder<TokioExecutor>>,
    control: Arc<connections::Control>,
) {
    let state = stream.connection().state().clone();
    let info = ConnectInfo(stream.connection().clone());
    let requests_state = state.clone();
    // Requests are seen here, with or without `DisconnectLayer`; the layer
    // then leaves the connection's bookkeeping to us (see `request.rs`).
    state.mark_tracked_by_server();
    let service = hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
        if request_asks_to_close(&req) {
            requests_state.mark_client_asked_close();
        }
        req.extensions_mut().insert(info.clone());
        let in_flight = InFlightMark::start(&requests_state, &req);
        Served::new(router.clone().call(req), in_flight)
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    // Pinned here, not awaited as a temporary, so the connection — and with it
    // the stream, whose drop records the close — outlives the marks below.
    let mut controlled = std::pin::pin!(Controlled::new(conn, control.clone(), state.clone()));
    match controlled.as_mut().await {
        Ended::Finished(Err(e)) => tracing::debug!(error = %e, "connection ended with an error"),
        Ended::Finished(Ok(())) => {
            // An HTTP/2 connection (or one that never sent a request) that hyper
            // ends cleanly without being asked to stop ended on the client's
            // GOAWAY: the client's normal close, not the server's.
            if control.is_running() && (state.is_http2() || state.requests() == 0) {
                state.mark_client_asked_close();
            }
        }
        // The reason was marked on the connection's state before the stop,
        // so the stream's drop (right here) records the right close reason.
        Ended::HeadTimeout => {
            tracing::debug!("no complete request head in time: closing the connection");
        }
        Ended::Forced => tracing::debug!("grace period over: closing the connection"),
    }
}
