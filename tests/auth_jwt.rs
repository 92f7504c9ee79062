//! JWT tokens (`--auth-token jwt,...`) against real etcd 3.4.23: tern and etcd started
//! with the same RSA key pair (made by openssl) and given the same auth changes (so the
//! same auth revision) each accept the other's tokens, and refuse the same requests.
//! Also etcdctl logging in to tern with JWTs, a token made stale by an auth change
//! ("revision of auth store is old"), and a token past its ttl ("invalid auth token").
//! Clients: the real etcdctl, and tonic (raw codec, tern's prost types) to carry one
//! server's token to the other.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message;
use tern::proto::etcdserverpb as pb;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use common::raw_grpc::RawCodec;

struct Keys {
    dir: PathBuf,
}

impl Keys {
    fn new() -> Keys {
        let dir = std::env::temp_dir().join(format!(
            "tern-jwt-keys-{}-{}",
            std::process::id(),
            common::free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let run = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .output()
                .expect("openssl (test.sh installs it)");
            assert!(out.status.success(), "openssl {args:?}: {out:?}");
        };
        run(&["genrsa", "-out", "k.pem", "2048"]);
        run(&["rsa", "-in", "k.pem", "-pubout", "-out", "k.pub"]);
        Keys { dir }
    }

    fn flag(&self, ttl: &str) -> String {
        format!(
            "jwt,pub-key={},priv-key={},sign-method=RS256,ttl={ttl}",
            self.dir.join("k.pub").display(),
            self.dir.join("k.pem").display()
        )
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Real etcd 3.4 on free loopback ports in a fresh data dir, killed on drop.
struct Etcd {
    child: Child,
    client_port: u16,
    data_dir: PathBuf,
}

impl Etcd {
    fn start(extra: &[&str]) -> Etcd {
        let (client_port, peer_port) = (common::free_port(), common::free_port());
        let data_dir = std::env::temp_dir().join(format!(
            "tern-jwt-etcd-{}-{client_port}",
            std::process::id()
        ));
        let client = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let child = Command::new("etcd")
            .args(["--name", "e", "--data-dir"])
            .arg(&data_dir)
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("e={peer}")])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd (test.sh installs etcd-server)");
        let etcd = Etcd {
            child,
            client_port,
            data_dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !common::etcdctl(&etcd.endpoint(), &["get", "x"], None)
            .status
            .success()
        {
            assert!(Instant::now() < deadline, "etcd did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        etcd
    }

    fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// The same users, roles and auth changes on a server, so two servers end at the same
/// auth revision: alice may read `foo` only.
fn set_up(endpoint: &str) {
    for args in [
        &["user", "add", "root:rootpw"][..],
        &["role", "add", "root"],
        &["user", "grant-role", "root", "root"],
        &["user", "add", "alice:alicepw"],
        &["role", "add", "reader"],
        &["role", "grant-permission", "reader", "read", "foo"],
        &["user", "grant-role", "alice", "reader"],
        &["put", "foo", "bar"],
        &["auth", "enable"],
    ] {
        let out = common::etcdctl(endpoint, args, None);
        assert!(out.status.success(), "{args:?} on {endpoint}: {out:?}");
    }
}

async fn grpc(endpoint: &str) -> tonic::client::Grpc<Channel> {
    let channel = Channel::from_shared(format!("http://{endpoint}"))
        .unwrap()
        .connect()
        .await
        .expect("connect");
    tonic::client::Grpc::new(channel)
}

async fn call<Req: Message, Resp: Message + Default>(
    endpoint: &str,
    path: &'static str,
    req: Req,
    token: Option<&str>,
) -> Result<Resp, Status> {
    let mut client = grpc(endpoint).await;
    client.ready().await.unwrap();
    let mut request = Request::new(Bytes::from(req.encode_to_vec()));
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("token", token.parse().unwrap());
    }
    let reply = client
        .unary(request, PathAndQuery::from_static(path), RawCodec)
        .await?;
    Ok(Resp::decode(reply.into_inner()).unwrap())
}

async fn login(endpoint: &str) -> String {
    let reply: pb::AuthenticateResponse = call(
        endpoint,
        "/etcdserverpb.Auth/Authenticate",
        pb::AuthenticateRequest {
            name: "alice".into(),
            password: "alicepw".into(),
        },
        None,
    )
    .await
    .expect("authenticate");
    reply.token
}

async fn get_foo(endpoint: &str, token: &str) -> Result<pb::RangeResponse, Status> {
    call(
        endpoint,
        "/etcdserverpb.KV/Range",
        pb::RangeRequest {
            key: Bytes::from_static(b"foo"),
            ..Default::default()
        },
        Some(token),
    )
    .await
}

async fn put_foo(endpoint: &str, token: &str) -> Result<pb::PutResponse, Status> {
    call(
        endpoint,
        "/etcdserverpb.KV/Put",
        pb::PutRequest {
            key: Bytes::from_static(b"foo"),
            value: Bytes::from_static(b"x"),
            ..Default::default()
        },
        Some(token),
    )
    .await
}

#[tokio::test]
async fn tern_and_etcd_accept_each_others_jwts() {
    let keys = Keys::new();
    let flag = keys.flag("10m");
    let etcd = Etcd::start(&["--auth-token", &flag]);
    let tern = common::TernServer::start_with(&["--auth-token", &flag, "--bcrypt-cost", "4"]);
    let (etcd_ep, tern_ep) = (etcd.endpoint(), tern.endpoint());
    set_up(&etcd_ep);
    set_up(&tern_ep);

    let from_etcd = login(&etcd_ep).await;
    let from_tern = login(&tern_ep).await;
    assert_eq!(from_tern.split('.').count(), 3, "a JWS: {from_tern}");
    for (server, token, what) in [
        (&tern_ep, &from_etcd, "etcd's token on tern"),
        (&etcd_ep, &from_tern, "tern's token on etcd"),
        (&tern_ep, &from_tern, "tern's token on tern"),
    ] {
        let got = get_foo(server, token).await.expect(what);
        assert_eq!(&got.kvs[0].value[..], b"bar", "{what}");
        let status = put_foo(server, token).await.unwrap_err();
        assert_eq!(
            (status.code(), status.message()),
            (Code::PermissionDenied, "etcdserver: permission denied"),
            "{what}"
        );
    }
    let status = get_foo(&tern_ep, "not.a.jwt").await.unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::Unauthenticated, "etcdserver: invalid auth token")
    );

    // Any auth change leaves earlier tokens behind, on both servers alike.
    for server in [&etcd_ep, &tern_ep] {
        let out = common::etcdctl(
            server,
            &["--user=root:rootpw", "role", "add", "later"],
            None,
        );
        assert!(out.status.success(), "{out:?}");
    }
    for (server, token) in [
        (&tern_ep, &from_etcd),
        (&etcd_ep, &from_tern),
        (&tern_ep, &from_tern),
    ] {
        let status = get_foo(server, token).await.unwrap_err();
        assert_eq!(
            (status.code(), status.message()),
            (
                Code::InvalidArgument,
                "etcdserver: revision of auth store is old"
            )
        );
    }
    // etcdctl logs in afresh each time: JWT logins work through it as with simple tokens.
    let out = common::etcdctl(&tern_ep, &["--user=alice:alicepw", "get", "foo"], None);
    assert_eq!(common::stdout(&out), "foo\nbar\n", "{out:?}");
}

#[tokio::test]
async fn a_jwt_past_its_ttl_is_an_invalid_token() {
    let keys = Keys::new();
    let tern =
        common::TernServer::start_with(&["--auth-token", &keys.flag("1s"), "--bcrypt-cost", "4"]);
    let endpoint = tern.endpoint();
    set_up(&endpoint);
    let token = login(&endpoint).await;
    get_foo(&endpoint, &token).await.expect("a fresh token");
    // `exp` has one-second resolution: two seconds on, the token has expired for sure.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let status = get_foo(&endpoint, &token).await.unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::Unauthenticated, "etcdserver: invalid auth token")
    );
}
