//! etcdserverpb.Watch: one bidirectional stream carrying many watchers.
//!
//! Two halves run side by side for each stream (etcd's recvLoop and sendLoop in
//! v3rpc/watch.go): the receiving half handles create/cancel/progress requests one at a
//! time through this core's `WatchHub`; the sending half writes the stream's queue out
//! through `ResponseSink::send_framed` (which waits on HTTP/2 flow control) and fires the
//! periodic progress notification. The hub, not this file, decides what is queued.
//!
//! Lifetime, as in etcd: the client's half-close does not end the stream (its watchers
//! keep delivering); a malformed message ends it with the decode error; the client going
//! away, or server shutdown (UNAVAILABLE), ends it and frees its watchers.
//!
//! [`hub`] is this core's half of watch (every watcher of every stream on the core).

use futures_lite::future;
use glommio::timer::Timer;
use std::cell::Cell;
use std::rc::Rc;

use crate::auth::request::RangeCheck;
use crate::auth::AuthOp;
use crate::error::EtcdError;
use crate::grpc::{Call, Code, RequestStream, ResponseSink, Status};
use crate::proto::etcdserverpb as pb;
use crate::proto::etcdserverpb::watch_create_request::FilterType;
use crate::proto::etcdserverpb::watch_request::RequestUnion;
use crate::runtime::Wakeup;
use crate::service::{status_from_error, unknown_method, ServiceContext};
use crate::state::StateClient;
use hub::{CreateRequest, StreamId, WatchHub};

pub mod hub;

pub async fn serve(context: &ServiceContext, method: &str, call: Call) {
    if method != "Watch" {
        return call
            .responses
            .finish(unknown_method("etcdserverpb.Watch", method));
    }
    let Call {
        requests,
        mut responses,
        ..
    } = call;
    let hub = context.watch.clone();
    let (stream, ready) = hub.open_stream();
    // The hub's own state-core traffic (feed subscription, history) is the server's,
    // not the client's: only creating a watcher is checked against the client's token.
    let hub_state = context.state.with_credential(None);
    let _close = CloseStream {
        hub: hub.clone(),
        state: &hub_state,
        stream,
    };

    enum End {
        Status(Status),
        Gone,
        Shutdown,
    }
    let ended = future::or(
        async { End::Status(receive(context, &hub_state, &hub, stream, requests).await) },
        future::or(
            async {
                match send(&hub, stream, &ready, &mut responses).await {
                    Some(status) => End::Status(status),
                    None => End::Gone,
                }
            },
            async {
                hub.shutdown.wait().await;
                End::Shutdown
            },
        ),
    )
    .await;
    match ended {
        End::Status(status) => responses.finish(status),
        End::Gone => {}
        End::Shutdown => responses.finish(status_from_error(EtcdError::Stopped)),
    }
}

/// Frees the stream's watchers however the call ends (including being dropped when the
/// client resets the stream).
struct CloseStream<'a> {
    hub: Rc<WatchHub>,
    state: &'a StateClient,
    stream: StreamId,
}

impl Drop for CloseStream<'_> {
    fn drop(&mut self) {
        self.hub.close_stream(self.state, self.stream);
    }
}

/// The receiving half; returns the status that ends the stream.
async fn receive(
    context: &ServiceContext,
    hub_state: &StateClient,
    hub: &WatchHub,
    stream: StreamId,
    mut requests: RequestStream,
) -> Status {
    loop {
        let message = match requests.next().await {
            Some(Ok(message)) => message,
            Some(Err(status)) => return status,
            // Half-close: etcd keeps the stream and its watchers until the client leaves.
            None => return std::future::pending().await,
        };
        let request = match crate::service::call::decode_request::<pb::WatchRequest>(message) {
            Ok(request) => request,
            Err(e) => {
                return Status::new(
                    Code::Internal,
                    format!("grpc: error unmarshalling request: {e}"),
                )
            }
        };
        match request.request_union {
            Some(RequestUnion::CreateRequest(create)) => {
                // etcd checks read permission on the whole watched range at creation
                // (an empty key is "\0", the smallest key); a refusal is a created and
                // canceled response whose reason is the gRPC error's text.
                let key = if create.key.is_empty() {
                    bytes::Bytes::from_static(&[0])
                } else {
                    create.key.clone()
                };
                let check = AuthOp::CheckRange(RangeCheck {
                    key,
                    range_end: create.range_end.clone(),
                });
                if let Err(e) = context.state.auth(check).await {
                    hub.reject_create(stream, status_from_error(e).to_string());
                    continue;
                }
                let filters = &create.filters;
                let has = |f: FilterType| filters.contains(&(f as i32));
                let req = CreateRequest {
                    no_put: has(FilterType::Noput),
                    no_delete: has(FilterType::Nodelete),
                    key: create.key,
                    range_end: create.range_end,
                    start_revision: create.start_revision,
                    watch_id: create.watch_id,
                    prev_kv: create.prev_kv,
                    fragment: create.fragment,
                    progress_notify: create.progress_notify,
                };
                hub.create(hub_state, stream, req).await;
            }
            Some(RequestUnion::CancelRequest(cancel)) => {
                hub.cancel(hub_state, stream, cancel.watch_id)
            }
            Some(RequestUnion::ProgressRequest(_)) => hub.request_progress(stream),
            // etcd ignores a request with no known member set rather than ending the stream.
            None => {}
        }
    }
}

/// The sending half; returns when the client has gone (None), or with the status that
/// ends the stream when a response could not be sent.
async fn send(
    hub: &WatchHub,
    stream: StreamId,
    ready: &Rc<Wakeup>,
    responses: &mut ResponseSink,
) -> Option<Status> {
    // The progress timer runs in a task of its own that raises `ticked` and wakes the
    // sender: the sender wakes once per batch of events, and polling a glommio timer on
    // each of those wake-ups would re-register it with the reactor each time. Dropping the
    // task when the stream ends cancels it.
    let ticked = Rc::new(Cell::new(false));
    let _ticker = glommio::spawn_local({
        let (ticked, ready) = (ticked.clone(), ready.clone());
        let interval = hub.progress_notify_interval;
        async move {
            loop {
                Timer::new(interval).await;
                ticked.set(true);
                ready.wake();
            }
        }
    });
    loop {
        // The hub hands out whole gRPC-framed responses, many per chunk.
        while let Some(chunk) = hub.pop(stream) {
            if responses.send_framed(chunk).await.is_err() {
                return None;
            }
        }
        if let Some(status) = hub.failure(stream) {
            return Some(status);
        }
        ready.wait().await;
        if ticked.replace(false) {
            hub.progress_tick(stream);
        }
    }
}
