//! The bots of one process: each a real [`orrery_client::Client`] with its own UDP socket
//! and driver task, started at the ramp rate, playing its [`Role`] at the input rate, then
//! stopping, settling and (with `--verify`) checking its mirror against the server. Shared
//! counters and histograms are read as cumulative [`FleetSnapshot`]s, which the orchestrator
//! (in this process, or the parent of several worker processes) turns into time series.
//!
//! Input-to-observed latency: when a bot changes its avatar's velocity with `set_input`, it
//! notes (avatar, velocity, time) on the process's [`InputBoard`]; every bot's `avatar`
//! update callback looks changed velocities up on the board, and the first time it sees a
//! noted one it records the delay: in `observe_own` when the avatar is its own, in
//! `observe_neighbour` when it is another bot's. Only bots of the same process are matched.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use orrery_client::netcode::sim::LinkConditions;
use orrery_client::row::Value;
use orrery_client::{CallError, Client, ClientOptions};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::{Semaphore, watch};

use crate::behavior::{Behavior, Brain, BrainParams, Rng, Role, Sight, Thing};
use crate::hist::{AtomicHistogram, Histogram};
use crate::scrape::ProcessUsage;
use crate::verify::{self, BotVerify, Divergence, SightRadii};

/// Simulated network conditions for every bot's datagrams (both ways).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LinkSpec {
    /// Probability that a datagram is lost.
    pub loss: f64,
    /// One-way delay, milliseconds.
    pub latency_ms: f64,
    /// Extra delay, uniform in `0..=jitter`, milliseconds.
    pub jitter_ms: f64,
}

impl LinkSpec {
    /// Whether it simulates anything.
    pub fn is_perfect(&self) -> bool {
        self.loss <= 0.0 && self.latency_ms <= 0.0 && self.jitter_ms <= 0.0
    }

    /// The netcode conditions.
    pub fn conditions(&self) -> LinkConditions {
        LinkConditions::lossy(
            self.loss,
            Duration::from_secs_f64(self.latency_ms.max(0.0) / 1_000.0),
            Duration::from_secs_f64(self.jitter_ms.max(0.0) / 1_000.0),
        )
    }
}

/// What the bots of one process do.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FleetConfig {
    /// The server's control plane (`http://host:port`).
    pub server: String,
    /// Bots in the whole run.
    pub bots: usize,
    /// This process plays bots `first`, `first + stride`, ... (`0` and `1` for one process).
    pub first: usize,
    /// See `first`.
    pub stride: usize,
    /// Bots started per second, whole run.
    pub ramp: f64,
    /// How long bots run out from town after starting (`BrainParams::spread_s`); the steady
    /// window starts this long after the last bot started.
    pub spread: Duration,
    /// How long every bot plays after the steady window started.
    pub duration: Duration,
    /// The behaviour.
    pub behavior: Behavior,
    /// Reducer calls per second per bot (one action per input tick).
    pub input_hz: f64,
    /// Simulated network.
    pub link: LinkSpec,
    /// Seed of every random choice (roles, brains, links).
    pub seed: u64,
    /// Prefix of character names (unique per run).
    pub run_tag: String,
    /// Driver period of each client (keep-alives, resends).
    pub client_tick: Duration,
    /// Calls a bot may have in flight; an input tick that finds them all busy is skipped.
    pub max_outstanding_calls: usize,
    /// Verify mirrors at the end.
    pub verify: bool,
    /// Wait after input stops before verifying.
    pub settle: Duration,
    /// Give up verifying a bot after this long.
    pub verify_timeout: Duration,
    /// Concurrent `/v1/sql` reads while verifying (this process).
    pub verify_concurrency: usize,
    /// Subscription radii.
    pub sight: SightRadii,
    /// Behaviour tunables.
    pub brain: BrainParams,
}

impl FleetConfig {
    /// When bot `index` starts, after the fleet's start.
    pub fn start_of(&self, index: usize) -> Duration {
        Duration::from_secs_f64(index as f64 / self.ramp.max(1e-3))
    }

    /// When the last bot has started.
    pub fn ramp_end(&self) -> Duration {
        self.start_of(self.bots.saturating_sub(1))
    }

    /// When every bot has started and spread: the steady window starts.
    pub fn steady_at(&self) -> Duration {
        self.ramp_end() + self.spread
    }

    /// When input stops.
    pub fn stop_at(&self) -> Duration {
        self.steady_at() + self.duration
    }

    /// The indices of the bots this process plays.
    pub fn my_bots(&self) -> impl Iterator<Item = usize> + use<> {
        (self.first..self.bots).step_by(self.stride.max(1))
    }
}

/// Where the fleet is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Starting bots.
    Ramping,
    /// Every bot started; bots still running out from town (`--spread`).
    Spreading,
    /// Every bot started and spread; playing: the steady window.
    Running,
    /// Input stopped; waiting for the world to settle.
    Settling,
    /// Comparing mirrors with the server.
    Verifying,
    /// Finished (bots disconnect).
    Done,
}

/// A bot's downstream and upstream traffic over the steady window (after the ramp, before
/// input stops), bytes per second.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct BotTraffic {
    /// The bot.
    pub bot: usize,
    /// Its role.
    pub role: Role,
    /// Bytes received per second.
    pub bytes_in_per_s: f64,
    /// Bytes sent per second.
    pub bytes_out_per_s: f64,
}

/// The verification results of a fleet.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct VerifyTotals {
    /// Bots verified.
    pub bots: u64,
    /// Bots whose mirror matched.
    pub converged: u64,
    /// Bots that could not verify (errors).
    pub errors: u64,
    /// Rows compared (last attempt of each bot).
    pub rows_compared: u64,
    /// Rows still divergent at the end.
    pub divergent_rows: u64,
    /// Divergent rows per table.
    pub divergent_by_table: BTreeMap<String, u64>,
    /// Time until each bot's mirror matched.
    pub converge_time: Histogram,
    /// The first divergences (at most 20).
    pub examples: Vec<Divergence>,
    /// The first errors (at most 10).
    pub error_examples: Vec<String>,
}

impl VerifyTotals {
    fn add(&mut self, r: &BotVerify) {
        self.bots += 1;
        if let Some(ms) = r.converged_after_ms {
            self.converged += 1;
            self.converge_time
                .record(Duration::from_secs_f64(ms / 1_000.0));
        }
        if let Some(e) = &r.error {
            self.errors += 1;
            if self.error_examples.len() < 10 {
                self.error_examples.push(e.clone());
            }
        }
        self.rows_compared += r.rows_compared;
        self.divergent_rows += r.divergent.len() as u64;
        for d in &r.divergent {
            *self.divergent_by_table.entry(d.table.clone()).or_default() += 1;
            if self.examples.len() < 20 {
                self.examples.push(d.clone());
            }
        }
    }

    /// Adds another fleet's results.
    pub fn merge(&mut self, o: &VerifyTotals) {
        self.bots += o.bots;
        self.converged += o.converged;
        self.errors += o.errors;
        self.rows_compared += o.rows_compared;
        self.divergent_rows += o.divergent_rows;
        for (t, n) in &o.divergent_by_table {
            *self.divergent_by_table.entry(t.clone()).or_default() += n;
        }
        self.converge_time.merge(&o.converge_time);
        for e in &o.examples {
            if self.examples.len() < 20 {
                self.examples.push(e.clone());
            }
        }
        for e in &o.error_examples {
            if self.error_examples.len() < 10 {
                self.error_examples.push(e.clone());
            }
        }
    }
}

/// Cumulative state of a fleet (all counters since its start).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FleetSnapshot {
    /// Where the fleet is (the least advanced, when merged).
    pub phase: Option<Phase>,
    /// Seconds since the fleet started.
    pub elapsed_s: f64,
    /// Bots started.
    pub started: u64,
    /// Bots connected now (in the world and subscribed).
    pub connected: u64,
    /// Bots that ever got connected.
    pub ever_connected: u64,
    /// Bots that gave up connecting.
    pub never_connected: u64,
    /// Failed connection attempts (each retry counts).
    pub connect_failures: u64,
    /// Bots disconnected while playing.
    pub disconnects: u64,
    /// Calls sent.
    pub calls: u64,
    /// Calls answered with a reducer error (refused by the game rules or the rate limit).
    pub reducer_errors: u64,
    /// Calls not answered (timeout, disconnect) or not made.
    pub call_errors: u64,
    /// Input ticks skipped because the bot had `max_outstanding_calls` in flight.
    pub inputs_skipped: u64,
    /// Bytes received by all bots.
    pub bytes_in: u64,
    /// Bytes sent by all bots.
    pub bytes_out: u64,
    /// Datagrams received.
    pub datagrams_in: u64,
    /// Datagrams sent.
    pub datagrams_out: u64,
    /// Datagrams the simulated link dropped (both ways).
    pub link_lost: u64,
    /// Mirror records skipped (deltas or deletes for rows the mirror lacked: a broken server).
    pub mirror_skipped: u64,
    /// Table updates the mirrors refused (undecodable).
    pub mirror_rejected: u64,
    /// Call round trips (reply or reducer error).
    pub rtt: Histogram,
    /// Input to the mover's own mirror.
    pub observe_own: Histogram,
    /// Input to the neighbours' mirrors.
    pub observe_neighbour: Histogram,
    /// Connect (identity, token, handshake, enter_world, subscriptions) per bot.
    pub connect_time: Histogram,
    /// Errors by kind (digits folded), with counts.
    pub errors: BTreeMap<String, u64>,
    /// This process's CPU seconds.
    pub cpu_seconds: f64,
    /// This process's resident bytes.
    pub resident_bytes: u64,
    /// Per-bot traffic over the steady window (once input stopped).
    pub traffic: Vec<BotTraffic>,
    /// Verification results (from the verifying phase on; final once done).
    pub verify: Option<VerifyTotals>,
}

impl FleetSnapshot {
    /// Adds another process's snapshot.
    pub fn merge(&mut self, o: &FleetSnapshot) {
        self.phase = match (self.phase, o.phase) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.elapsed_s = self.elapsed_s.max(o.elapsed_s);
        self.started += o.started;
        self.connected += o.connected;
        self.ever_connected += o.ever_connected;
        self.never_connected += o.never_connected;
        self.connect_failures += o.connect_failures;
        self.disconnects += o.disconnects;
        self.calls += o.calls;
        self.reducer_errors += o.reducer_errors;
        self.call_errors += o.call_errors;
        self.inputs_skipped += o.inputs_skipped;
        self.bytes_in += o.bytes_in;
        self.bytes_out += o.bytes_out;
        self.datagrams_in += o.datagrams_in;
        self.datagrams_out += o.datagrams_out;
        self.link_lost += o.link_lost;
        self.mirror_skipped += o.mirror_skipped;
        self.mirror_rejected += o.mirror_rejected;
        self.rtt.merge(&o.rtt);
        self.observe_own.merge(&o.observe_own);
        self.observe_neighbour.merge(&o.observe_neighbour);
        self.connect_time.merge(&o.connect_time);
        for (k, v) in &o.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
        self.cpu_seconds += o.cpu_seconds;
        self.resident_bytes += o.resident_bytes;
        self.traffic.extend(o.traffic.iter().copied());
        self.verify = match (self.verify.take(), &o.verify) {
            (Some(mut a), Some(b)) => {
                a.merge(b);
                Some(a)
            }
            (a, b) => a.or_else(|| b.clone()),
        };
    }
}

/// The latest velocities bots gave their avatars, for input-to-observed latency.
#[derive(Debug)]
pub struct InputBoard {
    shards: Vec<Mutex<HashMap<u64, Marks>>>,
}

/// The last few inputs of one avatar: `(sequence, velocity, micros since the board's epoch)`.
#[derive(Debug, Default)]
struct Marks {
    next: u32,
    ring: [(u32, [f32; 2], u64); 4],
}

const SHARDS: usize = 64;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Default for InputBoard {
    fn default() -> Self {
        InputBoard {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }
}

impl InputBoard {
    /// Notes that `avatar` was given `velocity` at `at_us`.
    pub fn mark(&self, avatar: u64, velocity: [f32; 2], at_us: u64) {
        let mut shard = lock(&self.shards[avatar as usize % SHARDS]);
        let marks = shard.entry(avatar).or_default();
        marks.next += 1;
        let slot = marks.next as usize % marks.ring.len();
        marks.ring[slot] = (marks.next, velocity, at_us);
    }

    /// The newest noted input of `avatar` with this velocity: `(sequence, at_us)`.
    pub fn find(&self, avatar: u64, velocity: [f32; 2]) -> Option<(u32, u64)> {
        let shard = lock(&self.shards[avatar as usize % SHARDS]);
        shard
            .get(&avatar)?
            .ring
            .iter()
            .filter(|(seq, v, _)| {
                *seq > 0 && (v[0] - velocity[0]).abs() < 1e-3 && (v[1] - velocity[1]).abs() < 1e-3
            })
            .max_by_key(|(seq, _, _)| *seq)
            .map(|(seq, _, at)| (*seq, *at))
    }
}

/// State shared by the bots of a fleet.
struct Shared {
    config: FleetConfig,
    epoch: Instant,
    phase: watch::Sender<Phase>,
    started: AtomicU64,
    connected: AtomicU64,
    ever_connected: AtomicU64,
    never_connected: AtomicU64,
    connect_failures: AtomicU64,
    disconnects: AtomicU64,
    calls: AtomicU64,
    reducer_errors: AtomicU64,
    call_errors: AtomicU64,
    inputs_skipped: AtomicU64,
    finished_verify: AtomicUsize,
    rtt: AtomicHistogram,
    observe_own: AtomicHistogram,
    observe_neighbour: AtomicHistogram,
    connect_time: AtomicHistogram,
    errors: Mutex<BTreeMap<String, u64>>,
    clients: Mutex<Vec<(usize, Role, Client)>>,
    steady_start: Mutex<HashMap<usize, (Instant, u64, u64)>>,
    traffic: Mutex<Vec<BotTraffic>>,
    verify: Mutex<VerifyTotals>,
    board: InputBoard,
    reads: Semaphore,
}

impl Shared {
    fn micros(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    fn error(&self, what: &str, message: &str) {
        // Fold digits so "attack not ready: 12 ms left" and "...: 30 ms left" count together.
        let mut folded = String::with_capacity(what.len() + message.len() + 2);
        folded.push_str(what);
        folded.push_str(": ");
        let mut in_number = false;
        for c in message.chars().take(160) {
            if c.is_ascii_digit() {
                if !in_number {
                    folded.push('N');
                }
                in_number = true;
            } else {
                in_number = false;
                folded.push(c);
            }
        }
        *lock(&self.errors).entry(folded).or_default() += 1;
    }

    fn phase(&self) -> Phase {
        *self.phase.borrow()
    }
}

/// A running fleet (see the module docs).
#[derive(Clone)]
pub struct Fleet {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("phase", &self.shared.phase())
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

/// The seed of bot `index`.
fn bot_seed(seed: u64, index: usize) -> u64 {
    let mut r = Rng::new(seed ^ (index as u64).wrapping_mul(0xA24B_AED4_963E_E407));
    r.next_u64()
}

impl Fleet {
    /// Starts the fleet's schedule (ramp, play, stop, settle, verify) on the current tokio
    /// runtime.
    pub fn start(config: FleetConfig) -> Fleet {
        let (phase, _) = watch::channel(Phase::Ramping);
        let reads = Semaphore::new(config.verify_concurrency.max(1));
        let shared = Arc::new(Shared {
            config,
            epoch: Instant::now(),
            phase,
            started: AtomicU64::new(0),
            connected: AtomicU64::new(0),
            ever_connected: AtomicU64::new(0),
            never_connected: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            disconnects: AtomicU64::new(0),
            calls: AtomicU64::new(0),
            reducer_errors: AtomicU64::new(0),
            call_errors: AtomicU64::new(0),
            inputs_skipped: AtomicU64::new(0),
            finished_verify: AtomicUsize::new(0),
            rtt: AtomicHistogram::new(),
            observe_own: AtomicHistogram::new(),
            observe_neighbour: AtomicHistogram::new(),
            connect_time: AtomicHistogram::new(),
            errors: Mutex::new(BTreeMap::new()),
            clients: Mutex::new(Vec::new()),
            steady_start: Mutex::new(HashMap::new()),
            traffic: Mutex::new(Vec::new()),
            verify: Mutex::new(VerifyTotals::default()),
            board: InputBoard::default(),
            reads,
        });
        tokio::spawn(schedule(shared.clone()));
        Fleet { shared }
    }

    /// Where the fleet is.
    pub fn phase(&self) -> Phase {
        self.shared.phase()
    }

    /// Waits until the fleet is done.
    pub async fn done(&self) {
        let mut rx = self.shared.phase.subscribe();
        let _ = rx.wait_for(|p| *p == Phase::Done).await;
    }

    /// The cumulative state so far.
    pub fn snapshot(&self) -> FleetSnapshot {
        let s = &self.shared;
        let mut snap = FleetSnapshot {
            phase: Some(s.phase()),
            elapsed_s: s.epoch.elapsed().as_secs_f64(),
            started: s.started.load(Relaxed),
            connected: s.connected.load(Relaxed),
            ever_connected: s.ever_connected.load(Relaxed),
            never_connected: s.never_connected.load(Relaxed),
            connect_failures: s.connect_failures.load(Relaxed),
            disconnects: s.disconnects.load(Relaxed),
            calls: s.calls.load(Relaxed),
            reducer_errors: s.reducer_errors.load(Relaxed),
            call_errors: s.call_errors.load(Relaxed),
            inputs_skipped: s.inputs_skipped.load(Relaxed),
            rtt: s.rtt.snapshot(),
            observe_own: s.observe_own.snapshot(),
            observe_neighbour: s.observe_neighbour.snapshot(),
            connect_time: s.connect_time.snapshot(),
            errors: lock(&s.errors).clone(),
            traffic: lock(&s.traffic).clone(),
            ..FleetSnapshot::default()
        };
        if let Some(u) = ProcessUsage::current() {
            snap.cpu_seconds = u.cpu_seconds;
            snap.resident_bytes = u.resident_bytes;
        }
        for (_, _, client) in lock(&s.clients).iter() {
            let st = client.stats();
            snap.bytes_in += st.bytes_in;
            snap.bytes_out += st.bytes_out;
            snap.datagrams_in += st.datagrams_in;
            snap.datagrams_out += st.datagrams_out;
            snap.mirror_skipped += st.mirror.skipped_records;
            snap.mirror_rejected += st.mirror.rejected_payloads;
            if let Some(l) = st.link {
                snap.link_lost += l.lost_in + l.lost_out;
            }
        }
        if s.phase() >= Phase::Verifying && s.config.verify {
            snap.verify = Some(lock(&s.verify).clone());
        }
        snap
    }
}

/// The fleet's timeline: start bots at the ramp rate, then move through the phases.
async fn schedule(shared: Arc<Shared>) {
    let config = shared.config.clone();
    let epoch = shared.epoch;
    let mut bots = tokio::task::JoinSet::new();
    for index in config.my_bots() {
        tokio::time::sleep_until((epoch + config.start_of(index)).into()).await;
        shared.started.fetch_add(1, Relaxed);
        bots.spawn(bot(shared.clone(), index));
    }
    tokio::time::sleep_until((epoch + config.ramp_end()).into()).await;
    if !config.spread.is_zero() {
        shared.phase.send_replace(Phase::Spreading);
        tokio::time::sleep_until((epoch + config.steady_at()).into()).await;
    }
    shared.phase.send_replace(Phase::Running);
    // The steady window starts now for connected bots (later ones start theirs on connect).
    {
        let now = Instant::now();
        let clients = lock(&shared.clients);
        let mut start = lock(&shared.steady_start);
        for (index, _, client) in clients.iter() {
            let st = client.stats();
            start.insert(*index, (now, st.bytes_in, st.bytes_out));
        }
    }
    tokio::time::sleep_until((epoch + config.stop_at()).into()).await;
    {
        let now = Instant::now();
        let clients = lock(&shared.clients);
        let start = lock(&shared.steady_start);
        let mut traffic = lock(&shared.traffic);
        for (index, role, client) in clients.iter() {
            let Some((t0, in0, out0)) = start.get(index) else {
                continue;
            };
            let secs = now.duration_since(*t0).as_secs_f64();
            if secs < 1.0 {
                continue;
            }
            let st = client.stats();
            traffic.push(BotTraffic {
                bot: *index,
                role: *role,
                bytes_in_per_s: (st.bytes_in - in0) as f64 / secs,
                bytes_out_per_s: (st.bytes_out - out0) as f64 / secs,
            });
        }
    }
    shared.phase.send_replace(Phase::Settling);
    tokio::time::sleep(config.settle).await;
    shared.phase.send_replace(Phase::Verifying);
    let mine = config.my_bots().count();
    let mut rx = shared.phase.subscribe();
    while shared.finished_verify.load(Relaxed) < mine && !bots.is_empty() {
        tokio::select! {
            _ = bots.join_next() => {}
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = rx.changed() => {}
        }
    }
    shared.phase.send_replace(Phase::Done);
    while bots.join_next().await.is_some() {}
}

/// Column positions the bots read from rows.
#[derive(Clone, Copy, Debug)]
struct Columns {
    avatar_id: usize,
    avatar_position: usize,
    avatar_velocity: usize,
    avatar_hp: usize,
    avatar_max_hp: usize,
    npc_id: usize,
    npc_position: usize,
    item_id: usize,
    item_position: usize,
}

impl Columns {
    fn of(client: &Client) -> Option<Columns> {
        let s = client.schema();
        let col = |t: &str, c: &str| Some(s.table(t)?.column(c)?.0);
        Some(Columns {
            avatar_id: col("avatar", "id")?,
            avatar_position: col("avatar", "position")?,
            avatar_velocity: col("avatar", "velocity")?,
            avatar_hp: col("avatar", "hp")?,
            avatar_max_hp: col("avatar", "max_hp")?,
            npc_id: col("npc", "id")?,
            npc_position: col("npc", "position")?,
            item_id: col("item", "id")?,
            item_position: col("item", "position")?,
        })
    }
}

fn vec2(v: Option<&Value>) -> Option<[f32; 2]> {
    match v? {
        Value::Vec2(p) => Some([p.x, p.y]),
        _ => None,
    }
}

fn unsigned(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::Unsigned(x) => Some(*x),
        _ => None,
    }
}

fn signed(v: Option<&Value>) -> Option<i64> {
    match v? {
        Value::Signed(x) => Some(*x),
        _ => None,
    }
}

/// What the bot's mirror shows (only what its role needs).
fn look(client: &Client, cols: &Columns, avatar: u64, role: Role) -> Option<Sight> {
    client.with_mirror(|m| {
        let me = m.find_row("avatar", &json!(avatar)).ok().flatten()?;
        let v = me.values();
        let mut sight = Sight {
            position: vec2(v.get(cols.avatar_position))?,
            hp: signed(v.get(cols.avatar_hp)).unwrap_or(0) as i32,
            max_hp: signed(v.get(cols.avatar_max_hp)).unwrap_or(0) as i32,
            ..Sight::default()
        };
        if role == Role::Fight {
            let things = |table: &str, id: usize, pos: usize| -> Vec<Thing> {
                m.iter(table)
                    .map(|rows| {
                        rows.filter_map(|r| {
                            Some(Thing {
                                id: unsigned(r.values().get(id))?,
                                position: vec2(r.values().get(pos))?,
                            })
                        })
                        .collect()
                    })
                    .unwrap_or_default()
            };
            sight.npcs = things("npc", cols.npc_id, cols.npc_position);
            sight.items = things("item", cols.item_id, cols.item_position);
            if let Ok(rows) = m.iter("inventory") {
                sight.potions = rows
                    .map(|r| r.to_json())
                    .filter(|j| j.get("kind").and_then(|k| k.as_str()) == Some("Potion"))
                    .filter_map(|j| j.get("id").and_then(serde_json::Value::as_u64))
                    .collect();
            }
        }
        Some(sight)
    })
}

/// Connects, enters the world and subscribes; returns the client and its avatar id.
async fn join(
    shared: &Shared,
    index: usize,
    attempt: usize,
    seed: u64,
) -> Result<(Client, u64), String> {
    let config = &shared.config;
    let options = ClientOptions {
        connect_timeout: Duration::from_secs(20),
        request_timeout: Duration::from_secs(15),
        tick: config.client_tick,
        event_capacity: 16,
        link: (!config.link.is_perfect()).then(|| config.link.conditions()),
        link_seed: seed,
        ..ClientOptions::default()
    };
    let client = Client::connect(&config.server, options)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    // A retry is a new identity: it needs a new name (the failed attempt may have entered
    // the world before its reply was lost).
    let name = match attempt {
        0 => format!("{}{index}", config.run_tag),
        n => format!("{}{index}r{n}", config.run_tag),
    };
    client
        .call("enter_world", json!([name]))
        .await
        .map_err(|e| format!("enter_world: {e}"))?;
    for sql in config.sight.subscriptions() {
        client
            .subscribe(&sql)
            .await
            .map_err(|e| format!("subscribe: {e}"))?;
    }
    // The player row (own rows only) names the avatar.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let avatar = client.with_mirror(|m| {
            m.iter("player").ok().and_then(|mut rows| {
                rows.next()
                    .and_then(|r| r.to_json().get("avatar_id")?.as_u64())
            })
        });
        if let Some(avatar) = avatar {
            return Ok((client, avatar));
        }
        if Instant::now() > deadline || !client.is_connected() {
            return Err("own player row never arrived".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One bot, start to end.
async fn bot(shared: Arc<Shared>, index: usize) {
    let config = shared.config.clone();
    let seed = bot_seed(config.seed, index);
    let mut rng = Rng::new(seed);
    let role = config.behavior.role(rng.unit());
    let started = Instant::now();
    let mut joined = None;
    for attempt in 0..3 {
        match join(&shared, index, attempt, seed).await {
            Ok(j) => {
                joined = Some(j);
                break;
            }
            Err(e) => {
                shared.connect_failures.fetch_add(1, Relaxed);
                shared.error("connect", &e);
                if shared.phase() >= Phase::Settling {
                    break;
                }
            }
        }
    }
    let Some((client, avatar)) = joined else {
        shared.never_connected.fetch_add(1, Relaxed);
        shared.finished_verify.fetch_add(1, Relaxed);
        return;
    };
    shared.connect_time.record(started.elapsed());
    let Some(cols) = Columns::of(&client) else {
        shared.error("schema", "the server's schema is not the sample MMO's");
        shared.finished_verify.fetch_add(1, Relaxed);
        return;
    };

    // Input-to-observed: every velocity change of an avatar someone noted on the board.
    {
        let observer = shared.clone();
        let mut last_seen: HashMap<u64, u32> = HashMap::new();
        let registered = client.on_update("avatar", move |old, new| {
            let (Some(a), Some(b)) = (
                vec2(old.values().get(cols.avatar_velocity)),
                vec2(new.values().get(cols.avatar_velocity)),
            ) else {
                return;
            };
            if a == b {
                return;
            }
            let Some(id) = unsigned(new.values().get(cols.avatar_id)) else {
                return;
            };
            if let Some((seq, at)) = observer.board.find(id, b)
                && last_seen.get(&id) != Some(&seq)
            {
                last_seen.insert(id, seq);
                let waited = Duration::from_micros(observer.micros().saturating_sub(at));
                if id == avatar {
                    observer.observe_own.record(waited);
                } else {
                    observer.observe_neighbour.record(waited);
                }
            }
        });
        if let Err(e) = registered {
            shared.error("callback", &e.to_string());
        }
    }

    shared.connected.fetch_add(1, Relaxed);
    shared.ever_connected.fetch_add(1, Relaxed);
    lock(&shared.clients).push((index, role, client.clone()));
    if shared.phase() >= Phase::Running {
        let st = client.stats();
        lock(&shared.steady_start).insert(index, (Instant::now(), st.bytes_in, st.bytes_out));
    }

    let brain_params = BrainParams {
        spread_s: config.spread.as_secs_f64(),
        ..config.brain
    };
    let mut brain = Brain::new(role, seed, brain_params);
    let calls = Arc::new(Semaphore::new(config.max_outstanding_calls.max(1)));
    let mut phase = shared.phase.subscribe();
    let period = Duration::from_secs_f64(1.0 / config.input_hz.max(0.01));
    let mut ticker = tokio::time::interval_at(
        tokio::time::Instant::now() + period.mul_f64(rng.unit()),
        period,
    );
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last_velocity: Option<[f32; 2]> = None;
    let mut alive = true;
    while *phase.borrow() < Phase::Settling {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = phase.changed() => continue,
        }
        if !client.is_connected() {
            alive = false;
            break;
        }
        let Some(sight) = look(&client, &cols, avatar, role) else {
            continue;
        };
        let action = brain.next(started.elapsed().as_secs_f64(), &sight);
        let Ok(permit) = calls.clone().try_acquire_owned() else {
            shared.inputs_skipped.fetch_add(1, Relaxed);
            continue;
        };
        if let Some(v) = action.expected_velocity()
            && last_velocity != Some(v)
        {
            shared.board.mark(avatar, v, shared.micros());
            last_velocity = Some(v);
        } else if action.expected_velocity().is_none() {
            last_velocity = None;
        }
        shared.calls.fetch_add(1, Relaxed);
        let (client, shared) = (client.clone(), shared.clone());
        tokio::spawn(async move {
            let sent = Instant::now();
            let result = client.call(action.reducer(), action.args()).await;
            finish_call(&shared, action.reducer(), sent, result);
            drop(permit);
        });
    }
    if !alive {
        shared.connected.fetch_sub(1, Relaxed);
        shared.disconnects.fetch_add(1, Relaxed);
        let reason = client
            .disconnect_reason()
            .map_or_else(|| "unknown".to_owned(), |r| r.to_string());
        shared.error("disconnected", &reason);
        shared.finished_verify.fetch_add(1, Relaxed);
        return;
    }

    // Stop: every bot stands still, so the world can settle. Calls still in flight go first
    // (their tasks hold the permits), so no late `move_to` overtakes the stop.
    let _drained = calls
        .acquire_many(config.max_outstanding_calls.max(1) as u32)
        .await;
    let sent = Instant::now();
    let stop = client.call("set_input", json!([[0.0, 0.0], false])).await;
    shared.calls.fetch_add(1, Relaxed);
    finish_call(&shared, "set_input", sent, stop);
    let _ = phase.wait_for(|p| *p >= Phase::Verifying).await;
    if config.verify {
        let checks = config.sight.checks();
        let result = verify::verify_bot(
            index,
            &client,
            avatar,
            &checks,
            config.verify_timeout,
            &shared.reads,
        )
        .await;
        lock(&shared.verify).add(&result);
    }
    shared.finished_verify.fetch_add(1, Relaxed);
    let _ = phase.wait_for(|p| *p == Phase::Done).await;
    client.disconnect();
    shared.connected.fetch_sub(1, Relaxed);
}

fn finish_call(
    shared: &Shared,
    reducer: &str,
    sent: Instant,
    result: Result<orrery_client::Reply, CallError>,
) {
    match result {
        Ok(_) => shared.rtt.record(sent.elapsed()),
        Err(e) => match e.reducer_error() {
            Some(message) => {
                shared.rtt.record(sent.elapsed());
                shared.reducer_errors.fetch_add(1, Relaxed);
                shared.error(reducer, message);
            }
            None => {
                shared.call_errors.fetch_add(1, Relaxed);
                shared.error(reducer, &e.to_string());
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> FleetConfig {
        FleetConfig {
            server: "http://127.0.0.1:1".into(),
            bots: 10,
            first: 1,
            stride: 3,
            ramp: 5.0,
            spread: Duration::from_secs(2),
            duration: Duration::from_secs(4),
            behavior: Behavior::Wander,
            input_hz: 20.0,
            link: LinkSpec::default(),
            seed: 1,
            run_tag: "t".into(),
            client_tick: Duration::from_millis(50),
            max_outstanding_calls: 4,
            verify: false,
            settle: Duration::from_secs(1),
            verify_timeout: Duration::from_secs(5),
            verify_concurrency: 4,
            sight: SightRadii::default(),
            brain: BrainParams::default(),
        }
    }

    #[test]
    fn schedule_and_sharding() {
        let c = config();
        assert_eq!(c.my_bots().collect::<Vec<_>>(), [1, 4, 7]);
        assert_eq!(c.start_of(5), Duration::from_secs(1));
        assert_eq!(c.ramp_end(), Duration::from_secs_f64(1.8));
        assert_eq!(c.steady_at(), Duration::from_secs_f64(3.8));
        assert_eq!(c.stop_at(), Duration::from_secs_f64(7.8));
        assert!(LinkSpec::default().is_perfect());
        assert!(
            !LinkSpec {
                loss: 0.05,
                ..LinkSpec::default()
            }
            .is_perfect()
        );
    }

    #[test]
    fn board_matches_recent_inputs_only() {
        let board = InputBoard::default();
        assert_eq!(board.find(3, [1.0, 0.0]), None);
        board.mark(3, [1.0, 0.0], 10);
        board.mark(3, [0.0, 1.0], 20);
        assert_eq!(board.find(3, [1.0, 0.0]), Some((1, 10)));
        assert_eq!(board.find(3, [0.0, 1.0005]), Some((2, 20)));
        for i in 0..4 {
            board.mark(3, [2.0, 0.0], 30 + i);
        }
        assert_eq!(board.find(3, [1.0, 0.0]), None, "fell out of the ring");
        assert_eq!(board.find(3, [2.0, 0.0]), Some((6, 33)));
        assert_eq!(board.find(4, [2.0, 0.0]), None);
    }

    #[test]
    fn snapshots_merge() {
        let mut a = FleetSnapshot {
            phase: Some(Phase::Running),
            connected: 2,
            errors: BTreeMap::from([("x".to_owned(), 1)]),
            ..FleetSnapshot::default()
        };
        a.rtt.record(Duration::from_millis(5));
        let mut b = FleetSnapshot {
            phase: Some(Phase::Ramping),
            connected: 3,
            errors: BTreeMap::from([("x".to_owned(), 2)]),
            verify: Some(VerifyTotals {
                bots: 3,
                ..VerifyTotals::default()
            }),
            ..FleetSnapshot::default()
        };
        b.rtt.record(Duration::from_millis(7));
        a.merge(&b);
        assert_eq!(a.phase, Some(Phase::Ramping));
        assert_eq!(a.connected, 5);
        assert_eq!(a.errors["x"], 3);
        assert_eq!(a.rtt.count(), 2);
        assert_eq!(a.verify.map(|v| v.bots), Some(3));
    }
}
