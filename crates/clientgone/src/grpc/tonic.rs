//! What ties the layer to tonic's own server: [`Connected`] for
//! [`TrackedStream`], so `Server::serve_with_incoming(TrackedListener)` hands
//! every request its [`TrackedConnection`].

use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::connection::{TrackedConnection, TrackedStream};

/// tonic puts the connection's info into every request's extensions, where
/// [`DisconnectLayer`](crate::DisconnectLayer) finds it (and adds tonic's
/// [`TcpConnectInfo`], so `tonic::Request::remote_addr` still answers).
///
/// ```no_run
/// # mod pb { pub fn greeter() -> tonic::service::Routes { tonic::service::Routes::default() } }
/// use clientgone::{DisconnectLayer, GrpcMethods, Metrics, TrackedListener};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let registry = prometheus::Registry::new();
/// let metrics = Metrics::new(&registry)?;
/// let methods = GrpcMethods::from_file_descriptor_set(&std::fs::read("greeter.bin")?)?;
/// let listener = TrackedListener::bind("127.0.0.1:50051", &metrics).await?;
/// tonic::transport::Server::builder()
///     .layer(DisconnectLayer::new(metrics).grpc(methods))
///     .add_routes(pb::greeter())
///     .serve_with_incoming(listener.into_incoming())
///     .await?;
/// # Ok(()) }
/// ```
impl Connected for TrackedStream {
    type ConnectInfo = TrackedConnection;

    fn connect_info(&self) -> TrackedConnection {
        self.connection().clone()
    }
}

/// tonic's own connect info for a request that came with a `TrackedConnection`.
pub(crate) fn tcp_connect_info(connection: &TrackedConnection) -> TcpConnectInfo {
    TcpConnectInfo {
        local_addr: connection.local_addr(),
        remote_addr: Some(connection.remote_addr()),
    }
}
