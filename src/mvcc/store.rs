//! The multi-version key-value store: revisions, writes, ranges, compaction and HashKV.
//!
//! Semantics are etcd's (`server/mvcc/kvstore.go`, `kvstore_txn.go`, `hash.go`, 3.4):
//!
//! * A fresh store is at revision 1 and its compact revision is -1 ("never compacted").
//! * A write transaction reads and writes at `begin + 1` (begin = the store revision when it
//!   opened); its n-th change gets revision `(begin + 1, n)`. When it ends, the store
//!   revision advances by one — only if it changed something.
//! * Put: `create_revision` is kept from the key's current generation (or is the put's own
//!   revision for a new key), `version` counts puts in the generation, `mod_revision` is the
//!   txn's revision. Delete writes a tombstone and ends the generation.
//! * Reads at a revision below the compact revision fail with `Compacted`, above the store
//!   revision with `FutureRev`. Reading *at* the compact revision works.
//! * Compaction records `scheduledCompactRev`, compacts the index, then removes from the
//!   backend every revision `<= rev` not in the index's keep set, and records
//!   `finishedCompactRev`. tern does both halves at once (etcd runs the second in the
//!   background; its effect on clients is the same once it finishes).
//!
//! The store is owned by one executor and used through `&mut self`; nothing here locks.

use std::collections::HashSet;

use bytes::Bytes;
use prost::Message;

use super::backend::{
    Backend, BackendError, Bucket, Direction, META_CONSISTENT_INDEX, META_FINISHED_COMPACT,
    META_SCHEDULED_COMPACT,
};
use super::key_index::{KeyIndex, KeyIndexTree, KeyRange};
use super::revision::{is_tombstone_key, Revision, RevisionKey, MARKED_REVISION_KEY_LEN};
use crate::error::EtcdError;
use crate::proto::mvccpb::KeyValue;

/// How many backend entries one physical-compaction batch examines (etcd's
/// `defaultCompactBatchLimit`).
pub const COMPACT_BATCH_MAX: usize = 1000;

/// What a change did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    Put,
    Delete,
}

/// One change made by the last write transaction, for watchers and the lessor.
/// For a delete, `kv` holds the key and `mod_revision` (the delete's revision) only.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    pub kind: ChangeKind,
    pub kv: KeyValue,
}

/// Options of a raw range read.
#[derive(Clone, Copy, Debug, Default)]
pub struct RangeOptions {
    /// Return at most this many key-values; 0 means no limit. `count` is unaffected.
    pub limit: usize,
    /// Read at this revision; 0 or less means the current one.
    pub revision: i64,
    /// Only count; return no key-values.
    pub count_only: bool,
}

/// The result of a raw range read.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RangeResult {
    /// Key-values in key order, at most `limit`.
    pub kvs: Vec<KeyValue>,
    /// How many keys matched in total (ignoring the limit).
    pub count: usize,
    /// The revision the read was served at the head of (etcd's `RangeResult.Rev`).
    pub revision: i64,
}

/// The answer of HashKV.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HashKv {
    pub hash: u32,
    pub current_revision: i64,
    pub compact_revision: i64,
}

/// The MVCC store over a [`Backend`].
pub struct KvStore<B: Backend> {
    backend: B,
    key_index: KeyIndexTree,
    /// Revision of the last completed write transaction.
    current_revision: i64,
    /// Main revision of the last compaction; -1 when never compacted.
    compact_revision: i64,
    /// Raft index of the last applied entry, saved in the meta bucket with each write.
    consistent_index: u64,
    /// Changes of the current (or last) write transaction, in sub-revision order.
    changes: Vec<Change>,
    /// Reused marshaling buffer for values written to the backend.
    encode_buf: Vec<u8>,
}

pub(crate) fn corrupt<E: std::fmt::Display>(_error: E) -> EtcdError {
    EtcdError::Corrupt
}

impl<B: Backend> KvStore<B> {
    /// Opens a store over `backend`, rebuilding the index from the key bucket and resuming
    /// an interrupted compaction, as etcd's `store.restore` does.
    pub fn open(backend: B) -> Result<Self, BackendError> {
        let mut store = KvStore {
            backend,
            key_index: KeyIndexTree::new(),
            current_revision: 1,
            compact_revision: -1,
            consistent_index: 0,
            changes: Vec::new(),
            encode_buf: Vec::with_capacity(256),
        };
        store.reload()?;
        Ok(store)
    }

    /// Rebuilds everything in memory from the backend, as `open` does (used after a raft
    /// snapshot replaced the backend's contents).
    pub fn reload(&mut self) -> Result<(), BackendError> {
        self.key_index = KeyIndexTree::new();
        self.current_revision = 1;
        self.compact_revision = -1;
        self.consistent_index = 0;
        self.changes.clear();
        let store = self;
        let meta_rev = |b: &B, key: &[u8]| -> Result<Option<i64>, BackendError> {
            match b.get(Bucket::Meta, key)? {
                None => Ok(None),
                Some(bytes) => Revision::from_key(bytes)
                    .map(|r| Some(r.main))
                    .ok_or_else(|| {
                        BackendError::Corrupted(format!("meta {}", String::from_utf8_lossy(key)))
                    }),
            }
        };
        if let Some(finished) = meta_rev(&store.backend, META_FINISHED_COMPACT)? {
            store.compact_revision = finished;
        }
        let scheduled = meta_rev(&store.backend, META_SCHEDULED_COMPACT)?.unwrap_or(0);
        if let Some(bytes) = store.backend.get(Bucket::Meta, META_CONSISTENT_INDEX)? {
            let raw: [u8; 8] = bytes
                .try_into()
                .map_err(|_| BackendError::Corrupted("meta consistent_index".into()))?;
            store.consistent_index = u64::from_be_bytes(raw);
        }

        let mut last_main = 1;
        let mut failure = None;
        let key_index = &mut store.key_index;
        store
            .backend
            .scan(
                Bucket::Key,
                &[],
                None,
                Direction::Ascending,
                &mut |k, v| match restore_entry(key_index, k, v) {
                    Ok(main) => {
                        last_main = main;
                        true
                    }
                    Err(e) => {
                        failure = Some(e);
                        false
                    }
                },
            )?;
        if let Some(e) = failure {
            return Err(e);
        }
        // Everything up to the compaction may have been removed: the store is at least there.
        store.current_revision = last_main.max(store.compact_revision);
        if scheduled != 0
            && scheduled > store.compact_revision
            && scheduled <= store.current_revision
        {
            store.compact_revision = scheduled;
            let keep = store.key_index.compact(scheduled);
            store.compact_backend(scheduled, &keep)?;
        }
        Ok(())
    }

    /// The store revision: that of the last write transaction that changed something.
    pub fn current_revision(&self) -> i64 {
        self.current_revision
    }

    /// The revision of the last compaction, -1 if none.
    pub fn compact_revision(&self) -> i64 {
        self.compact_revision
    }

    pub fn consistent_index(&self) -> u64 {
        self.consistent_index
    }

    /// Sets the raft index being applied; it is saved with the next write or commit.
    pub fn set_consistent_index(&mut self, consistent_index: u64) {
        self.consistent_index = consistent_index;
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The backend, for maintenance (commit, defragment) and for state kept beside the
    /// key space in the same backend batch (the lease bucket). Key-space writes go
    /// through [`KvStore::write`], never through this.
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    pub fn key_index(&self) -> &KeyIndexTree {
        &self.key_index
    }

    /// The changes made by the last write transaction (empty if it changed nothing).
    pub fn last_changes(&self) -> &[Change] {
        &self.changes
    }

    /// The consistent index as of the backend's last finished commit (what a restart would
    /// resume from); 0 if it has none yet.
    pub fn durable_consistent_index(&self) -> u64 {
        match self
            .backend
            .get_durable(Bucket::Meta, META_CONSISTENT_INDEX)
        {
            Ok(Some(bytes)) => <[u8; 8]>::try_from(bytes).map_or(0, u64::from_be_bytes),
            _ => 0,
        }
    }

    /// Saves the consistent index and commits the backend (etcd's `store.Commit`).
    pub fn commit(&mut self) -> Result<(), BackendError> {
        self.save_consistent_index()?;
        self.backend.commit()
    }

    fn save_consistent_index(&mut self) -> Result<(), BackendError> {
        self.backend.put(
            Bucket::Meta,
            META_CONSISTENT_INDEX,
            &self.consistent_index.to_be_bytes(),
        )
    }

    /// A range read at the current revision.
    pub fn range_keys(
        &self,
        range: KeyRange<'_>,
        options: RangeOptions,
    ) -> Result<RangeResult, EtcdError> {
        self.range_at(range, options, self.current_revision)
    }

    /// etcd's `rangeKeys`: reads `range` as of `options.revision`, `head` being the newest
    /// revision the reader may see.
    fn range_at(
        &self,
        range: KeyRange<'_>,
        options: RangeOptions,
        head: i64,
    ) -> Result<RangeResult, EtcdError> {
        if options.revision > head {
            return Err(EtcdError::FutureRev);
        }
        let at = if options.revision <= 0 {
            head
        } else {
            options.revision
        };
        if at < self.compact_revision {
            return Err(EtcdError::Compacted);
        }
        let limit = if options.count_only {
            0
        } else if options.limit == 0 {
            usize::MAX
        } else {
            options.limit
        };
        let mut revisions = Vec::new();
        let mut count = 0usize;
        self.key_index.revisions(range, at, |_, rev| {
            // Count every match; fetch values only for those returned.
            if count < limit {
                revisions.push(rev);
            }
            count += 1;
            true
        });
        let mut kvs = Vec::with_capacity(revisions.len());
        for rev in revisions {
            let value = self
                .backend
                .get(Bucket::Key, &rev.to_key())
                .map_err(corrupt)?
                .ok_or(EtcdError::Corrupt)?;
            kvs.push(KeyValue::decode(value).map_err(corrupt)?);
        }
        Ok(RangeResult {
            kvs,
            count,
            revision: head,
        })
    }

    /// Opens a write transaction. All its changes share one main revision; the store
    /// revision advances when it ends (on drop), if anything changed.
    pub fn write(&mut self) -> WriteTxn<'_, B> {
        self.changes.clear();
        let begin_revision = self.current_revision;
        WriteTxn {
            store: self,
            begin_revision,
        }
    }

    /// Compacts at `rev`: older revisions become unreadable and are removed from the
    /// backend except the newest value of each key at `rev` (etcd's `store.Compact`).
    pub fn compact_to(&mut self, rev: i64) -> Result<(), EtcdError> {
        if rev <= self.compact_revision {
            return Err(EtcdError::Compacted);
        }
        if rev > self.current_revision {
            return Err(EtcdError::FutureRev);
        }
        self.compact_revision = rev;
        self.backend
            .put(
                Bucket::Meta,
                META_SCHEDULED_COMPACT,
                &Revision::new(rev, 0).to_key(),
            )
            .map_err(corrupt)?;
        self.backend.commit().map_err(corrupt)?;
        let keep = self.key_index.compact(rev);
        self.compact_backend(rev, &keep).map_err(corrupt)
    }

    /// The physical half of compaction (etcd's `scheduleCompaction`): deletes, batch by
    /// batch, every key-bucket entry at main revision `<= rev` that is not in `keep`.
    fn compact_backend(&mut self, rev: i64, keep: &HashSet<Revision>) -> Result<(), BackendError> {
        let end = Revision::new(rev + 1, 0).to_key();
        let mut start = Revision::new(0, 0).to_key();
        let mut doomed: Vec<(RevisionKey, usize)> = Vec::with_capacity(COMPACT_BATCH_MAX);
        loop {
            doomed.clear();
            let mut scanned = 0usize;
            let mut last = None;
            let mut bad_key = false;
            self.backend.scan(
                Bucket::Key,
                &start,
                Some(&end),
                Direction::Ascending,
                &mut |k, _| {
                    let Some(r) = Revision::from_key(k) else {
                        bad_key = true;
                        return false;
                    };
                    if !keep.contains(&r) {
                        let mut key = [0u8; MARKED_REVISION_KEY_LEN];
                        key[..k.len()].copy_from_slice(k);
                        doomed.push((key, k.len()));
                    }
                    last = Some(r);
                    scanned += 1;
                    scanned < COMPACT_BATCH_MAX
                },
            )?;
            if bad_key {
                return Err(BackendError::Corrupted(
                    "key bucket: malformed revision key".into(),
                ));
            }
            for (key, len) in &doomed {
                self.backend.delete(Bucket::Key, &key[..*len])?;
            }
            match last {
                Some(r) if scanned == COMPACT_BATCH_MAX => {
                    start = Revision::new(r.main, r.sub + 1).to_key()
                }
                _ => break,
            }
        }
        self.backend.put(
            Bucket::Meta,
            META_FINISHED_COMPACT,
            &Revision::new(rev, 0).to_key(),
        )?;
        self.save_consistent_index()?;
        self.backend.commit()
    }

    /// The hash of the key space at `rev` (0: current), exactly as etcd 3.4's
    /// `HashByRev`: CRC-32C over the bucket name `key`, then each backend key and value of
    /// revisions `<= rev`, skipping those at or below the compact revision that a
    /// compaction at `rev` would not keep (unless it would keep nothing at all).
    pub fn hash_by_rev(&self, rev: i64) -> Result<HashKv, EtcdError> {
        let (compact, current) = (self.compact_revision, self.current_revision);
        if rev > 0 && rev <= compact {
            return Err(EtcdError::Compacted);
        }
        if rev > 0 && rev > current {
            return Err(EtcdError::FutureRev);
        }
        let rev = if rev == 0 { current } else { rev };
        let keep = self.key_index.keep(rev);
        let upper = Revision::new(rev + 1, 0);
        let lower = Revision::new(compact + 1, 0);
        let mut crc = crc32c::crc32c(Bucket::Key.name());
        let mut bad_key = false;
        self.backend
            .scan(Bucket::Key, &[], None, Direction::Ascending, &mut |k, v| {
                let Some(r) = Revision::from_key(k) else {
                    bad_key = true;
                    return false;
                };
                if r >= upper {
                    return false; // keys ascend: nothing later is <= rev
                }
                if r < lower && !keep.is_empty() && !keep.contains(&r) {
                    return true;
                }
                crc = crc32c::crc32c_append(crc, k);
                crc = crc32c::crc32c_append(crc, v);
                true
            })
            .map_err(corrupt)?;
        if bad_key {
            return Err(EtcdError::Corrupt);
        }
        Ok(HashKv {
            hash: crc,
            current_revision: current,
            compact_revision: compact,
        })
    }
}

/// Replays one key-bucket entry into the index; returns its main revision.
fn restore_entry(key_index: &mut KeyIndexTree, k: &[u8], v: &[u8]) -> Result<i64, BackendError> {
    let rev = Revision::from_key(k)
        .ok_or_else(|| BackendError::Corrupted("key bucket: malformed revision key".into()))?;
    let kv = KeyValue::decode(v)
        .map_err(|e| BackendError::Corrupted(format!("key bucket value at {rev:?}: {e}")))?;
    let tombstone = is_tombstone_key(k);
    match key_index.key_index_mut(&kv.key) {
        Some(ki) => {
            if rev <= ki.modified {
                return Err(BackendError::Corrupted(format!(
                    "key bucket: revision {rev:?} out of order"
                )));
            }
            if tombstone {
                // etcd ignores a tombstone of an already deleted key here; so do we.
                let _ = ki.tombstone(rev);
            } else {
                ki.put(rev);
            }
        }
        None if !tombstone => {
            key_index.insert(
                kv.key,
                KeyIndex::restored(Revision::new(kv.create_revision, 0), rev, kv.version),
            );
        }
        None => {}
    }
    Ok(rev.main)
}

/// A write transaction: every change gets main revision `begin + 1`. Dropping it ends it.
pub struct WriteTxn<'a, B: Backend> {
    store: &'a mut KvStore<B>,
    begin_revision: i64,
}

impl<B: Backend> WriteTxn<'_, B> {
    /// The revision the store was at when this transaction began.
    pub fn begin_revision(&self) -> i64 {
        self.begin_revision
    }

    /// The revision reads in this transaction see: `begin + 1` once it has changed
    /// something (so its own writes are visible), else `begin`.
    pub fn read_revision(&self) -> i64 {
        if self.store.changes.is_empty() {
            self.begin_revision
        } else {
            self.begin_revision + 1
        }
    }

    /// The store this transaction writes to, for reads outside the txn's view.
    pub fn store(&self) -> &KvStore<B> {
        self.store
    }

    pub fn has_changes(&self) -> bool {
        !self.store.changes.is_empty()
    }

    /// Reads inside the transaction, seeing its earlier writes.
    pub fn range(
        &self,
        range: KeyRange<'_>,
        options: RangeOptions,
    ) -> Result<RangeResult, EtcdError> {
        self.store.range_at(range, options, self.read_revision())
    }

    /// Puts `key` = `value` with `lease` (0: none); returns the put's main revision.
    pub fn put(&mut self, key: Bytes, value: Bytes, lease: i64) -> Result<i64, EtcdError> {
        let main = self.begin_revision + 1;
        let store = &mut *self.store;
        let (create_revision, version) = match store.key_index.get(&key, main) {
            Ok((_, created, version)) => (created.main, version + 1),
            Err(_) => (main, 1),
        };
        let rev = Revision::new(main, store.changes.len() as i64);
        let kv = KeyValue {
            key,
            create_revision,
            mod_revision: main,
            version,
            value,
            lease,
        };
        store.encode_buf.clear();
        kv.encode(&mut store.encode_buf)
            .expect("Vec<u8> grows as needed");
        store
            .backend
            .put(Bucket::Key, &rev.to_key(), &store.encode_buf)
            .map_err(corrupt)?;
        store.key_index.put(&kv.key, rev);
        store.changes.push(Change {
            kind: ChangeKind::Put,
            kv,
        });
        Ok(main)
    }

    /// Deletes every key in `range` that exists; returns (number deleted, revision), the
    /// revision being `begin + 1` if this transaction changed anything, else `begin`.
    pub fn delete_range(&mut self, range: KeyRange<'_>) -> Result<(i64, i64), EtcdError> {
        let mut keys: Vec<Bytes> = Vec::new();
        self.store
            .key_index
            .revisions(range, self.read_revision(), |k, _| {
                keys.push(k.clone());
                true
            });
        for key in &keys {
            self.delete(key.clone())?;
        }
        if keys.is_empty() && self.store.changes.is_empty() {
            Ok((0, self.begin_revision))
        } else {
            Ok((keys.len() as i64, self.begin_revision + 1))
        }
    }

    fn delete(&mut self, key: Bytes) -> Result<(), EtcdError> {
        let main = self.begin_revision + 1;
        let store = &mut *self.store;
        let rev = Revision::new(main, store.changes.len() as i64);
        // The stored value of a tombstone holds only the key, as in etcd (HashKV hashes it).
        let stored = KeyValue {
            key,
            ..Default::default()
        };
        store.encode_buf.clear();
        stored
            .encode(&mut store.encode_buf)
            .expect("Vec<u8> grows as needed");
        let (marked, len) = rev.to_marked_key(true);
        store
            .backend
            .put(Bucket::Key, &marked[..len], &store.encode_buf)
            .map_err(corrupt)?;
        store
            .key_index
            .tombstone(&stored.key, rev)
            .map_err(|_| EtcdError::Corrupt)?;
        let kv = KeyValue {
            mod_revision: main,
            ..stored
        };
        store.changes.push(Change {
            kind: ChangeKind::Delete,
            kv,
        });
        Ok(())
    }
}

impl<B: Backend> Drop for WriteTxn<'_, B> {
    fn drop(&mut self) {
        if !self.store.changes.is_empty() {
            // The meta write rides in the same batch; a failure surfaces at commit.
            let _ = self.store.save_consistent_index();
            self.store.current_revision = self.begin_revision + 1;
        }
    }
}
