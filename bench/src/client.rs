//! gRPC connections to the cluster, shared by the benchmark's workers.
//!
//! Mirrors etcd's tools/benchmark (`mustCreateClients`): `--conns` HTTP/2 connections are
//! dialled, connection `i` to endpoint `i % endpoints` (or to the leader's client URLs with
//! `--target-leader`), and `--clients` workers share them round-robin (worker `i` uses
//! connection `i % conns`). Every request carries the auth token as the `token` metadata
//! entry, as clientv3 does, when `--user` is given.

use std::sync::Arc;
use std::time::Duration;

use http::Uri;
use hyper_util::rt::TokioIo;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::transport::{Channel, Endpoint};

use crate::proto::etcdserverpb::{
    auth_client::AuthClient, cluster_client::ClusterClient, kv_client::KvClient,
    lease_client::LeaseClient, maintenance_client::MaintenanceClient, watch_client::WatchClient,
    AuthenticateRequest, MemberListRequest, StatusRequest,
};
use crate::proto::v3lockpb::lock_client::LockClient;
use crate::tls::TlsOptions;
use crate::Global;

/// Largest response a client accepts; clientv3 also allows up to `math.MaxInt32`.
const RESPONSE_BYTES_MAX: usize = i32::MAX as usize;

/// HTTP/2 flow-control windows the client advertises.
const STREAM_WINDOW_BYTES: u32 = 4 << 20;
const CONNECTION_WINDOW_BYTES: u32 = 16 << 20;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One gRPC connection plus the credentials sent with every call on it.
#[derive(Clone)]
pub struct Client {
    channel: Channel,
    token: Option<AsciiMetadataValue>,
}

impl Client {
    /// Wraps `msg` in a request carrying the auth token, if any.
    pub fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(msg);
        if let Some(token) = &self.token {
            request.metadata_mut().insert("token", token.clone());
        }
        request
    }

    pub fn kv(&self) -> KvClient<Channel> {
        KvClient::new(self.channel.clone()).max_decoding_message_size(RESPONSE_BYTES_MAX)
    }
    pub fn watch(&self) -> WatchClient<Channel> {
        WatchClient::new(self.channel.clone()).max_decoding_message_size(RESPONSE_BYTES_MAX)
    }
    pub fn lease(&self) -> LeaseClient<Channel> {
        LeaseClient::new(self.channel.clone())
    }
    pub fn cluster(&self) -> ClusterClient<Channel> {
        ClusterClient::new(self.channel.clone())
    }
    pub fn maintenance(&self) -> MaintenanceClient<Channel> {
        MaintenanceClient::new(self.channel.clone())
    }
    pub fn lock(&self) -> LockClient<Channel> {
        LockClient::new(self.channel.clone())
    }
}

/// Formats a gRPC status the way grpc-go's `status.Error` prints, so error distributions
/// read like those of etcd's tool.
pub fn status_text(status: &tonic::Status) -> String {
    format!(
        "rpc error: code = {:?} desc = {}",
        status.code(),
        status.message()
    )
}

/// An error and its causes, `outer: inner: innermost` (tonic's transport errors say
/// little more than "transport error" on their own).
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        // hyper and rustls repeat their cause in their own text; say each thing once.
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text += &format!(": {cause_text}");
        }
        source = cause.source();
    }
    text
}

/// Splits `http://host:port`, `https://host:port` or `host:port` into (tls?, authority).
fn parse_endpoint(endpoint: &str) -> (bool, String) {
    let endpoint = endpoint.trim();
    if let Some(rest) = endpoint.strip_prefix("https://") {
        (true, rest.trim_end_matches('/').to_string())
    } else if let Some(rest) = endpoint.strip_prefix("http://") {
        (false, rest.trim_end_matches('/').to_string())
    } else {
        (false, endpoint.trim_end_matches('/').to_string())
    }
}

struct Dialer {
    tls: Option<Arc<TlsOptions>>,
    dial_timeout: Option<Duration>,
    token: Option<AsciiMetadataValue>,
}

impl Dialer {
    async fn dial(&self, endpoint: &str) -> Result<Client, BoxError> {
        let (scheme_tls, authority) = parse_endpoint(endpoint);
        // The :scheme stays "http" even over TLS: TLS is done by our connector below, and
        // gRPC servers (grpc-go included) do not check the pseudo-header.
        let mut ep = Endpoint::from_shared(format!("http://{authority}"))?
            .tcp_nodelay(true)
            // Fixed windows large enough that big range responses do not stall on h2's
            // 64 KiB default. Not hyper's adaptive (BDP) window: its PINGs count as
            // strikes against grpc-go's keepalive policy, and etcd then closes the
            // connection with GOAWAY ENHANCE_YOUR_CALM ("too_many_pings").
            .initial_stream_window_size(STREAM_WINDOW_BYTES)
            .initial_connection_window_size(CONNECTION_WINDOW_BYTES);
        if let Some(timeout) = self.dial_timeout {
            ep = ep.connect_timeout(timeout);
        }
        let channel = match (&self.tls, scheme_tls) {
            (None, false) => ep.connect().await?,
            (tls, _) => {
                let tls = match tls {
                    Some(tls) => tls.clone(),
                    None => Arc::new(TlsOptions::default()),
                };
                let connector = tls.connector()?;
                let server_name = tls.server_name(&authority)?;
                ep.connect_with_connector(tower::service_fn(move |uri: Uri| {
                    let connector = connector.clone();
                    let server_name = server_name.clone();
                    async move {
                        let host = uri.host().unwrap_or("127.0.0.1").to_string();
                        let port = uri.port_u16().unwrap_or(2379);
                        let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
                        tcp.set_nodelay(true)?;
                        let stream = connector.connect(server_name, tcp).await?;
                        Ok::<_, std::io::Error>(TokioIo::new(stream))
                    }
                }))
                .await?
            }
        };
        Ok(Client {
            channel,
            token: self.token.clone(),
        })
    }
}

/// Dials `--conns` connections and returns `--clients` handles sharing them round-robin.
pub async fn create_clients(
    global: &Global,
    clients: usize,
    conns: usize,
) -> Result<Vec<Client>, BoxError> {
    let conns = conns.max(1);
    let tls = TlsOptions::from_global(global).map(Arc::new);
    let mut dialer = Dialer {
        tls,
        dial_timeout: (!global.dial_timeout.is_zero()).then_some(global.dial_timeout),
        token: None,
    };
    let mut endpoints: Vec<String> = global.endpoints.clone();
    if endpoints.is_empty() {
        return Err("no --endpoints given".into());
    }
    if let Some(user) = &global.user {
        let (name, password) = crate::auth::credentials(user)?;
        let first = dialer.dial(&endpoints[0]).await?;
        let response = AuthClient::new(first.channel.clone())
            .authenticate(AuthenticateRequest { name, password })
            .await
            .map_err(|s| status_text(&s))?;
        let token: AsciiMetadataValue = MetadataValue::try_from(response.into_inner().token)?;
        dialer.token = Some(token);
    }
    if global.target_leader {
        endpoints = find_leader_endpoints(&dialer, &endpoints).await?;
    }
    let mut connections = Vec::with_capacity(conns);
    for i in 0..conns {
        let endpoint = &endpoints[i % endpoints.len()];
        let client = dialer
            .dial(endpoint)
            .await
            .map_err(|e| format!("dial error: {endpoint}: {}", error_chain(e.as_ref())))?;
        connections.push(client);
    }
    Ok((0..clients.max(1))
        .map(|i| connections[i % conns].clone())
        .collect())
}

/// Asks the cluster who leads and returns that member's client URLs (etcd 3.4's
/// `mustFindLeaderEndpoints`: MemberList, then Status until one endpoint answers).
async fn find_leader_endpoints(
    dialer: &Dialer,
    endpoints: &[String],
) -> Result<Vec<String>, BoxError> {
    let client = dialer.dial(&endpoints[0]).await?;
    let members = client
        .cluster()
        .member_list(client.request(MemberListRequest {
            linearizable: false,
        }))
        .await
        .map_err(|s| format!("failed to get a member list: {}", status_text(&s)))?
        .into_inner()
        .members;
    let mut leader_id = 0;
    for endpoint in endpoints {
        let Ok(c) = dialer.dial(endpoint).await else {
            continue;
        };
        if let Ok(status) = c.maintenance().status(c.request(StatusRequest {})).await {
            leader_id = status.into_inner().leader;
            break;
        }
    }
    members
        .into_iter()
        .find(|m| m.id == leader_id && !m.client_ur_ls.is_empty())
        .map(|m| m.client_ur_ls)
        .ok_or_else(|| "failed to find a leader endpoint".into())
}
