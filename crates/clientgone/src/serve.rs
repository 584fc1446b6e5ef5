//! [`serve`]: an accept loop like `axum::serve`, which also enforces the
//! header-read timeout, hands each request its connection, and shuts down
//! gracefully without counting the server's own goodbyes as client breaks.

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
use hyper_util::server::graceful::GracefulShutdown;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::Service;

use crate::connection::{ConnectionState, TrackedListener, TrackedStream};

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
        let builder = Arc::new(builder());
        let header_read_timeout = listener.options().header_read_timeout;
        let graceful = GracefulShutdown::new();
        let force_close = CancellationToken::new();
        let tracker = TaskTracker::new();
        let mut shutdown = shutdown.unwrap_or_else(|| Box::pin(std::future::pending()));

        loop {
            let (stream, _addr) = tokio::select! {
                accepted = listener.accept_retrying() => accepted,
                () = &mut shutdown => break,
            };
            tracker.spawn(serve_connection(
                stream,
                router.clone(),
                builder.clone(),
                graceful.watcher(),
                force_close.clone(),
                header_read_timeout,
            ));
        }
        drop(listener);
        tracker.close();
        tokio::select! {
            () = graceful.shutdown() => {}
            () = tokio::time::sleep(grace_period) => force_close.cancel(),
        }
        tracker.wait().await;
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
    // hyper's own header-read timeout arms a timer for every request head; the
    // per-connection watchdog below does the same job with one timer per tick
    // (see `watch_heads`). hyper defaults to 30 s once a timer is set: off.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None);
    builder.http2().timer(TokioTimer::new());
    builder
}

/// Ticks per header-read timeout: a head is cut off after it has been pending
/// for `HEAD_TICKS + 1` ticks of `timeout / HEAD_TICKS`, that is between 1 and
/// 1.25 (at most 1.5, right after a request) times the timeout — never sooner.
const HEAD_TICKS: u32 = 4;

/// Resolves when this connection has waited longer than `timeout` for a
/// complete HTTP/1 request head (a slow-loris client, or one that connected and
/// sent nothing).
///
/// A connection waits for a head when nothing is in flight and either a head has
/// started arriving or no request was ever seen. One timer per tick per
/// connection instead of one per request: under keep-alive load that is the
/// difference between a timer-wheel insert per request and almost none.
async fn watch_heads(state: &ConnectionState, timeout: Duration) {
    let tick = timeout / HEAD_TICKS;
    let mut pending_ticks = 0;
    let mut requests_seen = state.requests();
    loop {
        tokio::time::sleep(tick).await;
        let requests = state.requests();
        if state.is_waiting_for_head() && requests == requests_seen {
            pending_ticks += 1;
        } else {
            pending_ticks = 0;
        }
        requests_seen = requests;
        if pending_ticks > HEAD_TICKS {
            return;
        }
    }
}

async fn serve_connection(
    stream: TrackedStream,
    router: Router,
    builder: Arc<Builder<TokioExecutor>>,
    graceful: hyper_util::server::graceful::Watcher,
    force_close: CancellationToken,
    header_read_timeout: Option<Duration>,
) {
    let connection = stream.connection().clone();
    let info = ConnectInfo(connection.clone());
    let service = hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
        req.extensions_mut().insert(info.clone());
        router.clone().call(req)
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    // Pinned here, not moved into `select!`, so the connection (and with it the
    // stream, whose drop records the close) outlives the marking below.
    let mut conn = std::pin::pin!(graceful.watch(conn));
    let heads = async {
        match header_read_timeout {
            Some(timeout) => watch_heads(connection.state(), timeout).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        result = &mut conn => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        }
        () = heads => {
            connection.state().mark_header_timeout();
            tracing::debug!("no complete request head in time: closing the connection");
        }
        () = force_close.cancelled() => {
            // Mark before the connection (and its requests) are dropped.
            connection.state().mark_server_closing();
        }
    }
}
