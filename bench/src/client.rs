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
use tonic::metadata::{AsciiMetadataValue, MetadataValue};

use crate::channel::H2Channel;
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

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One gRPC connection plus the credentials sent with every call on it.
#[derive(Clone)]
pub struct Client {
    channel: H2Channel,
    /// `http://host:port` of the endpoint: the `:scheme` and `:authority` of every call.
    origin: Uri,
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

    pub fn kv(&self) -> KvClient<H2Channel> {
        KvClient::with_origin(self.channel.clone(), self.origin.clone())
            .max_decoding_message_size(RESPONSE_BYTES_MAX)
    }
    pub fn watch(&self) -> WatchClient<H2Channel> {
        WatchClient::with_origin(self.channel.clone(), self.origin.clone())
            .max_decoding_message_size(RESPONSE_BYTES_MAX)
    }
    pub fn lease(&self) -> LeaseClient<H2Channel> {
        LeaseClient::with_origin(self.channel.clone(), self.origin.clone())
    }
    pub fn cluster(&self) -> ClusterClient<H2Channel> {
        ClusterClient::with_origin(self.channel.clone(), self.origin.clone())
    }
    pub fn maintenance(&self) -> MaintenanceClient<H2Channel> {
        MaintenanceClient::with_origin(self.channel.clone(), self.origin.clone())
    }
    pub fn lock(&self) -> LockClient<H2Channel> {
        LockClient::with_origin(self.channel.clone(), self.origin.clone())
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

/// An error and its causes, `outer: inner: innermost` (TLS and h2 errors say
/// little about where they came from on their own).
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        // Some errors repeat their cause in their own text; say each thing once.
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
        match self.dial_timeout {
            Some(timeout) => tokio::time::timeout(timeout, self.dial_once(endpoint))
                .await
                .map_err(|_| format!("no connection within {timeout:?}"))?,
            None => self.dial_once(endpoint).await,
        }
    }

    async fn dial_once(&self, endpoint: &str) -> Result<Client, BoxError> {
        let (scheme_tls, authority) = parse_endpoint(endpoint);
        // The :scheme stays "http" even over TLS, as tonic's client sent it: gRPC servers
        // (grpc-go included) do not check the pseudo-header.
        let origin: Uri = format!("http://{authority}").parse()?;
        let tcp = tokio::net::TcpStream::connect(authority.as_str())
            .await
            .map_err(|e| format!("tcp connect error: {e}"))?;
        tcp.set_nodelay(true)?;
        let channel = match (&self.tls, scheme_tls) {
            (None, false) => H2Channel::handshake(tcp).await?,
            (tls, _) => {
                let tls = match tls {
                    Some(tls) => tls.clone(),
                    None => Arc::new(TlsOptions::default()),
                };
                let connector = tls.connector()?;
                let server_name = tls.server_name(&authority)?;
                let stream = connector.connect(server_name, tcp).await?;
                H2Channel::handshake(stream).await?
            }
        };
        Ok(Client {
            channel,
            origin,
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
        let response = AuthClient::with_origin(first.channel.clone(), first.origin.clone())
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
