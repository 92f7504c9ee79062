//! Turns an HTTP/2 request into a gRPC [`Call`] and runs its handler.
//!
//! Invariants:
//! - Every call ends with exactly one status on the wire: the handler's `finish`, or
//!   INTERNAL if it returned or was dropped without one, or DEADLINE_EXCEEDED when the
//!   `grpc-timeout` passes first — unless the client reset the stream or the connection
//!   died, in which case nothing can be sent and the handler is dropped.
//! - Request messages are bounded by `ServerConfig::max_recv_message_bytes`, checked on
//!   the prefix before any payload is buffered.

use std::cell::Cell;
use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_lite::{AsyncRead, AsyncWrite};

use super::codec::{self, MESSAGE_PREFIX_LEN};
use super::status::{Code, Status};
use crate::http2::conn::{Request, StreamGone, StreamRef};
use crate::http2::{serve_connection_with, ConnError, ServerConfig, ShutdownSignal};

/// The service layer's entry point: called once per call, on the connection's executor.
pub type Handler = Rc<dyn Fn(Call) -> Pin<Box<dyn Future<Output = ()>>>>;

/// Serves one HTTP/2 connection over `stream` (plain TCP, TLS or a unix socket; see
/// [`serve_connection_with`] for what the stream must guarantee), dispatching every request
/// to the gRPC `handler`. Returns when the peer closes, after a graceful shutdown, or with
/// the connection error we answered with GOAWAY.
pub async fn serve_connection<S: AsyncRead + AsyncWrite + Unpin + 'static>(
    stream: S,
    config: Rc<ServerConfig>,
    handler: Handler,
    shutdown: ShutdownSignal,
) -> Result<(), ConnError> {
    serve_connection_and_http(stream, config, handler, None, shutdown).await
}

/// As [`serve_connection`], and with `http` set, requests that are not gRPC go to those
/// HTTP handlers (`super::plain_http`: etcd's TLS port does this, its h2c port does not).
pub async fn serve_connection_and_http<S: AsyncRead + AsyncWrite + Unpin + 'static>(
    stream: S,
    config: Rc<ServerConfig>,
    handler: Handler,
    http: Option<crate::http1::Http1Service>,
    shutdown: ShutdownSignal,
) -> Result<(), ConnError> {
    let dispatch_config = config.clone();
    serve_connection_with(
        stream,
        config,
        move |request| match &http {
            Some(http) if !super::plain_http::is_grpc(&request) => {
                super::plain_http::serve(request, http.clone())
            }
            _ => dispatch(request, &handler, &dispatch_config),
        },
        shutdown,
    )
    .await
}

/// `handler` for the calls of one connection whose verified client certificate names
/// `common_name`: each call carries it.
pub fn with_tls_common_name(handler: Handler, common_name: Option<String>) -> Handler {
    let Some(name) = common_name else {
        return handler;
    };
    let name: Rc<str> = Rc::from(name);
    Rc::new(move |mut call: Call| {
        call.tls_common_name = Some(name.clone());
        handler(call)
    })
}

/// One incoming RPC.
pub struct Call {
    /// The `:path`, e.g. "/etcdserverpb.KV/Range".
    pub method: String,
    /// From `grpc-timeout`.
    pub deadline: Option<Instant>,
    /// Other request headers, lowercase names (e.g. "token", "authorization").
    pub metadata: Vec<(String, Bytes)>,
    /// The subject common name of the client certificate its TLS connection verified
    /// ("" for a certificate without one); None without TLS or without a certificate.
    /// Set by the connection's handler wrapper ([`with_tls_common_name`]).
    pub tls_common_name: Option<Rc<str>>,
    pub requests: RequestStream,
    pub responses: ResponseSink,
}

/// State the call's task and its sink share.
struct CallShared {
    stream: StreamRef,
    /// Set once a status went out (or can never go out).
    finished: Cell<bool>,
    /// The method's row in `crate::metrics` (None: a method etcd does not have).
    metric: Option<usize>,
}

impl CallShared {
    /// Sends the final status unless one was sent already.
    fn finish(&self, status: &Status) {
        if self.finished.replace(true) {
            return;
        }
        if let Some(row) = self.metric {
            crate::metrics::grpc_handled(row, status.code as u8);
        }
        if self.stream.headers_sent() {
            let _ = self.stream.send_trailers(codec::trailers(status));
        } else {
            let _ = self
                .stream
                .send_headers(&codec::trailers_only(b"200", status), true);
        }
    }
}

/// The request messages of a call.
pub struct RequestStream {
    call: Rc<CallShared>,
    max_message_bytes: usize,
    /// Received chunks not yet assembled into messages, and their total length.
    chunks: VecDeque<Bytes>,
    buffered_bytes: usize,
    /// Once set, every later `next` returns it again.
    error: Option<Status>,
    /// `grpc-encoding` of the request, for the error on a compressed message.
    encoding: Option<String>,
}

impl RequestStream {
    /// Next whole gRPC message payload (without the 5-byte prefix). None after the
    /// client's END_STREAM. Err(status) if the client reset the stream, the connection
    /// died, or the message is malformed or too large.
    pub async fn next(&mut self) -> Option<Result<Bytes, Status>> {
        loop {
            if let Some(status) = &self.error {
                return Some(Err(status.clone()));
            }
            match self.try_message() {
                Ok(Some(message)) => {
                    crate::metrics::grpc_message_received(self.call.metric, message.len());
                    return Some(Ok(message));
                }
                Ok(None) => {}
                Err(status) => {
                    self.error = Some(status.clone());
                    return Some(Err(status));
                }
            }
            match poll_fn(|cx| self.call.stream.poll_data(cx)).await {
                Some(Ok(chunk)) => {
                    self.buffered_bytes += chunk.len();
                    self.chunks.push_back(chunk);
                }
                Some(Err(StreamGone)) => self.error = Some(Status::cancelled()),
                None if self.buffered_bytes == 0 => return None,
                None => {
                    // grpc-go's server reads a truncated message as io.ErrUnexpectedEOF,
                    // which is no status, so the client sees it as UNKNOWN (etcd 3.4:
                    // code 2 "unexpected EOF").
                    self.error = Some(Status::new(Code::Unknown, "unexpected EOF"));
                }
            }
        }
    }

    fn try_message(&mut self) -> Result<Option<Bytes>, Status> {
        if self.buffered_bytes < MESSAGE_PREFIX_LEN {
            return Ok(None);
        }
        let mut prefix = [0u8; MESSAGE_PREFIX_LEN];
        self.peek(&mut prefix);
        let (compressed, length) = codec::parse_prefix(&prefix);
        if compressed {
            // grpc-go's checkRecvPayload, whose answers etcd 3.4 gives: a compressed
            // message without an encoding is malformed (INTERNAL); one in an encoding it
            // cannot decompress is UNIMPLEMENTED. No encoding is installed here.
            let encoding = self.encoding.as_deref().unwrap_or("");
            if encoding.is_empty() || encoding == "identity" {
                return Err(Status::new(
                    Code::Internal,
                    "grpc: compressed flag set with identity or empty encoding",
                ));
            }
            return Err(Status::new(
                Code::Unimplemented,
                format!("grpc: Decompressor is not installed for grpc-encoding {encoding:?}"),
            ));
        }
        if length > self.max_message_bytes {
            return Err(Status::new(
                Code::ResourceExhausted,
                format!(
                    "grpc: received message larger than max ({length} vs. {})",
                    self.max_message_bytes
                ),
            ));
        }
        if self.buffered_bytes < MESSAGE_PREFIX_LEN + length {
            return Ok(None);
        }
        let _ = self.take(MESSAGE_PREFIX_LEN);
        Ok(Some(self.take(length)))
    }

    fn peek(&self, out: &mut [u8]) {
        let mut filled = 0;
        for chunk in &self.chunks {
            let n = (out.len() - filled).min(chunk.len());
            out[filled..filled + n].copy_from_slice(&chunk[..n]);
            filled += n;
            if filled == out.len() {
                return;
            }
        }
        unreachable!("peek past buffered bytes");
    }

    /// Removes `n` buffered bytes; zero-copy when they lie in one chunk.
    fn take(&mut self, n: usize) -> Bytes {
        assert!(n <= self.buffered_bytes);
        if n == 0 {
            // An empty message (valid: e.g. a proto with all defaults) may have no chunk.
            return Bytes::new();
        }
        self.buffered_bytes -= n;
        let front = self.chunks.front_mut().expect("buffered bytes");
        if front.len() >= n {
            let out = front.split_to(n);
            if front.is_empty() {
                self.chunks.pop_front();
            }
            return out;
        }
        let mut out = BytesMut::with_capacity(n);
        while out.len() < n {
            let front = self.chunks.front_mut().expect("buffered bytes");
            let k = (n - out.len()).min(front.len());
            out.extend_from_slice(&front.split_to(k));
            if front.is_empty() {
                self.chunks.pop_front();
            }
        }
        out.freeze()
    }
}

/// The response side of a call.
pub struct ResponseSink {
    call: Rc<CallShared>,
    send_queue_bytes_max: usize,
}

impl ResponseSink {
    /// Sends one message (the first call also sends the response HEADERS :status 200,
    /// content-type application/grpc). Waits while this stream's unsent queue is above
    /// its bound (peer not granting window). Err(Cancelled) once the stream or
    /// connection is gone; Err(ResourceExhausted), with the call finished, for a message
    /// over `codec::MESSAGE_SEND_BYTES_MAX`.
    pub async fn send(&mut self, message: Bytes) -> Result<(), Status> {
        // Too large to frame: the call ends with that status (grpc-go's SendMsg error,
        // which etcd's handlers return as the call's status).
        let message_bytes = message.len();
        let (head, tail) = match codec::frame_message(message) {
            Ok(pieces) => pieces,
            Err(status) => {
                self.call.finish(&status);
                return Err(status);
            }
        };
        self.ready_to_send().await?;
        let stream = &self.call.stream;
        crate::metrics::grpc_messages_sent(self.call.metric, 1, message_bytes);
        stream
            .send_data(head)
            .map_err(|StreamGone| Status::cancelled())?;
        if let Some(tail) = tail {
            stream
                .send_data(tail)
                .map_err(|StreamGone| Status::cancelled())?;
        }
        Ok(())
    }

    /// Sends messages the caller has already gRPC-framed (5-byte prefix, then the
    /// message; any number back to back, whole messages only) as one piece: a stream that
    /// produces many small responses at once leaves in one DATA frame instead of one per
    /// message. Waits and fails as [`ResponseSink::send`] does.
    pub async fn send_framed(&mut self, messages: Bytes) -> Result<(), Status> {
        self.ready_to_send().await?;
        let count = codec::count_framed(&messages);
        crate::metrics::grpc_messages_sent(
            self.call.metric,
            count,
            messages.len() - count as usize * codec::MESSAGE_PREFIX_LEN,
        );
        self.call
            .stream
            .send_data(messages)
            .map_err(|StreamGone| Status::cancelled())
    }

    /// Starts one message of `len` bytes whose body follows in pieces
    /// ([`ResponseSink::send_piece`]), so that a large answer never has to be held whole:
    /// the caller must then send exactly `len` bytes before any other message or the
    /// status. Err(ResourceExhausted), with the call finished, above
    /// `codec::MESSAGE_SEND_BYTES_MAX`; otherwise waits and fails as
    /// [`ResponseSink::send`] does.
    pub async fn begin_message(&mut self, len: usize) -> Result<(), Status> {
        let prefix = match codec::message_prefix(len) {
            Ok(prefix) => prefix,
            Err(status) => {
                self.call.finish(&status);
                return Err(status);
            }
        };
        self.ready_to_send().await?;
        crate::metrics::grpc_messages_sent(self.call.metric, 1, len);
        self.call
            .stream
            .send_data(Bytes::copy_from_slice(&prefix))
            .map_err(|StreamGone| Status::cancelled())
    }

    /// Sends the next piece of the message [`ResponseSink::begin_message`] started,
    /// waiting while this stream's unsent queue is above its bound (so a client that does
    /// not read stops the producer, which holds no more than that bound).
    pub async fn send_piece(&mut self, piece: Bytes) -> Result<(), Status> {
        self.ready_to_send().await?;
        self.call
            .stream
            .send_data(piece)
            .map_err(|StreamGone| Status::cancelled())
    }

    /// Waits until the connection has room under its cap for `bytes` more of an answer
    /// this call is assembling, and reserves them (`StreamRef::poll_reserve`): what a
    /// handler holds before sending counts against the connection's cap as what it
    /// queued does. Err(Cancelled) once the stream is gone.
    pub async fn reserve(&mut self, bytes: usize) -> Result<(), Status> {
        poll_fn(|cx| self.call.stream.poll_reserve(cx, bytes))
            .await
            .map_err(|StreamGone| Status::cancelled())
    }

    /// Sets what this call holds reserved to `bytes`, without waiting.
    pub fn set_reserved(&mut self, bytes: usize) {
        self.call.stream.set_reserved(bytes);
    }

    /// Waits until this stream's unsent queue is below its bound, then makes sure the
    /// response HEADERS went first. Err(Cancelled) once the call or stream is gone.
    async fn ready_to_send(&mut self) -> Result<(), Status> {
        if self.call.finished.get() {
            return Err(Status::cancelled());
        }
        let bound = self.send_queue_bytes_max;
        poll_fn(|cx| self.call.stream.poll_send_capacity(cx, bound))
            .await
            .map_err(|StreamGone| Status::cancelled())?;
        let stream = &self.call.stream;
        if !stream.headers_sent() {
            stream
                .send_headers(codec::response_headers(), false)
                .map_err(|StreamGone| Status::cancelled())?;
        }
        Ok(())
    }

    /// Ends the call with trailers grpc-status / grpc-message (Trailers-Only if nothing
    /// was sent).
    pub fn finish(self, status: Status) {
        self.call.finish(&status);
    }

    /// Resolves when the client cancels (RST_STREAM) or the connection closes (and also
    /// once the call has been finished).
    pub async fn closed(&self) {
        poll_fn(|cx| self.call.stream.poll_closed(cx)).await
    }
}

impl Drop for ResponseSink {
    fn drop(&mut self) {
        // A handler that ends without a status is a server bug; tell the client so.
        self.call.finish(&Status::new(
            Code::Internal,
            "handler ended without sending a status",
        ));
    }
}

/// Rejects a request that is not gRPC before any handler runs, as grpc-go does: with an
/// HTTP status and a gRPC status in one headers-only response.
fn early_abort(stream: &StreamRef, http_status: &[u8], status: Status) {
    let _ = stream.send_headers(&codec::trailers_only(http_status, &status), true);
}

/// Validates the request head, builds the [`Call`] and spawns its handler task.
pub fn dispatch(request: Request, handler: &Handler, config: &ServerConfig) {
    let Request {
        stream,
        method,
        path,
        fields,
        ..
    } = request;
    if &method[..] != b"POST" {
        let text = format!(
            "invalid gRPC request method {:?}",
            String::from_utf8_lossy(&method)
        );
        return early_abort(&stream, b"405", Status::new(Code::Internal, text));
    }
    let mut content_type = None;
    let mut timeout = None;
    let mut encoding = None;
    let mut metadata = Vec::with_capacity(fields.len());
    for (name, value) in fields {
        match &name[..] {
            b"content-type" => content_type = Some(value),
            b"grpc-timeout" => timeout = Some(value),
            b"grpc-encoding" => encoding = Some(String::from_utf8_lossy(&value).into_owned()),
            b"te" => {}
            _ => metadata.push((String::from_utf8_lossy(&name).into_owned(), value)),
        }
    }
    let is_grpc = content_type.as_deref().is_some_and(|ct| {
        ct.strip_prefix(b"application/grpc")
            .is_some_and(|rest| rest.is_empty() || rest[0] == b'+' || rest[0] == b';')
    });
    if !is_grpc {
        let text = format!(
            "invalid gRPC request content-type {:?}",
            String::from_utf8_lossy(content_type.as_deref().unwrap_or(b""))
        );
        return early_abort(&stream, b"415", Status::new(Code::Internal, text));
    }
    let deadline = match timeout.as_deref().map(codec::parse_timeout) {
        None => None,
        Some(Ok(timeout)) => Some(
            Instant::now()
                .checked_add(timeout)
                .unwrap_or_else(far_future),
        ),
        Some(Err(e)) => {
            let status = Status::new(Code::Internal, format!("malformed grpc-timeout: {e}"));
            return early_abort(&stream, b"200", status);
        }
    };
    let method = String::from_utf8_lossy(&path).into_owned();
    let shared = Rc::new(CallShared {
        stream,
        finished: Cell::new(false),
        metric: crate::metrics::grpc_started(&method),
    });
    let call = Call {
        method,
        deadline,
        metadata,
        tls_common_name: None,
        requests: RequestStream {
            call: shared.clone(),
            max_message_bytes: config.max_recv_message_bytes,
            chunks: VecDeque::new(),
            buffered_bytes: 0,
            error: None,
            encoding,
        },
        responses: ResponseSink {
            call: shared.clone(),
            send_queue_bytes_max: config.send_queue_bytes_max,
        },
    };
    let handler_future = handler(call);
    glommio::spawn_local(run_call(handler_future, shared, deadline)).detach();
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(100 * 365 * 86_400)
}

enum Outcome {
    Done,
    Gone,
    DeadlineExceeded,
}

/// Runs a handler until it returns, the client goes away, or the deadline passes.
async fn run_call(
    handler_future: Pin<Box<dyn Future<Output = ()>>>,
    call: Rc<CallShared>,
    deadline: Option<Instant>,
) {
    let done = async {
        handler_future.await;
        Outcome::Done
    };
    // The outcome futures act before they return: `or` drops the handler future (and
    // with it the sink, whose Drop would otherwise report INTERNAL) as soon as it yields.
    let gone = async {
        poll_fn(|cx| call.stream.poll_closed(cx)).await;
        // Nothing can be sent any more; go-grpc-prometheus counts such a call Canceled.
        if !call.finished.replace(true) {
            if let Some(row) = call.metric {
                crate::metrics::grpc_handled(row, Code::Cancelled as u8);
            }
        }
        Outcome::Gone
    };
    let expired = async {
        match deadline {
            Some(deadline) => {
                glommio::timer::sleep(deadline.saturating_duration_since(Instant::now())).await;
                // If the client is still sending, the transport follows these trailers
                // with RST_STREAM(NO_ERROR) (see http2::conn::Shared::local_end_stream).
                call.finish(&Status::new(
                    Code::DeadlineExceeded,
                    "context deadline exceeded",
                ));
                Outcome::DeadlineExceeded
            }
            None => std::future::pending().await,
        }
    };
    let outcome = futures_lite::future::or(done, futures_lite::future::or(gone, expired)).await;
    // Done: the sink's Drop sent INTERNAL if the handler forgot to finish.
    debug_assert!(call.finished.get() || matches!(outcome, Outcome::Done));
}
