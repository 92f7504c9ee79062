//! etcdserverpb.Maintenance: Status, Hash, HashKV, Alarm, Defragment, MoveLeader, Snapshot.
//!
//! MoveLeader is answered by the raft node. Downgrade is an etcd 3.5 cluster-version
//! operation with no meaning for a 3.4-API member: answered as etcd 3.4 answers it, as an
//! unknown method. Defragment, MoveLeader and Snapshot answers carry no header, as etcd's.
//!
//! Snapshot streams the state as etcd's bbolt database (`state::db_snapshot`,
//! `storage/docs/bbolt.md`) in 32 KiB blobs, each with the bytes still to come, then one
//! more message holding the SHA-256 of the database, as etcd does. The state core only
//! hands over a fixed view (cheap); a dedicated thread builds the file from it and feeds
//! this call through a queue of `SNAPSHOT_MESSAGES_QUEUED_MAX` messages, so a slow client
//! holds at most that much memory and a gone client stops the thread at its next message.
//!
//! With auth on, Defragment, Hash, HashKV, Snapshot, MoveLeader and raising or clearing an alarm
//! are for root-role users only (checked by the state core); their refusals come back as
//! etcd's `authMaintenanceServer` sends them: the auth package's text with code Unknown.

use std::sync::atomic::{AtomicUsize, Ordering};

use futures::{SinkExt as _, StreamExt as _};
use prost::Message as _;
use sha2::Digest as _;

use crate::error::EtcdError;
use crate::grpc::{Call, Code, Status};
use crate::proto::etcdserverpb as pb;
use crate::service::call::{status_from_error, unary};
use crate::service::{unknown_method, ServiceContext};
use crate::state::db_snapshot::SnapshotSource;

const SERVICE: &str = "etcdserverpb.Maintenance";

pub async fn serve(context: &ServiceContext, method: &str, call: Call) {
    match method {
        "Status" => {
            unary(call, |_: pb::StatusRequest, _| async move {
                context.state.status().await
            })
            .await
        }
        "HashKV" => {
            unary(call, |req: pb::HashKvRequest, _| async move {
                context
                    .state
                    .hash_kv(req)
                    .await
                    .map_err(EtcdError::unmapped_auth)
            })
            .await
        }
        "Hash" => {
            unary(call, |_: pb::HashRequest, _| async move {
                context.state.hash().await.map_err(EtcdError::unmapped_auth)
            })
            .await
        }
        "Alarm" => {
            unary(call, |req: pb::AlarmRequest, _| async move {
                context
                    .state
                    .alarm(req)
                    .await
                    .map_err(EtcdError::unmapped_auth)
            })
            .await
        }
        "Defragment" => {
            unary(call, |_: pb::DefragmentRequest, _| async move {
                context
                    .state
                    .defragment()
                    .await
                    .map_err(EtcdError::unmapped_auth)
            })
            .await
        }
        "MoveLeader" => {
            unary(call, |req: pb::MoveLeaderRequest, _| async move {
                context
                    .state
                    .move_leader(req)
                    .await
                    .map_err(EtcdError::unmapped_auth)
            })
            .await
        }
        "Snapshot" => snapshot(context, call).await,
        // etcd 3.4 has no Downgrade (3.5's changes the cluster version, which a 3.4-API
        // server has no lower step for): grpc-go's answer for a method it does not know.
        "Downgrade" => call.responses.finish(unknown_method(SERVICE, method)),
        _ => call.responses.finish(unknown_method(SERVICE, method)),
    }
}

/// Bytes of database per snapshot message (etcd's `snapshotSendBufferSize`).
pub const SNAPSHOT_BLOB_BYTES: usize = 32 * 1024;
/// Messages a snapshot thread may have queued for its call before it waits for the
/// client: bounds a slow client's memory to this many blobs.
pub const SNAPSHOT_MESSAGES_QUEUED_MAX: usize = 8;
/// Snapshots streamed at once by this process. Each holds a thread and pins a backend
/// commit (its pages cannot be reused until it ends); more are refused with etcd's "too
/// many requests".
pub const SNAPSHOTS_IN_FLIGHT_MAX: usize = 4;

static SNAPSHOTS_IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// What the snapshot thread tells the call.
enum SnapshotEvent {
    /// The database's size is known; blobs follow.
    Started {
        db_bytes: u64,
    },
    /// One encoded `SnapshotResponse`.
    Message(bytes::Bytes),
    Failed(String),
}

/// A slot in `SNAPSHOTS_IN_FLIGHT`, released on drop (on the snapshot thread).
struct InFlight;

impl InFlight {
    fn acquire() -> Option<InFlight> {
        SNAPSHOTS_IN_FLIGHT
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < SNAPSHOTS_IN_FLIGHT_MAX).then_some(n + 1)
            })
            .ok()
            .map(|_| InFlight)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        SNAPSHOTS_IN_FLIGHT.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn snapshot(context: &ServiceContext, call: Call) {
    let Call {
        mut requests,
        mut responses,
        ..
    } = call;
    match requests.next().await {
        Some(Ok(message)) => {
            if let Err(e) = crate::service::call::decode_request::<pb::SnapshotRequest>(message) {
                return responses.finish(Status::new(
                    Code::Internal,
                    format!("grpc: error unmarshalling request: {e}"),
                ));
            }
        }
        Some(Err(status)) => return responses.finish(status),
        None => {
            return responses.finish(Status::new(
                Code::Internal,
                "grpc: client streaming protocol violation: get <nil>, want <EOF>".to_string(),
            ))
        }
    }
    let Some(in_flight) = InFlight::acquire() else {
        return responses.finish(status_from_error(EtcdError::TooManyRequests));
    };
    let source = match context.state.snapshot().await {
        Ok(source) => source,
        Err(e) => return responses.finish(status_from_error(e.unmapped_auth())),
    };
    let (events, mut received) = futures::channel::mpsc::channel(SNAPSHOT_MESSAGES_QUEUED_MAX);
    let spawned = std::thread::Builder::new()
        .name("tern-snapshot".into())
        .spawn(move || {
            let _in_flight = in_flight;
            stream_snapshot(source, events)
        });
    if let Err(e) = spawned {
        return responses.finish(Status::new(
            Code::Unknown,
            format!("cannot start the snapshot thread: {e}"),
        ));
    }
    let started = std::time::Instant::now();
    let mut db_bytes = 0;
    while let Some(event) = received.next().await {
        match event {
            SnapshotEvent::Started { db_bytes: bytes } => {
                db_bytes = bytes;
                crate::info!(
                    "sending database snapshot to client",
                    "total-bytes" => bytes,
                    "size" => humanized_bytes(bytes)
                );
            }
            SnapshotEvent::Message(message) => {
                // A gone client ends the call; dropping `received` stops the thread.
                if responses.send(message).await.is_err() {
                    return;
                }
            }
            SnapshotEvent::Failed(e) => {
                crate::warn!("failed to send database snapshot", "error" => e.clone());
                return responses.finish(Status::new(Code::Unknown, e));
            }
        }
    }
    crate::info!(
        "successfully sent database snapshot to client",
        "total-bytes" => db_bytes,
        "size" => humanized_bytes(db_bytes),
        "took" => crate::log::format_duration(started.elapsed())
    );
    responses.finish(Status::ok());
}

/// Sends encoded `SnapshotResponse`s of `blob_bytes` database bytes each, hashing them.
struct BlobSink {
    events: futures::channel::mpsc::Sender<SnapshotEvent>,
    buffer: Vec<u8>,
    remaining_bytes: u64,
    sha256: sha2::Sha256,
}

impl BlobSink {
    /// Blocks until the call has room (this runs on the snapshot thread).
    fn send(&mut self, event: SnapshotEvent) -> std::io::Result<()> {
        futures::executor::block_on(self.events.send(event))
            .map_err(|_| std::io::Error::other("the snapshot's client went away"))
    }

    fn send_blob(&mut self) -> std::io::Result<()> {
        let blob = std::mem::take(&mut self.buffer);
        self.sha256.update(&blob);
        self.remaining_bytes -= blob.len() as u64;
        // etcd's snapshot messages carry no header.
        let message = pb::SnapshotResponse {
            header: None,
            remaining_bytes: self.remaining_bytes,
            blob: blob.into(),
        };
        self.send(SnapshotEvent::Message(message.encode_to_vec().into()))?;
        self.buffer = Vec::with_capacity(SNAPSHOT_BLOB_BYTES);
        Ok(())
    }
}

impl std::io::Write for BlobSink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let room = SNAPSHOT_BLOB_BYTES - self.buffer.len();
        let taken = bytes.len().min(room);
        if (taken as u64) > self.remaining_bytes - self.buffer.len() as u64 {
            return Err(std::io::Error::other(
                "the database outgrew its planned size",
            ));
        }
        self.buffer.extend_from_slice(&bytes[..taken]);
        if self.buffer.len() == SNAPSHOT_BLOB_BYTES {
            self.send_blob()?;
        }
        Ok(taken)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buffer.is_empty() {
            self.send_blob()?;
        }
        Ok(())
    }
}

/// A size as etcd logs it (go-humanize's `Bytes`: SI units, e.g. `20 kB`, `1.2 GB`).
fn humanized_bytes(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    if bytes < 10 {
        return format!("{bytes} B");
    }
    let exponent = ((bytes as f64).ln() / 1000f64.ln()).floor() as usize;
    let exponent = exponent.min(UNITS.len() - 1);
    let value = bytes as f64 / 1000f64.powi(exponent as i32);
    // go-humanize rounds to one decimal, and shows none from 10 up.
    let value = (value * 10.0 + 0.5).floor() / 10.0;
    if value < 10.0 {
        format!("{value:.1} {}", UNITS[exponent])
    } else {
        format!("{value:.0} {}", UNITS[exponent])
    }
}

type Failure = Box<dyn std::error::Error + Send + Sync>;

/// The snapshot thread: builds the database from `source` into blobs, then the hash.
fn stream_snapshot(source: SnapshotSource, events: futures::channel::mpsc::Sender<SnapshotEvent>) {
    let mut sink = None;
    let written = tern_storage::bbolt::write(
        |layout| {
            let mut blobs = BlobSink {
                events: events.clone(),
                buffer: Vec::with_capacity(SNAPSHOT_BLOB_BYTES),
                remaining_bytes: layout.file_bytes(),
                sha256: sha2::Sha256::new(),
            };
            blobs.send(SnapshotEvent::Started {
                db_bytes: layout.file_bytes(),
            })?;
            Ok::<_, Failure>(sink.insert(blobs))
        },
        |w| source.produce(w).map_err(Failure::from),
    );
    let mut events = events;
    let result = written.map_err(|e| e.to_string()).and_then(|_| {
        let blobs = sink
            .take()
            .ok_or("the snapshot wrote no database".to_string())?;
        if blobs.remaining_bytes != 0 {
            return Err(format!(
                "the database ended {} bytes short of its planned size",
                blobs.remaining_bytes
            ));
        }
        // etcd's last message: the SHA-256 of the database, no bytes remaining.
        let message = pb::SnapshotResponse {
            header: None,
            remaining_bytes: 0,
            blob: blobs.sha256.finalize().to_vec().into(),
        };
        futures::executor::block_on(
            events.send(SnapshotEvent::Message(message.encode_to_vec().into())),
        )
        .map_err(|_| "the snapshot's client went away".to_string())
    });
    if let Err(e) = result {
        let _ = futures::executor::block_on(events.send(SnapshotEvent::Failed(e)));
    }
}
