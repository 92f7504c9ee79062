//! Watch protocol details through an independent gRPC client (tonic): client-chosen and
//! automatic ids, duplicate id and empty range rejections, cancel, the NOPUT filter,
//! prev_kv, progress requests, periodic progress notifications and a compacted start
//! revision, checked field by field.

mod common;

use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use tern::proto::etcdserverpb as pb;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};
use tonic::Request;

use common::raw_grpc::RawCodec;

async fn unary<Req: Message, Resp: Message + Default>(
    ch: &Channel,
    path: &'static str,
    req: Req,
) -> Resp {
    let mut grpc = tonic::client::Grpc::new(ch.clone());
    grpc.ready().await.unwrap();
    let reply = grpc
        .unary(
            Request::new(Bytes::from(req.encode_to_vec())),
            PathAndQuery::from_static(path),
            RawCodec,
        )
        .await
        .unwrap()
        .into_inner();
    Resp::decode(reply).unwrap()
}

async fn put(ch: &Channel, k: &str, v: &str) -> i64 {
    let req = pb::PutRequest {
        key: k.as_bytes().to_vec().into(),
        value: v.as_bytes().to_vec().into(),
        ..Default::default()
    };
    let resp: pb::PutResponse = unary(ch, "/etcdserverpb.KV/Put", req).await;
    resp.header.unwrap().revision
}

struct Stream {
    tx: tokio::sync::mpsc::Sender<Bytes>,
    rx: tonic::Streaming<Bytes>,
}

impl Stream {
    /// Opens a stream with its first create request: the server sends response headers
    /// with its first message, and tonic waits for them before returning the stream.
    async fn open(ch: &Channel, first: pb::WatchCreateRequest) -> Stream {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
        let req = pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::CreateRequest(first)),
        };
        tx.send(req.encode_to_vec().into()).await.unwrap();
        let mut grpc = tonic::client::Grpc::new(ch.clone());
        grpc.ready().await.unwrap();
        let rx = grpc
            .streaming(
                Request::new(tokio_stream::wrappers::ReceiverStream::new(rx)),
                PathAndQuery::from_static("/etcdserverpb.Watch/Watch"),
                RawCodec,
            )
            .await
            .unwrap()
            .into_inner();
        Stream { tx, rx }
    }
    async fn send(&self, union: pb::watch_request::RequestUnion) {
        let req = pb::WatchRequest {
            request_union: Some(union),
        };
        self.tx.send(req.encode_to_vec().into()).await.unwrap();
    }
    async fn create(&self, create: pb::WatchCreateRequest) {
        self.send(pb::watch_request::RequestUnion::CreateRequest(create))
            .await
    }
    async fn next(&mut self) -> pb::WatchResponse {
        let m = tokio::time::timeout(Duration::from_secs(10), self.rx.message())
            .await
            .expect("response timed out")
            .unwrap()
            .unwrap();
        pb::WatchResponse::decode(m).unwrap()
    }
}

fn watch(key: &str) -> pb::WatchCreateRequest {
    pb::WatchCreateRequest {
        key: key.as_bytes().to_vec().into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_protocol_matches_etcd() {
    let server = common::TernServer::start();
    let ch = Endpoint::from_shared(format!("http://127.0.0.1:{}", server.client_port))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let r1 = put(&ch, "a", "1").await;
    // Automatic ids start at 0; created names the current revision.
    let mut s = Stream::open(&ch, watch("a")).await;
    let created = s.next().await;
    assert!(created.created && !created.canceled);
    assert_eq!(
        (created.watch_id, created.header.unwrap().revision),
        (0, r1)
    );

    // A client-chosen id; then the same id again is refused with etcd's text.
    s.create(pb::WatchCreateRequest {
        watch_id: 7,
        prev_kv: true,
        filters: vec![pb::watch_create_request::FilterType::Noput as i32],
        ..watch("a")
    })
    .await;
    assert_eq!(s.next().await.watch_id, 7);
    s.create(pb::WatchCreateRequest {
        watch_id: 7,
        ..watch("b")
    })
    .await;
    let dup = s.next().await;
    assert!(dup.created && dup.canceled);
    assert_eq!(dup.watch_id, -1);
    assert_eq!(
        dup.cancel_reason,
        "mvcc: duplicate watch ID provided on the WatchStream"
    );

    // key >= range_end is an empty range.
    s.create(pb::WatchCreateRequest {
        range_end: Bytes::from_static(b"a"),
        ..watch("b")
    })
    .await;
    let empty = s.next().await;
    assert!(empty.created && empty.canceled);
    assert_eq!(empty.cancel_reason, "mvcc: watcher range is empty");

    // Next automatic id skips nothing taken: 1.
    s.create(watch("a")).await;
    assert_eq!(s.next().await.watch_id, 1);

    // A put reaches watchers 0 and 1 (7 filters puts out); a delete reaches 0, 1 and 7,
    // and 7 gets prev_kv.
    let r2 = put(&ch, "a", "2").await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let r = s.next().await;
        assert_eq!(r.header.unwrap().revision, r2);
        assert_eq!(r.events.len(), 1);
        assert!(r.events[0].prev_kv.is_none());
        ids.push(r.watch_id);
    }
    ids.sort();
    assert_eq!(ids, vec![0, 1]);
    let del = pb::DeleteRangeRequest {
        key: Bytes::from_static(b"a"),
        ..Default::default()
    };
    let _: pb::DeleteRangeResponse = unary(&ch, "/etcdserverpb.KV/DeleteRange", del).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let r = s.next().await;
        assert_eq!(r.events[0].r#type, 1);
        if r.watch_id == 7 {
            assert_eq!(&r.events[0].prev_kv.as_ref().unwrap().value[..], b"2");
        } else {
            assert!(r.events[0].prev_kv.is_none());
        }
        ids.push(r.watch_id);
    }
    ids.sort();
    assert_eq!(ids, vec![0, 1, 7]);

    // Cancel answers canceled for a live id, nothing for an unknown one.
    s.send(pb::watch_request::RequestUnion::CancelRequest(
        pb::WatchCancelRequest { watch_id: 99 },
    ))
    .await;
    s.send(pb::watch_request::RequestUnion::CancelRequest(
        pb::WatchCancelRequest { watch_id: 1 },
    ))
    .await;
    let canceled = s.next().await;
    assert!(canceled.canceled && !canceled.created);
    assert_eq!(canceled.watch_id, 1);

    // Progress: watch id -1, no events, the current revision.
    s.send(pb::watch_request::RequestUnion::ProgressRequest(
        pb::WatchProgressRequest {},
    ))
    .await;
    let progress = s.next().await;
    assert_eq!(progress.watch_id, -1);
    assert!(progress.events.is_empty() && !progress.created && !progress.canceled);
    assert_eq!(progress.header.unwrap().revision, r2 + 1);

    // A start revision below the compact revision: created, then canceled with it.
    let _: pb::CompactionResponse = unary(
        &ch,
        "/etcdserverpb.KV/Compact",
        pb::CompactionRequest {
            revision: r2,
            physical: false,
        },
    )
    .await;
    s.create(pb::WatchCreateRequest {
        start_revision: r1,
        ..watch("a")
    })
    .await;
    let created = s.next().await;
    assert!(created.created);
    let compacted = s.next().await;
    assert_eq!(compacted.watch_id, created.watch_id);
    assert!(compacted.canceled);
    assert_eq!(compacted.compact_revision, r2);
    assert_eq!(compacted.header.unwrap().revision, 0);
    drop(server);
}

/// etcd's periodic progress notification (--experimental-watch-progress-notify-interval):
/// a `progress_notify` watcher that got no event during an interval receives an empty
/// response with its own id at the current revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_progress_notifications_reach_idle_watchers() {
    let server =
        common::TernServer::start_with(&["--experimental-watch-progress-notify-interval", "200ms"]);
    let ch = Endpoint::from_shared(format!("http://127.0.0.1:{}", server.client_port))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut s = Stream::open(
        &ch,
        pb::WatchCreateRequest {
            progress_notify: true,
            ..watch("p")
        },
    )
    .await;
    let created = s.next().await;
    assert!(created.created && created.watch_id == 0);
    let r1 = put(&ch, "p", "1").await;
    let event = s.next().await;
    assert_eq!(event.events[0].kv.as_ref().unwrap().mod_revision, r1);
    // A write to another key moves the revision; some later notification names it.
    let r2 = put(&ch, "q", "1").await;
    for _ in 0..10 {
        let progress = s.next().await;
        assert_eq!(progress.watch_id, 0);
        assert!(progress.events.is_empty() && !progress.created && !progress.canceled);
        let revision = progress.header.unwrap().revision;
        assert!(revision == r1 || revision == r2, "revision {revision}");
        if revision == r2 {
            return;
        }
    }
    panic!("no progress notification at revision {r2}");
}
