//! `find_mut` guards: writes in place through the primary key and unique columns, undone with
//! the call, re-indexing changed key columns, and recording nothing when only read.

#![allow(missing_docs)]

mod common;

use common::{Account, account, alice, at_tick};
use orrery_engine::prelude::*;
use orrery_engine::{ReducerError, RowOp, SystemsExecutor};

#[reducer]
pub fn open(
    ctx: &mut ReducerContext,
    name: String,
    level: u32,
    balance: i64,
) -> Result<(), String> {
    ctx.db.account().insert(Account {
        id: 0,
        name,
        level,
        owner: ctx.sender,
        balance,
    })?;
    Ok(())
}

/// Edits row `id` through the primary key guard, then fails if asked to.
#[reducer]
pub fn edit(
    ctx: &mut ReducerContext,
    id: u64,
    name: String,
    level: u32,
    delta: i64,
    fail: bool,
) -> Result<(), String> {
    let mut accounts = ctx.db.account();
    let mut row = accounts.id().find_mut(&id).ok_or("no such account")?;
    row.balance += delta;
    row.name = name;
    row.level = level;
    drop(row);
    if fail {
        return Err("requested failure".into());
    }
    Ok(())
}

/// Moves `amount` between two rows with one guard each, through one table handle.
#[reducer]
pub fn pay(ctx: &mut ReducerContext, from: String, to: String, amount: i64) -> Result<(), String> {
    let mut accounts = ctx.db.account();
    {
        let mut payer = accounts.name().find_mut(&from).ok_or("no payer")?;
        if payer.balance < amount {
            return Err("insufficient funds".into());
        }
        payer.balance -= amount;
    }
    let mut payee = accounts.name().find_mut(&to).ok_or("no payee")?;
    payee.balance += amount;
    Ok(())
}

/// Opens a guard and only reads through it.
#[reducer]
pub fn peek(ctx: &mut ReducerContext, id: u64) -> Result<(), String> {
    if let Some(row) = ctx.db.account().id().find_mut(&id)
        && row.balance < 0
    {
        return Err("negative".into());
    }
    Ok(())
}

/// Renames through a guard and handles a taken name itself with `save`, then changes the
/// balance through a second guard, which commits.
#[reducer]
pub fn rename_or_tip(ctx: &mut ReducerContext, id: u64, name: String) -> Result<(), String> {
    let mut accounts = ctx.db.account();
    let mut row = accounts.id().find_mut(&id).ok_or("no such account")?;
    row.name = name;
    if row.save().is_err() {
        let mut row = accounts.id().find_mut(&id).ok_or("no such account")?;
        row.balance += 1;
    }
    Ok(())
}

/// Tries to change the primary key through a guard.
#[reducer]
pub fn rekey(ctx: &mut ReducerContext, id: u64, new_id: u64) -> Result<(), String> {
    ctx.db
        .account()
        .id()
        .find_mut(&id)
        .ok_or("no such account")?
        .id = new_id;
    Ok(())
}

fn engine() -> Engine {
    let module = Module::builder("guards")
        .table::<Account>()
        .reducers(reducers![open, edit, pay, peek, rename_or_tip, rekey])
        .build()
        .unwrap();
    let config = EngineConfig {
        executor: SystemsExecutor::SingleThreaded,
        ..EngineConfig::default()
    };
    let mut engine = Engine::new(module, config).unwrap();
    for (name, level, balance) in [("ann", 1, 100), ("bob", 3, 50)] {
        engine
            .call_reducer(
                "open",
                alice(),
                (name.to_string(), level as u32, balance as i64),
            )
            .unwrap();
    }
    engine.step(at_tick(1));
    engine
}

fn by_name(engine: &mut Engine, name: &str) -> Option<Account> {
    engine.read(|db| db.account().name().find(&name.to_string()))
}

fn ids_at_level(engine: &mut Engine, level: u32) -> Vec<u64> {
    engine.read(|db| db.account().level().filter(&level).map(|a| a.id).collect())
}

#[test]
fn a_rolled_back_guard_write_restores_the_row_and_every_index() {
    let mut engine = engine();
    let before = engine.rows::<Account>();
    let err = engine
        .call_reducer(
            "edit",
            alice(),
            (1u64, "annie".to_string(), 9u32, 5i64, true),
        )
        .unwrap_err();
    assert_eq!(err.client_message(), "requested failure");
    assert_eq!(engine.rows::<Account>(), before);
    assert_eq!(by_name(&mut engine, "ann").unwrap().id, 1);
    assert!(by_name(&mut engine, "annie").is_none());
    assert_eq!(ids_at_level(&mut engine, 1), vec![1]);
    assert!(ids_at_level(&mut engine, 9).is_empty());
    engine.check_integrity().unwrap();
    assert!(engine.step(at_tick(2)).changes.is_empty());
}

#[test]
fn a_guard_write_reindexes_unique_and_btree_columns_and_is_published() {
    let mut engine = engine();
    engine
        .call_reducer(
            "edit",
            alice(),
            (1u64, "annie".to_string(), 9u32, 5i64, false),
        )
        .unwrap();
    engine.check_integrity().unwrap();
    let annie = by_name(&mut engine, "annie").unwrap();
    assert_eq!((annie.id, annie.level, annie.balance), (1, 9, 105));
    assert!(by_name(&mut engine, "ann").is_none());
    assert_eq!(ids_at_level(&mut engine, 9), vec![1]);
    assert!(ids_at_level(&mut engine, 1).is_empty());
    let out = engine.step(at_tick(2));
    assert_eq!(
        out.changes.rows::<Account>().unwrap(),
        vec![RowOp::Update(annie)]
    );
}

#[test]
fn guards_through_a_unique_column_move_funds_or_roll_back() {
    let mut engine = engine();
    engine
        .call_reducer(
            "pay",
            alice(),
            ("ann".to_string(), "bob".to_string(), 30i64),
        )
        .unwrap();
    let balances = |engine: &Engine| {
        engine
            .rows::<Account>()
            .iter()
            .map(|a| a.balance)
            .collect::<Vec<_>>()
    };
    assert_eq!(balances(&engine), vec![70, 80]);
    // The payee does not exist: the payer's write is undone.
    let err = engine
        .call_reducer(
            "pay",
            alice(),
            ("ann".to_string(), "zed".to_string(), 30i64),
        )
        .unwrap_err();
    assert_eq!(err.client_message(), "no payee");
    assert_eq!(balances(&engine), vec![70, 80]);
    let out = engine.step(at_tick(2));
    assert_eq!(out.changes.len(), 2);
    engine.check_integrity().unwrap();
}

#[test]
fn a_guard_only_read_records_no_change() {
    let mut engine = engine();
    engine.call_reducer("peek", alice(), (1u64,)).unwrap();
    let out = engine.step(at_tick(2));
    assert!(out.changes.is_empty(), "{:?}", out.changes);
}

#[test]
fn a_dropped_guard_that_breaks_a_constraint_fails_the_call() {
    let mut engine = engine();
    let before = engine.rows::<Account>();
    let err = engine
        .call_reducer(
            "edit",
            alice(),
            (1u64, "bob".to_string(), 1u32, 0i64, false),
        )
        .unwrap_err();
    assert!(
        matches!(&err, ReducerError::Failed { message, .. } if message.contains("unique constraint violated on account.name")),
        "{err:?}"
    );
    let err = engine
        .call_reducer("rekey", alice(), (1u64, 2u64))
        .unwrap_err();
    assert!(
        matches!(&err, ReducerError::Failed { message, .. } if message.contains("may not change the primary key")),
        "{err:?}"
    );
    assert_eq!(engine.rows::<Account>(), before);
    engine.check_integrity().unwrap();
    assert!(engine.step(at_tick(2)).changes.is_empty());
}

#[test]
fn save_reports_a_violation_and_leaves_the_row_as_it_was() {
    let mut engine = engine();
    engine
        .call_reducer("rename_or_tip", alice(), (1u64, "bob".to_string()))
        .unwrap();
    let ann = by_name(&mut engine, "ann").unwrap();
    assert_eq!((ann.id, ann.balance), (1, 101));
    assert_eq!(by_name(&mut engine, "bob").unwrap().id, 2);
    engine.check_integrity().unwrap();
    let out = engine.step(at_tick(2));
    assert_eq!(
        out.changes.rows::<Account>().unwrap(),
        vec![RowOp::Update(ann)]
    );
}
