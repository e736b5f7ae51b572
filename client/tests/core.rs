//! `ClientCore` against a fake server built on `netcode::ServerSession`, over a simulated
//! lossy network on a virtual clock (no sockets, no sleeps).

#![allow(missing_docs)]

mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use orrery_client::row::Value;
use orrery_client::{Callbacks, ClientError, Event};
use orrery_netcode::DisconnectReason;
use orrery_netcode::sim::LinkConditions;
use serde_json::json;
use support::{HIT, NPC, SimWorld};

fn lossy() -> LinkConditions {
    LinkConditions {
        loss: 0.1,
        latency: Duration::from_millis(30),
        jitter: Duration::from_millis(40),
        duplicate: 0.02,
        reorder: 0.02,
    }
}

fn replies(events: &[Event]) -> Vec<(u32, Result<(), String>)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::ReducerReply {
                request_id, result, ..
            } => Some((*request_id, result.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn calls_get_exactly_one_reply_each_by_request_id_under_loss() {
    let mut w = SimWorld::new(11, lossy());
    let c = w.add_client();
    w.connect(c);
    let mut expected = HashMap::new();
    for i in 0..60u64 {
        let core = &mut w.clients[c].core;
        let (id, ok) = if i % 3 == 0 {
            (core.call("fail", &json!(null), false).unwrap(), false)
        } else {
            let args =
                json!({"id": i, "name": format!("npc{i}"), "pos": [i as f32, 0.5], "hp": 100});
            (core.call("spawn_npc", &args, i % 2 == 0).unwrap(), true)
        };
        expected.insert(id, ok);
        if i % 7 == 0 {
            w.step(Duration::from_millis(20));
        }
    }
    assert!(w.run_until(1000, |w| replies(&w.clients[c].events).len()
        >= expected.len()));
    let got = replies(&w.clients[c].events);
    assert_eq!(got.len(), expected.len(), "exactly one reply per call");
    for (id, result) in got {
        match (expected[&id], result) {
            (true, Ok(())) => {}
            (false, Err(message)) => assert_eq!(message, "insufficient funds"),
            (ok, result) => panic!("request {id}: expected ok={ok}, got {result:?}"),
        }
    }
    assert!(w.clients[c].core.pending_calls().is_empty());
    // The server decoded every JSON-encoded argument list.
    assert!(w.game.calls.iter().all(|(_, _, args)| args.is_ok()));
    assert_eq!(w.game.npcs().len(), 40);
    assert!(w.net.stats().lost > 0, "the link lost datagrams");
}

#[test]
fn subscription_applied_with_initial_rows_and_errors_are_reported() {
    let mut w = SimWorld::new(12, lossy());
    let (a, b) = (w.add_client(), w.add_client());
    w.connect(a);
    w.connect(b);
    for i in 1..=3u64 {
        w.clients[a]
            .core
            .call("spawn_npc", &json!([i, "orc", [1.0, 2.0], 50]), false)
            .unwrap();
    }
    assert!(w.run_until(500, |w| replies(&w.clients[a].events).len() == 3));

    let good = w.clients[b].core.subscribe("SELECT * FROM npc").unwrap();
    let bad = w.clients[b].core.subscribe("SELECT * FROM nope").unwrap();
    assert_ne!(good, bad);
    assert!(w.run_until(500, |w| {
        w.clients[b]
            .events
            .iter()
            .filter(|e| {
                matches!(
                    e,
                    Event::SubscriptionApplied { .. } | Event::SubscriptionError { .. }
                )
            })
            .count()
            == 2
    }));
    let events = &w.clients[b].events;
    let applied = events
        .iter()
        .position(|e| matches!(e, Event::SubscriptionApplied { query_id, .. } if *query_id == good))
        .expect("applied");
    let rows = events
        .iter()
        .position(|e| matches!(e, Event::TableUpdate { table_id: NPC, changes, .. } if changes.len() == 3))
        .expect("initial rows");
    assert!(
        rows < applied,
        "initial rows are in the mirror before the applied event"
    );
    assert!(events.iter().any(|e| matches!(
        e,
        Event::SubscriptionError { query_id, message } if *query_id == bad && message.contains("nope")
    )));
    let core = &w.clients[b].core;
    assert_eq!(core.mirror().count("npc").unwrap(), 3);
    assert!(core.subscriptions().contains_key(&good));
    assert!(
        !core.subscriptions().contains_key(&bad),
        "a refused query is not active"
    );
}

#[derive(Debug, serde::Deserialize, PartialEq)]
struct Npc {
    id: u64,
    name: String,
    pos: [f32; 2],
    hp: i32,
}

#[test]
fn table_updates_keep_the_mirror_equal_to_the_server_under_loss() {
    let mut w = SimWorld::new(13, lossy());
    let (writer, reader) = (w.add_client(), w.add_client());
    w.connect(writer);
    w.connect(reader);
    let npc_q = w.clients[reader]
        .core
        .subscribe("SELECT * FROM npc")
        .unwrap();
    w.clients[reader]
        .core
        .subscribe("SELECT * FROM hit")
        .unwrap();
    assert!(w.run_until(500, |w| {
        w.clients[reader]
            .events
            .iter()
            .filter(|e| matches!(e, Event::SubscriptionApplied { .. }))
            .count()
            == 2
    }));

    // Callbacks fed from the reader's events.
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut callbacks = Callbacks::new();
    let l = log.clone();
    callbacks.on_insert(NPC, move |r| {
        l.lock().unwrap().push(format!("+npc {:?}", r.get("id")))
    });
    let l = log.clone();
    callbacks.on_update(NPC, move |old, new| {
        l.lock()
            .unwrap()
            .push(format!("~npc {:?}->{:?}", old.get("hp"), new.get("hp")))
    });
    let l = log.clone();
    callbacks.on_delete(NPC, move |r| {
        l.lock().unwrap().push(format!("-npc {:?}", r.get("id")))
    });
    let l = log.clone();
    callbacks.on_insert(HIT, move |r| {
        l.lock().unwrap().push(format!("+hit {:?}", r.get("dmg")))
    });

    let mut calls = 0;
    let mut call = |w: &mut SimWorld, reducer: &str, args: serde_json::Value| {
        w.clients[writer].core.call(reducer, &args, false).unwrap();
        calls += 1;
        w.step(Duration::from_millis(20));
    };
    for i in 1..=10u64 {
        call(
            &mut w,
            "spawn_npc",
            json!([i, format!("npc{i}"), [i as f32 * 1.234, -5.0], 100]),
        );
    }
    for round in 0..5 {
        for i in 1..=10u64 {
            let x = i as f32 * 1.234 + round as f32 * 0.337;
            call(
                &mut w,
                "move_npc",
                json!({"id": i, "pos": [x, -5.0 + round as f32 * 0.011]}),
            );
        }
    }
    call(&mut w, "damage", json!([3, 30]));
    call(&mut w, "damage", json!([3, 25]));
    call(&mut w, "kill_npc", json!([7]));
    call(&mut w, "kill_npc", json!([8]));
    assert!(w.run_until(2000, |w| replies(&w.clients[writer].events).len() == calls));
    // Let the last updates reach the reader.
    w.run_until(200, |w| {
        w.clients[reader].core.session().backlog_bytes() == 0 && w.net.in_flight() == 0
    });
    for e in &w.clients[reader].events {
        if let Event::TableUpdate { changes, .. } = e {
            callbacks.dispatch(changes);
        }
    }

    let truth = w.game.npcs();
    let mirror = w.clients[reader].core.mirror();
    assert_eq!(mirror.count("npc").unwrap(), 8);
    assert_eq!(mirror.count("hit").unwrap(), 0, "event rows are not stored");
    assert_eq!(mirror.stats().skipped_records, 0);
    for (id, values) in &truth {
        let row = mirror.find_row("npc", &json!(id)).unwrap().expect("row");
        // Quantized positions: within half a step of the truth, and equal to the server's
        // own quantization (units * step).
        let (Value::Vec2(exact), Some(Value::Vec2(got))) = (&values[2], row.get("pos")) else {
            panic!("pos")
        };
        for k in 0..2 {
            assert!((exact[k] - got[k]).abs() <= 0.0051, "{exact:?} vs {got:?}");
        }
        assert_eq!(row.get("hp"), Some(&values[3]));
        assert_eq!(row.get("name"), Some(&values[1]));
    }
    let typed: Vec<Npc> = mirror.rows("npc").unwrap();
    assert_eq!(typed.len(), 8);
    let npc3: Npc = mirror.find("npc", &json!(3)).unwrap().unwrap();
    assert_eq!((npc3.id, npc3.name.as_str(), npc3.hp), (3, "npc3", 45));
    assert!(mirror.find::<Npc>("npc", &json!(7)).unwrap().is_none());
    assert!(
        mirror.stats().deltas >= 40,
        "moves arrive as deltas: {:?}",
        mirror.stats()
    );

    let log = log.lock().unwrap();
    let count = |p: &str| log.iter().filter(|l| l.starts_with(p)).count();
    assert_eq!(count("+npc"), 10);
    assert_eq!(count("-npc"), 2);
    assert_eq!(count("+hit"), 2);
    assert!(log.contains(&"~npc Some(Signed(100))->Some(Signed(70))".to_string()));

    // Unsubscribing removes the rows (the server sends deletes).
    w.clients[reader].core.unsubscribe(npc_q).unwrap();
    assert!(matches!(
        w.clients[reader].core.unsubscribe(npc_q),
        Err(ClientError::UnknownQuery(q)) if q == npc_q
    ));
    assert!(w.run_until(
        500,
        |w| w.clients[reader].core.mirror().count("npc").unwrap() == 0
    ));
}

#[test]
fn the_servers_disconnect_reason_reaches_the_client() {
    let mut w = SimWorld::new(14, LinkConditions::PERFECT);
    let c = w.add_client();
    w.connect(c);
    w.clients[c]
        .core
        .call("kick_me", &json!([]), false)
        .unwrap();
    assert!(w.run_until(200, |w| {
        w.clients[c]
            .events
            .iter()
            .any(|e| matches!(e, Event::Disconnected { .. }))
    }));
    let reason = w.clients[c]
        .events
        .iter()
        .find_map(|e| match e {
            Event::Disconnected { reason } => Some(reason.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        reason,
        DisconnectReason::ByServer("kicked: asked for it".into())
    );
    assert!(!w.clients[c].core.is_connected());
    assert!(matches!(
        w.clients[c].core.call("fail", &json!(null), false),
        Err(ClientError::Send(_))
    ));
}

#[test]
fn bad_calls_fail_locally_without_sending() {
    let mut w = SimWorld::new(15, LinkConditions::PERFECT);
    let c = w.add_client();
    w.connect(c);
    let core = &mut w.clients[c].core;
    assert!(matches!(
        core.call("nope", &json!([]), false),
        Err(ClientError::UnknownReducer(r)) if r == "nope"
    ));
    assert!(matches!(
        core.call("init", &json!([]), false),
        Err(ClientError::NotCallable { .. })
    ));
    let err = core
        .call("damage", &json!({"id": 1, "dmg": "lots"}), false)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "arguments of `damage`: dmg: expected i32, got \"lots\""
    );
    assert!(matches!(
        core.call("damage", &json!([1]), false),
        Err(ClientError::Args { .. })
    ));
    assert!(core.pending_calls().is_empty());
    // Raw calls are the server's to validate: it refuses undecodable arguments.
    let id = core.call_raw("damage", vec![0xff], false).unwrap();
    assert!(w.run_until(100, |w| !replies(&w.clients[c].events).is_empty()));
    let (got, result) = replies(&w.clients[c].events)[0].clone();
    assert_eq!(got, id);
    assert!(result.unwrap_err().starts_with("invalid arguments"));
    assert_eq!(w.game.calls.len(), 1);
}

#[test]
fn many_clients_share_updates() {
    let mut w = SimWorld::new(16, lossy());
    let n = 8;
    for _ in 0..n {
        let c = w.add_client();
        w.connect(c);
        w.clients[c].core.subscribe("SELECT * FROM npc").unwrap();
    }
    assert!(w.run_until(500, |w| w.clients.iter().all(|c| {
        c.events
            .iter()
            .any(|e| matches!(e, Event::SubscriptionApplied { .. }))
    })));
    for i in 0..20u64 {
        w.clients[(i % n as u64) as usize]
            .core
            .call("spawn_npc", &json!([i, "x", [0.0, 0.0], 1]), false)
            .unwrap();
    }
    assert!(w.run_until(2000, |w| {
        w.clients
            .iter()
            .all(|c| c.core.mirror().count("npc").unwrap() == 20)
    }));
    let first: BTreeMap<Vec<u8>, Vec<u8>> = w.clients[0]
        .core
        .mirror()
        .iter("npc")
        .unwrap()
        .map(|r| (r.pk_bytes().to_vec(), r.to_bytes()))
        .collect();
    for c in &w.clients {
        let rows: BTreeMap<Vec<u8>, Vec<u8>> = c
            .core
            .mirror()
            .iter("npc")
            .unwrap()
            .map(|r| (r.pk_bytes().to_vec(), r.to_bytes()))
            .collect();
        assert_eq!(rows, first);
    }
}
