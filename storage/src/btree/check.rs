//! The consistency checker behind `tern-db check`: every page of the file must be reachable
//! exactly once (tree, overflow run or freelist chain) or listed free exactly once.
//!
//! Invariants: the walk marks each page before descending into it and never descends into
//! a page already marked, and depth is bounded by `MAX_BTREE_DEPTH`, so a corrupt file is
//! checked in time linear in its size. Problems are collected (up to `PROBLEMS_MAX`), never
//! panicked on.

use std::collections::BTreeMap;
use std::path::Path;

use std::sync::Arc;

use super::db::{bytes_meta_needs, choose_meta};
use super::mmap::{Mapping, Snapshot};
use super::page::{self, Meta, ValueRef, MAX_BTREE_DEPTH, META_SLOTS, PAGE_BYTES};
use super::Error;

/// Problems recorded before the checker stops listing more.
const PROBLEMS_MAX: usize = 100;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Use {
    Unseen,
    Branch,
    Leaf,
    Overflow,
    Freelist,
    Free,
}

#[derive(Debug, Default)]
pub struct CheckReport {
    /// The meta the check started from (the newest valid slot).
    pub meta: Option<Meta>,
    /// Validity of meta slot 0 and 1 (`Err` text for a torn or unwritten slot).
    pub meta_slots: Vec<Result<u64, String>>,
    pub file_bytes: u64,
    pub depth: usize,
    pub branch_pages: u64,
    pub leaf_pages: u64,
    pub overflow_pages: u64,
    pub freelist_pages: u64,
    pub free_pages: u64,
    pub entries: u64,
    pub entries_per_bucket: BTreeMap<Vec<u8>, u64>,
    /// Empty when the file is consistent.
    pub problems: Vec<String>,
}

impl CheckReport {
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }

    fn problem(&mut self, what: String) {
        if self.problems.len() < PROBLEMS_MAX {
            self.problems.push(what);
        }
    }
}

/// Checks the database file at `path` (read-only).
pub fn check_file(path: impl AsRef<Path>) -> Result<CheckReport, Error> {
    check_image(std::fs::read(path)?)
}

/// Checks an in-memory image of a database file. `Err` only when no meta slot is valid;
/// every other inconsistency is listed in `CheckReport::problems`.
pub fn check_image(image: Vec<u8>) -> Result<CheckReport, Error> {
    let mut report = CheckReport {
        file_bytes: image.len() as u64,
        ..CheckReport::default()
    };
    for slot in 0..META_SLOTS as usize {
        let bytes = image
            .get(slot * PAGE_BYTES..(slot + 1) * PAGE_BYTES)
            .unwrap_or(&[]);
        report.meta_slots.push(
            Meta::decode(bytes)
                .map(|m| m.txid)
                .map_err(|e| e.to_string()),
        );
    }
    let slot0 = image.get(..PAGE_BYTES).unwrap_or(&[]);
    let slot1 = image.get(PAGE_BYTES..2 * PAGE_BYTES).unwrap_or(&[]);
    let meta = choose_meta(slot0, slot1)?;
    report.meta = Some(meta);
    if let Err(e) = bytes_meta_needs(&meta, report.file_bytes) {
        report.problem(format!("meta {}: {e}", meta.txid));
        return Ok(report);
    }
    let snap = Snapshot {
        meta,
        mapping: Arc::new(Mapping::Image(image.into_boxed_slice())),
        free_pages: 0,
    };
    let mut walk = Walk {
        snap: &snap,
        uses: vec![Use::Unseen; meta.page_count as usize],
        leaf_depth: None,
    };
    for pgid in 0..META_SLOTS as usize {
        walk.uses[pgid] = Use::Branch; // Meta slots: accounted for, never in the tree.
    }
    walk.tree(&mut report, meta.root_pgid, None, None, 0);
    walk.freelist(&mut report);
    if report.entries != meta.entry_count {
        report.problem(format!(
            "meta counts {} entries, the tree holds {}",
            meta.entry_count, report.entries
        ));
    }
    for (pgid, use_) in walk.uses.iter().enumerate() {
        if *use_ == Use::Unseen {
            report.problem(format!(
                "page {pgid} is neither reachable nor free (leaked)"
            ));
        }
    }
    report.depth = walk.leaf_depth.unwrap_or(0) + 1;
    Ok(report)
}

struct Walk<'s> {
    snap: &'s Snapshot,
    uses: Vec<Use>,
    leaf_depth: Option<usize>,
}

impl Walk<'_> {
    /// Claims pages for one use; false (and a problem) if any is out of range or taken.
    fn claim(
        &mut self,
        report: &mut CheckReport,
        first_pgid: u64,
        page_run: u64,
        use_: Use,
    ) -> bool {
        let page_count = self.uses.len() as u64;
        if first_pgid < META_SLOTS
            || first_pgid
                .checked_add(page_run)
                .is_none_or(|end| end > page_count)
        {
            report.problem(format!(
                "{use_:?} page {first_pgid} (+{page_run}) outside the file"
            ));
            return false;
        }
        for pgid in first_pgid..first_pgid + page_run {
            let seen = self.uses[pgid as usize];
            if seen != Use::Unseen {
                report.problem(format!(
                    "page {pgid} reached twice: as {seen:?} and as {use_:?}"
                ));
                return false;
            }
        }
        for pgid in first_pgid..first_pgid + page_run {
            self.uses[pgid as usize] = use_;
        }
        true
    }

    /// Checks the subtree at `pgid`, whose keys must lie in `[lower, upper)`.
    fn tree(
        &mut self,
        report: &mut CheckReport,
        pgid: u64,
        lower: Option<&[u8]>,
        upper: Option<&[u8]>,
        depth: usize,
    ) {
        if depth >= MAX_BTREE_DEPTH {
            report.problem(format!("page {pgid}: tree deeper than MAX_BTREE_DEPTH"));
            return;
        }
        let node = match self.snap.node(pgid) {
            Ok(node) => node,
            Err(error) => {
                self.claim(report, pgid, 1, Use::Leaf);
                report.problem(format!("page {pgid}: {error}"));
                return;
            }
        };
        if !self.claim(
            report,
            pgid,
            1,
            if node.is_leaf() {
                Use::Leaf
            } else {
                Use::Branch
            },
        ) {
            return;
        }
        let mut keys = Vec::with_capacity(node.count());
        for cell_index in 0..node.count() {
            match node.key(cell_index) {
                Ok(key) => keys.push(key),
                Err(error) => {
                    report.problem(format!("page {pgid} cell {cell_index}: {error}"));
                    return;
                }
            }
        }
        if keys.windows(2).any(|pair| pair[0] >= pair[1]) {
            report.problem(format!("page {pgid}: keys not strictly increasing"));
        }
        // A branch's first separator is never compared, so only its children are bounded.
        let bounded_keys = if node.is_leaf() {
            &keys[..]
        } else {
            keys.get(1..).unwrap_or(&[])
        };
        // Searches trust the prefix and the heads to order compared keys without reading them.
        let first_compared = keys.len() - bounded_keys.len();
        for (offset, key) in bounded_keys.iter().enumerate() {
            let cell_index = first_compared + offset;
            if !key.starts_with(node.prefix()) {
                report.problem(format!(
                    "page {pgid} cell {cell_index}: key lacks the page prefix"
                ));
                break;
            }
            if node.head(cell_index) != page::key_head(key, node.prefix().len()) {
                report.problem(format!(
                    "page {pgid} cell {cell_index}: slot head does not match the key"
                ));
                break;
            }
        }
        for key in bounded_keys {
            if lower.is_some_and(|lower| *key < lower) || upper.is_some_and(|upper| *key >= upper) {
                report.problem(format!(
                    "page {pgid}: key outside the range its parent routes here"
                ));
                break;
            }
        }
        if node.is_leaf() {
            report.leaf_pages += 1;
            match self.leaf_depth {
                None => self.leaf_depth = Some(depth),
                Some(leaf_depth) if leaf_depth != depth => {
                    report.problem(format!(
                        "page {pgid}: leaf at depth {depth}, others at {leaf_depth}"
                    ));
                }
                Some(_) => {}
            }
            for cell_index in 0..node.count() {
                let (key, value) = match node.leaf_entry(cell_index) {
                    Ok(entry) => entry,
                    Err(error) => {
                        report.problem(format!("page {pgid} cell {cell_index}: {error}"));
                        continue;
                    }
                };
                report.entries += 1;
                match key
                    .first()
                    .map(|len| 1 + *len as usize)
                    .and_then(|end| key.get(1..end))
                {
                    Some(bucket) => {
                        *report
                            .entries_per_bucket
                            .entry(bucket.to_vec())
                            .or_default() += 1
                    }
                    None => report.problem(format!(
                        "page {pgid} cell {cell_index}: key without a bucket prefix"
                    )),
                }
                if let ValueRef::Overflow { first_pgid, len } = value {
                    let run_pages = page::overflow_pages(len);
                    if self.claim(report, first_pgid, run_pages, Use::Overflow) {
                        report.overflow_pages += run_pages;
                        if let Err(error) = self.snap.value(value) {
                            report.problem(format!("page {pgid} cell {cell_index}: {error}"));
                        }
                    }
                }
            }
            return;
        }
        report.branch_pages += 1;
        for cell_index in 0..node.count() {
            let child_pgid = match node.child(cell_index) {
                Ok(child_pgid) => child_pgid,
                Err(error) => {
                    report.problem(format!("page {pgid} cell {cell_index}: {error}"));
                    continue;
                }
            };
            let child_lower = if cell_index == 0 {
                lower
            } else {
                Some(keys[cell_index])
            };
            let child_upper = keys.get(cell_index + 1).copied().or(upper);
            self.tree(report, child_pgid, child_lower, child_upper, depth + 1);
        }
    }

    fn freelist(&mut self, report: &mut CheckReport) {
        let page_count = self.snap.meta.page_count;
        let mut pgid = self.snap.meta.freelist_pgid;
        while pgid != 0 {
            if !self.claim(report, pgid, 1, Use::Freelist) {
                return; // Out of range, or a loop in the chain.
            }
            report.freelist_pages += 1;
            let decoded = self
                .snap
                .pages(pgid, 1)
                .and_then(|bytes| page::decode_freelist(bytes, pgid, page_count));
            let (next_pgid, runs) = match decoded {
                Ok(decoded) => decoded,
                Err(error) => {
                    report.problem(format!("freelist page {pgid}: {error}"));
                    return;
                }
            };
            for (start, len) in runs {
                if self.claim(report, start, len, Use::Free) {
                    report.free_pages += len;
                }
            }
            pgid = next_pgid;
        }
    }
}
