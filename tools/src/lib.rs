//! Offline utilities over tern's data dir. Each tool arrives with the format it reads
//! (WAL inspection and repair with issue 4, db check with issue 5, etcd snapshots with
//! issue 15; offline defragmentation and etcd's legacy backup with issue 15).

pub mod backup;
pub mod defrag;
pub mod snapshot;
