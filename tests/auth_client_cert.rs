//! Checks that with `--client-cert-auth` and auth on, a request without a token runs as
//! the common name of its verified client certificate, as etcd 3.4 does: the real etcdctl
//! (--cacert/--cert/--key, no --user) runs one scenario against tern and against etcd,
//! and both transcripts must equal the expected one (users by CN, a CN without a user or
//! permission, a certificate without a CN, admin calls by CN, a token winning over the
//! certificate, auth disabled again); without --client-cert-auth the CN is not a user.
//! Python grpcio (another HTTP/2 and TLS stack) checks the same by certificate.

mod common;

use std::process::{Command, Output};

use common::pki::{Ca, Pki, SERVER_SANS, VALID};
use common::{etcdctl, stderr, stdout, TernServer};

/// CA, server certificate and client certificates for CNs root, alice, bob (a user without
/// permissions), carol (no such user) and one without a CN.
struct Fixture {
    pki: Pki,
    server: (String, String),
}

impl Fixture {
    fn new(name: &str) -> Fixture {
        let pki = Pki::new(&format!("auth-cert-{name}"));
        let ca = Ca::new(&pki, "ca");
        let server = ca.issue(&pki, "server", SERVER_SANS, 1, VALID);
        for (serial, cn) in (2u8..).zip(["root", "alice", "bob", "carol"]) {
            ca.issue(&pki, cn, &[], serial, VALID);
        }
        ca.issue_as(&pki, "nocn", None, &[], 9, VALID);
        Fixture { pki, server }
    }

    fn server_args(&self, client_cert_auth: bool) -> Vec<String> {
        let mut args = vec![
            "--cert-file".to_string(),
            self.server.0.clone(),
            "--key-file".into(),
            self.server.1.clone(),
            "--trusted-ca-file".into(),
            self.pki.path("ca.pem"),
        ];
        if client_cert_auth {
            args.push("--client-cert-auth".into());
        }
        args
    }

    /// etcdctl with the certificate `who` (a file name above), and `args`.
    fn ctl(&self, endpoint: &str, who: &str, args: &[&str]) -> Output {
        let flags = [
            format!("--cacert={}", self.pki.path("ca.pem")),
            format!("--cert={}", self.pki.path(&format!("{who}.pem"))),
            format!("--key={}", self.pki.path(&format!("{who}.key"))),
        ];
        let mut all: Vec<&str> = flags.iter().map(String::as_str).collect();
        all.extend_from_slice(args);
        etcdctl(endpoint, &all, None)
    }
}

fn start(server: &str, args: &[String]) -> TernServer {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let urls = |port| format!("https://127.0.0.1:{port}");
    match server {
        "tern" => TernServer::start_listening(&urls, &args, None),
        _ => TernServer::start_etcd_listening(&urls, &args),
    }
}

/// What a command printed: its stdout, or its "Error: ..." line (etcdctl's client also
/// logs retries on stderr, which differ between runs).
fn outcome(output: &Output) -> String {
    if output.status.success() {
        return stdout(output);
    }
    let text = stderr(output);
    text.lines()
        .find(|l| l.starts_with("Error:"))
        .map(|l| format!("{l}\n"))
        .unwrap_or_else(|| format!("no error line in: {text}"))
}

/// Runs `steps` (certificate, args) and returns the transcript.
fn transcript(f: &Fixture, endpoint: &str, steps: &[(&str, &[&str])]) -> String {
    let mut out = String::new();
    for (who, args) in steps {
        out.push_str(&format!("$ [{who}] {}\n", args.join(" ")));
        out.push_str(&outcome(&f.ctl(endpoint, who, args)));
    }
    out
}

/// Users root (root role), alice (readwrite on prefix app/), bob (no roles); auth on.
const SET_UP: &[(&str, &[&str])] = &[
    (
        "root",
        &["user", "add", "root", "--new-user-password=rootpw"],
    ),
    ("root", &["role", "add", "root"]),
    ("root", &["user", "grant-role", "root", "root"]),
    (
        "root",
        &["user", "add", "alice", "--new-user-password=alicepw"],
    ),
    ("root", &["user", "add", "bob", "--new-user-password=bobpw"]),
    ("root", &["role", "add", "app"]),
    (
        "root",
        &[
            "role",
            "grant-permission",
            "app",
            "readwrite",
            "app/",
            "--prefix",
        ],
    ),
    ("root", &["user", "grant-role", "alice", "app"]),
    ("root", &["auth", "enable"]),
];

const BY_CERTIFICATE: &[(&str, &[&str])] = &[
    ("alice", &["put", "app/1", "one"]),
    ("alice", &["get", "app/1"]),
    ("alice", &["put", "other", "x"]),
    ("alice", &["user", "list"]),
    ("alice", &["user", "get", "alice"]),
    ("bob", &["get", "app/1"]),
    ("carol", &["get", "app/1"]),
    ("carol", &["user", "list"]),
    ("nocn", &["get", "app/1"]),
    ("nocn", &["user", "list"]),
    ("root", &["user", "list"]),
    ("root", &["put", "other", "by-root"]),
    // A token wins over the certificate, both ways.
    ("root", &["--user", "bob:bobpw", "get", "app/1"]),
    ("alice", &["--user", "root:rootpw", "get", "other"]),
    ("root", &["auth", "disable"]),
    ("nocn", &["get", "other"]),
];

const SET_UP_EXPECTED: &str = "\
$ [root] user add root --new-user-password=rootpw
User root created
$ [root] role add root
Role root created
$ [root] user grant-role root root
Role root is granted to user root
$ [root] user add alice --new-user-password=alicepw
User alice created
$ [root] user add bob --new-user-password=bobpw
User bob created
$ [root] role add app
Role app created
$ [root] role grant-permission app readwrite app/ --prefix
Role app updated
$ [root] user grant-role alice app
Role app is granted to user alice
$ [root] auth enable
Authentication Enabled
";

const BY_CERTIFICATE_EXPECTED: &str = "\
$ [alice] put app/1 one
OK
$ [alice] get app/1
app/1
one
$ [alice] put other x
Error: etcdserver: permission denied
$ [alice] user list
Error: etcdserver: permission denied
$ [alice] user get alice
User: alice
Roles: app
$ [bob] get app/1
Error: etcdserver: permission denied
$ [carol] get app/1
Error: etcdserver: permission denied
$ [carol] user list
Error: etcdserver: user name not found
$ [nocn] get app/1
Error: etcdserver: permission denied
$ [nocn] user list
Error: etcdserver: user name is empty
$ [root] user list
alice
bob
root
$ [root] put other by-root
OK
$ [root] --user bob:bobpw get app/1
Error: etcdserver: permission denied
$ [alice] --user root:rootpw get other
other
by-root
$ [root] auth disable
Authentication Disabled
$ [nocn] get other
other
by-root
";

#[test]
fn etcdctl_runs_as_the_certificates_common_name_as_on_etcd() {
    let f = Fixture::new("ctl");
    for server in ["tern", "etcd"] {
        let s = start(server, &f.server_args(true));
        let endpoint = format!("127.0.0.1:{}", s.client_port);
        assert_eq!(
            transcript(&f, &endpoint, SET_UP),
            SET_UP_EXPECTED,
            "{server}"
        );
        assert_eq!(
            transcript(&f, &endpoint, BY_CERTIFICATE),
            BY_CERTIFICATE_EXPECTED,
            "{server}"
        );
    }
}

#[test]
fn without_client_cert_auth_the_common_name_is_no_user() {
    let f = Fixture::new("nocca");
    let steps: &[(&str, &[&str])] = &[
        ("alice", &["get", "app/1"]),
        ("root", &["user", "list"]),
        ("alice", &["--user", "alice:alicepw", "get", "app/1"]),
    ];
    let expected = "\
$ [alice] get app/1
Error: etcdserver: user name is empty
$ [root] user list
Error: etcdserver: user name is empty
$ [alice] --user alice:alicepw get app/1
";
    for server in ["tern", "etcd"] {
        let s = start(server, &f.server_args(false));
        let endpoint = format!("127.0.0.1:{}", s.client_port);
        assert_eq!(
            transcript(&f, &endpoint, SET_UP),
            SET_UP_EXPECTED,
            "{server}"
        );
        assert_eq!(transcript(&f, &endpoint, steps), expected, "{server}");
    }
}

#[test]
fn python_grpcio_runs_as_the_certificates_common_name() {
    let f = Fixture::new("python");
    let s = start("tern", &f.server_args(true));
    let endpoint = format!("127.0.0.1:{}", s.client_port);
    assert_eq!(transcript(&f, &endpoint, SET_UP), SET_UP_EXPECTED);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/etcd3_python_auth_tls.py"
    );
    let output = Command::new("python3")
        .arg(script)
        .args(["127.0.0.1", &s.client_port.to_string()])
        .arg(&f.pki.dir)
        .env("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")
        .output()
        .expect("python3");
    assert!(
        output.status.success(),
        "python etcd3 with client certificates failed:\n{}\n{}",
        stdout(&output),
        stderr(&output)
    );
    assert_eq!(stdout(&output), "OK\n");
}
