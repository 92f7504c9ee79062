//! The writer's files read back exactly (a `BTreeMap` model: inline buckets, multi-level
//! branches, overflow pages, empty buckets), misuse is refused, and damaged files give
//! errors, never panics. Real bbolt readers (etcdctl) check these files in `tests/snapshot.rs`.

use std::collections::BTreeMap;

use super::page::PAGE_BYTES;
use super::*;

type Model = BTreeMap<Vec<u8>, BTreeMap<Vec<u8>, Vec<u8>>>;

fn write_model(model: &Model) -> (Vec<u8>, Summary) {
    let mut out = Vec::new();
    let summary = write(
        |_| Ok::<_, Error>(&mut out),
        |w| -> Result<(), Error> {
            for (name, entries) in model {
                w.bucket(name)?;
                for (k, v) in entries {
                    w.put(k, v)?;
                }
            }
            Ok(())
        },
    )
    .unwrap();
    (out, summary)
}

fn read_model(path: &std::path::Path) -> Model {
    let reader = Reader::open(path).unwrap();
    let mut model = Model::new();
    for (name, root) in reader.buckets().unwrap() {
        let entries = model.entry(name).or_default();
        reader
            .for_each(&root, &mut |k, v| -> Result<(), Error> {
                entries.insert(k.to_vec(), v.to_vec());
                Ok(())
            })
            .unwrap();
    }
    model
}

fn random_model(rng: &mut fastrand::Rng) -> Model {
    let mut model = Model::new();
    for b in 0..rng.usize(1..8) {
        let entries = model.entry(format!("bucket{b}").into_bytes()).or_default();
        let n = match rng.u8(0..4) {
            0 => 0,
            1 => rng.usize(1..5),
            _ => rng.usize(1..4000),
        };
        for _ in 0..n {
            let key: Vec<u8> = (0..rng.usize(1..40)).map(|_| rng.u8(..)).collect();
            let value_bytes = if rng.u8(0..50) == 0 {
                rng.usize(PAGE_BYTES..4 * PAGE_BYTES)
            } else {
                rng.usize(0..200)
            };
            entries.insert(key, vec![rng.u8(..); value_bytes]);
        }
    }
    model
}

#[test]
fn written_files_read_back_as_the_model() {
    let seed = fastrand::u64(..);
    println!("seed {seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let dir = tempfile::tempdir().unwrap();
    for round in 0..12 {
        let model = random_model(&mut rng);
        let (bytes, summary) = write_model(&model);
        assert_eq!(
            bytes.len() as u64,
            summary.layout.file_bytes(),
            "round {round}"
        );
        assert_eq!(summary.buckets, model.len() as u64);
        let path = dir.path().join(format!("db{round}"));
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(read_model(&path), model, "round {round}, seed {seed}");
        let reader = Reader::open(&path).unwrap();
        assert_eq!(reader.db_bytes(), bytes.len() as u64);
        assert!(reader.free_pages().unwrap().is_empty());
    }
}

#[test]
fn small_buckets_are_inline_and_large_ones_get_pages() {
    let mut model = Model::new();
    model.insert(b"empty".to_vec(), BTreeMap::new());
    model
        .entry(b"small".to_vec())
        .or_default()
        .insert(b"k".to_vec(), b"v".to_vec());
    let big = model.entry(b"tall".to_vec()).or_default();
    for i in 0..100_000u32 {
        big.insert(format!("{i:08}").into_bytes(), vec![1u8; 30]);
    }
    let (bytes, _) = write_model(&model);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    std::fs::write(&path, &bytes).unwrap();
    let reader = Reader::open(&path).unwrap();
    let buckets = reader.buckets().unwrap();
    assert!(matches!(buckets[0].1, BucketRoot::Inline(_)), "empty");
    assert!(matches!(buckets[1].1, BucketRoot::Inline(_)), "small");
    assert!(matches!(buckets[2].1, BucketRoot::Page(_)), "tall");
    assert_eq!(read_model(&path), model);
}

#[test]
fn an_empty_database_is_valid() {
    let (bytes, summary) = write_model(&Model::new());
    // Two metas, the freelist and the empty root leaf: bbolt's own fresh file.
    assert_eq!(summary.layout.page_count, 4);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    std::fs::write(&path, &bytes).unwrap();
    assert!(read_model(&path).is_empty());
}

#[test]
fn out_of_order_input_is_refused() {
    let mut out = Vec::new();
    let unsorted_keys = write(
        |_| Ok(&mut out),
        |w| -> Result<(), Error> {
            w.bucket(b"a")?;
            w.put(b"2", b"")?;
            w.put(b"1", b"")
        },
    );
    assert!(matches!(unsorted_keys, Err(Error::Unsorted(_))));
    let unsorted_buckets = write(
        |_| Ok(&mut out),
        |w| -> Result<(), Error> {
            w.bucket(b"b")?;
            w.bucket(b"a")
        },
    );
    assert!(matches!(unsorted_buckets, Err(Error::Unsorted(_))));
    let no_bucket = write(
        |_| Ok(&mut out),
        |w| -> Result<(), Error> { w.put(b"k", b"v") },
    );
    assert!(matches!(no_bucket, Err(Error::Unsorted(_))));
    let mut pass = 0;
    let changing = write(
        |_| Ok(&mut out),
        |w| -> Result<(), Error> {
            pass += 1;
            w.bucket(b"a")?;
            for i in 0..pass * 1000u32 {
                w.put(&i.to_be_bytes(), &[0u8; 20])?;
            }
            Ok(())
        },
    );
    assert!(matches!(changing, Err(Error::Changed(_))));
}

#[test]
fn damaged_files_are_errors_not_panics() {
    let seed = fastrand::u64(..);
    println!("seed {seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let model = random_model(&mut rng);
    let (bytes, _) = write_model(&model);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    for _ in 0..300 {
        let mut bad = bytes.clone();
        for _ in 0..rng.usize(1..8) {
            let at = rng.usize(..bad.len());
            bad[at] = rng.u8(..);
        }
        if rng.bool() {
            bad.truncate(rng.usize(..bad.len()));
        }
        std::fs::write(&path, &bad).unwrap();
        // Any outcome but a panic: damage to values reads back as other values.
        if let Ok(reader) = Reader::open(&path) {
            if let Ok(buckets) = reader.buckets() {
                for (_, root) in buckets {
                    let _ = reader.for_each(&root, &mut |_, _| -> Result<(), Error> { Ok(()) });
                }
            }
            let _ = reader.free_pages();
        }
    }
}
