//! The network core's half of watch: every watcher of every watch stream on this core,
//! matched against the revisions the state core feeds in, with per-stream bounded queues.
//!
//! Invariants (see `crate::watch` for the whole protocol):
//! - `stream_revision`: every revision `<=` it has been dispatched to this core's watchers
//!   (live or, after a lag, by turning them unsynced); revisions are dispatched in order.
//! - A `Synced` watcher has been sent (or did not match) every revision in
//!   `[its start, stream_revision]`; an `Unsynced`/`Fetching` one has been sent everything
//!   before `next_revision` and nothing after: history fills the gap, so events are never
//!   lost, duplicated or reordered, and all events of one revision go out in one response.
//! - A stream's queue holds gRPC-framed responses, back to back, in chunks of about
//!   `STREAM_CHUNK_BYTES_MAX` (one chunk is one `ResponseSink::send_framed`, so the
//!   responses one feed message produces leave in as few writes as possible); events are
//!   queued only while it holds less than `STREAM_QUEUE_BYTES_MAX` (control responses
//!   always): a slow reader turns its own watchers unsynced and never holds up writes or
//!   other streams.
//! - Live responses are written by [`crate::watch::wire`] from parts encoded once per revision.
//! - The core is subscribed to the state core's feed exactly while it has watchers (or
//!   one is being created).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;

use crate::error::EtcdError;
use crate::grpc::codec::MESSAGE_PREFIX_LEN;
use crate::http2::ShutdownSignal;
use crate::mvcc::KeyRange;
use crate::proto::etcdserverpb as pb;
use crate::proto::mvccpb::{event::EventType, Event};
use crate::runtime::Wakeup;
use crate::service::ServiceContext;
use crate::state::StateClient;
use crate::watch::feed::{
    FeedMessage, History, HistoryRequest, RevisionEvents, SyncReply, SyncRequest,
};
use crate::watch::wire::{RevisionWire, WireScratch};

/// Bound on the encoded responses queued for one watch stream before its watchers stop
/// receiving live events and fall back to history (etcd's victim/unsynced handling).
pub const STREAM_QUEUE_BYTES_MAX: usize = 1 << 20;
/// Responses queued for a stream are handed to its sender in chunks of about this size
/// (one chunk may be larger when it holds a single big response): HTTP/2's default
/// SETTINGS_MAX_FRAME_SIZE (RFC 9113 §6.5.2), so a chunk usually leaves as one DATA frame.
pub const STREAM_CHUNK_BYTES_MAX: usize = 16 * 1024;
/// A stream whose queue drained below this gets its unsynced watchers caught up.
pub const STREAM_QUEUE_RESUME_BYTES: usize = STREAM_QUEUE_BYTES_MAX / 4;
/// Bound on live revisions a watcher buffers while its history read is in flight; past
/// it the buffer is dropped and the watcher reads history once more.
pub const PENDING_REVISIONS_MAX: usize = 1024;
/// etcd's watch id of a response that belongs to no watcher (progress replies).
pub const NO_WATCH_ID: i64 = -1;

const _: () = assert!(STREAM_QUEUE_RESUME_BYTES < STREAM_QUEUE_BYTES_MAX);
const _: () = assert!(STREAM_CHUNK_BYTES_MAX < STREAM_QUEUE_RESUME_BYTES);

pub type StreamId = u64;
type WatcherKey = (StreamId, i64);

/// etcd's watcher errors (server/mvcc/watcher.go), sent as `cancel_reason`.
pub const ERR_EMPTY_WATCHER_RANGE: &str = "mvcc: watcher range is empty";
pub const ERR_DUPLICATE_WATCH_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";

#[derive(Debug)]
enum SyncState {
    Synced,
    /// Needs history from `next_revision`; waits for the sync driver.
    Unsynced,
    /// History read in flight; live revisions seen meanwhile are kept in `pending`
    /// (`complete` false once one was dropped).
    Fetching {
        pending: Vec<Arc<RevisionEvents>>,
        complete: bool,
    },
}

#[derive(Debug)]
struct Watcher {
    key: Bytes,
    range_end: Bytes,
    no_put: bool,
    no_delete: bool,
    prev_kv: bool,
    fragment: bool,
    progress_notify: bool,
    /// etcd's `progress[id]`: no event sent since the last progress tick.
    progress_due: bool,
    next_revision: i64,
    sync: SyncState,
}

impl Watcher {
    fn contains(&self, key: &[u8]) -> bool {
        KeyRange::from_request(&self.key, &self.range_end).contains(key)
    }

    /// Whether this watcher wants `event` (its NOPUT / NODELETE filters).
    fn wants(&self, event: &Event) -> bool {
        let is_put = event.r#type == EventType::Put as i32;
        !(is_put && self.no_put || !is_put && self.no_delete)
    }

    /// The events this watcher gets out of `events`, after its filters, with `prev_kv`
    /// only if it asked.
    fn select<'a>(&self, events: impl Iterator<Item = &'a Event>) -> Vec<Event> {
        events
            .filter(|e| self.wants(e))
            .map(|e| {
                let mut e = e.clone();
                if !self.prev_kv {
                    e.prev_kv = None;
                }
                e
            })
            .collect()
    }
}

struct StreamState {
    /// Full chunks of framed responses, oldest first; `open` continues after them.
    sealed: VecDeque<Bytes>,
    open: BytesMut,
    /// Bytes in `sealed` and `open`.
    queued_bytes: usize,
    /// The stream's watchers, in id order.
    watch_ids: BTreeSet<i64>,
    ready: Rc<Wakeup>,
    next_watch_id: i64,
    /// A progress request waits for every watcher of the stream to be synced.
    progress_pending: bool,
    /// Set when a response could not be sent (too large for gRPC): the stream ends with
    /// it, as etcd's does when its Send fails.
    failed: Option<crate::grpc::Status>,
}

struct HubState {
    generation: u64,
    subscribed: bool,
    subscribed_prev_kv: bool,
    /// Watch creations between subscribing and registering: keep the subscription.
    creating: usize,
    stream_revision: i64,
    /// Latest header from the state core (cluster, member, raft term).
    header: pb::ResponseHeader,
    /// A hash map, not a B-tree: `deliver` looks a watcher up for every event it gets,
    /// and a B-tree of 10,000 watchers costs a cache miss per level. Per-stream order
    /// lives in `StreamState::watch_ids`.
    watchers: HashMap<WatcherKey, Watcher>,
    single_keys: HashMap<Bytes, Vec<WatcherKey>>,
    ranges: Vec<WatcherKey>,
    unsynced: BTreeSet<WatcherKey>,
    /// `dispatch`'s (watcher, event index) matches and encoding buffers, kept to reuse
    /// their allocations.
    matched: Vec<(WatcherKey, usize)>,
    wire_scratch: WireScratch,
    streams: HashMap<StreamId, StreamState>,
    next_stream_id: StreamId,
}

/// What a watch stream asked to create (already decoded from `WatchCreateRequest`).
pub struct CreateRequest {
    pub key: Bytes,
    pub range_end: Bytes,
    pub start_revision: i64,
    pub watch_id: i64,
    pub prev_kv: bool,
    pub no_put: bool,
    pub no_delete: bool,
    pub fragment: bool,
    pub progress_notify: bool,
}

/// One network core's watchers. Shared (`Rc`) by the core's watch streams, its feed task
/// and its sync driver.
pub struct WatchHub {
    core: usize,
    max_request_bytes: usize,
    pub progress_notify_interval: Duration,
    pub shutdown: ShutdownSignal,
    state: RefCell<HubState>,
    driver: Wakeup,
    subscribing: futures::lock::Mutex<()>,
    fetches: Cell<u64>,
}

impl WatchHub {
    pub fn new(
        core: usize,
        header: pb::ResponseHeader,
        max_request_bytes: usize,
        progress_notify_interval: Duration,
        shutdown: ShutdownSignal,
    ) -> WatchHub {
        WatchHub {
            core,
            max_request_bytes,
            progress_notify_interval,
            shutdown,
            state: RefCell::new(HubState {
                generation: 0,
                subscribed: false,
                subscribed_prev_kv: false,
                creating: 0,
                stream_revision: 0,
                header,
                watchers: HashMap::new(),
                single_keys: HashMap::new(),
                ranges: Vec::new(),
                unsynced: BTreeSet::new(),
                matched: Vec::new(),
                wire_scratch: WireScratch::default(),
                streams: HashMap::new(),
                next_stream_id: 1,
            }),
            driver: Wakeup::default(),
            subscribing: futures::lock::Mutex::new(()),
            fetches: Cell::new(0),
        }
    }

    /// How many history reads this core has made (for tests and diagnostics).
    pub fn history_fetches(&self) -> u64 {
        self.fetches.get()
    }

    pub fn watcher_count(&self) -> usize {
        self.state.borrow().watchers.len()
    }

    // ----- streams -----

    /// Registers a new watch stream; returns its id and the wake-up its sender waits on.
    pub fn open_stream(&self) -> (StreamId, Rc<Wakeup>) {
        let mut st = self.state.borrow_mut();
        let id = st.next_stream_id;
        st.next_stream_id += 1;
        let ready = Rc::new(Wakeup::default());
        st.streams.insert(
            id,
            StreamState {
                sealed: VecDeque::new(),
                open: BytesMut::new(),
                queued_bytes: 0,
                watch_ids: BTreeSet::new(),
                ready: ready.clone(),
                next_watch_id: 0,
                progress_pending: false,
                failed: None,
            },
        );
        st.publish_metrics();
        (id, ready)
    }

    /// Forgets a stream and all its watchers (the client went away).
    pub fn close_stream(&self, state: &StateClient, stream: StreamId) {
        let mut st = self.state.borrow_mut();
        if let Some(s) = st.streams.remove(&stream) {
            for watch_id in s.watch_ids {
                st.remove_watcher((stream, watch_id));
            }
        }
        st.publish_metrics();
        drop(st);
        self.maybe_unsubscribe(state);
    }

    /// Why `stream` must end, once a response could not be framed.
    pub fn failure(&self, stream: StreamId) -> Option<crate::grpc::Status> {
        let st = self.state.borrow();
        st.streams.get(&stream)?.failed.clone()
    }

    /// The next chunk of `stream`'s queued responses (whole gRPC-framed messages, for
    /// `ResponseSink::send_framed`), if any.
    pub fn pop(&self, stream: StreamId) -> Option<Bytes> {
        let mut st = self.state.borrow_mut();
        let s = st.streams.get_mut(&stream)?;
        let before = s.queued_bytes;
        let chunk = s.pop()?;
        if before >= STREAM_QUEUE_RESUME_BYTES && s.queued_bytes < STREAM_QUEUE_RESUME_BYTES {
            self.driver.wake();
        }
        Some(chunk)
    }

    // ----- requests of a watch stream -----

    /// A create refused before it reached the hub (permission): created and canceled
    /// with `reason`, under the invalid watch id, as etcd answers it.
    pub fn reject_create(&self, stream: StreamId, reason: String) {
        let mut st = self.state.borrow_mut();
        let header = st.header_at(st.stream_revision);
        st.push_control(
            stream,
            pb::WatchResponse {
                header: Some(header),
                watch_id: NO_WATCH_ID,
                created: true,
                canceled: true,
                cancel_reason: reason,
                ..Default::default()
            },
        );
    }

    /// etcd's create: answers `created` (or created+canceled with the reason), then the
    /// watcher's events follow on the same stream.
    pub async fn create(&self, state: &StateClient, stream: StreamId, req: CreateRequest) {
        // etcd (v3rpc/watch.go): an empty key is "\0", the smallest key.
        let key = if req.key.is_empty() {
            Bytes::from_static(&[0])
        } else {
            req.key
        };
        let range_end = req.range_end;
        let rejection = if !range_end.is_empty() && range_end[..] != [0] && key >= range_end {
            Some(ERR_EMPTY_WATCHER_RANGE)
        } else if req.watch_id != 0
            && self
                .state
                .borrow()
                .watchers
                .contains_key(&(stream, req.watch_id))
        {
            Some(ERR_DUPLICATE_WATCH_ID)
        } else {
            None
        };
        if let Some(reason) = rejection {
            let mut st = self.state.borrow_mut();
            let header = st.header_at(st.stream_revision);
            st.push_control(
                stream,
                pb::WatchResponse {
                    header: Some(header),
                    watch_id: NO_WATCH_ID,
                    created: true,
                    canceled: true,
                    cancel_reason: reason.to_string(),
                    ..Default::default()
                },
            );
            return;
        }

        self.state.borrow_mut().creating += 1;
        let subscribed = self.ensure_subscribed(state, req.prev_kv).await;
        let mut st = self.state.borrow_mut();
        st.creating -= 1;
        let now = match subscribed {
            Ok(revision) => revision.max(st.stream_revision),
            Err(_) => {
                // The state core has stopped: the server is shutting down.
                drop(st);
                self.maybe_unsubscribe(state);
                return;
            }
        };
        if !st.streams.contains_key(&stream) {
            drop(st);
            self.maybe_unsubscribe(state);
            return;
        }
        // The id is checked again: another create of this stream cannot have run in
        // between (a stream's requests are handled one at a time), but be exact anyway.
        let watch_id = if req.watch_id != 0 {
            req.watch_id
        } else {
            let s = st.streams.get_mut(&stream).expect("checked above");
            let mut id = s.next_watch_id;
            while st.watchers.contains_key(&(stream, id)) {
                id += 1;
            }
            st.streams
                .get_mut(&stream)
                .expect("checked above")
                .next_watch_id = id + 1;
            id
        };
        if st.watchers.contains_key(&(stream, watch_id)) {
            let header = st.header_at(now);
            st.push_control(
                stream,
                pb::WatchResponse {
                    header: Some(header),
                    watch_id: NO_WATCH_ID,
                    created: true,
                    canceled: true,
                    cancel_reason: ERR_DUPLICATE_WATCH_ID.to_string(),
                    ..Default::default()
                },
            );
            return;
        }
        let header = st.header_at(now);
        st.push_control(
            stream,
            pb::WatchResponse {
                header: Some(header),
                watch_id,
                created: true,
                ..Default::default()
            },
        );
        // etcd: start 0 means "after the revision the created response names"; a start
        // in the future waits for it; a start at or before now replays history.
        let (next_revision, sync) = if req.start_revision == 0 {
            (now + 1, SyncState::Synced)
        } else if req.start_revision > now {
            (req.start_revision, SyncState::Synced)
        } else {
            (req.start_revision, SyncState::Unsynced)
        };
        let unsynced = matches!(sync, SyncState::Unsynced);
        let watcher = Watcher {
            key,
            range_end,
            no_put: req.no_put,
            no_delete: req.no_delete,
            prev_kv: req.prev_kv,
            fragment: req.fragment,
            progress_notify: req.progress_notify,
            progress_due: true,
            next_revision,
            sync,
        };
        st.insert_watcher((stream, watch_id), watcher);
        if unsynced {
            drop(st);
            self.driver.wake();
        }
    }

    /// etcd's cancel: answers `canceled` for a watcher of this stream; nothing otherwise.
    pub fn cancel(&self, state: &StateClient, stream: StreamId, watch_id: i64) {
        let mut st = self.state.borrow_mut();
        if !st.remove_watcher((stream, watch_id)) {
            return;
        }
        let header = st.header_at(st.stream_revision);
        st.push_control(
            stream,
            pb::WatchResponse {
                header: Some(header),
                watch_id,
                canceled: true,
                ..Default::default()
            },
        );
        drop(st);
        self.maybe_unsubscribe(state);
    }

    /// A progress request: a response with no events and watch id -1 whose header revision
    /// promises that every event up to it has been sent. Waits until the stream's watchers
    /// are all synced (etcd 3.5's rule; 3.4 answered at once even when that was untrue).
    pub fn request_progress(&self, stream: StreamId) {
        let mut st = self.state.borrow_mut();
        if let Some(s) = st.streams.get_mut(&stream) {
            s.progress_pending = true;
        }
        st.answer_progress(stream);
    }

    /// The periodic progress notification (--experimental-watch-progress-notify-interval):
    /// each synced `progress_notify` watcher that sent nothing since the last tick gets an
    /// empty response at the current revision.
    pub fn progress_tick(&self, stream: StreamId) {
        let mut st = self.state.borrow_mut();
        let revision = st.stream_revision;
        let header = st.header_at(revision);
        let mut due = Vec::new();
        let HubState {
            watchers, streams, ..
        } = &mut *st;
        let Some(s) = streams.get(&stream) else {
            return;
        };
        for watch_id in &s.watch_ids {
            let Some(w) = watchers.get_mut(&(stream, *watch_id)) else {
                continue;
            };
            if !w.progress_notify {
                continue;
            }
            if w.progress_due && matches!(w.sync, SyncState::Synced) {
                due.push(*watch_id);
            }
            w.progress_due = true;
        }
        for watch_id in due {
            st.push_control(
                stream,
                pb::WatchResponse {
                    header: Some(header),
                    watch_id,
                    ..Default::default()
                },
            );
        }
    }

    // ----- subscription -----

    /// Makes sure the state core feeds this core (with `prev_kv` if wanted); returns the
    /// state core's revision if it was asked, else this core's stream revision.
    async fn ensure_subscribed(
        &self,
        state: &StateClient,
        prev_kv: bool,
    ) -> Result<i64, EtcdError> {
        let _guard = self.subscribing.lock().await;
        let (generation, new_subscription, want_prev_kv) = {
            let st = self.state.borrow();
            if !st.subscribed {
                (st.generation + 1, true, prev_kv)
            } else if prev_kv && !st.subscribed_prev_kv {
                (st.generation, false, true)
            } else {
                return Ok(st.stream_revision);
            }
        };
        let reply = state
            .watch_sync(SyncRequest {
                core: self.core,
                generation,
                prev_kv: want_prev_kv,
                resume: false,
                history: None,
            })
            .await?;
        let mut st = self.state.borrow_mut();
        let revision = reply.header.revision;
        st.header = reply.header;
        st.generation = generation;
        st.subscribed = true;
        st.subscribed_prev_kv |= want_prev_kv;
        if new_subscription {
            // Nothing of the old subscription (if any) matters any more; the new one
            // feeds every revision after `revision`.
            st.jump_stream_to(revision);
        }
        Ok(revision)
    }

    fn maybe_unsubscribe(&self, state: &StateClient) {
        let mut st = self.state.borrow_mut();
        if !st.subscribed || !st.watchers.is_empty() || st.creating > 0 {
            return;
        }
        st.subscribed = false;
        st.subscribed_prev_kv = false;
        let generation = st.generation;
        // Commands of one core reach the state core in order, and the state core ignores
        // an unsubscribe of a generation it no longer has, so this may run late.
        state.watch_unsubscribe(self.core, generation);
    }

    // ----- the feed -----

    /// Runs this core's side of the feed until the channel closes or the server stops.
    pub async fn run_feed(
        self: Rc<Self>,
        context: Rc<ServiceContext>,
        receiver: glommio::channels::shared_channel::ConnectedReceiver<FeedMessage>,
    ) {
        // Ends at shutdown too: these tasks hold the service context, whose command
        // channel must close for the state executor to stop.
        let next = || {
            futures_lite::future::or(receiver.recv(), async {
                self.shutdown.wait().await;
                None
            })
        };
        while let Some(message) = next().await {
            // Dispatching turns slow watchers unsynced: the gauges follow each message.
            self.state.borrow().publish_metrics();
            match message {
                FeedMessage::Revisions {
                    generation,
                    batches,
                } => {
                    let mut st = self.state.borrow_mut();
                    if !st.subscribed || generation != st.generation {
                        continue;
                    }
                    let mut fell_behind = false;
                    for batch in batches.iter() {
                        if batch.revision <= st.stream_revision {
                            continue;
                        }
                        if batch.revision != st.stream_revision + 1 {
                            // A lag cut revisions out of this commit's message: history
                            // repairs it, every watcher catches up from where it was.
                            crate::warn!("watch feed skipped revisions; resyncing watchers",
                                "expected" => st.stream_revision + 1, "got" => batch.revision);
                            st.jump_stream_to(batch.revision - 1);
                            fell_behind = true;
                        }
                        fell_behind |= st.dispatch(batch, self.max_request_bytes);
                    }
                    if fell_behind {
                        self.driver.wake();
                    }
                }
                FeedMessage::Lagged { generation, .. } => {
                    if generation != self.state.borrow().generation {
                        continue;
                    }
                    let prev_kv = self.state.borrow().subscribed_prev_kv;
                    let reply = context
                        .state
                        .watch_sync(SyncRequest {
                            core: self.core,
                            generation,
                            prev_kv,
                            resume: true,
                            history: None,
                        })
                        .await;
                    let Ok(reply) = reply else { return };
                    let mut st = self.state.borrow_mut();
                    if st.generation != generation || !st.subscribed {
                        continue;
                    }
                    st.header = reply.header;
                    st.jump_stream_to(reply.header.revision);
                    drop(st);
                    self.driver.wake();
                }
            }
        }
    }

    /// Runs the sync driver: catches unsynced watchers up from history, one batched read
    /// at a time, until shutdown.
    pub async fn run_sync_driver(self: Rc<Self>, context: Rc<ServiceContext>) {
        loop {
            let woke = futures_lite::future::or(
                async {
                    self.driver.wait().await;
                    true
                },
                async {
                    self.shutdown.wait().await;
                    false
                },
            )
            .await;
            if !woke {
                return;
            }
            self.state.borrow().publish_metrics();
            while let Some(plan) = self.plan_fetch() {
                self.fetches.set(self.fetches.get() + 1);
                let reply = context
                    .state
                    .watch_sync(SyncRequest {
                        core: self.core,
                        generation: plan.generation,
                        prev_kv: false,
                        resume: false,
                        history: Some(plan.history),
                    })
                    .await;
                let mut st = self.state.borrow_mut();
                match reply {
                    Ok(reply) => st.apply_fetch(&plan.watchers, reply, self.max_request_bytes),
                    Err(_) => {
                        st.abort_fetch(&plan.watchers);
                        return;
                    }
                }
            }
        }
    }

    /// Picks the unsynced watchers whose streams have room, marks them fetching and says
    /// what to read: one read from the smallest `next_revision`, filtered by key when only
    /// one watcher needs it.
    fn plan_fetch(&self) -> Option<FetchPlan> {
        let mut st = self.state.borrow_mut();
        if !st.subscribed {
            return None;
        }
        let HubState {
            unsynced,
            watchers,
            streams,
            ..
        } = &mut *st;
        let mut chosen = Vec::new();
        unsynced.retain(|key| {
            let Some(w) = watchers.get(key) else {
                return false;
            };
            if !matches!(w.sync, SyncState::Unsynced) {
                return false;
            }
            let room = streams
                .get(&key.0)
                .is_some_and(|s| s.queued_bytes < STREAM_QUEUE_RESUME_BYTES);
            if room {
                chosen.push(*key);
            }
            !room
        });
        if chosen.is_empty() {
            return None;
        }
        let mut from_revision = i64::MAX;
        let mut prev_kv = false;
        for key in &chosen {
            let w = watchers.get_mut(key).expect("chosen from live watchers");
            from_revision = from_revision.min(w.next_revision);
            prev_kv |= w.prev_kv;
            w.sync = SyncState::Fetching {
                pending: Vec::new(),
                complete: true,
            };
        }
        let (key, range_end) = if chosen.len() == 1 {
            let w = &watchers[&chosen[0]];
            (w.key.clone(), w.range_end.clone())
        } else {
            (Bytes::from_static(&[0]), Bytes::from_static(&[0]))
        };
        Some(FetchPlan {
            generation: st.generation,
            watchers: chosen,
            history: HistoryRequest {
                key,
                range_end,
                from_revision,
                prev_kv,
            },
        })
    }
}

struct FetchPlan {
    generation: u64,
    watchers: Vec<WatcherKey>,
    history: HistoryRequest,
}

impl HubState {
    fn header_at(&self, revision: i64) -> pb::ResponseHeader {
        pb::ResponseHeader {
            revision,
            ..self.header
        }
    }

    fn insert_watcher(&mut self, key: WatcherKey, watcher: Watcher) {
        if watcher.range_end.is_empty() {
            self.single_keys
                .entry(watcher.key.clone())
                .or_default()
                .push(key);
        } else {
            self.ranges.push(key);
        }
        if matches!(watcher.sync, SyncState::Unsynced) {
            self.unsynced.insert(key);
        }
        if let Some(s) = self.streams.get_mut(&key.0) {
            s.watch_ids.insert(key.1);
        }
        self.watchers.insert(key, watcher);
        self.publish_metrics();
    }

    /// This core's watch gauges for `/metrics` (etcd's `watch_stream_total`,
    /// `watcher_total`, `slow_watcher_total`: unsynced watchers).
    fn publish_metrics(&self) {
        crate::metrics::watch_set(
            self.streams.len() as i64,
            self.watchers.len() as i64,
            self.unsynced.len() as i64,
        );
    }

    fn remove_watcher(&mut self, key: WatcherKey) -> bool {
        let Some(w) = self.watchers.remove(&key) else {
            return false;
        };
        if w.range_end.is_empty() {
            if let Some(list) = self.single_keys.get_mut(&w.key) {
                list.retain(|k| *k != key);
                if list.is_empty() {
                    self.single_keys.remove(&w.key);
                }
            }
        } else {
            self.ranges.retain(|k| *k != key);
        }
        self.unsynced.remove(&key);
        if let Some(s) = self.streams.get_mut(&key.0) {
            s.watch_ids.remove(&key.1);
        }
        self.publish_metrics();
        true
    }

    /// The stream now continues after `revision` (a new subscription or a resume after a
    /// lag): watchers that could have missed revisions up to it catch up from history.
    fn jump_stream_to(&mut self, revision: i64) {
        let dispatched = self.stream_revision;
        for (key, w) in self.watchers.iter_mut() {
            match &mut w.sync {
                SyncState::Synced => {
                    w.next_revision = w.next_revision.max(dispatched + 1);
                    if w.next_revision <= revision {
                        w.sync = SyncState::Unsynced;
                        self.unsynced.insert(*key);
                    }
                }
                SyncState::Fetching { complete, .. } => *complete = false,
                SyncState::Unsynced => {}
            }
        }
        self.stream_revision = revision;
        self.publish_metrics();
    }

    /// Hands one revision to the watchers it matches; returns whether some watcher fell
    /// behind (the sync driver has work).
    fn dispatch(&mut self, batch: &Arc<RevisionEvents>, max_request_bytes: usize) -> bool {
        debug_assert_eq!(batch.revision, self.stream_revision + 1);
        self.stream_revision = batch.revision;
        self.header = batch.header;
        let mut matched = std::mem::take(&mut self.matched);
        matched.clear();
        for (i, event) in batch.events.iter().enumerate() {
            let Some(kv) = &event.kv else { continue };
            if let Some(keys) = self.single_keys.get(&kv.key) {
                matched.extend(keys.iter().map(|key| (*key, i)));
            }
            for key in &self.ranges {
                if self.watchers[key].contains(&kv.key) {
                    matched.push((*key, i));
                }
            }
        }
        if batch.events.len() > 1 {
            // Group by watcher, each watcher's events in revision order. (With one event
            // every watcher appears once already.)
            matched.sort_unstable();
        }
        let mut fell_behind = false;
        if !matched.is_empty() {
            let mut scratch = std::mem::take(&mut self.wire_scratch);
            let mut wire = RevisionWire::new(batch, &mut scratch);
            let mut indexes = Vec::new();
            for group in matched.chunk_by(|a, b| a.0 == b.0) {
                indexes.clear();
                indexes.extend(group.iter().map(|m| m.1));
                fell_behind |=
                    self.deliver(group[0].0, batch, &mut wire, &indexes, max_request_bytes);
            }
            self.wire_scratch = scratch;
        }
        self.matched = matched;
        fell_behind
    }

    /// Delivers `batch`'s events at `indexes` (ascending) to one watcher, writing with
    /// `wire` (`batch`'s); true if it fell behind.
    fn deliver(
        &mut self,
        key: WatcherKey,
        batch: &Arc<RevisionEvents>,
        wire: &mut RevisionWire,
        indexes: &[usize],
        max_request_bytes: usize,
    ) -> bool {
        let HubState {
            watchers,
            streams,
            unsynced,
            ..
        } = self;
        let Some(w) = watchers.get_mut(&key) else {
            return false;
        };
        if batch.revision < w.next_revision {
            return false;
        }
        match &mut w.sync {
            SyncState::Synced => {}
            SyncState::Unsynced => return false,
            SyncState::Fetching { pending, complete } => {
                if pending.len() < PENDING_REVISIONS_MAX {
                    pending.push(batch.clone());
                } else {
                    pending.clear();
                    *complete = false;
                }
                return false;
            }
        }
        let filtered: Vec<usize>;
        let indexes = if w.no_put || w.no_delete {
            filtered = indexes
                .iter()
                .copied()
                .filter(|&i| w.wants(&batch.events[i]))
                .collect();
            &filtered[..]
        } else {
            indexes
        };
        if indexes.is_empty() {
            w.next_revision = batch.revision + 1;
            return false;
        }
        let Some(stream) = streams.get_mut(&key.0) else {
            return false;
        };
        if stream.queued_bytes >= STREAM_QUEUE_BYTES_MAX {
            w.sync = SyncState::Unsynced;
            w.next_revision = batch.revision;
            unsynced.insert(key);
            return true;
        }
        w.next_revision = batch.revision + 1;
        w.progress_due = false;
        if w.fragment
            && indexes.len() > 1
            && wire.response_len(key.1, indexes, w.prev_kv) >= max_request_bytes
        {
            // Rare (big revisions to watchers that asked for fragments): prost's way.
            let response = pb::WatchResponse {
                header: Some(batch.header),
                watch_id: key.1,
                events: w.select(indexes.iter().map(|&i| &batch.events[i])),
                ..Default::default()
            };
            push_events(stream, response, true, max_request_bytes);
        } else {
            stream.append(|out| wire.append_response(out, key.1, indexes, w.prev_kv));
        }
        false
    }

    /// Applies the reply of a history read to the watchers that asked for it.
    fn apply_fetch(&mut self, keys: &[WatcherKey], reply: SyncReply, max_request_bytes: usize) {
        let current = reply.header.revision;
        match reply.history {
            History::Compacted { compact_revision } => {
                for key in keys {
                    let Some(w) = self.watchers.get_mut(key) else {
                        continue;
                    };
                    if w.next_revision < compact_revision {
                        // etcd: the watcher is canceled with the compact revision set
                        // and a header without revision.
                        let header = self.header_at(0);
                        self.remove_watcher(*key);
                        self.push_control(
                            key.0,
                            pb::WatchResponse {
                                header: Some(header),
                                watch_id: key.1,
                                canceled: true,
                                compact_revision,
                                ..Default::default()
                            },
                        );
                    } else {
                        w.sync = SyncState::Unsynced;
                        self.unsynced.insert(*key);
                    }
                }
            }
            History::Events {
                events,
                through_revision,
            } => {
                let header = self.header_at(current);
                for key in keys {
                    let HubState {
                        watchers, streams, ..
                    } = self;
                    let Some(w) = watchers.get_mut(key) else {
                        continue;
                    };
                    let SyncState::Fetching { pending, complete } =
                        std::mem::replace(&mut w.sync, SyncState::Unsynced)
                    else {
                        continue;
                    };
                    let from = w.next_revision;
                    let selected = w.select(events.iter().filter(|e| {
                        e.kv.as_ref()
                            .is_some_and(|kv| kv.mod_revision >= from && w.contains(&kv.key))
                    }));
                    if !selected.is_empty() {
                        if let Some(stream) = streams.get_mut(&key.0) {
                            w.progress_due = false;
                            let response = pb::WatchResponse {
                                header: Some(header),
                                watch_id: key.1,
                                events: selected,
                                ..Default::default()
                            };
                            push_events(stream, response, w.fragment, max_request_bytes);
                        }
                    }
                    w.next_revision = w.next_revision.max(through_revision + 1);
                    if through_revision < current || !complete {
                        self.unsynced.insert(*key);
                        continue;
                    }
                    // Caught up to `current`; the live revisions after it are in
                    // `pending`, in order, complete.
                    w.sync = SyncState::Synced;
                    for batch in pending {
                        let indexes: Vec<usize> = {
                            let w = &self.watchers[key];
                            batch
                                .events
                                .iter()
                                .enumerate()
                                .filter(|(_, e)| {
                                    e.kv.as_ref().is_some_and(|kv| w.contains(&kv.key))
                                })
                                .map(|(i, _)| i)
                                .collect()
                        };
                        if !indexes.is_empty() {
                            let mut scratch = WireScratch::default();
                            let mut wire = RevisionWire::new(&batch, &mut scratch);
                            self.deliver(*key, &batch, &mut wire, &indexes, max_request_bytes);
                        }
                    }
                    // Revisions between the last pending one and `stream_revision` did
                    // not match; nothing before `stream_revision` is owed any more.
                    let w = self.watchers.get_mut(key).expect("still present");
                    if matches!(w.sync, SyncState::Synced) {
                        w.next_revision = w.next_revision.max(self.stream_revision + 1);
                    }
                }
            }
            History::NotRequested => self.abort_fetch(keys),
        }
        let streams: BTreeSet<StreamId> = keys.iter().map(|k| k.0).collect();
        for stream in streams {
            self.answer_progress(stream);
        }
    }

    fn abort_fetch(&mut self, keys: &[WatcherKey]) {
        for key in keys {
            if let Some(w) = self.watchers.get_mut(key) {
                if matches!(w.sync, SyncState::Fetching { .. }) {
                    w.sync = SyncState::Unsynced;
                    self.unsynced.insert(*key);
                }
            }
        }
    }

    /// Answers a pending progress request of `stream` once all its watchers are synced.
    fn answer_progress(&mut self, stream: StreamId) {
        let Some(s) = self.streams.get(&stream) else {
            return;
        };
        if !s.progress_pending {
            return;
        }
        let all_synced = s.watch_ids.iter().all(|watch_id| {
            self.watchers
                .get(&(stream, *watch_id))
                .is_none_or(|w| matches!(w.sync, SyncState::Synced))
        });
        if !all_synced {
            return;
        }
        self.streams
            .get_mut(&stream)
            .expect("checked")
            .progress_pending = false;
        let header = self.header_at(self.stream_revision);
        self.push_control(
            stream,
            pb::WatchResponse {
                header: Some(header),
                watch_id: NO_WATCH_ID,
                ..Default::default()
            },
        );
    }

    /// Queues a control response (created, canceled, progress): never refused, since
    /// dropping one would confuse the client; bounded by the client's own request rate.
    fn push_control(&mut self, stream: StreamId, response: pb::WatchResponse) {
        if let Some(s) = self.streams.get_mut(&stream) {
            s.push_message(&response);
        }
    }
}

impl StreamState {
    /// Appends framed responses with `write`, which returns how many bytes it appended,
    /// and wakes the stream's sender.
    fn append(&mut self, write: impl FnOnce(&mut BytesMut) -> Result<usize, crate::grpc::Status>) {
        // No reservation ahead of need: `write` reserves what it appends, and `BytesMut`
        // grows by doubling and reuses the buffer of chunks already sent once nothing
        // refers to them, so a quiet stream holds little and a busy one allocates rarely.
        let before = self.open.len();
        let appended = match write(&mut self.open) {
            Ok(appended) => appended,
            Err(status) => {
                self.failed.get_or_insert(status);
                self.ready.wake();
                return;
            }
        };
        debug_assert_eq!(self.open.len(), before + appended);
        self.queued_bytes += appended;
        if self.open.len() >= STREAM_CHUNK_BYTES_MAX {
            self.sealed.push_back(self.open.split().freeze());
        }
        self.ready.wake();
    }

    /// Appends one response encoded by prost, gRPC-framed.
    fn push_message(&mut self, response: &pb::WatchResponse) {
        let len = response.encoded_len();
        self.append(|out| {
            let prefix = crate::grpc::codec::message_prefix(len)?;
            out.reserve(MESSAGE_PREFIX_LEN + len);
            out.put_slice(&prefix);
            response
                .encode(out)
                .expect("BytesMut grows to fit any message");
            Ok(MESSAGE_PREFIX_LEN + len)
        });
    }

    fn pop(&mut self) -> Option<Bytes> {
        let chunk = match self.sealed.pop_front() {
            Some(chunk) => chunk,
            None if !self.open.is_empty() => self.open.split().freeze(),
            None => return None,
        };
        self.queued_bytes -= chunk.len();
        Some(chunk)
    }
}

/// Queues an events response, split into fragments when the watcher asked for them and
/// it exceeds --max-request-bytes (etcd's `sendFragments`: every part but the last has
/// `fragment` set; a part holds at least one event).
fn push_events(
    stream: &mut StreamState,
    response: pb::WatchResponse,
    fragment: bool,
    max_request_bytes: usize,
) {
    if !fragment || response.events.len() < 2 || response.encoded_len() < max_request_bytes {
        stream.push_message(&response);
        return;
    }
    let mut events = response.events.into_iter().peekable();
    let template = pb::WatchResponse {
        events: Vec::new(),
        fragment: true,
        ..response
    };
    while events.peek().is_some() {
        let mut part = template.clone();
        while let Some(event) = events.peek() {
            part.events.push(event.clone());
            if part.events.len() > 1 && part.encoded_len() >= max_request_bytes {
                part.events.pop();
                break;
            }
            events.next();
        }
        part.fragment = events.peek().is_some();
        stream.push_message(&part);
    }
}
