//! Plain HTTP requests (not gRPC) on a TLS connection's HTTP/2, served by the client port's
//! HTTP handlers (`/health`, `/version`, `/metrics`, the `/v3` gateway), as etcd serves
//! them: on its TLS port Go's `http.Server` speaks HTTP/2 to every client that offers ALPN
//! `h2` (curl's default), and etcd's `grpcHandlerFunc` sends a request to gRPC only when
//! its content type names `application/grpc`, everything else to the HTTP mux. On cleartext
//! HTTP/2 (h2c) etcd's gRPC server takes every request, so this applies to TLS only.
//!
//! Invariants:
//! - The request body is bounded by the HTTP/1.1 side's `body_bytes_max` (413 past it),
//!   as the same handler's requests are there.
//! - A streamed answer (a gateway watch) queues at most [`STREAM_UNSENT_BYTES_MAX`] unsent
//!   bytes before waiting for the client to take them; it ends when the body stream ends
//!   or the client resets the stream.
//! - Response field names are lowercase (RFC 9113 §8.2.1); HTTP/1.1-only fields
//!   (`Connection`, `Transfer-Encoding`) are never sent.

use std::future::poll_fn;
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};

use crate::http1::message::{has_body, http_date};
use crate::http1::{Http1Service, Request as HttpRequest, Response};
use crate::http2::conn::{Request, StreamRef};
use crate::http2::hpack;

/// Most unsent bytes a streamed answer queues on its stream before it waits.
pub const STREAM_UNSENT_BYTES_MAX: usize = 256 * 1024;

/// Whether a request is gRPC by Go's etcd rule: its content type contains
/// "application/grpc".
pub fn is_grpc(request: &Request) -> bool {
    request
        .fields
        .iter()
        .find(|(name, _)| &name[..] == b"content-type")
        .is_some_and(|(_, value)| value.windows(16).any(|w| w == b"application/grpc"))
}

/// Serves `request` with `http`'s handler, in a task of its own.
pub fn serve(request: Request, http: Http1Service) {
    glommio::spawn_local(async move {
        let Request {
            stream,
            method,
            path,
            fields,
            ..
        } = request;
        let mut body = BytesMut::new();
        loop {
            match poll_fn(|cx| stream.poll_data(cx)).await {
                Some(Ok(chunk)) => {
                    if body.len() + chunk.len() > http.config.body_bytes_max {
                        let _ = send(
                            &stream,
                            &Response::error(413, "Request Entity Too Large"),
                            false,
                        )
                        .await;
                        return;
                    }
                    body.extend_from_slice(&chunk);
                }
                Some(Err(_)) => return,
                None => break,
            }
        }
        let method = String::from_utf8_lossy(&method).into_owned();
        let head = method == "HEAD";
        let request = HttpRequest {
            method,
            target: String::from_utf8_lossy(&path).into_owned(),
            headers: fields
                .into_iter()
                .map(|(n, v)| (String::from_utf8_lossy(&n).into_owned(), v))
                .collect(),
            body: body.freeze(),
        };
        let response = (http.handler)(request).await;
        let _ = send(&stream, &response, head).await;
        if let Some(mut pieces) = response.stream {
            if head {
                let _ = stream.send_trailers(Vec::new());
                return;
            }
            while let Some(piece) = futures::StreamExt::next(&mut pieces).await {
                if stream.send_data(piece).is_err() {
                    return;
                }
                let room = poll_fn(|cx| stream.poll_send_capacity(cx, STREAM_UNSENT_BYTES_MAX));
                if room.await.is_err() {
                    return;
                }
            }
            // END_STREAM after the data: an empty trailer block.
            let _ = stream.send_trailers(Vec::new());
        }
    })
    .detach();
}

/// Sends the head, and the whole body unless `response` streams (or `head_only`).
async fn send(stream: &StreamRef, response: &Response, head_only: bool) -> Result<(), ()> {
    let mut block = Vec::with_capacity(256);
    hpack::encoder::encode_field(
        &mut block,
        b":status",
        response.status.to_string().as_bytes(),
    );
    for (name, value) in &response.headers {
        let name = name.to_ascii_lowercase();
        if name == "connection" || name == "transfer-encoding" {
            continue;
        }
        hpack::encoder::encode_field(&mut block, name.as_bytes(), value.as_bytes());
    }
    hpack::encoder::encode_field(&mut block, b"date", http_date(SystemTime::now()).as_bytes());
    let whole = response.stream.is_none();
    let body: Bytes = if has_body(response.status) {
        response.body.clone()
    } else {
        Bytes::new()
    };
    if whole {
        let length = body.len().to_string();
        hpack::encoder::encode_field(&mut block, b"content-length", length.as_bytes());
    }
    let ends_here = whole && (body.is_empty() || head_only);
    stream.send_headers(&block, ends_here).map_err(|_| ())?;
    if whole && !ends_here {
        stream.send_data(body).map_err(|_| ())?;
        stream.send_trailers(Vec::new()).map_err(|_| ())?;
    }
    Ok(())
}
