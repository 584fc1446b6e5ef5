//! [`DisconnectLayer`]: the tower layer users add to their router.

use std::sync::Arc;

use opentelemetry::trace::Tracer;
use tower::Layer;

use super::service::DisconnectService;
use super::span::{SharedTracer, Tracing};
use crate::grpc::GrpcMethods;
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
#[derive(Clone)]
pub struct DisconnectLayer {
    metrics: Metrics,
    tracer: Option<SharedTracer>,
    grpc: Option<Arc<GrpcMethods>>,
    skip: Arc<[Box<str>]>,
}

impl std::fmt::Debug for DisconnectLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DisconnectLayer")
            .field("metrics", &self.metrics)
            .field("traced", &self.tracer.is_some())
            .field("grpc_methods", &self.grpc.as_ref().map(|m| m.len()))
            .field("skip", &self.skip)
            .finish()
    }
}

impl DisconnectLayer {
    /// Creates the layer recording into `metrics`, with no traces.
    pub fn new(metrics: Metrics) -> Self {
        DisconnectLayer {
            metrics,
            tracer: None,
            grpc: None,
            skip: Arc::new([]),
        }
    }

    /// Leaves requests of these route templates (`/healthz`, `/metrics`,
    /// `/assets/{*path}`) — or, in gRPC mode, these methods
    /// (`grpc.health.v1.Health/Check`) — out on purpose: they pass through
    /// untouched and are in no metric (not in the duration histogram, not in
    /// flight, never a break) and get no span. A template is the one the
    /// route was added with. The connection still knows them as requests
    /// (its close reason stays right), and [`ClientGone`](crate::ClientGone)
    /// works in their handlers.
    ///
    /// ```
    /// use axum::{routing::get, Router};
    /// use clientgone::{DisconnectLayer, Metrics};
    ///
    /// let metrics = Metrics::new(&prometheus::Registry::new()).unwrap();
    /// let app: Router = Router::new()
    ///     .route("/healthz", get(|| async { "ok" }))
    ///     .route("/users/{id}", get(|| async { "user" }))
    ///     .layer(DisconnectLayer::new(metrics).skip(["/healthz"]));
    /// ```
    pub fn skip<I>(mut self, names: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        let mut all: Vec<Box<str>> = self.skip.iter().cloned().collect();
        all.extend(names.into_iter().map(|n| n.into().into_boxed_str()));
        self.skip = all.into();
        self
    }

    /// Counts gRPC calls as calls: a request whose `content-type` is
    /// `application/grpc` goes to the `rpc_server_*` metrics — under its
    /// method if `methods` lists it, else `_OTHER` — and not to the
    /// `http_server_*` request metrics. Other requests are counted as before,
    /// so one layer serves a router with both.
    ///
    /// A call's status is read from its trailers or its trailers-only head.
    /// A break at or after the deadline the client sent (`grpc-timeout`) has
    /// the cause `deadline_exceeded`; one before it, the cause seen on the
    /// wire (`stream_reset`, `closed`, `reset`, …). A call that the server
    /// itself gives up — tonic's `Server::timeout`, which wraps this layer
    /// from outside and answers `CANCELLED` — is recorded as completed with
    /// `CANCELLED`, never as a break. Telling the two apart needs the
    /// connection: serve with [`TrackedListener`](crate::TrackedListener)
    /// (`clientgone::serve`, or tonic's `serve_with_incoming(listener.into_incoming())`).
    ///
    /// With tonic's router inside `clientgone::serve` (`grpc_app` is
    /// `tonic::service::Routes::into_axum_router()`; with the feature `grpc`,
    /// the methods can come from a descriptor set:
    /// `GrpcMethods::from_file_descriptor_set`):
    ///
    /// ```no_run
    /// # async fn run(grpc_app: axum::Router) -> Result<(), Box<dyn std::error::Error>> {
    /// use clientgone::{DisconnectLayer, GrpcMethods, Metrics, RpcType, TrackedListener};
    ///
    /// let metrics = Metrics::new(&prometheus::Registry::new())?;
    /// let methods = GrpcMethods::new()
    ///     .with("helloworld.Greeter/SayHello", RpcType::Unary)
    ///     .with("helloworld.Greeter/SayHelloStream", RpcType::ServerStreaming);
    /// let app = grpc_app.layer(DisconnectLayer::new(metrics.clone()).grpc(methods));
    /// let listener = TrackedListener::bind("127.0.0.1:50051", &metrics).await?;
    /// clientgone::serve(listener, app).await?;
    /// # Ok(()) }
    /// ```
    pub fn grpc(mut self, methods: GrpcMethods) -> Self {
        self.grpc = Some(Arc::new(methods));
        self
    }

    /// Also gives every request an OpenTelemetry server span, built with
    /// `tracer` (for example `clientgone_exporter::otlp::OtlpPipeline::tracer`).
    ///
    /// The span is named `{method} {route}`; a broken request's span gets status
    /// Error and a `client.disconnect` event. Its attributes are written only
    /// when it is exported: when its sampler sampled it, or the request broke or
    /// failed. To keep *every* break while sampling the rest, the tracer's
    /// sampler must record the spans it does not sample (`RecordOnly`), as
    /// clientgone-exporter's pipeline does; a sampler that drops a span at its
    /// start loses it even if it breaks.
    ///
    /// ```
    /// use axum::{routing::get, Router};
    /// use clientgone::{DisconnectLayer, Metrics};
    /// use opentelemetry::trace::TracerProvider as _;
    ///
    /// let registry = prometheus::Registry::new();
    /// let metrics = Metrics::new(&registry).unwrap();
    /// let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    /// let app: Router = Router::new()
    ///     .route("/items/{id}", get(|| async { "item" }))
    ///     .layer(DisconnectLayer::new(metrics).with_tracer(provider.tracer("my-service")));
    /// ```
    pub fn with_tracer<T>(mut self, tracer: T) -> Self
    where
        T: Tracer + Send + Sync + 'static,
        T::Span: Send + Sync + 'static,
    {
        self.tracer = Some(Arc::new(Tracing::new(tracer)));
        self
    }
}

impl<S> Layer<S> for DisconnectLayer {
    type Service = DisconnectService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        DisconnectService::new(
            inner,
            self.metrics.clone(),
            self.tracer.clone(),
            self.grpc.clone(),
            Arc::clone(&self.skip),
        )
    }
}
