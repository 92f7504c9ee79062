//! The `--listen-metrics-urls` listeners: plain HTTP/1.1 serving only `/metrics` and the
//! health endpoints (etcd's metrics mux), so that a scraper or a probe can reach a member
//! on an address that serves no client traffic.
//!
//! Invariants: as for the client listeners (`network`): claimed once by the main thread,
//! shared by every network executor, a connection lives and dies on the executor that
//! accepted it, and shutdown stops accepting and waits for live connections to finish.

use std::cell::Cell;
use std::rc::Rc;

use futures::FutureExt;
use glommio::net::TcpListener;

use crate::http1::Http1Service;
use crate::http2::ShutdownSignal;

/// Accepts on every metrics address until `shutdown` fires, then drains live connections.
pub async fn serve_metrics(
    listeners: Vec<TcpListener>,
    http1: Http1Service,
    shutdown: ShutdownSignal,
) {
    let live_connections = Rc::new(Cell::new(0usize));
    let mut acceptors = Vec::new();
    for listener in listeners {
        let (http1, shutdown, live) = (http1.clone(), shutdown.clone(), live_connections.clone());
        acceptors.push(glommio::spawn_local(async move {
            loop {
                let accepted = futures::select! {
                    conn = listener.accept().fuse() => conn,
                    _ = shutdown.wait().fuse() => break,
                };
                // EMFILE and friends: keep serving the connections we have.
                let Ok(stream) = accepted else { continue };
                live.set(live.get() + 1);
                let (http1, shutdown, live) = (http1.clone(), shutdown.clone(), live.clone());
                glommio::spawn_local(async move {
                    let _ = crate::http1::serve_connection(
                        stream,
                        http1.config.clone(),
                        http1.handler.clone(),
                        shutdown,
                    )
                    .await;
                    live.set(live.get() - 1);
                })
                .detach();
            }
        }));
    }
    for acceptor in acceptors {
        acceptor.await;
    }
    // Each connection ends at its next request boundary after shutdown (see http1::conn).
    while live_connections.get() > 0 {
        glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
    }
}
