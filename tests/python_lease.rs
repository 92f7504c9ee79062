//! Second client stack for leases and locks: runs tests/clients/etcd3_python_lease.py
//! (Python `etcd3` on grpcio) against a spawned tern.

mod common;

use std::process::Command;

#[test]
fn python_etcd3_leases_and_lock_against_tern() {
    let server = common::TernServer::start();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/etcd3_python_lease.py"
    );
    let output = Command::new("python3")
        .arg(script)
        .arg("127.0.0.1")
        .arg(server.client_port.to_string())
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
