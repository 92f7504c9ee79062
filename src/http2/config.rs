//! Server transport settings and the graceful-shutdown signal.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Duration;

/// Transport limits. Every bound the connection enforces on the peer lives here.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Largest gRPC message accepted (etcd: --max-request-bytes + 512 KiB).
    pub max_recv_message_bytes: usize,
    /// SETTINGS_MAX_CONCURRENT_STREAMS we advertise and enforce (REFUSED_STREAM above it).
    pub max_concurrent_streams: u32,
    /// SETTINGS_INITIAL_WINDOW_SIZE we advertise: the per-stream receive window, which is
    /// also the most request data buffered per stream before the handler reads it.
    pub initial_stream_window_bytes: u32,
    /// Connection receive window, raised from 65,535 by a WINDOW_UPDATE right after our
    /// SETTINGS. Released as data arrives (streams bound their own buffering).
    pub connection_window_bytes: u32,
    /// SETTINGS_MAX_FRAME_SIZE we advertise; larger incoming frames are FRAME_SIZE_ERROR.
    pub max_frame_bytes: u32,
    /// SETTINGS_MAX_HEADER_LIST_SIZE we advertise; larger requests get HTTP 431.
    pub max_header_list_bytes: u32,
    /// SETTINGS_HEADER_TABLE_SIZE we advertise (the HPACK decoder's dynamic table bound).
    pub header_table_bytes: u32,
    /// How long in-flight streams may run after a graceful-shutdown GOAWAY.
    pub graceful_shutdown: Duration,
    /// Unsent response bytes per stream above which `ResponseSink::send` waits.
    pub send_queue_bytes_max: usize,
    /// Read buffer size; one read may carry many frames.
    pub read_buffer_bytes: usize,
    /// `--grpc-keepalive-min-time`: a client pinging more often gets GOAWAY
    /// ENHANCE_YOUR_CALM "too_many_pings" (see `limits::PingPolicy`).
    pub keepalive_min_time: Duration,
    /// `--grpc-keepalive-interval`: after this long without reading anything we ping the
    /// client (None: never; etcd's `0`).
    pub keepalive_interval: Option<Duration>,
    /// `--grpc-keepalive-timeout`: how long a client may leave our keepalive ping
    /// unanswered (it counts any frame as an answer) before we close the connection.
    pub keepalive_timeout: Duration,
    /// How long a new connection may take to send the preface and its SETTINGS; a client
    /// that is slower (slowloris) is closed.
    pub handshake_timeout: Duration,
    /// How long a connection may have no open stream before a graceful GOAWAY closes it
    /// (grpc-go's MaxConnectionIdle); None keeps idle connections forever.
    pub idle_timeout: Option<Duration>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            // etcd's default --max-request-bytes (1.5 MiB) plus grpc overhead (512 KiB).
            max_recv_message_bytes: 1536 * 1024 + 512 * 1024,
            max_concurrent_streams: 1024,
            initial_stream_window_bytes: 1 << 20,
            connection_window_bytes: 16 << 20,
            max_frame_bytes: 1 << 16,
            max_header_list_bytes: 1 << 16,
            header_table_bytes: 4096,
            graceful_shutdown: Duration::from_secs(5),
            send_queue_bytes_max: 1 << 20,
            read_buffer_bytes: 256 * 1024,
            // etcd's defaults for its --grpc-keepalive-* flags.
            keepalive_min_time: Duration::from_secs(5),
            keepalive_interval: Some(Duration::from_secs(2 * 3600)),
            keepalive_timeout: Duration::from_secs(20),
            // Go's HTTP/2 server waits 10 s for the preface by default (its
            // prefaceTimeout).
            handshake_timeout: Duration::from_secs(10),
            // Clients reconnect transparently after a graceful GOAWAY, so an idle
            // connection's descriptor and buffers are not held for ever.
            idle_timeout: Some(Duration::from_secs(5 * 60)),
        }
    }
}

/// A one-shot, cloneable shutdown trigger local to one executor (Rc: never sent across
/// threads). Each connection waits on it and answers with a graceful GOAWAY.
#[derive(Clone, Default)]
pub struct ShutdownSignal {
    inner: Rc<ShutdownInner>,
}

#[derive(Default)]
struct ShutdownInner {
    triggered: Cell<bool>,
    wakers: RefCell<Vec<Waker>>,
}

impl ShutdownSignal {
    pub fn new() -> ShutdownSignal {
        ShutdownSignal::default()
    }

    pub fn trigger(&self) {
        self.inner.triggered.set(true);
        for waker in self.inner.wakers.borrow_mut().drain(..) {
            waker.wake();
        }
    }

    pub fn is_triggered(&self) -> bool {
        self.inner.triggered.get()
    }

    /// Resolves once [`trigger`](Self::trigger) has been called.
    pub async fn wait(&self) {
        std::future::poll_fn(|cx| {
            if self.inner.triggered.get() {
                return Poll::Ready(());
            }
            let mut wakers = self.inner.wakers.borrow_mut();
            if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
                wakers.push(cx.waker().clone());
            }
            Poll::Pending
        })
        .await
    }
}
