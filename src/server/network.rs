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
        .map(|addr| TcpListener::bind(addr).map_err(|e| format!("listen tcp {addr}: bind: {e}")))
        .collect()
}
