//! Golden transcripts: runs the real etcdctl 3.4.23 scenarios from tests/golden (recorded
//! against real etcd 3.4.23) against tern with the recorder's own `compare` mode, and
//! fails on any difference in stdout, stderr or exit code.
//!
//! Scenarios covered here are the ones whose features have landed: kv, txn, edge, lease,
//! watch, lock_elect, snapshot, auth, auth_edge, and cluster (whole, and also its part before membership changes,
//! kept as a smaller test). That part is cut from the recorded transcript at its section
//! comment, not edited: each scenario runs
//! its commands in order against a fresh server, so a prefix of a transcript is exactly
//! what etcd printed for that prefix of commands.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

/// Section of cluster.txt where membership changes start.
const CLUSTER_MEMBERSHIP_SECTION: &str = "# --- adding a learner member";

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// Writes scenario and expected transcript for the first part of `scenario`, up to the
/// line starting with `section`, under the name `name`.
fn prefix_scenario(work: &Path, scenario: &str, section: &str, name: &str) {
    let cut = |text: String| -> String {
        let mut out = String::new();
        for line in text.lines() {
            if line.starts_with(section) {
                break;
            }
            out.push_str(line);
            out.push('\n');
        }
        // The transcript ends with a blank separator line after the last command.
        out.trim_end_matches('\n').to_string() + "\n"
    };
    let scenario_text = std::fs::read_to_string(
        golden_dir()
            .join("scenarios")
            .join(format!("{scenario}.txt")),
    )
    .unwrap();
    let expected_text = std::fs::read_to_string(
        golden_dir()
            .join("expected")
            .join(format!("{scenario}.txt")),
    )
    .unwrap();
    std::fs::write(
        work.join("scenarios").join(format!("{name}.txt")),
        cut(scenario_text),
    )
    .unwrap();
    let expected = cut(expected_text).replacen(
        &format!("scenario: {scenario}\n"),
        &format!("scenario: {name}\n"),
        1,
    );
    std::fs::write(work.join("expected").join(format!("{name}.txt")), expected).unwrap();
}

fn compare(scenarios: &[&str]) {
    let work = std::env::temp_dir().join(format!(
        "tern-golden-{}-{}",
        std::process::id(),
        scenarios.join("-")
    ));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(work.join("scenarios")).unwrap();
    std::fs::create_dir_all(work.join("expected")).unwrap();
    let mut args = Vec::new();
    for &name in scenarios {
        if name == "cluster_kv" {
            prefix_scenario(&work, "cluster", CLUSTER_MEMBERSHIP_SECTION, name);
        } else {
            std::fs::copy(
                golden_dir().join("scenarios").join(format!("{name}.txt")),
                work.join("scenarios").join(format!("{name}.txt")),
            )
            .unwrap();
            std::fs::copy(
                golden_dir().join("expected").join(format!("{name}.txt")),
                work.join("expected").join(format!("{name}.txt")),
            )
            .unwrap();
        }
        args.push(work.join("scenarios").join(format!("{name}.txt")));
    }
    let output = Command::new("bash")
        .arg(golden_dir().join("record.sh"))
        .arg("compare")
        .args(&args)
        .env("SERVER_CMD", common::tern_binary())
        .env("EXPECTED_DIR", work.join("expected"))
        .env("GOLDEN_CLIENT_PORT", common::free_port().to_string())
        .env("GOLDEN_PEER_PORT", common::free_port().to_string())
        .env("ETCDCTL", common::etcdctl_binary())
        .output()
        .expect("run record.sh");
    let out = String::from_utf8_lossy(&output.stdout);
    let err = String::from_utf8_lossy(&output.stderr);
    let _ = std::fs::remove_dir_all(&work);
    assert!(
        output.status.success(),
        "golden comparison failed:\n{out}\n{err}"
    );
    let summary = out.lines().last().unwrap_or_default();
    assert!(
        summary.ends_with(" 0 failed"),
        "unexpected summary: {summary}\n{out}"
    );
}

#[test]
fn golden_kv() {
    compare(&["kv"]);
}

#[test]
fn golden_txn() {
    compare(&["txn"]);
}

#[test]
fn golden_cluster_before_membership_changes() {
    compare(&["cluster_kv"]);
}

#[test]
fn golden_edge() {
    compare(&["edge"]);
}

#[test]
fn golden_lease() {
    compare(&["lease"]);
}

/// etcdctl 3.4's `lock` and `elect` are client-side recipes over Lease, Txn and Watch.
#[test]
fn golden_lock_elect() {
    compare(&["lock_elect"]);
}

#[test]
fn golden_watch() {
    compare(&["watch"]);
}

/// The whole cluster transcript, membership changes included (learner add, promote of a
/// learner that is not in sync, update, remove, and their errors).
#[test]
fn golden_cluster() {
    compare(&["cluster"]);
}

/// Users, roles, permissions, auth enable/disable, authenticated and refused requests.
#[test]
fn golden_auth() {
    compare(&["auth"]);
}

/// Permission edge cases (recorded against etcd 3.4.23 like the others): grants of the
/// empty key, prefixes and from-key ranges and their revocation, reads and writes at the
/// edges of a grant, prev_kv, keys-only, reading one's own user and roles, what a user
/// without the root role may still do, a no-password user, a password change.
#[test]
fn golden_auth_edge() {
    compare(&["auth_edge"]);
}

/// `snapshot save` (tern streams etcd's bbolt database) and `snapshot status` on it:
/// revision and total keys as etcd's, before and after a physical compaction.
#[test]
fn golden_snapshot() {
    compare(&["snapshot"]);
}
