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
}

/// Calls `$method` on whichever stream `$self` holds.
macro_rules! each_stream {
    ($self:expr, $s:ident => $call:expr) => {
        match $self.get_mut() {
            ClientStream::Tcp($s) => $call,
            ClientStream::Unix($s) => $call,
            ClientStream::TcpTls($s) => $call,
            ClientStream::UnixTls($s) => $call,
        }
    };
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        each_stream!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        each_stream!(self, s => Pin::new(s).poll_write(cx, buf))
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each_stream!(self, s => Pin::new(s).poll_flush(cx))
    }
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each_stream!(self, s => Pin::new(s).poll_close(cx))
    }
}
