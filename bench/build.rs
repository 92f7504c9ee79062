//! Compiles the client stubs for etcd's v3 API from tern's own .proto files in `../proto`
//! (etcd's package names and field numbers). protox parses them in pure Rust, so no system
//! `protoc` is needed; tonic-prost-build then emits prost messages and tonic clients only
//! (generic over the transport: tern-bench brings its own, `src/channel.rs`).
//! This build is independent of the server crate: it shares the .proto files, not code.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "../proto/mvccpb/kv.proto",
        "../proto/authpb/auth.proto",
        "../proto/etcdserverpb/rpc.proto",
        "../proto/v3lockpb/v3lock.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let descriptors = protox::compile(files, ["../proto"])?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        // Clients run over crate::channel, not tonic's transport.
        .build_transport(false)
        .bytes(".")
        .compile_fds(descriptors)?;
    Ok(())
}
