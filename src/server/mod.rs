//! Server assembly: starts the pinned executors, wires network cores to the state core,
//! serves until SIGTERM/SIGINT, then shuts down gracefully.
//!
//! Data path of one request (each step in its own module):
//! network executor: socket → `http2` → `grpc` → `service` (decode, validate)
//!   → `state::client` (cross-core channel) →
//! state executor: `raft` → `state::machine` (apply to `mvcc`) → reply over a oneshot →
//! network executor: encode → `grpc` → `http2` → socket.
//!
//! This module only assembles the process (`launch`, `network`); the state core lives in
//! `crate::state`.

pub mod launch;
pub mod metrics_listen;
pub mod network;

pub use launch::{run, AuthOptions, ServerOptions};
