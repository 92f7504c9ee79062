//! Connecting the two ends of a glommio shared channel without a lost wake-up.
//!
//! A task waiting in `SharedSender::connect`/`SharedReceiver::connect` is only woken when
//! its own executor's reactor next runs: the peer connecting from another executor does
//! not wake a sleeping executor (glommio re-polls connection wakers on every reactor pass,
//! but never signals one). An executor with nothing else to do (a network core at startup,
//! before it accepts connections) would then sleep forever in `connect`, and the server
//! would never become ready. [`connect`] keeps a short timer running while it waits, so
//! the reactor passes again until the peer has connected.

use std::future::Future;
use std::time::Duration;

/// How often a waiting `connect` lets the reactor re-check its peer.
const CONNECT_RECHECK_INTERVAL: Duration = Duration::from_millis(1);

/// Awaits `connecting` (a shared channel's `connect()`), re-checking for the peer every
/// `CONNECT_RECHECK_INTERVAL` until it resolves.
pub async fn connect<F: Future>(connecting: F) -> F::Output {
    let recheck = glommio::spawn_local(async {
        loop {
            glommio::timer::sleep(CONNECT_RECHECK_INTERVAL).await;
        }
    });
    let connected = connecting.await;
    // Dropping the task cancels it.
    drop(recheck);
    connected
}
