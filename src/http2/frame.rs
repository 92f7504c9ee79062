//! HTTP/2 frames (RFC 9113 §4 and §6): pure parse and encode, no I/O.
//!
//! Invariants:
//! - Parsing never panics on any input: every length is checked before it is sliced, and
//!   every violation the RFC names becomes a typed [`FrameError`] saying whether it is a
//!   connection error or a stream error (RFC 9113 §5.4).
//! - Payloads (DATA bytes, header-block fragments, GOAWAY debug data) are `Bytes` slices of
//!   the frame buffer the reader handed in: parsing copies nothing.
//! - The maximum frame size is enforced by the reader before it buffers a payload (it needs
//!   the negotiated SETTINGS_MAX_FRAME_SIZE); this module checks the fixed sizes only.

use bytes::{BufMut, Bytes};

/// Length of the fixed frame header (RFC 9113 §4.1).
pub const FRAME_HEADER_LEN: usize = 9;
/// The client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Default and minimum SETTINGS_MAX_FRAME_SIZE (RFC 9113 §6.5.2).
pub const MAX_FRAME_SIZE_DEFAULT: u32 = 16_384;
/// Largest allowed SETTINGS_MAX_FRAME_SIZE (2^24 - 1).
pub const MAX_FRAME_SIZE_LIMIT: u32 = (1 << 24) - 1;
/// Largest flow-control window (2^31 - 1, RFC 9113 §6.9.1).
pub const MAX_WINDOW_SIZE: u32 = (1 << 31) - 1;
/// Initial flow-control window for connection and streams (RFC 9113 §6.9.2).
pub const DEFAULT_WINDOW_SIZE: u32 = 65_535;

/// Frame type codes (RFC 9113 §6).
pub mod kind {
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const PRIORITY: u8 = 0x2;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PUSH_PROMISE: u8 = 0x5;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const WINDOW_UPDATE: u8 = 0x8;
    pub const CONTINUATION: u8 = 0x9;
}

/// Frame flags (RFC 9113 §6).
pub mod flag {
    pub const END_STREAM: u8 = 0x1;
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const PADDED: u8 = 0x8;
    pub const PRIORITY: u8 = 0x20;
}

/// SETTINGS identifiers (RFC 9113 §6.5.2).
pub mod setting {
    pub const HEADER_TABLE_SIZE: u16 = 0x1;
    pub const ENABLE_PUSH: u16 = 0x2;
    pub const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    pub const INITIAL_WINDOW_SIZE: u16 = 0x4;
    pub const MAX_FRAME_SIZE: u16 = 0x5;
    pub const MAX_HEADER_LIST_SIZE: u16 = 0x6;
}

/// HTTP/2 error codes (RFC 9113 §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorCode(pub u32);

impl ErrorCode {
    pub const NO_ERROR: ErrorCode = ErrorCode(0x0);
    pub const PROTOCOL_ERROR: ErrorCode = ErrorCode(0x1);
    pub const INTERNAL_ERROR: ErrorCode = ErrorCode(0x2);
    pub const FLOW_CONTROL_ERROR: ErrorCode = ErrorCode(0x3);
    pub const SETTINGS_TIMEOUT: ErrorCode = ErrorCode(0x4);
    pub const STREAM_CLOSED: ErrorCode = ErrorCode(0x5);
    pub const FRAME_SIZE_ERROR: ErrorCode = ErrorCode(0x6);
    pub const REFUSED_STREAM: ErrorCode = ErrorCode(0x7);
    pub const CANCEL: ErrorCode = ErrorCode(0x8);
    pub const COMPRESSION_ERROR: ErrorCode = ErrorCode(0x9);
    pub const CONNECT_ERROR: ErrorCode = ErrorCode(0xa);
    pub const ENHANCE_YOUR_CALM: ErrorCode = ErrorCode(0xb);
    pub const INADEQUATE_SECURITY: ErrorCode = ErrorCode(0xc);
    pub const HTTP_1_1_REQUIRED: ErrorCode = ErrorCode(0xd);
}

/// A protocol violation found while parsing or processing a frame (RFC 9113 §5.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// Fatal for the whole connection: send GOAWAY with this code and close.
    Connection(ErrorCode, &'static str),
    /// Fatal for one stream only: send RST_STREAM with this code.
    Stream(u32, ErrorCode, &'static str),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Connection(code, why) => write!(f, "connection error {:#x}: {why}", code.0),
            FrameError::Stream(id, code, why) => {
                write!(f, "stream {id} error {:#x}: {why}", code.0)
            }
        }
    }
}

impl std::error::Error for FrameError {}

fn conn_err(code: ErrorCode, why: &'static str) -> FrameError {
    FrameError::Connection(code, why)
}

/// The fixed 9-octet frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub length: u32,
    pub kind: u8,
    pub flags: u8,
    pub stream_id: u32,
}

impl FrameHeader {
    /// Reads a header from the first 9 bytes of `buf`; `None` if fewer are available.
    pub fn parse(buf: &[u8]) -> Option<FrameHeader> {
        let b = buf.get(..FRAME_HEADER_LEN)?;
        Some(FrameHeader {
            length: u32::from_be_bytes([0, b[0], b[1], b[2]]),
            kind: b[3],
            flags: b[4],
            // The reserved high bit is ignored on receipt (RFC 9113 §4.1).
            stream_id: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
        })
    }

    /// Appends the header to `out`. `length` must fit in 24 bits.
    pub fn encode(&self, out: &mut Vec<u8>) {
        assert!(
            self.length <= MAX_FRAME_SIZE_LIMIT,
            "frame length over 2^24-1"
        );
        let len = self.length.to_be_bytes();
        out.extend_from_slice(&[len[1], len[2], len[3], self.kind, self.flags]);
        out.put_u32(self.stream_id & 0x7fff_ffff);
    }
}

/// The PRIORITY fields carried by PRIORITY frames and HEADERS with the PRIORITY flag.
/// RFC 9113 deprecates the scheme; we parse and validate it but do not schedule by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Priority {
    pub exclusive: bool,
    pub dependency: u32,
    pub weight: u8,
}

/// Parameters of a SETTINGS frame, each `None` unless present.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Settings {
    pub header_table_size: Option<u32>,
    pub enable_push: Option<u32>,
    pub max_concurrent_streams: Option<u32>,
    pub initial_window_size: Option<u32>,
    pub max_frame_size: Option<u32>,
    pub max_header_list_size: Option<u32>,
}

/// One parsed frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Data {
        stream_id: u32,
        end_stream: bool,
        data: Bytes,
        /// Whole payload length including padding: what counts against flow control.
        flow_len: u32,
    },
    Headers {
        stream_id: u32,
        end_stream: bool,
        end_headers: bool,
        priority: Option<Priority>,
        fragment: Bytes,
    },
    Priority {
        stream_id: u32,
        priority: Priority,
    },
    RstStream {
        stream_id: u32,
        error_code: ErrorCode,
    },
    Settings {
        ack: bool,
        settings: Settings,
    },
    PushPromise {
        stream_id: u32,
        promised_stream_id: u32,
        end_headers: bool,
        fragment: Bytes,
    },
    Ping {
        ack: bool,
        payload: [u8; 8],
    },
    GoAway {
        last_stream_id: u32,
        error_code: ErrorCode,
        debug_data: Bytes,
    },
    WindowUpdate {
        stream_id: u32,
        increment: u32,
    },
    Continuation {
        stream_id: u32,
        end_headers: bool,
        fragment: Bytes,
    },
    /// Frames of unknown type must be ignored (RFC 9113 §4.1, §5.5).
    Unknown {
        kind: u8,
        stream_id: u32,
    },
}

/// Strips padding (RFC 9113 §6.1): returns the payload without the pad-length octet and pad.
fn strip_padding(flags: u8, payload: Bytes) -> Result<Bytes, FrameError> {
    if flags & flag::PADDED == 0 {
        return Ok(payload);
    }
    let Some(&pad_len) = payload.first() else {
        return Err(conn_err(
            ErrorCode::FRAME_SIZE_ERROR,
            "padded frame without pad length",
        ));
    };
    let pad_len = pad_len as usize;
    // "If the length of the padding is the length of the frame payload or greater, the
    // recipient MUST treat this as a connection error of type PROTOCOL_ERROR."
    if pad_len >= payload.len() {
        return Err(conn_err(
            ErrorCode::PROTOCOL_ERROR,
            "padding exceeds payload",
        ));
    }
    Ok(payload.slice(1..payload.len() - pad_len))
}

fn parse_priority(b: &[u8]) -> Priority {
    let word = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    Priority {
        exclusive: word & 0x8000_0000 != 0,
        dependency: word & 0x7fff_ffff,
        weight: b[4],
    }
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

impl Frame {
    /// Parses one frame. `payload` must be exactly `header.length` bytes.
    pub fn parse(header: FrameHeader, payload: Bytes) -> Result<Frame, FrameError> {
        debug_assert_eq!(payload.len(), header.length as usize);
        let FrameHeader {
            kind: frame_kind,
            flags,
            stream_id,
            ..
        } = header;
        let len = payload.len();
        match frame_kind {
            kind::DATA => {
                if stream_id == 0 {
                    return Err(conn_err(ErrorCode::PROTOCOL_ERROR, "DATA on stream 0"));
                }
                let data = strip_padding(flags, payload)?;
                Ok(Frame::Data {
                    stream_id,
                    end_stream: flags & flag::END_STREAM != 0,
                    data,
                    flow_len: len as u32,
                })
            }
            kind::HEADERS => {
                if stream_id == 0 {
                    return Err(conn_err(ErrorCode::PROTOCOL_ERROR, "HEADERS on stream 0"));
                }
                let mut block = strip_padding(flags, payload)?;
                let mut priority = None;
                if flags & flag::PRIORITY != 0 {
                    if block.len() < 5 {
                        return Err(conn_err(
                            ErrorCode::FRAME_SIZE_ERROR,
                            "HEADERS too short for priority",
                        ));
                    }
                    let p = parse_priority(&block[..5]);
                    // A stream cannot depend on itself (RFC 9113 §5.3.1).
                    if p.dependency == stream_id {
                        return Err(FrameError::Stream(
                            stream_id,
                            ErrorCode::PROTOCOL_ERROR,
                            "stream depends on itself",
                        ));
                    }
                    priority = Some(p);
                    block = block.slice(5..);
                }
                Ok(Frame::Headers {
                    stream_id,
                    end_stream: flags & flag::END_STREAM != 0,
                    end_headers: flags & flag::END_HEADERS != 0,
                    priority,
                    fragment: block,
                })
            }
            kind::PRIORITY => {
                if stream_id == 0 {
                    return Err(conn_err(ErrorCode::PROTOCOL_ERROR, "PRIORITY on stream 0"));
                }
                if len != 5 {
                    return Err(FrameError::Stream(
                        stream_id,
                        ErrorCode::FRAME_SIZE_ERROR,
                        "PRIORITY length is not 5",
                    ));
                }
                let priority = parse_priority(&payload);
                if priority.dependency == stream_id {
                    return Err(FrameError::Stream(
                        stream_id,
                        ErrorCode::PROTOCOL_ERROR,
                        "stream depends on itself",
                    ));
                }
                Ok(Frame::Priority {
                    stream_id,
                    priority,
                })
            }
            kind::RST_STREAM => {
                if stream_id == 0 {
                    return Err(conn_err(
                        ErrorCode::PROTOCOL_ERROR,
                        "RST_STREAM on stream 0",
                    ));
                }
                if len != 4 {
                    return Err(conn_err(
                        ErrorCode::FRAME_SIZE_ERROR,
                        "RST_STREAM length is not 4",
                    ));
                }
                Ok(Frame::RstStream {
                    stream_id,
                    error_code: ErrorCode(be_u32(&payload)),
                })
            }
            kind::SETTINGS => {
                if stream_id != 0 {
                    return Err(conn_err(ErrorCode::PROTOCOL_ERROR, "SETTINGS on a stream"));
                }
                let ack = flags & flag::ACK != 0;
                if ack {
                    if len != 0 {
                        return Err(conn_err(
                            ErrorCode::FRAME_SIZE_ERROR,
                            "SETTINGS ACK with payload",
                        ));
                    }
                    return Ok(Frame::Settings {
                        ack,
                        settings: Settings::default(),
                    });
                }
                if !len.is_multiple_of(6) {
                    return Err(conn_err(
                        ErrorCode::FRAME_SIZE_ERROR,
                        "SETTINGS length not a multiple of 6",
                    ));
                }
                let mut settings = Settings::default();
                for entry in payload.chunks_exact(6) {
                    let id = u16::from_be_bytes([entry[0], entry[1]]);
                    let value = be_u32(&entry[2..]);
                    match id {
                        setting::HEADER_TABLE_SIZE => settings.header_table_size = Some(value),
                        setting::ENABLE_PUSH => {
                            if value > 1 {
                                return Err(conn_err(
                                    ErrorCode::PROTOCOL_ERROR,
                                    "SETTINGS_ENABLE_PUSH not 0 or 1",
                                ));
                            }
                            settings.enable_push = Some(value);
                        }
                        setting::MAX_CONCURRENT_STREAMS => {
                            settings.max_concurrent_streams = Some(value)
                        }
                        setting::INITIAL_WINDOW_SIZE => {
                            if value > MAX_WINDOW_SIZE {
                                return Err(conn_err(
                                    ErrorCode::FLOW_CONTROL_ERROR,
                                    "SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1",
                                ));
                            }
                            settings.initial_window_size = Some(value);
                        }
                        setting::MAX_FRAME_SIZE => {
                            if !(MAX_FRAME_SIZE_DEFAULT..=MAX_FRAME_SIZE_LIMIT).contains(&value) {
                                return Err(conn_err(
                                    ErrorCode::PROTOCOL_ERROR,
                                    "SETTINGS_MAX_FRAME_SIZE out of range",
                                ));
                            }
                            settings.max_frame_size = Some(value);
                        }
                        setting::MAX_HEADER_LIST_SIZE => {
                            settings.max_header_list_size = Some(value)
                        }
                        // Unknown settings must be ignored (RFC 9113 §6.5.2).
                        _ => {}
                    }
                }
                Ok(Frame::Settings { ack, settings })
            }
            kind::PUSH_PROMISE => {
                if stream_id == 0 {
                    return Err(conn_err(
                        ErrorCode::PROTOCOL_ERROR,
                        "PUSH_PROMISE on stream 0",
                    ));
                }
                let block = strip_padding(flags, payload)?;
                if block.len() < 4 {
                    return Err(conn_err(
                        ErrorCode::FRAME_SIZE_ERROR,
                        "PUSH_PROMISE too short",
                    ));
                }
                Ok(Frame::PushPromise {
                    stream_id,
                    promised_stream_id: be_u32(&block) & 0x7fff_ffff,
                    end_headers: flags & flag::END_HEADERS != 0,
                    fragment: block.slice(4..),
                })
            }
            kind::PING => {
                if stream_id != 0 {
                    return Err(conn_err(ErrorCode::PROTOCOL_ERROR, "PING on a stream"));
                }
                if len != 8 {
                    return Err(conn_err(
                        ErrorCode::FRAME_SIZE_ERROR,
                        "PING length is not 8",
                    ));
                }
                let mut data = [0u8; 8];
                data.copy_from_slice(&payload);
                Ok(Frame::Ping {
                    ack: flags & flag::ACK != 0,
                    payload: data,
                })
            }
            kind::GOAWAY => {
                if stream_id != 0 {
                    return Err(conn_err(ErrorCode::PROTOCOL_ERROR, "GOAWAY on a stream"));
                }
                if len < 8 {
                    return Err(conn_err(
                        ErrorCode::FRAME_SIZE_ERROR,
                        "GOAWAY shorter than 8",
                    ));
                }
                Ok(Frame::GoAway {
                    last_stream_id: be_u32(&payload) & 0x7fff_ffff,
                    error_code: ErrorCode(be_u32(&payload[4..])),
                    debug_data: payload.slice(8..),
                })
            }
            kind::WINDOW_UPDATE => {
                if len != 4 {
                    return Err(conn_err(
                        ErrorCode::FRAME_SIZE_ERROR,
                        "WINDOW_UPDATE length is not 4",
                    ));
                }
                let increment = be_u32(&payload) & 0x7fff_ffff;
                if increment == 0 {
                    // RFC 9113 §6.9: a zero increment is a stream error, or a connection
                    // error when it targets the connection.
                    return Err(if stream_id == 0 {
                        conn_err(ErrorCode::PROTOCOL_ERROR, "WINDOW_UPDATE increment 0")
                    } else {
                        FrameError::Stream(
                            stream_id,
                            ErrorCode::PROTOCOL_ERROR,
                            "WINDOW_UPDATE increment 0",
                        )
                    });
                }
                Ok(Frame::WindowUpdate {
                    stream_id,
                    increment,
                })
            }
            kind::CONTINUATION => {
                if stream_id == 0 {
                    return Err(conn_err(
                        ErrorCode::PROTOCOL_ERROR,
                        "CONTINUATION on stream 0",
                    ));
                }
                Ok(Frame::Continuation {
                    stream_id,
                    end_headers: flags & flag::END_HEADERS != 0,
                    fragment: payload,
                })
            }
            other => Ok(Frame::Unknown {
                kind: other,
                stream_id,
            }),
        }
    }

    /// Appends the frame, unpadded, to `out`. Payloads must respect the peer's
    /// SETTINGS_MAX_FRAME_SIZE; the callers (the connection's writer) split them.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Frame::Data {
                stream_id,
                end_stream,
                data,
                ..
            } => {
                let flags = if *end_stream { flag::END_STREAM } else { 0 };
                head(out, data.len(), kind::DATA, flags, *stream_id);
                out.extend_from_slice(data);
            }
            Frame::Headers {
                stream_id,
                end_stream,
                end_headers,
                priority,
                fragment,
            } => {
                let mut flags = 0;
                if *end_stream {
                    flags |= flag::END_STREAM;
                }
                if *end_headers {
                    flags |= flag::END_HEADERS;
                }
                let extra = if priority.is_some() { 5 } else { 0 };
                if priority.is_some() {
                    flags |= flag::PRIORITY;
                }
                head(
                    out,
                    fragment.len() + extra,
                    kind::HEADERS,
                    flags,
                    *stream_id,
                );
                if let Some(p) = priority {
                    encode_priority(out, p);
                }
                out.extend_from_slice(fragment);
            }
            Frame::Priority {
                stream_id,
                priority,
            } => {
                head(out, 5, kind::PRIORITY, 0, *stream_id);
                encode_priority(out, priority);
            }
            Frame::RstStream {
                stream_id,
                error_code,
            } => encode_rst_stream(out, *stream_id, *error_code),
            Frame::Settings { ack, settings } => {
                if *ack {
                    encode_settings_ack(out);
                } else {
                    encode_settings(out, settings);
                }
            }
            Frame::PushPromise {
                stream_id,
                promised_stream_id,
                end_headers,
                fragment,
            } => {
                let flags = if *end_headers { flag::END_HEADERS } else { 0 };
                head(
                    out,
                    4 + fragment.len(),
                    kind::PUSH_PROMISE,
                    flags,
                    *stream_id,
                );
                out.put_u32(*promised_stream_id);
                out.extend_from_slice(fragment);
            }
            Frame::Ping { ack, payload } => encode_ping(out, *ack, payload),
            Frame::GoAway {
                last_stream_id,
                error_code,
                debug_data,
            } => encode_goaway(out, *last_stream_id, *error_code, debug_data),
            Frame::WindowUpdate {
                stream_id,
                increment,
            } => encode_window_update(out, *stream_id, *increment),
            Frame::Continuation {
                stream_id,
                end_headers,
                fragment,
            } => {
                let flags = if *end_headers { flag::END_HEADERS } else { 0 };
                head(out, fragment.len(), kind::CONTINUATION, flags, *stream_id);
                out.extend_from_slice(fragment);
            }
            Frame::Unknown { kind, stream_id } => head(out, 0, *kind, 0, *stream_id),
        }
    }
}

fn head(out: &mut Vec<u8>, length: usize, kind: u8, flags: u8, stream_id: u32) {
    FrameHeader {
        length: length as u32,
        kind,
        flags,
        stream_id,
    }
    .encode(out);
}

fn encode_priority(out: &mut Vec<u8>, p: &Priority) {
    let mut word = p.dependency & 0x7fff_ffff;
    if p.exclusive {
        word |= 0x8000_0000;
    }
    out.put_u32(word);
    out.push(p.weight);
}

/// Appends a SETTINGS frame carrying the present parameters.
pub fn encode_settings(out: &mut Vec<u8>, s: &Settings) {
    let entries = [
        (setting::HEADER_TABLE_SIZE, s.header_table_size),
        (setting::ENABLE_PUSH, s.enable_push),
        (setting::MAX_CONCURRENT_STREAMS, s.max_concurrent_streams),
        (setting::INITIAL_WINDOW_SIZE, s.initial_window_size),
        (setting::MAX_FRAME_SIZE, s.max_frame_size),
        (setting::MAX_HEADER_LIST_SIZE, s.max_header_list_size),
    ];
    let count = entries.iter().filter(|(_, v)| v.is_some()).count();
    head(out, count * 6, kind::SETTINGS, 0, 0);
    for (id, value) in entries {
        if let Some(value) = value {
            out.put_u16(id);
            out.put_u32(value);
        }
    }
}

pub fn encode_settings_ack(out: &mut Vec<u8>) {
    head(out, 0, kind::SETTINGS, flag::ACK, 0);
}

pub fn encode_ping(out: &mut Vec<u8>, ack: bool, payload: &[u8; 8]) {
    head(out, 8, kind::PING, if ack { flag::ACK } else { 0 }, 0);
    out.extend_from_slice(payload);
}

pub fn encode_goaway(out: &mut Vec<u8>, last_stream_id: u32, code: ErrorCode, debug: &[u8]) {
    head(out, 8 + debug.len(), kind::GOAWAY, 0, 0);
    out.put_u32(last_stream_id & 0x7fff_ffff);
    out.put_u32(code.0);
    out.extend_from_slice(debug);
}

pub fn encode_rst_stream(out: &mut Vec<u8>, stream_id: u32, code: ErrorCode) {
    head(out, 4, kind::RST_STREAM, 0, stream_id);
    out.put_u32(code.0);
}

pub fn encode_window_update(out: &mut Vec<u8>, stream_id: u32, increment: u32) {
    assert!(
        increment > 0 && increment <= MAX_WINDOW_SIZE,
        "bad window increment"
    );
    head(out, 4, kind::WINDOW_UPDATE, 0, stream_id);
    out.put_u32(increment);
}

/// Appends one DATA frame; `data.len()` must be within the peer's max frame size.
/// Appends the 9-byte head of a DATA frame whose `len` payload bytes the caller appends
/// next (for a payload gathered from several buffers).
pub fn encode_data_head(out: &mut Vec<u8>, stream_id: u32, len: usize, end_stream: bool) {
    head(
        out,
        len,
        kind::DATA,
        if end_stream { flag::END_STREAM } else { 0 },
        stream_id,
    );
}

pub fn encode_data(out: &mut Vec<u8>, stream_id: u32, data: &[u8], end_stream: bool) {
    head(
        out,
        data.len(),
        kind::DATA,
        if end_stream { flag::END_STREAM } else { 0 },
        stream_id,
    );
    out.extend_from_slice(data);
}

/// Appends a header block as HEADERS plus as many CONTINUATION frames as
/// `max_frame_size` requires (RFC 9113 §4.3: the block is sent contiguously).
pub fn encode_header_block(
    out: &mut Vec<u8>,
    stream_id: u32,
    block: &[u8],
    end_stream: bool,
    max_frame_size: usize,
) {
    assert!(max_frame_size >= MAX_FRAME_SIZE_DEFAULT as usize);
    let mut chunks = block.chunks(max_frame_size);
    let first = chunks.next().unwrap_or(&[]);
    let rest = block.len().saturating_sub(first.len());
    let mut flags = if end_stream { flag::END_STREAM } else { 0 };
    if rest == 0 {
        flags |= flag::END_HEADERS;
    }
    head(out, first.len(), kind::HEADERS, flags, stream_id);
    out.extend_from_slice(first);
    let mut remaining = rest;
    for chunk in chunks {
        remaining -= chunk.len();
        let flags = if remaining == 0 { flag::END_HEADERS } else { 0 };
        head(out, chunk.len(), kind::CONTINUATION, flags, stream_id);
        out.extend_from_slice(chunk);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(buf: &[u8]) -> Result<Frame, FrameError> {
        let h = FrameHeader::parse(buf).expect("header");
        let payload = Bytes::copy_from_slice(&buf[FRAME_HEADER_LEN..]);
        assert_eq!(payload.len(), h.length as usize, "test frame length");
        Frame::parse(h, payload)
    }

    fn round_trip(f: Frame) {
        let mut out = Vec::new();
        f.encode(&mut out);
        assert_eq!(parse_all(&out).unwrap(), f);
    }

    fn raw(kind: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        head(&mut out, payload.len(), kind, flags, stream_id);
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn every_frame_type_round_trips() {
        round_trip(Frame::Data {
            stream_id: 1,
            end_stream: true,
            data: Bytes::from_static(b"hello"),
            flow_len: 5,
        });
        round_trip(Frame::Headers {
            stream_id: 3,
            end_stream: false,
            end_headers: true,
            priority: Some(Priority {
                exclusive: true,
                dependency: 1,
                weight: 200,
            }),
            fragment: Bytes::from_static(b"\x82\x86"),
        });
        round_trip(Frame::Headers {
            stream_id: 5,
            end_stream: true,
            end_headers: false,
            priority: None,
            fragment: Bytes::from_static(b"\x82"),
        });
        round_trip(Frame::Priority {
            stream_id: 7,
            priority: Priority {
                exclusive: false,
                dependency: 0,
                weight: 15,
            },
        });
        round_trip(Frame::RstStream {
            stream_id: 9,
            error_code: ErrorCode::CANCEL,
        });
        round_trip(Frame::Settings {
            ack: false,
            settings: Settings {
                header_table_size: Some(0),
                enable_push: Some(0),
                max_concurrent_streams: Some(100),
                initial_window_size: Some(MAX_WINDOW_SIZE),
                max_frame_size: Some(MAX_FRAME_SIZE_LIMIT),
                max_header_list_size: Some(8192),
            },
        });
        round_trip(Frame::Settings {
            ack: true,
            settings: Settings::default(),
        });
        round_trip(Frame::PushPromise {
            stream_id: 1,
            promised_stream_id: 2,
            end_headers: true,
            fragment: Bytes::from_static(b"\x82"),
        });
        round_trip(Frame::Ping {
            ack: true,
            payload: *b"12345678",
        });
        round_trip(Frame::GoAway {
            last_stream_id: 11,
            error_code: ErrorCode::ENHANCE_YOUR_CALM,
            debug_data: Bytes::from_static(b"bye"),
        });
        round_trip(Frame::WindowUpdate {
            stream_id: 0,
            increment: MAX_WINDOW_SIZE,
        });
        round_trip(Frame::Continuation {
            stream_id: 1,
            end_headers: true,
            fragment: Bytes::from_static(b"\x84"),
        });
        round_trip(Frame::Unknown {
            kind: 0xfa,
            stream_id: 3,
        });
    }

    #[test]
    fn padding_is_stripped_and_counted_for_flow_control() {
        // DATA, PADDED, pad length 3: "abc" + 3 pad bytes.
        let f = parse_all(&raw(kind::DATA, flag::PADDED, 1, b"\x03abc\0\0\0")).unwrap();
        assert_eq!(
            f,
            Frame::Data {
                stream_id: 1,
                end_stream: false,
                data: Bytes::from_static(b"abc"),
                flow_len: 7
            }
        );
        // HEADERS, PADDED|PRIORITY.
        let f = parse_all(&raw(
            kind::HEADERS,
            flag::PADDED | flag::PRIORITY | flag::END_HEADERS,
            3,
            b"\x02\x00\x00\x00\x01\x10\x82\0\0",
        ))
        .unwrap();
        let Frame::Headers {
            fragment, priority, ..
        } = f
        else {
            panic!("not HEADERS")
        };
        assert_eq!(&fragment[..], b"\x82");
        assert_eq!(priority.unwrap().weight, 0x10);
    }

    #[test]
    fn malformed_frames_are_typed_errors() {
        use ErrorCode as E;
        let conn = |r: Result<Frame, FrameError>| match r {
            Err(FrameError::Connection(code, _)) => code,
            other => panic!("expected a connection error, got {other:?}"),
        };
        let stream = |r: Result<Frame, FrameError>| match r {
            Err(FrameError::Stream(_, code, _)) => code,
            other => panic!("expected a stream error, got {other:?}"),
        };
        assert_eq!(
            conn(parse_all(&raw(kind::DATA, 0, 0, b"x"))),
            E::PROTOCOL_ERROR
        );
        assert_eq!(
            conn(parse_all(&raw(kind::DATA, flag::PADDED, 1, b"\x05ab"))),
            E::PROTOCOL_ERROR
        );
        assert_eq!(
            conn(parse_all(&raw(kind::DATA, flag::PADDED, 1, b""))),
            E::FRAME_SIZE_ERROR
        );
        assert_eq!(
            conn(parse_all(&raw(kind::HEADERS, 0, 0, b""))),
            E::PROTOCOL_ERROR
        );
        assert_eq!(
            conn(parse_all(&raw(kind::HEADERS, flag::PRIORITY, 1, b"\0\0"))),
            E::FRAME_SIZE_ERROR
        );
        assert_eq!(
            stream(parse_all(&raw(
                kind::HEADERS,
                flag::PRIORITY,
                1,
                b"\0\0\0\x01\x10"
            ))),
            E::PROTOCOL_ERROR
        );
        assert_eq!(
            stream(parse_all(&raw(kind::PRIORITY, 0, 1, b"\0\0\0"))),
            E::FRAME_SIZE_ERROR
        );
        assert_eq!(
            conn(parse_all(&raw(kind::PRIORITY, 0, 0, b"\0\0\0\0\0"))),
            E::PROTOCOL_ERROR
        );
        assert_eq!(
            conn(parse_all(&raw(kind::RST_STREAM, 0, 1, b"\0\0\0"))),
            E::FRAME_SIZE_ERROR
        );
        assert_eq!(
            conn(parse_all(&raw(kind::RST_STREAM, 0, 0, b"\0\0\0\0"))),
            E::PROTOCOL_ERROR
        );
        assert_eq!(
            conn(parse_all(&raw(kind::SETTINGS, 0, 1, b""))),
            E::PROTOCOL_ERROR
        );
        assert_eq!(
            conn(parse_all(&raw(kind::SETTINGS, 0, 0, b"\0\x01\0"))),
            E::FRAME_SIZE_ERROR
        );
        assert_eq!(
            conn(parse_all(&raw(
                kind::SETTINGS,
                flag::ACK,
                0,
                b"\0\x01\0\0\0\0"
            ))),
            E::FRAME_SIZE_ERROR
        );
        assert_eq!(
            conn(parse_all(&raw(kind::SETTINGS, 0, 0, b"\0\x02\0\0\0\x02"))),
            E::PROTOCOL_ERROR
        );
        assert_eq!(
            conn(parse_all(&raw(kind::SETTINGS, 0, 0, b"\0\x04\x80\0\0\0"))),
            E::FLOW_CONTROL_ERROR
        );
        assert_eq!(
            conn(parse_all(&raw(kind::SETTINGS, 0, 0, b"\0\x05\0\0\x3f\xff"))),
            E::PROTOCOL_ERROR
        );
        assert_eq!(
            conn(parse_all(&raw(kind::SETTINGS, 0, 0, b"\0\x05\x01\0\0\0"))),
            E::PROTOCOL_ERROR
        );
        assert_eq!(
            conn(parse_all(&raw(kind::PING, 0, 0, b"1234567"))),
            E::FRAME_SIZE_ERROR
        );
        assert_eq!(
            conn(parse_all(&raw(kind::PING, 0, 1, b"12345678"))),
            E::PROTOCOL_ERROR
        );
        assert_eq!(
            conn(parse_all(&raw(kind::GOAWAY, 0, 0, b"1234567"))),
            E::FRAME_SIZE_ERROR
        );
        assert_eq!(
            conn(parse_all(&raw(kind::GOAWAY, 0, 3, b"12345678"))),
            E::PROTOCOL_ERROR
        );
        assert_eq!(
            conn(parse_all(&raw(kind::WINDOW_UPDATE, 0, 0, b"\0\0\x01"))),
            E::FRAME_SIZE_ERROR
        );
        assert_eq!(
            conn(parse_all(&raw(kind::WINDOW_UPDATE, 0, 0, b"\0\0\0\0"))),
            E::PROTOCOL_ERROR
        );
        assert_eq!(
            stream(parse_all(&raw(kind::WINDOW_UPDATE, 0, 1, b"\x80\0\0\0"))),
            E::PROTOCOL_ERROR
        );
        assert_eq!(
            conn(parse_all(&raw(kind::CONTINUATION, 0, 0, b""))),
            E::PROTOCOL_ERROR
        );
        assert_eq!(
            conn(parse_all(&raw(kind::PUSH_PROMISE, 0, 1, b"\0\0"))),
            E::FRAME_SIZE_ERROR
        );
        // Unknown settings and unknown frame types are ignored.
        assert!(parse_all(&raw(kind::SETTINGS, 0, 0, b"\0\x99\0\0\0\x01")).is_ok());
        assert!(matches!(
            parse_all(&raw(0x42, 0xff, 0, b"junk")),
            Ok(Frame::Unknown { .. })
        ));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap deterministic fuzz: every frame type, every flag pattern, short payloads.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for kind_code in 0..=10u8 {
            for flags in [0u8, 0x01, 0x04, 0x08, 0x20, 0x2d, 0xff] {
                for len in 0..24usize {
                    let payload: Vec<u8> = (0..len)
                        .map(|_| {
                            seed ^= seed << 13;
                            seed ^= seed >> 7;
                            seed ^= seed << 17;
                            seed as u8
                        })
                        .collect();
                    let h = FrameHeader {
                        length: len as u32,
                        kind: kind_code,
                        flags,
                        stream_id: (seed as u32) % 4,
                    };
                    let _ = Frame::parse(h, Bytes::from(payload));
                }
            }
        }
    }

    #[test]
    fn header_block_splits_into_continuations() {
        let block = vec![0x82u8; 40_000];
        let mut out = Vec::new();
        encode_header_block(&mut out, 1, &block, true, 16_384);
        let mut rest = &out[..];
        let mut frames = Vec::new();
        while !rest.is_empty() {
            let h = FrameHeader::parse(rest).unwrap();
            let end = FRAME_HEADER_LEN + h.length as usize;
            frames.push(
                Frame::parse(h, Bytes::copy_from_slice(&rest[FRAME_HEADER_LEN..end])).unwrap(),
            );
            rest = &rest[end..];
        }
        assert_eq!(frames.len(), 3);
        assert!(matches!(
            frames[0],
            Frame::Headers {
                end_stream: true,
                end_headers: false,
                ..
            }
        ));
        assert!(matches!(
            frames[1],
            Frame::Continuation {
                end_headers: false,
                ..
            }
        ));
        assert!(matches!(
            frames[2],
            Frame::Continuation {
                end_headers: true,
                ..
            }
        ));
    }
}
