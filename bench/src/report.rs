//! Latency reports in the layout of etcd's `pkg/report`: a Summary block (Total, Slowest,
//! Fastest, Average, Stddev, Requests/sec), a 10-bucket response-time histogram from
//! fastest to slowest, the latency distribution (10th to 99.9th percentile) and the error
//! distribution; plus JSON and CSV renderings for machines.
//!
//! A run keeps one `Recorder` per report, or one per worker where a command merges them
//! when the run ends (`merge`). Latencies go into an hdrhistogram (nanoseconds, 3 significant digits),
//! from which the histogram and the percentiles are read; count, mean and standard
//! deviation are kept exactly alongside (Welford's running moments), as are min and max.
//! `Total` is the wall time of the run and Requests/sec counts successful requests only,
//! as in etcd.

use std::collections::HashMap;
use std::time::Duration;

use hdrhistogram::Histogram;

/// Percentiles printed under "Latency distribution", as in etcd's `pkg/report`.
pub const PERCENTILES: [f64; 8] = [10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.9];
/// Buckets in the response-time histogram (plus one closing bucket at Slowest).
const HISTOGRAM_BUCKETS: usize = 10;
/// Width of the longest histogram bar, in characters.
const BAR_WIDTH_MAX: u64 = 40;
const BAR_CHAR: &str = "∎";
/// Longest latency the histogram tells apart (one hour); longer ones count as one hour.
const LATENCY_NS_MAX: u64 = 3_600_000_000_000;

/// Per-worker latency and error tally.
pub struct Recorder {
    histogram: Histogram<u64>,
    count: u64,
    mean_s: f64,
    m2_s: f64,
    fastest_ns: u64,
    slowest_ns: u64,
    errors: HashMap<String, u64>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            histogram: Histogram::new_with_bounds(1, LATENCY_NS_MAX, 3)
                .expect("static bounds are valid"),
            count: 0,
            mean_s: 0.0,
            m2_s: 0.0,
            fastest_ns: u64::MAX,
            slowest_ns: 0,
            errors: HashMap::new(),
        }
    }
}

impl Recorder {
    pub fn record(&mut self, latency: Duration) {
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX).max(1);
        self.histogram.saturating_record(ns);
        self.count += 1;
        let s = latency.as_secs_f64();
        let delta = s - self.mean_s;
        self.mean_s += delta / self.count as f64;
        self.m2_s += delta * (s - self.mean_s);
        self.fastest_ns = self.fastest_ns.min(ns);
        self.slowest_ns = self.slowest_ns.max(ns);
    }

    pub fn record_error(&mut self, error: String) {
        *self.errors.entry(error).or_insert(0) += 1;
    }

    pub fn record_result<T, E: std::fmt::Display>(
        &mut self,
        result: &Result<T, E>,
        latency: Duration,
    ) {
        match result {
            Ok(_) => self.record(latency),
            Err(e) => self.record_error(e.to_string()),
        }
    }

    /// Folds `other` in (Chan et al.'s pairwise update for the moments).
    pub fn merge(&mut self, other: Recorder) {
        if other.count > 0 {
            self.histogram
                .add(&other.histogram)
                .expect("histograms with equal bounds merge");
            let n = (self.count + other.count) as f64;
            let delta = other.mean_s - self.mean_s;
            self.mean_s += delta * other.count as f64 / n;
            self.m2_s += other.m2_s + delta * delta * self.count as f64 * other.count as f64 / n;
            self.count += other.count;
            self.fastest_ns = self.fastest_ns.min(other.fastest_ns);
            self.slowest_ns = self.slowest_ns.max(other.slowest_ns);
        }
        for (error, n) in other.errors {
            *self.errors.entry(error).or_insert(0) += n;
        }
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn errors_total(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// A finished run: the merged recorders and the wall time they took.
pub struct Report {
    pub name: String,
    pub total: Duration,
    pub rec: Recorder,
}

/// How numbers are printed: etcd's `%4.4f`, or `%g` with `--precise`.
#[derive(Clone, Copy)]
pub struct Precision {
    pub precise: bool,
}

impl Precision {
    fn f(&self, x: f64) -> String {
        if self.precise {
            format!("{x}")
        } else {
            format!("{x:.4}")
        }
    }
    fn secs(&self, x: f64) -> String {
        format!("{} secs", self.f(x))
    }
}

pub struct Stats {
    pub count: u64,
    pub errors: u64,
    pub total_s: f64,
    pub slowest_s: f64,
    pub fastest_s: f64,
    pub average_s: f64,
    pub stddev_s: f64,
    pub rps: f64,
    /// (bucket upper bound in seconds, count), HISTOGRAM_BUCKETS + 1 entries.
    pub histogram: Vec<(f64, u64)>,
    /// (percentile, seconds) for each of PERCENTILES.
    pub percentiles: Vec<(f64, f64)>,
}

impl Report {
    pub fn new(name: impl Into<String>, total: Duration, rec: Recorder) -> Report {
        Report {
            name: name.into(),
            total,
            rec,
        }
    }

    pub fn stats(&self) -> Stats {
        let rec = &self.rec;
        let total_s = self.total.as_secs_f64();
        let (fastest_s, slowest_s) = if rec.count > 0 {
            (rec.fastest_ns as f64 / 1e9, rec.slowest_ns as f64 / 1e9)
        } else {
            (0.0, 0.0)
        };
        let stddev_s = if rec.count > 0 {
            (rec.m2_s / rec.count as f64).sqrt()
        } else {
            0.0
        };
        // Bucket bounds as in etcd: Fastest + i * (Slowest - Fastest) / 10, then Slowest;
        // a latency goes to the first bucket whose bound it does not exceed.
        let step = (slowest_s - fastest_s) / HISTOGRAM_BUCKETS as f64;
        let mut histogram: Vec<(f64, u64)> = (0..HISTOGRAM_BUCKETS)
            .map(|i| (fastest_s + step * i as f64, 0))
            .chain(std::iter::once((slowest_s, 0)))
            .collect();
        if rec.count > 0 {
            for v in rec.histogram.iter_recorded() {
                // hdrhistogram stores a bin (0.1% wide); its lowest value, clamped into
                // [fastest, slowest], puts the fastest latency into the first bucket as
                // etcd's exact computation does.
                let s = (rec.histogram.lowest_equivalent(v.value_iterated_to()) as f64 / 1e9)
                    .clamp(fastest_s, slowest_s);
                let bucket = histogram
                    .iter()
                    .position(|(bound, _)| s <= *bound)
                    .unwrap_or(HISTOGRAM_BUCKETS);
                histogram[bucket].1 += v.count_at_value();
            }
        }
        let percentiles = PERCENTILES
            .iter()
            .map(|&p| {
                let s = if rec.count > 0 {
                    let ns = rec.histogram.value_at_quantile(p / 100.0);
                    (rec.histogram.median_equivalent(ns) as f64 / 1e9).clamp(fastest_s, slowest_s)
                } else {
                    0.0
                };
                (p, s)
            })
            .collect();
        Stats {
            count: rec.count,
            errors: rec.errors_total(),
            total_s,
            slowest_s,
            fastest_s,
            average_s: rec.mean_s,
            stddev_s,
            rps: if total_s > 0.0 {
                rec.count as f64 / total_s
            } else {
                0.0
            },
            histogram,
            percentiles,
        }
    }

    /// The text etcd's `report.String()` prints (leading newline included).
    pub fn text(&self, precision: Precision) -> String {
        let st = self.stats();
        let p = precision;
        let mut s = String::new();
        if st.count > 0 {
            s += "\nSummary:\n";
            s += &format!("  Total:\t{}.\n", p.secs(st.total_s));
            s += &format!("  Slowest:\t{}.\n", p.secs(st.slowest_s));
            s += &format!("  Fastest:\t{}.\n", p.secs(st.fastest_s));
            s += &format!("  Average:\t{}.\n", p.secs(st.average_s));
            s += &format!("  Stddev:\t{}.\n", p.secs(st.stddev_s));
            s += &format!("  Requests/sec:\t{}\n", p.f(st.rps));
            s += "\nResponse time histogram:\n";
            let max = st.histogram.iter().map(|(_, n)| *n).max().unwrap_or(0);
            for (bound, n) in &st.histogram {
                let bar_len = (n * BAR_WIDTH_MAX).checked_div(max).unwrap_or(0);
                s += &format!(
                    "  {} [{n}]\t|{}\n",
                    p.f(*bound),
                    BAR_CHAR.repeat(bar_len as usize)
                );
            }
            s += "\nLatency distribution:\n";
            for (pct, secs) in &st.percentiles {
                if *secs > 0.0 {
                    s += &format!("  {pct}% in {}.\n", p.secs(*secs));
                }
            }
        }
        if !self.rec.errors.is_empty() {
            s += "\nError distribution:\n";
            let mut errors: Vec<_> = self.rec.errors.iter().collect();
            errors.sort_by(|a, b| b.1.cmp(a.1));
            for (error, n) in errors {
                s += &format!("  [{n}]\t{error}\n");
            }
        }
        s
    }

    pub fn json(&self) -> serde_json::Value {
        let st = self.stats();
        let errors: serde_json::Map<String, serde_json::Value> = self
            .rec
            .errors
            .iter()
            .map(|(e, n)| (e.clone(), serde_json::Value::from(*n)))
            .collect();
        serde_json::json!({
            "name": self.name,
            "count": st.count,
            "errors_total": st.errors,
            "total_s": st.total_s,
            "slowest_s": st.slowest_s,
            "fastest_s": st.fastest_s,
            "average_s": st.average_s,
            "stddev_s": st.stddev_s,
            "requests_per_s": st.rps,
            "histogram": st.histogram.iter().map(|(b, n)| serde_json::json!({"le_s": b, "count": n})).collect::<Vec<_>>(),
            "percentiles_s": st.percentiles.iter().map(|(p, s)| (format!("p{p}"), serde_json::Value::from(*s))).collect::<serde_json::Map<_, _>>(),
            "errors": errors,
        })
    }

    pub fn csv_header() -> String {
        let mut h = String::from(
            "name,count,errors,total_s,slowest_s,fastest_s,average_s,stddev_s,requests_per_s",
        );
        for p in PERCENTILES {
            h += &format!(",p{p}_s");
        }
        h
    }

    pub fn csv_row(&self) -> String {
        let st = self.stats();
        let mut row = format!(
            "{},{},{},{},{},{},{},{},{}",
            self.name,
            st.count,
            st.errors,
            st.total_s,
            st.slowest_s,
            st.fastest_s,
            st.average_s,
            st.stddev_s,
            st.rps
        );
        for (_, s) in &st.percentiles {
            row += &format!(",{s}");
        }
        row
    }
}

#[cfg(test)]
mod tests {
    //! Checks the report's figures against values computed by hand from known latencies.
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn summary_figures_match_hand_computed_ones() {
        // 1..=100 ms split over two recorders, merged.
        let (mut a, mut b) = (Recorder::default(), Recorder::default());
        for n in 1..=100 {
            if n % 2 == 0 {
                a.record(ms(n))
            } else {
                b.record(ms(n))
            }
        }
        a.record_error("boom".to_string());
        a.merge(b);
        let st = Report::new("t", Duration::from_secs(2), a).stats();
        assert_eq!(st.count, 100);
        assert_eq!(st.errors, 1);
        assert!((st.average_s - 0.0505).abs() < 1e-9);
        // Population stddev of 1..=100 is sqrt((100^2 - 1) / 12) = 28.866 ms.
        assert!((st.stddev_s - 0.028_866).abs() < 1e-5, "{}", st.stddev_s);
        assert!((st.fastest_s - 0.001).abs() < 1e-9 && (st.slowest_s - 0.100).abs() < 1e-9);
        assert!((st.rps - 50.0).abs() < 1e-9);
        // Percentiles within hdrhistogram's 3 significant digits.
        let p50 = st.percentiles.iter().find(|(p, _)| *p == 50.0).unwrap().1;
        let p99 = st.percentiles.iter().find(|(p, _)| *p == 99.0).unwrap().1;
        assert!((p50 - 0.050).abs() < 0.0001, "{p50}");
        assert!((p99 - 0.099).abs() < 0.0001, "{p99}");
        // Every success lands in exactly one of the 11 buckets.
        assert_eq!(st.histogram.len(), HISTOGRAM_BUCKETS + 1);
        assert_eq!(st.histogram.iter().map(|(_, n)| n).sum::<u64>(), 100);
        assert_eq!(
            st.histogram[0].1, 1,
            "only the fastest is <= the first bound"
        );
    }

    #[test]
    fn text_has_etcds_layout() {
        let mut rec = Recorder::default();
        rec.record(ms(5));
        rec.record_error("rpc error: code = Unavailable desc = x".to_string());
        let text = Report::new("t", Duration::from_secs(1), rec).text(Precision { precise: false });
        for line in [
            "\nSummary:\n",
            "  Total:\t1.0000 secs.\n",
            "  Requests/sec:\t1.0000\n",
            "\nResponse time histogram:\n",
            "\nLatency distribution:\n  10% in 0.0050 secs.\n",
            "  99.9% in 0.0050 secs.\n",
            "\nError distribution:\n  [1]\trpc error: code = Unavailable desc = x\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in {text}");
        }
    }

    #[test]
    fn empty_report_prints_nothing() {
        let text = Report::new("t", Duration::from_secs(1), Recorder::default())
            .text(Precision { precise: true });
        assert_eq!(text, "");
    }
}
