//! Model test: random puts, deletes, range scans (both directions), aborts, reopens and
//! defrags against a `BTreeMap`, with the consistency checker run after every reopen.
//! Seeded; the seed is printed and `BTREE_MODEL_SEED` replays one.

use std::collections::BTreeMap;
use std::ops::Bound;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tern_storage::btree::{buckets, check_file, Db, Options};

type Model = BTreeMap<(Vec<u8>, Vec<u8>), Vec<u8>>;

const BUCKETS: [&[u8]; 4] = [buckets::KEY, buckets::META, buckets::LEASE, b"\xff\xff"];

fn random_key(rng: &mut StdRng) -> Vec<u8> {
    // A small key space so that overwrites and deletes hit existing keys.
    match rng.gen_range(0..10) {
        0 => Vec::new(),
        1 => vec![0xff; rng.gen_range(1..4)],
        2 => (0..rng.gen_range(100..1024)).map(|_| rng.gen()).collect(),
        _ => format!("k{:05}", rng.gen_range(0..3000)).into_bytes(),
    }
}

fn random_value(rng: &mut StdRng) -> Vec<u8> {
    let len = match rng.gen_range(0..40) {
        0 => rng.gen_range(1500..20_000), // overflow runs
        1 => 0,
        _ => rng.gen_range(1..200),
    };
    let fill: u8 = rng.gen();
    vec![fill; len]
}

fn random_bound(rng: &mut StdRng) -> Bound<Vec<u8>> {
    match rng.gen_range(0..3) {
        0 => Bound::Unbounded,
        1 => Bound::Included(random_key(rng)),
        _ => Bound::Excluded(random_key(rng)),
    }
}

fn as_ref(bound: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    bound.as_ref().map(|k| k.as_slice())
}

fn valid_bounds(lower: &Bound<Vec<u8>>, upper: &Bound<Vec<u8>>) -> bool {
    match (lower, upper) {
        (Bound::Included(l), Bound::Included(u)) => l <= u,
        (Bound::Included(l) | Bound::Excluded(l), Bound::Included(u) | Bound::Excluded(u)) => l < u,
        _ => true,
    }
}

fn model_range(
    model: &Model,
    bucket: &[u8],
    lower: &Bound<Vec<u8>>,
    upper: &Bound<Vec<u8>>,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    let wrap = |b: &Bound<Vec<u8>>| b.clone().map(|k| (bucket.to_vec(), k));
    let lower = match lower {
        Bound::Unbounded => Bound::Included((bucket.to_vec(), Vec::new())),
        other => wrap(other),
    };
    model
        .range((lower, wrap(upper)))
        .take_while(|((b, _), _)| b == bucket)
        .map(|((_, k), v)| (k.clone(), v.clone()))
        .collect()
}

fn verify_all(db: &Db, model: &Model, rng: &mut StdRng) {
    let read = db.begin_read();
    assert_eq!(read.entry_count(), model.len() as u64);
    for bucket in BUCKETS {
        let forward: Vec<_> = read
            .range(bucket, Bound::Unbounded, Bound::Unbounded)
            .unwrap()
            .map(|e| e.map(|(k, v)| (k.to_vec(), v.to_vec())).unwrap())
            .collect();
        assert_eq!(
            forward,
            model_range(model, bucket, &Bound::Unbounded, &Bound::Unbounded)
        );
    }
    for ((bucket, key), value) in model.iter().take(200) {
        assert_eq!(read.get(bucket, key).unwrap(), Some(value.as_slice()));
    }
    for _ in 0..50 {
        let key = random_key(rng);
        let bucket = BUCKETS[rng.gen_range(0..BUCKETS.len())];
        assert_eq!(
            read.get(bucket, &key).unwrap(),
            model.get(&(bucket.to_vec(), key)).map(|v| v.as_slice())
        );
    }
}

fn run(seed: u64, rounds: usize) {
    run_with(seed, rounds, false);
}

fn run_with(seed: u64, rounds: usize, writeback_pacing: bool) {
    println!("btree model seed {seed}, writeback pacing {writeback_pacing}");
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.db");
    let options = Options {
        sync: false,
        writeback_pacing,
    };
    let mut db = Db::open(&path, options.clone()).unwrap();
    let mut model = Model::new();
    for round in 0..rounds {
        // One write transaction per round; some are aborted.
        let mut txn = db.begin_write().unwrap();
        let mut scratch = model.clone();
        let ops = if rng.gen_bool(0.05) {
            rng.gen_range(500..2000)
        } else {
            rng.gen_range(1..60)
        };
        for _ in 0..ops {
            let bucket = BUCKETS[rng.gen_range(0..BUCKETS.len())];
            let key = random_key(&mut rng);
            match rng.gen_range(0..10) {
                0..=5 => {
                    let value = random_value(&mut rng);
                    txn.put(bucket, &key, &value).unwrap();
                    scratch.insert((bucket.to_vec(), key), value);
                }
                6..=8 => {
                    let existed = txn.delete(bucket, &key).unwrap();
                    assert_eq!(
                        existed,
                        scratch.remove(&(bucket.to_vec(), key)).is_some(),
                        "round {round}"
                    );
                }
                _ => {
                    let (lower, upper) = (random_bound(&mut rng), random_bound(&mut rng));
                    if valid_bounds(&lower, &upper) {
                        let reverse = rng.gen_bool(0.5);
                        let limit = rng.gen_range(1..100);
                        let got = txn
                            .range(bucket, as_ref(&lower), as_ref(&upper), reverse, limit)
                            .unwrap();
                        let mut want = model_range(&scratch, bucket, &lower, &upper);
                        if reverse {
                            want.reverse();
                        }
                        want.truncate(limit);
                        assert_eq!(got, want, "write-txn range, round {round}");
                    }
                    let probe = random_key(&mut rng);
                    assert_eq!(
                        txn.get(bucket, &probe).unwrap(),
                        scratch.get(&(bucket.to_vec(), probe)).map(|v| v.as_slice())
                    );
                }
            }
        }
        // A reader opened before commit keeps seeing the old state.
        let before = db.begin_read();
        let before_count = before.entry_count();
        if rng.gen_bool(0.15) {
            drop(txn);
        } else {
            txn.commit().unwrap();
            model = scratch;
        }
        assert_eq!(before.entry_count(), before_count);
        drop(before);

        // Range scans on a read transaction, both directions.
        let read = db.begin_read();
        for _ in 0..5 {
            let bucket = BUCKETS[rng.gen_range(0..BUCKETS.len())];
            let (lower, upper) = (random_bound(&mut rng), random_bound(&mut rng));
            if !valid_bounds(&lower, &upper) {
                continue;
            }
            let want = model_range(&model, bucket, &lower, &upper);
            let forward: Vec<_> = read
                .range(bucket, as_ref(&lower), as_ref(&upper))
                .unwrap()
                .map(|e| e.map(|(k, v)| (k.to_vec(), v.to_vec())).unwrap())
                .collect();
            assert_eq!(forward, want, "forward range, round {round}");
            let mut reverse: Vec<_> = read
                .range_rev(bucket, as_ref(&lower), as_ref(&upper))
                .unwrap()
                .map(|e| e.map(|(k, v)| (k.to_vec(), v.to_vec())).unwrap())
                .collect();
            reverse.reverse();
            assert_eq!(reverse, want, "reverse range, round {round}");
        }
        drop(read);

        match rng.gen_range(0..40) {
            0 => {
                drop(db);
                let report = check_file(&path).unwrap();
                assert!(report.is_ok(), "round {round}: {:?}", report.problems);
                assert_eq!(report.entries, model.len() as u64);
                db = Db::open(&path, options.clone()).unwrap();
                verify_all(&db, &model, &mut rng);
            }
            1 => {
                let before = db.stats().unwrap();
                let report = db.defrag().unwrap();
                let after = db.stats().unwrap();
                assert!(after.db_size_bytes <= before.db_size_bytes, "{report:?}");
                verify_all(&db, &model, &mut rng);
            }
            _ => {}
        }
    }
    drop(db);
    let report = check_file(&path).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    let db = Db::open(&path, options).unwrap();
    verify_all(&db, &model, &mut rng);
}

#[test]
fn model_random_operations_and_reopens() {
    let seed = std::env::var("BTREE_MODEL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    run(seed, 400);
}

#[test]
fn model_fixed_seeds() {
    for seed in 1..=2 {
        run(seed, 200);
    }
}

/// The server's setting: each batch's writeback started and bounded during the commit
/// (only pacing; the pages and the model must agree exactly as unpaced).
#[test]
fn model_fixed_seeds_with_writeback_pacing() {
    for seed in 3..=4 {
        run_with(seed, 200, true);
    }
}
