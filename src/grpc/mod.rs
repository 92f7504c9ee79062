//! gRPC server layer over `crate::http2` streams: one [`Call`] per request stream, handed
//! to the service layer's [`Handler`], which runs as its own local task.

pub mod codec;
pub mod server;
pub mod status;

pub use server::{Call, Handler, RequestStream, ResponseSink};
pub use status::{Code, Status};
