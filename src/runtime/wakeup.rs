//! A one-waiter wake-up flag for tasks on one executor: `wake` before or during `wait`
//! makes the (next) `wait` return; several wakes before a wait count as one. Used by the
//! raft ready loop, the peer transport's links, and the watch hub's streams and driver.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::task::{Poll, Waker};

#[derive(Default)]
pub struct Wakeup {
    woken: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Wakeup {
    pub fn wake(&self) {
        self.woken.set(true);
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }

    /// Waits for a wake since the last `wait` returned.
    pub async fn wait(&self) {
        poll_fn(|cx| {
            if self.woken.replace(false) {
                return Poll::Ready(());
            }
            *self.waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}
