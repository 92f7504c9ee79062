//! `mvcc put`: etcd's storage-only benchmark, against tern's own MVCC store on the mmap
//! B+tree (`tern::mvcc` over `tern_storage::btree`), with no network and no server.
//!
//! Like etcd's `benchmark mvcc put`: random keys of --key-size bytes and values of
//! --val-size, --txn-ops puts per write transaction, one latency sample per transaction.
//! The backend commits (pages, fdatasync, meta, fdatasync) when --batch-limit
//! transactions are pending or --batch-interval has passed since the last commit, the
//! way etcd's backend batches; a transaction that triggers a commit pays for it, as in
//! etcd, where `txn.End()` runs the commit when the batch limit is reached.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use rand::RngCore;
use tern::mvcc::btree_backend::{self, BtreeBackend};
use tern::mvcc::KvStore;

use crate::client::BoxError;
use crate::report::{Recorder, Report};
use crate::util::Progress;
use crate::Output;

#[derive(Args)]
pub struct MvccArgs {
    /// Interval of the backend's batched commits, in milliseconds
    #[arg(long = "batch-interval", default_value_t = 100)]
    batch_interval_ms: u64,
    /// Most write transactions in one backend commit
    #[arg(long = "batch-limit", default_value_t = 10000)]
    batch_limit: u64,
    /// Directory for the benchmark's database (default: a fresh temp dir, removed after)
    #[arg(long = "data-dir")]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: MvccCommand,
}

#[derive(Subcommand)]
enum MvccCommand {
    /// Benchmark put performance of the storage
    Put(MvccPutArgs),
}

#[derive(Args)]
struct MvccPutArgs {
    /// Total number of put requests
    #[arg(long, default_value_t = 10000)]
    total: u64,
    /// Size of each key
    #[arg(long = "key-size", default_value_t = 64)]
    key_size: usize,
    /// Size of each value
    #[arg(long = "val-size", default_value_t = 128)]
    val_size: usize,
    /// Number of puts per transaction
    #[arg(long = "txn-ops", default_value_t = 1)]
    txn_ops: u64,
}

/// Removes the benchmark's temp dir when the run ends, however it ends.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn mvcc(args: MvccArgs, out: &mut Output) -> Result<(), BoxError> {
    let MvccCommand::Put(put) = args.command;
    if put.txn_ops == 0 || put.key_size == 0 {
        return Err("--txn-ops and --key-size must be positive".into());
    }
    let (dir, _cleanup) = match args.data_dir {
        Some(dir) => (dir, None),
        None => {
            let dir = std::env::temp_dir().join(format!("tern-bench-mvcc-{}", std::process::id()));
            (dir.clone(), Some(TempDir(dir)))
        }
    };
    let backend = BtreeBackend::open(&btree_backend::db_path(&dir))?;
    let mut store = KvStore::open(backend)?;

    // Keys and values are made up front so that only the store is timed.
    let mut rng = rand::rng();
    let ops = put.total * put.txn_ops;
    let keys: Vec<bytes::Bytes> = (0..ops)
        .map(|_| {
            let mut key = vec![0u8; put.key_size];
            rng.fill_bytes(&mut key);
            key.into()
        })
        .collect();
    let value = bytes::Bytes::from(vec![b'v'; put.val_size]);

    let batch_interval = Duration::from_millis(args.batch_interval_ms);
    let mut recorder = Recorder::default();
    let progress = Progress::start(put.total);
    let done = progress.counter();
    let started = Instant::now();
    let mut last_commit = started;
    let mut pending_txns = 0u64;
    for txn_number in 0..put.total {
        let begin = Instant::now();
        {
            let mut txn = store.write();
            for op in 0..put.txn_ops {
                let key = keys[(txn_number * put.txn_ops + op) as usize].clone();
                txn.put(key, value.clone(), 0)?;
            }
        }
        pending_txns += 1;
        if pending_txns >= args.batch_limit || begin.duration_since(last_commit) >= batch_interval {
            store.commit()?;
            pending_txns = 0;
            last_commit = Instant::now();
        }
        recorder.record(begin.elapsed());
        done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    store.commit()?;
    let total = started.elapsed();
    progress.finish();
    out.report("", Report::new("mvcc put", total, recorder), "");
    Ok(())
}
