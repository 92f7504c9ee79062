//! Prometheus metrics with etcd 3.4's names, types, labels, help texts and buckets, so
//! that etcd's Grafana dashboard and alert rules work on tern unchanged.
//!
//! - [`cells`]: where counts live between scrapes (per network core, and the state core's),
//!   and why counting costs a request no contended cache line;
//! - [`grpc_table`]: the gRPC methods and codes counted by name;
//! - [`families`]: turns the cells into metric families at scrape time and encodes them in
//!   the text exposition format with the `prometheus` crate.
//!
//! This module imports nothing of the server: every layer that counts (grpc, service,
//! raft, state, mvcc) calls down into it.

pub mod cells;
pub mod families;
pub mod grpc_table;

pub use cells::{bind_network_core, peer, STATE};
pub use families::{gather_text, TEXT_CONTENT_TYPE};

/// etcd's `ExponentialBuckets(start, factor, count)`.
pub const fn exponential_buckets<const N: usize>(start: f64, factor: f64) -> [f64; N] {
    let mut out = [0.0; N];
    let mut value = start;
    let mut i = 0;
    while i < N {
        out[i] = value;
        value *= factor;
        i += 1;
    }
    out
}

/// `etcd_disk_wal_fsync_duration_seconds` and `etcd_disk_backend_commit_duration_seconds`.
pub const DISK_SECONDS_BUCKETS: [f64; 14] = exponential_buckets(0.001, 2.0);
/// `etcd_disk_backend_defrag_duration_seconds`.
pub const DEFRAG_SECONDS_BUCKETS: [f64; 13] = exponential_buckets(0.1, 2.0);
/// `etcd_disk_backend_snapshot_duration_seconds`.
pub const SNAPSHOT_SECONDS_BUCKETS: [f64; 17] = exponential_buckets(0.01, 2.0);
/// `etcd_network_peer_round_trip_time_seconds`.
pub const PEER_RTT_SECONDS_BUCKETS: [f64; 16] = exponential_buckets(0.0001, 2.0);
/// `etcd_mvcc_hash_duration_seconds` and `etcd_mvcc_hash_rev_duration_seconds`.
pub const HASH_SECONDS_BUCKETS: [f64; 15] = exponential_buckets(0.01, 2.0);
/// `etcd_debugging_lease_ttl_total`.
pub const LEASE_TTL_BUCKETS: [f64; 24] = exponential_buckets(1.0, 2.0);

/// One gRPC call began; returns its method's table index (None: not a method etcd has).
#[inline]
pub fn grpc_started(path: &str) -> Option<usize> {
    let index = grpc_table::method_index(path)?;
    let (cells, exclusive) = cells::network();
    cells.grpc_started[index].add(1, exclusive);
    Some(index)
}

/// One gRPC call ended with status `code`.
#[inline]
pub fn grpc_handled(index: usize, code: u8) {
    let (cells, exclusive) = cells::network();
    let code = (code as usize).min(grpc_table::GRPC_CODES - 1);
    cells.grpc_handled[index][code].add(1, exclusive);
}

/// One request message of `bytes` arrived on a call.
#[inline]
pub fn grpc_message_received(index: Option<usize>, bytes: usize) {
    let (cells, exclusive) = cells::network();
    if let Some(index) = index {
        cells.grpc_msg_received[index].add(1, exclusive);
    }
    cells.grpc_received_bytes.add(bytes as u64, exclusive);
}

/// Response messages of `bytes` in all (`messages` of them) left on a call.
#[inline]
pub fn grpc_messages_sent(index: Option<usize>, messages: u64, bytes: usize) {
    let (cells, exclusive) = cells::network();
    if let Some(index) = index {
        cells.grpc_msg_sent[index].add(messages, exclusive);
    }
    cells.grpc_sent_bytes.add(bytes as u64, exclusive);
}

/// A `/health` answer (etcd counts them as `etcd_server_health_success`/`_failures`).
pub fn health_checked(healthy: bool) {
    let (cells, exclusive) = cells::network();
    if healthy {
        cells.health_success.add(1, exclusive);
    } else {
        cells.health_failures.add(1, exclusive);
    }
}

/// This core's watch streams, watchers and unsynced ("slow") watchers now.
pub fn watch_set(streams: i64, watchers: i64, slow_watchers: i64) {
    let (cells, _) = cells::network();
    cells.watch_streams.set(streams);
    cells.watchers.set(watchers);
    cells.slow_watchers.set(slow_watchers);
}

/// Records a duration into one of the state core's histograms.
pub fn observe_seconds(
    histogram: &cells::HistogramCells,
    bounds: &[f64],
    took: std::time::Duration,
) {
    histogram.observe(bounds, took.as_secs_f64());
}
