//! Bootstrap and recovery: opening this member's WAL and snapshot into a node (a new
//! cluster's bootstrap conf changes, or replay after a restart), `--force-new-cluster`,
//! and starting the node — for a new member of an existing cluster, first finding its
//! ID from the running members (etcd's `ValidateClusterAndAssignIDs`).

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use futures::channel::oneshot;
use prost::Message as _;
use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeType, ConfState, Entry, EntryType, HardState};
use raft::{RawNode, ReadOnlyOption, Storage as _};
use tern_storage::wal::{self, Wal, WalOptions, WalRecord};

use crate::membership::cluster::{MemberRecord, Membership};
use crate::raft::log_store::{self, LogStore};
use crate::raft::snapshot;
use crate::raft::transport::{self, Transport};
use crate::runtime::Wakeup;
use crate::state::envelope::{Envelope, MemberOp};
use crate::state::machine::StateMachine;

use super::*;

/// Where a member's raft state lives under `--data-dir` (etcd's layout: member/wal, member/snap).
pub fn snap_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("member").join("snap")
}

fn unix_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
}

/// A bootstrap ConfChange for `member` at `raft_index` (term 1), as etcd writes them
/// when it starts a new cluster.
fn bootstrap_entry(raft_index: u64, member: &MemberRecord) -> Entry {
    let mut cc = ConfChange::default();
    cc.set_change_type(if member.is_learner {
        ConfChangeType::AddLearnerNode
    } else {
        ConfChangeType::AddNode
    });
    cc.node_id = member.id;
    cc.context = Envelope::member(0, 0, MemberOp::Add, member.clone())
        .encode_to_vec()
        .into();
    let mut e = Entry::default();
    e.set_entry_type(EntryType::EntryConfChange);
    e.term = 1;
    e.index = raft_index;
    e.data = cc
        .write_to_bytes()
        .expect("encoding a ConfChange cannot fail")
        .into();
    e
}

/// Whether the test asked to break linearizable reads (see `UNSAFE_LOCAL_READS_ENV`).
#[cfg(feature = "test-hooks")]
fn unsafe_local_reads_requested() -> bool {
    let on = std::env::var(UNSAFE_LOCAL_READS_ENV).is_ok_and(|v| v == "1");
    if on {
        crate::warn!("linearizable reads are deliberately broken for a test", "env" => UNSAFE_LOCAL_READS_ENV);
    }
    on
}

/// A build without the `test-hooks` feature (every release build) has no such switch.
#[cfg(not(feature = "test-hooks"))]
fn unsafe_local_reads_requested() -> bool {
    false
}

/// Opens (or creates) this member's WAL and snapshot, and builds its raft node.
#[allow(clippy::too_many_arguments)] // each is one piece of the member being assembled
pub async fn open(
    member_id: u64,
    cluster_id: u64,
    options: RaftOptions,
    opened: Option<(Wal, wal::Recovered)>,
    state: StateMachine,
    transport: Transport,
    wake: Rc<Wakeup>,
    serving: oneshot::Sender<()>,
) -> Result<Node, String> {
    let wal_dir = wal::wal_dir(&options.data_dir);
    let snapshot_dir = snap_dir(&options.data_dir);
    std::fs::create_dir_all(&snapshot_dir)
        .map_err(|e| format!("cannot create {}: {e}", snapshot_dir.display()))?;
    let mut state = state;
    let mut membership = Membership::default();
    let (wal, log, applied, cluster_id) = match opened {
        Some((wal, recovered)) => {
            crate::info!(
                "restarting local member",
                "local-member-id" => format!("{member_id:x}"),
                "commit-index" => recovered.hard_state.map_or(0, |h| h.commit)
            );
            if let Some(torn) = &recovered.torn_tail {
                crate::warn!("cut a torn WAL tail", "segment" => torn.segment.as_path(), "reason" => torn.reason.as_str());
            }
            let marker = recovered.snapshot.unwrap_or_default();
            let mut snap = None;
            let mut conf_state = ConfState::default();
            let mut applied = 0;
            if marker.raft_index > 0 {
                let file = snapshot::load(&snapshot_dir, marker.raft_index, marker.term).await?;
                conf_state = file.snapshot.get_metadata().get_conf_state().clone();
                // The database is the snapshot's state: a snapshot is only ever taken (or
                // installed) at an index the database already holds durably.
                if state.raft_applied_index() < marker.raft_index {
                    return Err(format!(
                        "the backend holds raft index {}, below the snapshot at {}",
                        state.raft_applied_index(),
                        marker.raft_index
                    ));
                }
                snapshot::restore_membership(&file.snapshot, &mut membership)?;
                applied = marker.raft_index;
                snap = Some(file.snapshot);
            }
            let (hard_state, entries) = log_store::recovered_raft_log(&recovered)?;
            let log = LogStore::new(hard_state, conf_state, snap, entries);
            let cluster_id = if recovered.metadata.cluster_id != 0 {
                recovered.metadata.cluster_id
            } else {
                cluster_id
            };
            (wal, log, applied, cluster_id)
        }
        None => {
            let wal = Wal::create(
                &wal_dir,
                WalOptions::default(),
                wal::Metadata {
                    cluster_id,
                    member_id,
                },
            )
            .await
            .map_err(|e| format!("cannot create the WAL: {e}"))?;
            let mut hard_state = HardState::default();
            let mut entries = Vec::new();
            if options.new_cluster {
                for (i, m) in options.initial_members.iter().enumerate() {
                    entries.push(bootstrap_entry(i as u64 + 1, m));
                }
                hard_state.term = 1;
                hard_state.commit = entries.len() as u64;
                crate::info!(
                    "starting local member",
                    "local-member-id" => format!("{member_id:x}"),
                    "cluster-id" => format!("{cluster_id:x}")
                );
            }
            let mut records: Vec<WalRecord> = entries.iter().map(log_store::wal_record).collect();
            records.push(log_store::wal_hard_state(&hard_state));
            wal.append(records)
                .await
                .map_err(|e| format!("cannot write the WAL: {e}"))?;
            let log = LogStore::new(hard_state, ConfState::default(), None, entries);
            (wal, log, 0, cluster_id)
        }
    };
    if options.force_new_cluster {
        force_new_cluster(member_id, &log, &wal).await?;
    }

    let mut transport = transport;
    for m in membership.members.values() {
        transport.set_peer(m.id, m.peer_urls.clone());
    }
    transport.set_cluster_id(cluster_id);
    let election_tick =
        (options.election_timeout_ms / options.heartbeat_interval_ms.max(1)).max(2) as usize;
    let config = raft::Config {
        id: member_id,
        election_tick,
        heartbeat_tick: 1,
        applied,
        max_size_per_msg: 1 << 20,
        max_inflight_msgs: 256,
        check_quorum: true,
        pre_vote: true,
        read_only_option: ReadOnlyOption::Safe,
        ..Default::default()
    };
    let logger = crate::raft::slog_bridge::logger(member_id);
    let raw = RawNode::new(&config, log.clone(), &logger)
        .map_err(|e| format!("cannot start raft: {e}"))?;
    let last_snapshot_index = log.first_raft_index() - 1;
    state.raft_term = log.hard_state().term;
    let state = Rc::new(RefCell::new(state));
    let image_state = state.clone();
    transport.set_image_source(Rc::new(move || {
        image_state
            .try_borrow()
            .map_err(|_| "the state machine is busy".to_string())?
            .export_db()
    }));
    let heartbeat_interval = std::time::Duration::from_millis(options.heartbeat_interval_ms);
    Ok(Node {
        id: member_id,
        cluster_id,
        raw,
        log,
        wal,
        state,
        membership,
        transport,
        wake,
        options,
        pending: HashMap::new(),
        unproposed: VecDeque::new(),
        reads: Reads::default(),
        next_request_id: unix_nanos(),
        leader_id: 0,
        term: 0,
        published: false,
        publish_proposed_at: None,
        version_proposed_at: None,
        serving: Some(serving),
        last_snapshot_index,
        snapshot_dir,
        snapshot_work: SnapshotWork::default(),
        handed_raft_index: applied,
        stepped_entry_bytes: 0,
        wal_bytes_in_flight: 0,
        leader_transfers: Vec::new(),
        entries_written: 0,
        unsynced_hard_state: None,
        removed_at: None,
        lease_forwards: VecDeque::new(),
        heartbeats: super::slow_disk::HeartbeatDetector::new(heartbeat_interval),
        slow_fdatasync: Default::default(),
        token_waits: Default::default(),
        unsafe_local_reads: unsafe_local_reads_requested(),
    })
}

/// `--force-new-cluster`: keep the data, but make this member the only voter. As etcd
/// does, committed entries are kept, uncommitted ones discarded, and ConfChange entries
/// removing every other member are appended (so that the state survives the next restart).
async fn force_new_cluster(member_id: u64, log: &LogStore, wal: &Wal) -> Result<(), String> {
    let mut hs = log.hard_state();
    let last = log.last_raft_index();
    if hs.commit < last {
        crate::warn!("discarding uncommitted WAL entries", "commit-index" => hs.commit, "last-index" => last);
    }
    let commit = hs.commit;
    // Which members exist as of the commit index: replay the ConfChanges in the log.
    let mut members: Vec<u64> = log.conf_state().voters.clone();
    members.extend(log.conf_state().learners.iter().copied());
    let first = log.first_raft_index();
    if commit >= first {
        for e in log.slice(first, commit + 1) {
            if e.get_entry_type() == EntryType::EntryConfChange {
                if let Ok(cc) = crate::raft::codec::decode_conf_change(&e.data) {
                    match cc.get_change_type() {
                        ConfChangeType::RemoveNode => members.retain(|m| *m != cc.node_id),
                        _ => {
                            if !members.contains(&cc.node_id) {
                                members.push(cc.node_id)
                            }
                        }
                    }
                }
            }
        }
    }
    let term = log.term_of(commit).unwrap_or(hs.term);
    let mut new_entries = Vec::new();
    let mut raft_index = commit;
    for id in members.into_iter().filter(|m| *m != member_id) {
        raft_index += 1;
        let mut cc = ConfChange::default();
        cc.set_change_type(ConfChangeType::RemoveNode);
        cc.node_id = id;
        let removed = MemberRecord {
            id,
            ..Default::default()
        };
        cc.context = Envelope::member(0, 0, MemberOp::Remove, removed)
            .encode_to_vec()
            .into();
        let mut e = Entry::default();
        e.set_entry_type(EntryType::EntryConfChange);
        e.term = term;
        e.index = raft_index;
        e.data = cc
            .write_to_bytes()
            .expect("encoding a ConfChange cannot fail")
            .into();
        new_entries.push(e);
    }
    // The uncommitted tail is replaced (a WAL append at commit+1 truncates it).
    let mut keep = if commit >= first {
        log.slice(first, commit + 1)
    } else {
        Vec::new()
    };
    keep.extend(new_entries.iter().cloned());
    let snap = log.snapshot(0, 0).ok();
    let fresh = LogStore::new(hs.clone(), log.conf_state(), snap, keep);
    hs.commit = raft_index;
    fresh.set_hard_state(hs.clone());
    log.replace_with(fresh);
    let mut records: Vec<WalRecord> = new_entries.iter().map(log_store::wal_record).collect();
    records.push(log_store::wal_hard_state(&hs));
    wal.append(records)
        .await
        .map_err(|e| format!("cannot write the WAL: {e}"))?;
    crate::info!("forcing restart of this member as the only one in its cluster", "commit-index" => raft_index);
    Ok(())
}

/// Builds the node for `identity` on the current (state) executor: opens the WAL, binds
/// the peer listeners, connects to the known peers. The receiver fires once this member
/// has published itself through raft (then it may serve clients).
pub async fn start(
    identity: crate::state::machine::Identity,
    options: RaftOptions,
    state: StateMachine,
) -> Result<(Rc<RefCell<Node>>, oneshot::Receiver<()>), String> {
    let mut identity = identity;
    let mut listeners = Vec::new();
    for addr in &options.listen_peer_addrs {
        // std's bind sets SO_REUSEADDR (glommio's does not), so a member restarted right
        // after a crash can bind its peer port while old connections sit in TIME_WAIT.
        let std_listener = std::net::TcpListener::bind(addr)
            .map_err(|e| format!("listen tcp {addr}: bind: {e}"))?;
        // glommio's accept assumes a non-blocking socket (it tries a synchronous accept(2)
        // first); a blocking one could put the executor thread to sleep in the kernel.
        std_listener
            .set_nonblocking(true)
            .map_err(|e| format!("listen tcp {addr}: {e}"))?;
        listeners.push(std_listener);
    }
    let wal_dir = wal::wal_dir(&options.data_dir);
    let mut known_members = Vec::new();
    let opened = match Wal::open(&wal_dir, WalOptions::default()).await {
        Ok((wal, recovered)) => {
            // A member's IDs are those its WAL was created with (a member added at
            // runtime has an ID no flag can derive).
            identity.member_id = recovered.metadata.member_id;
            identity.cluster_id = recovered.metadata.cluster_id;
            Some((wal, recovered))
        }
        Err(wal::WalError::NotFound(_)) => {
            if !options.new_cluster {
                known_members = join_existing(&mut identity, &options).await?;
            }
            None
        }
        Err(e) => return Err(format!("cannot open the WAL: {e}")),
    };
    let wake = Rc::new(Wakeup::default());
    let mut transport = Transport::new(
        identity.member_id,
        identity.cluster_id,
        wake.clone(),
        options.peer_tls.clone(),
    );
    transport.set_snapshot_dir(snap_dir(&options.data_dir));
    transport.serve(listeners)?;
    // A joining member must be able to answer the leader before its log tells it who the
    // members are.
    for m in known_members {
        transport.set_peer(m.id, m.peer_urls);
    }
    let mut state = state;
    state.set_identity(identity.clone());
    let (serving_tx, serving_rx) = oneshot::channel();
    let node = open(
        identity.member_id,
        identity.cluster_id,
        options,
        opened,
        state,
        transport,
        wake,
        serving_tx,
    )
    .await?;
    Ok((Rc::new(RefCell::new(node)), serving_rx))
}

/// Finds this member's ID in the running cluster by its peer URLs (etcd
/// `ValidateClusterAndAssignIDs`): `etcdctl member add` created it there.
async fn join_existing(
    identity: &mut crate::state::machine::Identity,
    options: &RaftOptions,
) -> Result<Vec<MemberRecord>, String> {
    let mut mine = identity.peer_urls.clone();
    mine.sort();
    let others: Vec<String> = options
        .initial_members
        .iter()
        .filter(|m| {
            let mut urls = m.peer_urls.clone();
            urls.sort();
            urls != mine
        })
        .flat_map(|m| m.peer_urls.clone())
        .collect();
    let answer = transport::fetch_members(&others, options.peer_tls.as_deref()).await?;
    let me = answer.members.iter().find(|m| {
        let mut urls = m.peer_urls.clone();
        urls.sort();
        urls == mine
    });
    let Some(me) = me else {
        return Err(format!(
            "member with peer URLs {} is not in the cluster; add it with `etcdctl member add` first",
            identity.peer_urls.join(",")
        ));
    };
    crate::info!(
        "joining an existing cluster",
        "local-member-id" => format!("{:x}", me.id),
        "cluster-id" => format!("{:x}", answer.cluster_id)
    );
    identity.member_id = me.id;
    identity.cluster_id = answer.cluster_id;
    Ok(answer.members)
}
