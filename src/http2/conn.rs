//! The connection driver: one reader loop (this task) and one writer task sharing
//! `Rc<RefCell<Shared>>` on the same glommio executor (single thread, no locks).
//!
//! Data path: the reader reads up to `read_buffer_bytes` at a time (starting at
//! `READ_BUFFER_BYTES_INITIAL` and growing only while reads fill it; a quiet connection
//! goes back to that size) and parses every
//! complete frame in the buffer; DATA payloads stay `Bytes` slices of that buffer
//! (zero-copy) until the handler takes them. Everything we send is appended to one
//! output buffer; the writer swaps it out and writes it in one call whenever it holds
//! data and the socket accepts it (never on a timer), so frames produced while a write
//! is in flight coalesce into the next one.
//!
//! Invariants:
//! - The `RefCell` is never borrowed across an `.await`.
//! - Response DATA leaves a stream's queue only within both the stream's and the
//!   connection's send window and the peer's SETTINGS_MAX_FRAME_SIZE.
//! - A connection error sends GOAWAY with the highest stream id we processed, fails every
//!   stream (their handlers see the connection as gone), flushes and closes.
//! - Errors are classified as RFC 9113 §5.4 says: stream errors reset one stream (the
//!   HPACK state is kept in sync by decoding every header block), connection errors end all.
//! - Everything the peer can make us do is bounded (`super::limits`): the reader handles at
//!   most `FRAMES_PER_TURN_MAX` frames before it yields to the rest of the core, stops
//!   reading while `CONTROL_FRAMES_UNSENT_MAX` answers wait unsent, and ends the
//!   connection with GOAWAY ENHANCE_YOUR_CALM on rapid resets, too many provoked resets,
//!   oversized or endless header blocks, small-frame floods beyond the overhead budget,
//!   and pings beyond the keepalive policy.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::config::{ServerConfig, ShutdownSignal};
use super::flow::{RecvWindow, SendWindow};
use super::frame::{self, ErrorCode, Frame, FrameError, FrameHeader, Settings, FRAME_HEADER_LEN};
use super::hpack::{self, HeaderList};
use super::limits::{self, OverheadBudget, PingPolicy, ResetWindow};
use super::stream::{State, Stream};

/// Most response bytes moved from stream queues into the output buffer per writer batch,
/// so one huge message cannot starve control frames of other streams for long.
const WRITE_BATCH_DATA_BYTES_MAX: usize = 512 * 1024;

/// Why a connection ended abnormally.
#[derive(Debug)]
pub enum ConnError {
    Io(io::Error),
    /// We sent GOAWAY with this code (RFC 9113 §5.4.1).
    Protocol(ErrorCode, &'static str),
}

impl std::fmt::Display for ConnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnError::Io(e) => write!(f, "http2 connection I/O error: {e}"),
            ConnError::Protocol(code, why) => {
                write!(f, "http2 connection error {:#x}: {why}", code.0)
            }
        }
    }
}

impl std::error::Error for ConnError {}

impl From<io::Error> for ConnError {
    fn from(e: io::Error) -> Self {
        ConnError::Io(e)
    }
}

/// The stream (or the whole connection) is gone: reset, finished, or closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamGone;

/// A validated request head handed to the application layer.
pub struct Request {
    pub stream: StreamRef,
    pub method: Bytes,
    pub path: Bytes,
    /// Regular (non-pseudo) header fields, in order; names are lowercase (RFC 9113 §8.2.1).
    pub fields: Vec<(Bytes, Bytes)>,
    /// Whether the HEADERS carried END_STREAM (no request body).
    pub end_stream: bool,
}

/// The peer's settings that shape what we send.
struct PeerSettings {
    initial_window_size: u32,
    max_frame_size: u32,
}

struct PendingHeaders {
    stream_id: u32,
    end_stream: bool,
    block: Vec<u8>,
    /// CONTINUATION frames received for this block so far.
    continuations: usize,
}

/// State shared by the reader, the writer and every stream handle.
pub(crate) struct Shared {
    out: Vec<u8>,
    writer_waker: Option<Waker>,
    /// Set when the writer should flush what it has and stop.
    closing: bool,
    /// Set when the connection is gone: every stream operation fails.
    dead: bool,
    streams: HashMap<u32, Stream>,
    /// Streams that have queued DATA or trailers and may be able to send.
    send_list: VecDeque<u32>,
    conn_send_window: SendWindow,
    conn_recv_window: RecvWindow,
    peer: PeerSettings,
    /// Highest client stream id seen (RFC 9113 §5.1.1: new ids must increase).
    max_seen_stream_id: u32,
    /// Set once we sent a graceful GOAWAY: later streams are refused.
    goaway_sent: bool,
    drain_waker: Option<Waker>,
    /// Peer-provoked answers (PING/SETTINGS acks, RST_STREAM) in `out`, and in the batch
    /// the writer is writing: together bounded by `limits::CONTROL_FRAMES_UNSENT_MAX`.
    control_queued: usize,
    control_in_flight: usize,
    /// The reader, while it waits for those answers to go out.
    reader_waker: Option<Waker>,
    /// Streams we reset for the client's errors (`limits::SERVER_RESETS_MAX`).
    server_resets: usize,
    /// Set when HEADERS or DATA went out: forgives the client's ping strikes.
    response_frames_sent: bool,
    /// Since when no stream is open (None while one is): for the idle timeout.
    idle_since: Option<Instant>,
    /// Response bytes queued on all streams and not yet moved into `out`, plus those
    /// reserved by the application for answers it is still assembling.
    send_queued_bytes_total: usize,
    /// Handlers waiting for room under the cap to reserve answer bytes.
    room_wakers: Vec<Waker>,
    /// HEADERS and DATA frames sent, and streams the client opened: what it has earned
    /// of `limits::OverheadBudget`.
    frames_sent: u64,
    streams_opened: u64,
}

impl Shared {
    fn wake_writer(&mut self) {
        if let Some(w) = self.writer_waker.take() {
            w.wake();
        }
    }

    fn send_rst(&mut self, stream_id: u32, code: ErrorCode) {
        frame::encode_rst_stream(&mut self.out, stream_id, code);
        self.control_queued += 1;
        if code != ErrorCode::NO_ERROR && code != ErrorCode::CANCEL {
            self.server_resets += 1;
        }
        self.wake_writer();
    }

    /// Whether new requests may be handed to the application: not while the client
    /// leaves more than `limits::CONNECTION_SEND_QUEUE_BYTES_MAX` of responses unread.
    fn output_fits(&self) -> bool {
        self.send_queued_bytes_total <= limits::CONNECTION_SEND_QUEUE_BYTES_MAX
    }

    fn wake_reader_if_output_fits(&mut self) {
        if self.output_fits() {
            if let Some(w) = self.reader_waker.take() {
                w.wake();
            }
            for w in self.room_wakers.drain(..) {
                w.wake();
            }
        }
    }

    fn control_unsent(&self) -> usize {
        self.control_queued + self.control_in_flight
    }

    /// Removes a stream (it is now Closed) and wakes everyone waiting on it.
    fn close_stream(&mut self, stream_id: u32) {
        if let Some(mut s) = self.streams.remove(&stream_id) {
            self.send_queued_bytes_total -= s.send_queued_bytes + s.reserved_bytes;
            self.wake_reader_if_output_fits();
            s.state = State::Closed;
            s.wake_all();
        }
        if self.streams.is_empty() {
            self.idle_since.get_or_insert_with(Instant::now);
            if let Some(w) = self.drain_waker.take() {
                w.wake();
            }
        }
    }

    fn reset_stream(&mut self, stream_id: u32, code: ErrorCode) {
        self.send_rst(stream_id, code);
        self.close_stream(stream_id);
    }

    /// Marks the connection gone and fails every stream.
    fn fail_all(&mut self) {
        self.dead = true;
        self.closing = true;
        let ids: Vec<u32> = self.streams.keys().copied().collect();
        for id in ids {
            self.close_stream(id);
        }
        self.wake_writer();
    }

    /// Our side of the stream ended (trailers or a headers-only response went out).
    fn local_end_stream(&mut self, stream_id: u32) {
        let Some(s) = self.streams.get_mut(&stream_id) else {
            return;
        };
        s.state = s.state.send_end_stream();
        if s.state == State::HalfClosedLocal {
            // The response is complete while the client is still sending: tell it to stop
            // (RFC 9113 §8.1) rather than keep buffering a request nobody reads.
            frame::encode_rst_stream(&mut self.out, stream_id, ErrorCode::NO_ERROR);
            self.control_queued += 1;
        }
        self.close_stream(stream_id);
    }

    fn schedule(&mut self, stream_id: u32) {
        if let Some(s) = self.streams.get_mut(&stream_id) {
            if !s.in_send_list && (!s.send_queue.is_empty() || s.pending_trailers.is_some()) {
                s.in_send_list = true;
                self.send_list.push_back(stream_id);
                self.wake_writer();
            }
        }
    }

    /// Moves queued response data into the output buffer within the flow-control windows,
    /// round-robin across streams, one frame per stream per turn. A frame gathers as many
    /// queued pieces as fit: a stream that queued many small messages (watch events) sends
    /// few full frames, not one small frame each — cheaper for both ends, and h2-based
    /// clients treat a flood of small buffered DATA frames as abuse (ENHANCE_YOUR_CALM).
    fn fill_data(&mut self) {
        self.fill_data_frames();
        self.wake_reader_if_output_fits();
    }

    fn fill_data_frames(&mut self) {
        let max_frame = self.peer.max_frame_size as usize;
        let mut moved = 0usize;
        let mut skipped = 0usize;
        while moved < WRITE_BATCH_DATA_BYTES_MAX && skipped < self.send_list.len() {
            let Some(stream_id) = self.send_list.pop_front() else {
                break;
            };
            let Some(s) = self.streams.get_mut(&stream_id) else {
                continue;
            };
            if !s.send_queue.is_empty() {
                let n = s
                    .send_queued_bytes
                    .min(max_frame)
                    .min(s.send_window.available())
                    .min(self.conn_send_window.available());
                if n == 0 {
                    if self.conn_send_window.available() == 0 {
                        // Blocked on the connection: keep our place and stop.
                        self.send_list.push_front(stream_id);
                        return;
                    }
                    // Blocked on its own window: off the list until a WINDOW_UPDATE.
                    s.in_send_list = false;
                    continue;
                }
                frame::encode_data_head(&mut self.out, stream_id, n, false);
                let mut left = n;
                while left > 0 {
                    let chunk = s
                        .send_queue
                        .front_mut()
                        .expect("send_queued_bytes counts it");
                    let k = chunk.len().min(left);
                    self.out.extend_from_slice(&chunk[..k]);
                    bytes::Buf::advance(chunk, k);
                    if chunk.is_empty() {
                        s.send_queue.pop_front();
                    }
                    left -= k;
                }
                s.send_queued_bytes -= n;
                self.send_queued_bytes_total -= n;
                s.send_window.consume(n);
                self.conn_send_window.consume(n);
                self.response_frames_sent = true;
                self.frames_sent += 1;
                moved += n;
                skipped = 0;
                if let Some(w) = s.send_waker.take() {
                    w.wake();
                }
            }
            if s.send_queue.is_empty() {
                s.in_send_list = false;
                if let Some(block) = s.pending_trailers.take() {
                    frame::encode_header_block(&mut self.out, stream_id, &block, true, max_frame);
                    self.frames_sent += 1;
                    self.local_end_stream(stream_id);
                }
            } else {
                self.send_list.push_back(stream_id);
            }
        }
    }

    fn connection_error(&mut self, code: ErrorCode, why: &'static str) -> ConnError {
        frame::encode_goaway(&mut self.out, self.max_seen_stream_id, code, why.as_bytes());
        self.fail_all();
        ConnError::Protocol(code, why)
    }
}

/// A handle on one stream for the application layer.
pub struct StreamRef {
    shared: Rc<RefCell<Shared>>,
    stream_id: u32,
}

impl StreamRef {
    pub fn stream_id(&self) -> u32 {
        self.stream_id
    }

    /// Whether the stream is gone (reset by either side, finished, or connection dead).
    pub fn is_gone(&self) -> bool {
        let shared = self.shared.borrow();
        shared.dead || !shared.streams.contains_key(&self.stream_id)
    }

    /// Next chunk of request data; `Ready(None)` after the client's END_STREAM;
    /// `Ready(Some(Err(StreamGone)))` if the stream or connection is gone. Taking a chunk gives its
    /// bytes back to the stream's window.
    pub fn poll_data(&self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, StreamGone>>> {
        let mut guard = self.shared.borrow_mut();
        let shared = &mut *guard;
        if shared.dead {
            return Poll::Ready(Some(Err(StreamGone)));
        }
        let Some(s) = shared.streams.get_mut(&self.stream_id) else {
            return Poll::Ready(Some(Err(StreamGone)));
        };
        if let Some(chunk) = s.recv_chunks.pop_front() {
            if s.state.remote_open() {
                if let Some(increment) = s.recv_window.release(chunk.len() as u32) {
                    frame::encode_window_update(&mut shared.out, self.stream_id, increment);
                    shared.wake_writer();
                }
            }
            return Poll::Ready(Some(Ok(chunk)));
        }
        if !s.state.remote_open() {
            return Poll::Ready(None);
        }
        s.recv_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Writes a response header block now (headers are not flow-controlled). With
    /// `end_stream`, this is the whole response (e.g. gRPC Trailers-Only).
    pub fn send_headers(&self, block: &[u8], end_stream: bool) -> Result<(), StreamGone> {
        let mut guard = self.shared.borrow_mut();
        let shared = &mut *guard;
        if shared.dead {
            return Err(StreamGone);
        }
        let Some(s) = shared.streams.get_mut(&self.stream_id) else {
            return Err(StreamGone);
        };
        debug_assert!(!s.headers_sent, "response headers sent twice");
        s.headers_sent = true;
        shared.response_frames_sent = true;
        shared.frames_sent += 1;
        let max_frame = shared.peer.max_frame_size as usize;
        frame::encode_header_block(
            &mut shared.out,
            self.stream_id,
            block,
            end_stream,
            max_frame,
        );
        if end_stream {
            shared.local_end_stream(self.stream_id);
        }
        shared.wake_writer();
        Ok(())
    }

    /// Queues response data; it leaves as the peer's windows allow.
    pub fn send_data(&self, data: Bytes) -> Result<(), StreamGone> {
        let mut shared = self.shared.borrow_mut();
        if shared.dead {
            return Err(StreamGone);
        }
        let Some(s) = shared.streams.get_mut(&self.stream_id) else {
            return Err(StreamGone);
        };
        if data.is_empty() {
            // Nothing to frame; an empty piece would only stall `fill_data`.
            return Ok(());
        }
        s.send_queued_bytes += data.len();
        let len = data.len();
        s.send_queue.push_back(data);
        shared.send_queued_bytes_total += len;
        shared.schedule(self.stream_id);
        Ok(())
    }

    /// Ends the response with a trailer block, after all queued data.
    pub fn send_trailers(&self, block: Vec<u8>) -> Result<(), StreamGone> {
        let mut shared = self.shared.borrow_mut();
        if shared.dead {
            return Err(StreamGone);
        }
        let Some(s) = shared.streams.get_mut(&self.stream_id) else {
            return Err(StreamGone);
        };
        s.pending_trailers = Some(block);
        shared.schedule(self.stream_id);
        Ok(())
    }

    pub fn headers_sent(&self) -> bool {
        let shared = self.shared.borrow();
        shared
            .streams
            .get(&self.stream_id)
            .is_some_and(|s| s.headers_sent)
    }

    /// Ready when at most `bound` response bytes wait unsent, or the stream is gone
    /// (`Err`).
    pub fn poll_send_capacity(
        &self,
        cx: &mut Context<'_>,
        bound: usize,
    ) -> Poll<Result<(), StreamGone>> {
        let mut shared = self.shared.borrow_mut();
        if shared.dead {
            return Poll::Ready(Err(StreamGone));
        }
        let Some(s) = shared.streams.get_mut(&self.stream_id) else {
            return Poll::Ready(Err(StreamGone));
        };
        if s.send_queued_bytes <= bound {
            return Poll::Ready(Ok(()));
        }
        s.send_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Ready once the connection's queued and reserved answer bytes leave room for `bytes`
    /// more under `limits::CONNECTION_SEND_QUEUE_BYTES_MAX` (at once when nothing is
    /// queued, so any answer makes progress), and then reserves them for this stream:
    /// an application assembling a large answer counts what it holds against the same
    /// cap as what is queued, so the connection's answers in memory stay bounded however
    /// many requests its client sends. `Err` once the stream is gone (its reservation
    /// goes with it).
    pub fn poll_reserve(&self, cx: &mut Context<'_>, bytes: usize) -> Poll<Result<(), StreamGone>> {
        let mut guard = self.shared.borrow_mut();
        let shared = &mut *guard;
        if shared.dead {
            return Poll::Ready(Err(StreamGone));
        }
        let total = shared.send_queued_bytes_total;
        let Some(s) = shared.streams.get_mut(&self.stream_id) else {
            return Poll::Ready(Err(StreamGone));
        };
        if total > 0 && total + bytes > limits::CONNECTION_SEND_QUEUE_BYTES_MAX {
            shared.room_wakers.push(cx.waker().clone());
            return Poll::Pending;
        }
        s.reserved_bytes += bytes;
        shared.send_queued_bytes_total += bytes;
        Poll::Ready(Ok(()))
    }

    /// Changes this stream's reservation to `bytes` without waiting (a chunk came out
    /// larger or smaller than reserved, or part of it was queued).
    pub fn set_reserved(&self, bytes: usize) {
        let mut guard = self.shared.borrow_mut();
        let shared = &mut *guard;
        if let Some(s) = shared.streams.get_mut(&self.stream_id) {
            shared.send_queued_bytes_total =
                shared.send_queued_bytes_total - s.reserved_bytes + bytes;
            s.reserved_bytes = bytes;
            shared.wake_reader_if_output_fits();
        }
    }

    /// Ready once the stream is gone (reset, finished, or connection closed).
    pub fn poll_closed(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut shared = self.shared.borrow_mut();
        if shared.dead {
            return Poll::Ready(());
        }
        match shared.streams.get_mut(&self.stream_id) {
            None => Poll::Ready(()),
            Some(s) => {
                s.closed_waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    /// Resets the stream with `code` (RST_STREAM) unless it is already gone.
    pub fn reset(&self, code: ErrorCode) {
        let mut shared = self.shared.borrow_mut();
        if !shared.dead && shared.streams.contains_key(&self.stream_id) {
            shared.reset_stream(self.stream_id, code);
        }
    }
}

/// Lets the reader and the writer task poll the one socket without a lock: each poll
/// borrows it only for the duration of the (synchronous) poll call. The byte stream must
/// keep separate wakers for its two directions (see [`serve_connection_with`]), so that
/// the two tasks' polls do not interfere.
struct SocketHalf<S>(Rc<RefCell<S>>);

impl<S: AsyncRead + Unpin> AsyncRead for SocketHalf<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for SocketHalf<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_flush(cx)
    }
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_close(cx)
    }
}

async fn writer_task<S: AsyncWrite + Unpin>(socket: Rc<RefCell<S>>, shared: Rc<RefCell<Shared>>) {
    let mut sock = SocketHalf(socket);
    // Output buffers start empty and grow with what is sent; the writer keeps the two it
    // swaps, so a busy connection allocates rarely and an idle one holds little.
    let mut spare: Vec<u8> = Vec::new();
    loop {
        let batch = poll_fn(|cx| {
            let mut s = shared.borrow_mut();
            if !s.dead {
                s.fill_data();
            }
            if !s.out.is_empty() {
                let fresh = std::mem::take(&mut spare);
                s.control_in_flight = std::mem::take(&mut s.control_queued);
                return Poll::Ready(Some(std::mem::replace(&mut s.out, fresh)));
            }
            if s.closing {
                return Poll::Ready(None);
            }
            s.writer_waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await;
        let Some(mut batch) = batch else { break };
        // The flush matters for TLS: a write can return once the stream has taken every
        // plaintext byte while ciphertext still waits in its buffer for a full socket to
        // drain; flushing sends it now instead of with the next batch, which may never
        // come. For plain sockets it is a no-op.
        if sock.write_all(&batch).await.is_err() || sock.flush().await.is_err() {
            shared.borrow_mut().fail_all();
            break;
        }
        {
            // The peer has taken these answers: a reader paused on them may go on.
            let mut s = shared.borrow_mut();
            s.control_in_flight = 0;
            if let Some(w) = s.reader_waker.take() {
                w.wake();
            }
        }
        batch.clear();
        // A buffer grown by a burst of responses is dropped, not kept for an idle
        // connection to hold.
        if batch.capacity() <= OUTPUT_BUFFER_BYTES_KEPT_MAX {
            spare = batch;
        }
    }
    let _ = sock.flush().await;
}

enum Wake {
    Read(io::Result<usize>),
    /// The answers the reader paused on have gone out.
    Resume,
    Shutdown,
    Drained,
    GraceExpired,
    /// One of `Reader::next_timer`'s deadlines.
    Timer,
}

/// Server-side keepalive (`--grpc-keepalive-interval`/`--grpc-keepalive-timeout`): after
/// `interval` without reading anything we ping, and a connection that then stays silent
/// for `timeout` is closed (grpc-go's `keepalive.ServerParameters`).
struct Keepalive {
    last_read_at: Instant,
    ping_sent_at: Option<Instant>,
}

/// Our keepalive PING's opaque data (RFC 9113 §6.7); any value would do.
const KEEPALIVE_PING_PAYLOAD: [u8; 8] = *b"tern-ka\0";
/// The first output buffer of a connection: room for our preface and a few small frames.
const OUTPUT_BUFFER_BYTES_INITIAL: usize = 1024;
/// Largest output buffer the writer keeps for reuse once it has been written; larger ones
/// (after a burst of responses) are freed.
const OUTPUT_BUFFER_BYTES_KEPT_MAX: usize = 64 * 1024;
/// The first read buffer of a connection, and what a quiet one holds; see `Reader::run`.
const READ_BUFFER_BYTES_INITIAL: usize = 4 * 1024;

/// Serves one HTTP/2 connection over `stream`, handing each new request to `on_request`.
///
/// `stream` is any byte stream (plain TCP, TLS, a unix socket). The reader and the writer
/// task poll it concurrently, each direction from its own task, so a pending read must not
/// lose the waker of a pending write or the other way round: glommio's sockets keep one
/// waker per direction, and a TLS stream over one must only read in `poll_read` and only
/// write in `poll_write`/`poll_flush`/`poll_close` (futures-rustls does, once the handshake
/// is done; a read that fails may also write its alert, which ends the connection anyway).
pub async fn serve_connection_with<S: AsyncRead + AsyncWrite + Unpin + 'static>(
    stream: S,
    config: Rc<ServerConfig>,
    on_request: impl Fn(Request),
    shutdown: ShutdownSignal,
) -> Result<(), ConnError> {
    let socket = Rc::new(RefCell::new(stream));
    let shared = Rc::new(RefCell::new(Shared {
        out: Vec::with_capacity(OUTPUT_BUFFER_BYTES_INITIAL),
        writer_waker: None,
        closing: false,
        dead: false,
        streams: HashMap::new(),
        send_list: VecDeque::new(),
        conn_send_window: SendWindow::new(frame::DEFAULT_WINDOW_SIZE),
        conn_recv_window: RecvWindow::new(
            frame::DEFAULT_WINDOW_SIZE,
            config.connection_window_bytes,
        ),
        peer: PeerSettings {
            initial_window_size: frame::DEFAULT_WINDOW_SIZE,
            max_frame_size: frame::MAX_FRAME_SIZE_DEFAULT,
        },
        max_seen_stream_id: 0,
        goaway_sent: false,
        drain_waker: None,
        control_queued: 0,
        control_in_flight: 0,
        reader_waker: None,
        server_resets: 0,
        response_frames_sent: false,
        idle_since: Some(Instant::now()),
        send_queued_bytes_total: 0,
        room_wakers: Vec::new(),
        frames_sent: 0,
        streams_opened: 0,
    }));
    {
        // Server preface: our SETTINGS, then raise the connection window (RFC 9113 §3.4).
        let mut s = shared.borrow_mut();
        let settings = Settings {
            header_table_size: Some(config.header_table_bytes),
            enable_push: Some(0),
            max_concurrent_streams: Some(config.max_concurrent_streams),
            initial_window_size: Some(config.initial_stream_window_bytes),
            max_frame_size: Some(config.max_frame_bytes),
            max_header_list_size: Some(config.max_header_list_bytes),
        };
        frame::encode_settings(&mut s.out, &settings);
        if let Some(increment) = s.conn_recv_window.grow_to_target() {
            frame::encode_window_update(&mut s.out, 0, increment);
        }
    }
    let writer = glommio::spawn_local(writer_task(socket.clone(), shared.clone()));
    let mut reader = Reader {
        shared: shared.clone(),
        config: config.clone(),
        decoder: hpack::Decoder::new(config.header_table_bytes as usize),
        pending_headers: None,
        preface_done: false,
        settings_seen: false,
        client_resets: ResetWindow::default(),
        overhead: OverheadBudget::default(),
        pings: PingPolicy::new(config.keepalive_min_time),
        held_requests: VecDeque::new(),
    };
    let result = reader
        .run(SocketHalf(socket.clone()), &on_request, &shutdown)
        .await;
    {
        let mut s = shared.borrow_mut();
        s.fail_all();
    }
    writer.await;
    // Both tasks are done with the socket; close it (for TLS this sends close_notify;
    // dropping it closes the file descriptor).
    let _ = SocketHalf(socket).close().await;
    result
}

struct Reader {
    shared: Rc<RefCell<Shared>>,
    config: Rc<ServerConfig>,
    decoder: hpack::Decoder,
    pending_headers: Option<PendingHeaders>,
    preface_done: bool,
    settings_seen: bool,
    client_resets: ResetWindow,
    overhead: OverheadBudget,
    pings: PingPolicy,
    /// New requests not yet handed to the application (see `Shared::output_fits`).
    held_requests: VecDeque<Request>,
}

/// Why `Reader::process` returned.
enum Turn {
    /// Every complete frame is handled; read more.
    NeedBytes,
    /// It handled `FRAMES_PER_TURN_MAX` frames: let the core's other tasks run first.
    Yield,
    /// Too many answers wait unsent: read nothing until the writer has sent them.
    Paused,
}

/// Most bytes one socket read asks for (see the comment at its use).
const READ_CHUNK_BYTES: usize = 32 * 1024;

impl Reader {
    async fn run<S: AsyncRead + Unpin>(
        &mut self,
        mut sock: SocketHalf<S>,
        on_request: &dyn Fn(Request),
        shutdown: &ShutdownSignal,
    ) -> Result<(), ConnError> {
        let read_size = self.config.read_buffer_bytes.max(FRAME_HEADER_LEN + 1024);
        // Start small: an idle connection holds only this much; the buffer grows to
        // `read_size` while reads fill it.
        let mut buf = BytesMut::with_capacity(READ_BUFFER_BYTES_INITIAL.min(read_size));
        let mut room_wanted = READ_BUFFER_BYTES_INITIAL;
        let mut grace_deadline: Option<Instant> = None;
        let accepted_at = Instant::now();
        let mut keepalive = Keepalive {
            last_read_at: accepted_at,
            ping_sent_at: None,
        };
        loop {
            let turn = match self.process(&mut buf, on_request) {
                Ok(turn) => turn,
                Err(e) => return Err(self.shared.borrow_mut().connection_error_from(e)),
            };
            if self.shared.borrow().dead {
                return Ok(());
            }
            if let Turn::Yield = turn {
                futures_lite::future::yield_now().await;
                continue;
            }
            let paused = matches!(turn, Turn::Paused);
            // Read more (unless paused), or let shutdown, drain or a timer intervene.
            let start = buf.len();
            let mut offered = 0;
            if !paused {
                if start == 0
                    && room_wanted == READ_BUFFER_BYTES_INITIAL
                    && buf.capacity() > READ_BUFFER_BYTES_INITIAL
                {
                    // Nothing half-read and the last read did not fill its offer: a quiet
                    // connection. Give a buffer grown by a burst back (a fresh small one
                    // replaces it), so an idle connection holds READ_BUFFER_BYTES_INITIAL.
                    buf = BytesMut::with_capacity(READ_BUFFER_BYTES_INITIAL);
                }
                if buf.capacity() - start < room_wanted {
                    buf.reserve(room_wanted.min(read_size));
                }
                // The read target must be initialised memory, so each read zeroes what it
                // offers the kernel: offer what the last read suggests (`room_wanted`), not
                // the whole spare capacity, or small requests pay for zeroing a quarter
                // megabyte each and an idle connection touches pages it never fills.
                offered = (buf.capacity() - start).min(room_wanted.max(READ_BUFFER_BYTES_INITIAL));
                buf.resize(start + offered, 0);
            }
            let next_timer = self.next_timer(accepted_at, &keepalive);
            let wake = {
                let read = async {
                    if paused {
                        self.control_drained().await;
                        Wake::Resume
                    } else {
                        Wake::Read(sock.read(&mut buf[start..]).await)
                    }
                };
                let shut = async {
                    if grace_deadline.is_some() {
                        std::future::pending::<()>().await;
                    }
                    shutdown.wait().await;
                    Wake::Shutdown
                };
                let drained = async {
                    match grace_deadline {
                        None => std::future::pending::<Wake>().await,
                        Some(deadline) => {
                            let drain = async {
                                poll_fn(|cx| {
                                    let mut s = self.shared.borrow_mut();
                                    if s.streams.is_empty() {
                                        Poll::Ready(Wake::Drained)
                                    } else {
                                        s.drain_waker = Some(cx.waker().clone());
                                        Poll::Pending
                                    }
                                })
                                .await
                            };
                            let timer = async {
                                glommio::timer::sleep(
                                    deadline.saturating_duration_since(Instant::now()),
                                )
                                .await;
                                Wake::GraceExpired
                            };
                            futures_lite::future::or(drain, timer).await
                        }
                    }
                };
                let release = async {
                    if self.held_requests.is_empty() {
                        std::future::pending::<()>().await;
                    }
                    self.output_fits_again().await;
                    Wake::Resume
                };
                let timer = async {
                    match next_timer {
                        None => std::future::pending::<Wake>().await,
                        Some(at) => {
                            glommio::timer::sleep(at.saturating_duration_since(Instant::now()))
                                .await;
                            Wake::Timer
                        }
                    }
                };
                futures_lite::future::or(
                    futures_lite::future::or(read, release),
                    futures_lite::future::or(shut, futures_lite::future::or(drained, timer)),
                )
                .await
            };
            if !paused {
                if let Wake::Read(Ok(n)) = wake {
                    buf.truncate(start + n);
                    // Grow the next read while reads fill what they are offered (doubling
                    // up to READ_CHUNK_BYTES); fall back to the initial size when one does not.
                    room_wanted = if n == offered {
                        (offered * 2).clamp(READ_BUFFER_BYTES_INITIAL, READ_CHUNK_BYTES)
                    } else {
                        READ_BUFFER_BYTES_INITIAL
                    };
                } else {
                    buf.truncate(start);
                }
            }
            match wake {
                Wake::Read(Ok(0)) => return Ok(()),
                Wake::Read(Ok(_)) => {
                    keepalive.last_read_at = Instant::now();
                    keepalive.ping_sent_at = None;
                }
                Wake::Read(Err(e)) => return Err(ConnError::Io(e)),
                Wake::Resume => {}
                Wake::Shutdown => {
                    // Graceful GOAWAY: finish streams up to the last id we saw, refuse others.
                    let mut s = self.shared.borrow_mut();
                    let last = s.max_seen_stream_id;
                    frame::encode_goaway(&mut s.out, last, ErrorCode::NO_ERROR, b"");
                    s.goaway_sent = true;
                    s.wake_writer();
                    grace_deadline = Some(Instant::now() + self.config.graceful_shutdown);
                }
                Wake::Drained | Wake::GraceExpired => return Ok(()),
                Wake::Timer => {
                    if let Some(end) = self.on_timer(accepted_at, &mut keepalive) {
                        return end;
                    }
                }
            }
        }
    }

    /// The earliest of the deadlines that apply now: the preface deadline, the idle
    /// timeout, and the keepalive ping or its timeout.
    fn next_timer(&self, accepted_at: Instant, keepalive: &Keepalive) -> Option<Instant> {
        let config = &self.config;
        let mut next: Option<Instant> = None;
        let mut consider = |at: Instant| next = Some(next.map_or(at, |n| n.min(at)));
        if !self.settings_seen {
            consider(accepted_at + config.handshake_timeout);
        }
        if let (Some(since), Some(idle)) = (self.shared.borrow().idle_since, config.idle_timeout) {
            consider(since + idle);
        }
        if let Some(interval) = config.keepalive_interval {
            match keepalive.ping_sent_at {
                None => consider(keepalive.last_read_at + interval),
                Some(sent) => consider(sent + config.keepalive_timeout),
            }
        }
        next
    }

    /// Acts on whichever deadline has passed; Some(result) ends the connection.
    fn on_timer(
        &mut self,
        accepted_at: Instant,
        keepalive: &mut Keepalive,
    ) -> Option<Result<(), ConnError>> {
        let now = Instant::now();
        let config = self.config.clone();
        if !self.settings_seen && now >= accepted_at + config.handshake_timeout {
            // As Go's HTTP/2 server does on its preface timeout: close, say nothing.
            return Some(Err(ConnError::Io(io::Error::new(
                io::ErrorKind::TimedOut,
                "no client preface in time",
            ))));
        }
        let mut s = self.shared.borrow_mut();
        if let (Some(since), Some(idle)) = (s.idle_since, config.idle_timeout) {
            if now >= since + idle {
                // grpc-go's MaxConnectionIdle: a graceful GOAWAY, then close.
                let last = s.max_seen_stream_id;
                frame::encode_goaway(&mut s.out, last, ErrorCode::NO_ERROR, b"idle");
                s.wake_writer();
                return Some(Ok(()));
            }
        }
        if let Some(interval) = config.keepalive_interval {
            match keepalive.ping_sent_at {
                None if now >= keepalive.last_read_at + interval => {
                    frame::encode_ping(&mut s.out, false, &KEEPALIVE_PING_PAYLOAD);
                    s.wake_writer();
                    keepalive.ping_sent_at = Some(now);
                }
                Some(sent) if now >= sent + config.keepalive_timeout => {
                    // grpc-go closes a connection that stays silent after its keepalive
                    // ping, without GOAWAY.
                    return Some(Err(ConnError::Io(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "keepalive ping not answered",
                    ))));
                }
                _ => {}
            }
        }
        None
    }

    /// Resolves once the client has read enough for held requests to go on.
    async fn output_fits_again(&self) {
        poll_fn(|cx| {
            let mut s = self.shared.borrow_mut();
            if s.dead || s.output_fits() {
                Poll::Ready(())
            } else {
                s.reader_waker = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }

    /// Resolves once fewer answers wait unsent than the limit allows, or the connection
    /// is gone.
    async fn control_drained(&self) {
        poll_fn(|cx| {
            let mut s = self.shared.borrow_mut();
            if s.dead || s.control_unsent() < limits::CONTROL_FRAMES_UNSENT_MAX {
                Poll::Ready(())
            } else {
                s.reader_waker = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }

    /// Consumes the preface and every complete frame in `buf`.
    fn process(
        &mut self,
        buf: &mut BytesMut,
        on_request: &dyn Fn(Request),
    ) -> Result<Turn, FrameError> {
        if !self.preface_done {
            let n = buf.len().min(frame::PREFACE.len());
            if buf[..n] != frame::PREFACE[..n] {
                return Err(FrameError::Connection(
                    ErrorCode::PROTOCOL_ERROR,
                    "invalid connection preface",
                ));
            }
            if n < frame::PREFACE.len() {
                return Ok(Turn::NeedBytes);
            }
            let _ = buf.split_to(frame::PREFACE.len());
            self.preface_done = true;
        }
        while !self.held_requests.is_empty() && self.shared.borrow().output_fits() {
            let request = self.held_requests.pop_front().expect("not empty");
            on_request(request);
        }
        let mut frames = 0usize;
        while let Some(header) = FrameHeader::parse(buf) {
            {
                let s = self.shared.borrow();
                if s.server_resets > limits::SERVER_RESETS_MAX {
                    return Err(FrameError::Connection(
                        ErrorCode::ENHANCE_YOUR_CALM,
                        "too many streams reset for errors",
                    ));
                }
                if s.control_unsent() >= limits::CONTROL_FRAMES_UNSENT_MAX {
                    return Ok(Turn::Paused);
                }
            }
            if frames == limits::FRAMES_PER_TURN_MAX {
                return Ok(Turn::Yield);
            }
            frames += 1;
            if header.length > self.config.max_frame_bytes {
                return Err(FrameError::Connection(
                    ErrorCode::FRAME_SIZE_ERROR,
                    "frame larger than SETTINGS_MAX_FRAME_SIZE",
                ));
            }
            let total = FRAME_HEADER_LEN + header.length as usize;
            if buf.len() < total {
                break;
            }
            let mut bytes = buf.split_to(total).freeze();
            let payload = bytes.split_off(FRAME_HEADER_LEN);
            if !self.settings_seen {
                // The client preface continues with a SETTINGS frame (RFC 9113 §3.4).
                if header.kind != frame::kind::SETTINGS || header.flags & frame::flag::ACK != 0 {
                    return Err(FrameError::Connection(
                        ErrorCode::PROTOCOL_ERROR,
                        "first frame is not SETTINGS",
                    ));
                }
                self.settings_seen = true;
            }
            match Frame::parse(header, payload) {
                Ok(f) => {
                    if limits::is_overhead(&f) {
                        let s = self.shared.borrow();
                        if !self.overhead.spend(s.frames_sent, s.streams_opened) {
                            return Err(FrameError::Connection(
                                ErrorCode::ENHANCE_YOUR_CALM,
                                "too many frames that ask for nothing",
                            ));
                        }
                    }
                    self.handle(f, on_request)?
                }
                Err(FrameError::Stream(stream_id, code, _)) => {
                    if self.pending_headers.is_some() {
                        return Err(FrameError::Connection(
                            ErrorCode::PROTOCOL_ERROR,
                            "frame interleaved in a header block",
                        ));
                    }
                    self.shared.borrow_mut().reset_stream(stream_id, code);
                }
                Err(e) => return Err(e),
            }
            if self.shared.borrow().dead {
                break;
            }
        }
        Ok(Turn::NeedBytes)
    }

    fn handle(&mut self, f: Frame, on_request: &dyn Fn(Request)) -> Result<(), FrameError> {
        use ErrorCode as E;
        let conn_err = |code, why| Err(FrameError::Connection(code, why));
        let header_block_bytes_max = self.header_block_bytes_max();
        // RFC 9113 §4.3: a header block is a contiguous sequence of frames.
        if let Some(p) = &mut self.pending_headers {
            let Frame::Continuation {
                stream_id,
                end_headers,
                fragment,
            } = f
            else {
                return conn_err(E::PROTOCOL_ERROR, "frame interleaved in a header block");
            };
            if stream_id != p.stream_id {
                return conn_err(E::PROTOCOL_ERROR, "CONTINUATION for another stream");
            }
            p.continuations += 1;
            if p.continuations > limits::continuation_frames_max(self.config.max_header_list_bytes)
            {
                return conn_err(E::ENHANCE_YOUR_CALM, "too many CONTINUATION frames");
            }
            if p.block.len() + fragment.len() > header_block_bytes_max {
                return conn_err(E::ENHANCE_YOUR_CALM, "header block too large");
            }
            p.block.extend_from_slice(&fragment);
            if end_headers {
                let p = self.pending_headers.take().expect("pending header block");
                return self.on_header_block(p.stream_id, p.end_stream, &p.block, on_request);
            }
            return Ok(());
        }
        match f {
            Frame::Data {
                stream_id,
                end_stream,
                data,
                flow_len,
            } => self.on_data(stream_id, end_stream, data, flow_len),
            Frame::Headers {
                stream_id,
                end_stream,
                end_headers,
                fragment,
                ..
            } => {
                // SETTINGS_MAX_HEADER_LIST_SIZE is enforced before decoding (RFC 9113
                // §6.5.2): a block too big to decode to an acceptable list is refused as
                // it arrives, never buffered or decoded.
                if fragment.len() > header_block_bytes_max {
                    return conn_err(E::ENHANCE_YOUR_CALM, "header block too large");
                }
                if end_headers {
                    self.on_header_block(stream_id, end_stream, &fragment, on_request)
                } else {
                    self.pending_headers = Some(PendingHeaders {
                        stream_id,
                        end_stream,
                        block: fragment.to_vec(),
                        continuations: 0,
                    });
                    Ok(())
                }
            }
            Frame::Continuation { .. } => {
                conn_err(E::PROTOCOL_ERROR, "CONTINUATION without HEADERS")
            }
            Frame::Priority { .. } | Frame::Unknown { .. } => Ok(()),
            Frame::RstStream { stream_id, .. } => {
                let mut s = self.shared.borrow_mut();
                if stream_id > s.max_seen_stream_id {
                    return conn_err(E::PROTOCOL_ERROR, "RST_STREAM on an idle stream");
                }
                // Only streams still being served and not yet answered count: resetting
                // one we finished, or one whose answer has begun (a client cancelling a
                // lease keep-alive or watch stream once it has what it wanted, as etcd's
                // benchmark does thousands of times a second), cost us no wasted work.
                let unanswered = s.streams.get(&stream_id).is_some_and(|st| !st.headers_sent);
                if unanswered && !self.client_resets.record(Instant::now()) {
                    return conn_err(E::ENHANCE_YOUR_CALM, "too many streams reset by the client");
                }
                s.close_stream(stream_id);
                Ok(())
            }
            Frame::Settings { ack: true, .. } => Ok(()),
            Frame::Settings {
                ack: false,
                settings,
            } => self.on_settings(settings),
            Frame::PushPromise { .. } => conn_err(E::PROTOCOL_ERROR, "PUSH_PROMISE from a client"),
            Frame::Ping { ack, payload } => {
                if !ack {
                    let mut s = self.shared.borrow_mut();
                    let forgiven = std::mem::take(&mut s.response_frames_sent);
                    let streams_open = !s.streams.is_empty();
                    if !self.pings.on_ping(Instant::now(), streams_open, forgiven) {
                        // grpc-go's words: clients look for this debug data.
                        return conn_err(E::ENHANCE_YOUR_CALM, limits::TOO_MANY_PINGS);
                    }
                    frame::encode_ping(&mut s.out, true, &payload);
                    s.control_queued += 1;
                    s.wake_writer();
                }
                Ok(())
            }
            // The client will open no more streams; existing ones finish normally.
            Frame::GoAway { .. } => Ok(()),
            Frame::WindowUpdate {
                stream_id,
                increment,
            } => {
                let mut guard = self.shared.borrow_mut();
                let s = &mut *guard;
                if stream_id == 0 {
                    if s.conn_send_window.increase(increment).is_err() {
                        return conn_err(E::FLOW_CONTROL_ERROR, "connection window above 2^31-1");
                    }
                    s.wake_writer();
                    return Ok(());
                }
                if stream_id > s.max_seen_stream_id {
                    return conn_err(E::PROTOCOL_ERROR, "WINDOW_UPDATE on an idle stream");
                }
                if let Some(st) = s.streams.get_mut(&stream_id) {
                    if st.send_window.increase(increment).is_err() {
                        s.reset_stream(stream_id, E::FLOW_CONTROL_ERROR);
                        return Ok(());
                    }
                    s.schedule(stream_id);
                }
                Ok(())
            }
        }
    }

    /// Most encoded bytes of one header block (see `limits::HEADER_BLOCK_SLACK_BYTES`).
    fn header_block_bytes_max(&self) -> usize {
        self.config.max_header_list_bytes as usize + limits::HEADER_BLOCK_SLACK_BYTES
    }

    fn on_settings(&mut self, settings: Settings) -> Result<(), FrameError> {
        let mut guard = self.shared.borrow_mut();
        let s = &mut *guard;
        if let Some(size) = settings.max_frame_size {
            s.peer.max_frame_size = size;
        }
        if let Some(initial) = settings.initial_window_size {
            // RFC 9113 §6.9.2: the change applies to every open stream's window.
            let delta = initial as i64 - s.peer.initial_window_size as i64;
            s.peer.initial_window_size = initial;
            let ids: Vec<u32> = s.streams.keys().copied().collect();
            for id in ids {
                let st = s.streams.get_mut(&id).expect("stream listed");
                if st.send_window.adjust(delta).is_err() {
                    return Err(FrameError::Connection(
                        ErrorCode::FLOW_CONTROL_ERROR,
                        "SETTINGS_INITIAL_WINDOW_SIZE overflows a stream window",
                    ));
                }
                if delta > 0 {
                    s.schedule(id);
                }
            }
        }
        // HEADER_TABLE_SIZE needs nothing: our encoder never uses the dynamic table.
        frame::encode_settings_ack(&mut s.out);
        s.control_queued += 1;
        s.wake_writer();
        Ok(())
    }

    fn on_data(
        &mut self,
        stream_id: u32,
        end_stream: bool,
        data: Bytes,
        flow_len: u32,
    ) -> Result<(), FrameError> {
        let mut guard = self.shared.borrow_mut();
        let s = &mut *guard;
        if s.conn_recv_window.receive(flow_len).is_err() {
            return Err(FrameError::Connection(
                ErrorCode::FLOW_CONTROL_ERROR,
                "DATA beyond the connection window",
            ));
        }
        // The connection window is given back as data arrives; per-stream windows bound
        // what is buffered (see ServerConfig::connection_window_bytes).
        if let Some(increment) = s.conn_recv_window.release(flow_len) {
            frame::encode_window_update(&mut s.out, 0, increment);
            s.wake_writer();
        }
        if stream_id > s.max_seen_stream_id {
            return Err(FrameError::Connection(
                ErrorCode::PROTOCOL_ERROR,
                "DATA on an idle stream",
            ));
        }
        let Some(st) = s.streams.get_mut(&stream_id) else {
            // Closed: we may have reset it while the frame was in flight (RFC 9113 §5.1,
            // "closed"): its bytes were counted above, the frame is otherwise ignored.
            return Ok(());
        };
        if !st.state.remote_open() {
            s.reset_stream(stream_id, ErrorCode::STREAM_CLOSED);
            return Ok(());
        }
        if st.recv_window.receive(flow_len).is_err() {
            s.reset_stream(stream_id, ErrorCode::FLOW_CONTROL_ERROR);
            return Ok(());
        }
        let padding = flow_len - data.len() as u32;
        if padding > 0 {
            if let Some(increment) = st.recv_window.release(padding) {
                frame::encode_window_update(&mut s.out, stream_id, increment);
            }
        }
        if !data.is_empty() {
            st.recv_chunks.push_back(data);
        }
        if end_stream {
            st.state = st.state.recv_end_stream();
        }
        if let Some(w) = st.recv_waker.take() {
            w.wake();
        }
        if st.state == State::Closed {
            s.close_stream(stream_id);
        }
        Ok(())
    }

    fn on_header_block(
        &mut self,
        stream_id: u32,
        end_stream: bool,
        block: &[u8],
        on_request: &dyn Fn(Request),
    ) -> Result<(), FrameError> {
        use ErrorCode as E;
        // Decode first, whatever happens to the stream: the HPACK tables must stay in sync.
        let list = self.decoder.decode(block).map_err(|_| {
            FrameError::Connection(E::COMPRESSION_ERROR, "invalid HPACK header block")
        })?;
        let request = {
            let mut guard = self.shared.borrow_mut();
            let s = &mut *guard;
            if stream_id.is_multiple_of(2) {
                return Err(FrameError::Connection(
                    E::PROTOCOL_ERROR,
                    "client opened an even stream id",
                ));
            }
            if let Some(st) = s.streams.get_mut(&stream_id) {
                // Trailers on an existing stream.
                if !st.state.remote_open() {
                    s.reset_stream(stream_id, E::STREAM_CLOSED);
                    return Ok(());
                }
                if !end_stream {
                    s.reset_stream(stream_id, E::PROTOCOL_ERROR);
                    return Ok(());
                }
                st.state = st.state.recv_end_stream();
                if let Some(w) = st.recv_waker.take() {
                    w.wake();
                }
                if st.state == State::Closed {
                    s.close_stream(stream_id);
                }
                return Ok(());
            }
            if stream_id <= s.max_seen_stream_id {
                return Err(FrameError::Connection(
                    E::STREAM_CLOSED,
                    "HEADERS on a closed stream",
                ));
            }
            s.max_seen_stream_id = stream_id;
            if s.goaway_sent || s.streams.len() >= self.config.max_concurrent_streams as usize {
                s.send_rst(stream_id, E::REFUSED_STREAM);
                return Ok(());
            }
            let state = if end_stream {
                State::HalfClosedRemote
            } else {
                State::Open
            };
            let stream = Stream::new(
                state,
                s.peer.initial_window_size,
                self.config.initial_stream_window_bytes,
            );
            s.streams.insert(stream_id, stream);
            s.streams_opened += 1;
            s.idle_since = None;
            let stream_ref = StreamRef {
                shared: self.shared.clone(),
                stream_id,
            };
            if list.list_size > self.config.max_header_list_bytes as usize {
                let mut out = Vec::new();
                hpack::encoder::encode_field(&mut out, b":status", b"431");
                drop(guard);
                let _ = stream_ref.send_headers(&out, true);
                return Ok(());
            }
            match validate_request(list, stream_ref, end_stream) {
                Ok(request) => request,
                Err(stream_ref) => {
                    drop(guard);
                    stream_ref.reset(E::PROTOCOL_ERROR);
                    return Ok(());
                }
            }
        };
        // Requests wait (as open streams, bounded by SETTINGS_MAX_CONCURRENT_STREAMS)
        // while the client does not read what earlier ones produced.
        if self.held_requests.is_empty() && self.shared.borrow().output_fits() {
            on_request(request);
        } else {
            self.held_requests.push_back(request);
        }
        Ok(())
    }
}

impl Shared {
    fn connection_error_from(&mut self, e: FrameError) -> ConnError {
        match e {
            FrameError::Connection(code, why) => self.connection_error(code, why),
            FrameError::Stream(_, code, why) => self.connection_error(code, why),
        }
    }
}

/// Checks a request head against RFC 9113 §8.2–§8.3; a malformed request is a stream
/// error PROTOCOL_ERROR (§8.1.1), handed back as `Err(stream)`.
fn validate_request(
    list: HeaderList,
    stream: StreamRef,
    end_stream: bool,
) -> Result<Request, StreamRef> {
    let mut method = None;
    let mut path = None;
    let mut scheme = false;
    let mut fields = Vec::with_capacity(list.fields.len());
    let mut regular_seen = false;
    for (name, value) in list.fields {
        if name.first() == Some(&b':') {
            if regular_seen {
                return Err(stream);
            }
            let slot = match &name[..] {
                b":method" => &mut method,
                b":path" => &mut path,
                b":scheme" => {
                    if scheme {
                        return Err(stream);
                    }
                    scheme = true;
                    continue;
                }
                b":authority" => continue,
                _ => return Err(stream),
            };
            if slot.replace(value).is_some() {
                return Err(stream);
            }
            continue;
        }
        regular_seen = true;
        if name.iter().any(|b| b.is_ascii_uppercase()) {
            return Err(stream);
        }
        match &name[..] {
            b"connection" | b"keep-alive" | b"proxy-connection" | b"transfer-encoding"
            | b"upgrade" => return Err(stream),
            b"te" if &value[..] != b"trailers" => return Err(stream),
            _ => {}
        }
        fields.push((name, value));
    }
    match (method, path) {
        (Some(method), Some(path)) if scheme && !path.is_empty() => Ok(Request {
            stream,
            method,
            path,
            fields,
            end_stream,
        }),
        _ => Err(stream),
    }
}
