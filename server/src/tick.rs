//! [`TickCore`]: the tick side of the server. It owns the [`Engine`], the subscription
//! [`Publisher`] and the per-client state, and runs one tick per [`TickCore::tick`] call:
//!
//! 1. **input**: network events in arrival order. A connect queues `client_connected`, a
//!    disconnect `client_disconnected`; a reducer call passes the client's rate limit and is
//!    queued (`Input::Call`); subscribe and unsubscribe wait for the publish phase. Messages of a
//!    client whose `client_connected` has not run yet wait until it has. HTTP calls are queued
//!    after the network's.
//! 2. **engine** (`Engine::step`): reducers, schedules, systems, capture and, with durability,
//!    commit.
//! 3. **replies**: one `ReducerReply` per call, in call order per client. A `durable` call's
//!    reply (and every later reply to the same client, to keep the order) waits until the
//!    commit log is durable up to the call's tick. A refused `client_connected` disconnects the
//!    client with the reducer's message.
//! 4. **publish**: the tick's changes go into the publisher, focus updates are applied,
//!    subscriptions are registered (`SubscriptionApplied` / `SubscriptionError`), and each
//!    client's budgeted deltas become `TableUpdate` messages. With a pipelined publish
//!    ([`orrery_subscription::PublishConfig::pipeline`], the default) the last step runs on
//!    the publish thread after [`TickCore::tick`] returns. A tick loop routes its messages as
//!    soon as it is done ([`TickCore::route_finished_publish`], while it waits for the next
//!    tick): the command stream is then the unpipelined one, call for call. A publish still
//!    running when the next tick starts overlaps that tick's input and engine phases and is
//!    routed right after its engine step, before anything else of it: the unpipelined stream,
//!    one call later.
//!
//! A tick's messages leave in this order: its subscription answers, its `TableUpdate`s, then
//! its reducer replies (and the disconnects of refused connections). So a client whose call
//! returned already holds the call's writes in its mirror, and a subscription's initial rows
//! follow its answer, pipelined or not.
//! Everything leaves as [`NetCommand`]s; the caller hands them to the netcode session (and
//! times that as the flush phase).

use std::collections::hash_map::Entry as MapEntry;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use orrery_engine::glam::Vec3;
use orrery_engine::schema::ModuleSchema;
use orrery_engine::{
    Caller, ConnectionId, DurabilityHandle, Engine, Identity, Input, ReducerError, TableId,
    Timestamp,
};
use orrery_netcode::protocol::TableRows;
use orrery_netcode::{ClientMessage, ServerMessage};
use orrery_subscription::Publisher;
use orrery_tick::{Phase, PhaseTimer, TickTiming};
use rustc_hash::FxHashMap;
use tokio::sync::oneshot;

use crate::config::{RateLimit, ServerConfig};
use crate::metrics::{Metrics, RejectKind};
use crate::net::{NetCommand, NetEvent};
use crate::profiling;
use crate::rate::{TokenBucket, rate_limited_message};

/// Messages a client may send before its `client_connected` has run; more disconnect it.
const MAX_DEFERRED: usize = 1024;

/// A reducer call made over HTTP (`POST /v1/call/{reducer}`), run as `identity` without a
/// connection. Its outcome is reported once its tick is durable.
#[derive(Debug)]
pub struct HttpCall {
    /// The caller.
    pub identity: Identity,
    /// The reducer.
    pub reducer: String,
    /// Arguments in the Orrery row format.
    pub args: Vec<u8>,
    /// Where the outcome goes.
    pub reply: oneshot::Sender<CallOutcome>,
}

/// A one-off SQL read (`POST /v1/sql`) as `identity`, answered from the publisher's mirror at
/// the end of the tick it is handled in, under subscription visibility rules.
#[derive(Debug)]
pub struct SqlRead {
    /// The reader.
    pub identity: Identity,
    /// The query (the subscription SQL subset).
    pub sql: String,
    /// The point `:focus` stands for in a `within(..)`.
    pub focus: Option<Vec3>,
    /// Where the outcome goes.
    pub reply: oneshot::Sender<SqlOutcome>,
}

/// What became of a [`SqlRead`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SqlOutcome {
    /// The visible rows, in the Orrery row format, ordered by primary key.
    Rows {
        /// The tick sequence the rows are as of.
        tick: u64,
        /// The table's id in the schema.
        table: u32,
        /// One encoded row each.
        rows: Vec<Vec<u8>>,
    },
    /// The query is not valid, names a private table, or selects too many rows.
    Invalid {
        /// What was wrong.
        message: String,
    },
}

/// Moves an identity's connections to another zone (`POST /v1/zone/move`, zone relays
/// only): each gets [`ServerMessage::ZoneMove`] on its reliable channel.
#[derive(Debug)]
pub struct ClientMove {
    /// Whose connections.
    pub identity: Identity,
    /// The zone the character is in now.
    pub zone: u32,
    /// A connect token of that zone for `identity`.
    pub connect_token: Vec<u8>,
    /// How many connections were told.
    pub reply: oneshot::Sender<usize>,
}

/// A request from the HTTP control plane to the tick thread.
#[derive(Debug)]
pub enum HttpRequest {
    /// A reducer call.
    Call(HttpCall),
    /// A one-off read.
    Sql(SqlRead),
    /// A character's connections move to another zone.
    MoveClients(ClientMove),
}

/// What became of an HTTP call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallOutcome {
    /// Committed in tick `tick` (a tick sequence), durable.
    Committed {
        /// The tick's sequence.
        tick: u64,
    },
    /// The reducer returned an error or panicked; nothing was written.
    Failed {
        /// The tick's sequence.
        tick: u64,
        /// The reducer's message.
        message: String,
    },
    /// Unknown reducer, not callable, or bad arguments.
    Invalid {
        /// What was wrong.
        message: String,
    },
    /// The commit log failed; nothing is accepted.
    Storage {
        /// The failure.
        message: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientPhase {
    /// `client_connected` is queued in this tick.
    Joining,
    /// Connected.
    Ready,
}

enum Inflight {
    /// A queued call; `true` if its reply waits for durability.
    Call(bool),
    /// The reply to a refused call, sent after the calls before it.
    Refused(ServerMessage),
}

struct ClientEntry {
    identity: Identity,
    phase: ClientPhase,
    bucket: TokenBucket,
    /// Messages that arrived before `client_connected` ran.
    deferred: VecDeque<ClientMessage>,
    /// Calls queued in the engine and, behind them, replies to later calls that were refused
    /// at once (rate limit): replies leave in call order.
    inflight: VecDeque<Inflight>,
    /// Replies waiting for a durable tick (`(needed seq, reply)`), in order.
    held: VecDeque<(u64, ServerMessage)>,
    subscriptions: u64,
    /// Subscription updates and answers wait until their tick is durable.
    confirmed_reads: bool,
}

/// The tick side of a server (see the module docs).
pub struct TickCore {
    engine: Engine,
    /// `None` while a pipelined publish has it (see [`Pipeline`]).
    publisher: Option<Box<Publisher>>,
    /// The publish thread, when publishes are pipelined.
    pipeline: Option<Pipeline>,
    /// The publish in flight on the pipeline, or back and not yet routed.
    pending: Option<PendingPublish>,
    schema: ModuleSchema,
    durability: Option<DurabilityHandle>,
    clients: BTreeMap<ConnectionId, ClientEntry>,
    /// Clients with held replies.
    holding: BTreeSet<ConnectionId>,
    /// Clients that became ready with deferred messages.
    undeferred: Vec<ConnectionId>,
    /// Resent bytes reported by the network since the last publish, per client, charged to
    /// its budget with the tick's replies.
    resent_charges: Vec<(ConnectionId, u32)>,
    subscription_messages: Vec<(ConnectionId, ClientMessage)>,
    http_pending: FxHashMap<u64, oneshot::Sender<CallOutcome>>,
    /// Reads answered after this tick's publish phase.
    sql_reads: Vec<SqlRead>,
    max_sql_rows: usize,
    http_held: VecDeque<(u64, oneshot::Sender<CallOutcome>, CallOutcome)>,
    http_next: u64,
    rate: RateLimit,
    /// Live connections by identity, for `max_connections_per_identity`.
    connections_per_identity: FxHashMap<Identity, usize>,
    max_connections_per_identity: usize,
    tick_duration: Duration,
    /// The timestamp the next tick gets: tick `k` runs at `first + k · dt` on the engine's
    /// grid, catch-up ticks included; skipped ticks advance it too ([`TickCore::skip_ticks`]).
    grid_next: Timestamp,
    metrics: Arc<Metrics>,
    subscriptions: u64,
    ticks: u64,
    /// `ticks` when the publisher gauges were last sampled.
    publisher_sampled: Option<u64>,
    /// Whether the last tick call routed a publish (one that was still in flight when it began).
    routed_in_last_tick: bool,
    /// Tick-thread time spent routing a publish outside the publish phase (between ticks,
    /// [`TickCore::route_finished_publish`], or joined before a tick's input), counted in the
    /// publish phase of the tick that follows or contains it.
    routing_outside_publish_phase: Duration,
}

impl std::fmt::Debug for TickCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TickCore")
            .field("clients", &self.clients.len())
            .field("tick_seq", &self.engine.tick_seq())
            .finish_non_exhaustive()
    }
}

impl TickCore {
    /// Takes an engine: loads its current rows into the publisher, then runs `init` when
    /// `fresh` (a new database) at `now`.
    pub fn new(
        mut engine: Engine,
        fresh: bool,
        config: &ServerConfig,
        metrics: Arc<Metrics>,
        now: Duration,
    ) -> Result<Self, crate::ServerError> {
        let schema = engine.schema().clone();
        let mut publisher = Publisher::new(&schema, config.publish.clone());
        for (index, table) in schema.tables.iter().enumerate() {
            if table.visibility == orrery_engine::schema::Visibility::Private {
                continue;
            }
            let mut rows: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
            engine.for_each_row_bytes(TableId(index as u32), |pk, row| {
                rows.push((pk.to_vec(), row.to_vec()));
            });
            publisher.load_rows(
                index as u32,
                rows.iter().map(|(pk, row)| (pk.as_slice(), row.as_slice())),
            );
        }
        if engine.tick_interval() != config.tick_duration() {
            tracing::warn!(
                engine = ?engine.tick_interval(),
                server = ?config.tick_duration(),
                "the engine's tick_interval differs from the server's tick; systems integrate with the engine's"
            );
        }
        let mut grid_next = engine.grid_timestamp(timestamp(now));
        // Connections the previous process left open are not connected to this one: end them
        // (presence rows) before any new client is admitted. Their changes go out with the
        // first tick.
        let stale = engine.disconnect_stale_connections();
        if stale > 0 {
            tracing::info!(
                connections = stale,
                "ran client_disconnected for connections left open by the previous run"
            );
        }
        if fresh {
            engine.init(grid_next).map_err(crate::ServerError::Init)?;
            grid_next = grid_next + config.tick_duration();
        }
        let durability = engine.durability();
        metrics.tick_seq.store(engine.tick_seq(), Relaxed);
        let pipeline = if config.publish.pipeline {
            match Pipeline::start() {
                Ok(pipeline) => Some(pipeline),
                Err(error) => {
                    tracing::warn!(%error, "no publish thread; publishing on the tick thread");
                    None
                }
            }
        } else {
            None
        };
        Ok(TickCore {
            engine,
            publisher: Some(Box::new(publisher)),
            pipeline,
            pending: None,
            schema,
            durability,
            clients: BTreeMap::new(),
            holding: BTreeSet::new(),
            undeferred: Vec::new(),
            resent_charges: Vec::new(),
            subscription_messages: Vec::new(),
            http_pending: FxHashMap::default(),
            sql_reads: Vec::new(),
            max_sql_rows: config.max_sql_rows,
            http_held: VecDeque::new(),
            http_next: 0,
            rate: config.rate_limit,
            connections_per_identity: FxHashMap::default(),
            max_connections_per_identity: config.max_connections_per_identity,
            tick_duration: config.tick_duration(),
            grid_next,
            metrics,
            subscriptions: 0,
            ticks: 0,
            publisher_sampled: None,
            routing_outside_publish_phase: Duration::ZERO,
            routed_in_last_tick: false,
        })
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The engine, mutably (for tests and tools; writes go into the next tick).
    pub fn engine_mut(&mut self) -> &mut Engine {
        &mut self.engine
    }

    /// The publisher (waiting for a pipelined publish in flight to finish; its messages still
    /// go out with the next tick).
    pub fn publisher(&mut self) -> &Publisher {
        self.publisher_mut()
    }

    /// Whether a pipelined publish has messages (or SQL answers) not yet routed: they go out
    /// with the next tick, or with [`TickCore::flush_publish`]. Waits for the publish in flight.
    pub fn publish_pending(&mut self) -> bool {
        if self.pending.is_none() {
            return false;
        }
        self.publisher_mut();
        self.pending.as_ref().is_some_and(|p| {
            !p.sql_reads.is_empty() || p.outgoing.as_ref().is_some_and(|o| !o.is_empty())
        })
    }

    /// Whether publishes are pipelined (see [`orrery_subscription::PublishConfig::pipeline`]).
    pub fn pipelined(&self) -> bool {
        self.pipeline.is_some()
    }

    /// Whether the commands of the last [`TickCore::tick`] call are only its input phase's,
    /// with the tick's publish in flight: the previous publish was routed between ticks
    /// ([`TickCore::route_finished_publish`]). They may then wait to leave with this publish's
    /// messages.
    pub fn commands_wait_for_publish(&self) -> bool {
        self.pending.is_some() && !self.routed_in_last_tick
    }

    /// The publisher, back from the publish thread if it was there.
    fn publisher_mut(&mut self) -> &mut Publisher {
        if self.publisher.is_none()
            && let Some(pipeline) = &self.pipeline
            && self.pending.is_some()
        {
            let start = std::time::Instant::now();
            let published = pipeline.wait();
            self.take_back(published, start.elapsed());
        }
        self.publisher
            .as_deref_mut()
            .unwrap_or_else(|| unreachable!("the publisher is on the tick thread or pending"))
    }

    /// Takes the publisher and its payloads back from the publish thread (`waited`: how long
    /// the tick thread stalled for them).
    fn take_back(&mut self, (publisher, outgoing, took): Published, waited: Duration) {
        self.metrics
            .publish_offloaded_us
            .fetch_add(took.as_micros() as u64, Relaxed);
        self.metrics
            .publish_wait_us
            .fetch_add(waited.as_micros() as u64, Relaxed);
        if let Some(pending) = &mut self.pending {
            pending.outgoing = Some(outgoing);
        }
        self.publisher = Some(publisher);
    }

    /// Whether the publisher is back from the publish in flight, waiting at most `timeout`
    /// for it (idle time, not counted as a stall).
    fn publish_done_within(&mut self, timeout: Duration) -> bool {
        if self.pending.is_none() {
            return false;
        }
        if self.publisher.is_some() {
            return true;
        }
        let Some(pipeline) = &self.pipeline else {
            return false;
        };
        match pipeline.wait_for(timeout) {
            Some(published) => {
                self.take_back(published, Duration::ZERO);
                true
            }
            None => false,
        }
    }

    /// Routes the messages of the pipelined publish in flight as soon as it is done, waiting
    /// at most `timeout` for it; returns whether it routed them (into `out`). A tick loop
    /// calls this while it waits for the next tick, so a pipelined tick's updates leave when
    /// its publish finishes, as an unpipelined tick's would, instead of with the next tick
    /// ([`TickCore::tick`] routes whatever is still in flight). The commands are those the
    /// next tick would have started with; the tick-thread time routing them takes is counted
    /// in the next tick's publish phase.
    pub fn route_finished_publish(&mut self, timeout: Duration, out: &mut Vec<NetCommand>) -> bool {
        if !self.publish_done_within(timeout) {
            return false;
        }
        self.route_outside_publish_phase(out);
        true
    }

    /// Routes the publish in flight (waiting for it) outside a tick's publish phase, counting
    /// the time in the next publish phase; returns that time.
    fn route_outside_publish_phase(&mut self, out: &mut Vec<NetCommand>) -> Duration {
        let start = std::time::Instant::now();
        let zone = profiling::phase(Phase::Publish);
        self.flush_publish(out);
        drop(zone);
        let took = start.elapsed();
        self.routing_outside_publish_phase += took;
        took
    }

    /// Sends the messages of the last pipelined publish (waiting for it if it is still
    /// running) and answers the SQL reads of its tick. A no-op when nothing is pending; the
    /// tick loop calls it itself, this is for shutting down and tests.
    pub fn flush_publish(&mut self, out: &mut Vec<NetCommand>) {
        if self.pending.is_none() {
            return;
        }
        self.publisher_mut();
        let Some(pending) = self.pending.take() else {
            return;
        };
        let outgoing = pending.outgoing.unwrap_or_default();
        out.extend(pending.answers);
        self.route_published(outgoing, pending.seq, pending.durable, out);
        out.extend(pending.replies);
        self.sql_reads_of(pending.sql_reads, pending.seq);
        self.sample_publisher();
    }

    /// The metrics this core updates.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Clients that completed `client_connected`.
    pub fn connected_clients(&self) -> usize {
        self.clients
            .values()
            .filter(|c| c.phase == ClientPhase::Ready)
            .count()
    }

    /// Shuts the engine down cleanly (flushes and fsyncs the commit log). Pending HTTP calls
    /// are answered with a storage error.
    pub fn close(mut self) -> Result<(), orrery_engine::DurabilityError> {
        self.flush_publish(&mut Vec::new());
        let message = "server shutting down".to_owned();
        for (_, reply) in self.http_pending.drain() {
            let _ = reply.send(CallOutcome::Storage {
                message: message.clone(),
            });
        }
        for (_, reply, _) in self.http_held.drain(..) {
            let _ = reply.send(CallOutcome::Storage {
                message: message.clone(),
            });
        }
        self.engine.close()
    }

    fn durable_up_to(&self) -> u64 {
        self.durability
            .as_ref()
            .map_or(u64::MAX, DurabilityHandle::durable_up_to)
    }

    /// The timestamp the next tick will run at (on the tick grid; see
    /// [`Engine::grid_timestamp`]). A clock driving the core should make that tick due when
    /// the wall clock reaches it.
    pub fn next_tick_timestamp(&self) -> Timestamp {
        self.grid_next
    }

    /// Advances the tick grid past `ticks` ticks the clock's overrun policy dropped, so later
    /// ticks keep the timestamps of their own grid points.
    pub fn skip_ticks(&mut self, ticks: u64) {
        let skipped = u32::try_from(ticks).unwrap_or(u32::MAX);
        self.grid_next = self.grid_next + self.tick_duration.saturating_mul(skipped);
    }

    /// Runs one tick at `now` (time since the Unix epoch) with the network events and HTTP
    /// calls received since the last one; appends what to send to `out`. Returns the tick's
    /// phase timings (input to publish; the caller adds flush and passes it to
    /// [`TickCore::record_timing`]).
    ///
    /// With a pipelined publish ([`orrery_subscription::PublishConfig::pipeline`]) the tick's
    /// publish runs on the publish thread after this returns. Its messages come out of
    /// [`TickCore::route_finished_publish`] once it is done or, if that was not called, out of
    /// the next call: first in `out` (after that tick's simulation, or before its input when
    /// the input would change how they are routed), so that the stream of commands is the one
    /// an unpipelined core produces, one call later (see [`TickCore::flush_publish`]). The publish phase's timing is then the tick thread's
    /// share (apply, subscriptions, waiting for and routing the previous publish); the time
    /// the publish took off the tick thread is in the metrics.
    pub fn tick(
        &mut self,
        now: Duration,
        events: impl IntoIterator<Item = NetEvent>,
        requests: impl IntoIterator<Item = HttpRequest>,
        out: &mut Vec<NetCommand>,
    ) -> TickTiming {
        let mut timer = PhaseTimer::start();
        let events: Vec<NetEvent> = events.into_iter().collect();
        self.routed_in_last_tick = self.pending.is_some();
        // Input that changes what the publish in flight's messages meet when they are routed
        // (a client leaving, confirmed reads, replies queued behind held ones) waits for them.
        // That is publish work: it moves from the input phase's time to the publish phase's.
        let mut joined_before_input = Duration::ZERO;
        if self.pending.is_some() && self.input_meets_publish(&events) {
            self.metrics.publish_early_joins.fetch_add(1, Relaxed);
            joined_before_input = self.route_outside_publish_phase(out);
        }
        let mut input_out = Vec::new();
        let zone = profiling::phase(Phase::Input);
        let durable = self.durable_up_to();
        for client in std::mem::take(&mut self.undeferred) {
            let Some(entry) = self.clients.get_mut(&client) else {
                continue;
            };
            let deferred = std::mem::take(&mut entry.deferred);
            for msg in deferred {
                self.on_message(client, msg, now, durable, &mut input_out);
            }
        }
        for event in events {
            self.on_event(event, now, durable, &mut input_out);
        }
        for request in requests {
            match request {
                HttpRequest::Call(call) => self.on_http_call(call),
                HttpRequest::Sql(read) => self.on_sql_read(read),
                HttpRequest::MoveClients(moving) => self.on_move_clients(moving, &mut input_out),
            }
        }
        drop(zone);
        timer.lap(Phase::Input);
        let input_time = timer
            .finish()
            .get(Phase::Input)
            .saturating_sub(joined_before_input);

        let at = self.grid_next;
        self.grid_next = at + self.tick_duration;
        let step = self.engine.step(at);
        let seq = step.seq;
        let mut timing = step.timing;
        timing.add(Phase::Input, input_time);
        if let Some(error) = step
            .storage_error
            .clone()
            .or_else(|| self.engine.storage_failure())
        {
            profiling::message(profiling::ERROR_COLOR, || {
                format!("storage failed: {error}")
            });
            self.metrics.set_storage_failed(&error);
        }

        let mut timer = PhaseTimer::start();
        let zone = profiling::phase(Phase::Publish);
        self.flush_publish(out);
        out.append(&mut input_out);
        // Replies leave after their tick's updates, so a client whose call returned already
        // holds the call's writes in its mirror (`docs/client.md`), pipelined or not.
        let mut replies = Vec::new();
        let durable = self.durable_up_to();
        for outcome in step.outcomes {
            self.on_outcome(outcome, seq, durable, &mut replies);
        }
        self.release_held(&mut replies);

        let mut resent = std::mem::take(&mut self.resent_charges);
        let publisher = self.publisher_mut();
        // The replies go to the same clients as the updates: their bytes come out of the same
        // budget, which then bounds each client's whole downstream.
        for command in &replies {
            if let NetCommand::Send { client, msg } = command {
                publisher.charge(*client, wire_estimate(msg));
            }
        }
        // So do resends: a lossy or lagging client's budget bounds what it is sent, resends
        // included, instead of resends coming on top of a full budget.
        for (client, bytes) in resent.drain(..) {
            publisher.charge(client, bytes);
        }
        publisher.apply(&step.changes);
        for (connection, point) in step.focus {
            publisher.set_focus(connection, point);
        }
        // Subscription answers go just before the tick's updates (their initial rows follow as
        // table updates), replies just after.
        let mut answers = Vec::new();
        for (client, msg) in std::mem::take(&mut self.subscription_messages) {
            self.on_subscription(client, msg, seq, &mut answers);
        }
        let sql_reads = std::mem::take(&mut self.sql_reads);
        match (&self.pipeline, self.publisher.take()) {
            (Some(pipeline), Some(publisher)) => {
                pipeline.start_publish(publisher, self.tick_duration);
                self.pending = Some(PendingPublish {
                    seq,
                    durable,
                    sql_reads,
                    outgoing: None,
                    answers,
                    replies,
                });
            }
            (_, publisher) => {
                self.publisher = publisher;
                let mut outgoing = Vec::new();
                let elapsed = self.tick_duration;
                self.publisher_mut().publish(elapsed, &mut outgoing);
                out.append(&mut answers);
                self.route_published(outgoing, seq, durable, out);
                out.append(&mut replies);
                self.sql_reads_of(sql_reads, seq);
                self.sample_publisher();
            }
        }
        drop(zone);
        timer.lap(Phase::Publish);
        timing.add(Phase::Publish, timer.finish().get(Phase::Publish));
        timing.add(
            Phase::Publish,
            std::mem::take(&mut self.routing_outside_publish_phase),
        );

        self.ticks += 1;
        let m = &self.metrics;
        m.ticks.fetch_add(1, Relaxed);
        m.tick_seq.store(seq, Relaxed);
        m.durable_seq.store(durable.min(seq), Relaxed);
        let clients = self.connected_clients();
        m.clients.store(clients as u64, Relaxed);
        profiling::plot(profiling::Plot::ClientsConnected, clients as f64);
        profiling::plot(profiling::Plot::RowsChanged, step.changes.len() as f64);
        m.subscriptions_active.store(self.subscriptions, Relaxed);
        let held =
            self.clients.values().map(|c| c.held.len()).sum::<usize>() + self.http_held.len();
        m.replies_held.store(held as u64, Relaxed);
        timing
    }

    /// Whether handling `events` (or the deferred messages due) could change how the messages
    /// of the publish in flight are routed: a client leaving (its messages must still find it),
    /// or anything from a client with confirmed reads (whose messages queue behind held
    /// replies in order).
    fn input_meets_publish(&self, events: &[NetEvent]) -> bool {
        !self.undeferred.is_empty()
            || events.iter().any(|event| match event {
                NetEvent::Connected { .. } | NetEvent::Resent { .. } => false,
                NetEvent::Disconnected { .. } => true,
                NetEvent::Message { client, msg } => {
                    matches!(msg, ClientMessage::ConfirmedReads { .. })
                        || self.clients.get(client).is_some_and(|entry| {
                            entry.confirmed_reads || entry.deferred.len() >= MAX_DEFERRED
                        })
                }
            })
    }

    /// Turns a publish's payloads into `TableUpdate`s for tick `seq` (held for clients with
    /// confirmed reads until `seq` is durable).
    fn route_published(
        &mut self,
        outgoing: Vec<orrery_subscription::Outgoing>,
        seq: u64,
        durable: u64,
        out: &mut Vec<NetCommand>,
    ) {
        let mut bytes = 0u64;
        for o in outgoing {
            bytes += o.payload.len() as u64;
            let client = ConnectionId(o.client.0);
            let msg = ServerMessage::TableUpdate {
                table_id: o.table,
                tick: seq,
                rows: o.payload,
            };
            match self.clients.get_mut(&client) {
                Some(entry) if entry.confirmed_reads => {
                    reply_to(entry, client, seq, durable, msg, out, &mut self.holding);
                }
                _ => out.push(NetCommand::Send { client, msg }),
            }
        }
        self.metrics.publisher_bytes.fetch_add(bytes, Relaxed);
    }

    /// Publisher gauges, about once a second (when the publisher is on the tick thread).
    fn sample_publisher(&mut self) {
        let per_second = u64::from(1_000_000 / self.tick_duration.as_micros().max(1) as u32).max(1);
        if self
            .publisher_sampled
            .is_some_and(|at| self.ticks < at + per_second)
        {
            return;
        }
        let Some(publisher) = self.publisher.as_deref() else {
            return;
        };
        self.publisher_sampled = Some(self.ticks);
        let stats = publisher.stats();
        let busy = publisher.worker_busy();
        let m = &self.metrics;
        m.publisher_rows.store(stats.mirrored_rows as u64, Relaxed);
        m.publisher_records.store(
            stats.sent.upserts + stats.sent.deltas + stats.sent.deletes,
            Relaxed,
        );
        *m.publish_worker_busy_us
            .lock()
            .unwrap_or_else(|e| e.into_inner()) =
            busy.iter().map(|d| d.as_micros() as u64).collect();
    }

    /// Records a finished tick's timing in the metrics.
    pub fn record_timing(&self, timing: &TickTiming) {
        self.metrics.record_tick(timing);
    }

    fn on_event(
        &mut self,
        event: NetEvent,
        now: Duration,
        durable: u64,
        out: &mut Vec<NetCommand>,
    ) {
        match event {
            NetEvent::Connected {
                client, identity, ..
            } => {
                let held = self.connections_per_identity.entry(identity).or_insert(0);
                if *held >= self.max_connections_per_identity {
                    self.metrics.connections_refused.fetch_add(1, Relaxed);
                    out.push(NetCommand::Disconnect {
                        client,
                        reason: format!(
                            "this identity already holds {held} connections (the limit is {})",
                            self.max_connections_per_identity
                        ),
                    });
                    return;
                }
                *held += 1;
                self.clients.insert(
                    client,
                    ClientEntry {
                        identity,
                        phase: ClientPhase::Joining,
                        bucket: TokenBucket::new(&self.rate, now),
                        deferred: VecDeque::new(),
                        inflight: VecDeque::new(),
                        held: VecDeque::new(),
                        subscriptions: 0,
                        confirmed_reads: false,
                    },
                );
                self.engine.enqueue(Input::Connect {
                    caller: Caller::client(identity, client),
                });
            }
            NetEvent::Message { client, msg } => {
                let Some(entry) = self.clients.get_mut(&client) else {
                    return;
                };
                if entry.phase == ClientPhase::Joining {
                    if entry.deferred.len() >= MAX_DEFERRED {
                        self.drop_client(client);
                        out.push(NetCommand::Disconnect {
                            client,
                            reason: format!(
                                "more than {MAX_DEFERRED} messages before the connection was accepted"
                            ),
                        });
                        return;
                    }
                    entry.deferred.push_back(msg);
                    return;
                }
                self.on_message(client, msg, now, durable, out);
            }
            NetEvent::Disconnected { client, reason } => {
                let Some(entry) = self.clients.get(&client) else {
                    return;
                };
                tracing::debug!(%client, %reason, "client left");
                profiling::message(profiling::LIFECYCLE_COLOR, || {
                    format!("disconnect {client}: {reason}")
                });
                let caller = Caller::client(entry.identity, client);
                self.drop_client(client);
                self.metrics.disconnects.fetch_add(1, Relaxed);
                self.engine.enqueue(Input::Disconnect { caller });
            }
            NetEvent::Resent { client, bytes } => {
                // Charged with the tick's replies: the publisher may be busy with the
                // pipelined publish now.
                if self.clients.contains_key(&client) {
                    let bytes = u32::try_from(bytes).unwrap_or(u32::MAX);
                    self.resent_charges.push((client, bytes));
                }
            }
        }
    }

    /// Forgets a client's server-side state.
    fn drop_client(&mut self, client: ConnectionId) {
        if let Some(entry) = self.clients.remove(&client) {
            self.subscriptions -= entry.subscriptions;
            if let MapEntry::Occupied(mut held) =
                self.connections_per_identity.entry(entry.identity)
            {
                *held.get_mut() -= 1;
                if *held.get() == 0 {
                    held.remove();
                }
            }
        }
        self.holding.remove(&client);
        self.publisher_mut().disconnect(client);
    }

    fn on_message(
        &mut self,
        client: ConnectionId,
        msg: ClientMessage,
        now: Duration,
        durable: u64,
        out: &mut Vec<NetCommand>,
    ) {
        let rate = self.rate;
        let Some(entry) = self.clients.get_mut(&client) else {
            return;
        };
        match msg {
            ClientMessage::CallReducer {
                request_id,
                reducer,
                args,
                durable: wants_durable,
            } => {
                self.metrics.calls.fetch_add(1, Relaxed);
                if !entry.bucket.try_take(&rate, now) {
                    self.metrics.reject(RejectKind::RateLimit);
                    let reply = ServerMessage::ReducerReply {
                        request_id,
                        tick: self.engine.tick_seq() + 1,
                        result: Err(rate_limited_message(&rate)),
                        durable: false,
                    };
                    if entry.inflight.is_empty() {
                        reply_to(entry, client, 0, durable, reply, out, &mut self.holding);
                    } else {
                        entry.inflight.push_back(Inflight::Refused(reply));
                    }
                    return;
                }
                entry
                    .inflight
                    .push_back(Inflight::Call(wants_durable && self.durability.is_some()));
                self.engine.enqueue(Input::Call {
                    request_id: u64::from(request_id),
                    caller: Caller::client(entry.identity, client),
                    reducer,
                    args,
                });
            }
            // Unsubscribes are never rate limited: they only free server work, and a refused
            // one would leave a subscription the client has already forgotten.
            ClientMessage::Unsubscribe { .. } => self.subscription_messages.push((client, msg)),
            ClientMessage::Subscribe { query_id, .. } => {
                if !entry.bucket.try_take(&rate, now) {
                    self.metrics.subscription_errors.fetch_add(1, Relaxed);
                    out.push(NetCommand::Send {
                        client,
                        msg: ServerMessage::SubscriptionError {
                            query_id,
                            message: rate_limited_message(&rate),
                        },
                    });
                    return;
                }
                self.subscription_messages.push((client, msg));
            }
            ClientMessage::ConfirmedReads { enabled } => entry.confirmed_reads = enabled,
        }
    }

    fn on_http_call(&mut self, call: HttpCall) {
        self.metrics.calls.fetch_add(1, Relaxed);
        self.http_next += 1;
        let id = self.http_next;
        self.http_pending.insert(id, call.reply);
        self.engine.enqueue(Input::Call {
            request_id: id,
            caller: Caller::from(call.identity),
            reducer: call.reducer,
            args: call.args,
        });
    }

    fn on_move_clients(&mut self, moving: ClientMove, out: &mut Vec<NetCommand>) {
        let mut told = 0;
        if self.connections_per_identity.contains_key(&moving.identity) {
            for (&client, entry) in &self.clients {
                if entry.identity == moving.identity {
                    out.push(NetCommand::Send {
                        client,
                        msg: ServerMessage::ZoneMove {
                            zone: moving.zone,
                            connect_token: moving.connect_token.clone(),
                        },
                    });
                    told += 1;
                }
            }
        }
        let _ = moving.reply.send(told);
    }

    fn on_sql_read(&mut self, read: SqlRead) {
        self.metrics.sql_reads.fetch_add(1, Relaxed);
        self.sql_reads.push(read);
    }

    /// Answers `reads` from the publisher's mirror as of tick `seq`.
    fn sql_reads_of(&mut self, reads: Vec<SqlRead>, seq: u64) {
        self.publisher_mut();
        for read in reads {
            let Some(publisher) = self.publisher.as_deref_mut() else {
                unreachable!("the publisher was just taken back");
            };
            let outcome = match publisher.read(&self.schema, &read.sql, read.identity, read.focus) {
                Ok((_, rows)) if rows.len() > self.max_sql_rows => SqlOutcome::Invalid {
                    message: format!(
                        "the query selects {} rows, more than the limit of {}; narrow it with WHERE",
                        rows.len(),
                        self.max_sql_rows
                    ),
                },
                Ok((table, rows)) => SqlOutcome::Rows {
                    tick: seq,
                    table,
                    rows,
                },
                Err(e) => SqlOutcome::Invalid {
                    message: e.to_string(),
                },
            };
            if !matches!(outcome, SqlOutcome::Rows { .. }) {
                self.metrics.sql_refused.fetch_add(1, Relaxed);
            }
            let _ = read.reply.send(outcome);
        }
    }

    fn count_outcome(&self, result: &Result<(), ReducerError>) {
        let m = &self.metrics;
        match result {
            Ok(()) => m.calls_committed.fetch_add(1, Relaxed),
            Err(ReducerError::Failed { .. } | ReducerError::Panicked { .. }) => {
                m.calls_failed.fetch_add(1, Relaxed)
            }
            Err(ReducerError::Storage(_)) => {
                m.reject(RejectKind::Storage);
                0
            }
            Err(_) => {
                m.reject(RejectKind::Invalid);
                0
            }
        };
    }

    fn on_outcome(
        &mut self,
        outcome: orrery_engine::InputOutcome,
        seq: u64,
        durable: u64,
        out: &mut Vec<NetCommand>,
    ) {
        let Some(connection) = outcome.caller.connection_id else {
            // An HTTP call.
            let Some(id) = outcome.request_id else {
                return;
            };
            let Some(reply) = self.http_pending.remove(&id) else {
                return;
            };
            self.count_outcome(&outcome.result);
            let result = match outcome.result {
                Ok(()) => CallOutcome::Committed { tick: seq },
                Err(e @ (ReducerError::Failed { .. } | ReducerError::Panicked { .. })) => {
                    CallOutcome::Failed {
                        tick: seq,
                        message: e.client_message(),
                    }
                }
                Err(ReducerError::Storage(message)) => CallOutcome::Storage { message },
                Err(e) => CallOutcome::Invalid {
                    message: e.client_message(),
                },
            };
            if matches!(
                result,
                CallOutcome::Committed { .. } | CallOutcome::Failed { .. }
            ) && self.durability.is_some()
                && durable < seq
            {
                self.http_held.push_back((seq, reply, result));
            } else {
                let _ = reply.send(result);
            }
            return;
        };
        let client = connection;
        if outcome.request_id.is_some() {
            self.count_outcome(&outcome.result);
        }
        let Some(entry) = self.clients.get_mut(&client) else {
            return; // the client left during this tick
        };
        match outcome.request_id {
            None if entry.phase == ClientPhase::Joining => match outcome.result {
                Ok(()) => {
                    entry.phase = ClientPhase::Ready;
                    profiling::message(profiling::LIFECYCLE_COLOR, || {
                        format!("connect {client} {}", entry.identity)
                    });
                    let Some(publisher) = self.publisher.as_deref_mut() else {
                        unreachable!("outcomes are handled while the publisher is here");
                    };
                    publisher.connect(connection, entry.identity);
                    self.metrics.connects.fetch_add(1, Relaxed);
                    if !entry.deferred.is_empty() {
                        self.undeferred.push(client);
                    }
                }
                Err(error) => {
                    let reason = error.client_message();
                    tracing::info!(%client, %reason, "client_connected refused a connection");
                    profiling::message(profiling::ERROR_COLOR, || {
                        format!("connection refused {client}: {reason}")
                    });
                    self.metrics.connections_refused.fetch_add(1, Relaxed);
                    self.drop_client(client);
                    out.push(NetCommand::Disconnect { client, reason });
                }
            },
            None => {}
            Some(request_id) => {
                let needs_durable = match entry.inflight.pop_front() {
                    Some(Inflight::Call(d)) => d,
                    _ => false,
                };
                let reply = ServerMessage::ReducerReply {
                    request_id: request_id as u32,
                    tick: seq,
                    result: outcome.result.map_err(|e| e.client_message()),
                    durable: false,
                };
                let needed = if needs_durable { seq } else { 0 };
                reply_to(
                    entry,
                    client,
                    needed,
                    durable,
                    reply,
                    out,
                    &mut self.holding,
                );
                while let Some(Inflight::Refused(_)) = entry.inflight.front() {
                    if let Some(Inflight::Refused(reply)) = entry.inflight.pop_front() {
                        reply_to(entry, client, 0, durable, reply, out, &mut self.holding);
                    }
                }
            }
        }
    }

    /// Sends held replies whose tick is durable; after a storage failure, turns the rest into
    /// errors.
    fn release_held(&mut self, out: &mut Vec<NetCommand>) {
        let durable = self.durable_up_to();
        let failure = self.engine.storage_failure();
        let mut emptied = Vec::new();
        for &client in &self.holding {
            let Some(entry) = self.clients.get_mut(&client) else {
                emptied.push(client);
                continue;
            };
            while let Some((needed, _)) = entry.held.front() {
                let needed = *needed;
                if needed > durable && failure.is_none() {
                    break;
                }
                let Some((_, mut msg)) = entry.held.pop_front() else {
                    break;
                };
                if needed > durable
                    && let (Some(failure), ServerMessage::ReducerReply { result, .. }) =
                        (&failure, &mut msg)
                {
                    *result = Err(format!(
                        "storage failure, tick {needed} was not made durable: {failure}"
                    ));
                }
                mark_durability(&mut msg, durable);
                out.push(NetCommand::Send { client, msg });
            }
            if entry.held.is_empty() {
                emptied.push(client);
            }
        }
        for client in emptied {
            self.holding.remove(&client);
        }
        while let Some((needed, _, _)) = self.http_held.front() {
            if *needed > durable && failure.is_none() {
                break;
            }
            let Some((needed, reply, outcome)) = self.http_held.pop_front() else {
                break;
            };
            let outcome = match (&failure, needed > durable) {
                (Some(failure), true) => CallOutcome::Storage {
                    message: failure.clone(),
                },
                _ => outcome,
            };
            let _ = reply.send(outcome);
        }
    }

    fn on_subscription(
        &mut self,
        client: ConnectionId,
        msg: ClientMessage,
        seq: u64,
        out: &mut Vec<NetCommand>,
    ) {
        let Some(entry) = self.clients.get_mut(&client) else {
            return;
        };
        let connection = client;
        let reply = match msg {
            ClientMessage::Subscribe { query_id, sql } => {
                let Some(publisher) = self.publisher.as_deref_mut() else {
                    unreachable!("subscriptions are handled while the publisher is here");
                };
                match publisher.subscribe(&self.schema, connection, query_id, &sql) {
                    Ok(subscribed) => {
                        entry.subscriptions += 1;
                        self.subscriptions += 1;
                        self.metrics.subscriptions_applied.fetch_add(1, Relaxed);
                        ServerMessage::SubscriptionApplied {
                            query_id,
                            tick: seq,
                            tables: vec![TableRows {
                                table_id: subscribed.table,
                                rows: Vec::new(),
                            }],
                        }
                    }
                    Err(error) => {
                        self.metrics.subscription_errors.fetch_add(1, Relaxed);
                        ServerMessage::SubscriptionError {
                            query_id,
                            message: error.to_string(),
                        }
                    }
                }
            }
            ClientMessage::Unsubscribe { query_id } => {
                let Some(publisher) = self.publisher.as_deref_mut() else {
                    unreachable!("subscriptions are handled while the publisher is here");
                };
                match publisher.unsubscribe(connection, query_id) {
                    Ok(()) => {
                        entry.subscriptions -= 1;
                        self.subscriptions -= 1;
                        return;
                    }
                    Err(error) => ServerMessage::SubscriptionError {
                        query_id,
                        message: error.to_string(),
                    },
                }
            }
            ClientMessage::CallReducer { .. } | ClientMessage::ConfirmedReads { .. } => return,
        };
        if entry.confirmed_reads {
            let durable = self.durability.as_ref().map_or(seq, |d| d.durable_up_to());
            reply_to(entry, client, seq, durable, reply, out, &mut self.holding);
        } else {
            out.push(NetCommand::Send { client, msg: reply });
        }
    }
}

/// A publish handed to the publish thread, and what routing its messages needs.
struct PendingPublish {
    /// The tick it publishes.
    seq: u64,
    /// Durable tick sequence when it was handed over (what an unpipelined publish routes by).
    durable: u64,
    /// Reads to answer from the mirror as of this tick.
    sql_reads: Vec<SqlRead>,
    /// Its payloads, once the publisher is back.
    outgoing: Option<Vec<orrery_subscription::Outgoing>>,
    /// The tick's subscription answers, to go just before its updates.
    answers: Vec<NetCommand>,
    /// The tick's reducer replies (and what else its outcomes sent), to follow its updates.
    replies: Vec<NetCommand>,
}

/// What the publish thread hands back: the publisher, its payloads, the time it took.
type Published = (Box<Publisher>, Vec<orrery_subscription::Outgoing>, Duration);

/// The publish thread of a pipelined tick loop: takes the publisher with a tick applied,
/// publishes it (on the publisher's own workers) while the tick thread simulates the next
/// tick, and hands it back. The publisher never touches the world, so nothing is shared.
struct Pipeline {
    jobs: Option<std::sync::mpsc::Sender<(Box<Publisher>, Duration)>>,
    done: std::sync::mpsc::Receiver<Published>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Pipeline {
    fn start() -> std::io::Result<Self> {
        let (jobs, inbox) = std::sync::mpsc::channel::<(Box<Publisher>, Duration)>();
        let (outbox, done) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("orrery-publish".into())
            .spawn(move || {
                while let Ok((mut publisher, elapsed)) = inbox.recv() {
                    let start = std::time::Instant::now();
                    let mut outgoing = Vec::new();
                    publisher.publish(elapsed, &mut outgoing);
                    if outbox.send((publisher, outgoing, start.elapsed())).is_err() {
                        return;
                    }
                }
            })?;
        Ok(Pipeline {
            jobs: Some(jobs),
            done,
            thread: Some(thread),
        })
    }

    /// Hands `publisher` over to publish one tick (`elapsed` since the last).
    fn start_publish(&self, publisher: Box<Publisher>, elapsed: Duration) {
        if let Some(jobs) = &self.jobs
            && jobs.send((publisher, elapsed)).is_ok()
        {
            return;
        }
        // The thread only ends by a panic in the publisher, which an unpipelined publish
        // would have raised on the tick thread.
        panic!("the publish thread is gone");
    }

    /// Waits for the publish in flight.
    fn wait(&self) -> Published {
        match self.done.recv() {
            Ok(published) => published,
            Err(_) => panic!("the publish thread died while publishing"),
        }
    }

    /// Waits at most `timeout` for the publish in flight.
    fn wait_for(&self, timeout: Duration) -> Option<Published> {
        match self.done.recv_timeout(timeout) {
            Ok(published) => Some(published),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => None,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                panic!("the publish thread died while publishing")
            }
        }
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Sends `reply` now, or holds it behind the client's earlier held replies or until `needed`
/// is durable.
fn reply_to(
    entry: &mut ClientEntry,
    client: ConnectionId,
    needed: u64,
    durable: u64,
    reply: ServerMessage,
    out: &mut Vec<NetCommand>,
    holding: &mut BTreeSet<ConnectionId>,
) {
    if entry.held.is_empty() && needed <= durable {
        let mut reply = reply;
        mark_durability(&mut reply, durable);
        out.push(NetCommand::Send { client, msg: reply });
    } else {
        entry.held.push_back((needed, reply));
        holding.insert(client);
    }
}

/// About what a message other than a table update costs on the wire (envelope and framing;
/// the datagram around it is charged by the publisher with the tick's updates).
fn wire_estimate(msg: &ServerMessage) -> u32 {
    let body = match msg {
        ServerMessage::ReducerReply { result, .. } => {
            14 + result.as_ref().err().map_or(0, |e| e.len())
        }
        _ => 16,
    };
    orrery_subscription::MESSAGE_FRAMING_BYTES + u32::try_from(body).unwrap_or(u32::MAX)
}

/// Says in a reducer reply whether its tick is durable as it leaves.
fn mark_durability(msg: &mut ServerMessage, durable_up_to: u64) {
    if let ServerMessage::ReducerReply { tick, durable, .. } = msg {
        *durable = *tick <= durable_up_to;
    }
}

/// A time since the Unix epoch as an engine timestamp.
pub fn timestamp(now: Duration) -> Timestamp {
    Timestamp::from_micros(i64::try_from(now.as_micros()).unwrap_or(i64::MAX))
}
