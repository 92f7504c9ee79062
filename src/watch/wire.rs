//! Live watch responses, written straight into a stream's outgoing bytes as gRPC-framed
//! `WatchResponse` messages, from parts encoded once per revision.
//!
//! Why: one revision usually goes to many watchers (every watcher of a prefix, or many
//! watchers of one key across streams). Building a `WatchResponse` per watcher and
//! encoding it with prost re-encodes the same `Event`s and header each time, allocates
//! per response and copies again when gRPC frames it. Here each matched event is encoded
//! once per revision (with and without `prev_kv`), the header once, into a scratch buffer
//! reused from revision to revision, and a watcher's response is its gRPC prefix, the
//! header, its `watch_id` and the records of its events, copied to the stream's buffer:
//! no per-watcher allocation or protobuf encoding.
//!
//! Invariant: the bytes equal prost's encoding of the same `WatchResponse` (fields in
//! number order, defaults omitted, etcd's `rpc.proto`: header = 1, watch_id = 2,
//! events = 11; `mvccpb.Event`: type = 1, kv = 2, prev_kv = 3); the tests check it
//! against prost field by field.

use std::ops::Range;

use bytes::{BufMut, BytesMut};
use prost::Message;

use super::feed::RevisionEvents;
use crate::grpc::codec::{message_prefix, MESSAGE_PREFIX_LEN};
use crate::grpc::Status;
use crate::proto::mvccpb::Event;

// Protobuf keys (field number << 3 | wire type; 0 = varint, 2 = length-delimited), each
// one byte since every field number is below 16.
const HEADER_KEY: u8 = 1 << 3 | 2;
const WATCH_ID_KEY: u8 = 2 << 3;
const EVENTS_KEY: u8 = 11 << 3 | 2;
const EVENT_TYPE_KEY: u8 = 1 << 3;
const EVENT_KV_KEY: u8 = 2 << 3 | 2;
const EVENT_PREV_KV_KEY: u8 = 3 << 3 | 2;

fn varint_len(value: u64) -> usize {
    // 7 payload bits per byte; 0 still takes one byte.
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

fn put_varint(out: &mut impl BufMut, mut value: u64) {
    while value >= 0x80 {
        out.put_u8(value as u8 | 0x80);
        value >>= 7;
    }
    out.put_u8(value as u8);
}

/// Bytes of a length-delimited field holding `body_len` bytes (key, length, body).
fn field_len(body_len: usize) -> usize {
    1 + varint_len(body_len as u64) + body_len
}

fn put_message(out: &mut impl BufMut, key: u8, message: &impl Message) {
    out.put_u8(key);
    put_varint(out, message.encoded_len() as u64);
    message
        .encode(out)
        .expect("BytesMut grows to fit any message");
}

/// Buffers a [`RevisionWire`] fills; kept by the hub from one revision to the next so
/// that encoding a revision allocates nothing once they have grown.
#[derive(Default)]
pub struct WireScratch {
    /// Encoded parts back to back: the header field, then event records as needed.
    parts: Vec<u8>,
    header: Option<Range<usize>>,
    /// Per event: where its field-11 record without `prev_kv` ([0]) and with it ([1]) is.
    records: Vec<[Option<Range<usize>>; 2]>,
}

/// One revision's encoded parts, filled in as watchers need them.
pub struct RevisionWire<'a> {
    batch: &'a RevisionEvents,
    scratch: &'a mut WireScratch,
}

impl<'a> RevisionWire<'a> {
    pub fn new(batch: &'a RevisionEvents, scratch: &'a mut WireScratch) -> RevisionWire<'a> {
        scratch.parts.clear();
        scratch.header = None;
        scratch.records.clear();
        scratch.records.resize(batch.events.len(), [None, None]);
        RevisionWire { batch, scratch }
    }

    fn header(&mut self) -> Range<usize> {
        let WireScratch { parts, header, .. } = &mut *self.scratch;
        header
            .get_or_insert_with(|| {
                let start = parts.len();
                put_message(parts, HEADER_KEY, &self.batch.header);
                start..parts.len()
            })
            .clone()
    }

    /// Where the field-11 record of event `event_index` is, with `prev_kv` if
    /// `with_prev_kv` (and the event has one).
    fn record(&mut self, event_index: usize, with_prev_kv: bool) -> Range<usize> {
        let event = &self.batch.events[event_index];
        let variant = usize::from(with_prev_kv && event.prev_kv.is_some());
        let WireScratch { parts, records, .. } = &mut *self.scratch;
        records[event_index][variant]
            .get_or_insert_with(|| {
                let start = parts.len();
                put_event_record(parts, event, variant == 1);
                start..parts.len()
            })
            .clone()
    }

    /// Length of the `WatchResponse` of `watch_id` carrying the events at `event_indexes`
    /// (in that order).
    pub fn response_len(&mut self, watch_id: i64, event_indexes: &[usize], prev_kv: bool) -> usize {
        let mut len = self.header().len() + watch_id_len(watch_id);
        for &i in event_indexes {
            len += self.record(i, prev_kv).len();
        }
        len
    }

    /// Appends the gRPC-framed `WatchResponse` of `watch_id` carrying the events at
    /// `event_indexes` to `out`; returns the bytes appended, or (appending nothing) the
    /// status of a response too large for gRPC.
    pub fn append_response(
        &mut self,
        out: &mut BytesMut,
        watch_id: i64,
        event_indexes: &[usize],
        prev_kv: bool,
    ) -> Result<usize, Status> {
        let body_len = self.response_len(watch_id, event_indexes, prev_kv);
        let prefix = message_prefix(body_len)?;
        out.reserve(MESSAGE_PREFIX_LEN + body_len);
        out.put_slice(&prefix);
        let header = self.header();
        out.extend_from_slice(&self.scratch.parts[header]);
        if watch_id != 0 {
            out.put_u8(WATCH_ID_KEY);
            put_varint(out, watch_id as u64);
        }
        for &i in event_indexes {
            let record = self.record(i, prev_kv);
            out.extend_from_slice(&self.scratch.parts[record]);
        }
        Ok(MESSAGE_PREFIX_LEN + body_len)
    }
}

/// Bytes of field 2 (`int64 watch_id`; prost omits 0, and encodes a negative one as a
/// ten-byte varint of its two's complement).
fn watch_id_len(watch_id: i64) -> usize {
    if watch_id == 0 {
        0
    } else {
        1 + varint_len(watch_id as u64)
    }
}

/// Appends `event` as a `WatchResponse.events` record: key, length, then the `Event`
/// body (type unless PUT, kv, and prev_kv only if `with_prev_kv`).
fn put_event_record(out: &mut impl BufMut, event: &Event, with_prev_kv: bool) {
    // An enum is an int32: a negative one is sign-extended to ten bytes, as prost does.
    let event_type = event.r#type as i64 as u64;
    let type_len = if event.r#type != 0 {
        1 + varint_len(event_type)
    } else {
        0
    };
    let kv_len = event
        .kv
        .as_ref()
        .map_or(0, |kv| field_len(kv.encoded_len()));
    let prev_kv = event.prev_kv.as_ref().filter(|_| with_prev_kv);
    let prev_len = prev_kv.map_or(0, |prev| field_len(prev.encoded_len()));
    out.put_u8(EVENTS_KEY);
    put_varint(out, (type_len + kv_len + prev_len) as u64);
    if event.r#type != 0 {
        out.put_u8(EVENT_TYPE_KEY);
        put_varint(out, event_type);
    }
    if let Some(kv) = &event.kv {
        put_message(out, EVENT_KV_KEY, kv);
    }
    if let Some(prev) = prev_kv {
        put_message(out, EVENT_PREV_KV_KEY, prev);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::etcdserverpb as pb;
    use crate::proto::mvccpb::{event::EventType, KeyValue};
    use bytes::Bytes;

    fn kv(key: &str, value: &str, revision: i64) -> KeyValue {
        KeyValue {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::copy_from_slice(value.as_bytes()),
            create_revision: 2,
            mod_revision: revision,
            version: 3,
            lease: 0,
        }
    }

    fn batch() -> RevisionEvents {
        let revision = 300;
        RevisionEvents {
            revision,
            header: pb::ResponseHeader {
                cluster_id: 0xdead_beef_0bad_f00d,
                member_id: 42,
                revision,
                raft_term: 7,
            },
            events: vec![
                Event {
                    r#type: EventType::Put as i32,
                    kv: Some(kv("a", "1", revision)),
                    prev_kv: Some(kv("a", "0", revision - 1)),
                },
                Event {
                    r#type: EventType::Delete as i32,
                    kv: Some(KeyValue {
                        key: Bytes::from_static(b"b"),
                        mod_revision: revision,
                        ..Default::default()
                    }),
                    prev_kv: None,
                },
                Event {
                    r#type: EventType::Put as i32,
                    // A value big enough that lengths take two varint bytes.
                    kv: Some(kv("c", &"x".repeat(300), revision)),
                    prev_kv: None,
                },
            ],
        }
    }

    /// What prost makes of the same response, gRPC-framed.
    fn expected(
        batch: &RevisionEvents,
        watch_id: i64,
        indexes: &[usize],
        prev_kv: bool,
    ) -> Vec<u8> {
        let response = pb::WatchResponse {
            header: Some(batch.header),
            watch_id,
            events: indexes
                .iter()
                .map(|&i| {
                    let mut e = batch.events[i].clone();
                    if !prev_kv {
                        e.prev_kv = None;
                    }
                    e
                })
                .collect(),
            ..Default::default()
        };
        let body = response.encode_to_vec();
        let mut framed = vec![0];
        framed.extend_from_slice(&(body.len() as u32).to_be_bytes());
        framed.extend_from_slice(&body);
        framed
    }

    #[test]
    fn hand_built_responses_equal_prost_encoding() {
        let batch = batch();
        let mut scratch = WireScratch::default();
        let mut wire = RevisionWire::new(&batch, &mut scratch);
        let mut out = BytesMut::new();
        let cases: &[(i64, &[usize], bool)] = &[
            (0, &[0], false),
            (0, &[0], true),
            (1, &[0, 1, 2], true),
            (1, &[0, 1, 2], false),
            (-1, &[1], false),
            (i64::MAX, &[2], true),
            (i64::MIN, &[0, 2], true),
            (127, &[], false),
            (128, &[1, 2], false),
        ];
        for &(watch_id, indexes, prev_kv) in cases {
            out.clear();
            let n = wire
                .append_response(&mut out, watch_id, indexes, prev_kv)
                .unwrap();
            let want = expected(&batch, watch_id, indexes, prev_kv);
            assert_eq!(n, want.len(), "{watch_id} {indexes:?} {prev_kv}");
            assert_eq!(&out[..], &want[..], "{watch_id} {indexes:?} {prev_kv}");
            let decoded = pb::WatchResponse::decode(&out[MESSAGE_PREFIX_LEN..]).unwrap();
            assert_eq!(decoded.watch_id, watch_id);
            assert_eq!(decoded.events.len(), indexes.len());
        }
    }

    #[test]
    fn varint_lengths_match_prost() {
        let mut values = vec![0u64, 1, 127, 128, 16_383, 16_384, u64::MAX, i64::MIN as u64];
        values.extend((0..64).map(|bit| 1u64 << bit));
        for value in values {
            assert_eq!(
                varint_len(value),
                prost::encoding::encoded_len_varint(value)
            );
            let mut out = BytesMut::new();
            put_varint(&mut out, value);
            assert_eq!(out.len(), varint_len(value), "{value}");
        }
    }

    #[test]
    fn responses_append_back_to_back() {
        let batch = batch();
        let mut scratch = WireScratch::default();
        let mut wire = RevisionWire::new(&batch, &mut scratch);
        let mut out = BytesMut::new();
        wire.append_response(&mut out, 5, &[0], true).unwrap();
        wire.append_response(&mut out, 6, &[1, 2], false).unwrap();
        let mut want = expected(&batch, 5, &[0], true);
        want.extend(expected(&batch, 6, &[1, 2], false));
        assert_eq!(&out[..], &want[..]);
    }
}
