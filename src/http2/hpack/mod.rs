//! HPACK (RFC 7541) for the server side of the connection.
//!
//! - Decoding is our own ([`decoder`], with [`huffman`]): static + dynamic table,
//!   table-size updates, Huffman strings. Every failure is one typed [`HpackError`] that
//!   the connection turns into a COMPRESSION_ERROR connection error (RFC 9113 §4.3); the
//!   dynamic table never grows past the SETTINGS_HEADER_TABLE_SIZE we advertised. (We
//!   first used the `loona-hpack` crate; its Huffman decoder rebuilt a hash-map table for
//!   every string and cost 40% of a network core under load.)
//! - Encoding is our own and deliberately stateless ([`encoder`]): responses use static
//!   table indices and literals *without indexing*, never the dynamic table and never
//!   Huffman. That makes each encoded block a pure function of its fields, so the fixed
//!   gRPC response blocks are encoded once and reused, and the peer's table size setting
//!   never has to be tracked (RFC 7541 §4.2 allows an encoder to use less than the limit).
//!
//! Invariant: one [`Decoder`] per connection, fed every header block in receive order,
//! including blocks of streams we refuse, or the peer's and our tables would diverge.

pub mod decoder;
pub mod encoder;
pub mod huffman;
pub mod static_table;

pub use decoder::Decoder;

use bytes::Bytes;

/// Why a header block could not be decoded. Always a COMPRESSION_ERROR on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HpackError(pub String);

impl std::fmt::Display for HpackError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HPACK decoding error: {}", self.0)
    }
}

impl std::error::Error for HpackError {}

/// A decoded header list, in block order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HeaderList {
    pub fields: Vec<(Bytes, Bytes)>,
    /// Size as RFC 9113 §6.5.2 counts it for SETTINGS_MAX_HEADER_LIST_SIZE:
    /// name + value + 32 per field.
    pub list_size: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses RFC-style hex ("8286 8441 ...").
    fn hex(s: &str) -> Vec<u8> {
        let digits: Vec<u8> = s.bytes().filter(|b| b.is_ascii_hexdigit()).collect();
        digits
            .chunks(2)
            .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
            .collect()
    }

    fn fields(list: &HeaderList) -> Vec<(String, String)> {
        list.fields
            .iter()
            .map(|(n, v)| {
                (
                    String::from_utf8(n.to_vec()).unwrap(),
                    String::from_utf8(v.to_vec()).unwrap(),
                )
            })
            .collect()
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn rfc7541_c2_single_fields() {
        // C.2.1 literal with indexing, C.2.2 without indexing, C.2.3 never indexed, C.2.4 indexed.
        let cases = [
            (
                "400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572",
                ("custom-key", "custom-header"),
            ),
            (
                "040c 2f73 616d 706c 652f 7061 7468",
                (":path", "/sample/path"),
            ),
            (
                "1008 7061 7373 776f 7264 0673 6563 7265 74",
                ("password", "secret"),
            ),
            ("82", (":method", "GET")),
        ];
        for (wire, expected) in cases {
            let mut d = Decoder::new(4096);
            assert_eq!(fields(&d.decode(&hex(wire)).unwrap()), pairs(&[expected]));
        }
    }

    const C3_C4_EXPECTED: [&[(&str, &str)]; 3] = [
        &[
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/"),
            (":authority", "www.example.com"),
        ],
        &[
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/"),
            (":authority", "www.example.com"),
            ("cache-control", "no-cache"),
        ],
        &[
            (":method", "GET"),
            (":scheme", "https"),
            (":path", "/index.html"),
            (":authority", "www.example.com"),
            ("custom-key", "custom-value"),
        ],
    ];

    fn run_sequence(table_size: usize, wires: [&str; 3], expected: [&[(&str, &str)]; 3]) {
        let mut d = Decoder::new(4096);
        if table_size != 4096 {
            // The encoder in C.5/C.6 works with a 256-octet table: announce it in-band.
            let mut update = Vec::new();
            encoder::encode_integer(&mut update, table_size, 5, 0x20);
            update.push(0x82);
            d.decode(&update).unwrap();
        }
        for (wire, want) in wires.iter().zip(expected) {
            assert_eq!(
                fields(&d.decode(&hex(wire)).unwrap()),
                pairs(want),
                "block {wire}"
            );
        }
    }

    #[test]
    fn rfc7541_c3_requests_without_huffman() {
        run_sequence(
            4096,
            [
                "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
                "8286 84be 5808 6e6f 2d63 6163 6865",
                "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
            ],
            C3_C4_EXPECTED,
        );
    }

    #[test]
    fn rfc7541_c4_requests_with_huffman() {
        run_sequence(
            4096,
            [
                "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
                "8286 84be 5886 a8eb 1064 9cbf",
                "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
            ],
            C3_C4_EXPECTED,
        );
    }

    const C5_C6_EXPECTED: [&[(&str, &str)]; 3] = [
        &[
            (":status", "302"),
            ("cache-control", "private"),
            ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
            ("location", "https://www.example.com"),
        ],
        &[
            (":status", "307"),
            ("cache-control", "private"),
            ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
            ("location", "https://www.example.com"),
        ],
        &[
            (":status", "200"),
            ("cache-control", "private"),
            ("date", "Mon, 21 Oct 2013 20:13:22 GMT"),
            ("location", "https://www.example.com"),
            ("content-encoding", "gzip"),
            (
                "set-cookie",
                "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1",
            ),
        ],
    ];

    #[test]
    fn rfc7541_c5_responses_without_huffman_with_eviction() {
        run_sequence(
            256,
            [
                "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 \
                 2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70 \
                 6c65 2e63 6f6d",
                "4803 3330 37c1 c0bf",
                "88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d \
                 54c0 5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049 \
                 5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e \
                 3d31",
            ],
            C5_C6_EXPECTED,
        );
    }

    #[test]
    fn rfc7541_c6_responses_with_huffman_with_eviction() {
        run_sequence(
            256,
            [
                "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6 \
                 2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
                "4883 640e ffc1 c0bf",
                "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab \
                 77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f \
                 9587 3160 65c0 03ed 4ee5 b106 3d50 07",
            ],
            C5_C6_EXPECTED,
        );
    }

    #[test]
    fn rfc7541_c2_encode_where_deterministic() {
        // Our encoder never indexes, so C.2.2 (literal without indexing, indexed name) and
        // C.2.4 (fully indexed) are the vectors it must reproduce byte for byte.
        let mut out = Vec::new();
        encoder::encode_field(&mut out, b":path", b"/sample/path");
        assert_eq!(out, hex("040c 2f73 616d 706c 652f 7061 7468"));
        out.clear();
        encoder::encode_field(&mut out, b":method", b"GET");
        assert_eq!(out, hex("82"));
        // C.1 integer examples: 10 in a 5-bit prefix, 1337 in a 5-bit prefix, 42 in 8 bits.
        out.clear();
        encoder::encode_integer(&mut out, 10, 5, 0);
        encoder::encode_integer(&mut out, 1337, 5, 0);
        encoder::encode_integer(&mut out, 42, 8, 0);
        assert_eq!(out, hex("0a 1f9a 0a 2a"));
    }

    #[test]
    fn encoder_output_round_trips_through_decoder() {
        let input: &[(&[u8], &[u8])] = &[
            (b":status", b"200"),
            (b"content-type", b"application/grpc"),
            (b"grpc-status", b"13"),
            (b"grpc-message", b"%E4%BD%A0"),
            (b"x-long", &[b'v'; 300]),
        ];
        let mut out = Vec::new();
        for (n, v) in input {
            encoder::encode_field(&mut out, n, v);
        }
        let list = Decoder::new(4096).decode(&out).unwrap();
        assert_eq!(list.fields.len(), input.len());
        for ((n, v), (dn, dv)) in input.iter().zip(&list.fields) {
            assert_eq!((&n[..], &v[..]), (&dn[..], &dv[..]));
        }
    }

    #[test]
    fn malformed_blocks_are_errors() {
        let cases: &[(&str, &str)] = &[
            (
                "integer with too many continuation octets",
                "1f ffff ffff ffff ffff ffff 7f",
            ),
            ("truncated integer", "1f ff"),
            ("truncated string", "400a 6375 73"),
            ("index 0", "80"),
            (
                "index past the static table with an empty dynamic table",
                "be",
            ),
            ("index far out of range", "ff ff 7f"),
            ("Huffman padding not all ones", "0001 61 81 00"),
            ("Huffman padding longer than 7 bits", "0001 61 82 1f ff"),
            (
                "explicit EOS symbol in Huffman data",
                "0001 61 84 ff ff ff ff",
            ),
            ("table size update above the advertised limit", "3fe9 26 82"),
            ("table size update after a field", "82 20"),
        ];
        for (what, wire) in cases {
            let mut d = Decoder::new(4096);
            assert!(d.decode(&hex(wire)).is_err(), "{what}: {wire} decoded");
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for len in 0..64usize {
            for _ in 0..200 {
                let block: Vec<u8> = (0..len)
                    .map(|_| {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        seed as u8
                    })
                    .collect();
                let _ = Decoder::new(4096).decode(&block);
            }
        }
    }
}
