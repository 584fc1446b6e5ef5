//! HTTPS: TLS with rustls (the `ring` provider) above the tracked socket.
//!
//! The [`TrackedStream`](crate::TrackedStream) stays beneath TLS and keeps
//! every TCP fact — FIN, reset, keepalive and user timeouts, the send queue —
//! while the [`TrackedTlsStream`] above reads the *plaintext*: request heads
//! and the HTTP/2 frames that carry a client's `RST_STREAM`. So every cause
//! means under TLS what it means in plaintext. A connection whose handshake
//! never completes closes with `reason="tls_handshake"`, never as a request
//! break.
//!
//! With [`clientgone::serve`](crate::serve()), one call:
//!
//! ```no_run
//! # async fn run(app: axum::Router, metrics: clientgone::Metrics) -> Result<(), Box<dyn std::error::Error>> {
//! use clientgone::{TlsAcceptor, TrackedListener};
//!
//! let tls = TlsAcceptor::from_pem_files("cert.pem", "key.pem")?;
//! let listener = TrackedListener::bind("0.0.0.0:8443", &metrics).await?;
//! clientgone::serve(listener, app).tls(tls).await?;
//! # Ok(()) }
//! ```
//!
//! With an accept loop of your own, [`TlsAcceptor::accept`] takes the
//! tracked stream and gives back the TLS one.

mod acceptor;
mod files;
mod stream;

pub use acceptor::{TlsAcceptor, server_config};
pub use files::{TlsFileError, client_config, load_certificates, load_certified_key};
/// The rustls this crate was built with, for a `ServerConfig` of your own.
pub use rustls;
pub use stream::TrackedTlsStream;

/// The cryptography every TLS connection here uses: rustls's `ring` provider
/// (a C compiler is all it needs to build, where aws-lc also needs cmake).
pub fn crypto_provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    // rustls 0.23.48 deprecates ring's provider for lacking post-quantum key
    // exchange; aws-lc-rs, which has it, needs cmake to build, and a Rust
    // toolchain alone must build clientgone. TLS 1.3 with X25519 it is.
    #[allow(deprecated)]
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}
