//! Runs `TICKS` ticks of 10,000 queued `transfer` calls once, for instruction counting:
//! `valgrind --tool=callgrind target/release/examples/reducer_calls <ticks>` with two tick counts,
//! and the difference divided by the difference in calls is the cost per call without setup
//! (see `docs/benchmarks.md`, "Where the time goes").

#![allow(missing_docs)]

use std::hint::black_box;

use orrery_engine::prelude::*;
use orrery_engine::{Input, SystemsExecutor};

#[path = "../benches/bank/mod.rs"]
mod bank;
use bank::*;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    let ids = seed_bank(&mut engine, ACCOUNTS);
    engine.step(Timestamp::from_micros(0));
    // Always build the largest run's payloads, and every tick's inputs, before any tick runs,
    // so setup is the same for every tick count and only enqueue and step differ. One vector
    // per tick: draining the front of a single vector would move every later tick's inputs
    // down, a cost (~50 instructions per call) that depends on the tick count.
    let args = transfer_args(&ids, CALLS_PER_TICK * 8);
    let mut inputs: Vec<Vec<Input>> = args
        .chunks(CALLS_PER_TICK)
        .map(|tick| {
            tick.iter()
                .map(|payload| call_input(0, "transfer", payload))
                .collect()
        })
        .collect();
    for (tick, tick_inputs) in inputs.iter_mut().take(ticks.min(8)).enumerate() {
        for input in tick_inputs.drain(..) {
            engine.enqueue(input);
        }
        black_box(engine.step(Timestamp::from_micros((tick as i64 + 1) * 50_000)));
    }
}
