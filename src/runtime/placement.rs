//! Core placement: turns `--cores N` and the CPUs this process may run on into a plan of
//! pinned executors.
//!
//! Layout (N = cores in use):
//! - one network executor per core, each accepting from the same client listeners (claimed
//!   once by the main thread), so connections spread across cores and a connection never
//!   migrates;
//! - the state executor (MVCC today; raft and storage once they exist) pinned to the first
//!   core. With N = 1 the only network core runs inside it, on its thread (see
//!   `server::launch`, COLOCATED); with N ≥ 2 it still
//!   shares core 0, because the apply path is far cheaper than protocol work and a dedicated
//!   core would idle while the network cores saturate.
//!
//! Degrades gracefully: asking for more cores than the affinity mask allows uses what exists
//! (with a warning from the caller); a mask that cannot be read falls back to unpinned threads.

/// Which CPUs the executors run on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// CPU id for each network executor, in executor order.
    pub network_cpus: Vec<Option<usize>>,
    /// CPU id of the state executor.
    pub state_cpu: Option<usize>,
    /// Cores the operator asked for, if more than the machine allows.
    pub requested_cores_unavailable: Option<usize>,
}

impl Plan {
    /// Builds the plan from the requested core count (`None` = every allowed CPU).
    pub fn new(requested_cores: Option<usize>) -> Plan {
        Plan::from_allowed(requested_cores, allowed_cpus())
    }

    /// Pure planning step, separated for tests. `allowed` empty means "unknown": run unpinned.
    pub fn from_allowed(requested_cores: Option<usize>, allowed: Vec<usize>) -> Plan {
        if allowed.is_empty() {
            let n = requested_cores.unwrap_or(1).max(1);
            return Plan {
                network_cpus: vec![None; n],
                state_cpu: None,
                requested_cores_unavailable: None,
            };
        }
        let wanted = requested_cores.unwrap_or(allowed.len()).max(1);
        let used = wanted.min(allowed.len());
        let cpus: Vec<usize> = allowed[..used].to_vec();
        Plan {
            network_cpus: cpus.iter().map(|&c| Some(c)).collect(),
            state_cpu: Some(cpus[0]),
            requested_cores_unavailable: (wanted > used).then_some(wanted),
        }
    }

    pub fn cores_in_use(&self) -> usize {
        self.network_cpus.len()
    }
}

/// The CPUs in this process's affinity mask (cgroup cpusets and `taskset` included).
fn allowed_cpus() -> Vec<usize> {
    // Safety: `set` is a plain bitmask the kernel fills; size and pointer describe it exactly.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
            .collect()
    }
}

/// glommio refuses to start an io_uring reactor when RLIMIT_MEMLOCK is below 512 KiB, and
/// registers its I/O buffers only if the limit covers them (otherwise it silently falls back
/// to slower unregistered buffers). Check up front so that a non-root user with a small
/// limit gets one clear sentence instead of a reactor error.
pub fn check_memlock(executors: usize, io_memory_bytes: usize) -> Result<(), String> {
    const GLOMMIO_MEMLOCK_MIN_BYTES: u64 = 512 * 1024;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // Safety: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } != 0 {
        return Ok(()); // cannot tell; let glommio report
    }
    if limit.rlim_cur == libc::RLIM_INFINITY {
        return Ok(());
    }
    let needed = (executors as u64 * io_memory_bytes as u64).max(GLOMMIO_MEMLOCK_MIN_BYTES);
    if limit.rlim_cur < GLOMMIO_MEMLOCK_MIN_BYTES {
        return Err(format!(
            "locked-memory limit (RLIMIT_MEMLOCK) is {} KiB; tern's io_uring executors need at least {} KiB: \
             raise it with `ulimit -l {}` (or LimitMEMLOCK= in a systemd unit, memlock in /etc/security/limits.conf)",
            limit.rlim_cur / 1024,
            needed.div_ceil(1024),
            needed.div_ceil(1024)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_core_puts_state_and_network_together() {
        let plan = Plan::from_allowed(Some(1), vec![0, 1]);
        assert_eq!(plan.network_cpus, vec![Some(0)]);
        assert_eq!(plan.state_cpu, Some(0));
        assert_eq!(plan.requested_cores_unavailable, None);
    }

    #[test]
    fn two_cores_get_a_network_executor_each() {
        let plan = Plan::from_allowed(None, vec![0, 1]);
        assert_eq!(plan.network_cpus, vec![Some(0), Some(1)]);
        assert_eq!(plan.state_cpu, Some(0));
    }

    #[test]
    fn asking_for_more_cores_than_allowed_uses_what_exists() {
        let plan = Plan::from_allowed(Some(8), vec![2, 3]);
        assert_eq!(plan.network_cpus, vec![Some(2), Some(3)]);
        assert_eq!(plan.requested_cores_unavailable, Some(8));
    }

    #[test]
    fn unknown_affinity_runs_unpinned() {
        let plan = Plan::from_allowed(Some(2), vec![]);
        assert_eq!(plan.network_cpus, vec![None, None]);
        assert_eq!(plan.state_cpu, None);
    }
}
