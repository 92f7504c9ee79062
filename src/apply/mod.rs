//! Applying client requests to the state: etcd's KV semantics over the MVCC store (`kv`).
//! Validation at the API edge is `crate::service::validate`.

pub mod kv;

pub use kv::{LeaseLookup, NoLeases};

#[cfg(test)]
mod tests;
