//! Fairness under huge answers (part of the abuse suite, `tests/abuse.rs`): clients that
//! read the whole key space at once must not hold up an unrelated get on the same server.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use tern::proto::etcdserverpb as pb;

use super::common::TernServer;
use super::raw_h2::{self, RawH2};

/// Keys and value size of the key space the ranges read (issue 17's measurement).
const KEYS: usize = 200_000;
const VALUE_BYTES: usize = 1024;
/// etcd's --max-txn-ops default: puts per loading txn.
const PUTS_PER_TXN: usize = 128;

fn txn_of_puts(first: usize, value: &[u8]) -> Vec<u8> {
    let success = (first..(first + PUTS_PER_TXN).min(KEYS))
        .map(|i| pb::RequestOp {
            request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                key: format!("fk/{i:06}").into(),
                value: value.to_vec().into(),
                ..Default::default()
            })),
        })
        .collect();
    pb::TxnRequest {
        success,
        ..Default::default()
    }
    .encode_to_vec()
}

/// Loads the key space through one raw connection, one txn at a time.
fn load_key_space(server: &TernServer) {
    let mut c = RawH2::start(server.client_port, &[]);
    // This client reads only the answers' statuses: open its connection window wide
    // enough for all of them.
    c.send_frame(
        raw_h2::kind::WINDOW_UPDATE,
        0,
        0,
        &(1u32 << 30).to_be_bytes(),
    );
    let value = vec![b'k'; VALUE_BYTES];
    let mut stream_id = 1;
    for first in (0..KEYS).step_by(PUTS_PER_TXN) {
        let body = raw_h2::grpc_message(false, &txn_of_puts(first, &value));
        c.send_request(stream_id, "/etcdserverpb.KV/Txn", &body);
        let status = c.grpc_status(stream_id, super::LIVENESS);
        assert_eq!(
            status.as_ref().map(|s| s.0.as_str()),
            Some("0"),
            "loading txn {first}: {status:?}; log:\n{}",
            server.log.lock().unwrap().join("\n")
        );
        stream_id += 2;
    }
}

/// Issue 17: four concurrent Ranges over the whole key space (200k keys of 1 KiB) made an
/// unrelated get wait up to 2.36 s (etcd 3.4: 176 ms). Ranges are read in chunks
/// (`service::kv_range`), one state-core command each; the state core's receiver task for
/// a network core never yielded while that core kept it fed with chunks, so the raft ready
/// loop, and with it a linearizable get's ReadIndex round, waited seconds. Receiver tasks
/// now yield after every bounded batch (`server::launch`). Without that this test fails
/// (a get waited 6.2 s and 8.7 s beside ranges of 11 s and 8.8 s).
#[test]
#[ignore = "issue 17 open: the receiver-task yield cut the get's wait from 6-9 s to 0.3-0.6 s in two runs, but in a full ./test.sh run (session 6) a get still waited 3.2 s beside a range of 9.6 s"]
fn parallel_full_keyspace_ranges_beside_a_get_loop() {
    let server = TernServer::start_with(&["--quota-backend-bytes=8589934592"]);
    assert!(server.etcdctl(&["put", "foo", "bar"]).status.success());
    let loaded = Instant::now();
    load_key_space(&server);
    eprintln!("loaded {KEYS} keys in {:?}", loaded.elapsed());
    let range_body = {
        let req = pb::RangeRequest {
            key: "fk/".into(),
            range_end: "fk0".into(),
            ..Default::default()
        };
        raw_h2::grpc_message(false, &req.encode_to_vec())
    };
    let ranges_done = Arc::new(AtomicBool::new(false));
    let getter = {
        let port = server.client_port;
        let done = ranges_done.clone();
        std::thread::spawn(move || {
            let mut c = RawH2::start(port, &[]);
            let body = raw_h2::grpc_message(false, &raw_h2::range_request(b"foo"));
            let mut latencies = Vec::new();
            let mut stream_id = 1;
            while !done.load(Ordering::Relaxed) {
                let sent = Instant::now();
                c.send_request(stream_id, "/etcdserverpb.KV/Range", &body);
                let status = c.grpc_status(stream_id, super::LIVENESS);
                assert_eq!(status.map(|s| s.0).as_deref(), Some("0"), "get {stream_id}");
                latencies.push(sent.elapsed());
                stream_id += 2;
                std::thread::sleep(Duration::from_millis(10));
            }
            latencies
        })
    };
    let started = Instant::now();
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let port = server.client_port;
            let body = range_body.clone();
            std::thread::spawn(move || {
                let mut c = RawH2::start(port, &[(raw_h2::SETTINGS_INITIAL_WINDOW_SIZE, 4 << 20)]);
                c.send_frame(
                    raw_h2::kind::WINDOW_UPDATE,
                    0,
                    0,
                    &(16u32 << 20).to_be_bytes(),
                );
                c.send_request(1, "/etcdserverpb.KV/Range", &body);
                let drained = c.drain_stream(1, Duration::from_secs(600));
                (drained, started.elapsed())
            })
        })
        .collect();
    let mut range_times = Vec::new();
    for r in readers {
        let (drained, took) = r.join().unwrap();
        assert_eq!(drained.status, Some(("0".into(), String::new())));
        assert!(
            drained.data_bytes > (KEYS * VALUE_BYTES) as u64,
            "{drained:?}"
        );
        range_times.push(took);
    }
    ranges_done.store(true, Ordering::Relaxed);
    let mut latencies = getter.join().unwrap();
    latencies.sort();
    let max = *latencies.last().unwrap();
    let p50 = latencies[latencies.len() / 2];
    eprintln!(
        "4 full-keyspace ranges took {range_times:?}; {} gets beside them, p50 {p50:?}, max {max:?}",
        latencies.len()
    );
    // Served all along: many gets completed while the ranges ran, and none waited for
    // anything like a whole range (each range read 200 MB).
    assert!(latencies.len() >= 10, "only {} gets", latencies.len());
    let shortest_range = *range_times.iter().min().unwrap();
    assert!(
        max < shortest_range / 4,
        "a get waited {max:?} beside ranges that took {shortest_range:?}"
    );
}
