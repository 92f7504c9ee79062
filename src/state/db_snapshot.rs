//! What `Maintenance.Snapshot` sends: tern's state as the bbolt database etcd 3.4 would
//! hold for it, with etcd's buckets and encodings, so that `etcdctl snapshot status` and
//! `snapshot restore` work on it and real etcd serves from the restored data dir.
//!
//! Buckets, in the file's (byte) order, and where their contents come from:
//! - `alarm`: marshaled `etcdserverpb.AlarmMember` → empty value; the raised alarms.
//! - `auth`, `authRoles`, `authUsers`: the backend's. `auth` always holds `authRevision`
//!   (u64 big-endian): etcd writes 1 there when it first opens a backend, so until auth
//!   keeps its own revision the snapshot carries etcd's initial one.
//! - `cluster`: `clusterVersion` → e.g. `3.4.0`, once the cluster version is set.
//! - `key`: the backend's (17-byte revision keys, 18 with the tombstone mark `t`, →
//!   marshaled `mvccpb.KeyValue`).
//! - `lease`: the backend's (8-byte big-endian id → marshaled `leasepb.Lease`).
//! - `members`: member id in lowercase hex without padding (Go's `types.ID.String`) →
//!   the member as etcd's `membership.Member` JSON; `members_removed`: id → `removed`.
//!   tern keeps the member table in raft's log and snapshots, not in the backend, so both
//!   are written from the table as of the request.
//! - `meta`: the backend's (`consistent_index`, `scheduledCompactRev`, `finishedCompactRev`).
//!
//! Invariants: the source is a fixed view (a pinned backend read snapshot, copies of the
//! member table and alarms), so producing it twice yields the same stream, which the
//! two-pass bbolt writer relies on (`storage/docs/bbolt.md`). Producing it reads memory
//! and the mmap only: it runs on a dedicated thread, never on an executor.

use prost::Message as _;

use tern_storage::bbolt;

use crate::membership::cluster::MemberRecord;
use crate::mvcc::btree_backend::BackendSnapshot;
use crate::mvcc::{BackendError, Bucket};
use crate::proto::etcdserverpb as pb;

/// The value etcd's auth store writes under `authRevision` when it creates the bucket.
const AUTH_REVISION_INITIAL: u64 = 1;
const AUTH_REVISION_KEY: &[u8] = b"authRevision";
const CLUSTER_VERSION_KEY: &[u8] = b"clusterVersion";
const MEMBER_REMOVED_VALUE: &[u8] = b"removed";

/// Runs before each copied entry is written, with its key (see `copy_bucket`).
type BeforeEntry<'b> = dyn FnMut(&mut bbolt::Writer<'_>, &[u8]) -> Result<(), SnapshotError> + 'b;

/// A fixed view of everything a snapshot holds. `Send`: it moves to the snapshot thread.
pub struct SnapshotSource {
    pub backend: BackendSnapshot,
    pub members: Vec<MemberRecord>,
    pub removed: Vec<u64>,
    pub cluster_version: Option<String>,
    pub alarms: Vec<pb::AlarmMember>,
    /// The header for the response (revision as of the view).
    pub header: pb::ResponseHeader,
}

#[derive(Debug)]
pub enum SnapshotError {
    Bbolt(bbolt::Error),
    Backend(BackendError),
}

impl std::fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SnapshotError::Bbolt(e) => e.fmt(f),
            SnapshotError::Backend(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for SnapshotError {}

impl From<bbolt::Error> for SnapshotError {
    fn from(e: bbolt::Error) -> Self {
        SnapshotError::Bbolt(e)
    }
}

impl From<BackendError> for SnapshotError {
    fn from(e: BackendError) -> Self {
        SnapshotError::Backend(e)
    }
}

impl SnapshotSource {
    /// Writes the whole database into `w` (the bbolt writer calls this twice).
    pub fn produce(&self, w: &mut bbolt::Writer<'_>) -> Result<(), SnapshotError> {
        w.bucket(b"alarm")?;
        let mut alarms: Vec<Vec<u8>> = self.alarms.iter().map(|a| a.encode_to_vec()).collect();
        alarms.sort();
        alarms.dedup();
        for alarm in &alarms {
            w.put(alarm, b"")?;
        }
        w.bucket(b"auth")?;
        let mut auth_revision_seen = false;
        self.copy_bucket(w, Bucket::Auth, &mut |w, key| {
            if !auth_revision_seen && key > AUTH_REVISION_KEY {
                w.put(AUTH_REVISION_KEY, &AUTH_REVISION_INITIAL.to_be_bytes())?;
                auth_revision_seen = true;
            }
            auth_revision_seen |= key == AUTH_REVISION_KEY;
            Ok(())
        })?;
        if !auth_revision_seen {
            w.put(AUTH_REVISION_KEY, &AUTH_REVISION_INITIAL.to_be_bytes())?;
        }
        w.bucket(b"authRoles")?;
        self.copy_bucket(w, Bucket::AuthRoles, &mut |_, _| Ok(()))?;
        w.bucket(b"authUsers")?;
        self.copy_bucket(w, Bucket::AuthUsers, &mut |_, _| Ok(()))?;
        w.bucket(b"cluster")?;
        if let Some(version) = &self.cluster_version {
            w.put(CLUSTER_VERSION_KEY, version.as_bytes())?;
        }
        w.bucket(b"key")?;
        self.copy_bucket(w, Bucket::Key, &mut |_, _| Ok(()))?;
        w.bucket(b"lease")?;
        self.copy_bucket(w, Bucket::Lease, &mut |_, _| Ok(()))?;
        w.bucket(b"members")?;
        let mut members: Vec<(Vec<u8>, Vec<u8>)> = self
            .members
            .iter()
            .map(|m| (member_key(m.id), member_json(m).into_bytes()))
            .collect();
        members.sort();
        for (key, value) in &members {
            w.put(key, value)?;
        }
        w.bucket(b"members_removed")?;
        let mut removed: Vec<Vec<u8>> = self.removed.iter().map(|&id| member_key(id)).collect();
        removed.sort();
        for key in &removed {
            w.put(key, MEMBER_REMOVED_VALUE)?;
        }
        w.bucket(b"meta")?;
        self.copy_bucket(w, Bucket::Meta, &mut |_, _| Ok(()))?;
        Ok(())
    }

    /// Copies `bucket` from the backend view; `before(w, key)` runs before each
    /// entry is written (to interleave entries of our own).
    fn copy_bucket(
        &self,
        w: &mut bbolt::Writer<'_>,
        bucket: Bucket,
        before: &mut BeforeEntry<'_>,
    ) -> Result<(), SnapshotError> {
        let mut failure = None;
        self.backend.scan(bucket, &[], None, &mut |key, value| {
            let result = before(w, key).and_then(|()| Ok(w.put(key, value)?));
            match result {
                Ok(()) => true,
                Err(e) => {
                    failure = Some(e);
                    false
                }
            }
        })?;
        failure.map_or(Ok(()), Err)
    }
}

/// etcd's `backendMemberKey`: the id as Go's `types.ID.String()`, lowercase hex.
fn member_key(id: u64) -> Vec<u8> {
    format!("{id:x}").into_bytes()
}

/// etcd's `membership.Member` as Go's `encoding/json` marshals it: `id`, `peerURLs`,
/// `isLearner` (omitted when false), `name` and `clientURLs` (omitted when empty).
pub fn member_json(m: &MemberRecord) -> String {
    let mut out = format!("{{\"id\":{},\"peerURLs\":", m.id);
    json_strings(&m.peer_urls, &mut out);
    if m.is_learner {
        out.push_str(",\"isLearner\":true");
    }
    if !m.name.is_empty() {
        out.push_str(",\"name\":");
        json_string(&m.name, &mut out);
    }
    if !m.client_urls.is_empty() {
        out.push_str(",\"clientURLs\":");
        json_strings(&m.client_urls, &mut out);
    }
    out.push('}');
    out
}

/// A JSON array of strings; Go marshals a nil slice as `null`.
fn json_strings(items: &[String], out: &mut String) {
    if items.is_empty() {
        out.push_str("null");
        return;
    }
    out.push('[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        json_string(item, out);
    }
    out.push(']');
}

/// A JSON string escaped as Go's `encoding/json` does (HTML-safe: `<`, `>`, `&` and the
/// line separators U+2028/U+2029 as `\u` escapes).
fn json_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || matches!(c, '<' | '>' | '&' | '\u{2028}' | '\u{2029}') => {
                out.push_str(&format!("\\u{:04x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_json_is_gos_encoding() {
        let mut m = MemberRecord {
            id: 0x8e9e05c52164694d,
            name: "default".into(),
            peer_urls: vec!["http://localhost:2380".into()],
            client_urls: vec!["http://localhost:2379".into()],
            is_learner: false,
        };
        assert_eq!(
            member_json(&m),
            r#"{"id":10276657743932975437,"peerURLs":["http://localhost:2380"],"name":"default","clientURLs":["http://localhost:2379"]}"#
        );
        m.name.clear();
        m.client_urls.clear();
        m.is_learner = true;
        m.peer_urls[0].push_str("/<&>");
        assert_eq!(
            member_json(&m),
            r#"{"id":10276657743932975437,"peerURLs":["http://localhost:2380/\u003c\u0026\u003e"],"isLearner":true}"#
        );
        assert_eq!(member_key(0x0abc), b"abc");
    }
}
