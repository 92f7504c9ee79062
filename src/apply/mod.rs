//! Applying client requests to the state: validation at the API edge (`validate`) and
//! etcd's KV semantics over the MVCC store (`kv`).

pub mod kv;
pub mod validate;

pub use kv::{LeaseLookup, NoLeases};
pub use validate::{check_delete_range, check_put, check_range, check_txn, MAX_TXN_OPS_DEFAULT};

#[cfg(test)]
mod tests;
