//! io_uring memory for the executor that runs the WAL.
//!
//! glommio refuses to start when `RLIMIT_MEMLOCK` is below 512 KiB, and it registers its
//! `io_memory` pool with each of its three rings; when that registration exceeds the limit it
//! only logs a warning and falls back to unregistered buffers. [`check_io_memory`] turns both
//! cases into a clear error before the executor is built, naming the limit to raise.

/// glommio's hard minimum for `RLIMIT_MEMLOCK` (see `Reactor::new` in glommio 0.9).
pub const GLOMMIO_MEMLOCK_MIN_BYTES: u64 = 512 << 10;
/// glommio registers the `io_memory` pool once per ring: main, latency and poll.
pub const GLOMMIO_RINGS: u64 = 3;
/// The WAL's suggested `io_memory` for its executor: two 1 MiB batches in flight, and three
/// registrations of it fit the default 8 MiB memlock limit.
pub const WAL_IO_MEMORY_BYTES: usize = 2 << 20;

/// Current soft `RLIMIT_MEMLOCK` in bytes (`u64::MAX` for unlimited).
pub fn memlock_limit_bytes() -> std::io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // Safety: getrlimit writes into the struct we own and reads nothing else.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(if limit.rlim_cur == libc::RLIM_INFINITY {
        u64::MAX
    } else {
        limit.rlim_cur
    })
}

/// Checks that an executor built with `io_memory_bytes` can start and register its buffers
/// under the current memlock limit. The error says exactly what to raise or lower.
pub fn check_io_memory(io_memory_bytes: usize) -> Result<(), String> {
    let limit = memlock_limit_bytes().map_err(|e| format!("getrlimit(RLIMIT_MEMLOCK): {e}"))?;
    // glommio rounds the pool up to 4 KiB with a 64 KiB floor.
    let pool = (io_memory_bytes as u64).div_ceil(4096).max(16) * 4096;
    let needed = (pool * GLOMMIO_RINGS).max(GLOMMIO_MEMLOCK_MIN_BYTES);
    if limit >= needed {
        return Ok(());
    }
    let raise = format!(
        "RLIMIT_MEMLOCK is {} KiB but the executor's io_uring memory needs {} KiB \
         ({} KiB io_memory registered with {GLOMMIO_RINGS} rings, glommio minimum {} KiB): \
         raise it with `ulimit -l {}` (or LimitMEMLOCK= in the service unit)",
        limit / 1024,
        needed / 1024,
        pool / 1024,
        GLOMMIO_MEMLOCK_MIN_BYTES / 1024,
        needed.div_ceil(1024),
    );
    // Below glommio's floor no io_memory setting helps; above it, a smaller pool also fits.
    let pool_fit = (limit / GLOMMIO_RINGS) / 4096 * 4096;
    if limit < GLOMMIO_MEMLOCK_MIN_BYTES || pool_fit < 64 << 10 {
        return Err(raise);
    }
    Err(format!(
        "{raise}, or lower the executor's io_memory to at most {} KiB",
        pool_fit / 1024
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_wal_io_memory_fits_default_memlock() {
        // 8 MiB is the common default limit; the WAL's suggestion must fit it.
        assert!(WAL_IO_MEMORY_BYTES as u64 * GLOMMIO_RINGS <= 8 << 20);
    }

    #[test]
    fn oversized_io_memory_names_the_limit_to_raise() {
        let limit = memlock_limit_bytes().unwrap();
        if limit == u64::MAX {
            return; // unlimited: nothing can exceed it
        }
        let err = check_io_memory((limit as usize) * 2).unwrap_err();
        assert!(err.contains("ulimit -l"), "{err}");
        assert!(err.contains("RLIMIT_MEMLOCK"), "{err}");
    }
}
