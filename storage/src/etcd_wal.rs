//! A reader of etcd 3.4's write-ahead log (`member/wal/*.wal` of an etcd data dir), for
//! migrating an etcd member to tern. The format is specified in `storage/docs/etcd-wal.md`
//! (written from etcd's `wal/` sources; the code here is ours). Only reading is supported:
//! tern never writes etcd's WAL.
//!
//! What this module knows is the framing: segments, length fields, `walpb.Record`, the
//! chained CRC-32C, torn tails, and the two small record bodies that are not raft's
//! (metadata and snapshot markers). Entry and hard-state bodies are raft's protobuf
//! messages and are handed up as bytes (the caller decodes them with raft's types).
//!
//! Invariants, as etcd's `ReadAll` keeps them:
//! - every record but a CRC record must match the running CRC-32C of all record data
//!   before it; a CRC record restarts the chain from the value it carries;
//! - damage is an error, except for a torn last record in the last segment (a sector of
//!   it reads as zeros, or the file ends inside it), which ends the log there, as etcd's
//!   own repair at startup would cut it;
//! - an entry at a raft index the log already holds replaces it and everything after it
//!   (raft truncated a suffix); an entry beyond the next index is a gap, an error.
//!
//! Memory: the entries of the whole WAL are held (etcd keeps at most a few 64 MiB segments
//! after its purges); a record longer than its segment is refused before it is read.

use std::path::{Path, PathBuf};

/// etcd's record types (`wal/wal.go`).
pub const METADATA_TYPE: i64 = 1;
pub const ENTRY_TYPE: i64 = 2;
pub const STATE_TYPE: i64 = 3;
pub const CRC_TYPE: i64 = 4;
pub const SNAPSHOT_TYPE: i64 = 5;

/// The smallest sector etcd assumes when it decides whether a record is torn.
const SECTOR_BYTES: u64 = 512;

#[derive(Debug)]
pub enum Error {
    Io(String, std::io::Error),
    /// The WAL's bytes violate the format; the message says where.
    Corrupted(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Io(what, e) => write!(f, "{what}: {e}"),
            Error::Corrupted(what) => write!(f, "etcd WAL corrupted: {what}"),
        }
    }
}

/// One raft entry as etcd stored it: its index and term (read out of the raftpb.Entry
/// for ordering) and the whole raftpb.Entry bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub raft_index: u64,
    pub term: u64,
    pub raftpb_entry: Vec<u8>,
}

/// Everything an etcd WAL holds, in etcd's replay order.
#[derive(Debug, Default)]
pub struct Log {
    /// `etcdserverpb.Metadata`: NodeID and ClusterID.
    pub member_id: u64,
    pub cluster_id: u64,
    /// The last raftpb.HardState record's bytes, if any.
    pub hard_state: Option<Vec<u8>>,
    /// Every snapshot marker (index, term), in file order.
    pub snapshots: Vec<(u64, u64)>,
    /// The entries, consecutive by raft index.
    pub entries: Vec<Entry>,
    /// Where a torn last record was cut off, if one was.
    pub torn_at: Option<(PathBuf, u64)>,
}

/// Whether `dir` holds an etcd WAL: its first segment starts with etcd's framing of a CRC
/// record (a length field, then the protobuf key of `Record.type` = 4). tern's own WAL
/// starts with a CRC and a length, then a type byte and seven zero bytes
/// (`storage/docs/wal.md`), so the two never look alike at bytes 8 and 9.
pub fn is_etcd_wal(dir: &Path) -> bool {
    let Ok(names) = segment_names(dir) else {
        return false;
    };
    let Some(first) = names.first() else {
        return false;
    };
    let mut head = [0u8; 10];
    let Ok(mut file) = std::fs::File::open(dir.join(first)) else {
        return false;
    };
    use std::io::Read as _;
    file.read_exact(&mut head).is_ok() && head[8] == 0x08 && head[9] == CRC_TYPE as u8
}

/// The `%016x-%016x.wal` segment names in `dir`, sorted (the sequence number first).
fn segment_names(dir: &Path) -> Result<Vec<String>, Error> {
    let read =
        std::fs::read_dir(dir).map_err(|e| Error::Io(format!("read {}", dir.display()), e))?;
    let mut names = Vec::new();
    for item in read {
        let item = item.map_err(|e| Error::Io(format!("read {}", dir.display()), e))?;
        let name = item.file_name().to_string_lossy().into_owned();
        if parse_name(&name).is_some() {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// A segment name's sequence number and raft index.
fn parse_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(".wal")?;
    let (seq, index) = stem.split_once('-')?;
    if seq.len() != 16 || index.len() != 16 {
        return None;
    }
    Some((
        u64::from_str_radix(seq, 16).ok()?,
        u64::from_str_radix(index, 16).ok()?,
    ))
}

/// Reads the whole WAL in `dir` (see the module invariants).
pub fn read(dir: &Path) -> Result<Log, Error> {
    let names = segment_names(dir)?;
    if names.is_empty() {
        return Err(Error::Corrupted(format!("no segment in {}", dir.display())));
    }
    let mut log = Log::default();
    let mut metadata: Option<Vec<u8>> = None;
    let mut crc = 0u32;
    let mut previous_seq: Option<u64> = None;
    for (i, name) in names.iter().enumerate() {
        let (seq, _) = parse_name(name).expect("listed names parse");
        if previous_seq.is_some_and(|p| p + 1 != seq) {
            return Err(Error::Corrupted(format!(
                "segment before {name} is missing"
            )));
        }
        previous_seq = Some(seq);
        let path = dir.join(name);
        let bytes =
            std::fs::read(&path).map_err(|e| Error::Io(format!("read {}", path.display()), e))?;
        let last_segment = i + 1 == names.len();
        let mut at = 0usize;
        while at + 8 <= bytes.len() {
            let field = u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
            if field == 0 {
                break; // preallocated space: the segment ends here
            }
            let (record_bytes, pad_bytes) = frame_size(field);
            let start = at + 8;
            let end = start as u64 + record_bytes + pad_bytes;
            if end > bytes.len() as u64 {
                if last_segment {
                    log.torn_at = Some((path.clone(), at as u64));
                    break;
                }
                return Err(Error::Corrupted(format!(
                    "{name}: record at {at} runs past the end"
                )));
            }
            let frame = &bytes[start..end as usize];
            let record = &frame[..record_bytes as usize];
            let decoded = decode_record(record).and_then(|r| {
                if r.kind == CRC_TYPE {
                    return Ok(r);
                }
                let next = crc32c::crc32c_append(crc, &r.data);
                if r.crc != next {
                    return Err(format!(
                        "CRC mismatch (stored {:08x}, computed {next:08x})",
                        r.crc
                    ));
                }
                Ok(r)
            });
            let record = match decoded {
                Ok(r) => r,
                Err(e) => {
                    if last_segment && is_torn(frame, start as u64) {
                        log.torn_at = Some((path.clone(), at as u64));
                        break;
                    }
                    return Err(Error::Corrupted(format!("{name}: record at {at}: {e}")));
                }
            };
            at = end as usize;
            match record.kind {
                CRC_TYPE => {
                    // etcd checks a CRC record against the chain so far, except at the very
                    // start (the first kept segment carries the CRC of purged ones).
                    if crc != 0 && record.crc != crc {
                        return Err(Error::Corrupted(format!(
                            "{name}: CRC record {:08x} does not continue the chain {crc:08x}",
                            record.crc
                        )));
                    }
                    crc = record.crc;
                    continue;
                }
                METADATA_TYPE => {
                    if metadata.as_ref().is_some_and(|m| *m != record.data) {
                        return Err(Error::Corrupted(format!(
                            "{name}: metadata differs from the first segment's"
                        )));
                    }
                    metadata = Some(record.data.clone());
                }
                ENTRY_TYPE => push_entry(&mut log.entries, &record.data)
                    .map_err(|e| Error::Corrupted(format!("{name}: {e}")))?,
                STATE_TYPE => log.hard_state = Some(record.data.clone()),
                SNAPSHOT_TYPE => {
                    let fields = fields(&record.data)
                        .map_err(|e| Error::Corrupted(format!("{name}: snapshot record: {e}")))?;
                    log.snapshots
                        .push((varint_field(&fields, 1), varint_field(&fields, 2)));
                }
                other => {
                    return Err(Error::Corrupted(format!(
                        "{name}: unknown record type {other}"
                    )))
                }
            }
            // Verified above: the record's CRC is the chain through its data.
            crc = record.crc;
        }
    }
    let metadata = metadata.ok_or_else(|| Error::Corrupted("no metadata record".into()))?;
    let meta_fields = fields(&metadata).map_err(|e| Error::Corrupted(format!("metadata: {e}")))?;
    log.member_id = varint_field(&meta_fields, 1);
    log.cluster_id = varint_field(&meta_fields, 2);
    Ok(log)
}

/// etcd's length field: the record's size in the low 56 bits; if the top bit is set, the
/// padding (0..=7 bytes) in the low 3 bits of the top byte.
pub fn frame_size(field: u64) -> (u64, u64) {
    let record_bytes = field & !(0xff << 56);
    let pad_bytes = if field >> 63 == 1 {
        (field >> 56) & 0x7
    } else {
        0
    };
    (record_bytes, pad_bytes)
}

/// etcd's torn-write rule: the record is torn if any sector-aligned piece of it (its file
/// offset is `offset`) is all zeros.
fn is_torn(frame: &[u8], offset: u64) -> bool {
    let mut at = 0usize;
    let mut file_offset = offset;
    while at < frame.len() {
        let chunk = ((SECTOR_BYTES - file_offset % SECTOR_BYTES) as usize).min(frame.len() - at);
        if frame[at..at + chunk].iter().all(|b| *b == 0) {
            return true;
        }
        at += chunk;
        file_offset += chunk as u64;
    }
    false
}

struct Record {
    kind: i64,
    crc: u32,
    data: Vec<u8>,
}

/// `walpb.Record`: type (1, varint), crc (2, varint), data (3, bytes).
fn decode_record(bytes: &[u8]) -> Result<Record, String> {
    let fields = fields(bytes)?;
    let data = fields
        .iter()
        .find(|f| f.0 == 3)
        .and_then(|f| f.2.clone())
        .unwrap_or_default();
    Ok(Record {
        kind: varint_field(&fields, 1) as i64,
        crc: varint_field(&fields, 2) as u32,
        data,
    })
}

/// Appends the raftpb.Entry in `bytes`, replacing any suffix it overwrites.
fn push_entry(entries: &mut Vec<Entry>, bytes: &[u8]) -> Result<(), String> {
    let fields = fields(bytes).map_err(|e| format!("entry: {e}"))?;
    // raftpb.Entry: Term = 2, Index = 3.
    let entry = Entry {
        term: varint_field(&fields, 2),
        raft_index: varint_field(&fields, 3),
        raftpb_entry: bytes.to_vec(),
    };
    if let Some(first) = entries.first().map(|e| e.raft_index) {
        if entry.raft_index < first {
            entries.clear();
        } else {
            let keep = (entry.raft_index - first) as usize;
            if keep > entries.len() {
                return Err(format!(
                    "entry {} follows entry {}: entries are missing",
                    entry.raft_index,
                    entries.last().map_or(0, |e| e.raft_index)
                ));
            }
            entries.truncate(keep);
        }
    }
    entries.push(entry);
    Ok(())
}

/// A protobuf field: number, varint value (wire type 0), bytes (wire type 2).
type Field = (u64, u64, Option<Vec<u8>>);

/// Walks the top-level fields of a protobuf message (varint, 64-bit, bytes, 32-bit).
pub fn fields(bytes: &[u8]) -> Result<Vec<Field>, String> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        let key = varint(bytes, &mut at)?;
        match key & 7 {
            0 => out.push((key >> 3, varint(bytes, &mut at)?, None)),
            1 | 5 => {
                let len = if key & 7 == 1 { 8 } else { 4 };
                if at + len > bytes.len() {
                    return Err("truncated fixed field".into());
                }
                at += len;
            }
            2 => {
                let len =
                    usize::try_from(varint(bytes, &mut at)?).map_err(|_| "length overflows")?;
                let end = at
                    .checked_add(len)
                    .filter(|e| *e <= bytes.len())
                    .ok_or("truncated bytes field")?;
                out.push((key >> 3, 0, Some(bytes[at..end].to_vec())));
                at = end;
            }
            other => return Err(format!("wire type {other}")),
        }
    }
    Ok(out)
}

/// The last varint value of field `number` (protobuf's last-one-wins), 0 if absent.
pub fn varint_field(fields: &[Field], number: u64) -> u64 {
    fields
        .iter()
        .rev()
        .find(|f| f.0 == number && f.2.is_none())
        .map_or(0, |f| f.1)
}

fn varint(bytes: &[u8], at: &mut usize) -> Result<u64, String> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*at).ok_or("truncated varint")?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("varint longer than 10 bytes".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_size_reads_etcds_padding_bits() {
        // 13 bytes of record padded by 3: the top bit and 3 in the top byte's low bits.
        let field = 13 | (0x83u64 << 56);
        assert_eq!(frame_size(field), (13, 3));
        assert_eq!(frame_size(16), (16, 0));
    }

    #[test]
    fn a_rewritten_suffix_replaces_the_old_one() {
        let entry = |index: u64, term: u64| vec![0x10, term as u8, 0x18, index as u8];
        let mut entries = Vec::new();
        for i in 1..=5 {
            push_entry(&mut entries, &entry(i, 1)).unwrap();
        }
        push_entry(&mut entries, &entry(3, 2)).unwrap();
        let seen: Vec<(u64, u64)> = entries.iter().map(|e| (e.raft_index, e.term)).collect();
        assert_eq!(seen, [(1, 1), (2, 1), (3, 2)]);
        assert!(push_entry(&mut entries, &entry(9, 2)).is_err());
    }

    #[test]
    fn a_zero_sector_makes_a_record_torn() {
        let mut frame = vec![1u8; 600];
        assert!(!is_torn(&frame, 0));
        frame[512..600].fill(0);
        assert!(is_torn(&frame, 0));
    }
}
