//! A JSON-gateway client in another language: runs tests/clients/etcd3gw_python.py
//! (OpenStack's etcd3gw, Python on requests, speaking only HTTP/JSON to /v3) for a KV,
//! lease, watch and lock flow against a spawned tern, and the same script against a real
//! etcd 3.4 so that its expectations are etcd's.

mod common;
mod http_support;

use std::process::Command;

fn run_flow(port: u16) -> Result<(), String> {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/etcd3gw_python.py"
    );
    let output = Command::new("python3")
        .arg(script)
        .arg("127.0.0.1")
        .arg(port.to_string())
        .output()
        .expect("python3");
    let stdout = String::from_utf8_lossy(&output.stdout);
    if output.status.success() && stdout.contains("OK") {
        return Ok(());
    }
    Err(format!(
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    ))
}

#[test]
fn etcd3gw_flow_passes_against_etcd_and_tern() {
    let etcd = http_support::Etcd::start();
    if let Err(e) = run_flow(etcd.client_port) {
        panic!("the flow fails against real etcd, so the script is wrong:\n{e}");
    }
    let tern = common::TernServer::start();
    if let Err(e) = run_flow(tern.client_port) {
        panic!("etcd3gw against tern:\n{e}");
    }
}
