//! Fuzzes HTTP/2 frame parsing (`tern::http2::frame`): any bytes, read as a run of frames,
//! give frames or a `FrameError`, never a panic; every parsed frame re-encodes.
//! Run: `cargo +nightly fuzz run http2_frame` in fuzz/.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tern::http2::frame::{Frame, FrameHeader, FRAME_HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    let data = Bytes::copy_from_slice(data);
    let mut at = 0;
    while let Some(header) = FrameHeader::parse(&data[at..]) {
        let start = at + FRAME_HEADER_LEN;
        let Some(end) = start
            .checked_add(header.length as usize)
            .filter(|e| *e <= data.len())
        else {
            break;
        };
        if let Ok(frame) = Frame::parse(header, data.slice(start..end)) {
            let mut out = Vec::new();
            frame.encode(&mut out);
        }
        at = end;
    }
});
