//! `tern-wal`: offline inspection and repair of a tern WAL (format: storage/docs/wal.md).
//!
//! - `dump DIR`    prints every segment, batch and record;
//! - `verify DIR`  checks every CRC and the log's replay rules; exit 0 clean, 1 torn tail
//!   (which opening the WAL would cut), 2 corruption;
//! - `repair DIR`  zeroes a torn tail; with `--discard-after-corruption` also cuts the log at
//!   the first corrupt batch and moves later segments aside as `*.broken`.
//!
//! DIR is a WAL directory or a data dir (then `DIR/member/wal` is used). The server must not be
//! running.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tern_storage::wal::repair::{repair, verify, Problem, Report};
use tern_storage::wal::wal_dir;
use tern_storage::wal::WalRecord;

#[derive(Parser)]
#[command(
    name = "tern-wal",
    about = "Inspect, verify and repair a tern write-ahead log"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print every segment, batch and record.
    Dump {
        dir: PathBuf,
        /// Also print entry payloads as hex (first 64 bytes).
        #[arg(long)]
        data: bool,
    },
    /// Check every CRC and the replay rules without changing anything.
    Verify { dir: PathBuf },
    /// Cut a torn tail; with --discard-after-corruption, also cut at the first corruption.
    Repair {
        dir: PathBuf,
        /// Discard everything from the first corrupt batch on (later segments are renamed
        /// `*.broken`, not deleted). Acknowledged entries after that point are lost.
        #[arg(long)]
        discard_after_corruption: bool,
    },
}

fn resolve(dir: &Path) -> PathBuf {
    let nested = wal_dir(dir);
    if nested.is_dir() {
        nested
    } else {
        dir.to_path_buf()
    }
}

fn describe(problem: &Problem) -> String {
    match problem {
        Problem::TornTail {
            segment,
            offset,
            nonzero_end,
            reason,
        } => format!(
            "torn tail in {} at offset {offset} ({} bytes): {reason}",
            segment.display(),
            nonzero_end - offset
        ),
        Problem::Corrupt {
            segment,
            offset,
            reason,
            ..
        } => {
            format!(
                "CORRUPT: {} at offset {offset}: {reason}",
                segment.display()
            )
        }
        Problem::MissingSegment { after, next } => format!(
            "CORRUPT: segment missing between {} and {}",
            after.display(),
            next.display()
        ),
    }
}

fn summary(report: &Report) {
    let records: usize = report
        .segments
        .iter()
        .flat_map(|s| &s.scan.batches)
        .map(|b| b.records.len())
        .sum();
    println!(
        "{} segments, {records} records, entries {}..={}",
        report.segments.len(),
        report.first_index,
        report.last_index
    );
}

fn dump(report: &Report, data: bool) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    for segment in &report.segments {
        writeln!(
            out,
            "segment {} ({} bytes)",
            segment.path.display(),
            segment.file_bytes
        )?;
        for batch in &segment.scan.batches {
            writeln!(
                out,
                "  batch @{} {} bytes, {} records",
                batch.offset,
                batch.batch_bytes,
                batch.records.len()
            )?;
            for rec in &batch.records {
                match &rec.record {
                    WalRecord::Entry {
                        raft_index,
                        term,
                        data: bytes,
                    } => {
                        write!(
                            out,
                            "    @{} entry index={raft_index} term={term} len={}",
                            rec.frame_offset,
                            bytes.len()
                        )?;
                        if data {
                            let hex: String =
                                bytes.iter().take(64).map(|b| format!("{b:02x}")).collect();
                            write!(out, " data={hex}")?;
                        }
                        writeln!(out)?;
                    }
                    other => writeln!(out, "    @{} {other:?}", rec.frame_offset)?,
                }
            }
        }
        writeln!(out, "  end: {:?}", segment.scan.end)?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Dump { dir, data } => match verify(&resolve(&dir)) {
            Ok(report) => {
                if dump(&report, data).is_err() {
                    // stdout closed (e.g. piped into `head`): nothing more to say.
                    return ExitCode::SUCCESS;
                }
                summary(&report);
                if let Some(problem) = &report.problem {
                    println!("{}", describe(problem));
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("tern-wal: {e}");
                ExitCode::from(3)
            }
        },
        Command::Verify { dir } => match verify(&resolve(&dir)) {
            Ok(report) => {
                summary(&report);
                match &report.problem {
                    None => {
                        println!("ok");
                        ExitCode::SUCCESS
                    }
                    Some(problem @ Problem::TornTail { .. }) => {
                        println!("{}", describe(problem));
                        ExitCode::from(1)
                    }
                    Some(problem) => {
                        println!("{}", describe(problem));
                        ExitCode::from(2)
                    }
                }
            }
            Err(e) => {
                eprintln!("tern-wal: {e}");
                ExitCode::from(3)
            }
        },
        Command::Repair {
            dir,
            discard_after_corruption,
        } => match repair(&resolve(&dir), discard_after_corruption) {
            Ok(outcome) => {
                if let Some(why) = &outcome.refused {
                    println!("refused: {why}");
                    return ExitCode::from(2);
                }
                match &outcome.zeroed {
                    Some((segment, offset, bytes)) => {
                        println!(
                            "zeroed {bytes} bytes of {} from offset {offset}",
                            segment.display()
                        )
                    }
                    None if outcome.moved_aside.is_empty() => println!("nothing to repair"),
                    None => {}
                }
                for path in &outcome.moved_aside {
                    println!("moved aside {}", path.display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("tern-wal: {e}");
                ExitCode::from(3)
            }
        },
    }
}
