//! TLS to `https://` collectors: the system's trusted roots, plus the CA file
//! and the client certificate (mutual TLS) of the standard variables, for
//! both transports — tonic's channel for gRPC, hyper-rustls for HTTP.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;

use super::StartError;

/// TLS for `https://` endpoints, beside the system's trusted roots. Each file
/// is read (and checked) when the exporter starts.
///
/// ```
/// use clientgone_exporter::otlp::{OtlpConfig, OtlpProtocol, OtlpTls};
///
/// let tls = OtlpTls::default()
///     .certificate("/etc/otel/ca.pem")
///     .client_certificate("/etc/otel/client.pem", "/etc/otel/client-key.pem");
/// let config = OtlpConfig::new(OtlpProtocol::Grpc)
///     .endpoint("https://collector.example:4317")
///     .tls(tls);
/// assert!(config.tls.client.is_some());
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct OtlpTls {
    /// More trusted CA certificates, PEM (`OTEL_EXPORTER_OTLP_CERTIFICATE`).
    pub certificate: Option<PathBuf>,
    /// A client certificate chain and its private key, PEM, for mutual TLS
    /// (`OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE`, `OTEL_EXPORTER_OTLP_CLIENT_KEY`).
    pub client: Option<(PathBuf, PathBuf)>,
}

impl OtlpTls {
    /// Trusts the CA certificates in this PEM file too.
    pub fn certificate(mut self, path: impl Into<PathBuf>) -> Self {
        self.certificate = Some(path.into());
        self
    }

    /// Presents this client certificate (PEM chain) with its key: mutual TLS.
    pub fn client_certificate(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.client = Some((cert.into(), key.into()));
        self
    }

    fn client(&self) -> Option<(&Path, &Path)> {
        self.client
            .as_ref()
            .map(|(c, k)| (c.as_path(), k.as_path()))
    }

    /// A rustls client configuration with these files (checked here).
    fn rustls(&self) -> Result<clientgone::tls::rustls::ClientConfig, StartError> {
        clientgone::tls::client_config(self.certificate.as_deref(), self.client())
            .map_err(|e| StartError(format!("OTLP TLS: {e}")))
    }
}

/// Whether `endpoint` asks for TLS.
pub(crate) fn is_https(endpoint: &str) -> bool {
    endpoint
        .get(..8)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"))
}

/// A gRPC channel to `endpoint`, with TLS when it is `https://`.
pub(crate) fn grpc_channel(
    endpoint: &str,
    tls: &OtlpTls,
    timeout: Duration,
) -> Result<tonic::transport::Channel, StartError> {
    let bad = |e: &dyn std::fmt::Display| StartError(format!("OTLP endpoint '{endpoint}': {e}"));
    let mut channel = tonic::transport::Endpoint::from_shared(endpoint.to_owned())
        .map_err(|e| bad(&e))?
        .connect_timeout(timeout)
        .timeout(timeout);
    if is_https(endpoint) {
        // Checked with our reader first: tonic reads the files only at the
        // first connection, and says less about what is wrong.
        tls.rustls()?;
        let read = |path: &Path| {
            std::fs::read(path).map_err(|e| {
                StartError(format!(
                    "OTLP TLS: {}: cannot read it ({e})",
                    path.display()
                ))
            })
        };
        let mut config = tonic::transport::ClientTlsConfig::new().with_native_roots();
        if let Some(ca) = &tls.certificate {
            config = config.ca_certificate(tonic::transport::Certificate::from_pem(read(ca)?));
        }
        if let Some((cert, key)) = tls.client() {
            config = config.identity(tonic::transport::Identity::from_pem(
                read(cert)?,
                read(key)?,
            ));
        }
        channel = channel.tls_config(config).map_err(|e| bad(&e))?;
    }
    Ok(channel.connect_lazy())
}

/// The connector of the OTLP/HTTP clients: plain for `http://`, TLS with
/// these files for `https://` (HTTP/1.1 or HTTP/2 by ALPN).
pub(crate) fn http_connector(
    tls: &OtlpTls,
    connect_timeout: Duration,
) -> Result<HttpsConnector<HttpConnector>, StartError> {
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(connect_timeout));
    // https:// URIs go through to the TLS layer above.
    http.enforce_http(false);
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls.rustls()?)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http))
}
