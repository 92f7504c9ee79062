//! The bench's watch streams over a minimal HTTP/2 client (RFC 9113) written for this
//! bench alone: why and what it checks are in `main.rs`'s header. It opens one connection
//! with several `/etcdserverpb.Watch/Watch` streams, sends each stream's create requests,
//! and then only reads: DATA is split into gRPC messages (5-byte prefix, no compression)
//! and each message is checked by [`StreamCheck`]; flow-control credit is returned with
//! WINDOW_UPDATE once half a window has been read; SETTINGS and PING are acknowledged.
//! Header blocks are not decoded (nothing in them matters here; a header block that ends
//! a stream is a failure, since watch streams end only when the bench stops).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::lean;

/// Socket reads made by all watch connections (each one a wake-up of the watcher thread
/// or nearly): how the server's sends batch events, seen from the client.
pub static READS: AtomicU64 = AtomicU64::new(0);

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER_LEN: usize = 9;
/// SETTINGS_MAX_FRAME_SIZE's default (RFC 9113 §6.5.2): we never raise it, so the server
/// may not send larger frames.
const FRAME_PAYLOAD_MAX: usize = 16_384;
/// RFC 9113 §6.9.2: every window starts at 65,535 bytes.
const DEFAULT_WINDOW: u32 = 65_535;

const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const WINDOW_UPDATE: u8 = 8;
const CONTINUATION: u8 = 9;

const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

const SETTINGS_ENABLE_PUSH: u16 = 0x2;
const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;

/// One watch stream to open: its creates (encoded `WatchRequest`s) and what its watchers
/// watch (watcher `w` is created `w`-th, so the server gives it id `w`).
pub struct StreamSpec {
    pub index: usize,
    pub creates: Vec<Bytes>,
    pub keys: Vec<Bytes>,
    pub count: Arc<AtomicU64>,
}

/// What one stream's reader hands back: stream index, per watcher the revisions of the
/// events it received, what went wrong.
pub type StreamResult = (usize, Vec<Vec<i64>>, Option<String>);

/// Checks one stream's responses as they arrive.
struct StreamCheck {
    index: usize,
    keys: Vec<Bytes>,
    count: Arc<AtomicU64>,
    /// Created responses seen so far (they come first, one per watcher, ids in order).
    created: usize,
    received: Vec<Vec<i64>>,
    failure: Option<String>,
    /// Unparsed DATA bytes (a gRPC message may span frames).
    buffer: BytesMut,
    /// Bytes read since the last WINDOW_UPDATE for this stream.
    unacknowledged: u32,
    events: Vec<(i64, std::ops::Range<usize>)>,
}

impl StreamCheck {
    fn fail(&mut self, why: String) {
        self.failure.get_or_insert(why);
    }

    /// Splits off and checks every whole gRPC message in the buffer.
    fn drain_messages(&mut self) {
        while self.buffer.len() >= 5 {
            let len = u32::from_be_bytes(self.buffer[1..5].try_into().unwrap()) as usize;
            if self.buffer[0] != 0 {
                self.fail("compressed message".into());
                self.buffer.clear();
                return;
            }
            if self.buffer.len() < 5 + len {
                return;
            }
            self.buffer.advance(5);
            let message = self.buffer.split_to(len);
            self.check(&message);
        }
    }

    fn check(&mut self, message: &[u8]) {
        let r = match lean::parse(message, &mut self.events) {
            Ok(r) => r,
            Err(e) => return self.fail(format!("malformed response: {e}")),
        };
        let w = r.watch_id as usize;
        if self.created < self.keys.len() {
            // Ids are allocated per stream from 0, in creation order.
            if !r.created || r.canceled || w != self.created {
                return self.fail(format!("expected created {}, got {r:?}", self.created));
            }
            self.created += 1;
            return;
        }
        if r.canceled || r.created || w >= self.keys.len() {
            return self.fail(format!("unexpected response {r:?}"));
        }
        for (mod_revision, key) in &self.events {
            if message[key.clone()] != self.keys[w][..] {
                let got = message[key.clone()].to_vec();
                self.failure
                    .get_or_insert(format!("watcher {w} got key {got:?}"));
            }
            // Live responses carry their own revision, history ones the current one:
            // never one below their events'.
            if *mod_revision > r.header_revision {
                self.failure.get_or_insert(format!(
                    "watcher {w}: event of revision {mod_revision} in a response of revision {}",
                    r.header_revision
                ));
            }
            self.received[w].push(*mod_revision);
        }
        self.count
            .fetch_add(self.events.len() as u64, Ordering::Relaxed);
    }
}

fn frame_header(out: &mut BytesMut, len: usize, kind: u8, flags: u8, stream_id: u32) {
    out.put_uint(len as u64, 3);
    out.put_u8(kind);
    out.put_u8(flags);
    out.put_u32(stream_id);
}

fn window_update(out: &mut BytesMut, stream_id: u32, increment: u32) {
    frame_header(out, 4, WINDOW_UPDATE, 0, stream_id);
    out.put_u32(increment);
}

/// HPACK "literal header field without indexing, new name" (RFC 7541 §6.2.2), plain
/// (not Huffman) strings; every string here is shorter than 127 bytes, so each length
/// fits the 7-bit prefix.
fn literal_header(out: &mut BytesMut, name: &str, value: &str) {
    assert!(name.len() < 127 && value.len() < 127);
    out.put_u8(0);
    out.put_u8(name.len() as u8);
    out.put_slice(name.as_bytes());
    out.put_u8(value.len() as u8);
    out.put_slice(value.as_bytes());
}

/// Runs one connection: opens `streams`, reports on `created` once every watcher is
/// created, waits for `go` (if given) before reading further, and reads until `stopped`.
/// `window` is the initial window of the connection and of each stream.
pub async fn run_connection(
    port: u16,
    window: u32,
    streams: Vec<StreamSpec>,
    created: tokio::sync::oneshot::Sender<()>,
    go: Option<tokio::sync::oneshot::Receiver<()>>,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) -> Vec<StreamResult> {
    let mut checks: Vec<StreamCheck> = streams
        .iter()
        .map(|spec| StreamCheck {
            index: spec.index,
            keys: spec.keys.clone(),
            count: spec.count.clone(),
            created: 0,
            received: vec![Vec::new(); spec.keys.len()],
            failure: None,
            buffer: BytesMut::new(),
            unacknowledged: 0,
            events: Vec::new(),
        })
        .collect();
    let failure = connection(
        port,
        window,
        &streams,
        &mut checks,
        created,
        go,
        &mut stopped,
    )
    .await;
    checks
        .into_iter()
        .map(|mut check| {
            if let Some(why) = &failure {
                check.fail(why.clone());
            }
            (check.index, check.received, check.failure)
        })
        .collect()
}

/// Stream `i` of the connection (client streams are odd: RFC 9113 §5.1.1).
fn stream_id(i: usize) -> u32 {
    2 * i as u32 + 1
}

async fn connection(
    port: u16,
    window: u32,
    streams: &[StreamSpec],
    checks: &mut [StreamCheck],
    created: tokio::sync::oneshot::Sender<()>,
    go: Option<tokio::sync::oneshot::Receiver<()>>,
    stopped: &mut tokio::sync::watch::Receiver<bool>,
) -> Option<String> {
    let mut socket = match TcpStream::connect(("127.0.0.1", port)).await {
        Ok(socket) => socket,
        Err(e) => return Some(format!("connect: {e}")),
    };
    socket.set_nodelay(true).ok();
    let authority = format!("127.0.0.1:{port}");
    let mut out = BytesMut::new();
    out.put_slice(PREFACE);
    frame_header(&mut out, 12, SETTINGS, 0, 0);
    out.put_u16(SETTINGS_ENABLE_PUSH);
    out.put_u32(0);
    out.put_u16(SETTINGS_INITIAL_WINDOW_SIZE);
    out.put_u32(window);
    if window > DEFAULT_WINDOW {
        window_update(&mut out, 0, window - DEFAULT_WINDOW);
    }
    for (i, spec) in streams.iter().enumerate() {
        let mut block = BytesMut::new();
        literal_header(&mut block, ":method", "POST");
        literal_header(&mut block, ":scheme", "http");
        literal_header(&mut block, ":path", "/etcdserverpb.Watch/Watch");
        literal_header(&mut block, ":authority", &authority);
        literal_header(&mut block, "content-type", "application/grpc");
        literal_header(&mut block, "te", "trailers");
        frame_header(&mut out, block.len(), HEADERS, END_HEADERS, stream_id(i));
        out.put_slice(&block);
        let mut body = BytesMut::new();
        for create in &spec.creates {
            body.put_u8(0);
            body.put_u32(create.len() as u32);
            body.put_slice(create);
        }
        for part in body.chunks(FRAME_PAYLOAD_MAX) {
            frame_header(&mut out, part.len(), DATA, 0, stream_id(i));
            out.put_slice(part);
        }
    }
    if let Err(e) = socket.write_all(&out).await {
        return Some(format!("write: {e}"));
    }
    out.clear();

    let mut created = Some(created);
    let mut go = go;
    let mut input = BytesMut::with_capacity(64 * 1024);
    // Bytes read on the connection since its last WINDOW_UPDATE.
    let mut unacknowledged: u32 = 0;
    loop {
        if created.is_some() && checks.iter().all(|c| c.created == c.keys.len()) {
            let _ = created.take().unwrap().send(());
            if let Some(go) = go.take() {
                // The slow consumer: reads nothing more until told.
                tokio::select! {
                    _ = go => {}
                    _ = stopped.changed() => return None,
                }
            }
        }
        // Room for a good read (`read_buf` alone would grow the buffer 64 bytes at a time).
        input.reserve(64 * 1024);
        let read = tokio::select! {
            read = socket.read_buf(&mut input) => read,
            _ = stopped.changed() => return None,
        };
        READS.fetch_add(1, Ordering::Relaxed);
        match read {
            Ok(0) => return Some("connection closed".into()),
            Ok(_) => {}
            Err(e) => return Some(format!("read: {e}")),
        }
        while input.len() >= FRAME_HEADER_LEN {
            let len =
                usize::from(input[0]) << 16 | usize::from(input[1]) << 8 | usize::from(input[2]);
            let (kind, flags) = (input[3], input[4]);
            let id = u32::from_be_bytes(input[5..9].try_into().unwrap()) & 0x7fff_ffff;
            if len > FRAME_PAYLOAD_MAX {
                return Some(format!("frame of {len} bytes"));
            }
            if input.len() < FRAME_HEADER_LEN + len {
                break;
            }
            input.advance(FRAME_HEADER_LEN);
            let mut payload = input.split_to(len);
            let stream = (id as usize).checked_sub(1).map(|i| i / 2);
            let check = stream
                .and_then(|i| checks.get_mut(i))
                .filter(|_| id % 2 == 1);
            match kind {
                DATA => {
                    let Some(check) = check else {
                        return Some(format!("DATA on stream {id}"));
                    };
                    unacknowledged += len as u32;
                    check.unacknowledged += len as u32;
                    if flags & PADDED != 0 {
                        let pad = payload.first().copied().unwrap_or(0) as usize;
                        if pad + 1 > payload.len() {
                            return Some("bad padding".into());
                        }
                        payload.advance(1);
                        payload.truncate(payload.len() - pad);
                    }
                    check.buffer.extend_from_slice(&payload);
                    check.drain_messages();
                    if flags & END_STREAM != 0 {
                        check.fail("stream ended".into());
                    }
                    if check.unacknowledged >= window / 2 {
                        window_update(&mut out, id, check.unacknowledged);
                        check.unacknowledged = 0;
                    }
                }
                HEADERS | CONTINUATION => {
                    // Response headers; with END_STREAM they are trailers: the stream
                    // ended, which a watch stream does only on failure here.
                    if kind == HEADERS && flags & PRIORITY != 0 && payload.len() < 5 {
                        return Some("bad HEADERS".into());
                    }
                    if flags & END_STREAM != 0 {
                        match check {
                            Some(check) => check.fail("stream ended by trailers".into()),
                            None => return Some(format!("trailers on stream {id}")),
                        }
                    }
                }
                RST_STREAM => match check {
                    Some(check) => check.fail(format!("stream reset: {payload:?}")),
                    None => return Some(format!("RST_STREAM on stream {id}")),
                },
                SETTINGS if flags & ACK == 0 => frame_header(&mut out, 0, SETTINGS, ACK, 0),
                PING if flags & ACK == 0 => {
                    frame_header(&mut out, payload.len(), PING, ACK, 0);
                    out.put_slice(&payload);
                }
                GOAWAY => return Some(format!("GOAWAY {payload:?}")),
                _ => {}
            }
        }
        if unacknowledged >= window / 2 {
            window_update(&mut out, 0, unacknowledged);
            unacknowledged = 0;
        }
        if !out.is_empty() {
            if let Err(e) = socket.write_all(&out).await {
                return Some(format!("write: {e}"));
            }
            out.clear();
        }
    }
}
