//! The socket side: accept, set options, record what the socket says.

mod h2_frames;
mod hooks;
mod listener;
mod options;
mod send_queue;
mod state;
mod stream;

pub use hooks::ClientLeftHook;
pub use listener::TrackedListener;
pub use options::ConnectionOptions;
pub use state::ConnectionState;
#[cfg(feature = "tls")]
pub(crate) use stream::PlaintextReader;
pub use stream::{TrackedConnection, TrackedStream};
