//! `receive`: the discarding OTLP receiver of the traced configurations, in a
//! process of its own.
//!
//! A real collector runs elsewhere; run inside the server's process (and on its
//! one CPU) it would charge the server with decoding every export. So the
//! launcher starts one receiver per traced configuration, pinned beside the
//! load generator, passes its endpoint to the server, and asks it afterwards
//! how many spans arrived (`GET /spans`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::routing::get;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tokio::net::TcpListener;

use crate::servers::{ChildProcess, http_get};

struct Discard(Arc<AtomicU64>);

#[tonic::async_trait]
impl TraceService for Discard {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let n: usize = request
            .get_ref()
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .map(|ss| ss.spans.len())
            .sum();
        self.0.fetch_add(n as u64, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// Runs the receiver until its launcher goes away (its stdin closes).
pub fn receive() -> Result<(), String> {
    crate::servers::exit_with_launcher();
    let runtime = crate::runtime(None)?;
    runtime.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("cannot bind the OTLP receiver: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let spans = Arc::new(AtomicU64::new(0));
        let count = spans.clone();
        // gRPC (HTTP/2 prior knowledge) and the plain `GET /spans` on one port.
        let app = tonic::service::Routes::new(TraceServiceServer::new(Discard(spans)))
            .into_axum_router()
            .route(
                "/spans",
                get(move || {
                    let count = count.clone();
                    async move { count.load(Ordering::Relaxed).to_string() }
                }),
            );
        crate::servers::announce(addr);
        axum::serve(listener, app).await.map_err(|e| e.to_string())
    })
}

/// A receiver in a child process. Killed on drop.
pub struct ReceiverProcess {
    process: ChildProcess,
}

impl ReceiverProcess {
    /// Starts a receiver, pinned to `cpu` when given.
    pub fn spawn(cpu: Option<u32>) -> Result<Self, String> {
        Ok(ReceiverProcess {
            process: ChildProcess::spawn(&["receive"], cpu, "OTLP receiver")?,
        })
    }

    /// The OTLP/gRPC endpoint to export to.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr())
    }

    fn addr(&self) -> SocketAddr {
        self.process.addr
    }

    /// Spans received so far.
    pub fn spans_received(&self) -> Result<u64, String> {
        let body = http_get(self.addr(), "/spans")?;
        body.trim()
            .parse()
            .map_err(|_| format!("bad span count '{body}'"))
    }
}
