//! Fuzzes the peer codec's decoder (`tern::raft::codec`), which reads every raft message a
//! peer sends, WAL entries, snapshot files and committed ConfChanges: the first byte picks
//! the message type. Nothing may panic or recurse on the input; a decoded message
//! re-encodes (with raft-rs's protobuf 2 types) to bytes that decode to the same message.
//! Run: `cargo +nightly fuzz run peer_message -- -max_len=200000` in fuzz/.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protobuf::Message as _;
use tern::raft::codec;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 5 {
        0 => {
            if let Ok(m) = codec::decode_message(rest) {
                let again = codec::decode_message(&m.write_to_bytes().unwrap()).unwrap();
                assert_eq!(again, m);
            }
        }
        1 => {
            if let Ok(e) = codec::decode_entry(rest) {
                assert_eq!(codec::decode_entry(&e.write_to_bytes().unwrap()).unwrap(), e);
            }
        }
        2 => {
            if let Ok(s) = codec::decode_snapshot(rest) {
                assert_eq!(codec::decode_snapshot(&s.write_to_bytes().unwrap()).unwrap(), s);
            }
        }
        3 => {
            let _ = codec::decode_conf_change(rest);
        }
        _ => {
            let _ = codec::decode_hard_state(rest);
        }
    }
});
