//! Test support: a demo schema, a fake game server speaking the real protocol on a netcode
//! `ServerSession` (reducers, subscriptions, published-row records built with the netcode
//! encoders), and a simulated network that drives `ClientCore`s on a virtual clock.

#![allow(dead_code, missing_docs)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use orrery_client::ClientCore;
use orrery_client::Event;
use orrery_netcode::protocol::TableRows;
use orrery_netcode::sim::{LinkConditions, Network, SIM_EPOCH};
use orrery_netcode::{
    ClientMessage, ClientSessionConfig, ConnectTokenIssuer, ConnectionId, DEFAULT_PROTOCOL_ID,
    PrivateKey, ServerEvent, ServerMessage, ServerSession, ServerSessionConfig, Transmit,
};
use orrery_row::wire::{EVENT_HANDLE, WireLayout};
use orrery_row::{ModuleSchema, Value, decode_args, encode_row};

pub const NPC: u32 = 0;
pub const HIT: u32 = 1;

/// The demo module's schema, as the server would serve it.
pub fn schema_json() -> &'static str {
    r#"{
      "name": "demo",
      "tables": [
        {"id": 0, "name": "npc", "rust_type": "Npc",
         "columns": [
           {"name": "id", "type": {"kind": "u64"}, "auto_inc": false},
           {"name": "name", "type": {"kind": "string"}, "auto_inc": false},
           {"name": "pos", "type": {"kind": "vec2"}, "auto_inc": false, "quantize": 0.01},
           {"name": "hp", "type": {"kind": "i32"}, "auto_inc": false}
         ],
         "primary_key": 0,
         "indexes": [{"column": "id", "kind": "primary"},
                     {"column": "pos", "kind": "spatial", "cell": 25.0}],
         "visibility": {"kind": "public"}, "durability": "durable", "event": false},
        {"id": 1, "name": "hit", "rust_type": "Hit",
         "columns": [
           {"name": "id", "type": {"kind": "u64"}, "auto_inc": true},
           {"name": "target", "type": {"kind": "u64"}, "auto_inc": false},
           {"name": "dmg", "type": {"kind": "i32"}, "auto_inc": false}
         ],
         "primary_key": 0,
         "indexes": [{"column": "id", "kind": "primary"}],
         "visibility": {"kind": "public"}, "durability": "transient", "event": true}
      ],
      "reducers": [
        {"name": "init", "kind": "init", "params": []},
        {"name": "spawn_npc", "kind": "user", "params": [
          {"name": "id", "type": {"kind": "u64"}},
          {"name": "name", "type": {"kind": "string"}},
          {"name": "pos", "type": {"kind": "vec2"}},
          {"name": "hp", "type": {"kind": "i32"}}]},
        {"name": "move_npc", "kind": "user", "params": [
          {"name": "id", "type": {"kind": "u64"}},
          {"name": "pos", "type": {"kind": "vec2"}}]},
        {"name": "damage", "kind": "user", "params": [
          {"name": "id", "type": {"kind": "u64"}},
          {"name": "dmg", "type": {"kind": "i32"}}]},
        {"name": "kill_npc", "kind": "user", "params": [{"name": "id", "type": {"kind": "u64"}}]},
        {"name": "fail", "kind": "user", "params": []},
        {"name": "kick_me", "kind": "user", "params": []}
      ]
    }"#
}

pub fn schema() -> Arc<ModuleSchema> {
    Arc::new(ModuleSchema::from_json_str(schema_json()).expect("demo schema"))
}

/// A row the fake server holds, in exact and wire form.
struct Held {
    values: Vec<Value>,
    wire: Vec<u8>,
    bounds: Vec<Range<u32>>,
}

/// The row handles a client was given for npcs (the published-row format's per-connection
/// handles: lowest free first, freed ones reused last-in first-out).
#[derive(Default)]
struct NpcHandles {
    by_id: BTreeMap<u64, u32>,
    free: Vec<u32>,
    next: u32,
}

impl NpcHandles {
    fn give(&mut self, id: u64) -> u32 {
        let handle = self.free.pop().unwrap_or_else(|| {
            self.next += 1;
            self.next - 1
        });
        self.by_id.insert(id, handle);
        handle
    }

    fn take_back(&mut self, id: u64) -> Option<u32> {
        let handle = self.by_id.remove(&id)?;
        self.free.push(handle);
        Some(handle)
    }
}

/// Fake game logic over a `ServerSession`.
pub struct FakeGame {
    pub schema: Arc<ModuleSchema>,
    layouts: Vec<WireLayout>,
    npcs: BTreeMap<u64, Held>,
    subscribers: BTreeMap<ConnectionId, BTreeSet<u32>>,
    /// Each npc subscriber's handles.
    handles: BTreeMap<ConnectionId, NpcHandles>,
    next_hit: u64,
    pub tick: u64,
    /// Every call: (client, reducer, decoded arguments or error).
    pub calls: Vec<(ConnectionId, String, Result<Vec<Value>, String>)>,
    pub connected: Vec<ConnectionId>,
    pub disconnected: Vec<(ConnectionId, String)>,
}

impl Default for FakeGame {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeGame {
    pub fn new() -> Self {
        let schema = schema();
        FakeGame {
            layouts: schema.tables.iter().map(WireLayout::new).collect(),
            schema,
            npcs: BTreeMap::new(),
            subscribers: BTreeMap::new(),
            handles: BTreeMap::new(),
            next_hit: 1,
            tick: 1,
            calls: Vec::new(),
            connected: Vec::new(),
            disconnected: Vec::new(),
        }
    }

    /// The npcs the server holds: id → values (exact, before quantization).
    pub fn npcs(&self) -> BTreeMap<u64, Vec<Value>> {
        self.npcs
            .iter()
            .map(|(id, h)| (*id, h.values.clone()))
            .collect()
    }

    fn encode(&self, table: u32, values: &[Value]) -> (Vec<u8>, Vec<u8>, Vec<Range<u32>>) {
        let t = &self.schema.tables[table as usize];
        let exact = encode_row(t, values).expect("row matches its table");
        let (mut wire, mut bounds) = (Vec::new(), Vec::new());
        self.layouts[table as usize]
            .encode_row(&exact, &mut wire, &mut bounds)
            .expect("wire form");
        let pk = values[t.primary_key]
            .to_bytes(&t.columns[t.primary_key].ty)
            .expect("pk");
        (pk, wire, bounds)
    }

    fn pk(id: u64) -> Vec<u8> {
        Value::Unsigned(id)
            .to_bytes(&orrery_row::TypeDesc::U64)
            .expect("u64")
    }

    fn all_npc_upserts(&mut self, client: ConnectionId) -> Vec<u8> {
        let mut payload = Vec::new();
        let handles = self.handles.entry(client).or_default();
        for (id, h) in &self.npcs {
            let handle = handles.give(*id);
            self.layouts[NPC as usize].upsert_record(handle, &Self::pk(*id), &h.wire, &mut payload);
        }
        payload
    }

    fn publish(&self, server: &mut ServerSession, table: u32, payload: Vec<u8>) {
        if payload.is_empty() {
            return;
        }
        let msg = ServerMessage::TableUpdate {
            table_id: table,
            tick: self.tick,
            rows: payload,
        };
        for (client, tables) in &self.subscribers {
            if tables.contains(&table) {
                let _ = server.send(*client, &msg);
            }
        }
    }

    /// Sends each npc subscriber the payload `records` writes with its handles.
    fn publish_npc(
        &mut self,
        server: &mut ServerSession,
        mut records: impl FnMut(&WireLayout, &mut NpcHandles, &mut Vec<u8>),
    ) {
        for (client, tables) in &self.subscribers {
            if !tables.contains(&NPC) {
                continue;
            }
            let mut payload = Vec::new();
            records(
                &self.layouts[NPC as usize],
                self.handles.entry(*client).or_default(),
                &mut payload,
            );
            if !payload.is_empty() {
                let msg = ServerMessage::TableUpdate {
                    table_id: NPC,
                    tick: self.tick,
                    rows: payload,
                };
                let _ = server.send(*client, &msg);
            }
        }
    }

    fn upsert_npc(&mut self, server: &mut ServerSession, values: Vec<Value>) {
        let id = values[0].as_u64().expect("id");
        let (pk, wire, bounds) = self.encode(NPC, &values);
        let old = self
            .npcs
            .get(&id)
            .map(|h| (h.wire.clone(), h.bounds.clone()));
        self.publish_npc(server, |layout, handles, payload| {
            match (&old, handles.by_id.get(&id)) {
                (Some((old_wire, old_bounds)), Some(&handle)) => {
                    layout.delta_record(handle, (old_wire, old_bounds), (&wire, &bounds), payload);
                }
                _ => layout.upsert_record(handles.give(id), &pk, &wire, payload),
            }
        });
        self.npcs.insert(
            id,
            Held {
                values,
                wire,
                bounds,
            },
        );
    }

    fn run(
        &mut self,
        server: &mut ServerSession,
        client: ConnectionId,
        reducer: &str,
        args: &[Value],
    ) -> Result<(), String> {
        match reducer {
            "spawn_npc" => {
                let id = args[0].as_u64().unwrap_or(0);
                if self.npcs.contains_key(&id) {
                    return Err(format!("npc {id} already exists"));
                }
                self.upsert_npc(server, args.to_vec());
                Ok(())
            }
            "move_npc" => {
                let id = args[0].as_u64().unwrap_or(0);
                let mut values = self
                    .npcs
                    .get(&id)
                    .ok_or(format!("no npc {id}"))?
                    .values
                    .clone();
                values[2] = args[1].clone();
                self.upsert_npc(server, values);
                Ok(())
            }
            "damage" => {
                let id = args[0].as_u64().unwrap_or(0);
                let dmg = args[1].as_i64().unwrap_or(0);
                let mut values = self
                    .npcs
                    .get(&id)
                    .ok_or(format!("no npc {id}"))?
                    .values
                    .clone();
                values[3] = Value::Signed(values[3].as_i64().unwrap_or(0) - dmg);
                self.upsert_npc(server, values);
                // An event row: published once, never stored.
                let hit = vec![
                    Value::Unsigned(self.next_hit),
                    Value::Unsigned(id),
                    Value::Signed(dmg),
                ];
                self.next_hit += 1;
                let (pk, wire, _) = self.encode(HIT, &hit);
                let mut payload = Vec::new();
                self.layouts[HIT as usize].upsert_record(EVENT_HANDLE, &pk, &wire, &mut payload);
                self.publish(server, HIT, payload);
                Ok(())
            }
            "kill_npc" => {
                let id = args[0].as_u64().unwrap_or(0);
                self.npcs.remove(&id).ok_or(format!("no npc {id}"))?;
                self.publish_npc(server, |_, handles, payload| {
                    if let Some(handle) = handles.take_back(id) {
                        WireLayout::delete_record(handle, payload);
                    }
                });
                Ok(())
            }
            "fail" => Err("insufficient funds".into()),
            "kick_me" => {
                server.disconnect(client, "kicked: asked for it");
                Ok(())
            }
            other => Err(format!("reducer `{other}` is not callable")),
        }
    }

    /// Handles the server's events (call between network steps).
    pub fn handle(&mut self, server: &mut ServerSession) {
        while let Some(event) = server.poll_event() {
            match event {
                ServerEvent::Connected { client, .. } => self.connected.push(client),
                ServerEvent::Disconnected { client, reason } => {
                    self.subscribers.remove(&client);
                    self.handles.remove(&client);
                    self.disconnected.push((client, reason.to_string()));
                }
                ServerEvent::Rejected { .. } => {}
                ServerEvent::Message { client, msg, .. } => match msg {
                    ClientMessage::CallReducer {
                        request_id,
                        reducer,
                        args,
                        ..
                    } => {
                        let decoded = match self.schema.reducer(&reducer) {
                            None => Err(format!("no reducer `{reducer}`")),
                            Some(r) => decode_args(&r.params, &args)
                                .map_err(|e| format!("invalid arguments: {e}")),
                        };
                        self.calls.push((client, reducer.clone(), decoded.clone()));
                        let result =
                            decoded.and_then(|values| self.run(server, client, &reducer, &values));
                        self.tick += 1;
                        let reply = ServerMessage::ReducerReply {
                            request_id,
                            tick: self.tick,
                            result,
                            durable: false,
                        };
                        let _ = server.send(client, &reply);
                    }
                    ClientMessage::Subscribe { query_id, sql } => {
                        let table = match sql.trim() {
                            "SELECT * FROM npc" => Some(NPC),
                            "SELECT * FROM hit" => Some(HIT),
                            _ => None,
                        };
                        let msg = match table {
                            Some(table) => {
                                self.subscribers.entry(client).or_default().insert(table);
                                let rows = if table == NPC {
                                    self.all_npc_upserts(client)
                                } else {
                                    Vec::new()
                                };
                                ServerMessage::SubscriptionApplied {
                                    query_id,
                                    tick: self.tick,
                                    tables: vec![TableRows {
                                        table_id: table,
                                        rows,
                                    }],
                                }
                            }
                            None => ServerMessage::SubscriptionError {
                                query_id,
                                message: format!("unsupported query: {sql}"),
                            },
                        };
                        let _ = server.send(client, &msg);
                    }
                    // This fake publishes no durability: confirmed reads change nothing.
                    ClientMessage::ConfirmedReads { .. } => {}
                    ClientMessage::Unsubscribe { .. } => {
                        // Everything this fake serves is one subscription per table: drop
                        // npc and tell the client its rows are gone.
                        if let Some(tables) = self.subscribers.get_mut(&client)
                            && tables.remove(&NPC)
                        {
                            let mut payload = Vec::new();
                            let mut handles = self.handles.remove(&client).unwrap_or_default();
                            for id in self.npcs.keys() {
                                if let Some(handle) = handles.take_back(*id) {
                                    WireLayout::delete_record(handle, &mut payload);
                                }
                            }
                            if !payload.is_empty() {
                                let _ = server.send(
                                    client,
                                    &ServerMessage::TableUpdate {
                                        table_id: NPC,
                                        tick: self.tick,
                                        rows: payload,
                                    },
                                );
                            }
                        }
                    }
                },
            }
        }
    }
}

/// A client core in the simulated network, with the events it produced.
pub struct SimCore {
    pub core: ClientCore,
    pub addr: SocketAddr,
    pub events: Vec<Event>,
}

/// One fake server and N client cores over a seeded lossy network, on a virtual clock.
pub struct SimWorld {
    pub net: Network,
    pub server: ServerSession,
    pub server_addr: SocketAddr,
    pub issuer: ConnectTokenIssuer,
    pub game: FakeGame,
    pub clients: Vec<SimCore>,
    pub conditions: LinkConditions,
    pub now: Duration,
    buf: Vec<Transmit>,
}

impl SimWorld {
    pub fn new(seed: u64, conditions: LinkConditions) -> Self {
        let server_addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)), 40_000);
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&seed.to_le_bytes());
        let key = PrivateKey::from_bytes(key);
        let now = SIM_EPOCH;
        let server = ServerSession::new(
            ServerSessionConfig::new(key.clone(), DEFAULT_PROTOCOL_ID, vec![server_addr]),
            now,
        )
        .expect("server session");
        SimWorld {
            net: Network::new(seed),
            server,
            server_addr,
            issuer: ConnectTokenIssuer::new(key, DEFAULT_PROTOCOL_ID, vec![server_addr]),
            game: FakeGame::new(),
            clients: Vec::new(),
            conditions,
            now,
            buf: Vec::new(),
        }
    }

    /// Adds a client core connecting with a fresh token; returns its index.
    pub fn add_client(&mut self) -> usize {
        let index = self.clients.len();
        let mut identity = [0u8; 32];
        identity[0] = index as u8 + 1;
        let token = self
            .issuer
            .issue(
                &orrery_netcode::Identity(identity),
                ConnectionId(index as u64 + 1),
                self.now,
            )
            .expect("token");
        let core = ClientCore::from_token_bytes(
            self.game.schema.clone(),
            ClientSessionConfig::default(),
            &token.to_bytes(),
            self.now,
        )
        .expect("client core");
        self.clients.push(SimCore {
            core,
            addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 1, index as u8 + 1)), 5000),
            events: Vec::new(),
        });
        index
    }

    /// Advances the virtual clock by `dt`: delivers due datagrams, runs the game, updates
    /// everyone and puts their datagrams on the network.
    pub fn step(&mut self, dt: Duration) {
        let until = self.now + dt;
        while let Some((at, from, to, bytes)) = self.net.pop_due(until) {
            if to == self.server_addr {
                self.server.handle_datagram(at, from, &bytes);
            } else if let Some(c) = self.clients.iter_mut().find(|c| c.addr == to) {
                c.core.handle_datagram(at, from, &bytes);
            }
        }
        self.now = until;
        self.game.handle(&mut self.server);
        self.server.update(self.now);
        self.server.drain_transmits(&mut self.buf);
        for t in self.buf.drain(..) {
            self.net
                .send(self.now, self.server_addr, t, &self.conditions);
        }
        for c in &mut self.clients {
            c.core.update(self.now);
            while let Some(e) = c.core.poll_event() {
                c.events.push(e);
            }
            c.core.drain_transmits(&mut self.buf);
            for t in self.buf.drain(..) {
                self.net.send(self.now, c.addr, t, &self.conditions);
            }
        }
    }

    /// Steps (20 ms) until `done` holds, at most `max_steps` times; returns whether it held.
    pub fn run_until(&mut self, max_steps: usize, mut done: impl FnMut(&SimWorld) -> bool) -> bool {
        for _ in 0..max_steps {
            if done(self) {
                return true;
            }
            self.step(Duration::from_millis(20));
        }
        done(self)
    }

    /// Steps until client `c` is connected.
    pub fn connect(&mut self, c: usize) {
        assert!(
            self.run_until(500, |w| w.clients[c].core.is_connected()),
            "client {c} did not connect"
        );
    }
}
