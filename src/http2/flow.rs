//! Flow-control accounting (RFC 9113 §5.2, §6.9). Pure arithmetic, no I/O.
//!
//! Invariants: a send window never exceeds 2^31-1 (an increment that would is a
//! FLOW_CONTROL_ERROR); it may go negative after the peer lowers
//! SETTINGS_INITIAL_WINDOW_SIZE (§6.9.2), and then nothing is sent until it is positive.
//! A receive window never goes negative: a peer sending past it is a FLOW_CONTROL_ERROR.

use super::frame::MAX_WINDOW_SIZE;

/// Overflow or underflow of a window: FLOW_CONTROL_ERROR on the wire.
#[derive(Debug, PartialEq, Eq)]
pub struct FlowControlError;

/// The peer's window for data we send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendWindow(i64);

impl SendWindow {
    pub fn new(initial: u32) -> SendWindow {
        SendWindow(initial as i64)
    }

    /// Bytes we may send now (0 when the window is exhausted or negative).
    pub fn available(&self) -> usize {
        self.0.max(0) as usize
    }

    pub fn consume(&mut self, bytes: usize) {
        assert!(bytes <= self.available(), "sent past the peer's window");
        self.0 -= bytes as i64;
    }

    /// A WINDOW_UPDATE increment.
    pub fn increase(&mut self, increment: u32) -> Result<(), FlowControlError> {
        self.adjust(increment as i64)
    }

    /// A change of SETTINGS_INITIAL_WINDOW_SIZE applies its delta to open streams.
    pub fn adjust(&mut self, delta: i64) -> Result<(), FlowControlError> {
        let next = self.0 + delta;
        if next > MAX_WINDOW_SIZE as i64 {
            return Err(FlowControlError);
        }
        self.0 = next;
        Ok(())
    }
}

/// Our window for data the peer sends, with the bytes consumed but not yet granted back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecvWindow {
    window: i64,
    target: u32,
    unreleased: u32,
}

impl RecvWindow {
    /// `advertised` is what the peer currently believes; `target` what we keep granting.
    pub fn new(advertised: u32, target: u32) -> RecvWindow {
        RecvWindow {
            window: advertised as i64,
            target,
            unreleased: 0,
        }
    }

    /// Accounts a received flow-controlled frame (its whole length, padding included).
    pub fn receive(&mut self, bytes: u32) -> Result<(), FlowControlError> {
        if bytes as i64 > self.window {
            return Err(FlowControlError);
        }
        self.window -= bytes as i64;
        Ok(())
    }

    /// Marks `bytes` as consumed. Returns the WINDOW_UPDATE increment to send, if any:
    /// updates are batched until half the target is owed, or the window would otherwise
    /// fall below half, so that small messages do not cost one frame each.
    pub fn release(&mut self, bytes: u32) -> Option<u32> {
        self.unreleased += bytes;
        let owed_to_target = (self.target as i64 - self.window).max(0) as u32;
        let increment = self.unreleased.min(owed_to_target);
        if increment > 0 && (increment >= self.target / 2 || self.window < self.target as i64 / 2) {
            self.unreleased = 0;
            self.window += increment as i64;
            return Some(increment);
        }
        None
    }

    /// Raises the window towards `target` at connection start (the connection window
    /// starts at 65,535 whatever we want).
    pub fn grow_to_target(&mut self) -> Option<u32> {
        let increment = (self.target as i64 - self.window).max(0) as u32;
        if increment == 0 {
            return None;
        }
        self.window += increment as i64;
        Some(increment)
    }

    pub fn window(&self) -> i64 {
        self.window
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_window_accounting() {
        let mut w = SendWindow::new(65_535);
        w.consume(65_535);
        assert_eq!(w.available(), 0);
        w.increase(10).unwrap();
        assert_eq!(w.available(), 10);
        // SETTINGS may push it negative; nothing is available until it recovers.
        w.adjust(-100).unwrap();
        assert_eq!(w.available(), 0);
        w.increase(95).unwrap();
        assert_eq!(w.available(), 5);
        // Overflow past 2^31-1 is an error and leaves the window unchanged.
        let mut w = SendWindow::new(MAX_WINDOW_SIZE);
        assert_eq!(w.increase(1), Err(FlowControlError));
        assert_eq!(w.available(), MAX_WINDOW_SIZE as usize);
        let mut w = SendWindow::new(1);
        assert_eq!(w.increase(MAX_WINDOW_SIZE), Err(FlowControlError));
    }

    #[test]
    fn receive_past_window_is_an_error() {
        let mut r = RecvWindow::new(100, 100);
        r.receive(60).unwrap();
        r.receive(40).unwrap();
        assert_eq!(r.receive(1), Err(FlowControlError));
        r.receive(0).unwrap();
    }

    #[test]
    fn releases_are_batched_and_never_exceed_target() {
        let mut r = RecvWindow::new(1000, 1000);
        r.receive(100).unwrap();
        assert_eq!(r.release(100), None, "small releases wait");
        r.receive(500).unwrap();
        assert_eq!(
            r.release(500),
            Some(600),
            "half the target owed triggers an update"
        );
        assert_eq!(r.window(), 1000);
        // Releasing bytes that were never received cannot inflate the window past target.
        assert_eq!(r.release(5000), None);
        assert_eq!(r.window(), 1000);
    }

    #[test]
    fn connection_window_grows_to_target_once() {
        let mut r = RecvWindow::new(65_535, 1 << 20);
        assert_eq!(r.grow_to_target(), Some((1 << 20) - 65_535));
        assert_eq!(r.grow_to_target(), None);
    }
}
