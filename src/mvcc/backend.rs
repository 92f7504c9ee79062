//! The storage interface under MVCC: named buckets of byte keys and byte values.
//!
//! It is deliberately narrow and byte-oriented so that the mmap B+tree (tern-storage) can
//! stand behind it exactly as [`MemBackend`] does here. What the store keeps in it, as etcd
//! does (`server/mvcc/kvstore.go`):
//!
//! * bucket `key`: revision key (17 bytes, 18 for a tombstone; see [`super::revision`]) →
//!   marshaled `mvccpb.KeyValue`.
//! * bucket `meta`: `consistent_index` → u64 big-endian; `scheduledCompactRev` and
//!   `finishedCompactRev` → a 17-byte revision key with `sub = 0`.
//!
//! Writes become durable at [`Backend::commit`]; until then a crash may lose them (never
//! reorder them). Readers of the same backend object see uncommitted writes.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Bound;

/// The buckets etcd keeps, with their on-disk names (etcd's `buckets.go`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Bucket {
    Key,
    Meta,
    Lease,
    Alarm,
    Cluster,
    Members,
    MembersRemoved,
    Auth,
    AuthUsers,
    AuthRoles,
}

impl Bucket {
    pub const ALL: [Bucket; 10] = [
        Bucket::Key,
        Bucket::Meta,
        Bucket::Lease,
        Bucket::Alarm,
        Bucket::Cluster,
        Bucket::Members,
        Bucket::MembersRemoved,
        Bucket::Auth,
        Bucket::AuthUsers,
        Bucket::AuthRoles,
    ];

    /// The bucket's name as etcd spells it (hashed by HashKV for the key bucket).
    pub const fn name(self) -> &'static [u8] {
        match self {
            Bucket::Key => b"key",
            Bucket::Meta => b"meta",
            Bucket::Lease => b"lease",
            Bucket::Alarm => b"alarm",
            Bucket::Cluster => b"cluster",
            Bucket::Members => b"members",
            Bucket::MembersRemoved => b"members_removed",
            Bucket::Auth => b"auth",
            Bucket::AuthUsers => b"authUsers",
            Bucket::AuthRoles => b"authRoles",
        }
    }

    /// The bucket's position in [`Bucket::ALL`], for per-bucket arrays.
    pub(crate) const fn slot(self) -> usize {
        self as usize
    }
}

/// Meta-bucket key of the raft index of the last applied entry.
pub const META_CONSISTENT_INDEX: &[u8] = b"consistent_index";
/// Meta-bucket key of the revision of the last compaction requested.
pub const META_SCHEDULED_COMPACT: &[u8] = b"scheduledCompactRev";
/// Meta-bucket key of the revision of the last compaction finished (physically done).
pub const META_FINISHED_COMPACT: &[u8] = b"finishedCompactRev";

/// A failure of the storage below MVCC.
#[derive(Debug)]
pub enum BackendError {
    /// Bytes read back do not decode: a damaged file or a bug. Never a panic.
    Corrupted(String),
    Io(std::io::Error),
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendError::Corrupted(what) => write!(f, "backend corrupted: {what}"),
            BackendError::Io(e) => write!(f, "backend i/o: {e}"),
        }
    }
}

impl std::error::Error for BackendError {}

impl From<std::io::Error> for BackendError {
    fn from(e: std::io::Error) -> Self {
        BackendError::Io(e)
    }
}

/// Scan direction for [`Backend::scan`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Ascending,
    Descending,
}

/// Byte-oriented bucketed storage (bbolt's role in etcd).
pub trait Backend {
    /// The value stored under `key`, if any.
    fn get(&self, bucket: Bucket, key: &[u8]) -> Result<Option<&[u8]>, BackendError>;

    /// Stores `value` under `key`, replacing any previous value.
    fn put(&mut self, bucket: Bucket, key: &[u8], value: &[u8]) -> Result<(), BackendError>;

    /// Removes `key`; returns whether it was present.
    fn delete(&mut self, bucket: Bucket, key: &[u8]) -> Result<bool, BackendError>;

    /// Visits the entries with `start <= key < end` (`end == None`: to the bucket's end) in
    /// `direction`, calling `visit(key, value)` until it returns false.
    fn scan(
        &self,
        bucket: Bucket,
        start: &[u8],
        end: Option<&[u8]>,
        direction: Direction,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), BackendError>;

    /// Starts making every write so far durable. [`MemBackend`] and inline writers finish
    /// before returning; the B+tree on a server finishes in the background, and
    /// [`Backend::get_durable`] then shows the state of the last commit that finished.
    fn commit(&mut self) -> Result<(), BackendError>;

    /// The value of `key` as of the last finished commit (what a crash now would keep).
    fn get_durable(&self, bucket: Bucket, key: &[u8]) -> Result<Option<&[u8]>, BackendError> {
        self.get(bucket, key)
    }
}

/// An in-memory [`Backend`]: one ordered map per bucket.
#[derive(Clone, Debug, Default)]
pub struct MemBackend {
    buckets: [BTreeMap<Vec<u8>, Vec<u8>>; Bucket::ALL.len()],
    commits: u64,
}

impl MemBackend {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of entries in `bucket`.
    pub fn len(&self, bucket: Bucket) -> usize {
        self.buckets[bucket.slot()].len()
    }

    /// Bytes held in keys and values across all buckets: the in-memory stand-in for
    /// etcd's dbSize until the file-backed B+tree lands.
    pub fn size_bytes(&self) -> usize {
        self.buckets
            .iter()
            .flat_map(|b| b.iter())
            .map(|(k, v)| k.len() + v.len())
            .sum()
    }

    /// Number of commits so far (lets tests see the store's commit points).
    pub fn commits(&self) -> u64 {
        self.commits
    }
}

impl Backend for MemBackend {
    fn get(&self, bucket: Bucket, key: &[u8]) -> Result<Option<&[u8]>, BackendError> {
        Ok(self.buckets[bucket.slot()].get(key).map(Vec::as_slice))
    }

    fn put(&mut self, bucket: Bucket, key: &[u8], value: &[u8]) -> Result<(), BackendError> {
        let map = &mut self.buckets[bucket.slot()];
        match map.get_mut(key) {
            Some(old) => {
                old.clear();
                old.extend_from_slice(value);
            }
            None => {
                map.insert(key.to_vec(), value.to_vec());
            }
        }
        Ok(())
    }

    fn delete(&mut self, bucket: Bucket, key: &[u8]) -> Result<bool, BackendError> {
        Ok(self.buckets[bucket.slot()].remove(key).is_some())
    }

    fn scan(
        &self,
        bucket: Bucket,
        start: &[u8],
        end: Option<&[u8]>,
        direction: Direction,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), BackendError> {
        let upper = match end {
            // BTreeMap::range panics on inverted bounds; an inverted range is empty.
            Some(end) if end <= start => return Ok(()),
            Some(end) => Bound::Excluded(end),
            None => Bound::Unbounded,
        };
        let bounds: (Bound<&[u8]>, Bound<&[u8]>) = (Bound::Included(start), upper);
        let range = self.buckets[bucket.slot()].range::<[u8], _>(bounds);
        match direction {
            Direction::Ascending => {
                for (k, v) in range {
                    if !visit(k, v) {
                        break;
                    }
                }
            }
            Direction::Descending => {
                for (k, v) in range.rev() {
                    if !visit(k, v) {
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    fn commit(&mut self) -> Result<(), BackendError> {
        self.commits += 1;
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The keys a scan of the key bucket visits, in visiting order (any backend).
    pub(crate) fn keys(
        b: &impl Backend,
        start: &[u8],
        end: Option<&[u8]>,
        dir: Direction,
    ) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        b.scan(Bucket::Key, start, end, dir, &mut |k, _| {
            out.push(k.to_vec());
            true
        })
        .unwrap();
        out
    }

    #[test]
    fn buckets_are_separate_and_scans_bounded() {
        let mut b = MemBackend::new();
        for k in [b"a", b"b", b"c", b"d"] {
            b.put(Bucket::Key, k, b"v").unwrap();
        }
        b.put(Bucket::Meta, b"a", b"meta").unwrap();
        assert_eq!(b.get(Bucket::Meta, b"a").unwrap(), Some(&b"meta"[..]));
        assert_eq!(b.get(Bucket::Key, b"a").unwrap(), Some(&b"v"[..]));
        assert_eq!(
            keys(&b, b"b", Some(b"d"), Direction::Ascending),
            vec![b"b".to_vec(), b"c".to_vec()]
        );
        assert_eq!(
            keys(&b, b"b", None, Direction::Descending),
            vec![b"d".to_vec(), b"c".to_vec(), b"b".to_vec()]
        );
        assert!(keys(&b, b"d", Some(b"a"), Direction::Ascending).is_empty());
        assert!(b.delete(Bucket::Key, b"a").unwrap());
        assert!(!b.delete(Bucket::Key, b"a").unwrap());
        assert_eq!(b.len(Bucket::Key), 3);
        b.put(Bucket::Meta, b"a", b"x").unwrap();
        assert_eq!(b.get(Bucket::Meta, b"a").unwrap(), Some(&b"x"[..]));
    }

    #[test]
    fn scan_stops_when_told() {
        let mut b = MemBackend::new();
        for k in [b"a", b"b", b"c"] {
            b.put(Bucket::Key, k, b"").unwrap();
        }
        let mut n = 0;
        b.scan(Bucket::Key, b"", None, Direction::Ascending, &mut |_, _| {
            n += 1;
            n < 2
        })
        .unwrap();
        assert_eq!(n, 2);
    }
}
