//! Names for the threads glommio starts on our behalf.
//!
//! glommio gives a blocking-pool thread the same name as the executor that owns it, so
//! `top -H`, `perf` and strace-based checks could not tell a thread that may block (the
//! pool) from one that must never block (the executor). Every job we hand to a blocking
//! pool first calls [`prepare_blocking_thread`], which also sets the thread's CPU priority
//! for the kind of work it does ([`BlockingWork`]).

use std::cell::Cell;

/// The name blocking-pool threads carry (at most 15 bytes: the kernel's `comm` limit).
pub const BLOCKING_THREAD_NAME: &str = "tern-blocking";

const _: () = assert!(BLOCKING_THREAD_NAME.len() <= 15);

thread_local! {
    static NAMED: Cell<bool> = const { Cell::new(false) };
    /// The nice value this thread was last given (None: never set, so the default 0).
    static NICE: Cell<Option<libc::c_int>> = const { Cell::new(None) };
}

/// What a blocking job does, which decides its thread's priority.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockingWork {
    /// Work no client waits on directly (backend commits, freeing layers, snapshots):
    /// [`BLOCKING_THREAD_NICE`], so it never takes an executor's core from it.
    Background,
    /// Part of answering one request (bcrypt for Authenticate and user changes): the
    /// default priority, as etcd hashes in the request's own goroutine. At nice 10 a login
    /// on a busy machine waited behind every other process and overran etcdctl's 5 s.
    Request,
}

/// The nice value of blocking-pool threads. The pool is unbound, so a CPU-heavy job (a
/// 100k-key backend commit encodes its pages for ~100 ms) often shares a core with an
/// executor; at equal priority the scheduler split that core evenly and puts waited tens of
/// milliseconds behind the commit. At nice 10 the executor gets about 90% of a contended
/// core; the job still gets every idle cycle.
pub const BLOCKING_THREAD_NICE: libc::c_int = 10;

/// Renames the calling thread to [`BLOCKING_THREAD_NAME`] (once per thread) and gives it the
/// priority `work` calls for.
pub fn prepare_blocking_thread(work: BlockingWork) {
    let nice = match work {
        BlockingWork::Background => BLOCKING_THREAD_NICE,
        BlockingWork::Request => 0,
    };
    if NICE.with(|current| current.replace(Some(nice))) != Some(nice) {
        // Safety: a plain system call on the calling thread (Linux applies a PRIO_PROCESS
        // nice value given a thread id to that thread only). Raising the priority again
        // (back to 0) needs CAP_SYS_NICE; without it the call fails and the thread keeps
        // its lower priority, which is correct, only slower.
        unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, tid, nice);
        }
    }
    NAMED.with(|named| {
        if named.replace(true) {
            return;
        }
        let name = std::ffi::CString::new(BLOCKING_THREAD_NAME).expect("no NUL in the name");
        // Safety: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes, which
        // `name` is, and changes only the calling thread's name.
        unsafe {
            libc::prctl(libc::PR_SET_NAME, name.as_ptr() as libc::c_ulong, 0, 0, 0);
        }
    });
}
