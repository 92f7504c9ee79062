//! Crash test over real SIGKILLs: a child process (this test binary re-executed) appends raft
//! entries from many concurrent tasks and prints each index only after the WAL reported it
//! durable; the parent kills it at a random moment, reopens the WAL and checks that every
//! acknowledged entry is present, in order, with its exact bytes, and that the log carries on.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use glommio::{LocalExecutorBuilder, Placement};
use tern_storage::wal::executor::WAL_IO_MEMORY_BYTES;
use tern_storage::wal::{Metadata, SnapshotMarker, Wal, WalError, WalOptions, WalRecord};

const DIR_ENV: &str = "TERN_WAL_CRASH_DIR";
const APPENDERS: usize = 32;
const KILLS: usize = 40;
/// How long a child may take to acknowledge its first append (startup included).
const PROGRESS_TIMEOUT: Duration = Duration::from_secs(60);

fn opts() -> WalOptions {
    // Small segments so rotation and release happen many times under the kills.
    WalOptions {
        segment_bytes: 256 << 10,
        batch_bytes_max: 32 << 10,
        ..WalOptions::default()
    }
}

/// The bytes entry `raft_index` carries: its index, then a length and filler derived from it.
fn payload(raft_index: u64) -> Vec<u8> {
    let len = 8 + (raft_index * 7919 % 400) as usize;
    let mut data = raft_index.to_le_bytes().to_vec();
    data.extend((0..len - 8).map(|i| (raft_index as usize + i) as u8));
    data
}

fn run<T>(fut: impl std::future::Future<Output = T>) -> T {
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(WAL_IO_MEMORY_BYTES)
        .make()
        .expect("executor")
        .run(fut)
}

/// The child: runs only when re-executed by the parent with `TERN_WAL_CRASH_DIR` set.
#[test]
#[ignore = "crash-test child; started by sigkill_loop_keeps_acknowledged_appends"]
fn crash_child() {
    let Some(dir) = std::env::var_os(DIR_ENV) else {
        return;
    };
    let dir = Path::new(&dir).to_path_buf();
    run(async move {
        let (wal, last) = match Wal::open(&dir, opts()).await {
            Ok((wal, _)) => {
                let last = wal.last_index();
                (wal, last)
            }
            Err(WalError::NotFound(_)) => {
                let meta = Metadata {
                    cluster_id: 1,
                    member_id: 2,
                };
                (Wal::create(&dir, opts(), meta).await.unwrap(), 0)
            }
            Err(e) => panic!("child could not open the wal: {e}"),
        };
        let next = std::rc::Rc::new(std::cell::Cell::new(last + 1));
        let mut tasks = Vec::new();
        for _ in 0..APPENDERS {
            let wal = wal.clone();
            let next = next.clone();
            tasks.push(glommio::spawn_local(async move {
                loop {
                    let raft_index = next.get();
                    next.set(raft_index + 1);
                    let record = WalRecord::Entry {
                        raft_index,
                        term: 1,
                        data: payload(raft_index),
                    };
                    wal.append(vec![record]).await.unwrap();
                    // Only now is it durable: tell the parent.
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "ack {raft_index}").unwrap();
                    out.flush().unwrap();
                    if raft_index.is_multiple_of(1000) {
                        let snap = SnapshotMarker {
                            raft_index: raft_index - 500,
                            term: 1,
                        };
                        wal.append(vec![WalRecord::Snapshot(snap)]).await.unwrap();
                        wal.release_below(snap.raft_index).await.unwrap();
                    }
                }
            }));
        }
        for task in tasks {
            task.await;
        }
    });
}

#[test]
fn sigkill_loop_keeps_acknowledged_appends() {
    let dir = tempfile::tempdir().unwrap();
    let seed = fastrand::u64(..);
    eprintln!("sigkill loop seed {seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let exe = std::env::current_exe().unwrap();
    let mut acked_total = 0usize;
    let mut max_acked = 0u64;
    let started = Instant::now();
    for round in 0..KILLS {
        let mut child = Command::new(&exe)
            .args([
                "crash_child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(DIR_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let acked = Arc::new(Mutex::new(Vec::new()));
        let reader = {
            let acked = acked.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if let Some(n) = line.strip_prefix("ack ") {
                        acked.lock().unwrap().push(n.parse::<u64>().unwrap());
                    }
                }
            })
        };
        // Kill only once the child has made progress (a wait, not a speed requirement:
        // a loaded machine may take long to start it), then at a random moment after.
        let progress_deadline = Instant::now() + PROGRESS_TIMEOUT;
        while acked.lock().unwrap().is_empty() {
            assert!(
                Instant::now() < progress_deadline,
                "round {round}: the child acknowledged nothing"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(rng.u64(20..250)));
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        assert!(
            !status.success(),
            "child must have been killed, round {round}"
        );
        reader.join().unwrap();
        let acked = std::mem::take(&mut *acked.lock().unwrap());
        acked_total += acked.len();

        let path = dir.path().to_path_buf();
        let round_max = acked.iter().copied().max().unwrap_or(0);
        max_acked = max_acked.max(round_max);
        let expected_max = max_acked;
        run(async move {
            let (wal, recovered) = Wal::open(&path, opts())
                .await
                .unwrap_or_else(|e| panic!("round {round}: reopen failed: {e}"));
            let snapshot_index = recovered.snapshot.map_or(0, |s| s.raft_index);
            let first = recovered
                .entries
                .first()
                .map_or(snapshot_index + 1, |e| e.raft_index);
            assert_eq!(
                first,
                snapshot_index + 1,
                "round {round}: log starts after the snapshot"
            );
            for (i, entry) in recovered.entries.iter().enumerate() {
                assert_eq!(
                    entry.raft_index,
                    first + i as u64,
                    "round {round}: entries in order"
                );
                assert_eq!(
                    entry.data,
                    payload(entry.raft_index),
                    "round {round}: entry bytes intact"
                );
            }
            let last = wal.last_index();
            assert!(
                last >= expected_max,
                "round {round}: acknowledged index {expected_max} lost (last index {last})"
            );
            for raft_index in acked.iter().copied().filter(|&i| i > snapshot_index) {
                assert_eq!(
                    wal.term(raft_index).unwrap(),
                    1,
                    "round {round}: entry {raft_index}"
                );
            }
            wal.close().await.unwrap();
        });
    }
    eprintln!(
        "{KILLS} kills, {acked_total} acknowledged appends, last index {max_acked}, {:?}",
        started.elapsed()
    );
    assert!(
        acked_total >= KILLS,
        "every child acknowledged something before its kill: {acked_total} acks"
    );
}
