//! The real server: [`start`] opens the engine, binds the sockets and runs
//!
//! - the **tick thread** (a std thread, `orrery-tick`): a [`TickCore`] stepped by a
//!   [`FixedClock`]; each tick it drains the event and HTTP-call channels, runs the tick and
//!   sends the tick's commands as one batch. With a pipelined publish it waits for the next
//!   tick on the publish in flight and sends that publish's messages as soon as it is done
//!   ([`TickCore::route_finished_publish`]);
//! - the **network workers** (`orrery-net-<i>`, [`ServerConfig::net_workers`] std threads, each
//!   running a single-threaded tokio runtime): each owns a netcode `ServerSession` and a UDP
//!   socket of its own (its own port) and the clients the token issuer assigned to it
//!   (`client_id % workers`: a token names only its worker's address, so the session's
//!   server-address check refuses it at any other worker and each worker's used-token table is
//!   sound on its own). A worker receives datagrams, forwards session events in batches,
//!   applies its share of each tick's commands, updates its session and sends; it also answers
//!   admin requests for its clients. Events of all workers go to one channel, merged into the
//!   next tick's input; the tick thread splits each tick's commands by worker;
//! - the **HTTP tasks** (axum) of the control plane and, optionally, the metrics listener.
//!
//! Channels are bounded. Events (network → tick, [`EVENT_BATCHES`] batches): when full, a
//! network worker keeps the events (up to [`MAX_PENDING_EVENTS`], then it stops reading the
//! socket, so the kernel buffer and then the clients' resends absorb the burst) and goes on
//! applying commands; events are never dropped (connects and disconnects must pair).
//! Commands (tick → each worker, [`COMMAND_BATCHES`] batches of one tick each): when full the
//! tick thread waits, which shows as a long flush phase and ticks skipped by the clock. HTTP
//! calls and SQL reads ([`HTTP_CALL_QUEUE`]): when full the request is answered 503 at once.
//!
//! The caller owns the tokio runtime (multi-threaded, with I/O and time enabled).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use orrery_engine::{DurabilityConfig, Engine, EngineConfig, Module};
use orrery_netcode::udp::TokioUdpEndpoint;
use orrery_netcode::{
    ConnectTokenIssuer, DEFAULT_PROTOCOL_ID, PrivateKey, ServerSession, unix_now,
};
use orrery_tick::{FixedClock, Phase, PhaseTimer};
use tokio::sync::{mpsc, watch};

use crate::auth::Secrets;
use crate::config::{ServerConfig, Storage};
use crate::error::ServerError;
use crate::http::{self, AdminRequest, AppState, ControlPlaneState};
use crate::listener::{CappedListener, PeerAddr};
use crate::metrics::Metrics;
use crate::net::{self, NetCommand, NetEvent};
use crate::profiling::{self, Plot, Work};
use crate::rate::{AddressLimiter, KeyedLimiter};
use crate::tick::{HttpRequest, TickCore, timestamp};
use crate::tls::TlsFiles;

/// Capacity of the network → tick event channel, in batches.
pub const EVENT_BATCHES: usize = 1024;
/// Capacity of the tick → network command channel, in ticks.
pub const COMMAND_BATCHES: usize = 64;
/// Events a network worker holds, when the event channel is full, before it stops reading
/// its socket.
pub const MAX_PENDING_EVENTS: usize = 65_536;
/// HTTP reducer calls and SQL reads waiting for the tick thread at most.
pub const HTTP_CALL_QUEUE: usize = 4096;

/// A running server. Dropping it without [`ServerHandle::shutdown`] stops the tasks but does
/// not wait for the engine to close.
#[derive(Debug)]
pub struct ServerHandle {
    /// Where the HTTP control plane listens.
    pub http_addr: SocketAddr,
    /// The control plane's base URL: `https://` with TLS configured, else `http://`.
    pub http_url: String,
    /// Where unauthenticated `/metrics` is served, if configured.
    pub metrics_addr: Option<SocketAddr>,
    /// The first network worker's bound UDP address.
    pub udp_addr: SocketAddr,
    /// Every network worker's bound UDP address, by worker.
    pub udp_addrs: Vec<SocketAddr>,
    /// The UDP addresses put in connect tokens, every worker's (a token names only those of
    /// its client's worker).
    pub public_addresses: Vec<SocketAddr>,
    /// The file holding the admin token.
    pub admin_token_path: PathBuf,
    /// Whether the database was fresh (`init` ran).
    pub fresh: bool,
    state: AppState,
    metrics: Arc<Metrics>,
    stop: watch::Sender<bool>,
    tick_stop: Arc<AtomicBool>,
    tick_thread: Option<std::thread::JoinHandle<Result<(), ServerError>>>,
    net_threads: Vec<std::thread::JoinHandle<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl ServerHandle {
    /// The control-plane router (for in-process requests, e.g. `tower::ServiceExt::oneshot`).
    pub fn router(&self) -> axum::Router {
        http::router(self.state.clone())
    }

    /// The unauthenticated metrics router.
    pub fn metrics_router(&self) -> axum::Router {
        http::metrics_router(self.metrics.clone())
    }

    /// The server's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The admin token.
    pub fn admin_token(&self) -> &str {
        self.state.secrets.admin_token()
    }

    /// The token secrets (to issue bearer tokens in-process).
    pub fn secrets(&self) -> &Arc<Secrets> {
        &self.state.secrets
    }

    /// Whether the tick thread has stopped (it stops only on shutdown or a fatal error).
    pub fn is_finished(&self) -> bool {
        self.tick_thread
            .as_ref()
            .is_none_or(std::thread::JoinHandle::is_finished)
    }

    /// Stops the server: clients are disconnected ("server shutting down"), the HTTP listeners
    /// close, the tick thread stops and the engine is closed (the commit log flushed and
    /// fsynced). Returns the engine's close error, if any.
    pub async fn shutdown(mut self) -> Result<(), ServerError> {
        let _ = self.stop.send(true);
        self.tick_stop.store(true, Relaxed);
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
        let net_threads = std::mem::take(&mut self.net_threads);
        let _ = tokio::task::spawn_blocking(move || {
            for thread in net_threads {
                if thread.join().is_err() {
                    tracing::error!("a network worker thread panicked");
                }
            }
        })
        .await;
        let Some(thread) = self.tick_thread.take() else {
            return Ok(());
        };
        let joined = tokio::task::spawn_blocking(move || thread.join())
            .await
            .map_err(|e| ServerError::Thread {
                name: "orrery-tick",
                reason: e.to_string(),
            })?;
        match joined {
            Ok(result) => result,
            Err(_) => Err(ServerError::Thread {
                name: "orrery-tick",
                reason: "panicked".into(),
            }),
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        self.tick_stop.store(true, Relaxed);
    }
}

fn bind_udp(addr: SocketAddr, fallback: bool) -> Result<std::net::UdpSocket, ServerError> {
    let bind = |addr: SocketAddr| -> std::io::Result<std::net::UdpSocket> {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )?;
        let size = orrery_netcode::udp::SOCKET_BUFFER_BYTES;
        if let Err(e) = socket.set_recv_buffer_size(size) {
            tracing::warn!(error = %e, "could not set the UDP receive buffer");
        }
        if let Err(e) = socket.set_send_buffer_size(size) {
            tracing::warn!(error = %e, "could not set the UDP send buffer");
        }
        socket.bind(&addr.into())?;
        socket.set_nonblocking(true)?;
        Ok(socket.into())
    };
    match bind(addr) {
        Ok(s) => Ok(s),
        Err(e) if fallback && e.kind() == std::io::ErrorKind::AddrInUse && addr.port() != 0 => {
            tracing::warn!(%addr, "UDP port taken; letting the OS choose one");
            bind(SocketAddr::new(addr.ip(), 0)).map_err(|source| ServerError::Bind {
                what: "udp",
                addr,
                source,
            })
        }
        Err(source) => Err(ServerError::Bind {
            what: "udp",
            addr,
            source,
        }),
    }
}

async fn bind_tcp(
    what: &'static str,
    addr: SocketAddr,
    fallback: bool,
) -> Result<tokio::net::TcpListener, ServerError> {
    match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => Ok(l),
        Err(e) if fallback && e.kind() == std::io::ErrorKind::AddrInUse && addr.port() != 0 => {
            tracing::warn!(%addr, what, "port taken; letting the OS choose one");
            tokio::net::TcpListener::bind(SocketAddr::new(addr.ip(), 0))
                .await
                .map_err(|source| ServerError::Bind { what, addr, source })
        }
        Err(source) => Err(ServerError::Bind { what, addr, source }),
    }
}

/// Starts a server for `module` with `config` inside the current tokio runtime: opens (or
/// recovers) the engine, runs `init` for a fresh database, binds UDP and HTTP, and spawns the
/// tick thread and the network and HTTP tasks. See the module docs.
pub async fn start(module: Module, config: ServerConfig) -> Result<ServerHandle, ServerError> {
    config.validate()?;
    let secrets = Arc::new(Secrets::load_or_create(
        config.secret_dir.as_ref().unwrap_or(&config.data_dir),
    )?);
    let engine_config = EngineConfig {
        seed: config.seed,
        tick_budget: config.tick_duration(),
        tick_interval: config.tick_duration(),
        executor: config.executor,
        ..EngineConfig::default()
    };
    let (engine, fresh) = match config.storage {
        Storage::Memory => (Engine::new(module, engine_config)?, true),
        Storage::Disk {
            fsync,
            snapshot_every_ticks,
        } => {
            let mut durability = DurabilityConfig::new(config.data_dir.join("db"));
            durability.fsync = fsync;
            durability.snapshot_every_ticks = snapshot_every_ticks;
            durability.record_inputs = config.input_log;
            let (engine, report) = Engine::open(module, engine_config, durability)?;
            tracing::info!(
                fresh = report.fresh,
                last_tick = report.last_tick,
                rows = report.rows,
                replayed_ticks = report.replayed_ticks,
                truncated_ticks = report.truncated_ticks,
                elapsed_ms = report.elapsed.as_millis() as u64,
                "database opened"
            );
            (engine, report.fresh)
        }
    };

    let workers = config.net_workers;
    let mut udp_sockets = Vec::with_capacity(workers);
    let mut udp_addrs = Vec::with_capacity(workers);
    for worker in 0..workers {
        let mut addr = config.udp_bind;
        if addr.port() != 0 {
            let port = u16::try_from(usize::from(addr.port()) + worker).map_err(|_| {
                ServerError::Config {
                    field: "net_workers",
                    value: workers.to_string(),
                    reason: "the workers' UDP ports (udp_bind's port + i) exceed 65535",
                }
            })?;
            addr.set_port(port);
        }
        let socket = bind_udp(addr, config.fallback_ports)?;
        let bound = socket.local_addr().map_err(|source| ServerError::Bind {
            what: "udp",
            addr,
            source,
        })?;
        udp_sockets.push(socket);
        udp_addrs.push(bound);
    }
    let udp_addr = udp_addrs[0];
    // The addresses each worker's connect tokens name.
    let shard_addresses: Vec<Vec<SocketAddr>> = if config.udp_public.is_empty() {
        udp_addrs
            .iter()
            .map(|&bound| {
                let mut a = bound;
                if a.ip().is_unspecified() {
                    tracing::warn!(
                        udp_addr = %bound,
                        "UDP bound to an unspecified address; connect tokens will name 127.0.0.1 (set public addresses for remote clients)"
                    );
                    a.set_ip(IpAddr::V4(Ipv4Addr::LOCALHOST));
                }
                vec![a]
            })
            .collect()
    } else if workers == 1 {
        vec![config.udp_public.clone()]
    } else {
        config.udp_public.iter().map(|&a| vec![a]).collect()
    };
    let public_addresses: Vec<SocketAddr> = shard_addresses.iter().flatten().copied().collect();
    // Certificate problems stop the start before anything is bound.
    let tls = config.tls.as_ref().map(TlsFiles::acceptor).transpose()?;
    let http_listener = bind_tcp("http", config.http_bind, config.fallback_ports).await?;
    let http_addr = http_listener
        .local_addr()
        .map_err(|source| ServerError::Bind {
            what: "http",
            addr: config.http_bind,
            source,
        })?;
    let metrics_listener = match config.metrics_bind {
        Some(addr) => Some(bind_tcp("metrics", addr, config.fallback_ports).await?),
        None => None,
    };
    let metrics_addr = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());
    let http_url = format!(
        "{}://{http_addr}",
        if tls.is_some() { "https" } else { "http" }
    );

    let key = PrivateKey::generate()?;
    let now = unix_now();
    // One session per worker, each for its own addresses; max_clients and max_pending are
    // split between them (clients are spread evenly by connection id).
    let mut shard_config = config.clone();
    shard_config.max_clients = config.max_clients.div_ceil(workers);
    shard_config.max_pending = config.max_pending.div_ceil(workers);
    let mut sessions = Vec::with_capacity(workers);
    for addresses in &shard_addresses {
        sessions.push(ServerSession::new(
            net::session_config(&shard_config, key.clone(), addresses.clone()),
            now,
        )?);
    }

    let metrics = Arc::new(Metrics::new(1024, config.tick_duration()));
    let schema = engine.schema().clone();
    let core = TickCore::new(engine, fresh, &config, metrics.clone(), now)?;
    // The clock makes the first tick due when the wall clock reaches its grid timestamp.
    let first_tick = core.next_tick_timestamp();
    let until_first = Duration::from_micros(
        u64::try_from(first_tick.as_micros() - timestamp(now).as_micros()).unwrap_or(0),
    );
    let clock = FixedClock::new(
        config.tick_duration(),
        Instant::now() + until_first,
        config.overrun,
    )
    .map_err(ServerError::Clock)?;

    let (event_tx, event_rx) = mpsc::channel::<Vec<NetEvent>>(EVENT_BATCHES);
    let (command_txs, command_rxs): (Vec<_>, Vec<_>) = (0..workers)
        .map(|_| mpsc::channel::<CommandBatch>(COMMAND_BATCHES))
        .unzip();
    let (call_tx, call_rx) = mpsc::channel::<HttpRequest>(HTTP_CALL_QUEUE);
    let (admin_txs, admin_rxs): (Vec<_>, Vec<_>) = (0..workers)
        .map(|_| mpsc::channel::<AdminRequest>(64))
        .unzip();
    let (stop, stop_rx) = watch::channel(false);
    let tick_stop = Arc::new(AtomicBool::new(false));

    let issuers = shard_addresses
        .iter()
        .map(|addresses| {
            let mut issuer =
                ConnectTokenIssuer::new(key.clone(), DEFAULT_PROTOCOL_ID, addresses.clone());
            issuer.expire_after = config.connect_token_lifetime;
            issuer.timeout = config.connection_timeout;
            issuer
        })
        .collect();
    let state: AppState = Arc::new(ControlPlaneState {
        secrets: secrets.clone(),
        issuers,
        next_client_id: AtomicU64::new(ControlPlaneState::first_client_id()?),
        schema_json: schema.to_json(),
        schema,
        calls: call_tx,
        admin: admin_txs,
        metrics: metrics.clone(),
        identity_token_lifetime: config.identity_token_lifetime,
        query_limits: config.publish.query_limits,
        max_body: config.max_http_body,
        identities_per_address: AddressLimiter::new(config.identities_per_address, 65_536),
        connect_tokens_per_address: AddressLimiter::new(config.connect_tokens_per_address, 65_536),
        http_per_identity: KeyedLimiter::new(config.rate_limit, 65_536),
    });

    let tick_thread = {
        let (metrics, tick_stop) = (metrics.clone(), tick_stop.clone());
        std::thread::Builder::new()
            .name("orrery-tick".into())
            .spawn(move || {
                tick_loop(
                    core,
                    clock,
                    event_rx,
                    call_rx,
                    command_txs,
                    tick_stop,
                    metrics,
                )
            })
            .map_err(|e| ServerError::Thread {
                name: "orrery-tick",
                reason: e.to_string(),
            })?
    };

    for worker in 0..workers {
        metrics.record_net_worker(worker, crate::metrics::NetWorkerSample::default());
    }
    let mut net_threads = Vec::with_capacity(workers);
    for (worker, (((session, socket), commands), admin)) in sessions
        .into_iter()
        .zip(udp_sockets)
        .zip(command_rxs)
        .zip(admin_rxs)
        .enumerate()
    {
        let addr = udp_addrs[worker];
        let bind_error = |source| ServerError::Bind {
            what: "udp",
            addr,
            source,
        };
        // Each worker runs its own single-threaded tokio runtime on its own thread.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(bind_error)?;
        let udp = {
            let _entered = runtime.enter();
            let socket = tokio::net::UdpSocket::from_std(socket).map_err(bind_error)?;
            let mut udp = TokioUdpEndpoint::new(socket).map_err(bind_error)?;
            if config.udp_batching
                && let Err(error) = udp.enable_batching()
            {
                tracing::warn!(%error, %addr, "batched UDP I/O unavailable; one syscall per datagram");
            }
            udp
        };
        let worker_loop = net_loop(NetWorker {
            index: worker,
            session,
            udp,
            commands,
            events: event_tx.clone(),
            admin,
            stop: stop_rx.clone(),
            metrics: metrics.clone(),
            tick: config.tick_duration(),
        });
        let name = format!("orrery-net-{worker}");
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || runtime.block_on(worker_loop))
            .map_err(|e| ServerError::Thread {
                name: "orrery-net",
                reason: e.to_string(),
            })?;
        net_threads.push(thread);
    }
    drop(event_tx);
    let mut tasks = Vec::new();
    let (max_connections, idle_timeout) = (config.max_http_connections, config.http_idle_timeout);
    let serve = |listener: tokio::net::TcpListener,
                 router: axum::Router,
                 tls: Option<tokio_rustls::TlsAcceptor>| {
        let listener = CappedListener::new(
            listener,
            max_connections,
            idle_timeout,
            metrics.clone(),
            tls,
        );
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let shutdown = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            let service = router.into_make_service_with_connect_info::<PeerAddr>();
            if let Err(e) = axum::serve(listener, service)
                .with_graceful_shutdown(shutdown)
                .await
            {
                tracing::error!(error = %e, "HTTP server failed");
            }
        })
    };
    tasks.push(serve(http_listener, http::router(state.clone()), tls));
    if let Some(listener) = metrics_listener {
        tasks.push(serve(listener, http::metrics_router(metrics.clone()), None));
    }
    tracing::info!(
        %http_url,
        ?udp_addrs,
        ?public_addresses,
        net_workers = workers,
        ?metrics_addr,
        admin_token = %secrets.admin_token_path().display(),
        tick_rate = config.tick_rate,
        "orrery server running"
    );
    Ok(ServerHandle {
        http_addr,
        http_url,
        metrics_addr,
        udp_addr,
        udp_addrs,
        public_addresses,
        admin_token_path: secrets.admin_token_path().to_owned(),
        fresh,
        state,
        metrics,
        stop,
        tick_stop,
        tick_thread: Some(tick_thread),
        net_threads,
        tasks,
    })
}

fn tick_loop(
    mut core: TickCore,
    mut clock: FixedClock,
    mut events: mpsc::Receiver<Vec<NetEvent>>,
    mut calls: mpsc::Receiver<HttpRequest>,
    commands: Vec<mpsc::Sender<CommandBatch>>,
    stop: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
) -> Result<(), ServerError> {
    let mut batch_events = Vec::new();
    let mut batch_calls = Vec::new();
    // UDP bytes sent as of the previous tick, for the bytes-out plot.
    let mut bytes_out = metrics.bytes_out.load(Relaxed);
    // Handing a pipelined publish routed between ticks to the network, counted with the next
    // tick's flush phase.
    let mut flushed_between_ticks = Duration::ZERO;
    'run: while !stop.load(Relaxed) {
        let due = clock.poll(Instant::now());
        if due.skipped > 0 {
            core.skip_ticks(due.skipped);
            metrics.ticks_skipped.fetch_add(due.skipped, Relaxed);
            profiling::message(profiling::ERROR_COLOR, || {
                format!("tick loop fell behind: {} ticks dropped", due.skipped)
            });
            tracing::warn!(
                skipped = due.skipped,
                "tick loop fell behind; ticks dropped"
            );
        }
        for _ in 0..due.run {
            while let Ok(batch) = events.try_recv() {
                batch_events.extend(batch);
            }
            while let Ok(call) = calls.try_recv() {
                batch_calls.push(call);
            }
            let tick_zone = profiling::zone(Work::Tick);
            let mut out = Vec::new();
            let mut timing = core.tick(
                unix_now(),
                batch_events.drain(..),
                batch_calls.drain(..),
                &mut out,
            );
            let mut timer = PhaseTimer::start();
            let zone = profiling::phase(Phase::Flush);
            // With the publish in flight routed between ticks, this tick's own commands (its
            // input phase's) leave with it: one send pass per tick, whose datagrams carry the
            // acks, instead of an extra pass of ack-only datagrams.
            let send_now = !core.commands_wait_for_publish();
            if !hand_to_network(out, &commands, send_now) {
                break 'run; // a network worker is gone
            }
            drop(zone);
            timer.lap(Phase::Flush);
            timing.add(Phase::Flush, timer.finish().get(Phase::Flush));
            timing.add(Phase::Flush, std::mem::take(&mut flushed_between_ticks));
            core.record_timing(&timing);
            drop(tick_zone);
            profiling::frame_mark();
            if profiling::connected() {
                let sent = metrics.bytes_out.load(Relaxed);
                profiling::plot(Plot::TickTimeMs, timing.total().as_secs_f64() * 1e3);
                profiling::plot(Plot::BytesOut, sent.saturating_sub(bytes_out) as f64);
                bytes_out = sent;
            }
        }
        let until_due = || {
            clock
                .next_deadline()
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(100))
        };
        // A pipelined publish's messages leave as soon as it is done, not with the next tick.
        let mut out = Vec::new();
        if core.route_finished_publish(until_due(), &mut out) {
            let start = Instant::now();
            let zone = profiling::phase(Phase::Flush);
            if !hand_to_network(out, &commands, true) {
                break 'run;
            }
            drop(zone);
            flushed_between_ticks += start.elapsed();
            continue;
        }
        std::thread::sleep(until_due());
    }
    // The last pipelined publish's messages, to workers that may still be sending.
    let mut out = Vec::new();
    core.flush_publish(&mut out);
    let _ = hand_to_network(out, &commands, true);
    core.close()?;
    Ok(())
}

/// A network worker's share of commands from the tick thread.
#[derive(Debug)]
struct CommandBatch {
    commands: Vec<NetCommand>,
    /// Update the session and send now; otherwise the commands only queue their messages,
    /// which leave with the next batch that sends (or the worker's own interval update).
    send_now: bool,
}

/// Hands commands to the network workers, each its share (maybe empty: a worker sends on
/// every batch with `send_now`). Returns false when a worker is gone.
fn hand_to_network(
    out: Vec<NetCommand>,
    workers: &[mpsc::Sender<CommandBatch>],
    send_now: bool,
) -> bool {
    let batches = split_commands(out, workers.len());
    workers.iter().zip(batches).all(|(sender, commands)| {
        if commands.is_empty() && !send_now {
            return true;
        }
        sender
            .blocking_send(CommandBatch { commands, send_now })
            .is_ok()
    })
}

/// Splits one tick's commands by the network worker that owns each client.
fn split_commands(commands: Vec<NetCommand>, workers: usize) -> Vec<Vec<NetCommand>> {
    if workers <= 1 {
        return vec![commands];
    }
    let mut batches: Vec<Vec<NetCommand>> = (0..workers)
        .map(|_| Vec::with_capacity(commands.len() / workers + 1))
        .collect();
    for command in commands {
        let client = match &command {
            NetCommand::Send { client, .. } | NetCommand::Disconnect { client, .. } => *client,
        };
        batches[net::shard_of(client, workers)].push(command);
    }
    batches
}

/// What one network worker owns.
struct NetWorker {
    index: usize,
    session: ServerSession,
    udp: TokioUdpEndpoint,
    commands: mpsc::Receiver<CommandBatch>,
    events: mpsc::Sender<Vec<NetEvent>>,
    admin: mpsc::Receiver<AdminRequest>,
    stop: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
    tick: Duration,
}

/// What woke a network worker.
enum Wake<'a> {
    Stop,
    Commands(Option<CommandBatch>),
    Permit(Result<mpsc::Permit<'a, Vec<NetEvent>>, mpsc::error::SendError<()>>),
    Readable(std::io::Result<()>),
    Admin(AdminRequest),
    Interval,
    Writable,
}

async fn net_loop(worker: NetWorker) {
    let NetWorker {
        index,
        mut session,
        mut udp,
        mut commands,
        events,
        mut admin,
        mut stop,
        metrics,
        tick,
    } = worker;
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last_update = Instant::now();
    // Time spent working (not waiting), for `orrery_net_worker_busy_seconds_total`.
    let mut busy = Duration::ZERO;
    // Events not yet accepted by the channel. While there are many, the socket is not read
    // (backpressure), but commands are still applied: the tick thread may be blocked on the
    // command channel, and waiting for it here would deadlock.
    let mut pending: Vec<NetEvent> = Vec::new();
    loop {
        let unsent = udp.unsent() > 0;
        let can_read = pending.len() < MAX_PENDING_EVENTS;
        let has_pending = !pending.is_empty();
        let wake = tokio::select! {
            _ = stop.wait_for(|s| *s) => Wake::Stop,
            received = commands.recv() => Wake::Commands(received),
            permit = events.reserve(), if has_pending => Wake::Permit(permit),
            readable = udp.readable(), if can_read => Wake::Readable(readable),
            Some(request) = admin.recv() => Wake::Admin(request),
            _ = interval.tick() => Wake::Interval,
            _ = udp.writable(), if unsent => Wake::Writable,
        };
        let started = Instant::now();
        match wake {
            Wake::Stop => {
                session.disconnect_all("server shutting down");
                session.update(unix_now());
                let _ = udp.flush(&mut session);
                break;
            }
            Wake::Commands(received) => {
                let Some(received) = received else { break };
                let zone = profiling::zone(Work::NetCommands);
                net::apply_commands(&mut session, received.commands);
                if received.send_now {
                    session.update(unix_now());
                    last_update = Instant::now();
                    drop(zone);
                    flush(&mut udp, &mut session);
                }
            }
            Wake::Permit(permit) => match permit {
                Ok(permit) => permit.send(std::mem::take(&mut pending)),
                Err(_) => break,
            },
            Wake::Readable(readable) => {
                if let Err(e) = readable {
                    tracing::error!(error = %e, worker = index, "UDP socket failed");
                    break;
                }
                let zone = profiling::zone(Work::NetReceive);
                if let Err(e) = udp.recv(&mut session, unix_now()) {
                    tracing::warn!(error = %e, worker = index, "UDP receive failed");
                }
                drop(zone);
                flush(&mut udp, &mut session);
            }
            Wake::Admin(request) => match request {
                AdminRequest::ListClients(reply) => {
                    let _ = reply.send(net::list_clients(&session));
                }
                AdminRequest::Disconnect {
                    client,
                    reason,
                    reply,
                } => {
                    let done = session.disconnect(client, &reason);
                    flush(&mut udp, &mut session);
                    let _ = reply.send(done);
                }
            },
            Wake::Interval => {
                // Keeps keep-alives, resends and timeouts going if the tick thread stalls.
                if last_update.elapsed() >= tick {
                    let _zone = profiling::zone(Work::NetUpdate);
                    session.update(unix_now());
                    last_update = Instant::now();
                    flush(&mut udp, &mut session);
                }
            }
            Wake::Writable => flush(&mut udp, &mut session),
        }
        net::drain_events(&mut session, &mut pending, &metrics);
        busy += started.elapsed();
        metrics.record_net_worker(index, net::worker_sample(&session, busy.as_micros() as u64));
        if !pending.is_empty() {
            match events.try_send(std::mem::take(&mut pending)) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(batch)) => pending = batch,
                Err(mpsc::error::TrySendError::Closed(_)) => break,
            }
        }
    }
    metrics.record_net_worker(index, net::worker_sample(&session, busy.as_micros() as u64));
}

fn flush(udp: &mut TokioUdpEndpoint, session: &mut ServerSession) {
    let _zone = profiling::zone(Work::NetSend);
    if let Err(e) = udp.flush(session) {
        tracing::warn!(error = %e, "UDP send failed");
    }
}

/// Resolves when the process is asked to stop: Ctrl-C (SIGINT) or, on Unix, SIGTERM (what
/// orchestrators such as Kubernetes send). A binary awaits it and then calls
/// [`ServerHandle::shutdown`], so both end the same clean way. If the Ctrl-C handler cannot
/// be installed it logs why and resolves (as before); if the SIGTERM one cannot, it logs why
/// and waits for Ctrl-C alone.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C; stopping");
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM; only Ctrl-C stops the server");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("Ctrl-C received"),
        () = terminate => tracing::info!("SIGTERM received"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orrery_engine::ConnectionId;
    use orrery_netcode::ServerMessage;

    fn send(client: u64) -> NetCommand {
        NetCommand::Send {
            client: ConnectionId(client),
            msg: ServerMessage::SubscriptionApplied {
                query_id: 1,
                tick: 1,
                tables: Vec::new(),
            },
        }
    }

    fn drain(receivers: &mut [mpsc::Receiver<CommandBatch>]) -> Vec<Vec<(usize, bool)>> {
        receivers
            .iter_mut()
            .map(|r| {
                let mut batches = Vec::new();
                while let Ok(batch) = r.try_recv() {
                    batches.push((batch.commands.len(), batch.send_now));
                }
                batches
            })
            .collect()
    }

    /// Commands that may wait for the publish's send pass reach only the workers they are
    /// for, marked to queue; a batch that sends reaches every worker, so each updates its
    /// session once.
    #[test]
    fn commands_that_wait_only_queue_and_a_sending_batch_reaches_every_worker() {
        let (senders, mut receivers): (Vec<_>, Vec<_>) =
            (0..3).map(|_| mpsc::channel::<CommandBatch>(8)).unzip();
        let owner = net::shard_of(ConnectionId(7), 3);
        assert!(hand_to_network(vec![send(7)], &senders, false));
        let expected: Vec<Vec<(usize, bool)>> = (0..3)
            .map(|w| if w == owner { vec![(1, false)] } else { vec![] })
            .collect();
        assert_eq!(drain(&mut receivers), expected);
        assert!(hand_to_network(vec![send(7), send(7)], &senders, true));
        let expected: Vec<Vec<(usize, bool)>> = (0..3)
            .map(|w| vec![(if w == owner { 2 } else { 0 }, true)])
            .collect();
        assert_eq!(drain(&mut receivers), expected);
        // Nothing to queue: no batch at all.
        assert!(hand_to_network(Vec::new(), &senders, false));
        assert_eq!(drain(&mut receivers), vec![Vec::new(); 3]);
        // A worker that is gone stops the tick loop.
        drop(receivers);
        assert!(!hand_to_network(vec![send(7)], &senders, true));
    }
}
