//! Property test: random reducer programs (some failing, some panicking) against a model.
//! After every call the table and all its indexes equal the model; after every tick the change
//! set, applied to the previous state, reproduces the new state.

#![allow(missing_docs)]

use std::collections::BTreeMap;

use orrery_engine::prelude::*;
use orrery_engine::{ReducerError, RowOp, SystemsExecutor};
use proptest::prelude::*;

#[table(name = item, public)]
#[derive(Clone, Debug, PartialEq)]
pub struct Item {
    #[primary_key]
    #[auto_inc]
    pub id: u64,
    #[unique]
    pub code: u32,
    #[index(btree)]
    pub group: u8,
    pub value: i64,
}

#[derive(OrreryType, Clone, Debug, PartialEq)]
pub enum Op {
    Insert {
        code: u32,
        group: u8,
        value: i64,
    },
    Update {
        id: u64,
        code: u32,
        group: u8,
        value: i64,
    },
    UpdateByCode {
        code: u32,
        group: u8,
        value: i64,
    },
    /// Adds to a row's value through a `find_mut` guard; nothing if the row is missing.
    Bump {
        id: u64,
        by: i64,
    },
    Delete {
        id: u64,
    },
    DeleteGroup {
        group: u8,
    },
}

#[reducer]
pub fn apply(ctx: &mut ReducerContext, ops: Vec<Op>, fail: u8) -> Result<(), String> {
    for op in ops {
        match op {
            Op::Insert { code, group, value } => {
                ctx.db.item().insert(Item {
                    id: 0,
                    code,
                    group,
                    value,
                })?;
            }
            Op::Update {
                id,
                code,
                group,
                value,
            } => {
                ctx.db.item().id().update(Item {
                    id,
                    code,
                    group,
                    value,
                })?;
            }
            Op::UpdateByCode { code, group, value } => {
                let row = ctx.db.item().code().find(&code).ok_or("no such code")?;
                ctx.db.item().code().update(Item {
                    group,
                    value,
                    ..row
                })?;
            }
            Op::Bump { id, by } => {
                if let Some(mut row) = ctx.db.item().id().find_mut(&id) {
                    row.value = row.value.wrapping_add(by);
                }
            }
            Op::Delete { id } => {
                ctx.db.item().id().delete(&id);
            }
            Op::DeleteGroup { group } => {
                ctx.db.item().group().delete(&group);
            }
        }
    }
    match fail {
        1 => Err("requested failure".into()),
        2 => panic!("requested panic"),
        _ => Ok(()),
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
struct Model {
    rows: BTreeMap<u64, Item>,
    next_id: u64,
}

impl Model {
    /// Applies a program; returns the new model or `None` if any op fails.
    fn apply(&self, ops: &[Op]) -> Option<Model> {
        let mut m = self.clone();
        let code_taken = |m: &Model, code: u32, except: Option<u64>| {
            m.rows
                .values()
                .any(|r| r.code == code && Some(r.id) != except)
        };
        for op in ops {
            match *op {
                Op::Insert { code, group, value } => {
                    if code_taken(&m, code, None) {
                        return None;
                    }
                    let id = m.next_id;
                    m.next_id += 1;
                    m.rows.insert(
                        id,
                        Item {
                            id,
                            code,
                            group,
                            value,
                        },
                    );
                }
                Op::Update {
                    id,
                    code,
                    group,
                    value,
                } => {
                    if !m.rows.contains_key(&id) || code_taken(&m, code, Some(id)) {
                        return None;
                    }
                    m.rows.insert(
                        id,
                        Item {
                            id,
                            code,
                            group,
                            value,
                        },
                    );
                }
                Op::UpdateByCode { code, group, value } => {
                    let row = m.rows.values_mut().find(|r| r.code == code)?;
                    row.group = group;
                    row.value = value;
                }
                Op::Bump { id, by } => {
                    if let Some(row) = m.rows.get_mut(&id) {
                        row.value = row.value.wrapping_add(by);
                    }
                }
                Op::Delete { id } => {
                    m.rows.remove(&id);
                }
                Op::DeleteGroup { group } => m.rows.retain(|_, r| r.group != group),
            }
        }
        Some(m)
    }
}

/// Random operations; without deletes, every key keeps one change-log entry per tick (writes
/// merge into it, rollbacks restore it), which the tick-end fold then takes as it is.
fn op(deletes: bool) -> BoxedStrategy<Op> {
    let code = 0u32..10;
    let group = 0u8..4;
    let id = 1u64..14;
    let writes = prop_oneof![
        4 => (code.clone(), group.clone(), any::<i64>()).prop_map(|(code, group, value)| Op::Insert { code, group, value }),
        3 => (id.clone(), code.clone(), group.clone(), -5i64..5).prop_map(|(id, code, group, value)| Op::Update { id, code, group, value }),
        2 => (code, group.clone(), -5i64..5).prop_map(|(code, group, value)| Op::UpdateByCode { code, group, value }),
        2 => (id.clone(), -5i64..5).prop_map(|(id, by)| Op::Bump { id, by }),
    ];
    if !deletes {
        return writes.boxed();
    }
    prop_oneof![
        11 => writes,
        2 => id.prop_map(|id| Op::Delete { id }),
        1 => group.prop_map(|group| Op::DeleteGroup { group }),
    ]
    .boxed()
}

fn program(deletes: bool) -> impl Strategy<Value = (Vec<Op>, u8, bool)> {
    (
        proptest::collection::vec(op(deletes), 1..6),
        prop_oneof![6 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8)],
        proptest::bool::weighted(0.3),
    )
}

fn check_indexes(engine: &mut Engine, model: &Model) {
    engine.check_integrity().unwrap();
    let rows: Vec<Item> = model.rows.values().cloned().collect();
    assert_eq!(engine.rows::<Item>(), rows);
    engine.read(|db| {
        for code in 0..10u32 {
            let expected = model.rows.values().find(|r| r.code == code).cloned();
            assert_eq!(db.item().code().find(&code), expected, "code {code}");
        }
        for group in 0..4u8 {
            let expected: Vec<u64> = model
                .rows
                .values()
                .filter(|r| r.group == group)
                .map(|r| r.id)
                .collect();
            let got: Vec<u64> = db.item().group().filter(&group).map(|r| r.id).collect();
            assert_eq!(got, expected, "group {group}");
        }
        assert_eq!(db.item().count(), model.rows.len() as u64);
    });
}

fn apply_changes(before: &BTreeMap<u64, Item>, ops: &[RowOp<Item>]) -> BTreeMap<u64, Item> {
    let mut mirror = before.clone();
    for op in ops {
        match op {
            RowOp::Insert(row) => {
                assert!(
                    mirror.insert(row.id, row.clone()).is_none(),
                    "insert of existing {}",
                    row.id
                );
            }
            RowOp::Update(row) => {
                assert!(
                    mirror.insert(row.id, row.clone()).is_some(),
                    "update of missing {}",
                    row.id
                );
            }
            RowOp::Delete(id) => {
                assert!(mirror.remove(id).is_some(), "delete of missing {id}");
            }
        }
    }
    mirror
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn random_programs_match_the_model(programs in proptest::collection::vec(program(true), 1..40)) {
        run_programs(programs)?;
    }

    #[test]
    fn random_programs_without_deletes_match_the_model(
        programs in proptest::collection::vec(program(false), 1..40),
    ) {
        run_programs(programs)?;
    }
}

fn run_programs(programs: Vec<(Vec<Op>, u8, bool)>) -> Result<(), TestCaseError> {
    // Requested panics are expected here; keep their reports out of the test output.
    std::panic::set_hook(Box::new(|_| {}));
    let module = Module::builder("model")
        .table::<Item>()
        .reducers(reducers![apply])
        .build()
        .unwrap();
    let config = EngineConfig {
        executor: SystemsExecutor::SingleThreaded,
        ..EngineConfig::default()
    };
    let mut engine = Engine::new(module, config).unwrap();
    let mut model = Model {
        next_id: 1,
        ..Model::default()
    };
    let mut published = model.rows.clone();
    let mut tick = 0i64;
    for (ops, fail, step_after) in programs {
        let result = engine.call_reducer("apply", Identity::ZERO, (ops.clone(), fail));
        match (model.apply(&ops), fail) {
            (Some(next), 0) => {
                prop_assert!(result.is_ok(), "{result:?}");
                model = next;
            }
            // A failing op returns before the requested panic is reached.
            (Some(_), 2) => prop_assert!(
                matches!(result, Err(ReducerError::Panicked { .. })),
                "{result:?}"
            ),
            _ => prop_assert!(
                matches!(result, Err(ReducerError::Failed { .. })),
                "{result:?}"
            ),
        }
        check_indexes(&mut engine, &model);
        if step_after {
            tick += 1;
            let out = engine.step(Timestamp::from_micros(tick * 50_000));
            let ops = out.changes.rows::<Item>().unwrap();
            let mut seen = std::collections::BTreeSet::new();
            for op in &ops {
                let id = match op {
                    RowOp::Insert(r) | RowOp::Update(r) => r.id,
                    RowOp::Delete(id) => *id,
                };
                prop_assert!(seen.insert(id), "row {} reported twice in one tick", id);
            }
            prop_assert_eq!(apply_changes(&published, &ops), model.rows.clone());
            published = model.rows.clone();
        }
    }
    Ok(())
}
