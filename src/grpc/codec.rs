//! gRPC-over-HTTP/2 wire details (grpc/doc/PROTOCOL-HTTP2.md): the 5-byte message prefix,
//! `grpc-timeout`, `grpc-message` percent-encoding, and the response header blocks.
//!
//! Message framing: `compressed-flag (1 byte) | length (4 bytes, big endian) | message`.

use std::sync::OnceLock;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};

use super::status::{Code, Status};
use crate::http2::hpack::encoder::encode_field;

pub const MESSAGE_PREFIX_LEN: usize = 5;

/// Largest message we send: etcd serves with `grpc.MaxSendMsgSize(math.MaxInt32)`. The
/// prefix could say up to 4 GiB - 1; a larger answer is refused as etcd refuses it.
pub const MESSAGE_SEND_BYTES_MAX: usize = i32::MAX as usize;

/// grpc-go's status for a message above [`MESSAGE_SEND_BYTES_MAX`].
pub fn message_too_large(len: usize) -> Status {
    Status::new(
        Code::ResourceExhausted,
        format!(
            "grpc: trying to send message larger than max ({len} vs. {MESSAGE_SEND_BYTES_MAX})"
        ),
    )
}

/// The 5-byte prefix of an uncompressed message of `len` bytes; Err(RESOURCE_EXHAUSTED)
/// above [`MESSAGE_SEND_BYTES_MAX`].
pub fn message_prefix(len: usize) -> Result<[u8; MESSAGE_PREFIX_LEN], Status> {
    if len > MESSAGE_SEND_BYTES_MAX {
        return Err(message_too_large(len));
    }
    let [a, b, c, d] = (len as u32).to_be_bytes();
    Ok([0, a, b, c, d])
}

/// Messages up to this size are copied behind their prefix into one buffer (one DATA
/// frame); larger ones are queued as prefix + the caller's `Bytes` (no copy).
const COALESCE_BYTES_MAX: usize = 64 * 1024;

/// Parses a 5-byte message prefix into (compressed, length).
pub fn parse_prefix(prefix: &[u8; MESSAGE_PREFIX_LEN]) -> (bool, usize) {
    let length = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]);
    (prefix[0] != 0, length as usize)
}

/// How many whole messages a buffer of back-to-back framed messages holds (a truncated
/// last one is not counted).
pub fn count_framed(mut framed: &[u8]) -> u64 {
    let mut messages = 0;
    while framed.len() >= MESSAGE_PREFIX_LEN {
        let prefix: &[u8; MESSAGE_PREFIX_LEN] =
            framed[..MESSAGE_PREFIX_LEN].try_into().expect("5 bytes");
        let (_, length) = parse_prefix(prefix);
        let Some(rest) = framed.get(MESSAGE_PREFIX_LEN + length..) else {
            break;
        };
        messages += 1;
        framed = rest;
    }
    messages
}

/// Frames one uncompressed message as the `Bytes` pieces to queue, in order; Err for a
/// message above [`MESSAGE_SEND_BYTES_MAX`].
pub fn frame_message(message: Bytes) -> Result<(Bytes, Option<Bytes>), Status> {
    let prefix = message_prefix(message.len())?;
    Ok(if message.len() <= COALESCE_BYTES_MAX {
        let mut buf = BytesMut::with_capacity(MESSAGE_PREFIX_LEN + message.len());
        buf.put_slice(&prefix);
        buf.extend_from_slice(&message);
        (buf.freeze(), None)
    } else {
        (Bytes::copy_from_slice(&prefix), Some(message))
    })
}

/// Parses `grpc-timeout`: 1 to 8 ASCII digits and a unit among H M S m u n.
pub fn parse_timeout(value: &[u8]) -> Result<Duration, String> {
    let text = String::from_utf8_lossy(value);
    let Some((&unit, digits)) = value.split_last() else {
        return Err(format!("timeout string is too short: {text:?}"));
    };
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(format!("bad timeout value: {text:?}"));
    }
    let amount: u64 = std::str::from_utf8(digits)
        .expect("ASCII digits")
        .parse()
        .map_err(|_| format!("bad timeout value: {text:?}"))?;
    Ok(match unit {
        b'H' => Duration::from_secs(amount * 3600),
        b'M' => Duration::from_secs(amount * 60),
        b'S' => Duration::from_secs(amount),
        b'm' => Duration::from_millis(amount),
        b'u' => Duration::from_micros(amount),
        b'n' => Duration::from_nanos(amount),
        _ => return Err(format!("timeout unit is not recognized: {text:?}")),
    })
}

/// Percent-encodes a `grpc-message`: bytes outside 0x20..=0x7E, and '%', become %XX.
pub fn percent_encode(message: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len());
    for &b in message.as_bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b);
        } else {
            const HEX: &[u8; 16] = b"0123456789ABCDEF";
            out.extend_from_slice(&[b'%', HEX[(b >> 4) as usize], HEX[(b & 0xf) as usize]]);
        }
    }
    out
}

/// Inverse of [`percent_encode`]; malformed escapes are kept literally (as grpc-go does).
pub fn percent_decode(value: &[u8]) -> String {
    let mut out = Vec::with_capacity(value.len());
    let mut i = 0;
    while i < value.len() {
        if value[i] == b'%' && i + 2 < value.len() {
            let hex = std::str::from_utf8(&value[i + 1..i + 3]).ok();
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(value[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `:status 200` + `content-type: application/grpc`, encoded once.
pub fn response_headers() -> &'static [u8] {
    static BLOCK: OnceLock<Vec<u8>> = OnceLock::new();
    BLOCK.get_or_init(|| {
        let mut out = Vec::new();
        encode_field(&mut out, b":status", b"200");
        encode_field(&mut out, b"content-type", b"application/grpc");
        out
    })
}

fn encode_status(out: &mut Vec<u8>, status: &Status) {
    encode_field(out, b"grpc-status", status.code.as_str().as_bytes());
    if !status.message.is_empty() {
        encode_field(out, b"grpc-message", &percent_encode(&status.message));
    }
}

/// The trailer block that ends a response that sent headers.
pub fn trailers(status: &Status) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + status.message.len());
    encode_status(&mut out, status);
    out
}

/// A Trailers-Only response (no message was sent): headers and status in one block.
pub fn trailers_only(http_status: &[u8], status: &Status) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + status.message.len());
    encode_field(&mut out, b":status", http_status);
    encode_field(&mut out, b"content-type", b"application/grpc");
    encode_status(&mut out, status);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_in_every_unit() {
        assert_eq!(parse_timeout(b"2H").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_timeout(b"3M").unwrap(), Duration::from_secs(180));
        assert_eq!(parse_timeout(b"4S").unwrap(), Duration::from_secs(4));
        assert_eq!(parse_timeout(b"500m").unwrap(), Duration::from_millis(500));
        assert_eq!(
            parse_timeout(b"99999999u").unwrap(),
            Duration::from_micros(99_999_999)
        );
        assert_eq!(parse_timeout(b"7n").unwrap(), Duration::from_nanos(7));
        for bad in [&b""[..], b"S", b"123456789S", b"1x", b"-1S", b"1.5S", b"10"] {
            assert!(parse_timeout(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn percent_encoding_round_trips() {
        let message = "héllo 100% \u{4f60}\u{597d}\n\tend~";
        let encoded = percent_encode(message);
        assert!(encoded.iter().all(|b| (0x20..=0x7e).contains(b)));
        assert_eq!(
            String::from_utf8(encoded.clone()).unwrap(),
            "h%C3%A9llo 100%25 %E4%BD%A0%E5%A5%BD%0A%09end~"
        );
        assert_eq!(percent_decode(&encoded), message);
        assert_eq!(percent_decode(b"bad %zz and %4"), "bad %zz and %4");
    }

    #[test]
    fn message_framing() {
        let (head, tail) = frame_message(Bytes::from_static(b"abc")).unwrap();
        assert_eq!(&head[..], b"\0\0\0\0\x03abc");
        assert!(tail.is_none());
        let big = Bytes::from(vec![7u8; COALESCE_BYTES_MAX + 1]);
        let (head, tail) = frame_message(big.clone()).unwrap();
        assert_eq!(
            parse_prefix(head[..].try_into().unwrap()),
            (false, big.len())
        );
        assert_eq!(tail.unwrap(), big);
        assert_eq!(parse_prefix(b"\x01\0\0\x01\0"), (true, 256));
        // Sizes a client or the database can make large get a status, not a panic.
        assert_eq!(
            message_prefix(MESSAGE_SEND_BYTES_MAX).unwrap(),
            [0, 0x7f, 0xff, 0xff, 0xff]
        );
        let status = message_prefix(5 << 30).unwrap_err();
        assert_eq!(status.code, Code::ResourceExhausted);
        assert_eq!(
            status.message,
            "grpc: trying to send message larger than max (5368709120 vs. 2147483647)"
        );
    }
}
