//! `tern-bench mvcc put` runs against tern's local MVCC store on the B+tree: checks from
//! the JSON report that it timed exactly --total transactions without errors, and that
//! the data really reached a database file in the given --data-dir.

use std::process::Command;

#[test]
fn mvcc_put_times_every_transaction_and_writes_the_database() {
    let dir = std::env::temp_dir().join(format!("tern-bench-mvcc-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = Command::new(env!("CARGO_BIN_EXE_tern-bench"))
        .args([
            "--output",
            "json",
            "mvcc",
            "--batch-limit",
            "100",
            "--data-dir",
        ])
        .arg(&dir)
        .args([
            "put",
            "--total",
            "1000",
            "--txn-ops",
            "3",
            "--key-size",
            "16",
        ])
        .output()
        .expect("tern-bench runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_str(&stdout).expect("json output");
    let report = &doc["reports"][0];
    assert_eq!(report["name"], "mvcc put");
    assert_eq!(report["count"].as_u64(), Some(1000));
    assert_eq!(report["errors_total"].as_u64(), Some(0));
    let db = dir.join("member/snap/db");
    let size = std::fs::metadata(&db).expect("database file").len();
    // 3000 entries of 16 B keys and 128 B values do not fit in a few pages.
    assert!(size > 100 * 1024, "db is only {size} bytes");
    let _ = std::fs::remove_dir_all(&dir);
}
