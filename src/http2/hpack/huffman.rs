//! HPACK's Huffman code (RFC 7541 §5.2, Appendix B).
//!
//! The code is *canonical*: sorting symbols by (code length, symbol) and counting up
//! reproduces every code in Appendix B. So the table below stores only the 257 code
//! lengths, the codes are derived from them once, and decoding needs no tree: a code of
//! length L is valid exactly when it lies in `[first_code[L], first_code[L] + count[L])`.
//!
//! Decoding rules enforced (RFC 7541 §5.2): the EOS symbol (256) must never appear in a
//! string; padding after the last symbol is at most 7 bits and all ones (a prefix of EOS).

use std::sync::OnceLock;

/// Code length in bits of each symbol 0..=255 and EOS (256), from RFC 7541 Appendix B.
const CODE_LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28,
    28, 28, 28, 28, 28, 28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5,
    5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6,
    6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22, 22, 23, 22,
    23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22,
    21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20,
    22, 22, 22, 23, 22, 22, 23, 26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19,
    21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22,
    22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, 30,
];

const EOS: u16 = 256;
const CODE_LENGTH_MIN: usize = 5;
const CODE_LENGTH_MAX: usize = 30;

/// The canonical-code decoding tables, derived from [`CODE_LENGTHS`].
struct Canonical {
    /// First code of each length, as an integer of that many bits.
    first_code: [u32; CODE_LENGTH_MAX + 1],
    /// Number of codes of each length.
    count: [u32; CODE_LENGTH_MAX + 1],
    /// Index into `symbols` of the first symbol of each length.
    first_index: [u16; CODE_LENGTH_MAX + 1],
    /// Symbols sorted by (length, symbol).
    symbols: [u16; 257],
    /// Code of each symbol.
    codes: [u32; 257],
}

fn canonical() -> &'static Canonical {
    static TABLES: OnceLock<Canonical> = OnceLock::new();
    TABLES.get_or_init(|| {
        let mut symbols: Vec<u16> = (0..257).collect();
        symbols.sort_by_key(|&s| (CODE_LENGTHS[s as usize], s));
        let mut t = Canonical {
            first_code: [0; CODE_LENGTH_MAX + 1],
            count: [0; CODE_LENGTH_MAX + 1],
            first_index: [0; CODE_LENGTH_MAX + 1],
            symbols: [0; 257],
            codes: [0; 257],
        };
        let mut code: u32 = 0;
        let mut previous_length = CODE_LENGTHS[symbols[0] as usize] as usize;
        for (i, &symbol) in symbols.iter().enumerate() {
            let length = CODE_LENGTHS[symbol as usize] as usize;
            if i > 0 {
                code = (code + 1) << (length - previous_length);
            }
            if t.count[length] == 0 {
                t.first_code[length] = code;
                t.first_index[length] = i as u16;
            }
            t.count[length] += 1;
            t.symbols[i] = symbol;
            t.codes[symbol as usize] = code;
            previous_length = length;
        }
        t
    })
}

/// Why a Huffman string is invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HuffmanError {
    /// The EOS symbol appeared inside the string.
    Eos,
    /// Padding longer than 7 bits, or not all ones.
    Padding,
}

/// Decodes a Huffman-coded string, appending the octets to `out`.
pub fn decode(input: &[u8], out: &mut Vec<u8>) -> Result<(), HuffmanError> {
    let t = canonical();
    // Bits not yet consumed, right-aligned in `acc`; `acc_bits` of them are valid.
    let mut acc: u64 = 0;
    let mut acc_bits: usize = 0;
    let mut next = 0;
    loop {
        while acc_bits <= 56 && next < input.len() {
            acc = (acc << 8) | input[next] as u64;
            acc_bits += 8;
            next += 1;
        }
        if acc_bits == 0 {
            return Ok(());
        }
        let mut matched = None;
        for length in CODE_LENGTH_MIN..=CODE_LENGTH_MAX.min(acc_bits) {
            let code = ((acc >> (acc_bits - length)) & ((1u64 << length) - 1)) as u32;
            let offset = code.wrapping_sub(t.first_code[length]);
            if offset < t.count[length] {
                let index = t.first_index[length] as usize + offset as usize;
                matched = Some((t.symbols[index], length));
                break;
            }
        }
        match matched {
            Some((EOS, _)) => return Err(HuffmanError::Eos),
            Some((symbol, length)) => {
                out.push(symbol as u8);
                acc_bits -= length;
                acc &= (1u64 << acc_bits).wrapping_sub(1);
            }
            None => {
                // No complete code left: only the end-of-string padding may remain.
                let all_ones = (1u64 << acc_bits) - 1;
                if next == input.len() && acc_bits <= 7 && acc == all_ones {
                    return Ok(());
                }
                return Err(HuffmanError::Padding);
            }
        }
    }
}

/// Appends the Huffman coding of `input`, padded with ones (RFC 7541 §5.2).
pub fn encode(input: &[u8], out: &mut Vec<u8>) {
    let t = canonical();
    let mut acc: u64 = 0;
    let mut acc_bits = 0;
    for &byte in input {
        let length = CODE_LENGTHS[byte as usize] as usize;
        acc = (acc << length) | t.codes[byte as usize] as u64;
        acc_bits += length;
        while acc_bits >= 8 {
            out.push((acc >> (acc_bits - 8)) as u8);
            acc_bits -= 8;
        }
        acc &= (1u64 << acc_bits) - 1;
    }
    if acc_bits > 0 {
        let pad = 8 - acc_bits;
        out.push(((acc << pad) | ((1 << pad) - 1)) as u8);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_codes_match_appendix_b_samples() {
        let t = canonical();
        let code = |s: usize| (t.codes[s], CODE_LENGTHS[s]);
        assert_eq!(code(b'0' as usize), (0x0, 5));
        assert_eq!(code(b'a' as usize), (0x3, 5));
        assert_eq!(code(b' ' as usize), (0x14, 6));
        assert_eq!(code(0), (0x1ff8, 13));
        assert_eq!(code(255), (0x3ffffee, 26));
        assert_eq!(code(256), (0x3fffffff, 30));
    }

    #[test]
    fn round_trips_every_byte_value() {
        let input: Vec<u8> = (0..=255)
            .chain(b"www.example.com".iter().copied())
            .collect();
        let mut coded = Vec::new();
        encode(&input, &mut coded);
        let mut decoded = Vec::new();
        decode(&coded, &mut decoded).unwrap();
        assert_eq!(decoded, input);
    }

    #[test]
    fn rfc_7541_c4_1_www_example_com() {
        let coded = [
            0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff,
        ];
        let mut out = Vec::new();
        decode(&coded, &mut out).unwrap();
        assert_eq!(out, b"www.example.com");
        let mut encoded = Vec::new();
        encode(b"www.example.com", &mut encoded);
        assert_eq!(encoded, coded);
    }

    #[test]
    fn rejects_eos_and_bad_padding() {
        let mut out = Vec::new();
        // 30 ones is EOS: forbidden inside a string.
        assert_eq!(
            decode(&[0xff, 0xff, 0xff, 0xff], &mut out),
            Err(HuffmanError::Eos)
        );
        // '0' (00000) padded with zeros instead of ones.
        assert_eq!(decode(&[0x00], &mut out), Err(HuffmanError::Padding));
        // A whole byte of padding (8 ones) after a complete symbol.
        assert_eq!(decode(&[0x07, 0xff], &mut out), Err(HuffmanError::Padding));
    }
}
