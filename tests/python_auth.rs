//! Second client stack for auth: runs tests/clients/etcd3_python_auth.py (Python `etcd3`
//! on grpcio) against a spawned tern: users, roles, login with user and password, and
//! etcd's permission errors through an HTTP/2 and gRPC stack independent of Go's and ours.

mod common;

use std::process::Command;

#[test]
fn python_etcd3_auth_against_tern() {
    let server = common::TernServer::start_with(&["--bcrypt-cost", "4"]);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/etcd3_python_auth.py"
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
        "python etcd3 auth client failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("OK"));
}
