//! Regression tests for intermittent failures that were found and fixed: each drives the real
//! etcdctl against a real tern through the sequence that used to fail now and then, and also
//! checks, from /proc, the condition that made it fail, so that a regression fails every run
//! rather than one run in a hundred.

mod common;

use std::path::Path;

use common::{stderr, stdout, TernServer};

/// Deadline for each etcdctl call. A lost reply shows up as this deadline passing. It is
/// generous because it guards against hangs; it does not measure speed.
const COMMAND_TIMEOUT: &str = "--command-timeout=30s";

/// glommio's accept tries a synchronous accept(2) first, with O_NONBLOCK switched on for that
/// one call and then switched back. Both network executors accept on dups of one listening
/// socket, so they share its file flags. When the socket was created blocking, one executor
/// could switch the flag back while the other sat between switching it on and calling
/// accept(2). That executor's thread then slept in the kernel (backtrace:
/// `__libc_accept` <- `glommio::net::yolo_accept`). Every connection it had just accepted
/// went unanswered until some other client connected, and SIGTERM was not handled either.
/// `endpoint status` and `defrag` open two connections at once, which is when both
/// executors race, so they were the commands that timed out.
#[test]
fn status_after_defrag_is_answered() {
    let server = TernServer::start();
    for round in 0..20 {
        let put = server.etcdctl(&[COMMAND_TIMEOUT, "put", &format!("k{round}"), "v"]);
        assert!(put.status.success(), "put: {}", stderr(&put));
        let defrag = server.etcdctl(&[COMMAND_TIMEOUT, "defrag"]);
        assert!(defrag.status.success(), "defrag: {}", stderr(&defrag));
        let status = server.etcdctl(&[COMMAND_TIMEOUT, "endpoint", "status"]);
        assert!(
            status.status.success(),
            "endpoint status after a defrag (round {round}): {}",
            stderr(&status)
        );
        assert!(stdout(&status).contains("3.4.23"), "{}", stdout(&status));
        // The cause itself: a listening socket that is blocking outside glommio's switch.
        for port in [server.client_port, server.peer_port] {
            let flags = listener_flags(server.pid(), port);
            assert!(!flags.is_empty(), "no listening socket on port {port}");
            for flag in flags {
                assert_ne!(
                    flag & libc::O_NONBLOCK,
                    0,
                    "the listener on port {port} is blocking (flags {flag:o})"
                );
            }
        }
    }
}

/// A clean stop (SIGTERM) used to leave the peer port listening for a moment after the
/// process had exited: the closed listener was still held by the accept pending in the
/// state executor's io_uring, which the kernel tears down only after the process is gone.
/// SO_REUSEADDR does not allow a bind beside a listening socket, so an immediate restart
/// failed with "listen tcp 127.0.0.1:PEERPORT: bind: Address already in use" (7 of 20
/// restarts on the 2-core machine). tern now shuts its listeners down before it exits, as
/// etcd does by closing them.
#[test]
fn restart_rebinds_peer_port() {
    let mut server = TernServer::start();
    for round in 0..5 {
        let key = format!("round{round}");
        let put = server.etcdctl(&[COMMAND_TIMEOUT, "put", &key, "v"]);
        assert!(put.status.success(), "put: {}", stderr(&put));
        server.stop_and_restart();
        let get = server.etcdctl(&[COMMAND_TIMEOUT, "get", &key, "--print-value-only"]);
        assert_eq!(
            stdout(&get),
            "v\n",
            "after restart {round}: {}",
            stderr(&get)
        );
    }
}

/// The file status flags (`flags:` in /proc/PID/fdinfo, octal) of every fd of process
/// `pid` that is a socket listening on `port`.
fn listener_flags(pid: u32, port: u16) -> Vec<i32> {
    let inodes = listening_inodes(port);
    let mut flags = Vec::new();
    let fd_dir = format!("/proc/{pid}/fd");
    for entry in std::fs::read_dir(&fd_dir).expect("read the server's fd table") {
        let entry = entry.unwrap();
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let target = target.to_string_lossy().into_owned();
        let Some(inode) = target
            .strip_prefix("socket:[")
            .and_then(|t| t.strip_suffix(']'))
        else {
            continue;
        };
        if !inodes.iter().any(|i| i == inode) {
            continue;
        }
        let info = std::fs::read_to_string(
            Path::new(&format!("/proc/{pid}/fdinfo")).join(entry.file_name()),
        )
        .expect("read fdinfo");
        let octal = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .expect("fdinfo has flags")
            .trim();
        flags.push(i32::from_str_radix(octal, 8).expect("octal flags"));
    }
    flags
}

/// Socket inodes in state LISTEN (0A) on `port`, from /proc/net/tcp and tcp6.
fn listening_inodes(port: u16) -> Vec<String> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 10 || fields[3] != "0A" {
                continue;
            }
            let local_port = fields[1]
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if local_port == Some(port) {
                inodes.push(fields[9].to_string());
            }
        }
    }
    inodes
}
