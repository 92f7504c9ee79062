//! Batched write transactions, like etcd's `--backend-batch-interval` and
//! `--backend-batch-limit` (`server/mvcc/backend/batch_tx.go`): writes accumulate in one
//! open write transaction that commits when `limit` operations are pending or `interval` has
//! passed since it opened, whichever comes first.
//!
//! Invariants: at most one transaction is open; it never holds more than `limit` operations
//! (the operation that reaches the limit commits it). Readers see a batch's writes only after
//! it commits, so a layer that must read its own writes before then (etcd's MVCC read buffer)
//! reads through `txn()` or keeps its own buffer.

use std::time::{Duration, Instant};

use super::{Db, Error, WriteTxn};

#[derive(Clone, Copy, Debug)]
pub struct BatchConfig {
    /// etcd's `--backend-batch-interval` (default 100 ms).
    pub interval: Duration,
    /// etcd's `--backend-batch-limit` (default 10000 operations).
    pub limit: usize,
}

impl Default for BatchConfig {
    fn default() -> BatchConfig {
        BatchConfig {
            interval: Duration::from_millis(100),
            limit: 10_000,
        }
    }
}

pub struct BatchWriter {
    db: Db,
    config: BatchConfig,
    txn: Option<WriteTxn>,
    pending_ops: usize,
    opened_at: Instant,
}

impl BatchWriter {
    pub fn new(db: Db, config: BatchConfig) -> BatchWriter {
        assert!(
            config.limit > 0,
            "a batch limit of zero would never hold an operation"
        );
        BatchWriter {
            db,
            config,
            txn: None,
            pending_ops: 0,
            opened_at: Instant::now(),
        }
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The open transaction, opening one if needed (for reads of uncommitted writes).
    pub fn txn(&mut self) -> Result<&mut WriteTxn, Error> {
        if self.txn.is_none() {
            self.txn = Some(self.db.begin_write()?);
            self.opened_at = Instant::now();
        }
        Ok(self.txn.as_mut().expect("opened above"))
    }

    pub fn put(&mut self, bucket: &[u8], key: &[u8], value: &[u8]) -> Result<(), Error> {
        self.txn()?.put(bucket, key, value)?;
        self.count_op()
    }

    pub fn delete(&mut self, bucket: &[u8], key: &[u8]) -> Result<bool, Error> {
        let existed = self.txn()?.delete(bucket, key)?;
        self.count_op()?;
        Ok(existed)
    }

    fn count_op(&mut self) -> Result<(), Error> {
        self.pending_ops += 1;
        if self.pending_ops >= self.config.limit {
            self.commit()?;
        }
        Ok(())
    }

    pub fn pending_ops(&self) -> usize {
        self.pending_ops
    }

    /// When the open batch is due by the interval (None when nothing is open); a timer on
    /// the writer's executor sleeps until then and calls `commit_if_due`.
    pub fn deadline(&self) -> Option<Instant> {
        self.txn
            .as_ref()
            .map(|_| self.opened_at + self.config.interval)
    }

    /// Commits the open batch if its interval has passed; returns whether it did.
    pub fn commit_if_due(&mut self, now: Instant) -> Result<bool, Error> {
        match self.deadline() {
            Some(deadline) if now >= deadline => self.commit().map(|()| true),
            _ => Ok(false),
        }
    }

    /// Commits the open batch now (etcd's `ForceCommit`).
    pub fn commit(&mut self) -> Result<(), Error> {
        self.pending_ops = 0;
        match self.txn.take() {
            Some(txn) => txn.commit(),
            None => Ok(()),
        }
    }

    /// Commits the open batch, then defragments (which needs the writer between passes).
    pub fn defrag(&mut self) -> Result<super::DefragReport, Error> {
        self.commit()?;
        self.db.defrag()
    }
}
