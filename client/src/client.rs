//! The async client: connects through the control plane, runs a [`ClientCore`] on a tokio
//! task over a UDP socket, and turns replies into awaited results.
//!
//! The driver task wakes on incoming datagrams, on every `tick` and whenever a message is
//! queued; it locks the core only to move datagrams and collect events, then (without the
//! lock) resolves waiting calls and subscriptions, runs row callbacks and broadcasts the
//! events. Callbacks may therefore call back into the client (read the mirror, call reducers,
//! register callbacks).

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use orrery_netcode::sim::LinkConditions;
use orrery_netcode::udp::{Session, TokioUdpEndpoint};
use orrery_netcode::{ClientSession, ClientSessionConfig, DisconnectReason, Transmit, unix_now};
use orrery_row::{ConnectionId, Identity, ModuleSchema};
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, broadcast, oneshot, watch};

use crate::core::{ClientCore, Event};
use crate::error::{CallError, ClientError};
use crate::http::ControlPlane;
use crate::link::{Direction, LinkSim, LinkStats};
use crate::mirror::{CallbackId, Callbacks, Mirror, MirrorChange, MirrorStats, Row};

/// How [`Client::connect`] connects and how the client behaves.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// A saved identity token (from an earlier [`Client::token`]): connect as that identity.
    /// `None` creates a new identity (`POST /v1/identity`).
    pub token: Option<String>,
    /// Limit on each control-plane request and on the UDP handshake (default 10 s).
    pub connect_timeout: Duration,
    /// How long a reducer call or a subscription waits for its answer (default 30 s).
    pub request_timeout: Duration,
    /// The driver's period: keep-alives, resends and the flush of queued messages happen at
    /// least this often (default 10 ms). Queued calls are also sent at once.
    pub tick: Duration,
    /// Events buffered per [`Client::events`] receiver before the slowest one lags
    /// (default 1,024).
    pub event_capacity: usize,
    /// The local UDP address (default: any address, any port, of the server's family).
    pub bind: Option<SocketAddr>,
    /// Netcode session settings.
    pub session: ClientSessionConfig,
    /// For an `https://` control plane: PEM certificates to trust instead of the public
    /// roots (a private CA, or a self-signed development certificate).
    pub root_certificates_pem: Option<Vec<u8>>,
    /// Simulate a bad network on this client's UDP traffic, both ways: the driver drops,
    /// delays and jitters datagrams by these conditions ([`crate::link`]). `None` (the
    /// default): datagrams go straight to and from the socket. The control-plane (HTTP)
    /// requests are not affected.
    pub link: Option<LinkConditions>,
    /// Seed of the link simulation's decisions: the same seed and traffic give the same drops
    /// and delays.
    pub link_seed: u64,
    /// After a zone move, how long the mirror keeps rows the new zone has not sent again
    /// (default [`crate::core::DEFAULT_ZONE_MOVE_SETTLE`], see
    /// [`ClientCore::set_zone_move_settle`]).
    pub zone_move_settle: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            token: None,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            tick: Duration::from_millis(10),
            event_capacity: 1024,
            bind: None,
            session: ClientSessionConfig::default(),
            root_certificates_pem: None,
            link: None,
            link_seed: 0,
            zone_move_settle: crate::core::DEFAULT_ZONE_MOVE_SETTLE,
        }
    }
}

/// A client's traffic counters ([`Client::stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Authenticated datagrams received from the server.
    pub datagrams_in: u64,
    /// Datagrams sent (before any simulated loss).
    pub datagrams_out: u64,
    /// Bytes of authenticated datagrams received.
    pub bytes_in: u64,
    /// Bytes sent (before any simulated loss).
    pub bytes_out: u64,
    /// Datagrams dropped as not from the server, malformed, unauthenticated or replayed.
    pub dropped: u64,
    /// The connection's smoothed round-trip time.
    pub rtt: Duration,
    /// Reliable bytes sent and not acknowledged yet.
    pub backlog_bytes: usize,
    /// The mirror's counters.
    pub mirror: MirrorStats,
    /// The simulated link's counters, with [`ClientOptions::link`].
    pub link: Option<LinkStats>,
}

/// A reducer call's successful answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The call's request id.
    pub request_id: u32,
    /// The tick the reducer ran in (its writes reach subscribers in that tick's updates).
    pub tick: u64,
    /// Whether that tick was on disk when the server answered: always for
    /// [`Client::call_durable`]; for [`Client::call`], which is answered the tick the reducer
    /// ran, only if the disk had already caught up.
    pub durable: bool,
}

/// An active subscription.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueryHandle {
    /// The query id on the wire.
    pub query_id: u32,
    /// The SQL.
    pub sql: String,
}

/// Where the connection is.
#[derive(Clone, Debug, PartialEq, Eq)]
enum ConnState {
    Connecting,
    Connected {
        identity: Identity,
        connection_id: ConnectionId,
    },
    Closed(DisconnectReason),
}

struct CallWaiter {
    reducer: String,
    tx: oneshot::Sender<Result<Reply, CallError>>,
}

#[derive(Default)]
struct Waiters {
    calls: HashMap<u32, CallWaiter>,
    subs: HashMap<u32, (String, oneshot::Sender<Result<(), ClientError>>)>,
    closed: Option<DisconnectReason>,
}

struct Shared {
    core: Mutex<ClientCore>,
    waiters: Mutex<Waiters>,
    callbacks: Mutex<Callbacks>,
    events: broadcast::Sender<Event>,
    state: watch::Sender<ConnState>,
    wake: Notify,
    request_timeout: Duration,
    link_stats: Mutex<Option<LinkStats>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic in a user callback must not make every later call panic too.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Stops the driver when the last [`Client`] clone is dropped.
struct DriverGuard {
    _stop: watch::Sender<()>,
}

/// A connected client (cheap to clone; the connection closes when the last clone is dropped
/// or on [`Client::disconnect`]).
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
    schema: Arc<ModuleSchema>,
    token: String,
    http: ControlPlane,
    _guard: Arc<DriverGuard>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("http", &self.http.base())
            .field("module", &self.schema.name)
            .field("state", &*self.shared.state.borrow())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects through the control plane at `http_base` (`https://host:port`, or
    /// `http://host:port` on loopback): reuses
    /// `options.token` or creates an identity, fetches the schema and a connect token, opens
    /// the UDP connection and waits until the server accepts it.
    pub async fn connect(http_base: &str, options: ClientOptions) -> Result<Client, ClientError> {
        let mut http = ControlPlane::new(http_base)?.with_timeout(options.connect_timeout);
        if let Some(pem) = &options.root_certificates_pem {
            http = http.with_root_certificates_pem(pem)?;
        }
        let token = match &options.token {
            Some(token) => token.clone(),
            None => {
                let created = http.create_identity().await?;
                tracing::debug!(identity = created.identity, "new identity");
                created.token
            }
        };
        let schema = Arc::new(http.schema().await?);
        let connect = http.connect_token(&token).await?;
        let token_bytes = connect.token_bytes()?;
        let session =
            ClientSession::from_token_bytes(options.session.clone(), &token_bytes, unix_now())?;
        let server = session.server_addr();
        let bind = options.bind.unwrap_or(if server.is_ipv4() {
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))
        } else {
            SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0))
        });
        let udp = TokioUdpEndpoint::bind(bind)
            .await
            .map_err(|source| ClientError::Io {
                context: "binding the UDP socket",
                source,
            })?;
        tracing::debug!(%server, local = %udp.local_addr(), client_id = connect.client_id, "connecting");
        let client = Self::start(
            ClientCore::new(schema.clone(), session).with_session_config(options.session.clone()),
            udp,
            http,
            token,
            &options,
        );
        client.wait_connected(options.connect_timeout).await?;
        Ok(client)
    }

    /// Runs an already-built core over a bound socket (what [`Client::connect`] does after the
    /// control-plane calls). The client is connecting until [`Client::wait_connected`].
    pub fn start(
        core: ClientCore,
        udp: TokioUdpEndpoint,
        http: ControlPlane,
        token: String,
        options: &ClientOptions,
    ) -> Client {
        let mut core = core;
        core.set_zone_move_settle(options.zone_move_settle);
        let schema = core.schema().clone();
        let (events, _) = broadcast::channel(options.event_capacity.max(1));
        let (state, _) = watch::channel(ConnState::Connecting);
        let shared = Arc::new(Shared {
            core: Mutex::new(core),
            waiters: Mutex::new(Waiters::default()),
            callbacks: Mutex::new(Callbacks::new()),
            events,
            state,
            wake: Notify::new(),
            request_timeout: options.request_timeout,
            link_stats: Mutex::new(options.link.map(|_| LinkStats::default())),
        });
        let (stop_tx, stop_rx) = watch::channel(());
        let link = options
            .link
            .map(|conditions| LinkSim::new(conditions, options.link_seed));
        tokio::spawn(drive(shared.clone(), udp, stop_rx, options.tick, link));
        Client {
            shared,
            schema,
            token,
            http,
            _guard: Arc::new(DriverGuard { _stop: stop_tx }),
        }
    }

    /// Waits until the server accepts the connection (or refuses it, or `timeout` passes).
    pub async fn wait_connected(&self, timeout: Duration) -> Result<(), ClientError> {
        let mut rx = self.shared.state.subscribe();
        let waited = tokio::time::timeout(
            timeout,
            rx.wait_for(|s| !matches!(s, ConnState::Connecting)),
        )
        .await;
        let state = match waited {
            Ok(Ok(state)) => state.clone(),
            Ok(Err(_)) => return Err(ClientError::Disconnected(DisconnectReason::ByClient)),
            Err(_) => {
                return Err(ClientError::Timeout {
                    what: "the server to accept the connection".into(),
                    after: timeout,
                });
            }
        };
        match state {
            ConnState::Connected { .. } => Ok(()),
            ConnState::Closed(reason) => Err(ClientError::Disconnected(reason)),
            ConnState::Connecting => Err(ClientError::Timeout {
                what: "the server to accept the connection".into(),
                after: timeout,
            }),
        }
    }

    /// The module schema.
    pub fn schema(&self) -> &Arc<ModuleSchema> {
        &self.schema
    }

    /// The identity token: save it and pass it as [`ClientOptions::token`] to reconnect as
    /// the same identity.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The control plane this client connected through.
    pub fn control_plane(&self) -> &ControlPlane {
        &self.http
    }

    /// The identity and connection id, once connected.
    pub fn identity(&self) -> Option<(Identity, ConnectionId)> {
        match &*self.shared.state.borrow() {
            ConnState::Connected {
                identity,
                connection_id,
            } => Some((*identity, *connection_id)),
            _ => None,
        }
    }

    /// The game server this client talks to now (it changes when a zone move takes the
    /// client to another zone).
    pub fn server_addr(&self) -> SocketAddr {
        lock(&self.shared.core).session().server_addr()
    }

    /// Whether the connection is up.
    pub fn is_connected(&self) -> bool {
        matches!(&*self.shared.state.borrow(), ConnState::Connected { .. })
    }

    /// Why the connection closed, once it has.
    pub fn disconnect_reason(&self) -> Option<DisconnectReason> {
        match &*self.shared.state.borrow() {
            ConnState::Closed(reason) => Some(reason.clone()),
            _ => None,
        }
    }

    /// Waits until the connection closes and returns why.
    pub async fn closed(&self) -> DisconnectReason {
        let mut rx = self.shared.state.subscribe();
        match rx
            .wait_for(|s| matches!(s, ConnState::Closed(_)))
            .await
            .map(|s| s.clone())
        {
            Ok(ConnState::Closed(reason)) => reason,
            _ => DisconnectReason::ByClient,
        }
    }

    /// A receiver of every event from now on (replies, subscription answers, table updates,
    /// disconnect). A receiver that falls `event_capacity` events behind loses the oldest.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.shared.events.subscribe()
    }

    /// Confirmed reads on or off (see [`ClientCore::set_confirmed_reads`]): on, this client's
    /// subscriptions only ever show ticks that are durable, arriving one fsync later.
    pub fn set_confirmed_reads(&self, enabled: bool) -> Result<(), ClientError> {
        lock(&self.shared.core).set_confirmed_reads(enabled)?;
        self.shared.wake.notify_one();
        Ok(())
    }

    /// Calls a reducer with JSON arguments (array by position, object by parameter name, or
    /// `null` for none; the engine's JSON mapping) and waits for its answer.
    ///
    /// `Err(CallError::Reducer { .. })` when the reducer returned `Err` (its writes rolled
    /// back) or the server refused the call; `Err(CallError::Client(..))` when the call could
    /// not be made or answered (bad arguments, disconnect, timeout).
    ///
    /// It waits for the tick the reducer ran in, **not** for the disk: the answer comes about
    /// one tick after the call, and `Reply::durable` is usually `false`. A crash of the
    /// server before its next fsync can lose such a tick (the answer said it committed, the
    /// restarted world does not have it). That is the right trade for gameplay (movement,
    /// combat, chat); for what must survive a crash once confirmed (a purchase, a trade) use
    /// [`Client::call_durable`], answered only once the tick is on disk.
    pub async fn call(&self, reducer: &str, args: serde_json::Value) -> Result<Reply, CallError> {
        let bytes = lock(&self.shared.core).encode_args(reducer, &args)?;
        self.call_raw(reducer, bytes, false).await
    }

    /// [`Client::call`], answered only once the reducer's tick is durable on disk.
    pub async fn call_durable(
        &self,
        reducer: &str,
        args: serde_json::Value,
    ) -> Result<Reply, CallError> {
        let bytes = lock(&self.shared.core).encode_args(reducer, &args)?;
        self.call_raw(reducer, bytes, true).await
    }

    /// Calls a reducer with arguments already in the row format (parameters back to back;
    /// the server validates them).
    pub async fn call_raw(
        &self,
        reducer: &str,
        args: Vec<u8>,
        durable: bool,
    ) -> Result<Reply, CallError> {
        let (tx, rx) = oneshot::channel();
        let request_id = {
            // Core then waiters, as the driver: the reply cannot be handled before the
            // waiter is registered.
            let mut core = lock(&self.shared.core);
            let mut waiters = lock(&self.shared.waiters);
            if let Some(reason) = &waiters.closed {
                return Err(ClientError::Disconnected(reason.clone()).into());
            }
            let request_id = core.call_raw(reducer, args, durable)?;
            waiters.calls.insert(
                request_id,
                CallWaiter {
                    reducer: reducer.to_owned(),
                    tx,
                },
            );
            request_id
        };
        self.shared.wake.notify_one();
        let timeout = self.shared.request_timeout;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ClientError::Disconnected(DisconnectReason::ByClient).into()),
            Err(_) => {
                lock(&self.shared.waiters).calls.remove(&request_id);
                Err(ClientError::Timeout {
                    what: format!("the reply to `{reducer}` (request {request_id})"),
                    after: timeout,
                }
                .into())
            }
        }
    }

    /// Subscribes to the rows matching `sql` and waits until the server accepts the query
    /// (its initial rows then arrive as table updates, if they did not come with the answer).
    pub async fn subscribe(&self, sql: &str) -> Result<QueryHandle, ClientError> {
        let (tx, rx) = oneshot::channel();
        let query_id = {
            let mut core = lock(&self.shared.core);
            let mut waiters = lock(&self.shared.waiters);
            if let Some(reason) = &waiters.closed {
                return Err(ClientError::Disconnected(reason.clone()));
            }
            let query_id = core.subscribe(sql)?;
            waiters.subs.insert(query_id, (sql.to_owned(), tx));
            query_id
        };
        self.shared.wake.notify_one();
        let timeout = self.shared.request_timeout;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Ok(()))) => Ok(QueryHandle {
                query_id,
                sql: sql.to_owned(),
            }),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(_)) => Err(ClientError::Disconnected(DisconnectReason::ByClient)),
            Err(_) => {
                lock(&self.shared.waiters).subs.remove(&query_id);
                Err(ClientError::Timeout {
                    what: format!("subscription {query_id} ({sql:?}) to be applied"),
                    after: timeout,
                })
            }
        }
    }

    /// Drops a subscription; rows no other subscription covers are deleted from the mirror as
    /// the server's delete records arrive.
    pub fn unsubscribe(&self, query: &QueryHandle) -> Result<(), ClientError> {
        lock(&self.shared.core).unsubscribe(query.query_id)?;
        self.shared.wake.notify_one();
        Ok(())
    }

    fn table_id(&self, table: &str) -> Result<u32, ClientError> {
        Ok(lock(&self.shared.core).mirror().table_id(table)?)
    }

    /// Calls `f` for each row inserted into `table` (each row of an event table).
    pub fn on_insert(
        &self,
        table: &str,
        f: impl FnMut(&Row) + Send + 'static,
    ) -> Result<CallbackId, ClientError> {
        let id = self.table_id(table)?;
        Ok(lock(&self.shared.callbacks).on_insert(id, f))
    }

    /// Calls `f(old, new)` for each row of `table` that changes.
    pub fn on_update(
        &self,
        table: &str,
        f: impl FnMut(&Row, &Row) + Send + 'static,
    ) -> Result<CallbackId, ClientError> {
        let id = self.table_id(table)?;
        Ok(lock(&self.shared.callbacks).on_update(id, f))
    }

    /// Calls `f` for each row removed from `table` (deleted, or out of view).
    pub fn on_delete(
        &self,
        table: &str,
        f: impl FnMut(&Row) + Send + 'static,
    ) -> Result<CallbackId, ClientError> {
        let id = self.table_id(table)?;
        Ok(lock(&self.shared.callbacks).on_delete(id, f))
    }

    /// Removes a callback; false if it was not registered.
    pub fn remove_callback(&self, id: CallbackId) -> bool {
        lock(&self.shared.callbacks).remove(id)
    }

    /// Every mirrored row of `table` as `T` (deserialized from the row's JSON object: column
    /// name → value).
    pub fn rows<T: DeserializeOwned>(&self, table: &str) -> Result<Vec<T>, ClientError> {
        Ok(lock(&self.shared.core).mirror().rows(table)?)
    }

    /// The mirrored row of `table` with primary key `pk` (JSON) as `T`.
    pub fn find<T: DeserializeOwned>(
        &self,
        table: &str,
        pk: &serde_json::Value,
    ) -> Result<Option<T>, ClientError> {
        Ok(lock(&self.shared.core).mirror().find(table, pk)?)
    }

    /// How many rows of `table` the mirror holds.
    pub fn count(&self, table: &str) -> Result<usize, ClientError> {
        Ok(lock(&self.shared.core).mirror().count(table)?)
    }

    /// Traffic counters: datagrams and bytes both ways, round-trip time, backlog, the
    /// mirror's and (with [`ClientOptions::link`]) the simulated link's counters.
    pub fn stats(&self) -> ClientStats {
        let mut stats = {
            let core = lock(&self.shared.core);
            let session = core.session();
            let s = session.stats();
            ClientStats {
                datagrams_in: s.datagrams_in,
                datagrams_out: s.datagrams_out,
                bytes_in: s.bytes_in,
                bytes_out: s.bytes_out,
                dropped: s.dropped,
                rtt: session.rtt(),
                backlog_bytes: session.backlog_bytes(),
                mirror: core.mirror().stats(),
                link: None,
            }
        };
        stats.link = *lock(&self.shared.link_stats);
        stats
    }

    /// Runs `f` with the mirror (raw rows, values, row bytes). Keep it short: the network
    /// driver waits while `f` runs.
    pub fn with_mirror<R>(&self, f: impl FnOnce(&Mirror) -> R) -> R {
        f(lock(&self.shared.core).mirror())
    }

    /// Disconnects (tells the server). Pending calls fail with
    /// [`ClientError::Disconnected`].
    pub fn disconnect(&self) {
        lock(&self.shared.core).disconnect();
        self.shared.wake.notify_one();
    }
}

/// Feeds received datagrams into the simulated link instead of the core.
struct LinkInbound<'a>(&'a mut LinkSim);

impl Session for LinkInbound<'_> {
    fn handle_datagram(&mut self, now: Duration, from: SocketAddr, bytes: &[u8]) {
        self.0.push(now, Direction::Inbound, from, bytes.to_vec());
    }
    fn drain_transmits(&mut self, _out: &mut Vec<Transmit>) {}
}

/// Hands the datagrams the simulated link let through to the socket.
struct LinkOutbound<'a>(&'a mut Vec<Transmit>);

impl Session for LinkOutbound<'_> {
    fn handle_datagram(&mut self, _now: Duration, _from: SocketAddr, _bytes: &[u8]) {}
    fn drain_transmits(&mut self, out: &mut Vec<Transmit>) {
        out.append(self.0);
    }
}

/// Moves the link's due datagrams: inbound ones into the core, outbound ones to `ready`.
fn deliver_due(
    link: &mut LinkSim,
    core: &mut ClientCore,
    now: Duration,
    ready: &mut Vec<Transmit>,
) {
    while let Some(d) = link.pop_due(now) {
        match d.direction {
            Direction::Inbound => core.handle_datagram(now, d.peer, &d.bytes),
            Direction::Outbound => ready.push(Transmit {
                to: d.peer,
                bytes: d.bytes,
            }),
        }
    }
}

async fn drive(
    shared: Arc<Shared>,
    mut udp: TokioUdpEndpoint,
    mut stop: watch::Receiver<()>,
    tick: Duration,
    mut link: Option<LinkSim>,
) {
    let mut ticker = tokio::time::interval(tick.max(Duration::from_millis(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stopping = false;
    let mut ready = Vec::new();
    let mut outgoing = Vec::new();
    // Change lists whose callbacks ran and that no `events()` receiver took: the mirror
    // reuses their old rows (`Mirror::recycle`).
    let mut spent: Vec<Vec<MirrorChange>> = Vec::new();
    loop {
        // With a simulated link, also wake when its next held datagram is due.
        let link_wait = link
            .as_ref()
            .and_then(LinkSim::next_due)
            .map(|due| due.saturating_sub(unix_now()));
        tokio::select! {
            readable = udp.readable() => {
                if let Err(error) = readable {
                    tracing::warn!(%error, "UDP socket not readable");
                }
            }
            _ = ticker.tick() => {}
            _ = shared.wake.notified() => {}
            _ = tokio::time::sleep(link_wait.unwrap_or_default()), if link_wait.is_some() => {}
            changed = stop.changed(), if !stopping => {
                // The last `Client` was dropped.
                debug_assert!(changed.is_err());
                stopping = true;
            }
        }
        let now = unix_now();
        let mut events = Vec::new();
        {
            let mut core = lock(&shared.core);
            for changes in spent.drain(..) {
                core.mirror_mut().recycle(changes);
            }
            if stopping && !matches!(core.state(), orrery_netcode::ClientState::Disconnected(_)) {
                core.disconnect();
            }
            match &mut link {
                None => {
                    if let Err(error) = udp.recv(&mut *core, now) {
                        tracing::warn!(%error, "UDP receive failed");
                    }
                    core.update(now);
                    if let Err(error) = udp.flush(&mut *core) {
                        tracing::warn!(%error, "UDP send failed");
                    }
                }
                Some(link) => {
                    if let Err(error) = udp.recv(&mut LinkInbound(link), now) {
                        tracing::warn!(%error, "UDP receive failed");
                    }
                    deliver_due(link, &mut core, now, &mut ready);
                    core.update(now);
                    core.drain_transmits(&mut outgoing);
                    for t in outgoing.drain(..) {
                        link.push(now, Direction::Outbound, t.to, t.bytes);
                    }
                    deliver_due(link, &mut core, now, &mut ready);
                    if let Err(error) = udp.flush(&mut LinkOutbound(&mut ready)) {
                        tracing::warn!(%error, "UDP send failed");
                    }
                    *lock(&shared.link_stats) = Some(link.stats());
                }
            }
            while let Some(event) = core.poll_event() {
                events.push(event);
            }
        }
        let mut closed = false;
        for event in events {
            closed |= matches!(event, Event::Disconnected { .. });
            shared.handle(&event);
            if let Err(broadcast::error::SendError(Event::TableUpdate { changes, .. })) =
                shared.events.send(event)
            {
                spent.push(changes);
            }
        }
        if closed {
            if let Some(link) = &mut link {
                // The driver ends here: send what the link still holds (the disconnect
                // packets) now rather than never.
                while let Some(d) = link.pop_due(Duration::MAX) {
                    if d.direction == Direction::Outbound {
                        ready.push(Transmit {
                            to: d.peer,
                            bytes: d.bytes,
                        });
                    }
                }
                if let Err(error) = udp.flush(&mut LinkOutbound(&mut ready)) {
                    tracing::debug!(%error, "UDP send failed");
                }
            }
            tracing::debug!("client driver finished");
            return;
        }
    }
}

impl Shared {
    fn handle(&self, event: &Event) {
        match event {
            Event::Connected {
                identity,
                connection_id,
            } => {
                self.state.send_replace(ConnState::Connected {
                    identity: *identity,
                    connection_id: *connection_id,
                });
            }
            Event::ReducerReply {
                request_id,
                tick,
                result,
                durable,
            } => {
                let waiter = lock(&self.waiters).calls.remove(request_id);
                if let Some(CallWaiter { reducer, tx }) = waiter {
                    let answer = match result {
                        Ok(()) => Ok(Reply {
                            request_id: *request_id,
                            tick: *tick,
                            durable: *durable,
                        }),
                        Err(message) => Err(CallError::Reducer {
                            reducer,
                            message: message.clone(),
                        }),
                    };
                    let _ = tx.send(answer);
                }
            }
            Event::SubscriptionApplied { query_id, .. } => {
                if let Some((_, tx)) = lock(&self.waiters).subs.remove(query_id) {
                    let _ = tx.send(Ok(()));
                }
            }
            Event::SubscriptionError { query_id, message } => {
                if let Some((sql, tx)) = lock(&self.waiters).subs.remove(query_id) {
                    let _ = tx.send(Err(ClientError::Subscription {
                        query_id: *query_id,
                        sql,
                        message: message.clone(),
                    }));
                }
            }
            Event::TableUpdate { changes, .. } => {
                if changes.is_empty() {
                    return;
                }
                // Run callbacks without holding the registry: they may register or remove
                // callbacks, which go to a continuation merged back afterwards.
                let mut running = {
                    let mut guard = lock(&self.callbacks);
                    let continuation = guard.continuation();
                    std::mem::replace(&mut *guard, continuation)
                };
                running.dispatch(changes);
                let mut guard = lock(&self.callbacks);
                let added = std::mem::replace(&mut *guard, running);
                guard.merge(added);
            }
            Event::UpdateRejected { .. } | Event::ZoneMove { .. } => {}
            Event::Disconnected { reason } => {
                self.state.send_replace(ConnState::Closed(reason.clone()));
                let mut waiters = lock(&self.waiters);
                waiters.closed = Some(reason.clone());
                for (_, waiter) in waiters.calls.drain() {
                    let _ = waiter
                        .tx
                        .send(Err(ClientError::Disconnected(reason.clone()).into()));
                }
                for (_, (_, tx)) in waiters.subs.drain() {
                    let _ = tx.send(Err(ClientError::Disconnected(reason.clone())));
                }
            }
        }
    }
}
