//! The state machine's lease half: applying Lease commands, following the key space's
//! changes, and the primary's expiry and checkpoint passes.
//!
//! Invariants:
//! - Grant, Revoke and Checkpoint are raft entries (they advance the applied index and
//!   write the backend) applied on every member; Renew, TimeToLive and Leases are not, as
//!   in etcd: a keep-alive is answered by the leader alone (followers forward it,
//!   src/raft/node/).
//! - The lessor is primary exactly while this member is the raft leader (the node calls
//!   [`StateMachine::sync_lease_role`]). Only the primary decides expiry and checkpoints,
//!   and it never applies them itself: it queues them as [`LeaseProposal`]s, which the
//!   node proposes through raft; every member then applies the committed entry.
//! - An expired lease is removed only by `apply_lease_revoke`, the same function a
//!   client's LeaseRevoke runs. Revoking deletes the lease's keys in one write
//!   transaction: one revision for all of them (none if it had no keys).
//! - `after_write` runs after every applied write and feeds that write's changes to the
//!   lessor (attach/detach) and to the change waiters, exactly once per store revision.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::StateMachine;
use crate::error::EtcdError;
use crate::lease::LeaseOptions;
use crate::mvcc::{KeyRange, RangeOptions};
use crate::proto::etcdserverpb as pb;
use crate::state::envelope::{LeaseCheckpoint, LeaseCheckpoints};
use crate::state::LeaseCommand;

/// The primary looks for expired leases and due checkpoints at least this often (etcd's
/// lessor run loop ticks every 500 ms); sooner when a deadline falls earlier.
pub const LEASE_PASS_INTERVAL_MAX: Duration = Duration::from_millis(500);
/// ... and at most this often.
pub const LEASE_PASS_INTERVAL_MIN: Duration = Duration::from_millis(20);

/// etcd's request-id generator layout: 16 bits of member id, 40 bits of milliseconds,
/// 8 bits of counter.
const ID_TIMESTAMP_AND_COUNTER_BITS: u32 = 48;
const ID_COUNTER_BITS: u32 = 8;

/// An expired lease whose revocation was proposed is proposed again only after this long
/// (etcd's `expiredLeaseRetryInterval`), in case the first proposal was lost.
pub const EXPIRED_REVOKE_RETRY: Duration = Duration::from_secs(3);

/// Bound on lease proposals queued for the node between two ticks; the primary's passes
/// stop queueing beyond it (the leases stay expired and are found again next pass).
pub const LEASE_PROPOSALS_MAX: usize = 4096;

/// What the primary's lease loop wants raft to order (the node proposes these).
#[derive(Debug, PartialEq)]
pub enum LeaseProposal {
    /// Revoke an expired lease.
    Revoke(i64),
    /// Record remaining TTLs (0 clears one).
    Checkpoint(LeaseCheckpoints),
}

impl StateMachine {
    /// Sets the lease options from flags, then (re)starts every deadline: this member has
    /// just become primary, and the election it won is the `extend` etcd grants.
    pub fn with_lease_options(mut self, options: LeaseOptions, promote_extend: Duration) -> Self {
        self.lessor.set_options(options);
        self.lessor.promote(promote_extend, Instant::now());
        self
    }

    /// Makes the lessor primary exactly while this member leads: a new leader promotes
    /// (every lease's deadline restarts from its checkpointed remainder plus `extend`, one
    /// election timeout, as etcd's `Promote`); a member that stopped leading demotes (no
    /// lease expires there). Called by the raft node on every role change and tick.
    pub fn sync_lease_role(&mut self, is_leader: bool, extend: Duration) {
        if is_leader && !self.lessor.is_primary() {
            self.lessor.promote(extend, Instant::now());
        } else if !is_leader && self.lessor.is_primary() {
            self.lessor.demote();
            self.lease_proposals.clear();
            self.revoke_proposed_at.clear();
        }
    }

    /// The lease proposals queued since the last call (the node proposes them).
    pub fn take_lease_proposals(&mut self) -> Vec<LeaseProposal> {
        std::mem::take(&mut self.lease_proposals)
    }

    fn queue_lease_proposal(&mut self, proposal: LeaseProposal) {
        if self.lease_proposals.len() < LEASE_PROPOSALS_MAX {
            self.lease_proposals.push(proposal);
        }
    }

    /// Rebuilds the lessor from the `lease` bucket and re-attaches every live key that
    /// names a lease; the lessor keeps its role (primary only on the leader).
    pub(super) fn restore_leases(&mut self) {
        let was_primary = self.lessor.is_primary();
        if let Err(e) = self.lessor.restore(self.store.backend()) {
            // The store opened from the same backend; a damaged lease bucket alone must
            // not stop the member serving its keys. etcd panics here; we log and go on
            // without the unreadable leases.
            crate::error!("cannot restore leases", "error" => e.to_string());
        }
        // Attaching keys reads every live key's value; with no lease there is nothing to
        // attach (a restart of 100k lease-less keys spent a third of its time here).
        let all = KeyRange::from_request(&[0], &[0]);
        if !self.lessor.is_empty() {
            if let Ok(result) = self.store.range_keys(all, RangeOptions::default()) {
                for kv in result.kvs {
                    if kv.lease != 0 {
                        self.lessor.attach_restored(kv.key, kv.lease);
                    }
                }
            }
        }
        if was_primary {
            self.lessor.promote(Duration::ZERO, Instant::now());
        } else {
            self.lessor.demote();
        }
        self.lease_id_suffix = initial_id_suffix();
    }

    /// Feeds the last write's changes to the lessor and the waiters, once per revision.
    pub(super) fn after_write(&mut self) {
        let revision = self.store.current_revision();
        if revision == self.changes_seen_revision {
            return;
        }
        self.changes_seen_revision = revision;
        let changes = self.store.last_changes();
        publish_key_changes(changes, revision, self.store.compact_revision());
        self.lessor.on_changes(changes);
        self.waiters.notify(changes);
        // Every write path (client requests and lease expiry alike) ends here, so this is
        // where its events are built for the watchers; they are sent after the commit.
        let header = self.header(0);
        self.watch_feed.publish(&self.store, &header);
    }

    pub(super) fn handle_lease(&mut self, command: LeaseCommand, now: Instant) {
        match command {
            LeaseCommand::Grant(req, reply) => {
                let res = self.lease_grant(req, now);
                self.reply(reply, res);
            }
            LeaseCommand::Revoke(req, reply) => {
                // Revoking deletes the attached keys: the caller must be able to write
                // every one of them (etcd's `checkLeasePuts`).
                let res = match self.check_lease_keys(req.id, crate::auth::Access::Write) {
                    Err(e) => {
                        self.advance_applied_index();
                        Err(e)
                    }
                    Ok(()) => self
                        .apply_lease_revoke(req.id)
                        .map(|()| pb::LeaseRevokeResponse {
                            header: Some(self.header(self.store.current_revision())),
                        }),
                };
                self.reply(reply, res);
            }
            LeaseCommand::Renew(req, reply) => {
                let res = self.lease_renew(req.id, now);
                self.reply(reply, res);
            }
            LeaseCommand::TimeToLive(req, reply) => {
                let res = Ok(self.lease_time_to_live(&req, now));
                self.reply(reply, res);
            }
            LeaseCommand::Checkpoint(batch, reply) => {
                let checkpoints: Vec<(i64, i64)> = batch
                    .checkpoints
                    .iter()
                    .map(|c| (c.id, c.remaining_ttl_secs))
                    .collect();
                self.apply_lease_checkpoints(&checkpoints, now);
                self.reply(reply, Ok(()));
            }
            LeaseCommand::Leases(reply) => {
                let leases = self
                    .lessor
                    .leases_by_expiry()
                    .into_iter()
                    .map(|id| pb::LeaseStatus { id })
                    .collect();
                let res = Ok(pb::LeaseLeasesResponse {
                    header: Some(self.header(self.store.current_revision())),
                    leases,
                });
                self.reply(reply, res);
            }
        }
    }

    /// Applies etcd's `LeaseGrant`. The proposing member picked the id when the client gave
    /// none (`next_lease_id`, before proposing, so the entry is deterministic); an id taken
    /// by the time the entry applies answers "lease already exists" on every member.
    fn lease_grant(
        &mut self,
        req: pb::LeaseGrantRequest,
        now: Instant,
    ) -> Result<pb::LeaseGrantResponse, EtcdError> {
        let id = if req.id == 0 {
            self.next_lease_id()
        } else {
            req.id
        };
        self.advance_applied_index();
        let granted = self
            .lessor
            .grant(self.store.backend_mut(), id, req.ttl, now)?;
        crate::metrics::STATE.lease_granted.add(1, false);
        crate::metrics::STATE
            .lease_ttl
            .observe(&crate::metrics::LEASE_TTL_BUCKETS, granted.ttl_secs as f64);
        Ok(pb::LeaseGrantResponse {
            header: Some(self.header(self.store.current_revision())),
            id: granted.id,
            ttl: granted.ttl_secs,
            error: String::new(),
        })
    }

    /// Applies a revoke (a client's, or the primary's for an expired lease): the lease
    /// and its record go, and its keys are deleted in one write transaction.
    pub(super) fn apply_lease_revoke(&mut self, id: i64) -> Result<(), EtcdError> {
        self.advance_applied_index();
        let keys = self.lessor.revoke(self.store.backend_mut(), id)?;
        crate::metrics::STATE.lease_revoked.add(1, false);
        let mut deleted: Result<(), EtcdError> = Ok(());
        {
            let mut txn = self.store.write();
            for key in &keys {
                if let Err(e) = txn.delete_range(KeyRange::Single(key)) {
                    deleted = Err(e);
                    break;
                }
            }
        }
        self.after_write();
        deleted
    }

    /// Applies a checkpoint entry (etcd's `LeaseCheckpointRequest`).
    fn apply_lease_checkpoints(&mut self, checkpoints: &[(i64, i64)], now: Instant) {
        self.advance_applied_index();
        for &(id, remaining_ttl_secs) in checkpoints {
            if let Err(e) =
                self.lessor
                    .checkpoint(self.store.backend_mut(), id, remaining_ttl_secs, now)
            {
                crate::error!("cannot persist a lease checkpoint", "lease" => id, "error" => e.to_string());
            }
        }
    }

    /// One keep-alive. etcd's v3rpc answers an unknown (or just expired) lease with
    /// TTL 0 rather than an error; the header is filled before renewing.
    fn lease_renew(
        &mut self,
        id: i64,
        now: Instant,
    ) -> Result<pb::LeaseKeepAliveResponse, EtcdError> {
        let header = Some(self.header(self.store.current_revision()));
        // An expired lease answers TTL 0 (the lessor says "not found"): its revocation is
        // the primary's to propose (etcd's Renew waits for it, then answers the same).
        let ttl = match self.lessor.renew(id, now) {
            Ok((ttl, clear_checkpoint)) => {
                crate::metrics::STATE.lease_renewed.add(1, false);
                if clear_checkpoint {
                    // Through raft, like etcd's Renew: a failover must not resume from
                    // the stale remainder.
                    self.queue_lease_proposal(LeaseProposal::Checkpoint(LeaseCheckpoints {
                        checkpoints: vec![LeaseCheckpoint {
                            id,
                            remaining_ttl_secs: 0,
                        }],
                    }));
                }
                ttl
            }
            Err(EtcdError::LeaseNotFound) => 0,
            Err(e) => return Err(e),
        };
        Ok(pb::LeaseKeepAliveResponse { header, id, ttl })
    }

    /// etcd's `LeaseTimeToLive`: an unknown lease answers TTL -1 (not an error).
    fn lease_time_to_live(
        &self,
        req: &pb::LeaseTimeToLiveRequest,
        now: Instant,
    ) -> pb::LeaseTimeToLiveResponse {
        let header = Some(self.header(self.store.current_revision()));
        match self.lessor.lookup(req.id) {
            None => pb::LeaseTimeToLiveResponse {
                header,
                id: req.id,
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
            },
            Some(lease) => pb::LeaseTimeToLiveResponse {
                header,
                id: req.id,
                ttl: lease.remaining_secs(now),
                granted_ttl: lease.ttl_secs,
                keys: if req.keys {
                    lease.keys.iter().cloned().collect()
                } else {
                    Vec::new()
                },
            },
        }
    }

    /// Queues a revoke proposal for every expired lease not proposed in the last
    /// `EXPIRED_REVOKE_RETRY` (primary only).
    fn expire_leases(&mut self, now: Instant) {
        if !self.lessor.is_primary() {
            return;
        }
        let lessor = &self.lessor;
        self.revoke_proposed_at.retain(|id, at| {
            lessor.lookup(*id).is_some() && now.duration_since(*at) < EXPIRED_REVOKE_RETRY
        });
        for id in self.lessor.expired(now) {
            if self.revoke_proposed_at.contains_key(&id) {
                continue;
            }
            crate::debug!("proposing revocation of expired lease", "lease" => format!("{id:016x}"));
            self.revoke_proposed_at.insert(id, now);
            crate::metrics::STATE.lease_expired.add(1, false);
            self.queue_lease_proposal(LeaseProposal::Revoke(id));
        }
    }

    /// One pass of the primary's lease loop: expiry, then due checkpoints, both queued as
    /// proposals. Returns when the next pass is due.
    pub fn lease_pass(&mut self, now: Instant) -> Instant {
        self.expire_leases(now);
        if self.lessor.is_primary() {
            let due = self.lessor.due_checkpoints(now);
            if !due.is_empty() {
                let checkpoints = due
                    .into_iter()
                    .map(|(id, remaining_ttl_secs)| LeaseCheckpoint {
                        id,
                        remaining_ttl_secs,
                    })
                    .collect();
                self.queue_lease_proposal(LeaseProposal::Checkpoint(LeaseCheckpoints {
                    checkpoints,
                }));
            }
        }
        let latest = now + LEASE_PASS_INTERVAL_MAX;
        // A deadline already passed (a revocation proposed but not yet applied) must not
        // make the loop spin: the next pass waits at least the minimum interval.
        let earliest = now + LEASE_PASS_INTERVAL_MIN;
        self.lessor
            .next_deadline()
            .map_or(latest, |d| d.clamp(earliest, latest))
    }

    /// A fresh server-chosen lease id: positive, nonzero, not taken (etcd's reqIDGen
    /// masked to 63 bits).
    pub fn next_lease_id(&mut self) -> i64 {
        let prefix = (self.identity.member_id & 0xffff) << ID_TIMESTAMP_AND_COUNTER_BITS;
        let mask = (1u64 << ID_TIMESTAMP_AND_COUNTER_BITS) - 1;
        loop {
            self.lease_id_suffix = self.lease_id_suffix.wrapping_add(1);
            let id = ((prefix | (self.lease_id_suffix & mask)) & (i64::MAX as u64)) as i64;
            if id != 0 && self.lessor.lookup(id).is_none() {
                return id;
            }
        }
    }
}

/// etcd starts its id counter at the current time in milliseconds, shifted past the
/// counter bits, so ids from before a restart are not reused.
fn initial_id_suffix() -> u64 {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    (ms << ID_COUNTER_BITS) & ((1u64 << ID_TIMESTAMP_AND_COUNTER_BITS) - 1)
}

/// The primary's lease loop on the state executor: sleeps until something is due, then
/// runs a pass. Runs until its task is dropped.
pub async fn run_lease_timer(state: Rc<RefCell<StateMachine>>) {
    loop {
        let next = {
            let mut state = state.borrow_mut();
            // Expiry and checkpoints are proposed by the node (it drains the queue on its
            // next tick); nothing is applied here.
            state.lease_pass(Instant::now())
        };
        glommio::timer::sleep(next.saturating_duration_since(Instant::now())).await;
    }
}

/// Keeps `etcd_debugging_mvcc_keys_total` (live keys: a key's first put adds one, its
/// delete takes one) and the store's revisions current for `/metrics`.
fn publish_key_changes(changes: &[crate::mvcc::Change], revision: i64, compact_revision: i64) {
    let s = &crate::metrics::STATE;
    let delta: i64 = changes
        .iter()
        .map(|c| match c.kind {
            crate::mvcc::ChangeKind::Put => i64::from(c.kv.version == 1),
            crate::mvcc::ChangeKind::Delete => -1,
        })
        .sum();
    s.mvcc_keys.add(delta, false);
    s.mvcc_current_revision.set(revision);
    s.mvcc_compact_revision.set(compact_revision);
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use bytes::Bytes;
    use futures::channel::oneshot;

    use super::{LeaseProposal, StateMachine};
    use crate::error::EtcdError;
    use crate::mvcc::{BtreeBackend, KvStore};
    use crate::proto::etcdserverpb as pb;
    use crate::state::client::Command;
    use crate::state::Identity;
    use crate::state::LeaseCommand;

    /// A state machine over a B+tree file in a fresh temp dir (leaked for the test's
    /// lifetime: the dir is per test process and the OS cleans /tmp).
    fn machine() -> StateMachine {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tern-lease-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let backend = BtreeBackend::open(&dir.join("db")).unwrap();
        let identity = Identity {
            cluster_id: 1,
            member_id: 0xabcd_0000_1234,
            name: "t".into(),
            peer_urls: Vec::new(),
            client_urls: Vec::new(),
        };
        StateMachine::new(identity, KvStore::open(backend).unwrap()).unwrap()
    }

    fn run<T>(
        state: &mut StateMachine,
        make: impl FnOnce(oneshot::Sender<Result<T, EtcdError>>) -> Command,
    ) -> Result<T, EtcdError> {
        let (tx, mut rx) = oneshot::channel();
        state.handle(make(tx));
        state.flush();
        rx.try_recv()
            .unwrap()
            .expect("the state machine answers at once")
    }

    fn put(state: &mut StateMachine, key: &str, lease: i64) -> Result<pb::PutResponse, EtcdError> {
        let req = pb::PutRequest {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::from_static(b"v"),
            lease,
            ..Default::default()
        };
        run(state, |r| Command::Put(req, r))
    }

    fn grant(state: &mut StateMachine, ttl: i64) -> i64 {
        let req = pb::LeaseGrantRequest { ttl, id: 0 };
        run(state, |r| Command::Lease(LeaseCommand::Grant(req, r)))
            .unwrap()
            .id
    }

    #[test]
    fn revoke_deletes_every_attached_key_in_one_revision() {
        let mut state = machine();
        let id = grant(&mut state, 60);
        assert!(id > 0 && id >> 48 == 0x1234, "member prefix in {id:x}");
        for key in ["a", "b", "c"] {
            put(&mut state, key, id).unwrap();
        }
        put(&mut state, "plain", 0).unwrap();
        let before = state.store.current_revision();
        let resp = run(&mut state, |r| {
            Command::Lease(LeaseCommand::Revoke(pb::LeaseRevokeRequest { id }, r))
        })
        .unwrap();
        assert_eq!(resp.header.unwrap().revision, before + 1);
        assert_eq!(state.store.current_revision(), before + 1);
        let all = crate::mvcc::KeyRange::from_request(&[0], &[0]);
        let live = state.store.range_keys(all, Default::default()).unwrap();
        assert_eq!(live.count, 1);
        assert_eq!(
            put(&mut state, "x", id).unwrap_err(),
            EtcdError::LeaseNotFound
        );
    }

    #[test]
    fn a_grant_whose_id_is_taken_at_apply_time_is_refused() {
        let mut state = machine();
        let req = pb::LeaseGrantRequest { ttl: 60, id: 42 };
        let first = run(&mut state, |r| Command::Lease(LeaseCommand::Grant(req, r)));
        assert_eq!(first.unwrap().id, 42);
        let again = run(&mut state, |r| Command::Lease(LeaseCommand::Grant(req, r)));
        assert_eq!(again.unwrap_err(), EtcdError::LeaseExist);
        assert_eq!(
            EtcdError::LeaseExist.message(),
            "etcdserver: lease already exists"
        );
    }

    #[test]
    fn expiry_revokes_through_the_write_path() {
        let mut state = machine();
        let id = grant(&mut state, 2);
        put(&mut state, "short", id).unwrap();
        let empty = grant(&mut state, 2);
        let before = state.store.current_revision();
        let now = Instant::now();
        state.lease_pass(now);
        assert!(state.lessor.lookup(id).is_some());
        assert!(state.take_lease_proposals().is_empty());
        state.lease_pass(now + Duration::from_secs(3));
        // The primary only proposes: nothing is revoked until the entries apply.
        assert!(state.lessor.lookup(id).is_some());
        let proposals = state.take_lease_proposals();
        let mut revoked = Vec::new();
        for proposal in proposals {
            if let LeaseProposal::Revoke(lease) = proposal {
                revoked.push(lease);
                run(&mut state, |r| {
                    Command::Lease(LeaseCommand::Revoke(
                        pb::LeaseRevokeRequest { id: lease },
                        r,
                    ))
                })
                .unwrap();
            }
        }
        revoked.sort_unstable();
        let mut expected = vec![id, empty];
        expected.sort_unstable();
        assert_eq!(revoked, expected);
        // Not proposed again while the first proposal may still be in flight.
        state.lease_pass(now + Duration::from_secs(4));
        assert!(state.take_lease_proposals().is_empty());
        assert!(state.lessor.lookup(id).is_none() && state.lessor.lookup(empty).is_none());
        // One revision for the key of the first lease; none for the keyless one.
        assert_eq!(state.store.current_revision(), before + 1);
        let ttl = run(&mut state, |r| {
            Command::Lease(LeaseCommand::TimeToLive(
                pb::LeaseTimeToLiveRequest { id, keys: true },
                r,
            ))
        })
        .unwrap();
        assert_eq!((ttl.ttl, ttl.granted_ttl), (-1, 0));
        let kept = run(&mut state, |r| {
            Command::Lease(LeaseCommand::Renew(pb::LeaseKeepAliveRequest { id }, r))
        })
        .unwrap();
        assert_eq!(kept.ttl, 0);
    }
}
