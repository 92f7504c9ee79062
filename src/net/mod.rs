//! Client byte streams, before HTTP/2: the listeners a network executor accepts from (TCP
//! and unix sockets), the TLS handshake (rustls, on the executor that owns the
//! connection), and the one stream type the HTTP/2 server is handed; and an in-memory
//! pipe, the byte stream of the JSON gateway's calls into the local gRPC server.
//!
//! HTTP/2 (`http2::serve_connection_with`) is generic over any `AsyncRead + AsyncWrite`
//! stream; this module decides which one a connection gets and never looks at the bytes
//! after the handshake.

pub mod listener;
pub mod pipe;
pub mod san;
pub mod stream;
pub mod tls;
pub mod x509;

pub use listener::{ClientListener, ListenSocket, PendingConnection};
pub use stream::ClientStream;
