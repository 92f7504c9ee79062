//! Cluster membership: who the members are and how they are named.

pub mod cluster;
pub mod id;
