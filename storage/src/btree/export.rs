//! Exporting a consistent image of the database: the file as of one commit, read in bounded
//! chunks while the database keeps committing (bbolt's `Tx.WriteTo`). A raft snapshot sends
//! this image to a follower, which opens it as its database.
//!
//! The image format is specified in `storage/docs/btree.md` ("Exported image"): pages
//! `0..page_count` of the pinned commit, both meta slots holding its meta, free pages zero.
//!
//! Invariants:
//! - The export pins its commit (an `Arc` of the reader registry's snapshot), so no page it
//!   reads is rewritten or truncated away until the export is dropped: the image is exactly
//!   that commit, however long the transfer takes.
//! - Pages are read with `pread` from the file, not through the mmap, so a large export does
//!   not fault the file into this process's resident memory; a chunk is at most the
//!   `pages_max` the caller asks for. Free pages are never read (a later commit may be
//!   writing them): they are zero in the image.
//! - [`Export::read_chunk`] blocks (disk reads): call it off any event loop.

use std::collections::BTreeSet;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use super::db::{read_freelist, Db};
use super::mmap::Snapshot;
use super::page::{META_BYTES, META_SLOTS, PAGE_BYTES};
use super::Error;

/// A consistent image of one commit, produced chunk by chunk. `Send`: it moves to the thread
/// that reads it.
pub struct Export {
    snap: Arc<Snapshot>,
    file: File,
    /// Pages free in the pinned commit (read from its freelist on the first chunk).
    free: Option<BTreeSet<u64>>,
    /// The next page of the image to produce.
    next_pgid: u64,
}

impl Db {
    /// Pins the latest commit for export. Cheap (no I/O beyond duplicating the descriptor).
    pub fn export(&self) -> Result<Export, Error> {
        let (snap, file) = self.pinned_snapshot();
        Ok(Export {
            snap,
            file: file.try_clone()?,
            free: None,
            next_pgid: 0,
        })
    }
}

impl Export {
    /// Bytes of the whole image.
    pub fn image_bytes(&self) -> u64 {
        self.snap.meta.page_count * PAGE_BYTES as u64
    }

    /// The transaction the image holds.
    pub fn txid(&self) -> u64 {
        self.snap.meta.txid
    }

    /// The next at most `pages_max` pages of the image (`None` once it is all produced).
    /// Blocks on disk reads.
    pub fn read_chunk(&mut self, pages_max: u64) -> Result<Option<Vec<u8>>, Error> {
        let page_count = self.snap.meta.page_count;
        if self.next_pgid >= page_count {
            return Ok(None);
        }
        if self.free.is_none() {
            self.free = Some(read_freelist(&self.snap)?.1);
        }
        let free = self.free.as_ref().expect("just read");
        let first = self.next_pgid;
        let end = first.saturating_add(pages_max.max(1)).min(page_count);
        let mut out = vec![0u8; ((end - first) as usize) * PAGE_BYTES];
        let mut pgid = first;
        while pgid < end {
            let at = ((pgid - first) as usize) * PAGE_BYTES;
            if pgid < META_SLOTS {
                // Both slots hold the pinned commit's meta, so the image opens at it
                // whichever slot the next commit overwrites.
                out[at..at + META_BYTES].copy_from_slice(&self.snap.meta.encode());
                pgid += 1;
                continue;
            }
            if free.contains(&pgid) {
                pgid += 1;
                continue;
            }
            // One pread for the run of used pages starting here.
            let mut run_end = pgid + 1;
            while run_end < end && !free.contains(&run_end) {
                run_end += 1;
            }
            let len = ((run_end - pgid) as usize) * PAGE_BYTES;
            self.file
                .read_exact_at(&mut out[at..at + len], pgid * PAGE_BYTES as u64)?;
            pgid = run_end;
        }
        self.next_pgid = end;
        Ok(Some(out))
    }
}

#[cfg(test)]
mod tests {
    //! An export taken before further commits (and a defragmentation) still yields exactly
    //! the pinned commit: the image passes the checker and reads back the old contents.
    use super::*;
    use crate::btree::{check_image, Options, ReadTxn};

    #[test]
    fn export_is_the_pinned_commit_while_the_db_moves_on() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path().join("db"), Options::default()).unwrap();
        let mut txn = db.begin_write().unwrap();
        for i in 0..3000u32 {
            txn.put(b"key", format!("k{i:05}").as_bytes(), &[i as u8; 300])
                .unwrap();
        }
        txn.put(b"key", b"big", &vec![7u8; 50_000]).unwrap();
        txn.commit().unwrap();
        // Free some pages so the image has zeroed ones.
        let mut txn = db.begin_write().unwrap();
        for i in 0..1500u32 {
            txn.delete(b"key", format!("k{i:05}").as_bytes()).unwrap();
        }
        txn.commit().unwrap();
        let mut export = db.export().unwrap();
        let pinned_txid = export.txid();
        // The database moves on while the export is read.
        let mut txn = db.begin_write().unwrap();
        for i in 0..3000u32 {
            txn.put(b"key", format!("n{i:05}").as_bytes(), &[1u8; 500])
                .unwrap();
        }
        txn.delete(b"key", b"big").unwrap();
        txn.commit().unwrap();
        db.defrag().unwrap();
        let mut image = Vec::new();
        while let Some(chunk) = export.read_chunk(7).unwrap() {
            assert!(chunk.len() <= 7 * PAGE_BYTES);
            image.extend_from_slice(&chunk);
        }
        assert_eq!(image.len() as u64, export.image_bytes());
        let report = check_image(image.clone()).unwrap();
        assert!(report.is_ok(), "{:?}", report.problems);
        let read = ReadTxn::from_image(image).unwrap();
        assert_eq!(read.txid(), pinned_txid);
        assert_eq!(read.get(b"key", b"k00000").unwrap(), None);
        assert_eq!(
            read.get(b"key", b"k02999").unwrap(),
            Some(&[183u8; 300][..])
        );
        assert_eq!(
            read.get(b"key", b"big").unwrap().map(<[u8]>::len),
            Some(50_000)
        );
        assert_eq!(read.get(b"key", b"n00000").unwrap(), None);
    }
}
