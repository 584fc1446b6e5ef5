//! Forwarding one request: clean hop-by-hop headers, add `X-Forwarded-*`, carry
//! the trace context, stream both bodies, and answer 502/504 for the upstream's
//! failures — which are never client disconnects.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::uri::{PathAndQuery, Scheme};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri, Version, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use clientgone::{GrpcStatus, TrackedConnection, method_label};
use http_body::{Frame, SizeHint};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{HttpConnector, capture_connection};
use opentelemetry::propagation::Injector;
use opentelemetry::trace::TraceContextExt;
use pin_project_lite::pin_project;

use super::Upstream;
use super::connector::{ClientSide, InFlight, UpstreamConnector, UpstreamTls};
use super::upstream::{UpstreamBody, UpstreamOutcome, UpstreamRoute};

/// What the forwarding handler needs; cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct Forwarder(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    client: Client<UpstreamConnector, Body>,
    upstream: Upstream,
    timeout: Duration,
    /// gRPC calls are told from other requests (`--grpc-descriptor`).
    grpc: bool,
    /// Route templates and gRPC methods left out of every metric.
    skip: Arc<[Box<str>]>,
}

impl Forwarder {
    pub(crate) fn new(
        upstream: Upstream,
        timeout: Duration,
        grpc: bool,
        skip: &[String],
        tls: Option<UpstreamTls>,
    ) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(timeout));
        // https:// URIs reach the connector, which speaks the TLS itself.
        connector.enforce_http(false);
        let client = Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            // `forward` always sets `Host` itself: no need for the client to
            // clone the URI and look the header up again on every request.
            .set_host(false)
            .http2_only(upstream.h2c)
            .build(UpstreamConnector::new(connector, tls));
        Forwarder(Arc::new(Inner {
            client,
            upstream,
            timeout,
            grpc,
            skip: skip.iter().map(|s| s.as_str().into()).collect(),
        }))
    }
}

/// Headers that belong to one hop, never forwarded (RFC 9110 §7.6.1), with
/// `Upgrade`, which this proxy does not pass. A `static`: a `const` array is
/// built (and dropped) again at every use.
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// One of [`HOP_BY_HOP`]: matched by its text, which compiles to a switch on
/// the length and one comparison (a scan of the nine names took 1 % of the
/// proxy's instructions per request).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

// Names built once: a `&str` name is parsed again on every use.
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Removes the hop-by-hop headers and those the message's own `Connection`
/// header names (requests on the way up, responses on the way back).
///
/// Most requests carry none of them: one pass over the headers present finds
/// that, where removing each of the nine by name would hash and probe nine
/// times per request (measured: about 2 % of the proxy's CPU).
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in HOP_BY_HOP.iter().chain(&listed) {
        headers.remove(name);
    }
}

/// The request's URI on the upstream: its authority, the base path, the
/// client's path and query. Without a base path the client's path and query
/// are reused as they are (shared bytes, no copy).
fn upstream_uri(upstream: &Upstream, client_uri: &Uri) -> Result<Uri, http::Error> {
    let path_and_query = match client_uri.path_and_query() {
        Some(pq) if upstream.base_path.is_empty() => pq.clone(),
        pq => {
            let pq = pq.map_or("/", PathAndQuery::as_str);
            PathAndQuery::try_from(format!("{}{pq}", upstream.base_path))?
        }
    };
    Uri::builder()
        .scheme(if upstream.tls {
            Scheme::HTTPS
        } else {
            Scheme::HTTP
        })
        .authority(upstream.authority.clone())
        .path_and_query(path_and_query)
        .build()
}

/// `X-Forwarded-For`: the hops the request already names, then the client
/// (its address as text, formatted once per connection).
fn forwarded_for(earlier: Option<&str>, client: &str) -> Option<HeaderValue> {
    match earlier {
        None => HeaderValue::from_str(client).ok(),
        Some(earlier) => {
            HeaderValue::from_maybe_shared(Bytes::from(format!("{earlier}, {client}"))).ok()
        }
    }
}

fn plain(status: StatusCode, message: String) -> Response {
    (status, message + "\n").into_response()
}

/// The handler behind every route and the fallback; `route` is the one it
/// serves.
pub(crate) async fn forward(
    State(forwarder): State<Forwarder>,
    route: Arc<UpstreamRoute>,
    req: Request,
) -> Response {
    let f = &forwarder.0;
    let client = req
        .extensions()
        .get::<ConnectInfo<TrackedConnection>>()
        .map(|ConnectInfo(conn)| conn.clone());
    let client_ip = client.as_ref().map(TrackedConnection::remote_ip_text);
    if req.headers().contains_key(header::UPGRADE) || req.method() == http::Method::CONNECT {
        return plain(
            StatusCode::NOT_IMPLEMENTED,
            "clientgone proxy does not pass Upgrade (WebSocket) or CONNECT requests".into(),
        );
    }
    let method = method_label(req.method());
    let client_version = req.version();
    let grpc = f.grpc && clientgone::is_grpc_request(&req);
    let skipped = !f.skip.is_empty() && {
        let name = match grpc {
            true => req.uri().path().strip_prefix('/'),
            false => req
                .extensions()
                .get::<MatchedPath>()
                .map(MatchedPath::as_str),
        };
        name.is_some_and(|name| f.skip.iter().any(|s| **s == *name))
    };
    // A gRPC call's own deadline bounds the wait for the upstream's head, and
    // nothing else does: a stream's first answer may rightly take long.
    let head_timeout = match grpc {
        true => clientgone::grpc_timeout(req.headers()),
        false => Some(f.timeout),
    };
    let (mut parts, body) = req.into_parts();

    let uri = match upstream_uri(&f.upstream, &parts.uri) {
        Ok(uri) => uri,
        Err(e) => {
            return plain(
                StatusCode::BAD_REQUEST,
                format!("cannot forward this path: {e}"),
            );
        }
    };
    // `TE` is hop-by-hop, but a client that takes trailers (every gRPC
    // client) wants the hop after us to send them, and gRPC servers refuse
    // a call without `te: trailers`: this proxy passes trailers both ways.
    let wants_trailers = parts.headers.get_all(header::TE).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        })
    });
    let original_host = parts.headers.get(header::HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    strip_hop_by_hop(&mut parts.headers);
    // On HTTP/2 only (where gRPC lives): over HTTP/1.1 `TE` would need its
    // own `Connection: TE`, and no HTTP/1.1 client of ours relies on it.
    if grpc || (wants_trailers && f.upstream.h2c) {
        parts
            .headers
            .insert(header::TE, HeaderValue::from_static("trailers"));
    }
    let headers = &mut parts.headers;
    if let Some(ip) = client_ip {
        let earlier = headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok());
        if let Some(v) = forwarded_for(earlier, &ip) {
            headers.insert(X_FORWARDED_FOR, v);
        }
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    // The client's own X-Forwarded-Host never passes: it would name a host
    // this proxy did not see (a request may come without `Host` at all).
    match original_host {
        Some(host) => headers.insert(X_FORWARDED_HOST, host),
        None => headers.remove(X_FORWARDED_HOST),
    };
    headers.insert(header::HOST, f.upstream.host.clone());
    inject_trace_context(headers);
    parts.uri = uri;
    parts.version = if f.upstream.h2c {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };

    let side = Arc::new(ClientSide::new(http_body::Body::is_end_stream(&body)));
    let body = Body::new(WatchedBody {
        inner: body,
        side: side.clone(),
    });
    let mut request = http::Request::from_parts(parts, body);
    let connection = (!f.upstream.h2c).then(|| capture_connection(&mut request));
    let http1_client = client.as_ref().filter(|_| client_version < Version::HTTP_2);
    let mut guard = route.start(method, skipped);
    let in_flight = InFlight::new(f.client.request(request), connection, http1_client, &side);
    let result = tokio::select! {
        biased;
        result = in_flight => Ok(result),
        () = upstream_deadline(&side, head_timeout, !grpc) => Err(()),
    };
    match result {
        // A gRPC client reads its status, never an HTTP error page: the
        // upstream's failure is a trailers-only answer (and, as for any
        // request, never the client's break).
        Err(()) if grpc => {
            // The call's own deadline ran out: the client's patience, and
            // the upstream request ends on its behalf.
            guard.end(UpstreamOutcome::Cancelled);
            grpc_error(
                GrpcStatus::DEADLINE_EXCEEDED,
                "the upstream did not answer before the call's deadline",
            )
        }
        Ok(Err(e)) if grpc && !side.gone.load(Ordering::Acquire) => {
            guard.end(UpstreamOutcome::Error);
            grpc_error(
                GrpcStatus::UNAVAILABLE,
                &format!("the upstream failed: {}", error_chain(&e)),
            )
        }
        Err(()) if side.waiting_for_client.load(Ordering::Acquire) => {
            // The upstream took all the body it was given and waits for more:
            // the client stalled its upload. Its doing (nginx answers 408 on
            // its client_body_timeout); the upstream request ends on its behalf.
            guard.end(UpstreamOutcome::Cancelled);
            plain(
                StatusCode::REQUEST_TIMEOUT,
                format!("the client sent no request body for {:?}", f.timeout),
            )
        }
        Err(()) => {
            guard.end(UpstreamOutcome::Error);
            plain(
                StatusCode::GATEWAY_TIMEOUT,
                format!("the upstream did not answer within {:?}", f.timeout),
            )
        }
        Ok(Err(_)) if side.gone.load(Ordering::Acquire) => {
            // The client stopped sending its body or left: its own break,
            // recorded by the layer; the upstream request was ended on its behalf.
            guard.end(UpstreamOutcome::Cancelled);
            plain(
                StatusCode::BAD_REQUEST,
                "the client broke off the request".into(),
            )
        }
        Ok(Err(e)) => {
            guard.end(UpstreamOutcome::Error);
            plain(
                StatusCode::BAD_GATEWAY,
                format!("the upstream failed: {}", error_chain(&e)),
            )
        }
        Ok(Ok(response)) => {
            let (mut parts, body) = response.into_parts();
            guard.head(parts.status);
            strip_hop_by_hop(&mut parts.headers);
            if http_body::Body::is_end_stream(&body) {
                guard.end(UpstreamOutcome::Completed);
            }
            Response::from_parts(parts, Body::new(UpstreamBody::new(body, guard)))
        }
    }
}

/// A trailers-only gRPC answer: HTTP 200, the status in the head.
fn grpc_error(status: GrpcStatus, message: &str) -> Response {
    let mut response = Response::new(Body::empty());
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", HeaderValue::from(u16::from(status.code())));
    // grpc-message is percent-encoded; the proxy's own messages are plain
    // ASCII, so only what is not printable (or is '%') needs escaping.
    let encoded: String = message
        .bytes()
        .map(|b| match b {
            b' '..=b'~' if b != b'%' => char::from(b).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    if let Ok(value) = HeaderValue::from_str(&encoded) {
        headers.insert("grpc-message", value);
    }
    response
}

/// Resolves when the upstream has had `timeout` to answer: counted from the
/// request's start, and again from each piece of its body the upstream takes
/// — an upload that keeps flowing is not the upstream being slow, however
/// long it takes — unless `restart` is false (a gRPC call's deadline is fixed
/// from its start). Never without a timeout.
async fn upstream_deadline(side: &ClientSide, timeout: Option<Duration>, restart: bool) {
    let Some(timeout) = timeout else {
        return std::future::pending().await;
    };
    if !restart {
        return tokio::time::sleep(timeout).await;
    }
    loop {
        tokio::select! {
            () = tokio::time::sleep(timeout) => return,
            () = side.body_progress.notified(), if !side.body_sent.load(Ordering::Acquire) => {}
        }
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    message
}

/// Writes the request span's context as `traceparent`, when traces are on, so
/// the upstream's spans join the trace; otherwise the client's own
/// `traceparent`, if any, passes through untouched.
fn inject_trace_context(headers: &mut HeaderMap) {
    let context = opentelemetry::Context::current();
    if !context.span().span_context().is_valid() {
        return;
    }
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut HeaderInjector(headers));
    });
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

pin_project! {
    /// The client's request body on its way upstream; notes whether it failed
    /// (a client that stopped sending is not blamed on the upstream) and when
    /// it has gone whole.
    struct WatchedBody {
        #[pin]
        inner: Body,
        side: Arc<ClientSide>,
    }
}

impl http_body::Body for WatchedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let mut this = self.project();
        let Poll::Ready(frame) = this.inner.as_mut().poll_frame(cx) else {
            this.side.waiting_for_client.store(true, Ordering::Release);
            return Poll::Pending;
        };
        this.side.waiting_for_client.store(false, Ordering::Release);
        match &frame {
            Some(Err(_)) => this.side.gone.store(true, Ordering::Release),
            None => this.side.body_sent.store(true, Ordering::Release),
            Some(Ok(_)) if this.inner.is_end_stream() => {
                this.side.body_sent.store(true, Ordering::Release)
            }
            Some(Ok(_)) => {}
        }
        // Data went upstream (or the body ended): the upstream's clock starts again.
        let progress = match &frame {
            Some(Ok(f)) => f.data_ref().is_some_and(|d| !d.is_empty()),
            Some(Err(_)) => false,
            None => true,
        };
        if progress {
            this.side.body_progress.notify_one();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("host", "shop.example"),
            ("connection", "keep-alive, X-Hop"),
            ("connection", "x-other"),
            ("x-hop", "secret"),
            ("x-other", "also"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("x-kept", "yes"),
        ] {
            headers.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        strip_hop_by_hop(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["host", "x-kept"]);

        // Nothing hop-by-hop: nothing changes.
        let mut plain = HeaderMap::new();
        plain.insert(header::HOST, HeaderValue::from_static("a"));
        plain.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        let before = plain.clone();
        strip_hop_by_hop(&mut plain);
        assert_eq!(plain, before);

        // The text match and the list are the same set.
        for name in &HOP_BY_HOP {
            assert!(is_hop_by_hop(name), "{name}");
        }
        assert!(!is_hop_by_hop(&header::HOST));
    }

    #[test]
    fn forwarded_for_appends_the_client_to_earlier_hops() {
        assert_eq!(forwarded_for(None, "10.0.255.7").unwrap(), "10.0.255.7");
        assert_eq!(
            forwarded_for(Some("203.0.113.9"), "10.0.255.7").unwrap(),
            "203.0.113.9, 10.0.255.7"
        );
        assert_eq!(forwarded_for(None, "2001:db8::1").unwrap(), "2001:db8::1");
    }

    #[test]
    fn the_upstream_uri_keeps_path_and_query_and_adds_the_base_path() {
        let plain = Upstream::parse("http://127.0.0.1:8000").unwrap();
        let based = Upstream::parse("http://svc:81/api/").unwrap();
        let client: Uri = "/users/7?full=1".parse().unwrap();
        assert_eq!(
            upstream_uri(&plain, &client).unwrap().to_string(),
            "http://127.0.0.1:8000/users/7?full=1"
        );
        assert_eq!(
            upstream_uri(&based, &client).unwrap().to_string(),
            "http://svc:81/api/users/7?full=1"
        );
        // An origin-form request always has a path; an authority-only URI gets "/".
        let bare: Uri = "http://example.com".parse().unwrap();
        assert_eq!(
            upstream_uri(&based, &bare).unwrap().to_string(),
            "http://svc:81/api/"
        );
    }
}
