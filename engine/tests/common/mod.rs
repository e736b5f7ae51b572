//! A small bank + world module shared by the engine's integration tests.
#![allow(dead_code, missing_docs)]

use std::time::Duration;

use orrery_engine::bevy_ecs::prelude::*;
use orrery_engine::prelude::*;
use orrery_engine::{SystemsExecutor, TableStore};

#[table(name = account, public)]
#[derive(Clone, Debug, PartialEq)]
pub struct Account {
    #[primary_key]
    #[auto_inc]
    pub id: u64,
    #[unique]
    pub name: String,
    #[index(btree)]
    pub level: u32,
    pub owner: Identity,
    pub balance: i64,
}

#[derive(OrreryType, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Faction {
    Neutral,
    Red,
    Blue,
}

#[table(name = npc, public)]
#[derive(Clone, Debug, PartialEq)]
pub struct Npc {
    #[primary_key]
    #[auto_inc]
    pub id: u32,
    #[index(btree)]
    pub faction: Faction,
    pub x: f32,
    pub vx: f32,
    pub hp: i32,
}

#[table(name = respawn, scheduled(respawn_npc))]
#[derive(Clone, Debug, PartialEq)]
pub struct Respawn {
    #[primary_key]
    #[auto_inc]
    pub scheduled_id: u64,
    pub scheduled_at: ScheduleAt,
    pub faction: Faction,
}

#[table(name = hit, public, event)]
#[derive(Clone, Debug, PartialEq)]
pub struct Hit {
    #[primary_key]
    #[auto_inc]
    pub id: u64,
    pub target: u32,
}

#[table(name = lifecycle_log)]
#[derive(Clone, Debug, PartialEq)]
pub struct LifecycleLog {
    #[primary_key]
    #[auto_inc]
    pub id: u64,
    pub event: String,
    pub who: Identity,
    pub tick: u32,
}

#[reducer(init)]
pub fn init(ctx: &mut ReducerContext) -> Result<(), String> {
    let tick = ctx.tick.get();
    ctx.db.lifecycle_log().insert(LifecycleLog {
        id: 0,
        event: "init".into(),
        who: ctx.sender,
        tick,
    })?;
    Ok(())
}

#[reducer(client_connected)]
pub fn connected(ctx: &mut ReducerContext) -> Result<(), String> {
    if ctx.sender == Identity::from_u64(666) {
        return Err("banned".into());
    }
    let tick = ctx.tick.get();
    ctx.db.lifecycle_log().insert(LifecycleLog {
        id: 0,
        event: "connected".into(),
        who: ctx.sender,
        tick,
    })?;
    Ok(())
}

#[reducer(client_disconnected)]
pub fn disconnected(ctx: &mut ReducerContext) {
    let tick = ctx.tick.get();
    let _ = ctx.db.lifecycle_log().insert(LifecycleLog {
        id: 0,
        event: "disconnected".into(),
        who: ctx.sender,
        tick,
    });
}

#[reducer]
pub fn open_account(
    ctx: &mut ReducerContext,
    name: String,
    level: u32,
    balance: i64,
) -> Result<(), String> {
    let owner = ctx.sender;
    ctx.db.account().insert(Account {
        id: 0,
        name,
        level,
        owner,
        balance,
    })?;
    Ok(())
}

#[reducer]
pub fn transfer(ctx: &mut ReducerContext, from: u64, to: u64, amount: i64) -> Result<(), String> {
    let mut a = ctx
        .db
        .account()
        .id()
        .find(&from)
        .ok_or("no such source account")?;
    let mut b = ctx
        .db
        .account()
        .id()
        .find(&to)
        .ok_or("no such target account")?;
    if a.balance < amount {
        return Err(format!("insufficient funds: {} < {amount}", a.balance));
    }
    a.balance -= amount;
    b.balance += amount;
    ctx.db.account().id().update(a)?;
    ctx.db.account().id().update(b)?;
    Ok(())
}

/// Writes first, then fails: exercises real rollback.
#[reducer]
pub fn rename_then_fail(
    ctx: &mut ReducerContext,
    id: u64,
    name: String,
    level: u32,
) -> Result<(), String> {
    let mut a = ctx.db.account().id().find(&id).ok_or("missing")?;
    a.name = name;
    a.level = level;
    ctx.db.account().id().update(a)?;
    ctx.db.account().level().delete(0..5);
    ctx.db.account().insert(Account {
        id: 0,
        name: "temp".into(),
        level: 9,
        owner: ctx.sender,
        balance: 1,
    })?;
    Err("changed my mind".into())
}

#[reducer]
pub fn panic_after_write(ctx: &mut ReducerContext, id: u64) -> Result<(), String> {
    ctx.db.account().id().delete(&id);
    panic!("boom after deleting {id}");
}

#[reducer]
pub fn spawn_npc(
    ctx: &mut ReducerContext,
    faction: Faction,
    x: f32,
    vx: f32,
) -> Result<(), String> {
    ctx.db.npc().insert(Npc {
        id: 0,
        faction,
        x,
        vx,
        hp: 10,
    })?;
    Ok(())
}

#[reducer]
pub fn schedule_respawn(
    ctx: &mut ReducerContext,
    at: ScheduleAt,
    faction: Faction,
) -> Result<(), String> {
    ctx.db.respawn().insert(Respawn {
        scheduled_id: 0,
        scheduled_at: at,
        faction,
    })?;
    Ok(())
}

#[reducer]
pub fn cancel_respawn(ctx: &mut ReducerContext, id: u64) -> Result<(), String> {
    if ctx.db.respawn().scheduled_id().delete(&id) {
        Ok(())
    } else {
        Err("no such schedule".into())
    }
}

#[reducer]
pub fn respawn_npc(ctx: &mut ReducerContext, row: Respawn) -> Result<(), String> {
    let x = ctx.timestamp.as_micros() as f32 / 1e6;
    ctx.db.npc().insert(Npc {
        id: 0,
        faction: row.faction,
        x,
        vx: 0.0,
        hp: 10,
    })?;
    Ok(())
}

#[reducer]
pub fn hit(ctx: &mut ReducerContext, target: u32) -> Result<(), String> {
    ctx.db.hit().insert(Hit { id: 0, target })?;
    Ok(())
}

/// Moves NPCs by their velocity (a system mutating rows in place).
pub fn movement(info: Res<TickInfo>, mut npcs: Query<&mut Npc>) {
    let dt = info.dt.as_secs_f32();
    for mut npc in &mut npcs {
        if npc.vx != 0.0 {
            npc.x += npc.vx * dt;
        }
    }
}

/// Red NPCs below zero switch faction (a system changing an indexed column).
pub fn defect(mut npcs: Query<&mut Npc>) {
    for mut npc in &mut npcs {
        if npc.faction == Faction::Red && npc.x < 0.0 {
            npc.faction = Faction::Blue;
        }
    }
}

/// NPCs with no hp are despawned by a system.
pub fn reap(mut commands: Commands, npcs: Query<(Entity, &Npc)>) {
    for (entity, npc) in &npcs {
        if npc.hp <= 0 {
            commands.entity(entity).despawn();
        }
    }
}

/// Systems can read indexes through the table store resource.
#[derive(Resource, Default)]
pub struct NpcCount(pub usize);

pub fn count_npcs(store: Res<TableStore<Npc>>, mut count: ResMut<NpcCount>) {
    count.0 = store.len();
}

pub fn module() -> Module {
    Module::builder("bank")
        .table::<Account>()
        .table::<Npc>()
        .table::<Respawn>()
        .table::<Hit>()
        .table::<LifecycleLog>()
        .reducers(reducers![
            init,
            connected,
            disconnected,
            open_account,
            transfer,
            rename_then_fail,
            panic_after_write,
            spawn_npc,
            schedule_respawn,
            cancel_respawn,
            respawn_npc,
            hit,
        ])
        .resource(NpcCount::default())
        .add_systems((movement, defect, reap, count_npcs).chain())
        .build()
        .expect("valid module")
}

pub fn engine() -> Engine {
    engine_with(SystemsExecutor::SingleThreaded)
}

pub fn engine_with(executor: SystemsExecutor) -> Engine {
    let config = EngineConfig {
        executor,
        ..EngineConfig::default()
    };
    Engine::new(module(), config).expect("engine starts")
}

pub const TICK: Duration = Duration::from_millis(50);

pub fn at_tick(n: u64) -> Timestamp {
    Timestamp::from_micros(1_000_000_000 + (n as i64) * 50_000)
}

pub fn alice() -> Identity {
    Identity::from_u64(1)
}
