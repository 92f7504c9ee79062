//! Checks the KV semantics against the golden etcd 3.4 transcripts (kv.txt, txn.txt and the
//! hashkv lines of cluster.txt in shared/golden): the same request sequence must give the
//! same revisions, versions, counts, errors and hashes. Plus validation and a seeded
//! random model test of put/delete/range-at-revision.

use bytes::Bytes;

use super::kv::{LeaseLookup, NoLeases};
use crate::error::EtcdError;
use crate::mvcc::{KvStore, MemBackend};
use crate::proto::etcdserverpb::{
    compare, range_request, request_op, response_op, CompactionRequest, Compare,
    DeleteRangeRequest, HashKvRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use crate::service::validate::*;

type Store = KvStore<MemBackend>;

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn store() -> Store {
    KvStore::open(MemBackend::new()).unwrap()
}

fn put(s: &mut Store, k: &str, v: &str) -> i64 {
    let req = PutRequest {
        key: b(k),
        value: b(v),
        ..Default::default()
    };
    check_put(&req).unwrap();
    s.put(&req, &NoLeases).unwrap().header.unwrap().revision
}

fn get(k: &str) -> RangeRequest {
    RangeRequest {
        key: b(k),
        ..Default::default()
    }
}

fn prefix_end(p: &str) -> Bytes {
    let mut end = p.as_bytes().to_vec();
    *end.last_mut().unwrap() += 1;
    end.into()
}

fn del(k: &str, end: &str) -> DeleteRangeRequest {
    DeleteRangeRequest {
        key: b(k),
        range_end: b(end),
        ..Default::default()
    }
}

fn hash(s: &Store, rev: i64) -> Result<(u32, i64, i64), EtcdError> {
    s.hash_kv(&HashKvRequest { revision: rev })
        .map(|r| (r.hash, r.header.unwrap().revision, r.compact_revision))
}

fn keys(resp: &crate::proto::etcdserverpb::RangeResponse) -> Vec<String> {
    resp.kvs
        .iter()
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .collect()
}

#[test]
fn hashkv_matches_golden_cluster_transcript() {
    let mut s = store();
    assert_eq!(hash(&s, 0), Ok((1084519789, 1, -1)));
    put(&mut s, "a", "1");
    put(&mut s, "b", "2");
    put(&mut s, "a", "3");
    assert_eq!(hash(&s, 0), Ok((2069675932, 4, -1)));
    assert_eq!(hash(&s, 2).unwrap().0, 2587454935);
    assert_eq!(hash(&s, 3), Ok((1827592406, 4, -1)));
    s.compact(&CompactionRequest {
        revision: 3,
        physical: false,
    })
    .unwrap();
    assert_eq!(hash(&s, 2), Err(EtcdError::Compacted));
    assert_eq!(hash(&s, 3), Err(EtcdError::Compacted));
    assert_eq!(hash(&s, 100), Err(EtcdError::FutureRev));
    // The values below were taken from etcd 3.4.23 run side by side with the same commands
    // (`endpoint hashkv` after `compaction 3`, `del a`, `put c 5`, `compaction 5 --physical`).
    assert_eq!(hash(&s, 0), Ok((1107643163, 4, 3)));
    assert_eq!(hash(&s, 4).unwrap().0, 1107643163);
    s.delete_range(&del("a", "")).unwrap();
    put(&mut s, "c", "5");
    assert_eq!(hash(&s, 0), Ok((1135662974, 6, 3)));
    s.compact(&CompactionRequest {
        revision: 5,
        physical: true,
    })
    .unwrap();
    assert_eq!(hash(&s, 0), Ok((3615251383, 6, 5)));
    assert_eq!(hash(&s, 6).unwrap().0, 3615251383);
}

#[test]
fn kv_golden_transcript() {
    let mut s = store();
    assert_eq!(put(&mut s, "foo", "bar"), 2);
    put(&mut s, "foo1", "bar1");
    put(&mut s, "foo2", "bar2");
    put(&mut s, "foo3", "bar3");
    let r = s
        .put(
            &PutRequest {
                key: b("foo"),
                value: b("bar-updated"),
                prev_kv: true,
                ..Default::default()
            },
            &NoLeases,
        )
        .unwrap();
    assert_eq!(r.prev_kv.unwrap().value, b("bar"));
    let r = s
        .put(
            &PutRequest {
                key: b("foo"),
                value: b("bar-again"),
                prev_kv: true,
                ..Default::default()
            },
            &NoLeases,
        )
        .unwrap();
    assert_eq!(r.header.unwrap().revision, 7);
    let p = r.prev_kv.unwrap();
    assert_eq!(
        (p.create_revision, p.mod_revision, p.version, p.value),
        (2, 6, 2, b("bar-updated"))
    );
    // put foo --ignore-value, twice
    let iv = PutRequest {
        key: b("foo"),
        ignore_value: true,
        ..Default::default()
    };
    check_put(&iv).unwrap();
    s.put(&iv, &NoLeases).unwrap();
    assert_eq!(s.put(&iv, &NoLeases).unwrap().header.unwrap().revision, 9);
    let missing = PutRequest {
        key: b("missing-key"),
        ignore_value: true,
        ..Default::default()
    };
    assert_eq!(s.put(&missing, &NoLeases), Err(EtcdError::KeyNotFound));
    assert_eq!(
        s.current_revision(),
        9,
        "a failed put does not advance the revision"
    );
    put(&mut s, "foo", "bar");

    let r = s.range(&get("foo")).unwrap();
    assert_eq!(r.header.unwrap().revision, 10);
    let kv = &r.kvs[0];
    assert_eq!(
        (
            kv.create_revision,
            kv.mod_revision,
            kv.version,
            kv.value.clone()
        ),
        (2, 10, 6, b("bar"))
    );
    assert_eq!(r.count, 1);

    // ranges
    let r = s
        .range(&RangeRequest {
            key: b("foo"),
            range_end: b("foo3"),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(keys(&r), ["foo", "foo1", "foo2"]);
    let pfx = RangeRequest {
        key: b("foo"),
        range_end: prefix_end("foo"),
        ..Default::default()
    };
    let r = s
        .range(&RangeRequest {
            limit: 2,
            ..pfx.clone()
        })
        .unwrap();
    assert_eq!(
        (keys(&r), r.more, r.count),
        (vec!["foo".to_string(), "foo1".into()], true, 4)
    );
    let r = s
        .range(&RangeRequest {
            keys_only: true,
            ..pfx.clone()
        })
        .unwrap();
    assert!(r.kvs.iter().all(|kv| kv.value.is_empty()));
    assert_eq!(r.kvs[3].mod_revision, 5);
    let from = RangeRequest {
        key: b("foo1"),
        range_end: b("\0"),
        limit: 1,
        ..Default::default()
    };
    let r = s.range(&from).unwrap();
    assert_eq!(
        (keys(&r), r.more, r.count),
        (vec!["foo1".to_string()], true, 3)
    );
    let r = s
        .range(&RangeRequest {
            key: b("fo"),
            range_end: b("fop"),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(r.count, 4);
    let r = s
        .range(&RangeRequest {
            key: b("a"),
            range_end: b("b"),
            ..Default::default()
        })
        .unwrap();
    assert_eq!((r.count, r.kvs.len()), (0, 0));

    // historical revisions
    let at = |s: &Store, k: &str, rev: i64| {
        s.range(&RangeRequest {
            key: b(k),
            revision: rev,
            ..Default::default()
        })
    };
    assert!(at(&s, "foo", 1).unwrap().kvs.is_empty());
    assert_eq!(at(&s, "foo", 2).unwrap().kvs[0].value, b("bar"));
    assert_eq!(at(&s, "foo", 6).unwrap().kvs[0].value, b("bar-updated"));
    let r = s
        .range(&RangeRequest {
            revision: 3,
            ..pfx.clone()
        })
        .unwrap();
    assert_eq!(keys(&r), ["foo", "foo1"]);
    assert_eq!(at(&s, "foo", 100), Err(EtcdError::FutureRev));

    // sorting
    use range_request::{SortOrder, SortTarget};
    let sorted = |s: &Store, t: SortTarget, o: SortOrder, limit: i64| {
        keys(
            &s.range(&RangeRequest {
                sort_target: t as i32,
                sort_order: o as i32,
                limit,
                ..pfx.clone()
            })
            .unwrap(),
        )
    };
    assert_eq!(
        sorted(&s, SortTarget::Mod, SortOrder::Descend, 0),
        ["foo", "foo3", "foo2", "foo1"]
    );
    assert_eq!(
        sorted(&s, SortTarget::Create, SortOrder::Descend, 0),
        ["foo3", "foo2", "foo1", "foo"]
    );
    assert_eq!(
        sorted(&s, SortTarget::Value, SortOrder::Ascend, 0),
        ["foo", "foo1", "foo2", "foo3"]
    );
    assert_eq!(
        sorted(&s, SortTarget::Version, SortOrder::Descend, 0),
        ["foo", "foo1", "foo2", "foo3"]
    );
    assert_eq!(
        sorted(&s, SortTarget::Key, SortOrder::Descend, 2),
        ["foo3", "foo2"]
    );
    let r = s
        .range(&RangeRequest {
            sort_target: 1,
            sort_order: 2,
            limit: 2,
            ..pfx.clone()
        })
        .unwrap();
    assert!(r.more);
    assert_eq!(
        check_range(&RangeRequest {
            key: b("k"),
            sort_target: 9,
            ..Default::default()
        }),
        Err(EtcdError::InvalidSortOption)
    );
    assert_eq!(check_range(&get("")), Err(EtcdError::EmptyKey));

    // del
    for (k, v) in [("a", "1"), ("b", "2"), ("c", "3"), ("d", "4"), ("e", "5")] {
        put(&mut s, k, v);
    }
    assert_eq!(s.delete_range(&del("a", "")).unwrap().deleted, 1);
    assert_eq!(s.delete_range(&del("a", "")).unwrap().deleted, 0);
    let r = s.delete_range(&del("a", "")).unwrap();
    assert_eq!((r.deleted, r.header.unwrap().revision), (0, 16));
    let r = s
        .delete_range(&DeleteRangeRequest {
            prev_kv: true,
            ..del("b", "")
        })
        .unwrap();
    assert_eq!(r.prev_kvs[0].value, b("2"));
    let r = s
        .delete_range(&DeleteRangeRequest {
            prev_kv: true,
            ..del("c", "")
        })
        .unwrap();
    assert_eq!(r.header.unwrap().revision, 18);
    let p = &r.prev_kvs[0];
    assert_eq!((p.create_revision, p.mod_revision, p.version), (13, 13, 1));
    assert_eq!(s.delete_range(&del("d", "e")).unwrap().deleted, 1);
    put(&mut s, "zz1", "1");
    put(&mut s, "zz2", "2");
    assert_eq!(
        s.delete_range(&DeleteRangeRequest {
            key: b("zz"),
            range_end: prefix_end("zz"),
            ..Default::default()
        })
        .unwrap()
        .deleted,
        2
    );
    put(&mut s, "k1", "v1");
    put(&mut s, "k2", "v2");
    put(&mut s, "k3", "v3");
    let r = s
        .delete_range(&DeleteRangeRequest {
            prev_kv: true,
            ..del("k2", "\0")
        })
        .unwrap();
    assert_eq!((r.deleted, r.prev_kvs.len()), (2, 2));
    assert_eq!(check_delete_range(&del("", "")), Err(EtcdError::EmptyKey));

    // compaction
    assert_eq!(s.current_revision(), 26);
    let compact = |s: &mut Store, rev| {
        s.compact(&CompactionRequest {
            revision: rev,
            physical: false,
        })
    };
    assert_eq!(compact(&mut s, 10).unwrap().header.unwrap().revision, 26);
    assert_eq!(at(&s, "foo", 9), Err(EtcdError::Compacted));
    assert_eq!(at(&s, "foo", 10).unwrap().kvs[0].mod_revision, 10);
    assert_eq!(compact(&mut s, 10), Err(EtcdError::Compacted));
    assert_eq!(compact(&mut s, 5), Err(EtcdError::Compacted));
    assert_eq!(compact(&mut s, 1000), Err(EtcdError::FutureRev));
    compact(&mut s, 12).unwrap();
    let r = s.range(&RangeRequest {
        revision: 11,
        ..pfx.clone()
    });
    assert_eq!(r, Err(EtcdError::Compacted));
    compact(&mut s, 14).unwrap();
    compact(&mut s, 15).unwrap();
    let r = s
        .range(&RangeRequest {
            key: b("\0"),
            range_end: b("\0"),
            keys_only: true,
            ..Default::default()
        })
        .unwrap();
    let summary: Vec<(String, i64, i64, i64)> = r
        .kvs
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(&kv.key).into_owned(),
                kv.create_revision,
                kv.mod_revision,
                kv.version,
            )
        })
        .collect();
    let want = [
        ("e", 15, 15, 1),
        ("foo", 2, 10, 6),
        ("foo1", 3, 3, 1),
        ("foo2", 4, 4, 1),
        ("foo3", 5, 5, 1),
        ("k1", 23, 23, 1),
    ];
    let want: Vec<(String, i64, i64, i64)> = want
        .iter()
        .map(|&(k, c, m, v)| (k.to_string(), c, m, v))
        .collect();
    assert_eq!(summary, want);
    assert_eq!(r.count, 6);
}

fn cmp(
    key: &str,
    target: compare::CompareTarget,
    result: compare::CompareResult,
    u: compare::TargetUnion,
) -> Compare {
    Compare {
        key: b(key),
        target: target as i32,
        result: result as i32,
        target_union: Some(u),
        range_end: Bytes::new(),
    }
}

fn op_put(k: &str, v: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: b(k),
            value: b(v),
            ..Default::default()
        })),
    }
}

fn op_get(k: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(get(k))),
    }
}

fn op_del(k: &str, end: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(del(k, end))),
    }
}

fn txn(
    s: &mut Store,
    compare: Vec<Compare>,
    success: Vec<RequestOp>,
    failure: Vec<RequestOp>,
) -> Result<crate::proto::etcdserverpb::TxnResponse, EtcdError> {
    let req = TxnRequest {
        compare,
        success,
        failure,
    };
    check_txn(&req, MAX_TXN_OPS_DEFAULT)?;
    s.txn(&req, &NoLeases)
}

#[test]
fn txn_golden_transcript() {
    use compare::{CompareResult as R, CompareTarget as T, TargetUnion as U};
    let mut s = store();
    put(&mut s, "key1", "v1");
    put(&mut s, "key2", "v2");
    put(&mut s, "counter", "10");
    let r = txn(
        &mut s,
        vec![cmp("key1", T::Value, R::Equal, U::Value(b("v1")))],
        vec![op_put("key1", "v1-updated"), op_get("key1")],
        vec![],
    )
    .unwrap();
    assert!(r.succeeded);
    let Some(response_op::Response::ResponseRange(rr)) = &r.responses[1].response else {
        panic!()
    };
    assert_eq!(
        rr.kvs[0].value,
        b("v1-updated"),
        "reads in a txn see its earlier writes"
    );
    let r = txn(
        &mut s,
        vec![cmp("key1", T::Value, R::Equal, U::Value(b("v1")))],
        vec![op_put("key1", "no")],
        vec![op_put("key1", "failure-branch"), op_get("key1")],
    )
    .unwrap();
    assert!(!r.succeeded);
    assert!(
        txn(
            &mut s,
            vec![cmp("key1", T::Value, R::NotEqual, U::Value(b("zzz")))],
            vec![],
            vec![]
        )
        .unwrap()
        .succeeded
    );
    assert!(
        txn(
            &mut s,
            vec![cmp("key1", T::Value, R::Greater, U::Value(b("a")))],
            vec![],
            vec![]
        )
        .unwrap()
        .succeeded
    );
    assert!(
        !txn(
            &mut s,
            vec![cmp("key1", T::Value, R::Less, U::Value(b("a")))],
            vec![],
            vec![]
        )
        .unwrap()
        .succeeded
    );
    assert!(
        !txn(
            &mut s,
            vec![cmp("missing", T::Value, R::Equal, U::Value(b("x")))],
            vec![op_put("missing", "x")],
            vec![]
        )
        .unwrap()
        .succeeded
    );
    assert!(
        txn(
            &mut s,
            vec![cmp("key1", T::Version, R::Equal, U::Version(3))],
            vec![op_put("key1", "v-at-version-4")],
            vec![]
        )
        .unwrap()
        .succeeded
    );
    assert!(
        !txn(
            &mut s,
            vec![cmp("key1", T::Version, R::Greater, U::Version(10))],
            vec![],
            vec![]
        )
        .unwrap()
        .succeeded
    );
    assert!(
        txn(
            &mut s,
            vec![cmp("key2", T::Version, R::Less, U::Version(2))],
            vec![],
            vec![]
        )
        .unwrap()
        .succeeded
    );
    assert!(
        txn(
            &mut s,
            vec![cmp("missing", T::Version, R::Equal, U::Version(0))],
            vec![op_put("missing", "created-by-txn")],
            vec![]
        )
        .unwrap()
        .succeeded
    );
    assert!(
        txn(
            &mut s,
            vec![cmp("key1", T::Create, R::Equal, U::CreateRevision(2))],
            vec![],
            vec![]
        )
        .unwrap()
        .succeeded
    );
    assert!(
        !txn(
            &mut s,
            vec![cmp("key2", T::Create, R::Greater, U::CreateRevision(3))],
            vec![],
            vec![op_put("created-gt", "failed")]
        )
        .unwrap()
        .succeeded
    );
    assert!(
        txn(
            &mut s,
            vec![cmp("key2", T::Create, R::Less, U::CreateRevision(100))],
            vec![],
            vec![]
        )
        .unwrap()
        .succeeded
    );
    assert!(
        txn(
            &mut s,
            vec![cmp("nokey", T::Create, R::Equal, U::CreateRevision(0))],
            vec![op_put("nokey", "first")],
            vec![]
        )
        .unwrap()
        .succeeded
    );
    assert!(
        !txn(
            &mut s,
            vec![cmp("nokey", T::Create, R::Equal, U::CreateRevision(0))],
            vec![op_put("nokey", "second")],
            vec![op_get("nokey")]
        )
        .unwrap()
        .succeeded
    );
    assert_eq!(s.current_revision(), 10);
    assert!(
        txn(
            &mut s,
            vec![cmp("key2", T::Mod, R::Equal, U::ModRevision(3))],
            vec![op_put("key2", "v2-updated")],
            vec![]
        )
        .unwrap()
        .succeeded
    );
    assert!(
        !txn(
            &mut s,
            vec![cmp("key2", T::Mod, R::Equal, U::ModRevision(3))],
            vec![op_put("key2", "stale")],
            vec![]
        )
        .unwrap()
        .succeeded
    );
    let r = txn(
        &mut s,
        vec![cmp("key2", T::Mod, R::NotEqual, U::ModRevision(3))],
        vec![op_del("key2", "")],
        vec![],
    )
    .unwrap();
    let Some(response_op::Response::ResponseDeleteRange(d)) = &r.responses[0].response else {
        panic!()
    };
    assert_eq!(d.deleted, 1);
    assert!(
        txn(
            &mut s,
            vec![
                cmp("key1", T::Mod, R::Greater, U::ModRevision(1)),
                cmp("counter", T::Mod, R::Less, U::ModRevision(100))
            ],
            vec![op_put("counter", "11")],
            vec![]
        )
        .unwrap()
        .succeeded
    );
    assert!(
        txn(
            &mut s,
            vec![
                cmp("key1", T::Value, R::Equal, U::Value(b("v-at-version-4"))),
                cmp("counter", T::Version, R::Equal, U::Version(2))
            ],
            vec![op_put("both", "ok")],
            vec![op_put("both", "not-ok")]
        )
        .unwrap()
        .succeeded
    );
    assert!(
        !txn(
            &mut s,
            vec![
                cmp("key1", T::Value, R::Equal, U::Value(b("v-at-version-4"))),
                cmp("counter", T::Version, R::Equal, U::Version(99))
            ],
            vec![op_put("both", "ok")],
            vec![op_put("both", "not-ok")]
        )
        .unwrap()
        .succeeded
    );
    put(&mut s, "pfx/a", "1");
    put(&mut s, "pfx/b", "2");
    let r = txn(
        &mut s,
        vec![],
        vec![
            RequestOp {
                request: Some(request_op::Request::RequestDeleteRange(
                    DeleteRangeRequest {
                        key: b("pfx/"),
                        range_end: prefix_end("pfx/"),
                        ..Default::default()
                    },
                )),
            },
            op_put("other", "x"),
        ],
        vec![],
    )
    .unwrap();
    let Some(response_op::Response::ResponseDeleteRange(d)) = &r.responses[0].response else {
        panic!()
    };
    assert_eq!(d.deleted, 2);
    txn(
        &mut s,
        vec![],
        vec![op_put("keyA", "a"), op_put("keyB", "b"), op_get("keyA")],
        vec![],
    )
    .unwrap();
    assert!(txn(&mut s, vec![], vec![], vec![]).unwrap().succeeded);
    // -w json: put j1, get key1, del j2, all at revision 20
    let r = txn(
        &mut s,
        vec![cmp(
            "key1",
            T::Value,
            R::Equal,
            U::Value(b("v-at-version-4")),
        )],
        vec![op_put("j1", "v"), op_get("key1"), op_del("j2", "")],
        vec![op_put("j1", "failure")],
    )
    .unwrap();
    assert_eq!(r.header.as_ref().unwrap().revision, 20);
    let revs: Vec<i64> = r
        .responses
        .iter()
        .map(|op| match op.response.as_ref().unwrap() {
            response_op::Response::ResponsePut(p) => p.header.unwrap().revision,
            response_op::Response::ResponseRange(p) => p.header.unwrap().revision,
            response_op::Response::ResponseDeleteRange(p) => p.header.unwrap().revision,
            response_op::Response::ResponseTxn(p) => p.header.unwrap().revision,
        })
        .collect();
    assert_eq!(revs, [20, 20, 20]);
    let Some(response_op::Response::ResponseRange(rr)) = &r.responses[1].response else {
        panic!()
    };
    let kv = &rr.kvs[0];
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 7, 4));
    // read-only txn: header at the current revision
    let r = txn(
        &mut s,
        vec![cmp("key1", T::Value, R::Equal, U::Value(b("wrong")))],
        vec![op_put("j1", "v")],
        vec![op_get("key1")],
    )
    .unwrap();
    assert_eq!(r.header.unwrap().revision, 20);
    // invalid transactions
    assert_eq!(
        txn(
            &mut s,
            vec![],
            vec![op_put("dup", "1"), op_put("dup", "2")],
            vec![]
        ),
        Err(EtcdError::DuplicateKey)
    );
    assert_eq!(
        txn(
            &mut s,
            vec![],
            vec![op_put("dup", "1"), op_del("dup", "")],
            vec![]
        ),
        Err(EtcdError::DuplicateKey)
    );
    assert_eq!(
        txn(
            &mut s,
            vec![],
            vec![op_put("r1", "1"), op_del("r", "s")],
            vec![]
        ),
        Err(EtcdError::DuplicateKey)
    );
    // etcd 3.4 quirk, checked against the real server: a from-key delete (range_end "\0")
    // never counts as overlapping a put in the same txn.
    assert!(
        txn(
            &mut s,
            vec![],
            vec![op_put("r1", "1"), op_del("r", "\0")],
            vec![]
        )
        .unwrap()
        .succeeded
    );
    s.delete_range(&del("r1", "")).unwrap();
    let keys_now = s
        .range(&RangeRequest {
            key: b("\0"),
            range_end: b("\0"),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        keys(&keys_now),
        [
            "both",
            "counter",
            "created-gt",
            "j1",
            "key1",
            "keyA",
            "keyB",
            "missing",
            "nokey",
            "other"
        ]
    );
}

#[test]
fn txn_validation() {
    let many: Vec<RequestOp> = (0..129).map(|i| op_put(&format!("k{i}"), "v")).collect();
    assert_eq!(
        check_txn(
            &TxnRequest {
                success: many,
                ..Default::default()
            },
            128
        ),
        Err(EtcdError::TooManyOps)
    );
    let empty_cmp = Compare {
        key: Bytes::new(),
        ..Default::default()
    };
    assert_eq!(
        check_txn(
            &TxnRequest {
                compare: vec![empty_cmp],
                ..Default::default()
            },
            128
        ),
        Err(EtcdError::EmptyKey)
    );
    assert_eq!(
        check_txn(
            &TxnRequest {
                success: vec![RequestOp { request: None }],
                ..Default::default()
            },
            128
        ),
        Err(EtcdError::KeyNotFound)
    );
    let nested = |success: Vec<RequestOp>, failure: Vec<RequestOp>| RequestOp {
        request: Some(request_op::Request::RequestTxn(TxnRequest {
            compare: vec![],
            success,
            failure,
        })),
    };
    // The same key in both branches of a nested txn is allowed.
    let ok = TxnRequest {
        success: vec![nested(vec![op_put("a", "1")], vec![op_put("a", "2")])],
        ..Default::default()
    };
    assert_eq!(check_txn(&ok, 128), Ok(()));
    // ...but not alongside an outer put of that key, or under an outer delete.
    let bad = TxnRequest {
        success: vec![nested(vec![op_put("a", "1")], vec![]), op_put("a", "2")],
        ..Default::default()
    };
    assert_eq!(check_txn(&bad, 128), Err(EtcdError::DuplicateKey));
    let bad = TxnRequest {
        success: vec![nested(vec![op_put("ab", "1")], vec![]), op_del("a", "b")],
        ..Default::default()
    };
    assert_eq!(check_txn(&bad, 128), Err(EtcdError::DuplicateKey));
    // Put and delete in different branches are fine.
    let ok = TxnRequest {
        success: vec![op_put("a", "1")],
        failure: vec![op_del("a", "")],
        ..Default::default()
    };
    assert_eq!(check_txn(&ok, 128), Ok(()));
    let put_req = |f: fn(&mut PutRequest)| {
        let mut p = PutRequest {
            key: b("k"),
            ..Default::default()
        };
        f(&mut p);
        check_put(&p)
    };
    assert_eq!(put_req(|p| p.key = Bytes::new()), Err(EtcdError::EmptyKey));
    assert_eq!(
        put_req(|p| {
            p.ignore_value = true;
            p.value = b("v")
        }),
        Err(EtcdError::ValueProvided)
    );
    assert_eq!(
        put_req(|p| {
            p.ignore_lease = true;
            p.lease = 5
        }),
        Err(EtcdError::LeaseProvided)
    );
}

struct OneLease(i64);
impl LeaseLookup for OneLease {
    fn lease_exists(&self, id: i64) -> bool {
        id == self.0
    }
}

#[test]
fn leases_and_ignore_flags() {
    let mut s = store();
    let with_lease = PutRequest {
        key: b("k"),
        value: b("v"),
        lease: 7,
        ..Default::default()
    };
    assert_eq!(s.put(&with_lease, &NoLeases), Err(EtcdError::LeaseNotFound));
    s.put(&with_lease, &OneLease(7)).unwrap();
    let r = s
        .put(
            &PutRequest {
                key: b("k"),
                value: b("w"),
                ignore_lease: true,
                ..Default::default()
            },
            &NoLeases,
        )
        .unwrap();
    assert_eq!(r.header.unwrap().revision, 3);
    let kv = s.range(&get("k")).unwrap().kvs.remove(0);
    assert_eq!((kv.value, kv.lease, kv.version), (b("w"), 7, 2));
    // In a txn the lease check comes before any write.
    let t = TxnRequest {
        success: vec![
            op_put("x", "1"),
            RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: b("y"),
                    lease: 9,
                    ..Default::default()
                })),
            },
        ],
        ..Default::default()
    };
    assert_eq!(s.txn(&t, &NoLeases), Err(EtcdError::LeaseNotFound));
    assert_eq!(s.current_revision(), 3);
    // A txn range at a future revision fails before writing.
    let t = TxnRequest {
        success: vec![
            op_put("x", "1"),
            RequestOp {
                request: Some(request_op::Request::RequestRange(RangeRequest {
                    key: b("k"),
                    revision: 4,
                    ..Default::default()
                })),
            },
        ],
        ..Default::default()
    };
    assert_eq!(s.txn(&t, &NoLeases), Err(EtcdError::FutureRev));
    assert_eq!(s.current_revision(), 3);
}

#[test]
fn range_filters_and_count_only() {
    let mut s = store();
    for i in 0..6 {
        put(&mut s, &format!("k{i}"), &format!("v{i}")); // k_i at revision i+2
    }
    let all = RangeRequest {
        key: b("k"),
        range_end: prefix_end("k"),
        ..Default::default()
    };
    let r = s
        .range(&RangeRequest {
            min_mod_revision: 3,
            max_mod_revision: 5,
            ..all.clone()
        })
        .unwrap();
    assert_eq!(keys(&r), ["k1", "k2", "k3"]);
    assert_eq!(r.count, 6, "count is taken before filtering, as etcd does");
    let r = s
        .range(&RangeRequest {
            min_create_revision: 6,
            limit: 1,
            ..all.clone()
        })
        .unwrap();
    assert_eq!((keys(&r), r.more), (vec!["k4".to_string()], true));
    let r = s
        .range(&RangeRequest {
            count_only: true,
            ..all.clone()
        })
        .unwrap();
    assert_eq!((r.kvs.len(), r.count), (0, 6));
    let r = s.range(&RangeRequest { limit: -3, ..all }).unwrap();
    assert_eq!(r.kvs.len(), 6);
}

#[test]
fn nested_txn_paths_and_headers() {
    use compare::{CompareResult as R, CompareTarget as T, TargetUnion as U};
    let mut s = store();
    put(&mut s, "a", "1");
    let inner_ok = TxnRequest {
        compare: vec![cmp("a", T::Value, R::Equal, U::Value(b("1")))],
        success: vec![op_put("b", "inner")],
        failure: vec![],
    };
    // The inner compare is evaluated before the outer put changes "a".
    let outer = TxnRequest {
        compare: vec![],
        success: vec![
            op_put("a", "2"),
            RequestOp {
                request: Some(request_op::Request::RequestTxn(inner_ok)),
            },
        ],
        failure: vec![],
    };
    check_txn(&outer, 128).unwrap();
    let r = s.txn(&outer, &NoLeases).unwrap();
    assert_eq!(r.header.unwrap().revision, 3);
    let Some(response_op::Response::ResponseTxn(inner)) = &r.responses[1].response else {
        panic!()
    };
    assert!(inner.succeeded);
    assert_eq!(
        inner.header.unwrap().revision,
        0,
        "nested txn headers are empty in etcd"
    );
    let b_kv = s.range(&get("b")).unwrap().kvs.remove(0);
    assert_eq!(b_kv.mod_revision, 3);
    let changes = s.last_changes();
    assert_eq!(changes.len(), 2);
    assert_eq!(
        s.key_index().get(b"b", 3).unwrap().0,
        crate::mvcc::Revision::new(3, 1),
        "sub revision 1"
    );
}

#[test]
fn reopen_rebuilds_index_and_hash() {
    let mut s = store();
    for i in 0..50 {
        put(&mut s, &format!("k{}", i % 7), &format!("v{i}"));
        if i % 5 == 0 {
            s.delete_range(&del(&format!("k{}", i % 3), "")).unwrap();
        }
    }
    s.compact(&CompactionRequest {
        revision: 30,
        physical: true,
    })
    .unwrap();
    put(&mut s, "late", "x");
    let before = hash(&s, 0).unwrap();
    let index_before = s.key_index().clone();
    let rev = s.current_revision();
    let backend = std::mem::take(&mut *Box::new(s.backend().clone()));
    let s2 = KvStore::open(backend).unwrap();
    assert_eq!(s2.current_revision(), rev);
    assert_eq!(s2.compact_revision(), 30);
    assert_eq!(hash(&s2, 0).unwrap(), before);
    let all = RangeRequest {
        key: b("\0"),
        range_end: b("\0"),
        ..Default::default()
    };
    assert_eq!(s2.range(&all).unwrap(), s.range(&all).unwrap());
    for at in 30..=rev {
        let r = RangeRequest {
            revision: at,
            ..all.clone()
        };
        assert_eq!(
            s2.range(&r).unwrap().kvs,
            s.range(&r).unwrap().kvs,
            "at {at}"
        );
    }
    // Restored indexes need not be structurally identical (restore keeps only surviving
    // revisions) but must agree on every key.
    assert_eq!(s2.key_index().len(), index_before.len());
}

/// Tiny deterministic generator (xorshift64*), so failures reproduce from the printed seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn random_ops_match_model() {
    use std::collections::BTreeMap;
    for seed in 1..=20u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut s = store();
        // model: history[rev] = full key space after that revision; key -> (value, create, mod, version)
        type Space = BTreeMap<String, (String, i64, i64, i64)>;
        let mut history: Vec<Space> = vec![Space::new(), Space::new()]; // revisions 0 and 1
        let mut compacted = -1i64;
        for step in 0..300 {
            let mut space = history.last().unwrap().clone();
            let rev = s.current_revision();
            let key = format!("k{}", rng.below(12));
            match rng.below(10) {
                0..=4 => {
                    let value = format!("v{step}");
                    put(&mut s, &key, &value);
                    let e = space.entry(key).or_insert((String::new(), rev + 1, 0, 0));
                    *e = (value, e.1, rev + 1, e.3 + 1);
                    history.push(space);
                }
                5..=6 => {
                    let end = format!("k{}", rng.below(12));
                    let r = s.delete_range(&del(&key, &end)).unwrap();
                    let gone: Vec<String> = if end.is_empty() || end <= key {
                        vec![]
                    } else {
                        space
                            .range(key.clone()..end.clone())
                            .map(|(k, _)| k.clone())
                            .collect()
                    };
                    assert_eq!(r.deleted as usize, gone.len(), "seed {seed} step {step}");
                    if !gone.is_empty() {
                        for k in gone {
                            space.remove(&k);
                        }
                        history.push(space);
                    }
                }
                7 if rev > 2 && rng.below(4) == 0 => {
                    let at =
                        compacted.max(0) + 1 + rng.below((rev - compacted.max(0)) as u64) as i64;
                    if at <= rev {
                        s.compact(&CompactionRequest {
                            revision: at,
                            physical: true,
                        })
                        .unwrap();
                        compacted = at;
                    }
                }
                _ => {
                    let at = 1 + rng.below(rev as u64 + 1) as i64;
                    let req = RangeRequest {
                        key: b("k"),
                        range_end: b("l"),
                        revision: at,
                        ..Default::default()
                    };
                    let got = s.range(&req);
                    if at > rev {
                        assert_eq!(got, Err(EtcdError::FutureRev));
                    } else if at < compacted {
                        assert_eq!(got, Err(EtcdError::Compacted));
                    } else {
                        let got = got.unwrap();
                        let want = &history[at as usize];
                        let got_view: Vec<(String, String, i64, i64, i64)> = got
                            .kvs
                            .iter()
                            .map(|kv| {
                                (
                                    String::from_utf8_lossy(&kv.key).into(),
                                    String::from_utf8_lossy(&kv.value).into(),
                                    kv.create_revision,
                                    kv.mod_revision,
                                    kv.version,
                                )
                            })
                            .collect();
                        let want_view: Vec<(String, String, i64, i64, i64)> = want
                            .iter()
                            .map(|(k, (v, c, m, ver))| (k.clone(), v.clone(), *c, *m, *ver))
                            .collect();
                        assert_eq!(got_view, want_view, "seed {seed} step {step} at {at}");
                    }
                }
            }
            assert_eq!(
                s.current_revision() as usize,
                history.len() - 1,
                "seed {seed} step {step}"
            );
        }
        // The reopened store agrees with the live one.
        let s2 = KvStore::open(s.backend().clone()).unwrap();
        assert_eq!(hash(&s2, 0), hash(&s, 0), "seed {seed}");
    }
}
