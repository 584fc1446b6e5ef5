//! The demo service's generated code and descriptor set, committed so that
//! building needs no protoc, are what `proto/clientgone/demo/v1/demo.proto`
//! compiles to now: compiled here with protox (a protobuf compiler in Rust)
//! and tonic-prost-build, and compared byte for byte.
//!
//! After changing the .proto file, rewrite them with
//! `CLIENTGONE_REGENERATE=1 cargo test -p clientgone-tests --test proto`.

use std::path::{Path, PathBuf};

use prost::Message;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn generated_demo_code_is_current() {
    let root = root();
    let fds = protox::compile(["clientgone/demo/v1/demo.proto"], [root.join("proto")])
        .expect("demo.proto compiles");
    let out = std::env::temp_dir().join(format!("clientgone-proto-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .out_dir(&out)
        .compile_fds(fds.clone())
        .expect("tonic-prost-build generates code");
    let generated = std::fs::read(out.join("clientgone.demo.v1.rs")).unwrap();
    std::fs::remove_dir_all(&out).ok();
    let committed_dir = root.join("crates/clientgone-agent/src/demo/grpc");
    let files = [
        ("clientgone.demo.v1.rs", generated),
        ("demo.bin", fds.encode_to_vec()),
    ];
    let regenerate = std::env::var_os("CLIENTGONE_REGENERATE").is_some();
    for (name, want) in files {
        let path = committed_dir.join(name);
        if regenerate {
            std::fs::write(&path, &want).unwrap();
            continue;
        }
        let have = std::fs::read(&path).unwrap_or_default();
        assert!(
            have == want,
            "{} is not what demo.proto compiles to now: run \
             `CLIENTGONE_REGENERATE=1 cargo test -p clientgone-tests --test proto` and commit the result",
            path.display()
        );
    }
}
