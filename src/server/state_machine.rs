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
//! Writes reach this struct only as committed raft entries (`src/raft/node.rs` calls
//! [`StateMachine::apply_write`] with each entry's raft index); reads are answered directly.
//! The raft node keeps `raft_term`, `leader_id` and `raft_commit_index` current.

use crate::error::EtcdError;
use crate::apply::NoLeases;
use crate::mvcc::{Backend, Bucket, Direction, KvStore, MemBackend};
use crate::proto::etcdserverpb as pb;
use crate::server::state_client::Command;

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

pub struct StateMachine {
    identity: Identity,
    store: KvStore<MemBackend>,
    raft_applied_index: u64,
    alarms: Vec<pb::AlarmMember>,
    /// Kept current by the raft node.
    pub raft_term: u64,
    pub leader_id: u64,
    pub raft_commit_index: u64,
}

impl StateMachine {
    pub fn new(identity: Identity, store: KvStore<MemBackend>) -> StateMachine {
        StateMachine {
            identity,
            raft_applied_index: store.consistent_index(),
            store,
            alarms: Vec::new(),
            raft_term: 0,
            leader_id: 0,
            raft_commit_index: 0,
        }
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    pub fn raft_applied_index(&self) -> u64 {
        self.raft_applied_index
    }

    /// Applies the write `command` carried by the committed entry at `raft_index` and
    /// answers it. Idempotent: an entry at or below the store's consistent index was
    /// applied before (a replay after restart) and is skipped.
    pub fn apply_write(&mut self, raft_index: u64, command: Command) {
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
        self.handle(command);
        debug_assert_eq!(self.raft_applied_index, raft_index);
    }

    /// Answers a read (a Range, or a Txn without writes) that raft did not order: it must
    /// not advance the applied index, which only committed entries do.
    pub fn handle_read(&mut self, command: Command) {
        let applied = self.raft_applied_index;
        let consistent_index = self.store.consistent_index();
        self.handle(command);
        self.raft_applied_index = applied;
        self.store.set_consistent_index(consistent_index);
    }

    /// Records an entry that changes no key (empty entry, ConfChange, member attributes).
    /// Its index is saved as the consistent index all the same, as etcd does, so that a
    /// restart resumes after it.
    pub fn apply_other(&mut self, raft_index: u64) {
        assert!(
            raft_index > self.raft_applied_index,
            "entries apply in raft-index order"
        );
        self.raft_applied_index = raft_index;
        if raft_index > self.store.consistent_index() {
            self.store.set_consistent_index(raft_index);
            if let Err(e) = self.store.commit() {
                crate::error!("cannot save the consistent index", "error" => e.to_string());
            }
        }
    }

    /// Every bucket of the store, for a raft snapshot (format: docs/peer-protocol.md,
    /// "Snapshot data"): per entry, bucket slot (1 byte), key length and value length
    /// (u32 big-endian each), key, value; then the applied index (u64 big-endian).
    pub fn snapshot_data(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let backend = self.store.backend();
        for (slot, bucket) in Bucket::ALL.iter().enumerate() {
            let _ = backend.scan(*bucket, &[], None, Direction::Ascending, &mut |k, v| {
                out.push(slot as u8);
                out.extend_from_slice(&(k.len() as u32).to_be_bytes());
                out.extend_from_slice(&(v.len() as u32).to_be_bytes());
                out.extend_from_slice(k);
                out.extend_from_slice(v);
                true
            });
        }
        out.extend_from_slice(&self.raft_applied_index.to_be_bytes());
        out
    }

    /// Replaces the whole state with a snapshot made by [`Self::snapshot_data`].
    pub fn restore(&mut self, data: &[u8]) -> Result<(), String> {
        let corrupt = || "snapshot data is truncated or corrupt".to_string();
        if data.len() < 8 {
            return Err(corrupt());
        }
        let (body, tail) = data.split_at(data.len() - 8);
        let applied = u64::from_be_bytes(tail.try_into().map_err(|_| corrupt())?);
        let mut backend = MemBackend::new();
        let mut at = 0;
        while at < body.len() {
            let header = body.get(at..at + 9).ok_or_else(corrupt)?;
            let bucket = *Bucket::ALL.get(header[0] as usize).ok_or_else(corrupt)?;
            let key_len = u32::from_be_bytes(header[1..5].try_into().unwrap()) as usize;
            let value_len = u32::from_be_bytes(header[5..9].try_into().unwrap()) as usize;
            at += 9;
            let key = body.get(at..at + key_len).ok_or_else(corrupt)?;
            at += key_len;
            let value = body.get(at..at + value_len).ok_or_else(corrupt)?;
            at += value_len;
            backend.put(bucket, key, value).map_err(|e| e.to_string())?;
        }
        self.store = KvStore::open(backend).map_err(|e| e.to_string())?;
        self.raft_applied_index = applied;
        Ok(())
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
    pub fn handle(&mut self, command: Command) {
        match command {
            Command::Range(req, reply) => {
                let res = self.store.range(&req).map(|mut r| {
                    self.stamp(&mut r.header);
                    r
                });
                let _ = reply.send(res);
            }
            Command::Put(req, reply) => {
                self.advance_applied_index();
                let res = self.store.put(&req, &NoLeases).map(|mut r| {
                    self.stamp(&mut r.header);
                    r
                });
                let _ = reply.send(res);
            }
            Command::DeleteRange(req, reply) => {
                self.advance_applied_index();
                let res = self.store.delete_range(&req).map(|mut r| {
                    self.stamp(&mut r.header);
                    r
                });
                let _ = reply.send(res);
            }
            Command::Txn(req, reply) => {
                self.advance_applied_index();
                let res = self.store.txn(&req, &NoLeases).map(|mut r| {
                    self.stamp(&mut r.header);
                    r
                });
                let _ = reply.send(res);
            }
            Command::Compact(req, reply) => {
                self.advance_applied_index();
                let res = self.store.compact(&req).map(|mut r| {
                    self.stamp(&mut r.header);
                    r
                });
                let _ = reply.send(res);
            }
            Command::HashKv(req, reply) => {
                let res = self.store.hash_kv(&req).map(|mut r| {
                    self.stamp(&mut r.header);
                    r
                });
                let _ = reply.send(res);
            }
            Command::Hash(reply) => {
                let res = self.store.hash_by_rev(0).map(|h| pb::HashResponse {
                    header: Some(self.header(h.current_revision)),
                    hash: h.hash,
                });
                let _ = reply.send(res);
            }
            Command::Status(reply) => {
                let _ = reply.send(Ok(self.status()));
            }
            Command::MemberList(reply) => {
                let _ = reply.send(Ok(pb::MemberListResponse {
                    header: Some(self.header(0)),
                    members: vec![self.member()],
                }));
            }
            Command::Alarm(req, reply) => {
                // etcd answers Alarm without a response header (its JSON is `{}` when
                // no alarm is raised).
                let alarms = self.alarm(req);
                let _ = reply.send(Ok(pb::AlarmResponse { header: None, alarms }));
            }
            Command::MemberAdd(..)
            | Command::MemberRemove(..)
            | Command::MemberUpdate(..)
            | Command::MemberPromote(..)
            | Command::MoveLeader(..) => {
                // The raft node answers these before commands reach the state machine;
                // dropping the reply answers "server stopped" should one ever get here.
            }
            Command::Defragment(reply) => {
                let res: Result<_, EtcdError> = Ok(pb::DefragmentResponse {
                    header: Some(self.header(self.store.current_revision())),
                });
                let _ = reply.send(res);
            }
        }
    }

    /// etcd's alarm semantics: GET lists every raised alarm (NONE matches all types);
    /// ACTIVATE raises one and answers with it; DEACTIVATE clears one and answers with what
    /// it cleared. Nothing raises alarms on its own yet: the quota check (NOSPACE) and the
    /// corruption check (CORRUPT) arrive with the persistent backend.
    fn alarm(&mut self, req: pb::AlarmRequest) -> Vec<pb::AlarmMember> {
        use pb::alarm_request::AlarmAction;
        let wanted = pb::AlarmMember { member_id: req.member_id, alarm: req.alarm };
        match AlarmAction::try_from(req.action).unwrap_or(AlarmAction::Get) {
            AlarmAction::Get => self
                .alarms
                .iter()
                .filter(|a| req.alarm == pb::AlarmType::None as i32 || a.alarm == req.alarm)
                .cloned()
                .collect(),
            AlarmAction::Activate => {
                if req.alarm == pb::AlarmType::None as i32 {
                    return Vec::new();
                }
                if !self.alarms.contains(&wanted) {
                    self.alarms.push(wanted.clone());
                }
                vec![wanted]
            }
            AlarmAction::Deactivate => {
                let before = self.alarms.len();
                self.alarms.retain(|a| *a != wanted);
                if self.alarms.len() < before {
                    vec![wanted]
                } else {
                    Vec::new()
                }
            }
        }
    }

    /// One more entry is being applied (whether it succeeds or fails, as in raft): the
    /// store saves it as its consistent index together with the entry's writes, which is
    /// what makes replaying an entry idempotent once raft and the WAL arrive.
    fn advance_applied_index(&mut self) {
        self.raft_applied_index += 1;
        self.store.set_consistent_index(self.raft_applied_index);
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

    fn status(&self) -> pb::StatusResponse {
        let db_size = self.store.backend().size_bytes() as i64;
        pb::StatusResponse {
            header: Some(self.header(self.store.current_revision())),
            version: ETCD_SERVER_VERSION.to_string(),
            db_size,
            leader: self.leader_id,
            raft_index: self.raft_commit_index.max(self.raft_applied_index),
            raft_term: self.raft_term,
            raft_applied_index: self.raft_applied_index,
            errors: Vec::new(),
            db_size_in_use: db_size,
            is_learner: false,
        }
    }
}
