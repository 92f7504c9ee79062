//! Checks `--auto-compaction-mode periodic` end to end: with a 2 s retention, tern logs
//! etcd's "starting/completed auto periodic compaction" lines and old revisions become
//! unreadable with etcd's "required revision has been compacted" through the real
//! etcdctl, while the latest values stay; an unparsable retention stops the server with
//! etcd's message.

mod common;

use std::time::{Duration, Instant};

use common::{stderr, stdout, TernServer};

/// Far more than the first compaction needs (one retention, 2 s, after start).
const COMPACTION_WAIT: Duration = Duration::from_secs(30);

#[test]
fn periodic_auto_compaction_compacts_old_revisions() {
    let server = TernServer::start_with(&[
        "--auto-compaction-mode=periodic",
        "--auto-compaction-retention=2s",
    ]);
    for i in 0..5 {
        let out = server.etcdctl(&["put", "k", &i.to_string()]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let deadline = Instant::now() + COMPACTION_WAIT;
    loop {
        let compacted_to = server.log.lock().unwrap().iter().find_map(|line| {
            line.contains("\"msg\":\"completed auto periodic compaction\"")
                .then(|| line.clone())
        });
        if let Some(line) = compacted_to {
            assert!(line.contains("\"compact-period\":\"2s\""), "{line}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no auto compaction; log:\n{}",
            server.log.lock().unwrap().join("\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(server
        .log
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("\"msg\":\"starting auto periodic compaction\"")));
    // The writes are older than one retention by the second compaction at the latest.
    let deadline = Instant::now() + COMPACTION_WAIT;
    loop {
        let old = server.etcdctl(&["get", "k", "--rev=2"]);
        if !old.status.success() {
            assert!(
                stderr(&old).contains("etcdserver: mvcc: required revision has been compacted"),
                "{}",
                stderr(&old)
            );
            break;
        }
        assert!(Instant::now() < deadline, "revision 2 was never compacted");
        std::thread::sleep(Duration::from_millis(200));
    }
    let latest = server.etcdctl(&["get", "k", "--print-value-only"]);
    assert_eq!(stdout(&latest), "4\n");
}

#[test]
fn an_unparsable_retention_is_refused() {
    let out = std::process::Command::new(common::tern_binary())
        .args(["--auto-compaction-retention=soon", "--data-dir"])
        .arg(std::env::temp_dir().join(format!("tern-autocompact-{}", std::process::id())))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out)
            .contains("error parsing CompactionRetention: time: invalid duration \\\"soon\\\""),
        "{}",
        stderr(&out)
    );
}
