//! The cluster's members as raft has applied them (etcd `membership.RaftCluster`).
//!
//! Invariants: this table changes only when a committed raft entry is applied (a
//! ConfChange or a member-attribute entry), so every member that has applied the same
//! prefix of the log holds the same table. Member IDs are unique; a removed ID never
//! comes back (etcd keeps removed IDs so that a removed member cannot rejoin).

use std::collections::{BTreeMap, BTreeSet};

use crate::proto::etcdserverpb as pb;

/// One member as the cluster knows it.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct MemberRecord {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// Empty until the member has started and published its attributes.
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(string, repeated, tag = "3")]
    pub peer_urls: Vec<String>,
    /// Empty until the member has published its attributes.
    #[prost(string, repeated, tag = "4")]
    pub client_urls: Vec<String>,
    #[prost(bool, tag = "5")]
    pub is_learner: bool,
}

impl MemberRecord {
    pub fn to_pb(&self) -> pb::Member {
        pb::Member {
            id: self.id,
            name: self.name.clone(),
            peer_ur_ls: self.peer_urls.clone(),
            client_ur_ls: self.client_urls.clone(),
            is_learner: self.is_learner,
        }
    }
}

/// The member table plus the IDs that were removed.
#[derive(Clone, Debug, Default)]
pub struct Membership {
    pub members: BTreeMap<u64, MemberRecord>,
    pub removed: BTreeSet<u64>,
    /// Cluster version once the leader has set it (etcd's `ClusterVersionSet` entry).
    pub cluster_version: Option<String>,
}

impl Membership {
    pub fn list(&self) -> Vec<pb::Member> {
        self.members.values().map(MemberRecord::to_pb).collect()
    }

    pub fn voters(&self) -> usize {
        self.members.values().filter(|m| !m.is_learner).count()
    }

    pub fn learners(&self) -> usize {
        self.members.values().filter(|m| m.is_learner).count()
    }

    /// Peer URLs already used by some member (etcd refuses to add a member whose URLs
    /// another member has: `ErrPeerURLexists`).
    pub fn peer_url_taken(&self, urls: &[String], except_id: u64) -> bool {
        self.members
            .values()
            .filter(|m| m.id != except_id)
            .any(|m| m.peer_urls.iter().any(|u| urls.contains(u)))
    }

    /// Adds (or, for a bootstrap entry replayed, keeps) a member.
    pub fn add(&mut self, member: MemberRecord) {
        if self.removed.contains(&member.id) {
            return;
        }
        self.members.entry(member.id).or_insert(member);
    }

    pub fn remove(&mut self, id: u64) {
        self.members.remove(&id);
        self.removed.insert(id);
    }

    pub fn promote(&mut self, id: u64) {
        if let Some(m) = self.members.get_mut(&id) {
            m.is_learner = false;
        }
    }

    pub fn update_peer_urls(&mut self, id: u64, peer_urls: Vec<String>) {
        if let Some(m) = self.members.get_mut(&id) {
            m.peer_urls = peer_urls;
        }
    }

    pub fn publish(&mut self, id: u64, name: String, client_urls: Vec<String>) {
        if let Some(m) = self.members.get_mut(&id) {
            m.name = name;
            m.client_urls = client_urls;
        }
    }
}
