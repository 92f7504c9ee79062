//! B+tree benchmark: tern's btree against LMDB (heed) and redb in the same process on the
//! same machine, all with durable commits. Workloads: N sequential inserts in batches of
//! 10k; N random inserts in batches of 10k; N random point gets; 1k range scans of 1k keys;
//! file size after N inserts; after deleting half; after compaction (tern: online defrag,
//! LMDB: compacting copy, redb: compact). `BTREE_BENCH_N` sets N (default 1,000,000). The read
//! phases (gets, scans) run `READ_REPEATS` times per engine and report the fastest run. The
//! engines take turns (each batch of a write phase, each run of a read phase, goes to all
//! three in turn, timed separately), so background load on a shared machine is spread evenly.
//! Run: `cargo bench -p tern-storage --bench btree`.

use std::ops::Bound;
use std::path::Path;
use std::time::{Duration, Instant};

use heed::types::Bytes;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use redb::{ReadableDatabase, TableDefinition};
use tern_storage::btree::{buckets, Db, Options};

const BATCH: usize = 10_000;
const VALUE_BYTES: usize = 100;
const SCANS: usize = 1_000;
const SCAN_KEYS: usize = 1_000;
const REDB_TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv");
/// Each read phase runs this many times per engine and the fastest run counts. Read phases
/// are short (about a second) and leave no state behind, so on a shared machine one burst of
/// another process would otherwise decide a ratio; every engine is treated the same. Write
/// phases change the database and run once.
const READ_REPEATS: usize = 3;

#[derive(Default, Clone)]
struct Row {
    seq_insert: Duration,
    rand_insert: Duration,
    gets: Duration,
    scans: Duration,
    size_full: u64,
    size_half: u64,
    size_compacted: u64,
}

trait Engine {
    fn name(&self) -> &'static str;
    fn insert_batches(&mut self, keys: &[[u8; 8]], value: &[u8]);
    fn delete_batches(&mut self, keys: &[[u8; 8]]);
    fn gets(&self, keys: &[[u8; 8]]) -> usize;
    fn scans(&self, starts: &[[u8; 8]]) -> usize;
    fn file_bytes(&self) -> u64;
    fn compact(&mut self);
}

fn dir_bytes(path: &Path) -> u64 {
    std::fs::read_dir(path)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

struct Tern {
    db: Db,
}

impl Engine for Tern {
    fn name(&self) -> &'static str {
        "tern btree"
    }
    fn insert_batches(&mut self, keys: &[[u8; 8]], value: &[u8]) {
        for batch in keys.chunks(BATCH) {
            let mut txn = self.db.begin_write().unwrap();
            for key in batch {
                txn.put(buckets::KEY, key, value).unwrap();
            }
            txn.commit().unwrap();
        }
    }
    fn delete_batches(&mut self, keys: &[[u8; 8]]) {
        for batch in keys.chunks(BATCH) {
            let mut txn = self.db.begin_write().unwrap();
            for key in batch {
                txn.delete(buckets::KEY, key).unwrap();
            }
            txn.commit().unwrap();
        }
    }
    fn gets(&self, keys: &[[u8; 8]]) -> usize {
        let read = self.db.begin_read();
        keys.iter()
            .map(|k| read.get(buckets::KEY, k).unwrap().unwrap().len())
            .sum()
    }
    fn scans(&self, starts: &[[u8; 8]]) -> usize {
        let read = self.db.begin_read();
        let mut total = 0;
        for start in starts {
            for entry in read
                .range(buckets::KEY, Bound::Included(start), Bound::Unbounded)
                .unwrap()
                .take(SCAN_KEYS)
            {
                total += entry.unwrap().1.len();
            }
        }
        total
    }
    fn file_bytes(&self) -> u64 {
        self.db.stats().unwrap().db_size_bytes
    }
    fn compact(&mut self) {
        self.db.defrag().unwrap();
    }
}

struct Lmdb {
    env: heed::Env,
    db: heed::Database<Bytes, Bytes>,
    dir: std::path::PathBuf,
}

impl Engine for Lmdb {
    fn name(&self) -> &'static str {
        "LMDB (heed)"
    }
    fn insert_batches(&mut self, keys: &[[u8; 8]], value: &[u8]) {
        for batch in keys.chunks(BATCH) {
            let mut txn = self.env.write_txn().unwrap();
            for key in batch {
                self.db.put(&mut txn, key, value).unwrap();
            }
            txn.commit().unwrap();
        }
    }
    fn delete_batches(&mut self, keys: &[[u8; 8]]) {
        for batch in keys.chunks(BATCH) {
            let mut txn = self.env.write_txn().unwrap();
            for key in batch {
                self.db.delete(&mut txn, key).unwrap();
            }
            txn.commit().unwrap();
        }
    }
    fn gets(&self, keys: &[[u8; 8]]) -> usize {
        let read = self.env.read_txn().unwrap();
        keys.iter()
            .map(|k| self.db.get(&read, k).unwrap().unwrap().len())
            .sum()
    }
    fn scans(&self, starts: &[[u8; 8]]) -> usize {
        let read = self.env.read_txn().unwrap();
        let mut total = 0;
        for start in starts {
            let range = (Bound::Included(&start[..]), Bound::Unbounded);
            for entry in self.db.range(&read, &range).unwrap().take(SCAN_KEYS) {
                total += entry.unwrap().1.len();
            }
        }
        total
    }
    fn file_bytes(&self) -> u64 {
        dir_bytes(&self.dir)
    }
    fn compact(&mut self) {
        // LMDB has no in-place compaction: a compacting copy is what `mdb_copy -c` does.
        let copy = self.dir.join("compacted.mdb");
        self.env
            .copy_to_path(&copy, heed::CompactionOption::Enabled)
            .unwrap();
        let bytes = std::fs::metadata(&copy).unwrap().len();
        std::fs::remove_file(&copy).unwrap();
        std::fs::write(self.dir.join("compacted.size"), bytes.to_string()).unwrap();
    }
}

struct Redb {
    db: redb::Database,
    path: std::path::PathBuf,
}

impl Engine for Redb {
    fn name(&self) -> &'static str {
        "redb"
    }
    fn insert_batches(&mut self, keys: &[[u8; 8]], value: &[u8]) {
        for batch in keys.chunks(BATCH) {
            let txn = self.db.begin_write().unwrap();
            {
                let mut table = txn.open_table(REDB_TABLE).unwrap();
                for key in batch {
                    table.insert(&key[..], value).unwrap();
                }
            }
            txn.commit().unwrap();
        }
    }
    fn delete_batches(&mut self, keys: &[[u8; 8]]) {
        for batch in keys.chunks(BATCH) {
            let txn = self.db.begin_write().unwrap();
            {
                let mut table = txn.open_table(REDB_TABLE).unwrap();
                for key in batch {
                    table.remove(&key[..]).unwrap();
                }
            }
            txn.commit().unwrap();
        }
    }
    fn gets(&self, keys: &[[u8; 8]]) -> usize {
        let read = self.db.begin_read().unwrap();
        let table = read.open_table(REDB_TABLE).unwrap();
        keys.iter()
            .map(|k| table.get(&k[..]).unwrap().unwrap().value().len())
            .sum()
    }
    fn scans(&self, starts: &[[u8; 8]]) -> usize {
        let read = self.db.begin_read().unwrap();
        let table = read.open_table(REDB_TABLE).unwrap();
        let mut total = 0;
        for start in starts {
            for entry in table.range(&start[..]..).unwrap().take(SCAN_KEYS) {
                total += entry.unwrap().1.value().len();
            }
        }
        total
    }
    fn file_bytes(&self) -> u64 {
        std::fs::metadata(&self.path).unwrap().len()
    }
    fn compact(&mut self) {
        while self.db.compact().unwrap() {}
    }
}

fn open(kind: usize, dir: &Path, tag: &str) -> Box<dyn Engine> {
    match kind {
        0 => Box::new(Tern {
            db: Db::open(dir.join(format!("{tag}.tern")), Options::default()).unwrap(),
        }),
        1 => {
            let path = dir.join(format!("{tag}.lmdb"));
            std::fs::create_dir_all(&path).unwrap();
            // Safety: the directory is fresh and opened once by this process.
            let env = unsafe {
                heed::EnvOpenOptions::new()
                    .map_size(8 << 30)
                    .open(&path)
                    .unwrap()
            };
            let mut txn = env.write_txn().unwrap();
            let db = env.create_database(&mut txn, None).unwrap();
            txn.commit().unwrap();
            Box::new(Lmdb { env, db, dir: path })
        }
        _ => {
            let path = dir.join(format!("{tag}.redb"));
            Box::new(Redb {
                db: redb::Database::create(&path).unwrap(),
                path,
            })
        }
    }
}

fn timed(f: impl FnOnce()) -> Duration {
    let start = Instant::now();
    f();
    start.elapsed()
}

fn main() {
    let n: usize = std::env::var("BTREE_BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir_in(std::env::var("BTREE_BENCH_DIR").unwrap_or_else(|_| ".".into()))
        .unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let value = vec![0xabu8; VALUE_BYTES];
    let sequential: Vec<[u8; 8]> = (0..n as u64).map(|i| i.to_be_bytes()).collect();
    let mut random = sequential.clone();
    random.shuffle(&mut rng);
    let starts: Vec<[u8; 8]> = (0..SCANS)
        .map(|_| rng.gen_range(0..(n - SCAN_KEYS) as u64).to_be_bytes())
        .collect();
    let half: Vec<[u8; 8]> = random.iter().step_by(2).copied().collect();

    // The engines take turns batch by batch (and run by run for the read phases) instead of
    // one after another, so that load from other processes on a shared machine falls on all
    // of them alike rather than on whichever happened to be running.
    const ENGINES: usize = 3;
    let mut rows = vec![Row::default(); ENGINES];
    let mut engines: Vec<Box<dyn Engine>> = (0..ENGINES)
        .map(|kind| open(kind, dir.path(), "seq"))
        .collect();
    for batch in sequential.chunks(BATCH) {
        for (row, engine) in rows.iter_mut().zip(engines.iter_mut()) {
            row.seq_insert += timed(|| engine.insert_batches(batch, &value));
        }
    }
    drop(engines);
    let mut engines: Vec<Box<dyn Engine>> = (0..ENGINES)
        .map(|kind| open(kind, dir.path(), "rand"))
        .collect();
    for batch in random.chunks(BATCH) {
        for (row, engine) in rows.iter_mut().zip(engines.iter_mut()) {
            row.rand_insert += timed(|| engine.insert_batches(batch, &value));
        }
    }
    for (row, engine) in rows.iter_mut().zip(&engines) {
        row.size_full = engine.file_bytes();
        row.gets = Duration::MAX;
        row.scans = Duration::MAX;
    }
    for _ in 0..READ_REPEATS {
        for (row, engine) in rows.iter_mut().zip(&engines) {
            let mut checksum = 0;
            row.gets = row.gets.min(timed(|| checksum = engine.gets(&random)));
            assert_eq!(checksum, n * VALUE_BYTES);
        }
        for (row, engine) in rows.iter_mut().zip(&engines) {
            let mut checksum = 0;
            row.scans = row.scans.min(timed(|| checksum = engine.scans(&starts)));
            assert_eq!(checksum, SCANS * SCAN_KEYS * VALUE_BYTES);
        }
    }
    for (kind, (row, engine)) in rows.iter_mut().zip(engines.iter_mut()).enumerate() {
        engine.delete_batches(&half);
        row.size_half = engine.file_bytes();
        engine.compact();
        row.size_compacted = match kind {
            1 => std::fs::read_to_string(dir.path().join("rand.lmdb/compacted.size"))
                .unwrap()
                .parse()
                .unwrap(),
            _ => engine.file_bytes(),
        };
        println!("{}: done", engine.name());
    }
    let rows: Vec<(&str, Row)> = engines
        .iter()
        .map(|engine| engine.name())
        .zip(rows)
        .collect();

    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let per_sec = |count: usize, d: Duration| count as f64 / d.as_secs_f64();
    println!(
        "\nN = {n}, {VALUE_BYTES}-byte values, 8-byte keys, batches of {BATCH}, durable commits"
    );
    println!("| engine | seq insert (ops/s) | random insert (ops/s) | random get (ops/s) | 1k-key scans (scans/s) | size after N (MiB) | after deleting half | after compaction |");
    println!("|---|---|---|---|---|---|---|---|");
    for (name, row) in &rows {
        println!(
            "| {name} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1} |",
            per_sec(n, row.seq_insert),
            per_sec(n, row.rand_insert),
            per_sec(n, row.gets),
            per_sec(SCANS, row.scans),
            mib(row.size_full),
            mib(row.size_half),
            mib(row.size_compacted)
        );
    }
    let (tern, lmdb, redb) = (&rows[0].1, &rows[1].1, &rows[2].1);
    println!("\nratios (tern / reference; > 1 means tern is faster):");
    println!(
        "  random get vs LMDB: {:.2}",
        lmdb.gets.as_secs_f64() / tern.gets.as_secs_f64()
    );
    println!(
        "  scans vs LMDB: {:.2}",
        lmdb.scans.as_secs_f64() / tern.scans.as_secs_f64()
    );
    println!(
        "  seq insert vs redb: {:.2}",
        redb.seq_insert.as_secs_f64() / tern.seq_insert.as_secs_f64()
    );
    println!(
        "  random insert vs redb: {:.2}",
        redb.rand_insert.as_secs_f64() / tern.rand_insert.as_secs_f64()
    );
}
