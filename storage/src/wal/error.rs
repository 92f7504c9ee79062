//! The WAL's one error type. Every failure is reported, never swallowed; it is `Clone` because
//! one failed write or fdatasync is delivered to every append waiting on that batch.

use std::path::PathBuf;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WalError {
    /// An I/O call failed. After a failed write or fdatasync the WAL is poisoned (see `Poisoned`).
    Io {
        context: String,
        kind: std::io::ErrorKind,
        message: String,
    },
    /// Bytes on disk are damaged somewhere other than a torn tail: never silently dropped.
    /// `tern-wal verify` prints the same report; `tern-wal repair` can cut the log there.
    Corrupt {
        segment: PathBuf,
        offset: u64,
        reason: String,
    },
    /// `Wal::open` on a directory without segments.
    NotFound(PathBuf),
    /// `Wal::create` on a directory that already holds segments.
    AlreadyExists(PathBuf),
    /// The append breaks the log's rules (index gap, entry below the snapshot, too large).
    InvalidAppend(String),
    /// The submission queue is at its `queue_bytes_max` / `queue_appends_max` bound.
    QueueFull {
        queue_bytes: usize,
        queue_appends: usize,
    },
    /// A write or fdatasync failed earlier; the kernel may have dropped dirty pages, so no
    /// later sync can prove durability (the "fsyncgate" lesson). Reopen the WAL to recover.
    Poisoned(String),
    /// The entry is at or below the snapshot marker (or was released).
    Compacted { raft_index: u64, first_index: u64 },
    /// The entry is beyond the durable log.
    Unavailable { raft_index: u64, last_index: u64 },
    /// The WAL was closed.
    Closed,
    /// Options are inconsistent, or the environment cannot run the WAL (memlock limits).
    InvalidOptions(String),
}

impl WalError {
    pub fn io(context: impl Into<String>, err: &std::io::Error) -> WalError {
        WalError::Io {
            context: context.into(),
            kind: err.kind(),
            message: err.to_string(),
        }
    }

    pub fn from_glommio<T>(context: impl Into<String>, err: glommio::GlommioError<T>) -> WalError {
        let io: std::io::Error = err.into();
        WalError::io(context, &io)
    }
}

impl std::fmt::Display for WalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WalError::Io {
                context, message, ..
            } => write!(f, "wal i/o error: {context}: {message}"),
            WalError::Corrupt {
                segment,
                offset,
                reason,
            } => write!(
                f,
                "wal corrupt: {} at offset {offset}: {reason}",
                segment.display()
            ),
            WalError::NotFound(dir) => write!(f, "no wal segments in {}", dir.display()),
            WalError::AlreadyExists(dir) => write!(f, "wal already exists in {}", dir.display()),
            WalError::InvalidAppend(why) => write!(f, "invalid wal append: {why}"),
            WalError::QueueFull {
                queue_bytes,
                queue_appends,
            } => write!(
                f,
                "wal submission queue full ({queue_bytes} bytes in {queue_appends} appends)"
            ),
            WalError::Poisoned(why) => write!(f, "wal poisoned by an earlier failure: {why}"),
            WalError::Compacted {
                raft_index,
                first_index,
            } => write!(
                f,
                "raft index {raft_index} is compacted (first index {first_index})"
            ),
            WalError::Unavailable {
                raft_index,
                last_index,
            } => write!(
                f,
                "raft index {raft_index} is beyond the log (last index {last_index})"
            ),
            WalError::Closed => write!(f, "wal closed"),
            WalError::InvalidOptions(why) => write!(f, "wal options: {why}"),
        }
    }
}

impl std::error::Error for WalError {}

pub type Result<T, E = WalError> = std::result::Result<T, E>;
