//! Migrating an etcd 3.4 member: tern started on an etcd data dir converts it, once, into a
//! tern data dir holding the same raft log (every entry at its index and term, translated
//! by `entry`), the same hard state, snapshot point, member and cluster IDs, and the same
//! backend (etcd's bbolt `member/snap/db` copied into tern's B+tree, consistent index
//! included). tern then starts as after a restart: it replays the log past the backend's
//! consistent index, so entries etcd had only in its WAL (its db lags by up to its batch
//! interval, more after a kill) are applied as etcd would apply them on its own restart.
//! The procedure and its guarantees are in `docs/migration.md`; etcd's WAL format is
//! `storage/docs/etcd-wal.md`.
//!
//! Invariants:
//! - the conversion is all or nothing: the tern member dir is built as `member.tern-new`,
//!   made durable, and swapped in by two renames (etcd's `member` becomes
//!   `member.etcd`, kept for a way back); a start that finds `member.tern-new` complete and
//!   no `member` finishes the swap, any other leftover `member.tern-new` is rebuilt;
//! - nothing of etcd's is changed or deleted: `member.etcd` is the etcd dir as it was;
//! - the membership of the snapshot tern writes is the one etcd's backend holds (its
//!   `members` and `members_removed` buckets, at the backend's consistent index, at or past
//!   the snapshot); replaying the log's member entries over it changes nothing twice
//!   (adds keep an existing member, removals are idempotent).

pub mod entry;

use std::path::{Path, PathBuf};

use raft::eraftpb::{ConfState, HardState, Snapshot};
use tern_storage::{bbolt, btree, etcd_wal, wal};

use crate::membership::cluster::Membership;
use crate::raft::log_store;

/// Where etcd's member dir is kept after the conversion.
pub const ETCD_MEMBER_DIR: &str = "member.etcd";
/// Where the tern member dir is built before it is swapped in.
const NEW_MEMBER_DIR: &str = "member.tern-new";
/// Marks a complete `member.tern-new` (written last, after everything else is durable).
const COMPLETE_MARKER: &str = "converted-from-etcd";
/// Backend entries per B+tree commit while copying (bounds the write transaction).
const COPY_COMMIT_ENTRIES: u64 = 10_000;
/// Entry bytes per WAL append while writing the converted log: one fdatasync per this
/// much, well under the WAL's per-append maximum (half a 64 MiB segment).
const WAL_APPEND_BYTES: usize = 8 << 20;
/// io_uring memory of the one-off executor that writes the converted WAL.
const CONVERT_IO_MEMORY_BYTES: usize = 2 * 1024 * 1024;

/// Buckets copied from etcd's backend: etcd's, less the membership ones (tern keeps the
/// membership in its raft snapshot, written from them).
const COPIED_BUCKETS: [&[u8]; 7] = [
    b"alarm",
    b"auth",
    b"authRoles",
    b"authUsers",
    b"key",
    b"lease",
    b"meta",
];

/// What a conversion did, for the log.
#[derive(Debug)]
pub struct Report {
    pub member_id: u64,
    pub cluster_id: u64,
    pub snapshot_index: u64,
    pub consistent_index: u64,
    pub last_raft_index: u64,
    pub commit_index: u64,
    pub entries: usize,
    pub members: usize,
}

/// Converts `data_dir` if it is an etcd member's (see the module comment); `None` if it is
/// not (tern's own, or empty).
pub fn convert_if_etcd(data_dir: &Path) -> Result<Option<Report>, String> {
    let member = data_dir.join("member");
    let fresh = data_dir.join(NEW_MEMBER_DIR);
    if !member.exists() && fresh.join(COMPLETE_MARKER).exists() {
        // A conversion stopped between its two renames.
        finish_swap(data_dir)?;
        return Ok(None);
    }
    if !etcd_wal::is_etcd_wal(&member.join("wal")) {
        return Ok(None);
    }
    if data_dir.join(ETCD_MEMBER_DIR).exists() {
        return Err(format!(
            "{} holds an etcd member and {} an earlier one: move one of them away",
            member.display(),
            data_dir.join(ETCD_MEMBER_DIR).display()
        ));
    }
    if fresh.exists() {
        std::fs::remove_dir_all(&fresh)
            .map_err(|e| format!("cannot remove {}: {e}", fresh.display()))?;
    }
    let report = build(&member, &fresh)?;
    finish_swap(data_dir)?;
    Ok(Some(report))
}

fn finish_swap(data_dir: &Path) -> Result<(), String> {
    let member = data_dir.join("member");
    let rename = |from: &Path, to: &Path| {
        std::fs::rename(from, to)
            .map_err(|e| format!("cannot rename {} to {}: {e}", from.display(), to.display()))
    };
    if member.exists() {
        rename(&member, &data_dir.join(ETCD_MEMBER_DIR))?;
    }
    rename(&data_dir.join(NEW_MEMBER_DIR), &member)?;
    fsync_dir(data_dir)
}

fn fsync_dir(dir: &Path) -> Result<(), String> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| format!("cannot fsync {}: {e}", dir.display()))
}

/// etcd's `.snap` file at (`term`, `index`) in `snap_dir`: snappb.Snapshot {crc (1),
/// data (2)} with data a raftpb.Snapshot; `None` if absent or damaged (etcd then falls back
/// to an older one, as the caller does).
fn load_etcd_snap(snap_dir: &Path, term: u64, index: u64) -> Option<Snapshot> {
    let bytes = std::fs::read(snap_dir.join(format!("{term:016x}-{index:016x}.snap"))).ok()?;
    let fields = etcd_wal::fields(&bytes).ok()?;
    let crc = etcd_wal::varint_field(&fields, 1) as u32;
    let data = fields.iter().find(|f| f.0 == 2)?.2.clone()?;
    if crc32c::crc32c(&data) != crc {
        crate::warn!("skipping a damaged etcd snapshot file", "index" => index, "term" => term);
        return None;
    }
    let snapshot = crate::raft::codec::decode_snapshot(&data).ok()?;
    let meta = snapshot.get_metadata();
    (meta.index == index && meta.term == term).then_some(snapshot)
}

/// Builds the tern member dir `fresh` from etcd's member dir `etcd`.
fn build(etcd: &Path, fresh: &Path) -> Result<Report, String> {
    let log = etcd_wal::read(&etcd.join("wal")).map_err(|e| e.to_string())?;
    if let Some((segment, offset)) = &log.torn_at {
        crate::warn!("cut a torn etcd WAL tail", "segment" => segment.as_path(), "offset" => *offset);
    }
    // The newest snapshot the WAL names whose file is whole (etcd's own choice at startup).
    let mut snapshot = None;
    for &(index, term) in log.snapshots.iter().rev() {
        if index == 0 {
            break;
        }
        if let Some(s) = load_etcd_snap(&etcd.join("snap"), term, index) {
            snapshot = Some(s);
            break;
        }
    }
    let (snapshot_index, snapshot_term, conf_state) = match &snapshot {
        Some(s) => {
            let m = s.get_metadata();
            (m.index, m.term, m.get_conf_state().clone())
        }
        None => (0, 0, ConfState::default()),
    };
    let hard_state = match &log.hard_state {
        Some(bytes) => {
            crate::raft::codec::decode_hard_state(bytes).map_err(|e| format!("hard state: {e}"))?
        }
        None => HardState::default(),
    };
    let mut entries = Vec::new();
    for e in log.entries.iter().filter(|e| e.raft_index > snapshot_index) {
        entries.push(entry::translate(&e.raftpb_entry)?);
    }
    if let Some(first) = entries.first() {
        if first.index != snapshot_index + 1 {
            return Err(format!(
                "the etcd WAL's entries start at {}, after its snapshot at {snapshot_index}",
                first.index
            ));
        }
    }

    let snap_dir = fresh.join("snap");
    std::fs::create_dir_all(&snap_dir)
        .map_err(|e| format!("cannot create {}: {e}", snap_dir.display()))?;
    let reader = bbolt::Reader::open(etcd.join("snap").join("db")).map_err(|e| e.to_string())?;
    let membership = read_membership(&reader)?;
    let consistent_index = copy_backend(&reader, &snap_dir.join("db"))?;
    if consistent_index < snapshot_index {
        return Err(format!(
            "etcd's backend holds raft index {consistent_index}, below its snapshot at {snapshot_index}"
        ));
    }
    if snapshot_index > 0 {
        let mut s = Snapshot {
            data: crate::raft::snapshot::encode(&membership).into(),
            ..Default::default()
        };
        s.set_metadata(log_store::snapshot_metadata(
            snapshot_index,
            snapshot_term,
            conf_state,
        ));
        crate::raft::snapshot::save_blocking(&snap_dir, &s)?;
    }
    let report = Report {
        member_id: log.member_id,
        cluster_id: log.cluster_id,
        snapshot_index,
        consistent_index,
        last_raft_index: entries.last().map_or(snapshot_index, |e| e.index),
        commit_index: hard_state.commit,
        entries: entries.len(),
        members: membership.members.len(),
    };
    write_wal(
        &fresh.join("wal"),
        wal::Metadata {
            cluster_id: log.cluster_id,
            member_id: log.member_id,
        },
        (snapshot_index, snapshot_term),
        entries,
        hard_state,
    )?;
    std::fs::File::create(fresh.join(COMPLETE_MARKER))
        .and_then(|f| f.sync_all())
        .map_err(|e| format!("cannot mark {} complete: {e}", fresh.display()))?;
    fsync_dir(&snap_dir)?;
    fsync_dir(fresh)?;
    Ok(report)
}

/// etcd's `members`, `members_removed` and `cluster` buckets as tern's membership.
fn read_membership(reader: &bbolt::Reader) -> Result<Membership, String> {
    let mut membership = Membership::default();
    for (name, root) in reader.buckets().map_err(|e| e.to_string())? {
        reader
            .for_each(&root, &mut |k, v| -> Result<(), ConvertError> {
                match name.as_slice() {
                    b"members" => {
                        let (member, _) = entry::member_from_json(v).map_err(ConvertError)?;
                        membership.members.insert(member.id, member);
                    }
                    b"members_removed" => {
                        let text = String::from_utf8_lossy(k);
                        let id = u64::from_str_radix(&text, 16)
                            .map_err(|_| ConvertError(format!("members_removed key {text:?}")))?;
                        membership.removed.insert(id);
                    }
                    b"cluster" if k == b"clusterVersion" => {
                        membership.cluster_version = Some(String::from_utf8_lossy(v).into_owned());
                    }
                    _ => {}
                }
                Ok(())
            })
            .map_err(|e: ConvertError| e.0)?;
    }
    for id in membership.removed.clone() {
        membership.members.remove(&id);
    }
    Ok(membership)
}

impl From<bbolt::Error> for ConvertError {
    fn from(e: bbolt::Error) -> Self {
        ConvertError(e.to_string())
    }
}

impl From<btree::Error> for ConvertError {
    fn from(e: btree::Error) -> Self {
        ConvertError(e.to_string())
    }
}

/// An error while copying the backend.
struct ConvertError(String);

/// Copies etcd's backend into a tern B+tree at `path`; returns its consistent index.
fn copy_backend(reader: &bbolt::Reader, path: &PathBuf) -> Result<u64, String> {
    let copy = || -> Result<u64, ConvertError> {
        let db = btree::Db::open(path, btree::Options::default())?;
        let mut txn = Some(db.begin_write()?);
        let mut in_txn = 0u64;
        let mut consistent_index = 0u64;
        for (name, root) in reader.buckets()? {
            if !COPIED_BUCKETS.contains(&name.as_slice()) {
                continue;
            }
            reader.for_each(&root, &mut |k, v| -> Result<(), ConvertError> {
                if name == b"meta" && k == crate::mvcc::backend::META_CONSISTENT_INDEX {
                    let raw: [u8; 8] = v
                        .try_into()
                        .map_err(|_| ConvertError("meta consistent_index is not 8 bytes".into()))?;
                    consistent_index = u64::from_be_bytes(raw);
                }
                txn.as_mut()
                    .expect("open between commits")
                    .put(&name, k, v)?;
                in_txn += 1;
                if in_txn >= COPY_COMMIT_ENTRIES {
                    txn.take().expect("open").commit()?;
                    txn = Some(db.begin_write()?);
                    in_txn = 0;
                }
                Ok(())
            })?;
        }
        txn.take().expect("open").commit()?;
        Ok(consistent_index)
    };
    copy().map_err(|e| format!("cannot copy etcd's backend: {}", e.0))
}

/// Writes tern's WAL: metadata, the snapshot marker, the entries, the hard state. The WAL
/// is io_uring-driven, so this runs on a one-off executor of its own, before any other.
fn write_wal(
    dir: &Path,
    metadata: wal::Metadata,
    (snapshot_index, snapshot_term): (u64, u64),
    entries: Vec<raft::eraftpb::Entry>,
    hard_state: HardState,
) -> Result<(), String> {
    let dir = dir.to_path_buf();
    let handle = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .name("tern-convert")
        .io_memory(CONVERT_IO_MEMORY_BYTES)
        .spawn(move || async move {
            let log = wal::Wal::create(&dir, wal::WalOptions::default(), metadata)
                .await
                .map_err(|e| format!("cannot create the WAL: {e}"))?;
            if snapshot_index > 0 {
                log.append(vec![wal::WalRecord::Snapshot(wal::SnapshotMarker {
                    raft_index: snapshot_index,
                    term: snapshot_term,
                })])
                .await
                .map_err(|e| format!("cannot write the WAL: {e}"))?;
            }
            let mut batch = Vec::new();
            let mut batch_bytes = 0;
            for (i, e) in entries.iter().enumerate() {
                batch_bytes += e.data.len() + e.context.len();
                batch.push(log_store::wal_record(e));
                if batch_bytes >= WAL_APPEND_BYTES || i + 1 == entries.len() {
                    log.append(std::mem::take(&mut batch))
                        .await
                        .map_err(|e| format!("cannot write the WAL: {e}"))?;
                    batch_bytes = 0;
                }
            }
            log.append(vec![log_store::wal_hard_state(&hard_state)])
                .await
                .map_err(|e| format!("cannot write the WAL: {e}"))?;
            log.close()
                .await
                .map_err(|e| format!("cannot close the WAL: {e}"))
        })
        .map_err(|e| format!("cannot start the conversion executor: {e}"))?;
    handle
        .join()
        .map_err(|e| format!("the conversion executor failed: {e}"))?
}
