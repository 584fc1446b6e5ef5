//! [`DisconnectLayer`]: the tower layer users add to their router.

use tower::Layer;

use super::service::DisconnectService;
use crate::metrics::Metrics;

/// Counts and classifies requests whose client broke off, per route template.
///
/// Add it with `Router::layer` as the **last** (outermost) layer, so that it sees
/// the matched route and so that server-side timeouts and limits added before it
/// stay inside it — they answer the request and are never counted as clients
/// leaving.
///
/// ```
/// use axum::{routing::get, Router};
/// use clientgone::{DisconnectLayer, Metrics};
///
/// let registry = prometheus::Registry::new();
/// let metrics = Metrics::new(&registry).unwrap();
/// let app: Router = Router::new()
///     .route("/items/{id}", get(|| async { "item" }))
///     .layer(DisconnectLayer::new(metrics));
/// ```
#[derive(Clone, Debug)]
pub struct DisconnectLayer {
    metrics: Metrics,
}

impl DisconnectLayer {
    /// Creates the layer recording into `metrics`.
    pub fn new(metrics: Metrics) -> Self {
        DisconnectLayer { metrics }
    }
}

impl<S> Layer<S> for DisconnectLayer {
    type Service = DisconnectService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        DisconnectService::new(inner, self.metrics.clone())
    }
}
