//! The read-only file mapping and the snapshot a transaction reads through.
//!
//! Invariants (see `storage/docs/btree.md`, "Readers and the mapping"):
//! - A `Mapping` is never unmapped while a `Snapshot` holds an `Arc` to it. Growing the file
//!   beyond a mapping creates a new, larger mapping; older ones live on until their readers
//!   drop, so no reference into the mmap outlives the mapping it came from.
//! - A snapshot only ever builds slices over pages `< meta.page_count`, and the file is never
//!   truncated below the `page_count` of a live snapshot, so every slice is backed by the file.
//! - The bytes of a page reachable from a live snapshot never change: the writer only writes
//!   pages that are free in every live snapshot (copy-on-write plus the reader registry).
//!   Slices are built per page or per overflow run, never over the whole mapping, so no Rust
//!   reference ever covers bytes the writer is changing.

use std::fs::File;
use std::sync::Arc;

use memmap2::{MmapOptions, MmapRaw};

use super::page::{self, Meta, NodePage, ValueRef, PAGE_BYTES};
use super::Error;

/// Bytes reserved for a fresh mapping at least; address space is cheap, remaps are not.
const MAPPING_BYTES_MIN: usize = 256 << 20;

pub(crate) enum Mapping {
    /// The database file, mapped read-only and shared.
    File { map: MmapRaw, len: usize },
    /// An in-memory image of a file, used by the checker and the fuzz target.
    Image(Box<[u8]>),
}

impl Mapping {
    /// Maps `file` with room for at least `needed_bytes`.
    pub(crate) fn map_file(file: &File, needed_bytes: usize) -> Result<Mapping, Error> {
        let len = needed_bytes
            .saturating_mul(2)
            .max(MAPPING_BYTES_MIN)
            .next_power_of_two();
        // Mapping beyond the end of the file is allowed by mmap(2); such pages are never
        // touched (see the module invariants), so the excess only reserves address space.
        let map = MmapOptions::new().len(len).map_raw_read_only(file)?;
        Ok(Mapping::File { map, len })
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            Mapping::File { len, .. } => *len,
            Mapping::Image(bytes) => bytes.len(),
        }
    }

    /// `page_run` pages starting at `pgid`. The caller (a `Snapshot`) has checked that they
    /// lie below its `page_count`.
    fn pages(&self, pgid: u64, page_run: u64) -> Result<&[u8], Error> {
        let start = (pgid as usize)
            .checked_mul(PAGE_BYTES)
            .ok_or_else(|| page::corrupted("page id overflow"))?;
        let len = (page_run as usize)
            .checked_mul(PAGE_BYTES)
            .ok_or_else(|| page::corrupted("page run overflow"))?;
        let end = start
            .checked_add(len)
            .ok_or_else(|| page::corrupted("page run overflow"))?;
        if end > self.len() {
            return Err(page::corrupted(format!("page {pgid} beyond the mapping")));
        }
        match self {
            Mapping::File { map, .. } => {
                // Safety: `start..end` lies within the mapping (checked above). The snapshot
                // asking for it checked `pgid + page_run <= page_count`, and the file is never
                // shorter than the page_count of a live snapshot, so the memory is backed by
                // the file and reading it cannot fault. The pages are reachable from that
                // snapshot, so the writer does not modify them while the returned borrow (tied
                // to `&self`, itself kept alive by the snapshot's Arc) lives.
                Ok(unsafe { std::slice::from_raw_parts(map.as_ptr().add(start), len) })
            }
            Mapping::Image(bytes) => Ok(&bytes[start..end]),
        }
    }
}

impl Mapping {
    /// Hints the CPU to start loading `line_count` 64-byte lines of page `pgid` from line
    /// `first_line` into cache. Reads nothing itself and never faults, so it needs no range
    /// proof beyond staying inside the mapping.
    fn prefetch_lines(&self, pgid: u64, first_line: usize, line_count: usize) {
        #[cfg(target_arch = "x86_64")]
        {
            let Some(start) = (pgid as usize).checked_mul(PAGE_BYTES) else {
                return;
            };
            if start
                .checked_add(PAGE_BYTES)
                .is_none_or(|end| end > self.len())
            {
                return;
            }
            let base = match self {
                Mapping::File { map, .. } => map.as_ptr(),
                Mapping::Image(bytes) => bytes.as_ptr(),
            };
            let end_line = (first_line + line_count).min(PAGE_BYTES / CACHE_LINE_BYTES);
            for line in first_line..end_line {
                let address = base.wrapping_add(start + line * CACHE_LINE_BYTES) as *const i8;
                // Safety: a prefetch is only a hint; it neither reads into the program nor
                // faults, and the address lies inside the mapping (checked above).
                unsafe {
                    std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(address)
                };
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (pgid, first_line, line_count);
    }
}

pub(crate) const CACHE_LINE_BYTES: usize = 64;
/// Lines a `PagePrefetch` requests per step: a whole page in a burst stalls the core until the
/// fill buffers drain, so readers spread it over the entries they process meanwhile (a leaf of
/// small entries holds about 30, and a page is 64 lines).
const PREFETCH_LINES_PER_STEP: usize = 4;

/// Lines at the start of each page a point lookup requests before reading it: the header
/// and the slot array of a leaf of small entries (about 30 slots of 6 bytes, and the prefix).
const GET_PREFETCH_LINES: usize = 4;

/// Loads one page into cache a few lines at a time, while the reader works on another.
#[derive(Clone, Copy, Default)]
pub(crate) struct PagePrefetch {
    /// (page, next line to request); None when done or idle.
    next: Option<(u64, usize)>,
}

impl PagePrefetch {
    pub(crate) fn start(pgid: u64) -> PagePrefetch {
        PagePrefetch {
            next: Some((pgid, 0)),
        }
    }

    /// Requests the next few lines of the page from `snap`.
    #[inline]
    pub(crate) fn step(&mut self, snap: &Snapshot) {
        if let Some((pgid, line)) = self.next {
            snap.prefetch_lines(pgid, line, PREFETCH_LINES_PER_STEP);
            let line = line + PREFETCH_LINES_PER_STEP;
            self.next = (line < PAGE_BYTES / CACHE_LINE_BYTES).then_some((pgid, line));
        }
    }
}

/// One committed state of the tree: what a read transaction sees for its whole life.
pub(crate) struct Snapshot {
    pub(crate) meta: Meta,
    pub(crate) mapping: Arc<Mapping>,
    /// Pages free or awaiting release when this snapshot was committed (for stats).
    pub(crate) free_pages: u64,
}

impl Snapshot {
    pub(crate) fn pages(&self, pgid: u64, page_run: u64) -> Result<&[u8], Error> {
        if pgid < page::META_SLOTS
            || pgid
                .checked_add(page_run)
                .is_none_or(|end| end > self.meta.page_count)
        {
            return Err(page::corrupted(format!(
                "page {pgid} (+{page_run}) out of range"
            )));
        }
        self.mapping.pages(pgid, page_run)
    }

    /// Starts loading lines `first_line..first_line + line_count` of page `pgid` into cache
    /// if the snapshot has the page (scans fetch the next leaf while they read the current).
    pub(crate) fn prefetch_lines(&self, pgid: u64, first_line: usize, line_count: usize) {
        if pgid >= page::META_SLOTS && pgid < self.meta.page_count {
            self.mapping.prefetch_lines(pgid, first_line, line_count);
        }
    }

    pub(crate) fn node(&self, pgid: u64) -> Result<NodePage<'_>, Error> {
        NodePage::parse(self.pages(pgid, 1)?, pgid)
    }

    #[inline(always)]
    pub(crate) fn value<'s>(&'s self, value: ValueRef<'s>) -> Result<&'s [u8], Error> {
        match value {
            ValueRef::Inline(bytes) => Ok(bytes),
            ValueRef::Overflow { first_pgid, len } => {
                let run = self.pages(first_pgid, page::overflow_pages(len))?;
                page::overflow_value(run, first_pgid, len)
            }
        }
    }

    /// Point lookup of an internal (bucket-prefixed) key.
    pub(crate) fn get(&self, key: &[u8]) -> Result<Option<&[u8]>, Error> {
        self.get_from(self.meta.root_pgid, key)
    }

    /// Point lookup of an internal key in the subtree at `pgid`.
    pub(crate) fn get_from(&self, mut pgid: u64, key: &[u8]) -> Result<Option<&[u8]>, Error> {
        for _ in 0..page::MAX_BTREE_DEPTH {
            // The header, slot array and prefix of a page are read one after another, each
            // depending on the last; asking for their lines together overlaps the misses.
            self.prefetch_lines(pgid, 0, GET_PREFETCH_LINES);
            let node = self.node(pgid)?;
            if node.is_leaf() {
                let cell_index = node.search(key, false)?;
                if cell_index < node.count() {
                    let (cell_key, value) = node.leaf_entry(cell_index)?;
                    if cell_key == key {
                        return Ok(Some(self.value(value)?));
                    }
                }
                return Ok(None);
            }
            pgid = node.child(node.child_for(key)?)?;
        }
        Err(page::corrupted("tree deeper than MAX_BTREE_DEPTH"))
    }
}
