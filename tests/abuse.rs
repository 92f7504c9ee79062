//! Abuse suite: drives a real `tern` process with what hostile or broken clients send (raw
//! HTTP/2 frames from `abuse/raw_h2.rs`, floods of connections past the descriptor limit)
//! and checks, for each attack, that the server stays alive, that a well-behaved client
//! (the real etcdctl, or a clean raw connection) is still served, that RSS stays bounded,
//! and that the abusive connection gets the expected GOAWAY or RST_STREAM code. Bounds on
//! time are generous liveness bounds only.

mod common;
#[path = "abuse/raw_h2.rs"]
mod raw_h2;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{stderr, stdout, TernServer};
use raw_h2::{code, flag, kind, RawH2};

/// How long any single liveness check may take before the test calls the server stuck.
const LIVENESS: Duration = Duration::from_secs(15);

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// CPU time (user + system) the process has used.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // Safety: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

fn set_fd_limit(pid: u32, limit: u64) {
    let rlim = libc::rlimit {
        rlim_cur: limit,
        rlim_max: limit,
    };
    // Safety: prlimit(2) on our own child with a valid new limit and no old-limit output.
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &rlim,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
}

/// A clean raw connection that completed a Range: it is served by whichever core accepted it.
fn served_connection(port: u16) -> RawH2 {
    let mut c = RawH2::start(port, &[]);
    c.send_request(
        1,
        "/etcdserverpb.KV/Range",
        &raw_h2::grpc_message(false, &raw_h2::range_request(b"foo")),
    );
    assert_eq!(
        c.grpc_status(1, LIVENESS).map(|s| s.0).as_deref(),
        Some("0"),
        "a clean Range was not answered"
    );
    c
}

fn etcdctl_get_succeeds(server: &TernServer) {
    let out = server.etcdctl(&["--dial-timeout=10s", "--command-timeout=10s", "get", "foo"]);
    assert!(
        out.status.success(),
        "etcdctl get failed: {}{}\nserver log:\n{}",
        stdout(&out),
        stderr(&out),
        server.log.lock().unwrap().join("\n")
    );
    assert_eq!(stdout(&out), "foo\nbar\n");
}

fn sigterm_and_wait(mut server: TernServer) {
    // Safety: kill(2) on our own child, not yet reaped.
    assert_eq!(unsafe { libc::kill(server.pid() as i32, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = server.try_wait() {
            assert!(status.success(), "tern exited with {status} after SIGTERM");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "tern ignored SIGTERM; log:\n{}",
            server.log.lock().unwrap().join("\n")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Regression test for the accept livelock: more connections than `ulimit -n` allows made
/// every network core retry a failing accept(2) forever without yielding (100% CPU, no
/// connection served, SIGTERM ignored).
#[test]
fn descriptor_exhaustion_backs_off_and_recovers() {
    let server = TernServer::start();
    assert!(server.etcdctl(&["put", "foo", "bar"]).status.success());
    let pid = server.pid();
    let mut resident = served_connection(server.client_port);
    // Leave the server a handful of spare descriptors, then connect far more clients.
    let spare = 8;
    set_fd_limit(pid, (open_fds(pid) + spare) as u64);
    let flood: Vec<TcpStream> = (0..200)
        .map(|_| TcpStream::connect(("127.0.0.1", server.client_port)).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(500));

    // The cores do not spin while the limit is hit (a spinning core burns a whole CPU
    // second per second; the bound is a quarter of what one spinning core would use).
    let (cpu_before, wall_before) = (cpu_time(pid), Instant::now());
    std::thread::sleep(Duration::from_secs(2));
    let (cpu_used, wall) = (cpu_time(pid) - cpu_before, wall_before.elapsed());
    eprintln!("server CPU while at the descriptor limit: {cpu_used:?} in {wall:?}");
    assert!(
        cpu_used < wall / 4,
        "server used {cpu_used:?} CPU in {wall:?} at the descriptor limit"
    );
    // Connections it already has are still served.
    resident.send_request(
        3,
        "/etcdserverpb.KV/Range",
        &raw_h2::grpc_message(false, &raw_h2::range_request(b"foo")),
    );
    assert_eq!(
        resident.grpc_status(3, LIVENESS).map(|s| s.0).as_deref(),
        Some("0"),
        "an established connection went unserved at the descriptor limit"
    );
    let accept_errors = |server: &TernServer| {
        server
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| {
                l.contains("http: Accept error: accept tcp") && l.contains("too many open files")
            })
            .count()
    };
    let logged = accept_errors(&server);
    assert!(
        (1..=4).contains(&logged),
        "expected the accept error logged once per core, got {logged} lines"
    );

    // Once the flood closes, new clients are served again.
    drop(flood);
    etcdctl_get_succeeds(&server);

    // And SIGTERM works while the limit is being hit.
    let _flood: Vec<TcpStream> = (0..200)
        .map(|_| TcpStream::connect(("127.0.0.1", server.client_port)).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    drop(resident);
    sigterm_and_wait(server);
}
