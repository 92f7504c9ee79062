//! Fuzzes WAL record decoding (`tern_storage::wal::scan` and `record`): raw bytes read as a
//! segment, and a valid segment built from the input's records with one byte of it
//! changed, must scan to batches or a torn/corrupt end, never panic; the unchanged segment
//! scans back to exactly its records, and each entry's data goes through tern's decode of a
//! WAL entry (`tern::raft::log_store::decode_wal_entry`).
//! Run: `cargo +nightly fuzz run wal_record` in fuzz/.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_storage::wal::record::{batch_bytes_for, encode_batch_into, SECTOR_BYTES};
use tern_storage::wal::scan::scan_segment;
use tern_storage::wal::{Entry, HardState, WalRecord};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        let _ = scan_segment(rest, 1);
        return;
    }
    // Records from the input: a 0xfe byte separates entries; the last piece is a hard state.
    let (flip_at, rest) = rest.split_at(rest.len().min(2));
    let mut records: Vec<WalRecord> = rest
        .split(|b| *b == 0xfe)
        .enumerate()
        .map(|(i, piece)| WalRecord::Entry {
            raft_index: i as u64 + 1,
            term: 1,
            data: piece.to_vec(),
        })
        .collect();
    records.push(WalRecord::HardState(HardState {
        term: 1,
        vote: 1,
        commit: records.len() as u64,
    }));
    let bytes: usize = records.iter().map(WalRecord::frame_bytes).sum();
    let mut segment = vec![0u8; batch_bytes_for(bytes, SECTOR_BYTES)];
    encode_batch_into(&mut segment, 1, 0, records.iter(), records.len());
    let scan = scan_segment(&segment, 1);
    let scanned: Vec<WalRecord> = scan
        .batches
        .iter()
        .flat_map(|b| b.records.iter().map(|r| r.record.clone()))
        .collect();
    assert_eq!(scanned, records);
    for record in &scanned {
        if let WalRecord::Entry {
            raft_index,
            term,
            data,
        } = record
        {
            let entry = Entry {
                raft_index: *raft_index,
                term: *term,
                data: data.clone(),
            };
            let _ = tern::raft::log_store::decode_wal_entry(&entry);
        }
    }
    if let [hi, lo] = *flip_at {
        let at = usize::from(u16::from_be_bytes([hi, lo])) % segment.len();
        segment[at] ^= mode | 1;
        let _ = scan_segment(&segment, 1);
    }
});
