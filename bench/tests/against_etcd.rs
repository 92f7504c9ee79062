//! Runs every tern-bench subcommand briefly against a real etcd started on free loopback
//! ports, and checks from the JSON output that each issued exactly its total without
//! errors (and that `disturb` times a SIGSTOP'd etcd from the intended send times).
//! Skipped (with a message) when `etcd` is not on PATH, unless TERN_REQUIRE_ETCD=1 makes
//! that a failure.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

struct Etcd {
    child: Child,
    data_dir: PathBuf,
    endpoint: String,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn bench(endpoint: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tern-bench"))
        .args(["--endpoints", endpoint, "--output", "json"])
        .args(args)
        .output()
        .expect("tern-bench runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn start_etcd() -> Option<Etcd> {
    if Command::new("etcd")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_err()
    {
        assert!(
            std::env::var("TERN_REQUIRE_ETCD").as_deref() != Ok("1"),
            "etcd is not on PATH"
        );
        eprintln!("skipped: etcd is not on PATH");
        return None;
    }
    let (client_port, peer_port) = (free_port(), free_port());
    static STARTED: AtomicUsize = AtomicUsize::new(0);
    let n = STARTED.fetch_add(1, Ordering::Relaxed);
    let data_dir = std::env::temp_dir().join(format!("tern-bench-test-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data_dir);
    let client_url = format!("http://127.0.0.1:{client_port}");
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    let child = Command::new("etcd")
        .args(["--name", "t", "--data-dir"])
        .arg(&data_dir)
        .args([
            "--listen-client-urls",
            &client_url,
            "--advertise-client-urls",
            &client_url,
        ])
        .args([
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
        ])
        .args([
            "--initial-cluster",
            &format!("t={peer_url}"),
            "--initial-cluster-token",
            "t",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("etcd starts");
    let etcd = Etcd {
        child,
        data_dir,
        endpoint: format!("127.0.0.1:{client_port}"),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !bench(&etcd.endpoint, &["put", "--total", "1"]).0 {
        assert!(Instant::now() < deadline, "etcd did not become ready");
        std::thread::sleep(Duration::from_millis(200));
    }
    Some(etcd)
}

/// Runs one subcommand and returns (count, errors_total) of each report by name.
fn run(endpoint: &str, args: &[&str]) -> Vec<(String, u64, u64)> {
    let (ok, stdout, stderr) = bench(endpoint, args);
    assert!(ok, "tern-bench {args:?} failed: {stderr}");
    let doc: serde_json::Value = serde_json::from_str(&stdout).expect("json output");
    assert!(doc["cpu"]["wall_s"].as_f64().unwrap() > 0.0);
    doc["reports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_string(),
                r["count"].as_u64().unwrap(),
                r["errors_total"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// A subcommand's arguments and the (report, count) pairs it must produce.
type Case<'a> = (&'a [&'a str], &'a [(&'a str, u64)]);

#[test]
fn every_subcommand_runs_its_total_against_etcd() {
    let Some(etcd) = start_etcd() else { return };
    let ep = etcd.endpoint.as_str();
    let cases: &[Case] = &[
        (
            &[
                "--conns",
                "2",
                "--clients",
                "8",
                "put",
                "--total",
                "300",
                "--val-size",
                "256",
                "--key-space-size",
                "1000",
            ],
            &[("put", 300)],
        ),
        (
            &[
                "put",
                "--total",
                "50",
                "--sequential-keys",
                "--key-space-size",
                "10",
                "--rate",
                "1000",
            ],
            &[("put", 50)],
        ),
        (
            &["--clients", "4", "range", "foo", "--total", "200"],
            &[("range", 200)],
        ),
        (
            &[
                "--clients",
                "4",
                "range",
                "a",
                "z",
                "--consistency",
                "s",
                "--total",
                "100",
                "--limit",
                "5",
            ],
            &[("range", 100)],
        ),
        (
            &["range", "", "--prefix", "--count-only", "--total", "20"],
            &[("range", 20)],
        ),
        (
            &[
                "--clients",
                "4",
                "txn-put",
                "--txn-ops",
                "3",
                "--key-space-size",
                "100",
                "--total",
                "100",
            ],
            &[("txn-put", 100)],
        ),
        (
            &[
                "--clients",
                "4",
                "txn-mixed",
                "--key-space-size",
                "100",
                "--total",
                "100",
            ],
            &[],
        ),
        (
            &["--clients", "4", "lease-keepalive", "--total", "100"],
            &[("lease-keepalive", 100)],
        ),
        // One watched key: 20 watchers each see all 20 puts.
        (
            &[
                "--conns",
                "2",
                "--clients",
                "2",
                "watch",
                "--streams",
                "4",
                "--watch-per-stream",
                "5",
                "--put-total",
                "20",
            ],
            &[("watch-make", 20), ("watch-put", 400)],
        ),
        (
            &[
                "watch-latency",
                "--streams",
                "2",
                "--watchers-per-stream",
                "2",
                "--put-total",
                "20",
                "--put-rate",
                "200",
            ],
            &[("watch-latency-put", 20), ("watch-latency-watch", 80)],
        ),
        (
            &[
                "watch-get",
                "--watchers",
                "50",
                "--streams",
                "2",
                "--events",
                "4",
            ],
            &[],
        ),
        (
            &[
                "--clients",
                "4",
                "stm",
                "--isolation",
                "ss",
                "--keys",
                "10",
                "--keys-per-txn",
                "3",
                "--total",
                "50",
            ],
            &[("stm", 50)],
        ),
        (
            &[
                "--clients",
                "3",
                "stm",
                "--stm-locker",
                "lock-client",
                "--keys",
                "10",
                "--total",
                "15",
            ],
            &[("stm", 15)],
        ),
        (
            &[
                "--clients",
                "3",
                "stm",
                "--stm-locker",
                "lock-rpc",
                "--keys",
                "10",
                "--total",
                "15",
            ],
            &[("stm", 15)],
        ),
    ];
    for (args, expected) in cases {
        let reports = run(ep, args);
        for (name, count, errors) in &reports {
            assert_eq!(*errors, 0, "{args:?}: report {name} has errors");
            assert!(
                *count > 0 || name.starts_with("txn-mixed"),
                "{args:?}: report {name} is empty"
            );
        }
        for (name, count) in *expected {
            let found = reports
                .iter()
                .find(|r| r.0 == *name)
                .unwrap_or_else(|| panic!("{args:?}: no report {name}"));
            assert_eq!(found.1, *count, "{args:?}: report {name}");
        }
    }
    // txn-mixed splits its total between the read and write reports.
    let reports = run(
        ep,
        &[
            "--clients",
            "4",
            "txn-mixed",
            "--key-space-size",
            "100",
            "--total",
            "100",
        ],
    );
    assert_eq!(reports.iter().map(|r| r.1).sum::<u64>(), 100);
}

#[test]
fn bad_flags_get_etcds_messages() {
    let Some(etcd) = start_etcd() else { return };
    let (ok, _, stderr) = bench(&etcd.endpoint, &["put", "--key-space-size", "0"]);
    assert!(
        !ok && stderr.contains("expected positive --key-space-size, got (0)"),
        "{stderr}"
    );
    let (ok, _, stderr) = bench(
        &etcd.endpoint,
        &["txn-put", "--txn-ops", "5", "--key-space-size", "2"],
    );
    assert!(
        !ok && stderr.contains("expected --txn-ops no larger than --key-space-size"),
        "{stderr}"
    );
    let (ok, _, stderr) = bench(
        &etcd.endpoint,
        &["range", "k", "--count-only", "--keys-only"],
    );
    assert!(
        !ok && stderr.contains("cannot be set at the same time"),
        "{stderr}"
    );
}

/// `disturb` keeps its schedule through a stall: etcd is stopped (SIGSTOP) for a second
/// as the disturbance, and the run must still have sent every scheduled put (none
/// skipped while the server was frozen), timed from its intended send time, so the
/// slowest put took at least as long as the stop; the fdatasync probe must have run.
#[test]
fn disturb_measures_a_stall_from_the_intended_send_time() {
    let Some(etcd) = start_etcd() else { return };
    let pid = etcd.child.id().to_string();
    let probe_dir = etcd.data_dir.clone();
    let stall = format!("kill -STOP {pid}; sleep 1; kill -CONT {pid}");
    let (ok, stdout, stderr) = bench(
        &etcd.endpoint,
        &[
            "--conns",
            "2",
            "--clients",
            "4",
            "disturb",
            "--rate",
            "200",
            "--warmup",
            "500ms",
            "--tail",
            "500ms",
            "--fsync-probe-dir",
            probe_dir.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            &stall,
        ],
    );
    assert!(ok, "tern-bench disturb failed: {stderr}");
    let doc: serde_json::Value = serde_json::from_str(&stdout).expect("json output");
    let put = &doc["reports"][0];
    let extra = &doc["extra"];
    assert_eq!(put["name"], "put");
    assert_eq!(put["errors_total"], 0, "{stdout}");
    let sent = extra["puts_sent"].as_u64().unwrap();
    let scheduled = extra["puts_scheduled"].as_u64().unwrap();
    assert_eq!(put["count"].as_u64().unwrap(), sent);
    // Each of the 4 workers may round its last slot up.
    assert!(
        sent.abs_diff(scheduled) <= 4,
        "sent {sent} of {scheduled} scheduled: the load skipped its missed send times"
    );
    let (start, end) = (
        extra["disturbance_start_s"].as_f64().unwrap(),
        extra["disturbance_end_s"].as_f64().unwrap(),
    );
    assert!(end - start >= 1.0, "the disturbance took {start}..{end}");
    assert!(
        // The put meant to go out first after the stop began waited for all of it, less
        // at most one send interval (5 ms at 200 puts/s).
        put["slowest_s"].as_f64().unwrap() >= 0.9,
        "a 1 s stop must show as a put of about 1 s: {stdout}"
    );
    assert!(extra["fsync_probe"]["count"].as_u64().unwrap() > 0);
    assert!(
        std::fs::read_dir(&probe_dir)
            .unwrap()
            .flatten()
            .all(|e| !e.file_name().to_string_lossy().contains("fsync-probe")),
        "the probe file is left behind"
    );
}
