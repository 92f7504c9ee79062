//! The raft node: the one ready loop in front of the state machine.
//!
//! Everything here runs on the state executor (pinned to its core); no borrow of the node
//! is held across an `.await`, so `RawNode::step`/`propose` never run between `ready()`
//! and `advance_append_async()` of one ready.
//!
//! Files, one job each (several `impl Node` blocks; methods another file calls are
//! `pub(super)`):
//! - this file: the node's state, client submission (writes, reads, ReadIndex queue),
//!   ticks and the peer-message entry points;
//! - [`ready`]: the ready loop — apply, snapshots, soft state, ReadIndex answers;
//! - [`bootstrap`]: opening the WAL and snapshot, `--force-new-cluster`, starting a new
//!   member or joining an existing cluster;
//! - [`membership`]: member add/remove/update/promote, MoveLeader, publishing this
//!   member's attributes, and applying conf changes;
//! - [`lease_forward`]: lease work of the leader and the forwarding of keep-alives and
//!   TimeToLive from followers to the leader;
//! - [`slow_disk`]: etcd's "slow fdatasync" and late-heartbeat warnings;
//! - [`token_wait`]: commands whose simple token comes from an entry not applied yet.
//!
//! Invariants:
//! - nothing is answered before the entry carrying it is committed and applied;
//! - a client waits at most `request_timeout` (etcd's `ReqTimeout`): proposals that are
//!   dropped (no leader) are retried until then, then fail with etcd's timeout error;
//! - apply is idempotent (`StateMachine::apply_write` skips entries at or below the
//!   store's consistent index).

pub mod auto_compaction;
mod bootstrap;
mod lease_forward;
mod membership;
mod ready;
mod slow_disk;
mod token_wait;

pub use bootstrap::{open, snap_dir, start};
pub use lease_forward::LEASE_FORWARDS_MAX;
pub use ready::run;

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures::channel::oneshot;
use prost::Message as _;
use raft::eraftpb::{ConfChange, HardState, Message};
use raft::{RawNode, StateRole};
use tern_storage::wal::Wal;

use crate::error::EtcdError;
use crate::membership::cluster::{MemberRecord, Membership};
use crate::proto::etcdserverpb as pb;
use crate::raft::log_store::LogStore;
use crate::raft::transport::Transport;
use crate::runtime::Wakeup;
use crate::state::client::{Command, Reply};
use crate::state::envelope::{Body, Envelope};
use crate::state::machine::StateMachine;
use crate::state::LeaseCommand;
use membership::LeaderTransfer;

/// Bound on client requests waiting for a leader before they are proposed.
pub const UNPROPOSED_MAX: usize = 16 * 1024;
/// Bound on linearizable reads waiting for the next ReadIndex round.
pub const READS_WAITING_MAX: usize = 64 * 1024;
/// A ReadIndex round not answered within this long is sent again (etcd's
/// `readIndexRetryTime`). raft drops a round silently when it cannot serve it: a follower
/// that knows no leader, a leader that has not yet committed an entry of its own term, or a
/// message lost on the way. Without the resend, reads sent in such a moment (a client that
/// connects while the server starts) wait for the request timeout.
pub const READ_INDEX_RETRY_INTERVAL: Duration = Duration::from_millis(500);
/// Entries kept in the log below a snapshot, so that a follower slightly behind catches
/// up from the log rather than by a snapshot (etcd: `SnapshotCatchUpEntries`).
pub const SNAPSHOT_CATCH_UP_ENTRIES: u64 = 5000;

/// What the node needs from the command line.
#[derive(Clone, Debug)]
pub struct RaftOptions {
    pub data_dir: PathBuf,
    pub listen_peer_addrs: Vec<SocketAddr>,
    /// The members named by `--initial-cluster` (with their derived IDs).
    pub initial_members: Vec<MemberRecord>,
    /// `--initial-cluster-state new`.
    pub new_cluster: bool,
    pub heartbeat_interval_ms: u64,
    pub election_timeout_ms: u64,
    pub snapshot_count: u64,
    pub force_new_cluster: bool,
    /// `--initial-cluster-token` (mixed into the IDs of members added at runtime).
    pub cluster_token: String,
    /// Peer TLS (`--peer-cert-file` and friends): set when the peer URLs are https://.
    pub peer_tls: Option<std::sync::Arc<crate::net::tls::PeerTls>>,
    /// `--quota-backend-bytes` as etcd reads it (`state::machine::quota_backend_bytes`):
    /// None disables the quota.
    pub quota_backend_bytes: Option<u64>,
    /// `--auto-compaction-mode` and `--auto-compaction-retention` (None: off).
    pub auto_compaction: Option<auto_compaction::AutoCompaction>,
}

impl RaftOptions {
    /// etcd's `ReqTimeout`: 5 s plus two election timeouts.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(5000 + 2 * self.election_timeout_ms)
    }
}

/// A membership request waiting for its ConfChange to apply.
pub enum MemberReply {
    Add(oneshot::Sender<Result<pb::MemberAddResponse, EtcdError>>),
    Remove(oneshot::Sender<Result<pb::MemberRemoveResponse, EtcdError>>),
    Update(oneshot::Sender<Result<pb::MemberUpdateResponse, EtcdError>>),
    Promote(oneshot::Sender<Result<pb::MemberPromoteResponse, EtcdError>>),
}

enum Waiter {
    Write(WriteReply),
    Member(MemberReply),
    /// This member's own attribute publish.
    Publish,
    ClusterVersion,
}

struct Pending {
    waiter: Waiter,
    deadline: Instant,
}

/// A proposal not yet accepted by raft (no leader known yet).
struct Unproposed {
    request_id: u64,
    /// Shared with the raft entry once proposed (kept for a proposal raft drops).
    data: bytes::Bytes,
    conf_change: Option<ConfChange>,
}

/// A local raft snapshot decided at `raft_index`, waiting for the backend to hold that index
/// durably before its file is saved (`ready.rs`, `maybe_snapshot`).
struct LocalSnapshot {
    snapshot: raft::eraftpb::Snapshot,
}

/// Raft snapshot work running off the executor (`ready.rs`).
#[derive(Default)]
struct SnapshotWork {
    /// The local snapshot decided and not yet saved.
    local: Option<LocalSnapshot>,
    /// Its file is being saved on the blocking pool.
    saving: bool,
    /// A leader's snapshot at this raft index is being installed: the ready loop waits.
    installing: Option<u64>,
    /// The leader's snapshot whose database is in place (raft's ready then carries it).
    installed_raft_index: u64,
}

#[derive(Default)]
struct Reads {
    waiting: Vec<Command>,
    waiting_since: Option<Instant>,
    /// ReadIndex rounds sent, by request context.
    in_flight: HashMap<u64, ReadRound>,
    /// Rounds that know their read index, waiting for apply to reach it.
    at_index: VecDeque<(u64, Vec<Command>)>,
    next_ctx: u64,
}

/// One ReadIndex round: the reads it serves, when it began (for the request timeout) and
/// when it was last sent to raft (for `READ_INDEX_RETRY_INTERVAL`).
struct ReadRound {
    commands: Vec<Command>,
    started: Instant,
    last_sent: Instant,
}

pub struct Node {
    pub id: u64,
    pub cluster_id: u64,
    raw: RawNode<LogStore>,
    log: LogStore,
    wal: Wal,
    pub state: Rc<RefCell<StateMachine>>,
    pub membership: Membership,
    pub transport: Transport,
    pub wake: Rc<Wakeup>,
    options: RaftOptions,
    pending: HashMap<u64, Pending>,
    unproposed: VecDeque<Unproposed>,
    reads: Reads,
    next_request_id: u64,
    leader_id: u64,
    term: u64,
    published: bool,
    publish_proposed_at: Option<Instant>,
    version_proposed_at: Option<Instant>,
    /// Fired once this member's attributes are published (then it serves clients).
    serving: Option<oneshot::Sender<()>>,
    last_snapshot_index: u64,
    snapshot_dir: PathBuf,
    /// Snapshot work in flight off the executor (`ready.rs`).
    snapshot_work: SnapshotWork,
    /// The last raft index raft handed to apply (a committed entry or a snapshot); raft
    /// is never told more is applied (`ready.rs`, `advance_applied`).
    handed_raft_index: u64,
    /// Bytes of entries stepped into raft since the last ready (`ready.rs`).
    stepped_entry_bytes: u64,
    /// Bytes of WAL appends queued by the ready loop and not yet durable (`ready.rs`).
    wal_bytes_in_flight: usize,
    leader_transfers: Vec<LeaderTransfer>,
    /// `UNSAFE_LOCAL_READS_ENV` (always false without the `test-hooks` feature).
    unsafe_local_reads: bool,
    /// Raft entries handed to the WAL since start (for entries-per-fsync).
    entries_written: u64,
    /// The newest hard state raft let us write without a sync (only its commit index
    /// moved: `Ready::must_sync` is false). It rides along with the next WAL batch that
    /// must sync anyway, so a commit-index update never costs a device flush of its own
    /// (etcd's `raft.MustSync` does the same). Losing it in a crash is harmless: the
    /// commit index is learned again from the log and the leader.
    unsynced_hard_state: Option<HardState>,
    /// When this member applied its own removal.
    removed_at: Option<Instant>,
    /// Follower: Renew/TimeToLive waiting for a leader to forward to, with their deadline.
    lease_forwards: VecDeque<(Command, Instant)>,
    /// Leader: heartbeats to each follower, for etcd's late-heartbeat warning.
    heartbeats: slow_disk::HeartbeatDetector,
    /// The last WAL batch checked for etcd's "slow fdatasync" warning.
    slow_fdatasync: slow_disk::SlowFdatasync,
    /// Commands waiting for the entry that issued their simple token (`token_wait`).
    token_waits: token_wait::TokenWaits,
}

/// Set to `1` in a member's environment, this deliberately breaks linearizable reads:
/// they are served from local state without ReadIndex. It exists only so that
/// tests/raft_cluster.rs can show that its linearizability checker catches stale reads;
/// the server warns loudly when it is set. Only a build with the `test-hooks` cargo
/// feature reads it (the tests' build: Cargo.toml's self dev-dependency turns it on), so
/// a release binary ignores it.
#[cfg(feature = "test-hooks")]
pub const UNSAFE_LOCAL_READS_ENV: &str = "TERN_TEST_UNSAFE_LOCAL_READS";

/// `RawNode::propose` for a normal entry, with the entry's data shared with `data` rather
/// than copied: the same MsgPropose step that `propose` makes (raft-rs 0.7), so raft takes
/// or drops it exactly as it would; the caller keeps `data` for a dropped proposal.
fn propose_shared(raw: &mut RawNode<LogStore>, data: bytes::Bytes) -> raft::Result<()> {
    let entry = raft::eraftpb::Entry {
        data,
        ..Default::default()
    };
    let mut m = Message::default();
    m.set_msg_type(raft::eraftpb::MessageType::MsgPropose);
    m.from = raw.raft.id;
    m.set_entries(vec![entry].into());
    raw.raft.step(m)
}

fn fail(command: Command, e: EtcdError) {
    command.fail(e)
}

fn fail_member(reply: MemberReply, e: EtcdError) {
    match reply {
        MemberReply::Add(r) => drop(r.send(Err(e))),
        MemberReply::Remove(r) => drop(r.send(Err(e))),
        MemberReply::Update(r) => drop(r.send(Err(e))),
        MemberReply::Promote(r) => drop(r.send(Err(e))),
    }
}

/// Whether a Txn only reads (then it is served as a read, like etcd's `isTxnReadonly`),
/// and whether all its reads are serializable.
fn txn_reads(req: &pb::TxnRequest) -> (bool, bool) {
    use pb::request_op::Request;
    let mut read_only = true;
    let mut serializable = true;
    for op in req.success.iter().chain(req.failure.iter()) {
        match &op.request {
            Some(Request::RequestRange(r)) => serializable &= r.serializable,
            Some(Request::RequestTxn(t)) => {
                let (ro, s) = txn_reads(t);
                read_only &= ro;
                serializable &= s;
            }
            _ => read_only = false,
        }
    }
    (read_only, serializable)
}

/// Who waits for a proposed write: the reply half of the client's command. The request
/// itself goes into the entry, and every member, this one included, applies what the
/// committed entry's bytes say (`write_command`), never this member's copy of it.
pub(super) enum WriteReply {
    Put(Reply<pb::PutResponse>),
    DeleteRange(Reply<pb::DeleteRangeResponse>),
    Txn(Reply<pb::TxnResponse>),
    Compact(Reply<pb::CompactionResponse>),
    Alarm(Reply<pb::AlarmResponse>),
    LeaseGrant(Reply<pb::LeaseGrantResponse>),
    LeaseRevoke(Reply<pb::LeaseRevokeResponse>),
    LeaseCheckpoint(Reply<()>),
    Auth(Reply<crate::auth::AuthReply>),
}

impl WriteReply {
    fn fail(self, e: EtcdError) {
        match self {
            WriteReply::Put(r) => drop(r.send(Err(e))),
            WriteReply::DeleteRange(r) => drop(r.send(Err(e))),
            WriteReply::Txn(r) => drop(r.send(Err(e))),
            WriteReply::Compact(r) => drop(r.send(Err(e))),
            WriteReply::Alarm(r) => drop(r.send(Err(e))),
            WriteReply::LeaseGrant(r) => drop(r.send(Err(e))),
            WriteReply::LeaseRevoke(r) => drop(r.send(Err(e))),
            WriteReply::LeaseCheckpoint(r) => drop(r.send(Err(e))),
            WriteReply::Auth(r) => drop(r.send(Err(e))),
        }
    }
}

/// Splits a write command into the body its entry carries and the reply that waits for it.
fn split_write(command: Command) -> (Body, WriteReply) {
    match command {
        Command::Put(req, r) => (Body::Put(req), WriteReply::Put(r)),
        Command::DeleteRange(req, r) => (Body::DeleteRange(req), WriteReply::DeleteRange(r)),
        Command::Txn(req, r) => (Body::Txn(req), WriteReply::Txn(r)),
        Command::Compact(req, r) => (Body::Compaction(req), WriteReply::Compact(r)),
        Command::Alarm(req, r) => (Body::Alarm(req), WriteReply::Alarm(r)),
        Command::Lease(LeaseCommand::Grant(req, r)) => {
            (Body::LeaseGrant(req), WriteReply::LeaseGrant(r))
        }
        Command::Lease(LeaseCommand::Revoke(req, r)) => {
            (Body::LeaseRevoke(req), WriteReply::LeaseRevoke(r))
        }
        Command::Lease(LeaseCommand::Checkpoint(batch, r)) => {
            (Body::LeaseCheckpoint(batch), WriteReply::LeaseCheckpoint(r))
        }
        Command::Auth(op, r) => (
            Body::Auth(crate::auth::AuthRequest { op: Some(op) }),
            WriteReply::Auth(r),
        ),
        _ => unreachable!("only writes are proposed"),
    }
}

/// The command the state machine applies for a committed write `body`, answered to
/// `reply` when this member's client waits for it. Returns the reply back if it does not
/// fit the body (it waits for some other request), and `None` for bodies that are not
/// key-space writes (members, cluster version).
fn write_command(body: Body, reply: Option<WriteReply>) -> Option<(Command, Option<WriteReply>)> {
    // Attaches the waiting reply if it is of the body's kind, else a reply nobody reads.
    macro_rules! attach {
        ($variant:ident, |$r:ident| $make:expr) => {
            match reply {
                Some(WriteReply::$variant($r)) => ($make, None),
                other => {
                    let $r = oneshot::channel().0;
                    ($make, other)
                }
            }
        };
    }
    Some(match body {
        Body::Put(req) => attach!(Put, |r| Command::Put(req, r)),
        Body::DeleteRange(req) => attach!(DeleteRange, |r| Command::DeleteRange(req, r)),
        Body::Txn(req) => attach!(Txn, |r| Command::Txn(req, r)),
        Body::Compaction(req) => attach!(Compact, |r| Command::Compact(req, r)),
        Body::Alarm(req) => attach!(Alarm, |r| Command::Alarm(req, r)),
        Body::LeaseGrant(req) => {
            attach!(LeaseGrant, |r| Command::Lease(LeaseCommand::Grant(req, r)))
        }
        Body::LeaseRevoke(req) => {
            attach!(LeaseRevoke, |r| Command::Lease(LeaseCommand::Revoke(
                req, r
            )))
        }
        Body::LeaseCheckpoint(batch) => attach!(LeaseCheckpoint, |r| Command::Lease(
            LeaseCommand::Checkpoint(batch, r)
        )),
        // An auth entry without an op (or with a read, which is never proposed) changes
        // nothing: it applies as an entry that changes no key.
        Body::Auth(crate::auth::AuthRequest { op: Some(op) }) if !op.is_read() => {
            attach!(Auth, |r| Command::Auth(op, r))
        }
        Body::Member(_) | Body::ClusterVersion(_) | Body::Auth(_) => return None,
    })
}

impl Node {
    pub fn request_timeout(&self) -> Duration {
        self.options.request_timeout()
    }

    pub fn leader_id(&self) -> u64 {
        self.leader_id
    }

    pub fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    /// A new command from a network core.
    pub fn submit(&mut self, command: Command) {
        // The client's credential: reads carry it to where they are served; a write's
        // caller is resolved now and travels in its entry.
        let (credential, command) = match command {
            Command::As(credential, inner) => (Some(credential), *inner),
            other => (None, other),
        };
        if self.removed_at.is_some() {
            // A removed member serves nothing more (etcd stops it): clients move on to
            // another endpoint.
            fail(command, EtcdError::Stopped);
            return;
        }
        // A simple token issued by an entry this member has not applied yet: the command
        // waits for that entry (`token_wait`), as etcd's does.
        if let Some(credential) = &credential {
            let index = self.state.borrow().unapplied_token_index(credential);
            if let Some(index) = index.filter(|_| command.needs_caller()) {
                self.wait_for_token(index, Command::As(credential.clone(), Box::new(command)));
                return;
            }
        }
        // A learner answers only what needs no vote (etcd's learner guard in v3rpc):
        // serializable reads, Status, MemberList and membership calls (forwarded).
        if self
            .membership
            .members
            .get(&self.id)
            .is_some_and(|m| m.is_learner)
        {
            let allowed = match &command {
                Command::Range(req, _) => req.serializable,
                Command::RangeChunk(req, _) => req.range.serializable,
                Command::Txn(req, _) => txn_reads(req) == (true, true),
                Command::Put(..) | Command::DeleteRange(..) | Command::Compact(..) => false,
                // etcd's learners serve no lease operations.
                Command::Lease(_) => false,
                _ => true,
            };
            if !allowed {
                fail(command, EtcdError::NotSupportedForLearner);
                return;
            }
        }
        let with_credential = |command: Command| match &credential {
            Some(credential) => Command::As(credential.clone(), Box::new(command)),
            None => command,
        };
        let admin_only = matches!(
            command,
            Command::MemberAdd(..)
                | Command::MemberRemove(..)
                | Command::MemberUpdate(..)
                | Command::MemberPromote(..)
                | Command::MoveLeader(..)
                | Command::Snapshot(..)
        );
        let lease_keys_read = match &command {
            Command::Lease(LeaseCommand::TimeToLive(req, _)) if req.keys => Some(req.id),
            _ => None,
        };
        if admin_only || lease_keys_read.is_some() {
            let mut state = self.state.borrow_mut();
            let checked = state
                .caller_of(credential.as_ref())
                .map(crate::auth::Caller::Client)
                .and_then(|caller| match lease_keys_read {
                    Some(id) => state.check_lease_read_of(caller, id),
                    None => state.check_admin_of(&caller),
                });
            drop(state);
            if let Err(e) = checked {
                fail(command, e);
                return;
            }
        }
        // etcd's quota check at the API edge (`v3rpc/quota.go`): a write that would take
        // the backend past the quota raises NOSPACE (through raft, so every member arms it)
        // and fails with etcd's "database space exceeded".
        if let Some(quota) = self.options.quota_backend_bytes {
            if self.state.borrow().exceeds_quota(&command, quota) {
                self.raise_no_space();
                fail(command, EtcdError::NoSpace);
                self.wake.wake();
                return;
            }
        }
        match command {
            Command::Put(..) | Command::DeleteRange(..) | Command::Compact(..) => {
                self.propose_client_write(credential.as_ref(), command)
            }
            Command::Txn(ref req, _) => match txn_reads(req) {
                (false, _) => self.propose_client_write(credential.as_ref(), command),
                (true, true) => self
                    .state
                    .borrow_mut()
                    .handle_read(with_credential(command)),
                (true, false) => self.queue_read(with_credential(command)),
            },
            Command::Range(ref req, _) if !req.serializable => {
                self.queue_read(with_credential(command))
            }
            Command::RangeChunk(ref req, _) if !req.range.serializable => {
                self.queue_read(with_credential(command))
            }
            // Auth: changes are entries; reads of users and roles are linearizable, as
            // etcd's (which go through raft); the status and a watch's check are local.
            Command::Auth(ref op, _) if !op.is_read() => {
                self.propose_client_write(credential.as_ref(), command)
            }
            Command::Auth(
                crate::auth::AuthOp::Status(_) | crate::auth::AuthOp::CheckRange(_),
                _,
            ) => self
                .state
                .borrow_mut()
                .handle_read(with_credential(command)),
            Command::Auth(..) => self.queue_read(with_credential(command)),
            Command::MemberAdd(req, reply) => self.member_add(req, reply),
            Command::MemberRemove(req, reply) => self.member_remove(req, reply),
            Command::MemberUpdate(req, reply) => self.member_update(req, reply),
            Command::MemberPromote(req, reply) => self.member_promote(req, reply),
            Command::MoveLeader(req, reply) => self.move_leader(req, reply),
            Command::Snapshot(reply) => {
                let source = self.state.borrow_mut().snapshot_source(&self.membership);
                let _ = reply.send(source);
            }
            Command::MemberList(reply) => {
                let _ = reply.send(Ok(pb::MemberListResponse {
                    header: Some(self.header()),
                    members: self.membership.list(),
                }));
            }
            // Lease state is replicated: grants (with the id chosen here, before
            // proposing, as etcd does) and revokes are proposals.
            Command::Lease(LeaseCommand::Grant(mut req, reply)) => {
                if req.id == 0 {
                    req.id = self.state.borrow_mut().next_lease_id();
                }
                self.propose_client_write(
                    credential.as_ref(),
                    Command::Lease(LeaseCommand::Grant(req, reply)),
                )
            }
            Command::Lease(LeaseCommand::Revoke(..)) => {
                self.propose_client_write(credential.as_ref(), command)
            }
            // Keep-alives and TimeToLive are the leader's to answer (only it knows the
            // deadlines): a follower forwards them over the peer transport.
            Command::Lease(LeaseCommand::Renew(..) | LeaseCommand::TimeToLive(..))
                if !self.is_leader() =>
            {
                self.forward_lease(command)
            }
            Command::Alarm(ref req, _)
                if req.action != pb::alarm_request::AlarmAction::Get as i32 =>
            {
                self.propose_client_write(credential.as_ref(), command)
            }
            // Commands raft does not order: status, hashes, alarm GET, watch, the leader's
            // keep-alives, lease lists; none may advance the applied index.
            other => self.state.borrow_mut().handle_read(with_credential(other)),
        }
        self.wake.wake();
    }

    /// Proposes this member's NOSPACE alarm unless it is armed already (etcd proposes it
    /// on every refused write; the entry would change nothing).
    fn raise_no_space(&mut self) {
        if self.state.borrow().no_space_armed() {
            return;
        }
        let (reply, _) = oneshot::channel();
        let req = pb::AlarmRequest {
            action: pb::alarm_request::AlarmAction::Activate as i32,
            member_id: self.id,
            alarm: pb::AlarmType::Nospace as i32,
        };
        self.propose_write(Command::Alarm(req, reply));
    }

    pub fn header(&self) -> pb::ResponseHeader {
        pb::ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.id,
            revision: 0,
            raft_term: self.term,
        }
    }

    fn new_request_id(&mut self) -> u64 {
        self.next_request_id = self.next_request_id.wrapping_add(1);
        self.next_request_id
    }

    /// Proposes the server's own write (no caller: never permission-checked).
    fn propose_write(&mut self, command: Command) {
        self.propose_write_as(command, None)
    }

    /// Proposes a client's write; its entry names the client its `credential` stands for
    /// (an unknown token fails the request now, etcd's "invalid auth token").
    fn propose_client_write(
        &mut self,
        credential: Option<&crate::auth::Credential>,
        command: Command,
    ) {
        let caller = self.state.borrow_mut().caller_of(credential);
        match caller {
            Ok(caller) => self.propose_write_as(command, Some(caller)),
            Err(e) => fail(command, e),
        }
    }

    fn propose_write_as(&mut self, command: Command, caller: Option<crate::auth::AuthInfo>) {
        let (body, reply) = split_write(command);
        let request_id = self.new_request_id();
        let mut env = Envelope::new(request_id, self.id, body);
        env.caller = caller;
        self.propose(request_id, env.encode_to_vec(), None, Waiter::Write(reply));
    }

    fn propose(
        &mut self,
        request_id: u64,
        data: impl Into<bytes::Bytes>,
        conf_change: Option<ConfChange>,
        waiter: Waiter,
    ) {
        let deadline = Instant::now() + self.request_timeout();
        if self.unproposed.len() >= UNPROPOSED_MAX {
            self.answer_error(waiter, EtcdError::TooManyRequests);
            return;
        }
        self.pending
            .insert(request_id, Pending { waiter, deadline });
        let proposal = Unproposed {
            request_id,
            data: data.into(),
            conf_change,
        };
        if self.leader_id == 0 || !self.unproposed.is_empty() {
            self.unproposed.push_back(proposal);
            return;
        }
        self.try_propose(proposal);
    }

    /// Hands a proposal to raft; keeps it for later if raft drops it (no leader).
    fn try_propose(&mut self, p: Unproposed) {
        let result = match &p.conf_change {
            Some(cc) => self.raw.propose_conf_change(p.data.to_vec(), cc.clone()),
            None => propose_shared(&mut self.raw, p.data.clone()),
        };
        match result {
            Ok(()) => {}
            Err(raft::Error::ProposalDropped) => self.unproposed.push_back(p),
            Err(e) => {
                crate::warn!("proposal refused", "error" => e.to_string());
                if let Some(pending) = self.pending.remove(&p.request_id) {
                    let err = match e {
                        raft::Error::ConfChangeError(_) => EtcdError::MemberNotEnoughStarted,
                        _ => EtcdError::Timeout,
                    };
                    self.answer_error(pending.waiter, err);
                }
            }
        }
    }

    fn answer_error(&mut self, waiter: Waiter, e: EtcdError) {
        match waiter {
            Waiter::Write(reply) => {
                crate::metrics::STATE.proposals_failed.add(1, false);
                reply.fail(e)
            }
            Waiter::Member(reply) => fail_member(reply, e),
            Waiter::Publish => self.publish_proposed_at = None,
            Waiter::ClusterVersion => self.version_proposed_at = None,
        }
    }

    fn queue_read(&mut self, command: Command) {
        if self.unsafe_local_reads {
            // Fault injection for the linearizability test only (see `UNSAFE_LOCAL_READS_ENV`).
            self.state.borrow_mut().handle_read(command);
            return;
        }
        if self.reads.waiting.len() >= READS_WAITING_MAX {
            fail(command, EtcdError::TooManyRequests);
            return;
        }
        if self.reads.waiting.is_empty() {
            self.reads.waiting_since = Some(Instant::now());
        }
        self.reads.waiting.push(command);
    }

    /// Whether raft would act on a ReadIndex request now rather than drop it: a leader is
    /// known and, on the leader itself, an entry of its term is committed (raft-rs drops
    /// the request before that, where etcd's raft queues it).
    fn read_index_is_heard(&self) -> bool {
        let raft = &self.raw.raft;
        raft.leader_id != raft::INVALID_ID
            && (raft.state != raft::StateRole::Leader || raft.commit_to_current_term())
    }

    /// Starts one ReadIndex round for every read queued since the last one (one round
    /// serves all of them; etcd's linearizableReadLoop batches the same way). Reads keep
    /// waiting while raft would drop the round.
    fn start_read_round(&mut self) {
        if self.reads.waiting.is_empty() || !self.read_index_is_heard() {
            return;
        }
        self.reads.next_ctx += 1;
        let ctx = self.reads.next_ctx;
        let commands = std::mem::take(&mut self.reads.waiting);
        let started = self.reads.waiting_since.take().unwrap_or_else(Instant::now);
        let now = Instant::now();
        self.reads.in_flight.insert(
            ctx,
            ReadRound {
                commands,
                started,
                last_sent: now,
            },
        );
        self.raw.read_index(ctx.to_be_bytes().to_vec());
    }

    /// Sends again the rounds raft may have dropped (`READ_INDEX_RETRY_INTERVAL`). A late
    /// answer to an earlier send finds its round gone and is ignored.
    fn resend_unanswered_reads(&mut self, now: Instant) {
        if !self.read_index_is_heard() {
            return;
        }
        let mut resend = Vec::new();
        for (ctx, round) in &mut self.reads.in_flight {
            if now.duration_since(round.last_sent) >= READ_INDEX_RETRY_INTERVAL {
                round.last_sent = now;
                resend.push(*ctx);
            }
        }
        for ctx in resend {
            self.raw.read_index(ctx.to_be_bytes().to_vec());
        }
    }

    pub fn last_raft_index(&self) -> u64 {
        self.log.last_raft_index()
    }

    pub fn step(&mut self, message: Message) {
        if let Err(e) = self.raw.step(message) {
            crate::debug!("raft dropped a peer message", "error" => e.to_string());
        }
        self.wake.wake();
    }

    pub fn report_unreachable(&mut self, member_id: u64) {
        self.raw.report_unreachable(member_id);
    }

    pub fn report_snapshot(&mut self, member_id: u64, ok: bool) {
        let status = if ok {
            raft::SnapshotStatus::Finish
        } else {
            raft::SnapshotStatus::Failure
        };
        self.raw.report_snapshot(member_id, status);
    }

    /// One heartbeat interval passed: tick raft, retry dropped proposals, expire waits.
    pub fn tick(&mut self) {
        self.raw.tick();
        self.state.borrow_mut().commit_backend_if_due();
        let now = Instant::now();
        self.sync_lease_role();
        self.propose_lease_work();
        self.dispatch_lease_forwards(now);
        if self.leader_id != 0 {
            let retry: Vec<Unproposed> = self.unproposed.drain(..).collect();
            for p in retry {
                if self.pending.contains_key(&p.request_id) {
                    self.try_propose(p);
                }
            }
        }
        let expired: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(p) = self.pending.remove(&id) {
                self.unproposed.retain(|u| u.request_id != id);
                let e = if self.leader_id == 0 {
                    EtcdError::TimeoutDueToLeaderFail
                } else {
                    EtcdError::Timeout
                };
                let e = if matches!(p.waiter, Waiter::Write(_)) || self.leader_id != 0 {
                    e
                } else {
                    EtcdError::Timeout
                };
                self.answer_error(p.waiter, e);
            }
        }
        let timeout = self.request_timeout();
        let stale: Vec<u64> = self
            .reads
            .in_flight
            .iter()
            .filter(|(_, round)| now.duration_since(round.started) >= timeout)
            .map(|(ctx, _)| *ctx)
            .collect();
        for ctx in stale {
            if let Some(round) = self.reads.in_flight.remove(&ctx) {
                for c in round.commands {
                    fail(c, EtcdError::Timeout);
                }
            }
        }
        self.resend_unanswered_reads(now);
        if let Some(since) = self.reads.waiting_since {
            if now.duration_since(since) >= timeout {
                for c in self.reads.waiting.drain(..) {
                    fail(c, EtcdError::Timeout);
                }
                self.reads.waiting_since = None;
            }
        }
        self.maybe_publish(now);
        self.finish_leader_transfers(now);
        self.release_token_waits(now);
        self.wake.wake();
    }

    /// Steps 1–7 of the module comment for one ready; `node` is passed as `Rc` so that
    /// step 7 can run when the WAL append completes.
    /// Sends raft messages, unless this member was removed from the cluster: it then falls
    /// silent (after a few heartbeats, so the others learn the removal is committed) and
    /// the remaining members elect a leader among themselves, as when etcd stops a
    /// removed member.
    fn send(&mut self, messages: Vec<Message>) {
        if let Some(at) = self.removed_at {
            if at.elapsed() > Duration::from_millis(3 * self.options.heartbeat_interval_ms) {
                return;
            }
        }
        self.heartbeats.warn(&messages, Instant::now());
        self.transport.send(messages);
    }

    /// Keeps the raft gauges of `/metrics` current (etcd sets them in its ready loop).
    pub fn publish_metrics(&self) {
        let s = &crate::metrics::STATE;
        let hard_state = self.log.hard_state();
        s.proposals_committed.set(hard_state.commit as i64);
        s.proposals_applied
            .set(self.state.borrow().raft_applied_index() as i64);
        s.proposals_pending.set(self.pending.len() as i64);
        s.wal_write_bytes.set(self.wal.stats().bytes_written as i64);
    }

    /// Logs how well group commit batched: raft entries per WAL fdatasync since start.
    pub fn log_wal_stats(&self) {
        let stats = self.wal.stats();
        let per_fsync = self.entries_written as f64 / stats.fdatasyncs.max(1) as f64;
        crate::info!(
            "wal statistics",
            "entries" => self.entries_written,
            "fdatasyncs" => stats.fdatasyncs,
            "entries-per-fsync" => format!("{per_fsync:.2}"),
            "bytes-written" => stats.bytes_written
        );
    }
}

#[cfg(test)]
mod tests {
    //! Checks how a committed write's body and a waiting client's reply meet: the command
    //! applied is built from the body alone, and a reply of another kind is handed back.
    use super::*;

    fn put(key: &str) -> pb::PutRequest {
        pb::PutRequest {
            key: key.as_bytes().to_vec().into(),
            value: b"v".to_vec().into(),
            ..Default::default()
        }
    }

    #[test]
    fn the_applied_request_comes_from_the_entry_and_the_reply_from_the_waiter() {
        let (tx, mut rx) = oneshot::channel();
        let (body, reply) = split_write(Command::Put(put("client"), tx));
        assert!(matches!(&body, Body::Put(req) if &req.key[..] == b"client"));
        // What the log says wins, whatever this member kept in memory.
        let (command, unfit) = write_command(Body::Put(put("from-log")), Some(reply)).unwrap();
        assert!(unfit.is_none());
        let Command::Put(req, r) = command else {
            panic!("a put")
        };
        assert_eq!(&req.key[..], b"from-log");
        let _ = r.send(Ok(pb::PutResponse::default()));
        assert!(matches!(rx.try_recv(), Ok(Some(Ok(_)))));
    }

    #[test]
    fn a_reply_of_another_kind_is_handed_back() {
        let (tx, _rx) = oneshot::channel();
        let (_, reply) = split_write(Command::Compact(pb::CompactionRequest::default(), tx));
        let (command, unfit) = write_command(Body::Put(put("k")), Some(reply)).unwrap();
        assert!(matches!(command, Command::Put(..)));
        assert!(matches!(unfit, Some(WriteReply::Compact(_))));
        // Bodies that are not key-space writes make no command.
        assert!(write_command(Body::ClusterVersion("3.4.0".into()), None).is_none());
    }
}
