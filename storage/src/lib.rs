//! tern's storage engines.
//!
//! - `wal/`: the write-ahead log for raft (issue 4), documented in `docs/wal.md`.
//! - `btree/`: the mmap copy-on-write B+tree backend (issue 5), documented in `docs/btree.md`.
//!
//! Both are filled by their own issues; this crate holds only what is real.

pub mod btree;
pub mod wal;
