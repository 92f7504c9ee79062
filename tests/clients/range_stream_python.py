"""KV.RangeStream (etcd 3.7) from an independent client: Python grpcio (gRPC C-core's
HTTP/2) with the etcd3 package's generated RangeRequest/RangeResponse classes and a
small hand-written stub for the stream, whose RangeStreamResponse wrapper (field 1:
range_response) is parsed here by hand. Checks, for many requests, that the chunks merged
as proto.Merge merges them equal the unary Range answer, that only the last chunk carries
header/more/count, and etcd's refusals. Usage: range_stream_python.py HOST PORT
"""

import sys

import etcd3
import grpc
from etcd3.etcdrpc import rpc_pb2

host, port = sys.argv[1], int(sys.argv[2])
client = etcd3.client(host=host, port=port)
channel = grpc.insecure_channel(
    f"{host}:{port}", options=[("grpc.max_receive_message_length", 64 << 20)]
)
range_unary = channel.unary_unary(
    "/etcdserverpb.KV/Range",
    request_serializer=rpc_pb2.RangeRequest.SerializeToString,
    response_deserializer=rpc_pb2.RangeResponse.FromString,
)


def read_varint(data, i):
    shift = value = 0
    while True:
        b = data[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7


def range_response_of(wrapper):
    """RangeStreamResponse bytes -> the RangeResponse bytes of its field 1."""
    i, out = 0, b""
    while i < len(wrapper):
        tag, i = read_varint(wrapper, i)
        assert tag & 7 == 2, f"unexpected wire type in RangeStreamResponse: {tag}"
        n, i = read_varint(wrapper, i)
        if tag >> 3 == 1:
            out += wrapper[i : i + n]  # repeated occurrences merge, as protobuf says
        i += n
    return out


range_stream = channel.unary_stream(
    "/etcdserverpb.KV/RangeStream",
    request_serializer=rpc_pb2.RangeRequest.SerializeToString,
    response_deserializer=range_response_of,
)


def streamed(req):
    chunks = [rpc_pb2.RangeResponse.FromString(c) for c in range_stream(req, timeout=60)]
    merged = rpc_pb2.RangeResponse()
    for c in chunks:
        merged.MergeFrom(c)
    return chunks, merged


# 12 MiB under rs/: more than tern holds for one unary answer, so the unary Range takes
# its two-pass path, and RangeStream sends many chunks.
value = b"v" * 4096
for i in range(3000):
    client.put(f"rs/{i:05d}", value + str(i).encode())
old_rev = client.put("rt/a", "1").header.revision
client.put("rs/00001", "overwritten")

cases = {
    "prefix": dict(key=b"rs/", range_end=b"rs0"),
    "limit 7": dict(key=b"rs/", range_end=b"rs0", limit=7),
    "limit 2500": dict(key=b"rs/", range_end=b"rs0", limit=2500),
    "limit above count": dict(key=b"rs/", range_end=b"rs0", limit=5000),
    "keys only": dict(key=b"rs/", range_end=b"rs0", keys_only=True),
    "from key": dict(key=b"rs/02990", range_end=b"\0"),
    "old revision": dict(key=b"rs/", range_end=b"rs0", revision=old_rev),
    "serializable": dict(key=b"rs/", range_end=b"rs0", serializable=True),
    "empty range": dict(key=b"zz", range_end=b"zzz"),
    "one key": dict(key=b"rt/a"),
    "missing key": dict(key=b"nope"),
    "sort by key ascending": dict(
        key=b"rs/", range_end=b"rs0", sort_order=1, sort_target=0
    ),
    "count only": dict(key=b"rs/", range_end=b"rs0", count_only=True),
}
for name, fields in cases.items():
    req = rpc_pb2.RangeRequest(**fields)
    unary = range_unary(req, timeout=60)
    chunks, merged = streamed(req)
    assert merged == unary, f"{name}: merged chunks differ from Range's answer"
    for c in chunks[:-1]:
        assert not c.HasField("header") and c.count == 0 and not c.more, name
    last = chunks[-1]
    assert last.HasField("header") and last.header.revision == unary.header.revision, name
    if name in ("prefix", "old revision", "serializable"):
        assert len(chunks) > 5, f"{name}: only {len(chunks)} chunks"
    if name == "old revision":
        assert merged.kvs[1].value.startswith(value), "not read at the old revision"
    print(f"{name}: {len(chunks)} chunks, {len(merged.kvs)} kvs, count {merged.count}, more {merged.more}")

for name, fields, text in [
    ("sort by mod", dict(sort_target=3, sort_order=2), "custom sort orders"),
    ("filter", dict(min_mod_revision=2), "revision filters"),
]:
    req = rpc_pb2.RangeRequest(key=b"rs/", range_end=b"rs0", **fields)
    try:
        list(range_stream(req, timeout=10))
        raise AssertionError(f"{name}: RangeStream was not refused")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.UNIMPLEMENTED, (name, e.code())
        assert e.details() == f"RangeStream does not support {text}", e.details()
try:
    list(range_stream(rpc_pb2.RangeRequest(key=b""), timeout=10))
    raise AssertionError("empty key was not refused")
except grpc.RpcError as e:
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e.code()
    assert e.details() == "etcdserver: key is not provided", e.details()
print("OK")
