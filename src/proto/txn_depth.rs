//! How deeply an encoded `TxnRequest` nests (a `RequestOp` may carry a whole `TxnRequest`),
//! read from the wire format without decoding it, so that nesting is bounded before
//! anything recursive (prost's decoder, validation, apply, drop) runs on it.
//!
//! etcd decodes any depth and then refuses what its op budget does not allow (each level
//! spends `max(len(compare), len(success), len(failure))` of `--max-txn-ops` for the levels
//! below it), so with the default 128 it serves 129 levels at most. prost's own recursion
//! limit (100 messages, about 50 txn levels) would refuse sooner and with INTERNAL; the
//! crate is built with `no-recursion-limit` and every decode of a `TxnRequest` from
//! untrusted bytes is preceded by this check.

#![warn(clippy::all)]

/// Deepest txn nesting tern accepts, whatever `--max-txn-ops` says: every level costs
/// stack frames in decode, validation, apply, response encoding and drop, on executor
/// threads with a 2 MiB stack (a debug build overflowed a network thread at 1024 levels;
/// 256 leaves it a fourfold margin). Twice what etcd's default op budget allows (129).
pub const TXN_NESTING_MAX: usize = 256;

/// `TxnRequest` fields holding `RequestOp`s (success, failure).
const TXN_OP_FIELDS: [u64; 2] = [2, 3];
/// The `RequestOp` field holding a nested `TxnRequest` (request_txn).
const OP_TXN_FIELD: u64 = 4;

/// The txn nesting depth of `bytes`, an encoded `TxnRequest` (1: no nested txn), or any
/// value above `stop_above` as soon as the walk sees one (the walk holds at most
/// 2 × `stop_above` + 2 frames). None if the bytes are not protobuf along the paths
/// walked: prost's decode then reports the error in its words.
pub fn txn_nesting_depth(bytes: &[u8], stop_above: usize) -> Option<usize> {
    // (end of the message, whether it is a TxnRequest rather than a RequestOp)
    let mut frames: Vec<(usize, bool)> = vec![(bytes.len(), true)];
    let (mut txn_frames, mut deepest) = (1usize, 1usize);
    let mut at = 0usize;
    while let Some(&(end, is_txn)) = frames.last() {
        if at == end {
            frames.pop();
            if is_txn {
                txn_frames -= 1;
            }
            continue;
        }
        let key = read_varint(bytes, &mut at, end)?;
        let (field, wire_type) = (key >> 3, key & 7);
        let skip = match wire_type {
            0 => {
                read_varint(bytes, &mut at, end)?;
                0
            }
            1 => 8,
            5 => 4,
            2 => {
                let len = usize::try_from(read_varint(bytes, &mut at, end)?).ok()?;
                let sub_end = at.checked_add(len).filter(|e| *e <= end)?;
                let descend = if is_txn {
                    TXN_OP_FIELDS.contains(&field)
                } else {
                    field == OP_TXN_FIELD
                };
                if descend {
                    // A TxnRequest's ops are RequestOps; a RequestOp's field 4 is a txn.
                    let child_is_txn = !is_txn;
                    if child_is_txn {
                        txn_frames += 1;
                        deepest = deepest.max(txn_frames);
                        if deepest > stop_above {
                            return Some(deepest);
                        }
                    }
                    frames.push((sub_end, child_is_txn));
                    continue;
                }
                len
            }
            _ => return None,
        };
        at = at.checked_add(skip).filter(|e| *e <= end)?;
    }
    Some(deepest)
}

/// A protobuf varint at `*at`, read no further than `end` (None if it runs past `end` or
/// over 10 bytes); also the request checks in `groups.rs`.
pub(super) fn read_varint(bytes: &[u8], at: &mut usize, end: usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        if *at >= end {
            return None;
        }
        let b = bytes[*at];
        *at += 1;
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::etcdserverpb::{request_op, PutRequest, RequestOp, TxnRequest};
    use prost::Message;

    fn nested(depth: usize) -> TxnRequest {
        let put = RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: bytes::Bytes::from_static(b"k"),
                value: bytes::Bytes::from_static(b"v"),
                ..Default::default()
            })),
        };
        let mut txn = TxnRequest {
            success: vec![put.clone()],
            ..Default::default()
        };
        for level in 1..depth {
            let op = RequestOp {
                request: Some(request_op::Request::RequestTxn(txn)),
            };
            // Nested txns in either branch, beside plain ops.
            txn = if level % 2 == 0 {
                TxnRequest {
                    success: vec![put.clone(), op],
                    ..Default::default()
                }
            } else {
                TxnRequest {
                    failure: vec![op, put.clone()],
                    ..Default::default()
                }
            };
        }
        txn
    }

    #[test]
    fn depth_of_nested_txns() {
        for depth in [1, 2, 10, 49, 100] {
            let bytes = nested(depth).encode_to_vec();
            assert_eq!(txn_nesting_depth(&bytes, 1000), Some(depth), "{depth}");
        }
        // The walk stops early once past the bound.
        let bytes = nested(100).encode_to_vec();
        assert_eq!(txn_nesting_depth(&bytes, 10), Some(11));
        assert_eq!(txn_nesting_depth(&[], 10), Some(1));
    }

    #[test]
    fn malformed_bytes_are_left_to_prost() {
        let bytes = nested(5).encode_to_vec();
        assert_eq!(txn_nesting_depth(&bytes[..bytes.len() - 1], 100), None);
        assert_eq!(txn_nesting_depth(&[0x12, 0xff], 100), None);
        assert_eq!(txn_nesting_depth(&[0x13], 100), None);
    }
}
