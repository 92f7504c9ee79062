//! Refuses protobuf *groups* (wire types 3 and 4) in a client's request before prost
//! decodes it. prost skips an unknown group by recursion, one stack frame per nesting
//! level, and tern builds prost with `no-recursion-limit` (for etcd's Txn depths,
//! `txn_depth`), so 100,000 nested start-group keys for an unknown field (100 KB, under
//! `--max-request-bytes`) overflowed a network thread's stack and aborted the server
//! (`a_request_of_nested_unknown_groups_is_refused_not_a_stack_overflow`).
//!
//! etcd's protos are proto3, which has no groups: no client sends one. etcd (gogoproto)
//! skips unknown groups iteratively and ignores them; tern answers INTERNAL "grpc: error
//! unmarshalling request", as for any other undecodable request (a deliberate deviation,
//! docs/http2-conformance.md).
//!
//! Invariants: the walk follows the message's schema (tern's own descriptors, written by
//! build.rs), so it looks into exactly the length-delimited fields prost decodes as
//! messages and never into bytes or strings (a value `{{{{` is fine); it is iterative,
//! holding one frame per nested message, never recursing on the input.

use std::sync::OnceLock;

use super::txn_depth::read_varint;
use prost_reflect::{DescriptorPool, Kind, MessageDescriptor};

/// tern's protobuf descriptors (written by build.rs).
static DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/file_descriptor_set.bin"));

fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(DESCRIPTOR_SET).expect("build.rs wrote a valid descriptor set")
    })
}

/// Err if `bytes`, read as the message `full_name` (e.g. `etcdserverpb.PutRequest`), holds
/// a group anywhere prost would descend, or is not protobuf wire format there.
pub fn refuse_groups(bytes: &[u8], full_name: &str) -> Result<(), String> {
    let Some(root) = pool().get_message_by_name(full_name) else {
        // Every caller names a generated type; a typo is a bug, not a client's fault.
        panic!("no message {full_name} in tern's descriptors");
    };
    refuse_groups_in(bytes, root)
}

fn refuse_groups_in(bytes: &[u8], root: MessageDescriptor) -> Result<(), String> {
    // (end of the message, its descriptor)
    let mut frames: Vec<(usize, MessageDescriptor)> = vec![(bytes.len(), root)];
    let mut at = 0usize;
    while let Some((end, message)) = frames.last() {
        if at == *end {
            frames.pop();
            continue;
        }
        let end = *end;
        let key = read_varint(bytes, &mut at, end).ok_or("truncated field key")?;
        let (field, wire_type) = (key >> 3, key & 7);
        let len = match wire_type {
            0 => {
                read_varint(bytes, &mut at, end).ok_or("truncated varint")?;
                0
            }
            1 => 8,
            5 => 4,
            2 => usize::try_from(read_varint(bytes, &mut at, end).ok_or("truncated length")?)
                .map_err(|_| "length overflows")?,
            3 | 4 => return Err(format!("group field {field} in {}", message.full_name())),
            other => return Err(format!("wire type {other} in {}", message.full_name())),
        };
        let field_end = at
            .checked_add(len)
            .filter(|e| *e <= end)
            .ok_or_else(|| format!("field {field} runs past the end of {}", message.full_name()))?;
        let child = match (wire_type, u32::try_from(field)) {
            (2, Ok(number)) => message.get_field(number).and_then(|f| match f.kind() {
                Kind::Message(child) => Some(child),
                _ => None,
            }),
            _ => None,
        };
        match child {
            Some(child) => frames.push((field_end, child)),
            None => at = field_end,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::etcdserverpb as pb;
    use prost::Message as _;

    #[test]
    fn real_requests_pass_and_values_are_not_looked_into() {
        let put = pb::PutRequest {
            key: b"{{{{".to_vec().into(),
            value: vec![0x7b; 1000].into(), // start-group keys, as a value: bytes, not a message
            ..Default::default()
        };
        assert_eq!(
            refuse_groups(&put.encode_to_vec(), "etcdserverpb.PutRequest"),
            Ok(())
        );
        let txn = pb::TxnRequest {
            success: vec![pb::RequestOp {
                request: Some(pb::request_op::Request::RequestPut(put)),
            }],
            ..Default::default()
        };
        assert_eq!(
            refuse_groups(&txn.encode_to_vec(), "etcdserverpb.TxnRequest"),
            Ok(())
        );
        assert_eq!(refuse_groups(&[], "etcdserverpb.RangeRequest"), Ok(()));
    }

    /// The request that aborted the server: 100,000 nested start-groups of unknown field 15.
    #[test]
    fn a_request_of_nested_unknown_groups_is_refused_not_a_stack_overflow() {
        let mut bytes = vec![0x0a, 1, b'a'];
        bytes.extend(std::iter::repeat_n(0x7b, 100_000));
        let err = refuse_groups(&bytes, "etcdserverpb.PutRequest").unwrap_err();
        assert!(err.contains("group field 15"), "{err}");
        // Without the check, prost's decode would recurse 100,000 deep; on a thread with a
        // small stack that is an abort, which this thread shows (a panic would not).
        let decoded = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || refuse_groups(&bytes, "etcdserverpb.PutRequest").is_err())
            .unwrap()
            .join()
            .unwrap();
        assert!(decoded);
    }

    #[test]
    fn groups_deep_inside_a_txn_are_refused() {
        // TxnRequest.success(2) { RequestOp.request_range(1) { field 15 start-group } }
        let range = [0x7b_u8, 0x7c];
        let op = [&[0x0a, range.len() as u8][..], &range].concat();
        let txn = [&[0x12, op.len() as u8][..], &op].concat();
        let err = refuse_groups(&txn, "etcdserverpb.TxnRequest").unwrap_err();
        assert!(err.contains("etcdserverpb.RangeRequest"), "{err}");
        // Truncated and overlong fields are errors, never a read past the end.
        assert!(refuse_groups(&[0x12, 5, 0x0a], "etcdserverpb.TxnRequest").is_err());
        assert!(refuse_groups(&[0x12, 3, 0x0a, 5, 0], "etcdserverpb.TxnRequest").is_err());
        assert!(refuse_groups(&[0x08], "etcdserverpb.RangeRequest").is_err());
    }
}
