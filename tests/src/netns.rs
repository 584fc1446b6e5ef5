//! Two network namespaces joined by a veth pair, made by the test itself and
//! removed when dropped. Addresses are from TEST-NET-1 (192.0.2.0/24), and exist
//! only inside these namespaces.

use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// The server's address inside its namespace.
pub const SERVER_IP: &str = "192.0.2.1";
/// The client's address inside its namespace.
pub const CLIENT_IP: &str = "192.0.2.2";

/// A server namespace and a client namespace, linked by veth.
#[derive(Debug)]
pub struct NetnsPair {
    /// Name of the server's namespace.
    pub server: String,
    /// Name of the client's namespace.
    pub client: String,
}

fn run(args: &[&str]) -> Output {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl NetnsPair {
    /// Creates both namespaces, the veth pair and the addresses. `tag` keeps
    /// names unique between tests running at once.
    pub fn create(tag: &str) -> NetnsPair {
        let id = std::process::id();
        let pair = NetnsPair {
            server: format!("cg-s-{tag}-{id}"),
            client: format!("cg-c-{tag}-{id}"),
        };
        // Interface names are limited to 15 bytes and must be unique while the
        // pair is made in the root namespace; inside, both ends become `veth0`.
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let veth_tmp_s = format!("cgs{}x{n}", id % 1_000_000);
        let veth_tmp_c = format!("cgc{}x{n}", id % 1_000_000);
        run(&["ip", "netns", "add", &pair.server]);
        run(&["ip", "netns", "add", &pair.client]);
        run(&[
            "ip",
            "link",
            "add",
            &veth_tmp_s,
            "type",
            "veth",
            "peer",
            "name",
            &veth_tmp_c,
        ]);
        run(&[
            "ip",
            "link",
            "set",
            &veth_tmp_s,
            "netns",
            &pair.server,
            "name",
            "veth0",
        ]);
        run(&[
            "ip",
            "link",
            "set",
            &veth_tmp_c,
            "netns",
            &pair.client,
            "name",
            "veth0",
        ]);
        for (ns, ip) in [(&pair.server, SERVER_IP), (&pair.client, CLIENT_IP)] {
            pair.exec_ok(
                ns,
                &["ip", "addr", "add", &format!("{ip}/24"), "dev", "veth0"],
            );
            pair.exec_ok(ns, &["ip", "link", "set", "veth0", "up"]);
            pair.exec_ok(ns, &["ip", "link", "set", "lo", "up"]);
        }
        pair
    }

    /// Runs a command inside namespace `ns`, asserting success.
    pub fn exec_ok(&self, ns: &str, args: &[&str]) -> Output {
        let mut all = vec!["ip", "netns", "exec", ns];
        all.extend_from_slice(args);
        run(&all)
    }

    /// A command that will run inside namespace `ns`.
    pub fn command(&self, ns: &str, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, program]);
        cmd
    }

    /// Cuts the client off silently: every packet in or out of its namespace is
    /// dropped, so no FIN, no RST, no ICMP ever reaches the server.
    pub fn cut_client(&self) {
        for chain in ["INPUT", "OUTPUT"] {
            self.exec_ok(&self.client, &["iptables", "-A", chain, "-j", "DROP"]);
        }
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        // Deleting a namespace removes its end of the veth pair, and so both.
        for ns in [&self.server, &self.client] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}
