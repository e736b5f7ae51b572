//! Batched look-ahead (`#[key(Row)]` arguments) changes no outcome: queued calls run by a step
//! give the same results, rows and change set as the same calls made one at a time, including
//! calls whose keys are missing, whose arguments do not decode, and rows that an earlier call in
//! the same batch deleted or created.

#![allow(missing_docs)]

use orrery_engine::prelude::*;
use orrery_engine::{Input, SystemsExecutor};

#[table(name = purse, public)]
#[derive(Clone, Debug, PartialEq)]
pub struct Purse {
    #[primary_key]
    pub id: u64,
    pub coins: i64,
}

#[reducer]
pub fn mint(ctx: &mut ReducerContext, #[key(Purse)] id: u64, coins: i64) -> Result<(), String> {
    ctx.db.purse().insert(Purse { id, coins })?;
    Ok(())
}

#[reducer]
pub fn burn(ctx: &mut ReducerContext, #[key(Purse)] id: u64) -> Result<(), String> {
    if ctx.db.purse().id().delete(&id) {
        Ok(())
    } else {
        Err("no such purse".into())
    }
}

#[reducer]
pub fn pay(
    ctx: &mut ReducerContext,
    #[key(Purse)] from: u64,
    #[key(Purse)] to: u64,
    coins: i64,
) -> Result<(), String> {
    let mut purses = ctx.db.purse();
    {
        let mut payer = purses.id().find_mut(&from).ok_or("no payer")?;
        payer.coins -= coins;
        if payer.coins < 0 {
            return Err("insufficient coins".into());
        }
    }
    purses.id().find_mut(&to).ok_or("no payee")?.coins += coins;
    Ok(())
}

fn engine() -> Engine {
    let module = Module::builder("purses")
        .table::<Purse>()
        .reducers(reducers![mint, burn, pay])
        .build()
        .unwrap();
    let config = EngineConfig {
        executor: SystemsExecutor::SingleThreaded,
        ..EngineConfig::default()
    };
    Engine::new(module, config).unwrap()
}

fn args(values: &[i64]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, v) in values.iter().enumerate() {
        // The reducers' parameters: u64 keys, then an i64 amount (a lone value is a key).
        if i + 1 < values.len() || values.len() == 1 {
            (*v as u64).encode(&mut out);
        } else {
            v.encode(&mut out);
        }
    }
    out
}

/// A deterministic mix of calls over 12 purses, more than a few look-ahead batches long.
fn calls() -> Vec<(&'static str, Vec<u8>)> {
    let mut calls = Vec::new();
    for id in 0..8 {
        calls.push(("mint", args(&[id, 100])));
    }
    let mut state = 11u64;
    for i in 0..150 {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let a = (state >> 33) % 12;
        let b = (state >> 45) % 12;
        let call = match i % 10 {
            0 => ("burn", args(&[a as i64])),
            1 => ("mint", args(&[a as i64, 5])),
            2 => ("pay", vec![0xff; 3]), // does not decode
            _ => ("pay", args(&[a as i64, b as i64, (state % 120) as i64])),
        };
        calls.push(call);
    }
    calls
}

#[test]
fn queued_calls_with_look_ahead_match_calls_made_one_at_a_time() {
    let mut queued = engine();
    let mut direct = engine();
    let calls = calls();
    for (i, (reducer, args)) in calls.iter().enumerate() {
        queued.enqueue(Input::Call {
            request_id: i as u64,
            caller: Identity::ZERO.into(),
            reducer: reducer.to_string(),
            args: args.clone(),
        });
    }
    let direct_results: Vec<_> = calls
        .iter()
        .map(|(reducer, args)| direct.call_reducer_bytes(reducer, Identity::ZERO, args))
        .collect();
    let at = Timestamp::from_micros(50_000);
    let out = queued.step(at);
    let direct_out = direct.step(at);
    let queued_results: Vec<_> = out.outcomes.iter().map(|o| o.result.clone()).collect();
    assert_eq!(queued_results, direct_results);
    assert!(queued_results.iter().any(Result::is_err) && queued_results.iter().any(Result::is_ok));
    assert_eq!(out.changes, direct_out.changes);
    assert_eq!(queued.rows::<Purse>(), direct.rows::<Purse>());
    queued.check_integrity().unwrap();
}
