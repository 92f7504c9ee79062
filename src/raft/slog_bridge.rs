//! raft-rs logs through `slog`; this drain hands its records to tern's logger, so raft's
//! lifecycle lines ("became leader at term 2", ...) appear in etcd's log shape.

use slog::{o, Drain, Level, Never, OwnedKVList, Record};

struct TernDrain;

impl Drain for TernDrain {
    type Ok = ();
    type Err = Never;

    fn log(&self, record: &Record<'_>, _values: &OwnedKVList) -> Result<(), Never> {
        let msg = format!("raft: {}", record.msg());
        match record.level() {
            Level::Critical | Level::Error => crate::error!(msg),
            Level::Warning => crate::warn!(msg),
            Level::Info => crate::info!(msg),
            Level::Debug | Level::Trace => crate::debug!(msg),
        }
        Ok(())
    }
}

pub fn logger(member_id: u64) -> slog::Logger {
    slog::Logger::root(TernDrain.fuse(), o!("raft_id" => member_id))
}
