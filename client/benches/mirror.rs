//! The mirror's per-record cost: a client holding 1,000 avatar-shaped rows (the sample MMO's
//! `avatar`: key, identity, name, quantized position, velocity, ...) applies a server's
//! payloads of 100 records each, with an `on_update` callback that reads old and new velocity
//! (what the load test's bots register). Three record mixes: position deltas with one turn in
//! ten (a crowd walking), rebases (a budget-bound crowd refreshed from far behind), and full
//! upserts (no deltas at all). Each iteration applies one payload, dispatches its changes and
//! gives them back to the mirror for reuse (`Mirror::recycle`, as the `Client` driver does;
//! `deltas_not_recycled` drops them instead); throughput is in records.
//!
//! Before the measurement, each mix also prints how many heap allocations one record costs,
//! counted by `stats_alloc`'s instrumented global allocator (a count, so it does not move with the machine).

#![allow(missing_docs)]
#![allow(clippy::print_stderr)] // allocations per record, next to criterion's output

use std::alloc::System;
use std::hint::black_box;
use std::ops::Range;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use orrery_client::row::codec::write_varint;
use orrery_client::row::wire::WireLayout;
use orrery_client::row::{Identity, ModuleSchema, TableSchema, Value, encode_row};
use orrery_client::{Callbacks, Mirror};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const ROWS: u64 = 1_000;
const RECORDS_PER_PAYLOAD: usize = 100;
const PAYLOADS: usize = 200;
const POSITION: usize = 3;
const VELOCITY: usize = 4;

fn schema() -> Arc<ModuleSchema> {
    let json = r#"{
      "name": "bench",
      "tables": [
        {"id": 0, "name": "avatar", "rust_type": "Avatar",
         "columns": [
           {"name": "id", "type": {"kind": "u64"}, "auto_inc": true},
           {"name": "owner", "type": {"kind": "identity"}, "auto_inc": false},
           {"name": "name", "type": {"kind": "string"}, "auto_inc": false},
           {"name": "position", "type": {"kind": "vec2"}, "auto_inc": false, "quantize": 0.01},
           {"name": "velocity", "type": {"kind": "vec2"}, "auto_inc": false},
           {"name": "destination", "type": {"kind": "vec2"}, "auto_inc": false},
           {"name": "seeking", "type": {"kind": "bool"}, "auto_inc": false},
           {"name": "hp", "type": {"kind": "i32"}, "auto_inc": false},
           {"name": "max_hp", "type": {"kind": "i32"}, "auto_inc": false},
           {"name": "level", "type": {"kind": "u32"}, "auto_inc": false},
           {"name": "online", "type": {"kind": "bool"}, "auto_inc": false}
         ],
         "primary_key": 0,
         "indexes": [{"column": "id", "kind": "primary"}],
         "visibility": {"kind": "public"}, "durability": "durable", "event": false}
      ],
      "reducers": []
    }"#;
    Arc::new(ModuleSchema::from_json_str(json).expect("bench schema"))
}

/// A row as the server holds it: values, wire encoding and column bounds.
type Held = (Vec<Value>, Vec<u8>, Vec<Range<u32>>);

/// The server's side: each row, whose client handle is its id.
struct Server {
    table: TableSchema,
    layout: WireLayout,
    rows: Vec<Held>,
    rng: u64,
}

#[derive(Clone, Copy)]
enum Mix {
    Deltas,
    Rebases,
    Upserts,
}

impl Server {
    fn new(schema: &ModuleSchema) -> Self {
        let table = schema.tables[0].clone();
        let layout = WireLayout::new(&table);
        let mut server = Server {
            table,
            layout,
            rows: Vec::new(),
            rng: 0x9e37_79b9_7f4a_7c15,
        };
        for id in 0..ROWS {
            let values = vec![
                Value::Unsigned(id),
                Value::Identity(Identity::from_bytes([id as u8; 32])),
                Value::String(format!("bot-{id:05}")),
                Value::Vec2(glam::Vec2::new(id as f32, 2.0 * id as f32)),
                Value::Vec2(glam::Vec2::new(1.0, 0.0)),
                Value::Vec2(glam::Vec2::ZERO),
                Value::Bool(false),
                Value::Signed(100),
                Value::Signed(100),
                Value::Unsigned(1),
                Value::Bool(true),
            ];
            let (wire, bounds) = server.wire(&values);
            server.rows.push((values, wire, bounds));
        }
        server
    }

    fn wire(&self, values: &[Value]) -> (Vec<u8>, Vec<Range<u32>>) {
        let exact = encode_row(&self.table, values).expect("row");
        let (mut wire, mut bounds) = (Vec::new(), Vec::new());
        self.layout
            .encode_row(&exact, &mut wire, &mut bounds)
            .expect("wire row");
        (wire, bounds)
    }

    fn next(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// Every row as an upsert with handle = id, in id order.
    fn bind_all(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (id, (values, wire, _)) in self.rows.iter().enumerate() {
            let pk = values[0].to_bytes(&self.table.columns[0].ty).expect("key");
            self.layout.upsert_record(id as u32, &pk, wire, &mut out);
        }
        out
    }

    /// One payload: `RECORDS_PER_PAYLOAD` rows (distinct) move, one in ten also turns.
    fn payload(&mut self, mix: Mix) -> Vec<u8> {
        let mut out = Vec::new();
        let mut picked = std::collections::BTreeSet::new();
        while picked.len() < RECORDS_PER_PAYLOAD {
            picked.insert((self.next() % ROWS) as usize);
        }
        for id in picked {
            let turn = self.next().is_multiple_of(10);
            let mut values = self.rows[id].0.clone();
            if let Value::Vec2(p) = &mut values[POSITION] {
                *p += glam::Vec2::new(0.05, -0.03);
            }
            if turn && let Value::Vec2(v) = &mut values[VELOCITY] {
                *v = glam::Vec2::new(-v.y, v.x);
            }
            let (wire, bounds) = self.wire(&values);
            let (_, old_wire, old_bounds) = &self.rows[id];
            match mix {
                Mix::Deltas => {
                    self.layout.delta_record(
                        id as u32,
                        (old_wire, old_bounds),
                        (&wire, &bounds),
                        &mut out,
                    );
                }
                Mix::Rebases => {
                    write_varint(&mut out, id as u64);
                    let mask = (1 << POSITION) | (1 << VELOCITY);
                    self.layout.rebase_body((&wire, &bounds), mask, &mut out);
                }
                Mix::Upserts => {
                    let pk = values[0].to_bytes(&self.table.columns[0].ty).expect("key");
                    self.layout.upsert_record(id as u32, &pk, &wire, &mut out);
                }
            }
            self.rows[id] = (values, wire, bounds);
        }
        out
    }
}

/// A mirror holding every row, with the bots' `on_update` callback, and the payloads to apply.
fn setup(mix: Mix) -> (Mirror, Callbacks, Vec<Vec<u8>>) {
    let schema = schema();
    let mut server = Server::new(&schema);
    let mut mirror = Mirror::new(schema);
    mirror.apply(0, &server.bind_all()).expect("bind");
    let mut callbacks = Callbacks::new();
    let mut turns = 0u64;
    callbacks.on_update(0, move |old, new| {
        if old.values().get(VELOCITY) != new.values().get(VELOCITY) {
            turns += 1;
            black_box(turns);
        }
    });
    let payloads = (0..PAYLOADS).map(|_| server.payload(mix)).collect();
    (mirror, callbacks, payloads)
}

/// Applies a payload and runs its callbacks, then gives the changes back (`Mirror::recycle`,
/// as the `Client` driver does) or drops them.
fn apply(mirror: &mut Mirror, callbacks: &mut Callbacks, payload: &[u8], recycle: bool) -> usize {
    let changes = mirror.apply(0, payload).expect("payload");
    callbacks.dispatch(&changes);
    let n = changes.len();
    if recycle {
        mirror.recycle(changes);
    }
    n
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("mirror");
    group.throughput(Throughput::Elements(RECORDS_PER_PAYLOAD as u64));
    for (name, mix, recycle) in [
        ("deltas", Mix::Deltas, true),
        ("deltas_not_recycled", Mix::Deltas, false),
        ("rebases", Mix::Rebases, true),
        ("upserts", Mix::Upserts, true),
    ] {
        let (mut mirror, mut callbacks, payloads) = setup(mix);
        // Payloads can be applied again: deltas move rows further, rebases and upserts
        // set the same values. Warm up once, then count one pass.
        for payload in &payloads {
            apply(&mut mirror, &mut callbacks, payload, recycle);
        }
        let region = Region::new(GLOBAL);
        for payload in &payloads {
            apply(&mut mirror, &mut callbacks, payload, recycle);
        }
        let allocations = region.change().allocations;
        eprintln!(
            "mirror/{name}: {:.2} allocations per record ({} bytes per record)",
            allocations as f64 / (PAYLOADS * RECORDS_PER_PAYLOAD) as f64,
            payloads.iter().map(Vec::len).sum::<usize>() / (PAYLOADS * RECORDS_PER_PAYLOAD),
        );
        let mut next = 0;
        group.bench_function(name, |b| {
            b.iter(|| {
                let n = apply(&mut mirror, &mut callbacks, &payloads[next], recycle);
                next = (next + 1) % payloads.len();
                n
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
