//! The sans-IO client: a netcode [`ClientSession`] plus the schema, request and query ids, and
//! the [`Mirror`]. It takes the time and received datagrams and hands back datagrams to send
//! and [`Event`]s, so tests drive it on a virtual clock (against `netcode::ServerSession` over
//! `netcode::sim::Network`) and the async [`crate::Client`] drives it from a tokio task.
//!
//! ```text
//! each frame: handle_datagram(now, from, bytes)*  →  update(now)  →  drain_transmits(out)
//!             poll_event()* (replies, subscription answers, row changes, disconnect)
//! ```

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use orrery_netcode::udp::Session;
use orrery_netcode::{
    Channel, ClientEvent, ClientMessage, ClientSession, ClientSessionConfig, ClientState,
    DisconnectReason, ServerMessage, Transmit,
};
use orrery_row::{ConnectionId, Identity, ModuleSchema, ReducerKind, encode_args_json};

use crate::error::{ClientError, MirrorError};
use crate::mirror::{Mirror, MirrorChange};

/// What happened on a client connection.
#[derive(Clone, Debug)]
pub enum Event {
    /// The server accepted the client.
    Connected {
        /// The client's identity.
        identity: Identity,
        /// This connection's id.
        connection_id: ConnectionId,
    },
    /// A reducer call was answered.
    ReducerReply {
        /// The call's request id.
        request_id: u32,
        /// The tick the reducer ran in.
        tick: u64,
        /// `Err` carries the reducer's (or the server's) error text.
        result: Result<(), String>,
        /// Whether the tick was durable when the server answered (always for a durable call).
        durable: bool,
    },
    /// A subscription was accepted; its initial rows (if the server sent any with it) are in
    /// the mirror, announced by [`Event::TableUpdate`]s just before this event. Servers may also
    /// send the initial rows as later table updates.
    SubscriptionApplied {
        /// The subscription's query id.
        query_id: u32,
        /// The tick of the initial rows.
        tick: u64,
    },
    /// A subscription was refused (bad SQL, unknown or private table, ...). It is no longer
    /// active.
    SubscriptionError {
        /// The subscription's query id.
        query_id: u32,
        /// The server's message.
        message: String,
    },
    /// A table update was applied to the mirror.
    TableUpdate {
        /// The table.
        table_id: u32,
        /// The tick the changes are from.
        tick: u64,
        /// What changed, in record order.
        changes: Vec<MirrorChange>,
    },
    /// A table update could not be applied (undecodable, unknown table); the mirror is
    /// unchanged. A correct server never causes this.
    UpdateRejected {
        /// The table id the update named.
        table_id: u32,
        /// The tick.
        tick: u64,
        /// Why.
        error: MirrorError,
    },
    /// The connection ended (or never came up); the reason carries the server's text when it
    /// disconnected the client.
    Disconnected {
        /// Why.
        reason: DisconnectReason,
    },
    /// The character moved to another zone: the client is connecting there with the token
    /// the server sent, subscribing again with the same queries; [`Event::Connected`] follows.
    /// The mirror keeps its rows meanwhile (see [`ClientCore::set_zone_move_settle`]).
    ZoneMove {
        /// The zone the character is in now.
        zone: u32,
    },
}

/// A zone move under way (see [`Event::ZoneMove`]).
#[derive(Debug)]
struct Moving {
    zone: u32,
    /// When the new connection came up.
    connected_at: Option<Duration>,
}

/// How long after a zone move's new connection is up the mirror keeps rows the new zone has
/// not sent again, by default: its subscriptions' initial rows arrive over a few ticks
/// (bandwidth-budgeted, nearest first).
pub const DEFAULT_ZONE_MOVE_SETTLE: Duration = Duration::from_secs(3);

/// One client connection without I/O (see the module docs).
#[derive(Debug)]
pub struct ClientCore {
    session: ClientSession,
    session_config: ClientSessionConfig,
    /// The previous zone's connection during a zone move: it still answers the calls made on
    /// it, and closes once the new connection is up.
    retiring: Option<ClientSession>,
    /// Calls made on `retiring`, answered with an error if it closes first.
    retiring_calls: Vec<u32>,
    /// Datagrams of closed zone connections not sent yet (their disconnect packets: without
    /// them the zone keeps the connection until it times out, and ignores this socket's
    /// next connection until then).
    parting: Vec<Transmit>,
    moving: Option<Moving>,
    zone_move_settle: Duration,
    confirmed_reads: bool,
    now: Duration,
    last_tick: u64,
    schema: Arc<ModuleSchema>,
    mirror: Mirror,
    next_request_id: u32,
    next_query_id: u32,
    pending_calls: HashMap<u32, String>,
    queries: HashMap<u32, String>,
    events: VecDeque<Event>,
}

impl ClientCore {
    /// A core around a session that is connecting (or connected).
    pub fn new(schema: Arc<ModuleSchema>, session: ClientSession) -> Self {
        ClientCore {
            session,
            session_config: ClientSessionConfig::default(),
            retiring: None,
            retiring_calls: Vec::new(),
            parting: Vec::new(),
            moving: None,
            zone_move_settle: DEFAULT_ZONE_MOVE_SETTLE,
            confirmed_reads: false,
            now: Duration::ZERO,
            last_tick: 0,
            mirror: Mirror::new(schema.clone()),
            schema,
            next_request_id: 1,
            next_query_id: 1,
            pending_calls: HashMap::new(),
            queries: HashMap::new(),
            events: VecDeque::new(),
        }
    }

    /// A core connecting with a connect token's bytes (as served by the control plane),
    /// starting at `now` (time since the Unix epoch).
    pub fn from_token_bytes(
        schema: Arc<ModuleSchema>,
        config: ClientSessionConfig,
        token: &[u8],
        now: Duration,
    ) -> Result<Self, ClientError> {
        let session = ClientSession::from_token_bytes(config.clone(), token, now)?;
        Ok(Self::new(schema, session).with_session_config(config))
    }

    /// Uses `config` for the connections a zone move opens (those of [`ClientCore::new`]'s
    /// session are its own).
    pub fn with_session_config(mut self, config: ClientSessionConfig) -> Self {
        self.session_config = config;
        self
    }

    /// How long after a zone move's new connection is up the mirror keeps the rows the new
    /// zone has not sent again ([`DEFAULT_ZONE_MOVE_SETTLE`]); then they are deleted (they are
    /// out of view there, or gone). Rows sent again in time are updates, or no change at all.
    pub fn set_zone_move_settle(&mut self, settle: Duration) {
        self.zone_move_settle = settle;
    }

    /// Whether a zone move is under way (its rows not settled yet).
    pub fn is_moving(&self) -> bool {
        self.moving.is_some()
    }

    /// The schema.
    pub fn schema(&self) -> &Arc<ModuleSchema> {
        &self.schema
    }

    /// The mirror.
    pub fn mirror(&self) -> &Mirror {
        &self.mirror
    }

    /// The mirror, mutably (to clear it, or feed it payloads from elsewhere).
    pub fn mirror_mut(&mut self) -> &mut Mirror {
        &mut self.mirror
    }

    /// The netcode session.
    pub fn session(&self) -> &ClientSession {
        &self.session
    }

    /// Where the connection is.
    pub fn state(&self) -> &ClientState {
        self.session.state()
    }

    /// Whether the server accepted the client and the connection is up.
    pub fn is_connected(&self) -> bool {
        self.session.is_connected()
    }

    /// Reducer calls sent and not answered yet: request id → reducer.
    pub fn pending_calls(&self) -> &HashMap<u32, String> {
        &self.pending_calls
    }

    /// Active subscriptions: query id → SQL.
    pub fn subscriptions(&self) -> &HashMap<u32, String> {
        &self.queries
    }

    /// Processes one received datagram (anything not authentic from the server is dropped).
    pub fn handle_datagram(&mut self, now: Duration, from: SocketAddr, bytes: &[u8]) {
        self.now = now;
        match &mut self.retiring {
            Some(old) if old.server_addr() == from && self.session.server_addr() != from => {
                old.handle_datagram(now, from, bytes);
            }
            _ => self.session.handle_datagram(now, from, bytes),
        }
        self.pump();
    }

    /// Advances time: handshake, keep-alives, resends, timeouts; queued messages become
    /// datagrams.
    pub fn update(&mut self, now: Duration) {
        self.now = now;
        self.session.update(now);
        if let Some(old) = &mut self.retiring {
            old.update(now);
        }
        self.pump();
        self.settle_zone_move(now);
    }

    /// Moves the datagrams to send into `out` (appending).
    pub fn drain_transmits(&mut self, out: &mut Vec<Transmit>) {
        out.append(&mut self.parting);
        if let Some(old) = &mut self.retiring {
            old.drain_transmits(out);
        }
        self.session.drain_transmits(out);
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn next_request_id(&mut self) -> u32 {
        loop {
            let id = self.next_request_id;
            self.next_request_id = self.next_request_id.wrapping_add(1).max(1);
            if !self.pending_calls.contains_key(&id) {
                return id;
            }
        }
    }

    /// Encodes `args` (JSON array by position, object by name, or `null` for no parameters)
    /// with the reducer's parameter types from the schema and queues the call. Returns its
    /// request id; the answer is an [`Event::ReducerReply`] with that id. With `durable`, the
    /// server answers once the reducer's tick is on disk.
    pub fn call(
        &mut self,
        reducer: &str,
        args: &serde_json::Value,
        durable: bool,
    ) -> Result<u32, ClientError> {
        let bytes = self.encode_args(reducer, args)?;
        self.call_raw(reducer, bytes, durable)
    }

    /// Encodes reducer arguments from JSON with the schema (what [`ClientCore::call`] sends).
    pub fn encode_args(
        &self,
        reducer: &str,
        args: &serde_json::Value,
    ) -> Result<Vec<u8>, ClientError> {
        let schema = self
            .schema
            .reducer(reducer)
            .ok_or_else(|| ClientError::UnknownReducer(reducer.to_owned()))?;
        if schema.kind != ReducerKind::User {
            return Err(ClientError::NotCallable {
                reducer: reducer.to_owned(),
                kind: schema.kind,
            });
        }
        encode_args_json(&schema.params, args).map_err(|error| ClientError::Args {
            reducer: reducer.to_owned(),
            error,
        })
    }

    /// Queues a call with arguments already in the row format (parameters back to back). The
    /// server validates them. Returns the request id.
    pub fn call_raw(
        &mut self,
        reducer: &str,
        args: Vec<u8>,
        durable: bool,
    ) -> Result<u32, ClientError> {
        let request_id = self.next_request_id();
        self.session.send(&ClientMessage::CallReducer {
            request_id,
            reducer: reducer.to_owned(),
            args,
            durable,
        })?;
        self.pending_calls.insert(request_id, reducer.to_owned());
        Ok(request_id)
    }

    /// Queues a subscription; returns its query id. The answer is
    /// [`Event::SubscriptionApplied`] or [`Event::SubscriptionError`] with that id.
    pub fn subscribe(&mut self, sql: &str) -> Result<u32, ClientError> {
        let query_id = loop {
            let id = self.next_query_id;
            self.next_query_id = self.next_query_id.wrapping_add(1).max(1);
            if !self.queries.contains_key(&id) {
                break id;
            }
        };
        self.session.send(&ClientMessage::Subscribe {
            query_id,
            sql: sql.to_owned(),
        })?;
        self.queries.insert(query_id, sql.to_owned());
        Ok(query_id)
    }

    /// Drops a subscription. The server then deletes, on this client's side, the rows no other
    /// subscription covers (they arrive as delete records).
    pub fn unsubscribe(&mut self, query_id: u32) -> Result<(), ClientError> {
        if !self.queries.contains_key(&query_id) {
            return Err(ClientError::UnknownQuery(query_id));
        }
        self.session
            .send(&ClientMessage::Unsubscribe { query_id })?;
        self.queries.remove(&query_id);
        Ok(())
    }

    /// Turns confirmed reads on or off: with them on, the server sends this connection's
    /// subscription updates only once their tick is durable (never state a crash could take
    /// back, at the cost of the fsync delay); off, the default, it sends them the tick they
    /// happen.
    pub fn set_confirmed_reads(&mut self, enabled: bool) -> Result<(), ClientError> {
        self.session
            .send(&ClientMessage::ConfirmedReads { enabled })?;
        self.confirmed_reads = enabled;
        Ok(())
    }

    /// Starts a zone move: a new connection with `token`, the same subscriptions (same query
    /// ids) and settings on it, the mirror detached from the old connection's row handles.
    fn start_zone_move(&mut self, zone: u32, token: &[u8]) {
        let session = match ClientSession::from_token_bytes(
            self.session_config.clone(),
            token,
            self.now,
        ) {
            Ok(session) => session,
            Err(error) => {
                tracing::warn!(zone, %error, "zone move with an unusable connect token; staying");
                return;
            }
        };
        tracing::debug!(zone, server = %session.server_addr(), "moving to another zone");
        let old = std::mem::replace(&mut self.session, session);
        if let Some(mut previous) = self.retiring.replace(old) {
            // A second move before the first settled: the first zone's connection goes now.
            previous.disconnect();
            previous.drain_transmits(&mut self.parting);
            self.answer_retiring_calls(zone);
        }
        self.retiring_calls = self.pending_calls.keys().copied().collect();
        self.mirror.detach();
        let mut queries: Vec<(u32, String)> = self
            .queries
            .iter()
            .map(|(id, sql)| (*id, sql.clone()))
            .collect();
        queries.sort_unstable();
        for (query_id, sql) in queries {
            if let Err(error) = self
                .session
                .send(&ClientMessage::Subscribe { query_id, sql })
            {
                tracing::warn!(query_id, %error, "could not subscribe again after a zone move");
            }
        }
        if self.confirmed_reads {
            let _ = self
                .session
                .send(&ClientMessage::ConfirmedReads { enabled: true });
        }
        self.moving = Some(Moving {
            zone,
            connected_at: None,
        });
        self.events.push_back(Event::ZoneMove { zone });
    }

    /// Calls made on the previous zone's connection that it closed without answering.
    fn answer_retiring_calls(&mut self, zone: u32) {
        for request_id in std::mem::take(&mut self.retiring_calls) {
            if self.pending_calls.remove(&request_id).is_some() {
                self.events.push_back(Event::ReducerReply {
                    request_id,
                    tick: 0,
                    result: Err(format!(
                        "the character moved to zone {zone} before the call was answered"
                    )),
                    durable: false,
                });
            }
        }
    }

    /// Ends a zone move's settling time: the rows the new zone did not send again go.
    fn settle_zone_move(&mut self, now: Duration) {
        let Some(moving) = &self.moving else {
            return;
        };
        let Some(connected_at) = moving.connected_at else {
            return;
        };
        if self.mirror.detached_rows() > 0 && now < connected_at + self.zone_move_settle {
            return;
        }
        self.moving = None;
        for (table_id, changes) in self.mirror.drop_detached() {
            self.events.push_back(Event::TableUpdate {
                table_id,
                tick: self.last_tick,
                changes,
            });
        }
    }

    /// Disconnects (tells the server); an [`Event::Disconnected`] follows.
    pub fn disconnect(&mut self) {
        self.session.disconnect();
        self.pump();
    }

    fn pump(&mut self) {
        self.pump_retiring();
        while let Some(event) = self.session.poll_event() {
            match event {
                ClientEvent::Connected {
                    identity,
                    connection_id,
                } => {
                    if let Some(moving) = &mut self.moving {
                        moving.connected_at = Some(self.now);
                        if let Some(old) = &mut self.retiring {
                            old.disconnect();
                        }
                    }
                    self.events.push_back(Event::Connected {
                        identity,
                        connection_id,
                    });
                }
                ClientEvent::Message { msg, channel } => self.handle_message(msg, channel),
                ClientEvent::Disconnected { reason } => {
                    tracing::debug!(%reason, pending = self.pending_calls.len(), "disconnected");
                    self.pending_calls.clear();
                    self.events.push_back(Event::Disconnected { reason });
                }
            }
        }
    }

    /// The previous zone's connection: only its answers to calls count (its row updates are
    /// of a mirror that follows the new connection now); it goes once closed.
    fn pump_retiring(&mut self) {
        let Some(old) = &mut self.retiring else {
            return;
        };
        let mut closed = false;
        let mut replies = Vec::new();
        while let Some(event) = old.poll_event() {
            match event {
                ClientEvent::Message {
                    msg:
                        ServerMessage::ReducerReply {
                            request_id,
                            tick,
                            result,
                            durable,
                        },
                    ..
                } => replies.push((request_id, tick, result, durable)),
                ClientEvent::Disconnected { .. } => closed = true,
                _ => {}
            }
        }
        for (request_id, tick, result, durable) in replies {
            if self.pending_calls.remove(&request_id).is_some() {
                self.events.push_back(Event::ReducerReply {
                    request_id,
                    tick,
                    result,
                    durable,
                });
            }
        }
        if closed {
            old.drain_transmits(&mut self.parting);
            self.retiring = None;
            let zone = self.moving.as_ref().map_or(0, |m| m.zone);
            self.answer_retiring_calls(zone);
        }
    }

    fn apply_rows(&mut self, table_id: u32, tick: u64, rows: &[u8]) {
        self.last_tick = self.last_tick.max(tick);
        match self.mirror.apply(table_id, rows) {
            Ok(changes) => self.events.push_back(Event::TableUpdate {
                table_id,
                tick,
                changes,
            }),
            Err(error) => {
                tracing::warn!(table_id, tick, %error, "table update rejected");
                self.events.push_back(Event::UpdateRejected {
                    table_id,
                    tick,
                    error,
                });
            }
        }
    }

    fn handle_message(&mut self, msg: ServerMessage, channel: Channel) {
        match msg {
            ServerMessage::ReducerReply {
                request_id,
                tick,
                result,
                durable,
            } => {
                if self.pending_calls.remove(&request_id).is_none() {
                    tracing::warn!(request_id, "reply to a request this client did not make");
                }
                self.events.push_back(Event::ReducerReply {
                    request_id,
                    tick,
                    result,
                    durable,
                });
            }
            ServerMessage::SubscriptionApplied {
                query_id,
                tick,
                tables,
            } => {
                for t in tables.iter().filter(|t| !t.rows.is_empty()) {
                    self.apply_rows(t.table_id, tick, &t.rows);
                }
                self.events
                    .push_back(Event::SubscriptionApplied { query_id, tick });
            }
            ServerMessage::SubscriptionError { query_id, message } => {
                self.queries.remove(&query_id);
                self.events
                    .push_back(Event::SubscriptionError { query_id, message });
            }
            ServerMessage::TableUpdate {
                table_id,
                tick,
                rows,
            } => {
                if channel == Channel::Unreliable {
                    // Deltas assume the previous version arrived; only upserts and deletes are
                    // safe unordered. Applied anyway: a correct server knows what it sends.
                    tracing::trace!(table_id, "table update on the unreliable channel");
                }
                self.apply_rows(table_id, tick, &rows);
            }
            ServerMessage::ZoneMove {
                zone,
                connect_token,
            } => self.start_zone_move(zone, &connect_token),
            // Sent once at connect; the session turned it into `Connected`.
            ServerMessage::IdentityInfo { .. } => {}
            // The session reports the reason with `Disconnected`.
            ServerMessage::Disconnecting { reason } => {
                tracing::debug!(%reason, "server is disconnecting this client");
            }
        }
    }
}

impl Session for ClientCore {
    fn handle_datagram(&mut self, now: Duration, from: SocketAddr, bytes: &[u8]) {
        ClientCore::handle_datagram(self, now, from, bytes);
    }

    fn drain_transmits(&mut self, out: &mut Vec<Transmit>) {
        ClientCore::drain_transmits(self, out);
    }
}
