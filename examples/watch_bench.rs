//! Write throughput with and without watchers, measured in one run against fresh tern
//! servers: phase A writes with no watchers; phase B writes the same load while 10,000
//! watchers on 100 streams (one a slow consumer that never reads) watch the written keys.
//! Prints puts/s of both and their ratio. Mode `match` (default): every put matches one
//! watcher, so each write also costs one event delivery; mode `idle`: the watchers watch
//! keys nobody writes, which isolates what the watch machinery costs the write path.
//!
//! cargo build --release && cargo run --release --example watch_bench -- [seconds] [writers] [match|idle] [rounds]
//! (TERN_BIN overrides the server binary, default target/release/tern.)

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

async fn put(grpc: &mut tonic::client::Grpc<Channel>, k: Bytes, value: Bytes) {
    grpc.ready().await.unwrap();
    let body = Bytes::from(
        pb::PutRequest {
            key: k,
            value,
            ..Default::default()
        }
        .encode_to_vec(),
    );
    grpc.unary(
        Request::new(body),
        PathAndQuery::from_static("/etcdserverpb.KV/Put"),
        RawCodec,
    )
    .await
    .unwrap();
}

/// Opens the watch streams; returns the event counter the readers bump.
async fn start_watchers(
    port: u16,
    idle: bool,
) -> (Arc<AtomicU64>, Vec<tokio::sync::mpsc::Sender<Bytes>>) {
    let events = Arc::new(AtomicU64::new(0));
    let mut channels = Vec::new();
    for _ in 0..CONNECTIONS {
        channels.push(connect(port, false).await);
    }
    let slow = connect(port, true).await;
    let mut keep = Vec::new();
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
                        key: if idle {
                            Bytes::from(format!("idle/{s}/{w}"))
                        } else {
                            key((s * WATCHERS_PER_STREAM + w) % KEYS)
                        },
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
        for _ in 0..WATCHERS_PER_STREAM {
            let r = pb::WatchResponse::decode(responses.message().await.unwrap().unwrap()).unwrap();
            assert!(r.created && !r.canceled);
        }
        keep.push(tx);
        if s == 0 {
            // The slow consumer: keeps its stream open and never reads.
            tokio::spawn(async move {
                let _responses = responses;
                std::future::pending::<()>().await
            });
            continue;
        }
        let events = events.clone();
        tokio::spawn(async move {
            while let Ok(Some(message)) = responses.message().await {
                let r = pb::WatchResponse::decode(message).unwrap();
                events.fetch_add(r.events.len() as u64, Ordering::Relaxed);
            }
        });
    }
    (events, keep)
}

/// Runs `writers` put loops for `seconds`; returns puts per second.
async fn write_load(port: u16, seconds: u64, writers: usize) -> f64 {
    let mut channels = Vec::new();
    for _ in 0..CONNECTIONS {
        channels.push(connect(port, false).await);
    }
    let done = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let mut grpc = tonic::client::Grpc::new(channels[w % CONNECTIONS].clone());
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let value = Bytes::from(vec![b'v'; VALUE_BYTES]);
            let mut i = w;
            while Instant::now() < stop {
                put(&mut grpc, key((i * 7919) % KEYS), value.clone()).await;
                done.fetch_add(1, Ordering::Relaxed);
                i += writers;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let seconds: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10);
    let writers: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(64);
    let idle = args.get(3).is_some_and(|m| m == "idle");

    // The machine is shared: alternate the two phases and compare medians.
    let rounds: usize = args.get(4).and_then(|a| a.parse().ok()).unwrap_or(3);
    let (mut without, mut with, mut delivered) = (Vec::new(), Vec::new(), 0);
    // Server CPU microseconds per put, per phase: the server's own cost, apart from the
    // client's, which shares this machine.
    let (mut cpu_without, mut cpu_with) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let server = start_server();
        // Warm up (connection setup, allocator), then measure.
        write_load(server.port, 1, writers).await;
        let cpu = server_cpu(&server);
        let rate = write_load(server.port, seconds, writers).await;
        let puts = rate * seconds as f64;
        cpu_without.push((server_cpu(&server) - cpu).as_micros() as f64 / puts);
        without.push(rate);
        drop(server);

        let server = start_server();
        write_load(server.port, 1, writers).await;
        let (events, keep) = start_watchers(server.port, idle).await;
        let before = events.load(Ordering::Relaxed);
        let cpu = server_cpu(&server);
        let rate = write_load(server.port, seconds, writers).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let puts = rate * seconds as f64;
        cpu_with.push((server_cpu(&server) - cpu).as_micros() as f64 / puts);
        with.push(rate);
        delivered = events.load(Ordering::Relaxed) - before;
        drop(keep);
        drop(server);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    println!("rounds: without {without:.0?} with {with:.0?}");
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
    println!("events delivered to the 99 reading streams (last round): {delivered}");
    println!("ratio with/without: {:.3}", with / without);
}
