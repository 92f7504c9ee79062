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
//! Until raft arrives (issue 6) the member is a single voter that has won its first
//! election, exactly the state a fresh single-member etcd reaches: raft term 2, itself the
//! leader. `applied_index` counts applied entries the way raft's log would (bootstrap
//! entries plus one per write).

use crate::apply::NoLeases;
use crate::error::EtcdError;
use crate::mvcc::{KvStore, MemBackend};
use crate::proto::etcdserverpb as pb;
use crate::server::state_client::Command;

/// The etcd server version tern reports in Status, so that clients that gate features on
/// the server's version treat tern as the etcd release whose API it implements.
pub const ETCD_SERVER_VERSION: &str = "3.4.23";

/// Raft term of a single-member cluster after its first election (etcd campaigns at
/// term 1 during bootstrap and wins term 2).
const SINGLE_MEMBER_RAFT_TERM: u64 = 2;

/// Raft entries a fresh single-member etcd has applied before serving: the bootstrap
/// ConfChange, the leader's empty entry, the member attribute publish and the cluster
/// version set.
const BOOTSTRAP_RAFT_ENTRIES: u64 = 4;

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
    watch_feed: crate::watch::WatchFeed,
}

impl StateMachine {
    pub fn new(identity: Identity, mut store: KvStore<MemBackend>) -> StateMachine {
        // The bootstrap entries are applied before anything else, so the store's
        // consistent index starts past them, as a fresh etcd's does.
        if store.consistent_index() < BOOTSTRAP_RAFT_ENTRIES {
            store.set_consistent_index(BOOTSTRAP_RAFT_ENTRIES);
            store.commit().expect("the in-memory backend cannot fail");
        }
        StateMachine {
            identity,
            store,
            raft_applied_index: BOOTSTRAP_RAFT_ENTRIES,
            alarms: Vec::new(),
            watch_feed: crate::watch::WatchFeed::default(),
        }
    }

    fn header(&self, revision: i64) -> pb::ResponseHeader {
        pb::ResponseHeader {
            cluster_id: self.identity.cluster_id,
            member_id: self.identity.member_id,
            revision,
            raft_term: SINGLE_MEMBER_RAFT_TERM,
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
                let _ = reply.send(Ok(pb::AlarmResponse {
                    header: None,
                    alarms,
                }));
            }
            Command::Defragment(reply) => {
                let res: Result<_, EtcdError> = Ok(pb::DefragmentResponse {
                    header: Some(self.header(self.store.current_revision())),
                });
                let _ = reply.send(res);
            }
            Command::WatchSync(req, reply) => {
                let header = self.header(0);
                let _ = reply.send(self.watch_feed.sync(&self.store, req, &header));
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

    /// etcd's alarm semantics: GET lists every raised alarm (NONE matches all types);
    /// ACTIVATE raises one and answers with it; DEACTIVATE clears one and answers with what
    /// it cleared. Nothing raises alarms on its own yet: the quota check (NOSPACE) and the
    /// corruption check (CORRUPT) arrive with the persistent backend.
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
                if req.alarm == pb::AlarmType::None as i32 {
                    return Vec::new();
                }
                if !self.alarms.contains(&wanted) {
                    self.alarms.push(wanted);
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
            leader: self.identity.member_id,
            raft_index: self.raft_applied_index,
            raft_term: SINGLE_MEMBER_RAFT_TERM,
            raft_applied_index: self.raft_applied_index,
            errors: Vec::new(),
            db_size_in_use: db_size,
            is_learner: false,
        }
    }
}
