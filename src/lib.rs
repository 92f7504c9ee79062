//! tern: an etcd-compatible key-value server, thread-per-core on glommio.
//!
//! The modules follow the path a request takes (see README.md, "Architecture"):
//! connection → `http2` frames → `grpc` messages → `service` handlers → `mvcc` state.

pub mod http2;
pub mod proto;
pub mod grpc;
