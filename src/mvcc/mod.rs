//! Multi-version concurrency control: revisions, the key index, the backend interface and
//! the store that ties them together (etcd's `server/mvcc`).

pub mod backend;
pub mod btree_backend;
pub mod key_index;
pub mod range_chunk;
pub mod revision;
pub mod store;

pub use backend::{Backend, BackendError, Bucket, Direction, MemBackend};
pub use btree_backend::BtreeBackend;
pub use key_index::{KeyIndex, KeyIndexTree, KeyRange};
pub use revision::Revision;
pub use store::{Change, ChangeKind, HashKv, KvStore, RangeOptions, RangeResult, WriteTxn};
