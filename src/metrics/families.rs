//! Scrape time: reads the cells, builds etcd's metric families (names, help texts, types,
//! labels, buckets as etcd 3.4 registers them) and encodes them with the `prometheus`
//! crate's text encoder (exposition format 0.0.4, as etcd's promhttp handler answers).
//!
//! Invariant: families come out sorted by name and each family's metrics by their label
//! values, as Go's client_golang gathers them, so a scrape reads like etcd's.

use std::sync::atomic::Ordering::Relaxed;

use prometheus::proto::{
    Bucket, Counter as PCounter, Gauge as PGauge, Histogram as PHistogram, LabelPair, Metric,
    MetricFamily, MetricType,
};

use super::cells::{self, sum_network, HistogramCells, STATE};
use super::grpc_table::{split, CODE_NAMES, GRPC_CODES, METHODS};
use super::*;

/// The Content-Type of a scrape answer.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// etcd's server version, for `etcd_server_version` (this module imports nothing of the
/// server; a test in `service::http` checks it against `state::machine`'s).
pub const SERVER_VERSION: &str = "3.4.23";
/// The cluster version label of `etcd_cluster_version` (major.minor, as etcd writes it).
const CLUSTER_VERSION: &str = "3.4";

fn labels(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
    let mut out: Vec<LabelPair> = pairs
        .iter()
        .map(|(name, value)| {
            let mut pair = LabelPair::default();
            pair.set_name(name.to_string());
            pair.set_value(value.to_string());
            pair
        })
        .collect();
    out.sort_by(|a, b| a.name().cmp(b.name()));
    out
}

fn family(name: &str, help: &str, kind: MetricType, mut metrics: Vec<Metric>) -> MetricFamily {
    // By label values, as client_golang orders a family's series. Compared in place: a
    // key copied out per comparison cost ~80,000 allocations a scrape (816
    // grpc_server_handled_total series), most of the page's CPU.
    metrics.sort_by(|a, b| {
        let values_a = a.get_label().iter().map(|l| l.value());
        values_a.cmp(b.get_label().iter().map(|l| l.value()))
    });
    let mut family = MetricFamily::default();
    family.set_name(name.to_string());
    family.set_help(help.to_string());
    family.set_field_type(kind);
    family.set_metric(metrics);
    family
}

fn counter_metric(label_pairs: &[(&str, &str)], value: f64) -> Metric {
    let mut metric = Metric::from_label(labels(label_pairs));
    let mut counter = PCounter::default();
    counter.set_value(value);
    metric.set_counter(counter);
    metric
}

fn gauge_metric(label_pairs: &[(&str, &str)], value: f64) -> Metric {
    let mut metric = Metric::from_label(labels(label_pairs));
    let mut gauge = PGauge::default();
    gauge.set_value(value);
    metric.set_gauge(gauge);
    metric
}

fn histogram_metric(
    label_pairs: &[(&str, &str)],
    cells: &HistogramCells,
    bounds: &[f64],
) -> Metric {
    let (cumulative, count, sum) = cells.read(bounds);
    let mut histogram = PHistogram::default();
    histogram.set_sample_count(count);
    histogram.set_sample_sum(sum);
    histogram.set_bucket(
        bounds
            .iter()
            .zip(cumulative)
            .map(|(bound, n)| {
                let mut bucket = Bucket::default();
                bucket.set_upper_bound(*bound);
                bucket.set_cumulative_count(n);
                bucket
            })
            .collect(),
    );
    let mut metric = Metric::from_label(labels(label_pairs));
    metric.set_histogram(histogram);
    metric
}

struct Families(Vec<MetricFamily>);

impl Families {
    fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.0.push(family(
            name,
            help,
            MetricType::COUNTER,
            vec![counter_metric(&[], value as f64)],
        ));
    }
    fn gauge(&mut self, name: &str, help: &str, value: f64) {
        self.0.push(family(
            name,
            help,
            MetricType::GAUGE,
            vec![gauge_metric(&[], value)],
        ));
    }
    fn labeled_gauge(&mut self, name: &str, help: &str, label: (&str, &str), value: f64) {
        self.0.push(family(
            name,
            help,
            MetricType::GAUGE,
            vec![gauge_metric(&[label], value)],
        ));
    }
    fn histogram(&mut self, name: &str, help: &str, cells: &HistogramCells, bounds: &[f64]) {
        self.0.push(family(
            name,
            help,
            MetricType::HISTOGRAM,
            vec![histogram_metric(&[], cells, bounds)],
        ));
    }
}

/// Every family, encoded as etcd's `/metrics` answers.
pub fn gather_text() -> String {
    let mut f = Families(Vec::new());
    server_families(&mut f);
    disk_families(&mut f);
    mvcc_families(&mut f);
    lease_families(&mut f);
    network_families(&mut f);
    grpc_families(&mut f);
    process_families(&mut f);
    let mut families = f.0;
    families.sort_by(|a, b| a.name().cmp(b.name()));
    let mut out = String::with_capacity(64 * 1024);
    // Encoding only fails on a malformed family, which the builders above never make.
    let _ = prometheus::TextEncoder::new().encode_utf8(&families, &mut out);
    out
}

fn server_families(f: &mut Families) {
    let s = &STATE;
    f.labeled_gauge(
        "etcd_cluster_version",
        "Which version is running. 1 for 'cluster_version' label with current cluster version",
        ("cluster_version", CLUSTER_VERSION),
        1.0,
    );
    f.labeled_gauge(
        "etcd_server_version",
        "Which version is running. 1 for 'server_version' label with current version.",
        ("server_version", SERVER_VERSION),
        1.0,
    );
    let id = format!("{:x}", s.member_id.load(Relaxed));
    f.labeled_gauge(
        "etcd_server_id",
        "Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID.",
        ("server_id", &id),
        1.0,
    );
    f.gauge(
        "etcd_server_has_leader",
        "Whether or not a leader exists. 1 is existence, 0 is not.",
        s.has_leader.get() as f64,
    );
    f.gauge(
        "etcd_server_is_leader",
        "Whether or not this member is a leader. 1 if is, 0 otherwise.",
        s.is_leader.get() as f64,
    );
    f.gauge(
        "etcd_server_is_learner",
        "Whether or not this member is a learner. 1 if is, 0 otherwise.",
        s.is_learner.get() as f64,
    );
    f.gauge(
        "etcd_server_quota_backend_bytes",
        "Current backend storage quota size in bytes.",
        s.quota_backend_bytes.get() as f64,
    );
    f.counter(
        "etcd_server_leader_changes_seen_total",
        "The number of leader changes seen.",
        s.leader_changes_seen.get(),
    );
    f.gauge(
        "etcd_server_proposals_committed_total",
        "The total number of consensus proposals committed.",
        s.proposals_committed.get() as f64,
    );
    f.gauge(
        "etcd_server_proposals_applied_total",
        "The total number of consensus proposals applied.",
        s.proposals_applied.get() as f64,
    );
    f.gauge(
        "etcd_server_proposals_pending",
        "The current number of pending proposals to commit.",
        s.proposals_pending.get() as f64,
    );
    f.counter(
        "etcd_server_proposals_failed_total",
        "The total number of failed proposals seen.",
        s.proposals_failed.get(),
    );
    f.counter(
        "etcd_server_heartbeat_send_failures_total",
        "The total number of leader heartbeat send failures (likely overloaded from slow disk).",
        s.heartbeat_send_failures.get(),
    );
    f.counter(
        "etcd_server_slow_apply_total",
        "The total number of slow apply requests (likely overloaded from slow disk).",
        s.slow_apply.get(),
    );
    f.counter(
        "etcd_server_slow_read_indexes_total",
        "The total number of pending read indexes not in sync with leader's or timed out read index requests.",
        s.slow_read_indexes.get(),
    );
    f.counter(
        "etcd_server_read_indexes_failed_total",
        "The total number of failed read indexes seen.",
        s.read_indexes_failed.get(),
    );
    f.gauge(
        "etcd_server_snapshot_apply_in_progress_total",
        "1 if the server is applying the incoming snapshot. 0 if none.",
        s.snapshot_apply_in_progress.get() as f64,
    );
    f.counter(
        "etcd_server_learner_promote_successes",
        "The total number of successful learner promotions while this member is leader.",
        s.learner_promote_successes.get(),
    );
    f.counter(
        "etcd_server_health_success",
        "The total number of successful health checks",
        sum_network(|c| c.health_success.get() as i64) as u64,
    );
    f.counter(
        "etcd_server_health_failures",
        "The total number of failed health checks",
        sum_network(|c| c.health_failures.get() as i64) as u64,
    );
}

fn disk_families(f: &mut Families) {
    let s = &STATE;
    f.histogram(
        "etcd_disk_wal_fsync_duration_seconds",
        "The latency distributions of fsync called by WAL.",
        &s.wal_fsync,
        &DISK_SECONDS_BUCKETS,
    );
    f.gauge(
        "etcd_disk_wal_write_bytes_total",
        "Total number of bytes written in WAL.",
        s.wal_write_bytes.get() as f64,
    );
    f.histogram(
        "etcd_disk_backend_commit_duration_seconds",
        "The latency distributions of commit called by backend.",
        &s.backend_commit,
        &DISK_SECONDS_BUCKETS,
    );
    f.histogram(
        "etcd_disk_backend_defrag_duration_seconds",
        "The latency distribution of backend defragmentation.",
        &s.backend_defrag,
        &DEFRAG_SECONDS_BUCKETS,
    );
    f.histogram(
        "etcd_disk_backend_snapshot_duration_seconds",
        "The latency distribution of backend snapshots.",
        &s.backend_snapshot,
        &SNAPSHOT_SECONDS_BUCKETS,
    );
    f.gauge(
        "etcd_disk_defrag_inflight",
        "Whether or not defrag is active on the member. 1 means active, 0 means not.",
        s.defrag_inflight.get() as f64,
    );
}

fn mvcc_families(f: &mut Families) {
    let s = &STATE;
    // etcd 3.4 counts each operation twice, under its stable and its debugging name.
    for prefix in ["etcd_mvcc", "etcd_debugging_mvcc"] {
        f.counter(
            &format!("{prefix}_put_total"),
            "Total number of puts seen by this member.",
            s.mvcc_put.get(),
        );
        f.counter(
            &format!("{prefix}_delete_total"),
            "Total number of deletes seen by this member.",
            s.mvcc_delete.get(),
        );
        f.counter(
            &format!("{prefix}_range_total"),
            "Total number of ranges seen by this member.",
            s.mvcc_range.get(),
        );
        f.counter(
            &format!("{prefix}_txn_total"),
            "Total number of txns seen by this member.",
            s.mvcc_txn.get(),
        );
        f.gauge(
            &format!("{prefix}_db_total_size_in_bytes"),
            "Total size of the underlying database physically allocated in bytes.",
            s.db_total_size_bytes.get() as f64,
        );
    }
    f.gauge(
        "etcd_mvcc_db_total_size_in_use_in_bytes",
        "Total size of the underlying database logically in use in bytes.",
        s.db_total_size_in_use_bytes.get() as f64,
    );
    f.histogram(
        "etcd_mvcc_hash_duration_seconds",
        "The latency distribution of storage hash operation.",
        &s.hash_duration,
        &HASH_SECONDS_BUCKETS,
    );
    f.histogram(
        "etcd_mvcc_hash_rev_duration_seconds",
        "The latency distribution of storage hash by revision operation.",
        &s.hash_rev_duration,
        &HASH_SECONDS_BUCKETS,
    );
    f.gauge(
        "etcd_debugging_mvcc_keys_total",
        "Total number of keys.",
        s.mvcc_keys.get() as f64,
    );
    f.gauge(
        "etcd_debugging_mvcc_current_revision",
        "The current revision of store.",
        s.mvcc_current_revision.get() as f64,
    );
    f.gauge(
        "etcd_debugging_mvcc_compact_revision",
        "The revision of the last compaction in store.",
        s.mvcc_compact_revision.get() as f64,
    );
    f.gauge(
        "etcd_debugging_mvcc_watch_stream_total",
        "Total number of watch streams.",
        sum_network(|c| c.watch_streams.get()) as f64,
    );
    f.gauge(
        "etcd_debugging_mvcc_watcher_total",
        "Total number of watchers.",
        sum_network(|c| c.watchers.get()) as f64,
    );
    f.gauge(
        "etcd_debugging_mvcc_slow_watcher_total",
        "Total number of unsynced slow watchers.",
        sum_network(|c| c.slow_watchers.get()) as f64,
    );
}

fn lease_families(f: &mut Families) {
    let s = &STATE;
    f.counter(
        "etcd_debugging_lease_granted_total",
        "The total number of granted leases.",
        s.lease_granted.get(),
    );
    f.counter(
        "etcd_debugging_lease_revoked_total",
        "The total number of revoked leases.",
        s.lease_revoked.get(),
    );
    f.counter(
        "etcd_debugging_lease_renewed_total",
        "The number of renewed leases seen by the leader.",
        s.lease_renewed.get(),
    );
    f.counter(
        "etcd_debugging_server_lease_expired_total",
        "The total number of expired leases.",
        s.lease_expired.get(),
    );
    f.histogram(
        "etcd_debugging_lease_ttl_total",
        "Bucketed histogram of lease TTLs.",
        &s.lease_ttl,
        &LEASE_TTL_BUCKETS,
    );
}

fn network_families(f: &mut Families) {
    f.counter(
        "etcd_network_client_grpc_received_bytes_total",
        "The total number of bytes received from grpc clients.",
        sum_network(|c| c.grpc_received_bytes.get() as i64) as u64,
    );
    f.counter(
        "etcd_network_client_grpc_sent_bytes_total",
        "The total number of bytes sent to grpc clients.",
        sum_network(|c| c.grpc_sent_bytes.get() as i64) as u64,
    );
    let peers: Vec<(String, &cells::PeerCells)> = STATE
        .peers
        .iter()
        .filter_map(|p| {
            let id = p.id.load(Relaxed);
            (id != 0).then(|| (format!("{id:x}"), p))
        })
        .collect();
    // Go's vectors with no child are not written at all; neither are these.
    if peers.is_empty() {
        return;
    }
    let per_peer = |label: &str, read: &dyn Fn(&cells::PeerCells) -> u64| -> Vec<Metric> {
        peers
            .iter()
            .map(|(id, p)| counter_metric(&[(label, id)], read(p) as f64))
            .collect()
    };
    f.0.push(family(
        "etcd_network_peer_sent_bytes_total",
        "The total number of bytes sent to peers.",
        MetricType::COUNTER,
        per_peer("To", &|p| p.sent_bytes.get()),
    ));
    f.0.push(family(
        "etcd_network_peer_received_bytes_total",
        "The total number of bytes received from peers.",
        MetricType::COUNTER,
        per_peer("From", &|p| p.received_bytes.get()),
    ));
    f.0.push(family(
        "etcd_network_peer_sent_failures_total",
        "The total number of send failures from peers.",
        MetricType::COUNTER,
        per_peer("To", &|p| p.sent_failures.get()),
    ));
    f.0.push(family(
        "etcd_network_peer_round_trip_time_seconds",
        "Round-Trip-Time histogram between peers",
        MetricType::HISTOGRAM,
        peers
            .iter()
            .map(|(id, p)| {
                histogram_metric(&[("To", id)], &p.round_trip, &PEER_RTT_SECONDS_BUCKETS)
            })
            .collect(),
    ));
}

fn grpc_families(f: &mut Families) {
    let per_method = |read: &dyn Fn(&cells::NetworkCells, usize) -> u64| -> Vec<Metric> {
        METHODS
            .iter()
            .enumerate()
            .map(|(i, (path, kind))| {
                let (service, method) = split(path);
                let total = sum_network(|c| read(c, i) as i64) as f64;
                counter_metric(
                    &[
                        ("grpc_method", method),
                        ("grpc_service", service),
                        ("grpc_type", kind),
                    ],
                    total,
                )
            })
            .collect()
    };
    f.0.push(family(
        "grpc_server_started_total",
        "Total number of RPCs started on the server.",
        MetricType::COUNTER,
        per_method(&|c, i| c.grpc_started[i].get()),
    ));
    f.0.push(family(
        "grpc_server_msg_received_total",
        "Total number of RPC stream messages received on the server.",
        MetricType::COUNTER,
        per_method(&|c, i| c.grpc_msg_received[i].get()),
    ));
    f.0.push(family(
        "grpc_server_msg_sent_total",
        "Total number of gRPC stream messages sent by the server.",
        MetricType::COUNTER,
        per_method(&|c, i| c.grpc_msg_sent[i].get()),
    ));
    let mut handled = Vec::with_capacity(METHODS.len() * GRPC_CODES);
    for (i, (path, kind)) in METHODS.iter().enumerate() {
        let (service, method) = split(path);
        for (code, code_name) in CODE_NAMES.iter().enumerate() {
            let total = sum_network(|c| c.grpc_handled[i][code].get() as i64) as f64;
            handled.push(counter_metric(
                &[
                    ("grpc_code", code_name),
                    ("grpc_method", method),
                    ("grpc_service", service),
                    ("grpc_type", kind),
                ],
                total,
            ));
        }
    }
    f.0.push(family(
        "grpc_server_handled_total",
        "Total number of RPCs completed on the server, regardless of success or failure.",
        MetricType::COUNTER,
        handled,
    ));
}

/// client_golang's process collector, from /proc (memory-backed: reading it never waits on
/// a disk).
fn process_families(f: &mut Families) {
    let Some(stat) = ProcessStat::read() else {
        return;
    };
    f.counter_f64(
        "process_cpu_seconds_total",
        "Total user and system CPU time spent in seconds.",
        stat.cpu_seconds,
    );
    let (open_fds, max_fds) = (stat.open_fds as f64, stat.max_fds as f64);
    f.gauge(
        "process_open_fds",
        "Number of open file descriptors.",
        open_fds,
    );
    f.gauge(
        "process_max_fds",
        "Maximum number of open file descriptors.",
        max_fds,
    );
    f.gauge(
        "os_fd_used",
        "The number of used file descriptors.",
        open_fds,
    );
    f.gauge("os_fd_limit", "The file descriptor limit.", max_fds);
    f.gauge(
        "process_resident_memory_bytes",
        "Resident memory size in bytes.",
        stat.resident_bytes as f64,
    );
    f.gauge(
        "process_virtual_memory_bytes",
        "Virtual memory size in bytes.",
        stat.virtual_bytes as f64,
    );
    f.gauge(
        "process_virtual_memory_max_bytes",
        "Maximum amount of virtual memory available in bytes.",
        stat.virtual_max_bytes,
    );
    f.gauge(
        "process_start_time_seconds",
        "Start time of the process since unix epoch in seconds.",
        stat.start_time_seconds,
    );
}

impl Families {
    fn counter_f64(&mut self, name: &str, help: &str, value: f64) {
        self.0.push(family(
            name,
            help,
            MetricType::COUNTER,
            vec![counter_metric(&[], value)],
        ));
    }
}

struct ProcessStat {
    cpu_seconds: f64,
    open_fds: u64,
    max_fds: u64,
    resident_bytes: u64,
    virtual_bytes: u64,
    virtual_max_bytes: f64,
    start_time_seconds: f64,
}

impl ProcessStat {
    fn read() -> Option<ProcessStat> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // The command name (field 2) may hold spaces and parentheses: fields after it are
        // counted from the last ')'.
        let after_name = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        // Field n of proc(5) is fields[n - 3] here.
        let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok());
        // Safety: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        // Safety: as above.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
        let boot_time = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("btime "))
                .and_then(|v| v.trim().parse::<f64>().ok())
        })?;
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
        Some(ProcessStat {
            cpu_seconds: (field(14)? + field(15)?) as f64 / ticks,
            open_fds,
            max_fds: rlimit(libc::RLIMIT_NOFILE).unwrap_or(0.0) as u64,
            resident_bytes: field(24)? * page,
            virtual_bytes: field(23)?,
            virtual_max_bytes: rlimit(libc::RLIMIT_AS).unwrap_or(f64::INFINITY),
            start_time_seconds: boot_time + field(22)? as f64 / ticks,
        })
    }
}

/// A soft limit; "unlimited" as client_golang writes it (2^64 - 1).
fn rlimit(resource: libc::__rlimit_resource_t) -> Option<f64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // Safety: getrlimit writes one rlimit into the struct we own.
    if unsafe { libc::getrlimit(resource, &mut limit) } != 0 {
        return None;
    }
    Some(limit.rlim_cur as f64)
}
