//! On-disk page formats: pure encode/decode, no I/O. The byte layouts are specified in
//! `storage/docs/btree.md`; this file is their only implementation.
//!
//! Invariants: every decoder takes untrusted bytes and returns `Error::Corrupted` for any
//! value out of range (kind, count, offsets, lengths, page ids); no decoder indexes a slice
//! without a bounds check, so a corrupt file can never panic or read out of bounds.

use super::Error;

/// Size of every page, meta pages included. Fixed by the format (recorded in the meta page
/// and checked on open) so that a file is readable on any host regardless of its OS page size.
pub const PAGE_BYTES: usize = 4096;
/// Bytes of the header that starts every non-meta page.
pub const PAGE_HEADER_BYTES: usize = 16;
/// Largest key a caller may store (bucket prefix excluded). Bounds a branch cell so that a
/// branch page always holds at least three children (fan-out >= 3 bounds the tree depth).
pub const MAX_KEY_BYTES: usize = 1024;
/// Largest bucket name.
pub const MAX_BUCKET_NAME_BYTES: usize = 64;
/// Largest value (etcd's request limit is 1.5 MiB; values this large go to overflow pages).
pub const MAX_VALUE_BYTES: usize = 64 << 20;
/// A leaf cell larger than this keeps its value in an overflow run instead of inline, so
/// that at least two cells always fit in a leaf page.
pub const MAX_INLINE_CELL_BYTES: usize = 1536;
/// Upper bound on the height of a tree read from disk. Descents and cursors refuse to go
/// deeper, so a corrupt file whose child pointers form a cycle yields `Corrupted` instead of
/// recursing forever. A tree this writer builds has fan-out >= 3 at every split, so 32 levels
/// would need more than 3^31 pages (far more than a 2^48-byte file holds); commits that would
/// exceed it fail instead of writing an unreadable tree.
pub const MAX_BTREE_DEPTH: usize = 32;

pub const META_MAGIC: [u8; 8] = *b"TERNBT01";
/// Version 2 added the key heads to the slots and the page prefix (version 1 files, which
/// only ever existed in development, are refused as unsupported).
pub const FORMAT_VERSION: u32 = 2;
/// Pages 0 and 1 are the two meta slots; transaction `txid` writes slot `txid % 2`.
pub const META_SLOTS: u64 = 2;
pub const META_BYTES: usize = 64;

pub const KIND_BRANCH: u8 = 2;
pub const KIND_LEAF: u8 = 3;
pub const KIND_OVERFLOW: u8 = 4;
pub const KIND_FREELIST: u8 = 5;

pub const LEAF_CELL_HEADER_BYTES: usize = 7;
pub const BRANCH_CELL_HEADER_BYTES: usize = 10;
/// A slot: the cell's offset (u16) and the key head (4 bytes, see `key_head`).
pub const SLOT_BYTES: usize = 6;
pub const FREELIST_HEADER_BYTES: usize = PAGE_HEADER_BYTES + 8;
pub const FREELIST_RUN_BYTES: usize = 16;
pub const FREELIST_RUNS_PER_PAGE: usize = (PAGE_BYTES - FREELIST_HEADER_BYTES) / FREELIST_RUN_BYTES;

pub const VALUE_INLINE: u8 = 0;
pub const VALUE_OVERFLOW: u8 = 1;

const _: () = assert!(PAGE_BYTES <= u16::MAX as usize + 1, "slot offsets are u16");
const _: () = assert!(
    2 * (SLOT_BYTES + LEAF_CELL_HEADER_BYTES + MAX_INLINE_CELL_BYTES)
        <= PAGE_BYTES - PAGE_HEADER_BYTES,
    "two maximal inline cells must fit in one leaf"
);
const _: () = assert!(
    LEAF_CELL_HEADER_BYTES + MAX_BUCKET_NAME_BYTES + 1 + MAX_KEY_BYTES + 8 <= MAX_INLINE_CELL_BYTES,
    "a maximal key with an overflow reference must be an inline-sized cell"
);
const _: () = assert!(
    3 * (SLOT_BYTES + BRANCH_CELL_HEADER_BYTES + MAX_BUCKET_NAME_BYTES + 1 + MAX_KEY_BYTES)
        <= PAGE_BYTES - PAGE_HEADER_BYTES,
    "a branch page must hold three maximal keys"
);

#[cold]
pub fn corrupted(what: impl Into<String>) -> Error {
    Error::Corrupted(what.into())
}

pub fn read_u16(bytes: &[u8], at: usize) -> Result<u16, Error> {
    bytes
        .get(at..at + 2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .ok_or_else(|| corrupted("u16 field out of page"))
}

pub fn read_u32(bytes: &[u8], at: usize) -> Result<u32, Error> {
    bytes
        .get(at..at + 4)
        .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
        .ok_or_else(|| corrupted("u32 field out of page"))
}

pub fn read_u64(bytes: &[u8], at: usize) -> Result<u64, Error> {
    bytes
        .get(at..at + 8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
        .ok_or_else(|| corrupted("u64 field out of page"))
}

/// The decoded meta page: the root of everything a transaction can see.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    pub txid: u64,
    /// Root page of the tree (always present: an empty tree is an empty leaf).
    pub root_pgid: u64,
    /// First page of the freelist chain, 0 for none (page 0 is a meta page, never a freelist).
    pub freelist_pgid: u64,
    /// Number of pages the file holds for this transaction; every page id is below it.
    pub page_count: u64,
    /// Number of key/value entries in the tree, all buckets together.
    pub entry_count: u64,
}

impl Meta {
    pub fn encode(&self) -> [u8; META_BYTES] {
        let mut out = [0u8; META_BYTES];
        out[0..8].copy_from_slice(&META_MAGIC);
        out[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        out[12..16].copy_from_slice(&(PAGE_BYTES as u32).to_le_bytes());
        out[16..24].copy_from_slice(&self.txid.to_le_bytes());
        out[24..32].copy_from_slice(&self.root_pgid.to_le_bytes());
        out[32..40].copy_from_slice(&self.freelist_pgid.to_le_bytes());
        out[40..48].copy_from_slice(&self.page_count.to_le_bytes());
        out[48..56].copy_from_slice(&self.entry_count.to_le_bytes());
        let crc = crc32fast::hash(&out[0..60]);
        out[60..64].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes and validates a meta slot. A torn or never-written slot fails its checksum.
    pub fn decode(bytes: &[u8]) -> Result<Meta, Error> {
        let bytes = bytes
            .get(0..META_BYTES)
            .ok_or_else(|| corrupted("meta page truncated"))?;
        if bytes[0..8] != META_MAGIC {
            return Err(corrupted("meta: bad magic"));
        }
        let crc = read_u32(bytes, 60)?;
        if crc32fast::hash(&bytes[0..60]) != crc {
            return Err(corrupted("meta: checksum mismatch"));
        }
        let version = read_u32(bytes, 8)?;
        if version != FORMAT_VERSION {
            return Err(corrupted(format!(
                "meta: unsupported format version {version}"
            )));
        }
        let page_bytes = read_u32(bytes, 12)?;
        if page_bytes as usize != PAGE_BYTES {
            return Err(corrupted(format!(
                "meta: page size {page_bytes}, expected {PAGE_BYTES}"
            )));
        }
        let meta = Meta {
            txid: read_u64(bytes, 16)?,
            root_pgid: read_u64(bytes, 24)?,
            freelist_pgid: read_u64(bytes, 32)?,
            page_count: read_u64(bytes, 40)?,
            entry_count: read_u64(bytes, 48)?,
        };
        if meta.page_count < META_SLOTS + 1 || meta.page_count > (1u64 << 48) / PAGE_BYTES as u64 {
            return Err(corrupted("meta: page count out of range"));
        }
        if meta.root_pgid < META_SLOTS || meta.root_pgid >= meta.page_count {
            return Err(corrupted("meta: root page out of range"));
        }
        if meta.freelist_pgid != 0
            && (meta.freelist_pgid < META_SLOTS || meta.freelist_pgid >= meta.page_count)
        {
            return Err(corrupted("meta: freelist page out of range"));
        }
        Ok(meta)
    }
}

/// A leaf value as stored: inline bytes, or the first page and length of an overflow run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueRef<'a> {
    Inline(&'a [u8]),
    Overflow { first_pgid: u64, len: usize },
}

/// Number of pages an overflow run holding `len` value bytes occupies.
pub fn overflow_pages(len: usize) -> u64 {
    (PAGE_HEADER_BYTES + len).div_ceil(PAGE_BYTES) as u64
}

/// A validated view of a branch or leaf page. `parse` checks the header, the slot array and
/// the prefix against the page size once; each cell accessor checks its own cell's bounds.
#[derive(Clone, Copy)]
pub struct NodePage<'a> {
    bytes: &'a [u8; PAGE_BYTES],
    kind: u8,
    count: usize,
    /// Common prefix of every compared key (all keys of a leaf, keys 1.. of a branch).
    prefix: &'a [u8],
    /// Lowest offset a cell may start at: the end of the slot array and the prefix.
    cells_from: usize,
}

/// A `Corrupted` error naming a page. Out of line and cold: decoding errors are rare and
/// must not cost the hot read path the code to format them.
#[cold]
#[inline(never)]
fn corrupted_page(pgid: u64, what: std::fmt::Arguments<'_>) -> Error {
    corrupted(format!("page {pgid}: {what}"))
}

#[cold]
#[inline(never)]
fn corrupted_cell(what: &'static str) -> Error {
    corrupted(what)
}

/// The 4 bytes of `key` after its first `prefix_len`, zero-padded, as a big-endian number.
/// For two keys sharing a `prefix_len`-byte prefix, `head(a) < head(b)` implies `a < b`
/// (padding reads as the lowest byte, and a key that ends there is a prefix of the other);
/// equal heads decide nothing.
#[inline]
pub fn key_head(key: &[u8], prefix_len: usize) -> u32 {
    match key.get(prefix_len..prefix_len + 4) {
        Some(word) => u32::from_be_bytes([word[0], word[1], word[2], word[3]]),
        None => {
            let rest = key.get(prefix_len..).unwrap_or(&[]);
            let mut word = [0u8; 4];
            word[..rest.len()].copy_from_slice(rest);
            u32::from_be_bytes(word)
        }
    }
}

impl<'a> NodePage<'a> {
    /// Validates the header of page `pgid` (which must be a branch or leaf page).
    pub fn parse(bytes: &'a [u8], pgid: u64) -> Result<NodePage<'a>, Error> {
        let Ok(bytes) = <&[u8; PAGE_BYTES]>::try_from(bytes) else {
            return Err(corrupted_page(pgid, format_args!("truncated")));
        };
        let kind = bytes[0];
        if kind != KIND_BRANCH && kind != KIND_LEAF {
            return Err(corrupted_page(
                pgid,
                format_args!("kind {kind} is not a tree node"),
            ));
        }
        let stored_pgid = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
        if stored_pgid != pgid {
            return Err(corrupted_page(
                pgid,
                format_args!("header names page {stored_pgid}"),
            ));
        }
        let count = u16::from_le_bytes([bytes[2], bytes[3]]) as usize;
        let prefix_len = u16::from_le_bytes([bytes[4], bytes[5]]) as usize;
        let slots_end = PAGE_HEADER_BYTES + count * SLOT_BYTES;
        let cells_from = slots_end + prefix_len;
        if cells_from > PAGE_BYTES {
            return Err(corrupted_page(
                pgid,
                format_args!("{count} slots and a {prefix_len}-byte prefix overflow the page"),
            ));
        }
        if kind == KIND_BRANCH && count == 0 {
            return Err(corrupted_page(
                pgid,
                format_args!("branch without children"),
            ));
        }
        Ok(NodePage {
            bytes,
            kind,
            count,
            prefix: &bytes[slots_end..cells_from],
            cells_from,
        })
    }

    pub fn is_leaf(&self) -> bool {
        self.kind == KIND_LEAF
    }

    pub fn count(&self) -> usize {
        self.count
    }

    /// The whole page.
    pub fn bytes(&self) -> &'a [u8; PAGE_BYTES] {
        self.bytes
    }

    /// The page's common key prefix (see `docs/btree.md`, "Leaf page").
    pub fn prefix(&self) -> &'a [u8] {
        self.prefix
    }

    /// (cell offset, key head) of slot `cell_index`; `cell_index < count` (checked by
    /// every caller against `count`, which `parse` bounded by the page size).
    #[inline]
    fn slot(&self, cell_index: usize) -> (usize, u32) {
        assert!(cell_index < self.count, "slot index beyond the cell count");
        let at = PAGE_HEADER_BYTES + cell_index * SLOT_BYTES;
        let slot = &self.bytes[at..at + SLOT_BYTES];
        (
            u16::from_le_bytes([slot[0], slot[1]]) as usize,
            u32::from_be_bytes([slot[2], slot[3], slot[4], slot[5]]),
        )
    }

    /// The key head stored in slot `cell_index`.
    pub fn head(&self, cell_index: usize) -> u32 {
        self.slot(cell_index).1
    }

    #[inline]
    fn cell_offset(&self, cell_index: usize) -> Result<usize, Error> {
        let offset = self.slot(cell_index).0;
        if offset < self.cells_from {
            return Err(corrupted_cell("cell offset points into the slot array"));
        }
        Ok(offset)
    }

    #[inline]
    fn field<const N: usize>(&self, at: usize) -> Result<[u8; N], Error> {
        match self.bytes.get(at..at + N) {
            Some(field) => Ok(field.try_into().expect("N bytes")),
            None => Err(corrupted_cell("cell field out of page")),
        }
    }

    /// Key of cell `cell_index` (leaf or branch).
    #[inline]
    pub fn key(&self, cell_index: usize) -> Result<&'a [u8], Error> {
        let offset = self.cell_offset(cell_index)?;
        let key_len = u16::from_le_bytes(self.field::<2>(offset)?) as usize;
        let header = if self.is_leaf() {
            LEAF_CELL_HEADER_BYTES
        } else {
            BRANCH_CELL_HEADER_BYTES
        };
        let bytes: &'a [u8; PAGE_BYTES] = self.bytes;
        bytes
            .get(offset + header..offset + header + key_len)
            .ok_or_else(|| corrupted_cell("key out of page"))
    }

    /// Child page id of branch cell `cell_index`.
    #[inline]
    pub fn child(&self, cell_index: usize) -> Result<u64, Error> {
        debug_assert!(!self.is_leaf());
        let offset = self.cell_offset(cell_index)?;
        Ok(u64::from_le_bytes(self.field::<8>(offset + 2)?))
    }

    /// The whole encoded leaf cell `cell_index` (header, key, value or overflow reference),
    /// validated as `leaf_entry` does.
    pub fn leaf_cell(&self, cell_index: usize) -> Result<&'a [u8], Error> {
        let offset = self.cell_offset(cell_index)?;
        let (key, value) = self.leaf_entry(cell_index)?;
        let body = match value {
            ValueRef::Inline(bytes) => bytes.len(),
            ValueRef::Overflow { .. } => 8,
        };
        let bytes: &'a [u8; PAGE_BYTES] = self.bytes;
        Ok(&bytes[offset..offset + LEAF_CELL_HEADER_BYTES + key.len() + body])
    }

    /// Key and value of leaf cell `cell_index`. Always inlined: returned through memory, the
    /// result costs a store-forwarding stall per scanned entry.
    #[inline(always)]
    pub fn leaf_entry(&self, cell_index: usize) -> Result<(&'a [u8], ValueRef<'a>), Error> {
        debug_assert!(self.is_leaf());
        let offset = self.cell_offset(cell_index)?;
        let header = self.field::<LEAF_CELL_HEADER_BYTES>(offset)?;
        let key_len = u16::from_le_bytes([header[0], header[1]]) as usize;
        let value_len = u32::from_le_bytes([header[2], header[3], header[4], header[5]]) as usize;
        let flags = header[6];
        let bytes: &'a [u8; PAGE_BYTES] = self.bytes;
        let key_at = offset + LEAF_CELL_HEADER_BYTES;
        let value_at = key_at + key_len;
        let Some(key) = bytes.get(key_at..value_at) else {
            return Err(corrupted_cell("key out of page"));
        };
        let value = match flags {
            VALUE_INLINE => match bytes.get(value_at..value_at + value_len) {
                Some(value) => ValueRef::Inline(value),
                None => return Err(corrupted_cell("value out of page")),
            },
            VALUE_OVERFLOW => {
                if value_len > MAX_VALUE_BYTES {
                    return Err(corrupted_cell("overflow value length out of range"));
                }
                ValueRef::Overflow {
                    first_pgid: u64::from_le_bytes(self.field::<8>(value_at)?),
                    len: value_len,
                }
            }
            _ => return Err(corrupted_cell("leaf cell flags out of range")),
        };
        Ok((key, value))
    }

    /// Index of the first cell whose key is >= `key` (`strict`: > `key`), in 0..=count.
    ///
    /// The search runs on the slot array: first the page prefix settles keys outside it,
    /// then the 4-byte heads order the cells, and only a probe whose head equals the key's
    /// reads the cell itself. So a lookup touches the slot array and about one cell instead
    /// of one cache line per probe. A branch's key 0 is never compared (it routes everything
    /// below key 1), so a branch searches cells 1.. and a key below them all gives 1.
    #[inline]
    pub fn search(&self, key: &[u8], strict: bool) -> Result<usize, Error> {
        let first = usize::from(!self.is_leaf()).min(self.count);
        let prefix_len = self.prefix.len();
        if prefix_len > 0 {
            let shared = prefix_len.min(key.len());
            match compare_keys(&key[..shared], &self.prefix[..shared]) {
                std::cmp::Ordering::Less => return Ok(first),
                std::cmp::Ordering::Greater => return Ok(self.count),
                // A key that is a proper prefix of the page prefix sorts before every key.
                std::cmp::Ordering::Equal if key.len() < prefix_len => return Ok(first),
                std::cmp::Ordering::Equal => {}
            }
        }
        let key_head = key_head(key, prefix_len);
        let (mut low, mut high) = (first, self.count);
        while low < high {
            let mid = low + (high - low) / 2;
            let cell_head = self.slot(mid).1;
            let go_right = if cell_head != key_head {
                cell_head < key_head
            } else {
                match compare_keys(self.key(mid)?, key) {
                    std::cmp::Ordering::Less => true,
                    std::cmp::Ordering::Equal => strict,
                    std::cmp::Ordering::Greater => false,
                }
            };
            if go_right {
                low = mid + 1;
            } else {
                high = mid;
            }
        }
        Ok(low)
    }

    /// Branch: index of the child whose range holds `key`. Child i covers
    /// `[key(i), key(i+1))`; child 0 also covers everything below key(1).
    #[inline]
    pub fn child_for(&self, key: &[u8]) -> Result<usize, Error> {
        Ok(self.search(key, true)?.saturating_sub(1))
    }

    /// Branch: index of the child holding the last key strictly below `key`.
    pub fn child_before(&self, key: &[u8]) -> Result<usize, Error> {
        Ok(self.search(key, false)?.saturating_sub(1))
    }
}

/// Length of the longest common prefix of two keys.
pub fn common_prefix_len(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Bytewise order of two keys, as `<[u8]>::cmp`, but inline and eight bytes at a time:
/// tree keys are short (etcd revision keys are 17 or 18 bytes plus the bucket prefix), and
/// a call into libc `memcmp` per binary-search probe cost more than the comparison itself.
#[inline]
pub fn compare_keys(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    let common = a.len().min(b.len());
    let (mut a_rest, mut b_rest) = (&a[..common], &b[..common]);
    while a_rest.len() >= 8 {
        let (a_word, a_tail) = a_rest.split_at(8);
        let (b_word, b_tail) = b_rest.split_at(8);
        let x = u64::from_be_bytes(a_word.try_into().expect("8 bytes"));
        let y = u64::from_be_bytes(b_word.try_into().expect("8 bytes"));
        if x != y {
            return x.cmp(&y);
        }
        (a_rest, b_rest) = (a_tail, b_tail);
    }
    for (x, y) in a_rest.iter().zip(b_rest) {
        if x != y {
            return x.cmp(y);
        }
    }
    a.len().cmp(&b.len())
}

/// Validates the first page of an overflow run and returns the value bytes, which follow the
/// 16-byte header contiguously. `run` is the whole run as read from the file.
pub fn overflow_value(run: &[u8], first_pgid: u64, len: usize) -> Result<&[u8], Error> {
    if run.len() < PAGE_HEADER_BYTES || run[0] != KIND_OVERFLOW || read_u64(run, 8)? != first_pgid {
        return Err(corrupted(format!(
            "page {first_pgid}: not an overflow page"
        )));
    }
    run.get(PAGE_HEADER_BYTES..PAGE_HEADER_BYTES + len)
        .ok_or_else(|| corrupted("overflow value beyond its run"))
}

fn write_header(page: &mut [u8], kind: u8, count: usize, pgid: u64) {
    assert!(count <= u16::MAX as usize);
    page[0] = kind;
    page[1] = 0;
    page[2..4].copy_from_slice(&(count as u16).to_le_bytes());
    page[4..8].fill(0);
    page[8..16].copy_from_slice(&pgid.to_le_bytes());
}

/// An encoded leaf cell value: what `encode_leaf` writes after the key.
pub enum CellValue<'a> {
    Inline(&'a [u8]),
    Overflow { first_pgid: u64, len: usize },
}

pub fn leaf_cell_bytes(key_len: usize, value: &CellValue<'_>) -> usize {
    SLOT_BYTES
        + LEAF_CELL_HEADER_BYTES
        + key_len
        + match value {
            CellValue::Inline(v) => v.len(),
            CellValue::Overflow { .. } => 8,
        }
}

pub fn branch_cell_bytes(key_len: usize) -> usize {
    SLOT_BYTES + BRANCH_CELL_HEADER_BYTES + key_len
}

/// Writes one leaf cell (header, key, value or overflow reference) into `out`, which is
/// exactly `leaf_cell_bytes(key.len(), &value) - SLOT_BYTES` long.
pub fn write_leaf_cell(out: &mut [u8], key: &[u8], value: &CellValue<'_>) {
    let (flags, value_len) = match value {
        CellValue::Inline(v) => (VALUE_INLINE, v.len()),
        CellValue::Overflow { len, .. } => (VALUE_OVERFLOW, *len),
    };
    out[0..2].copy_from_slice(&(key.len() as u16).to_le_bytes());
    out[2..6].copy_from_slice(&(value_len as u32).to_le_bytes());
    out[6] = flags;
    let key_end = LEAF_CELL_HEADER_BYTES + key.len();
    out[LEAF_CELL_HEADER_BYTES..key_end].copy_from_slice(key);
    match value {
        CellValue::Inline(v) => out[key_end..].copy_from_slice(v),
        CellValue::Overflow { first_pgid, .. } => {
            out[key_end..].copy_from_slice(&first_pgid.to_le_bytes())
        }
    }
}

/// Builds one branch or leaf page: cells are pushed in key order and packed from the end of
/// the page backwards, slots grow from the front; `finish` chooses the prefix, fills in the
/// key heads and the header. The caller has checked (with `leaf_cell_bytes` /
/// `branch_cell_bytes`) that the cells fit; the prefix takes only room left over.
pub struct NodeBuilder<'p> {
    page: &'p mut [u8],
    kind: u8,
    pgid: u64,
    count: usize,
    cells_start: usize,
}

impl<'p> NodeBuilder<'p> {
    pub fn leaf(page: &'p mut [u8], pgid: u64) -> NodeBuilder<'p> {
        NodeBuilder::new(page, KIND_LEAF, pgid)
    }

    pub fn branch(page: &'p mut [u8], pgid: u64) -> NodeBuilder<'p> {
        NodeBuilder::new(page, KIND_BRANCH, pgid)
    }

    fn new(page: &'p mut [u8], kind: u8, pgid: u64) -> NodeBuilder<'p> {
        assert_eq!(page.len(), PAGE_BYTES);
        NodeBuilder {
            page,
            kind,
            pgid,
            count: 0,
            cells_start: PAGE_BYTES,
        }
    }

    /// Room for one more cell of `cell_len` bytes and its slot; returns the cell's offset.
    fn reserve(&mut self, cell_len: usize) -> usize {
        let start = self.cells_start - cell_len;
        assert!(
            start >= PAGE_HEADER_BYTES + (self.count + 1) * SLOT_BYTES,
            "cells overflow the page"
        );
        let slot_at = PAGE_HEADER_BYTES + self.count * SLOT_BYTES;
        self.page[slot_at..slot_at + 2].copy_from_slice(&(start as u16).to_le_bytes());
        self.count += 1;
        self.cells_start = start;
        start
    }

    /// Appends an already encoded leaf cell (the format of `write_leaf_cell`).
    pub fn push_leaf_cell(&mut self, cell: &[u8]) {
        debug_assert_eq!(self.kind, KIND_LEAF);
        debug_assert!(cell[6] == VALUE_INLINE || cell[6] == VALUE_OVERFLOW);
        let start = self.reserve(cell.len());
        self.page[start..start + cell.len()].copy_from_slice(cell);
    }

    pub fn push_leaf(&mut self, key: &[u8], value: CellValue<'_>) {
        debug_assert_eq!(self.kind, KIND_LEAF);
        let cell_len = leaf_cell_bytes(key.len(), &value) - SLOT_BYTES;
        let start = self.reserve(cell_len);
        write_leaf_cell(&mut self.page[start..start + cell_len], key, &value);
    }

    pub fn push_branch(&mut self, key: &[u8], child_pgid: u64) {
        debug_assert_eq!(self.kind, KIND_BRANCH);
        let start = self.reserve(BRANCH_CELL_HEADER_BYTES + key.len());
        self.page[start..start + 2].copy_from_slice(&(key.len() as u16).to_le_bytes());
        self.page[start + 2..start + 10].copy_from_slice(&child_pgid.to_le_bytes());
        self.page[start + 10..start + 10 + key.len()].copy_from_slice(key);
    }

    /// (start, end) of the key of cell `cell_index`, written by this builder.
    fn key_range(&self, cell_index: usize) -> (usize, usize) {
        let slot_at = PAGE_HEADER_BYTES + cell_index * SLOT_BYTES;
        let offset = u16::from_le_bytes([self.page[slot_at], self.page[slot_at + 1]]) as usize;
        let key_len = u16::from_le_bytes([self.page[offset], self.page[offset + 1]]) as usize;
        let key_at = offset
            + if self.kind == KIND_LEAF {
                LEAF_CELL_HEADER_BYTES
            } else {
                BRANCH_CELL_HEADER_BYTES
            };
        (key_at, key_at + key_len)
    }

    /// Writes the prefix, the heads and the header.
    pub fn finish(self) {
        let count = self.count;
        assert!(
            self.kind == KIND_LEAF || count > 0,
            "a branch has at least one child"
        );
        // Compared keys: all of a leaf's, a branch's from 1 on (key 0 is never compared).
        let first = usize::from(self.kind == KIND_BRANCH);
        let slots_end = PAGE_HEADER_BYTES + count * SLOT_BYTES;
        let mut prefix_len = 0;
        if count > first {
            let (first_at, first_end) = self.key_range(first);
            let (last_at, last_end) = self.key_range(count - 1);
            // Keys are sorted, so what the first and last share, all share.
            prefix_len = common_prefix_len(
                &self.page[first_at..first_end],
                &self.page[last_at..last_end],
            )
            .min(self.cells_start - slots_end);
            self.page
                .copy_within(first_at..first_at + prefix_len, slots_end);
        }
        for cell_index in 0..count {
            let head = if cell_index < first {
                0
            } else {
                let (key_at, key_end) = self.key_range(cell_index);
                key_head(&self.page[key_at..key_end], prefix_len)
            };
            let slot_at = PAGE_HEADER_BYTES + cell_index * SLOT_BYTES;
            self.page[slot_at + 2..slot_at + 6].copy_from_slice(&head.to_be_bytes());
        }
        write_header(self.page, self.kind, count, self.pgid);
        self.page[4..6].copy_from_slice(&(prefix_len as u16).to_le_bytes());
        self.page[slots_end + prefix_len..self.cells_start].fill(0);
    }
}

/// Encodes a leaf page from (key, value) cells in key order.
pub fn encode_leaf<'a>(
    page: &mut [u8],
    pgid: u64,
    cells: impl Iterator<Item = (&'a [u8], CellValue<'a>)>,
) {
    let mut builder = NodeBuilder::leaf(page, pgid);
    for (key, value) in cells {
        builder.push_leaf(key, value);
    }
    builder.finish();
}

/// Encodes a branch page from (separator key, child page id) cells in key order.
pub fn encode_branch<'a>(page: &mut [u8], pgid: u64, cells: impl Iterator<Item = (&'a [u8], u64)>) {
    let mut builder = NodeBuilder::branch(page, pgid);
    for (key, child_pgid) in cells {
        builder.push_branch(key, child_pgid);
    }
    builder.finish();
}

/// Encodes an overflow run holding `value` into `run` (all its pages, zeroed).
pub fn encode_overflow(run: &mut [u8], first_pgid: u64, value: &[u8]) {
    assert_eq!(run.len(), overflow_pages(value.len()) as usize * PAGE_BYTES);
    write_header(&mut run[..PAGE_BYTES], KIND_OVERFLOW, 0, first_pgid);
    run[PAGE_HEADER_BYTES..PAGE_HEADER_BYTES + value.len()].copy_from_slice(value);
}

/// Encodes one freelist page: `runs` of free pages as (first page, page count), and the
/// next page of the chain (0 for the last).
pub fn encode_freelist(page: &mut [u8], pgid: u64, next_pgid: u64, runs: &[(u64, u64)]) {
    assert!(runs.len() <= FREELIST_RUNS_PER_PAGE);
    page.fill(0);
    write_header(page, KIND_FREELIST, runs.len(), pgid);
    page[16..24].copy_from_slice(&next_pgid.to_le_bytes());
    for (i, (start, len)) in runs.iter().enumerate() {
        let at = FREELIST_HEADER_BYTES + i * FREELIST_RUN_BYTES;
        page[at..at + 8].copy_from_slice(&start.to_le_bytes());
        page[at + 8..at + 16].copy_from_slice(&len.to_le_bytes());
    }
}

/// Decodes one freelist page: (next page, runs). Runs are checked against `page_count`.
pub fn decode_freelist(
    page: &[u8],
    pgid: u64,
    page_count: u64,
) -> Result<(u64, Vec<(u64, u64)>), Error> {
    if page.len() != PAGE_BYTES || page[0] != KIND_FREELIST || read_u64(page, 8)? != pgid {
        return Err(corrupted(format!("page {pgid}: not a freelist page")));
    }
    let count = read_u16(page, 2)? as usize;
    if count > FREELIST_RUNS_PER_PAGE {
        return Err(corrupted(format!(
            "page {pgid}: freelist run count {count}"
        )));
    }
    let next_pgid = read_u64(page, 16)?;
    if next_pgid != 0 && (next_pgid < META_SLOTS || next_pgid >= page_count) {
        return Err(corrupted(format!(
            "page {pgid}: freelist next page out of range"
        )));
    }
    let mut runs = Vec::with_capacity(count);
    for i in 0..count {
        let at = FREELIST_HEADER_BYTES + i * FREELIST_RUN_BYTES;
        let (start, len) = (read_u64(page, at)?, read_u64(page, at + 8)?);
        if start < META_SLOTS
            || len == 0
            || start.checked_add(len).is_none_or(|end| end > page_count)
        {
            return Err(corrupted(format!(
                "page {pgid}: free run {start}+{len} out of range"
            )));
        }
        runs.push((start, len));
    }
    Ok((next_pgid, runs))
}

/// Collapses a sorted, duplicate-free list of page ids into (first, count) runs.
pub fn to_runs(sorted_pgids: impl IntoIterator<Item = u64>) -> Vec<(u64, u64)> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for pgid in sorted_pgids {
        match runs.last_mut() {
            Some((start, len)) if *start + *len == pgid => *len += 1,
            _ => runs.push((pgid, 1)),
        }
    }
    runs
}

#[cfg(test)]
mod compare_tests {
    //! `compare_keys` must order exactly as `<[u8]>::cmp`: checked exhaustively over short
    //! keys of a small alphabet (prefixes, equal words, the 8-byte boundary) and randomly.
    use super::compare_keys;

    #[test]
    fn compare_keys_matches_slice_order() {
        let alphabet = [0u8, 1, 0x7f, 0x80, 0xff];
        let mut keys: Vec<Vec<u8>> = vec![Vec::new()];
        for len in 1..=3 {
            let mut next = Vec::new();
            for key in keys.iter().filter(|k| k.len() == len - 1) {
                for b in alphabet {
                    let mut k = key.clone();
                    k.push(b);
                    next.push(k);
                }
            }
            keys.extend(next);
        }
        // The same short suffixes behind an 8- and a 9-byte shared prefix cross the word loop.
        let long: Vec<Vec<u8>> = keys
            .iter()
            .flat_map(|k| {
                [
                    [vec![7u8; 8], k.clone()].concat(),
                    [vec![7u8; 9], k.clone()].concat(),
                ]
            })
            .collect();
        keys.extend(long);
        for a in &keys {
            for b in &keys {
                assert_eq!(
                    compare_keys(a, b),
                    a.as_slice().cmp(b.as_slice()),
                    "{a:?} {b:?}"
                );
            }
        }
        let mut rng = fastrand::Rng::with_seed(5);
        for _ in 0..20_000 {
            let a: Vec<u8> = (0..rng.usize(0..40)).map(|_| rng.u8(0..3)).collect();
            let b: Vec<u8> = (0..rng.usize(0..40)).map(|_| rng.u8(0..3)).collect();
            assert_eq!(compare_keys(&a, &b), a.cmp(&b), "{a:?} {b:?}");
        }
    }
}

#[cfg(test)]
mod search_tests {
    //! `NodePage::search` (prefix, then heads, then whole keys) must find the same position as
    //! a plain binary search over the keys, for leaves and branches built by `NodeBuilder`:
    //! checked over random sorted keys sharing prefixes, keys that are prefixes of others,
    //! keys ending in zero bytes, and random probes.
    use super::{compare_keys, CellValue, NodeBuilder, NodePage, PAGE_BYTES};

    fn plain_search(keys: &[Vec<u8>], first: usize, key: &[u8], strict: bool) -> usize {
        first
            + keys[first..]
                .iter()
                .take_while(|k| match compare_keys(k, key) {
                    std::cmp::Ordering::Less => true,
                    std::cmp::Ordering::Equal => strict,
                    std::cmp::Ordering::Greater => false,
                })
                .count()
    }

    #[test]
    fn head_search_matches_plain_search() {
        let mut rng = fastrand::Rng::with_seed(11);
        let random_key = |rng: &mut fastrand::Rng| -> Vec<u8> {
            let mut key = b"\x03key".to_vec();
            key.extend((0..rng.usize(0..12)).map(|_| rng.u8(0..3)));
            key
        };
        for round in 0..400 {
            let leaf = round % 2 == 0;
            let mut keys: Vec<Vec<u8>> = (0..rng.usize(1..60))
                .map(|_| random_key(&mut rng))
                .collect();
            keys.sort();
            keys.dedup();
            if !leaf {
                keys[0].clear(); // A branch's key 0 is stored empty.
            }
            let mut bytes = vec![0u8; PAGE_BYTES];
            if leaf {
                let mut builder = NodeBuilder::leaf(&mut bytes, 9);
                for key in &keys {
                    builder.push_leaf(key, CellValue::Inline(b"v"));
                }
                builder.finish();
            } else {
                let mut builder = NodeBuilder::branch(&mut bytes, 9);
                for (child, key) in keys.iter().enumerate() {
                    builder.push_branch(key, child as u64 + 100);
                }
                builder.finish();
            }
            let node = NodePage::parse(&bytes, 9).unwrap();
            let first = usize::from(!leaf);
            for _ in 0..200 {
                let probe = if rng.bool() {
                    random_key(&mut rng)
                } else {
                    (0..rng.usize(0..6)).map(|_| rng.u8(..)).collect()
                };
                for strict in [false, true] {
                    assert_eq!(
                        node.search(&probe, strict).unwrap(),
                        plain_search(&keys, first.min(keys.len()), &probe, strict),
                        "{keys:?} {probe:?} strict {strict}"
                    );
                }
            }
        }
    }
}
