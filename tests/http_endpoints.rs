//! HTTP/1.1 on the client port: spawns tern (and, side by side, a real etcd 3.4) on free
//! loopback ports and checks, over raw sockets and with curl, that plain HTTP and gRPC
//! share one port; that keep-alive, pipelining, chunked bodies and `Expect: 100-continue`
//! work; that malformed or slow requests get 400/413/431 or a closed connection while
//! etcdctl keeps working on the same port; that `/health`, `/version` and unknown paths
//! answer exactly as etcd's do; that `/livez` and `/readyz` answer as etcd 3.4.29's; that
//! `--listen-metrics-urls` serves only metrics and health; and that the health endpoints
//! flip as etcd's do with no leader (a 3-member cluster with 2 killed), with a CORRUPT alarm,
//! and with the NOSPACE alarm a real quota fill raises (side by side with etcd 3.4).

mod common;
mod http_support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{free_port, TernServer};

/// How long a test waits for any one answer before failing.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// One parsed response.
#[derive(Debug, Clone, PartialEq)]
struct Answer {
    status: u16,
    /// Lowercased names, in the order sent, `date` left out (it changes).
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Headers as a sorted set, for comparing with etcd (Go orders some of them by when
    /// the handler set them).
    fn header_set(&self) -> Vec<(String, String)> {
        let mut set = self.headers.clone();
        set.sort();
        set
    }
}

fn connect(port: u16) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(ANSWER_TIMEOUT)).unwrap();
    stream
}

/// Reads one response (Content-Length or chunked body) from `stream`, keeping what follows
/// it in `pending`.
fn read_answer(stream: &mut TcpStream, pending: &mut Vec<u8>) -> Option<Answer> {
    let head_end = loop {
        if let Some(at) = find(pending, b"\r\n\r\n") {
            break at;
        }
        if !fill(stream, pending) {
            return None;
        }
    };
    let head = String::from_utf8(pending[..head_end].to_vec()).unwrap();
    pending.drain(..head_end + 4);
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.trim().to_ascii_lowercase(), v.trim().to_string())
        })
        .filter(|(n, _)| n != "date")
        .collect();
    let answer = |body: Vec<u8>| Answer {
        status,
        headers: headers.clone(),
        body: String::from_utf8(body).unwrap(),
    };
    if let Some((_, len)) = headers.iter().find(|(n, _)| n == "content-length") {
        let len: usize = len.parse().unwrap();
        while pending.len() < len {
            assert!(fill(stream, pending), "body cut short");
        }
        let body = pending.drain(..len).collect();
        return Some(answer(body));
    }
    if headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v == "chunked")
    {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(at) = find(pending, b"\r\n") {
                    break at;
                }
                assert!(fill(stream, pending), "chunk cut short");
            };
            let size = usize::from_str_radix(
                std::str::from_utf8(&pending[..line_end]).unwrap().trim(),
                16,
            )
            .unwrap();
            pending.drain(..line_end + 2);
            while pending.len() < size + 2 {
                assert!(fill(stream, pending), "chunk cut short");
            }
            body.extend(pending.drain(..size));
            pending.drain(..2);
            if size == 0 {
                return Some(answer(body));
            }
        }
    }
    // 1xx and friends: no body.
    Some(answer(Vec::new()))
}

fn fill(stream: &mut TcpStream, pending: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 16384];
    match stream.read(&mut chunk) {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            pending.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Sends `raw` on a fresh connection and reads one answer.
fn exchange(port: u16, raw: &[u8]) -> Option<Answer> {
    let mut stream = connect(port);
    stream.write_all(raw).unwrap();
    read_answer(&mut stream, &mut Vec::new())
}

fn get(port: u16, target: &str) -> Answer {
    exchange(
        port,
        format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: test\r\n\r\n").as_bytes(),
    )
    .expect("no answer")
}

/// Whether the server closes `stream` (without a response) within the answer timeout.
fn closed_without_answer(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    matches!(stream.read(&mut buf), Ok(0))
}

fn etcdctl_put_get(server: &TernServer, key: &str) {
    let put = server.etcdctl(&["put", key, "v"]);
    assert!(put.status.success(), "{}", common::stderr(&put));
    let got = server.etcdctl(&["get", key, "--print-value-only"]);
    assert_eq!(common::stdout(&got).trim(), "v");
}

#[test]
fn one_port_serves_grpc_and_http1_with_keepalive_pipelining_chunked_and_continue() {
    let server = TernServer::start();
    let port = server.client_port;
    etcdctl_put_get(&server, "before");

    // Keep-alive: two requests, one connection.
    let mut stream = connect(port);
    let mut pending = Vec::new();
    for _ in 0..2 {
        stream
            .write_all(b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let answer = read_answer(&mut stream, &mut pending).unwrap();
        assert_eq!(answer.status, 200);
        assert_eq!(
            answer.body,
            r#"{"etcdserver":"3.4.23","etcdcluster":"3.4.0"}"#
        );
    }

    // Pipelining: three requests in one write, answers in order.
    stream
        .write_all(
            b"GET /version HTTP/1.1\r\nHost: x\r\n\r\nGET /nope HTTP/1.1\r\nHost: x\r\n\r\nGET /health HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        .unwrap();
    let statuses: Vec<u16> = (0..3)
        .map(|_| read_answer(&mut stream, &mut pending).unwrap().status)
        .collect();
    assert_eq!(statuses, vec![200, 404, 200]);

    // A chunked body is read whole (split across writes), then the request is answered.
    stream
        .write_all(
            b"PUT /version HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(50));
    stream.write_all(b"lo\r\n0\r\n\r\n").unwrap();
    let answer = read_answer(&mut stream, &mut pending).unwrap();
    assert_eq!(answer.status, 405);
    assert_eq!(answer.header("allow"), Some("GET"));
    assert_eq!(answer.body, "Method Not Allowed\n");

    // Expect: 100-continue: the interim answer comes before the body is sent.
    stream
        .write_all(b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
        .unwrap();
    let interim = read_answer(&mut stream, &mut pending).unwrap();
    assert_eq!(interim.status, 100);
    stream.write_all(b"body").unwrap();
    assert_eq!(read_answer(&mut stream, &mut pending).unwrap().status, 405);

    // Connection: close is honoured.
    stream
        .write_all(b"GET /version HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let last = read_answer(&mut stream, &mut pending).unwrap();
    assert_eq!(last.header("connection"), Some("close"));
    assert!(closed_without_answer(&mut stream));

    // curl, keep-alive across two URLs, and HTTP/1.0.
    let curl = std::process::Command::new("curl")
        .args(["-sS", "--fail-with-body"])
        .arg(format!("http://127.0.0.1:{port}/health"))
        .arg(format!("http://127.0.0.1:{port}/version"))
        .output()
        .unwrap();
    assert!(curl.status.success(), "{curl:?}");
    assert_eq!(
        String::from_utf8_lossy(&curl.stdout),
        r#"{"health":"true"}{"etcdserver":"3.4.23","etcdcluster":"3.4.0"}"#
    );
    let old = exchange(port, b"GET /version HTTP/1.0\r\n\r\n").unwrap();
    assert_eq!(old.status, 200);
    assert_eq!(old.header("connection"), Some("close"));

    etcdctl_put_get(&server, "after");
}

#[test]
fn malformed_and_slow_http1_is_refused_without_touching_grpc() {
    let server = TernServer::start();
    let port = server.client_port;

    let bad = exchange(port, b"GET / HTTP/1.1\r\nHost x\r\n\r\n").unwrap();
    assert_eq!((bad.status, bad.body.as_str()), (400, "400 Bad Request"));

    let huge_header = format!(
        "GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(1 << 20)
    );
    let answer = exchange(port, huge_header.as_bytes()).unwrap();
    assert_eq!(answer.status, 431);
    assert_eq!(answer.body, "431 Request Header Fields Too Large");

    let many: String = (0..200).map(|i| format!("X-{i}: v\r\n")).collect();
    let answer = exchange(
        port,
        format!("GET /health HTTP/1.1\r\n{many}\r\n").as_bytes(),
    )
    .unwrap();
    assert_eq!(answer.status, 431);

    let answer = exchange(
        port,
        b"POST /health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    )
    .unwrap();
    assert_eq!(answer.status, 400);

    let answer = exchange(
        port,
        b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n",
    )
    .unwrap();
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (413, "413 Request Entity Too Large")
    );

    let answer = exchange(
        port,
        b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    .unwrap();
    assert_eq!(answer.status, 400);

    let answer = exchange(
        port,
        b"POST /health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
    )
    .unwrap();
    assert_eq!(answer.status, 501);

    // Slowloris: a head trickled in and never finished is cut off at the header deadline,
    // and a gRPC client on the same port is served meanwhile.
    let mut slow = connect(port);
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let started = Instant::now();
    etcdctl_put_get(&server, "while-slow");
    let mut trickle_failed = false;
    while started.elapsed() < ANSWER_TIMEOUT {
        if slow.write_all(b"X-Slow: 1\r\n").is_err() {
            trickle_failed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
        slow.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 16];
        let read = slow.read(&mut buf);
        slow.set_nonblocking(false).unwrap();
        if matches!(read, Ok(0)) {
            trickle_failed = true;
            break;
        }
    }
    assert!(trickle_failed, "a trickled header was never cut off");

    // A client that says nothing at all is also dropped (the sniff deadline).
    let mut silent = connect(port);
    assert!(closed_without_answer(&mut silent));

    etcdctl_put_get(&server, "after");
}

#[test]
fn health_version_and_unknown_paths_answer_as_etcd_3_4_does() {
    let tern = TernServer::start();
    let etcd = http_support::Etcd::start();
    for target in [
        "/health",
        "/health?serializable=true",
        "/health?exclude=NOSPACE",
        "/version",
        "/nope",
        "/v2/nothing",
    ] {
        let ours = get(tern.client_port, target);
        let theirs = get(etcd.client_port, target);
        assert_eq!(ours.status, theirs.status, "{target}");
        assert_eq!(ours.body, theirs.body, "{target}");
        assert_eq!(ours.header_set(), theirs.header_set(), "{target}");
    }
    for (method, target) in [("POST", "/health"), ("DELETE", "/version")] {
        let raw = format!("{method} {target} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
        let ours = exchange(tern.client_port, raw.as_bytes()).unwrap();
        let theirs = exchange(etcd.client_port, raw.as_bytes()).unwrap();
        assert_eq!(
            (ours.status, &ours.body, ours.header_set()),
            (theirs.status, &theirs.body, theirs.header_set()),
            "{method} {target}"
        );
    }
    let ours = exchange(
        tern.client_port,
        b"OPTIONS /health HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .unwrap();
    let theirs = exchange(
        etcd.client_port,
        b"OPTIONS /health HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .unwrap();
    assert_eq!((ours.status, &ours.body), (theirs.status, &theirs.body));
    let ours = get(tern.client_port, "/metrics");
    let theirs = get(etcd.client_port, "/metrics");
    assert_eq!(ours.status, 200);
    assert_eq!(ours.header("content-type"), theirs.header("content-type"));
}

/// etcd's cleartext client port hands a connection to its HTTP server only if the first
/// line is an HTTP/1 request line (cmux's matcher, 4 KiB at most) and closes the others
/// without an answer; tern does the same, while a well-formed request is answered alike.
#[test]
fn a_first_line_that_is_no_http1_request_line_is_closed_as_etcd_closes_it() {
    let tern = TernServer::start();
    let etcd = http_support::Etcd::start();
    let long_line = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(5000));
    let unmatched: [&[u8]; 5] = [
        b"GARBAGE\r\n\r\n",
        b"GET /health\r\n\r\n",
        b"GET /health HTTP/2.0\r\nHost: x\r\n\r\n",
        b"\x16\x03\x01\x00\x05hello\n",
        long_line.as_bytes(),
    ];
    for raw in unmatched {
        for (who, port) in [("etcd", etcd.client_port), ("tern", tern.client_port)] {
            let mut stream = connect(port);
            stream.write_all(raw).unwrap();
            let mut answer = Vec::new();
            // A reset (etcd closes with unread input) counts as closed too.
            let _ = stream.read_to_end(&mut answer);
            assert!(
                answer.is_empty(),
                "{who} answered {:?}: {:?}",
                String::from_utf8_lossy(&raw[..raw.len().min(40)]),
                String::from_utf8_lossy(&answer)
            );
        }
    }
    let ours = get(tern.client_port, "/health");
    let theirs = get(etcd.client_port, "/health");
    assert_eq!((ours.status, ours.body), (theirs.status, theirs.body));
    etcdctl_put_get(&tern, "after");
}

#[test]
fn livez_and_readyz_answer_as_etcd_3_4_29_does() {
    let server = TernServer::start();
    let port = server.client_port;
    let answer = get(port, "/livez");
    assert_eq!((answer.status, answer.body.as_str()), (200, "ok\n"));
    assert_eq!(answer.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(
        get(port, "/livez?verbose").body,
        "[+]serializable_read ok\nok\n"
    );
    assert_eq!(
        get(port, "/readyz?verbose").body,
        "[+]data_corruption ok\n[+]serializable_read ok\n[+]linearizable_read ok\nok\n"
    );
    assert_eq!(
        get(
            port,
            "/readyz?verbose&exclude=serializable_read&exclude=nonexistent"
        )
        .body,
        "[+]data_corruption ok\n[+]linearizable_read ok\nok\n"
    );
    assert_eq!(
        get(port, "/readyz/linearizable_read?verbose").body,
        "[+]linearizable_read ok\nok\n"
    );
    assert_eq!(get(port, "/livez/linearizable_read").status, 404);
    let post = exchange(port, b"POST /readyz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(post.status, 405);
}

#[test]
fn metrics_listener_serves_only_metrics_and_health() {
    let metrics_port = free_port();
    let url = format!("http://127.0.0.1:{metrics_port}");
    let server = TernServer::start_with(&["--listen-metrics-urls", &url]);
    assert_eq!(get(metrics_port, "/health").body, r#"{"health":"true"}"#);
    let metrics = get(metrics_port, "/metrics");
    assert_eq!(metrics.status, 200);
    assert!(metrics.body.contains("etcd_server_has_leader"));
    assert!(metrics.header("access-control-allow-origin").is_none());
    assert_eq!(get(metrics_port, "/version").status, 404);
    // Only HTTP/1.1: etcdctl (gRPC) is not served there.
    let grpc = common::etcdctl(
        &format!("127.0.0.1:{metrics_port}"),
        &["--dial-timeout=2s", "--command-timeout=3s", "get", "x"],
        None,
    );
    assert!(!grpc.status.success());
    etcdctl_put_get(&server, "k");
}

/// Raises an alarm through the Alarm RPC (etcdctl can only list and disarm them).
fn raise_alarm(port: u16, alarm: tern::proto::etcdserverpb::AlarmType) {
    use prost::Message as _;
    use tern::proto::etcdserverpb as pb;
    let request = pb::AlarmRequest {
        action: pb::alarm_request::AlarmAction::Activate as i32,
        member_id: 0,
        alarm: alarm as i32,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let channel = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready().await.unwrap();
        grpc.unary(
            tonic::Request::new(bytes::Bytes::from(request.encode_to_vec())),
            tonic::codegen::http::uri::PathAndQuery::from_static("/etcdserverpb.Maintenance/Alarm"),
            common::raw_grpc::RawCodec,
        )
        .await
        .unwrap();
    });
}

/// A CORRUPT alarm (no client can cause one, so it is raised through the Alarm RPC) fails
/// `/health` and readyz's `data_corruption` check, and leaves `/livez` up. The NOSPACE alarm
/// is raised by a real quota fill in `health_flips_when_the_quota_lands_as_etcd_3_4s_does`.
#[test]
fn health_and_readyz_flip_with_a_corrupt_alarm() {
    let server = TernServer::start();
    let port = server.client_port;
    raise_alarm(port, tern::proto::etcdserverpb::AlarmType::Corrupt);
    let health = get(port, "/health");
    assert_eq!(
        (health.status, health.body.as_str()),
        (503, "{\"health\":\"false\"}\n")
    );
    assert_eq!(get(port, "/health?exclude=CORRUPT").status, 200);
    let ready = get(port, "/readyz");
    assert_eq!(ready.status, 503);
    assert_eq!(
        ready.body,
        "[-]data_corruption failed: alarm activated: CORRUPT\n[+]serializable_read ok\n[+]linearizable_read ok\n\n"
    );
    assert_eq!(get(port, "/livez").status, 200);
    let metrics = get(port, "/metrics").body;
    assert!(
        metrics.contains("etcd_server_health_failures 1"),
        "{metrics}"
    );
}

/// Small enough to fill with a few dozen 50 kB puts, above an empty database's size (the
/// same figure as tests/quota.rs).
const QUOTA_FLAG: &str = "--quota-backend-bytes=1000000";
/// Puts tried before the quota must have been hit (1 MB of 50 kB values is ~20).
const FILL_PUTS_MAX: usize = 200;

fn etcdctl_ok(port: u16, args: &[&str]) -> String {
    let out = common::etcdctl(&format!("127.0.0.1:{port}"), args, None);
    assert!(
        out.status.success(),
        "etcdctl {args:?} on {port}: {}",
        common::stderr(&out)
    );
    common::stdout(&out)
}

/// Puts 50 kB values until a put is refused, checks that the refusal is etcd's, and waits
/// until the member lists the NOSPACE alarm the refusal raised.
fn fill_until_no_space(port: u16) {
    let value = "v".repeat(50_000);
    let endpoint = format!("127.0.0.1:{port}");
    let refused = (0..FILL_PUTS_MAX)
        .map(|i| common::etcdctl(&endpoint, &["put", &format!("k{i}"), &value], None))
        .find(|out| !out.status.success())
        .map(|out| common::stderr(&out))
        .expect("the quota was never hit");
    assert!(
        refused.contains("code = ResourceExhausted")
            && refused.contains("Error: etcdserver: mvcc: database space exceeded"),
        "{refused}"
    );
    let deadline = Instant::now() + ANSWER_TIMEOUT;
    loop {
        let alarms = etcdctl_ok(port, &["alarm", "list"]);
        if alarms.contains("alarm:NOSPACE") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no NOSPACE alarm on {port}: {alarms:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// etcd's recovery from NOSPACE, up to (not including) `alarm disarm`: delete everything,
/// compact physically to the current revision, defragment.
fn free_space(port: u16) {
    etcdctl_ok(port, &["del", "", "--prefix"]);
    let header = etcdctl_ok(port, &["get", "k", "-w", "json"]);
    let at = header.find("\"revision\":").unwrap() + 11;
    let revision: String = header[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    etcdctl_ok(port, &["compaction", &revision, "--physical"]);
    etcdctl_ok(port, &["defrag"]);
}

/// Each `/health` form answers on tern as on etcd: status, body and headers.
fn assert_health_as_etcd(tern: u16, etcd: u16, targets: &[&str], expected_status: &[u16]) {
    for (target, status) in targets.iter().zip(expected_status) {
        let ours = get(tern, target);
        let theirs = get(etcd, target);
        assert_eq!(theirs.status, *status, "etcd {target}: {theirs:?}");
        assert_eq!(
            (ours.status, &ours.body, ours.header_set()),
            (theirs.status, &theirs.body, theirs.header_set()),
            "{target}"
        );
    }
}

/// The quota lands for real: tern and etcd 3.4.23, started with the same
/// `--quota-backend-bytes`, take the same 50 kB puts until one is refused with "etcdserver:
/// mvcc: database space exceeded" (the refusal raises NOSPACE on each). `/health` (plain,
/// `?serializable=true`, `?exclude=NOSPACE`) then answers on tern exactly as on etcd: 503
/// `{"health":"false"}` (an alarm fails health before the leader and read checks, so
/// serializable does not help) and 200 when NOSPACE is excluded; it stays 503 after the
/// space is freed (compaction + defrag) until `alarm disarm`, and is 200 again after.
///
/// etcd 3.4.23 has no `/livez` and `/readyz` (they came in 3.4.29 and 3.6), so these are
/// checked against etcd's source (3.4.29's and 3.6.0's `etcdhttp/health.go`): livez runs
/// only `serializable_read`, readyz runs `data_corruption` (the CORRUPT alarm alone) and the
/// two reads, and reads work under NOSPACE, so both stay 200 with every check `[+]`. (3.6.0
/// adds readyz's `non_learner` check, which passes on a voter, and lists the checks in Go
/// map order; tern answers 3.4.29's list, in registration order.)
#[test]
fn health_flips_when_the_quota_lands_as_etcd_3_4s_does() {
    let tern = TernServer::start_with(&[QUOTA_FLAG]);
    let etcd = http_support::Etcd::start_with(&[QUOTA_FLAG]);
    let (ours, theirs) = (tern.client_port, etcd.client_port);
    let forms = [
        "/health",
        "/health?serializable=true",
        "/health?exclude=NOSPACE",
        "/health?exclude=CORRUPT",
    ];
    assert_health_as_etcd(ours, theirs, &forms, &[200, 200, 200, 200]);

    fill_until_no_space(ours);
    fill_until_no_space(theirs);
    assert_health_as_etcd(ours, theirs, &forms, &[503, 503, 200, 503]);
    assert_eq!(
        get(ours, "/health").body,
        "{\"health\":\"false\"}\n",
        "etcd 3.4's body, without 3.5's reason"
    );
    let livez = get(ours, "/livez?verbose");
    assert_eq!(
        (livez.status, livez.body.as_str()),
        (200, "[+]serializable_read ok\nok\n")
    );
    assert_eq!(get(ours, "/livez").body, "ok\n");
    let readyz = get(ours, "/readyz?verbose");
    assert_eq!(
        (readyz.status, readyz.body.as_str()),
        (
            200,
            "[+]data_corruption ok\n[+]serializable_read ok\n[+]linearizable_read ok\nok\n"
        )
    );
    assert_eq!(get(ours, "/readyz").body, "ok\n");

    // Freeing the space does not clear the alarm: health stays down until it is disarmed.
    free_space(ours);
    free_space(theirs);
    assert_health_as_etcd(ours, theirs, &forms, &[503, 503, 200, 503]);
    for port in [ours, theirs] {
        assert!(etcdctl_ok(port, &["alarm", "disarm"]).contains("alarm:NOSPACE"));
        assert_eq!(etcdctl_ok(port, &["alarm", "list"]), "");
    }
    assert_health_as_etcd(ours, theirs, &forms, &[200, 200, 200, 200]);
    assert_eq!(get(ours, "/readyz?verbose").status, 200);
    assert_eq!(get(ours, "/livez").status, 200);
    for port in [ours, theirs] {
        assert_eq!(etcdctl_ok(port, &["put", "small", "x"]), "OK\n");
    }
}

/// A 3-member tern cluster and a 3-member etcd 3.4.23 cluster each lose two members: the
/// survivor's `/health` turns 503 with the same status, body and headers on both.
/// `?serializable=true` came with 3.4.29 (with `/livez` and `/readyz`); 3.4.23 ignores it
/// and answers 503 here. tern follows 3.4.29's source: the leader check is skipped and the
/// local read works, so it stays 200. `/livez` and `/readyz` follow 3.4.29's and 3.6's
/// checks: the serializable read works, the linearizable one fails.
#[test]
fn health_flips_without_a_leader() {
    let mut cluster = http_support::Cluster::tern(3);
    let mut etcd = http_support::Cluster::etcd(3);
    for member in 0..3 {
        assert_eq!(get(cluster.client_ports[member], "/health").status, 200);
    }
    // Peer traffic is counted per peer on every member, and the leader's heartbeats give
    // round trips.
    let deadline = Instant::now() + ANSWER_TIMEOUT;
    for member in 0..3 {
        loop {
            let metrics = get(cluster.client_ports[member], "/metrics").body;
            let peers_with = |prefix: &str| {
                metrics
                    .lines()
                    .filter(|l| l.starts_with(prefix) && !l.ends_with(" 0"))
                    .count()
            };
            // The leader talks to both peers and times its heartbeats' round trips; a
            // follower talks to the leader.
            let peers = if metrics.contains("\netcd_server_is_leader 1\n") {
                2
            } else {
                1
            };
            let counted = peers_with("etcd_network_peer_sent_bytes_total{To=\"") >= peers
                && peers_with("etcd_network_peer_received_bytes_total{From=\"") >= peers
                && (peers == 1
                    || peers_with("etcd_network_peer_round_trip_time_seconds_count{To=\"") == 2);
            if counted {
                break;
            }
            assert!(Instant::now() < deadline, "member {member}: {metrics}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    for c in [&mut cluster, &mut etcd] {
        c.kill(1);
        c.kill(2);
    }
    let port = cluster.client_ports[0];
    let etcd_port = etcd.client_ports[0];
    // Each survivor loses its leader within an election timeout or two.
    for survivor in [port, etcd_port] {
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        let mut health = get(survivor, "/health");
        while health.status == 200 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            health = get(survivor, "/health");
        }
        assert_eq!(
            (health.status, health.body.as_str()),
            (503, "{\"health\":\"false\"}\n"),
            "survivor on {survivor}"
        );
    }
    assert_health_as_etcd(port, etcd_port, &["/health"], &[503]);
    // Local reads still work: the serializable health stays up.
    let serializable = get(port, "/health?serializable=true");
    assert_eq!(
        (serializable.status, serializable.body.as_str()),
        (200, "{\"health\":\"true\"}")
    );
    assert_eq!(get(port, "/livez").status, 200);
    let ready = get(port, "/readyz");
    assert_eq!(ready.status, 503);
    assert!(
        ready.body.starts_with("[+]data_corruption ok\n[+]serializable_read ok\n[-]linearizable_read failed: etcdserver: "),
        "{}",
        ready.body
    );
    let metrics = get(port, "/metrics").body;
    assert!(
        metrics.contains("\netcd_server_has_leader 0\n"),
        "{metrics}"
    );
}
