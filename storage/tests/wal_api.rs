//! Checks the WAL's public API end to end on a real directory: append/reopen round trips,
//! lookups, raft log overwrite, snapshot + segment release, rotation, group commit batching,
//! and rejected appends. Each test runs on a glommio executor like the raft executor.

use std::path::Path;

use glommio::{LocalExecutorBuilder, Placement};
use tern_storage::wal::executor::WAL_IO_MEMORY_BYTES;
use tern_storage::wal::{
    HardState, Metadata, SnapshotMarker, Wal, WalError, WalOptions, WalRecord,
};

fn run<T>(fut: impl std::future::Future<Output = T>) -> T {
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(WAL_IO_MEMORY_BYTES)
        .make()
        .expect("executor")
        .run(fut)
}

fn entry(raft_index: u64, term: u64) -> WalRecord {
    WalRecord::Entry {
        raft_index,
        term,
        data: format!("entry-{raft_index}-{term}").into_bytes(),
    }
}

const META: Metadata = Metadata {
    cluster_id: 0xc1,
    member_id: 0x5e,
};

fn small_opts() -> WalOptions {
    WalOptions {
        segment_bytes: 64 << 10,
        batch_bytes_max: 16 << 10,
        ..WalOptions::default()
    }
}

#[test]
fn append_reopen_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("member/wal");
    run(async {
        let wal = Wal::create(&path, WalOptions::default(), META)
            .await
            .unwrap();
        let hs = HardState {
            term: 2,
            vote: 7,
            commit: 3,
        };
        let durable = wal
            .append(vec![entry(1, 1), entry(2, 1), WalRecord::HardState(hs)])
            .await
            .unwrap();
        assert_eq!(durable.last_raft_index, 2);
        wal.append(vec![entry(3, 2)]).await.unwrap();
        assert_eq!(wal.term(3).unwrap(), 2);
        assert_eq!(wal.last_index(), 3);
        let got = wal.entries(1, 4, u64::MAX).await.unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(got[2].data, b"entry-3-2");
        wal.close().await.unwrap();

        let (wal, rec) = Wal::open(&path, WalOptions::default()).await.unwrap();
        assert_eq!(rec.metadata, META);
        assert_eq!(rec.hard_state, Some(hs));
        assert_eq!(rec.snapshot, None);
        assert!(rec.torn_tail.is_none());
        let indexes: Vec<u64> = rec.entries.iter().map(|e| e.raft_index).collect();
        assert_eq!(indexes, vec![1, 2, 3]);
        assert_eq!(rec.entries[1].data, b"entry-2-1");
        // The log carries on after reopening.
        wal.append(vec![entry(4, 2)]).await.unwrap();
        assert_eq!(wal.entries(4, 5, 0).await.unwrap()[0].data, b"entry-4-2");
        wal.close().await.unwrap();
    });
}

#[test]
fn overwrite_truncates_suffix_like_raft() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let wal = Wal::create(dir.path(), WalOptions::default(), META)
            .await
            .unwrap();
        wal.append((1..=5).map(|i| entry(i, 1)).collect())
            .await
            .unwrap();
        // A new leader overwrites from index 3.
        wal.append(vec![entry(3, 2)]).await.unwrap();
        assert_eq!(wal.last_index(), 3);
        assert_eq!(wal.term(3).unwrap(), 2);
        assert!(matches!(wal.term(4), Err(WalError::Unavailable { .. })));
        wal.close().await.unwrap();
        let (wal, rec) = Wal::open(dir.path(), WalOptions::default()).await.unwrap();
        let got: Vec<(u64, u64)> = rec.entries.iter().map(|e| (e.raft_index, e.term)).collect();
        assert_eq!(got, vec![(1, 1), (2, 1), (3, 2)]);
        wal.close().await.unwrap();
    });
}

#[test]
fn invalid_appends_are_rejected_without_effect() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let wal = Wal::create(dir.path(), WalOptions::default(), META)
            .await
            .unwrap();
        wal.append(vec![entry(1, 1)]).await.unwrap();
        let gap = wal.append(vec![entry(2, 1), entry(4, 1)]).await;
        assert!(matches!(gap, Err(WalError::InvalidAppend(_))), "{gap:?}");
        // The rejected append left nothing behind: 2 is still the next index.
        wal.append(vec![entry(2, 1)]).await.unwrap();
        wal.append(vec![WalRecord::Snapshot(SnapshotMarker {
            raft_index: 2,
            term: 1,
        })])
        .await
        .unwrap();
        let below = wal.append(vec![entry(2, 1)]).await;
        assert!(
            matches!(below, Err(WalError::InvalidAppend(_))),
            "{below:?}"
        );
        assert!(matches!(wal.term(1), Err(WalError::Compacted { .. })));
        assert_eq!(wal.term(2).unwrap(), 1);
        wal.close().await.unwrap();
    });
}

#[test]
fn rotation_release_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let count_segments = |p: &Path| {
        std::fs::read_dir(p)
            .unwrap()
            .filter(|d| {
                d.as_ref()
                    .unwrap()
                    .file_name()
                    .to_str()
                    .unwrap()
                    .ends_with(".wal")
            })
            .count()
    };
    run(async {
        let wal = Wal::create(dir.path(), small_opts(), META).await.unwrap();
        let payload = vec![7u8; 3000];
        for i in 1..=100u64 {
            wal.append(vec![WalRecord::Entry {
                raft_index: i,
                term: 1,
                data: payload.clone(),
            }])
            .await
            .unwrap();
        }
        assert!(count_segments(dir.path()) > 3, "rotation happened");
        let hs = HardState {
            term: 1,
            vote: 1,
            commit: 90,
        };
        wal.append(vec![
            WalRecord::HardState(hs),
            WalRecord::Snapshot(SnapshotMarker {
                raft_index: 80,
                term: 1,
            }),
        ])
        .await
        .unwrap();
        assert!(
            wal.release_below(81).await.is_err(),
            "cannot release above the snapshot"
        );
        let before = count_segments(dir.path());
        let released = wal.release_below(80).await.unwrap();
        assert!(!released.is_empty());
        assert_eq!(count_segments(dir.path()), before - released.len());
        // Entries after the snapshot are still readable across segments.
        let got = wal.entries(81, 101, u64::MAX).await.unwrap();
        assert_eq!(got.len(), 20);
        assert!(got.iter().all(|e| e.data == payload));
        // Force another rotation so the new segment carries state forward, then release more.
        for i in 101..=130u64 {
            wal.append(vec![WalRecord::Entry {
                raft_index: i,
                term: 1,
                data: payload.clone(),
            }])
            .await
            .unwrap();
        }
        wal.append(vec![WalRecord::Snapshot(SnapshotMarker {
            raft_index: 125,
            term: 1,
        })])
        .await
        .unwrap();
        wal.release_below(125).await.unwrap();
        wal.close().await.unwrap();

        let (wal, rec) = Wal::open(dir.path(), small_opts()).await.unwrap();
        assert_eq!(rec.metadata, META);
        assert_eq!(rec.hard_state, Some(hs));
        assert_eq!(
            rec.snapshot,
            Some(SnapshotMarker {
                raft_index: 125,
                term: 1
            })
        );
        let indexes: Vec<u64> = rec.entries.iter().map(|e| e.raft_index).collect();
        assert_eq!(indexes, (126..=130).collect::<Vec<_>>());
        assert_eq!(wal.term(125).unwrap(), 1);
        wal.close().await.unwrap();
    });
}

#[test]
fn concurrent_appends_share_fdatasyncs() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let wal = Wal::create(dir.path(), WalOptions::default(), META)
            .await
            .unwrap();
        let base = wal.stats().fdatasyncs;
        // 200 appends issued before any completes: they must not need 200 syncs.
        let futures: Vec<_> = (1..=200u64)
            .map(|i| wal.append(vec![entry(i, 1)]))
            .collect();
        let mut last = 0;
        for f in futures {
            let durable = f.await.unwrap();
            assert!(durable.last_raft_index >= last);
            last = durable.last_raft_index;
        }
        let syncs = wal.stats().fdatasyncs - base;
        assert!(syncs <= 2, "200 queued appends took {syncs} fdatasyncs");
        wal.sync_barrier().await.unwrap();
        wal.close().await.unwrap();
    });
}

#[test]
fn create_refuses_existing_and_open_refuses_empty() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        assert!(matches!(
            Wal::open(dir.path(), WalOptions::default()).await,
            Err(WalError::NotFound(_))
        ));
        let wal = Wal::create(dir.path(), WalOptions::default(), META)
            .await
            .unwrap();
        wal.close().await.unwrap();
        assert!(matches!(
            Wal::create(dir.path(), WalOptions::default(), META).await,
            Err(WalError::AlreadyExists(_))
        ));
    });
}

#[test]
fn queue_bounds_reject_instead_of_growing() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let opts = WalOptions {
            queue_appends_max: 4,
            ..WalOptions::default()
        };
        let wal = Wal::create(dir.path(), opts, META).await.unwrap();
        let queued: Vec<_> = (1..=4u64).map(|i| wal.append(vec![entry(i, 1)])).collect();
        let over = wal.append(vec![entry(5, 1)]).await;
        assert!(
            matches!(
                over,
                Err(WalError::QueueFull {
                    queue_appends: 4,
                    ..
                })
            ),
            "{over:?}"
        );
        for f in queued {
            f.await.unwrap();
        }
        // Once drained, the rejected index can be appended.
        wal.append(vec![entry(5, 1)]).await.unwrap();
        assert_eq!(wal.last_index(), 5);
        wal.close().await.unwrap();
    });
}

#[test]
fn appends_after_close_fail() {
    let dir = tempfile::tempdir().unwrap();
    run(async {
        let wal = Wal::create(dir.path(), WalOptions::default(), META)
            .await
            .unwrap();
        let other = wal.clone();
        let pending = wal.append(vec![entry(1, 1)]);
        wal.close().await.unwrap();
        // What was queued before close became durable; nothing is accepted after.
        assert_eq!(pending.await.unwrap().last_raft_index, 1);
        assert!(matches!(
            other.append(vec![entry(2, 1)]).await,
            Err(WalError::Closed)
        ));
    });
}
