//! Write throughput with and without watchers, measured against fresh tern servers: server
//! A has no watchers; server B has 10,000 watchers on 100 streams (one a slow consumer
//! that reads nothing until the writes are done) watching the written keys. The same put
//! load goes to A and B in alternating one-second slices (A first in even slices, B
//! first in odd ones), so that a shared machine's changing background load falls on both
//! alike. Prints puts/s of both, their ratio per round and overall, the CPU per put of
//! the server and of this client (which shares the machine), and the watcher thread's
//! CPU and socket reads per event. Mode `match` (default): every put matches one
//! watcher, so each write also costs one event delivery; mode `idle`: the watchers watch
//! keys nobody writes, which isolates what the watch machinery costs the write path.
//!
//! It also checks delivery: after the writes, the slow consumer starts reading, and every
//! watcher must have received exactly the events of the puts to its key during the
//! measured slices, in revision order, each in a response whose header revision is not
//! below it (the run fails otherwise).
//!
//! Why the watcher side is hand-rolled: in this harness the watchers run on the same
//! (small) machine as the server, so every microsecond they spend receiving an event is
//! taken from the server's write throughput, which is what is being measured; in a
//! deployment the watchers are other machines' work. Through tonic + h2 + prost the
//! watcher side cost 3-4 us per event, as much as the server's own delivery cost. So the
//! watch streams use a minimal HTTP/2 reader (`raw_h2.rs`) and a protobuf walk that
//! keeps only what the delivery check needs (`lean.rs`), on a thread of their own whose
//! CPU is reported apart. (The put load still goes through tonic: it is the same for A
//! and B.) What remains per event is mostly the kernel's: a socket read and wake-up per
//! few events, as the server sends them.
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
/// Connections of the put load, and of the 99 reading watch streams (the slow one has its
/// own). The server's network cores accept from one shared listening socket, so a
/// connection goes to whichever core accepts first and how the load falls on the cores can
/// vary from server to server: one reason single rounds vary on a small machine.
const WRITE_CONNECTIONS: usize = 8;
const WATCH_CONNECTIONS: usize = 8;
const VALUE_BYTES: usize = 100;
/// HTTP/2 windows (connection and each stream) of the watch connections: hyper's client
/// default for streams; the slow consumer's connection keeps the protocol's initial 64 KiB
/// so that it stops the server's sending soon.
const WINDOW_BYTES: u32 = 2 << 20;
const SLOW_WINDOW_BYTES: u32 = 65_535;

mod lean;
mod raw_h2;

#[path = "../../tests/common/raw_grpc.rs"]
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
    process_cpu(server.child.id())
}

/// CPU time process `pid` has used (user + system), from /proc.
fn process_cpu(pid: u32) -> Duration {
    stat_cpu(&format!("/proc/{pid}/stat"))
}

/// CPU time (user + system) in a /proc `stat` file of a process or thread.
fn stat_cpu(path: &str) -> Duration {
    let stat = std::fs::read_to_string(path).unwrap();
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

/// The 100 watch streams of server B, on a thread of their own (a single-threaded tokio
/// runtime): events counted as they arrive; each stream's reader hands back what it
/// received when told to stop. Their own thread so that their CPU time can be read apart
/// from the put load's (and they do not steal the put load's runtime workers).
struct Watchers {
    per_stream: Vec<Arc<AtomicU64>>,
    start_slow: Option<tokio::sync::oneshot::Sender<()>>,
    stop: tokio::sync::watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<Vec<raw_h2::StreamResult>>>,
    /// /proc schedstat file of the watcher thread.
    stat_path: String,
}

/// What watcher `w` of stream `s` watches.
fn watched(s: usize, w: usize, idle: bool) -> Bytes {
    if idle {
        Bytes::from(format!("idle/{s}/{w}"))
    } else {
        key((s * WATCHERS_PER_STREAM + w) % KEYS)
    }
}

impl Watchers {
    /// CPU time the watcher thread has used (schedstat's first field: nanoseconds on CPU,
    /// exact where stat's clock ticks are 10 ms).
    fn cpu(&self) -> Duration {
        let stat = std::fs::read_to_string(&self.stat_path).unwrap_or_default();
        let ns = stat.split_whitespace().next().and_then(|n| n.parse().ok());
        Duration::from_nanos(ns.unwrap_or(0))
    }

    /// Events received so far, all streams together.
    fn events(&self) -> u64 {
        self.per_stream
            .iter()
            .map(|count| count.load(Ordering::Relaxed))
            .sum()
    }
}

/// Starts the watcher thread and waits until all watchers are created.
fn start_watchers(port: u16, idle: bool) -> Watchers {
    let (start_slow, slow_go) = tokio::sync::oneshot::channel::<()>();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let (opened, ready) = std::sync::mpsc::channel();
    let per_stream: Vec<Arc<AtomicU64>> = (0..STREAMS).map(|_| Arc::default()).collect();
    // Stream 0, the slow consumer, has a connection of its own with the smallest
    // windows; the others share `WATCH_CONNECTIONS` connections.
    let mut connections: Vec<Vec<raw_h2::StreamSpec>> =
        (0..=WATCH_CONNECTIONS).map(|_| Vec::new()).collect();
    for (s, count) in per_stream.iter().enumerate() {
        let keys: Vec<Bytes> = (0..WATCHERS_PER_STREAM)
            .map(|w| watched(s, w, idle))
            .collect();
        let creates = keys
            .iter()
            .map(|key| {
                let create = pb::WatchRequest {
                    request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
                        pb::WatchCreateRequest {
                            key: key.clone(),
                            ..Default::default()
                        },
                    )),
                };
                Bytes::from(create.encode_to_vec())
            })
            .collect();
        let connection = if s == 0 { 0 } else { 1 + s % WATCH_CONNECTIONS };
        connections[connection].push(raw_h2::StreamSpec {
            index: s,
            creates,
            keys,
            count: count.clone(),
        });
    }
    let thread = std::thread::Builder::new()
        .name("watchers".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let mut slow_go = Some(slow_go);
                let (mut readers, mut all_created) = (Vec::new(), Vec::new());
                for (c, streams) in connections.into_iter().enumerate() {
                    let (created, on_created) = tokio::sync::oneshot::channel();
                    all_created.push(on_created);
                    let (window, go) = if c == 0 {
                        (SLOW_WINDOW_BYTES, slow_go.take())
                    } else {
                        (WINDOW_BYTES, None)
                    };
                    readers.push(tokio::spawn(raw_h2::run_connection(
                        port,
                        window,
                        streams,
                        created,
                        go,
                        stopped.clone(),
                    )));
                }
                for on_created in all_created {
                    // A connection that failed reports it in its results.
                    let _ = on_created.await;
                }
                // "/proc/thread-self" is "/proc/<pid>/task/<tid>".
                let thread_self = std::fs::read_link("/proc/thread-self").unwrap();
                opened
                    .send(format!("/proc/{}/schedstat", thread_self.display()))
                    .unwrap();
                let mut results = Vec::new();
                for reader in readers {
                    results.extend(reader.await.unwrap());
                }
                results
            })
        })
        .unwrap();
    let stat_path = ready.recv().expect("watcher thread failed");
    Watchers {
        per_stream,
        start_slow: Some(start_slow),
        stop,
        thread: Some(thread),
        stat_path,
    }
}

/// Checks that every watcher received exactly the events of the puts to its key in
/// `written` (revision → key index), in revision order; lets the slow consumer read
/// first and waits (bounded) for the stragglers. Returns the events checked and what
/// went wrong (empty when all is well).
async fn verify(
    mut watchers: Watchers,
    written: &BTreeMap<i64, usize>,
    idle: bool,
) -> (u64, Vec<String>) {
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
    let deadline = Instant::now() + Duration::from_secs(60);
    let behind =
        |w: &Watchers| (0..STREAMS).any(|s| w.per_stream[s].load(Ordering::Relaxed) < expected[s]);
    while behind(&watchers) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Anything beyond what was written would show up as a mismatch below.
    tokio::time::sleep(Duration::from_millis(200)).await;
    watchers.stop.send(true).unwrap();
    let (mut checked, mut failures) = (0, Vec::new());
    let thread = watchers.thread.take().unwrap();
    let results = tokio::task::spawn_blocking(move || thread.join().unwrap())
        .await
        .unwrap();
    for (s, received, failure) in results {
        if let Some(failure) = failure {
            failures.push(format!("stream {s}: {failure}"));
        }
        for (w, got) in received.iter().enumerate() {
            let want = per_key
                .get(&watched(s, w, idle))
                .map_or(&[][..], Vec::as_slice);
            if got[..] != want[..] {
                let missing = want.iter().filter(|r| !got.contains(r)).count();
                failures.push(format!(
                    "stream {s} watcher {w}: got {} events, want {} ({missing} missing; last got {:?})",
                    got.len(),
                    want.len(),
                    got.last()
                ));
            }
            checked += got.len() as u64;
        }
    }
    (checked, failures)
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
        for _ in 0..WRITE_CONNECTIONS {
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
            let mut grpc = tonic::client::Grpc::new(self.channels[w % WRITE_CONNECTIONS].clone());
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
    let (mut checked, mut failures) = (0, Vec::new());
    for _ in 0..rounds {
        let (server_a, server_b) = (start_server(), start_server());
        let mut load_a = Writers::connect(server_a.port).await;
        let mut load_b = Writers::connect(server_b.port).await;
        // Warm up (connection setup, allocator), then watch B and measure.
        load_a.run(slice, writers, false).await;
        load_b.run(slice, writers, false).await;
        let watchers = start_watchers(server_b.port, idle);
        let before = watchers.events();
        let (mut rate_a, mut rate_b) = (0.0, 0.0);
        let (mut cpu_a, mut cpu_b) = (Duration::ZERO, Duration::ZERO);
        let (mut client_a, mut client_b) = (Duration::ZERO, Duration::ZERO);
        // The watcher thread's CPU and the events it received during B's slices.
        let (mut watcher_cpu, mut watcher_events, mut watcher_reads) = (Duration::ZERO, 0, 0);
        for i in 0..seconds {
            for b_turn in [i % 2 == 1, i % 2 == 0] {
                let (server, load) = if b_turn {
                    (&server_b, &mut load_b)
                } else {
                    (&server_a, &mut load_a)
                };
                let (cpu, client) = (server_cpu(server), process_cpu(std::process::id()));
                let (watching, events) = (watchers.cpu(), watchers.events());
                let reads = raw_h2::READS.load(Ordering::Relaxed);
                let rate = load.run(slice, writers, b_turn).await;
                let used = server_cpu(server) - cpu;
                let client = process_cpu(std::process::id()) - client;
                if b_turn {
                    (rate_b, cpu_b, client_b) = (rate_b + rate, cpu_b + used, client_b + client);
                    watcher_cpu += watchers.cpu() - watching;
                    watcher_events += watchers.events() - events;
                    watcher_reads += raw_h2::READS.load(Ordering::Relaxed) - reads;
                } else {
                    (rate_a, cpu_a, client_a) = (rate_a + rate, cpu_a + used, client_a + client);
                }
            }
        }
        let delivered = watchers.events() - before;
        let (rate_a, rate_b) = (rate_a / seconds as f64, rate_b / seconds as f64);
        cpu_without.push(cpu_a.as_micros() as f64 / (rate_a * seconds as f64));
        cpu_with.push(cpu_b.as_micros() as f64 / (rate_b * seconds as f64));
        let per_put = |cpu: Duration, rate: f64| cpu.as_micros() as f64 / (rate * seconds as f64);
        let watcher_us_per_event = if watcher_events == 0 {
            0.0
        } else {
            watcher_cpu.as_micros() as f64 / watcher_events as f64
        };
        println!(
            "round: without {rate_a:.0} with {rate_b:.0} puts/s, ratio {:.3}; CPU us/put server {:.1} -> {:.1}, client {:.1} -> {:.1} (watcher thread {watcher_us_per_event:.1} us/event, {:.2} reads/event); events delivered live: {delivered}",
            rate_b / rate_a,
            per_put(cpu_a, rate_a),
            per_put(cpu_b, rate_b),
            per_put(client_a, rate_a),
            per_put(client_b, rate_b),
            watcher_reads as f64 / watcher_events.max(1) as f64,
        );
        without.push(rate_a);
        with.push(rate_b);
        ratios.push(rate_b / rate_a);
        let (round_checked, round_failures) = verify(watchers, &load_b.written, idle).await;
        checked += round_checked;
        failures.extend(round_failures);
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
    println!("median ratio with/without: {:.3}", median(&mut ratios));
    if failures.is_empty() {
        println!(
            "delivery check: every watcher saw every event of its key, in order ({checked} events)"
        );
    } else {
        println!("delivery check FAILED ({} problems):", failures.len());
        for failure in failures.iter().take(20) {
            println!("  {failure}");
        }
        std::process::exit(1);
    }
}
