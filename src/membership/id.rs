//! Member and cluster IDs, derived exactly as etcd derives them so that a tern member
//! bootstrapped with the same flags as an etcd member gets the same IDs (clients and
//! `etcdctl member list` show them, and mixed tooling compares them).
//!
//! - Member ID (etcd `membership.computeMemberId` in 3.5, `newMember` in 3.4): the peer
//!   URLs as strings, sorted, concatenated with no separator, then the cluster token
//!   appended, then — only for a runtime member add — the decimal Unix time in seconds;
//!   SHA-1 over those bytes; the ID is the first 8 bytes of the digest read big-endian.
//! - Cluster ID (etcd `RaftCluster.genID`): the member IDs sorted ascending, each written
//!   as 8 bytes big-endian, concatenated; SHA-1 over that; first 8 bytes big-endian.
//!
//! Invariant: both functions are pure and depend only on their inputs' contents, not on
//! their order (inputs are sorted here, as etcd sorts them).

use sha1::{Digest, Sha1};

/// A member ID or cluster ID. etcd prints these as lower-case hex without leading zeros
/// (`types.ID.String`) and as decimal in JSON.
pub type RaftId = u64;

/// The first 8 bytes of `digest` as a big-endian u64 (etcd: `binary.BigEndian.Uint64(hash[:8])`).
fn id_from_sha1(hasher: Sha1) -> RaftId {
    let digest = hasher.finalize();
    let mut first8 = [0u8; 8];
    first8.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first8)
}

/// The ID of a member with these peer URLs in the cluster named by `cluster_token`
/// (`--initial-cluster-token`). `added_at_unix_secs` is `None` for members named in the
/// static bootstrap configuration and `Some(now)` for a member added at runtime
/// (etcd's `MemberAdd` mixes the time in so re-adding the same URLs gets a fresh ID).
///
/// `peer_urls` must be the URLs as etcd would print them (Go `url.URL.String()`), e.g.
/// `http://127.0.0.1:2380` — a different spelling of the same address hashes differently,
/// exactly as in etcd.
pub fn member_id<S: AsRef<str>>(
    peer_urls: &[S],
    cluster_token: &str,
    added_at_unix_secs: Option<i64>,
) -> RaftId {
    let mut sorted: Vec<&str> = peer_urls.iter().map(AsRef::as_ref).collect();
    sorted.sort_unstable();
    let mut hasher = Sha1::new();
    for url in sorted {
        hasher.update(url.as_bytes());
    }
    hasher.update(cluster_token.as_bytes());
    if let Some(secs) = added_at_unix_secs {
        hasher.update(secs.to_string().as_bytes());
    }
    id_from_sha1(hasher)
}

/// The ID of a cluster whose initial members have these IDs.
pub fn cluster_id(member_ids: &[RaftId]) -> RaftId {
    let mut sorted = member_ids.to_vec();
    sorted.sort_unstable();
    let mut hasher = Sha1::new();
    for id in sorted {
        hasher.update(id.to_be_bytes());
    }
    id_from_sha1(hasher)
}

/// etcd's text form of an ID (`types.ID.String()`): lower-case hex, no leading zeros.
pub fn id_to_hex(id: RaftId) -> String {
    format!("{id:x}")
}

#[cfg(test)]
mod tests {
    //! Checks the derivations against IDs that real etcd 3.4.23 reported
    //! (`etcdctl member list -w json`) for clusters started with the same flags.
    use super::*;

    #[test]
    fn single_member_matches_etcd() {
        // etcd --name golden --initial-advertise-peer-urls http://127.0.0.1:42380
        //   --initial-cluster golden=http://127.0.0.1:42380 --initial-cluster-token golden-token
        let member = member_id(&["http://127.0.0.1:42380"], "golden-token", None);
        assert_eq!(member, 13071262045998460972);
        assert_eq!(cluster_id(&[member]), 15034707996242928306);
    }

    #[test]
    fn default_flags_match_etcd() {
        // etcd with no flags at all: the well-known 8e9e05c52164694d / cdf818194e3a8c32.
        let member = member_id(&["http://localhost:2380"], "etcd-cluster", None);
        assert_eq!(id_to_hex(member), "8e9e05c52164694d");
        assert_eq!(id_to_hex(cluster_id(&[member])), "cdf818194e3a8c32");
    }

    #[test]
    fn three_members_match_etcd() {
        // --initial-cluster m1=http://127.0.0.1:43380,m2=http://127.0.0.1:43390,
        //   m3=http://127.0.0.1:43400 --initial-cluster-token tri-token
        let m1 = member_id(&["http://127.0.0.1:43380"], "tri-token", None);
        let m2 = member_id(&["http://127.0.0.1:43390"], "tri-token", None);
        let m3 = member_id(&["http://127.0.0.1:43400"], "tri-token", None);
        assert_eq!(m1, 16756539623062600302);
        assert_eq!(m2, 16529079406830614613);
        assert_eq!(m3, 8588219532349963658);
        assert_eq!(cluster_id(&[m1, m2, m3]), 1324793916433549536);
        assert_eq!(cluster_id(&[m3, m1, m2]), 1324793916433549536);
    }

    #[test]
    fn peer_url_order_and_add_time_matter_as_in_etcd() {
        let a = member_id(&["http://10.0.0.1:2380", "http://10.0.0.2:2380"], "t", None);
        let b = member_id(&["http://10.0.0.2:2380", "http://10.0.0.1:2380"], "t", None);
        assert_eq!(a, b, "peer URLs are sorted before hashing");
        let added = member_id(&["http://10.0.0.1:2380"], "t", Some(1_700_000_000));
        let bootstrapped = member_id(&["http://10.0.0.1:2380"], "t", None);
        assert_ne!(added, bootstrapped);
        assert_ne!(
            member_id(&["http://10.0.0.1:2380"], "u", None),
            bootstrapped
        );
    }
}
