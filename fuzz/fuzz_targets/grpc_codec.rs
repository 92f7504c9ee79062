//! Fuzzes the gRPC codec's parsers (`tern::grpc::codec`): message prefixes over a buffer
//! of back-to-back framed messages (lengths up to 4 GiB), `grpc-timeout` values and
//! percent-encoded `grpc-message`s; none may panic, and framing a message round-trips.
//! Run: `cargo +nightly fuzz run grpc_codec` in fuzz/.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tern::grpc::codec;

fuzz_target!(|data: &[u8]| {
    let _ = codec::count_framed(data);
    if let Some(prefix) = data.get(..5) {
        let _ = codec::parse_prefix(prefix.try_into().unwrap());
    }
    let _ = codec::parse_timeout(data);
    let decoded = codec::percent_decode(data);
    assert_eq!(
        codec::percent_decode(&codec::percent_encode(&decoded)),
        decoded
    );
    if let Ok((prefix, rest)) = codec::frame_message(Bytes::copy_from_slice(data)) {
        let framed = [&prefix[..], rest.as_deref().unwrap_or_default()].concat();
        assert_eq!(codec::count_framed(&framed), 1);
    }
});
