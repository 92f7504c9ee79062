//! etcd's warnings of an overloaded leader or a slow disk, in etcd's words and fields so
//! that operators' alerts on etcd's log keep working:
//! - "slow fdatasync" (etcd `wal.sync`): a WAL batch whose fdatasync took longer than
//!   [`WARN_SYNC_DURATION`]; logged once per batch, however many appends shared it;
//! - "leader failed to send out heartbeat on time; took too long, leader is overloaded
//!   likely from slow disk" (etcd `raftNode.processMessages`): the leader's heartbeats to
//!   one follower were further apart than twice the heartbeat interval, measured by a
//!   [`HeartbeatDetector`] (etcd's `contention.TimeoutDetector`).
//!
//! The checks take the time as an argument, so that tests drive them without a clock.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tern_storage::wal::Durable;

/// etcd's `warnSyncDuration`.
pub const WARN_SYNC_DURATION: Duration = Duration::from_secs(1);

/// Remembers which WAL batch was last checked, so a slow batch is reported once.
#[derive(Default)]
pub(super) struct SlowFdatasync {
    last_batch_seq: u64,
}

impl SlowFdatasync {
    /// The fdatasync time to warn of, if `durable`'s batch is new and was slow.
    pub fn check(&mut self, durable: &Durable) -> Option<Duration> {
        if durable.batch_seq <= self.last_batch_seq {
            return None;
        }
        self.last_batch_seq = durable.batch_seq;
        // A barrier that wrote nothing synced nothing: not an fsync to count.
        if !durable.fdatasync_took.is_zero() {
            crate::metrics::observe_seconds(
                &crate::metrics::STATE.wal_fsync,
                &crate::metrics::DISK_SECONDS_BUCKETS,
                durable.fdatasync_took,
            );
        }
        (durable.fdatasync_took > WARN_SYNC_DURATION).then_some(durable.fdatasync_took)
    }

    /// Checks `durable` and logs etcd's warning if its batch was slow.
    pub fn warn(&mut self, durable: &Durable) {
        if let Some(took) = self.check(durable) {
            crate::warn!(
                "slow fdatasync",
                "took" => took,
                "expected-duration" => WARN_SYNC_DURATION
            );
        }
    }
}

/// When the leader last sent a heartbeat to each follower. One entry per follower the
/// leader heartbeats (bounded by the membership); emptied whenever leadership changes, as
/// etcd resets its detector on every soft-state change.
pub(super) struct HeartbeatDetector {
    heartbeat_interval: Duration,
    last_sent: HashMap<u64, Instant>,
}

impl HeartbeatDetector {
    pub fn new(heartbeat_interval: Duration) -> HeartbeatDetector {
        HeartbeatDetector {
            heartbeat_interval,
            last_sent: HashMap::new(),
        }
    }

    /// etcd expects two heartbeat intervals at most between heartbeats to one follower.
    pub fn expected(&self) -> Duration {
        2 * self.heartbeat_interval
    }

    pub fn reset(&mut self) {
        self.last_sent.clear();
    }

    pub fn forget(&mut self, member_id: u64) {
        self.last_sent.remove(&member_id);
    }

    /// Records a heartbeat to `to` sent at `now`; returns by how much the gap since the
    /// previous one exceeded [`Self::expected`], if it did.
    pub fn observe(&mut self, to: u64, now: Instant) -> Option<Duration> {
        let previous = self.last_sent.insert(to, now)?;
        now.saturating_duration_since(previous)
            .checked_sub(self.expected())
            .filter(|exceeded| !exceeded.is_zero())
    }

    /// Observes the heartbeats among `messages` about to be sent at `now` and logs etcd's
    /// warning for each follower whose heartbeat comes late.
    pub fn warn(&mut self, messages: &[raft::eraftpb::Message], now: Instant) {
        for m in messages {
            if m.get_msg_type() != raft::eraftpb::MessageType::MsgHeartbeat {
                continue;
            }
            if let Some(exceeded) = self.observe(m.to, now) {
                crate::metrics::STATE.heartbeat_send_failures.add(1, false);
                crate::warn!(
                    "leader failed to send out heartbeat on time; took too long, leader is overloaded likely from slow disk",
                    "to" => format!("{:x}", m.to),
                    "heartbeat-interval" => self.heartbeat_interval,
                    "expected-duration" => self.expected(),
                    "exceeded-duration" => exceeded
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! Drives the detectors with made-up instants and durations: no sleeping, no clock.
    use super::*;

    #[test]
    fn late_heartbeats_are_reported_per_follower() {
        let mut d = HeartbeatDetector::new(Duration::from_millis(100));
        assert_eq!(d.expected(), Duration::from_millis(200));
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        // The first heartbeat to a follower has nothing to compare with.
        assert_eq!(d.observe(2, at(0)), None);
        assert_eq!(d.observe(3, at(0)), None);
        // On time, and exactly at the limit: fine.
        assert_eq!(d.observe(2, at(100)), None);
        assert_eq!(d.observe(2, at(300)), None);
        // 450 ms after the previous one: 250 ms over the 200 ms expected.
        assert_eq!(d.observe(2, at(750)), Some(Duration::from_millis(250)));
        // Follower 3 is measured on its own: 750 ms since its last one.
        assert_eq!(d.observe(3, at(750)), Some(Duration::from_millis(550)));
        // After a late one the next gap is measured from it.
        assert_eq!(d.observe(2, at(850)), None);
        // A leadership change starts over.
        d.reset();
        assert_eq!(d.observe(2, at(5000)), None);
        d.forget(2);
        assert_eq!(d.observe(2, at(9000)), None);
    }

    #[test]
    fn only_heartbeats_count() {
        let mut d = HeartbeatDetector::new(Duration::from_millis(10));
        let t0 = Instant::now();
        let mut append = raft::eraftpb::Message::default();
        append.set_msg_type(raft::eraftpb::MessageType::MsgAppend);
        append.to = 2;
        d.warn(&[append], t0);
        assert!(d.last_sent.is_empty());
        let mut heartbeat = raft::eraftpb::Message::default();
        heartbeat.set_msg_type(raft::eraftpb::MessageType::MsgHeartbeat);
        heartbeat.to = 2;
        d.warn(&[heartbeat], t0);
        assert_eq!(d.last_sent.get(&2), Some(&t0));
    }

    fn durable(batch_seq: u64, took_ms: u64) -> Durable {
        Durable {
            batch_seq,
            last_raft_index: 1,
            fdatasync_took: Duration::from_millis(took_ms),
        }
    }

    #[test]
    fn a_slow_fdatasync_is_reported_once_per_batch() {
        let mut s = SlowFdatasync::default();
        assert_eq!(s.check(&durable(1, 5)), None);
        assert_eq!(s.check(&durable(2, 1000)), None, "exactly 1 s is not over");
        assert_eq!(
            s.check(&durable(3, 1500)),
            Some(Duration::from_millis(1500))
        );
        // Another append of the same batch, or an empty barrier reporting it again.
        assert_eq!(s.check(&durable(3, 1500)), None);
        assert_eq!(
            s.check(&durable(4, 2000)),
            Some(Duration::from_millis(2000))
        );
    }
}
