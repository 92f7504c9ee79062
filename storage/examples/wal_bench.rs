//! WAL group-commit benchmark: for 1, 16, 256 and 1024 concurrent appenders of 256-byte
//! entries, reports records/s, fdatasyncs/s, records per fdatasync and append→durable latency
//! (p50/p99, hdrhistogram). In the same run it measures the disk's raw O_DIRECT write +
//! fdatasync latency through the same io_uring, the physical floor the WAL is compared with.
//!
//! Run: `cargo run --release -p tern-storage --example wal_bench -- [dir] [seconds_per_run]`
//! (dir defaults to `target/wal-bench`; it must be on the disk under test, not tmpfs).

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use glommio::io::{DmaFile, OpenOptions};
use glommio::{LocalExecutorBuilder, Placement};
use hdrhistogram::Histogram;
use tern_storage::wal::executor::{check_io_memory, WAL_IO_MEMORY_BYTES};
use tern_storage::wal::{Metadata, Wal, WalOptions, WalRecord};

const RECORD_BYTES: usize = 256;
const APPENDER_COUNTS: [usize; 4] = [1, 16, 256, 1024];
const RAW_SYNCS: u64 = 2000;
const WARMUP: Duration = Duration::from_millis(300);

struct Row {
    appenders: usize,
    records_per_s: f64,
    fdatasyncs_per_s: f64,
    records_per_fdatasync: f64,
    latency_us_p50: u64,
    latency_us_p99: u64,
}

async fn raw_fdatasync_floor(dir: &Path, syncs: u64) -> Histogram<u64> {
    let path = dir.join("raw-fdatasync.bin");
    let file: DmaFile = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .dma_open(&path)
        .await
        .expect("create raw file");
    file.pre_allocate(64 << 20, false).await.expect("fallocate");
    let mut hist = Histogram::<u64>::new(3).unwrap();
    for i in 0..syncs {
        let mut buf = file.alloc_dma_buffer(4096);
        buf.as_bytes_mut().fill(i as u8);
        let started = Instant::now();
        file.write_at(buf, i * 4096).await.expect("write");
        file.fdatasync().await.expect("fdatasync");
        hist.record(started.elapsed().as_micros() as u64).unwrap();
    }
    file.close().await.unwrap();
    std::fs::remove_file(&path).unwrap();
    hist
}

async fn run_appenders(dir: &Path, appenders: usize, run_for: Duration) -> Row {
    let wal_dir = dir.join(format!("wal-{appenders}"));
    let _ = std::fs::remove_dir_all(&wal_dir);
    let wal = Wal::create(
        &wal_dir,
        WalOptions::default(),
        Metadata {
            cluster_id: 1,
            member_id: 1,
        },
    )
    .await
    .expect("create wal");
    let next_index = Rc::new(Cell::new(1u64));
    let measuring = Rc::new(Cell::new(false));
    let stop = Rc::new(Cell::new(false));
    let records = Rc::new(Cell::new(0u64));
    let hist = Rc::new(std::cell::RefCell::new(Histogram::<u64>::new(3).unwrap()));
    let mut tasks = Vec::new();
    for _ in 0..appenders {
        let (wal, next_index, measuring, stop, records, hist) = (
            wal.clone(),
            next_index.clone(),
            measuring.clone(),
            stop.clone(),
            records.clone(),
            hist.clone(),
        );
        tasks.push(glommio::spawn_local(async move {
            let data = vec![0xabu8; RECORD_BYTES];
            while !stop.get() {
                let raft_index = next_index.get();
                next_index.set(raft_index + 1);
                let started = Instant::now();
                wal.append(vec![WalRecord::Entry {
                    raft_index,
                    term: 1,
                    data: data.clone(),
                }])
                .await
                .expect("append");
                if measuring.get() {
                    hist.borrow_mut()
                        .record(started.elapsed().as_micros() as u64)
                        .unwrap();
                    records.set(records.get() + 1);
                }
            }
        }));
    }
    glommio::timer::sleep(WARMUP).await;
    let syncs_before = wal.stats().fdatasyncs;
    measuring.set(true);
    let started = Instant::now();
    glommio::timer::sleep(run_for).await;
    measuring.set(false);
    let elapsed = started.elapsed().as_secs_f64();
    let syncs = wal.stats().fdatasyncs - syncs_before;
    stop.set(true);
    for task in tasks {
        task.await;
    }
    wal.close().await.unwrap();
    let _ = std::fs::remove_dir_all(&wal_dir);
    let hist = hist.borrow();
    let records = records.get() as f64;
    Row {
        appenders,
        records_per_s: records / elapsed,
        fdatasyncs_per_s: syncs as f64 / elapsed,
        records_per_fdatasync: records / syncs.max(1) as f64,
        latency_us_p50: hist.value_at_quantile(0.50),
        latency_us_p99: hist.value_at_quantile(0.99),
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(
        args.next()
            .unwrap_or_else(|| "target/wal-bench".to_string()),
    );
    let seconds: f64 = args
        .next()
        .map(|s| s.parse().expect("seconds"))
        .unwrap_or(3.0);
    std::fs::create_dir_all(&dir).unwrap();
    if let Err(why) = check_io_memory(WAL_IO_MEMORY_BYTES) {
        eprintln!("{why}");
        std::process::exit(2);
    }
    let executor = LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(WAL_IO_MEMORY_BYTES)
        .make()
        .expect("executor");
    executor.run(async move {
        let raw = raw_fdatasync_floor(&dir, RAW_SYNCS).await;
        let raw_p50 = raw.value_at_quantile(0.5);
        println!(
            "raw O_DIRECT 4 KiB write + fdatasync (io_uring), {RAW_SYNCS} syncs: p50 {} us, p99 {} us, {:.0} syncs/s",
            raw_p50,
            raw.value_at_quantile(0.99),
            1e6 / raw.mean()
        );
        println!();
        // The disk is shared and its latency drifts: each row is preceded by its own floor.
        println!("| appenders | records/s | fdatasyncs/s | records/fdatasync | p50 us | p99 us | raw p50 us (just before) | p50 - raw p50 us |");
        println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
        for appenders in APPENDER_COUNTS {
            let raw_p50 = raw_fdatasync_floor(&dir, RAW_SYNCS / 4).await.value_at_quantile(0.5);
            let row = run_appenders(&dir, appenders, Duration::from_secs_f64(seconds)).await;
            println!(
                "| {} | {:.0} | {:.0} | {:.1} | {} | {} | {} | {} |",
                row.appenders,
                row.records_per_s,
                row.fdatasyncs_per_s,
                row.records_per_fdatasync,
                row.latency_us_p50,
                row.latency_us_p99,
                raw_p50,
                row.latency_us_p50 as i64 - raw_p50 as i64
            );
        }
    });
}
