//! The state executor's half of watch: after every write, one message per subscribed
//! network core; on request, history read back from the MVCC backend.
//!
//! Invariants (see `super` for the whole protocol):
//! - For a core in `Live` mode, every revision after its subscription point is sent, in
//!   revision order, exactly once, inside a [`FeedMessage::Revisions`]: one message per
//!   core per commit carries all the revisions that commit made durable, so the cost of
//!   crossing cores (a channel slot, a wake-up) is paid per batch, not per write. The
//!   state core never waits for a network core: sends are `try_send`.
//! - A full channel switches the core to `Lagging` and nothing more is sent to it until the
//!   core resumes with a [`SyncRequest`] (`resume: true`). The core learns about the lag
//!   from one [`FeedMessage::Lagged`] marker, sent by a task that waits for channel room,
//!   so the marker arrives even if no further write ever happens.
//! - Messages carry the subscription's generation; a core ignores messages of any other
//!   generation, so stale messages of an ended subscription cannot be mistaken for new ones.
//! - Cost per write is O(1) and per commit O(subscribed cores): the events are built once
//!   and shared by `Arc`.

use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use glommio::channels::shared_channel::ConnectedSender;
use prost::Message;

use crate::error::EtcdError;
use crate::mvcc::revision::{is_tombstone_key, Revision};
use crate::mvcc::{Backend, Bucket, ChangeKind, Direction, KeyRange, KvStore, RangeOptions};
use crate::proto::etcdserverpb as pb;
use crate::proto::mvccpb::{event::EventType, Event, KeyValue};

/// Bound on undelivered feed messages (each the revisions of one commit) per network core.
/// Deep enough to absorb a burst of commits while the core is busy; a core that falls
/// this far behind catches up from history.
pub const FEED_QUEUE_MAX: usize = 1024;

/// Most revisions one history read covers (etcd's `watchBatchMaxRevs`): bounds the time the
/// state core spends on one catch-up request and the size of its reply.
pub const HISTORY_REVISIONS_MAX: i64 = 1000;

/// All the events of one revision, as the write produced them. `prev_kv` is filled in
/// when some subscribed core asked for it (the hub strips it for watchers that did not).
#[derive(Debug)]
pub struct RevisionEvents {
    pub revision: i64,
    /// The header every response about this revision carries (revision = `revision`).
    pub header: pb::ResponseHeader,
    pub events: Vec<Event>,
}

/// What travels from the state core to a network core.
#[derive(Debug)]
pub enum FeedMessage {
    /// The revisions of one commit, in increasing order (consecutive unless a lag cut
    /// some out; the receiving core skips what it has and resyncs over a gap).
    Revisions {
        generation: u64,
        batches: Arc<[Arc<RevisionEvents>]>,
    },
    /// The channel was full at `from_revision`: nothing from there on was sent.
    Lagged { generation: u64, from_revision: i64 },
}

/// A network core's request to (re)subscribe, raise its `prev_kv` need, resume after a lag
/// and/or read history.
#[derive(Clone, Debug)]
pub struct SyncRequest {
    pub core: usize,
    pub generation: u64,
    /// Whether live events must carry `prev_kv` from now on (only ever raised while the
    /// subscription lives).
    pub prev_kv: bool,
    /// Leave `Lagging` mode: live sending resumes after the revision of the reply.
    pub resume: bool,
    pub history: Option<HistoryRequest>,
}

/// Events of revisions `from_revision..` whose key lies in `key`/`range_end` (etcd's
/// wire convention; `key = "\0"`, `range_end = "\0"` is every key).
#[derive(Clone, Debug)]
pub struct HistoryRequest {
    pub key: Bytes,
    pub range_end: Bytes,
    pub from_revision: i64,
    pub prev_kv: bool,
}

#[derive(Debug)]
pub struct SyncReply {
    /// Header at the store's current revision `R`: the subscription delivers every
    /// revision after `R` live (unless lagging).
    pub header: pb::ResponseHeader,
    pub history: History,
}

#[derive(Debug)]
pub enum History {
    NotRequested,
    /// Events of revisions `from_revision..=through_revision`, in revision order.
    Events {
        events: Vec<Event>,
        through_revision: i64,
    },
    /// `from_revision` is below the compact revision: those events are gone.
    Compacted {
        compact_revision: i64,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Live,
    Lagging,
}

struct Subscription {
    generation: u64,
    prev_kv: bool,
    mode: Mode,
}

/// Per-network-core feed channels and subscriptions. Owned by the state machine.
#[derive(Default)]
pub struct WatchFeed {
    senders: Vec<Option<Rc<ConnectedSender<FeedMessage>>>>,
    subscriptions: Vec<Option<Subscription>>,
    /// The store revision whose events were last published (or skipped, when nobody
    /// was subscribed).
    published_revision: i64,
    /// Events built but not yet sent: a write's events may only reach watchers once the
    /// write is durable, so they wait here for the state machine's next commit
    /// ([`WatchFeed::release`]), in revision order.
    unreleased: Vec<Arc<RevisionEvents>>,
}

impl WatchFeed {
    /// Connects network core `core`'s feed channel.
    pub fn attach(&mut self, core: usize, sender: ConnectedSender<FeedMessage>) {
        if self.senders.len() <= core {
            self.senders.resize_with(core + 1, || None);
            self.subscriptions.resize_with(core + 1, || None);
        }
        self.senders[core] = Some(Rc::new(sender));
    }

    /// Builds the last write's events for the live subscribers (they are sent by
    /// [`WatchFeed::release`] once the write is committed). Called after every write; a
    /// no-op when the store revision did not move.
    pub fn publish<B: Backend>(&mut self, store: &KvStore<B>, header: &pb::ResponseHeader) {
        let revision = store.current_revision();
        if revision <= self.published_revision {
            return;
        }
        let first_unpublished = self.published_revision + 1;
        self.published_revision = revision;
        let live = |s: &Option<Subscription>| matches!(s, Some(s) if s.mode == Mode::Live);
        if !self.subscriptions.iter().any(live) {
            return;
        }
        if first_unpublished != revision {
            // One command made several write transactions: only the last one's changes
            // are at hand. Let every core fetch the lot from history instead.
            for core in 0..self.subscriptions.len() {
                self.lag(core, first_unpublished);
            }
            return;
        }
        let with_prev_kv = self.subscriptions.iter().flatten().any(|s| s.prev_kv);
        let batch = Arc::new(RevisionEvents {
            revision,
            header: pb::ResponseHeader {
                revision,
                ..*header
            },
            events: store
                .last_changes()
                .iter()
                .map(|change| {
                    let kind = match change.kind {
                        ChangeKind::Put => EventType::Put,
                        ChangeKind::Delete => EventType::Delete,
                    };
                    let mut event = Event {
                        r#type: kind as i32,
                        kv: Some(change.kv.clone()),
                        prev_kv: None,
                    };
                    if with_prev_kv {
                        event.prev_kv = prev_kv(store, &event);
                    }
                    event
                })
                .collect(),
        });
        self.unreleased.push(batch);
    }

    /// Sends every built batch to every live subscriber, in revision order, as one
    /// message per core. Called right after the commit that made those revisions durable.
    pub fn release(&mut self) {
        if self.unreleased.is_empty() {
            return;
        }
        let batches: Arc<[Arc<RevisionEvents>]> = std::mem::take(&mut self.unreleased).into();
        debug_assert!(batches.windows(2).all(|w| w[0].revision < w[1].revision));
        self.send_live(batches);
    }

    fn send_live(&mut self, batches: Arc<[Arc<RevisionEvents>]>) {
        let revision = batches[0].revision;
        for core in 0..self.subscriptions.len() {
            let Some(sub) = &self.subscriptions[core] else {
                continue;
            };
            if sub.mode != Mode::Live {
                continue;
            }
            let Some(sender) = &self.senders[core] else {
                continue;
            };
            let message = FeedMessage::Revisions {
                generation: sub.generation,
                batches: batches.clone(),
            };
            if sender.try_send(message).is_err() {
                self.lag(core, revision);
            }
        }
    }

    /// Stops live sending to `core` from `from_revision` on and tells it so.
    fn lag(&mut self, core: usize, from_revision: i64) {
        let Some(sub) = self.subscriptions[core].as_mut() else {
            return;
        };
        if sub.mode == Mode::Lagging {
            return;
        }
        sub.mode = Mode::Lagging;
        let Some(sender) = self.senders[core].clone() else {
            return;
        };
        let marker = FeedMessage::Lagged {
            generation: sub.generation,
            from_revision,
        };
        // Waits for room without holding up the state core; fails only when the network
        // core has gone (shutdown), which needs no marker.
        glommio::spawn_local(async move {
            let _ = sender.send(marker).await;
        })
        .detach();
    }

    /// Serves a network core's [`SyncRequest`].
    pub fn sync<B: Backend>(
        &mut self,
        store: &KvStore<B>,
        req: SyncRequest,
        header: &pb::ResponseHeader,
    ) -> Result<SyncReply, EtcdError> {
        if req.core >= self.senders.len() || self.senders[req.core].is_none() {
            return Err(EtcdError::Stopped);
        }
        let current = store.current_revision();
        let slot = &mut self.subscriptions[req.core];
        match slot {
            Some(sub) if sub.generation == req.generation => {
                sub.prev_kv |= req.prev_kv;
                if req.resume {
                    sub.mode = Mode::Live;
                }
            }
            _ => {
                *slot = Some(Subscription {
                    generation: req.generation,
                    prev_kv: req.prev_kv,
                    mode: Mode::Live,
                })
            }
        }
        // Everything up to `current` has been published (or skipped, with nobody
        // subscribed), so live sending resumes exactly after it.
        self.published_revision = self.published_revision.max(current);
        let history = match req.history {
            None => History::NotRequested,
            Some(h) => read_history(store, &h, current)?,
        };
        Ok(SyncReply {
            header: pb::ResponseHeader {
                revision: current,
                ..*header
            },
            history,
        })
    }

    /// Ends `core`'s subscription if it is still the one of `generation`.
    pub fn unsubscribe(&mut self, core: usize, generation: u64) {
        if let Some(slot) = self.subscriptions.get_mut(core) {
            if matches!(slot, Some(s) if s.generation == generation) {
                *slot = None;
            }
        }
    }
}

/// etcd's rule (v3rpc/watch.go): the value a key had just before the event, read at
/// `mod_revision - 1`; none for a creation or when that revision is compacted.
fn prev_kv<B: Backend>(store: &KvStore<B>, event: &Event) -> Option<KeyValue> {
    let kv = event.kv.as_ref()?;
    if event.r#type == EventType::Put as i32 && kv.create_revision == kv.mod_revision {
        return None;
    }
    let options = RangeOptions {
        limit: 1,
        revision: kv.mod_revision - 1,
        count_only: false,
    };
    store
        .range_keys(KeyRange::Single(&kv.key), options)
        .ok()
        .and_then(|r| r.kvs.into_iter().next())
}

/// Reads the events of revisions `from..=min(current, from + HISTORY_REVISIONS_MAX - 1)`
/// in `h`'s key range from the key bucket, which is ordered by revision (etcd's
/// `watchableStore.syncWatchers` reads it the same way).
fn read_history<B: Backend>(
    store: &KvStore<B>,
    h: &HistoryRequest,
    current: i64,
) -> Result<History, EtcdError> {
    let from = h.from_revision.max(1);
    if from < store.compact_revision() {
        return Ok(History::Compacted {
            compact_revision: store.compact_revision(),
        });
    }
    if from > current {
        return Ok(History::Events {
            events: Vec::new(),
            through_revision: current,
        });
    }
    let through = current.min(from.saturating_add(HISTORY_REVISIONS_MAX - 1));
    let key: &[u8] = if h.key.is_empty() { &[0] } else { &h.key };
    let range = KeyRange::from_request(key, &h.range_end);
    let start = Revision::new(from, 0).to_key();
    let end = Revision::new(through + 1, 0).to_key();
    let mut events = Vec::new();
    let mut failure = None;
    store
        .backend()
        .scan(
            Bucket::Key,
            &start,
            Some(&end),
            Direction::Ascending,
            &mut |k, v| {
                let (Some(rev), Ok(kv)) = (Revision::from_key(k), KeyValue::decode(v)) else {
                    failure = Some(EtcdError::Corrupt);
                    return false;
                };
                if !range.contains(&kv.key) {
                    return true;
                }
                let event = if is_tombstone_key(k) {
                    Event {
                        r#type: EventType::Delete as i32,
                        kv: Some(KeyValue {
                            key: kv.key,
                            mod_revision: rev.main,
                            ..Default::default()
                        }),
                        prev_kv: None,
                    }
                } else {
                    Event {
                        r#type: EventType::Put as i32,
                        kv: Some(kv),
                        prev_kv: None,
                    }
                };
                events.push(event);
                true
            },
        )
        .map_err(|_| EtcdError::Corrupt)?;
    if let Some(e) = failure {
        return Err(e);
    }
    if h.prev_kv {
        for event in &mut events {
            event.prev_kv = prev_kv(store, event);
        }
    }
    Ok(History::Events {
        events,
        through_revision: through,
    })
}
