//! Where the counts live between scrapes: one block of cells per network core, one for the
//! state core, read (never reset) by whichever core serves a scrape.
//!
//! Why this shape: a request is counted several times (gRPC started, handled, messages,
//! bytes), on whichever network core owns its connection. Cells shared by every core would
//! bounce one cache line between cores on every request. Instead each network executor owns
//! a block (`bind_network_core`), 128-byte aligned so no two cores' blocks share a line,
//! and updates it with a relaxed load and store: no locked instruction, because that
//! executor's thread is the only writer of its block. A scrape sums the blocks.
//!
//! Invariants:
//! - A network core's block is written only by the thread bound to it. A thread bound to
//!   no block (tests, helper threads) writes the shared `UNBOUND` block with atomic adds.
//! - State-core cells are written by the state executor and its blocking threads with
//!   atomic read-modify-writes: those threads are few and their events (commits, fsyncs,
//!   applies) are batched, so there is no per-request contention to avoid there.
//! - Counters only grow; a scrape may see a count a moment old, never a torn one.

use std::cell::Cell;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use super::grpc_table::{GRPC_CODES, GRPC_METHODS};

/// Most network cores with blocks of their own; a core beyond this shares `UNBOUND`.
pub const NETWORK_CORES_MAX: usize = 64;
/// Most peers whose traffic is counted apart; more share the last slot's numbers.
pub const PEERS_MAX: usize = 16;
/// Most buckets any histogram has (etcd's lease TTL histogram: 24).
pub const BUCKETS_MAX: usize = 24;

const _: () = assert!(BUCKETS_MAX >= 24, "etcd's largest histogram has 24 buckets");

/// A monotonic count.
pub struct Counter(AtomicU64);

#[allow(clippy::declare_interior_mutable_const)] // only used to build statics
impl Counter {
    pub const ZERO: Counter = Counter(AtomicU64::new(0));
    const ROW: [Counter; GRPC_CODES] = [Counter::ZERO; GRPC_CODES];

    /// Adds `n`. `exclusive`: the calling thread is this cell's only writer.
    #[inline]
    pub fn add(&self, n: u64, exclusive: bool) {
        if exclusive {
            self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
        } else {
            self.0.fetch_add(n, Relaxed);
        }
    }

    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// A value that goes up and down.
pub struct Gauge(AtomicI64);

#[allow(clippy::declare_interior_mutable_const)]
impl Gauge {
    pub const ZERO: Gauge = Gauge(AtomicI64::new(0));

    pub fn set(&self, v: i64) {
        self.0.store(v, Relaxed);
    }

    #[inline]
    pub fn add(&self, d: i64, exclusive: bool) {
        if exclusive {
            self.0.store(self.0.load(Relaxed).wrapping_add(d), Relaxed);
        } else {
            self.0.fetch_add(d, Relaxed);
        }
    }

    pub fn get(&self) -> i64 {
        self.0.load(Relaxed)
    }
}

/// Observations sorted into fixed upper bounds (given at scrape time by the family).
pub struct HistogramCells {
    /// Per bucket, not cumulative; the last slot past the family's bounds is +Inf.
    buckets: [AtomicU64; BUCKETS_MAX + 1],
    count: AtomicU64,
    /// f64 bits.
    sum: AtomicU64,
}

#[allow(clippy::declare_interior_mutable_const)]
impl HistogramCells {
    pub const EMPTY: HistogramCells = HistogramCells {
        buckets: [const { AtomicU64::new(0) }; BUCKETS_MAX + 1],
        count: AtomicU64::new(0),
        sum: AtomicU64::new(0),
    };

    pub fn observe(&self, bounds: &[f64], value: f64) {
        debug_assert!(bounds.len() <= BUCKETS_MAX);
        let slot = bounds
            .iter()
            .position(|b| value <= *b)
            .unwrap_or(bounds.len());
        self.buckets[slot].fetch_add(1, Relaxed);
        self.count.fetch_add(1, Relaxed);
        let _ = self.sum.fetch_update(Relaxed, Relaxed, |bits| {
            Some((f64::from_bits(bits) + value).to_bits())
        });
    }

    /// (cumulative counts per bound, count, sum).
    pub fn read(&self, bounds: &[f64]) -> (Vec<u64>, u64, f64) {
        let mut cumulative = Vec::with_capacity(bounds.len());
        let mut running = 0;
        for slot in &self.buckets[..bounds.len()] {
            running += slot.load(Relaxed);
            cumulative.push(running);
        }
        let count = running + self.buckets[bounds.len()].load(Relaxed);
        (
            cumulative,
            count.max(self.count.load(Relaxed)),
            f64::from_bits(self.sum.load(Relaxed)),
        )
    }
}

/// One network core's counts.
#[repr(align(128))]
pub struct NetworkCells {
    pub grpc_started: [Counter; GRPC_METHODS],
    pub grpc_handled: [[Counter; GRPC_CODES]; GRPC_METHODS],
    pub grpc_msg_received: [Counter; GRPC_METHODS],
    pub grpc_msg_sent: [Counter; GRPC_METHODS],
    pub grpc_received_bytes: Counter,
    pub grpc_sent_bytes: Counter,
    pub health_success: Counter,
    pub health_failures: Counter,
    pub watch_streams: Gauge,
    pub watchers: Gauge,
    pub slow_watchers: Gauge,
}

#[allow(clippy::declare_interior_mutable_const)]
impl NetworkCells {
    const EMPTY: NetworkCells = NetworkCells {
        grpc_started: [Counter::ZERO; GRPC_METHODS],
        grpc_handled: [Counter::ROW; GRPC_METHODS],
        grpc_msg_received: [Counter::ZERO; GRPC_METHODS],
        grpc_msg_sent: [Counter::ZERO; GRPC_METHODS],
        grpc_received_bytes: Counter::ZERO,
        grpc_sent_bytes: Counter::ZERO,
        health_success: Counter::ZERO,
        health_failures: Counter::ZERO,
        watch_streams: Gauge::ZERO,
        watchers: Gauge::ZERO,
        slow_watchers: Gauge::ZERO,
    };
}

pub static NETWORK: [NetworkCells; NETWORK_CORES_MAX] = [NetworkCells::EMPTY; NETWORK_CORES_MAX];
pub static UNBOUND: NetworkCells = NetworkCells::EMPTY;

thread_local! {
    static BOUND_CORE: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Makes the calling thread the only writer of network core `core`'s block.
pub fn bind_network_core(core: usize) {
    BOUND_CORE.with(|bound| bound.set((core < NETWORK_CORES_MAX).then_some(core)));
}

/// The calling thread's block, and whether it is that block's only writer.
#[inline]
pub fn network() -> (&'static NetworkCells, bool) {
    match BOUND_CORE.with(Cell::get) {
        Some(core) => (&NETWORK[core], true),
        None => (&UNBOUND, false),
    }
}

/// Traffic to and from one peer.
pub struct PeerCells {
    /// The peer's member id; 0 while the slot is free.
    pub id: AtomicU64,
    pub sent_bytes: Counter,
    pub received_bytes: Counter,
    pub sent_failures: Counter,
    pub round_trip: HistogramCells,
    /// When the last heartbeat to the peer left (nanoseconds since `EPOCH`, 0: none
    /// outstanding): its answer closes one round trip.
    heartbeat_sent_ns: AtomicU64,
}

impl PeerCells {
    /// A heartbeat left for this peer; the first one outstanding starts the clock.
    pub fn heartbeat_sent(&self) {
        let _ = self
            .heartbeat_sent_ns
            .compare_exchange(0, now_ns().max(1), Relaxed, Relaxed);
    }

    /// The peer answered a heartbeat: one round trip over the peer connection (leader to
    /// follower's raft and back), etcd's `peer_round_trip_time_seconds`. Only a leader
    /// sends heartbeats, so only a leader observes round trips (etcd's members probe every
    /// peer over a separate prober connection instead).
    pub fn heartbeat_answered(&self) {
        let sent = self.heartbeat_sent_ns.swap(0, Relaxed);
        if sent != 0 {
            let seconds = now_ns().saturating_sub(sent) as f64 / 1e9;
            self.round_trip
                .observe(&super::PEER_RTT_SECONDS_BUCKETS, seconds);
        }
    }
}

static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

fn now_ns() -> u64 {
    EPOCH
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_nanos() as u64
}

#[allow(clippy::declare_interior_mutable_const)]
impl PeerCells {
    const EMPTY: PeerCells = PeerCells {
        id: AtomicU64::new(0),
        sent_bytes: Counter::ZERO,
        received_bytes: Counter::ZERO,
        sent_failures: Counter::ZERO,
        round_trip: HistogramCells::EMPTY,
        heartbeat_sent_ns: AtomicU64::new(0),
    };
}

/// The state core's counts and the gauges it keeps current.
pub struct StateCells {
    pub member_id: AtomicU64,
    pub has_leader: Gauge,
    pub is_leader: Gauge,
    pub is_learner: Gauge,
    /// `--quota-backend-bytes` as etcd reports it: the default when 0, the raw negative
    /// value when the quota is off.
    pub quota_backend_bytes: Gauge,
    pub leader_changes_seen: Counter,
    pub proposals_committed: Gauge,
    pub proposals_applied: Gauge,
    pub proposals_pending: Gauge,
    pub proposals_failed: Counter,
    pub heartbeat_send_failures: Counter,
    pub slow_apply: Counter,
    pub slow_read_indexes: Counter,
    pub read_indexes_failed: Counter,
    pub snapshot_apply_in_progress: Gauge,
    pub learner_promote_successes: Counter,

    pub mvcc_put: Counter,
    pub mvcc_delete: Counter,
    pub mvcc_range: Counter,
    pub mvcc_txn: Counter,
    pub mvcc_keys: Gauge,
    pub mvcc_current_revision: Gauge,
    pub mvcc_compact_revision: Gauge,
    pub db_total_size_bytes: Gauge,
    pub db_total_size_in_use_bytes: Gauge,
    pub hash_duration: HistogramCells,
    pub hash_rev_duration: HistogramCells,

    pub lease_granted: Counter,
    pub lease_revoked: Counter,
    pub lease_renewed: Counter,
    pub lease_expired: Counter,
    pub lease_ttl: HistogramCells,

    pub wal_fsync: HistogramCells,
    pub wal_write_bytes: Gauge,
    pub backend_commit: HistogramCells,
    pub backend_defrag: HistogramCells,
    pub backend_snapshot: HistogramCells,
    pub defrag_inflight: Gauge,

    pub peers: [PeerCells; PEERS_MAX],
}

pub static STATE: StateCells = StateCells {
    member_id: AtomicU64::new(0),
    has_leader: Gauge::ZERO,
    is_leader: Gauge::ZERO,
    is_learner: Gauge::ZERO,
    quota_backend_bytes: Gauge::ZERO,
    leader_changes_seen: Counter::ZERO,
    proposals_committed: Gauge::ZERO,
    proposals_applied: Gauge::ZERO,
    proposals_pending: Gauge::ZERO,
    proposals_failed: Counter::ZERO,
    heartbeat_send_failures: Counter::ZERO,
    slow_apply: Counter::ZERO,
    slow_read_indexes: Counter::ZERO,
    read_indexes_failed: Counter::ZERO,
    snapshot_apply_in_progress: Gauge::ZERO,
    learner_promote_successes: Counter::ZERO,
    mvcc_put: Counter::ZERO,
    mvcc_delete: Counter::ZERO,
    mvcc_range: Counter::ZERO,
    mvcc_txn: Counter::ZERO,
    mvcc_keys: Gauge::ZERO,
    mvcc_current_revision: Gauge::ZERO,
    mvcc_compact_revision: Gauge::ZERO,
    db_total_size_bytes: Gauge::ZERO,
    db_total_size_in_use_bytes: Gauge::ZERO,
    hash_duration: HistogramCells::EMPTY,
    hash_rev_duration: HistogramCells::EMPTY,
    lease_granted: Counter::ZERO,
    lease_revoked: Counter::ZERO,
    lease_renewed: Counter::ZERO,
    lease_expired: Counter::ZERO,
    lease_ttl: HistogramCells::EMPTY,
    wal_fsync: HistogramCells::EMPTY,
    wal_write_bytes: Gauge::ZERO,
    backend_commit: HistogramCells::EMPTY,
    backend_defrag: HistogramCells::EMPTY,
    backend_snapshot: HistogramCells::EMPTY,
    defrag_inflight: Gauge::ZERO,
    peers: [PeerCells::EMPTY; PEERS_MAX],
};

/// The slot counting traffic with peer `id`, claimed on first use.
pub fn peer(id: u64) -> &'static PeerCells {
    for slot in &STATE.peers {
        let current = slot.id.load(Relaxed);
        if current == id {
            return slot;
        }
        if current == 0
            && slot
                .id
                .compare_exchange(0, id, Relaxed, Relaxed)
                .map_or_else(|seen| seen == id, |_| true)
        {
            return slot;
        }
    }
    &STATE.peers[PEERS_MAX - 1]
}

/// Sums every network core's block with `read`.
pub fn sum_network(read: impl Fn(&NetworkCells) -> i64) -> i64 {
    NETWORK
        .iter()
        .chain(std::iter::once(&UNBOUND))
        .map(read)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_with_inf_last() {
        let cells = HistogramCells::EMPTY;
        let bounds = [0.001, 0.002, 0.004];
        for value in [0.0005, 0.001, 0.003, 10.0] {
            cells.observe(&bounds, value);
        }
        let (cumulative, count, sum) = cells.read(&bounds);
        assert_eq!(cumulative, vec![2, 2, 3]);
        assert_eq!(count, 4);
        assert!((sum - 10.0045).abs() < 1e-9);
    }

    #[test]
    fn network_blocks_are_summed_and_unbound_threads_share_one() {
        let before = sum_network(|c| c.health_success.get() as i64);
        std::thread::spawn(|| {
            bind_network_core(3);
            let (cells, exclusive) = network();
            assert!(exclusive);
            cells.health_success.add(2, exclusive);
        })
        .join()
        .unwrap();
        std::thread::spawn(|| {
            let (cells, exclusive) = network();
            assert!(!exclusive);
            cells.health_success.add(1, exclusive);
        })
        .join()
        .unwrap();
        assert_eq!(sum_network(|c| c.health_success.get() as i64), before + 3);
    }

    #[test]
    fn peers_get_one_slot_each() {
        let a = peer(0xa1) as *const PeerCells;
        let b = peer(0xb2) as *const PeerCells;
        assert_ne!(a, b);
        assert_eq!(a, peer(0xa1) as *const PeerCells);
    }
}
