//! Offline inspection and repair of a WAL directory with plain blocking I/O (the WAL must not
//! be open). Used by `tern-wal dump|verify|repair`; the rules are those of `Wal::open`
//! (`storage/docs/wal.md`, "Recovery" and "Repair").
//!
//! Repair is explicit and loud: a torn tail is zeroed (what `open` would do anyway); a corrupt
//! record is only cut when the caller passes `discard_after_corruption`, and then every later
//! segment is renamed to `*.broken` rather than deleted, so nothing is destroyed silently.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::log_state::{newest_snapshot, LogState};
use super::scan::{scan_segment, SegmentEnd, SegmentScan};
use super::segment::{find_seq_gap, list_segments, SegmentName};

/// One segment's scan.
#[derive(Clone, Debug)]
pub struct SegmentReport {
    pub name: SegmentName,
    pub path: PathBuf,
    pub file_bytes: u64,
    pub scan: SegmentScan,
}

/// The first problem found, in log order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// A torn tail in the last segment (recoverable: `open` cuts it).
    TornTail {
        segment: PathBuf,
        offset: u64,
        nonzero_end: u64,
        reason: String,
    },
    /// Damage that `open` refuses.
    Corrupt {
        segment: PathBuf,
        offset: u64,
        nonzero_end: u64,
        reason: String,
    },
    /// Segment sequence numbers are not consecutive.
    MissingSegment { after: PathBuf, next: PathBuf },
}

#[derive(Clone, Debug)]
pub struct Report {
    pub segments: Vec<SegmentReport>,
    pub problem: Option<Problem>,
    pub first_index: u64,
    pub last_index: u64,
}

/// Scans every segment of `dir` and replays the records; stops at the first problem.
pub fn verify(dir: &Path) -> std::io::Result<Report> {
    let (names, _) = list_segments(dir)?;
    let mut report = Report {
        segments: Vec::new(),
        problem: None,
        first_index: 0,
        last_index: 0,
    };
    if let Some((a, b)) = find_seq_gap(&names) {
        report.problem = Some(Problem::MissingSegment {
            after: dir.join(a.file_name()),
            next: dir.join(b.file_name()),
        });
        return Ok(report);
    }
    // Pass 1: frames and CRCs, segment by segment, stopping at the first damaged one.
    let mut data_ends = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let path = dir.join(name.file_name());
        let mut bytes = Vec::new();
        std::fs::File::open(&path)?.read_to_end(&mut bytes)?;
        let scan = scan_segment(&bytes, name.seq);
        let is_last = i + 1 == names.len();
        report.problem = match &scan.end {
            SegmentEnd::Clean { .. } => None,
            SegmentEnd::Torn {
                offset,
                nonzero_end,
                reason,
            } if is_last => Some(Problem::TornTail {
                segment: path.clone(),
                offset: *offset,
                nonzero_end: *nonzero_end,
                reason: reason.clone(),
            }),
            SegmentEnd::Torn {
                offset,
                nonzero_end,
                reason,
            } => Some(Problem::Corrupt {
                segment: path.clone(),
                offset: *offset,
                nonzero_end: *nonzero_end,
                reason: format!("{reason}; later segments exist, so this is not a torn tail"),
            }),
            SegmentEnd::Corrupt {
                offset,
                valid_batch_at,
                reason,
            } => Some(Problem::Corrupt {
                segment: path.clone(),
                offset: *offset,
                nonzero_end: nonzero_end_of(&bytes, *offset),
                reason: format!("{reason}; a valid batch follows at offset {valid_batch_at}"),
            }),
        };
        data_ends.push(nonzero_end_of(&bytes, 0));
        report.segments.push(SegmentReport {
            name: *name,
            path,
            file_bytes: bytes.len() as u64,
            scan,
        });
        if report.problem.is_some() {
            break;
        }
    }
    // Pass 2: replay the valid records with the rules `Wal::open` uses.
    let mut state: LogState<()> =
        LogState::starting_at(newest_snapshot(report.segments.iter().flat_map(|seg| {
            seg.scan
                .batches
                .iter()
                .flat_map(|b| b.records.iter().map(|r| &r.record))
        })));
    'replay: for (seg, data_end) in report.segments.iter().zip(&data_ends) {
        for batch in &seg.scan.batches {
            for rec in &batch.records {
                if let Err(reason) = state.apply(&rec.record, || ()) {
                    report.problem = Some(Problem::Corrupt {
                        segment: seg.path.clone(),
                        offset: batch.offset,
                        nonzero_end: (*data_end).max(batch.offset),
                        reason: format!("record at offset {}: {reason}", rec.frame_offset),
                    });
                    break 'replay;
                }
            }
        }
    }
    report.first_index = state.first_index;
    report.last_index = state.last_index();
    Ok(report)
}

fn nonzero_end_of(bytes: &[u8], from: u64) -> u64 {
    let from = (from as usize).min(bytes.len());
    match bytes[from..].iter().rposition(|&b| b != 0) {
        Some(last) => ((from + last + 1).div_ceil(512) * 512) as u64,
        None => from as u64,
    }
}

/// What `repair` did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RepairOutcome {
    /// `(segment, offset, bytes)` zeroed.
    pub zeroed: Option<(PathBuf, u64, u64)>,
    /// Later segments moved aside as `*.broken`.
    pub moved_aside: Vec<PathBuf>,
    /// Set when corruption was found but `discard_after_corruption` was not given.
    pub refused: Option<String>,
}

/// Repairs `dir`: zeroes a torn tail; with `discard_after_corruption`, also cuts the log at the
/// first corrupt batch (zeroing from there) and moves every later segment aside.
pub fn repair(dir: &Path, discard_after_corruption: bool) -> std::io::Result<RepairOutcome> {
    let report = verify(dir)?;
    let mut outcome = RepairOutcome::default();
    let (segment, offset, nonzero_end) = match report.problem {
        None => return Ok(outcome),
        Some(Problem::TornTail {
            segment,
            offset,
            nonzero_end,
            ..
        }) => (segment, offset, nonzero_end),
        Some(Problem::Corrupt {
            segment,
            offset,
            nonzero_end,
            reason,
        }) => {
            if !discard_after_corruption {
                outcome.refused = Some(format!(
                    "{} at offset {offset}: {reason}; rerun with --discard-after-corruption to cut the log there",
                    segment.display()
                ));
                return Ok(outcome);
            }
            (segment, offset, nonzero_end)
        }
        Some(Problem::MissingSegment { after, next }) => {
            if !discard_after_corruption {
                outcome.refused = Some(format!(
                    "segment missing between {} and {}; rerun with --discard-after-corruption to drop the segments after the gap",
                    after.display(),
                    next.display()
                ));
                return Ok(outcome);
            }
            let (names, _) = list_segments(dir)?;
            let cut = names
                .iter()
                .position(|n| dir.join(n.file_name()) == next)
                .unwrap_or(names.len());
            move_aside(dir, &names[cut..], &mut outcome)?;
            return Ok(outcome);
        }
    };
    let file = OpenOptions::new().write(true).open(&segment)?;
    let zeros = vec![0u8; (nonzero_end - offset) as usize];
    file.write_all_at(&zeros, offset)?;
    file.sync_data()?;
    outcome.zeroed = Some((segment.clone(), offset, nonzero_end - offset));
    let (names, _) = list_segments(dir)?;
    let this = names
        .iter()
        .position(|n| dir.join(n.file_name()) == segment)
        .expect("segment listed");
    move_aside(dir, &names[this + 1..], &mut outcome)?;
    Ok(outcome)
}

fn move_aside(
    dir: &Path,
    names: &[SegmentName],
    outcome: &mut RepairOutcome,
) -> std::io::Result<()> {
    // Newest first, so a crash midway still leaves a consecutive run of segments.
    for name in names.iter().rev() {
        let from = dir.join(name.file_name());
        let to = dir.join(format!("{}.broken", name.file_name()));
        std::fs::rename(&from, &to)?;
        outcome.moved_aside.push(to);
    }
    if !names.is_empty() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Overwrites `len` bytes at `offset` of `path` with `byte` (test and tool helper for
/// simulating damage); `len` may run past the end of the file.
pub fn garble(path: &Path, offset: u64, len: usize, byte: u8) -> std::io::Result<()> {
    let mut file = OpenOptions::new().write(true).open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    file.write_all(&vec![byte; len])?;
    file.sync_data()
}
