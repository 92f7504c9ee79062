//! The raft node: the one ready loop in front of the state machine.
//!
//! Everything here runs on the state executor (pinned to its core); no borrow of the node
//! is held across an `.await`, so `RawNode::step`/`propose` never run between `ready()`
//! and `advance_append_async()` of one ready.
//!
//! The ready loop follows raft-rs's numbered walkthrough (`raft::raw_node` docs), with the
//! asynchronous-persistence variant (`advance_append_async` + `on_persist_ready`), so that
//! the WAL's group commit overlaps with sending and applying:
//!
//! 1. soft state: who leads, at which term (logged in etcd's words);
//! 2. messages: sent at once — a leader may replicate before its own fsync (raft thesis
//!    §10.2.1); a follower's messages only come as persisted messages (step 7);
//! 3. snapshot from the leader: restore the state machine, then the log restarts after it;
//! 4. committed entries: apply them (they are durable on a quorum and locally);
//! 5. new entries and hard state: stored in the in-memory log now (raft-rs reads them
//!    from `Storage` after `advance_append_async`), and queued on the WAL;
//! 6. read states: ReadIndex rounds that completed;
//! 7. once the WAL append is durable: `on_persist_ready`, then the persisted messages
//!    (votes, append responses), which must never leave before their state is durable.
//!
//! Invariants:
//! - nothing is answered before the entry carrying it is committed and applied;
//! - a client waits at most `request_timeout` (etcd's `ReqTimeout`): proposals that are
//!   dropped (no leader) are retried until then, then fail with etcd's timeout error;
//! - apply is idempotent (`StateMachine::apply_write` skips entries at or below the
//!   store's consistent index).

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use futures::channel::oneshot;
use prost::Message as _;
use protobuf::Message as _;
use raft::eraftpb::{
    ConfChange, ConfChangeType, ConfState, Entry, EntryType, HardState, Message, Snapshot,
};
use raft::{RawNode, ReadOnlyOption, StateRole, Storage as _};
use tern_storage::wal::{self, Wal, WalOptions, WalRecord};

use crate::error::EtcdError;
use crate::lease::LeaseCommand;
use crate::membership::cluster::{MemberRecord, Membership};
use crate::proto::etcdserverpb as pb;
use crate::raft::envelope::{Envelope, LeaseForward, LeaseForwardResponse, MemberOp};
use crate::raft::log_store::{self, LogStore};
use crate::raft::snapshot::{self, SnapshotFile};
use crate::raft::transport::{self, Report, Transport};
use crate::server::state_client::Command;
use crate::server::state_machine::{LeaseProposal, StateMachine};

/// Bound on client requests waiting for a leader before they are proposed.
pub const UNPROPOSED_MAX: usize = 16 * 1024;
/// Bound on linearizable reads waiting for the next ReadIndex round.
pub const READS_WAITING_MAX: usize = 64 * 1024;
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
}

impl RaftOptions {
    /// etcd's `ReqTimeout`: 5 s plus two election timeouts.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(5000 + 2 * self.election_timeout_ms)
    }
}

/// A one-shot wake-up for the ready loop (set by whoever gives raft new work).
#[derive(Default)]
pub struct Wakeup {
    flag: Cell<bool>,
    pub(crate) waker: RefCell<Option<Waker>>,
}

impl Wakeup {
    pub fn wake(&self) {
        self.flag.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    async fn wait(&self) {
        std::future::poll_fn(|cx| {
            if self.flag.replace(false) {
                Poll::Ready(())
            } else {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
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
    Write(Command),
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
    data: Vec<u8>,
    conf_change: Option<ConfChange>,
}

#[derive(Default)]
struct Reads {
    waiting: Vec<Command>,
    waiting_since: Option<Instant>,
    /// ReadIndex rounds sent, by request context.
    in_flight: HashMap<u64, (Vec<Command>, Instant)>,
    /// Rounds that know their read index, waiting for apply to reach it.
    at_index: VecDeque<(u64, Vec<Command>)>,
    next_ctx: u64,
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
    leader_transfers: Vec<LeaderTransfer>,
    unsafe_local_reads: bool,
    /// Raft entries handed to the WAL since start (for entries-per-fsync).
    entries_written: u64,
    /// When this member applied its own removal.
    removed_at: Option<Instant>,
    /// Follower: Renew/TimeToLive waiting for a leader to forward to, with their deadline.
    lease_forwards: VecDeque<(Command, Instant)>,
}

/// Bound on lease requests a follower holds while it knows no leader.
pub const LEASE_FORWARDS_MAX: usize = 16 * 1024;

/// Sends a forwarded lease request's answer to the follower once the state machine has
/// replied, wrapping the response with `wrap` (or an error in etcd's words).
fn answer_forwarded<T: 'static>(
    reply: oneshot::Receiver<Result<T, EtcdError>>,
    answer: oneshot::Sender<LeaseForwardResponse>,
    wrap: impl FnOnce(T) -> LeaseForwardResponse + 'static,
) {
    glommio::spawn_local(async move {
        let _ = answer.send(match reply.await {
            Ok(Ok(resp)) => wrap(resp),
            Ok(Err(e)) => forward_error(e),
            Err(_) => forward_error(EtcdError::Stopped),
        });
    })
    .detach();
}

fn forward_error(e: EtcdError) -> LeaseForwardResponse {
    LeaseForwardResponse {
        error: e.message().to_string(),
        ..Default::default()
    }
}

/// Answers the client of a forwarded lease request from the leader's response.
type ForwardReply = Box<dyn FnOnce(Result<LeaseForwardResponse, EtcdError>)>;

/// Sends one forwarded lease request to the leader and answers the client with the
/// leader's response, or with an etcd error (the client's keep-alive retries).
async fn forward_to_leader(urls: Vec<String>, hello: (u64, u64, u64), command: Command) {
    let Command::Lease(lease) = command else {
        unreachable!("only lease requests are forwarded")
    };
    let (request, reply): (LeaseForward, ForwardReply) = match lease {
        LeaseCommand::Renew(req, r) => (
            LeaseForward {
                renew: Some(req),
                ..Default::default()
            },
            Box::new(move |res| {
                let _ = r.send(res.and_then(|resp| resp.renew.ok_or(EtcdError::LeaderChanged)));
            }),
        ),
        LeaseCommand::TimeToLive(req, r) => (
            LeaseForward {
                time_to_live: Some(req),
                ..Default::default()
            },
            Box::new(move |res| {
                let _ =
                    r.send(res.and_then(|resp| resp.time_to_live.ok_or(EtcdError::LeaderChanged)));
            }),
        ),
        other => return fail(Command::Lease(other), EtcdError::NotLeader),
    };
    let answer = transport::forward_lease(&urls, hello, &request).await;
    reply(match answer {
        Ok(resp) if resp.error.is_empty() => Ok(resp),
        Ok(resp) => Err(EtcdError::ALL
            .iter()
            .copied()
            .find(|e| e.message() == resp.error)
            .unwrap_or(EtcdError::LeaderChanged)),
        Err(e) => {
            crate::debug!("cannot forward a lease request to the leader", "error" => e);
            Err(EtcdError::LeaderChanged)
        }
    });
}

/// Set to `1` in a member's environment, this deliberately breaks linearizable reads:
/// they are served from local state without ReadIndex. It exists only so that
/// tests/raft_cluster.rs can show that its linearizability checker catches stale reads;
/// the server warns loudly when it is set.
pub const UNSAFE_LOCAL_READS_ENV: &str = "TERN_TEST_UNSAFE_LOCAL_READS";

/// A MoveLeader waiting for its transferee to lead: (transferee, reply, deadline).
type LeaderTransfer = (
    u64,
    oneshot::Sender<Result<pb::MoveLeaderResponse, EtcdError>>,
    Instant,
);

/// etcd's `maxLearners`.
const MAX_LEARNERS: usize = 1;
/// etcd's `readyPercent` for promoting a learner.
const LEARNER_READY_FRACTION: f64 = 0.9;

/// Where a member's raft state lives under `--data-dir` (etcd's layout: member/wal, member/snap).
pub fn snap_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("member").join("snap")
}

fn unix_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
}

/// A bootstrap ConfChange for `member` at `raft_index` (term 1), as etcd writes them
/// when it starts a new cluster.
fn bootstrap_entry(raft_index: u64, member: &MemberRecord) -> Entry {
    let mut cc = ConfChange::default();
    cc.set_change_type(if member.is_learner {
        ConfChangeType::AddLearnerNode
    } else {
        ConfChangeType::AddNode
    });
    cc.node_id = member.id;
    cc.context = Envelope {
        member: Some(member.clone()),
        member_op: MemberOp::Add as i32,
        ..Default::default()
    }
    .encode_to_vec()
    .into();
    let mut e = Entry::default();
    e.set_entry_type(EntryType::EntryConfChange);
    e.term = 1;
    e.index = raft_index;
    e.data = cc
        .write_to_bytes()
        .expect("encoding a ConfChange cannot fail")
        .into();
    e
}

/// Opens (or creates) this member's WAL and snapshot, and builds its raft node.
#[allow(clippy::too_many_arguments)] // each is one piece of the member being assembled
pub async fn open(
    member_id: u64,
    cluster_id: u64,
    options: RaftOptions,
    opened: Option<(Wal, wal::Recovered)>,
    state: StateMachine,
    transport: Transport,
    wake: Rc<Wakeup>,
    serving: oneshot::Sender<()>,
) -> Result<Node, String> {
    let wal_dir = wal::wal_dir(&options.data_dir);
    let snapshot_dir = snap_dir(&options.data_dir);
    std::fs::create_dir_all(&snapshot_dir)
        .map_err(|e| format!("cannot create {}: {e}", snapshot_dir.display()))?;
    let mut state = state;
    let mut membership = Membership::default();
    let (wal, log, applied, cluster_id) = match opened {
        Some((wal, recovered)) => {
            crate::info!(
                "restarting local member",
                "local-member-id" => format!("{member_id:x}"),
                "commit-index" => recovered.hard_state.map_or(0, |h| h.commit)
            );
            if let Some(torn) = &recovered.torn_tail {
                crate::warn!("cut a torn WAL tail", "segment" => torn.segment.as_path(), "reason" => torn.reason.as_str());
            }
            let marker = recovered.snapshot.unwrap_or_default();
            let mut snap = None;
            let mut conf_state = ConfState::default();
            let mut applied = 0;
            if marker.raft_index > 0 {
                let file = snapshot::load(&snapshot_dir, marker.raft_index, marker.term)?;
                conf_state = file.snapshot.get_metadata().get_conf_state().clone();
                if state.raft_applied_index() >= marker.raft_index {
                    // The backend already holds this snapshot's state (and maybe more).
                    snapshot::restore_membership(&file, &mut membership)?;
                } else {
                    snapshot::restore(&file, &mut state, &mut membership)?;
                }
                applied = marker.raft_index;
                snap = Some(file.snapshot);
            }
            let mut entries = Vec::with_capacity(recovered.entries.len());
            for e in &recovered.entries {
                entries.push(log_store::decode_wal_entry(e)?);
            }
            let hs = recovered.hard_state.unwrap_or_default();
            let hard_state = HardState {
                term: hs.term,
                vote: hs.vote,
                commit: hs.commit.max(marker.raft_index),
                ..Default::default()
            };
            let log = LogStore::new(hard_state, conf_state, snap, entries);
            let cluster_id = if recovered.metadata.cluster_id != 0 {
                recovered.metadata.cluster_id
            } else {
                cluster_id
            };
            (wal, log, applied, cluster_id)
        }
        None => {
            let wal = Wal::create(
                &wal_dir,
                WalOptions::default(),
                wal::Metadata {
                    cluster_id,
                    member_id,
                },
            )
            .await
            .map_err(|e| format!("cannot create the WAL: {e}"))?;
            let mut hard_state = HardState::default();
            let mut entries = Vec::new();
            if options.new_cluster {
                for (i, m) in options.initial_members.iter().enumerate() {
                    entries.push(bootstrap_entry(i as u64 + 1, m));
                }
                hard_state.term = 1;
                hard_state.commit = entries.len() as u64;
                crate::info!(
                    "starting local member",
                    "local-member-id" => format!("{member_id:x}"),
                    "cluster-id" => format!("{cluster_id:x}")
                );
            }
            let mut records: Vec<WalRecord> = entries.iter().map(log_store::wal_record).collect();
            records.push(log_store::wal_hard_state(&hard_state));
            wal.append(records)
                .await
                .map_err(|e| format!("cannot write the WAL: {e}"))?;
            let log = LogStore::new(hard_state, ConfState::default(), None, entries);
            (wal, log, 0, cluster_id)
        }
    };
    if options.force_new_cluster {
        force_new_cluster(member_id, &log, &wal).await?;
    }

    let mut transport = transport;
    for m in membership.members.values() {
        transport.set_peer(m.id, m.peer_urls.clone());
    }
    transport.set_cluster_id(cluster_id);
    let election_tick =
        (options.election_timeout_ms / options.heartbeat_interval_ms.max(1)).max(2) as usize;
    let config = raft::Config {
        id: member_id,
        election_tick,
        heartbeat_tick: 1,
        applied,
        max_size_per_msg: 1 << 20,
        max_inflight_msgs: 256,
        check_quorum: true,
        pre_vote: true,
        read_only_option: ReadOnlyOption::Safe,
        ..Default::default()
    };
    let logger = crate::raft::slog_bridge::logger(member_id);
    let raw = RawNode::new(&config, log.clone(), &logger)
        .map_err(|e| format!("cannot start raft: {e}"))?;
    let last_snapshot_index = log.first_raft_index() - 1;
    state.raft_term = log.hard_state().term;
    Ok(Node {
        id: member_id,
        cluster_id,
        raw,
        log,
        wal,
        state: Rc::new(RefCell::new(state)),
        membership,
        transport,
        wake,
        options,
        pending: HashMap::new(),
        unproposed: VecDeque::new(),
        reads: Reads::default(),
        next_request_id: unix_nanos(),
        leader_id: 0,
        term: 0,
        published: false,
        publish_proposed_at: None,
        version_proposed_at: None,
        serving: Some(serving),
        last_snapshot_index,
        snapshot_dir,
        leader_transfers: Vec::new(),
        entries_written: 0,
        removed_at: None,
        lease_forwards: VecDeque::new(),
        unsafe_local_reads: {
            let on = std::env::var(UNSAFE_LOCAL_READS_ENV).is_ok_and(|v| v == "1");
            if on {
                crate::warn!("linearizable reads are deliberately broken for a test", "env" => UNSAFE_LOCAL_READS_ENV);
            }
            on
        },
    })
}

/// `--force-new-cluster`: keep the data, but make this member the only voter. As etcd
/// does, committed entries are kept, uncommitted ones discarded, and ConfChange entries
/// removing every other member are appended (so that the state survives the next restart).
async fn force_new_cluster(member_id: u64, log: &LogStore, wal: &Wal) -> Result<(), String> {
    let mut hs = log.hard_state();
    let last = log.last_raft_index();
    if hs.commit < last {
        crate::warn!("discarding uncommitted WAL entries", "commit-index" => hs.commit, "last-index" => last);
    }
    let commit = hs.commit;
    // Which members exist as of the commit index: replay the ConfChanges in the log.
    let mut members: Vec<u64> = log.conf_state().voters.clone();
    members.extend(log.conf_state().learners.iter().copied());
    let first = log.first_raft_index();
    if commit >= first {
        for e in log.slice(first, commit + 1) {
            if e.get_entry_type() == EntryType::EntryConfChange {
                if let Ok(cc) = ConfChange::parse_from_bytes(&e.data) {
                    match cc.get_change_type() {
                        ConfChangeType::RemoveNode => members.retain(|m| *m != cc.node_id),
                        _ => {
                            if !members.contains(&cc.node_id) {
                                members.push(cc.node_id)
                            }
                        }
                    }
                }
            }
        }
    }
    let term = log.term_of(commit).unwrap_or(hs.term);
    let mut new_entries = Vec::new();
    let mut raft_index = commit;
    for id in members.into_iter().filter(|m| *m != member_id) {
        raft_index += 1;
        let mut cc = ConfChange::default();
        cc.set_change_type(ConfChangeType::RemoveNode);
        cc.node_id = id;
        cc.context = Envelope {
            member: Some(MemberRecord {
                id,
                ..Default::default()
            }),
            member_op: MemberOp::Remove as i32,
            ..Default::default()
        }
        .encode_to_vec()
        .into();
        let mut e = Entry::default();
        e.set_entry_type(EntryType::EntryConfChange);
        e.term = term;
        e.index = raft_index;
        e.data = cc
            .write_to_bytes()
            .expect("encoding a ConfChange cannot fail")
            .into();
        new_entries.push(e);
    }
    // The uncommitted tail is replaced (a WAL append at commit+1 truncates it).
    let mut keep = if commit >= first {
        log.slice(first, commit + 1)
    } else {
        Vec::new()
    };
    keep.extend(new_entries.iter().cloned());
    let snap = log.snapshot(0, 0).ok();
    let fresh = LogStore::new(hs.clone(), log.conf_state(), snap, keep);
    hs.commit = raft_index;
    fresh.set_hard_state(hs.clone());
    log.replace_with(fresh);
    let mut records: Vec<WalRecord> = new_entries.iter().map(log_store::wal_record).collect();
    records.push(log_store::wal_hard_state(&hs));
    wal.append(records)
        .await
        .map_err(|e| format!("cannot write the WAL: {e}"))?;
    crate::info!("forcing restart of this member as the only one in its cluster", "commit-index" => raft_index);
    Ok(())
}

fn fail(command: Command, e: EtcdError) {
    match command {
        Command::Range(_, r) => drop(r.send(Err(e))),
        Command::Put(_, r) => drop(r.send(Err(e))),
        Command::DeleteRange(_, r) => drop(r.send(Err(e))),
        Command::Txn(_, r) => drop(r.send(Err(e))),
        Command::Compact(_, r) => drop(r.send(Err(e))),
        Command::Alarm(_, r) => drop(r.send(Err(e))),
        Command::Lease(lease) => match lease {
            LeaseCommand::Grant(_, r) => drop(r.send(Err(e))),
            LeaseCommand::Revoke(_, r) => drop(r.send(Err(e))),
            LeaseCommand::Renew(_, r) => drop(r.send(Err(e))),
            LeaseCommand::TimeToLive(_, r) => drop(r.send(Err(e))),
            LeaseCommand::Leases(r) => drop(r.send(Err(e))),
            LeaseCommand::Checkpoint(_, r) => drop(r.send(Err(e))),
        },
        // Other commands are never queued here; dropping the reply answers "stopped".
        other => drop(other),
    }
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

/// The envelope of a write command (without ids).
fn write_envelope(command: &Command) -> Envelope {
    let mut env = Envelope::default();
    match command {
        Command::Put(req, _) => env.put = Some(req.clone()),
        Command::DeleteRange(req, _) => env.delete_range = Some(req.clone()),
        Command::Txn(req, _) => env.txn = Some(req.clone()),
        Command::Compact(req, _) => env.compaction = Some(*req),
        Command::Alarm(req, _) => env.alarm = Some(*req),
        Command::Lease(LeaseCommand::Grant(req, _)) => env.lease_grant = Some(*req),
        Command::Lease(LeaseCommand::Revoke(req, _)) => env.lease_revoke = Some(*req),
        Command::Lease(LeaseCommand::Checkpoint(batch, _)) => {
            env.lease_checkpoint = Some(batch.clone())
        }
        _ => unreachable!("only writes are proposed"),
    }
    env
}

/// A command for a write that no local client waits for (replay, or another member's).
fn detached_command(env: Envelope) -> Option<Command> {
    if let Some(req) = env.put {
        return Some(Command::Put(req, oneshot::channel().0));
    }
    if let Some(req) = env.delete_range {
        return Some(Command::DeleteRange(req, oneshot::channel().0));
    }
    if let Some(req) = env.txn {
        return Some(Command::Txn(req, oneshot::channel().0));
    }
    if let Some(req) = env.compaction {
        return Some(Command::Compact(req, oneshot::channel().0));
    }
    if let Some(req) = env.alarm {
        return Some(Command::Alarm(req, oneshot::channel().0));
    }
    if let Some(req) = env.lease_grant {
        return Some(Command::Lease(LeaseCommand::Grant(
            req,
            oneshot::channel().0,
        )));
    }
    if let Some(req) = env.lease_revoke {
        return Some(Command::Lease(LeaseCommand::Revoke(
            req,
            oneshot::channel().0,
        )));
    }
    if let Some(batch) = env.lease_checkpoint {
        return Some(Command::Lease(LeaseCommand::Checkpoint(
            batch,
            oneshot::channel().0,
        )));
    }
    None
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
        if self.removed_at.is_some() {
            // A removed member serves nothing more (etcd stops it): clients move on to
            // another endpoint.
            fail(command, EtcdError::Stopped);
            return;
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
        match command {
            Command::Put(..) | Command::DeleteRange(..) | Command::Compact(..) => {
                self.propose_write(command)
            }
            Command::Txn(ref req, _) => match txn_reads(req) {
                (false, _) => self.propose_write(command),
                (true, true) => self.state.borrow_mut().handle_read(command),
                (true, false) => self.queue_read(command),
            },
            Command::Range(ref req, _) if !req.serializable => self.queue_read(command),
            Command::MemberAdd(req, reply) => self.member_add(req, reply),
            Command::MemberRemove(req, reply) => self.member_remove(req, reply),
            Command::MemberUpdate(req, reply) => self.member_update(req, reply),
            Command::MemberPromote(req, reply) => self.member_promote(req, reply),
            Command::MoveLeader(req, reply) => self.move_leader(req, reply),
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
                self.propose_write(Command::Lease(LeaseCommand::Grant(req, reply)))
            }
            Command::Lease(LeaseCommand::Revoke(..)) => self.propose_write(command),
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
                self.propose_write(command)
            }
            // Commands raft does not order: status, hashes, alarm GET, watch, the leader's
            // keep-alives, lease lists; none may advance the applied index.
            other => self.state.borrow_mut().handle_read(other),
        }
        self.wake.wake();
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

    fn propose_write(&mut self, command: Command) {
        let mut env = write_envelope(&command);
        let request_id = self.new_request_id();
        env.request_id = request_id;
        env.origin_member_id = self.id;
        self.propose(
            request_id,
            env.encode_to_vec(),
            None,
            Waiter::Write(command),
        );
    }

    fn propose(
        &mut self,
        request_id: u64,
        data: Vec<u8>,
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
            data,
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
            Some(cc) => self.raw.propose_conf_change(p.data.clone(), cc.clone()),
            None => self.raw.propose(vec![], p.data.clone()),
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
            Waiter::Write(command) => fail(command, e),
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

    /// Proposes a membership change; `reply` is answered when it applies.
    pub fn propose_member_change(
        &mut self,
        op: MemberOp,
        member: MemberRecord,
        reply: MemberReply,
    ) {
        let request_id = self.new_request_id();
        let env = Envelope {
            request_id,
            origin_member_id: self.id,
            member: Some(member.clone()),
            member_op: op as i32,
            ..Default::default()
        };
        let data = env.encode_to_vec();
        let conf_change = match op {
            MemberOp::Add | MemberOp::Remove | MemberOp::Promote => {
                // The member rides in the ConfChange's own context, so that it is in the
                // entry's data (raft-rs keeps the proposal context outside of it).
                let mut cc = ConfChange {
                    context: data.clone().into(),
                    ..Default::default()
                };
                cc.set_change_type(match op {
                    MemberOp::Remove => ConfChangeType::RemoveNode,
                    MemberOp::Add if member.is_learner => ConfChangeType::AddLearnerNode,
                    _ => ConfChangeType::AddNode,
                });
                cc.node_id = member.id;
                Some(cc)
            }
            _ => None,
        };
        self.propose(request_id, data, conf_change, Waiter::Member(reply));
        self.wake.wake();
    }

    /// etcd's `IsReadyToAddVotingMember`: after adding one more voter, the started
    /// voters must still form a quorum (adding a second member to a one-member cluster is
    /// allowed, for restoring a cluster).
    fn ready_to_add_voter(&self) -> bool {
        let voters: Vec<&MemberRecord> = self
            .membership
            .members
            .values()
            .filter(|m| !m.is_learner)
            .collect();
        let members = voters.len() + 1;
        let started = voters.iter().filter(|m| !m.name.is_empty()).count();
        if started == 1 && members == 2 {
            return true;
        }
        started > members / 2
    }

    /// etcd's `IsReadyToRemoveVotingMember`.
    fn ready_to_remove_voter(&self, id: u64) -> bool {
        let others: Vec<&MemberRecord> = self
            .membership
            .members
            .values()
            .filter(|m| !m.is_learner && m.id != id)
            .collect();
        let started = others.iter().filter(|m| !m.name.is_empty()).count();
        started > others.len() / 2
    }

    fn member_add(
        &mut self,
        req: pb::MemberAddRequest,
        reply: oneshot::Sender<Result<pb::MemberAddResponse, EtcdError>>,
    ) {
        if req.peer_ur_ls.is_empty()
            || req
                .peer_ur_ls
                .iter()
                .any(|u| transport::resolve_checked(u).is_none())
        {
            let _ = reply.send(Err(EtcdError::MemberBadUrls));
            return;
        }
        if req.is_learner && self.membership.learners() >= MAX_LEARNERS {
            let _ = reply.send(Err(EtcdError::TooManyLearners));
            return;
        }
        if !req.is_learner && !self.ready_to_add_voter() {
            let _ = reply.send(Err(EtcdError::MemberNotEnoughStarted));
            return;
        }
        if self.membership.peer_url_taken(&req.peer_ur_ls, 0) {
            let _ = reply.send(Err(EtcdError::PeerUrlExist));
            return;
        }
        let now_secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let id = crate::membership::id::member_id(
            &req.peer_ur_ls,
            &self.options.cluster_token,
            Some(now_secs),
        );
        if self.membership.members.contains_key(&id) || self.membership.removed.contains(&id) {
            let _ = reply.send(Err(EtcdError::MemberExist));
            return;
        }
        let member = MemberRecord {
            id,
            peer_urls: req.peer_ur_ls,
            is_learner: req.is_learner,
            ..Default::default()
        };
        self.propose_member_change(MemberOp::Add, member, MemberReply::Add(reply));
    }

    fn member_remove(
        &mut self,
        req: pb::MemberRemoveRequest,
        reply: oneshot::Sender<Result<pb::MemberRemoveResponse, EtcdError>>,
    ) {
        let Some(member) = self.membership.members.get(&req.id).cloned() else {
            let _ = reply.send(Err(EtcdError::MemberNotFound));
            return;
        };
        if !member.is_learner && !self.ready_to_remove_voter(member.id) {
            let _ = reply.send(Err(EtcdError::MemberNotEnoughStarted));
            return;
        }
        self.propose_member_change(MemberOp::Remove, member, MemberReply::Remove(reply));
    }

    fn member_update(
        &mut self,
        req: pb::MemberUpdateRequest,
        reply: oneshot::Sender<Result<pb::MemberUpdateResponse, EtcdError>>,
    ) {
        let Some(member) = self.membership.members.get(&req.id).cloned() else {
            let _ = reply.send(Err(EtcdError::MemberNotFound));
            return;
        };
        if req.peer_ur_ls.is_empty()
            || req
                .peer_ur_ls
                .iter()
                .any(|u| transport::resolve_checked(u).is_none())
        {
            let _ = reply.send(Err(EtcdError::MemberBadUrls));
            return;
        }
        if self.membership.peer_url_taken(&req.peer_ur_ls, req.id) {
            let _ = reply.send(Err(EtcdError::PeerUrlExist));
            return;
        }
        let member = MemberRecord {
            peer_urls: req.peer_ur_ls,
            ..member
        };
        self.propose_member_change(MemberOp::Update, member, MemberReply::Update(reply));
    }

    fn member_promote(
        &mut self,
        req: pb::MemberPromoteRequest,
        reply: oneshot::Sender<Result<pb::MemberPromoteResponse, EtcdError>>,
    ) {
        let Some(member) = self.membership.members.get(&req.id).cloned() else {
            let _ = reply.send(Err(EtcdError::MemberNotFound));
            return;
        };
        if !member.is_learner {
            let _ = reply.send(Err(EtcdError::MemberNotLearner));
            return;
        }
        // etcd's isLearnerReady: the learner's log must match at least 90% of the leader's.
        if self.is_leader() {
            let leader_match = self.matched_index(self.id).unwrap_or(0);
            let learner_match = self.matched_index(member.id).unwrap_or(0);
            if (learner_match as f64) < (leader_match as f64) * LEARNER_READY_FRACTION {
                let _ = reply.send(Err(EtcdError::LearnerNotReady));
                return;
            }
        }
        if !self.ready_to_add_voter() {
            let _ = reply.send(Err(EtcdError::MemberNotEnoughStarted));
            return;
        }
        self.propose_member_change(MemberOp::Promote, member, MemberReply::Promote(reply));
    }

    /// Maintenance.MoveLeader (etcd `MoveLeader`): only the leader transfers, only to a
    /// voting member; answered once the transferee leads, or with etcd's timeout error.
    fn move_leader(
        &mut self,
        req: pb::MoveLeaderRequest,
        reply: oneshot::Sender<Result<pb::MoveLeaderResponse, EtcdError>>,
    ) {
        let is_voter = self
            .membership
            .members
            .get(&req.target_id)
            .is_some_and(|m| !m.is_learner);
        if !is_voter {
            let _ = reply.send(Err(EtcdError::BadLeaderTransferee));
            return;
        }
        if !self.is_leader() {
            let _ = reply.send(Err(EtcdError::NotLeader));
            return;
        }
        if req.target_id == self.id {
            let _ = reply.send(Ok(pb::MoveLeaderResponse {
                header: Some(self.header()),
            }));
            return;
        }
        crate::info!("leadership transfer starting", "transferee" => format!("{:x}", req.target_id));
        self.raw.transfer_leader(req.target_id);
        let deadline = Instant::now() + self.request_timeout();
        self.leader_transfers.push((req.target_id, reply, deadline));
    }

    fn finish_leader_transfers(&mut self, now: Instant) {
        let leader = self.leader_id;
        let header = self.header();
        let mut keep = Vec::new();
        for (target, reply, deadline) in self.leader_transfers.drain(..) {
            if leader == target {
                let _ = reply.send(Ok(pb::MoveLeaderResponse {
                    header: Some(header),
                }));
            } else if now >= deadline {
                let _ = reply.send(Err(EtcdError::TimeoutLeaderTransfer));
            } else {
                keep.push((target, reply, deadline));
            }
        }
        self.leader_transfers = keep;
    }

    /// Applied index of a member as the leader's progress tracker sees it (for promote).
    pub fn matched_index(&self, member_id: u64) -> Option<u64> {
        self.raw.raft.prs().get(member_id).map(|p| p.matched)
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
            .filter(|(_, (_, at))| now.duration_since(*at) >= timeout)
            .map(|(ctx, _)| *ctx)
            .collect();
        for ctx in stale {
            if let Some((commands, _)) = self.reads.in_flight.remove(&ctx) {
                for c in commands {
                    fail(c, EtcdError::Timeout);
                }
            }
        }
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
        self.wake.wake();
    }

    /// etcd's `publish` (each member announces its name and client URLs once started) and
    /// the leader's cluster-version entry.
    fn maybe_publish(&mut self, now: Instant) {
        if self.leader_id == 0 || !self.membership.members.contains_key(&self.id) {
            return;
        }
        let retry_after = self.request_timeout();
        if !self.published
            && self
                .publish_proposed_at
                .is_none_or(|at| now.duration_since(at) >= retry_after)
        {
            self.publish_proposed_at = Some(now);
            let identity = self.state.borrow_mut().identity().clone();
            let request_id = self.new_request_id();
            let env = Envelope {
                request_id,
                origin_member_id: self.id,
                member: Some(MemberRecord {
                    id: self.id,
                    name: identity.name.clone(),
                    client_urls: identity.client_urls.clone(),
                    ..Default::default()
                }),
                member_op: MemberOp::Publish as i32,
                ..Default::default()
            };
            self.propose(request_id, env.encode_to_vec(), None, Waiter::Publish);
        }
        if self.is_leader()
            && self.membership.cluster_version.is_none()
            && self
                .version_proposed_at
                .is_none_or(|at| now.duration_since(at) >= retry_after)
        {
            self.version_proposed_at = Some(now);
            crate::info!("setting up initial cluster version", "cluster-version" => "3.4");
            let request_id = self.new_request_id();
            let env = Envelope {
                request_id,
                origin_member_id: self.id,
                cluster_version: "3.4.0".to_string(),
                ..Default::default()
            };
            self.propose(
                request_id,
                env.encode_to_vec(),
                None,
                Waiter::ClusterVersion,
            );
        }
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
        self.transport.send(messages);
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

    /// Steps peer messages into raft and tells raft what the transport saw.
    /// The lessor is primary exactly while this member leads (etcd promotes on becoming
    /// leader with one election timeout of grace, and demotes otherwise).
    fn sync_lease_role(&mut self) {
        let extend = Duration::from_millis(self.options.election_timeout_ms);
        let leader = self.is_leader();
        self.state.borrow_mut().sync_lease_role(leader, extend);
    }

    /// Proposes what the primary's lease loop queued: revocations of expired leases and
    /// checkpoints. Nobody waits for their answer; every member applies the entries.
    fn propose_lease_work(&mut self) {
        let proposals = self.state.borrow_mut().take_lease_proposals();
        if !self.is_leader() {
            return;
        }
        for proposal in proposals {
            let command = match proposal {
                LeaseProposal::Revoke(id) => Command::Lease(LeaseCommand::Revoke(
                    pb::LeaseRevokeRequest { id },
                    oneshot::channel().0,
                )),
                LeaseProposal::Checkpoint(batch) => {
                    Command::Lease(LeaseCommand::Checkpoint(batch, oneshot::channel().0))
                }
            };
            self.propose_write(command);
        }
    }

    /// A follower's Renew or TimeToLive: sent to the leader now, or held until a leader is
    /// known (at most `request_timeout`, then etcd's "no leader").
    fn forward_lease(&mut self, command: Command) {
        if self.lease_forwards.len() >= LEASE_FORWARDS_MAX {
            fail(command, EtcdError::TooManyRequests);
            return;
        }
        self.lease_forwards
            .push_back((command, Instant::now() + self.request_timeout()));
        self.dispatch_lease_forwards(Instant::now());
    }

    fn dispatch_lease_forwards(&mut self, now: Instant) {
        if self.is_leader() {
            // Became leader while they waited: answer them here.
            for (command, _) in self.lease_forwards.drain(..) {
                self.state.borrow_mut().handle_read(command);
            }
            return;
        }
        let leader_urls = self
            .membership
            .members
            .get(&self.leader_id)
            .map(|m| m.peer_urls.clone())
            .filter(|_| self.leader_id != 0);
        let Some(urls) = leader_urls else {
            while self
                .lease_forwards
                .front()
                .is_some_and(|(_, at)| *at <= now)
            {
                let (command, _) = self.lease_forwards.pop_front().expect("front exists");
                fail(command, EtcdError::NoLeader);
            }
            return;
        };
        let hello = (self.cluster_id, self.id, self.leader_id);
        for (command, _) in self.lease_forwards.drain(..) {
            let urls = urls.clone();
            glommio::spawn_local(forward_to_leader(urls, hello, command)).detach();
        }
    }

    /// The leader's side of lease forwarding: answers what followers forwarded.
    fn answer_forwarded_leases(&mut self) {
        for (request, answer) in self.transport.take_lease_requests() {
            if !self.is_leader() {
                let _ = answer.send(LeaseForwardResponse {
                    error: EtcdError::NotLeader.message().to_string(),
                    ..Default::default()
                });
                continue;
            }
            if let Some(req) = request.renew {
                let (tx, rx) = oneshot::channel();
                self.state
                    .borrow_mut()
                    .handle_read(Command::Lease(LeaseCommand::Renew(req, tx)));
                answer_forwarded(rx, answer, |resp| LeaseForwardResponse {
                    renew: Some(resp),
                    ..Default::default()
                });
            } else if let Some(req) = request.time_to_live {
                let (tx, rx) = oneshot::channel();
                self.state
                    .borrow_mut()
                    .handle_read(Command::Lease(LeaseCommand::TimeToLive(req, tx)));
                answer_forwarded(rx, answer, |resp| LeaseForwardResponse {
                    time_to_live: Some(resp),
                    ..Default::default()
                });
            }
        }
    }

    fn drain_transport(&mut self) {
        self.answer_forwarded_leases();
        for m in self.transport.take_inbox() {
            if let Err(e) = self.raw.step(m) {
                crate::debug!("raft dropped a peer message", "error" => e.to_string());
            }
        }
        for report in self.transport.take_reports() {
            match report {
                Report::Unreachable(id) => self.raw.report_unreachable(id),
                Report::Snapshot { to, ok } => self.report_snapshot(to, ok),
            }
        }
    }

    pub fn handle_ready(node: &Rc<RefCell<Node>>) {
        let mut n = node.borrow_mut();
        n.drain_transport();
        n.maybe_publish(Instant::now());
        // Start a ReadIndex round for the reads that queued since the last one: one round
        // serves all of them (etcd's linearizableReadLoop batches the same way).
        if !n.reads.waiting.is_empty() {
            n.reads.next_ctx += 1;
            let ctx = n.reads.next_ctx;
            let batch = std::mem::take(&mut n.reads.waiting);
            n.reads.waiting_since = None;
            n.reads.in_flight.insert(ctx, (batch, Instant::now()));
            n.raw.read_index(ctx.to_be_bytes().to_vec());
        }
        if !n.raw.has_ready() {
            return;
        }
        let mut ready = n.raw.ready();

        // 1. Soft state.
        if let Some(ss) = ready.ss() {
            let (leader, role) = (ss.leader_id, ss.raft_state);
            n.on_soft_state(leader, role);
        }
        // 2. Messages that may leave before persistence (leader's appends, heartbeats).
        let messages = ready.take_messages();
        n.send(messages);
        let mut records = Vec::new();
        // 3. A snapshot from the leader replaces the state machine.
        if !ready.snapshot().is_empty() {
            let snap = ready.snapshot().clone();
            if let Err(e) = n.install_snapshot(&snap) {
                crate::fatal!("cannot install the leader's snapshot", "error" => e);
            }
            let meta = snap.get_metadata();
            records.push(WalRecord::Snapshot(wal::SnapshotMarker {
                raft_index: meta.index,
                term: meta.term,
            }));
        }
        // 4. Committed entries.
        let committed = ready.take_committed_entries();
        n.apply_entries(committed);
        // 5. New entries and hard state: into the in-memory log now, the WAL in the background.
        let entries = ready.take_entries();
        n.log.append(&entries);
        n.entries_written += entries.len() as u64;
        records.extend(entries.iter().map(log_store::wal_record));
        if let Some(hs) = ready.hs() {
            n.term = hs.term;
            n.state.borrow_mut().raft_term = hs.term;
            n.state.borrow_mut().raft_commit_index = hs.commit;
            n.log.set_hard_state(hs.clone());
            records.push(log_store::wal_hard_state(hs));
        }
        // 6. ReadIndex rounds that completed.
        for rs in ready.take_read_states() {
            let ctx = <[u8; 8]>::try_from(&rs.request_ctx[..])
                .map(u64::from_be_bytes)
                .unwrap_or(0);
            if let Some((batch, _)) = n.reads.in_flight.remove(&ctx) {
                n.reads.at_index.push_back((rs.index, batch));
            }
        }
        let persisted_messages = ready.take_persisted_messages();
        let number = ready.number();
        n.raw.advance_append_async(ready);
        // 7. After the WAL append (group commit): persisted state, then the messages that
        // depend on it. An empty append is a barrier, keeping `on_persist_ready` in order.
        let durable = n.wal.append(records);
        let node_rc = node.clone();
        glommio::spawn_local(async move {
            if let Err(e) = durable.await {
                crate::fatal!("cannot write the WAL", "error" => e.to_string());
            }
            let mut n = node_rc.borrow_mut();
            n.raw.on_persist_ready(number);
            n.advance_applied();
            n.send(persisted_messages);
            n.wake.wake();
        })
        .detach();
        n.advance_applied();
        n.serve_reads();
        // Group commit of the backend: one commit for everything this ready applied; the
        // replies held for it go out now (`StateMachine::flush`).
        n.state.borrow_mut().flush();
        n.maybe_snapshot();
        n.wake.wake();
    }

    /// Tells raft how far the state machine has applied. raft-rs requires applied ≤
    /// persisted: after installing a snapshot the state is ahead of the durable log until
    /// the snapshot marker is in the WAL, so the rest is reported from step 7.
    fn advance_applied(&mut self) {
        let log = &self.raw.raft.raft_log;
        let applied = self
            .state
            .borrow_mut()
            .raft_applied_index()
            .min(log.persisted)
            .min(log.committed);
        if applied > log.applied {
            self.raw.advance_apply_to(applied);
        }
    }

    fn on_soft_state(&mut self, leader: u64, role: StateRole) {
        let term = self.raw.raft.term;
        if leader != self.leader_id {
            if leader == 0 {
                crate::info!(format!(
                    "raft.node: {:x} lost leader {:x} at term {term}",
                    self.id, self.leader_id
                ));
            } else if self.leader_id == 0 {
                crate::info!(format!(
                    "raft.node: {:x} elected leader {leader:x} at term {term}",
                    self.id
                ));
            } else {
                crate::info!(format!(
                    "raft.node: {:x} changed leader from {:x} to {leader:x} at term {term}",
                    self.id, self.leader_id
                ));
            }
            if self.leader_id != 0 && leader != 0 {
                crate::info!("leadership changed", "new-leader" => format!("{leader:x}"));
            }
        }
        self.leader_id = leader;
        self.state.borrow_mut().leader_id = leader;
        if !self.leader_transfers.is_empty() {
            self.finish_leader_transfers(Instant::now());
        }
        self.term = term;
        self.state.borrow_mut().raft_term = term;
        let _ = role;
        self.sync_lease_role();
        // Proposing must wait until this ready is advanced (raft-rs forbids proposals
        // between `ready()` and `advance_append_async()`); the next pass publishes.
    }

    fn serve_reads(&mut self) {
        let applied = self.state.borrow_mut().raft_applied_index();
        while let Some((raft_index, _)) = self.reads.at_index.front() {
            if *raft_index > applied {
                break;
            }
            let (_, batch) = self.reads.at_index.pop_front().expect("front exists");
            for command in batch {
                self.state.borrow_mut().handle_read(command);
            }
        }
    }

    fn apply_entries(&mut self, entries: Vec<Entry>) {
        let any = !entries.is_empty();
        self.apply_entries_inner(entries);
        if any {
            self.refresh_members_answer();
        }
    }

    fn apply_entries_inner(&mut self, entries: Vec<Entry>) {
        for entry in entries {
            let raft_index = entry.index;
            // Entries the backend already holds (a restart) are still replayed for raft's
            // configuration and the member table, which live only in memory; their key
            // writes are skipped (`mark_applied`, `apply_write_once`).
            match entry.get_entry_type() {
                EntryType::EntryNormal => self.apply_normal(raft_index, &entry.data),
                EntryType::EntryConfChange => self.apply_conf_change(raft_index, &entry.data),
                EntryType::EntryConfChangeV2 => {
                    crate::warn!("ignoring a ConfChangeV2 entry tern never proposes", "raft-index" => raft_index);
                    self.mark_applied(raft_index);
                }
            }
        }
    }

    /// Records that the entry at `raft_index` changed no key, unless the backend already
    /// had it (replay after a restart).
    fn mark_applied(&mut self, raft_index: u64) {
        let mut state = self.state.borrow_mut();
        if raft_index > state.raft_applied_index() {
            state.apply_other(raft_index);
        }
    }

    fn apply_write_once(&mut self, raft_index: u64, command: Command) {
        let mut state = self.state.borrow_mut();
        if raft_index > state.raft_applied_index() {
            state.apply_write(raft_index, command);
        }
    }

    fn apply_normal(&mut self, raft_index: u64, data: &[u8]) {
        if data.is_empty() {
            // The empty entry a new leader appends.
            self.mark_applied(raft_index);
            return;
        }
        let env = match Envelope::decode(data) {
            Ok(env) => env,
            Err(e) => {
                crate::error!("skipping an undecodable raft entry", "raft-index" => raft_index, "error" => e.to_string());
                self.mark_applied(raft_index);
                return;
            }
        };
        let mine = env.origin_member_id == self.id;
        let waiter = if mine {
            self.pending.remove(&env.request_id).map(|p| p.waiter)
        } else {
            None
        };
        if !env.cluster_version.is_empty() {
            if self.membership.cluster_version.is_none() {
                crate::info!("set initial cluster version", "cluster-version" => "3.4");
            }
            self.membership.cluster_version = Some(env.cluster_version.clone());
            self.mark_applied(raft_index);
            return;
        }
        if let Some(member) = env.member.clone() {
            let op = MemberOp::try_from(env.member_op).unwrap_or(MemberOp::None);
            match op {
                MemberOp::Publish => {
                    self.membership.publish(
                        member.id,
                        member.name.clone(),
                        member.client_urls.clone(),
                    );
                    // Only this run's publish counts (a replayed one from an earlier run
                    // must not make a restarted member serve before it has a leader).
                    if member.id == self.id
                        && !self.published
                        && matches!(waiter, Some(Waiter::Publish))
                    {
                        self.published = true;
                        if let Some(serving) = self.serving.take() {
                            let _ = serving.send(());
                        }
                    }
                }
                MemberOp::Update => {
                    self.membership
                        .update_peer_urls(member.id, member.peer_urls.clone());
                    // etcd 3.4.23 rewrites the whole member on update from a record that
                    // lacks the learner flag, so the member lists as a voter afterwards
                    // (raft's own configuration is unchanged). tern reproduces that.
                    if let Some(m) = self.membership.members.get_mut(&member.id) {
                        m.is_learner = false;
                    }
                    self.transport.set_peer(member.id, member.peer_urls.clone());
                    if let Some(Waiter::Member(MemberReply::Update(r))) = waiter {
                        let _ = r.send(Ok(pb::MemberUpdateResponse {
                            header: Some(self.header()),
                            members: self.membership.list(),
                        }));
                    }
                }
                _ => {}
            }
            self.mark_applied(raft_index);
            return;
        }
        let command = match waiter {
            Some(Waiter::Write(command)) => Some(command),
            _ => detached_command(env),
        };
        match command {
            Some(command) => self.apply_write_once(raft_index, command),
            None => self.mark_applied(raft_index),
        }
    }

    fn apply_conf_change(&mut self, raft_index: u64, data: &[u8]) {
        let cc = match ConfChange::parse_from_bytes(data) {
            Ok(cc) => cc,
            Err(e) => {
                crate::error!("skipping an undecodable ConfChange", "raft-index" => raft_index, "error" => e.to_string());
                self.mark_applied(raft_index);
                return;
            }
        };
        let env = Envelope::decode(&cc.context[..]).unwrap_or_default();
        let waiter = if env.origin_member_id == self.id && env.request_id != 0 {
            self.pending.remove(&env.request_id).map(|p| p.waiter)
        } else {
            None
        };
        let removed_before = self.membership.removed.contains(&cc.node_id);
        if removed_before {
            // etcd refuses ConfChanges for removed IDs at apply time (ErrIDRemoved).
            self.mark_applied(raft_index);
            if let Some(w) = waiter {
                self.answer_error(w, EtcdError::MemberNotFound);
            }
            return;
        }
        match self.raw.apply_conf_change(&cc) {
            Ok(cs) => self.log.set_conf_state(cs),
            Err(e) => crate::warn!("raft refused a ConfChange", "error" => e.to_string()),
        }
        let member = env.member.unwrap_or_default();
        match cc.get_change_type() {
            ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                let is_learner = cc.get_change_type() == ConfChangeType::AddLearnerNode;
                if let Some(existing) = self.membership.members.get(&cc.node_id) {
                    if existing.is_learner && !is_learner {
                        self.membership.promote(cc.node_id);
                        crate::info!("promoted a learner member", "promoted-member-id" => format!("{:x}", cc.node_id));
                    }
                } else {
                    let record = MemberRecord {
                        id: cc.node_id,
                        is_learner,
                        ..member
                    };
                    crate::info!(
                        "added member",
                        "added-peer-id" => format!("{:x}", record.id),
                        "added-peer-peer-urls" => record.peer_urls.join(",")
                    );
                    if record.id != self.id {
                        self.transport.set_peer(record.id, record.peer_urls.clone());
                    }
                    self.membership.add(record);
                }
            }
            ConfChangeType::RemoveNode => {
                self.membership.remove(cc.node_id);
                self.transport.remove_peer(cc.node_id);
                crate::info!("removed member", "removed-member-id" => format!("{:x}", cc.node_id));
                if cc.node_id == self.id {
                    crate::warn!("the member has been permanently removed from the cluster");
                    self.removed_at = Some(Instant::now());
                    let waiting: Vec<u64> = self.pending.keys().copied().collect();
                    for id in waiting {
                        if let Some(p) = self.pending.remove(&id) {
                            self.answer_error(p.waiter, EtcdError::Stopped);
                        }
                    }
                    self.unproposed.clear();
                }
            }
        }
        self.mark_applied(raft_index);
        if let Some(Waiter::Member(reply)) = waiter {
            let header = Some(self.header());
            let members = self.membership.list();
            match reply {
                MemberReply::Add(r) => {
                    let added = self
                        .membership
                        .members
                        .get(&cc.node_id)
                        .map(MemberRecord::to_pb);
                    let _ = r.send(Ok(pb::MemberAddResponse {
                        header,
                        member: added,
                        members,
                    }));
                }
                MemberReply::Remove(r) => {
                    drop(r.send(Ok(pb::MemberRemoveResponse { header, members })))
                }
                MemberReply::Promote(r) => {
                    drop(r.send(Ok(pb::MemberPromoteResponse { header, members })))
                }
                MemberReply::Update(r) => {
                    drop(r.send(Ok(pb::MemberUpdateResponse { header, members })))
                }
            }
        }
    }

    /// Refreshes what this member tells joining members.
    fn refresh_members_answer(&mut self) {
        let answer = transport::MembersResponse {
            cluster_id: self.cluster_id,
            members: self.membership.members.values().cloned().collect(),
        };
        *self.transport.members_answer.borrow_mut() = answer.encode_to_vec();
    }

    fn install_snapshot(&mut self, snap: &Snapshot) -> Result<(), String> {
        let meta = snap.get_metadata();
        crate::info!("applying snapshot", "snapshot-index" => meta.index, "snapshot-term" => meta.term);
        let file = SnapshotFile {
            snapshot: snap.clone(),
        };
        snapshot::restore(&file, &mut self.state.borrow_mut(), &mut self.membership)?;
        snapshot::save(&self.snapshot_dir, &file)?;
        for m in self.membership.members.values() {
            if m.id != self.id {
                self.transport.set_peer(m.id, m.peer_urls.clone());
            }
        }
        self.log.apply_snapshot(snap.clone());
        self.last_snapshot_index = meta.index;
        self.refresh_members_answer();
        Ok(())
    }

    /// etcd's `--snapshot-count`: after that many applied entries since the last
    /// snapshot, save one and compact the log (keeping catch-up entries), then release
    /// WAL segments below it.
    fn maybe_snapshot(&mut self) {
        let applied = self.state.borrow_mut().raft_applied_index();
        if applied < self.last_snapshot_index + self.options.snapshot_count.max(1) {
            return;
        }
        let Some(term) = self.log.term_of(applied) else {
            return;
        };
        let data = snapshot::encode(&self.state.borrow(), &self.membership);
        let mut snap = Snapshot::default();
        snap.set_metadata(log_store::snapshot_metadata(
            applied,
            term,
            self.raw.raft.prs().conf().to_conf_state(),
        ));
        snap.data = data.into();
        let file = SnapshotFile {
            snapshot: snap.clone(),
        };
        if let Err(e) = snapshot::save(&self.snapshot_dir, &file) {
            crate::error!("cannot save a snapshot", "error" => e);
            return;
        }
        crate::info!("saved snapshot", "snapshot-index" => applied);
        self.last_snapshot_index = applied;
        // Keep catch-up entries, but never more than one snapshot interval, so that a
        // small --snapshot-count bounds the log's memory as the user asked.
        let catch_up = SNAPSHOT_CATCH_UP_ENTRIES.min(self.options.snapshot_count);
        let compact_to = applied
            .saturating_sub(catch_up)
            .max(self.log.first_raft_index() - 1);
        self.log.compact(snap, compact_to);
        let wal = self.wal.clone();
        let dir = self.snapshot_dir.clone();
        glommio::spawn_local(async move {
            let marker = WalRecord::Snapshot(wal::SnapshotMarker {
                raft_index: applied,
                term,
            });
            if wal.append(vec![marker]).await.is_ok() {
                if compact_to > 0 {
                    let _ = wal.release_below(compact_to.min(applied)).await;
                }
                snapshot::purge(&dir, applied);
            }
        })
        .detach();
    }
}

/// Builds the node for `identity` on the current (state) executor: opens the WAL, binds
/// the peer listeners, connects to the known peers. The receiver fires once this member
/// has published itself through raft (then it may serve clients).
pub async fn start(
    identity: crate::server::state_machine::Identity,
    options: RaftOptions,
    state: StateMachine,
) -> Result<(Rc<RefCell<Node>>, oneshot::Receiver<()>), String> {
    let mut identity = identity;
    let mut listeners = Vec::new();
    for addr in &options.listen_peer_addrs {
        // std's bind sets SO_REUSEADDR (glommio's does not), so a member restarted right
        // after a crash can bind its peer port while old connections sit in TIME_WAIT.
        let std_listener = std::net::TcpListener::bind(addr)
            .map_err(|e| format!("listen tcp {addr}: bind: {e}"))?;
        // glommio's accept assumes a non-blocking socket (it tries a synchronous accept(2)
        // first); a blocking one could put the executor thread to sleep in the kernel.
        std_listener
            .set_nonblocking(true)
            .map_err(|e| format!("listen tcp {addr}: {e}"))?;
        listeners.push(std_listener);
    }
    let wal_dir = wal::wal_dir(&options.data_dir);
    let mut known_members = Vec::new();
    let opened = match Wal::open(&wal_dir, WalOptions::default()).await {
        Ok((wal, recovered)) => {
            // A member's IDs are those its WAL was created with (a member added at
            // runtime has an ID no flag can derive).
            identity.member_id = recovered.metadata.member_id;
            identity.cluster_id = recovered.metadata.cluster_id;
            Some((wal, recovered))
        }
        Err(wal::WalError::NotFound(_)) => {
            if !options.new_cluster {
                known_members = join_existing(&mut identity, &options).await?;
            }
            None
        }
        Err(e) => return Err(format!("cannot open the WAL: {e}")),
    };
    let wake = Rc::new(Wakeup::default());
    let mut transport = Transport::new(identity.member_id, identity.cluster_id, wake.clone());
    transport.serve(listeners)?;
    // A joining member must be able to answer the leader before its log tells it who the
    // members are.
    for m in known_members {
        transport.set_peer(m.id, m.peer_urls);
    }
    let mut state = state;
    state.set_identity(identity.clone());
    let (serving_tx, serving_rx) = oneshot::channel();
    let node = open(
        identity.member_id,
        identity.cluster_id,
        options,
        opened,
        state,
        transport,
        wake,
        serving_tx,
    )
    .await?;
    Ok((Rc::new(RefCell::new(node)), serving_rx))
}

/// Finds this member's ID in the running cluster by its peer URLs (etcd
/// `ValidateClusterAndAssignIDs`): `etcdctl member add` created it there.
async fn join_existing(
    identity: &mut crate::server::state_machine::Identity,
    options: &RaftOptions,
) -> Result<Vec<MemberRecord>, String> {
    let mut mine = identity.peer_urls.clone();
    mine.sort();
    let others: Vec<String> = options
        .initial_members
        .iter()
        .filter(|m| {
            let mut urls = m.peer_urls.clone();
            urls.sort();
            urls != mine
        })
        .flat_map(|m| m.peer_urls.clone())
        .collect();
    let answer = transport::fetch_members(&others).await?;
    let me = answer.members.iter().find(|m| {
        let mut urls = m.peer_urls.clone();
        urls.sort();
        urls == mine
    });
    let Some(me) = me else {
        return Err(format!(
            "member with peer URLs {} is not in the cluster; add it with `etcdctl member add` first",
            identity.peer_urls.join(",")
        ));
    };
    crate::info!(
        "joining an existing cluster",
        "local-member-id" => format!("{:x}", me.id),
        "cluster-id" => format!("{:x}", answer.cluster_id)
    );
    identity.member_id = me.id;
    identity.cluster_id = answer.cluster_id;
    Ok(answer.members)
}

/// Runs the ready loop and the ticker until the process ends.
pub async fn run(node: Rc<RefCell<Node>>) {
    let wake = node.borrow().wake.clone();
    let interval = Duration::from_millis(node.borrow().options.heartbeat_interval_ms.max(1));
    let ticker = node.clone();
    glommio::spawn_local(async move {
        loop {
            glommio::timer::sleep(interval).await;
            ticker.borrow_mut().tick();
        }
    })
    .detach();
    // A member that is the only voter campaigns at once, as etcd's single-member
    // bootstrap does: it wins the next term at once (term 2 on a fresh cluster).
    let mut campaigned = false;
    loop {
        Node::handle_ready(&node);
        if !campaigned {
            let mut n = node.borrow_mut();
            let cs = n.log.conf_state();
            let caught_up = n.state.borrow_mut().raft_applied_index() >= n.log.hard_state().commit;
            if caught_up && cs.voters == [n.id] && n.leader_id == 0 {
                campaigned = true;
                let _ = n.raw.campaign();
                n.wake.wake();
            } else if caught_up {
                campaigned = true;
            }
        }
        wake.wait().await;
    }
}
