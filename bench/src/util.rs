//! Small pieces shared by the subcommands: the progress bar, the rate limiter, key
//! encoding, Go-style durations and the load generator's own CPU accounting.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::RngCore;

/// Progress bar on stderr. Workers bump a shared atomic counter (no lock on the hot
/// path); a ticker task copies it into the bar ten times a second.
pub struct Progress {
    done: Arc<AtomicU64>,
    bar: ProgressBar,
    ticker: tokio::task::JoinHandle<()>,
}

impl Progress {
    pub fn start(total: u64) -> Progress {
        Progress::with_target(total, ProgressDrawTarget::stderr())
    }

    pub fn hidden(total: u64) -> Progress {
        Progress::with_target(total, ProgressDrawTarget::hidden())
    }

    fn with_target(total: u64, target: ProgressDrawTarget) -> Progress {
        let bar = ProgressBar::with_draw_target(Some(total), target);
        bar.set_style(
            ProgressStyle::with_template(
                "{pos} / {len} [{bar:40}] {percent:>3}% {elapsed_precise}",
            )
            .expect("static template is valid")
            .progress_chars("=> "),
        );
        let done = Arc::new(AtomicU64::new(0));
        let ticker = {
            let done = done.clone();
            let bar = bar.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(100));
                loop {
                    tick.tick().await;
                    bar.set_position(done.load(Ordering::Relaxed));
                }
            })
        };
        Progress { done, bar, ticker }
    }

    pub fn counter(&self) -> Arc<AtomicU64> {
        self.done.clone()
    }

    pub fn finish(self) {
        self.ticker.abort();
        self.bar.set_position(self.done.load(Ordering::Relaxed));
        self.bar.finish();
    }
}

/// Limits the rate of operations like Go's `rate.NewLimiter(r, burst)`: each caller reserves
/// the next free slot on a virtual timeline (one slot per `1/r` seconds, at most `burst`
/// slots in arrears) and sleeps until it. A rate of 0 means no limit.
pub struct Limiter {
    start: Instant,
    interval_ns: u64,
    burst_ns: u64,
    next_ns: AtomicU64,
}

impl Limiter {
    pub fn new(rate_per_s: u64, burst: u64) -> Arc<Limiter> {
        let interval_ns = 1_000_000_000u64.checked_div(rate_per_s).unwrap_or(0);
        Arc::new(Limiter {
            start: Instant::now(),
            interval_ns,
            burst_ns: interval_ns * burst.saturating_sub(1),
            next_ns: AtomicU64::new(0),
        })
    }

    pub async fn wait(&self) {
        if self.interval_ns == 0 {
            return;
        }
        let now_ns = self.start.elapsed().as_nanos() as u64;
        let floor_ns = now_ns.saturating_sub(self.burst_ns);
        let mut next = self.next_ns.load(Ordering::Relaxed);
        let slot = loop {
            let slot = next.max(floor_ns);
            match self.next_ns.compare_exchange_weak(
                next,
                slot + self.interval_ns,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => break slot,
                Err(actual) => next = actual,
            }
        };
        if slot > now_ns {
            tokio::time::sleep(Duration::from_nanos(slot - now_ns)).await;
        }
    }
}

/// Writes `n` as a Go `binary.PutVarint` (zig-zag varint) at the start of `key`, leaving
/// the rest as it was: etcd's tool builds its keys this way. Errors when the key is too
/// short for the number, where Go would panic.
pub fn put_varint(key: &mut [u8], n: i64) -> Result<(), String> {
    let mut ux = ((n << 1) ^ (n >> 63)) as u64;
    let key_len = key.len();
    let mut i = 0;
    loop {
        let byte = key
            .get_mut(i)
            .ok_or_else(|| format!("key of {key_len} bytes too short for key number {n}"))?;
        if ux < 0x80 {
            *byte = ux as u8;
            return Ok(());
        }
        *byte = (ux as u8) | 0x80;
        ux >>= 7;
        i += 1;
    }
}

pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; n];
    rand::rng().fill_bytes(&mut bytes);
    bytes
}

/// Parses a Go `time.ParseDuration` string such as `5m`, `1.5s`, `1h30m` or `0`.
pub fn parse_go_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total_s = 0.0;
    let mut rest = text;
    if rest.is_empty() {
        return Err(format!("invalid duration {text:?}"));
    }
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..number_len]
            .parse()
            .map_err(|_| format!("invalid duration {text:?}"))?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit_s = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => {
                return Err(format!(
                    "invalid duration {text:?}: missing or unknown unit"
                ))
            }
        };
        rest = &rest[unit_len..];
        total_s += number * unit_s;
    }
    Ok(Duration::from_secs_f64(total_s))
}

/// CPU time this process has used (user, system), from getrusage(2).
pub fn cpu_times() -> (Duration, Duration) {
    // Safety: getrusage only writes into the zeroed struct we own.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    (tv(usage.ru_utime), tv(usage.ru_stime))
}

/// Go-humanize style byte sizes (SI units), as etcd's `--check-hashkv` prints DB size.
pub fn humanize_bytes(n: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    if n < 10 {
        return format!("{n} B");
    }
    let e = ((n as f64).ln() / 1000f64.ln()).floor() as usize;
    let value = n as f64 / 1000f64.powi(e as i32);
    if value < 10.0 {
        format!("{value:.1} {}", UNITS[e])
    } else {
        format!("{value:.0} {}", UNITS[e])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_matches_go_put_varint() {
        // Go: binary.PutVarint(buf, 0) = [0]; 1 = [2]; -1 = [1]; 64 = [0x80 0x01]; 99999 = [0xbe 0x9a 0x0c].
        for (n, want) in [
            (0i64, vec![0u8]),
            (1, vec![2]),
            (-1, vec![1]),
            (64, vec![0x80, 0x01]),
            (99_999, vec![0xbe, 0x9a, 0x0c]),
        ] {
            let mut key = [0u8; 8];
            put_varint(&mut key, n).unwrap();
            assert_eq!(&key[..want.len()], &want[..], "n={n}");
        }
        assert!(put_varint(&mut [0u8; 1], 64).is_err());
    }

    #[test]
    fn go_durations_parse() {
        assert_eq!(parse_go_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(
            parse_go_duration("1h30m").unwrap(),
            Duration::from_secs(5400)
        );
        assert_eq!(
            parse_go_duration("1.5s").unwrap(),
            Duration::from_millis(1500)
        );
        assert_eq!(parse_go_duration("0").unwrap(), Duration::ZERO);
        assert!(parse_go_duration("5").is_err());
    }

    #[test]
    fn humanize_matches_go_humanize() {
        assert_eq!(humanize_bytes(25_000_000), "25 MB");
        assert_eq!(humanize_bytes(2_500), "2.5 kB");
    }
}
