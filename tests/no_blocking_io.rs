//! Checks that no glommio executor thread makes a blocking file-I/O system call while tern
//! serves (issue 11 §1): runs the real tern under `strace -f`, drives puts past the backend
//! batch interval (backend commits), enough puts for two raft snapshots
//! (`--snapshot-count 100`) and an `etcdctl defrag`, then reads the trace and fails if any
//! executor thread called fsync/fdatasync/sync_file_range/msync, wrote or truncated a
//! regular file, or opened/renamed/unlinked/stat'ed a path on disk while serving.
//!
//! How threads are told apart: glommio names an executor's thread `NAME-N` (prctl
//! PR_SET_NAME, traced) and builds its io_uring rings on that thread, so an executor thread
//! is one that called `io_uring_setup`. glommio's blocking-pool threads are spawned by the
//! executor without a name and inherit its comm (in /proc they look like the executor), so
//! names come from the traced prctl calls and clone parentage, not from /proc. Socket,
//! pipe and eventfd writes are fine (strace -y shows what each fd is); I/O submitted through
//! io_uring (the WAL, glommio's DmaFile) is not a syscall of its own and does not show.
//!
//! The window checked runs from the "ready to serve client requests" log write to SIGTERM:
//! startup and shutdown are printed but not judged.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use common::{etcdctl, free_port, stderr, tern_binary};

/// Startup under strace is slow (every thread's syscalls stop in the tracer).
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long tern may take to exit after SIGTERM.
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);
/// Puts before the defrag: more than two snapshots' worth at --snapshot-count 100.
const PUTS: usize = 250;
/// Longer than the backend batch interval (100 ms by default), so idle ticks commit too.
const PAST_BATCH_INTERVAL: Duration = Duration::from_millis(400);
/// Distinct flagged (thread, call, file) lines in the failure message (all are counted).
const LISTED_CALLS_MAX: usize = 40;

/// System calls traced: the blocking ones judged below, plus what names threads.
const TRACED: &str = "%file,fsync,fdatasync,pwrite64,pwritev,pwritev2,sync_file_range,write,\
ftruncate,fallocate,msync,syncfs,prctl,clone,clone3,io_uring_setup";

/// Calls that block on the disk whatever the fd is.
const SYNC_CALLS: [&str; 5] = ["fsync", "fdatasync", "sync_file_range", "msync", "syncfs"];
/// Calls that block when their first argument is a regular file.
const FD_WRITE_CALLS: [&str; 6] = [
    "write",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "ftruncate",
    "fallocate",
];
/// Calls whose two first paths both name files (the rest name one).
const TWO_PATH_CALLS: [&str; 6] = [
    "rename",
    "renameat",
    "renameat2",
    "link",
    "linkat",
    "symlinkat",
];
/// In-memory path lookups that never touch the disk.
const HARMLESS_FILE_CALLS: [&str; 1] = ["getcwd"];
/// Pseudo filesystems: no disk behind them.
const PSEUDO_FS: [&str; 3] = ["/proc/", "/sys/", "/dev/"];

/// tern under strace; kills both (tern first: a killed tracer leaves its tracee running).
struct Traced {
    strace: Child,
    tern_pid: Option<u32>,
    endpoint: String,
    data_dir: PathBuf,
    trace: PathBuf,
    log: Arc<Mutex<Vec<String>>>,
}

impl Drop for Traced {
    fn drop(&mut self) {
        if let Some(pid) = self.tern_pid.or_else(|| child_of(self.strace.id())) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        let _ = self.strace.kill();
        let _ = self.strace.wait();
        let _ = std::fs::remove_dir_all(&self.data_dir);
        let _ = std::fs::remove_file(&self.trace);
    }
}

/// The first child process of `pid` (strace's only child is tern).
fn child_of(pid: u32) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn start_traced() -> Traced {
    let client_port = free_port();
    let peer_port = free_port();
    let base =
        std::env::temp_dir().join(format!("tern-noblock-{}-{client_port}", std::process::id()));
    let data_dir = base.with_extension("data");
    let trace = base.with_extension("strace");
    let client_url = format!("http://127.0.0.1:{client_port}");
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    let mut command = Command::new("strace");
    command
        .args(["-f", "-qq", "-tt", "-y", "-s", "256", "-e"])
        .arg(format!("trace={TRACED}"))
        .arg("-o")
        .arg(&trace)
        .arg("--")
        .arg(tern_binary())
        .args(["--name", "noblock", "--data-dir"])
        .arg(&data_dir)
        .args(["--listen-client-urls", &client_url])
        .args(["--advertise-client-urls", &client_url])
        .args(["--listen-peer-urls", &peer_url])
        .args(["--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("noblock={peer_url}")])
        .args(["--snapshot-count", "100"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut strace = command
        .spawn()
        .expect("strace not found: the test command (./test.sh) installs it with apt-get");
    let pipe = strace.stderr.take().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let (ready_tx, ready_rx) = mpsc::channel();
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if line.contains("ready to serve client requests") {
                let _ = ready_tx.send(());
            }
            sink.lock().unwrap().push(line);
        }
    });
    let mut traced = Traced {
        strace,
        tern_pid: None,
        endpoint: format!("127.0.0.1:{client_port}"),
        data_dir,
        trace,
        log,
    };
    if ready_rx.recv_timeout(STARTUP_TIMEOUT).is_err() {
        panic!(
            "tern under strace did not become ready; log:\n{}",
            traced.log.lock().unwrap().join("\n")
        );
    }
    traced.tern_pid = Some(child_of(traced.strace.id()).expect("tern runs under strace"));
    traced
}

fn ok(endpoint: &str, args: &[&str]) {
    // Under strace -f every system call of tern's threads stops for the tracer, so a dial
    // and its HTTP/2 handshake can outlast etcdctl's 2 s default dial timeout on a busy
    // machine (seen: "all SubConns are in TransientFailure" at load average 10+). The
    // bounds are generous, not a retry: one attempt, which must succeed.
    let mut with_timeouts = vec!["--dial-timeout=20s", "--command-timeout=30s"];
    with_timeouts.extend_from_slice(args);
    let out = etcdctl(endpoint, &with_timeouts, None);
    assert!(
        out.status.success(),
        "etcdctl {args:?} failed: {}",
        stderr(&out)
    );
}

/// What /proc says each thread is called, right now.
fn proc_thread_names(pid: u32) -> BTreeMap<u32, String> {
    let mut names = BTreeMap::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            let Ok(tid) = task.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if let Ok(comm) = std::fs::read_to_string(task.path().join("comm")) {
                names.insert(tid, comm.trim().to_string());
            }
        }
    }
    names
}

fn db_modified(data_dir: &Path) -> std::time::SystemTime {
    std::fs::metadata(data_dir.join("member/snap/db"))
        .and_then(|m| m.modified())
        .expect("the backend db exists")
}

/// One traced call, its unfinished/resumed halves joined.
struct Call {
    tid: u32,
    time: String,
    name: String,
    /// Everything after the name: arguments, " = ", result.
    text: String,
}

/// Parses strace -f -tt output ("TID HH:MM:SS.micros call(...) = r"), joining each
/// "<unfinished ...>" line with its "<... NAME resumed>" line. Signals ("--- SIG... ---")
/// come back with the signal as the name and "---" as the text.
fn parse_trace(text: &str) -> Vec<Call> {
    let mut calls = Vec::new();
    let mut pending: HashMap<u32, (String, String)> = HashMap::new();
    for line in text.lines() {
        // strace pads the thread id: "1234  20:51:10.603714 call(...)".
        let Some((tid, after)) = line.trim_start().split_once(' ') else {
            continue;
        };
        let Some((time, rest)) = after.trim_start().split_once(' ') else {
            continue;
        };
        let Ok(tid) = tid.parse::<u32>() else {
            continue;
        };
        let rest = rest.trim_start();
        let joined = if let Some(resumed) = rest.strip_prefix("<... ") {
            let Some((_, tail)) = resumed.split_once(" resumed>") else {
                continue;
            };
            match pending.remove(&tid) {
                Some((start_time, head)) => (start_time, format!("{head}{tail}")),
                None => continue,
            }
        } else if let Some(head) = rest.strip_suffix(" <unfinished ...>") {
            pending.insert(tid, (time.to_string(), head.to_string()));
            continue;
        } else if let Some(signal) = rest.strip_prefix("--- ") {
            let name = signal.split_whitespace().next().unwrap_or("").to_string();
            calls.push(Call {
                tid,
                time: time.to_string(),
                name,
                text: "---".to_string(),
            });
            continue;
        } else {
            (time.to_string(), rest.to_string())
        };
        let (time, full) = joined;
        let Some(paren) = full.find('(') else {
            continue;
        };
        calls.push(Call {
            tid,
            time,
            name: full[..paren].to_string(),
            text: full[paren..].to_string(),
        });
    }
    calls
}

/// The quoted strings of a call's arguments (before " = "), unescaped enough to compare.
fn quoted_args(text: &str) -> Vec<String> {
    let args = text.rsplit_once(") = ").map_or(text, |(args, _)| args);
    let mut out = Vec::new();
    let mut chars = args.chars();
    while let Some(c) = chars.next() {
        if c == '"' {
            let mut s = String::new();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(e) = chars.next() {
                            s.push(e);
                        }
                    }
                    '"' => break,
                    c => s.push(c),
                }
            }
            out.push(s);
        }
    }
    out
}

/// What strace -y says the first argument's fd is ("5</path>" -> "/path").
fn first_fd_target(text: &str) -> Option<&str> {
    let inner = text.strip_prefix('(')?;
    let open = inner.find('<')?;
    if !inner[..open]
        .chars()
        .all(|c| c.is_ascii_digit() || c == '-')
    {
        return None;
    }
    let close = inner[open..].find('>')? + open;
    Some(&inner[open + 1..close])
}

fn on_disk(path: &str) -> bool {
    !path.is_empty() && !PSEUDO_FS.iter().any(|p| path.starts_with(p))
}

fn is_regular_file(target: &str) -> bool {
    target.starts_with('/') && on_disk(target)
}

/// Why this call blocks on the disk, if it does.
fn blocking_reason(call: &Call) -> Option<String> {
    let name = call.name.as_str();
    if SYNC_CALLS.contains(&name) {
        return Some(format!(
            "{name} {}",
            first_fd_target(&call.text).unwrap_or("?")
        ));
    }
    if FD_WRITE_CALLS.contains(&name) {
        let target = first_fd_target(&call.text)?;
        return is_regular_file(target).then(|| format!("{name} to regular file {target}"));
    }
    if matches!(name, "prctl" | "clone" | "clone3" | "io_uring_setup") || name.starts_with("SIG") {
        return None;
    }
    if HARMLESS_FILE_CALLS.contains(&name) {
        return None;
    }
    // A %file call: judge the path(s) it names (an empty path means the fd argument).
    let strings = quoted_args(&call.text);
    let wanted = if TWO_PATH_CALLS.contains(&name) { 2 } else { 1 };
    let mut paths: Vec<String> = strings.into_iter().take(wanted).collect();
    if paths.iter().all(|p| p.is_empty()) {
        paths = first_fd_target(&call.text)
            .map(|t| vec![t.to_string()])
            .unwrap_or_default();
    }
    let disk: Vec<&String> = paths.iter().filter(|p| on_disk(p)).collect();
    (!disk.is_empty()).then(|| {
        format!(
            "{name} {}",
            disk.iter()
                .map(|p| p.as_str())
                .collect::<Vec<_>>()
                .join(" -> ")
        )
    })
}

#[derive(Default)]
struct ThreadInfo {
    name: Option<String>,
    parent: Option<u32>,
    executor: bool,
    /// (syscall, serving window?) -> count
    counts: BTreeMap<(String, bool), u64>,
}

fn describe(threads: &HashMap<u32, ThreadInfo>, tid: u32, main_tid: u32) -> String {
    let info = threads.get(&tid);
    match info.and_then(|i| i.name.clone()) {
        Some(name) => name,
        None if tid == main_tid => "main".to_string(),
        None => match info.and_then(|i| i.parent) {
            Some(parent) => format!(
                "unnamed, spawned by {}",
                describe(threads, parent, main_tid)
            ),
            None => "unnamed".to_string(),
        },
    }
}

#[test]
fn executor_threads_make_no_blocking_io_calls() {
    let mut traced = start_traced();
    let endpoint = traced.endpoint.clone();
    let db_before = db_modified(&traced.data_dir);

    // Backend commits: puts, then idle past the batch interval. Raft snapshots: PUTS
    // entries at --snapshot-count 100.
    for i in 0..PUTS {
        ok(
            &endpoint,
            &["put", &format!("key-{i}"), &format!("value-{i}")],
        );
    }
    std::thread::sleep(PAST_BATCH_INTERVAL);
    // A defragment, then more commits on the new file.
    ok(&endpoint, &["defrag"]);
    for i in 0..20 {
        ok(&endpoint, &["put", &format!("after-defrag-{i}"), "v"]);
    }
    std::thread::sleep(PAST_BATCH_INTERVAL);
    let proc_names = proc_thread_names(traced.tern_pid.unwrap());

    // The load did what it says (else the check below would prove nothing).
    assert!(
        db_modified(&traced.data_dir) > db_before,
        "the backend db was never written: no backend commit happened"
    );
    {
        let log = traced.log.lock().unwrap();
        for wanted in ["saved snapshot", "finished defragmenting"] {
            assert!(
                log.iter().any(|l| l.contains(wanted)),
                "tern never logged {wanted:?}; log:\n{}",
                log.join("\n")
            );
        }
    }

    // Stop tern (strace exits with it) and read the whole trace.
    let data_dir = traced.data_dir.to_string_lossy().into_owned();
    let tern_pid = traced.tern_pid.unwrap();
    let _ = Command::new("kill")
        .args(["-TERM", &tern_pid.to_string()])
        .status();
    let deadline = Instant::now() + EXIT_TIMEOUT;
    while traced.strace.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "tern did not exit within {EXIT_TIMEOUT:?} of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    traced.tern_pid = None;
    let text = std::fs::read_to_string(&traced.trace).expect("strace wrote its trace");
    let calls = parse_trace(&text);
    assert!(!calls.is_empty(), "empty trace");
    let main_tid = calls[0].tid;

    // Who is who.
    let mut threads: HashMap<u32, ThreadInfo> = HashMap::new();
    for call in &calls {
        match call.name.as_str() {
            "prctl" if call.text.starts_with("(PR_SET_NAME,") => {
                threads.entry(call.tid).or_default().name =
                    quoted_args(&call.text).into_iter().next();
            }
            "clone" | "clone3" => {
                let child = call
                    .text
                    .rsplit_once(" = ")
                    .and_then(|(_, r)| r.split_whitespace().next())
                    .and_then(|r| r.parse::<u32>().ok());
                if let Some(child) = child {
                    threads.entry(child).or_default().parent = Some(call.tid);
                }
            }
            "io_uring_setup" => threads.entry(call.tid).or_default().executor = true,
            _ => {}
        }
    }

    // The serving window, and what each thread did in and out of it.
    let mut serving = false;
    let mut window_seen = (false, false);
    // "[tid name] call target" -> (count, time of the first)
    let mut flagged: BTreeMap<String, (u64, String)> = BTreeMap::new();
    let mut flagged_total = 0usize;
    let mut executor_calls_in_window = 0u64;
    for call in &calls {
        if !serving
            && !window_seen.0
            && call.name == "write"
            && call.text.contains("ready to serve client requests")
        {
            serving = true;
            window_seen.0 = true;
        }
        if serving && call.name == "SIGTERM" {
            serving = false;
            window_seen.1 = true;
        }
        let info = threads.entry(call.tid).or_default();
        *info.counts.entry((call.name.clone(), serving)).or_default() += 1;
        let executor = info.executor;
        if serving && executor {
            executor_calls_in_window += 1;
            if let Some(reason) = blocking_reason(call) {
                flagged_total += 1;
                let key = format!(
                    "[{} {}] {reason}",
                    call.tid,
                    describe(&threads, call.tid, main_tid)
                );
                let entry = flagged.entry(key).or_insert((0, call.time.clone()));
                entry.0 += 1;
            }
        }
    }

    // The per-thread summary, printed whatever the outcome.
    let mut summary = String::from(
        "per-thread traced syscalls (serving window | startup+shutdown); * = glommio executor\n",
    );
    let mut tids: Vec<&u32> = threads.keys().collect();
    tids.sort();
    for tid in tids {
        let info = &threads[tid];
        if info.counts.is_empty() {
            continue;
        }
        let mut by_name: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
        for ((name, in_window), n) in &info.counts {
            let entry = by_name.entry(name.as_str()).or_default();
            if *in_window {
                entry.0 += n;
            } else {
                entry.1 += n;
            }
        }
        let blocking: u64 = calls
            .iter()
            .filter(|c| c.tid == *tid && blocking_reason(c).is_some())
            .count() as u64;
        summary += &format!(
            "{} {tid} {} (/proc comm: {}; calls that would count as blocking, whole run: {blocking})\n   {}\n",
            if info.executor { "*" } else { " " },
            describe(&threads, *tid, main_tid),
            proc_names.get(tid).map_or("-", |s| s.as_str()),
            by_name
                .iter()
                .map(|(name, (w, o))| format!("{name} {w}|{o}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    println!("{summary}");

    let executors: HashSet<u32> = threads
        .iter()
        .filter(|(_, i)| i.executor)
        .map(|(t, _)| *t)
        .collect();
    // On one CPU the only network core runs inside the state executor (one thread).
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let expected_executors = if cpus == 1 { 1 } else { 2 };
    assert!(
        executors.len() >= expected_executors,
        "expected a state executor and network executors ({cpus} CPUs), found {} executor \
         threads\n{summary}",
        executors.len()
    );
    assert!(
        window_seen.0 && window_seen.1,
        "the trace lacks the ready log write or the SIGTERM ({window_seen:?}); is -s too short?"
    );
    assert!(
        executor_calls_in_window > 0,
        "no traced call on any executor thread while serving: the trace is not seeing them"
    );
    assert!(
        flagged_total == 0,
        "{flagged_total} blocking file-I/O calls on glommio executor threads while serving, \
         by thread, call and file (count, first at):\n{}\n\n{summary}",
        flagged
            .iter()
            .take(LISTED_CALLS_MAX)
            .map(
                |(what, (n, first))| format!("  {n:>5} x {what} (first at {first})")
                    .replace(&data_dir, "$DATA")
            )
            .collect::<Vec<_>>()
            .join("\n")
    );
}
