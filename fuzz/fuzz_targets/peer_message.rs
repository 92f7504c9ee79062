//! Fuzzes the peer codec's decoder (`tern::raft::codec`), which reads every raft message a
//! peer sends, WAL entries, snapshot files and committed ConfChanges: the first byte picks
//! the message type. Nothing may panic or recurse on the input. Every entry that decodes
//! (alone, or inside a message or snapshot) goes back through tern's own WAL encoding
//! (`tern::raft::log_store::wal_record`) and decodes to the same entry; the harness uses no
//! `protobuf` 2 API, so it keeps building when tern drops that crate.
//! Run: `cargo +nightly fuzz run peer_message -- -max_len=200000` in fuzz/.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern::raft::codec;
use tern::raft::log_store::{decode_wal_entry, wal_record};
use tern_storage::wal::{Entry as WalEntry, WalRecord};

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    // The entry, written as tern writes it to the WAL and read back as tern reads it.
    let round_trip = |entry: &_| {
        let WalRecord::Entry {
            raft_index,
            term,
            data,
        } = wal_record(entry)
        else {
            panic!("wal_record made no entry record");
        };
        let again = decode_wal_entry(&WalEntry {
            raft_index,
            term,
            data,
        })
        .expect("an encoded entry decodes");
        assert_eq!(&again, entry);
    };
    match which % 5 {
        0 => {
            if let Ok(m) = codec::decode_message(rest) {
                m.entries.iter().for_each(round_trip);
            }
        }
        1 => {
            if let Ok(e) = codec::decode_entry(rest) {
                round_trip(&e);
            }
        }
        2 => {
            let _ = codec::decode_snapshot(rest);
        }
        3 => {
            let _ = codec::decode_conf_change(rest);
        }
        _ => {
            let _ = codec::decode_hard_state(rest);
        }
    }
});
