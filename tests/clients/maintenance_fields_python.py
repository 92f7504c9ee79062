"""Every Maintenance and Cluster RPC, from an independent client (Python grpcio, gRPC
C-core's HTTP/2), with the raw response bytes decoded by hand so that every field on the
wire shows, whichever .proto version knows it. Prints one JSON line per call: the field
numbers present, the header's field numbers, chosen values, and for a failed call its gRPC
code and details. The Rust test (tests/maintenance_fields.rs) runs this against real etcd
3.4 and tern and compares. Usage: maintenance_fields_python.py HOST PORT
"""

import json
import sys

import grpc

host, port = sys.argv[1], int(sys.argv[2])
channel = grpc.insecure_channel(f"{host}:{port}")


def varint(value):
    out = b""
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def field(number, value):
    """One protobuf field: ints as varints, bytes/str as length-delimited."""
    if isinstance(value, int):
        return varint(number << 3) + varint(value)
    if isinstance(value, str):
        value = value.encode()
    return varint(number << 3 | 2) + varint(len(value)) + value


def read_varint(data, i):
    shift = value = 0
    while True:
        b = data[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7


def decode(data):
    """Raw message bytes -> {field number: [values]} (varints as ints, others as bytes)."""
    fields, i = {}, 0
    while i < len(data):
        tag, i = read_varint(data, i)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, i = read_varint(data, i)
        elif wire == 2:
            n, i = read_varint(data, i)
            value, i = data[i : i + n], i + n
        elif wire == 5:
            value, i = int.from_bytes(data[i : i + 4], "little"), i + 4
        elif wire == 1:
            value, i = int.from_bytes(data[i : i + 8], "little"), i + 8
        else:
            raise ValueError(f"wire type {wire}")
        fields.setdefault(number, []).append(value)
    return fields


def shape(raw):
    """What the comparison looks at: the fields present, the header's, their values."""
    fields = decode(raw)
    out = {"fields": sorted(fields)}
    if 1 in fields:
        header = decode(fields[1][0])
        out["header"] = sorted(header)
        out["header_values"] = {str(k): v[0] for k, v in header.items()}
    out["values"] = {
        str(k): [v if isinstance(v, int) else v.hex() for v in vs]
        for k, vs in fields.items()
        if k != 1
    }
    return out


def unary(service, method, request=b""):
    call = channel.unary_unary(
        f"/etcdserverpb.{service}/{method}",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    try:
        return shape(call(request, timeout=30))
    except grpc.RpcError as e:
        return {"code": e.code().name, "details": e.details()}


def emit(name, result):
    print(json.dumps({"call": name, **result}, sort_keys=True), flush=True)


# The key space both servers get, so that hashes and revisions can be compared.
kv_put = channel.unary_unary(
    "/etcdserverpb.KV/Put", request_serializer=lambda b: b, response_deserializer=lambda b: b
)
kv_compact = channel.unary_unary(
    "/etcdserverpb.KV/Compact",
    request_serializer=lambda b: b,
    response_deserializer=lambda b: b,
)
for i in range(5):
    kv_put(field(1, f"key{i}") + field(2, f"value{i}"), timeout=30)
kv_put(field(1, "key0") + field(2, "again"), timeout=30)
kv_compact(field(1, 3) + field(2, 1), timeout=30)  # revision 3, physical

status = unary("Maintenance", "Status")
emit("Status", status)
emit("Hash", unary("Maintenance", "Hash"))
emit("HashKV", unary("Maintenance", "HashKV"))
emit("HashKV rev 5", unary("Maintenance", "HashKV", field(1, 5)))
emit("HashKV compacted", unary("Maintenance", "HashKV", field(1, 2)))
emit("HashKV future", unary("Maintenance", "HashKV", field(1, 1000)))
emit("Alarm GET", unary("Maintenance", "Alarm"))
member_id = status["header_values"]["2"]
# Alarm ACTIVATE NOSPACE for this member, then DEACTIVATE it (AlarmType NOSPACE = 1).
alarm = field(2, member_id) + field(3, 1)
emit("Alarm ACTIVATE", unary("Maintenance", "Alarm", field(1, 1) + alarm))
emit("Alarm GET raised", unary("Maintenance", "Alarm"))
emit("Alarm DEACTIVATE", unary("Maintenance", "Alarm", field(1, 2) + alarm))
emit("Defragment", unary("Maintenance", "Defragment"))
emit("MoveLeader self", unary("Maintenance", "MoveLeader", field(1, member_id)))
emit("MoveLeader unknown", unary("Maintenance", "MoveLeader", field(1, 12345)))
emit("Downgrade", unary("Maintenance", "Downgrade", field(1, 0) + field(2, "3.4")))

snapshot = channel.unary_stream(
    "/etcdserverpb.Maintenance/Snapshot",
    request_serializer=lambda b: b,
    response_deserializer=lambda b: b,
)
messages = list(snapshot(b"", timeout=60))
first, last = shape(messages[0]), shape(messages[-1])
# Blob bytes and sizes differ by server: keep which fields each message has, and whether
# remaining_bytes (2) is 0 on the last.
for m in (first, last):
    m.pop("values")
    m.pop("header_values", None)
emit("Snapshot first", first)
emit("Snapshot last", last)

emit("MemberList", unary("Cluster", "MemberList"))
added = unary("Cluster", "MemberAdd", field(1, "http://127.0.0.1:1") + field(2, 1))
emit("MemberAdd learner", added)
learner = decode(bytes.fromhex(added["values"]["2"][0]))[1][0]
emit(
    "MemberUpdate",
    unary("Cluster", "MemberUpdate", field(1, learner) + field(2, "http://127.0.0.1:2")),
)
emit("MemberPromote unready", unary("Cluster", "MemberPromote", field(1, learner)))
emit("MemberRemove", unary("Cluster", "MemberRemove", field(1, learner)))
emit("MemberRemove unknown", unary("Cluster", "MemberRemove", field(1, learner)))
emit("MemberPromote unknown", unary("Cluster", "MemberPromote", field(1, 12345)))
emit("MemberUpdate unknown", unary("Cluster", "MemberUpdate", field(1, 12345) + field(2, "http://127.0.0.1:3")))
