//! watch, watch-latency and watch-get: etcd's `tools/benchmark/cmd/{watch,watch_latency,
//! watch_get}.go`.
//!
//! A "stream" is one gRPC Watch call carrying many watchers (as one clientv3 `Watcher`
//! does); stream `i` rides on client `i mod clients`. As in clientv3, creates on one
//! stream are serialised: a watcher counts as created when its `created` response
//! arrives. Each stream has one reader task that owns the stream's receive side.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use rand::Rng;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use super::Worker;
use crate::client::{create_clients, status_text, BoxError, Client};
use crate::proto::etcdserverpb::{
    kv_client::KvClient, watch_request, PutRequest, RangeRequest, WatchCreateRequest, WatchRequest,
    WatchResponse,
};
use crate::report::{Recorder, Report};
use crate::util::{put_varint, random_bytes, Limiter, Progress};
use crate::{Global, Output};

/// Requests queued on one watch stream before the sender waits.
const WATCH_REQUESTS_MAX: usize = 1024;

/// The two halves of one gRPC Watch stream.
struct WatchStream {
    tx: mpsc::Sender<WatchRequest>,
    responses: Streaming<WatchResponse>,
}

fn create_request(create: WatchCreateRequest) -> WatchRequest {
    WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(create)),
    }
}

impl WatchStream {
    /// Opens the stream with `first` already queued: servers (etcd included) send the
    /// response headers only with the first response, so the call cannot be awaited empty.
    async fn open(client: &Client, first: WatchCreateRequest) -> Result<WatchStream, String> {
        let (tx, rx) = mpsc::channel(WATCH_REQUESTS_MAX);
        tx.send(create_request(first))
            .await
            .map_err(|_| "watch stream closed".to_string())?;
        let responses = client
            .watch()
            .watch(client.request(ReceiverStream::new(rx)))
            .await
            .map_err(|s| status_text(&s))?
            .into_inner();
        Ok(WatchStream { tx, responses })
    }

    /// Reads until the `created` response of the pending create; returns its watch id.
    async fn await_created(&mut self) -> Result<i64, String> {
        loop {
            let response = self
                .responses
                .message()
                .await
                .map_err(|s| status_text(&s))?
                .ok_or_else(|| "watch stream closed by the server".to_string())?;
            if response.canceled {
                return Err(format!("watch canceled: {}", response.cancel_reason));
            }
            if response.created {
                return Ok(response.watch_id);
            }
        }
    }

    async fn create(&mut self, create: WatchCreateRequest) -> Result<i64, String> {
        self.tx
            .send(create_request(create))
            .await
            .map_err(|_| "watch stream closed".to_string())?;
        self.await_created().await
    }
}

/// Opens a stream and creates `watchers` watches on it one after another, recording each
/// creation's latency; returns the stream and the watch ids in creation order.
async fn make_watches(
    client: &Client,
    creates: Vec<WatchCreateRequest>,
    rec: &mut Recorder,
    done: &AtomicU64,
) -> Result<(WatchStream, Vec<i64>), String> {
    let mut creates = creates.into_iter();
    let first = creates.next().ok_or("no watchers for the stream")?;
    let started = Instant::now();
    let mut stream = WatchStream::open(client, first).await?;
    let mut ids = vec![stream.await_created().await?];
    rec.record(started.elapsed());
    done.fetch_add(1, Ordering::Relaxed);
    for create in creates {
        let started = Instant::now();
        ids.push(stream.create(create).await?);
        rec.record(started.elapsed());
        done.fetch_add(1, Ordering::Relaxed);
    }
    Ok((stream, ids))
}

#[derive(clap::Args)]
pub struct WatchArgs {
    /// Total watch streams
    #[arg(long, default_value_t = 10)]
    streams: usize,
    /// Total watchers per stream
    #[arg(long, default_value_t = 100)]
    watch_per_stream: usize,
    /// Total number of keys to be watched
    #[arg(long, default_value_t = 1)]
    watched_key_total: usize,
    /// Number of keys to put per second
    #[arg(long, default_value_t = 0)]
    put_rate: u64,
    /// Number of put requests
    #[arg(long, default_value_t = 1000)]
    put_total: u64,
    /// Key size of watch request
    #[arg(long, default_value_t = 32)]
    key_size: usize,
    /// Maximum possible keys
    #[arg(long, default_value_t = 1)]
    key_space_size: i64,
    /// Use sequential keys
    #[arg(long)]
    sequential_keys: bool,
}

struct WatchPutWorker {
    client: Client,
    kv: KvClient<crate::channel::H2Channel>,
    watched: Arc<Vec<Bytes>>,
}

impl Worker for WatchPutWorker {
    async fn call(&mut self, op_number: u64) -> (usize, Result<(), String>) {
        let key = self.watched[op_number as usize % self.watched.len()].clone();
        let request = self.client.request(PutRequest {
            key,
            value: Bytes::from_static(b"data"),
            ..Default::default()
        });
        (
            0,
            self.kv
                .put(request)
                .await
                .map(drop)
                .map_err(|s| status_text(&s)),
        )
    }
}

pub async fn watch(args: WatchArgs, global: &Global, out: &mut Output) -> Result<(), BoxError> {
    if args.key_space_size <= 0 {
        return Err(format!(
            "expected positive --key-space-size, got ({})",
            args.key_space_size
        )
        .into());
    }
    if args.streams == 0 || args.watch_per_stream == 0 || args.watched_key_total == 0 {
        return Err(
            "--streams, --watch-per-stream and --watched-key-total must be positive".into(),
        );
    }
    let grpc_conns = global.clients.min(global.conns);
    let wanted_conns = 1 + args.streams / 100;
    if grpc_conns < wanted_conns {
        eprintln!("warning: grpc limits 100 streams per client connection, have {grpc_conns} but need {wanted_conns}");
    }
    let clients = create_clients(global, global.clients, global.conns).await?;

    // The watched keys, as etcd's newWatchedKeys builds them.
    let mut rng = rand::rng();
    let mut watched = Vec::with_capacity(args.watched_key_total);
    for i in 0..args.watched_key_total {
        let mut key = vec![0u8; args.key_size];
        let n = if args.sequential_keys {
            i as i64 % args.key_space_size
        } else {
            rng.random_range(0..args.key_space_size)
        };
        put_varint(&mut key, n)?;
        watched.push(Bytes::from(key));
    }
    let watched = Arc::new(watched);

    // Watch creation: watcher j of the whole run watches watched[j mod keys].
    let total_watches = args.streams * args.watch_per_stream;
    let mut watchers_per_key: HashMap<Bytes, u64> = HashMap::new();
    let progress = Progress::start(total_watches as u64);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(args.streams);
    for s in 0..args.streams {
        let client = clients[s % clients.len()].clone();
        let creates: Vec<WatchCreateRequest> = (0..args.watch_per_stream)
            .map(|w| {
                let key = watched[(w * args.streams + s) % watched.len()].clone();
                *watchers_per_key.entry(key.clone()).or_insert(0) += 1;
                WatchCreateRequest {
                    key,
                    ..Default::default()
                }
            })
            .collect();
        let done = progress.counter();
        tasks.push(tokio::spawn(async move {
            let mut rec = Recorder::default();
            let made = make_watches(&client, creates, &mut rec, &done).await;
            (rec, made)
        }));
    }
    let mut rec = Recorder::default();
    let mut streams = Vec::with_capacity(args.streams);
    for task in tasks {
        let (r, made) = task.await?;
        rec.merge(r);
        streams.push(made.map_err(|e| format!("watch create: {e}"))?.0);
    }
    progress.finish();
    out.report(
        "Watch creation summary:\n",
        Report::new("watch-make", started.elapsed(), rec),
        "",
    );

    // Puts, and the events they fan out to the watchers.
    let events_total: u64 = (0..args.put_total)
        .map(|i| watchers_per_key[&watched[i as usize % watched.len()]])
        .sum();
    let remaining = Arc::new(AtomicI64::new(events_total as i64));
    let (done_tx, done_rx) = tokio::sync::watch::channel(events_total == 0);
    let done_tx = Arc::new(done_tx);
    let progress = Progress::start(events_total);
    let started = Instant::now();
    let mut readers = Vec::with_capacity(streams.len());
    for stream in streams {
        let remaining = remaining.clone();
        let counter = progress.counter();
        let mut done_rx = done_rx.clone();
        let done_tx = done_tx.clone();
        readers.push(tokio::spawn(async move {
            let WatchStream { tx, mut responses } = stream;
            let mut rec = Recorder::default();
            let mut error = None;
            while !*done_rx.borrow() {
                tokio::select! {
                    _ = done_rx.changed() => break,
                    message = responses.message() => match message {
                        Ok(Some(response)) => {
                            let received = Instant::now();
                            for _ in &response.events {
                                rec.record(received.elapsed());
                                counter.fetch_add(1, Ordering::Relaxed);
                                if remaining.fetch_sub(1, Ordering::AcqRel) <= 1 {
                                    let _ = done_tx.send(true);
                                }
                            }
                        }
                        Ok(None) => { error = Some("watch stream closed by the server".to_string()); break }
                        Err(s) => { error = Some(status_text(&s)); break }
                    }
                }
            }
            drop(tx);
            (rec, error)
        }));
    }
    let workers: Vec<WatchPutWorker> = clients
        .iter()
        .map(|c| WatchPutWorker {
            client: c.clone(),
            kv: c.kv(),
            watched: watched.clone(),
        })
        .collect();
    let put_reports = closed_loop_quiet(workers, args.put_total, args.put_rate).await?;
    if put_reports.rec.errors_total() > 0 {
        return Err(format!(
            "watch put failed: {}",
            put_reports.text(crate::report::Precision { precise: false })
        )
        .into());
    }
    let mut rec = Recorder::default();
    for reader in readers {
        let (r, error) = reader.await?;
        rec.merge(r);
        if let Some(e) = error {
            // A stream that ended early would leave the run waiting forever; stop it.
            let _ = done_tx.send(true);
            return Err(format!("watch: {e}").into());
        }
    }
    progress.finish();
    out.report(
        "Watch events received summary:\n",
        Report::new("watch-put", started.elapsed(), rec),
        "",
    );
    Ok(())
}

/// The put load of `watch`: the closed-loop driver without a progress bar of its own
/// (the bar shows events received, as in etcd's tool).
async fn closed_loop_quiet(
    workers: Vec<WatchPutWorker>,
    total: u64,
    rate: u64,
) -> Result<Report, BoxError> {
    // The driver's bar goes to stderr too; hide it by running under a hidden draw target.
    let mut reports = super::closed_loop_hidden(workers, total, rate, &["watch-put-load"]).await?;
    Ok(reports.remove(0))
}

#[derive(clap::Args)]
pub struct WatchLatencyArgs {
    /// Total watch streams
    #[arg(long, default_value_t = 10)]
    streams: usize,
    /// Total watchers per stream
    #[arg(long, default_value_t = 10)]
    watchers_per_stream: usize,
    /// PrevKV enabled on watch requests
    #[arg(long)]
    prevkv: bool,
    /// Total number of put requests
    #[arg(long, default_value_t = 1000)]
    put_total: usize,
    /// Number of keys to put per second
    #[arg(long, default_value_t = 100)]
    put_rate: u64,
    /// Key size of watch response
    #[arg(long, default_value_t = 32)]
    key_size: usize,
    /// Value size of watch response
    #[arg(long, default_value_t = 32)]
    val_size: usize,
}

pub async fn watch_latency(
    args: WatchLatencyArgs,
    global: &Global,
    out: &mut Output,
) -> Result<(), BoxError> {
    if args.streams == 0 || args.watchers_per_stream == 0 {
        return Err("--streams and --watchers-per-stream must be positive".into());
    }
    let key = Bytes::from(random_bytes(args.key_size));
    let value = Bytes::from(random_bytes(args.val_size));
    let clients = create_clients(global, global.clients, global.conns).await?;
    let mut streams = Vec::with_capacity(args.streams);
    let ignored = AtomicU64::new(0);
    for s in 0..args.streams {
        let creates = (0..args.watchers_per_stream)
            .map(|_| WatchCreateRequest {
                key: key.clone(),
                prev_kv: args.prevkv,
                ..Default::default()
            })
            .collect();
        let (stream, ids) = make_watches(
            &clients[s % clients.len()],
            creates,
            &mut Recorder::default(),
            &ignored,
        )
        .await
        .map_err(|e| format!("watch create: {e}"))?;
        streams.push((stream, ids));
    }
    let put_client = create_clients(global, 1, 1).await?.remove(0);
    let put_total = args.put_total;
    let progress = Progress::start((put_total * args.streams * args.watchers_per_stream) as u64);

    // One reader per stream notes when each of its watchers sees each event.
    let mut readers = Vec::with_capacity(streams.len());
    for (stream, ids) in streams {
        let counter = progress.counter();
        readers.push(tokio::spawn(async move {
            let WatchStream { tx, mut responses } = stream;
            let slot: HashMap<i64, usize> =
                ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
            let mut event_times: Vec<Vec<Instant>> =
                ids.iter().map(|_| Vec::with_capacity(put_total)).collect();
            let mut pending = ids.len();
            while pending > 0 {
                let response = match responses.message().await {
                    Ok(Some(r)) => r,
                    Ok(None) => return Err("watch stream closed by the server".to_string()),
                    Err(s) => return Err(status_text(&s)),
                };
                let now = Instant::now();
                let Some(&w) = slot.get(&response.watch_id) else {
                    continue;
                };
                for _ in &response.events {
                    if event_times[w].len() < put_total {
                        event_times[w].push(now);
                        counter.fetch_add(1, Ordering::Relaxed);
                        if event_times[w].len() == put_total {
                            pending -= 1;
                        }
                    }
                }
            }
            drop(tx);
            Ok(event_times)
        }));
    }

    let limiter = Limiter::new(args.put_rate, args.put_rate);
    let mut kv = put_client.kv();
    let mut put_rec = Recorder::default();
    let mut put_times = Vec::with_capacity(put_total);
    let started = Instant::now();
    for _ in 0..put_total {
        limiter.wait().await;
        let t0 = Instant::now();
        kv.put(put_client.request(PutRequest {
            key: key.clone(),
            value: value.clone(),
            ..Default::default()
        }))
        .await
        .map_err(|s| {
            format!(
                "Failed to Put for watch latency benchmark: {}",
                status_text(&s)
            )
        })?;
        let t1 = Instant::now();
        put_rec.record(t1 - t0);
        put_times.push(t1);
    }
    let put_elapsed = started.elapsed();
    let mut watch_rec = Recorder::default();
    for reader in readers {
        for times in reader.await?? {
            for (put_end, event_at) in put_times.iter().zip(times) {
                // An event seen before the put's response arrived counts as zero latency.
                watch_rec.record(event_at.saturating_duration_since(*put_end));
            }
        }
    }
    let watch_elapsed = started.elapsed();
    progress.finish();
    out.report(
        "\nPut summary:\n",
        Report::new("watch-latency-put", put_elapsed, put_rec),
        "",
    );
    out.report(
        "\nWatch events summary:\n",
        Report::new("watch-latency-watch", watch_elapsed, watch_rec),
        "",
    );
    Ok(())
}

#[derive(clap::Args)]
pub struct WatchGetArgs {
    /// Total number of watchers
    #[arg(long, default_value_t = 10000)]
    watchers: usize,
    /// Total number of watcher streams
    #[arg(long, default_value_t = 1)]
    streams: usize,
    /// Number of events per watcher
    #[arg(long, default_value_t = 8)]
    events: usize,
}

pub async fn watch_get(
    args: WatchGetArgs,
    global: &Global,
    out: &mut Output,
) -> Result<(), BoxError> {
    if args.streams == 0 || args.watchers == 0 || args.events == 0 {
        return Err("--watchers, --streams and --events must be positive".into());
    }
    let clients = create_clients(global, global.clients, global.conns).await?;
    let get_client = create_clients(global, 1, 1).await?.remove(0);
    let watch_key = Bytes::from_static(b"watchkey");

    // The history the watchers will replay.
    let mut kv = clients[0].kv();
    let mut watch_revision = 0;
    for i in 0..args.events {
        let response = kv
            .put(clients[0].request(PutRequest {
                key: watch_key.clone(),
                value: Bytes::from(i.to_string()),
                ..Default::default()
            }))
            .await
            .map_err(|s| status_text(&s))?
            .into_inner();
        if i == 0 {
            watch_revision = response.header.map_or(0, |h| h.revision);
        }
    }

    let progress = Progress::start((args.watchers * args.events) as u64);
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    // Serializable gets of a missing key, back to back, for as long as watchers catch up.
    let getter = tokio::spawn(async move {
        let mut kv = get_client.kv();
        let mut rec = Recorder::default();
        let started = Instant::now();
        loop {
            let t0 = Instant::now();
            let result = tokio::select! {
                _ = stop_rx.changed() => break,
                r = kv.range(get_client.request(RangeRequest {
                    key: Bytes::from_static(b"abc"),
                    serializable: true,
                    ..Default::default()
                })) => r,
            };
            rec.record_result(&result.map_err(|s| status_text(&s)), t0.elapsed());
        }
        Report::new("watch-get", started.elapsed(), rec)
    });

    // Unsynced watchers: each starts at the first put, so the server replays history.
    let mut readers = Vec::with_capacity(args.streams);
    for s in 0..args.streams {
        let watchers = (0..args.watchers).filter(|w| w % args.streams == s).count();
        if watchers == 0 {
            continue;
        }
        let create = WatchCreateRequest {
            key: watch_key.clone(),
            start_revision: watch_revision,
            ..Default::default()
        };
        let client = clients[s % clients.len()].clone();
        let counter = progress.counter();
        let events = args.events;
        readers.push(tokio::spawn(async move {
            let mut stream = WatchStream::open(&client, create.clone()).await?;
            for _ in 1..watchers {
                stream
                    .tx
                    .send(create_request(create.clone()))
                    .await
                    .map_err(|_| "watch stream closed".to_string())?;
            }
            let mut seen: HashMap<i64, usize> = HashMap::new();
            let mut pending = watchers;
            while pending > 0 {
                let response = match stream.responses.message().await {
                    Ok(Some(r)) => r,
                    Ok(None) => return Err("watch stream closed by the server".to_string()),
                    Err(s) => return Err(status_text(&s)),
                };
                if response.events.is_empty() {
                    continue;
                }
                let count = seen.entry(response.watch_id).or_insert(0);
                let before = *count;
                *count += response.events.len();
                counter.fetch_add(response.events.len() as u64, Ordering::Relaxed);
                if before < events && *count >= events {
                    pending -= 1;
                }
            }
            Ok::<(), String>(())
        }));
    }
    let mut failure = None;
    for reader in readers {
        if let Err(e) = reader.await? {
            failure.get_or_insert(e);
        }
    }
    let _ = stop_tx.send(true);
    let report = getter.await?;
    progress.finish();
    if let Some(e) = failure {
        return Err(format!("watch: {e}").into());
    }
    out.report("Get during watch summary:\n", report, "");
    Ok(())
}
