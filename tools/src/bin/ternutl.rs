//! `ternutl`: etcdutl's offline commands for tern data dirs and etcd snapshot files, with
//! etcdutl's names, flags, output and error texts.
//!
//! - `ternutl snapshot status FILE [-w simple|table|json|fields]`
//! - `ternutl snapshot restore FILE [--name] [--data-dir] [--initial-cluster]
//!   [--initial-advertise-peer-urls] [--skip-hash-check]`
//!
//! A snapshot from real etcd or from tern (`etcdctl snapshot save`) restores into a tern
//! data dir; start tern on it with the same `--name`, `--initial-cluster`,
//! `--initial-advertise-peer-urls` and the `--initial-cluster-token` of the new cluster
//! (see `tern_tools::snapshot`). etcdutl's `--initial-cluster-token` is not accepted by
//! restore: tern derives the member and cluster IDs from it when it first starts on the
//! restored dir, so it is given there.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
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
