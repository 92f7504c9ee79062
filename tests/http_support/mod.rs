//! Servers the HTTP tests compare or break: a real etcd 3.4 on free loopback ports, and a
//! small cluster of tern (or etcd) members. Each is killed and its data removed on drop.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{free_port, tern_binary};

/// How long a server may take to answer its first health check.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

fn wait_healthy(port: u16, child: &mut Child) {
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        let ok = std::process::Command::new("curl")
            .args(["-sf", "--max-time", "2"])
            .arg(format!("http://127.0.0.1:{port}/health"))
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "server exited during startup"
        );
        assert!(
            Instant::now() < deadline,
            "server on {port} never became healthy"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A real etcd (the `etcd` binary test.sh installs).
pub struct Etcd {
    child: Child,
    pub client_port: u16,
    pub metrics_port: u16,
    data_dir: PathBuf,
}

impl Etcd {
    pub fn start() -> Etcd {
        Etcd::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> Etcd {
        let (client_port, peer_port, metrics_port) = (free_port(), free_port(), free_port());
        let data_dir = std::env::temp_dir().join(format!(
            "tern-http-etcd-{}-{client_port}",
            std::process::id()
        ));
        let client = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let mut child = Command::new(std::env::var("ETCD_BIN").unwrap_or_else(|_| "etcd".into()))
            .args(["--name", "ref", "--data-dir"])
            .arg(&data_dir)
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("ref={peer}")])
            .args([
                "--listen-metrics-urls",
                &format!("http://127.0.0.1:{metrics_port}"),
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd (test.sh installs it)");
        wait_healthy(client_port, &mut child);
        Etcd {
            child,
            client_port,
            metrics_port,
            data_dir,
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// Members of one cluster of tern or of etcd processes, all on loopback.
pub struct Cluster {
    children: Vec<Option<Child>>,
    pub client_ports: Vec<u16>,
    root: PathBuf,
}

impl Cluster {
    pub fn tern(size: usize) -> Cluster {
        Cluster::start(&tern_binary(), size)
    }

    /// The same cluster of real etcd 3.4 members (same flags).
    pub fn etcd(size: usize) -> Cluster {
        let etcd = std::env::var("ETCD_BIN").unwrap_or_else(|_| "etcd".into());
        Cluster::start(std::path::Path::new(&etcd), size)
    }

    fn start(binary: &std::path::Path, size: usize) -> Cluster {
        let client_ports: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let peer_ports: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let root = std::env::temp_dir().join(format!(
            "tern-http-cluster-{}-{}",
            std::process::id(),
            client_ports[0]
        ));
        let initial_cluster = peer_ports
            .iter()
            .enumerate()
            .map(|(i, p)| format!("m{i}=http://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let children = (0..size)
            .map(|i| {
                let client = format!("http://127.0.0.1:{}", client_ports[i]);
                let peer = format!("http://127.0.0.1:{}", peer_ports[i]);
                Some(
                    Command::new(binary)
                        .args(["--name", &format!("m{i}"), "--data-dir"])
                        .arg(root.join(format!("m{i}")))
                        .args([
                            "--listen-client-urls",
                            &client,
                            "--advertise-client-urls",
                            &client,
                        ])
                        .args([
                            "--listen-peer-urls",
                            &peer,
                            "--initial-advertise-peer-urls",
                            &peer,
                        ])
                        .args(["--initial-cluster", &initial_cluster])
                        .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .spawn()
                        .unwrap(),
                )
            })
            .collect();
        let mut cluster = Cluster {
            children,
            client_ports,
            root,
        };
        for i in 0..size {
            let port = cluster.client_ports[i];
            wait_healthy(port, cluster.children[i].as_mut().unwrap());
        }
        cluster
    }

    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.children[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.children.len() {
            self.kill(i);
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}
