//! Checks the WAL's zeroing ahead of the writer (storage/src/wal/zero_ahead.rs): the blocks
//! just past the durable end are written extents (read back through FIEMAP with `filefrag`)
//! while the far end of the segment stays preallocated, and entries appended while zero writes
//! run beside them, across rotations, all read back intact after a reopen.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use glommio::{LocalExecutorBuilder, Placement};
use tern_storage::wal::executor::WAL_IO_MEMORY_BYTES;
use tern_storage::wal::{Metadata, Wal, WalOptions, WalRecord};

const META: Metadata = Metadata {
    cluster_id: 0xc1,
    member_id: 0x5e,
};

fn run<T>(fut: impl std::future::Future<Output = T>) -> T {
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(WAL_IO_MEMORY_BYTES)
        .make()
        .expect("executor")
        .run(fut)
}

fn entry(raft_index: u64, data_bytes: usize) -> WalRecord {
    let mut data = format!("entry-{raft_index}-").into_bytes();
    data.resize(data_bytes, b'a' + (raft_index % 26) as u8);
    WalRecord::Entry {
        raft_index,
        term: 1,
        data,
    }
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    files.sort();
    files
}

/// The file's extents as (first byte, bytes, unwritten), from `filefrag -v -b1`; None when
/// the filesystem has no FIEMAP (then there are no unwritten extents to convert either).
fn extents(path: &Path) -> Option<Vec<(u64, u64, bool)>> {
    let out = Command::new("filefrag")
        .args(["-v", "-b1"])
        .arg(path)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut extents = Vec::new();
    for line in text.lines() {
        // "   0:        0..   65535:   123..  456:  65536:   unwritten"
        let fields: Vec<&str> = line.split(':').map(str::trim).collect();
        if fields.len() < 4 || fields[0].parse::<u64>().is_err() {
            continue;
        }
        let logical: Vec<&str> = fields[1].split("..").map(str::trim).collect();
        let (Ok(start), Ok(last)) = (logical[0].parse::<u64>(), logical[1].parse::<u64>()) else {
            continue;
        };
        extents.push((start, last + 1 - start, line.contains("unwritten")));
    }
    Some(extents)
}

#[test]
fn blocks_ahead_of_the_writer_are_written_extents_and_the_far_end_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let wal_dir = dir.path().join("wal");
    run(async {
        let wal = Wal::create(&wal_dir, WalOptions::default(), META)
            .await
            .unwrap();
        wal.append(vec![entry(1, 100)]).await.unwrap();
        // The zeroing runs beside the writer; wait (generously) until it has gone 4 MiB ahead.
        let deadline = Instant::now() + Duration::from_secs(60);
        while wal.stats().chunks_zeroed < 16 {
            assert!(
                Instant::now() < deadline,
                "zeroing ahead never reached 4 MiB"
            );
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
        // 4 MiB ahead of the durable end is 16 chunks, or 17 when the first chunk starts
        // above the header's block.
        glommio::timer::sleep(Duration::from_millis(200)).await;
        assert!(
            wal.stats().chunks_zeroed <= 17,
            "zeroing must stop a bounded distance ahead of the writer, not fill the segment: {:?}",
            wal.stats()
        );
        let segment = segment_files(&wal_dir).pop().expect("a segment");
        match extents(&segment) {
            None => eprintln!("skip extent check: no FIEMAP on this filesystem"),
            Some(extents) => {
                let unwritten_in = |lo: u64, hi: u64| {
                    extents
                        .iter()
                        .any(|&(s, len, unwritten)| unwritten && s < hi && lo < s + len)
                };
                assert!(
                    !unwritten_in(0, 4 << 20),
                    "the first 4 MiB should be written extents: {extents:?}"
                );
                assert!(
                    unwritten_in(8 << 20, 64 << 20),
                    "the far end should still be preallocated (unwritten): {extents:?}"
                );
            }
        }
        wal.close().await.unwrap();
    });
}

#[test]
fn entries_written_beside_zero_writes_and_rotations_read_back_intact() {
    let dir = tempfile::tempdir().unwrap();
    let wal_dir = dir.path().join("wal");
    // Segments of 1 MiB: four zero chunks each, so rotations and zero writes interleave often.
    let opts = WalOptions {
        segment_bytes: 1 << 20,
        batch_bytes_max: 64 << 10,
        ..WalOptions::default()
    };
    const ENTRIES: u64 = 3000;
    run(async {
        let wal = Wal::create(&wal_dir, opts.clone(), META).await.unwrap();
        // Groups of concurrent appends of mixed sizes: batches from 1 KiB to 64 KiB.
        let mut next = 1u64;
        while next <= ENTRIES {
            let group = (next % 17) + 1;
            let futures: Vec<_> = (next..(next + group).min(ENTRIES + 1))
                .map(|i| wal.append(vec![entry(i, 200 + (i as usize * 37) % 3000)]))
                .collect();
            next += futures.len() as u64;
            for f in futures {
                f.await.unwrap();
            }
        }
        let stats = wal.stats();
        assert!(stats.segments_created > 3, "{stats:?}");
        assert!(stats.chunks_zeroed > 0, "{stats:?}");
        wal.close().await.unwrap();

        let (wal, recovered) = Wal::open(&wal_dir, opts).await.unwrap();
        assert!(recovered.torn_tail.is_none());
        assert_eq!(recovered.entries.len() as u64, ENTRIES);
        for (i, e) in recovered.entries.iter().enumerate() {
            let raft_index = i as u64 + 1;
            let WalRecord::Entry { data, .. } =
                entry(raft_index, 200 + (raft_index as usize * 37) % 3000)
            else {
                unreachable!()
            };
            assert_eq!(e.raft_index, raft_index);
            assert_eq!(e.data, data, "entry {raft_index} differs after reopen");
        }
        wal.close().await.unwrap();
    });
}
