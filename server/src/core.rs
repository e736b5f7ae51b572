//! [`ServerCore`]: a whole server without threads or sockets. It joins a netcode
//! `ServerSession` and a [`TickCore`] on one fixed clock and is driven with explicit times:
//! datagrams in ([`ServerCore::handle_datagram`]), time passes ([`ServerCore::poll`]: events
//! are collected, due ticks run, replies and updates are queued, the session updates),
//! datagrams out ([`ServerCore::drain_transmits`]). Tests run it on a virtual clock against
//! in-memory networks of netcode `ClientSession`s; the threaded runtime runs the same
//! `TickCore` and the same session functions on two threads.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use orrery_engine::Engine;
use orrery_netcode::{ConnectionId, PrivateKey, ServerSession, Transmit};
use orrery_tick::{FixedClock, Phase, PhaseTimer};

use crate::config::ServerConfig;
use crate::error::ServerError;
use crate::metrics::Metrics;
use crate::net::{self, ClientInfo, NetCommand, NetEvent};
use crate::tick::{HttpCall, HttpRequest, SqlRead, TickCore, timestamp};

/// A server on explicit time (see the module docs).
#[derive(Debug)]
pub struct ServerCore {
    session: ServerSession,
    tick: TickCore,
    clock: FixedClock,
    /// The virtual instant that corresponds to `start` (the clock needs `Instant`s).
    anchor: Instant,
    start: Duration,
    events: Vec<NetEvent>,
    requests: Vec<HttpRequest>,
    commands: Vec<NetCommand>,
    /// Handing a pipelined publish routed after a poll's ticks to the session, counted in the
    /// next tick's flush phase.
    flushed_between_polls: Duration,
    metrics: Arc<Metrics>,
}

impl ServerCore {
    /// A server at `now` (time since the Unix epoch) running `engine`, whose sessions accept
    /// connect tokens issued with `key` for `public_addresses`. `fresh` runs `init`.
    pub fn new(
        engine: Engine,
        fresh: bool,
        config: &ServerConfig,
        key: PrivateKey,
        public_addresses: Vec<SocketAddr>,
        now: Duration,
    ) -> Result<Self, ServerError> {
        config.validate()?;
        let metrics = Arc::new(Metrics::new(1024, config.tick_duration()));
        let session = ServerSession::new(net::session_config(config, key, public_addresses), now)?;
        let tick = TickCore::new(engine, fresh, config, metrics.clone(), now)?;
        let anchor = Instant::now();
        // The first tick is due when `now` reaches its grid timestamp.
        let until_first = Duration::from_micros(
            u64::try_from(tick.next_tick_timestamp().as_micros() - timestamp(now).as_micros())
                .unwrap_or(0),
        );
        let clock = FixedClock::new(config.tick_duration(), anchor + until_first, config.overrun)
            .map_err(ServerError::Clock)?;
        Ok(ServerCore {
            session,
            tick,
            clock,
            anchor,
            start: now,
            events: Vec::new(),
            requests: Vec::new(),
            commands: Vec::new(),
            flushed_between_polls: Duration::ZERO,
            metrics,
        })
    }

    fn instant(&self, now: Duration) -> Instant {
        self.anchor + now.saturating_sub(self.start)
    }

    /// Processes one received datagram (never panics on any bytes).
    pub fn handle_datagram(&mut self, now: Duration, from: SocketAddr, bytes: &[u8]) {
        self.session.handle_datagram(now, from, bytes);
    }

    /// Queues an HTTP reducer call for the next tick.
    pub fn submit_call(&mut self, call: HttpCall) {
        self.requests.push(HttpRequest::Call(call));
    }

    /// Queues a one-off SQL read; it is answered at the end of the next tick.
    pub fn submit_sql(&mut self, read: SqlRead) {
        self.requests.push(HttpRequest::Sql(read));
    }

    /// Advances to `now`: collects the session's events, runs every tick the clock says is
    /// due, queues their replies and updates, and updates the session (resends, keep-alives,
    /// timeouts). Returns how many ticks ran.
    pub fn poll(&mut self, now: Duration) -> u32 {
        net::drain_events(&mut self.session, &mut self.events, &self.metrics);
        let due = self.clock.poll(self.instant(now));
        self.tick.skip_ticks(due.skipped);
        self.metrics.ticks_skipped.fetch_add(due.skipped, Relaxed);
        for _ in 0..due.run {
            let events = std::mem::take(&mut self.events);
            let requests = std::mem::take(&mut self.requests);
            let mut timing = self.tick.tick(now, events, requests, &mut self.commands);
            let mut timer = PhaseTimer::start();
            net::apply_commands(&mut self.session, self.commands.drain(..));
            timer.lap(Phase::Flush);
            timing.add(Phase::Flush, timer.finish().get(Phase::Flush));
            timing.add(
                Phase::Flush,
                std::mem::take(&mut self.flushed_between_polls),
            );
            self.tick.record_timing(&timing);
            // Sends that overflowed a backlog produced events; they belong to the next tick.
            net::drain_events(&mut self.session, &mut self.events, &self.metrics);
        }
        // A pipelined publish's messages leave once it is done, as in the real server's idle
        // time between ticks (here deterministically: before the next poll).
        if due.run > 0
            && self
                .tick
                .route_finished_publish(Duration::MAX, &mut self.commands)
        {
            let start = Instant::now();
            net::apply_commands(&mut self.session, self.commands.drain(..));
            self.flushed_between_polls += start.elapsed();
            net::drain_events(&mut self.session, &mut self.events, &self.metrics);
        }
        self.session.update(now);
        net::drain_events(&mut self.session, &mut self.events, &self.metrics);
        self.metrics
            .record_net_worker(0, net::worker_sample(&self.session, 0));
        due.run
    }

    /// When the next tick is due (time since the Unix epoch).
    pub fn next_tick(&self) -> Duration {
        self.start
            + self
                .clock
                .next_deadline()
                .saturating_duration_since(self.anchor)
    }

    /// Moves the datagrams to send into `out`.
    pub fn drain_transmits(&mut self, out: &mut Vec<Transmit>) {
        self.session.drain_transmits(out);
    }

    /// Disconnects a client (admin action); `false` if it is not connected.
    pub fn disconnect(&mut self, client: ConnectionId, reason: &str) -> bool {
        self.session.disconnect(client, reason)
    }

    /// The connected clients with their network counters.
    pub fn clients(&self) -> Vec<ClientInfo> {
        net::list_clients(&self.session)
    }

    /// The session.
    pub fn session(&self) -> &ServerSession {
        &self.session
    }

    /// The tick side.
    pub fn tick_core(&self) -> &TickCore {
        &self.tick
    }

    /// The tick side, mutably.
    pub fn tick_core_mut(&mut self) -> &mut TickCore {
        &mut self.tick
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Shuts down: disconnects every client and closes the engine (flushing the log).
    pub fn close(mut self, now: Duration) -> Result<Vec<Transmit>, ServerError> {
        self.session.disconnect_all("server shutting down");
        self.session.update(now);
        let mut out = Vec::new();
        self.session.drain_transmits(&mut out);
        self.tick.close()?;
        Ok(out)
    }
}
