//! Writing a bbolt database from sorted streams, front to back, in bounded memory.
//!
//! The caller hands over top-level buckets in ascending name order and each bucket's keys
//! in ascending order. Pages go to the sink strictly in page order: the two meta pages, an
//! empty freelist page, then each leaf as soon as it is full and each branch as soon as its
//! children are written (children always precede their parent), the top-level bucket tree,
//! and nothing else: the file has no free pages. Memory is one page per tree level.
//!
//! The meta pages come first in the file but name the root page and the page count, which
//! are known only at the end. [`write`] therefore runs the caller's producer twice: once
//! into a sink that counts pages, to learn the layout, and once for real with that layout
//! in the meta pages. The producer must yield the same stream both times (a pinned read
//! snapshot does); if the two passes disagree, [`write`] fails instead of writing a
//! wrong meta.
//!
//! Invariants: keys strictly ascend within a bucket and bucket names across the file
//! (`Error::Unsorted` otherwise); element counts fit the u16 page header; every page is a
//! whole number of pages long. The format is `storage/docs/bbolt.md`.

use std::io::Write;

use super::page::{
    inline_bucket_bytes_max, Meta, PageHeader, BRANCH_ELEMENT_BYTES, BUCKET_HEADER_BYTES,
    ELEMENT_BUCKET, FLAG_BRANCH, FLAG_FREELIST, FLAG_LEAF, KEY_BYTES_MAX, LEAF_ELEMENT_BYTES,
    PAGE_BYTES, PAGE_HEADER_BYTES, VALUE_BYTES_MAX,
};
use super::Error;

/// The first page after the meta pages and the freelist.
const FIRST_DATA_PGID: u64 = 3;
const FREELIST_PGID: u64 = 2;

/// Where the root page is and how many pages the file has: what the meta pages record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub root_pgid: u64,
    pub page_count: u64,
}

impl Layout {
    /// Bytes of the database file.
    pub fn file_bytes(&self) -> u64 {
        self.page_count * PAGE_BYTES as u64
    }

    fn meta(&self, txid: u64) -> Meta {
        Meta {
            page_bytes: PAGE_BYTES as u32,
            flags: 0,
            root_pgid: self.root_pgid,
            root_sequence: 0,
            freelist_pgid: FREELIST_PGID,
            page_count: self.page_count,
            txid,
        }
    }
}

/// What a finished file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Summary {
    pub layout: Layout,
    pub buckets: u64,
    pub entries: u64,
}

/// Writes the database that `produce` describes, running `produce` twice (see the module
/// doc): the second time into the sink that `make_sink` returns once the layout (and so
/// the file's size) is known. `produce` calls [`Writer::bucket`] and [`Writer::put`].
pub fn write<W, E>(
    make_sink: impl FnOnce(&Layout) -> Result<W, E>,
    mut produce: impl FnMut(&mut Writer<'_>) -> Result<(), E>,
) -> Result<Summary, E>
where
    W: Write,
    E: From<Error>,
{
    let mut counter = std::io::sink();
    let mut planning = Writer::new(
        &mut counter,
        Layout {
            root_pgid: FIRST_DATA_PGID,
            page_count: FIRST_DATA_PGID + 1,
        },
    )?;
    produce(&mut planning)?;
    let planned = planning.finish()?;
    let mut sink = make_sink(&planned.layout)?;
    let mut writer = Writer::new(&mut sink, planned.layout)?;
    produce(&mut writer)?;
    let written = writer.finish()?;
    if written != planned {
        return Err(Error::Changed(format!("planned {planned:?}, wrote {written:?}")).into());
    }
    sink.flush().map_err(Error::Io)?;
    Ok(written)
}

/// One page being filled: its element headers and its key/value bytes.
#[derive(Default)]
struct PageBuilder {
    /// Element headers with `pos` relative to the start of `data` (fixed up on emit).
    elements: Vec<u8>,
    data: Vec<u8>,
    count: usize,
    first_key: Vec<u8>,
}

impl PageBuilder {
    fn bytes(&self) -> usize {
        PAGE_HEADER_BYTES + self.elements.len() + self.data.len()
    }

    fn push_leaf(&mut self, flags: u32, key: &[u8], value: &[u8]) {
        self.push_start(key);
        self.elements.extend_from_slice(&flags.to_le_bytes());
        self.elements
            .extend_from_slice(&(self.data.len() as u32).to_le_bytes());
        self.elements
            .extend_from_slice(&(key.len() as u32).to_le_bytes());
        self.elements
            .extend_from_slice(&(value.len() as u32).to_le_bytes());
        self.data.extend_from_slice(key);
        self.data.extend_from_slice(value);
    }

    fn push_branch(&mut self, key: &[u8], child_pgid: u64) {
        self.push_start(key);
        self.elements
            .extend_from_slice(&(self.data.len() as u32).to_le_bytes());
        self.elements
            .extend_from_slice(&(key.len() as u32).to_le_bytes());
        self.elements.extend_from_slice(&child_pgid.to_le_bytes());
        self.data.extend_from_slice(key);
    }

    fn push_start(&mut self, key: &[u8]) {
        if self.count == 0 {
            self.first_key.clear();
            self.first_key.extend_from_slice(key);
        }
        self.count += 1;
    }

    /// The page's bytes with header `pgid`/`flags`: elements with their `pos` made relative
    /// to each element (bbolt's rule), then the data. Not padded.
    fn encode(&self, pgid: u64, flags: u16, overflow: u32) -> Vec<u8> {
        debug_assert!(self.count < usize::from(u16::MAX));
        let mut out = Vec::with_capacity(self.bytes());
        out.extend_from_slice(
            &PageHeader {
                pgid,
                flags,
                count: self.count as u16,
                overflow,
            }
            .encode(),
        );
        let element_bytes = if flags == FLAG_BRANCH {
            BRANCH_ELEMENT_BYTES
        } else {
            LEAF_ELEMENT_BYTES
        };
        let pos_at = if flags == FLAG_BRANCH { 0 } else { 4 };
        for (i, element) in self.elements.chunks_exact(element_bytes).enumerate() {
            let mut element = element.to_vec();
            let data_offset =
                u32::from_le_bytes(element[pos_at..pos_at + 4].try_into().expect("4 bytes"));
            // From this element's start to the page's data, then into it.
            let pos = ((self.count - i) * element_bytes) as u32 + data_offset;
            element[pos_at..pos_at + 4].copy_from_slice(&pos.to_le_bytes());
            out.extend_from_slice(&element);
        }
        out.extend_from_slice(&self.data);
        out
    }

    fn clear(&mut self) {
        self.elements.clear();
        self.data.clear();
        self.count = 0;
    }
}

/// One B+tree being written bottom-up: a leaf in progress and one branch per level above.
#[derive(Default)]
struct TreeBuilder {
    leaf: PageBuilder,
    /// `branches[0]` points at leaves, `branches[1]` at `branches[0]`'s pages, ...
    branches: Vec<PageBuilder>,
    /// Whether any page of this tree has been written.
    spilled: bool,
}

/// Pages sent to the sink so far.
struct PageSink<'w> {
    sink: &'w mut dyn Write,
    next_pgid: u64,
}

impl PageSink<'_> {
    /// Writes `page` (header included) padded to whole pages; returns its first pgid.
    fn emit(&mut self, page: &PageBuilder, flags: u16) -> Result<u64, Error> {
        let pgid = self.next_pgid;
        let pages = page.bytes().div_ceil(PAGE_BYTES).max(1);
        let overflow = u32::try_from(pages - 1)
            .map_err(|_| Error::TooLarge("page spans more than 2^32 pages".into()))?;
        let mut bytes = page.encode(pgid, flags, overflow);
        bytes.resize(pages * PAGE_BYTES, 0);
        self.sink.write_all(&bytes).map_err(Error::Io)?;
        self.next_pgid += pages as u64;
        Ok(pgid)
    }
}

impl TreeBuilder {
    fn add(
        &mut self,
        out: &mut PageSink<'_>,
        flags: u32,
        key: &[u8],
        value: &[u8],
    ) -> Result<(), Error> {
        let element = LEAF_ELEMENT_BYTES + key.len() + value.len();
        if self.leaf.count > 0 && self.leaf.bytes() + element > PAGE_BYTES {
            self.flush_leaf(out)?;
        }
        self.leaf.push_leaf(flags, key, value);
        Ok(())
    }

    fn flush_leaf(&mut self, out: &mut PageSink<'_>) -> Result<(), Error> {
        let pgid = out.emit(&self.leaf, FLAG_LEAF)?;
        self.spilled = true;
        let key = std::mem::take(&mut self.leaf.first_key);
        self.leaf.clear();
        self.add_branch(out, 0, &key, pgid)?;
        self.leaf.first_key = key;
        Ok(())
    }

    fn add_branch(
        &mut self,
        out: &mut PageSink<'_>,
        level: usize,
        key: &[u8],
        pgid: u64,
    ) -> Result<(), Error> {
        if self.branches.len() == level {
            self.branches.push(PageBuilder::default());
        }
        let element = BRANCH_ELEMENT_BYTES + key.len();
        if self.branches[level].count > 0 && self.branches[level].bytes() + element > PAGE_BYTES {
            self.flush_branch(out, level)?;
        }
        self.branches[level].push_branch(key, pgid);
        Ok(())
    }

    fn flush_branch(&mut self, out: &mut PageSink<'_>, level: usize) -> Result<(), Error> {
        let pgid = out.emit(&self.branches[level], FLAG_BRANCH)?;
        let key = std::mem::take(&mut self.branches[level].first_key);
        self.branches[level].clear();
        self.add_branch(out, level + 1, &key, pgid)?;
        self.branches[level].first_key = key;
        Ok(())
    }

    /// Ends the tree. Returns the bucket value: a header with the root page, or with root
    /// 0 and the leaf inline when it is small enough and nothing was written yet
    /// (`inline == true`, for buckets; the top-level tree always gets a page).
    fn finish(mut self, out: &mut PageSink<'_>, inline: bool) -> Result<Vec<u8>, Error> {
        let mut value = vec![0u8; BUCKET_HEADER_BYTES];
        if inline && !self.spilled && self.leaf.bytes() <= inline_bucket_bytes_max(PAGE_BYTES) {
            value.extend_from_slice(&self.leaf.encode(0, FLAG_LEAF, 0));
            return Ok(value);
        }
        if self.leaf.count > 0 || !self.spilled {
            self.flush_leaf(out)?;
        }
        // Close each level upwards; the first level left with a single child and nothing
        // above it names the root.
        let mut level = 0;
        let root = loop {
            let top = level + 1 == self.branches.len();
            if top && self.branches[level].count == 1 {
                break u64_from_branch(&self.branches[level]);
            }
            self.flush_branch(out, level)?;
            level += 1;
        };
        value[..8].copy_from_slice(&root.to_le_bytes());
        Ok(value)
    }
}

/// The child pgid of a branch builder's only element.
fn u64_from_branch(page: &PageBuilder) -> u64 {
    u64::from_le_bytes(page.elements[8..16].try_into().expect("one branch element"))
}

/// A database being written; see [`write`].
pub struct Writer<'w> {
    out: PageSink<'w>,
    root: TreeBuilder,
    bucket: Option<(Vec<u8>, TreeBuilder)>,
    last_bucket: Option<Vec<u8>>,
    last_key: Option<Vec<u8>>,
    buckets: u64,
    entries: u64,
}

impl<'w> Writer<'w> {
    /// Starts a file whose meta pages record `layout`.
    fn new(sink: &'w mut dyn Write, layout: Layout) -> Result<Writer<'w>, Error> {
        let mut head = layout.meta(0).page(0);
        head.extend_from_slice(&layout.meta(1).page(1));
        let mut freelist = vec![0u8; PAGE_BYTES];
        freelist[..PAGE_HEADER_BYTES].copy_from_slice(
            &PageHeader {
                pgid: FREELIST_PGID,
                flags: FLAG_FREELIST,
                count: 0,
                overflow: 0,
            }
            .encode(),
        );
        head.extend_from_slice(&freelist);
        sink.write_all(&head).map_err(Error::Io)?;
        Ok(Writer {
            out: PageSink {
                sink,
                next_pgid: FIRST_DATA_PGID,
            },
            root: TreeBuilder::default(),
            bucket: None,
            last_bucket: None,
            last_key: None,
            buckets: 0,
            entries: 0,
        })
    }

    /// Ends the current bucket (if any) and starts the top-level bucket `name`.
    pub fn bucket(&mut self, name: &[u8]) -> Result<(), Error> {
        self.end_bucket()?;
        if name.is_empty() || name.len() > KEY_BYTES_MAX {
            return Err(Error::TooLarge(format!(
                "bucket name of {} bytes",
                name.len()
            )));
        }
        if self.last_bucket.as_deref().is_some_and(|last| last >= name) {
            return Err(Error::Unsorted(format!(
                "bucket {:?} after {:?}",
                String::from_utf8_lossy(name),
                String::from_utf8_lossy(self.last_bucket.as_deref().unwrap_or_default())
            )));
        }
        self.last_bucket = Some(name.to_vec());
        self.last_key = None;
        self.bucket = Some((name.to_vec(), TreeBuilder::default()));
        Ok(())
    }

    /// Adds `key` → `value` to the current bucket.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), Error> {
        let Some((_, tree)) = self.bucket.as_mut() else {
            return Err(Error::Unsorted("a key before any bucket".into()));
        };
        if key.is_empty() || key.len() > KEY_BYTES_MAX {
            return Err(Error::TooLarge(format!("key of {} bytes", key.len())));
        }
        if value.len() > VALUE_BYTES_MAX {
            return Err(Error::TooLarge(format!("value of {} bytes", value.len())));
        }
        if self.last_key.as_deref().is_some_and(|last| last >= key) {
            return Err(Error::Unsorted(format!("key {key:02x?} not ascending")));
        }
        match &mut self.last_key {
            Some(last) => {
                last.clear();
                last.extend_from_slice(key);
            }
            None => self.last_key = Some(key.to_vec()),
        }
        tree.add(&mut self.out, 0, key, value)?;
        self.entries += 1;
        Ok(())
    }

    fn end_bucket(&mut self) -> Result<(), Error> {
        if let Some((name, tree)) = self.bucket.take() {
            let value = tree.finish(&mut self.out, true)?;
            self.root
                .add(&mut self.out, ELEMENT_BUCKET, &name, &value)?;
            self.buckets += 1;
        }
        Ok(())
    }

    /// Ends the file: the last bucket, then the top-level tree. The layout it reports must
    /// be the one the meta pages were written with for the file to be valid ([`write`]
    /// checks).
    fn finish(mut self) -> Result<Summary, Error> {
        self.end_bucket()?;
        let root = std::mem::take(&mut self.root);
        let value = root.finish(&mut self.out, false)?;
        let root_pgid = u64::from_le_bytes(value[..8].try_into().expect("bucket header"));
        Ok(Summary {
            layout: Layout {
                root_pgid,
                page_count: self.out.next_pgid,
            },
            buckets: self.buckets,
            entries: self.entries,
        })
    }
}
