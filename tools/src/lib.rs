//! Offline utilities over tern's data dir. Each tool arrives with the format it reads
//! (WAL inspection and repair with issue 4, db check with issue 5, etcd snapshots with
//! issue 15).

pub mod snapshot;
