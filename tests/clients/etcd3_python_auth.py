"""Second client stack for auth: the Python `etcd3` library on grpcio (gRPC C-core's
HTTP/2) against a tern endpoint. Users, roles and permissions are set up through the
library's generated Auth stub, auth is enabled, then clients log in with user and
password (the library's Authenticate and `token` metadata) and are allowed or refused
as etcd would: reads, writes, txns, watches, leases, admin calls, bad passwords.
Exits non-zero with a message on the first behaviour that differs from etcd's.

Usage: PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python python3 etcd3_python_auth.py HOST PORT
"""

import sys

import etcd3
import etcd3.etcdrpc as rpc
import grpc
from etcd3.etcdrpc.auth_pb2 import Permission


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


DENIED = "etcdserver: permission denied"


def login(host, port, user, password):
    """etcd3.client with credentials: it calls Authenticate and sends the token as `token`
    metadata. It also attaches the token as gRPC call credentials, which grpcio refuses to
    send over a plaintext channel; the metadata alone is what etcd reads, so those go."""
    c = etcd3.client(host=host, port=port, user=user, password=password)
    c.call_credentials = None
    c.watcher._credentials = None
    return c


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    admin = etcd3.client(host=host, port=port)
    auth = rpc.AuthStub(admin.channel)
    auth.UserAdd(rpc.AuthUserAddRequest(name="root", password="rootpw"))
    auth.UserGrantRole(rpc.AuthUserGrantRoleRequest(user="root", role="root"))
    auth.UserAdd(rpc.AuthUserAddRequest(name="app", password="apppw"))
    auth.RoleAdd(rpc.AuthRoleAddRequest(name="app"))
    perm = Permission(permType=Permission.READWRITE, key=b"app/", range_end=b"app0")
    auth.RoleGrantPermission(rpc.AuthRoleGrantPermissionRequest(name="app", perm=perm))
    auth.UserGrantRole(rpc.AuthUserGrantRoleRequest(user="app", role="app"))
    roles = auth.RoleList(rpc.AuthRoleListRequest()).roles
    expect(list(roles) == ["app"], "roles %r" % roles)
    admin.put("outside", "x")
    expect_error(lambda: auth.UserRevokeRole(rpc.AuthUserRevokeRoleRequest(name="nobody", role="app")),
                 grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: user name not found",
                 "revoke from a missing user")
    auth.AuthEnable(rpc.AuthEnableRequest())
    # Auth is on now: no credentials means no user.
    expect_error(lambda: admin.get("outside"), grpc.StatusCode.INVALID_ARGUMENT,
                 "etcdserver: user name is empty", "get without credentials")
    expect_error(lambda: login(host, port, "app", "wrong"),
                 grpc.StatusCode.INVALID_ARGUMENT,
                 "etcdserver: authentication failed, invalid user ID or password", "bad password")

    app = login(host, port, "app", "apppw")
    app.put("app/a", "1")
    value, _ = app.get("app/a")
    expect(value == b"1", "app/a = %r" % value)
    expect(len(list(app.get_prefix("app/"))) == 1, "prefix read")
    expect_error(lambda: app.get("outside"), grpc.StatusCode.PERMISSION_DENIED, DENIED, "read outside")
    expect_error(lambda: app.put("outside", "y"), grpc.StatusCode.PERMISSION_DENIED, DENIED, "write outside")
    expect_error(lambda: app.delete_prefix("app"), grpc.StatusCode.PERMISSION_DENIED, DENIED,
                 "delete a prefix wider than the grant")
    ok, _ = app.transaction(compare=[app.transactions.value("app/a") == "1"],
                            success=[app.transactions.put("app/b", "2")],
                            failure=[])
    expect(ok, "permitted txn")
    expect_error(lambda: app.transaction(compare=[app.transactions.value("app/a") == "1"],
                                         success=[app.transactions.put("app/c", "3")],
                                         failure=[app.transactions.get("outside")]),
                 grpc.StatusCode.PERMISSION_DENIED, DENIED, "txn with a forbidden failure branch")
    expect_error(lambda: app.transaction(compare=[app.transactions.version("outside") > 0],
                                         success=[], failure=[]),
                 grpc.StatusCode.PERMISSION_DENIED, DENIED, "txn comparing a forbidden key")

    # A watch inside the grant sees the next write.
    events, cancel = app.watch("app/w")
    app.put("app/w", "seen")
    event = next(events)
    expect(event.value == b"seen", "watch event %r" % event)
    cancel()

    lease = app.lease(30)
    app.put("app/leased", "v", lease=lease)
    info = app.get_lease_info(lease.id)
    expect(info.keys == [b"app/leased"], "lease keys %r" % info.keys)
    lease.revoke()
    expect(app.get("app/leased")[0] is None, "revoke deleted the key")

    # etcd's Maintenance admin check sends the auth package's error unmapped.
    expect_error(lambda: app.defragment(), grpc.StatusCode.UNKNOWN, "auth: permission denied", "defragment")
    app_auth = rpc.AuthStub(app.channel)
    expect_error(lambda: app_auth.UserList(rpc.AuthUserListRequest(), metadata=app.metadata),
                 grpc.StatusCode.PERMISSION_DENIED, DENIED, "user list as app")

    root = login(host, port, "root", "rootpw")
    expect(root.get("outside")[0] == b"x", "root reads everything")
    root_auth = rpc.AuthStub(root.channel)
    users = root_auth.UserList(rpc.AuthUserListRequest(), metadata=root.metadata).users
    expect(list(users) == ["app", "root"], "users %r" % users)
    root_auth.AuthDisable(rpc.AuthDisableRequest(), metadata=root.metadata)
    expect(admin.get("outside")[0] == b"x", "anyone reads once auth is off")
    print("OK")


if __name__ == "__main__":
    main()
