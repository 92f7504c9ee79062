//! Lessor unit tests: grant rules, the key relation following store changes, expiry and
//! renewal, checkpoints surviving a restore, and corrupt lease records.

use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message;

use super::lessor::{lease_bucket_key, LeaseRecord};
use super::{LeaseOptions, Lessor, LEASE_TTL_SECS_MAX};
use crate::error::EtcdError;
use crate::mvcc::{Backend, Bucket, Change, ChangeKind, MemBackend};
use crate::proto::mvccpb::KeyValue;

fn put(key: &str, lease: i64) -> Change {
    Change {
        kind: ChangeKind::Put,
        kv: KeyValue {
            key: Bytes::copy_from_slice(key.as_bytes()),
            lease,
            ..Default::default()
        },
    }
}

fn delete(key: &str) -> Change {
    Change {
        kind: ChangeKind::Delete,
        kv: KeyValue {
            key: Bytes::copy_from_slice(key.as_bytes()),
            ..Default::default()
        },
    }
}

#[test]
fn minimum_ttl_follows_etcd_timing() {
    assert_eq!(LeaseOptions::default().min_ttl_secs, 2);
    assert_eq!(LeaseOptions::from_raft_timing(100, 1000).min_ttl_secs, 2);
    assert_eq!(LeaseOptions::from_raft_timing(100, 3000).min_ttl_secs, 5);
    assert_eq!(LeaseOptions::from_raft_timing(50, 500).min_ttl_secs, 1);
}

#[test]
fn grant_rules() {
    let mut backend = MemBackend::new();
    let mut lessor = Lessor::new(LeaseOptions::default());
    let now = Instant::now();
    assert_eq!(lessor.grant(&mut backend, 1, 0, now).unwrap().ttl_secs, 2);
    assert_eq!(lessor.grant(&mut backend, 2, -5, now).unwrap().ttl_secs, 2);
    assert_eq!(
        lessor
            .grant(&mut backend, 3, LEASE_TTL_SECS_MAX, now)
            .unwrap()
            .ttl_secs,
        LEASE_TTL_SECS_MAX
    );
    assert_eq!(
        lessor.grant(&mut backend, 4, LEASE_TTL_SECS_MAX + 1, now),
        Err(EtcdError::LeaseTtlTooLarge)
    );
    assert_eq!(
        lessor.grant(&mut backend, 1, 10, now),
        Err(EtcdError::LeaseExist)
    );
    assert_eq!(
        lessor.grant(&mut backend, 0, 10, now),
        Err(EtcdError::LeaseNotFound)
    );
    assert_eq!(backend.len(Bucket::Lease), 3);
    // Listed by deadline: the two short ones first, the 285-year one last.
    assert_eq!(lessor.leases_by_expiry(), vec![1, 2, 3]);
}

#[test]
fn keys_follow_the_store_changes() {
    let mut backend = MemBackend::new();
    let mut lessor = Lessor::new(LeaseOptions::default());
    let now = Instant::now();
    lessor.grant(&mut backend, 7, 60, now).unwrap();
    lessor.grant(&mut backend, 8, 60, now).unwrap();
    lessor.on_changes(&[put("a", 7), put("b", 7), put("c", 0)]);
    assert_eq!(lessor.lookup(7).unwrap().keys.len(), 2);
    // Re-put under another lease moves the key; a plain put detaches it.
    lessor.on_changes(&[put("a", 8), put("b", 0)]);
    assert!(lessor.lookup(7).unwrap().keys.is_empty());
    assert_eq!(lessor.lease_of(b"a"), Some(8));
    assert_eq!(lessor.lease_of(b"b"), None);
    lessor.on_changes(&[delete("a")]);
    assert!(lessor.lookup(8).unwrap().keys.is_empty());
    lessor.on_changes(&[put("z", 8)]);
    assert_eq!(
        lessor.revoke(&mut backend, 8).unwrap(),
        vec![Bytes::from_static(b"z")]
    );
    assert_eq!(lessor.lease_of(b"z"), None);
    assert_eq!(
        lessor.revoke(&mut backend, 8),
        Err(EtcdError::LeaseNotFound)
    );
    assert_eq!(
        backend.get(Bucket::Lease, &lease_bucket_key(8)).unwrap(),
        None
    );
}

#[test]
fn expiry_and_renewal() {
    let mut backend = MemBackend::new();
    let mut lessor = Lessor::new(LeaseOptions::default());
    let t0 = Instant::now();
    lessor.grant(&mut backend, 1, 10, t0).unwrap();
    lessor.grant(&mut backend, 2, 20, t0).unwrap();
    assert!(lessor.expired(t0 + Duration::from_secs(9)).is_empty());
    assert_eq!(
        lessor
            .lookup(1)
            .unwrap()
            .remaining_secs(t0 + Duration::from_millis(500)),
        9
    );
    // Renewal restarts the full TTL from the renewal time.
    assert_eq!(
        lessor.renew(1, t0 + Duration::from_secs(9)).unwrap(),
        (10, false)
    );
    assert!(lessor.expired(t0 + Duration::from_secs(18)).is_empty());
    assert_eq!(lessor.expired(t0 + Duration::from_secs(20)), vec![1, 2]);
    // An expired lease cannot be renewed: it is about to be revoked.
    assert_eq!(
        lessor.renew(2, t0 + Duration::from_secs(21)),
        Err(EtcdError::LeaseNotFound)
    );
    assert_eq!(lessor.renew(99, t0), Err(EtcdError::LeaseNotFound));
    // A non-primary lessor keeps every lease.
    lessor.demote();
    assert!(lessor.expired(t0 + Duration::from_secs(1000)).is_empty());
    assert_eq!(lessor.renew(1, t0), Err(EtcdError::NotLeader));
}

#[test]
fn checkpoint_survives_restore_and_promote_resumes_from_it() {
    let mut backend = MemBackend::new();
    let options = LeaseOptions {
        min_ttl_secs: 2,
        checkpoint_interval: Duration::from_secs(300),
    };
    let mut lessor = Lessor::new(options);
    let t0 = Instant::now();
    lessor.grant(&mut backend, 5, 3600, t0).unwrap();
    lessor.grant(&mut backend, 6, 60, t0).unwrap(); // shorter than the interval: never
    assert!(lessor
        .due_checkpoints(t0 + Duration::from_secs(299))
        .is_empty());
    let due = lessor.due_checkpoints(t0 + Duration::from_millis(300_500));
    assert_eq!(due, vec![(5, 3300)]);
    lessor
        .checkpoint(&mut backend, 5, 3300, t0 + Duration::from_secs(300))
        .unwrap();
    lessor.on_changes(&[put("held", 5)]);

    let mut restored = Lessor::new(options);
    restored.restore(&backend).unwrap();
    assert!(!restored.is_primary());
    assert_eq!(restored.lookup(5).unwrap().remaining_ttl_secs, 3300);
    assert_eq!(restored.lookup(5).unwrap().ttl_secs, 3600);
    restored.attach_restored(Bytes::from_static(b"held"), 5);
    restored.attach_restored(Bytes::from_static(b"orphan"), 77);
    assert_eq!(restored.lease_of(b"orphan"), None);
    let t1 = Instant::now();
    restored.promote(Duration::from_secs(1), t1);
    let remaining = restored.lookup(5).unwrap().remaining_secs(t1);
    assert!((3300..=3301).contains(&remaining), "{remaining}");
    assert_eq!(restored.lookup(6).unwrap().remaining_secs(t1), 61);

    // A keep-alive clears the checkpoint (the caller then records 0).
    let (ttl, clear) = restored.renew(5, t1).unwrap();
    assert_eq!((ttl, clear), (3600, true));
    assert_eq!(restored.lookup(5).unwrap().remaining_secs(t1), 3600);
}

#[test]
fn corrupt_lease_records_are_errors() {
    let mut backend = MemBackend::new();
    backend
        .put(Bucket::Lease, &lease_bucket_key(1), &[0xff, 0xff, 0xff])
        .unwrap();
    assert!(Lessor::new(LeaseOptions::default())
        .restore(&backend)
        .is_err());

    let mut backend = MemBackend::new();
    let record = LeaseRecord {
        id: 2,
        ttl: 10,
        remaining_ttl: 0,
    };
    backend
        .put(Bucket::Lease, &lease_bucket_key(3), &record.encode_to_vec())
        .unwrap();
    assert!(Lessor::new(LeaseOptions::default())
        .restore(&backend)
        .is_err());
}
