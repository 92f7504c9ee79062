//! The `tern` binary as operators use it: etcd's flags and ETCD_* variables, --version,
//! unknown flags, core counts of 1 and 2, and a graceful exit on SIGTERM. Each test spawns
//! the real binary and drives it with the real etcdctl.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, stdout, tern_binary, TernServer};

#[test]
fn version_names_tern_and_the_etcd_api() {
    let out = Command::new(tern_binary())
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("tern Version: "), "{text}");
    assert!(text.contains("API Version: 3.4"), "{text}");
}

#[test]
fn unknown_flag_is_an_error_like_etcd() {
    let out = Command::new(tern_binary())
        .arg("--no-such-flag")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("flag provided but not defined: -no-such-flag"),
        "{text}"
    );
}

#[test]
fn serves_on_one_core_and_on_two() {
    for cores in ["1", "2"] {
        let server = TernServer::start_with(&["--cores", cores]);
        assert!(server.etcdctl(&["put", "k", cores]).status.success());
        let got = server.etcdctl(&["get", "k", "--print-value-only"]);
        assert_eq!(stdout(&got), format!("{cores}\n"), "cores={cores}");
        let log = server.log.lock().unwrap().join("\n");
        assert!(
            log.contains(&format!("\"network-executors\":{cores}")),
            "{log}"
        );
    }
}

#[test]
fn etcd_environment_variables_configure_the_server() {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let data_dir = std::env::temp_dir().join(format!("tern-env-{port}"));
    let child = Command::new(tern_binary())
        .env("ETCD_NAME", "from-env")
        .env("ETCD_DATA_DIR", &data_dir)
        .env("ETCD_LISTEN_CLIENT_URLS", &url)
        .env("ETCD_ADVERTISE_CLIENT_URLS", &url)
        .env(
            "ETCD_LISTEN_PEER_URLS",
            format!("http://127.0.0.1:{}", free_port()),
        )
        .env("ETCD_MAX_TXN_OPS", "2")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _server = KillOnDrop(child);
    let endpoint = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let members = loop {
        let out = common::etcdctl(&endpoint, &["member", "list"], None);
        if out.status.success() || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        stdout(&members).contains(", started, from-env, "),
        "{}",
        stdout(&members)
    );
    // --max-txn-ops=2 from the environment: three operations are too many.
    let txn = common::etcdctl(
        &endpoint,
        &["txn"],
        Some("\nput a 1\nput b 2\nput c 3\n\n\n"),
    );
    assert!(String::from_utf8_lossy(&txn.stderr)
        .contains("etcdserver: too many operations in txn request"));
    let _ = std::fs::remove_dir_all(&data_dir);
}

/// Kills a spawned server even when an assertion fails first.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn sigterm_stops_the_server_cleanly() {
    let mut server = TernServer::start();
    assert!(server.etcdctl(&["put", "k", "v"]).status.success());
    // Safety: plain kill(2) on our own child's pid.
    unsafe { libc::kill(server.pid() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = server.try_wait() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "tern did not exit within 10 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status:?}");
    let log = server.log.lock().unwrap().join("\n");
    assert!(log.contains("received signal; shutting down"), "{log}");
}

#[test]
fn a_second_server_on_the_same_port_refuses_to_start() {
    let first = TernServer::start();
    let url = format!("http://{}", first.endpoint());
    let out = Command::new(tern_binary())
        .args([
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
        ])
        .args(["--data-dir"])
        .arg(std::env::temp_dir().join(format!("tern-dup-{}", first.client_port)))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("address already in use") || text.contains("Address already in use"),
        "{text}"
    );
}

#[test]
fn backend_batch_flags_take_effect() {
    let server = TernServer::start_with(&[
        "--backend-batch-interval",
        "10ms",
        "--backend-batch-limit",
        "1",
    ]);
    assert!(server.etcdctl(&["put", "k", "v"]).status.success());
    assert_eq!(
        stdout(&server.etcdctl(&["get", "k", "--print-value-only"])),
        "v\n"
    );
    let log = server.log.lock().unwrap().join("\n");
    assert!(!log.contains("\"flag\":\"--backend-batch"), "{log}");
}
