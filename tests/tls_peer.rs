//! Checks peer TLS end to end (issue 14): three members replicate over https:// peer URLs
//! with --peer-client-cert-auth and elect a new leader when theirs is killed; a fourth
//! joins and catches up by snapshot over it; a peer with a certificate from another CA,
//! outside --peer-cert-allowed-cn, or whose SANs do not name the address it connects from
//! is refused with etcd's log line; rotated peer certificate files are served to new peer
//! connections without a restart while the cluster keeps committing. Real tern processes,
//! certificates from rcgen (common::pki).

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::pki::{Ca, Pki, SERVER_SANS, VALID};
use common::{assert_ok, etcdctl, stderr, stdout, tern_binary};

/// Longest wait for something a member logs or a client sees.
const WAIT: Duration = Duration::from_secs(30);

/// A cluster of tern processes whose peer URLs are https://, each member with its own
/// certificate pair; logs go to `<pki>/<name>.log`.
struct TlsCluster {
    children: Vec<std::process::Child>,
    client_ports: Vec<u16>,
    peer_ports: Vec<u16>,
    logs: Vec<PathBuf>,
    data_dirs: Vec<PathBuf>,
}

impl TlsCluster {
    /// `certs[i]` is member i's (cert, key, CA file); `extra` goes to every member.
    fn start(pki: &Pki, certs: &[(String, String, String)], extra: &[&str]) -> TlsCluster {
        TlsCluster::start_each(pki, certs, |_| {
            extra.iter().map(|a| a.to_string()).collect()
        })
    }

    /// As `start`, with `extra(i)` as member i's further arguments.
    fn start_each(
        pki: &Pki,
        certs: &[(String, String, String)],
        extra: impl Fn(usize) -> Vec<String>,
    ) -> TlsCluster {
        let n = certs.len();
        let peer_ports: Vec<u16> = (0..n).map(|_| common::free_port()).collect();
        let client_ports: Vec<u16> = (0..n).map(|_| common::free_port()).collect();
        let initial = (0..n)
            .map(|i| format!("p{i}=https://127.0.0.1:{}", peer_ports[i]))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = TlsCluster {
            children: Vec::new(),
            client_ports: Vec::new(),
            peer_ports: peer_ports.clone(),
            logs: Vec::new(),
            data_dirs: Vec::new(),
        };
        for (i, cert) in certs.iter().enumerate() {
            let extra = extra(i);
            let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
            cluster.spawn(
                pki,
                i,
                (client_ports[i], peer_ports[i]),
                cert,
                &initial,
                false,
                &extra,
            );
        }
        cluster
    }

    /// Starts member `i` on (client port, peer port) with `initial` as its
    /// --initial-cluster (`existing`: joining a running cluster).
    #[allow(clippy::too_many_arguments)]
    fn spawn(
        &mut self,
        pki: &Pki,
        i: usize,
        (client_port, peer_port): (u16, u16),
        (cert, key, ca): &(String, String, String),
        initial: &str,
        existing: bool,
        extra: &[&str],
    ) {
        let client = format!("http://127.0.0.1:{client_port}");
        let peer = format!("https://127.0.0.1:{peer_port}");
        let log = pki.dir.join(format!("p{i}.log"));
        let data_dir = pki.dir.join(format!("p{i}.data"));
        let child = Command::new(tern_binary())
            .args(["--name", &format!("p{i}"), "--data-dir"])
            .arg(&data_dir)
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", initial])
            .args(if existing {
                &["--initial-cluster-state", "existing"][..]
            } else {
                &[][..]
            })
            .args(["--peer-cert-file", cert, "--peer-key-file", key])
            .args(["--peer-trusted-ca-file", ca, "--peer-client-cert-auth"])
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        self.children.push(child);
        self.client_ports.push(client_port);
        self.logs.push(log);
        self.data_dirs.push(data_dir);
    }

    fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.logs[i]).unwrap_or_default()
    }

    fn wait_for_log(&self, i: usize, parts: &[&str]) {
        let deadline = Instant::now() + WAIT;
        while !self
            .log(i)
            .lines()
            .any(|l| parts.iter().all(|p| l.contains(p)))
        {
            assert!(
                Instant::now() < deadline,
                "member {i} never logged {parts:?}; log:\n{}",
                self.log(i)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn endpoint(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.client_ports[i])
    }

    /// (this member's id, the leader's id as it knows it; 0 for none), from `etcdctl
    /// endpoint status`.
    fn member_and_leader(&self, i: usize) -> Option<(u64, u64)> {
        let out = etcdctl(
            &self.endpoint(i),
            &["--command-timeout=2s", "endpoint", "status", "-w", "json"],
            None,
        );
        let status: serde_json::Value = serde_json::from_str(&stdout(&out)).ok()?;
        let status = &status[0]["Status"];
        Some((
            status["header"]["member_id"].as_u64()?,
            status["leader"].as_u64()?,
        ))
    }

    fn kill(&mut self, i: usize) {
        let _ = self.children[i].kill();
        let _ = self.children[i].wait();
    }
}

impl Drop for TlsCluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn three_members_replicate_over_peer_tls() {
    let pki = Pki::new("peer");
    let ca = Ca::new(&pki, "peer-ca");
    // One shared CN for --peer-cert-allowed-cn; each pair copied out before the next
    // issue of the same name overwrites it.
    let ca_file = pki.path("peer-ca.pem");
    let certs: Vec<_> = (0..3)
        .map(|i| {
            let (cert, key) = ca.issue(&pki, "etcd-peer", SERVER_SANS, 30 + i as u8, VALID);
            let cert_i = pki.write(
                &format!("peer{i}.pem"),
                &std::fs::read_to_string(cert).unwrap(),
            );
            let key_i = pki.write(
                &format!("peer{i}.key"),
                &std::fs::read_to_string(key).unwrap(),
            );
            (cert_i, key_i, ca_file.clone())
        })
        .collect();
    let mut cluster = TlsCluster::start(&pki, &certs, &["--peer-cert-allowed-cn", "etcd-peer"]);
    for i in 0..3 {
        cluster.wait_for_log(i, &["ready to serve client requests"]);
    }
    assert_ok(
        &etcdctl(&cluster.endpoint(0), &["put", "replicated", "yes"], None),
        "OK\n",
    );
    for i in 1..3 {
        assert_ok(
            &etcdctl(
                &cluster.endpoint(i),
                &["get", "replicated", "--print-value-only"],
                None,
            ),
            "yes\n",
        );
    }
    for i in 0..3 {
        assert!(
            !cluster.log(i).contains("rejected connection"),
            "{}",
            cluster.log(i)
        );
    }

    // A new election over peer TLS: kill the leader; the two others elect one of them
    // and keep replicating.
    let leader_id = cluster.member_and_leader(0).expect("endpoint status").1;
    let leader = (0..3)
        .find(|&i| cluster.member_and_leader(i).map(|(id, _)| id) == Some(leader_id))
        .expect("no member is the leader");
    cluster.kill(leader);
    let survivors: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let deadline = Instant::now() + WAIT;
    for &i in &survivors {
        loop {
            match cluster.member_and_leader(i) {
                Some((_, now)) if now != 0 && now != leader_id => break,
                _ => assert!(
                    Instant::now() < deadline,
                    "member {i} elected no new leader"
                ),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    assert_ok(
        &etcdctl(
            &cluster.endpoint(survivors[0]),
            &["put", "after-election", "yes"],
            None,
        ),
        "OK\n",
    );
    assert_ok(
        &etcdctl(
            &cluster.endpoint(survivors[1]),
            &["get", "after-election", "--print-value-only"],
            None,
        ),
        "yes\n",
    );
}

#[test]
fn a_peer_with_a_certificate_from_another_ca_is_refused() {
    let pki = Pki::new("peer-foreign");
    let ca = Ca::new(&pki, "peer-ca");
    let other = Ca::new(&pki, "rogue-ca");
    let ca_file = pki.path("peer-ca.pem");
    let good: Vec<_> = (0..2)
        .map(|i| {
            let (cert, key) = ca.issue(&pki, &format!("good{i}"), SERVER_SANS, 40 + i, VALID);
            (cert, key, ca_file.clone())
        })
        .collect();
    // The third member trusts the cluster's CA but presents a certificate of another one.
    let (rogue_cert, rogue_key) = other.issue(&pki, "rogue", SERVER_SANS, 50, VALID);
    let mut certs = good.clone();
    certs.push((rogue_cert, rogue_key, ca_file.clone()));
    let cluster = TlsCluster::start(&pki, &certs, &[]);
    // The two good members have quorum and serve; both refuse the rogue's connections.
    cluster.wait_for_log(0, &["ready to serve client requests"]);
    cluster.wait_for_log(1, &["ready to serve client requests"]);
    assert_ok(
        &etcdctl(&cluster.endpoint(0), &["put", "k", "v"], None),
        "OK\n",
    );
    let refused = |i: usize| {
        cluster.log(i).lines().any(|l| {
            l.contains("rejected connection")
                && l.contains("certificate signed by unknown authority")
        })
    };
    let deadline = Instant::now() + WAIT;
    while !(refused(0) || refused(1)) {
        assert!(
            Instant::now() < deadline,
            "no member refused the rogue peer"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Nothing reached the rogue: its store never saw the write.
    let out = etcdctl(
        &cluster.endpoint(2),
        &[
            "--dial-timeout=1s",
            "--command-timeout=2s",
            "get",
            "k",
            "--consistency=s",
            "--print-value-only",
        ],
        None,
    );
    assert_ne!(stdout(&out), "v\n");
}

#[test]
fn a_peer_outside_peer_cert_allowed_cn_is_refused() {
    let pki = Pki::new("peer-cn");
    let ca = Ca::new(&pki, "peer-ca");
    let ca_file = pki.path("peer-ca.pem");
    let mut certs = Vec::new();
    for i in 0..2u8 {
        let (cert, key) = ca.issue(&pki, "etcd-peer", SERVER_SANS, 60 + i, VALID);
        let cert = pki.write(
            &format!("ok{i}.pem"),
            &std::fs::read_to_string(cert).unwrap(),
        );
        let key = pki.write(
            &format!("ok{i}.key"),
            &std::fs::read_to_string(key).unwrap(),
        );
        certs.push((cert, key, ca_file.clone()));
    }
    // Same CA, another CN.
    let (cert, key) = ca.issue(&pki, "intruder", SERVER_SANS, 70, VALID);
    certs.push((cert, key, ca_file.clone()));
    let cluster = TlsCluster::start(&pki, &certs, &["--peer-cert-allowed-cn", "etcd-peer"]);
    cluster.wait_for_log(0, &["ready to serve client requests"]);
    let refused = |i: usize| {
        cluster.log(i).lines().any(|l| {
            l.contains("rejected connection") && l.contains("CommonName authentication failed")
        })
    };
    let deadline = Instant::now() + WAIT;
    while !(refused(0) || refused(1)) {
        assert!(
            Instant::now() < deadline,
            "no member refused the peer with the wrong CN"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Puts `count` keys `<prefix><n>` through the Python etcd3 client on `port` (one process,
/// not one etcdctl per key).
fn put_many(port: u16, prefix: &str, count: usize) {
    let script = format!(
        "import etcd3\nc = etcd3.client(port={port}, timeout=30)\nfor i in range({count}):\n    c.put('{prefix}%d' % i, 'v')\n"
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .env("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_member_added_over_peer_tls_catches_up_by_snapshot() {
    let pki = Pki::new("peer-add");
    let ca = Ca::new(&pki, "peer-ca");
    let ca_file = pki.path("peer-ca.pem");
    let certs: Vec<_> = (0..4u8)
        .map(|i| {
            let (cert, key) = ca.issue(&pki, &format!("member{i}"), SERVER_SANS, 80 + i, VALID);
            (cert, key, ca_file.clone())
        })
        .collect();
    let extra = ["--snapshot-count", "200"];
    let mut cluster = TlsCluster::start(&pki, &certs[..3], &extra);
    for i in 0..3 {
        cluster.wait_for_log(i, &["ready to serve client requests"]);
    }
    // Far past --snapshot-count: the leader's log no longer starts at the beginning.
    put_many(cluster.client_ports[0], "k", 1000);
    let (client_port, peer_port) = (common::free_port(), common::free_port());
    let add = etcdctl(
        &cluster.endpoint(0),
        &[
            "member",
            "add",
            "p3",
            &format!("--peer-urls=https://127.0.0.1:{peer_port}"),
        ],
        None,
    );
    assert!(add.status.success(), "member add: {}", stderr(&add));
    let initial = stdout(&add)
        .lines()
        .find_map(|l| {
            l.strip_prefix("ETCD_INITIAL_CLUSTER=\"")
                .map(|v| v.trim_end_matches('"').to_owned())
        })
        .expect("member add prints ETCD_INITIAL_CLUSTER");
    // A snapshot the new member can take must list it: more entries after the add.
    put_many(cluster.client_ports[0], "after", 300);
    cluster.spawn(
        &pki,
        3,
        (client_port, peer_port),
        &certs[3],
        &initial,
        true,
        &extra,
    );
    cluster.wait_for_log(3, &["ready to serve client requests"]);
    cluster.wait_for_log(3, &["restored snapshot database"]);
    let out = etcdctl(
        &cluster.endpoint(3),
        &["get", "k999", "--consistency=s", "--print-value-only"],
        None,
    );
    assert_ok(&out, "v\n");
    for i in 0..4 {
        assert!(
            !cluster.log(i).contains("rejected connection"),
            "{}",
            cluster.log(i)
        );
    }
}

/// Three members whose peer server certificates are valid for 127.0.0.1; member 2 dials
/// with a client certificate (`--peer-client-cert-file`) whose only SAN is `client_sans`.
/// `extra` goes to every member.
fn cluster_with_a_dialling_cert(pki: &Pki, client_sans: &[&str], extra: &[&str]) -> TlsCluster {
    let ca = Ca::new(pki, "peer-ca");
    let ca_file = pki.path("peer-ca.pem");
    let certs: Vec<_> = (0..3u8)
        .map(|i| {
            let (cert, key) = ca.issue(pki, &format!("member{i}"), SERVER_SANS, 80 + i, VALID);
            (cert, key, ca_file.clone())
        })
        .collect();
    let (client_cert, client_key) = ca.issue(pki, "dialler", client_sans, 90, VALID);
    TlsCluster::start_each(pki, &certs, |i| {
        let mut args: Vec<String> = extra.iter().map(|a| a.to_string()).collect();
        if i == 2 {
            args.extend([
                "--peer-client-cert-file".to_owned(),
                client_cert.clone(),
                "--peer-client-key-file".to_owned(),
                client_key.clone(),
            ]);
        }
        args
    })
}

#[test]
fn a_peer_whose_certificate_does_not_name_its_address_is_refused() {
    let pki = Pki::new("peer-san");
    // Member 2's connections come from 127.0.0.1; its dialling certificate names 127.0.0.2.
    let cluster = cluster_with_a_dialling_cert(&pki, &["127.0.0.2"], &[]);
    cluster.wait_for_log(0, &["ready to serve client requests"]);
    let deadline = Instant::now() + WAIT;
    let refusal = loop {
        let line = (0..2).find_map(|i| {
            cluster
                .log(i)
                .lines()
                .find(|l| {
                    l.contains("rejected connection")
                        && l.contains("x509: certificate is valid for 127.0.0.2, not 127.0.0.1")
                })
                .map(str::to_owned)
        });
        if let Some(line) = line {
            break line;
        }
        assert!(
            Instant::now() < deadline,
            "no member refused member 2's connections; logs:\n{}\n{}",
            cluster.log(0),
            cluster.log(1)
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    // etcd's fields: the certificate's SANs beside the remote address.
    assert!(
        refusal.contains(r#""ip-addresses":["127.0.0.2"],"dns-names":[]"#),
        "{refusal}"
    );
    assert!(
        refusal.contains(r#""remote-addr":"127.0.0.1:"#),
        "{refusal}"
    );
}

#[test]
fn skip_client_san_verification_admits_that_peer() {
    let pki = Pki::new("peer-san-skip");
    let cluster = cluster_with_a_dialling_cert(
        &pki,
        &["127.0.0.2"],
        &["--experimental-peer-skip-client-san-verification"],
    );
    for i in 0..3 {
        cluster.wait_for_log(i, &["ready to serve client requests"]);
    }
    // A write through member 2 reaches the leader over member 2's own connections.
    assert_ok(
        &etcdctl(&cluster.endpoint(2), &["put", "through-2", "yes"], None),
        "OK\n",
    );
    assert_ok(
        &etcdctl(
            &cluster.endpoint(0),
            &["get", "through-2", "--print-value-only"],
            None,
        ),
        "yes\n",
    );
    for i in 0..3 {
        assert!(
            !cluster.log(i).contains("rejected connection"),
            "{}",
            cluster.log(i)
        );
    }
}

/// The serial number (openssl's hex) of the certificate member `port`'s peer listener
/// serves to a new connection, dialled with `client` (cert, key) and trusting `ca`.
fn served_serial(port: u16, client: &(String, String), ca: &str) -> String {
    let handshake = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args(["-CAfile", ca, "-cert", &client.0, "-key", &client.1])
        .args(["-verify_return_error", "-showcerts"])
        .stdin(Stdio::null())
        .output()
        .expect("openssl s_client");
    let text = String::from_utf8_lossy(&handshake.stdout).into_owned();
    let pem_start = text.find("-----BEGIN CERTIFICATE-----").unwrap_or(0);
    let pem_end = text
        .find("-----END CERTIFICATE-----")
        .map_or(text.len(), |e| e + "-----END CERTIFICATE-----".len());
    let mut x509 = Command::new("openssl")
        .args(["x509", "-noout", "-serial"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("openssl x509");
    use std::io::Write as _;
    x509.stdin
        .take()
        .unwrap()
        .write_all(&text.as_bytes()[pem_start..pem_end])
        .unwrap();
    let out = x509.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn rotated_peer_certificates_serve_new_connections_without_a_restart() {
    let pki = Pki::new("peer-rotate");
    let ca = Ca::new(&pki, "peer-ca");
    let ca_file = pki.path("peer-ca.pem");
    // Each member's files live at fixed paths, rewritten in place by the rotation.
    let issue = |i: u8, serial: u8| {
        let (cert, key) = ca.issue(&pki, &format!("fresh{i}"), SERVER_SANS, serial, VALID);
        (
            std::fs::read_to_string(cert).unwrap(),
            std::fs::read_to_string(key).unwrap(),
        )
    };
    let certs: Vec<_> = (0..3u8)
        .map(|i| {
            let (cert, key) = issue(i, 0x10 + i);
            (
                pki.write(&format!("member{i}.pem"), &cert),
                pki.write(&format!("member{i}.key"), &key),
                ca_file.clone(),
            )
        })
        .collect();
    let (probe_cert, probe_key) = ca.issue(&pki, "probe", &[], 0x30, VALID);
    let probe = (probe_cert, probe_key);
    let cluster = TlsCluster::start(&pki, &certs, &[]);
    for i in 0..3 {
        cluster.wait_for_log(i, &["ready to serve client requests"]);
    }
    for i in 0..3 {
        assert_eq!(
            served_serial(cluster.peer_ports[i], &probe, &ca_file),
            format!("serial={:02X}", 0x10 + i)
        );
    }
    assert_ok(
        &etcdctl(&cluster.endpoint(0), &["put", "before", "1"], None),
        "OK\n",
    );
    // Rotate every member's pair: key first, then certificate, as a tool writing the
    // files one by one would (the half-written state fails to load and is retried).
    for (i, (cert, key, _)) in certs.iter().enumerate() {
        let (new_cert, new_key) = issue(i as u8, 0x20 + i as u8);
        std::fs::write(key, new_key).unwrap();
        std::fs::write(cert, new_cert).unwrap();
    }
    for i in 0..3 {
        cluster.wait_for_log(i, &["reloaded TLS certificates", "\"side\":\"peer\""]);
        let expected = format!("serial={:02X}", 0x20 + i);
        let deadline = Instant::now() + WAIT;
        loop {
            let served = served_serial(cluster.peer_ports[i], &probe, &ca_file);
            if served == expected {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "member {i} still serves {served} after the rotation"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // The cluster kept its peer connections (and makes new ones with the new pairs):
    // writes commit and every member serves them.
    assert_ok(
        &etcdctl(&cluster.endpoint(1), &["put", "after", "2"], None),
        "OK\n",
    );
    for i in 0..3 {
        let out = etcdctl(
            &cluster.endpoint(i),
            &["get", "before", "--print-value-only"],
            None,
        );
        assert_ok(&out, "1\n");
        let out = etcdctl(
            &cluster.endpoint(i),
            &["get", "after", "--print-value-only"],
            None,
        );
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(stdout(&out), "2\n");
    }
    for i in 0..3 {
        assert!(
            !cluster.log(i).contains("rejected connection"),
            "{}",
            cluster.log(i)
        );
    }
}
