//! The write transaction's in-memory tree: nodes taken out of the mmap on first write
//! ("dirty"), edited in memory, and at commit rebalanced, split into pages and written to
//! freshly allocated pages (copy-on-write; the old pages go to the transaction's freed list).
//! A dirty leaf keeps reading its unchanged cells from its old page, which belongs to the
//! transaction's base snapshot and so stays unchanged until the transaction ends (`mmap.rs`).
//!
//! Invariants:
//! - A branch's child i holds keys in `[key(i), key(i+1))`; child 0 also holds everything
//!   below key(1) (its own separator is never compared). Splits give a new page its first key
//!   as separator; merges keep the left separator; so routing stays correct after edits.
//! - Every page the transaction stops referencing is pushed to `freed` exactly once (when its
//!   node is first dirtied, or when an overflow value is replaced or deleted), and only
//!   pages allocated by this transaction's `Allocator` are written.
//! - All leaves are at the same depth; the depth never exceeds `MAX_BTREE_DEPTH`.
//! - Commit writes pages in batches of at most `WRITE_BATCH_BYTES` (more only for one large
//!   overflow run), all before the commit's first `fdatasync` (docs/btree.md, step 1).

use super::alloc::Allocator;
use super::mmap::{PagePrefetch, Snapshot};
use super::page::{
    self, CellValue, NodeBuilder, NodePage, ValueRef, LEAF_CELL_HEADER_BYTES, MAX_BTREE_DEPTH,
    MAX_INLINE_CELL_BYTES, PAGE_BYTES, PAGE_HEADER_BYTES, SLOT_BYTES, VALUE_INLINE, VALUE_OVERFLOW,
};
use super::Error;
use crate::writeback::WritebackPacer;

/// A dirty node smaller than this (encoded bytes) is merged with a sibling at commit.
const NODE_UNDERFULL_BYTES: usize = PAGE_BYTES / 4;
const NODE_CAPACITY_BYTES: usize = PAGE_BYTES - PAGE_HEADER_BYTES;
/// In-memory cell flag, never written to a page: a new value too large for a cell, waiting
/// for an overflow run at commit. The cell's 8 reference bytes index `Leaf::big_values`.
const VALUE_BIG: u8 = 0xff;
/// A leaf's arena is compacted when its dead bytes exceed both this and its live bytes.
const LEAF_DEAD_BYTES_MAX: usize = 2 * PAGE_BYTES;

pub(crate) enum Child {
    Clean(u64),
    Dirty(Box<Node>),
}

pub(crate) enum Node {
    Leaf(Leaf),
    Branch(Branch),
}

/// A dirty leaf. Cells keep the page's own cell encoding: the cells of the page it was loaded
/// from stay in that page (which the write transaction's base snapshot keeps unchanged for
/// the whole transaction, see the module invariants of `mmap.rs`), and new or rewritten cells
/// go back to back into one arena. Loading a page therefore copies nothing, and writing the
/// leaf out copies each cell once. Replaced and deleted arena cells stay as dead bytes until
/// the arena is compacted.
///
/// A cell is named by an offset: below `PAGE_BYTES`, into the base page; from `PAGE_BYTES`
/// on, into the arena (minus `PAGE_BYTES`). Methods that read cells take the base page's
/// bytes (`Leaf::page`).
///
/// Invariant: every offset in `cells` starts a well-formed cell (validated when loaded from
/// the page, or written here), in strictly increasing key order.
pub(crate) struct Leaf {
    /// The page the leaf was loaded from, 0 for none (page 0 is a meta page).
    base_pgid: u64,
    arena: Vec<u8>,
    /// Offset of each live cell (see above), in key order.
    cells: Vec<u32>,
    /// Values of `VALUE_BIG` cells (emptied when their cell is replaced or deleted).
    big_values: Vec<Vec<u8>>,
    /// Encoded size of the live cells with their slots.
    live_bytes: usize,
    /// Arena bytes no live cell uses.
    dead_bytes: usize,
}

/// A leaf value as the dirty leaf holds it.
pub(crate) enum LeafValue<'a> {
    Inline(&'a [u8]),
    Overflow { first_pgid: u64, len: usize },
    Big(&'a [u8]),
}

const ARENA_BASE: usize = PAGE_BYTES;

fn cell_len_at(bytes: &[u8], offset: usize) -> usize {
    let key_len = u16::from_le_bytes([bytes[offset], bytes[offset + 1]]) as usize;
    let body_len = if bytes[offset + 6] == VALUE_INLINE {
        u32::from_le_bytes(bytes[offset + 2..offset + 6].try_into().expect("4 bytes")) as usize
    } else {
        8
    };
    LEAF_CELL_HEADER_BYTES + key_len + body_len
}

fn cell_key_at(bytes: &[u8], offset: usize) -> &[u8] {
    let key_len = u16::from_le_bytes([bytes[offset], bytes[offset + 1]]) as usize;
    &bytes[offset + LEAF_CELL_HEADER_BYTES..offset + LEAF_CELL_HEADER_BYTES + key_len]
}

fn inline_fits(key_len: usize, value_len: usize) -> bool {
    LEAF_CELL_HEADER_BYTES + key_len + value_len <= MAX_INLINE_CELL_BYTES
}

impl Leaf {
    fn empty() -> Leaf {
        Leaf {
            base_pgid: 0,
            arena: Vec::new(),
            cells: Vec::new(),
            big_values: Vec::new(),
            live_bytes: 0,
            dead_bytes: 0,
        }
    }

    /// Takes leaf page `pgid` as the base of a dirty leaf, validating every cell (and every
    /// overflow run, so that commit never writes a reference to garbage).
    fn load(node_page: &NodePage<'_>, pgid: u64, base: &Snapshot) -> Result<Leaf, Error> {
        let page_bytes = node_page.bytes();
        let mut leaf = Leaf {
            base_pgid: pgid,
            cells: Vec::with_capacity(node_page.count() + 4),
            ..Leaf::empty()
        };
        let mut previous: Option<&[u8]> = None;
        for cell_index in 0..node_page.count() {
            let (key, value) = node_page.leaf_entry(cell_index)?;
            if previous.is_some_and(|previous| page::compare_keys(previous, key).is_ge()) {
                return Err(page::corrupted("leaf keys out of order"));
            }
            previous = Some(key);
            let body_len = match value {
                ValueRef::Inline(bytes) => bytes.len(),
                ValueRef::Overflow { .. } => {
                    base.value(value)?;
                    8
                }
            };
            // The cell starts its header's length before its key (`leaf_entry` checked it all
            // lies in the page).
            let offset =
                key.as_ptr() as usize - page_bytes.as_ptr() as usize - LEAF_CELL_HEADER_BYTES;
            leaf.cells.push(offset as u32);
            leaf.live_bytes += LEAF_CELL_HEADER_BYTES + key.len() + body_len + SLOT_BYTES;
        }
        Ok(leaf)
    }

    /// The bytes of the page this leaf was loaded from (empty for a new leaf). `base` is the
    /// snapshot the transaction started from, which the page belongs to.
    pub(crate) fn page<'s>(&self, base: &'s Snapshot) -> &'s [u8] {
        if self.base_pgid == 0 {
            return &[];
        }
        base.pages(self.base_pgid, 1)
            .expect("a dirty leaf's page was read from this snapshot when loaded")
    }

    pub(crate) fn len(&self) -> usize {
        self.cells.len()
    }

    fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }

    /// The buffer holding cell `cell_index` and the cell's offset in it.
    fn locate<'a>(&'a self, page: &'a [u8], cell_index: usize) -> (&'a [u8], usize) {
        let offset = self.cells[cell_index] as usize;
        if offset < ARENA_BASE {
            (page, offset)
        } else {
            (&self.arena, offset - ARENA_BASE)
        }
    }

    fn cell<'a>(&'a self, page: &'a [u8], cell_index: usize) -> &'a [u8] {
        let (bytes, offset) = self.locate(page, cell_index);
        &bytes[offset..offset + cell_len_at(bytes, offset)]
    }

    pub(crate) fn key<'a>(&'a self, page: &'a [u8], cell_index: usize) -> &'a [u8] {
        let (bytes, offset) = self.locate(page, cell_index);
        cell_key_at(bytes, offset)
    }

    fn cell_len(&self, page: &[u8], cell_index: usize) -> usize {
        let (bytes, offset) = self.locate(page, cell_index);
        cell_len_at(bytes, offset)
    }

    pub(crate) fn value<'a>(&'a self, page: &'a [u8], cell_index: usize) -> LeafValue<'a> {
        let (bytes, offset) = self.locate(page, cell_index);
        let key_len = u16::from_le_bytes([bytes[offset], bytes[offset + 1]]) as usize;
        let value_len =
            u32::from_le_bytes(bytes[offset + 2..offset + 6].try_into().expect("4 bytes")) as usize;
        let body_at = offset + LEAF_CELL_HEADER_BYTES + key_len;
        let reference = || u64::from_le_bytes(bytes[body_at..body_at + 8].try_into().expect("8"));
        match bytes[offset + 6] {
            VALUE_INLINE => LeafValue::Inline(&bytes[body_at..body_at + value_len]),
            VALUE_OVERFLOW => LeafValue::Overflow {
                first_pgid: reference(),
                len: value_len,
            },
            _ => LeafValue::Big(&self.big_values[reference() as usize]),
        }
    }

    /// `Ok(index)` of `key`, or `Err(index)` where it would be inserted.
    pub(crate) fn search(&self, page: &[u8], key: &[u8]) -> Result<usize, usize> {
        // Appends (etcd's revision keys, bulk loads) land past the last key: one comparison.
        if let Some(last) = self.cells.len().checked_sub(1) {
            if page::compare_keys(self.key(page, last), key).is_lt() {
                return Err(self.cells.len());
            }
        }
        let (mut low, mut high) = (0, self.cells.len());
        while low < high {
            let mid = low + (high - low) / 2;
            match page::compare_keys(self.key(page, mid), key) {
                std::cmp::Ordering::Less => low = mid + 1,
                std::cmp::Ordering::Equal => return Ok(mid),
                std::cmp::Ordering::Greater => high = mid,
            }
        }
        Err(low)
    }

    /// Appends an encoded cell to the arena; returns its offset (see `Leaf`) and length.
    fn append_raw_cell(&mut self, cell: &[u8]) -> (u32, usize) {
        let offset = ARENA_BASE + self.arena.len();
        self.arena.extend_from_slice(cell);
        (offset as u32, cell.len())
    }

    /// Appends a cell for (`key`, `value`) to the arena; returns its offset and length.
    fn append_cell(&mut self, key: &[u8], value: &[u8]) -> (u32, usize) {
        let at = self.arena.len();
        let cell_value = if inline_fits(key.len(), value.len()) {
            CellValue::Inline(value)
        } else {
            self.big_values.push(value.to_vec());
            CellValue::Overflow {
                first_pgid: (self.big_values.len() - 1) as u64,
                len: value.len(),
            }
        };
        let cell_len = page::leaf_cell_bytes(key.len(), &cell_value) - SLOT_BYTES;
        self.arena.resize(at + cell_len, 0);
        page::write_leaf_cell(&mut self.arena[at..], key, &cell_value);
        if let CellValue::Overflow { .. } = cell_value {
            self.arena[at + 6] = VALUE_BIG;
        }
        ((ARENA_BASE + at) as u32, cell_len)
    }

    /// Frees what cell `cell_index` owns outside the leaf: its overflow run or big value.
    fn release(&mut self, page: &[u8], cell_index: usize, freed: &mut Vec<u64>) {
        let big_index = match self.value(page, cell_index) {
            LeafValue::Overflow { first_pgid, len } => {
                freed.extend(first_pgid..first_pgid + page::overflow_pages(len));
                None
            }
            LeafValue::Big(_) => {
                let cell = self.cell(page, cell_index);
                let reference = &cell[cell.len() - 8..];
                Some(u64::from_le_bytes(reference.try_into().expect("8")) as usize)
            }
            LeafValue::Inline(_) => None,
        };
        if let Some(big_index) = big_index {
            self.big_values[big_index] = Vec::new();
        }
    }

    /// Counts cell `cell_index` as dead if it lies in the arena (base page cells cost no
    /// memory of the leaf's).
    fn retire(&mut self, page: &[u8], cell_index: usize) -> usize {
        let cell_len = self.cell_len(page, cell_index);
        if self.cells[cell_index] as usize >= ARENA_BASE {
            self.dead_bytes += cell_len;
        }
        cell_len
    }

    fn insert(&mut self, cell_index: usize, key: &[u8], value: &[u8]) {
        let (offset, cell_len) = self.append_cell(key, value);
        self.cells.insert(cell_index, offset);
        self.live_bytes += cell_len + SLOT_BYTES;
    }

    fn replace(&mut self, page: &[u8], cell_index: usize, value: &[u8], freed: &mut Vec<u64>) {
        self.release(page, cell_index, freed);
        let offset = self.cells[cell_index] as usize;
        if offset >= ARENA_BASE {
            if let LeafValue::Inline(old) = self.value(page, cell_index) {
                if old.len() == value.len() {
                    // Same size (etcd's fixed-size meta values): overwrite in place.
                    let at = offset - ARENA_BASE + self.cell_len(page, cell_index) - value.len();
                    self.arena[at..at + value.len()].copy_from_slice(value);
                    return;
                }
            }
        }
        let old_len = self.retire(page, cell_index);
        let key = self.key(page, cell_index).to_vec();
        let (new_offset, new_len) = self.append_cell(&key, value);
        self.cells[cell_index] = new_offset;
        self.live_bytes = self.live_bytes - old_len + new_len;
        self.maybe_compact();
    }

    fn remove(&mut self, page: &[u8], cell_index: usize, freed: &mut Vec<u64>) {
        self.release(page, cell_index, freed);
        let old_len = self.retire(page, cell_index);
        self.cells.remove(cell_index);
        self.live_bytes -= old_len + SLOT_BYTES;
        self.maybe_compact();
    }

    /// Rewrites the arena without its dead bytes once they outweigh the live ones.
    fn maybe_compact(&mut self) {
        if self.dead_bytes <= LEAF_DEAD_BYTES_MAX || self.dead_bytes <= self.arena.len() / 2 {
            return;
        }
        let old_arena = std::mem::take(&mut self.arena);
        for offset in self.cells.iter_mut() {
            if *offset as usize >= ARENA_BASE {
                let at = *offset as usize - ARENA_BASE;
                let cell = &old_arena[at..at + cell_len_at(&old_arena, at)];
                *offset = (ARENA_BASE + self.arena.len()) as u32;
                self.arena.extend_from_slice(cell);
            }
        }
        self.dead_bytes = 0;
    }

    /// Appends all cells of `other` (whose keys all follow this leaf's; `other_page` is its
    /// base page) to this leaf's arena.
    fn append(&mut self, mut other: Leaf, other_page: &[u8]) {
        let big_base = self.big_values.len() as u64;
        self.big_values.append(&mut other.big_values);
        self.cells.reserve(other.cells.len());
        for cell_index in 0..other.cells.len() {
            let (offset, cell_len) = self.append_raw_cell(other.cell(other_page, cell_index));
            self.cells.push(offset);
            self.live_bytes += cell_len + SLOT_BYTES;
            let at = offset as usize - ARENA_BASE;
            if self.arena[at + 6] == VALUE_BIG && big_base > 0 {
                let reference = &mut self.arena[at + cell_len - 8..at + cell_len];
                let big_index = u64::from_le_bytes((&*reference).try_into().expect("8"));
                reference.copy_from_slice(&(big_index + big_base).to_le_bytes());
            }
        }
    }

    /// Gives every big value an overflow run, turning its cell into an overflow reference.
    /// Big cells are always in the arena (written by `append_cell` or `unplace_value`).
    fn place_big_values(
        &mut self,
        alloc: &mut Allocator,
        writes: &mut PageWrites,
    ) -> Result<(), Error> {
        if self.big_values.is_empty() {
            return Ok(());
        }
        for cell_index in 0..self.cells.len() {
            let Some(at) = (self.cells[cell_index] as usize).checked_sub(ARENA_BASE) else {
                continue;
            };
            if self.arena[at + 6] != VALUE_BIG {
                continue;
            }
            let body_at = at + cell_len_at(&self.arena, at) - 8;
            let big_index =
                u64::from_le_bytes(self.arena[body_at..body_at + 8].try_into().expect("8"));
            let value = std::mem::take(&mut self.big_values[big_index as usize]);
            let run_pages = page::overflow_pages(value.len());
            let first_pgid = alloc.alloc(run_pages);
            page::encode_overflow(writes.run(first_pgid, run_pages)?, first_pgid, &value);
            self.arena[at + 6] = VALUE_OVERFLOW;
            self.arena[body_at..body_at + 8].copy_from_slice(&first_pgid.to_le_bytes());
        }
        self.big_values.clear();
        Ok(())
    }

    /// Marks overflow value `cell_index` for copying: reads it into a big value, so commit
    /// writes it to a new run, and frees the old run.
    fn unplace_value(
        &mut self,
        page: &[u8],
        cell_index: usize,
        bytes: Vec<u8>,
        freed: &mut Vec<u64>,
    ) {
        self.release(page, cell_index, freed);
        // Patch a copy in the arena: the base page is never written.
        self.retire(page, cell_index);
        let cell = self.cell(page, cell_index).to_vec();
        let (offset, cell_len) = self.append_raw_cell(&cell);
        self.cells[cell_index] = offset;
        let at = offset as usize - ARENA_BASE;
        self.big_values.push(bytes);
        self.arena[at + 6] = VALUE_BIG;
        self.arena[at + cell_len - 8..at + cell_len]
            .copy_from_slice(&((self.big_values.len() - 1) as u64).to_le_bytes());
    }
}

/// A dirty branch: separator keys in one arena, entries (key range, child) in key order.
/// Entry 0's key is never compared (see the module invariants).
pub(crate) struct Branch {
    keys: Vec<u8>,
    entries: Vec<BranchEntry>,
    /// Search index built by `index_keys` (empty when stale): the length of the prefix that
    /// keys 1.. share and, per entry, the 8 key bytes after it (zero-padded, big-endian),
    /// which order entries the way `page::key_head` does (equal heads decide nothing).
    prefix_len: usize,
    heads: Vec<u64>,
}

/// `page::key_head` with 8 bytes.
fn key_head8(key: &[u8], prefix_len: usize) -> u64 {
    let rest = key.get(prefix_len..).unwrap_or(&[]);
    let mut word = [0u8; 8];
    let len = rest.len().min(8);
    word[..len].copy_from_slice(&rest[..len]);
    u64::from_be_bytes(word)
}

pub(crate) struct BranchEntry {
    key_at: u32,
    key_len: u32,
    pub(crate) child: Child,
}

impl Branch {
    fn with_capacity(entries: usize) -> Branch {
        Branch {
            keys: Vec::with_capacity(entries * 24),
            entries: Vec::with_capacity(entries),
            prefix_len: 0,
            heads: Vec::new(),
        }
    }

    /// Builds the search index (see `heads`); `push` makes it stale.
    fn index_keys(&mut self) {
        let count = self.entries.len();
        self.heads.clear();
        self.prefix_len = 0;
        if count < 2 {
            return;
        }
        self.prefix_len = page::common_prefix_len(self.key(1), self.key(count - 1));
        let heads: Vec<u64> = (0..count)
            .map(|at| {
                if at == 0 {
                    0
                } else {
                    key_head8(self.key(at), self.prefix_len)
                }
            })
            .collect();
        self.heads = heads;
    }

    fn push(&mut self, key: &[u8], child: Child) {
        self.heads.clear();
        let key_at = self.keys.len() as u32;
        self.keys.extend_from_slice(key);
        self.entries.push(BranchEntry {
            key_at,
            key_len: key.len() as u32,
            child,
        });
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub(crate) fn key(&self, entry_index: usize) -> &[u8] {
        let entry = &self.entries[entry_index];
        &self.keys[entry.key_at as usize..(entry.key_at + entry.key_len) as usize]
    }

    pub(crate) fn child(&self, entry_index: usize) -> &Child {
        &self.entries[entry_index].child
    }

    /// Index of the child whose range holds `key` (see module invariants).
    pub(crate) fn child_for(&self, key: &[u8]) -> usize {
        let count = self.entries.len();
        // Appends go to the last child: one comparison.
        if count > 1 && page::compare_keys(self.key(count - 1), key).is_le() {
            return count - 1;
        }
        if count > 1 && self.heads.len() == count {
            // As `NodePage::search`: the prefix settles keys outside it, the heads order the
            // rest, and only a probe with an equal head compares whole keys.
            let prefix_len = self.prefix_len;
            let shared = prefix_len.min(key.len());
            match page::compare_keys(&key[..shared], &self.key(1)[..shared]) {
                std::cmp::Ordering::Less => return 0,
                std::cmp::Ordering::Greater => return count - 1,
                std::cmp::Ordering::Equal if key.len() < prefix_len => return 0,
                std::cmp::Ordering::Equal => {}
            }
            let key_head = key_head8(key, prefix_len);
            let (mut low, mut high) = (1, count);
            while low < high {
                let mid = low + (high - low) / 2;
                let head = self.heads[mid];
                let go_right = if head != key_head {
                    head < key_head
                } else {
                    page::compare_keys(self.key(mid), key).is_le()
                };
                if go_right {
                    low = mid + 1;
                } else {
                    high = mid;
                }
            }
            return low - 1;
        }
        self.entries
            .partition_point(|e| {
                let separator = &self.keys[e.key_at as usize..(e.key_at + e.key_len) as usize];
                page::compare_keys(separator, key).is_le()
            })
            .saturating_sub(1)
    }

    fn encoded_bytes(&self) -> usize {
        PAGE_HEADER_BYTES
            + self
                .entries
                .iter()
                .map(|e| page::branch_cell_bytes(e.key_len as usize))
                .sum::<usize>()
    }
}

impl Node {
    fn encoded_bytes(&self) -> usize {
        match self {
            Node::Leaf(leaf) => PAGE_HEADER_BYTES + leaf.live_bytes,
            Node::Branch(branch) => branch.encoded_bytes(),
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Node::Leaf(leaf) => leaf.is_empty(),
            Node::Branch(branch) => branch.is_empty(),
        }
    }
}

/// What a write transaction needs from its surroundings while editing: the snapshot it
/// started from (to read clean pages) and the list of pages it stopped using.
pub(crate) struct Editor<'a> {
    pub(crate) base: &'a Snapshot,
    pub(crate) freed: &'a mut Vec<u64>,
}

impl Editor<'_> {
    /// Copies page `pgid` into a dirty node and records the page as freed.
    fn load(&mut self, pgid: u64) -> Result<Node, Error> {
        let node_page = self.base.node(pgid)?;
        let node = if node_page.is_leaf() {
            Node::Leaf(Leaf::load(&node_page, pgid, self.base)?)
        } else {
            let count = node_page.count();
            let mut branch = Branch::with_capacity(count + 1);
            for cell_index in 0..count {
                branch.push(
                    node_page.key(cell_index)?,
                    Child::Clean(node_page.child(cell_index)?),
                );
            }
            branch.index_keys();
            Node::Branch(branch)
        };
        self.freed.push(pgid);
        Ok(node)
    }

    fn dirty<'c>(&mut self, child: &'c mut Child) -> Result<&'c mut Node, Error> {
        if let Child::Clean(pgid) = *child {
            *child = Child::Dirty(Box::new(self.load(pgid)?));
        }
        match child {
            Child::Dirty(node) => Ok(node),
            Child::Clean(_) => unreachable!("made dirty above"),
        }
    }

    /// Inserts or replaces `key`; returns whether it existed.
    pub(crate) fn put(
        &mut self,
        root: &mut Child,
        key: &[u8],
        value: &[u8],
    ) -> Result<bool, Error> {
        let mut child = root;
        for _ in 0..MAX_BTREE_DEPTH {
            match self.dirty(child)? {
                Node::Leaf(leaf) => {
                    let page = leaf.page(self.base);
                    return match leaf.search(page, key) {
                        Ok(at) => {
                            leaf.replace(page, at, value, self.freed);
                            Ok(true)
                        }
                        Err(at) => {
                            leaf.insert(at, key, value);
                            Ok(false)
                        }
                    };
                }
                Node::Branch(branch) => {
                    let at = branch.child_for(key);
                    child = &mut branch.entries[at].child;
                }
            }
        }
        Err(page::corrupted("tree deeper than MAX_BTREE_DEPTH"))
    }

    /// Removes `key`; returns whether it existed. The caller checked that it exists, so the
    /// path is only copied when there is something to delete.
    pub(crate) fn delete(&mut self, root: &mut Child, key: &[u8]) -> Result<bool, Error> {
        let mut child = root;
        for _ in 0..MAX_BTREE_DEPTH {
            match self.dirty(child)? {
                Node::Leaf(leaf) => {
                    let page = leaf.page(self.base);
                    return match leaf.search(page, key) {
                        Ok(at) => {
                            leaf.remove(page, at, self.freed);
                            Ok(true)
                        }
                        Err(_) => Ok(false),
                    };
                }
                Node::Branch(branch) => {
                    let at = branch.child_for(key);
                    child = &mut branch.entries[at].child;
                }
            }
        }
        Err(page::corrupted("tree deeper than MAX_BTREE_DEPTH"))
    }

    /// Merges underfull dirty nodes into a sibling, bottom-up, then collapses a root branch
    /// with a single child. Merged nodes may be oversized; `spill` splits them.
    pub(crate) fn rebalance(&mut self, root: &mut Child) -> Result<(), Error> {
        if let Child::Dirty(node) = root {
            self.rebalance_node(node, 0)?;
        }
        loop {
            match root {
                Child::Dirty(node) => match node.as_mut() {
                    Node::Branch(branch) if branch.len() == 1 => {
                        let only = branch.entries.pop().expect("one entry");
                        *root = only.child;
                    }
                    Node::Branch(branch) if branch.is_empty() => {
                        *root = Child::Dirty(Box::new(Node::Leaf(Leaf::empty())));
                    }
                    _ => return Ok(()),
                },
                Child::Clean(_) => return Ok(()),
            }
        }
    }

    fn rebalance_node(&mut self, node: &mut Node, depth: usize) -> Result<(), Error> {
        if depth >= MAX_BTREE_DEPTH {
            return Err(page::corrupted("tree deeper than MAX_BTREE_DEPTH"));
        }
        let Node::Branch(branch) = node else {
            return Ok(());
        };
        for entry in branch.entries.iter_mut() {
            if let Child::Dirty(child) = &mut entry.child {
                self.rebalance_node(child, depth + 1)?;
            }
        }
        let mut at = 0;
        while at < branch.entries.len() {
            let underfull = match &branch.entries[at].child {
                Child::Dirty(child) => {
                    child.is_empty() || child.encoded_bytes() < NODE_UNDERFULL_BYTES
                }
                Child::Clean(_) => false,
            };
            if !underfull || branch.entries.len() == 1 {
                at += 1;
                continue;
            }
            // Merge the pair (left, left + 1) into left, preferring the right sibling.
            let left = if at + 1 < branch.entries.len() {
                at
            } else {
                at - 1
            };
            let right_entry = branch.entries.remove(left + 1);
            let right_separator = &branch.keys
                [right_entry.key_at as usize..(right_entry.key_at + right_entry.key_len) as usize];
            let mut right_child = right_entry.child;
            let right = std::mem::replace(self.dirty(&mut right_child)?, Node::Leaf(Leaf::empty()));
            let left_node = self.dirty(&mut branch.entries[left].child)?;
            match (left_node, right) {
                (Node::Leaf(left_leaf), Node::Leaf(right_leaf)) => {
                    let right_page = right_leaf.page(self.base);
                    left_leaf.append(right_leaf, right_page)
                }
                (Node::Branch(left_branch), Node::Branch(right_branch)) => {
                    // The right node's first separator is never compared inside it; in the
                    // merged node it needs the parent's separator for the right node.
                    let mut right_entries = right_branch.entries.into_iter();
                    if let Some(first) = right_entries.next() {
                        left_branch.push(right_separator, first.child);
                    }
                    for entry in right_entries {
                        let key = &right_branch.keys
                            [entry.key_at as usize..(entry.key_at + entry.key_len) as usize];
                        left_branch.push(key, entry.child);
                    }
                }
                _ => return Err(page::corrupted("siblings at different depths")),
            }
            // Stay at `left`: the merged node may still be underfull.
            at = left;
            if let Child::Dirty(merged) = &branch.entries[left].child {
                if merged.encoded_bytes() >= NODE_UNDERFULL_BYTES {
                    at = left + 1;
                }
            }
        }
        Ok(())
    }

    /// Writes the dirty tree under `root` to new pages and returns the new root page id.
    pub(crate) fn spill(
        &mut self,
        root: Child,
        alloc: &mut Allocator,
        writes: &mut PageWrites,
    ) -> Result<u64, Error> {
        let root = match root {
            Child::Clean(pgid) => return Ok(pgid),
            Child::Dirty(node) => node,
        };
        let mut pieces = Pieces::default();
        let mut scratch = SpillScratch::default();
        self.spill_node(*root, alloc, writes, &mut pieces, &mut scratch, 0, 0)?;
        // A root that split grows the tree by one level per round.
        for _ in 0..MAX_BTREE_DEPTH {
            match pieces.cells.len() {
                0 => {
                    let pgid = alloc.alloc(1);
                    NodeBuilder::leaf(writes.run(pgid, 1)?, pgid).finish();
                    return Ok(pgid);
                }
                1 => return Ok(pieces.cells[0].2),
                _ => {
                    let mut branch = Branch::with_capacity(pieces.cells.len());
                    for &(key_at, key_len, pgid) in &pieces.cells {
                        branch.push(&pieces.keys[key_at..key_at + key_len], Child::Clean(pgid));
                    }
                    pieces = Pieces::default();
                    self.spill_node(
                        Node::Branch(branch),
                        alloc,
                        writes,
                        &mut pieces,
                        &mut scratch,
                        0,
                        0,
                    )?;
                }
            }
        }
        Err(Error::TooDeep)
    }

    /// Encodes `node` into as many pages as it needs; appends (first key, page id) per page
    /// to `out`. A leaf loads `next_leaf_pgid` (the base page of the leaf spilled after it, 0
    /// for none) into cache while it copies its own cells. `scratch` lends the per-node
    /// buffers, so spilling thousands of leaves allocates nothing per leaf.
    #[allow(clippy::too_many_arguments)]
    fn spill_node(
        &mut self,
        node: Node,
        alloc: &mut Allocator,
        writes: &mut PageWrites,
        out: &mut Pieces,
        scratch: &mut SpillScratch,
        depth: usize,
        next_leaf_pgid: u64,
    ) -> Result<(), Error> {
        if depth >= MAX_BTREE_DEPTH {
            return Err(Error::TooDeep);
        }
        match node {
            Node::Leaf(mut leaf) => {
                leaf.place_big_values(alloc, writes)?;
                let page = leaf.page(self.base);
                let mut prefetch = match next_leaf_pgid {
                    0 => PagePrefetch::default(),
                    pgid => PagePrefetch::start(pgid),
                };
                let SpillScratch { sizes, chunks } = scratch;
                sizes.clear();
                sizes.extend((0..leaf.len()).map(|cell_index| {
                    prefetch.step(self.base);
                    leaf.cell_len(page, cell_index) + SLOT_BYTES
                }));
                chunk_lengths(sizes, chunks);
                let mut first = 0;
                for &chunk_len in chunks.iter() {
                    let pgid = alloc.alloc(1);
                    let mut builder = NodeBuilder::leaf(writes.run(pgid, 1)?, pgid);
                    for (cell_index, size) in sizes.iter().enumerate().skip(first).take(chunk_len) {
                        let (bytes, offset) = leaf.locate(page, cell_index);
                        builder.push_leaf_cell(&bytes[offset..offset + size - SLOT_BYTES]);
                    }
                    builder.finish();
                    out.push(leaf.key(page, first), pgid);
                    first += chunk_len;
                }
                Ok(())
            }
            Node::Branch(branch) => {
                // (key in `cells_keys`, child page) of every child after spilling.
                let mut cells = Pieces {
                    keys: branch.keys,
                    cells: Vec::with_capacity(branch.entries.len() + 8),
                };
                let mut entries = branch.entries;
                // Index of the next dirty leaf after the entry being spilled (for prefetch).
                let dirty_leaf_pgid = |entry: &BranchEntry| match &entry.child {
                    Child::Dirty(node) => match node.as_ref() {
                        Node::Leaf(leaf) => leaf.base_pgid,
                        Node::Branch(_) => 0,
                    },
                    Child::Clean(_) => 0,
                };
                let mut next_dirty_at = 0;
                for at in 0..entries.len() {
                    let (key_at, key_len) =
                        (entries[at].key_at as usize, entries[at].key_len as usize);
                    match std::mem::replace(&mut entries[at].child, Child::Clean(0)) {
                        Child::Clean(pgid) => cells.cells.push((key_at, key_len, pgid)),
                        Child::Dirty(child) => {
                            if next_dirty_at <= at {
                                next_dirty_at = at + 1;
                                while next_dirty_at < entries.len()
                                    && dirty_leaf_pgid(&entries[next_dirty_at]) == 0
                                {
                                    next_dirty_at += 1;
                                }
                            }
                            let next_leaf_pgid =
                                entries.get(next_dirty_at).map_or(0, dirty_leaf_pgid);
                            let first_piece = cells.cells.len();
                            self.spill_node(
                                *child,
                                alloc,
                                writes,
                                &mut cells,
                                scratch,
                                depth + 1,
                                next_leaf_pgid,
                            )?;
                            // The first piece keeps the separator the parent already routes
                            // by; later pieces start at their own first key.
                            if let Some(piece) = cells.cells.get_mut(first_piece) {
                                (piece.0, piece.1) = (key_at, key_len);
                            }
                        }
                    }
                }
                let SpillScratch { sizes, chunks } = scratch;
                sizes.clear();
                sizes.extend(
                    cells
                        .cells
                        .iter()
                        .map(|&(_, key_len, _)| page::branch_cell_bytes(key_len)),
                );
                chunk_lengths(sizes, chunks);
                let mut first = 0;
                for &chunk_len in chunks.iter() {
                    let pgid = alloc.alloc(1);
                    let mut builder = NodeBuilder::branch(writes.run(pgid, 1)?, pgid);
                    for (position, &(key_at, key_len, child_pgid)) in
                        cells.cells[first..first + chunk_len].iter().enumerate()
                    {
                        // A branch's first separator is never compared (module invariants),
                        // so it is stored empty: that saves space and keeps keys sorted.
                        let key = if position == 0 {
                            &[][..]
                        } else {
                            &cells.keys[key_at..key_at + key_len]
                        };
                        builder.push_branch(key, child_pgid);
                    }
                    builder.finish();
                    let (key_at, key_len, _) = cells.cells[first];
                    out.push(&cells.keys[key_at..key_at + key_len], pgid);
                    first += chunk_len;
                }
                Ok(())
            }
        }
    }

    /// Copies nodes and overflow runs at or above page `boundary` (and the paths to them) so
    /// that commit rewrites them into the lowest free pages, for as long as `room` has space
    /// below the boundary for them. Returns the pages moved.
    pub(crate) fn relocate(
        &mut self,
        child: &mut Child,
        boundary: u64,
        room: &mut Room,
        depth: usize,
    ) -> Result<u64, Error> {
        if depth >= MAX_BTREE_DEPTH {
            return Err(page::corrupted("tree deeper than MAX_BTREE_DEPTH"));
        }
        let mut moved = 0;
        if let Child::Clean(pgid) = *child {
            let node_page = self.base.node(pgid)?;
            let mut must_copy = pgid >= boundary && room.take_run(1);
            let mut relocated_children = Vec::new();
            for cell_index in 0..node_page.count() {
                if node_page.is_leaf() {
                    if let (_, ValueRef::Overflow { first_pgid, len }) =
                        node_page.leaf_entry(cell_index)?
                    {
                        must_copy |= first_pgid + page::overflow_pages(len) > boundary
                            && room.has_run(page::overflow_pages(len));
                    }
                } else {
                    let mut grandchild = Child::Clean(node_page.child(cell_index)?);
                    moved += self.relocate(&mut grandchild, boundary, room, depth + 1)?;
                    if let Child::Dirty(_) = grandchild {
                        relocated_children.push((cell_index, grandchild));
                    }
                }
            }
            if !must_copy && relocated_children.is_empty() {
                return Ok(moved);
            }
            moved += u64::from(pgid >= boundary);
            let mut node = self.load(pgid)?;
            if let Node::Branch(branch) = &mut node {
                for (cell_index, grandchild) in relocated_children {
                    branch.entries[cell_index].child = grandchild;
                }
            }
            *child = Child::Dirty(Box::new(node));
            if let Child::Dirty(node) = child {
                if let Node::Leaf(leaf) = node.as_mut() {
                    moved += self.relocate_values(leaf, boundary, room)?;
                }
            }
            return Ok(moved);
        }
        let Child::Dirty(node) = child else {
            unreachable!("clean handled above")
        };
        match node.as_mut() {
            Node::Leaf(leaf) => moved += self.relocate_values(leaf, boundary, room)?,
            Node::Branch(branch) => {
                for entry in branch.entries.iter_mut() {
                    moved += self.relocate(&mut entry.child, boundary, room, depth + 1)?;
                }
            }
        }
        Ok(moved)
    }

    fn relocate_values(
        &mut self,
        leaf: &mut Leaf,
        boundary: u64,
        room: &mut Room,
    ) -> Result<u64, Error> {
        let mut moved = 0;
        let page = leaf.page(self.base);
        for cell_index in 0..leaf.len() {
            if let LeafValue::Overflow { first_pgid, len } = leaf.value(page, cell_index) {
                let run_pages = page::overflow_pages(len);
                if first_pgid + run_pages > boundary && room.take_run(run_pages) {
                    let bytes = self
                        .base
                        .value(ValueRef::Overflow { first_pgid, len })?
                        .to_vec();
                    leaf.unplace_value(page, cell_index, bytes, self.freed);
                    moved += run_pages;
                }
            }
        }
        Ok(moved)
    }
}

/// Spilled pages as (first key, page id), keys in one arena: `cells` holds (key offset in
/// `keys`, key length, page id).
#[derive(Default)]
struct Pieces {
    keys: Vec<u8>,
    cells: Vec<(usize, usize, u64)>,
}

impl Pieces {
    fn push(&mut self, key: &[u8], pgid: u64) {
        self.cells.push((self.keys.len(), key.len(), pgid));
        self.keys.extend_from_slice(key);
    }
}

/// Free space below the defragmentation boundary, as runs, handed out to relocations so that
/// a pass moves only what it can place lower down (a pass never grows the file). Half of it
/// is held back for the copies of the relocated pages' ancestors.
pub(crate) struct Room {
    runs: Vec<(u64, u64)>,
    pages_left: u64,
}

impl Room {
    pub(crate) fn new(runs: Vec<(u64, u64)>) -> Room {
        let pages_left = runs.iter().map(|(_, len)| len).sum::<u64>() / 2;
        Room { runs, pages_left }
    }

    fn has_run(&self, run_pages: u64) -> bool {
        run_pages <= self.pages_left && self.runs.iter().any(|(_, len)| *len >= run_pages)
    }

    fn take_run(&mut self, run_pages: u64) -> bool {
        if run_pages > self.pages_left {
            return false;
        }
        match self.runs.iter_mut().find(|(_, len)| *len >= run_pages) {
            Some(run) => {
                run.0 += run_pages;
                run.1 -= run_pages;
                self.pages_left -= run_pages;
                true
            }
            None => false,
        }
    }
}

/// Buffers `spill_node` reuses from node to node: the encoded cell sizes of the node being
/// spilled and its chunk lengths.
#[derive(Default)]
struct SpillScratch {
    sizes: Vec<usize>,
    chunks: Vec<usize>,
}

/// Splits cells of the given encoded sizes into page-sized chunks of similar fill: the
/// fewest pages that hold them, filled evenly, so that a split leaves no nearly empty page.
/// Replaces the contents of `chunks` with the chunk lengths (none for no cells).
fn chunk_lengths(sizes: &[usize], chunks: &mut Vec<usize>) {
    chunks.clear();
    let total: usize = sizes.iter().sum();
    if sizes.is_empty() {
        return;
    }
    let pages = total.div_ceil(NODE_CAPACITY_BYTES).max(1);
    let target = total.div_ceil(pages);
    let (mut chunk_len, mut chunk_bytes) = (0usize, 0usize);
    for &size in sizes {
        assert!(size <= NODE_CAPACITY_BYTES, "a cell larger than a page");
        if chunk_len > 0
            && (chunk_bytes + size > NODE_CAPACITY_BYTES || chunk_bytes + size / 2 > target)
        {
            chunks.push(chunk_len);
            chunk_len = 0;
            chunk_bytes = 0;
        }
        chunk_len += 1;
        chunk_bytes += size;
    }
    chunks.push(chunk_len);
}

/// Pages a commit writes. They are gathered in a buffer of at most `WRITE_BATCH_BYTES` (more
/// only for one large overflow run) and written out whenever it fills, while the pages are
/// still in cache, with as few `pwritev`s as the page ids' contiguity allows.
///
/// Unpaced (the default), the device writes are left to the commit's `fdatasync`
/// (docs/btree.md, "Commit protocol", step 1 says why writeback is not started early).
/// Paced (`Options::writeback_pacing`), each written batch's writeback is started at once and
/// at most `crate::writeback::RANGES_IN_FLIGHT` batches are on their way to the device: a server
/// whose WAL shares the disk must not find a whole commit's pages queued ahead of each
/// small WAL write (a 33 MB commit made 4 KiB WAL writes wait 20–38 ms).
pub(crate) struct PageWrites {
    file: std::fs::File,
    buffer: Vec<u8>,
    /// (first page id, byte offset in `buffer`, pages) of each run in the buffer.
    runs: Vec<(u64, usize, u64)>,
    /// With pacing: the written batches whose writeback may still be in flight
    /// (`crate::writeback`, at most `RANGES_IN_FLIGHT` of about `WRITE_BATCH_BYTES` each).
    writeback: Option<WritebackPacer>,
}

/// Bytes of pages gathered before they are written.
const WRITE_BATCH_BYTES: usize = 1 << 20;
/// Bounded by the kernel's `IOV_MAX` (1024 on Linux).
const IOVECS_PER_WRITE_MAX: usize = 1024;

impl PageWrites {
    /// Writes to `file` (a handle of the database file); `paced` as `Options::writeback_pacing`.
    pub(crate) fn new(file: std::fs::File, paced: bool) -> PageWrites {
        PageWrites {
            file,
            buffer: Vec::new(),
            runs: Vec::new(),
            writeback: paced.then(WritebackPacer::new),
        }
    }

    /// A zeroed run of `run_pages` pages that will be written at page `first_pgid`. Writes
    /// out the pages gathered so far first if the run would overfill the buffer.
    pub(crate) fn run(&mut self, first_pgid: u64, run_pages: u64) -> Result<&mut [u8], Error> {
        let len = run_pages as usize * PAGE_BYTES;
        if !self.runs.is_empty() && self.buffer.len() + len > WRITE_BATCH_BYTES {
            self.flush()?;
        }
        let offset = self.buffer.len();
        self.buffer.resize(offset + len, 0);
        self.runs.push((first_pgid, offset, run_pages));
        Ok(&mut self.buffer[offset..offset + len])
    }

    /// Writes every gathered page and empties the buffer (keeping a batch's worth of it).
    /// With pacing, also starts the batch's writeback and waits for the oldest batches'
    /// until at most `crate::writeback::RANGES_IN_FLIGHT` remain.
    pub(crate) fn flush(&mut self) -> Result<(), Error> {
        let written = self
            .runs
            .iter()
            .fold(None, |range: Option<(u64, u64)>, run| {
                let start = run.0 * PAGE_BYTES as u64;
                let end = (run.0 + run.2) * PAGE_BYTES as u64;
                Some(range.map_or((start, end), |(s, e)| (s.min(start), e.max(end))))
            });
        self.write_out()?;
        self.runs.clear();
        self.buffer.clear();
        if self.buffer.capacity() > WRITE_BATCH_BYTES {
            self.buffer = Vec::with_capacity(WRITE_BATCH_BYTES);
        }
        if let (Some(pacer), Some((start, end))) = (self.writeback.as_mut(), written) {
            pacer.note_written(&self.file, start, end)?;
        }
        Ok(())
    }

    /// Forgets the batches whose writeback was started: the commit's `fdatasync`, which
    /// comes next, waits for all of them (and makes them durable, which pacing never does).
    pub(crate) fn end_writeback(&mut self) {
        if let Some(pacer) = self.writeback.as_mut() {
            pacer.clear();
        }
    }

    /// Forgets gathered pages without writing them (after a failed commit).
    pub(crate) fn discard(&mut self) {
        self.runs.clear();
        self.buffer.clear();
        self.end_writeback();
    }

    fn write_out(&mut self) -> std::io::Result<()> {
        self.runs.sort_unstable_by_key(|&(pgid, _, _)| pgid);
        let mut at = 0;
        while at < self.runs.len() {
            // One write per run of contiguous page ids, its pieces gathered from the buffer.
            let first_pgid = self.runs[at].0;
            let mut end_pgid = first_pgid;
            let mut iovecs: Vec<libc::iovec> = Vec::new();
            while at < self.runs.len()
                && self.runs[at].0 == end_pgid
                && iovecs.len() < IOVECS_PER_WRITE_MAX
            {
                let (_, offset, run_pages) = self.runs[at];
                let len = run_pages as usize * PAGE_BYTES;
                match iovecs.last_mut() {
                    // Adjacent in the buffer too: one piece.
                    Some(last)
                        if last.iov_base as usize + last.iov_len
                            == self.buffer.as_ptr() as usize + offset =>
                    {
                        last.iov_len += len
                    }
                    _ => iovecs.push(libc::iovec {
                        iov_base: self.buffer[offset..].as_ptr() as *mut libc::c_void,
                        iov_len: len,
                    }),
                }
                end_pgid += run_pages;
                at += 1;
            }
            pwritev_all(&self.file, &mut iovecs, first_pgid * PAGE_BYTES as u64)?;
        }
        Ok(())
    }
}

/// `pwritev` until every byte of `iovecs` is written at `offset`.
fn pwritev_all(
    file: &std::fs::File,
    mut iovecs: &mut [libc::iovec],
    mut offset: u64,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    while !iovecs.is_empty() {
        // Safety: every iovec points into `PageWrites::buffer` (borrowed for the whole call,
        // so neither freed nor moved) and covers bytes inside it; pwritev only reads them.
        let written = unsafe {
            libc::pwritev(
                file.as_raw_fd(),
                iovecs.as_ptr(),
                iovecs.len() as libc::c_int,
                offset as libc::off_t,
            )
        };
        if written < 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error);
        }
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        offset += written as u64;
        // Drop the fully written pieces and advance into a partly written one.
        let mut left = written as usize;
        while let Some(first) = iovecs.first_mut() {
            if left < first.iov_len {
                // Safety: `left < iov_len`, so the new base stays inside the same piece.
                first.iov_base =
                    unsafe { (first.iov_base as *mut u8).add(left) } as *mut libc::c_void;
                first.iov_len -= left;
                break;
            }
            left -= first.iov_len;
            iovecs = &mut iovecs[1..];
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The indexed branch search must route every key as the plain binary search over the
    //! separators does: checked over random sorted separators that share prefixes, are
    //! prefixes of one another and end in zero bytes, with random probes.
    use super::{Branch, Child};
    use crate::btree::page;

    fn plain_child_for(branch: &Branch, key: &[u8]) -> usize {
        (0..branch.len())
            .take_while(|&at| page::compare_keys(branch.key(at), key).is_le())
            .count()
            .saturating_sub(1)
    }

    #[test]
    fn indexed_branch_search_matches_plain_search() {
        let mut rng = fastrand::Rng::with_seed(7);
        let random_key = |rng: &mut fastrand::Rng| -> Vec<u8> {
            let mut key = b"\x03key".to_vec();
            key.extend((0..rng.usize(0..14)).map(|_| rng.u8(0..3)));
            key
        };
        for _ in 0..500 {
            let mut separators: Vec<Vec<u8>> = (0..rng.usize(1..40))
                .map(|_| random_key(&mut rng))
                .collect();
            separators.sort();
            separators.dedup();
            let mut branch = Branch::with_capacity(separators.len());
            for (at, separator) in separators.iter().enumerate() {
                branch.push(separator, Child::Clean(at as u64));
            }
            branch.index_keys();
            for _ in 0..200 {
                let probe = if rng.bool() {
                    random_key(&mut rng)
                } else {
                    (0..rng.usize(0..6)).map(|_| rng.u8(..)).collect()
                };
                assert_eq!(
                    branch.child_for(&probe),
                    plain_child_for(&branch, &probe),
                    "{separators:?} {probe:?}"
                );
            }
        }
    }
}
