//! Torn-write and corruption tests: builds a WAL, damages its files the way a crash or a bad
//! disk would (truncated tail, garbled tail, zeroed first sector, flipped byte in the middle,
//! missing segment), then checks that `Wal::open` cuts only an unacknowledgeable tail, reports
//! damage anywhere else as `Corrupt` with the segment and offset, and that the explicit repair
//! (`tern-wal repair`) behaves as documented.

use std::path::{Path, PathBuf};

use glommio::{LocalExecutorBuilder, Placement};
use tern_storage::wal::executor::WAL_IO_MEMORY_BYTES;
use tern_storage::wal::repair::{repair, verify, Problem};
use tern_storage::wal::scan::scan_segment;
use tern_storage::wal::segment::SegmentName;
use tern_storage::wal::{Metadata, Wal, WalError, WalOptions, WalRecord};

fn run<T>(fut: impl std::future::Future<Output = T>) -> T {
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(WAL_IO_MEMORY_BYTES)
        .make()
        .expect("executor")
        .run(fut)
}

fn opts() -> WalOptions {
    WalOptions {
        segment_bytes: 64 << 10,
        batch_bytes_max: 16 << 10,
        ..WalOptions::default()
    }
}

/// Writes entries 1..=n, one append (so one batch) each, each 1000 bytes.
fn build(dir: &Path, n: u64) {
    run(async {
        let wal = Wal::create(
            dir,
            opts(),
            Metadata {
                cluster_id: 3,
                member_id: 4,
            },
        )
        .await
        .unwrap();
        for i in 1..=n {
            let data = vec![i as u8; 1000];
            wal.append(vec![WalRecord::Entry {
                raft_index: i,
                term: 1,
                data,
            }])
            .await
            .unwrap();
        }
        wal.close().await.unwrap();
    });
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut names: Vec<SegmentName> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|d| SegmentName::parse(d.unwrap().file_name().to_str().unwrap()))
        .collect();
    names.sort();
    names.iter().map(|n| dir.join(n.file_name())).collect()
}

/// `(seq, offsets of its batches)` of the segment at `path`.
fn batch_offsets(path: &Path) -> Vec<u64> {
    let name = SegmentName::parse(path.file_name().unwrap().to_str().unwrap()).unwrap();
    let bytes = std::fs::read(path).unwrap();
    scan_segment(&bytes, name.seq)
        .batches
        .iter()
        .map(|b| b.offset)
        .collect()
}

fn reopen(dir: &Path) -> Result<(Vec<u64>, Option<u64>), WalError> {
    run(async {
        let (wal, rec) = Wal::open(dir, opts()).await?;
        // The log carries on after recovery: append the next entry and read it back.
        let next = wal.last_index() + 1;
        wal.append(vec![WalRecord::Entry {
            raft_index: next,
            term: 2,
            data: b"after".to_vec(),
        }])
        .await?;
        assert_eq!(wal.entries(next, next + 1, 0).await?[0].data, b"after");
        wal.close().await?;
        Ok((
            rec.entries.iter().map(|e| e.raft_index).collect(),
            rec.torn_tail.map(|t| t.offset),
        ))
    })
}

fn flip(path: &Path, offset: u64) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[offset as usize] ^= 0x40;
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn truncated_tail_is_cut_and_log_continues() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), 10);
    let last = segments(dir.path()).pop().unwrap();
    let tail = *batch_offsets(&last).last().unwrap();
    // The file ends in the middle of the last batch, as if the write never finished.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&last)
        .unwrap()
        .set_len(tail + 700)
        .unwrap();
    let (entries, torn) = reopen(dir.path()).unwrap();
    assert_eq!(torn, Some(tail));
    assert_eq!(
        entries.last().copied(),
        Some(9),
        "entry 10 was in the torn batch"
    );
    // And again after the recovery wrote past the cut: clean.
    let (entries, torn) = reopen(dir.path()).unwrap();
    assert_eq!(torn, None);
    assert_eq!(
        entries.last().copied(),
        Some(10),
        "entry 10 was rewritten by the first reopen"
    );
}

#[test]
fn garbled_tail_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), 10);
    let last = segments(dir.path()).pop().unwrap();
    let tail = *batch_offsets(&last).last().unwrap();
    let mut bytes = std::fs::read(&last).unwrap();
    bytes[tail as usize + 100..tail as usize + 600].fill(0xa5);
    std::fs::write(&last, bytes).unwrap();
    let (entries, torn) = reopen(dir.path()).unwrap();
    assert_eq!(torn, Some(tail));
    assert_eq!(entries.last().copied(), Some(9));
}

#[test]
fn unwritten_first_sector_of_tail_is_torn() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), 10);
    let last = segments(dir.path()).pop().unwrap();
    let tail = *batch_offsets(&last).last().unwrap();
    // The disk wrote the batch's later sectors but not its first.
    let mut bytes = std::fs::read(&last).unwrap();
    bytes[tail as usize..tail as usize + 512].fill(0);
    std::fs::write(&last, bytes).unwrap();
    let (entries, torn) = reopen(dir.path()).unwrap();
    assert_eq!(torn, Some(tail));
    assert_eq!(entries.last().copied(), Some(9));
}

#[test]
fn corrupt_middle_record_is_a_hard_error_until_repaired() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), 10);
    let last = segments(dir.path()).pop().unwrap();
    let offsets = batch_offsets(&last);
    let victim = offsets[offsets.len() - 3];
    flip(&last, victim + 40);
    match reopen(dir.path()) {
        Err(WalError::Corrupt {
            segment, offset, ..
        }) => {
            assert_eq!(segment, last);
            assert_eq!(offset, victim);
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    // verify reports the same; repair refuses without the explicit flag.
    let report = verify(dir.path()).unwrap();
    assert!(matches!(report.problem, Some(Problem::Corrupt { offset, .. }) if offset == victim));
    let refused = repair(dir.path(), false).unwrap();
    assert!(refused.refused.is_some() && refused.zeroed.is_none());
    assert!(
        reopen(dir.path()).is_err(),
        "a refused repair changes nothing"
    );
    let done = repair(dir.path(), true).unwrap();
    assert_eq!(done.zeroed.as_ref().map(|z| z.1), Some(victim));
    let (entries, torn) = reopen(dir.path()).unwrap();
    assert_eq!(torn, None);
    let last_entry = entries.last().copied().unwrap();
    assert!(
        last_entry < 10,
        "the log was cut at the corrupt batch: {last_entry}"
    );
}

#[test]
fn damage_in_an_older_segment_is_corrupt_not_torn() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), 200);
    let segs = segments(dir.path());
    assert!(segs.len() >= 3, "need rotation");
    // Garble the last batch of a segment that is not the last: later segments prove it was
    // durable, so this is never a torn tail.
    let older = &segs[1];
    let tail = *batch_offsets(older).last().unwrap();
    flip(older, tail + 30);
    assert!(
        matches!(reopen(dir.path()), Err(WalError::Corrupt { segment, .. }) if segment == *older)
    );
}

#[test]
fn missing_segment_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), 200);
    let segs = segments(dir.path());
    std::fs::remove_file(&segs[1]).unwrap();
    assert!(matches!(reopen(dir.path()), Err(WalError::Corrupt { .. })));
    assert!(matches!(
        verify(dir.path()).unwrap().problem,
        Some(Problem::MissingSegment { .. })
    ));
}
