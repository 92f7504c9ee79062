//! Small-frame floods (part of the abuse suite, `tests/abuse.rs`): frames that ask for
//! nothing (CVE-2019-9518's empty frames, and tiny DATA, WINDOW_UPDATE, PRIORITY and
//! unknown-type frames) are free only up to a per-connection overhead budget, then the
//! connection gets GOAWAY ENHANCE_YOUR_CALM; other clients are served meanwhile.

use super::raw_h2::{self, code, flag, kind, RawH2};
use super::{assert_rss_bounded, etcdctl_get_succeeds, expect_goaway, server_with_foo};

/// Far more than `http2::limits::OVERHEAD_FRAMES_FREE` (10,000).
const FLOOD_FRAMES: usize = 100_000;

fn flood(name: &str, one: &[u8]) {
    let (server, rss_before) = server_with_foo();
    let mut c = RawH2::start(server.client_port, &[]);
    c.sock
        .set_write_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    // A Watch stream stays open without a body: the DATA floods go to it.
    let block = raw_h2::grpc_request_headers("/etcdserverpb.Watch/Watch");
    c.send_frame(kind::HEADERS, flag::END_HEADERS, 1, &block);
    let batch: Vec<u8> = one.repeat(1000);
    for _ in 0..FLOOD_FRAMES / 1000 {
        if !c.send(&batch) {
            break; // the server has closed: read its GOAWAY below
        }
    }
    let (goaway, debug) = expect_goaway(&mut c, name);
    assert_eq!(goaway, code::ENHANCE_YOUR_CALM, "{name}: {debug}");
    etcdctl_get_succeeds(&server);
    assert_rss_bounded(&server, rss_before, name);
}

#[test]
fn empty_data_flood_gets_enhance_your_calm() {
    flood("empty DATA", &raw_h2::frame_bytes(kind::DATA, 0, 1, &[]));
}

#[test]
fn one_byte_data_flood_gets_enhance_your_calm() {
    flood("1-byte DATA", &raw_h2::frame_bytes(kind::DATA, 0, 1, &[0]));
}

#[test]
fn window_update_flood_gets_enhance_your_calm() {
    flood(
        "WINDOW_UPDATE",
        &raw_h2::frame_bytes(kind::WINDOW_UPDATE, 0, 1, &1u32.to_be_bytes()),
    );
}

#[test]
fn priority_flood_gets_enhance_your_calm() {
    // PRIORITY (type 0x2) on stream 1: depends on stream 0, weight 16.
    flood(
        "PRIORITY",
        &raw_h2::frame_bytes(0x2, 0, 1, &[0, 0, 0, 0, 15]),
    );
}

#[test]
fn unknown_frame_flood_gets_enhance_your_calm() {
    flood("unknown type", &raw_h2::frame_bytes(0xfa, 0, 0, &[]));
}
