//! Zeroing ahead of the writer: turns the current segment's preallocated (unwritten) extents
//! into written ones before the flusher reaches them.
//!
//! Why: `fallocate` leaves the segment's blocks *unwritten*. The first write into an unwritten
//! block converts its extent, which dirties the inode, so that batch's fdatasync must also
//! write the inode synchronously before its cache flush: three device requests per commit
//! instead of two. On this project's ext4-on-virtio test machine, 200 single-block commits
//! into a fallocated file issued 200 data writes and 203 metadata writes; into a zero-filled
//! file, 200 data writes and no metadata write. Each extra request waits in the device queue,
//! which under a competing writer (bench/disturb case 3) is tens to hundreds of milliseconds.
//! Writing zeros a few MiB ahead of the flusher converts the extents off the commit path; the
//! conversion of one zeroed chunk is made durable by whichever commit's fdatasync comes next,
//! so one commit per chunk still pays the inode write.
//!
//! Invariants (all state lives in the WAL's `Shared`, on one executor, so each check and the
//! claim that follows it happen with no await between them):
//! - a zero write never covers a byte at or above which the flusher may write before the zero
//!   write completes: a chunk starts at or above both the durable end (`write_offset`) and the
//!   end of the flusher's in-flight batch (`write_in_flight_end`);
//! - the flusher never submits a batch that overlaps the chunk being zeroed: it waits for that
//!   chunk first (`overlaps_in_flight`), so data always lands after the zeros, never under them;
//! - at most one zero write is in flight, and none once the WAL is closing or poisoned;
//! - zeroing is only an optimisation: the bytes above `write_offset` read as zeros either way
//!   (unwritten extents read as zeros), so recovery and the format are unchanged, and a failed
//!   zero write only stops zeroing (the flusher's own writes report real I/O errors).

use std::cell::RefCell;
use std::rc::Rc;
use std::task::{Poll, Waker};

use glommio::io::DmaFile;

use super::log::Shared;

/// Bytes one zero write covers. Small enough that it occupies the device for about a
/// millisecond, beside the commits it runs next to.
pub(super) const ZERO_CHUNK_BYTES: u64 = 256 << 10;
/// How far past the durable end the zeroed region is kept. At the WAL's heaviest measured
/// write rate (about 20 MB/s) this is 0.2 s of headroom, far more than one chunk takes.
pub(super) const ZERO_AHEAD_BYTES: u64 = 4 << 20;
const _: () = assert!(ZERO_AHEAD_BYTES >= 2 * ZERO_CHUNK_BYTES);
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
    /// The task has ended (closing, poisoned, or a failed zero write).
    pub(super) done: bool,
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

    /// The writer advanced (or the WAL is closing): the zeroing task may have work.
    pub(super) fn wake_task(&mut self) {
        if let Some(waker) = self.task_waker.take() {
            waker.wake();
        }
    }
}

/// What the task zeroes next: the file, its segment, and the chunk.
struct ZeroJob {
    file: Rc<DmaFile>,
    segment_seq: u64,
    start: u64,
    end: u64,
}

/// Picks the next chunk, or parks until there is one. `None`: the task ends.
fn next_job(s: &mut Shared, waker: &Waker) -> Poll<Option<ZeroJob>> {
    if s.closing || s.poisoned.is_some() {
        return Poll::Ready(None);
    }
    let Some((&segment_seq, segment)) = s.segments.last_key_value() else {
        s.zero_ahead.task_waker = Some(waker.clone());
        return Poll::Pending;
    };
    let file = segment.file.clone();
    let segment_bytes = s.opts.segment_bytes;
    let write_floor = s.write_offset.max(s.write_in_flight_end);
    let z = &mut s.zero_ahead;
    if z.segment_seq != Some(segment_seq) {
        z.segment_seq = Some(segment_seq);
        z.zeroed_end = 0;
    }
    let start = z.zeroed_end.max(write_floor.next_multiple_of(4096));
    if start >= segment_bytes || start >= s.write_offset + ZERO_AHEAD_BYTES {
        z.task_waker = Some(waker.clone());
        return Poll::Pending;
    }
    let end = (start + ZERO_CHUNK_BYTES).min(segment_bytes);
    debug_assert!(start >= s.write_offset && start >= s.write_in_flight_end);
    z.in_flight = Some((start, end));
    Poll::Ready(Some(ZeroJob {
        file,
        segment_seq,
        start,
        end,
    }))
}

/// The zeroing task: one per WAL, beside the flusher, until the WAL closes.
pub(super) async fn zero_ahead(shared: Rc<RefCell<Shared>>) {
    loop {
        let job = std::future::poll_fn(|cx| next_job(&mut shared.borrow_mut(), cx.waker())).await;
        let Some(job) = job else { break };
        let len = (job.end - job.start) as usize;
        let mut buf = job.file.alloc_dma_buffer(len);
        buf.as_bytes_mut().fill(0);
        let written = job.file.write_at(buf, job.start).await;
        let mut s = shared.borrow_mut();
        s.zero_ahead.in_flight = None;
        if let Some(waker) = s.zero_ahead.flusher_waker.take() {
            waker.wake();
        }
        match written {
            Ok(n) if n == len => {
                if s.zero_ahead.segment_seq == Some(job.segment_seq) {
                    s.zero_ahead.zeroed_end = job.end;
                }
                s.stats.chunks_zeroed += 1;
            }
            // Zeroing is an optimisation; the flusher's own writes report real I/O errors.
            _ => break,
        }
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
