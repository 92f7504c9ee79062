//! Checks Maintenance.Snapshot end to end with real etcd tools: the real `etcdctl
//! snapshot save` fetches tern's bbolt database, `snapshot status` reads it, `snapshot
//! restore` (which checks the appended SHA-256) turns it into an etcd data dir, and a real
//! etcd 3.4 started there serves the same keys, revisions, versions, leases, compaction and
//! HashKV as tern; a snapshot taken while writes keep coming is exactly tern's state at the
//! revision it reports; a damaged snapshot is refused by the hash check. The reverse: a
//! snapshot of real etcd, checked by `ternutl snapshot status` (output identical to
//! etcdctl's) and restored by `ternutl snapshot restore`, starts a tern (one member, and a
//! 3-member cluster) serving what etcd served, across a restart; and ternutl refuses bad
//! hashes, missing hashes and existing data dirs with etcd's texts. A stopped etcd's own
//! data dir database converts the same way (`--skip-hash-check`). A client that goes away
//! mid-snapshot frees its snapshot slot: later snapshots all work.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{etcdctl, free_port, stderr, stdout, ternutl_run, TernServer};

/// How long a real etcd may take to serve after it starts.
const ETCD_STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

fn ok(endpoint: &str, args: &[&str]) -> String {
    common::etcdctl_ok(endpoint, args)
}

use common::Scratch;

/// A real etcd 3.4 (or a tern started by hand on a restored dir), killed on drop.
struct Etcd {
    child: Child,
    endpoint: String,
}

impl Etcd {
    /// Real etcd on `data_dir` as the only member `name`.
    fn start(name: &str, data_dir: &Path, peer_url: &str) -> Etcd {
        let initial_cluster = format!("{name}={peer_url}");
        Etcd::spawn(
            "etcd",
            name,
            data_dir,
            peer_url,
            &initial_cluster,
            free_port(),
        )
    }

    /// `program` (etcd or tern) as member `name` of `initial_cluster`, serving clients on
    /// `client_port`.
    fn spawn(
        program: &str,
        name: &str,
        data_dir: &Path,
        peer_url: &str,
        initial_cluster: &str,
        client_port: u16,
    ) -> Etcd {
        let etcd = Etcd::spawn_only(
            program,
            name,
            data_dir,
            peer_url,
            initial_cluster,
            client_port,
        );
        etcd.wait_serving(data_dir);
        etcd
    }

    fn spawn_only(
        program: &str,
        name: &str,
        data_dir: &Path,
        peer_url: &str,
        initial_cluster: &str,
        client_port: u16,
    ) -> Etcd {
        let client_url = format!("http://127.0.0.1:{client_port}");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.with_extension("log"))
            .unwrap();
        let child = Command::new(program)
            .args(["--name", name, "--data-dir"])
            .arg(data_dir)
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", peer_url])
            .args(["--initial-advertise-peer-urls", peer_url])
            .args(["--initial-cluster", initial_cluster])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{program} not found ({e}): the test command (./test.sh) installs etcd")
            });
        Etcd {
            child,
            endpoint: client_url.trim_start_matches("http://").to_string(),
        }
    }

    fn wait_serving(&self, data_dir: &Path) {
        let deadline = Instant::now() + ETCD_STARTUP_TIMEOUT;
        while !etcdctl(&self.endpoint, &["get", "probe"], None)
            .status
            .success()
        {
            assert!(
                Instant::now() < deadline,
                "the server did not serve {}; log:\n{}",
                data_dir.display(),
                std::fs::read_to_string(data_dir.with_extension("log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Etcd {
    /// Stops the server with SIGTERM (etcd commits its backend on the way out) and waits.
    fn stop(mut self) {
        // Safety: kill(2) on the pid of our own child, not yet reaped.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let _ = self.child.wait();
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `snapshot save` from `endpoint` into `path`.
fn save(endpoint: &str, path: &Path) {
    let out = ok(endpoint, &["snapshot", "save", path.to_str().unwrap()]);
    assert!(out.contains("Snapshot saved at"), "{out}");
}

/// `snapshot status -w json`: (revision, total keys, total size).
fn status(path: &Path) -> (u64, u64, u64) {
    let out = ok(
        "127.0.0.1:1",
        &["snapshot", "status", path.to_str().unwrap(), "-w", "json"],
    );
    let field = |name: &str| -> u64 {
        let at = out.find(&format!("\"{name}\":")).unwrap() + name.len() + 3;
        out[at..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap()
    };
    (field("revision"), field("totalKey"), field("totalSize"))
}

/// `snapshot restore` of `snapshot` into `data_dir` as member `name` at `peer_url`.
fn restore(snapshot: &Path, name: &str, data_dir: &Path, peer_url: &str) -> std::process::Output {
    Command::new(common::etcdctl_binary())
        .env("ETCDCTL_API", "3")
        .args(["snapshot", "restore"])
        .arg(snapshot)
        .args(["--name", name, "--data-dir"])
        .arg(data_dir)
        .args(["--initial-cluster", &format!("{name}={peer_url}")])
        .args(["--initial-advertise-peer-urls", peer_url])
        .output()
        .unwrap()
}

/// The part of a JSON response after its header (the header names the member).
fn after_header(json: &str) -> String {
    let at = json.find("},").expect("a header") + 2;
    json[at..].to_string()
}

/// What a client sees of the key space and leases at `rev` (0: now), member-independent.
fn observe(endpoint: &str, rev: u64) -> Vec<String> {
    let rev_flag = format!("--rev={rev}");
    let mut seen = vec![after_header(&ok(
        endpoint,
        &["get", "", "--prefix", "-w", "json", &rev_flag],
    ))];
    let hash = ok(endpoint, &["endpoint", "hashkv", "-w", "json", &rev_flag]);
    seen.push(hash[hash.find("\"hash\"").unwrap()..].to_string());
    let leases = ok(endpoint, &["lease", "list"]);
    let mut ids: Vec<&str> = leases.lines().skip(1).collect();
    ids.sort();
    for id in ids {
        let ttl = ok(
            endpoint,
            &["lease", "timetolive", id, "--keys", "-w", "json"],
        );
        let granted = &ttl[ttl.find("\"granted-ttl\"").unwrap()..];
        let keys = ttl.find("\"keys\"").map_or("", |at| &ttl[at..]);
        seen.push(format!(
            "lease {id} {} {keys}",
            &granted[..granted.find(',').unwrap()]
        ));
    }
    seen
}

#[test]
fn tern_snapshot_restores_into_real_etcd() {
    let tern = TernServer::start();
    let ep = tern.endpoint();
    ok(&ep, &["put", "a", "1"]);
    ok(&ep, &["put", "b", "2"]);
    ok(&ep, &["put", "a", "3"]);
    ok(&ep, &["del", "b"]);
    let lease = ok(&ep, &["lease", "grant", "900"]);
    let lease = lease.split_whitespace().nth(1).unwrap().to_string();
    ok(&ep, &["put", "leased", "v", &format!("--lease={lease}")]);
    ok(&ep, &["compaction", "3", "--physical"]);
    // Enough data for multi-level trees and an overflowing value.
    let big = "x".repeat(100_000);
    ok(&ep, &["put", "big", &big]);
    let mut txn = String::new();
    for i in 0..100 {
        txn.push_str(&format!("put k{i:04} {}\n", "v".repeat(900)));
    }
    for _ in 0..4 {
        let out = common::etcdctl(&ep, &["txn"], Some(&format!("\n{txn}\n\n")));
        assert!(out.status.success(), "{}", stderr(&out));
    }
    ok(&ep, &["put", "last", "1"]);
    let before = observe(&ep, 0);

    let scratch = Scratch::new("restore");
    let snap = scratch.0.join("snap.db");
    save(&ep, &snap);
    let (revision, total_keys, total_size) = status(&snap);
    let header = ok(&ep, &["get", "last", "-w", "json"]);
    assert!(
        header.contains(&format!("\"revision\":{revision},")),
        "{header}"
    );
    assert!(total_keys > 400, "{total_keys}");
    // The file is the database plus etcd's 32-byte SHA-256.
    assert_eq!(std::fs::metadata(&snap).unwrap().len(), total_size + 32);

    let data_dir = scratch.0.join("etcd.data");
    let peer_url = format!("http://127.0.0.1:{}", free_port());
    let out = restore(&snap, "restored", &data_dir, &peer_url);
    assert!(out.status.success(), "restore failed: {}", stderr(&out));
    let etcd = Etcd::start("restored", &data_dir, &peer_url);
    assert_eq!(observe(&etcd.endpoint, 0), before);
    // Compaction carried over: the compacted revision is gone on etcd too.
    let old = etcdctl(&etcd.endpoint, &["get", "a", "--rev=2"], None);
    assert!(
        stderr(&old).contains("required revision has been compacted"),
        "{}",
        stderr(&old)
    );
    // The restored member is the one the restore named, and it takes writes.
    let members = ok(&etcd.endpoint, &["member", "list"]);
    assert!(
        members.contains(&format!("restored, {peer_url}")),
        "{members}"
    );
    ok(&etcd.endpoint, &["put", "after", "restore"]);
    ok(&etcd.endpoint, &["defrag"]);
    assert_eq!(
        ok(&etcd.endpoint, &["get", "a", "--print-value-only"]),
        "3\n"
    );
    // tern serves on unchanged.
    assert_eq!(observe(&ep, 0), before);
}

#[test]
fn snapshot_during_writes_is_tern_at_its_revision() {
    let tern = TernServer::start();
    let ep = tern.endpoint();
    let mut txn = String::new();
    for i in 0..100 {
        txn.push_str(&format!("put seed{i:04} {}\n", "s".repeat(500)));
    }
    let out = common::etcdctl(&ep, &["txn"], Some(&format!("\n{txn}\n\n")));
    assert!(out.status.success(), "{}", stderr(&out));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let ep = ep.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut i = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                ok(&ep, &["put", &format!("w{}", i % 50), &i.to_string()]);
                i += 1;
            }
            i
        })
    };
    let scratch = Scratch::new("concurrent");
    let mut snapshots = Vec::new();
    for n in 0..3 {
        let snap = scratch.0.join(format!("snap{n}.db"));
        save(&ep, &snap);
        snapshots.push(snap);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let puts = writer.join().unwrap();
    assert!(puts > 0);
    for (n, snap) in snapshots.iter().enumerate() {
        let (revision, _, _) = status(snap);
        let data_dir = scratch.0.join(format!("etcd{n}.data"));
        let peer_url = format!("http://127.0.0.1:{}", free_port());
        let out = restore(snap, "restored", &data_dir, &peer_url);
        assert!(out.status.success(), "restore failed: {}", stderr(&out));
        let etcd = Etcd::start("restored", &data_dir, &peer_url);
        let at_revision = |endpoint: &str, rev: u64| {
            let mut seen = observe(endpoint, rev);
            seen.truncate(2); // keys and HashKV; leases have no revision
            seen
        };
        assert_eq!(
            at_revision(&etcd.endpoint, 0),
            at_revision(&ep, revision),
            "snapshot {n} at revision {revision}"
        );
    }
}

#[test]
fn a_damaged_snapshot_fails_the_hash_check() {
    let tern = TernServer::start();
    let ep = tern.endpoint();
    ok(&ep, &["put", "k", "v"]);
    let scratch = Scratch::new("damaged");
    let snap = scratch.0.join("snap.db");
    save(&ep, &snap);
    let mut bytes = std::fs::read(&snap).unwrap();
    // A byte inside the last data page: the database still opens, its hash is wrong.
    let at = bytes.len() - 32 - 100;
    bytes[at] ^= 0xff;
    std::fs::write(&snap, &bytes).unwrap();
    let peer_url = format!("http://127.0.0.1:{}", free_port());
    let out = restore(&snap, "restored", &scratch.0.join("etcd.data"), &peer_url);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("expected sha256"), "{}", stderr(&out));
}

/// `ternutl snapshot restore` of `snapshot` as `name` of `initial_cluster`.
fn ternutl_restore(
    snapshot: &Path,
    name: &str,
    data_dir: &Path,
    peer_url: &str,
    initial_cluster: &str,
    extra: &[&str],
) -> std::process::Output {
    let mut args = vec![
        "snapshot",
        "restore",
        snapshot.to_str().unwrap(),
        "--name",
        name,
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--initial-cluster",
        initial_cluster,
        "--initial-advertise-peer-urls",
        peer_url,
    ];
    args.extend_from_slice(extra);
    ternutl_run(&args)
}

/// A real etcd with keys, overwrites, a deletion, a lease with a key, a compaction and
/// enough data for multi-page trees; returns it and its snapshot file.
fn etcd_with_data(scratch: &Scratch) -> (Etcd, PathBuf) {
    let data_dir = scratch.0.join("source.etcd");
    let peer_url = format!("http://127.0.0.1:{}", free_port());
    let etcd = Etcd::start("source", &data_dir, &peer_url);
    let ep = etcd.endpoint.clone();
    ok(&ep, &["put", "a", "1"]);
    ok(&ep, &["put", "b", "2"]);
    ok(&ep, &["put", "a", "3"]);
    ok(&ep, &["del", "b"]);
    let lease = ok(&ep, &["lease", "grant", "900"]);
    let lease = lease.split_whitespace().nth(1).unwrap().to_string();
    ok(&ep, &["put", "leased", "v", &format!("--lease={lease}")]);
    ok(&ep, &["compaction", "3", "--physical"]);
    ok(&ep, &["put", "big", &"y".repeat(100_000)]);
    let mut txn = String::new();
    for i in 0..100 {
        txn.push_str(&format!("put k{i:04} {}\n", "v".repeat(700)));
    }
    for _ in 0..3 {
        let out = common::etcdctl(&ep, &["txn"], Some(&format!("\n{txn}\n\n")));
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let snap = scratch.0.join("etcd.snap");
    save(&ep, &snap);
    (etcd, snap)
}

#[test]
fn etcd_snapshot_restores_into_tern() {
    let scratch = Scratch::new("from-etcd");
    let (etcd, snap) = etcd_with_data(&scratch);
    let expected = observe(&etcd.endpoint, 0);
    for format in ["simple", "table", "json", "fields"] {
        let theirs = ok(
            "127.0.0.1:1",
            &["snapshot", "status", snap.to_str().unwrap(), "-w", format],
        );
        let ours = ternutl_run(&["snapshot", "status", snap.to_str().unwrap(), "-w", format]);
        assert!(ours.status.success(), "{}", stderr(&ours));
        assert_eq!(stdout(&ours), theirs, "-w {format}");
    }

    let data_dir = scratch.0.join("tern.data");
    let peer_url = format!("http://127.0.0.1:{}", free_port());
    let initial_cluster = format!("restored={peer_url}");
    let out = ternutl_restore(
        &snap,
        "restored",
        &data_dir,
        &peer_url,
        &initial_cluster,
        &[],
    );
    assert!(out.status.success(), "restore failed: {}", stderr(&out));
    assert!(
        stderr(&out).contains("\"msg\":\"restored snapshot\""),
        "{}",
        stderr(&out)
    );
    let tern_binary = common::tern_binary();
    let tern_binary = tern_binary.to_str().unwrap();
    let client_port = free_port();
    let tern = Etcd::spawn(
        tern_binary,
        "restored",
        &data_dir,
        &peer_url,
        &initial_cluster,
        client_port,
    );
    assert_eq!(observe(&tern.endpoint, 0), expected);
    let old = etcdctl(&tern.endpoint, &["get", "a", "--rev=2"], None);
    assert!(
        stderr(&old).contains("required revision has been compacted"),
        "{}",
        stderr(&old)
    );
    let members = ok(&tern.endpoint, &["member", "list"]);
    assert!(
        members.contains(&format!("restored, {peer_url}")),
        "{members}"
    );
    ok(&tern.endpoint, &["put", "after", "restore"]);
    let after = observe(&tern.endpoint, 0);
    // Restarted on its data dir, the restored member keeps all of it.
    drop(tern);
    let tern = Etcd::spawn(
        tern_binary,
        "restored",
        &data_dir,
        &peer_url,
        &initial_cluster,
        client_port,
    );
    assert_eq!(observe(&tern.endpoint, 0), after);
}

#[test]
fn etcd_snapshot_restores_a_three_member_tern_cluster() {
    let scratch = Scratch::new("three");
    let (etcd, snap) = etcd_with_data(&scratch);
    let expected = observe(&etcd.endpoint, 0);
    drop(etcd);
    let names = ["m1", "m2", "m3"];
    let peers: Vec<String> = names
        .iter()
        .map(|_| format!("http://127.0.0.1:{}", free_port()))
        .collect();
    let initial_cluster: Vec<String> = names
        .iter()
        .zip(&peers)
        .map(|(n, p)| format!("{n}={p}"))
        .collect();
    let initial_cluster = initial_cluster.join(",");
    let tern_binary = common::tern_binary();
    let mut members = Vec::new();
    for (name, peer) in names.iter().zip(&peers) {
        let data_dir = scratch.0.join(format!("{name}.data"));
        let out = ternutl_restore(&snap, name, &data_dir, peer, &initial_cluster, &[]);
        assert!(out.status.success(), "restore failed: {}", stderr(&out));
        members.push((
            Etcd::spawn_only(
                tern_binary.to_str().unwrap(),
                name,
                &data_dir,
                peer,
                &initial_cluster,
                free_port(),
            ),
            data_dir,
        ));
    }
    for (member, data_dir) in &members {
        member.wait_serving(data_dir);
    }
    let list = ok(&members[0].0.endpoint, &["member", "list"]);
    assert_eq!(list.lines().count(), 3, "{list}");
    for (member, _) in &members {
        assert_eq!(
            observe(&member.endpoint, 0),
            expected,
            "{}",
            member.endpoint
        );
    }
    ok(&members[1].0.endpoint, &["put", "cluster", "write"]);
    for (member, _) in &members {
        // Linearizable reads: every member sees the write once it is acknowledged.
        assert_eq!(
            ok(&member.endpoint, &["get", "cluster", "--print-value-only"]),
            "write\n"
        );
    }
}

#[test]
fn ternutl_refuses_what_etcd_refuses() {
    let scratch = Scratch::new("refuse");
    let (etcd, snap) = etcd_with_data(&scratch);
    drop(etcd);
    let peer_url = "http://127.0.0.1:2380";
    let cluster = format!("x={peer_url}");
    // A damaged byte in the database: the hash check fails as etcd's does.
    let mut bytes = std::fs::read(&snap).unwrap();
    let at = bytes.len() - 32 - 100;
    bytes[at] ^= 0xff;
    let damaged = scratch.0.join("damaged.snap");
    std::fs::write(&damaged, &bytes).unwrap();
    let target = scratch.0.join("target");
    let ours = ternutl_restore(&damaged, "x", &target, peer_url, &cluster, &[]);
    // Nothing is left behind (etcd's own restore leaves a partial dir).
    assert!(!ours.status.success() && !target.exists());
    let theirs = restore(&damaged, "x", &scratch.0.join("etcd-target"), peer_url);
    let last_line =
        |out: &std::process::Output| stderr(out).lines().last().unwrap_or_default().to_string();
    assert!(
        last_line(&ours).starts_with("Error: expected sha256 ["),
        "{}",
        stderr(&ours)
    );
    assert_eq!(last_line(&ours), last_line(&theirs));
    let _ = std::fs::remove_dir_all(&target);
    // A database without its hash (as copied from a data dir) needs --skip-hash-check.
    let bare = scratch.0.join("bare.db");
    std::fs::write(&bare, &std::fs::read(&snap).unwrap()[..bytes.len() - 32]).unwrap();
    let ours = ternutl_restore(&bare, "x", &target, peer_url, &cluster, &[]);
    assert_eq!(
        last_line(&ours),
        "Error: snapshot missing hash but --skip-hash-check=false"
    );
    let ours = ternutl_restore(
        &bare,
        "x",
        &target,
        peer_url,
        &cluster,
        &["--skip-hash-check"],
    );
    assert!(ours.status.success(), "{}", stderr(&ours));
    // The data dir now exists: a second restore into it is refused.
    let ours = ternutl_restore(&snap, "x", &target, peer_url, &cluster, &[]);
    assert_eq!(
        last_line(&ours),
        format!("Error: data-dir {:?} exists", target.display().to_string())
    );
    // A name missing from --initial-cluster.
    let ours = ternutl_restore(
        &snap,
        "y",
        &scratch.0.join("other"),
        peer_url,
        &cluster,
        &[],
    );
    assert_eq!(
        last_line(&ours),
        "Error: couldn't find local name \"y\" in the initial cluster configuration"
    );
    // Arguments, as etcdctl words them.
    let ours = ternutl_run(&["snapshot", "status"]);
    assert_eq!(ours.status.code(), Some(128));
    assert_eq!(
        stderr(&ours),
        "Error: snapshot status requires exactly one argument\n"
    );
    let missing = scratch.0.join("missing.db");
    let ours = ternutl_run(&["snapshot", "status", missing.to_str().unwrap()]);
    assert_eq!(ours.status.code(), Some(1));
    assert_eq!(
        stderr(&ours),
        format!(
            "Error: stat {}: no such file or directory\n",
            missing.display()
        )
    );
}

#[test]
fn a_stopped_etcds_data_dir_converts_into_tern() {
    let scratch = Scratch::new("convert");
    let (etcd, _) = etcd_with_data(&scratch);
    let expected = observe(&etcd.endpoint, 0);
    etcd.stop();
    let db = scratch.0.join("source.etcd/member/snap/db");
    let data_dir = scratch.0.join("tern.data");
    let peer_url = format!("http://127.0.0.1:{}", free_port());
    let initial_cluster = format!("converted={peer_url}");
    let out = ternutl_restore(
        &db,
        "converted",
        &data_dir,
        &peer_url,
        &initial_cluster,
        &[],
    );
    assert!(!out.status.success(), "a data dir db has no hash");
    let out = ternutl_restore(
        &db,
        "converted",
        &data_dir,
        &peer_url,
        &initial_cluster,
        &["--skip-hash-check"],
    );
    assert!(out.status.success(), "convert failed: {}", stderr(&out));
    let tern_binary = common::tern_binary();
    let tern = Etcd::spawn(
        tern_binary.to_str().unwrap(),
        "converted",
        &data_dir,
        &peer_url,
        &initial_cluster,
        free_port(),
    );
    assert_eq!(observe(&tern.endpoint, 0), expected);
}

#[test]
fn a_client_gone_mid_snapshot_frees_its_slot() {
    let tern = TernServer::start();
    let ep = tern.endpoint();
    let mut txn = String::new();
    for i in 0..50 {
        txn.push_str(&format!("put k{i:04} {}\n", "v".repeat(20_000)));
    }
    for _ in 0..20 {
        let out = common::etcdctl(&ep, &["txn"], Some(&format!("\n{txn}\n\n")));
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let scratch = Scratch::new("cancel");
    // More clients than SNAPSHOTS_IN_FLIGHT_MAX go away mid-stream, one after another.
    for n in 0..6 {
        let part = scratch.0.join(format!("gone{n}.db.part"));
        let mut child = Command::new(common::etcdctl_binary())
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={ep}"))
            .args(["snapshot", "save"])
            .arg(scratch.0.join(format!("gone{n}.db")))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::fs::metadata(&part).map_or(0, |m| m.len()) == 0 {
            assert!(Instant::now() < deadline, "the snapshot never started");
            std::thread::sleep(Duration::from_millis(5));
        }
        child.kill().unwrap();
        child.wait().unwrap();
    }
    // Every slot came back: snapshots still work, and the server still serves.
    for n in 0..5 {
        let snap = scratch.0.join(format!("after{n}.db"));
        save(&ep, &snap);
        assert!(status(&snap).1 > 50);
    }
    ok(&ep, &["put", "still", "serving"]);
}
