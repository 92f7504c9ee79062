//! `ternutl defrag --data-dir`: etcdutl's offline defragmentation of a data dir that no
//! server is using, in place.
//!
//! As etcd's: the data dir must hold `member/snap/db` (else `stat …` is the error), and the
//! database is locked first. bbolt takes an exclusive `flock` on open and waits for it; so
//! does this, and after a second of waiting it prints etcd's "waiting for etcd to close and
//! release its lock" line, then keeps waiting. A tern server holds the same lock on the
//! same file for its whole life (`src/mvcc/btree_backend.rs`) and takes it before it reads
//! the file, so a defragmentation and a server never use the database at the same time, in
//! either order.
//!
//! The work is `tern_storage::btree::Db::defrag`: pages from the end of the file moved into
//! free pages below, each pass an ordinary crash-safe commit, then the free tail cut off
//! (`storage/docs/btree.md`, "Online defragmentation"). etcd rewrites bbolt into a new file
//! instead; the outcome a client sees is the same: the same keys, revisions and hashes in
//! a file no larger than its pages in use. With no reader but itself, every free page below
//! the end can be used, so the file shrinks to (about) its in-use size.
//!
//! Output, as etcdutl 3.5: nothing on stdout; on stderr, the backend's "defragmenting" and
//! "finished defragmenting directory" log lines (zap console format, etcd's fields).

use std::fs::File;
use std::os::unix::io::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tern_storage::btree;

use crate::snapshot::{db_path, humanized_bytes, Failure};

/// How long the lock is waited for before etcd's "waiting for etcd to close" line (etcd's
/// `time.After(time.Second)`); the wait goes on after it.
pub const LOCK_NOTICE_AFTER: Duration = Duration::from_secs(1);

/// An exclusive or shared `flock` on the database file, held until dropped.
pub struct DbLock {
    _file: File,
}

/// Takes the `flock` (`exclusive`, else shared) on `path`, waiting for it. If it is not
/// granted within `notice_after`, `on_wait` is called once, and the wait goes on unless
/// `on_wait` returns an error, which is returned.
pub fn lock_db(
    path: &Path,
    exclusive: bool,
    notice_after: Duration,
    on_wait: impl FnOnce() -> Result<(), Failure>,
) -> Result<DbLock, Failure> {
    let file = File::open(path).map_err(|e| Failure(format!("open {}: {e}", path.display())))?;
    let operation = if exclusive {
        libc::LOCK_EX
    } else {
        libc::LOCK_SH
    };
    // Safety: flock on a descriptor we own; no memory is involved.
    if unsafe { libc::flock(file.as_raw_fd(), operation | libc::LOCK_NB) } == 0 {
        return Ok(DbLock { _file: file });
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
        return Err(Failure(format!("flock {}: {e}", path.display())));
    }
    // The blocking flock runs on a thread of its own so that the wait can be noticed.
    let (granted_tx, granted_rx) = mpsc::channel();
    std::thread::spawn(move || {
        // Safety: as above; the descriptor lives in `file`, moved into this thread.
        let rc = unsafe { libc::flock(file.as_raw_fd(), operation) };
        let outcome = if rc == 0 {
            Ok(file)
        } else {
            Err(std::io::Error::last_os_error())
        };
        let _ = granted_tx.send(outcome);
    });
    let outcome = match granted_rx.recv_timeout(notice_after) {
        Ok(outcome) => outcome,
        Err(_) => {
            on_wait()?;
            granted_rx
                .recv()
                .map_err(|_| Failure("the lock thread went away".into()))?
        }
    };
    let file = outcome.map_err(|e| Failure(format!("flock {}: {e}", path.display())))?;
    Ok(DbLock { _file: file })
}

/// What a defragmentation did (the fields of etcd's log lines).
#[derive(Clone, Copy, Debug)]
pub struct DefragOutcome {
    pub before: btree::Stats,
    pub after: btree::Stats,
    pub took: Duration,
}

/// Defragments `<data_dir>/member/snap/db` in place (module doc). `on_wait` is told when
/// the lock is not granted at once.
pub fn defrag_data_dir(
    data_dir: &Path,
    on_wait: impl FnOnce(&Path),
    on_start: impl FnOnce(&Path, &btree::Stats),
) -> Result<DefragOutcome, Failure> {
    let path: PathBuf = db_path(data_dir);
    std::fs::metadata(&path).map_err(|e| crate::snapshot::os_error("stat", &path, &e))?;
    let _lock = lock_db(&path, true, LOCK_NOTICE_AFTER, || {
        on_wait(&path);
        Ok(())
    })?;
    let db = btree::Db::open(&path, btree::Options::default())?;
    let before = db.stats()?;
    on_start(&path, &before);
    let started = Instant::now();
    db.defrag()?;
    let after = db.stats()?;
    Ok(DefragOutcome {
        before,
        after,
        took: started.elapsed(),
    })
}

/// A duration as Go's `time.Duration.String` prints it (`1.5s`, `12.3ms`, `850µs`).
pub fn go_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    let trim = |value: f64| {
        let text = format!("{value:.9}");
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    };
    if nanos == 0 {
        "0s".into()
    } else if nanos < 1_000 {
        format!("{nanos}ns")
    } else if nanos < 1_000_000 {
        format!("{}µs", trim(nanos as f64 / 1e3))
    } else if nanos < 1_000_000_000 {
        format!("{}ms", trim(nanos as f64 / 1e6))
    } else {
        format!("{}s", trim(nanos as f64 / 1e9))
    }
}

/// The log lines' size fields, as etcd's backend logs them.
pub fn size_fields(stats: &btree::Stats) -> Vec<(&'static str, String)> {
    vec![
        ("current-db-size-bytes", stats.db_size_bytes.to_string()),
        ("current-db-size", humanized_bytes(stats.db_size_bytes)),
        (
            "current-db-size-in-use-bytes",
            stats.db_size_in_use_bytes.to_string(),
        ),
        (
            "current-db-size-in-use",
            humanized_bytes(stats.db_size_in_use_bytes),
        ),
    ]
}

#[cfg(test)]
mod tests {
    //! The lock protocol against a holder in this process (flock locks belong to open file
    //! descriptions, so two opens here contend as two processes would), and Go's duration
    //! text. The end-to-end test with a real server is `tests/offline_tools.rs`.
    use super::*;

    #[test]
    fn durations_print_as_go() {
        assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(go_duration(Duration::from_micros(12_300)), "12.3ms");
        assert_eq!(go_duration(Duration::from_micros(850)), "850µs");
        assert_eq!(go_duration(Duration::from_nanos(7)), "7ns");
        assert_eq!(go_duration(Duration::ZERO), "0s");
    }

    #[test]
    fn a_held_lock_is_waited_for_and_the_wait_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        std::fs::write(&path, b"x").unwrap();
        let holder = lock_db(&path, true, LOCK_NOTICE_AFTER, || Ok(())).unwrap();
        // A shared lock waits too; the caller may give up when told of the wait.
        let refused = lock_db(&path, false, Duration::from_millis(10), || {
            Err(Failure("gave up".into()))
        });
        assert_eq!(refused.err().map(|f| f.0).as_deref(), Some("gave up"));
        let (told_tx, told_rx) = mpsc::channel();
        let waiter = std::thread::spawn({
            let path = path.clone();
            move || {
                lock_db(&path, true, Duration::from_millis(10), move || {
                    told_tx.send(()).unwrap();
                    Ok(())
                })
                .map(|_| ())
            }
        });
        told_rx.recv().unwrap();
        drop(holder);
        assert!(waiter.join().unwrap().is_ok());
    }
}
