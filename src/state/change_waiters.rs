//! One-shot waiters for "the next change to a key range after revision R", kept on the
//! state executor. The lock and election services (etcd's concurrency recipes run on the
//! server side) wait on them for a predecessor's deletion or a leader's update, where
//! etcd's recipes open a watch.
//!
//! Invariants:
//! - A waiter fires at most once, with the changes of one write (those inside its range),
//!   or, at registration, with what the current state shows changed since
//!   `after_revision` (puts with a newer `mod_revision`, keys that existed then and do not
//!   now). So no change after `after_revision` can be missed between a service reading the
//!   store and registering its waiter.
//! - An empty list means "history needed to tell is gone (compacted): read again".
//! - At most `CHANGE_WAITERS_MAX` waiters exist; waiters whose caller went away (reply
//!   receiver dropped) are pruned before a new one is refused.

use bytes::Bytes;
use futures::channel::oneshot;

use crate::error::EtcdError;
use crate::mvcc::{Backend, Change, ChangeKind, KeyRange, KvStore, RangeOptions};
use crate::proto::mvccpb::KeyValue;

/// Bound on registered waiters (each is a blocked Lock, Campaign or Observe call).
pub const CHANGE_WAITERS_MAX: usize = 16 * 1024;

/// A request to be told of the next change in `[key, range_end)` (etcd's range
/// convention) after `after_revision`.
pub struct WaitChange {
    pub key: Bytes,
    pub range_end: Bytes,
    pub after_revision: i64,
    pub reply: oneshot::Sender<Result<Vec<Change>, EtcdError>>,
}

impl WaitChange {
    fn range(&self) -> KeyRange<'_> {
        KeyRange::from_request(&self.key, &self.range_end)
    }
}

#[derive(Default)]
pub struct ChangeWaiters {
    waiting: Vec<WaitChange>,
}

impl ChangeWaiters {
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Registers `wait`, or answers it at once if the store already shows a change.
    pub fn register<B: Backend>(&mut self, wait: WaitChange, store: &KvStore<B>) {
        if wait.reply.is_canceled() {
            return;
        }
        match changed_since(store, &wait) {
            Ok(Some(changes)) => {
                let _ = wait.reply.send(Ok(changes));
                return;
            }
            Ok(None) => {}
            Err(e) => {
                let _ = wait.reply.send(Err(e));
                return;
            }
        }
        if self.waiting.len() >= CHANGE_WAITERS_MAX {
            self.waiting.retain(|w| !w.reply.is_canceled());
        }
        if self.waiting.len() >= CHANGE_WAITERS_MAX {
            let _ = wait.reply.send(Err(EtcdError::TooManyRequests));
            return;
        }
        self.waiting.push(wait);
    }

    /// Fires every waiter that `changes` (one write's) touch, and drops abandoned ones.
    pub fn notify(&mut self, changes: &[Change]) {
        if self.waiting.is_empty() || changes.is_empty() {
            return;
        }
        let mut i = 0;
        while i < self.waiting.len() {
            let wait = &self.waiting[i];
            if wait.reply.is_canceled() {
                self.waiting.swap_remove(i);
                continue;
            }
            let range = wait.range();
            let hits: Vec<Change> = changes
                .iter()
                .filter(|c| c.kv.mod_revision > wait.after_revision && range.contains(&c.kv.key))
                .cloned()
                .collect();
            if hits.is_empty() {
                i += 1;
                continue;
            }
            let wait = self.waiting.swap_remove(i);
            let _ = wait.reply.send(Ok(hits));
        }
    }
}

/// What the store shows changed in the waiter's range since `after_revision`:
/// `Some(changes)` if anything (empty if the old state was compacted away), None if not.
fn changed_since<B: Backend>(
    store: &KvStore<B>,
    wait: &WaitChange,
) -> Result<Option<Vec<Change>>, EtcdError> {
    let current = store.current_revision();
    if wait.after_revision >= current {
        return Ok(None);
    }
    let range = wait.range();
    let now = store.range_keys(range, RangeOptions::default())?.kvs;
    let then = match store.range_keys(
        range,
        RangeOptions {
            revision: wait.after_revision.max(1),
            ..Default::default()
        },
    ) {
        Ok(result) => result.kvs,
        Err(EtcdError::Compacted) => return Ok(Some(Vec::new())),
        Err(e) => return Err(e),
    };
    let mut changes: Vec<Change> = now
        .iter()
        .filter(|kv| kv.mod_revision > wait.after_revision)
        .map(|kv| Change {
            kind: ChangeKind::Put,
            kv: kv.clone(),
        })
        .collect();
    for old in &then {
        if now.binary_search_by(|kv| kv.key.cmp(&old.key)).is_err() {
            // The exact delete revision is in the history only; the current one bounds it.
            changes.push(Change {
                kind: ChangeKind::Delete,
                kv: KeyValue {
                    key: old.key.clone(),
                    mod_revision: current,
                    ..Default::default()
                },
            });
        }
    }
    if changes.is_empty() {
        return Ok(None);
    }
    changes.sort_by_key(|c| c.kv.mod_revision);
    Ok(Some(changes))
}
