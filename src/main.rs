//! The `tern` binary: parse etcd's flags, derive this member's identity, serve.

use tern::config::{ClusterState, Config};
use tern::membership::cluster::MemberRecord;
use tern::membership::id;
use tern::server::{self, ServerOptions};
use tern::service::Limits;
use tern::state::Identity;

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
    let raft = raft_options(&config);
    let options = ServerOptions {
        identity,
        data_dir: config.data_dir.clone(),
        listen_client_addrs: config.client_listen_addrs(),
        listen_metrics_addrs: tern::config::url::parse_urls(
            config.flag_value("listen-metrics-urls").unwrap_or_default(),
        )
        .unwrap_or_default()
        .iter()
        .filter_map(|u| u.socket_addr)
        .collect(),
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
    };
    if let Err(e) = server::run(options) {
        tern::fatal!("cannot serve", "error" => e);
    }
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
fn raft_options(config: &Config) -> tern::raft::RaftOptions {
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
    }
}
