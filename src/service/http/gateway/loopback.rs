//! A minimal HTTP/2 client for one gRPC call (unary or streaming) into this core's own
//! gRPC server, over an in-memory pipe (`net::pipe`) rather than a socket. etcd's
//! grpc-gateway dials its own client port instead (in cleartext, or with TLS and its own
//! server certificate as the client's); the pipe reaches the same server code with none of
//! the ways that dial can fail: an https-only or unix-only member, a server certificate
//! without the clientAuth usage under `--client-cert-auth`, a wildcard listen address, and
//! without a TCP connection and a TLS handshake per gateway call. A gateway request still
//! passes through every check a gRPC client's does (HTTP/2 limits, message limits,
//! validation, auth), with nothing duplicated, because the server end of the pipe is served
//! by `grpc::serve_connection` with the client listeners' own config and handler.
//!
//! Invariants:
//! - One connection per call, one stream (id 1) on it; the connection is dropped with
//!   the `Call`, so no state outlives the call (for a stream: the HTTP client's). The
//!   server side's task sees the pipe close and ends.
//! - Flow control is honoured both ways: the request is sent as the server's windows
//!   allow, and every DATA byte received is granted back at once.
//! - Buffered response bytes are bounded (`RESPONSE_BYTES_MAX`); more fail the call. A
//!   unary call has a deadline; a stream lasts as long as its HTTP client.

use std::rc::Rc;
use std::time::Instant;

use bytes::Bytes;
use futures_lite::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::http2::frame::{self, Frame, FrameHeader, Settings, FRAME_HEADER_LEN};
use crate::http2::{hpack, ServerConfig, ShutdownSignal};
use crate::net::pipe::{pipe, PipeEnd};

/// This core's gRPC server, as the client listeners serve it: what a gateway call is
/// served by.
#[derive(Clone)]
pub struct LocalGrpc {
    pub config: Rc<ServerConfig>,
    pub handler: crate::grpc::Handler,
    pub shutdown: ShutdownSignal,
}

impl LocalGrpc {
    /// A new connection to the server: the client end of a pipe whose server end is
    /// served on this executor until either end closes (or shutdown).
    fn connect(&self) -> PipeEnd {
        let (client, server) = pipe();
        let (config, handler, shutdown) = (
            self.config.clone(),
            self.handler.clone(),
            self.shutdown.clone(),
        );
        glommio::spawn_local(async move {
            let _ = crate::grpc::serve_connection(server, config, handler, shutdown).await;
        })
        .detach();
        client
    }
}

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
    grpc: &LocalGrpc,
    path: &str,
    metadata: &[(String, String)],
    request: &[u8],
    deadline: Instant,
) -> Result<UnaryReply, String> {
    let call = async {
        let mut call = Call::open(grpc, path, metadata).await?;
        call.queue_message(request);
        call.close_send();
        let mut response = None;
        loop {
            match call.next().await? {
                Event::Message(message) => {
                    response.get_or_insert(message);
                }
                Event::End { code, message } => {
                    return Ok(UnaryReply {
                        code,
                        message,
                        response,
                    })
                }
            }
        }
    };
    let expired = async {
        glommio::timer::sleep(deadline.saturating_duration_since(Instant::now())).await;
        Err("context deadline exceeded".to_string())
    };
    futures_lite::future::or(call, expired).await
}

/// What a call brings next.
#[derive(Debug)]
pub enum Event {
    /// One response message.
    Message(Bytes),
    /// The call's status (from the trailers); nothing follows.
    End { code: u8, message: String },
}

/// One gRPC call (stream 1) on its own connection. Dropping it closes the connection,
/// which the server takes as the client going away.
pub struct Call {
    stream: PipeEnd,
    reader: FrameReader,
    decoder: hpack::decoder::Decoder,
    /// Framed request messages not yet sent, and how much of them is.
    outgoing: Vec<u8>,
    sent: usize,
    close_requested: bool,
    close_sent: bool,
    conn_window: i64,
    stream_window: i64,
    max_frame: usize,
    /// DATA bytes received and not yet cut into messages.
    incoming: Vec<u8>,
    block: Vec<u8>,
    block_ends_stream: bool,
    fields: Vec<(Bytes, Bytes)>,
    ended: bool,
}

impl Call {
    pub async fn open(
        grpc: &LocalGrpc,
        path: &str,
        metadata: &[(String, String)],
    ) -> Result<Call, String> {
        let mut stream = grpc.connect();
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
        // What a client dialling the member over loopback would name.
        let authority = "localhost";
        for (name, value) in [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", authority),
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
        Ok(Call {
            stream,
            reader: FrameReader::default(),
            decoder: hpack::decoder::Decoder::new(4096),
            outgoing: Vec::new(),
            sent: 0,
            close_requested: false,
            close_sent: false,
            conn_window: i64::from(frame::DEFAULT_WINDOW_SIZE),
            stream_window: i64::from(frame::DEFAULT_WINDOW_SIZE),
            max_frame: frame::MAX_FRAME_SIZE_DEFAULT as usize,
            incoming: Vec::new(),
            block: Vec::new(),
            block_ends_stream: false,
            fields: Vec::new(),
            ended: false,
        })
    }

    /// Queues one request message (sent by `next` as the windows allow).
    pub fn queue_message(&mut self, message: &[u8]) {
        self.outgoing.push(0);
        self.outgoing
            .extend_from_slice(&(message.len() as u32).to_be_bytes());
        self.outgoing.extend_from_slice(message);
    }

    /// Ends the request side once everything queued is sent (END_STREAM).
    pub fn close_send(&mut self) {
        self.close_requested = true;
    }

    /// The next response message or the final status.
    pub async fn next(&mut self) -> Result<Event, String> {
        loop {
            self.send_what_fits().await?;
            if let Some(message) = self.take_message() {
                return Ok(Event::Message(message));
            }
            if self.ended {
                return finish(&self.fields);
            }
            self.read_frame().await?;
        }
    }

    async fn send_what_fits(&mut self) -> Result<(), String> {
        let mut out = Vec::new();
        while self.sent < self.outgoing.len() && self.conn_window > 0 && self.stream_window > 0 {
            let n = (self.outgoing.len() - self.sent)
                .min(self.max_frame)
                .min(self.conn_window as usize)
                .min(self.stream_window as usize);
            let last = self.sent + n == self.outgoing.len();
            let end = last && self.close_requested;
            frame::encode_data(&mut out, 1, &self.outgoing[self.sent..self.sent + n], end);
            self.close_sent |= end;
            self.sent += n;
            self.conn_window -= n as i64;
            self.stream_window -= n as i64;
        }
        if self.sent == self.outgoing.len() {
            self.outgoing.clear();
            self.sent = 0;
            if self.close_requested && !self.close_sent {
                frame::encode_data(&mut out, 1, &[], true);
                self.close_sent = true;
            }
        }
        if !out.is_empty() {
            self.stream
                .write_all(&out)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    fn take_message(&mut self) -> Option<Bytes> {
        if self.incoming.len() < 5 {
            return None;
        }
        let length = u32::from_be_bytes([
            self.incoming[1],
            self.incoming[2],
            self.incoming[3],
            self.incoming[4],
        ]) as usize;
        if self.incoming.len() < 5 + length {
            return None;
        }
        let message = Bytes::copy_from_slice(&self.incoming[5..5 + length]);
        self.incoming.drain(..5 + length);
        Some(message)
    }

    async fn read_frame(&mut self) -> Result<(), String> {
        let (header, payload) = self.reader.next(&mut self.stream).await?;
        let parsed = Frame::parse(header, payload).map_err(|e| format!("{e:?}"))?;
        let mut reply = Vec::new();
        match parsed {
            Frame::Settings {
                ack: false,
                settings,
            } => {
                if let Some(size) = settings.initial_window_size {
                    self.stream_window += i64::from(size) - i64::from(frame::DEFAULT_WINDOW_SIZE);
                }
                if let Some(size) = settings.max_frame_size {
                    self.max_frame = size as usize;
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
                    self.conn_window += i64::from(increment);
                } else {
                    self.stream_window += i64::from(increment);
                }
            }
            Frame::Data {
                stream_id: 1,
                end_stream,
                data,
                flow_len,
            } => {
                if self.incoming.len() + data.len() > RESPONSE_BYTES_MAX {
                    return Err("response larger than the gateway allows".into());
                }
                self.incoming.extend_from_slice(&data);
                if flow_len > 0 && !end_stream {
                    frame::encode_window_update(&mut reply, 0, flow_len);
                    frame::encode_window_update(&mut reply, 1, flow_len);
                }
                // A stream that ends on DATA has no trailers: finish() reports it.
                self.ended |= end_stream;
            }
            Frame::Headers {
                stream_id: 1,
                end_stream,
                end_headers,
                fragment,
                ..
            } => {
                self.block.clear();
                self.block.extend_from_slice(&fragment);
                self.block_ends_stream = end_stream;
                if end_headers {
                    self.end_block()?;
                }
            }
            Frame::Continuation {
                stream_id: 1,
                end_headers,
                fragment,
            } => {
                if self.block.len() + fragment.len() > HEADER_BLOCK_BYTES_MAX {
                    return Err("response headers too large".into());
                }
                self.block.extend_from_slice(&fragment);
                if end_headers {
                    self.end_block()?;
                }
            }
            Frame::RstStream { error_code, .. } => {
                return Err(format!("stream reset by the server ({error_code:?})"));
            }
            Frame::GoAway { .. } if !self.ended => {
                return Err("the server went away".into());
            }
            _ => {}
        }
        if !reply.is_empty() {
            self.stream
                .write_all(&reply)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    fn end_block(&mut self) -> Result<(), String> {
        let fields = decode(&mut self.decoder, &self.block)?;
        self.fields.extend(fields);
        self.ended |= self.block_ends_stream;
        Ok(())
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

/// The status from the trailers (or trailers-only headers).
fn finish(fields: &[(Bytes, Bytes)]) -> Result<Event, String> {
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
    Ok(Event::End { code, message })
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
    async fn next(&mut self, stream: &mut PipeEnd) -> Result<(FrameHeader, Bytes), String> {
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
