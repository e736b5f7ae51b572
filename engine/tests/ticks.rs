//! The tick: schedule tables, systems and capture, event tables, change sets, determinism.

mod common;

use std::time::Duration;

use common::*;
use orrery_engine::prelude::*;
use orrery_engine::{RowOp, SystemsExecutor};

#[test]
fn one_shot_schedule_fires_at_the_right_tick_and_is_deleted() {
    let mut engine = engine();
    engine.init(at_tick(0)).unwrap();
    engine.step(at_tick(1));
    // Due between tick 4 and tick 5: fires in tick 5.
    let due = at_tick(4) + Duration::from_millis(10);
    engine
        .call_reducer(
            "schedule_respawn",
            alice(),
            (ScheduleAt::At(due), Faction::Red),
        )
        .unwrap();
    for n in 2..=4 {
        engine.step(at_tick(n));
        assert_eq!(engine.count::<Npc>(), 0, "fired early at tick {n}");
    }
    let out = engine.step(at_tick(5));
    let npcs = engine.rows::<Npc>();
    assert_eq!(npcs.len(), 1);
    assert_eq!(npcs[0].faction, Faction::Red);
    // The reducer saw the tick's timestamp.
    assert_eq!(npcs[0].x, at_tick(5).as_micros() as f32 / 1e6);
    assert_eq!(
        engine.count::<Respawn>(),
        0,
        "one-shot row deleted after firing"
    );
    let respawn_ops = out.changes.rows::<Respawn>().unwrap();
    assert_eq!(respawn_ops, vec![RowOp::Delete(1)]);
    for n in 6..10 {
        engine.step(at_tick(n));
    }
    assert_eq!(engine.count::<Npc>(), 1, "fires only once");
}

#[test]
fn interval_schedule_repeats_and_cancel_stops_it() {
    let mut engine = engine();
    engine.step(at_tick(1));
    // Every 100 ms = every second tick, aligned to multiples of 100 ms (the even ticks here):
    // first due at the first multiple after the insertion at tick 1's timestamp.
    engine
        .call_reducer(
            "schedule_respawn",
            alice(),
            (
                ScheduleAt::Interval(Duration::from_millis(100)),
                Faction::Blue,
            ),
        )
        .unwrap();
    let mut fired_at = Vec::new();
    for n in 2..=9 {
        let before = engine.count::<Npc>();
        engine.step(at_tick(n));
        if engine.count::<Npc>() > before {
            fired_at.push(n);
        }
    }
    assert_eq!(fired_at, vec![2, 4, 6, 8]);
    assert_eq!(engine.count::<Respawn>(), 1, "interval rows stay");
    engine
        .call_reducer("cancel_respawn", alice(), (1u64,))
        .unwrap();
    for n in 10..=20 {
        engine.step(at_tick(n));
    }
    assert_eq!(
        engine.count::<Npc>(),
        4,
        "cancelled schedule does not fire again"
    );
}

#[test]
fn interval_falling_behind_fires_once_per_tick_and_keeps_phase() {
    let mut engine = engine();
    engine.step(at_tick(1));
    engine
        .call_reducer(
            "schedule_respawn",
            alice(),
            (
                ScheduleAt::Interval(Duration::from_millis(100)),
                Faction::Blue,
            ),
        )
        .unwrap();
    // A long stall: the next tick is 1 s later. One firing, not ten.
    engine.step(at_tick(21));
    assert_eq!(engine.count::<Npc>(), 1);
    // Phase kept on the 100 ms grid (multiples of 100 ms: the even ticks): next is tick 22.
    engine.step(at_tick(22));
    assert_eq!(engine.count::<Npc>(), 2);
    engine.step(at_tick(23));
    assert_eq!(engine.count::<Npc>(), 2);
    engine.step(at_tick(24));
    assert_eq!(engine.count::<Npc>(), 3);
}

#[test]
fn due_schedules_fire_in_due_then_key_order() {
    let mut engine = engine();
    engine.step(at_tick(1));
    // Three rows, inserted in an order different from their due order.
    for (offset, faction) in [
        (30, Faction::Red),
        (10, Faction::Blue),
        (30, Faction::Neutral),
    ] {
        let at = at_tick(1) + Duration::from_millis(offset);
        engine
            .call_reducer("schedule_respawn", alice(), (ScheduleAt::At(at), faction))
            .unwrap();
    }
    engine.step(at_tick(2));
    let order: Vec<Faction> = engine
        .rows::<Npc>()
        .into_iter()
        .map(|n| n.faction)
        .collect();
    // NPC ids follow firing order: due 10 ms (row 2) first, then due 30 ms rows 1 and 3 by key.
    assert_eq!(order, vec![Faction::Blue, Faction::Red, Faction::Neutral]);
}

#[test]
fn system_mutations_become_row_updates_and_reindex() {
    let mut engine = engine();
    engine.step(at_tick(1));
    engine
        .call_reducer("spawn_npc", alice(), (Faction::Red, 1.0f32, -40.0f32))
        .unwrap();
    engine
        .call_reducer("spawn_npc", alice(), (Faction::Red, 5.0f32, 0.0f32))
        .unwrap();
    let out = engine.step(at_tick(2));
    // Inserted this tick; the systems' writes fold into the inserts: NPC 1 moved by
    // -40 * 0.05 = -2 to x = -1 and, being red below zero, defected.
    let ops = out.changes.rows::<Npc>().unwrap();
    assert_eq!(ops.len(), 2, "{ops:?}");
    let RowOp::Insert(first) = &ops[0] else {
        panic!("{ops:?}")
    };
    assert!((first.x - -1.0).abs() < 1e-5, "{first:?}");
    assert_eq!(first.faction, Faction::Blue);
    assert!(matches!(&ops[1], RowOp::Insert(n) if n.x == 5.0 && n.faction == Faction::Red));
    // Tick 3: only NPC 1 moves (to x = -3); NPC 2 is untouched and not reported.
    let out = engine.step(at_tick(3));
    let ops = out.changes.rows::<Npc>().unwrap();
    assert_eq!(ops.len(), 1, "{ops:?}");
    let RowOp::Update(moved) = &ops[0] else {
        panic!("{ops:?}")
    };
    assert_eq!(moved.id, 1);
    assert!((moved.x - -3.0).abs() < 1e-5, "{moved:?}");
    assert_eq!(out.capture.updated, 1);
    engine.check_integrity().unwrap();
    // The btree index followed the system's write.
    engine.read(|db| {
        let blue: Vec<u32> = db
            .npc()
            .faction()
            .filter(&Faction::Blue)
            .map(|n| n.id)
            .collect();
        let red: Vec<u32> = db
            .npc()
            .faction()
            .filter(&Faction::Red)
            .map(|n| n.id)
            .collect();
        assert_eq!(blue, vec![1]);
        assert_eq!(red, vec![2]);
    });
}

#[test]
fn system_despawns_become_deletes_and_systems_see_table_stores() {
    let mut engine = engine();
    engine
        .call_reducer("spawn_npc", alice(), (Faction::Red, 1.0f32, 0.0f32))
        .unwrap();
    engine
        .call_reducer("spawn_npc", alice(), (Faction::Red, 2.0f32, 0.0f32))
        .unwrap();
    engine.step(at_tick(1));
    assert_eq!(engine.world().resource::<NpcCount>().0, 2);
    // Reducer sets hp to 0 through the world (like a direct component write), system reaps.
    let entity = {
        let world = engine.world_mut();
        let mut q = world.query::<(orrery_engine::bevy_ecs::entity::Entity, &Npc)>();
        q.iter(world)
            .find(|(_, n)| n.id == 2)
            .map(|(e, _)| e)
            .unwrap()
    };
    engine.world_mut().get_mut::<Npc>(entity).unwrap().hp = 0;
    let out = engine.step(at_tick(2));
    assert_eq!(out.changes.rows::<Npc>().unwrap(), vec![RowOp::Delete(2)]);
    assert_eq!(out.capture.deleted, 1);
    assert_eq!(engine.count::<Npc>(), 1);
    engine.check_integrity().unwrap();
    // Next tick the system counts the remaining row through `Res<TableStore<Npc>>`.
    engine.step(at_tick(3));
    assert_eq!(engine.world().resource::<NpcCount>().0, 1);
}

#[test]
fn event_rows_are_published_once_and_never_stored() {
    let mut engine = engine();
    engine.call_reducer("hit", alice(), (7u32,)).unwrap();
    engine.call_reducer("hit", alice(), (8u32,)).unwrap();
    let out = engine.step(at_tick(1));
    let hits = out.changes.rows::<Hit>().unwrap();
    assert_eq!(hits.len(), 2);
    assert!(matches!(&hits[0], RowOp::Insert(h) if h.target == 7));
    assert_eq!(engine.count::<Hit>(), 0);
    let out = engine.step(at_tick(2));
    assert!(
        out.changes.table::<Hit>().is_none(),
        "no deletes for dropped events"
    );
    engine.check_integrity().unwrap();
}

#[test]
fn net_changes_fold_within_a_tick() {
    let mut engine = engine();
    engine
        .call_reducer("open_account", alice(), ("a".to_string(), 1u32, 10i64))
        .unwrap();
    engine
        .call_reducer("open_account", alice(), ("b".to_string(), 1u32, 10i64))
        .unwrap();
    engine.step(at_tick(1));
    engine
        .call_reducer("transfer", alice(), (1u64, 2u64, 3i64))
        .unwrap();
    engine
        .call_reducer("transfer", alice(), (2u64, 1u64, 1i64))
        .unwrap();
    engine
        .call_reducer("open_account", alice(), ("c".to_string(), 1u32, 10i64))
        .unwrap();
    let out = engine.step(at_tick(2));
    let ops = out.changes.rows::<Account>().unwrap();
    assert_eq!(
        ops.len(),
        3,
        "two updates folded per account, one insert: {ops:?}"
    );
    assert!(matches!(&ops[0], RowOp::Update(a) if a.id == 1 && a.balance == 8));
    assert!(matches!(&ops[1], RowOp::Update(a) if a.id == 2 && a.balance == 12));
    assert!(matches!(&ops[2], RowOp::Insert(a) if a.id == 3));
}

#[test]
fn each_tick_folds_its_own_writes_of_rows_written_in_earlier_ticks() {
    let mut engine = engine();
    for name in ["a", "b", "c"] {
        engine
            .call_reducer("open_account", alice(), (name.to_string(), 1u32, 10i64))
            .unwrap();
    }
    engine.step(at_tick(1));
    // Each tick touches the accounts in another order, so where a row's entry was in the last
    // tick's log is another row's entry in this one: merging must not follow it.
    let ticks: [&[(u64, u64)]; 3] = [&[(1, 2), (2, 3)], &[(3, 1), (3, 2), (1, 3)], &[(2, 1)]];
    let mut balances = [10i64, 10, 10];
    for (n, transfers) in ticks.iter().enumerate() {
        let mut first_touch = Vec::new();
        for &(from, to) in transfers.iter() {
            engine
                .call_reducer("transfer", alice(), (from, to, 1i64))
                .unwrap();
            balances[from as usize - 1] -= 1;
            balances[to as usize - 1] += 1;
            for id in [from, to] {
                if !first_touch.contains(&id) {
                    first_touch.push(id);
                }
            }
        }
        let out = engine.step(at_tick(n as u64 + 2));
        let got: Vec<(u64, i64)> = out
            .changes
            .rows::<Account>()
            .unwrap()
            .into_iter()
            .map(|op| match op {
                RowOp::Update(a) => (a.id, a.balance),
                other => panic!("tick {}: unexpected {other:?}", n + 2),
            })
            .collect();
        let want: Vec<(u64, i64)> = first_touch
            .iter()
            .map(|&id| (id, balances[id as usize - 1]))
            .collect();
        assert_eq!(got, want, "tick {}: one update per account", n + 2);
    }
}

#[test]
fn multi_threaded_executor_gives_the_same_results() {
    let run = |executor| {
        let mut engine = engine_with(executor);
        for i in 0..20 {
            let faction = if i % 2 == 0 {
                Faction::Red
            } else {
                Faction::Blue
            };
            engine
                .call_reducer("spawn_npc", alice(), (faction, i as f32, -(i as f32) * 3.0))
                .unwrap();
        }
        let mut log = Vec::new();
        for n in 1..30 {
            let out = engine.step(at_tick(n));
            log.push(out.changes);
        }
        (engine.rows::<Npc>(), log)
    };
    assert_eq!(
        run(SystemsExecutor::SingleThreaded),
        run(SystemsExecutor::MultiThreaded)
    );
}

#[test]
fn ambiguous_systems_are_rejected_at_start() {
    use orrery_engine::bevy_ecs::prelude::*;
    fn a(mut q: Query<&mut Npc>) {
        for mut n in &mut q {
            n.hp += 1;
        }
    }
    fn b(mut q: Query<&mut Npc>) {
        for mut n in &mut q {
            n.hp -= 1;
        }
    }
    let module = Module::builder("ambiguous")
        .table::<Npc>()
        .add_systems((a, b))
        .build()
        .unwrap();
    let err = Engine::new(module, EngineConfig::default())
        .err()
        .expect("rejected");
    assert!(
        err.to_string().contains("systems schedule rejected"),
        "{err}"
    );
}

mod focus {
    use orrery_engine::bevy_ecs::prelude::*;
    use orrery_engine::glam::{Vec2, Vec3};
    use orrery_engine::prelude::*;

    #[table(name = marker)]
    #[derive(Clone, Debug)]
    pub struct Marker {
        #[primary_key]
        pub id: u32,
    }

    #[reducer]
    pub fn look(ctx: &mut ReducerContext, x: f32, fail: bool) -> Result<(), String> {
        let connection = ctx.connection_id.ok_or("no connection")?;
        ctx.set_focus(connection, Vec2::new(x, 1.0));
        if fail { Err("no".into()) } else { Ok(()) }
    }

    fn follow(mut focus: ResMut<FocusUpdates>, info: Res<TickInfo>) {
        if info.tick.get() == 2 {
            focus.set(ConnectionId(9), Vec3::new(0.0, 0.0, 5.0));
        }
    }

    #[test]
    fn focus_set_by_reducers_and_systems_is_reported_and_rolled_back_with_the_call() {
        let module = Module::builder("focus")
            .table::<Marker>()
            .reducers(reducers![look])
            .add_systems(follow)
            .build()
            .unwrap();
        let mut engine = Engine::new(module, EngineConfig::default()).unwrap();
        let caller = Caller::client(Identity::from_u64(1), ConnectionId(4));
        engine
            .call_reducer("look", caller, (3.0f32, false))
            .unwrap();
        engine
            .call_reducer("look", caller, (7.0f32, true))
            .unwrap_err();
        let out = engine.step(Timestamp::from_micros(1));
        assert_eq!(out.focus, vec![(ConnectionId(4), Vec3::new(3.0, 1.0, 0.0))]);
        let out = engine.step(Timestamp::from_micros(2));
        assert_eq!(out.focus, vec![(ConnectionId(9), Vec3::new(0.0, 0.0, 5.0))]);
        assert!(engine.step(Timestamp::from_micros(3)).focus.is_empty());
    }
}

/// Primary and unique indexes hash with a random seed per map (hash-flooding defence), so two
/// runs of the same calls hash differently. Nothing observable may follow from that: rows,
/// change sets and even the entities rows land on (entities freed by event rows at the end of
/// a tick are reused by later spawns) must be the same in every run.
#[test]
fn hash_seeds_change_no_outcome() {
    let run = || {
        let mut engine = engine();
        engine.init(at_tick(0)).unwrap();
        let mut log = Vec::new();
        for n in 1..12u32 {
            for target in 0..40 {
                engine
                    .call_reducer("hit", alice(), (target * 7 + n,))
                    .unwrap();
            }
            for i in 0..5 {
                let faction = if (n + i) % 2 == 0 {
                    Faction::Red
                } else {
                    Faction::Blue
                };
                engine
                    .call_reducer("spawn_npc", alice(), (faction, i as f32, n as f32))
                    .unwrap();
            }
            let out = engine.step(at_tick(u64::from(n)));
            log.push(out.changes);
        }
        let npcs = engine.rows::<Npc>();
        let entities: Vec<_> = npcs
            .iter()
            .map(|npc| engine.entity::<Npc>(&npc.id).unwrap())
            .collect();
        (npcs, entities, log)
    };
    let first = run();
    for _ in 0..3 {
        assert_eq!(run(), first);
    }
}

/// Tick timestamps only go up: a step at or before the previous tick's time is refused and
/// run one `tick_interval` later instead, and counted. Systems see the fixed `dt`.
#[test]
fn timestamps_never_step_back_and_systems_see_the_fixed_dt() {
    let mut engine = engine();
    let first = engine.step(at_tick(10));
    assert_eq!(first.timestamp, at_tick(10));
    let again = engine.step(at_tick(10));
    assert_eq!(
        again.timestamp,
        at_tick(11),
        "a repeated timestamp moves on by dt"
    );
    let back = engine.step(at_tick(3));
    assert_eq!(back.timestamp, at_tick(12), "a step back is refused");
    assert_eq!(engine.counters().clock_corrections, 2);
    let info = *engine.world().resource::<TickInfo>();
    assert_eq!(
        (info.dt, info.delta),
        (Duration::from_millis(50), Duration::from_millis(50))
    );
    // After a stall of five grid points, delta says so; dt does not change.
    engine.step(at_tick(17));
    let info = *engine.world().resource::<TickInfo>();
    assert_eq!(
        (info.dt, info.delta),
        (Duration::from_millis(50), Duration::from_millis(250))
    );
}

#[test]
fn grid_timestamps_are_multiples_of_dt_after_the_last_tick() {
    let mut engine = engine();
    let dt = 50_000;
    // Before any tick: the first multiple of dt at or after the wall clock.
    let wall = Timestamp::from_micros(1_000_000_012_345);
    let grid = engine.grid_timestamp(wall);
    assert_eq!(grid.as_micros() % dt, 0);
    assert!(grid >= wall && grid.as_micros() - wall.as_micros() < dt);
    assert_eq!(engine.grid_timestamp(grid), grid);
    engine.step(grid);
    // A wall clock behind the last tick still gives the next grid point after it.
    let next = engine.grid_timestamp(wall);
    assert_eq!(next.as_micros(), grid.as_micros() + dt);
}
