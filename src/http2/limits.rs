//! The bounds a connection puts on what its peer can make it do, each beside the attack it
//! answers, and the small counters that enforce them. The connection driver (`conn`)
//! consults these; nothing here does I/O.
//!
//! Reactions, in RFC 9113 terms: a peer that exceeds a rate or a count gets GOAWAY
//! ENHANCE_YOUR_CALM (§7, "the endpoint is generating excessive load"); a peer that stops
//! reading stops being read (its own frames wait in the kernel, not in our memory).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::frame::Frame;

/// Streams the client may reset while their handlers still run, unanswered, within
/// [`CLIENT_RESET_WINDOW`]. Each such stream cost us a dispatched handler for nothing:
/// the HTTP/2 Rapid Reset attack (CVE-2023-44487) opens and cancels hundreds of
/// thousands a second on one connection. h2 allows 20 pending and remembers 50 resets per
/// second; we allow more, because etcd clients cancel watches and timed-out calls in
/// bursts, but any rate near an attack's is far above this.
pub const CLIENT_RESETS_PER_WINDOW_MAX: usize = 200;
/// The sliding window over which client resets are counted.
pub const CLIENT_RESET_WINDOW: Duration = Duration::from_secs(1);

/// Streams we may reset for the client's errors over a connection's whole life (h2's
/// `max_local_error_reset_streams` default): each costs us an RST_STREAM written, and a
/// client that keeps provoking them (CVE-2019-9514, "reset flood"; CVE-2023-44487 via
/// refused streams) is not a client worth serving.
pub const SERVER_RESETS_MAX: usize = 1024;

/// Response frames the peer provokes (PING and SETTINGS acks, RST_STREAM) that may wait
/// unsent; at this many, the connection stops reading until the writer has put them on
/// the wire. Answers the ping flood (CVE-2019-9512) and settings flood (CVE-2019-9515),
/// where a client that does not read made every answer pile up in memory. grpc-go's
/// control buffer throttles its reader the same way.
pub const CONTROL_FRAMES_UNSENT_MAX: usize = 100;

/// Response bytes a connection may hold queued for a client that does not read them
/// (its flow-control windows stay shut); above this, new requests wait, unhandled, until
/// it reads. Answers CVE-2019-9517 ("internal data buffering"): without it, a client
/// advertising a zero window and sending request after request for large answers made
/// the server hold every answer. Generous, because one client connection multiplexes
/// everything (a watch stream whose consumer lags holds up to
/// `ServerConfig::send_queue_bytes_max` here, and its other calls must not wait for it).
pub const CONNECTION_SEND_QUEUE_BYTES_MAX: usize = 64 << 20;

/// Frames the reader handles before it yields to the other tasks of its core (handlers,
/// writers, other connections): no flood on one connection can hold a core for long.
pub const FRAMES_PER_TURN_MAX: usize = 64;

/// Largest CONTINUATION count per header block for a given SETTINGS_MAX_HEADER_LIST_SIZE:
/// what the list needs in 16 KiB frames (the smallest SETTINGS_MAX_FRAME_SIZE, so the most
/// frames an honest client needs) plus a quarter, and never fewer than 5, as h2 does.
/// Answers the CONTINUATION flood (CVE-2024-27316 and its family): endless tiny
/// CONTINUATION frames that never end the header block.
pub fn continuation_frames_max(max_header_list_bytes: u32) -> usize {
    let frames = (max_header_list_bytes as usize).div_ceil(16_384);
    (frames + frames / 4).max(5)
}

/// Slack on top of SETTINGS_MAX_HEADER_LIST_SIZE for the encoded bytes of one header
/// block. An encoded field is never larger than the size §6.5.2 counts for it (name +
/// value + 32), so a block larger than the list limit plus a few dynamic-table size
/// updates cannot decode to an acceptable list and is refused before decoding.
pub const HEADER_BLOCK_SLACK_BYTES: usize = 64;

/// Pings allowed more often than the keepalive policy permits before GOAWAY
/// `too_many_pings` (grpc-go's `maxPingStrikes`, which etcd's server uses).
pub const PING_STRIKES_MAX: u32 = 2;
/// Without open streams a client may ping once per this long (grpc-go's policy when
/// `PermitWithoutStream` is false, as etcd configures it).
pub const PING_INTERVAL_WITHOUT_STREAMS_MIN: Duration = Duration::from_secs(2 * 3600);
/// The GOAWAY debug data grpc-go clients look for to double their keepalive time.
pub const TOO_MANY_PINGS: &str = "too_many_pings";

/// Frames a client may send that make us work without asking for anything, before the
/// ones it earns: small-frame floods (CVE-2019-9518, "empty frames flood": endless empty
/// DATA, and floods of tiny DATA, WINDOW_UPDATE, PRIORITY, unknown-type frames, empty
/// CONTINUATION, unsolicited SETTINGS or PING acks) cost a read and a parse each and
/// nothing else stops them. Such frames are free up to this many over a connection's
/// life, plus what the client earns (see [`OverheadBudget`]); past that, GOAWAY
/// ENHANCE_YOUR_CALM. Generous: an honest client spends a few per request it makes.
pub const OVERHEAD_FRAMES_FREE: u64 = 10_000;
/// DATA frames with less payload than this (and without END_STREAM) are overhead.
pub const SMALL_DATA_FRAME_BYTES: u32 = 256;
/// What each frame we send earns the client: it may answer each DATA frame with a
/// WINDOW_UPDATE for the stream and one for the connection.
pub const OVERHEAD_FRAMES_EARNED_PER_FRAME_SENT: u64 = 2;
/// What each stream the client opens earns it: its own small frames (an END_STREAM with
/// no data, a RST_STREAM, a small gRPC message).
pub const OVERHEAD_FRAMES_EARNED_PER_STREAM: u64 = 4;

/// Whether a frame the client sent is overhead (see [`OVERHEAD_FRAMES_FREE`]). PINGs are
/// the keepalive policy's ([`PingPolicy`]), RST_STREAMs the reset window's.
pub fn is_overhead(f: &Frame) -> bool {
    match f {
        Frame::Data {
            end_stream,
            flow_len,
            ..
        } => !end_stream && *flow_len < SMALL_DATA_FRAME_BYTES,
        Frame::WindowUpdate { .. }
        | Frame::Priority { .. }
        | Frame::Unknown { .. }
        | Frame::Settings { .. }
        | Frame::GoAway { .. } => true,
        Frame::Ping { ack, .. } => *ack,
        Frame::Continuation { fragment, .. } => fragment.is_empty(),
        Frame::Headers { .. } | Frame::RstStream { .. } | Frame::PushPromise { .. } => false,
    }
}

/// The overhead frames a client has sent against what it may send: [`OVERHEAD_FRAMES_FREE`]
/// plus what it earned by the frames we sent it and the streams it opened.
#[derive(Default)]
pub struct OverheadBudget {
    spent: u64,
}

impl OverheadBudget {
    /// Records one overhead frame; false once the client is over budget.
    pub fn spend(&mut self, frames_sent: u64, streams_opened: u64) -> bool {
        self.spent += 1;
        let earned = frames_sent.saturating_mul(OVERHEAD_FRAMES_EARNED_PER_FRAME_SENT)
            + streams_opened.saturating_mul(OVERHEAD_FRAMES_EARNED_PER_STREAM);
        self.spent <= OVERHEAD_FRAMES_FREE.saturating_add(earned)
    }
}

/// Client resets in a sliding window (see [`CLIENT_RESETS_PER_WINDOW_MAX`]). Holds at most
/// that many instants plus one.
#[derive(Default)]
pub struct ResetWindow {
    resets: VecDeque<Instant>,
}

impl ResetWindow {
    /// Records one reset at `now`; false once the window holds more than the limit.
    pub fn record(&mut self, now: Instant) -> bool {
        while self
            .resets
            .front()
            .is_some_and(|at| now.duration_since(*at) >= CLIENT_RESET_WINDOW)
        {
            self.resets.pop_front();
        }
        self.resets.push_back(now);
        self.resets.len() <= CLIENT_RESETS_PER_WINDOW_MAX
    }
}

/// grpc-go's keepalive enforcement (`keepalive.EnforcementPolicy`): a ping sooner than
/// `min_time` after the previous one (or sooner than two hours while no stream is open) is
/// a strike; more than [`PING_STRIKES_MAX`] strikes end the connection. Strikes are
/// forgiven whenever we send HEADERS or DATA (a client pinging an active connection is
/// measuring it, not flooding it).
pub struct PingPolicy {
    min_time: Duration,
    last_ping_at: Option<Instant>,
    strikes: u32,
}

impl PingPolicy {
    pub fn new(min_time: Duration) -> PingPolicy {
        PingPolicy {
            min_time,
            last_ping_at: None,
            strikes: 0,
        }
    }

    /// Records a ping from the client; false once it has struck out. `forgiven` says
    /// whether we sent HEADERS or DATA since the previous ping.
    pub fn on_ping(&mut self, now: Instant, streams_open: bool, forgiven: bool) -> bool {
        let previous = self.last_ping_at.replace(now);
        if forgiven {
            self.strikes = 0;
            return true;
        }
        let allowed = if streams_open {
            self.min_time
        } else {
            PING_INTERVAL_WITHOUT_STREAMS_MIN.max(self.min_time)
        };
        if previous.is_some_and(|at| now.duration_since(at) < allowed) {
            self.strikes += 1;
        }
        self.strikes <= PING_STRIKES_MAX
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_window_slides() {
        let mut w = ResetWindow::default();
        let t0 = Instant::now();
        for _ in 0..CLIENT_RESETS_PER_WINDOW_MAX {
            assert!(w.record(t0));
        }
        assert!(!w.record(t0 + Duration::from_millis(10)));
        // A second later the old ones have left the window.
        assert!(w.record(t0 + CLIENT_RESET_WINDOW + Duration::from_millis(20)));
        assert!(w.resets.len() <= CLIENT_RESETS_PER_WINDOW_MAX + 1);
    }

    #[test]
    fn ping_strikes_as_grpc_go_counts_them() {
        let mut p = PingPolicy::new(Duration::from_secs(5));
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        assert!(p.on_ping(at(0), true, false));
        assert!(p.on_ping(at(1000), true, false)); // strike 1
        assert!(p.on_ping(at(7000), true, false)); // 6 s later: fine, still 1
        assert!(p.on_ping(at(7100), true, false)); // strike 2
        assert!(p.on_ping(at(7200), true, true)); // we sent data: forgiven
        assert!(p.on_ping(at(7300), true, false)); // 1
        assert!(p.on_ping(at(7400), true, false)); // 2
        assert!(!p.on_ping(at(7500), true, false)); // 3 > 2
                                                    // Without streams even 5 s is too often.
        let mut p = PingPolicy::new(Duration::from_secs(5));
        for i in 0..3 {
            assert!(p.on_ping(at(i * 60_000), false, false));
        }
        assert!(!p.on_ping(at(3 * 60_000), false, false));
    }

    #[test]
    fn overhead_budget_grows_with_what_the_client_earns() {
        let mut b = OverheadBudget::default();
        for _ in 0..OVERHEAD_FRAMES_FREE {
            assert!(b.spend(0, 0));
        }
        assert!(!b.spend(0, 0));
        // One frame sent to it earns it two more.
        assert!(b.spend(1, 0));
        assert!(!b.spend(1, 0));
        let empty_data = Frame::Data {
            stream_id: 1,
            end_stream: false,
            data: bytes::Bytes::new(),
            flow_len: 0,
        };
        assert!(is_overhead(&empty_data));
        let last = Frame::Data {
            stream_id: 1,
            end_stream: true,
            data: bytes::Bytes::new(),
            flow_len: 0,
        };
        assert!(!is_overhead(&last));
    }

    #[test]
    fn continuation_cap_follows_the_list_limit() {
        assert_eq!(continuation_frames_max(16 << 10), 5);
        assert_eq!(continuation_frames_max(64 << 10), 5);
        assert_eq!(continuation_frames_max(1 << 20), 80);
    }
}
