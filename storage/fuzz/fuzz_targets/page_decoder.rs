//! Fuzzes the B+tree page decoders: any bytes, read as a database file, must give errors and
//! never panic, hang or read out of bounds — through the checker and through a reader doing
//! full scans both ways and point gets. CI runs the same over random and corrupted images in
//! `storage/tests/btree_corrupt.rs`. Run: `cargo +nightly fuzz run page_decoder` in storage/.
//!
//! Raw bytes almost never pass the meta page's magic and checksum, so with the first byte
//! odd the input is a recipe instead: 40 bytes of meta fields (txid, root, freelist, page
//! count, entry count) written into both meta slots with a valid checksum, then the data
//! pages, split at each `0xfe 0xfe` and each zero-padded to a page. The fuzzer then reaches
//! the branch, leaf, overflow and freelist decoders with small inputs.
#![no_main]

use std::ops::Bound;

use libfuzzer_sys::fuzz_target;
use tern_storage::btree::page::{Meta, META_SLOTS, PAGE_BYTES};
use tern_storage::btree::{buckets, check_image, ReadTxn};

/// Pages past this many are not built: the decoders' behaviour on a big file is the same as
/// on a small one, and each page costs the fuzzer 4 KiB per run.
const RECIPE_MAX_PAGES: usize = 64;

fn image_from_recipe(recipe: &[u8]) -> Vec<u8> {
    let mut fields = [0u64; 5];
    for (i, field) in fields.iter_mut().enumerate() {
        let mut le = [0u8; 8];
        if let Some(bytes) = recipe.get(i * 8..(i + 1) * 8) {
            le.copy_from_slice(bytes);
        }
        *field = u64::from_le_bytes(le);
    }
    let [txid, root_pgid, freelist_pgid, page_count, entry_count] = fields;
    let meta = Meta {
        txid,
        root_pgid,
        freelist_pgid,
        page_count,
        entry_count,
    }
    .encode();
    let mut image = vec![0u8; META_SLOTS as usize * PAGE_BYTES];
    for slot in 0..META_SLOTS as usize {
        image[slot * PAGE_BYTES..][..meta.len()].copy_from_slice(&meta);
    }
    let pages = recipe.get(40..).unwrap_or_default();
    let mut rest = pages;
    for _ in 0..RECIPE_MAX_PAGES {
        if rest.is_empty() {
            break;
        }
        let end = rest.windows(2).position(|w| w == [0xfe, 0xfe]);
        let page = &rest[..end.unwrap_or(rest.len()).min(PAGE_BYTES)];
        let start = image.len();
        image.resize(start + PAGE_BYTES, 0);
        image[start..start + page.len()].copy_from_slice(page);
        rest = match end {
            Some(at) if at <= PAGE_BYTES => &rest[at + 2..],
            _ => &rest[page.len()..],
        };
    }
    image
}

fuzz_target!(|data: &[u8]| {
    let image = match data.split_first() {
        Some((mode, recipe)) if mode & 1 == 1 => image_from_recipe(recipe),
        _ => data.to_vec(),
    };
    let _ = check_image(image.clone());
    if let Ok(read) = ReadTxn::from_image(image) {
        for bucket in buckets::ALL {
            for entry in read
                .range(bucket, Bound::Unbounded, Bound::Unbounded)
                .unwrap()
            {
                if entry.is_err() {
                    break;
                }
            }
            for entry in read
                .range_rev(bucket, Bound::Unbounded, Bound::Excluded(b"m"))
                .unwrap()
            {
                if entry.is_err() {
                    break;
                }
            }
            let _ = read.get(bucket, b"a");
        }
    }
});
