//! The gRPC transport under tonic's generated clients: one HTTP/2 connection driven by the
//! `h2` crate directly, instead of tonic's `Channel`.
//!
//! Why: the load generator must cost less per request than the servers it measures. A
//! tonic `Channel` sends each call through a tower `Buffer` worker task and hyper's
//! dispatch task to the connection task, and hyper spawns one more task per request to
//! pipe its body; those hops, their channels and wake-ups were most of tern-bench's own
//! CPU per request. Here the calling task opens the stream itself (`SendRequest` is
//! shared state behind a lock in h2, not a channel), hands the body over and awaits the
//! response; only the connection task touches the socket.
//!
//! Invariants:
//! - A request body that is complete when first polled (every unary call) goes to h2
//!   whole from the calling task, with END_STREAM on its last DATA frame; no task is
//!   spawned. Its size is the encoded message, which the caller holds already.
//! - A body that is still open (client and bidirectional streams: Watch, LeaseKeepAlive)
//!   is piped by one task per stream, which sends only as much as the peer's flow-control
//!   window allows (so a fast producer waits instead of filling memory) and stops when
//!   the peer resets the stream or the caller drops the response, resetting the stream
//!   with CANCEL as grpc-go does for a cancelled call.
//! - Response data is handed back to h2's flow control as soon as tonic's decoder takes
//!   it, so the windows below bound what a connection buffers.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use h2::client::SendRequest;
use h2::{Reason, RecvStream, SendStream};
use http::HeaderMap;
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;

use crate::client::BoxError;

/// HTTP/2 flow-control windows the client advertises: fixed, and large enough that big
/// range responses do not stall on the 64 KiB default. Not an adaptive (BDP) window:
/// its PINGs count as strikes against grpc-go's keepalive policy, and etcd then closes
/// the connection with GOAWAY ENHANCE_YOUR_CALM ("too_many_pings").
const STREAM_WINDOW_BYTES: u32 = 4 << 20;
const CONNECTION_WINDOW_BYTES: u32 = 16 << 20;
/// Streams opened before the server's SETTINGS say how many it allows (h2's default).
const INITIAL_MAX_SEND_STREAMS: usize = 100;

/// One HTTP/2 connection; clones share it (each clone may have one stream waiting for a
/// concurrency slot, as h2's `SendRequest` allows).
#[derive(Clone)]
pub struct H2Channel {
    send: SendRequest<Bytes>,
}

impl H2Channel {
    /// Runs the HTTP/2 handshake on `io` and spawns the task that drives the connection.
    pub async fn handshake<T>(io: T) -> Result<H2Channel, BoxError>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (send, connection) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW_BYTES)
            .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
            .initial_max_send_streams(INITIAL_MAX_SEND_STREAMS)
            .enable_push(false)
            .handshake::<_, Bytes>(io)
            .await?;
        tokio::spawn(async move {
            // An error here reaches every open stream too, and each call reports it.
            let _ = connection.await;
        });
        let send = send.ready().await?;
        Ok(H2Channel { send })
    }
}

impl tower::Service<http::Request<tonic::body::Body>> for H2Channel {
    type Response = http::Response<ResponseBody>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.send.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let (parts, body) = request.into_parts();
        let opened = self
            .send
            .send_request(http::Request::from_parts(parts, ()), false);
        Box::pin(async move {
            let (response, stream) = opened.map_err(status_of)?;
            let pipe = send_body(body, stream).await?;
            let (parts, recv) = response.await.map_err(status_of)?.into_parts();
            let body = ResponseBody {
                recv,
                data_done: false,
                done: false,
                _pipe: pipe,
            };
            Ok(http::Response::from_parts(parts, body))
        })
    }
}

/// Sends what `body` has ready now, ending the stream if the body is complete; otherwise
/// spawns a pipe for the rest and returns its cancel switch.
async fn send_body(
    mut body: tonic::body::Body,
    mut stream: SendStream<Bytes>,
) -> Result<Option<oneshot::Sender<()>>, BoxError> {
    // One chunk is held back so that the last one carries END_STREAM.
    let mut held: Option<Bytes> = None;
    loop {
        match poll_now(&mut body).await {
            Some(Some(Ok(frame))) => {
                // A client request has no trailers (tonic sends none): only data counts.
                if let Ok(data) = frame.into_data() {
                    if let Some(previous) = held.replace(data) {
                        stream.send_data(previous, false).map_err(status_of)?;
                    }
                }
            }
            Some(Some(Err(status))) => {
                stream.send_reset(Reason::CANCEL);
                return Err(status.into());
            }
            Some(None) => {
                stream
                    .send_data(held.unwrap_or_default(), true)
                    .map_err(status_of)?;
                return Ok(None);
            }
            None => {
                if let Some(previous) = held.take() {
                    stream.send_data(previous, false).map_err(status_of)?;
                }
                let (cancel, cancelled) = oneshot::channel();
                tokio::spawn(pipe(body, stream, cancelled));
                return Ok(Some(cancel));
            }
        }
    }
}

/// Polls `body` once: `Some(frame)` if it had one (or ended), `None` if it would wait.
fn poll_now(
    body: &mut tonic::body::Body,
) -> impl Future<Output = Option<Option<Result<Frame<Bytes>, tonic::Status>>>> + '_ {
    std::future::poll_fn(move |cx| {
        Poll::Ready(match Pin::new(&mut *body).poll_frame(cx) {
            Poll::Ready(frame) => Some(frame),
            Poll::Pending => None,
        })
    })
}

/// What the pipe task waits for next.
enum PipeEvent {
    Cancelled,
    Reset,
    Frame(Option<Result<Frame<Bytes>, tonic::Status>>),
}

/// Sends the rest of a streaming request body within the peer's flow-control window,
/// until the body ends, the peer resets the stream or the caller gives up on the call.
async fn pipe(
    mut body: tonic::body::Body,
    mut stream: SendStream<Bytes>,
    mut cancelled: oneshot::Receiver<()>,
) {
    loop {
        let event = tokio::select! {
            biased;
            _ = &mut cancelled => PipeEvent::Cancelled,
            _ = std::future::poll_fn(|cx| stream.poll_reset(cx)) => PipeEvent::Reset,
            frame = body.frame() => PipeEvent::Frame(frame),
        };
        let mut data = match event {
            PipeEvent::Cancelled => {
                stream.send_reset(Reason::CANCEL);
                return;
            }
            PipeEvent::Reset => return,
            PipeEvent::Frame(None) => {
                let _ = stream.send_data(Bytes::new(), true);
                return;
            }
            PipeEvent::Frame(Some(Err(_))) => {
                stream.send_reset(Reason::CANCEL);
                return;
            }
            PipeEvent::Frame(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => data,
                Err(_) => continue,
            },
        };
        while !data.is_empty() {
            stream.reserve_capacity(data.len());
            let granted = tokio::select! {
                biased;
                _ = &mut cancelled => None,
                granted = std::future::poll_fn(|cx| stream.poll_capacity(cx)) => granted,
            };
            match granted {
                Some(Ok(0)) => {}
                Some(Ok(n)) => {
                    let chunk = data.split_to(n.min(data.len()));
                    if stream.send_data(chunk, false).is_err() {
                        return;
                    }
                }
                // Cancelled by the caller, or the stream is gone (reset, connection lost).
                None | Some(Err(_)) => {
                    stream.send_reset(Reason::CANCEL);
                    return;
                }
            }
        }
    }
}

/// A response body: h2's receive half, giving flow-control credit back for what it hands
/// on. Holds the request pipe's cancel switch, so dropping the body ends the call.
pub struct ResponseBody {
    recv: RecvStream,
    data_done: bool,
    done: bool,
    _pipe: Option<oneshot::Sender<()>>,
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if !this.data_done {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    // Fails only once the stream is gone, which the next poll reports.
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(status_of(e)))),
                None => this.data_done = true,
            }
        }
        let trailers: Result<Option<HeaderMap>, h2::Error> = ready!(this.recv.poll_trailers(cx));
        this.done = true;
        Poll::Ready(match trailers {
            Ok(Some(trailers)) => Some(Ok(Frame::trailers(trailers))),
            Ok(None) => None,
            Err(e) => Some(Err(status_of(e))),
        })
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

/// The gRPC status a transport failure means, as grpc-go's client maps them: a lost or
/// closing connection is Unavailable, a stream reset maps by its HTTP/2 error code.
fn status_of(error: h2::Error) -> tonic::Status {
    use tonic::Code;
    let code = if error.is_io() || error.is_go_away() {
        Code::Unavailable
    } else {
        match error.reason() {
            Some(Reason::REFUSED_STREAM) => Code::Unavailable,
            Some(Reason::CANCEL) => Code::Cancelled,
            Some(Reason::ENHANCE_YOUR_CALM) => Code::ResourceExhausted,
            Some(Reason::INADEQUATE_SECURITY) => Code::PermissionDenied,
            _ => Code::Internal,
        }
    };
    tonic::Status::new(code, error.to_string())
}
