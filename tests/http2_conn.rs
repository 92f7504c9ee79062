//! Connection-level HTTP/2 conformance: a raw-bytes client over a real loopback socket
//! sends valid and invalid frame sequences to `grpc::serve_connection` and checks the exact
//! frame the server answers with (GOAWAY/RST_STREAM code, PING ACK, ...). Every read has
//! a timeout, so a server that hangs fails the test instead of stalling it.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tern::http2::frame::{self, flag, kind, ErrorCode, Frame, FrameHeader, Settings};
use tern::http2::hpack;
use tern::http2::ServerConfig;

struct Client {
    sock: TcpStream,
    buf: Vec<u8>,
    /// Every frame received so far.
    seen: Vec<Frame>,
    decoder: hpack::Decoder,
}

impl Client {
    fn connect(config: ServerConfig) -> Client {
        let server = support::start_server(config);
        let sock = TcpStream::connect(server.addr).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        Client {
            sock,
            buf: Vec::new(),
            seen: Vec::new(),
            decoder: hpack::Decoder::new(4096),
        }
    }

    /// Connects and completes the preface + SETTINGS exchange.
    fn handshake(config: ServerConfig) -> Client {
        let mut c = Client::connect(config);
        let mut out = frame::PREFACE.to_vec();
        frame::encode_settings(&mut out, &Settings::default());
        c.send(&out);
        c.expect(
            |f| matches!(f, Frame::Settings { ack: false, .. }),
            "server SETTINGS",
        );
        c.expect(
            |f| matches!(f, Frame::Settings { ack: true, .. }),
            "SETTINGS ACK",
        );
        c
    }

    fn send(&mut self, bytes: &[u8]) {
        // The server may have closed already; the reads will tell.
        let _ = self.sock.write_all(bytes);
    }

    fn send_frame(&mut self, f: Frame) {
        let mut out = Vec::new();
        f.encode(&mut out);
        self.send(&out);
    }

    /// Reads frames until `want` matches one (returned) or 5 s pass / EOF (panic).
    fn expect(&mut self, want: impl Fn(&Frame) -> bool, what: &str) -> Frame {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            while let Some(h) = FrameHeader::parse(&self.buf) {
                let total = frame::FRAME_HEADER_LEN + h.length as usize;
                if self.buf.len() < total {
                    break;
                }
                let payload = Bytes::copy_from_slice(&self.buf[frame::FRAME_HEADER_LEN..total]);
                self.buf.drain(..total);
                let f = Frame::parse(h, payload).expect("server sent a malformed frame");
                self.seen.push(f.clone());
                if want(&f) {
                    return f;
                }
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; saw {:?}",
                self.seen
            );
            let mut chunk = [0u8; 65536];
            match self.sock.read(&mut chunk) {
                Ok(0) => panic!("EOF while waiting for {what}; saw {:?}", self.seen),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!(
                    "read error {e} while waiting for {what}; saw {:?}",
                    self.seen
                ),
            }
        }
    }

    fn expect_goaway(&mut self, code: ErrorCode) {
        let f = self.expect(|f| matches!(f, Frame::GoAway { .. }), "GOAWAY");
        let Frame::GoAway { error_code, .. } = f else {
            unreachable!()
        };
        assert_eq!(error_code, code, "GOAWAY code");
        self.expect_eof();
    }

    fn expect_rst(&mut self, stream: u32, code: ErrorCode) {
        let f = self.expect(
            |f| matches!(f, Frame::RstStream { stream_id, .. } if *stream_id == stream),
            "RST_STREAM",
        );
        let Frame::RstStream { error_code, .. } = f else {
            unreachable!()
        };
        assert_eq!(error_code, code, "RST_STREAM code");
    }

    fn expect_eof(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut chunk = [0u8; 4096];
        loop {
            assert!(
                Instant::now() < deadline,
                "server did not close the connection"
            );
            match self.sock.read(&mut chunk) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return,
            }
        }
    }

    /// Sends request HEADERS for `path` on `stream_id`.
    fn request(&mut self, stream_id: u32, path: &str, end_stream: bool) {
        let block = request_block(path, "application/grpc");
        self.send_frame(Frame::Headers {
            stream_id,
            end_stream,
            end_headers: true,
            priority: None,
            fragment: Bytes::from(block),
        });
    }

    fn decode(&mut self, block: &[u8]) -> Vec<(String, String)> {
        self.decoder
            .decode(block)
            .unwrap()
            .fields
            .into_iter()
            .map(|(n, v)| {
                (
                    String::from_utf8(n.to_vec()).unwrap(),
                    String::from_utf8(v.to_vec()).unwrap(),
                )
            })
            .collect()
    }
}

fn request_block(path: &str, content_type: &str) -> Vec<u8> {
    let mut block = Vec::new();
    for (n, v) in [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", "localhost"),
        ("content-type", content_type),
        ("te", "trailers"),
    ] {
        hpack::encoder::encode_field(&mut block, n.as_bytes(), v.as_bytes());
    }
    block
}

fn grpc_message(payload: &[u8]) -> Bytes {
    let mut m = vec![0u8];
    m.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    m.extend_from_slice(payload);
    Bytes::from(m)
}

fn data(stream_id: u32, payload: Bytes, end_stream: bool) -> Frame {
    Frame::Data {
        stream_id,
        end_stream,
        flow_len: payload.len() as u32,
        data: payload,
    }
}

#[test]
fn bad_preface_gets_goaway_protocol_error() {
    let mut c = Client::connect(ServerConfig::default());
    c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    c.expect_goaway(ErrorCode::PROTOCOL_ERROR);
}

#[test]
fn first_frame_not_settings_is_protocol_error() {
    let mut c = Client::connect(ServerConfig::default());
    let mut out = frame::PREFACE.to_vec();
    frame::encode_ping(&mut out, false, b"12345678");
    c.send(&out);
    c.expect_goaway(ErrorCode::PROTOCOL_ERROR);
}

#[test]
fn ping_is_echoed() {
    let mut c = Client::handshake(ServerConfig::default());
    c.send_frame(Frame::Ping {
        ack: false,
        payload: *b"pingpong",
    });
    let f = c.expect(|f| matches!(f, Frame::Ping { .. }), "PING ACK");
    assert_eq!(
        f,
        Frame::Ping {
            ack: true,
            payload: *b"pingpong"
        }
    );
}

#[test]
fn oversized_frame_gets_frame_size_error() {
    let config = ServerConfig::default();
    let max = config.max_frame_bytes;
    let mut c = Client::handshake(config);
    let mut out = Vec::new();
    FrameHeader {
        length: max + 1,
        kind: kind::DATA,
        flags: 0,
        stream_id: 1,
    }
    .encode(&mut out);
    c.send(&out);
    c.expect_goaway(ErrorCode::FRAME_SIZE_ERROR);
}

#[test]
fn invalid_hpack_gets_compression_error() {
    let mut c = Client::handshake(ServerConfig::default());
    // Index 70 does not exist: the dynamic table is empty.
    c.send_frame(Frame::Headers {
        stream_id: 1,
        end_stream: true,
        end_headers: true,
        priority: None,
        fragment: Bytes::from_static(b"\x82\xc6"),
    });
    c.expect_goaway(ErrorCode::COMPRESSION_ERROR);
}

#[test]
fn data_beyond_connection_window_is_flow_control_error() {
    let config = ServerConfig {
        connection_window_bytes: 65_535,
        ..ServerConfig::default()
    };
    let mut c = Client::handshake(config);
    c.request(1, "/test.Echo/Hang", false);
    // One 65,536-byte frame: within SETTINGS_MAX_FRAME_SIZE, one byte past the window.
    c.send_frame(data(1, Bytes::from(vec![0u8; 65_536]), false));
    c.expect_goaway(ErrorCode::FLOW_CONTROL_ERROR);
}

#[test]
fn data_beyond_stream_window_is_stream_flow_control_error() {
    let config = ServerConfig {
        initial_stream_window_bytes: 65_535,
        ..ServerConfig::default()
    };
    let mut c = Client::handshake(config);
    c.request(1, "/test.Echo/Hang", false);
    for _ in 0..4 {
        c.send_frame(data(1, Bytes::from(vec![0u8; 16_384]), false));
    }
    c.send_frame(data(1, Bytes::from(vec![0u8; 16_384]), false));
    c.expect_rst(1, ErrorCode::FLOW_CONTROL_ERROR);
    // The connection survives a stream error.
    c.send_frame(Frame::Ping {
        ack: false,
        payload: *b"stillup!",
    });
    c.expect(|f| matches!(f, Frame::Ping { ack: true, .. }), "PING ACK");
}

#[test]
fn connection_window_update_overflow_is_flow_control_error() {
    let mut c = Client::handshake(ServerConfig::default());
    c.send_frame(Frame::WindowUpdate {
        stream_id: 0,
        increment: frame::MAX_WINDOW_SIZE,
    });
    c.expect_goaway(ErrorCode::FLOW_CONTROL_ERROR);
}

#[test]
fn stream_window_update_overflow_resets_stream() {
    let mut c = Client::handshake(ServerConfig::default());
    c.request(1, "/test.Echo/Hang", false);
    c.send_frame(Frame::WindowUpdate {
        stream_id: 1,
        increment: frame::MAX_WINDOW_SIZE,
    });
    c.expect_rst(1, ErrorCode::FLOW_CONTROL_ERROR);
}

#[test]
fn continuation_interleaving_is_protocol_error() {
    let mut c = Client::handshake(ServerConfig::default());
    let block = request_block("/test.Echo/Unary", "application/grpc");
    c.send_frame(Frame::Headers {
        stream_id: 1,
        end_stream: false,
        end_headers: false,
        priority: None,
        fragment: Bytes::copy_from_slice(&block[..3]),
    });
    c.send_frame(Frame::Ping {
        ack: false,
        payload: *b"12345678",
    });
    c.expect_goaway(ErrorCode::PROTOCOL_ERROR);
}

#[test]
fn continuation_for_another_stream_is_protocol_error() {
    let mut c = Client::handshake(ServerConfig::default());
    let block = request_block("/test.Echo/Unary", "application/grpc");
    c.send_frame(Frame::Headers {
        stream_id: 1,
        end_stream: false,
        end_headers: false,
        priority: None,
        fragment: Bytes::copy_from_slice(&block[..3]),
    });
    c.send_frame(Frame::Continuation {
        stream_id: 3,
        end_headers: true,
        fragment: Bytes::copy_from_slice(&block[3..]),
    });
    c.expect_goaway(ErrorCode::PROTOCOL_ERROR);
}

#[test]
fn headers_split_over_continuations_work() {
    let mut c = Client::handshake(ServerConfig::default());
    let block = request_block("/test.Echo/Unary", "application/grpc");
    c.send_frame(Frame::Headers {
        stream_id: 1,
        end_stream: false,
        end_headers: false,
        priority: None,
        fragment: Bytes::copy_from_slice(&block[..5]),
    });
    c.send_frame(Frame::Continuation {
        stream_id: 1,
        end_headers: false,
        fragment: Bytes::copy_from_slice(&block[5..9]),
    });
    c.send_frame(Frame::Continuation {
        stream_id: 1,
        end_headers: true,
        fragment: Bytes::copy_from_slice(&block[9..]),
    });
    c.send_frame(data(1, grpc_message(b"hi"), true));
    let f = c.expect(|f| matches!(f, Frame::Data { .. }), "echoed DATA");
    let Frame::Data { data, .. } = f else {
        unreachable!()
    };
    assert_eq!(&data[..], &grpc_message(b"hi")[..]);
    let f = c.expect(
        |f| {
            matches!(
                f,
                Frame::Headers {
                    end_stream: true,
                    ..
                }
            )
        },
        "trailers",
    );
    let Frame::Headers { fragment, .. } = f else {
        unreachable!()
    };
    let _response_headers = c.seen.iter().find_map(|f| match f {
        Frame::Headers {
            end_stream: false,
            fragment,
            ..
        } => Some(fragment.clone()),
        _ => None,
    });
    let trailers = c.decode(&_response_headers.map(|b| b.to_vec()).unwrap_or_default());
    assert!(trailers.contains(&(":status".into(), "200".into())));
    let trailers = c.decode(&fragment);
    assert_eq!(trailers, vec![("grpc-status".to_string(), "0".to_string())]);
}

#[test]
fn headers_on_closed_stream_is_stream_closed() {
    let mut c = Client::handshake(ServerConfig::default());
    c.request(1, "/test.Echo/NoSuchMethod", true);
    c.expect(
        |f| {
            matches!(
                f,
                Frame::Headers {
                    stream_id: 1,
                    end_stream: true,
                    ..
                }
            )
        },
        "Trailers-Only response",
    );
    c.request(1, "/test.Echo/NoSuchMethod", true);
    c.expect_goaway(ErrorCode::STREAM_CLOSED);
}

#[test]
fn even_stream_id_is_protocol_error() {
    let mut c = Client::handshake(ServerConfig::default());
    c.request(2, "/test.Echo/Unary", true);
    c.expect_goaway(ErrorCode::PROTOCOL_ERROR);
}

#[test]
fn data_on_idle_stream_is_protocol_error() {
    let mut c = Client::handshake(ServerConfig::default());
    c.send_frame(data(5, Bytes::from_static(b"x"), false));
    c.expect_goaway(ErrorCode::PROTOCOL_ERROR);
}

#[test]
fn streams_over_the_limit_are_refused() {
    let config = ServerConfig {
        max_concurrent_streams: 2,
        ..ServerConfig::default()
    };
    let mut c = Client::handshake(config);
    c.request(1, "/test.Echo/Hang", false);
    c.request(3, "/test.Echo/Hang", false);
    c.request(5, "/test.Echo/Hang", false);
    c.expect_rst(5, ErrorCode::REFUSED_STREAM);
}

#[test]
fn client_reset_cancels_the_handler() {
    let mut c = Client::handshake(ServerConfig::default());
    c.request(1, "/test.Echo/Hang", false);
    c.send_frame(Frame::RstStream {
        stream_id: 1,
        error_code: ErrorCode::CANCEL,
    });
    // The stream is gone: DATA on it is ignored, the connection lives on.
    c.send_frame(data(1, Bytes::from_static(b"late"), false));
    c.send_frame(Frame::Ping {
        ack: false,
        payload: *b"afterrst",
    });
    c.expect(|f| matches!(f, Frame::Ping { ack: true, .. }), "PING ACK");
    assert!(!c.seen.iter().any(|f| matches!(f, Frame::GoAway { .. })));
}

#[test]
fn non_grpc_content_type_gets_http_415() {
    let mut c = Client::handshake(ServerConfig::default());
    let block = request_block("/test.Echo/Unary", "text/plain");
    c.send_frame(Frame::Headers {
        stream_id: 1,
        end_stream: true,
        end_headers: true,
        priority: None,
        fragment: Bytes::from(block),
    });
    let f = c.expect(
        |f| matches!(f, Frame::Headers { stream_id: 1, .. }),
        "415 response",
    );
    let Frame::Headers {
        fragment,
        end_stream,
        ..
    } = f
    else {
        unreachable!()
    };
    assert!(end_stream);
    let fields = c.decode(&fragment);
    assert!(
        fields.contains(&(":status".into(), "415".into())),
        "{fields:?}"
    );
}

#[test]
fn compressed_message_in_an_unknown_encoding_is_unimplemented() {
    // (Without grpc-encoding the answer is INTERNAL: see tests/abuse.rs.)
    let mut c = Client::handshake(ServerConfig::default());
    let mut block = request_block("/test.Echo/Unary", "application/grpc");
    hpack::encoder::encode_field(&mut block, b"grpc-encoding", b"gzip");
    c.send_frame(Frame::Headers {
        stream_id: 1,
        end_stream: false,
        end_headers: true,
        priority: None,
        fragment: Bytes::from(block),
    });
    c.send_frame(data(1, Bytes::from_static(b"\x01\0\0\0\x01x"), true));
    let f = c.expect(
        |f| {
            matches!(
                f,
                Frame::Headers {
                    stream_id: 1,
                    end_stream: true,
                    ..
                }
            )
        },
        "status",
    );
    let Frame::Headers { fragment, .. } = f else {
        unreachable!()
    };
    let fields = c.decode(&fragment);
    assert!(
        fields.contains(&("grpc-status".into(), "12".into())),
        "{fields:?}"
    );
    assert!(
        fields
            .iter()
            .any(|(n, v)| n == "grpc-message"
                && v.starts_with("grpc: Decompressor is not installed")),
        "{fields:?}"
    );
}

#[test]
fn message_over_limit_is_resource_exhausted() {
    let config = ServerConfig {
        max_recv_message_bytes: 100,
        ..ServerConfig::default()
    };
    let mut c = Client::handshake(config);
    c.request(1, "/test.Echo/Unary", false);
    c.send_frame(data(1, grpc_message(&[1u8; 101]), true));
    let f = c.expect(
        |f| {
            matches!(
                f,
                Frame::Headers {
                    stream_id: 1,
                    end_stream: true,
                    ..
                }
            )
        },
        "status",
    );
    let Frame::Headers { fragment, .. } = f else {
        unreachable!()
    };
    let fields = c.decode(&fragment);
    assert!(
        fields.contains(&("grpc-status".into(), "8".into())),
        "{fields:?}"
    );
    assert!(
        fields.contains(&(
            "grpc-message".into(),
            "grpc: received message larger than max (101 vs. 100)".into()
        )),
        "{fields:?}"
    );
}

#[test]
fn settings_flag_bits_and_unknown_frames_are_tolerated() {
    let mut c = Client::handshake(ServerConfig::default());
    c.send(&[0, 0, 3, 0xfa, 0xff, 0, 0, 0, 0, 1, 2, 3]);
    c.send_frame(Frame::Ping {
        ack: false,
        payload: *b"unknown!",
    });
    c.expect(|f| matches!(f, Frame::Ping { ack: true, .. }), "PING ACK");
    let _ = flag::ACK;
}

#[test]
fn deadline_expiry_sends_deadline_exceeded() {
    let mut c = Client::handshake(ServerConfig::default());
    let mut block = request_block("/test.Echo/Hang", "application/grpc");
    hpack::encoder::encode_field(&mut block, b"grpc-timeout", b"100m");
    c.send_frame(Frame::Headers {
        stream_id: 1,
        end_stream: false,
        end_headers: true,
        priority: None,
        fragment: Bytes::from(block),
    });
    let f = c.expect(
        |f| {
            matches!(
                f,
                Frame::Headers {
                    stream_id: 1,
                    end_stream: true,
                    ..
                }
            )
        },
        "DEADLINE_EXCEEDED",
    );
    let Frame::Headers { fragment, .. } = f else {
        unreachable!()
    };
    let fields = c.decode(&fragment);
    assert!(
        fields.contains(&("grpc-status".into(), "4".into())),
        "{fields:?}"
    );
    assert!(
        fields.contains(&("grpc-message".into(), "context deadline exceeded".into())),
        "{fields:?}"
    );
    // The client had not finished sending: the server stops it with RST_STREAM(NO_ERROR).
    c.expect_rst(1, ErrorCode::NO_ERROR);
}

#[test]
fn curl_non_grpc_requests_get_an_http_answer() {
    // curl (an independent HTTP/2 client) with prior knowledge: a GET gets 405, a POST
    // with a non-gRPC content-type gets 415, and neither hangs.
    if std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("curl not installed; skipping");
        return;
    }
    let server = support::start_server(ServerConfig::default());
    let url = format!("http://{}/test.Echo/Unary", server.addr);
    let run = |extra: &[&str]| {
        let out = std::process::Command::new("curl")
            .args([
                "--http2-prior-knowledge",
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "5",
            ])
            .args(extra)
            .arg(&url)
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(run(&[]), "405");
    // No request body: the server answers 415 on the headers alone, and when a body is still
    // being sent it ends the stream with RST_STREAM(NO_ERROR) (RFC 9113 §8.1). curl 7.88.1
    // then sometimes reports 000 instead of the 415 it received (2 runs in 20 with a body);
    // that early answer and its RST_STREAM are checked with raw frames in the test above.
    assert_eq!(
        run(&["-X", "POST", "-H", "content-type: text/plain"]),
        "415"
    );
}

// ----- limits (src/http2/limits.rs) with small settings -----

#[test]
fn idle_connection_gets_graceful_goaway() {
    let config = ServerConfig {
        idle_timeout: Some(Duration::from_millis(300)),
        ..ServerConfig::default()
    };
    let mut c = Client::handshake(config);
    c.expect_goaway(ErrorCode::NO_ERROR);
}

#[test]
fn a_connection_with_an_open_stream_is_not_idle() {
    let config = ServerConfig {
        idle_timeout: Some(Duration::from_millis(300)),
        ..ServerConfig::default()
    };
    let mut c = Client::handshake(config);
    c.request(1, "/test.Echo/Hang", false);
    std::thread::sleep(Duration::from_millis(900));
    c.send_frame(Frame::Ping {
        ack: false,
        payload: *b"stillup!",
    });
    c.expect(|f| matches!(f, Frame::Ping { ack: true, .. }), "PING ACK");
    assert!(!c.seen.iter().any(|f| matches!(f, Frame::GoAway { .. })));
}

#[test]
fn slow_handshake_is_closed() {
    let config = ServerConfig {
        handshake_timeout: Duration::from_millis(300),
        ..ServerConfig::default()
    };
    let mut c = Client::connect(config);
    c.send(&frame::PREFACE[..10]);
    c.expect_eof();
}

#[test]
fn keepalive_pings_and_closes_a_silent_client() {
    let config = ServerConfig {
        keepalive_interval: Some(Duration::from_millis(200)),
        keepalive_timeout: Duration::from_millis(300),
        ..ServerConfig::default()
    };
    let mut c = Client::handshake(config);
    // Answering keeps the connection: any frame from the client counts.
    let ping = c.expect(
        |f| matches!(f, Frame::Ping { ack: false, .. }),
        "keepalive PING",
    );
    let Frame::Ping { payload, .. } = ping else {
        unreachable!()
    };
    c.send_frame(Frame::Ping { ack: true, payload });
    c.seen.clear();
    c.expect(
        |f| matches!(f, Frame::Ping { ack: false, .. }),
        "second PING",
    );
    // Silence after a ping ends it, without GOAWAY (as grpc-go does).
    c.expect_eof();
    assert!(!c.seen.iter().any(|f| matches!(f, Frame::GoAway { .. })));
}

#[test]
fn pings_beyond_the_keepalive_policy_get_too_many_pings() {
    let mut c = Client::handshake(ServerConfig::default());
    c.request(1, "/test.Echo/Hang", false);
    // grpc-go's policy: two strikes allowed, the third ping too soon ends the connection.
    for i in 0..4u8 {
        c.send_frame(Frame::Ping {
            ack: false,
            payload: [i; 8],
        });
    }
    let f = c.expect(|f| matches!(f, Frame::GoAway { .. }), "GOAWAY");
    let Frame::GoAway {
        error_code,
        debug_data,
        ..
    } = f
    else {
        unreachable!()
    };
    assert_eq!(error_code, ErrorCode::ENHANCE_YOUR_CALM);
    assert_eq!(&debug_data[..], b"too_many_pings");
    let acks = c
        .seen
        .iter()
        .filter(|f| matches!(f, Frame::Ping { ack: true, .. }))
        .count();
    assert_eq!(acks, 3, "the pings within the policy are answered");
}

#[test]
fn provoking_too_many_resets_gets_enhance_your_calm() {
    let config = ServerConfig {
        max_concurrent_streams: 1,
        ..ServerConfig::default()
    };
    let mut c = Client::handshake(config);
    c.request(1, "/test.Echo/Hang", false);
    // Each further stream is refused: an RST_STREAM we write for the client's excess.
    for i in 1..=1100u32 {
        c.request(1 + 2 * i, "/test.Echo/Hang", false);
    }
    let f = c.expect(|f| matches!(f, Frame::GoAway { .. }), "GOAWAY");
    let Frame::GoAway { error_code, .. } = f else {
        unreachable!()
    };
    assert_eq!(error_code, ErrorCode::ENHANCE_YOUR_CALM);
    let refused = c
        .seen
        .iter()
        .filter(|f| matches!(f, Frame::RstStream { .. }))
        .count();
    assert_eq!(refused, 1025, "refusals before the GOAWAY");
}
