//! Interop: tonic (an independent gRPC client stack on tokio/hyper/h2, dev-dependency
//! only) calls the test echo service served by tern's hand-wired transport, with a raw
//! bytes codec, over one loopback connection: unary, server streaming, bidi, messages
//! larger than the flow-control windows both ways, grpc-timeout expiry, non-ASCII status
//! messages, and many concurrent streams.

mod common;
mod support;

use std::time::Duration;

use bytes::{BufMut, Bytes};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use common::raw_grpc::RawCodec;

async fn client() -> tonic::client::Grpc<Channel> {
    use std::sync::OnceLock;
    static SERVER: OnceLock<std::net::SocketAddr> = OnceLock::new();
    let addr =
        *SERVER.get_or_init(|| support::start_server(tern::http2::ServerConfig::default()).addr);
    let channel = tokio::time::timeout(
        Duration::from_secs(10),
        Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect(),
    )
    .await
    .expect("connect timed out")
    .expect("connect");
    tonic::client::Grpc::new(channel)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
}

async fn unary(
    grpc: &mut tonic::client::Grpc<Channel>,
    path: &'static str,
    body: Bytes,
    timeout: Option<Duration>,
) -> Result<Bytes, Status> {
    grpc.ready()
        .await
        .map_err(|e| Status::unknown(e.to_string()))?;
    let mut request = Request::new(body);
    if let Some(t) = timeout {
        // Set grpc-timeout by hand: tonic's set_timeout also enforces it client-side,
        // which would race the server's DEADLINE_EXCEEDED.
        let value = format!("{}m", t.as_millis());
        request
            .metadata_mut()
            .insert("grpc-timeout", value.parse().unwrap());
    }
    let call = grpc.unary(request, PathAndQuery::from_static(path), RawCodec);
    tokio::time::timeout(Duration::from_secs(20), call)
        .await
        .expect("call hung")
        .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_echo_small_and_large() {
    const BIGSIZE: u32 = 1_572_864;
    let mut grpc = client().await;
    let reply = unary(
        &mut grpc,
        "/test.Echo/Unary",
        Bytes::from_static(b"hello"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(&reply[..], b"hello");
    // 1.5 MiB: over the 64 KiB default windows of tonic's client and our stream window.
    let big: Bytes = (0..BIGSIZE)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into();
    let reply = unary(&mut grpc, "/test.Echo/Unary", big.clone(), None)
        .await
        .unwrap();
    assert_eq!(reply, big);
    let empty = unary(&mut grpc, "/test.Echo/Unary", Bytes::new(), None)
        .await
        .unwrap();
    assert!(empty.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_streaming_many_and_large_messages() {
    let mut grpc = client().await;
    for (count, size) in [(1000u32, 10u32), (5, 300_000)] {
        grpc.ready().await.unwrap();
        let mut body = Vec::new();
        body.put_u32(count);
        body.put_u32(size);
        let response = grpc
            .server_streaming(
                Request::new(Bytes::from(body)),
                PathAndQuery::from_static("/test.Echo/ServerStream"),
                RawCodec,
            )
            .await
            .unwrap();
        let mut stream = response.into_inner();
        let mut received = 0u32;
        while let Some(message) = tokio::time::timeout(Duration::from_secs(20), stream.message())
            .await
            .expect("stream hung")
            .unwrap()
        {
            assert_eq!(message.len(), size as usize);
            assert!(message.iter().all(|&b| b == received as u8));
            received += 1;
        }
        assert_eq!(received, count);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bidi_echoes_in_order() {
    let mut grpc = client().await;
    grpc.ready().await.unwrap();
    let sizes = [1usize, 100, 70_000, 5, 200_000, 0, 3];
    let messages: Vec<Bytes> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| Bytes::from(vec![i as u8; n]))
        .collect();
    let outgoing = tokio_stream::iter(messages.clone());
    let response = grpc
        .streaming(
            Request::new(outgoing),
            PathAndQuery::from_static("/test.Echo/Bidi"),
            RawCodec,
        )
        .await
        .unwrap();
    let mut stream = response.into_inner();
    let mut got = Vec::new();
    while let Some(m) = tokio::time::timeout(Duration::from_secs(20), stream.message())
        .await
        .expect("bidi hung")
        .unwrap()
    {
        got.push(m);
    }
    assert_eq!(got, messages);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_expiry_is_deadline_exceeded() {
    let mut grpc = client().await;
    let err = unary(
        &mut grpc,
        "/test.Echo/Hang",
        Bytes::from_static(b"x"),
        Some(Duration::from_millis(200)),
    )
    .await
    .unwrap_err();
    // tonic's channel enforces the same grpc-timeout client-side and may win the race
    // (then it reports Cancelled "Timeout expired"); the exact server answer is checked
    // frame by frame in tests/http2_conn.rs (deadline_expiry_sends_deadline_exceeded).
    assert!(
        err.code() == Code::DeadlineExceeded && err.message() == "context deadline exceeded"
            || err.code() == Code::Cancelled,
        "{err:?}"
    );
    // The connection is still good.
    let reply = unary(
        &mut grpc,
        "/test.Echo/Unary",
        Bytes::from_static(b"ok"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(&reply[..], b"ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_with_non_ascii_message_round_trips() {
    let mut grpc = client().await;
    let text = "etcdserver: 请求 100% \"quoted\"\n✓";
    let mut body = vec![2u8];
    body.extend_from_slice(text.as_bytes());
    let err = unary(&mut grpc, "/test.Echo/Status", Bytes::from(body), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unknown);
    assert_eq!(err.message(), text);
    let mut body = vec![16u8];
    body.extend_from_slice(b"etcdserver: invalid auth token");
    let err = unary(&mut grpc, "/test.Echo/Status", Bytes::from(body), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = unary(&mut grpc, "/test.Echo/Nope", Bytes::new(), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_streams_on_one_connection() {
    let grpc = client().await;
    let mut tasks = Vec::new();
    for i in 0..500u32 {
        let mut grpc = grpc.clone();
        tasks.push(tokio::spawn(async move {
            let body = Bytes::from(format!("message {i}").repeat((i % 7 + 1) as usize * 50));
            let reply = unary(&mut grpc, "/test.Echo/Unary", body.clone(), None)
                .await
                .unwrap();
            assert_eq!(reply, body);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}
