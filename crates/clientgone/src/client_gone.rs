//! [`ClientGone`]: an extractor that tells a handler when its client broke off.

use axum::extract::FromRequestParts;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use http::request::Parts;
use tokio_util::sync::CancellationToken;

use crate::layer::RequestHandle;

/// A cancellation signal for the current request: cancelled when this request's
/// client breaks the connection — so work the handler spawned can stop too.
///
/// This is the Rust answer to Go's `r.Context().Done()`. The handler's own
/// future is simply dropped on a break; the token reaches what it spawned.
/// Behind `TrackedListener` it is cancelled by the very socket read that shows
/// the FIN or reset, before hyper drops the handler; an HTTP/2 stream reset
/// cancels it when the request's future is dropped. On HTTP/2 a broken
/// connection cancels the tokens of all its requests, including one that was
/// finishing at that very moment.
///
/// ```
/// use axum::{routing::get, Router};
/// use clientgone::{ClientGone, DisconnectLayer, Metrics};
///
/// async fn report(gone: ClientGone) -> &'static str {
///     let token = gone.token();
///     tokio::spawn(async move {
///         tokio::select! {
///             _ = token.cancelled() => { /* the client left: stop the query */ }
///             _ = tokio::time::sleep(std::time::Duration::from_secs(30)) => {}
///         }
///     });
///     "started"
/// }
///
/// let metrics = Metrics::new(&prometheus::Registry::new()).unwrap();
/// let app: Router = Router::new()
///     .route("/report", get(report))
///     .layer(DisconnectLayer::new(metrics));
/// ```
#[derive(Clone, Debug)]
pub struct ClientGone(CancellationToken);

impl ClientGone {
    /// The token, to move into spawned work.
    pub fn token(&self) -> CancellationToken {
        self.0.clone()
    }

    /// Resolves when the client is gone.
    pub async fn cancelled(&self) {
        self.0.cancelled().await
    }

    /// Whether the client is already gone.
    pub fn is_gone(&self) -> bool {
        self.0.is_cancelled()
    }

    /// The signal of a tonic call, in a handler behind
    /// [`DisconnectLayer`](crate::DisconnectLayer); `None` without the layer.
    ///
    /// ```
    /// use clientgone::ClientGone;
    ///
    /// async fn say_hello(request: tonic::Request<String>) -> Result<tonic::Response<String>, tonic::Status> {
    ///     let gone = ClientGone::from_tonic(&request)
    ///         .ok_or_else(|| tonic::Status::internal("served without clientgone::DisconnectLayer"))?;
    ///     tokio::select! {
    ///         _ = gone.cancelled() => Err(tonic::Status::cancelled("the client left")),
    ///         _ = tokio::time::sleep(std::time::Duration::from_millis(10)) => {
    ///             Ok(tonic::Response::new(format!("Hello, {}!", request.get_ref())))
    ///         }
    ///     }
    /// }
    /// # let _ = say_hello;
    /// ```
    #[cfg(feature = "grpc")]
    #[cfg_attr(docsrs, doc(cfg(feature = "grpc")))]
    pub fn from_tonic<T>(request: &tonic::Request<T>) -> Option<ClientGone> {
        let extensions = request.extensions();
        let handle = extensions
            .get::<crate::TrackedConnection>()
            .and_then(|connection| connection.request.as_ref())
            .or_else(|| {
                extensions
                    .get::<axum::extract::ConnectInfo<crate::TrackedConnection>>()
                    .and_then(|info| info.0.request.as_ref())
            })
            .or_else(|| extensions.get::<RequestHandle>())?;
        Some(ClientGone(handle.0.token()))
    }
}

/// Rejection of [`ClientGone`] when the router lacks the layer.
#[derive(Debug)]
pub struct MissingDisconnectLayer;

impl IntoResponse for MissingDisconnectLayer {
    fn into_response(self) -> Response {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            "ClientGone needs clientgone::DisconnectLayer on the router \
             (add it with Router::layer as the last layer)",
        )
            .into_response()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ClientGone {
    type Rejection = MissingDisconnectLayer;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        RequestHandle::find(&parts.extensions)
            .map(|handle| ClientGone(handle.0.token()))
            .ok_or(MissingDisconnectLayer)
    }
}
