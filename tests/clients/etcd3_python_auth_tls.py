"""The Python `etcd3` library on grpcio (gRPC C-core's HTTP/2 and TLS stack) against a
tern with --client-cert-auth and auth on, without any user or password: each client runs
as its certificate's common name. alice may read and write under app/, bob has no
permission, a certificate without a CN names no user. Exits non-zero with a message on
the first difference.

Usage: PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python python3 etcd3_python_auth_tls.py \
    HOST PORT PKI_DIR   (PKI_DIR holds ca.pem and <name>.pem/<name>.key)
"""

import os
import sys

import etcd3
import grpc


def expect(cond, what):
    if not cond:
        print("FAIL: " + what, file=sys.stderr)
        sys.exit(1)


host, port, pki = sys.argv[1], int(sys.argv[2]), sys.argv[3]


def client_as(name):
    return etcd3.client(
        host=host,
        port=port,
        ca_cert=os.path.join(pki, "ca.pem"),
        cert_cert=os.path.join(pki, name + ".pem"),
        cert_key=os.path.join(pki, name + ".key"),
        timeout=10,
    )


def refused(call, code, details, what):
    try:
        call()
    except grpc.RpcError as e:
        expect(e.code() == code, "%s: code %s" % (what, e.code()))
        expect(e.details() == details, "%s: details %r" % (what, e.details()))
    else:
        expect(False, what + " should be refused")


alice = client_as("alice")
alice.put("app/py", "1")
value, _ = alice.get("app/py")
expect(value == b"1", "alice reads back app/py: %r" % (value,))
ok, _ = alice.transaction(
    compare=[alice.transactions.value("app/py") == "1"],
    success=[alice.transactions.put("app/py2", "2")],
    failure=[],
)
expect(ok, "alice's txn under app/ succeeds")
expect(alice.get("app/py2")[0] == b"2", "txn put app/py2")
denied = grpc.StatusCode.PERMISSION_DENIED
refused(lambda: alice.put("other/py", "x"), denied, "etcdserver: permission denied", "alice put other/py")
refused(
    lambda: alice.transaction(
        compare=[], success=[alice.transactions.put("other/py", "x")], failure=[]
    ),
    denied,
    "etcdserver: permission denied",
    "alice txn put other/py",
)
alice.close()

bob = client_as("bob")
refused(lambda: bob.get("app/py"), denied, "etcdserver: permission denied", "bob get app/py")
bob.close()

nocn = client_as("nocn")
refused(lambda: nocn.get("app/py"), denied, "etcdserver: permission denied", "no-CN get app/py")
nocn.close()

root = client_as("root")
value, _ = root.get("app/py2")
expect(value == b"2", "root reads app/py2: %r" % (value,))
root.close()
print("OK")
