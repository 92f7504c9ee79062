//! A check on eraftpb bytes before prost decodes them (`crate::raft::codec`): prost, built
//! here with `no-recursion-limit`, skips an unknown *group* field (wire types 3 and 4) by
//! recursion without a limit, as protobuf 2 did (RUSTSEC-2024-0437), so a peer could
//! overflow the stack with nested groups. eraftpb (proto3) has no groups, so bytes holding
//! one are refused, in every message the decoder descends into. Unknown length-delimited
//! fields are skipped whole by the decoder, never parsed, so they need no look inside.

/// One eraftpb message type: the field numbers of its message-typed fields (the only ones
/// the parser descends into), with their types.
pub struct Schema {
    pub name: &'static str,
    submessages: &'static [(u64, &'static Schema)],
}

pub const CONF_STATE: Schema = Schema {
    name: "ConfState",
    submessages: &[],
};
pub const SNAPSHOT_METADATA: Schema = Schema {
    name: "SnapshotMetadata",
    submessages: &[(1, &CONF_STATE)],
};
pub const SNAPSHOT: Schema = Schema {
    name: "Snapshot",
    submessages: &[(2, &SNAPSHOT_METADATA)],
};
pub const ENTRY: Schema = Schema {
    name: "Entry",
    submessages: &[],
};
/// `eraftpb.Message`: entries (7) and snapshot (9).
pub const MESSAGE: Schema = Schema {
    name: "Message",
    submessages: &[(7, &ENTRY), (9, &SNAPSHOT)],
};
/// `eraftpb.ConfChange`, parsed from committed entries' data.
pub const CONF_CHANGE: Schema = Schema {
    name: "ConfChange",
    submessages: &[],
};
/// `eraftpb.ConfChangeSingle`, inside a `ConfChangeV2`.
pub const CONF_CHANGE_SINGLE: Schema = Schema {
    name: "ConfChangeSingle",
    submessages: &[],
};
/// `eraftpb.ConfChangeV2`: changes (2).
pub const CONF_CHANGE_V2: Schema = Schema {
    name: "ConfChangeV2",
    submessages: &[(2, &CONF_CHANGE_SINGLE)],
};
/// `eraftpb.HardState` (etcd's raftpb.HardState, read when migrating a data dir).
pub const HARD_STATE: Schema = Schema {
    name: "HardState",
    submessages: &[],
};

/// Err if `bytes`, read as `schema`, holds a group field anywhere the parser would look,
/// or is not protobuf wire format there. Recursion follows the schema, whose depth is
/// fixed (at most 4 levels), never the input.
pub fn check(bytes: &[u8], schema: &Schema) -> Result<(), String> {
    let mut at = 0usize;
    while at < bytes.len() {
        let key = read_varint(bytes, &mut at).ok_or("truncated field key")?;
        let (field, wire_type) = (key >> 3, key & 7);
        let len = match wire_type {
            0 => {
                read_varint(bytes, &mut at).ok_or("truncated varint")?;
                0
            }
            1 => 8,
            5 => 4,
            2 => usize::try_from(read_varint(bytes, &mut at).ok_or("truncated length")?)
                .map_err(|_| "length overflows")?,
            3 | 4 => return Err(format!("group field {field} in {}", schema.name)),
            other => return Err(format!("wire type {other} in {}", schema.name)),
        };
        let end = at
            .checked_add(len)
            .filter(|end| *end <= bytes.len())
            .ok_or_else(|| format!("field {field} runs past the end of {}", schema.name))?;
        if wire_type == 2 {
            if let Some((_, child)) = schema.submessages.iter().find(|(f, _)| *f == field) {
                check(&bytes[at..end], child)?;
            }
        }
        at = end;
    }
    Ok(())
}

fn read_varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *bytes.get(*at)?;
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
    use protobuf::Message as _;
    use raft::eraftpb::{Entry, Message, MessageType, Snapshot};

    #[test]
    fn real_messages_pass() {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgAppend);
        m.set_term(3);
        m.mut_entries().push(Entry {
            data: b"payload".to_vec().into(),
            ..Default::default()
        });
        let mut snap = Snapshot::default();
        snap.mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
        m.set_snapshot(snap);
        let bytes = m.write_to_bytes().unwrap();
        assert_eq!(check(&bytes, &MESSAGE), Ok(()));
    }

    #[test]
    fn nested_groups_are_refused_at_every_level() {
        // 100,000 nested start-group keys: what overflowed protobuf 2's stack.
        let groups = vec![0x0b_u8; 100_000]; // field 1, wire type 3
        assert!(check(&groups, &MESSAGE).is_err());
        // Inside an entry (Message.entries = 7, length-delimited).
        let in_entry = [0x3a, 2, 0x0b, 0x0c];
        assert!(check(&in_entry, &MESSAGE).unwrap_err().contains("Entry"));
        // Deep inside the snapshot's metadata's conf state.
        let conf_state = [0x0b_u8, 0x0c];
        let metadata = [&[0x0a, 2][..], &conf_state].concat();
        let snapshot = [&[0x12, 4][..], &metadata].concat();
        let message = [&[0x4a, 6][..], &snapshot].concat();
        assert!(check(&message, &MESSAGE).unwrap_err().contains("ConfState"));
        // An unknown length-delimited field is not looked into (the parser keeps it whole).
        let unknown = [&[0xfa, 0x01, 2][..], &[0x0b, 0x0c]].concat(); // field 31, type 2
        assert_eq!(check(&unknown, &MESSAGE), Ok(()));
    }
}
