//! `ternutl snapshot status` and `snapshot restore`: etcd's snapshot file (a bbolt
//! database, `storage/docs/bbolt.md`, usually followed by its SHA-256) inspected, and
//! turned into a tern data dir. Files from real etcd and from tern are the same format.
//!
//! Restore, as etcd's: the hash is checked (unless `--skip-hash-check`), then the database
//! becomes `<data-dir>/member/snap/db` in tern's own B+tree format with etcd's buckets
//! (`key`, `lease`, `meta`, `alarm`, `auth*`) copied entry for entry, since tern keeps
//! them in etcd's encodings. What etcd's restore replaces is left out: the old cluster's
//! members (`members`, `members_removed`, `cluster`) and the consistent index, which
//! belongs to the old raft log. The restored member then starts as a new cluster whose
//! members are the ones the restore names: tern's first start with the same `--name`,
//! `--initial-cluster` and `--initial-advertise-peer-urls` (and the new cluster's
//! `--initial-cluster-token`) writes the bootstrap entries, the ones etcd's restore writes
//! into its WAL. The restore checks those flags as etcd's does (`VerifyBootstrap`).
//!
//! Invariants: the target data dir must not exist (etcd refuses it too), and it appears
//! only once complete: everything is written under a temporary sibling, fsynced, and
//! renamed into place. Memory is bounded: the source is read page by page and the target
//! committed every `RESTORE_COMMIT_ENTRIES` entries.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use sha2::Digest as _;
use tern_storage::bbolt;
use tern_storage::btree;

/// SHA-256's size: a snapshot file is `pages * page_size + HASH_BYTES` bytes.
pub const HASH_BYTES: u64 = 32;
/// Entries per commit of the restored database (bounds the write transaction's memory).
pub const RESTORE_COMMIT_ENTRIES: u64 = 10_000;

/// Buckets a restore copies; the others belong to the old cluster (module doc).
const RESTORED_BUCKETS: [&[u8]; 6] = [
    b"alarm",
    b"auth",
    b"authRoles",
    b"authUsers",
    b"key",
    b"lease",
];
const META_BUCKET: &[u8] = b"meta";
const META_CONSISTENT_INDEX: &[u8] = b"consistent_index";

/// What `snapshot status` reports (etcd's `snapshot.Status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    pub hash: u32,
    pub revision: i64,
    pub total_key: u64,
    pub total_size: u64,
}

/// An error with the text etcd prints for it.
#[derive(Debug)]
pub struct Failure(pub String);

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<bbolt::Error> for Failure {
    fn from(e: bbolt::Error) -> Self {
        Failure(e.to_string())
    }
}

impl From<btree::Error> for Failure {
    fn from(e: btree::Error) -> Self {
        Failure(e.to_string())
    }
}

/// Go's `os` error text for a failed call on `path`: `stat X: no such file or directory`.
pub fn os_error(op: &str, path: &Path, e: &std::io::Error) -> Failure {
    let text = match e.raw_os_error() {
        // strerror's words, lowercased as Go's syscall.Errno prints them.
        Some(code) => {
            let text = std::io::Error::from_raw_os_error(code).to_string();
            let text = text.split(" (os error").next().unwrap_or(&text).to_string();
            let mut chars = text.chars();
            match chars.next() {
                Some(first) => first.to_lowercase().collect::<String>() + chars.as_str(),
                None => text,
            }
        }
        None => e.to_string(),
    };
    Failure(format!("{op} {}: {text}", path.display()))
}

/// etcd's `snapshot status`: a CRC-32C over every bucket name and its keys and values in
/// file order, the main revision of the last key in `key`, the number of entries, and
/// the database's size.
pub fn status(path: &Path) -> Result<Status, Failure> {
    std::fs::metadata(path).map_err(|e| os_error("stat", path, &e))?;
    let reader = bbolt::Reader::open(path)?;
    let mut hash = 0u32;
    let mut revision = 0i64;
    let mut total_key = 0u64;
    for (name, root) in reader.buckets()? {
        hash = crc32c::crc32c_append(hash, &name);
        let is_key = name == b"key";
        reader.for_each(&root, &mut |k, v| -> Result<(), Failure> {
            hash = crc32c::crc32c_append(hash, k);
            hash = crc32c::crc32c_append(hash, v);
            if is_key {
                let main: [u8; 8] =
                    k.get(..8).and_then(|b| b.try_into().ok()).ok_or_else(|| {
                        Failure(format!(
                            "key bucket: key of {} bytes is no revision",
                            k.len()
                        ))
                    })?;
                revision = i64::from_be_bytes(main);
            }
            total_key += 1;
            Ok(())
        })?;
    }
    Ok(Status {
        hash,
        revision,
        total_key,
        total_size: reader.db_bytes(),
    })
}

/// Whether a snapshot file ends with a hash, by etcd's rule: a bbolt file is whole pages
/// (a multiple of 512 bytes), so 32 bytes over means a SHA-256 follows.
pub fn has_hash(file_bytes: u64) -> bool {
    file_bytes % 512 == HASH_BYTES
}

/// Checks the SHA-256 at the end of `path` against the bytes before it (etcd's texts).
pub fn check_hash(path: &Path, skip_hash_check: bool) -> Result<(), Failure> {
    let file_bytes = std::fs::metadata(path)
        .map_err(|e| os_error("stat", path, &e))?
        .len();
    let with_hash = has_hash(file_bytes);
    if !with_hash && !skip_hash_check {
        return Err(Failure(
            "snapshot missing hash but --skip-hash-check=false".into(),
        ));
    }
    if !with_hash || skip_hash_check {
        return Ok(());
    }
    let mut file = std::fs::File::open(path).map_err(|e| os_error("open", path, &e))?;
    let mut hasher = sha2::Sha256::new();
    let mut remaining = file_bytes - HASH_BYTES;
    let mut buffer = vec![0u8; 1 << 20];
    while remaining > 0 {
        let n = remaining.min(buffer.len() as u64) as usize;
        file.read_exact(&mut buffer[..n])
            .map_err(|e| os_error("read", path, &e))?;
        hasher.update(&buffer[..n]);
        remaining -= n as u64;
    }
    let mut stored = [0u8; HASH_BYTES as usize];
    file.read_exact(&mut stored)
        .map_err(|e| os_error("read", path, &e))?;
    let computed = hasher.finalize();
    if stored[..] != computed[..] {
        // Go's %v of a byte slice: decimal bytes in brackets.
        let go = |bytes: &[u8]| {
            let parts: Vec<String> = bytes.iter().map(u8::to_string).collect();
            format!("[{}]", parts.join(" "))
        };
        return Err(Failure(format!(
            "expected sha256 {}, got {}",
            go(&stored),
            go(&computed)
        )));
    }
    Ok(())
}

/// One member of `--initial-cluster`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitialMember {
    pub name: String,
    pub peer_urls: Vec<String>,
}

/// Parses `name=url,name=url,...` (a name may repeat for several URLs), etcd's
/// `types.NewURLsMap`.
pub fn parse_initial_cluster(text: &str) -> Result<Vec<InitialMember>, Failure> {
    let mut members: Vec<InitialMember> = Vec::new();
    for part in text.split(',').filter(|p| !p.is_empty()) {
        let Some((name, url)) = part.split_once('=') else {
            return Err(Failure(format!(
                "parse {part:?}: missing '=' in --initial-cluster"
            )));
        };
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(Failure(format!(
                "URL scheme must be http, https, unix, or unixs: {url}"
            )));
        }
        match members.iter_mut().find(|m| m.name == name) {
            Some(m) => m.peer_urls.push(url.to_string()),
            None => members.push(InitialMember {
                name: name.to_string(),
                peer_urls: vec![url.to_string()],
            }),
        }
    }
    Ok(members)
}

/// What a restore is told (etcdutl's flags).
#[derive(Clone, Debug)]
pub struct RestoreConfig {
    pub snapshot: PathBuf,
    pub name: String,
    pub data_dir: PathBuf,
    pub initial_cluster: String,
    pub initial_advertise_peer_urls: Vec<String>,
    pub skip_hash_check: bool,
}

/// What a restore wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestoreReport {
    pub entries: u64,
    pub db_path: PathBuf,
    pub members: Vec<InitialMember>,
}

/// etcd's `VerifyBootstrap` for the restored member: it is in the initial cluster, with
/// exactly its advertised peer URLs.
fn verify_bootstrap(config: &RestoreConfig) -> Result<Vec<InitialMember>, Failure> {
    let members = parse_initial_cluster(&config.initial_cluster)?;
    let Some(me) = members.iter().find(|m| m.name == config.name) else {
        return Err(Failure(format!(
            "couldn't find local name {:?} in the initial cluster configuration",
            config.name
        )));
    };
    let mut listed = me.peer_urls.clone();
    listed.sort();
    let mut advertised = config.initial_advertise_peer_urls.clone();
    advertised.sort();
    if listed != advertised {
        return Err(Failure(format!(
            "--initial-cluster has {}={} but missing from --initial-advertise-peer-urls={}",
            me.name,
            listed.join(","),
            advertised.join(","),
        )));
    }
    Ok(members)
}

/// Restores `config.snapshot` into a new tern data dir (module doc).
pub fn restore(config: &RestoreConfig) -> Result<RestoreReport, Failure> {
    let members = verify_bootstrap(config)?;
    if config.data_dir.exists() {
        return Err(Failure(format!(
            "data-dir {:?} exists",
            config.data_dir.display().to_string()
        )));
    }
    std::fs::metadata(&config.snapshot).map_err(|e| os_error("stat", &config.snapshot, &e))?;
    check_hash(&config.snapshot, config.skip_hash_check)?;
    let reader = bbolt::Reader::open(&config.snapshot)?;

    let parent = match config.data_dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = config
        .data_dir
        .file_name()
        .ok_or_else(|| Failure(format!("data-dir {:?} has no name", config.data_dir)))?;
    let staging = parent.join(format!(
        ".{}.restoring-{}",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&staging);
    let result = write_data_dir(&reader, &staging);
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    let entries = result?;
    std::fs::rename(&staging, &config.data_dir)
        .map_err(|e| os_error("rename", &config.data_dir, &e))?;
    fsync_dir(&parent)?;
    Ok(RestoreReport {
        entries,
        db_path: db_path(&config.data_dir),
        members,
    })
}

/// Where tern (and etcd) keep the backend inside a data dir.
pub fn db_path(data_dir: &Path) -> PathBuf {
    data_dir.join("member").join("snap").join("db")
}

fn create_private_dir(dir: &Path) -> Result<(), Failure> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| os_error("mkdir", dir, &e))
}

fn fsync_dir(dir: &Path) -> Result<(), Failure> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| os_error("fsync", dir, &e))
}

/// Copies the restored buckets into a tern B+tree under `data_dir`; returns the entries
/// copied.
fn write_data_dir(reader: &bbolt::Reader, data_dir: &Path) -> Result<u64, Failure> {
    let path = db_path(data_dir);
    let snap_dir = path.parent().expect("db_path has a parent");
    create_private_dir(snap_dir)?;
    let db = btree::Db::open(&path, btree::Options::default())?;
    let mut txn = Some(db.begin_write()?);
    let mut in_txn = 0u64;
    let mut entries = 0u64;
    for (name, root) in reader.buckets()? {
        let is_meta = name == META_BUCKET;
        if !is_meta && !RESTORED_BUCKETS.contains(&name.as_slice()) {
            continue;
        }
        reader.for_each(&root, &mut |k, v| -> Result<(), Failure> {
            if is_meta && k == META_CONSISTENT_INDEX {
                return Ok(());
            }
            let open = txn.as_mut().expect("a transaction is open between commits");
            open.put(&name, k, v)?;
            entries += 1;
            in_txn += 1;
            if in_txn >= RESTORE_COMMIT_ENTRIES {
                txn.take().expect("open").commit()?;
                txn = Some(db.begin_write()?);
                in_txn = 0;
            }
            Ok(())
        })?;
    }
    txn.take().expect("open").commit()?;
    drop(db);
    fsync_dir(snap_dir)?;
    fsync_dir(&data_dir.join("member"))?;
    fsync_dir(data_dir)?;
    Ok(entries)
}

/// A size as etcd prints it (go-humanize's `Bytes`: SI units, e.g. `20 kB`, `1.2 GB`).
pub fn humanized_bytes(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    if bytes < 10 {
        return format!("{bytes} B");
    }
    let exponent = ((bytes as f64).ln() / 1000f64.ln()).floor() as usize;
    let exponent = exponent.min(UNITS.len() - 1);
    let value = bytes as f64 / 1000f64.powi(exponent as i32);
    // go-humanize rounds to one decimal below 10 and to none from 10 up.
    let value = (value * 10.0 + 0.5).floor() / 10.0;
    if value < 10.0 {
        format!("{value:.1} {}", UNITS[exponent])
    } else {
        format!("{value:.0} {}", UNITS[exponent])
    }
}

/// `snapshot status` output in etcdctl's `-w` formats (`simple`, `table`, `json`,
/// `fields`), each ending with a newline.
pub fn format_status(status: &Status, write_out: &str) -> Result<String, Failure> {
    let size = humanized_bytes(status.total_size);
    Ok(match write_out {
        "simple" => format!(
            "{:x}, {}, {}, {size}\n",
            status.hash, status.revision, status.total_key
        ),
        "table" => table(
            &["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE"],
            &[
                format!("{:x}", status.hash),
                status.revision.to_string(),
                status.total_key.to_string(),
                size,
            ],
        ),
        "json" => format!(
            "{{\"hash\":{},\"revision\":{},\"totalKey\":{},\"totalSize\":{}}}\n",
            status.hash, status.revision, status.total_key, status.total_size
        ),
        "fields" => format!(
            "\"Hash\" : {}\n\"Revision\" : {}\n\"Keys\" : {}\n\"Size\" : {}\n",
            status.hash, status.revision, status.total_key, status.total_size
        ),
        other => return Err(Failure(format!("unknown output format {other:?}"))),
    })
}

/// etcdctl's table layout: a bordered grid, headers centred, cells right-aligned.
fn table(headers: &[&str], row: &[String]) -> String {
    let widths: Vec<usize> = headers
        .iter()
        .zip(row)
        .map(|(h, c)| h.len().max(c.len()))
        .collect();
    let border: String = widths
        .iter()
        .map(|w| format!("+{}", "-".repeat(w + 2)))
        .collect::<String>()
        + "+\n";
    let mut out = border.clone();
    for (h, w) in headers.iter().zip(&widths) {
        let gap = w - h.len();
        let left = gap / 2;
        out.push_str(&format!(
            "| {}{h}{} ",
            " ".repeat(left),
            " ".repeat(gap - left)
        ));
    }
    out.push_str("|\n");
    out.push_str(&border);
    for (c, w) in row.iter().zip(&widths) {
        out.push_str(&format!("| {c:>w$} "));
    }
    out.push_str("|\n");
    out.push_str(&border);
    out
}

#[cfg(test)]
mod tests {
    //! etcdctl's output shapes (the e2e test in `tests/snapshot.rs` compares with the real
    //! etcdctl on the same files), go-humanize's sizes, and --initial-cluster parsing.
    use super::*;

    #[test]
    fn sizes_print_as_go_humanize() {
        for (bytes, text) in [
            (0, "0 B"),
            (9, "9 B"),
            (999, "999 B"),
            (1000, "1.0 kB"),
            (16_384, "16 kB"),
            (3_813_376, "3.8 MB"),
            (2 << 30, "2.1 GB"),
        ] {
            assert_eq!(humanized_bytes(bytes), text, "{bytes}");
        }
    }

    #[test]
    fn status_formats_are_etcdctls() {
        let status = Status {
            hash: 0xb400_7570,
            revision: 6,
            total_key: 9,
            total_size: 16_384,
        };
        assert_eq!(
            format_status(&status, "simple").unwrap(),
            "b4007570, 6, 9, 16 kB\n"
        );
        assert_eq!(
            format_status(&status, "table").unwrap(),
            "+----------+----------+------------+------------+\n\
             |   HASH   | REVISION | TOTAL KEYS | TOTAL SIZE |\n\
             +----------+----------+------------+------------+\n\
             | b4007570 |        6 |          9 |      16 kB |\n\
             +----------+----------+------------+------------+\n"
        );
        assert_eq!(
            format_status(&status, "json").unwrap(),
            "{\"hash\":3019928944,\"revision\":6,\"totalKey\":9,\"totalSize\":16384}\n"
        );
        assert!(format_status(&status, "yaml").is_err());
    }

    #[test]
    fn initial_cluster_groups_urls_by_name() {
        let members = parse_initial_cluster("a=http://h:1,b=http://h:2,a=https://h:3").unwrap();
        assert_eq!(members.len(), 2);
        assert_eq!(members[0].peer_urls, vec!["http://h:1", "https://h:3"]);
        assert!(parse_initial_cluster("a").is_err());
        assert!(parse_initial_cluster("a=ftp://h").is_err());
    }

    #[test]
    fn hash_presence_follows_etcds_size_rule() {
        assert!(has_hash(4 * 4096 + 32));
        assert!(!has_hash(4 * 4096));
    }
}
