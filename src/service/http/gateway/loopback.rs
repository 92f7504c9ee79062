//! A minimal h2c client for one unary gRPC call to this member's own client port, as
//! etcd's grpc-gateway dials its own gRPC server: a gateway request then passes through
//! every check a gRPC client's does (validation, limits, auth), with nothing duplicated.
//!
//! Invariants:
//! - One connection per call, one stream (id 1) on it; the connection is dropped after
//!   the trailers, so no state outlives the call.
//! - Flow control is honoured both ways: the request is sent as the server's windows
//!   allow, and every DATA byte received is granted back at once.
//! - The response is bounded (`RESPONSE_BYTES_MAX`); a longer one fails the call. Every
//!   wait has the call's deadline.

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use futures_lite::io::{AsyncReadExt as _, AsyncWriteExt as _};
use glommio::net::TcpStream;

use crate::http2::frame::{self, Frame, FrameHeader, Settings, FRAME_HEADER_LEN};
use crate::http2::hpack;

/// Most response bytes (gRPC frames) one call may bring back.
pub const RESPONSE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Largest header block accepted from the server.
const HEADER_BLOCK_BYTES_MAX: usize = 64 * 1024;

/// What the server answered: the gRPC status and the response message, if one came.
#[derive(Debug)]
pub struct UnaryReply {
    pub code: u8,
    pub message: String,
    pub response: Option<Bytes>,
}

/// Calls `path` with `request` (a protobuf message) and `metadata` (lowercase names).
pub async fn unary(
    addr: SocketAddr,
    path: &str,
    metadata: &[(String, String)],
    request: &[u8],
    deadline: Instant,
) -> Result<UnaryReply, String> {
    let call = call(addr, path, metadata, request);
    let expired = async {
        glommio::timer::sleep(deadline.saturating_duration_since(Instant::now())).await;
        Err("context deadline exceeded".to_string())
    };
    futures_lite::future::or(call, expired).await
}

async fn call(
    addr: SocketAddr,
    path: &str,
    metadata: &[(String, String)],
    request: &[u8],
) -> Result<UnaryReply, String> {
    let mut stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    let mut out = Vec::with_capacity(1024);
    out.extend_from_slice(frame::PREFACE);
    frame::encode_settings(
        &mut out,
        &Settings {
            enable_push: Some(0),
            initial_window_size: Some(frame::MAX_WINDOW_SIZE),
            ..Settings::default()
        },
    );
    frame::encode_window_update(
        &mut out,
        0,
        frame::MAX_WINDOW_SIZE - frame::DEFAULT_WINDOW_SIZE,
    );
    let mut block = Vec::with_capacity(256);
    let authority = addr.to_string();
    for (name, value) in [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", authority.as_str()),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ] {
        hpack::encoder::encode_field(&mut block, name.as_bytes(), value.as_bytes());
    }
    for (name, value) in metadata {
        hpack::encoder::encode_field(&mut block, name.as_bytes(), value.as_bytes());
    }
    frame::encode_header_block(
        &mut out,
        1,
        &block,
        false,
        frame::MAX_FRAME_SIZE_DEFAULT as usize,
    );
    stream.write_all(&out).await.map_err(|e| e.to_string())?;

    // The request as one gRPC message, sent as the windows allow.
    let mut body = Vec::with_capacity(5 + request.len());
    body.push(0);
    body.extend_from_slice(&(request.len() as u32).to_be_bytes());
    body.extend_from_slice(request);
    let mut sent = 0usize;
    let mut conn_window = i64::from(frame::DEFAULT_WINDOW_SIZE);
    let mut stream_window = i64::from(frame::DEFAULT_WINDOW_SIZE);
    let mut max_frame = frame::MAX_FRAME_SIZE_DEFAULT as usize;

    let mut decoder = hpack::decoder::Decoder::new(4096);
    let mut block: Vec<u8> = Vec::new();
    let mut block_ends_stream = false;
    let mut headers_seen = 0usize;
    let mut fields: Vec<(Bytes, Bytes)> = Vec::new();
    let mut response: Vec<u8> = Vec::new();
    let mut reader = FrameReader::default();
    loop {
        // Send what the windows allow.
        let mut out = Vec::new();
        while sent < body.len() && conn_window > 0 && stream_window > 0 {
            let n = (body.len() - sent)
                .min(max_frame)
                .min(conn_window as usize)
                .min(stream_window as usize);
            let end = sent + n == body.len();
            frame::encode_data(&mut out, 1, &body[sent..sent + n], end);
            sent += n;
            conn_window -= n as i64;
            stream_window -= n as i64;
        }
        if !out.is_empty() {
            stream.write_all(&out).await.map_err(|e| e.to_string())?;
        }
        let (header, payload) = reader.next(&mut stream).await?;
        let parsed = Frame::parse(header, payload).map_err(|e| format!("{e:?}"))?;
        let mut reply = Vec::new();
        match parsed {
            Frame::Settings {
                ack: false,
                settings,
            } => {
                if let Some(size) = settings.initial_window_size {
                    stream_window += i64::from(size) - i64::from(frame::DEFAULT_WINDOW_SIZE);
                }
                if let Some(size) = settings.max_frame_size {
                    max_frame = size as usize;
                }
                frame::encode_settings_ack(&mut reply);
            }
            Frame::Ping {
                ack: false,
                payload,
            } => frame::encode_ping(&mut reply, true, &payload),
            Frame::WindowUpdate {
                stream_id,
                increment,
            } => {
                if stream_id == 0 {
                    conn_window += i64::from(increment);
                } else {
                    stream_window += i64::from(increment);
                }
            }
            Frame::Data {
                stream_id: 1,
                end_stream,
                data,
                flow_len,
            } => {
                if response.len() + data.len() > RESPONSE_BYTES_MAX {
                    return Err("response larger than the gateway allows".into());
                }
                response.extend_from_slice(&data);
                if flow_len > 0 && !end_stream {
                    frame::encode_window_update(&mut reply, 0, flow_len);
                    frame::encode_window_update(&mut reply, 1, flow_len);
                }
                if end_stream {
                    return finish(&fields, response);
                }
            }
            Frame::Headers {
                stream_id: 1,
                end_stream,
                end_headers,
                fragment,
                ..
            } => {
                block.clear();
                block.extend_from_slice(&fragment);
                block_ends_stream = end_stream;
                if end_headers {
                    headers_seen += 1;
                    fields.extend(decode(&mut decoder, &block)?);
                    if block_ends_stream {
                        return finish(&fields, response);
                    }
                }
            }
            Frame::Continuation {
                stream_id: 1,
                end_headers,
                fragment,
            } => {
                if block.len() + fragment.len() > HEADER_BLOCK_BYTES_MAX {
                    return Err("response headers too large".into());
                }
                block.extend_from_slice(&fragment);
                if end_headers {
                    headers_seen += 1;
                    fields.extend(decode(&mut decoder, &block)?);
                    if block_ends_stream {
                        return finish(&fields, response);
                    }
                }
            }
            Frame::RstStream { error_code, .. } => {
                return Err(format!("stream reset by the server ({error_code:?})"));
            }
            Frame::GoAway { .. } if headers_seen == 0 => {
                return Err("the server went away".into());
            }
            _ => {}
        }
        if !reply.is_empty() {
            stream.write_all(&reply).await.map_err(|e| e.to_string())?;
        }
    }
}

fn decode(
    decoder: &mut hpack::decoder::Decoder,
    block: &[u8],
) -> Result<Vec<(Bytes, Bytes)>, String> {
    decoder
        .decode(block)
        .map(|list| list.fields)
        .map_err(|e| e.to_string())
}

/// The status from the trailers (or trailers-only headers) and the one response message.
fn finish(fields: &[(Bytes, Bytes)], response: Vec<u8>) -> Result<UnaryReply, String> {
    let field = |name: &[u8]| {
        fields
            .iter()
            .rev()
            .find(|(n, _)| &n[..] == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    };
    let code: u8 = field(b"grpc-status")
        .and_then(|v| v.parse().ok())
        .ok_or("response without grpc-status")?;
    let message = percent_decode(&field(b"grpc-message").unwrap_or_default());
    let message_bytes = if response.len() >= 5 {
        let length = u32::from_be_bytes([response[1], response[2], response[3], response[4]]);
        response
            .get(5..5 + length as usize)
            .map(Bytes::copy_from_slice)
    } else {
        None
    };
    Ok(UnaryReply {
        code,
        message,
        response: message_bytes,
    })
}

/// grpc-message is percent-encoded (gRPC HTTP/2 spec, "Responses").
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&text[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads whole frames off the connection.
#[derive(Default)]
struct FrameReader {
    buffer: Vec<u8>,
}

impl FrameReader {
    async fn next(&mut self, stream: &mut TcpStream) -> Result<(FrameHeader, Bytes), String> {
        loop {
            if let Some(header) = FrameHeader::parse(&self.buffer) {
                let total = FRAME_HEADER_LEN + header.length as usize;
                if header.length > frame::MAX_FRAME_SIZE_DEFAULT.max(1 << 20) {
                    return Err("frame larger than the gateway allows".into());
                }
                if self.buffer.len() >= total {
                    let payload = Bytes::copy_from_slice(&self.buffer[FRAME_HEADER_LEN..total]);
                    self.buffer.drain(..total);
                    return Ok((header, payload));
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("connection closed by the server".into());
            }
            self.buffer.extend_from_slice(&chunk[..n]);
        }
    }
}
