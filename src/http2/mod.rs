//! tmp
pub mod frame;
pub mod hpack;
