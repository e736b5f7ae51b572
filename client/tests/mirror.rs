//! The mirror without a network: payloads built with the `orrery-row` record encoders (a mirror
//! fed by the real publisher is checked in `tests/tests/row_format.rs`).

#![allow(missing_docs)]

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use orrery_client::row::wire::{EVENT_HANDLE, WireLayout};
use orrery_client::row::{TypeDesc, Value, encode_row};
use orrery_client::{Callbacks, Mirror, MirrorChange, MirrorError};
use serde_json::json;
use support::{HIT, NPC, schema};

/// Encodes records for one table as a server would for one connection, giving each row a
/// handle with its first upsert (lowest free first) and freeing it with the delete.
struct Enc {
    layout: WireLayout,
    table: orrery_client::row::TableSchema,
    handles: BTreeMap<Vec<u8>, u32>,
    free: Vec<u32>,
}

impl Enc {
    fn new(table: u32) -> Self {
        let s = schema();
        let table = s.tables[table as usize].clone();
        Enc {
            layout: WireLayout::new(&table),
            table,
            handles: BTreeMap::new(),
            free: Vec::new(),
        }
    }

    fn wire(&self, values: &[Value]) -> (Vec<u8>, Vec<u8>, Vec<std::ops::Range<u32>>) {
        let exact = encode_row(&self.table, values).unwrap();
        let (mut wire, mut bounds) = (Vec::new(), Vec::new());
        self.layout
            .encode_row(&exact, &mut wire, &mut bounds)
            .unwrap();
        let pk = values[0].to_bytes(&self.table.columns[0].ty).unwrap();
        (pk, wire, bounds)
    }

    fn handle(&mut self, pk: &[u8]) -> u32 {
        if self.table.event {
            return EVENT_HANDLE;
        }
        let next = self.handles.len() as u32 + self.free.len() as u32;
        let free = &mut self.free;
        *self
            .handles
            .entry(pk.to_vec())
            .or_insert_with(|| free.pop().unwrap_or(next))
    }

    fn upsert(&mut self, values: &[Value]) -> Vec<u8> {
        let (pk, wire, _) = self.wire(values);
        let mut out = Vec::new();
        let handle = self.handle(&pk);
        self.layout.upsert_record(handle, &pk, &wire, &mut out);
        out
    }

    fn delta(&mut self, old: &[Value], new: &[Value]) -> Vec<u8> {
        let (pk, wo, bo) = self.wire(old);
        let (_, wn, bn) = self.wire(new);
        let mut out = Vec::new();
        let handle = self.handle(&pk);
        assert!(
            self.layout
                .delta_record(handle, (&wo, &bo), (&wn, &bn), &mut out)
        );
        out
    }

    fn delete(&mut self, id: u64) -> Vec<u8> {
        let pk = Value::Unsigned(id)
            .to_bytes(&self.table.columns[0].ty)
            .unwrap();
        let handle = self.handles.remove(&pk).unwrap_or(0);
        self.free.push(handle);
        let mut out = Vec::new();
        WireLayout::delete_record(handle, &mut out);
        out
    }
}

fn npc(id: u64, name: &str, pos: [f32; 2], hp: i64) -> Vec<Value> {
    vec![
        Value::Unsigned(id),
        Value::String(name.into()),
        Value::Vec2(pos.into()),
        Value::Signed(hp),
    ]
}

#[test]
fn upserts_deltas_and_deletes_drive_changes_and_callbacks() {
    let mut mirror = Mirror::new(schema());
    let mut e = Enc::new(NPC);
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut callbacks = Callbacks::new();
    let l = log.clone();
    callbacks.on_insert(NPC, move |r| {
        l.lock()
            .unwrap()
            .push(format!("insert {}", r.get("id").unwrap().as_u64().unwrap()))
    });
    let l = log.clone();
    let update = callbacks.on_update(NPC, move |o, n| {
        l.lock().unwrap().push(format!(
            "update {} -> {}",
            o.get("hp").unwrap().as_i64().unwrap(),
            n.get("hp").unwrap().as_i64().unwrap()
        ))
    });
    let l = log.clone();
    callbacks.on_delete(NPC, move |r| {
        l.lock()
            .unwrap()
            .push(format!("delete {}", r.get("id").unwrap().as_u64().unwrap()))
    });

    let a1 = npc(1, "a", [0.004, 10.0], 5);
    let a2 = npc(1, "a", [0.016, 10.0], 4);
    let b = npc(2, "b", [-1.0, 1.0], 9);
    let mut payload = e.upsert(&a1);
    payload.extend(e.upsert(&b));
    let changes = mirror.apply(NPC, &payload).unwrap();
    callbacks.dispatch(&changes);
    assert_eq!(mirror.count("npc").unwrap(), 2);
    assert_eq!(
        mirror
            .find_row("npc", &json!(2))
            .unwrap()
            .unwrap()
            .to_json(),
        json!({"id": 2, "name": "b", "pos": [-1.0, 1.0], "hp": 9})
    );
    // 0.004 / 0.01 rounds to 0 units.
    assert_eq!(
        mirror
            .find_row("npc", &json!(1))
            .unwrap()
            .unwrap()
            .get("pos"),
        Some(&Value::Vec2([0.0, 10.0].into()))
    );

    let changes = mirror.apply(NPC, &e.delta(&a1, &a2)).unwrap();
    assert!(matches!(&changes[..], [MirrorChange::Update { .. }]));
    callbacks.dispatch(&changes);
    let row = mirror.find_row("npc", &json!(1)).unwrap().unwrap();
    // 0.016 → 2 units → 0.02 (units * step in f32).
    assert_eq!(
        row.get("pos"),
        Some(&Value::Vec2([2.0 * 0.01, 10.0].into()))
    );
    assert_eq!(row.wire_row().units(2), Some([2, 1000, 0]));
    // A full upsert replacing a held row is an update too.
    callbacks.dispatch(
        &mirror
            .apply(NPC, &e.upsert(&npc(2, "b", [-1.0, 1.0], 8)))
            .unwrap(),
    );
    assert!(callbacks.remove(update));
    assert!(!callbacks.remove(update));
    callbacks.dispatch(
        &mirror
            .apply(NPC, &e.delta(&a2, &npc(1, "a", [0.016, 10.0], 3)))
            .unwrap(),
    );
    callbacks.dispatch(&mirror.apply(NPC, &e.delete(2)).unwrap());
    assert_eq!(mirror.count("npc").unwrap(), 1);

    let log = log.lock().unwrap();
    assert_eq!(
        *log,
        vec![
            "insert 1".to_string(),
            "insert 2".to_string(),
            "update 5 -> 4".to_string(),
            "update 9 -> 8".to_string(),
            "delete 2".to_string(),
        ]
    );
    let s = mirror.stats();
    assert_eq!(
        (s.upserts, s.deltas, s.deletes, s.skipped_records),
        (3, 2, 1, 0)
    );
}

#[test]
fn recycled_rows_are_overwritten_only_when_no_one_holds_them() {
    let mut mirror = Mirror::new(schema());
    let mut e = Enc::new(NPC);
    let mut a = npc(1, "a", [0.0, 0.0], 100);
    let mut b = npc(2, "a much longer name than the other", [5.0, 5.0], 100);
    let mut payload = e.upsert(&a);
    payload.extend(e.upsert(&b));
    let changes = mirror.apply(NPC, &payload).unwrap();
    mirror.recycle(changes);
    // A row a callback kept: its snapshot must survive every later recycling.
    let mut kept = None;
    for step in 0..20 {
        // The two rows take turns, so a spare from one row is reused for the other.
        let (row, other) = if step % 2 == 0 {
            (&mut a, &b)
        } else {
            (&mut b, &a)
        };
        let next = {
            let mut next = row.clone();
            next[3] = Value::Signed(99 - step);
            next[2] = Value::Vec2([step as f32, 1.0].into());
            next
        };
        let changes = mirror.apply(NPC, &e.delta(row, &next)).unwrap();
        *row = next;
        let [MirrorChange::Update { old, new }] = &changes[..] else {
            panic!("{changes:?}");
        };
        assert_eq!(new.values(), &row[..]);
        assert_eq!(
            old.get("hp"),
            Some(&Value::Signed(if step < 2 { 100 } else { 101 - step }))
        );
        if step == 4 {
            kept = Some(old.clone());
        }
        mirror.recycle(changes);
        for held in [&*row, other] {
            let id = held[0].as_u64().unwrap();
            let got = mirror.find_row("npc", &json!(id)).unwrap().unwrap();
            assert_eq!(got.values(), &held[..]);
            assert_eq!(
                got.pk_bytes(),
                &held[0].to_bytes(&TypeDesc::U64).unwrap()[..]
            );
        }
    }
    let kept = kept.unwrap();
    assert_eq!(kept.get("id"), Some(&Value::Unsigned(1)));
    assert_eq!(kept.get("hp"), Some(&Value::Signed(97)));
    assert_eq!(kept.get("name"), Some(&Value::String("a".into())));
    assert_eq!(mirror.count("npc").unwrap(), 2);
}

#[test]
fn event_tables_fire_inserts_and_store_nothing() {
    let mut mirror = Mirror::new(schema());
    let mut e = Enc::new(HIT);
    let hit = vec![Value::Unsigned(1), Value::Unsigned(7), Value::Signed(30)];
    let changes = mirror.apply(HIT, &e.upsert(&hit)).unwrap();
    assert!(
        matches!(&changes[..], [MirrorChange::Insert(r)] if r.get("dmg") == Some(&Value::Signed(30)))
    );
    // The same key again is another insert, not an update.
    let changes = mirror.apply(HIT, &e.upsert(&hit)).unwrap();
    assert!(matches!(&changes[..], [MirrorChange::Insert(_)]));
    assert_eq!(mirror.count("hit").unwrap(), 0);
    // Deltas and deletes have nothing to apply to: a server sending one is refused.
    assert!(matches!(
        mirror.apply(HIT, &e.delete(1)),
        Err(MirrorError::Decode { table_id: HIT, .. })
    ));
    assert_eq!(mirror.stats().rejected_payloads, 1);
}

#[test]
fn bad_payloads_change_nothing() {
    let mut mirror = Mirror::new(schema());
    let mut e = Enc::new(NPC);
    mirror
        .apply(NPC, &e.upsert(&npc(1, "a", [0.0, 0.0], 1)))
        .unwrap();
    // A good record followed by garbage: refused whole.
    let mut payload = e.upsert(&npc(2, "b", [0.0, 0.0], 1));
    payload.extend_from_slice(&[0, 5, 0xff]);
    assert!(matches!(
        mirror.apply(NPC, &payload),
        Err(MirrorError::Decode { table_id: NPC, .. })
    ));
    assert_eq!(mirror.count("npc").unwrap(), 1);
    assert_eq!(
        mirror.apply(99, &payload).unwrap_err(),
        MirrorError::UnknownTableId(99)
    );
    // A delta under a handle the connection was never given: refused whole.
    let mut payload = e.upsert(&npc(3, "c", [0.0, 0.0], 1));
    payload.extend(e.delta(&npc(5, "x", [0.0, 0.0], 1), &npc(5, "x", [0.0, 0.0], 2)));
    assert!(matches!(
        mirror.apply(NPC, &payload),
        Err(MirrorError::Decode { table_id: NPC, .. })
    ));
    assert_eq!(mirror.count("npc").unwrap(), 1);
    // A hostile server naming one row by a second handle: the row moves to the new handle, so
    // a delete by the old one names nothing the mirror holds and is skipped, while a delta by
    // the new one applies; the rest applies too.
    let layout = WireLayout::new(&schema().tables[NPC as usize]);
    let (pk, wire, _) = e.wire(&npc(1, "a", [0.0, 0.0], 1));
    let mut payload = Vec::new();
    layout.upsert_record(1, &pk, &wire, &mut payload);
    WireLayout::delete_record(0, &mut payload);
    payload.extend_from_slice(&[1, 1 | (1 << 5), 4]); // handle 1: hp (column 3) = 2
    let (pk, wire, _) = e.wire(&npc(3, "c", [0.0, 0.0], 1));
    layout.upsert_record(2, &pk, &wire, &mut payload);
    let changes = mirror.apply(NPC, &payload).unwrap();
    assert_eq!(changes.len(), 3, "{changes:?}");
    assert!(
        matches!(&changes[1], MirrorChange::Update { old, new }
            if old.get("hp") == Some(&Value::Signed(1)) && new.get("hp") == Some(&Value::Signed(2))),
        "{changes:?}"
    );
    assert!(
        matches!(&changes[2], MirrorChange::Insert(_)),
        "{changes:?}"
    );
    assert_eq!(mirror.count("npc").unwrap(), 2);
    assert_eq!(mirror.stats().skipped_records, 1);
    assert_eq!(mirror.stats().rejected_payloads, 3);
    assert!(matches!(mirror.count("nope"), Err(MirrorError::UnknownTable(t)) if t == "nope"));
    mirror.clear();
    assert_eq!(mirror.total_rows(), 0);
}

#[test]
fn callbacks_registered_while_dispatching_are_merged() {
    let mut callbacks = Callbacks::new();
    let first = callbacks.on_insert(NPC, |_| {});
    // What the async client does: dispatch from the registry while new registrations and
    // removals go to a continuation.
    let mut continuation = callbacks.continuation();
    let second = continuation.on_delete(NPC, |_| {});
    assert!(!continuation.remove(first), "not held by the continuation");
    callbacks.merge(continuation);
    assert_ne!(first, second);
    assert!(callbacks.has_any(NPC));
    assert!(
        !callbacks.remove(first),
        "the removal was applied by the merge"
    );
    assert!(callbacks.remove(second));
    assert!(!callbacks.has_any(NPC));
}
