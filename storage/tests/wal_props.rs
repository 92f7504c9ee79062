//! Property tests of framing and recovery on in-memory segment images (no I/O): random batches
//! of random records are encoded as the WAL writes them, then damaged (truncated, a byte flipped
//! in the last or in an earlier batch) and scanned. Checks: round trip is exact; damage to the
//! last batch only ever loses that batch (torn tail); damage to an earlier batch is reported as
//! corruption at that batch; no input makes decoding panic.

use proptest::prelude::*;
use tern_storage::wal::record::{batch_bytes_for, decode_frame, encode_batch_into, WalRecord};
use tern_storage::wal::scan::{scan_segment, SegmentEnd};
use tern_storage::wal::{HardState, Metadata, SnapshotMarker};

const SEQ: u64 = 7;
const SEGMENT_BYTES: usize = 256 << 10;

fn record() -> impl Strategy<Value = WalRecord> {
    prop_oneof![
        (
            any::<u64>(),
            any::<u64>(),
            proptest::collection::vec(any::<u8>(), 0..700)
        )
            .prop_map(|(raft_index, term, data)| WalRecord::Entry {
                raft_index,
                term,
                data
            }),
        (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(term, vote, commit)| {
            WalRecord::HardState(HardState { term, vote, commit })
        }),
        (any::<u64>(), any::<u64>()).prop_map(|(raft_index, term)| WalRecord::Snapshot(
            SnapshotMarker { raft_index, term }
        )),
        (any::<u64>(), any::<u64>()).prop_map(|(cluster_id, member_id)| WalRecord::Metadata(
            Metadata {
                cluster_id,
                member_id
            }
        )),
    ]
}

fn batches() -> impl Strategy<Value = Vec<Vec<WalRecord>>> {
    proptest::collection::vec(proptest::collection::vec(record(), 1..6), 1..8)
}

/// Encodes `batches` into a zeroed segment image; returns it and each batch's offset.
fn image(batches: &[Vec<WalRecord>], align: usize) -> (Vec<u8>, Vec<usize>) {
    let mut buf = vec![0u8; SEGMENT_BYTES];
    let mut offsets = Vec::new();
    let mut at = 0;
    for batch in batches {
        let records_bytes: usize = batch.iter().map(WalRecord::frame_bytes).sum();
        let len = batch_bytes_for(records_bytes, align);
        encode_batch_into(
            &mut buf[at..at + len],
            SEQ,
            at as u64,
            batch.iter(),
            batch.len(),
        );
        offsets.push(at);
        at += len;
    }
    (buf, offsets)
}

fn scanned(buf: &[u8]) -> (Vec<Vec<WalRecord>>, SegmentEnd) {
    let scan = scan_segment(buf, SEQ);
    let got = scan
        .batches
        .iter()
        .map(|b| b.records.iter().map(|r| r.record.clone()).collect())
        .collect();
    (got, scan.end)
}

proptest! {
    #[test]
    fn round_trip(batches in batches(), align_log2 in 9u32..13) {
        let (buf, offsets) = image(&batches, 1 << align_log2);
        let (got, end) = scanned(&buf);
        prop_assert_eq!(&got, &batches);
        let end_offset = offsets.last().unwrap() + {
            let last = batches.last().unwrap();
            batch_bytes_for(last.iter().map(WalRecord::frame_bytes).sum(), 1 << align_log2)
        };
        prop_assert_eq!(end, SegmentEnd::Clean { next_offset: end_offset as u64 });
    }

    #[test]
    fn truncation_loses_at_most_the_cut_batch(batches in batches(), cut in any::<prop::sample::Index>()) {
        let (buf, offsets) = image(&batches, 512);
        let used = offsets.last().unwrap() + 512;
        let cut = cut.index(used + 1);
        let (got, end) = scanned(&buf[..cut]);
        // Every batch that ends before the cut survives, nothing else, and it is never corrupt.
        let whole = batches
            .iter()
            .zip(&offsets)
            .filter(|(b, off)| **off + batch_bytes_for(b.iter().map(WalRecord::frame_bytes).sum(), 512) <= cut)
            .count();
        prop_assert_eq!(&got[..], &batches[..whole]);
        prop_assert!(!matches!(end, SegmentEnd::Corrupt { .. }), "{:?}", end);
    }

    #[test]
    fn flipped_byte_in_last_batch_is_torn(batches in batches(), at in any::<prop::sample::Index>(), mask in 1u8..) {
        let (mut buf, offsets) = image(&batches, 512);
        let last = *offsets.last().unwrap();
        let last_len = batch_bytes_for(batches.last().unwrap().iter().map(WalRecord::frame_bytes).sum(), 512);
        let pos = last + at.index(last_len);
        buf[pos] ^= mask;
        let (got, end) = scanned(&buf);
        prop_assert_eq!(&got[..], &batches[..batches.len() - 1]);
        let is_torn = matches!(end, SegmentEnd::Torn { offset, .. } if offset == last as u64);
        prop_assert!(is_torn, "{:?}", end);
    }

    #[test]
    fn flipped_byte_in_earlier_batch_is_corrupt(batches in batches(), which in any::<prop::sample::Index>(), at in any::<prop::sample::Index>(), mask in 1u8..) {
        prop_assume!(batches.len() >= 2);
        let (mut buf, offsets) = image(&batches, 512);
        let victim = which.index(batches.len() - 1);
        let len = batch_bytes_for(batches[victim].iter().map(WalRecord::frame_bytes).sum(), 512);
        buf[offsets[victim] + at.index(len)] ^= mask;
        let (got, end) = scanned(&buf);
        prop_assert_eq!(&got[..], &batches[..victim]);
        let is_corrupt = matches!(end, SegmentEnd::Corrupt { offset, .. } if offset == offsets[victim] as u64);
        prop_assert!(is_corrupt, "{:?}", end);
    }

    #[test]
    fn frames_are_bound_to_segment_and_offset(batches in batches(), other_seq in 0u64..1000) {
        prop_assume!(other_seq != SEQ);
        let (buf, _) = image(&batches, 512);
        // The same bytes read as another segment, or one sector later, are not valid frames.
        prop_assert!(decode_frame(&buf, other_seq, 0).is_err());
        prop_assert!(decode_frame(&buf, SEQ, 512).is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096), offset in 0u64..1 << 20) {
        let _ = decode_frame(&bytes, SEQ, offset & !7);
        let _ = scan_segment(&bytes, SEQ);
    }
}
