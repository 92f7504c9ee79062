"""A JSON-gateway client in another language: OpenStack's etcd3gw (Python, HTTP/JSON over
etcd's /v3 grpc-gateway, on requests) runs a KV, lease, watch and lock flow against the
server at argv[1]:argv[2], over https with a client certificate when argv[3:6] give the
CA, certificate and key files. Prints OK at the end; any mismatch raises."""

import sys
import threading

from etcd3gw.client import Etcd3Client


def main(host, port, ca=None, cert=None, key=None):
    if ca:
        client = Etcd3Client(host=host, port=int(port), timeout=20, protocol="https",
                             ca_cert=ca, cert_cert=cert, cert_key=key)
    else:
        client = Etcd3Client(host=host, port=int(port), timeout=20)
    assert client.api_path == "/v3/", client.api_path

    # KV
    assert client.put("gw/a", "1") is True
    assert client.put("gw/b", "2") is True
    assert client.get("gw/a") == [b"1"], client.get("gw/a")
    assert sorted(v for v, _ in client.get_prefix("gw/")) == [b"1", b"2"]
    assert client.create("gw/a", "x") is False
    assert client.create("gw/c", "3") is True
    assert client.replace("gw/c", "3", "4") is True
    assert client.replace("gw/c", "3", "5") is False
    assert client.get("gw/c") == [b"4"]
    assert client.delete("gw/b") is True
    assert client.delete("gw/b") is False
    assert client.get("gw/b") == []

    # Lease
    lease = client.lease(ttl=60)
    assert 0 < lease.ttl() <= 60, lease.ttl()
    assert client.put("gw/leased", "v", lease=lease) is True
    assert lease.keys() == [b"gw/leased"], lease.keys()
    assert lease.refresh() == 60
    assert lease.revoke() is True
    assert client.get("gw/leased") == []

    # Watch: the events of writes made after the watch is created.
    events, cancel = client.watch("gw/w")
    seen = []

    def collect():
        for event in events:
            seen.append(event)
            if len(seen) == 2:
                return

    reader = threading.Thread(target=collect)
    reader.start()
    # etcd3gw creates the watch before returning; these writes follow it.
    client.put("gw/w", "one")
    client.delete("gw/w")
    reader.join(timeout=20)
    cancel()
    assert len(seen) == 2, seen
    assert seen[0]["kv"]["value"] == b"one", seen[0]
    assert seen[1].get("type") == "DELETE", seen[1]

    # Lock (etcd3gw's, built on a lease and a txn).
    lock = client.lock(id="gw-lock", ttl=30)
    assert lock.acquire() is True
    assert lock.is_acquired() is True
    other = client.lock(id="gw-lock", ttl=30)
    assert other.is_acquired() is False
    assert lock.release() is True
    assert lock.is_acquired() is False

    status = client.status()
    assert status["version"] == "3.4.23", status
    print("OK")


if __name__ == "__main__":
    main(*sys.argv[1:])
