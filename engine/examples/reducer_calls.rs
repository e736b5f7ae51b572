//! Runs `TICKS` ticks of 10,000 queued `transfer` calls once, for instruction counting:
//! `valgrind --tool=callgrind target/release/examples/reducer_calls <ticks>` with two tick counts,
//! and the difference divided by the difference in calls is the cost per call without setup
//! (see `docs/benchmarks.md`, "Where the time goes").

#![allow(missing_docs)]

use std::hint::black_box;

use orrery_engine::prelude::*;
use orrery_engine::{Input, SystemsExecutor};

#[table(name = account)]
#[derive(Clone, Debug)]
pub struct Account {
    #[primary_key]
    pub id: u64,
    pub balance: i64,
}

#[reducer]
pub fn seed_accounts(ctx: &mut ReducerContext, ids: Vec<u64>, balance: i64) -> Result<(), String> {
    for id in ids {
        ctx.db.account().insert(Account { id, balance })?;
    }
    Ok(())
}

/// The benchmark's `transfer`: validates first, 10% overdrafts return before any write.
#[reducer]
pub fn transfer(
    ctx: &mut ReducerContext,
    #[key(Account)] from: u64,
    #[key(Account)] to: u64,
    amount: i64,
) -> Result<(), String> {
    let mut a = ctx.db.account().id().find(&from).ok_or("no such account")?;
    let mut b = ctx.db.account().id().find(&to).ok_or("no such account")?;
    if a.balance < amount {
        return Err("insufficient funds".into());
    }
    a.balance -= amount;
    b.balance += amount;
    ctx.db.account().id().update(a)?;
    ctx.db.account().id().update(b)?;
    Ok(())
}

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

const ACCOUNTS: usize = 100_000;
const CALLS_PER_TICK: usize = 10_000;

fn main() {
    let ticks: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2);
    let module = Module::builder("calls")
        .table::<Account>()
        .reducers(reducers![seed_accounts, transfer])
        .build()
        .expect("module");
    let config = EngineConfig {
        executor: SystemsExecutor::SingleThreaded,
        ..Default::default()
    };
    let mut engine = Engine::new(module, config).expect("engine");
    let mut state = 42;
    let ids: Vec<u64> = (0..ACCOUNTS).map(|_| splitmix(&mut state)).collect();
    for chunk in ids.chunks(10_000) {
        engine
            .call_reducer(
                "seed_accounts",
                Identity::ZERO,
                (chunk.to_vec(), 1_000_000i64),
            )
            .expect("seed");
    }
    engine.step(Timestamp::from_micros(0));
    let mut state = 7;
    // Always build the largest run's payloads so setup is the same for every tick count.
    let payloads: Vec<Vec<u8>> = (0..CALLS_PER_TICK * 8)
        .map(|_| {
            let from = ids[(splitmix(&mut state) % ids.len() as u64) as usize];
            let to = ids[(splitmix(&mut state) % ids.len() as u64) as usize];
            let amount: i64 = if splitmix(&mut state).is_multiple_of(10) {
                i64::MAX / 2
            } else {
                1
            };
            let mut bytes = from.to_bytes();
            to.encode(&mut bytes);
            amount.encode(&mut bytes);
            bytes
        })
        .collect();
    // Inputs for every tick are built before any runs, so only enqueue and step differ
    // between tick counts.
    let mut inputs: Vec<Input> = payloads
        .iter()
        .map(|payload| Input::Call {
            request_id: 0,
            caller: Caller::client(Identity::ZERO, ConnectionId(7)),
            reducer: "transfer".to_owned(),
            args: payload.clone(),
        })
        .collect();
    for tick in 0..ticks.min(8) {
        for input in inputs.drain(..CALLS_PER_TICK) {
            engine.enqueue(input);
        }
        black_box(engine.step(Timestamp::from_micros((tick as i64 + 1) * 50_000)));
    }
}
