//! Starting and stopping the executors.
//!
//! Order matters: the state executor starts first so that network executors can connect
//! their command channels to it; listeners are bound before "ready to serve client
//! requests" is logged, because tooling waits for that line and then connects at once.
//! On SIGTERM/SIGINT the network executors stop first (GOAWAY, drain), which drops their
//! command senders, which ends the state executor once it has answered everything queued.
//!
//! On one core (`--cores 1`, a one-CPU affinity mask or machine) the only network core is
//! served by the state executor itself (COLOCATED): with two threads on one CPU, every
//! request crossed threads twice, each crossing an eventfd wake and a context switch.
//! Nothing else changes: the network core still reaches the state machine through its
//! command channel and reply oneshots, now without leaving the thread.
//!
//! The state executor applies commands in batches: each per-core receiver task applies what
//! its channel already holds (up to `GROUP_COMMIT_COMMANDS_MAX` commands or
//! `COMMAND_BATCH_TIME_MAX` of work), yields so the other cores' tasks can do the same,
//! then flushes: one backend commit for everything applied, then the replies (see
//! `StateMachine::flush`).
//!
//! Invariant: a receiver task yields after every batch. `recv` on a channel that holds a
//! command is ready at once, so a task that only yielded when it had written something
//! never gave up the executor while its core kept it fed: two Ranges walking the whole key
//! space chunk by chunk from one core (each chunk one command, the next sent while this
//! one is read) kept the raft ready loop from running for seconds, and with it every
//! linearizable read's ReadIndex round (issue 17).

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;

use futures::channel::oneshot;
use futures::FutureExt;
use glommio::channels::shared_channel::{self, SharedReceiver, SharedSender};
use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement};

use crate::http2::{ServerConfig, ShutdownSignal};
use crate::lease::LeaseOptions;
use crate::mvcc::btree_backend::{self, BtreeBackend};
use crate::mvcc::KvStore;
use crate::net::listener::bind_unix;
use crate::net::tls::ReloadingServerConfig;
use crate::net::{ClientListener, ListenSocket};
use crate::proto::etcdserverpb as pb;
use crate::runtime::{check_memlock, Plan};
use crate::server::network::{
    bind_lingering, claim_client_addrs, executor_listeners, into_glommio_listeners, serve_clients,
    stop_listening,
};
use crate::service::watch::hub::WatchHub;
use crate::service::{self, Limits, ServiceContext};
use crate::state::client::{Command, StateClient, COMMAND_QUEUE_MAX};
use crate::state::machine::{run_lease_timer, Identity, StateMachine};
use crate::watch::{FeedMessage, FEED_QUEUE_MAX};

/// io_uring buffer memory each executor registers. Network executors do no file I/O, so
/// glommio's 10 MiB default would only eat into RLIMIT_MEMLOCK.
const NETWORK_IO_MEMORY_BYTES: usize = 256 * 1024;
const STATE_IO_MEMORY_BYTES: usize = 2 * 1024 * 1024;

/// Threads of the state executor's blocking pool: one runs the backend writer's job (one
/// at a time), the other keeps snapshot and file work from queueing behind a commit.
const BLOCKING_POOL_THREADS: usize = 2;

/// Most commands one receiver task applies before the batch is committed: bounds the
/// replies held back (and so the latency of the first of them).
const GROUP_COMMIT_COMMANDS_MAX: usize = COMMAND_QUEUE_MAX;

/// Longest one receiver task works through its channel before it yields: how long the ready
/// loop (ReadIndex rounds, applies) and the other cores' commands wait for it, beyond the
/// one command (at most a range chunk, `service::kv_range::CHUNK_BYTES_MAX`) that was
/// running when the budget ran out.
const COMMAND_BATCH_TIME_MAX: std::time::Duration = std::time::Duration::from_millis(2);

/// The Auth flags tern acts on.
#[derive(Clone, Debug)]
pub struct AuthOptions {
    pub bcrypt_cost: u32,
    /// --auth-token-ttl, for simple tokens.
    pub token_ttl: std::time::Duration,
    /// `--auth-token jwt,...`; None: simple tokens.
    pub jwt: Option<std::sync::Arc<crate::auth::jwt::JwtKeys>>,
}

/// Threads of each network executor's blocking pool: bcrypt password work
/// (`service::auth`), which must never run on the executor.
const NETWORK_BLOCKING_POOL_THREADS: usize = 1;

/// What the server needs to know, already validated (see `config`).
#[derive(Clone, Debug)]
pub struct ServerOptions {
    pub identity: Identity,
    /// etcd's --data-dir; the backend lives in `member/snap/db` under it.
    pub data_dir: PathBuf,
    /// Addresses of the http:// and https:// client URLs (`--listen-client-urls`).
    pub listen_client_addrs: Vec<SocketAddr>,
    /// One per `listen_client_addrs` entry: whether it is an https:// URL.
    pub listen_client_tls: Vec<bool>,
    /// Paths of the unix:// and unixs:// client URLs, with whether each is unixs://.
    pub listen_client_unix: Vec<(PathBuf, bool)>,
    /// The client TLS settings; `Some` whenever any client URL is https:// or unixs://.
    pub client_tls: Option<crate::net::tls::TlsInfo>,
    /// etcd's --listen-metrics-urls: HTTP listeners serving only /metrics and health.
    pub listen_metrics_addrs: Vec<SocketAddr>,
    /// One per `listen_metrics_addrs` entry: whether it is https:// (served with the
    /// client TLS settings, as etcd serves them; `client_tls` is then `Some`).
    pub listen_metrics_tls: Vec<bool>,
    pub cores: Option<usize>,
    pub limits: Limits,
    pub lease: LeaseOptions,
    /// How long a fresh leader's leases are extended by (etcd: one election timeout).
    pub lease_promote_extend: std::time::Duration,
    pub raft: crate::raft::RaftOptions,
    /// etcd's --backend-batch-interval and --backend-batch-limit (zero: etcd's defaults).
    pub backend_batch_interval: std::time::Duration,
    pub backend_batch_limit: u64,
    /// --bcrypt-cost and --auth-token-ttl (simple tokens).
    pub auth: AuthOptions,
    /// Client-connection transport settings (`--max-concurrent-streams`,
    /// `--grpc-keepalive-*`); `max_recv_message_bytes` is derived from `limits`.
    pub http2: ServerConfig,
}

fn placement(cpu: Option<usize>) -> Placement {
    match cpu {
        Some(cpu) => Placement::Fixed(cpu),
        None => Placement::Unbound,
    }
}

/// Runs the server until SIGTERM or SIGINT.
pub fn run(options: ServerOptions) -> Result<(), String> {
    let plan = Plan::new(options.cores);
    if let Some(wanted) = plan.requested_cores_unavailable {
        crate::warn!(
            "fewer cores available than requested; using what exists",
            "requested-cores" => wanted,
            "cores" => plan.cores_in_use()
        );
    }
    check_memlock(
        plan.cores_in_use() + 1,
        NETWORK_IO_MEMORY_BYTES.max(STATE_IO_MEMORY_BYTES),
    )?;
    // Claimed before anything slow starts, so a port in use fails fast with etcd's error.
    let client_listeners = claim_client_addrs(&options.listen_client_addrs)?;
    let metrics_listeners = claim_client_addrs(&options.listen_metrics_addrs)?;
    crate::metrics::STATE.member_id.store(
        options.identity.member_id,
        std::sync::atomic::Ordering::Relaxed,
    );
    check_peer_addrs_free(&options.raft.listen_peer_addrs)?;
    // Certificates load here, so a bad file fails startup before anything serves.
    let client_tls = match &options.client_tls {
        Some(info) => Some(ReloadingServerConfig::start(
            info.clone(),
            crate::net::tls::CLIENT_FLAGS,
            "client",
        )?),
        None => None,
    };

    // signal-hook's handler only writes to a self-pipe that the main thread reads, so the
    // executors never run signal-handling code of their own.
    let mut signals = signal_hook::iterator::Signals::new([libc::SIGTERM, libc::SIGINT])
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;

    let mut command_senders = Vec::new();
    let mut command_receivers = Vec::new();
    let mut feed_senders = Vec::new();
    let mut feed_receivers = Vec::new();
    for _ in 0..plan.cores_in_use() {
        let (sender, receiver) = shared_channel::new_bounded::<Command>(COMMAND_QUEUE_MAX);
        command_senders.push(sender);
        command_receivers.push(receiver);
        let (sender, receiver) = shared_channel::new_bounded::<FeedMessage>(FEED_QUEUE_MAX);
        feed_senders.push(sender);
        feed_receivers.push(receiver);
    }

    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let (stops, mut cores) = network_cores(
        &options,
        &plan,
        ClaimedListeners {
            client: &client_listeners,
            client_tls,
            metrics: &metrics_listeners,
        },
        command_senders,
        feed_receivers,
        ready_tx,
    )?;
    // Each network core holds its own handles on the listeners; these are kept to stop
    // listening on the way out (`stop_listening`), whatever the executors' io_uring holds.
    // On one core, the only network core runs inside the state executor (`COLOCATED`).
    let colocated = (cores.len() == 1).then(|| cores.remove(0).1);
    let (serving_tx, serving_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let state_executor = start_state_executor(
        &options,
        &plan,
        command_receivers,
        feed_senders,
        serving_tx,
        colocated,
    )?;
    let network_executors = start_network_executors(cores)?;

    let mut startup_error = None;
    for _ in 0..plan.cores_in_use() {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => startup_error = Some(e),
            Err(_) => startup_error = Some("a network executor exited during startup".into()),
        }
    }
    if startup_error.is_none() {
        // etcd serves clients only once its member attributes are published through raft.
        // A member may wait long for a leader (a joining member, a cluster without
        // quorum); SIGTERM must still stop it.
        loop {
            match serving_rx.recv_timeout(std::time::Duration::from_millis(100)) {
                Ok(Ok(())) => break,
                Ok(Err(e)) => {
                    startup_error = Some(e);
                    break;
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    if signals.pending().next().is_some() {
                        crate::info!("received signal before serving; shutting down");
                        for stop in stops {
                            let _ = stop.send(());
                        }
                        for executor in network_executors {
                            let _ = executor.join();
                        }
                        stop_listening(&client_listeners);
                        remove_unix_sockets(&options);
                        stop_listening(&metrics_listeners);
                        return Ok(());
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    startup_error = Some("the state executor exited during startup".into());
                    break;
                }
            }
        }
    }
    if let Some(e) = startup_error {
        for stop in stops {
            let _ = stop.send(());
        }
        return Err(e);
    }

    announce_ready(&options, &plan);

    if let Some(signal) = signals.forever().next() {
        let name = if signal == libc::SIGTERM {
            "terminated"
        } else {
            "interrupt"
        };
        crate::info!("received signal; shutting down", "signal" => name);
    }
    for stop in stops {
        let _ = stop.send(());
    }
    for executor in network_executors {
        let _ = executor.join();
    }
    // After the state executor too: a colocated network core accepts there until it has
    // seen the stop, and a listener shut down under a live accept loop fails every accept
    // at once.
    let _ = state_executor.join();
    stop_listening(&client_listeners);
    stop_listening(&metrics_listeners);
    remove_unix_sockets(&options);
    crate::info!("stopped serving client requests");
    Ok(())
}

/// Starts the state executor: the state machine behind raft, and one task per network
/// core applying that core's commands in batches (see the module comment). `serving`
/// gets one message: `Ok` once this member has published itself through raft, or why
/// raft could not start.
fn start_state_executor(
    options: &ServerOptions,
    plan: &Plan,
    command_receivers: Vec<SharedReceiver<Command>>,
    feed_senders: Vec<SharedSender<FeedMessage>>,
    serving_tx: std::sync::mpsc::Sender<Result<(), String>>,
    colocated: Option<NetworkCore>,
) -> Result<ExecutorJoinHandle<()>, String> {
    convert_etcd_data_dir(&options.data_dir)?;
    let store = open_store(&options.data_dir)?;
    let identity = options.identity.clone();
    let (lease_options, lease_extend) = (options.lease, options.lease_promote_extend);
    let backend_batch = (options.backend_batch_interval, options.backend_batch_limit);
    let auth = options.auth.clone();
    let raft_options = options.raft.clone();
    LocalExecutorBuilder::new(placement(plan.state_cpu))
        .name("tern-state")
        .io_memory(STATE_IO_MEMORY_BYTES)
        // Backend commits and defragmentation (blocking file I/O) run here, on threads the
        // scheduler may put on any CPU, never on the executor's own.
        .blocking_thread_pool_placement(glommio::PoolPlacement::Unbound(BLOCKING_POOL_THREADS))
        .spawn(move || async move {
            // A network core served here connects its channels like any other; it ends
            // (and drops its command sender, which ends this executor) when told to stop.
            if let Some(core) = colocated {
                glommio::spawn_local(serve_network_core(core)).detach();
            }
            let state_machine = match StateMachine::new(identity.clone(), store) {
                Ok(state_machine) => state_machine
                    .with_lease_options(lease_options, lease_extend)
                    .with_backend_batch(backend_batch.0, backend_batch.1)
                    .with_auth_token_ttl(auth.token_ttl)
                    .with_jwt(auth.jwt.clone())
                    .with_background_writer(),
                Err(e) => crate::fatal!("cannot initialize the backend", "error" => e.to_string()),
            };
            // Raft sits in front of the state machine: writes become proposals, committed
            // entries are applied (src/raft/node/).
            let node = match crate::raft::node::start(identity, raft_options, state_machine).await {
                Ok((node, serving)) => {
                    let serving_tx = serving_tx.clone();
                    glommio::spawn_local(async move {
                        let ok = serving.await.is_ok();
                        let _ = serving_tx.send(if ok {
                            Ok(())
                        } else {
                            Err("raft stopped".into())
                        });
                    })
                    .detach();
                    node
                }
                Err(e) => {
                    let _ = serving_tx.send(Err(e));
                    return;
                }
            };
            glommio::spawn_local(crate::raft::node::run(node.clone())).detach();
            let state = node.borrow().state.clone();
            // The primary's lease expiry and checkpoint loop; dropped (cancelled) below
            // once every network core has hung up.
            let lease_timer = glommio::spawn_local(run_lease_timer(state.clone()));
            let mut per_core = Vec::new();
            for (core, (receiver, feed)) in
                command_receivers.into_iter().zip(feed_senders).enumerate()
            {
                let state = state.clone();
                let node = node.clone();
                per_core.push(glommio::spawn_local(async move {
                    // The watch feed is attached before the core's first command.
                    let feed = crate::runtime::connect::connect(feed.connect()).await;
                    state.borrow_mut().attach_watch_feed(core, feed);
                    let commands = crate::runtime::connect::connect(receiver.connect()).await;
                    while let Some(command) = commands.recv().await {
                        let began = std::time::Instant::now();
                        node.borrow_mut().submit(command);
                        let mut applied = 1;
                        let mut disconnected = false;
                        // Everything already queued joins this batch, within its bounds;
                        // `now_or_never` never waits, so a quiet channel ends it at once.
                        while applied < GROUP_COMMIT_COMMANDS_MAX
                            && began.elapsed() < COMMAND_BATCH_TIME_MAX
                        {
                            match commands.recv().now_or_never() {
                                Some(Some(command)) => {
                                    node.borrow_mut().submit(command);
                                    applied += 1;
                                }
                                Some(None) => {
                                    disconnected = true;
                                    break;
                                }
                                None => break,
                            }
                        }
                        // Always yield (see the module doc): the ready loop and the other
                        // cores' tasks run now; and when this batch wrote, their commands
                        // join the commit below.
                        futures_lite::future::yield_now().await;
                        if state.borrow().has_uncommitted() {
                            state.borrow_mut().flush();
                        }
                        if disconnected {
                            break;
                        }
                    }
                    state.borrow_mut().flush();
                }));
            }
            for task in per_core {
                task.await;
            }
            // Stopping: free the peer port for the next start before anything else.
            node.borrow().transport.stop_listening();
            // A clean stop leaves everything applied in the backend file, so the next start
            // replays nothing from the WAL.
            state.borrow_mut().commit_backend();
            while state.borrow().backend_is_busy() {
                glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
                state.borrow_mut().poll_backend();
            }
            node.borrow().log_wal_stats();
            drop(lease_timer);
        })
        .map_err(|e| format!("cannot start the state executor: {e}"))
}

/// The sockets the main thread claimed, and the TLS settings of the client ones.
struct ClaimedListeners<'a> {
    client: &'a [OwnedFd],
    client_tls: Option<Arc<ReloadingServerConfig>>,
    metrics: &'a [OwnedFd],
}

/// One `NetworkCore` per network CPU of `plan`, each with its own handles on the client
/// listeners and its command channel to the state core; each sends on `ready_tx` once its
/// command channel is connected. Returns the senders that stop them, beside them.
#[allow(clippy::type_complexity)] // (stop senders, (CPU, core)), used once by `run`
fn network_cores(
    options: &ServerOptions,
    plan: &Plan,
    listeners: ClaimedListeners,
    command_senders: Vec<SharedSender<Command>>,
    feed_receivers: Vec<SharedReceiver<FeedMessage>>,
    ready_tx: std::sync::mpsc::Sender<Result<(), String>>,
) -> Result<(Vec<oneshot::Sender<()>>, Vec<(Option<usize>, NetworkCore)>), String> {
    let mut stops = Vec::new();
    let mut cores = Vec::new();
    let network_channels = command_senders.into_iter().zip(feed_receivers);
    for (i, (cpu, (commands, feed))) in plan.network_cpus.iter().zip(network_channels).enumerate() {
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        stops.push(stop_tx);
        let core = NetworkCore {
            index: i,
            listener_fds: executor_listeners(listeners.client)?,
            commands,
            feed,
            limits: options.limits.clone(),
            identity: options.identity.clone(),
            http2: options.http2.clone(),
            tcp_tls: options.listen_client_tls.clone(),
            // A unix socket path can be bound only once: the first network core serves it.
            unix: if i == 0 {
                options.listen_client_unix.clone()
            } else {
                Vec::new()
            },
            client_tls: listeners.client_tls.clone(),
            client_cert_auth: options
                .client_tls
                .as_ref()
                .is_some_and(|tls| tls.client_cert_auth),
            bcrypt_cost: options.auth.bcrypt_cost,
            jwt: options.auth.jwt.clone(),
            metrics_fds: executor_listeners(listeners.metrics)?,
            metrics_tls: options.listen_metrics_tls.clone(),
            ready_tx: ready_tx.clone(),
            stop_rx,
        };
        cores.push((*cpu, core));
    }
    Ok((stops, cores))
}

/// Starts one network executor (its own pinned thread) for each of `cores`.
fn start_network_executors(
    cores: Vec<(Option<usize>, NetworkCore)>,
) -> Result<Vec<ExecutorJoinHandle<()>>, String> {
    cores
        .into_iter()
        .map(|(cpu, core)| {
            let i = core.index;
            LocalExecutorBuilder::new(placement(cpu))
                .name(&format!("tern-net-{i}"))
                .io_memory(NETWORK_IO_MEMORY_BYTES)
                .blocking_thread_pool_placement(glommio::PoolPlacement::Unbound(
                    NETWORK_BLOCKING_POOL_THREADS,
                ))
                .spawn(move || serve_network_core(core))
                .map_err(|e| format!("cannot start network executor {i}: {e}"))
        })
        .collect()
}

/// What one network core needs to serve: its handles on the client listeners, its channels
/// to the state executor, and the signals that say it is ready and tell it to stop.
struct NetworkCore {
    index: usize,
    listener_fds: Vec<OwnedFd>,
    commands: SharedSender<Command>,
    feed: SharedReceiver<FeedMessage>,
    limits: Limits,
    identity: Identity,
    /// The HTTP/2 limits from the command line (`--max-concurrent-streams`, keepalive).
    http2: ServerConfig,
    /// One per claimed TCP listener: whether it is https://.
    tcp_tls: Vec<bool>,
    /// The unix:// and unixs:// paths this core binds and serves (core 0 only).
    unix: Vec<(PathBuf, bool)>,
    client_tls: Option<Arc<ReloadingServerConfig>>,
    /// --client-cert-auth: token-less calls run as their client certificate's CN.
    client_cert_auth: bool,
    /// --bcrypt-cost and the JWT keys (`--auth-token jwt,...`) for the Auth service.
    bcrypt_cost: u32,
    jwt: Option<Arc<crate::auth::jwt::JwtKeys>>,
    /// Handles on the `--listen-metrics-urls` listeners.
    metrics_fds: Vec<OwnedFd>,
    /// One per metrics listener: whether it is https://.
    metrics_tls: Vec<bool>,
    ready_tx: std::sync::mpsc::Sender<Result<(), String>>,
    stop_rx: oneshot::Receiver<()>,
}

/// Serves one network core on the calling executor until it is told to stop.
async fn serve_network_core(core: NetworkCore) {
    crate::metrics::bind_network_core(core.index);
    let client_tls = core.client_tls.clone();
    let tls_of = |is_tls: bool| if is_tls { client_tls.clone() } else { None };
    let mut listeners: Vec<ClientListener> = into_glommio_listeners(core.listener_fds)
        .into_iter()
        .zip(core.tcp_tls)
        .map(|(listener, is_tls)| ClientListener {
            socket: ListenSocket::Tcp(listener),
            tls: tls_of(is_tls),
        })
        .collect();
    for (path, is_tls) in core.unix {
        match bind_unix(&path) {
            Ok(listener) => listeners.push(ClientListener {
                socket: ListenSocket::Unix(listener),
                tls: tls_of(is_tls),
            }),
            Err(e) => {
                let _ = core.ready_tx.send(Err(e));
                return;
            }
        }
    }
    // The state core connects this core's watch feed before its commands,
    // so the feed's receiving end must be connecting before we wait below.
    let (context_tx, context_rx) = oneshot::channel();
    let feed_task = glommio::spawn_local(watch_feed_task(core.feed, context_rx));
    let state = StateClient::new(crate::runtime::connect::connect(core.commands.connect()).await);
    let _ = core.ready_tx.send(Ok(()));
    let shutdown = ShutdownSignal::new();
    let watch = Rc::new(WatchHub::new(
        core.index,
        pb::ResponseHeader {
            cluster_id: core.identity.cluster_id,
            member_id: core.identity.member_id,
            ..Default::default()
        },
        core.limits.max_request_bytes,
        core.limits.watch_progress_notify_interval,
        shutdown.clone(),
    ));
    let context = Rc::new(
        ServiceContext::new(state, core.limits.clone(), &core.identity, watch)
            .with_bcrypt_cost(core.bcrypt_cost)
            .with_client_cert_auth(core.client_cert_auth)
            .with_jwt(core.jwt.clone()),
    );
    let _ = context_tx.send(context.clone());
    let http2 = Rc::new(ServerConfig {
        max_recv_message_bytes: core.limits.max_recv_message_bytes(),
        ..core.http2.clone()
    });
    let trigger = shutdown.clone();
    glommio::spawn_local(async move {
        let _ = core.stop_rx.await;
        trigger.trigger();
    })
    .detach();
    let http1_config = Rc::new(crate::http1::Http1Config {
        body_bytes_max: core.limits.max_recv_message_bytes(),
        ..Default::default()
    });
    // The JSON gateway calls this core's gRPC server in-process, as the listeners serve it.
    let grpc = service::http::LocalGrpc {
        config: http2.clone(),
        handler: service::handler(context.clone()),
        shutdown: shutdown.clone(),
    };
    let http1_for = |listener| crate::http1::Http1Service {
        config: http1_config.clone(),
        handler: service::http::handler(context.clone(), listener, grpc.clone()),
    };
    let metrics_listeners = into_glommio_listeners(core.metrics_fds)
        .into_iter()
        .zip(core.metrics_tls)
        .map(|(listener, is_tls)| ClientListener {
            socket: ListenSocket::Tcp(listener),
            tls: tls_of(is_tls),
        })
        .collect();
    let metrics = glommio::spawn_local(crate::server::metrics_listen::serve_metrics(
        metrics_listeners,
        http2.clone(),
        http1_for(service::http::Listener::Metrics),
        shutdown.clone(),
    ));
    let http1 = http1_for(service::http::Listener::Client);
    serve_clients(listeners, http2, service::handler(context), shutdown, http1).await;
    metrics.await;
    // The feed task holds the service context, and with it this core's command sender, for
    // as long as the state core feeds it; the state core ends only when every sender is
    // gone. A network executor of its own drops the task on exit, but a colocated core's
    // executor lives on, so the task is cancelled here.
    drop(feed_task);
}

/// Opens the backend at etcd's path under `data_dir` and rebuilds the MVCC index from it.
/// Fails early, before the store and the WAL open, if another process listens on a peer
/// address. The raft node binds the address for real (without SO_REUSEPORT) when it starts,
/// so a port taken in between still fails there; this only makes the usual case fail fast.
/// A port a just-killed member's listener still holds is waited for, as for client ports.
fn check_peer_addrs_free(addrs: &[std::net::SocketAddr]) -> Result<(), String> {
    for addr in addrs {
        bind_lingering(addr, |a| std::net::TcpListener::bind(a))?;
    }
    Ok(())
}

/// An etcd 3.4 member's data dir becomes tern's, once, before anything opens it
/// (`crate::migrate`, docs/migration.md).
fn convert_etcd_data_dir(data_dir: &std::path::Path) -> Result<(), String> {
    let started = std::time::Instant::now();
    let Some(report) = crate::migrate::convert_if_etcd(data_dir).map_err(|e| {
        format!(
            "cannot convert the etcd data dir {}: {e}",
            data_dir.display()
        )
    })?
    else {
        return Ok(());
    };
    crate::info!(
        "converted an etcd data dir",
        "data-dir" => data_dir,
        "etcd-member-dir" => data_dir.join(crate::migrate::ETCD_MEMBER_DIR).as_path(),
        "local-member-id" => format!("{:x}", report.member_id),
        "cluster-id" => format!("{:x}", report.cluster_id),
        "snapshot-index" => report.snapshot_index,
        "db-consistent-index" => report.consistent_index,
        "wal-last-index" => report.last_raft_index,
        "commit-index" => report.commit_index,
        "entries" => report.entries as u64,
        "members" => report.members as u64,
        "took" => format!("{:?}", started.elapsed())
    );
    Ok(())
}

fn open_store(data_dir: &std::path::Path) -> Result<KvStore<BtreeBackend>, String> {
    let path = btree_backend::db_path(data_dir);
    let started = std::time::Instant::now();
    let backend = BtreeBackend::open(&path)
        .map_err(|e| format!("cannot open backend {}: {e}", path.display()))?;
    let store =
        KvStore::open(backend).map_err(|e| format!("cannot restore {}: {e}", path.display()))?;
    crate::info!(
        "opened backend db",
        "path" => path.as_path(),
        "took" => format!("{:?}", started.elapsed()),
        "current-revision" => store.current_revision(),
        "consistent-index" => store.consistent_index()
    );
    Ok(store)
}

/// A network core's watch feed: connects the receiving end at once (the state core waits
/// for it), then runs the hub's feed and sync driver once the service context exists.
async fn watch_feed_task(
    feed: SharedReceiver<FeedMessage>,
    context: futures::channel::oneshot::Receiver<Rc<ServiceContext>>,
) {
    let feed = crate::runtime::connect::connect(feed.connect()).await;
    let Ok(context) = context.await else { return };
    let hub = context.watch.clone();
    // Held, not detached: cancelling this task cancels the driver with it.
    let _sync_driver = glommio::spawn_local(hub.clone().run_sync_driver(context.clone()));
    hub.run_feed(context, feed).await;
}

/// The lifecycle lines etcd prints once it serves, in etcd's wording: scripts and
/// orchestration wait for them.
fn announce_ready(options: &ServerOptions, plan: &Plan) {
    let id = &options.identity;
    crate::info!(
        "thread-per-core placement",
        "network-executors" => plan.cores_in_use(),
        "state-cpu" => format!("{:?}", plan.state_cpu)
    );
    crate::info!(
        format!(
            "published {{Name:{} ClientURLs:[{}]}} to cluster {:x}",
            id.name,
            id.client_urls.join(" "),
            id.cluster_id
        ),
        "local-member-id" => format!("{:x}", id.member_id)
    );
    crate::info!("enabled capabilities for version 3.4", "cluster-version" => "3.4");
    crate::info!("ready to serve client requests");
    for (addr, is_tls) in options
        .listen_client_addrs
        .iter()
        .zip(&options.listen_client_tls)
    {
        if *is_tls {
            crate::info!(format!("serving client requests on {addr}"), "address" => *addr);
        } else {
            crate::info!(
                format!(
                    "serving insecure client requests on {addr}, this is strongly discouraged!"
                ),
                "address" => *addr
            );
        }
    }
    for (addr, is_tls) in options
        .listen_metrics_addrs
        .iter()
        .zip(&options.listen_metrics_tls)
    {
        let scheme = if *is_tls { "https" } else { "http" };
        crate::info!("serving metrics", "address" => format!("{scheme}://{addr}"));
    }
    for (path, is_tls) in &options.listen_client_unix {
        let addr = path.display();
        if *is_tls {
            crate::info!(format!("serving client requests on {addr}"), "address" => path.as_path());
        } else {
            crate::info!(
                format!(
                    "serving insecure client requests on {addr}, this is strongly discouraged!"
                ),
                "address" => path.as_path()
            );
        }
    }
}

/// Removes the unix socket files this server bound (Go's listeners unlink theirs on close).
fn remove_unix_sockets(options: &ServerOptions) {
    for (path, _) in &options.listen_client_unix {
        let _ = std::fs::remove_file(path);
    }
}
