//! Leases across the cluster: the lessor is primary exactly on the leader, which
//! proposes its expiries and checkpoints; followers forward keep-alives and TimeToLive
//! to the leader over the peer transport (docs/peer-protocol.md, "Lease forwarding"),
//! holding them (up to `LEASE_FORWARDS_MAX`) while no leader is known.

use std::time::{Duration, Instant};

use futures::channel::oneshot;

use crate::error::EtcdError;
use crate::proto::etcdserverpb as pb;
use crate::raft::transport;
use crate::state::client::Command;
use crate::state::envelope::{LeaseForward, LeaseForwardResponse};
use crate::state::machine::LeaseProposal;
use crate::state::LeaseCommand;

use super::*;

/// Bound on lease requests a follower holds while it knows no leader.
pub const LEASE_FORWARDS_MAX: usize = 16 * 1024;

/// Sends a forwarded lease request's answer to the follower once the state machine has
/// replied, wrapping the response with `wrap` (or an error in etcd's words).
fn answer_forwarded<T: 'static>(
    reply: oneshot::Receiver<Result<T, EtcdError>>,
    answer: oneshot::Sender<LeaseForwardResponse>,
    wrap: impl FnOnce(T) -> LeaseForwardResponse + 'static,
) {
    glommio::spawn_local(async move {
        let _ = answer.send(match reply.await {
            Ok(Ok(resp)) => wrap(resp),
            Ok(Err(e)) => forward_error(e),
            Err(_) => forward_error(EtcdError::Stopped),
        });
    })
    .detach();
}

fn forward_error(e: EtcdError) -> LeaseForwardResponse {
    LeaseForwardResponse {
        error: e.message().to_string(),
        ..Default::default()
    }
}

/// Answers the client of a forwarded lease request from the leader's response.
type ForwardReply = Box<dyn FnOnce(Result<LeaseForwardResponse, EtcdError>)>;

/// Sends one forwarded lease request to the leader and answers the client with the
/// leader's response, or with an etcd error (the client's keep-alive retries).
async fn forward_to_leader(
    urls: Vec<String>,
    hello: (u64, u64, u64),
    command: Command,
    tls: Option<std::sync::Arc<crate::net::tls::PeerTls>>,
) {
    let Command::Lease(lease) = command else {
        unreachable!("only lease requests are forwarded")
    };
    let (request, reply): (LeaseForward, ForwardReply) = match lease {
        LeaseCommand::Renew(req, r) => (
            LeaseForward {
                renew: Some(req),
                ..Default::default()
            },
            Box::new(move |res| {
                let _ = r.send(res.and_then(|resp| resp.renew.ok_or(EtcdError::LeaderChanged)));
            }),
        ),
        LeaseCommand::TimeToLive(req, r) => (
            LeaseForward {
                time_to_live: Some(req),
                ..Default::default()
            },
            Box::new(move |res| {
                let _ =
                    r.send(res.and_then(|resp| resp.time_to_live.ok_or(EtcdError::LeaderChanged)));
            }),
        ),
        other => return fail(Command::Lease(other), EtcdError::NotLeader),
    };
    let answer = transport::forward_lease(&urls, hello, &request, tls.as_deref()).await;
    reply(match answer {
        Ok(resp) if resp.error.is_empty() => Ok(resp),
        Ok(resp) => Err(EtcdError::ALL
            .iter()
            .copied()
            .find(|e| e.message() == resp.error)
            .unwrap_or(EtcdError::LeaderChanged)),
        Err(e) => {
            crate::debug!("cannot forward a lease request to the leader", "error" => e);
            Err(EtcdError::LeaderChanged)
        }
    });
}

impl Node {
    /// Steps peer messages into raft and tells raft what the transport saw.
    /// The lessor is primary exactly while this member leads (etcd promotes on becoming
    /// leader with one election timeout of grace, and demotes otherwise).
    pub(super) fn sync_lease_role(&mut self) {
        let extend = Duration::from_millis(self.options.election_timeout_ms);
        let leader = self.is_leader();
        self.state.borrow_mut().sync_lease_role(leader, extend);
    }

    /// Proposes what the primary's lease loop queued: revocations of expired leases and
    /// checkpoints. Nobody waits for their answer; every member applies the entries.
    pub(super) fn propose_lease_work(&mut self) {
        let proposals = self.state.borrow_mut().take_lease_proposals();
        if !self.is_leader() {
            return;
        }
        for proposal in proposals {
            let command = match proposal {
                LeaseProposal::Revoke(id) => Command::Lease(LeaseCommand::Revoke(
                    pb::LeaseRevokeRequest { id },
                    oneshot::channel().0,
                )),
                LeaseProposal::Checkpoint(batch) => {
                    Command::Lease(LeaseCommand::Checkpoint(batch, oneshot::channel().0))
                }
            };
            self.propose_write(command);
        }
    }

    /// A follower's Renew or TimeToLive: sent to the leader now, or held until a leader is
    /// known (at most `request_timeout`, then etcd's "no leader").
    pub(super) fn forward_lease(&mut self, command: Command) {
        if self.lease_forwards.len() >= LEASE_FORWARDS_MAX {
            fail(command, EtcdError::TooManyRequests);
            return;
        }
        self.lease_forwards
            .push_back((command, Instant::now() + self.request_timeout()));
        self.dispatch_lease_forwards(Instant::now());
    }

    pub(super) fn dispatch_lease_forwards(&mut self, now: Instant) {
        if self.is_leader() {
            // Became leader while they waited: answer them here.
            for (command, _) in self.lease_forwards.drain(..) {
                self.state.borrow_mut().handle_read(command);
            }
            return;
        }
        let leader_urls = self
            .membership
            .members
            .get(&self.leader_id)
            .map(|m| m.peer_urls.clone())
            .filter(|_| self.leader_id != 0);
        let Some(urls) = leader_urls else {
            while self
                .lease_forwards
                .front()
                .is_some_and(|(_, at)| *at <= now)
            {
                let (command, _) = self.lease_forwards.pop_front().expect("front exists");
                fail(command, EtcdError::NoLeader);
            }
            return;
        };
        let hello = (self.cluster_id, self.id, self.leader_id);
        for (command, _) in self.lease_forwards.drain(..) {
            let urls = urls.clone();
            let tls = self.options.peer_tls.clone();
            glommio::spawn_local(forward_to_leader(urls, hello, command, tls)).detach();
        }
    }

    /// The leader's side of lease forwarding: answers what followers forwarded.
    pub(super) fn answer_forwarded_leases(&mut self) {
        for (request, answer) in self.transport.take_lease_requests() {
            if !self.is_leader() {
                let _ = answer.send(LeaseForwardResponse {
                    error: EtcdError::NotLeader.message().to_string(),
                    ..Default::default()
                });
                continue;
            }
            if let Some(req) = request.renew {
                let (tx, rx) = oneshot::channel();
                self.state
                    .borrow_mut()
                    .handle_read(Command::Lease(LeaseCommand::Renew(req, tx)));
                answer_forwarded(rx, answer, |resp| LeaseForwardResponse {
                    renew: Some(resp),
                    ..Default::default()
                });
            } else if let Some(req) = request.time_to_live {
                let (tx, rx) = oneshot::channel();
                self.state
                    .borrow_mut()
                    .handle_read(Command::Lease(LeaseCommand::TimeToLive(req, tx)));
                answer_forwarded(rx, answer, |resp| LeaseForwardResponse {
                    time_to_live: Some(resp),
                    ..Default::default()
                });
            }
        }
    }
}
