//! The server on a virtual clock with simulated networks: `ServerCore` (netcode session +
//! engine + publisher) against netcode `ClientSession`s. No sockets, no sleeps.

mod common;

use std::time::Duration;

use common::{Counter, Note, Presence, Sim, add_args, identity, note_args, string_args};
use orrery_engine::value::Value;
use orrery_engine::{Identity, Table};
use orrery_netcode::sim::LinkConditions;
use orrery_netcode::{ClientEvent, ClientMessage, ServerMessage};
use orrery_row::wire::{RowHandles, WireLayout, WireRecord};
use orrery_server::metrics::RejectKind;
use std::sync::atomic::Ordering::Relaxed;

fn replies(sim: &Sim, i: usize) -> Vec<(u32, Result<(), String>)> {
    sim.clients[i]
        .events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Message {
                msg:
                    ServerMessage::ReducerReply {
                        request_id, result, ..
                    },
                ..
            } => Some((*request_id, result.clone())),
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
        .expect("send");
}

/// 200 clients over a lossy, jittery network: every reply arrives exactly once, in order per
/// client, and the engine's state is exactly what the calls did.
#[test]
fn two_hundred_lossy_clients_get_every_reply_once_in_order() {
    const CLIENTS: usize = 200;
    const CALLS: u32 = 12;
    let conditions =
        LinkConditions::lossy(0.10, Duration::from_millis(30), Duration::from_millis(100));
    let mut sim = Sim::new(11, conditions, |c| {
        c.rate_limit.calls_per_second = 1000.0;
        c.rate_limit.burst = 1000;
    });
    for _ in 0..CLIENTS {
        sim.add_client();
    }
    assert!(
        sim.run_until(Duration::from_secs(30), |s| (0..CLIENTS)
            .all(|i| s.connected(i))),
        "all clients connect"
    );
    // Each client: adds i+1 per call, every fourth call fails instead.
    for i in 0..CLIENTS {
        for r in 0..CALLS {
            if r % 4 == 3 {
                call(
                    &mut sim,
                    i,
                    r,
                    "fail",
                    string_args(&format!("no {i}/{r}")),
                    false,
                );
            } else {
                call(&mut sim, i, r, "add", add_args(i as u64 + 1), false);
            }
        }
    }
    assert!(
        sim.run_until(Duration::from_secs(60), |s| (0..CLIENTS).all(|i| replies(
            s, i
        )
        .len()
            >= CALLS as usize)),
        "every reply arrives"
    );
    sim.step(Duration::from_secs(1)); // duplicates would show up now
    for i in 0..CLIENTS {
        let got = replies(&sim, i);
        let ids: Vec<u32> = got.iter().map(|(id, _)| *id).collect();
        assert_eq!(
            ids,
            (0..CALLS).collect::<Vec<_>>(),
            "client {i}: once each, in order"
        );
        for (r, result) in &got {
            if r % 4 == 3 {
                assert_eq!(result, &Err(format!("no {i}/{r}")));
            } else {
                assert_eq!(result, &Ok(()));
            }
        }
    }
    let engine = sim.core.tick_core().engine();
    let successes = (0..CALLS).filter(|r| r % 4 != 3).count() as u64;
    for i in 0..CLIENTS {
        let c = engine
            .find::<Counter>(&Identity(identity(i)))
            .expect("counter row");
        assert_eq!(c.calls, successes);
        assert_eq!(c.value, successes * (i as u64 + 1));
        let p = engine.find::<Presence>(&Identity(identity(i))).unwrap();
        assert!(p.online);
        assert_eq!(p.connects, 1, "client_connected ran once");
    }
    let m = sim.core.metrics();
    assert_eq!(m.calls.load(Relaxed), CLIENTS as u64 * u64::from(CALLS));
    assert_eq!(m.calls_committed.load(Relaxed), CLIENTS as u64 * successes);
    assert_eq!(m.clients.load(Relaxed), CLIENTS as u64);
    assert!(sim.net.stats().lost > 0);
}

/// Unknown reducers, lifecycle reducers, wrong argument bytes: error replies, the client stays.
#[test]
fn bad_calls_are_error_replies() {
    let mut sim = Sim::new(2, LinkConditions::PERFECT, |_| {});
    sim.add_client();
    assert!(sim.run_until(Duration::from_secs(5), |s| s.connected(0)));
    call(&mut sim, 0, 1, "nope", vec![], false);
    call(&mut sim, 0, 2, "connected", vec![], false);
    call(&mut sim, 0, 3, "add", vec![0xff, 0xff], false);
    call(&mut sim, 0, 4, "add", add_args(7), false);
    assert!(sim.run_until(Duration::from_secs(5), |s| replies(s, 0).len() == 4));
    let r = replies(&sim, 0);
    assert!(
        r[0].1
            .as_ref()
            .unwrap_err()
            .contains("no reducer named \"nope\""),
        "{r:?}"
    );
    assert!(
        r[1].1.as_ref().unwrap_err().contains("cannot be called"),
        "{r:?}"
    );
    assert!(
        r[2].1.as_ref().unwrap_err().contains("bad arguments"),
        "{r:?}"
    );
    assert_eq!(r[3], (4, Ok(())));
    assert!(sim.connected(0));
    assert_eq!(sim.core.metrics().rejected(RejectKind::Invalid), 3);
}

/// Calls beyond the rate limit get an immediate error reply, are counted and not run; another
/// client is not affected.
#[test]
fn rate_limit_rejects_excess_calls_only_for_that_client() {
    let mut sim = Sim::new(3, LinkConditions::PERFECT, |c| {
        c.rate_limit.calls_per_second = 5.0;
        c.rate_limit.burst = 5;
    });
    sim.add_client();
    sim.add_client();
    assert!(sim.run_until(Duration::from_secs(5), |s| s.connected(0) && s.connected(1)));
    for r in 0..20 {
        call(&mut sim, 0, r, "add", add_args(1), false);
    }
    for r in 0..3 {
        call(&mut sim, 1, r, "add", add_args(1), false);
    }
    assert!(
        sim.run_until(Duration::from_secs(5), |s| replies(s, 0).len() == 20
            && replies(s, 1).len() == 3)
    );
    let r0 = replies(&sim, 0);
    assert_eq!(
        r0.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        (0..20).collect::<Vec<_>>()
    );
    let ok = r0.iter().filter(|(_, r)| r.is_ok()).count();
    assert!((5..=6).contains(&ok), "burst of 5 (plus refill), got {ok}");
    for (_, r) in r0.iter().filter(|(_, r)| r.is_err()) {
        assert!(
            r.as_ref().unwrap_err().starts_with("rate limited: "),
            "{r:?}"
        );
    }
    assert!(replies(&sim, 1).iter().all(|(_, r)| r.is_ok()));
    let m = sim.core.metrics();
    assert_eq!(m.rejected(RejectKind::RateLimit), (20 - ok) as u64);
    let engine = sim.core.tick_core().engine();
    assert_eq!(
        engine
            .find::<Counter>(&Identity(identity(0)))
            .unwrap()
            .calls,
        ok as u64,
        "rejected calls did not run"
    );
    assert_eq!(
        engine
            .find::<Counter>(&Identity(identity(1)))
            .unwrap()
            .calls,
        3
    );
}

/// A client that stops reading is disconnected when its reliable backlog is full; others keep
/// getting replies and updates.
#[test]
fn stalled_client_is_disconnected_others_unaffected() {
    let mut sim = Sim::new(
        4,
        LinkConditions::lossy(0.0, Duration::from_millis(10), Duration::ZERO),
        |c| {
            c.max_backlog = 32 * 1024;
            c.publish.budget_bytes_per_second = 1024 * 1024;
            c.publish.max_banked = Duration::from_secs(1);
            c.rate_limit.calls_per_second = 1000.0;
            c.rate_limit.burst = 1000;
        },
    );
    sim.add_client();
    sim.add_client();
    assert!(sim.run_until(Duration::from_secs(5), |s| s.connected(0) && s.connected(1)));
    for i in 0..2 {
        sim.clients[i]
            .session
            .send(&ClientMessage::Subscribe {
                query_id: 1,
                sql: "SELECT * FROM note".into(),
            })
            .unwrap();
    }
    sim.step(Duration::from_millis(200));
    sim.clients[0].paused = true;
    let text = "x".repeat(900);
    let mut request = 0;
    // Client 1 writes notes (each ~1 KB published to both) and expects its replies.
    while sim.core.metrics().backlog_disconnects.load(Relaxed) == 0 {
        assert!(request < 2_000, "the stalled client was never disconnected");
        call(&mut sim, 1, request, "note", note_args(1, &text), false);
        request += 1;
        sim.step(Duration::from_millis(50));
    }
    for _ in 0..10 {
        call(&mut sim, 1, request, "note", note_args(1, &text), false);
        request += 1;
        sim.step(Duration::from_millis(50));
    }
    assert!(
        sim.run_until(Duration::from_secs(5), |s| replies(s, 1).len()
            == request as usize)
    );
    let ids: Vec<u32> = replies(&sim, 1).iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, (0..request).collect::<Vec<_>>());
    assert!(sim.connected(1));
    let engine = sim.core.tick_core().engine();
    assert!(
        !engine
            .find::<Presence>(&Identity(identity(0)))
            .unwrap()
            .online,
        "client_disconnected ran"
    );
    assert_eq!(sim.core.metrics().clients.load(Relaxed), 1);
    // Client 1 received the notes as subscription updates.
    let updates = sim.clients[1]
        .events
        .iter()
        .filter(|e| {
            matches!(
                e,
                ClientEvent::Message {
                    msg: ServerMessage::TableUpdate { .. },
                    ..
                }
            )
        })
        .count();
    assert!(updates > 10, "client 1 got {updates} updates");
}

/// Subscriptions over the wire: applied, initial rows and deltas as `TableUpdate`s that decode
/// with the schema; bad queries get `SubscriptionError` with the reason.
#[test]
fn subscriptions_over_the_wire() {
    let mut sim = Sim::new(5, LinkConditions::PERFECT, |_| {});
    sim.add_client();
    assert!(sim.run_until(Duration::from_secs(5), |s| s.connected(0)));
    call(&mut sim, 0, 0, "note", note_args(7, "before"), false);
    sim.step(Duration::from_millis(200));
    let send = |sim: &mut Sim, msg: ClientMessage| sim.clients[0].session.send(&msg).unwrap();
    send(
        &mut sim,
        ClientMessage::Subscribe {
            query_id: 1,
            sql: "SELECT * FROM note WHERE level > 2".into(),
        },
    );
    send(
        &mut sim,
        ClientMessage::Subscribe {
            query_id: 2,
            sql: "SELECT * FROM nope".into(),
        },
    );
    send(
        &mut sim,
        ClientMessage::Subscribe {
            query_id: 3,
            sql: "SELECT * FROM presence".into(),
        },
    );
    send(
        &mut sim,
        ClientMessage::Subscribe {
            query_id: 1,
            sql: "SELECT * FROM note".into(),
        },
    );
    sim.step(Duration::from_millis(200));
    call(&mut sim, 0, 1, "note", note_args(5, "high"), false);
    call(&mut sim, 0, 2, "note", note_args(1, "low"), false);
    sim.step(Duration::from_millis(300));

    let schema = sim.core.tick_core().engine().schema().clone();
    let note_table = schema.table(Note::NAME).unwrap().clone();
    let layout = WireLayout::new(&note_table);
    let mut applied = Vec::new();
    let mut errors = Vec::new();
    let mut texts = Vec::new();
    let mut handles = RowHandles::new(false);
    for e in &sim.clients[0].events {
        let ClientEvent::Message { msg, .. } = e else {
            continue;
        };
        match msg {
            ServerMessage::SubscriptionApplied {
                query_id, tables, ..
            } => applied.push((*query_id, tables[0].table_id)),
            ServerMessage::SubscriptionError { query_id, message } => {
                errors.push((*query_id, message.clone()))
            }
            ServerMessage::TableUpdate { table_id, rows, .. } => {
                assert_eq!(*table_id, note_table.id);
                for record in layout.decode_records(&mut handles, rows).unwrap() {
                    if let WireRecord::Upsert { row, .. } = record
                        && let Value::String(text) = &row.columns[2]
                    {
                        texts.push(text.clone());
                    }
                }
            }
            _ => {}
        }
    }
    assert_eq!(applied, vec![(1, note_table.id)]);
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert_eq!(errors[0].0, 2);
    assert!(errors[0].1.contains("nope"), "{errors:?}");
    assert_eq!(errors[1].0, 3);
    assert!(errors[1].1.contains("presence"), "{errors:?}");
    assert_eq!(errors[2].0, 1);
    assert!(errors[2].1.contains("already"), "{errors:?}");
    assert_eq!(texts, vec!["before".to_owned(), "high".to_owned()]);
    let m = sim.core.metrics();
    assert_eq!(m.subscriptions_applied.load(Relaxed), 1);
    assert_eq!(m.subscription_errors.load(Relaxed), 3);
    assert_eq!(m.subscriptions_active.load(Relaxed), 1);
}

/// `client_connected` returning an error refuses the connection with its message.
#[test]
fn client_connected_error_refuses_the_connection() {
    let mut sim = Sim::new(6, LinkConditions::PERFECT, |_| {});
    let mut banned = identity(0);
    banned[..8].copy_from_slice(common::BANNED);
    let token = sim.token(banned, 1);
    sim.add_client_with_token(token);
    sim.add_client();
    assert!(sim.run_until(Duration::from_secs(5), |s| {
        s.connected(1)
            && s.clients[0]
                .events
                .iter()
                .any(|e| matches!(e, ClientEvent::Disconnected { .. }))
    }));
    let reason = sim.clients[0]
        .events
        .iter()
        .find_map(|e| match e {
            ClientEvent::Disconnected { reason } => Some(reason.to_string()),
            _ => None,
        })
        .unwrap();
    assert!(reason.contains("this identity is banned"), "{reason}");
    assert_eq!(sim.core.metrics().connections_refused.load(Relaxed), 1);
    assert_eq!(sim.core.metrics().clients.load(Relaxed), 1);
    let engine = sim.core.tick_core().engine();
    assert!(engine.find::<Presence>(&Identity(banned)).is_none());
}

/// Expired, replayed and forged connect tokens are refused by the server and never reach the
/// engine.
#[test]
fn expired_replayed_and_forged_connect_tokens_are_refused() {
    let mut sim = Sim::new(7, LinkConditions::PERFECT, |_| {});
    // Replayed: a second session with client 0's token, from another address.
    let token = sim.token(identity(0), 1);
    sim.add_client_with_token(token.clone());
    assert!(sim.run_until(Duration::from_secs(5), |s| s.connected(0)));
    sim.add_client_with_token(token);
    sim.step(Duration::from_secs(2));
    assert!(!sim.connected(1));
    let rejections = sim.core.metrics().netcode_rejections.load(Relaxed);
    assert!(rejections >= 1, "replay refused");

    // Expired: a connection request captured now and delivered after the token's expiry.
    sim.issuer.expire_after = Duration::from_secs(2);
    let token = sim.token(identity(2), 3);
    let mut late = orrery_netcode::ClientSession::new(Default::default(), token, sim.now).unwrap();
    late.update(sim.now);
    let mut request = Vec::new();
    late.drain_transmits(&mut request);
    assert!(!request.is_empty());
    sim.step(Duration::from_secs(3));
    let addr = Sim::client_addr(99);
    sim.core.handle_datagram(sim.now, addr, &request[0].bytes);
    sim.step(Duration::from_millis(100));
    assert!(
        sim.core.metrics().netcode_rejections.load(Relaxed) > rejections,
        "expired refused"
    );
    assert_eq!(sim.core.session().pending_clients(), 0);

    // Forged: a token issued with another key.
    let rejections = sim.core.metrics().netcode_rejections.load(Relaxed);
    let mut forger = sim.issuer.clone();
    forger.private_key = orrery_netcode::PrivateKey::from_bytes([0x66; 32]);
    let forged = forger
        .issue(
            &orrery_engine::Identity(identity(3)),
            orrery_engine::ConnectionId(4),
            sim.now,
        )
        .unwrap();
    let f = sim.add_client_with_token(forged);
    sim.step(Duration::from_secs(2));
    assert!(!sim.connected(f));
    assert!(
        sim.core.metrics().netcode_rejections.load(Relaxed) > rejections,
        "forged refused"
    );
    assert!(
        sim.core
            .tick_core()
            .engine()
            .find::<Presence>(&Identity(identity(3)))
            .is_none()
    );

    let engine = sim.core.tick_core().engine();
    assert_eq!(
        engine
            .find::<Presence>(&Identity(identity(0)))
            .unwrap()
            .connects,
        1
    );
    assert!(engine.find::<Presence>(&Identity(identity(2))).is_none());
    assert_eq!(sim.core.metrics().clients.load(Relaxed), 1);
}

/// Random datagrams from strangers and from a connected client's address change nothing.
#[test]
fn random_datagrams_are_dropped() {
    use rand::{RngExt, SeedableRng};
    let mut sim = Sim::new(8, LinkConditions::PERFECT, |_| {});
    sim.add_client();
    assert!(sim.run_until(Duration::from_secs(5), |s| s.connected(0)));
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(8);
    for n in 0..20_000 {
        let len = rng.random_range(0..1500);
        let mut bytes = vec![0u8; len];
        rng.fill(&mut bytes[..]);
        if len > 0 && n % 3 == 0 {
            bytes[0] = rng.random_range(0..8); // plausible packet prefixes
        }
        let from = if n % 2 == 0 {
            Sim::client_addr(0)
        } else {
            Sim::client_addr(500 + n % 50)
        };
        sim.core.handle_datagram(sim.now, from, &bytes);
        if n % 1000 == 0 {
            sim.step(Duration::from_millis(10));
        }
    }
    call(&mut sim, 0, 9, "add", add_args(1), false);
    assert!(sim.run_until(Duration::from_secs(5), |s| replies(s, 0).len() == 1));
    assert_eq!(replies(&sim, 0), vec![(9, Ok(()))]);
    assert!(sim.core.metrics().datagrams_dropped.load(Relaxed) > 10_000);
}

/// Admin disconnect runs `client_disconnected`; the client learns the reason.
#[test]
fn admin_disconnect_drives_the_lifecycle() {
    let mut sim = Sim::new(9, LinkConditions::PERFECT, |_| {});
    sim.add_client();
    assert!(sim.run_until(Duration::from_secs(5), |s| s.connected(0)));
    assert_eq!(sim.core.clients().len(), 1);
    assert!(sim.core.disconnect(orrery_netcode::ConnectionId(1), "bye"));
    assert!(sim.run_until(Duration::from_secs(2), |s| {
        s.clients[0]
            .events
            .iter()
            .any(|e| matches!(e, ClientEvent::Disconnected { .. }))
    }));
    sim.step(Duration::from_millis(100));
    let engine = sim.core.tick_core().engine();
    assert!(
        !engine
            .find::<Presence>(&Identity(identity(0)))
            .unwrap()
            .online
    );
    assert_eq!(sim.core.metrics().disconnects.load(Relaxed), 1);
}

/// A message over the server's size limit disconnects its sender only.
#[test]
fn oversized_message_disconnects_only_its_sender() {
    let mut sim = Sim::new(10, LinkConditions::PERFECT, |c| c.max_client_message = 1024);
    sim.add_client();
    sim.add_client();
    assert!(sim.run_until(Duration::from_secs(5), |s| s.connected(0) && s.connected(1)));
    call(
        &mut sim,
        0,
        0,
        "fail",
        string_args(&"z".repeat(4096)),
        false,
    );
    call(&mut sim, 1, 0, "add", add_args(1), false);
    assert!(sim.run_until(Duration::from_secs(5), |s| {
        replies(s, 1).len() == 1
            && s.clients[0]
                .events
                .iter()
                .any(|e| matches!(e, ClientEvent::Disconnected { .. }))
    }));
    assert!(replies(&sim, 0).is_empty(), "the oversized call never ran");
    assert_eq!(replies(&sim, 1), vec![(0, Ok(()))]);
    assert!(sim.connected(1));
    sim.step(Duration::from_millis(100));
    assert_eq!(sim.core.metrics().clients.load(Relaxed), 1);
    assert_eq!(sim.core.metrics().calls.load(Relaxed), 1);
}

/// One identity may hold `max_connections_per_identity` connections; a further one is
/// refused with a reason before `client_connected` runs, and a slot frees when one leaves.
#[test]
fn one_identity_holds_a_bounded_number_of_connections() {
    let mut sim = Sim::new(7, LinkConditions::PERFECT, |c| {
        c.max_connections_per_identity = 2;
    });
    let me = identity(5);
    for client_id in 1..=3 {
        let token = sim.token(me, client_id);
        sim.add_client_with_token(token);
    }
    let refused = |s: &Sim, i: usize| {
        s.clients[i].events.iter().find_map(|e| match e {
            ClientEvent::Disconnected { reason } => Some(reason.to_string()),
            _ => None,
        })
    };
    assert!(sim.run_until(Duration::from_secs(5), |s| {
        (0..3).filter(|&i| s.connected(i)).count() == 2 && (0..3).any(|i| refused(s, i).is_some())
    }));
    let loser = (0..3).find(|&i| refused(&sim, i).is_some()).unwrap();
    let reason = refused(&sim, loser).unwrap();
    assert!(
        reason.contains("already holds 2 connections (the limit is 2)"),
        "{reason}"
    );
    assert_eq!(sim.core.metrics().connections_refused.load(Relaxed), 1);
    // Another identity is not affected.
    sim.add_client();
    assert!(sim.run_until(Duration::from_secs(5), |s| s.connected(3)));
    // When one of the two leaves, the identity may connect again.
    let winner = (0..3).find(|&i| sim.connected(i)).unwrap();
    assert!(
        sim.core
            .disconnect(orrery_engine::ConnectionId(winner as u64 + 1), "bye")
    );
    sim.step(Duration::from_millis(200));
    let token = sim.token(me, 10);
    let again = sim.add_client_with_token(token);
    assert!(sim.run_until(Duration::from_secs(5), |s| s.connected(again)));
}
