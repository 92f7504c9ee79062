//! The state executor's side: owns the MVCC store and answers `Command`s.
//!
//! Invariants:
//! - Single owner: this struct lives on the state executor only, behind an `Rc<RefCell<_>>`
//!   shared by that executor's per-network-core receiver tasks. A command is handled to
//!   completion inside one `borrow_mut`, so commands are applied one at a time, in the
//!   order each network core sent them.
//! - Every response header carries this member's cluster id, member id and raft term;
//!   the MVCC layer supplies the revision.
//!
//! - Durability comes from the raft WAL, not from the backend: an entry reaches this struct
//!   only once raft has made it durable, so replies may go out as soon as the batch that
//!   applied it ends (`flush`, once per raft ready). Until then a write's reply, and the
//!   reply of anything applied after it that might have seen it, waits in
//!   `deferred_replies`, and the batch's watch events wait in the watch feed.
//! - The backend is committed in batches, like etcd's --backend-batch-interval (100 ms)
//!   and --backend-batch-limit (10,000 entries): each commit also saves the consistent
//!   index, so after a crash the WAL replays exactly the entries the backend lacks
//!   (idempotent apply). Log compaction never releases WAL entries that only an
//!   uncommitted backend batch holds: a raft snapshot is saved only at an index the database
//!   holds durably (`durable_consistent_index`), because the database is the snapshot.
//!
//! - Writes reach this struct only as committed raft entries (`src/raft/node/ready.rs` calls
//!   [`StateMachine::apply_write`] with each entry's raft index); reads are answered
//!   directly. The raft node keeps `raft_term`, `leader_id` and `raft_commit_index`
//!   current and flushes once per ready.

mod auth;
mod expensive;
mod leases;

pub use leases::{run_lease_timer, LeaseProposal};

use crate::auth::{AuthStore, Caller};
use crate::error::EtcdError;
use crate::lease::{LeaseOptions, Lessor};
use crate::mvcc::btree_backend::WriterOutcome;
use crate::mvcc::{Backend as _, BackendError, BtreeBackend, Bucket, Direction, KeyRange, KvStore};
use crate::proto::etcdserverpb as pb;
use crate::state::change_waiters::ChangeWaiters;
use crate::state::client::Command;
use crate::state::client::Reply;
use expensive::{warn_if_expensive, ExpensiveRequest};

/// etcd's --backend-batch-interval and --backend-batch-limit defaults: how long and how
/// many applied entries the backend may hold before it commits (the WAL already has them).
pub const BACKEND_BATCH_INTERVAL_DEFAULT: std::time::Duration =
    std::time::Duration::from_millis(100);
pub const BACKEND_BATCH_LIMIT_DEFAULT: u64 = 10_000;

/// etcd's default space quota (`DefaultQuotaBytes`, 2 GiB), used when
/// --quota-backend-bytes is 0.
pub const QUOTA_BACKEND_BYTES_DEFAULT: u64 = 2 << 30;
/// etcd's estimates of what a write adds to the backend, for the quota check
/// (`etcdserver/quota.go`: kvOverhead, leaseOverhead).
const QUOTA_KV_OVERHEAD_BYTES: u64 = 256;
const QUOTA_LEASE_OVERHEAD_BYTES: u64 = 64;

/// --quota-backend-bytes as etcd reads it: 0 is the 2 GiB default, a negative value
/// disables the quota (None).
pub fn quota_backend_bytes(flag: i64) -> Option<u64> {
    match flag {
        0 => Some(QUOTA_BACKEND_BYTES_DEFAULT),
        bytes if bytes < 0 => None,
        bytes => Some(bytes as u64),
    }
}

/// etcd's `costPut`.
fn quota_cost_put(req: &pb::PutRequest) -> u64 {
    QUOTA_KV_OVERHEAD_BYTES + (req.key.len() + req.value.len()) as u64
}

/// etcd's `costTxn`: the larger branch's puts (nested txns are not counted, as in etcd).
fn quota_cost_txn(req: &pb::TxnRequest) -> u64 {
    let branch = |ops: &[pb::RequestOp]| -> u64 {
        ops.iter()
            .map(|op| match &op.request {
                Some(pb::request_op::Request::RequestPut(put)) => quota_cost_put(put),
                _ => 0,
            })
            .sum()
    };
    branch(&req.success).max(branch(&req.failure))
}

/// The etcd server version tern reports in Status, so that clients that gate features on
/// the server's version treat tern as the etcd release whose API it implements.
pub const ETCD_SERVER_VERSION: &str = "3.4.23";

/// Who this member is. Derived from flags at startup (see `membership::id`).
#[derive(Clone, Debug)]
pub struct Identity {
    pub cluster_id: u64,
    pub member_id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
}

/// A reply held until the commit it waits for; called with the commit's failure, if any.
type DeferredReply = Box<dyn FnOnce(Option<EtcdError>)>;

/// What the backend's writer jobs (running on the blocking pool) hand back to the state
/// executor: the outcome of the job that finished, and who to wake so it is taken in.
#[derive(Default)]
struct BackendWriter {
    finished: std::cell::RefCell<Option<WriterOutcome>>,
    /// Wakes the raft ready loop, which calls `poll_backend`; set once the loop runs.
    wake: std::cell::RefCell<Option<std::rc::Rc<dyn Fn()>>>,
}

/// Defragment requests waiting for the defragmentation that serves them.
#[derive(Default)]
struct DefragWaiters {
    /// Served by the one running now.
    running: Vec<Reply<pb::DefragmentResponse>>,
    /// Arrived while one ran: they get a defragmentation of their own after it.
    next: Vec<Reply<pb::DefragmentResponse>>,
    started: Option<std::time::Instant>,
}

pub struct StateMachine {
    identity: Identity,
    store: KvStore<BtreeBackend>,
    raft_applied_index: u64,
    alarms: Vec<pb::AlarmMember>,
    lessor: Lessor,
    /// Blocked Lock/Campaign/Observe calls waiting for a change (`change_waiters`).
    waiters: ChangeWaiters,
    /// Store revision whose changes the lessor and the waiters have seen.
    changes_seen_revision: i64,
    /// Counter part of the next server-chosen lease id.
    lease_id_suffix: u64,
    /// Expiry revocations and checkpoints the primary wants proposed (`leases.rs`).
    lease_proposals: Vec<LeaseProposal>,
    /// When each expired lease's revocation was last proposed.
    revoke_proposed_at: std::collections::HashMap<i64, std::time::Instant>,
    /// Replies waiting for the next commit. Bounded by what one batch applies (see the
    /// launch loop's `GROUP_COMMIT_COMMANDS_MAX`).
    deferred_replies: Vec<DeferredReply>,
    /// Whether anything was applied since the last backend commit.
    uncommitted: bool,
    /// Entries applied since the last backend commit, and when the first of them was.
    backend_batch_entries: u64,
    backend_batch_started: Option<std::time::Instant>,
    /// --backend-batch-interval and --backend-batch-limit.
    backend_batch_interval: std::time::Duration,
    backend_batch_limit: u64,
    watch_feed: crate::watch::WatchFeed,
    /// Set while a committed raft entry is being applied (see `advance_applied_index`).
    applying_raft_entry: bool,
    /// Set once backend commits and defragmentation run on the blocking pool.
    writer: Option<std::rc::Rc<BackendWriter>>,
    defrag_waiters: DefragWaiters,
    /// Users, roles, permissions and tokens (`crate::auth`).
    auth: AuthStore,
    /// Who the command being handled runs as (`handle`, `apply_write`); between commands,
    /// a client without credentials.
    caller: Caller,
    /// Kept current by the raft node.
    pub raft_term: u64,
    pub leader_id: u64,
    pub raft_commit_index: u64,
}

impl StateMachine {
    pub fn new(
        identity: Identity,
        store: KvStore<BtreeBackend>,
    ) -> Result<StateMachine, BackendError> {
        // A reopened store resumes from the raft index it saved with its last commit; raft
        // replays only the entries after it.
        let changes_seen_revision = store.current_revision();
        let auth = AuthStore::load(
            store.backend(),
            crate::auth::token::SIMPLE_TOKEN_TTL_DEFAULT,
        )?;
        publish_key_count(&store);
        let mut state = StateMachine {
            identity,
            raft_applied_index: store.consistent_index(),
            store,
            alarms: Vec::new(),
            watch_feed: crate::watch::WatchFeed::default(),
            lessor: Lessor::new(LeaseOptions::default()),
            waiters: ChangeWaiters::default(),
            changes_seen_revision,
            lease_id_suffix: 0,
            lease_proposals: Vec::new(),
            revoke_proposed_at: std::collections::HashMap::new(),
            deferred_replies: Vec::new(),
            uncommitted: false,
            backend_batch_entries: 0,
            backend_batch_started: None,
            backend_batch_interval: BACKEND_BATCH_INTERVAL_DEFAULT,
            backend_batch_limit: BACKEND_BATCH_LIMIT_DEFAULT,
            applying_raft_entry: false,
            writer: None,
            defrag_waiters: DefragWaiters::default(),
            auth,
            caller: Caller::anonymous(),
            raft_term: 0,
            leader_id: 0,
            raft_commit_index: 0,
        };
        state.restore_leases();
        state.restore_alarms()?;
        Ok(state)
    }

    /// Reloads the raised alarms from the `alarm` bucket (etcd's `alarm.NewAlarmStore`):
    /// an alarm stays armed across restarts until it is disarmed.
    fn restore_alarms(&mut self) -> Result<(), BackendError> {
        use prost::Message as _;
        let mut alarms = Vec::new();
        let mut failure = None;
        self.store.backend().scan(
            Bucket::Alarm,
            &[],
            None,
            Direction::Ascending,
            &mut |k, _| match pb::AlarmMember::decode(k) {
                Ok(alarm) => {
                    alarms.push(alarm);
                    true
                }
                Err(e) => {
                    failure = Some(format!("alarm bucket: {e}"));
                    false
                }
            },
        )?;
        if let Some(failure) = failure {
            return Err(BackendError::Corrupted(failure));
        }
        self.alarms = alarms;
        Ok(())
    }

    /// Whether NOSPACE is raised (by any member): writes that add data are refused
    /// (etcd's `applierV3Capped`).
    pub fn no_space_armed(&self) -> bool {
        self.alarms
            .iter()
            .any(|a| a.alarm == pb::AlarmType::Nospace as i32)
    }

    /// etcd's quota check (`backendQuota.Available`): whether `command` would take the
    /// backend past `quota` bytes. Only puts, txns and lease grants are checked, as in
    /// etcd; the size is the last commit's (what bbolt's `Size` reports).
    pub fn exceeds_quota(&self, command: &Command, quota: u64) -> bool {
        let cost = match command {
            Command::Put(req, _) => quota_cost_put(req),
            Command::Txn(req, _) => quota_cost_txn(req),
            Command::Lease(crate::state::LeaseCommand::Grant(..)) => QUOTA_LEASE_OVERHEAD_BYTES,
            _ => return false,
        };
        self.store.backend().db_bytes() + cost > quota
    }

    /// Answers a committed write that NOSPACE refuses (etcd's capped applier: puts, txns
    /// that write, lease grants) and returns None; passes any other command through.
    fn capped(&mut self, command: Command) -> Option<Command> {
        if !self.no_space_armed() || !self.applying_raft_entry {
            return Some(command);
        }
        match command {
            Command::Put(_, reply) => {
                self.advance_applied_index();
                self.reply(reply, Err(EtcdError::NoSpace));
                None
            }
            Command::Txn(_, reply) => {
                self.advance_applied_index();
                self.reply(reply, Err(EtcdError::NoSpace));
                None
            }
            Command::Lease(crate::state::LeaseCommand::Grant(_, reply)) => {
                self.advance_applied_index();
                self.reply(reply, Err(EtcdError::NoSpace));
                None
            }
            other => Some(other),
        }
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// `--auth-token jwt,...`: tokens are JWTs verified with these keys.
    pub fn with_jwt(mut self, keys: Option<std::sync::Arc<crate::auth::jwt::JwtKeys>>) -> Self {
        if let Some(keys) = keys {
            self.auth.set_jwt(keys);
        }
        self
    }

    /// --auth-token-ttl for simple tokens.
    pub fn with_auth_token_ttl(mut self, ttl: std::time::Duration) -> Self {
        self.auth.set_token_ttl(ttl);
        self
    }

    /// Who a request presenting `credential` runs as, for a write about to be proposed:
    /// the entry carries it and its checks run when it applies.
    pub fn caller_of(
        &mut self,
        credential: Option<&crate::auth::Credential>,
    ) -> Result<crate::auth::AuthInfo, EtcdError> {
        self.auth.info_from(credential, std::time::Instant::now())
    }

    /// The raft index of the Authenticate entry that issued `credential`'s simple token,
    /// if this member has not applied it yet (the token cannot be known before).
    pub fn unapplied_token_index(&self, credential: &crate::auth::Credential) -> Option<u64> {
        self.auth
            .unapplied_token_index(credential, self.raft_applied_index)
    }

    /// Whether `caller` may do what only root-role users may (membership changes, leader
    /// moves): checked before the raft node acts, as etcd checks them at the API.
    pub fn check_admin_of(&self, caller: &Caller) -> Result<(), EtcdError> {
        self.auth.check_admin(caller)
    }

    /// Whether `caller` may read every key attached to lease `id` (TimeToLive with keys,
    /// checked where the request arrives, before a follower forwards it).
    pub fn check_lease_read_of(&mut self, caller: Caller, id: i64) -> Result<(), EtcdError> {
        let previous = std::mem::replace(&mut self.caller, caller);
        let res = self.check_lease_keys(id, crate::auth::Access::Read);
        self.caller = previous;
        res
    }

    /// From now on backend commits and defragmentation run on the current executor's
    /// blocking pool, never on its thread (the B+tree's pages, fdatasyncs and meta writes
    /// are blocking file I/O). Must be called on the state executor.
    pub fn with_background_writer(mut self) -> Self {
        self.store.backend_mut().run_writer_in_background();
        self.writer = Some(std::rc::Rc::new(BackendWriter::default()));
        self
    }

    /// Who to call when a writer job finishes (the raft loop's wake-up); it must get
    /// [`Self::poll_backend`] called soon.
    pub fn set_backend_wake(&mut self, wake: std::rc::Rc<dyn Fn()>) {
        if let Some(writer) = &self.writer {
            *writer.wake.borrow_mut() = Some(wake);
        }
    }

    /// Whether applying must pause until the running backend commit ends (the layers
    /// waiting for the disk are at their bound: `OPEN_LAYER_BYTES_MAX`).
    pub fn backend_is_full(&self) -> bool {
        self.store.backend().is_full()
    }

    /// The raft index the backend file holds durably (its last finished commit): a raft
    /// snapshot or log compaction must not go past it, because a restart resumes there.
    pub fn durable_consistent_index(&self) -> u64 {
        self.store.durable_consistent_index()
    }

    /// Hands a ready writer job to the blocking pool.
    fn spawn_writer_job(&mut self) {
        let Some(writer) = self.writer.clone() else {
            return;
        };
        let Some(job) = self.store.backend_mut().take_job() else {
            return;
        };
        glommio::spawn_local(async move {
            let outcome = glommio::executor()
                .spawn_blocking(move || {
                    crate::runtime::thread_name::prepare_blocking_thread(
                        crate::runtime::thread_name::BlockingWork::Background,
                    );
                    job.run()
                })
                .await;
            assert!(
                writer.finished.borrow_mut().replace(outcome).is_none(),
                "one writer job at a time"
            );
            let wake = writer.wake.borrow().clone();
            if let Some(wake) = wake {
                wake();
            }
        })
        .detach();
    }

    /// Takes in a finished writer job: the backend refreshes its snapshot, a finished
    /// defragmentation is answered, and the next job starts. A failed commit is fatal, as
    /// in etcd (`backend: failed to commit tx`): memory and disk no longer agree.
    pub fn poll_backend(&mut self) {
        let Some(writer) = self.writer.clone() else {
            return;
        };
        let Some(outcome) = writer.finished.borrow_mut().take() else {
            return;
        };
        let mut events = self.store.backend_mut().job_finished(outcome);
        let retired = std::mem::take(&mut events.retired_layers);
        if !retired.is_empty() {
            // Freeing a committed layer takes up to ~100 ms for a large batch: not here.
            glommio::spawn_local(glommio::executor().spawn_blocking(move || {
                crate::runtime::thread_name::prepare_blocking_thread(
                    crate::runtime::thread_name::BlockingWork::Background,
                );
                drop(retired)
            }))
            .detach();
        }
        if let Some(failure) = self.store.backend().failure() {
            crate::fatal!("failed to commit backend transaction", "error" => failure.to_string());
        }
        if let Some(result) = events.defrag_finished {
            self.defrag_finished(result);
        }
        self.spawn_writer_job();
    }

    /// Whether a backend commit or defragmentation is running or waiting to.
    pub fn backend_is_busy(&self) -> bool {
        self.store.backend().is_busy()
    }

    fn defrag_finished(&mut self, result: Result<tern_storage::btree::DefragReport, BackendError>) {
        let took = self
            .defrag_waiters
            .started
            .take()
            .map(|started| started.elapsed())
            .unwrap_or_default();
        crate::metrics::STATE.defrag_inflight.set(0);
        crate::metrics::observe_seconds(
            &crate::metrics::STATE.backend_defrag,
            &crate::metrics::DEFRAG_SECONDS_BUCKETS,
            took,
        );
        let res = match result {
            Ok(report) => {
                crate::info!(
                    "finished defragmenting directory",
                    "path" => self.store.backend().path(),
                    "current-db-size-bytes" => report.db_size_bytes_after,
                    "took" => crate::log::format_duration(took),
                    "passes" => report.passes
                );
                // etcd answers an empty DefragmentResponse: no header.
                Ok(pb::DefragmentResponse { header: None })
            }
            Err(e) => {
                crate::error!("failed to defragment", "error" => e.to_string());
                Err(EtcdError::Corrupt)
            }
        };
        for reply in std::mem::take(&mut self.defrag_waiters.running) {
            self.reply(reply, res);
        }
        if !self.defrag_waiters.next.is_empty() {
            self.defrag_waiters.running = std::mem::take(&mut self.defrag_waiters.next);
            self.start_defrag();
        }
    }

    /// Commits what is applied, then starts a defragmentation on the writer.
    fn start_defrag(&mut self) {
        self.commit_backend();
        crate::info!("defragmenting", "path" => self.store.backend().path());
        self.defrag_waiters.started = Some(std::time::Instant::now());
        crate::metrics::STATE.defrag_inflight.set(1);
        match self.store.backend_mut().start_defragment() {
            Ok(started) => {
                debug_assert!(started, "one defragmentation at a time");
                self.spawn_writer_job();
            }
            Err(e) => self.defrag_finished(Err(e)),
        }
    }

    /// The member's IDs as raft settled them (from the WAL, or from the cluster it joined).
    pub fn set_identity(&mut self, identity: Identity) {
        self.identity = identity;
    }

    /// The store's current revision (what etcd's compactor samples).
    pub fn current_revision(&self) -> i64 {
        self.store.current_revision()
    }

    pub fn raft_applied_index(&self) -> u64 {
        self.raft_applied_index
    }

    /// Applies the write `command` carried by the committed entry at `raft_index` and
    /// answers it (after the next `flush`). Idempotent: an entry at or below the store's
    /// consistent index was applied before a restart and is skipped.
    pub fn apply_write(&mut self, raft_index: u64, command: Command, caller: Caller) {
        assert!(
            raft_index > self.raft_applied_index,
            "entries apply in raft-index order"
        );
        if raft_index <= self.store.consistent_index() {
            self.raft_applied_index = raft_index;
            return;
        }
        // `handle` advances the applied index by one for each write.
        self.raft_applied_index = raft_index - 1;
        self.applying_raft_entry = true;
        let previous = std::mem::replace(&mut self.caller, caller);
        self.handle(command);
        self.caller = previous;
        self.applying_raft_entry = false;
        debug_assert_eq!(self.raft_applied_index, raft_index);
    }

    /// Answers a command raft did not order (a read, or a local-only command such as a
    /// lease operation): it must not advance the applied index, which only committed
    /// entries do.
    pub fn handle_read(&mut self, command: Command) {
        let applied = self.raft_applied_index;
        let consistent_index = self.store.consistent_index();
        self.handle(command);
        self.raft_applied_index = applied;
        self.store.set_consistent_index(consistent_index);
    }

    /// Records an entry that changes no key (empty entry, ConfChange, member attributes).
    /// Its index is saved as the consistent index all the same (with the next commit), as
    /// etcd does, so that a restart resumes after it.
    pub fn apply_other(&mut self, raft_index: u64) {
        assert!(
            raft_index > self.raft_applied_index,
            "entries apply in raft-index order"
        );
        self.raft_applied_index = raft_index;
        if raft_index > self.store.consistent_index() {
            self.store.set_consistent_index(raft_index);
            self.uncommitted = true;
        }
    }

    /// A consistent image of the backend's latest durable commit (`Db::export`), for a
    /// raft snapshot sent to a follower: its consistent index is at least
    /// [`Self::durable_consistent_index`] now, so it covers every local raft snapshot.
    /// Cheap; the image is read later, off the executor.
    pub fn export_db(&self) -> Result<tern_storage::btree::Export, String> {
        self.store
            .backend()
            .export()
            .map_err(|e| format!("cannot export the backend: {e}"))
    }

    /// A fixed view of everything applied so far, for `Maintenance.Snapshot`: ends the
    /// apply batch and seals it for commit (as etcd commits before a snapshot), so the
    /// view is the last commit's read snapshot plus the layers still waiting for the disk,
    /// shared rather than copied. Cheap; the view is read later, off the executor.
    pub fn snapshot_source(
        &mut self,
        membership: &crate::membership::cluster::Membership,
    ) -> Result<crate::state::db_snapshot::SnapshotSource, EtcdError> {
        self.flush();
        self.commit_backend();
        Ok(crate::state::db_snapshot::SnapshotSource {
            backend: self.store.backend().read_snapshot(),
            members: membership.members.values().cloned().collect(),
            removed: membership.removed.iter().copied().collect(),
            cluster_version: membership.cluster_version.clone(),
            alarms: self.alarms.clone(),
            header: self.header(self.store.current_revision()),
        })
    }

    /// The backend's file.
    pub fn db_path(&self) -> std::path::PathBuf {
        self.store.backend().path().to_path_buf()
    }

    /// Replaces the whole state with `store`, opened over the database a leader's raft
    /// snapshot at `snapshot_index` brought (`src/raft/node/ready.rs`, `install_snapshot`).
    /// The backend must be idle (no writer job in flight or wanted), so no job's outcome
    /// can reach the new backend; the old one's uncommitted layers are dropped with it.
    /// Returns the old store, to be dropped off the executor. The applied index becomes the larger of the snapshot's and the new store's
    /// consistent index (raft then skips the entries the database already holds).
    pub fn replace_store(
        &mut self,
        mut store: KvStore<BtreeBackend>,
        snapshot_index: u64,
    ) -> Result<KvStore<BtreeBackend>, String> {
        assert!(
            !self.backend_is_busy(),
            "the backend is idle when its store is replaced"
        );
        if store.consistent_index() < snapshot_index {
            return Err(format!(
                "the snapshot's database holds raft index {}, below the snapshot's {snapshot_index}",
                store.consistent_index()
            ));
        }
        if self.writer.is_some() {
            store.backend_mut().run_writer_in_background();
        }
        self.flush();
        publish_key_count(&store);
        let old = std::mem::replace(&mut self.store, store);
        self.uncommitted = false;
        self.backend_batch_started = None;
        self.backend_batch_entries = 0;
        self.changes_seen_revision = self.store.current_revision();
        self.raft_applied_index = snapshot_index.max(self.store.consistent_index());
        self.restore_leases();
        if let Err(e) = self.auth.reload(self.store.backend()) {
            return Err(format!(
                "cannot restore the auth state of the snapshot: {e}"
            ));
        }
        Ok(old)
    }

    /// Sends `result` now if nothing is applied in the current batch, else when the batch
    /// ends (`flush`).
    fn reply<T: 'static>(&mut self, reply: Reply<T>, result: Result<T, EtcdError>) {
        if !self.uncommitted {
            let _ = reply.send(result);
            return;
        }
        self.deferred_replies.push(Box::new(move |failure| {
            let _ = reply.send(match failure {
                None => result,
                Some(error) => Err(error),
            });
        }));
    }

    /// Whether replies wait for a commit.
    pub fn has_uncommitted(&self) -> bool {
        self.uncommitted
    }

    /// Sets etcd's --backend-batch-interval and --backend-batch-limit (zero: the default).
    pub fn with_backend_batch(mut self, interval: std::time::Duration, limit: u64) -> Self {
        if !interval.is_zero() {
            self.backend_batch_interval = interval;
        }
        if limit > 0 {
            self.backend_batch_limit = limit;
        }
        self
    }

    /// Ends an apply batch: sends the replies and watch events that waited for it, and
    /// commits the backend if its batch is due (see the module doc).
    pub fn flush(&mut self) {
        if !self.uncommitted {
            return;
        }
        self.uncommitted = false;
        self.backend_batch_entries += self.deferred_replies.len().max(1) as u64;
        let started = *self
            .backend_batch_started
            .get_or_insert_with(std::time::Instant::now);
        if self.backend_batch_entries >= self.backend_batch_limit
            || started.elapsed() >= self.backend_batch_interval
        {
            self.commit_backend();
        }
        self.watch_feed.release();
        for reply in self.deferred_replies.drain(..) {
            reply(None);
        }
    }

    /// Commits the backend now if it holds anything uncommitted (a no-op otherwise). A
    /// failed commit is fatal, as in etcd (`backend: failed to commit tx`): memory and
    /// disk no longer agree.
    pub fn commit_backend(&mut self) {
        if self.backend_batch_started.take().is_none() && !self.uncommitted {
            return;
        }
        self.backend_batch_entries = 0;
        if let Err(e) = self.store.commit() {
            crate::fatal!("failed to commit backend transaction", "error" => e.to_string());
        }
        self.spawn_writer_job();
    }

    /// Commits the backend if its batch interval has passed; called on every raft tick so
    /// that an idle member does not keep applied entries only in the WAL for long.
    pub fn commit_backend_if_due(&mut self) {
        if self
            .backend_batch_started
            .is_some_and(|started| started.elapsed() >= self.backend_batch_interval)
        {
            self.commit_backend();
        }
    }

    fn header(&self, revision: i64) -> pb::ResponseHeader {
        pb::ResponseHeader {
            cluster_id: self.identity.cluster_id,
            member_id: self.identity.member_id,
            revision,
            raft_term: self.raft_term,
        }
    }

    /// Completes a response's header: the MVCC layer set `revision`; we add who answered.
    /// Responses nested inside a Txn keep only their revision, as etcd's do.
    fn stamp(&self, header: &mut Option<pb::ResponseHeader>) {
        let revision = header.as_ref().map_or(0, |h| h.revision);
        *header = Some(self.header(revision));
    }

    /// Applies one command and sends its reply. A closed reply channel (the client went
    /// away) is not an error: the write, if any, is applied all the same, as in etcd.
    /// Requests (reads and committed writes) that take longer than etcd's limit log its
    /// "apply request took too long" (`expensive`).
    pub fn handle(&mut self, command: Command) {
        let started = std::time::Instant::now();
        let Some(command) = self.capped(command) else {
            return;
        };
        match command {
            Command::As(_, inner) if !inner.needs_caller() => {
                self.handle(*inner);
                return;
            }
            Command::As(credential, inner) => {
                match self.auth.info_from(Some(&credential), started) {
                    Ok(info) => {
                        let previous = std::mem::replace(&mut self.caller, Caller::Client(info));
                        self.handle(*inner);
                        self.caller = previous;
                    }
                    Err(e) => inner.fail(e),
                }
                return;
            }
            Command::Auth(op, reply) => self.handle_auth(op, reply),
            Command::Range(req, reply) => {
                crate::metrics::STATE.mvcc_range.add(1, false);
                let res = self
                    .check_range(&req)
                    .and_then(|()| self.store.range(&req))
                    .map(|mut r| {
                        self.stamp(&mut r.header);
                        r
                    });
                warn_if_expensive(started.elapsed(), || ExpensiveRequest {
                    prefix: "read-only range ",
                    request: expensive::range_text(&req),
                    response: expensive::range_response(&res),
                    error: res.as_ref().err(),
                });
                self.reply(reply, res);
            }
            Command::RangeChunk(req, reply) => {
                crate::metrics::STATE.mvcc_range.add(1, false);
                let range = KeyRange::from_request(&req.range.key, &req.range.range_end);
                let res = self
                    .check_range(&req.range)
                    .and_then(|()| self.store.range_chunk(range, req.options))
                    .map(|chunk| crate::state::RangeChunk {
                        header: self.header(chunk.revision),
                        chunk,
                    });
                warn_if_expensive(started.elapsed(), || ExpensiveRequest {
                    prefix: "read-only range ",
                    request: expensive::range_text(&req.range),
                    response: res.as_ref().map_or(String::new(), |r| {
                        format!(
                            "range_response_count:{} size:{}",
                            r.chunk.keys, r.chunk.encoded_bytes
                        )
                    }),
                    error: res.as_ref().err(),
                });
                self.reply(reply, res);
            }
            Command::Put(req, reply) => {
                self.advance_applied_index();
                crate::metrics::STATE.mvcc_put.add(1, false);
                let res = self
                    .check_put(&req)
                    .and_then(|()| self.store.put(&req, &self.lessor))
                    .map(|mut r| {
                        self.stamp(&mut r.header);
                        r
                    });
                self.after_write();
                warn_if_expensive(started.elapsed(), || ExpensiveRequest {
                    prefix: "",
                    request: expensive::put_text(&req),
                    response: expensive::write_response(&res),
                    error: res.as_ref().err(),
                });
                self.reply(reply, res);
            }
            Command::DeleteRange(req, reply) => {
                self.advance_applied_index();
                crate::metrics::STATE.mvcc_delete.add(1, false);
                let res = self
                    .check_delete_range(&req)
                    .and_then(|()| self.store.delete_range(&req))
                    .map(|mut r| {
                        self.stamp(&mut r.header);
                        r
                    });
                self.after_write();
                warn_if_expensive(started.elapsed(), || ExpensiveRequest {
                    prefix: "",
                    request: expensive::delete_range_text(&req),
                    response: expensive::write_response(&res),
                    error: res.as_ref().err(),
                });
                self.reply(reply, res);
            }
            Command::Txn(req, reply) => {
                // Outside a raft entry a txn is one that only reads (served as a read).
                let read_only = !self.applying_raft_entry;
                self.advance_applied_index();
                let res = self
                    .check_txn(&req)
                    .and_then(|()| self.store.txn(&req, &self.lessor))
                    .map(|mut r| {
                        count_txn_ops(&req, &r);
                        self.stamp(&mut r.header);
                        r
                    });
                self.after_write();
                warn_if_expensive(started.elapsed(), || ExpensiveRequest {
                    // etcd 3.4 logs read-only txns with the range prefix too.
                    prefix: if read_only { "read-only range " } else { "" },
                    request: expensive::txn_text(&req, read_only),
                    response: if read_only {
                        expensive::read_only_txn_response(&res)
                    } else {
                        expensive::write_response(&res)
                    },
                    error: res.as_ref().err(),
                });
                self.reply(reply, res);
            }
            Command::Compact(req, reply) => {
                self.advance_applied_index();
                let res = self.store.compact(&req).map(|mut r| {
                    self.stamp(&mut r.header);
                    r
                });
                warn_if_expensive(started.elapsed(), || ExpensiveRequest {
                    prefix: "",
                    request: expensive::compaction_text(&req),
                    response: expensive::write_response(&res),
                    error: res.as_ref().err(),
                });
                self.reply(reply, res);
            }
            Command::HashKv(req, reply) => {
                let res = self
                    .check_admin()
                    .and_then(|()| self.store.hash_kv(&req))
                    .map(|mut r| {
                        self.stamp(&mut r.header);
                        r
                    });
                crate::metrics::STATE.hash_rev_duration.observe(
                    &crate::metrics::HASH_SECONDS_BUCKETS,
                    started.elapsed().as_secs_f64(),
                );
                self.reply(reply, res);
            }
            Command::Hash(reply) => {
                let res = self
                    .check_admin()
                    .and_then(|()| self.store.hash_by_rev(0))
                    .map(|h| pb::HashResponse {
                        header: Some(self.header(h.current_revision)),
                        hash: h.hash,
                    });
                crate::metrics::STATE.hash_duration.observe(
                    &crate::metrics::HASH_SECONDS_BUCKETS,
                    started.elapsed().as_secs_f64(),
                );
                self.reply(reply, res);
            }
            Command::Status(reply) => {
                let res = self.status();
                self.reply(reply, res);
            }
            Command::MemberList(reply) => {
                let res = Ok(pb::MemberListResponse {
                    header: Some(self.header(0)),
                    members: vec![self.member()],
                });
                self.reply(reply, res);
            }
            Command::Alarm(req, reply) => {
                // etcd answers Alarm without a response header (its JSON is `{}` when
                // no alarm is raised). Raising and clearing alarms is for root-role
                // users (etcd ≥ 3.5); listing them for anyone.
                let changes = req.action != pb::alarm_request::AlarmAction::Get as i32;
                let res = match self.check_admin() {
                    Err(e) if changes => {
                        self.advance_applied_index();
                        Err(e)
                    }
                    _ => Ok(pb::AlarmResponse {
                        header: None,
                        alarms: self.alarm(req),
                    }),
                };
                warn_if_expensive(started.elapsed(), || ExpensiveRequest {
                    prefix: "",
                    request: expensive::alarm_text(&req),
                    response: expensive::write_response(&res),
                    error: None,
                });
                self.reply(reply, res);
            }
            Command::Snapshot(reply) => {
                // Outside a raft node (tests of the machine alone) there is no member table.
                let membership = crate::membership::cluster::Membership::default();
                let res = self.snapshot_source(&membership);
                self.reply(reply, res);
            }
            Command::MemberAdd(..)
            | Command::MemberRemove(..)
            | Command::MemberUpdate(..)
            | Command::MemberPromote(..)
            | Command::MoveLeader(..) => {
                // The raft node answers these before commands reach the state machine;
                // dropping the reply answers "server stopped" should one ever get here.
            }
            Command::Defragment(reply) if self.check_admin().is_err() => {
                let res = self
                    .check_admin()
                    .map(|()| pb::DefragmentResponse::default());
                self.reply(reply, res);
            }
            Command::Defragment(reply) if self.writer.is_some() => {
                // Defrag works on the committed file: end the batch and commit it first.
                self.flush();
                if self.defrag_waiters.started.is_some() {
                    self.defrag_waiters.next.push(reply);
                } else {
                    self.defrag_waiters.running.push(reply);
                    self.start_defrag();
                }
            }
            Command::Defragment(reply) => {
                // Inline writer (tests): defragment here and now.
                self.flush();
                self.commit_backend();
                let res = match self.store.backend_mut().defragment() {
                    Ok(report) => {
                        crate::info!(
                            "finished defragmenting directory",
                            "path" => self.store.backend().path(),
                            "current-db-size-bytes" => report.db_size_bytes_after,
                            "passes" => report.passes
                        );
                        // etcd answers an empty DefragmentResponse: no header.
                        Ok(pb::DefragmentResponse { header: None })
                    }
                    Err(e) => {
                        crate::error!("failed to defragment", "error" => e.to_string());
                        Err(EtcdError::Corrupt)
                    }
                };
                self.reply(reply, res);
            }
            Command::Lease(command) => {
                // Grants and revokes are entries; their requests are kept (small `Copy`
                // values) before the command moves. The response is answered inside
                // `handle_lease`, so the warning leaves it empty.
                let entry = expensive::LeaseEntry::of(&command);
                self.handle_lease(command, started);
                if let Some(entry) = entry {
                    warn_if_expensive(started.elapsed(), || ExpensiveRequest {
                        prefix: "",
                        request: entry.text(),
                        response: String::new(),
                        error: None,
                    });
                }
            }
            Command::WaitChange(wait) => self.waiters.register(wait, &self.store),
            Command::WatchSync(req, reply) => {
                let header = self.header(0);
                // History may include applied but uncommitted writes: answer after the commit.
                let res = self.watch_feed.sync(&self.store, req, &header);
                self.reply(reply, res);
            }
            Command::WatchUnsubscribe { core, generation } => {
                self.watch_feed.unsubscribe(core, generation)
            }
        }
        // Whatever the command wrote goes to the watchers (a no-op if nothing changed).
        let header = self.header(0);
        self.watch_feed.publish(&self.store, &header);
    }

    /// Connects network core `core`'s watch feed channel.
    pub fn attach_watch_feed(
        &mut self,
        core: usize,
        sender: glommio::channels::shared_channel::ConnectedSender<crate::watch::FeedMessage>,
    ) {
        self.watch_feed.attach(core, sender);
    }

    /// etcd's alarm semantics (ACTIVATE and DEACTIVATE arrive as committed raft entries,
    /// so every member holds the same alarms): GET lists every raised alarm (NONE matches all types);
    /// ACTIVATE raises one and answers with it; DEACTIVATE clears one and answers with what
    /// it cleared. The quota check raises NOSPACE (`raft/node`, `exceeds_quota`); alarms are
    /// kept in the `alarm` bucket and reloaded on restart. Nothing raises CORRUPT yet.
    fn alarm(&mut self, req: pb::AlarmRequest) -> Vec<pb::AlarmMember> {
        use pb::alarm_request::AlarmAction;
        let wanted = pb::AlarmMember {
            member_id: req.member_id,
            alarm: req.alarm,
        };
        match AlarmAction::try_from(req.action).unwrap_or(AlarmAction::Get) {
            AlarmAction::Get => self
                .alarms
                .iter()
                .filter(|a| req.alarm == pb::AlarmType::None as i32 || a.alarm == req.alarm)
                .cloned()
                .collect(),
            AlarmAction::Activate => {
                self.advance_applied_index();
                if req.alarm == pb::AlarmType::None as i32 {
                    return Vec::new();
                }
                if !self.alarms.contains(&wanted) {
                    let first_of_its_type = !self.alarms.iter().any(|a| a.alarm == wanted.alarm);
                    self.alarms.push(wanted);
                    self.persist_alarm(&wanted, true);
                    if first_of_its_type {
                        crate::warn!(
                            "alarm raised",
                            "alarm" => alarm_name(wanted.alarm),
                            "from" => format!("{:x}", wanted.member_id)
                        );
                    }
                }
                vec![wanted]
            }
            AlarmAction::Deactivate => {
                self.advance_applied_index();
                let before = self.alarms.len();
                self.alarms.retain(|a| *a != wanted);
                if self.alarms.len() < before {
                    self.persist_alarm(&wanted, false);
                    if !self.alarms.iter().any(|a| a.alarm == wanted.alarm) {
                        crate::warn!(
                            "alarm disarmed",
                            "alarm" => alarm_name(wanted.alarm),
                            "from" => format!("{:x}", wanted.member_id)
                        );
                    }
                    vec![wanted]
                } else {
                    Vec::new()
                }
            }
        }
    }

    /// Saves (or removes) `alarm` in the `alarm` bucket, as etcd's alarm store does: key the
    /// marshaled `AlarmMember`, value empty. Committed with the entry that changed it.
    fn persist_alarm(&mut self, alarm: &pb::AlarmMember, raised: bool) {
        use prost::Message as _;
        let key = alarm.encode_to_vec();
        let backend = self.store.backend_mut();
        let result = if raised {
            backend.put(Bucket::Alarm, &key, &[])
        } else {
            backend.delete(Bucket::Alarm, &key).map(|_| ())
        };
        if let Err(e) = result {
            crate::fatal!("failed to save an alarm in the backend", "error" => e.to_string());
        }
    }

    /// One more entry is being applied (whether it succeeds or fails, as in raft): the
    /// store saves it as its consistent index together with the entry's writes, which is
    /// what makes replaying an entry idempotent once raft and the WAL arrive.
    ///
    /// Only a committed raft entry advances it (`apply_write`); a change made outside raft
    /// (lease expiry, tern's local lease commands) must not, or the applied index would
    /// run ahead of raft's log.
    fn advance_applied_index(&mut self) {
        self.uncommitted = true;
        if self.applying_raft_entry {
            self.raft_applied_index += 1;
            self.store.set_consistent_index(self.raft_applied_index);
        }
    }

    fn member(&self) -> pb::Member {
        pb::Member {
            id: self.identity.member_id,
            name: self.identity.name.clone(),
            peer_ur_ls: self.identity.peer_urls.clone(),
            client_ur_ls: self.identity.client_urls.clone(),
            is_learner: false,
        }
    }

    fn status(&self) -> Result<pb::StatusResponse, EtcdError> {
        // etcd: dbSize is the file's size, dbSizeInUse the part not free.
        let stats = self.store.backend().stats().map_err(|e| {
            crate::error!("cannot read backend size", "error" => e.to_string());
            EtcdError::Corrupt
        })?;
        let db_size = stats.db_size_bytes as i64;
        Ok(pb::StatusResponse {
            header: Some(self.header(self.store.current_revision())),
            version: ETCD_SERVER_VERSION.to_string(),
            db_size,
            leader: self.leader_id,
            raft_index: self.raft_commit_index.max(self.raft_applied_index),
            raft_term: self.raft_term,
            raft_applied_index: self.raft_applied_index,
            errors: Vec::new(),
            db_size_in_use: stats.db_size_in_use_bytes as i64,
            is_learner: false,
            // The quota in force (etcd's `quota_backend_bytes` gauge: the raw negative flag
            // when the quota is off).
            db_size_quota: crate::metrics::STATE.quota_backend_bytes.get(),
        })
    }
}

/// An alarm's name as etcd logs it (`AlarmType.String()`).
fn alarm_name(alarm: i32) -> &'static str {
    match pb::AlarmType::try_from(alarm) {
        Ok(pb::AlarmType::Nospace) => "NOSPACE",
        Ok(pb::AlarmType::Corrupt) => "CORRUPT",
        _ => "NONE",
    }
}

/// Sets `etcd_debugging_mvcc_keys_total` from a whole store (at open and after a snapshot
/// install; writes then keep it current, see `leases::publish_key_changes`).
fn publish_key_count(store: &KvStore<BtreeBackend>) {
    let all = pb::RangeRequest {
        key: bytes::Bytes::from_static(b"\0"),
        range_end: bytes::Bytes::from_static(b"\0"),
        count_only: true,
        ..Default::default()
    };
    if let Ok(response) = store.range(&all) {
        crate::metrics::STATE.mvcc_keys.set(response.count);
        crate::metrics::STATE
            .mvcc_current_revision
            .set(store.current_revision());
        crate::metrics::STATE
            .mvcc_compact_revision
            .set(store.compact_revision());
    }
}

/// etcd's mvcc counters for one txn: its compares and executed ranges count as ranges,
/// its puts and deletes as such (nested txns included), and the whole as one txn when it
/// did more than one thing (etcd's `metricsTxnWrite.End`).
fn count_txn_ops(request: &pb::TxnRequest, response: &pb::TxnResponse) {
    fn executed(response: &pb::TxnResponse, counts: &mut [u64; 3]) {
        use pb::response_op::Response as Op;
        for op in &response.responses {
            match &op.response {
                Some(Op::ResponseRange(_)) => counts[0] += 1,
                Some(Op::ResponsePut(_)) => counts[1] += 1,
                Some(Op::ResponseDeleteRange(_)) => counts[2] += 1,
                Some(Op::ResponseTxn(inner)) => executed(inner, counts),
                None => {}
            }
        }
    }
    let mut counts = [request.compare.len() as u64, 0, 0];
    executed(response, &mut counts);
    let s = &crate::metrics::STATE;
    s.mvcc_range.add(counts[0], false);
    s.mvcc_put.add(counts[1], false);
    s.mvcc_delete.add(counts[2], false);
    if counts.iter().sum::<u64>() > 1 {
        s.mvcc_txn.add(1, false);
    }
}
