//! A deliberately small HTTP/2 client that writes raw frames: it does exactly what a test
//! tells it (including what no real client would do) and reads what the server answers.
//! Request headers go out as HPACK literals without indexing (RFC 7541 §6.2.2), never
//! Huffman-coded, so the client keeps no HPACK state; responses are decoded with tern's
//! own HPACK decoder (only to read grpc-status).

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub mod kind {
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const WINDOW_UPDATE: u8 = 0x8;
    pub const CONTINUATION: u8 = 0x9;
}

pub mod flag {
    pub const END_STREAM: u8 = 0x1;
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
}

/// RFC 9113 §7 error codes the tests expect.
pub mod code {
    pub const NO_ERROR: u32 = 0x0;
    pub const PROTOCOL_ERROR: u32 = 0x1;
    pub const FRAME_SIZE_ERROR: u32 = 0x6;
    pub const REFUSED_STREAM: u32 = 0x7;
    pub const CANCEL: u32 = 0x8;
    pub const ENHANCE_YOUR_CALM: u32 = 0xb;
}

/// SETTINGS_INITIAL_WINDOW_SIZE (RFC 9113 §6.5.2).
pub const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;

#[derive(Debug, Clone)]
pub struct RawFrame {
    pub kind: u8,
    pub flags: u8,
    pub stream_id: u32,
    pub payload: Vec<u8>,
}

impl RawFrame {
    /// (last stream id, error code) of a GOAWAY.
    pub fn goaway(&self) -> Option<(u32, u32)> {
        (self.kind == kind::GOAWAY && self.payload.len() >= 8).then(|| {
            (
                u32::from_be_bytes(self.payload[0..4].try_into().unwrap()) & 0x7fff_ffff,
                u32::from_be_bytes(self.payload[4..8].try_into().unwrap()),
            )
        })
    }

    pub fn rst_code(&self) -> Option<u32> {
        (self.kind == kind::RST_STREAM && self.payload.len() == 4)
            .then(|| u32::from_be_bytes(self.payload[..4].try_into().unwrap()))
    }
}

/// What a read ended with.
#[derive(Debug)]
pub enum Read_ {
    Frame(RawFrame),
    Eof,
    /// Nothing arrived before the deadline.
    Timeout,
}

pub struct RawH2 {
    pub sock: TcpStream,
    buf: Vec<u8>,
    decoder: tern::http2::hpack::Decoder,
}

pub fn frame_bytes(kind: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream_id.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

fn hpack_literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    // Literal Header Field without Indexing, new name (RFC 7541 §6.2.2), lengths < 127.
    assert!(name.len() < 127 && value.len() < 127);
    out.push(0x00);
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    out.push(value.len() as u8);
    out.extend_from_slice(value);
}

/// The header block of a gRPC request for `path`.
pub fn grpc_request_headers(path: &str) -> Vec<u8> {
    let mut block = Vec::new();
    hpack_literal(&mut block, b":method", b"POST");
    hpack_literal(&mut block, b":scheme", b"http");
    hpack_literal(&mut block, b":path", path.as_bytes());
    hpack_literal(&mut block, b":authority", b"localhost");
    hpack_literal(&mut block, b"content-type", b"application/grpc");
    hpack_literal(&mut block, b"te", b"trailers");
    block
}

/// A gRPC message: compressed flag, 4-byte length, payload.
pub fn grpc_message(compressed: bool, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![u8::from(compressed)];
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// etcdserverpb.RangeRequest { key }.
pub fn range_request(key: &[u8]) -> Vec<u8> {
    assert!(key.len() < 128);
    let mut out = vec![0x0a, key.len() as u8];
    out.extend_from_slice(key);
    out
}

impl RawH2 {
    pub fn connect(port: u16) -> RawH2 {
        let sock = TcpStream::connect(("127.0.0.1", port)).expect("connect to tern");
        sock.set_nodelay(true).unwrap();
        RawH2 {
            sock,
            buf: Vec::new(),
            decoder: tern::http2::hpack::Decoder::new(4096),
        }
    }

    /// Preface and an empty SETTINGS (plus `settings`), without waiting for anything.
    pub fn start(port: u16, settings: &[(u16, u32)]) -> RawH2 {
        let mut c = RawH2::connect(port);
        let mut payload = Vec::new();
        for (id, value) in settings {
            payload.extend_from_slice(&id.to_be_bytes());
            payload.extend_from_slice(&value.to_be_bytes());
        }
        let mut out = PREFACE.to_vec();
        out.extend(frame_bytes(kind::SETTINGS, 0, 0, &payload));
        c.send(&out);
        c
    }

    /// Writes bytes; false once the server has closed or stopped reading for good.
    pub fn send(&mut self, bytes: &[u8]) -> bool {
        self.sock.write_all(bytes).is_ok()
    }

    pub fn send_frame(&mut self, kind: u8, flags: u8, stream_id: u32, payload: &[u8]) -> bool {
        self.send(&frame_bytes(kind, flags, stream_id, payload))
    }

    /// Next frame, EOF, or Timeout if nothing complete arrived within `wait`.
    pub fn read_frame(&mut self, wait: Duration) -> Read_ {
        let deadline = Instant::now() + wait;
        loop {
            if self.buf.len() >= 9 {
                let len = u32::from_be_bytes([0, self.buf[0], self.buf[1], self.buf[2]]) as usize;
                if self.buf.len() >= 9 + len {
                    let f = RawFrame {
                        kind: self.buf[3],
                        flags: self.buf[4],
                        stream_id: u32::from_be_bytes(self.buf[5..9].try_into().unwrap())
                            & 0x7fff_ffff,
                        payload: self.buf[9..9 + len].to_vec(),
                    };
                    self.buf.drain(..9 + len);
                    return Read_::Frame(f);
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Read_::Timeout;
            }
            self.sock.set_read_timeout(Some(deadline - now)).unwrap();
            let mut chunk = vec![0u8; 64 * 1024];
            match self.sock.read(&mut chunk) {
                Ok(0) => return Read_::Eof,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                // A reset after GOAWAY is as good as EOF for these tests.
                Err(_) => return Read_::Eof,
            }
        }
    }

    /// Reads (and drops) frames until a GOAWAY; returns its error code, or None on EOF or
    /// when `wait` passes first.
    pub fn goaway_code(&mut self, wait: Duration) -> Option<u32> {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read_frame(left) {
                Read_::Frame(f) => {
                    if let Some((_, code)) = f.goaway() {
                        return Some(code);
                    }
                }
                Read_::Eof | Read_::Timeout => return None,
            }
        }
    }

    /// Reads until EOF (true) or until `wait` passes (false), dropping what arrives.
    pub fn closed_within(&mut self, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read_frame(left) {
                Read_::Frame(_) => {}
                Read_::Eof => return true,
                Read_::Timeout => return false,
            }
        }
    }

    /// Sends one gRPC request on `stream_id` (HEADERS, then the given DATA bytes with
    /// END_STREAM, in frames of at most 16 KiB, the smallest SETTINGS_MAX_FRAME_SIZE).
    /// Flow control is not followed: bodies must fit the server's initial windows.
    pub fn send_request(&mut self, stream_id: u32, path: &str, body: &[u8]) {
        self.send_frame(
            kind::HEADERS,
            flag::END_HEADERS,
            stream_id,
            &grpc_request_headers(path),
        );
        let mut chunks = body.chunks(16 * 1024).peekable();
        if chunks.peek().is_none() {
            self.send_frame(kind::DATA, flag::END_STREAM, stream_id, &[]);
        }
        while let Some(chunk) = chunks.next() {
            let flags = if chunks.peek().is_none() {
                flag::END_STREAM
            } else {
                0
            };
            self.send_frame(kind::DATA, flags, stream_id, chunk);
        }
    }

    /// Reads until `stream_id` ends and returns its grpc-status and grpc-message (from the
    /// trailers), answering nothing else; None on EOF or timeout. Any RST_STREAM on the
    /// stream is returned as status "RST <code>".
    pub fn grpc_status(&mut self, stream_id: u32, wait: Duration) -> Option<(String, String)> {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let f = match self.read_frame(left) {
                Read_::Frame(f) => f,
                Read_::Eof | Read_::Timeout => return None,
            };
            if f.stream_id == stream_id {
                if let Some(code) = f.rst_code() {
                    return Some((format!("RST {code}"), String::new()));
                }
            }
            if f.kind != kind::HEADERS {
                continue;
            }
            // Every block is decoded, whatever its stream, to keep the HPACK table in
            // step. The servers tested send blocks in one frame (no CONTINUATION),
            // without padding or priority.
            let list = self.decoder.decode(&f.payload).expect("server HPACK");
            if f.stream_id != stream_id {
                continue;
            }
            let mut status = None;
            let mut message = String::new();
            for (name, value) in &list.fields {
                match &name[..] {
                    b"grpc-status" => status = Some(String::from_utf8_lossy(value).into_owned()),
                    b"grpc-message" => message = tern::grpc::codec::percent_decode(value),
                    _ => {}
                }
            }
            if let Some(status) = status {
                return Some((status, message));
            }
        }
    }

    /// Reads `stream_id` to its end as a client that keeps reading: every DATA frame is
    /// counted, dropped and given back to both windows. Returns the DATA bytes, the gRPC
    /// messages they framed, and the grpc-status and grpc-message of the trailers (None
    /// on EOF or when `wait` passes first).
    pub fn drain_stream(&mut self, stream_id: u32, wait: Duration) -> Drained {
        let deadline = Instant::now() + wait;
        let mut drained = Drained::default();
        // Bytes left of the current gRPC message, or of its 5-byte prefix.
        let mut prefix = Vec::new();
        let mut body_left = 0usize;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let f = match self.read_frame(left) {
                Read_::Frame(f) => f,
                Read_::Eof | Read_::Timeout => return drained,
            };
            if f.kind == kind::DATA && !f.payload.is_empty() {
                let n = f.payload.len() as u32;
                self.send_frame(kind::WINDOW_UPDATE, 0, 0, &n.to_be_bytes());
                self.send_frame(kind::WINDOW_UPDATE, 0, f.stream_id, &n.to_be_bytes());
                if f.stream_id != stream_id {
                    continue;
                }
                drained.data_bytes += f.payload.len() as u64;
                let mut rest = &f.payload[..];
                while !rest.is_empty() {
                    if body_left > 0 {
                        let k = body_left.min(rest.len());
                        body_left -= k;
                        rest = &rest[k..];
                        continue;
                    }
                    let k = (5 - prefix.len()).min(rest.len());
                    prefix.extend_from_slice(&rest[..k]);
                    rest = &rest[k..];
                    if prefix.len() == 5 {
                        body_left = u32::from_be_bytes(prefix[1..5].try_into().unwrap()) as usize;
                        drained.largest_message = drained.largest_message.max(body_left);
                        drained.messages += 1;
                        prefix.clear();
                    }
                }
            }
            if f.kind != kind::HEADERS {
                continue;
            }
            let list = self.decoder.decode(&f.payload).expect("server HPACK");
            if f.stream_id != stream_id {
                continue;
            }
            let field = |wanted: &[u8]| {
                list.fields
                    .iter()
                    .find(|(name, _)| &name[..] == wanted)
                    .map(|(_, value)| value.clone())
            };
            if let Some(status) = field(b"grpc-status") {
                let message = field(b"grpc-message")
                    .map(|v| tern::grpc::codec::percent_decode(&v))
                    .unwrap_or_default();
                drained.status = Some((String::from_utf8_lossy(&status).into_owned(), message));
                return drained;
            }
        }
    }
}

/// What [`RawH2::drain_stream`] saw.
#[derive(Debug, Default)]
pub struct Drained {
    pub data_bytes: u64,
    pub messages: u64,
    pub largest_message: usize,
    pub status: Option<(String, String)>,
}
