//! The `tern` binary: parse etcd's flags, derive this member's identity, serve.

use std::path::PathBuf;
use std::sync::Arc;
use tern::config::url::Scheme;
use tern::config::{ClusterState, Config};
use tern::membership::cluster::MemberRecord;
use tern::membership::id;

use tern::net::tls::{self, PeerTls, Reloading, ReloadingServerConfig, TlsInfo, TlsVersion};
use tern::server::{self, ServerOptions};
use tern::service::Limits;
use tern::state::Identity;

/// mimalloc instead of glibc's malloc: a put allocates and frees a few dozen small blocks
/// (request, command, raft entry, index entry, response), and glibc spent about a fifth of
/// the server's CPU on them at 1000 clients (`_int_malloc`, `unlink_chunk`,
/// `malloc_consolidate`); mimalloc's thread-local free lists fit thread-per-core executors.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `--listen-metrics-urls` addresses, each with whether it is https://. An https:// one
/// is served with the client TLS settings, as etcd's `serveMetrics` does, and needs a
/// certificate (given or `--auto-tls`), as etcd's `transport.NewListener` does; unix ones
/// are refused rather than served wrongly.
fn metrics_urls(
    config: &Config,
    tls_ready: bool,
) -> Result<Vec<(std::net::SocketAddr, bool)>, String> {
    let urls =
        tern::config::url::parse_urls(config.flag_value("listen-metrics-urls").unwrap_or_default())
            .unwrap_or_default();
    urls.iter()
        .map(|url| match url.scheme {
            Scheme::Https if !tls_ready => Err(format!(
                "cannot listen on TLS for {}:{}: KeyFile and CertFile are not presented",
                url.host, url.port
            )),
            Scheme::Http | Scheme::Https => url
                .socket_addr
                .map(|addr| (addr, url.is_tls()))
                .ok_or_else(|| format!("expected IP in URL for binding ({})", url.url)),
            Scheme::Unix | Scheme::Unixs => Err(format!(
                "--listen-metrics-urls {}: unix metrics sockets are not implemented in tern",
                url.url
            )),
        })
        .collect()
}

fn main() {
    let config = Config::from_args();
    config.log_no_effect_flags();
    tern::info!(
        "starting an etcd server",
        "tern-version" => env!("CARGO_PKG_VERSION"),
        "name" => config.name.as_str(),
        "data-dir" => config.data_dir.as_path(),
        "max-request-bytes" => config.max_request_bytes,
        "max-txn-ops" => config.max_txn_ops
    );
    let identity = identity(&config);
    let peer_tls = match peer_transport(&config) {
        Ok(peer_tls) => peer_tls,
        Err(e) => tern::fatal!("cannot serve", "error" => e),
    };
    let raft = raft_options(&config, peer_tls);
    let client = match client_transport(&config) {
        Ok(client) => client,
        Err(e) => tern::fatal!("cannot serve", "error" => e),
    };
    let options = ServerOptions {
        identity,
        data_dir: config.data_dir.clone(),
        listen_client_addrs: client.addrs,
        listen_client_tls: client.addrs_tls,
        listen_client_unix: client.unix,
        client_tls: client.tls,
        listen_metrics_addrs: client.metrics.iter().map(|(addr, _)| *addr).collect(),
        listen_metrics_tls: client.metrics.iter().map(|(_, is_tls)| *is_tls).collect(),
        cores: (config.cores > 0).then_some(config.cores),
        limits: Limits {
            max_request_bytes: config.max_request_bytes as usize,
            max_txn_ops: config.max_txn_ops as usize,
            watch_progress_notify_interval: config
                .flag_value("experimental-watch-progress-notify-interval")
                .and_then(|text| tern::config::go::parse_duration(text).ok())
                .unwrap_or(tern::service::WATCH_PROGRESS_NOTIFY_INTERVAL_DEFAULT),
        },
        raft,
        backend_batch_interval: config
            .flag_value("backend-batch-interval")
            .and_then(|text| tern::config::go::parse_duration(text).ok())
            .unwrap_or_default(),
        backend_batch_limit: config
            .flag_value("backend-batch-limit")
            .and_then(|text| text.parse().ok())
            .unwrap_or(0),
        lease: tern::lease::LeaseOptions::from_raft_timing(
            config.heartbeat_interval_ms,
            config.election_timeout_ms,
        ),
        lease_promote_extend: std::time::Duration::from_millis(config.election_timeout_ms),
        auth: auth_options(&config),
        http2: http2_options(&config),
    };
    if let Err(e) = server::run(options) {
        tern::fatal!("cannot serve", "error" => e);
    }
}

/// --auth-token, --bcrypt-cost and --auth-token-ttl, as etcd reads them: a bcrypt cost
/// outside bcrypt's bounds falls back to the default with a warning; an unknown token
/// kind or JWT options that do not load stop the server, as they stop etcd.
fn auth_options(config: &Config) -> server::AuthOptions {
    use tern::service::auth::{BCRYPT_COST_DEFAULT, BCRYPT_COST_MAX, BCRYPT_COST_MIN};
    let token = config.flag_value("auth-token").unwrap_or("simple");
    let (kind, token_options) = token.split_once(',').unwrap_or((token, ""));
    let jwt = match kind {
        "simple" => None,
        "jwt" => match tern::auth::jwt::JwtKeys::from_options(token_options) {
            Ok(keys) => Some(std::sync::Arc::new(keys)),
            Err(e) => tern::fatal!("failed to create token provider", "error" => e),
        },
        _ => {
            tern::fatal!("failed to create token provider: auth: invalid auth options; tern serves --auth-token simple or jwt,...", "auth-token" => token)
        }
    };
    let requested = config
        .flag_value("bcrypt-cost")
        .and_then(|text| text.parse::<u32>().ok())
        .unwrap_or(BCRYPT_COST_DEFAULT);
    let bcrypt_cost = if (BCRYPT_COST_MIN..=BCRYPT_COST_MAX).contains(&requested) {
        requested
    } else {
        tern::warn!(
            "use default bcrypt cost instead of the invalid given cost",
            "min-cost" => BCRYPT_COST_MIN,
            "max-cost" => BCRYPT_COST_MAX,
            "default-cost" => BCRYPT_COST_DEFAULT,
            "given-cost" => requested
        );
        BCRYPT_COST_DEFAULT
    };
    let ttl_secs = config
        .flag_value("auth-token-ttl")
        .and_then(|text| text.parse::<u64>().ok())
        .unwrap_or(300);
    server::AuthOptions {
        bcrypt_cost,
        token_ttl: std::time::Duration::from_secs(ttl_secs),
        jwt,
    }
}

/// The client listeners and their TLS settings, from `--listen-client-urls` and etcd's
/// client security flags.
struct ClientTransport {
    addrs: Vec<std::net::SocketAddr>,
    addrs_tls: Vec<bool>,
    unix: Vec<(std::path::PathBuf, bool)>,
    /// `--listen-metrics-urls`: each address, and whether it is https://.
    metrics: Vec<(std::net::SocketAddr, bool)>,
    tls: Option<TlsInfo>,
}

/// Which of etcd's two sets of security flags: the client's (`--cert-file`, ...) or the
/// peer's (`--peer-cert-file`, ...).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Client,
    Peer,
}

/// The TLS settings one side's flags give, before certificates are generated or checked.
/// The cipher suites and TLS versions are shared by both sides, as in etcd.
fn tls_info(config: &Config, side: Side) -> Result<TlsInfo, String> {
    let flag = |name: &str| config.flag_value(name).unwrap_or_default().to_string();
    let (prefix, crl, hostname) = match side {
        Side::Client => ("", "client-crl-file", "client-cert-allowed-hostname"),
        Side::Peer => ("peer-", "peer-crl-file", "peer-cert-allowed-hostname"),
    };
    let named = |name: &str| Some(flag(name)).filter(|v| !v.is_empty());
    let sided = |name: &str| format!("{prefix}{name}");
    Ok(TlsInfo {
        cert_file: flag(&sided("cert-file")).into(),
        key_file: flag(&sided("key-file")).into(),
        trusted_ca_file: named(&sided("trusted-ca-file")).map(PathBuf::from),
        client_cert_auth: tern::config::go::parse_bool(&flag(&sided("client-cert-auth")))
            == Ok(true),
        crl_file: named(crl).map(PathBuf::from),
        allowed_hostname: named(hostname),
        allowed_cn: (side == Side::Peer)
            .then(|| named("peer-cert-allowed-cn"))
            .flatten(),
        cipher_suites: flag("cipher-suites")
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        min_version: TlsVersion::parse(&flag("tls-min-version"))?,
        max_version: TlsVersion::parse(&flag("tls-max-version"))?,
    })
}

/// Reads etcd's client security flags as etcd's `embed` does: `--auto-tls` generates a
/// certificate unless one is given, an https:// or unixs:// URL without a certificate is an
/// error, and certificates given for http:// URLs only are ignored with a warning.
fn client_transport(config: &Config) -> Result<ClientTransport, String> {
    let flag = |name: &str| config.flag_value(name).unwrap_or_default().to_string();
    let is_true = |name: &str| tern::config::go::parse_bool(&flag(name)) == Ok(true);
    let urls = &config.listen_client_urls;
    let mut info = tls_info(config, Side::Client)?;
    let certs_given =
        !info.cert_file.as_os_str().is_empty() || !info.key_file.as_os_str().is_empty();
    if is_true("auto-tls") {
        if certs_given {
            tern::warn!("ignoring client auto TLS since certs given");
        } else {
            let validity_years: u64 = flag("self-signed-cert-validity").parse().unwrap_or(0);
            if validity_years == 0 {
                return Err(
                    "--self-signed-cert-validity is invalid, it should be greater than 0".into(),
                );
            }
            let hosts: Vec<String> = urls.iter().map(|u| u.host.clone()).collect();
            let dir = config.data_dir.join("fixtures").join("client");
            let (cert_file, key_file) = tls::self_cert(&dir, &hosts, validity_years)?;
            // etcd replaces the client TLS settings with the generated pair: no CA, so no
            // client certificate checks.
            if info.client_cert_auth || info.trusted_ca_file.is_some() {
                tern::warn!(
                    "ignoring --client-cert-auth and --trusted-ca-file with --auto-tls (the generated certificate replaces the client TLS settings, as in etcd)"
                );
            }
            info = TlsInfo {
                cert_file,
                key_file,
                trusted_ca_file: None,
                client_cert_auth: false,
                crl_file: None,
                allowed_hostname: None,
                ..info
            };
        }
    }
    let tls_ready = !info.cert_file.as_os_str().is_empty() || !info.key_file.as_os_str().is_empty();
    let mut transport = ClientTransport {
        addrs: Vec::new(),
        addrs_tls: Vec::new(),
        unix: Vec::new(),
        metrics: metrics_urls(config, tls_ready)?,
        tls: None,
    };
    for url in urls {
        if url.is_tls() && !tls_ready {
            return Err(format!(
                "TLS key/cert (--cert-file, --key-file) must be provided for client url {} with HTTPS scheme",
                url.url
            ));
        }
        if !url.is_tls() && tls_ready {
            tern::warn!(
                "scheme is HTTP while key and cert files are present; ignoring key and cert files",
                "client-url" => url.url.as_str()
            );
        }
        if !url.is_tls() && info.client_cert_auth {
            tern::warn!(
                "scheme is HTTP while --client-cert-auth is enabled; ignoring client cert auth for this URL",
                "client-url" => url.url.as_str()
            );
        }
        match url.scheme {
            Scheme::Http | Scheme::Https => {
                let Some(addr) = url.socket_addr else {
                    return Err(format!("expected IP in URL for binding ({})", url.url));
                };
                transport.addrs.push(addr);
                transport.addrs_tls.push(url.is_tls());
            }
            // etcd listens on the URL's host:port taken as a path.
            Scheme::Unix | Scheme::Unixs => transport
                .unix
                .push((format!("{}:{}", url.host, url.port).into(), url.is_tls())),
        }
    }
    if urls.iter().any(|u| u.is_tls()) || transport.metrics.iter().any(|(_, tls)| *tls) {
        transport.tls = Some(info);
    }
    Ok(transport)
}

/// Peer TLS from etcd's `--peer-*` flags, as etcd's `embed` reads them: https:// peer
/// listen URLs need a certificate (given, or generated by `--peer-auto-tls`); peer TLS
/// applies to every peer listener, so http:// and https:// peer listen URLs are not mixed;
/// unix peer URLs are refused.
fn peer_transport(config: &Config) -> Result<Option<Arc<PeerTls>>, String> {
    let flag = |name: &str| config.flag_value(name).unwrap_or_default().to_string();
    let is_true = |name: &str| tern::config::go::parse_bool(&flag(name)) == Ok(true);
    let path = |name: &str| {
        Some(flag(name))
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
    };
    let urls = &config.listen_peer_urls;
    if let Some(url) = urls
        .iter()
        .find(|u| matches!(u.scheme, Scheme::Unix | Scheme::Unixs))
    {
        return Err(format!(
            "--listen-peer-urls {}: unix peer sockets are not implemented in tern",
            url.url
        ));
    }
    let tls_urls = urls.iter().filter(|u| u.is_tls()).count();
    let mut info = tls_info(config, Side::Peer)?;
    let certs_given =
        !info.cert_file.as_os_str().is_empty() || !info.key_file.as_os_str().is_empty();
    let mut self_signed = false;
    if is_true("peer-auto-tls") {
        if certs_given {
            tern::warn!("ignoring peer auto TLS since certs given");
        } else {
            let validity_years: u64 = flag("self-signed-cert-validity").parse().unwrap_or(0);
            if validity_years == 0 {
                return Err(
                    "--self-signed-cert-validity is invalid, it should be greater than 0".into(),
                );
            }
            let hosts: Vec<String> = urls.iter().map(|u| u.host.clone()).collect();
            let dir = config.data_dir.join("fixtures").join("peer");
            let (cert_file, key_file) = tls::self_cert(&dir, &hosts, validity_years)?;
            info = TlsInfo {
                cert_file,
                key_file,
                trusted_ca_file: None,
                client_cert_auth: false,
                crl_file: None,
                allowed_hostname: None,
                allowed_cn: None,
                ..info
            };
            self_signed = true;
        }
    }
    let tls_ready = !info.cert_file.as_os_str().is_empty() || !info.key_file.as_os_str().is_empty();
    if tls_urls == 0 {
        if tls_ready {
            for url in urls {
                tern::warn!(
                    "scheme is HTTP while key and cert files are present; ignoring key and cert files",
                    "peer-url" => url.url.as_str()
                );
            }
        }
        return Ok(None);
    }
    if let Some(url) = urls.iter().find(|u| u.is_tls() && !tls_ready) {
        return Err(format!(
            "TLS key/cert (--peer-cert-file, --peer-key-file) must be provided for peer url {} with HTTPS scheme",
            url.url
        ));
    }
    if tls_urls != urls.len() {
        return Err(
            "--listen-peer-urls mixes http:// and https://: tern applies peer TLS to every peer listener"
                .into(),
        );
    }
    let (client_cert, client_key) =
        match (path("peer-client-cert-file"), path("peer-client-key-file")) {
            (Some(cert), Some(key)) if !self_signed => (cert, key),
            _ => (info.cert_file.clone(), info.key_file.clone()),
        };
    let client = Reloading::start_client(info.clone(), client_cert, client_key, self_signed)?;
    let server = ReloadingServerConfig::start(info, tls::PEER_FLAGS, "peer")?;
    Ok(Some(Arc::new(PeerTls {
        server,
        client,
        skip_client_san_verify: is_true("experimental-peer-skip-client-san-verification"),
    })))
}

/// This member's and its cluster's ids, derived from --initial-cluster and
/// --initial-cluster-token exactly as etcd derives them for a static bootstrap.
fn identity(config: &Config) -> Identity {
    let member_ids: Vec<(String, u64)> = config
        .initial_cluster
        .iter()
        .map(|m| {
            let urls: Vec<String> = m.peer_urls.iter().map(|u| u.url.clone()).collect();
            (
                m.name.clone(),
                id::member_id(&urls, &config.initial_cluster_token, None),
            )
        })
        .collect();
    let Some(&(_, member_id)) = member_ids.iter().find(|(name, _)| *name == config.name) else {
        tern::fatal!("couldn't find local name in the initial cluster configuration", "name" => config.name.as_str());
    };
    let ids: Vec<u64> = member_ids.iter().map(|(_, id)| *id).collect();
    Identity {
        cluster_id: id::cluster_id(&ids),
        member_id,
        name: config.name.clone(),
        peer_urls: config
            .initial_advertise_peer_urls
            .iter()
            .map(|u| u.url.clone())
            .collect(),
        client_urls: config
            .advertise_client_urls
            .iter()
            .map(|u| u.url.clone())
            .collect(),
    }
}

/// Raft settings from etcd's flags (`--snapshot-count`, `--force-new-cluster` are read
/// from their validated text).
fn raft_options(config: &Config, peer_tls: Option<Arc<PeerTls>>) -> tern::raft::RaftOptions {
    let initial_members = config
        .initial_cluster
        .iter()
        .map(|m| {
            let peer_urls: Vec<String> = m.peer_urls.iter().map(|u| u.url.clone()).collect();
            MemberRecord {
                id: id::member_id(&peer_urls, &config.initial_cluster_token, None),
                name: m.name.clone(),
                peer_urls,
                client_urls: Vec::new(),
                is_learner: false,
            }
        })
        .collect();
    let flag = |name: &str| config.flag_value(name).unwrap_or_default().to_string();
    tern::raft::RaftOptions {
        data_dir: config.data_dir.clone(),
        listen_peer_addrs: config.peer_listen_addrs(),
        initial_members,
        new_cluster: config.initial_cluster_state == ClusterState::New,
        heartbeat_interval_ms: config.heartbeat_interval_ms,
        election_timeout_ms: config.election_timeout_ms,
        snapshot_count: flag("snapshot-count").parse().unwrap_or(100_000),
        cluster_token: config.initial_cluster_token.clone(),
        force_new_cluster: matches!(
            flag("force-new-cluster").as_str(),
            "true" | "1" | "t" | "T" | "TRUE" | "True"
        ),
        peer_tls,
        quota_backend_bytes: {
            let flag_bytes: i64 = flag("quota-backend-bytes").parse().unwrap_or(0);
            let quota = tern::state::machine::quota_backend_bytes(flag_bytes);
            // etcd's gauge: the quota in force, or the raw negative flag when it is off.
            tern::metrics::STATE
                .quota_backend_bytes
                .set(quota.map_or(flag_bytes, |q| q as i64));
            quota
        },
        auto_compaction: tern::raft::node::auto_compaction::parse(
            &flag("auto-compaction-mode"),
            &flag("auto-compaction-retention"),
        )
        .unwrap_or_else(|e| tern::fatal!("cannot serve", "error" => e)),
    }
}

/// The client transport's settings from etcd's gRPC flags (validated by `config`).
fn http2_options(config: &Config) -> tern::http2::ServerConfig {
    let duration = |name: &str| {
        config
            .flag_value(name)
            .and_then(|text| tern::config::go::parse_duration(text).ok())
    };
    let defaults = tern::http2::ServerConfig::default();
    let nonzero = |d: Option<std::time::Duration>| d.filter(|d| !d.is_zero());
    let keepalive_timeout = nonzero(duration("grpc-keepalive-timeout"));
    tern::http2::ServerConfig {
        max_concurrent_streams: config
            .flag_value("max-concurrent-streams")
            .and_then(|text| text.parse().ok())
            .unwrap_or(defaults.max_concurrent_streams),
        keepalive_min_time: duration("grpc-keepalive-min-time")
            .unwrap_or(defaults.keepalive_min_time),
        // Either flag at 0 turns server pings off, as etcd documents.
        keepalive_interval: nonzero(duration("grpc-keepalive-interval"))
            .filter(|_| keepalive_timeout.is_some()),
        keepalive_timeout: keepalive_timeout.unwrap_or(defaults.keepalive_timeout),
        ..defaults
    }
}
