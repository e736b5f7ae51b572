//! Subscriptions end to end inside the engine crate: an engine produces change sets, a
//! publisher turns them into per-client payloads, and virtual clients rebuild their mirrors with
//! the reference decoder.

#![allow(missing_docs)]

use std::collections::BTreeMap;
use std::time::Duration;

use orrery_engine::SystemsExecutor;
use orrery_engine::glam::{Vec2, Vec3};
use orrery_engine::prelude::*;
use orrery_engine::value::Value;
use orrery_engine::wire::{RowHandles, WireLayout, WireRecord, WireRow};
use orrery_subscription::{Outgoing, PublishConfig, Publisher, QueryError, SubscribeError};
use proptest::prelude::*;

#[table(name = item, public)]
#[derive(Clone, Debug, PartialEq)]
pub struct Item {
    #[primary_key]
    #[auto_inc]
    pub id: u32,
    #[index(btree)]
    pub level: u32,
    pub name: String,
}

#[table(name = bag, owner = owner)]
#[derive(Clone, Debug, PartialEq)]
pub struct Bag {
    #[primary_key]
    #[auto_inc]
    pub id: u32,
    pub owner: Identity,
    pub gold: i64,
}

#[table(name = secret)]
#[derive(Clone, Debug, PartialEq)]
pub struct Secret {
    #[primary_key]
    pub id: u32,
    pub code: String,
}

#[table(name = mob, public)]
#[derive(Clone, Debug, PartialEq)]
pub struct Mob {
    #[primary_key]
    pub id: u32,
    #[spatial(cell = 25.0)]
    #[quantize(0.01)]
    pub pos: Vec2,
    pub hp: i32,
}

/// A player's avatar, keyed by a 32-byte identity as player tables usually are.
#[table(name = avatar, public)]
#[derive(Clone, Debug, PartialEq)]
pub struct Avatar {
    #[primary_key]
    pub owner: Identity,
    #[spatial(cell = 25.0)]
    #[quantize(0.01)]
    pub pos: Vec2,
}

/// Local chat: an event table with a position.
#[table(name = shout, public, event)]
#[derive(Clone, Debug, PartialEq)]
pub struct Shout {
    #[primary_key]
    #[auto_inc]
    pub id: u64,
    #[spatial(cell = 25.0)]
    pub pos: Vec2,
    pub text: String,
}

#[derive(OrreryType, Clone, Debug)]
pub enum Op {
    Shout { x: f32, y: f32, text: String },
    PutItem { id: u32, level: u32, name: String },
    DropItem { id: u32 },
    PutBag { id: u32, owner: u64, gold: i64 },
    DropBag { id: u32 },
    PutMob { id: u32, x: f32, y: f32, hp: i32 },
    DropMob { id: u32 },
    PutAvatar { owner: u64, x: f32, y: f32 },
}

/// Deletes a mob, then fails: the rollback brings the row back on a new entity.
#[reducer]
pub fn drop_mob_then_fail(ctx: &mut ReducerContext, id: u32) -> Result<(), String> {
    ctx.db.mob().id().delete(&id);
    Err("changed my mind".into())
}

#[reducer]
pub fn run(ctx: &mut ReducerContext, ops: Vec<Op>) -> Result<(), String> {
    for op in ops {
        match op {
            Op::PutItem { id, level, name } => {
                let row = Item { id, level, name };
                if ctx.db.item().id().find(&id).is_some() {
                    ctx.db.item().id().update(row)?;
                } else {
                    ctx.db.item().insert(row)?;
                }
            }
            Op::DropItem { id } => {
                ctx.db.item().id().delete(&id);
            }
            Op::PutBag { id, owner, gold } => {
                let row = Bag {
                    id,
                    owner: Identity::from_u64(owner),
                    gold,
                };
                if ctx.db.bag().id().find(&id).is_some() {
                    ctx.db.bag().id().update(row)?;
                } else {
                    ctx.db.bag().insert(row)?;
                }
            }
            Op::DropBag { id } => {
                ctx.db.bag().id().delete(&id);
            }
            Op::PutMob { id, x, y, hp } => {
                let row = Mob {
                    id,
                    pos: Vec2::new(x, y),
                    hp,
                };
                if ctx.db.mob().id().find(&id).is_some() {
                    ctx.db.mob().id().update(row)?;
                } else {
                    ctx.db.mob().insert(row)?;
                }
            }
            Op::DropMob { id } => {
                ctx.db.mob().id().delete(&id);
            }
            Op::PutAvatar { owner, x, y } => {
                let row = Avatar {
                    owner: Identity::from_u64(owner),
                    pos: Vec2::new(x, y),
                };
                if ctx.db.avatar().owner().find(&row.owner).is_some() {
                    ctx.db.avatar().owner().update(row)?;
                } else {
                    ctx.db.avatar().insert(row)?;
                }
            }
            Op::Shout { x, y, text } => {
                ctx.db.shout().insert(Shout {
                    id: 0,
                    pos: Vec2::new(x, y),
                    text,
                })?;
            }
        }
    }
    Ok(())
}

fn engine() -> Engine {
    let module = Module::builder("subs")
        .table::<Item>()
        .table::<Bag>()
        .table::<Secret>()
        .table::<Mob>()
        .table::<Shout>()
        .table::<Avatar>()
        .reducers(reducers![run, drop_mob_then_fail])
        .build()
        .unwrap();
    Engine::new(
        module,
        EngineConfig {
            executor: SystemsExecutor::SingleThreaded,
            ..Default::default()
        },
    )
    .unwrap()
}

/// A client's mirror, rebuilt from payloads with the reference decoder.
#[derive(Default)]
struct Mirror {
    tables: BTreeMap<u32, BTreeMap<Vec<u8>, WireRow>>,
    /// The connection's row handles by table.
    handles: BTreeMap<u32, RowHandles>,
    bytes: usize,
    records: usize,
}

impl Mirror {
    fn apply(&mut self, layouts: &[(WireLayout, bool)], message: &Outgoing) {
        self.bytes += message.payload.len();
        let (layout, event) = &layouts[message.table as usize];
        let table = self.tables.entry(message.table).or_default();
        let handles = self
            .handles
            .entry(message.table)
            .or_insert_with(|| RowHandles::new(*event));
        for record in layout.decode_records(handles, &message.payload).unwrap() {
            self.records += 1;
            match record {
                WireRecord::Upsert { pk, row } => {
                    table.insert(pk, row);
                }
                WireRecord::Delta { pk, changes, .. } => {
                    let row = table
                        .get_mut(&pk)
                        .expect("delta for a row the client holds");
                    row.apply_delta(layout, &changes).unwrap();
                }
                WireRecord::Delete { pk } => {
                    assert!(
                        table.remove(&pk).is_some(),
                        "delete for a row the client does not hold"
                    );
                }
            }
        }
    }

    /// A mark of what was received so far, for [`Mirror::since`].
    fn mark(&self) -> (usize, usize) {
        (self.records, self.bytes)
    }

    /// Records received since `mark`, and payload bytes per record.
    fn since(&self, (records, bytes): (usize, usize)) -> (usize, f32) {
        let n = self.records - records;
        (n, (self.bytes - bytes) as f32 / n.max(1) as f32)
    }

    fn rows(&self, table: u32) -> Vec<Vec<Value>> {
        self.tables
            .get(&table)
            .map(|t| t.values().map(|r| r.columns.clone()).collect())
            .unwrap_or_default()
    }
}

struct World {
    engine: Engine,
    publisher: Publisher,
    /// Each table's layout, and whether it is an event table.
    layouts: Vec<(WireLayout, bool)>,
    mirrors: BTreeMap<ConnectionId, Mirror>,
    tick: i64,
}

impl World {
    fn new(config: PublishConfig) -> Self {
        let engine = engine();
        let publisher = Publisher::new(engine.schema(), config);
        let layouts = engine
            .schema()
            .tables
            .iter()
            .map(|t| (WireLayout::new(t), t.event))
            .collect();
        World {
            engine,
            publisher,
            layouts,
            mirrors: BTreeMap::new(),
            tick: 0,
        }
    }

    /// A client (1) watching every avatar within 100 m of the origin, its view settled.
    fn watch_avatars(&mut self) -> ConnectionId {
        let a = self.connect(1, 1);
        self.subscribe(a, 1, "SELECT * FROM avatar WHERE within(pos, :focus, 100)")
            .unwrap();
        self.publisher.set_focus(a, Vec3::ZERO);
        self.settle();
        a
    }

    fn connect(&mut self, client: u64, identity: u64) -> ConnectionId {
        let id = ConnectionId(client);
        self.publisher.connect(id, Identity::from_u64(identity));
        self.mirrors.insert(id, Mirror::default());
        id
    }

    /// Churn: `gone` disconnects and a new client `next` connects, subscribed to the mobs
    /// within 40 m of the origin that have more than 1 hp.
    fn replace_client(&mut self, gone: ConnectionId, next: u64) {
        self.publisher.disconnect(gone);
        self.mirrors.remove(&gone);
        let id = self.connect(next, 3);
        self.subscribe(
            id,
            1,
            "SELECT * FROM mob WHERE within(pos, :focus, 40) AND hp > 1",
        )
        .unwrap();
        self.publisher.set_focus(id, Vec3::ZERO);
    }

    fn subscribe(
        &mut self,
        client: ConnectionId,
        query_id: u32,
        sql: &str,
    ) -> Result<usize, SubscribeError> {
        let schema = self.engine.schema().clone();
        self.publisher
            .subscribe(&schema, client, query_id, sql)
            .map(|s| s.initial_rows)
    }

    fn run(&mut self, ops: Vec<Op>) {
        self.engine
            .call_reducer("run", Identity::ZERO, (ops,))
            .unwrap();
    }

    /// One tick; returns bytes sent per client this tick.
    fn tick(&mut self) -> BTreeMap<ConnectionId, usize> {
        self.tick_messages().0
    }

    /// One tick; returns bytes sent per client and the messages, in publish order.
    fn tick_messages(&mut self) -> (BTreeMap<ConnectionId, usize>, Vec<Outgoing>) {
        self.tick += 1;
        let out = self.engine.step(Timestamp::from_micros(self.tick * 50_000));
        self.publisher.apply(&out.changes);
        let mut sent = Vec::new();
        self.publisher.publish(Duration::from_millis(50), &mut sent);
        let mut bytes = BTreeMap::new();
        for message in &sent {
            *bytes.entry(message.client).or_insert(0) += message.payload.len();
            self.mirrors
                .get_mut(&message.client)
                .unwrap()
                .apply(&self.layouts, message);
        }
        (bytes, sent)
    }

    fn settle(&mut self) {
        for _ in 0..400 {
            self.tick();
            if self.publisher.stats().dirty == 0 {
                return;
            }
        }
        panic!("dirty sets never drained: {:?}", self.publisher.stats());
    }

    fn server_rows<T: Table>(&self, filter: impl Fn(&T) -> bool) -> Vec<Vec<Value>> {
        let table = self.engine.schema().table(T::NAME).unwrap().clone();
        let layout = WireLayout::new(&table);
        let mut rows: Vec<(Vec<u8>, Vec<Value>)> = self
            .engine
            .rows::<T>()
            .into_iter()
            .filter(|r| filter(r))
            .map(|r| {
                // The server's row as the client sees it: through wire form (quantized).
                let mut wire = Vec::new();
                layout
                    .encode_row(&r.to_bytes(), &mut wire, &mut Vec::new())
                    .unwrap();
                (
                    r.pk().to_bytes(),
                    layout.decode_row(&mut wire.as_slice()).unwrap().columns,
                )
            })
            .collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        rows.into_iter().map(|(_, v)| v).collect()
    }
}

fn generous() -> PublishConfig {
    PublishConfig {
        budget_bytes_per_second: 1 << 20,
        max_banked: Duration::from_secs(1),
        ..PublishConfig::default()
    }
}

#[test]
fn plain_queries_converge_and_deletes_propagate() {
    let mut w = World::new(generous());
    w.run(
        (1..=5)
            .map(|id| Op::PutItem {
                id,
                level: id * 10,
                name: format!("i{id}"),
            })
            .collect(),
    );
    w.tick();
    let a = w.connect(1, 100);
    let b = w.connect(2, 200);
    assert_eq!(w.subscribe(a, 1, "SELECT * FROM item").unwrap(), 5);
    assert_eq!(
        w.subscribe(
            b,
            1,
            "SELECT * FROM item WHERE level >= 30 AND name <> 'i5'"
        )
        .unwrap(),
        2
    );
    w.settle();
    w.run(vec![
        Op::PutItem {
            id: 2,
            level: 35,
            name: "moved".into(),
        },
        Op::DropItem { id: 3 },
        Op::PutItem {
            id: 9,
            level: 90,
            name: "new".into(),
        },
    ]);
    w.settle();
    let item = w.engine.schema().table("item").unwrap().id;
    assert_eq!(w.mirrors[&a].rows(item), w.server_rows::<Item>(|_| true));
    assert_eq!(
        w.mirrors[&b].rows(item),
        w.server_rows::<Item>(|i| i.level >= 30 && i.name != "i5")
    );
    assert_eq!(w.mirrors[&b].rows(item).len(), 3, "ids 2, 4 and 9");
}

#[test]
fn owner_and_private_rules_hold_against_hostile_queries() {
    let mut w = World::new(generous());
    w.run(vec![
        Op::PutBag {
            id: 1,
            owner: 100,
            gold: 5,
        },
        Op::PutBag {
            id: 2,
            owner: 200,
            gold: 7,
        },
        Op::PutBag {
            id: 3,
            owner: 100,
            gold: 9,
        },
    ]);
    w.tick();
    let a = w.connect(1, 100);
    let schema = w.engine.schema().clone();
    let bag = schema.table("bag").unwrap().id;
    for (i, hostile) in [
        "SELECT * FROM bag",
        "SELECT * FROM bag WHERE owner <> :sender",
        "SELECT * FROM bag WHERE gold > 0 OR owner = '0000000000000000000000000000000000000000000000000000000000000000'",
        "SELECT * FROM bag WHERE owner = '00000000000000000000000000000000000000000000000000000000000000c8'",
    ]
    .into_iter()
    .enumerate()
    {
        w.subscribe(a, i as u32, hostile).unwrap();
    }
    w.settle();
    assert_eq!(
        w.mirrors[&a].rows(bag),
        w.server_rows::<Bag>(|b| b.owner == Identity::from_u64(100))
    );
    assert_eq!(
        w.subscribe(a, 9, "SELECT * FROM secret"),
        Err(SubscribeError::Query(QueryError::PrivateTable(
            "secret".into()
        )))
    );
    // Ownership changes move rows in and out of the view.
    w.run(vec![
        Op::PutBag {
            id: 2,
            owner: 100,
            gold: 7,
        },
        Op::PutBag {
            id: 1,
            owner: 200,
            gold: 5,
        },
    ]);
    w.settle();
    assert_eq!(
        w.mirrors[&a].rows(bag),
        w.server_rows::<Bag>(|b| b.owner == Identity::from_u64(100))
    );
}

#[test]
fn bad_sql_errors_name_the_problem() {
    let mut w = World::new(generous());
    let a = w.connect(1, 1);
    let cases = [
        ("SELEKT * FROM item", "SQL syntax error"),
        ("SELECT id FROM item", "column list `id`"),
        ("SELECT * FROM item ORDER BY level", "ORDER BY"),
        ("SELECT * FROM item LIMIT 3", "LIMIT"),
        ("SELECT * FROM item JOIN bag ON item.id = bag.id", "JOIN"),
        ("SELECT * FROM nowhere", "no table named \"nowhere\""),
        (
            "SELECT * FROM item WHERE colour = 'red'",
            "has no column \"colour\"",
        ),
        (
            "SELECT * FROM item WHERE level = 'high'",
            "cannot compare with `'high'`",
        ),
        (
            "SELECT * FROM item WHERE level IN (1, 2)",
            "condition `level IN (1, 2)`",
        ),
        (
            "SELECT * FROM item WHERE level > 1 OR within(level, :focus, 3)",
            "ANDed",
        ),
        (
            "SELECT * FROM mob WHERE within(pos, :target, 3)",
            "must be :focus",
        ),
        (
            "SELECT * FROM mob WHERE within(hp, :focus, 3)",
            "needs a Vec2 or Vec3 column",
        ),
        (
            "SELECT * FROM item WHERE level = :other",
            "parameter :other",
        ),
        ("DELETE FROM item", "only SELECT is supported"),
        (
            "SELECT * FROM item; SELECT * FROM bag",
            "more than one statement",
        ),
        (
            "SELECT * FROM item WHERE level = 99999999999",
            "out of range",
        ),
    ];
    for (i, (sql, expected)) in cases.iter().enumerate() {
        let err = w.subscribe(a, i as u32, sql).unwrap_err().to_string();
        assert!(
            err.contains(expected),
            "{sql}: {err:?} does not mention {expected:?}"
        );
    }
    assert_eq!(w.publisher.stats().shared_queries, 0);
}

#[test]
fn spatial_views_follow_focus_with_hysteresis() {
    let config = PublishConfig {
        hysteresis: 5.0,
        ..generous()
    };
    let mut w = World::new(config);
    w.run(
        (0..40)
            .map(|i| Op::PutMob {
                id: i,
                x: i as f32 * 10.0,
                y: 0.0,
                hp: 1,
            })
            .collect(),
    );
    w.tick();
    let a = w.connect(1, 1);
    w.subscribe(a, 1, "SELECT * FROM mob WHERE within(pos, :focus, 50)")
        .unwrap();
    w.publisher.set_focus(a, Vec3::new(200.0, 0.0, 0.0));
    w.settle();
    let mob = w.engine.schema().table("mob").unwrap().id;
    let ids = |w: &World| -> Vec<u32> {
        w.mirrors[&a]
            .tables
            .get(&mob)
            .map(|t| t.keys().map(|pk| u32::from_bytes(pk).unwrap()).collect())
            .unwrap_or_default()
    };
    assert_eq!(ids(&w), (15..=25).collect::<Vec<_>>());

    // Mob 26 hovers around the edge (radius 50, leave at 55): it enters once and stays.
    let mut records_before = w.mirrors[&a].records;
    for step in 0..20 {
        let x = 200.0 + if step % 2 == 0 { 49.0 } else { 53.0 };
        w.run(vec![Op::PutMob {
            id: 26,
            x,
            y: 0.0,
            hp: 1,
        }]);
        w.settle();
        assert!(ids(&w).contains(&26), "flapped out at step {step}");
    }
    let per_move = (w.mirrors[&a].records - records_before) as f32 / 20.0;
    assert!(per_move <= 1.0, "one record per move, got {per_move}");
    // Beyond radius + margin it leaves.
    w.run(vec![Op::PutMob {
        id: 26,
        x: 256.0,
        y: 0.0,
        hp: 1,
    }]);
    w.settle();
    assert!(!ids(&w).contains(&26));
    // Moving the focus moves the view.
    records_before = w.mirrors[&a].records;
    w.publisher.set_focus(a, Vec3::new(0.0, 0.0, 0.0));
    w.settle();
    assert_eq!(ids(&w), (0..=5).collect::<Vec<_>>());
    assert!(w.mirrors[&a].records > records_before);
}

/// Event rows reach spatial subscriptions (proximity chat): each row once, the tick it
/// happens, to the clients near it and to no one else, and never again after.
#[test]
fn spatial_subscriptions_receive_event_rows_in_range_once() {
    let mut w = World::new(generous());
    let shout = w.engine.schema().table("shout").unwrap().id;
    let near = w.connect(1, 1);
    let far = w.connect(2, 2);
    let everyone = w.connect(3, 3);
    for (client, focus) in [(near, Vec3::ZERO), (far, Vec3::new(500.0, 0.0, 0.0))] {
        w.subscribe(
            client,
            1,
            "SELECT * FROM shout WHERE within(pos, :focus, 40)",
        )
        .unwrap();
        w.publisher.set_focus(client, focus);
    }
    w.subscribe(everyone, 1, "SELECT * FROM shout").unwrap();
    w.tick();
    let texts = |w: &World, c: ConnectionId| -> Vec<String> {
        w.mirrors[&c]
            .tables
            .get(&shout)
            .map(|t| {
                t.values()
                    .map(|r| match &r.columns[2] {
                        Value::String(s) => s.clone(),
                        other => panic!("{other:?}"),
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    w.run(vec![
        Op::Shout {
            x: 10.0,
            y: 5.0,
            text: "hello".into(),
        },
        Op::Shout {
            x: 90.0,
            y: 0.0,
            text: "too far".into(),
        },
    ]);
    let records = |w: &World, c: ConnectionId| w.mirrors[&c].records;
    w.tick();
    assert_eq!(texts(&w, near), ["hello"]);
    assert!(texts(&w, far).is_empty());
    assert_eq!(texts(&w, everyone), ["hello", "too far"]);
    // Nothing more arrives later: the rows lived for their tick only.
    let before = (records(&w, near), records(&w, everyone));
    for _ in 0..5 {
        w.tick();
    }
    assert_eq!((records(&w, near), records(&w, everyone)), before);
    assert_eq!(w.publisher.stats().dirty, 0);
}

/// The mob a crowd test's client follows with its focus (its own avatar).
const OWN: u32 = 1_000;

/// A crowd's tick: 80 mobs on a 4 m grid around the origin, shifted east by 3 cm a step, and
/// the client's own mob at `own`.
fn crowd_step(step: u32, own: (f32, f32)) -> Vec<Op> {
    let mut ops: Vec<Op> = (0..80u32)
        .map(|i| Op::PutMob {
            id: i,
            x: (i % 10) as f32 * 4.0 - 20.0 + step as f32 * 0.03,
            y: (i / 10) as f32 * 4.0 - 16.0,
            hp: 10,
        })
        .collect();
    ops.push(Op::PutMob {
        id: OWN,
        x: own.0,
        y: own.1,
        hp: 10,
    });
    ops
}

/// A world publishing under `config` that holds the crowd, with client 1 subscribed to every
/// mob within 100 m of its focus (on its own mob), settled; with the client and the mob table.
fn crowd_world(config: PublishConfig) -> (World, ConnectionId, u32) {
    let mut w = World::new(config);
    w.run(crowd_step(0, (1.0, 1.0)));
    w.tick();
    let a = w.connect(1, 1);
    w.subscribe(a, 1, "SELECT * FROM mob WHERE within(pos, :focus, 100)")
        .unwrap();
    w.publisher.set_focus(a, Vec3::new(1.0, 1.0, 0.0));
    w.settle();
    let mob = w.engine.schema().table("mob").unwrap().id;
    (w, a, mob)
}

/// A client whose budget cannot carry its whole view still sees the row its focus follows (its
/// own avatar) change every tick: that row goes before every other queued one, while the
/// others take turns.
#[test]
fn the_row_the_focus_follows_goes_first_when_the_budget_binds() {
    let (mut w, a, mob) = crowd_world(tight());
    let own_row = |w: &World| {
        let server = w.server_rows::<Mob>(|m| m.id == OWN);
        let mirror: Vec<_> = w.mirrors[&a]
            .rows(mob)
            .into_iter()
            .filter(|r| r[0] == Value::Unsigned(u64::from(OWN)))
            .collect();
        (server, mirror)
    };
    let mut lagging_ticks = 0;
    for step in 1..=40u32 {
        // The whole crowd moves, and so does the client's own row, with the focus on it.
        let (x, y) = (1.0 + step as f32 * 0.25, 1.0);
        w.run(crowd_step(step, (x, y)));
        w.publisher.set_focus(a, Vec3::new(x, y, 0.0));
        w.tick();
        let (server, mirror) = own_row(&w);
        assert_eq!(mirror, server, "tick {step}: the client's own row lags");
        if w.mirrors[&a].rows(mob) != w.server_rows::<Mob>(|_| true) {
            lagging_ticks += 1;
        }
    }
    assert!(
        lagging_ticks >= 30,
        "the budget was meant to bind: the rest of the view lagged in only {lagging_ticks} of 40 ticks"
    );
    w.settle();
    assert_eq!(w.mirrors[&a].rows(mob), w.server_rows::<Mob>(|_| true));
}

/// With `bound_flush_bytes`, a client the budget cannot keep up with has its queue ranked and
/// sent once it has accrued that much (here every fourth tick or so), not every tick, while the row
/// its focus follows still goes out every tick; once the crowd stops, it converges. A budget
/// so small that the own row's sends eat what it accrues still gets the crowd now and then.
#[test]
fn a_budget_bound_client_is_published_in_batches_but_its_own_row_every_tick() {
    // Ticks (of 40) in which the crowd's rows in the mirror changed, for each setting.
    let mut crowd_ticks = Vec::new();
    for (budget_bytes_per_second, bound_flush_bytes) in [(3_000, 0), (3_000, 600), (1_000, 600)] {
        let (mut w, a, mob) = crowd_world(PublishConfig {
            budget_bytes_per_second,
            max_banked: Duration::from_millis(500),
            bound_flush_bytes,
            ..PublishConfig::default()
        });
        let is_own = |r: &Vec<Value>| r[0] == Value::Unsigned(u64::from(OWN));
        let crowd_rows = |w: &World| -> Vec<Vec<Value>> {
            w.mirrors[&a]
                .rows(mob)
                .into_iter()
                .filter(|r| !is_own(r))
                .collect()
        };
        let mut changed = 0;
        for step in 1..=40u32 {
            let (x, y) = (1.0 + step as f32 * 0.25, 1.0);
            w.run(crowd_step(step, (x, y)));
            w.publisher.set_focus(a, Vec3::new(x, y, 0.0));
            let before = crowd_rows(&w);
            w.tick();
            let server = w.server_rows::<Mob>(|m| m.id == OWN);
            let mirror: Vec<_> = w.mirrors[&a].rows(mob).into_iter().filter(is_own).collect();
            // (1,000 bytes/s is less than the own row alone costs a tick with its datagram.)
            if budget_bytes_per_second >= 3_000 {
                assert_eq!(
                    mirror, server,
                    "bound_flush_bytes {bound_flush_bytes}, tick {step}: the client's own row lags"
                );
            }
            if crowd_rows(&w) != before {
                changed += 1;
            }
        }
        w.settle();
        assert_eq!(w.mirrors[&a].rows(mob), w.server_rows::<Mob>(|_| true));
        crowd_ticks.push(changed);
    }
    assert!(
        crowd_ticks[0] >= 35 && crowd_ticks[1] <= 20 && crowd_ticks[2] >= 2,
        "ticks in which the crowd was published, every tick / in batches / in batches on a \
         small budget: {crowd_ticks:?}"
    );
}

/// A budget a crowd of moving rows outruns: 3 KB/s, little banked.
fn tight() -> PublishConfig {
    PublishConfig {
        budget_bytes_per_second: 3_000,
        max_banked: Duration::from_millis(100),
        ..PublishConfig::default()
    }
}

/// In a crowd the budget cannot keep up with, a row whose news changed (a column other than its
/// quantized position: here its hit points) reaches the client within a tick or two, while
/// rows that only moved wait their turn; ranked alike (`news_urgency` 1), the hits wait too.
/// The ranking is compared with the client published every tick (`bound_flush_bytes` 0); with
/// the default batches the news still shows within two ticks.
#[test]
fn news_goes_before_motion_when_the_budget_binds() {
    let delays = |news_urgency: f32, bound_flush_bytes: u32| {
        let mut w = World::new(PublishConfig {
            news_urgency,
            bound_flush_bytes,
            ..tight()
        });
        let crowd = |step: u32, hurt: Option<u32>| {
            (0..80u32)
                .map(|i| Op::PutMob {
                    id: i,
                    x: (i % 10) as f32 * 4.0 - 20.0 + step as f32 * 0.03,
                    y: (i / 10) as f32 * 4.0 - 16.0,
                    hp: if hurt == Some(i) { 5 } else { 10 },
                })
                .collect::<Vec<_>>()
        };
        w.run(crowd(0, None));
        w.tick();
        let a = w.connect(1, 1);
        w.subscribe(a, 1, "SELECT * FROM mob WHERE within(pos, :focus, 100)")
            .unwrap();
        w.publisher.set_focus(a, Vec3::new(-20.0, -16.0, 0.0));
        w.settle();
        let mob = w.engine.schema().table("mob").unwrap().id;
        let hp_seen = |w: &World, id: u32| {
            w.mirrors[&a]
                .rows(mob)
                .into_iter()
                .find(|r| r[0] == Value::Unsigned(u64::from(id)))
                .map(|r| r[2].clone())
        };
        let (mut delays, mut lagging_ticks) = (Vec::new(), 0);
        // Far corners of the crowd, 40-50 m from the focus, each hurt for ten ticks.
        for (round, hurt) in [79u32, 69, 78, 59].into_iter().enumerate() {
            let mut seen_after = 99;
            for t in 0..10u32 {
                let step = 1 + round as u32 * 10 + t;
                w.run(crowd(step, Some(hurt)));
                w.tick();
                if seen_after == 99 && hp_seen(&w, hurt) == Some(Value::Signed(5)) {
                    seen_after = t + 1;
                }
                if w.mirrors[&a].rows(mob) != w.server_rows::<Mob>(|_| true) {
                    lagging_ticks += 1;
                }
            }
            delays.push(seen_after);
        }
        assert!(
            lagging_ticks >= 30,
            "the budget was meant to bind: the view lagged in only {lagging_ticks} of 40 ticks"
        );
        w.settle();
        assert_eq!(w.mirrors[&a].rows(mob), w.server_rows::<Mob>(|_| true));
        delays
    };
    let batched = delays(16.0, PublishConfig::default().bound_flush_bytes);
    assert!(
        batched.iter().all(|&ticks| ticks <= 2),
        "ticks until the hit showed, per round, published in batches: {batched:?}"
    );
    let first = delays(16.0, 0);
    assert!(
        first.iter().all(|&ticks| ticks <= 2),
        "ticks until the hit showed, per round: {first:?}"
    );
    let alike = delays(1.0, 0);
    assert!(
        alike.iter().sum::<u32>() > first.iter().sum::<u32>() + 4,
        "ranked alike, hits showed after {alike:?} ticks; with news first after {first:?}"
    );
}

/// A client the budget lets fall further behind than the row history (seven versions) gets
/// rebase records: the columns changed since its version, whole, not the full row. Three hundred
/// identity-keyed avatars moving every tick on 3 KB/s are each refreshed every few dozen ticks,
/// and a refresh costs the position, not the 32-byte key and owner again.
#[test]
fn a_client_far_behind_is_sent_what_changed_not_the_whole_row() {
    let run = |rebase: bool| {
        let mut w = World::new(PublishConfig { rebase, ..tight() });
        let put = |step: u32| {
            (0..300u32)
                .map(|i| Op::PutAvatar {
                    owner: 1000 + u64::from(i),
                    x: (i % 20) as f32 * 2.0 - 20.0 + step as f32 * 0.05,
                    y: (i / 20) as f32 * 2.0 - 15.0,
                })
                .collect::<Vec<_>>()
        };
        w.run(put(0));
        w.tick();
        let a = w.watch_avatars();
        let avatar = w.engine.schema().table("avatar").unwrap().id;
        let mark = w.mirrors[&a].mark();
        let mut lagging_ticks = 0;
        for step in 1..=60 {
            w.run(put(step));
            w.tick();
            if w.mirrors[&a].rows(avatar) != w.server_rows::<Avatar>(|_| true) {
                lagging_ticks += 1;
            }
        }
        let (records, per_record) = w.mirrors[&a].since(mark);
        assert_eq!(lagging_ticks, 60, "the budget was meant to bind");
        w.settle();
        assert_eq!(
            w.mirrors[&a].rows(avatar),
            w.server_rows::<Avatar>(|_| true)
        );
        (records, per_record)
    };
    // 3 KB/s for 3 s carries ~9 KB: ~130 full rows, or over a thousand rebases.
    let (records, per_record) = run(true);
    assert!(records > 600, "{records} records in 60 ticks");
    assert!(per_record <= 10.0, "{per_record} bytes per record");
    let (full_rows, per_full_row) = run(false);
    assert!(
        full_rows * 2 < records && per_full_row > 4.0 * per_record,
        "without rebases {full_rows} records of {per_full_row} bytes, with {records} of {per_record}"
    );
}

/// Rows keyed by a 32-byte identity move in as few bytes as any other: after its first upsert a
/// row is named by its handle, and rows leaving and re-entering the view reuse freed handles.
#[test]
fn identity_keyed_rows_move_in_a_few_bytes_by_handle() {
    let mut w = World::new(generous());
    let put = |step: u32, x_shift: f32| {
        (0..60u32)
            .map(|i| Op::PutAvatar {
                owner: 1000 + u64::from(i),
                x: i as f32 + x_shift + step as f32 * 0.07,
                y: step as f32 * 0.05,
            })
            .collect::<Vec<_>>()
    };
    w.run(put(0, 0.0));
    w.tick();
    let a = w.watch_avatars();
    let avatar = w.engine.schema().table("avatar").unwrap().id;
    assert_eq!(w.mirrors[&a].rows(avatar).len(), 60);
    let mark = w.mirrors[&a].mark();
    for step in 1..=20 {
        w.run(put(step, 0.0));
        w.tick();
    }
    w.settle();
    let (updates, per_update) = w.mirrors[&a].since(mark);
    assert_eq!(updates, 1200);
    assert!(
        per_update <= 5.0,
        "{per_update} bytes per moving identity-keyed update"
    );
    // Half the avatars walk out of range and back, three times: every leave frees a handle,
    // every return takes one again, and the mirror's strict handle checks hold throughout.
    for round in 0..3 {
        let out: Vec<Op> = (0..30u32)
            .map(|i| Op::PutAvatar {
                owner: 1000 + u64::from(i),
                x: 500.0 + i as f32,
                y: round as f32,
            })
            .collect();
        w.run(out);
        w.settle();
        assert_eq!(w.mirrors[&a].rows(avatar).len(), 30);
        w.run(put(30 + round, 0.0));
        w.settle();
        assert_eq!(w.mirrors[&a].rows(avatar).len(), 60);
    }
    assert_eq!(
        w.mirrors[&a].rows(avatar),
        w.server_rows::<Avatar>(|_| true)
    );
    // Sixty rows held at most at once: handles never went past 60.
    assert_eq!(w.mirrors[&a].handles[&avatar].given(), 60);
}

#[test]
fn moving_rows_are_sent_as_small_quantized_deltas() {
    let mut w = World::new(generous());
    w.run(
        (0..50)
            .map(|i| Op::PutMob {
                id: i,
                x: i as f32,
                y: 0.0,
                hp: 10,
            })
            .collect(),
    );
    w.tick();
    let a = w.connect(1, 1);
    w.subscribe(a, 1, "SELECT * FROM mob WHERE within(pos, :focus, 100)")
        .unwrap();
    w.publisher.set_focus(a, Vec3::ZERO);
    w.settle();
    let mark = w.mirrors[&a].mark();
    for step in 1..=20 {
        w.run(
            (0..50)
                .map(|i| Op::PutMob {
                    id: i,
                    x: i as f32 + step as f32 * 0.07,
                    y: step as f32 * 0.05,
                    hp: 10,
                })
                .collect(),
        );
        w.tick();
    }
    w.settle();
    let (updates, per_update) = w.mirrors[&a].since(mark);
    assert_eq!(updates, 1000);
    assert!(
        per_update <= 6.0,
        "{per_update} bytes per moving-entity update"
    );
    let mob = w.engine.schema().table("mob").unwrap().id;
    assert_eq!(w.mirrors[&a].rows(mob), w.server_rows::<Mob>(|_| true));
}

/// A world of `items` items with 40-character names and one client subscribed to all of them
/// (more than a small budget sends at once).
fn subscribed_to_items(config: PublishConfig, items: u32) -> (World, ConnectionId) {
    let mut w = World::new(config);
    let name = "x".repeat(40);
    w.run(
        (1..=items)
            .map(|id| Op::PutItem {
                id,
                level: 1,
                name: name.clone(),
            })
            .collect(),
    );
    w.tick();
    let a = w.connect(1, 1);
    w.subscribe(a, 1, "SELECT * FROM item").unwrap();
    (w, a)
}

/// The budget bounds the wire, not only the rows: a publish that sends a client anything is
/// charged the datagram's overhead and each message's framing, and what the server charges for
/// the client's other messages (its reducer replies) comes out of the same budget.
#[test]
fn the_budget_pays_for_framing_and_for_charged_replies() {
    let budget = 4_000u32;
    let config = PublishConfig {
        budget_bytes_per_second: budget,
        max_banked: Duration::from_millis(50),
        ..PublishConfig::default()
    };
    let overhead = config.wire_overhead_bytes as usize;
    let framing = orrery_subscription::MESSAGE_FRAMING_BYTES as usize;
    // Returns the wire bytes the publisher accounted for over 100 ticks (records, framing,
    // datagram overhead and `charge` per tick) and the record bytes alone.
    let run = |charge: u32| {
        let (mut w, a) = subscribed_to_items(config.clone(), 400);
        let (mut wire, mut records) = (0usize, 0usize);
        for _ in 0..100 {
            w.publisher.charge(a, charge);
            let (bytes, messages) = w.tick_messages();
            let sent = bytes.get(&a).copied().unwrap_or(0);
            let count = messages.iter().filter(|m| m.client == a).count();
            records += sent;
            wire += sent + count * framing + charge as usize;
            if count > 0 {
                wire += overhead;
            }
        }
        (wire, records)
    };
    // 100 ticks of 50 ms: 5 s of budget, plus at most one record and one publish's framing.
    let allowed = budget as usize * 5 + 100 + overhead + 2 * framing;
    let (wire, records) = run(0);
    assert!(wire <= allowed, "{wire} wire bytes > {allowed}");
    assert!(
        wire * 10 >= allowed * 9,
        "{wire}: the client was meant to be budget-bound"
    );
    let (charged_wire, charged_records) = run(60);
    assert!(
        charged_wire <= allowed,
        "{charged_wire} wire bytes > {allowed}"
    );
    // 60 bytes a tick of replies leave 6,000 fewer bytes for the rows.
    let fewer = records - charged_records;
    assert!(
        (5_000..=7_000).contains(&fewer),
        "{fewer} fewer record bytes for 6,000 bytes of charged replies"
    );
}

#[test]
fn budget_is_never_exceeded_by_more_than_one_record_and_updates_coalesce() {
    let budget = 2_000u32;
    let config = PublishConfig {
        budget_bytes_per_second: budget,
        max_banked: Duration::from_millis(50),
        ..PublishConfig::default()
    };
    let (mut w, a) = subscribed_to_items(config, 300);
    let long_name = "x".repeat(40);
    let max_record = 60usize;
    let mut sent_total = 0usize;
    let mut budget_total = 0f64;
    for tick in 0..200 {
        // Item 1 changes every tick while the client is still catching up.
        w.run(vec![Op::PutItem {
            id: 1,
            level: tick,
            name: long_name.clone(),
        }]);
        let sent = w.tick().get(&a).copied().unwrap_or(0);
        sent_total += sent;
        budget_total += f64::from(budget) * 0.05;
        assert!(
            sent_total as f64 <= budget_total + max_record as f64,
            "tick {tick}: {sent_total} > {budget_total}"
        );
    }
    w.settle();
    let item = w.engine.schema().table("item").unwrap().id;
    assert_eq!(w.mirrors[&a].rows(item), w.server_rows::<Item>(|_| true));
    // 300 rows plus item 1 sent in some of its 200 states: far fewer than 500 records.
    assert!(
        w.mirrors[&a].records < 400,
        "{} records: updates did not coalesce",
        w.mirrors[&a].records
    );
}

#[test]
fn subscription_state_is_freed_after_churn() {
    let mut w = World::new(generous());
    w.run(
        (1..=20)
            .map(|id| Op::PutItem {
                id,
                level: id,
                name: "n".into(),
            })
            .collect(),
    );
    w.run(vec![Op::PutBag {
        id: 1,
        owner: 7,
        gold: 1,
    }]);
    w.tick();
    let rows_before = w.publisher.stats().mirrored_rows;
    for cycle in 0..3000u64 {
        let client = w.connect(1000 + cycle, cycle % 5);
        w.subscribe(client, 1, "SELECT * FROM item WHERE level > 5")
            .unwrap();
        w.subscribe(client, 2, "SELECT * FROM bag").unwrap();
        w.subscribe(client, 3, "SELECT * FROM mob WHERE within(pos, :focus, 10)")
            .unwrap();
        if cycle % 3 == 0 {
            w.publisher.unsubscribe(client, 1).unwrap();
        }
        if cycle % 7 == 0 {
            w.tick();
        }
        w.publisher.disconnect(client);
        w.mirrors.remove(&client);
    }
    let stats = w.publisher.stats();
    assert_eq!(
        (
            stats.clients,
            stats.shared_queries,
            stats.spatial_queries,
            stats.dirty
        ),
        (0, 0, 0, 0)
    );
    assert_eq!(stats.mirrored_rows, rows_before);
}

#[derive(Clone, Debug)]
enum Action {
    Ops(Vec<Op>),
    Focus(u8, f32, f32),
    Tick,
}

fn action() -> impl Strategy<Value = Action> {
    let op = prop_oneof![
        (1u32..15, 0u32..5, "[ab]{1,3}").prop_map(|(id, level, name)| Op::PutItem {
            id,
            level,
            name
        }),
        (1u32..15).prop_map(|id| Op::DropItem { id }),
        (1u32..10, 1u64..4, -5i64..5).prop_map(|(id, owner, gold)| Op::PutBag { id, owner, gold }),
        (1u32..10).prop_map(|id| Op::DropBag { id }),
        (1u32..20, -60f32..60.0, -60f32..60.0, 0i32..3).prop_map(|(id, x, y, hp)| Op::PutMob {
            id,
            x,
            y,
            hp
        }),
        (1u32..20).prop_map(|id| Op::DropMob { id }),
    ];
    prop_oneof![
        4 => proptest::collection::vec(op, 1..5).prop_map(Action::Ops),
        1 => (0u8..3, -40f32..40.0, -40f32..40.0).prop_map(|(c, x, y)| Action::Focus(c, x, y)),
        3 => Just(Action::Tick),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn mirrors_converge_to_the_visible_rows(actions in proptest::collection::vec(action(), 1..40), budget in prop_oneof![Just(600u32), Just(1u32 << 20)]) {
        let config = PublishConfig { budget_bytes_per_second: budget, hysteresis: 4.0, ..PublishConfig::default() };
        let mut w = World::new(config);
        let clients: Vec<ConnectionId> = (0..3).map(|c| w.connect(c, c + 1)).collect();
        w.subscribe(clients[0], 1, "SELECT * FROM item WHERE level >= 2").unwrap();
        w.subscribe(clients[0], 2, "SELECT * FROM bag").unwrap();
        w.subscribe(clients[1], 1, "SELECT * FROM item").unwrap();
        w.subscribe(clients[1], 2, "SELECT * FROM mob WHERE within(pos, :focus, 30) AND hp > 0").unwrap();
        w.subscribe(clients[2], 1, "SELECT * FROM mob WHERE within(pos, :focus, 20)").unwrap();
        w.subscribe(clients[2], 2, "SELECT * FROM bag WHERE gold > 0").unwrap();
        let mut focus = [Vec3::ZERO; 3];
        for (i, c) in clients.iter().enumerate() {
            w.publisher.set_focus(*c, focus[i]);
        }
        for action in actions {
            match action {
                Action::Ops(ops) => w.run(ops),
                Action::Focus(c, x, y) => {
                    focus[c as usize] = Vec3::new(x, y, 0.0);
                    w.publisher.set_focus(clients[c as usize], focus[c as usize]);
                }
                Action::Tick => { w.tick(); }
            }
        }
        w.settle();
        let item = w.engine.schema().table("item").unwrap().id;
        let bag = w.engine.schema().table("bag").unwrap().id;
        let mob = w.engine.schema().table("mob").unwrap().id;
        prop_assert_eq!(w.mirrors[&clients[0]].rows(item), w.server_rows::<Item>(|i| i.level >= 2));
        prop_assert_eq!(w.mirrors[&clients[0]].rows(bag), w.server_rows::<Bag>(|b| b.owner == Identity::from_u64(1)));
        prop_assert_eq!(w.mirrors[&clients[1]].rows(item), w.server_rows::<Item>(|_| true));
        prop_assert_eq!(w.mirrors[&clients[2]].rows(bag), w.server_rows::<Bag>(|b| b.owner == Identity::from_u64(3) && b.gold > 0));
        // Spatial views: everything within the radius is there, nothing beyond radius + margin,
        // and every row held matches the server's.
        for (c, radius, need_hp) in [(1usize, 30.0f32, true), (2, 20.0, false)] {
            let held = w.mirrors[&clients[c]].rows(mob);
            let all = w.server_rows::<Mob>(|_| true);
            let server: Vec<Mob> = w.engine.rows::<Mob>();
            for (row, values) in server.iter().zip(&all) {
                let d = row.pos.distance(focus[c].truncate());
                let qualifies = !need_hp || row.hp > 0;
                if d <= radius - 0.01 && qualifies {
                    prop_assert!(held.contains(values), "client {c} misses mob {} at {d}", row.id);
                }
                if d > radius + 4.0 + 0.01 || !qualifies {
                    prop_assert!(!held.contains(values), "client {c} holds mob {} at {d}", row.id);
                }
            }
            for values in &held {
                prop_assert!(all.contains(values), "client {c} holds a stale row {values:?}");
            }
        }
    }
}

#[test]
fn one_off_reads_obey_visibility() {
    let mut w = World::new(generous());
    w.run(vec![
        Op::PutBag {
            id: 1,
            owner: 100,
            gold: 5,
        },
        Op::PutBag {
            id: 2,
            owner: 200,
            gold: 7,
        },
        Op::PutItem {
            id: 1,
            level: 3,
            name: "a".into(),
        },
        Op::PutItem {
            id: 2,
            level: 9,
            name: "b".into(),
        },
        Op::PutMob {
            id: 1,
            x: 3.0,
            y: 0.0,
            hp: 1,
        },
        Op::PutMob {
            id: 2,
            x: 30.0,
            y: 0.0,
            hp: 1,
        },
    ]);
    w.tick();
    let schema = w.engine.schema().clone();
    let me = Identity::from_u64(100);
    let read =
        |w: &mut World, sql: &str, focus: Option<Vec3>| w.publisher.read(&schema, sql, me, focus);
    let (_, bags) = read(&mut w, "SELECT * FROM bag", None).unwrap();
    assert_eq!(
        bags.iter()
            .map(|b| Bag::from_bytes(b).unwrap().id)
            .collect::<Vec<_>>(),
        vec![1]
    );
    let (_, bags) = read(&mut w, "SELECT * FROM bag WHERE owner <> :sender", None).unwrap();
    assert!(bags.is_empty());
    let (_, items) = read(&mut w, "SELECT * FROM item WHERE level > 5", None).unwrap();
    assert_eq!(
        items
            .iter()
            .map(|i| Item::from_bytes(i).unwrap().id)
            .collect::<Vec<_>>(),
        vec![2]
    );
    let (_, mobs) = read(
        &mut w,
        "SELECT * FROM mob WHERE within(pos, :focus, 10)",
        Some(Vec3::ZERO),
    )
    .unwrap();
    assert_eq!(
        mobs.iter()
            .map(|m| Mob::from_bytes(m).unwrap().id)
            .collect::<Vec<_>>(),
        vec![1]
    );
    assert!(
        read(
            &mut w,
            "SELECT * FROM mob WHERE within(pos, :focus, 10)",
            None
        )
        .is_err()
    );
    assert_eq!(
        read(&mut w, "SELECT * FROM secret", None),
        Err(QueryError::PrivateTable("secret".into()))
    );
}

#[test]
fn rows_brought_back_by_a_rollback_keep_publishing() {
    let mut w = World::new(generous());
    w.run(vec![
        Op::PutMob {
            id: 1,
            x: 1.0,
            y: 0.0,
            hp: 3,
        },
        Op::PutMob {
            id: 2,
            x: 2.0,
            y: 0.0,
            hp: 3,
        },
    ]);
    w.tick();
    let a = w.connect(1, 1);
    w.subscribe(a, 1, "SELECT * FROM mob").unwrap();
    w.settle();
    w.engine
        .call_reducer("drop_mob_then_fail", Identity::ZERO, (1u32,))
        .unwrap_err();
    w.tick();
    for step in 0..5 {
        w.run(vec![Op::PutMob {
            id: 1,
            x: 1.0 + step as f32,
            y: 0.0,
            hp: 3,
        }]);
        w.tick();
    }
    w.run(vec![Op::DropMob { id: 1 }]);
    w.settle();
    let mob = w.engine.schema().table("mob").unwrap().id;
    assert_eq!(w.mirrors[&a].rows(mob), w.server_rows::<Mob>(|_| true));
    assert_eq!(w.mirrors[&a].rows(mob).len(), 1);
}

/// Clients are published in parallel chunks and rows' versions stored in parallel runs: the
/// messages, their order and every counter must be the same whatever the worker count, through
/// moves, deletes (and rows deleted and put back in one tick), events, budget-bound ranking and
/// clients coming and going.
#[test]
fn publish_output_does_not_depend_on_worker_count() {
    let config = |workers| PublishConfig {
        budget_bytes_per_second: 3_000,
        hysteresis: 4.0,
        workers,
        ..PublishConfig::default()
    };
    let mut worlds = [World::new(config(1)), World::new(config(3))];
    assert_eq!(worlds[0].publisher.workers(), 1);
    assert_eq!(worlds[1].publisher.workers(), 3);
    // Ticks this small are applied on the calling thread by default: store rows on the
    // workers in runs of two, so the split by slot is exercised too.
    worlds[1].publisher.set_apply_run(2);
    let mut state = 7u64;
    let mut next = move |n: u32| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 33) % u64::from(n)) as u32
    };
    let position = |v: u32| v as f32 - 100.0;
    for w in &mut worlds {
        for c in 0..70u64 {
            let id = w.connect(c, c % 9);
            w.subscribe(id, 1, "SELECT * FROM mob WHERE within(pos, :focus, 40)")
                .unwrap();
            w.subscribe(id, 2, "SELECT * FROM shout WHERE within(pos, :focus, 30)")
                .unwrap();
            if c % 4 == 0 {
                w.subscribe(id, 3, "SELECT * FROM item WHERE level > 1")
                    .unwrap();
            }
        }
    }
    let mut next_client = 1000u64;
    for tick in 0..80 {
        let mut ops = Vec::new();
        for _ in 0..40 {
            ops.push(match next(10) {
                0 => Op::DropMob { id: next(300) },
                1 => Op::Shout {
                    x: position(next(200)),
                    y: position(next(200)),
                    text: "hi".into(),
                },
                2 => Op::PutItem {
                    id: next(50),
                    level: next(4),
                    name: "gem".into(),
                },
                _ => Op::PutMob {
                    id: next(300),
                    x: position(next(200)),
                    y: position(next(200)),
                    hp: next(5) as i32,
                },
            });
        }
        let focus: Vec<(u64, Vec3)> = (0..6)
            .map(|_| {
                let p = Vec3::new(position(next(200)), position(next(200)), 0.0);
                (u64::from(next(70)), p)
            })
            .collect();
        let churn = tick % 10 == 5;
        let gone = u64::from(next(70));
        let mut outputs = Vec::new();
        for w in &mut worlds {
            w.run(ops.clone());
            for &(c, p) in &focus {
                w.publisher.set_focus(ConnectionId(c), p);
            }
            if churn {
                w.replace_client(ConnectionId(gone), next_client);
            }
            outputs.push(w.tick_messages().1);
        }
        if churn {
            next_client += 1;
        }
        assert!(
            outputs[0] == outputs[1],
            "tick {tick}: 1 and 3 workers published differently"
        );
        assert_eq!(worlds[0].publisher.stats(), worlds[1].publisher.stats());
    }
    let sent = worlds[0].publisher.stats().sent;
    assert!(sent.deltas > 1_000 && sent.deletes > 100, "{sent:?}");
    let busy = worlds[1].publisher.worker_busy();
    assert_eq!(busy.len(), 3);
    assert!(busy.iter().sum::<Duration>() > Duration::ZERO);
}

/// Incremental spatial refresh (from the rows that changed near a view, when its client's
/// focus has not moved) publishes byte for byte what re-querying every view publishes, on a
/// workload with every refresh trigger: small moves within and across cells, teleports,
/// inserts, deletes, condition changes, focus moves (small and large), radius changes,
/// shared queries over the same rows, event rows, disconnects and new clients.
#[test]
fn incremental_refresh_publishes_what_a_full_refresh_does() {
    let config = |incremental_refresh| PublishConfig {
        budget_bytes_per_second: 2_500,
        hysteresis: 4.0,
        workers: 1,
        incremental_refresh,
        ..PublishConfig::default()
    };
    let mut worlds = [World::new(config(false)), World::new(config(true))];
    let mut state = 11u64;
    let mut next = move |n: u32| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 33) % u64::from(n)) as u32
    };
    let position = |v: u32| v as f32 - 100.0;
    let mut mobs: BTreeMap<u32, (f32, f32)> = BTreeMap::new();
    let mut setup = Vec::new();
    for id in 0..240 {
        let p = (position(next(200)), position(next(200)));
        mobs.insert(id, p);
        setup.push(Op::PutMob {
            id,
            x: p.0,
            y: p.1,
            hp: next(5) as i32,
        });
    }
    let radius = |c: u64| 20 + (c % 4) * 8;
    let mut focus_of: BTreeMap<u64, Vec3> = (0..60u64)
        .map(|c| (c, Vec3::new(position(next(200)), position(next(200)), 0.0)))
        .collect();
    for w in &mut worlds {
        w.run(setup.clone());
        for c in 0..60u64 {
            let id = w.connect(c, c % 7);
            let sql = format!("SELECT * FROM mob WHERE within(pos, :focus, {})", radius(c));
            w.subscribe(id, 1, &sql).unwrap();
            w.subscribe(id, 2, "SELECT * FROM shout WHERE within(pos, :focus, 30)")
                .unwrap();
            if c % 3 == 0 {
                w.subscribe(id, 3, "SELECT * FROM mob WHERE hp > 3")
                    .unwrap();
            }
            if c % 5 == 0 {
                w.subscribe(
                    id,
                    4,
                    "SELECT * FROM mob WHERE within(pos, :focus, 12) AND hp > 1",
                )
                .unwrap();
            }
            w.publisher.set_focus(id, focus_of[&c]);
        }
    }
    let mut next_client = 1000u64;
    let mut radius_change = 0u32;
    for tick in 0..120 {
        let mut ops = Vec::new();
        for _ in 0..24 {
            let id = next(300);
            let op = match next(20) {
                0 => {
                    mobs.remove(&id);
                    Op::DropMob { id }
                }
                1 => Op::Shout {
                    x: position(next(200)),
                    y: position(next(200)),
                    text: "hi".into(),
                },
                2 | 3 => {
                    let p = (position(next(200)), position(next(200)));
                    mobs.insert(id, p);
                    Op::PutMob {
                        id,
                        x: p.0,
                        y: p.1,
                        hp: next(5) as i32,
                    }
                }
                _ => {
                    // A small step (within or across a 25 m cell, and across view edges).
                    let Some(&(x, y)) = mobs.range(id..).next().map(|(_, p)| p) else {
                        continue;
                    };
                    let id = *mobs.range(id..).next().unwrap().0;
                    let p = (
                        x + next(61) as f32 / 10.0 - 3.0,
                        y + next(61) as f32 / 10.0 - 3.0,
                    );
                    mobs.insert(id, p);
                    Op::PutMob {
                        id,
                        x: p.0,
                        y: p.1,
                        hp: next(5) as i32,
                    }
                }
            };
            ops.push(op);
        }
        // A few clients move: mostly a step, sometimes a jump.
        let mut moved: Vec<(u64, Vec3)> = Vec::new();
        for _ in 0..4 {
            let c = u64::from(next(60));
            let Some(p) = focus_of.get_mut(&c) else {
                continue;
            };
            *p = if next(4) == 0 {
                Vec3::new(position(next(200)), position(next(200)), 0.0)
            } else {
                *p + Vec3::new(
                    next(21) as f32 / 10.0 - 1.0,
                    next(21) as f32 / 10.0 - 1.0,
                    0.0,
                )
            };
            moved.push((c, *p));
        }
        let resize = (tick % 7 == 3).then(|| u64::from(next(60)));
        if resize.is_some() {
            radius_change += 1;
        }
        // A client adds a query: a view of the same rows, or a new spatial one.
        let added = (tick % 11 == 4).then(|| {
            let sql = if tick % 2 == 0 {
                "SELECT * FROM mob WHERE hp > 2"
            } else {
                "SELECT * FROM mob WHERE within(pos, :focus, 16)"
            };
            (u64::from(next(60)), 100 + tick, sql)
        });
        let churn = tick % 10 == 5;
        let gone = u64::from(next(60));
        let mut outputs = Vec::new();
        for w in &mut worlds {
            w.run(ops.clone());
            for &(c, p) in &moved {
                w.publisher.set_focus(ConnectionId(c), p);
            }
            if let Some(c) = resize {
                let id = ConnectionId(c);
                if w.publisher.unsubscribe(id, 1).is_ok() {
                    let sql = format!(
                        "SELECT * FROM mob WHERE within(pos, :focus, {})",
                        10 + radius_change * 3 % 40
                    );
                    w.subscribe(id, 1, &sql).unwrap();
                }
            }
            if let Some((c, query, sql)) = added {
                // The client may have left.
                let _ = w.subscribe(ConnectionId(c), query, sql);
            }
            if churn {
                w.replace_client(ConnectionId(gone), next_client);
            }
            outputs.push(w.tick_messages().1);
        }
        if churn {
            focus_of.remove(&gone);
            next_client += 1;
        }
        for (full, incremental) in outputs[0].iter().zip(&outputs[1]) {
            assert!(
                full == incremental,
                "tick {tick}: client {} table {}: a full refresh published {:?}, an incremental one {:?}",
                full.client,
                full.table,
                full.payload,
                incremental.payload
            );
        }
        assert_eq!(outputs[0].len(), outputs[1].len(), "tick {tick}");
        assert_eq!(worlds[0].publisher.stats(), worlds[1].publisher.stats());
    }
    let sent = worlds[0].publisher.stats().sent;
    assert!(sent.deltas > 1_000 && sent.deletes > 100, "{sent:?}");
    let (full, incremental) = worlds[1].publisher.refreshes();
    assert!(
        incremental > full,
        "mostly incremental: {incremental} incremental, {full} full"
    );
    assert_eq!(worlds[0].publisher.refreshes().1, 0);
}
