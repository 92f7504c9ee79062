//! Watch under load, through an independent gRPC client (tonic over hyper/h2): 10,000
//! watchers on 100 streams over 11 connections, one stream a slow consumer that reads
//! nothing until the writes are done; puts and multi-key txns while they watch. Checks
//! that every watcher receives exactly the events of its keys, in revision order, each
//! revision in one response, and that the slow consumer was caught up from history.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use tern::proto::etcdserverpb as pb;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};
use tonic::Request;

const STREAMS: usize = 100;
const WATCHERS_PER_STREAM: usize = 100;
const CONNECTIONS: usize = 10;
const KEYS: usize = 1000;
/// Streams (the slow one among them) whose first watcher watches the whole prefix.
const PREFIX_STREAMS: usize = 10;
const SLOW_STREAM: usize = 0;
const PUTS: usize = 3000;
const TXNS: usize = 100;
const TXN_KEYS: usize = 3;
const WRITERS: usize = 8;
/// Big enough that the slow stream's events overflow every buffer on the way.
const VALUE_BYTES: usize = 600;

use common::raw_grpc::RawCodec;

fn key(i: usize) -> Bytes {
    Bytes::from(format!("load/{i:04}"))
}

/// What watcher `w` of stream `s` watches: a single key, or the whole prefix.
fn watched(s: usize, w: usize) -> Option<Bytes> {
    if w == 0 && s < PREFIX_STREAMS {
        None
    } else {
        Some(key((s * WATCHERS_PER_STREAM + w) % KEYS))
    }
}

async fn connect(endpoint: &str, small_window: bool) -> Channel {
    let mut e = Endpoint::from_shared(format!("http://{endpoint}")).unwrap();
    if small_window {
        e = e
            .initial_stream_window_size(65_535)
            .initial_connection_window_size(65_535);
    }
    tokio::time::timeout(Duration::from_secs(10), e.connect())
        .await
        .expect("connect timed out")
        .expect("connect")
}

async fn unary<Req: Message, Resp: Message + Default>(
    channel: &Channel,
    path: &'static str,
    req: Req,
) -> Resp {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let body = Bytes::from(req.encode_to_vec());
    let reply = grpc
        .unary(
            Request::new(body),
            PathAndQuery::from_static(path),
            RawCodec,
        )
        .await
        .unwrap()
        .into_inner();
    Resp::decode(reply).unwrap()
}

/// One response's events as (watch id, [(key, mod_revision)]).
type Received = Vec<(i64, Vec<(Bytes, i64)>)>;

struct WatchStream {
    responses: tonic::Streaming<Bytes>,
    _requests: tokio::sync::mpsc::Sender<Bytes>,
}

async fn open_stream(channel: &Channel, stream: usize) -> WatchStream {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(WATCHERS_PER_STREAM + 1);
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    for w in 0..WATCHERS_PER_STREAM {
        let (key, range_end) = match watched(stream, w) {
            Some(k) => (k, Bytes::new()),
            None => (Bytes::from_static(b"load/"), Bytes::from_static(b"load0")),
        };
        let create = pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
                pb::WatchCreateRequest {
                    key,
                    range_end,
                    // Client-chosen ids, offset so they cannot be confused with auto ids.
                    watch_id: 1000 + w as i64,
                    ..Default::default()
                },
            )),
        };
        tx.send(create.encode_to_vec().into()).await.unwrap();
    }
    let requests = tokio_stream::wrappers::ReceiverStream::new(rx);
    let mut responses = grpc
        .streaming(
            Request::new(requests),
            PathAndQuery::from_static("/etcdserverpb.Watch/Watch"),
            RawCodec,
        )
        .await
        .unwrap()
        .into_inner();
    let mut created = 0;
    while created < WATCHERS_PER_STREAM {
        let message = responses.message().await.unwrap().expect("stream open");
        let response = pb::WatchResponse::decode(message).unwrap();
        assert!(response.created && !response.canceled, "{response:?}");
        assert_eq!(response.watch_id, 1000 + created as i64);
        created += 1;
    }
    WatchStream {
        responses,
        _requests: tx,
    }
}

/// Reads responses until `expected` events arrived (or the deadline passes).
async fn collect(mut stream: WatchStream, expected: usize) -> Received {
    let mut received: Received = Vec::new();
    let mut events = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    while events < expected {
        let message = tokio::time::timeout_at(deadline, stream.responses.message())
            .await
            .unwrap_or_else(|_| panic!("only {events} of {expected} events arrived"))
            .unwrap()
            .expect("stream open");
        let response = pb::WatchResponse::decode(message).unwrap();
        assert!(!response.canceled, "{response:?}");
        let list: Vec<(Bytes, i64)> = response
            .events
            .iter()
            .map(|e| {
                let kv = e.kv.as_ref().unwrap();
                (kv.key.clone(), kv.mod_revision)
            })
            .collect();
        events += list.len();
        received.push((response.watch_id, list));
    }
    received
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_watchers_with_a_slow_consumer_see_every_event_in_order() {
    let server = common::TernServer::start();
    let endpoint = format!("127.0.0.1:{}", server.client_port);
    let mut channels = Vec::new();
    for _ in 0..CONNECTIONS {
        channels.push(connect(&endpoint, false).await);
    }
    let slow_channel = connect(&endpoint, true).await;

    let mut streams = Vec::new();
    for s in 0..STREAMS {
        let channel = if s == SLOW_STREAM {
            &slow_channel
        } else {
            &channels[s % CONNECTIONS]
        };
        streams.push(open_stream(channel, s).await);
    }

    // Writes: puts of single keys and txns of several keys, from concurrent writers.
    let value = Bytes::from(vec![b'v'; VALUE_BYTES]);
    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let channel = channels[writer % CONNECTIONS].clone();
        let value = value.clone();
        writers.push(tokio::spawn(async move {
            let mut written: Vec<(i64, Vec<Bytes>)> = Vec::new();
            for i in (writer..PUTS).step_by(WRITERS) {
                let k = key((i * 7919) % KEYS);
                let req = pb::PutRequest {
                    key: k.clone(),
                    value: value.clone(),
                    ..Default::default()
                };
                let resp: pb::PutResponse = unary(&channel, "/etcdserverpb.KV/Put", req).await;
                written.push((resp.header.unwrap().revision, vec![k]));
            }
            for i in (writer..TXNS).step_by(WRITERS) {
                let keys: Vec<Bytes> = (0..TXN_KEYS)
                    .map(|j| key((i * 31 + j * 101) % KEYS))
                    .collect();
                let success = keys
                    .iter()
                    .map(|k| pb::RequestOp {
                        request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                            key: k.clone(),
                            value: value.clone(),
                            ..Default::default()
                        })),
                    })
                    .collect();
                let req = pb::TxnRequest {
                    success,
                    ..Default::default()
                };
                let resp: pb::TxnResponse = unary(&channel, "/etcdserverpb.KV/Txn", req).await;
                written.push((resp.header.unwrap().revision, keys));
            }
            written
        }));
    }
    let mut by_revision: BTreeMap<i64, Vec<Bytes>> = BTreeMap::new();
    for writer in writers {
        for (revision, keys) in writer.await.unwrap() {
            assert!(
                by_revision.insert(revision, keys).is_none(),
                "revision {revision} twice"
            );
        }
    }
    // What each key should produce, in revision order.
    let mut per_key: HashMap<Bytes, Vec<i64>> = HashMap::new();
    let mut all: Vec<(Bytes, i64)> = Vec::new();
    for (revision, keys) in &by_revision {
        for k in keys {
            per_key.entry(k.clone()).or_default().push(*revision);
            all.push((k.clone(), *revision));
        }
    }

    let mut readers = Vec::new();
    for (s, stream) in streams.into_iter().enumerate() {
        let expected: usize = (0..WATCHERS_PER_STREAM)
            .map(|w| match watched(s, w) {
                None => all.len(),
                Some(k) => per_key.get(&k).map_or(0, Vec::len),
            })
            .sum();
        readers.push(tokio::spawn(
            async move { (s, collect(stream, expected).await) },
        ));
    }
    let mut slow_multi_revision_responses = 0;
    for reader in readers {
        let (s, received) = reader.await.unwrap();
        let mut per_watcher: HashMap<i64, Vec<(Bytes, i64)>> = HashMap::new();
        let mut revisions_seen: HashMap<i64, Vec<i64>> = HashMap::new();
        for (watch_id, events) in received {
            let mut revisions: Vec<i64> = events.iter().map(|e| e.1).collect();
            revisions.dedup();
            if s == SLOW_STREAM && revisions.len() > 1 {
                slow_multi_revision_responses += 1;
            }
            // All events of one revision arrive in one response.
            let seen = revisions_seen.entry(watch_id).or_default();
            for r in &revisions {
                assert!(
                    !seen.contains(r),
                    "stream {s} watcher {watch_id}: revision {r} split"
                );
            }
            seen.extend(revisions);
            per_watcher.entry(watch_id).or_default().extend(events);
        }
        for w in 0..WATCHERS_PER_STREAM {
            let got = per_watcher.remove(&(1000 + w as i64)).unwrap_or_default();
            let want: Vec<(Bytes, i64)> = match watched(s, w) {
                None => all.clone(),
                Some(k) => per_key.get(&k).map_or(Vec::new(), |revs| {
                    revs.iter().map(|r| (k.clone(), *r)).collect()
                }),
            };
            assert_eq!(got, want, "stream {s} watcher {w}");
        }
        assert!(
            per_watcher.is_empty(),
            "events for unknown watch ids: {:?}",
            per_watcher.keys()
        );
    }
    // The slow stream's prefix watcher could not keep up live: history batches prove it
    // was caught up from the backend.
    assert!(
        slow_multi_revision_responses > 0,
        "the slow consumer never fell back to history"
    );
    drop(server);
}
