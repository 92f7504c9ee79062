//! The subcommands, one file per family (kv: put, range, txn-put, txn-mixed; watch:
//! watch, watch-latency, watch-get; lease: lease-keepalive; stm; mvcc: the local storage
//! benchmark; disturb: put latency under a disturbance, open loop), and the closed-loop
//! driver most of them share.
//!
//! Driver invariant: exactly `total` operations are issued across all workers; each
//! worker claims the next operation number from one shared atomic counter, waits for the
//! rate limiter, times the call and keeps its latency in a small batch of its own, which
//! it folds into the run's shared recorders (one lock) every `LATENCY_BATCH` calls and
//! when it ends. One histogram per report, not per worker: a recorder's histogram is
//! ~270 KB, and a thousand of them cost more to allocate, fault in and merge than the
//! lock does.

mod disturb;
mod kv;
mod lease;
mod mvcc;
mod stm;
mod watch;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Subcommand;

use crate::client::BoxError;
use crate::report::{Recorder, Report};
use crate::util::{Limiter, Progress};
use crate::{Global, Output};

#[derive(Subcommand)]
pub enum Command {
    /// Benchmark put
    Put(kv::PutArgs),
    /// Benchmark range
    Range(kv::RangeArgs),
    /// Benchmark txn-put
    TxnPut(kv::TxnPutArgs),
    /// Benchmark a mixed load of txn-put & txn-range.
    TxnMixed(kv::TxnMixedArgs),
    /// Benchmark watch
    Watch(watch::WatchArgs),
    /// Benchmark watch latency
    WatchLatency(watch::WatchLatencyArgs),
    /// Benchmark watch with get
    WatchGet(watch::WatchGetArgs),
    /// Benchmark lease keepalive
    LeaseKeepalive(lease::LeaseKeepaliveArgs),
    /// Benchmark STM
    Stm(stm::StmArgs),
    /// Benchmark mvcc (tern's local storage, no server)
    Mvcc(mvcc::MvccArgs),
    /// Put latency (open loop, from intended send time) while a disturbance happens
    Disturb(disturb::DisturbArgs),
}

pub async fn run(command: Command, global: &Global, out: &mut Output) -> Result<(), BoxError> {
    match command {
        Command::Put(args) => kv::put(args, global, out).await,
        Command::Range(args) => kv::range(args, global, out).await,
        Command::TxnPut(args) => kv::txn_put(args, global, out).await,
        Command::TxnMixed(args) => kv::txn_mixed(args, global, out).await,
        Command::Watch(args) => watch::watch(args, global, out).await,
        Command::WatchLatency(args) => watch::watch_latency(args, global, out).await,
        Command::WatchGet(args) => watch::watch_get(args, global, out).await,
        Command::LeaseKeepalive(args) => lease::lease_keepalive(args, global, out).await,
        Command::Stm(args) => stm::stm(args, global, out).await,
        Command::Mvcc(args) => mvcc::mvcc(args, out),
        Command::Disturb(args) => disturb::disturb(args, global, out).await,
    }
}

/// One closed-loop worker: `call(op_number)` performs one operation and says which of the
/// run's reports it belongs to (0 unless the command keeps several, like txn-mixed).
pub trait Worker: Send + 'static {
    fn call(&mut self, op_number: u64) -> impl Future<Output = (usize, Result<(), String>)> + Send;
}

/// Runs `total` operations over `workers`, at most `rate_per_s` per second (0 = no limit),
/// and returns one recorder per report name, with the run's wall time.
pub async fn closed_loop<W: Worker>(
    workers: Vec<W>,
    total: u64,
    rate_per_s: u64,
    names: &[&str],
) -> Result<Vec<Report>, BoxError> {
    closed_loop_with(workers, total, rate_per_s, names, Progress::start(total)).await
}

/// `closed_loop` without a progress bar, for a load that runs under another bar.
pub async fn closed_loop_hidden<W: Worker>(
    workers: Vec<W>,
    total: u64,
    rate_per_s: u64,
    names: &[&str],
) -> Result<Vec<Report>, BoxError> {
    closed_loop_with(workers, total, rate_per_s, names, Progress::hidden(total)).await
}

async fn closed_loop_with<W: Worker>(
    workers: Vec<W>,
    total: u64,
    rate_per_s: u64,
    names: &[&str],
    progress: Progress,
) -> Result<Vec<Report>, BoxError> {
    let limiter = Limiter::new(rate_per_s, 1);
    let next_op = Arc::new(AtomicU64::new(0));
    let recorders: Arc<Mutex<Vec<Recorder>>> = Arc::new(Mutex::new(
        (0..names.len()).map(|_| Recorder::default()).collect(),
    ));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(workers.len());
    for mut worker in workers {
        let limiter = limiter.clone();
        let next_op = next_op.clone();
        let done = progress.counter();
        let recorders = recorders.clone();
        tasks.push(tokio::spawn(async move {
            let mut batch = LatencyBatch::new(recorders);
            loop {
                let op_number = next_op.fetch_add(1, Ordering::Relaxed);
                if op_number >= total {
                    break;
                }
                limiter.wait().await;
                let started = Instant::now();
                let (report, result) = worker.call(op_number).await;
                let latency = started.elapsed();
                match result {
                    Ok(()) => batch.record(report, latency),
                    Err(e) => batch.record_error(report, e),
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    let merged = std::mem::take(&mut *recorders.lock().unwrap_or_else(|e| e.into_inner()));
    let total_time = start.elapsed();
    progress.finish();
    Ok(names
        .iter()
        .zip(merged)
        .map(|(name, rec)| Report::new(*name, total_time, rec))
        .collect())
}

/// Latencies a worker keeps before folding them into the shared recorders.
const LATENCY_BATCH: usize = 64;

/// A worker's unrecorded latencies (report index, latency); flushed when full and when
/// dropped, so every call is recorded exactly once.
struct LatencyBatch {
    shared: Arc<Mutex<Vec<Recorder>>>,
    latencies: Vec<(usize, Duration)>,
}

impl LatencyBatch {
    fn new(shared: Arc<Mutex<Vec<Recorder>>>) -> LatencyBatch {
        LatencyBatch {
            shared,
            latencies: Vec::with_capacity(LATENCY_BATCH),
        }
    }

    fn record(&mut self, report: usize, latency: Duration) {
        self.latencies.push((report, latency));
        if self.latencies.len() == LATENCY_BATCH {
            self.flush();
        }
    }

    fn record_error(&mut self, report: usize, error: String) {
        self.lock()[report].record_error(error);
    }

    fn flush(&mut self) {
        let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        for (report, latency) in self.latencies.drain(..) {
            shared[report].record(latency);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Recorder>> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for LatencyBatch {
    fn drop(&mut self) {
        self.flush();
    }
}
