//! The database handle, its transactions, commit and online defragmentation.
//!
//! Invariants (format and protocol in `storage/docs/btree.md`):
//! - Commit order: tree, overflow and freelist pages → fdatasync → meta page of slot
//!   `txid % 2` → fdatasync. Only then is the new snapshot published to readers.
//! - Reader registry: each commit publishes an `Arc<Snapshot>`; replaced snapshots move to
//!   `WriterState::retired`. A retired snapshot whose strong count is 1 (only the registry
//!   holds it) has no reader and can never get one, because readers only clone the current
//!   snapshot. The oldest retired snapshot still held bounds which freed pages are reusable.
//! - The file is truncated only to a length that covers every live snapshot's `page_count`.
//! - A commit that fails after touching the allocator poisons the writer: the in-memory free
//!   list may no longer match the file, so writes stop until the database is reopened (the
//!   file itself still holds the last good commit).

use std::collections::{BTreeSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::ops::{Bound, RangeBounds};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::alloc::Allocator;
use super::cursor::Range;
use super::mmap::{Mapping, Snapshot};
use super::node::{Child, Editor, LeafValue, Node, PageWrites, Room};
use super::page::{self, Meta, META_SLOTS, PAGE_BYTES};
use super::Error;
use super::{MAX_BUCKET_NAME_BYTES, MAX_KEY_BYTES, MAX_VALUE_BYTES};

/// Prefixed keys up to this length are built on the stack by gets and puts.
const SHORT_KEY_BYTES: usize = 128;

/// Upper bound on defragmentation passes (each pass is one write transaction).
const DEFRAG_PASSES_MAX: usize = 64;

#[derive(Clone, Debug)]
pub struct Options {
    /// fdatasync on commit (the default). Off only for tests and benchmarks that measure
    /// something else; a crash then may lose or tear recent commits.
    pub sync: bool,
    /// Start each written batch's writeback during the commit, with a bounded amount in
    /// flight, instead of leaving every page to the commit's first `fdatasync`. For a
    /// process whose latency-critical writes (a WAL) share the device: unpaced, that
    /// `fdatasync` queues the whole commit at once, and a small write issued meanwhile waits
    /// behind all of it. Off by default: on a busy device it slows the commit itself
    /// (docs/btree.md, "Commit protocol").
    pub writeback_pacing: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            sync: true,
            writeback_pacing: false,
        }
    }
}

/// Sizes as etcd reports them in `StatusResponse` (`dbSize`, `dbSizeInUse`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stats {
    /// Length of the file.
    pub db_size_bytes: u64,
    /// Bytes of pages holding data (the file minus free pages).
    pub db_size_in_use_bytes: u64,
    pub page_count: u64,
    pub free_pages: u64,
    pub entry_count: u64,
    pub txid: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DefragReport {
    pub passes: usize,
    pub pages_moved: u64,
    pub db_size_bytes_before: u64,
    pub db_size_bytes_after: u64,
}

struct Shared {
    file: File,
    /// Length of the file, kept by the writer (commits extend it, truncation shortens it),
    /// so that sizes can be reported without a system call on the caller's thread.
    file_bytes: AtomicU64,
    path: PathBuf,
    options: Options,
    /// The latest committed snapshot; readers clone it (the only way to obtain one).
    current: Mutex<Arc<Snapshot>>,
    /// The writer's state; taken out by the open write transaction.
    writer: Mutex<Option<Box<WriterState>>>,
}

struct WriterState {
    alloc: Allocator,
    /// Pages of the latest commit's freelist chain.
    freelist_pages: Vec<u64>,
    /// Snapshots replaced by later commits, oldest first (the reader registry).
    retired: VecDeque<Arc<Snapshot>>,
    file_bytes: u64,
    mapping: Arc<Mapping>,
    poisoned: bool,
    /// The commit buffer, kept between commits.
    writes: PageWrites,
}

impl WriterState {
    /// The txid of the oldest snapshot a reader may still hold.
    fn oldest_reader_txid(&mut self, current_txid: u64) -> u64 {
        self.retired
            .retain(|snapshot| Arc::strong_count(snapshot) > 1);
        // Pairs with the Release decrement of a reader's Arc drop: everything that reader
        // did with its pages happens before we reuse them.
        fence(Ordering::Acquire);
        self.retired
            .iter()
            .map(|snapshot| snapshot.meta.txid)
            .min()
            .unwrap_or(current_txid)
    }

    /// Truncates the file to the current page count if no live snapshot needs more.
    fn maybe_truncate(&mut self, shared: &Shared) -> Result<(), Error> {
        let target_bytes = self.alloc.page_count * PAGE_BYTES as u64;
        if self.file_bytes <= target_bytes {
            return Ok(());
        }
        let current_txid = u64::MAX;
        self.oldest_reader_txid(current_txid);
        if self
            .retired
            .iter()
            .any(|s| s.meta.page_count * PAGE_BYTES as u64 > target_bytes)
        {
            return Ok(());
        }
        shared.file.set_len(target_bytes)?;
        self.file_bytes = target_bytes;
        shared.file_bytes.store(target_bytes, Ordering::Release);
        Ok(())
    }
}

/// A handle to one database file. Cheap to clone; all clones share the file.
#[derive(Clone)]
pub struct Db {
    shared: Arc<Shared>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks cannot leave them half-updated (each critical
    // section is a single assignment or take), so a poisoned lock is still consistent.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Picks the newest meta slot that decodes; errors only if neither does.
pub(crate) fn choose_meta(slot0: &[u8], slot1: &[u8]) -> Result<Meta, Error> {
    match (Meta::decode(slot0), Meta::decode(slot1)) {
        (Ok(a), Ok(b)) => Ok(if b.txid > a.txid { b } else { a }),
        (Ok(a), Err(_)) => Ok(a),
        (Err(_), Ok(b)) => Ok(b),
        (Err(a), Err(b)) => Err(page::corrupted(format!("no valid meta page ({a}; {b})"))),
    }
}

/// The bytes `meta`'s pages occupy, or an error if the file (or image) of `have_bytes` is
/// shorter. Checked before anything walks the pages: `read_freelist` and the page reads
/// are bounded by `page_count`, so a meta claiming more pages than exist would let a
/// crafted file drive them through up to 2^64 ids (the page decoder's fuzz target found a
/// 59-byte image that ran out of memory that way).
pub(crate) fn bytes_meta_needs(meta: &Meta, have_bytes: u64) -> Result<u64, Error> {
    let needed_bytes = meta.page_count.checked_mul(PAGE_BYTES as u64);
    match needed_bytes {
        Some(needed) if needed <= have_bytes => Ok(needed),
        _ => Err(page::corrupted(format!(
            "file has {have_bytes} bytes, meta needs {} pages of {PAGE_BYTES}",
            meta.page_count
        ))),
    }
}

/// Reads the freelist chain: (chain pages, free pages). Rejects loops and duplicates.
pub(crate) fn read_freelist(snap: &Snapshot) -> Result<(Vec<u64>, BTreeSet<u64>), Error> {
    let mut chain = Vec::new();
    let mut free = BTreeSet::new();
    let mut pgid = snap.meta.freelist_pgid;
    while pgid != 0 {
        if chain.len() as u64 >= snap.meta.page_count {
            return Err(page::corrupted("freelist chain loops"));
        }
        chain.push(pgid);
        let (next_pgid, runs) =
            page::decode_freelist(snap.pages(pgid, 1)?, pgid, snap.meta.page_count)?;
        for (start, len) in runs {
            for free_pgid in start..start + len {
                if !free.insert(free_pgid) {
                    return Err(page::corrupted(format!(
                        "page {free_pgid} listed free twice"
                    )));
                }
            }
        }
        pgid = next_pgid;
    }
    Ok((chain, free))
}

fn initial_image() -> Vec<u8> {
    let root_pgid = META_SLOTS;
    let mut image = vec![0u8; PAGE_BYTES * 3];
    let meta = Meta {
        txid: 0,
        root_pgid,
        freelist_pgid: 0,
        page_count: 3,
        entry_count: 0,
    };
    image[..page::META_BYTES].copy_from_slice(&meta.encode());
    let leaf_at = root_pgid as usize * PAGE_BYTES;
    page::encode_leaf(
        &mut image[leaf_at..leaf_at + PAGE_BYTES],
        root_pgid,
        std::iter::empty(),
    );
    image
}

/// Creates the file atomically: written under a temporary name, synced, then renamed, so a
/// crash during creation leaves either no database or a complete empty one.
fn create_file(path: &Path) -> Result<(), Error> {
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".creating");
    let tmp_path = path.with_file_name(tmp_name);
    let tmp = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp_path)?;
    tmp.write_all_at(&initial_image(), 0)?;
    tmp.sync_all()?;
    std::fs::rename(&tmp_path, path)?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(dir)?.sync_all()?;
    Ok(())
}

pub(crate) fn bucket_key(bucket: &[u8], key: &[u8]) -> Result<Vec<u8>, Error> {
    if key.len() > MAX_KEY_BYTES {
        return Err(Error::KeyTooLarge);
    }
    let mut internal = bucket_prefix(bucket)?;
    internal.extend_from_slice(key);
    Ok(internal)
}

/// `bucket_key`, built in `buffer` when it fits (the put and get hot paths), else on the heap.
fn internal_key<'b>(
    bucket: &[u8],
    key: &[u8],
    buffer: &'b mut [u8; SHORT_KEY_BYTES],
) -> Result<std::borrow::Cow<'b, [u8]>, Error> {
    if bucket.len() > MAX_BUCKET_NAME_BYTES {
        return Err(Error::BucketNameTooLarge);
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(Error::KeyTooLarge);
    }
    let internal_len = 1 + bucket.len() + key.len();
    if internal_len > SHORT_KEY_BYTES {
        return bucket_key(bucket, key).map(std::borrow::Cow::Owned);
    }
    buffer[0] = bucket.len() as u8;
    buffer[1..1 + bucket.len()].copy_from_slice(bucket);
    buffer[1 + bucket.len()..internal_len].copy_from_slice(key);
    Ok(std::borrow::Cow::Borrowed(&buffer[..internal_len]))
}

/// A bucket's keys all start with `[name length][name]`; this is how buckets share one tree.
pub(crate) fn bucket_prefix(bucket: &[u8]) -> Result<Vec<u8>, Error> {
    if bucket.len() > MAX_BUCKET_NAME_BYTES {
        return Err(Error::BucketNameTooLarge);
    }
    let mut prefix = Vec::with_capacity(1 + bucket.len() + 32);
    prefix.push(bucket.len() as u8);
    prefix.extend_from_slice(bucket);
    Ok(prefix)
}

/// The smallest key above every key that starts with `prefix`, if any.
fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut successor = prefix.to_vec();
    while let Some(last) = successor.pop() {
        if last < u8::MAX {
            successor.push(last + 1);
            return Some(successor);
        }
    }
    None
}

/// A (key, value) pair copied out of a write transaction.
pub type OwnedEntry = (Vec<u8>, Vec<u8>);

type InternalBounds = (Bound<Vec<u8>>, Bound<Vec<u8>>);

fn internal_bounds(
    bucket: &[u8],
    lower: Bound<&[u8]>,
    upper: Bound<&[u8]>,
) -> Result<InternalBounds, Error> {
    let prefix = bucket_prefix(bucket)?;
    let lower = match lower {
        Bound::Included(key) => Bound::Included(bucket_key(bucket, key)?),
        Bound::Excluded(key) => Bound::Excluded(bucket_key(bucket, key)?),
        Bound::Unbounded => Bound::Included(prefix.clone()),
    };
    let upper = match upper {
        Bound::Included(key) => Bound::Included(bucket_key(bucket, key)?),
        Bound::Excluded(key) => Bound::Excluded(bucket_key(bucket, key)?),
        Bound::Unbounded => prefix_successor(&prefix).map_or(Bound::Unbounded, Bound::Excluded),
    };
    Ok((lower, upper))
}

impl Db {
    /// Opens (creating if missing) the database at `path`.
    pub fn open(path: impl AsRef<Path>, options: Options) -> Result<Db, Error> {
        let path = path.as_ref();
        if !path.exists() {
            create_file(path)?;
        }
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        let file_bytes = file.metadata()?.len();
        let mut slots = vec![0u8; PAGE_BYTES * 2];
        let readable = file_bytes.min(slots.len() as u64) as usize;
        file.read_exact_at(&mut slots[..readable], 0)?;
        let meta = choose_meta(&slots[..PAGE_BYTES], &slots[PAGE_BYTES..])?;
        let needed_bytes = bytes_meta_needs(&meta, file_bytes)?;
        let mapping = Arc::new(Mapping::map_file(&file, needed_bytes as usize)?);
        let mut snapshot = Snapshot {
            meta,
            mapping: mapping.clone(),
            free_pages: 0,
        };
        let (freelist_pages, free) = read_freelist(&snapshot)?;
        if free.contains(&meta.root_pgid) {
            return Err(page::corrupted("root page listed free"));
        }
        snapshot.free_pages = free.len() as u64;
        // Bytes past page_count belong to no commit (a crash before truncation, or pages
        // written by a transaction that never committed); no reader exists yet.
        if file_bytes > needed_bytes {
            file.set_len(needed_bytes)?;
        }
        let writer = WriterState {
            alloc: Allocator::new(free, meta.page_count),
            freelist_pages,
            retired: VecDeque::new(),
            file_bytes: needed_bytes,
            mapping,
            poisoned: false,
            writes: PageWrites::new(file.try_clone()?, options.writeback_pacing),
        };
        Ok(Db {
            shared: Arc::new(Shared {
                file_bytes: AtomicU64::new(needed_bytes),
                file,
                path: path.to_path_buf(),
                options,
                current: Mutex::new(Arc::new(snapshot)),
                writer: Mutex::new(Some(Box::new(writer))),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// A read transaction on the latest commit. Never blocks on the writer.
    pub fn begin_read(&self) -> ReadTxn {
        ReadTxn {
            snap: lock(&self.shared.current).clone(),
        }
    }

    /// The write transaction. There is one writer: while it is open this returns
    /// `WriterBusy` (blocking would deadlock a single-threaded executor).
    pub fn begin_write(&self) -> Result<WriteTxn, Error> {
        let mut state = lock(&self.shared.writer).take().ok_or(Error::WriterBusy)?;
        if state.poisoned {
            *lock(&self.shared.writer) = Some(state);
            return Err(Error::Poisoned);
        }
        let base = lock(&self.shared.current).clone();
        let oldest = state.oldest_reader_txid(base.meta.txid);
        state.alloc.release(oldest);
        if let Err(error) = state.maybe_truncate(&self.shared) {
            *lock(&self.shared.writer) = Some(state);
            return Err(error);
        }
        Ok(WriteTxn {
            shared: self.shared.clone(),
            root: Child::Clean(base.meta.root_pgid),
            entry_count: base.meta.entry_count,
            base,
            state: Some(state),
            freed: Vec::new(),
            trim_tail: false,
        })
    }

    pub fn stats(&self) -> Result<Stats, Error> {
        let snap = lock(&self.shared.current).clone();
        Ok(Stats {
            db_size_bytes: self.file_bytes()?,
            db_size_in_use_bytes: (snap.meta.page_count - snap.free_pages) * PAGE_BYTES as u64,
            page_count: snap.meta.page_count,
            free_pages: snap.free_pages,
            entry_count: snap.meta.entry_count,
            txid: snap.meta.txid,
        })
    }

    /// Online defragmentation: moves pages from the end of the file into free pages lower
    /// down, then truncates the free tail. Runs as a series of ordinary write transactions,
    /// so readers are never blocked and a concurrent writer waits at most one pass (one
    /// commit). Pages still visible to old readers cannot move until those readers finish.
    ///
    /// A caller that holds read transactions of its own (a server answering reads while it
    /// defragments) runs the steps itself instead: [`Db::defrag_pass`] until it moves
    /// nothing, then [`Db::defrag_trim`] and [`Db::truncate_unused`], refreshing its readers
    /// between steps so that they stop pinning the pages the next step wants to move.
    pub fn defrag(&self) -> Result<DefragReport, Error> {
        let db_size_bytes_before = self.file_bytes()?;
        let mut report = DefragReport {
            passes: 0,
            pages_moved: 0,
            db_size_bytes_before,
            db_size_bytes_after: 0,
        };
        while report.passes < DEFRAG_PASSES_MAX {
            let moved = self.defrag_pass()?;
            report.passes += 1;
            report.pages_moved += moved;
            // Stop once nothing can move (old readers may pin free space; the next defrag
            // picks up from there).
            if moved == 0 {
                break;
            }
        }
        self.defrag_trim()?;
        self.truncate_unused()?;
        report.db_size_bytes_after = self.file_bytes()?;
        Ok(report)
    }

    /// One defragmentation pass (one write transaction): rewrites every page at or above
    /// the in-use boundary into the lowest free pages. Returns the pages moved; 0 means
    /// nothing more can move while the current readers live.
    pub fn defrag_pass(&self) -> Result<u64, Error> {
        let mut txn = self.begin_write()?;
        let moved = txn.relocate_tail()?;
        txn.commit()?;
        Ok(moved)
    }

    /// The last defragmentation commit: releases what the passes freed and drops the free
    /// pages at the end of the file from the page count.
    pub fn defrag_trim(&self) -> Result<(), Error> {
        let mut txn = self.begin_write()?;
        txn.trim_tail = true;
        txn.commit()
    }

    /// Shortens the file to the current page count unless a live reader still needs the
    /// pages past it (then a later call, or the next write transaction, does it).
    pub fn truncate_unused(&self) -> Result<(), Error> {
        let mut state = lock(&self.shared.writer).take().ok_or(Error::WriterBusy)?;
        let truncated = state.maybe_truncate(&self.shared);
        *lock(&self.shared.writer) = Some(state);
        truncated
    }

    /// Length of the file in bytes (as the writer last left it: no system call).
    pub fn file_bytes(&self) -> Result<u64, Error> {
        Ok(self.shared.file_bytes.load(Ordering::Acquire))
    }

    /// Most passes [`Db::defrag`] runs; callers driving the steps themselves use the same.
    pub const DEFRAG_PASSES_MAX: usize = DEFRAG_PASSES_MAX;

    /// The latest commit, pinned (its pages are not reused while the `Arc` lives), and the
    /// file that holds it: what `export.rs` streams.
    pub(crate) fn pinned_snapshot(&self) -> (Arc<Snapshot>, &File) {
        (lock(&self.shared.current).clone(), &self.shared.file)
    }
}

/// A consistent, read-only view of the latest commit when it began. `Send + Sync`: it may
/// move to, or be shared with, other threads. Values borrow from the mmap for as long as
/// the transaction lives; pages it can see are not reused until it is dropped.
#[derive(Clone)]
pub struct ReadTxn {
    snap: Arc<Snapshot>,
}

impl ReadTxn {
    /// A read transaction over an in-memory image of a database file (checker, fuzzing).
    pub fn from_image(image: Vec<u8>) -> Result<ReadTxn, Error> {
        let slot0 = image.get(..PAGE_BYTES).unwrap_or(&[]);
        let slot1 = image.get(PAGE_BYTES..2 * PAGE_BYTES).unwrap_or(&[]);
        let meta = choose_meta(slot0, slot1)?;
        bytes_meta_needs(&meta, image.len() as u64)?;
        let mut snap = Snapshot {
            meta,
            mapping: Arc::new(Mapping::Image(image.into_boxed_slice())),
            free_pages: 0,
        };
        snap.free_pages = read_freelist(&snap)?.1.len() as u64;
        Ok(ReadTxn {
            snap: Arc::new(snap),
        })
    }

    pub fn txid(&self) -> u64 {
        self.snap.meta.txid
    }

    /// Number of entries in all buckets.
    pub fn entry_count(&self) -> u64 {
        self.snap.meta.entry_count
    }

    /// Bytes of the pages this commit spans (its high-water mark; the file may be longer):
    /// bbolt's `Tx.Size`, what etcd's quota compares. No I/O.
    pub fn db_bytes(&self) -> u64 {
        self.snap.meta.page_count * PAGE_BYTES as u64
    }

    pub fn get(&self, bucket: &[u8], key: &[u8]) -> Result<Option<&[u8]>, Error> {
        // The point-read hot path: the prefixed key is built on the stack.
        let mut buffer = [0u8; SHORT_KEY_BYTES];
        self.snap.get(&internal_key(bucket, key, &mut buffer)?)
    }

    /// Entries of `bucket` with keys in `(lower, upper)`, ascending.
    pub fn range(
        &self,
        bucket: &[u8],
        lower: Bound<&[u8]>,
        upper: Bound<&[u8]>,
    ) -> Result<Range<'_>, Error> {
        let (lower, upper) = internal_bounds(bucket, lower, upper)?;
        Ok(Range::new(
            &self.snap,
            lower,
            upper,
            false,
            1 + bucket.len(),
        ))
    }

    /// Entries of `bucket` with keys in `(lower, upper)`, descending.
    pub fn range_rev(
        &self,
        bucket: &[u8],
        lower: Bound<&[u8]>,
        upper: Bound<&[u8]>,
    ) -> Result<Range<'_>, Error> {
        let (lower, upper) = internal_bounds(bucket, lower, upper)?;
        Ok(Range::new(&self.snap, lower, upper, true, 1 + bucket.len()))
    }
}

/// The single write transaction. Changes are visible to its own reads at once and to
/// readers after `commit`; dropping it without committing discards them.
pub struct WriteTxn {
    shared: Arc<Shared>,
    /// Taken by `commit`; returned to the `Db` on drop.
    state: Option<Box<WriterState>>,
    base: Arc<Snapshot>,
    root: Child,
    freed: Vec<u64>,
    entry_count: u64,
    trim_tail: bool,
}

impl Drop for WriteTxn {
    fn drop(&mut self) {
        if let Some(state) = self.state.take() {
            *lock(&self.shared.writer) = Some(state);
        }
    }
}

impl WriteTxn {
    fn editor(&mut self) -> (Editor<'_>, &mut Child) {
        (
            Editor {
                base: &self.base,
                freed: &mut self.freed,
            },
            &mut self.root,
        )
    }

    pub fn put(&mut self, bucket: &[u8], key: &[u8], value: &[u8]) -> Result<(), Error> {
        if value.len() > MAX_VALUE_BYTES {
            return Err(Error::ValueTooLarge);
        }
        let mut buffer = [0u8; SHORT_KEY_BYTES];
        let internal = internal_key(bucket, key, &mut buffer)?;
        let (mut editor, root) = self.editor();
        if !editor.put(root, &internal, value)? {
            self.entry_count += 1;
        }
        Ok(())
    }

    /// Deletes `key`; returns whether it existed.
    pub fn delete(&mut self, bucket: &[u8], key: &[u8]) -> Result<bool, Error> {
        if self.get(bucket, key)?.is_none() {
            return Ok(false);
        }
        let internal = bucket_key(bucket, key)?;
        let (mut editor, root) = self.editor();
        let existed = editor.delete(root, &internal)?;
        assert!(existed, "get found the key");
        self.entry_count -= 1;
        Ok(true)
    }

    /// Reads through this transaction's own uncommitted changes.
    pub fn get(&self, bucket: &[u8], key: &[u8]) -> Result<Option<&[u8]>, Error> {
        let mut buffer = [0u8; SHORT_KEY_BYTES];
        let internal = internal_key(bucket, key, &mut buffer)?;
        let mut child = &self.root;
        for _ in 0..page::MAX_BTREE_DEPTH {
            match child {
                Child::Clean(pgid) => return self.base.get_from(*pgid, &internal),
                Child::Dirty(node) => match node.as_ref() {
                    Node::Leaf(leaf) => {
                        let page = leaf.page(&self.base);
                        return match leaf.search(page, &internal) {
                            Ok(at) => self.leaf_value(leaf.value(page, at)).map(Some),
                            Err(_) => Ok(None),
                        };
                    }
                    Node::Branch(branch) => child = branch.child(branch.child_for(&internal)),
                },
            }
        }
        Err(page::corrupted("tree deeper than MAX_BTREE_DEPTH"))
    }

    fn leaf_value<'v>(&'v self, value: LeafValue<'v>) -> Result<&'v [u8], Error> {
        match value {
            LeafValue::Inline(bytes) | LeafValue::Big(bytes) => Ok(bytes),
            LeafValue::Overflow { first_pgid, len } => self
                .base
                .value(page::ValueRef::Overflow { first_pgid, len }),
        }
    }

    /// Up to `limit` entries of `bucket` in `(lower, upper)`, through this transaction's
    /// uncommitted changes, ascending or (`reverse`) descending.
    pub fn range(
        &self,
        bucket: &[u8],
        lower: Bound<&[u8]>,
        upper: Bound<&[u8]>,
        reverse: bool,
        limit: usize,
    ) -> Result<Vec<OwnedEntry>, Error> {
        let (lower, upper) = internal_bounds(bucket, lower, upper)?;
        let mut out = Vec::new();
        self.collect(
            &self.root,
            (
                lower.as_ref().map(|k| k.as_slice()),
                upper.as_ref().map(|k| k.as_slice()),
            ),
            reverse,
            limit,
            1 + bucket.len(),
            &mut out,
            0,
        )?;
        Ok(out)
    }

    #[allow(clippy::too_many_arguments)]
    fn collect(
        &self,
        child: &Child,
        bounds: (Bound<&[u8]>, Bound<&[u8]>),
        reverse: bool,
        limit: usize,
        prefix_len: usize,
        out: &mut Vec<OwnedEntry>,
        depth: usize,
    ) -> Result<(), Error> {
        if depth >= page::MAX_BTREE_DEPTH {
            return Err(page::corrupted("tree deeper than MAX_BTREE_DEPTH"));
        }
        let in_range = |key: &[u8]| bounds.contains(&key);
        match child {
            Child::Clean(pgid) => {
                let sub = Snapshot {
                    meta: Meta {
                        root_pgid: *pgid,
                        ..self.base.meta
                    },
                    mapping: self.base.mapping.clone(),
                    free_pages: 0,
                };
                let owned = |b: Bound<&[u8]>| b.map(|k| k.to_vec());
                for entry in Range::new(&sub, owned(bounds.0), owned(bounds.1), reverse, prefix_len)
                {
                    if out.len() >= limit {
                        break;
                    }
                    let (key, value) = entry?;
                    out.push((key.to_vec(), value.to_vec()));
                }
            }
            Child::Dirty(node) => match node.as_ref() {
                Node::Leaf(leaf) => {
                    let page = leaf.page(&self.base);
                    let mut visit = |cell_index: usize| -> Result<(), Error> {
                        let key = leaf.key(page, cell_index);
                        if out.len() < limit && in_range(key) {
                            let value = self.leaf_value(leaf.value(page, cell_index))?.to_vec();
                            out.push((key[prefix_len..].to_vec(), value));
                        }
                        Ok(())
                    };
                    if reverse {
                        (0..leaf.len()).rev().try_for_each(&mut visit)?;
                    } else {
                        (0..leaf.len()).try_for_each(&mut visit)?;
                    }
                }
                Node::Branch(branch) => {
                    let overlaps = |at: usize| {
                        // Child `at` holds [key(at), key(at + 1)); child 0 is open below.
                        let below_upper = at == 0
                            || match bounds.1 {
                                Bound::Included(upper) => branch.key(at) <= upper,
                                Bound::Excluded(upper) => branch.key(at) < upper,
                                Bound::Unbounded => true,
                            };
                        let above_lower = at + 1 >= branch.len()
                            || match bounds.0 {
                                Bound::Included(lower) | Bound::Excluded(lower) => {
                                    branch.key(at + 1) > lower
                                }
                                Bound::Unbounded => true,
                            };
                        below_upper && above_lower
                    };
                    let order: Box<dyn Iterator<Item = usize>> = if reverse {
                        Box::new((0..branch.len()).rev())
                    } else {
                        Box::new(0..branch.len())
                    };
                    for at in order {
                        if out.len() >= limit {
                            break;
                        }
                        if overlaps(at) {
                            self.collect(
                                branch.child(at),
                                bounds,
                                reverse,
                                limit,
                                prefix_len,
                                out,
                                depth + 1,
                            )?;
                        }
                    }
                }
            },
        }
        Ok(())
    }

    /// The snapshot this transaction started from (its txid is the last commit's).
    pub fn base_txid(&self) -> u64 {
        self.base.meta.txid
    }

    /// Defragmentation step: marks every page at or above the in-use boundary for copying,
    /// so this commit rewrites it into the lowest free pages. Returns the pages marked.
    fn relocate_tail(&mut self) -> Result<u64, Error> {
        let state = self
            .state
            .as_ref()
            .expect("open transaction holds the writer state");
        let free_pages = state.alloc.free.len() as u64 + state.alloc.pending_pages();
        let boundary = state.alloc.page_count - free_pages;
        // Room is every free page below the end of the used part of the file, not only
        // below the boundary: at the end of a defragmentation the pages still above the
        // boundary exactly match the free ones below it, and their copies' ancestors need a
        // little more, so a boundary-only budget left the last run at the end of the file
        // for good (and with it the whole free tail). Allocation still prefers the lowest
        // page, so copies land as low as they can and each pass moves the end down.
        let trailing_free = (META_SLOTS..state.alloc.page_count)
            .rev()
            .take_while(|pgid| state.alloc.free.contains(pgid))
            .count() as u64;
        let used_end = state.alloc.page_count - trailing_free;
        let below = state.alloc.free.range(..used_end).copied();
        let mut room = Room::new(page::to_runs(below));
        self.trim_tail = true;
        let (mut editor, root) = self.editor();
        editor.relocate(root, boundary, &mut room, 0)
    }

    /// Makes the changes durable and visible to new readers (protocol in docs/btree.md).
    pub fn commit(mut self) -> Result<(), Error> {
        let mut state = self
            .state
            .take()
            .expect("open transaction holds the writer state");
        let result = self.commit_with(&mut state);
        if result.is_err() {
            state.writes.discard();
            state.poisoned = true;
        }
        *lock(&self.shared.writer) = Some(state);
        result
    }

    fn commit_with(&mut self, state: &mut WriterState) -> Result<(), Error> {
        let root = std::mem::replace(&mut self.root, Child::Clean(0));
        if matches!(root, Child::Clean(_)) && self.freed.is_empty() && !self.trim_tail {
            return Ok(()); // Nothing changed: no new transaction.
        }
        let txid = self.base.meta.txid + 1;
        let oldest = state.oldest_reader_txid(self.base.meta.txid);
        state.alloc.release(oldest);

        let writes = &mut state.writes;
        let mut root = root;
        let mut freed = std::mem::take(&mut self.freed);
        let mut editor = Editor {
            base: &self.base,
            freed: &mut freed,
        };
        editor.rebalance(&mut root)?;
        let root_pgid = editor.spill(root, &mut state.alloc, writes)?;
        if self.trim_tail {
            state.alloc.trim_tail();
        }
        freed.append(&mut state.freelist_pages);
        let (freelist_pgid, freelist) = state.alloc.encode_freelist(&freed);
        for (pgid, bytes) in freelist {
            state.freelist_pages.push(pgid);
            state.writes.run(pgid, 1)?.copy_from_slice(&bytes);
        }
        let meta = Meta {
            txid,
            root_pgid,
            freelist_pgid,
            page_count: state.alloc.page_count,
            entry_count: self.entry_count,
        };

        // Step 1: every page the new meta can reach, then make them durable, so that the
        // meta never points at pages still in flight.
        let file = &self.shared.file;
        state.writes.flush()?;
        state.writes.end_writeback();
        if self.shared.options.sync {
            file.sync_data()?;
        }

        // Step 2: the meta page, in the slot the previous commit did not use, then durable.
        let mut meta_page = vec![0u8; PAGE_BYTES];
        meta_page[..page::META_BYTES].copy_from_slice(&meta.encode());
        file.write_all_at(&meta_page, (txid % META_SLOTS) * PAGE_BYTES as u64)?;
        if self.shared.options.sync {
            file.sync_data()?;
        }

        // Step 3: publish. Pages freed now stay pending until no older reader exists.
        if !freed.is_empty() {
            state.alloc.pending.insert(txid, freed);
        }
        state.file_bytes = state.file_bytes.max(meta.page_count * PAGE_BYTES as u64);
        self.shared
            .file_bytes
            .store(state.file_bytes, Ordering::Release);
        let needed_bytes = (meta.page_count * PAGE_BYTES as u64) as usize;
        if needed_bytes > state.mapping.len() {
            state.mapping = Arc::new(Mapping::map_file(file, needed_bytes)?);
        }
        let free_pages = state.alloc.free.len() as u64 + state.alloc.pending_pages();
        let snapshot = Arc::new(Snapshot {
            meta,
            mapping: state.mapping.clone(),
            free_pages,
        });
        let retired = std::mem::replace(&mut *lock(&self.shared.current), snapshot);
        state.retired.push_back(retired);
        Ok(())
    }
}
