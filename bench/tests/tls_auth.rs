//! tern-bench's own transport over TLS with a client certificate and auth: starts a real
//! etcd serving https with `--client-cert-auth` and auth enabled (certificates made here
//! with the openssl CLI), then checks from the JSON output that unary (put, range, txn-put),
//! client-streaming (lease-keepalive) and bidirectional (watch) subcommands issue their
//! totals without errors, both on tokio's multi-thread runtime and on the current-thread
//! one that a single-CPU affinity mask selects (`taskset -c 0`), and that a wrong password
//! fails with etcd's message. Skipped when etcd is not on PATH unless TERN_REQUIRE_ETCD=1.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Etcd {
    child: Child,
    dir: PathBuf,
    endpoint: String,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn openssl(dir: &Path, args: &[&str]) {
    let status = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl runs");
    assert!(status.success(), "openssl {args:?} failed");
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, all ECDSA P-256.
fn make_pki(dir: &Path) {
    let key = |name: &str| {
        let out = format!("{name}.key");
        openssl(
            dir,
            &[
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out",
                &out,
            ],
        );
    };
    key("ca");
    openssl(
        dir,
        &[
            "req", "-x509", "-new", "-key", "ca.key", "-subj", "/CN=ca", "-days", "2", "-out",
            "ca.pem",
        ],
    );
    for (name, ext) in [
        (
            "server",
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n",
        ),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ] {
        key(name);
        let (csr, pem, keyf, extf) = (
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.key"),
            format!("{name}.ext"),
        );
        std::fs::write(dir.join(&extf), ext).unwrap();
        openssl(
            dir,
            &[
                "req",
                "-new",
                "-key",
                &keyf,
                "-subj",
                &format!("/CN={name}"),
                "-out",
                &csr,
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &extf,
                "-out",
                &pem,
            ],
        );
    }
}

fn tls_flags(dir: &Path) -> Vec<String> {
    let f = |name: &str| dir.join(name).to_str().unwrap().to_string();
    vec![
        "--cacert".into(),
        f("ca.pem"),
        "--cert".into(),
        f("client.pem"),
        "--key".into(),
        f("client.key"),
    ]
}

/// Runs tern-bench (under `taskset -c 0` when `pinned`) and returns (ok, stdout, stderr).
fn bench(etcd: &Etcd, pinned: bool, args: &[&str]) -> (bool, String, String) {
    let exe = env!("CARGO_BIN_EXE_tern-bench");
    let mut command = if pinned {
        let mut c = Command::new("taskset");
        c.args(["-c", "0", exe]);
        c
    } else {
        Command::new(exe)
    };
    let out = command
        .args(["--endpoints", &etcd.endpoint, "--output", "json"])
        .args(tls_flags(&etcd.dir))
        .args(args)
        .output()
        .expect("tern-bench runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn etcdctl(etcd: &Etcd, args: &[&str]) {
    let f = |name: &str| etcd.dir.join(name).to_str().unwrap().to_string();
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", etcd.endpoint))
        .arg(format!("--cacert={}", f("ca.pem")))
        .arg(format!("--cert={}", f("client.pem")))
        .arg(format!("--key={}", f("client.key")))
        .args(args)
        .output()
        .expect("etcdctl runs");
    assert!(
        out.status.success(),
        "etcdctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn start_etcd() -> Option<Etcd> {
    if Command::new("etcd")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_err()
    {
        assert!(
            std::env::var("TERN_REQUIRE_ETCD").as_deref() != Ok("1"),
            "etcd is not on PATH"
        );
        eprintln!("skipped: etcd is not on PATH");
        return None;
    }
    let dir = std::env::temp_dir().join(format!("tern-bench-tls-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    make_pki(&dir);
    let (client_port, peer_port) = (free_port(), free_port());
    let client_url = format!("https://127.0.0.1:{client_port}");
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    let f = |name: &str| dir.join(name).to_str().unwrap().to_string();
    let child = Command::new("etcd")
        .args(["--name", "t", "--data-dir", &f("data")])
        .args(["--listen-client-urls", &client_url])
        .args(["--advertise-client-urls", &client_url])
        .args(["--listen-peer-urls", &peer_url])
        .args(["--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("t={peer_url}")])
        .args([
            "--cert-file",
            &f("server.pem"),
            "--key-file",
            &f("server.key"),
        ])
        .args(["--trusted-ca-file", &f("ca.pem"), "--client-cert-auth"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("etcd starts");
    let etcd = Etcd {
        child,
        dir,
        endpoint: client_url,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !bench(&etcd, false, &["put", "--total", "1"]).0 {
        assert!(Instant::now() < deadline, "etcd did not become ready");
        std::thread::sleep(Duration::from_millis(200));
    }
    for args in [
        &["user", "add", "root:rootpw"][..],
        &["role", "add", "root"],
        &["user", "grant-role", "root", "root"],
        &["user", "add", "bench:benchpw"],
        &["role", "add", "bench"],
        &[
            "role",
            "grant-permission",
            "bench",
            "readwrite",
            "--from-key",
            "",
        ],
        &["user", "grant-role", "bench", "bench"],
        &["auth", "enable"],
    ] {
        etcdctl(&etcd, args);
    }
    Some(etcd)
}

/// (name, count, errors_total) of each report in tern-bench's JSON output.
fn reports(stdout: &str) -> Vec<(String, u64, u64)> {
    let doc: serde_json::Value = serde_json::from_str(stdout).expect("json output");
    doc["reports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_string(),
                r["count"].as_u64().unwrap(),
                r["errors_total"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// A subcommand's arguments and the (report, count) pairs it must produce.
type Case<'a> = (&'a [&'a str], &'a [(&'a str, u64)]);

#[test]
fn every_call_shape_runs_over_tls_with_auth_on_both_runtimes() {
    let Some(etcd) = start_etcd() else { return };
    let cases: &[Case] = &[
        (
            &["--conns", "2", "--clients", "8", "put", "--total", "200"],
            &[("put", 200)],
        ),
        (
            &[
                "--clients",
                "4",
                "range",
                "foo",
                "--prefix",
                "--total",
                "100",
            ],
            &[("range", 100)],
        ),
        (
            &[
                "--clients",
                "4",
                "txn-put",
                "--total",
                "100",
                "--key-space-size",
                "50",
            ],
            &[("txn-put", 100)],
        ),
        (
            &[
                "--conns",
                "2",
                "--clients",
                "8",
                "lease-keepalive",
                "--total",
                "200",
            ],
            &[("lease-keepalive", 200)],
        ),
        (
            &[
                "--conns",
                "2",
                "--clients",
                "2",
                "watch",
                "--streams",
                "2",
                "--watch-per-stream",
                "5",
                "--put-total",
                "10",
            ],
            &[("watch-put", 100)],
        ),
    ];
    for pinned in [false, true] {
        for (args, expected) in cases {
            let mut with_user = vec!["--user", "bench:benchpw"];
            with_user.extend_from_slice(args);
            let (ok, stdout, stderr) = bench(&etcd, pinned, &with_user);
            assert!(ok, "pinned={pinned} {args:?} failed: {stderr}");
            let reports = reports(&stdout);
            for (name, count) in *expected {
                let found = reports
                    .iter()
                    .find(|r| r.0 == *name)
                    .unwrap_or_else(|| panic!("pinned={pinned} {args:?}: no report {name}"));
                assert_eq!(
                    (found.1, found.2),
                    (*count, 0),
                    "pinned={pinned} {args:?}: report {name} (count, errors)"
                );
            }
        }
    }
    // Without the token etcd refuses every put; with a wrong password the login fails.
    let (ok, stdout, _) = bench(&etcd, false, &["put", "--total", "5"]);
    assert!(ok);
    let put = reports(&stdout);
    assert_eq!(
        (put[0].1, put[0].2),
        (0, 5),
        "puts without a token: {put:?}"
    );
    let (ok, _, stderr) = bench(
        &etcd,
        false,
        &["--user", "bench:wrong", "put", "--total", "1"],
    );
    assert!(!ok);
    assert!(
        stderr.contains("authentication failed, invalid user ID or password"),
        "{stderr}"
    );
}
