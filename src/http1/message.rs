//! What a handler sees of an HTTP/1.1 exchange, and the encoding of a response head.
//!
//! Invariants:
//! - A response always carries its length (`Content-Length`) or is chunked, so a
//!   keep-alive connection can find the next response: there is no close-delimited body.
//! - Header names a handler sets are written in ascending order (as Go's net/http writes
//!   them, so that responses compare line for line with etcd's), then `Date` and
//!   `Content-Length`, which only the connection writes.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::time::SystemTime;

use bytes::Bytes;

/// The service layer's entry point: called once per request, on the connection's executor.
pub type Handler = Rc<dyn Fn(Request) -> Pin<Box<dyn Future<Output = Response>>>>;

/// One request, its body already read whole (bounded by `Http1Config::body_bytes_max`).
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// The request target as sent, e.g. "/health?serializable=true".
    pub target: String,
    /// Header names lowercased; values as sent.
    pub headers: Vec<(String, Bytes)>,
    pub body: Bytes,
}

impl Request {
    /// The target without its query string.
    pub fn path(&self) -> &str {
        self.target.split_once('?').map_or(&self.target, |(p, _)| p)
    }

    /// The raw query string (after '?'), or "".
    pub fn query(&self) -> &str {
        self.target.split_once('?').map_or("", |(_, q)| q)
    }

    /// Every value of query parameter `name`, percent-decoded, in order (as Go's
    /// `url.Query()[name]`).
    pub fn query_values(&self, name: &str) -> Vec<String> {
        self.query()
            .split('&')
            .filter(|pair| !pair.is_empty())
            .filter_map(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                (percent_decode(key) == name).then(|| percent_decode(value))
            })
            .collect()
    }

    /// The first value of query parameter `name` ("" if absent), as Go's `Query().Get`.
    pub fn query_value(&self, name: &str) -> String {
        self.query_values(name)
            .into_iter()
            .next()
            .unwrap_or_default()
    }

    /// Whether the query names `name` at all, with or without a value.
    pub fn has_query(&self, name: &str) -> bool {
        self.query()
            .split('&')
            .any(|pair| percent_decode(pair.split_once('=').map_or(pair, |(k, _)| k)) == name)
    }

    pub fn header(&self, name: &str) -> Option<&Bytes> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, value)| value)
    }
}

/// Decodes `%XX` escapes and `+` (as a space, the form-encoding rule Go's query parser
/// applies); an invalid escape is kept as written.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Pieces of a response body produced while it is sent (a watch); the response ends when
/// the stream does, or when the client goes away (the stream is then dropped).
pub type BodyStream = std::pin::Pin<Box<dyn futures::Stream<Item = Bytes>>>;

/// A response: a whole body, or (`stream`) one sent with chunked transfer coding.
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    pub stream: Option<BodyStream>,
    /// The connection closes after this response (`Connection: close`), whatever the
    /// request asked: Go's ServeMux asks it of its answer to a `*` target.
    pub close: bool,
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Response")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .field("body", &self.body)
            .field("streams", &self.stream.is_some())
            .finish()
    }
}

impl Response {
    pub fn new(status: u16, content_type: &str, body: impl Into<Bytes>) -> Response {
        Response {
            status,
            headers: vec![("Content-Type".into(), content_type.into())],
            body: body.into(),
            stream: None,
            close: false,
        }
    }

    /// A 200 response whose body `stream` produces, sent chunked (RFC 9112 §7.1).
    pub fn streaming(content_type: &str, stream: BodyStream) -> Response {
        let mut response = Response::new(200, content_type, Bytes::new());
        response.stream = Some(stream);
        response
    }

    /// What Go's `http.Error` writes: the text and a newline, as plain text that browsers
    /// must not sniff.
    pub fn error(status: u16, text: &str) -> Response {
        let mut response = Response::new(status, "text/plain; charset=utf-8", format!("{text}\n"));
        response.set_header("X-Content-Type-Options", "nosniff");
        response
    }

    /// A response with no body and no content type (Go's bare `WriteHeader`).
    pub fn bare(status: u16) -> Response {
        let mut response = Response::new(status, "", Bytes::new());
        response.headers.clear();
        response
    }

    pub fn set_header(&mut self, name: &str, value: &str) {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self.headers.push((name.into(), value.into()));
    }

    /// Appends the status line and headers; `close` adds `Connection: close`.
    /// `with_body` is false for HEAD, whose length is still announced.
    pub fn encode_head(&self, out: &mut Vec<u8>, now: SystemTime, close: bool) {
        out.extend_from_slice(
            format!("HTTP/1.1 {} {}\r\n", self.status, reason(self.status)).as_bytes(),
        );
        let mut headers: Vec<&(String, String)> = self.headers.iter().collect();
        headers.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, value) in headers {
            // A handler's header never carries a line break into the response.
            let clean = |s: &str| s.replace(['\r', '\n'], " ");
            out.extend_from_slice(format!("{}: {}\r\n", clean(name), clean(value)).as_bytes());
        }
        if close {
            out.extend_from_slice(b"Connection: close\r\n");
        }
        out.extend_from_slice(format!("Date: {}\r\n", http_date(now)).as_bytes());
        if self.stream.is_some() {
            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
        } else if has_body(self.status) {
            out.extend_from_slice(format!("Content-Length: {}\r\n", self.body.len()).as_bytes());
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// 1xx, 204 and 304 responses carry no body and no length (RFC 9112 §6.3).
pub fn has_body(status: u16) -> bool {
    !(100..200).contains(&status) && status != 204 && status != 304
}

/// The reason phrases Go's net/http writes for the statuses this server sends.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Request Entity Too Large",
        417 => "Expectation Failed",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

/// IMF-fixdate (RFC 9110 §5.6.7), e.g. "Wed, 02 Dec 2026 23:17:34 GMT".
pub fn http_date(now: SystemTime) -> String {
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = (secs / 86_400) as i64;
    let (hour, minute, second) = (secs % 86_400 / 3600, secs % 3600 / 60, secs % 60);
    // 1970-01-01 was a Thursday.
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (year, month, day) = civil_from_days(days);
    format!(
        "{}, {day:02} {} {year} {hour:02}:{minute:02}:{second:02} GMT",
        WEEKDAYS[days.rem_euclid(7) as usize],
        MONTHS[(month - 1) as usize]
    )
}

/// Days since 1970-01-01 to (year, month 1-12, day 1-31) in the proleptic Gregorian
/// calendar (the "days from civil" inverse from Howard Hinnant's date algorithms).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_imf_fixdate() {
        let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_796_253_454);
        assert_eq!(http_date(at), "Wed, 02 Dec 2026 23:17:34 GMT");
        assert_eq!(
            http_date(SystemTime::UNIX_EPOCH),
            "Thu, 01 Jan 1970 00:00:00 GMT"
        );
        let leap = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(951_782_400);
        assert_eq!(http_date(leap), "Tue, 29 Feb 2000 00:00:00 GMT");
    }

    #[test]
    fn parses_queries_as_go_does() {
        let request = Request {
            method: "GET".into(),
            target: "/readyz?verbose&exclude=a&exclude=b%20c&x=1+2".into(),
            headers: vec![],
            body: Bytes::new(),
        };
        assert_eq!(request.path(), "/readyz");
        assert_eq!(request.query_values("exclude"), vec!["a", "b c"]);
        assert_eq!(request.query_value("x"), "1 2");
        assert!(request.has_query("verbose"));
        assert!(!request.has_query("serializable"));
        assert_eq!(request.query_value("verbose"), "");
    }
}
