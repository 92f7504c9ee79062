//! One network executor: its own SO_REUSEPORT listener per client URL, the connections it
//! accepts, and its `StateClient`.
//!
//! Invariants:
//! - A connection is accepted, served and closed on the same executor (glommio sockets are
//!   bound to their executor); nothing about it is visible to other cores.
//! - Shutdown: stop accepting, send GOAWAY on every live connection (via the shared
//!   `ShutdownSignal`), and return once every connection task has finished.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;

use futures::FutureExt;
use glommio::net::TcpListener;

use crate::grpc::Handler;
use crate::http2::{serve_connection, ServerConfig, ShutdownSignal};

/// Accepts on every address until `shutdown` fires, then drains live connections.
pub async fn serve_clients(
    listeners: Vec<TcpListener>,
    config: Rc<ServerConfig>,
    handler: Handler,
    shutdown: ShutdownSignal,
) {
    let live_connections = Rc::new(Cell::new(0usize));
    let mut acceptors = Vec::new();
    for listener in listeners {
        let (config, handler, shutdown) = (config.clone(), handler.clone(), shutdown.clone());
        let live = live_connections.clone();
        acceptors.push(glommio::spawn_local(async move {
            loop {
                let accepted = futures::select! {
                    conn = listener.accept().fuse() => conn,
                    _ = shutdown.wait().fuse() => break,
                };
                let stream = match accepted {
                    Ok(stream) => stream,
                    // EMFILE and friends: keep serving the connections we have.
                    Err(_) => continue,
                };
                // Small gRPC frames must not wait for Nagle's delayed-ACK dance.
                let _ = stream.set_nodelay(true);
                live.set(live.get() + 1);
                let (config, handler, shutdown) =
                    (config.clone(), handler.clone(), shutdown.clone());
                let live = live.clone();
                glommio::spawn_local(async move {
                    let _ = serve_connection(stream, config, handler, shutdown).await;
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

/// Fails if another process already listens on any of `addrs`. Needed because every
/// network executor binds with SO_REUSEPORT: without this check a second server started on
/// the same port would silently share the traffic instead of failing as etcd does. A probe
/// socket without SO_REUSEPORT cannot bind next to a live listener.
pub fn check_addresses_free(addrs: &[SocketAddr]) -> Result<(), String> {
    for addr in addrs {
        if let Err(e) = std::net::TcpListener::bind(addr) {
            return Err(format!("listen tcp {addr}: bind: {e}"));
        }
    }
    Ok(())
}

/// Binds one listener per address. glommio sets SO_REUSEPORT, so every network executor
/// binds the same addresses and the kernel balances new connections across them.
pub fn bind_all(addrs: &[SocketAddr]) -> Result<Vec<TcpListener>, String> {
    addrs
        .iter()
        .map(|addr| bind_reusable(addr).map_err(|e| format!("listen tcp {addr}: bind: {e}")))
        .collect()
}

/// A listener with SO_REUSEPORT (shared by the network executors) and SO_REUSEADDR, which
/// glommio's own `bind` does not set: without it a server restarted right after a crash
/// (kill -9) cannot bind while its old connections sit in TIME_WAIT, while etcd can.
pub fn bind_reusable(addr: &SocketAddr) -> std::io::Result<TcpListener> {
    use std::os::fd::FromRawFd as _;
    let domain = if addr.is_ipv6() {
        libc::AF_INET6
    } else {
        libc::AF_INET
    };
    // Safety: plain socket(2) call; the fd is checked and owned below.
    let fd = unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // Safety: `fd` is a fresh socket we own; on error it is closed before returning.
    let result = unsafe {
        let one: libc::c_int = 1;
        let set = |option| {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                option,
                &one as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        let (storage, len) = sockaddr_of(addr);
        if set(libc::SO_REUSEADDR) < 0
            || set(libc::SO_REUSEPORT) < 0
            || libc::bind(
                fd,
                &storage as *const libc::sockaddr_storage as *const libc::sockaddr,
                len,
            ) < 0
            || libc::listen(fd, 1024) < 0
        {
            let e = std::io::Error::last_os_error();
            libc::close(fd);
            Err(e)
        } else {
            Ok(())
        }
    };
    result?;
    // Safety: `fd` is a bound, listening socket that nothing else owns.
    Ok(unsafe { TcpListener::from_raw_fd(fd) })
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
