//! Request body framing (RFC 9112 §6): how the connection finds where a body ends.
//!
//! Invariants:
//! - A body never grows past the connection's `body_bytes_max`: the chunked decoder checks
//!   each chunk's announced size before it takes a byte of it.
//! - The decoder is incremental: it consumes what it can of the bytes read so far and keeps
//!   its place, so a body that arrives in many small reads is scanned once.
//! - A chunk-size line, or the trailer section, longer than its named bound is malformed
//!   rather than buffered on.

/// Longest chunk-size line (hex size plus extensions) accepted.
pub const CHUNK_LINE_BYTES_MAX: usize = 4096;
/// Longest trailer section (after the last chunk) accepted.
pub const TRAILER_BYTES_MAX: usize = 16 * 1024;
/// Most trailer fields parsed.
const TRAILER_FIELDS_MAX: usize = 32;

#[derive(Debug, PartialEq, Eq)]
pub enum BodyError {
    /// The body is longer than the connection allows (answered 413).
    TooLarge,
    /// Bad chunk framing (answered 400).
    Malformed,
}

/// How a request says its body is framed, from its headers.
#[derive(Debug, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
}

/// Reads the framing from the request's `Content-Length` and `Transfer-Encoding` values.
/// Err(400 text) for what RFC 9112 §6.3 says a server must reject, and for a request that
/// carries both (a request-smuggling vector, so refused rather than resolved); Err(501
/// text) for a transfer coding other than chunked.
pub fn framing(
    content_lengths: &[&[u8]],
    transfer_encodings: &[&[u8]],
) -> Result<Framing, (u16, &'static str)> {
    if !transfer_encodings.is_empty() {
        if !content_lengths.is_empty() {
            return Err((400, "Bad Request"));
        }
        let chunked_only = transfer_encodings.len() == 1
            && transfer_encodings[0]
                .trim_ascii()
                .eq_ignore_ascii_case(b"chunked");
        if !chunked_only {
            return Err((501, "Unsupported transfer encoding"));
        }
        return Ok(Framing::Chunked);
    }
    let mut length = None;
    for value in content_lengths {
        let value = value.trim_ascii();
        if value.is_empty() || !value.iter().all(u8::is_ascii_digit) || value.len() > 19 {
            return Err((400, "Bad Request"));
        }
        let parsed: u64 = std::str::from_utf8(value)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or((400, "Bad Request"))?;
        if length.is_some_and(|l| l != parsed) {
            return Err((400, "Bad Request"));
        }
        length = Some(parsed);
    }
    Ok(match length {
        None | Some(0) => Framing::None,
        Some(n) => Framing::Length(n),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
    Done,
}

/// Decodes a chunked body.
pub struct ChunkedDecoder {
    state: ChunkState,
    body: Vec<u8>,
    body_bytes_max: usize,
}

impl ChunkedDecoder {
    pub fn new(body_bytes_max: usize) -> ChunkedDecoder {
        ChunkedDecoder {
            state: ChunkState::Size,
            body: Vec::new(),
            body_bytes_max,
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    pub fn into_body(self) -> Vec<u8> {
        self.body
    }

    /// Consumes what it can from `input`; returns how many bytes it consumed. The caller
    /// drops those, reads more unless `is_done`, and calls again.
    pub fn decode(&mut self, input: &[u8]) -> Result<usize, BodyError> {
        let mut consumed = 0;
        loop {
            let rest = &input[consumed..];
            match self.state {
                ChunkState::Done => return Ok(consumed),
                ChunkState::Size => match httparse::parse_chunk_size(rest) {
                    Ok(httparse::Status::Complete((n, size))) => {
                        consumed += n;
                        if size == 0 {
                            self.state = ChunkState::Trailers;
                        } else if self.body.len() as u64 + size > self.body_bytes_max as u64 {
                            return Err(BodyError::TooLarge);
                        } else {
                            self.state = ChunkState::Data(size);
                        }
                    }
                    Ok(httparse::Status::Partial) if rest.len() > CHUNK_LINE_BYTES_MAX => {
                        return Err(BodyError::Malformed)
                    }
                    Ok(httparse::Status::Partial) => return Ok(consumed),
                    Err(_) => return Err(BodyError::Malformed),
                },
                ChunkState::Data(remaining) => {
                    if rest.is_empty() {
                        return Ok(consumed);
                    }
                    let take = remaining.min(rest.len() as u64) as usize;
                    self.body.extend_from_slice(&rest[..take]);
                    consumed += take;
                    let left = remaining - take as u64;
                    self.state = if left == 0 {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left)
                    };
                }
                ChunkState::DataEnd => {
                    if rest.len() < 2 {
                        return Ok(consumed);
                    }
                    if &rest[..2] != b"\r\n" {
                        return Err(BodyError::Malformed);
                    }
                    consumed += 2;
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailers => {
                    if rest.len() >= 2 && &rest[..2] == b"\r\n" {
                        consumed += 2;
                        self.state = ChunkState::Done;
                        continue;
                    }
                    let mut fields = [httparse::EMPTY_HEADER; TRAILER_FIELDS_MAX];
                    match httparse::parse_headers(rest, &mut fields) {
                        Ok(httparse::Status::Complete((n, _))) => {
                            consumed += n;
                            self.state = ChunkState::Done;
                        }
                        Ok(httparse::Status::Partial) if rest.len() <= TRAILER_BYTES_MAX => {
                            return Ok(consumed)
                        }
                        _ => return Err(BodyError::Malformed),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_in_pieces(input: &[u8], piece: usize, max: usize) -> Result<Vec<u8>, BodyError> {
        let mut decoder = ChunkedDecoder::new(max);
        let mut buffered = Vec::new();
        for part in input.chunks(piece) {
            buffered.extend_from_slice(part);
            let n = decoder.decode(&buffered)?;
            buffered.drain(..n);
            if decoder.is_done() {
                return Ok(decoder.into_body());
            }
        }
        panic!("body not complete; {} bytes left", buffered.len());
    }

    #[test]
    fn decodes_chunks_with_extensions_and_trailers_in_any_split() {
        let wire =
            b"4;name=v\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nX-Sum: 1\r\n\r\n";
        for piece in 1..wire.len() {
            assert_eq!(
                decode_in_pieces(wire, piece, 1 << 20).unwrap(),
                b"Wikipedia in\r\n\r\nchunks."
            );
        }
    }

    #[test]
    fn refuses_bad_framing_and_oversized_chunks() {
        assert_eq!(
            decode_in_pieces(b"zz\r\n", 64, 100),
            Err(BodyError::Malformed)
        );
        assert_eq!(
            decode_in_pieces(b"3\r\nabcX\r\n", 64, 100),
            Err(BodyError::Malformed)
        );
        assert_eq!(
            decode_in_pieces(b"65\r\n", 64, 100),
            Err(BodyError::TooLarge)
        );
        let mut decoder = ChunkedDecoder::new(100);
        let endless = vec![b'1'; CHUNK_LINE_BYTES_MAX + 1];
        assert_eq!(decoder.decode(&endless), Err(BodyError::Malformed));
    }

    #[test]
    fn framing_follows_rfc_9112() {
        assert_eq!(framing(&[], &[]), Ok(Framing::None));
        assert_eq!(framing(&[b"12"], &[]), Ok(Framing::Length(12)));
        assert_eq!(framing(&[b"12", b"12"], &[]), Ok(Framing::Length(12)));
        assert!(framing(&[b"12", b"13"], &[]).is_err());
        assert!(framing(&[b"-1"], &[]).is_err());
        assert!(framing(&[b"1"], &[b"chunked"]).is_err());
        assert_eq!(framing(&[], &[b"Chunked"]), Ok(Framing::Chunked));
        assert_eq!(
            framing(&[], &[b"gzip, chunked"]),
            Err((501, "Unsupported transfer encoding"))
        );
    }
}
