//! HTTPS for the server commands: the certificate and key files of
//! `--tls-cert`/`--tls-key`, read again on `SIGHUP` (certificate rotation
//! without a restart), and the trust roots of TLS clients (`proxy --upstream
//! https://…`).

use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};

use clientgone::TlsAcceptor;
use clientgone::tls::rustls::server::{ClientHello, ResolvesServerCert};
use clientgone::tls::rustls::sign::CertifiedKey;
use clientgone::tls::{self as cgtls, TlsFileError};
use tokio_util::sync::CancellationToken;

/// The PEM files a server serves HTTPS with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, the server's own certificate first.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
}

/// The certificate in force, replaced whole when the files are read again.
/// A handshake takes the one in force when it starts: open connections keep
/// theirs.
#[derive(Debug)]
pub struct ReloadingCertificate {
    files: TlsFiles,
    current: RwLock<Arc<CertifiedKey>>,
}

impl ReloadingCertificate {
    /// Reads the files; an error names the file and what is wrong with it.
    pub fn load(files: TlsFiles) -> Result<Self, TlsFileError> {
        let key = cgtls::load_certified_key(&files.cert, &files.key)?;
        Ok(ReloadingCertificate {
            files,
            current: RwLock::new(Arc::new(key)),
        })
    }

    /// Reads the files again. On an error the certificate in force stays.
    pub fn reload(&self) -> Result<(), TlsFileError> {
        let key = cgtls::load_certified_key(&self.files.cert, &self.files.key)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(key);
        Ok(())
    }

    /// The files it reads.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }
}

impl ResolvesServerCert for ReloadingCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
    }
}

/// The acceptor for `files`, and the certificate it serves (to reload).
pub fn acceptor(files: TlsFiles) -> Result<(TlsAcceptor, Arc<ReloadingCertificate>), TlsFileError> {
    let certificate = Arc::new(ReloadingCertificate::load(files)?);
    let config = cgtls::server_config(certificate.clone());
    Ok((TlsAcceptor::new(Arc::new(config)), certificate))
}

/// Reads the certificate again on every `SIGHUP` until `stop`, with one log
/// line for each: the files it read, or why it kept the old certificate.
pub fn reload_on_sighup(certificate: Arc<ReloadingCertificate>, stop: CancellationToken) {
    let mut hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => signal,
        Err(e) => {
            eprintln!(
                "clientgone: cannot listen for SIGHUP, certificates will not be reloaded: {e}"
            );
            return;
        }
    };
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                hangup = hangups.recv() => if hangup.is_none() { return },
            }
            let files = certificate.files();
            match certificate.reload() {
                Ok(()) => eprintln!(
                    "clientgone: SIGHUP: serving the certificate in {} from now on",
                    files.cert.display()
                ),
                Err(e) => eprintln!("clientgone: SIGHUP: kept the old certificate: {e}"),
            }
        }
    });
}
