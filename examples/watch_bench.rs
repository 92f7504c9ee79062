//! Write throughput with and without watchers, measured against fresh tern servers: server
//! A has no watchers; server B has 10,000 watchers on 100 streams (one a slow consumer
//! that reads nothing until the writes are done) watching the written keys. The same put
//! load goes to A and B in alternating one-second slices (A first in even slices, B
//! first in odd ones), so that a shared machine's changing background load falls on both
//! alike. Prints puts/s of both, their ratio per round and overall, and the server CPU
//! per put. Mode `match` (default): every put matches one watcher, so each write also
//! costs one event delivery; mode `idle`: the watchers watch keys nobody writes, which
//! isolates what the watch machinery costs the write path.
//!
//! It also checks delivery: after the writes, the slow consumer starts reading, and every
//! watcher must have received exactly the events of the puts to its key during the
//! measured slices, in revision order (the run fails otherwise).
//!
//! cargo build --release && cargo run --release --example watch_bench -- [seconds] [writers] [match|idle] [rounds]
//! (seconds: one-second slices per server per round; TERN_BIN overrides the server
//! binary, default target/release/tern.)

use std::collections::{BTreeMap, HashMap};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message;
use tern::proto::etcdserverpb as pb;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};
use tonic::Request;

const STREAMS: usize = 100;
const WATCHERS_PER_STREAM: usize = 100;
const KEYS: usize = 10_000;
const CONNECTIONS: usize = 8;
const VALUE_BYTES: usize = 100;

#[path = "../tests/common/raw_grpc.rs"]
mod raw_grpc;
use raw_grpc::RawCodec;

fn key(i: usize) -> Bytes {
    Bytes::from(format!("bench/{i:05}"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Server {
    child: Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// CPU time the server process has used (user + system), from /proc.
fn server_cpu(server: &Server) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", server.child.id())).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15 of stat(5), in clock ticks (100 Hz on Linux).
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

fn start_server() -> Server {
    let bin = std::env::var("TERN_BIN").unwrap_or_else(|_| "target/release/tern".into());
    let (port, peer) = (free_port(), free_port());
    let dir = std::env::temp_dir().join(format!("tern-watch-bench-{port}"));
    let client = format!("http://127.0.0.1:{port}");
    let peer = format!("http://127.0.0.1:{peer}");
    let child = Command::new(bin)
        .args(["--name", "bench", "--data-dir"])
        .arg(&dir)
        .args([
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
        ])
        .args([
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
        ])
        .args(["--initial-cluster", &format!("bench={peer}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start tern");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "tern did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Server { child, port, dir }
}

async fn connect(port: u16, small_window: bool) -> Channel {
    let mut e = Endpoint::from_shared(format!("http://127.0.0.1:{port}")).unwrap();
    if small_window {
        e = e
            .initial_stream_window_size(65_535)
            .initial_connection_window_size(65_535);
    }
    e.connect().await.expect("connect")
}

/// One put; returns its revision.
async fn put(grpc: &mut tonic::client::Grpc<Channel>, k: Bytes, value: Bytes) -> i64 {
    grpc.ready().await.unwrap();
    let body = Bytes::from(
        pb::PutRequest {
            key: k,
            value,
            ..Default::default()
        }
        .encode_to_vec(),
    );
    let response = grpc
        .unary(
            Request::new(body),
            PathAndQuery::from_static("/etcdserverpb.KV/Put"),
            RawCodec,
        )
        .await
        .unwrap()
        .into_inner();
    pb::PutResponse::decode(response)
        .unwrap()
        .header
        .unwrap()
        .revision
}

/// Per watch id, the (key, revision) of every event a stream's watchers received.
type Received = HashMap<i64, Vec<(Bytes, i64)>>;

/// The 100 watch streams of server B: events counted as they arrive; each stream's reader
/// hands back what it received when told to stop.
struct Watchers {
    events: Arc<AtomicU64>,
    per_stream: Vec<Arc<AtomicU64>>,
    start_slow: Option<tokio::sync::oneshot::Sender<()>>,
    stop: tokio::sync::watch::Sender<bool>,
    readers: Vec<tokio::task::JoinHandle<(usize, Received)>>,
    _requests: Vec<tokio::sync::mpsc::Sender<Bytes>>,
}

/// What watcher `w` of stream `s` watches.
fn watched(s: usize, w: usize, idle: bool) -> Bytes {
    if idle {
        Bytes::from(format!("idle/{s}/{w}"))
    } else {
        key((s * WATCHERS_PER_STREAM + w) % KEYS)
    }
}

/// Opens the watch streams (stream 0 on its own small-window connection is the slow one).
async fn start_watchers(port: u16, idle: bool) -> Watchers {
    let events = Arc::new(AtomicU64::new(0));
    let mut channels = Vec::new();
    for _ in 0..CONNECTIONS {
        channels.push(connect(port, false).await);
    }
    let slow = connect(port, true).await;
    let (start_slow, slow_go) = tokio::sync::oneshot::channel::<()>();
    let mut slow_go = Some(slow_go);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let (mut keep, mut readers, mut per_stream) = (Vec::new(), Vec::new(), Vec::new());
    for s in 0..STREAMS {
        let channel = if s == 0 {
            slow.clone()
        } else {
            channels[s % CONNECTIONS].clone()
        };
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(WATCHERS_PER_STREAM + 1);
        for w in 0..WATCHERS_PER_STREAM {
            let create = pb::WatchRequest {
                request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
                    pb::WatchCreateRequest {
                        key: watched(s, w, idle),
                        ..Default::default()
                    },
                )),
            };
            tx.send(create.encode_to_vec().into()).await.unwrap();
        }
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready().await.unwrap();
        let mut responses = grpc
            .streaming(
                Request::new(tokio_stream::wrappers::ReceiverStream::new(rx)),
                PathAndQuery::from_static("/etcdserverpb.Watch/Watch"),
                RawCodec,
            )
            .await
            .unwrap()
            .into_inner();
        for w in 0..WATCHERS_PER_STREAM {
            let r = pb::WatchResponse::decode(responses.message().await.unwrap().unwrap()).unwrap();
            assert!(r.created && !r.canceled);
            // Ids are allocated per stream from 0, in creation order.
            assert_eq!(r.watch_id, w as i64);
        }
        keep.push(tx);
        let events = events.clone();
        let count = Arc::new(AtomicU64::new(0));
        per_stream.push(count.clone());
        // The slow consumer waits, never reading, until the writes are done.
        let go = if s == 0 { slow_go.take() } else { None };
        let mut stopped = stopped.clone();
        readers.push(tokio::spawn(async move {
            if let Some(go) = go {
                let _ = go.await;
            }
            let mut received = Received::new();
            loop {
                let message = tokio::select! {
                    m = responses.message() => m,
                    _ = stopped.changed() => break,
                };
                let message = match message {
                    Ok(Some(message)) => message,
                    Ok(None) => panic!("stream {s} ended"),
                    Err(status) => panic!("stream {s} failed: {status:?}"),
                };
                let r = pb::WatchResponse::decode(message).unwrap();
                assert!(!r.canceled, "stream {s}: {r:?}");
                let list = received.entry(r.watch_id).or_default();
                for e in &r.events {
                    let kv = e.kv.as_ref().unwrap();
                    list.push((kv.key.clone(), kv.mod_revision));
                }
                events.fetch_add(r.events.len() as u64, Ordering::Relaxed);
                count.fetch_add(r.events.len() as u64, Ordering::Relaxed);
            }
            (s, received)
        }));
    }
    Watchers {
        events,
        per_stream,
        start_slow: Some(start_slow),
        stop,
        readers,
        _requests: keep,
    }
}

/// Checks that every watcher received exactly the events of the puts to its key in
/// `written` (revision → key index), in revision order; lets the slow consumer read
/// first and waits (bounded) for the stragglers. Returns the events checked.
async fn verify(mut watchers: Watchers, written: &BTreeMap<i64, usize>, idle: bool) -> u64 {
    let mut per_key: HashMap<Bytes, Vec<i64>> = HashMap::new();
    if !idle {
        for (revision, k) in written {
            per_key.entry(key(*k)).or_default().push(*revision);
        }
    }
    let expected: Vec<u64> = (0..STREAMS)
        .map(|s| {
            (0..WATCHERS_PER_STREAM)
                .map(|w| per_key.get(&watched(s, w, idle)).map_or(0, Vec::len) as u64)
                .sum()
        })
        .collect();
    let _ = watchers.start_slow.take().unwrap().send(());
    let deadline = Instant::now()
        + Duration::from_secs(if std::env::var("DEBUG_MISSING").is_ok() {
            10
        } else {
            60
        });
    while (0..STREAMS).any(|s| watchers.per_stream[s].load(Ordering::Relaxed) < expected[s]) {
        if Instant::now() >= deadline && std::env::var("DEBUG_MISSING").is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "events missing after 60 s: {:?}",
            (0..STREAMS)
                .filter(|&s| watchers.per_stream[s].load(Ordering::Relaxed) < expected[s])
                .map(|s| (
                    s,
                    watchers.per_stream[s].load(Ordering::Relaxed),
                    expected[s]
                ))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Anything beyond what was written would show up as a mismatch below.
    tokio::time::sleep(Duration::from_millis(200)).await;
    watchers.stop.send(true).unwrap();
    let mut checked = 0;
    for reader in watchers.readers.drain(..) {
        let (s, mut received) = reader.await.unwrap();
        for w in 0..WATCHERS_PER_STREAM {
            let k = watched(s, w, idle);
            let got = received.remove(&(w as i64)).unwrap_or_default();
            let want: Vec<(Bytes, i64)> = per_key.get(&k).map_or(Vec::new(), |revs| {
                revs.iter().map(|r| (k.clone(), *r)).collect()
            });
            if std::env::var("DEBUG_MISSING").is_ok() && got != want {
                let last = got.last().map(|e| e.1);
                let missing: Vec<i64> = want
                    .iter()
                    .filter(|e| !got.contains(e))
                    .map(|e| e.1)
                    .collect();
                println!(
                    "stream {s} watcher {w}: got {} want {} last got {last:?} missing {missing:?}",
                    got.len(),
                    want.len()
                );
                continue;
            }
            assert_eq!(got.len(), want.len(), "stream {s} watcher {w}: event count");
            assert_eq!(got, want, "stream {s} watcher {w}: events or their order");
            checked += got.len() as u64;
        }
        assert!(
            received.is_empty(),
            "stream {s}: events for unknown watch ids"
        );
    }
    checked
}

/// The write load's connections to one server.
struct Writers {
    channels: Vec<Channel>,
    /// Revision → key index of every put made while `record` was set.
    written: BTreeMap<i64, usize>,
}

impl Writers {
    async fn connect(port: u16) -> Writers {
        let mut channels = Vec::new();
        for _ in 0..CONNECTIONS {
            channels.push(connect(port, false).await);
        }
        Writers {
            channels,
            written: BTreeMap::new(),
        }
    }

    /// Runs `writers` put loops for `duration`; returns puts per second.
    async fn run(&mut self, duration: Duration, writers: usize, record: bool) -> f64 {
        let stop = Instant::now() + duration;
        let started = Instant::now();
        let mut tasks = Vec::new();
        for w in 0..writers {
            let mut grpc = tonic::client::Grpc::new(self.channels[w % CONNECTIONS].clone());
            tasks.push(tokio::spawn(async move {
                let value = Bytes::from(vec![b'v'; VALUE_BYTES]);
                let mut done = Vec::new();
                let mut i = w;
                while Instant::now() < stop {
                    let k = (i * 7919) % KEYS;
                    done.push((put(&mut grpc, key(k), value.clone()).await, k));
                    i += writers;
                }
                done
            }));
        }
        let mut puts = 0;
        for t in tasks {
            let done = t.await.unwrap();
            puts += done.len();
            if record {
                for (revision, k) in done {
                    assert!(self.written.insert(revision, k).is_none());
                }
            }
        }
        puts as f64 / started.elapsed().as_secs_f64()
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let seconds: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10);
    let writers: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(64);
    let idle = args.get(3).is_some_and(|m| m == "idle");
    let rounds: usize = args.get(4).and_then(|a| a.parse().ok()).unwrap_or(3);
    let slice = Duration::from_secs(1);

    let (mut without, mut with, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    // Server CPU microseconds per put: the server's own cost, apart from the client's,
    // which shares this machine.
    let (mut cpu_without, mut cpu_with) = (Vec::new(), Vec::new());
    let mut checked = 0;
    for _ in 0..rounds {
        let (server_a, server_b) = (start_server(), start_server());
        let mut load_a = Writers::connect(server_a.port).await;
        let mut load_b = Writers::connect(server_b.port).await;
        // Warm up (connection setup, allocator), then watch B and measure.
        load_a.run(slice, writers, false).await;
        load_b.run(slice, writers, false).await;
        let watchers = start_watchers(server_b.port, idle).await;
        let before = watchers.events.load(Ordering::Relaxed);
        let (mut rate_a, mut rate_b) = (0.0, 0.0);
        let (mut cpu_a, mut cpu_b) = (Duration::ZERO, Duration::ZERO);
        for i in 0..seconds {
            for b_turn in [i % 2 == 1, i % 2 == 0] {
                let (server, load) = if b_turn {
                    (&server_b, &mut load_b)
                } else {
                    (&server_a, &mut load_a)
                };
                let cpu = server_cpu(server);
                let rate = load.run(slice, writers, b_turn).await;
                let used = server_cpu(server) - cpu;
                if b_turn {
                    (rate_b, cpu_b) = (rate_b + rate, cpu_b + used);
                } else {
                    (rate_a, cpu_a) = (rate_a + rate, cpu_a + used);
                }
            }
        }
        let delivered = watchers.events.load(Ordering::Relaxed) - before;
        let (rate_a, rate_b) = (rate_a / seconds as f64, rate_b / seconds as f64);
        cpu_without.push(cpu_a.as_micros() as f64 / (rate_a * seconds as f64));
        cpu_with.push(cpu_b.as_micros() as f64 / (rate_b * seconds as f64));
        println!(
            "round: without {rate_a:.0} with {rate_b:.0} puts/s, ratio {:.3}; events delivered live to the 99 reading streams: {delivered}",
            rate_b / rate_a
        );
        without.push(rate_a);
        with.push(rate_b);
        ratios.push(rate_b / rate_a);
        checked += verify(watchers, &load_b.written, idle).await;
        drop((server_a, server_b));
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    println!("rounds: without {without:.0?} with {with:.0?} ratios {ratios:.3?}");
    let (without, with) = (median(&mut without), median(&mut with));
    let (cpu_without, cpu_with) = (median(&mut cpu_without), median(&mut cpu_with));
    println!("median server CPU us/put: without {cpu_without:.1}, with {cpu_with:.1}");
    let mode = if idle { "idle" } else { "match" };
    println!("mode={mode} writers={writers} seconds={seconds} value_bytes={VALUE_BYTES}");
    println!("median puts/s without watchers: {without:.0}");
    println!(
        "median puts/s with {} watchers on {STREAMS} streams (1 slow): {with:.0}",
        STREAMS * WATCHERS_PER_STREAM
    );
    println!("every watcher saw every event of its key, in order: {checked} events checked");
    println!("median ratio with/without: {:.3}", median(&mut ratios));
}
