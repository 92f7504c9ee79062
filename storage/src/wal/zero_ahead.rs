//! Zeroing ahead of the writer: turns preallocated (unwritten) extents into written ones
//! before the flusher reaches them, in the current segment and in the spare that will follow it.
//!
//! Why: `fallocate` leaves a segment's blocks *unwritten*. The first write into an unwritten
//! block converts its extent, which dirties the inode, so that batch's fdatasync must also
//! write the inode synchronously before its cache flush: three device requests per commit
//! instead of two. On this project's ext4-on-virtio test machine, 200 single-block commits
//! into a fallocated file issued 200 data writes and 203 metadata writes; into a zero-filled
//! file, 200 data writes and no metadata write. Each extra request waits in the device queue,
//! which under a competing writer (bench/disturb case 3) is tens to hundreds of milliseconds.
//!
//! Two mechanisms:
//! - **The current segment**, a few MiB ahead of the flusher. The conversion of one zeroed
//!   chunk is made durable by whichever commit's fdatasync comes next, so one commit per chunk
//!   still waits for a journal commit, and with it for whatever else the filesystem's journal
//!   carries then (another process's allocations, a large unlink, a defragment's truncate).
//!   This covers only the segment a WAL is created or reopened with.
//! - **The spare**: once the current segment holds `SPARE_AFTER_BYTES`, the task creates the
//!   next segment's file (`SPARE_FILE_NAME`), preallocates it, zeroes all of it and
//!   fdatasyncs it. Rotation then takes the spare instead of a fresh fallocated file
//!   (`take_ready_spare`): every commit into that segment is a pure overwrite whose fdatasync
//!   is one cache flush and never waits on the journal. A segment that was not made from a
//!   spare (the one a WAL is created or reopened with) is left early, at the first batch after
//!   a spare is ready (`leave_for_spare`), so that a busy WAL spends at most its first few MiB
//!   exposed to the journal. (etcd's file pipeline prepares the next segment too, but with
//!   fallocate only.) A spare not ready in time is simply not used.
//!
//! Invariants (all state lives in the WAL's `Shared`, on one executor, so each check and the
//! claim that follows it happen with no await between them):
//! - a zero write never covers a byte at or above which the flusher may write before the zero
//!   write completes: a chunk starts at or above both the durable end (`write_offset`) and the
//!   end of the flusher's in-flight batch (`write_in_flight_end`);
//! - the flusher never submits a batch that overlaps the chunk being zeroed: it waits for that
//!   chunk first (`overlaps_in_flight`), so data always lands after the zeros, never under them;
//! - the spare is no segment until rotation renames it: its name ends in the temp suffix, so
//!   a spare left by a crash is removed at open like any unfinished segment, and rotation only
//!   takes a spare that is completely zeroed and durable (`Spare::Ready`); no new spare is
//!   created at that path until rotation has renamed the one it took (`Spare::Renaming`);
//! - at most one zero write (current segment or spare) is in flight, and none once the WAL is
//!   closing or poisoned;
//! - zeroing is only an optimisation: the bytes above `write_offset` read as zeros either way
//!   (unwritten extents read as zeros), so recovery and the format are unchanged, and a failed
//!   zero write only stops zeroing (the flusher's own writes report real I/O errors).

use std::cell::RefCell;
use std::rc::Rc;
use std::task::{Poll, Waker};

use glommio::io::{DmaFile, OpenOptions};

use super::log::Shared;

/// Bytes one zero write covers. Small enough that it occupies the device for about a
/// millisecond, beside the commits it runs next to.
pub(super) const ZERO_CHUNK_BYTES: u64 = 256 << 10;
/// How far past the durable end the zeroed region is kept. At the WAL's heaviest measured
/// write rate (about 20 MB/s) this is 0.2 s of headroom, far more than one chunk takes.
pub(super) const ZERO_AHEAD_BYTES: u64 = 4 << 20;
const _: () = assert!(ZERO_AHEAD_BYTES >= 2 * ZERO_CHUNK_BYTES);
/// The spare segment's file name in the WAL dir. It ends in `segment::TEMP_SUFFIX` (a test
/// checks), so it is never taken for a segment and a leftover one is removed at open.
pub(super) const SPARE_FILE_NAME: &str = "spare.wal.tmp";
/// The spare is prepared once the current segment holds this much: a WAL that never writes
/// this much into one segment (most short-lived ones, such as tests', and any with segments
/// this small) never writes a spare's zeros.
const SPARE_AFTER_BYTES: u64 = 4 << 20;
const _: () = assert!(ZERO_CHUNK_BYTES.is_multiple_of(4096));

/// The zeroing state of the current segment.
#[derive(Default)]
pub(super) struct ZeroAhead {
    /// Which segment `zeroed_end` describes; another value means a new segment, not yet zeroed.
    segment_seq: Option<u64>,
    /// Everything in `[write_offset, zeroed_end)` of that segment has been zeroed.
    zeroed_end: u64,
    /// The chunk being zeroed now, `[start, end)`.
    in_flight: Option<(u64, u64)>,
    /// The zeroing task, parked until the writer advances or the WAL closes.
    task_waker: Option<Waker>,
    /// The flusher, parked until `in_flight` completes.
    flusher_waker: Option<Waker>,
    /// The next segment's file, prepared ahead of rotation.
    spare: Spare,
    /// The segment that was made from a spare, if the current one was.
    from_spare_seq: Option<u64>,
    /// The task has ended (closing, poisoned, or a failed zero write).
    pub(super) done: bool,
}

/// The spare segment file's state.
#[derive(Default)]
enum Spare {
    /// None yet (or rotation took it): the task creates one when the current segment is half
    /// full and nothing else needs zeroing.
    #[default]
    Absent,
    /// Created and preallocated to the segment size; `[0, zeroed_end)` is zeroed.
    Zeroing { file: Rc<DmaFile>, zeroed_end: u64 },
    /// Completely zeroed and fdatasynced: rotation may take it.
    Ready(Rc<DmaFile>),
    /// Rotation took it and has not renamed it yet: no new spare may be created at its path.
    Renaming,
    /// Preparing one failed: rotation creates fallocated segments as before.
    Disabled,
}

impl ZeroAhead {
    /// Whether a batch written at `[start, end)` would overlap the chunk being zeroed.
    pub(super) fn overlaps_in_flight(&self, start: u64, end: u64) -> bool {
        matches!(self.in_flight, Some((zs, ze)) if zs < end && start < ze)
    }

    /// Parks the flusher until the in-flight zero write completes.
    pub(super) fn wait_for_in_flight(&mut self, waker: &Waker) {
        self.flusher_waker = Some(waker.clone());
    }

    /// Takes the spare if it is completely zeroed and durable; the task then prepares the next.
    pub(super) fn take_ready_spare(&mut self) -> Option<Rc<DmaFile>> {
        if !matches!(self.spare, Spare::Ready(_)) {
            return None;
        }
        let Spare::Ready(file) = std::mem::replace(&mut self.spare, Spare::Renaming) else {
            unreachable!("checked above")
        };
        Some(file)
    }

    /// Rotation renamed the spare it took into a segment: the task may prepare the next.
    pub(super) fn spare_renamed(&mut self) {
        debug_assert!(matches!(self.spare, Spare::Renaming));
        self.spare = Spare::Absent;
        self.wake_task();
    }

    /// Segment `segment_seq` was made from a spare: all of it is zeroed already.
    pub(super) fn segment_is_zeroed(&mut self, segment_seq: u64, segment_bytes: u64) {
        self.segment_seq = Some(segment_seq);
        self.zeroed_end = segment_bytes;
        self.from_spare_seq = Some(segment_seq);
    }

    /// Whether the flusher should rotate now although segment `current_seq` has room: it was
    /// not made from a spare, and a spare is ready.
    pub(super) fn leave_for_spare(&self, current_seq: u64) -> bool {
        matches!(self.spare, Spare::Ready(_)) && self.from_spare_seq != Some(current_seq)
    }

    /// The writer advanced (or the WAL is closing): the zeroing task may have work.
    pub(super) fn wake_task(&mut self) {
        if let Some(waker) = self.task_waker.take() {
            waker.wake();
        }
    }
}

/// What the task does next.
enum Job {
    /// Zero `[start, end)` of the current segment.
    Segment {
        file: Rc<DmaFile>,
        segment_seq: u64,
        start: u64,
        end: u64,
    },
    /// Create and preallocate the spare.
    CreateSpare,
    /// Zero `[start, end)` of the spare.
    SpareChunk {
        file: Rc<DmaFile>,
        start: u64,
        end: u64,
    },
    /// Make the zeroed spare durable.
    SyncSpare(Rc<DmaFile>),
}

/// Picks the next job, or parks until there is one. `None`: the task ends.
fn next_job(s: &mut Shared, waker: &Waker) -> Poll<Option<Job>> {
    if s.closing || s.poisoned.is_some() {
        return Poll::Ready(None);
    }
    let Some((&segment_seq, segment)) = s.segments.last_key_value() else {
        s.zero_ahead.task_waker = Some(waker.clone());
        return Poll::Pending;
    };
    let file = segment.file.clone();
    let segment_bytes = s.opts.segment_bytes;
    let write_offset = s.write_offset;
    let write_floor = write_offset.max(s.write_in_flight_end);
    let z = &mut s.zero_ahead;
    if z.segment_seq != Some(segment_seq) {
        z.segment_seq = Some(segment_seq);
        z.zeroed_end = 0;
    }
    let start = z.zeroed_end.max(write_floor.next_multiple_of(4096));
    if start < segment_bytes && start < write_offset + ZERO_AHEAD_BYTES {
        let end = (start + ZERO_CHUNK_BYTES).min(segment_bytes);
        debug_assert!(start >= write_offset && start >= s.write_in_flight_end);
        z.in_flight = Some((start, end));
        return Poll::Ready(Some(Job::Segment {
            file,
            segment_seq,
            start,
            end,
        }));
    }
    let spare_due = write_offset >= SPARE_AFTER_BYTES;
    let job = match &z.spare {
        Spare::Absent if spare_due => Job::CreateSpare,
        Spare::Zeroing { file, zeroed_end } if *zeroed_end < segment_bytes => Job::SpareChunk {
            file: file.clone(),
            start: *zeroed_end,
            end: (*zeroed_end + ZERO_CHUNK_BYTES).min(segment_bytes),
        },
        Spare::Zeroing { file, .. } => Job::SyncSpare(file.clone()),
        Spare::Absent | Spare::Ready(_) | Spare::Renaming | Spare::Disabled => {
            z.task_waker = Some(waker.clone());
            return Poll::Pending;
        }
    };
    Poll::Ready(Some(job))
}

/// Writes zeros over `[start, end)` of `file`; true when all of it was written.
async fn write_zeros(file: &DmaFile, start: u64, end: u64) -> bool {
    let len = (end - start) as usize;
    let mut buf = file.alloc_dma_buffer(len);
    buf.as_bytes_mut().fill(0);
    matches!(file.write_at(buf, start).await, Ok(n) if n == len)
}

/// Creates (or truncates) the spare file and preallocates it to the segment size.
async fn create_spare(shared: &Rc<RefCell<Shared>>) -> Option<Rc<DmaFile>> {
    let (path, segment_bytes) = {
        let s = shared.borrow();
        (s.dir.join(SPARE_FILE_NAME), s.opts.segment_bytes)
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .dma_open(&path)
        .await
        .ok()?;
    file.pre_allocate(segment_bytes, false).await.ok()?;
    Some(Rc::new(file))
}

/// The zeroing task: one per WAL, beside the flusher, until the WAL closes.
pub(super) async fn zero_ahead(shared: Rc<RefCell<Shared>>) {
    loop {
        let job = std::future::poll_fn(|cx| next_job(&mut shared.borrow_mut(), cx.waker())).await;
        let Some(job) = job else { break };
        match job {
            Job::Segment {
                file,
                segment_seq,
                start,
                end,
            } => {
                let written = write_zeros(&file, start, end).await;
                let mut s = shared.borrow_mut();
                s.zero_ahead.in_flight = None;
                if let Some(waker) = s.zero_ahead.flusher_waker.take() {
                    waker.wake();
                }
                if !written {
                    // Zeroing is an optimisation; the flusher's own writes report real errors.
                    break;
                }
                if s.zero_ahead.segment_seq == Some(segment_seq) {
                    s.zero_ahead.zeroed_end = end;
                }
                s.stats.chunks_zeroed += 1;
            }
            Job::CreateSpare => {
                let created = create_spare(&shared).await;
                shared.borrow_mut().zero_ahead.spare = match created {
                    Some(file) => Spare::Zeroing {
                        file,
                        zeroed_end: 0,
                    },
                    None => Spare::Disabled,
                };
            }
            Job::SpareChunk { file, start, end } => {
                let written = write_zeros(&file, start, end).await;
                let mut s = shared.borrow_mut();
                s.zero_ahead.spare = if written {
                    s.stats.chunks_zeroed += 1;
                    Spare::Zeroing {
                        file,
                        zeroed_end: end,
                    }
                } else {
                    Spare::Disabled
                };
            }
            Job::SyncSpare(file) => {
                let synced = file.fdatasync().await.is_ok();
                let mut s = shared.borrow_mut();
                s.zero_ahead.spare = if synced {
                    s.stats.spares_prepared += 1;
                    Spare::Ready(file)
                } else {
                    Spare::Disabled
                };
            }
        }
    }
    // A spare that is not taken stays on disk until the next open removes it (temp suffix);
    // its handle is closed when the last reference goes.
    let spare = std::mem::take(&mut shared.borrow_mut().zero_ahead.spare);
    if let Spare::Zeroing { file, .. } | Spare::Ready(file) = spare {
        let _ = file.close_rc().await;
    }
    let mut s = shared.borrow_mut();
    s.zero_ahead.done = true;
    s.zero_ahead.in_flight = None;
    if let Some(waker) = s.zero_ahead.flusher_waker.take() {
        waker.wake();
    }
    if let Some(waker) = s.close_waker.take() {
        waker.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::super::segment::{SegmentName, TEMP_SUFFIX};
    use super::SPARE_FILE_NAME;

    #[test]
    fn the_spare_is_named_as_an_unfinished_segment() {
        assert!(SPARE_FILE_NAME.ends_with(TEMP_SUFFIX));
        assert_eq!(SegmentName::parse(SPARE_FILE_NAME), None);
    }
}
