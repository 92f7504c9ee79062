//! Fuzzes the B+tree page decoders: any bytes, read as a database file, must give errors and
//! never panic, hang or read out of bounds — through the checker and through a reader doing
//! full scans both ways and point gets. CI runs the same over random and corrupted images in
//! `storage/tests/btree_corrupt.rs`. Run: `cargo +nightly fuzz run page_decoder` in storage/.
#![no_main]

use std::ops::Bound;

use libfuzzer_sys::fuzz_target;
use tern_storage::btree::{buckets, check_image, ReadTxn};

fuzz_target!(|data: &[u8]| {
    let _ = check_image(data.to_vec());
    if let Ok(read) = ReadTxn::from_image(data.to_vec()) {
        for bucket in buckets::ALL {
            for entry in read.range(bucket, Bound::Unbounded, Bound::Unbounded).unwrap() {
                if entry.is_err() {
                    break;
                }
            }
            for entry in read.range_rev(bucket, Bound::Unbounded, Bound::Excluded(b"m")).unwrap() {
                if entry.is_err() {
                    break;
                }
            }
            let _ = read.get(bucket, b"a");
        }
    }
});
