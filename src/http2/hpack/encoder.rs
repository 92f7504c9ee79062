//! Stateless HPACK encoding (RFC 7541 §5, §6.1, §6.2.2): static-table indices and
//! literals without indexing, raw (non-Huffman) strings. See the parent module for why.

use super::static_table::{find, Match};

/// Appends `value` as an HPACK integer with an N-bit prefix (RFC 7541 §5.1);
/// `first_byte_bits` are the representation's pattern bits above the prefix.
pub fn encode_integer(out: &mut Vec<u8>, value: usize, prefix_bits: u8, first_byte_bits: u8) {
    assert!((1..=8).contains(&prefix_bits));
    let max_prefix = (1usize << prefix_bits) - 1;
    if value < max_prefix {
        out.push(first_byte_bits | value as u8);
        return;
    }
    out.push(first_byte_bits | max_prefix as u8);
    let mut rest = value - max_prefix;
    while rest >= 128 {
        out.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.push(rest as u8);
}

fn encode_string(out: &mut Vec<u8>, s: &[u8]) {
    encode_integer(out, s.len(), 7, 0x00);
    out.extend_from_slice(s);
}

/// Appends one header field: fully indexed when the static table has it, else a literal
/// without indexing (with an indexed name when the static table has the name).
pub fn encode_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    match find(name, value) {
        Match::Full(static_index) => encode_integer(out, static_index, 7, 0x80),
        Match::Name(static_index) => {
            encode_integer(out, static_index, 4, 0x00);
            encode_string(out, value);
        }
        Match::None => {
            out.push(0x00);
            encode_string(out, name);
            encode_string(out, value);
        }
    }
}
