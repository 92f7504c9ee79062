//! The in-memory index: for every key, the revisions at which it changed.
//!
//! Values live in the backend under their revision (see [`super::revision`]); this index
//! maps a user key to those revisions, as etcd's `keyIndex`/`treeIndex` do
//! (`server/mvcc/key_index.go`, `index.go`).
//!
//! A key's history is a list of *generations*. A generation runs from the put that created
//! the key to the delete (tombstone) that ended it; the tombstone is the generation's last
//! revision and is followed by a new, empty generation. Only the last generation may be
//! empty, and every other generation ends with a tombstone.
//!
//! Worked example, key `"foo"`, revisions written `main.sub`:
//!
//! ```text
//! put(1.0); put(2.0); tombstone(3.0); put(4.0); tombstone(5.0)
//!     generations: {1.0, 2.0, 3.0(t)}  {4.0, 5.0(t)}  {empty}
//!
//! compact(2): drop revisions <= 2 except the largest such one
//!     generations: {2.0, 3.0(t)}  {4.0, 5.0(t)}  {empty}
//! compact(4): generation one ends at 3 <= 4 with a tombstone: dropped whole
//!     generations: {4.0, 5.0(t)}  {empty}
//! compact(5): only the tombstone 5.0 would remain, and a tombstone alone is not kept
//!     generations: {empty}          -> the key is removed from the index
//! ```
//!
//! Invariants: revisions within a key strictly increase (`modified` is the largest);
//! a generation's `ver` counts its puts and its tombstone; `created` is its first revision.

use std::collections::{BTreeMap, HashSet};
use std::ops::Bound;

use bytes::Bytes;

use super::revision::Revision;

/// The key has no revision visible at the requested point (etcd's `ErrRevisionNotFound`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RevisionNotFound;

/// One life of a key: from its creating put to its tombstone (if any).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Generation {
    /// Number of changes in this generation (puts, and the tombstone if there is one).
    pub ver: i64,
    /// Revision of the put that started this generation.
    pub created: Revision,
    /// Every revision in this generation, ascending.
    pub revs: Vec<Revision>,
}

impl Generation {
    fn is_empty(&self) -> bool {
        self.revs.is_empty()
    }

    /// Walks revisions newest first; returns the position where `keep_going` first
    /// returned false, or `None` if it never did (etcd's `generation.walk`).
    fn walk(&self, mut keep_going: impl FnMut(Revision) -> bool) -> Option<usize> {
        (0..self.revs.len())
            .rev()
            .find(|&i| !keep_going(self.revs[i]))
    }
}

/// The revisions of one key, grouped into generations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyIndex {
    /// The last revision at which the key changed.
    pub modified: Revision,
    pub generations: Vec<Generation>,
}

impl Default for KeyIndex {
    fn default() -> Self {
        KeyIndex {
            modified: Revision::default(),
            generations: vec![Generation::default()],
        }
    }
}

impl KeyIndex {
    /// A key index rebuilt from the backend: one generation whose oldest surviving
    /// revision is `modified` (etcd's `keyIndex.restore`).
    pub fn restored(created: Revision, modified: Revision, ver: i64) -> Self {
        KeyIndex {
            modified,
            generations: vec![Generation {
                ver,
                created,
                revs: vec![modified],
            }],
        }
    }

    /// Records a put at `rev`, which must be newer than every revision of this key.
    pub fn put(&mut self, rev: Revision) {
        assert!(
            rev > self.modified,
            "key index: put at {rev:?} not after {:?}",
            self.modified
        );
        if self.generations.is_empty() {
            self.generations.push(Generation::default());
        }
        let g = self
            .generations
            .last_mut()
            .expect("at least one generation");
        if g.revs.is_empty() {
            g.created = rev;
        }
        g.revs.push(rev);
        g.ver += 1;
        self.modified = rev;
    }

    /// Records a delete at `rev`: appends the tombstone to the current generation and opens
    /// a new, empty one. Fails if the key does not currently exist.
    pub fn tombstone(&mut self, rev: Revision) -> Result<(), RevisionNotFound> {
        match self.generations.last() {
            Some(g) if !g.is_empty() => {}
            _ => return Err(RevisionNotFound),
        }
        self.put(rev);
        self.generations.push(Generation::default());
        Ok(())
    }

    /// The key's (modified, created, version) as of store revision `at_rev`, or
    /// `RevisionNotFound` if the key did not exist then.
    pub fn get(&self, at_rev: i64) -> Result<(Revision, Revision, i64), RevisionNotFound> {
        let g = self.find_generation(at_rev).ok_or(RevisionNotFound)?;
        let n = g.walk(|rev| rev.main > at_rev).ok_or(RevisionNotFound)?;
        let ver = g.ver - (g.revs.len() - n - 1) as i64;
        Ok((g.revs[n], g.created, ver))
    }

    /// Revisions at or after main revision `rev`, ascending; of several changes in one
    /// transaction only the last (largest sub) is returned (etcd's `keyIndex.since`).
    pub fn since(&self, rev: i64) -> Vec<Revision> {
        let since = Revision::new(rev, 0);
        let mut gi = self.generations.len().saturating_sub(1);
        while gi > 0 {
            let g = &self.generations[gi];
            if !g.is_empty() && since > g.created {
                break;
            }
            gi -= 1;
        }
        let mut revs: Vec<Revision> = Vec::new();
        let mut last_main = 0;
        for g in &self.generations[gi..] {
            for &r in &g.revs {
                if since > r {
                    continue;
                }
                if r.main == last_main {
                    // A later change in the same transaction supersedes the earlier one.
                    *revs.last_mut().expect("last_main set by a pushed revision") = r;
                    continue;
                }
                revs.push(r);
                last_main = r.main;
            }
        }
        revs
    }

    /// Drops revisions `<= at_rev` except the newest such one (unless that one is a
    /// tombstone); revisions that remain at or below `at_rev` are added to `available`.
    pub fn compact(&mut self, at_rev: i64, available: &mut HashSet<Revision>) {
        let (mut gen_idx, rev_idx) = self.do_compact(at_rev, available);
        let last_gen = self.generations.len() - 1;
        let g = &mut self.generations[gen_idx];
        if !g.is_empty() {
            if let Some(rev_idx) = rev_idx {
                g.revs.drain(..rev_idx);
            }
            // A generation reduced to its tombstone is gone entirely.
            if g.revs.len() == 1 && gen_idx != last_gen {
                available.remove(&g.revs[0]);
                gen_idx += 1;
            }
        }
        self.generations.drain(..gen_idx);
    }

    /// Adds to `available` the revisions a `compact(at_rev)` would keep, without changing
    /// this index (etcd's `keyIndex.keep`).
    pub fn keep(&self, at_rev: i64, available: &mut HashSet<Revision>) {
        if self.is_empty() {
            return;
        }
        let (gen_idx, rev_idx) = self.do_compact(at_rev, available);
        let g = &self.generations[gen_idx];
        if !g.is_empty() {
            if let Some(rev_idx) = rev_idx {
                if rev_idx == g.revs.len() - 1 && gen_idx != self.generations.len() - 1 {
                    available.remove(&g.revs[rev_idx]);
                }
            }
        }
    }

    fn do_compact(&self, at_rev: i64, available: &mut HashSet<Revision>) -> (usize, Option<usize>) {
        // Skip generations that ended (tombstone) at or before at_rev.
        let mut gen_idx = 0;
        while gen_idx < self.generations.len() - 1 {
            let g = &self.generations[gen_idx];
            let tomb = g
                .revs
                .last()
                .expect("only the last generation may be empty")
                .main;
            if tomb > at_rev {
                break;
            }
            gen_idx += 1;
        }
        let rev_idx = self.generations[gen_idx].walk(|rev| {
            if rev.main <= at_rev {
                available.insert(rev);
                false
            } else {
                true
            }
        });
        (gen_idx, rev_idx)
    }

    /// True when nothing is left: a single, empty generation.
    pub fn is_empty(&self) -> bool {
        self.generations.len() == 1 && self.generations[0].is_empty()
    }

    /// The generation alive at `rev`, or `None` if the key did not exist then.
    fn find_generation(&self, rev: i64) -> Option<&Generation> {
        let last = self.generations.len().checked_sub(1)?;
        for (i, g) in self.generations.iter().enumerate().rev() {
            let (first, tomb) = match (g.revs.first(), g.revs.last()) {
                (Some(f), Some(t)) => (f.main, t.main),
                _ => continue,
            };
            if i != last && tomb <= rev {
                // rev falls after this generation's tombstone: a gap, the key was absent.
                return None;
            }
            if first <= rev {
                return Some(g);
            }
        }
        None
    }
}

/// Which keys a lookup covers, decoded from etcd's `key`/`range_end` pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyRange<'a> {
    /// Exactly one key (`range_end` empty).
    Single(&'a [u8]),
    /// `[start, end)`; `end == None` means every key `>= start` (`range_end == "\0"`).
    Range {
        start: &'a [u8],
        end: Option<&'a [u8]>,
    },
}

impl<'a> KeyRange<'a> {
    /// Decodes etcd's wire convention: empty `range_end` is one key, `"\0"` is "from key".
    pub fn from_request(key: &'a [u8], range_end: &'a [u8]) -> Self {
        match range_end {
            [] => KeyRange::Single(key),
            [0] => KeyRange::Range {
                start: key,
                end: None,
            },
            end => KeyRange::Range {
                start: key,
                end: Some(end),
            },
        }
    }

    /// Whether `key` lies in this range.
    pub fn contains(&self, key: &[u8]) -> bool {
        match *self {
            KeyRange::Single(k) => k == key,
            KeyRange::Range { start, end } => key >= start && !matches!(end, Some(e) if key >= e),
        }
    }
}

/// The index over all keys: ordered, so ranges are a walk (etcd's `treeIndex`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyIndexTree {
    keys: BTreeMap<Bytes, KeyIndex>,
}

impl KeyIndexTree {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of keys with an index entry (including keys whose latest change is a delete
    /// not yet compacted away).
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key's (modified, created, version) at `at_rev`.
    pub fn get(
        &self,
        key: &[u8],
        at_rev: i64,
    ) -> Result<(Revision, Revision, i64), RevisionNotFound> {
        self.keys.get(key).ok_or(RevisionNotFound)?.get(at_rev)
    }

    /// Records a put of `key` at `rev`. The key bytes are copied only when the key is new,
    /// so the index never pins a request buffer.
    pub fn put(&mut self, key: &[u8], rev: Revision) {
        if let Some(ki) = self.keys.get_mut(key) {
            ki.put(rev);
            return;
        }
        let mut ki = KeyIndex::default();
        ki.put(rev);
        self.keys.insert(Bytes::copy_from_slice(key), ki);
    }

    /// Records a delete of `key` at `rev`; fails if the key does not exist.
    pub fn tombstone(&mut self, key: &[u8], rev: Revision) -> Result<(), RevisionNotFound> {
        self.keys
            .get_mut(key)
            .ok_or(RevisionNotFound)?
            .tombstone(rev)
    }

    /// Mutable access for restoring from the backend.
    pub fn key_index_mut(&mut self, key: &[u8]) -> Option<&mut KeyIndex> {
        self.keys.get_mut(key)
    }

    /// Inserts a restored key index (the key must be absent).
    pub fn insert(&mut self, key: Bytes, ki: KeyIndex) {
        let old = self.keys.insert(key, ki);
        assert!(old.is_none(), "key index: restored key inserted twice");
    }

    /// Calls `visit(key, key_index)` for every indexed key in `range`, ascending, until
    /// `visit` returns false.
    pub fn visit<'s>(
        &'s self,
        range: KeyRange<'_>,
        mut visit: impl FnMut(&'s Bytes, &'s KeyIndex) -> bool,
    ) {
        match range {
            KeyRange::Single(key) => {
                if let Some((k, ki)) = self.keys.get_key_value(key) {
                    visit(k, ki);
                }
            }
            KeyRange::Range { start, end } => {
                let upper = match end {
                    // BTreeMap::range panics on an inverted range; etcd answers it with nothing.
                    Some(end) if end <= start => return,
                    Some(end) => Bound::Excluded(end),
                    None => Bound::Unbounded,
                };
                let bounds: (Bound<&[u8]>, Bound<&[u8]>) = (Bound::Included(start), upper);
                for (k, ki) in self.keys.range::<[u8], _>(bounds) {
                    if !visit(k, ki) {
                        return;
                    }
                }
            }
        }
    }

    /// Calls `visit(key, revision)` for each key in `range` that exists at `at_rev`, with
    /// the revision holding its value then (etcd's `treeIndex.Revisions`/`Range`).
    pub fn revisions<'s>(
        &'s self,
        range: KeyRange<'_>,
        at_rev: i64,
        mut visit: impl FnMut(&'s Bytes, Revision) -> bool,
    ) {
        self.visit(range, |k, ki| match ki.get(at_rev) {
            Ok((modified, _, _)) => visit(k, modified),
            Err(RevisionNotFound) => true,
        });
    }

    /// Every revision at or after `rev` of keys in `range`, in revision order (for watch).
    pub fn range_since(&self, range: KeyRange<'_>, rev: i64) -> Vec<Revision> {
        let mut revs = Vec::new();
        self.visit(range, |_, ki| {
            revs.extend(ki.since(rev));
            true
        });
        revs.sort_unstable();
        revs
    }

    /// Compacts every key at `rev` and returns the revisions `<= rev` that must stay in the
    /// backend. Keys left empty are removed.
    pub fn compact(&mut self, rev: i64) -> HashSet<Revision> {
        let mut available = HashSet::new();
        self.keys.retain(|_, ki| {
            ki.compact(rev, &mut available);
            !ki.is_empty()
        });
        available
    }

    /// The revisions a compaction at `rev` would keep, without compacting.
    pub fn keep(&self, rev: i64) -> HashSet<Revision> {
        let mut available = HashSet::new();
        for ki in self.keys.values() {
            ki.keep(rev, &mut available);
        }
        available
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(main: i64, sub: i64) -> Revision {
        Revision::new(main, sub)
    }

    fn gen(created: Revision, ver: i64, revs: &[Revision]) -> Generation {
        Generation {
            ver,
            created,
            revs: revs.to_vec(),
        }
    }

    /// puts at 2, 4, 6; tombstone 8; puts 10, 12; tombstone 14; puts 16; (as etcd's
    /// `newTestKeyIndex`, but built here from our own calls).
    fn sample() -> KeyIndex {
        let mut ki = KeyIndex::default();
        ki.put(r(2, 0));
        ki.put(r(4, 0));
        ki.put(r(6, 0));
        ki.tombstone(r(8, 0)).unwrap();
        ki.put(r(10, 0));
        ki.put(r(12, 0));
        ki.tombstone(r(14, 0)).unwrap();
        ki.put(r(15, 1));
        ki.put(r(16, 0));
        ki
    }

    #[test]
    fn module_doc_example() {
        let mut ki = KeyIndex::default();
        ki.put(r(1, 0));
        ki.put(r(2, 0));
        ki.tombstone(r(3, 0)).unwrap();
        ki.put(r(4, 0));
        ki.tombstone(r(5, 0)).unwrap();
        assert_eq!(ki.generations.len(), 3);
        let mut avail = HashSet::new();
        ki.compact(2, &mut avail);
        assert_eq!(ki.generations[0].revs, vec![r(2, 0), r(3, 0)]);
        assert!(avail.contains(&r(2, 0)));
        ki.compact(4, &mut HashSet::new());
        assert_eq!(ki.generations[0].revs, vec![r(4, 0), r(5, 0)]);
        ki.compact(5, &mut HashSet::new());
        assert!(ki.is_empty());
    }

    #[test]
    fn get_at_revisions() {
        let ki = sample();
        type Found = Option<(Revision, Revision, i64)>;
        let cases: &[(i64, Found)] = &[
            (0, None),
            (1, None),
            (2, Some((r(2, 0), r(2, 0), 1))),
            (3, Some((r(2, 0), r(2, 0), 1))),
            (4, Some((r(4, 0), r(2, 0), 2))),
            (6, Some((r(6, 0), r(2, 0), 3))),
            (7, Some((r(6, 0), r(2, 0), 3))),
            (8, None),
            (9, None),
            (10, Some((r(10, 0), r(10, 0), 1))),
            (13, Some((r(12, 0), r(10, 0), 2))),
            (14, None),
            (15, Some((r(15, 1), r(15, 1), 1))),
            (16, Some((r(16, 0), r(15, 1), 2))),
            (100, Some((r(16, 0), r(15, 1), 2))),
        ];
        for &(at, want) in cases {
            assert_eq!(ki.get(at).ok(), want, "get({at})");
        }
    }

    #[test]
    fn tombstone_of_absent_key_fails() {
        let mut ki = KeyIndex::default();
        assert_eq!(ki.tombstone(r(1, 0)), Err(RevisionNotFound));
        ki.put(r(1, 0));
        ki.tombstone(r(2, 0)).unwrap();
        assert_eq!(ki.tombstone(r(3, 0)), Err(RevisionNotFound));
        assert_eq!(ki.generations.len(), 2);
        assert_eq!(ki.generations[0], gen(r(1, 0), 2, &[r(1, 0), r(2, 0)]));
    }

    #[test]
    #[should_panic]
    fn put_not_after_modified_panics() {
        let mut ki = KeyIndex::default();
        ki.put(r(5, 0));
        ki.put(r(5, 0));
    }

    #[test]
    fn since_keeps_last_sub_of_each_main() {
        let mut ki = KeyIndex::default();
        ki.put(r(2, 0));
        ki.put(r(2, 1));
        ki.put(r(3, 0));
        ki.tombstone(r(4, 0)).unwrap();
        ki.put(r(5, 0));
        assert_eq!(ki.since(0), vec![r(2, 1), r(3, 0), r(4, 0), r(5, 0)]);
        assert_eq!(ki.since(3), vec![r(3, 0), r(4, 0), r(5, 0)]);
        assert_eq!(ki.since(5), vec![r(5, 0)]);
        assert_eq!(ki.since(6), vec![]);
        let ki = sample();
        assert_eq!(
            ki.since(9),
            vec![r(10, 0), r(12, 0), r(14, 0), r(15, 1), r(16, 0)]
        );
    }

    #[test]
    fn compact_and_keep_agree_step_by_step() {
        // For every compaction point, keep() must predict exactly what compact() keeps,
        // and the surviving index must answer get() identically for revisions > at.
        for at in 0..=18 {
            let original = sample();
            let mut kept = HashSet::new();
            original.keep(at, &mut kept);
            let mut compacted = original.clone();
            let mut available = HashSet::new();
            compacted.compact(at, &mut available);
            assert_eq!(kept, available, "keep vs compact at {at}");
            for later in at.max(1)..=18 {
                assert_eq!(
                    compacted.get(later).ok(),
                    original.get(later).ok(),
                    "at {at} get {later}"
                );
            }
        }
    }

    #[test]
    fn compact_steps() {
        let mut ki = sample();
        let mut avail = HashSet::new();
        ki.compact(5, &mut avail);
        assert_eq!(
            ki.generations[0],
            gen(r(2, 0), 4, &[r(4, 0), r(6, 0), r(8, 0)])
        );
        assert_eq!(avail, HashSet::from([r(4, 0)]));
        let mut avail = HashSet::new();
        ki.compact(7, &mut avail);
        assert_eq!(ki.generations[0].revs, vec![r(6, 0), r(8, 0)]);
        assert_eq!(avail, HashSet::from([r(6, 0)]));
        // At 8 the first generation is only its tombstone: removed, nothing kept from it.
        let mut avail = HashSet::new();
        ki.compact(8, &mut avail);
        assert_eq!(ki.generations[0].revs, vec![r(10, 0), r(12, 0), r(14, 0)]);
        assert!(avail.is_empty());
        let mut avail = HashSet::new();
        ki.compact(14, &mut avail);
        assert_eq!(ki.generations.len(), 1);
        assert_eq!(ki.generations[0].revs, vec![r(15, 1), r(16, 0)]);
        assert!(avail.is_empty());
        let mut avail = HashSet::new();
        ki.compact(16, &mut avail);
        assert_eq!(ki.generations[0].revs, vec![r(16, 0)]);
        assert_eq!(avail, HashSet::from([r(16, 0)]));
        assert!(!ki.is_empty());
    }

    #[test]
    fn tree_ranges() {
        let mut tree = KeyIndexTree::new();
        tree.put(b"a", r(2, 0));
        tree.put(b"b", r(3, 0));
        tree.put(b"c", r(4, 0));
        tree.tombstone(b"b", r(5, 0)).unwrap();
        let collect = |range, at| {
            let mut out = Vec::new();
            tree.revisions(range, at, |k, rev| {
                out.push((k.to_vec(), rev.main));
                true
            });
            out
        };
        let all = KeyRange::from_request(b"a", b"\0");
        assert_eq!(
            collect(all, 4),
            vec![(b"a".to_vec(), 2), (b"b".to_vec(), 3), (b"c".to_vec(), 4)]
        );
        assert_eq!(
            collect(all, 5),
            vec![(b"a".to_vec(), 2), (b"c".to_vec(), 4)]
        );
        assert_eq!(collect(KeyRange::from_request(b"a", b"c"), 4).len(), 2);
        assert_eq!(
            collect(KeyRange::from_request(b"b", b""), 3),
            vec![(b"b".to_vec(), 3)]
        );
        assert!(collect(KeyRange::from_request(b"c", b"a"), 4).is_empty());
        assert!(collect(KeyRange::from_request(b"c", b"c"), 4).is_empty());
        assert_eq!(tree.tombstone(b"zz", r(6, 0)), Err(RevisionNotFound));
        assert_eq!(tree.range_since(all, 3), vec![r(3, 0), r(4, 0), r(5, 0)]);
        let keep = tree.compact(5);
        assert_eq!(keep, HashSet::from([r(2, 0), r(4, 0)]));
        assert_eq!(
            tree.len(),
            2,
            "b is removed: its last generation ended at 5"
        );
    }
}
