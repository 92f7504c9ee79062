//! The network cores' handle on the state executor.
//!
//! Each network executor owns one bounded single-producer/single-consumer glommio channel
//! to the state executor (`COMMAND_QUEUE_MAX` deep). A command carries its own typed oneshot
//! for the reply, so a reply can never be matched to the wrong request and the state core
//! needs no per-connection bookkeeping. glommio wakes the waiting task across cores.
//!
//! Backpressure: when the state core falls behind, `send` waits on the full channel, which
//! stops the connection task reading more requests, which in turn stops granting HTTP/2
//! flow-control window: load sheds at the edge instead of queueing without bound.

use futures::channel::oneshot;
use glommio::channels::shared_channel::ConnectedSender;

use crate::error::EtcdError;
use crate::proto::etcdserverpb as pb;

/// Bound on queued commands per network core. Deep enough to keep the state core busy
/// while a whole round of pipelined requests arrives, small enough to bound memory.
pub const COMMAND_QUEUE_MAX: usize = 4096;

pub type Reply<T> = oneshot::Sender<Result<T, EtcdError>>;

/// A request for one chunk of a range: `range` says where the chunk starts (`key` is the
/// cursor), where the range ends, the revision (pinned by the caller after the first
/// chunk), `serializable` (the first chunk of a linearizable range waits for a ReadIndex
/// round, later ones read the pinned revision locally) and `keys_only`; its other fields
/// are ignored. The permission check is a Range's over `[key, range_end)`.
pub struct RangeChunkRequest {
    pub range: pb::RangeRequest,
    pub options: crate::mvcc::range_chunk::ChunkOptions,
}

/// A chunk and the header of the member that read it.
pub struct RangeChunk {
    pub header: pb::ResponseHeader,
    pub chunk: crate::mvcc::range_chunk::Chunk,
}

/// Everything a network core can ask of the state core.
pub enum Command {
    Range(pb::RangeRequest, Reply<pb::RangeResponse>),
    /// One bounded piece of a range (`crate::mvcc::range_chunk`).
    RangeChunk(RangeChunkRequest, Reply<RangeChunk>),
    Put(pb::PutRequest, Reply<pb::PutResponse>),
    DeleteRange(pb::DeleteRangeRequest, Reply<pb::DeleteRangeResponse>),
    Txn(pb::TxnRequest, Reply<pb::TxnResponse>),
    Compact(pb::CompactionRequest, Reply<pb::CompactionResponse>),
    HashKv(pb::HashKvRequest, Reply<pb::HashKvResponse>),
    Hash(Reply<pb::HashResponse>),
    Status(Reply<pb::StatusResponse>),
    MemberList(Reply<pb::MemberListResponse>),
    Alarm(pb::AlarmRequest, Reply<pb::AlarmResponse>),
    Defragment(Reply<pb::DefragmentResponse>),
    /// A fixed view of the whole state for `Maintenance.Snapshot` (the raft node adds the
    /// member table).
    Snapshot(Reply<crate::state::db_snapshot::SnapshotSource>),
    // Answered by the raft node (src/raft/node/), never by the state machine.
    MemberAdd(pb::MemberAddRequest, Reply<pb::MemberAddResponse>),
    MemberRemove(pb::MemberRemoveRequest, Reply<pb::MemberRemoveResponse>),
    MemberUpdate(pb::MemberUpdateRequest, Reply<pb::MemberUpdateResponse>),
    MemberPromote(pb::MemberPromoteRequest, Reply<pb::MemberPromoteResponse>),
    MoveLeader(pb::MoveLeaderRequest, Reply<pb::MoveLeaderResponse>),
    Lease(crate::state::LeaseCommand),
    WaitChange(crate::state::change_waiters::WaitChange),
    /// Watch: (re)subscribe this core's feed and/or read history (see `crate::watch`).
    WatchSync(crate::watch::SyncRequest, Reply<crate::watch::SyncReply>),
    /// Watch: end the feed subscription of (core, generation).
    WatchUnsubscribe {
        core: usize,
        generation: u64,
    },
    /// An Auth service op (`crate::auth`): reads are answered, changes proposed.
    Auth(crate::auth::AuthOp, Reply<crate::auth::AuthReply>),
    /// `command` on behalf of the client whose request presented this credential (gRPC
    /// metadata `token`, or a client certificate). A command without one runs as a
    /// client without credentials.
    As(crate::auth::Credential, Box<Command>),
}

impl Command {
    /// Whether the command's credential is resolved (an unknown one refused as "invalid auth
    /// token") and the command checked against its user. etcd resolves tokens only for
    /// what it checks or proposes; keep-alives, Status, MemberList, lease lists and alarm
    /// listings ignore a stale token, so a client's keep-alive stream outlives its token.
    pub fn needs_caller(&self) -> bool {
        use crate::state::LeaseCommand;
        match self {
            Command::Range(..)
            | Command::RangeChunk(..)
            | Command::Put(..)
            | Command::DeleteRange(..)
            | Command::Txn(..)
            | Command::Compact(..)
            | Command::HashKv(..)
            | Command::Hash(..)
            | Command::Defragment(..)
            | Command::MemberAdd(..)
            | Command::MemberRemove(..)
            | Command::MemberUpdate(..)
            | Command::MemberPromote(..)
            | Command::MoveLeader(..)
            | Command::Snapshot(..)
            | Command::Auth(..) => true,
            Command::Alarm(req, _) => {
                req.action != crate::proto::etcdserverpb::alarm_request::AlarmAction::Get as i32
            }
            Command::Lease(LeaseCommand::Grant(..) | LeaseCommand::Revoke(..)) => true,
            Command::Lease(LeaseCommand::TimeToLive(req, _)) => req.keys,
            Command::Lease(
                LeaseCommand::Renew(..) | LeaseCommand::Leases(..) | LeaseCommand::Checkpoint(..),
            )
            | Command::Status(..)
            | Command::MemberList(..)
            | Command::WaitChange(..)
            | Command::WatchSync(..)
            | Command::WatchUnsubscribe { .. } => false,
            Command::As(_, inner) => inner.needs_caller(),
        }
    }

    /// Answers the command with `e` (dropping the reply answers "server stopped" for the
    /// few commands that never fail one by one).
    pub fn fail(self, e: EtcdError) {
        use crate::state::LeaseCommand;
        match self {
            Command::Range(_, r) => drop(r.send(Err(e))),
            Command::RangeChunk(_, r) => drop(r.send(Err(e))),
            Command::Put(_, r) => drop(r.send(Err(e))),
            Command::DeleteRange(_, r) => drop(r.send(Err(e))),
            Command::Txn(_, r) => drop(r.send(Err(e))),
            Command::Compact(_, r) => drop(r.send(Err(e))),
            Command::HashKv(_, r) => drop(r.send(Err(e))),
            Command::Hash(r) => drop(r.send(Err(e))),
            Command::Status(r) => drop(r.send(Err(e))),
            Command::MemberList(r) => drop(r.send(Err(e))),
            Command::Alarm(_, r) => drop(r.send(Err(e))),
            Command::Defragment(r) => drop(r.send(Err(e))),
            Command::MemberAdd(_, r) => drop(r.send(Err(e))),
            Command::MemberRemove(_, r) => drop(r.send(Err(e))),
            Command::MemberUpdate(_, r) => drop(r.send(Err(e))),
            Command::MemberPromote(_, r) => drop(r.send(Err(e))),
            Command::MoveLeader(_, r) => drop(r.send(Err(e))),
            Command::Snapshot(r) => drop(r.send(Err(e))),
            Command::Lease(lease) => match lease {
                LeaseCommand::Grant(_, r) => drop(r.send(Err(e))),
                LeaseCommand::Revoke(_, r) => drop(r.send(Err(e))),
                LeaseCommand::Renew(_, r) => drop(r.send(Err(e))),
                LeaseCommand::TimeToLive(_, r) => drop(r.send(Err(e))),
                LeaseCommand::Leases(r) => drop(r.send(Err(e))),
                LeaseCommand::Checkpoint(_, r) => drop(r.send(Err(e))),
            },
            Command::WaitChange(wait) => drop(wait.reply.send(Err(e))),
            Command::WatchSync(_, r) => drop(r.send(Err(e))),
            Command::WatchUnsubscribe { .. } => {}
            Command::Auth(_, r) => drop(r.send(Err(e))),
            Command::As(_, inner) => inner.fail(e),
        }
    }
}

/// A network core's connection to the state executor. Cheap to share within its core (`Rc`).
pub struct StateClient {
    commands: std::rc::Rc<ConnectedSender<Command>>,
    /// The client's credential: every command sent through this handle carries it.
    credential: Option<crate::auth::Credential>,
}

impl StateClient {
    pub fn new(commands: ConnectedSender<Command>) -> StateClient {
        StateClient {
            commands: std::rc::Rc::new(commands),
            credential: None,
        }
    }

    /// A handle on the same channel whose commands present `credential` (none: they run
    /// as a client without credentials).
    pub fn with_credential(&self, credential: Option<crate::auth::Credential>) -> StateClient {
        StateClient {
            commands: self.commands.clone(),
            credential,
        }
    }

    /// Sends one command and waits for its reply.
    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, EtcdError> {
        let (reply, response) = oneshot::channel();
        let command = match &self.credential {
            Some(credential) => Command::As(credential.clone(), Box::new(make(reply))),
            None => make(reply),
        };
        if self.commands.send(command).await.is_err() {
            return Err(EtcdError::Stopped);
        }
        // A dropped reply sender means the state core stopped mid-request.
        response.await.unwrap_or(Err(EtcdError::Stopped))
    }

    pub async fn range(&self, req: pb::RangeRequest) -> Result<pb::RangeResponse, EtcdError> {
        self.call(|r| Command::Range(req, r)).await
    }
    pub async fn range_chunk(&self, req: RangeChunkRequest) -> Result<RangeChunk, EtcdError> {
        self.call(|r| Command::RangeChunk(req, r)).await
    }
    pub async fn put(&self, req: pb::PutRequest) -> Result<pb::PutResponse, EtcdError> {
        self.call(|r| Command::Put(req, r)).await
    }
    pub async fn delete_range(
        &self,
        req: pb::DeleteRangeRequest,
    ) -> Result<pb::DeleteRangeResponse, EtcdError> {
        self.call(|r| Command::DeleteRange(req, r)).await
    }
    pub async fn txn(&self, req: pb::TxnRequest) -> Result<pb::TxnResponse, EtcdError> {
        self.call(|r| Command::Txn(req, r)).await
    }
    pub async fn compact(
        &self,
        req: pb::CompactionRequest,
    ) -> Result<pb::CompactionResponse, EtcdError> {
        self.call(|r| Command::Compact(req, r)).await
    }
    pub async fn hash_kv(&self, req: pb::HashKvRequest) -> Result<pb::HashKvResponse, EtcdError> {
        self.call(|r| Command::HashKv(req, r)).await
    }
    pub async fn hash(&self) -> Result<pb::HashResponse, EtcdError> {
        self.call(Command::Hash).await
    }
    pub async fn status(&self) -> Result<pb::StatusResponse, EtcdError> {
        self.call(Command::Status).await
    }
    pub async fn member_list(&self) -> Result<pb::MemberListResponse, EtcdError> {
        self.call(Command::MemberList).await
    }
    pub async fn alarm(&self, req: pb::AlarmRequest) -> Result<pb::AlarmResponse, EtcdError> {
        self.call(|r| Command::Alarm(req, r)).await
    }
    pub async fn watch_sync(
        &self,
        req: crate::watch::SyncRequest,
    ) -> Result<crate::watch::SyncReply, EtcdError> {
        self.call(|r| Command::WatchSync(req, r)).await
    }
    /// Fire and forget, never waiting: if the queue is full the subscription stays, which
    /// costs the state core one `try_send` per write until the core subscribes anew
    /// (the network core ignores what it is sent meanwhile).
    pub fn watch_unsubscribe(&self, core: usize, generation: u64) {
        let _ = self
            .commands
            .try_send(Command::WatchUnsubscribe { core, generation });
    }
    pub async fn auth(&self, op: crate::auth::AuthOp) -> Result<crate::auth::AuthReply, EtcdError> {
        self.call(|r| Command::Auth(op, r)).await
    }
    pub async fn defragment(&self) -> Result<pb::DefragmentResponse, EtcdError> {
        self.call(Command::Defragment).await
    }
    pub async fn snapshot(&self) -> Result<crate::state::db_snapshot::SnapshotSource, EtcdError> {
        self.call(Command::Snapshot).await
    }
    pub async fn member_add(
        &self,
        req: pb::MemberAddRequest,
    ) -> Result<pb::MemberAddResponse, EtcdError> {
        self.call(|r| Command::MemberAdd(req, r)).await
    }
    pub async fn member_remove(
        &self,
        req: pb::MemberRemoveRequest,
    ) -> Result<pb::MemberRemoveResponse, EtcdError> {
        self.call(|r| Command::MemberRemove(req, r)).await
    }
    pub async fn member_update(
        &self,
        req: pb::MemberUpdateRequest,
    ) -> Result<pb::MemberUpdateResponse, EtcdError> {
        self.call(|r| Command::MemberUpdate(req, r)).await
    }
    pub async fn member_promote(
        &self,
        req: pb::MemberPromoteRequest,
    ) -> Result<pb::MemberPromoteResponse, EtcdError> {
        self.call(|r| Command::MemberPromote(req, r)).await
    }
    pub async fn move_leader(
        &self,
        req: pb::MoveLeaderRequest,
    ) -> Result<pb::MoveLeaderResponse, EtcdError> {
        self.call(|r| Command::MoveLeader(req, r)).await
    }
    pub async fn lease<T>(
        &self,
        make: impl FnOnce(Reply<T>) -> crate::state::LeaseCommand,
    ) -> Result<T, EtcdError> {
        self.call(|r| Command::Lease(make(r))).await
    }
    /// Waits for the next change in `[key, range_end)` after `after_revision` (see
    /// `change_waiters`). Dropping the future withdraws the waiter.
    pub async fn wait_change(
        &self,
        key: bytes::Bytes,
        range_end: bytes::Bytes,
        after_revision: i64,
    ) -> Result<Vec<crate::mvcc::Change>, EtcdError> {
        self.call(|reply| {
            Command::WaitChange(crate::state::change_waiters::WaitChange {
                key,
                range_end,
                after_revision,
                reply,
            })
        })
        .await
    }
}
