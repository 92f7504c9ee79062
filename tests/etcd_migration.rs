//! Checks migration from live etcd 3.4 data dirs (docs/migration.md): a real etcd under a
//! put load (a Python etcd3 client printing each acknowledged put) is SIGKILLed with its
//! backend far behind its WAL (`--backend-batch-interval 1h`); tern started on one copy of
//! its data dir converts it and serves every acknowledged put, lease, user and role, and
//! `HashKV` at the shared revision equals what real etcd reports when it restarts on another
//! copy. A 3-member etcd cluster under load is killed and each member's dir started as tern
//! (the cluster keeps its IDs and every acknowledged write), then moved back to real etcd
//! through `etcdctl snapshot save` / `snapshot restore` with every write kept.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{etcdctl, free_port, stderr};

/// How long a server may take to serve after it starts (a conversion included).
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the load may take to reach its acknowledged-put target.
const LOAD_TIMEOUT: Duration = Duration::from_secs(120);

fn ok(endpoint: &str, args: &[&str]) -> String {
    common::etcdctl_ok(endpoint, args)
}

use common::Scratch;

/// One member's flags: the same for etcd and for tern on the converted dir.
#[derive(Clone)]
struct MemberFlags {
    name: String,
    client_port: u16,
    peer_url: String,
    initial_cluster: String,
}

/// etcd or tern, killed on drop; its stderr goes to `<data_dir>.log`.
struct Server {
    child: Child,
    endpoint: String,
    log: PathBuf,
}

impl Server {
    fn spawn(program: &Path, member: &MemberFlags, data_dir: &Path, extra: &[&str]) -> Server {
        let client_url = format!("http://127.0.0.1:{}", member.client_port);
        let log = data_dir.with_extension("log");
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new(program)
            .args(["--name", &member.name, "--data-dir"])
            .arg(data_dir)
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &member.peer_url])
            .args(["--initial-advertise-peer-urls", &member.peer_url])
            .args(["--initial-cluster", &member.initial_cluster])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{program:?} not found ({e}): the test command (./test.sh) installs etcd")
            });
        Server {
            child,
            endpoint: client_url.trim_start_matches("http://").to_string(),
            log,
        }
    }

    /// Waits until a linearizable read succeeds (a leader exists and this member serves).
    fn wait_serving(&self) {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        while !etcdctl(&self.endpoint, &["get", "probe"], None)
            .status
            .success()
        {
            assert!(
                Instant::now() < deadline,
                "{} did not serve; log:\n{}",
                self.endpoint,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn sigkill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn etcd() -> PathBuf {
    PathBuf::from("etcd")
}

/// etcd's backend committed only by snapshots: after a kill, its db is far behind its WAL.
const LAGGING_BACKEND: [&str; 4] = [
    "--backend-batch-interval",
    "1h",
    "--backend-batch-limit",
    "100000000",
];

/// A Python etcd3 client putting `load/<n>` = `v<n>` in a loop over `endpoints`, printing
/// each key once its put is acknowledged; it stops at its first failure.
struct Load {
    child: Child,
    acked: Arc<Mutex<Vec<String>>>,
    reader: std::thread::JoinHandle<()>,
}

impl Load {
    fn start(endpoints: &[String], prefix: &str) -> Load {
        let script = r#"
import sys, etcd3
prefix = sys.argv[1]
clients = [etcd3.client(host=e.split(':')[0], port=int(e.split(':')[1])) for e in sys.argv[2:]]
n = 0
while True:
    key = '%s%06d' % (prefix, n)
    try:
        clients[n % len(clients)].put(key, 'v%d' % n)
    except Exception:
        sys.exit(0)
    print(key, flush=True)
    n += 1
"#;
        let mut child = Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(prefix)
            .args(endpoints)
            .env("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 with etcd3 (./test.sh installs it)");
        let acked = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().unwrap();
        let sink = acked.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        Load {
            child,
            acked,
            reader,
        }
    }

    fn wait_acked(&self, count: usize) {
        let deadline = Instant::now() + LOAD_TIMEOUT;
        while self.acked.lock().unwrap().len() < count {
            assert!(
                Instant::now() < deadline,
                "the load did not reach {count} puts"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What has been acknowledged so far.
    fn acked_now(&self) -> Vec<String> {
        self.acked.lock().unwrap().clone()
    }

    /// Stops the loader and returns every put it saw acknowledged (the reader thread ends
    /// when the pipe closes, after the last line).
    fn finish(mut self) -> Vec<String> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.reader.join().unwrap();
        self.acked.lock().unwrap().clone()
    }
}

/// `cp -a` of a data dir.
fn copy_dir(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success(), "cp -a {from:?} {to:?}");
}

/// Every `prefix` key with its value, as a linearizable range at `endpoint` returns them.
fn keys_with_values(endpoint: &str, prefix: &str) -> BTreeMap<String, String> {
    let text = ok(endpoint, &["get", "--prefix", prefix]);
    let lines: Vec<&str> = text.lines().collect();
    lines
        .chunks(2)
        .map(|pair| (pair[0].to_string(), pair.get(1).unwrap_or(&"").to_string()))
        .collect()
}

fn assert_all_present(endpoint: &str, prefix: &str, acked: &[String]) {
    let stored = keys_with_values(endpoint, prefix);
    for key in acked {
        let n: u64 = key.trim_start_matches(prefix).parse().unwrap();
        assert_eq!(
            stored.get(key).map(String::as_str),
            Some(format!("v{n}").as_str()),
            "acknowledged put {key} missing at {endpoint}"
        );
    }
}

/// The JSON after the response header (which names the member and raft term).
fn after_header(json: &str) -> String {
    let start = json
        .find("\"kvs\"")
        .or_else(|| json.find("\"hash\""))
        .unwrap_or(0);
    json[start..].to_string()
}

/// A number field of etcd's zap JSON log line `msg` in `log`.
fn log_number(log: &Path, msg: &str, field: &str) -> u64 {
    let text = std::fs::read_to_string(log).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains(&format!("\"msg\":\"{msg}\"")))
        .unwrap_or_else(|| panic!("no {msg:?} line in {log:?}:\n{text}"));
    let at = line.find(&format!("\"{field}\":")).unwrap() + field.len() + 3;
    line[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap()
}

/// `lease timetolive` output without its `remaining(Ns)`, which ticks.
fn without_remaining(text: &str) -> String {
    match (text.find("remaining("), text.find("), attached")) {
        (Some(from), Some(to)) if from < to => format!("{}{}", &text[..from], &text[to + 1..]),
        _ => text.to_string(),
    }
}

fn revision_of(endpoint: &str) -> u64 {
    let json = ok(endpoint, &["endpoint", "status", "-w", "json"]);
    let at = json.find("\"revision\":").unwrap() + "\"revision\":".len();
    json[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap()
}

fn single(name: &str) -> MemberFlags {
    let peer_url = format!("http://127.0.0.1:{}", free_port());
    MemberFlags {
        name: name.into(),
        client_port: free_port(),
        initial_cluster: format!("{name}={peer_url}"),
        peer_url,
    }
}

/// One killed etcd, converted by tern and restarted by etcd; `snapshot_count` small makes
/// etcd write `.snap` files (the conversion starts from the newest), large keeps all of
/// its log in the WAL from index 1.
/// `min_lag`: how many entries the killed etcd's backend must at least be behind its WAL
/// (its snapshots commit the backend, so with them the lag is below `snapshot_count`).
fn killed_etcd_converts(snapshot_count: &str, min_lag: u64) {
    let scratch = Scratch::new(&format!("single-{snapshot_count}"));
    let member = single("m1");
    let original = scratch.0.join("etcd");
    let mut extra = LAGGING_BACKEND.to_vec();
    extra.extend(["--snapshot-count", snapshot_count]);
    let etcd_server = Server::spawn(&etcd(), &member, &original, &extra);
    etcd_server.wait_serving();
    let ep = etcd_server.endpoint.clone();
    // Some of everything a backend holds: a lease with a key, a deletion, a txn, a
    // compaction, a user with a password and a role with a permission.
    let lease = ok(&ep, &["lease", "grant", "600"]);
    let lease = lease.split_whitespace().nth(1).unwrap().to_string();
    ok(&ep, &["put", "leased", "x", "--lease", &lease]);
    ok(&ep, &["put", "gone", "x"]);
    ok(&ep, &["del", "gone"]);
    let out = etcdctl(&ep, &["txn"], Some("\nput t1 a\nput t2 b\n\n\n"));
    assert!(out.status.success(), "txn: {}", stderr(&out));
    ok(&ep, &["compact", "3"]);
    ok(&ep, &["user", "add", "alice:secret", "--interactive=false"]);
    ok(&ep, &["role", "add", "reader"]);
    ok(&ep, &["role", "grant-permission", "reader", "read", "t1"]);
    ok(&ep, &["user", "grant-role", "alice", "reader"]);
    let load = Load::start(std::slice::from_ref(&ep), "load/");
    load.wait_acked(1200);
    etcd_server.sigkill();
    let acked = load.finish();

    let for_tern = scratch.0.join("tern");
    let for_etcd = scratch.0.join("etcd-again");
    copy_dir(&original, &for_tern);
    copy_dir(&original, &for_etcd);

    let tern = Server::spawn(&common::tern_binary(), &member, &for_tern, &[]);
    tern.wait_serving();
    let msg = "converted an etcd data dir";
    let consistent_index = log_number(&tern.log, msg, "db-consistent-index");
    let wal_last = log_number(&tern.log, msg, "wal-last-index");
    let snapshot_index = log_number(&tern.log, msg, "snapshot-index");
    assert_eq!(
        snapshot_index > 0,
        snapshot_count != "100000",
        "etcd's .snap files are used"
    );
    assert!(
        consistent_index + min_lag <= wal_last,
        "etcd's backend (consistent index {consistent_index}) was expected {min_lag} behind its WAL ({wal_last})"
    );
    assert!(
        for_tern.join("member.etcd").join("wal").is_dir(),
        "etcd's files are kept"
    );
    assert_all_present(&tern.endpoint, "load/", &acked);

    let again = Server::spawn(&etcd(), &member, &for_etcd, &[]);
    again.wait_serving();
    let revision = revision_of(&again.endpoint);
    assert_eq!(
        revision_of(&tern.endpoint),
        revision,
        "same revision after the restart"
    );
    let rev = revision.to_string();
    let hash = |ep: &str| {
        after_header(&ok(
            ep,
            &["endpoint", "hashkv", "--rev", &rev, "-w", "json"],
        ))
    };
    assert_eq!(
        hash(&tern.endpoint),
        hash(&again.endpoint),
        "HashKV at {rev}"
    );
    let all = |ep: &str| after_header(&ok(ep, &["get", "", "--prefix", "-w", "json"]));
    assert_eq!(all(&tern.endpoint), all(&again.endpoint));
    for args in [
        &["lease", "list"][..],
        &["lease", "timetolive", &lease, "--keys"][..],
        &["member", "list"][..],
        &["user", "get", "alice"][..],
        &["role", "get", "reader"][..],
    ] {
        let ours = without_remaining(&ok(&tern.endpoint, args).replace(&tern.endpoint, "EP"));
        let theirs = without_remaining(&ok(&again.endpoint, args).replace(&again.endpoint, "EP"));
        assert_eq!(ours, theirs, "etcdctl {args:?}");
    }
    // The password etcd 3.4 had only in its WAL (hashed by the conversion) logs alice in.
    ok(
        &tern.endpoint,
        &["user", "add", "root:rootpw", "--interactive=false"],
    );
    ok(&tern.endpoint, &["user", "grant-role", "root", "root"]);
    ok(&tern.endpoint, &["auth", "enable"]);
    ok(&tern.endpoint, &["--user", "alice:secret", "get", "t1"]);
    let wrong = etcdctl(&tern.endpoint, &["--user", "alice:nope", "get", "t1"], None);
    assert!(
        stderr(&wrong).contains("authentication failed"),
        "{}",
        stderr(&wrong)
    );

    // And the converted member writes on, across a restart of its own.
    ok(
        &tern.endpoint,
        &["--user", "root:rootpw", "put", "after", "conversion"],
    );
}

#[test]
fn a_killed_etcds_data_dir_converts_with_its_wal_tail_and_snapshots() {
    killed_etcd_converts("300", 1);
}

#[test]
fn a_killed_etcds_data_dir_converts_from_its_wal_alone() {
    killed_etcd_converts("100000", 1000);
}

#[test]
fn a_three_member_etcd_cluster_moves_to_tern_and_back() {
    let scratch = Scratch::new("cluster");
    let names = ["m1", "m2", "m3"];
    let peer_urls: Vec<String> = names
        .iter()
        .map(|_| format!("http://127.0.0.1:{}", free_port()))
        .collect();
    let initial_cluster: Vec<String> = names
        .iter()
        .zip(&peer_urls)
        .map(|(n, u)| format!("{n}={u}"))
        .collect();
    let members: Vec<MemberFlags> = names
        .iter()
        .zip(&peer_urls)
        .map(|(name, peer_url)| MemberFlags {
            name: name.to_string(),
            client_port: free_port(),
            peer_url: peer_url.clone(),
            initial_cluster: initial_cluster.join(","),
        })
        .collect();
    let dirs: Vec<PathBuf> = names.iter().map(|n| scratch.0.join(n)).collect();
    let etcds: Vec<Server> = members
        .iter()
        .zip(&dirs)
        .map(|(m, d)| Server::spawn(&etcd(), m, d, &LAGGING_BACKEND))
        .collect();
    for s in &etcds {
        s.wait_serving();
    }
    let endpoints: Vec<String> = etcds.iter().map(|s| s.endpoint.clone()).collect();
    let member_list = ok(&endpoints[0], &["member", "list"]);
    let load = Load::start(&endpoints, "etcd/");
    load.wait_acked(600);
    // The move: every etcd member stops (here the worst way, SIGKILL under load) and tern
    // starts on each member's own data dir with the member's own flags.
    for s in etcds {
        s.sigkill();
    }
    let acked_under_etcd = load.finish();
    let terns: Vec<Server> = members
        .iter()
        .zip(&dirs)
        .map(|(m, d)| Server::spawn(&common::tern_binary(), m, d, &[]))
        .collect();
    for s in &terns {
        s.wait_serving();
    }
    assert_eq!(
        ok(&terns[0].endpoint, &["member", "list"]),
        member_list,
        "the cluster keeps its members, IDs and URLs"
    );
    for s in &terns {
        assert_all_present(&s.endpoint, "etcd/", &acked_under_etcd);
    }
    let endpoints: Vec<String> = terns.iter().map(|s| s.endpoint.clone()).collect();
    let load = Load::start(&endpoints, "tern/");
    load.wait_acked(300);
    let snapshot = scratch.0.join("back.db");
    let acked_before_snapshot = load.acked_now();
    ok(
        &endpoints[0],
        &["snapshot", "save", snapshot.to_str().unwrap()],
    );
    for s in terns {
        s.sigkill();
    }
    drop(load.finish());

    // And back to etcd: the snapshot restored once per member. Writes acknowledged after
    // the snapshot are not in it, so the procedure stops writes first (docs/migration.md);
    // here the load kept going, and every put acknowledged before `snapshot save` began
    // must be there.
    let back: Vec<Server> = members
        .iter()
        .map(|m| {
            let dir = scratch.0.join(format!("{}-back", m.name));
            let out = Command::new(common::etcdctl_binary())
                .env("ETCDCTL_API", "3")
                .args(["snapshot", "restore", snapshot.to_str().unwrap()])
                .args(["--name", &m.name, "--data-dir", dir.to_str().unwrap()])
                .args(["--initial-cluster", &m.initial_cluster])
                .args(["--initial-advertise-peer-urls", &m.peer_url])
                .output()
                .unwrap();
            assert!(out.status.success(), "restore: {}", stderr(&out));
            Server::spawn(&etcd(), m, &dir, &[])
        })
        .collect();
    for s in &back {
        s.wait_serving();
    }
    for s in &back {
        assert_all_present(&s.endpoint, "etcd/", &acked_under_etcd);
        assert_all_present(&s.endpoint, "tern/", &acked_before_snapshot);
    }
}
