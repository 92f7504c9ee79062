//! `/metrics`: the Prometheus scrape, answered from the counts every core keeps (see
//! `crate::metrics`). What only the state core knows at this moment (the database's size
//! on disk and in use) it is asked for by one Status message; counting costs the cores
//! nothing at scrape time.

use crate::http1::{Request, Response};
use crate::service::ServiceContext;

use super::method_not_allowed;

pub async fn serve(context: &ServiceContext, request: &Request) -> Response {
    if let Some(refused) = method_not_allowed(request, "GET") {
        return refused;
    }
    if let Ok(status) = context.state.status().await {
        let s = &crate::metrics::STATE;
        s.db_total_size_bytes.set(status.db_size);
        s.db_total_size_in_use_bytes.set(status.db_size_in_use);
    }
    Response::new(
        200,
        crate::metrics::TEXT_CONTENT_TYPE,
        crate::metrics::gather_text(),
    )
}
