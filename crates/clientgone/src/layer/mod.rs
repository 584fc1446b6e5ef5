//! The request side: one guard per request, carried from the service through
//! the response future into the response body (tower-http's folder shape).

mod body;
mod future;
mod guard;
#[allow(clippy::module_inception)]
mod layer;
mod request_body;
mod service;
mod span;

pub use body::ResponseBody;
pub use future::ResponseFuture;
pub use layer::DisconnectLayer;
pub use request_body::RequestBody;
pub use service::DisconnectService;
pub(crate) use service::RequestHandle;
pub use span::{
    DISCONNECT_EVENT, DeferredTracer, StartSampler, export_call_span, export_request_span,
};
