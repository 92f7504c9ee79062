//! Range scans over a snapshot, in either direction, borrowing keys and values from the mmap.
//!
//! Invariants: the cursor's stack never exceeds `MAX_BTREE_DEPTH`; keys come out strictly
//! increasing (forward) or decreasing (reverse) and no more leaves are visited than the file
//! has pages, so a corrupt file (cycles, shared subtrees, unsorted keys) ends the scan with
//! `Corrupted` after bounded work instead of looping or repeating entries.

use std::ops::Bound;

use super::mmap::{PagePrefetch, Snapshot};
use super::page::{self, NodePage, MAX_BTREE_DEPTH};
use super::Error;

/// A (key, value) pair borrowed from the snapshot.
pub type Entry<'t> = (&'t [u8], &'t [u8]);

enum Seek<'k> {
    First,
    Last,
    /// Forward: first key >= / > the key; reverse: last key <= / < the key.
    Key {
        key: &'k [u8],
        inclusive: bool,
    },
}

/// An iterator over `(key, value)` pairs of one bucket, with keys stripped of the bucket
/// prefix. Created by `ReadTxn::range`.
pub struct Range<'t> {
    snap: &'t Snapshot,
    /// (page, cell index). Branch entries: the child being visited. Leaf entry, forward: the
    /// next cell to yield; reverse: one past the next cell to yield.
    stack: Vec<(NodePage<'t>, usize)>,
    prefix_len: usize,
    /// The bound on the far side of the scan (upper bound forward, lower bound reverse).
    stop: Bound<Vec<u8>>,
    reverse: bool,
    previous_key: Option<&'t [u8]>,
    leaves_visited: u64,
    /// The next leaf, loaded into cache while this one is read.
    prefetch: PagePrefetch,
    done: bool,
    /// An error met while seeking, reported by the first `next`.
    pending_error: Option<Error>,
}

impl<'t> Range<'t> {
    /// A scan over internal keys in `(lower, upper)`; `prefix_len` bytes (the bucket prefix)
    /// are stripped from the keys handed out.
    pub(crate) fn new(
        snap: &'t Snapshot,
        lower: Bound<Vec<u8>>,
        upper: Bound<Vec<u8>>,
        reverse: bool,
        prefix_len: usize,
    ) -> Range<'t> {
        let (start, stop) = if reverse {
            (upper, lower)
        } else {
            (lower, upper)
        };
        let mut range = Range {
            snap,
            stack: Vec::with_capacity(8),
            prefix_len,
            stop,
            reverse,
            previous_key: None,
            leaves_visited: 0,
            prefetch: PagePrefetch::default(),
            done: false,
            pending_error: None,
        };
        let seek = match &start {
            Bound::Unbounded if reverse => Seek::Last,
            Bound::Unbounded => Seek::First,
            Bound::Included(key) => Seek::Key {
                key,
                inclusive: true,
            },
            Bound::Excluded(key) => Seek::Key {
                key,
                inclusive: false,
            },
        };
        if let Err(error) = range.descend(snap.meta.root_pgid, &seek) {
            range.pending_error = Some(error);
        }
        range
    }

    /// Pushes the path from `pgid` down to a leaf, positioned per `seek`.
    fn descend(&mut self, mut pgid: u64, seek: &Seek<'_>) -> Result<(), Error> {
        loop {
            if self.stack.len() >= MAX_BTREE_DEPTH {
                return Err(page::corrupted("tree deeper than MAX_BTREE_DEPTH"));
            }
            let node = self.snap.node(pgid)?;
            let count = node.count();
            if node.is_leaf() {
                self.leaves_visited += 1;
                if self.leaves_visited > self.snap.meta.page_count {
                    return Err(page::corrupted(
                        "scan visited more leaves than the file has pages",
                    ));
                }
                let cell_index = match (seek, self.reverse) {
                    (Seek::First, _) => 0,
                    (Seek::Last, _) => count,
                    // Forward: first cell >= key (inclusive) or > key (exclusive).
                    (Seek::Key { key, inclusive }, false) => node.search(key, !inclusive)?,
                    // Reverse: one past the last cell <= key (inclusive) or < key (exclusive).
                    (Seek::Key { key, inclusive }, true) => node.search(key, *inclusive)?,
                };
                self.stack.push((node, cell_index));
                self.prefetch_next_leaf();
                return Ok(());
            }
            let child_index = match (seek, self.reverse) {
                (Seek::First, _) => 0,
                (Seek::Last, _) => count - 1,
                (Seek::Key { key, .. }, false) => node.child_for(key)?,
                (
                    Seek::Key {
                        key,
                        inclusive: true,
                    },
                    true,
                ) => node.child_for(key)?,
                (
                    Seek::Key {
                        key,
                        inclusive: false,
                    },
                    true,
                ) => node.child_before(key)?,
            };
            pgid = node.child(child_index)?;
            self.stack.push((node, child_index));
        }
    }

    /// Picks the leaf after the current one (in scan direction) to be loaded into cache while
    /// the current one is read: leaves of a scan are scattered over the file, and otherwise
    /// each line of each costs a cache miss. Only the sibling under the same parent is
    /// fetched, a few lines per entry yielded.
    fn prefetch_next_leaf(&mut self) {
        self.prefetch = PagePrefetch::default();
        let Some((parent, child_index)) = self.stack.len().checked_sub(2).map(|at| self.stack[at])
        else {
            return;
        };
        let next_index = if self.reverse {
            child_index.checked_sub(1)
        } else {
            Some(child_index + 1).filter(|i| *i < parent.count())
        };
        if let Some(Ok(next_pgid)) = next_index.map(|i| parent.child(i)) {
            self.prefetch = PagePrefetch::start(next_pgid);
        }
    }

    /// Moves to the next leaf in scan direction; false at the end of the tree.
    fn next_leaf(&mut self) -> Result<bool, Error> {
        self.stack.pop();
        while let Some((branch, child_index)) = self.stack.last_mut() {
            let next_index = if self.reverse {
                child_index.checked_sub(1)
            } else {
                Some(*child_index + 1).filter(|i| *i < branch.count())
            };
            if let Some(next_index) = next_index {
                *child_index = next_index;
                let child_pgid = branch.child(next_index)?;
                let seek = if self.reverse {
                    Seek::Last
                } else {
                    Seek::First
                };
                self.descend(child_pgid, &seek)?;
                return Ok(true);
            }
            self.stack.pop();
        }
        Ok(false)
    }

    fn step(&mut self) -> Result<Option<Entry<'t>>, Error> {
        if let Some(error) = self.pending_error.take() {
            return Err(error);
        }
        loop {
            let Some((leaf, cell_index)) = self.stack.last_mut() else {
                return Ok(None);
            };
            let leaf = *leaf;
            let entry_index = if self.reverse {
                cell_index.checked_sub(1)
            } else {
                Some(*cell_index).filter(|i| *i < leaf.count())
            };
            let Some(entry_index) = entry_index else {
                if !self.next_leaf()? {
                    return Ok(None);
                }
                continue;
            };
            *cell_index = if self.reverse {
                entry_index
            } else {
                entry_index + 1
            };
            let (key, value) = leaf.leaf_entry(entry_index)?;
            let past_stop = match &self.stop {
                Bound::Unbounded => false,
                Bound::Included(stop) if self.reverse => page::compare_keys(key, stop).is_lt(),
                Bound::Excluded(stop) if self.reverse => page::compare_keys(key, stop).is_le(),
                Bound::Included(stop) => page::compare_keys(key, stop).is_gt(),
                Bound::Excluded(stop) => page::compare_keys(key, stop).is_ge(),
            };
            if past_stop {
                return Ok(None);
            }
            if let Some(previous) = self.previous_key {
                let in_order = if self.reverse {
                    page::compare_keys(key, previous).is_lt()
                } else {
                    page::compare_keys(key, previous).is_gt()
                };
                if !in_order {
                    return Err(page::corrupted("keys out of order during scan"));
                }
            }
            self.previous_key = Some(key);
            self.prefetch.step(self.snap);
            let user_key = key
                .get(self.prefix_len..)
                .ok_or_else(|| page::corrupted("key shorter than its bucket prefix"))?;
            return Ok(Some((user_key, self.snap.value(value)?)));
        }
    }
}

impl<'t> Iterator for Range<'t> {
    type Item = Result<(&'t [u8], &'t [u8]), Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.step() {
            Ok(Some(entry)) => Some(Ok(entry)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(error) => {
                self.done = true;
                Some(Err(error))
            }
        }
    }
}
