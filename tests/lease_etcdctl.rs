//! Leases, locks and elections end to end with the real etcdctl against the spawned tern
//! binary: grant, keep-alive, timetolive --keys, list and revoke; expiry once keep-alives
//! stop; `etcdctl lock` with two competing holders and `etcdctl elect` with two
//! candidates and an observer (those two use client-side watches, so they need the Watch
//! service).

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{stderr, stdout, TernServer};

/// The lease id etcdctl printed ("lease 694d7f0c1a2b3c4d granted with TTL(60s)").
fn granted_id(output: &std::process::Output) -> String {
    let text = stdout(output);
    assert!(
        output.status.success(),
        "grant failed: {text}{}",
        stderr(output)
    );
    text.split_whitespace()
        .nth(1)
        .expect("lease id")
        .to_string()
}

fn ok(output: std::process::Output) -> String {
    assert!(
        output.status.success(),
        "etcdctl failed: {}{}",
        stdout(&output),
        stderr(&output)
    );
    stdout(&output)
}

fn spawn_etcdctl(server: &TernServer, args: &[&str]) -> Child {
    Command::new(common::etcdctl_binary())
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", server.endpoint()))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("etcdctl")
}

#[test]
fn grant_keep_alive_time_to_live_list_revoke() {
    let server = TernServer::start();
    let id = granted_id(&server.etcdctl(&["lease", "grant", "60"]));
    assert_eq!(id.len(), 16, "etcdctl prints ids as 16 hex digits");
    ok(server.etcdctl(&["put", "a", "1", &format!("--lease={id}")]));
    ok(server.etcdctl(&["put", "b", "2", &format!("--lease={id}")]));
    ok(server.etcdctl(&["put", "c", "3"]));

    let ttl = ok(server.etcdctl(&["lease", "timetolive", &id, "--keys"]));
    assert!(
        ttl.starts_with(&format!("lease {id} granted with TTL(60s), remaining(")),
        "{ttl}"
    );
    assert!(ttl.contains("attached keys([a b])"), "{ttl}");

    let kept = ok(server.etcdctl(&["lease", "keep-alive", "--once", &id]));
    assert_eq!(kept.trim(), format!("lease {id} keepalived with TTL(60)"));

    let second = granted_id(&server.etcdctl(&["lease", "grant", "120"]));
    let list = ok(server.etcdctl(&["lease", "list"]));
    assert_eq!(list, format!("found 2 leases\n{id}\n{second}\n"));

    let revoked = ok(server.etcdctl(&["lease", "revoke", &id]));
    assert_eq!(revoked.trim(), format!("lease {id} revoked"));
    assert_eq!(ok(server.etcdctl(&["get", "--prefix", ""])), "c\n3\n");
    let gone = ok(server.etcdctl(&["lease", "timetolive", &id]));
    assert_eq!(gone.trim(), format!("lease {id} already expired"));
    let again = server.etcdctl(&["lease", "revoke", &id]);
    assert!(!again.status.success());
    assert!(stderr(&again).contains("etcdserver: requested lease not found"));
    assert_eq!(
        ok(server.etcdctl(&["lease", "list"])),
        format!("found 1 leases\n{second}\n")
    );
}

/// Keys of a lease survive past its TTL while keep-alives flow, and are gone within
/// TTL + 1 s of the last keep-alive.
#[test]
fn keys_vanish_within_ttl_plus_one_second_after_keep_alives_stop() {
    let server = TernServer::start();
    let ttl = Duration::from_secs(2);
    let id = granted_id(&server.etcdctl(&["lease", "grant", "2"]));
    ok(server.etcdctl(&["put", "ephemeral", "v", &format!("--lease={id}")]));

    let mut keeper = spawn_etcdctl(&server, &["lease", "keep-alive", &id]);
    std::thread::sleep(ttl * 2);
    assert_eq!(
        ok(server.etcdctl(&["get", "ephemeral"])),
        "ephemeral\nv\n",
        "keep-alives did not keep the lease"
    );
    let _ = keeper.kill();
    let _ = keeper.wait();
    let stopped = Instant::now();

    // etcdctl renews every TTL/3, so the last renewal came at most TTL/3 before the kill;
    // the deadline is measured from the kill, which only makes it looser.
    std::thread::sleep((ttl + Duration::from_secs(1)).saturating_sub(stopped.elapsed()));
    assert_eq!(
        ok(server.etcdctl(&["get", "ephemeral"])),
        "",
        "key outlived its lease"
    );
    let ttl_line = ok(server.etcdctl(&["lease", "timetolive", &id]));
    assert_eq!(ttl_line.trim(), format!("lease {id} already expired"));
}

/// The lines of `child`'s stdout that contain `needle`, as they come (read in a thread).
fn lines_matching(child: &mut Child, needle: &str) -> std::sync::mpsc::Receiver<String> {
    use std::io::{BufRead, BufReader};
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let needle = needle.to_string();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if line.contains(&needle) {
                let _ = tx.send(line);
            }
        }
    });
    rx
}

#[test]
fn etcdctl_lock_two_competing_holders() {
    let server = TernServer::start();
    let mut first = spawn_etcdctl(&server, &["lock", "shared"]);
    let first_key = lines_matching(&mut first, "shared/")
        .recv_timeout(Duration::from_secs(10))
        .expect("first holder did not get the lock");
    let mut second = spawn_etcdctl(&server, &["lock", "shared", "--", "echo", "second-holds"]);
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        second.try_wait().unwrap().is_none(),
        "second holder ran while the first held the lock"
    );
    // Two keys queue under the lock's prefix; the first one holds it.
    let keys = ok(server.etcdctl(&["get", "--prefix", "shared/", "--keys-only"]));
    assert!(keys.contains(&first_key), "{keys}");
    assert_eq!(keys.lines().filter(|l| !l.is_empty()).count(), 2, "{keys}");

    // SIGTERM makes etcdctl unlock and close its session.
    unsafe { libc::kill(first.id() as i32, libc::SIGTERM) };
    let _ = first.wait();
    let deadline = Instant::now() + Duration::from_secs(10);
    while second.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let output = second.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout), "second-holds\n");
}

#[test]
fn etcdctl_elect_two_candidates_and_an_observer() {
    let server = TernServer::start();
    let mut observer = spawn_etcdctl(&server, &["elect", "-l", "pick"]);
    let observed = lines_matching(&mut observer, "");
    let mut one = spawn_etcdctl(&server, &["elect", "pick", "one"]);
    let one_lines = lines_matching(&mut one, "one");
    one_lines
        .recv_timeout(Duration::from_secs(10))
        .expect("first candidate not elected");
    let mut two = spawn_etcdctl(&server, &["elect", "pick", "two"]);
    let two_lines = lines_matching(&mut two, "two");
    assert!(
        two_lines.recv_timeout(Duration::from_secs(1)).is_err(),
        "second candidate elected too"
    );

    let mut seen = Vec::new();
    while let Ok(line) = observed.recv_timeout(Duration::from_secs(2)) {
        seen.push(line);
        if seen.iter().any(|l| l == "one") {
            break;
        }
    }
    assert!(seen.iter().any(|l| l == "one"), "observer saw {seen:?}");

    // The first leader resigns on SIGTERM; the second takes over; the observer follows.
    unsafe { libc::kill(one.id() as i32, libc::SIGTERM) };
    let _ = one.wait();
    two_lines
        .recv_timeout(Duration::from_secs(10))
        .expect("second candidate not elected");
    let mut followed = false;
    while let Ok(line) = observed.recv_timeout(Duration::from_secs(10)) {
        if line == "two" {
            followed = true;
            break;
        }
    }
    assert!(followed, "observer did not follow the new leader");
    for mut child in [two, observer] {
        let _ = child.kill();
        let _ = child.wait();
    }
}

#[test]
fn etcdctl_lock_uncontended_runs_the_command_and_releases() {
    let server = TernServer::start();
    assert_eq!(
        ok(server.etcdctl(&["lock", "solo", "--", "echo", "held"])),
        "held\n"
    );
    assert_eq!(
        ok(server.etcdctl(&["lock", "solo", "--", "echo", "again"])),
        "again\n"
    );
    assert_eq!(ok(server.etcdctl(&["get", "--prefix", "solo"])), "");
}
