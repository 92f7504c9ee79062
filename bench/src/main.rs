//! tern-bench: a low-level load generator for etcd's v3 gRPC API, reproducing etcd's
//! `tools/benchmark` (same subcommands, flags, defaults and Summary output) so that its
//! figures can be compared with the official tool's and used against tern and etcd alike.
//!
//! Shape of every run: `--conns` gRPC connections are shared round-robin by `--clients`
//! workers (tokio tasks); each worker issues requests back to back (closed loop) unless
//! `--rate` limits them. Workers fold their latencies into one `report::Recorder` per
//! report, in batches (`cmd::closed_loop`). After the report, the tool's own CPU use
//! (getrusage user+sys over wall time) is printed, to show it was not the bottleneck.

mod auth;
mod channel;
mod client;
mod cmd;
mod proto;
mod report;
mod tls;
mod util;

use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};

use crate::report::{Precision, Report};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "tern-bench",
    about = "A low-level benchmark tool for etcd3 and tern",
    version
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: cmd::Command,
}

/// Flags shared by every subcommand (etcd's persistent flags).
#[derive(clap::Args, Clone)]
pub struct Global {
    /// gRPC endpoints (comma-separated); connection i dials endpoint i mod count
    #[arg(
        long,
        global = true,
        value_delimiter = ',',
        default_value = "127.0.0.1:2379"
    )]
    pub endpoints: Vec<String>,
    /// Total number of gRPC connections
    #[arg(long, global = true, default_value_t = 1)]
    pub conns: usize,
    /// Total number of gRPC clients
    #[arg(long, global = true, default_value_t = 1)]
    pub clients: usize,
    /// Connect only to the leader node
    #[arg(long, global = true)]
    pub target_leader: bool,
    /// Use full floating point precision
    #[arg(long, global = true)]
    pub precise: bool,
    /// Identify HTTPS client using this SSL certificate file
    #[arg(long, global = true)]
    pub cert: Option<String>,
    /// Identify HTTPS client using this SSL key file
    #[arg(long, global = true)]
    pub key: Option<String>,
    /// Verify certificates of HTTPS-enabled servers using this CA bundle
    #[arg(long, global = true)]
    pub cacert: Option<String>,
    /// Skip server certificate verification
    #[arg(long, global = true)]
    pub insecure_skip_tls_verify: bool,
    /// Provide username[:password] and prompt if password is not supplied
    #[arg(long, global = true)]
    pub user: Option<String>,
    /// Dial timeout for client connections (Go duration, e.g. 2s; 0 = none)
    #[arg(long, global = true, value_parser = util::parse_go_duration, default_value = "0")]
    pub dial_timeout: Duration,
    /// Output format: text is etcd's layout; json and csv are for machines
    #[arg(long, global = true, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

#[derive(ValueEnum, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Text,
    Json,
    Csv,
}

/// Where results go. Text mode prints as etcd's tool does, as soon as each part is ready;
/// json and csv collect the reports and print them at the end with the CPU figures.
pub struct Output {
    format: OutputFormat,
    precision: Precision,
    reports: Vec<Report>,
    extra: serde_json::Map<String, serde_json::Value>,
    wall_start: Instant,
    cpu_start: (Duration, Duration),
}

impl Output {
    fn new(global: &Global) -> Output {
        Output {
            format: global.output,
            precision: Precision {
                precise: global.precise,
            },
            reports: Vec::new(),
            extra: serde_json::Map::new(),
            wall_start: Instant::now(),
            cpu_start: util::cpu_times(),
        }
    }

    /// A line of text that etcd's tool prints (text mode only).
    pub fn note(&mut self, text: &str) {
        if self.format == OutputFormat::Text {
            print!("{text}");
        }
    }

    /// A report, preceded in text mode by `heading` and followed by `trailer` (etcd's tool
    /// uses Println for some reports and Printf for others; the trailer keeps that).
    pub fn report(&mut self, heading: &str, report: Report, trailer: &str) {
        if self.format == OutputFormat::Text {
            print!("{heading}{}{trailer}", report.text(self.precision));
        }
        self.reports.push(report);
    }

    /// A named figure outside any report (e.g. HashKV), printed as text by the caller.
    pub fn extra(&mut self, key: &str, value: serde_json::Value) {
        self.extra.insert(key.to_string(), value);
    }

    fn finish(self) {
        let wall = self.wall_start.elapsed();
        let (user_end, sys_end) = util::cpu_times();
        let user = user_end.saturating_sub(self.cpu_start.0);
        let sys = sys_end.saturating_sub(self.cpu_start.1);
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let cpu_pct = 100.0 * (user + sys).as_secs_f64() / wall.as_secs_f64().max(1e-9);
        match self.format {
            OutputFormat::Text => println!(
                "\nLoad generator CPU: {:.2}s user + {:.2}s sys over {:.2}s wall = {cpu_pct:.0}% of one core ({cores} cores available)",
                user.as_secs_f64(),
                sys.as_secs_f64(),
                wall.as_secs_f64()
            ),
            OutputFormat::Json => {
                let doc = serde_json::json!({
                    "reports": self.reports.iter().map(Report::json).collect::<Vec<_>>(),
                    "extra": self.extra,
                    "cpu": {
                        "user_s": user.as_secs_f64(),
                        "sys_s": sys.as_secs_f64(),
                        "wall_s": wall.as_secs_f64(),
                        "percent_of_one_core": cpu_pct,
                        "cores": cores,
                    },
                });
                println!("{doc}");
            }
            OutputFormat::Csv => {
                println!("{},cpu_user_s,cpu_sys_s,wall_s,cpu_percent_of_one_core", Report::csv_header());
                for r in &self.reports {
                    println!(
                        "{},{},{},{},{cpu_pct}",
                        r.csv_row(),
                        user.as_secs_f64(),
                        sys.as_secs_f64(),
                        wall.as_secs_f64()
                    );
                }
            }
        }
    }
}

/// The runtime the workers and connections run on. On one CPU (tern-bench pinned there,
/// as `bench/compare` does) a current-thread runtime: every task, connection and timer
/// on the one thread, with no work stealing, no cross-thread wake-ups and no atomics
/// between scheduler threads. With more CPUs, tokio's multi-thread runtime, one worker
/// per CPU this process may run on.
fn runtime() -> tokio::runtime::Runtime {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut builder = if cpus == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(cpus);
        builder
    };
    builder.enable_all().build().expect("tokio runtime starts")
}

fn main() {
    let cli = Cli::parse();
    let runtime = runtime();
    let mut out = Output::new(&cli.global);
    let result = runtime.block_on(cmd::run(cli.command, &cli.global, &mut out));
    match result {
        Ok(()) => out.finish(),
        Err(e) => {
            eprintln!("tern-bench: {e}");
            std::process::exit(1);
        }
    }
}
