//! Subscriptions: clients subscribe with SQL, and every tick each client is sent the changes of
//! the rows its queries select, as prioritised, bandwidth-budgeted deltas.
//!
//! [`Publisher`] is a state machine fed by the engine's change sets; it never touches the ECS
//! world, so it can run on the tick thread (the publish phase) or on a thread of its own. It
//! keeps a mirror of every table clients may read (rows keyed by primary key, encoded once per
//! change in wire form and as a delta against the previous version), the shared state of
//! non-spatial queries (reference-counted by query text and parameters), and per client: its
//! identity, focus point, subscriptions, the rows it can see (with hysteresis for spatial
//! queries), a dirty set and a byte budget.
//!
//! Each tick: [`Publisher::apply`] folds the tick's changes into the mirror and evaluates the
//! changed rows against the shared queries; [`Publisher::publish`] refreshes each client's
//! spatial views around its focus, then spends the client's budget on its dirty rows, most
//! urgent first (stale and close to the focus). A row changed many times while waiting is sent
//! once, in its newest state; a dirty entry is cleared only when its record is handed out.

mod eval;
pub mod sql;
pub mod wire;

use std::collections::{BTreeMap, hash_map::Entry as MapEntry};
use std::ops::Range;
use std::time::Duration;

use glam::Vec3;
use orrery_spatial::SpatialGrid;
use rustc_hash::{FxHashMap, FxHashSet};

use crate::changes::{ChangeKind, ChangeSet};
use crate::codec::TypeDesc;
use crate::identity::{ConnectionId, Identity};
use crate::schema::{ModuleSchema, TableSchema, Visibility};
use crate::value::Value;
pub use sql::{QueryError, SubscriptionQuery};

use sql::{CmpOp, Condition, Operand, Within};
use wire::WireLayout;

/// A connected client, by connection.
pub type ClientId = ConnectionId;

/// Publisher settings.
#[derive(Clone, Debug)]
pub struct PublishConfig {
    /// Bytes each client may be sent per second, spent tick by tick.
    pub budget_bytes_per_second: u32,
    /// Most budget a client can bank while it has nothing to send.
    pub max_banked: Duration,
    /// Hysteresis margin for `within(..)`: a row enters a view within `radius` and leaves it
    /// beyond `radius + margin`.
    pub hysteresis: f32,
    /// Largest table update payload; larger outputs are split.
    pub max_message_bytes: usize,
    /// Most queries one client may hold.
    pub max_queries_per_client: usize,
}

impl Default for PublishConfig {
    fn default() -> Self {
        PublishConfig {
            budget_bytes_per_second: 8 * 1024,
            max_banked: Duration::from_millis(250),
            hysteresis: 5.0,
            max_message_bytes: 1024,
            max_queries_per_client: 32,
        }
    }
}

/// Why a subscribe or unsubscribe was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    /// The query is not valid.
    #[error(transparent)]
    Query(#[from] QueryError),
    /// The client is not connected.
    #[error("{0} is not connected")]
    UnknownClient(ClientId),
    /// The query id is already in use by this client.
    #[error("query id {0} is already subscribed")]
    DuplicateQueryId(u32),
    /// No subscription with this id.
    #[error("no subscription with query id {0}")]
    UnknownQueryId(u32),
    /// Too many subscriptions.
    #[error("at most {0} subscriptions per client")]
    TooManyQueries(usize),
}

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
    pub client: ClientId,
    /// The table.
    pub table: u32,
    /// Records in the published-row wire format ([`wire`]).
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

/// How many earlier versions of a row are kept to encode deltas from. A client more than this
/// many changes behind gets the full row.
const HISTORY: usize = 7;

/// An earlier version of a row, in wire form.
struct Version {
    version: u64,
    wire: Vec<u8>,
    bounds: Vec<Range<u32>>,
}

/// A mirrored row.
struct Slot {
    pk: Box<[u8]>,
    exact: Vec<u8>,
    wire: Vec<u8>,
    bounds: Vec<Range<u32>>,
    /// Tick sequence of the newest change.
    version: u64,
    /// Earlier versions, newest first.
    history: std::collections::VecDeque<Version>,
    /// Delta records from an earlier version to the current one, encoded when first needed and
    /// shared by every client holding that version. Empty bytes: nothing visible changed.
    deltas: Vec<(u64, Vec<u8>)>,
    live: bool,
    /// Client view entries that reference this slot.
    views: u32,
    values: Option<Vec<Value>>,
}

struct MirrorTable {
    schema: TableSchema,
    layout: WireLayout,
    by_pk: FxHashMap<Box<[u8]>, u32>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// One grid per `Vec2`/`Vec3` column, positions of live rows.
    grids: Vec<(usize, SpatialGrid<Vec3, u32>)>,
    changed: Vec<u32>,
    shared: Vec<SharedKey>,
    owner_column: Option<usize>,
}

type SharedKey = (String, Option<Identity>);

struct SharedQuery {
    table: u32,
    condition: Option<Condition>,
    sender: Identity,
    members: FxHashSet<u32>,
    /// (client, bit of the client's view of this table).
    subscribers: Vec<(ClientId, u32)>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Dirty {
    Clean,
    Upsert,
    Delete,
}

struct ViewEntry {
    /// Bits of this client's subscriptions on the table that include the row.
    mask: u32,
    /// Version the client holds (0 = none).
    sent: u64,
    dirty: Dirty,
    /// Tick the entry became dirty.
    since: u64,
    /// Distance to the focus at the last spatial refresh (0 for non-spatial rows).
    distance: f32,
    /// Spatial refresh epoch that last found the row in range.
    seen: u32,
}

struct SpatialSub {
    table: u32,
    bit: u32,
    within: Within,
    condition: Option<Condition>,
}

enum SubKind {
    Shared(SharedKey),
    Spatial(SpatialSub),
}

struct Sub {
    query_id: u32,
    table: u32,
    bit: u32,
    kind: SubKind,
}

struct Client {
    identity: Identity,
    focus: Option<Vec3>,
    budget: f64,
    subs: Vec<Sub>,
    views: FxHashMap<u32, FxHashMap<u32, ViewEntry>>,
    /// (table, slot) of entries that became dirty and may still be.
    dirty: Vec<(u32, u32)>,
    epoch: u32,
}

/// The subscription state machine. See the module docs.
pub struct Publisher {
    config: PublishConfig,
    tables: Vec<Option<MirrorTable>>,
    shared: FxHashMap<SharedKey, SharedQuery>,
    clients: BTreeMap<ClientId, Client>,
    tick: u64,
    sent: SentCounters,
    scratch_wire: Vec<u8>,
    scratch_bounds: Vec<Range<u32>>,
    scratch_slots: Vec<(u32, Vec3)>,
}

fn position_of(value: &Value) -> Option<Vec3> {
    match value {
        Value::Vec2(v) => Some(v.extend(0.0)),
        Value::Vec3(v) => Some(*v),
        _ => None,
    }
}

fn decode_values(schema: &TableSchema, exact: &[u8]) -> Vec<Value> {
    crate::value::decode_row(schema, exact).unwrap_or_default()
}

impl MirrorTable {
    fn new(schema: &TableSchema) -> Self {
        let grids = schema
            .columns
            .iter()
            .enumerate()
            .filter(|(_, c)| matches!(c.ty, TypeDesc::Vec2 | TypeDesc::Vec3))
            .map(|(i, _)| {
                let cell = schema
                    .indexes
                    .iter()
                    .find_map(|ix| match ix.kind {
                        crate::schema::IndexKind::Spatial { cell }
                            if ix.column == schema.columns[i].name =>
                        {
                            Some(cell)
                        }
                        _ => None,
                    })
                    .unwrap_or(32.0);
                let grid = SpatialGrid::new(cell)
                    .or_else(|_| SpatialGrid::new(32.0))
                    .unwrap_or_else(|e| panic!("a 32.0 grid is valid: {e}"));
                (i, grid)
            })
            .collect();
        let owner_column = match &schema.visibility {
            Visibility::Owner { column } => schema.column(column).map(|(i, _)| i),
            _ => None,
        };
        MirrorTable {
            layout: WireLayout::new(schema),
            schema: schema.clone(),
            by_pk: FxHashMap::default(),
            slots: Vec::new(),
            free: Vec::new(),
            grids,
            changed: Vec::new(),
            shared: Vec::new(),
            owner_column,
        }
    }

    fn values(&mut self, slot: u32) -> &[Value] {
        let s = &mut self.slots[slot as usize];
        if s.values.is_none() {
            s.values = Some(decode_values(&self.schema, &s.exact));
        }
        s.values.as_deref().unwrap_or(&[])
    }

    fn positions(&self, exact: &[u8]) -> Vec<(usize, Vec3)> {
        if self.grids.is_empty() {
            return Vec::new();
        }
        let values = decode_values(&self.schema, exact);
        self.grids
            .iter()
            .filter_map(|(column, _)| {
                values
                    .get(*column)
                    .and_then(position_of)
                    .filter(|p| p.is_finite())
                    .map(|p| (*column, p))
            })
            .collect()
    }

    fn free_if_unused(&mut self, slot: u32) {
        let s = &self.slots[slot as usize];
        if !s.live && s.views == 0 && !s.pk.is_empty() {
            let pk = std::mem::take(&mut self.slots[slot as usize].pk);
            self.by_pk.remove(&pk);
            let s = &mut self.slots[slot as usize];
            s.exact = Vec::new();
            s.wire = Vec::new();
            s.bounds = Vec::new();
            s.history.clear();
            s.deltas = Vec::new();
            s.values = None;
            self.free.push(slot);
        }
    }
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
            config,
            tables,
            shared: FxHashMap::default(),
            clients: BTreeMap::new(),
            tick: 0,
            sent: SentCounters::default(),
            scratch_wire: Vec::new(),
            scratch_bounds: Vec::new(),
            scratch_slots: Vec::new(),
        }
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
                .map(|t| t.slots.len() - t.free.len())
                .sum(),
            dirty: self
                .clients
                .values()
                .flat_map(|c| c.views.values())
                .flat_map(|v| v.values())
                .filter(|e| e.dirty != Dirty::Clean)
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
        for (pk, row) in rows {
            self.upsert_row(table, pk, row, false);
        }
    }

    fn upsert_row(&mut self, table: u32, pk: &[u8], exact: &[u8], changed: bool) {
        let tick = self.tick;
        let Some(Some(t)) = self.tables.get_mut(table as usize) else {
            return;
        };
        self.scratch_wire.clear();
        if let Err(error) =
            t.layout
                .encode_row(exact, &mut self.scratch_wire, &mut self.scratch_bounds)
        {
            tracing::error!(table = t.schema.name, %error, "row does not match its table's schema");
            return;
        }
        let positions = t.positions(exact);
        let slot = match t.by_pk.get(pk) {
            Some(&slot) => slot,
            None => {
                let slot = t.free.pop().unwrap_or(t.slots.len() as u32);
                let fresh = Slot {
                    pk: pk.into(),
                    exact: Vec::new(),
                    wire: Vec::new(),
                    bounds: Vec::new(),
                    version: 0,
                    history: std::collections::VecDeque::new(),
                    deltas: Vec::new(),
                    live: false,
                    views: 0,
                    values: None,
                };
                if slot as usize == t.slots.len() {
                    t.slots.push(fresh);
                } else {
                    t.slots[slot as usize] = fresh;
                }
                t.by_pk.insert(pk.into(), slot);
                slot
            }
        };
        let s = &mut t.slots[slot as usize];
        s.deltas.clear();
        let was_live = s.live;
        if was_live {
            // The current version becomes history; the oldest one's buffers are reused.
            let (old_wire, old_bounds) = if s.history.len() >= HISTORY {
                s.history
                    .pop_back()
                    .map(|v| (v.wire, v.bounds))
                    .unwrap_or_default()
            } else {
                Default::default()
            };
            let previous = Version {
                version: s.version,
                wire: std::mem::replace(&mut s.wire, old_wire),
                bounds: std::mem::replace(&mut s.bounds, old_bounds),
            };
            s.history.push_front(previous);
        } else {
            s.history.clear();
        }
        s.exact.clear();
        s.exact.extend_from_slice(exact);
        std::mem::swap(&mut s.wire, &mut self.scratch_wire);
        std::mem::swap(&mut s.bounds, &mut self.scratch_bounds);
        s.version = tick.max(1);
        s.live = true;
        s.values = None;
        for (column, p) in positions {
            if let Some((_, grid)) = t.grids.iter_mut().find(|(c, _)| *c == column) {
                let result = if was_live && grid.contains(slot) {
                    grid.update(slot, p).map(|_| ())
                } else {
                    grid.insert(slot, p)
                };
                if let Err(error) = result {
                    tracing::error!(%error, "publisher grid out of step");
                }
            }
        }
        if changed {
            t.changed.push(slot);
        }
    }

    fn delete_row(&mut self, table: u32, pk: &[u8]) {
        let tick = self.tick;
        let Some(Some(t)) = self.tables.get_mut(table as usize) else {
            return;
        };
        let Some(&slot) = t.by_pk.get(pk) else {
            return;
        };
        let s = &mut t.slots[slot as usize];
        if !s.live {
            return;
        }
        s.live = false;
        s.version = tick;
        s.deltas.clear();
        s.history.clear();
        for (_, grid) in &mut t.grids {
            grid.remove(slot);
        }
        t.changed.push(slot);
    }

    /// Folds a tick's changes into the mirror and re-evaluates the changed rows against the
    /// shared queries. Call once per tick, before [`Publisher::publish`].
    pub fn apply(&mut self, changes: &ChangeSet) {
        self.tick = self.tick.max(1) + 1;
        for table_changes in &changes.tables {
            let table = table_changes.table().0;
            for change in table_changes.iter() {
                match (change.kind, change.row) {
                    (ChangeKind::Delete, _) => self.delete_row(table, change.pk),
                    (_, Some(row)) => self.upsert_row(table, change.pk, row, true),
                    (_, None) => {}
                }
            }
        }
        for table in 0..self.tables.len() as u32 {
            self.evaluate_shared(table);
        }
    }

    fn evaluate_shared(&mut self, table: u32) {
        let Some(Some(t)) = self.tables.get_mut(table as usize) else {
            return;
        };
        let changed = std::mem::take(&mut t.changed);
        let keys = t.shared.clone();
        let tick = self.tick;
        for slot in &changed {
            let slot = *slot;
            let live = t.slots[slot as usize].live;
            for key in &keys {
                let Some(query) = self.shared.get_mut(key) else {
                    continue;
                };
                let was = query.members.contains(&slot);
                let is = live
                    && query
                        .condition
                        .as_ref()
                        .is_none_or(|c| c.matches(t.values(slot), query.sender));
                match (was, is) {
                    (false, true) => {
                        query.members.insert(slot);
                    }
                    (true, false) => {
                        query.members.remove(&slot);
                    }
                    _ => {}
                }
                if !was && !is {
                    continue;
                }
                for &(client_id, bit) in &query.subscribers {
                    if let Some(client) = self.clients.get_mut(&client_id) {
                        touch(client, t, table, slot, bit, is, 0.0, tick);
                    }
                }
            }
        }
        // Event rows live for the tick that produced them only.
        if t.schema.event {
            for &slot in &changed {
                if t.slots[slot as usize].live {
                    t.slots[slot as usize].live = false;
                    for (_, grid) in &mut t.grids {
                        grid.remove(slot);
                    }
                    for key in &keys {
                        if let Some(query) = self.shared.get_mut(key) {
                            query.members.remove(&slot);
                        }
                    }
                }
            }
        }
        for &slot in &changed {
            t.free_if_unused(slot);
        }
    }

    /// Registers a connected client.
    pub fn connect(&mut self, client: ClientId, identity: Identity) {
        self.clients.entry(client).or_insert_with(|| Client {
            identity,
            focus: None,
            budget: 0.0,
            subs: Vec::new(),
            views: FxHashMap::default(),
            dirty: Vec::new(),
            epoch: 0,
        });
    }

    /// Forgets a client and everything it subscribed to.
    pub fn disconnect(&mut self, client: ClientId) {
        let Some(mut state) = self.clients.remove(&client) else {
            return;
        };
        for sub in state.subs.drain(..) {
            if let SubKind::Shared(key) = sub.kind {
                self.release_shared(&key, client);
            }
        }
        for (table, view) in state.views.drain() {
            if let Some(Some(t)) = self.tables.get_mut(table as usize) {
                for (slot, _) in view {
                    t.slots[slot as usize].views -= 1;
                    t.free_if_unused(slot);
                }
            }
        }
    }

    fn release_shared(&mut self, key: &SharedKey, client: ClientId) {
        let Some(query) = self.shared.get_mut(key) else {
            return;
        };
        query.subscribers.retain(|(c, _)| *c != client);
        if query.subscribers.is_empty() {
            let table = query.table;
            self.shared.remove(key);
            if let Some(Some(t)) = self.tables.get_mut(table as usize) {
                t.shared.retain(|k| k != key);
            }
        }
    }

    /// Sets a client's focus point (for `within(col, :focus, r)`); 2D positions use `z = 0`.
    pub fn set_focus(&mut self, client: ClientId, focus: Vec3) {
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
        client: ClientId,
        query_id: u32,
        sql: &str,
    ) -> Result<Subscribed, SubscribeError> {
        let query = SubscriptionQuery::parse(schema, sql)?;
        let max_queries = self.config.max_queries_per_client;
        let tick = self.tick;
        let Some(state) = self.clients.get_mut(&client) else {
            return Err(SubscribeError::UnknownClient(client));
        };
        if state.subs.iter().any(|s| s.query_id == query_id) {
            return Err(SubscribeError::DuplicateQueryId(query_id));
        }
        if state.subs.len() >= max_queries {
            return Err(SubscribeError::TooManyQueries(max_queries));
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
                kind: SubKind::Spatial(SpatialSub {
                    table,
                    bit,
                    within,
                    condition,
                }),
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
                for slot in 0..t.slots.len() as u32 {
                    if t.slots[slot as usize].live
                        && condition
                            .as_ref()
                            .is_none_or(|c| c.matches(t.values(slot), identity))
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
            kind: SubKind::Shared(key),
        });
        for &slot in &members {
            touch(state, t, table, slot, bit, true, 0.0, tick);
        }
        Ok(Subscribed {
            table,
            initial_rows: members.len(),
        })
    }

    /// Ends a subscription; rows no other subscription of the client covers are deleted on
    /// its side.
    pub fn unsubscribe(&mut self, client: ClientId, query_id: u32) -> Result<(), SubscribeError> {
        let tick = self.tick;
        let Some(state) = self.clients.get_mut(&client) else {
            return Err(SubscribeError::UnknownClient(client));
        };
        let Some(index) = state.subs.iter().position(|s| s.query_id == query_id) else {
            return Err(SubscribeError::UnknownQueryId(query_id));
        };
        let sub = state.subs.remove(index);
        if let Some(Some(t)) = self.tables.get_mut(sub.table as usize) {
            let slots: Vec<u32> = state
                .views
                .get(&sub.table)
                .map(|v| {
                    v.iter()
                        .filter(|(_, e)| e.mask & (1 << sub.bit) != 0)
                        .map(|(s, _)| *s)
                        .collect()
                })
                .unwrap_or_default();
            for slot in slots {
                touch(state, t, sub.table, slot, sub.bit, false, 0.0, tick);
            }
        }
        if let SubKind::Shared(key) = sub.kind {
            self.release_shared(&key, client);
        }
        Ok(())
    }

    /// Refreshes spatial views and spends each client's budget, returning table update payloads
    /// in client order. `elapsed` is the time since the previous publish (budget accrual).
    pub fn publish(&mut self, elapsed: Duration, out: &mut Vec<Outgoing>) {
        let tick = self.tick;
        let rate = f64::from(self.config.budget_bytes_per_second);
        let cap = rate * self.config.max_banked.as_secs_f64();
        let margin = self.config.hysteresis;
        let max_message = self.config.max_message_bytes.max(64);
        for (&client_id, client) in &mut self.clients {
            refresh_spatial(
                client,
                &mut self.tables,
                &mut self.scratch_slots,
                margin,
                tick,
            );
            client.budget = (client.budget + rate * elapsed.as_secs_f64())
                .min(cap.max(rate * elapsed.as_secs_f64()));
            flush(
                client_id,
                client,
                &mut self.tables,
                tick,
                max_message,
                &mut self.sent,
                out,
            );
        }
    }
}

/// Updates a client's view entry for one row and one of its subscriptions (bit): `member` says
/// whether that subscription now includes the row.
#[allow(clippy::too_many_arguments)]
fn touch(
    client: &mut Client,
    t: &mut MirrorTable,
    table: u32,
    slot: u32,
    bit: u32,
    member: bool,
    distance: f32,
    tick: u64,
) {
    let view = client.views.entry(table).or_default();
    let s = &mut t.slots[slot as usize];
    match view.entry(slot) {
        MapEntry::Occupied(mut o) => {
            let e = o.get_mut();
            if member {
                e.mask |= 1 << bit;
            } else {
                e.mask &= !(1 << bit);
            }
            e.distance = distance;
            let want = if e.mask != 0 && s.live {
                (e.sent != s.version).then_some(Dirty::Upsert)
            } else if e.sent != 0 && !t.schema.event {
                Some(Dirty::Delete)
            } else {
                None
            };
            match want {
                Some(d) => {
                    if e.dirty == Dirty::Clean {
                        e.since = tick;
                        client.dirty.push((table, slot));
                    }
                    e.dirty = d;
                }
                None => {
                    if e.mask == 0 {
                        o.remove();
                        s.views -= 1;
                    } else {
                        e.dirty = Dirty::Clean;
                    }
                }
            }
        }
        MapEntry::Vacant(v) => {
            if member && s.live {
                v.insert(ViewEntry {
                    mask: 1 << bit,
                    sent: 0,
                    dirty: Dirty::Upsert,
                    since: tick,
                    distance,
                    seen: client.epoch,
                });
                s.views += 1;
                client.dirty.push((table, slot));
            }
        }
    }
}

fn refresh_spatial(
    client: &mut Client,
    tables: &mut [Option<MirrorTable>],
    found: &mut Vec<(u32, Vec3)>,
    margin: f32,
    tick: u64,
) {
    if !client
        .subs
        .iter()
        .any(|s| matches!(s.kind, SubKind::Spatial(_)))
    {
        return;
    }
    client.epoch = client.epoch.wrapping_add(1);
    let epoch = client.epoch;
    let identity = client.identity;
    let focus = client.focus;
    let subs: Vec<(u32, u32, Within, Option<Condition>)> = client
        .subs
        .iter()
        .filter_map(|s| match &s.kind {
            SubKind::Spatial(sp) => Some((sp.table, sp.bit, sp.within, sp.condition.clone())),
            SubKind::Shared(_) => None,
        })
        .collect();
    for (table, bit, within, condition) in subs {
        let Some(Some(t)) = tables.get_mut(table as usize) else {
            continue;
        };
        found.clear();
        if let Some(focus) = focus
            && let Some((_, grid)) = t.grids.iter().find(|(c, _)| *c == within.column)
        {
            grid.for_each_in_radius(focus, within.radius + margin, |slot, p| {
                found.push((slot, p))
            });
            // Deterministic regardless of grid internals.
            found.sort_unstable_by_key(|(slot, _)| *slot);
        }
        for &(slot, p) in found.iter() {
            let distance = focus.map_or(0.0, |f| f.distance(p));
            let inside_before = client
                .views
                .get(&table)
                .and_then(|v| v.get(&slot))
                .is_some_and(|e| e.mask & (1 << bit) != 0);
            let near =
                distance <= within.radius || (inside_before && distance <= within.radius + margin);
            let member = near
                && condition
                    .as_ref()
                    .is_none_or(|c| c.matches(t.values(slot), identity));
            if member {
                touch(client, t, table, slot, bit, true, distance, tick);
                if let Some(e) = client.views.get_mut(&table).and_then(|v| v.get_mut(&slot)) {
                    e.seen = epoch;
                }
            } else if inside_before {
                touch(client, t, table, slot, bit, false, distance, tick);
            }
        }
        // Rows of this subscription the query did not find have left the region.
        let stale: Vec<u32> = client
            .views
            .get(&table)
            .map(|v| {
                v.iter()
                    .filter(|(_, e)| e.mask & (1 << bit) != 0 && e.seen != epoch)
                    .map(|(s, _)| *s)
                    .collect()
            })
            .unwrap_or_default();
        for slot in stale {
            touch(client, t, table, slot, bit, false, f32::INFINITY, tick);
        }
    }
}

/// The delta record taking a client holding `version` to the row's current version, if that
/// version is still in the row's history (empty bytes: nothing visible changed).
fn delta_from<'s>(s: &'s mut Slot, layout: &WireLayout, version: u64) -> Option<&'s [u8]> {
    if version == 0 {
        return None;
    }
    let index = match s.deltas.iter().position(|(from, _)| *from == version) {
        Some(index) => index,
        None => {
            let old = s.history.iter().find(|v| v.version == version)?;
            let mut bytes = Vec::new();
            layout.delta_record(
                &s.pk,
                (&old.wire, &old.bounds),
                (&s.wire, &s.bounds),
                &mut bytes,
            );
            if bytes.is_empty() && old.wire != s.wire {
                // Too wide a table for a mask: only a full row describes the change.
                return None;
            }
            s.deltas.push((version, bytes));
            s.deltas.len() - 1
        }
    };
    Some(&s.deltas[index].1)
}

fn flush(
    client_id: ClientId,
    client: &mut Client,
    tables: &mut [Option<MirrorTable>],
    tick: u64,
    max_message: usize,
    counters: &mut SentCounters,
    out: &mut Vec<Outgoing>,
) {
    if client.dirty.is_empty() {
        return;
    }
    // Most urgent first: stale entries, then near ones; ties by table and row for determinism.
    let mut candidates: Vec<(f32, u32, u32)> = Vec::with_capacity(client.dirty.len());
    client.dirty.sort_unstable();
    client.dirty.dedup();
    for &(table, slot) in &client.dirty {
        if let Some(e) = client.views.get(&table).and_then(|v| v.get(&slot))
            && e.dirty != Dirty::Clean
        {
            let age = (tick.saturating_sub(e.since) + 1) as f32;
            let urgency = if e.dirty == Dirty::Delete { 2.0 } else { 1.0 };
            let score = urgency * age / (1.0 + e.distance.min(1.0e6) / 32.0);
            candidates.push((score, table, slot));
        }
    }
    candidates.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let mut payloads: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
    for &(_, table, slot) in &candidates {
        if client.budget <= 0.0 {
            break;
        }
        let Some(Some(t)) = tables.get_mut(table as usize) else {
            continue;
        };
        let Some(view) = client.views.get_mut(&table) else {
            continue;
        };
        let Some(e) = view.get_mut(&slot) else {
            continue;
        };
        let payload = payloads.entry(table).or_default();
        if payload.len() >= max_message {
            out.push(Outgoing {
                client: client_id,
                table,
                payload: std::mem::take(payload),
            });
        }
        let before = payload.len();
        let s = &mut t.slots[slot as usize];
        match e.dirty {
            Dirty::Clean => continue,
            Dirty::Delete => {
                counters.deletes += 1;
                WireLayout::delete_record(&s.pk, payload);
                view.remove(&slot);
                s.views -= 1;
                t.free_if_unused(slot);
            }
            Dirty::Upsert => {
                match delta_from(s, &t.layout, e.sent) {
                    Some(delta) => {
                        if !delta.is_empty() {
                            counters.deltas += 1;
                            payload.extend_from_slice(delta);
                        }
                    }
                    None => {
                        counters.upserts += 1;
                        t.layout.upsert_record(&s.pk, &s.wire, payload);
                    }
                }
                if t.schema.event {
                    view.remove(&slot);
                    s.views -= 1;
                    t.free_if_unused(slot);
                } else {
                    e.sent = s.version;
                    e.dirty = Dirty::Clean;
                }
            }
        }
        let bytes = payload.len() - before;
        counters.bytes += bytes as u64;
        client.budget -= bytes as f64;
    }
    for (table, payload) in payloads {
        if !payload.is_empty() {
            out.push(Outgoing {
                client: client_id,
                table,
                payload,
            });
        }
    }
    let views = &client.views;
    client.dirty.retain(|(table, slot)| {
        views
            .get(table)
            .and_then(|v| v.get(slot))
            .is_some_and(|e| e.dirty != Dirty::Clean)
    });
}
