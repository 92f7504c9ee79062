//! [`ClientStream`]: one accepted client connection, plain or TLS, over TCP or a unix
//! socket.
//!
//! Invariant (what `http2::serve_connection_with` needs): reads and writes can be polled
//! from two tasks at once without stealing each other's wakers. glommio's sockets keep one
//! waker per direction; futures-rustls, once the handshake is done, touches the socket's
//! read side only from `poll_read` and its write side only from the write calls.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, AsyncWrite};
use futures_rustls::server::TlsStream;
use glommio::net::{TcpStream, UnixStream};

pub enum ClientStream {
    Tcp(TcpStream),
    Unix(UnixStream),
    /// Boxed: rustls's connection state is a few KiB, the plain variants a few words.
    TcpTls(Box<TlsStream<TcpStream>>),
    UnixTls(Box<TlsStream<UnixStream>>),
}

impl ClientStream {
    pub fn is_tls(&self) -> bool {
        matches!(self, ClientStream::TcpTls(_) | ClientStream::UnixTls(_))
    }

    /// The subject common name of the client certificate the handshake verified ("" when
    /// it has none); None without TLS or when the client sent no certificate. (rustls
    /// hands out only certificates its client verifier accepted.)
    pub fn peer_common_name(&self) -> Option<String> {
        let certificates = match self {
            ClientStream::TcpTls(s) => s.get_ref().1.peer_certificates(),
            ClientStream::UnixTls(s) => s.get_ref().1.peer_certificates(),
            ClientStream::Tcp(_) | ClientStream::Unix(_) => None,
        }?;
        let leaf = certificates.first()?;
        Some(super::x509::subject_common_name(leaf).unwrap_or_default())
    }

    /// The protocol ALPN agreed on a TLS connection (None: plain, or none agreed).
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        match self {
            ClientStream::TcpTls(s) => s.get_ref().1.alpn_protocol(),
            ClientStream::UnixTls(s) => s.get_ref().1.alpn_protocol(),
            ClientStream::Tcp(_) | ClientStream::Unix(_) => None,
        }
    }
}

/// A peer transport connection: plain TCP, or TLS as the accepting or the dialling side.
pub enum PeerStream {
    Tcp(TcpStream),
    Accepted(Box<TlsStream<TcpStream>>),
    Dialled(Box<futures_rustls::client::TlsStream<TcpStream>>),
}

impl PeerStream {
    /// The TCP socket under any TLS layer (for socket options such as timeouts).
    pub fn tcp(&self) -> &TcpStream {
        match self {
            PeerStream::Tcp(s) => s,
            PeerStream::Accepted(s) => s.get_ref().0,
            PeerStream::Dialled(s) => s.get_ref().0,
        }
    }
}

/// Implements `AsyncRead`/`AsyncWrite` for an enum of streams by forwarding each call to
/// whichever stream it holds.
macro_rules! forward_io {
    ($ty:ident: $($variant:ident),+) => {
        impl AsyncRead for $ty {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut [u8],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    $($ty::$variant(s) => Pin::new(s).poll_read(cx, buf),)+
                }
            }
        }

        impl AsyncWrite for $ty {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    $($ty::$variant(s) => Pin::new(s).poll_write(cx, buf),)+
                }
            }
            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $($ty::$variant(s) => Pin::new(s).poll_flush(cx),)+
                }
            }
            fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $($ty::$variant(s) => Pin::new(s).poll_close(cx),)+
                }
            }
        }
    };
}

forward_io!(ClientStream: Tcp, Unix, TcpTls, UnixTls);
forward_io!(PeerStream: Tcp, Accepted, Dialled);
