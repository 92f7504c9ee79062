//! Record framing: pure encode/decode of one frame, no I/O.
//!
//! The byte layout is specified in `storage/docs/wal.md` ("Frame"); this file implements it.
//! Invariants:
//! - every frame starts at an 8-byte aligned file offset and its total size is a multiple of 8;
//! - the CRC covers the segment sequence number and the frame's own file offset, so a valid
//!   frame cannot be replayed from another segment or another position;
//! - decoding never panics on arbitrary bytes: it returns a [`FrameError`].

use crc32fast::Hasher;

/// Bytes of the fixed frame header.
pub const FRAME_HEADER_BYTES: usize = 16;
/// Every frame starts and ends on this boundary.
pub const FRAME_ALIGN_BYTES: usize = 8;
/// Batches start and end on this boundary (the smallest logical block size of Linux disks).
pub const SECTOR_BYTES: usize = 512;
/// Largest payload one frame may carry. Bounds the allocation a corrupt length can cause.
pub const FRAME_PAYLOAD_BYTES_MAX: usize = 64 << 20;

const _: () = assert!(FRAME_HEADER_BYTES.is_multiple_of(FRAME_ALIGN_BYTES));
const _: () = assert!(SECTOR_BYTES.is_multiple_of(FRAME_ALIGN_BYTES));

/// The record kinds; the numeric values are the on-disk `record_type` byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordType {
    /// First frame of every batch: `batch_bytes: u32, record_count: u32`.
    Batch = 1,
    /// A raft entry: `raft_index: u64, term: u64`, then the caller's opaque bytes.
    Entry = 2,
    /// raft HardState: `term: u64, vote: u64, commit: u64`.
    HardState = 3,
    /// A snapshot marker: `raft_index: u64, term: u64`.
    Snapshot = 4,
    /// Member metadata: `cluster_id: u64, member_id: u64`.
    Metadata = 5,
    /// Zero payload that fills a batch up to its alignment.
    Padding = 6,
}

impl RecordType {
    pub fn from_byte(byte: u8) -> Option<RecordType> {
        Some(match byte {
            1 => RecordType::Batch,
            2 => RecordType::Entry,
            3 => RecordType::HardState,
            4 => RecordType::Snapshot,
            5 => RecordType::Metadata,
            6 => RecordType::Padding,
            _ => return None,
        })
    }
}

/// raft's persistent state (raft-rs `HardState`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HardState {
    pub term: u64,
    pub vote: u64,
    pub commit: u64,
}

/// The snapshot a log starts after: entries up to `raft_index` are compacted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnapshotMarker {
    pub raft_index: u64,
    pub term: u64,
}

/// Who wrote this WAL (etcd keeps the same in its WAL metadata record).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Metadata {
    pub cluster_id: u64,
    pub member_id: u64,
}

/// One logical record as the caller sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WalRecord {
    Entry {
        raft_index: u64,
        term: u64,
        /// Opaque to the WAL (tern stores a protobuf-encoded raft `Entry`).
        data: Vec<u8>,
    },
    HardState(HardState),
    Snapshot(SnapshotMarker),
    Metadata(Metadata),
}

impl WalRecord {
    pub fn record_type(&self) -> RecordType {
        match self {
            WalRecord::Entry { .. } => RecordType::Entry,
            WalRecord::HardState(_) => RecordType::HardState,
            WalRecord::Snapshot(_) => RecordType::Snapshot,
            WalRecord::Metadata(_) => RecordType::Metadata,
        }
    }

    pub fn payload_len(&self) -> usize {
        match self {
            WalRecord::Entry { data, .. } => 16 + data.len(),
            WalRecord::HardState(_) => 24,
            WalRecord::Snapshot(_) | WalRecord::Metadata(_) => 16,
        }
    }

    /// Bytes this record occupies on disk, header and alignment padding included.
    pub fn frame_bytes(&self) -> usize {
        frame_bytes(self.payload_len())
    }

    fn write_payload(&self, out: &mut [u8]) {
        match self {
            WalRecord::Entry {
                raft_index,
                term,
                data,
            } => {
                out[0..8].copy_from_slice(&raft_index.to_le_bytes());
                out[8..16].copy_from_slice(&term.to_le_bytes());
                out[16..16 + data.len()].copy_from_slice(data);
            }
            WalRecord::HardState(hs) => {
                out[0..8].copy_from_slice(&hs.term.to_le_bytes());
                out[8..16].copy_from_slice(&hs.vote.to_le_bytes());
                out[16..24].copy_from_slice(&hs.commit.to_le_bytes());
            }
            WalRecord::Snapshot(snap) => {
                out[0..8].copy_from_slice(&snap.raft_index.to_le_bytes());
                out[8..16].copy_from_slice(&snap.term.to_le_bytes());
            }
            WalRecord::Metadata(meta) => {
                out[0..8].copy_from_slice(&meta.cluster_id.to_le_bytes());
                out[8..16].copy_from_slice(&meta.member_id.to_le_bytes());
            }
        }
    }
}

/// Total on-disk size of a frame with `payload_len` payload bytes.
pub const fn frame_bytes(payload_len: usize) -> usize {
    FRAME_HEADER_BYTES + align_up(payload_len, FRAME_ALIGN_BYTES)
}

pub const fn align_up(value: usize, align: usize) -> usize {
    value.div_ceil(align) * align
}

/// Why bytes at some offset are not a valid frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// All 16 header bytes are zero: nothing was ever written here.
    Zero,
    /// The frame would run past the end of the readable bytes.
    Truncated { needed_bytes: usize },
    /// The length field exceeds [`FRAME_PAYLOAD_BYTES_MAX`].
    LengthTooLarge { payload_len: usize },
    /// Unknown `record_type` byte.
    UnknownType { record_type: u8 },
    /// Reserved header bytes or alignment padding are not zero.
    NonZeroReserved,
    /// The stored CRC does not match the bytes.
    CrcMismatch { stored: u32, computed: u32 },
    /// The payload length does not fit the record type.
    BadPayload {
        record_type: RecordType,
        payload_len: usize,
    },
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Zero => write!(f, "zero header (never written)"),
            FrameError::Truncated { needed_bytes } => {
                write!(
                    f,
                    "frame truncated: needs {needed_bytes} bytes past the end"
                )
            }
            FrameError::LengthTooLarge { payload_len } => {
                write!(f, "payload length {payload_len} exceeds the frame maximum")
            }
            FrameError::UnknownType { record_type } => {
                write!(f, "unknown record type {record_type}")
            }
            FrameError::NonZeroReserved => write!(f, "reserved or padding bytes are not zero"),
            FrameError::CrcMismatch { stored, computed } => {
                write!(
                    f,
                    "crc mismatch: stored {stored:#010x}, computed {computed:#010x}"
                )
            }
            FrameError::BadPayload {
                record_type,
                payload_len,
            } => write!(
                f,
                "{record_type:?} record with invalid payload length {payload_len}"
            ),
        }
    }
}

/// A frame decoded from disk, borrowing its payload from the read buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    pub record_type: RecordType,
    pub payload: &'a [u8],
    /// Total bytes of the frame, header and padding included.
    pub frame_bytes: usize,
}

fn frame_crc(segment_seq: u64, frame_offset: u64, header_tail: &[u8], payload: &[u8]) -> u32 {
    let mut hasher = Hasher::new();
    hasher.update(&segment_seq.to_le_bytes());
    hasher.update(&frame_offset.to_le_bytes());
    hasher.update(header_tail);
    hasher.update(payload);
    hasher.finalize()
}

/// Writes the frame for `record_type` with `payload_len` payload bytes into `out` (which must be
/// exactly `frame_bytes(payload_len)` long); `fill` writes the payload.
fn encode_with(
    out: &mut [u8],
    segment_seq: u64,
    frame_offset: u64,
    record_type: RecordType,
    payload_len: usize,
    fill: impl FnOnce(&mut [u8]),
) {
    assert_eq!(out.len(), frame_bytes(payload_len));
    assert_eq!(
        frame_offset % FRAME_ALIGN_BYTES as u64,
        0,
        "frames are 8-byte aligned"
    );
    assert!(payload_len <= FRAME_PAYLOAD_BYTES_MAX);
    out.fill(0);
    out[4..8].copy_from_slice(&(payload_len as u32).to_le_bytes());
    out[8] = record_type as u8;
    fill(&mut out[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + payload_len]);
    let crc = frame_crc(
        segment_seq,
        frame_offset,
        &out[4..FRAME_HEADER_BYTES],
        &out[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + payload_len],
    );
    out[0..4].copy_from_slice(&crc.to_le_bytes());
}

/// Encodes `record` as a frame at `frame_offset` of segment `segment_seq`.
pub fn encode_record(out: &mut [u8], segment_seq: u64, frame_offset: u64, record: &WalRecord) {
    encode_with(
        out,
        segment_seq,
        frame_offset,
        record.record_type(),
        record.payload_len(),
        |payload| record.write_payload(payload),
    );
}

/// Encodes the batch header frame (always 24 bytes).
pub fn encode_batch(
    out: &mut [u8],
    segment_seq: u64,
    frame_offset: u64,
    batch_bytes: u32,
    record_count: u32,
) {
    encode_with(out, segment_seq, frame_offset, RecordType::Batch, 8, |p| {
        p[0..4].copy_from_slice(&batch_bytes.to_le_bytes());
        p[4..8].copy_from_slice(&record_count.to_le_bytes());
    });
}

/// Encodes a padding frame filling exactly `out.len()` bytes (at least one header).
pub fn encode_padding(out: &mut [u8], segment_seq: u64, frame_offset: u64) {
    assert!(out.len() >= FRAME_HEADER_BYTES && out.len().is_multiple_of(FRAME_ALIGN_BYTES));
    let payload_len = out.len() - FRAME_HEADER_BYTES;
    encode_with(
        out,
        segment_seq,
        frame_offset,
        RecordType::Padding,
        payload_len,
        |_| {},
    );
}

/// Size of an encoded batch header frame.
pub const BATCH_FRAME_BYTES: usize = frame_bytes(8);

/// Decodes the frame starting at `buf[0]`, which lies at `frame_offset` in segment `segment_seq`.
pub fn decode_frame(
    buf: &[u8],
    segment_seq: u64,
    frame_offset: u64,
) -> Result<Frame<'_>, FrameError> {
    if buf.len() < FRAME_HEADER_BYTES {
        if buf.iter().all(|&b| b == 0) {
            return Err(FrameError::Zero);
        }
        return Err(FrameError::Truncated {
            needed_bytes: FRAME_HEADER_BYTES - buf.len(),
        });
    }
    let header = &buf[..FRAME_HEADER_BYTES];
    if header.iter().all(|&b| b == 0) {
        return Err(FrameError::Zero);
    }
    let stored = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
    let payload_len = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes")) as usize;
    if payload_len > FRAME_PAYLOAD_BYTES_MAX {
        return Err(FrameError::LengthTooLarge { payload_len });
    }
    let record_type = RecordType::from_byte(header[8]).ok_or(FrameError::UnknownType {
        record_type: header[8],
    })?;
    if header[9..16].iter().any(|&b| b != 0) {
        return Err(FrameError::NonZeroReserved);
    }
    let total = frame_bytes(payload_len);
    if buf.len() < total {
        return Err(FrameError::Truncated {
            needed_bytes: total - buf.len(),
        });
    }
    let payload = &buf[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + payload_len];
    let computed = frame_crc(segment_seq, frame_offset, &header[4..16], payload);
    if computed != stored {
        return Err(FrameError::CrcMismatch { stored, computed });
    }
    if buf[FRAME_HEADER_BYTES + payload_len..total]
        .iter()
        .any(|&b| b != 0)
    {
        return Err(FrameError::NonZeroReserved);
    }
    let payload_ok = match record_type {
        RecordType::Batch => payload_len == 8,
        RecordType::Entry => payload_len >= 16,
        RecordType::HardState => payload_len == 24,
        RecordType::Snapshot | RecordType::Metadata => payload_len == 16,
        RecordType::Padding => payload.iter().all(|&b| b == 0),
    };
    if !payload_ok {
        return Err(FrameError::BadPayload {
            record_type,
            payload_len,
        });
    }
    Ok(Frame {
        record_type,
        payload,
        frame_bytes: total,
    })
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

/// The batch header's fields: `(batch_bytes, record_count)`. Panics if not a valid batch frame;
/// call only on frames [`decode_frame`] accepted as [`RecordType::Batch`].
pub fn batch_fields(frame: &Frame<'_>) -> (u32, u32) {
    assert_eq!(frame.record_type, RecordType::Batch);
    (u32_at(frame.payload, 0), u32_at(frame.payload, 4))
}

/// `(raft_index, term)` of an entry frame's payload.
pub fn entry_header(payload: &[u8]) -> (u64, u64) {
    (u64_at(payload, 0), u64_at(payload, 8))
}

/// Converts a decoded non-batch, non-padding frame into the caller-facing record.
pub fn to_record(frame: &Frame<'_>) -> Option<WalRecord> {
    let p = frame.payload;
    Some(match frame.record_type {
        RecordType::Entry => WalRecord::Entry {
            raft_index: u64_at(p, 0),
            term: u64_at(p, 8),
            data: p[16..].to_vec(),
        },
        RecordType::HardState => WalRecord::HardState(HardState {
            term: u64_at(p, 0),
            vote: u64_at(p, 8),
            commit: u64_at(p, 16),
        }),
        RecordType::Snapshot => WalRecord::Snapshot(SnapshotMarker {
            raft_index: u64_at(p, 0),
            term: u64_at(p, 8),
        }),
        RecordType::Metadata => WalRecord::Metadata(Metadata {
            cluster_id: u64_at(p, 0),
            member_id: u64_at(p, 8),
        }),
        RecordType::Batch | RecordType::Padding => return None,
    })
}

/// Bytes of a batch holding `records_bytes` of record frames, aligned to `write_align_bytes`.
/// Padding never needs fewer than a frame header: a gap of 8 bytes grows by one alignment unit.
pub fn batch_bytes_for(records_bytes: usize, write_align_bytes: usize) -> usize {
    let used = BATCH_FRAME_BYTES + records_bytes;
    let mut total = align_up(used, write_align_bytes);
    if total != used && total - used < FRAME_HEADER_BYTES {
        total += write_align_bytes;
    }
    total
}

/// Encodes a whole batch into `out` (exactly `batch_bytes_for(..)` long) starting at file offset
/// `batch_offset`.
pub fn encode_batch_into<'r>(
    out: &mut [u8],
    segment_seq: u64,
    batch_offset: u64,
    records: impl Iterator<Item = &'r WalRecord>,
    record_count: usize,
) {
    assert_eq!(
        batch_offset % SECTOR_BYTES as u64,
        0,
        "batches start on a sector"
    );
    assert_eq!(out.len() % SECTOR_BYTES, 0, "batches end on a sector");
    let batch_bytes = out.len() as u32;
    encode_batch(
        &mut out[..BATCH_FRAME_BYTES],
        segment_seq,
        batch_offset,
        batch_bytes,
        record_count as u32,
    );
    let mut at = BATCH_FRAME_BYTES;
    let mut count = 0;
    for record in records {
        let n = record.frame_bytes();
        encode_record(
            &mut out[at..at + n],
            segment_seq,
            batch_offset + at as u64,
            record,
        );
        at += n;
        count += 1;
    }
    assert_eq!(count, record_count);
    if at < out.len() {
        encode_padding(&mut out[at..], segment_seq, batch_offset + at as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_padding_never_leaves_a_gap_smaller_than_a_header() {
        // 24 (batch frame) + 4064 = 4088: an 8-byte gap cannot hold a padding frame.
        assert_eq!(batch_bytes_for(4064, 4096), 8192);
        assert_eq!(batch_bytes_for(4072, 4096), 4096);
        assert_eq!(batch_bytes_for(4056, 4096), 4096);
        assert_eq!(batch_bytes_for(0, 512), 512);
    }

    #[test]
    fn entry_frame_layout_matches_the_spec() {
        let record = WalRecord::Entry {
            raft_index: 5,
            term: 2,
            data: vec![1, 2, 3],
        };
        let mut buf = vec![0u8; record.frame_bytes()];
        assert_eq!(buf.len(), 16 + 24); // 19 payload bytes padded to 24
        encode_record(&mut buf, 9, 4096, &record);
        assert_eq!(&buf[4..8], &19u32.to_le_bytes());
        assert_eq!(buf[8], RecordType::Entry as u8);
        assert_eq!(&buf[16..24], &5u64.to_le_bytes());
        assert_eq!(&buf[24..32], &2u64.to_le_bytes());
        assert_eq!(&buf[32..35], &[1, 2, 3]);
        assert_eq!(&buf[35..40], &[0; 5]);
        let frame = decode_frame(&buf, 9, 4096).unwrap();
        assert_eq!(to_record(&frame), Some(record));
        assert!(matches!(
            decode_frame(&buf, 9, 4104),
            Err(FrameError::CrcMismatch { .. })
        ));
    }
}
