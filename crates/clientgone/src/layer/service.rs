//! [`DisconnectService`]: starts the request guard for each request.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body as AxumBody;
use axum::extract::{ConnectInfo, MatchedPath};
use bytes::Bytes;
use http::{Method, Request, Response, Version};
use http_body::Body;
use tower::Service;

use super::future::ResponseFuture;
use super::guard::{GrpcCall, RequestGuard, RequestShared, Target, recording_panics};
use super::request_body::RequestBody;
use super::span::{RequestSpan, SharedTracer};
use crate::BoxError;
use crate::classify::{BodyProgress, METHODS, method_index, request_asks_to_close};
use crate::connection::TrackedConnection;
use crate::grpc::{GrpcMethods, OTHER_METHOD, RpcType, grpc_timeout, is_grpc_request};
use crate::metrics::{Metrics, RouteMetrics, RpcMethodMetrics, UNMATCHED_ROUTE};

/// The service made by [`DisconnectLayer`](super::DisconnectLayer).
#[derive(Clone)]
pub struct DisconnectService<S> {
    inner: S,
    /// One `Arc` for what every clone shares: axum clones the service for
    /// each request.
    shared: Arc<ServiceShared>,
}

struct ServiceShared {
    metrics: Metrics,
    tracer: Option<SharedTracer>,
    /// The gRPC methods, in the layer's gRPC mode.
    grpc: Option<GrpcTable>,
    /// The children of the first route this service saw. `Router::layer`
    /// wraps each route's endpoint in a service of its own, so every request
    /// it sees has that same template: no lookup in the metrics' route map
    /// (a lock and a string hash) on the hot path. A service that sees other
    /// templates still finds them there.
    route: OnceLock<Arc<RouteMetrics>>,
    /// Route templates and gRPC methods left out on purpose.
    skip: Arc<[Box<str>]>,
    /// Whether the first route this service saw is skipped (as `route`: one
    /// comparison per request, not a scan of `skip`).
    first_skipped: OnceLock<(Box<str>, bool)>,
}

impl ServiceShared {
    /// Whether requests of this route template (or gRPC method) are left out.
    fn skipped(&self, name: &str) -> bool {
        if self.skip.is_empty() {
            return false;
        }
        if let Some((first, skip)) = self.first_skipped.get()
            && **first == *name
        {
            return *skip;
        }
        let skip = self.skip.iter().any(|s| **s == *name);
        let _ = self.first_skipped.set((name.into(), skip));
        skip
    }

    fn route(&self, template: &str) -> Arc<RouteMetrics> {
        if let Some(route) = self.route.get()
            && route.route() == template
        {
            return Arc::clone(route);
        }
        let route = self.metrics.route(template);
        let _ = self.route.set(Arc::clone(&route));
        route
    }
}

/// The gRPC methods, with the metrics children of each found once.
struct GrpcTable {
    methods: Arc<GrpcMethods>,
    children: Box<[OnceLock<Arc<RpcMethodMetrics>>]>,
    other: OnceLock<Arc<RpcMethodMetrics>>,
    /// The method of the last call, tried before the table: a server's calls
    /// go mostly to the same few methods, and comparing a path costs less
    /// than hashing it.
    last: AtomicUsize,
}

impl GrpcTable {
    fn new(methods: Arc<GrpcMethods>) -> Self {
        let children = (0..methods.len()).map(|_| OnceLock::new()).collect();
        GrpcTable {
            methods,
            children,
            other: OnceLock::new(),
            last: AtomicUsize::new(usize::MAX),
        }
    }

    /// The children of the method a request path calls, `_OTHER` if the
    /// server does not list it: a client can send any path.
    fn method(&self, metrics: &Metrics, path: &str) -> Arc<RpcMethodMetrics> {
        let last = self.last.load(Ordering::Relaxed);
        let found = match self.children.get(last).and_then(OnceLock::get) {
            Some(child) if path.strip_prefix('/') == Some(&**child.method()) => Some(last),
            _ => self.methods.lookup(path),
        };
        if let Some(i) = found
            && i != last
        {
            self.last.store(i, Ordering::Relaxed);
        }
        let child = match found {
            Some(i) => self.children[i].get_or_init(|| {
                let (name, rpc_type) = self.methods.get(i);
                metrics.rpc_method(name, rpc_type)
            }),
            None => self
                .other
                .get_or_init(|| metrics.rpc_method(&OTHER_METHOD.into(), RpcType::Unknown)),
        };
        Arc::clone(child)
    }
}

impl<S> DisconnectService<S> {
    pub(crate) fn new(
        inner: S,
        metrics: Metrics,
        tracer: Option<SharedTracer>,
        grpc: Option<Arc<GrpcMethods>>,
        skip: Arc<[Box<str>]>,
    ) -> Self {
        DisconnectService {
            inner,
            shared: Arc::new(ServiceShared {
                metrics,
                tracer,
                grpc: grpc.map(GrpcTable::new),
                route: OnceLock::new(),
                skip,
                first_skipped: OnceLock::new(),
            }),
        }
    }
}

impl<S: std::fmt::Debug> std::fmt::Debug for DisconnectService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DisconnectService")
            .field("inner", &self.inner)
            .field("metrics", &self.shared.metrics)
            .field("traced", &self.shared.tracer.is_some())
            .finish()
    }
}

/// Handed to handlers inside the request's `ConnectInfo<TrackedConnection>`,
/// or as an extension of its own where there is none; read by
/// [`ClientGone`](crate::ClientGone).
#[derive(Clone, Debug)]
pub(crate) struct RequestHandle(pub(crate) Arc<RequestShared>);

impl RequestHandle {
    /// The handle of the request these extensions belong to, if
    /// `DisconnectLayer` tracks it.
    pub(crate) fn find(extensions: &http::Extensions) -> Option<&RequestHandle> {
        extensions
            .get::<ConnectInfo<TrackedConnection>>()
            .and_then(|ConnectInfo(connection)| connection.request.as_ref())
            .or_else(|| {
                extensions
                    .get::<TrackedConnection>()
                    .and_then(|connection| connection.request.as_ref())
            })
            .or_else(|| extensions.get::<RequestHandle>())
    }
}

impl<S, B, ResBody> Service<Request<B>> for DisconnectService<S>
where
    S: Service<Request<AxumBody>, Response = Response<ResBody>>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    ResBody: Body,
{
    type Response = Response<super::ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let skipped = !self.shared.skip.is_empty() && {
            let name = match self.shared.grpc.is_some() && is_grpc_request(&req) {
                true => req.uri().path().strip_prefix('/'),
                false => req
                    .extensions()
                    .get::<MatchedPath>()
                    .map(MatchedPath::as_str),
            };
            name.is_some_and(|name| self.shared.skipped(name))
        };
        let start = Instant::now();
        // The request's shared state, and its handle for `ClientGone` in the
        // request's own connection info (one lookup of it; an extension of
        // its own where there is none).
        let body_empty = req.body().is_end_stream();
        let shared = attach_request(req.extensions_mut(), body_empty);
        let connection = shared.connection();
        // Under `axum::serve` nothing else reads the request for a close the
        // client asked for (`clientgone::serve` does it itself).
        if let Some(connection) = connection {
            let state = connection.state();
            if !state.is_tracked_by_server() && request_asks_to_close(&req) {
                state.mark_client_asked_close();
            }
        }
        let http2 = req.version() == Version::HTTP_2;
        let head_request = req.method() == Method::HEAD;
        let grpc = self.shared.grpc.as_ref().filter(|_| is_grpc_request(&req));
        let (target, span) = match grpc {
            // Left out on purpose: no metric, no span; the guard still keeps
            // the connection's bookkeeping (in flight, an upgrade).
            _ if skipped => (Target::Skipped, None),
            Some(table) => {
                let method = table.method(&self.shared.metrics, req.uri().path());
                let timeout = grpc_timeout(req.headers());
                // Named `pkg.Service/Method` (or `_OTHER`), as the RPC
                // conventions name a server span.
                let span = self.shared.tracer.as_ref().map(|tracer| {
                    Box::new(RequestSpan::start(
                        tracer,
                        method.method(),
                        &req,
                        connection.map(TrackedConnection::remote_ip_text),
                    ))
                });
                let call = GrpcCall {
                    method,
                    timeout,
                    status: None,
                };
                (Target::Grpc(call), span)
            }
            None => {
                let method = method_index(req.method());
                let route = req
                    .extensions()
                    .get::<MatchedPath>()
                    .map_or(UNMATCHED_ROUTE, MatchedPath::as_str);
                let route = self.shared.route(route);
                let span = self.shared.tracer.as_ref().map(|tracer| {
                    Box::new(RequestSpan::start(
                        tracer,
                        route.span_name(method),
                        &req,
                        connection.map(TrackedConnection::remote_ip_text),
                    ))
                });
                let target = Target::Http {
                    route,
                    method,
                    method_label: METHODS[method],
                };
                (target, span)
            }
        };
        let mut guard = RequestGuard::new(target, start, http2, shared.clone(), span);
        let req = if shared.body_progress() == BodyProgress::Done {
            // Nothing to watch in an empty body; an axum body passes unboxed.
            req.map(AxumBody::new)
        } else {
            req.map(|body| AxumBody::new(RequestBody::new(body, shared)))
        };
        // The request's span is the current context wherever its code runs,
        // from `call` on: the handler's own spans become its children.
        let _entered = guard.trace_context().map(|cx| cx.clone().attach());
        // An inner service may panic in `call` already (axum's own routes
        // start work only when polled): the server's failure, as in `poll`.
        let inner = recording_panics(Some(&mut guard), || self.inner.call(req));
        drop(_entered);
        ResponseFuture::new(inner, guard, head_request)
    }
}

/// Creates the request's shared state with its connection (from axum's
/// `ConnectInfo`, or tonic's raw connect info), and leaves the handle to it
/// where `ClientGone` looks.
fn attach_request(extensions: &mut http::Extensions, body_empty: bool) -> Arc<RequestShared> {
    if let Some(ConnectInfo(connection)) = extensions.get_mut::<ConnectInfo<TrackedConnection>>() {
        let shared = Arc::new(RequestShared::new(Some(connection.clone()), body_empty));
        connection.request = Some(RequestHandle(shared.clone()));
        return shared;
    }
    if let Some(connection) = extensions.get_mut::<TrackedConnection>() {
        // tonic's `Server` over `TrackedListener::into_incoming`.
        let shared = Arc::new(RequestShared::new(Some(connection.clone()), body_empty));
        connection.request = Some(RequestHandle(shared.clone()));
        #[cfg(feature = "grpc")]
        {
            let info = crate::grpc::tcp_connect_info(connection);
            extensions.insert(info);
        }
        return shared;
    }
    warn_no_connection();
    let shared = Arc::new(RequestShared::new(None, body_empty));
    extensions.insert(RequestHandle(shared.clone()));
    shared
}

/// Said once per process: without its connection the layer still counts
/// breaks, but cannot tell their cause, and the server likely forgot a step.
fn warn_no_connection() {
    static WARNED: AtomicBool = AtomicBool::new(false);
    // A load first: a misconfigured server would otherwise write this shared
    // flag on every request.
    if !WARNED.load(Ordering::Relaxed) && !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            "DisconnectLayer sees requests without their TrackedConnection, so every \
             break's cause is `unknown`: serve with clientgone::serve(TrackedListener, app), \
             or axum::serve(TrackedListener, \
             app.into_make_service_with_connect_info::<clientgone::TrackedConnection>())"
        );
    }
}
