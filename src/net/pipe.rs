//! An in-memory byte stream between two tasks of one executor: what the `/v3` JSON gateway
//! speaks HTTP/2 over to reach this core's own gRPC server, with no socket, port or TLS
//! in between (`service::http::gateway`).
//!
//! Invariants:
//! - Each direction buffers at most [`PIPE_BUFFER_BYTES`]; a writer facing a full buffer
//!   waits (backpressure, as a socket's send buffer gives), never grows it.
//! - Each direction keeps one reader waker and one writer waker, so an end can be read
//!   from one task and written from another without either stealing the other's wake-up
//!   (what `http2::serve_connection_with` needs of its stream).
//! - Dropping or closing an end is seen by the other: its reads return end-of-file once
//!   the buffer is drained, its writes fail with `BrokenPipe`.
//! - Single-threaded (`Rc`): both ends live on the executor that made them.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use futures_lite::{AsyncRead, AsyncWrite};

/// Most bytes one direction holds unread (a socket buffer's worth).
pub const PIPE_BUFFER_BYTES: usize = 256 * 1024;

#[derive(Default)]
struct Direction {
    bytes: VecDeque<u8>,
    /// The writing end closed or dropped: reads end once `bytes` is drained.
    writer_gone: bool,
    /// The reading end dropped: writes fail.
    reader_gone: bool,
    reader: Option<Waker>,
    writer: Option<Waker>,
}

impl Direction {
    fn wake_reader(&mut self) {
        if let Some(waker) = self.reader.take() {
            waker.wake();
        }
    }
    fn wake_writer(&mut self) {
        if let Some(waker) = self.writer.take() {
            waker.wake();
        }
    }
}

/// One end of a pipe: reads what the other end writes, and the reverse.
pub struct PipeEnd {
    incoming: Rc<RefCell<Direction>>,
    outgoing: Rc<RefCell<Direction>>,
}

/// A connected pair of ends.
pub fn pipe() -> (PipeEnd, PipeEnd) {
    let a_to_b = Rc::new(RefCell::new(Direction::default()));
    let b_to_a = Rc::new(RefCell::new(Direction::default()));
    (
        PipeEnd {
            incoming: b_to_a.clone(),
            outgoing: a_to_b.clone(),
        },
        PipeEnd {
            incoming: a_to_b,
            outgoing: b_to_a,
        },
    )
}

impl AsyncRead for PipeEnd {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let mut incoming = self.incoming.borrow_mut();
        if incoming.bytes.is_empty() {
            if incoming.writer_gone || buf.is_empty() {
                return Poll::Ready(Ok(0));
            }
            incoming.reader = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = buf.len().min(incoming.bytes.len());
        for (slot, byte) in buf.iter_mut().zip(incoming.bytes.drain(..n)) {
            *slot = byte;
        }
        incoming.wake_writer();
        Poll::Ready(Ok(n))
    }
}

impl AsyncWrite for PipeEnd {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut outgoing = self.outgoing.borrow_mut();
        if outgoing.reader_gone || outgoing.writer_gone {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let room = PIPE_BUFFER_BYTES - outgoing.bytes.len();
        if room == 0 {
            outgoing.writer = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = room.min(buf.len());
        outgoing.bytes.extend(&buf[..n]);
        outgoing.wake_reader();
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut outgoing = self.outgoing.borrow_mut();
        outgoing.writer_gone = true;
        outgoing.wake_reader();
        Poll::Ready(Ok(()))
    }
}

impl Drop for PipeEnd {
    fn drop(&mut self) {
        let mut outgoing = self.outgoing.borrow_mut();
        outgoing.writer_gone = true;
        outgoing.wake_reader();
        drop(outgoing);
        let mut incoming = self.incoming.borrow_mut();
        incoming.reader_gone = true;
        incoming.bytes.clear();
        incoming.wake_writer();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future::block_on;
    use futures_lite::io::{AsyncReadExt as _, AsyncWriteExt as _};

    #[test]
    fn carries_bytes_both_ways_and_ends_when_an_end_drops() {
        block_on(async {
            let (mut a, mut b) = pipe();
            a.write_all(b"ping").await.unwrap();
            let mut got = [0u8; 4];
            b.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"ping");
            b.write_all(b"pong").await.unwrap();
            a.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"pong");
            drop(a);
            assert_eq!(b.read(&mut got).await.unwrap(), 0);
            let err = b.write_all(b"x").await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
        });
    }

    #[test]
    fn a_full_direction_holds_the_writer_until_the_reader_takes_bytes() {
        block_on(async {
            let (mut a, mut b) = pipe();
            let big = vec![7u8; PIPE_BUFFER_BYTES + 10];
            let write = async {
                a.write_all(&big).await.unwrap();
                a.close().await.unwrap();
            };
            let read = async {
                let mut all = Vec::new();
                b.read_to_end(&mut all).await.unwrap();
                all
            };
            let ((), all) = futures_lite::future::zip(write, read).await;
            assert_eq!(all.len(), big.len());
            assert_eq!(a.outgoing.borrow().bytes.len(), 0);
        });
    }
}
