//! The mmap copy-on-write B+tree backend: tern's replacement for etcd's bbolt.
//!
//! One file of 4 KiB pages; two checksummed meta pages; copy-on-write branch, leaf, overflow
//! and freelist pages. The format, the commit protocol and its crash analysis are specified
//! in `storage/docs/btree.md`; the code points there rather than repeating it.
//!
//! Invariants kept across the modules:
//! - One writer at a time (`Db::begin_write` fails with `WriterBusy` while one is open), any
//!   number of readers, each on the snapshot of the last commit before it began. Read
//!   transactions are `Send + Sync` and borrow values straight from the mmap.
//! - A page is written only while free in every live snapshot (copy-on-write plus the reader
//!   registry in `db.rs`), so a snapshot's pages never change under it.
//! - Bytes read from the file are untrusted: decoding errors are `Error::Corrupted`, depth is
//!   bounded by `MAX_BTREE_DEPTH`.

mod alloc;
pub mod batch;
pub mod check;
mod cursor;
mod db;
pub mod export;
mod mmap;
mod node;
pub mod page;

pub use batch::{BatchConfig, BatchWriter};
pub use check::{check_file, check_image, CheckReport};
pub use cursor::{Entry, Range};
pub use db::{Db, DefragReport, Options, OwnedEntry, ReadTxn, Stats, WriteTxn};
pub use export::Export;
pub use page::{
    MAX_BTREE_DEPTH, MAX_BUCKET_NAME_BYTES, MAX_KEY_BYTES, MAX_VALUE_BYTES, PAGE_BYTES,
};

/// etcd's backend buckets (`server/mvcc/buckets` in etcd 3.5), by the names bbolt stores.
pub mod buckets {
    pub const KEY: &[u8] = b"key";
    pub const META: &[u8] = b"meta";
    pub const LEASE: &[u8] = b"lease";
    pub const AUTH: &[u8] = b"auth";
    pub const AUTH_USERS: &[u8] = b"authUsers";
    pub const AUTH_ROLES: &[u8] = b"authRoles";
    pub const MEMBERS: &[u8] = b"members";
    pub const MEMBERS_REMOVED: &[u8] = b"members_removed";
    pub const CLUSTER: &[u8] = b"cluster";
    pub const ALARM: &[u8] = b"alarm";
    pub const ALL: [&[u8]; 10] = [
        KEY,
        META,
        LEASE,
        AUTH,
        AUTH_USERS,
        AUTH_ROLES,
        MEMBERS,
        MEMBERS_REMOVED,
        CLUSTER,
        ALARM,
    ];
}

#[derive(Debug)]
pub enum Error {
    Io(std::io::Error),
    /// The file's bytes violate the format; the message says where.
    Corrupted(String),
    /// Another write transaction is open (one writer at a time).
    WriterBusy,
    /// A previous commit failed midway; reopen the database to recover the last commit.
    Poisoned,
    KeyTooLarge,
    BucketNameTooLarge,
    ValueTooLarge,
    /// The tree would exceed `MAX_BTREE_DEPTH`.
    TooDeep,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Io(error) => write!(f, "btree I/O error: {error}"),
            Error::Corrupted(what) => write!(f, "btree file corrupted: {what}"),
            Error::WriterBusy => write!(f, "btree: a write transaction is already open"),
            Error::Poisoned => write!(f, "btree: a commit failed; reopen the database"),
            Error::KeyTooLarge => write!(f, "btree: key larger than {MAX_KEY_BYTES} bytes"),
            Error::BucketNameTooLarge => write!(
                f,
                "btree: bucket name larger than {MAX_BUCKET_NAME_BYTES} bytes"
            ),
            Error::ValueTooLarge => write!(f, "btree: value larger than {MAX_VALUE_BYTES} bytes"),
            Error::TooDeep => write!(f, "btree: tree deeper than {MAX_BTREE_DEPTH} levels"),
        }
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(error: std::io::Error) -> Error {
        Error::Io(error)
    }
}
