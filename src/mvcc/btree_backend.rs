//! The file-backed [`Backend`]: the mmap B+tree of `tern_storage::btree` (bbolt's role in
//! etcd), in etcd's file `<data-dir>/member/snap/db` with etcd's bucket names.
//!
//! The state core never writes the file itself. Writes land in an in-memory *open layer*;
//! [`Backend::commit`] freezes it and a writer (glommio's blocking pool on a server, the
//! calling thread elsewhere) applies it to a B+tree write transaction and commits that
//! (pages, fdatasync, meta, fdatasync: `storage/docs/btree.md`). Defragmentation runs on
//! the same writer, one pass per job. Meanwhile the state core keeps applying into a fresh
//! open layer and answering reads.
//!
//! Invariants:
//! - Reads see every write so far, committed or not (etcd's backend read buffer does the
//!   same): the open layer first, then the layer being committed, then the last commit's
//!   read snapshot. Each layer maps a key to its value or to a deletion.
//! - At most one writer job (a commit or a defragmentation step) is in flight; the layer it
//!   commits stays readable until the state core has refreshed its snapshot past it, in the
//!   same `&mut` step (`poll_writer`), so no read ever misses a write.
//! - A write is durable once the commit job that carries it has finished; `get_durable`
//!   reads exactly that state (the consistent index saved there bounds log compaction).
//! - The open layer is bounded by `OPEN_LAYER_BYTES_MAX` while a job is in flight: past it
//!   [`BtreeBackend::is_full`] tells the state core to stop applying until the job ends.
//! - A failed job is fatal to the caller (etcd: "failed to commit tx"): memory and disk no
//!   longer agree.
//! - The file is locked (`flock`, exclusive) for as long as the backend lives, as bbolt
//!   locks it, so two servers can never write one data dir.

use std::collections::btree_map;
use std::collections::BTreeMap;
use std::fs::File;
use std::iter::Peekable;
use std::ops::Bound;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tern_storage::btree::{self, Db, DefragReport, ReadTxn, Stats};

use super::backend::{Backend, BackendError, Bucket, Direction};

/// Bytes (keys plus values) the open layer may hold while a writer job is in flight before
/// the state core stops applying: a disk that cannot keep up must slow writers down, not
/// grow memory without bound.
pub const OPEN_LAYER_BYTES_MAX: usize = 256 * 1024 * 1024;

/// Where etcd keeps its backend inside the data dir (`server/storage/datadir`: member/snap/db).
pub fn db_path(data_dir: &Path) -> PathBuf {
    data_dir.join("member").join("snap").join("db")
}

impl From<btree::Error> for BackendError {
    fn from(error: btree::Error) -> Self {
        match error {
            btree::Error::Io(e) => BackendError::Io(e),
            btree::Error::Corrupted(what) => BackendError::Corrupted(what),
            other => BackendError::Io(std::io::Error::other(other.to_string())),
        }
    }
}

/// Writes not yet in the B+tree, per bucket: key → value, or `None` for a deletion.
#[derive(Clone, Default)]
struct Layer {
    buckets: [BTreeMap<Vec<u8>, Option<Vec<u8>>>; Bucket::ALL.len()],
    bytes: usize,
}

impl Layer {
    fn bucket(&self, bucket: Bucket) -> &BTreeMap<Vec<u8>, Option<Vec<u8>>> {
        &self.buckets[bucket.slot()]
    }

    fn is_empty(&self) -> bool {
        self.buckets.iter().all(BTreeMap::is_empty)
    }

    fn set(&mut self, bucket: Bucket, key: &[u8], value: Option<&[u8]>) {
        let map = &mut self.buckets[bucket.slot()];
        self.bytes += key.len() + value.map_or(0, <[u8]>::len);
        match map.get_mut(key) {
            Some(slot) => *slot = value.map(<[u8]>::to_vec),
            None => {
                map.insert(key.to_vec(), value.map(<[u8]>::to_vec));
            }
        }
    }
}

/// Applies sealed layers, oldest first, to one write transaction and commits it (on the
/// writer thread).
fn commit_layers(db: &Db, layers: &[Arc<Layer>]) -> Result<(), btree::Error> {
    let mut txn = db.begin_write()?;
    for layer in layers {
        for (slot, map) in layer.buckets.iter().enumerate() {
            let name = Bucket::ALL[slot].name();
            for (key, value) in map {
                match value {
                    Some(value) => txn.put(name, key, value)?,
                    None => {
                        txn.delete(name, key)?;
                    }
                }
            }
        }
    }
    txn.commit()
}

/// What a writer job does.
enum Job {
    Commit(Vec<Arc<Layer>>),
    DefragPass,
    DefragTrim,
    DefragTruncate,
}

/// A finished job's result, as the writer reports it.
enum JobOutcome {
    Committed,
    DefragPassed { pages_moved: u64 },
    DefragStepped,
}

/// A defragmentation in progress.
struct Defrag {
    report: DefragReport,
    /// The next step once the running job ends.
    next: DefragStep,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum DefragStep {
    Pass,
    Trim,
    Truncate,
}

/// What [`BtreeBackend::poll_writer`] saw finish.
#[derive(Default)]
pub struct WriterEvents {
    /// A defragmentation ended (its report, or the error that stopped it).
    pub defrag_finished: Option<Result<DefragReport, BackendError>>,
    /// The layers a finished commit wrote, no longer read by anyone. Freeing a large one
    /// is real work (a 100k-key layer: 200k allocations, about 100 ms of `free` and of the
    /// allocator consolidating afterwards), so the owner drops them where that cannot hold
    /// up requests: on the blocking pool, on a server.
    pub retired_layers: RetiredLayers,
}

/// Layers of a finished commit, to be dropped (see [`WriterEvents::retired_layers`]).
#[derive(Default)]
pub struct RetiredLayers(Vec<Arc<Layer>>);

impl RetiredLayers {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A writer job taken by [`BtreeBackend::take_job`], to run on a blocking thread.
pub struct WriterJob {
    db: Db,
    job: Job,
}

/// What a [`WriterJob`] did, for [`BtreeBackend::job_finished`].
pub struct WriterOutcome(Result<JobOutcome, BackendError>);

impl WriterJob {
    /// Does the job's file I/O (pages, fdatasyncs). Blocks: never call it on an executor.
    pub fn run(self) -> WriterOutcome {
        let db = self.db;
        WriterOutcome((|| -> Result<JobOutcome, BackendError> {
            Ok(match self.job {
                Job::Commit(layers) => {
                    let started = std::time::Instant::now();
                    commit_layers(&db, &layers)?;
                    crate::metrics::observe_seconds(
                        &crate::metrics::STATE.backend_commit,
                        &crate::metrics::DISK_SECONDS_BUCKETS,
                        started.elapsed(),
                    );
                    JobOutcome::Committed
                }
                Job::DefragPass => JobOutcome::DefragPassed {
                    pages_moved: db.defrag_pass()?,
                },
                Job::DefragTrim => {
                    db.defrag_trim()?;
                    JobOutcome::DefragStepped
                }
                Job::DefragTruncate => {
                    db.truncate_unused()?;
                    JobOutcome::DefragStepped
                }
            })
        })())
    }
}

/// The B+tree behind the MVCC store.
pub struct BtreeBackend {
    db: Db,
    /// Writes since the last `commit`.
    open: Layer,
    /// Layers `commit` sealed while a job ran, oldest first: the next commit job's.
    sealed: Vec<Arc<Layer>>,
    /// The layers the running commit job writes, oldest first.
    committing: Vec<Arc<Layer>>,
    /// The last commit this backend has seen finish.
    read: ReadTxn,
    /// Jobs wait in `ready_job` for the owner to run them elsewhere (else they run inline).
    background: bool,
    ready_job: Option<WriterJob>,
    /// Whether a job is in flight.
    job_running: bool,
    /// Whether the job in flight is a commit (else a defragmentation step).
    job_is_commit: bool,
    /// A failed commit: the B+tree writer is poisoned, every later commit fails with it.
    poisoned: Option<String>,
    defrag: Option<Defrag>,
    /// Holds the exclusive `flock` on the file.
    _lock: File,
}

impl BtreeBackend {
    /// Opens (creating it and its directories if missing) the database at `path`. Writer
    /// jobs run inline until [`BtreeBackend::run_writer_in_background`].
    pub fn open(path: &Path) -> Result<BtreeBackend, BackendError> {
        if let Some(dir) = path.parent() {
            create_private_dirs(dir)?;
        }
        // Locked before `Db::open` reads or repairs (truncates) an existing file: whoever
        // holds the lock (another server, `ternutl defrag` or `backup`) may be using it. A
        // missing file is created first (`Db::open` writes it whole under a temporary name),
        // so that the lock is on the file the database then lives in.
        if !path.exists() {
            drop(Db::open(path, btree::Options::default())?);
        }
        let lock = File::open(path)?;
        // Safety: flock on a descriptor we own; no memory is involved.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            return Err(BackendError::Io(std::io::Error::new(
                e.kind(),
                format!("{} is locked by another process: {e}", path.display()),
            )));
        }
        // The WAL shares the device: paced writeback keeps a large commit from queueing
        // all its pages ahead of the WAL's small writes (issue 11 §2, case 4).
        let options = btree::Options {
            writeback_pacing: true,
            ..btree::Options::default()
        };
        let db = Db::open(path, options)?;
        let read = db.begin_read();
        Ok(BtreeBackend {
            db,
            open: Layer::default(),
            sealed: Vec::new(),
            committing: Vec::new(),
            read,
            background: false,
            ready_job: None,
            job_running: false,
            job_is_commit: false,
            poisoned: None,
            defrag: None,
            _lock: lock,
        })
    }

    /// From now on writer jobs wait for [`Self::take_job`]; their owner runs them off the
    /// executor and hands the outcome back to [`Self::job_finished`].
    pub fn run_writer_in_background(&mut self) {
        assert!(
            !self.job_running,
            "no job in flight while switching writers"
        );
        self.background = true;
    }

    /// The job to run now, if one is ready (background writers only).
    pub fn take_job(&mut self) -> Option<WriterJob> {
        self.ready_job.take()
    }

    /// A consistent image of the latest commit, read later in chunks (`Db::export`).
    pub fn export(&self) -> Result<btree::Export, BackendError> {
        Ok(self.db.export()?)
    }

    /// A consistent view of every write so far, committed or not, that stays fixed while
    /// the backend moves on: the last commit's read snapshot (pinned, so its pages are not
    /// reused) and the layers above it (shared, immutable; the open layer is copied, so
    /// call [`Backend::commit`] first to make that copy empty). `Send`: it is read on
    /// another thread (`Maintenance.Snapshot`).
    pub fn read_snapshot(&self) -> BackendSnapshot {
        let mut layers: Vec<Arc<Layer>> = Vec::new();
        if !self.open.is_empty() {
            layers.push(Arc::new(self.open.clone()));
        }
        layers.extend(self.sealed.iter().rev().cloned());
        layers.extend(self.committing.iter().rev().cloned());
        BackendSnapshot {
            read: self.read.clone(),
            layers,
        }
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        self.db.path()
    }

    /// Bytes the last finished commit spans (bbolt's `Tx.Size`, etcd's `Backend.Size`, which
    /// its space quota compares). No I/O: cheap enough to check on every write.
    pub fn db_bytes(&self) -> u64 {
        self.read.db_bytes()
    }

    /// File size and in-use size as of the last commit (etcd's dbSize and dbSizeInUse).
    pub fn stats(&self) -> Result<Stats, BackendError> {
        Ok(self.db.stats()?)
    }

    /// Whether the state core must stop applying until the running job ends (see
    /// `OPEN_LAYER_BYTES_MAX`).
    pub fn is_full(&self) -> bool {
        let waiting_bytes: usize =
            self.open.bytes + self.sealed.iter().map(|layer| layer.bytes).sum::<usize>();
        self.job_running && waiting_bytes >= OPEN_LAYER_BYTES_MAX
    }

    /// Whether a writer job is in flight or wanted.
    pub fn is_busy(&self) -> bool {
        self.job_running || !self.sealed.is_empty() || self.defrag.is_some()
    }

    /// Starts an online defragmentation: pending writes are committed first, then the
    /// passes run one job at a time, with commits of new writes between them. Its end is
    /// reported by [`Self::job_finished`]. Returns false if one is already running.
    pub fn start_defragment(&mut self) -> Result<bool, BackendError> {
        assert!(self.background, "inline writers use defragment");
        if self.defrag.is_some() {
            return Ok(false);
        }
        self.start_defragment_inner()?;
        let events = self.kick();
        debug_assert!(events.defrag_finished.is_none());
        Ok(true)
    }

    fn start_defragment_inner(&mut self) -> Result<(), BackendError> {
        let db_size_bytes_before = self.db.file_bytes()?;
        self.defrag = Some(Defrag {
            report: DefragReport {
                passes: 0,
                pages_moved: 0,
                db_size_bytes_before,
                db_size_bytes_after: 0,
            },
            next: DefragStep::Pass,
        });
        Ok(())
    }

    /// Takes in what a job did: refreshes the read snapshot past a committed layer,
    /// advances a defragmentation, and readies the next job.
    pub fn job_finished(&mut self, outcome: WriterOutcome) -> WriterEvents {
        assert!(self.job_running, "a job finished that never started");
        let mut events = WriterEvents::default();
        let mut pending = Some(outcome.0);
        while let Some(outcome) = pending.take() {
            self.job_running = false;
            // The committed state is now the file's: read it, and drop the layer it holds
            // in the same step, so reads never see a gap.
            self.read = self.db.begin_read();
            events
                .retired_layers
                .0
                .append(&mut std::mem::take(&mut self.committing));
            match outcome {
                Ok(JobOutcome::Committed) => {}
                Ok(JobOutcome::DefragPassed { pages_moved }) => {
                    let defrag = self.defrag.as_mut().expect("defrag pass without defrag");
                    defrag.report.passes += 1;
                    defrag.report.pages_moved += pages_moved;
                    if pages_moved == 0 || defrag.report.passes >= Db::DEFRAG_PASSES_MAX {
                        defrag.next = DefragStep::Trim;
                    }
                }
                Ok(JobOutcome::DefragStepped) => {
                    let defrag = self.defrag.as_mut().expect("defrag step without defrag");
                    if defrag.next == DefragStep::Trim {
                        defrag.next = DefragStep::Truncate;
                    } else {
                        let mut report = self.defrag.take().expect("checked").report;
                        match self.db.file_bytes() {
                            Ok(bytes) => {
                                report.db_size_bytes_after = bytes;
                                events.defrag_finished = Some(Ok(report));
                            }
                            Err(e) => events.defrag_finished = Some(Err(e.into())),
                        }
                    }
                }
                Err(e) if self.job_is_commit => {
                    // The B+tree writer is poisoned; the caller treats this as fatal.
                    self.poisoned = Some(e.to_string());
                    if self.defrag.take().is_some() {
                        events.defrag_finished =
                            Some(Err(BackendError::Io(std::io::Error::other(e.to_string()))));
                    }
                    return events;
                }
                Err(e) => {
                    // A failed defragmentation step ends it; the caller hears why.
                    self.defrag = None;
                    events.defrag_finished = Some(Err(e));
                }
            }
            if let Some(next) = self.start_next_job() {
                // Inline: the next job already ran.
                pending = Some(next);
            }
        }
        events
    }

    /// Starts a job if none runs: a wanted commit first, then the next defrag step. An
    /// inline writer runs it at once and returns its outcome; a background one readies it.
    #[must_use]
    fn start_next_job(&mut self) -> Option<Result<JobOutcome, BackendError>> {
        if self.job_running || self.poisoned.is_some() {
            return None;
        }
        let mut job = None;
        if !self.sealed.is_empty() {
            self.committing = std::mem::take(&mut self.sealed);
            job = Some(Job::Commit(self.committing.clone()));
        }
        let job = job.or_else(|| {
            self.defrag.as_ref().map(|d| match d.next {
                DefragStep::Pass => Job::DefragPass,
                DefragStep::Trim => Job::DefragTrim,
                DefragStep::Truncate => Job::DefragTruncate,
            })
        })?;
        self.job_running = true;
        self.job_is_commit = matches!(job, Job::Commit(_));
        let job = WriterJob {
            db: self.db.clone(),
            job,
        };
        if self.background {
            assert!(self.ready_job.is_none(), "one job at a time");
            self.ready_job = Some(job);
            None
        } else {
            Some(job.run().0)
        }
    }

    /// Starts the next job; an inline one is finished at once.
    fn kick(&mut self) -> WriterEvents {
        match self.start_next_job() {
            Some(outcome) => {
                // `job_finished` expects the job to be running.
                self.job_finished(WriterOutcome(outcome))
            }
            None => WriterEvents::default(),
        }
    }

    /// A commit job's failure, once seen: every later commit fails with it.
    pub fn failure(&self) -> Option<&str> {
        self.poisoned.as_deref()
    }

    /// Commits pending writes, then defragments, and returns the report (inline writers:
    /// tests and tools; a server uses `start_defragment` and waits for `job_finished`).
    pub fn defragment(&mut self) -> Result<DefragReport, BackendError> {
        assert!(
            !self.background,
            "defragment would block a background writer's executor"
        );
        if self.defrag.is_some() {
            return Err(BackendError::Corrupted(
                "a defragmentation is running".into(),
            ));
        }
        self.start_defragment_inner()?;
        self.kick().defrag_finished.unwrap_or_else(|| {
            Err(BackendError::Corrupted(
                "defragmentation did not end".into(),
            ))
        })
    }

    /// The layers above the read snapshot, newest first.
    fn layers(&self) -> impl Iterator<Item = &Layer> {
        std::iter::once(&self.open)
            .chain(self.sealed.iter().rev().map(|layer| &**layer))
            .chain(self.committing.iter().rev().map(|layer| &**layer))
    }

    /// Looks `key` up in the layers above the read snapshot: `Some(None)` is a deletion.
    fn layered(&self, bucket: Bucket, key: &[u8]) -> Option<Option<&[u8]>> {
        self.layers()
            .find_map(|layer| layer.bucket(bucket).get(key))
            .map(|value| value.as_deref())
    }
}

/// See [`BtreeBackend::read_snapshot`]. Holds its layers' memory and the commit's pages for
/// as long as it lives.
pub struct BackendSnapshot {
    read: ReadTxn,
    /// Newest first.
    layers: Vec<Arc<Layer>>,
}

impl BackendSnapshot {
    /// Visits `bucket`'s entries with `start <= key < end`, ascending, until `visit`
    /// returns false (as [`Backend::scan`]).
    pub fn scan(
        &self,
        bucket: Bucket,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), BackendError> {
        let layers = self.layers.iter().map(|layer| &**layer);
        scan_layered(
            &self.read,
            layers,
            bucket,
            start,
            end,
            Direction::Ascending,
            visit,
        )
    }
}

/// Creates `dir` and its missing parents with mode 0700, as etcd does for its data dir.
fn create_private_dirs(dir: &Path) -> Result<(), BackendError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    Ok(())
}

type LayerEntry<'a> = (&'a [u8], Option<&'a [u8]>);
type LayerIter<'a> = Box<dyn Iterator<Item = LayerEntry<'a>> + 'a>;

fn layer_range<'a>(
    map: &'a BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    lower: Bound<&'a [u8]>,
    upper: Bound<&'a [u8]>,
    direction: Direction,
) -> LayerIter<'a> {
    let range: btree_map::Range<'a, Vec<u8>, Option<Vec<u8>>> =
        map.range::<[u8], _>((lower, upper));
    let entries = range.map(|(k, v)| (k.as_slice(), v.as_deref()));
    match direction {
        Direction::Ascending => Box::new(entries),
        Direction::Descending => Box::new(entries.rev()),
    }
}

/// Whether `a` comes before `b` in `direction`.
fn before(a: &[u8], b: &[u8], direction: Direction) -> bool {
    match direction {
        Direction::Ascending => a < b,
        Direction::Descending => a > b,
    }
}

/// Sorted layer iterators as one, newest first in `sources`; on equal keys the newest
/// wins and the others are skipped.
struct MergeLayers<'a> {
    sources: Vec<Peekable<LayerIter<'a>>>,
    direction: Direction,
}

impl<'a> Iterator for MergeLayers<'a> {
    type Item = LayerEntry<'a>;

    fn next(&mut self) -> Option<LayerEntry<'a>> {
        let mut best: Option<(usize, &'a [u8])> = None;
        for (at, source) in self.sources.iter_mut().enumerate() {
            if let Some(&(key, _)) = source.peek() {
                if best.is_none_or(|(_, best_key)| before(key, best_key, self.direction)) {
                    best = Some((at, key));
                }
            }
        }
        let (winner, key) = best?;
        for (at, source) in self.sources.iter_mut().enumerate() {
            if at != winner && source.peek().is_some_and(|&(k, _)| k == key) {
                source.next();
            }
        }
        self.sources[winner].next()
    }
}

/// A scan of `bucket` through `layers` (newest first) over the committed `read` snapshot:
/// a layer entry replaces (or, as a deletion, hides) the committed entry with its key.
fn scan_layered<'a>(
    read: &ReadTxn,
    layers: impl Iterator<Item = &'a Layer>,
    bucket: Bucket,
    start: &[u8],
    end: Option<&[u8]>,
    direction: Direction,
    visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
) -> Result<(), BackendError> {
    if matches!(end, Some(end) if end <= start) {
        return Ok(());
    }
    let upper = end.map_or(Bound::Unbounded, Bound::Excluded);
    let lower = Bound::Included(start);
    let mut layers = MergeLayers {
        sources: layers
            .map(|layer| layer_range(layer.bucket(bucket), lower, upper, direction).peekable())
            .collect(),
        direction,
    }
    .peekable();
    let base = match direction {
        Direction::Ascending => read.range(bucket.name(), lower, upper)?,
        Direction::Descending => read.range_rev(bucket.name(), lower, upper)?,
    };
    // Merge the committed entries with the layers above them: a layer entry replaces
    // (or, as a deletion, hides) the committed entry with its key.
    for entry in base {
        let (key, value) = entry?;
        while let Some(&(layer_key, layer_value)) = layers.peek() {
            if !before(layer_key, key, direction) {
                break;
            }
            layers.next();
            if let Some(layer_value) = layer_value {
                if !visit(layer_key, layer_value) {
                    return Ok(());
                }
            }
        }
        if let Some(&(layer_key, layer_value)) = layers.peek() {
            if layer_key == key {
                layers.next();
                if let Some(layer_value) = layer_value {
                    if !visit(layer_key, layer_value) {
                        return Ok(());
                    }
                }
                continue;
            }
        }
        if !visit(key, value) {
            return Ok(());
        }
    }
    for (layer_key, layer_value) in layers {
        if let Some(layer_value) = layer_value {
            if !visit(layer_key, layer_value) {
                return Ok(());
            }
        }
    }
    Ok(())
}

impl Backend for BtreeBackend {
    fn get(&self, bucket: Bucket, key: &[u8]) -> Result<Option<&[u8]>, BackendError> {
        match self.layered(bucket, key) {
            Some(value) => Ok(value),
            None => Ok(self.read.get(bucket.name(), key)?),
        }
    }

    fn get_durable(&self, bucket: Bucket, key: &[u8]) -> Result<Option<&[u8]>, BackendError> {
        Ok(self.read.get(bucket.name(), key)?)
    }

    fn put(&mut self, bucket: Bucket, key: &[u8], value: &[u8]) -> Result<(), BackendError> {
        self.open.set(bucket, key, Some(value));
        Ok(())
    }

    fn delete(&mut self, bucket: Bucket, key: &[u8]) -> Result<bool, BackendError> {
        let present = self.get(bucket, key)?.is_some();
        if present {
            self.open.set(bucket, key, None);
        }
        Ok(present)
    }

    fn scan(
        &self,
        bucket: Bucket,
        start: &[u8],
        end: Option<&[u8]>,
        direction: Direction,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), BackendError> {
        scan_layered(
            &self.read,
            self.layers(),
            bucket,
            start,
            end,
            direction,
            visit,
        )
    }

    fn commit(&mut self) -> Result<(), BackendError> {
        if let Some(failure) = &self.poisoned {
            return Err(BackendError::Io(std::io::Error::other(failure.clone())));
        }
        if self.open.is_empty() {
            return Ok(());
        }
        self.sealed.push(Arc::new(std::mem::take(&mut self.open)));
        self.kick();
        match &self.poisoned {
            Some(failure) => Err(BackendError::Io(std::io::Error::other(failure.clone()))),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::mvcc::backend::tests::keys;

    fn temp_path(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("tern-btree-backend-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        db_path(&dir)
    }

    #[test]
    fn reads_see_uncommitted_writes_and_commits_survive_reopen() {
        let path = temp_path("reopen");
        {
            let mut b = BtreeBackend::open(&path).unwrap();
            b.put(Bucket::Key, b"a", b"1").unwrap();
            b.put(Bucket::Meta, b"a", b"m").unwrap();
            assert_eq!(b.get(Bucket::Key, b"a").unwrap(), Some(&b"1"[..]));
            b.commit().unwrap();
            b.put(Bucket::Key, b"b", b"2").unwrap();
            // Dropped without commit: "b" is lost, "a" is not.
        }
        let mut b = BtreeBackend::open(&path).unwrap();
        assert_eq!(b.get(Bucket::Key, b"a").unwrap(), Some(&b"1"[..]));
        assert_eq!(b.get(Bucket::Meta, b"a").unwrap(), Some(&b"m"[..]));
        assert_eq!(b.get(Bucket::Key, b"b").unwrap(), None);
        assert!(b.delete(Bucket::Key, b"a").unwrap());
        assert!(!b.delete(Bucket::Key, b"a").unwrap());
        assert_eq!(b.get(Bucket::Key, b"a").unwrap(), None);
        b.commit().unwrap();
        assert_eq!(b.get(Bucket::Key, b"a").unwrap(), None);
        assert!(b.stats().unwrap().db_size_bytes > 0);
        drop(b);
        let _ = std::fs::remove_dir_all(path.parent().unwrap().parent().unwrap().parent().unwrap());
    }

    #[test]
    fn second_open_of_a_locked_file_fails() {
        let path = temp_path("lock");
        let b = BtreeBackend::open(&path).unwrap();
        assert!(BtreeBackend::open(&path).is_err());
        drop(b);
        assert!(BtreeBackend::open(&path).is_ok());
        let _ = std::fs::remove_dir_all(path.parent().unwrap().parent().unwrap().parent().unwrap());
    }

    /// A second open of a locked file must fail before touching it: `Db::open` cuts bytes
    /// past the last commit, which the lock holder may be writing.
    #[test]
    fn second_open_of_a_locked_file_leaves_the_file_alone() {
        let path = temp_path("lock-untouched");
        let b = BtreeBackend::open(&path).unwrap();
        let tail = vec![7u8; 4 * btree::PAGE_BYTES];
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        std::io::Write::write_all(&mut &file, &tail).unwrap();
        let len = std::fs::metadata(&path).unwrap().len();
        assert!(BtreeBackend::open(&path).is_err());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), len);
        drop(b);
        let _ = std::fs::remove_dir_all(path.parent().unwrap().parent().unwrap().parent().unwrap());
    }

    #[test]
    fn scans_agree_committed_and_uncommitted_across_chunks() {
        let path = temp_path("scan");
        let mut b = BtreeBackend::open(&path).unwrap();
        let n = 519;
        for i in 0..n {
            b.put(Bucket::Key, format!("k{i:05}").as_bytes(), b"v")
                .unwrap();
        }
        b.put(Bucket::Meta, b"k", b"other bucket").unwrap();
        let check = |b: &BtreeBackend| {
            let all = keys(b, b"", None, Direction::Ascending);
            assert_eq!(all.len(), n);
            assert!(all.windows(2).all(|w| w[0] < w[1]));
            let mut rev = keys(b, b"", None, Direction::Descending);
            rev.reverse();
            assert_eq!(rev, all);
            let bounded = keys(b, b"k00010", Some(b"k00300"), Direction::Ascending);
            assert_eq!(bounded.len(), 290);
            assert!(keys(b, b"k2", Some(b"k1"), Direction::Ascending).is_empty());
            let mut seen = 0;
            b.scan(Bucket::Key, b"", None, Direction::Ascending, &mut |_, _| {
                seen += 1;
                seen < 300
            })
            .unwrap();
            assert_eq!(seen, 300);
        };
        check(&b); // through the open layer
        b.commit().unwrap();
        check(&b); // through the read snapshot
        b.defragment().unwrap();
        check(&b);
        drop(b);
        let _ = std::fs::remove_dir_all(path.parent().unwrap().parent().unwrap().parent().unwrap());
    }

    /// A background writer: jobs wait in `take_job` and may run on another thread while
    /// the backend keeps taking writes. Reads must see every write at every point, and
    /// `get_durable` only what a finished commit holds.
    #[test]
    fn layers_stay_readable_while_a_background_commit_runs() {
        let path = temp_path("background");
        let mut b = BtreeBackend::open(&path).unwrap();
        b.run_writer_in_background();
        b.put(Bucket::Key, b"a", b"1").unwrap();
        b.put(Bucket::Key, b"c", b"3").unwrap();
        b.commit().unwrap();
        let job = b.take_job().expect("a commit job is ready");
        assert!(b.take_job().is_none(), "one job at a time");
        // While it runs: new writes, a deletion of a key being committed, a second commit
        // that must wait.
        let running = std::thread::spawn(move || job.run());
        b.put(Bucket::Key, b"b", b"2").unwrap();
        assert!(b.delete(Bucket::Key, b"c").unwrap());
        assert_eq!(b.get(Bucket::Key, b"a").unwrap(), Some(&b"1"[..]));
        assert_eq!(b.get(Bucket::Key, b"c").unwrap(), None);
        assert_eq!(
            keys(&b, b"", None, Direction::Ascending),
            vec![b"a".to_vec(), b"b".to_vec()]
        );
        b.commit().unwrap();
        assert!(
            b.take_job().is_none(),
            "the second commit waits for the first"
        );
        b.put(Bucket::Key, b"d", b"4").unwrap();
        assert_eq!(b.get_durable(Bucket::Key, b"a").unwrap(), None);
        b.job_finished(running.join().unwrap());
        assert_eq!(b.get_durable(Bucket::Key, b"a").unwrap(), Some(&b"1"[..]));
        assert_eq!(b.get_durable(Bucket::Key, b"c").unwrap(), Some(&b"3"[..]));
        let second = b.take_job().expect("the sealed layer's commit");
        b.job_finished(second.run());
        assert_eq!(b.get_durable(Bucket::Key, b"c").unwrap(), None);
        assert_eq!(
            b.get_durable(Bucket::Key, b"d").unwrap(),
            None,
            "d was never committed"
        );
        let mut rev = keys(&b, b"", None, Direction::Descending);
        rev.reverse();
        assert_eq!(rev, vec![b"a".to_vec(), b"b".to_vec(), b"d".to_vec()]);
        assert!(!b.is_busy());
        drop(b);
        let _ = std::fs::remove_dir_all(path.parent().unwrap().parent().unwrap().parent().unwrap());
    }

    /// Random puts, deletes, commits and job completions against a `BTreeMap` model; a
    /// failure prints its seed.
    #[test]
    fn background_writer_matches_a_model() {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        let mut rng = seed | 1;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let path = temp_path("model");
        let mut b = BtreeBackend::open(&path).unwrap();
        b.run_writer_in_background();
        let mut model = std::collections::BTreeMap::<Vec<u8>, Vec<u8>>::new();
        let mut durable = model.clone();
        let mut committed_at_seal = Vec::new();
        let mut running: Option<(WriterJob, Vec<_>)> = None;
        for step in 0..4000 {
            // Few keys and rare job completions, so that keys repeat across several layers.
            let key = format!("k{:03}", next() % 40).into_bytes();
            match next() % 16 {
                0..=7 => {
                    let value = step.to_string().into_bytes();
                    b.put(Bucket::Key, &key, &value).unwrap();
                    model.insert(key.clone(), value);
                }
                8..=11 => {
                    assert_eq!(
                        b.delete(Bucket::Key, &key).unwrap(),
                        model.remove(&key).is_some(),
                        "seed {seed}"
                    );
                }
                12..=14 => {
                    b.commit().unwrap();
                    committed_at_seal.push(model.clone());
                }
                _ => {
                    if let Some((job, states)) = running.take() {
                        b.job_finished(job.run());
                        durable = states.last().cloned().unwrap_or(durable);
                    }
                }
            }
            // A job readied now carries every layer sealed since the last one started.
            if running.is_none() {
                if let Some(job) = b.take_job() {
                    running = Some((job, std::mem::take(&mut committed_at_seal)));
                }
            }
            assert_eq!(
                b.get(Bucket::Key, &key).unwrap(),
                model.get(&key).map(Vec::as_slice),
                "seed {seed}"
            );
            assert_eq!(
                b.get_durable(Bucket::Key, &key).unwrap(),
                durable.get(&key).map(Vec::as_slice),
                "seed {seed}"
            );
            let other = format!("k{:03}", next() % 40).into_bytes();
            assert_eq!(
                b.get(Bucket::Key, &other).unwrap(),
                model.get(&other).map(Vec::as_slice),
                "seed {seed}"
            );
            if step % 97 == 0 {
                let mut all = Vec::new();
                b.scan(Bucket::Key, b"", None, Direction::Ascending, &mut |k, v| {
                    all.push((k.to_vec(), v.to_vec()));
                    true
                })
                .unwrap();
                assert_eq!(
                    all,
                    model.clone().into_iter().collect::<Vec<_>>(),
                    "seed {seed}"
                );
                let mut rev = keys(&b, b"k010", Some(b"k020"), Direction::Descending);
                rev.reverse();
                let want: Vec<_> = model
                    .range(b"k010".to_vec()..b"k020".to_vec())
                    .map(|(k, _)| k.clone())
                    .collect();
                assert_eq!(rev, want, "seed {seed}");
            }
        }
        drop(b);
        let _ = std::fs::remove_dir_all(path.parent().unwrap().parent().unwrap().parent().unwrap());
    }
}
