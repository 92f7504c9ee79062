//! gRPC server layer over `crate::http2` streams: [`serve_connection`] serves one h2c
//! connection; one [`Call`] per request stream is handed to the service layer's
//! [`Handler`], which runs as its own local task. On TLS connections, requests that are not
//! gRPC go to the HTTP handlers instead ([`plain_http`]), as on etcd's TLS port.

pub mod codec;
pub mod plain_http;
pub mod server;
pub mod status;

pub use server::{
    serve_connection, serve_connection_and_http, with_tls_common_name, Call, Handler,
    RequestStream, ResponseSink,
};
pub use status::{Code, Status};
