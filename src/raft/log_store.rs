//! raft-rs's `Storage` over tern's WAL: the log raft reads, kept in memory, made durable
//! by the WAL (storage/docs/wal.md).
//!
//! raft-rs reads its log synchronously (`Storage::entries`/`term`), while the WAL's reads
//! are io_uring futures, so every entry after the last snapshot is also kept here in memory;
//! the WAL is read only once, at startup (`Wal::open` returns what it recovered). Memory is
//! bounded by log compaction (`--snapshot-count`): entries below the compaction point are
//! dropped here and their WAL segments released.
//!
//! Invariants:
//! - `entries[i].index == snapshot_index + 1 + i` (no gaps);
//! - entries are stored here *before* `RawNode::advance_append_async` is called for the
//!   ready that carried them, as raft-rs requires; the WAL append for them was queued in
//!   the same step, so a later `on_persist_ready` always follows their durability;
//! - a WAL entry record's data is the protobuf (rust-protobuf 2) encoding of the whole
//!   raft `Entry`, so entry type and context survive a restart.

use std::cell::RefCell;
use std::rc::Rc;

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};
use tern_storage::wal::{self, WalRecord};

#[derive(Default)]
struct LogCache {
    hard_state: HardState,
    conf_state: ConfState,
    snapshot_index: u64,
    snapshot_term: u64,
    entries: Vec<Entry>,
    /// The newest snapshot (with state machine data), served to lagging followers.
    snapshot: Option<Snapshot>,
}

/// Cheap to clone: all clones share one log (everything runs on the raft executor).
#[derive(Clone, Default)]
pub struct LogStore {
    cache: Rc<RefCell<LogCache>>,
}

/// Decodes a WAL entry record back into a raft entry, checking it is the one the WAL says.
pub fn decode_wal_entry(entry: &wal::Entry) -> Result<Entry, String> {
    let decoded = crate::raft::codec::decode_entry(&entry.data)
        .map_err(|e| format!("entry {} holds no raft entry: {e}", entry.raft_index))?;
    if decoded.index != entry.raft_index || decoded.term != entry.term {
        return Err(format!(
            "entry {} (term {}) decodes as index {} term {}",
            entry.raft_index, entry.term, decoded.index, decoded.term
        ));
    }
    Ok(decoded)
}

/// The raft log a recovered WAL holds: its entries, decoded and checked, and its hard state,
/// with the commit index raised to the snapshot marker's index (a restored snapshot is
/// committed even if no later hard state said so).
pub fn recovered_raft_log(recovered: &wal::Recovered) -> Result<(HardState, Vec<Entry>), String> {
    let entries = recovered
        .entries
        .iter()
        .map(decode_wal_entry)
        .collect::<Result<Vec<_>, _>>()?;
    let hs = recovered.hard_state.unwrap_or_default();
    let snapshot_index = recovered.snapshot.unwrap_or_default().raft_index;
    let hard_state = HardState {
        term: hs.term,
        vote: hs.vote,
        commit: hs.commit.max(snapshot_index),
        ..Default::default()
    };
    Ok((hard_state, entries))
}

/// The WAL record that stores `entry`.
pub fn wal_record(entry: &Entry) -> WalRecord {
    WalRecord::Entry {
        raft_index: entry.index,
        term: entry.term,
        data: entry
            .write_to_bytes()
            .expect("encoding a raft entry cannot fail"),
    }
}

pub fn wal_hard_state(hs: &HardState) -> WalRecord {
    WalRecord::HardState(wal::HardState {
        term: hs.term,
        vote: hs.vote,
        commit: hs.commit,
    })
}

impl LogStore {
    /// A log that starts after `snapshot` (index 0 for an empty log) with these entries.
    pub fn new(
        hard_state: HardState,
        conf_state: ConfState,
        snapshot: Option<Snapshot>,
        entries: Vec<Entry>,
    ) -> LogStore {
        let (snapshot_index, snapshot_term) = snapshot
            .as_ref()
            .map_or((0, 0), |s| (s.get_metadata().index, s.get_metadata().term));
        for (i, e) in entries.iter().enumerate() {
            assert_eq!(e.index, snapshot_index + 1 + i as u64, "log has a gap");
        }
        LogStore {
            cache: Rc::new(RefCell::new(LogCache {
                hard_state,
                conf_state,
                snapshot_index,
                snapshot_term,
                entries,
                snapshot,
            })),
        }
    }

    /// Makes this log (and every clone of it) hold what `other` holds.
    pub fn replace_with(&self, other: LogStore) {
        let inner = std::mem::take(&mut *other.cache.borrow_mut());
        *self.cache.borrow_mut() = inner;
    }

    pub fn hard_state(&self) -> HardState {
        self.cache.borrow().hard_state.clone()
    }

    pub fn set_hard_state(&self, hs: HardState) {
        self.cache.borrow_mut().hard_state = hs;
    }

    pub fn set_conf_state(&self, cs: ConfState) {
        self.cache.borrow_mut().conf_state = cs;
    }

    pub fn conf_state(&self) -> ConfState {
        self.cache.borrow().conf_state.clone()
    }

    pub fn last_raft_index(&self) -> u64 {
        let c = self.cache.borrow();
        c.snapshot_index + c.entries.len() as u64
    }

    pub fn first_raft_index(&self) -> u64 {
        self.cache.borrow().snapshot_index + 1
    }

    /// Appends entries from a ready, replacing any conflicting suffix (a new leader may
    /// overwrite uncommitted entries).
    pub fn append(&self, new: Vec<Entry>) {
        let Some(first) = new.first() else { return };
        let mut c = self.cache.borrow_mut();
        assert!(first.index > c.snapshot_index, "append below the snapshot");
        let keep = (first.index - c.snapshot_index - 1) as usize;
        assert!(keep <= c.entries.len(), "append leaves a gap");
        c.entries.truncate(keep);
        c.entries.extend(new);
    }

    /// Installs a snapshot received from the leader: the log restarts after it.
    pub fn apply_snapshot(&self, snapshot: Snapshot) {
        let mut c = self.cache.borrow_mut();
        let meta = snapshot.get_metadata();
        c.snapshot_index = meta.index;
        c.snapshot_term = meta.term;
        c.conf_state = meta.get_conf_state().clone();
        c.entries.clear();
        if c.hard_state.commit < meta.index {
            c.hard_state.commit = meta.index;
        }
        c.snapshot = Some(snapshot);
    }

    /// Records a locally made snapshot and drops entries at or below `compact_to`
    /// (≤ the snapshot's index): entries are kept above it for followers slightly behind.
    pub fn compact(&self, snapshot: Snapshot, compact_to: u64) {
        let mut c = self.cache.borrow_mut();
        assert!(compact_to <= snapshot.get_metadata().index);
        if compact_to > c.snapshot_index {
            let term = c.entries[(compact_to - c.snapshot_index - 1) as usize].term;
            let drop = (compact_to - c.snapshot_index) as usize;
            c.entries.drain(..drop);
            c.snapshot_index = compact_to;
            c.snapshot_term = term;
        }
        c.snapshot = Some(snapshot);
    }

    /// Entries `[lo, hi)` (both within the log).
    pub fn slice(&self, lo: u64, hi: u64) -> Vec<Entry> {
        let c = self.cache.borrow();
        let base = c.snapshot_index + 1;
        c.entries[(lo - base) as usize..(hi - base) as usize].to_vec()
    }

    pub fn term_of(&self, raft_index: u64) -> Option<u64> {
        let c = self.cache.borrow();
        if raft_index == c.snapshot_index {
            return Some(c.snapshot_term);
        }
        if raft_index < c.snapshot_index {
            return None;
        }
        c.entries
            .get((raft_index - c.snapshot_index - 1) as usize)
            .map(|e| e.term)
    }
}

impl Storage for LogStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let c = self.cache.borrow();
        Ok(RaftState::new(c.hard_state.clone(), c.conf_state.clone()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let c = self.cache.borrow();
        if low <= c.snapshot_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        let last = c.snapshot_index + c.entries.len() as u64;
        if high > last + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let base = c.snapshot_index + 1;
        let mut out = c.entries[(low - base) as usize..(high - base) as usize].to_vec();
        raft::util::limit_size(&mut out, max_size.into());
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let c = self.cache.borrow();
        if idx == c.snapshot_index {
            return Ok(c.snapshot_term);
        }
        if idx < c.snapshot_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        match c.entries.get((idx - c.snapshot_index - 1) as usize) {
            Some(e) => Ok(e.term),
            None => Err(raft::Error::Store(StorageError::Unavailable)),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.cache.borrow().snapshot_index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        let c = self.cache.borrow();
        Ok(c.snapshot_index + c.entries.len() as u64)
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let c = self.cache.borrow();
        match &c.snapshot {
            Some(s) if s.get_metadata().index >= request_index => Ok(s.clone()),
            _ => Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            )),
        }
    }
}

/// Snapshot metadata for `raft_index`/`term` under `conf_state`.
pub fn snapshot_metadata(raft_index: u64, term: u64, conf_state: ConfState) -> SnapshotMetadata {
    let mut meta = SnapshotMetadata {
        index: raft_index,
        term,
        ..Default::default()
    };
    meta.set_conf_state(conf_state);
    meta
}

#[cfg(test)]
mod tests {
    //! Checks the in-memory log against raft-rs's `Storage` contract: bounds errors,
    //! conflicting-suffix truncation, compaction keeping the compacted entry's term, and
    //! the WAL record round trip (including a record that holds another entry).
    use super::*;

    fn entry(raft_index: u64, term: u64) -> Entry {
        Entry {
            index: raft_index,
            term,
            data: vec![raft_index as u8].into(),
            ..Default::default()
        }
    }

    fn ctx() -> GetEntriesContext {
        GetEntriesContext::empty(false)
    }

    #[test]
    fn bounds_truncation_and_compaction() {
        let log = LogStore::default();
        assert_eq!(log.first_index().unwrap(), 1);
        assert_eq!(log.last_index().unwrap(), 0);
        log.append(vec![entry(1, 1), entry(2, 1), entry(3, 2)]);
        assert_eq!(log.term(3).unwrap(), 2);
        assert!(matches!(
            log.term(4),
            Err(raft::Error::Store(StorageError::Unavailable))
        ));
        assert_eq!(log.entries(1, 4, None, ctx()).unwrap().len(), 3);
        // A new leader overwrites the uncommitted suffix from index 2.
        log.append(vec![entry(2, 3)]);
        assert_eq!(log.last_index().unwrap(), 2);
        assert_eq!(log.term(2).unwrap(), 3);
        // Compaction keeps the term of the last compacted entry for matching.
        log.append(vec![entry(3, 3), entry(4, 3)]);
        let mut snap = Snapshot::default();
        snap.set_metadata(snapshot_metadata(4, 3, ConfState::default()));
        log.compact(snap, 2);
        assert_eq!(log.first_index().unwrap(), 3);
        assert_eq!(log.term(2).unwrap(), 3);
        assert!(matches!(
            log.term(1),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
        assert!(matches!(
            log.entries(2, 4, None, ctx()),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
        assert_eq!(log.snapshot(0, 0).unwrap().get_metadata().index, 4);
        assert!(matches!(
            log.snapshot(5, 0),
            Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable
            ))
        ));
    }

    #[test]
    fn wal_records_round_trip_and_mismatches_are_errors() {
        let e = entry(7, 2);
        let WalRecord::Entry {
            raft_index,
            term,
            data,
        } = wal_record(&e)
        else {
            panic!("an entry record");
        };
        let stored = wal::Entry {
            raft_index,
            term,
            data,
        };
        assert_eq!(decode_wal_entry(&stored).unwrap(), e);
        let wrong = wal::Entry {
            raft_index: 8,
            ..stored.clone()
        };
        assert!(decode_wal_entry(&wrong).is_err());
        let garbage = wal::Entry {
            data: vec![0xff; 9],
            ..stored
        };
        assert!(decode_wal_entry(&garbage).is_err());
    }
}
