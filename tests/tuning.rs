//! The tuning/ scripts: shellcheck finds nothing; for three faked machines (sysfs and procfs
//! trees under TERN_TUNING_ROOT, with stub `ionice`/`ip`/`tc` on PATH for what the kernel
//! would answer) every script's --dry-run prints exactly the expected commands and check
//! the expected report and exit code; --apply then --undo on a faked tree puts every setting
//! back; --apply refuses without root; and network.sh is applied for real inside network
//! namespaces joined by a veth pair, where `tc` must show its qdisc, classes and filters,
//! packets from tern's ports must land in their classes, and --undo must restore the
//! original qdisc (skipped, with a message, where namespaces are not permitted).

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

fn tuning_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tuning")
}

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(label: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("tern-tuning-{label}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A faked machine: `root/sys`, `root/proc`, stub commands in `root/stub/bin` that answer
/// from files under `root/stub`, and a state dir for --apply.
struct FakeMachine {
    dir: TempDir,
}

/// Stub `ionice`: reads a thread's priority from stub/ionice/TID and, when setting, writes it
/// there (so check after --apply sees the change) and logs the call.
const IONICE_STUB: &str = r#"#!/bin/sh
dir="$TERN_TUNING_ROOT/stub/ionice"
echo "ionice $*" >>"$TERN_TUNING_ROOT/stub/log"
case "$1" in
-p) cat "$dir/$2" ;;
-c*)
    class=${1#-c}; shift
    level=0
    case "$1" in -n*) level=${1#-n}; shift ;; esac
    shift
    for tid in "$@"; do
        case "$class" in
        0) echo "none: prio 0" ;;
        1) echo "realtime: prio $level" ;;
        2) echo "best-effort: prio $level" ;;
        3) echo "idle" ;;
        esac >"$dir/$tid"
    done
    ;;
esac
"#;

/// Stub `ip` and `tc`: print the canned answer stored under the command line's words.
const CANNED_STUB: &str = r#"#!/bin/sh
name=$(basename "$0")
key=$(echo "$name $*" | tr ' /' '__')
if [ -f "$TERN_TUNING_ROOT/stub/$key" ]; then cat "$TERN_TUNING_ROOT/stub/$key"; exit 0; fi
echo "stub $name: no answer for: $*" >&2
exit 1
"#;

impl FakeMachine {
    fn new(label: &str) -> FakeMachine {
        let machine = FakeMachine {
            dir: TempDir::new(label),
        };
        machine.file("stub/bin/ionice", IONICE_STUB);
        machine.file("stub/bin/ip", CANNED_STUB);
        machine.file("stub/bin/tc", CANNED_STUB);
        for stub in ["ionice", "ip", "tc"] {
            let path = machine.path(&format!("stub/bin/{stub}"));
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        }
        fs::create_dir_all(machine.path("stub/ionice")).unwrap();
        machine
    }

    fn root(&self) -> &Path {
        &self.dir.0
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.root().join(relative)
    }

    fn file(&self, relative: &str, content: &str) {
        let path = self.path(relative);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    }

    fn link(&self, relative: &str, target: &str) {
        let path = self.path(relative);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        symlink(target, path).unwrap();
    }

    /// The canned answer of a stub command (`tc qdisc show dev eth0 root`).
    fn answer(&self, command_line: &str, output: &str) {
        let key: String = command_line
            .chars()
            .map(|c| if c == ' ' || c == '/' { '_' } else { c })
            .collect();
        self.file(&format!("stub/{key}"), output);
    }

    fn cpu(&self, cpu: usize, package: usize, core: usize) {
        let base = format!("sys/devices/system/cpu/cpu{cpu}/topology");
        self.file(
            &format!("{base}/physical_package_id"),
            &format!("{package}\n"),
        );
        self.file(&format!("{base}/core_id"), &format!("{core}\n"));
    }

    fn process(&self, pid: u32, argv: &[&str], env: &[&str], cpus_allowed: &str, threads: &[u32]) {
        let nul = |words: &[&str]| words.iter().map(|w| format!("{w}\0")).collect::<String>();
        self.file(&format!("proc/{pid}/cmdline"), &nul(argv));
        self.file(&format!("proc/{pid}/environ"), &nul(env));
        self.file(
            &format!("proc/{pid}/status"),
            &format!("Name:\ttern\nCpus_allowed_list:\t{cpus_allowed}\n"),
        );
        self.file(&format!("proc/{pid}/comm"), "tern\n");
        self.link(&format!("proc/{pid}/cwd"), "/var/lib");
        for tid in threads {
            fs::create_dir_all(self.path(&format!("proc/{pid}/task/{tid}"))).unwrap();
            fs::create_dir_all(self.path(&format!("proc/{tid}"))).unwrap();
        }
    }

    fn limits(&self, pid: &str, memlock: &str) {
        self.file(
            &format!("proc/{pid}/limits"),
            &format!(
                "Limit                     Soft Limit           Hard Limit           Units     \n\
                 Max open files            1024                 524288               files     \n\
                 Max locked memory         {memlock:<20} {memlock:<20} bytes     \n"
            ),
        );
    }

    /// Runs a tuning script against this machine; returns (exit code, stdout with the
    /// root replaced by $ROOT, stderr).
    fn run(&self, script: &str, args: &[&str]) -> (i32, String, String) {
        let path = format!(
            "{}:{}",
            self.path("stub/bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let out = Command::new(tuning_dir().join(script))
            .args(args)
            .env("TERN_TUNING_ROOT", self.root())
            .env("TERN_TUNING_STATE_DIR", self.path("state"))
            .env("PATH", path)
            .output()
            .unwrap();
        decode(out, self.root())
    }
}

fn decode(out: Output, root: &Path) -> (i32, String, String) {
    let root = root.display().to_string();
    let stdout = String::from_utf8_lossy(&out.stdout).replace(&root, "$ROOT");
    let stderr = String::from_utf8_lossy(&out.stderr).replace(&root, "$ROOT");
    (out.status.code().unwrap_or(-1), stdout, stderr)
}

/// A bare-metal server: 4 cores x 2 SMT threads (siblings n and n+4), cpufreq at
/// powersave, deep C6, an NVMe disk with the data dir on a partition, a 4-queue NIC with MSI
/// vectors, THP always, swappiness 60, irqbalance running, and tern running as pid 4242 with
/// --cores 3 under taskset 1-3 and a 64 KiB memlock limit.
fn nvme_server() -> FakeMachine {
    let m = FakeMachine::new("nvme");
    m.file("sys/devices/system/cpu/online", "0-7\n");
    for cpu in 0..8 {
        m.cpu(cpu, 0, cpu % 4);
        let freq = format!("sys/devices/system/cpu/cpu{cpu}/cpufreq");
        m.file(&format!("{freq}/scaling_governor"), "powersave\n");
        m.file(
            &format!("{freq}/scaling_available_governors"),
            "performance powersave\n",
        );
        for (state, name, latency) in [(0, "POLL", 0), (1, "C1", 2), (2, "C1E", 10), (3, "C6", 133)]
        {
            let dir = format!("sys/devices/system/cpu/cpu{cpu}/cpuidle/state{state}");
            m.file(&format!("{dir}/name"), &format!("{name}\n"));
            m.file(&format!("{dir}/latency"), &format!("{latency}\n"));
            m.file(&format!("{dir}/disable"), "0\n");
        }
    }
    // NVMe: /dev/nvme0n1p1 (259:1) holds /var/lib/tern.
    let nvme = "sys/devices/pci0000:00/0000:00:1d.0/nvme/nvme0/nvme0n1";
    m.file(&format!("{nvme}/queue/scheduler"), "[none] mq-deadline\n");
    m.file(&format!("{nvme}/queue/read_ahead_kb"), "128\n");
    m.file(&format!("{nvme}/queue/nr_requests"), "1023\n");
    m.file(&format!("{nvme}/queue/rotational"), "0\n");
    m.file(&format!("{nvme}/queue/write_cache"), "write back\n");
    m.file(&format!("{nvme}/queue/fua"), "1\n");
    m.file(&format!("{nvme}/nvme0n1p1/partition"), "1\n");
    m.link(
        "sys/dev/block/259:1",
        "../../devices/pci0000:00/0000:00:1d.0/nvme/nvme0/nvme0n1/nvme0n1p1",
    );
    m.file(
        "proc/self/mountinfo",
        "22 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw\n\
         23 22 0:21 / /proc rw,relatime shared:2 - proc proc rw\n\
         30 22 259:1 / /var/lib/tern rw,noatime shared:9 - ext4 /dev/nvme0n1p1 rw\n",
    );
    // A 4-queue NIC with MSI-X vectors 40-43, interrupts spread over every CPU.
    let nic = "sys/devices/pci0000:00/0000:00:03.0";
    for q in 0..4 {
        m.file(&format!("{nic}/msi_irqs/{}", 40 + q), "msix\n");
        m.file(&format!("proc/irq/{}/smp_affinity_list", 40 + q), "0-7\n");
        m.file(&format!("{nic}/net/eth0/queues/rx-{q}/rps_cpus"), "00\n");
        m.file(&format!("{nic}/net/eth0/queues/tx-{q}/xps_cpus"), "00\n");
    }
    m.file(&format!("{nic}/net/eth0/speed"), "10000\n");
    m.link(
        "sys/class/net/eth0",
        "../../devices/pci0000:00/0000:00:03.0/net/eth0",
    );
    m.link(
        "sys/devices/pci0000:00/0000:00:03.0/net/eth0/device",
        "../../../0000:00:03.0",
    );
    fs::create_dir_all(m.path("sys/class/net/lo")).unwrap();
    m.file(
        "sys/kernel/mm/transparent_hugepage/enabled",
        "[always] madvise never\n",
    );
    m.file(
        "sys/kernel/mm/transparent_hugepage/defrag",
        "[always] defer defer+madvise madvise never\n",
    );
    m.file("proc/sys/vm/swappiness", "60\n");
    m.file("proc/sys/net/core/somaxconn", "128\n");
    m.file("proc/sys/net/ipv4/tcp_max_syn_backlog", "4096\n");
    m.file("proc/sys/net/core/busy_poll", "0\n");
    m.file("proc/sys/net/core/busy_read", "0\n");
    m.file("proc/900/comm", "irqbalance\n");
    m.process(
        4242,
        &[
            "/usr/local/bin/tern",
            "--name",
            "n1",
            "--data-dir=/var/lib/tern",
            "-listen-peer-urls",
            "http://10.0.0.1:2380",
            "--cores",
            "3",
            "--initial-cluster",
            "n1=http://10.0.0.1:2380,n2=http://10.0.0.2:2380,n3=http://10.0.0.3:2380",
        ],
        &[
            "HOME=/root",
            "ETCD_LISTEN_CLIENT_URLS=http://10.0.0.1:2379,http://127.0.0.1:12379",
        ],
        "1-3",
        &[4242, 4243, 4244],
    );
    m.file("stub/ionice/4242", "none: prio 0\n");
    m.file("stub/ionice/4243", "best-effort: prio 0\n");
    m.file("stub/ionice/4244", "realtime: prio 4\n");
    m.limits("4242", "65536");
    m.limits("self", "8388608");
    m.answer(
        "ip -o route get 10.0.0.2",
        "10.0.0.2 dev eth0 src 10.0.0.1 uid 0 \\    cache \n",
    );
    m.answer(
        "ip -o route get 10.0.0.3",
        "10.0.0.3 dev eth0 src 10.0.0.1 uid 0 \\    cache \n",
    );
    m.answer("tc qdisc show dev eth0 root", "qdisc mq 0: root \n");
    m
}

/// A small VM: 2 CPUs without SMT, no cpufreq, only shallow idle states, the data dir on an
/// LVM volume (dm-0) over a partition of a SATA SSD whose volatile cache the kernel has been
/// told is write-through, a virtio NIC whose interrupts are named after the virtio device,
/// THP madvise, swappiness 10, and no running tern.
fn lvm_vm() -> FakeMachine {
    let m = FakeMachine::new("lvm");
    m.file("sys/devices/system/cpu/online", "0-1\n");
    for cpu in 0..2 {
        m.cpu(cpu, 0, cpu);
        let dir = format!("sys/devices/system/cpu/cpu{cpu}/cpuidle/state1");
        m.file(&format!("{dir}/name"), "haltpoll idle\n");
        m.file(&format!("{dir}/latency"), "1\n");
        m.file(&format!("{dir}/disable"), "0\n");
    }
    let sda = "sys/devices/pci0000:00/0000:00:1f.2/ata1/host0/target0:0:0/0:0:0:0/block/sda";
    m.file(
        &format!("{sda}/queue/scheduler"),
        "[mq-deadline] kyber bfq none\n",
    );
    m.file(&format!("{sda}/queue/read_ahead_kb"), "4096\n");
    m.file(&format!("{sda}/queue/nr_requests"), "64\n");
    m.file(&format!("{sda}/queue/rotational"), "0\n");
    m.file(&format!("{sda}/queue/write_cache"), "write through\n");
    m.file(&format!("{sda}/queue/fua"), "0\n");
    m.file(
        &format!("{sda}/device/scsi_disk/0:0:0:0/cache_type"),
        "write back\n",
    );
    m.file(&format!("{sda}/sda2/partition"), "2\n");
    let dm = "sys/devices/virtual/block/dm-0";
    m.file(&format!("{dm}/queue/scheduler"), "none\n");
    m.file(&format!("{dm}/queue/read_ahead_kb"), "4096\n");
    m.file(&format!("{dm}/queue/nr_requests"), "128\n");
    m.file(&format!("{dm}/queue/rotational"), "0\n");
    m.link(
        &format!("{dm}/slaves/sda2"),
        "../../../../pci0000:00/0000:00:1f.2/ata1/host0/target0:0:0/0:0:0:0/block/sda/sda2",
    );
    m.link("sys/dev/block/253:0", "../../devices/virtual/block/dm-0");
    m.file(
        "proc/self/mountinfo",
        "22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw\n\
         31 22 253:0 / /srv rw,relatime - xfs /dev/mapper/vg-tern rw\n",
    );
    m.file(
        "proc/interrupts",
        "           CPU0       CPU1       \n \
         26:          0         15  IO-APIC   4-edge      ttyS0\n \
         37:          0          0 PCI-MSIX-0000:00:03.0   0-edge      virtio2-config\n \
         38:          0       1925 PCI-MSIX-0000:00:03.0   1-edge      virtio2-input.0\n \
         39:       1219          0 PCI-MSIX-0000:00:03.0   2-edge      virtio2-output.0\n",
    );
    m.file("proc/irq/38/smp_affinity_list", "0-1\n");
    m.file("proc/irq/39/smp_affinity_list", "0\n");
    let virtio = "sys/devices/pci0000:00/0000:00:03.0/virtio2";
    m.file(&format!("{virtio}/net/eth0/queues/rx-0/rps_cpus"), "0\n");
    m.file(&format!("{virtio}/net/eth0/queues/tx-0/xps_cpus"), "3\n");
    m.link(
        "sys/class/net/eth0",
        "../../devices/pci0000:00/0000:00:03.0/virtio2/net/eth0",
    );
    m.link(&format!("{virtio}/net/eth0/device"), "../../../virtio2");
    m.file(
        "sys/kernel/mm/transparent_hugepage/enabled",
        "always [madvise] never\n",
    );
    m.file(
        "sys/kernel/mm/transparent_hugepage/defrag",
        "always defer defer+madvise [madvise] never\n",
    );
    m.file("proc/sys/vm/swappiness", "10\n");
    m.file("proc/sys/net/core/somaxconn", "4096\n");
    m.file("proc/sys/net/ipv4/tcp_max_syn_backlog", "512\n");
    m.limits("self", "65536");
    m.answer("ip -o addr show to 192.168.1.5", "2: eth0    inet 192.168.1.5/24 brd 192.168.1.255 scope global eth0\\       valid_lft forever preferred_lft forever\n");
    m.answer("tc qdisc show dev eth0 root", "qdisc fq_codel 0: root refcnt 2 limit 10240p flows 1024 quantum 1514 target 5ms interval 100ms memory_limit 32Mb ecn drop_batch 64 \n");
    m
}

/// A one-CPU box with the data dir on NFS and no transparent huge pages.
fn nfs_box() -> FakeMachine {
    let m = FakeMachine::new("nfs");
    m.file("sys/devices/system/cpu/online", "0\n");
    m.cpu(0, 0, 0);
    m.file(
        "proc/self/mountinfo",
        "22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw\n\
         40 22 0:53 / /mnt/shared rw,relatime - nfs4 filer:/export rw,vers=4.2\n",
    );
    m.file("proc/sys/vm/swappiness", "1\n");
    m.limits("self", "unlimited");
    m
}

#[track_caller]
fn assert_output(got: (i32, String, String), code: i32, stdout: &str) -> String {
    let (got_code, got_stdout, stderr) = got;
    assert_eq!(
        got_stdout, stdout,
        "stdout differs (stderr: {stderr})\n--- got:\n{got_stdout}\n--- expected:\n{stdout}"
    );
    assert_eq!(got_code, code, "exit code (stderr: {stderr})");
    stderr
}

const SCRIPTS: [&str; 4] = ["disk.sh", "network.sh", "cpu.sh", "memory.sh"];

fn is_root() -> bool {
    // Safety: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn scripts_pass_shellcheck() {
    let mut scripts: Vec<PathBuf> = SCRIPTS.iter().map(|s| tuning_dir().join(s)).collect();
    scripts.push(tuning_dir().join("lib.sh"));
    scripts.push(tuning_dir().join("measure-network.sh"));
    let out = Command::new("shellcheck")
        .arg("-x")
        .args(&scripts)
        .current_dir(tuning_dir())
        .output()
        .expect("shellcheck is not installed (./test.sh installs it with apt-get)");
    assert!(
        out.status.success(),
        "shellcheck:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_script_documents_its_modes_and_rejects_bad_arguments() {
    let m = nfs_box();
    for script in SCRIPTS {
        let (code, help, _) = m.run(script, &["--help"]);
        assert_eq!(code, 0, "{script} --help");
        for word in [
            "--dry-run",
            "--apply",
            "--undo",
            "check",
            "--state-file",
            "TERN_TUNING_ROOT",
        ] {
            assert!(help.contains(word), "{script} --help lacks {word}:\n{help}");
        }
        let (code, _, stderr) = m.run(script, &["--dry-run", "--no-such-flag"]);
        assert_eq!(code, 2, "{script} with an unknown flag: {stderr}");
        assert!(
            stderr.contains("unknown argument '--no-such-flag'"),
            "{stderr}"
        );
        let (code, _, stderr) = m.run(script, &[]);
        assert_eq!(code, 2, "{script} without a mode: {stderr}");
        assert!(
            stderr.contains("choose one of --dry-run, --apply, --undo, check"),
            "{stderr}"
        );
        let (code, _, stderr) = m.run(script, &["--dry-run", "--apply"]);
        assert_eq!(code, 2, "{script} with two modes: {stderr}");
    }
}

const NVME_DISK: &str = "$ROOT/sys/devices/pci0000:00/0000:00:1d.0/nvme/nvme0/nvme0n1";

#[test]
fn nvme_server_disk() {
    let m = nvme_server();
    let stderr = assert_output(
        m.run("disk.sh", &["--dry-run", "--pid", "4242"]),
        0,
        &format!(
            "ionice -c2 -n0 -p 4242 4244\n\
             echo 16 > {NVME_DISK}/queue/read_ahead_kb\n"
        ),
    );
    assert!(
        stderr.contains("the 'none' scheduler ignores I/O priorities"),
        "{stderr}"
    );
    assert_output(
        m.run("disk.sh", &["check", "--pid", "4242"]),
        1,
        "DIFF ionice of thread 4242: none level 0 (recommended: best-effort level 0)\n\
         ok   ionice of thread 4243: best-effort level 0 (recommended: best-effort level 0)\n\
         DIFF ionice of thread 4244: realtime level 4 (recommended: best-effort level 0)\n\
         ok   nvme0n1 scheduler: none (recommended: none)\n\
         info nvme0n1 nr_requests: 1023 (recommended: leave it; --nr-requests N to set)\n\
         DIFF nvme0n1 read_ahead_kb: 128 (recommended: 16)\n\
         3 setting(s) differ from the recommendation\n",
    );
    // Options change the targets: real-time class, another scheduler, nr_requests.
    assert_output(
        m.run(
            "disk.sh",
            &[
                "--dry-run",
                "--pid",
                "4242",
                "--realtime",
                "--scheduler",
                "mq-deadline",
                "--nr-requests",
                "256",
            ],
        ),
        0,
        &format!(
            "ionice -c1 -n0 -p 4242 4243 4244\n\
             echo mq-deadline > {NVME_DISK}/queue/scheduler\n\
             echo 256 > {NVME_DISK}/queue/nr_requests\n\
             echo 16 > {NVME_DISK}/queue/read_ahead_kb\n"
        ),
    );
    // A scheduler the kernel does not offer is reported, not written.
    let stderr = assert_output(
        m.run(
            "disk.sh",
            &[
                "--dry-run",
                "--data-dir",
                "/var/lib/tern/",
                "--scheduler",
                "bfq",
            ],
        ),
        0,
        &format!("echo 16 > {NVME_DISK}/queue/read_ahead_kb\n"),
    );
    assert!(
        stderr.contains("scheduler bfq not offered by this kernel"),
        "{stderr}"
    );
}

#[test]
fn nvme_server_network() {
    let m = nvme_server();
    // The interface is the one routing to the other members (n2, n3); the client ports come
    // from tern's ETCD_LISTEN_CLIENT_URLS, the peer port from its -listen-peer-urls flag.
    let peer_and_client = "tc filter add dev eth0 parent 1: protocol ip prio 1 u32 match ip sport 2380 0xffff flowid 1:1\n\
         tc filter add dev eth0 parent 1: protocol ip prio 1 u32 match ip dport 2380 0xffff flowid 1:1\n\
         tc filter add dev eth0 parent 1: protocol ipv6 prio 2 u32 match ip6 sport 2380 0xffff flowid 1:1\n\
         tc filter add dev eth0 parent 1: protocol ipv6 prio 2 u32 match ip6 dport 2380 0xffff flowid 1:1\n\
         tc filter add dev eth0 parent 1: protocol ip prio 3 u32 match ip sport 2379 0xffff flowid 1:2\n\
         tc filter add dev eth0 parent 1: protocol ip prio 3 u32 match ip sport 12379 0xffff flowid 1:2\n\
         tc filter add dev eth0 parent 1: protocol ipv6 prio 4 u32 match ip6 sport 2379 0xffff flowid 1:2\n\
         tc filter add dev eth0 parent 1: protocol ipv6 prio 4 u32 match ip6 sport 12379 0xffff flowid 1:2\n";
    assert_output(
        m.run("network.sh", &["--dry-run", "--pid", "4242"]),
        0,
        &format!(
            "tc qdisc add dev eth0 root handle 1: prio bands 3 priomap 2 2 2 2 2 2 2 2 2 2 2 2 2 2 2 2\n\
             {peer_and_client}\
             echo 1024 > $ROOT/proc/sys/net/core/somaxconn\n"
        ),
    );
    assert_output(
        m.run("network.sh", &["check", "--pid", "4242"]),
        1,
        "DIFF eth0 root qdisc: mq 0: (recommended: prio 1:)\n\
         DIFF net.core.somaxconn: 128 (recommended: at least 1024)\n\
         ok   net.ipv4.tcp_max_syn_backlog: 4096 (recommended: at least 1024)\n\
         info net.core.busy_poll: 0 (recommended: 0 unless --busy-poll USEC)\n\
         info net.core.busy_read: 0 (recommended: 0 unless --busy-poll USEC)\n\
         2 setting(s) differ from the recommendation\n",
    );
    // htb takes the NIC's reported speed (10000 Mb/s); fq_codel leaves; busy polling.
    assert_output(
        m.run(
            "network.sh",
            &["--dry-run", "--pid", "4242", "--qdisc", "htb", "--leaf", "fq_codel", "--busy-poll", "50"],
        ),
        0,
        &format!(
            "tc qdisc add dev eth0 root handle 1: htb default 30\n\
             tc class add dev eth0 parent 1: classid 1:1 htb rate 10000000kbit ceil 10000000kbit quantum 60000\n\
             tc class add dev eth0 parent 1:1 classid 1:10 htb rate 5000000kbit ceil 10000000kbit prio 0 quantum 60000\n\
             tc class add dev eth0 parent 1:1 classid 1:20 htb rate 4000000kbit ceil 10000000kbit prio 1 quantum 60000\n\
             tc class add dev eth0 parent 1:1 classid 1:30 htb rate 1000000kbit ceil 10000000kbit prio 2 quantum 60000\n\
             tc qdisc add dev eth0 parent 1:10 handle 10: fq_codel\n\
             tc qdisc add dev eth0 parent 1:20 handle 20: fq_codel\n\
             tc qdisc add dev eth0 parent 1:30 handle 30: fq_codel\n\
             {}\
             echo 1024 > $ROOT/proc/sys/net/core/somaxconn\n\
             echo 50 > $ROOT/proc/sys/net/core/busy_poll\n\
             echo 50 > $ROOT/proc/sys/net/core/busy_read\n",
            peer_and_client
                .replace("flowid 1:1\n", "flowid 1:10\n")
                .replace("flowid 1:2\n", "flowid 1:20\n")
        ),
    );
    // A root qdisc someone configured (non-zero handle) cannot be restored: refuse.
    m.answer(
        "tc qdisc show dev eth0 root",
        "qdisc htb 1: root refcnt 2 r2q 10 default 0\n",
    );
    let (code, stdout, stderr) = m.run("network.sh", &["--dry-run", "--pid", "4242"]);
    assert_eq!((code, stdout.as_str()), (2, ""), "{stderr}");
    assert!(
        stderr.contains("eth0 already has a configured root qdisc (htb 1:)"),
        "{stderr}"
    );
}

#[test]
fn nvme_server_cpu() {
    let m = nvme_server();
    let layout = "suggested layout: 4 physical core(s), 8 CPU(s), 2 thread(s) per core\n\
                  \x20 interrupts and the OS on CPU 0,4; tern on CPU 1-3\n\
                  \x20 the 3 SMT sibling(s) of tern's cores stay idle (or take housekeeping work): a busy sibling slows the executor beside it\n\
                  \x20 taskset -c 1-3 tern --cores 3 ...   (systemd: CPUAffinity=1-3)\n\
                  \x20 then: tuning/cpu.sh --apply --cpus 1-3 --cores 3\n";
    let prefixed = |prefix: &str| {
        layout
            .lines()
            .map(|l| format!("{prefix}{l}\n"))
            .collect::<String>()
    };
    let mut expected = String::new();
    for cpu in 1..=3 {
        expected += &format!(
            "echo performance > $ROOT/sys/devices/system/cpu/cpu{cpu}/cpufreq/scaling_governor\n"
        );
    }
    for cpu in 1..=3 {
        expected +=
            &format!("echo 1 > $ROOT/sys/devices/system/cpu/cpu{cpu}/cpuidle/state3/disable\n");
    }
    for irq in 40..=43 {
        expected += &format!("echo 0,4 > $ROOT/proc/irq/{irq}/smp_affinity_list\n");
    }
    for q in 0..4 {
        expected += &format!("echo 00000011 > $ROOT/sys/class/net/eth0/queues/rx-{q}/rps_cpus\n");
    }
    for (q, mask) in ["00000011", "00000022", "00000044", "00000088"]
        .iter()
        .enumerate()
    {
        expected += &format!("echo {mask} > $ROOT/sys/class/net/eth0/queues/tx-{q}/xps_cpus\n");
    }
    expected += &prefixed("# ");
    let stderr = assert_output(
        m.run("cpu.sh", &["--dry-run", "--pid", "4242"]),
        0,
        &expected,
    );
    assert!(stderr.contains("irqbalance is running"), "{stderr}");

    let mut expected = String::new();
    for cpu in 1..=3 {
        expected += &format!("DIFF cpu{cpu} governor: powersave (recommended: performance)\n");
    }
    for cpu in 1..=3 {
        expected += &format!(
            "DIFF cpu{cpu} idle state C6 (exit latency 133 us) disabled: 0 (recommended: 1)\n"
        );
    }
    for irq in 40..=43 {
        expected += &format!("DIFF eth0 irq {irq} affinity: 0-7 (recommended: 0,4)\n");
    }
    for q in 0..4 {
        expected += &format!("DIFF eth0 rx-{q} rps_cpus: 00 (recommended: 00000011)\n");
    }
    for (q, mask) in ["00000011", "00000022", "00000044", "00000088"]
        .iter()
        .enumerate()
    {
        expected += &format!("DIFF eth0 tx-{q} xps_cpus: 00 (recommended: {mask})\n");
    }
    expected += &prefixed("info ");
    expected += "info tern's executor CPUs: 1-3 (recommended: 1-3)\n\
                 18 setting(s) differ from the recommendation\n";
    assert_output(m.run("cpu.sh", &["check", "--pid", "4242"]), 1, &expected);

    // A looser idle-latency limit keeps C6; two cores on CPUs 5-6 leave 0,3,4,7 free of
    // executors' cores (5 and 6 are the siblings of cores 1 and 2).
    let (code, stdout, _) = m.run(
        "cpu.sh",
        &[
            "--dry-run",
            "--cores",
            "2",
            "--cpus",
            "5-6",
            "--max-idle-latency-us",
            "200",
            "--interface",
            "eth0",
        ],
    );
    assert_eq!(code, 0);
    assert!(!stdout.contains("cpuidle"), "{stdout}");
    assert!(
        stdout.contains("echo 0,3-4,7 > $ROOT/proc/irq/40/smp_affinity_list\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("echo 00000099 > $ROOT/sys/class/net/eth0/queues/rx-0/rps_cpus\n"),
        "{stdout}"
    );
}

#[test]
fn nvme_server_memory() {
    let m = nvme_server();
    let stderr = assert_output(
        m.run("memory.sh", &["--dry-run", "--pid", "4242"]),
        0,
        "echo madvise > $ROOT/sys/kernel/mm/transparent_hugepage/enabled\n\
         echo madvise > $ROOT/sys/kernel/mm/transparent_hugepage/defrag\n\
         echo 1 > $ROOT/proc/sys/vm/swappiness\n",
    );
    assert!(
        stderr.contains(
            "memlock limit of tern (pid 4242) is 64 KiB; tern's 4 executors need 8192 KiB"
        ) && stderr.contains("LimitMEMLOCK=8192K"),
        "{stderr}"
    );
    assert_output(
        m.run("memory.sh", &["check", "--pid", "4242"]),
        1,
        "DIFF transparent_hugepage/enabled: always (recommended: madvise or never)\n\
         DIFF transparent_hugepage/defrag: always (recommended: madvise or never)\n\
         DIFF vm.swappiness: 60 (recommended: at most 10)\n\
         DIFF memlock limit of tern (pid 4242): 64 KiB (recommended: at least 8192 KiB for 4 executors)\n\
         4 setting(s) differ from the recommendation\n",
    );
}

#[test]
fn lvm_vm_every_script() {
    let m = lvm_vm();
    // The readahead belongs to the LVM volume, the scheduler to the disk beneath it.
    let stderr = assert_output(
        m.run("disk.sh", &["--dry-run", "--data-dir", "/srv/tern"]),
        0,
        "echo 16 > $ROOT/sys/devices/virtual/block/dm-0/queue/read_ahead_kb\n",
    );
    assert!(stderr.contains("WARNING: sda reports a volatile write-back cache but the kernel treats it as write-through"), "{stderr}");
    assert!(
        stderr.contains("no --pid: I/O priority is per process"),
        "{stderr}"
    );
    assert_output(
        m.run("disk.sh", &["check", "--data-dir", "/srv/tern"]),
        1,
        "DIFF sda write cache: kernel: write through, device: write back (recommended: write back (the device's own setting))\n\
         ok   sda scheduler: mq-deadline (recommended: mq-deadline)\n\
         info sda nr_requests: 64 (recommended: leave it; --nr-requests N to set)\n\
         DIFF dm-0 read_ahead_kb: 4096 (recommended: 16)\n\
         2 setting(s) differ from the recommendation\n",
    );

    // No members named: the interface is the one owning the peer listen address.
    let args = ["--listen-peer-urls", "http://192.168.1.5:2380"];
    assert_output(
        m.run("network.sh", &[&["--dry-run"][..], &args].concat()),
        0,
        "tc qdisc add dev eth0 root handle 1: prio bands 3 priomap 2 2 2 2 2 2 2 2 2 2 2 2 2 2 2 2\n\
         tc filter add dev eth0 parent 1: protocol ip prio 1 u32 match ip sport 2380 0xffff flowid 1:1\n\
         tc filter add dev eth0 parent 1: protocol ip prio 1 u32 match ip dport 2380 0xffff flowid 1:1\n\
         tc filter add dev eth0 parent 1: protocol ipv6 prio 2 u32 match ip6 sport 2380 0xffff flowid 1:1\n\
         tc filter add dev eth0 parent 1: protocol ipv6 prio 2 u32 match ip6 dport 2380 0xffff flowid 1:1\n\
         tc filter add dev eth0 parent 1: protocol ip prio 3 u32 match ip sport 2379 0xffff flowid 1:2\n\
         tc filter add dev eth0 parent 1: protocol ipv6 prio 4 u32 match ip6 sport 2379 0xffff flowid 1:2\n\
         echo 1024 > $ROOT/proc/sys/net/ipv4/tcp_max_syn_backlog\n",
    );
    assert_output(
        m.run("network.sh", &[&["check"][..], &args].concat()),
        1,
        "DIFF eth0 root qdisc: fq_codel 0: (recommended: prio 1:)\n\
         ok   net.core.somaxconn: 4096 (recommended: at least 1024)\n\
         DIFF net.ipv4.tcp_max_syn_backlog: 512 (recommended: at least 1024)\n\
         2 setting(s) differ from the recommendation\n",
    );
    // --qdisc htb on a NIC that reports no speed needs --rate.
    let (code, _, stderr) = m.run(
        "network.sh",
        &[&["--dry-run", "--qdisc", "htb"][..], &args].concat(),
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("eth0 reports no link speed; give --rate"),
        "{stderr}"
    );

    // tern on CPU 0 (--cores 1): the virtio NIC's queue interrupts (named after virtio2,
    // its config vector left alone) and RPS go to CPU 1; one tx queue, so no XPS.
    let layout = "suggested layout: 2 physical core(s), 2 CPU(s), 1 thread(s) per core\n\
                  \x20 interrupts and the OS on CPU 0; tern on CPU 1\n\
                  \x20 taskset -c 1 tern --cores 1 ...   (systemd: CPUAffinity=1)\n\
                  \x20 then: tuning/cpu.sh --apply --cpus 1 --cores 1\n";
    let prefixed = |prefix: &str| {
        layout
            .lines()
            .map(|l| format!("{prefix}{l}\n"))
            .collect::<String>()
    };
    let stderr = assert_output(
        m.run("cpu.sh", &["--dry-run", "--cores", "1"]),
        0,
        &format!(
            "echo 1 > $ROOT/proc/irq/38/smp_affinity_list\n\
             echo 1 > $ROOT/proc/irq/39/smp_affinity_list\n\
             echo 00000002 > $ROOT/sys/class/net/eth0/queues/rx-0/rps_cpus\n\
             {}",
            prefixed("# ")
        ),
    );
    assert!(
        stderr.contains("no cpufreq on 1 executor CPU(s)"),
        "{stderr}"
    );
    assert_output(
        m.run("cpu.sh", &["check", "--cores", "1"]),
        1,
        &format!(
            "DIFF eth0 irq 38 affinity: 0-1 (recommended: 1)\n\
             DIFF eth0 irq 39 affinity: 0 (recommended: 1)\n\
             DIFF eth0 rx-0 rps_cpus: 0 (recommended: 00000002)\n\
             {}\
             info tern's executor CPUs: 0 (recommended: 1)\n\
             3 setting(s) differ from the recommendation\n",
            prefixed("info ")
        ),
    );

    let stderr = assert_output(m.run("memory.sh", &["--dry-run", "--cores", "1"]), 0, "");
    assert!(
        stderr.contains("tern's 2 executors need 4096 KiB"),
        "{stderr}"
    );
    assert_output(
        m.run("memory.sh", &["check", "--cores", "1"]),
        1,
        "ok   transparent_hugepage/enabled: madvise (recommended: madvise or never)\n\
         ok   transparent_hugepage/defrag: madvise (recommended: madvise or never)\n\
         ok   vm.swappiness: 10 (recommended: at most 10)\n\
         DIFF memlock limit of processes started from this shell: 64 KiB (recommended: at least 4096 KiB for 2 executors)\n\
         1 setting(s) differ from the recommendation\n",
    );
}

#[test]
fn nfs_box_every_script() {
    let m = nfs_box();
    let stderr = assert_output(
        m.run("disk.sh", &["--dry-run", "--data-dir", "/mnt/shared/tern"]),
        0,
        "",
    );
    assert!(
        stderr.contains(
            "WARNING: data dir /mnt/shared/tern is on a network filesystem (nfs4 at /mnt/shared)"
        ),
        "{stderr}"
    );
    assert_output(
        m.run("disk.sh", &["check", "--data-dir", "/mnt/shared/tern"]),
        1,
        "DIFF data-dir filesystem: nfs4 (recommended: a local disk filesystem)\n\
         1 setting(s) differ from the recommendation\n",
    );
    let layout = "suggested layout: 1 physical core(s), 1 CPU(s), 1 thread(s) per core\n\
                  \x20 one CPU: tern, interrupts and the OS share it\n\
                  \x20 taskset -c 0 tern --cores 1 ...   (systemd: CPUAffinity=0)\n\
                  \x20 then: tuning/cpu.sh --apply --cpus 0 --cores 1\n";
    let prefixed = |prefix: &str| {
        layout
            .lines()
            .map(|l| format!("{prefix}{l}\n"))
            .collect::<String>()
    };
    let stderr = assert_output(m.run("cpu.sh", &["--dry-run"]), 0, &prefixed("# "));
    assert!(stderr.contains("no CPU is left for interrupts"), "{stderr}");
    assert_output(
        m.run("cpu.sh", &["check"]),
        0,
        &format!(
            "{}info tern's executor CPUs: 0 (recommended: 0)\nall settings as recommended\n",
            prefixed("info ")
        ),
    );
    let stderr = assert_output(m.run("memory.sh", &["--dry-run"]), 0, "");
    assert!(
        stderr.contains("no transparent huge pages in this kernel"),
        "{stderr}"
    );
    assert_output(
        m.run("memory.sh", &["check"]),
        0,
        "ok   vm.swappiness: 1 (recommended: at most 10)\n\
         ok   memlock limit of processes started from this shell: unlimited (recommended: at least 4096 KiB for 2 executors)\n\
         all settings as recommended\n",
    );
}

#[test]
fn apply_then_undo_restores_the_faked_machine() {
    if !is_root() {
        eprintln!(
            "skipping: --apply needs root and this test runs as uid {}",
            unsafe { libc::geteuid() }
        );
        return;
    }
    let m = nvme_server();
    for (script, after_apply_code) in [("disk.sh", 0), ("cpu.sh", 0), ("memory.sh", 1)] {
        let before = m.run(script, &["check", "--pid", "4242"]);
        let dry_run = m.run(script, &["--dry-run", "--pid", "4242"]);
        // --apply prints what --dry-run printed, and then the settings are as recommended
        // (memory.sh cannot raise a running process's memlock limit, so that stays DIFF).
        let applied = m.run(script, &["--apply", "--pid", "4242"]);
        assert_eq!(
            (applied.0, &applied.1),
            (0, &dry_run.1),
            "{script} --apply: {}",
            applied.2
        );
        let after = m.run(script, &["check", "--pid", "4242"]);
        assert_eq!(
            after.0, after_apply_code,
            "{script} check after --apply:\n{}",
            after.1
        );
        assert!(
            !after.1.contains("DIFF") || script == "memory.sh",
            "{}",
            after.1
        );
        // A second --apply would record the already-changed values: refused.
        let (code, _, stderr) = m.run(script, &["--apply", "--pid", "4242"]);
        assert_eq!(code, 2);
        assert!(stderr.contains("already applied"), "{stderr}");
        let undone = m.run(script, &["--undo"]);
        assert_eq!(undone.0, 0, "{script} --undo: {}", undone.2);
        assert_eq!(
            m.run(script, &["check", "--pid", "4242"]),
            before,
            "{script} after --undo"
        );
        assert!(!m
            .path(&format!("state/{}.state", &script[..script.len() - 3]))
            .exists());
        let (code, _, stderr) = m.run(script, &["--undo"]);
        assert_eq!(code, 0);
        assert!(stderr.contains("nothing to undo"), "{stderr}");
    }
    // --undo leaves alone a setting changed again after --apply, and says so.
    assert_eq!(m.run("memory.sh", &["--apply"]).0, 0);
    m.file("proc/sys/vm/swappiness", "30\n");
    let (code, _, stderr) = m.run("memory.sh", &["--undo"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("swappiness is 30, not the 1 --apply wrote; leaving it"),
        "{stderr}"
    );
    assert_eq!(
        fs::read_to_string(m.path("proc/sys/vm/swappiness")).unwrap(),
        "30\n"
    );
    let thp = fs::read_to_string(m.path("sys/kernel/mm/transparent_hugepage/enabled")).unwrap();
    assert_eq!(thp, "always\n", "the other settings are restored");

    let log = fs::read_to_string(m.path("stub/log")).unwrap();
    assert!(log.contains("ionice -c2 -n0 -p 4242 4244\n"), "{log}");
    assert!(
        log.contains("ionice -c1 -n4 -p 4244\n") && log.contains("ionice -c0 -p 4242\n"),
        "{log}"
    );
}

#[test]
fn apply_without_root_is_refused() {
    let m = nvme_server();
    let before = m.run("memory.sh", &["check"]);
    // As root, drop to nobody; otherwise the test already runs unprivileged.
    let unprivileged = || {
        let mut command = if is_root() {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups"]);
            c.arg(tuning_dir().join("memory.sh"));
            c
        } else {
            Command::new(tuning_dir().join("memory.sh"))
        };
        command
            .env("TERN_TUNING_ROOT", m.root())
            .env("TERN_TUNING_STATE_DIR", m.path("state"));
        command
    };
    for mode in ["--apply", "--undo"] {
        let out = unprivileged().arg(mode).output().unwrap();
        let (code, stdout, stderr) = decode(out, m.root());
        assert_eq!((code, stdout.as_str()), (2, ""), "{stderr}");
        assert!(
            stderr.contains(&format!(
                "memory.sh: {mode} changes kernel settings and needs root"
            )),
            "{stderr}"
        );
    }
    assert_eq!(m.run("memory.sh", &["check"]), before);
}

// ---------------------------------------------------------------- real network namespaces

/// Two network namespaces joined by a veth pair (va in the first, vb in the second),
/// deleted on drop.
struct VethPair {
    a: String,
    b: String,
}

impl VethPair {
    const A_IP: &'static str = "10.213.0.1";
    const B_IP: &'static str = "10.213.0.2";

    fn new() -> Result<VethPair, String> {
        let a = format!("tern-tuning-a-{}", std::process::id());
        let b = format!("tern-tuning-b-{}", std::process::id());
        let out = Command::new("ip")
            .args(["netns", "add", &a])
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        let pair = VethPair { a, b };
        ip(&["netns", "add", &pair.b]);
        ip(&[
            "-n", &pair.a, "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns",
            &pair.b,
        ]);
        ip(&[
            "-n",
            &pair.a,
            "addr",
            "add",
            &format!("{}/24", Self::A_IP),
            "dev",
            "va",
        ]);
        ip(&[
            "-n",
            &pair.b,
            "addr",
            "add",
            &format!("{}/24", Self::B_IP),
            "dev",
            "vb",
        ]);
        for (ns, dev) in [
            (&pair.a, "va"),
            (&pair.b, "vb"),
            (&pair.a, "lo"),
            (&pair.b, "lo"),
        ] {
            ip(&["-n", ns, "link", "set", dev, "up"]);
        }
        // A static neighbour, so test packets leave at once instead of waiting for ARP.
        let link = ip(&["-n", &pair.b, "-o", "link", "show", "vb"]);
        let mac = link
            .split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .unwrap()
            .to_string();
        ip(&[
            "-n",
            &pair.a,
            "neigh",
            "replace",
            Self::B_IP,
            "lladdr",
            &mac,
            "dev",
            "va",
        ]);
        Ok(pair)
    }

    fn in_a(&self, program: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.a, program])
            .args(args)
            .output()
            .unwrap()
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.a]).output();
        let _ = Command::new("ip").args(["netns", "del", &self.b]).output();
    }
}

#[track_caller]
fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Packets counted in each class of `tc -s class show` ("1:10" -> packets).
fn class_packets(pair: &VethPair) -> std::collections::HashMap<String, u64> {
    let out = pair.in_a("tc", &["-s", "class", "show", "dev", "va"]);
    let mut counts = std::collections::HashMap::new();
    let mut class = None;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first() == Some(&"class") {
            class = words.get(2).map(|c| c.to_string());
        } else if words.first() == Some(&"Sent") {
            let packets = words
                .iter()
                .position(|w| *w == "pkt")
                .map(|i| words[i - 1].parse().unwrap());
            if let (Some(class), Some(packets)) = (class.take(), packets) {
                counts.insert(class, packets);
            }
        }
    }
    counts
}

/// How long the classified test packets may take to show in the class counters.
const CLASS_COUNT_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

#[test]
fn network_script_applied_for_real_in_a_namespace() {
    let pair = match VethPair::new() {
        Ok(pair) => pair,
        Err(e) => {
            eprintln!("skipping: network namespaces are not permitted here (ip netns add: {e})");
            return;
        }
    };
    let state = TempDir::new("netns-state");
    let (peer_port, client_port) = (2380u16, 2379u16);
    let urls = [
        "--interface".to_string(),
        "va".to_string(),
        "--listen-peer-urls".to_string(),
        format!("http://{}:{peer_port}", VethPair::A_IP),
        "--listen-client-urls".to_string(),
        format!("http://{}:{client_port}", VethPair::A_IP),
    ];
    let script = tuning_dir().join("network.sh").display().to_string();
    let run = |mode: &str, layout: &[&str]| -> Output {
        let mut args: Vec<&str> = vec![&script, mode];
        args.extend(urls.iter().map(String::as_str));
        args.extend(layout);
        Command::new("ip")
            .args(["netns", "exec", &pair.a])
            .args(&args)
            .env("TERN_TUNING_STATE_DIR", &state.0)
            .output()
            .unwrap()
    };
    // prio is etcd's layout but needs sch_prio, which some kernels lack (this test says so).
    let probe = Command::new("ip")
        .args([
            "netns", "exec", &pair.b, "tc", "qdisc", "add", "dev", "vb", "root", "handle", "1:",
            "prio",
        ])
        .output()
        .unwrap();
    let mut layouts: Vec<(&[&str], &str, [&str; 3])> = vec![(
        &["--qdisc", "htb", "--rate", "1gbit"],
        "qdisc htb 1: root",
        ["1:10", "1:20", "1:30"],
    )];
    if probe.status.success() {
        ip(&["-n", &pair.b, "link", "set", "vb", "down"]);
        let _ = Command::new("ip")
            .args([
                "netns", "exec", &pair.b, "tc", "qdisc", "del", "dev", "vb", "root",
            ])
            .output();
        ip(&["-n", &pair.b, "link", "set", "vb", "up"]);
        layouts.push((&[], "qdisc prio 1: root", ["1:1", "1:2", "1:3"]));
    } else {
        eprintln!(
            "note: this kernel has no prio qdisc ({}); testing the htb layout only",
            text(&probe).trim()
        );
    }

    for (layout, root_line, [peer_class, client_class, bulk_class]) in layouts {
        let original = text(&pair.in_a("tc", &["qdisc", "show", "dev", "va"]));
        let check = run("check", layout);
        assert_eq!(
            check.status.code(),
            Some(1),
            "check before --apply:\n{}",
            text(&check)
        );

        let applied = run("--apply", layout);
        assert!(
            applied.status.success(),
            "--apply {layout:?}:\n{}",
            text(&applied)
        );
        let qdiscs = text(&pair.in_a("tc", &["qdisc", "show", "dev", "va"]));
        assert!(qdiscs.contains(root_line), "{qdiscs}");
        let filters = text(&pair.in_a("tc", &["filter", "show", "dev", "va"]));
        for (matcher, class) in [
            (
                format!("match {peer_port:04x}0000/ffff0000 at 20"),
                peer_class,
            ),
            (
                format!("match 0000{peer_port:04x}/0000ffff at 20"),
                peer_class,
            ),
            (
                format!("match {peer_port:04x}0000/ffff0000 at 40"),
                peer_class,
            ),
            (
                format!("match {client_port:04x}0000/ffff0000 at 20"),
                client_class,
            ),
            (
                format!("match {client_port:04x}0000/ffff0000 at 40"),
                client_class,
            ),
        ] {
            let block = filters
                .split("filter parent")
                .find(|b| b.contains(&matcher));
            let block = block.unwrap_or_else(|| panic!("no filter with {matcher}:\n{filters}"));
            assert!(
                block.contains(&format!("flowid {class} ")),
                "{matcher} not to {class}:\n{block}"
            );
        }
        let check = run("check", layout);
        assert!(
            check.status.success(),
            "check after --apply:\n{}",
            text(&check)
        );

        // Packets from the peer port, the client port and elsewhere land in their classes.
        let before = class_packets(&pair);
        let sent = pair.in_a(
            "python3",
            &[
                "-c",
                "import socket, sys\n\
                 for port, n in ((int(sys.argv[2]), 3), (int(sys.argv[3]), 5), (40999, 7)):\n\
                 \x20   s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
                 \x20   s.bind((sys.argv[1], port))\n\
                 \x20   for _ in range(n): s.sendto(b'tern', (sys.argv[4], 9))\n",
                VethPair::A_IP,
                &peer_port.to_string(),
                &client_port.to_string(),
                VethPair::B_IP,
            ],
        );
        assert!(sent.status.success(), "{}", text(&sent));
        let deadline = std::time::Instant::now() + CLASS_COUNT_WAIT;
        let delta = loop {
            let now = class_packets(&pair);
            let delta = |class: &str| {
                now.get(class).copied().unwrap_or(0) - before.get(class).copied().unwrap_or(0)
            };
            let got = (delta(peer_class), delta(client_class), delta(bulk_class));
            if (got.0 >= 3 && got.1 >= 5 && got.2 >= 7) || std::time::Instant::now() > deadline {
                break got;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        // Only the test's packets use the peer and client ports; the bulk class also carries
        // whatever else the namespace sends (IPv6 neighbour discovery).
        assert_eq!(
            (delta.0, delta.1),
            (3, 5),
            "packets in {peer_class}, {client_class}"
        );
        assert!(delta.2 >= 7, "packets in {bulk_class}: {}", delta.2);

        let undone = run("--undo", layout);
        assert!(undone.status.success(), "--undo:\n{}", text(&undone));
        assert_eq!(
            text(&pair.in_a("tc", &["qdisc", "show", "dev", "va"])),
            original,
            "qdisc after --undo"
        );
        assert!(!state.0.join("network.state").exists());
    }
}
