//! The `clientgone` binary's commands, as a library so tests can run them in-process.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod cli;
pub mod demo;
pub mod proxy;
pub mod runtime;
pub mod server;
pub mod traffic;
