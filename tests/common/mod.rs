//! Shared harness for end-to-end tests: spawns the real `tern` binary on free loopback
//! ports in a fresh temp data dir, waits for etcd's "ready to serve client requests" log
//! line, and kills the server and removes the dir on drop.

#![allow(dead_code)]

pub mod pki;
pub mod raw_grpc;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long a fresh server may take to log readiness before the test fails.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

pub struct TernServer {
    child: Child,
    pub client_port: u16,
    pub peer_port: u16,
    pub data_dir: PathBuf,
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

/// A port nobody listens on right now (the kernel picks it; we release it at once).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The `ternutl` binary of this workspace, built if needed (it lives in the tools crate,
/// whose binaries this package's tests do not get built by themselves).
pub fn ternutl() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let status = Command::new(env!("CARGO"))
                .args(["build", "--quiet", "-p", "tern-tools", "--bin", "ternutl"])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .status()
                .expect("run cargo build");
            assert!(status.success(), "cannot build ternutl");
            tern_binary().with_file_name("ternutl")
        })
        .clone()
}

/// Runs `ternutl` with `args` and returns what it did.
pub fn ternutl_run(args: &[&str]) -> Output {
    Command::new(ternutl()).args(args).output().unwrap()
}

pub fn tern_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tern"))
}

impl TernServer {
    pub fn start() -> TernServer {
        TernServer::start_with(&[])
    }

    pub fn start_with(extra_args: &[&str]) -> TernServer {
        TernServer::start_listening(&|port| format!("http://127.0.0.1:{port}"), extra_args, None)
    }

    /// Starts tern with `client_urls(port)` as its listen and advertise client URLs (`port`
    /// is a free port, also `client_port`), in `cwd` if given (unix socket URLs name paths
    /// relative to it).
    pub fn start_listening(
        client_urls: &dyn Fn(u16) -> String,
        extra_args: &[&str],
        cwd: Option<&std::path::Path>,
    ) -> TernServer {
        TernServer::start_program(&tern_binary(), client_urls, extra_args, cwd)
    }

    /// The real etcd 3.4 in the same harness (it takes the same flags and logs the same
    /// readiness line), for tests that run one scenario against both servers.
    pub fn start_etcd_listening(
        client_urls: &dyn Fn(u16) -> String,
        extra_args: &[&str],
    ) -> TernServer {
        TernServer::start_program(std::path::Path::new("etcd"), client_urls, extra_args, None)
    }

    fn start_program(
        binary: &std::path::Path,
        client_urls: &dyn Fn(u16) -> String,
        extra_args: &[&str],
        cwd: Option<&std::path::Path>,
    ) -> TernServer {
        let client_port = free_port();
        let peer_port = free_port();
        let data_dir =
            std::env::temp_dir().join(format!("tern-test-{}-{client_port}", std::process::id()));
        let client_url = client_urls(client_port);
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let mut command = Command::new(binary);
        if let Some(cwd) = cwd {
            command.current_dir(cwd);
        }
        command
            .args(["--name", "e2e", "--data-dir"])
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
            .args(["--initial-cluster", &format!("e2e={peer_url}")])
            .args(extra_args);
        let (child, log, ready_rx) = spawn_logged(&mut command);
        let server = TernServer {
            child,
            client_port,
            peer_port,
            data_dir,
            log,
        };
        if ready_rx.recv_timeout(STARTUP_TIMEOUT).is_err() {
            panic!(
                "{} did not become ready; log:\n{}",
                binary.display(),
                server.log.lock().unwrap().join("\n")
            );
        }
        server
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the server has exited.
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().unwrap()
    }

    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// Runs the real etcdctl (API v3) against this server.
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        etcdctl(&self.endpoint(), args, None)
    }

    pub fn etcdctl_stdin(&self, args: &[&str], stdin: &str) -> Output {
        etcdctl(&self.endpoint(), args, Some(stdin))
    }
}

/// Log lines a failing test prints from each server it started (the newest ones).
const LOG_LINES_ON_FAILURE: usize = 80;

impl Drop for TernServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // A failing test shows what the server said last: the cause of a stall or an
            // error is usually there, and the data dir is removed below.
            let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
            let from = log.len().saturating_sub(LOG_LINES_ON_FAILURE);
            eprintln!(
                "--- last {} log lines of the server on port {} ---\n{}",
                log.len() - from,
                self.client_port,
                log[from..].join("\n")
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

pub fn etcdctl_binary() -> String {
    std::env::var("ETCDCTL").unwrap_or_else(|_| "etcdctl".to_string())
}

pub fn etcdctl(endpoint: &str, args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut child = Command::new(etcdctl_binary())
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("etcdctl not found: the test command (./test.sh) installs it with apt-get");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    child.wait_with_output().unwrap()
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

impl TernServer {
    /// Kills the server with SIGKILL and returns the arguments it was started with. The data
    /// dir stays (until drop), for a test to inspect or change before starting it again.
    pub fn kill(&mut self) -> Vec<String> {
        let args = self.arguments();
        self.child.kill().expect("SIGKILL tern");
        self.child.wait().expect("reap tern");
        args
    }

    /// Stops the server with SIGTERM (its clean shutdown path), waits for it to exit, and
    /// starts the same binary again at once with the same arguments (same ports and data
    /// dir), as an operator's restart does: nothing waits for the ports in between. Panics
    /// with the server's log if it did not exit cleanly or does not become ready again.
    pub fn stop_and_restart(&mut self) {
        let args = self.arguments();
        // Safety: kill(2) on the pid of our own child, which has not been reaped yet.
        assert_eq!(
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) },
            0
        );
        let status = self.child.wait().expect("reap tern");
        assert!(
            status.success(),
            "tern did not stop cleanly ({status}); log:\n{}",
            self.log.lock().unwrap().join("\n")
        );
        let (child, log, ready_rx) = spawn_logged(Command::new(tern_binary()).args(&args));
        self.child = child;
        self.log = log;
        if ready_rx.recv_timeout(STARTUP_TIMEOUT).is_err() {
            panic!(
                "tern did not become ready after a clean restart; log:\n{}",
                self.log.lock().unwrap().join("\n")
            );
        }
    }

    /// The arguments the running server was started with.
    fn arguments(&self) -> Vec<String> {
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", self.child.id()))
            .expect("read the server's command line");
        let cmdline = cmdline.strip_suffix(&[0]).unwrap_or(&cmdline);
        cmdline
            .split(|b| *b == 0)
            .skip(1)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect()
    }

    /// Kills the server with SIGKILL (no shutdown path runs), then starts the same binary
    /// again with the same arguments (so the same ports and data dir) and waits until it
    /// serves. The data dir is kept: this is how tests check what survives a crash.
    pub fn kill_and_restart(&mut self) {
        let args = self.kill();
        // The kernel releases sockets that io_uring still referenced a moment after the
        // process is gone; wait until the client port can be bound again.
        let deadline = std::time::Instant::now() + STARTUP_TIMEOUT;
        while TcpListener::bind(("127.0.0.1", self.client_port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "client port never freed"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let (child, log, ready_rx) = spawn_logged(Command::new(tern_binary()).args(&args));
        self.child = child;
        self.log = log;
        if ready_rx.recv_timeout(STARTUP_TIMEOUT).is_err() {
            panic!(
                "tern did not become ready after restart; log:\n{}",
                self.log.lock().unwrap().join("\n")
            );
        }
    }
}

/// Starts tern with its stderr collected line by line into a shared log; the receiver gets
/// one message when the server logs that it is ready to serve clients.
fn spawn_logged(
    command: &mut Command,
) -> (
    std::process::Child,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    mpsc::Receiver<()>,
) {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tern");
    let stderr = child.stderr.take().unwrap();
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (ready_tx, ready_rx) = mpsc::channel();
    let log_sink = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("ready to serve client requests") {
                let _ = ready_tx.send(());
            }
            log_sink.lock().unwrap().push(line);
        }
    });
    (child, log, ready_rx)
}

/// Asserts that an etcdctl run succeeded and printed exactly `expected_stdout`.
pub fn assert_ok(output: &std::process::Output, expected_stdout: &str) {
    assert!(
        output.status.success(),
        "etcdctl failed: {}{}",
        stdout(output),
        stderr(output)
    );
    assert_eq!(stdout(output), expected_stdout);
}

/// etcdctl's stdout, asserting it succeeded.
pub fn etcdctl_ok(endpoint: &str, args: &[&str]) -> String {
    let out = etcdctl(endpoint, args, None);
    assert!(
        out.status.success(),
        "etcdctl {args:?} at {endpoint} failed: {}",
        stderr(&out)
    );
    stdout(&out)
}

/// A scratch dir under the temp dir, named after the test, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "tern-test-{}-{name}-{}",
            std::process::id(),
            free_port()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
