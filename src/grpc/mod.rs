//! gRPC server layer over `crate::http2` streams: [`serve_connection`] serves one h2c
//! connection; one [`Call`] per request stream is handed to the service layer's
//! [`Handler`], which runs as its own local task.

pub mod codec;
pub mod server;
pub mod status;

pub use server::{
    serve_connection, with_tls_common_name, Call, Handler, RequestStream, ResponseSink,
};
pub use status::{Code, Status};
