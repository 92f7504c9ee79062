//! Unary-call plumbing shared by every service: read exactly one request message, decode
//! it, run the handler, encode the reply, finish with a status.

use std::future::Future;

use prost::Message;

use crate::error::EtcdError;
use crate::grpc::{Call, Code, RequestStream, Status};

/// Maps an etcd error to the gRPC status etcd sends for it (code and exact text).
pub fn status_from_error(error: EtcdError) -> Status {
    let code = match error.grpc_code() {
        0 => Code::Ok,
        1 => Code::Cancelled,
        3 => Code::InvalidArgument,
        4 => Code::DeadlineExceeded,
        5 => Code::NotFound,
        6 => Code::AlreadyExists,
        7 => Code::PermissionDenied,
        8 => Code::ResourceExhausted,
        9 => Code::FailedPrecondition,
        10 => Code::Aborted,
        11 => Code::OutOfRange,
        12 => Code::Unimplemented,
        13 => Code::Internal,
        14 => Code::Unavailable,
        15 => Code::DataLoss,
        16 => Code::Unauthenticated,
        _ => Code::Unknown,
    };
    Status::new(code, error.message().to_string())
}

/// Serves one unary call: `handle` gets the decoded request and the size of its encoding
/// (for etcd's --max-request-bytes check).
pub async fn unary<Req, Resp, F, Fut>(call: Call, handle: F)
where
    Req: Message + Default + prost::Name,
    Resp: Message,
    F: FnOnce(Req, usize) -> Fut,
    Fut: Future<Output = Result<Resp, EtcdError>>,
{
    unary_prechecked(call, |_| Ok(()), handle).await
}

/// [`unary`], with `precheck` run on the encoded request before it is decoded: its error
/// is the call's answer (used to bound recursion before a recursive decode).
pub async fn unary_prechecked<Req, Resp, F, Fut>(
    call: Call,
    precheck: impl FnOnce(&[u8]) -> Result<(), EtcdError>,
    handle: F,
) where
    Req: Message + Default + prost::Name,
    Resp: Message,
    F: FnOnce(Req, usize) -> Fut,
    Fut: Future<Output = Result<Resp, EtcdError>>,
{
    let Call {
        mut requests,
        mut responses,
        ..
    } = call;
    let (request, encoded_bytes) = match read_request(&mut requests, precheck).await {
        Ok(read) => read,
        Err(status) => return responses.finish(status),
    };
    match handle(request, encoded_bytes).await {
        Ok(reply) => {
            if responses.send(reply.encode_to_vec().into()).await.is_ok() {
                responses.finish(Status::new(Code::Ok, String::new()));
            }
        }
        Err(error) => responses.finish(status_from_error(error)),
    }
}

/// Decodes a client's request message: protobuf groups are refused first
/// (`proto::groups`: prost would recurse on them without a limit), then prost decodes.
pub fn decode_request<Req: Message + Default + prost::Name>(
    message: bytes::Bytes,
) -> Result<Req, String> {
    crate::proto::groups::refuse_groups(&message, &Req::full_name())
        .map_err(|e| format!("failed to decode Protobuf message: {e}"))?;
    Req::decode(message).map_err(|e| e.to_string())
}

/// Reads and decodes the one request message of a unary or server-streaming call, after
/// `precheck` on its encoding; returns it with its encoded size, or the status the call
/// must end with.
pub async fn read_request<Req: Message + Default + prost::Name>(
    requests: &mut RequestStream,
    precheck: impl FnOnce(&[u8]) -> Result<(), EtcdError>,
) -> Result<(Req, usize), Status> {
    let message = match requests.next().await {
        Some(Ok(message)) => message,
        Some(Err(status)) => return Err(status),
        // grpc-go's wording when a unary call's client half-closes without a message.
        None => {
            return Err(Status::new(
                Code::Internal,
                "grpc: client streaming protocol violation: get <nil>, want <EOF>".to_string(),
            ))
        }
    };
    let encoded_bytes = message.len();
    if let Err(error) = precheck(&message) {
        return Err(status_from_error(error));
    }
    match decode_request::<Req>(message) {
        Ok(request) => Ok((request, encoded_bytes)),
        Err(e) => Err(Status::new(
            Code::Internal,
            format!("grpc: error unmarshalling request: {e}"),
        )),
    }
}
