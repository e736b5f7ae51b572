//! Durability: recovery after clean shutdown, every column type, torn tails at every byte,
//! flipped bits, transient and event tables, sequences and schedules, durable replies, write
//! failures, segment rotation and pruning.

#![allow(missing_docs)] // test-only tables and reducers

mod common;

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use orrery_engine::bevy_ecs::prelude::IntoScheduleConfigs;
use orrery_engine::prelude::*;
use orrery_engine::{
    DurabilityConfig, DurabilityError, EngineError, FsyncPolicy, Input, RecoveryReport,
    ReducerError, SystemsExecutor,
};
use proptest::prelude::*;

#[derive(OrreryType, Clone, Debug, PartialEq)]
pub struct Inner {
    pub label: String,
    pub weights: Vec<f32>,
}

#[derive(OrreryType, Clone, Debug, PartialEq)]
pub enum Shape {
    Empty,
    Circle(f32),
    Rect { w: u16, h: u16 },
}

/// One column of every type the row format knows.
#[table(name = all_types)]
#[derive(Clone, Debug, PartialEq)]
pub struct AllTypes {
    #[primary_key]
    pub id: u32,
    pub b: bool,
    pub u_8: u8,
    pub u_16: u16,
    pub u_32: u32,
    pub u_64: u64,
    pub i_8: i8,
    pub i_16: i16,
    pub i_32: i32,
    pub i_64: i64,
    pub f_32: f32,
    pub f_64: f64,
    pub text: String,
    pub who: Identity,
    pub conn: ConnectionId,
    pub at: Timestamp,
    pub span: Duration,
    pub when: ScheduleAt,
    pub v2: glam::Vec2,
    pub v3: glam::Vec3,
    pub maybe: Option<i64>,
    pub blob: Vec<u8>,
    pub names: Vec<String>,
    pub inner: Inner,
    pub shape: Shape,
    pub nested: Option<Vec<Option<Shape>>>,
}

/// Simulation scratch state: never logged.
#[table(name = scratch, transient)]
#[derive(Clone, Debug, PartialEq)]
pub struct Scratch {
    #[primary_key]
    pub key: u32,
    pub value: i64,
}

#[reducer]
pub fn put_all(ctx: &mut ReducerContext, row: AllTypes) -> Result<(), String> {
    if ctx.db.all_types().id().find(&row.id).is_some() {
        ctx.db.all_types().id().update(row)?;
    } else {
        ctx.db.all_types().insert(row)?;
    }
    Ok(())
}

#[reducer]
pub fn put_scratch(ctx: &mut ReducerContext, key: u32, value: i64) -> Result<(), String> {
    ctx.db.scratch().insert(Scratch { key, value })?;
    Ok(())
}

/// Swaps two accounts' unique names inside one transaction: replaying the tick's net updates
/// in order would collide on the unique index.
#[reducer]
pub fn swap_names(ctx: &mut ReducerContext, a: u64, b: u64) -> Result<(), String> {
    let mut x = ctx.db.account().id().find(&a).ok_or("no a")?;
    let mut y = ctx.db.account().id().find(&b).ok_or("no b")?;
    let (xn, yn) = (x.name.clone(), y.name.clone());
    x.name = format!("{xn}-swapping");
    ctx.db.account().id().update(x.clone())?;
    y.name = xn;
    ctx.db.account().id().update(y)?;
    x.name = yn;
    ctx.db.account().id().update(x)?;
    Ok(())
}

/// Consumes a sequence value without leaving a row.
#[reducer]
pub fn insert_then_delete(ctx: &mut ReducerContext, name: String) -> Result<(), String> {
    let row = ctx.db.account().insert(Account {
        id: 0,
        name,
        level: 0,
        owner: ctx.sender,
        balance: 0,
    })?;
    ctx.db.account().id().delete(&row.id);
    Ok(())
}

#[reducer]
pub fn close_account(ctx: &mut ReducerContext, id: u64) -> Result<(), String> {
    if ctx.db.account().id().delete(&id) {
        Ok(())
    } else {
        Err("no such account".into())
    }
}

#[reducer]
pub fn wound(ctx: &mut ReducerContext, id: u32, damage: i32) -> Result<(), String> {
    let mut npc = ctx.db.npc().id().find(&id).ok_or("no npc")?;
    npc.hp -= damage;
    ctx.db.npc().id().update(npc)?;
    Ok(())
}

fn module() -> Module {
    Module::builder("bank")
        .table::<Account>()
        .table::<Npc>()
        .table::<Respawn>()
        .table::<Hit>()
        .table::<LifecycleLog>()
        .table::<AllTypes>()
        .table::<Scratch>()
        .reducers(reducers![
            init,
            connected,
            disconnected,
            open_account,
            transfer,
            rename_then_fail,
            spawn_npc,
            schedule_respawn,
            cancel_respawn,
            respawn_npc,
            hit,
            put_all,
            put_scratch,
            swap_names,
            insert_then_delete,
            close_account,
            wound,
        ])
        .resource(NpcCount::default())
        .add_systems((movement, defect, reap, count_npcs).chain())
        .build()
        .expect("valid module")
}

fn engine_config() -> EngineConfig {
    EngineConfig {
        executor: SystemsExecutor::SingleThreaded,
        ..EngineConfig::default()
    }
}

fn config(dir: &Path) -> DurabilityConfig {
    DurabilityConfig {
        snapshot_every_ticks: 0,
        ..DurabilityConfig::new(dir)
    }
}

fn open_with(config: DurabilityConfig) -> (Engine, RecoveryReport) {
    Engine::open(module(), engine_config(), config).expect("opens")
}

fn open(dir: &Path) -> (Engine, RecoveryReport) {
    open_with(config(dir))
}

/// Everything durable, in a comparable form, plus the tick position.
fn state(engine: &Engine) -> String {
    format!(
        "seq {} tick {} ts {:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}",
        engine.tick_seq(),
        engine.tick(),
        engine.timestamp(),
        engine.rows::<Account>(),
        engine.rows::<Npc>(),
        engine.rows::<Respawn>(),
        engine.rows::<LifecycleLog>(),
        engine.rows::<AllTypes>(),
    )
}

/// Steps and waits until the tick is durable.
fn step_durably(engine: &mut Engine, n: u64) -> u64 {
    let out = engine.step(at_tick(n));
    assert!(out.storage_error.is_none(), "{:?}", out.storage_error);
    let handle = engine.durability().expect("durable engine");
    assert!(handle.wait_durable(out.seq, Duration::from_secs(10)));
    out.seq
}

fn call<A: orrery_engine::ReducerArgs>(engine: &mut Engine, name: &str, args: A) {
    engine
        .call_reducer(name, alice(), args)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
}

fn all_types(id: u32, salt: i64) -> AllTypes {
    AllTypes {
        id,
        b: salt % 2 == 0,
        u_8: u8::MAX,
        u_16: u16::MAX - salt as u16,
        u_32: u32::MAX,
        u_64: u64::MAX - salt as u64,
        i_8: i8::MIN,
        i_16: i16::MIN,
        i_32: -salt as i32,
        i_64: i64::MIN + salt,
        f_32: -0.0,
        f_64: f64::MAX,
        text: format!("héllo wörld {salt} ✓"),
        who: Identity::from_u64(salt as u64),
        conn: ConnectionId(u64::MAX),
        at: Timestamp::from_micros(-salt),
        span: Duration::from_micros(1 << 50),
        when: ScheduleAt::At(Timestamp::from_micros(salt)),
        v2: glam::Vec2::new(f32::MIN_POSITIVE, -1.5),
        v3: glam::Vec3::new(1e30, f32::INFINITY, -7.25),
        maybe: (salt % 3 != 0).then_some(salt),
        blob: (0..=255).collect(),
        names: vec![String::new(), "a".into(), "🦀".repeat(3)],
        inner: Inner {
            label: "inner".into(),
            weights: vec![0.5, f32::NEG_INFINITY],
        },
        shape: match salt % 3 {
            0 => Shape::Empty,
            1 => Shape::Circle(2.5),
            _ => Shape::Rect { w: 3, h: u16::MAX },
        },
        nested: Some(vec![None, Some(Shape::Circle(-1.0)), Some(Shape::Empty)]),
    }
}

/// A few ticks touching every durable table, a transient one, an event one, systems and
/// schedules. Returns the next tick number.
fn workload(engine: &mut Engine, first_tick: u64) -> u64 {
    let mut n = first_tick;
    let names = ["ann", "bob", "cy"].map(|name| format!("{name}{first_tick}"));
    for (name, level, balance) in [
        (&names[0], 1u32, 100i64),
        (&names[1], 3, 50),
        (&names[2], 3, 0),
    ] {
        call(engine, "open_account", (name.clone(), level, balance));
    }
    let npcs_before = engine.count::<Npc>();
    call(engine, "spawn_npc", (Faction::Red, 1.0f32, -20.0f32));
    call(engine, "spawn_npc", (Faction::Blue, 0.0f32, 1.0f32));
    call(engine, "put_scratch", (first_tick as u32, 10i64));
    call(engine, "put_all", (all_types(first_tick as u32, 1),));
    step_durably(engine, n);
    n += 1;
    let id = |engine: &Engine, name: &str| {
        engine
            .rows::<Account>()
            .into_iter()
            .find(|a| a.name == name)
            .map(|a| a.id)
            .unwrap()
    };
    let (a, b, c) = (
        id(engine, &names[0]),
        id(engine, &names[1]),
        id(engine, &names[2]),
    );
    let npc = engine.rows::<Npc>()[npcs_before + 1].id;
    call(engine, "transfer", (a, b, 30i64));
    call(engine, "swap_names", (a, c));
    call(
        engine,
        "insert_then_delete",
        (format!("ghost{first_tick}"),),
    );
    call(engine, "hit", (1u32,));
    call(
        engine,
        "schedule_respawn",
        (
            ScheduleAt::Interval(Duration::from_millis(120)),
            Faction::Blue,
        ),
    );
    call(
        engine,
        "schedule_respawn",
        (ScheduleAt::At(at_tick(n + 40)), Faction::Red),
    );
    call(engine, "put_all", (all_types(first_tick as u32 + 1, 2),));
    call(engine, "put_scratch", (first_tick as u32 + 1, 20i64));
    assert!(
        engine
            .call_reducer("rename_then_fail", alice(), (b, "zed".to_string(), 9u32))
            .is_err()
    );
    step_durably(engine, n);
    n += 1;
    for _ in 0..4 {
        call(engine, "transfer", (b, a, 1i64));
        step_durably(engine, n);
        n += 1;
    }
    call(engine, "wound", (npc, 100i32));
    call(engine, "close_account", (c,));
    call(engine, "put_all", (all_types(first_tick as u32, 5),));
    step_durably(engine, n);
    n + 1
}

#[test]
fn a_fresh_directory_is_fresh_and_init_is_not_rerun() {
    let dir = tempfile::tempdir().unwrap();
    let (mut engine, report) = open(dir.path());
    assert!(report.fresh);
    assert_eq!(report.last_tick, 0);
    engine.init(at_tick(0)).unwrap();
    step_durably(&mut engine, 1);
    let before = state(&engine);
    engine.close().unwrap();

    let (mut engine, report) = open(dir.path());
    assert!(!report.fresh);
    assert_eq!(report.replayed_ticks, 1);
    assert_eq!(report.last_tick, 1);
    assert_eq!(state(&engine), before);
    let inits = engine
        .rows::<LifecycleLog>()
        .iter()
        .filter(|l| l.event == "init")
        .count();
    assert_eq!(inits, 1);
    engine.check_integrity().unwrap();
}

#[test]
fn a_database_whose_init_tick_never_became_durable_is_fresh_again() {
    let dir = tempfile::tempdir().unwrap();
    let (mut engine, _) = open(dir.path());
    engine.init(at_tick(0)).unwrap();
    drop(engine); // init's writes belong to tick 1, which never ran
    let (_, report) = open(dir.path());
    assert!(report.fresh);
}

fn recovers_after_clean_shutdown(snapshot_every_ticks: u64) {
    let dir = tempfile::tempdir().unwrap();
    let durability = DurabilityConfig {
        snapshot_every_ticks,
        ..config(dir.path())
    };
    let (mut engine, _) = open_with(durability.clone());
    engine.init(at_tick(0)).unwrap();
    let next = workload(&mut engine, 1);
    let before = state(&engine);
    assert_eq!(engine.count::<Scratch>(), 2);
    assert!(engine.count::<Npc>() >= 2);
    engine.close().unwrap();

    let (mut engine, report) = open_with(durability.clone());
    assert!(!report.fresh);
    assert_eq!(report.last_tick, next - 1);
    assert_eq!(state(&engine), before);
    engine.check_integrity().unwrap();
    if snapshot_every_ticks > 0 {
        let snapshot = report.snapshot_tick.expect("a snapshot was taken");
        assert_eq!(report.replayed_ticks, report.last_tick - snapshot);
    } else {
        assert_eq!(report.snapshot_tick, None);
        assert_eq!(report.replayed_ticks, next - 1);
    }
    // The recovered engine keeps going and its next run recovers that too.
    let next = workload(&mut engine, next);
    let before = state(&engine);
    engine.close().unwrap();
    let (mut engine, _) = open_with(durability);
    assert_eq!(state(&engine), before);
    assert_eq!(engine.tick_seq(), next - 1);
    engine.check_integrity().unwrap();
}

#[test]
fn recovery_after_clean_shutdown_equals_the_state_before_from_the_log() {
    recovers_after_clean_shutdown(0);
}

#[test]
fn recovery_after_clean_shutdown_equals_the_state_before_from_a_snapshot() {
    recovers_after_clean_shutdown(3);
}

#[test]
fn every_column_type_round_trips_through_log_and_snapshot() {
    for snapshot_every_ticks in [0, 1] {
        let dir = tempfile::tempdir().unwrap();
        let durability = DurabilityConfig {
            snapshot_every_ticks,
            ..config(dir.path())
        };
        let (mut engine, _) = open_with(durability.clone());
        let rows: Vec<AllTypes> = (0..6).map(|i| all_types(i, i64::from(i) * 7 + 3)).collect();
        for row in &rows {
            call(&mut engine, "put_all", (row.clone(),));
        }
        let mut nan = all_types(99, 4);
        nan.f_32 = f32::from_bits(0x7fc0_1234);
        nan.f_64 = f64::from_bits(0xfff8_0000_dead_beef);
        call(&mut engine, "put_all", (nan.clone(),));
        step_durably(&mut engine, 1);
        engine.close().unwrap();

        let (engine, report) = open_with(durability);
        assert_eq!(
            report.snapshot_tick,
            (snapshot_every_ticks > 0).then_some(1)
        );
        let mut got = engine.rows::<AllTypes>();
        let got_nan = got.pop().unwrap();
        assert_eq!(got, rows);
        assert_eq!(got_nan.f_32.to_bits(), nan.f_32.to_bits());
        assert_eq!(got_nan.f_64.to_bits(), nan.f_64.to_bits());
        assert_eq!(got_nan.text, nan.text);
    }
}

#[test]
fn transient_and_event_tables_come_back_empty() {
    let dir = tempfile::tempdir().unwrap();
    let (mut engine, _) = open(dir.path());
    call(&mut engine, "put_scratch", (7u32, 70i64));
    call(&mut engine, "hit", (3u32,));
    let out = engine.step(at_tick(1));
    assert_eq!(out.changes.rows::<Hit>().unwrap().len(), 1);
    assert_eq!(engine.count::<Scratch>(), 1);
    engine.close().unwrap();

    let (mut engine, report) = open(dir.path());
    assert!(
        !report.fresh,
        "the tick was logged even though it changed no durable table"
    );
    assert_eq!(report.rows, 0);
    assert_eq!(engine.count::<Scratch>(), 0);
    assert_eq!(engine.count::<Hit>(), 0);
    // Transient keys can be reused after a restart.
    call(&mut engine, "put_scratch", (7u32, 71i64));
    engine.check_integrity().unwrap();
}

#[test]
fn auto_inc_sequences_and_schedules_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (mut engine, _) = open(dir.path());
    engine.init(at_tick(0)).unwrap();
    call(&mut engine, "open_account", ("ann".to_string(), 1u32, 5i64));
    // Takes id 2 and deletes it in the same tick: no row is logged, but the sequence is.
    call(&mut engine, "insert_then_delete", ("ghost".to_string(),));
    call(
        &mut engine,
        "schedule_respawn",
        (
            ScheduleAt::Interval(Duration::from_millis(100)),
            Faction::Blue,
        ),
    );
    call(
        &mut engine,
        "schedule_respawn",
        (ScheduleAt::At(at_tick(30)), Faction::Red),
    );
    step_durably(&mut engine, 1);
    assert_eq!(engine.count::<Npc>(), 0);
    engine.close().unwrap();

    let (mut engine, _) = open(dir.path());
    call(&mut engine, "open_account", ("bob".to_string(), 1u32, 5i64));
    assert_eq!(
        engine
            .rows::<Account>()
            .iter()
            .map(|a| a.id)
            .collect::<Vec<_>>(),
        vec![1, 3],
        "the sequence continued after the consumed id 2"
    );
    // The interval row (100 ms = 2 ticks) keeps its phase across the restart: it is due at
    // every multiple of 100 ms, so at ticks 2, 4, 6, ... as if the server had never stopped.
    step_durably(&mut engine, 2);
    let info = *engine.world().resource::<TickInfo>();
    assert_eq!(
        info.delta, info.dt,
        "the first tick after a restart is one dt long"
    );
    assert_eq!(engine.count::<Npc>(), 1);
    step_durably(&mut engine, 3);
    assert_eq!(engine.count::<Npc>(), 1);
    // The one-shot row fires at its time and is deleted.
    for n in 4..=30 {
        step_durably(&mut engine, n);
    }
    let factions: Vec<Faction> = engine.rows::<Npc>().iter().map(|n| n.faction).collect();
    assert!(factions.contains(&Faction::Red), "{factions:?}");
    assert_eq!(engine.count::<Respawn>(), 1);
    let npcs = engine.rows::<Npc>();
    engine.close().unwrap();
    let (engine, _) = open(dir.path());
    assert_eq!(engine.rows::<Npc>(), npcs);
    assert_eq!(
        engine.rows::<Npc>().iter().map(|n| n.id).max(),
        Some(npcs.len() as u32)
    );
}

#[test]
fn durable_replies_wait_for_their_tick() {
    let dir = tempfile::tempdir().unwrap();
    let (mut engine, _) = open(dir.path());
    let handle = engine.durability().unwrap();
    assert_eq!(handle.durable_up_to(), 0);
    // A direct call belongs to the next tick.
    call(&mut engine, "open_account", ("ann".to_string(), 1u32, 5i64));
    let call_seq = engine.tick_seq() + 1;
    engine.enqueue(Input::Call {
        request_id: 7,
        caller: alice().into(),
        reducer: "transfer".into(),
        args: {
            let mut args = Vec::new();
            1u64.encode(&mut args);
            1u64.encode(&mut args);
            1i64.encode(&mut args);
            args
        },
    });
    let out = engine.step(at_tick(1));
    assert_eq!(out.seq, call_seq);
    assert_eq!(out.outcomes[0].request_id, Some(7));
    let waiter = {
        let handle = handle.clone();
        let seq = out.seq;
        std::thread::spawn(move || handle.wait_durable(seq, Duration::from_secs(10)))
    };
    assert!(waiter.join().unwrap());
    assert!(handle.durable_up_to() >= out.seq);
    assert!(engine.durable_tick() >= out.seq);
    // Without durability every completed tick counts as durable.
    let mut memory = Engine::new(module(), engine_config()).unwrap();
    memory.step(at_tick(1));
    assert_eq!(memory.durable_tick(), 1);
    assert!(memory.durability().is_none());
}

#[test]
fn fsync_policies_all_make_ticks_durable_and_recoverable() {
    for fsync in [
        FsyncPolicy::EveryTick,
        FsyncPolicy::Interval(Duration::from_millis(5)),
        FsyncPolicy::Never,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let durability = DurabilityConfig {
            fsync,
            ..config(dir.path())
        };
        let (mut engine, _) = open_with(durability.clone());
        let next = workload(&mut engine, 1);
        let before = state(&engine);
        engine.close().unwrap();
        let (engine, report) = open_with(durability);
        assert_eq!(state(&engine), before, "{fsync:?}");
        assert_eq!(report.last_tick, next - 1);
    }
}

/// Copies the data files (not the lock) to a fresh directory.
fn copy_dir(from: &Path) -> tempfile::TempDir {
    fn copy_into(from: &Path, to: &Path) {
        for entry in fs::read_dir(from).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap();
            if path.is_dir() {
                fs::create_dir(to.join(name)).unwrap();
                copy_into(&path, &to.join(name));
            } else if name != "LOCK" {
                fs::copy(&path, to.join(name)).unwrap();
            }
        }
    }
    let to = tempfile::tempdir().unwrap();
    copy_into(from, to.path());
    to
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    found.sort();
    found
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).unwrap().len()
}

/// A database of a few ticks, each followed by its state and the segment's length.
struct Ticks {
    dir: tempfile::TempDir,
    states: Vec<String>,
    ends: Vec<u64>,
    segment: PathBuf,
}

fn small_log(ticks: u64) -> Ticks {
    let dir = tempfile::tempdir().unwrap();
    let (mut engine, _) = open(dir.path());
    call(
        &mut engine,
        "open_account",
        ("ann".to_string(), 1u32, 100i64),
    );
    call(
        &mut engine,
        "open_account",
        ("bob".to_string(), 2u32, 100i64),
    );
    let mut states = vec![state(&engine)];
    let mut ends = Vec::new();
    step_durably(&mut engine, 1);
    let segment = segments(dir.path()).pop().unwrap();
    states.push(state(&engine));
    ends.push(file_len(&segment));
    for n in 2..=ticks {
        call(&mut engine, "transfer", (1u64, 2u64, n as i64));
        step_durably(&mut engine, n);
        states.push(state(&engine));
        ends.push(file_len(&segment));
    }
    engine.close().unwrap();
    Ticks {
        dir,
        states,
        ends,
        segment,
    }
}

#[test]
fn a_truncated_tail_at_every_byte_of_the_last_record_recovers_the_previous_tick() {
    let log = small_log(4);
    let start = log.ends[2];
    let end = log.ends[3];
    assert!(end > start);
    for cut in start..end {
        let copy = copy_dir(log.dir.path());
        let segment = copy.path().join(log.segment.file_name().unwrap());
        OpenOptions::new()
            .write(true)
            .open(&segment)
            .unwrap()
            .set_len(cut)
            .unwrap();
        let (mut engine, report) = open(copy.path());
        assert_eq!(state(&engine), log.states[3], "cut at {cut}");
        assert_eq!(report.truncated_bytes, cut - start, "cut at {cut}");
        assert_eq!(
            report.truncated_ticks,
            u64::from(cut > start),
            "cut at {cut}"
        );
        assert_eq!(report.last_tick, 3);
        assert_eq!(
            file_len(&segment),
            start,
            "the torn tail is cut off the file"
        );
        engine.check_integrity().unwrap();
        if cut == start + 1 {
            // The engine appends after the truncated tail, and that recovers too.
            call(&mut engine, "transfer", (2u64, 1u64, 1i64));
            step_durably(&mut engine, 9);
            let after = state(&engine);
            engine.close().unwrap();
            let (engine, report) = open(copy.path());
            assert_eq!(state(&engine), after);
            assert_eq!(report.truncated_bytes, 0);
        }
    }
}

fn flip_bit(path: &Path, offset: u64, bit: u8) {
    let mut bytes = fs::read(path).unwrap();
    bytes[offset as usize] ^= 1 << bit;
    fs::write(path, bytes).unwrap();
}

#[test]
fn a_flipped_bit_in_a_middle_record_is_a_hard_error_naming_segment_and_offset() {
    let log = small_log(4);
    // Record of tick 2 spans ends[0]..ends[1]; ticks 3 and 4 follow it.
    let (start, end) = (log.ends[0], log.ends[1]);
    for offset in start..end {
        let copy = copy_dir(log.dir.path());
        let segment = copy.path().join(log.segment.file_name().unwrap());
        flip_bit(&segment, offset, (offset % 8) as u8);
        let error = Engine::open(module(), engine_config(), config(copy.path()))
            .err()
            .unwrap_or_else(|| panic!("flip at {offset} was not detected"));
        match error {
            EngineError::Durability(DurabilityError::Corrupt {
                segment: named,
                offset: at,
                ..
            }) => {
                assert_eq!(named, segment);
                assert_eq!(at, start, "flip at {offset}");
            }
            other => panic!("flip at {offset}: unexpected {other}"),
        }
        // Nothing was truncated: the damaged file is left for inspection.
        assert_eq!(file_len(&segment), file_len(&log.segment));
    }
    // A damaged segment header is detected too.
    let copy = copy_dir(log.dir.path());
    let segment = copy.path().join(log.segment.file_name().unwrap());
    flip_bit(&segment, 3, 0);
    let error = Engine::open(module(), engine_config(), config(copy.path())).err();
    assert!(
        matches!(
            error,
            Some(EngineError::Durability(DurabilityError::Corrupt {
                offset: 0,
                ..
            }))
        ),
        "{error:?}"
    );
}

#[test]
fn a_flipped_bit_in_the_last_record_is_treated_as_a_torn_tail() {
    let log = small_log(4);
    let (start, end) = (log.ends[2], log.ends[3]);
    for offset in start..end {
        let copy = copy_dir(log.dir.path());
        let segment = copy.path().join(log.segment.file_name().unwrap());
        flip_bit(&segment, offset, (offset % 8) as u8);
        let (engine, report) = open(copy.path());
        assert_eq!(state(&engine), log.states[3], "flip at {offset}");
        assert_eq!(report.truncated_bytes, end - start);
        assert_eq!(report.truncated_ticks, 1);
    }
}

/// Power loss in the middle of a group that was written but not yet fsynced: the disk may
/// keep the group's later pages and lose earlier ones, leaving a damaged record followed by
/// valid ones. None of them was synced (their synced watermarks say so), so recovery treats
/// the damage as a torn tail and recovers without an operator.
#[test]
fn power_loss_with_unsynced_pages_persisted_out_of_order_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let (mut engine, _) = open_with(DurabilityConfig {
        fsync: FsyncPolicy::Never,
        ..config(dir.path())
    });
    call(
        &mut engine,
        "open_account",
        ("ann".to_string(), 1u32, 100i64),
    );
    call(
        &mut engine,
        "open_account",
        ("bob".to_string(), 2u32, 100i64),
    );
    let segment = {
        step_durably(&mut engine, 1);
        segments(dir.path()).pop().unwrap()
    };
    let mut states = vec![String::new(), state(&engine)];
    let mut ends = vec![0, file_len(&segment)];
    for n in 2..=6 {
        call(&mut engine, "transfer", (1u64, 2u64, n as i64));
        step_durably(&mut engine, n);
        states.push(state(&engine));
        ends.push(file_len(&segment));
    }
    // The machine loses power now: what the disk holds is the files as they are (nothing
    // after the segment's creation was fsynced), except that tick 3's page never made it.
    let crashed = copy_dir(dir.path());
    let copy = crashed.path().join(segment.file_name().unwrap());
    let mut bytes = fs::read(&copy).unwrap();
    bytes[ends[2] as usize..ends[3] as usize].fill(0);
    fs::write(&copy, bytes).unwrap();
    let (recovered, report) = open(crashed.path());
    assert_eq!(
        state(&recovered),
        states[2],
        "recovered to the last intact tick"
    );
    assert_eq!(report.last_tick, 2);
    assert!(report.truncated_ticks >= 1, "{report:?}");
    assert_eq!(file_len(&copy), ends[2], "the unsynced tail is cut off");
    drop(recovered);
    engine.close().unwrap();
}

/// The same damage to records that had been synced (every tick fsynced) is refused: a later
/// record's synced watermark vouches that the damaged one had reached the disk.
#[test]
fn the_same_damage_to_synced_records_is_refused() {
    let log = small_log(5);
    let copy = copy_dir(log.dir.path());
    let segment = copy.path().join(log.segment.file_name().unwrap());
    let mut bytes = fs::read(&segment).unwrap();
    bytes[log.ends[1] as usize..log.ends[2] as usize].fill(0);
    fs::write(&segment, bytes).unwrap();
    match Engine::open(module(), engine_config(), config(copy.path())) {
        Err(EngineError::Durability(DurabilityError::Corrupt { offset, detail, .. })) => {
            assert_eq!(offset, log.ends[1]);
            assert!(detail.contains("synced"), "{detail}");
        }
        Err(other) => panic!("unexpected {other}"),
        Ok(_) => panic!("damage to synced records was accepted"),
    }
}

/// Connections open when the process stopped (crash or a shutdown that did not disconnect
/// them) get their `client_disconnected` at the next open, from the log or from a snapshot,
/// once; connections that disconnected, or whose `client_connected` failed, do not.
#[test]
fn connections_left_open_are_disconnected_after_a_restart() {
    for snapshot_every_ticks in [0, 1] {
        let dir = tempfile::tempdir().unwrap();
        let durability = || DurabilityConfig {
            snapshot_every_ticks,
            ..config(dir.path())
        };
        let (mut engine, _) = open_with(durability());
        let (ann, bob, banned) = (
            Caller::client(Identity::from_u64(1), ConnectionId(11)),
            Caller::client(Identity::from_u64(2), ConnectionId(12)),
            Caller::client(Identity::from_u64(666), ConnectionId(13)),
        );
        engine.client_connected(ann).unwrap();
        engine.client_connected(bob).unwrap();
        assert!(engine.client_connected(banned).is_err());
        step_durably(&mut engine, 1);
        engine.client_disconnected(bob).unwrap();
        step_durably(&mut engine, 2);
        step_durably(&mut engine, 3);
        assert_eq!(engine.open_connections(), [ann]);
        // The process stops without disconnecting ann.
        engine.close().unwrap();

        let (mut engine, report) = open_with(durability());
        assert_eq!(
            report.open_connections, 1,
            "snapshots every {snapshot_every_ticks}"
        );
        assert_eq!(engine.disconnect_stale_connections(), 1);
        step_durably(&mut engine, 4);
        let ended: Vec<Identity> = engine
            .rows::<LifecycleLog>()
            .into_iter()
            .filter(|l| l.event == "disconnected")
            .map(|l| l.who)
            .collect();
        assert_eq!(ended, [bob.identity, ann.identity]);
        assert!(engine.open_connections().is_empty());
        engine.close().unwrap();
        // Done once: the next open finds nothing left open.
        let (mut engine, report) = open_with(durability());
        assert_eq!(report.open_connections, 0);
        assert_eq!(engine.disconnect_stale_connections(), 0);
    }
}

mod changed {
    use orrery_engine::prelude::*;

    /// `account` with a column removed and one retyped.
    #[table(name = account, public)]
    #[derive(Clone, Debug, PartialEq)]
    pub struct Account {
        #[primary_key]
        #[auto_inc]
        pub id: u64,
        pub name: String,
        pub balance: i32,
    }

    /// A table a later version of the module adds at the end.
    #[table(name = guild, public)]
    #[derive(Clone, Debug, PartialEq)]
    pub struct Guild {
        #[primary_key]
        pub id: u64,
    }
}

/// Logs and snapshots name the schema that wrote them: a module that only adds tables at the
/// end opens the data; one that changed a table is refused with the table named, and so is
/// going back to a module without the added table once data was written with it.
#[test]
fn opening_with_a_different_schema_names_the_tables_that_differ() {
    for snapshot_every_ticks in [0, 1] {
        let dir = tempfile::tempdir().unwrap();
        let durability = || DurabilityConfig {
            snapshot_every_ticks,
            ..config(dir.path())
        };
        let (mut engine, _) = open_with(durability());
        call(&mut engine, "open_account", ("ann".to_string(), 1u32, 5i64));
        step_durably(&mut engine, 1);
        let before = state(&engine);
        engine.close().unwrap();

        let changed = Module::builder("bank")
            .table::<changed::Account>()
            .build()
            .unwrap();
        match Engine::open(changed, engine_config(), durability()) {
            Err(EngineError::Durability(DurabilityError::SchemaMismatch {
                tables,
                detail,
                ..
            })) => {
                assert!(tables[0].starts_with("account (columns"), "{tables:?}");
                assert!(tables.iter().any(|t| t == "npc (removed)"), "{tables:?}");
                assert!(detail.contains("written by schema"), "{detail}");
            }
            Err(other) => panic!("unexpected {other}"),
            Ok(_) => panic!("a changed table was accepted"),
        }

        // Adding a table at the end is fine, and the data is all there.
        let grown = || {
            let mut builder = Module::builder("bank");
            builder = builder
                .table::<Account>()
                .table::<Npc>()
                .table::<Respawn>()
                .table::<Hit>()
                .table::<LifecycleLog>()
                .table::<AllTypes>()
                .table::<Scratch>()
                .table::<changed::Guild>();
            builder
                .reducers(reducers![open_account, respawn_npc])
                .build()
                .unwrap()
        };
        let (mut engine, _) = Engine::open(grown(), engine_config(), durability()).unwrap();
        assert_eq!(engine.rows::<Account>().len(), 1, "{before}");
        call(&mut engine, "open_account", ("bob".to_string(), 1u32, 5i64));
        step_durably(&mut engine, 2);
        engine.close().unwrap();
        // Data written with `guild` cannot be read by a module without it.
        match Engine::open(module(), engine_config(), durability()) {
            Err(EngineError::Durability(DurabilityError::SchemaMismatch { tables, .. })) => {
                assert_eq!(tables, ["guild (removed)"]);
            }
            Err(other) => panic!("unexpected {other}"),
            Ok(_) => panic!("data of a removed table was accepted"),
        }
    }
}

#[test]
fn a_missing_segment_is_a_gap_error_not_silent_loss() {
    let dir = tempfile::tempdir().unwrap();
    let durability = DurabilityConfig {
        segment_max_bytes: 256,
        ..config(dir.path())
    };
    let (mut engine, _) = open_with(durability.clone());
    workload(&mut engine, 1);
    engine.close().unwrap();
    let all = segments(dir.path());
    assert!(all.len() >= 3, "segments rotate: {all:?}");
    fs::remove_file(&all[0]).unwrap();
    let error = Engine::open(module(), engine_config(), durability).err();
    assert!(
        matches!(
            error,
            Some(EngineError::Durability(DurabilityError::Gap {
                missing: 1,
                ..
            }))
        ),
        "{error:?}"
    );
}

#[test]
fn segments_rotate_and_snapshots_prune_what_they_cover() {
    let dir = tempfile::tempdir().unwrap();
    let durability = DurabilityConfig {
        segment_max_bytes: 256,
        snapshot_every_ticks: 4,
        ..config(dir.path())
    };
    let (mut engine, _) = open_with(durability.clone());
    let mut n = workload(&mut engine, 1);
    for _ in 0..20 {
        call(&mut engine, "transfer", (1u64, 2u64, 1i64));
        step_durably(&mut engine, n);
        n += 1;
    }
    let before = state(&engine);
    let handle = engine.durability().unwrap();
    engine.close().unwrap();
    let newest = handle.last_snapshot();
    assert!(newest >= n - 5, "snapshot {newest}, tick {}", n - 1);
    let snapshots: Vec<PathBuf> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "snapshot"))
        .collect();
    assert_eq!(snapshots.len(), 2, "{snapshots:?}");
    let first_segment = segments(dir.path())[0].clone();
    let first_seq: u64 = first_segment
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(first_seq > 1, "old segments were pruned");

    let (engine, report) = open_with(durability.clone());
    assert_eq!(state(&engine), before);
    assert_eq!(report.snapshot_tick, Some(newest));
    drop(engine);

    // If the newest snapshot is damaged, the older one plus the kept log still recover all.
    let newest_path = dir.path().join(format!("{newest:020}.snapshot"));
    let len = file_len(&newest_path);
    flip_bit(&newest_path, len / 2, 1);
    let (engine, report) = open_with(durability);
    assert_eq!(state(&engine), before);
    assert!(report.snapshot_tick.unwrap() < newest);
}

#[test]
fn a_write_failure_stops_writes_and_nothing_unacknowledged_is_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let durability = DurabilityConfig {
        fail_after_bytes: Some(600),
        ..config(dir.path())
    };
    let (mut engine, _) = open_with(durability);
    let handle = engine.durability().unwrap();
    let mut states = vec![state(&engine)];
    let mut failed_at = None;
    for n in 1..100u64 {
        call(
            &mut engine,
            "open_account",
            (format!("user{n}"), 1u32, 10i64),
        );
        let out = engine.step(at_tick(n));
        states.push(state(&engine));
        if !handle.wait_durable(out.seq, Duration::from_secs(10)) {
            failed_at = Some(out.seq);
            break;
        }
    }
    let failed_at = failed_at.expect("the injected fault fired");
    let failure = handle.failure().expect("the failure is reported");
    assert!(failure.contains("no space left"), "{failure}");
    assert_eq!(engine.storage_failure(), Some(failure.clone()));
    let durable = handle.durable_up_to();
    assert!(durable < failed_at);

    // Further writes are refused and steps change nothing.
    let error = engine
        .call_reducer("open_account", alice(), ("late".to_string(), 1u32, 1i64))
        .unwrap_err();
    assert!(matches!(error, ReducerError::Storage(_)), "{error}");
    engine.enqueue(Input::Connect {
        caller: alice().into(),
    });
    let tick = engine.tick();
    let out = engine.step(at_tick(500));
    assert_eq!(out.storage_error.as_deref(), Some(failure.as_str()));
    assert!(out.changes.is_empty());
    assert_eq!(engine.tick(), tick);
    assert!(matches!(
        out.outcomes[0].result,
        Err(ReducerError::Storage(_))
    ));
    assert!(matches!(engine.close(), Err(DurabilityError::Failed(_))));

    // What is on disk is exactly what was acknowledged.
    let (engine, report) = open(dir.path());
    assert_eq!(report.last_tick, durable);
    assert_eq!(state(&engine), states[durable as usize]);
    assert!(
        report.truncated_bytes > 0,
        "the cut-short write was a torn tail"
    );
}

#[test]
fn a_locked_directory_cannot_be_opened_twice() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, _) = open(dir.path());
    let error = Engine::open(module(), engine_config(), config(dir.path())).err();
    assert!(
        matches!(
            error,
            Some(EngineError::Durability(DurabilityError::Locked(_)))
        ),
        "{error:?}"
    );
    drop(engine);
    let _ = open(dir.path());
}

#[derive(Clone, Debug)]
enum Op {
    Open(u8, i64),
    Transfer(u8, u8, i64),
    Swap(u8, u8),
    Close(u8),
    Ghost,
    Spawn(f32),
    Wound(u8),
    Step,
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (any::<u8>(), 0i64..100).prop_map(|(n, b)| Op::Open(n % 8, b)),
        (1u8..10, 1u8..10, 1i64..50).prop_map(|(a, b, m)| Op::Transfer(a, b, m)),
        (1u8..10, 1u8..10).prop_map(|(a, b)| Op::Swap(a, b)),
        (1u8..10).prop_map(Op::Close),
        Just(Op::Ghost),
        (-5.0f32..5.0).prop_map(Op::Spawn),
        (1u8..6).prop_map(Op::Wound),
        Just(Op::Step),
        Just(Op::Step),
        Just(Op::Restart),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Random programs with restarts (some from snapshots, some through rotated segments)
    /// always recover the state before the restart.
    #[test]
    fn random_programs_recover_exactly(ops in proptest::collection::vec(op(), 1..40), every in 0u64..4) {
        let dir = tempfile::tempdir().unwrap();
        let durability = DurabilityConfig {
            snapshot_every_ticks: every,
            segment_max_bytes: 512,
            ..config(dir.path())
        };
        let (mut engine, _) = open_with(durability.clone());
        let mut n = 1;
        for op in ops {
            let _ = match op {
                Op::Open(name, balance) => engine.call_reducer("open_account", alice(), (format!("n{name}"), 1u32, balance)),
                Op::Transfer(a, b, m) => engine.call_reducer("transfer", alice(), (u64::from(a), u64::from(b), m)),
                Op::Swap(a, b) => engine.call_reducer("swap_names", alice(), (u64::from(a), u64::from(b))),
                Op::Close(a) => engine.call_reducer("close_account", alice(), (u64::from(a),)),
                Op::Ghost => engine.call_reducer("insert_then_delete", alice(), ("ghost".to_string(),)),
                Op::Spawn(vx) => engine.call_reducer("spawn_npc", alice(), (Faction::Red, 0.5f32, vx)),
                Op::Wound(id) => engine.call_reducer("wound", alice(), (u32::from(id), 6i32)),
                Op::Step => {
                    step_durably(&mut engine, n);
                    n += 1;
                    Ok(())
                }
                Op::Restart => {
                    step_durably(&mut engine, n);
                    n += 1;
                    let before = state(&engine);
                    engine.close().unwrap();
                    let (reopened, _) = open_with(durability.clone());
                    engine = reopened;
                    prop_assert_eq!(state(&engine), before);
                    prop_assert!(engine.check_integrity().is_ok());
                    Ok(())
                }
            };
        }
        step_durably(&mut engine, n);
        let before = state(&engine);
        engine.close().unwrap();
        let (mut engine, _) = open_with(durability);
        prop_assert_eq!(state(&engine), before);
        prop_assert!(engine.check_integrity().is_ok());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Random damage to a log (bytes changed anywhere, optionally a cut) never panics and never
    /// recovers a state that did not exist: recovery either fails with an error or yields the
    /// state after some tick, with exact indexes.
    #[test]
    fn random_damage_is_an_error_or_a_real_earlier_state(
        damage in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 0..4),
        cut in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        let log = small_log(5);
        let fresh = {
            let empty = tempfile::tempdir().unwrap();
            state(&open(empty.path()).0)
        };
        let copy = copy_dir(log.dir.path());
        let segment = copy.path().join(log.segment.file_name().unwrap());
        let mut bytes = fs::read(&segment).unwrap();
        for (at, xor) in &damage {
            let i = at.index(bytes.len());
            bytes[i] ^= xor;
        }
        if let Some(cut) = cut {
            bytes.truncate(cut.index(bytes.len() + 1));
        }
        fs::write(&segment, &bytes).unwrap();
        match Engine::open(module(), engine_config(), config(copy.path())) {
            Ok((mut engine, _)) => {
                let got = state(&engine);
                prop_assert!(
                    got == fresh || log.states[1..].contains(&got),
                    "recovered a state that never existed:\n{got}"
                );
                prop_assert!(engine.check_integrity().is_ok());
            }
            Err(EngineError::Durability(_)) => {}
            Err(other) => prop_assert!(false, "unexpected error {other}"),
        }
    }
}
