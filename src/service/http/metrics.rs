//! `/metrics`: the Prometheus scrape, answered from the counts every core keeps (see
//! `crate::metrics`); the scrape costs the cores that count nothing.

use crate::http1::{Request, Response};
use crate::service::ServiceContext;

use super::method_not_allowed;

pub async fn serve(_context: &ServiceContext, request: &Request) -> Response {
    if let Some(refused) = method_not_allowed(request, "GET") {
        return refused;
    }
    Response::new(
        200,
        crate::metrics::TEXT_CONTENT_TYPE,
        crate::metrics::gather_text(),
    )
}
