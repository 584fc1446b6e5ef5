//! A test PKI made with rcgen: a CA, a server certificate for `localhost` and
//! 127.0.0.1 signed by it, a client certificate (mutual TLS), and a second CA
//! nobody trusts — all written as PEM files into a fresh directory.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};

/// PEM files of one test PKI, in `dir`.
#[derive(Debug)]
pub struct Pki {
    /// The directory holding every file.
    pub dir: PathBuf,
    /// The trusted CA's certificate.
    pub ca: PathBuf,
    /// The server's certificate (CN `clientgone test server 1`) and key.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// A client certificate and key signed by the same CA.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// A server certificate and key signed by a CA nobody trusts.
    pub untrusted_cert: PathBuf,
    pub untrusted_key: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

/// A self-signed CA: its certificate (PEM) and what signs with it.
fn ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("no names");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let key = KeyPair::generate().expect("a key");
    let cert = params.self_signed(&key).expect("a CA");
    (cert.pem(), Issuer::new(params, key))
}

fn leaf(
    common_name: &str,
    usage: ExtendedKeyUsagePurpose,
    issuer: &Issuer<'_, impl rcgen::SigningKey>,
) -> (String, String) {
    let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .expect("valid names");
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate().expect("a key");
    let cert = params.signed_by(&key, issuer).expect("signed");
    (cert.pem(), key.serialize_pem())
}

impl Pki {
    /// A fresh PKI in a new directory under the system's temporary one.
    pub fn new(name: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!(
            "clientgone-pki-{name}-{}-{}",
            std::process::id(),
            fastrand_suffix()
        ));
        std::fs::create_dir_all(&dir).expect("create the PKI directory");
        let (trusted_pem, trusted) = ca("clientgone test CA");
        let (_, other) = ca("a CA nobody trusts");
        let write = |file: &str, text: &str| {
            let path = dir.join(file);
            std::fs::write(&path, text).expect("write a PEM file");
            path
        };
        let ca = write("ca.pem", &trusted_pem);
        let (cert, key) = leaf(
            "clientgone test server 1",
            ExtendedKeyUsagePurpose::ServerAuth,
            &trusted,
        );
        let (cert, key) = (write("server.pem", &cert), write("server-key.pem", &key));
        let (client, client_key) = leaf(
            "clientgone test client",
            ExtendedKeyUsagePurpose::ClientAuth,
            &trusted,
        );
        let (client_cert, client_key) = (
            write("client.pem", &client),
            write("client-key.pem", &client_key),
        );
        let (untrusted, untrusted_key) = leaf(
            "an untrusted server",
            ExtendedKeyUsagePurpose::ServerAuth,
            &other,
        );
        let (untrusted_cert, untrusted_key) = (
            write("untrusted.pem", &untrusted),
            write("untrusted-key.pem", &untrusted_key),
        );
        Pki {
            ca,
            cert,
            key,
            client_cert,
            client_key,
            untrusted_cert,
            untrusted_key,
            issuer: trusted,
            dir,
        }
    }

    /// Issues a new server certificate named `common_name` from the same CA,
    /// written to `cert` and `key` in place (a rotation).
    pub fn rotate(&self, common_name: &str) {
        let (cert, key) = leaf(
            common_name,
            ExtendedKeyUsagePurpose::ServerAuth,
            &self.issuer,
        );
        // The key first: a reload between the two writes fails its check
        // (key and certificate disagree) and keeps the old pair.
        std::fs::write(&self.key, key).expect("write the new key");
        std::fs::write(&self.cert, cert).expect("write the new certificate");
    }

    /// A file in the PKI's directory.
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn fastrand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The PEM text of the certificate in `path`.
pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).expect("read a PEM file")
}

/// tests/tls/tls_client.py: Python's `ssl` (OpenSSL) as the client.
pub const TLS_CLIENT_PY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tls/tls_client.py");

/// One run of tests/tls/tls_client.py, killed when dropped.
pub struct TlsClient {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl TlsClient {
    /// Starts `tls_client.py HOST PORT MODE ARGS…` (see the script).
    pub fn start(addr: std::net::SocketAddr, mode: &str, args: &[&str]) -> Self {
        Self::start_with(addr, mode, args, None)
    }

    fn start_with(
        addr: std::net::SocketAddr,
        mode: &str,
        args: &[&str],
        ca: Option<&Path>,
    ) -> Self {
        use std::process::{Command, Stdio};
        let mut command = Command::new("python3");
        if let Some(ca) = ca {
            command.env("CLIENT_CA", ca);
        }
        let mut child = command
            .arg(TLS_CLIENT_PY)
            .args([addr.ip().to_string(), addr.port().to_string()])
            .arg(mode)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn python3");
        let stdin = child.stdin.take().unwrap();
        let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        TlsClient {
            child,
            stdin,
            stdout,
        }
    }

    /// Its next line of output ("" once it exited).
    pub fn line(&mut self) -> String {
        use std::io::BufRead;
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .expect("the client's output");
        line.trim_end().to_owned()
    }

    /// A keep-alive connection verified against `ca`, and the common name of
    /// the certificate the server presented on it.
    pub fn session(addr: std::net::SocketAddr, ca: &Path) -> (Self, String) {
        let mut client = TlsClient::start_with(addr, "session", &[], Some(ca));
        let line = client.line();
        let cn = line
            .strip_prefix("cn=")
            .unwrap_or_else(|| panic!("the session did not start: {line:?}"))
            .to_owned();
        (client, cn)
    }

    /// One GET on a `session`'s connection: its status.
    pub fn get(&mut self, path: &str) -> u16 {
        self.tell(path);
        let line = self.line();
        line.parse()
            .unwrap_or_else(|_| panic!("no status for {path}: {line:?}"))
    }

    /// Sends the request (or cuts the handshake), and returns once it is sent.
    pub fn hold(addr: std::net::SocketAddr, mode: &str, args: &[&str]) -> Self {
        let mut client = TlsClient::start(addr, mode, args);
        let line = client.line();
        assert!(line == "sent" || line == "reading", "client said {line:?}");
        client
    }

    /// Tells the held client a line ("fin", "rst", or what its mode reads).
    pub fn tell(&mut self, line: &str) {
        use std::io::Write;
        writeln!(self.stdin, "{line}").expect("the client reads its stdin");
    }

    /// Ends the held connection: "fin" or "rst".
    pub fn close(mut self, how: &str) {
        self.tell(how);
        assert_eq!(self.line(), "", "the client exits");
    }
}

impl Drop for TlsClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One keep-alive connection, a GET per path, then a FIN: the statuses.
pub fn requests(addr: std::net::SocketAddr, paths: &[String]) -> Vec<u16> {
    let args: Vec<&str> = paths.iter().map(String::as_str).collect();
    let mut client = TlsClient::start(addr, "requests", &args);
    (0..paths.len())
        .map(|_| client.line().parse().expect("a status"))
        .collect()
}

/// tests/tls/h2_tls_client.py: Python's `h2` over `ssl`.
pub const H2_TLS_CLIENT_PY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tls/h2_tls_client.py");

/// An HTTP/2 client over TLS (ALPN `h2`) that has sent a GET and waits to
/// reset it; killed when dropped.
pub struct H2TlsClient {
    child: std::process::Child,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl H2TlsClient {
    /// Connects to `addr` (verified against `ca`, or not at all with `None`)
    /// and GETs `slow` on stream 1; returns once it is sent.
    pub fn start(addr: std::net::SocketAddr, ca: Option<&Path>, slow: &str, fast: &str) -> Self {
        use std::io::BufRead;
        use std::process::{Command, Stdio};
        let mut child = Command::new("python3")
            .arg(H2_TLS_CLIENT_PY)
            .args([addr.ip().to_string(), addr.port().to_string()])
            .arg(ca.map_or_else(|| "-".into(), |p| p.as_os_str().to_owned()))
            .args([slow, fast])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs the h2 client");
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert_eq!(
            line.trim(),
            "sent",
            "the h2 client could not send its request"
        );
        H2TlsClient { child, stdout }
    }

    /// Resets the first stream, GETs the second path on the same connection,
    /// and returns its status once the client has closed.
    pub fn reset_then_get(mut self) -> String {
        use std::io::{BufRead, Write};
        writeln!(self.child.stdin.take().unwrap(), "reset").unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        assert!(self.child.wait().unwrap().success(), "the h2 client failed");
        line.trim().to_owned()
    }
}

impl Drop for H2TlsClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
