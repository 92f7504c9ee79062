//! Shared test harness: a tern gRPC server on its own glommio executor thread, bound to
//! a free loopback port, serving a small echo/streaming test service (not part of src/).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::mpsc;
use std::time::Duration;

use bytes::Bytes;
use tern::grpc::serve_connection;
use tern::grpc::{Call, Code, Handler, Status};
use tern::http2::{ServerConfig, ShutdownSignal};

/// The test service. Methods:
/// - Unary: echoes one message.
/// - ServerStream: request is `count u32 BE | size u32 BE`; replies with `count` messages
///   of `size` bytes, each filled with its index.
/// - Bidi: echoes every message as it arrives.
/// - Status: request is `code u8 | message utf8`; finishes with that status, sending nothing.
/// - Hang: never reads and never answers, until cancelled.
pub fn test_handler() -> Handler {
    Rc::new(|call: Call| Box::pin(serve(call)))
}

async fn serve(mut call: Call) {
    match call.method.as_str() {
        "/test.Echo/Unary" => match call.requests.next().await {
            Some(Ok(message)) => {
                if call.responses.send(message).await.is_ok() {
                    call.responses.finish(Status::ok());
                }
            }
            Some(Err(status)) => call.responses.finish(status),
            None => call
                .responses
                .finish(Status::new(Code::InvalidArgument, "no request")),
        },
        "/test.Echo/ServerStream" => {
            let Some(Ok(request)) = call.requests.next().await else {
                return call
                    .responses
                    .finish(Status::new(Code::InvalidArgument, "bad request"));
            };
            if request.len() != 8 {
                return call
                    .responses
                    .finish(Status::new(Code::InvalidArgument, "bad request"));
            }
            let count = u32::from_be_bytes(request[..4].try_into().unwrap());
            let size = u32::from_be_bytes(request[4..].try_into().unwrap()) as usize;
            for i in 0..count {
                if call
                    .responses
                    .send(Bytes::from(vec![i as u8; size]))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            call.responses.finish(Status::ok());
        }
        "/test.Echo/Bidi" => {
            while let Some(message) = call.requests.next().await {
                match message {
                    Ok(message) => {
                        if call.responses.send(message).await.is_err() {
                            return;
                        }
                    }
                    Err(status) => return call.responses.finish(status),
                }
            }
            call.responses.finish(Status::ok());
        }
        "/test.Echo/Status" => {
            let Some(Ok(request)) = call.requests.next().await else {
                return call
                    .responses
                    .finish(Status::new(Code::InvalidArgument, "bad request"));
            };
            let code = Code::from_u8(request[0]).unwrap_or(Code::Unknown);
            let message = String::from_utf8_lossy(&request[1..]).into_owned();
            call.responses.finish(Status::new(code, message));
        }
        "/test.Echo/Hang" => {
            call.responses.closed().await;
        }
        other => call.responses.finish(Status::new(
            Code::Unimplemented,
            format!("unknown method {other}"),
        )),
    }
}

pub struct TestServer {
    pub addr: SocketAddr,
}

/// Starts a server thread with `config`; it lives until the test process exits.
pub fn start_server(config: ServerConfig) -> TestServer {
    let (tx, rx) = mpsc::channel();
    glommio::LocalExecutorBuilder::default()
        .name("tern-test-server")
        .spawn(move || async move {
            let listener = glommio::net::TcpListener::bind("127.0.0.1:0").unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            let config = Rc::new(config);
            let handler = test_handler();
            loop {
                let Ok(stream) = listener.accept().await else {
                    continue;
                };
                let (config, handler) = (config.clone(), handler.clone());
                glommio::spawn_local(async move {
                    let _ = serve_connection(stream, config, handler, ShutdownSignal::new()).await;
                })
                .detach();
            }
        })
        .unwrap();
    let addr = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    TestServer { addr }
}
