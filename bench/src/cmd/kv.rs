//! put, range, txn-put and txn-mixed: etcd's `tools/benchmark/cmd/{put,range,txn_put,
//! txn_mixed}.go` with the same flags, defaults, key layout and printed text.
//!
//! Keys are etcd's: a zero-filled `--key-size` buffer holding the key number as a Go
//! zig-zag varint (random in `[0, --key-space-size)`, or sequential). The value is one
//! random buffer of `--val-size` bytes shared by every request (a reference-count clone).

use std::time::{Duration, Instant};

use crate::channel::H2Channel;
use bytes::Bytes;
use rand::Rng;

use super::{closed_loop, Worker};
use crate::client::{create_clients, status_text, BoxError, Client};
use crate::proto::etcdserverpb::{
    kv_client::KvClient, request_op, CompactionRequest, HashKvRequest, PutRequest, RangeRequest,
    RequestOp, StatusRequest, TxnRequest,
};
use crate::util::{humanize_bytes, parse_go_duration, put_varint, random_bytes};
use crate::{Global, Output};

#[derive(clap::Args)]
pub struct PutArgs {
    /// Key size of put request
    #[arg(long, default_value_t = 8)]
    key_size: usize,
    /// Value size of put request
    #[arg(long, default_value_t = 8)]
    val_size: usize,
    /// Maximum puts per second (0 is no limit)
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Total number of put requests
    #[arg(long, default_value_t = 10000)]
    total: u64,
    /// Maximum possible keys
    #[arg(long, default_value_t = 1)]
    key_space_size: i64,
    /// Use sequential keys
    #[arg(long)]
    sequential_keys: bool,
    /// Prefix for keys
    #[arg(long, default_value = "")]
    prefix: String,
    /// Interval to compact database (Go duration, e.g. 5m; 0 = never)
    #[arg(long, value_parser = parse_go_duration, default_value = "0")]
    compact_interval: Duration,
    /// Delta between current revision and compact revision
    #[arg(long, default_value_t = 1000)]
    compact_index_delta: i64,
    /// 'true' to check hashkv
    #[arg(long)]
    check_hashkv: bool,
}

struct PutWorker {
    client: Client,
    kv: KvClient<H2Channel>,
    key: Vec<u8>,
    prefix_len: usize,
    value: Bytes,
    key_space_size: i64,
    sequential: bool,
    rng: rand::rngs::SmallRng,
}

impl Worker for PutWorker {
    async fn call(&mut self, op_number: u64) -> (usize, Result<(), String>) {
        let key_number = if self.sequential {
            (op_number % self.key_space_size as u64) as i64
        } else {
            self.rng.random_range(0..self.key_space_size)
        };
        if let Err(e) = put_varint(&mut self.key[self.prefix_len..], key_number) {
            return (0, Err(e));
        }
        let request = self.client.request(PutRequest {
            key: Bytes::copy_from_slice(&self.key),
            value: self.value.clone(),
            ..Default::default()
        });
        (
            0,
            self.kv
                .put(request)
                .await
                .map(drop)
                .map_err(|s| status_text(&s)),
        )
    }
}

fn check_key_space(key_space_size: i64) -> Result<(), BoxError> {
    if key_space_size <= 0 {
        return Err(format!("expected positive --key-space-size, got ({key_space_size})").into());
    }
    Ok(())
}

pub async fn put(args: PutArgs, global: &Global, out: &mut Output) -> Result<(), BoxError> {
    check_key_space(args.key_space_size)?;
    // Fail early, as Go's PutVarint would panic on the first large key number.
    put_varint(&mut vec![0u8; args.key_size], args.key_space_size - 1)?;
    let clients = create_clients(global, global.clients, global.conns).await?;
    let value = Bytes::from(random_bytes(args.val_size));
    let workers: Vec<PutWorker> = clients
        .iter()
        .map(|c| {
            let mut key = args.prefix.as_bytes().to_vec();
            key.resize(args.prefix.len() + args.key_size, 0);
            PutWorker {
                client: c.clone(),
                kv: c.kv(),
                key,
                prefix_len: args.prefix.len(),
                value: value.clone(),
                key_space_size: args.key_space_size,
                sequential: args.sequential_keys,
                rng: rand::SeedableRng::from_os_rng(),
            }
        })
        .collect();
    let compactor = (!args.compact_interval.is_zero()).then(|| {
        let client = clients[0].clone();
        let (interval, delta) = (args.compact_interval, args.compact_index_delta);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                if let Err(e) = compact(&client, delta).await {
                    eprintln!("tern-bench: compaction failed: {e}");
                    return;
                }
            }
        })
    });
    let mut reports = closed_loop(workers, args.total, args.rate, &["put"]).await?;
    if let Some(task) = compactor {
        task.abort();
    }
    out.report("", reports.remove(0), "\n");
    if args.check_hashkv {
        hash_kv(&clients[0], &global.endpoints[0], out).await?;
    }
    Ok(())
}

/// etcd's `compactKV`: read the current revision, compact `delta` revisions behind it.
async fn compact(client: &Client, delta: i64) -> Result<(), String> {
    let mut kv = client.kv();
    let range = tokio::time::timeout(
        Duration::from_secs(5),
        kv.range(client.request(RangeRequest {
            key: Bytes::from_static(b"foo"),
            ..Default::default()
        })),
    )
    .await
    .map_err(|_| "context deadline exceeded".to_string())?
    .map_err(|s| status_text(&s))?;
    let revision = range.into_inner().header.map_or(0, |h| h.revision);
    let target = (revision - delta).max(0);
    tokio::time::timeout(
        Duration::from_secs(5),
        kv.compact(client.request(CompactionRequest {
            revision: target,
            physical: false,
        })),
    )
    .await
    .map_err(|_| "context deadline exceeded".to_string())?
    .map_err(|s| status_text(&s))?;
    Ok(())
}

async fn hash_kv(client: &Client, endpoint: &str, out: &mut Output) -> Result<(), BoxError> {
    let started = Instant::now();
    let hash = client
        .maintenance()
        .hash_kv(client.request(HashKvRequest { revision: 0 }))
        .await
        .map_err(|s| {
            format!(
                "Failed to get the hashkv of endpoint {endpoint} ({})",
                status_text(&s)
            )
        })?
        .into_inner();
    let status = client
        .maintenance()
        .status(client.request(StatusRequest {}))
        .await
        .map_err(|s| {
            format!(
                "Failed to get the status of endpoint {endpoint} ({})",
                status_text(&s)
            )
        })?
        .into_inner();
    let took = started.elapsed();
    out.note(&format!(
        "HashKV Summary:\n\tHashKV: {}\n\tEndpoint: {endpoint}\n\tTime taken to get hashkv: {took:?}\n\tDB size: {}\n",
        hash.hash,
        humanize_bytes(status.db_size.max(0) as u64)
    ));
    out.extra(
        "hashkv",
        serde_json::json!({"hash": hash.hash, "endpoint": endpoint, "db_size": status.db_size}),
    );
    Ok(())
}

#[derive(clap::Args)]
pub struct RangeArgs {
    /// Key to read (positional ids differ from the global --key flag's)
    #[arg(id = "range_key", value_name = "KEY")]
    key: Option<String>,
    /// End of the range (exclusive)
    #[arg(id = "range_end", value_name = "END")]
    end: Option<String>,
    /// Maximum range requests per second (0 is no limit)
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Total number of range requests
    #[arg(long, default_value_t = 10000)]
    total: u64,
    /// Linearizable(l) or Serializable(s)
    #[arg(long, default_value = "l")]
    consistency: String,
    /// Maximum number of results to return from range request (0 is no limit)
    #[arg(long, default_value_t = 0)]
    limit: i64,
    /// Only returns the count of keys
    #[arg(long)]
    count_only: bool,
    /// Only returns the keys
    #[arg(long)]
    keys_only: bool,
    /// Use paginated unary range with 10k-key pages
    #[arg(long)]
    paginate: bool,
    /// Range over all keys with the given key as prefix
    #[arg(long)]
    prefix: bool,
}

/// Page size of `--paginate`, the Kubernetes watch cache's (etcd's `k8sWatchCachePageSize`).
const PAGE_SIZE: i64 = 10_000;

/// clientv3's `GetPrefixRangeEnd`: the smallest key above every key with this prefix.
pub fn prefix_range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte was 0xff (or the prefix was empty): range to the end of the key space.
    vec![0]
}

fn consistency_note(consistency: &str) -> Result<(&'static str, bool), BoxError> {
    match consistency {
        "l" => Ok(("bench with linearizable range\n", false)),
        "s" => Ok(("bench with serializable range\n", true)),
        other => Err(format!("--consistency must be l or s, got {other:?}").into()),
    }
}

struct RangeWorker {
    client: Client,
    kv: KvClient<H2Channel>,
    request: RangeRequest,
    paginate: bool,
}

impl RangeWorker {
    /// etcd's `paginatedRange`: pages of PAGE_SIZE keys at the first page's revision.
    async fn paginated(&mut self) -> Result<(), tonic::Status> {
        let mut request = self.request.clone();
        request.limit = PAGE_SIZE;
        loop {
            let response = self
                .kv
                .range(self.client.request(request.clone()))
                .await?
                .into_inner();
            if request.revision == 0 {
                request.revision = response.header.as_ref().map_or(0, |h| h.revision);
            }
            let Some(last) = response.kvs.last() else {
                return Ok(());
            };
            if !response.more {
                return Ok(());
            }
            let mut next = last.key.to_vec();
            next.push(0);
            request.key = Bytes::from(next);
        }
    }
}

impl Worker for RangeWorker {
    async fn call(&mut self, _op_number: u64) -> (usize, Result<(), String>) {
        let result = if self.paginate {
            self.paginated().await
        } else {
            self.kv
                .range(self.client.request(self.request.clone()))
                .await
                .map(drop)
        };
        (0, result.map_err(|s| status_text(&s)))
    }
}

pub async fn range(args: RangeArgs, global: &Global, out: &mut Output) -> Result<(), BoxError> {
    if args.key.is_none() && !args.prefix {
        return Err("usage: tern-bench range key [end-range] [flags]".into());
    }
    if args.paginate && args.limit > 0 {
        return Err("--paginate and --limit are mutually exclusive".into());
    }
    if args.count_only && args.keys_only {
        return Err("`--keys-only` and `--count-only` cannot be set at the same time".into());
    }
    let (note, serializable) = consistency_note(&args.consistency)?;
    out.note(note);
    let mut key = args.key.unwrap_or_default().into_bytes();
    let range_end = if args.prefix {
        let end = prefix_range_end(&key);
        if key.is_empty() {
            key = vec![0];
        }
        end
    } else {
        args.end.map(String::into_bytes).unwrap_or_default()
    };
    let request = RangeRequest {
        key: Bytes::from(key),
        range_end: Bytes::from(range_end),
        limit: args.limit.max(0),
        serializable,
        count_only: args.count_only,
        keys_only: args.keys_only,
        ..Default::default()
    };
    let clients = create_clients(global, global.clients, global.conns).await?;
    let workers: Vec<RangeWorker> = clients
        .iter()
        .map(|c| RangeWorker {
            client: c.clone(),
            kv: c.kv(),
            request: request.clone(),
            paginate: args.paginate,
        })
        .collect();
    let mut reports = closed_loop(workers, args.total, args.rate, &["range"]).await?;
    out.report("", reports.remove(0), "");
    Ok(())
}

#[derive(clap::Args)]
pub struct TxnPutArgs {
    /// Key size of txn put
    #[arg(long, default_value_t = 8)]
    key_size: usize,
    /// Value size of txn put
    #[arg(long, default_value_t = 8)]
    val_size: usize,
    /// Number of puts per txn
    #[arg(long, default_value_t = 1)]
    txn_ops: i64,
    /// Maximum txns per second (0 is no limit)
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Total number of txn requests
    #[arg(long, default_value_t = 10000)]
    total: u64,
    /// Maximum possible keys
    #[arg(long, default_value_t = 1)]
    key_space_size: i64,
}

struct TxnPutWorker {
    client: Client,
    kv: KvClient<H2Channel>,
    key: Vec<u8>,
    value: Bytes,
    txn_ops: i64,
    key_space_size: i64,
}

impl Worker for TxnPutWorker {
    async fn call(&mut self, op_number: u64) -> (usize, Result<(), String>) {
        // Keys of txn i are (i * txn_ops + j) mod key space, as in etcd's txn_put.go.
        let mut success = Vec::with_capacity(self.txn_ops as usize);
        for j in 0..self.txn_ops {
            let key_number = ((op_number as i64) * self.txn_ops + j) % self.key_space_size;
            if let Err(e) = put_varint(&mut self.key, key_number) {
                return (0, Err(e));
            }
            success.push(RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: Bytes::copy_from_slice(&self.key),
                    value: self.value.clone(),
                    ..Default::default()
                })),
            });
        }
        let request = self.client.request(TxnRequest {
            compare: vec![],
            success,
            failure: vec![],
        });
        (
            0,
            self.kv
                .txn(request)
                .await
                .map(drop)
                .map_err(|s| status_text(&s)),
        )
    }
}

pub async fn txn_put(args: TxnPutArgs, global: &Global, out: &mut Output) -> Result<(), BoxError> {
    check_key_space(args.key_space_size)?;
    if args.txn_ops > args.key_space_size {
        return Err(format!(
            "expected --txn-ops no larger than --key-space-size, got txn-ops({}) key-space-size({})",
            args.txn_ops, args.key_space_size
        )
        .into());
    }
    put_varint(&mut vec![0u8; args.key_size], args.key_space_size - 1)?;
    let clients = create_clients(global, global.clients, global.conns).await?;
    let value = Bytes::from(random_bytes(args.val_size));
    let workers: Vec<TxnPutWorker> = clients
        .iter()
        .map(|c| TxnPutWorker {
            client: c.clone(),
            kv: c.kv(),
            key: vec![0; args.key_size],
            value: value.clone(),
            txn_ops: args.txn_ops.max(1),
            key_space_size: args.key_space_size,
        })
        .collect();
    let mut reports = closed_loop(workers, args.total, args.rate, &["txn-put"]).await?;
    out.report("", reports.remove(0), "\n");
    Ok(())
}

#[derive(clap::Args)]
pub struct TxnMixedArgs {
    /// Accepted for etcd compatibility (etcd's txn-mixed ignores it too)
    #[arg(id = "mixed_key", value_name = "KEY")]
    key: Option<String>,
    /// Accepted for etcd compatibility (etcd's txn-mixed ignores it too)
    #[arg(id = "mixed_end", value_name = "END")]
    end: Option<String>,
    /// Key size of mixed txn
    #[arg(long, default_value_t = 8)]
    key_size: usize,
    /// Value size of mixed txn
    #[arg(long, default_value_t = 8)]
    val_size: usize,
    /// Maximum txns per second (0 is no limit)
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Total number of txn requests
    #[arg(long, default_value_t = 10000)]
    total: u64,
    /// Read operation range end key (overridden by the prefix read, as in etcd's tool)
    #[arg(long, default_value = "")]
    end_key: String,
    /// Read operation range result limit
    #[arg(long, default_value_t = 1000)]
    limit: i64,
    /// Maximum possible keys
    #[arg(long, default_value_t = 1)]
    key_space_size: i64,
    /// Linearizable(l) or Serializable(s)
    #[arg(long, default_value = "l")]
    consistency: String,
    /// Read/write ops ratio
    #[arg(long, default_value_t = 1.0)]
    rw_ratio: f64,
}

struct TxnMixedWorker {
    client: Client,
    kv: KvClient<H2Channel>,
    key: Vec<u8>,
    value: Bytes,
    read: RangeRequest,
    read_probability: f64,
    key_space_size: i64,
    rng: rand::rngs::SmallRng,
}

const MIXED_READ: usize = 0;
const MIXED_WRITE: usize = 1;

impl Worker for TxnMixedWorker {
    async fn call(&mut self, op_number: u64) -> (usize, Result<(), String>) {
        let (kind, op) = if self.rng.random::<f64>() < self.read_probability {
            (
                MIXED_READ,
                request_op::Request::RequestRange(self.read.clone()),
            )
        } else {
            let key_number = (op_number % self.key_space_size as u64) as i64;
            if let Err(e) = put_varint(&mut self.key, key_number) {
                return (MIXED_WRITE, Err(e));
            }
            let put = PutRequest {
                key: Bytes::copy_from_slice(&self.key),
                value: self.value.clone(),
                ..Default::default()
            };
            (MIXED_WRITE, request_op::Request::RequestPut(put))
        };
        let request = self.client.request(TxnRequest {
            compare: vec![],
            success: vec![RequestOp { request: Some(op) }],
            failure: vec![],
        });
        (
            kind,
            self.kv
                .txn(request)
                .await
                .map(drop)
                .map_err(|s| status_text(&s)),
        )
    }
}

pub async fn txn_mixed(
    args: TxnMixedArgs,
    global: &Global,
    out: &mut Output,
) -> Result<(), BoxError> {
    check_key_space(args.key_space_size)?;
    let (note, serializable) = consistency_note(&args.consistency)?;
    out.note(note);
    put_varint(&mut vec![0u8; args.key_size], args.key_space_size - 1)?;
    let _ = (&args.key, &args.end, &args.end_key);
    // clientv3's OpGet("", WithRange(end), WithPrefix(), WithLimit(n)): WithPrefix comes
    // last and turns the empty key into ["\0", "\0"), i.e. every key, limited.
    let read = RangeRequest {
        key: Bytes::from_static(b"\0"),
        range_end: Bytes::from_static(b"\0"),
        limit: args.limit,
        serializable,
        ..Default::default()
    };
    let clients = create_clients(global, global.clients, global.conns).await?;
    let value = Bytes::from(random_bytes(args.val_size));
    let workers: Vec<TxnMixedWorker> = clients
        .iter()
        .map(|c| TxnMixedWorker {
            client: c.clone(),
            kv: c.kv(),
            key: vec![0; args.key_size],
            value: value.clone(),
            read: read.clone(),
            read_probability: args.rw_ratio / (1.0 + args.rw_ratio),
            key_space_size: args.key_space_size,
            rng: rand::SeedableRng::from_os_rng(),
        })
        .collect();
    let mut reports = closed_loop(
        workers,
        args.total,
        args.rate,
        &["txn-mixed-read", "txn-mixed-write"],
    )
    .await?;
    let write = reports.remove(1);
    let read = reports.remove(0);
    let reads = read.rec.count() + read.rec.errors_total();
    let writes = write.rec.count() + write.rec.errors_total();
    out.report(&format!("Total Read Ops: {reads}\nDetails:"), read, "\n");
    out.report(&format!("Total Write Ops: {writes}\nDetails:"), write, "\n");
    Ok(())
}
