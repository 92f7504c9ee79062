//! Page allocation and the reader-aware free list.
//!
//! Invariants:
//! - Every page in `[META_SLOTS, page_count)` is in exactly one of: the tree of the latest
//!   commit, the freelist chain of the latest commit, `free`, or `pending` (and, during a
//!   write transaction, that transaction's freed list).
//! - A page freed by transaction `t` sits in `pending[t]` until no reader with a snapshot
//!   older than `t` exists (`release`); only then can it be handed out again. Readers of
//!   snapshot `s >= t` cannot reach it, readers of `s < t` might.
//! - Allocation prefers the lowest free page, which keeps the file dense and lets
//!   defragmentation move the tail down.

use std::collections::{BTreeMap, BTreeSet};

use super::page::{self, FREELIST_RUNS_PER_PAGE, PAGE_BYTES};

pub(crate) struct Allocator {
    /// Reusable now.
    pub(crate) free: BTreeSet<u64>,
    /// Freed by the transaction keyed, possibly still visible to older readers.
    pub(crate) pending: BTreeMap<u64, Vec<u64>>,
    /// Pages in the file (the high-water mark new pages are cut from).
    pub(crate) page_count: u64,
}

impl Allocator {
    pub(crate) fn new(free: BTreeSet<u64>, page_count: u64) -> Allocator {
        Allocator {
            free,
            pending: BTreeMap::new(),
            page_count,
        }
    }

    /// `run_pages` contiguous pages: the lowest free run that fits, else the end of the file.
    pub(crate) fn alloc(&mut self, run_pages: u64) -> u64 {
        assert!(run_pages >= 1);
        if run_pages == 1 {
            if let Some(pgid) = self.free.pop_first() {
                return pgid;
            }
        } else if let Some(first) = self.find_run(run_pages) {
            for pgid in first..first + run_pages {
                self.free.remove(&pgid);
            }
            return first;
        }
        let first = self.page_count;
        self.page_count += run_pages;
        first
    }

    fn find_run(&self, run_pages: u64) -> Option<u64> {
        let (mut start, mut len) = (0u64, 0u64);
        for &pgid in &self.free {
            if len > 0 && start + len == pgid {
                len += 1;
            } else {
                start = pgid;
                len = 1;
            }
            if len == run_pages {
                return Some(start);
            }
        }
        None
    }

    /// Moves pages freed by transactions `<= oldest_reader_txid` to `free`: every live reader
    /// has a snapshot at least that new, so none of them can reach those pages.
    pub(crate) fn release(&mut self, oldest_reader_txid: u64) {
        while let Some(entry) = self.pending.first_entry() {
            if *entry.key() > oldest_reader_txid {
                break;
            }
            for pgid in entry.remove() {
                let inserted = self.free.insert(pgid);
                assert!(inserted, "page {pgid} freed twice");
            }
        }
    }

    pub(crate) fn pending_pages(&self) -> u64 {
        self.pending.values().map(|pages| pages.len() as u64).sum()
    }

    /// Drops free pages at the end of the file; returns how many.
    pub(crate) fn trim_tail(&mut self) -> u64 {
        let mut trimmed = 0;
        while self.page_count > page::META_SLOTS + 1
            && self.free.last() == Some(&(self.page_count - 1))
        {
            self.free.pop_last();
            self.page_count -= 1;
            trimmed += 1;
        }
        trimmed
    }

    /// Builds the freelist chain for a commit whose transaction freed `freed` (already
    /// including the previous chain's pages). The chain lists `free`, every `pending` page
    /// and `freed`: after a restart no reader exists, so all of them are reusable. Pages for
    /// the chain itself come from `free`. Returns (first page or 0, encoded pages).
    pub(crate) fn encode_freelist(&mut self, freed: &[u64]) -> (u64, Vec<(u64, Vec<u8>)>) {
        let mut chain: Vec<u64> = Vec::new();
        let runs = loop {
            let mut listed: Vec<u64> = self.free.iter().copied().collect();
            for pages in self.pending.values() {
                listed.extend_from_slice(pages);
            }
            listed.extend_from_slice(freed);
            listed.sort_unstable();
            debug_assert!(
                listed.windows(2).all(|w| w[0] < w[1]),
                "a page is listed free twice"
            );
            let runs = page::to_runs(listed);
            let pages_needed = runs.len().div_ceil(FREELIST_RUNS_PER_PAGE);
            if chain.len() >= pages_needed {
                break runs;
            }
            // Taking a page out of `free` can split a run, so recount after each one. A chain
            // page left without runs stays in the chain (it is reachable, not leaked).
            chain.push(self.alloc(1));
        };
        let mut pages = Vec::with_capacity(chain.len());
        let mut run_chunks = runs.chunks(FREELIST_RUNS_PER_PAGE);
        for (position, &pgid) in chain.iter().enumerate() {
            let next_pgid = chain.get(position + 1).copied().unwrap_or(0);
            let mut bytes = vec![0u8; PAGE_BYTES];
            page::encode_freelist(
                &mut bytes,
                pgid,
                next_pgid,
                run_chunks.next().unwrap_or(&[]),
            );
            pages.push((pgid, bytes));
        }
        (chain.first().copied().unwrap_or(0), pages)
    }
}
