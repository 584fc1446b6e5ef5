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
use crate::connection::{TrackedListener, TrackedStream};
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
    }
}

/// The future of [`serve`]; await it to run the server.
#[must_use = "a server does nothing until awaited"]
pub struct Serve {
    listener: TrackedListener,
    router: Router,
    shutdown: Option<Signal>,
    grace_period: Duration,
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

    async fn run(self) -> io::Result<()> {
        let Serve {
            listener,
            router,
            shutdown,
            grace_period,
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
            let (control, registration) = connections.register(stream.connection().state().clone());
            let conn = serve_connection(stream, router.clone(), builder.clone(), control);
            tracker.spawn(async move {
                conn.await;
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

async fn serve_connection(
    stream: TrackedStream,
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
