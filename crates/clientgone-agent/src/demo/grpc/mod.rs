//! The demo's gRPC service, `clientgone.demo.v1.Demo`: one method of each
//! gRPC type, served over h2c on the demo's port beside its HTTP routes.
//!
//! The message types and the server are generated from
//! `proto/clientgone/demo/v1/demo.proto` and committed (`clientgone.demo.v1.rs`,
//! with its descriptor set `demo.bin`), so building needs no protoc; a test
//! (`tests/tests/proto.rs`) checks they are what the .proto compiles to.

use std::pin::Pin;
use std::time::Duration;

use clientgone::GrpcMethods;
use futures_util::{Stream, StreamExt, stream};
use tonic::{Request, Response, Status, Streaming};

use super::{MAX_CHUNKS, MAX_DELAY_MS};

/// The generated messages, server and client of `clientgone.demo.v1`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    include!("clientgone.demo.v1.rs");
}

/// The encoded `FileDescriptorSet` of `demo.proto`.
pub const DESCRIPTOR_SET: &[u8] = include_bytes!("demo.bin");

/// The request path prefix of the service's methods.
pub const SERVICE_PATH: &str = "/clientgone.demo.v1.Demo";

/// The demo's methods, each with its type, for `DisconnectLayer::grpc`.
pub fn methods() -> GrpcMethods {
    // The descriptor set is compiled in and checked by tests/tests/proto.rs.
    GrpcMethods::from_file_descriptor_set(DESCRIPTOR_SET)
        .expect("the committed demo descriptor set lists the Demo service")
}

/// The tonic service, ready to route.
pub fn service() -> pb::demo_server::DemoServer<DemoService> {
    pb::demo_server::DemoServer::new(DemoService)
}

/// The handlers of `clientgone.demo.v1.Demo`.
#[derive(Debug, Clone, Copy, Default)]
pub struct DemoService;

type Boxed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl pb::demo_server::Demo for DemoService {
    /// Answers after `delay_ms` (default 5000), or `DEADLINE_EXCEEDED` at
    /// the client's deadline if that comes first.
    async fn wait(
        &self,
        request: Request<pb::WaitRequest>,
    ) -> Result<Response<pb::WaitReply>, Status> {
        let delay = match request.get_ref().delay_ms {
            0 => 5000,
            ms => u64::from(ms),
        };
        if delay > MAX_DELAY_MS {
            return Err(Status::invalid_argument(format!(
                "delay_ms must be at most {MAX_DELAY_MS}"
            )));
        }
        let delay = Duration::from_millis(delay);
        // As gRPC servers in Go and Java do, the call ends at the client's
        // deadline: nobody waits for the answer after it.
        if let Some(deadline) = clientgone::grpc_timeout(request.metadata().as_ref())
            && deadline < delay
        {
            tokio::time::sleep(deadline).await;
            return Err(Status::deadline_exceeded("the call's deadline ran out"));
        }
        tokio::time::sleep(delay).await;
        Ok(Response::new(pb::WaitReply {
            message: "Hello, World!".into(),
        }))
    }

    type TicksStream = Boxed<pb::Tick>;

    /// `count` ticks (default 10), `interval_ms` apart (default 500).
    async fn ticks(
        &self,
        request: Request<pb::TicksRequest>,
    ) -> Result<Response<Self::TicksStream>, Status> {
        let params = request.get_ref();
        let count = match params.count {
            0 => 10,
            n => u64::from(n),
        };
        let interval = match params.interval_ms {
            0 => 500,
            ms => u64::from(ms),
        };
        if count > MAX_CHUNKS {
            return Err(Status::invalid_argument(format!(
                "count must be at most {MAX_CHUNKS}"
            )));
        }
        if interval > MAX_DELAY_MS {
            return Err(Status::invalid_argument(format!(
                "interval_ms must be at most {MAX_DELAY_MS}"
            )));
        }
        let interval = Duration::from_millis(interval);
        let ticks = stream::iter(0..count).then(move |n| async move {
            if n > 0 {
                tokio::time::sleep(interval).await;
            }
            Ok(pb::Tick { n: n as u32 })
        });
        Ok(Response::new(Box::pin(ticks)))
    }

    /// Reads every chunk; answers their total size.
    async fn upload(
        &self,
        request: Request<Streaming<pb::Chunk>>,
    ) -> Result<Response<pb::UploadReply>, Status> {
        let mut chunks = request.into_inner();
        let mut bytes = 0u64;
        while let Some(chunk) = chunks.message().await? {
            bytes += chunk.data.len() as u64;
        }
        Ok(Response::new(pb::UploadReply { bytes }))
    }

    type EchoStream = Boxed<pb::Chunk>;

    /// Sends each chunk back as it arrives.
    async fn echo(
        &self,
        request: Request<Streaming<pb::Chunk>>,
    ) -> Result<Response<Self::EchoStream>, Status> {
        Ok(Response::new(Box::pin(request.into_inner())))
    }
}
