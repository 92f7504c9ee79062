//! bbolt's on-disk structures: constants, the meta page and page headers, as pure
//! encode/decode with no I/O. The layouts are specified in `storage/docs/bbolt.md`; this
//! file is their only implementation.
//!
//! Invariants: every decoder takes untrusted bytes and returns `Error::Corrupted` for a
//! value out of range; nothing indexes a slice without a bounds check. All integers are
//! little-endian (bbolt writes its structs in the host's order, and every platform etcd
//! ships for is little-endian).

use super::Error;

/// The page size we write (Linux's on x86-64 and arm64, which bbolt takes from the OS when
/// it creates a file). A file records its own page size in its meta; readers honour it.
pub const PAGE_BYTES: usize = 4096;
/// Smallest and largest page size a reader accepts from a meta page.
pub const PAGE_BYTES_MIN: usize = 1024;
pub const PAGE_BYTES_MAX: usize = 1 << 16;

pub const MAGIC: u32 = 0xED0C_DAED;
pub const VERSION: u32 = 2;

/// Every page starts with: id u64, flags u16, count u16, overflow u32.
pub const PAGE_HEADER_BYTES: usize = 16;
/// A leaf element: flags u32, pos u32, ksize u32, vsize u32.
pub const LEAF_ELEMENT_BYTES: usize = 16;
/// A branch element: pos u32, ksize u32, pgid u64.
pub const BRANCH_ELEMENT_BYTES: usize = 16;
/// A bucket value starts with: root pgid u64 (0 = inline), sequence u64.
pub const BUCKET_HEADER_BYTES: usize = 16;
/// The meta struct after the page header: magic, version, page size, flags (u32 each),
/// root bucket (root u64, sequence u64), freelist u64, page count u64, txid u64, checksum u64.
pub const META_BYTES: usize = 64;
/// The checksum covers the meta bytes before it.
pub const META_CHECKSUM_AT: usize = 56;

pub const FLAG_BRANCH: u16 = 0x01;
pub const FLAG_LEAF: u16 = 0x02;
pub const FLAG_META: u16 = 0x04;
pub const FLAG_FREELIST: u16 = 0x10;

/// Leaf element flag: the value is a bucket header (a sub-bucket), not a plain value.
pub const ELEMENT_BUCKET: u32 = 0x01;

/// A freelist page whose header count is this holds the real count in its first u64.
pub const FREELIST_COUNT_OVERFLOW: u16 = 0xFFFF;
/// A meta freelist pgid meaning "no freelist page" (bbolt's NoFreelistSync).
pub const NO_FREELIST: u64 = u64::MAX;

/// bbolt's limits on keys and values (`MaxKeySize`, `MaxValueSize`).
pub const KEY_BYTES_MAX: usize = 32_768;
pub const VALUE_BYTES_MAX: usize = (1 << 31) - 2;

/// A bucket is stored inline in its parent's leaf (no page of its own) when it has no
/// sub-buckets and its would-be leaf page fits in this many bytes (bbolt's
/// `maxInlineBucketSize`, a quarter page).
pub const fn inline_bucket_bytes_max(page_bytes: usize) -> usize {
    page_bytes / 4
}

const _: () = assert!(PAGE_HEADER_BYTES + META_BYTES <= PAGE_BYTES_MIN);
const _: () = assert!(PAGE_BYTES >= PAGE_BYTES_MIN && PAGE_BYTES <= PAGE_BYTES_MAX);

/// FNV-1a, 64 bits: the meta page checksum.
pub fn fnv1a_64(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET_BASIS, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    })
}

pub fn u16_at(bytes: &[u8], at: usize) -> Result<u16, Error> {
    bytes
        .get(at..at + 2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .ok_or_else(|| Error::Corrupted(format!("u16 at {at} past {} bytes", bytes.len())))
}

pub fn u32_at(bytes: &[u8], at: usize) -> Result<u32, Error> {
    bytes
        .get(at..at + 4)
        .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
        .ok_or_else(|| Error::Corrupted(format!("u32 at {at} past {} bytes", bytes.len())))
}

pub fn u64_at(bytes: &[u8], at: usize) -> Result<u64, Error> {
    bytes
        .get(at..at + 8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
        .ok_or_else(|| Error::Corrupted(format!("u64 at {at} past {} bytes", bytes.len())))
}

/// The header at the start of every page (and of an inline bucket's page).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageHeader {
    pub pgid: u64,
    pub flags: u16,
    pub count: u16,
    /// Pages after this one that belong to it (a page larger than the page size).
    pub overflow: u32,
}

impl PageHeader {
    pub fn encode(&self) -> [u8; PAGE_HEADER_BYTES] {
        let mut out = [0u8; PAGE_HEADER_BYTES];
        out[0..8].copy_from_slice(&self.pgid.to_le_bytes());
        out[8..10].copy_from_slice(&self.flags.to_le_bytes());
        out[10..12].copy_from_slice(&self.count.to_le_bytes());
        out[12..16].copy_from_slice(&self.overflow.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<PageHeader, Error> {
        Ok(PageHeader {
            pgid: u64_at(bytes, 0)?,
            flags: u16_at(bytes, 8)?,
            count: u16_at(bytes, 10)?,
            overflow: u32_at(bytes, 12)?,
        })
    }
}

/// The meta page's contents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    pub page_bytes: u32,
    pub flags: u32,
    /// The root bucket: the page of the tree whose leaf elements are the top-level buckets.
    pub root_pgid: u64,
    pub root_sequence: u64,
    pub freelist_pgid: u64,
    /// The high-water mark: pages `0..page_count` make up the database.
    pub page_count: u64,
    pub txid: u64,
}

impl Meta {
    /// The meta bytes (after the page header), checksum included.
    pub fn encode(&self) -> [u8; META_BYTES] {
        let mut out = [0u8; META_BYTES];
        out[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        out[4..8].copy_from_slice(&VERSION.to_le_bytes());
        out[8..12].copy_from_slice(&self.page_bytes.to_le_bytes());
        out[12..16].copy_from_slice(&self.flags.to_le_bytes());
        out[16..24].copy_from_slice(&self.root_pgid.to_le_bytes());
        out[24..32].copy_from_slice(&self.root_sequence.to_le_bytes());
        out[32..40].copy_from_slice(&self.freelist_pgid.to_le_bytes());
        out[40..48].copy_from_slice(&self.page_count.to_le_bytes());
        out[48..56].copy_from_slice(&self.txid.to_le_bytes());
        let checksum = fnv1a_64(&out[..META_CHECKSUM_AT]);
        out[56..64].copy_from_slice(&checksum.to_le_bytes());
        out
    }

    /// Decodes and validates the meta bytes (magic, version, checksum, page size, and that
    /// the root and freelist lie below the high-water mark).
    pub fn decode(bytes: &[u8]) -> Result<Meta, Error> {
        if bytes.len() < META_BYTES {
            return Err(Error::Corrupted(format!(
                "meta is {} bytes, not {META_BYTES}",
                bytes.len()
            )));
        }
        let magic = u32_at(bytes, 0)?;
        if magic != MAGIC {
            return Err(Error::Corrupted(format!(
                "meta magic {magic:#010x} is not bbolt's"
            )));
        }
        let version = u32_at(bytes, 4)?;
        if version != VERSION {
            return Err(Error::Corrupted(format!(
                "meta version {version}, expected {VERSION}"
            )));
        }
        let stored = u64_at(bytes, META_CHECKSUM_AT)?;
        let computed = fnv1a_64(&bytes[..META_CHECKSUM_AT]);
        if stored != computed {
            return Err(Error::Corrupted(format!(
                "meta checksum {stored:#018x}, computed {computed:#018x}"
            )));
        }
        let meta = Meta {
            page_bytes: u32_at(bytes, 8)?,
            flags: u32_at(bytes, 12)?,
            root_pgid: u64_at(bytes, 16)?,
            root_sequence: u64_at(bytes, 24)?,
            freelist_pgid: u64_at(bytes, 32)?,
            page_count: u64_at(bytes, 40)?,
            txid: u64_at(bytes, 48)?,
        };
        let page_bytes = meta.page_bytes as usize;
        if !(PAGE_BYTES_MIN..=PAGE_BYTES_MAX).contains(&page_bytes) || !page_bytes.is_power_of_two()
        {
            return Err(Error::Corrupted(format!("meta page size {page_bytes}")));
        }
        if meta.root_pgid < 2 || meta.root_pgid >= meta.page_count {
            return Err(Error::Corrupted(format!(
                "root page {} outside 2..{}",
                meta.root_pgid, meta.page_count
            )));
        }
        if meta.freelist_pgid != NO_FREELIST
            && (meta.freelist_pgid < 2 || meta.freelist_pgid >= meta.page_count)
        {
            return Err(Error::Corrupted(format!(
                "freelist page {} outside 2..{}",
                meta.freelist_pgid, meta.page_count
            )));
        }
        Ok(meta)
    }

    /// The whole meta page `pgid` (0 or 1), padded to `page_bytes`.
    pub fn page(&self, pgid: u64) -> Vec<u8> {
        let mut page = vec![0u8; self.page_bytes as usize];
        let header = PageHeader {
            pgid,
            flags: FLAG_META,
            count: 0,
            overflow: 0,
        };
        page[..PAGE_HEADER_BYTES].copy_from_slice(&header.encode());
        page[PAGE_HEADER_BYTES..PAGE_HEADER_BYTES + META_BYTES].copy_from_slice(&self.encode());
        page
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_64_matches_the_published_vectors() {
        // From the FNV reference test suite (draft-eastlake-fnv, FNV-1a 64-bit).
        assert_eq!(fnv1a_64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a_64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a_64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn meta_round_trips_and_rejects_damage() {
        let meta = Meta {
            page_bytes: 4096,
            flags: 0,
            root_pgid: 3,
            root_sequence: 0,
            freelist_pgid: 2,
            page_count: 4,
            txid: 1,
        };
        let bytes = meta.encode();
        assert_eq!(Meta::decode(&bytes).unwrap(), meta);
        for at in 0..META_BYTES {
            let mut bad = bytes;
            bad[at] ^= 0x40;
            assert!(Meta::decode(&bad).is_err(), "flipped byte {at} accepted");
        }
        assert!(Meta::decode(&bytes[..10]).is_err());
    }
}
