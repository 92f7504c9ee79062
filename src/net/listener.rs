//! One client listener of a network executor: a TCP or unix socket, with or without TLS.
//!
//! Invariants:
//! - `accept` only accepts: the TLS handshake runs in the connection's own task
//!   ([`PendingConnection::establish`]), so a slow or silent client never holds up the
//!   accept loop or other connections on the core.
//! - A handshake ends within [`TLS_HANDSHAKE_TIMEOUT`] or at shutdown, whichever is first;
//!   a failed one is logged as etcd logs it ("rejected connection") and closes only that
//!   connection.
//! - A TLS listener never serves a connection without a completed handshake.
//! - On the peer port, a handshake is followed by etcd's SAN check ([`san_allows`]).

use std::io;
use std::sync::Arc;
use std::time::Duration;

use futures_rustls::LazyConfigAcceptor;
use glommio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

use super::stream::ClientStream;
use super::tls::{handshake_error_text, ReloadingServerConfig};
use crate::http2::ShutdownSignal;

/// Longest a client may take to complete its TLS handshake (grpc-go's server default
/// connection timeout): bounds what a client that connects and stays silent can hold.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(120);

pub enum ListenSocket {
    Tcp(TcpListener),
    Unix(UnixListener),
}

pub struct ClientListener {
    pub socket: ListenSocket,
    /// Set for https:// and unixs:// listeners.
    pub tls: Option<Arc<ReloadingServerConfig>>,
}

enum Accepted {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// An accepted connection whose TLS handshake (if any) has not run yet.
pub struct PendingConnection {
    accepted: Accepted,
    tls: Option<Arc<ReloadingServerConfig>>,
}

impl ClientListener {
    pub async fn accept(&self) -> io::Result<PendingConnection> {
        let accepted = match &self.socket {
            ListenSocket::Tcp(listener) => {
                let stream = listener.accept().await?;
                // Small gRPC frames must not wait for Nagle's delayed-ACK dance.
                let _ = stream.set_nodelay(true);
                Accepted::Tcp(stream)
            }
            ListenSocket::Unix(listener) => Accepted::Unix(listener.accept().await?),
        };
        Ok(PendingConnection {
            accepted,
            tls: self.tls.clone(),
        })
    }
}

impl PendingConnection {
    /// The stream to serve: at once for a plain listener, after the handshake for a TLS
    /// one. `None` if the handshake failed, timed out or shutdown came first.
    pub async fn establish(self, shutdown: &ShutdownSignal) -> Option<ClientStream> {
        let Some(tls) = self.tls else {
            return Some(match self.accepted {
                Accepted::Tcp(s) => ClientStream::Tcp(s),
                Accepted::Unix(s) => ClientStream::Unix(s),
            });
        };
        match self.accepted {
            Accepted::Tcp(s) => {
                let remote = s
                    .peer_addr()
                    .map(|a| a.to_string())
                    .unwrap_or_else(|_| "@".into());
                handshake(s, &tls, &remote, shutdown)
                    .await
                    .map(ClientStream::TcpTls)
            }
            // Go prints an unnamed unix peer as "@".
            Accepted::Unix(s) => handshake(s, &tls, "@", shutdown)
                .await
                .map(ClientStream::UnixTls),
        }
    }
}

enum HandshakeEnd<S> {
    Done(io::Result<Box<futures_rustls::server::TlsStream<S>>>),
    TimedOut,
    Shutdown,
}

/// The server side of a TLS handshake on `stream`, bounded by `TLS_HANDSHAKE_TIMEOUT` and
/// `shutdown`; a failure is logged as etcd logs it and gives `None`.
pub async fn handshake<S>(
    stream: S,
    tls: &ReloadingServerConfig,
    remote: &str,
    shutdown: &ShutdownSignal,
) -> Option<Box<futures_rustls::server::TlsStream<S>>>
where
    S: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin,
{
    let server_name = std::cell::RefCell::new(String::new());
    let offered_alpn = std::cell::RefCell::new(None::<Vec<Vec<u8>>>);
    let run = async {
        let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream).await?;
        let hello = start.client_hello();
        if let Some(name) = hello.server_name() {
            *server_name.borrow_mut() = name.to_owned();
        }
        *offered_alpn.borrow_mut() = hello.alpn().map(|list| list.map(<[u8]>::to_vec).collect());
        // The current configs, so rotated certificates apply from the next handshake on.
        let config = tls.current().for_client(offered_alpn.borrow().as_deref());
        start.into_stream(config).await.map(Box::new)
    };
    let run = async { HandshakeEnd::Done(run.await) };
    let timeout = async {
        glommio::timer::sleep(TLS_HANDSHAKE_TIMEOUT).await;
        HandshakeEnd::TimedOut
    };
    let stop = async {
        shutdown.wait().await;
        HandshakeEnd::Shutdown
    };
    let end = futures_lite::future::or(run, futures_lite::future::or(timeout, stop)).await;
    let error = match end {
        HandshakeEnd::Done(Ok(stream)) => return Some(stream),
        HandshakeEnd::Done(Err(e)) => handshake_error_text(&e, offered_alpn.borrow().as_deref()),
        HandshakeEnd::TimedOut => "tls: handshake timed out".to_owned(),
        HandshakeEnd::Shutdown => return None,
    };
    crate::warn!(
        "rejected connection",
        "remote-addr" => remote,
        "server-name" => server_name.borrow().as_str(),
        "error" => error
    );
    None
}

/// Binds a unix listening socket at `path` on the calling executor. A socket file left by
/// an earlier run is removed first, as etcd does; any other file there is an error.
pub fn bind_unix(path: &std::path::Path) -> Result<UnixListener, String> {
    use std::os::unix::fs::FileTypeExt as _;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.file_type().is_socket() {
            let _ = std::fs::remove_file(path);
        }
    }
    UnixListener::bind(path).map_err(|e| format!("listen unix {}: bind: {e}", path.display()))
}

/// etcd's SAN check of an accepted peer connection (`net::san`): whether its verified
/// certificate names `remote`; a refusal is logged as etcd logs it ("rejected connection",
/// with the certificate's SANs). A connection without a client certificate passes, as in
/// etcd (`--peer-client-cert-auth` is what requires one).
pub async fn san_allows<S>(
    stream: &futures_rustls::server::TlsStream<S>,
    remote: Option<std::net::SocketAddr>,
) -> bool {
    let connection = stream.get_ref().1;
    let Some(cert) = connection.peer_certificates().and_then(|c| c.first()) else {
        return true;
    };
    let Some(remote) = remote else {
        return false;
    };
    let Err(error) = super::san::check_cert_san(cert, remote).await else {
        return true;
    };
    let (ips, dns_names) = super::san::log_fields(cert);
    crate::warn!(
        "rejected connection",
        "remote-addr" => remote.to_string(),
        "server-name" => connection.server_name().unwrap_or(""),
        "ip-addresses" => ips,
        "dns-names" => dns_names,
        "error" => error
    );
    false
}
