//! Segment file naming (`storage/docs/wal.md`, "Segment files"): `%016x-%016x.wal`, the
//! segment's sequence number then the raft index its first new entry would have, as in etcd's
//! `wal/util.go`. Sequence numbers of the live segments are consecutive.

use std::path::{Path, PathBuf};

/// Suffix of a finished segment.
pub const SEGMENT_SUFFIX: &str = ".wal";
/// Suffix of a segment still being created; such files are removed at open.
pub const TEMP_SUFFIX: &str = ".wal.tmp";

/// Where the WAL lives inside a data dir, as in etcd.
pub fn wal_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("member").join("wal")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SegmentName {
    pub seq: u64,
    /// raft index of the first entry appended after this segment was started.
    pub raft_index: u64,
}

impl SegmentName {
    pub fn file_name(&self) -> String {
        format!("{:016x}-{:016x}{SEGMENT_SUFFIX}", self.seq, self.raft_index)
    }

    pub fn temp_file_name(&self) -> String {
        format!("{:016x}-{:016x}{TEMP_SUFFIX}", self.seq, self.raft_index)
    }

    /// Parses a finished segment's file name; `None` for anything else.
    pub fn parse(file_name: &str) -> Option<SegmentName> {
        let stem = file_name.strip_suffix(SEGMENT_SUFFIX)?;
        let (seq, raft_index) = stem.split_once('-')?;
        if seq.len() != 16 || raft_index.len() != 16 {
            return None;
        }
        Some(SegmentName {
            seq: u64::from_str_radix(seq, 16).ok()?,
            raft_index: u64::from_str_radix(raft_index, 16).ok()?,
        })
    }
}

/// Lists the segments in `dir`, sorted by sequence number, plus the leftover temp files.
/// Fails if sequence numbers are not consecutive (a segment is missing).
pub fn list_segments(dir: &Path) -> std::io::Result<(Vec<SegmentName>, Vec<PathBuf>)> {
    let mut names = Vec::new();
    let mut temps = Vec::new();
    for dirent in std::fs::read_dir(dir)? {
        let dirent = dirent?;
        let file_name = dirent.file_name();
        let Some(file_name) = file_name.to_str() else {
            continue;
        };
        if let Some(name) = SegmentName::parse(file_name) {
            names.push(name);
        } else if file_name.ends_with(TEMP_SUFFIX) {
            temps.push(dirent.path());
        }
    }
    names.sort();
    Ok((names, temps))
}

/// The first pair of neighbours whose sequence numbers are not consecutive.
pub fn find_seq_gap(names: &[SegmentName]) -> Option<(SegmentName, SegmentName)> {
    names
        .windows(2)
        .find(|w| w[1].seq != w[0].seq + 1)
        .map(|w| (w[0], w[1]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_like_etcd() {
        let name = SegmentName {
            seq: 1,
            raft_index: 0x2a,
        };
        assert_eq!(name.file_name(), "0000000000000001-000000000000002a.wal");
        assert_eq!(SegmentName::parse(&name.file_name()), Some(name));
        assert_eq!(
            SegmentName::parse("0000000000000001-000000000000002a.wal.tmp"),
            None
        );
        assert_eq!(SegmentName::parse("1-2.wal"), None);
        assert_eq!(
            SegmentName::parse("000000000000000g-0000000000000000.wal"),
            None
        );
    }
}
