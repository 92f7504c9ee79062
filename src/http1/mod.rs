//! HTTP/1.1 server transport (RFC 9112) for the client port's plain-HTTP endpoints
//! (`/health`, `/version`, `/metrics`, ...), parsed with `httparse` on the network cores.
//! Layers, each knowing only the ones above it in this list:
//! - [`message`]: the request and response types a handler sees, and the response encoding;
//! - [`body`]: request body framing (Content-Length, chunked) over a read buffer;
//! - [`conn`]: the connection driver: keep-alive, pipelining, `Expect: 100-continue`,
//!   the named limits and deadlines;
//! - [`sniff`]: tells an HTTP/2 client's preface from anything else on a new connection,
//!   without consuming a byte.
//!
//! This module knows nothing of etcd: the service layer passes a [`Handler`] down.

pub mod body;
pub mod conn;
pub mod message;
pub mod sniff;

pub use conn::{serve_connection, FirstLine, Http1Config};
pub use message::{Handler, Request, Response};
pub use sniff::{serve_sniffed, sniff, ClientProtocol, Http1Service};
