//! The plain-HTTP endpoints etcd serves beside gRPC on its client port, and on its
//! `--listen-metrics-urls` listeners: the router, and etcd's CORS and method rules.
//!
//! Client port (etcd's `embed/serve.go`): CORS headers on every response (etcd's default
//! `--cors` allows every origin), `OPTIONS` answered 200 with no body, then `/health`,
//! `/livez`, `/readyz` (`health`), `/version`, `/metrics` (`metrics`), and the `/v3` JSON
//! gateway (`gateway`). Metrics listeners:
//! only `/metrics` and the health endpoints, without CORS. Everything else gets Go's
//! ServeMux "404 page not found".

mod gateway;
pub use gateway::LocalGrpc;
mod health;
pub mod metrics;

use std::rc::Rc;

use crate::http1::{self, Request, Response};
use crate::service::ServiceContext;

/// Which kind of listener a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    Client,
    Metrics,
}

/// The handler the HTTP/1.1 layer calls for every request. `grpc` is this core's gRPC
/// server, which the gateway's calls go to.
pub fn handler(context: Rc<ServiceContext>, listener: Listener, grpc: LocalGrpc) -> http1::Handler {
    let grpc = Rc::new(grpc);
    Rc::new(move |request: Request| {
        Box::pin(route(context.clone(), listener, grpc.clone(), request))
    })
}

async fn route(
    context: Rc<ServiceContext>,
    listener: Listener,
    grpc: Rc<LocalGrpc>,
    request: Request,
) -> Response {
    if request.target == "*" && request.method == "OPTIONS" {
        // Go's server answers `OPTIONS *` itself, before any handler (so without CORS).
        return Response::bare(200);
    }
    if listener == Listener::Metrics {
        return endpoint(&context, listener, &request).await;
    }
    let mut response = if request.method == "OPTIONS" {
        Response::new(200, "text/plain; charset=utf-8", "")
    } else if gateway::is_gateway_path(request.path()) {
        gateway::serve(&grpc, &request).await
    } else {
        endpoint(&context, listener, &request).await
    };
    response.set_header(
        "Access-Control-Allow-Methods",
        "POST, GET, OPTIONS, PUT, DELETE",
    );
    response.set_header("Access-Control-Allow-Origin", "*");
    response.set_header(
        "Access-Control-Allow-Headers",
        "accept, content-type, authorization",
    );
    response
}

async fn endpoint(context: &ServiceContext, listener: Listener, request: &Request) -> Response {
    if request.target == "*" {
        // Go's ServeMux: a `*` target (the HTTP/2 preface read as HTTP/1.1, `GET *`)
        // is answered 400 with no body, and the connection closed.
        let mut response = Response::bare(400);
        response.close = true;
        return response;
    }
    let path = request.path();
    match path {
        "/metrics" => metrics::serve(context, request).await,
        "/health" => health::health(context, request).await,
        _ if health::is_probe_path(path) => health::probe(context, request).await,
        "/version" if listener == Listener::Client => version(request),
        _ => Response::error(404, "404 page not found"),
    }
}

/// Answers a method other than `allowed` as Go's etcd does (405 with `Allow`), or None.
pub(crate) fn method_not_allowed(request: &Request, allowed: &str) -> Option<Response> {
    (request.method != allowed).then(|| {
        let mut response = Response::error(405, "Method Not Allowed");
        response.set_header("Allow", allowed);
        response
    })
}

/// The cluster version a tern cluster runs at: the one its members agree on at bootstrap
/// (the `ClusterVersion` entry of `raft::node::membership`). A member serves only once
/// published, so etcd's "not_decided" never shows.
const CLUSTER_VERSION: &str = "3.4.0";

/// etcd's `/version`: the server's release and the cluster version.
fn version(request: &Request) -> Response {
    if let Some(refused) = method_not_allowed(request, "GET") {
        return refused;
    }
    let body = format!(
        "{{\"etcdserver\":\"{}\",\"etcdcluster\":\"{}\"}}",
        crate::state::machine::ETCD_SERVER_VERSION,
        CLUSTER_VERSION
    );
    Response::new(200, "application/json", body)
}

#[cfg(test)]
mod tests {
    #[test]
    fn metrics_report_the_version_status_reports() {
        assert_eq!(
            crate::metrics::families::SERVER_VERSION,
            crate::state::machine::ETCD_SERVER_VERSION
        );
    }
}
