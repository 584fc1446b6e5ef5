//! Decides whether the network-namespace tests can run on this machine.
//!
//! They need root, `ip netns` (iproute2) and iptables inside a namespace. Where
//! any is missing the tests are compiled as `#[ignore]`d with the reason — counted
//! as skipped, never as passed.

use std::process::{Command, Stdio};

fn main() {
    println!("cargo::rustc-check-cfg=cfg(netns)");
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=CLIENTGONE_NO_NETNS");
    if std::env::var_os("CLIENTGONE_NO_NETNS").is_none() && netns_usable() {
        println!("cargo::rustc-cfg=netns");
    } else {
        println!(
            "cargo::warning=network-namespace tests will be skipped: need root, iproute2 and iptables"
        );
    }
}

fn netns_usable() -> bool {
    let name = format!("cg-probe-{}", std::process::id());
    let run = |args: &[&str]| {
        Command::new(args[0])
            .args(&args[1..])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !run(&["ip", "netns", "add", &name]) {
        return false;
    }
    let ok = run(&[
        "ip", "netns", "exec", &name, "iptables", "-A", "OUTPUT", "-j", "DROP",
    ]);
    run(&["ip", "netns", "del", &name]);
    ok
}
