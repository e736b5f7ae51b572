//! [`Publisher`]: the subscription state machine's entry points — connect, subscribe, apply a
//! tick's changes, publish — and the values it hands back.

use std::collections::{BTreeMap, hash_map::Entry as MapEntry};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use glam::Vec3;
use orrery_engine::ChangeSet;
use orrery_row::{ConnectionId, Identity, ModuleSchema, Visibility};
use rustc_hash::{FxHashMap, FxHashSet};

use crate::apply::{ApplyWorkers, apply_changes};
use crate::client_state::{ClientState, SpatialSub, Sub, SubKind};
use crate::config::{PublishConfig, SubscribeError};
use crate::flush::{Flush, FlushScratch};
use crate::mirror::{EncodeScratch, MirrorTable, NO_INLINE_DELTA};
use crate::refresh::{RefreshScratch, refresh_spatial};
use crate::shared::{SharedKey, SharedQuery};
use crate::sql::{CmpOp, Condition, Operand, QueryError, SubscriptionQuery};
use crate::view::{Dirty, EntryUpdate, View, settle};

/// What a successful subscribe reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscribed {
    /// The table.
    pub table: u32,
    /// Rows matching right now (spatial queries: 0; they fill from the next publish).
    pub initial_rows: usize,
}

/// One table update payload for one client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    /// The client.
    pub client: ConnectionId,
    /// The table.
    pub table: u32,
    /// Records in the published-row wire format ([`orrery_row::wire`]).
    pub payload: Vec<u8>,
}

/// Counters for metrics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PublisherStats {
    /// Connected clients.
    pub clients: usize,
    /// Shared (non-spatial) query states alive.
    pub shared_queries: usize,
    /// Spatial subscriptions alive.
    pub spatial_queries: usize,
    /// Rows mirrored (including deleted rows still owed to some client).
    pub mirrored_rows: usize,
    /// Dirty entries waiting across all clients.
    pub dirty: usize,
    /// Records handed out since start: full upserts, deltas, deletes.
    pub sent: SentCounters,
}

/// Records and bytes handed out since start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SentCounters {
    /// Full-row upserts.
    pub upserts: u64,
    /// Column deltas.
    pub deltas: u64,
    /// Deletes (rows deleted or out of view).
    pub deletes: u64,
    /// Payload bytes.
    pub bytes: u64,
}

/// Units of parallel publish work per worker: each unit is a run of clients neighbouring in
/// the world (see [`locality`]), so a worker's rows in view stay in its own cache; several per
/// worker let a worker that finished early take over part of a crowded region (with four, one
/// worker was left working alone for up to a unit, ~1.3 ms at 4,000 clients on two workers).
const CHUNKS_PER_WORKER: usize = 16;

/// Upserts of one table one worker stores in a row during [`Publisher::apply`]: a tick with
/// up to twice this many is stored on the calling thread, where waking the workers would cost
/// more than it saves.
const APPLY_RUN: usize = 1024;

/// One publish worker's buffers and what its share of a publish produced besides payloads.
/// Aligned to two cache lines so that one worker's counters and buffer lengths, written for
/// every record, never share a line (and the adjacent-line prefetcher's pair) with another's.
#[derive(Default)]
#[repr(align(128))]
struct Worker {
    flush: FlushScratch,
    /// Rows' versions stored by this worker during `apply`.
    encode: EncodeScratch,
    refresh: RefreshScratch,
    /// Slots to free once every worker is done, by table id.
    release: Vec<Vec<u32>>,
    counters: SentCounters,
    /// Time spent publishing clients, since start.
    busy: Duration,
    /// Time spent refreshing spatial views, since start (when timed: see
    /// [`Publisher::set_refresh_timing`]).
    refreshing: Duration,
}

/// The publish workers: a rayon pool with one [`Worker`] per thread, or the calling thread
/// alone.
struct Workers {
    /// `None`: publish on the calling thread.
    pool: Option<rayon::ThreadPool>,
    /// Whether publishes use the pool (false after `set_workers(1)`, which keeps the pool).
    parallel: bool,
    /// By pool thread index; index 0 also serves the calling thread.
    state: Vec<Mutex<Worker>>,
}

impl Workers {
    fn new(requested: usize) -> Self {
        let mut workers = Workers {
            pool: None,
            parallel: false,
            state: vec![Mutex::new(Worker::default())],
        };
        workers.resize(requested);
        workers
    }

    fn resize(&mut self, requested: usize) {
        let count = if requested == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            requested
        };
        if count <= 1 {
            self.parallel = false;
            return;
        }
        if self
            .pool
            .as_ref()
            .is_some_and(|p| p.current_num_threads() == count)
        {
            self.parallel = true;
            return;
        }
        match rayon::ThreadPoolBuilder::new()
            .num_threads(count)
            .thread_name(|i| format!("orrery-publish-{i}"))
            .build()
        {
            Ok(pool) => {
                self.pool = Some(pool);
                self.parallel = true;
                while self.state.len() < count {
                    self.state.push(Mutex::new(Worker::default()));
                }
            }
            Err(error) => {
                tracing::warn!(%error, count, "no publish worker threads; publishing on the tick thread");
                self.parallel = false;
            }
        }
    }

    fn count(&self) -> usize {
        match &self.pool {
            Some(pool) if self.parallel => pool.current_num_threads(),
            _ => 1,
        }
    }
}

/// Views are refreshed incrementally while the change records of a table since the last
/// publish are under a quarter of its rows (a row that changed cell makes two): beyond that,
/// re-querying each region costs less than sorting and looking up the changes.
const INCREMENTAL_MAX_SHARE: usize = 4;

/// Side of the cells that order clients for locality (`within` radii are tens of metres).
const LOCALITY_CELL: f32 = 32.0;

/// A client's place in the Z-order (Morton) curve of its focus's cell in the plane; clients
/// without a focus come last.
fn locality(focus: Option<Vec3>) -> u64 {
    let Some(focus) = focus else {
        return u64::MAX;
    };
    // Offset into non-negative cell coordinates of 21 bits (±33,000 km at 32 m cells); `as`
    // saturates far beyond that, which only costs locality.
    let cell =
        |v: f32| ((v / LOCALITY_CELL).floor() as i64 + (1 << 20)).clamp(0, (1 << 21) - 1) as u64;
    let spread = |mut v: u64| {
        // Interleave: bit i of v goes to bit 2i.
        v = (v | v << 16) & 0x0000_ffff_0000_ffff;
        v = (v | v << 8) & 0x00ff_00ff_00ff_00ff;
        v = (v | v << 4) & 0x0f0f_0f0f_0f0f_0f0f;
        v = (v | v << 2) & 0x3333_3333_3333_3333;
        v = (v | v << 1) & 0x5555_5555_5555_5555;
        v
    };
    spread(cell(focus.x)) | spread(cell(focus.y)) << 1
}

fn lock(worker: &Mutex<Worker>) -> std::sync::MutexGuard<'_, Worker> {
    worker.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The subscription state machine: see the crate docs.
pub struct Publisher {
    config: PublishConfig,
    pub(crate) tables: Vec<Option<MirrorTable>>,
    pub(crate) shared: FxHashMap<SharedKey, SharedQuery>,
    pub(crate) clients: BTreeMap<ConnectionId, ClientState>,
    pub(crate) tick: u64,
    sent: SentCounters,
    encode: EncodeScratch,
    workers: Workers,
    /// Upserts of a table one worker stores in a row during `apply` (see `apply`).
    apply_run: usize,
    /// Time spatial refreshes apart from the rest of a client's publish.
    time_refresh: bool,
}

impl Publisher {
    /// A publisher for `schema` (private tables are never mirrored).
    pub fn new(schema: &ModuleSchema, config: PublishConfig) -> Self {
        let tables = schema
            .tables
            .iter()
            .map(|t| (t.visibility != Visibility::Private).then(|| MirrorTable::new(t)))
            .collect();
        Publisher {
            tables,
            shared: FxHashMap::default(),
            clients: BTreeMap::new(),
            tick: 0,
            sent: SentCounters::default(),
            encode: EncodeScratch::default(),
            workers: Workers::new(config.workers),
            apply_run: APPLY_RUN,
            time_refresh: false,
            config,
        }
    }

    /// Publishes on `count` worker threads from now on (0: one per core; 1: on the calling
    /// thread). Output does not depend on the count.
    pub fn set_workers(&mut self, count: usize) {
        self.workers.resize(count);
    }

    /// Refreshes spatial views incrementally when possible (see
    /// [`PublishConfig::incremental_refresh`]) or always in full, from the next publish on.
    /// Output does not depend on it.
    pub fn set_incremental_refresh(&mut self, incremental: bool) {
        self.config.incremental_refresh = incremental;
    }

    /// Times spatial refreshes apart (two clock reads a client; see
    /// [`Publisher::refresh_busy`]), for benchmarks.
    #[doc(hidden)]
    pub fn set_refresh_timing(&mut self, timed: bool) {
        self.time_refresh = timed;
    }

    /// Stores rows' new versions on the workers in runs of `run` upserts (at least 1), for
    /// tests that exercise the split on small ticks. Output does not depend on it.
    #[doc(hidden)]
    pub fn set_apply_run(&mut self, run: usize) {
        self.apply_run = run.max(1);
    }

    /// Time spent refreshing spatial views while timed, by worker, since start.
    #[doc(hidden)]
    pub fn refresh_busy(&self) -> Vec<Duration> {
        self.workers
            .state
            .iter()
            .map(|w| lock(w).refreshing)
            .collect()
    }

    /// Worker threads publishes use (1: the calling thread).
    pub fn workers(&self) -> usize {
        self.workers.count()
    }

    /// Time each worker has spent publishing clients since start, by worker (index 0 also
    /// counts publishes on the calling thread).
    pub fn worker_busy(&self) -> Vec<Duration> {
        self.workers.state.iter().map(|w| lock(w).busy).collect()
    }

    /// Spatial subscription refreshes since start: `(full, incremental)` (see
    /// [`PublishConfig::incremental_refresh`]).
    pub fn refreshes(&self) -> (u64, u64) {
        self.workers
            .state
            .iter()
            .fold((0, 0), |(full, incremental), w| {
                let w = lock(w);
                (full + w.refresh.full, incremental + w.refresh.incremental)
            })
    }

    /// Counters.
    pub fn stats(&self) -> PublisherStats {
        PublisherStats {
            clients: self.clients.len(),
            shared_queries: self.shared.len(),
            spatial_queries: self
                .clients
                .values()
                .map(|c| {
                    c.subs
                        .iter()
                        .filter(|s| matches!(s.kind, SubKind::Spatial(_)))
                        .count()
                })
                .sum(),
            mirrored_rows: self
                .tables
                .iter()
                .flatten()
                .map(|t| t.data.len() - t.free.len())
                .sum(),
            dirty: self
                .clients
                .values()
                .flat_map(|c| c.views.iter())
                .flat_map(|v| v.entries.iter())
                .filter(|(_, e)| e.dirty != Dirty::Clean)
                .count(),
            sent: self.sent,
        }
    }

    /// Loads existing rows of a table (encoded primary key and exact row), e.g. at start-up.
    pub fn load_rows<'a>(
        &mut self,
        table: u32,
        rows: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
    ) {
        let Some(Some(t)) = self.tables.get_mut(table as usize) else {
            return;
        };
        for (pk, row) in rows {
            t.upsert(pk, row, false, None, self.tick, &mut self.encode);
        }
    }

    /// Folds a tick's changes into the mirror and re-evaluates the changed rows against the
    /// shared queries. Call once per tick, before [`Publisher::publish`].
    pub fn apply(&mut self, changes: &ChangeSet) {
        // Events of a tick applied but never published end here.
        self.retire_events();
        self.tick = self.tick.max(1) + 1;
        let tick = self.tick;
        let state = &self.workers.state;
        let with_scratch = |f: &mut dyn FnMut(&mut EncodeScratch)| {
            let index = rayon::current_thread_index().unwrap_or(0);
            f(&mut lock(&state[index.min(state.len() - 1)]).encode);
        };
        let workers = match &self.workers.pool {
            Some(pool) if self.workers.parallel => Some(ApplyWorkers {
                pool,
                with_scratch: &with_scratch,
                run: self.apply_run,
            }),
            _ => None,
        };
        for table_changes in &changes.tables {
            let Some(Some(t)) = self.tables.get_mut(table_changes.table().0 as usize) else {
                continue;
            };
            apply_changes(
                t,
                table_changes.iter(),
                tick,
                &mut self.encode,
                workers.as_ref(),
            );
        }
        for table in 0..self.tables.len() as u32 {
            self.evaluate_shared(table);
        }
    }

    /// A one-off read (`POST /v1/sql`): the exact rows `sql` selects for `sender`, under the
    /// same visibility rules as subscriptions (private tables refused, owner tables filtered to
    /// the sender). A `within(..)` needs `focus`. Rows come in a deterministic order (by encoded
    /// primary key).
    pub fn read(
        &mut self,
        schema: &ModuleSchema,
        sql: &str,
        sender: Identity,
        focus: Option<Vec3>,
    ) -> Result<(u32, Vec<Vec<u8>>), QueryError> {
        let query = SubscriptionQuery::parse(schema, sql, &self.config.query_limits)?;
        let Some(Some(t)) = self.tables.get_mut(query.table as usize) else {
            return Err(QueryError::PrivateTable(query.canonical));
        };
        let within = match (query.within, focus) {
            (Some(w), Some(f)) => Some((w, f)),
            (Some(_), None) => {
                return Err(QueryError::Unsupported(
                    "within(.., :focus, ..) in a one-off read needs a focus".into(),
                ));
            }
            (None, _) => None,
        };
        let owner = t.owner_column.map(|column| Condition::Compare {
            column,
            op: CmpOp::Eq,
            rhs: Operand::Sender,
        });
        let mut rows: Vec<(Box<[u8]>, Vec<u8>)> = Vec::new();
        for slot in 0..t.data.len() as u32 {
            if !t.meta[slot as usize].live {
                continue;
            }
            if let Some((w, focus)) = within {
                let Some((_, grid)) = t.grids.iter().find(|(c, _)| *c == w.column) else {
                    continue;
                };
                if !grid.distance(slot, focus).is_some_and(|d| d <= w.radius) {
                    continue;
                }
            }
            let values = MirrorTable::values(&t.data, &t.schema, slot);
            let visible = owner.as_ref().is_none_or(|c| c.matches(values, sender))
                && query
                    .condition
                    .as_ref()
                    .is_none_or(|c| c.matches(values, sender));
            if visible {
                let d = &t.data[slot as usize];
                rows.push((d.pk.clone(), d.exact.clone()));
            }
        }
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        Ok((query.table, rows.into_iter().map(|(_, row)| row).collect()))
    }

    /// Registers a connected client.
    pub fn connect(&mut self, client: ConnectionId, identity: Identity) {
        let tables = self.tables.len();
        self.clients.entry(client).or_insert_with(|| ClientState {
            identity,
            focus: None,
            budget: 0.0,
            bound: false,
            focus_row: None,
            accrued_since_flush: 0.0,
            subs: Vec::new(),
            views: (0..tables).map(|_| View::default()).collect(),
            dirty: Vec::new(),
            refreshed_focus: None,
            stale: true,
        });
    }

    /// Forgets a client and everything it subscribed to.
    pub fn disconnect(&mut self, client: ConnectionId) {
        let Some(mut state) = self.clients.remove(&client) else {
            return;
        };
        for sub in state.subs.drain(..) {
            if let SubKind::Shared(key) = sub.kind {
                self.release_shared(&key, client, sub.bit);
            }
        }
        for (table, view) in state.views.into_iter().enumerate() {
            if let Some(Some(t)) = self.tables.get_mut(table) {
                for (slot, _) in view.entries {
                    t.meta[slot as usize].drop_view();
                    t.free_if_unused(slot);
                }
            }
        }
    }

    /// Charges `bytes` the server sent `client` besides its table updates (reducer replies,
    /// subscription answers) to its budget, so the budget bounds the whole downstream. The debt
    /// is bounded: a client owes at most one second of budget.
    pub fn charge(&mut self, client: ConnectionId, bytes: u32) {
        let floor = -f64::from(self.config.budget_bytes_per_second);
        if let Some(c) = self.clients.get_mut(&client) {
            c.budget = (c.budget - f64::from(bytes)).max(floor);
        }
    }

    /// Sets a client's focus point (for `within(col, :focus, r)`); 2D positions use `z = 0`.
    pub fn set_focus(&mut self, client: ConnectionId, focus: Vec3) {
        if let Some(c) = self.clients.get_mut(&client)
            && focus.is_finite()
        {
            c.focus = Some(focus);
        }
    }

    /// Subscribes `client` to `sql` under `query_id`. Visibility is enforced here: private
    /// tables are refused and queries on `owner = col` tables only ever see the client's rows.
    pub fn subscribe(
        &mut self,
        schema: &ModuleSchema,
        client: ConnectionId,
        query_id: u32,
        sql: &str,
    ) -> Result<Subscribed, SubscribeError> {
        let query = SubscriptionQuery::parse(schema, sql, &self.config.query_limits)?;
        let max_queries = self.config.max_queries_per_client;
        let tick = self.tick;
        let Some(state) = self.clients.get_mut(&client) else {
            return Err(SubscribeError::UnknownClient(client));
        };
        if state.subs.iter().any(|s| s.query_id == query_id) {
            return Err(SubscribeError::DuplicateQueryId(query_id));
        }
        // Entries of any table may change below (and a new `within` starts empty): the next
        // spatial refresh re-queries every region.
        state.stale = true;
        if state.subs.len() >= max_queries {
            return Err(SubscribeError::TooManyQueries(max_queries));
        }
        let total = state.subs.iter().map(|s| s.predicates).sum::<usize>() + query.predicates;
        if total > self.config.max_predicates_per_client {
            return Err(SubscribeError::TooManyPredicates {
                total,
                max: self.config.max_predicates_per_client,
            });
        }
        let table = query.table;
        let Some(Some(t)) = self.tables.get_mut(table as usize) else {
            return Err(SubscribeError::Query(QueryError::PrivateTable(
                query.canonical,
            )));
        };
        // Owner tables: whatever the query says, only the subscriber's rows.
        let mut condition = query.condition.clone();
        let mut uses_sender = query.uses_sender;
        if let Some(owner) = t.owner_column {
            let owner_filter = Condition::Compare {
                column: owner,
                op: CmpOp::Eq,
                rhs: Operand::Sender,
            };
            condition = Some(match condition {
                Some(c) => Condition::And(Box::new(owner_filter), Box::new(c)),
                None => owner_filter,
            });
            uses_sender = true;
        }
        let used_bits = state
            .subs
            .iter()
            .filter(|s| s.table == table)
            .fold(0u32, |acc, s| acc | (1 << s.bit));
        let bit = (0..32).find(|b| used_bits & (1 << b) == 0).unwrap_or(31);
        let identity = state.identity;

        if let Some(within) = query.within {
            state.subs.push(Sub {
                query_id,
                table,
                bit,
                predicates: query.predicates,
                kind: SubKind::Spatial(SpatialSub { within, condition }),
            });
            return Ok(Subscribed {
                table,
                initial_rows: 0,
            });
        }

        let key: SharedKey = (query.canonical.clone(), uses_sender.then_some(identity));
        let shared = match self.shared.entry(key.clone()) {
            MapEntry::Occupied(o) => o.into_mut(),
            MapEntry::Vacant(v) => {
                // A new shared query starts from a scan of the mirror.
                let mut members = FxHashSet::default();
                for slot in 0..t.data.len() as u32 {
                    if t.meta[slot as usize].live
                        && condition.as_ref().is_none_or(|c| {
                            c.matches(MirrorTable::values(&t.data, &t.schema, slot), identity)
                        })
                    {
                        members.insert(slot);
                    }
                }
                t.shared.push(key.clone());
                v.insert(SharedQuery {
                    table,
                    condition,
                    sender: identity,
                    members,
                    subscribers: Vec::new(),
                })
            }
        };
        shared.subscribers.push((client, bit));
        let mut members: Vec<u32> = shared.members.iter().copied().collect();
        members.sort_unstable();
        state.subs.push(Sub {
            query_id,
            table,
            bit,
            predicates: query.predicates,
            kind: SubKind::Shared(key),
        });
        let event = t.schema.event;
        let view = &mut state.views[table as usize];
        let mut merged = Vec::with_capacity(view.len() + members.len());
        let mut old = std::mem::take(&mut view.entries).into_iter().peekable();
        for &slot in &members {
            while let Some(entry) = old.next_if(|(s, _)| *s < slot) {
                merged.push(entry);
            }
            let meta = &t.meta[slot as usize];
            match old.next_if(|(s, _)| *s == slot) {
                Some((_, mut e)) => {
                    e.mask |= 1 << bit;
                    if settle(&mut e, meta, event, tick) {
                        state.dirty.push((table, slot));
                    }
                    merged.push((slot, e));
                }
                None => {
                    let mut update = EntryUpdate {
                        table,
                        event,
                        tick,
                        dirty: &mut state.dirty,
                    };
                    merged.push(update.enter(meta, slot, bit, 0.0));
                }
            }
        }
        merged.extend(old);
        view.entries = merged;
        Ok(Subscribed {
            table,
            initial_rows: members.len(),
        })
    }

    /// Ends a subscription; rows no other subscription of the client covers are deleted on
    /// its side.
    pub fn unsubscribe(
        &mut self,
        client: ConnectionId,
        query_id: u32,
    ) -> Result<(), SubscribeError> {
        let tick = self.tick;
        let Some(state) = self.clients.get_mut(&client) else {
            return Err(SubscribeError::UnknownClient(client));
        };
        let Some(index) = state.subs.iter().position(|s| s.query_id == query_id) else {
            return Err(SubscribeError::UnknownQueryId(query_id));
        };
        // Every entry of the subscription is settled below, and no other subscription's
        // entries change: the next refresh may stay incremental.
        let sub = state.subs.remove(index);
        if let Some(Some(t)) = self.tables.get_mut(sub.table as usize) {
            let view = &mut state.views[sub.table as usize];
            let event = t.schema.event;
            let (table, bit) = (sub.table, sub.bit);
            let MirrorTable { meta, release, .. } = t;
            let mut update = EntryUpdate {
                table,
                event,
                tick,
                dirty: &mut state.dirty,
            };
            view.entries.retain_mut(|(slot, e)| {
                if e.mask & (1 << bit) == 0 {
                    return true;
                }
                e.mask &= !(1 << bit);
                update.keep(e, &meta[*slot as usize], *slot, release)
            });
            t.release_pending();
        }
        if let SubKind::Shared(key) = sub.kind {
            self.release_shared(&key, client, sub.bit);
        }
        Ok(())
    }

    /// Refreshes spatial views and spends each client's budget, returning table update payloads
    /// in client order. `elapsed` is the time since the previous publish (budget accrual).
    ///
    /// Clients are published in parallel on the workers (see [`Publisher::set_workers`]); they
    /// share the mirror read-only (each row's wire form and deltas are encoded once), and what
    /// they change in it (view counts, slots to free) is order-independent or applied in a
    /// fixed order afterwards, so the output is the same for any worker count.
    pub fn publish(&mut self, elapsed: Duration, out: &mut Vec<Outgoing>) {
        let tick = self.tick;
        let rate = f64::from(self.config.budget_bytes_per_second);
        let accrued = rate * elapsed.as_secs_f64();
        let cap = (rate * self.config.max_banked.as_secs_f64()).max(accrued);
        let margin = self.config.hysteresis;
        let max_message = self.config.max_message_bytes.max(64);
        let wire_overhead = f64::from(self.config.wire_overhead_bytes);
        let news_urgency = match self.config.news_urgency {
            u if u.is_finite() => u.clamp(1.0, 1.0e6),
            _ => 1.0,
        };
        if self.config.incremental_refresh {
            for t in self.tables.iter_mut().flatten() {
                let live = t.data.len() - t.free.len();
                for moves in &mut t.moves {
                    moves.build(live / INCREMENTAL_MAX_SHARE);
                }
            }
        }
        let tables: &[Option<MirrorTable>] = &self.tables;
        let time_refresh = self.time_refresh;
        let publish_clients = |worker: &mut Worker,
                               clients: &mut [(ConnectionId, &mut ClientState)],
                               out: &mut Vec<Outgoing>| {
            let start = Instant::now();
            let Worker {
                flush: flush_scratch,
                refresh,
                release,
                counters,
                busy,
                refreshing,
                ..
            } = worker;
            release.resize_with(tables.len(), Vec::new);
            let mut flush = Flush {
                tables,
                tick,
                max_message,
                wire_overhead,
                news_urgency,
                rebase: self.config.rebase,
                bound_flush: f64::from(self.config.bound_flush_bytes).min(cap),
                counters,
                scratch: flush_scratch,
                release,
                out,
            };
            for (client_id, client) in clients.iter_mut() {
                if time_refresh {
                    let start = Instant::now();
                    refresh_spatial(client, tables, margin, tick, refresh, flush.release);
                    *refreshing += start.elapsed();
                } else {
                    refresh_spatial(client, tables, margin, tick, refresh, flush.release);
                }
                client.budget = (client.budget + accrued).min(cap);
                client.accrued_since_flush += accrued;
                flush.client(*client_id, client);
            }
            *busy += start.elapsed();
        };
        // Clients are worked through in the Z-order of their focus cell: neighbours share most
        // rows in view and grid cells, so a worker finds them in its cache. Payloads are put
        // back in client order afterwards.
        let mut clients: Vec<(ConnectionId, &mut ClientState)> =
            self.clients.iter_mut().map(|(id, c)| (*id, c)).collect();
        clients.sort_by_cached_key(|(id, c)| (locality(c.focus), *id));
        let first_output = out.len();
        match &self.workers.pool {
            Some(pool) if self.workers.parallel => {
                let state = &self.workers.state;
                let clients_per_chunk = clients
                    .len()
                    .div_ceil(pool.current_num_threads() * CHUNKS_PER_WORKER)
                    .max(1);
                let outputs: Vec<Vec<Outgoing>> = pool.install(|| {
                    use rayon::prelude::*;
                    clients
                        .par_chunks_mut(clients_per_chunk)
                        .map(|chunk| {
                            let index = rayon::current_thread_index().unwrap_or(0);
                            let mut worker = lock(&state[index.min(state.len() - 1)]);
                            let mut chunk_out = Vec::new();
                            publish_clients(&mut worker, chunk, &mut chunk_out);
                            chunk_out
                        })
                        .collect()
                });
                out.extend(outputs.into_iter().flatten());
            }
            _ => publish_clients(&mut lock(&self.workers.state[0]), &mut clients, out),
        }
        drop(clients);
        // Stable: a client's payloads keep their order.
        out[first_output..].sort_by_key(|o| o.client);
        // Join what the workers changed, in a fixed order: slots freed in slot order make the
        // next rows' slots (and so every later output) independent of the worker count.
        for worker in &self.workers.state {
            let mut worker = lock(worker);
            let counters = std::mem::take(&mut worker.counters);
            self.sent.upserts += counters.upserts;
            self.sent.deltas += counters.deltas;
            self.sent.deletes += counters.deletes;
            self.sent.bytes += counters.bytes;
            for (table, released) in worker.release.iter_mut().enumerate() {
                if let Some(Some(t)) = self.tables.get_mut(table) {
                    t.release.append(released);
                }
            }
        }
        for t in self.tables.iter_mut().flatten() {
            for moves in &mut t.moves {
                moves.clear();
            }
            t.release.sort_unstable();
            t.release.dedup();
            t.release_pending();
        }
        self.retire_events();
    }

    /// The floor under a publish's per-client work, for benchmarks: appends to `buffers[i]`
    /// (one per client, in client order) the already-encoded record of every row in client
    /// `i`'s views that changed in the last applied tick (its stored delta from the version
    /// before, else its full wire form), on the calling thread, with no spatial refresh, ranking,
    /// budget or view bookkeeping. Returns the bytes appended.
    #[doc(hidden)]
    pub fn publish_floor(&self, buffers: &mut Vec<Vec<u8>>) -> usize {
        buffers.resize_with(self.clients.len(), Vec::new);
        let mut total = 0;
        for (client, buffer) in self.clients.values().zip(buffers.iter_mut()) {
            buffer.clear();
            for (table, view) in client.views.iter().enumerate() {
                let Some(Some(t)) = self.tables.get(table) else {
                    continue;
                };
                for &(slot, _) in &view.entries {
                    if t.meta[slot as usize].version != self.tick {
                        continue;
                    }
                    let inline = &t.inline[slot as usize];
                    if inline.len == NO_INLINE_DELTA {
                        buffer.extend_from_slice(&t.data[slot as usize].wire);
                    } else {
                        buffer.extend_from_slice(&inline.bytes[..inline.len as usize]);
                    }
                }
            }
            total += buffer.len();
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::{LOCALITY_CELL, locality};
    use glam::Vec3;

    #[test]
    fn locality_follows_the_z_order_of_focus_cells() {
        let at =
            |x: f32, y: f32| locality(Some(Vec3::new(x * LOCALITY_CELL, y * LOCALITY_CELL, 9.0)));
        // The four cells of a 2 x 2 block, in Z order, then the next block.
        let order = [
            at(0.0, 0.0),
            at(1.0, 0.0),
            at(0.0, 1.0),
            at(1.0, 1.0),
            at(2.0, 0.0),
        ];
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
        assert_eq!(at(0.2, 0.7), at(0.0, 0.0));
        assert!(at(-1.0, -1.0) < at(0.0, 0.0));
        assert_eq!(locality(None), u64::MAX);
        assert!(at(1.0e9, -1.0e9) < u64::MAX);
    }
}
