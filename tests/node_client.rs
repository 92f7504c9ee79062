//! Checks tern with a third client stack: the Node `etcd3` package on @grpc/grpc-js
//! (Node's own HTTP/2 and TLS). One script (tests/clients/node/etcd3_node.js) prints a
//! transcript of every step's answer or error; each test runs it against tern and against
//! the real etcd 3.4, and both transcripts must equal the expected one: a KV/txn/watch/
//! lease flow in cleartext; users, a prefix permission, auth enable, allowed and refused
//! requests and a wrong password; and over TLS with client certificates (issue 14's "Node
//! over TLS"), the same flow, then each certificate's CN as the user once auth is on.
//! The package is installed by test.sh (`npm ci` in tests/clients/node).

mod common;

use std::path::Path;
use std::process::Command;

use common::pki::{Ca, Pki, SERVER_SANS, VALID};
use common::{stderr, stdout, TernServer};

const NODE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/node");

/// The script's transcript in `mode` against `endpoint` (host:port).
fn run_node(mode: &str, endpoint: &str, pki: Option<&Path>) -> String {
    assert!(
        Path::new(NODE_DIR).join("node_modules/etcd3").is_dir(),
        "the Node etcd3 client is not installed: run test.sh, or `npm ci` in {NODE_DIR}"
    );
    let mut command = Command::new("node");
    command
        .current_dir(NODE_DIR)
        .args(["etcd3_node.js", mode, endpoint]);
    if let Some(pki) = pki {
        command.arg(pki);
    }
    let output = command.output().expect("node (test.sh installs nodejs)");
    assert!(
        output.status.success(),
        "node {mode} failed:\n{}\n{}",
        stdout(&output),
        stderr(&output)
    );
    stdout(&output)
}

fn start(server: &str, urls: &dyn Fn(u16) -> String, args: &[String]) -> TernServer {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match server {
        "tern" => TernServer::start_listening(urls, &args, None),
        _ => TernServer::start_etcd_listening(urls, &args),
    }
}

fn cleartext(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

#[test]
fn node_grpc_js_kv_txn_watch_and_lease() {
    for server in ["tern", "etcd"] {
        let s = start(server, &cleartext, &[]);
        let endpoint = format!("127.0.0.1:{}", s.client_port);
        assert_eq!(run_node("kv", &endpoint, None), KV_EXPECTED, "{server}");
    }
}

#[test]
fn node_grpc_js_auth_users_roles_and_permission_denied() {
    let args = ["--bcrypt-cost".to_string(), "4".to_string()];
    for server in ["tern", "etcd"] {
        let s = start(server, &cleartext, &args);
        let endpoint = format!("127.0.0.1:{}", s.client_port);
        assert_eq!(run_node("auth", &endpoint, None), AUTH_EXPECTED, "{server}");
    }
}

#[test]
fn node_grpc_js_over_tls_with_client_certificates() {
    let pki = Pki::new("node");
    let ca = Ca::new(&pki, "ca");
    let server_pair = ca.issue(&pki, "server", SERVER_SANS, 1, VALID);
    for (serial, cn) in (2u8..).zip(["root", "alice", "bob"]) {
        ca.issue(&pki, cn, &[], serial, VALID);
    }
    let args = vec![
        "--cert-file".to_string(),
        server_pair.0.clone(),
        "--key-file".into(),
        server_pair.1.clone(),
        "--trusted-ca-file".into(),
        pki.path("ca.pem"),
        "--client-cert-auth".into(),
    ];
    let https = |port| format!("https://127.0.0.1:{port}");
    for server in ["tern", "etcd"] {
        let s = start(server, &https, &args);
        // The certificates name 127.0.0.1 and localhost.
        let endpoint = format!("localhost:{}", s.client_port);
        assert_eq!(
            run_node("tls", &endpoint, Some(&pki.dir)),
            TLS_EXPECTED,
            "{server}"
        );
    }
}

const KV_EXPECTED: &str = "\
put k1: ok
put k2: ok
get k1: \"v1\"
prefix: {\"node/k1\":\"v1\",\"node/k2\":\"v2\"}
count: 2
txn true: true
txn false: false
get t: \"no\"
delete k2: 1
get k2: null
watch: put node/w/a=1, put node/w/a=2, delete node/w/a=
lease put: ok
lease time to live: {\"granted\":60,\"ttlInRange\":true,\"keys\":[\"node/l\"]}
lease keep-alive once: 60
lease key: \"leased\"
lease revoke: ok
lease key after revoke: null
cleanup: ok
";

const AUTH_EXPECTED: &str = "\
user root: ok
role root: ok
root has root: ok
user alice: ok
user bob: ok
role app: ok
app readwrite app/: ok
alice has app: ok
user again: EtcdUserExistsError: 9 FAILED_PRECONDITION: etcdserver: user name already exists
auth enable: ok
anonymous get app/1: GRPCInvalidArgumentError: 3 INVALID_ARGUMENT: etcdserver: user name is empty
alice put app/1: ok
alice get app/1: \"one\"
alice put other: EtcdPermissionDeniedError: 7 PERMISSION_DENIED: etcdserver: permission denied
alice get other: EtcdPermissionDeniedError: 7 PERMISSION_DENIED: etcdserver: permission denied
alice txn into other: EtcdPermissionDeniedError: 7 PERMISSION_DENIED: etcdserver: permission denied
alice watch other: EtcdPermissionDeniedError: Watcher canceled: rpc error: code = PermissionDenied desc = etcdserver: permission denied
alice user list: EtcdPermissionDeniedError: 7 PERMISSION_DENIED: etcdserver: permission denied
wrong password: EtcdAuthenticationFailedError: 3 INVALID_ARGUMENT: etcdserver: authentication failed, invalid user ID or password
root user list: [\"alice\",\"bob\",\"root\"]
auth disable: ok
anonymous get app/1: \"one\"
";

const TLS_EXPECTED: &str = "\
put k1: ok
put k2: ok
get k1: \"v1\"
prefix: {\"node/k1\":\"v1\",\"node/k2\":\"v2\"}
count: 2
txn true: true
txn false: false
get t: \"no\"
delete k2: 1
get k2: null
watch: put node/w/a=1, put node/w/a=2, delete node/w/a=
lease put: ok
lease time to live: {\"granted\":60,\"ttlInRange\":true,\"keys\":[\"node/l\"]}
lease keep-alive once: 60
lease key: \"leased\"
lease revoke: ok
lease key after revoke: null
cleanup: ok
user root: ok
role root: ok
root has root: ok
user alice: ok
user bob: ok
role app: ok
app readwrite app/: ok
alice has app: ok
user again: EtcdUserExistsError: 9 FAILED_PRECONDITION: etcdserver: user name already exists
auth enable: ok
alice put app/1: ok
alice get app/1: \"one\"
alice put other: EtcdPermissionDeniedError: 7 PERMISSION_DENIED: etcdserver: permission denied
alice get other: EtcdPermissionDeniedError: 7 PERMISSION_DENIED: etcdserver: permission denied
alice txn into other: EtcdPermissionDeniedError: 7 PERMISSION_DENIED: etcdserver: permission denied
alice watch other: EtcdPermissionDeniedError: Watcher canceled: rpc error: code = PermissionDenied desc = etcdserver: permission denied
alice user list: EtcdPermissionDeniedError: 7 PERMISSION_DENIED: etcdserver: permission denied
bob get app/1: EtcdPermissionDeniedError: 7 PERMISSION_DENIED: etcdserver: permission denied
root user list: [\"alice\",\"bob\",\"root\"]
auth disable: ok
";
