//! Tells, on a new client connection, an HTTP/2 client from an HTTP/1.1 one, as etcd's
//! client port does (it serves gRPC and plain HTTP on one port).
//!
//! An h2c client with prior knowledge opens with the 24-byte connection preface
//! (RFC 9113 §3.4); no HTTP/1.1 request does (the preface is built to look like a request
//! for method "PRI", which no HTTP/1.1 server serves). The bytes are only peeked
//! (MSG_PEEK), never consumed, so whichever server gets the connection reads it from its
//! first byte and neither needs to know this module exists.
//!
//! Invariants:
//! - The decision waits for no more bytes than it needs: the first byte that differs from
//!   the preface decides HTTP/1.1; all 24 matching decide HTTP/2.
//! - A client that sent a strict prefix of the preface and stalls is waited for no longer
//!   than the deadline, then dropped (a half-open connection cannot pin a task forever).

use crate::net::ClientStream;
use std::time::{Duration, Instant};

use glommio::net::TcpStream;

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

/// Which protocol the client speaks, by its first bytes. None if it closed, failed, or sent
/// nothing decisive before `deadline`.
pub async fn sniff(stream: &TcpStream, deadline: Instant) -> Option<ClientProtocol> {
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
/// stream), everything else with the HTTP/1.1 server. A client that sends nothing
/// decisive within the header deadline is dropped. Only plain TCP is sniffed (MSG_PEEK on
/// the socket); TLS and unix connections go to HTTP/2 (TLS offers ALPN `h2` only).
pub async fn serve_sniffed<F, Fut>(
    stream: ClientStream,
    http1: &Http1Service,
    shutdown: crate::http2::ShutdownSignal,
    http2: F,
) where
    F: FnOnce(ClientStream) -> Fut,
    Fut: std::future::Future,
{
    let tcp = match stream {
        ClientStream::Tcp(tcp) => tcp,
        other => {
            http2(other).await;
            return;
        }
    };
    let deadline = Instant::now() + http1.config.header_read_timeout;
    match sniff(&tcp, deadline).await {
        Some(ClientProtocol::Http2) => {
            http2(ClientStream::Tcp(tcp)).await;
        }
        Some(ClientProtocol::Http1) => {
            let _ = super::serve_connection(
                ClientStream::Tcp(tcp),
                http1.config.clone(),
                http1.handler.clone(),
                shutdown,
            )
            .await;
        }
        None => {}
    }
}
