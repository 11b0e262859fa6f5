//! Generates the Rust code of the wire contract from the `.proto` files under
//! the workspace's `proto/` directory.
//!
//! protoc comes from `protoc-bin-vendored`, so a machine without a system
//! protoc builds this crate. Besides the Rust modules, the build writes the
//! encoded `FileDescriptorSet` of every file to `OUT_DIR`, which `lib.rs`
//! exposes for gRPC server reflection.

use std::{
    env,
    error::Error,
    fs,
    path::{Path, PathBuf},
};

/// Name (without `.bin`) of the descriptor set file written to `OUT_DIR`;
/// `lib.rs` includes it with `tonic::include_file_descriptor_set!`.
const DESCRIPTOR_SET_NAME: &str = "paymesh_descriptor";

fn main() -> Result<(), Box<dyn Error>> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let proto_root = manifest_dir.join("..").join("..").join("proto");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);

    let mut protos = Vec::new();
    collect_protos(&proto_root, &mut protos)?;
    protos.sort();
    if protos.is_empty() {
        return Err(format!("no .proto files under {}", proto_root.display()).into());
    }

    // A directory makes cargo rerun the build when anything under it changes,
    // including a newly added file; the files are listed too for clarity in
    // `cargo build -vv` output.
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={}", proto_root.display());
    for proto in &protos {
        println!("cargo:rerun-if-changed={}", proto.display());
    }

    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .build_transport(true)
        .file_descriptor_set_path(out_dir.join(format!("{DESCRIPTOR_SET_NAME}.bin")))
        .compile_with_config(config, &protos, &[proto_root])?;
    Ok(())
}

/// Appends every `.proto` file under `dir`, recursively, to `out`.
fn collect_protos(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), Box<dyn Error>> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_protos(&path, out)?;
        } else if path.extension().is_some_and(|ext| ext == "proto") {
            out.push(path);
        }
    }
    Ok(())
}
