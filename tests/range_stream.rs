//! KV.RangeStream (etcd 3.7) and large unary Ranges against a real tern: an independent
//! client (Python grpcio, `tests/clients/range_stream_python.py`) checks that the chunks
//! merged equal the unary answer and etcd's refusals; tonic (h2) checks that a compaction
//! past the pinned revision mid-stream ends the stream with ErrCompacted; and a raw
//! HTTP/2 reader drains a range over 1 GiB of values, streamed and unary, while the
//! server's anonymous RSS is sampled: it must grow by less than 64 MiB.

mod common;
#[path = "abuse/raw_h2.rs"]
mod raw_h2;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use tern::proto::etcdserverpb as pb;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic::{Code, Request};

use common::raw_grpc::RawCodec;
use common::TernServer;

#[test]
fn python_client_merges_chunks_into_the_unary_answer() {
    let server = TernServer::start();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/range_stream_python.py"
    );
    let output = Command::new("python3")
        .arg(script)
        .arg("127.0.0.1")
        .arg(server.client_port.to_string())
        // etcd3 0.12's generated code needs the pure-Python protobuf runtime.
        .env("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")
        .output()
        .expect("python3");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("OK"),
        "range_stream_python.py failed:\n{stdout}\n{stderr}"
    );
    eprintln!("{stdout}");
}

async fn connect(server: &TernServer) -> tonic::client::Grpc<Channel> {
    let channel = Channel::from_shared(format!("http://{}", server.endpoint()))
        .unwrap()
        .connect()
        .await
        .expect("connect");
    tonic::client::Grpc::new(channel).max_decoding_message_size(64 << 20)
}

async fn put(grpc: &mut tonic::client::Grpc<Channel>, key: String, value: Bytes) -> i64 {
    grpc.ready().await.unwrap();
    let req = pb::PutRequest {
        key: key.into(),
        value,
        ..Default::default()
    };
    let reply = grpc
        .unary(
            Request::new(Bytes::from(req.encode_to_vec())),
            PathAndQuery::from_static("/etcdserverpb.KV/Put"),
            RawCodec,
        )
        .await
        .expect("put");
    pb::PutResponse::decode(reply.into_inner())
        .unwrap()
        .header
        .unwrap()
        .revision
}

#[test]
fn compaction_mid_stream_fails_it_with_err_compacted() {
    let server = TernServer::start();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut grpc = connect(&server).await;
        // 32 MiB: many chunks, far more than the windows let the server send ahead.
        let value = Bytes::from(vec![b'x'; 64 << 10]);
        for i in 0..512 {
            put(&mut grpc, format!("c/{i:04}"), value.clone()).await;
        }
        let req = pb::RangeRequest {
            key: "c/".into(),
            range_end: "c0".into(),
            ..Default::default()
        };
        grpc.ready().await.unwrap();
        let mut stream = grpc
            .server_streaming(
                Request::new(Bytes::from(req.encode_to_vec())),
                PathAndQuery::from_static("/etcdserverpb.KV/RangeStream"),
                RawCodec,
            )
            .await
            .expect("RangeStream")
            .into_inner();
        let first = stream.message().await.expect("first chunk").unwrap();
        let first = pb::RangeStreamResponse::decode(first).unwrap();
        assert!(!first.range_response.unwrap().kvs.is_empty());
        // While the stream waits for this client to read, compact past its revision.
        let mut other = connect(&server).await;
        let rev = put(&mut other, "c-after".into(), Bytes::from_static(b"1")).await;
        other.ready().await.unwrap();
        let compact = pb::CompactionRequest {
            revision: rev,
            physical: false,
        };
        other
            .unary(
                Request::new(Bytes::from(compact.encode_to_vec())),
                PathAndQuery::from_static("/etcdserverpb.KV/Compact"),
                RawCodec,
            )
            .await
            .expect("compact");
        let mut chunks = 1;
        let status = loop {
            match stream.message().await {
                Ok(Some(_)) => chunks += 1,
                Ok(None) => panic!("stream ended without an error after {chunks} chunks"),
                Err(status) => break status,
            }
        };
        assert!(chunks < 512 / 16, "{chunks} chunks: the server read ahead");
        assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
        assert_eq!(
            status.message(),
            "etcdserver: mvcc: required revision has been compacted"
        );
    });
}

/// Anonymous resident memory: what the server allocated. The database file's pages that
/// the mmap'd B+tree touches are page cache (RssFile), shared and reclaimable, and not
/// what an answer costs.
fn rss_anon_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("RssAnon:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// Runs `read` while sampling the server's anonymous RSS; returns what `read` returned
/// and the peak growth over the RSS before it.
fn peak_rss_growth<T>(pid: u32, read: impl FnOnce() -> T) -> (T, u64) {
    let before = rss_anon_bytes(pid);
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while !done.load(Ordering::Relaxed) {
                peak = peak.max(rss_anon_bytes(pid));
                std::thread::sleep(Duration::from_millis(20));
            }
            peak
        })
    };
    let out = read();
    done.store(true, Ordering::Relaxed);
    let peak = sampler.join().unwrap().max(rss_anon_bytes(pid));
    eprintln!(
        "server anonymous RSS: {} MiB before, peak {} MiB",
        before >> 20,
        peak >> 20
    );
    (out, peak.saturating_sub(before))
}

const RSS_GROWTH_MAX_BYTES: u64 = 64 << 20;

#[test]
fn range_over_one_gib_keeps_server_memory_bounded() {
    // A small --snapshot-count and a restart after loading, so that the raft log (which
    // keeps recent entries in memory for slow followers, as etcd's does) holds none of
    // the values written when the reads begin.
    let mut server =
        TernServer::start_with(&["--quota-backend-bytes=8589934592", "--snapshot-count=64"]);
    let values_bytes: usize = 1 << 30;
    let value_bytes: usize = 1 << 20;
    let keys = values_bytes / value_bytes + 8;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let value = Bytes::from(vec![b'g'; value_bytes]);
        let mut writers = Vec::new();
        for w in 0..4 {
            let mut grpc = connect(&server).await;
            let value = value.clone();
            writers.push(tokio::spawn(async move {
                for i in (w..keys).step_by(4) {
                    put(&mut grpc, format!("g/{i:05}"), value.clone()).await;
                }
            }));
        }
        for w in writers {
            w.await.unwrap();
        }
    });
    server.stop_and_restart();
    let body = {
        let req = pb::RangeRequest {
            key: "g/".into(),
            range_end: "g0".into(),
            ..Default::default()
        };
        raw_h2::grpc_message(false, &req.encode_to_vec())
    };
    let expected_bytes = (keys * value_bytes) as u64;
    for (stream_id, path) in [
        (1, "/etcdserverpb.KV/RangeStream"),
        (3, "/etcdserverpb.KV/Range"),
    ] {
        let mut c = raw_h2::RawH2::start(
            server.client_port,
            &[(raw_h2::SETTINGS_INITIAL_WINDOW_SIZE, 4 << 20)],
        );
        c.send_frame(
            raw_h2::kind::WINDOW_UPDATE,
            0,
            0,
            &(16u32 << 20).to_be_bytes(),
        );
        let (drained, growth) = peak_rss_growth(server.pid(), || {
            c.send_request(stream_id, path, &body);
            c.drain_stream(stream_id, Duration::from_secs(600))
        });
        eprintln!(
            "{path}: {} MiB in {} messages (largest {} MiB), server anonymous RSS peak growth {} MiB",
            drained.data_bytes >> 20,
            drained.messages,
            drained.largest_message >> 20,
            growth >> 20
        );
        assert_eq!(drained.status, Some(("0".into(), String::new())), "{path}");
        assert!(drained.data_bytes > expected_bytes, "{path}: {drained:?}");
        if path.ends_with("RangeStream") {
            assert!(drained.messages > 100, "{path}: {drained:?}");
        } else {
            assert_eq!(drained.messages, 1, "{path}: {drained:?}");
        }
        assert!(
            growth < RSS_GROWTH_MAX_BYTES,
            "{path}: the server's RSS grew by {growth} bytes"
        );
    }
}
