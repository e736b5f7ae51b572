//! Pipelined publishing (`PublishConfig::pipeline`): the tick core publishes a tick on the
//! publish thread while the next tick simulates, and the commands it hands the network are
//! exactly those of an unpipelined core, in the same order, one call later.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use common::{add_args, engine, note_args, string_args, walk_args};
use orrery_engine::{ConnectionId, Identity};
use orrery_netcode::{ClientMessage, DisconnectReason, ServerMessage};
use orrery_server::net::{NetCommand, NetEvent};
use orrery_server::{Metrics, ServerConfig, TickCore};

const START: Duration = Duration::from_secs(1_800_000_000);

fn core(pipeline: bool) -> TickCore {
    let mut config = ServerConfig::for_tests("unused");
    config.publish.pipeline = pipeline;
    config.publish.budget_bytes_per_second = 3_000;
    config.publish.workers = 2;
    config.rate_limit.calls_per_second = 40.0;
    config.rate_limit.burst = 4;
    let metrics = Arc::new(Metrics::new(64, config.tick_duration()));
    TickCore::new(engine(), true, &config, metrics, START).expect("tick core")
}

/// A deterministic workload: clients come and go, walk (moving their focus and a spatial
/// row), write notes, subscribe and unsubscribe (spatial and plain), toggle confirmed reads,
/// call too fast (rate-limited replies), fail calls.
fn workload(ticks: u64) -> Vec<Vec<NetEvent>> {
    let mut state = 5u64;
    let mut next = move |n: u64| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) % n
    };
    let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9);
    let mut connected: Vec<u64> = Vec::new();
    let mut next_client = 1u64;
    let mut request = 0u32;
    (0..ticks)
        .map(|tick| {
            let mut events = Vec::new();
            if tick < 30 || next(4) == 0 {
                let client = next_client;
                next_client += 1;
                connected.push(client);
                events.push(NetEvent::Connected {
                    client: ConnectionId(client),
                    identity: Identity::from_u64(client % 23 + 1),
                    addr,
                });
            }
            if tick > 10 && next(6) == 0 && !connected.is_empty() {
                let gone = connected.remove(next(connected.len() as u64) as usize);
                events.push(NetEvent::Disconnected {
                    client: ConnectionId(gone),
                    reason: DisconnectReason::ByClient,
                });
            }
            if matches!(tick, 40 | 70 | 100 | 120) && connected.len() > 5 {
                // A client turns confirmed reads on for a while (its traffic then waits for
                // the publish in flight).
                events.push(NetEvent::Message {
                    client: ConnectionId(connected[5]),
                    msg: ClientMessage::ConfirmedReads {
                        enabled: matches!(tick, 40 | 100),
                    },
                });
            }
            // Messages go to clients connected before this tick (early messages are tested
            // elsewhere).
            let joined = connected.len().saturating_sub(1);
            for _ in 0..12 {
                if joined == 0 {
                    break;
                }
                let connected = &connected[..joined];
                // Half the traffic from a few clients: they run into the rate limit, whose
                // refusals are sent from the input phase.
                let pick = if next(2) == 0 {
                    next(connected.len().min(3) as u64)
                } else {
                    next(connected.len() as u64)
                };
                let client = connected[pick as usize];
                request += 1;
                let call = |reducer: &str, args: Vec<u8>| ClientMessage::CallReducer {
                    request_id: request,
                    reducer: reducer.into(),
                    args,
                    durable: false,
                };
                let msg = match next(11) {
                    0..=4 => call(
                        "walk",
                        walk_args(next(200) as f32 - 100.0, next(200) as f32 - 100.0),
                    ),
                    5 => call("note", note_args(next(4) as u32, "hello")),
                    6 => call("add", add_args(next(5))),
                    7 => call("fail", string_args("no")),
                    8 => ClientMessage::Subscribe {
                        query_id: next(4) as u32,
                        sql: format!(
                            "SELECT * FROM mob WHERE within(pos, :focus, {})",
                            10 + next(40)
                        ),
                    },
                    9 => ClientMessage::Subscribe {
                        query_id: 10 + next(3) as u32,
                        sql: "SELECT * FROM note WHERE level > 1".into(),
                    },
                    _ => ClientMessage::Unsubscribe {
                        query_id: next(4) as u32,
                    },
                };
                events.push(NetEvent::Message {
                    client: ConnectionId(client),
                    msg,
                });
            }
            events
        })
        .collect()
}

fn table_updates(commands: &[NetCommand]) -> usize {
    commands
        .iter()
        .filter(|c| {
            matches!(
                c,
                NetCommand::Send {
                    msg: ServerMessage::TableUpdate { .. },
                    ..
                }
            )
        })
        .count()
}

#[test]
fn pipelined_publish_sends_what_an_unpipelined_one_does() {
    let ticks = 150;
    let events = workload(ticks);
    let mut cores = [core(false), core(true)];
    assert!(!cores[0].pipelined());
    assert!(cores[1].pipelined());
    let mut streams: [Vec<NetCommand>; 2] = Default::default();
    let mut first_update_call = [None, None];
    for (tick, batch) in events.iter().enumerate() {
        let now = START + Duration::from_millis(50 * (tick as u64 + 1));
        for (i, core) in cores.iter_mut().enumerate() {
            let mut out = Vec::new();
            core.tick(now, batch.clone(), Vec::new(), &mut out);
            // Each call after the first routed the previous call's publish: its commands
            // must leave now.
            assert_eq!(core.commands_wait_for_publish(), i == 1 && tick == 0);
            if first_update_call[i].is_none() && table_updates(&out) > 0 {
                first_update_call[i] = Some(tick);
            }
            streams[i].extend(out);
        }
    }
    let mut last = Vec::new();
    cores[1].flush_publish(&mut last);
    streams[1].extend(last);
    assert_eq!(streams[0].len(), streams[1].len());
    for (index, (a, b)) in streams[0].iter().zip(&streams[1]).enumerate() {
        assert_eq!(a, b, "command {index} differs");
    }
    // The workload exercised what it should.
    assert!(
        table_updates(&streams[0]) > 500,
        "{}",
        table_updates(&streams[0])
    );
    let refused = streams[0]
        .iter()
        .filter(|c| {
            matches!(c, NetCommand::Send { msg: ServerMessage::ReducerReply { result: Err(e), .. }, .. } if e.contains("rate"))
        })
        .count();
    assert!(refused > 0, "some calls were rate limited");
    // The pipelined core's updates of a tick left one call later, and its publishes ran off
    // the tick thread.
    let first = first_update_call[0].expect("updates were published");
    assert_eq!(first_update_call[1], Some(first + 1));
    assert!(cores[1].metrics().publish_offloaded_us.load(Relaxed) > 0);
    let early = cores[1].metrics().publish_early_joins.load(Relaxed);
    assert!(
        early > 5 && early < ticks / 2,
        "most ticks took the publish back after the engine step, some before the input: {early}"
    );
    assert_eq!(cores[0].metrics().publish_offloaded_us.load(Relaxed), 0);
    assert_eq!(
        cores[0].publisher().stats(),
        cores[1].publisher().stats(),
        "the publishers agree"
    );
}

/// A tick loop that routes the publish in flight as soon as it is done, while it waits for
/// the next tick (`route_finished_publish`, as the threaded server does), sends exactly what an
/// unpipelined core sends, in the same call: pipelining then costs clients no latency.
#[test]
fn a_publish_routed_between_ticks_sends_what_an_unpipelined_one_does_in_the_same_call() {
    let ticks = 150;
    let events = workload(ticks);
    let mut cores = [core(false), core(true)];
    let mut routed_between = 0;
    for (tick, batch) in events.iter().enumerate() {
        let now = START + Duration::from_millis(50 * (tick as u64 + 1));
        let mut streams: [Vec<NetCommand>; 2] = Default::default();
        for (core, stream) in cores.iter_mut().zip(&mut streams) {
            core.tick(now, batch.clone(), Vec::new(), stream);
        }
        // Nothing of this tick's publish has left the pipelined core yet, and what did (its
        // input phase's commands) may wait to leave with it.
        assert_eq!(table_updates(&streams[1]), 0, "tick {tick}");
        assert!(cores[1].commands_wait_for_publish());
        assert!(!cores[0].commands_wait_for_publish());
        if cores[1].route_finished_publish(Duration::from_secs(60), &mut streams[1]) {
            routed_between += 1;
        }
        // Routed once: a second call finds nothing in flight.
        assert!(!cores[1].route_finished_publish(Duration::ZERO, &mut Vec::new()));
        assert_eq!(streams[0], streams[1], "tick {tick}");
    }
    assert_eq!(routed_between, ticks);
    assert!(cores[1].metrics().publish_offloaded_us.load(Relaxed) > 0);
    assert_eq!(
        cores[1].metrics().publish_early_joins.load(Relaxed),
        0,
        "nothing was left in flight for the next tick to join"
    );
    assert_eq!(
        cores[0].publisher().stats(),
        cores[1].publisher().stats(),
        "the publishers agree"
    );
}

/// Tick-thread time per tick with and without pipelining, printed (a measurement, not a CI
/// check; run in release: `cargo test --release -p orrery-server --test pipeline -- --ignored
/// --nocapture`). Every client walks every tick (moving its own row and its focus) and sees the
/// walkers within 50 m; the two cores run in alternating blocks of ticks (ABAB).
#[test]
#[ignore = "a measurement; run with --ignored --nocapture"]
#[allow(clippy::print_stderr)] // the measurement is the output
fn pipelined_publish_takes_the_publish_off_the_tick_thread() {
    const CLIENTS: u64 = 1_000;
    let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9);
    let mut cores = [core(false), core(true)];
    let mut state = 3u64;
    let mut next = move |n: u64| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) % n
    };
    let mut positions: Vec<(f32, f32)> = (0..CLIENTS)
        .map(|_| (next(600) as f32, next(600) as f32))
        .collect();
    let mut tick = 0u64;
    let run = |core: &mut TickCore, events: Vec<NetEvent>, tick: &mut u64| {
        *tick += 1;
        let now = START + Duration::from_millis(50 * *tick);
        let mut out = Vec::new();
        let start = std::time::Instant::now();
        core.tick(now, events, Vec::new(), &mut out);
        start.elapsed()
    };
    for (i, core) in cores.iter_mut().enumerate() {
        let connects = (0..CLIENTS)
            .map(|c| NetEvent::Connected {
                client: ConnectionId(c + 1),
                identity: Identity::from_u64(c + 1),
                addr,
            })
            .collect();
        run(core, connects, &mut tick);
        let subscribes = (0..CLIENTS)
            .map(|c| NetEvent::Message {
                client: ConnectionId(c + 1),
                msg: ClientMessage::Subscribe {
                    query_id: 1,
                    sql: "SELECT * FROM mob WHERE within(pos, :focus, 50)".into(),
                },
            })
            .collect();
        run(core, subscribes, &mut tick);
        assert_eq!(core.connected_clients(), CLIENTS as usize, "core {i}");
    }
    let mut walks = |positions: &mut Vec<(f32, f32)>| -> Vec<NetEvent> {
        positions
            .iter_mut()
            .enumerate()
            .map(|(c, p)| {
                p.0 = (p.0 + next(5) as f32 - 2.0).clamp(0.0, 600.0);
                p.1 = (p.1 + next(5) as f32 - 2.0).clamp(0.0, 600.0);
                NetEvent::Message {
                    client: ConnectionId(c as u64 + 1),
                    msg: ClientMessage::CallReducer {
                        request_id: 1,
                        reducer: "walk".into(),
                        args: walk_args(p.0, p.1),
                        durable: false,
                    },
                }
            })
            .collect()
    };
    let mut samples: [Vec<Duration>; 2] = Default::default();
    for block in 0..8 {
        let i = block % 2;
        for t in 0..40 {
            let events = walks(&mut positions);
            let took = run(&mut cores[i], events, &mut tick);
            if t >= 10 {
                samples[i].push(took);
            }
        }
        let mut out = Vec::new();
        cores[i].flush_publish(&mut out);
    }
    for (i, name) in [(0, "unpipelined"), (1, "pipelined")] {
        let s = &mut samples[i];
        s.sort();
        let mean = s.iter().sum::<Duration>() / s.len() as u32;
        let m = cores[i].metrics();
        eprintln!(
            "{name}: tick thread per tick mean {:.2} ms, p50 {:.2} ms, p99 {:.2} ms; publish off \
             the tick thread {:.2} s, waited for {:.2} s",
            mean.as_secs_f64() * 1e3,
            s[s.len() / 2].as_secs_f64() * 1e3,
            s[s.len() * 99 / 100].as_secs_f64() * 1e3,
            m.publish_offloaded_us.load(Relaxed) as f64 / 1e6,
            m.publish_wait_us.load(Relaxed) as f64 / 1e6,
        );
    }
}
