//! tern: an etcd-compatible key-value server, thread-per-core on glommio.
//!
//! The modules follow the path a request takes (see README.md, "Architecture"):
//! `server`/`runtime` (executors) → `http2` frames → `grpc` messages → `service` handlers
//! → `state` (command protocol; on the state core, `raft` then the state machine) →
//! `apply` (etcd's KV semantics) → `mvcc` state.

pub mod apply;
pub mod auth;
pub mod config;
pub mod error;
pub mod grpc;
pub mod http1;
pub mod http2;
pub mod lease;
pub mod log;
pub mod membership;
pub mod metrics;
pub mod migrate;
pub mod mvcc;
pub mod net;
pub mod proto;
pub mod raft;
pub mod runtime;
pub mod server;
pub mod service;
pub mod state;
pub mod watch;
