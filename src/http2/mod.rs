//! HTTP/2 server transport (RFC 9113), cleartext with prior knowledge (h2c), hand-wired
//! on glommio. Layers, each knowing only the ones above it in this list:
//! - [`frame`]: pure parse/encode of frames, no I/O;
//! - [`hpack`]: header compression;
//! - [`flow`]: flow-control window accounting;
//! - [`stream`]: the per-stream state machine (RFC 9113 §5.1);
//! - [`conn`]: the connection driver: reader loop, writer task, settings, streams.
//!
//! The gRPC layer (`crate::grpc`) sits on top and sees streams only through
//! [`conn::StreamRef`].

pub mod config;
pub mod conn;
pub mod flow;
pub mod frame;
pub mod hpack;
pub mod stream;

pub use config::{ServerConfig, ShutdownSignal};
pub use conn::{serve_connection_with, ConnError, Request, StreamRef};

use std::rc::Rc;

/// Serves one h2c connection, dispatching every request to the gRPC `handler`
/// (see `crate::grpc::Call`). Returns when the peer closes, after a graceful shutdown,
/// or with the connection error we answered with GOAWAY.
pub async fn serve_connection(
    stream: glommio::net::TcpStream,
    config: Rc<ServerConfig>,
    handler: crate::grpc::Handler,
    shutdown: ShutdownSignal,
) -> Result<(), ConnError> {
    let dispatch_config = config.clone();
    serve_connection_with(
        stream,
        config,
        move |request| crate::grpc::server::dispatch(request, &handler, &dispatch_config),
        shutdown,
    )
    .await
}
