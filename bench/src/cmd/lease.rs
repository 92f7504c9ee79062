//! lease-keepalive: etcd's `tools/benchmark/cmd/lease.go`. Each worker grants one lease
//! (TTL 100 s) and then times KeepAliveOnce calls on it: like clientv3's `KeepAliveOnce`,
//! every call opens a LeaseKeepAlive stream, sends one request, reads one response and
//! cancels the stream.

use crate::channel::H2Channel;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{closed_loop, Worker};
use crate::client::{create_clients, status_text, BoxError, Client};
use crate::proto::etcdserverpb::{
    lease_client::LeaseClient, LeaseGrantRequest, LeaseKeepAliveRequest,
};
use crate::{Global, Output};

/// TTL of the benchmark's leases, as in etcd's tool.
const LEASE_TTL_S: i64 = 100;

#[derive(clap::Args)]
pub struct LeaseKeepaliveArgs {
    /// Total number of lease keepalive requests
    #[arg(long, default_value_t = 10000)]
    total: u64,
}

struct KeepaliveWorker {
    client: Client,
    lease: LeaseClient<H2Channel>,
    lease_id: i64,
}

/// One keepalive round trip on a fresh stream; the stream is cancelled when dropped.
pub async fn keep_alive_once(
    client: &Client,
    lease: &mut LeaseClient<H2Channel>,
    lease_id: i64,
) -> Result<i64, String> {
    let (tx, rx) = mpsc::channel(1);
    tx.send(LeaseKeepAliveRequest { id: lease_id })
        .await
        .map_err(|_| "keepalive request channel closed".to_string())?;
    let mut responses = lease
        .lease_keep_alive(client.request(ReceiverStream::new(rx)))
        .await
        .map_err(|s| status_text(&s))?
        .into_inner();
    let response = responses
        .message()
        .await
        .map_err(|s| status_text(&s))?
        .ok_or_else(|| "keepalive stream ended without a response".to_string())?;
    drop(tx);
    if response.ttl <= 0 {
        // clientv3 reports a lease that no longer exists as ErrLeaseNotFound.
        return Err("etcdserver: requested lease not found".to_string());
    }
    Ok(response.ttl)
}

impl Worker for KeepaliveWorker {
    async fn call(&mut self, _op_number: u64) -> (usize, Result<(), String>) {
        (
            0,
            keep_alive_once(&self.client, &mut self.lease, self.lease_id)
                .await
                .map(drop),
        )
    }
}

pub async fn lease_keepalive(
    args: LeaseKeepaliveArgs,
    global: &Global,
    out: &mut Output,
) -> Result<(), BoxError> {
    let clients = create_clients(global, global.clients, global.conns).await?;
    let mut workers = Vec::with_capacity(clients.len());
    for c in &clients {
        let mut lease = c.lease();
        let granted = lease
            .lease_grant(c.request(LeaseGrantRequest {
                ttl: LEASE_TTL_S,
                id: 0,
            }))
            .await
            .map_err(|s| format!("lease grant: {}", status_text(&s)))?
            .into_inner();
        workers.push(KeepaliveWorker {
            client: c.clone(),
            lease,
            lease_id: granted.id,
        });
    }
    let mut reports = closed_loop(workers, args.total, 0, &["lease-keepalive"]).await?;
    out.report("", reports.remove(0), "");
    Ok(())
}
