//! Tells, on a new client connection, an HTTP/2 client from an HTTP/1.1 one, as etcd's
//! client port does (it serves gRPC and plain HTTP on one port).
//!
//! An h2c client with prior knowledge opens with the 24-byte connection preface
//! (RFC 9113 §3.4); no HTTP/1.1 request does (the preface is built to look like a request
//! for method "PRI", which no HTTP/1.1 server serves). The bytes are only peeked
//! (MSG_PEEK), never consumed, so whichever server gets the connection reads it from its
//! first byte and neither needs to know this module exists. On TLS connections ALPN
//! decides instead (the bytes under TLS cannot be peeked; see [`serve_sniffed`]).
//!
//! Invariants:
//! - The decision waits for no more bytes than it needs: the first byte that differs from
//!   the preface decides HTTP/1.1; all 24 matching decide HTTP/2.
//! - A client that sent a strict prefix of the preface and stalls is waited for no longer
//!   than the deadline, then dropped (a half-open connection cannot pin a task forever).

use std::future::Future;
use std::time::{Duration, Instant};

use glommio::net::{TcpStream, UnixStream};

use crate::net::ClientStream;

/// RFC 9113 §3.4.
pub const HTTP2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How long to sleep between peeks while the bytes so far are a strict prefix of the
/// preface (a peek with data already queued returns at once, so waiting for "more" needs a
/// pause; this case needs a client that splits its first write, and is rare).
const PARTIAL_PREFACE_RECHECK: Duration = Duration::from_millis(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientProtocol {
    Http2,
    Http1,
}

/// A socket whose first bytes can be looked at without consuming them (MSG_PEEK).
pub trait Peek {
    fn peek<'a>(
        &'a self,
        buf: &'a mut [u8],
    ) -> impl Future<Output = glommio::Result<usize, ()>> + 'a;
}

impl Peek for TcpStream {
    fn peek<'a>(
        &'a self,
        buf: &'a mut [u8],
    ) -> impl Future<Output = glommio::Result<usize, ()>> + 'a {
        TcpStream::peek(self, buf)
    }
}

impl Peek for UnixStream {
    fn peek<'a>(
        &'a self,
        buf: &'a mut [u8],
    ) -> impl Future<Output = glommio::Result<usize, ()>> + 'a {
        UnixStream::peek(self, buf)
    }
}

/// Which protocol the client speaks, by its first bytes. None if it closed, failed, or sent
/// nothing decisive before `deadline`.
pub async fn sniff(stream: &impl Peek, deadline: Instant) -> Option<ClientProtocol> {
    let mut first = [0u8; HTTP2_PREFACE.len()];
    loop {
        let peeked =
            futures_lite::future::or(async { Some(stream.peek(&mut first).await) }, async {
                glommio::timer::sleep(deadline.saturating_duration_since(Instant::now())).await;
                None
            })
            .await;
        let n = match peeked {
            Some(Ok(0)) | Some(Err(_)) | None => return None,
            Some(Ok(n)) => n,
        };
        if let Some(decided) = decide(&first[..n]) {
            return Some(decided);
        }
        if Instant::now() >= deadline {
            return None;
        }
        glommio::timer::sleep(PARTIAL_PREFACE_RECHECK).await;
    }
}

/// The decision on the bytes seen so far; None while they are a strict prefix of the
/// preface.
pub fn decide(first: &[u8]) -> Option<ClientProtocol> {
    let n = first.len().min(HTTP2_PREFACE.len());
    if first[..n] != HTTP2_PREFACE[..n] {
        Some(ClientProtocol::Http1)
    } else if n == HTTP2_PREFACE.len() {
        Some(ClientProtocol::Http2)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decides_on_the_first_differing_byte() {
        assert_eq!(decide(HTTP2_PREFACE), Some(ClientProtocol::Http2));
        assert_eq!(decide(b"PRI * HTTP/2"), None);
        assert_eq!(decide(b"P"), None);
        assert_eq!(decide(b"PO"), Some(ClientProtocol::Http1));
        assert_eq!(decide(b"GET / HTTP/1.1\r\n"), Some(ClientProtocol::Http1));
        assert_eq!(
            decide(b"PRI * HTTP/1.1\r\n\r\n"),
            Some(ClientProtocol::Http1)
        );
    }
}

/// What the HTTP/1.1 side of a client listener needs: its limits and its handler.
#[derive(Clone)]
pub struct Http1Service {
    pub config: std::rc::Rc<super::Http1Config>,
    pub handler: super::Handler,
}

/// Serves one new client connection: HTTP/2 clients with `http2` (handed the untouched
/// stream), everything else with the HTTP/1.1 server, as etcd's client port does.
/// - Plain TCP and unix sockets are sniffed by their first bytes (MSG_PEEK); a client that
///   sends nothing decisive within the header deadline is dropped.
/// - On plain TCP and unix sockets, an HTTP/1 connection whose first line is not an HTTP/1
///   request line is closed unanswered, as etcd's cmux closes it ([`super::FirstLine`]).
/// - TLS connections are told apart by ALPN, as Go's `http.Server` does for etcd: `h2`
///   goes to HTTP/2, no protocol (a client without ALPN, or one offering only
///   `http/1.1`) to HTTP/1.1. Nothing is sniffed under TLS: an HTTP/2 preface sent without
///   ALPN is an HTTP/1.1 request line there, answered 400 as etcd answers it.
pub async fn serve_sniffed<F, Fut>(
    stream: ClientStream,
    http1: &Http1Service,
    shutdown: crate::http2::ShutdownSignal,
    http2: F,
) where
    F: FnOnce(ClientStream) -> Fut,
    Fut: Future,
{
    let deadline = Instant::now() + http1.config.header_read_timeout;
    // etcd's cleartext client port multiplexes with cmux, which serves HTTP/1 only to a
    // connection that opens with an HTTP/1 request line; its TLS port hands every
    // connection to net/http.
    let first_line = if stream.is_tls() {
        super::FirstLine::Any
    } else {
        super::FirstLine::Http1RequestLine
    };
    let protocol = match &stream {
        ClientStream::Tcp(tcp) => sniff(tcp, deadline).await,
        ClientStream::Unix(unix) => sniff(unix, deadline).await,
        ClientStream::TcpTls(_) | ClientStream::UnixTls(_) => Some(
            if stream.alpn_protocol() == Some(crate::net::tls::ALPN_H2) {
                ClientProtocol::Http2
            } else {
                ClientProtocol::Http1
            },
        ),
    };
    match protocol {
        Some(ClientProtocol::Http2) => {
            http2(stream).await;
        }
        Some(ClientProtocol::Http1) => {
            let _ = super::serve_connection(
                stream,
                http1.config.clone(),
                http1.handler.clone(),
                shutdown,
                first_line,
            )
            .await;
        }
        None => {}
    }
}
