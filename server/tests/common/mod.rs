//! Shared test support: a small module and an in-memory network of netcode clients around a
//! `ServerCore` on a virtual clock.

#![allow(dead_code, missing_docs)]

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use orrery_engine::SystemsExecutor;
use orrery_engine::codec::OrreryType as _;
use orrery_engine::glam::Vec2;
use orrery_engine::prelude::*;
use orrery_netcode::sim::{LinkConditions, Network, SIM_EPOCH};
use orrery_netcode::{
    ClientEvent, ClientSession, ClientSessionConfig, ConnectToken, ConnectTokenIssuer,
    DEFAULT_PROTOCOL_ID, PrivateKey, Transmit,
};
use orrery_server::{ServerConfig, ServerCore};

// ---------------------------------------------------------------------------------------------
// The test module.

/// One counter per identity.
#[table(name = counter, public)]
#[derive(Clone, Debug, PartialEq)]
pub struct Counter {
    #[primary_key]
    pub owner: Identity,
    pub value: u64,
    pub calls: u64,
}

/// Notes anyone can subscribe to.
#[table(name = note, public)]
#[derive(Clone, Debug, PartialEq)]
pub struct Note {
    #[primary_key]
    #[auto_inc]
    pub id: u64,
    #[index(btree)]
    pub level: u32,
    pub text: String,
}

/// Who is online (private).
#[table(name = presence)]
#[derive(Clone, Debug, PartialEq)]
pub struct Presence {
    #[primary_key]
    pub identity: Identity,
    pub online: bool,
    pub connects: u32,
}

/// One walker per identity, for spatial interest: keyed by identity and quantized to the
/// centimetre on the wire, as a game's avatar table is.
#[table(name = mob, public)]
#[derive(Clone, Debug, PartialEq)]
pub struct Mob {
    #[primary_key]
    pub owner: Identity,
    #[spatial(cell = 25.0)]
    #[quantize(0.01)]
    pub pos: Vec2,
}

/// Identities starting with these bytes are refused by `client_connected`.
pub const BANNED: &[u8; 8] = b"BANNED!!";

#[reducer]
pub fn add(ctx: &mut ReducerContext, n: u64) -> Result<(), String> {
    let owner = ctx.sender;
    match ctx.db.counter().owner().find(&owner) {
        Some(c) => {
            ctx.db.counter().owner().update(Counter {
                value: c.value + n,
                calls: c.calls + 1,
                ..c
            })?;
        }
        None => {
            ctx.db.counter().insert(Counter {
                owner,
                value: n,
                calls: 1,
            })?;
        }
    }
    Ok(())
}

/// Fails unless the caller's counter holds `value` (checks state over HTTP).
#[reducer]
pub fn expect(ctx: &mut ReducerContext, value: u64) -> Result<(), String> {
    let owner = ctx.sender;
    let got = ctx.db.counter().owner().find(&owner).map_or(0, |c| c.value);
    if got == value {
        Ok(())
    } else {
        Err(format!("counter is {got}, expected {value}"))
    }
}

/// A new world starts with one note.
#[reducer(init)]
pub fn init(ctx: &mut ReducerContext) -> Result<(), String> {
    ctx.db.note().insert(Note {
        id: 0,
        level: 0,
        text: "init".into(),
    })?;
    Ok(())
}

/// Fails unless there are exactly `n` notes.
#[reducer]
pub fn notes_are(ctx: &mut ReducerContext, n: u64) -> Result<(), String> {
    let got = ctx.db.note().count();
    if got == n {
        Ok(())
    } else {
        Err(format!("{got} notes, expected {n}"))
    }
}

/// Moves the caller's walker to `(x, y)` and centres its spatial subscriptions there.
#[reducer]
pub fn walk(ctx: &mut ReducerContext, x: f32, y: f32) -> Result<(), String> {
    let owner = ctx.sender;
    let pos = Vec2::new(x, y);
    if ctx.db.mob().owner().find(&owner).is_some() {
        ctx.db.mob().owner().update(Mob { owner, pos })?;
    } else {
        ctx.db.mob().insert(Mob { owner, pos })?;
    }
    if let Some(connection) = ctx.connection_id {
        ctx.set_focus(connection, pos);
    }
    Ok(())
}

#[reducer]
pub fn fail(_ctx: &mut ReducerContext, message: String) -> Result<(), String> {
    Err(message)
}

#[reducer]
pub fn note(ctx: &mut ReducerContext, level: u32, text: String) -> Result<(), String> {
    ctx.db.note().insert(Note { id: 0, level, text })?;
    Ok(())
}

#[reducer(client_connected)]
pub fn connected(ctx: &mut ReducerContext) -> Result<(), String> {
    let identity = ctx.sender;
    if identity.0.starts_with(BANNED) {
        return Err("this identity is banned".into());
    }
    let connects = ctx
        .db
        .presence()
        .identity()
        .find(&identity)
        .map_or(0, |p| p.connects);
    let row = Presence {
        identity,
        online: true,
        connects: connects + 1,
    };
    if connects == 0 {
        ctx.db.presence().insert(row)?;
    } else {
        ctx.db.presence().identity().update(row)?;
    }
    Ok(())
}

#[reducer(client_disconnected)]
pub fn disconnected(ctx: &mut ReducerContext) -> Result<(), String> {
    let identity = ctx.sender;
    if let Some(p) = ctx.db.presence().identity().find(&identity) {
        ctx.db
            .presence()
            .identity()
            .update(Presence { online: false, ..p })?;
    }
    Ok(())
}

/// The tables and reducers every server test module has.
fn base_module(name: &str) -> orrery_engine::ModuleBuilder {
    Module::builder(name)
        .table::<Counter>()
        .table::<Note>()
        .table::<Presence>()
        .table::<Mob>()
        .reducers(reducers![
            init,
            add,
            expect,
            notes_are,
            walk,
            fail,
            note,
            connected,
            disconnected
        ])
}

pub fn module() -> Module {
    base_module("server-test").build().expect("valid module")
}

pub fn engine() -> Engine {
    Engine::new(
        module(),
        EngineConfig {
            executor: SystemsExecutor::SingleThreaded,
            ..Default::default()
        },
    )
    .expect("engine")
}

/// Row-format arguments of `add(n)`.
pub fn add_args(n: u64) -> Vec<u8> {
    let mut out = Vec::new();
    n.encode(&mut out);
    out
}

/// Row-format arguments of `walk(x, y)`.
pub fn walk_args(x: f32, y: f32) -> Vec<u8> {
    let mut out = Vec::new();
    x.encode(&mut out);
    y.encode(&mut out);
    out
}

/// Row-format arguments of `fail(message)`.
pub fn string_args(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    s.to_owned().encode(&mut out);
    out
}

/// Row-format arguments of `note(level, text)`.
pub fn note_args(level: u32, text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    level.encode(&mut out);
    text.to_owned().encode(&mut out);
    out
}

pub fn identity(i: usize) -> [u8; 32] {
    let mut id = [0u8; 32];
    id[1..9].copy_from_slice(&(i as u64 + 1).to_le_bytes());
    id[31] = 0x5e;
    id
}

// ---------------------------------------------------------------------------------------------
// The simulated network.

pub struct SimClient {
    pub session: ClientSession,
    pub addr: SocketAddr,
    /// A paused client neither updates nor receives: a client that stopped reading.
    pub paused: bool,
    pub events: Vec<ClientEvent>,
}

pub struct Sim {
    pub core: ServerCore,
    pub server_addr: SocketAddr,
    pub issuer: ConnectTokenIssuer,
    pub net: Network,
    pub conditions: LinkConditions,
    pub clients: Vec<SimClient>,
    pub now: Duration,
    index_of: HashMap<SocketAddr, usize>,
    buf: Vec<Transmit>,
}

impl Sim {
    pub fn new(
        seed: u64,
        conditions: LinkConditions,
        configure: impl FnOnce(&mut ServerConfig),
    ) -> Self {
        Self::with_engine(seed, conditions, engine(), true, configure)
    }

    pub fn with_engine(
        seed: u64,
        conditions: LinkConditions,
        engine: Engine,
        fresh: bool,
        configure: impl FnOnce(&mut ServerConfig),
    ) -> Self {
        let server_addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)), 40_000);
        let mut config = ServerConfig::for_tests("unused");
        configure(&mut config);
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&seed.to_le_bytes());
        let key = PrivateKey::from_bytes(key);
        let now = SIM_EPOCH;
        let core = ServerCore::new(engine, fresh, &config, key.clone(), vec![server_addr], now)
            .expect("server core");
        let mut issuer = ConnectTokenIssuer::new(key, DEFAULT_PROTOCOL_ID, vec![server_addr]);
        issuer.expire_after = Duration::from_secs(60);
        Sim {
            core,
            server_addr,
            issuer,
            net: Network::new(seed),
            conditions,
            clients: Vec::new(),
            now,
            index_of: HashMap::new(),
            buf: Vec::new(),
        }
    }

    pub fn client_addr(index: usize) -> SocketAddr {
        let i = index as u32 + 1;
        SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(
                127,
                1 + (i >> 16) as u8,
                (i >> 8) as u8,
                i as u8,
            )),
            5_000,
        )
    }

    pub fn token(&self, identity: [u8; 32], client_id: u64) -> ConnectToken {
        self.issuer
            .issue(
                &orrery_engine::Identity(identity),
                orrery_engine::ConnectionId(client_id),
                self.now,
            )
            .expect("token")
    }

    /// Adds a client with identity `identity(index)` and client id `index + 1`.
    pub fn add_client(&mut self) -> usize {
        let index = self.clients.len();
        let token = self.token(identity(index), index as u64 + 1);
        self.add_client_with_token(token)
    }

    pub fn add_client_with_token(&mut self, token: ConnectToken) -> usize {
        let index = self.clients.len();
        let addr = Self::client_addr(index);
        let session = ClientSession::new(ClientSessionConfig::default(), token, self.now)
            .expect("client session");
        self.clients.push(SimClient {
            session,
            addr,
            paused: false,
            events: Vec::new(),
        });
        self.index_of.insert(addr, index);
        index
    }

    /// Advances the virtual clock by `dt` in steps of at most 10 ms.
    pub fn step(&mut self, dt: Duration) {
        let end = self.now + dt;
        while self.now < end {
            let d = (end - self.now).min(Duration::from_millis(10));
            self.step_once(d);
        }
    }

    /// Advances the virtual clock by `dt` at once: delivers due datagrams, polls the server
    /// (ticks), updates the clients, and puts every datagram on the network.
    pub fn step_once(&mut self, dt: Duration) {
        let until = self.now + dt;
        while let Some((at, from, to, bytes)) = self.net.pop_due(until) {
            if to == self.server_addr {
                self.core.handle_datagram(at, from, &bytes);
            } else if let Some(&i) = self.index_of.get(&to)
                && !self.clients[i].paused
            {
                self.clients[i].session.handle_datagram(at, from, &bytes);
            }
        }
        self.now = until;
        self.core.poll(self.now);
        let mut buf = std::mem::take(&mut self.buf);
        self.core.drain_transmits(&mut buf);
        for t in buf.drain(..) {
            self.net
                .send(self.now, self.server_addr, t, &self.conditions);
        }
        for c in &mut self.clients {
            if c.paused {
                continue;
            }
            while let Some(ev) = c.session.poll_event() {
                c.events.push(ev);
            }
            c.session.update(self.now);
            c.session.drain_transmits(&mut buf);
            for t in buf.drain(..) {
                self.net.send(self.now, c.addr, t, &self.conditions);
            }
        }
        self.buf = buf;
    }

    /// Steps until `done` holds, at most `limit` of virtual time.
    pub fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&Sim) -> bool) -> bool {
        let end = self.now + limit;
        while self.now < end {
            if done(self) {
                return true;
            }
            self.step(Duration::from_millis(10));
        }
        done(self)
    }

    pub fn connected(&self, i: usize) -> bool {
        self.clients[i].session.is_connected()
    }
}

/// Parses Prometheus text exposition into `name{labels}` → value.
pub fn parse_metrics(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// A larger module for the mirror convergence test (`tests/mirror.rs`): the tables above plus an
// owner-visible table and quantized spatial NPCs, with reducers that update and delete.

/// Items only their owner sees (`owner = owner`), with a quantized column.
#[table(name = item, owner = owner)]
#[derive(Clone, Debug, PartialEq)]
pub struct Item {
    #[primary_key]
    #[auto_inc]
    pub id: u64,
    #[index(btree)]
    pub owner: Identity,
    pub kind: u32,
    #[quantize(0.25)]
    pub weight: f32,
}

/// Non-player walkers: spatial, quantized on the wire, and with a column queries filter on.
#[table(name = npc, public)]
#[derive(Clone, Debug, PartialEq)]
pub struct Npc {
    #[primary_key]
    pub id: u64,
    #[spatial(cell = 25.0)]
    #[quantize(0.01)]
    pub pos: Vec2,
    pub hp: i32,
}

/// Sets a note's level and text (no-op for an unknown id).
#[reducer]
pub fn note_set(ctx: &mut ReducerContext, id: u64, level: u32, text: String) -> Result<(), String> {
    if ctx.db.note().id().find(&id).is_some() {
        ctx.db.note().id().update(Note { id, level, text })?;
    }
    Ok(())
}

/// Deletes a note (no-op for an unknown id).
#[reducer]
pub fn note_del(ctx: &mut ReducerContext, id: u64) -> Result<(), String> {
    ctx.db.note().id().delete(&id);
    Ok(())
}

/// Inserts or replaces an NPC.
#[reducer]
pub fn npc_put(ctx: &mut ReducerContext, id: u64, x: f32, y: f32, hp: i32) -> Result<(), String> {
    let row = Npc {
        id,
        pos: Vec2::new(x, y),
        hp,
    };
    if ctx.db.npc().id().find(&id).is_some() {
        ctx.db.npc().id().update(row)?;
    } else {
        ctx.db.npc().insert(row)?;
    }
    Ok(())
}

/// Moves an NPC, keeping its hit points (no-op for an unknown id).
#[reducer]
pub fn npc_move(ctx: &mut ReducerContext, id: u64, x: f32, y: f32) -> Result<(), String> {
    if let Some(npc) = ctx.db.npc().id().find(&id) {
        ctx.db.npc().id().update(Npc {
            pos: Vec2::new(x, y),
            ..npc
        })?;
    }
    Ok(())
}

/// Deletes an NPC (no-op for an unknown id).
#[reducer]
pub fn npc_del(ctx: &mut ReducerContext, id: u64) -> Result<(), String> {
    ctx.db.npc().id().delete(&id);
    Ok(())
}

/// A new item owned by the caller.
#[reducer]
pub fn item_put(ctx: &mut ReducerContext, kind: u32, weight: f32) -> Result<(), String> {
    ctx.db.item().insert(Item {
        id: 0,
        owner: ctx.sender,
        kind,
        weight,
    })?;
    Ok(())
}

/// Changes an item's kind and weight (no-op for an unknown id).
#[reducer]
pub fn item_set(ctx: &mut ReducerContext, id: u64, kind: u32, weight: f32) -> Result<(), String> {
    if let Some(item) = ctx.db.item().id().find(&id) {
        ctx.db.item().id().update(Item {
            kind,
            weight,
            ..item
        })?;
    }
    Ok(())
}

/// Hands an item to another identity (no-op for an unknown id): it leaves one owner's view and
/// enters another's.
#[reducer]
pub fn item_give(ctx: &mut ReducerContext, id: u64, to: Identity) -> Result<(), String> {
    if let Some(item) = ctx.db.item().id().find(&id) {
        ctx.db.item().id().update(Item { owner: to, ..item })?;
    }
    Ok(())
}

/// Deletes an item (no-op for an unknown id).
#[reducer]
pub fn item_del(ctx: &mut ReducerContext, id: u64) -> Result<(), String> {
    ctx.db.item().id().delete(&id);
    Ok(())
}

/// [`module`] plus `item` (owner-visible) and `npc` (quantized, spatial) and their reducers.
pub fn mirror_module() -> Module {
    base_module("server-mirror-test")
        .table::<Item>()
        .table::<Npc>()
        .reducers(reducers![
            note_set, note_del, npc_put, npc_move, npc_del, item_put, item_set, item_give, item_del
        ])
        .build()
        .expect("valid module")
}

/// An in-memory engine running [`mirror_module`].
pub fn mirror_engine() -> Engine {
    Engine::new(
        mirror_module(),
        EngineConfig {
            executor: SystemsExecutor::SingleThreaded,
            ..Default::default()
        },
    )
    .expect("engine")
}
