//! `bare-proxy`: the stack `clientgone proxy` is built on, without clientgone —
//! axum served by `axum::serve`, forwarding through hyper-util's legacy client
//! on the same runtime `clientgone` picks (one CPU: tokio's current-thread
//! scheduler). It does what the bench's nginx does and nothing more: replace
//! `Host`, drop `Connection`, forward, stream the answer back.
//!
//! It answers the question the nginx comparison cannot: how much of the gap
//! to nginx is the stack's (hyper's server and hyper-util's client, which the
//! issue prescribes), and how much is clientgone's own work (the tracked
//! listener, `DisconnectLayer`, the upstream metrics, header handling, the
//! early cancel).

use std::net::SocketAddr;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::uri::{Authority, Scheme};
use http::{HeaderValue, StatusCode, Uri, Version, header};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;

use crate::servers::announce;

/// Flags of the hidden `bare-proxy` subcommand.
#[derive(Debug, clap::Args)]
pub struct BareProxyArgs {
    /// The upstream, `HOST:PORT`.
    #[arg(long)]
    pub upstream: SocketAddr,
}

#[derive(Clone)]
struct Forward {
    client: Client<HttpConnector, Body>,
    authority: Authority,
    host: HeaderValue,
}

/// Runs the proxy until its launcher goes away (its stdin closes).
pub fn serve(args: &BareProxyArgs) -> Result<(), String> {
    crate::servers::exit_with_launcher();
    let runtime =
        clientgone_agent::runtime::build().map_err(|e| format!("cannot start the runtime: {e}"))?;
    let upstream = args.upstream.to_string();
    let authority = Authority::try_from(upstream.as_str()).map_err(|e| e.to_string())?;
    let host = HeaderValue::from_str(&upstream).map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        // The same pool settings as `clientgone proxy`.
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(std::time::Duration::from_secs(60))
            .build(connector);
        let app = Router::new().fallback(forward).with_state(Forward {
            client,
            authority,
            host,
        });
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("cannot bind the bare proxy: {e}"))?;
        announce(listener.local_addr().map_err(|e| e.to_string())?);
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, app).await.map_err(|e| e.to_string())
    })
}

async fn forward(State(f): State<Forward>, req: Request) -> Response {
    let (mut parts, body) = req.into_parts();
    let mut uri = Uri::builder()
        .scheme(Scheme::HTTP)
        .authority(f.authority.clone());
    if let Some(pq) = parts.uri.path_and_query() {
        uri = uri.path_and_query(pq.clone());
    }
    parts.uri = match uri.build() {
        Ok(uri) => uri,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    parts.headers.remove(header::CONNECTION);
    parts.headers.insert(header::HOST, f.host.clone());
    parts.version = Version::HTTP_11;
    match f.client.request(Request::from_parts(parts, body)).await {
        Ok(response) => response.map(Body::new).into_response(),
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}
