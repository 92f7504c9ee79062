//! The replayed state of the log: metadata, hard state, snapshot marker and the raft-index →
//! location index. Recovery and the live WAL apply records through the same code, so what a
//! restart sees is what the running WAL saw.
//!
//! Invariants: entries are contiguous from `first_index`; every entry's raft index is above the
//! snapshot marker's; an entry at or below the last index replaces the suffix (raft's log
//! truncation on conflict), one further up than `last + 1` is a gap and is rejected.

use std::collections::VecDeque;

use super::record::{HardState, Metadata, SnapshotMarker, WalRecord};

#[derive(Clone, Debug)]
pub struct LogState<T> {
    pub metadata: Option<Metadata>,
    pub hard_state: Option<HardState>,
    pub snapshot: SnapshotMarker,
    /// raft index of `entries[0]`; `snapshot.raft_index + 1` when empty.
    pub first_index: u64,
    /// `(term, location)` per entry.
    pub entries: VecDeque<(u64, T)>,
}

impl<T> Default for LogState<T> {
    fn default() -> Self {
        LogState {
            metadata: None,
            hard_state: None,
            snapshot: SnapshotMarker::default(),
            first_index: 1,
            entries: VecDeque::new(),
        }
    }
}

/// The highest snapshot marker among `records` (the default marker, index 0, if none).
pub fn newest_snapshot<'a>(records: impl Iterator<Item = &'a WalRecord>) -> SnapshotMarker {
    records
        .filter_map(|r| match r {
            WalRecord::Snapshot(snap) => Some(*snap),
            _ => None,
        })
        .max_by_key(|snap| snap.raft_index)
        .unwrap_or_default()
}

impl<T> LogState<T> {
    /// Replay state that starts after `snapshot`: entries at or below it are skipped, and the
    /// log must continue at `snapshot.raft_index + 1`.
    pub fn starting_at(snapshot: SnapshotMarker) -> Self {
        LogState {
            snapshot,
            first_index: snapshot.raft_index + 1,
            ..LogState::default()
        }
    }

    /// Index of the last entry, or the snapshot's when the log is empty.
    pub fn last_index(&self) -> u64 {
        self.first_index + self.entries.len() as u64 - 1
    }

    pub fn term(&self, raft_index: u64) -> Option<u64> {
        if raft_index == self.snapshot.raft_index {
            return Some(self.snapshot.term);
        }
        if raft_index < self.first_index {
            return None;
        }
        self.entries
            .get((raft_index - self.first_index) as usize)
            .map(|(term, _)| *term)
    }

    /// Applies one record; `location` is only used for entries. Errors describe the rule broken.
    pub fn apply(
        &mut self,
        record: &WalRecord,
        location: impl FnOnce() -> T,
    ) -> Result<(), String> {
        match record {
            WalRecord::Metadata(m) => self.metadata = Some(*m),
            WalRecord::HardState(hs) => self.hard_state = Some(*hs),
            WalRecord::Snapshot(snap) => self.apply_snapshot(*snap)?,
            WalRecord::Entry {
                raft_index, term, ..
            } => self.apply_entry(*raft_index, *term, location)?,
        }
        Ok(())
    }

    fn apply_snapshot(&mut self, snap: SnapshotMarker) -> Result<(), String> {
        if snap.raft_index < self.snapshot.raft_index {
            // An older marker met during replay from the newest one (appends never go back:
            // `Wal::append` rejects a lower marker).
            return Ok(());
        }
        self.snapshot = snap;
        if snap.raft_index >= self.last_index() {
            self.entries.clear();
            self.first_index = snap.raft_index + 1;
        } else {
            while self.first_index <= snap.raft_index {
                self.entries.pop_front();
                self.first_index += 1;
            }
        }
        Ok(())
    }

    fn apply_entry(
        &mut self,
        raft_index: u64,
        term: u64,
        location: impl FnOnce() -> T,
    ) -> Result<(), String> {
        if raft_index <= self.snapshot.raft_index {
            // Older than the snapshot: kept on disk until its segment is released, not needed.
            return Ok(());
        }
        if self.entries.is_empty() && self.first_index != self.snapshot.raft_index + 1 {
            self.first_index = self.snapshot.raft_index + 1;
        }
        let next = self.last_index() + 1;
        if raft_index > next {
            return Err(format!(
                "entry {raft_index} leaves a gap after last index {}",
                next - 1
            ));
        }
        self.entries
            .truncate((raft_index - self.first_index) as usize);
        self.entries.push_back((term, location()));
        Ok(())
    }
}
