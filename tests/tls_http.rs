//! Checks HTTP over TLS on the client port (issues 14 and 16): a tern and a real etcd 3.4,
//! both https-only with --client-cert-auth and the same certificates, get the same curl
//! requests with `--http1.1` (ALPN offers http/1.1 only), `--no-alpn`, and curl's default
//! (ALPN h2: plain HTTP over HTTP/2, which etcd's TLS port serves beside gRPC): /health,
//! /version, /metrics and the /v3 JSON gateway (put, range, a streamed watch), compared
//! by status and body with member ids blanked; /livez and /readyz answer on tern; openssl
//! s_client sees the same ALPN choices from both (h2; none for http/1.1 only; a refusal
//! for an unknown protocol, logged in etcd's words). The Python etcd3gw client runs its
//! KV/lease/watch/lock flow over https with a client certificate against both. unix:// and
//! unixs:// sockets serve HTTP/1.1 and the gateway. An HTTP/2 preface without ALPN h2 gets
//! the same bytes back from both. https:// `--listen-metrics-urls` are served with the
//! client TLS settings on both (client certificate required, ALPN as on the client port),
//! and a real Prometheus scrapes tern's over https with a CA file and a client
//! certificate. Certificates come from common::pki.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use common::pki::{fixture, Fixture};
use common::{free_port, TernServer};

/// Longest wait for a server to start answering.
const WAIT: Duration = Duration::from_secs(30);

/// A real etcd whose only client URL is https://, with `extra` flags.
struct TlsEtcd {
    child: Child,
    port: u16,
    data_dir: PathBuf,
}

impl TlsEtcd {
    fn start(f: &Fixture) -> TlsEtcd {
        TlsEtcd::start_with(f, &[])
    }

    fn start_with(f: &Fixture, extra: &[String]) -> TlsEtcd {
        let (port, peer_port) = (free_port(), free_port());
        let data_dir =
            std::env::temp_dir().join(format!("tern-tls-http-etcd-{}-{port}", std::process::id()));
        let client = format!("https://127.0.0.1:{port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let child = Command::new(std::env::var("ETCD_BIN").unwrap_or_else(|_| "etcd".into()))
            .args(["--name", "ref", "--data-dir"])
            .arg(&data_dir)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("ref={peer}")])
            .args(f.server_args())
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd (test.sh installs it)");
        let mut etcd = TlsEtcd {
            child,
            port,
            data_dir,
        };
        let deadline = Instant::now() + WAIT;
        while get(f, &["--http1.1"], port, "/health").0 != 200 {
            assert!(etcd.child.try_wait().unwrap().is_none(), "etcd exited");
            assert!(Instant::now() < deadline, "etcd never became healthy");
            std::thread::sleep(Duration::from_millis(100));
        }
        etcd
    }
}

impl Drop for TlsEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// curl with the fixture's client certificate: (status, body, HTTP version). A status of
/// 0 means no answer (curl's own failures, e.g. a refused handshake).
fn curl(f: &Fixture, args: &[&str], url: &str) -> (u16, String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "-o", "-"])
        .args(["-w", "\n%{http_code} %{http_version}"])
        .args(["--cacert", &f.ca_file()])
        .args(["--cert", &f.client.0, "--key", &f.client.1])
        .args(args)
        .arg(url)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, tail) = text.rsplit_once('\n').unwrap_or(("", &text));
    let (code, version) = tail.split_once(' ').unwrap_or((tail, ""));
    (
        code.parse().unwrap_or(0),
        body.to_owned(),
        version.to_owned(),
    )
}

fn get(f: &Fixture, args: &[&str], port: u16, path: &str) -> (u16, String, String) {
    curl(f, args, &format!("https://127.0.0.1:{port}{path}"))
}

fn post(f: &Fixture, args: &[&str], port: u16, path: &str, body: &str) -> (u16, String, String) {
    let mut all = args.to_vec();
    all.extend(["-X", "POST", "--data-binary", body]);
    get(f, &all, port, path)
}

/// Blanks what differs between two members by construction: ids and the leader.
fn normalize(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (name, field) in map.iter_mut() {
                if ["cluster_id", "member_id", "leader"].contains(&name.as_str()) {
                    *field = Value::String("<id>".into());
                } else {
                    normalize(field);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalize),
        _ => {}
    }
}

/// Each line of a body as normalized JSON.
fn json_lines(body: &str) -> Vec<Value> {
    body.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut value: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            normalize(&mut value);
            value
        })
        .collect()
}

fn start_tern(f: &Fixture) -> TernServer {
    let args = f.server_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    TernServer::start_listening(&|port| format!("https://127.0.0.1:{port}"), &args, None)
}

/// curl's ways to reach an https:// URL, and the HTTP version each gets from etcd: ALPN
/// offering http/1.1 only, no ALPN, and curl's default (h2 and http/1.1 offered: HTTP/2,
/// where etcd's TLS port serves plain HTTP beside gRPC).
const MODES: &[(&[&str], &str)] = &[(&["--http1.1"], "1.1"), (&["--no-alpn"], "1.1"), (&[], "2")];

#[test]
fn http_over_tls_answers_as_etcd_does() {
    let f = fixture("tls-http");
    let etcd = TlsEtcd::start(&f);
    let tern = start_tern(&f);
    let (e, t) = (etcd.port, tern.client_port);
    for (mode, version) in MODES {
        for path in ["/health", "/version", "/nothing"] {
            let from_etcd = get(&f, mode, e, path);
            assert_eq!(from_etcd.0 / 100, if path == "/nothing" { 4 } else { 2 });
            assert_eq!(
                from_etcd.2, *version,
                "{mode:?} {path}: etcd's HTTP version"
            );
            assert_eq!(get(&f, mode, t, path), from_etcd, "{mode:?} {path}");
        }
        for path in ["/livez", "/readyz", "/readyz?verbose"] {
            let (code, body, got) = get(&f, mode, t, path);
            assert_eq!((code, got.as_str()), (200, *version), "{path}: {body}");
            assert!(
                body.starts_with("ok") || body.contains("ok"),
                "{path}: {body}"
            );
        }
        for port in [e, t] {
            let (code, body, _) = get(&f, mode, port, "/metrics");
            assert_eq!(code, 200);
            assert!(body.contains("\netcd_server_has_leader 1\n"), "{port}");
        }
    }
    // The gateway: the same writes and reads on both, over each mode.
    let requests: &[(&str, &str)] = &[
        ("/v3/kv/put", r#"{"key": "Zm9v", "value": "YmFy"}"#),
        ("/v3/kv/range", r#"{"key": "Zm9v"}"#),
        (
            "/v3/kv/put",
            r#"{"key": "Zm9v", "value": "YmF6", "prev_kv": true}"#,
        ),
        ("/v3/kv/range", r#"{"key": "Zm9v", "range_end": "Zm9w"}"#),
        ("/v3/kv/range", r#"{"key": "Zm9v", "revision": 99}"#),
    ];
    for (mode, version) in MODES {
        for (path, body) in requests {
            let from_etcd = post(&f, mode, e, path, body);
            let from_tern = post(&f, mode, t, path, body);
            assert_eq!(from_tern.0, from_etcd.0, "{path} {body}: {}", from_tern.1);
            assert_eq!(from_tern.2, *version);
            assert_eq!(
                json_lines(&from_tern.1),
                json_lines(&from_etcd.1),
                "{path} {body}"
            );
        }
    }
    // A streamed watch over TLS: history from revision 1 arrives at once; curl's time
    // limit ends the stream (status 200 was sent with the first line).
    let watch = r#"{"create_request": {"key": "Zm9v", "start_revision": 1}}"#;
    for (mode, _) in MODES {
        let stream = |port| {
            let mut args = mode.to_vec();
            args.extend(["-N", "--max-time", "3"]);
            let (code, body, _) = post(&f, &args, port, "/v3/watch", watch);
            (code, json_lines(&body))
        };
        let (from_etcd, from_tern) = (stream(e), stream(t));
        assert_eq!(
            from_etcd.1.len(),
            2,
            "created, then the history: {from_etcd:?}"
        );
        assert_eq!(from_tern, from_etcd, "{mode:?}");
    }
}

/// What openssl s_client reports of ALPN when offering `offer` to `port`.
fn alpn_outcome(f: &Fixture, port: u16, offer: &str) -> String {
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args([
            "-CAfile",
            &f.ca_file(),
            "-cert",
            &f.client.0,
            "-key",
            &f.client.1,
        ])
        .args(["-alpn", offer])
        .stdin(Stdio::null())
        .output()
        .expect("openssl");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if text.contains("no application protocol") {
        return "refused: no application protocol".into();
    }
    text.lines()
        .find(|l| l.starts_with("ALPN protocol:") || l.starts_with("No ALPN negotiated"))
        .unwrap_or("no ALPN line")
        .to_owned()
}

#[test]
fn alpn_is_chosen_as_etcd_chooses_it() {
    let f = fixture("tls-alpn");
    let etcd = TlsEtcd::start(&f);
    let tern = start_tern(&f);
    let cases = [
        ("h2,http/1.1", "ALPN protocol: h2"),
        ("h2", "ALPN protocol: h2"),
        ("http/1.1", "No ALPN negotiated"),
        ("acme-tls/1", "refused: no application protocol"),
    ];
    for (offer, expected) in cases {
        assert_eq!(
            alpn_outcome(&f, etcd.port, offer),
            expected,
            "etcd, {offer}"
        );
        assert_eq!(
            alpn_outcome(&f, tern.client_port, offer),
            expected,
            "tern, {offer}"
        );
    }
    let deadline = Instant::now() + WAIT;
    let wanted = "tls: client requested unsupported application protocols ([acme-tls/1])";
    while !tern
        .log
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("rejected connection") && l.contains(wanted))
    {
        assert!(Instant::now() < deadline, "tern never logged {wanted:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    // gRPC (ALPN h2) still works beside all this.
    let flags = f.client_flags(&f.client);
    let mut args: Vec<&str> = flags.iter().map(String::as_str).collect();
    args.extend(["put", "k", "v"]);
    let out = common::etcdctl(
        &format!("https://127.0.0.1:{}", tern.client_port),
        &args,
        None,
    );
    common::assert_ok(&out, "OK\n");
}

fn run_etcd3gw(f: &Fixture, port: u16) -> Result<(), String> {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/etcd3gw_python.py"
    );
    let output = Command::new("python3")
        .arg(script)
        .args(["127.0.0.1", &port.to_string()])
        .args([&f.ca_file(), &f.client.0, &f.client.1])
        // requests lets these override a session's own CA file (its `verify`).
        .env_remove("REQUESTS_CA_BUNDLE")
        .env_remove("CURL_CA_BUNDLE")
        .output()
        .expect("python3");
    let stdout = String::from_utf8_lossy(&output.stdout);
    if output.status.success() && stdout.contains("OK") {
        return Ok(());
    }
    Err(format!(
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    ))
}

#[test]
fn etcd3gw_runs_over_https_with_a_client_certificate() {
    let f = fixture("tls-etcd3gw");
    let etcd = TlsEtcd::start(&f);
    if let Err(e) = run_etcd3gw(&f, etcd.port) {
        panic!("the flow fails against real etcd, so the script is wrong:\n{e}");
    }
    let tern = start_tern(&f);
    if let Err(e) = run_etcd3gw(&f, tern.client_port) {
        panic!("etcd3gw over https against tern:\n{e}");
    }
}

#[test]
fn unix_and_unixs_sockets_serve_http1_and_the_gateway() {
    let f = fixture("tls-http-unix");
    let cwd = f.pki.dir.clone();
    let unix_port = free_port();
    let args = f.server_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // No TCP client listener at all: the gateway needs none.
    let server = TernServer::start_listening(
        &|port| format!("unixs://localhost:{port},unix://localhost:{unix_port}"),
        &args,
        Some(&cwd),
    );
    let unixs = cwd.join(format!("localhost:{}", server.client_port));
    let unix = cwd.join(format!("localhost:{unix_port}"));
    let over = |socket: &PathBuf, scheme: &str, args: &[&str]| {
        let mut all = vec!["--unix-socket", socket.to_str().unwrap()];
        all.extend_from_slice(args);
        curl(&f, &all, &format!("{scheme}://localhost/health"))
    };
    let healthy = (200, r#"{"health":"true"}"#.to_owned(), "1.1".to_owned());
    assert_eq!(over(&unixs, "https", &["--http1.1"]), healthy);
    assert_eq!(over(&unixs, "https", &["--no-alpn"]), healthy);
    assert_eq!(over(&unix, "http", &[]), healthy);
    for (socket, scheme) in [(&unixs, "https"), (&unix, "http")] {
        let mut all = vec!["--unix-socket", socket.to_str().unwrap(), "--http1.1"];
        all.extend([
            "-X",
            "POST",
            "--data-binary",
            r#"{"key": "dQ==", "value": "MQ=="}"#,
        ]);
        let (code, body, _) = curl(&f, &all, &format!("{scheme}://localhost/v3/kv/put"));
        assert_eq!(code, 200, "{scheme}: {body}");
        assert!(body.contains(r#""revision":""#), "{scheme}: {body}");
    }
}

/// The raw bytes a server answers to the HTTP/2 connection preface sent over TLS without
/// ALPN (`alpn` empty) or with ALPN offering only `alpn`, until it closes; Date blanked.
fn preface_answer(f: &Fixture, port: u16, alpn: &str) -> String {
    let script = r#"
import socket, ssl, sys
port, ca, cert, key, alpn = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
ctx = ssl.create_default_context(cafile=ca)
ctx.load_cert_chain(cert, key)
if alpn:
    ctx.set_alpn_protocols([alpn])
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="127.0.0.1")
assert s.selected_alpn_protocol() is None, s.selected_alpn_protocol()
s.settimeout(20)
s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex("000000040000000000"))
data = b""
while True:
    d = s.recv(65536)
    if not d:
        break
    data += d
sys.stdout.write(data.decode("latin-1"))
"#;
    let out = Command::new("python3")
        .args(["-c", script, &port.to_string()])
        .args([&f.ca_file(), &f.client.0, &f.client.1, alpn])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split("\r\n")
        .map(|l| {
            if l.starts_with("Date: ") {
                "Date: <now>"
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\r\n")
}

/// Go's net/http reads the preface as the request `PRI *`, which etcd's mux answers 400
/// and closes; tern answered 505 before (issue 14).
#[test]
fn an_http2_preface_without_alpn_h2_is_answered_as_etcd_answers_it() {
    let f = fixture("tls-preface");
    let etcd = TlsEtcd::start(&f);
    let tern = start_tern(&f);
    for alpn in ["", "http/1.1"] {
        let from_etcd = preface_answer(&f, etcd.port, alpn);
        assert!(
            from_etcd.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{from_etcd}"
        );
        assert_eq!(
            preface_answer(&f, tern.client_port, alpn),
            from_etcd,
            "ALPN {alpn:?}"
        );
    }
}

/// Debian's Prometheus scraping `target` over https every second with the fixture's CA
/// and client certificate; kills itself and removes its directory on drop.
struct HttpsPrometheus {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl HttpsPrometheus {
    fn start(f: &Fixture, target: u16) -> HttpsPrometheus {
        let port = free_port();
        let dir = f.pki.dir.join(format!("prometheus-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: etcd\n    scheme: https\n    tls_config:\n      ca_file: {}\n      cert_file: {}\n      key_file: {}\n    static_configs:\n      - targets: ['127.0.0.1:{target}']\n",
                f.ca_file(),
                f.client.0,
                f.client.1
            ),
        )
        .unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (test.sh installs it)");
        HttpsPrometheus { child, port, dir }
    }

    fn query(&self, query: &str) -> String {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "5", "--data-urlencode"])
            .arg(format!("query={query}"))
            .arg(format!("http://127.0.0.1:{}/api/v1/query", self.port))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for HttpsPrometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// etcd 3.4's `serveMetrics` serves an https:// metrics URL with the client TLS settings;
/// tern refused such URLs at startup before (issues 14 and 16).
#[test]
fn https_metrics_urls_are_served_with_the_client_tls_settings_as_etcd_serves_them() {
    let f = fixture("tls-metrics");
    let (etcd_https, etcd_http) = (free_port(), free_port());
    let metrics_urls =
        |https: u16, http: u16| format!("https://127.0.0.1:{https},http://127.0.0.1:{http}");
    let etcd = TlsEtcd::start_with(
        &f,
        &[
            "--listen-metrics-urls".into(),
            metrics_urls(etcd_https, etcd_http),
        ],
    );
    let (tern_https, tern_http) = (free_port(), free_port());
    let mut args = f.server_args();
    args.extend([
        "--listen-metrics-urls".into(),
        metrics_urls(tern_https, tern_http),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let _tern =
        TernServer::start_listening(&|port| format!("https://127.0.0.1:{port}"), &args, None);
    for (mode, version) in MODES {
        for path in ["/health", "/version", "/nothing"] {
            let from_etcd = get(&f, mode, etcd_https, path);
            assert_eq!(from_etcd.2, *version, "{mode:?} {path}");
            assert_eq!(
                get(&f, mode, tern_https, path),
                from_etcd,
                "{mode:?} {path}"
            );
        }
        // The gateway is not on the metrics mux.
        let range = r#"{"key": "Zm9v"}"#;
        let from_etcd = post(&f, mode, etcd_https, "/v3/kv/range", range);
        assert_eq!(from_etcd.0, 404);
        assert_eq!(post(&f, mode, tern_https, "/v3/kv/range", range), from_etcd);
        for port in [etcd_https, tern_https] {
            let (code, body, got) = get(&f, mode, port, "/metrics");
            assert_eq!((code, got.as_str()), (200, *version), "{port}");
            assert!(body.contains("\netcd_server_has_leader 1\n"), "{port}");
        }
    }
    // --client-cert-auth applies: no certificate, no answer, from either.
    for port in [etcd_https, tern_https] {
        let out = Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "20",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
            ])
            .args(["--cacert", &f.ca_file()])
            .arg(format!("https://127.0.0.1:{port}/metrics"))
            .output()
            .expect("curl");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "000", "{port}");
    }
    // The http:// one beside it stays plain.
    for port in [etcd_http, tern_http] {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "20"])
            .arg(format!("http://127.0.0.1:{port}/health"))
            .output()
            .expect("curl");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            r#"{"health":"true"}"#,
            "{port}"
        );
    }
    drop(etcd);
    // A real Prometheus scrapes tern's https:// metrics URL with a CA file and a client
    // certificate.
    let prometheus = HttpsPrometheus::start(&f, tern_https);
    let deadline = Instant::now() + WAIT;
    loop {
        let answer = prometheus.query("etcd_server_has_leader == 1");
        if answer.contains(r#""status":"success""#) && answer.contains(r#""metric":"#) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "prometheus never scraped tern over https: {answer}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
