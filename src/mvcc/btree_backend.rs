//! The file-backed [`Backend`]: the mmap B+tree of `tern_storage::btree` (bbolt's role in
//! etcd), in etcd's file `<data-dir>/member/snap/db` with etcd's bucket names.
//!
//! Invariants:
//! - Writes go into one open B+tree write transaction, created by the first write after a
//!   commit; [`Backend::commit`] commits it (pages, fdatasync, meta, fdatasync), so a write is
//!   durable exactly when the commit that follows it returns.
//! - Reads see every write so far, committed or not (etcd's backend read buffer does the
//!   same): through the open write transaction when there is one, else through a read
//!   snapshot of the last commit, refreshed after every commit.
//! - The held read snapshot pins pages; it is dropped while defragmenting so that defrag can
//!   move and truncate everything.
//! - The file is locked (`flock`, exclusive) for as long as the backend lives, as bbolt
//!   locks it, so two servers can never write one data dir.

use std::fs::File;
use std::ops::Bound;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use tern_storage::btree::{self, Db, DefragReport, ReadTxn, Stats, WriteTxn};

use super::backend::{Backend, BackendError, Bucket, Direction};

/// How many entries one step of a scan through the open write transaction copies out
/// before handing them to the visitor; bounds memory when a visitor stops early.
const WRITE_SCAN_CHUNK_MAX: usize = 256;

/// Where etcd keeps its backend inside the data dir (`server/storage/datadir`: member/snap/db).
pub fn db_path(data_dir: &Path) -> PathBuf {
    data_dir.join("member").join("snap").join("db")
}

impl From<btree::Error> for BackendError {
    fn from(error: btree::Error) -> Self {
        match error {
            btree::Error::Io(e) => BackendError::Io(e),
            btree::Error::Corrupted(what) => BackendError::Corrupted(what),
            other => BackendError::Io(std::io::Error::other(other.to_string())),
        }
    }
}

/// The B+tree behind the MVCC store.
pub struct BtreeBackend {
    db: Db,
    /// Uncommitted writes since the last commit.
    write: Option<WriteTxn>,
    /// The last commit, for reads while `write` is `None`. `None` only during defrag.
    read: Option<ReadTxn>,
    /// Holds the exclusive `flock` on the file.
    _lock: File,
}

impl BtreeBackend {
    /// Opens (creating it and its directories if missing) the database at `path`.
    pub fn open(path: &Path) -> Result<BtreeBackend, BackendError> {
        if let Some(dir) = path.parent() {
            create_private_dirs(dir)?;
        }
        let db = Db::open(path, btree::Options::default())?;
        let lock = File::open(path)?;
        // Safety: flock on a descriptor we own; no memory is involved.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            return Err(BackendError::Io(std::io::Error::new(
                e.kind(),
                format!("{} is locked by another process: {e}", path.display()),
            )));
        }
        let read = Some(db.begin_read());
        Ok(BtreeBackend {
            db,
            write: None,
            read,
            _lock: lock,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        self.db.path()
    }

    /// File size and in-use size as of the last commit (etcd's dbSize and dbSizeInUse).
    pub fn stats(&self) -> Result<Stats, BackendError> {
        Ok(self.db.stats()?)
    }

    /// Commits pending writes, then runs the B+tree's online defragmentation.
    pub fn defragment(&mut self) -> Result<DefragReport, BackendError> {
        self.commit()?;
        // Our own snapshot would pin the pages defrag wants to move.
        self.read = None;
        let report = self.db.defrag();
        self.read = Some(self.db.begin_read());
        Ok(report?)
    }

    fn writer(&mut self) -> Result<&mut WriteTxn, BackendError> {
        if self.write.is_none() {
            self.write = Some(self.db.begin_write()?);
        }
        Ok(self.write.as_mut().expect("just opened"))
    }

    fn reader(&self) -> Result<&ReadTxn, BackendError> {
        self.read
            .as_ref()
            .ok_or_else(|| BackendError::Corrupted("backend read during defragmentation".into()))
    }
}

/// Creates `dir` and its missing parents with mode 0700, as etcd does for its data dir.
fn create_private_dirs(dir: &Path) -> Result<(), BackendError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    Ok(())
}

impl Backend for BtreeBackend {
    fn get(&self, bucket: Bucket, key: &[u8]) -> Result<Option<&[u8]>, BackendError> {
        Ok(match &self.write {
            Some(write) => write.get(bucket.name(), key)?,
            None => self.reader()?.get(bucket.name(), key)?,
        })
    }

    fn put(&mut self, bucket: Bucket, key: &[u8], value: &[u8]) -> Result<(), BackendError> {
        Ok(self.writer()?.put(bucket.name(), key, value)?)
    }

    fn delete(&mut self, bucket: Bucket, key: &[u8]) -> Result<bool, BackendError> {
        Ok(self.writer()?.delete(bucket.name(), key)?)
    }

    fn scan(
        &self,
        bucket: Bucket,
        start: &[u8],
        end: Option<&[u8]>,
        direction: Direction,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), BackendError> {
        if matches!(end, Some(end) if end <= start) {
            return Ok(());
        }
        let upper = end.map_or(Bound::Unbounded, Bound::Excluded);
        let lower = Bound::Included(start);
        let Some(write) = &self.write else {
            // The committed snapshot: stream straight from the mmap.
            let reader = self.reader()?;
            let range = match direction {
                Direction::Ascending => reader.range(bucket.name(), lower, upper)?,
                Direction::Descending => reader.range_rev(bucket.name(), lower, upper)?,
            };
            for entry in range {
                let (k, v) = entry?;
                if !visit(k, v) {
                    break;
                }
            }
            return Ok(());
        };
        // Through uncommitted writes: the write transaction copies entries out, so take them
        // a chunk at a time and resume after the last key seen.
        let reverse = direction == Direction::Descending;
        let mut resume: Option<Vec<u8>> = None;
        loop {
            let (lo, hi) = match (&resume, reverse) {
                (None, _) => (lower, upper),
                (Some(last), false) => (Bound::Excluded(last.as_slice()), upper),
                (Some(last), true) => (lower, Bound::Excluded(last.as_slice())),
            };
            let chunk = write.range(bucket.name(), lo, hi, reverse, WRITE_SCAN_CHUNK_MAX)?;
            let full = chunk.len() == WRITE_SCAN_CHUNK_MAX;
            for (k, v) in &chunk {
                if !visit(k, v) {
                    return Ok(());
                }
            }
            match chunk.into_iter().last() {
                Some((k, _)) if full => resume = Some(k),
                _ => return Ok(()),
            }
        }
    }

    fn commit(&mut self) -> Result<(), BackendError> {
        if let Some(write) = self.write.take() {
            write.commit()?;
            self.read = Some(self.db.begin_read());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::mvcc::backend::tests::keys;

    fn temp_path(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("tern-btree-backend-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        db_path(&dir)
    }

    #[test]
    fn reads_see_uncommitted_writes_and_commits_survive_reopen() {
        let path = temp_path("reopen");
        {
            let mut b = BtreeBackend::open(&path).unwrap();
            b.put(Bucket::Key, b"a", b"1").unwrap();
            b.put(Bucket::Meta, b"a", b"m").unwrap();
            assert_eq!(b.get(Bucket::Key, b"a").unwrap(), Some(&b"1"[..]));
            b.commit().unwrap();
            b.put(Bucket::Key, b"b", b"2").unwrap();
            // Dropped without commit: "b" is lost, "a" is not.
        }
        let mut b = BtreeBackend::open(&path).unwrap();
        assert_eq!(b.get(Bucket::Key, b"a").unwrap(), Some(&b"1"[..]));
        assert_eq!(b.get(Bucket::Meta, b"a").unwrap(), Some(&b"m"[..]));
        assert_eq!(b.get(Bucket::Key, b"b").unwrap(), None);
        assert!(b.delete(Bucket::Key, b"a").unwrap());
        assert!(!b.delete(Bucket::Key, b"a").unwrap());
        assert_eq!(b.get(Bucket::Key, b"a").unwrap(), None);
        b.commit().unwrap();
        assert_eq!(b.get(Bucket::Key, b"a").unwrap(), None);
        assert!(b.stats().unwrap().db_size_bytes > 0);
        drop(b);
        let _ = std::fs::remove_dir_all(path.parent().unwrap().parent().unwrap().parent().unwrap());
    }

    #[test]
    fn second_open_of_a_locked_file_fails() {
        let path = temp_path("lock");
        let b = BtreeBackend::open(&path).unwrap();
        assert!(BtreeBackend::open(&path).is_err());
        drop(b);
        assert!(BtreeBackend::open(&path).is_ok());
        let _ = std::fs::remove_dir_all(path.parent().unwrap().parent().unwrap().parent().unwrap());
    }

    #[test]
    fn scans_agree_committed_and_uncommitted_across_chunks() {
        let path = temp_path("scan");
        let mut b = BtreeBackend::open(&path).unwrap();
        let n = WRITE_SCAN_CHUNK_MAX * 2 + 7;
        for i in 0..n {
            b.put(Bucket::Key, format!("k{i:05}").as_bytes(), b"v")
                .unwrap();
        }
        b.put(Bucket::Meta, b"k", b"other bucket").unwrap();
        let check = |b: &BtreeBackend| {
            let all = keys(b, b"", None, Direction::Ascending);
            assert_eq!(all.len(), n);
            assert!(all.windows(2).all(|w| w[0] < w[1]));
            let mut rev = keys(b, b"", None, Direction::Descending);
            rev.reverse();
            assert_eq!(rev, all);
            let bounded = keys(b, b"k00010", Some(b"k00300"), Direction::Ascending);
            assert_eq!(bounded.len(), 290);
            assert!(keys(b, b"k2", Some(b"k1"), Direction::Ascending).is_empty());
            let mut seen = 0;
            b.scan(Bucket::Key, b"", None, Direction::Ascending, &mut |_, _| {
                seen += 1;
                seen < 300
            })
            .unwrap();
            assert_eq!(seen, 300);
        };
        check(&b); // through the write transaction
        b.commit().unwrap();
        check(&b); // through the read snapshot
        b.defragment().unwrap();
        check(&b);
        drop(b);
        let _ = std::fs::remove_dir_all(path.parent().unwrap().parent().unwrap().parent().unwrap());
    }
}
