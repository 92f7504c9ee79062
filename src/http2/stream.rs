//! Per-stream state (RFC 9113 §5.1) and buffers.
//!
//! Invariants:
//! - A stream is in the connection's map exactly while it is not `Closed`; closing removes
//!   it and wakes every task waiting on it, so a waiter never sleeps on a dead stream.
//! - Buffered request data never exceeds the stream's receive window we advertised (the
//!   peer cannot send more without a FLOW_CONTROL_ERROR).
//! - Queued response data is bounded by `ServerConfig::send_queue_bytes_max` plus one
//!   message, because `ResponseSink::send` waits while the queue is above it.

use std::collections::VecDeque;
use std::task::Waker;

use bytes::Bytes;

use super::flow::{RecvWindow, SendWindow};

/// Stream states as seen by a server (RFC 9113 §5.1). Server push is never used, so the
/// reserved states cannot occur.
///
/// ```text
///                          +--------+
///                  recv H  |        |
///              ,-----------|  idle  |
///             /            |        |
///            v             +--------+
///      +----------+
///      |          |  recv ES
///      |   open   |-----------------.
///      |          |                  \
///      +----------+                   v
///        |    send ES           +----------+
///        |    (trailers)        |  half-   |
///        v                      |  closed  |
///   +----------+                | (remote) |
///   |  half-   |                +----------+
///   |  closed  |                     |
///   | (local)  |                     | send ES (trailers)
///   +----------+                     | send R / recv R
///        |                           v
///        | recv ES / send R /   +----------+
///        | recv R               |          |
///        `--------------------->|  closed  |
///                               |          |
///                               +----------+
///
///   H: HEADERS frame   ES: END_STREAM flag   R: RST_STREAM frame
/// ```
///
/// We never linger in half-closed (local): when our trailers go out while the client is
/// still sending, we follow them with RST_STREAM(NO_ERROR) (RFC 9113 §8.1) and close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Idle,
    Open,
    HalfClosedRemote,
    HalfClosedLocal,
    Closed,
}

impl State {
    pub fn recv_end_stream(self) -> State {
        match self {
            State::Open => State::HalfClosedRemote,
            State::HalfClosedLocal => State::Closed,
            other => other,
        }
    }

    pub fn send_end_stream(self) -> State {
        match self {
            State::Open => State::HalfClosedLocal,
            State::HalfClosedRemote => State::Closed,
            other => other,
        }
    }

    pub fn remote_open(self) -> bool {
        matches!(self, State::Open | State::HalfClosedLocal)
    }
}

/// One stream's buffers, windows and waiting tasks.
pub struct Stream {
    pub state: State,
    pub send_window: SendWindow,
    pub recv_window: RecvWindow,
    /// Request DATA payloads not yet taken by the handler (slices of the read buffer).
    pub recv_chunks: VecDeque<Bytes>,
    /// Response DATA not yet written (whole gRPC messages, prefix included).
    pub send_queue: VecDeque<Bytes>,
    pub send_queued_bytes: usize,
    /// Answer bytes the application holds for this stream, not yet queued, reserved
    /// against the connection's cap (`StreamRef::poll_reserve`).
    pub reserved_bytes: usize,
    /// Encoded trailer block to send once `send_queue` drains.
    pub pending_trailers: Option<Vec<u8>>,
    /// Whether the response HEADERS went out.
    pub headers_sent: bool,
    /// Whether the stream is on the connection's list of streams with sendable data.
    pub in_send_list: bool,
    pub recv_waker: Option<Waker>,
    pub send_waker: Option<Waker>,
    pub closed_waker: Option<Waker>,
}

impl Stream {
    pub fn new(state: State, send_window: u32, recv_window: u32) -> Stream {
        Stream {
            state,
            send_window: SendWindow::new(send_window),
            recv_window: RecvWindow::new(recv_window, recv_window),
            recv_chunks: VecDeque::new(),
            send_queue: VecDeque::new(),
            send_queued_bytes: 0,
            reserved_bytes: 0,
            pending_trailers: None,
            headers_sent: false,
            in_send_list: false,
            recv_waker: None,
            send_waker: None,
            closed_waker: None,
        }
    }

    pub fn wake_all(&mut self) {
        for waker in [
            self.recv_waker.take(),
            self.send_waker.take(),
            self.closed_waker.take(),
        ]
        .into_iter()
        .flatten()
        {
            waker.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::State;

    #[test]
    fn transitions_follow_rfc9113_5_1() {
        assert_eq!(State::Open.recv_end_stream(), State::HalfClosedRemote);
        assert_eq!(State::HalfClosedRemote.send_end_stream(), State::Closed);
        assert_eq!(State::Open.send_end_stream(), State::HalfClosedLocal);
        assert_eq!(State::HalfClosedLocal.recv_end_stream(), State::Closed);
        assert!(State::Open.remote_open());
        assert!(!State::HalfClosedRemote.remote_open());
    }
}
