//! disturb: put latency under a disturbance (tern's own; etcd's tool has no such command).
//!
//! A steady, rate-limited put load runs from `--clients` workers; after `--warmup` the
//! disturbance happens (a command run here, or whatever the caller does between the
//! `--signal-file` handshake's `.start` and `.done` files); the load goes on for `--tail`
//! after it ends, then stops. One report covers the whole run.
//!
//! Invariants:
//! - Open loop without coordinated omission: worker `i` of `C` owns the send times
//!   `t0 + (k * C + i) / rate`, and sends each put at its time whether or not its earlier
//!   puts have been answered, as a pipelining client (kube-apiserver, any gRPC client with
//!   concurrent calls) does, up to `--in-flight-per-client` unanswered puts. A worker at
//!   that bound sends its missed times as soon as it can. Every latency is measured from
//!   the put's intended send time, so a stall of S seconds shows as latencies up to S, not
//!   as one slow put among fewer sent.
//! - A put that takes longer than `PUT_TIMEOUT` counts as an error ("timeout"), and puts
//!   still unsent `DRAIN_TIMEOUT` after the schedule's end count as errors ("not sent"),
//!   so a server that stops answering ends the run within a minute instead of hanging it.
//! - The optional fdatasync probe (`--fsync-probe-dir`) runs on its own OS thread for the
//!   same window: it rewrites one 4 KiB block of a file in that directory and times
//!   `fdatasync`, every `--fsync-probe-interval`, giving the disk's sync latency in the
//!   same minute as the puts.
//! - Besides the report, the slowest put of each second of intended send time is kept, to
//!   show when in the run (before, during or after the disturbance) the stalls fell.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::Rng;
use tokio::task::JoinSet;

use crate::client::{create_clients, status_text, BoxError};
use crate::proto::etcdserverpb::PutRequest;
use crate::report::{Recorder, Report};
use crate::util::{parse_go_duration, put_varint, random_bytes};
use crate::{Global, Output};

/// Longest a single put may take before it counts as an error.
const PUT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long after the end of the schedule the last puts may still be sent and answered;
/// puts still unsent then count as errors ("not sent"), so a stuck server ends the run.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
/// Bytes the fdatasync probe rewrites before each sync (one page).
const PROBE_WRITE_BYTES: usize = 4096;
/// Blocks the probe cycles through, so it does not rewrite one block only.
const PROBE_BLOCKS: u64 = 256;
/// How often a handshake waiter looks for the `.done` file.
const SIGNAL_POLL: Duration = Duration::from_millis(10);

#[derive(clap::Args)]
pub struct DisturbArgs {
    /// Puts per second over all clients (each client sends rate/clients per second)
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Key size of put request
    #[arg(long, default_value_t = 8)]
    key_size: usize,
    /// Value size of put request
    #[arg(long, default_value_t = 256)]
    val_size: usize,
    /// Maximum possible keys (random in [0, this))
    #[arg(long, default_value_t = 10000)]
    key_space_size: i64,
    /// Prefix for keys
    #[arg(long, default_value = "disturb/")]
    prefix: String,
    /// Load before the disturbance starts (Go duration)
    #[arg(long, value_parser = parse_go_duration, default_value = "2s")]
    warmup: Duration,
    /// Load after the disturbance ends (Go duration)
    #[arg(long, value_parser = parse_go_duration, default_value = "2s")]
    tail: Duration,
    /// Longest the disturbance may take before the run fails (Go duration)
    #[arg(long, value_parser = parse_go_duration, default_value = "10m")]
    disturbance_timeout: Duration,
    /// Handshake with a driver instead of running a command: after the warmup PATH.start
    /// is created, and the disturbance lasts until PATH.done exists
    #[arg(long)]
    signal_file: Option<PathBuf>,
    /// Directory (on the disk under test) for the fdatasync probe's file
    #[arg(long)]
    fsync_probe_dir: Option<PathBuf>,
    /// Time between two probe fdatasyncs (Go duration)
    #[arg(long, value_parser = parse_go_duration, default_value = "20ms")]
    fsync_probe_interval: Duration,
    /// Most puts one client has sent and not yet seen answered. At 1 a client is
    /// sequential, and one slow fdatasync becomes a backlog that drains one put per round
    /// trip, which then measures the client's queue more than the server.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..))]
    in_flight_per_client: u64,
    /// The disturbance: a command run after the warmup; the run waits for it to exit
    #[arg(last = true)]
    command: Vec<String>,
}

/// One finished put: when it was meant to be sent, how long after that it was answered.
struct PutOutcome {
    intended_ns: u64,
    latency: Duration,
    result: Result<(), String>,
}

/// What one worker has measured so far.
#[derive(Default)]
struct WorkerTally {
    recorder: Recorder,
    slowest: Slowest,
    slowest_by_second: Vec<Duration>,
}

impl WorkerTally {
    fn record(&mut self, put: PutOutcome) {
        if put.result.is_ok() {
            if put.latency > self.slowest.latency {
                self.slowest = Slowest {
                    latency: put.latency,
                    intended_after_start: Duration::from_nanos(put.intended_ns),
                };
            }
            let second = (put.intended_ns / 1_000_000_000) as usize;
            if self.slowest_by_second.len() <= second {
                self.slowest_by_second.resize(second + 1, Duration::ZERO);
            }
            self.slowest_by_second[second] = self.slowest_by_second[second].max(put.latency);
        }
        self.recorder.record_result(&put.result, put.latency);
    }
}

/// The slowest put seen by one worker, and when it was meant to be sent.
#[derive(Clone, Copy, Default)]
struct Slowest {
    latency: Duration,
    intended_after_start: Duration,
}

pub async fn disturb(args: DisturbArgs, global: &Global, out: &mut Output) -> Result<(), BoxError> {
    if args.rate == 0 {
        return Err("--rate must be positive: the load is rate-limited by design".into());
    }
    if args.key_space_size <= 0 {
        return Err(format!(
            "expected positive --key-space-size, got ({})",
            args.key_space_size
        )
        .into());
    }
    if args.command.is_empty() == args.signal_file.is_none() {
        return Err("give exactly one disturbance: a command after `--`, or --signal-file".into());
    }
    put_varint(&mut vec![0u8; args.key_size], args.key_space_size - 1)?;
    let clients = create_clients(global, global.clients, global.conns).await?;
    let value = Bytes::from(random_bytes(args.val_size));
    let workers = clients.len() as u64;
    // Interval between one worker's sends, in nanoseconds.
    let worker_interval_ns = 1_000_000_000u64 * workers / args.rate;
    let stop_at_ns = Arc::new(AtomicU64::new(u64::MAX));
    // Set with stop_at_ns: nanoseconds after `start` when unsent puts give up.
    let drain_deadline_ns = Arc::new(AtomicU64::new(u64::MAX));
    let start = tokio::time::Instant::now() + Duration::from_millis(50);

    let probe = match &args.fsync_probe_dir {
        Some(dir) => Some(FsyncProbe::start(dir, args.fsync_probe_interval)?),
        None => None,
    };

    let mut tasks = Vec::with_capacity(clients.len());
    for (i, client) in clients.into_iter().enumerate() {
        let stop_at_ns = stop_at_ns.clone();
        let drain_deadline_ns = drain_deadline_ns.clone();
        let value = value.clone();
        let mut key = args.prefix.as_bytes().to_vec();
        key.resize(args.prefix.len() + args.key_size, 0);
        let prefix_len = args.prefix.len();
        let key_space_size = args.key_space_size;
        let offset_ns = i as u64 * worker_interval_ns / workers;
        let in_flight_max = args.in_flight_per_client as usize;
        tasks.push(tokio::spawn(async move {
            let kv = client.kv();
            let mut rng: rand::rngs::SmallRng = rand::SeedableRng::from_os_rng();
            let mut tally = WorkerTally::default();
            let mut in_flight: JoinSet<PutOutcome> = JoinSet::new();
            let mut k = 0u64;
            loop {
                let intended_ns = offset_ns + k * worker_interval_ns;
                if intended_ns >= stop_at_ns.load(Ordering::Acquire) {
                    break;
                }
                let intended = start + Duration::from_nanos(intended_ns);
                // Wait for the send time, tallying the puts that finish meanwhile.
                let sleep = tokio::time::sleep_until(intended);
                tokio::pin!(sleep);
                loop {
                    tokio::select! {
                        biased;
                        Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                            tally.record(done.expect("a put task never panics"));
                        }
                        _ = &mut sleep => break,
                    }
                }
                // At the in-flight bound the next put waits for an earlier one; its latency
                // still counts from its intended send time.
                while in_flight.len() >= in_flight_max {
                    let done = in_flight.join_next().await.expect("the set is not empty");
                    tally.record(done.expect("a put task never panics"));
                }
                // The stop time may have been set while we slept.
                if intended_ns >= stop_at_ns.load(Ordering::Acquire) {
                    break;
                }
                k += 1;
                let key_number = rng.random_range(0..key_space_size);
                if let Err(e) = put_varint(&mut key[prefix_len..], key_number) {
                    tally.recorder.record_error(e);
                    continue;
                }
                let request = client.request(PutRequest {
                    key: Bytes::copy_from_slice(&key),
                    value: value.clone(),
                    ..Default::default()
                });
                let drain_left = Duration::from_nanos(
                    drain_deadline_ns
                        .load(Ordering::Acquire)
                        .saturating_sub(start.elapsed().as_nanos() as u64),
                );
                if drain_left.is_zero() {
                    tally.recorder.record_error("not sent: the server had not answered the earlier puts by the drain deadline".to_string());
                    continue;
                }
                let timeout = PUT_TIMEOUT.min(drain_left);
                let mut kv = kv.clone();
                in_flight.spawn(async move {
                    let result = match tokio::time::timeout(timeout, kv.put(request)).await {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err(status)) => Err(status_text(&status)),
                        Err(_) => Err("timeout".to_string()),
                    };
                    PutOutcome {
                        intended_ns,
                        latency: intended.elapsed(),
                        result,
                    }
                });
            }
            while let Some(done) = in_flight.join_next().await {
                tally.record(done.expect("a put task never panics"));
            }
            let WorkerTally {
                recorder,
                slowest,
                slowest_by_second,
            } = tally;
            (recorder, slowest, slowest_by_second)
        }));
    }

    // The disturbance, between the warmup and the tail.
    tokio::time::sleep_until(start + args.warmup).await;
    let disturbance_started = start.elapsed();
    let outcome = match &args.signal_file {
        Some(path) => handshake(path, args.disturbance_timeout).await,
        None => run_command(args.command.clone(), args.disturbance_timeout).await,
    };
    let disturbance_ended = start.elapsed();
    let stop_ns = (disturbance_ended + args.tail).as_nanos() as u64;
    tokio::time::sleep_until(start + Duration::from_nanos(stop_ns)).await;
    drain_deadline_ns.store(stop_ns + DRAIN_TIMEOUT.as_nanos() as u64, Ordering::Release);
    stop_at_ns.store(stop_ns, Ordering::Release);

    let mut merged = Recorder::default();
    let mut slowest = Slowest::default();
    let mut slowest_by_second: Vec<Duration> = Vec::new();
    for task in tasks {
        let (recorder, worker_slowest, worker_by_second) = task.await?;
        merged.merge(recorder);
        if worker_slowest.latency > slowest.latency {
            slowest = worker_slowest;
        }
        if slowest_by_second.len() < worker_by_second.len() {
            slowest_by_second.resize(worker_by_second.len(), Duration::ZERO);
        }
        for (merged_max, worker_max) in slowest_by_second.iter_mut().zip(worker_by_second) {
            *merged_max = (*merged_max).max(worker_max);
        }
    }
    let total = start.elapsed();
    let probe_report = probe.map(FsyncProbe::finish).transpose()?;
    let outcome = outcome?;

    let report = Report::new("put", total, merged);
    let sent = report.rec.count() + report.rec.errors_total();
    let expected = (stop_ns as u128 * args.rate as u128 / 1_000_000_000) as u64;
    out.extra(
        "disturbance_start_s",
        disturbance_started.as_secs_f64().into(),
    );
    out.extra("disturbance_end_s", disturbance_ended.as_secs_f64().into());
    out.extra("disturbance_outcome", outcome.clone().into());
    out.extra("puts_sent", sent.into());
    out.extra("puts_scheduled", expected.into());
    out.extra("slowest_put_s", slowest.latency.as_secs_f64().into());
    out.extra(
        "slowest_put_intended_at_s",
        slowest.intended_after_start.as_secs_f64().into(),
    );
    out.extra(
        "slowest_put_by_intended_second_s",
        slowest_by_second
            .iter()
            .map(|d| d.as_secs_f64())
            .collect::<Vec<_>>()
            .into(),
    );
    out.note(&format!(
        "Disturbance: {outcome}, from {:.2} s to {:.2} s of the run ({:.2} s)\n",
        disturbance_started.as_secs_f64(),
        disturbance_ended.as_secs_f64(),
        (disturbance_ended - disturbance_started).as_secs_f64()
    ));
    out.note(&format!(
        "Puts: {sent} sent of {expected} scheduled at {} puts/s; latency from intended send time\n",
        args.rate
    ));
    out.note(&format!(
        "Slowest put: {:.4} secs, meant to be sent at {:.2} s\n",
        slowest.latency.as_secs_f64(),
        slowest.intended_after_start.as_secs_f64()
    ));
    if let Some(probe) = probe_report {
        let st = probe.stats();
        let pct = |p: f64| {
            st.percentiles
                .iter()
                .find(|(q, _)| *q == p)
                .map_or(0.0, |(_, s)| *s)
        };
        out.note(&format!(
            "fdatasync probe: {} syncs, p50 {:.4} secs, p99 {:.4} secs, max {:.4} secs\n",
            st.count,
            pct(50.0),
            pct(99.0),
            st.slowest_s
        ));
        out.extra("fsync_probe", probe.json());
    }
    out.report("", report, "\n");
    Ok(())
}

/// Creates `PATH.start`, then waits until `PATH.done` exists; returns what the driver
/// wrote into `PATH.done` (its description of the disturbance), or "done".
async fn handshake(path: &Path, timeout: Duration) -> Result<String, BoxError> {
    let with_suffix = |suffix: &str| {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    };
    let (start_file, done_file) = (with_suffix(".start"), with_suffix(".done"));
    std::fs::File::create(&start_file)
        .map_err(|e| format!("cannot create {}: {e}", start_file.display()))?
        .flush()?;
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(text) = std::fs::read_to_string(&done_file) {
            let text = text.trim();
            return Ok(if text.is_empty() {
                "done".to_string()
            } else {
                text.to_string()
            });
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the disturbance did not end within {timeout:?} ({} never appeared)",
                done_file.display()
            )
            .into());
        }
        tokio::time::sleep(SIGNAL_POLL).await;
    }
}

/// Runs the disturbance command to its end (killing it after `timeout`); returns how it
/// exited.
async fn run_command(command: Vec<String>, timeout: Duration) -> Result<String, BoxError> {
    let result = tokio::task::spawn_blocking(move || -> Result<String, String> {
        let mut child = std::process::Command::new(&command[0])
            .args(&command[1..])
            .stdin(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run {:?}: {e}", command[0]))?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                return if status.success() {
                    Ok(format!("{:?} exited 0", command.join(" ")))
                } else {
                    Err(format!(
                        "disturbance {:?} failed: {status}",
                        command.join(" ")
                    ))
                };
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "disturbance {:?} did not finish within {timeout:?}",
                    command.join(" ")
                ));
            }
            std::thread::sleep(SIGNAL_POLL);
        }
    })
    .await?;
    Ok(result?)
}

/// The fdatasync probe's thread and what it has measured so far.
struct FsyncProbe {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Result<(), String>>,
    recorder: Arc<Mutex<Recorder>>,
    started: Instant,
    path: PathBuf,
}

impl FsyncProbe {
    fn start(dir: &Path, interval: Duration) -> Result<FsyncProbe, BoxError> {
        let path = dir.join(format!(".tern-bench-fsync-probe-{}", std::process::id()));
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| format!("fsync probe: cannot create {}: {e}", path.display()))?;
        // Allocate the blocks once, so each timed sync covers data only, as a WAL
        // rewriting preallocated segments does.
        file.write_all_at(&vec![0u8; PROBE_WRITE_BYTES * PROBE_BLOCKS as usize], 0)?;
        file.sync_all()?;
        let stop = Arc::new(AtomicBool::new(false));
        let recorder = Arc::new(Mutex::new(Recorder::default()));
        let thread = {
            let (stop, recorder) = (stop.clone(), recorder.clone());
            std::thread::Builder::new()
                .name("fsync-probe".into())
                .spawn(move || {
                    let block = random_bytes(PROBE_WRITE_BYTES);
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let offset = (n % PROBE_BLOCKS) * PROBE_WRITE_BYTES as u64;
                        n += 1;
                        file.write_all_at(&block, offset)
                            .map_err(|e| format!("fsync probe write: {e}"))?;
                        let began = Instant::now();
                        file.sync_data()
                            .map_err(|e| format!("fsync probe fdatasync: {e}"))?;
                        let took = began.elapsed();
                        recorder.lock().expect("probe recorder").record(took);
                        std::thread::sleep(interval.saturating_sub(took));
                    }
                    Ok(())
                })?
        };
        Ok(FsyncProbe {
            stop,
            thread,
            recorder,
            started: Instant::now(),
            path,
        })
    }

    fn finish(self) -> Result<Report, BoxError> {
        self.stop.store(true, Ordering::Relaxed);
        let result = self
            .thread
            .join()
            .map_err(|_| "fsync probe thread panicked")?;
        let _ = std::fs::remove_file(&self.path);
        result?;
        let recorder = std::mem::take(&mut *self.recorder.lock().expect("probe recorder"));
        Ok(Report::new("fdatasync", self.started.elapsed(), recorder))
    }
}
