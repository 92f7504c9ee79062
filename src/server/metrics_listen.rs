//! The `--listen-metrics-urls` listeners: HTTP serving only `/metrics` and the health
//! endpoints (etcd's metrics mux), so that a scraper or a probe can reach a member on an
//! address that serves no client traffic.
//!
//! As etcd 3.4's `embed.serveMetrics`: an http:// URL is plain HTTP/1.1 (no h2c: Go's
//! `http.Serve` does not speak it); an https:// URL is served with the client TLS settings
//! (`--cert-file`, `--key-file`, `--trusted-ca-file`, `--client-cert-auth`, the CRL,
//! `--auto-tls`'s pair), so with `--client-cert-auth` a scraper needs a client certificate.
//! Over TLS, ALPN `h2` gets HTTP/2 and everything else HTTP/1.1, as on the client port;
//! every HTTP/2 request goes to the metrics mux, gRPC-typed or not (etcd serves no gRPC
//! there).
//!
//! Invariants: as for the client listeners (`network`): claimed once by the main thread,
//! shared by every network executor, a connection (and its TLS handshake) lives and dies
//! on the executor that accepted it, and shutdown stops accepting and waits for live
//! connections to finish.

use std::cell::Cell;
use std::rc::Rc;

use futures::FutureExt;

use crate::http1::Http1Service;
use crate::http2::{ServerConfig, ShutdownSignal};
use crate::net::ClientListener;

/// Accepts on every metrics listener until `shutdown` fires, then drains live connections.
/// `http2` holds the HTTP/2 limits for TLS connections that agree on ALPN `h2`.
pub async fn serve_metrics(
    listeners: Vec<ClientListener>,
    http2: Rc<ServerConfig>,
    http1: Http1Service,
    shutdown: ShutdownSignal,
) {
    let live_connections = Rc::new(Cell::new(0usize));
    let mut acceptors = Vec::new();
    for listener in listeners {
        let (http1, shutdown, live) = (http1.clone(), shutdown.clone(), live_connections.clone());
        let http2 = http2.clone();
        acceptors.push(glommio::spawn_local(async move {
            loop {
                let accepted = futures::select! {
                    conn = listener.accept().fuse() => conn,
                    _ = shutdown.wait().fuse() => break,
                };
                // EMFILE and friends: keep serving the connections we have.
                let Ok(pending) = accepted else {
                    // Let other tasks (the shutdown signal's among them) run before the
                    // next try, so a failing accept cannot spin the core.
                    glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
                    continue;
                };
                live.set(live.get() + 1);
                let (http1, shutdown, live) = (http1.clone(), shutdown.clone(), live.clone());
                let http2 = http2.clone();
                glommio::spawn_local(async move {
                    serve_one(pending, http2, http1, shutdown).await;
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

/// One metrics connection: the TLS handshake if any (in this task, never the accept loop),
/// then HTTP/1.1, or HTTP/2 when TLS agreed on `h2`.
async fn serve_one(
    pending: crate::net::listener::PendingConnection,
    http2: Rc<ServerConfig>,
    http1: Http1Service,
    shutdown: ShutdownSignal,
) {
    let Some(stream) = pending.establish(&shutdown).await else {
        return;
    };
    if !stream.is_tls() {
        let _ = crate::http1::serve_connection(
            stream,
            http1.config.clone(),
            http1.handler.clone(),
            shutdown,
            // etcd serves cleartext metrics URLs with net/http alone, without cmux.
            crate::http1::FirstLine::Any,
        )
        .await;
        return;
    }
    let for_http2 = http1.clone();
    crate::http1::serve_sniffed(stream, &http1, shutdown.clone(), move |stream| {
        crate::http2::serve_connection_with(
            stream,
            http2,
            move |request| crate::grpc::plain_http::serve(request, for_http2.clone()),
            shutdown,
        )
    })
    .await;
}
