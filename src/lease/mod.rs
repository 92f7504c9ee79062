//! Leases: the lessor (grant, revoke, renew, expiry, checkpoints, persistence) and the
//! commands the Lease service sends to the state executor. Record format: docs/lease.md.

pub mod command;
pub mod lessor;

pub use command::LeaseCommand;
pub use lessor::{Granted, Lease, LeaseOptions, Lessor, LEASE_TTL_SECS_MAX};

#[cfg(test)]
mod tests;
