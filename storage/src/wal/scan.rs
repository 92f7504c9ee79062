//! Recovery scan of one segment's bytes: pure, no I/O, shared by `Wal::open` and `tern-wal`.
//!
//! The rules are in `storage/docs/wal.md` ("Recovery"). In short: batches are read in order;
//! the first batch that is not entirely valid ends the segment. It is a *torn tail* when no
//! valid batch header exists at any later sector boundary (the write that was in flight at the
//! crash), and *corruption* when one does (bytes that had been durable were damaged).
//! Invariant: a batch is accepted whole or not at all, so one `append` is atomic.

use super::record::{
    align_up, batch_fields, decode_frame, to_record, FrameError, RecordType, WalRecord,
    BATCH_FRAME_BYTES, SECTOR_BYTES,
};

/// One valid record and where its frame lies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScannedRecord {
    pub frame_offset: u64,
    pub frame_bytes: u32,
    pub record: WalRecord,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScannedBatch {
    pub offset: u64,
    pub batch_bytes: u64,
    pub records: Vec<ScannedRecord>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SegmentEnd {
    /// Valid data ends at `next_offset`; every byte after it is zero.
    Clean { next_offset: u64 },
    /// The batch at `offset` is incomplete and nothing valid follows: the write in flight at a
    /// crash. Bytes in `[offset, nonzero_end)` are to be zeroed.
    Torn {
        offset: u64,
        nonzero_end: u64,
        reason: String,
    },
    /// The batch at `offset` is damaged, yet a valid batch starts at `valid_batch_at`.
    Corrupt {
        offset: u64,
        valid_batch_at: u64,
        reason: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentScan {
    pub batches: Vec<ScannedBatch>,
    pub end: SegmentEnd,
}

/// Scans the bytes of segment `segment_seq` (the whole file as read from disk).
pub fn scan_segment(buf: &[u8], segment_seq: u64) -> SegmentScan {
    let mut batches = Vec::new();
    let mut pos = 0usize;
    let end = loop {
        if pos >= buf.len() {
            break SegmentEnd::Clean {
                next_offset: pos as u64,
            };
        }
        match read_batch(buf, segment_seq, pos) {
            Ok(batch) => {
                pos += batch.batch_bytes as usize;
                batches.push(batch);
            }
            Err(BatchError::Zero) => {
                if let Some(valid) = find_valid_batch(buf, segment_seq, pos + SECTOR_BYTES) {
                    break SegmentEnd::Corrupt {
                        offset: pos as u64,
                        valid_batch_at: valid as u64,
                        reason: "zeroed batch header".to_string(),
                    };
                }
                let nonzero_end = nonzero_end(buf, pos);
                if nonzero_end > pos {
                    break SegmentEnd::Torn {
                        offset: pos as u64,
                        nonzero_end: nonzero_end as u64,
                        reason: "zero batch header followed by partial data".to_string(),
                    };
                }
                break SegmentEnd::Clean {
                    next_offset: pos as u64,
                };
            }
            Err(BatchError::Bad { reason, skip_to }) => {
                if let Some(valid) = find_valid_batch(buf, segment_seq, skip_to) {
                    break SegmentEnd::Corrupt {
                        offset: pos as u64,
                        valid_batch_at: valid as u64,
                        reason,
                    };
                }
                break SegmentEnd::Torn {
                    offset: pos as u64,
                    nonzero_end: nonzero_end(buf, pos).max(pos) as u64,
                    reason,
                };
            }
        }
    };
    SegmentScan { batches, end }
}

enum BatchError {
    Zero,
    /// `skip_to`: where a search for later valid batches may start (past this batch's claimed
    /// extent when its header was valid, so its own records are never mistaken for later data).
    Bad {
        reason: String,
        skip_to: usize,
    },
}

fn read_batch(buf: &[u8], segment_seq: u64, pos: usize) -> Result<ScannedBatch, BatchError> {
    let next_sector = pos + SECTOR_BYTES;
    let bad = |reason: String, skip_to: usize| BatchError::Bad { reason, skip_to };
    let frame = match decode_frame(&buf[pos..], segment_seq, pos as u64) {
        Ok(frame) => frame,
        Err(FrameError::Zero) => return Err(BatchError::Zero),
        Err(e) => return Err(bad(format!("batch header: {e}"), next_sector)),
    };
    if frame.record_type != RecordType::Batch {
        return Err(bad(
            format!(
                "expected a batch header, found a {:?} frame",
                frame.record_type
            ),
            next_sector,
        ));
    }
    let (batch_bytes, record_count) = batch_fields(&frame);
    let batch_bytes = batch_bytes as usize;
    if batch_bytes < BATCH_FRAME_BYTES || !batch_bytes.is_multiple_of(SECTOR_BYTES) {
        return Err(bad(
            format!("invalid batch length {batch_bytes}"),
            next_sector,
        ));
    }
    let batch_end = pos + batch_bytes;
    if batch_end > buf.len() {
        return Err(bad(
            format!(
                "batch of {batch_bytes} bytes runs past the end of the segment ({} bytes)",
                buf.len()
            ),
            buf.len(),
        ));
    }
    let mut records = Vec::with_capacity(record_count.min(1 << 16) as usize);
    let mut at = pos + BATCH_FRAME_BYTES;
    while at < batch_end {
        let frame = decode_frame(&buf[at..batch_end], segment_seq, at as u64)
            .map_err(|e| bad(format!("record at offset {at}: {e}"), batch_end))?;
        match frame.record_type {
            RecordType::Batch => {
                return Err(bad(
                    format!("nested batch header at offset {at}"),
                    batch_end,
                ));
            }
            RecordType::Padding => {
                if at + frame.frame_bytes != batch_end {
                    return Err(bad(
                        format!("padding at offset {at} does not end the batch"),
                        batch_end,
                    ));
                }
            }
            _ => records.push(ScannedRecord {
                frame_offset: at as u64,
                frame_bytes: frame.frame_bytes as u32,
                record: to_record(&frame).expect("non-batch, non-padding frame"),
            }),
        }
        at += frame.frame_bytes;
    }
    if records.len() != record_count as usize {
        return Err(bad(
            format!(
                "batch announces {record_count} records, holds {}",
                records.len()
            ),
            batch_end,
        ));
    }
    Ok(ScannedBatch {
        offset: pos as u64,
        batch_bytes: batch_bytes as u64,
        records,
    })
}

/// First sector boundary at or after `from` holding a valid batch header.
pub fn find_valid_batch(buf: &[u8], segment_seq: u64, from: usize) -> Option<usize> {
    let mut s = align_up(from, SECTOR_BYTES);
    while s + BATCH_FRAME_BYTES <= buf.len() {
        let head = &buf[s..s + 16];
        if head.iter().any(|&b| b != 0) {
            if let Ok(frame) = decode_frame(&buf[s..], segment_seq, s as u64) {
                if frame.record_type == RecordType::Batch {
                    return Some(s);
                }
            }
        }
        s += SECTOR_BYTES;
    }
    None
}

/// End (rounded up to a sector) of the last non-zero byte at or after `from`; `from` if none.
fn nonzero_end(buf: &[u8], from: usize) -> usize {
    match buf[from.min(buf.len())..].iter().rposition(|&b| b != 0) {
        Some(last) => align_up(from + last + 1, SECTOR_BYTES),
        None => from,
    }
}
