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
mod grid;
pub mod sql;
pub mod wire;

use std::collections::{BTreeMap, VecDeque, hash_map::Entry as MapEntry};
use std::ops::Range;
use std::time::Duration;

use bevy_ecs::entity::Entity;
use glam::Vec3;
use rustc_hash::{FxHashMap, FxHashSet};

use self::grid::MirrorGrid;
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

/// Longest delta record stored inline in [`SlotMeta`].
const INLINE_DELTA: usize = 22;
/// `SlotMeta::delta_len` when the latest delta is not stored inline.
const NO_INLINE_DELTA: u8 = u8::MAX;

/// The part of a mirrored row every view update reads, kept dense (16 bytes) so that the
/// per-client loops touch one small array instead of the rows' bytes.
#[derive(Clone, Copy, Default)]
struct SlotMeta {
    /// Tick sequence of the newest change (0: unused slot).
    version: u64,
    /// Client view entries that reference this slot.
    views: u32,
    live: bool,
}

/// The delta from a row's previous version to its current one (what an up-to-date client
/// needs), stored inline in a dense array when small so that sending it reads nothing else.
#[derive(Clone, Copy)]
struct InlineDelta {
    /// The version it starts from.
    from: u64,
    /// Length of `bytes` (0: nothing visible changed), or [`NO_INLINE_DELTA`].
    len: u8,
    bytes: [u8; INLINE_DELTA],
}

impl Default for InlineDelta {
    fn default() -> Self {
        InlineDelta {
            from: 0,
            len: NO_INLINE_DELTA,
            bytes: [0; INLINE_DELTA],
        }
    }
}

/// A primary key as a hash-map key without a pointer to chase: inline when short (every integer
/// key), boxed otherwise.
#[derive(Clone, PartialEq, Eq, Hash)]
enum PkKey {
    Inline(u8, [u8; 23]),
    Boxed(Box<[u8]>),
}

impl PkKey {
    fn new(pk: &[u8]) -> Self {
        if pk.len() <= 23 {
            let mut bytes = [0u8; 23];
            bytes[..pk.len()].copy_from_slice(pk);
            PkKey::Inline(pk.len() as u8, bytes)
        } else {
            PkKey::Boxed(pk.into())
        }
    }
}

/// The bytes of a mirrored row.
#[derive(Default)]
struct SlotData {
    pk: Box<[u8]>,
    allocated: bool,
    entity: Option<Entity>,
    exact: Vec<u8>,
    wire: Vec<u8>,
    bounds: Vec<Range<u32>>,
    /// Earlier versions, newest first.
    history: VecDeque<Version>,
    /// Delta records from an earlier version to the current one, encoded when first needed and
    /// shared by every client holding that version. Empty bytes: nothing visible changed.
    deltas: Vec<(u64, Vec<u8>)>,
    values: Option<Vec<Value>>,
}

struct MirrorTable {
    schema: TableSchema,
    layout: WireLayout,
    by_pk: FxHashMap<PkKey, u32>,
    /// Slot by the row's entity index, checked against the full entity: changes arrive
    /// roughly in entity order, so this is a near-sequential load where the key map is a
    /// random probe. A row on a new entity (a rolled-back delete) falls back to the key map.
    by_entity: Vec<Option<(Entity, u32)>>,
    meta: Vec<SlotMeta>,
    inline: Vec<InlineDelta>,
    data: Vec<SlotData>,
    free: Vec<u32>,
    /// One grid per `Vec2`/`Vec3` column, positions of live rows.
    grids: Vec<(usize, MirrorGrid)>,
    changed: Vec<u32>,
    shared: Vec<SharedKey>,
    owner_column: Option<usize>,
    /// Slots whose last view may have gone; freed after the loop that released them.
    release: Vec<u32>,
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

/// A client's view of one row (32 bytes with its slot: views stream through the cache).
#[derive(Clone, Copy)]
struct ViewEntry {
    /// Version the client holds (0 = none).
    sent: u64,
    /// Bits of this client's subscriptions on the table that include the row.
    mask: u32,
    /// Tick the entry became dirty (wrapping; only differences matter).
    since: u32,
    /// Distance to the focus at the last spatial refresh (0 for non-spatial rows).
    distance: f32,
    /// Size of the last record sent for this row, a cheap estimate of the next one.
    last_size: u16,
    dirty: Dirty,
}

impl ViewEntry {
    /// Removed by a send during a flush (its delete went out): the flush compacts its views
    /// before returning, so dead entries are never seen outside it. Marking instead of
    /// removing keeps the flush's positions valid.
    fn is_dead(&self) -> bool {
        self.mask == 0 && self.dirty == Dirty::Clean
    }
}

/// One client's rows of one table, sorted by slot. A spatial refresh is a sequential merge of
/// this with the (sorted) region query result, which streams through memory instead of probing
/// a hash map per row; lookups are binary searches.
#[derive(Default)]
struct View {
    entries: Vec<(u32, ViewEntry)>,
}

impl View {
    fn find(&self, slot: u32) -> Result<usize, usize> {
        self.entries.binary_search_by_key(&slot, |(s, _)| *s)
    }

    fn len(&self) -> usize {
        self.entries.len()
    }
}

struct SpatialSub {
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
    /// Views by table id.
    views: Vec<View>,
    /// (table, slot) of entries that became dirty and may still be.
    dirty: Vec<(u32, u32)>,
}

/// Scratch buffers reused across clients and ticks.
#[derive(Default)]
struct Scratch {
    wire: Vec<u8>,
    bounds: Vec<Range<u32>>,
    starts: Vec<u32>,
    /// `(rank, table, slot, position in the view)`; see [`rank`].
    candidates: Vec<(u32, u32, u32, u32)>,
    payloads: Vec<(u32, Vec<u8>)>,
    delta: Vec<u8>,
    refresh: RefreshScratch,
}

/// The subscription state machine. See the module docs.
pub struct Publisher {
    config: PublishConfig,
    tables: Vec<Option<MirrorTable>>,
    shared: FxHashMap<SharedKey, SharedQuery>,
    clients: BTreeMap<ClientId, Client>,
    tick: u64,
    sent: SentCounters,
    scratch: Scratch,
}

fn read_position(ty: &TypeDesc, exact: &[u8], start: u32) -> Option<Vec3> {
    let dims = match ty {
        TypeDesc::Vec2 => 2,
        TypeDesc::Vec3 => 3,
        _ => return None,
    };
    let bytes = exact.get(start as usize..start as usize + 4 * dims)?;
    let f = |i: usize| {
        f32::from_le_bytes([
            bytes[4 * i],
            bytes[4 * i + 1],
            bytes[4 * i + 2],
            bytes[4 * i + 3],
        ])
    };
    let p = Vec3::new(f(0), f(1), if dims == 3 { f(2) } else { 0.0 });
    p.is_finite().then_some(p)
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
                let planar = schema.columns[i].ty == TypeDesc::Vec2;
                let grid = MirrorGrid::new(planar, cell)
                    .or_else(|_| MirrorGrid::new(planar, 32.0))
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
            by_entity: Vec::new(),
            meta: Vec::new(),
            inline: Vec::new(),
            data: Vec::new(),
            free: Vec::new(),
            grids,
            changed: Vec::new(),
            shared: Vec::new(),
            owner_column,
            release: Vec::new(),
        }
    }

    fn values<'d>(data: &'d mut [SlotData], schema: &TableSchema, slot: u32) -> &'d [Value] {
        let d = &mut data[slot as usize];
        if d.values.is_none() {
            d.values = Some(crate::value::decode_row(schema, &d.exact).unwrap_or_default());
        }
        d.values.as_deref().unwrap_or(&[])
    }

    fn free_if_unused(&mut self, slot: u32) {
        let meta = &mut self.meta[slot as usize];
        let data = &mut self.data[slot as usize];
        if !meta.live && meta.views == 0 && data.allocated {
            let pk = std::mem::take(&mut data.pk);
            self.by_pk.remove(&PkKey::new(&pk));
            if let Some(entity) = data.entity
                && let Some(mapped) = self.by_entity.get_mut(entity.index_u32() as usize)
                && *mapped == Some((entity, slot))
            {
                *mapped = None;
            }
            *data = SlotData::default();
            *meta = SlotMeta::default();
            self.inline[slot as usize] = InlineDelta::default();
            self.free.push(slot);
        }
    }

    fn release_pending(&mut self) {
        let mut release = std::mem::take(&mut self.release);
        for slot in release.drain(..) {
            self.free_if_unused(slot);
        }
        self.release = release;
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
            scratch: Scratch::default(),
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
        for (pk, row) in rows {
            self.upsert_row(table, pk, row, false, None);
        }
    }

    fn upsert_row(
        &mut self,
        table: u32,
        pk: &[u8],
        exact: &[u8],
        changed: bool,
        entity: Option<Entity>,
    ) {
        let tick = self.tick;
        let Some(Some(t)) = self.tables.get_mut(table as usize) else {
            return;
        };
        let scratch = &mut self.scratch;
        scratch.wire.clear();
        if let Err(error) = t.layout.encode_row_offsets(
            exact,
            &mut scratch.wire,
            &mut scratch.bounds,
            &mut scratch.starts,
        ) {
            tracing::error!(table = t.schema.name, %error, "row does not match its table's schema");
            return;
        }
        let by_entity = entity.and_then(|e| match t.by_entity.get(e.index_u32() as usize) {
            Some(Some((mapped, slot))) if *mapped == e => Some(*slot),
            _ => None,
        });
        let slot = match by_entity.or_else(|| t.by_pk.get(&PkKey::new(pk)).copied()) {
            Some(slot) => slot,
            None => {
                let slot = t.free.pop().unwrap_or(t.data.len() as u32);
                if slot as usize == t.data.len() {
                    t.data.push(SlotData::default());
                    t.meta.push(SlotMeta::default());
                    t.inline.push(InlineDelta::default());
                }
                let d = &mut t.data[slot as usize];
                d.pk = pk.into();
                d.allocated = true;
                t.by_pk.insert(PkKey::new(pk), slot);
                slot
            }
        };
        if let Some(e) = entity
            && by_entity.is_none()
        {
            let index = e.index_u32() as usize;
            if index >= t.by_entity.len() {
                t.by_entity.resize(index + 1, None);
            }
            t.by_entity[index] = Some((e, slot));
            t.data[slot as usize].entity = Some(e);
        }
        let meta = &mut t.meta[slot as usize];
        let inline = &mut t.inline[slot as usize];
        let d = &mut t.data[slot as usize];
        d.deltas.clear();
        let was_live = meta.live;
        inline.len = NO_INLINE_DELTA;
        if was_live {
            scratch.delta.clear();
            let changed_columns = t.layout.delta_record(
                pk,
                (&d.wire, &d.bounds),
                (&scratch.wire, &scratch.bounds),
                &mut scratch.delta,
            );
            if scratch.delta.len() <= INLINE_DELTA && (changed_columns || d.wire == scratch.wire) {
                inline.bytes[..scratch.delta.len()].copy_from_slice(&scratch.delta);
                inline.len = scratch.delta.len() as u8;
                inline.from = meta.version;
            }
            // The current version becomes history; the oldest one's buffers are reused.
            let (old_wire, old_bounds) = if d.history.len() >= HISTORY {
                d.history
                    .pop_back()
                    .map(|v| (v.wire, v.bounds))
                    .unwrap_or_default()
            } else {
                Default::default()
            };
            let previous = Version {
                version: meta.version,
                wire: std::mem::replace(&mut d.wire, old_wire),
                bounds: std::mem::replace(&mut d.bounds, old_bounds),
            };
            d.history.push_front(previous);
        } else {
            d.history.clear();
        }
        d.exact.clear();
        d.exact.extend_from_slice(exact);
        std::mem::swap(&mut d.wire, &mut scratch.wire);
        std::mem::swap(&mut d.bounds, &mut scratch.bounds);
        d.values = None;
        meta.version = tick.max(1);
        meta.live = true;
        for (column, grid) in &mut t.grids {
            let Some(p) = read_position(
                &t.schema.columns[*column].ty,
                exact,
                scratch.starts[*column],
            ) else {
                grid.remove(slot);
                continue;
            };
            if let Err(error) = grid.set(slot, p) {
                tracing::error!(%error, "publisher grid out of step");
            }
        }
        if changed {
            t.changed.push(slot);
        }
    }

    fn delete_row(&mut self, table: u32, pk: &[u8], entity: Option<Entity>) {
        let tick = self.tick;
        let Some(Some(t)) = self.tables.get_mut(table as usize) else {
            return;
        };
        let by_entity = entity.and_then(|e| match t.by_entity.get(e.index_u32() as usize) {
            Some(Some((mapped, slot))) if *mapped == e => Some(*slot),
            _ => None,
        });
        let Some(slot) = by_entity.or_else(|| t.by_pk.get(&PkKey::new(pk)).copied()) else {
            return;
        };
        let meta = &mut t.meta[slot as usize];
        if !meta.live {
            return;
        }
        meta.live = false;
        meta.version = tick;
        let d = &mut t.data[slot as usize];
        d.deltas.clear();
        d.history.clear();
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
                    (ChangeKind::Delete, _) => self.delete_row(table, change.pk, change.entity),
                    (_, Some(row)) => {
                        self.upsert_row(table, change.pk, row, true, change.entity);
                    }
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
        let tick = self.tick;
        let event = t.schema.event;
        for &slot in &changed {
            let live = t.meta[slot as usize].live;
            for key in &t.shared {
                let Some(query) = self.shared.get_mut(key) else {
                    continue;
                };
                let was = query.members.contains(&slot);
                let is = live
                    && query.condition.as_ref().is_none_or(|c| {
                        c.matches(
                            MirrorTable::values(&mut t.data, &t.schema, slot),
                            query.sender,
                        )
                    });
                match (was, is) {
                    (false, true) => {
                        query.members.insert(slot);
                    }
                    (true, false) => {
                        query.members.remove(&slot);
                    }
                    (false, false) => continue,
                    (true, true) => {}
                }
                for &(client_id, bit) in &query.subscribers {
                    if let Some(client) = self.clients.get_mut(&client_id) {
                        let meta = &mut t.meta[slot as usize];
                        let view = &mut client.views[table as usize];
                        if touch(
                            view,
                            &mut client.dirty,
                            meta,
                            event,
                            table,
                            slot,
                            bit,
                            is,
                            0.0,
                            tick,
                        ) {
                            t.release.push(slot);
                        }
                    }
                }
            }
        }
        // Event rows live for the tick that produced them only.
        if event {
            for &slot in &changed {
                if t.meta[slot as usize].live {
                    t.meta[slot as usize].live = false;
                    for (_, grid) in &mut t.grids {
                        grid.remove(slot);
                    }
                    for key in &t.shared {
                        if let Some(query) = self.shared.get_mut(key) {
                            query.members.remove(&slot);
                        }
                    }
                }
            }
        }
        t.release.extend_from_slice(&changed);
        t.release_pending();
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
        let query = SubscriptionQuery::parse(schema, sql)?;
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
            let values = MirrorTable::values(&mut t.data, &t.schema, slot);
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
    pub fn connect(&mut self, client: ClientId, identity: Identity) {
        let tables = self.tables.len();
        self.clients.entry(client).or_insert_with(|| Client {
            identity,
            focus: None,
            budget: 0.0,
            subs: Vec::new(),
            views: (0..tables).map(|_| View::default()).collect(),
            dirty: Vec::new(),
        });
    }

    /// Forgets a client and everything it subscribed to.
    pub fn disconnect(&mut self, client: ClientId) {
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
                    t.meta[slot as usize].views -= 1;
                    t.free_if_unused(slot);
                }
            }
        }
    }

    /// Drops one subscription (`client`, `bit`) from a shared query; the same client may hold
    /// the same query under other ids, which stay.
    fn release_shared(&mut self, key: &SharedKey, client: ClientId, bit: u32) {
        let Some(query) = self.shared.get_mut(key) else {
            return;
        };
        query.subscribers.retain(|&(c, b)| (c, b) != (client, bit));
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
                            c.matches(MirrorTable::values(&mut t.data, &t.schema, slot), identity)
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
            let meta = &mut t.meta[slot as usize];
            match old.next_if(|(s, _)| *s == slot) {
                Some((_, mut e)) => {
                    e.mask |= 1 << bit;
                    if settle(&mut e, meta, event, tick) {
                        state.dirty.push((table, slot));
                    }
                    merged.push((slot, e));
                }
                None => {
                    merged.push((slot, new_entry(bit, 0.0, tick)));
                    meta.views += 1;
                    state.dirty.push((table, slot));
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
            let view = &mut state.views[sub.table as usize];
            let event = t.schema.event;
            let (table, bit) = (sub.table, sub.bit);
            let MirrorTable { meta, release, .. } = t;
            view.entries.retain_mut(|(slot, e)| {
                if e.mask & (1 << bit) == 0 {
                    return true;
                }
                e.mask &= !(1 << bit);
                keep_entry(
                    e,
                    &mut meta[*slot as usize],
                    event,
                    table,
                    *slot,
                    tick,
                    &mut state.dirty,
                    release,
                )
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
    pub fn publish(&mut self, elapsed: Duration, out: &mut Vec<Outgoing>) {
        let tick = self.tick;
        let rate = f64::from(self.config.budget_bytes_per_second);
        let accrued = rate * elapsed.as_secs_f64();
        let cap = (rate * self.config.max_banked.as_secs_f64()).max(accrued);
        let margin = self.config.hysteresis;
        let max_message = self.config.max_message_bytes.max(64);
        for (&client_id, client) in &mut self.clients {
            refresh_spatial(
                client,
                &mut self.tables,
                margin,
                tick,
                &mut self.scratch.refresh,
            );
            client.budget = (client.budget + accrued).min(cap);
            flush(
                client_id,
                client,
                &mut self.tables,
                tick,
                max_message,
                &mut self.sent,
                &mut self.scratch,
                out,
            );
        }
        for t in self.tables.iter_mut().flatten() {
            t.release_pending();
        }
    }
}

/// Updates a client's view entry for one row and one of its subscriptions (`bit`): `member`
/// says whether that subscription now includes the row. Returns true if the entry was removed
/// from a dead row (whose slot may now be freed).
#[allow(clippy::too_many_arguments)]
fn touch(
    view: &mut View,
    dirty: &mut Vec<(u32, u32)>,
    meta: &mut SlotMeta,
    event: bool,
    table: u32,
    slot: u32,
    bit: u32,
    member: bool,
    distance: f32,
    tick: u64,
) -> bool {
    match view.find(slot) {
        Ok(index) => {
            let e = &mut view.entries[index].1;
            if member {
                e.mask |= 1 << bit;
            } else {
                e.mask &= !(1 << bit);
            }
            e.distance = distance;
            if settle(e, meta, event, tick) {
                dirty.push((table, slot));
            }
            if e.mask == 0 && e.dirty == Dirty::Clean {
                view.entries.remove(index);
                meta.views -= 1;
                return !meta.live;
            }
            false
        }
        Err(index) => {
            if member && meta.live {
                view.entries
                    .insert(index, (slot, new_entry(bit, distance, tick)));
                meta.views += 1;
                dirty.push((table, slot));
            }
            false
        }
    }
}

/// Marks an entry removed (its delete went out, or its event was delivered) and releases its
/// hold on the slot.
fn kill(e: &mut ViewEntry, meta: &mut SlotMeta, slot: u32, release: &mut Vec<u32>) {
    e.mask = 0;
    e.dirty = Dirty::Clean;
    e.sent = 0;
    meta.views -= 1;
    if !meta.live {
        release.push(slot);
    }
}

fn new_entry(bit: u32, distance: f32, tick: u64) -> ViewEntry {
    ViewEntry {
        mask: 1 << bit,
        sent: 0,
        dirty: Dirty::Upsert,
        since: tick as u32,
        distance,
        last_size: 0,
    }
}

/// After an entry's mask changed: settles what it owes and says whether to keep it (an entry
/// is dropped when no subscription covers it and nothing is owed).
#[allow(clippy::too_many_arguments)]
fn keep_entry(
    e: &mut ViewEntry,
    meta: &mut SlotMeta,
    event: bool,
    table: u32,
    slot: u32,
    tick: u64,
    dirty: &mut Vec<(u32, u32)>,
    release: &mut Vec<u32>,
) -> bool {
    if settle(e, meta, event, tick) {
        dirty.push((table, slot));
    }
    if e.mask == 0 && e.dirty == Dirty::Clean {
        meta.views -= 1;
        if !meta.live {
            release.push(slot);
        }
        return false;
    }
    true
}

/// Works out what an entry owes its client after its mask or the row changed; returns true if it
/// just became dirty (and must be queued).
fn settle(e: &mut ViewEntry, meta: &SlotMeta, event: bool, tick: u64) -> bool {
    let want = if e.mask != 0 && meta.live {
        if e.sent != meta.version {
            Dirty::Upsert
        } else {
            Dirty::Clean
        }
    } else if e.sent != 0 && !event {
        Dirty::Delete
    } else {
        Dirty::Clean
    };
    let newly = e.dirty == Dirty::Clean && want != Dirty::Clean;
    if newly {
        e.since = tick as u32;
    }
    e.dirty = want;
    newly
}

fn refresh_spatial(
    client: &mut Client,
    tables: &mut [Option<MirrorTable>],
    margin: f32,
    tick: u64,
    scratch: &mut RefreshScratch,
) {
    let identity = client.identity;
    let focus = client.focus;
    for sub in &client.subs {
        let SubKind::Spatial(spatial) = &sub.kind else {
            continue;
        };
        let Some(Some(t)) = tables.get_mut(sub.table as usize) else {
            continue;
        };
        let (table, bit, within) = (sub.table, sub.bit, spatial.within);
        let event = t.schema.event;
        let MirrorTable {
            grids,
            meta,
            data,
            schema,
            release,
            ..
        } = t;
        // Mark the region's rows in dense per-slot arrays (which stay in cache) instead of
        // sorting them: the view is walked once in its own (slot) order against the marks.
        scratch.epoch += 1;
        let epoch = scratch.epoch;
        if scratch.mark.len() < meta.len() {
            scratch.mark.resize(meta.len(), 0);
            scratch.distance.resize(meta.len(), 0.0);
        }
        scratch.found.clear();
        if let (Some(focus), Some((_, grid))) =
            (focus, grids.iter().find(|(c, _)| *c == within.column))
        {
            let (mark, distance, found) =
                (&mut scratch.mark, &mut scratch.distance, &mut scratch.found);
            grid.for_each_within(focus, within.radius + margin, |slot, d| {
                mark[slot as usize] = epoch;
                distance[slot as usize] = d;
                found.push(slot);
            });
        }
        let passes = |data: &mut [SlotData], slot: u32| {
            spatial
                .condition
                .as_ref()
                .is_none_or(|c| c.matches(MirrorTable::values(data, schema, slot), identity))
        };
        let view = &mut client.views[table as usize];
        let dirty = &mut client.dirty;
        let (mark, dist) = (&mut scratch.mark, &scratch.distance);
        view.entries.retain_mut(|(slot, e)| {
            let s = *slot as usize;
            let inside_before = e.mask & (1 << bit) != 0;
            if mark.get(s) == Some(&epoch) {
                // In the region: stays or enters (hysteresis), or leaves by the condition.
                mark[s] = epoch - 1;
                let d = dist[s];
                if (d <= within.radius || inside_before) && passes(data, *slot) {
                    e.mask |= 1 << bit;
                } else {
                    e.mask &= !(1 << bit);
                }
                e.distance = d;
            } else if inside_before {
                // Not in the region (radius + margin): left.
                e.mask &= !(1 << bit);
                e.distance = f32::INFINITY;
            } else {
                return true;
            }
            keep_entry(e, &mut meta[s], event, table, *slot, tick, dirty, release)
        });
        // Region rows the view did not have (still marked) may enter.
        scratch.entering.clear();
        for &slot in &scratch.found {
            let s = slot as usize;
            if mark[s] == epoch && dist[s] <= within.radius && meta[s].live && passes(data, slot) {
                scratch.entering.push(slot);
            }
        }
        if !scratch.entering.is_empty() {
            scratch.entering.sort_unstable();
            let mut merged = Vec::with_capacity(view.entries.len() + scratch.entering.len());
            let mut old = std::mem::take(&mut view.entries).into_iter().peekable();
            for &slot in &scratch.entering {
                merged.extend(std::iter::from_fn(|| old.next_if(|(s, _)| *s < slot)));
                merged.push((slot, new_entry(bit, dist[slot as usize], tick)));
                meta[slot as usize].views += 1;
                dirty.push((table, slot));
            }
            merged.extend(old);
            view.entries = merged;
        }
    }
}

/// Dense per-slot scratch for spatial refreshes, shared by all clients.
#[derive(Default)]
struct RefreshScratch {
    /// Monotonic refresh counter; `mark[slot] == epoch` means "in the current region".
    epoch: u64,
    mark: Vec<u64>,
    distance: Vec<f32>,
    found: Vec<u32>,
    entering: Vec<u32>,
}

/// The delta record taking a client holding `version` to the row's current version, if that
/// version is still in the row's history (empty bytes: nothing visible changed).
fn delta_from<'s>(d: &'s mut SlotData, layout: &WireLayout, version: u64) -> Option<&'s [u8]> {
    if version == 0 {
        return None;
    }
    let index = match d.deltas.iter().position(|(from, _)| *from == version) {
        Some(index) => index,
        None => {
            let old = d.history.iter().find(|v| v.version == version)?;
            let mut bytes = Vec::new();
            layout.delta_record(
                &d.pk,
                (&old.wire, &old.bounds),
                (&d.wire, &d.bounds),
                &mut bytes,
            );
            if bytes.is_empty() && old.wire != d.wire {
                // Too wide a table for a mask: only a full row describes the change.
                return None;
            }
            d.deltas.push((version, bytes));
            d.deltas.len() - 1
        }
    };
    Some(&d.deltas[index].1)
}

/// An ascending sort key for a priority `score` (higher first): the order-preserving map of
/// the float's bits, inverted. Scores are finite and non-negative.
fn rank(score: f32) -> u32 {
    let bits = score.to_bits();
    let ordered = if bits >> 31 == 0 {
        bits | 1 << 31
    } else {
        !bits
    };
    !ordered
}

#[allow(clippy::too_many_arguments)]
fn flush(
    client_id: ClientId,
    client: &mut Client,
    tables: &mut [Option<MirrorTable>],
    tick: u64,
    max_message: usize,
    counters: &mut SentCounters,
    scratch: &mut Scratch,
    out: &mut Vec<Outgoing>,
) {
    if client.dirty.is_empty() {
        return;
    }
    let candidates = &mut scratch.candidates;
    candidates.clear();
    // A cheap estimate of what sending everything would cost (each entry's last record size);
    // when the budget covers it, the queue goes out in its (deterministic) order unranked.
    let mut estimate = 0f64;
    let mut consider = |table: u32, slot: u32, position: usize, e: &ViewEntry| {
        if e.dirty == Dirty::Clean {
            return;
        }
        let age = ((tick as u32).wrapping_sub(e.since) + 1) as f32;
        let urgency = if e.dirty == Dirty::Delete { 2.0 } else { 1.0 };
        let score = urgency * age / (1.0 + e.distance.min(1.0e6) / 32.0);
        candidates.push((rank(score), table, slot, position as u32));
        estimate += if e.last_size == 0 {
            64.0
        } else {
            f64::from(e.last_size)
        };
    };
    let viewed: usize = client.views.iter().map(|v| v.entries.len()).sum();
    let scan = client.dirty.len() * 4 >= viewed;
    if scan {
        // Most of the view is queued (a client the budget cannot keep up with): one pass over
        // the views beats a binary search per queued entry. Every dirty entry is queued, so
        // both ways find the same set.
        for (table, view) in client.views.iter().enumerate() {
            for (position, (slot, e)) in view.entries.iter().enumerate() {
                consider(table as u32, *slot, position, e);
            }
        }
    } else {
        for &(table, slot) in &client.dirty {
            let view = &client.views[table as usize];
            if let Ok(position) = view.find(slot) {
                consider(table, slot, position, &view.entries[position].1);
            }
        }
    }
    if estimate > client.budget {
        // Most urgent first: stale entries, then near ones; ties by table and row (plain
        // integer tuples: this sort runs for every budget-bound client every tick).
        // Only what the budget can reach needs an order (twice as many entries as the budget
        // covers at their average last size, for records that grew): select those, sort
        // them; the rest stays queued.
        let average = estimate / candidates.len() as f64;
        let reach = (2.0 * client.budget.max(0.0) / average).ceil() as usize + 8;
        if reach < candidates.len() {
            candidates.select_nth_unstable(reach);
            candidates[..reach].sort_unstable();
        } else {
            candidates.sort_unstable();
        }
    }
    // Touch each candidate's inline delta header first: these loads are independent, so
    // their cache misses overlap here instead of stalling the send loop one by one (slots are
    // spread over the whole table; this was a third of the flush time).
    let mut touched = 0u64;
    for &(_, table, slot, _) in candidates.iter() {
        if let Some(Some(t)) = tables.get(table as usize)
            && let Some(stored) = t.inline.get(slot as usize)
        {
            touched ^= stored.from;
        }
    }
    std::hint::black_box(touched);
    let payloads = &mut scratch.payloads;
    let mut sent_count = 0;
    // Tables whose views had entries killed (bit per table id; ids from 63 up share a bit).
    let mut killed = 0u64;
    for &(_, table, slot, position) in candidates.iter() {
        if client.budget <= 0.0 {
            break;
        }
        sent_count += 1;
        let Some(Some(t)) = tables.get_mut(table as usize) else {
            continue;
        };
        // Entries are only marked dead during a flush, never moved: positions stay valid.
        let e = &mut client.views[table as usize].entries[position as usize].1;
        let index = match payloads.iter().position(|(t, _)| *t == table) {
            Some(index) => index,
            None => {
                payloads.push((table, Vec::with_capacity(256)));
                payloads.len() - 1
            }
        };
        if payloads[index].1.len() >= max_message {
            let full = std::mem::replace(&mut payloads[index].1, Vec::with_capacity(256));
            out.push(Outgoing {
                client: client_id,
                table,
                payload: full,
            });
        }
        let payload = &mut payloads[index].1;
        let before = payload.len();
        let meta = &mut t.meta[slot as usize];
        match e.dirty {
            Dirty::Clean => continue,
            Dirty::Delete => {
                counters.deletes += 1;
                WireLayout::delete_record(&t.data[slot as usize].pk, payload);
                kill(e, meta, slot, &mut t.release);
                killed |= 1 << table.min(63);
            }
            Dirty::Upsert => {
                let stored = &t.inline[slot as usize];
                if e.sent != 0 && e.sent == stored.from && stored.len != NO_INLINE_DELTA {
                    if stored.len > 0 {
                        counters.deltas += 1;
                        payload.extend_from_slice(&stored.bytes[..stored.len as usize]);
                    }
                } else {
                    let d = &mut t.data[slot as usize];
                    match delta_from(d, &t.layout, e.sent) {
                        Some(delta) => {
                            if !delta.is_empty() {
                                counters.deltas += 1;
                                payload.extend_from_slice(delta);
                            }
                        }
                        None => {
                            counters.upserts += 1;
                            t.layout.upsert_record(&d.pk, &d.wire, payload);
                        }
                    }
                }
                if t.schema.event {
                    kill(e, meta, slot, &mut t.release);
                    killed |= 1 << table.min(63);
                } else {
                    e.sent = meta.version;
                    e.dirty = Dirty::Clean;
                }
            }
        }
        let bytes = payload.len() - before;
        e.last_size = u16::try_from(bytes).unwrap_or(u16::MAX);
        counters.bytes += bytes as u64;
        client.budget -= bytes as f64;
    }
    if killed != 0 {
        for (table, view) in client.views.iter_mut().enumerate() {
            if killed & (1 << table.min(63)) != 0 {
                view.entries.retain(|(_, e)| !e.is_dead());
            }
        }
    }
    for (table, payload) in payloads.drain(..) {
        if !payload.is_empty() {
            out.push(Outgoing {
                client: client_id,
                table,
                payload,
            });
        }
    }
    // What was not reached stays queued, once: an entry that went clean and dirty again
    // between flushes can have been queued twice (a scan of the views finds each entry once).
    client.dirty.clear();
    client.dirty.extend(
        candidates[sent_count..]
            .iter()
            .map(|&(_, table, slot, _)| (table, slot)),
    );
    if !scan && client.dirty.len() > 1 {
        client.dirty.sort_unstable();
        client.dirty.dedup();
    }
}

#[cfg(test)]
mod rank_tests {
    use super::rank;

    #[test]
    fn rank_sorts_higher_scores_first() {
        let scores = [0.0f32, 1.0e-30, 0.5, 1.0, 1.5, 2.0, 1.0e6, f32::MAX];
        for pair in scores.windows(2) {
            assert!(rank(pair[1]) < rank(pair[0]), "{pair:?}");
        }
        assert_eq!(rank(3.25), rank(3.25));
    }
}
