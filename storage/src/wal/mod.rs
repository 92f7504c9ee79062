//! The write-ahead log for raft: many concurrent appends become one write and one fdatasync
//! (group commit), on io_uring. The on-disk format, recovery rules and crash analysis are
//! specified in `storage/docs/wal.md`; this module implements that document.
//!
//! Why glommio's `DmaFile` on the caller's executor rather than the `io-uring` crate on a
//! storage thread: the WAL is driven by tern's raft executor, a glommio `LocalExecutor` pinned
//! to a core, and glommio already owns an io_uring there. Writes (`O_DIRECT`, from glommio's
//! registered DMA buffers when memlock allows) and `fdatasync` (`IORING_OP_FSYNC` with
//! `DATASYNC`) are submitted to that ring and complete without blocking the executor. Staying
//! on one executor means no cross-thread channel, no locks, and, most usefully, group commit
//! falls out of the run queue: appenders woken by one batch's completion run before the
//! flusher takes the next batch, so batches fill without any timer. A second thread would cost
//! a core on a 2-core machine and a cross-thread wake-up per batch in each direction.
//!
//! Module map: `record` (frame encode/decode, pure), `scan` (recovery scan of a segment, pure),
//! `segment` (file naming), `log_state` (replay rules shared by recovery and the live log),
//! `log` (the `Wal`: I/O, group commit, rotation, release, lookups), `zero_ahead` (converts
//! preallocated extents ahead of the writer, so commits need no metadata write), `repair` (offline verify
//! and repair with std I/O, used by `tern-wal`), `executor` (io_uring memory checks).

pub mod error;
pub mod executor;
mod log;
pub mod log_state;
pub mod record;
pub mod repair;
pub mod scan;
pub mod segment;
mod zero_ahead;

pub use error::{Result, WalError};
pub use log::{entry_frame_bytes, Durable, Entry, Recovered, TornTail, Wal, WalOptions, WalStats};
pub use record::{HardState, Metadata, SnapshotMarker, WalRecord};
pub use segment::wal_dir;
