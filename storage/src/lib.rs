//! tern's storage engines.
//!
//! - `wal/`: the write-ahead log for raft (issue 4), documented in `docs/wal.md`.
//! - `btree/`: the mmap copy-on-write B+tree backend (issue 5), documented in `docs/btree.md`.
//! - `bbolt/`: bbolt's file format (etcd's backend), written and read for snapshots and
//!   migration (issue 15), documented in `docs/bbolt.md`.
//! - `etcd_wal`: a reader of etcd 3.4's WAL, to migrate an etcd member's data dir
//!   (issue 15), documented in `docs/etcd-wal.md`.
//!
//! - `writeback`: paced writeback for large buffered writes that end in one fsync (B+tree
//!   commits, received snapshot images), so a WAL on the same disk never queues behind them.
//!
//! Both are filled by their own issues; this crate holds only what is real.

pub mod bbolt;
pub mod btree;
pub mod etcd_wal;
pub mod wal;
pub mod writeback;
