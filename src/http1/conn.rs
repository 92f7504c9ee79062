//! The HTTP/1.1 connection driver: reads requests, hands each to the handler, writes the
//! responses in order.
//!
//! Invariants:
//! - One request at a time: pipelined requests wait, unparsed, in the read buffer until the
//!   response before them is written, so responses leave in request order (RFC 9112 §9.3.2)
//!   and a pipelining client costs at most `header_bytes_max` of buffer beyond one request.
//! - Every buffer has a named bound: the request head (`header_bytes_max`, answered 431),
//!   its field count (`HEADER_FIELDS_MAX`, 431), the body (`body_bytes_max`, 413).
//! - Every wait for the peer has a deadline: the idle wait before a request
//!   (`keepalive_idle_timeout`), the head once its first byte arrived
//!   (`header_read_timeout`, the slowloris defence: a client trickling a header a byte at
//!   a time is cut off), the body (`body_read_timeout`), and each response's write
//!   (`write_timeout`). On any, the connection closes.
//! - Malformed input gets Go's net/http answer (400 "Bad Request" and the like, then
//!   close); nothing a peer sends ends the task with anything but a closed connection.
//! - On shutdown an idle connection closes at once; a busy one finishes its request and
//!   answers it with `Connection: close`.
//! - With [`FirstLine::Http1RequestLine`] (etcd's cleartext client port), a connection
//!   whose first line is not `<method> <target> HTTP/1.<minor>` within
//!   `CMUX_FIRST_LINE_BYTES_MAX` is closed without a word, before anything is parsed.

use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures_lite::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use super::body::{self, BodyError, ChunkedDecoder, Framing};
use super::message::{Handler, Request, Response};
use crate::http2::ShutdownSignal;

/// Most header fields one request may carry (more: 431).
pub const HEADER_FIELDS_MAX: usize = 100;

/// Bytes asked of the socket per read.
const READ_CHUNK_BYTES: usize = 16 * 1024;

/// The limits and deadlines of one connection.
#[derive(Debug, Clone)]
pub struct Http1Config {
    /// Longest request head (request line and fields); Go's `http.DefaultMaxHeaderBytes`.
    pub header_bytes_max: usize,
    /// Longest request body, after chunked decoding.
    pub body_bytes_max: usize,
    /// How long a request head may take from its first byte to its blank line.
    pub header_read_timeout: Duration,
    /// How long a request body may take to arrive once its head is read.
    pub body_read_timeout: Duration,
    /// How long a connection may sit between requests (and before its first).
    pub keepalive_idle_timeout: Duration,
    /// How long a response may take to be taken by the peer (a client that sends but
    /// never reads would otherwise hold its task forever).
    pub write_timeout: Duration,
}

impl Default for Http1Config {
    fn default() -> Self {
        Http1Config {
            header_bytes_max: 1 << 20,
            body_bytes_max: 2 * 1024 * 1024,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(60),
            keepalive_idle_timeout: Duration::from_secs(120),
            write_timeout: Duration::from_secs(60),
        }
    }
}

/// Why a read for more of a request stopped.
enum ReadStop {
    Closed,
    TimedOut,
    Shutdown,
}

/// The head of a request, owned (the parse borrows the read buffer).
struct Head {
    method: String,
    target: String,
    minor_version: u8,
    headers: Vec<(String, Bytes)>,
    /// The connection ends after this request whatever it says (the HTTP/2 preface).
    close: bool,
}

impl Head {
    fn values(&self, name: &str) -> Vec<&[u8]> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| &v[..])
            .collect()
    }

    /// Whether the connection stays open after this request (RFC 9112 §9.3).
    fn keep_alive(&self) -> bool {
        let tokens: Vec<String> = self
            .values("connection")
            .iter()
            .flat_map(|v| v.split(|b| *b == b','))
            .map(|t| String::from_utf8_lossy(t).trim().to_ascii_lowercase())
            .collect();
        if self.close || tokens.iter().any(|t| t == "close") {
            return false;
        }
        self.minor_version >= 1 || tokens.iter().any(|t| t == "keep-alive")
    }
}

/// What a connection's first line must be before it is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstLine {
    /// Anything: malformed input gets Go's net/http answers (TLS ports, where etcd's
    /// listener hands every connection to net/http; metrics listeners).
    Any,
    /// An HTTP/1 request line, as etcd's cleartext client port wants: its connection
    /// multiplexer (cmux) hands a connection to net/http only if its first line parses as
    /// one with major version 1, and closes the others unanswered (a TLS ClientHello, a
    /// line without a version, one longer than its 4 KiB read).
    Http1RequestLine,
}

/// cmux's HTTP/1 matcher reads at most this much for the first line, newline included.
const CMUX_FIRST_LINE_BYTES_MAX: usize = 4096;

/// Whether `buffer` opens with a line cmux's HTTP/1 matcher accepts: Some(true) if it
/// does, Some(false) if it cannot (no newline within the limit, or not a request line of
/// major version 1), None while the line is incomplete.
fn http1_request_line(buffer: &[u8]) -> Option<bool> {
    let window = &buffer[..buffer.len().min(CMUX_FIRST_LINE_BYTES_MAX)];
    let Some(end) = window.iter().position(|&b| b == b'\n') else {
        return if buffer.len() < CMUX_FIRST_LINE_BYTES_MAX {
            None
        } else {
            Some(false)
        };
    };
    let line = &window[..end];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    // Method, target and version are split at the first two spaces; the version is the rest.
    let mut parts = line.splitn(3, |&b| b == b' ');
    let (Some(_method), Some(_target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Some(false);
    };
    Some(version.len() == 8 && version.starts_with(b"HTTP/1.") && version[7].is_ascii_digit())
}

/// Serves one HTTP/1.1 connection until the peer closes, a deadline passes, a protocol
/// error closes it, or `shutdown` fires.
pub async fn serve_connection<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: S,
    config: Rc<Http1Config>,
    handler: Handler,
    shutdown: ShutdownSignal,
    first_line: FirstLine,
) -> io::Result<()> {
    let mut buffer: Vec<u8> = Vec::with_capacity(READ_CHUNK_BYTES);
    let mut check_first_line = first_line == FirstLine::Http1RequestLine;
    loop {
        let check = std::mem::replace(&mut check_first_line, false);
        let head = match read_head(&mut io, &mut buffer, &config, &shutdown, check).await? {
            Ok(head) => head,
            Err(Some(response)) => return write_final(&mut io, &response, &config).await,
            Err(None) => return Ok(()),
        };
        let framing = match body::framing(
            &head.values("content-length"),
            &head.values("transfer-encoding"),
        ) {
            Ok(framing) => framing,
            Err((status, text)) => {
                return write_final(&mut io, &plain_error(status, text), &config).await;
            }
        };
        if let Framing::Length(n) = framing {
            if n > config.body_bytes_max as u64 {
                return write_final(&mut io, &too_large(), &config).await;
            }
        }
        let expect = head.values("expect");
        if let Some(value) = expect.first() {
            if !value.trim_ascii().eq_ignore_ascii_case(b"100-continue") || expect.len() > 1 {
                let refused = plain_error(417, "Expectation Failed");
                return write_final(&mut io, &refused, &config).await;
            }
            // The client waits for this before it sends the body (RFC 9110 §10.1.1); an
            // HTTP/1.0 client does not know it.
            if framing != Framing::None && buffer.is_empty() && head.minor_version >= 1 {
                write_all(&mut io, b"HTTP/1.1 100 Continue\r\n\r\n", &config).await?;
            }
        }
        let body = match read_body(&mut io, &mut buffer, &framing, &config).await? {
            Ok(body) => body,
            Err(Some(response)) => return write_final(&mut io, &response, &config).await,
            Err(None) => return Ok(()),
        };
        let keep_alive = head.keep_alive();
        let is_head = head.method == "HEAD";
        let request = Request {
            method: head.method,
            target: head.target,
            headers: head.headers,
            body,
        };
        let mut response = handler(request).await;
        if response.stream.is_some() {
            // A streamed response ends with the connection (the client's close is how a
            // watch ends), so nothing after it on this connection is served.
            let mut out = Vec::with_capacity(256);
            response.encode_head(&mut out, SystemTime::now(), true);
            write_all(&mut io, &out, &config).await?;
            let stream = response.stream.take().expect("checked above");
            return stream_body(&mut io, stream, &config, &shutdown).await;
        }
        let close = !keep_alive || response.close || shutdown.is_triggered();
        let mut out = Vec::with_capacity(256 + response.body.len());
        response.encode_head(&mut out, SystemTime::now(), close);
        if !is_head && super::message::has_body(response.status) {
            out.extend_from_slice(&response.body);
        }
        write_all(&mut io, &out, &config).await?;
        if close {
            return Ok(());
        }
    }
}

/// Reads and parses the next request head. Ok(Err(Some(response))): answer and close;
/// Ok(Err(None)): close without a word (peer gone, deadline, shutdown while idle, or with
/// `check_first_line` a first line that is not an HTTP/1 request line).
async fn read_head<S: AsyncRead + Unpin>(
    io: &mut S,
    buffer: &mut Vec<u8>,
    config: &Http1Config,
    shutdown: &ShutdownSignal,
    mut check_first_line: bool,
) -> io::Result<Result<Head, Option<Response>>> {
    let mut deadline = Instant::now()
        + if buffer.is_empty() {
            config.keepalive_idle_timeout
        } else {
            config.header_read_timeout
        };
    loop {
        if check_first_line && !buffer.is_empty() {
            match http1_request_line(buffer) {
                Some(true) => check_first_line = false,
                Some(false) => return Ok(Err(None)),
                None => {}
            }
        }
        if !check_first_line && !buffer.is_empty() {
            let mut fields = [httparse::EMPTY_HEADER; HEADER_FIELDS_MAX];
            let mut parsed = httparse::Request::new(&mut fields);
            match parsed.parse(buffer) {
                Ok(httparse::Status::Complete(head_len)) => {
                    if head_len > config.header_bytes_max {
                        return Ok(Err(Some(header_too_large())));
                    }
                    let head = Head {
                        method: parsed.method.unwrap_or("").to_string(),
                        target: parsed.path.unwrap_or("").to_string(),
                        minor_version: parsed.version.unwrap_or(1),
                        headers: parsed
                            .headers
                            .iter()
                            .map(|h| (h.name.to_ascii_lowercase(), Bytes::copy_from_slice(h.value)))
                            .collect(),
                        close: false,
                    };
                    buffer.drain(..head_len);
                    return Ok(Ok(head));
                }
                Ok(httparse::Status::Partial) => {
                    if buffer.len() > config.header_bytes_max {
                        return Ok(Err(Some(header_too_large())));
                    }
                }
                Err(httparse::Error::TooManyHeaders) => {
                    return Ok(Err(Some(header_too_large())));
                }
                Err(httparse::Error::Version) => match preface_request(buffer) {
                    Some(true) => return Ok(Ok(preface_head(buffer))),
                    // Not yet the whole line and its blank line: read on.
                    Some(false) => {}
                    None => {
                        return Ok(Err(Some(plain_error(505, "HTTP Version Not Supported"))));
                    }
                },
                Err(_) => return Ok(Err(Some(plain_error(400, "Bad Request")))),
            }
        }
        let was_idle = buffer.is_empty();
        match read_more(io, buffer, deadline, was_idle.then_some(shutdown)).await? {
            Ok(()) => {
                if was_idle {
                    // The head's clock starts at its first byte.
                    deadline = Instant::now() + config.header_read_timeout;
                }
            }
            Err(ReadStop::Closed | ReadStop::TimedOut | ReadStop::Shutdown) => {
                return Ok(Err(None))
            }
        }
    }
}

/// The HTTP/2 connection preface's first 18 bytes, which read as an HTTP/1.1 request
/// head: request line `PRI * HTTP/2.0` and no fields (RFC 9113 §3.4).
const PREFACE_HEAD: &[u8] = b"PRI * HTTP/2.0\r\n\r\n";

/// Whether `buffer` opens with the preface's request head: Some(true) if it does,
/// Some(false) if it is a strict prefix of it, None otherwise.
fn preface_request(buffer: &[u8]) -> Option<bool> {
    if buffer.starts_with(PREFACE_HEAD) {
        Some(true)
    } else {
        PREFACE_HEAD.starts_with(buffer).then_some(false)
    }
}

/// The request an HTTP/2 preface is to an HTTP/1.1 server. Go's net/http serves it as
/// one (`http1ServerSupportsRequest` accepts `PRI * HTTP/2.0`, and marks it to close
/// the connection after), so a client that sends the preface without ALPN h2 on etcd's
/// TLS port gets the handler's answer to the target `*` (400), not 505. The rest of the
/// preface stays unread: the connection closes after the answer.
fn preface_head(buffer: &mut Vec<u8>) -> Head {
    buffer.drain(..PREFACE_HEAD.len());
    Head {
        method: "PRI".into(),
        target: "*".into(),
        minor_version: 0,
        headers: Vec::new(),
        close: true,
    }
}

/// Reads the body the framing announces. Errors as for `read_head`.
async fn read_body<S: AsyncRead + Unpin>(
    io: &mut S,
    buffer: &mut Vec<u8>,
    framing: &Framing,
    config: &Http1Config,
) -> io::Result<Result<Bytes, Option<Response>>> {
    let deadline = Instant::now() + config.body_read_timeout;
    match framing {
        Framing::None => Ok(Ok(Bytes::new())),
        Framing::Length(n) => {
            let n = *n as usize;
            while buffer.len() < n {
                if read_more(io, buffer, deadline, None).await?.is_err() {
                    return Ok(Err(None));
                }
            }
            let body = Bytes::copy_from_slice(&buffer[..n]);
            buffer.drain(..n);
            Ok(Ok(body))
        }
        Framing::Chunked => {
            let mut decoder = ChunkedDecoder::new(config.body_bytes_max);
            loop {
                match decoder.decode(buffer) {
                    Ok(consumed) => {
                        buffer.drain(..consumed);
                    }
                    Err(BodyError::TooLarge) => return Ok(Err(Some(too_large()))),
                    Err(BodyError::Malformed) => {
                        return Ok(Err(Some(plain_error(400, "Bad Request"))))
                    }
                }
                if decoder.is_done() {
                    return Ok(Ok(Bytes::from(decoder.into_body())));
                }
                if read_more(io, buffer, deadline, None).await?.is_err() {
                    return Ok(Err(None));
                }
            }
        }
    }
}

/// Appends one read's worth of bytes to `buffer`, or says why none came: end of stream,
/// `deadline`, or (when `shutdown` is given, i.e. between requests) shutdown.
async fn read_more<S: AsyncRead + Unpin>(
    io: &mut S,
    buffer: &mut Vec<u8>,
    deadline: Instant,
    shutdown: Option<&ShutdownSignal>,
) -> io::Result<Result<(), ReadStop>> {
    if shutdown.is_some_and(ShutdownSignal::is_triggered) {
        return Ok(Err(ReadStop::Shutdown));
    }
    let filled = buffer.len();
    buffer.resize(filled + READ_CHUNK_BYTES, 0);
    let read = async { Some(io.read(&mut buffer[filled..]).await) };
    let timer = async {
        glommio::timer::sleep(deadline.saturating_duration_since(Instant::now())).await;
        None
    };
    let stop = async {
        match shutdown {
            Some(signal) => signal.wait().await,
            None => std::future::pending().await,
        }
        None
    };
    let outcome = futures_lite::future::or(read, futures_lite::future::or(timer, stop)).await;
    let got = match outcome {
        Some(Ok(n)) => n,
        Some(Err(e)) => {
            buffer.truncate(filled);
            return Err(e);
        }
        None => {
            buffer.truncate(filled);
            let stop = if shutdown.is_some_and(ShutdownSignal::is_triggered) {
                ReadStop::Shutdown
            } else {
                ReadStop::TimedOut
            };
            return Ok(Err(stop));
        }
    };
    buffer.truncate(filled + got);
    Ok(if got == 0 {
        Err(ReadStop::Closed)
    } else {
        Ok(())
    })
}

/// Sends `stream`'s pieces as chunks until it ends (then the last chunk), the client
/// closes or fails, a write times out, or shutdown.
async fn stream_body<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    mut stream: super::message::BodyStream,
    config: &Http1Config,
    shutdown: &ShutdownSignal,
) -> io::Result<()> {
    use futures::StreamExt as _;
    enum Next {
        Piece(Option<bytes::Bytes>),
        PeerDone,
    }
    let mut scratch = [0u8; 512];
    loop {
        let next = async { Next::Piece(stream.next().await) };
        // The client sends nothing more on a streamed request: a read that returns is its
        // close (or bytes we will not serve), and ends the response.
        let peer = async {
            let _ = io.read(&mut scratch).await;
            Next::PeerDone
        };
        let stop = async {
            shutdown.wait().await;
            Next::PeerDone
        };
        let piece = match futures_lite::future::or(next, futures_lite::future::or(peer, stop)).await
        {
            Next::Piece(piece) => piece,
            Next::PeerDone => return Ok(()),
        };
        let Some(piece) = piece else {
            return write_all(io, b"0\r\n\r\n", config).await;
        };
        if piece.is_empty() {
            continue;
        }
        let mut out = Vec::with_capacity(piece.len() + 16);
        out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        out.extend_from_slice(&piece);
        out.extend_from_slice(b"\r\n");
        write_all(io, &out, config).await?;
    }
}

/// Writes a response that ends the connection.
async fn write_final<S: AsyncWrite + Unpin>(
    io: &mut S,
    response: &Response,
    config: &Http1Config,
) -> io::Result<()> {
    let mut out = Vec::with_capacity(256 + response.body.len());
    response.encode_head(&mut out, SystemTime::now(), true);
    out.extend_from_slice(&response.body);
    write_all(io, &out, config).await
}

/// Writes and flushes `bytes`, or fails with `TimedOut` after `write_timeout`.
async fn write_all<S: AsyncWrite + Unpin>(
    io: &mut S,
    bytes: &[u8],
    config: &Http1Config,
) -> io::Result<()> {
    let write = async {
        io.write_all(bytes).await?;
        io.flush().await
    };
    let expired = async {
        glommio::timer::sleep(config.write_timeout).await;
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "peer did not take the response",
        ))
    };
    futures_lite::future::or(write, expired).await
}

/// Go's net/http answer to a request it cannot read: "<code> <text>" as plain text.
fn plain_error(status: u16, text: &str) -> Response {
    Response::new(
        status,
        "text/plain; charset=utf-8",
        format!("{status} {text}"),
    )
}

fn header_too_large() -> Response {
    plain_error(431, "Request Header Fields Too Large")
}

fn too_large() -> Response {
    plain_error(413, "Request Entity Too Large")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_lines_are_matched_as_cmux_matches_http1() {
        assert_eq!(http1_request_line(b"GET /health HTTP/1.1\r\n"), Some(true));
        assert_eq!(http1_request_line(b"GET / HTTP/1.0\n"), Some(true));
        assert_eq!(http1_request_line(b"GET / HTTP/1.1"), None);
        assert_eq!(http1_request_line(b"GARBAGE\r\n\r\n"), Some(false));
        assert_eq!(http1_request_line(b"GET /health\r\n"), Some(false));
        assert_eq!(http1_request_line(b"GET / HTTP/2.0\r\n"), Some(false));
        assert_eq!(http1_request_line(b"\r\nGET / HTTP/1.1\r\n"), Some(false));
        assert_eq!(http1_request_line(b"\x16\x03\x01\x02\x00\x01"), None);
        let long = [b"GET /".as_slice(), &[b'a'; 5000], b" HTTP/1.1\r\n"].concat();
        assert_eq!(http1_request_line(&long), Some(false));
        let fits = [b"GET /".as_slice(), &[b'a'; 4000], b" HTTP/1.1\r\n"].concat();
        assert_eq!(http1_request_line(&fits), Some(true));
    }
}
