//! Checks `ternutl defrag --data-dir` and `ternutl backup` end to end on data dirs written
//! by a real tern, beside etcd 3.4's own `etcdctl defrag --data-dir` and `etcdctl backup`
//! on a real etcd's: defrag shrinks a data dir full of freed pages and a server restarted
//! on it serves every key, revision, lease and HashKV as before; it waits (with etcd's
//! words) while a server holds the data dir and finishes once it stops; backup makes a
//! data dir from which a new one-member cluster (new member and cluster IDs, as etcd's)
//! starts with the same keys, revisions and leases, refuses a running server's data dir,
//! and with `--with-v3=false` keeps no keys (as etcd's). Unlike etcd 3.4's backup, whose new
//! cluster can time out the writes that follow (it renumbers entries; 3.5 fixed that), tern's
//! takes writes at once and keeps them across a restart.

mod common;

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{etcdctl, free_port, stderr, stdout, ternutl, ternutl_run, Scratch};

/// How long a server may take to serve after it starts.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

fn ok(endpoint: &str, args: &[&str]) -> String {
    common::etcdctl_ok(endpoint, args)
}

/// A tern or a real etcd 3.4 on a data dir of the test's, killed on drop (the dir stays).
struct Server {
    child: Child,
    endpoint: String,
}

impl Server {
    /// `program` as the only member `name` of a cluster on `data_dir`, with `extra` flags.
    fn start(program: &Path, name: &str, data_dir: &Path, extra: &[&str]) -> Server {
        let client_url = format!("http://127.0.0.1:{}", free_port());
        let peer_url = format!("http://127.0.0.1:{}", free_port());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.with_extension("log"))
            .unwrap();
        let child = Command::new(program)
            .args(["--name", name, "--data-dir"])
            .arg(data_dir)
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("{name}={peer_url}")])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "{} not found ({e}): ./test.sh installs etcd",
                    program.display()
                )
            });
        let server = Server {
            child,
            endpoint: client_url.trim_start_matches("http://").to_string(),
        };
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        while !etcdctl(&server.endpoint, &["get", "probe"], None)
            .status
            .success()
        {
            assert!(
                Instant::now() < deadline,
                "{} did not serve {}; log:\n{}",
                program.display(),
                data_dir.display(),
                std::fs::read_to_string(data_dir.with_extension("log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }

    fn tern(name: &str, data_dir: &Path, extra: &[&str]) -> Server {
        Server::start(&common::tern_binary(), name, data_dir, extra)
    }

    fn etcd(name: &str, data_dir: &Path, extra: &[&str]) -> Server {
        Server::start(Path::new("etcd"), name, data_dir, extra)
    }

    /// SIGTERM (both commit their backend on the way out), then waits for the exit.
    fn stop(mut self) {
        // Safety: kill(2) on the pid of our own child, not yet reaped.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// etcd 3.4's etcdctl with the API version `api` (its `backup` is a v2 command).
fn etcdctl_offline(api: &str, args: &[&str]) -> std::process::Output {
    Command::new(common::etcdctl_binary())
        .env("ETCDCTL_API", api)
        .args(args)
        .output()
        .unwrap()
}

/// The part of a JSON response after its header (the header names the member).
fn after_header(json: &str) -> String {
    let at = json.find("},").expect("a header") + 2;
    json[at..].to_string()
}

/// What a client sees of the key space, HashKV and leases now.
fn observe(endpoint: &str) -> Vec<String> {
    let mut seen = vec![after_header(&ok(
        endpoint,
        &["get", "k", "--prefix", "-w", "json"],
    ))];
    let hash = ok(endpoint, &["endpoint", "hashkv", "-w", "json"]);
    seen.push(hash[hash.find("\"hash\"").unwrap()..].to_string());
    let leases = ok(endpoint, &["lease", "list"]);
    let mut ids: Vec<&str> = leases.lines().skip(1).collect();
    ids.sort();
    for id in ids {
        let ttl = ok(
            endpoint,
            &["lease", "timetolive", id, "--keys", "-w", "json"],
        );
        let granted = &ttl[ttl.find("\"granted-ttl\"").unwrap()..];
        let keys = ttl.find("\"keys\"").map_or("", |at| &ttl[at..]);
        seen.push(format!(
            "lease {id} {} {keys}",
            &granted[..granted.find(',').unwrap()]
        ));
    }
    seen
}

/// Writes 8 MB of values and deletes and compacts them away (freed pages), then leaves a
/// few keys, a lease and a revision history behind.
fn fill_and_free(endpoint: &str) {
    let value = "v".repeat(40_000);
    let mut txn = String::new();
    for i in 0..20 {
        txn.push_str(&format!("put big{i:03} {value}\n"));
    }
    for _ in 0..10 {
        let out = etcdctl(endpoint, &["txn"], Some(&format!("\n{txn}\n\n")));
        assert!(out.status.success(), "{}", stderr(&out));
    }
    ok(endpoint, &["del", "big", "--prefix"]);
    ok(endpoint, &["put", "k1", "one"]);
    ok(endpoint, &["put", "k2", "two"]);
    ok(endpoint, &["put", "k1", "uno"]);
    let lease = ok(endpoint, &["lease", "grant", "900"]);
    let lease = lease.split_whitespace().nth(1).unwrap().to_string();
    ok(
        endpoint,
        &["put", "k3", "leased", &format!("--lease={lease}")],
    );
    let rev = ok(endpoint, &["get", "k1", "-w", "json"]);
    let at = rev.find("\"revision\":").unwrap() + "\"revision\":".len();
    let rev: String = rev[at..].chars().take_while(char::is_ascii_digit).collect();
    ok(endpoint, &["compaction", &rev, "--physical"]);
}

fn db_bytes(data_dir: &Path) -> u64 {
    std::fs::metadata(data_dir.join("member/snap/db"))
        .unwrap()
        .len()
}

#[test]
fn defrag_shrinks_a_data_dir_and_a_restarted_server_serves_it_unchanged() {
    let scratch = Scratch::new("defrag");
    let mut shrunk = Vec::new();
    for program in ["tern", "etcd"] {
        let data_dir = scratch.0.join(format!("{program}.data"));
        let server = if program == "tern" {
            Server::tern("m1", &data_dir, &[])
        } else {
            Server::etcd("m1", &data_dir, &[])
        };
        fill_and_free(&server.endpoint);
        let before = observe(&server.endpoint);
        server.stop();
        let size_before = db_bytes(&data_dir);
        let out = if program == "tern" {
            ternutl_run(&["defrag", "--data-dir", data_dir.to_str().unwrap()])
        } else {
            etcdctl_offline("3", &["defrag", "--data-dir", data_dir.to_str().unwrap()])
        };
        assert!(out.status.success(), "{program}: {}", stderr(&out));
        if program == "tern" {
            // etcdutl prints nothing on stdout; the backend logs its two lines on stderr.
            assert_eq!(stdout(&out), "");
            let log = stderr(&out);
            assert!(
                log.contains("\tinfo\t") && log.contains("\tdefragmenting\t{\"path\": "),
                "{log}"
            );
            assert!(
                log.contains("\tfinished defragmenting directory\t"),
                "{log}"
            );
            assert!(log.contains("\"current-db-size-bytes-diff\": -"), "{log}");
        }
        let size_after = db_bytes(&data_dir);
        shrunk.push(format!("{program}: {size_before} -> {size_after}"));
        assert!(
            size_after * 2 < size_before,
            "{program}: {size_before} -> {size_after}"
        );
        let server = if program == "tern" {
            Server::tern("m1", &data_dir, &[])
        } else {
            Server::etcd("m1", &data_dir, &[])
        };
        assert_eq!(observe(&server.endpoint), before, "{program}");
        ok(&server.endpoint, &["put", "k4", "after"]);
        let old = etcdctl(&server.endpoint, &["get", "k1", "--rev=2"], None);
        assert!(
            stderr(&old).contains("required revision has been compacted"),
            "{program}: {}",
            stderr(&old)
        );
    }
    eprintln!("db sizes, before -> after offline defrag: {shrunk:?}");
}

/// Runs `command`, reads its stderr until a line contains `wanted`, and returns the child
/// and that line.
fn spawn_until_line(command: &mut Command, wanted: &str) -> (Child, String) {
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let found = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|line| line.contains(wanted));
    // Drain the rest so the child never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    match found {
        Some(line) => (child, line),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("stderr ended before {wanted:?}");
        }
    }
}

#[test]
fn defrag_waits_while_a_server_holds_the_data_dir() {
    let scratch = Scratch::new("defrag-lock");
    let mut waits = Vec::new();
    for program in ["tern", "etcd"] {
        let data_dir = scratch.0.join(format!("{program}.data"));
        let server = if program == "tern" {
            Server::tern("m1", &data_dir, &[])
        } else {
            Server::etcd("m1", &data_dir, &[])
        };
        ok(&server.endpoint, &["put", "k1", "before"]);
        let mut command = if program == "tern" {
            Command::new(ternutl())
        } else {
            let mut c = Command::new(common::etcdctl_binary());
            c.env("ETCDCTL_API", "3");
            c
        };
        command.args(["defrag", "--data-dir", data_dir.to_str().unwrap()]);
        let (mut defrag, line) = spawn_until_line(&mut command, "waiting for etcd to close");
        waits.push(line.replace(data_dir.to_str().unwrap(), "DATA_DIR"));
        // The server is untouched while the tool waits, and serves on.
        assert!(
            defrag.try_wait().unwrap().is_none(),
            "{program}: defrag exited"
        );
        ok(&server.endpoint, &["put", "k2", "while waiting"]);
        server.stop();
        let status = defrag.wait().unwrap();
        assert!(status.success(), "{program}: {status}");
        let server = if program == "tern" {
            Server::tern("m1", &data_dir, &[])
        } else {
            Server::etcd("m1", &data_dir, &[])
        };
        assert_eq!(
            ok(
                &server.endpoint,
                &["get", "k", "--prefix", "--print-value-only"]
            ),
            "before\nwhile waiting\n"
        );
    }
    // The same words from both tools.
    assert_eq!(waits[0], waits[1]);
}

/// (member id, cluster id, members) as `member list -w json` reports them.
fn identity(endpoint: &str) -> (String, String, usize, String) {
    let json = ok(endpoint, &["member", "list", "-w", "json"]);
    let field = |name: &str| -> String {
        let at = json.find(&format!("\"{name}\":")).unwrap() + name.len() + 3;
        json[at..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect()
    };
    let members = json.matches("\"ID\":").count();
    let peer_urls = json[json.find("\"peerURLs\":").unwrap()..]
        .split(']')
        .next()
        .unwrap()
        .to_string();
    (field("member_id"), field("cluster_id"), members, peer_urls)
}

#[test]
fn backup_starts_a_new_one_member_cluster_with_the_data() {
    let scratch = Scratch::new("backup");
    let mut members_after = Vec::new();
    for program in ["tern", "etcd"] {
        let data_dir = scratch.0.join(format!("{program}.data"));
        let start = |dir: &Path, extra: &[&str]| {
            if program == "tern" {
                Server::tern("m1", dir, extra)
            } else {
                Server::etcd("m1", dir, extra)
            }
        };
        let server = start(&data_dir, &[]);
        let ep = server.endpoint.clone();
        fill_and_free(&ep);
        // Membership changes in the log, which the backup drops.
        let added = ok(
            &ep,
            &[
                "member",
                "add",
                "learner",
                "--learner",
                "--peer-urls=http://127.0.0.1:1",
            ],
        );
        let id = added.split_whitespace().nth(1).unwrap().to_string();
        ok(&ep, &["member", "remove", &id]);
        ok(&ep, &["put", "k5", "last"]);
        let before = observe(&ep);
        let (old_member, old_cluster, _, _) = identity(&ep);

        // A running server's data dir is refused (tern) or waited for (etcd 3.4).
        if program == "tern" {
            let out = ternutl_run(&[
                "backup",
                "--data-dir",
                data_dir.to_str().unwrap(),
                "--backup-dir",
                scratch.0.join("refused").to_str().unwrap(),
            ]);
            assert!(!out.status.success());
            assert!(
                stderr(&out).contains("timed out waiting to acquire lock on"),
                "{}",
                stderr(&out)
            );
        }
        server.stop();

        let backup_dir = scratch.0.join(format!("{program}.backup"));
        let out = if program == "tern" {
            ternutl_run(&[
                "backup",
                "--data-dir",
                data_dir.to_str().unwrap(),
                "--backup-dir",
                backup_dir.to_str().unwrap(),
            ])
        } else {
            etcdctl_offline(
                "2",
                &[
                    "backup",
                    "--data-dir",
                    data_dir.to_str().unwrap(),
                    "--backup-dir",
                    backup_dir.to_str().unwrap(),
                    "--with-v3",
                ],
            )
        };
        assert!(out.status.success(), "{program}: {}", stderr(&out));
        if program == "tern" {
            assert!(
                stderr(&out).contains("backed up the data dir for a new cluster"),
                "{}",
                stderr(&out)
            );
            // The same dir again: the backup dir must be empty, as etcd's CreateDirAll says.
            let again = ternutl_run(&[
                "backup",
                "--data-dir",
                data_dir.to_str().unwrap(),
                "--backup-dir",
                backup_dir.to_str().unwrap(),
            ]);
            assert!(!again.status.success());
            assert!(
                stderr(&again).contains("to be empty, got"),
                "{}",
                stderr(&again)
            );
        }

        let restored = start(&backup_dir, &["--force-new-cluster"]);
        assert_eq!(observe(&restored.endpoint), before, "{program}");
        let (member, cluster, count, peer_urls) = identity(&restored.endpoint);
        assert_eq!(count, 1, "{program}");
        assert_ne!(member, old_member, "{program}: the member ID is new");
        assert_ne!(cluster, old_cluster, "{program}: the cluster ID is new");
        members_after.push(format!("{program}: {peer_urls}"));
        // etcd 3.4's backup deletes the entries it drops and renumbers the rest below the
        // backend's consistent index, so its new cluster may skip the next writes (they
        // time out; etcd 3.5 fixed it by emptying entries in place, as ternutl does): only
        // reported for etcd.
        if program == "tern" {
            ok(&restored.endpoint, &["put", "k6", "new cluster"]);
        } else {
            let out = etcdctl(
                &restored.endpoint,
                &["put", "k6", "new cluster", "--command-timeout=2s"],
                None,
            );
            members_after.push(format!("etcd 3.4 put after backup: {}", out.status));
        }
        let old = etcdctl(&restored.endpoint, &["get", "k1", "--rev=2"], None);
        assert!(
            stderr(&old).contains("required revision has been compacted"),
            "{program}: {}",
            stderr(&old)
        );
        // It restarts as itself, without --force-new-cluster.
        let (member_before, ..) = identity(&restored.endpoint);
        restored.stop();
        let again = start(&backup_dir, &[]);
        assert_eq!(identity(&again.endpoint).0, member_before, "{program}");
        if program == "tern" {
            assert_eq!(
                ok(&again.endpoint, &["get", "k6", "--print-value-only"]),
                "new cluster\n"
            );
        }
        again.stop();

        // Without the v3 data: a new cluster with no keys.
        let bare_dir = scratch.0.join(format!("{program}.bare"));
        let out = if program == "tern" {
            ternutl_run(&[
                "backup",
                "--data-dir",
                data_dir.to_str().unwrap(),
                "--backup-dir",
                bare_dir.to_str().unwrap(),
                "--with-v3=false",
            ])
        } else {
            etcdctl_offline(
                "2",
                &[
                    "backup",
                    "--data-dir",
                    data_dir.to_str().unwrap(),
                    "--backup-dir",
                    bare_dir.to_str().unwrap(),
                ],
            )
        };
        assert!(out.status.success(), "{program}: {}", stderr(&out));
        let bare = start(&bare_dir, &["--force-new-cluster"]);
        assert_eq!(
            ok(&bare.endpoint, &["get", "k", "--prefix", "--keys-only"]),
            "",
            "{program}"
        );
        assert_eq!(identity(&bare.endpoint).2, 1, "{program}");
    }
    eprintln!("the backup's member after --force-new-cluster: {members_after:?}");
}
