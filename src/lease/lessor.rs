//! The lessor: which leases exist, their TTLs and deadlines, and which keys each one holds
//! (etcd's `server/lease/lessor.go`, semantics of 3.4 with checkpointing as in 3.5).
//!
//! Invariants:
//! - `key_lease` and the leases' `keys` sets are two views of one relation: a key is
//!   attached to at most one lease, and `key_lease[k] == id` iff `leases[id].keys`
//!   contains `k`. The relation follows the MVCC store's changes (`on_changes`), never a
//!   request, so it is exactly what the store holds.
//! - Deadlines exist only while this member is primary (the raft leader). A non-primary
//!   lessor keeps every lease alive forever, as etcd's does; expiry is decided by the
//!   primary alone and carried out as an ordinary revoke through the state machine's write
//!   path, so that raft can order it like any client revoke.
//! - Every lease in memory has a record in the backend's `lease` bucket and vice versa
//!   (written in the same batch as the change that caused it). Record format:
//!   docs/lease.md.
//! - Time comes in as an argument (`now`): the lessor never reads a clock, which makes it
//!   deterministic under test.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message;

use crate::apply::LeaseLookup;
use crate::error::EtcdError;
use crate::mvcc::backend::{Backend, BackendError, Bucket, Direction};
use crate::mvcc::{Change, ChangeKind};

/// The longest TTL a lease may have, in seconds (etcd's `MaxLeaseTTL`, about 285 years).
pub const LEASE_TTL_SECS_MAX: i64 = 9_000_000_000;

/// etcd's default `--experimental-lease-checkpoint-interval`: how often the primary
/// records the remaining TTL of long leases, so a new leader or a restart resumes them
/// close to where they were.
pub const CHECKPOINT_INTERVAL_DEFAULT: Duration = Duration::from_secs(5 * 60);

/// At most this many leases are revoked per expiry pass (etcd's `leaseRevokeRate` of
/// 1000/s, checked twice a second); the rest wait for the next pass, so a mass expiry
/// cannot stall every other request on the state executor.
pub const EXPIRED_PER_PASS_MAX: usize = 500;

/// At most this many checkpoints per pass (etcd's `maxLeaseCheckpointBatchSize`).
pub const CHECKPOINTS_PER_PASS_MAX: usize = 1000;

/// How the lessor is configured (from etcd's flags).
#[derive(Clone, Copy, Debug)]
pub struct LeaseOptions {
    /// Grants with a smaller TTL get this one (etcd: 1.5 election timeouts, rounded up).
    pub min_ttl_secs: i64,
    /// How often long leases get their remaining TTL checkpointed.
    pub checkpoint_interval: Duration,
}

impl LeaseOptions {
    /// etcd's `minTTL`: `(3 * election_ticks / 2) * heartbeat`, rounded up to seconds,
    /// with election ticks = election timeout / heartbeat.
    pub fn from_raft_timing(heartbeat_interval_ms: u64, election_timeout_ms: u64) -> LeaseOptions {
        let heartbeat_ms = heartbeat_interval_ms.max(1);
        let election_ticks = election_timeout_ms / heartbeat_ms;
        let min_ttl_ms = (3 * election_ticks / 2) * heartbeat_ms;
        LeaseOptions {
            min_ttl_secs: min_ttl_ms.div_ceil(1000) as i64,
            checkpoint_interval: CHECKPOINT_INTERVAL_DEFAULT,
        }
    }
}

impl Default for LeaseOptions {
    /// etcd's defaults: heartbeat 100 ms, election timeout 1000 ms → minimum TTL 2 s.
    fn default() -> LeaseOptions {
        LeaseOptions::from_raft_timing(100, 1000)
    }
}

/// One lease.
#[derive(Clone, Debug)]
pub struct Lease {
    pub id: i64,
    /// The granted TTL in seconds (after raising it to the minimum).
    pub ttl_secs: i64,
    /// The last checkpointed remaining TTL in seconds; 0 = none (use `ttl_secs`).
    pub remaining_ttl_secs: i64,
    /// When the lease expires; None while not primary (never expires).
    pub expiry: Option<Instant>,
    /// When the next checkpoint of this lease is due (primary only).
    checkpoint_at: Option<Instant>,
    /// Keys attached to this lease, in key order.
    pub keys: BTreeSet<Bytes>,
}

impl Lease {
    /// Seconds left, truncated as etcd's `int64(l.Remaining().Seconds())`; a lease
    /// without a deadline reports the largest value.
    pub fn remaining_secs(&self, now: Instant) -> i64 {
        match self.expiry {
            None => i64::MAX,
            Some(expiry) => expiry.saturating_duration_since(now).as_secs() as i64,
        }
    }

    fn is_expired(&self, now: Instant) -> bool {
        self.expiry.is_some_and(|e| e <= now)
    }

    /// The TTL a refresh starts from: the checkpointed remainder if any, else the TTL.
    fn effective_ttl_secs(&self) -> i64 {
        if self.remaining_ttl_secs > 0 {
            self.remaining_ttl_secs
        } else {
            self.ttl_secs
        }
    }
}

/// A lease's record in the `lease` bucket (etcd's `leasepb.Lease`, same field numbers).
#[derive(Clone, PartialEq, Message)]
pub struct LeaseRecord {
    #[prost(int64, tag = "1")]
    pub id: i64,
    #[prost(int64, tag = "2")]
    pub ttl: i64,
    #[prost(int64, tag = "3")]
    pub remaining_ttl: i64,
}

/// The `lease` bucket key of a lease: its id as 8 big-endian bytes (etcd's `int64ToBytes`).
pub fn lease_bucket_key(id: i64) -> [u8; 8] {
    (id as u64).to_be_bytes()
}

/// What `grant` made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Granted {
    pub id: i64,
    pub ttl_secs: i64,
}

pub struct Lessor {
    options: LeaseOptions,
    leases: HashMap<i64, Lease>,
    key_lease: HashMap<Bytes, i64>,
    primary: bool,
}

impl LeaseLookup for Lessor {
    fn lease_exists(&self, lease_id: i64) -> bool {
        self.leases.contains_key(&lease_id)
    }
}

impl Lessor {
    /// A lessor with no leases. It starts primary: until raft arrives the single member
    /// is always the leader.
    pub fn new(options: LeaseOptions) -> Lessor {
        Lessor {
            options,
            leases: HashMap::new(),
            key_lease: HashMap::new(),
            primary: true,
        }
    }

    pub fn options(&self) -> LeaseOptions {
        self.options
    }

    pub fn set_options(&mut self, options: LeaseOptions) {
        self.options = options;
    }

    pub fn is_primary(&self) -> bool {
        self.primary
    }

    pub fn lookup(&self, id: i64) -> Option<&Lease> {
        self.leases.get(&id)
    }

    pub fn len(&self) -> usize {
        self.leases.len()
    }

    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }

    /// The lease `key` is attached to, if any.
    pub fn lease_of(&self, key: &[u8]) -> Option<i64> {
        self.key_lease.get(key).copied()
    }

    /// etcd's `Grant`: a new lease `id` (nonzero) with `ttl_secs`, raised to the minimum.
    pub fn grant<B: Backend>(
        &mut self,
        backend: &mut B,
        id: i64,
        ttl_secs: i64,
        now: Instant,
    ) -> Result<Granted, EtcdError> {
        if id == 0 {
            return Err(EtcdError::LeaseNotFound);
        }
        if ttl_secs > LEASE_TTL_SECS_MAX {
            return Err(EtcdError::LeaseTtlTooLarge);
        }
        if self.leases.contains_key(&id) {
            return Err(EtcdError::LeaseExist);
        }
        let mut lease = Lease {
            id,
            ttl_secs: ttl_secs.max(self.options.min_ttl_secs),
            remaining_ttl_secs: 0,
            expiry: None,
            checkpoint_at: None,
            keys: BTreeSet::new(),
        };
        if self.primary {
            self.refresh(&mut lease, Duration::ZERO, now);
        }
        persist(backend, &lease)?;
        let granted = Granted {
            id,
            ttl_secs: lease.ttl_secs,
        };
        self.leases.insert(id, lease);
        Ok(granted)
    }

    /// etcd's `Revoke`, the lessor's half: forgets the lease and its record and returns
    /// its keys in key order. The caller deletes those keys in one write transaction, in
    /// the same backend batch.
    pub fn revoke<B: Backend>(
        &mut self,
        backend: &mut B,
        id: i64,
    ) -> Result<Vec<Bytes>, EtcdError> {
        let lease = self.leases.remove(&id).ok_or(EtcdError::LeaseNotFound)?;
        for key in &lease.keys {
            self.key_lease.remove(key);
        }
        backend
            .delete(Bucket::Lease, &lease_bucket_key(id))
            .map_err(|_| EtcdError::Corrupt)?;
        Ok(lease.keys.into_iter().collect())
    }

    /// etcd's `Renew` on the primary: restarts the lease's full TTL and returns it.
    /// Not a raft write. An expired lease is "not found": it is about to be revoked.
    /// `Ok((ttl, clear_checkpoint))`: when `clear_checkpoint`, the caller must apply a
    /// checkpoint of 0 for this lease (through the write path), so that a failover does
    /// not resume from the stale remainder.
    pub fn renew(&mut self, id: i64, now: Instant) -> Result<(i64, bool), EtcdError> {
        if !self.primary {
            return Err(EtcdError::NotLeader);
        }
        let primary = self.primary;
        let interval = self.options.checkpoint_interval;
        let lease = self.leases.get_mut(&id).ok_or(EtcdError::LeaseNotFound)?;
        if lease.is_expired(now) {
            return Err(EtcdError::LeaseNotFound);
        }
        let clear_checkpoint = lease.remaining_ttl_secs > 0;
        lease.remaining_ttl_secs = 0;
        refresh_lease(lease, Duration::ZERO, now, primary, interval);
        Ok((lease.ttl_secs, clear_checkpoint))
    }

    /// Applies a checkpoint: records `remaining_ttl_secs` for lease `id` (0 clears it) and
    /// persists it. Unknown leases are skipped, as in etcd (revoked since it was taken).
    pub fn checkpoint<B: Backend>(
        &mut self,
        backend: &mut B,
        id: i64,
        remaining_ttl_secs: i64,
        now: Instant,
    ) -> Result<(), EtcdError> {
        let primary = self.primary;
        let interval = self.options.checkpoint_interval;
        let Some(lease) = self.leases.get_mut(&id) else {
            return Ok(());
        };
        lease.remaining_ttl_secs = remaining_ttl_secs.max(0);
        if primary {
            schedule_checkpoint(lease, now, interval);
        }
        persist(backend, lease)
    }

    /// Leases whose deadline has passed, earliest first, at most `EXPIRED_PER_PASS_MAX`.
    pub fn expired(&self, now: Instant) -> Vec<i64> {
        let mut expired: Vec<(Instant, i64)> = self
            .leases
            .values()
            .filter_map(|l| l.expiry.filter(|e| *e <= now).map(|e| (e, l.id)))
            .collect();
        expired.sort_unstable();
        expired.truncate(EXPIRED_PER_PASS_MAX);
        expired.into_iter().map(|(_, id)| id).collect()
    }

    /// Due checkpoints as (lease id, remaining TTL in whole seconds rounded up), for
    /// leases whose remainder is below their TTL (etcd's `findDueScheduledCheckpoints`).
    pub fn due_checkpoints(&mut self, now: Instant) -> Vec<(i64, i64)> {
        let mut due = Vec::new();
        for lease in self.leases.values_mut() {
            if due.len() >= CHECKPOINTS_PER_PASS_MAX {
                break;
            }
            let (Some(at), Some(expiry)) = (lease.checkpoint_at, lease.expiry) else {
                continue;
            };
            if at > now {
                continue;
            }
            lease.checkpoint_at = None;
            let left = expiry.saturating_duration_since(now);
            let remaining = left.as_secs() as i64 + i64::from(left.subsec_nanos() > 0);
            if remaining < lease.ttl_secs {
                due.push((lease.id, remaining));
            }
        }
        due
    }

    /// The earliest instant something is due (an expiry or a checkpoint), if any.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.leases
            .values()
            .flat_map(|l| [l.expiry, l.checkpoint_at])
            .flatten()
            .min()
    }

    /// Every lease id, ordered by deadline (etcd's `Leases`, sorted by expiry), ties by id.
    pub fn leases_by_expiry(&self) -> Vec<i64> {
        let mut all: Vec<(Option<Instant>, i64)> =
            self.leases.values().map(|l| (l.expiry, l.id)).collect();
        // None (no deadline) sorts last, as etcd's "forever" expiry does.
        all.sort_unstable_by(|a, b| match (a.0, b.0) {
            (Some(x), Some(y)) => x.cmp(&y).then(a.1.cmp(&b.1)),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => a.1.cmp(&b.1),
        });
        all.into_iter().map(|(_, id)| id).collect()
    }

    /// Follows the MVCC store's last write: a put attaches its key to its lease (and
    /// detaches it from the previous one), a delete detaches it (etcd does this inside
    /// `storeTxnWrite.put`/`delete`).
    pub fn on_changes(&mut self, changes: &[Change]) {
        for change in changes {
            let key = &change.kv.key;
            let new_lease = match change.kind {
                ChangeKind::Put => change.kv.lease,
                ChangeKind::Delete => 0,
            };
            let old_lease = self.key_lease.get(key).copied().unwrap_or(0);
            if old_lease == new_lease {
                continue;
            }
            if old_lease != 0 {
                if let Some(lease) = self.leases.get_mut(&old_lease) {
                    lease.keys.remove(key);
                }
                self.key_lease.remove(key);
            }
            // A put names only existing leases (the applier checks), so the lease is here.
            if let Some(lease) = self.leases.get_mut(&new_lease) {
                lease.keys.insert(key.clone());
                self.key_lease.insert(key.clone(), new_lease);
            }
        }
        debug_assert!(self.relation_consistent());
    }

    /// etcd's `Promote`: this member became primary; every lease gets a deadline of its
    /// (checkpointed) remaining TTL plus `extend`, which covers the election that just ran.
    pub fn promote(&mut self, extend: Duration, now: Instant) {
        self.primary = true;
        let interval = self.options.checkpoint_interval;
        for lease in self.leases.values_mut() {
            refresh_lease(lease, extend, now, true, interval);
        }
    }

    /// etcd's `Demote`: no longer primary; no lease expires here until promoted again.
    pub fn demote(&mut self) {
        self.primary = false;
        for lease in self.leases.values_mut() {
            lease.expiry = None;
            lease.checkpoint_at = None;
        }
    }

    /// Rebuilds the leases from the `lease` bucket (etcd's `initAndRecover`). They have
    /// no deadline until `promote`; keys are attached afterwards by `attach_restored`.
    pub fn restore<B: Backend>(&mut self, backend: &B) -> Result<(), BackendError> {
        self.leases.clear();
        self.key_lease.clear();
        let mut failure = None;
        let mut records = Vec::new();
        backend.scan(
            Bucket::Lease,
            &[],
            None,
            Direction::Ascending,
            &mut |k, v| match LeaseRecord::decode(v) {
                Ok(r) if k == lease_bucket_key(r.id) => {
                    records.push(r);
                    true
                }
                Ok(r) => {
                    failure = Some(format!("lease bucket: key {k:02x?} holds lease {}", r.id));
                    false
                }
                Err(e) => {
                    failure = Some(format!("lease bucket: {e}"));
                    false
                }
            },
        )?;
        if let Some(what) = failure {
            return Err(BackendError::Corrupted(what));
        }
        for r in records {
            self.leases.insert(
                r.id,
                Lease {
                    id: r.id,
                    // A record below the minimum was written under other flags; etcd
                    // raises it the same way on recovery.
                    ttl_secs: r.ttl.max(self.options.min_ttl_secs),
                    remaining_ttl_secs: r.remaining_ttl.max(0),
                    expiry: None,
                    checkpoint_at: None,
                    keys: BTreeSet::new(),
                },
            );
        }
        self.primary = false;
        Ok(())
    }

    /// Attaches a restored key to its lease (etcd's mvcc restore calls `Attach` for every
    /// live key that names a lease). Keys naming a lease that no longer exists stay
    /// unattached, as in etcd.
    pub fn attach_restored(&mut self, key: Bytes, lease_id: i64) {
        if let Some(lease) = self.leases.get_mut(&lease_id) {
            lease.keys.insert(key.clone());
            self.key_lease.insert(key, lease_id);
        }
    }

    fn refresh(&self, lease: &mut Lease, extend: Duration, now: Instant) {
        refresh_lease(
            lease,
            extend,
            now,
            self.primary,
            self.options.checkpoint_interval,
        );
    }

    fn relation_consistent(&self) -> bool {
        let attached: usize = self.leases.values().map(|l| l.keys.len()).sum();
        attached == self.key_lease.len()
            && self
                .key_lease
                .iter()
                .all(|(k, id)| self.leases.get(id).is_some_and(|l| l.keys.contains(k)))
    }
}

/// etcd's `refresh(extend)` plus `scheduleCheckpointIfNeeded`.
fn refresh_lease(
    lease: &mut Lease,
    extend: Duration,
    now: Instant,
    primary: bool,
    interval: Duration,
) {
    let ttl = Duration::from_secs(lease.effective_ttl_secs().max(0) as u64);
    // checked_add: a TTL near the maximum (285 years) may not fit in an Instant.
    lease.expiry = now.checked_add(extend + ttl).or(Some(far_future(now)));
    if primary {
        schedule_checkpoint(lease, now, interval);
    }
}

/// Leases longer than the checkpoint interval get checkpointed once per interval.
fn schedule_checkpoint(lease: &mut Lease, now: Instant, interval: Duration) {
    lease.checkpoint_at = if interval > Duration::ZERO && lease.ttl_secs as u64 > interval.as_secs()
    {
        now.checked_add(interval)
    } else {
        None
    };
}

/// A deadline that will not arrive while this process runs.
fn far_future(now: Instant) -> Instant {
    now.checked_add(Duration::from_secs(100 * 365 * 24 * 3600))
        .unwrap_or(now)
}

fn persist<B: Backend>(backend: &mut B, lease: &Lease) -> Result<(), EtcdError> {
    let record = LeaseRecord {
        id: lease.id,
        ttl: lease.ttl_secs,
        remaining_ttl: lease.remaining_ttl_secs,
    };
    backend
        .put(
            Bucket::Lease,
            &lease_bucket_key(lease.id),
            &record.encode_to_vec(),
        )
        .map_err(|_| EtcdError::Corrupt)
}
