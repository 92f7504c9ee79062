//! etcd's `/v3` JSON gateway (grpc-gateway v1 semantics, as etcd 3.4 serves it at `/v3/`
//! and `/v3beta/`): `POST /v3/<path>` with the request message in
//! proto3 JSON, answered with the response message in proto3 JSON, or with
//! grpc-gateway's error object `{"error":…,"message":…,"code":…}` and the HTTP status
//! grpc-gateway maps the gRPC code to.
//!
//! How: the JSON is mapped to protobuf with prost-reflect over tern's own descriptors, and
//! the call goes to this core's own gRPC server over an in-memory HTTP/2 connection
//! (`loopback`, which says why not over a socket as etcd's gateway dials): every check a
//! gRPC client meets applies unchanged, and the gateway works whatever the member's client
//! URLs are (https-only, with client-cert auth, unix sockets).
//!
//! The mapping is etcd's: field names as in the .proto (`create_revision`, `TTL`,
//! `dbSize`), 64-bit integers as strings, bytes as base64, enums by name, fields at their
//! default value left out, unknown input fields ignored. An empty body is the empty
//! message. The `Authorization` header is passed on as the `authorization` metadata.
//!
//! Streaming methods (Watch, LeaseKeepAlive, Observe; Snapshot once tern has it) answer
//! one JSON line per message, as grpc-gateway streams them.

mod loopback;

pub use loopback::LocalGrpc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use prost_reflect::{
    DescriptorPool, DeserializeOptions, DynamicMessage, MethodDescriptor, SerializeOptions,
};

use crate::http1::{Request, Response};

/// How long one gateway call may take end to end (the server's own request timeouts are
/// shorter; this only bounds a call the loopback connection would otherwise hold).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// tern's protobuf descriptors (written by build.rs).
static DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/file_descriptor_set.bin"));

fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(DESCRIPTOR_SET).expect("build.rs wrote a valid descriptor set")
    })
}

/// (gateway path after the version prefix, gRPC service, method, streams).
const ROUTES: &[(&str, &str, &str, bool)] = &[
    ("kv/range", "etcdserverpb.KV", "Range", false),
    ("kv/put", "etcdserverpb.KV", "Put", false),
    ("kv/deleterange", "etcdserverpb.KV", "DeleteRange", false),
    ("kv/txn", "etcdserverpb.KV", "Txn", false),
    ("kv/compaction", "etcdserverpb.KV", "Compact", false),
    ("watch", "etcdserverpb.Watch", "Watch", true),
    ("lease/grant", "etcdserverpb.Lease", "LeaseGrant", false),
    ("lease/revoke", "etcdserverpb.Lease", "LeaseRevoke", false),
    (
        "kv/lease/revoke",
        "etcdserverpb.Lease",
        "LeaseRevoke",
        false,
    ),
    (
        "lease/keepalive",
        "etcdserverpb.Lease",
        "LeaseKeepAlive",
        true,
    ),
    (
        "lease/timetolive",
        "etcdserverpb.Lease",
        "LeaseTimeToLive",
        false,
    ),
    (
        "kv/lease/timetolive",
        "etcdserverpb.Lease",
        "LeaseTimeToLive",
        false,
    ),
    ("lease/leases", "etcdserverpb.Lease", "LeaseLeases", false),
    (
        "kv/lease/leases",
        "etcdserverpb.Lease",
        "LeaseLeases",
        false,
    ),
    (
        "cluster/member/add",
        "etcdserverpb.Cluster",
        "MemberAdd",
        false,
    ),
    (
        "cluster/member/remove",
        "etcdserverpb.Cluster",
        "MemberRemove",
        false,
    ),
    (
        "cluster/member/update",
        "etcdserverpb.Cluster",
        "MemberUpdate",
        false,
    ),
    (
        "cluster/member/list",
        "etcdserverpb.Cluster",
        "MemberList",
        false,
    ),
    (
        "cluster/member/promote",
        "etcdserverpb.Cluster",
        "MemberPromote",
        false,
    ),
    (
        "maintenance/alarm",
        "etcdserverpb.Maintenance",
        "Alarm",
        false,
    ),
    (
        "maintenance/status",
        "etcdserverpb.Maintenance",
        "Status",
        false,
    ),
    (
        "maintenance/defragment",
        "etcdserverpb.Maintenance",
        "Defragment",
        false,
    ),
    // Hash and HashKV share this path in etcd's annotations; Hash is matched first.
    (
        "maintenance/hash",
        "etcdserverpb.Maintenance",
        "Hash",
        false,
    ),
    (
        "maintenance/snapshot",
        "etcdserverpb.Maintenance",
        "Snapshot",
        true,
    ),
    (
        "maintenance/transfer-leadership",
        "etcdserverpb.Maintenance",
        "MoveLeader",
        false,
    ),
    ("auth/enable", "etcdserverpb.Auth", "AuthEnable", false),
    ("auth/disable", "etcdserverpb.Auth", "AuthDisable", false),
    (
        "auth/authenticate",
        "etcdserverpb.Auth",
        "Authenticate",
        false,
    ),
    ("auth/user/add", "etcdserverpb.Auth", "UserAdd", false),
    ("auth/user/get", "etcdserverpb.Auth", "UserGet", false),
    ("auth/user/list", "etcdserverpb.Auth", "UserList", false),
    ("auth/user/delete", "etcdserverpb.Auth", "UserDelete", false),
    (
        "auth/user/changepw",
        "etcdserverpb.Auth",
        "UserChangePassword",
        false,
    ),
    (
        "auth/user/grant",
        "etcdserverpb.Auth",
        "UserGrantRole",
        false,
    ),
    (
        "auth/user/revoke",
        "etcdserverpb.Auth",
        "UserRevokeRole",
        false,
    ),
    ("auth/role/add", "etcdserverpb.Auth", "RoleAdd", false),
    ("auth/role/get", "etcdserverpb.Auth", "RoleGet", false),
    ("auth/role/list", "etcdserverpb.Auth", "RoleList", false),
    ("auth/role/delete", "etcdserverpb.Auth", "RoleDelete", false),
    (
        "auth/role/grant",
        "etcdserverpb.Auth",
        "RoleGrantPermission",
        false,
    ),
    (
        "auth/role/revoke",
        "etcdserverpb.Auth",
        "RoleRevokePermission",
        false,
    ),
    ("lock/lock", "v3lockpb.Lock", "Lock", false),
    ("lock/unlock", "v3lockpb.Lock", "Unlock", false),
    (
        "election/campaign",
        "v3electionpb.Election",
        "Campaign",
        false,
    ),
    (
        "election/proclaim",
        "v3electionpb.Election",
        "Proclaim",
        false,
    ),
    ("election/leader", "v3electionpb.Election", "Leader", false),
    ("election/observe", "v3electionpb.Election", "Observe", true),
    ("election/resign", "v3electionpb.Election", "Resign", false),
];

/// Whether `path` is under the gateway's prefixes.
pub fn is_gateway_path(path: &str) -> bool {
    path.starts_with("/v3/") || path.starts_with("/v3beta/")
}

/// Serves one gateway request with `grpc`, this core's own gRPC server.
pub async fn serve(grpc: &LocalGrpc, request: &Request) -> Response {
    let path = request.path();
    let rest = path
        .strip_prefix("/v3/")
        .or_else(|| path.strip_prefix("/v3beta/"))
        .unwrap_or("");
    let Some(&(_, service, method, streams)) = ROUTES.iter().find(|(p, ..)| *p == rest) else {
        return Response::error(404, "Not Found");
    };
    if request.method != "POST" {
        return Response::error(405, "Method Not Allowed");
    }
    let Some(descriptor) = method_descriptor(service, method) else {
        return error_response(
            12,
            &format!("unknown method {method} for service {service}"),
        );
    };
    if streams {
        return serve_stream(grpc, service, method, descriptor, request).await;
    }
    let body: &[u8] = if request.body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        &request.body
    };
    let mut json = serde_json::Deserializer::from_slice(body);
    let options = DeserializeOptions::new().deny_unknown_fields(false);
    let message =
        match DynamicMessage::deserialize_with_options(descriptor.input(), &mut json, &options)
            .and_then(|m| json.end().map(|()| m))
        {
            Ok(message) => message,
            Err(e) => return error_response(3, &e.to_string()),
        };
    let metadata = metadata_of(request);
    let grpc_path = format!("/{service}/{method}");
    let encoded = prost::Message::encode_to_vec(&message);
    let deadline = Instant::now() + CALL_TIMEOUT;
    let reply = match loopback::unary(grpc, &grpc_path, &metadata, &encoded, deadline).await {
        Ok(reply) => reply,
        Err(e) => return error_response(14, &e),
    };
    if reply.code != 0 {
        return error_response(reply.code, &reply.message);
    }
    let bytes = reply.response.unwrap_or_default();
    let response = match DynamicMessage::decode(descriptor.output(), bytes) {
        Ok(response) => response,
        Err(e) => return error_response(13, &format!("cannot decode the response: {e}")),
    };
    let mut out = serde_json::Serializer::new(Vec::new());
    let options = SerializeOptions::new()
        .use_proto_field_name(true)
        .skip_default_fields(true);
    if let Err(e) = response.serialize_with_options(&mut out, &options) {
        return error_response(13, &format!("cannot encode the response: {e}"));
    }
    let mut answer = Response::new(200, "application/json", out.into_inner());
    answer.set_header("Grpc-Metadata-Content-Type", "application/grpc");
    answer
}

fn metadata_of(request: &Request) -> Vec<(String, String)> {
    let mut metadata = Vec::new();
    if let Some(token) = request.header("authorization") {
        metadata.push((
            "authorization".to_string(),
            String::from_utf8_lossy(token).into_owned(),
        ));
    }
    metadata
}

/// A streaming method: every JSON object of the body is one request message (then the
/// request side closes, as grpc-gateway's CloseSend), and every response message is
/// one line `{"result":…}` of a chunked body; a failed call ends with grpc-gateway's
/// stream error line `{"error":{…}}`. The call lasts until it ends or the HTTP client
/// goes away (which drops the loopback connection, and so the call).
async fn serve_stream(
    grpc: &LocalGrpc,
    service: &str,
    method: &str,
    descriptor: MethodDescriptor,
    request: &Request,
) -> Response {
    let options = DeserializeOptions::new().deny_unknown_fields(false);
    let mut messages = Vec::new();
    for value in
        serde_json::Deserializer::from_slice(&request.body).into_iter::<serde_json::Value>()
    {
        let parsed = value.map_err(|e| e.to_string()).and_then(|value| {
            DynamicMessage::deserialize_with_options(descriptor.input(), value, &options)
                .map_err(|e| e.to_string())
        });
        match parsed {
            Ok(message) => messages.push(prost::Message::encode_to_vec(&message)),
            Err(e) => return error_response(3, &e),
        }
    }
    let grpc_path = format!("/{service}/{method}");
    let mut call = match loopback::Call::open(grpc, &grpc_path, &metadata_of(request)).await {
        Ok(call) => call,
        Err(e) => return error_response(14, &e),
    };
    for message in &messages {
        call.queue_message(message);
    }
    call.close_send();
    let output = descriptor.output();
    // The response head waits for the first message, as grpc-gateway's does (it reads the
    // gRPC stream's headers, which come with the first message, before writing its own):
    // a client that sees the head knows its watch is created, so its writes from then on
    // are seen by it.
    let first = next_line(&mut call, &output).await;
    let rest = futures::stream::unfold(first.1.then_some(call), move |state| {
        let output = output.clone();
        async move {
            let mut call = state?;
            let (line, more) = next_line(&mut call, &output).await;
            Some((line?, more.then_some(call)))
        }
    });
    let lines = futures::StreamExt::chain(futures::stream::iter(first.0), rest);
    let mut answer = Response::streaming("application/json", Box::pin(lines));
    answer.set_header("Grpc-Metadata-Content-Type", "application/grpc");
    answer
}

/// The next line of a streamed answer (None: the call ended cleanly) and whether more may
/// follow.
async fn next_line(
    call: &mut loopback::Call,
    output: &prost_reflect::MessageDescriptor,
) -> (Option<bytes::Bytes>, bool) {
    let line = match call.next().await {
        Ok(loopback::Event::Message(bytes)) => match result_line(output, bytes) {
            Ok(line) => return (Some(line), true),
            Err(e) => stream_error_line(13, &e),
        },
        Ok(loopback::Event::End { code: 0, .. }) => return (None, false),
        Ok(loopback::Event::End { code, message }) => stream_error_line(code, &message),
        Err(e) => stream_error_line(14, &e),
    };
    (Some(line), false)
}

/// `{"result":<message>}` and a newline.
fn result_line(
    output: &prost_reflect::MessageDescriptor,
    bytes: bytes::Bytes,
) -> Result<bytes::Bytes, String> {
    let message = DynamicMessage::decode(output.clone(), bytes).map_err(|e| e.to_string())?;
    let mut out = serde_json::Serializer::new(b"{\"result\":".to_vec());
    let options = SerializeOptions::new()
        .use_proto_field_name(true)
        .skip_default_fields(true);
    message
        .serialize_with_options(&mut out, &options)
        .map_err(|e| e.to_string())?;
    let mut line = out.into_inner();
    line.extend_from_slice(b"}\n");
    Ok(line.into())
}

/// grpc-gateway v1's in-stream error object, and a newline.
fn stream_error_line(code: u8, message: &str) -> bytes::Bytes {
    let text = serde_json::to_string(message).unwrap_or_else(|_| "\"\"".into());
    let status = http_status(code);
    let status_text = serde_json::to_string(crate::http1::message::reason(status))
        .unwrap_or_else(|_| "\"\"".into());
    format!(
        "{{\"error\":{{\"grpc_code\":{code},\"http_code\":{status},\"message\":{text},\"http_status\":{status_text}}}}}\n"
    )
    .into()
}

fn method_descriptor(service: &str, method: &str) -> Option<MethodDescriptor> {
    pool()
        .get_service_by_name(service)?
        .methods()
        .find(|m| m.name() == method)
}

/// grpc-gateway v1's error body and its HTTP status for a gRPC code
/// (`runtime.HTTPStatusFromCode`).
fn error_response(code: u8, message: &str) -> Response {
    let text = serde_json::to_string(message).unwrap_or_else(|_| "\"\"".into());
    let body = format!("{{\"error\":{text},\"message\":{text},\"code\":{code}}}");
    Response::new(http_status(code), "application/json", body)
}

fn http_status(code: u8) -> u16 {
    match code {
        0 => 200,
        1 => 408,
        2 => 500,
        3 => 400,
        4 => 504,
        5 => 404,
        6 => 409,
        7 => 403,
        8 => 429,
        9 => 412,
        10 => 409,
        11 => 400,
        12 => 501,
        13 => 500,
        14 => 503,
        15 => 500,
        16 => 401,
        _ => 500,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_names_a_method_of_the_descriptors() {
        for (path, service, method, _) in ROUTES {
            assert!(method_descriptor(service, method).is_some(), "{path}");
        }
    }
}
