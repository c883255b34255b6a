//! Generates the gRPC code without a system `protoc`: `protox` parses the
//! `.proto` files in Rust and `tonic-prost-build` generates from the parsed
//! descriptors. The encoded descriptor set is also written out for
//! `tonic-reflection`.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/docklock/v1/registry.proto",
        "proto/docklock/v1/audit.proto",
        "proto/docklock/v1/raft.proto",
        "proto/docklock/v1/nodes.proto",
        "proto/docklock/v1/artifacts.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let encoded = prost::Message::encode_to_vec(&descriptors);
    std::fs::write(out_dir.join("docklock_descriptor.bin"), encoded)?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
