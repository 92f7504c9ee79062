"""Second, independent client stack: the Python `etcd3` library on grpcio (gRPC C-core's
HTTP/2), driven against a tern endpoint. Exits non-zero with a message on the first
behaviour that differs from etcd's.

Usage: PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python python3 etcd3_python.py HOST PORT
"""

import sys
import threading

import etcd3
import grpc


def expect(cond, what):
    if not cond:
        print("FAIL: " + what, file=sys.stderr)
        sys.exit(1)


def expect_error(fn, code, details, what):
    try:
        fn()
    except grpc.RpcError as e:
        expect(e.code() == code, "%s: code %s, want %s" % (what, e.code(), code))
        expect(e.details() == details, "%s: details %r, want %r" % (what, e.details(), details))
        return
    except Exception as e:  # etcd3 wraps some errors in its own exception types
        cause = e.__cause__ or e.__context__
        if isinstance(cause, grpc.RpcError):
            expect(cause.code() == code, "%s: code %s, want %s" % (what, cause.code(), code))
            expect(cause.details() == details, "%s: details %r" % (what, cause.details()))
            return
        raise
    expect(False, what + ": no error")


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    c = etcd3.client(host=host, port=port)

    # put / get / metadata
    c.put("foo", "bar")
    value, meta = c.get("foo")
    expect(value == b"bar", "get foo")
    expect(meta.create_revision == 2 and meta.mod_revision == 2 and meta.version == 1, "fresh key revisions")
    c.put("foo", "baz")
    value, meta = c.get("foo")
    expect(value == b"baz" and meta.version == 2 and meta.mod_revision == 3 and meta.create_revision == 2, "overwrite")

    # prefix ranges, sorting
    for i in range(10):
        c.put("pre/%02d" % i, str(i))
    got = [(v, m.key) for v, m in c.get_prefix("pre/", sort_order="descend", sort_target="key")]
    expect([k for _, k in got] == [b"pre/%02d" % i for i in reversed(range(10))], "descending prefix range")
    expect(len(list(c.get_range("pre/03", "pre/07"))) == 4, "range [pre/03, pre/07)")

    # delete
    expect(c.delete("pre/00"), "delete existing key")
    expect(not c.delete("pre/00"), "delete missing key")
    expect(c.delete_prefix("pre/").deleted == 9, "delete prefix count")

    # transactions
    ok, responses = c.transaction(
        compare=[c.transactions.value("foo") == "baz", c.transactions.version("foo") > 1],
        success=[c.transactions.put("foo", "txn"), c.transactions.get("foo")],
        failure=[c.transactions.put("foo", "failed")],
    )
    expect(ok, "txn succeeded")
    expect(responses[1][0][0] == b"txn", "txn read sees its own write")
    ok, _ = c.transaction(compare=[c.transactions.value("foo") == "nope"], success=[], failure=[c.transactions.put("other", "x")])
    expect(not ok and c.get("other")[0] == b"x", "txn failure branch")

    # errors: etcd's codes and texts
    expect_error(lambda: c.put("", "v"), grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: key is not provided", "empty key")
    rev = c.status().raft_index  # any read; status must work too
    expect(c.status().version == "3.4.23", "status version")
    _, meta = c.get("foo")
    c.compact(meta.mod_revision)
    expect_error(lambda: c.compact(meta.mod_revision - 1), grpc.StatusCode.OUT_OF_RANGE,
                 "etcdserver: mvcc: required revision has been compacted", "compacted")
    expect_error(lambda: c.compact(1000000), grpc.StatusCode.OUT_OF_RANGE,
                 "etcdserver: mvcc: required revision is a future revision", "future revision")
    expect_error(lambda: c.put("big", "x" * 1600000), grpc.StatusCode.INVALID_ARGUMENT,
                 "etcdserver: request is too large", "request too large")
    expect_error(lambda: c.put("k", "v", lease=12345), grpc.StatusCode.NOT_FOUND,
                 "etcdserver: requested lease not found", "missing lease")

    # a large value that spans many HTTP/2 frames and flow-control windows, both ways
    big = b"v" * 1000000
    c.put("big", big)
    expect(c.get("big")[0] == big, "1 MB value round trip")

    # many concurrent calls multiplexed over the client's one channel
    errors = []

    def worker(n):
        try:
            for i in range(50):
                c.put("conc/%d/%d" % (n, i), "x")
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    expect(not errors, "concurrent puts: %r" % errors[:1])
    expect(len(list(c.get_prefix("conc/", keys_only=True))) == 16 * 50, "all concurrent puts present")

    members = list(c.members)
    expect(len(members) == 1 and members[0].name == "e2e", "member list")
    print("OK")


if __name__ == "__main__":
    main()
