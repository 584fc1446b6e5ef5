//! The `clientgone` binary's commands, as a library so tests can run them in-process.

#![warn(missing_docs)]
// One `unsafe` block, in `watch`: registering the ring buffer with tokio.
#![deny(unsafe_code)]

pub mod cli;
pub mod demo;
pub mod proxy;
pub mod routes;
pub mod runtime;
pub mod server;
pub mod tls;
pub mod traffic;
pub mod watch;
