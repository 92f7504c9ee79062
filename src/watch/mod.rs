//! etcd's Watch, thread-per-core: the state executor feeds each network core the events of
//! every revision; each network core matches them to the watchers of the streams it owns.
//!
//! Semantics are etcd's (server/mvcc/watchable_store.go, watcher_group.go, watcher.go and
//! etcdserver/api/v3rpc/watch.go, 3.4): a stream carries many watchers; ids are chosen by
//! the client or allocated per stream from 0; a start revision at or before the current
//! one replays history; a start revision below the compact revision cancels the watcher
//! with `compact_revision` set; all events of one revision arrive in one response; a
//! history replay arrives as one response per 1,000 revisions with the current revision
//! in its header; live responses carry their own revision.
//!
//! Design (the data path of one event, each step in its own file):
//!
//! 1. State core ([`feed`]): after each command that wrote, the state machine builds the
//!    write's events once, as an `Arc<RevisionEvents>`; after each commit it sends all
//!    the commit's revisions as one message to every network core that has watchers,
//!    with a non-blocking `try_send` on that core's bounded channel (`FEED_QUEUE_MAX`).
//!    O(cores) per commit, never O(watchers); writes never wait.
//! 2. A core whose channel is full is marked lagging: it gets one `Lagged` marker (sent by
//!    a task that waits for room) and nothing else until it resumes.
//! 3. Network core (`crate::service::watch::hub`): the feed task dispatches each
//!    revision to the matching watchers (a hash map of single keys plus a list of
//!    ranges) and appends one
//!    response per watcher to the watcher's stream, written by [`wire`] from the
//!    revision's events encoded once. On `Lagged` it resumes the feed and
//!    turns every watcher that might have missed a revision *unsynced*.
//! 4. Unsynced watchers (new ones with an old start revision, those of a stream whose
//!    queue is over `STREAM_QUEUE_BYTES_MAX` — a slow consumer — and those of a lagging
//!    core) are caught up by the hub's sync driver: one history read from the MVCC
//!    backend per round, for all of them, while live revisions that arrive meanwhile are
//!    kept per watcher; then the watcher is synced again.
//! 5. Service ([`crate::service::watch`]): one task per stream reads create/cancel/progress
//!    requests; another sends the stream's queue through `ResponseSink::send`.
//!
//! Invariants: see each file's header. The central one: per watcher, events go out in
//! revision order, each exactly once, with nothing skipped — live while it keeps up, from
//! history when it does not; only compaction can end that, and then the watcher is
//! canceled with the compact revision, as in etcd.

pub mod feed;
pub mod wire;

pub use feed::{FeedMessage, SyncReply, SyncRequest, WatchFeed, FEED_QUEUE_MAX};
