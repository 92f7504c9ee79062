//! Crash test: a writer process is killed with SIGKILL at random points; after each kill the
//! file is reopened, the last acknowledged commit (or the one in flight) must be intact and
//! exactly match a deterministic replay, and the consistency checker must pass. Also: a torn
//! newest meta page falls back to the previous commit.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use tern_storage::btree::{buckets, check_file, Db, Options};

const CHILD_ENV: &str = "TERN_BTREE_CRASH_CHILD";

/// The content after transaction `n` of the deterministic workload.
fn apply(model: &mut BTreeMap<Vec<u8>, Vec<u8>>, n: u64) {
    for j in 0..40u64 {
        let key = format!("{:06}", (n * 7919 + j * 13) % 4000).into_bytes();
        let len = if j == 0 { 3000 } else { (n % 90 + 1) as usize };
        model.insert(key, vec![(n % 251) as u8; len]);
    }
    for j in 0..10u64 {
        model.remove(format!("{:06}", (n * 31 + j * 101) % 4000).as_bytes());
    }
}

fn write_txn(db: &Db, n: u64) {
    let mut txn = db.begin_write().unwrap();
    // The same writes as `apply`, in the same order.
    for j in 0..40u64 {
        let key = format!("{:06}", (n * 7919 + j * 13) % 4000).into_bytes();
        let len = if j == 0 { 3000 } else { (n % 90 + 1) as usize };
        txn.put(buckets::KEY, &key, &vec![(n % 251) as u8; len])
            .unwrap();
    }
    for j in 0..10u64 {
        txn.delete(
            buckets::KEY,
            format!("{:06}", (n * 31 + j * 101) % 4000).as_bytes(),
        )
        .unwrap();
    }
    txn.put(buckets::META, b"n", &n.to_le_bytes()).unwrap();
    txn.commit().unwrap();
}

fn committed_n(db: &Db) -> u64 {
    db.begin_read()
        .get(buckets::META, b"n")
        .unwrap()
        .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap()))
}

/// Runs only as the child of `sigkill_at_random_points`: commits forever, acknowledging each.
#[test]
#[ignore = "crash-test child; started by sigkill_at_random_points"]
fn crash_child_writer() {
    let path =
        std::env::var(CHILD_ENV).expect("run by sigkill_at_random_points, which sets the dir");
    let db = Db::open(&path, Options::default()).unwrap();
    let mut n = committed_n(&db);
    loop {
        n += 1;
        write_txn(&db, n);
        println!("committed {n}");
    }
}

/// How long the crash child may take to start and make its first commit.
const CHILD_FIRST_COMMIT_TIMEOUT: Duration = Duration::from_secs(60);

#[test]
fn sigkill_at_random_points() {
    let seed: u64 = rand::random();
    println!("crash seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.db");
    for round in 0..8 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "crash_child_writer",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (first_commit_tx, first_commit_rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut first_commit_tx = Some(first_commit_tx);
            let mut last = None;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(n) = line.strip_prefix("committed ") {
                    last = Some(n.trim().parse::<u64>().unwrap());
                    if let Some(tx) = first_commit_tx.take() {
                        let _ = tx.send(());
                    }
                }
            }
            last
        });
        // The random kill point is counted from the child's first commit, not from its
        // start: a loaded machine can take longer than the shortest delay to start it, and
        // a kill before the file exists tests nothing (and left no file to check).
        first_commit_rx
            .recv_timeout(CHILD_FIRST_COMMIT_TIMEOUT)
            .expect("the crash child committed nothing");
        std::thread::sleep(Duration::from_millis(rng.gen_range(100..600)));
        // Safety: plain FFI call with a pid we own; SIGKILL is what this test is about.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        child.wait().unwrap();
        let acknowledged = reader.join().unwrap();

        let report = check_file(&path).unwrap();
        assert!(report.is_ok(), "round {round}: {:?}", report.problems);
        let db = Db::open(&path, Options::default()).unwrap();
        let n = committed_n(&db);
        if let Some(acknowledged) = acknowledged {
            assert!(
                n == acknowledged || n == acknowledged + 1,
                "round {round}: acknowledged {acknowledged}, found {n}"
            );
        }
        let mut model = BTreeMap::new();
        for i in 1..=n {
            apply(&mut model, i);
        }
        let read = db.begin_read();
        let got: Vec<(Vec<u8>, Vec<u8>)> = read
            .range(
                buckets::KEY,
                std::ops::Bound::Unbounded,
                std::ops::Bound::Unbounded,
            )
            .unwrap()
            .map(|e| e.map(|(k, v)| (k.to_vec(), v.to_vec())).unwrap())
            .collect();
        assert_eq!(
            got,
            model.into_iter().collect::<Vec<_>>(),
            "round {round}: content after {n} commits"
        );
        println!("round {round}: {n} commits intact");
    }
}

#[test]
fn torn_newest_meta_falls_back_to_previous_commit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("torn.db");
    let db = Db::open(
        &path,
        Options {
            sync: false,
            ..Options::default()
        },
    )
    .unwrap();
    for n in 1..=20 {
        write_txn(&db, n);
    }
    let txid = db.stats().unwrap().txid;
    drop(db);
    // Tear the newest meta slot: flip a byte inside its checksummed range.
    let mut image = std::fs::read(&path).unwrap();
    let slot = (txid % 2) as usize * tern_storage::btree::PAGE_BYTES;
    image[slot + 20] ^= 0x5a;
    std::fs::write(&path, &image).unwrap();
    let report = check_file(&path).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    let db = Db::open(
        &path,
        Options {
            sync: false,
            ..Options::default()
        },
    )
    .unwrap();
    assert_eq!(db.stats().unwrap().txid, txid - 1);
    assert_eq!(committed_n(&db), 19);
    // And the database keeps working from there.
    write_txn(&db, 20);
    drop(db);
    assert!(check_file(&path).unwrap().is_ok());
}
