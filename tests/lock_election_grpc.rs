//! The server-side v3lock and v3election services through an independent gRPC stack
//! (tonic on hyper/h2, raw bytes codec, messages encoded with tern's prost types) against
//! the spawned tern binary: two competing Lock holders, a cancelled Lock releasing its
//! key, a lock freed by lease revocation; two election candidates with an observer,
//! Proclaim, Leader, Resign, and etcd's election error texts.

mod common;

use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use tern::proto::etcdserverpb as kvpb;
use tern::proto::v3electionpb as epb;
use tern::proto::v3lockpb as lpb;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use common::raw_grpc::RawCodec;

/// How long any single step may take before the test calls it hung.
const STEP: Duration = Duration::from_secs(10);

async fn connect(server: &common::TernServer) -> tonic::client::Grpc<Channel> {
    let channel = Channel::from_shared(format!("http://{}", server.endpoint()))
        .unwrap()
        .connect()
        .await
        .expect("connect");
    tonic::client::Grpc::new(channel)
}

async fn call<Req: Message, Resp: Message + Default>(
    grpc: &mut tonic::client::Grpc<Channel>,
    path: &'static str,
    req: Req,
    timeout: Option<Duration>,
) -> Result<Resp, Status> {
    grpc.ready().await.unwrap();
    let mut request = Request::new(Bytes::from(req.encode_to_vec()));
    if let Some(t) = timeout {
        request.set_timeout(t);
    }
    let reply = grpc
        .unary(request, PathAndQuery::from_static(path), RawCodec)
        .await?;
    Ok(Resp::decode(reply.into_inner()).expect("decode reply"))
}

async fn grant(grpc: &mut tonic::client::Grpc<Channel>, ttl: i64) -> i64 {
    let resp: kvpb::LeaseGrantResponse = call(
        grpc,
        "/etcdserverpb.Lease/LeaseGrant",
        kvpb::LeaseGrantRequest { ttl, id: 0 },
        None,
    )
    .await
    .unwrap();
    resp.id
}

async fn keys_under(grpc: &mut tonic::client::Grpc<Channel>, prefix: &str) -> Vec<String> {
    let mut end = prefix.as_bytes().to_vec();
    *end.last_mut().unwrap() += 1;
    let resp: kvpb::RangeResponse = call(
        grpc,
        "/etcdserverpb.KV/Range",
        kvpb::RangeRequest {
            key: Bytes::copy_from_slice(prefix.as_bytes()),
            range_end: end.into(),
            ..Default::default()
        },
        None,
    )
    .await
    .unwrap();
    resp.kvs
        .iter()
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .collect()
}

fn lock_request(name: &str, lease: i64) -> lpb::LockRequest {
    lpb::LockRequest {
        name: Bytes::copy_from_slice(name.as_bytes()),
        lease,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_lock_holders_take_turns() {
    let server = common::TernServer::start();
    let mut a = connect(&server).await;
    let mut b = connect(&server).await;
    let lease_a = grant(&mut a, 60).await;
    let lease_b = grant(&mut b, 60).await;

    let held: lpb::LockResponse = call(
        &mut a,
        "/v3lockpb.Lock/Lock",
        lock_request("job", lease_a),
        None,
    )
    .await
    .unwrap();
    assert_eq!(held.key, format!("job/{lease_a:x}"));

    let mut b2 = b.clone();
    let waiting = tokio::spawn(async move {
        call::<_, lpb::LockResponse>(
            &mut b2,
            "/v3lockpb.Lock/Lock",
            lock_request("job", lease_b),
            None,
        )
        .await
    });
    // B's key exists (queued behind A) but B does not hold the lock.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !waiting.is_finished(),
        "second holder got the lock while the first held it"
    );
    assert_eq!(keys_under(&mut a, "job/").await.len(), 2);

    let unlocked: lpb::UnlockResponse = call(
        &mut a,
        "/v3lockpb.Lock/Unlock",
        lpb::UnlockRequest {
            key: held.key.clone(),
        },
        None,
    )
    .await
    .unwrap();
    let got = tokio::time::timeout(STEP, waiting)
        .await
        .expect("second holder hung")
        .unwrap()
        .unwrap();
    assert_eq!(got.key, format!("job/{lease_b:x}"));
    assert!(got.header.unwrap().revision >= unlocked.header.unwrap().revision);
    assert_eq!(
        keys_under(&mut a, "job/").await,
        vec![format!("job/{lease_b:x}")]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_lock_removes_its_key_and_revoke_frees_the_lock() {
    let server = common::TernServer::start();
    let mut grpc = connect(&server).await;
    let holder = grant(&mut grpc, 60).await;
    let other = grant(&mut grpc, 60).await;
    let _: lpb::LockResponse = call(
        &mut grpc,
        "/v3lockpb.Lock/Lock",
        lock_request("m", holder),
        None,
    )
    .await
    .unwrap();

    // A Lock that gives up (deadline) withdraws its key, as clientv3's Mutex does.
    let err = call::<_, lpb::LockResponse>(
        &mut grpc,
        "/v3lockpb.Lock/Lock",
        lock_request("m", other),
        Some(Duration::from_millis(300)),
    )
    .await
    .unwrap_err();
    // tonic reports its own timeout as Cancelled, the server's as DeadlineExceeded.
    assert!(
        matches!(err.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{err:?}"
    );
    let mut keys = Vec::new();
    for _ in 0..50 {
        keys = keys_under(&mut grpc, "m/").await;
        if keys.len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(keys, vec![format!("m/{holder:x}")]);

    // Revoking the holder's lease deletes its key, which hands the lock on.
    let mut waiter = grpc.clone();
    let waiting = tokio::spawn(async move {
        call::<_, lpb::LockResponse>(
            &mut waiter,
            "/v3lockpb.Lock/Lock",
            lock_request("m", other),
            None,
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _: kvpb::LeaseRevokeResponse = call(
        &mut grpc,
        "/etcdserverpb.Lease/LeaseRevoke",
        kvpb::LeaseRevokeRequest { id: holder },
        None,
    )
    .await
    .unwrap();
    let got = tokio::time::timeout(STEP, waiting)
        .await
        .expect("lock not handed on")
        .unwrap()
        .unwrap();
    assert_eq!(got.key, format!("m/{other:x}"));

    // A lock on a lease that does not exist fails with etcd's lease error.
    let err = call::<_, lpb::LockResponse>(
        &mut grpc,
        "/v3lockpb.Lock/Lock",
        lock_request("m", 0x1234),
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(err.message(), "etcdserver: requested lease not found");
}

fn campaign(name: &str, lease: i64, value: &str) -> epb::CampaignRequest {
    epb::CampaignRequest {
        name: Bytes::copy_from_slice(name.as_bytes()),
        lease,
        value: Bytes::copy_from_slice(value.as_bytes()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_candidates_and_an_observer() {
    let server = common::TernServer::start();
    let mut grpc = connect(&server).await;
    let name = Bytes::from_static(b"primary");

    // No leader yet.
    let err = call::<_, epb::LeaderResponse>(
        &mut grpc,
        "/v3electionpb.Election/Leader",
        epb::LeaderRequest { name: name.clone() },
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::Unknown, "election: no leader")
    );

    // The observer starts before anyone campaigns. Like grpc-go, the server sends the
    // response headers with the first message, so the call runs in its own task.
    let mut observer_client = grpc.clone();
    let (observed_tx, mut observed) = tokio::sync::mpsc::unbounded_channel::<String>();
    let observe_name = name.clone();
    tokio::spawn(async move {
        observer_client.ready().await.unwrap();
        let request = epb::LeaderRequest { name: observe_name }.encode_to_vec();
        let response = observer_client
            .server_streaming(
                Request::new(Bytes::from(request)),
                PathAndQuery::from_static("/v3electionpb.Election/Observe"),
                RawCodec,
            )
            .await
            .unwrap();
        let mut stream = response.into_inner();
        while let Ok(Some(message)) = stream.message().await {
            let kv = epb::LeaderResponse::decode(message).unwrap().kv.unwrap();
            if observed_tx
                .send(String::from_utf8_lossy(&kv.value).into_owned())
                .is_err()
            {
                return;
            }
        }
    });
    macro_rules! next_observed {
        () => {
            tokio::time::timeout(STEP, observed.recv())
                .await
                .expect("observe hung")
                .expect("observe ended")
        };
    }

    let lease_one = grant(&mut grpc, 60).await;
    let lease_two = grant(&mut grpc, 60).await;
    let one: epb::CampaignResponse = call(
        &mut grpc,
        "/v3electionpb.Election/Campaign",
        campaign("primary", lease_one, "one"),
        None,
    )
    .await
    .unwrap();
    let leader_one = one.leader.clone().unwrap();
    assert_eq!(leader_one.key, format!("primary/{lease_one:x}"));
    assert_eq!(leader_one.lease, lease_one);

    assert_eq!(next_observed!(), "one");

    // The second candidate waits behind the first.
    let mut second_client = grpc.clone();
    let second = tokio::spawn(async move {
        call::<_, epb::CampaignResponse>(
            &mut second_client,
            "/v3electionpb.Election/Campaign",
            campaign("primary", lease_two, "two"),
            None,
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !second.is_finished(),
        "second candidate elected while the first leads"
    );

    // The leader proclaims a new value; the observer sees it.
    let _: epb::ProclaimResponse = call(
        &mut grpc,
        "/v3electionpb.Election/Proclaim",
        epb::ProclaimRequest {
            leader: Some(leader_one.clone()),
            value: Bytes::from_static(b"one-b"),
        },
        None,
    )
    .await
    .unwrap();
    assert_eq!(next_observed!(), "one-b");
    let leader: epb::LeaderResponse = call(
        &mut grpc,
        "/v3electionpb.Election/Leader",
        epb::LeaderRequest { name: name.clone() },
        None,
    )
    .await
    .unwrap();
    assert_eq!(leader.kv.unwrap().value, "one-b");

    // The first resigns: the second is elected, and the observer follows.
    let _: epb::ResignResponse = call(
        &mut grpc,
        "/v3electionpb.Election/Resign",
        epb::ResignRequest {
            leader: Some(leader_one.clone()),
        },
        None,
    )
    .await
    .unwrap();
    let two = tokio::time::timeout(STEP, second)
        .await
        .expect("second candidate hung")
        .unwrap()
        .unwrap();
    assert_eq!(
        two.leader.as_ref().unwrap().key,
        format!("primary/{lease_two:x}")
    );
    assert_eq!(next_observed!(), "two");

    // The old leader can no longer proclaim; requests without a leader key are refused.
    let err = call::<_, epb::ProclaimResponse>(
        &mut grpc,
        "/v3electionpb.Election/Proclaim",
        epb::ProclaimRequest {
            leader: Some(leader_one),
            value: Bytes::from_static(b"stale"),
        },
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::Unknown, "election: not leader")
    );
    let err = call::<_, epb::ResignResponse>(
        &mut grpc,
        "/v3electionpb.Election/Resign",
        epb::ResignRequest { leader: None },
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::Unknown, "\"leader\" field must be provided")
    );
}
