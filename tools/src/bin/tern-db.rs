//! `tern-db`: offline inspection of a tern B+tree database file (format in
//! `storage/docs/btree.md`).
//!
//! - `tern-db check <file>`: every page reachable exactly once or free; exit 1 otherwise.
//! - `tern-db stats <file>`: sizes, page counts and entries per bucket.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tern_storage::btree::{check_file, CheckReport, PAGE_BYTES};

#[derive(Parser)]
#[command(name = "tern-db", about = "Inspect a tern B+tree database file")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Consistency check: every page reachable exactly once, or free.
    Check { file: PathBuf },
    /// File size, in-use size, page counts and entries per bucket.
    Stats { file: PathBuf },
}

fn print_stats(report: &CheckReport) {
    let meta = report.meta.expect("a report with stats has a meta");
    let free_bytes = report.free_pages * PAGE_BYTES as u64;
    println!("txid: {}", meta.txid);
    for (slot, state) in report.meta_slots.iter().enumerate() {
        match state {
            Ok(txid) => println!("meta slot {slot}: txid {txid}"),
            Err(error) => println!("meta slot {slot}: invalid ({error})"),
        }
    }
    println!("db size: {} bytes", report.file_bytes);
    println!(
        "db size in use: {} bytes",
        (meta.page_count * PAGE_BYTES as u64).saturating_sub(free_bytes)
    );
    println!("pages: {} (page size {PAGE_BYTES})", meta.page_count);
    println!("  branch: {}", report.branch_pages);
    println!("  leaf: {}", report.leaf_pages);
    println!("  overflow: {}", report.overflow_pages);
    println!("  freelist: {}", report.freelist_pages);
    println!("  free: {}", report.free_pages);
    println!("tree depth: {}", report.depth);
    println!("entries: {}", report.entries);
    for (bucket, entries) in &report.entries_per_bucket {
        println!("  {}: {entries}", String::from_utf8_lossy(bucket));
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (Command::Check { file } | Command::Stats { file }) = &cli.command;
    let report = match check_file(file) {
        Ok(report) => report,
        Err(error) => {
            eprintln!("tern-db: {}: {error}", file.display());
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Stats { .. } => {
            print_stats(&report);
            ExitCode::SUCCESS
        }
        Command::Check { .. } if report.is_ok() => {
            let meta = report.meta.expect("a passing report has a meta");
            println!(
                "ok: txid {}, {} pages, {} entries",
                meta.txid, meta.page_count, report.entries
            );
            ExitCode::SUCCESS
        }
        Command::Check { .. } => {
            for problem in &report.problems {
                println!("problem: {problem}");
            }
            println!("FAILED: {} problem(s)", report.problems.len());
            ExitCode::FAILURE
        }
    }
}
