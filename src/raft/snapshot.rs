//! Raft snapshots. As in etcd, the backend database *is* the snapshot's state: a raft
//! snapshot records the raft index the database holds durably and the membership as of that
//! index (a few KB), never a copy of the keys. A lagging follower is sent the database itself
//! (a consistent image of one commit, `tern_storage::btree::Export`, streamed by
//! `transport.rs`).
//!
//! Formats (docs/peer-protocol.md, "Snapshot"):
//! - `<term:016x>-<index:016x>.snap`: a CRC-32C (u32 big-endian) of the rest, then the
//!   protobuf-encoded raft `Snapshot` whose `data` is a prost [`SnapshotData`]. A file whose
//!   CRC does not match is an error, never a panic.
//! - `<index:016x>.snap.db`: a database image received from the leader for the snapshot at
//!   `index`, waiting to replace `member/snap/db` (`ready.rs`, `install_snapshot`).
//!
//! Invariants:
//! - files are written to a temporary name, fsynced, renamed, and the directory fsynced, so
//!   a crash leaves either the whole file or none;
//! - all file I/O here blocks, so the async functions run it on the executor's blocking
//!   pool; nothing here touches a file on an executor thread.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use prost::Message as _;
use protobuf::Message as _;
use raft::eraftpb::Snapshot;

use crate::membership::cluster::{MemberRecord, Membership};

/// What a snapshot's `data` holds: the membership at the snapshot's index. Tag 1 (the old
/// whole-state copy) is retired and never written.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SnapshotData {
    #[prost(message, repeated, tag = "2")]
    pub members: Vec<MemberRecord>,
    #[prost(uint64, repeated, tag = "3")]
    pub removed: Vec<u64>,
    #[prost(string, tag = "4")]
    pub cluster_version: String,
}

#[derive(Debug)]
pub struct SnapshotFile {
    pub snapshot: Snapshot,
}

pub fn encode(membership: &Membership) -> Vec<u8> {
    SnapshotData {
        members: membership.members.values().cloned().collect(),
        removed: membership.removed.iter().copied().collect(),
        cluster_version: membership.cluster_version.clone().unwrap_or_default(),
    }
    .encode_to_vec()
}

/// Replaces the membership with the snapshot's.
pub fn restore_membership(snapshot: &Snapshot, membership: &mut Membership) -> Result<(), String> {
    let data =
        SnapshotData::decode(&snapshot.data[..]).map_err(|e| format!("snapshot data: {e}"))?;
    let mut fresh = Membership::default();
    for m in data.members {
        fresh.members.insert(m.id, m);
    }
    fresh.removed = data.removed.into_iter().collect();
    fresh.cluster_version = (!data.cluster_version.is_empty()).then_some(data.cluster_version);
    *membership = fresh;
    Ok(())
}

fn file_name(term: u64, raft_index: u64) -> String {
    format!("{term:016x}-{raft_index:016x}.snap")
}

/// Where the database image for the snapshot at `raft_index` waits to be installed.
pub fn db_image_path(dir: &Path, raft_index: u64) -> PathBuf {
    dir.join(format!("{raft_index:016x}.snap.db"))
}

/// Runs blocking file work on the current executor's blocking pool.
pub async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    glommio::executor()
        .spawn_blocking(move || {
            crate::runtime::thread_name::prepare_blocking_thread(
                crate::runtime::thread_name::BlockingWork::Background,
            );
            work()
        })
        .await
}

/// Saves `snapshot` durably (on the blocking pool).
pub async fn save(dir: &Path, snapshot: &Snapshot) -> Result<(), String> {
    let dir = dir.to_path_buf();
    let snapshot = snapshot.clone();
    blocking(move || save_blocking(&dir, &snapshot)).await
}

/// `save` on the calling thread (for offline work such as `crate::migrate`).
pub fn save_blocking(dir: &Path, snapshot: &Snapshot) -> Result<(), String> {
    let meta = snapshot.get_metadata();
    let body = snapshot.write_to_bytes().map_err(|e| e.to_string())?;
    let mut bytes = crc32c::crc32c(&body).to_be_bytes().to_vec();
    bytes.extend_from_slice(&body);
    let path = dir.join(file_name(meta.term, meta.index));
    let temp = path.with_extension("snap.tmp");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&temp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&temp, &path)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| format!("cannot save snapshot {}: {e}", path.display()))
}

/// Loads the snapshot file at `raft_index`/`term` (on the blocking pool).
pub async fn load(dir: &Path, raft_index: u64, term: u64) -> Result<SnapshotFile, String> {
    let dir = dir.to_path_buf();
    blocking(move || load_blocking(&dir, raft_index, term)).await
}

/// `load` on the calling thread (for offline work such as `ternutl backup`).
pub fn load_blocking(dir: &Path, raft_index: u64, term: u64) -> Result<SnapshotFile, String> {
    let path = dir.join(file_name(term, raft_index));
    let bytes = std::fs::read(&path)
        .map_err(|e| format!("cannot read snapshot {}: {e}", path.display()))?;
    if bytes.len() < 4 || crc32c::crc32c(&bytes[4..]).to_be_bytes() != bytes[..4] {
        return Err(format!(
            "snapshot {} is corrupt (CRC mismatch)",
            path.display()
        ));
    }
    let snapshot = crate::raft::codec::decode_snapshot(&bytes[4..])
        .map_err(|e| format!("snapshot {}: {e}", path.display()))?;
    Ok(SnapshotFile { snapshot })
}

/// Moves the database image for the snapshot at `raft_index` into place as `db_path` (a
/// rename, then the directory fsynced). Blocking.
pub fn install_db_image_blocking(
    dir: &Path,
    raft_index: u64,
    db_path: &Path,
) -> Result<(), String> {
    let image = db_image_path(dir, raft_index);
    let step = || -> std::io::Result<()> {
        std::fs::rename(&image, db_path)?;
        let db_dir = db_path.parent().unwrap_or(Path::new("."));
        std::fs::File::open(db_dir)?.sync_all()
    };
    step().map_err(|e| {
        format!(
            "cannot move the snapshot database {} to {}: {e}",
            image.display(),
            db_path.display()
        )
    })
}

/// The raft index a snapshot file or database image is for, from its name (`None` for
/// other files).
fn file_raft_index(name: &str) -> Option<u64> {
    if let Some(stem) = name.strip_suffix(".snap") {
        return stem
            .split_once('-')
            .and_then(|(_, i)| u64::from_str_radix(i, 16).ok());
    }
    // `<index>.snap.db` and an interrupted receive's `<index>.snap.db.<n>.tmp`.
    let (index, rest) = name.split_once('.')?;
    if rest == "snap.db" || (rest.starts_with("snap.db.") && rest.ends_with(".tmp")) {
        return u64::from_str_radix(index, 16).ok();
    }
    None
}

/// Deletes snapshot files and database images older than the snapshot at `keep_index`
/// (on the blocking pool).
pub async fn purge(dir: &Path, keep_index: u64) {
    let dir = dir.to_path_buf();
    blocking(move || purge_blocking(&dir, keep_index)).await
}

fn purge_blocking(dir: &Path, keep_index: u64) {
    let Ok(read) = std::fs::read_dir(dir) else {
        return;
    };
    let old: Vec<PathBuf> = read
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(file_raft_index)
                .is_some_and(|i| i < keep_index)
        })
        .collect();
    for p in old {
        let _ = std::fs::remove_file(p);
    }
}

#[cfg(test)]
mod tests {
    //! A saved snapshot loads back; a flipped byte is reported as corruption, not a panic;
    //! purge removes older snapshot files and database images and nothing else.
    use super::*;
    use crate::raft::log_store::snapshot_metadata;
    use raft::eraftpb::ConfState;

    #[test]
    fn save_load_and_corruption() {
        let dir = std::env::temp_dir().join(format!("tern-snap-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut snapshot = Snapshot::default();
        snapshot.set_metadata(snapshot_metadata(42, 3, ConfState::default()));
        snapshot.data = SnapshotData {
            cluster_version: "3.4.0".into(),
            ..Default::default()
        }
        .encode_to_vec()
        .into();
        save_blocking(&dir, &snapshot).unwrap();
        assert_eq!(load_blocking(&dir, 42, 3).unwrap().snapshot, snapshot);
        let path = dir.join(file_name(3, 42));
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        std::fs::write(&path, bytes).unwrap();
        assert!(load_blocking(&dir, 42, 3).unwrap_err().contains("corrupt"));
        assert!(load_blocking(&dir, 43, 3).is_err());
        std::fs::write(db_image_path(&dir, 41), b"x").unwrap();
        std::fs::write(dir.join("0000000000000029.snap.db.7.tmp"), b"x").unwrap();
        std::fs::write(db_image_path(&dir, 100), b"x").unwrap();
        std::fs::write(dir.join("db"), b"x").unwrap();
        purge_blocking(&dir, 100);
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, vec!["0000000000000064.snap.db", "db"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
