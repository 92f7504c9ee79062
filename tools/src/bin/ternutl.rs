//! `ternutl`: etcdutl's offline commands for tern data dirs and etcd snapshot files, with
//! etcdutl's names, flags, output and error texts.
//!
//! - `ternutl snapshot status FILE [-w simple|table|json|fields]`
//! - `ternutl snapshot restore FILE [--name] [--data-dir] [--initial-cluster]
//!   [--initial-advertise-peer-urls] [--skip-hash-check]`
//! - `ternutl defrag --data-dir DIR`: offline defragmentation (`tern_tools::defrag`)
//! - `ternutl backup --data-dir DIR --backup-dir DIR [--wal-dir] [--backup-wal-dir]
//!   [--with-v3[=false]]`: a copy for a new one-member cluster (`tern_tools::backup`)
//!
//! A snapshot from real etcd or from tern (`etcdctl snapshot save`) restores into a tern
//! data dir; start tern on it with the same `--name`, `--initial-cluster`,
//! `--initial-advertise-peer-urls` and the `--initial-cluster-token` of the new cluster
//! (see `tern_tools::snapshot`). etcdutl's `--initial-cluster-token` is not accepted by
//! restore: tern derives the member and cluster IDs from it when it first starts on the
//! restored dir, so it is given there.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgAction, Args, Parser, Subcommand};
use tern_tools::backup::{self, BackupConfig};
use tern_tools::defrag;
use tern_tools::snapshot::{self, RestoreConfig};

/// etcdctl's exit codes: a failure, and bad arguments.
const EXIT_ERROR: u8 = 1;
const EXIT_BAD_ARGS: u8 = 128;

#[derive(Parser)]
#[command(
    name = "ternutl",
    about = "Offline tools for tern data dirs and etcd snapshot files (etcdutl's commands)"
)]
struct Cli {
    /// Output format: simple, table, json or fields.
    #[arg(
        short = 'w',
        long = "write-out",
        default_value = "simple",
        global = true
    )]
    write_out: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Inspect and restore etcd snapshot files.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Defragments the storage of a data directory not in use by a server.
    Defrag {
        /// Required. Defragments a data directory not in use by etcd (or tern).
        #[arg(long, required = true)]
        data_dir: PathBuf,
    },
    /// [legacy] offline backup of a data directory, for a new one-member cluster (prefer
    /// `etcdctl snapshot save`). Start the backup with --force-new-cluster.
    Backup(BackupArgs),
}

#[derive(Args)]
struct BackupArgs {
    /// Path to the data dir.
    #[arg(long, required = true)]
    data_dir: PathBuf,
    /// Path to the WAL dir (default: DATA_DIR/member/wal).
    #[arg(long)]
    wal_dir: Option<PathBuf>,
    /// Path to the backup dir.
    #[arg(long, required = true)]
    backup_dir: PathBuf,
    /// Path to the backup WAL dir (default: BACKUP_DIR/member/wal; tern itself reads its WAL
    /// only from there, so move it there before starting on the backup).
    #[arg(long)]
    backup_wal_dir: Option<PathBuf>,
    /// Backup v3 backend data (on unless --with-v3=false).
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_value_t = true, default_missing_value = "true")]
    with_v3: bool,
}

#[derive(Subcommand)]
enum SnapshotCommand {
    /// Gets backend snapshot status of a given file.
    Status {
        /// The snapshot file.
        files: Vec<PathBuf>,
    },
    /// Restores an etcd member snapshot to a tern data directory.
    Restore(RestoreArgs),
}

#[derive(Args)]
struct RestoreArgs {
    /// The snapshot file.
    files: Vec<PathBuf>,
    /// Human-readable name for this member.
    #[arg(long, default_value = "default")]
    name: String,
    /// Path to the data directory (default: NAME.etcd).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Initial cluster configuration for restore bootstrap.
    #[arg(long, default_value = "default=http://localhost:2380")]
    initial_cluster: String,
    /// List of this member's peer URLs to advertise to the rest of the cluster.
    #[arg(long, default_value = "http://localhost:2380", value_delimiter = ',')]
    initial_advertise_peer_urls: Vec<String>,
    /// Ignore snapshot integrity hash value (required if copied from data directory).
    #[arg(long)]
    skip_hash_check: bool,
}

fn fail(code: u8, message: &str) -> ExitCode {
    eprintln!("Error: {message}");
    ExitCode::from(code)
}

/// A log field's value: JSON number or string.
enum Field {
    Num(i64),
    Str(String),
}

/// A log line in etcdutl's zap console shape: RFC 3339 time, level, caller, message, and
/// the fields as JSON (`{"path": "…", "n": 1}`).
fn log_console(level: &str, caller: &str, msg: &str, fields: &[(&str, Field)]) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut line = format!("{}\t{level}\t{caller}\t{msg}", rfc3339_utc(now));
    if !fields.is_empty() {
        let parts: Vec<String> = fields
            .iter()
            .map(|(key, value)| match value {
                Field::Num(n) => format!("{key:?}: {n}"),
                Field::Str(text) => format!("{key:?}: {text:?}"),
            })
            .collect();
        line.push_str(&format!("\t{{{}}}", parts.join(", ")));
    }
    eprintln!("{line}");
}

/// `secs` since the Unix epoch as `2006-01-02T15:04:05Z` (civil date from days: Howard
/// Hinnant's algorithm).
fn rfc3339_utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

fn size_log_fields(stats: &tern_storage::btree::Stats) -> Vec<(&'static str, Field)> {
    defrag::size_fields(stats)
        .into_iter()
        .map(|(key, value)| match value.parse::<i64>() {
            Ok(n) => (key, Field::Num(n)),
            Err(_) => (key, Field::Str(value)),
        })
        .collect()
}

fn run_defrag(data_dir: PathBuf) -> ExitCode {
    let outcome = defrag::defrag_data_dir(
        &data_dir,
        |db| {
            eprintln!(
                "waiting for etcd to close and release its lock on {:?}. To defrag a running etcd instance, omit --data-dir.",
                db.display().to_string()
            )
        },
        |db, before| {
            let mut fields = vec![("path", Field::Str(db.display().to_string()))];
            fields.extend(size_log_fields(before));
            log_console("info", "ternutl/defrag.rs", "defragmenting", &fields);
        },
    );
    match outcome {
        Ok(done) => {
            let db = snapshot::db_path(&data_dir);
            let diff = |after: u64, before: u64| after as i64 - before as i64;
            let mut fields = vec![
                ("path", Field::Str(db.display().to_string())),
                (
                    "current-db-size-bytes-diff",
                    Field::Num(diff(done.after.db_size_bytes, done.before.db_size_bytes)),
                ),
            ];
            let mut sizes = size_log_fields(&done.after);
            let in_use = sizes.split_off(2);
            fields.extend(sizes);
            fields.push((
                "current-db-size-in-use-bytes-diff",
                Field::Num(diff(
                    done.after.db_size_in_use_bytes,
                    done.before.db_size_in_use_bytes,
                )),
            ));
            fields.extend(in_use);
            fields.push(("took", Field::Str(defrag::go_duration(done.took))));
            log_console(
                "info",
                "ternutl/defrag.rs",
                "finished defragmenting directory",
                &fields,
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(
            EXIT_ERROR,
            &format!(
                "Failed to defragment etcd data[{}] ({e})",
                data_dir.display()
            ),
        ),
    }
}

fn run_backup(args: BackupArgs) -> ExitCode {
    let config = BackupConfig {
        data_dir: args.data_dir,
        backup_dir: args.backup_dir,
        wal_dir: args.wal_dir,
        backup_wal_dir: args.backup_wal_dir,
        with_v3: args.with_v3,
    };
    let unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut log = |why: backup::Dropped, entry: &raft::eraftpb::Entry| {
        log_console(
            "info",
            "ternutl/backup.rs",
            why.message(),
            &[
                ("index", Field::Num(entry.index as i64)),
                ("term", Field::Num(entry.term as i64)),
            ],
        )
    };
    match backup::backup(&config, unix_ms, &mut log) {
        Ok(report) => {
            log_console(
                "info",
                "ternutl/backup.rs",
                "backed up the data dir for a new cluster",
                &[
                    (
                        "backup-dir",
                        Field::Str(config.backup_dir.display().to_string()),
                    ),
                    ("member-id", Field::Str(format!("{:x}", report.member_id))),
                    ("cluster-id", Field::Str(format!("{:x}", report.cluster_id))),
                    ("snapshot-index", Field::Num(report.snapshot_index as i64)),
                    ("entries", Field::Num(report.entries as i64)),
                ],
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(EXIT_ERROR, &e.0),
    }
}

/// A log line in etcd's zap JSON shape (what etcdctl's restore prints on stderr).
fn log_info(msg: &str, fields: &[(&str, String)]) {
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let mut line =
        format!("{{\"level\":\"info\",\"ts\":{ts},\"caller\":\"ternutl/snapshot\",\"msg\":{msg:?}");
    for (key, value) in fields {
        line.push_str(&format!(",{key:?}:{value:?}"));
    }
    line.push('}');
    eprintln!("{line}");
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Defrag { data_dir } => run_defrag(data_dir),
        Command::Backup(args) => run_backup(args),
        Command::Snapshot(SnapshotCommand::Status { files }) => {
            let [file] = files.as_slice() else {
                return fail(
                    EXIT_BAD_ARGS,
                    "snapshot status requires exactly one argument",
                );
            };
            let output = snapshot::status(file)
                .and_then(|status| snapshot::format_status(&status, &cli.write_out));
            match output {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(EXIT_ERROR, &e.0),
            }
        }
        Command::Snapshot(SnapshotCommand::Restore(args)) => {
            let [file] = args.files.as_slice() else {
                return fail(
                    EXIT_BAD_ARGS,
                    "snapshot restore requires exactly one argument",
                );
            };
            let data_dir = args
                .data_dir
                .unwrap_or_else(|| PathBuf::from(format!("{}.etcd", args.name)));
            let config = RestoreConfig {
                snapshot: file.clone(),
                name: args.name,
                data_dir: data_dir.clone(),
                initial_cluster: args.initial_cluster,
                initial_advertise_peer_urls: args.initial_advertise_peer_urls,
                skip_hash_check: args.skip_hash_check,
            };
            let dirs = [
                ("path", file.display().to_string()),
                (
                    "wal-dir",
                    data_dir.join("member").join("wal").display().to_string(),
                ),
                ("data-dir", data_dir.display().to_string()),
                (
                    "snap-dir",
                    data_dir.join("member").join("snap").display().to_string(),
                ),
            ];
            log_info("restoring snapshot", &dirs);
            match snapshot::restore(&config) {
                Ok(report) => {
                    for member in &report.members {
                        log_info(
                            "restored member of the new cluster",
                            &[
                                ("name", member.name.clone()),
                                ("peer-urls", member.peer_urls.join(",")),
                            ],
                        );
                    }
                    log_info("restored snapshot", &dirs);
                    ExitCode::SUCCESS
                }
                Err(e) => fail(EXIT_ERROR, &e.0),
            }
        }
    }
}
