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

impl Node {
    /// Sets `command` (credential included) aside until `raft_index` is applied.
    pub(super) fn wait_for_token(&mut self, raft_index: u64, command: Command) {
        if self.token_waits.len >= TOKEN_WAITS_MAX {
            fail(command, EtcdError::TooManyRequests);
            return;
        }
        let deadline = Instant::now() + self.request_timeout();
        self.token_waits
            .by_index
            .entry(raft_index)
            .or_default()
            .push_back((command, deadline));
        self.token_waits.len += 1;
    }

    /// Submits again the commands whose token's entry is applied now, and fails those
    /// whose wait is over.
    pub(super) fn release_token_waits(&mut self, now: Instant) {
        if self.token_waits.len == 0 {
            return;
        }
        let applied = self.state.borrow().raft_applied_index();
        let later = self.token_waits.by_index.split_off(&(applied + 1));
        let ready = std::mem::replace(&mut self.token_waits.by_index, later);
        for (_, commands) in ready {
            for (command, _) in commands {
                self.token_waits.len -= 1;
                self.submit(command);
            }
        }
        let waits = &mut self.token_waits;
        for commands in waits.by_index.values_mut() {
            while commands
                .front()
                .is_some_and(|(_, deadline)| *deadline <= now)
            {
                let (command, _) = commands.pop_front().expect("front exists");
                waits.len -= 1;
                fail(command, EtcdError::InvalidAuthToken);
            }
        }
        waits.by_index.retain(|_, commands| !commands.is_empty());
    }
}
