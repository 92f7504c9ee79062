//! The table of every flag etcd 3.4 and 3.5 accept, with etcd's names and defaults, plus
//! tern's own. One row per flag; parsing, `--help`, environment variables (`ETCD_*`)
//! and the config file all read this table, so a flag exists in all four or in none.
//!
//! `tern_effective` marks flags tern acts on. Every other flag is accepted and its value
//! validated as etcd would, and the caller is told it was set (see
//! `Config::no_effect_flags`) so it can warn once.

/// How a flag's value is spelled and checked (etcd's `flag.Value` types).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Go bool: `--f`, `--f=true|false|1|0|t|f`; never consumes the next argument.
    Bool,
    /// Go `uint`/`uint64`.
    Uint,
    /// etcd's `Uint32Value` (decimal, 32-bit).
    Uint32,
    /// Go `int`/`int64`.
    Int,
    /// Free text.
    Str,
    /// Go duration (`100ms`, `2h`).
    Duration,
    /// Comma-separated http/https/unix/unixs URLs (etcd `UniqueURLs`); `*` also allowed
    /// where the default is `*` (`--cors`).
    Urls,
    /// Comma-separated strings.
    Strings,
    /// One of a fixed set (etcd `SelectiveStringValue`).
    Choice(&'static [&'static str]),
    /// A flag etcd still accepts but ignores (etcd `IgnoredFlag`, boolean-shaped).
    Ignored,
}

/// `--help` section, in etcd's order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Section {
    Member,
    Clustering,
    Security,
    Auth,
    Profiling,
    Logging,
    Tracing,
    V2Proxy,
    Experimental,
    Unsafe,
    Deprecated,
    Tern,
    Hidden,
}

impl Section {
    pub fn heading(self) -> &'static str {
        match self {
            Section::Member => "Member",
            Section::Clustering => "Clustering",
            Section::Security => "Security",
            Section::Auth => "Auth",
            Section::Profiling => "Profiling and Monitoring",
            Section::Logging => "Logging",
            Section::Tracing => "Experimental distributed tracing",
            Section::V2Proxy => "v2 Proxy (accepted for compatibility)",
            Section::Experimental => "Experimental feature",
            Section::Unsafe => "Unsafe feature",
            Section::Deprecated => "To be deprecated",
            Section::Tern => "tern",
            Section::Hidden => "Ignored",
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct FlagSpec {
    pub name: &'static str,
    pub kind: Kind,
    /// etcd's default as text; `""` means empty/unset.
    pub default: &'static str,
    pub section: Section,
    /// Whether tern acts on this flag today.
    pub tern_effective: bool,
    pub help: &'static str,
}

const fn f(
    name: &'static str,
    kind: Kind,
    default: &'static str,
    section: Section,
    tern_effective: bool,
    help: &'static str,
) -> FlagSpec {
    FlagSpec {
        name,
        kind,
        default,
        section,
        tern_effective,
        help,
    }
}

use Kind::*;
use Section::*;

pub const CLUSTER_STATES: &[&str] = &["new", "existing"];
pub const LOGGERS: &[&str] = &["zap", "capnslog"];
pub const LOG_LEVELS: &[&str] = &["debug", "info", "warn", "error", "panic", "fatal"];

/// Every flag. Names unique (checked by a test). Sources: etcd v3.4 `etcdmain/config.go`,
/// v3.5 `server/etcdmain/config.go`, cross-checked with etcd 3.4.23 `--help`.
pub const FLAGS: &[FlagSpec] = &[
    f("version", Bool, "false", Member, true, "Print the version and exit."),
    f("config-file", Str, "", Member, true, "Path to a YAML configuration file (etcd's keys). When given, other flags and ETCD_* variables are ignored."),
    // Member
    f("name", Str, "default", Member, true, "Human-readable name for this member."),
    f("data-dir", Str, "${name}.etcd", Member, true, "Path to the data directory. An etcd 3.4 member's data dir is converted to tern's once, at the first start (docs/migration.md)."),
    f("wal-dir", Str, "", Member, false, "Path to a dedicated WAL directory."),
    f("snapshot-count", Uint, "100000", Member, true, "Committed transactions that trigger a snapshot to disk."),
    f("heartbeat-interval", Uint, "100", Member, true, "Heartbeat interval in milliseconds."),
    f("election-timeout", Uint, "1000", Member, true, "Election timeout in milliseconds."),
    f("initial-election-tick-advance", Bool, "true", Member, false, "Fast-forward initial election ticks on boot."),
    f("listen-peer-urls", Urls, "http://localhost:2380", Member, true, "URLs to listen on for peer traffic."),
    f("listen-client-urls", Urls, "http://localhost:2379", Member, true, "URLs to listen on for client traffic."),
    f("listen-client-http-urls", Urls, "", Member, false, "URLs to listen on for HTTP-only client traffic."),
    f("max-snapshots", Uint, "5", Member, false, "Snapshot files to retain (0 is unlimited)."),
    f("max-wals", Uint, "5", Member, false, "WAL files to retain (0 is unlimited)."),
    f("quota-backend-bytes", Int, "0", Member, true, "Backend size that raises the NOSPACE alarm (0 means the 2 GiB default, negative disables the quota)."),
    f("backend-bbolt-freelist-type", Str, "map", Member, false, "Freelist type of the backend (array or map)."),
    f("backend-batch-interval", Duration, "0", Member, true, "Longest time before a backend transaction commits (0: 100ms)."),
    f("backend-batch-limit", Int, "0", Member, true, "Most applied entries before a backend transaction commits (0: 10000)."),
    f("max-txn-ops", Uint, "128", Member, true, "Most operations allowed in one transaction."),
    f("max-request-bytes", Uint, "1572864", Member, true, "Largest client request, in bytes, the server accepts."),
    // etcd's default is 4294967295 (no limit); tern's is finite (see src/http2/limits.rs).
    f("max-concurrent-streams", Uint32, "1024", Member, true, "Most concurrent streams per client connection (etcd's default: 4294967295, no limit)."),
    f("grpc-keepalive-min-time", Duration, "5s", Member, true, "Shortest interval a client should wait between pings."),
    f("grpc-keepalive-interval", Duration, "2h", Member, true, "Server-to-client ping interval (0 disables)."),
    f("grpc-keepalive-timeout", Duration, "20s", Member, true, "Wait before closing an unresponsive connection (0 disables)."),
    f("socket-reuse-port", Bool, "false", Member, false, "Set SO_REUSEPORT on listeners."),
    f("socket-reuse-address", Bool, "false", Member, false, "Set SO_REUSEADDR on listeners."),
    f("raft-read-timeout", Duration, "5s", Member, false, "Read timeout on each raft peer connection."),
    f("raft-write-timeout", Duration, "5s", Member, false, "Write timeout on each raft peer connection."),
    // Clustering
    f("initial-advertise-peer-urls", Urls, "http://localhost:2380", Clustering, true, "This member's peer URLs as advertised to the cluster."),
    f("initial-cluster", Str, "default=http://localhost:2380", Clustering, true, "Initial cluster for bootstrapping (name=url,...); defaults to ${name}=<advertised peer URLs>."),
    f("initial-cluster-state", Choice(CLUSTER_STATES), "new", Clustering, true, "'new' to bootstrap a cluster, 'existing' to join one."),
    f("initial-cluster-token", Str, "etcd-cluster", Clustering, true, "Cluster token used to derive member and cluster IDs at bootstrap."),
    f("advertise-client-urls", Urls, "http://localhost:2379", Clustering, true, "This member's client URLs as advertised to clients."),
    f("discovery", Str, "", Clustering, false, "Discovery URL used to bootstrap the cluster."),
    f("discovery-fallback", Choice(&["proxy", "exit"]), "proxy", Clustering, false, "What to do when discovery fails ('exit' or 'proxy')."),
    f("discovery-proxy", Str, "", Clustering, false, "HTTP proxy for traffic to the discovery service."),
    f("discovery-srv", Str, "", Clustering, false, "DNS SRV domain used to bootstrap the cluster."),
    f("discovery-srv-name", Str, "", Clustering, false, "Suffix of the DNS SRV name queried at bootstrap."),
    f("strict-reconfig-check", Bool, "true", Clustering, false, "Reject reconfigurations that would lose quorum."),
    f("pre-vote", Bool, "false", Clustering, false, "Run raft's pre-vote phase before elections."),
    f("auto-compaction-retention", Str, "0", Clustering, true, "Auto-compaction retention: a duration or hours (periodic), or revisions (revision); 0 disables."),
    f("auto-compaction-mode", Choice(&["periodic", "revision"]), "periodic", Clustering, true, "How to read auto-compaction-retention: periodic or revision."),
    f("enable-v2", Bool, "false", Clustering, false, "Serve the etcd v2 API."),
    f("v2-deprecation", Choice(&["not-yet", "write-only", "write-only-drop-data", "gone"]), "not-yet", Clustering, false, "v2store deprecation stage."),
    f("next-cluster-version-compatible", Bool, "false", Clustering, false, "Let a 3.4 server join a 3.5 cluster."),
    // Security
    f("cert-file", Str, "", Security, true, "Client-facing TLS certificate file."),
    f("key-file", Str, "", Security, true, "Client-facing TLS key file."),
    f("client-cert-file", Str, "", Security, false, "TLS client certificate used when client auth is required."),
    f("client-key-file", Str, "", Security, false, "TLS client key used when client auth is required."),
    f("client-cert-auth", Bool, "false", Security, true, "Require client certificates."),
    f("client-crl-file", Str, "", Security, true, "Client certificate revocation list."),
    f("client-cert-allowed-hostname", Strings, "", Security, true, "Allowed SAN hostnames for client certificates."),
    f("trusted-ca-file", Str, "", Security, true, "CA bundle for client certificates."),
    f("auto-tls", Bool, "false", Security, true, "Client TLS with generated certificates."),
    f("peer-cert-file", Str, "", Security, true, "Peer TLS certificate file."),
    f("peer-key-file", Str, "", Security, true, "Peer TLS key file."),
    f("peer-client-cert-file", Str, "", Security, true, "Peer TLS client certificate."),
    f("peer-client-key-file", Str, "", Security, true, "Peer TLS client key."),
    f("peer-client-cert-auth", Bool, "false", Security, true, "Require peer client certificates."),
    f("peer-trusted-ca-file", Str, "", Security, true, "CA bundle for peer certificates."),
    f("peer-cert-allowed-cn", Strings, "", Security, true, "Allowed CNs of peer certificates."),
    f("peer-cert-allowed-hostname", Strings, "", Security, true, "Allowed SAN hostnames of peer certificates."),
    f("peer-auto-tls", Bool, "false", Security, true, "Peer TLS with generated certificates."),
    f("self-signed-cert-validity", Uint, "1", Security, true, "Validity of generated certificates, in years."),
    f("peer-crl-file", Str, "", Security, true, "Peer certificate revocation list."),
    f("cipher-suites", Strings, "", Security, true, "Allowed TLS cipher suites (empty: library default)."),
    f("cors", Urls, "*", Security, false, "Allowed CORS origins (* allows all)."),
    f("host-whitelist", Strings, "*", Security, false, "Accepted Host headers when not using TLS (* allows all)."),
    f("tls-min-version", Choice(&["TLS1.2", "TLS1.3"]), "TLS1.2", Security, true, "Minimum TLS version."),
    f("tls-max-version", Choice(&["", "TLS1.2", "TLS1.3"]), "", Security, true, "Maximum TLS version (empty: library default)."),
    // Auth
    f("auth-token", Str, "simple", Auth, true, "Auth token type and options ('simple' or 'jwt,sign-method=...,pub-key=...,priv-key=...,ttl=...')."),
    f("bcrypt-cost", Uint, "10", Auth, true, "bcrypt cost for password hashing (4..31)."),
    f("auth-token-ttl", Uint, "300", Auth, true, "Lifetime of a simple auth token, in seconds."),
    // Profiling and monitoring
    f("enable-pprof", Bool, "false", Profiling, false, "Serve runtime profiles under /debug/pprof/."),
    f("metrics", Choice(&["basic", "extensive"]), "basic", Profiling, false, "Detail of exported metrics ('basic' or 'extensive')."),
    f("listen-metrics-urls", Urls, "", Profiling, true, "URLs to serve /metrics and /health on (https:// with the client TLS settings)."),
    // Logging
    f("logger", Choice(LOGGERS), "zap", Logging, true, "'zap' for JSON lines or 'capnslog' for etcd 3.4's text lines (etcd 3.4 defaults to capnslog, 3.5 and tern to zap)."),
    f("log-outputs", Strings, "default", Logging, true, "Log targets: 'stderr', 'stdout', 'default' (stderr) or file paths, comma-separated."),
    f("log-level", Choice(LOG_LEVELS), "info", Logging, true, "Minimum level logged: debug, info, warn, error, panic or fatal."),
    f("enable-log-rotation", Bool, "false", Logging, false, "Rotate a single file log output."),
    f("log-rotation-config-json", Str, r#"{"maxsize": 100, "maxage": 0, "maxbackups": 0, "localtime": false, "compress": false}"#, Logging, false, "Log rotation settings as JSON."),
    // Distributed tracing
    f("experimental-enable-distributed-tracing", Bool, "false", Tracing, false, "Export OpenTelemetry traces."),
    f("experimental-distributed-tracing-address", Str, "localhost:4317", Tracing, false, "OpenTelemetry collector address."),
    f("experimental-distributed-tracing-service-name", Str, "etcd", Tracing, false, "Service name in traces."),
    f("experimental-distributed-tracing-instance-id", Str, "", Tracing, false, "Service instance ID in traces."),
    f("experimental-distributed-tracing-sampling-rate", Int, "0", Tracing, false, "Sampled spans per million."),
    // v2 proxy
    f("proxy", Choice(&["off", "readonly", "on"]), "off", V2Proxy, false, "v2 proxy mode ('off', 'readonly' or 'on')."),
    f("proxy-failure-wait", Uint, "5000", V2Proxy, false, "Milliseconds an endpoint stays failed."),
    f("proxy-refresh-interval", Uint, "30000", V2Proxy, false, "Milliseconds between endpoint refreshes."),
    f("proxy-dial-timeout", Uint, "1000", V2Proxy, false, "Dial timeout in milliseconds."),
    f("proxy-write-timeout", Uint, "5000", V2Proxy, false, "Write timeout in milliseconds."),
    f("proxy-read-timeout", Uint, "0", V2Proxy, false, "Read timeout in milliseconds."),
    // Experimental
    f("experimental-initial-corrupt-check", Bool, "false", Experimental, false, "Check data corruption before serving."),
    f("experimental-corrupt-check-time", Duration, "0s", Experimental, false, "Interval between cluster corruption checks."),
    f("experimental-compact-hash-check-enabled", Bool, "false", Experimental, false, "Leader checks followers' compaction hashes."),
    f("experimental-compact-hash-check-time", Duration, "1m", Experimental, false, "Interval between compaction hash checks."),
    f("experimental-enable-v2v3", Str, "", Experimental, false, "Serve v2 requests through v3 under this prefix."),
    f("experimental-backend-bbolt-freelist-type", Str, "array", Experimental, false, "Freelist type of the backend (3.4 name)."),
    f("experimental-enable-lease-checkpoint", Bool, "false", Experimental, false, "Leader checkpoints lease TTLs to followers."),
    f("experimental-enable-lease-checkpoint-persist", Bool, "false", Experimental, false, "Persist checkpointed lease TTLs."),
    f("experimental-compaction-batch-limit", Int, "1000", Experimental, false, "Revisions deleted per compaction batch."),
    f("experimental-compaction-sleep-interval", Duration, "10ms", Experimental, false, "Pause between compaction batches."),
    f("experimental-peer-skip-client-san-verification", Bool, "false", Experimental, true, "Skip the check of a peer certificate's SANs against its remote address."),
    f("experimental-watch-progress-notify-interval", Duration, "10m", Experimental, true, "Interval of watch progress notifications."),
    f("experimental-warning-apply-duration", Duration, "100ms", Experimental, false, "Warn when applying a request takes longer."),
    f("experimental-downgrade-check-time", Duration, "5s", Experimental, false, "Interval between downgrade status checks."),
    f("experimental-memory-mlock", Bool, "false", Experimental, false, "Lock backend pages in RAM."),
    f("experimental-txn-mode-write-with-shared-buffer", Bool, "true", Experimental, false, "Write transactions share the read buffer."),
    f("experimental-stop-grpc-service-on-defrag", Bool, "false", Experimental, false, "Stop serving gRPC during defragmentation."),
    f("experimental-bootstrap-defrag-threshold-megabytes", Uint, "0", Experimental, false, "Defragment at boot if it frees at least this much."),
    f("experimental-snapshot-catchup-entries", Uint, "5000", Experimental, false, "Entries kept for slow followers after compacting the raft log."),
    // Unsafe
    f("unsafe-no-fsync", Bool, "false", Unsafe, false, "Disable fsync (loses data on crash)."),
    f("force-new-cluster", Bool, "false", Unsafe, true, "Force a new one-member cluster."),
    // etcd 3.4 deprecated
    f("log-output", Strings, "default", Deprecated, true, "Same as --log-outputs (etcd 3.4)."),
    f("debug", Bool, "false", Deprecated, true, "Same as --log-level=debug (etcd 3.4)."),
    f("log-package-levels", Str, "", Deprecated, false, "Per-package log levels (etcd 3.4, capnslog)."),
    f("enable-grpc-gateway", Bool, "true", Deprecated, false, "Serve the JSON gRPC gateway."),
    // tern
    f("cores", Uint, "0", Tern, true, "Cores to run on (env TERN_CORES); 0 means all available."),
    // etcd's ignored (pre-v2) flags
    f("cluster-active-size", Ignored, "", Hidden, false, ""),
    f("cluster-remove-delay", Ignored, "", Hidden, false, ""),
    f("cluster-sync-interval", Ignored, "", Hidden, false, ""),
    f("config", Ignored, "", Hidden, false, ""),
    f("force", Ignored, "", Hidden, false, ""),
    f("max-result-buffer", Ignored, "", Hidden, false, ""),
    f("max-retry-attempts", Ignored, "", Hidden, false, ""),
    f("peer-heartbeat-interval", Ignored, "", Hidden, false, ""),
    f("peer-election-timeout", Ignored, "", Hidden, false, ""),
    f("retry-interval", Ignored, "", Hidden, false, ""),
    f("snapshot", Ignored, "", Hidden, false, ""),
    f("v", Ignored, "", Hidden, false, ""),
    f("vv", Ignored, "", Hidden, false, ""),
];

/// The row for `name`, if any.
pub fn find(name: &str) -> Option<&'static FlagSpec> {
    FLAGS.iter().find(|spec| spec.name == name)
}

/// etcd's `flags.FlagToEnv`: `max-txn-ops` → `ETCD_MAX_TXN_OPS`. tern's own flags use
/// the `TERN_` prefix.
pub fn env_name(spec: &FlagSpec) -> String {
    let prefix = if spec.section == Section::Tern {
        "TERN"
    } else {
        "ETCD"
    };
    format!(
        "{prefix}_{}",
        spec.name.to_ascii_uppercase().replace('-', "_")
    )
}

#[cfg(test)]
mod tests {
    //! Checks the table's own consistency: unique names, defaults that parse.
    use super::*;

    #[test]
    fn names_unique_and_defaults_valid() {
        let mut names: Vec<&str> = FLAGS.iter().map(|s| s.name).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len(), "duplicate flag name");
        for spec in FLAGS {
            if spec.name == "data-dir"
                || spec.name == "initial-cluster"
                || spec.kind == Kind::Ignored
            {
                continue; // derived from --name
            }
            if let Err(e) = super::super::validate_value(spec, spec.default) {
                panic!("default of --{} is invalid: {e}", spec.name);
            }
        }
    }
}
