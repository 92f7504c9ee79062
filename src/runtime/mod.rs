//! The thread-per-core runtime: which executor runs on which core, and the limits the
//! operating system must allow for it.
//!
//! Invariants:
//! - Every executor is a glommio `LocalExecutor` pinned to one CPU from the process's
//!   affinity mask; executors share no memory except through glommio's cross-core channels.
//! - Exactly one executor (the *state* executor) owns the MVCC state; network executors
//!   reach it only by message passing (see `state::client`).
//! - No executor thread makes a blocking system call on a file (fsync, page writes): that
//!   work goes to its blocking pool, whose threads are named `tern-blocking`.

pub mod connect;
pub mod placement;
pub mod thread_name;
pub mod wakeup;

pub use placement::{check_memlock, Plan};
pub use wakeup::Wakeup;
