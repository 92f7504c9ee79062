//! Defragmentation of a file whose live data sits behind freed overflow runs, etcd's pattern
//! (revisions are appended; compaction deletes the old ones at the front): the file must
//! shrink to about its in-use size. A regression test: the last overflow run at the end of
//! the file used to stay put for good, and with it the whole free tail.

use tern_storage::btree::{Db, Options};

#[test]
fn defrag_shrinks_a_file_whose_live_overflow_values_sit_at_its_end() {
    let dir = std::env::temp_dir().join(format!("tern-defrag-overflow-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let db = Db::open(
        dir.join("db"),
        Options {
            sync: false,
            ..Options::default()
        },
    )
    .unwrap();
    const KEYS: u32 = 3000;
    let value = vec![7u8; 8 * 1024];
    for round in 0..2u32 {
        let mut txn = db.begin_write().unwrap();
        for i in 0..KEYS {
            let key = (round * KEYS + i).to_be_bytes();
            txn.put(b"key", &key, &value).unwrap();
        }
        txn.commit().unwrap();
    }
    let mut txn = db.begin_write().unwrap();
    for i in 0..KEYS {
        txn.delete(b"key", &i.to_be_bytes()).unwrap();
    }
    txn.commit().unwrap();
    let before = db.stats().unwrap();
    let report = db.defrag().unwrap();
    let after = db.stats().unwrap();
    assert!(
        after.db_size_bytes <= before.db_size_in_use_bytes * 11 / 10,
        "defrag left {} of {} bytes ({} in use): {report:?}",
        after.db_size_bytes,
        before.db_size_bytes,
        before.db_size_in_use_bytes
    );
    let read = db.begin_read();
    for i in KEYS..2 * KEYS {
        assert_eq!(
            read.get(b"key", &i.to_be_bytes()).unwrap(),
            Some(&value[..])
        );
    }
    assert_eq!(read.get(b"key", &0u32.to_be_bytes()).unwrap(), None);
    drop(read);
    drop(db);
    let _ = std::fs::remove_dir_all(&dir);
}
