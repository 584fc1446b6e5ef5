//! [`TlsAcceptor`]: the TLS handshake of a tracked connection.

use std::io;
use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::sign::SingleCertAndKey;

use super::files::{TlsFileError, load_certified_key};
use super::stream::TrackedTlsStream;
use crate::connection::TrackedStream;

/// Runs the server side of TLS over a [`TrackedStream`], keeping track of
/// the handshake: a connection whose handshake does not complete closes with
/// `reason="tls_handshake"`.
///
/// Give it to [`Serve::tls`](crate::Serve::tls), or call
/// [`accept`](Self::accept) in an accept loop of your own. A `ServerConfig`
/// without ALPN protocols is given `h2` and `http/1.1`.
///
/// ```no_run
/// # async fn run(router: axum::Router) -> Result<(), Box<dyn std::error::Error>> {
/// use axum::extract::ConnectInfo;
/// use clientgone::{TlsAcceptor, TrackedListener};
/// use hyper_util::rt::{TokioExecutor, TokioIo};
/// use hyper_util::server::conn::auto::Builder;
/// use tower::Service;
///
/// let tls = TlsAcceptor::from_pem_files("cert.pem", "key.pem")?;
/// let listener = TrackedListener::without_metrics(tokio::net::TcpListener::bind("0.0.0.0:8443").await?);
/// loop {
///     let (tcp, _) = listener.accept_tracked().await?;
///     let (tls, router) = (tls.clone(), router.clone());
///     tokio::spawn(async move {
///         // Time the handshake out yourself: `clientgone::serve` does it
///         // with the header-read timeout.
///         let Ok(Ok(stream)) = tokio::time::timeout(
///             std::time::Duration::from_secs(10), tls.accept(tcp)).await else { return };
///         let connection = stream.connection().clone();
///         let service = hyper::service::service_fn(move |mut request| {
///             request.extensions_mut().insert(ConnectInfo(connection.clone()));
///             router.clone().call(request)
///         });
///         let _ = Builder::new(TokioExecutor::new())
///             .serve_connection(TokioIo::new(stream), service)
///             .await;
///     });
/// }
/// # }
/// ```
#[derive(Clone)]
pub struct TlsAcceptor {
    inner: tokio_rustls::TlsAcceptor,
}

impl std::fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsAcceptor").finish_non_exhaustive()
    }
}

impl TlsAcceptor {
    /// An acceptor with this rustls configuration (ALPN `h2` and `http/1.1`
    /// added if it names none).
    ///
    /// ```no_run
    /// use std::sync::Arc;
    /// use clientgone::tls::{self, rustls::sign::SingleCertAndKey};
    ///
    /// let key = Arc::new(tls::load_certified_key("cert.pem", "key.pem")?);
    /// let mut config = tls::server_config(Arc::new(SingleCertAndKey::from(key)));
    /// config.alpn_protocols = vec![b"http/1.1".to_vec()]; // HTTP/1.1 only
    /// let acceptor = clientgone::TlsAcceptor::new(Arc::new(config));
    /// # Ok::<(), clientgone::tls::TlsFileError>(())
    /// ```
    pub fn new(config: Arc<ServerConfig>) -> Self {
        let config = if config.alpn_protocols.is_empty() {
            let mut config = (*config).clone();
            config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            Arc::new(config)
        } else {
            config
        };
        TlsAcceptor {
            inner: tokio_rustls::TlsAcceptor::from(config),
        }
    }

    /// An acceptor serving the certificate chain in `cert` with the private
    /// key in `key` (PEM files), TLS 1.2 and 1.3, ALPN `h2` and `http/1.1`.
    ///
    /// ```no_run
    /// let tls = clientgone::TlsAcceptor::from_pem_files("cert.pem", "key.pem")?;
    /// # Ok::<(), clientgone::tls::TlsFileError>(())
    /// ```
    pub fn from_pem_files(
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<Self, TlsFileError> {
        let key = Arc::new(load_certified_key(cert, key)?);
        Ok(Self::new(Arc::new(server_config(Arc::new(
            SingleCertAndKey::from(key),
        )))))
    }

    /// Runs the handshake. On success the stream reads and writes plaintext
    /// and tells the connection what that plaintext shows; on failure (the
    /// client left, or spoke something other than TLS) the connection is
    /// closed and counted as `tls_handshake`.
    pub async fn accept(&self, mut stream: TrackedStream) -> io::Result<TrackedTlsStream> {
        let state = stream.connection().state().clone();
        state.tls_started();
        let plaintext = stream.take_plaintext();
        let tls = self.inner.accept(stream).await?;
        state.tls_established();
        Ok(TrackedTlsStream::new(tls, plaintext))
    }
}

/// A server configuration with the `ring` provider, TLS 1.2 and 1.3, no
/// client certificates, and the certificate `resolver` picks (one that can
/// change while the server runs, for certificate rotation).
///
/// ```no_run
/// use std::sync::Arc;
/// use clientgone::tls::{self, rustls::sign::SingleCertAndKey};
///
/// let key = Arc::new(tls::load_certified_key("cert.pem", "key.pem")?);
/// let config = tls::server_config(Arc::new(SingleCertAndKey::from(key)));
/// let acceptor = clientgone::TlsAcceptor::new(Arc::new(config));
/// # Ok::<(), clientgone::tls::TlsFileError>(())
/// ```
pub fn server_config(resolver: Arc<dyn rustls::server::ResolvesServerCert>) -> ServerConfig {
    ServerConfig::builder_with_provider(super::crypto_provider())
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(resolver)
}
