//! KV.Range answers too big for one piece, and KV.RangeStream (etcd 3.7), read chunk by
//! chunk on the state core (`crate::mvcc::range_chunk`) and sent as they are read.
//!
//! Why: a range over the whole key space used to be one state-core step whose answer was
//! held whole per connection (as key-values, then encoded): four parallel 200 MB ranges
//! kept every other request waiting on the state core for seconds, and a range over
//! 1 GiB of values needed GiBs of memory. Now:
//! - Each chunk is one state-core command of at most [`CHUNK_BYTES_MAX`], so other
//!   requests run between chunks. Chunks after the first read, serializably, the
//!   revision the first one read (pinned): together they are one read at that revision.
//! - RangeStream sends every chunk as its own message, as etcd 3.7 does (header, `more`
//!   and `count` only on the last); the next chunk is read only once the stream's send
//!   queue is under its bound, so a client that stops reading stops the reads and holds
//!   no more than that bound.
//! - A unary Range is one message whose length comes first. Up to
//!   [`UNARY_HELD_BYTES_MAX`] of chunks are held and sent as one message; beyond that the
//!   rest is measured first (a pass that copies nothing), the length sent, and the rest
//!   read again chunk by chunk and sent as it is read. Memory stays bounded whatever the
//!   answer's size, at the price of reading the part beyond the bound twice. Above gRPC's
//!   send limit (2 GiB) the call gets grpc-go's RESOURCE_EXHAUSTED, as etcd's does.
//!
//! Deviation: etcd reads a unary Range in one go; here a compaction past the pinned
//! revision between two chunks of a large unary Range fails it with ErrCompacted, as it
//! fails a RangeStream. If the length already went out, the status follows a truncated
//! message (clients report the status).
//!
//! Memory: before reading a chunk, a call reserves room for it against its connection's
//! cap on queued answers (`http2::limits::CONNECTION_SEND_QUEUE_BYTES_MAX`), and what it
//! holds stays reserved until queued; so however many requests a client sends, the
//! answers its connection holds, assembled or queued, stay under that cap (plus one
//! key-value per call when a single one is larger than a chunk).
//!
//! Which unary Ranges are chunked: key order (the default), no revision filters, not
//! count-only, over a key range. Sorted and filtered ranges need every match at once and
//! stay one state-core read (`apply::kv`), as do single keys and counts.

use bytes::Bytes;
use prost::Message;

use crate::error::EtcdError;
use crate::grpc::{Call, Code, ResponseSink, Status};
use crate::mvcc::range_chunk::{Chunk, ChunkOptions};
use crate::proto::etcdserverpb as pb;
use crate::service::call::{read_request, status_from_error};
use crate::service::{validate, ServiceContext};
use crate::state::RangeChunkRequest;

/// Encoded key-values per chunk, one state-core command: small enough that requests
/// queued behind a chunk wait for about a millisecond, large enough that the per-command
/// cost is noise. etcd's RangeStream aims its chunks at --max-request-bytes (1.5 MiB).
pub const CHUNK_BYTES_MAX: usize = 1 << 20;

/// How much of a unary Range answer is held before it is sent in two passes instead.
pub const UNARY_HELD_BYTES_MAX: usize = 8 << 20;

/// `RangeStreamResponse.range_response`: field 1, length-delimited.
const RANGE_RESPONSE_FIELD_TAG: u8 = 0x0a;

/// Why a chunked answer stopped.
enum Failure {
    /// The range failed (compacted, permission, …): the call ends with its status.
    Etcd(EtcdError),
    Status(Status),
    /// The sink failed: the stream is gone, or the sink ended the call itself.
    Sink,
}

impl From<EtcdError> for Failure {
    fn from(e: EtcdError) -> Self {
        Failure::Etcd(e)
    }
}

/// A position in a range being read chunk by chunk.
#[derive(Clone)]
struct Walk<'a> {
    context: &'a ServiceContext,
    req: &'a pb::RangeRequest,
    /// Where the next chunk starts; None once the range is exhausted.
    cursor: Option<Bytes>,
    /// The revision every chunk reads: the request's, or pinned by the first chunk.
    revision: i64,
    /// The first chunk's header (None before it): the answer's.
    header: Option<pb::ResponseHeader>,
    /// Key-values the request's limit still allows.
    keys_left: usize,
    /// Key-values read so far.
    keys_read: usize,
}

impl<'a> Walk<'a> {
    fn new(context: &'a ServiceContext, req: &'a pb::RangeRequest) -> Walk<'a> {
        Walk {
            context,
            req,
            cursor: Some(req.key.clone()),
            revision: req.revision,
            header: None,
            keys_left: if req.limit > 0 {
                usize::try_from(req.limit).unwrap_or(usize::MAX)
            } else {
                usize::MAX
            },
            keys_read: 0,
        }
    }

    fn done(&self) -> bool {
        self.cursor.is_none() || self.keys_left == 0
    }

    /// Reads the next chunk (only while not `done`).
    async fn next(&mut self, sizes_only: bool) -> Result<Chunk, EtcdError> {
        let cursor = self.cursor.clone().expect("walk not done");
        let first = self.header.is_none();
        let range = pb::RangeRequest {
            key: cursor,
            range_end: self.req.range_end.clone(),
            revision: self.revision,
            // The first chunk is as linearizable as the request; later ones read the
            // pinned revision, which this member has applied.
            serializable: self.req.serializable || !first,
            keys_only: self.req.keys_only,
            ..pb::RangeRequest::default()
        };
        let options = ChunkOptions {
            revision: self.revision,
            keys_max: self.keys_left,
            bytes_max: CHUNK_BYTES_MAX,
            keys_only: self.req.keys_only,
            sizes_only,
        };
        let reply = self
            .context
            .state
            .range_chunk(RangeChunkRequest { range, options })
            .await?;
        if first {
            self.header = Some(reply.header);
            if self.revision <= 0 {
                self.revision = reply.chunk.revision;
            }
        }
        self.keys_left -= reply.chunk.keys;
        self.keys_read += reply.chunk.keys;
        self.cursor = reply.chunk.next_key.clone();
        Ok(reply.chunk)
    }

    /// The answer's `header`, `more` and `count`, once done, encoded as the fields of a
    /// RangeResponse: `more` when keys remain past the limit, and `count` adds them (one
    /// count-only read of the rest, as etcd's RangeStream does).
    async fn ending(&self) -> Result<(Vec<u8>, Vec<u8>), EtcdError> {
        let (more, count) = match &self.cursor {
            None => (false, self.keys_read as i64),
            Some(next) => {
                let rest = self
                    .context
                    .state
                    .range(pb::RangeRequest {
                        key: next.clone(),
                        range_end: self.req.range_end.clone(),
                        revision: self.revision,
                        serializable: true,
                        count_only: true,
                        ..pb::RangeRequest::default()
                    })
                    .await?;
                (true, self.keys_read as i64 + rest.count)
            }
        };
        let header = pb::RangeResponse {
            header: self.header,
            ..pb::RangeResponse::default()
        };
        let tail = pb::RangeResponse {
            more,
            count,
            ..pb::RangeResponse::default()
        };
        Ok((header.encode_to_vec(), tail.encode_to_vec()))
    }
}

/// Whether a unary Range is read in chunks (see the module doc).
fn chunked(req: &pb::RangeRequest) -> bool {
    !req.count_only && !req.range_end.is_empty() && default_order(req) && !revision_filters(req)
}

/// Key order, ascending: what the key index yields (etcd's `IsDefaultOrdering`).
fn default_order(req: &pb::RangeRequest) -> bool {
    use pb::range_request::{SortOrder, SortTarget};
    req.sort_order == SortOrder::None as i32
        || (req.sort_target == SortTarget::Key as i32 && req.sort_order == SortOrder::Ascend as i32)
}

fn revision_filters(req: &pb::RangeRequest) -> bool {
    req.min_mod_revision != 0
        || req.max_mod_revision != 0
        || req.min_create_revision != 0
        || req.max_create_revision != 0
}

fn finish(sink: ResponseSink, result: Result<(), Failure>) {
    match result {
        Ok(()) => sink.finish(Status::new(Code::Ok, String::new())),
        Err(Failure::Etcd(e)) => sink.finish(status_from_error(e)),
        Err(Failure::Status(status)) => sink.finish(status),
        // The stream is gone, or the sink already ended the call.
        Err(Failure::Sink) => {}
    }
}

async fn send(sink: &mut ResponseSink, piece: Bytes) -> Result<(), Failure> {
    sink.send_piece(piece).await.map_err(|_| Failure::Sink)
}

/// Reads the next chunk with room for it reserved against the connection's cap first
/// (on top of the `held` bytes already reserved); the reservation is then what the call
/// holds: `held` plus the chunk.
async fn read_reserved(
    walk: &mut Walk<'_>,
    sink: &mut ResponseSink,
    held: usize,
) -> Result<Chunk, Failure> {
    sink.reserve(CHUNK_BYTES_MAX)
        .await
        .map_err(|_| Failure::Sink)?;
    let chunk = walk.next(false).await?;
    sink.set_reserved(held + chunk.encoded_bytes);
    Ok(chunk)
}

/// Reads and validates the one RangeRequest of a call; on a bad request the call is
/// finished with etcd's error and None is returned.
async fn read_range_request(call: Call) -> Option<(pb::RangeRequest, ResponseSink)> {
    let Call {
        mut requests,
        responses,
        ..
    } = call;
    let req = match read_request::<pb::RangeRequest>(&mut requests, |_| Ok(())).await {
        Ok((req, _)) => req,
        Err(status) => {
            responses.finish(status);
            return None;
        }
    };
    if let Err(e) = validate::check_range(&req) {
        responses.finish(status_from_error(e));
        return None;
    }
    Some((req, responses))
}

/// KV.Range.
pub async fn serve_range(context: &ServiceContext, call: Call) {
    let Some((req, mut responses)) = read_range_request(call).await else {
        return;
    };
    if !chunked(&req) {
        return match context.state.range(req).await {
            Ok(reply) => {
                if responses.send(reply.encode_to_vec().into()).await.is_ok() {
                    responses.finish(Status::new(Code::Ok, String::new()));
                }
            }
            Err(e) => responses.finish(status_from_error(e)),
        };
    }
    let result = range_unary(context, &req, &mut responses).await;
    finish(responses, result);
}

async fn range_unary(
    context: &ServiceContext,
    req: &pb::RangeRequest,
    sink: &mut ResponseSink,
) -> Result<(), Failure> {
    let mut walk = Walk::new(context, req);
    let mut held = Vec::new();
    let mut held_bytes = 0;
    while !walk.done() && held_bytes < UNARY_HELD_BYTES_MAX {
        let chunk = read_reserved(&mut walk, sink, held_bytes).await?;
        held_bytes += chunk.encoded_bytes;
        held.push(chunk.encoded);
    }
    // Too big to hold: measure the rest now, read it again while sending.
    let resume = (!walk.done()).then(|| walk.clone());
    let mut rest_bytes = 0;
    while !walk.done() {
        rest_bytes += walk.next(true).await?.encoded_bytes;
    }
    let (header, tail) = walk.ending().await?;
    let len = header.len() + held_bytes + rest_bytes + tail.len();
    sink.begin_message(len).await.map_err(|_| Failure::Sink)?;
    send(sink, header.into()).await?;
    for piece in held {
        held_bytes -= piece.len();
        send(sink, piece).await?;
        sink.set_reserved(held_bytes);
    }
    if let Some(mut walk) = resume {
        let mut sent = 0;
        while !walk.done() {
            let chunk = read_reserved(&mut walk, sink, 0).await?;
            sent += chunk.encoded_bytes;
            if sent > rest_bytes {
                break;
            }
            send(sink, chunk.encoded).await?;
            sink.set_reserved(0);
        }
        if sent != rest_bytes {
            // Cannot happen at a pinned revision; never send a message of the wrong length.
            return Err(Failure::Status(Status::new(
                Code::Internal,
                "range changed between its two passes",
            )));
        }
    }
    send(sink, tail.into()).await
}

/// KV.RangeStream (etcd 3.7): the range as a stream of RangeStreamResponse chunks.
pub async fn serve_range_stream(context: &ServiceContext, call: Call) {
    let Some((req, mut responses)) = read_range_request(call).await else {
        return;
    };
    // etcd's checkRangeStreamRequest, with its texts.
    if !default_order(&req) {
        return responses.finish(Status::new(
            Code::Unimplemented,
            "RangeStream does not support custom sort orders",
        ));
    }
    if revision_filters(&req) {
        return responses.finish(Status::new(
            Code::Unimplemented,
            "RangeStream does not support revision filters",
        ));
    }
    let result = if req.count_only {
        count_only(context, req, &mut responses).await
    } else {
        range_stream(context, &req, &mut responses).await
    };
    finish(responses, result);
}

/// A count-only RangeStream is one message with the header and the count.
async fn count_only(
    context: &ServiceContext,
    req: pb::RangeRequest,
    sink: &mut ResponseSink,
) -> Result<(), Failure> {
    let counted = context.state.range(req).await?;
    let reply = pb::RangeStreamResponse {
        range_response: Some(pb::RangeResponse {
            header: counted.header,
            count: counted.count,
            ..pb::RangeResponse::default()
        }),
    };
    sink.send(reply.encode_to_vec().into())
        .await
        .map_err(|_| Failure::Sink)
}

async fn range_stream(
    context: &ServiceContext,
    req: &pb::RangeRequest,
    sink: &mut ResponseSink,
) -> Result<(), Failure> {
    let mut walk = Walk::new(context, req);
    loop {
        let chunk = read_reserved(&mut walk, sink, 0).await?;
        let (header, tail) = if walk.done() {
            walk.ending().await?
        } else {
            (Vec::new(), Vec::new())
        };
        let inner = (header.len() + chunk.encoded_bytes + tail.len()) as u64;
        let mut head = vec![RANGE_RESPONSE_FIELD_TAG];
        prost::encoding::encode_varint(inner, &mut head);
        head.extend_from_slice(&header);
        let len = head.len() + chunk.encoded_bytes + tail.len();
        sink.begin_message(len).await.map_err(|_| Failure::Sink)?;
        send(sink, head.into()).await?;
        send(sink, chunk.encoded).await?;
        sink.set_reserved(0);
        if !tail.is_empty() {
            send(sink, tail.into()).await?;
        }
        if walk.done() {
            return Ok(());
        }
    }
}
