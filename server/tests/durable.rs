//! The server over a durable engine (`Engine::open`): durable replies wait for the log,
//! recovered rows reach subscribers, a storage failure turns into error replies.

mod common;

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use common::{Sim, add_args, note_args};
use orrery_engine::value::Value;
use orrery_engine::{DurabilityConfig, Engine, EngineConfig, FsyncPolicy, SystemsExecutor, Table};
use orrery_netcode::sim::LinkConditions;
use orrery_netcode::{ClientEvent, ClientMessage, ServerMessage};
use orrery_row::wire::{RowHandles, WireLayout, WireRecord};

fn open(dir: &std::path::Path, configure: impl FnOnce(&mut DurabilityConfig)) -> (Engine, bool) {
    let mut d = DurabilityConfig::new(dir);
    configure(&mut d);
    let (engine, report) = Engine::open(
        common::module(),
        EngineConfig {
            executor: SystemsExecutor::SingleThreaded,
            ..Default::default()
        },
        d,
    )
    .unwrap();
    (engine, report.fresh)
}

fn replies(sim: &Sim, i: usize) -> Vec<(u32, u64, Result<(), String>)> {
    sim.clients[i]
        .events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Message {
                msg:
                    ServerMessage::ReducerReply {
                        request_id,
                        tick,
                        result,
                        ..
                    },
                ..
            } => Some((*request_id, *tick, result.clone())),
            _ => None,
        })
        .collect()
}

fn call(sim: &mut Sim, i: usize, request_id: u32, reducer: &str, args: Vec<u8>, durable: bool) {
    sim.clients[i]
        .session
        .send(&ClientMessage::CallReducer {
            request_id,
            reducer: reducer.into(),
            args,
            durable,
        })
        .unwrap();
}

/// Steps the simulation until `done`, for at most `limit` of real time (the log writer runs on
/// real time).
fn run_real(sim: &mut Sim, limit: Duration, mut done: impl FnMut(&Sim) -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if done(sim) {
            return true;
        }
        sim.step(Duration::from_millis(10));
        std::thread::sleep(Duration::from_millis(1));
    }
    done(sim)
}

/// A durable call's reply (and every later reply to that client) waits until its tick is on
/// disk; replies keep their order.
#[test]
fn durable_replies_wait_for_the_log_and_keep_order() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, fresh) = open(dir.path(), |d| {
        d.fsync = FsyncPolicy::Interval(Duration::from_secs(1))
    });
    assert!(fresh);
    let handle = engine.durability().unwrap();
    let mut sim = Sim::with_engine(21, LinkConditions::PERFECT, engine, fresh, |_| {});
    sim.add_client();
    assert!(sim.run_until(Duration::from_secs(5), |s| s.connected(0)));
    // Let the first fsync happen so that "durable" is well defined from here on.
    assert!(run_real(&mut sim, Duration::from_secs(10), |_| handle
        .durable_up_to()
        > 0));
    call(&mut sim, 0, 0, "add", add_args(1), false);
    call(&mut sim, 0, 1, "add", add_args(2), true);
    call(&mut sim, 0, 2, "add", add_args(3), false);
    // A few ticks (milliseconds of real time): the non-durable first reply is out, the durable
    // one and the one behind it are held.
    sim.step(Duration::from_millis(300));
    let early = replies(&sim, 0);
    assert_eq!(
        early.first().map(|r| r.0),
        Some(0),
        "the non-durable first reply is not held"
    );
    for r in &early[1..] {
        assert!(
            handle.durable_up_to() >= r.1,
            "reply {} left before its tick {} was durable",
            r.0,
            r.1
        );
    }
    if early.len() < 3 {
        assert!(sim.core.metrics().replies_held.load(Relaxed) > 0);
    }
    assert!(run_real(&mut sim, Duration::from_secs(15), |s| replies(
        s, 0
    )
    .len()
        == 3));
    let all = replies(&sim, 0);
    assert_eq!(all.iter().map(|r| r.0).collect::<Vec<_>>(), vec![0, 1, 2]);
    assert!(all.iter().all(|r| r.2.is_ok()));
    assert!(handle.durable_up_to() >= all[1].1);
    sim.core.close(sim.now).unwrap();
}

/// After a restart the recovered rows reach new subscribers and `init` does not run again.
#[test]
fn recovered_rows_reach_subscribers() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (engine, fresh) = open(dir.path(), |d| d.fsync = FsyncPolicy::Never);
        let mut sim = Sim::with_engine(22, LinkConditions::PERFECT, engine, fresh, |_| {});
        sim.add_client();
        assert!(sim.run_until(Duration::from_secs(5), |s| s.connected(0)));
        call(&mut sim, 0, 0, "note", note_args(4, "kept"), true);
        assert!(run_real(&mut sim, Duration::from_secs(10), |s| replies(
            s, 0
        )
        .len()
            == 1));
        sim.core.close(sim.now).unwrap();
    }
    let (engine, fresh) = open(dir.path(), |d| d.fsync = FsyncPolicy::Never);
    assert!(!fresh);
    let mut sim = Sim::with_engine(23, LinkConditions::PERFECT, engine, fresh, |_| {});
    sim.add_client();
    assert!(sim.run_until(Duration::from_secs(5), |s| s.connected(0)));
    sim.clients[0]
        .session
        .send(&ClientMessage::Subscribe {
            query_id: 1,
            sql: "SELECT * FROM note".into(),
        })
        .unwrap();
    call(&mut sim, 0, 1, "notes_are", add_args(2), false);
    assert!(sim.run_until(Duration::from_secs(5), |s| replies(s, 0).len() == 1));
    assert_eq!(replies(&sim, 0)[0].2, Ok(()), "init did not run again");
    sim.step(Duration::from_millis(300));
    let schema = sim.core.tick_core().engine().schema().clone();
    let layout = WireLayout::new(schema.table(common::Note::NAME).unwrap());
    let mut texts = Vec::new();
    let mut handles = RowHandles::new(false);
    for e in &sim.clients[0].events {
        if let ClientEvent::Message {
            msg: ServerMessage::TableUpdate { rows, .. },
            ..
        } = e
        {
            for r in layout.decode_records(&mut handles, rows).unwrap() {
                if let WireRecord::Upsert { row, .. } = r
                    && let Value::String(t) = &row.columns[2]
                {
                    texts.push(t.clone());
                }
            }
        }
    }
    texts.sort();
    assert_eq!(texts, vec!["init".to_owned(), "kept".to_owned()]);
    sim.core.close(sim.now).unwrap();
}

/// When the commit log fails, calls get error replies, held durable replies turn into errors,
/// and the metrics say the storage failed; the server itself keeps answering.
#[test]
fn storage_failure_becomes_error_replies() {
    let dir = tempfile::tempdir().unwrap();
    let (engine, fresh) = open(dir.path(), |d| {
        d.fsync = FsyncPolicy::Never;
        d.fail_after_bytes = Some(4_000);
    });
    let mut sim = Sim::with_engine(24, LinkConditions::PERFECT, engine, fresh, |c| {
        c.rate_limit.calls_per_second = 1000.0;
        c.rate_limit.burst = 1000;
    });
    sim.add_client();
    assert!(sim.run_until(Duration::from_secs(5), |s| s.connected(0)));
    let text = "y".repeat(200);
    let mut request = 0;
    while !sim.core.metrics().storage_failed.load(Relaxed) {
        assert!(request < 500, "the log never failed");
        call(
            &mut sim,
            0,
            request,
            "note",
            note_args(1, &text),
            request % 2 == 0,
        );
        request += 1;
        sim.step(Duration::from_millis(50));
        std::thread::sleep(Duration::from_millis(2));
    }
    call(&mut sim, 0, request, "add", add_args(1), false);
    request += 1;
    assert!(run_real(&mut sim, Duration::from_secs(10), |s| replies(
        s, 0
    )
    .len()
        == request as usize));
    let all = replies(&sim, 0);
    assert_eq!(
        all.iter().map(|r| r.0).collect::<Vec<_>>(),
        (0..request).collect::<Vec<_>>()
    );
    let last = all.last().unwrap().2.as_ref().unwrap_err();
    assert!(last.contains("storage failure"), "{last}");
    assert!(sim.core.metrics().storage_error().is_some());
    assert!(
        sim.core.close(sim.now).is_err(),
        "close reports the failure"
    );
}
