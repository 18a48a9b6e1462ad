//! Compiles `nudge/v1/*.proto` with protox (pure Rust, no `protoc` needed) and writes the
//! encoded descriptor set beside the generated code, for gRPC server reflection.
use prost::Message;
use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "nudge/v1/nlu.proto",
        "nudge/v1/decide.proto",
        "nudge/v1/optimizer.proto",
        "nudge/v1/conversations.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out.join("nudge_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // JSON output for the CLI and test logs; the wire format stays protobuf.
        .type_attribute(".nudge.v1", "#[derive(serde::Serialize)]")
        .compile_fds(fds)?;
    Ok(())
}
