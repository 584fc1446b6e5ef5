//! `clientgone proxy`: the same break detection for a service in any language,
//! as a reverse proxy in front of it — the same listener, layer and metrics as
//! `demo`, and the upstream request dropped the moment the client is gone.

mod connector;
mod forward;
mod upstream;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::http::uri::Authority;
use axum::routing::any;
use clientgone::{DisconnectLayer, GrpcMethods, UNMATCHED_ROUTE};

pub use crate::routes::{RouteError, RouteTable, openapi_paths};
pub use upstream::{UpstreamMetrics, UpstreamOutcome};

use crate::server::{self, RunningServer, ServerConfig, StartError};
pub use connector::UpstreamTls;
use forward::{Forwarder, forward};
use upstream::UpstreamRoute;

/// Where the proxied service lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    /// `host:port`.
    pub authority: Authority,
    /// The same, as the `Host` header forwarded requests carry.
    pub host: HeaderValue,
    /// A path prefix put before every forwarded path (`""` for none).
    pub base_path: String,
    /// Speak HTTP/2 with prior knowledge (`h2c://` URLs).
    pub h2c: bool,
    /// Speak TLS (`https://` URLs; HTTP/1.1 or HTTP/2 by ALPN).
    pub tls: bool,
}

impl Upstream {
    /// Parses `http://host:port[/prefix]`, `h2c://host:port[/prefix]` or
    /// `https://host[:port][/prefix]`.
    pub fn parse(url: &str) -> Result<Self, String> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e| format!("{e} (write it like http://127.0.0.1:8000)"))?;
        let (h2c, tls) = match uri.scheme_str() {
            Some("http") => (false, false),
            Some("h2c") => (true, false),
            Some("https") => (false, true),
            Some(other) => {
                return Err(format!(
                    "scheme '{other}' is not supported; use http://, https://, or h2c:// for HTTP/2 prior knowledge"
                ));
            }
            None => return Err("no scheme; write it like http://127.0.0.1:8000".into()),
        };
        let authority = uri.authority().ok_or("no host in the URL")?;
        if uri.query().is_some() {
            return Err("an upstream URL takes no query".into());
        }
        if url.contains('#') {
            return Err("an upstream URL takes no fragment".into());
        }
        if authority.as_str().contains('@') {
            return Err(
                "an upstream URL takes no user or password: the proxy would not send them".into(),
            );
        }
        let port = crate::cli::port_or(authority, if tls { 443 } else { 80 })?;
        let host_port = format!("{}:{port}", authority.host());
        let bad = |e: &dyn std::fmt::Display| format!("bad host '{host_port}': {e}");
        Ok(Upstream {
            authority: Authority::try_from(host_port.as_str()).map_err(|e| bad(&e))?,
            host: HeaderValue::from_str(&host_port).map_err(|e| bad(&e))?,
            base_path: uri.path().trim_end_matches('/').to_owned(),
            h2c,
            tls,
        })
    }
}

/// What `clientgone proxy` serves.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// Listeners, options, registry.
    pub server: ServerConfig,
    /// The proxied service.
    pub upstream: Upstream,
    /// The route templates to count under.
    pub routes: RouteTable,
    /// How long the upstream may take to answer (its response head).
    pub upstream_timeout: Duration,
    /// The upstream's gRPC methods (`--grpc-descriptor`): gRPC calls are then
    /// counted as calls, and answered the gRPC way when the upstream fails.
    pub grpc: Option<GrpcMethods>,
    /// Route templates (in `routes` too) and gRPC methods forwarded but left
    /// out of every metric (`--skip-route`).
    pub skip: Vec<String>,
    /// More trusted CA certificates (PEM) for an `https://` upstream
    /// (`--upstream-ca`), beside the system's.
    pub upstream_ca: Option<std::path::PathBuf>,
}

/// The proxy's router: every template forwards through `forwarder`, and so
/// does the fallback (counted as `unmatched`), all inside the same
/// `DisconnectLayer` as any instrumented app.
fn app(
    routes: &RouteTable,
    forwarder_metrics: UpstreamMetrics,
    forwarder: Forwarder,
    grpc: Option<GrpcMethods>,
    skip: Vec<String>,
    layer: DisconnectLayer,
) -> Router {
    let layer = match grpc {
        Some(methods) => layer.grpc(methods),
        None => layer,
    }
    .skip(skip);
    // Each route's handler carries its route's upstream metrics.
    let handler = |route: Arc<UpstreamRoute>| {
        move |state: State<Forwarder>, req: Request| forward(state, route.clone(), req)
    };
    let mut router = Router::new();
    for template in routes.templates() {
        router = router.route(template, any(handler(forwarder_metrics.route(template))));
    }
    router
        .fallback(handler(forwarder_metrics.route(UNMATCHED_ROUTE)))
        .with_state(forwarder)
        .layer(layer)
}

/// Starts the proxy. Fails with a one-line message on a bad address.
pub async fn start(config: ProxyConfig) -> Result<RunningServer, StartError> {
    config.server.buckets.check().map_err(StartError)?;
    let upstream_metrics = UpstreamMetrics::new(
        &config.server.registry,
        &config.server.buckets.request_duration,
    )
    .map_err(|e| StartError(e.to_string()))?;
    let ProxyConfig {
        server,
        upstream,
        routes,
        upstream_timeout,
        grpc,
        skip,
        upstream_ca,
    } = config;
    let upstream_tls = match (upstream.tls, upstream_ca) {
        (true, ca) => Some(UpstreamTls::new(&upstream, ca.as_deref())?),
        (false, Some(_)) => {
            return Err(StartError(
                "--upstream-ca is for an https:// upstream".into(),
            ));
        }
        (false, None) => None,
    };
    // A skipped template is a route too, so its requests match it; a name
    // without a leading '/' is a gRPC method.
    let (templates, methods): (Vec<&String>, Vec<&String>) =
        skip.iter().partition(|s| s.starts_with('/'));
    if let Some(method) = methods.first()
        && grpc.is_none()
    {
        return Err(StartError(format!(
            "--skip-route {method}: a route template starts with '/' \
             (a gRPC method like pkg.Service/Method needs --grpc-descriptor)"
        )));
    }
    let routes = RouteTable::new(templates.into_iter().cloned())
        .and_then(|templates| routes.merge(templates))
        .map_err(|e| StartError(format!("--skip-route: {e}")))?;
    let forwarder = Forwarder::new(
        upstream,
        upstream_timeout,
        grpc.is_some(),
        &skip,
        upstream_tls,
    );
    server::start(server, move |layer| {
        app(&routes, upstream_metrics, forwarder, grpc, skip, layer)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_urls() {
        let u = Upstream::parse("http://127.0.0.1:8000").unwrap();
        assert_eq!(
            (u.authority.as_str(), u.base_path.as_str(), u.h2c),
            ("127.0.0.1:8000", "", false)
        );
        let u = Upstream::parse("h2c://svc/api/").unwrap();
        assert_eq!(
            (u.authority.as_str(), u.base_path.as_str(), u.h2c),
            ("svc:80", "/api", true)
        );
        let u = Upstream::parse("https://x/base").unwrap();
        assert_eq!(
            (u.authority.as_str(), u.base_path.as_str(), u.h2c, u.tls),
            ("x:443", "/base", false, true)
        );
        for bad in [
            "127.0.0.1:8000",
            "http://x/?q=1",
            "ftp://x",
            "http://127.0.0.1:80800",
            "http://user:pw@127.0.0.1:8000",
            "http://127.0.0.1:8000#frag",
        ] {
            assert!(Upstream::parse(bad).is_err(), "{bad}");
        }
    }
}
