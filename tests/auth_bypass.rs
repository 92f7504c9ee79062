//! Authorization cannot be bypassed: through an independent gRPC stack (tonic on hyper/h2,
//! raw bytes codec, tern's prost types) a user with read on `foo` and readwrite on the
//! prefix `pre/` only is refused ("permission denied", code PermissionDenied) every way
//! around it: nested txns at any depth and in the branch that does not run, compares,
//! range ends one byte past the prefix, from-key ranges, keys-only and count-only
//! ranges, prev_kv, leases attached to keys it cannot write, watches, admin calls; and
//! the same requests pass for root, so each refusal is the permission and nothing else.

mod common;

use bytes::Bytes;
use prost::Message;
use tern::proto::authpb;
use tern::proto::etcdserverpb as pb;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use common::raw_grpc::RawCodec;

struct Client {
    grpc: tonic::client::Grpc<Channel>,
    token: Option<String>,
}

impl Client {
    async fn connect(server: &common::TernServer) -> Client {
        let channel = Channel::from_shared(format!("http://{}", server.endpoint()))
            .unwrap()
            .connect()
            .await
            .expect("connect");
        Client {
            grpc: tonic::client::Grpc::new(channel),
            token: None,
        }
    }

    async fn call<Req: Message, Resp: Message + Default>(
        &mut self,
        path: &'static str,
        req: Req,
    ) -> Result<Resp, Status> {
        self.grpc.ready().await.unwrap();
        let mut request = Request::new(Bytes::from(req.encode_to_vec()));
        if let Some(token) = &self.token {
            request
                .metadata_mut()
                .insert("token", token.parse().unwrap());
        }
        let reply = self
            .grpc
            .unary(request, PathAndQuery::from_static(path), RawCodec)
            .await?;
        Ok(Resp::decode(reply.into_inner()).expect("decode reply"))
    }

    async fn login(&mut self, name: &str, password: &str) {
        let reply: pb::AuthenticateResponse = self
            .call(
                "/etcdserverpb.Auth/Authenticate",
                pb::AuthenticateRequest {
                    name: name.into(),
                    password: password.into(),
                },
            )
            .await
            .expect("authenticate");
        assert!(!reply.token.is_empty());
        self.token = Some(reply.token);
    }

    async fn txn(&mut self, txn: pb::TxnRequest) -> Result<pb::TxnResponse, Status> {
        self.call("/etcdserverpb.KV/Txn", txn).await
    }

    async fn range(&mut self, req: pb::RangeRequest) -> Result<pb::RangeResponse, Status> {
        self.call("/etcdserverpb.KV/Range", req).await
    }
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn range(key: &str, end: &str) -> pb::RangeRequest {
    pb::RangeRequest {
        key: b(key),
        range_end: b(end),
        ..Default::default()
    }
}

fn get_op(key: &str, end: &str) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(pb::request_op::Request::RequestRange(range(key, end))),
    }
}

fn put_op(key: &str) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
            key: b(key),
            value: b("v"),
            ..Default::default()
        })),
    }
}

fn txn_op(txn: pb::TxnRequest) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(pb::request_op::Request::RequestTxn(txn)),
    }
}

/// A compare that always holds (a key's version is never negative).
fn always(key: &str) -> pb::Compare {
    pb::Compare {
        result: pb::compare::CompareResult::Greater as i32,
        target: pb::compare::CompareTarget::Version as i32,
        key: b(key),
        target_union: Some(pb::compare::TargetUnion::Version(-1)),
        ..Default::default()
    }
}

/// `op` wrapped in `depth` txns, each in the branch that does NOT run (failure of an
/// always-true compare on a permitted key), so only a check of every branch catches it.
fn buried(op: pb::RequestOp, depth: usize) -> pb::TxnRequest {
    let mut txn = pb::TxnRequest {
        compare: vec![always("pre/a")],
        success: vec![get_op("pre/a", "")],
        failure: vec![op],
    };
    for _ in 1..depth {
        txn = pb::TxnRequest {
            compare: vec![always("pre/a")],
            success: vec![get_op("pre/a", "")],
            failure: vec![txn_op(txn)],
        };
    }
    txn
}

fn assert_denied<T: std::fmt::Debug>(what: &str, result: Result<T, Status>) {
    let status = result.expect_err(what);
    assert_eq!(status.code(), Code::PermissionDenied, "{what}: {status:?}");
    assert_eq!(status.message(), "etcdserver: permission denied", "{what}");
}

async fn admin_setup(root: &mut Client) {
    async fn ok<T: Message + Default>(c: &mut Client, path: &'static str, req: impl Message) -> T {
        c.call(path, req).await.expect(path)
    }
    let _: pb::AuthUserAddResponse = ok(
        root,
        "/etcdserverpb.Auth/UserAdd",
        pb::AuthUserAddRequest {
            name: "root".into(),
            password: "rootpw".into(),
            ..Default::default()
        },
    )
    .await;
    let _: pb::AuthUserGrantRoleResponse = ok(
        root,
        "/etcdserverpb.Auth/UserGrantRole",
        pb::AuthUserGrantRoleRequest {
            user: "root".into(),
            role: "root".into(),
        },
    )
    .await;
    let _: pb::AuthUserAddResponse = ok(
        root,
        "/etcdserverpb.Auth/UserAdd",
        pb::AuthUserAddRequest {
            name: "alice".into(),
            password: "alicepw".into(),
            ..Default::default()
        },
    )
    .await;
    let _: pb::AuthRoleAddResponse = ok(
        root,
        "/etcdserverpb.Auth/RoleAdd",
        pb::AuthRoleAddRequest {
            name: "limited".into(),
        },
    )
    .await;
    for (kind, key, end) in [
        (authpb::permission::Type::Read, "foo", ""),
        (authpb::permission::Type::Readwrite, "pre/", "pre0"),
        (authpb::permission::Type::Write, "wonly", ""),
    ] {
        let _: pb::AuthRoleGrantPermissionResponse = ok(
            root,
            "/etcdserverpb.Auth/RoleGrantPermission",
            pb::AuthRoleGrantPermissionRequest {
                name: "limited".into(),
                perm: Some(authpb::Permission {
                    perm_type: kind as i32,
                    key: b(key),
                    range_end: b(end),
                }),
            },
        )
        .await;
    }
    let _: pb::AuthUserGrantRoleResponse = ok(
        root,
        "/etcdserverpb.Auth/UserGrantRole",
        pb::AuthUserGrantRoleRequest {
            user: "alice".into(),
            role: "limited".into(),
        },
    )
    .await;
    for key in ["foo", "pre/a", "secret", "pre0", "wonly"] {
        let _: pb::PutResponse = ok(
            root,
            "/etcdserverpb.KV/Put",
            pb::PutRequest {
                key: b(key),
                value: b("v"),
                ..Default::default()
            },
        )
        .await;
    }
    let _: pb::AuthEnableResponse = ok(
        root,
        "/etcdserverpb.Auth/AuthEnable",
        pb::AuthEnableRequest {},
    )
    .await;
}

#[tokio::test]
async fn a_limited_user_is_refused_every_way_around_its_permissions() {
    let server = common::TernServer::start_with(&["--bcrypt-cost", "4"]);
    let mut root = Client::connect(&server).await;
    admin_setup(&mut root).await;
    root.login("root", "rootpw").await;
    let mut alice = Client::connect(&server).await;
    alice.login("alice", "alicepw").await;

    // What alice may do, so the refusals below are about the keys alone.
    alice.range(range("foo", "")).await.expect("read foo");
    alice.range(range("pre/", "pre0")).await.expect("read pre/");
    alice
        .txn(buried(put_op("pre/b"), 3))
        .await
        .expect("permitted nested txn");

    let forbidden_reads = [
        ("the key next to foo", range("foo\0", "")),
        ("a range one byte past the prefix", range("pre/", "pre1")),
        ("a range one byte before the prefix", range("pre.", "pre0")),
        ("from-key inside the prefix", range("pre/", "\0")),
        ("everything", range("\0", "\0")),
        (
            "keys-only",
            pb::RangeRequest {
                keys_only: true,
                ..range("secret", "")
            },
        ),
        (
            "count-only",
            pb::RangeRequest {
                count_only: true,
                ..range("a", "z")
            },
        ),
        ("a write-only key", range("wonly", "")),
    ];
    for (what, req) in &forbidden_reads {
        assert_denied(what, alice.range(req.clone()).await);
        root.range(req.clone()).await.expect(what);
    }

    for depth in 1..=4 {
        let cases = [
            ("read", get_op("secret", "")),
            ("read past the prefix", get_op("pre/", "pre1")),
            ("write", put_op("secret")),
            ("write of a read-only key", put_op("foo")),
            (
                "delete",
                pb::RequestOp {
                    request: Some(pb::request_op::Request::RequestDeleteRange(
                        pb::DeleteRangeRequest {
                            key: b("pre/"),
                            range_end: b("\0"),
                            ..Default::default()
                        },
                    )),
                },
            ),
            (
                "delete with prev_kv of a write-only key",
                pb::RequestOp {
                    request: Some(pb::request_op::Request::RequestDeleteRange(
                        pb::DeleteRangeRequest {
                            key: b("wonly"),
                            prev_kv: true,
                            ..Default::default()
                        },
                    )),
                },
            ),
        ];
        for (what, op) in cases {
            let txn = buried(op, depth);
            assert_denied(
                &format!("{what} at depth {depth}"),
                alice.txn(txn.clone()).await,
            );
            root.txn(txn).await.expect(what);
        }
    }
    // A compare on a key alice cannot read leaks its value: refused, at any depth.
    let peek = pb::TxnRequest {
        compare: vec![pb::Compare {
            result: pb::compare::CompareResult::Equal as i32,
            target: pb::compare::CompareTarget::Value as i32,
            key: b("secret"),
            target_union: Some(pb::compare::TargetUnion::Value(b("v"))),
            ..Default::default()
        }],
        ..Default::default()
    };
    assert_denied("compare", alice.txn(peek.clone()).await);
    assert_denied("nested compare", alice.txn(buried(txn_op(peek), 3)).await);
    // prev_kv on a put reads the old value.
    let put_prev = pb::PutRequest {
        key: b("wonly"),
        value: b("x"),
        prev_kv: true,
        ..Default::default()
    };
    assert_denied(
        "put with prev_kv of a write-only key",
        alice
            .call::<_, pb::PutResponse>("/etcdserverpb.KV/Put", put_prev)
            .await,
    );

    // A lease root attached to `secret` cannot be revoked, extended with keys, or
    // inspected with its keys by alice.
    let lease: pb::LeaseGrantResponse = root
        .call(
            "/etcdserverpb.Lease/LeaseGrant",
            pb::LeaseGrantRequest { ttl: 60, id: 0 },
        )
        .await
        .unwrap();
    let _: pb::PutResponse = root
        .call(
            "/etcdserverpb.KV/Put",
            pb::PutRequest {
                key: b("secret"),
                value: b("leased"),
                lease: lease.id,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let attach = pb::PutRequest {
        key: b("pre/leased"),
        value: b("x"),
        lease: lease.id,
        ..Default::default()
    };
    assert_denied(
        "attach to a lease holding a key alice cannot write",
        alice
            .call::<_, pb::PutResponse>("/etcdserverpb.KV/Put", attach)
            .await,
    );
    assert_denied(
        "time-to-live with keys",
        alice
            .call::<_, pb::LeaseTimeToLiveResponse>(
                "/etcdserverpb.Lease/LeaseTimeToLive",
                pb::LeaseTimeToLiveRequest {
                    id: lease.id,
                    keys: true,
                },
            )
            .await,
    );
    alice
        .call::<_, pb::LeaseTimeToLiveResponse>(
            "/etcdserverpb.Lease/LeaseTimeToLive",
            pb::LeaseTimeToLiveRequest {
                id: lease.id,
                keys: false,
            },
        )
        .await
        .expect("time-to-live without keys needs no permission");
    assert_denied(
        "revoke",
        alice
            .call::<_, pb::LeaseRevokeResponse>(
                "/etcdserverpb.Lease/LeaseRevoke",
                pb::LeaseRevokeRequest { id: lease.id },
            )
            .await,
    );
    let still: pb::RangeResponse = root.range(range("secret", "")).await.unwrap();
    assert_eq!(still.kvs.len(), 1, "the refused revoke deleted nothing");

    // Admin-only calls. Maintenance refuses with the auth package's own text and code
    // Unknown, as etcd 3.4's `authMaintenanceServer` does; the others as everywhere.
    let unmapped = |what: &str, result: Result<_, Status>| {
        let status: Status = result.map(|_: ()| ()).expect_err(what);
        assert_eq!(
            (status.code(), status.message()),
            (Code::Unknown, "auth: permission denied"),
            "{what}"
        );
    };
    unmapped(
        "defragment",
        alice
            .call::<_, pb::DefragmentResponse>(
                "/etcdserverpb.Maintenance/Defragment",
                pb::DefragmentRequest {},
            )
            .await
            .map(|_| ()),
    );
    unmapped(
        "hashkv",
        alice
            .call::<_, pb::HashKvResponse>(
                "/etcdserverpb.Maintenance/HashKV",
                pb::HashKvRequest { revision: 0 },
            )
            .await
            .map(|_| ()),
    );
    assert_denied(
        "member add",
        alice
            .call::<_, pb::MemberAddResponse>(
                "/etcdserverpb.Cluster/MemberAdd",
                pb::MemberAddRequest {
                    peer_ur_ls: vec!["http://127.0.0.1:1".into()],
                    is_learner: true,
                },
            )
            .await,
    );
    assert_denied(
        "user add",
        alice
            .call::<_, pb::AuthUserAddResponse>(
                "/etcdserverpb.Auth/UserAdd",
                pb::AuthUserAddRequest {
                    name: "mallory".into(),
                    password: "x".into(),
                    ..Default::default()
                },
            )
            .await,
    );
    assert_denied(
        "grant herself root",
        alice
            .call::<_, pb::AuthUserGrantRoleResponse>(
                "/etcdserverpb.Auth/UserGrantRole",
                pb::AuthUserGrantRoleRequest {
                    user: "alice".into(),
                    role: "root".into(),
                },
            )
            .await,
    );

    // Without a token, or with a made-up one.
    let mut nobody = Client::connect(&server).await;
    let status = nobody.range(range("foo", "")).await.unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::InvalidArgument, "etcdserver: user name is empty")
    );
    nobody.token = Some("abcdefghijklmnop.1".into());
    let status = nobody.range(range("foo", "")).await.unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::Unauthenticated, "etcdserver: invalid auth token")
    );
    let status = nobody.txn(buried(put_op("pre/z"), 2)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
}

/// --auth-token-ttl: a token used within its TTL stays valid; one left idle longer is
/// forgotten ("invalid auth token") and a new login works.
#[tokio::test]
async fn an_idle_token_expires_after_the_auth_token_ttl() {
    let server = common::TernServer::start_with(&["--bcrypt-cost", "4", "--auth-token-ttl", "1"]);
    let mut root = Client::connect(&server).await;
    admin_setup(&mut root).await;
    let mut alice = Client::connect(&server).await;
    alice.login("alice", "alicepw").await;
    for _ in 0..4 {
        // Each use extends the token's life by the TTL.
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        alice
            .range(range("foo", ""))
            .await
            .expect("a token in use stays valid");
    }
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let status = alice.range(range("foo", "")).await.unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::Unauthenticated, "etcdserver: invalid auth token")
    );
    alice.login("alice", "alicepw").await;
    alice
        .range(range("foo", ""))
        .await
        .expect("after a new login");
}
