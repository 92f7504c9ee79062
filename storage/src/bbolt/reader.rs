//! Reading a bbolt database file: its meta, its top-level buckets and their entries, in
//! key order. For restoring a snapshot and migrating an etcd data dir (`tools/`), and for
//! checking what [`super::writer`] wrote.
//!
//! Invariants: the file is untrusted. Pages are read with `pread` into owned buffers (no
//! mmap, so a file truncated underneath yields an error, not SIGBUS); every offset, length,
//! page id and flag is checked before use and a violation is `Error::Corrupted` naming the
//! page; descent is bounded by [`DEPTH_MAX`], so a cycle of page pointers cannot recurse
//! forever. Memory is one page (with its overflow) per level of the tree being walked.
//! The format is `storage/docs/bbolt.md`.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::page::{
    u32_at, u64_at, Meta, PageHeader, BRANCH_ELEMENT_BYTES, BUCKET_HEADER_BYTES, ELEMENT_BUCKET,
    FLAG_BRANCH, FLAG_FREELIST, FLAG_LEAF, FREELIST_COUNT_OVERFLOW, LEAF_ELEMENT_BYTES,
    NO_FREELIST, PAGE_BYTES_MIN, PAGE_HEADER_BYTES,
};
use super::Error;

/// Deepest tree a reader descends. A bbolt tree of 4 KiB pages holding 2^40 entries is
/// well under 16 levels; deeper means a corrupt file (or a pointer cycle).
pub const DEPTH_MAX: usize = 64;
/// Largest page (with its overflow) a reader buffers: bbolt's largest value, 2 GiB, is out
/// of reach of any etcd file (etcd's request limit is 1.5 MiB by default); 256 MiB bounds a
/// corrupt overflow count's allocation.
pub const PAGE_SPAN_BYTES_MAX: usize = 256 << 20;

/// A caller's visitor of key/value pairs; an error stops the walk.
pub type Visit<'v, E> = dyn FnMut(&[u8], &[u8]) -> Result<(), E> + 'v;

/// Where a bucket's tree lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BucketRoot {
    Page(u64),
    /// The bucket's only leaf, stored in its parent's value.
    Inline(Vec<u8>),
}

/// An open bbolt file.
pub struct Reader {
    file: File,
    file_bytes: u64,
    meta: Meta,
}

impl Reader {
    pub fn open(path: impl AsRef<Path>) -> Result<Reader, Error> {
        let file = File::open(path.as_ref()).map_err(Error::Io)?;
        let file_bytes = file.metadata().map_err(Error::Io)?.len();
        // The page size is in the meta, which is in the first page: read the smallest page
        // bbolt allows, then find meta 1 at the recorded page size.
        let mut first = vec![0u8; PAGE_BYTES_MIN];
        file.read_exact_at(&mut first, 0)
            .map_err(|e| Error::Corrupted(format!("cannot read meta page 0: {e}")))?;
        let meta0 = Meta::decode(&first[PAGE_HEADER_BYTES..]);
        let page_bytes = match &meta0 {
            Ok(meta) => meta.page_bytes as u64,
            // Meta 0 damaged: try meta 1 at the usual page size, as bbolt falls back to
            // the OS page size.
            Err(_) => super::page::PAGE_BYTES as u64,
        };
        let mut second = vec![0u8; PAGE_HEADER_BYTES + super::page::META_BYTES];
        let meta1 = file
            .read_exact_at(&mut second, page_bytes)
            .map_err(|e| Error::Corrupted(format!("cannot read meta page 1: {e}")))
            .and_then(|()| Meta::decode(&second[PAGE_HEADER_BYTES..]));
        // The valid meta with the higher txid is the last commit (bbolt's rule).
        let meta = match (meta0, meta1) {
            (Ok(a), Ok(b)) => {
                if b.txid > a.txid {
                    b
                } else {
                    a
                }
            }
            (Ok(a), Err(_)) => a,
            (Err(_), Ok(b)) => b,
            (Err(e), Err(_)) => return Err(e),
        };
        let needed = meta.page_count.saturating_mul(u64::from(meta.page_bytes));
        if file_bytes < needed {
            return Err(Error::Corrupted(format!(
                "file is {file_bytes} bytes, its meta names {} pages of {} bytes",
                meta.page_count, meta.page_bytes
            )));
        }
        Ok(Reader {
            file,
            file_bytes,
            meta,
        })
    }

    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    /// Bytes of the database proper (bbolt's `Tx.Size`): pages below the high-water mark.
    /// The file may be longer (a snapshot has its SHA-256 appended).
    pub fn db_bytes(&self) -> u64 {
        self.meta.page_count * u64::from(self.meta.page_bytes)
    }

    pub fn file_bytes(&self) -> u64 {
        self.file_bytes
    }

    /// Reads page `pgid` with its overflow pages.
    fn page(&self, pgid: u64) -> Result<Vec<u8>, Error> {
        if pgid < 2 || pgid >= self.meta.page_count {
            return Err(Error::Corrupted(format!(
                "page {pgid} outside 2..{}",
                self.meta.page_count
            )));
        }
        let page_bytes = u64::from(self.meta.page_bytes);
        let mut head = [0u8; PAGE_HEADER_BYTES];
        self.file
            .read_exact_at(&mut head, pgid * page_bytes)
            .map_err(Error::Io)?;
        let header = PageHeader::decode(&head)?;
        if header.pgid != pgid {
            return Err(Error::Corrupted(format!(
                "page {pgid} says it is page {}",
                header.pgid
            )));
        }
        let pages = 1 + u64::from(header.overflow);
        if pgid + pages > self.meta.page_count {
            return Err(Error::Corrupted(format!(
                "page {pgid} overflows past the high-water mark"
            )));
        }
        let span = pages * page_bytes;
        if span > PAGE_SPAN_BYTES_MAX as u64 {
            return Err(Error::Corrupted(format!("page {pgid} spans {span} bytes")));
        }
        let mut page = vec![0u8; span as usize];
        self.file
            .read_exact_at(&mut page, pgid * page_bytes)
            .map_err(Error::Io)?;
        Ok(page)
    }

    /// The pages the freelist lists as free.
    pub fn free_pages(&self) -> Result<Vec<u64>, Error> {
        if self.meta.freelist_pgid == NO_FREELIST {
            return Ok(Vec::new());
        }
        let page = self.page(self.meta.freelist_pgid)?;
        let header = PageHeader::decode(&page)?;
        if header.flags != FLAG_FREELIST {
            return Err(Error::Corrupted(format!(
                "freelist page {} has flags {:#x}",
                header.pgid, header.flags
            )));
        }
        let (count, first) = if header.count == FREELIST_COUNT_OVERFLOW {
            (u64_at(&page, PAGE_HEADER_BYTES)?, PAGE_HEADER_BYTES + 8)
        } else {
            (u64::from(header.count), PAGE_HEADER_BYTES)
        };
        let end = (count as usize)
            .checked_mul(8)
            .and_then(|bytes| bytes.checked_add(first))
            .filter(|&end| end <= page.len())
            .ok_or_else(|| {
                Error::Corrupted(format!("freelist count {count} overflows its page"))
            })?;
        (first..end)
            .step_by(8)
            .map(|at| u64_at(&page, at))
            .collect()
    }

    /// The top-level buckets, by name, ascending.
    pub fn buckets(&self) -> Result<Vec<(Vec<u8>, BucketRoot)>, Error> {
        let mut buckets = Vec::new();
        self.walk(
            &BucketRoot::Page(self.meta.root_pgid),
            true,
            &mut |name, value| {
                buckets.push((name.to_vec(), bucket_root(name, value)?));
                Ok(())
            },
        )?;
        Ok(buckets)
    }

    /// Calls `visit(key, value)` for every entry of the bucket at `root`, ascending. A
    /// nested bucket is an error: etcd's files have none.
    pub fn for_each<E: From<Error>>(
        &self,
        root: &BucketRoot,
        visit: &mut Visit<'_, E>,
    ) -> Result<(), E> {
        self.walk(root, false, visit)
    }

    fn walk<E: From<Error>>(
        &self,
        root: &BucketRoot,
        buckets: bool,
        visit: &mut Visit<'_, E>,
    ) -> Result<(), E> {
        match root {
            BucketRoot::Inline(page) => visit_leaf(page, "inline bucket", buckets, visit),
            BucketRoot::Page(pgid) => self.walk_page(*pgid, 0, buckets, visit),
        }
    }

    fn walk_page<E: From<Error>>(
        &self,
        pgid: u64,
        depth: usize,
        buckets: bool,
        visit: &mut Visit<'_, E>,
    ) -> Result<(), E> {
        if depth >= DEPTH_MAX {
            return Err(
                Error::Corrupted(format!("tree deeper than {DEPTH_MAX} at page {pgid}")).into(),
            );
        }
        let page = self.page(pgid)?;
        let header = PageHeader::decode(&page)?;
        match header.flags {
            FLAG_LEAF => visit_leaf(&page, &format!("page {pgid}"), buckets, visit),
            FLAG_BRANCH => {
                for i in 0..usize::from(header.count) {
                    let at = PAGE_HEADER_BYTES + i * BRANCH_ELEMENT_BYTES;
                    let child = u64_at(&page, at + 8)?;
                    self.walk_page(child, depth + 1, buckets, visit)?;
                }
                Ok(())
            }
            flags => {
                Err(Error::Corrupted(format!("page {pgid} in a tree has flags {flags:#x}")).into())
            }
        }
    }
}

/// Visits the elements of one leaf page (`page` starts at its header).
fn visit_leaf<E: From<Error>>(
    page: &[u8],
    what: &str,
    buckets: bool,
    visit: &mut Visit<'_, E>,
) -> Result<(), E> {
    let header = PageHeader::decode(page)?;
    if header.flags != FLAG_LEAF {
        return Err(
            Error::Corrupted(format!("{what}: leaf expected, flags {:#x}", header.flags)).into(),
        );
    }
    for i in 0..usize::from(header.count) {
        let at = PAGE_HEADER_BYTES + i * LEAF_ELEMENT_BYTES;
        let flags = u32_at(page, at)?;
        let pos = u32_at(page, at + 4)? as usize;
        let key_bytes = u32_at(page, at + 8)? as usize;
        let value_bytes = u32_at(page, at + 12)? as usize;
        let start = at + pos;
        let (key, value) = start
            .checked_add(key_bytes)
            .and_then(|mid| Some((mid, mid.checked_add(value_bytes)?)))
            .filter(|&(_, end)| end <= page.len())
            .map(|(mid, end)| (&page[start..mid], &page[mid..end]))
            .ok_or_else(|| Error::Corrupted(format!("{what}: element {i} past the page")))?;
        let is_bucket = flags & ELEMENT_BUCKET != 0;
        if is_bucket != buckets {
            return Err(Error::Corrupted(format!(
                "{what}: element {i} is {} where {} are expected (nested buckets are not supported)",
                if is_bucket { "a bucket" } else { "a value" },
                if buckets { "buckets" } else { "values" },
            ))
            .into());
        }
        visit(key, value)?;
    }
    Ok(())
}

/// Decodes a bucket value: its root page, or its inline leaf.
fn bucket_root(name: &[u8], value: &[u8]) -> Result<BucketRoot, Error> {
    let root = u64_at(value, 0).map_err(|_| {
        Error::Corrupted(format!(
            "bucket {:?}: value of {} bytes",
            String::from_utf8_lossy(name),
            value.len()
        ))
    })?;
    if root != 0 {
        return Ok(BucketRoot::Page(root));
    }
    match value.get(BUCKET_HEADER_BYTES..) {
        Some(page) if page.len() >= PAGE_HEADER_BYTES => Ok(BucketRoot::Inline(page.to_vec())),
        _ => Err(Error::Corrupted(format!(
            "bucket {:?}: inline value of {} bytes",
            String::from_utf8_lossy(name),
            value.len()
        ))),
    }
}
