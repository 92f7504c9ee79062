//! etcd's auto-compaction (`etcdserver/api/v3compactor`): `--auto-compaction-mode periodic`
//! keeps `--auto-compaction-retention` worth of history, `revision` keeps that many
//! revisions. Only the leader compacts (etcd pauses the compactor on followers); the
//! compaction is an ordinary Compact proposal, so every member applies it at the same
//! raft index, and the log lines are etcd's.
//!
//! Periodic, as etcd 3.4 schedules it: every `retry = min(retention, 1h) / 10` the current
//! revision is sampled, keeping the last `retention / retry + 1` samples, so the oldest
//! is the revision of one retention ago. The first compaction comes one retention after
//! start, later ones every `min(retention, 1h)` after the last success, each to the oldest
//! sample. Revision: every 5 minutes, compact to `current - retention` if that is positive
//! and new.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures::channel::oneshot;

use crate::error::EtcdError;
use crate::proto::etcdserverpb as pb;
use crate::state::client::Command;

use super::Node;

/// etcd's `revInterval`: how often revision mode looks at the revision.
pub const REVISION_MODE_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// etcd caps the periodic compaction interval at an hour (`getCompactInterval`).
const PERIODIC_INTERVAL_MAX: Duration = Duration::from_secs(3600);
/// etcd's `retryDivisor`: samples per compaction interval.
const PERIODIC_SAMPLES_PER_INTERVAL: u32 = 10;

/// What the two flags ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AutoCompaction {
    Periodic(Duration),
    Revision(i64),
}

/// etcd's `parseCompactionRetention`: a bare integer is hours (periodic) or revisions
/// (revision); otherwise a Go duration. Zero disables auto-compaction (None).
pub fn parse(mode: &str, retention: &str) -> Result<Option<AutoCompaction>, String> {
    let policy = match retention.parse::<i64>() {
        Ok(count) if count >= 0 => match mode {
            "revision" => AutoCompaction::Revision(count),
            _ => AutoCompaction::Periodic(Duration::from_secs(count as u64 * 3600)),
        },
        _ => {
            let period = crate::config::go::parse_duration(retention)
                .map_err(|e| format!("error parsing CompactionRetention: {e}"))?;
            match mode {
                "revision" => AutoCompaction::Revision(period.as_nanos() as i64),
                _ => AutoCompaction::Periodic(period),
            }
        }
    };
    Ok(match policy {
        AutoCompaction::Periodic(period) if period.is_zero() => None,
        AutoCompaction::Revision(0) => None,
        policy => Some(policy),
    })
}

/// The periodic compactor's samples and timers (pure, so its schedule is unit-tested).
pub struct PeriodicSchedule {
    period: Duration,
    samples: VecDeque<i64>,
    samples_max: usize,
    last_success: Instant,
    /// One retention before the first compaction, then the compaction interval.
    wait: Duration,
}

impl PeriodicSchedule {
    pub fn new(period: Duration, now: Instant) -> PeriodicSchedule {
        let retry = Self::retry_interval_of(period);
        PeriodicSchedule {
            period,
            samples: VecDeque::new(),
            samples_max: (period.as_nanos() / retry.as_nanos().max(1)) as usize + 1,
            last_success: now,
            wait: period,
        }
    }

    fn retry_interval_of(period: Duration) -> Duration {
        period.min(PERIODIC_INTERVAL_MAX) / PERIODIC_SAMPLES_PER_INTERVAL
    }

    /// How long to sleep between samples.
    pub fn retry_interval(&self) -> Duration {
        Self::retry_interval_of(self.period)
    }

    /// Records the current revision (at the top of each round, as etcd does).
    pub fn sample(&mut self, revision: i64) {
        self.samples.push_back(revision);
        while self.samples.len() > self.samples_max {
            self.samples.pop_front();
        }
    }

    /// The revision to compact to now, if a compaction is due.
    pub fn due(&mut self, now: Instant) -> Option<i64> {
        if now.duration_since(self.last_success) < self.wait {
            return None;
        }
        self.wait = self.period.min(PERIODIC_INTERVAL_MAX);
        self.samples.front().copied()
    }

    pub fn succeeded(&mut self, now: Instant) {
        self.last_success = now;
    }

    pub fn last_success(&self) -> Instant {
        self.last_success
    }
}

/// Proposes a compaction to `revision` and waits for it to apply.
async fn compact(node: &Rc<RefCell<Node>>, revision: i64) -> Result<(), EtcdError> {
    let (reply, answer) = oneshot::channel();
    let req = pb::CompactionRequest {
        revision,
        physical: false,
    };
    node.borrow_mut().submit(Command::Compact(req, reply));
    match answer.await {
        Ok(Ok(_)) | Ok(Err(EtcdError::Compacted)) => Ok(()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(EtcdError::Stopped),
    }
}

fn current_revision(node: &Rc<RefCell<Node>>) -> i64 {
    node.borrow().state.borrow().current_revision()
}

/// Runs the compactor for the life of the node.
pub async fn run(node: Rc<RefCell<Node>>, policy: AutoCompaction) {
    match policy {
        AutoCompaction::Periodic(period) => run_periodic(node, period).await,
        AutoCompaction::Revision(retention) => run_revision(node, retention).await,
    }
}

async fn run_periodic(node: Rc<RefCell<Node>>, period: Duration) {
    let mut schedule = PeriodicSchedule::new(period, Instant::now());
    let period_text = crate::log::format_duration(period);
    loop {
        schedule.sample(current_revision(&node));
        glommio::timer::sleep(schedule.retry_interval()).await;
        if !node.borrow().is_leader() {
            continue;
        }
        let Some(revision) = schedule.due(Instant::now()) else {
            continue;
        };
        crate::info!(
            "starting auto periodic compaction",
            "revision" => revision,
            "compact-period" => period_text.clone()
        );
        match compact(&node, revision).await {
            Ok(()) => {
                // etcd 3.4 reports the time since the previous success as "took".
                crate::info!(
                    "completed auto periodic compaction",
                    "revision" => revision,
                    "compact-period" => period_text.clone(),
                    "took" => crate::log::format_duration(schedule.last_success().elapsed())
                );
                schedule.succeeded(Instant::now());
            }
            Err(e) => crate::warn!(
                "failed auto periodic compaction",
                "revision" => revision,
                "compact-period" => period_text.clone(),
                "retry-interval" => crate::log::format_duration(schedule.retry_interval()),
                "error" => e.message().to_string()
            ),
        }
    }
}

async fn run_revision(node: Rc<RefCell<Node>>, retention: i64) {
    let mut previous = 0;
    loop {
        glommio::timer::sleep(REVISION_MODE_INTERVAL).await;
        if !node.borrow().is_leader() {
            continue;
        }
        let revision = current_revision(&node) - retention;
        if revision <= 0 || revision == previous {
            continue;
        }
        let started = Instant::now();
        crate::info!(
            "starting auto revision compaction",
            "revision" => revision,
            "revision-compaction-retention" => retention
        );
        match compact(&node, revision).await {
            Ok(()) => {
                previous = revision;
                crate::info!(
                    "completed auto revision compaction",
                    "revision" => revision,
                    "revision-compaction-retention" => retention,
                    "took" => crate::log::format_duration(started.elapsed())
                );
            }
            Err(e) => crate::warn!(
                "failed auto revision compaction",
                "revision" => revision,
                "revision-compaction-retention" => retention,
                "retry-interval" => crate::log::format_duration(REVISION_MODE_INTERVAL),
                "error" => e.message().to_string()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_parses_as_etcd_does() {
        let hour = Duration::from_secs(3600);
        assert_eq!(
            parse("periodic", "1").unwrap(),
            Some(AutoCompaction::Periodic(hour))
        );
        assert_eq!(
            parse("periodic", "90m").unwrap(),
            Some(AutoCompaction::Periodic(hour * 3 / 2))
        );
        assert_eq!(
            parse("revision", "1000").unwrap(),
            Some(AutoCompaction::Revision(1000))
        );
        assert_eq!(parse("periodic", "0").unwrap(), None);
        assert_eq!(parse("revision", "0").unwrap(), None);
        assert_eq!(
            parse("periodic", "xyz").unwrap_err(),
            "error parsing CompactionRetention: time: invalid duration \"xyz\""
        );
    }

    #[test]
    fn periodic_compacts_to_the_revision_of_one_retention_ago() {
        let period = Duration::from_secs(100);
        let start = Instant::now();
        let mut schedule = PeriodicSchedule::new(period, start);
        assert_eq!(schedule.retry_interval(), Duration::from_secs(10));
        let mut now = start;
        let mut compacted = Vec::new();
        // One revision per second: sample r at time r.
        for round in 0..40u64 {
            schedule.sample((round * 10) as i64);
            now += schedule.retry_interval();
            if let Some(revision) = schedule.due(now) {
                compacted.push((now.duration_since(start).as_secs(), revision));
                schedule.succeeded(now);
            }
        }
        // First after one retention, then every retention; each keeps ~100 s of history.
        assert_eq!(compacted[0], (100, 0));
        assert_eq!(compacted[1], (200, 90));
        assert_eq!(compacted[2], (300, 190));
        assert_eq!(compacted.len(), 4);
    }

    #[test]
    fn long_retentions_compact_hourly() {
        let period = Duration::from_secs(5 * 3600);
        let start = Instant::now();
        let mut schedule = PeriodicSchedule::new(period, start);
        assert_eq!(schedule.retry_interval(), Duration::from_secs(360));
        let mut now = start;
        let mut times = Vec::new();
        for round in 0..120 {
            schedule.sample(round);
            now += schedule.retry_interval();
            if schedule.due(now).is_some() {
                times.push(now.duration_since(start).as_secs());
                schedule.succeeded(now);
            }
        }
        assert_eq!(times[..3], [5 * 3600, 6 * 3600, 7 * 3600]);
    }
}
