//! tern's command line, environment and config file, read the way etcd reads them
//! (etcd `etcdmain/config.go`, `pkg/flags`, `embed/config.go`), so an etcd command
//! line or systemd unit runs tern unchanged.
//!
//! Order of precedence, as in etcd: a `--config-file` (or `ETCD_CONFIG_FILE`) replaces
//! everything else; otherwise command-line flags, then `ETCD_*`/`TERN_*` variables for
//! flags not on the command line, then defaults. A variable for a flag that *is* on the
//! command line is an error (etcd: "conflicting environment variable is shadowed by
//! corresponding command-line flag"). Argument forms follow Go's `flag` package:
//! `-f v`, `-f=v`, `--f v`, `--f=v`; booleans `--f` or `--f=false`, never `--f false`;
//! parsing stops at `--` or the first non-flag argument.
//!
//! Exit codes as etcd: 2 for a flag-syntax error (unknown flag, bad value, missing
//! value), 1 for a configuration that parses but is invalid.

pub mod file;
pub mod flags;
pub mod go;
pub mod url;

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::log::{Field, Level, LogConfig, LogOutput, LoggerKind, Value};
use flags::{FlagSpec, Kind, Section};
pub use url::{Scheme, ServerUrl};

/// etcd's longest allowed election timeout (`embed.maxElectionMs`).
pub const ELECTION_TIMEOUT_MS_MAX: u64 = 50_000;

/// The etcd API version tern implements.
pub const ETCD_API_VERSION: &str = "3.4";

/// `--initial-cluster-state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterState {
    New,
    Existing,
}

/// One `name=url` group of `--initial-cluster` (a member may list several URLs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitialMember {
    pub name: String,
    /// Sorted as etcd sorts them (by URL text).
    pub peer_urls: Vec<ServerUrl>,
}

/// Where a flag's value came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    CommandLine,
    Environment,
    ConfigFile,
}

/// Something worth logging once the logger exists (parsing happens before it does).
#[derive(Clone, Debug, PartialEq)]
pub struct Notice {
    pub level: Level,
    pub msg: String,
    pub fields: Vec<(&'static str, Value)>,
}

/// The validated configuration. Fields are the flags tern acts on; every flag is also
/// available as text through [`Config::flag_value`].
#[derive(Clone, Debug)]
pub struct Config {
    pub name: String,
    pub data_dir: PathBuf,
    pub listen_client_urls: Vec<ServerUrl>,
    pub advertise_client_urls: Vec<ServerUrl>,
    pub listen_peer_urls: Vec<ServerUrl>,
    pub initial_advertise_peer_urls: Vec<ServerUrl>,
    pub initial_cluster: Vec<InitialMember>,
    pub initial_cluster_token: String,
    pub initial_cluster_state: ClusterState,
    pub max_request_bytes: u64,
    pub max_txn_ops: u64,
    pub heartbeat_interval_ms: u64,
    pub election_timeout_ms: u64,
    pub log: LogConfig,
    /// Cores to run on (`--cores`/`TERN_CORES`), at least 1, at most those available.
    pub cores: usize,
    /// `--config-file`, if one was used.
    pub config_file: Option<PathBuf>,
    /// Flags that were given (on the command line, in the environment or in the config
    /// file) but that tern does not act on yet, in table order, each once.
    pub no_effect_flags: Vec<&'static str>,
    /// Messages from parsing to log once logging is set up ([`Config::log_notices`]).
    pub notices: Vec<Notice>,
    /// Every flag's effective value as text (given or default).
    values: BTreeMap<&'static str, String>,
    sources: BTreeMap<&'static str, Source>,
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Invocation {
    Serve(Box<Config>),
    /// `-h`/`--help`: print this to stdout, exit 0.
    Help(String),
    /// `--version`: print this to stdout, exit 0.
    Version(String),
}

/// A command line or configuration etcd would reject.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub message: String,
    /// 2 for flag syntax (then etcd also prints its usage line), 1 otherwise.
    pub exit_code: i32,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}
impl std::error::Error for ConfigError {}

fn syntax_error(message: String) -> ConfigError {
    ConfigError {
        message,
        exit_code: 2,
    }
}

/// etcd wraps validation failures as "error verifying flags, %v. See 'etcd --help'.".
fn verify_error(detail: impl std::fmt::Display) -> ConfigError {
    ConfigError {
        message: format!("error verifying flags, {detail}. See 'tern --help'."),
        exit_code: 1,
    }
}

/// The usage line etcd prints after a flag-syntax error.
pub const USAGE_LINE: &str = "Usage:\n\n  tern [flags]\n    Start a tern server.\n\n  tern --version\n    Show the version of tern.\n\n  tern -h | --help\n    Show the help information about tern.\n\n  tern --config-file\n    Path to the server configuration file. Note that if a configuration file is provided, other command line flags and environment variables will be ignored.\n";

impl Config {
    /// Parses the process's arguments and environment. Prints help or version and exits
    /// 0 when asked; prints the error (and usage) and exits 1 or 2 on bad input, as etcd.
    /// On success installs the logger (`crate::log::init`) and logs the parse notices
    /// (environment variables used or unrecognised, ignored flags), but *not* the
    /// no-effect flags: the caller logs those (see [`Config::no_effect_flags`]).
    pub fn from_args() -> Config {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let env: Vec<(String, String)> = std::env::vars().collect();
        match parse(&args, &env) {
            Ok(Invocation::Serve(config)) => {
                if let Err(e) = crate::log::init(&config.log) {
                    eprintln!("failed to set up logging: {e}");
                    std::process::exit(1);
                }
                config.log_notices();
                *config
            }
            Ok(Invocation::Help(text)) | Ok(Invocation::Version(text)) => {
                print!("{text}");
                std::process::exit(0);
            }
            Err(e) => {
                eprintln!("{}", e.message);
                if e.exit_code == 2 {
                    eprintln!("{USAGE_LINE}");
                }
                std::process::exit(e.exit_code);
            }
        }
    }

    /// Logs [`Config::notices`].
    pub fn log_notices(&self) {
        for notice in &self.notices {
            let fields: Vec<Field<'_>> =
                notice.fields.iter().map(|(k, v)| (*k, v.clone())).collect();
            crate::log::log(notice.level, "config/mod.rs:0", &notice.msg, &fields);
        }
    }

    /// Logs one warning per flag in [`Config::no_effect_flags`].
    pub fn log_no_effect_flags(&self) {
        for flag in &self.no_effect_flags {
            crate::warn!("flag has no effect in tern yet", "flag" => format!("--{flag}"));
        }
    }

    /// A flag's effective value as text (given or default); `None` for unknown names.
    pub fn flag_value(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// Where a flag's value came from; `None` when it is the default.
    pub fn flag_source(&self, name: &str) -> Option<Source> {
        self.sources.get(name).copied()
    }

    /// Resolved addresses of `--listen-client-urls` (http/https ones).
    pub fn client_listen_addrs(&self) -> Vec<std::net::SocketAddr> {
        self.listen_client_urls
            .iter()
            .filter_map(|u| u.socket_addr)
            .collect()
    }

    /// Resolved addresses of `--listen-peer-urls` (http/https ones).
    pub fn peer_listen_addrs(&self) -> Vec<std::net::SocketAddr> {
        self.listen_peer_urls
            .iter()
            .filter_map(|u| u.socket_addr)
            .collect()
    }
}

/// Checks `text` as a value of `spec`, with Go's/etcd's error text.
pub fn validate_value(spec: &FlagSpec, text: &str) -> Result<(), String> {
    match spec.kind {
        Kind::Bool | Kind::Ignored => go::parse_bool(text).map(drop).map_err(str::to_owned),
        Kind::Uint => go::parse_uint(text).map(drop).map_err(str::to_owned),
        Kind::Uint32 => match text.parse::<u64>() {
            Ok(v) if v <= u64::from(u32::MAX) => Ok(()),
            Ok(_) => Err(format!(
                "strconv.ParseUint: parsing \"{text}\": value out of range"
            )),
            Err(_) => Err(format!(
                "strconv.ParseUint: parsing \"{text}\": invalid syntax"
            )),
        },
        Kind::Int => go::parse_int(text).map(drop).map_err(str::to_owned),
        Kind::Duration => go::parse_duration(text).map(drop),
        Kind::Str | Kind::Strings => Ok(()),
        Kind::Urls => {
            if text.is_empty() || (text == "*" && spec.default == "*") {
                Ok(())
            } else {
                url::parse_urls(text).map(drop)
            }
        }
        Kind::Choice(valid) => {
            if valid.contains(&text) {
                Ok(())
            } else {
                Err("invalid value".to_owned())
            }
        }
    }
}

/// Flags given on the command line (last one wins), the first non-flag argument, and
/// whether help was asked for.
type CommandLine = (Vec<(&'static FlagSpec, String)>, Option<String>, bool);

/// Go `flag` tokenisation. Returns the flags given (last one wins) and the first
/// non-flag argument, if any.
fn parse_command_line(args: &[String]) -> Result<CommandLine, ConfigError> {
    let mut given = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        if arg.len() < 2 || !arg.starts_with('-') {
            return Ok((given, Some(arg.clone()), false));
        }
        let minuses = if arg.as_bytes()[1] == b'-' { 2 } else { 1 };
        if arg == "--" {
            return Ok((given, args.get(i + 1).cloned(), false));
        }
        let body = &arg[minuses..];
        if body.is_empty() || body.starts_with('-') || body.starts_with('=') {
            return Err(syntax_error(format!("bad flag syntax: {arg}")));
        }
        let (name, inline_value) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v.to_owned())),
            None => (body, None),
        };
        let spec = match flags::find(name) {
            Some(spec) => spec,
            None if name == "h" || name == "help" => return Ok((given, None, true)),
            None => {
                return Err(syntax_error(format!(
                    "flag provided but not defined: -{name}"
                )))
            }
        };
        let value = match spec.kind {
            Kind::Bool | Kind::Ignored => match inline_value {
                Some(v) => {
                    go::parse_bool(&v).map_err(|e| {
                        syntax_error(format!("invalid boolean value {v:?} for -{name}: {e}"))
                    })?;
                    v
                }
                None => "true".to_owned(),
            },
            _ => {
                let v = match inline_value {
                    Some(v) => v,
                    None => {
                        i += 1;
                        args.get(i).cloned().ok_or_else(|| {
                            syntax_error(format!("flag needs an argument: -{name}"))
                        })?
                    }
                };
                validate_value(spec, &v).map_err(|e| {
                    syntax_error(format!("invalid value {v:?} for flag -{name}: {e}"))
                })?;
                v
            }
        };
        given.retain(|(s, _): &(&FlagSpec, String)| s.name != spec.name);
        given.push((spec, value));
        i += 1;
    }
    Ok((given, None, false))
}

/// Parses `args` (without the program name) and `env` into what tern should do.
pub fn parse(args: &[String], env: &[(String, String)]) -> Result<Invocation, ConfigError> {
    let (command_line, stray, help) = parse_command_line(args)?;
    if help {
        return Ok(Invocation::Help(help_text()));
    }
    let cli_value = |name: &str| {
        command_line
            .iter()
            .find(|(s, _)| s.name == name)
            .map(|(_, v)| v.clone())
    };
    if cli_value("version").is_some_and(|v| go::parse_bool(&v) == Ok(true)) {
        return Ok(Invocation::Version(version_text()));
    }
    if let Some(stray) = stray {
        return Err(verify_error(format!("'{stray}' is not a valid flag")));
    }

    let env_value = |key: &str| env.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    let mut notices = Vec::new();
    let mut values: BTreeMap<&'static str, String> = BTreeMap::new();
    let mut sources: BTreeMap<&'static str, Source> = BTreeMap::new();

    let config_file = cli_value("config-file")
        .filter(|v| !v.is_empty())
        .or_else(|| env_value("ETCD_CONFIG_FILE").filter(|v| !v.is_empty()));
    if let Some(path) = &config_file {
        // etcd: the file replaces flags and environment entirely.
        let from_file =
            file::read(std::path::Path::new(path), &mut notices).map_err(verify_error)?;
        for (spec, value) in from_file {
            values.insert(spec.name, value);
            sources.insert(spec.name, Source::ConfigFile);
        }
        values.insert("config-file", path.clone());
        sources.insert(
            "config-file",
            if cli_value("config-file").is_some() {
                Source::CommandLine
            } else {
                Source::Environment
            },
        );
        notices.push(Notice {
            level: Level::Info,
            msg: "loaded server configuration, other configuration command line flags and environment variables will be ignored if provided".to_owned(),
            fields: vec![("path", path.as_str().into())],
        });
    } else {
        for (spec, value) in &command_line {
            values.insert(spec.name, value.clone());
            sources.insert(spec.name, Source::CommandLine);
        }
        apply_environment(env, &mut values, &mut sources, &mut notices)?;
    }

    for (name, source) in &sources {
        if let Some(spec) = flags::find(name) {
            if spec.kind == Kind::Ignored && *source != Source::ConfigFile {
                notices.push(Notice {
                    level: Level::Warn,
                    msg: format!("flag \"-{name}\" is no longer supported - ignoring."),
                    fields: vec![],
                });
            }
        }
    }
    build(values, sources, notices, config_file.map(PathBuf::from))
}

/// etcd `flags.SetFlagsFromEnv` + `verifyEnv`, for the `ETCD_` and `TERN_` prefixes.
fn apply_environment(
    env: &[(String, String)],
    values: &mut BTreeMap<&'static str, String>,
    sources: &mut BTreeMap<&'static str, Source>,
    notices: &mut Vec<Notice>,
) -> Result<(), ConfigError> {
    let mut used_keys = Vec::new();
    for spec in flags::FLAGS {
        let key = flags::env_name(spec);
        if key == "ETCD_VERSION" || key == "ETCD_CONFIG_FILE" || sources.contains_key(spec.name) {
            continue;
        }
        let Some((_, value)) = env.iter().find(|(k, _)| *k == key) else {
            continue;
        };
        if value.is_empty() {
            continue;
        }
        validate_value(spec, value)
            .map_err(|e| verify_error(format!("invalid value {value:?} for {key}: {e}")))?;
        values.insert(spec.name, value.clone());
        sources.insert(spec.name, Source::Environment);
        used_keys.push(key.clone());
        notices.push(Notice {
            level: Level::Info,
            msg: "recognized and used environment variable".to_owned(),
            fields: vec![
                ("variable-name", key.into()),
                ("variable-value", value.as_str().into()),
            ],
        });
    }
    for (key, value) in env {
        if used_keys.contains(key) || key == "ETCD_CONFIG_FILE" {
            continue;
        }
        if key == "ETCD_VERSION" {
            notices.push(Notice {
                level: Level::Warn,
                msg: "cannot set special environment variable".to_owned(),
                fields: vec![
                    ("key", key.as_str().into()),
                    ("value", value.as_str().into()),
                ],
            });
            continue;
        }
        let shadowed = sources.iter().any(|(name, source)| {
            *source == Source::CommandLine
                && flags::find(name).is_some_and(|spec| flags::env_name(spec) == *key)
        });
        if shadowed {
            return Err(verify_error(format!(
                "conflicting environment variable {key:?} is shadowed by corresponding command-line flag (either unset environment variable or disable flag)"
            )));
        }
        if key.starts_with("ETCD_") || key.starts_with("TERN_") {
            notices.push(Notice {
                level: Level::Warn,
                msg: "unrecognized environment variable".to_owned(),
                fields: vec![("environment-variable", format!("{key}={value}").into())],
            });
        }
    }
    Ok(())
}

/// Turns the given values (plus defaults) into a validated [`Config`].
fn build(
    mut values: BTreeMap<&'static str, String>,
    sources: BTreeMap<&'static str, Source>,
    mut notices: Vec<Notice>,
    config_file: Option<PathBuf>,
) -> Result<Invocation, ConfigError> {
    let is_set = |name: &str| sources.contains_key(name);
    for spec in flags::FLAGS {
        values
            .entry(spec.name)
            .or_insert_with(|| spec.default.to_owned());
    }
    let text = |name: &str| values.get(name).cloned().unwrap_or_default();
    // Values were checked against their kind when read; these re-parses cannot fail for
    // input that got here, but an error is still reported rather than assumed away.
    let uint = |name: &str| -> Result<u64, ConfigError> {
        let v = text(name);
        go::parse_uint(&v)
            .map_err(|e| verify_error(format!("invalid value {v:?} for flag -{name}: {e}")))
    };
    let urls = |name: &str| -> Result<Vec<ServerUrl>, ConfigError> {
        url::parse_urls(&text(name)).map_err(verify_error)
    };

    let name = text("name");
    let data_dir = match text("data-dir") {
        d if d.is_empty() || d == "${name}.etcd" => PathBuf::from(format!("{name}.etcd")),
        d => PathBuf::from(d),
    };
    let listen_peer_urls = urls("listen-peer-urls")?;
    let listen_client_urls = urls("listen-client-urls")?;
    for list in [&listen_peer_urls, &listen_client_urls] {
        url::check_bind_urls(list).map_err(verify_error)?;
    }
    for name in ["listen-client-http-urls", "listen-metrics-urls"] {
        let v = text(name);
        if !v.is_empty() {
            url::check_bind_urls(&url::parse_urls(&v).map_err(verify_error)?)
                .map_err(verify_error)?;
        }
    }
    let initial_advertise_peer_urls = urls("initial-advertise-peer-urls")?;
    if let Err(e) = url::check_host_urls(&initial_advertise_peer_urls) {
        return Err(verify_error(format!(
            "--initial-advertise-peer-urls {:?} must be \"host:port\" ({e})",
            url::join(&initial_advertise_peer_urls)
        )));
    }
    // etcd drops the default advertise-client-urls when listen-client-urls is set
    // without it, then requires it (embed.ErrUnsetAdvertiseClientURLsFlag).
    if is_set("listen-client-urls") && !is_set("advertise-client-urls") {
        return Err(verify_error(
            "--advertise-client-urls is required when --listen-client-urls is set explicitly",
        ));
    }
    let advertise_client_urls = urls("advertise-client-urls")?;
    if let Err(e) = url::check_host_urls(&advertise_client_urls) {
        return Err(verify_error(format!(
            "--advertise-client-urls {:?} must be \"host:port\" ({e})",
            url::join(&advertise_client_urls)
        )));
    }

    let discovery_set = ["discovery", "discovery-srv", "discovery-srv-name"]
        .iter()
        .any(|n| !text(n).is_empty());
    let initial_cluster_text = if is_set("initial-cluster") {
        text("initial-cluster")
    } else if discovery_set {
        String::new()
    } else {
        // etcd `InitialClusterFromName`: this member alone, under its own name.
        initial_advertise_peer_urls
            .iter()
            .map(|u| format!("{name}={}", u.url))
            .collect::<Vec<_>>()
            .join(",")
    };
    let initial_cluster = url::parse_urls_map(&initial_cluster_text).map_err(verify_error)?;
    let bootstrap_sources = [
        !text("discovery").is_empty(),
        !initial_cluster_text.is_empty(),
        !text("discovery-srv").is_empty(),
    ];
    if bootstrap_sources.iter().filter(|b| **b).count() > 1 {
        return Err(verify_error(
            "multiple discovery or bootstrap flags are set. Choose one of \"initial-cluster\", \"discovery\" or \"discovery-srv\"",
        ));
    }
    let initial_cluster_state = match text("initial-cluster-state").as_str() {
        "existing" => ClusterState::Existing,
        _ => ClusterState::New,
    };
    if !discovery_set && !initial_cluster.iter().any(|m| m.name == name) {
        return Err(verify_error(format!(
            "couldn't find local name {name:?} in the initial cluster configuration"
        )));
    }

    let heartbeat_interval_ms = uint("heartbeat-interval")?;
    let election_timeout_ms = uint("election-timeout")?;
    if heartbeat_interval_ms == 0 {
        return Err(verify_error(format!(
            "--heartbeat-interval must be >0 (set to {heartbeat_interval_ms}ms)"
        )));
    }
    if election_timeout_ms == 0 {
        return Err(verify_error(format!(
            "--election-timeout must be >0 (set to {election_timeout_ms}ms)"
        )));
    }
    if heartbeat_interval_ms.saturating_mul(5) > election_timeout_ms {
        return Err(verify_error(format!(
            "--election-timeout[{election_timeout_ms}ms] should be at least as 5 times as --heartbeat-interval[{heartbeat_interval_ms}ms]"
        )));
    }
    if election_timeout_ms > ELECTION_TIMEOUT_MS_MAX {
        return Err(verify_error(format!(
            "--election-timeout[{election_timeout_ms}ms] is too long, and should be set less than {ELECTION_TIMEOUT_MS_MAX}ms"
        )));
    }

    let log = log_config(&text, &is_set)?;

    let cores_available = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cores = match uint("cores")? {
        0 => cores_available,
        n if n as usize > cores_available => {
            return Err(verify_error(format!(
                "--cores {n} exceeds the {cores_available} cores available"
            )))
        }
        n => n as usize,
    };

    let no_effect_flags: Vec<&'static str> = flags::FLAGS
        .iter()
        .filter(|spec| !spec.tern_effective && spec.kind != Kind::Ignored && is_set(spec.name))
        .map(|spec| spec.name)
        .collect();
    if is_set("log-output") {
        notices.push(Notice {
            level: Level::Warn,
            msg: "'--log-output' flag is deprecated; use '--log-outputs' instead".to_owned(),
            fields: vec![],
        });
    }

    let initial_cluster_token = text("initial-cluster-token");
    let max_request_bytes = uint("max-request-bytes")?;
    let max_txn_ops = uint("max-txn-ops")?;
    values.insert("initial-cluster", initial_cluster_text);
    Ok(Invocation::Serve(Box::new(Config {
        name,
        data_dir,
        listen_client_urls,
        advertise_client_urls,
        listen_peer_urls,
        initial_advertise_peer_urls,
        initial_cluster,
        initial_cluster_token,
        initial_cluster_state,
        max_request_bytes,
        max_txn_ops,
        heartbeat_interval_ms,
        election_timeout_ms,
        log,
        cores,
        config_file,
        no_effect_flags,
        notices,
        values,
        sources,
    })))
}

fn log_config(
    text: &dyn Fn(&str) -> String,
    is_set: &dyn Fn(&str) -> bool,
) -> Result<LogConfig, ConfigError> {
    let logger = match text("logger").as_str() {
        "capnslog" => LoggerKind::Capnslog,
        _ => LoggerKind::Zap,
    };
    let mut level = Level::parse(&text("log-level")).unwrap_or(Level::Info);
    if go::parse_bool(&text("debug")) == Ok(true) {
        level = Level::Debug;
    }
    let outputs_text = if !is_set("log-outputs") && is_set("log-output") {
        text("log-output")
    } else {
        text("log-outputs")
    };
    let mut outputs_named: Vec<&str> = Vec::new();
    for output in outputs_text.split(',').filter(|s| !s.is_empty()) {
        if !outputs_named.contains(&output) {
            outputs_named.push(output);
        }
    }
    if outputs_named.len() > 1 && outputs_named.contains(&"default") {
        return Err(verify_error(
            "multi logoutput for \"default\" is not supported yet",
        ));
    }
    let mut outputs: Vec<LogOutput> = outputs_named.into_iter().map(LogOutput::parse).collect();
    if outputs.is_empty() {
        outputs.push(LogOutput::Stderr);
    }
    Ok(LogConfig {
        logger,
        level,
        outputs,
    })
}

/// `tern --version`, shaped like etcd's.
pub fn version_text() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    format!(
        "tern Version: {}\netcd API Version: {ETCD_API_VERSION}\nGit SHA: Not provided\nOS/Arch: {}/{arch}\n",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::OS,
    )
}

/// `tern --help`: the usage line, then every flag by etcd's sections, rendered by clap
/// from the flag table.
pub fn help_text() -> String {
    let mut command = clap::Command::new("tern")
        .about("An etcd-compatible key-value server (etcd API 3.4).")
        .override_usage("tern [flags]")
        .disable_help_flag(true)
        .disable_version_flag(true)
        .after_help(
            "Every flag can also be set by an environment variable: ETCD_ + the flag name in \
             upper case with dashes as underscores (ETCD_MAX_REQUEST_BYTES); tern's own flags \
             use TERN_. Flags accept Go's forms: -flag v, -flag=v, --flag v, --flag=v; \
             booleans as --flag or --flag=false.",
        );
    for spec in flags::FLAGS {
        if spec.section == Section::Hidden {
            continue;
        }
        let mut help = spec.help.to_owned();
        if !spec.tern_effective {
            help.push_str(" [accepted; no effect in tern yet]");
        }
        help.push_str(&format!(" [env: {}]", flags::env_name(spec)));
        let value_name = match spec.kind {
            Kind::Bool => "BOOL",
            Kind::Uint | Kind::Uint32 | Kind::Int => "N",
            Kind::Duration => "DURATION",
            Kind::Urls => "URLS",
            Kind::Strings => "LIST",
            _ => "VALUE",
        };
        let mut arg = clap::Arg::new(spec.name)
            .long(spec.name)
            .value_name(value_name)
            .help(help)
            .help_heading(spec.section.heading());
        if !spec.default.is_empty() && spec.name != "version" {
            arg = arg.default_value(spec.default);
        }
        command = command.arg(arg);
    }
    command.render_help().to_string()
}

/// Lists the notices' fields, for tests and for callers that print rather than log.
impl Notice {
    pub fn field(&self, key: &str) -> Option<&Value> {
        self.fields.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }
}

#[cfg(test)]
mod tests;
