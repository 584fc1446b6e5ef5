//! Certificates and keys read from PEM files, with errors that name the
//! file and say what is wrong with it.

use std::fmt;
use std::path::{Path, PathBuf};

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// A certificate, key or CA file that cannot be used, and why.
///
/// ```
/// let error = clientgone::tls::load_certificates("/nonexistent/ca.pem").unwrap_err();
/// assert!(error.to_string().starts_with("/nonexistent/ca.pem: cannot read it"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFileError {
    path: PathBuf,
    message: String,
}

impl TlsFileError {
    /// An error about `path`, for checks of your own on these files.
    pub fn from_message(path: &Path, message: impl Into<String>) -> Self {
        Self::new(path, message)
    }

    fn new(path: &Path, message: impl Into<String>) -> Self {
        TlsFileError {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }

    /// The file at fault.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl fmt::Display for TlsFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.message)
    }
}

impl std::error::Error for TlsFileError {}

fn pem_error(path: &Path, what: &str, error: pem::Error) -> TlsFileError {
    match error {
        pem::Error::Io(e) => TlsFileError::new(path, format!("cannot read it ({e})")),
        pem::Error::NoItemsFound => TlsFileError::new(
            path,
            format!(
                "holds no {what} (expected a PEM block such as -----BEGIN {}-----)",
                if what.contains("key") {
                    "PRIVATE KEY"
                } else {
                    "CERTIFICATE"
                }
            ),
        ),
        other => TlsFileError::new(path, format!("is not valid PEM ({other})")),
    }
}

/// Every certificate in a PEM file, in order: a server's chain (its own
/// certificate first), or a bundle of trusted CAs.
///
/// ```
/// # let dir = std::env::temp_dir().join(format!("clientgone-doc-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir).unwrap();
/// let empty = dir.join("empty.pem");
/// std::fs::write(&empty, "not a certificate\n").unwrap();
/// let error = clientgone::tls::load_certificates(&empty).unwrap_err();
/// assert!(error.to_string().contains("holds no certificate"));
/// ```
pub fn load_certificates(
    path: impl AsRef<Path>,
) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let path = path.as_ref();
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(path, "certificate", e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, "certificate", e))?;
    if certificates.is_empty() {
        return Err(pem_error(path, "certificate", pem::Error::NoItemsFound));
    }
    Ok(certificates)
}

/// A server's certificate chain and its private key (PKCS#8, PKCS#1 or
/// SEC1), checked to belong together.
///
/// ```no_run
/// let key = clientgone::tls::load_certified_key("cert.pem", "key.pem")?;
/// println!("{} certificates in the chain", key.cert.len());
/// # Ok::<(), clientgone::tls::TlsFileError>(())
/// ```
pub fn load_certified_key(
    cert: impl AsRef<Path>,
    key: impl AsRef<Path>,
) -> Result<CertifiedKey, TlsFileError> {
    let (cert, key) = (cert.as_ref(), key.as_ref());
    let chain = load_certificates(cert)?;
    let private_key =
        PrivateKeyDer::from_pem_file(key).map_err(|e| pem_error(key, "private key", e))?;
    CertifiedKey::from_der(chain, private_key, &super::crypto_provider()).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => TlsFileError::new(
            key,
            format!("is not the key of the certificate in {}", cert.display()),
        ),
        other => TlsFileError::new(key, format!("cannot be used ({other})")),
    })
}

/// A TLS client's configuration: the `ring` provider, TLS 1.2 and 1.3, the
/// system's trusted roots plus the certificates in `extra_roots` (PEM), and a
/// client certificate with its key for mutual TLS. ALPN is left empty: set
/// what the protocol needs (`h2` for gRPC).
///
/// ```no_run
/// let config = clientgone::tls::client_config(Some("ca.pem".as_ref()), None)?;
/// # Ok::<(), clientgone::tls::TlsFileError>(())
/// ```
pub fn client_config(
    extra_roots: Option<&Path>,
    client_certificate: Option<(&Path, &Path)>,
) -> Result<rustls::ClientConfig, TlsFileError> {
    let mut roots = rustls::RootCertStore::empty();
    // The system's certificates that do not parse are skipped, as every TLS
    // client does; a system with none leaves `extra_roots` alone.
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if let Some(path) = extra_roots {
        for certificate in load_certificates(path)? {
            roots.add(certificate).map_err(|e| {
                TlsFileError::new(
                    path,
                    format!("holds a certificate that cannot be a trusted root ({e})"),
                )
            })?;
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(super::crypto_provider())
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports TLS 1.2 and 1.3")
        .with_root_certificates(roots);
    Ok(match client_certificate {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            // Checked as a server's would be: the key must be the certificate's.
            let certified = load_certified_key(cert, key)?;
            let private_key =
                PrivateKeyDer::from_pem_file(key).map_err(|e| pem_error(key, "private key", e))?;
            builder
                .with_client_auth_cert(certified.cert, private_key)
                .map_err(|e| TlsFileError::new(key, format!("cannot be used ({e})")))?
        }
    })
}
