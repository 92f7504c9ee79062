//! Compiles tern's own .proto files (under `proto/`, etcd's package names and field
//! numbers) with prost. protox parses them in pure Rust, so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/mvccpb/kv.proto",
        "proto/authpb/auth.proto",
        "proto/etcdserverpb/rpc.proto",
        "proto/v3lockpb/v3lock.proto",
        "proto/v3electionpb/v3election.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    // The descriptor set also goes to OUT_DIR for the /v3 JSON gateway's proto3 JSON
    // mapping (prost-reflect).
    let descriptor_path =
        std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("file_descriptor_set.bin");
    std::fs::write(descriptor_path, prost::Message::encode_to_vec(&descriptors))?;
    // Type names: a request's full name selects its schema for `proto::groups`.
    prost_build::Config::new()
        .bytes(["."])
        .enable_type_names()
        .compile_fds(descriptors)?;
    Ok(())
}
