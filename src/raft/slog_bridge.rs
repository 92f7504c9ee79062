//! raft-rs logs through `slog`; this drain hands its records to tern's logger, so raft's
//! lifecycle lines ("became leader at term 2", ...) appear in etcd's log shape.

use std::fmt::Write as _;

use slog::{o, Drain, Key, Level, Never, OwnedKVList, Record, Serializer, KV as _};

struct TernDrain;

/// Appends raft-rs's structured fields to the message as ` key=value`.
struct FieldText(String);

impl Serializer for FieldText {
    fn emit_arguments(&mut self, key: Key, val: &std::fmt::Arguments<'_>) -> slog::Result {
        let _ = write!(self.0, " {key}={val}");
        Ok(())
    }
}

impl Drain for TernDrain {
    type Ok = ();
    type Err = Never;

    fn log(&self, record: &Record<'_>, _values: &OwnedKVList) -> Result<(), Never> {
        let mut fields = FieldText(format!("raft: {}", record.msg()));
        let _ = record.kv().serialize(record, &mut fields);
        let msg = fields.0;
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
