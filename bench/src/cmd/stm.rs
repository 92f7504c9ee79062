//! stm: etcd's `tools/benchmark/cmd/stm.go` over a port of clientv3's software
//! transactional memory (`client/v3/concurrency/stm.go`), with the same isolation levels
//! and conflict rules, and its two optional locks: `lock-client` (clientv3's
//! `concurrency.Mutex`: ownership keys under a prefix, ordered by create revision) and
//! `lock-rpc` (the v3lock service). Both hold a session lease (TTL 60 s) kept alive by a
//! background task.
//!
//! Each transaction reads `--keys-per-txn` distinct random keys (16-byte varint keys out of
//! `--keys`) and overwrites `--txn-wr-percent` of them; a conflicting commit retries the
//! whole transaction (waiting for the rate limiter again, as etcd's apply function does).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use crate::channel::H2Channel;
use bytes::Bytes;
use rand::Rng;

use super::{closed_loop, Worker};
use crate::client::{create_clients, status_text, BoxError, Client};
use crate::proto::etcdserverpb::{
    compare, kv_client::KvClient, range_request, request_op, response_op, watch_request, Compare,
    DeleteRangeRequest, LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest, PutRequest,
    RangeRequest, RangeResponse, RequestOp, TxnRequest, TxnResponse, WatchCreateRequest,
    WatchRequest,
};
use crate::proto::v3lockpb::{LockRequest, UnlockRequest};
use crate::util::{put_varint, random_bytes, Limiter};
use crate::{Global, Output};

/// Session lease TTL, clientv3 concurrency's default.
const SESSION_TTL_S: i64 = 60;
/// Name of the lock both lockers take, as in etcd's tool.
const LOCK_NAME: &str = "stmlock";
/// Length of the benchmark's keys.
const STM_KEY_BYTES: usize = 16;

#[derive(clap::Args)]
pub struct StmArgs {
    /// Read Committed (c), Repeatable Reads (r), Serializable (s), or Snapshot (ss)
    #[arg(long, default_value = "r")]
    isolation: String,
    /// Total unique keys accessible by the benchmark
    #[arg(long, default_value_t = 1)]
    keys: i64,
    /// Total number of completed STM transactions
    #[arg(long, default_value_t = 10000)]
    total: u64,
    /// Number of keys to access per transaction
    #[arg(long, default_value_t = 1)]
    keys_per_txn: i64,
    /// Percentage of keys to overwrite per transaction
    #[arg(long, default_value_t = 50)]
    txn_wr_percent: i64,
    /// Wrap STM transaction with a custom locking mechanism (stm, lock-client, lock-rpc)
    #[arg(long, default_value = "stm")]
    stm_locker: String,
    /// Value size of each STM put request
    #[arg(long, default_value_t = 8)]
    val_size: usize,
    /// Maximum STM transactions per second (0 is no limit)
    #[arg(long, default_value_t = 0)]
    rate: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Isolation {
    SerializableSnapshot,
    Serializable,
    RepeatableReads,
    ReadCommitted,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Locker {
    None,
    Client,
    Rpc,
}

fn range_op(key: Bytes, serializable: bool, revision: i64) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(RangeRequest {
            key,
            serializable,
            revision,
            ..Default::default()
        })),
    }
}

fn mod_revision_compare(key: Bytes, result: compare::CompareResult, mod_revision: i64) -> Compare {
    Compare {
        result: result as i32,
        target: compare::CompareTarget::Mod as i32,
        key,
        target_union: Some(compare::TargetUnion::ModRevision(mod_revision)),
        range_end: Bytes::new(),
    }
}

fn range_responses(response: TxnResponse) -> Vec<RangeResponse> {
    response
        .responses
        .into_iter()
        .map(|r| match r.response {
            Some(response_op::Response::ResponseRange(range)) => range,
            _ => RangeResponse::default(),
        })
        .collect()
}

/// One transaction attempt's state: clientv3's `stm` / `stmSerializable`.
struct Stm {
    isolation: Isolation,
    read_set: HashMap<Bytes, RangeResponse>,
    write_set: HashMap<Bytes, Bytes>,
    /// Reads kept from a failed serializable commit, used by the next attempt.
    prefetch: HashMap<Bytes, RangeResponse>,
    /// Options of the next fetch: (serializable, revision).
    get_options: (bool, i64),
}

impl Stm {
    fn new(isolation: Isolation) -> Stm {
        let mut stm = Stm {
            isolation,
            read_set: HashMap::new(),
            write_set: HashMap::new(),
            prefetch: HashMap::new(),
            get_options: (false, 0),
        };
        stm.reset();
        stm
    }

    fn serializable_family(&self) -> bool {
        matches!(
            self.isolation,
            Isolation::Serializable | Isolation::SerializableSnapshot
        )
    }

    fn reset(&mut self) {
        self.read_set.clear();
        self.write_set.clear();
        if !self.serializable_family() {
            // Repeatable reads and read committed read from the local member.
            self.get_options = (true, 0);
        }
    }

    async fn get(
        &mut self,
        client: &Client,
        kv: &mut KvClient<H2Channel>,
        key: &Bytes,
    ) -> Result<(), String> {
        if self.write_set.contains_key(key) {
            return Ok(());
        }
        let first_read = self.read_set.is_empty();
        if self.serializable_family() {
            if let Some(response) = self.prefetch.remove(key) {
                self.read_set.insert(key.clone(), response);
            }
        }
        let revision = match self.read_set.get(key) {
            Some(response) => response.header.as_ref().map_or(0, |h| h.revision),
            None => {
                let (serializable, revision) = self.get_options;
                let request = TxnRequest {
                    compare: vec![],
                    success: vec![range_op(key.clone(), serializable, revision)],
                    failure: vec![],
                };
                let response = kv
                    .txn(client.request(request))
                    .await
                    .map_err(|s| status_text(&s))?
                    .into_inner();
                let range = range_responses(response)
                    .into_iter()
                    .next()
                    .unwrap_or_default();
                let revision = range.header.as_ref().map_or(0, |h| h.revision);
                self.read_set.insert(key.clone(), range);
                revision
            }
        };
        if self.serializable_family() && first_read {
            // Every later read of this attempt sees the first read's revision.
            self.get_options = (true, revision);
        }
        Ok(())
    }

    fn put(&mut self, key: Bytes, value: Bytes) {
        self.write_set.insert(key, value);
    }

    fn conflicts(&self) -> Vec<Compare> {
        let read_compares = || {
            self.read_set.iter().map(|(key, response)| {
                let mod_revision = response.kvs.first().map_or(0, |kv| kv.mod_revision);
                mod_revision_compare(key.clone(), compare::CompareResult::Equal, mod_revision)
            })
        };
        match self.isolation {
            Isolation::ReadCommitted => vec![],
            Isolation::RepeatableReads | Isolation::Serializable => read_compares().collect(),
            Isolation::SerializableSnapshot => {
                let first = self
                    .read_set
                    .values()
                    .map(|r| r.header.as_ref().map_or(0, |h| h.revision))
                    .min()
                    .unwrap_or(i64::MAX - 1);
                read_compares()
                    .chain(self.write_set.keys().map(|key| {
                        mod_revision_compare(key.clone(), compare::CompareResult::Less, first + 1)
                    }))
                    .collect()
            }
        }
    }

    /// Tries to commit; Ok(true) when the transaction took effect.
    async fn commit(
        &mut self,
        client: &Client,
        kv: &mut KvClient<H2Channel>,
    ) -> Result<bool, String> {
        let puts = self
            .write_set
            .iter()
            .map(|(key, value)| RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: key.clone(),
                    value: value.clone(),
                    ..Default::default()
                })),
            })
            .collect();
        let read_keys: Vec<Bytes> = if self.serializable_family() {
            self.read_set.keys().cloned().collect()
        } else {
            vec![]
        };
        let failure = read_keys
            .iter()
            .map(|k| range_op(k.clone(), false, 0))
            .collect();
        let request = TxnRequest {
            compare: self.conflicts(),
            success: puts,
            failure,
        };
        let response = kv
            .txn(client.request(request))
            .await
            .map_err(|s| status_text(&s))?
            .into_inner();
        if response.succeeded {
            return Ok(true);
        }
        if self.serializable_family() {
            // The failure branch read the keys afresh: the next attempt starts from them.
            self.prefetch = read_keys
                .into_iter()
                .zip(range_responses(response))
                .collect();
            self.get_options = (false, 0);
        }
        Ok(false)
    }
}

/// A lease kept alive in the background for as long as the session lives.
struct Session {
    client: Client,
    lease_id: i64,
    keepalive: tokio::task::JoinHandle<()>,
}

impl Session {
    async fn new(client: &Client) -> Result<Session, String> {
        let mut lease = client.lease();
        let granted = lease
            .lease_grant(client.request(LeaseGrantRequest {
                ttl: SESSION_TTL_S,
                id: 0,
            }))
            .await
            .map_err(|s| status_text(&s))?
            .into_inner();
        let lease_id = granted.id;
        let keepalive = {
            let client = client.clone();
            tokio::spawn(async move {
                let (tx, rx) = tokio::sync::mpsc::channel(1);
                if tx
                    .send(LeaseKeepAliveRequest { id: lease_id })
                    .await
                    .is_err()
                {
                    return;
                }
                let Ok(response) = lease
                    .lease_keep_alive(
                        client.request(tokio_stream::wrappers::ReceiverStream::new(rx)),
                    )
                    .await
                else {
                    return;
                };
                let mut responses = response.into_inner();
                loop {
                    if !matches!(responses.message().await, Ok(Some(_))) {
                        return;
                    }
                    // clientv3 renews at a third of the TTL.
                    tokio::time::sleep(Duration::from_secs((SESSION_TTL_S / 3) as u64)).await;
                    if tx
                        .send(LeaseKeepAliveRequest { id: lease_id })
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            })
        };
        Ok(Session {
            client: client.clone(),
            lease_id,
            keepalive,
        })
    }

    async fn close(self) {
        self.keepalive.abort();
        let _ = self
            .client
            .lease()
            .lease_revoke(
                self.client
                    .request(LeaseRevokeRequest { id: self.lease_id }),
            )
            .await;
    }
}

/// clientv3's `concurrency.Mutex`: the owner is the key under `prefix` with the lowest
/// create revision; waiters watch the next-older key for deletion.
struct Mutex {
    prefix: Bytes,
    my_key: Bytes,
}

impl Mutex {
    fn new(session: &Session, name: &str) -> Mutex {
        let prefix = format!("{name}/");
        let my_key = format!("{prefix}{:x}", session.lease_id);
        Mutex {
            prefix: Bytes::from(prefix),
            my_key: Bytes::from(my_key),
        }
    }

    async fn lock(
        &self,
        client: &Client,
        kv: &mut KvClient<H2Channel>,
        lease_id: i64,
    ) -> Result<(), String> {
        let prefix_end = Bytes::from(super::kv::prefix_range_end(&self.prefix));
        // Create our key unless it exists (a re-lock in the same session keeps its place).
        let request = TxnRequest {
            compare: vec![Compare {
                result: compare::CompareResult::Equal as i32,
                target: compare::CompareTarget::Create as i32,
                key: self.my_key.clone(),
                target_union: Some(compare::TargetUnion::CreateRevision(0)),
                range_end: Bytes::new(),
            }],
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: self.my_key.clone(),
                    lease: lease_id,
                    ..Default::default()
                })),
            }],
            failure: vec![range_op(self.my_key.clone(), false, 0)],
        };
        let response = kv
            .txn(client.request(request))
            .await
            .map_err(|s| status_text(&s))?
            .into_inner();
        let my_revision = if response.succeeded {
            response.header.as_ref().map_or(0, |h| h.revision)
        } else {
            range_responses(response)
                .into_iter()
                .next()
                .and_then(|r| r.kvs.first().map(|kv| kv.create_revision))
                .unwrap_or(0)
        };
        // Wait for every older waiter to go, newest first (clientv3's waitDeletes).
        loop {
            let older = kv
                .range(client.request(RangeRequest {
                    key: self.prefix.clone(),
                    range_end: prefix_end.clone(),
                    limit: 1,
                    sort_order: range_request::SortOrder::Descend as i32,
                    sort_target: range_request::SortTarget::Create as i32,
                    max_create_revision: my_revision - 1,
                    ..Default::default()
                }))
                .await
                .map_err(|s| status_text(&s))?
                .into_inner();
            let Some(holder) = older.kvs.first() else {
                return Ok(());
            };
            let revision = older.header.as_ref().map_or(0, |h| h.revision);
            wait_delete(client, holder.key.clone(), revision).await?;
        }
    }

    async fn unlock(&self, client: &Client, kv: &mut KvClient<H2Channel>) -> Result<(), String> {
        kv.delete_range(client.request(DeleteRangeRequest {
            key: self.my_key.clone(),
            ..Default::default()
        }))
        .await
        .map(drop)
        .map_err(|s| status_text(&s))
    }
}

/// Returns once `key` is deleted at or after `revision`. Like clientv3's `waitDelete`, the
/// watch starts at `revision` itself (where the key still exists), so the server treats it
/// as an unsynced watcher whenever the store has moved on; that latency is part of what
/// etcd's tool measures, hence kept.
async fn wait_delete(client: &Client, key: Bytes, revision: i64) -> Result<(), String> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let create = WatchCreateRequest {
        key,
        start_revision: revision,
        ..Default::default()
    };
    tx.send(WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(create)),
    })
    .await
    .map_err(|_| "watch stream closed".to_string())?;
    let mut responses = client
        .watch()
        .watch(client.request(tokio_stream::wrappers::ReceiverStream::new(rx)))
        .await
        .map_err(|s| status_text(&s))?
        .into_inner();
    loop {
        let response = responses
            .message()
            .await
            .map_err(|s| status_text(&s))?
            .ok_or_else(|| "watch stream closed by the server".to_string())?;
        if response.canceled {
            return Err(format!("watch canceled: {}", response.cancel_reason));
        }
        let deleted = crate::proto::mvccpb::event::EventType::Delete as i32;
        if response.events.iter().any(|e| e.r#type == deleted) {
            return Ok(());
        }
    }
}

struct StmWorker {
    client: Client,
    kv: KvClient<H2Channel>,
    isolation: Isolation,
    locker: Locker,
    /// Lease of the worker's session (0 without a locker).
    lease_id: i64,
    mutex: Option<Mutex>,
    limiter: Arc<Limiter>,
    keys: i64,
    keys_per_txn: usize,
    write_percent: i64,
    val_size: usize,
    rng: rand::rngs::SmallRng,
}

impl StmWorker {
    async fn transaction(&mut self) -> Result<(), String> {
        let mut key_set = HashSet::with_capacity(self.keys_per_txn);
        while key_set.len() != self.keys_per_txn {
            let mut key = vec![0u8; STM_KEY_BYTES];
            put_varint(&mut key, self.rng.random_range(0..self.keys))?;
            key_set.insert(Bytes::from(key));
        }
        let keys: Vec<Bytes> = key_set.into_iter().collect();
        let mut stm = Stm::new(self.isolation);
        loop {
            stm.reset();
            self.limiter.wait().await;
            let mut writes = (keys.len() as i64 * self.write_percent / 100) as usize;
            for key in &keys {
                stm.get(&self.client, &mut self.kv, key).await?;
                if writes > 0 {
                    stm.put(key.clone(), Bytes::from(random_bytes(self.val_size)));
                    writes -= 1;
                }
            }
            if stm.commit(&self.client, &mut self.kv).await? {
                return Ok(());
            }
        }
    }

    async fn lock(&mut self) -> Result<Option<Bytes>, String> {
        match self.locker {
            Locker::None => Ok(None),
            Locker::Client => {
                let mutex = self.mutex.as_ref().ok_or("lock-client without a session")?;
                mutex
                    .lock(&self.client, &mut self.kv, self.lease_id)
                    .await
                    .map(|_| None)
            }
            Locker::Rpc => {
                let lease = self.lease_id;
                let response = self
                    .client
                    .lock()
                    .lock(self.client.request(LockRequest {
                        name: Bytes::from_static(LOCK_NAME.as_bytes()),
                        lease,
                    }))
                    .await
                    .map_err(|s| status_text(&s))?;
                Ok(Some(response.into_inner().key))
            }
        }
    }

    async fn unlock(&mut self, lock_key: Option<Bytes>) -> Result<(), String> {
        match self.locker {
            Locker::None => Ok(()),
            Locker::Client => match &self.mutex {
                Some(mutex) => mutex.unlock(&self.client, &mut self.kv).await,
                None => Ok(()),
            },
            Locker::Rpc => self
                .client
                .lock()
                .unlock(self.client.request(UnlockRequest {
                    key: lock_key.unwrap_or_default(),
                }))
                .await
                .map(drop)
                .map_err(|s| status_text(&s)),
        }
    }
}

impl Worker for StmWorker {
    async fn call(&mut self, _op_number: u64) -> (usize, Result<(), String>) {
        // etcd's tool panics when locking fails; we count it as the transaction's error.
        let lock_key = match self.lock().await {
            Ok(k) => k,
            Err(e) => return (0, Err(format!("lock: {e}"))),
        };
        let result = self.transaction().await;
        if let Err(e) = self.unlock(lock_key).await {
            return (0, Err(format!("unlock: {e}")));
        }
        (0, result)
    }
}

pub async fn stm(args: StmArgs, global: &Global, out: &mut Output) -> Result<(), BoxError> {
    if args.keys <= 0 {
        return Err(format!("expected positive --keys, got ({})", args.keys).into());
    }
    if !(0..=100).contains(&args.txn_wr_percent) {
        return Err(format!(
            "expected [0, 100] --txn-wr-percent, got ({})",
            args.txn_wr_percent
        )
        .into());
    }
    if args.keys_per_txn < 0 || args.keys_per_txn > args.keys {
        return Err(format!(
            "expected --keys-per-txn between 0 and {}, got ({})",
            args.keys, args.keys_per_txn
        )
        .into());
    }
    let isolation = match args.isolation.as_str() {
        "c" => Isolation::ReadCommitted,
        "r" => Isolation::RepeatableReads,
        "s" => Isolation::Serializable,
        "ss" => Isolation::SerializableSnapshot,
        other => return Err(format!("--isolation must be c, r, s or ss, got {other:?}").into()),
    };
    let locker = match args.stm_locker.as_str() {
        "stm" => Locker::None,
        "lock-client" => Locker::Client,
        "lock-rpc" => Locker::Rpc,
        other => return Err(format!("unexpected stm locker {other:?}").into()),
    };
    put_varint(&mut [0u8; STM_KEY_BYTES], args.keys - 1)?;
    let clients = create_clients(global, global.clients, global.conns).await?;
    let limiter = Limiter::new(args.rate, 1);
    let mut workers = Vec::with_capacity(clients.len());
    let mut sessions = Vec::new();
    for c in &clients {
        let session = match locker {
            Locker::None => None,
            _ => Some(Session::new(c).await.map_err(|e| format!("session: {e}"))?),
        };
        let mutex = match (&session, locker) {
            (Some(s), Locker::Client) => Some(Mutex::new(s, LOCK_NAME)),
            _ => None,
        };
        workers.push(StmWorker {
            client: c.clone(),
            kv: c.kv(),
            isolation,
            locker,
            lease_id: session.as_ref().map_or(0, |s| s.lease_id),
            mutex,
            limiter: limiter.clone(),
            keys: args.keys,
            keys_per_txn: args.keys_per_txn as usize,
            write_percent: args.txn_wr_percent,
            val_size: args.val_size,
            rng: rand::SeedableRng::from_os_rng(),
        });
        sessions.extend(session);
    }
    // The limiter is applied inside each transaction attempt, so the driver runs unlimited.
    let mut reports = closed_loop(workers, args.total, 0, &["stm"]).await?;
    for session in sessions {
        session.close().await;
    }
    out.report("", reports.remove(0), "");
    Ok(())
}
