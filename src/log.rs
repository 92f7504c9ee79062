//! Structured logging in the two shapes etcd prints, so that tools and people who read
//! etcd's logs can read tern's:
//!
//! - `zap` (etcd 3.5's default, `--logger=zap`): one JSON object per line,
//!   `{"level":"info","ts":"2026-11-21T17:54:00.123Z","caller":"config/mod.rs:100","msg":"...",...fields}`;
//!   `ts` is local time with millisecond precision and a zone suffix (`Z` or `+0100`), as
//!   zap's ISO8601 encoder writes it; `caller` is tern's `module/file.rs:line`.
//! - `capnslog` (etcd 3.4's default, `--logger=capnslog`): text,
//!   `2026-11-21 17:54:00.123456 I | config: msg, key=value`.
//!
//! Invariants: a record whose level is below `--log-level` costs one relaxed atomic load
//! (the macros check [`enabled`] before building any field); a record is formatted into
//! one buffer and handed to each output with a single `write_all`, so concurrent records
//! never interleave within a line and no lock is held by tern itself. Until [`init`] runs,
//! records go to stderr as zap JSON at level info (etcd also logs flag parsing with a
//! default zap logger before the configured one exists).

use std::fmt::Write as _;
use std::fs::File;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Severity, ordered from least to most severe (zap's levels, which etcd's `--log-level`
/// names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Debug = 0,
    Info = 1,
    Warn = 2,
    Error = 3,
    /// Logs, then panics (zap `Panic`).
    Panic = 4,
    /// Logs, then exits with status 1 (zap `Fatal`).
    Fatal = 5,
}

impl Level {
    /// Parses a `--log-level` value. etcd accepts exactly these lower-case names.
    pub fn parse(text: &str) -> Option<Level> {
        Some(match text {
            "debug" => Level::Debug,
            "info" => Level::Info,
            "warn" => Level::Warn,
            "error" => Level::Error,
            "panic" => Level::Panic,
            "fatal" => Level::Fatal,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
            Level::Panic => "panic",
            Level::Fatal => "fatal",
        }
    }

    /// capnslog's one-letter severity (panic and fatal are CRITICAL there).
    fn capnslog_letter(self) -> char {
        match self {
            Level::Debug => 'D',
            Level::Info => 'I',
            Level::Warn => 'W',
            Level::Error => 'E',
            Level::Panic | Level::Fatal => 'C',
        }
    }

    fn from_u8(raw: u8) -> Level {
        match raw {
            0 => Level::Debug,
            1 => Level::Info,
            2 => Level::Warn,
            3 => Level::Error,
            4 => Level::Panic,
            _ => Level::Fatal,
        }
    }
}

/// The `--logger` choice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoggerKind {
    Zap,
    Capnslog,
}

/// One `--log-outputs` target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogOutput {
    /// `stderr`, and also `default` (etcd's `default` is stderr unless under journald).
    Stderr,
    Stdout,
    /// Any other value: a file path, appended to.
    File(PathBuf),
}

impl LogOutput {
    pub fn parse(text: &str) -> LogOutput {
        match text {
            "stderr" | "default" => LogOutput::Stderr,
            "stdout" => LogOutput::Stdout,
            path => LogOutput::File(PathBuf::from(path)),
        }
    }
}

/// What `--logger`, `--log-level` and `--log-outputs` select.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogConfig {
    pub logger: LoggerKind,
    pub level: Level,
    pub outputs: Vec<LogOutput>,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            logger: LoggerKind::Zap,
            level: Level::Info,
            outputs: vec![LogOutput::Stderr],
        }
    }
}

/// A field value. Strings are JSON-escaped; durations print as Go's `time.Duration`
/// does (`100ms`, `1m30s`), as zap's string duration encoder does in etcd.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Str(String),
    Int(i64),
    Uint(u64),
    Float(f64),
    Bool(bool),
    Strs(Vec<String>),
    Duration(Duration),
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Str(v.to_owned())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Str(v)
    }
}
impl From<&String> for Value {
    fn from(v: &String) -> Self {
        Value::Str(v.clone())
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}
impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Float(v)
    }
}
impl From<Duration> for Value {
    fn from(v: Duration) -> Self {
        Value::Duration(v)
    }
}
impl From<Vec<String>> for Value {
    fn from(v: Vec<String>) -> Self {
        Value::Strs(v)
    }
}
impl From<&[String]> for Value {
    fn from(v: &[String]) -> Self {
        Value::Strs(v.to_vec())
    }
}
impl From<std::net::SocketAddr> for Value {
    fn from(v: std::net::SocketAddr) -> Self {
        Value::Str(v.to_string())
    }
}
impl From<&std::path::Path> for Value {
    fn from(v: &std::path::Path) -> Self {
        Value::Str(v.display().to_string())
    }
}
macro_rules! value_from_int {
    ($variant:ident, $wide:ty, $($t:ty),*) => {$(
        impl From<$t> for Value {
            fn from(v: $t) -> Self {
                Value::$variant(v as $wide)
            }
        }
    )*};
}
value_from_int!(Int, i64, i8, i16, i32, i64, isize);
value_from_int!(Uint, u64, u8, u16, u32, u64, usize);

/// A field: key and value.
pub type Field<'a> = (&'a str, Value);

struct Sink {
    logger: LoggerKind,
    outputs: Vec<OpenOutput>,
}

enum OpenOutput {
    Stderr,
    Stdout,
    File(File),
}

/// The minimum level that is written; `Level as u8`. Info until [`init`] says otherwise.
static LEVEL_MIN: AtomicU8 = AtomicU8::new(Level::Info as u8);
static SINK: OnceLock<Sink> = OnceLock::new();

/// Installs the configured logger. Only the first call takes effect (the logger is fixed
/// for the process's lifetime, so hot paths read it without synchronisation beyond the
/// `OnceLock`); later calls return an error naming the reason. Opens file outputs for
/// append, creating them.
pub fn init(config: &LogConfig) -> std::io::Result<()> {
    let mut outputs = Vec::with_capacity(config.outputs.len());
    for output in &config.outputs {
        outputs.push(match output {
            LogOutput::Stderr => OpenOutput::Stderr,
            LogOutput::Stdout => OpenOutput::Stdout,
            LogOutput::File(path) => OpenOutput::File(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
        });
    }
    SINK.set(Sink {
        logger: config.logger,
        outputs,
    })
    .map_err(|_| std::io::Error::other("logger already initialised"))?;
    LEVEL_MIN.store(config.level as u8, Ordering::Relaxed);
    Ok(())
}

/// Whether a record at `level` would be written. Panic and fatal records are always
/// acted upon (the panic or exit happens even when the line is filtered out).
#[inline]
pub fn enabled(level: Level) -> bool {
    level as u8 >= LEVEL_MIN.load(Ordering::Relaxed)
}

/// The current minimum level.
pub fn level() -> Level {
    Level::from_u8(LEVEL_MIN.load(Ordering::Relaxed))
}

/// Writes one record if `level` is enabled. `caller` is `file!():line!()` of the call
/// site (the macros pass it); the leading `src/` is dropped. Panics after logging at
/// [`Level::Panic`]; exits the process with status 1 after logging at [`Level::Fatal`].
pub fn log(level: Level, caller: &str, msg: &str, fields: &[Field<'_>]) {
    if enabled(level) {
        let kind = SINK.get().map_or(LoggerKind::Zap, |sink| sink.logger);
        let line = format_record(kind, level, SystemTime::now(), caller, msg, fields);
        write_line(line.as_bytes());
    }
    match level {
        Level::Panic => panic!("{msg}"),
        Level::Fatal => std::process::exit(1),
        _ => {}
    }
}

fn write_line(line: &[u8]) {
    // Errors writing a log line have nowhere better to go; they are dropped, as zap does.
    match SINK.get() {
        None => {
            let _ = std::io::stderr().write_all(line);
        }
        Some(sink) => {
            for output in &sink.outputs {
                let _ = match output {
                    OpenOutput::Stderr => std::io::stderr().write_all(line),
                    OpenOutput::Stdout => std::io::stdout().write_all(line),
                    // `&File` is `Write`: an O_APPEND write with no lock of ours.
                    OpenOutput::File(file) => (&*file).write_all(line),
                };
            }
        }
    }
}

/// Formats one record, newline included.
pub fn format_record(
    kind: LoggerKind,
    level: Level,
    at: SystemTime,
    caller: &str,
    msg: &str,
    fields: &[Field<'_>],
) -> String {
    let caller = caller.strip_prefix("src/").unwrap_or(caller);
    let mut line = String::with_capacity(128 + msg.len() + 32 * fields.len());
    match kind {
        LoggerKind::Zap => {
            line.push_str("{\"level\":\"");
            line.push_str(level.as_str());
            line.push_str("\",\"ts\":\"");
            push_timestamp(&mut line, at, TimestampShape::Iso8601Millis);
            line.push_str("\",\"caller\":");
            push_json_string(&mut line, caller);
            line.push_str(",\"msg\":");
            push_json_string(&mut line, msg);
            for (key, value) in fields {
                line.push(',');
                push_json_string(&mut line, key);
                line.push(':');
                push_json_value(&mut line, value);
            }
            line.push_str("}\n");
        }
        LoggerKind::Capnslog => {
            push_timestamp(&mut line, at, TimestampShape::SpaceMicros);
            line.push(' ');
            line.push(level.capnslog_letter());
            line.push_str(" | ");
            line.push_str(capnslog_package(caller));
            line.push_str(": ");
            line.push_str(msg);
            for (i, (key, value)) in fields.iter().enumerate() {
                line.push_str(if i == 0 { ", " } else { " " });
                line.push_str(key);
                line.push('=');
                push_text_value(&mut line, value);
            }
            line.push('\n');
        }
    }
    line
}

/// capnslog names the package: `membership/id.rs:10` → `membership`, `log.rs:3` → `log`.
fn capnslog_package(caller: &str) -> &str {
    let path = caller.split(':').next().unwrap_or(caller);
    match path.rsplit_once('/') {
        Some((dir, _)) => dir,
        None => path.strip_suffix(".rs").unwrap_or(path),
    }
}

/// Appends `text` as a JSON string literal (RFC 8259 §7): quotes, backslashes and control
/// characters escaped; everything else, including non-ASCII, written as UTF-8.
pub fn push_json_string(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn push_json_value(out: &mut String, value: &Value) {
    match value {
        Value::Str(s) => push_json_string(out, s),
        Value::Int(v) => {
            let _ = write!(out, "{v}");
        }
        Value::Uint(v) => {
            let _ = write!(out, "{v}");
        }
        // JSON has no NaN or infinities; zap writes them as strings.
        Value::Float(v) if v.is_finite() => {
            let _ = write!(out, "{v}");
        }
        Value::Float(v) => push_json_string(out, &format!("{v}")),
        Value::Bool(v) => out.push_str(if *v { "true" } else { "false" }),
        Value::Strs(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                push_json_string(out, item);
            }
            out.push(']');
        }
        Value::Duration(d) => push_json_string(out, &format_duration(*d)),
    }
}

fn push_text_value(out: &mut String, value: &Value) {
    match value {
        Value::Str(s) => out.push_str(s),
        Value::Strs(items) => {
            out.push('[');
            out.push_str(&items.join(","));
            out.push(']');
        }
        Value::Duration(d) => out.push_str(&format_duration(*d)),
        other => push_json_value(out, other),
    }
}

/// Go `time.Duration.String`: `0s`, `1.5µs`, `100ms`, `1s`, `1m30s`, `2h0m0s`.
pub fn format_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns == 0 {
        return "0s".to_owned();
    }
    if ns < 1_000_000_000 {
        // Sub-second: a single unit with a fraction, trailing zeros trimmed.
        let (unit, per) = if ns < 1_000 {
            ("ns", 1)
        } else if ns < 1_000_000 {
            ("µs", 1_000)
        } else {
            ("ms", 1_000_000)
        };
        return format!("{}{unit}", decimal(ns, per));
    }
    let hours = ns / 3_600_000_000_000;
    let minutes = (ns / 60_000_000_000) % 60;
    let seconds_ns = ns % 60_000_000_000;
    let seconds = decimal(seconds_ns, 1_000_000_000);
    if hours > 0 {
        format!("{hours}h{minutes}m{seconds}s")
    } else if minutes > 0 {
        format!("{minutes}m{seconds}s")
    } else {
        format!("{seconds}s")
    }
}

fn decimal(value: u128, per: u128) -> String {
    let whole = value / per;
    let fraction = value % per;
    if fraction == 0 {
        return whole.to_string();
    }
    let width = per.to_string().len() - 1;
    let digits = format!("{fraction:0width$}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

enum TimestampShape {
    /// zap ISO8601: `2006-01-02T15:04:05.000Z0700` (`Z` when the offset is zero).
    Iso8601Millis,
    /// capnslog: `2006-01-02 15:04:05.000000`.
    SpaceMicros,
}

fn push_timestamp(out: &mut String, at: SystemTime, shape: TimestampShape) {
    let since_epoch = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let unix_secs = since_epoch.as_secs() as i64;
    let offset_secs = local_utc_offset_secs(unix_secs);
    let local_secs = unix_secs + offset_secs;
    let (year, month, day) = civil_from_days(local_secs.div_euclid(86_400));
    let second_of_day = local_secs.rem_euclid(86_400);
    let (hour, minute, second) = (
        second_of_day / 3600,
        (second_of_day / 60) % 60,
        second_of_day % 60,
    );
    let _ = match shape {
        TimestampShape::Iso8601Millis => write!(
            out,
            "{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{:03}",
            since_epoch.subsec_millis()
        ),
        TimestampShape::SpaceMicros => write!(
            out,
            "{year:04}-{month:02}-{day:02} {hour:02}:{minute:02}:{second:02}.{:06}",
            since_epoch.subsec_micros()
        ),
    };
    if let TimestampShape::Iso8601Millis = shape {
        if offset_secs == 0 {
            out.push('Z');
        } else {
            let sign = if offset_secs < 0 { '-' } else { '+' };
            let abs = offset_secs.abs();
            let _ = write!(out, "{sign}{:02}{:02}", abs / 3600, (abs / 60) % 60);
        }
    }
}

/// The local zone's offset from UTC at `unix_secs`, from the C library (which honours TZ).
fn local_utc_offset_secs(unix_secs: i64) -> i64 {
    let t = unix_secs as libc::time_t;
    // Safety: `tm` is plain data that localtime_r fully initialises on success; both
    // pointers are valid for the call and localtime_r keeps neither.
    unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&t, &mut tm).is_null() {
            0
        } else {
            tm.tm_gmtoff as i64
        }
    }
}

/// Days since 1970-01-01 → (year, month 1..=12, day 1..=31), proleptic Gregorian
/// (H. Hinnant, "chrono-Compatible Low-Level Date Algorithms", `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Logs at a level with `key => value` fields; fields are only evaluated when the level
/// is enabled. `tern::log_at!(tern::log::Level::Info, "msg", "key" => value)`.
#[macro_export]
macro_rules! log_at {
    ($level:expr, $msg:expr $(, $key:expr => $value:expr)* $(,)?) => {{
        let level = $level;
        if $crate::log::enabled(level)
            || matches!(level, $crate::log::Level::Panic | $crate::log::Level::Fatal)
        {
            $crate::log::log(
                level,
                concat!(file!(), ":", line!()),
                &$msg,
                &[$(($key, $crate::log::Value::from($value))),*],
            );
        }
    }};
}

/// `tern::debug!("msg", "key" => value, ...)`
#[macro_export]
macro_rules! debug {
    ($($t:tt)*) => { $crate::log_at!($crate::log::Level::Debug, $($t)*) };
}
/// `tern::info!("msg", "key" => value, ...)`
#[macro_export]
macro_rules! info {
    ($($t:tt)*) => { $crate::log_at!($crate::log::Level::Info, $($t)*) };
}
/// `tern::warn!("msg", "key" => value, ...)`
#[macro_export]
macro_rules! warn {
    ($($t:tt)*) => { $crate::log_at!($crate::log::Level::Warn, $($t)*) };
}
/// `tern::error!("msg", "key" => value, ...)`
#[macro_export]
macro_rules! error {
    ($($t:tt)*) => { $crate::log_at!($crate::log::Level::Error, $($t)*) };
}
/// Logs at fatal level, then exits with status 1.
#[macro_export]
macro_rules! fatal {
    ($($t:tt)*) => {{ $crate::log_at!($crate::log::Level::Fatal, $($t)*); unreachable!() }};
}

#[cfg(test)]
mod tests {
    //! Checks the JSON and capnslog line shapes byte for byte at a fixed time, JSON
    //! escaping of hostile strings, and level filtering.
    use super::*;

    fn fixed_time() -> SystemTime {
        // 2026-11-21T17:54:00.123456Z
        UNIX_EPOCH + Duration::from_micros(1_795_283_640_123_456)
    }

    #[test]
    fn json_escaping() {
        let mut out = String::new();
        push_json_string(&mut out, "a\"b\\c\nd\re\tf\u{1}g\u{7f}h é ✓");
        assert_eq!(out, r#""a\"b\\c\nd\re\tf\u0001g\u007fh é ✓""#);
    }

    #[test]
    fn zap_line_shape() {
        std::env::set_var("TZ", "UTC");
        let line = format_record(
            LoggerKind::Zap,
            Level::Warn,
            fixed_time(),
            "src/config/mod.rs:12",
            "bad \"thing\"",
            &[
                ("path", "/tmp/x\n".into()),
                ("count", 3u32.into()),
                ("delta", (-4i64).into()),
                ("ok", true.into()),
                ("took", Duration::from_millis(1500).into()),
                (
                    "urls",
                    vec!["http://a:1".to_owned(), "http://b:2".to_owned()].into(),
                ),
            ],
        );
        assert_eq!(
            line,
            "{\"level\":\"warn\",\"ts\":\"2026-11-21T17:54:00.123Z\",\"caller\":\"config/mod.rs:12\",\
             \"msg\":\"bad \\\"thing\\\"\",\"path\":\"/tmp/x\\n\",\"count\":3,\"delta\":-4,\"ok\":true,\
             \"took\":\"1.5s\",\"urls\":[\"http://a:1\",\"http://b:2\"]}\n"
        );
    }

    #[test]
    fn capnslog_line_shape() {
        std::env::set_var("TZ", "UTC");
        let line = format_record(
            LoggerKind::Capnslog,
            Level::Info,
            fixed_time(),
            "src/membership/id.rs:3",
            "ready to serve client requests",
            &[("address", "127.0.0.1:2379".into())],
        );
        assert_eq!(
            line,
            "2026-11-21 17:54:00.123456 I | membership: ready to serve client requests, address=127.0.0.1:2379\n"
        );
    }

    #[test]
    fn level_filter_and_parse() {
        assert_eq!(Level::parse("warn"), Some(Level::Warn));
        assert_eq!(Level::parse("WARN"), None);
        assert_eq!(Level::parse("critical"), None);
        let before = level();
        LEVEL_MIN.store(Level::Warn as u8, Ordering::Relaxed);
        assert!(!enabled(Level::Debug));
        assert!(!enabled(Level::Info));
        assert!(enabled(Level::Warn));
        assert!(enabled(Level::Error));
        assert!(enabled(Level::Fatal));
        // Fields of a filtered record are never evaluated.
        let mut evaluated = false;
        crate::info!("filtered", "k" => { evaluated = true; 1u32 });
        assert!(!evaluated);
        LEVEL_MIN.store(before as u8, Ordering::Relaxed);
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn durations_are_written_as_go_does() {
        assert_eq!(format_duration(Duration::from_millis(100)), "100ms");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(format_duration(Duration::from_secs(7200)), "2h0m0s");
        assert_eq!(format_duration(Duration::ZERO), "0s");
        assert_eq!(format_duration(Duration::from_nanos(1500)), "1.5µs");
    }
}
