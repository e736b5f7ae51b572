//! The input log's state hash, maintained incrementally from each tick's change set, equals a
//! full scan of the durable tables through committed and rolled-back calls (errors and
//! panics), unique-key violations, schedules that fire and are cancelled, system writes and
//! despawns, and event-table rows (which the hash leaves out), on the multi-threaded executor.

mod common;

use common::*;
use orrery_engine::{ScheduleAt, SystemsExecutor};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut x = self.0;
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^ (x >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn the_incremental_state_hash_equals_a_full_scan_every_tick() {
    let mut engine = engine_with(SystemsExecutor::MultiThreaded);
    engine.record_inputs();
    assert_eq!(
        engine.state_hash(),
        Some(0),
        "an empty world hashes to zero"
    );
    let mut rng = Rng(20);
    let faction = |n: u64| match n % 3 {
        0 => Faction::Neutral,
        1 => Faction::Red,
        _ => Faction::Blue,
    };
    let (mut failed, mut hits) = (0, 0);
    for tick in 1..=200u64 {
        for _ in 0..rng.below(8) {
            let id = rng.below(30) + 1;
            let result = match rng.below(9) {
                0 | 1 => engine.call_reducer(
                    "open_account",
                    alice(),
                    (
                        format!("acct{}", rng.below(40)),
                        rng.below(5) as u32,
                        rng.below(500) as i64,
                    ),
                ),
                2 | 3 => engine.call_reducer(
                    "transfer",
                    alice(),
                    (id, rng.below(30) + 1, rng.below(300) as i64),
                ),
                4 => engine.call_reducer(
                    "rename_then_fail",
                    alice(),
                    (id, format!("acct{}", rng.below(40)), 3u32),
                ),
                5 => engine.call_reducer("panic_after_write", alice(), (id,)),
                6 => engine.call_reducer(
                    "spawn_npc",
                    alice(),
                    (
                        faction(id),
                        rng.below(100) as f32 - 50.0,
                        rng.below(7) as f32 - 3.0,
                    ),
                ),
                7 => engine.call_reducer(
                    "schedule_respawn",
                    alice(),
                    (ScheduleAt::At(at_tick(tick + rng.below(5))), faction(id)),
                ),
                _ => {
                    hits += 1;
                    engine.call_reducer("hit", alice(), (id as u32,))
                }
            };
            failed += u32::from(result.is_err());
            if rng.below(10) == 0 {
                let _ = engine.call_reducer("cancel_respawn", alice(), (rng.below(20) + 1,));
            }
        }
        let out = engine.step(at_tick(tick));
        assert_eq!(
            out.state_hash,
            Some(engine.full_state_hash()),
            "tick {tick}: incremental and full hashes differ"
        );
    }
    assert!(failed > 20, "rollbacks exercised: {failed}");
    assert!(hits > 0);
    assert!(engine.count::<Npc>() > 0 && engine.count::<Account>() > 0);
}
