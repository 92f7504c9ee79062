//! Consensus: every write goes through raft-rs, is persisted in the WAL and applied to
//! MVCC. `node` is the one ready loop; `log_store` is raft's log over the WAL;
//! `transport` carries messages between members (docs/peer-protocol.md); `snapshot`
//! saves and restores the applied state; `codec` decodes raft-rs's
//! messages with prost; what an entry's data holds is
//! `crate::state::envelope`.

pub mod codec;
pub mod log_store;
pub mod node;
pub mod slog_bridge;
pub mod snapshot;
pub mod transport;
pub mod wire_check;

pub use node::{Node, RaftOptions};
