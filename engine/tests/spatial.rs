//! Spatial columns: reducer writes, rollbacks and system mutations keep the grid exact; every
//! query equals a brute-force scan; non-finite positions are rejected on every path.

#![allow(missing_docs)]

use std::collections::BTreeSet;

use orrery_engine::bevy_ecs::prelude::*;
use orrery_engine::glam::{Vec2, Vec3};
use orrery_engine::prelude::*;
use orrery_engine::{ReducerError, RowOp, SystemsExecutor, TableError, TableStore};
use proptest::prelude::*;

#[table(name = mob, public)]
#[derive(Clone, Debug, PartialEq)]
pub struct Mob {
    #[primary_key]
    #[auto_inc]
    pub id: u32,
    #[spatial(cell = 8.0)]
    pub pos: Vec2,
    #[index(btree)]
    pub team: u8,
}

#[table(name = drone, public)]
#[derive(Clone, Debug, PartialEq)]
pub struct Drone {
    #[primary_key]
    pub id: u32,
    #[spatial(cell = 5.0)]
    pub pos: Vec3,
}

#[derive(OrreryType, Clone, Debug, PartialEq)]
pub enum Op {
    Spawn { x: f32, y: f32, team: u8 },
    Move { id: u32, x: f32, y: f32 },
    Despawn { id: u32 },
}

#[reducer]
pub fn apply(ctx: &mut ReducerContext, ops: Vec<Op>, fail: bool) -> Result<(), String> {
    for op in ops {
        match op {
            Op::Spawn { x, y, team } => {
                ctx.db.mob().insert(Mob {
                    id: 0,
                    pos: Vec2::new(x, y),
                    team,
                })?;
            }
            Op::Move { id, x, y } => {
                if let Some(mob) = ctx.db.mob().id().find(&id) {
                    ctx.db.mob().id().update(Mob {
                        pos: Vec2::new(x, y),
                        ..mob
                    })?;
                }
            }
            Op::Despawn { id } => {
                ctx.db.mob().id().delete(&id);
            }
        }
    }
    if fail {
        Err("rolled back on purpose".into())
    } else {
        Ok(())
    }
}

#[reducer]
pub fn put_drone(ctx: &mut ReducerContext, id: u32, pos: Vec3) -> Result<(), String> {
    match ctx.db.drone().id().find(&id) {
        Some(_) => ctx.db.drone().id().update(Drone { id, pos })?,
        None => ctx.db.drone().insert(Drone { id, pos })?,
    };
    Ok(())
}

/// System moves and despawns requested by the test for the next tick.
#[derive(Resource, Default)]
pub struct Orders {
    pub shift: Vec<(u32, Vec2)>,
    pub kill: Vec<u32>,
}

fn obey(mut orders: ResMut<Orders>, mut mobs: Query<(Entity, &mut Mob)>, mut commands: Commands) {
    let shift = std::mem::take(&mut orders.shift);
    let kill = std::mem::take(&mut orders.kill);
    for (entity, mut mob) in &mut mobs {
        for (id, delta) in &shift {
            if *id == mob.id {
                mob.pos += *delta;
            }
        }
        if kill.contains(&mob.id) {
            commands.entity(entity).despawn();
        }
    }
}

/// Systems read the spatial index through the table store resource.
#[derive(Resource, Default)]
pub struct NearOrigin(pub usize);

fn count_near_origin(store: Res<TableStore<Mob>>, mut near: ResMut<NearOrigin>) {
    near.0 = 0;
    store
        .indexes()
        .pos()
        .for_each_in_radius(Vec2::ZERO, 10.0, |_, _| near.0 += 1);
}

fn engine() -> Engine {
    let module = Module::builder("spatial")
        .table::<Mob>()
        .table::<Drone>()
        .reducers(reducers![apply, put_drone])
        .resource(Orders::default())
        .resource(NearOrigin::default())
        .add_systems((obey, count_near_origin).chain())
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

fn ts(n: i64) -> Timestamp {
    Timestamp::from_micros(n * 50_000)
}

/// Every spatial query through the reducer API equals a brute-force scan of the rows.
fn check_queries(engine: &mut Engine, probes: &[(f32, f32, f32)]) {
    engine.check_integrity().unwrap();
    let rows = engine.rows::<Mob>();
    for &(x, y, r) in probes {
        let center = Vec2::new(x, y);
        let expected: BTreeSet<u32> = rows
            .iter()
            .filter(|m| m.pos.distance_squared(center) <= r * r)
            .map(|m| m.id)
            .collect();
        let (min, max) = (center - Vec2::splat(r), center + Vec2::splat(r));
        let expected_box: BTreeSet<u32> = rows
            .iter()
            .filter(|m| m.pos.cmpge(min).all() && m.pos.cmple(max).all())
            .map(|m| m.id)
            .collect();
        let mut expected_near: Vec<f32> = rows.iter().map(|m| m.pos.distance(center)).collect();
        expected_near.sort_by(f32::total_cmp);
        expected_near.truncate(3);
        engine.read(|db| {
            let mut mobs = db.mob();
            let got: BTreeSet<u32> = mobs.pos().within(center, r).map(|m| m.id).collect();
            assert_eq!(got, expected, "within({center}, {r})");
            assert_eq!(mobs.pos().count_within(center, r), expected.len());
            let got_box: BTreeSet<u32> = mobs.pos().in_aabb(min, max).map(|m| m.id).collect();
            assert_eq!(got_box, expected_box, "in_aabb({min}, {max})");
            let near: Vec<f32> = mobs
                .pos()
                .nearest(center, 3)
                .into_iter()
                .map(|(_, d)| d)
                .collect();
            assert_eq!(near.len(), expected_near.len());
            for (a, b) in near.iter().zip(&expected_near) {
                assert!(
                    (a - b).abs() <= 1e-3 * b.max(1.0),
                    "nearest: {near:?} vs {expected_near:?}"
                );
            }
        });
    }
}

#[derive(Clone, Debug)]
enum Step {
    Reducer(Vec<Op>, bool),
    Shift(Vec<(u32, Vec2)>),
    Kill(Vec<u32>),
    Tick,
}

fn coord() -> impl Strategy<Value = f32> {
    prop_oneof![-60.0f32..60.0, (-8i32..8).prop_map(|c| c as f32 * 8.0)]
}

fn step() -> impl Strategy<Value = Step> {
    let op = prop_oneof![
        3 => (coord(), coord(), 0u8..3).prop_map(|(x, y, team)| Op::Spawn { x, y, team }),
        4 => (1u32..25, coord(), coord()).prop_map(|(id, x, y)| Op::Move { id, x, y }),
        1 => (1u32..25).prop_map(|id| Op::Despawn { id }),
    ];
    prop_oneof![
        5 => (proptest::collection::vec(op, 1..6), proptest::bool::weighted(0.25)).prop_map(|(ops, fail)| Step::Reducer(ops, fail)),
        2 => proptest::collection::vec((1u32..25, (-9.0f32..9.0, -9.0f32..9.0).prop_map(|(x, y)| Vec2::new(x, y))), 1..6).prop_map(Step::Shift),
        1 => proptest::collection::vec(1u32..25, 1..3).prop_map(Step::Kill),
        2 => Just(Step::Tick),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn spatial_queries_equal_brute_force_after_random_writes(
        steps in proptest::collection::vec(step(), 1..40),
        probes in proptest::collection::vec((coord(), coord(), prop_oneof![0.0f32..3.0, 3.0f32..40.0, Just(200.0f32)]), 4),
    ) {
        std::panic::set_hook(Box::new(|_| {}));
        let mut engine = engine();
        let mut n = 0;
        for step in steps {
            match step {
                Step::Reducer(ops, fail) => {
                    let result = engine.call_reducer("apply", Identity::ZERO, (ops, fail));
                    prop_assert!(!fail || result.is_err());
                }
                Step::Shift(shift) => {
                    engine.resource_mut::<Orders>().shift = shift;
                    n += 1;
                    engine.step(ts(n));
                }
                Step::Kill(kill) => {
                    engine.resource_mut::<Orders>().kill = kill;
                    n += 1;
                    engine.step(ts(n));
                }
                Step::Tick => {
                    n += 1;
                    engine.step(ts(n));
                }
            }
            check_queries(&mut engine, &probes);
        }
    }
}

#[test]
fn non_finite_positions_are_rejected_on_every_path() {
    let mut engine = engine();
    let err = engine
        .call_reducer(
            "apply",
            Identity::ZERO,
            (
                vec![Op::Spawn {
                    x: f32::NAN,
                    y: 0.0,
                    team: 0,
                }],
                false,
            ),
        )
        .unwrap_err();
    assert!(
        matches!(&err, ReducerError::Failed { message, .. } if message.contains("finite")),
        "{err}"
    );
    assert_eq!(engine.count::<Mob>(), 0);

    engine
        .call_reducer(
            "apply",
            Identity::ZERO,
            (
                vec![Op::Spawn {
                    x: 1.0,
                    y: 2.0,
                    team: 0,
                }],
                false,
            ),
        )
        .unwrap();
    let err = engine
        .call_reducer(
            "apply",
            Identity::ZERO,
            (
                vec![Op::Move {
                    id: 1,
                    x: f32::INFINITY,
                    y: 0.0,
                }],
                false,
            ),
        )
        .unwrap_err();
    assert!(err.to_string().contains("finite"), "{err}");
    assert_eq!(engine.find::<Mob>(&1).unwrap().pos, Vec2::new(1.0, 2.0));
    engine.read(|db| {
        let bad = Mob {
            id: 0,
            pos: Vec2::new(0.0, f32::NEG_INFINITY),
            team: 0,
        };
        assert!(matches!(
            db.mob().insert(bad),
            Err(TableError::InvalidValue { column: "pos", .. })
        ));
    });

    // A system writing NaN is reverted to the indexed position.
    engine.step(ts(1));
    engine.resource_mut::<Orders>().shift = vec![(1, Vec2::new(f32::NAN, 0.0))];
    let out = engine.step(ts(2));
    assert_eq!(out.capture.rejected, 1);
    assert_eq!(engine.find::<Mob>(&1).unwrap().pos, Vec2::new(1.0, 2.0));
    engine.check_integrity().unwrap();
}

#[test]
fn cell_changes_are_reported_and_systems_read_the_index() {
    let mut engine = engine();
    let spawn = |x: f32, y: f32| Op::Spawn { x, y, team: 1 };
    engine
        .call_reducer(
            "apply",
            Identity::ZERO,
            (
                vec![spawn(1.0, 1.0), spawn(3.0, 3.0), spawn(50.0, 50.0)],
                false,
            ),
        )
        .unwrap();
    let out = engine.step(ts(1));
    assert!(out.cell_moves.is_empty(), "inserts are not moves");
    assert_eq!(engine.world().resource::<NearOrigin>().0, 2);

    // Mob 1 stays in cell (0, 0); mob 2 crosses into cell (1, 0) (cells are 8 wide).
    engine.resource_mut::<Orders>().shift =
        vec![(1, Vec2::new(1.0, 1.0)), (2, Vec2::new(6.0, 0.0))];
    let out = engine.step(ts(2));
    assert_eq!(out.cell_moves.len(), 1, "{:?}", out.cell_moves);
    let moved = out.cell_moves[0];
    assert_eq!(
        (moved.column, moved.moved.from, moved.moved.to),
        ("pos", [0, 0, 0], [1, 0, 0])
    );
    assert_eq!(engine.world().get::<Mob>(moved.moved.entity).unwrap().id, 2);
    assert_eq!(
        engine.world().resource::<NearOrigin>().0,
        2,
        "9.0 and 3.6 from the origin"
    );

    // A reducer move across cells is reported too.
    engine
        .call_reducer(
            "apply",
            Identity::ZERO,
            (
                vec![Op::Move {
                    id: 3,
                    x: -50.0,
                    y: 50.0,
                }],
                false,
            ),
        )
        .unwrap();
    let out = engine.step(ts(3));
    assert_eq!(out.cell_moves.len(), 1);
    assert_eq!(out.cell_moves[0].moved.to, [-7, 6, 0]);
    assert_eq!(
        out.changes.rows::<Mob>().unwrap(),
        vec![RowOp::Update(Mob {
            id: 3,
            pos: Vec2::new(-50.0, 50.0),
            team: 1
        })]
    );
}

#[test]
fn three_dimensional_columns_index_and_query() {
    let mut engine = engine();
    for (id, p) in [
        (1u32, Vec3::new(0.0, 0.0, 0.0)),
        (2, Vec3::new(0.0, 0.0, 4.0)),
        (3, Vec3::new(0.0, 0.0, 40.0)),
    ] {
        engine
            .call_reducer("put_drone", Identity::ZERO, (id, p))
            .unwrap();
    }
    engine
        .call_reducer(
            "put_drone",
            Identity::ZERO,
            (3u32, Vec3::new(1.0, 1.0, 1.0)),
        )
        .unwrap();
    engine.check_integrity().unwrap();
    engine.read(|db| {
        let mut near: Vec<u32> = db
            .drone()
            .pos()
            .within(Vec3::ZERO, 5.0)
            .map(|d| d.id)
            .collect();
        near.sort();
        assert_eq!(near, vec![1, 2, 3]);
        let nearest: Vec<u32> = db
            .drone()
            .pos()
            .nearest(Vec3::new(0.0, 0.0, 5.0), 1)
            .into_iter()
            .map(|(d, _)| d.id)
            .collect();
        assert_eq!(nearest, vec![2]);
    });
    let schema = engine.schema().to_json();
    assert_eq!(
        schema["tables"][1]["indexes"][1],
        serde_json::json!({"column": "pos", "kind": "spatial", "cell": 5.0})
    );
}
