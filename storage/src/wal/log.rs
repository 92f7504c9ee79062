//! The live WAL: open/recover, group commit, rotation, release and entry lookups.
//!
//! Runs inside one glommio executor (the raft executor); all state is `Rc<RefCell<..>>` and no
//! borrow is ever held across an `.await`. One flusher task owns the write path:
//!
//! ```text
//!   append() ──push──▶ queue ──take ≤ batch_bytes_max──▶ write_at(O_DIRECT) ─▶ fdatasync ─▶ wake
//!   (any task)          ▲                                     (io_uring)        (io_uring)    │
//!                       └──────── appends arriving meanwhile wait here: the next batch ◀──────┘
//! ```
//!
//! Invariants:
//! - at most one batch write or fdatasync is in flight; a batch is written only after the
//!   previous one is durable, so only the last batch of the last segment can ever be torn;
//! - an append's records go into one batch, and its future resolves only after the fdatasync
//!   covering that batch returned success;
//! - the flusher never waits on a timer when the WAL was idle: it yields once to the run queue
//!   (so appenders woken by the previous completion can join), then writes;
//! - after a failed write or fdatasync the WAL is poisoned: every later append fails.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Duration;

use glommio::io::{DmaFile, OpenOptions};

use super::error::{Result, WalError};
use super::log_state::{newest_snapshot, LogState};
use super::record::{
    batch_bytes_for, decode_frame, encode_batch_into, entry_header, frame_bytes, HardState,
    Metadata, RecordType, SnapshotMarker, WalRecord, BATCH_FRAME_BYTES, SECTOR_BYTES,
};
use super::scan::{scan_segment, SegmentEnd};
use super::segment::{find_seq_gap, list_segments, SegmentName};
use super::zero_ahead::{zero_ahead, ZeroAhead};

/// Tunables. Every queue and batch has a named bound.
#[derive(Clone, Debug)]
pub struct WalOptions {
    /// Size each segment is preallocated to (etcd: 64 MiB).
    pub segment_bytes: u64,
    /// Most bytes one batch (one write + one fdatasync) carries.
    pub batch_bytes_max: usize,
    /// Extra time the flusher may wait for a batch to fill, only while the WAL is busy (the
    /// previous batch held more than one append). Zero (the default) never waits.
    pub batch_delay_max: Duration,
    /// Bound on bytes queued for the next batches; appends beyond it fail with `QueueFull`.
    pub queue_bytes_max: usize,
    /// Bound on appends queued for the next batches.
    pub queue_appends_max: usize,
    /// Batches end on this boundary: the disk's physical block, so a write never shares a block
    /// with durable data (see docs/wal.md, "What is assumed of the disk").
    pub write_align_bytes: usize,
    /// Bound on bytes one `entries` read spans on disk.
    pub read_span_bytes_max: usize,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_bytes: 64 << 20,
            batch_bytes_max: 4 << 20,
            batch_delay_max: Duration::ZERO,
            queue_bytes_max: 64 << 20,
            queue_appends_max: 1 << 16,
            write_align_bytes: 4096,
            read_span_bytes_max: 1 << 20,
        }
    }
}

impl WalOptions {
    fn validate(&self) -> Result<()> {
        let bad = |why: &str| Err(WalError::InvalidOptions(why.to_string()));
        if self.write_align_bytes < SECTOR_BYTES || !self.write_align_bytes.is_power_of_two() {
            return bad("write_align_bytes must be a power of two ≥ 512");
        }
        if !self
            .segment_bytes
            .is_multiple_of(self.write_align_bytes as u64)
        {
            return bad("segment_bytes must be a multiple of write_align_bytes");
        }
        if (self.batch_bytes_max as u64) * 2 > self.segment_bytes {
            return bad("batch_bytes_max must be at most half of segment_bytes");
        }
        if self.batch_bytes_max < 2 * self.write_align_bytes {
            return bad("batch_bytes_max must be at least two write_align_bytes");
        }
        if self.queue_bytes_max < self.batch_bytes_max || self.queue_appends_max == 0 {
            return bad("queue bounds must hold at least one full batch");
        }
        Ok(())
    }

    /// Largest encoded size of one append: it must fit a fresh segment after the header records.
    fn append_bytes_max(&self) -> usize {
        self.segment_bytes as usize / 2
    }
}

/// What `open` found on disk.
#[derive(Clone, Debug, Default)]
pub struct Recovered {
    pub metadata: Metadata,
    pub hard_state: Option<HardState>,
    pub snapshot: Option<SnapshotMarker>,
    /// Entries after the snapshot marker, in raft-index order.
    pub entries: Vec<Entry>,
    /// Set when an incomplete last batch (a torn write) was cut off.
    pub torn_tail: Option<TornTail>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    pub segment: PathBuf,
    pub offset: u64,
    pub bytes_zeroed: u64,
    pub reason: String,
}

/// One raft entry as stored: the WAL's header fields plus the caller's opaque bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub raft_index: u64,
    pub term: u64,
    pub data: Vec<u8>,
}

/// Proof of durability handed to an append's caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Durable {
    /// Sequence number of the batch (one write + one fdatasync) that made the append durable.
    pub batch_seq: u64,
    /// Last raft index durable in the log once this batch landed (snapshot index if none).
    pub last_raft_index: u64,
    /// How long the batch's fdatasync took (zero for a barrier that wrote nothing), so that
    /// the caller can warn of a slow disk in its own words.
    pub fdatasync_took: std::time::Duration,
}

/// Counters since open.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WalStats {
    pub batches: u64,
    pub fdatasyncs: u64,
    pub appends: u64,
    pub records: u64,
    pub bytes_written: u64,
    pub segments_created: u64,
    pub segments_released: u64,
    /// Chunks of preallocated segment space zeroed ahead of the writer (`zero_ahead`).
    pub chunks_zeroed: u64,
}

#[derive(Clone, Copy, Debug)]
struct EntryLoc {
    segment_seq: u64,
    frame_offset: u64,
    frame_bytes: u32,
}

pub(super) struct Segment {
    name: SegmentName,
    path: PathBuf,
    pub(super) file: Rc<DmaFile>,
}

/// One append waiting for its batch.
struct Pending {
    records: Vec<WalRecord>,
    frame_bytes: usize,
    done: Rc<RefCell<Completion>>,
}

#[derive(Default)]
struct Completion {
    result: Option<Result<Durable>>,
    waker: Option<Waker>,
}

pub(super) struct Shared {
    dir: PathBuf,
    pub(super) opts: WalOptions,
    queue: VecDeque<Pending>,
    queue_bytes: usize,
    flusher_waker: Option<Waker>,
    pub(super) closing: bool,
    flusher_done: bool,
    pub(super) close_waker: Option<Waker>,
    pub(super) poisoned: Option<String>,
    /// The log as submitted (validated appends, durable or not): used to check new appends.
    submitted: Submitted,
    /// The log as durable on disk.
    durable: LogState<EntryLoc>,
    pub(super) segments: BTreeMap<u64, Segment>,
    /// End of the durable bytes of the current segment: the next batch is written here.
    pub(super) write_offset: u64,
    /// End of the batch being written and synced now, or 0: nothing may be zeroed below it.
    pub(super) write_in_flight_end: u64,
    /// Zeroing ahead of the writer (see `zero_ahead`).
    pub(super) zero_ahead: ZeroAhead,
    /// Highest raft index ever written (names the next segment: every entry in a segment is
    /// below the next segment's name index, which is what `release_below` relies on).
    written_max_index: u64,
    batch_seq: u64,
    last_batch_appends: usize,
    pub(super) stats: WalStats,
}

/// The log's bounds as of the last accepted append, durable or not. Mirrors `LogState`'s rules
/// in O(1), so checking an append does not touch the entry index.
#[derive(Clone, Copy, Debug)]
struct Submitted {
    snapshot_index: u64,
    last_index: u64,
}

impl Submitted {
    fn apply(&mut self, record: &WalRecord) -> std::result::Result<(), String> {
        match record {
            WalRecord::Entry { raft_index, .. } => {
                if *raft_index <= self.snapshot_index {
                    return Err(format!(
                        "entry {raft_index} is at or below the snapshot marker {}",
                        self.snapshot_index
                    ));
                }
                if *raft_index > self.last_index + 1 {
                    return Err(format!(
                        "entry {raft_index} leaves a gap after last index {}",
                        self.last_index
                    ));
                }
                self.last_index = *raft_index;
            }
            WalRecord::Snapshot(snap) => {
                if snap.raft_index < self.snapshot_index {
                    return Err(format!(
                        "snapshot marker {} is below the current one {}",
                        snap.raft_index, self.snapshot_index
                    ));
                }
                self.snapshot_index = snap.raft_index;
                self.last_index = self.last_index.max(snap.raft_index);
            }
            WalRecord::HardState(_) | WalRecord::Metadata(_) => {}
        }
        Ok(())
    }
}

/// The write-ahead log. Cheap to clone (all clones share one log); `!Send`: it lives on the
/// executor that opened it.
#[derive(Clone)]
pub struct Wal {
    shared: Rc<RefCell<Shared>>,
}

fn complete(done: &Rc<RefCell<Completion>>, result: Result<Durable>) {
    let mut slot = done.borrow_mut();
    slot.result = Some(result);
    if let Some(waker) = slot.waker.take() {
        waker.wake();
    }
}

impl Wal {
    /// Creates a new WAL in `dir` (conventionally `segment::wal_dir(data_dir)`), which must not
    /// already hold segments. The first segment starts with `metadata`.
    pub async fn create(dir: &Path, opts: WalOptions, metadata: Metadata) -> Result<Wal> {
        opts.validate()?;
        std::fs::create_dir_all(dir)
            .map_err(|e| WalError::io(format!("create {}", dir.display()), &e))?;
        // glommio opens directories by absolute path only.
        let dir = &std::fs::canonicalize(dir)
            .map_err(|e| WalError::io(format!("resolve {}", dir.display()), &e))?;
        let (names, temps) = list_segments(dir).map_err(|e| WalError::io("list segments", &e))?;
        if !names.is_empty() {
            return Err(WalError::AlreadyExists(dir.to_path_buf()));
        }
        remove_temps(&temps)?;
        probe_iopoll(dir).await?;
        let state = LogState {
            metadata: Some(metadata),
            ..LogState::default()
        };
        let wal = Wal::from_parts(dir, opts, state, BTreeMap::new(), 0, 0);
        let name = SegmentName {
            seq: 0,
            raft_index: 0,
        };
        let file = start_segment(&wal.shared, name, &[WalRecord::Metadata(metadata)]).await?;
        {
            let mut s = wal.shared.borrow_mut();
            let path = dir.join(name.file_name());
            s.segments.insert(0, Segment { name, path, file });
        }
        spawn_writers(&wal.shared);
        Ok(wal)
    }

    /// Opens the WAL in `dir`: scans every segment, verifies every CRC, cuts a torn tail, and
    /// fails with `Corrupt` on damage anywhere else.
    pub async fn open(dir: &Path, opts: WalOptions) -> Result<(Wal, Recovered)> {
        opts.validate()?;
        let dir = &match std::fs::canonicalize(dir) {
            Ok(dir) => dir,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(WalError::NotFound(dir.to_path_buf()))
            }
            Err(e) => return Err(WalError::io(format!("resolve {}", dir.display()), &e)),
        };
        let (names, temps) = match list_segments(dir) {
            Ok(found) => found,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(WalError::NotFound(dir.to_path_buf()))
            }
            Err(e) => return Err(WalError::io("list segments", &e)),
        };
        if names.is_empty() {
            return Err(WalError::NotFound(dir.to_path_buf()));
        }
        if let Some((a, b)) = find_seq_gap(&names) {
            return Err(WalError::Corrupt {
                segment: dir.join(b.file_name()),
                offset: 0,
                reason: format!(
                    "segment sequence jumps from {} to {}: a segment is missing",
                    a.seq, b.seq
                ),
            });
        }
        remove_temps(&temps)?;
        probe_iopoll(dir).await?;

        let mut torn_tail = None;
        let mut write_offset = 0;
        let last_seq = names.last().expect("non-empty").seq;
        let mut scans = Vec::with_capacity(names.len());
        let mut segments = BTreeMap::new();
        for name in &names {
            let path = dir.join(name.file_name());
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .dma_open(&path)
                .await
                .map_err(|e| WalError::from_glommio(format!("open {}", path.display()), e))?;
            let bytes = read_whole(&file, &path).await?;
            let scan = scan_segment(&bytes, name.seq);
            drop(bytes);
            let corrupt = |offset: u64, reason: String| WalError::Corrupt {
                segment: path.clone(),
                offset,
                reason,
            };
            match &scan.end {
                SegmentEnd::Clean { next_offset } => write_offset = *next_offset,
                SegmentEnd::Corrupt {
                    offset,
                    valid_batch_at,
                    reason,
                } => {
                    return Err(corrupt(
                        *offset,
                        format!("{reason}; a valid batch follows at offset {valid_batch_at}"),
                    ))
                }
                SegmentEnd::Torn {
                    offset,
                    nonzero_end,
                    reason,
                } => {
                    if name.seq != last_seq {
                        return Err(corrupt(
                            *offset,
                            format!("{reason}; later segments exist, so this is not a torn tail"),
                        ));
                    }
                    zero_range(&file, *offset, *nonzero_end, &path).await?;
                    torn_tail = Some(TornTail {
                        segment: path.clone(),
                        offset: *offset,
                        bytes_zeroed: nonzero_end - offset,
                        reason: reason.clone(),
                    });
                    write_offset = *offset;
                }
            }
            scans.push((name.seq, path.clone(), scan));
            segments.insert(
                name.seq,
                Segment {
                    name: *name,
                    path,
                    file: Rc::new(file),
                },
            );
        }

        // Replay starts from the newest snapshot marker: released segments may have held
        // entries between an older marker and it (see docs/wal.md, "Release").
        let mut state: LogState<(EntryLoc, Vec<u8>)> =
            LogState::starting_at(newest_snapshot(scans.iter().flat_map(|(_, _, scan)| {
                scan.batches
                    .iter()
                    .flat_map(|b| b.records.iter().map(|r| &r.record))
            })));
        let mut written_max_index = 0;
        // Records are moved out of the scans, so entry bytes are held once.
        for (seq, path, scan) in scans {
            for batch in scan.batches {
                for rec in batch.records {
                    let loc = EntryLoc {
                        segment_seq: seq,
                        frame_offset: rec.frame_offset,
                        frame_bytes: rec.frame_bytes,
                    };
                    let (record, data) = match rec.record {
                        WalRecord::Entry {
                            raft_index,
                            term,
                            data,
                        } => {
                            written_max_index = written_max_index.max(raft_index);
                            let header = WalRecord::Entry {
                                raft_index,
                                term,
                                data: Vec::new(),
                            };
                            (header, data)
                        }
                        other => (other, Vec::new()),
                    };
                    state
                        .apply(&record, || (loc, data))
                        .map_err(|reason| WalError::Corrupt {
                            segment: path.clone(),
                            offset: rec.frame_offset,
                            reason,
                        })?;
                }
            }
        }
        let Some(metadata) = state.metadata else {
            return Err(WalError::Corrupt {
                segment: dir.join(names[0].file_name()),
                offset: 0,
                reason: "no metadata record in the log".to_string(),
            });
        };

        let first_index = state.first_index;
        let mut entries = Vec::with_capacity(state.entries.len());
        let mut locs = std::collections::VecDeque::with_capacity(state.entries.len());
        for (i, (term, (loc, data))) in state.entries.into_iter().enumerate() {
            entries.push(Entry {
                raft_index: first_index + i as u64,
                term,
                data,
            });
            locs.push_back((term, loc));
        }
        let recovered = Recovered {
            metadata,
            hard_state: state.hard_state,
            snapshot: (state.snapshot != SnapshotMarker::default()).then_some(state.snapshot),
            entries,
            torn_tail,
        };
        let durable = LogState {
            metadata: state.metadata,
            hard_state: state.hard_state,
            snapshot: state.snapshot,
            first_index,
            entries: locs,
        };
        let wal = Wal::from_parts(
            dir,
            opts,
            durable,
            segments,
            write_offset,
            written_max_index,
        );
        spawn_writers(&wal.shared);
        Ok((wal, recovered))
    }

    fn from_parts(
        dir: &Path,
        opts: WalOptions,
        durable: LogState<EntryLoc>,
        segments: BTreeMap<u64, Segment>,
        write_offset: u64,
        written_max_index: u64,
    ) -> Wal {
        let submitted = Submitted {
            snapshot_index: durable.snapshot.raft_index,
            last_index: durable.last_index(),
        };
        Wal {
            shared: Rc::new(RefCell::new(Shared {
                dir: dir.to_path_buf(),
                opts,
                queue: VecDeque::new(),
                queue_bytes: 0,
                flusher_waker: None,
                closing: false,
                flusher_done: false,
                close_waker: None,
                poisoned: None,
                submitted,
                durable,
                segments,
                write_offset,
                write_in_flight_end: 0,
                zero_ahead: ZeroAhead::default(),
                written_max_index,
                batch_seq: 0,
                last_batch_appends: 0,
                stats: WalStats::default(),
            })),
        }
    }

    /// Queues `records` as one atomic unit and returns a future that resolves once they are
    /// durable. Validation and queueing happen now, in call order; the future only waits. An
    /// empty `records` is a barrier: it resolves once everything queued before it is durable.
    pub fn append(
        &self,
        records: Vec<WalRecord>,
    ) -> impl Future<Output = Result<Durable>> + 'static {
        let done = Rc::new(RefCell::new(Completion::default()));
        if let Err(e) = self.enqueue(records, &done) {
            done.borrow_mut().result = Some(Err(e));
        }
        std::future::poll_fn(move |cx| {
            let mut slot = done.borrow_mut();
            match slot.result.take() {
                Some(result) => Poll::Ready(result),
                None => {
                    slot.waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
    }

    fn enqueue(&self, records: Vec<WalRecord>, done: &Rc<RefCell<Completion>>) -> Result<()> {
        let mut s = self.shared.borrow_mut();
        if let Some(why) = &s.poisoned {
            return Err(WalError::Poisoned(why.clone()));
        }
        if s.closing {
            return Err(WalError::Closed);
        }
        let frame_bytes: usize = records.iter().map(WalRecord::frame_bytes).sum();
        if frame_bytes > s.opts.append_bytes_max() {
            return Err(WalError::InvalidAppend(format!(
                "{frame_bytes} bytes exceed the per-append maximum {}",
                s.opts.append_bytes_max()
            )));
        }
        if s.queue.len() >= s.opts.queue_appends_max
            || s.queue_bytes + frame_bytes > s.opts.queue_bytes_max
        {
            return Err(WalError::QueueFull {
                queue_bytes: s.queue_bytes,
                queue_appends: s.queue.len(),
            });
        }
        let mut next = s.submitted;
        for record in &records {
            next.apply(record).map_err(WalError::InvalidAppend)?;
        }
        s.submitted = next;
        s.queue_bytes += frame_bytes;
        s.queue.push_back(Pending {
            records,
            frame_bytes,
            done: done.clone(),
        });
        if let Some(waker) = s.flusher_waker.take() {
            waker.wake();
        }
        Ok(())
    }

    /// Resolves once everything appended before this call is durable.
    pub async fn sync_barrier(&self) -> Result<Durable> {
        self.append(Vec::new()).await
    }

    /// Deletes whole segments that hold only entries below `raft_index`. `raft_index` must not
    /// exceed the durable snapshot marker: the caller first appends a `Snapshot` record and
    /// awaits it. The segment being written is never released. Returns the segments deleted.
    pub async fn release_below(&self, raft_index: u64) -> Result<Vec<PathBuf>> {
        let (victims, dir) = {
            let mut s = self.shared.borrow_mut();
            if raft_index > s.durable.snapshot.raft_index {
                return Err(WalError::InvalidAppend(format!(
                    "release below {raft_index} is above the durable snapshot marker {}",
                    s.durable.snapshot.raft_index
                )));
            }
            // Segment k holds only entries below the name index of segment k+1.
            let seqs: Vec<u64> = s.segments.keys().copied().collect();
            let mut victims = Vec::new();
            for pair in seqs.windows(2) {
                let next = &s.segments[&pair[1]];
                if next.name.raft_index <= raft_index {
                    victims.push(pair[0]);
                } else {
                    break;
                }
            }
            let removed: Vec<Segment> = victims
                .iter()
                .filter_map(|seq| s.segments.remove(seq))
                .collect();
            s.stats.segments_released += removed.len() as u64;
            (removed, s.dir.clone())
        };
        let mut paths = Vec::new();
        // Oldest first: a crash midway leaves a consecutive suffix of segments.
        for segment in victims {
            glommio::io::remove(&segment.path).await.map_err(|e| {
                WalError::from_glommio(format!("remove {}", segment.path.display()), e)
            })?;
            paths.push(segment.path);
        }
        if !paths.is_empty() {
            sync_dir(&dir).await?;
        }
        Ok(paths)
    }

    /// Term of the durable entry at `raft_index` (the snapshot marker's term at its index).
    pub fn term(&self, raft_index: u64) -> Result<u64> {
        let s = self.shared.borrow();
        if let Some(term) = s.durable.term(raft_index) {
            return Ok(term);
        }
        Err(self.missing(&s, raft_index))
    }

    fn missing(&self, s: &Shared, raft_index: u64) -> WalError {
        if raft_index < s.durable.first_index {
            WalError::Compacted {
                raft_index,
                first_index: s.durable.first_index,
            }
        } else {
            WalError::Unavailable {
                raft_index,
                last_index: s.durable.last_index(),
            }
        }
    }

    /// First durable entry index (snapshot index + 1 when the log is empty).
    pub fn first_index(&self) -> u64 {
        self.shared.borrow().durable.first_index
    }

    /// Last durable entry index (the snapshot's when the log is empty).
    pub fn last_index(&self) -> u64 {
        self.shared.borrow().durable.last_index()
    }

    pub fn stats(&self) -> WalStats {
        self.shared.borrow().stats
    }

    /// Reads durable entries `[lo, hi)` back from disk, verifying each frame's CRC. Stops once
    /// the data read exceeds `max_bytes`, but always returns at least one entry (raft's rule).
    pub async fn entries(&self, lo: u64, hi: u64, max_bytes: u64) -> Result<Vec<Entry>> {
        let mut locs = Vec::new();
        {
            let s = self.shared.borrow();
            if lo > hi {
                return Err(WalError::InvalidAppend(format!(
                    "entries: lo {lo} > hi {hi}"
                )));
            }
            if lo < s.durable.first_index {
                return Err(self.missing(&s, lo));
            }
            if hi > s.durable.last_index() + 1 {
                return Err(self.missing(&s, hi - 1));
            }
            for raft_index in lo..hi {
                let (term, loc) = s.durable.entries[(raft_index - s.durable.first_index) as usize];
                let file = s.segments[&loc.segment_seq].file.clone();
                locs.push((
                    raft_index,
                    term,
                    loc,
                    file,
                    s.segments[&loc.segment_seq].path.clone(),
                ));
            }
        }
        let span_max = self.shared.borrow().opts.read_span_bytes_max as u64;
        let mut out = Vec::new();
        let mut data_bytes = 0u64;
        let mut i = 0;
        while i < locs.len() {
            // One read covers a run of entries in the same segment within `read_span_bytes_max`.
            let start = locs[i].2.frame_offset;
            let seq = locs[i].2.segment_seq;
            let mut j = i + 1;
            while j < locs.len()
                && locs[j].2.segment_seq == seq
                && locs[j].2.frame_offset > start
                && locs[j].2.frame_offset + locs[j].2.frame_bytes as u64 - start <= span_max
            {
                j += 1;
            }
            let end = locs[j - 1].2.frame_offset + locs[j - 1].2.frame_bytes as u64;
            let file = &locs[i].3;
            let path = &locs[i].4;
            let bytes = file
                .read_at(start, (end - start) as usize)
                .await
                .map_err(|e| WalError::from_glommio(format!("read {}", path.display()), e))?;
            for (raft_index, term, loc, _, path) in &locs[i..j] {
                let at = (loc.frame_offset - start) as usize;
                let corrupt = |reason: String| WalError::Corrupt {
                    segment: path.clone(),
                    offset: loc.frame_offset,
                    reason,
                };
                let frame = decode_frame(&bytes[at..], seq, loc.frame_offset)
                    .map_err(|e| corrupt(format!("re-reading entry {raft_index}: {e}")))?;
                let (stored_index, stored_term) = entry_header(frame.payload);
                if frame.record_type != RecordType::Entry
                    || stored_index != *raft_index
                    || stored_term != *term
                {
                    return Err(corrupt(format!("frame does not hold entry {raft_index}")));
                }
                data_bytes += frame.payload.len() as u64 - 16;
                if !out.is_empty() && data_bytes > max_bytes {
                    return Ok(out);
                }
                out.push(Entry {
                    raft_index: *raft_index,
                    term: *term,
                    data: frame.payload[16..].to_vec(),
                });
            }
            i = j;
        }
        Ok(out)
    }

    /// Waits for queued appends to become durable, stops the flusher and closes the files.
    /// Call it before dropping the last clone: the flusher task holds the log until then.
    pub async fn close(self) -> Result<()> {
        {
            let mut s = self.shared.borrow_mut();
            s.closing = true;
            if let Some(waker) = s.flusher_waker.take() {
                waker.wake();
            }
            s.zero_ahead.wake_task();
        }
        std::future::poll_fn(|cx| {
            let mut s = self.shared.borrow_mut();
            if s.flusher_done && s.zero_ahead.done {
                Poll::Ready(())
            } else {
                s.close_waker = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await;
        let segments = std::mem::take(&mut self.shared.borrow_mut().segments);
        for (_, segment) in segments {
            // Other clones of the file (an in-flight `entries`) keep it open until they finish.
            let _ = segment.file.close_rc().await;
        }
        let s = self.shared.borrow();
        match &s.poisoned {
            Some(why) => Err(WalError::Poisoned(why.clone())),
            None => Ok(()),
        }
    }
}

/// glommio decides once per block device whether `O_DIRECT` reads may use its `IOPOLL` ring,
/// by reading the first block of the first `DmaFile` opened there. When that file is empty the
/// read "succeeds" with zero bytes and every later read fails with `EOPNOTSUPP` on devices
/// without polling (virtio here). Opening a file that holds a full block first makes the probe
/// real; glommio caches the answer for the process.
async fn probe_iopoll(dir: &Path) -> Result<()> {
    const PROBE_FILE: &str = ".iopoll-probe";
    let path = dir.join(PROBE_FILE);
    std::fs::write(&path, vec![0u8; 4096])
        .map_err(|e| WalError::io(format!("write {}", path.display()), &e))?;
    let file = DmaFile::open(&path)
        .await
        .map_err(|e| WalError::from_glommio(format!("open {}", path.display()), e))?;
    let _ = file.close().await;
    std::fs::remove_file(&path)
        .map_err(|e| WalError::io(format!("remove {}", path.display()), &e))?;
    Ok(())
}

fn remove_temps(temps: &[PathBuf]) -> Result<()> {
    for temp in temps {
        std::fs::remove_file(temp)
            .map_err(|e| WalError::io(format!("remove {}", temp.display()), &e))?;
    }
    Ok(())
}

async fn sync_dir(dir: &Path) -> Result<()> {
    let handle = glommio::io::Directory::open(dir)
        .await
        .map_err(|e| WalError::from_glommio(format!("open dir {}", dir.display()), e))?;
    handle
        .sync()
        .await
        .map_err(|e| WalError::from_glommio(format!("fsync dir {}", dir.display()), e))?;
    let _ = handle.close().await;
    Ok(())
}

/// Reads a whole segment.
async fn read_whole(file: &DmaFile, path: &Path) -> Result<glommio::io::ReadResult> {
    // One read into one DMA buffer, scanned in place: copying a 64 MiB segment into a Vec
    // cost a fifth of a restart's time.
    let size = file
        .file_size()
        .await
        .map_err(|e| WalError::from_glommio(format!("stat {}", path.display()), e))?;
    let bytes = file
        .read_at(0, size as usize)
        .await
        .map_err(|e| WalError::from_glommio(format!("read {}", path.display()), e))?;
    if bytes.len() as u64 != size {
        return Err(WalError::Corrupt {
            segment: path.to_path_buf(),
            offset: bytes.len() as u64,
            reason: format!("short read: {} of {size} bytes", bytes.len()),
        });
    }
    Ok(bytes)
}

/// Overwrites `[from, to)` with zeros and makes that durable (cutting a torn tail).
async fn zero_range(file: &DmaFile, from: u64, to: u64, path: &Path) -> Result<()> {
    assert_eq!(from % SECTOR_BYTES as u64, 0);
    let align = file.alignment();
    let mut pos = from;
    while pos < to {
        let len = (to - pos).min(1 << 20);
        let len_aligned = len.div_ceil(align) * align;
        let mut buf = file.alloc_dma_buffer(len_aligned as usize);
        buf.as_bytes_mut().fill(0);
        file.write_at(buf, pos).await.map_err(|e| {
            WalError::from_glommio(format!("zero torn tail of {}", path.display()), e)
        })?;
        pos += len_aligned;
    }
    file.fdatasync()
        .await
        .map_err(|e| WalError::from_glommio(format!("fdatasync {}", path.display()), e))?;
    Ok(())
}

/// Writes one batch of `records` at `offset` of `file` and fdatasyncs it. Returns the frame
/// offset of each record.
async fn write_batch(
    file: &DmaFile,
    path: &Path,
    segment_seq: u64,
    offset: u64,
    write_align_bytes: usize,
    records: &[&WalRecord],
) -> Result<(Vec<u64>, u64, std::time::Duration)> {
    let records_bytes: usize = records.iter().map(|r| r.frame_bytes()).sum();
    let batch_bytes = batch_bytes_for(records_bytes, write_align_bytes);
    let mut buf = file.alloc_dma_buffer(batch_bytes);
    encode_batch_into(
        buf.as_bytes_mut(),
        segment_seq,
        offset,
        records.iter().copied(),
        records.len(),
    );
    let mut frame_offsets = Vec::with_capacity(records.len());
    let mut at = offset + BATCH_FRAME_BYTES as u64;
    for record in records {
        frame_offsets.push(at);
        at += record.frame_bytes() as u64;
    }
    let written = file
        .write_at(buf, offset)
        .await
        .map_err(|e| WalError::from_glommio(format!("write {}", path.display()), e))?;
    if written != batch_bytes {
        return Err(WalError::Io {
            context: format!("write {}", path.display()),
            kind: std::io::ErrorKind::WriteZero,
            message: format!("short write: {written} of {batch_bytes} bytes"),
        });
    }
    let sync_started = std::time::Instant::now();
    file.fdatasync()
        .await
        .map_err(|e| WalError::from_glommio(format!("fdatasync {}", path.display()), e))?;
    Ok((frame_offsets, batch_bytes as u64, sync_started.elapsed()))
}

/// Creates segment `name` as a temp file, preallocates it, writes `header` as its first batch,
/// makes it durable, then renames it into place and syncs the directory. A crash before the
/// rename leaves only a temp file, which `open` removes.
async fn start_segment(
    shared: &Rc<RefCell<Shared>>,
    name: SegmentName,
    header: &[WalRecord],
) -> Result<Rc<DmaFile>> {
    let (dir, opts) = {
        let s = shared.borrow();
        (s.dir.clone(), s.opts.clone())
    };
    let temp = dir.join(name.temp_file_name());
    let path = dir.join(name.file_name());
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .dma_open(&temp)
        .await
        .map_err(|e| WalError::from_glommio(format!("create {}", temp.display()), e))?;
    file.pre_allocate(opts.segment_bytes, false)
        .await
        .map_err(|e| WalError::from_glommio(format!("fallocate {}", temp.display()), e))?;
    let refs: Vec<&WalRecord> = header.iter().collect();
    let (_, batch_bytes, _) =
        write_batch(&file, &temp, name.seq, 0, opts.write_align_bytes, &refs).await?;
    glommio::io::rename(&temp, &path)
        .await
        .map_err(|e| WalError::from_glommio(format!("rename {}", temp.display()), e))?;
    sync_dir(&dir).await?;
    let mut s = shared.borrow_mut();
    s.write_offset = batch_bytes;
    s.stats.segments_created += 1;
    s.stats.fdatasyncs += 1;
    s.stats.bytes_written += batch_bytes;
    Ok(Rc::new(file))
}

/// Starts the WAL's two tasks: the flusher and the zeroing ahead of it.
fn spawn_writers(shared: &Rc<RefCell<Shared>>) {
    glommio::spawn_local(flusher(shared.clone())).detach();
    glommio::spawn_local(zero_ahead(shared.clone())).detach();
}

/// The one writer: takes batches off the queue, writes and syncs them, wakes their appenders.
async fn flusher(shared: Rc<RefCell<Shared>>) {
    loop {
        let has_work = std::future::poll_fn(|cx| {
            let mut s = shared.borrow_mut();
            if !s.queue.is_empty() {
                Poll::Ready(true)
            } else if s.closing {
                Poll::Ready(false)
            } else {
                s.flusher_waker = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await;
        if !has_work {
            break;
        }
        // Appenders woken by the previous batch's completion sit ahead of us in the run queue;
        // one yield lets them enqueue so they join this batch. This is not a timer.
        futures_yield().await;
        let linger = {
            let s = shared.borrow();
            (s.last_batch_appends > 1 && s.queue_bytes < s.opts.batch_bytes_max)
                .then_some(s.opts.batch_delay_max)
                .filter(|d| !d.is_zero())
        };
        if let Some(delay) = linger {
            glommio::timer::sleep(delay).await;
        }
        let batch = take_batch(&shared);
        let result = flush_batch(&shared, &batch).await;
        match result {
            Ok(durable) => {
                for pending in &batch {
                    complete(&pending.done, Ok(durable));
                }
            }
            Err(e) => {
                let why = e.to_string();
                let rest: Vec<Pending> = {
                    let mut s = shared.borrow_mut();
                    s.poisoned = Some(why.clone());
                    s.zero_ahead.wake_task();
                    s.queue_bytes = 0;
                    s.queue.drain(..).collect()
                };
                for pending in &batch {
                    complete(&pending.done, Err(e.clone()));
                }
                for pending in rest {
                    complete(&pending.done, Err(WalError::Poisoned(why.clone())));
                }
                break;
            }
        }
    }
    let mut s = shared.borrow_mut();
    s.flusher_done = true;
    if let Some(waker) = s.close_waker.take() {
        waker.wake();
    }
}

async fn futures_yield() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await
}

/// Takes appends off the queue up to `batch_bytes_max` (always at least one).
fn take_batch(shared: &Rc<RefCell<Shared>>) -> Vec<Pending> {
    let mut s = shared.borrow_mut();
    let mut batch = Vec::new();
    let mut bytes = 0;
    while let Some(front) = s.queue.front() {
        if !batch.is_empty() && bytes + front.frame_bytes > s.opts.batch_bytes_max {
            break;
        }
        bytes += front.frame_bytes;
        let pending = s.queue.pop_front().expect("front exists");
        batch.push(pending);
    }
    s.queue_bytes -= bytes;
    batch
}

async fn flush_batch(shared: &Rc<RefCell<Shared>>, batch: &[Pending]) -> Result<Durable> {
    let records: Vec<&WalRecord> = batch.iter().flat_map(|p| p.records.iter()).collect();
    let records_bytes: usize = batch.iter().map(|p| p.frame_bytes).sum();
    let (needs_rotation, align) = {
        let s = shared.borrow();
        let batch_bytes = batch_bytes_for(records_bytes, s.opts.write_align_bytes) as u64;
        (
            s.write_offset + batch_bytes > s.opts.segment_bytes,
            s.opts.write_align_bytes,
        )
    };
    if needs_rotation && !records.is_empty() {
        rotate(shared).await?;
    }
    let (file, path, seq, offset) = {
        let s = shared.borrow();
        let (seq, segment) = s.segments.last_key_value().expect("a current segment");
        (
            segment.file.clone(),
            segment.path.clone(),
            *seq,
            s.write_offset,
        )
    };
    let (frame_offsets, batch_bytes, fdatasync_took) = if records.is_empty() {
        // A barrier with nothing to write: everything before it is already durable.
        (Vec::new(), 0, std::time::Duration::ZERO)
    } else {
        let end = offset + batch_bytes_for(records_bytes, align) as u64;
        // Claim the batch's blocks first, so no new zero write starts below `end`; then let
        // a zero write already in flight over them finish: data lands after the zeros.
        shared.borrow_mut().write_in_flight_end = end;
        std::future::poll_fn(|cx| {
            let mut s = shared.borrow_mut();
            if s.zero_ahead.overlaps_in_flight(offset, end) {
                s.zero_ahead.wait_for_in_flight(cx.waker());
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await;
        let written = write_batch(&file, &path, seq, offset, align, &records).await;
        shared.borrow_mut().write_in_flight_end = 0;
        written?
    };
    let mut s = shared.borrow_mut();
    s.write_offset += batch_bytes;
    s.zero_ahead.wake_task();
    for (record, frame_offset) in records.iter().zip(&frame_offsets) {
        let loc = EntryLoc {
            segment_seq: seq,
            frame_offset: *frame_offset,
            frame_bytes: record.frame_bytes() as u32,
        };
        s.durable
            .apply(record, || loc)
            .expect("appends were validated in submission order");
        if let WalRecord::Entry { raft_index, .. } = record {
            s.written_max_index = s.written_max_index.max(*raft_index);
        }
    }
    if batch_bytes > 0 {
        s.batch_seq += 1;
        s.stats.batches += 1;
        s.stats.fdatasyncs += 1;
        s.stats.bytes_written += batch_bytes;
    }
    s.stats.appends += batch.len() as u64;
    s.stats.records += records.len() as u64;
    s.last_batch_appends = batch.len();
    Ok(Durable {
        batch_seq: s.batch_seq,
        last_raft_index: s.durable.last_index(),
        fdatasync_took,
    })
}

/// Starts the next segment, carrying metadata, hard state and snapshot marker forward so older
/// segments can be released without losing them (etcd's `cut` does the same).
async fn rotate(shared: &Rc<RefCell<Shared>>) -> Result<()> {
    let (name, header) = {
        let s = shared.borrow();
        let (seq, _) = s.segments.last_key_value().expect("a current segment");
        let name = SegmentName {
            seq: seq + 1,
            raft_index: s.written_max_index.max(s.durable.last_index()) + 1,
        };
        let mut header = vec![WalRecord::Metadata(
            s.durable.metadata.expect("metadata is set"),
        )];
        if let Some(hs) = s.durable.hard_state {
            header.push(WalRecord::HardState(hs));
        }
        if s.durable.snapshot != SnapshotMarker::default() {
            header.push(WalRecord::Snapshot(s.durable.snapshot));
        }
        (name, header)
    };
    let file = start_segment(shared, name, &header).await?;
    let mut s = shared.borrow_mut();
    let path = s.dir.join(name.file_name());
    s.segments.insert(name.seq, Segment { name, path, file });
    Ok(())
}

/// Bytes one entry of `data_len` payload bytes occupies on disk (for capacity planning).
pub fn entry_frame_bytes(data_len: usize) -> usize {
    frame_bytes(16 + data_len)
}
