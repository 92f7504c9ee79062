//! Paced writeback for large buffered writes that end in one fsync: a B+tree commit's pages
//! (`btree/node.rs`, `PageWrites`) and a raft snapshot image a follower receives
//! (`src/raft/transport.rs`).
//!
//! Why: the page cache holds buffered writes until the final `fsync`/`fdatasync`, which then
//! queues all of them at the device at once. A WAL sharing that disk issues small O_DIRECT
//! writes and cache flushes that wait behind the whole burst: a 33 MB commit made 4 KiB WAL
//! writes wait 20–38 ms, and a follower's 40 MB snapshot image held a 4 KiB fdatasync probe
//! (and the leader's commits) for 259 ms (bench/disturb case 2). Pacing starts each written
//! range's writeback at once (`SYNC_FILE_RANGE_WRITE`) and waits for the oldest ranges until at
//! most `RANGES_IN_FLIGHT` are outstanding, so what a WAL write finds queued ahead of it is
//! bounded by about that many ranges.
//!
//! Invariants:
//! - pacing makes nothing durable (no metadata, no device cache flush): the caller's own
//!   fsync is still what makes the data durable, and it must still happen;
//! - at most `RANGES_IN_FLIGHT` ranges are tracked; `note_written` waits for the oldest
//!   beyond that before it returns;
//! - every call blocks (it waits for device writes), so callers run it off executor threads
//!   (a commit job or the blocking pool).

use std::collections::VecDeque;
use std::fs::File;

/// Written ranges whose device writes may be outstanding at once. With ranges of about
/// 1 MiB (a commit's write batch, a snapshot chunk) two keep the device busy while the next
/// range is prepared, and bound what a WAL write can find queued ahead of it to about 2 MiB.
pub const RANGES_IN_FLIGHT: usize = 2;

/// The written ranges of one file whose writeback was started and may still be in flight.
#[derive(Debug, Default)]
pub struct WritebackPacer {
    /// (start, end) byte ranges, oldest first; at most `RANGES_IN_FLIGHT` long between calls.
    in_flight: VecDeque<(u64, u64)>,
}

impl WritebackPacer {
    pub fn new() -> WritebackPacer {
        WritebackPacer::default()
    }

    /// Bytes `start..end` of `file` were just written (buffered): starts their writeback and
    /// waits for the oldest ranges' until at most `RANGES_IN_FLIGHT` remain.
    pub fn note_written(&mut self, file: &File, start: u64, end: u64) -> std::io::Result<()> {
        // sync_file_range reads a length of 0 as "to the end of the file": an empty range
        // must not start (or wait for) the whole file's writeback.
        if end <= start {
            return Ok(());
        }
        sync_file_range(file, start, end, libc::SYNC_FILE_RANGE_WRITE)?;
        self.in_flight.push_back((start, end));
        while self.in_flight.len() > RANGES_IN_FLIGHT {
            let (start, end) = self.in_flight.pop_front().expect("longer than the bound");
            sync_file_range(
                file,
                start,
                end,
                libc::SYNC_FILE_RANGE_WAIT_BEFORE
                    | libc::SYNC_FILE_RANGE_WRITE
                    | libc::SYNC_FILE_RANGE_WAIT_AFTER,
            )?;
        }
        debug_assert!(self.in_flight.len() <= RANGES_IN_FLIGHT);
        Ok(())
    }

    /// Forgets the tracked ranges: the caller's fsync, which comes next, waits for all of
    /// them (and makes them durable, which pacing never does).
    pub fn clear(&mut self) {
        self.in_flight.clear();
    }
}

/// `sync_file_range(2)` over bytes `start..end` of `file`. Only paces writeback: it makes
/// nothing durable.
fn sync_file_range(file: &File, start: u64, end: u64, flags: u32) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    loop {
        // Safety: a plain system call on a descriptor the caller owns; no memory is passed.
        let rc = unsafe {
            libc::sync_file_range(
                file.as_raw_fd(),
                start as libc::off64_t,
                (end - start) as libc::off64_t,
                flags,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let error = std::io::Error::last_os_error();
        if error.kind() != std::io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt as _;

    #[test]
    fn tracks_at_most_the_bound_and_clear_forgets() {
        let dir = std::env::temp_dir().join(format!("tern-writeback-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        let file = File::create(&path).unwrap();
        let mut pacer = WritebackPacer::new();
        let chunk = vec![7u8; 64 << 10];
        for i in 0..5u64 {
            let at = i * chunk.len() as u64;
            file.write_all_at(&chunk, at).unwrap();
            pacer
                .note_written(&file, at, at + chunk.len() as u64)
                .unwrap();
            assert!(pacer.in_flight.len() <= RANGES_IN_FLIGHT);
        }
        assert_eq!(pacer.in_flight.len(), RANGES_IN_FLIGHT);
        pacer.note_written(&file, 10, 10).unwrap();
        assert_eq!(
            pacer.in_flight.len(),
            RANGES_IN_FLIGHT,
            "an empty range is not tracked"
        );
        pacer.clear();
        assert!(pacer.in_flight.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
