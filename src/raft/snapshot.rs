//! Raft snapshots: the whole applied state, sent to lagging followers and saved under
//! `<data-dir>/member/snap` so that a restart need not replay a compacted log.
//!
//! File format (docs/peer-protocol.md, "Snapshot"): `<term:016x>-<index:016x>.snap`
//! holding a CRC-32C (u32 big-endian) of the rest, then the protobuf-encoded raft
//! `Snapshot` whose `data` is a prost [`SnapshotData`]. A file whose CRC does not match is
//! an error, never a panic. Files are written to a temporary name, fsynced and renamed, so
//! a crash leaves either the whole file or none.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use prost::Message as _;
use protobuf::Message as _;
use raft::eraftpb::Snapshot;

use crate::membership::cluster::{MemberRecord, Membership};
use crate::state::machine::StateMachine;

/// What a snapshot's `data` holds.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SnapshotData {
    /// `StateMachine::snapshot_data`.
    #[prost(bytes = "vec", tag = "1")]
    pub kv: Vec<u8>,
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

pub fn encode(state: &StateMachine, membership: &Membership) -> Vec<u8> {
    SnapshotData {
        kv: state.snapshot_data(),
        members: membership.members.values().cloned().collect(),
        removed: membership.removed.iter().copied().collect(),
        cluster_version: membership.cluster_version.clone().unwrap_or_default(),
    }
    .encode_to_vec()
}

/// Replaces the membership with the snapshot's (the backend already holds newer state).
pub fn restore_membership(file: &SnapshotFile, membership: &mut Membership) -> Result<(), String> {
    let data =
        SnapshotData::decode(&file.snapshot.data[..]).map_err(|e| format!("snapshot data: {e}"))?;
    *membership = membership_of(data);
    Ok(())
}

fn membership_of(data: SnapshotData) -> Membership {
    let mut fresh = Membership::default();
    for m in data.members {
        fresh.members.insert(m.id, m);
    }
    fresh.removed = data.removed.into_iter().collect();
    fresh.cluster_version = (!data.cluster_version.is_empty()).then_some(data.cluster_version);
    fresh
}

/// Replaces the state machine and membership with the snapshot's.
pub fn restore(
    file: &SnapshotFile,
    state: &mut StateMachine,
    membership: &mut Membership,
) -> Result<(), String> {
    let data =
        SnapshotData::decode(&file.snapshot.data[..]).map_err(|e| format!("snapshot data: {e}"))?;
    state.restore(&data.kv)?;
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

pub fn save(dir: &Path, file: &SnapshotFile) -> Result<(), String> {
    let meta = file.snapshot.get_metadata();
    let body = file.snapshot.write_to_bytes().map_err(|e| e.to_string())?;
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

pub fn load(dir: &Path, raft_index: u64, term: u64) -> Result<SnapshotFile, String> {
    let path = dir.join(file_name(term, raft_index));
    let bytes = std::fs::read(&path)
        .map_err(|e| format!("cannot read snapshot {}: {e}", path.display()))?;
    if bytes.len() < 4 || crc32c::crc32c(&bytes[4..]).to_be_bytes() != bytes[..4] {
        return Err(format!(
            "snapshot {} is corrupt (CRC mismatch)",
            path.display()
        ));
    }
    let snapshot = Snapshot::parse_from_bytes(&bytes[4..])
        .map_err(|e| format!("snapshot {}: {e}", path.display()))?;
    Ok(SnapshotFile { snapshot })
}

/// Deletes snapshot files older than the one at `keep_index`.
pub fn purge(dir: &Path, keep_index: u64) {
    let Ok(read) = std::fs::read_dir(dir) else {
        return;
    };
    let old: Vec<PathBuf> = read
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".snap"))
                .and_then(|n| n.split_once('-'))
                .and_then(|(_, i)| u64::from_str_radix(i, 16).ok())
                .is_some_and(|i| i < keep_index)
        })
        .collect();
    for p in old {
        let _ = std::fs::remove_file(p);
    }
}

#[cfg(test)]
mod tests {
    //! A saved snapshot loads back; a flipped byte is reported as corruption, not a panic.
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
            kv: vec![1, 2, 3],
            ..Default::default()
        }
        .encode_to_vec()
        .into();
        save(
            &dir,
            &SnapshotFile {
                snapshot: snapshot.clone(),
            },
        )
        .unwrap();
        assert_eq!(load(&dir, 42, 3).unwrap().snapshot, snapshot);
        let path = dir.join(file_name(3, 42));
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        std::fs::write(&path, bytes).unwrap();
        assert!(load(&dir, 42, 3).unwrap_err().contains("corrupt"));
        assert!(load(&dir, 43, 3).is_err());
        purge(&dir, 100);
        assert!(std::fs::read_dir(&dir).unwrap().next().is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
