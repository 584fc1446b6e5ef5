//! gRPC: the vocabulary of a call — its method ([`GrpcMethods`]), its
//! [`RpcType`], its [`GrpcStatus`] and the client's deadline — for
//! [`DisconnectLayer::grpc`](crate::DisconnectLayer::grpc), which counts
//! calls in the `rpc_server_*` metrics.
//!
//! Nothing here needs tonic: a gRPC call is an HTTP/2 request whose
//! `content-type` is `application/grpc`, and the layer reads it as such. The
//! `grpc` feature adds what ties it to tonic and protobuf: descriptor sets,
//! tonic's `Connected` for [`TrackedStream`](crate::TrackedStream), and
//! [`ClientGone::from_tonic`](crate::ClientGone::from_tonic).

mod methods;
mod status;
mod timeout;
#[cfg(feature = "grpc")]
mod tonic;

pub use methods::{GrpcMethods, GrpcMethodsError, OTHER_METHOD, RpcType};
pub use status::{GrpcStatus, call_status};
pub(crate) use timeout::parse_grpc_timeout;
pub use timeout::{deadline_reached, grpc_timeout_value};

/// The deadline a gRPC client gave its call: its `grpc-timeout` header, from
/// the call's arrival. `None` without one, or for a malformed one.
///
/// ```
/// use std::time::Duration;
///
/// let mut headers = http::HeaderMap::new();
/// headers.insert("grpc-timeout", "250m".parse().unwrap());
/// assert_eq!(clientgone::grpc_timeout(&headers), Some(Duration::from_millis(250)));
/// ```
pub fn grpc_timeout(headers: &http::HeaderMap) -> Option<std::time::Duration> {
    headers.get(GRPC_TIMEOUT).and_then(parse_grpc_timeout)
}

/// Built once: a `&str` name is parsed into a header name at every lookup.
const GRPC_TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");
#[cfg(feature = "grpc")]
pub(crate) use tonic::tcp_connect_info;

/// Whether a request is a gRPC call: its `content-type` is
/// `application/grpc`, alone or with a `+codec` suffix.
///
/// ```
/// let call = http::Request::builder()
///     .header("content-type", "application/grpc+proto")
///     .body(())
///     .unwrap();
/// assert!(clientgone::is_grpc_request(&call));
/// assert!(!clientgone::is_grpc_request(&http::Request::new(())));
/// ```
pub fn is_grpc_request<B>(req: &http::Request<B>) -> bool {
    req.headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| {
            let v = v.as_bytes();
            v.len() >= 16
                && v[..16].eq_ignore_ascii_case(b"application/grpc")
                && matches!(v.get(16), None | Some(b'+' | b';'))
        })
}
