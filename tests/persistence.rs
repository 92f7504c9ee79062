//! Checks that acknowledged writes survive a crash: drives the real tern binary with the real
//! etcdctl (put, del, txn, compact), SIGKILLs it, restarts it on the same data dir, and
//! compares every key, revision and HashKV with what was acknowledged before; also checks
//! that `etcdctl defrag` works on the file-backed store and Status reports its size; that
//! sequential puts cost one WAL fdatasync each; and that a committed WAL entry that does not decode stops the member (fatal log line naming
//! the raft index, non-zero exit) instead of being skipped.

mod common;

use common::{stderr, stdout, TernServer};

fn ok(server: &TernServer, args: &[&str]) -> String {
    let out = server.etcdctl(args);
    assert!(
        out.status.success(),
        "etcdctl {args:?} failed: {}",
        stderr(&out)
    );
    stdout(&out)
}

fn ok_stdin(server: &TernServer, args: &[&str], input: &str) -> String {
    let out = server.etcdctl_stdin(args, input);
    assert!(
        out.status.success(),
        "etcdctl {args:?} failed: {}",
        stderr(&out)
    );
    stdout(&out)
}

/// The unsigned integer after `"field":` in etcdctl's JSON output.
fn json_u64(json: &str, field: &str) -> u64 {
    let at = json
        .find(&format!("\"{field}\":"))
        .unwrap_or_else(|| panic!("no {field} in {json}"));
    let digits: String = json[at + field.len() + 3..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("{field} is not a number in {json}"))
}

/// Everything a client can observe about the key space: all keys with their revisions
/// (JSON carries create/mod revision, version, value), a read at an old revision, HashKV.
/// The raft term in response headers is left out: a restarted member wins a new election,
/// so the term grows by one per restart, exactly as etcd's does.
fn observe(server: &TernServer) -> (String, String, String) {
    let all = ok(server, &["get", "", "--prefix", "-w", "json"]);
    let old = ok(server, &["get", "a", "--rev=5", "-w", "json"]);
    let hash = ok(server, &["endpoint", "hashkv", "-w", "json"]);
    (
        without_raft_term(all),
        without_raft_term(old),
        without_raft_term(hash),
    )
}

fn without_raft_term(json: String) -> String {
    let mut out = String::with_capacity(json.len());
    let mut rest = json.as_str();
    while let Some(at) = rest.find("\"raft_term\":") {
        let after = at + "\"raft_term\":".len();
        out.push_str(&rest[..after]);
        out.push('_');
        rest = rest[after..].trim_start_matches(|c: char| c.is_ascii_digit());
    }
    out.push_str(rest);
    out
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    let mut server = TernServer::start();
    ok(&server, &["put", "a", "1"]); // rev 2
    ok(&server, &["put", "b", "2"]); // rev 3
    ok(&server, &["put", "c", "3"]); // rev 4
    ok(&server, &["put", "a", "11"]); // rev 5
    assert_eq!(ok(&server, &["del", "b"]), "1\n"); // rev 6
    let txn = ok_stdin(
        &server,
        &["txn"],
        "value(\"a\") = \"11\"\n\nput d 4\nput e 5\n\nput x never\n\n",
    );
    assert!(txn.starts_with("SUCCESS"), "{txn}"); // rev 7
    ok(&server, &["compaction", "4"]);
    ok(&server, &["put", "f", "6"]); // rev 8
    ok(&server, &["put", "a", "12"]); // rev 9

    let before = observe(&server);
    assert!(before.0.contains("\"revision\":9"), "{}", before.0);
    assert_eq!(json_u64(&before.0, "count"), 5, "{}", before.0);

    server.kill_and_restart();
    let after = observe(&server);
    assert_eq!(before.0, after.0, "keys and revisions after restart");
    assert_eq!(before.1, after.1, "read at an old revision after restart");
    assert_eq!(before.2, after.2, "HashKV after restart");

    // The compaction survived too: revision 3 is gone, and new writes continue the count.
    let compacted = server.etcdctl(&["get", "a", "--rev=3"]);
    assert!(!compacted.status.success());
    assert!(
        stderr(&compacted).contains("required revision has been compacted"),
        "{}",
        stderr(&compacted)
    );
    let put = ok(&server, &["put", "g", "7", "-w", "json"]);
    assert_eq!(json_u64(&put, "revision"), 10, "{put}");

    // A second crash right after that write keeps it as well.
    server.kill_and_restart();
    assert_eq!(ok(&server, &["get", "g", "--print-value-only"]), "7\n");
    let status = ok(&server, &["endpoint", "status", "-w", "json"]);
    assert_eq!(json_u64(&status, "revision"), 10, "{status}");
}

#[test]
fn defrag_shrinks_the_file_and_keeps_the_data() {
    let mut server = TernServer::start();
    let big = "v".repeat(64 * 1024);
    for i in 0..40 {
        ok(&server, &["put", &format!("big/{i:02}"), &big]);
    }
    ok(&server, &["put", "keep", "me"]);
    ok(&server, &["del", "big/", "--prefix"]);
    let revision = json_u64(
        &ok(&server, &["endpoint", "status", "-w", "json"]),
        "revision",
    );
    ok(&server, &["compaction", &revision.to_string()]);

    let before = ok(&server, &["endpoint", "status", "-w", "json"]);
    let size_before = json_u64(&before, "dbSize");
    assert!(size_before > 40 * 64 * 1024, "{before}");
    assert!(json_u64(&before, "dbSizeInUse") < size_before, "{before}");

    let defrag = ok(&server, &["defrag"]);
    assert!(
        defrag.contains("Finished defragmenting etcd member"),
        "{defrag}"
    );
    let after = ok(&server, &["endpoint", "status", "-w", "json"]);
    let size_after = json_u64(&after, "dbSize");
    assert!(size_after > 0, "{after}");
    assert!(
        size_after < size_before / 4,
        "defrag left {size_after} of {size_before} bytes"
    );

    assert_eq!(ok(&server, &["get", "keep", "--print-value-only"]), "me\n");
    server.kill_and_restart();
    assert_eq!(ok(&server, &["get", "keep", "--print-value-only"]), "me\n");
    assert_eq!(ok(&server, &["get", "big/", "--prefix", "--keys-only"]), "");
}

/// Appends one committed normal entry holding `envelope_bytes` to the data dir's WAL (with
/// the WAL API, on a glommio executor of its own), and returns its raft index.
fn append_committed_entry(data_dir: &std::path::Path, envelope_bytes: Vec<u8>) -> u64 {
    use tern_storage::wal::{self, Wal, WalOptions, WalRecord};
    let dir = wal::wal_dir(data_dir);
    glommio::LocalExecutorBuilder::default()
        .spawn(move || async move {
            let (log, recovered) = Wal::open(&dir, WalOptions::default()).await.unwrap();
            let hs = recovered.hard_state.expect("a hard state");
            let last = recovered.entries.last().expect("entries").raft_index;
            let mut entry = raft::eraftpb::Entry::default();
            entry.set_entry_type(raft::eraftpb::EntryType::EntryNormal);
            entry.index = last + 1;
            entry.term = hs.term;
            entry.data = envelope_bytes.into();
            let hard_state = WalRecord::HardState(wal::HardState {
                commit: entry.index,
                ..hs
            });
            log.append(vec![tern::raft::log_store::wal_record(&entry), hard_state])
                .await
                .unwrap();
            log.close().await.unwrap();
            entry.index
        })
        .unwrap()
        .join()
        .unwrap()
}

/// Starts tern with `args` and waits (up to a generous deadline) for it to exit.
fn run_until_exit(args: &[String]) -> (std::process::ExitStatus, String) {
    let mut child = std::process::Command::new(common::tern_binary())
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn tern");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tern kept running on a WAL with an undecodable committed entry");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut log = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut log).unwrap();
    (status, log)
}

#[test]
fn an_undecodable_committed_entry_stops_the_member() {
    use prost::Message as _;
    use tern::state::envelope::{Body, Envelope};
    let put = |key: &str| {
        Body::Put(tern::proto::etcdserverpb::PutRequest {
            key: key.as_bytes().to_vec().into(),
            value: b"x".to_vec().into(),
            ..Default::default()
        })
    };
    // Bytes that are no protobuf at all, and a well-formed message with two requests in it
    // (which prost alone would decode, keeping the last).
    let mut two_bodies = Envelope::new(1, 1, put("a")).encode_to_vec();
    two_bodies.extend(Envelope::new(0, 0, put("b")).encode_to_vec());
    for (case, bytes) in [("garbage", vec![0xff; 12]), ("two bodies", two_bodies)] {
        let mut server = TernServer::start();
        ok(&server, &["put", "before", "1"]);
        let args = server.kill();
        let raft_index = append_committed_entry(&server.data_dir, bytes);
        let (status, log) = run_until_exit(&args);
        assert!(
            !status.success(),
            "{case}: tern exited with {status}; log:\n{log}"
        );
        let fatal = log
            .lines()
            .find(|l| l.contains("\"level\":\"fatal\""))
            .unwrap_or_else(|| panic!("{case}: no fatal line; log:\n{log}"));
        assert!(
            fatal.contains("\"msg\":\"failed to decode a committed raft entry\"")
                && fatal.contains(&format!("\"raft-index\":{raft_index}"))
                && fatal.contains("\"entry-type\":\"EntryNormal\""),
            "{case}: {fatal}"
        );
        assert!(
            !log.contains("ready to serve client requests"),
            "{case}: served clients past a corrupt entry; log:\n{log}"
        );
    }
}

/// A commit-index-only hard state (raft's `must_sync` false) rides with the next WAL batch
/// instead of costing an fdatasync of its own: sequential puts make one WAL fdatasync each,
/// not two (the WAL statistics line logged at a clean stop counts them).
#[test]
fn sequential_puts_cost_one_wal_fdatasync_each() {
    const PUTS: u64 = 40;
    let mut server = TernServer::start();
    ok(&server, &["put", "warmup", "x"]);
    for i in 0..PUTS {
        ok(&server, &["put", &format!("k{i}"), "v"]);
    }
    // Safety: kill(2) on the child we spawned, with a valid signal number.
    assert_eq!(unsafe { libc::kill(server.pid() as i32, libc::SIGTERM) }, 0);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while server.try_wait().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "tern did not stop on SIGTERM"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let log = server.log.lock().unwrap().join("\n");
    let line = log
        .lines()
        .find(|l| l.contains("wal statistics"))
        .unwrap_or_else(|| panic!("no WAL statistics in the log:\n{log}"));
    let fdatasyncs = json_u64(line, "fdatasyncs");
    // Startup (election, publishing this member, the cluster version) and the warm-up put
    // sync a handful of batches; every put after that syncs exactly one.
    let startup_allowance = 10;
    assert!(
        fdatasyncs <= PUTS + startup_allowance,
        "{fdatasyncs} WAL fdatasyncs for {PUTS} sequential puts: {line}"
    );
}
