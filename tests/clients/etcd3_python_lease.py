"""Second client stack for leases and locks: the Python `etcd3` library on grpcio (gRPC
C-core's HTTP/2) against a tern endpoint: lease grant, refresh (keep-alive stream),
time-to-live with keys, revoke deleting attached keys, etcd's lease errors, and the
library's lock recipe (a lease plus a create-revision txn). Exits non-zero with a message
on the first behaviour that differs from etcd's.

Usage: PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python python3 etcd3_python_lease.py HOST PORT
"""

import sys

import etcd3
import grpc


def expect(cond, what):
    if not cond:
        print("FAIL: " + what, file=sys.stderr)
        sys.exit(1)


def expect_error(fn, code, details, what):
    try:
        fn()
    except Exception as e:  # etcd3 wraps some gRPC errors in its own exception types
        cause = e if isinstance(e, grpc.RpcError) else (e.__cause__ or e.__context__)
        expect(isinstance(cause, grpc.RpcError), "%s: unexpected %r" % (what, e))
        expect(cause.code() == code, "%s: code %s, want %s" % (what, cause.code(), code))
        expect(cause.details() == details, "%s: details %r, want %r" % (what, cause.details(), details))
        return
    expect(False, what + ": no error")


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    c = etcd3.client(host=host, port=port)

    # grant, attach, time-to-live with keys
    lease = c.lease(30)
    expect(lease.id > 0, "server-chosen lease id %r" % lease.id)
    expect(lease.granted_ttl == 30, "granted ttl %r" % lease.granted_ttl)
    c.put("lk1", "v1", lease=lease)
    c.put("lk2", "v2", lease=lease)
    c.put("plain", "p")
    keys = sorted(k.decode() for k in lease.keys)
    expect(keys == ["lk1", "lk2"], "attached keys %r" % keys)
    expect(0 < lease.remaining_ttl <= 30, "remaining ttl %r" % lease.remaining_ttl)
    _, meta = c.get("lk1")
    expect(meta.lease_id == lease.id, "key's lease %r" % meta.lease_id)

    # client-chosen id; a taken id is refused
    mine = c.lease(40, lease_id=0x1234abcd)
    expect(mine.id == 0x1234abcd, "client-chosen id %r" % mine.id)
    expect_error(lambda: c.lease(40, lease_id=0x1234abcd), grpc.StatusCode.FAILED_PRECONDITION,
                 "etcdserver: lease already exists", "grant of a taken id")
    expect_error(lambda: c.lease(9000000001), grpc.StatusCode.OUT_OF_RANGE,
                 "etcdserver: too large lease TTL", "grant above the maximum TTL")
    short = c.lease(1)
    expect(short.granted_ttl == 2, "minimum TTL: %r" % short.granted_ttl)

    # refresh runs the KeepAlive stream
    replies = list(lease.refresh())
    expect(len(replies) == 1 and replies[0].TTL == 30, "keep-alive reply %r" % replies)
    expect(replies[0].ID == lease.id, "keep-alive id")

    # a put naming a missing lease
    expect_error(lambda: c.put("x", "y", lease=0x777), grpc.StatusCode.NOT_FOUND,
                 "etcdserver: requested lease not found", "put with a missing lease")

    # revoke deletes the attached keys in one revision
    lease.revoke()
    expect(c.get("lk1")[0] is None and c.get("lk2")[0] is None, "keys outlived the revoke")
    expect(c.get("plain")[0] == b"p", "unattached key deleted")
    expect(lease.remaining_ttl == -1, "revoked lease ttl %r" % lease.remaining_ttl)
    expect_error(lambda: c.revoke_lease(lease.id), grpc.StatusCode.NOT_FOUND,
                 "etcdserver: requested lease not found", "second revoke")
    replies = list(c.refresh_lease(lease.id))
    expect(replies[0].TTL == 0, "keep-alive of a revoked lease: TTL %r" % replies[0].TTL)

    # the library's lock recipe
    lock = c.lock("py-lock", ttl=20)
    expect(lock.acquire(timeout=5), "lock not acquired")
    expect(lock.is_acquired(), "lock not held")
    holder, meta = c.get("/locks/py-lock")
    expect(holder == lock.uuid, "lock key value")
    expect(meta.lease_id == lock.lease.id, "lock key not on the lock's lease")
    expect(lock.refresh()[0].TTL == 20, "lock refresh")
    expect(lock.release(), "lock release")
    expect(c.get("/locks/py-lock")[0] is None, "lock key left after release")
    # a lock whose lease is revoked is free again
    lock2 = c.lock("py-lock", ttl=20)
    expect(lock2.acquire(timeout=5), "second lock not acquired")
    lock2.lease.revoke()
    expect(not lock2.is_acquired(), "lock held after its lease was revoked")
    lock3 = c.lock("py-lock", ttl=20)
    expect(lock3.acquire(timeout=5), "lock not free after lease revoke")
    lock3.release()

    print("OK")


if __name__ == "__main__":
    main()
