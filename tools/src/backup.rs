//! `ternutl backup`: etcdutl's legacy offline backup. It copies a stopped member's data
//! dir into a new one for a *new* one-member cluster, dropping the old member identity, as
//! etcdutl 3.5's `backup` does (`etcdutl/etcdutl/backup_command.go`):
//!
//! - a new member ID and cluster ID, made by etcd's ID scheme (`idutil` with member 0: the
//!   low 40 bits of the Unix time in ms, shifted 8, plus a counter);
//! - the membership becomes that one member, named `etcdctl-v2-backup`, with the peer URL
//!   `http://use-flag--force-new-cluster:2080` (etcd's names: the backup is meant to be
//!   started with `--force-new-cluster`, and `member update` then sets the real peer URL);
//! - raft entries keep their index and term, but membership changes (ConfChanges, member
//!   updates and publishes) become empty entries, as 3.5 turns them into no-ops; with
//!   `--with-v3=false` so do the key, lease, auth, alarm and compaction entries, and the
//!   backend starts empty at the log's commit index;
//! - the hard state (term, vote, commit) is kept.
//!
//! tern keeps the membership in its raft snapshot, not in the backend (`docs/backup.md`),
//! so where etcd rewrites the backend's `members` buckets and the v2 store of its `.snap`,
//! this writes a raft snapshot at the copied backend's consistent index holding the new
//! membership (one voter: the new member), and the WAL from there on. The entries at or
//! below that index are already in the backend; the snapshot carries the cluster version
//! they set. Started on the result, tern finds a one-member cluster of the new member
//! whether or not `--force-new-cluster` is given (etcd needs it).
//!
//! Safety: the source database is read under a shared `flock`, which a running server
//! (holding its exclusive lock for life) excludes; after a second without it the backup
//! fails with etcd's "timed out waiting to acquire lock on" (etcdutl gives up there too).
//! The WAL is read from a private copy, since opening a WAL may cut a torn tail. The
//! source is not changed. The backup's snap dir must be empty and its WAL dir must hold no
//! WAL (etcd's `CreateDirAll` and `wal.Create` rules); on failure what was created is
//! removed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use raft::eraftpb::{ConfState, Entry, EntryType, HardState, Snapshot};
use tern::membership::cluster::{MemberRecord, Membership};
use tern::raft::log_store;
use tern::state::envelope::{Body, Envelope};
use tern_storage::{btree, wal};

use crate::defrag::lock_db;
use crate::snapshot::{db_path, os_error, Failure};

/// etcd's name for the one member of a backup's cluster.
pub const BACKUP_MEMBER_NAME: &str = "etcdctl-v2-backup";
/// etcd's placeholder peer URL for it.
pub const BACKUP_PEER_URL: &str = "http://use-flag--force-new-cluster:2080";
/// How long the source database's lock is waited for (etcd's `time.After(time.Second)`).
pub const LOCK_WAIT_MAX: Duration = Duration::from_secs(1);
/// Pages per chunk of the database copy (bounds the copy's memory: 4 MiB).
const COPY_CHUNK_PAGES: u64 = 1024;
/// io_uring memory of the one-off executor that reads and writes the WALs.
const WAL_IO_MEMORY_BYTES: usize = 2 * 1024 * 1024;
/// Entry bytes per WAL append while writing the backup's log (one fdatasync per this much,
/// well under the WAL's per-append maximum).
const WAL_APPEND_BYTES: usize = 8 << 20;

/// etcdutl's flags.
#[derive(Clone, Debug)]
pub struct BackupConfig {
    pub data_dir: PathBuf,
    pub backup_dir: PathBuf,
    /// The source WAL (default `<data-dir>/member/wal`).
    pub wal_dir: Option<PathBuf>,
    /// Where the backup's WAL goes (default `<backup-dir>/member/wal`).
    pub backup_wal_dir: Option<PathBuf>,
    pub with_v3: bool,
}

/// Why an entry became empty (etcd logs each).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dropped {
    ConfChange,
    MemberAttributes,
    V3,
}

impl Dropped {
    /// etcd's log message for it.
    pub fn message(self) -> &'static str {
        match self {
            Dropped::ConfChange => "ignoring EntryConfChange raft entry",
            Dropped::MemberAttributes => "ignoring member attribute update on",
            Dropped::V3 => "ignoring v3 raft entry",
        }
    }
}

/// What a backup wrote.
#[derive(Clone, Debug)]
pub struct BackupReport {
    pub member_id: u64,
    pub cluster_id: u64,
    /// The raft index of the backup's snapshot (the backend's consistent index).
    pub snapshot_index: u64,
    pub entries: usize,
    pub dropped: Vec<(u64, Dropped)>,
}

/// etcd's `idutil.Generator` for member 0 at `unix_ms`: its first two IDs.
pub fn new_ids(unix_ms: u64) -> (u64, u64) {
    const TS_BITS: u32 = 40;
    const COUNT_BITS: u32 = 8;
    let base = (unix_ms & ((1 << TS_BITS) - 1)) << COUNT_BITS;
    (base + 1, base + 2)
}

/// An entry's replacement: same index and term, no data (what raft leaders append).
fn empty_entry(e: &Entry) -> Entry {
    let mut empty = Entry::default();
    empty.set_entry_type(EntryType::EntryNormal);
    empty.index = e.index;
    empty.term = e.term;
    empty
}

/// Whether the backup keeps `e`, and why not.
pub fn classify(e: &Entry, with_v3: bool) -> Result<Option<Dropped>, Failure> {
    match e.get_entry_type() {
        EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
            return Ok(Some(Dropped::ConfChange))
        }
        EntryType::EntryNormal => {}
    }
    if e.data.is_empty() {
        return Ok(None);
    }
    let envelope = Envelope::decode_entry(&e.data)
        .map_err(|c| Failure(format!("raft entry {}: {c:?}", e.index)))?;
    Ok(match envelope.body {
        Some(Body::Member(_)) => Some(Dropped::MemberAttributes),
        Some(Body::ClusterVersion(_)) | None => None,
        Some(_) if with_v3 => None,
        Some(_) => Some(Dropped::V3),
    })
}

/// Runs the backup (module doc). `log` receives etcd's per-entry messages.
pub fn backup(
    config: &BackupConfig,
    unix_ms: u64,
    log: &mut dyn FnMut(Dropped, &Entry),
) -> Result<BackupReport, Failure> {
    let src_db = db_path(&config.data_dir);
    std::fs::metadata(&src_db).map_err(|e| os_error("stat", &src_db, &e))?;
    let dest_db = db_path(&config.backup_dir);
    let dest_snap = dest_db
        .parent()
        .expect("db_path has a parent")
        .to_path_buf();
    let src_wal = config
        .wal_dir
        .clone()
        .unwrap_or_else(|| wal::wal_dir(&config.data_dir));
    let dest_wal = config
        .backup_wal_dir
        .clone()
        .unwrap_or_else(|| wal::wal_dir(&config.backup_dir));
    create_empty_dir(&dest_snap)?;
    let result = backup_into(config, unix_ms, log, &src_db, &src_wal, &dest_db, &dest_wal);
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&dest_snap);
        if !dest_wal.starts_with(&dest_snap) {
            let _ = std::fs::remove_dir_all(&dest_wal);
        }
    }
    result
}

/// etcd's `fileutil.CreateDirAll`: created (0700) if missing, refused unless empty.
fn create_empty_dir(dir: &Path) -> Result<(), Failure> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| os_error("mkdir", dir, &e))?;
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| os_error("open", dir, &e))?
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    if !names.is_empty() {
        return Err(Failure(format!(
            "expected {:?} to be empty, got {:?}",
            dir.display().to_string(),
            names
        )));
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn backup_into(
    config: &BackupConfig,
    unix_ms: u64,
    log: &mut dyn FnMut(Dropped, &Entry),
    src_db: &Path,
    src_wal: &Path,
    dest_db: &Path,
    dest_wal: &Path,
) -> Result<BackupReport, Failure> {
    let _lock = lock_db(src_db, false, LOCK_WAIT_MAX, || {
        Err(Failure(format!(
            "timed out waiting to acquire lock on {}",
            src_db.display()
        )))
    })?;
    let recovered = read_wal(src_wal, &dest_db.with_file_name(".source-wal"))?;
    let marker = recovered.snapshot.unwrap_or_default();
    let src_snap = db_path(&config.data_dir)
        .parent()
        .expect("db_path has a parent")
        .to_path_buf();
    let mut membership = Membership::default();
    if marker.raft_index > 0 {
        let file = tern::raft::snapshot::load_blocking(&src_snap, marker.raft_index, marker.term)?;
        tern::raft::snapshot::restore_membership(&file.snapshot, &mut membership)?;
    }
    let (hard_state, entries) = log_store::recovered_raft_log(&recovered).map_err(Failure)?;

    // The backend, and the raft index it holds.
    let snapshot_index = if config.with_v3 {
        copy_db(src_db, dest_db)?;
        let db = btree::Db::open(dest_db, btree::Options::default())?;
        let read = db.begin_read();
        match read.get(
            btree::buckets::META,
            tern::mvcc::backend::META_CONSISTENT_INDEX,
        )? {
            Some(raw) => u64::from_be_bytes(
                raw.try_into()
                    .map_err(|_| Failure("meta consistent_index is not 8 bytes".into()))?,
            ),
            None => 0,
        }
    } else {
        let db = btree::Db::open(dest_db, btree::Options::default())?;
        let mut txn = db.begin_write()?;
        txn.put(
            btree::buckets::META,
            tern::mvcc::backend::META_CONSISTENT_INDEX,
            &hard_state.commit.to_be_bytes(),
        )?;
        txn.commit()?;
        hard_state.commit
    };
    if snapshot_index < marker.raft_index {
        return Err(Failure(format!(
            "the backend holds raft index {snapshot_index}, below the snapshot at {}",
            marker.raft_index
        )));
    }
    let snapshot_term = if snapshot_index == marker.raft_index {
        marker.term
    } else {
        entries
            .iter()
            .find(|e| e.index == snapshot_index)
            .map(|e| e.term)
            .ok_or_else(|| {
                Failure(format!(
                    "the backend holds raft index {snapshot_index}, which the WAL does not have"
                ))
            })?
    };
    if snapshot_index == 0 {
        return Err(Failure(
            "the backend holds no raft entry yet: start the server on the data dir and stop \
             it again, then back it up"
                .into(),
        ));
    }

    // The entries the backend holds set the cluster version the snapshot carries; the rest
    // are kept, translated.
    let mut kept = Vec::new();
    let mut dropped = Vec::new();
    for e in entries {
        if e.index <= snapshot_index {
            if let Ok(Envelope {
                body: Some(Body::ClusterVersion(version)),
                ..
            }) = Envelope::decode_entry(&e.data)
            {
                membership.cluster_version = Some(version);
            }
            continue;
        }
        match classify(&e, config.with_v3)? {
            Some(why) => {
                log(why, &e);
                dropped.push((e.index, why));
                kept.push(empty_entry(&e));
            }
            None => kept.push(e),
        }
    }

    let (member_id, cluster_id) = new_ids(unix_ms);
    let fresh = Membership {
        members: [(
            member_id,
            MemberRecord {
                id: member_id,
                name: BACKUP_MEMBER_NAME.into(),
                peer_urls: vec![BACKUP_PEER_URL.into()],
                client_urls: Vec::new(),
                is_learner: false,
            },
        )]
        .into_iter()
        .collect(),
        removed: Default::default(),
        cluster_version: membership.cluster_version.clone(),
    };
    let mut snapshot = Snapshot {
        data: tern::raft::snapshot::encode(&fresh).into(),
        ..Default::default()
    };
    let conf_state = ConfState {
        voters: vec![member_id],
        ..Default::default()
    };
    snapshot.set_metadata(log_store::snapshot_metadata(
        snapshot_index,
        snapshot_term,
        conf_state,
    ));
    let dest_snap = dest_db.parent().expect("db_path has a parent");
    tern::raft::snapshot::save_blocking(dest_snap, &snapshot)?;
    let report = BackupReport {
        member_id,
        cluster_id,
        snapshot_index,
        entries: kept.len(),
        dropped,
    };
    write_wal(
        dest_wal,
        wal::Metadata {
            cluster_id,
            member_id,
        },
        (snapshot_index, snapshot_term),
        kept,
        hard_state,
    )?;
    fsync_dir(dest_snap)?;
    Ok(report)
}

impl From<String> for Failure {
    fn from(text: String) -> Self {
        Failure(text)
    }
}

fn fsync_dir(dir: &Path) -> Result<(), Failure> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| os_error("fsync", dir, &e))
}

/// Copies the last commit of the database at `src` to `dest` (bbolt's `Tx.WriteTo`): a
/// consistent image, chunk by chunk, then fsynced.
fn copy_db(src: &Path, dest: &Path) -> Result<(), Failure> {
    use std::io::Write as _;
    let db = btree::Db::open(src, btree::Options::default())?;
    let mut export = db.export()?;
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dest)
        .map_err(|e| os_error("open", dest, &e))?;
    while let Some(chunk) = export.read_chunk(COPY_CHUNK_PAGES)? {
        out.write_all(&chunk)
            .map_err(|e| os_error("write", dest, &e))?;
    }
    out.sync_all().map_err(|e| os_error("fsync", dest, &e))
}

/// Runs `work` on a one-off glommio executor (tern's WAL is io_uring-driven).
fn on_wal_executor<T: Send + 'static>(
    name: &str,
    work: impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, Failure>>>>
        + Send
        + 'static,
) -> Result<T, Failure> {
    wal::executor::check_io_memory(WAL_IO_MEMORY_BYTES).map_err(Failure)?;
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .name(name)
        .io_memory(WAL_IO_MEMORY_BYTES)
        .spawn(work)
        .map_err(|e| Failure(format!("cannot start the WAL executor: {e}")))?
        .join()
        .map_err(|e| Failure(format!("the WAL executor failed: {e}")))?
}

/// The log in `src`, as tern's own start reads it, from a copy in `scratch` (removed after).
fn read_wal(src: &Path, scratch: &Path) -> Result<wal::Recovered, Failure> {
    std::fs::create_dir_all(scratch).map_err(|e| os_error("mkdir", scratch, &e))?;
    let copied = (|| -> Result<(), Failure> {
        for entry in std::fs::read_dir(src).map_err(|e| os_error("open", src, &e))? {
            let entry = entry.map_err(|e| os_error("read", src, &e))?;
            if entry
                .file_type()
                .map_err(|e| os_error("stat", src, &e))?
                .is_file()
            {
                std::fs::copy(entry.path(), scratch.join(entry.file_name()))
                    .map_err(|e| os_error("copy", &entry.path(), &e))?;
            }
        }
        Ok(())
    })();
    let result = copied.and_then(|()| {
        let dir = scratch.to_path_buf();
        on_wal_executor("ternutl-wal-read", move || {
            Box::pin(async move {
                let (log, recovered) = wal::Wal::open(&dir, wal::WalOptions::default())
                    .await
                    .map_err(|e| Failure(format!("cannot open the WAL: {e}")))?;
                log.close()
                    .await
                    .map_err(|e| Failure(format!("cannot close the WAL: {e}")))?;
                Ok(recovered)
            })
        })
    });
    let _ = std::fs::remove_dir_all(scratch);
    result
}

/// Writes the backup's WAL: metadata, the snapshot marker, the entries, the hard state.
fn write_wal(
    dir: &Path,
    metadata: wal::Metadata,
    (snapshot_index, snapshot_term): (u64, u64),
    entries: Vec<Entry>,
    hard_state: HardState,
) -> Result<(), Failure> {
    let dir = dir.to_path_buf();
    on_wal_executor("ternutl-wal-write", move || {
        Box::pin(async move {
            let fail = |e: wal::WalError| Failure(format!("cannot write the WAL: {e}"));
            let log = wal::Wal::create(&dir, wal::WalOptions::default(), metadata)
                .await
                .map_err(|e| Failure(format!("wal.Create failed: {e}")))?;
            log.append(vec![wal::WalRecord::Snapshot(wal::SnapshotMarker {
                raft_index: snapshot_index,
                term: snapshot_term,
            })])
            .await
            .map_err(fail)?;
            let mut batch = Vec::new();
            let mut batch_bytes = 0;
            let count = entries.len();
            for (i, e) in entries.iter().enumerate() {
                batch_bytes += e.data.len() + e.context.len();
                batch.push(log_store::wal_record(e));
                if batch_bytes >= WAL_APPEND_BYTES || i + 1 == count {
                    log.append(std::mem::take(&mut batch)).await.map_err(fail)?;
                    batch_bytes = 0;
                }
            }
            log.append(vec![log_store::wal_hard_state(&hard_state)])
                .await
                .map_err(fail)?;
            log.close().await.map_err(fail)
        })
    })
}

#[cfg(test)]
mod tests {
    //! etcd's ID scheme and which entries a backup empties. The end-to-end backup of a real
    //! server's data dir, started as a new cluster, is `tests/offline_tools.rs`.
    use super::*;
    use prost::Message as _;

    #[test]
    fn ids_follow_etcds_generator() {
        // idutil.NewGenerator(0, t) at t = 1_700_000_000_000 ms: low 40 bits << 8, then +1, +2.
        let (member, cluster) = new_ids(1_700_000_000_000);
        let base = (1_700_000_000_000u64 & ((1 << 40) - 1)) << 8;
        assert_eq!((member, cluster), (base + 1, base + 2));
        assert_ne!(member, 0);
    }

    fn normal(body: Body) -> Entry {
        Entry {
            index: 7,
            term: 2,
            data: Envelope::new(1, 1, body).encode_to_vec().into(),
            ..Default::default()
        }
    }

    #[test]
    fn membership_changes_are_emptied_and_v3_requests_only_without_v3() {
        let mut cc = Entry::default();
        cc.set_entry_type(EntryType::EntryConfChange);
        assert_eq!(classify(&cc, true).unwrap(), Some(Dropped::ConfChange));
        let publish = Envelope::member(
            1,
            1,
            tern::state::envelope::MemberOp::Publish,
            MemberRecord::default(),
        );
        let e = Entry {
            data: publish.encode_to_vec().into(),
            ..Default::default()
        };
        assert_eq!(classify(&e, true).unwrap(), Some(Dropped::MemberAttributes));
        let put = normal(Body::Put(Default::default()));
        assert_eq!(classify(&put, true).unwrap(), None);
        assert_eq!(classify(&put, false).unwrap(), Some(Dropped::V3));
        let version = normal(Body::ClusterVersion("3.4.0".into()));
        assert_eq!(classify(&version, false).unwrap(), None);
        assert_eq!(classify(&Entry::default(), false).unwrap(), None);
        let garbage = Entry {
            data: vec![0xff, 0xff].into(),
            ..Default::default()
        };
        assert!(classify(&garbage, true).is_err());
        let emptied = empty_entry(&put);
        assert_eq!((emptied.index, emptied.term), (7, 2));
        assert!(emptied.data.is_empty());
    }
}
