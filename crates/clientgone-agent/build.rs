//! Decides whether the `watch` tests (real eBPF programs in the kernel) can run
//! here: they need root and kernel BTF, the nginx ones Debian's nginx, the
//! one of a Go TLS server Go, the gRPC one Python's grpcio.
//! The silent-break test also needs iproute2 and iptables. Where any is missing those tests compile as `#[ignore]`d with the reason,
//! counted as skipped; `.ci/run` runs as root with nginx installed.

use std::process::{Command, Stdio};

fn main() {
    println!("cargo::rustc-check-cfg=cfg(ebpf)");
    println!("cargo::rustc-check-cfg=cfg(nginx)");
    println!("cargo::rustc-check-cfg=cfg(netns)");
    println!("cargo::rustc-check-cfg=cfg(go)");
    println!("cargo::rustc-check-cfg=cfg(grpcio)");
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=CLIENTGONE_NO_EBPF");
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
    let btf = std::path::Path::new("/sys/kernel/btf/vmlinux").exists();
    if root && btf && std::env::var_os("CLIENTGONE_NO_EBPF").is_none() {
        println!("cargo::rustc-cfg=ebpf");
    }
    let runs = |program: &str, arg: &str| {
        Command::new(program)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    // The silent-break test builds network namespaces with iproute2 and iptables.
    if root && runs("ip", "-V") && runs("iptables", "--version") {
        println!("cargo::rustc-cfg=netns");
    }
    let nginx = Command::new("nginx")
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if nginx {
        println!("cargo::rustc-cfg=nginx");
    }
    // A server with its own TLS (Go's crypto/tls), which watch cannot read.
    if runs("go", "version") {
        println!("cargo::rustc-cfg=go");
    }
    // Python's grpcio: a gRPC server and client not written here.
    let grpcio = Command::new("python3")
        .args(["-c", "import grpc"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if grpcio {
        println!("cargo::rustc-cfg=grpcio");
    }
}
