//! The write transaction's in-memory tree: nodes copied out of the mmap on first write
//! ("dirty"), edited in place, and at commit rebalanced, split into pages and written to
//! freshly allocated pages (copy-on-write; the old pages go to the transaction's freed list).
//!
//! Invariants:
//! - A branch's child i holds keys in `[key(i), key(i+1))`; child 0 also holds everything
//!   below key(1) (its own separator is never compared). Splits give a new page its first key
//!   as separator; merges keep the left separator; so routing stays correct after edits.
//! - Every page the transaction stops referencing is pushed to `freed` exactly once (when its
//!   node is first dirtied, or when an overflow value is replaced or deleted), and only
//!   pages allocated by this transaction's `Allocator` are written.
//! - All leaves are at the same depth; the depth never exceeds `MAX_BTREE_DEPTH`.

use super::alloc::Allocator;
use super::mmap::Snapshot;
use super::page::{
    self, CellValue, ValueRef, MAX_BTREE_DEPTH, MAX_INLINE_CELL_BYTES, PAGE_BYTES,
    PAGE_HEADER_BYTES,
};
use super::Error;

/// A dirty node smaller than this (encoded bytes) is merged with a sibling at commit.
const NODE_UNDERFULL_BYTES: usize = PAGE_BYTES / 4;
const NODE_CAPACITY_BYTES: usize = PAGE_BYTES - PAGE_HEADER_BYTES;

pub(crate) enum Child {
    Clean(u64),
    Dirty(Box<Node>),
}

pub(crate) enum Node {
    Leaf(Vec<LeafEntry>),
    Branch(Vec<BranchEntry>),
}

pub(crate) struct LeafEntry {
    pub(crate) key: Vec<u8>,
    pub(crate) value: Value,
}

pub(crate) struct BranchEntry {
    pub(crate) key: Vec<u8>,
    pub(crate) child: Child,
}

pub(crate) enum Value {
    /// Stored in the leaf cell.
    Inline(Vec<u8>),
    /// New value too large for a cell: gets an overflow run at commit.
    Big(Vec<u8>),
    /// Existing overflow run, unchanged by this transaction.
    Overflow { first_pgid: u64, len: usize },
}

impl Value {
    pub(crate) fn new(key_len: usize, bytes: Vec<u8>) -> Value {
        if page::LEAF_CELL_HEADER_BYTES + key_len + bytes.len() <= MAX_INLINE_CELL_BYTES {
            Value::Inline(bytes)
        } else {
            Value::Big(bytes)
        }
    }

    fn cell(&self) -> CellValue<'_> {
        match self {
            Value::Inline(bytes) => CellValue::Inline(bytes),
            // Sized as an overflow reference; the page id is assigned at commit.
            Value::Big(bytes) => CellValue::Overflow {
                first_pgid: 0,
                len: bytes.len(),
            },
            Value::Overflow { first_pgid, len } => CellValue::Overflow {
                first_pgid: *first_pgid,
                len: *len,
            },
        }
    }

    /// Frees the overflow run this value owned, if any.
    fn release(&self, freed: &mut Vec<u64>) {
        if let Value::Overflow { first_pgid, len } = self {
            freed.extend(*first_pgid..*first_pgid + page::overflow_pages(*len));
        }
    }
}

impl Node {
    fn encoded_bytes(&self) -> usize {
        PAGE_HEADER_BYTES
            + match self {
                Node::Leaf(entries) => entries
                    .iter()
                    .map(|e| page::leaf_cell_bytes(e.key.len(), &e.value.cell()))
                    .sum::<usize>(),
                Node::Branch(entries) => entries
                    .iter()
                    .map(|e| page::branch_cell_bytes(e.key.len()))
                    .sum(),
            }
    }

    fn is_empty(&self) -> bool {
        match self {
            Node::Leaf(entries) => entries.is_empty(),
            Node::Branch(entries) => entries.is_empty(),
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
        let count = node_page.count();
        let node = if node_page.is_leaf() {
            let mut entries = Vec::with_capacity(count + 1);
            for cell_index in 0..count {
                let (key, value) = node_page.leaf_entry(cell_index)?;
                let value = match value {
                    ValueRef::Inline(bytes) => Value::Inline(bytes.to_vec()),
                    ValueRef::Overflow { first_pgid, len } => {
                        // Validate the run now so that commit never writes a reference to garbage.
                        self.base.value(value)?;
                        Value::Overflow { first_pgid, len }
                    }
                };
                entries.push(LeafEntry {
                    key: key.to_vec(),
                    value,
                });
            }
            Node::Leaf(entries)
        } else {
            let mut entries = Vec::with_capacity(count + 1);
            for cell_index in 0..count {
                entries.push(BranchEntry {
                    key: node_page.key(cell_index)?.to_vec(),
                    child: Child::Clean(node_page.child(cell_index)?),
                });
            }
            Node::Branch(entries)
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
        value: Value,
    ) -> Result<bool, Error> {
        let mut child = root;
        for _ in 0..MAX_BTREE_DEPTH {
            match self.dirty(child)? {
                Node::Leaf(entries) => {
                    return match entries.binary_search_by(|e| page::compare_keys(&e.key, key)) {
                        Ok(at) => {
                            entries[at].value.release(self.freed);
                            entries[at].value = value;
                            Ok(true)
                        }
                        Err(at) => {
                            entries.insert(
                                at,
                                LeafEntry {
                                    key: key.to_vec(),
                                    value,
                                },
                            );
                            Ok(false)
                        }
                    };
                }
                Node::Branch(entries) => {
                    let at = branch_child_for(entries, key);
                    child = &mut entries[at].child;
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
                Node::Leaf(entries) => {
                    return match entries.binary_search_by(|e| page::compare_keys(&e.key, key)) {
                        Ok(at) => {
                            entries.remove(at).value.release(self.freed);
                            Ok(true)
                        }
                        Err(_) => Ok(false),
                    };
                }
                Node::Branch(entries) => {
                    let at = branch_child_for(entries, key);
                    child = &mut entries[at].child;
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
                    Node::Branch(entries) if entries.len() == 1 => {
                        let only = entries.pop().expect("one entry");
                        *root = only.child;
                    }
                    Node::Branch(entries) if entries.is_empty() => {
                        *root = Child::Dirty(Box::new(Node::Leaf(Vec::new())));
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
        let Node::Branch(entries) = node else {
            return Ok(());
        };
        for entry in entries.iter_mut() {
            if let Child::Dirty(child) = &mut entry.child {
                self.rebalance_node(child, depth + 1)?;
            }
        }
        let mut at = 0;
        while at < entries.len() {
            let underfull = match &entries[at].child {
                Child::Dirty(child) => {
                    child.is_empty() || child.encoded_bytes() < NODE_UNDERFULL_BYTES
                }
                Child::Clean(_) => false,
            };
            if !underfull || entries.len() == 1 {
                at += 1;
                continue;
            }
            // Merge the pair (left, left + 1) into left, preferring the right sibling.
            let left = if at + 1 < entries.len() { at } else { at - 1 };
            let right_entry = entries.remove(left + 1);
            let right_separator = right_entry.key;
            let mut right_child = right_entry.child;
            let right = std::mem::replace(self.dirty(&mut right_child)?, Node::Leaf(Vec::new()));
            let left_node = self.dirty(&mut entries[left].child)?;
            match (left_node, right) {
                (Node::Leaf(left_entries), Node::Leaf(right_entries)) => {
                    left_entries.extend(right_entries)
                }
                (Node::Branch(left_entries), Node::Branch(mut right_entries)) => {
                    // The right node's first separator is never compared inside it; in the
                    // merged node it needs the parent's separator for the right node.
                    if let Some(first) = right_entries.first_mut() {
                        first.key = right_separator;
                    }
                    left_entries.extend(right_entries);
                }
                _ => return Err(page::corrupted("siblings at different depths")),
            }
            // Stay at `left`: the merged node may still be underfull.
            at = left;
            if let Child::Dirty(merged) = &entries[left].child {
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
        let mut pieces = self.spill_node(*root, alloc, writes, 0)?;
        // A root that split grows the tree by one level per round.
        for _ in 0..MAX_BTREE_DEPTH {
            match pieces.len() {
                0 => {
                    let pgid = alloc.alloc(1);
                    let mut bytes = vec![0u8; PAGE_BYTES];
                    page::encode_leaf(&mut bytes, pgid, std::iter::empty());
                    writes.push(pgid, bytes);
                    return Ok(pgid);
                }
                1 => return Ok(pieces[0].1),
                _ => {
                    let entries = pieces
                        .into_iter()
                        .map(|(key, pgid)| BranchEntry {
                            key,
                            child: Child::Clean(pgid),
                        })
                        .collect();
                    pieces = self.spill_node(Node::Branch(entries), alloc, writes, 0)?;
                }
            }
        }
        Err(Error::TooDeep)
    }

    /// Encodes `node` into as many pages as it needs; returns (first key, page id) per page.
    fn spill_node(
        &mut self,
        node: Node,
        alloc: &mut Allocator,
        writes: &mut PageWrites,
        depth: usize,
    ) -> Result<Vec<(Vec<u8>, u64)>, Error> {
        if depth >= MAX_BTREE_DEPTH {
            return Err(Error::TooDeep);
        }
        match node {
            Node::Leaf(mut entries) => {
                for entry in entries.iter_mut() {
                    if let Value::Big(bytes) = &entry.value {
                        let first_pgid = alloc.alloc(page::overflow_pages(bytes.len()));
                        writes.push(first_pgid, page::encode_overflow(first_pgid, bytes));
                        entry.value = Value::Overflow {
                            first_pgid,
                            len: bytes.len(),
                        };
                    }
                }
                let sizes: Vec<usize> = entries
                    .iter()
                    .map(|e| page::leaf_cell_bytes(e.key.len(), &e.value.cell()))
                    .collect();
                let mut pieces = Vec::new();
                let mut rest = entries.as_slice();
                for chunk_len in chunk_lengths(&sizes) {
                    let (chunk, tail) = rest.split_at(chunk_len);
                    rest = tail;
                    let pgid = alloc.alloc(1);
                    let mut bytes = vec![0u8; PAGE_BYTES];
                    page::encode_leaf(
                        &mut bytes,
                        pgid,
                        chunk.iter().map(|e| (e.key.as_slice(), e.value.cell())),
                    );
                    writes.push(pgid, bytes);
                    pieces.push((chunk[0].key.clone(), pgid));
                }
                Ok(pieces)
            }
            Node::Branch(entries) => {
                let mut cells: Vec<(Vec<u8>, u64)> = Vec::with_capacity(entries.len());
                for entry in entries {
                    match entry.child {
                        Child::Clean(pgid) => cells.push((entry.key, pgid)),
                        Child::Dirty(child) => {
                            let pieces = self.spill_node(*child, alloc, writes, depth + 1)?;
                            for (piece_index, (first_key, pgid)) in pieces.into_iter().enumerate() {
                                // The first piece keeps the separator the parent already
                                // routes by; later pieces start at their own first key.
                                let key = if piece_index == 0 {
                                    entry.key.clone()
                                } else {
                                    first_key
                                };
                                cells.push((key, pgid));
                            }
                        }
                    }
                }
                let sizes: Vec<usize> = cells
                    .iter()
                    .map(|(key, _)| page::branch_cell_bytes(key.len()))
                    .collect();
                let mut pieces = Vec::new();
                let mut rest = cells.as_slice();
                for chunk_len in chunk_lengths(&sizes) {
                    let (chunk, tail) = rest.split_at(chunk_len);
                    rest = tail;
                    let pgid = alloc.alloc(1);
                    let mut bytes = vec![0u8; PAGE_BYTES];
                    // A branch's first separator is never compared (module invariants), so it is
                    // stored empty: that saves space and keeps every page's keys sorted.
                    let cells = chunk.iter().enumerate().map(|(i, (key, child))| {
                        (if i == 0 { &[][..] } else { key.as_slice() }, *child)
                    });
                    page::encode_branch(&mut bytes, pgid, cells);
                    writes.push(pgid, bytes);
                    pieces.push((chunk[0].0.clone(), pgid));
                }
                Ok(pieces)
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
            if let Node::Branch(entries) = &mut node {
                for (cell_index, grandchild) in relocated_children {
                    entries[cell_index].child = grandchild;
                }
            }
            *child = Child::Dirty(Box::new(node));
            if let Child::Dirty(node) = child {
                if let Node::Leaf(entries) = node.as_mut() {
                    moved += self.relocate_values(entries, boundary, room)?;
                }
            }
            return Ok(moved);
        }
        let Child::Dirty(node) = child else {
            unreachable!("clean handled above")
        };
        match node.as_mut() {
            Node::Leaf(entries) => moved += self.relocate_values(entries, boundary, room)?,
            Node::Branch(entries) => {
                for entry in entries.iter_mut() {
                    moved += self.relocate(&mut entry.child, boundary, room, depth + 1)?;
                }
            }
        }
        Ok(moved)
    }

    fn relocate_values(
        &mut self,
        entries: &mut [LeafEntry],
        boundary: u64,
        room: &mut Room,
    ) -> Result<u64, Error> {
        let mut moved = 0;
        for entry in entries.iter_mut() {
            if let Value::Overflow { first_pgid, len } = entry.value {
                let run_pages = page::overflow_pages(len);
                if first_pgid + run_pages > boundary && room.take_run(run_pages) {
                    let bytes = self
                        .base
                        .value(ValueRef::Overflow { first_pgid, len })?
                        .to_vec();
                    entry.value.release(self.freed);
                    entry.value = Value::Big(bytes);
                    moved += run_pages;
                }
            }
        }
        Ok(moved)
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

/// Index of the child of a dirty branch whose range holds `key` (see module invariants).
pub(crate) fn branch_child_for(entries: &[BranchEntry], key: &[u8]) -> usize {
    entries
        .partition_point(|e| page::compare_keys(&e.key, key).is_le())
        .saturating_sub(1)
}

/// Splits cells of the given encoded sizes into page-sized chunks of similar fill: the
/// fewest pages that hold them, filled evenly, so that a split leaves no nearly empty page.
fn chunk_lengths(sizes: &[usize]) -> Vec<usize> {
    let total: usize = sizes.iter().sum();
    if sizes.is_empty() {
        return Vec::new();
    }
    let pages = total.div_ceil(NODE_CAPACITY_BYTES).max(1);
    let target = total.div_ceil(pages);
    let mut chunks = Vec::with_capacity(pages);
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
    chunks
}

/// Pages a commit will write, coalesced into contiguous runs before they hit the file.
#[derive(Default)]
pub(crate) struct PageWrites {
    runs: Vec<(u64, Vec<u8>)>,
}

impl PageWrites {
    pub(crate) fn push(&mut self, first_pgid: u64, bytes: Vec<u8>) {
        debug_assert_eq!(bytes.len() % PAGE_BYTES, 0);
        self.runs.push((first_pgid, bytes));
    }

    /// Writes every page with as few `pwrite`s as contiguity allows.
    pub(crate) fn write_to(mut self, file: &std::fs::File) -> std::io::Result<u64> {
        use std::os::unix::fs::FileExt;
        self.runs.sort_unstable_by_key(|(pgid, _)| *pgid);
        let mut written_pages = 0;
        let mut at = 0;
        while at < self.runs.len() {
            let first_pgid = self.runs[at].0;
            let mut end_pgid = first_pgid;
            let mut last = at;
            while last < self.runs.len() && self.runs[last].0 == end_pgid {
                end_pgid += (self.runs[last].1.len() / PAGE_BYTES) as u64;
                last += 1;
            }
            if last - at == 1 {
                file.write_all_at(&self.runs[at].1, first_pgid * PAGE_BYTES as u64)?;
            } else {
                let mut buffer = Vec::with_capacity((end_pgid - first_pgid) as usize * PAGE_BYTES);
                for (_, bytes) in &self.runs[at..last] {
                    buffer.extend_from_slice(bytes);
                }
                file.write_all_at(&buffer, first_pgid * PAGE_BYTES as u64)?;
            }
            written_pages += end_pgid - first_pgid;
            at = last;
        }
        Ok(written_pages)
    }
}
