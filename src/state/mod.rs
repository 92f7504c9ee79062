//! The state core: everything that runs on the one state executor behind raft, and the
//! protocol network cores use to reach it.
//!
//! - [`client`]: the cross-core command protocol (`Command`, `StateClient`, `Reply`);
//! - [`machine`]: the state machine — apply dispatch, alarms, defragment — with its lease
//!   part in `machine/leases.rs` and its auth part (permission checks, Auth ops) in
//!   `machine/auth.rs`;
//! - [`change_waiters`]: requests parked until a key range changes;
//! - [`envelope`]: what a raft entry's data holds;
//! - [`lease_command`]: what the Lease service asks of the state executor;
//! - [`db_snapshot`]: the bbolt database `Maintenance.Snapshot` streams.
//!
//! Invariants:
//! - The MVCC store is touched only on the state executor; every other core holds a
//!   `StateClient` and nothing else of it.
//! - A request is acknowledged to the client only after the state executor has applied it.
//! - A client's command carries its credential, a token or a client certificate's name
//!   (`Command::As`); it runs as that user, a write as the user its raft entry names
//!   (checked when the entry applies);
//! - This module sits below `raft` and `service` and above `auth`, `lease`, `mvcc`, `apply` and
//!   watch's feed types; it imports none of the modules that depend on it.

pub mod change_waiters;
pub mod client;
pub mod db_snapshot;
pub mod envelope;
pub mod lease_command;
pub mod machine;

pub use client::{Command, RangeChunk, RangeChunkRequest, Reply, StateClient};
pub use lease_command::LeaseCommand;
pub use machine::{Identity, StateMachine};
