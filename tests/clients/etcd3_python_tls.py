"""The Python `etcd3` library on grpcio (gRPC C-core's HTTP/2 and TLS stack) against a tern
TLS endpoint that requires client certificates: with the client certificate it puts,
gets, runs a txn and sees a watch event; without one its call fails. Exits non-zero with a
message on the first difference.

Usage: PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python python3 etcd3_python_tls.py \
    HOST PORT CA_FILE CERT_FILE KEY_FILE
"""

import sys
import threading

import etcd3


def expect(cond, what):
    if not cond:
        print("FAIL: " + what, file=sys.stderr)
        sys.exit(1)


host, port, ca, cert, key = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]

client = etcd3.client(host=host, port=port, ca_cert=ca, cert_cert=cert, cert_key=key, timeout=10)
client.put("py-tls/a", "1")
value, meta = client.get("py-tls/a")
expect(value == b"1", "get after put: %r" % (value,))

ok, _ = client.transaction(
    compare=[client.transactions.value("py-tls/a") == "1"],
    success=[client.transactions.put("py-tls/b", "2")],
    failure=[],
)
expect(ok, "txn compare should succeed")
expect(client.get("py-tls/b")[0] == b"2", "txn success branch put")

events = []
seen = threading.Event()


def on_event(response):
    events.extend(response.events)
    seen.set()


watch_id = client.add_watch_callback("py-tls/w", on_event)
client.put("py-tls/w", "x")
expect(seen.wait(10), "watch event over TLS")
expect(events[0].value == b"x", "watch event value")
client.cancel_watch(watch_id)
client.close()

# Without a client certificate the handshake is refused.
anonymous = etcd3.client(host=host, port=port, ca_cert=ca, timeout=3)
try:
    anonymous.get("py-tls/a")
except Exception:
    pass
else:
    expect(False, "a client without a certificate must be refused")
anonymous.close()
print("OK")
