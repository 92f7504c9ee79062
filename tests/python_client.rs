//! Second client stack: runs tests/clients/etcd3_python.py (Python `etcd3` on grpcio, whose
//! HTTP/2 is gRPC C-core's, independent of Go's and ours) against a spawned tern.

mod common;

use std::process::Command;

#[test]
fn python_etcd3_client_against_tern() {
    let server = common::TernServer::start();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/etcd3_python.py");
    let output = Command::new("python3")
        .arg(script)
        .arg("127.0.0.1")
        .arg(server.client_port.to_string())
        // etcd3 0.12 ships protobuf code generated for protobuf 3; the pure-Python runtime
        // accepts it with any newer protobuf.
        .env("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")
        .output()
        .expect("python3");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "python etcd3 client failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("OK"));
}
