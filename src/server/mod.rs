//! Server assembly: starts the pinned executors, wires network cores to the state core,
//! serves until SIGTERM/SIGINT, then shuts down gracefully.
//!
//! Data path of one request (each step in its own module):
//! network executor: socket → `http2` → `grpc` → `service` (decode, validate)
//!   → `state_client` (cross-core channel) →
//! state executor: `state_machine` (apply to `mvcc`) → reply over a oneshot →
//! network executor: encode → `grpc` → `http2` → socket.
//!
//! Invariants:
//! - The MVCC store is touched only on the state executor; every other core holds a
//!   `StateClient` and nothing else of it.
//! - A request is acknowledged to the client only after the state executor has applied it.

pub mod change_waiters;
pub mod launch;
pub mod network;
pub mod state_client;
pub mod state_machine;

pub use launch::{run, ServerOptions};
pub use state_client::{Command, StateClient};
pub use state_machine::{Identity, StateMachine};
