//! Client commands held until this member has applied the Authenticate entry their simple
//! token was issued by.
//!
//! A simple token is `<prefix>.<raft index>`: a member learns it when it applies that
//! index. A client may get the token from one member and use it on another that has not
//! applied the entry yet; etcd then waits for the index to be applied
//! (`tokenSimple.isValidSimpleToken`) instead of refusing. So does tern, without blocking
//! the state core: the command is set aside here and submitted again, in arrival order,
//! once the index is applied (`ready.rs` after each apply, and every tick).
//!
//! Invariants:
//! - at most [`TOKEN_WAITS_MAX`] commands wait; past that a new one fails at once with
//!   "too many requests", so a client naming far-future indexes costs bounded memory;
//! - none waits longer than the request timeout: it then fails with "invalid auth token",
//!   etcd's answer when the wait ends without the index applied;
//! - a command is submitted again only once the applied index has reached its token's
//!   index, where the token is either held or unknown for good, so it never waits twice.

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use crate::error::EtcdError;
use crate::state::client::Command;

use super::{fail, Node};

/// Bound on commands waiting for their token's entry, over all clients of this member.
pub const TOKEN_WAITS_MAX: usize = 4096;

/// The waiting commands by the raft index their token names, each with its deadline.
#[derive(Default)]
pub(super) struct TokenWaits {
    by_index: BTreeMap<u64, VecDeque<(Command, Instant)>>,
    len: usize,
}

impl TokenWaits {
    /// Holds `command` until `raft_index` is applied or `deadline` passes; gives it back
    /// (refused) when [`TOKEN_WAITS_MAX`] wait already.
    fn push(&mut self, raft_index: u64, command: Command, deadline: Instant) -> Option<Command> {
        if self.len >= TOKEN_WAITS_MAX {
            return Some(command);
        }
        self.by_index
            .entry(raft_index)
            .or_default()
            .push_back((command, deadline));
        self.len += 1;
        None
    }

    /// The commands whose index is at or below `applied`, lowest index first, each
    /// index's in arrival order.
    fn take_applied(&mut self, applied: u64) -> Vec<Command> {
        let later = match applied.checked_add(1) {
            Some(next) => self.by_index.split_off(&next),
            None => BTreeMap::new(),
        };
        let ready = std::mem::replace(&mut self.by_index, later);
        let commands: Vec<Command> = ready.into_values().flatten().map(|(c, _)| c).collect();
        self.len -= commands.len();
        commands
    }

    /// The commands whose deadline is at or before `now`.
    fn take_expired(&mut self, now: Instant) -> Vec<Command> {
        let mut expired = Vec::new();
        for commands in self.by_index.values_mut() {
            // Deadlines grow in arrival order within an index.
            while commands
                .front()
                .is_some_and(|(_, deadline)| *deadline <= now)
            {
                expired.push(commands.pop_front().expect("front exists").0);
            }
        }
        self.by_index.retain(|_, commands| !commands.is_empty());
        self.len -= expired.len();
        expired
    }
}

impl Node {
    /// Sets `command` (credential included) aside until `raft_index` is applied.
    pub(super) fn wait_for_token(&mut self, raft_index: u64, command: Command) {
        let deadline = Instant::now() + self.request_timeout();
        if let Some(command) = self.token_waits.push(raft_index, command, deadline) {
            fail(command, EtcdError::TooManyRequests);
        }
    }

    /// Submits again the commands whose token's entry is applied now, and fails those
    /// whose wait is over.
    pub(super) fn release_token_waits(&mut self, now: Instant) {
        if self.token_waits.len == 0 {
            return;
        }
        let applied = self.state.borrow().raft_applied_index();
        for command in self.token_waits.take_applied(applied) {
            self.submit(command);
        }
        for command in self.token_waits.take_expired(now) {
            fail(command, EtcdError::InvalidAuthToken);
        }
    }
}

#[cfg(test)]
mod tests {
    //! Checks the waiting room alone: release by applied index in order, expiry by
    //! deadline, and the bound.
    use std::time::Duration;

    use super::*;
    use crate::proto::etcdserverpb as pb;

    /// A command told apart by `tag` (its revision field).
    fn command(tag: i64) -> Command {
        let (reply, _) = futures::channel::oneshot::channel();
        Command::HashKv(pb::HashKvRequest { revision: tag }, reply)
    }

    fn tags(commands: Vec<Command>) -> Vec<i64> {
        commands
            .into_iter()
            .map(|c| match c {
                Command::HashKv(req, _) => req.revision,
                _ => unreachable!("only HashKv is pushed"),
            })
            .collect()
    }

    #[test]
    fn released_by_index_in_order_and_expired_by_deadline() {
        let now = Instant::now();
        let mut waits = TokenWaits::default();
        for (tag, index, secs) in [(1, 7, 10), (2, 5, 10), (3, 7, 20), (4, 9, 1)] {
            assert!(waits
                .push(index, command(tag), now + Duration::from_secs(secs))
                .is_none());
        }
        assert!(waits.take_applied(4).is_empty());
        assert_eq!(tags(waits.take_applied(5)), vec![2]);
        assert_eq!(tags(waits.take_applied(8)), vec![1, 3]);
        assert!(tags(waits.take_expired(now)).is_empty());
        assert_eq!(
            tags(waits.take_expired(now + Duration::from_secs(1))),
            vec![4]
        );
        assert_eq!(waits.len, 0);
        assert!(waits.by_index.is_empty());
    }

    #[test]
    fn at_most_token_waits_max_wait() {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut waits = TokenWaits::default();
        for _ in 0..TOKEN_WAITS_MAX {
            assert!(waits.push(u64::MAX, command(0), deadline).is_none());
        }
        assert!(waits.push(1, command(0), deadline).is_some());
        assert_eq!(waits.take_applied(u64::MAX).len(), TOKEN_WAITS_MAX);
        assert!(waits.push(1, command(0), deadline).is_none());
    }
}
