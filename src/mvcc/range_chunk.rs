//! Ranges read in bounded pieces: the state core answers a huge range one chunk at a
//! time, so that other requests run between its chunks and no chunk holds more than a
//! bounded number of bytes (`KV.RangeStream`, and unary Ranges too large for one piece;
//! see `crate::service::kv_range`).
//!
//! A chunk is already wire bytes: each key-value as `RangeResponse.kvs` (field 2) encodes
//! it, copied from the backend value, which *is* the encoded `mvccpb.KeyValue` (etcd
//! stores it so, and tern writes it with prost's canonical encoding). Nothing is decoded
//! or re-encoded, except with `keys_only`, which must drop the value.
//!
//! Invariants: every chunk of one range reads the same revision (the caller pins it after
//! the first), so chunks never overlap and, concatenated, are exactly the kvs of one read
//! at that revision; a revision compacted away between two chunks fails the later one
//! with `Compacted`, as etcd's RangeStream does.

use bytes::Bytes;
use prost::Message;

use super::backend::{Backend, Bucket};
use super::key_index::KeyRange;
use super::store::{corrupt, KvStore};
use crate::error::EtcdError;
use crate::proto::mvccpb::KeyValue;

/// `RangeResponse.kvs`: field 2, wire type 2 (length-delimited).
const KVS_FIELD_TAG: u8 = 0x12;

/// What one chunk may hold.
#[derive(Clone, Copy, Debug)]
pub struct ChunkOptions {
    /// Read at this revision; 0 or less means the current one.
    pub revision: i64,
    /// At most this many key-values.
    pub keys_max: usize,
    /// Stop once this many encoded bytes are in the chunk (a chunk always takes at least
    /// one key-value, however large).
    pub bytes_max: usize,
    pub keys_only: bool,
    /// Measure only: count the chunk's encoded bytes and keys but copy nothing (the unary
    /// Range's first pass over an answer too big to hold, see `service::kv_range`).
    pub sizes_only: bool,
}

/// One chunk of a range.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Chunk {
    /// The store revision when the chunk was read (the response header's revision).
    pub revision: i64,
    /// The key-values as `RangeResponse.kvs` entries (empty with `sizes_only`).
    pub encoded: Bytes,
    /// Length of those entries (also with `sizes_only`).
    pub encoded_bytes: usize,
    pub keys: usize,
    /// The first key of the range not in this chunk; None when the range is exhausted.
    pub next_key: Option<Bytes>,
}

/// Appends one `kvs` entry for `kv` (the encoded KeyValue) to `out`; returns its length.
fn push_entry(out: Option<&mut Vec<u8>>, kv: &[u8]) -> usize {
    let len = kv.len() as u64;
    let entry_len = 1 + prost::encoding::encoded_len_varint(len) + kv.len();
    if let Some(out) = out {
        out.push(KVS_FIELD_TAG);
        prost::encoding::encode_varint(len, out);
        out.extend_from_slice(kv);
    }
    entry_len
}

impl<B: Backend> KvStore<B> {
    /// Reads the next chunk of `range` (which starts at the caller's cursor).
    pub fn range_chunk(
        &self,
        range: KeyRange<'_>,
        options: ChunkOptions,
    ) -> Result<Chunk, EtcdError> {
        let head = self.current_revision();
        if options.revision > head {
            return Err(EtcdError::FutureRev);
        }
        let at = if options.revision <= 0 {
            head
        } else {
            options.revision
        };
        if at < self.compact_revision() {
            return Err(EtcdError::Compacted);
        }
        let mut out = Vec::new();
        let mut chunk = Chunk {
            revision: head,
            ..Chunk::default()
        };
        let mut failure = None;
        let backend = self.backend();
        self.key_index().revisions(range, at, |key, rev| {
            if chunk.keys == options.keys_max.max(1)
                || (chunk.keys > 0 && chunk.encoded_bytes >= options.bytes_max)
            {
                chunk.next_key = Some(key.clone());
                return false;
            }
            let value = match backend.get(Bucket::Key, &rev.to_key()) {
                Ok(Some(value)) => value,
                Ok(None) => {
                    failure = Some(EtcdError::Corrupt);
                    return false;
                }
                Err(e) => {
                    failure = Some(corrupt(e));
                    return false;
                }
            };
            let sink = (!options.sizes_only).then_some(&mut out);
            chunk.encoded_bytes += if options.keys_only {
                match KeyValue::decode(value) {
                    Ok(mut kv) => {
                        kv.value = Bytes::new();
                        push_entry(sink, &kv.encode_to_vec())
                    }
                    Err(e) => {
                        failure = Some(corrupt(e));
                        return false;
                    }
                }
            } else {
                push_entry(sink, value)
            };
            chunk.keys += 1;
            true
        });
        if let Some(e) = failure {
            return Err(e);
        }
        chunk.encoded = out.into();
        Ok(chunk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::{MemBackend, RangeOptions};
    use crate::proto::etcdserverpb::RangeResponse;

    fn store_with(n: usize) -> KvStore<MemBackend> {
        let mut store = KvStore::open(MemBackend::default()).unwrap();
        for i in 0..n {
            let mut txn = store.write();
            txn.put(
                Bytes::from(format!("k{i:04}")),
                Bytes::from(vec![b'v'; i]),
                0,
            )
            .unwrap();
        }
        store
    }

    fn options(bytes_max: usize) -> ChunkOptions {
        ChunkOptions {
            revision: 0,
            keys_max: usize::MAX,
            bytes_max,
            keys_only: false,
            sizes_only: false,
        }
    }

    /// Chunks, concatenated, decode to exactly the kvs of one unchunked read.
    #[test]
    fn chunks_concatenate_to_the_whole_range() {
        let store = store_with(50);
        let whole = store
            .range_keys(
                KeyRange::from_request(b"k", b"l"),
                RangeOptions {
                    limit: 0,
                    revision: 0,
                    count_only: false,
                },
            )
            .unwrap();
        for keys_only in [false, true] {
            let mut cursor = Bytes::from_static(b"k");
            let mut all = Vec::new();
            let mut chunks = 0;
            loop {
                let mut o = options(200);
                o.keys_only = keys_only;
                let chunk = store
                    .range_chunk(KeyRange::from_request(&cursor, b"l"), o)
                    .unwrap();
                let mut sized = o;
                sized.sizes_only = true;
                let measured = store
                    .range_chunk(KeyRange::from_request(&cursor, b"l"), sized)
                    .unwrap();
                assert_eq!(measured.encoded_bytes, chunk.encoded.len());
                assert_eq!(measured.next_key, chunk.next_key);
                assert!(chunk.keys == 1 || chunk.encoded_bytes < 200 + 60);
                all.extend_from_slice(&chunk.encoded);
                chunks += 1;
                match chunk.next_key {
                    Some(next) => cursor = next,
                    None => break,
                }
            }
            assert!(chunks > 3, "{chunks} chunks");
            let merged = RangeResponse::decode(&all[..]).unwrap();
            let mut expected = whole.kvs.clone();
            if keys_only {
                expected.iter_mut().for_each(|kv| kv.value = Bytes::new());
            }
            assert_eq!(merged.kvs, expected);
        }
    }

    #[test]
    fn keys_max_and_pinned_revision() {
        let mut store = store_with(10);
        let rev = store.current_revision();
        store
            .write()
            .put(Bytes::from_static(b"k0000"), Bytes::from_static(b"new"), 0)
            .unwrap();
        let mut o = options(usize::MAX);
        o.keys_max = 3;
        o.revision = rev;
        let chunk = store
            .range_chunk(KeyRange::from_request(b"k", b"l"), o)
            .unwrap();
        assert_eq!(chunk.keys, 3);
        assert_eq!(chunk.next_key.as_deref(), Some(&b"k0003"[..]));
        let first = RangeResponse::decode(&chunk.encoded[..]).unwrap();
        assert_eq!(&first.kvs[0].value[..], b"");
        store.compact_to(rev + 1).unwrap();
        assert_eq!(
            store.range_chunk(KeyRange::from_request(b"k", b"l"), o),
            Err(EtcdError::Compacted)
        );
    }
}
