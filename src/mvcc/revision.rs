//! Revisions and their backend key encoding.
//!
//! A [`Revision`] names one change: `main` is the store revision of the write transaction
//! that made it, `sub` its position inside that transaction (0, 1, 2, …). Revisions order
//! by `(main, sub)`.
//!
//! In the backend's `key` bucket every change is stored under its revision, encoded as in
//! etcd (`server/mvcc/revision.go`, `kvstore.go`), so that byte order equals revision order:
//!
//! ```text
//!  0               8   9               17  18
//! +----------------+---+----------------+---+
//! | main (u64, BE) |'_'| sub (u64, BE)  |'t'|   <- the 't' mark only on tombstones
//! +----------------+---+----------------+---+
//! ```
//!
//! A put is stored under the 17-byte key; a delete under the same 17 bytes followed by the
//! tombstone mark `'t'` (18 bytes), its value a `KeyValue` holding only the key. Revisions
//! are never negative in the key bucket, so big-endian bytes sort like the numbers.

/// Length of an unmarked revision key: 8 bytes main, `'_'`, 8 bytes sub.
pub const REVISION_KEY_LEN: usize = 8 + 1 + 8;
/// Length of a tombstone revision key: the unmarked key plus the mark byte.
pub const MARKED_REVISION_KEY_LEN: usize = REVISION_KEY_LEN + 1;
/// The byte that marks a tombstone (a delete) at the end of a revision key.
pub const TOMBSTONE_MARK: u8 = b't';

/// One change of the key space: `main` is the transaction's store revision, `sub` the
/// change's index inside it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Revision {
    pub main: i64,
    pub sub: i64,
}

/// A revision key as stored in the backend (17 bytes, or 18 for a tombstone).
pub type RevisionKey = [u8; MARKED_REVISION_KEY_LEN];

impl Revision {
    pub const fn new(main: i64, sub: i64) -> Self {
        Revision { main, sub }
    }

    /// Writes the 17-byte key for this revision into `out`.
    pub fn write_key(self, out: &mut [u8; REVISION_KEY_LEN]) {
        out[..8].copy_from_slice(&(self.main as u64).to_be_bytes());
        out[8] = b'_';
        out[9..].copy_from_slice(&(self.sub as u64).to_be_bytes());
    }

    /// The 17-byte backend key of a put at this revision.
    pub fn to_key(self) -> [u8; REVISION_KEY_LEN] {
        let mut out = [0u8; REVISION_KEY_LEN];
        self.write_key(&mut out);
        out
    }

    /// The backend key of this revision, 18 bytes with the tombstone mark when `tombstone`.
    /// Returns the buffer and the number of bytes used.
    pub fn to_marked_key(self, tombstone: bool) -> (RevisionKey, usize) {
        let mut out = [0u8; MARKED_REVISION_KEY_LEN];
        let (head, _) = out.split_at_mut(REVISION_KEY_LEN);
        self.write_key(head.try_into().expect("17-byte prefix"));
        if tombstone {
            out[REVISION_KEY_LEN] = TOMBSTONE_MARK;
            (out, MARKED_REVISION_KEY_LEN)
        } else {
            (out, REVISION_KEY_LEN)
        }
    }

    /// Decodes a backend revision key (17 bytes, or 18 with the tombstone mark).
    /// Returns `None` for anything else, so corrupt keys become errors, not panics.
    pub fn from_key(key: &[u8]) -> Option<Revision> {
        let well_formed = match key.len() {
            REVISION_KEY_LEN => true,
            MARKED_REVISION_KEY_LEN => key[REVISION_KEY_LEN] == TOMBSTONE_MARK,
            _ => false,
        };
        if !well_formed || key[8] != b'_' {
            return None;
        }
        let main = u64::from_be_bytes(key[..8].try_into().ok()?) as i64;
        let sub = u64::from_be_bytes(key[9..17].try_into().ok()?) as i64;
        Some(Revision { main, sub })
    }
}

/// Whether a backend revision key carries the tombstone mark.
pub fn is_tombstone_key(key: &[u8]) -> bool {
    key.len() == MARKED_REVISION_KEY_LEN && key[REVISION_KEY_LEN] == TOMBSTONE_MARK
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_layout_matches_etcd() {
        let key = Revision::new(0x0102, 3).to_key();
        assert_eq!(key, [0, 0, 0, 0, 0, 0, 1, 2, b'_', 0, 0, 0, 0, 0, 0, 0, 3]);
        assert_eq!(Revision::from_key(&key), Some(Revision::new(0x0102, 3)));
        let (marked, n) = Revision::new(5, 0).to_marked_key(true);
        assert_eq!(n, 18);
        assert!(is_tombstone_key(&marked[..n]));
        assert_eq!(Revision::from_key(&marked[..n]), Some(Revision::new(5, 0)));
        assert!(!is_tombstone_key(&key));
    }

    #[test]
    fn byte_order_is_revision_order() {
        let revs = [
            Revision::new(1, 0),
            Revision::new(1, 1),
            Revision::new(2, 0),
            Revision::new(256, 0),
        ];
        for w in revs.windows(2) {
            assert!(w[0] < w[1]);
            assert!(w[0].to_key() < w[1].to_key());
        }
    }

    #[test]
    fn corrupt_keys_rejected() {
        assert_eq!(Revision::from_key(b"short"), None);
        let mut key = Revision::new(1, 0).to_key();
        key[8] = b'x';
        assert_eq!(Revision::from_key(&key), None);
        let mut marked = [0u8; 18];
        marked[8] = b'_';
        marked[17] = b'x';
        assert_eq!(Revision::from_key(&marked), None);
    }
}
