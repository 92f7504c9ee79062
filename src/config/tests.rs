//! Checks flag parsing against etcd's behaviour: Go argument forms, env precedence and
//! conflicts, unknown flags (exit 2), defaults, validation errors in etcd's words, and
//! the no-effect flag list. Runs `parse` on argument and environment vectors; no process
//! environment is touched.
use super::*;

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn env(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn serve(a: &[&str], e: &[(&str, &str)]) -> Config {
    match parse(&args(a), &env(e)) {
        Ok(Invocation::Serve(c)) => *c,
        other => panic!("expected a config, got {other:?}"),
    }
}

fn fails(a: &[&str], e: &[(&str, &str)]) -> ConfigError {
    match parse(&args(a), &env(e)) {
        Err(e) => e,
        Ok(other) => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn defaults_match_etcd() {
    let c = serve(&[], &[]);
    assert_eq!(c.name, "default");
    assert_eq!(c.data_dir, PathBuf::from("default.etcd"));
    assert_eq!(c.listen_client_urls[0].url, "http://localhost:2379");
    assert_eq!(
        c.client_listen_addrs(),
        vec!["127.0.0.1:2379".parse().unwrap()]
    );
    assert_eq!(
        c.peer_listen_addrs(),
        vec!["127.0.0.1:2380".parse().unwrap()]
    );
    assert_eq!(c.advertise_client_urls[0].url, "http://localhost:2379");
    assert_eq!(
        c.initial_advertise_peer_urls[0].url,
        "http://localhost:2380"
    );
    assert_eq!(c.initial_cluster.len(), 1);
    assert_eq!(c.initial_cluster[0].name, "default");
    assert_eq!(c.initial_cluster_token, "etcd-cluster");
    assert_eq!(c.initial_cluster_state, ClusterState::New);
    assert_eq!(c.max_request_bytes, 1_572_864);
    assert_eq!(c.max_txn_ops, 128);
    assert_eq!(c.heartbeat_interval_ms, 100);
    assert_eq!(c.election_timeout_ms, 1000);
    assert_eq!(c.log, LogConfig::default());
    assert!(c.cores >= 1);
    assert!(c.no_effect_flags.is_empty());
    assert_eq!(c.flag_value("snapshot-count"), Some("100000"));
    assert_eq!(c.flag_value("quota-backend-bytes"), Some("0"));
    assert_eq!(
        c.flag_value("initial-cluster"),
        Some("default=http://localhost:2380")
    );
}

#[test]
fn go_argument_forms() {
    for form in [
        &["--max-txn-ops", "7"][..],
        &["--max-txn-ops=7"],
        &["-max-txn-ops", "7"],
        &["-max-txn-ops=7"],
    ] {
        assert_eq!(serve(form, &[]).max_txn_ops, 7, "{form:?}");
    }
    // Booleans never take the next argument; `--debug false` leaves a stray argument.
    assert_eq!(serve(&["--debug"], &[]).log.level, Level::Debug);
    assert_eq!(serve(&["-debug=true"], &[]).log.level, Level::Debug);
    assert_eq!(serve(&["--debug=false"], &[]).log.level, Level::Info);
    let stray = fails(&["--debug", "false"], &[]);
    assert_eq!(stray.exit_code, 1);
    assert!(
        stray.message.contains("'false' is not a valid flag"),
        "{}",
        stray.message
    );
    // Last occurrence wins, as in Go.
    assert_eq!(
        serve(&["--max-txn-ops=1", "--max-txn-ops=2"], &[]).max_txn_ops,
        2
    );
    // `--` ends the flags.
    assert!(fails(&["--", "x"], &[])
        .message
        .contains("'x' is not a valid flag"));
}

#[test]
fn unknown_and_malformed_flags_exit_2() {
    let e = fails(&["--bogus"], &[]);
    assert_eq!(e.exit_code, 2);
    assert_eq!(e.message, "flag provided but not defined: -bogus");
    assert_eq!(
        fails(&["-bogus=3"], &[]).message,
        "flag provided but not defined: -bogus"
    );
    let e = fails(&["--max-txn-ops", "abc"], &[]);
    assert_eq!(
        (e.exit_code, e.message.as_str()),
        (
            2,
            "invalid value \"abc\" for flag -max-txn-ops: parse error"
        )
    );
    assert_eq!(
        fails(&["--listen-client-urls", "foo"], &[]).message,
        "invalid value \"foo\" for flag -listen-client-urls: URL scheme must be http, https, unix, or unixs: foo"
    );
    assert_eq!(
        fails(&["--initial-cluster-state", "bar"], &[]).message,
        "invalid value \"bar\" for flag -initial-cluster-state: invalid value"
    );
    assert_eq!(
        fails(&["--debug=maybe"], &[]).message,
        "invalid boolean value \"maybe\" for -debug: parse error"
    );
    assert_eq!(
        fails(&["--name"], &[]).message,
        "flag needs an argument: -name"
    );
    assert_eq!(fails(&["---x"], &[]).message, "bad flag syntax: ---x");
    assert_eq!(fails(&["--snapshot-count", "-1"], &[]).exit_code, 2);
    assert_eq!(fails(&["--grpc-keepalive-time", "5s"], &[]).exit_code, 2);
    assert_eq!(fails(&["--grpc-keepalive-interval", "5"], &[]).exit_code, 2);
}

#[test]
fn help_and_version() {
    for h in ["-h", "--help", "-help"] {
        match parse(&args(&[h]), &[]) {
            Ok(Invocation::Help(text)) => {
                assert!(text.contains("--max-request-bytes"));
                assert!(text.contains("ETCD_MAX_REQUEST_BYTES"));
                assert!(text.contains("--experimental-watch-progress-notify-interval"));
                assert!(text.contains("TERN_CORES"));
            }
            other => panic!("{other:?}"),
        }
    }
    match parse(&args(&["--version"]), &[]) {
        Ok(Invocation::Version(text)) => {
            assert!(text.starts_with("tern Version: "));
            assert!(text.contains("etcd API Version: 3.4\n"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn environment_variables() {
    let c = serve(
        &[],
        &[
            ("ETCD_MAX_REQUEST_BYTES", "4096"),
            ("ETCD_NAME", "n1"),
            ("ETCD_DEBUG", "true"),
        ],
    );
    assert_eq!(c.max_request_bytes, 4096);
    assert_eq!(c.name, "n1");
    assert_eq!(c.data_dir, PathBuf::from("n1.etcd"));
    assert_eq!(
        c.initial_cluster[0].name, "n1",
        "initial cluster follows the name"
    );
    assert_eq!(c.log.level, Level::Debug);
    assert_eq!(c.flag_source("name"), Some(Source::Environment));
    let used: Vec<_> = c
        .notices
        .iter()
        .filter(|n| n.msg == "recognized and used environment variable")
        .collect();
    assert_eq!(used.len(), 3);
    // Empty values are ignored, as etcd does.
    assert_eq!(serve(&[], &[("ETCD_MAX_TXN_OPS", "")]).max_txn_ops, 128);
    // Unknown ETCD_* variables warn; others are not ours.
    let c = serve(&[], &[("ETCD_FOO", "1"), ("HOME", "/root")]);
    let unknown: Vec<_> = c
        .notices
        .iter()
        .filter(|n| n.msg == "unrecognized environment variable")
        .collect();
    assert_eq!(unknown.len(), 1);
    assert_eq!(
        unknown[0].field("environment-variable"),
        Some(&Value::Str("ETCD_FOO=1".into()))
    );
    // A bad value names the variable.
    let e = fails(&[], &[("ETCD_MAX_TXN_OPS", "x")]);
    assert_eq!(e.exit_code, 1);
    assert!(
        e.message
            .contains("invalid value \"x\" for ETCD_MAX_TXN_OPS: parse error"),
        "{}",
        e.message
    );
    // tern's own flags use TERN_.
    assert_eq!(serve(&[], &[("TERN_CORES", "1")]).cores, 1);
    // ETCD_VERSION cannot be set.
    let c = serve(&[], &[("ETCD_VERSION", "1")]);
    assert!(c
        .notices
        .iter()
        .any(|n| n.msg == "cannot set special environment variable"));
}

#[test]
fn flag_and_env_for_the_same_setting_conflict_as_in_etcd() {
    let e = fails(&["--name", "a"], &[("ETCD_NAME", "b")]);
    assert_eq!(e.exit_code, 1);
    assert!(e.message.contains("conflicting environment variable \"ETCD_NAME\" is shadowed by corresponding command-line flag"), "{}", e.message);
}

#[test]
fn urls_and_cluster() {
    let c = serve(
        &[
            "--name=m2",
            "--listen-client-urls=http://127.0.0.1:3000,http://[::1]:3000",
            "--advertise-client-urls=http://example.com:3000",
            "--listen-peer-urls=https://0.0.0.0:3001",
            "--initial-advertise-peer-urls=https://10.0.0.2:3001",
            "--initial-cluster=m1=https://10.0.0.1:3001,m2=https://10.0.0.2:3001,m3=https://10.0.0.3:3001",
            "--initial-cluster-state=existing",
        ],
        &[],
    );
    assert_eq!(c.client_listen_addrs().len(), 2);
    assert_eq!(c.listen_peer_urls[0].scheme, Scheme::Https);
    assert_eq!(c.advertise_client_urls[0].socket_addr, None);
    assert_eq!(c.advertise_client_urls[0].host, "example.com");
    let names: Vec<_> = c.initial_cluster.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["m1", "m2", "m3"]);
    assert_eq!(c.initial_cluster_state, ClusterState::Existing);

    let e = fails(
        &[
            "--listen-client-urls=http://example.com:1",
            "--advertise-client-urls=http://a:1",
        ],
        &[],
    );
    assert!(
        e.message
            .contains("expected IP in URL for binding (http://example.com:1)"),
        "{}",
        e.message
    );
    let e = fails(&["--listen-client-urls=http://127.0.0.1:1"], &[]);
    assert!(e.message.contains(
        "--advertise-client-urls is required when --listen-client-urls is set explicitly"
    ));
    let e = fails(&["--listen-peer-urls=http://127.0.0.1:1/x"], &[]);
    assert!(
        e.message
            .contains("URL must not contain a path: http://127.0.0.1:1/x"),
        "{}",
        e.message
    );
    let e = fails(&["--listen-peer-urls=http://127.0.0.1"], &[]);
    assert!(
        e.message
            .contains("URL address does not have the form \"host:port\""),
        "{}",
        e.message
    );
    let e = fails(
        &["--name=x", "--initial-cluster=y=http://127.0.0.1:2380"],
        &[],
    );
    assert!(
        e.message
            .contains("couldn't find local name \"x\" in the initial cluster configuration"),
        "{}",
        e.message
    );
}

#[test]
fn raft_timing_validation() {
    let e = fails(
        &["--heartbeat-interval=300", "--election-timeout=1000"],
        &[],
    );
    assert!(e.message.contains(
        "--election-timeout[1000ms] should be at least as 5 times as --heartbeat-interval[300ms]"
    ));
    let e = fails(&["--election-timeout=60000"], &[]);
    assert!(e
        .message
        .contains("is too long, and should be set less than 50000ms"));
    assert!(fails(&["--heartbeat-interval=0"], &[])
        .message
        .contains("--heartbeat-interval must be >0"));
}

#[test]
fn logging_flags() {
    let c = serve(
        &[
            "--logger=capnslog",
            "--log-level=warn",
            "--log-outputs=stdout,/tmp/x.log",
        ],
        &[],
    );
    assert_eq!(c.log.logger, LoggerKind::Capnslog);
    assert_eq!(c.log.level, Level::Warn);
    assert_eq!(
        c.log.outputs,
        vec![LogOutput::Stdout, LogOutput::File("/tmp/x.log".into())]
    );
    assert_eq!(
        serve(&["--log-output=stdout"], &[]).log.outputs,
        vec![LogOutput::Stdout]
    );
    assert_eq!(fails(&["--log-level=trace"], &[]).exit_code, 2);
    assert!(fails(&["--log-outputs=default,stdout"], &[])
        .message
        .contains("multi logoutput"));
}

#[test]
fn no_effect_flags_listed_once_each() {
    let c = serve(
        &[
            "--max-snapshots=5",
            "--enable-v2=true",
            "--pre-vote",
            "--max-txn-ops=3",
            "--max-snapshots=6",
        ],
        &[("ETCD_MAX_WALS", "3")],
    );
    assert_eq!(
        c.no_effect_flags,
        vec!["max-snapshots", "max-wals", "pre-vote", "enable-v2"]
    );
    // etcd's long-ignored flags warn in etcd's words rather than being listed.
    let c = serve(&["-v"], &[]);
    assert!(c.no_effect_flags.is_empty());
    assert!(c
        .notices
        .iter()
        .any(|n| n.msg == "flag \"-v\" is no longer supported - ignoring."));
}

#[test]
fn cores() {
    assert_eq!(serve(&["--cores=1"], &[]).cores, 1);
    assert!(fails(&["--cores=100000"], &[]).message.contains("exceeds"));
}

#[test]
fn config_file() {
    let dir = std::env::temp_dir().join(format!("tern-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("etcd.yml");
    std::fs::write(
        &path,
        "name: filed\nmax-txn-ops: 9\nlog-outputs: [stdout]\nmax-snapshots: 10\n\
         client-transport-security:\n  cert-file: /c.pem\n  client-cert-auth: true\n\
         peer-transport-security:\n  allowed-cn: x\nwal-dir:\nbogus-key: 1\n",
    )
    .unwrap();
    let path_text = path.to_str().unwrap();
    // The file wins over flags and environment, as in etcd.
    let c = serve(
        &["--config-file", path_text, "--max-txn-ops=1"],
        &[("ETCD_NAME", "envname")],
    );
    assert_eq!(c.name, "filed");
    assert_eq!(c.max_txn_ops, 9);
    assert_eq!(c.log.outputs, vec![LogOutput::Stdout]);
    assert_eq!(c.flag_value("cert-file"), Some("/c.pem"));
    assert_eq!(c.flag_value("peer-cert-allowed-cn"), Some("x"));
    assert_eq!(c.no_effect_flags, vec!["max-snapshots"]);
    assert!(c.notices.iter().any(|n| n.msg.starts_with("unknown key")));
    std::fs::write(&path, "max-txn-ops: lots\n").unwrap();
    assert!(fails(&[], &[("ETCD_CONFIG_FILE", path_text)])
        .message
        .contains("invalid value \"lots\" for max-txn-ops"));
    std::fs::remove_dir_all(&dir).unwrap();
}
