//! One network executor: its handle on the shared client listeners, the connections it
//! accepts, and its `StateClient`.
//!
//! Invariants:
//! - The client addresses are claimed once, by the main thread, before any executor starts
//!   (`claim_client_addrs`); every network executor accepts from those same sockets. No
//!   other process can bind next to them (no SO_REUSEPORT).
//! - A connection is accepted, served and closed on the same executor (glommio sockets are
//!   bound to their executor); nothing about it is visible to other cores.
//! - A failed accept is retried after a backoff (5 ms doubling to 1 s, as Go's net/http),
//!   never at once: the accept loop cannot spin, and the core keeps serving.
//! - Shutdown: stop accepting, send GOAWAY on every live connection (via the shared
//!   `ShutdownSignal`), and return once every connection task has finished.

use std::cell::Cell;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd as _, OwnedFd};
use std::rc::Rc;
use std::time::Duration;

use futures::FutureExt;
use glommio::net::TcpListener;

use crate::grpc::serve_connection_and_http;
use crate::grpc::{with_tls_common_name, Handler};
use crate::http2::{ServerConfig, ShutdownSignal};
use crate::net::{ClientListener, ListenSocket};

/// Accepts on every address until `shutdown` fires, then drains live connections.
pub async fn serve_clients(
    listeners: Vec<ClientListener>,
    config: Rc<ServerConfig>,
    handler: Handler,
    shutdown: ShutdownSignal,
    http1: crate::http1::Http1Service,
) {
    let live_connections = Rc::new(Cell::new(0usize));
    let mut acceptors = Vec::new();
    for listener in listeners {
        let (config, handler, shutdown) = (config.clone(), handler.clone(), shutdown.clone());
        let http1 = http1.clone();
        let live = live_connections.clone();
        acceptors.push(glommio::spawn_local(async move {
            let mut backoff = AcceptBackoff::default();
            loop {
                let accepted = futures::select! {
                    conn = listener.accept().fuse() => conn,
                    _ = shutdown.wait().fuse() => break,
                };
                let pending = match accepted {
                    Ok(pending) => {
                        backoff.succeeded();
                        pending
                    }
                    Err(e) => {
                        // EMFILE and friends: keep serving the connections we have, and
                        // sleep before asking again (the sleep also lets every other task
                        // on this core, the shutdown signal's among them, run).
                        let delay = backoff.failed(&listener.socket, &e);
                        futures::select! {
                            _ = glommio::timer::sleep(delay).fuse() => continue,
                            _ = shutdown.wait().fuse() => break,
                        }
                    }
                };
                live.set(live.get() + 1);
                let (config, handler, shutdown) =
                    (config.clone(), handler.clone(), shutdown.clone());
                let live = live.clone();
                let http1 = http1.clone();
                glommio::spawn_local(async move {
                    // The TLS handshake, if any, runs here: never in the accept loop.
                    if let Some(stream) = pending.establish(&shutdown).await {
                        // Calls on a connection with a verified client certificate carry
                        // its name (the user, with --client-cert-auth).
                        let handler = with_tls_common_name(handler, stream.peer_common_name());
                        // One port, two protocols: gRPC clients go to HTTP/2, the rest to
                        // HTTP/1.1.
                        // On TLS, HTTP/2 also carries plain HTTP requests (etcd's TLS port).
                        let http = stream.is_tls().then(|| http1.clone());
                        crate::http1::serve_sniffed(stream, &http1, shutdown.clone(), |stream| {
                            serve_connection_and_http(stream, config, handler, http, shutdown)
                        })
                        .await;
                    }
                    live.set(live.get() - 1);
                })
                .detach();
            }
        }));
    }
    for acceptor in acceptors {
        acceptor.await;
    }
    // Each connection bounds its own graceful drain (see `ServerConfig`), so this ends.
    // Shutdown is not a hot path: polling beats a re-armable notifier here.
    while live_connections.get() > 0 {
        glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// First wait after a failed accept; each further failure in a row doubles it.
/// Go's net/http and grpc-go (which etcd serves clients with) use the same 5 ms.
const ACCEPT_RETRY_DELAY_FIRST: Duration = Duration::from_millis(5);
/// Longest wait between accept attempts (Go's net/http: 1 s): descriptors freed by closing
/// connections are used again within a second.
const ACCEPT_RETRY_DELAY_MAX: Duration = Duration::from_secs(1);
/// At most one "Accept error" line per listener and core per this interval: a process
/// that sits at its descriptor limit must not fill the log.
const ACCEPT_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Backoff of one accept loop. An accept that fails at once (EMFILE, ENFILE, ENOBUFS,
/// ENOMEM: the pending connection stays in the kernel's queue) would otherwise be retried
/// at once, forever, without yielding: the core would spin at 100%, starve its
/// connections and never see the shutdown signal.
#[derive(Default)]
struct AcceptBackoff {
    /// The current wait; None after a successful accept.
    delay: Option<Duration>,
    last_logged: Option<std::time::Instant>,
}

impl AcceptBackoff {
    fn succeeded(&mut self) {
        self.delay = None;
    }

    /// Records a failed accept and returns how long to wait before the next one. Logs the
    /// first failure of a run of them, in Go net/http's words (rate-limited).
    fn failed(&mut self, listener: &ListenSocket, error: &std::io::Error) -> Duration {
        let delay = match self.delay {
            None => ACCEPT_RETRY_DELAY_FIRST,
            Some(d) => (d * 2).min(ACCEPT_RETRY_DELAY_MAX),
        };
        let first_of_run = self.delay.is_none();
        self.delay = Some(delay);
        let now = std::time::Instant::now();
        let may_log = self
            .last_logged
            .is_none_or(|at| now.duration_since(at) >= ACCEPT_ERROR_LOG_INTERVAL);
        if first_of_run && may_log {
            self.last_logged = Some(now);
            let address = match listener {
                ListenSocket::Tcp(l) => l
                    .local_addr()
                    .map_or_else(|_| "?".to_owned(), |a| a.to_string()),
                ListenSocket::Unix(l) => l
                    .local_addr()
                    .ok()
                    .and_then(|a| a.as_pathname().map(|p| p.display().to_string()))
                    .unwrap_or_else(|| "?".to_owned()),
            };
            crate::warn!(
                format!(
                    "http: Accept error: accept tcp {address}: accept4: {}; retrying in {}",
                    go_errno_text(error),
                    crate::log::format_duration(delay)
                ),
                "address" => address
            );
        }
        delay
    }
}

/// Go's text for the errors accept(2) can fail with when resources run out (Go prints
/// `syscall.Errno` strings, lowercase, without Rust's "(os error N)" suffix).
fn go_errno_text(error: &std::io::Error) -> String {
    match error.raw_os_error() {
        Some(libc::EMFILE) => "too many open files".to_owned(),
        Some(libc::ENFILE) => "too many open files in system".to_owned(),
        Some(libc::ENOBUFS) => "no buffer space available".to_owned(),
        Some(libc::ENOMEM) => "cannot allocate memory".to_owned(),
        _ => error.to_string(),
    }
}

/// Claims every client address for this process: one listening socket per address, bound
/// with SO_REUSEADDR but without SO_REUSEPORT. Binding is the check: a port some other
/// process listens on fails here with etcd's "address already in use" error, and once bound
/// no other process can join the port (SO_REUSEPORT would let any process of the same user
/// share it and silently take part of the connections; etcd's default is
/// --socket-reuse-port=false). There is no check-then-bind window in which two servers
/// started at once could both pass a check and then share the port.
///
/// A port still held by a server that was just killed is waited for (`bind_lingering`).
pub fn claim_client_addrs(addrs: &[SocketAddr]) -> Result<Vec<OwnedFd>, String> {
    addrs
        .iter()
        .map(|addr| bind_lingering(addr, bind_listening))
        .collect()
}

/// Binds with `bind`, waiting briefly while the address is in use. A server that stops
/// cleanly shuts its listeners down before it exits (`stop_listening`), but one that was
/// killed (SIGKILL) cannot: the kernel tears down its io_uring, and with it the accepts
/// pending on its listener, only after the process is reaped, so the old listening socket
/// can outlive its process by a moment. Seen without this wait: an immediate restart after
/// kill -9 failed to bind its client or peer port in 3 of 12 tries.
pub fn bind_lingering<T>(
    addr: &SocketAddr,
    bind: impl Fn(&SocketAddr) -> std::io::Result<T>,
) -> Result<T, String> {
    let deadline = std::time::Instant::now() + LINGERING_LISTENER_WAIT;
    loop {
        match bind(addr) {
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            result => break result.map_err(|e| format!("listen tcp {addr}: bind: {e}")),
        }
    }
}

/// How long startup waits for a port held by a listener whose process has already exited.
const LINGERING_LISTENER_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// One network executor's handles on the claimed sockets: duplicates of the same listening
/// sockets, so every network executor accepts from one shared accept queue and a new
/// connection goes to whichever core asks first (a busy core asks less often).
pub fn executor_listeners(claimed: &[OwnedFd]) -> Result<Vec<OwnedFd>, String> {
    claimed
        .iter()
        .map(|fd| {
            fd.try_clone()
                .map_err(|e| format!("cannot share the client listener: {e}"))
        })
        .collect()
}

/// Turns this executor's listener handles into glommio listeners (on the calling executor).
pub fn into_glommio_listeners(fds: Vec<OwnedFd>) -> Vec<TcpListener> {
    use std::os::fd::{FromRawFd as _, IntoRawFd as _};
    fds.into_iter()
        // Safety: each fd is a bound, listening TCP socket that this call owns.
        .map(|fd| unsafe { TcpListener::from_raw_fd(fd.into_raw_fd()) })
        .collect()
}

/// Takes the claimed client sockets out of LISTEN, as the process stops, so that a server
/// restarted at once can bind the port: SO_REUSEADDR allows a bind beside a socket that no
/// longer listens, not beside a listening one. Closing our fds is not enough, because an
/// accept pending in an executor's io_uring holds the socket open until the kernel has torn
/// that ring down, which can finish after the process has exited. shutdown(2) acts on the
/// socket itself (every dup shares it) and fails those accepts.
pub fn stop_listening(claimed: &[OwnedFd]) {
    for fd in claimed {
        // Safety: shutdown(2) on a socket fd we own; it stays open until `claimed` drops.
        unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_RDWR) };
    }
}

/// Accept backlog of the client listeners: a benchmark opens a thousand connections at once.
const LISTEN_BACKLOG: libc::c_int = 1024;

/// A listening socket with SO_REUSEADDR, which glommio's own `bind` does not set: without it
/// a server restarted right after a crash (kill -9) cannot bind while its old connections
/// sit in TIME_WAIT, while etcd can.
fn bind_listening(addr: &SocketAddr) -> std::io::Result<OwnedFd> {
    use std::os::fd::FromRawFd as _;
    let domain = if addr.is_ipv6() {
        libc::AF_INET6
    } else {
        libc::AF_INET
    };
    // Non-blocking from the start, and never switched back. glommio's accept first tries a
    // synchronous accept(2) with O_NONBLOCK set on the file for the duration of the call,
    // then restores the flags it read. Every network executor's listener is a dup of the
    // same open file description, so those flags are shared: on a blocking socket, one
    // executor could restore "blocking" while another was between its get and its accept,
    // and that executor's thread then slept in accept(2) with its connections unserved
    // until some other client connected (requests never answered, SIGTERM never handled).
    // Safety: plain socket(2) call; the fd is checked and owned below.
    let fd = unsafe {
        libc::socket(
            domain,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // Safety: `fd` is a fresh socket that nothing else owns; the OwnedFd closes it on error.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let raw = fd.as_raw_fd();
    let one: libc::c_int = 1;
    // Safety: setsockopt with a valid fd and a pointer to a live c_int of the size given.
    let reuse_addr = unsafe {
        libc::setsockopt(
            raw,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            &one as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if reuse_addr < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let (storage, len) = sockaddr_of(addr);
    // Safety: `storage` holds a sockaddr of `len` bytes for the socket's family.
    let bound = unsafe {
        libc::bind(
            raw,
            &storage as *const libc::sockaddr_storage as *const libc::sockaddr,
            len,
        )
    };
    // Safety: listen(2) on a valid, bound socket.
    if bound < 0 || unsafe { libc::listen(raw, LISTEN_BACKLOG) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fd)
}

fn sockaddr_of(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // Safety: sockaddr_storage is plain old data; all-zero is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match addr {
        SocketAddr::V4(a) => {
            // Safety: sockaddr_storage is large and aligned enough for sockaddr_in.
            let sin = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr = libc::in_addr {
                s_addr: u32::from_ne_bytes(a.ip().octets()),
            };
            (
                storage,
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        }
        SocketAddr::V6(a) => {
            // Safety: sockaddr_storage is large and aligned enough for sockaddr_in6.
            let sin6 = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr = libc::in6_addr {
                s6_addr: a.ip().octets(),
            };
            sin6.sin6_flowinfo = a.flowinfo();
            sin6.sin6_scope_id = a.scope_id();
            (
                storage,
                std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            )
        }
    }
}
