//! Recovery rebuilds spatial indexes exactly (the grid is an index like the others).

#![allow(missing_docs)]

use orrery_engine::durability::DurabilityConfig;
use orrery_engine::glam::Vec2;
use orrery_engine::prelude::*;

#[table(name = beacon, public)]
#[derive(Clone, Debug, PartialEq)]
pub struct Beacon {
    #[primary_key]
    pub id: u32,
    #[spatial(cell = 10.0)]
    pub pos: Vec2,
}

#[reducer]
pub fn place(ctx: &mut ReducerContext, id: u32, x: f32, y: f32) -> Result<(), String> {
    let row = Beacon {
        id,
        pos: Vec2::new(x, y),
    };
    if ctx.db.beacon().id().find(&id).is_some() {
        ctx.db.beacon().id().update(row)?;
    } else {
        ctx.db.beacon().insert(row)?;
    }
    Ok(())
}

#[reducer]
pub fn remove(ctx: &mut ReducerContext, id: u32) -> Result<(), String> {
    ctx.db.beacon().id().delete(&id);
    Ok(())
}

fn module() -> Module {
    Module::builder("beacons")
        .table::<Beacon>()
        .reducers(reducers![place, remove])
        .build()
        .unwrap()
}

fn near(engine: &mut Engine, x: f32, y: f32, r: f32) -> Vec<u32> {
    let mut ids: Vec<u32> = engine.read(|db| {
        db.beacon()
            .pos()
            .within(Vec2::new(x, y), r)
            .map(|b| b.id)
            .collect()
    });
    ids.sort();
    ids
}

#[test]
fn spatial_indexes_survive_log_replay_and_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    for snapshot_every in [0u64, 3] {
        let path = dir.path().join(format!("db-{snapshot_every}"));
        let config = || {
            let mut c = DurabilityConfig::new(&path);
            c.snapshot_every_ticks = snapshot_every;
            c
        };
        {
            let (mut engine, report) =
                Engine::open(module(), EngineConfig::default(), config()).unwrap();
            assert!(report.fresh);
            for tick in 1..=8i64 {
                let i = tick as u32;
                engine
                    .call_reducer("place", Identity::ZERO, (i, i as f32 * 7.0, 0.0f32))
                    .unwrap();
                engine
                    .call_reducer("place", Identity::ZERO, (1u32, tick as f32, tick as f32))
                    .unwrap();
                if tick == 5 {
                    engine
                        .call_reducer("remove", Identity::ZERO, (3u32,))
                        .unwrap();
                }
                let out = engine.step(Timestamp::from_micros(tick * 50_000));
                assert!(
                    engine
                        .durability()
                        .unwrap()
                        .wait_durable(out.seq, std::time::Duration::from_secs(10))
                );
            }
            assert_eq!(near(&mut engine, 0.0, 0.0, 30.0), vec![1, 2, 4]);
            engine.close().unwrap();
        }
        let (mut engine, report) =
            Engine::open(module(), EngineConfig::default(), config()).unwrap();
        assert!(!report.fresh);
        engine.check_integrity().unwrap();
        assert_eq!(near(&mut engine, 0.0, 0.0, 30.0), vec![1, 2, 4]);
        assert_eq!(near(&mut engine, 8.0, 8.0, 1.0), vec![1]);
        assert_eq!(engine.count::<Beacon>(), 7);
    }
}
