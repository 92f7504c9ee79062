//! The ready loop: what the node does with each `Ready` raft-rs hands it, and the
//! task that runs it and the ticker.
//!
//! The ready loop follows raft-rs's numbered walkthrough (`raft::raw_node` docs), with the
//! asynchronous-persistence variant (`advance_append_async` + `on_persist_ready`), so that
//! the WAL's group commit overlaps with sending and applying:
//!
//! 1. soft state: who leads, at which term (logged in etcd's words);
//! 2. messages: sent at once — a leader may replicate before its own fsync (raft thesis
//!    §10.2.1); a follower's messages only come as persisted messages (step 7);
//! 3. snapshot from the leader: its database was swapped in before this ready was taken
//!    (`install_snapshot`, off the executor, the loop paused); the membership and the log
//!    restart from it;
//! 4. committed entries: apply them (they are durable on a quorum and locally);
//! 5. new entries and hard state: stored in the in-memory log now (raft-rs reads them
//!    from `Storage` after `advance_append_async`), and queued on the WAL;
//! 6. read states: ReadIndex rounds that completed;
//! 7. once the WAL append is durable: `on_persist_ready`, then the persisted messages
//!    (votes, append responses), which must never leave before their state is durable.
//!
//! A ready is not taken while a leader's snapshot is being installed (its database swap
//! runs on the blocking pool first, `install_snapshot`), while `WAL_IN_FLIGHT_BYTES_MAX` of
//! WAL appends wait to be durable, or while the backend is full; and at most
//! `READY_ENTRY_BYTES_MAX` of appended entries are stepped into raft per ready. So one
//! ready's WAL append stays within the WAL's limits however fast a follower catches up.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use raft::eraftpb::{Entry, EntryType, Snapshot};
use raft::StateRole;
use tern_storage::wal::{self, WalRecord};

use crate::auth::Caller;
use crate::membership::cluster::MemberRecord;
use crate::mvcc::{BtreeBackend, KvStore};
use crate::proto::etcdserverpb as pb;
use crate::raft::log_store;
use crate::raft::snapshot;
use crate::raft::transport::Report;
use crate::state::client::Command;
use crate::state::envelope::{Body, Envelope, MemberOp};
use crate::state::machine::StateMachine;

use super::*;

/// Runs the ready loop and the ticker until the process ends.
pub async fn run(node: Rc<RefCell<Node>>) {
    let wake = node.borrow().wake.clone();
    let backend_wake = wake.clone();
    node.borrow()
        .state
        .borrow_mut()
        .set_backend_wake(Rc::new(move || backend_wake.wake()));
    let auto_compaction = node.borrow().options.auto_compaction;
    if let Some(policy) = auto_compaction {
        glommio::spawn_local(super::auto_compaction::run(node.clone(), policy)).detach();
    }
    let interval = Duration::from_millis(node.borrow().options.heartbeat_interval_ms.max(1));
    let ticker = node.clone();
    glommio::spawn_local(async move {
        loop {
            glommio::timer::sleep(interval).await;
            ticker.borrow_mut().tick();
        }
    })
    .detach();
    // A member that is the only voter campaigns at once, as etcd's single-member
    // bootstrap does: it wins the next term at once (term 2 on a fresh cluster).
    let mut campaigned = false;
    loop {
        Node::handle_ready(&node);
        node.borrow().publish_metrics();
        if !campaigned {
            let mut n = node.borrow_mut();
            let cs = n.log.conf_state();
            let caught_up = n.state.borrow_mut().raft_applied_index() >= n.log.hard_state().commit;
            if caught_up && cs.voters == [n.id] && n.leader_id == 0 {
                campaigned = true;
                let _ = n.raw.campaign();
                n.wake.wake();
            } else if caught_up {
                campaigned = true;
            }
        }
        wake.wait().await;
    }
}

impl Node {
    fn drain_transport(&mut self) {
        self.answer_forwarded_leases();
        // Appends wait in the inbox once the next ready would carry more than
        // READY_ENTRY_BYTES_MAX of new entries (its WAL append has a size limit, and an
        // install pauses the loop while the leader keeps sending); other messages go on.
        let mut deferred = Vec::new();
        for m in self.transport.take_inbox() {
            if m.get_msg_type() == raft::eraftpb::MessageType::MsgAppend {
                if !deferred.is_empty() || self.stepped_entry_bytes >= READY_ENTRY_BYTES_MAX {
                    deferred.push(m);
                    continue;
                }
                self.stepped_entry_bytes += m
                    .entries
                    .iter()
                    .map(|e| e.data.len() as u64 + e.context.len() as u64)
                    .sum::<u64>();
            }
            if let Err(e) = self.raw.step(m) {
                crate::debug!("raft dropped a peer message", "error" => e.to_string());
            }
        }
        self.transport.return_to_inbox(deferred);
        for report in self.transport.take_reports() {
            match report {
                Report::Unreachable(id) => self.raw.report_unreachable(id),
                Report::Snapshot { to, ok } => self.report_snapshot(to, ok),
            }
        }
    }

    pub fn handle_ready(node: &Rc<RefCell<Node>>) {
        let mut n = node.borrow_mut();
        n.state.borrow_mut().poll_backend();
        n.drain_transport();
        n.maybe_publish(Instant::now());
        n.start_read_round();
        if !n.raw.has_ready() {
            n.maybe_snapshot(node);
            return;
        }
        if n.state.borrow().backend_is_full() {
            // The disk is behind: applying more would only grow the layers waiting for it.
            // The running commit's end wakes this loop again.
            return;
        }
        // A leader's snapshot is installed (its database swapped in, off the executor)
        // before the ready that carries it is taken, so no ready is outstanding while that
        // runs: messages are still stepped and ticks still tick meanwhile. Its end wakes
        // this loop.
        if n.snapshot_work.installing.is_some() {
            return;
        }
        // The WAL is behind (a follower catching up fast): the next ready waits until an
        // append is durable (that wakes this loop), so the WAL's queue never overflows.
        if n.wal_bytes_in_flight >= WAL_IN_FLIGHT_BYTES_MAX {
            return;
        }
        if let Some(raft_index) = n.snapshot_to_install() {
            n.install_snapshot(node, raft_index);
            return;
        }
        let mut ready = n.raw.ready();
        n.stepped_entry_bytes = 0;

        // 1. Soft state.
        if let Some(ss) = ready.ss() {
            let (leader, role) = (ss.leader_id, ss.raft_state);
            n.on_soft_state(leader, role);
        }
        // 2. Messages that may leave before persistence (leader's appends, heartbeats).
        let messages = ready.take_messages();
        n.send(messages);
        let mut records = Vec::new();
        // 3. A snapshot from the leader: its database is already in place (above); the
        // membership and the log restart from it, and the WAL records it.
        if !ready.snapshot().is_empty() {
            let snap = ready.snapshot().clone();
            if let Err(e) = n.snapshot_installed(&snap) {
                crate::fatal!("cannot install the leader's snapshot", "error" => e);
            }
            let meta = snap.get_metadata();
            n.handed_raft_index = meta.index;
            records.push(WalRecord::Snapshot(wal::SnapshotMarker {
                raft_index: meta.index,
                term: meta.term,
            }));
        }
        // 4. Committed entries.
        let committed = ready.take_committed_entries();
        if let Some(last) = committed.last() {
            n.handed_raft_index = last.index;
        }
        n.apply_entries(committed);
        // 5. New entries and hard state: into the in-memory log now, the WAL in the background.
        let entries = ready.take_entries();
        n.entries_written += entries.len() as u64;
        records.extend(entries.iter().map(log_store::wal_record));
        n.log.append(entries);
        if let Some(hs) = ready.hs() {
            n.term = hs.term;
            n.state.borrow_mut().raft_term = hs.term;
            n.state.borrow_mut().raft_commit_index = hs.commit;
            n.log.set_hard_state(hs.clone());
            if ready.must_sync() {
                n.unsynced_hard_state = None;
                records.push(log_store::wal_hard_state(hs));
            } else {
                n.unsynced_hard_state = Some(hs.clone());
            }
        }
        if !records.is_empty() {
            if let Some(hs) = n.unsynced_hard_state.take() {
                records.push(log_store::wal_hard_state(&hs));
            }
        }
        // 6. ReadIndex rounds that completed.
        for rs in ready.take_read_states() {
            let ctx = <[u8; 8]>::try_from(&rs.request_ctx[..])
                .map(u64::from_be_bytes)
                .unwrap_or(0);
            if let Some(round) = n.reads.in_flight.remove(&ctx) {
                n.reads.at_index.push_back((rs.index, round.commands));
            }
        }
        let persisted_messages = ready.take_persisted_messages();
        let number = ready.number();
        n.raw.advance_append_async(ready);
        // 7. After the WAL append (group commit): persisted state, then the messages that
        // depend on it. An empty append is a barrier, keeping `on_persist_ready` in order.
        let wal_bytes = records.iter().map(WalRecord::frame_bytes).sum::<usize>();
        n.wal_bytes_in_flight += wal_bytes;
        let durable = n.wal.append(records);
        let node_rc = node.clone();
        glommio::spawn_local(async move {
            let durable = match durable.await {
                Ok(durable) => durable,
                Err(e) => crate::fatal!("cannot write the WAL", "error" => e.to_string()),
            };
            let mut n = node_rc.borrow_mut();
            n.wal_bytes_in_flight -= wal_bytes;
            n.slow_fdatasync.warn(&durable);
            n.raw.on_persist_ready(number);
            n.advance_applied();
            n.send(persisted_messages);
            n.wake.wake();
        })
        .detach();
        n.advance_applied();
        n.serve_reads();
        n.release_token_waits(Instant::now());
        // Group commit of the backend: one commit for everything this ready applied; the
        // replies held for it go out now (`StateMachine::flush`).
        n.state.borrow_mut().flush();
        n.maybe_snapshot(node);
        n.wake.wake();
    }

    /// Tells raft how far the state machine has applied. raft-rs requires applied ≤
    /// persisted: after installing a snapshot the state is ahead of the durable log until
    /// the snapshot marker is in the WAL, so the rest is reported from step 7. Never past
    /// the last entry raft handed to apply: a snapshot's database may hold entries after
    /// the snapshot's index, and raft must still hand those over (their conf changes and
    /// member records live only in memory); apply skips their key writes.
    fn advance_applied(&mut self) {
        let log = &self.raw.raft.raft_log;
        let applied = self
            .state
            .borrow_mut()
            .raft_applied_index()
            .min(log.persisted)
            .min(log.committed)
            .min(self.handed_raft_index);
        if applied > log.applied {
            self.raw.advance_apply_to(applied);
        }
    }

    fn on_soft_state(&mut self, leader: u64, role: StateRole) {
        let term = self.raw.raft.term;
        if leader != self.leader_id {
            if leader == 0 {
                crate::info!(format!(
                    "raft.node: {:x} lost leader {:x} at term {term}",
                    self.id, self.leader_id
                ));
            } else if self.leader_id == 0 {
                crate::info!(format!(
                    "raft.node: {:x} elected leader {leader:x} at term {term}",
                    self.id
                ));
            } else {
                crate::info!(format!(
                    "raft.node: {:x} changed leader from {:x} to {leader:x} at term {term}",
                    self.id, self.leader_id
                ));
            }
            if self.leader_id != 0 && leader != 0 {
                crate::info!("leadership changed", "new-leader" => format!("{leader:x}"));
            }
        }
        if leader != 0 && leader != self.leader_id {
            crate::metrics::STATE.leader_changes_seen.add(1, false);
        }
        crate::metrics::STATE.has_leader.set(i64::from(leader != 0));
        crate::metrics::STATE
            .is_leader
            .set(i64::from(leader != 0 && leader == self.id));
        self.leader_id = leader;
        self.state.borrow_mut().leader_id = leader;
        // As etcd, measure heartbeat gaps afresh after any change of leader or role.
        self.heartbeats.reset();
        if !self.leader_transfers.is_empty() {
            self.finish_leader_transfers(Instant::now());
        }
        self.term = term;
        self.state.borrow_mut().raft_term = term;
        let _ = role;
        self.sync_lease_role();
        // Proposing must wait until this ready is advanced (raft-rs forbids proposals
        // between `ready()` and `advance_append_async()`); the next pass publishes.
    }

    fn serve_reads(&mut self) {
        let applied = self.state.borrow_mut().raft_applied_index();
        while let Some((raft_index, _)) = self.reads.at_index.front() {
            if *raft_index > applied {
                break;
            }
            let (_, batch) = self.reads.at_index.pop_front().expect("front exists");
            for command in batch {
                self.state.borrow_mut().handle_read(command);
            }
        }
    }

    fn apply_entries(&mut self, entries: Vec<Entry>) {
        let any = !entries.is_empty();
        self.apply_entries_inner(entries);
        if any {
            self.refresh_members_answer();
        }
    }

    fn apply_entries_inner(&mut self, entries: Vec<Entry>) {
        for entry in entries {
            let raft_index = entry.index;
            // Entries the backend already holds (a restart) are still replayed for raft's
            // configuration and the member table, which live only in memory; their key
            // writes are skipped (`mark_applied`, `apply_write_once`).
            match entry.get_entry_type() {
                EntryType::EntryNormal => self.apply_normal(raft_index, &entry.data),
                EntryType::EntryConfChange => self.apply_conf_change(raft_index, &entry.data),
                EntryType::EntryConfChangeV2 => {
                    crate::warn!("ignoring a ConfChangeV2 entry tern never proposes", "raft-index" => raft_index);
                    self.mark_applied(raft_index);
                }
            }
        }
    }

    /// Records that the entry at `raft_index` changed no key, unless the backend already
    /// had it (replay after a restart).
    pub(super) fn mark_applied(&mut self, raft_index: u64) {
        let mut state = self.state.borrow_mut();
        if raft_index > state.raft_applied_index() {
            state.apply_other(raft_index);
        }
    }

    fn apply_write_once(&mut self, raft_index: u64, command: Command, caller: Caller) {
        let mut state = self.state.borrow_mut();
        if raft_index > state.raft_applied_index() {
            state.apply_write(raft_index, command, caller);
        }
    }

    /// Applies a committed normal entry from its bytes alone, as every member and WAL
    /// replay do; a waiting client of this member only receives the result.
    fn apply_normal(&mut self, raft_index: u64, data: &[u8]) {
        if data.is_empty() {
            // The empty entry a new leader appends.
            self.mark_applied(raft_index);
            return;
        }
        let env = match Envelope::decode_entry(data) {
            Ok(env) => env,
            // Skipping it would let this member's state diverge from the others' (etcd
            // panics in `pbutil.MustUnmarshal` here).
            Err(e) => crate::fatal!(
                "failed to decode a committed raft entry",
                "raft-index" => raft_index,
                "entry-type" => "EntryNormal",
                "error" => e.to_string()
            ),
        };
        let pending = if env.origin_member_id == self.id {
            self.pending.remove(&env.request_id)
        } else {
            None
        };
        let (waiter, deadline) = match pending {
            Some(p) => (Some(p.waiter), Some(p.deadline)),
            None => (None, None),
        };
        let op = MemberOp::try_from(env.member_op).unwrap_or(MemberOp::None);
        let body = env
            .body
            .expect("decode_entry refuses an envelope without a body");
        let unanswered = match body {
            Body::ClusterVersion(version) => {
                if self.membership.cluster_version.is_none() {
                    crate::info!("set initial cluster version", "cluster-version" => "3.4");
                }
                self.membership.cluster_version = Some(version);
                self.mark_applied(raft_index);
                waiter.filter(|w| !matches!(w, Waiter::ClusterVersion))
            }
            Body::Member(member) => {
                let unanswered = self.apply_member_attributes(op, member, waiter);
                self.mark_applied(raft_index);
                unanswered
            }
            write => {
                let (reply, other) = match waiter {
                    Some(Waiter::Write(reply)) => (Some(reply), None),
                    other => (None, other),
                };
                let caller = match env.caller {
                    Some(info) => Caller::Client(info),
                    None => Caller::Internal,
                };
                match write_command(write, reply) {
                    Some((command, unfit)) => {
                        self.apply_write_once(raft_index, command, caller);
                        other.or(unfit.map(Waiter::Write))
                    }
                    None => {
                        self.mark_applied(raft_index);
                        other
                    }
                }
            }
        };
        // A waiter of another kind than the entry waits for some other request (the ids
        // of an earlier run's entries may repeat): it keeps waiting for its own.
        if let (Some(waiter), Some(deadline)) = (unanswered, deadline) {
            self.pending
                .insert(env.request_id, Pending { waiter, deadline });
        }
    }

    /// A published or updated member (normal entries; additions, removals and promotions
    /// are conf changes). Returns the waiter if the entry does not answer it.
    fn apply_member_attributes(
        &mut self,
        op: MemberOp,
        member: MemberRecord,
        waiter: Option<Waiter>,
    ) -> Option<Waiter> {
        match op {
            MemberOp::Publish => {
                self.membership
                    .publish(member.id, member.name.clone(), member.client_urls.clone());
                // Only this run's publish counts (a replayed one from an earlier run
                // must not make a restarted member serve before it has a leader).
                if member.id != self.id || !matches!(waiter, Some(Waiter::Publish)) {
                    return waiter;
                }
                if !self.published {
                    self.published = true;
                    if let Some(serving) = self.serving.take() {
                        let _ = serving.send(());
                    }
                }
                None
            }
            MemberOp::Update => {
                self.membership
                    .update_peer_urls(member.id, member.peer_urls.clone());
                // etcd 3.4.23 rewrites the whole member on update from a record that
                // lacks the learner flag, so the member lists as a voter afterwards
                // (raft's own configuration is unchanged). tern reproduces that.
                if let Some(m) = self.membership.members.get_mut(&member.id) {
                    m.is_learner = false;
                }
                self.transport.set_peer(member.id, member.peer_urls.clone());
                match waiter {
                    Some(Waiter::Member(MemberReply::Update(r))) => {
                        let _ = r.send(Ok(pb::MemberUpdateResponse {
                            header: Some(self.header()),
                            members: self.membership.list(),
                        }));
                        None
                    }
                    other => other,
                }
            }
            // Add, Remove and Promote travel as conf changes; in a normal entry they
            // change nothing, as before the envelope became a oneof.
            _ => waiter,
        }
    }

    /// The raft index of a leader's snapshot raft holds and whose database is not in place
    /// yet.
    fn snapshot_to_install(&self) -> Option<u64> {
        self.raw
            .raft
            .raft_log
            .unstable_snapshot()
            .as_ref()
            .map(|snap| snap.get_metadata().index)
            .filter(|raft_index| *raft_index != self.snapshot_work.installed_raft_index)
    }

    /// Starts installing the leader's snapshot at `raft_index` (the transport already made
    /// its database image durable as `<index>.snap.db`): the `.snap` file is saved, the
    /// backend's jobs finish, the image replaces `member/snap/db`, and the store is reopened
    /// over it and the key index and leases rebuilt, all file work on the blocking pool.
    /// The ready loop waits meanwhile (`snapshot_work.installing`).
    fn install_snapshot(&mut self, node: &Rc<RefCell<Node>>, raft_index: u64) {
        let snap = self
            .raw
            .raft
            .raft_log
            .unstable_snapshot()
            .clone()
            .expect("snapshot_to_install saw it");
        crate::info!("applying snapshot", "snapshot-index" => raft_index, "snapshot-term" => snap.get_metadata().term);
        self.snapshot_work.installing = Some(raft_index);
        // A local snapshot not yet saved is older than the leader's; it is dropped.
        self.snapshot_work.local = None;
        let dir = self.snapshot_dir.clone();
        let state = self.state.clone();
        let node = node.clone();
        glommio::spawn_local(async move {
            let started = Instant::now();
            if let Err(e) = swap_in_snapshot_db(&dir, &snap, &state).await {
                crate::fatal!("cannot install the leader's snapshot", "error" => e);
            }
            crate::info!(
                "restored snapshot database",
                "snapshot-index" => raft_index,
                "consistent-index" => state.borrow().raft_applied_index(),
                "took" => crate::log::format_duration(started.elapsed())
            );
            let mut n = node.borrow_mut();
            n.snapshot_work.installing = None;
            n.snapshot_work.installed_raft_index = raft_index;
            n.wake.wake();
        })
        .detach();
    }

    /// The ready carrying the leader's snapshot: its database is in place; the membership
    /// and the log restart from it.
    fn snapshot_installed(&mut self, snap: &Snapshot) -> Result<(), String> {
        let meta = snap.get_metadata();
        if meta.index != self.snapshot_work.installed_raft_index {
            return Err(format!(
                "raft hands on the snapshot at {} but the database installed is for {}",
                meta.index, self.snapshot_work.installed_raft_index
            ));
        }
        snapshot::restore_membership(snap, &mut self.membership)?;
        for m in self.membership.members.values() {
            if m.id != self.id {
                self.transport.set_peer(m.id, m.peer_urls.clone());
            }
        }
        self.log.apply_snapshot(snap.clone());
        self.last_snapshot_index = meta.index;
        self.refresh_members_answer();
        Ok(())
    }

    /// etcd's `--snapshot-count`: after that many applied entries since the last
    /// snapshot, take one at the applied index, then compact the log (keeping catch-up
    /// entries) and release WAL segments below it. The database is the snapshot's state, so
    /// the snapshot (membership and conf state, a few KB) is saved only once the backend
    /// holds that index durably (a commit is started for it at once); a restart then resumes
    /// from the database and replays the WAL after the snapshot.
    fn maybe_snapshot(&mut self, node: &Rc<RefCell<Node>>) {
        if self.snapshot_work.saving || self.snapshot_work.installing.is_some() {
            return;
        }
        if self.snapshot_work.local.is_none() {
            let applied = self.state.borrow_mut().raft_applied_index();
            if applied < self.last_snapshot_index + self.options.snapshot_count.max(1) {
                return;
            }
            let Some(term) = self.log.term_of(applied) else {
                return;
            };
            let mut snap = Snapshot::default();
            snap.set_metadata(log_store::snapshot_metadata(
                applied,
                term,
                self.raw.raft.prs().conf().to_conf_state(),
            ));
            snap.data = snapshot::encode(&self.membership).into();
            self.snapshot_work.local = Some(LocalSnapshot { snapshot: snap });
            self.state.borrow_mut().commit_backend();
        }
        let raft_index = self
            .snapshot_work
            .local
            .as_ref()
            .map_or(0, |local| local.snapshot.get_metadata().index);
        if self.state.borrow().durable_consistent_index() < raft_index {
            // The commit's end wakes the loop, which looks again.
            return;
        }
        let snap = self.snapshot_work.local.take().expect("checked").snapshot;
        self.snapshot_work.saving = true;
        let dir = self.snapshot_dir.clone();
        let node = node.clone();
        glommio::spawn_local(async move {
            let saved = snapshot::save(&dir, &snap).await;
            let mut n = node.borrow_mut();
            n.snapshot_work.saving = false;
            match saved {
                Ok(()) => n.compact_after_snapshot(snap),
                Err(e) => crate::error!("cannot save a snapshot", "error" => e),
            }
            n.wake.wake();
        })
        .detach();
    }

    /// A local snapshot's file is durable: the log is compacted below it (keeping catch-up
    /// entries), then, once the WAL records it, older WAL segments and snapshot files go.
    fn compact_after_snapshot(&mut self, snap: Snapshot) {
        let (raft_index, term) = (snap.get_metadata().index, snap.get_metadata().term);
        if raft_index <= self.last_snapshot_index {
            // A leader's snapshot, installed meanwhile, is newer.
            return;
        }
        crate::info!("saved snapshot", "snapshot-index" => raft_index);
        self.last_snapshot_index = raft_index;
        // Keep catch-up entries, but never more than one snapshot interval, so that a
        // small --snapshot-count bounds the log's memory as the user asked.
        let catch_up = SNAPSHOT_CATCH_UP_ENTRIES.min(self.options.snapshot_count);
        let compact_to = raft_index
            .saturating_sub(catch_up)
            .max(self.log.first_raft_index() - 1);
        self.log.compact(snap, compact_to);
        let wal = self.wal.clone();
        let dir = self.snapshot_dir.clone();
        let unsynced_hard_state = self.unsynced_hard_state.take();
        glommio::spawn_local(async move {
            let marker = WalRecord::Snapshot(wal::SnapshotMarker { raft_index, term });
            // The hard state covering the snapshot's index goes first: a restart must never
            // find a snapshot marker past the durable commit index.
            let mut records: Vec<WalRecord> = unsynced_hard_state
                .iter()
                .map(log_store::wal_hard_state)
                .collect();
            records.push(marker);
            if wal.append(records).await.is_ok() {
                if compact_to > 0 {
                    let _ = wal.release_below(compact_to.min(raft_index)).await;
                }
                snapshot::purge(&dir, raft_index).await;
            }
        })
        .detach();
    }
}

/// Swaps the leader's database image for the snapshot `snap` in for the state machine's
/// database (see `Node::install_snapshot`).
async fn swap_in_snapshot_db(
    dir: &std::path::Path,
    snap: &Snapshot,
    state: &Rc<RefCell<StateMachine>>,
) -> Result<(), String> {
    let raft_index = snap.get_metadata().index;
    let image = snapshot::db_image_path(dir, raft_index);
    // The .snap file first: the WAL marker the ready writes for this snapshot names it.
    snapshot::save(dir, snap).await?;
    let db_path = state.borrow().db_path();
    state.borrow_mut().flush();
    wait_backend_idle(state).await;
    let (dir, target) = (dir.to_path_buf(), db_path.clone());
    let store = snapshot::blocking(move || -> Result<KvStore<BtreeBackend>, String> {
        if !image.exists() {
            return Err(format!(
                "the snapshot database {} is missing",
                image.display()
            ));
        }
        snapshot::install_db_image_blocking(&dir, raft_index, &target)?;
        let backend = BtreeBackend::open(&target)
            .map_err(|e| format!("cannot open {}: {e}", target.display()))?;
        KvStore::open(backend).map_err(|e| format!("cannot load {}: {e}", target.display()))
    })
    .await?;
    // A tick may have committed to the old backend meanwhile.
    wait_backend_idle(state).await;
    let old = state.borrow_mut().replace_store(store, raft_index)?;
    // Unmapping and closing the old file is left to the blocking pool as well.
    snapshot::blocking(move || drop(old)).await;
    Ok(())
}

/// Until no backend writer job is in flight or wanted (the jobs run on the blocking pool).
async fn wait_backend_idle(state: &Rc<RefCell<StateMachine>>) {
    loop {
        {
            let mut state = state.borrow_mut();
            state.poll_backend();
            if !state.backend_is_busy() {
                return;
            }
        }
        glommio::timer::sleep(BACKEND_IDLE_POLL).await;
    }
}

/// New entry bytes stepped into raft per ready, beyond which appends wait in the inbox:
/// well below the WAL's per-append maximum (32 MiB), since one more append (at most
/// `max_size_per_msg` plus one entry) may land after the check.
const READY_ENTRY_BYTES_MAX: u64 = 8 << 20;

/// Bytes of WAL appends queued and not yet durable beyond which no new ready is taken:
/// half the WAL's queue limit (`WalOptions::queue_bytes_max`, 64 MiB), leaving room for one
/// more ready of at most `READY_ENTRY_BYTES_MAX` and the small marker appends.
const WAL_IN_FLIGHT_BYTES_MAX: usize = 32 << 20;
const _: () = assert!(WAL_IN_FLIGHT_BYTES_MAX + 2 * READY_ENTRY_BYTES_MAX as usize <= 64 << 20);

/// How often an install looks whether the backend's jobs have finished.
const BACKEND_IDLE_POLL: Duration = Duration::from_millis(2);
