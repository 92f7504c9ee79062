//! Golden etcdctl scenarios over TLS, tern and etcd side by side: the real etcdctl 3.4.23
//! runs the kv, txn, watch and lease scenarios of tests/golden over TLS against tern and
//! against a real etcd 3.4.23 started with the same certificates (generated with rcgen by
//! common::pki), through the recorder's `run` mode, so both sets of transcripts get the
//! normalisation the golden comparison uses. The test asserts that tern's transcripts are
//! identical to etcd's, and that both are identical to the cleartext golden transcripts.
//! Three client set-ups: `--cacert/--cert/--key`; `--cert/--key --insecure-skip-tls-verify`
//! (no CA); `--insecure-transport=false --insecure-skip-tls-verify` without a client
//! certificate, against a server that does not ask for one.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::pki::{fixture, Fixture};

const SCENARIOS: &[&str] = &["kv", "txn", "watch", "lease"];

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn etcd_binary() -> String {
    std::env::var("ETCD_BIN").unwrap_or_else(|_| "etcd".into())
}

/// Starts `record.sh run` for every scenario against `server` (a binary) with `server_flags`
/// on an https client URL, etcdctl getting `etcdctl_flags`; transcripts go to `out`.
fn start_run(server: &str, server_flags: &[String], etcdctl_flags: &[String], out: &Path) -> Child {
    let mut server_cmd = vec![server.to_owned()];
    server_cmd.extend(server_flags.iter().cloned());
    Command::new("bash")
        .arg(golden_dir().join("record.sh"))
        .arg("run")
        .args(SCENARIOS)
        .env("SERVER_CMD", server_cmd.join(" "))
        .env("GOLDEN_CLIENT_SCHEME", "https")
        .env("GOLDEN_ETCDCTL_FLAGS", etcdctl_flags.join(" "))
        .env("OUT_DIR", out)
        .env("GOLDEN_CLIENT_PORT", common::free_port().to_string())
        .env("GOLDEN_PEER_PORT", common::free_port().to_string())
        .env("ETCDCTL", common::etcdctl_binary())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run record.sh")
}

fn finish_run(child: Child, who: &str) {
    let output = child.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&output.stdout);
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && out.lines().last() == Some("4 passed, 0 failed"),
        "record.sh run against {who} failed:\n{out}\n{err}"
    );
}

/// `diff -u` of two transcripts, for the failure message.
fn diff(a: &Path, b: &Path) -> String {
    let output = Command::new("diff")
        .arg("-u")
        .arg(a)
        .arg(b)
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs the scenarios against tern and etcd at once (each on its own ports and data dirs)
/// and compares the transcripts: tern with etcd, and etcd with the cleartext recording.
fn side_by_side(name: &str, server_flags: &[String], etcdctl_flags: &[String]) {
    let work = std::env::temp_dir().join(format!("tern-golden-tls-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let (ours, theirs) = (work.join("tern"), work.join("etcd"));
    let tern_binary = common::tern_binary();
    let tern_run = start_run(
        tern_binary.to_str().unwrap(),
        server_flags,
        etcdctl_flags,
        &ours,
    );
    let etcd_run = start_run(&etcd_binary(), server_flags, etcdctl_flags, &theirs);
    finish_run(tern_run, "tern");
    finish_run(etcd_run, "etcd");
    for scenario in SCENARIOS {
        let file = format!("{scenario}.txt");
        let (tern_path, etcd_path) = (ours.join(&file), theirs.join(&file));
        let expected_path = golden_dir().join("expected").join(&file);
        let read = |p: &Path| std::fs::read_to_string(p).unwrap();
        assert!(
            read(&tern_path) == read(&etcd_path),
            "{name}: {scenario} over TLS differs between etcd and tern:\n{}",
            diff(&etcd_path, &tern_path)
        );
        assert!(
            read(&etcd_path) == read(&expected_path),
            "{name}: {scenario} over TLS on etcd differs from the cleartext recording:\n{}",
            diff(&expected_path, &etcd_path)
        );
    }
    let _ = std::fs::remove_dir_all(&work);
}

fn server_tls(f: &Fixture) -> Vec<String> {
    vec![
        "--cert-file".into(),
        f.server.0.clone(),
        "--key-file".into(),
        f.server.1.clone(),
    ]
}

/// The server verifies client certificates; etcdctl verifies the server against the CA.
#[test]
fn golden_over_tls_with_cacert_cert_and_key() {
    let f = fixture("golden-verified");
    side_by_side("verified", &f.server_args(), &f.client_flags(&f.client));
}

/// etcdctl has no CA and skips verifying the server, still presenting its certificate to
/// a server that requires one.
#[test]
fn golden_over_tls_with_insecure_skip_tls_verify() {
    let f = fixture("golden-skip-verify");
    let flags = vec![
        "--insecure-skip-tls-verify".to_owned(),
        format!("--cert={}", f.client.0),
        format!("--key={}", f.client.1),
    ];
    side_by_side("skip_verify", &f.server_args(), &flags);
}

/// No certificate flags at all: `--insecure-transport=false` alone makes etcdctl use TLS
/// (with skip-verify, as the CA is not in the system's trust store), against a server with a
/// certificate that does not ask clients for one.
#[test]
fn golden_over_tls_with_insecure_transport_false() {
    let f = fixture("golden-insecure-transport");
    let flags = vec![
        "--insecure-transport=false".to_owned(),
        "--insecure-skip-tls-verify".to_owned(),
    ];
    side_by_side("insecure_transport_false", &server_tls(&f), &flags);
}
