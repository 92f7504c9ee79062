//! The HPACK header-block decoder (RFC 7541 §6): static and dynamic tables, table-size
//! updates, integer and string primitives, Huffman strings.
//!
//! Invariants:
//! - The dynamic table never holds more than `table_size` bytes (entry size = name +
//!   value + 32, §4.1), and `table_size` never exceeds `table_size_max`, the
//!   SETTINGS_HEADER_TABLE_SIZE we advertised (§6.3: larger is a decoding error).
//! - A table-size update is only accepted before the first field of a block (§4.2).
//! - Every length read from the wire is checked against the bytes actually present
//!   before anything is allocated, so a hostile block cannot make us allocate more than
//!   its own size (times Huffman's at most 8/5 expansion).

use std::collections::VecDeque;

use bytes::Bytes;

use super::huffman;
use super::static_table::STATIC_TABLE;
use super::{HeaderList, HpackError};

/// RFC 7541 §4.1: each entry costs its name and value plus this much.
const ENTRY_OVERHEAD_BYTES: usize = 32;

/// Integers larger than this are rejected (they could only be lengths or indices, and
/// nothing we accept is near this big).
const INTEGER_MAX: usize = 1 << 28;
/// The last shift `decode_integer` applies: enough continuation bytes for INTEGER_MAX.
/// Continuation bytes of zero add nothing to the value, so the value check alone does not
/// bound the shift (RFC 7541 §5.1: an encoding too long in octets is a decoding error).
const INTEGER_SHIFT_MAX: u32 = INTEGER_MAX.ilog2();

pub struct Decoder {
    /// Newest entry first (dynamic index 62 is `dynamic[0]`).
    dynamic: VecDeque<(Bytes, Bytes)>,
    dynamic_bytes: usize,
    table_size: usize,
    table_size_max: usize,
}

fn error(what: &str) -> HpackError {
    HpackError(what.to_string())
}

impl Decoder {
    pub fn new(table_size_max: usize) -> Decoder {
        Decoder {
            dynamic: VecDeque::new(),
            dynamic_bytes: 0,
            table_size: table_size_max,
            table_size_max,
        }
    }

    /// Decodes one complete header block.
    pub fn decode(&mut self, block: &[u8]) -> Result<HeaderList, HpackError> {
        let mut list = HeaderList::default();
        let mut pos = 0;
        while pos < block.len() {
            let first = block[pos];
            if first & 0x80 != 0 {
                // §6.1 Indexed Header Field.
                let index = decode_integer(block, &mut pos, 7)?;
                let (name, value) = self.entry(index)?;
                list.push(name, value);
            } else if first & 0x40 != 0 {
                // §6.2.1 Literal with Incremental Indexing.
                let (name, value) = self.literal(block, &mut pos, 6)?;
                self.insert(name.clone(), value.clone());
                list.push(name, value);
            } else if first & 0x20 != 0 {
                // §6.3 Dynamic Table Size Update: only at the start of a block (§4.2).
                if !list.fields.is_empty() {
                    return Err(error("table size update after a header field"));
                }
                let size = decode_integer(block, &mut pos, 5)?;
                if size > self.table_size_max {
                    return Err(error("table size update above SETTINGS_HEADER_TABLE_SIZE"));
                }
                self.table_size = size;
                self.evict_to(size);
            } else {
                // §6.2.2 without indexing (0000) and §6.2.3 never indexed (0001).
                let (name, value) = self.literal(block, &mut pos, 4)?;
                list.push(name, value);
            }
        }
        Ok(list)
    }

    /// A field by its index in the combined static + dynamic address space (§2.3.3).
    fn entry(&self, index: usize) -> Result<(Bytes, Bytes), HpackError> {
        match index {
            0 => Err(error("index 0")),
            1..=61 => {
                let (name, value) = STATIC_TABLE[index - 1];
                Ok((
                    Bytes::from_static(name.as_bytes()),
                    Bytes::from_static(value.as_bytes()),
                ))
            }
            _ => self
                .dynamic
                .get(index - 62)
                .cloned()
                .ok_or_else(|| error("index out of range")),
        }
    }

    /// A literal field whose name is indexed (nonzero prefix) or literal.
    fn literal(
        &self,
        block: &[u8],
        pos: &mut usize,
        prefix_bits: u8,
    ) -> Result<(Bytes, Bytes), HpackError> {
        let name_index = decode_integer(block, pos, prefix_bits)?;
        let name = if name_index == 0 {
            decode_string(block, pos)?
        } else {
            self.entry(name_index)?.0
        };
        let value = decode_string(block, pos)?;
        Ok((name, value))
    }

    fn insert(&mut self, name: Bytes, value: Bytes) {
        let size = name.len() + value.len() + ENTRY_OVERHEAD_BYTES;
        // §4.4: an entry larger than the table empties it and is not added.
        if size > self.table_size {
            self.evict_to(0);
            return;
        }
        self.evict_to(self.table_size - size);
        self.dynamic.push_front((name, value));
        self.dynamic_bytes += size;
        debug_assert!(self.dynamic_bytes <= self.table_size);
    }

    fn evict_to(&mut self, bytes: usize) {
        while self.dynamic_bytes > bytes {
            let (name, value) = self.dynamic.pop_back().expect("nonzero size means entries");
            self.dynamic_bytes -= name.len() + value.len() + ENTRY_OVERHEAD_BYTES;
        }
    }
}

impl HeaderList {
    fn push(&mut self, name: Bytes, value: Bytes) {
        self.list_size += name.len() + value.len() + ENTRY_OVERHEAD_BYTES;
        self.fields.push((name, value));
    }
}

/// §5.1 integer with an N-bit prefix.
fn decode_integer(block: &[u8], pos: &mut usize, prefix_bits: u8) -> Result<usize, HpackError> {
    let mask = (1u16 << prefix_bits) as usize - 1;
    let first = *block.get(*pos).ok_or_else(|| error("truncated integer"))? as usize & mask;
    *pos += 1;
    if first < mask {
        return Ok(first);
    }
    let mut value = mask;
    let mut shift = 0;
    loop {
        let byte = *block.get(*pos).ok_or_else(|| error("truncated integer"))?;
        *pos += 1;
        value += ((byte & 0x7f) as usize) << shift;
        if value > INTEGER_MAX {
            return Err(error("integer too large"));
        }
        if byte & 0x80 == 0 {
            return Ok(value);
        }
        shift += 7;
        if shift > INTEGER_SHIFT_MAX {
            return Err(error("integer encoding too long"));
        }
    }
}

/// §5.2 string literal, Huffman-coded or raw.
fn decode_string(block: &[u8], pos: &mut usize) -> Result<Bytes, HpackError> {
    let huffman_coded = *block.get(*pos).ok_or_else(|| error("truncated string"))? & 0x80 != 0;
    let length = decode_integer(block, pos, 7)?;
    let end = pos.checked_add(length).filter(|&end| end <= block.len());
    let end = end.ok_or_else(|| error("string longer than the block"))?;
    let raw = &block[*pos..end];
    *pos = end;
    if !huffman_coded {
        return Ok(Bytes::copy_from_slice(raw));
    }
    let mut out = Vec::with_capacity(raw.len() * 8 / 5 + 1);
    huffman::decode(raw, &mut out)
        .map_err(|e| HpackError(format!("invalid Huffman string: {e:?}")))?;
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_per_rfc_7541_c1() {
        // C.1.1: 10 with a 5-bit prefix; C.1.2: 1337 with a 5-bit prefix; C.1.3: 42, 8-bit.
        assert_eq!(decode_integer(&[0x0a], &mut 0, 5).unwrap(), 10);
        assert_eq!(
            decode_integer(&[0x1f, 0x9a, 0x0a], &mut 0, 5).unwrap(),
            1337
        );
        assert_eq!(decode_integer(&[0x2a], &mut 0, 8).unwrap(), 42);
    }

    #[test]
    fn rejects_oversized_and_truncated_integers() {
        assert!(decode_integer(&[0x1f, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f], &mut 0, 5).is_err());
        assert!(decode_integer(&[0x1f, 0x80], &mut 0, 5).is_err());
    }

    /// Found by the hpack_decode fuzz target (crash-3c982747): a table size update whose
    /// integer has 23 continuation bytes of 0x80 keeps its value at 31 while the shift passes
    /// 64 ("attempt to shift left with overflow"; in a release build the shift wraps).
    #[test]
    fn integer_with_many_zero_continuation_bytes_is_an_error() {
        let mut long = vec![0x1f];
        long.extend([0x80; 10]);
        long.push(0x01);
        assert!(decode_integer(&long, &mut 0, 5).is_err());
        // Four continuation bytes reach shift 28, still within INTEGER_MAX's bits.
        assert_eq!(
            decode_integer(&[0x1f, 0x80, 0x80, 0x80, 0x80, 0x00], &mut 0, 5).unwrap(),
            31
        );
        let mut crash = vec![0x33, 0x3f];
        crash.extend([0x80; 23]);
        crash.extend([0xc6, 0xfb, 0xc7, 0xc7]);
        assert!(Decoder::new(4096).decode(&crash).is_err());
    }

    #[test]
    fn size_update_after_a_field_is_an_error() {
        // Indexed :method GET, then a size update to 0.
        assert!(Decoder::new(4096).decode(&[0x82, 0x20]).is_err());
        // At the start it is fine.
        assert!(Decoder::new(4096).decode(&[0x20, 0x82]).is_ok());
    }

    #[test]
    fn entry_larger_than_the_table_empties_it() {
        let mut d = Decoder::new(64);
        // Literal with incremental indexing, new name "a" (1 byte), value of 40 bytes:
        // 1 + 40 + 32 = 73 > 64.
        let mut block = vec![0x40, 0x01, b'a', 40];
        block.extend(std::iter::repeat_n(b'x', 40));
        d.decode(&block).unwrap();
        assert!(d.dynamic.is_empty());
        assert_eq!(d.dynamic_bytes, 0);
    }
}
