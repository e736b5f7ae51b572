//! Capture edge cases: system writes that break constraints, pk changes, spawned rows, and
//! determinism of reducer randomness and replay.

#![allow(missing_docs)]

use orrery_engine::bevy_ecs::prelude::*;
use orrery_engine::prelude::*;
use orrery_engine::{RowOp, SystemsExecutor};

#[table(name = tag, public)]
#[derive(Clone, Debug, PartialEq)]
pub struct Tag {
    #[primary_key]
    #[auto_inc]
    pub id: u32,
    #[unique]
    pub name: String,
    pub value: i32,
}

#[table(name = draw, public)]
#[derive(Clone, Debug, PartialEq)]
pub struct Draw {
    #[primary_key]
    #[auto_inc]
    pub id: u64,
    pub value: u64,
    pub tick: u32,
}

#[reducer]
pub fn add_tag(ctx: &mut ReducerContext, name: String) -> Result<(), String> {
    ctx.db.tag().insert(Tag {
        id: 0,
        name,
        value: 0,
    })?;
    Ok(())
}

#[reducer]
pub fn roll(ctx: &mut ReducerContext, times: u8) -> Result<(), String> {
    use orrery_engine::rand::RngExt;
    for _ in 0..times {
        let value = ctx.rng.random_range(0..1_000_000u64);
        let tick = ctx.tick.get();
        ctx.db.draw().insert(Draw { id: 0, value, tick })?;
    }
    Ok(())
}

/// What the test wants the system to do this tick.
#[derive(Resource, Default)]
pub struct Directive(pub Option<Action>);

#[derive(Clone)]
pub enum Action {
    Rename { id: u32, to: String },
    ChangePk { id: u32, to: u32 },
    Spawn(Tag),
    Bump,
}

fn act(mut directive: ResMut<Directive>, mut tags: Query<&mut Tag>, mut commands: Commands) {
    let Some(action) = directive.0.take() else {
        return;
    };
    match action {
        Action::Rename { id, to } => {
            for mut tag in &mut tags {
                if tag.id == id {
                    tag.name = to.clone();
                    tag.value += 1;
                }
            }
        }
        Action::ChangePk { id, to } => {
            for mut tag in &mut tags {
                if tag.id == id {
                    tag.id = to;
                }
            }
        }
        Action::Spawn(tag) => {
            commands.spawn(tag);
        }
        Action::Bump => {
            for mut tag in &mut tags {
                tag.value += 1;
            }
        }
    }
}

fn engine() -> Engine {
    let module = Module::builder("capture")
        .table::<Tag>()
        .table::<Draw>()
        .reducers(reducers![add_tag, roll])
        .resource(Directive::default())
        .add_systems(act)
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

fn step_with(engine: &mut Engine, n: i64, action: Action) -> orrery_engine::TickOutput {
    engine.resource_mut::<Directive>().0 = Some(action);
    engine.step(ts(n))
}

fn tags(engine: &mut Engine) -> Vec<(u32, String)> {
    engine
        .rows::<Tag>()
        .into_iter()
        .map(|t| (t.id, t.name))
        .collect()
}

#[test]
fn system_unique_conflict_is_reverted_but_other_columns_kept() {
    let mut engine = engine();
    engine
        .call_reducer("add_tag", Identity::ZERO, ("a".to_string(),))
        .unwrap();
    engine
        .call_reducer("add_tag", Identity::ZERO, ("b".to_string(),))
        .unwrap();
    engine.step(ts(1));
    let out = step_with(
        &mut engine,
        2,
        Action::Rename {
            id: 2,
            to: "a".into(),
        },
    );
    assert_eq!(out.capture.rejected, 1);
    assert_eq!(tags(&mut engine), vec![(1, "a".into()), (2, "b".into())]);
    assert_eq!(
        engine.find::<Tag>(&2).unwrap().value,
        1,
        "non-key column change survives"
    );
    assert_eq!(
        out.changes.rows::<Tag>().unwrap(),
        vec![RowOp::Update(Tag {
            id: 2,
            name: "b".into(),
            value: 1
        })]
    );
    engine.check_integrity().unwrap();

    // A legal rename re-indexes.
    step_with(
        &mut engine,
        3,
        Action::Rename {
            id: 2,
            to: "c".into(),
        },
    );
    engine.check_integrity().unwrap();
    engine.read(|db| {
        assert_eq!(db.tag().name().find(&"c".to_string()).unwrap().id, 2);
        assert!(db.tag().name().find(&"b".to_string()).is_none());
    });
}

#[test]
fn system_pk_change_is_reverted() {
    let mut engine = engine();
    engine
        .call_reducer("add_tag", Identity::ZERO, ("a".to_string(),))
        .unwrap();
    engine.step(ts(1));
    let out = step_with(&mut engine, 2, Action::ChangePk { id: 1, to: 9 });
    assert_eq!(out.capture.rejected, 1);
    assert_eq!(tags(&mut engine), vec![(1, "a".into())]);
    engine.check_integrity().unwrap();
}

#[test]
fn rows_spawned_by_systems_are_indexed_or_rejected() {
    let mut engine = engine();
    engine
        .call_reducer("add_tag", Identity::ZERO, ("a".to_string(),))
        .unwrap();
    engine.step(ts(1));
    // id 0 asks for auto-increment.
    let out = step_with(
        &mut engine,
        2,
        Action::Spawn(Tag {
            id: 0,
            name: "s".into(),
            value: 5,
        }),
    );
    assert_eq!(out.capture.inserted, 1);
    assert_eq!(
        out.changes.rows::<Tag>().unwrap(),
        vec![RowOp::Insert(Tag {
            id: 2,
            name: "s".into(),
            value: 5
        })]
    );
    // Duplicate unique name: rejected, not indexed, not reported.
    let out = step_with(
        &mut engine,
        3,
        Action::Spawn(Tag {
            id: 0,
            name: "a".into(),
            value: 1,
        }),
    );
    assert_eq!((out.capture.inserted, out.capture.rejected), (0, 1));
    assert!(out.changes.table::<Tag>().is_none());
    engine.check_integrity().unwrap();
    // The rejected row did not consume a sequence value.
    engine
        .call_reducer("add_tag", Identity::ZERO, ("t".to_string(),))
        .unwrap();
    assert_eq!(engine.find::<Tag>(&3).unwrap().name, "t");
    // Every row changed by a system in a tick is reported exactly once.
    let out = step_with(&mut engine, 4, Action::Bump);
    let ops = out.changes.rows::<Tag>().unwrap();
    assert_eq!(ops.len(), 3, "{ops:?}");
    assert!(matches!(&ops[0], RowOp::Insert(t) if t.id == 3 && t.value == 1));
}

#[test]
fn reducer_rng_is_deterministic_per_seed_tick_and_call() {
    let run = |seed: u64| {
        let module = Module::builder("capture")
            .table::<Tag>()
            .table::<Draw>()
            .reducers(reducers![add_tag, roll])
            .resource(Directive::default())
            .add_systems(act)
            .build()
            .unwrap();
        let mut engine = Engine::new(
            module,
            EngineConfig {
                seed,
                ..Default::default()
            },
        )
        .unwrap();
        let mut changes = Vec::new();
        for n in 1..5 {
            engine.call_reducer("roll", Identity::ZERO, (3u8,)).unwrap();
            engine.call_reducer("roll", Identity::ZERO, (2u8,)).unwrap();
            changes.push(engine.step(ts(n)).changes);
        }
        (
            engine
                .rows::<Draw>()
                .into_iter()
                .map(|d| d.value)
                .collect::<Vec<_>>(),
            changes,
        )
    };
    let (a, changes_a) = run(7);
    let (b, changes_b) = run(7);
    let (c, _) = run(8);
    assert_eq!(a, b, "same seed and inputs replay identically");
    assert_eq!(changes_a, changes_b);
    assert_ne!(a, c, "a different seed draws differently");
    assert_eq!(a.len(), 20);
    let distinct: std::collections::BTreeSet<_> = a.iter().collect();
    assert_eq!(
        distinct.len(),
        20,
        "calls and ticks draw from different streams"
    );
}

/// A table no system writes in place: capture does not scan it, and relies on the hooks and the
/// archetype of new rows instead.
#[table(name = note, public)]
#[derive(Clone, Debug, PartialEq)]
pub struct Note {
    #[primary_key]
    pub id: u32,
    #[unique]
    pub text: String,
}

#[derive(Resource, Default)]
pub struct NoteDirective(pub Vec<NoteAction>);

#[derive(Clone)]
pub enum NoteAction {
    Spawn(Note),
    Despawn(u32),
    Replace(u32, Note),
}

fn edit_notes(
    mut directive: ResMut<NoteDirective>,
    notes: Query<(Entity, &Note)>,
    mut commands: Commands,
) {
    for action in directive.0.drain(..) {
        match action {
            NoteAction::Spawn(note) => {
                commands.spawn(note);
            }
            NoteAction::Despawn(id) => {
                if let Some((e, _)) = notes.iter().find(|(_, n)| n.id == id) {
                    commands.entity(e).despawn();
                }
            }
            NoteAction::Replace(id, note) => {
                if let Some((e, _)) = notes.iter().find(|(_, n)| n.id == id) {
                    commands.entity(e).insert(note);
                }
            }
        }
    }
}

#[reducer]
pub fn add_note(ctx: &mut ReducerContext, id: u32, text: String) -> Result<(), String> {
    ctx.db.note().insert(Note { id, text })?;
    Ok(())
}

#[test]
fn tables_written_only_through_commands_are_captured_without_scanning() {
    let module = Module::builder("notes")
        .table::<Note>()
        .reducers(reducers![add_note])
        .resource(NoteDirective::default())
        .add_systems(edit_notes)
        .build()
        .unwrap();
    let mut engine = Engine::new(module, EngineConfig::default()).unwrap();
    engine
        .call_reducer("add_note", Identity::ZERO, (1u32, "one".to_string()))
        .unwrap();
    engine
        .call_reducer("add_note", Identity::ZERO, (2u32, "two".to_string()))
        .unwrap();
    engine.step(ts(1));
    let mut run = |n: i64, actions: Vec<NoteAction>| {
        engine.resource_mut::<NoteDirective>().0 = actions;
        let out = engine.step(ts(n));
        let ops = out.changes.rows::<Note>().unwrap();
        (out.capture, ops)
    };
    let note = |id: u32, text: &str| Note {
        id,
        text: text.into(),
    };

    let (stats, ops) = run(
        2,
        vec![NoteAction::Spawn(note(3, "three")), NoteAction::Despawn(1)],
    );
    assert_eq!((stats.inserted, stats.deleted), (1, 1));
    assert_eq!(ops, vec![RowOp::Delete(1), RowOp::Insert(note(3, "three"))]);

    let (stats, ops) = run(3, vec![NoteAction::Replace(2, note(2, "deux"))]);
    assert_eq!(stats.updated, 1);
    assert_eq!(ops, vec![RowOp::Update(note(2, "deux"))]);

    // Replacing onto a taken unique key is reverted to the indexed keys.
    let (stats, ops) = run(4, vec![NoteAction::Replace(2, note(2, "three"))]);
    assert_eq!(stats.rejected, 1);
    assert_eq!(ops, vec![RowOp::Update(note(2, "deux"))]);
    // A duplicate primary key spawned by a system is rejected.
    let (stats, ops) = run(5, vec![NoteAction::Spawn(note(3, "other"))]);
    assert_eq!((stats.inserted, stats.rejected), (0, 1));
    assert!(ops.is_empty());
    engine.check_integrity().unwrap();
    engine.read(|db| {
        assert_eq!(db.note().text().find(&"deux".to_string()).unwrap().id, 2);
        assert_eq!(db.note().text().find(&"three".to_string()).unwrap().id, 3);
        assert_eq!(db.note().count(), 2);
    });
}
