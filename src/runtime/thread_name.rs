//! Names for the threads glommio starts on our behalf.
//!
//! glommio gives a blocking-pool thread the same name as the executor that owns it, so
//! `top -H`, `perf` and strace-based checks could not tell a thread that may block (the
//! pool) from one that must never block (the executor). Every job we hand to a blocking
//! pool first calls [`name_blocking_thread`].

use std::cell::Cell;

/// The name blocking-pool threads carry (at most 15 bytes: the kernel's `comm` limit).
pub const BLOCKING_THREAD_NAME: &str = "tern-blocking";

const _: () = assert!(BLOCKING_THREAD_NAME.len() <= 15);

thread_local! {
    static NAMED: Cell<bool> = const { Cell::new(false) };
}

/// Renames the calling thread to [`BLOCKING_THREAD_NAME`], once per thread.
pub fn name_blocking_thread() {
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
