//! bbolt's file format, the database etcd keeps in `member/snap/db` and sends as a
//! snapshot: a streaming writer (`writer`: sorted buckets and keys in, a valid file out,
//! front to back, bounded memory) and a reader (`reader`: buckets and entries of a file).
//! tern's own backend is `btree/`; this module exists to exchange files with etcd
//! (`Maintenance.Snapshot`, `snapshot restore`, migration).
//!
//! The format is specified in `storage/docs/bbolt.md`, written from bbolt's source; the
//! code here is ours. Only what etcd uses is supported: top-level buckets of plain
//! key/values (no nested buckets).

pub mod page;
pub mod reader;
pub mod writer;

pub use reader::{BucketRoot, Reader};
pub use writer::{write, Layout, Summary, Writer};

#[derive(Debug)]
pub enum Error {
    Io(std::io::Error),
    /// The file's bytes violate the format; the message says where.
    Corrupted(String),
    /// Buckets or keys handed to the writer out of order.
    Unsorted(String),
    /// A key, value or page beyond the format's limits.
    TooLarge(String),
    /// The two passes of `writer::write` saw different data.
    Changed(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Io(e) => write!(f, "bbolt I/O error: {e}"),
            Error::Corrupted(what) => write!(f, "bbolt file corrupted: {what}"),
            Error::Unsorted(what) => write!(f, "bbolt writer: out of order: {what}"),
            Error::TooLarge(what) => write!(f, "bbolt writer: too large: {what}"),
            Error::Changed(what) => {
                write!(f, "bbolt writer: the data changed between passes: {what}")
            }
        }
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests;
