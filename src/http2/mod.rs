//! HTTP/2 server transport (RFC 9113), cleartext with prior knowledge (h2c), hand-wired
//! on glommio. Layers, each knowing only the ones above it in this list:
//! - [`frame`]: pure parse/encode of frames, no I/O;
//! - [`hpack`]: header compression;
//! - [`flow`]: flow-control window accounting;
//! - [`limits`]: the bounds on what a peer can make a connection do, with the attacks
//!   they answer;
//! - [`stream`]: the per-stream state machine (RFC 9113 §5.1);
//! - [`conn`]: the connection driver: reader loop, writer task, settings, streams.
//!
//! The gRPC layer (`crate::grpc`) sits on top, serves connections through
//! [`serve_connection_with`] and sees streams only through [`conn::StreamRef`]; this
//! module knows nothing of gRPC.
//!
//! What the tests cover of RFC 9113 and RFC 7541, and the deliberate deviations:
//! `docs/http2-conformance.md`.

pub mod config;
pub mod conn;
pub mod flow;
pub mod frame;
pub mod hpack;
pub mod limits;
pub mod stream;

pub use config::{ServerConfig, ShutdownSignal};
pub use conn::{serve_connection_with, ConnError, Request, StreamRef};
