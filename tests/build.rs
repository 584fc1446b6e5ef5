//! Decides whether the network-namespace, Prometheus and grpcio tests can run here.
//!
//! The first need root, `ip netns` (iproute2) and iptables inside a namespace;
//! others Debian's `prometheus` package (the server and `promtool`), the gRPC
//! ones Python's `grpcio` (PyPI). Where
//! any is missing those tests are compiled as `#[ignore]`d with the reason —
//! counted as skipped, never as passed. `.ci/run` installs all of it.

use std::process::{Command, Stdio};

fn main() {
    println!("cargo::rustc-check-cfg=cfg(netns)");
    println!("cargo::rustc-check-cfg=cfg(prometheus)");
    println!("cargo::rustc-check-cfg=cfg(grpcio)");
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=CLIENTGONE_NO_NETNS");
    if std::env::var_os("CLIENTGONE_NO_NETNS").is_none() && netns_usable() {
        println!("cargo::rustc-cfg=netns");
    } else {
        println!(
            "cargo::warning=network-namespace tests will be skipped: need root, iproute2 and iptables"
        );
    }
    if ["prometheus", "promtool"]
        .iter()
        .all(|tool| runs(&[tool, "--version"]))
    {
        println!("cargo::rustc-cfg=prometheus");
    } else {
        println!(
            "cargo::warning=Prometheus tests will be skipped: install Debian's prometheus package"
        );
    }
    if runs(&["python3", "-c", "import grpc"]) {
        println!("cargo::rustc-cfg=grpcio");
    } else {
        println!(
            "cargo::warning=gRPC tests with a Python client will be skipped: pip install grpcio"
        );
    }
}

fn runs(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn netns_usable() -> bool {
    let name = format!("cg-probe-{}", std::process::id());
    if !runs(&["ip", "netns", "add", &name]) {
        return false;
    }
    let ok = runs(&[
        "ip", "netns", "exec", &name, "iptables", "-A", "OUTPUT", "-j", "DROP",
    ]);
    runs(&["ip", "netns", "del", &name]);
    ok
}
