//! A seeded network simulator and an in-memory harness: one server session, N client
//! sessions, datagrams moved between them on a virtual clock with loss, latency, jitter,
//! duplication and reordering. No sockets, no real time, no sleeps; for a given seed and the
//! same calls, the same datagrams are lost and delayed.
//!
//! ```
//! use std::time::Duration;
//! use orrery_netcode::sim::{Harness, LinkConditions};
//! use orrery_netcode::{ClientEvent, ClientMessage, ServerEvent, ServerMessage};
//!
//! let mut h = Harness::new(7, LinkConditions::lossy(0.1, Duration::from_millis(20), Duration::from_millis(30)));
//! let c = h.add_client();
//! h.clients[c].session.send(&ClientMessage::CallReducer {
//!     request_id: 1, reducer: "hello".into(), args: vec![], durable: false,
//! }).unwrap();
//! let mut replied = false;
//! for _ in 0..200 {
//!     h.step(Duration::from_millis(20));
//!     while let Some(ev) = h.server.poll_event() {
//!         if let ServerEvent::Message { client, msg: ClientMessage::CallReducer { request_id, .. }, .. } = ev {
//!             let reply = ServerMessage::ReducerReply { request_id, tick: 0, result: Ok(()), durable: false };
//!             h.server.send(client, &reply).unwrap();
//!         }
//!     }
//!     while let Some(ev) = h.clients[c].session.poll_event() {
//!         replied |= matches!(ev, ClientEvent::Message { msg: ServerMessage::ReducerReply { request_id: 1, .. }, .. });
//!     }
//! }
//! assert!(replied);
//! ```

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::client::{ClientSession, ClientSessionConfig};
use crate::server::{ServerSession, ServerSessionConfig};
use crate::token::{ConnectToken, ConnectTokenIssuer, PrivateKey};
use crate::{DEFAULT_PROTOCOL_ID, Transmit};
use orrery_row::{ConnectionId, Identity};

/// How a simulated link treats each datagram.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkConditions {
    /// Probability that a datagram is lost.
    pub loss: f64,
    /// Fixed one-way delay.
    pub latency: Duration,
    /// Extra delay, uniform in `0..=jitter` (reorders datagrams when larger than the gap
    /// between them).
    pub jitter: Duration,
    /// Probability that a datagram is delivered twice (the copy with its own delay).
    pub duplicate: f64,
    /// Probability that a datagram is held back by an extra `latency + jitter`.
    pub reorder: f64,
}

impl LinkConditions {
    /// No loss, no delay.
    pub const PERFECT: Self = Self {
        loss: 0.0,
        latency: Duration::ZERO,
        jitter: Duration::ZERO,
        duplicate: 0.0,
        reorder: 0.0,
    };

    /// Loss with latency and jitter, no duplication or extra reordering.
    pub fn lossy(loss: f64, latency: Duration, jitter: Duration) -> Self {
        Self {
            loss,
            latency,
            jitter,
            ..Self::PERFECT
        }
    }
}

impl Default for LinkConditions {
    fn default() -> Self {
        Self::PERFECT
    }
}

/// Counters of the simulated network.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Datagrams handed to the network.
    pub sent: u64,
    /// Datagrams lost.
    pub lost: u64,
    /// Extra copies delivered.
    pub duplicated: u64,
    /// Datagrams delivered.
    pub delivered: u64,
}

/// A datagram recorded by [`Harness::tap`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Captured {
    /// When it was sent.
    pub at: Duration,
    /// Sender.
    pub from: SocketAddr,
    /// Destination.
    pub to: SocketAddr,
    /// The datagram.
    pub bytes: Vec<u8>,
}

/// A client inside the harness.
#[derive(Debug)]
pub struct SimClient {
    /// The session.
    pub session: ClientSession,
    /// Its simulated address.
    pub addr: SocketAddr,
    /// A paused client neither updates nor receives (datagrams to it are dropped): a client
    /// that stopped reading.
    pub paused: bool,
    /// Overrides the harness conditions for this client's datagrams (both ways).
    pub link: Option<LinkConditions>,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct InFlight {
    at: Duration,
    seq: u64,
    from: SocketAddr,
    to: SocketAddr,
    bytes: Vec<u8>,
}

/// A seeded datagram network between addresses.
#[derive(Debug)]
pub struct Network {
    rng: ChaCha8Rng,
    queue: BinaryHeap<Reverse<InFlight>>,
    seq: u64,
    stats: SimStats,
}

impl Network {
    /// An empty network with a seed.
    pub fn new(seed: u64) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
            queue: BinaryHeap::new(),
            seq: 0,
            stats: SimStats::default(),
        }
    }

    /// Sends a datagram at `now` under `conditions`.
    pub fn send(
        &mut self,
        now: Duration,
        from: SocketAddr,
        t: Transmit,
        conditions: &LinkConditions,
    ) {
        self.stats.sent += 1;
        if self.rng.random::<f64>() < conditions.loss {
            self.stats.lost += 1;
            return;
        }
        let copies = if self.rng.random::<f64>() < conditions.duplicate {
            2
        } else {
            1
        };
        self.stats.duplicated += copies - 1;
        for _ in 0..copies {
            let mut delay = conditions.latency + self.jitter(conditions);
            if self.rng.random::<f64>() < conditions.reorder {
                delay += conditions.latency + conditions.jitter;
            }
            self.seq += 1;
            let bytes = t.bytes.clone();
            self.queue.push(Reverse(InFlight {
                at: now + delay,
                seq: self.seq,
                from,
                to: t.to,
                bytes,
            }));
        }
    }

    fn jitter(&mut self, c: &LinkConditions) -> Duration {
        let j = c.jitter.as_micros() as u64;
        if j == 0 {
            Duration::ZERO
        } else {
            Duration::from_micros(self.rng.random_range(0..=j))
        }
    }

    /// Pops the next datagram due at or before `until`: `(time, from, to, bytes)`.
    pub fn pop_due(
        &mut self,
        until: Duration,
    ) -> Option<(Duration, SocketAddr, SocketAddr, Vec<u8>)> {
        if self.queue.peek().is_some_and(|Reverse(f)| f.at <= until) {
            let Reverse(f) = self.queue.pop()?;
            self.stats.delivered += 1;
            return Some((f.at, f.from, f.to, f.bytes));
        }
        None
    }

    /// Counters.
    pub fn stats(&self) -> SimStats {
        self.stats
    }

    /// Datagrams in flight.
    pub fn in_flight(&self) -> usize {
        self.queue.len()
    }
}

/// One server session and N client sessions over a [`Network`] on a virtual clock.
#[derive(Debug)]
pub struct Harness {
    /// The server.
    pub server: ServerSession,
    /// The server's address.
    pub server_addr: SocketAddr,
    /// Issues tokens for the server.
    pub issuer: ConnectTokenIssuer,
    /// The clients, by index.
    pub clients: Vec<SimClient>,
    /// Conditions for every datagram (unless a client overrides them).
    pub conditions: LinkConditions,
    /// Client configuration used by [`Harness::add_client`].
    pub client_config: ClientSessionConfig,
    /// The network.
    pub net: Network,
    /// Virtual time since the Unix epoch.
    pub now: Duration,
    /// When `Some`, every datagram sent (before loss) is recorded here.
    pub tap: Option<Vec<Captured>>,
    index_of: std::collections::HashMap<SocketAddr, usize>,
    buf: Vec<Transmit>,
}

/// Virtual start time of a harness (2027-01-15, so tokens have realistic timestamps).
pub const SIM_EPOCH: Duration = Duration::from_secs(1_800_000_000);

impl Harness {
    /// A harness with a default server configuration.
    pub fn new(seed: u64, conditions: LinkConditions) -> Self {
        Self::with_config(seed, conditions, |_| {})
    }

    /// A harness whose server configuration `configure` adjusts.
    ///
    /// # Panics
    ///
    /// If the operating system's random source fails (the server's challenge key). The harness
    /// is test machinery; network input never makes it panic.
    pub fn with_config(
        seed: u64,
        conditions: LinkConditions,
        configure: impl FnOnce(&mut ServerSessionConfig),
    ) -> Self {
        let server_addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)), 40_000);
        let key = PrivateKey::from_bytes(derive_key(seed));
        let mut config =
            ServerSessionConfig::new(key.clone(), DEFAULT_PROTOCOL_ID, vec![server_addr]);
        configure(&mut config);
        let now = SIM_EPOCH;
        let issuer = ConnectTokenIssuer::new(key, config.protocol_id, vec![server_addr]);
        let server = match ServerSession::new(config, now) {
            Ok(s) => s,
            Err(e) => panic!("server session: {e}"),
        };
        Self {
            server,
            server_addr,
            issuer,
            clients: Vec::new(),
            conditions,
            client_config: ClientSessionConfig::default(),
            net: Network::new(seed),
            now,
            tap: None,
            index_of: std::collections::HashMap::new(),
            buf: Vec::new(),
        }
    }

    /// The simulated address of client `index`.
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

    /// The identity the harness gives client `index`.
    pub fn identity(index: usize) -> Identity {
        let mut id = [0u8; 32];
        id[..8].copy_from_slice(&(index as u64 + 1).to_le_bytes());
        id[31] = 0x0e;
        Identity(id)
    }

    /// Adds a client with a fresh token (client id `index + 1`) and starts connecting it.
    ///
    /// # Panics
    ///
    /// If the operating system's random source fails (the token's keys).
    pub fn add_client(&mut self) -> usize {
        let index = self.clients.len();
        let token = match self.issuer.issue(
            &Self::identity(index),
            ConnectionId(index as u64 + 1),
            self.now,
        ) {
            Ok(t) => t,
            Err(e) => panic!("issue token: {e}"),
        };
        self.add_client_with_token(token)
    }

    /// Adds a client connecting with `token`.
    ///
    /// # Panics
    ///
    /// If `token` has already expired at the harness's time.
    pub fn add_client_with_token(&mut self, token: ConnectToken) -> usize {
        let index = self.clients.len();
        let addr = Self::client_addr(index);
        let session = match ClientSession::new(self.client_config.clone(), token, self.now) {
            Ok(s) => s,
            Err(e) => panic!("client session: {e}"),
        };
        self.clients.push(SimClient {
            session,
            addr,
            paused: false,
            link: None,
        });
        self.index_of.insert(addr, index);
        index
    }

    /// Injects a raw datagram to the server from `from`, delivered at once.
    pub fn inject(&mut self, from: SocketAddr, bytes: &[u8]) {
        self.server.handle_datagram(self.now, from, bytes);
    }

    /// Advances the clock by `dt`: delivers every datagram due by then (in time order), then
    /// updates the server and every unpaused client and puts their datagrams on the network.
    pub fn step(&mut self, dt: Duration) {
        let until = self.now + dt;
        while let Some((at, from, to, bytes)) = self.net.pop_due(until) {
            if to == self.server_addr {
                self.server.handle_datagram(at, from, &bytes);
            } else if let Some(&i) = self.index_of.get(&to)
                && let Some(c) = self.clients.get_mut(i)
                && !c.paused
            {
                c.session.handle_datagram(at, from, &bytes);
            }
        }
        self.now = until;
        self.server.update(self.now);
        self.flush();
    }

    /// Updates the clients (not the server) and sends everything queued (server included).
    /// Called by [`Harness::step`]; call it after sending to push messages out immediately.
    pub fn flush(&mut self) {
        let now = self.now;
        let mut buf = std::mem::take(&mut self.buf);
        self.server.drain_transmits(&mut buf);
        for t in buf.drain(..) {
            if let Some(tap) = &mut self.tap {
                let bytes = t.bytes.clone();
                tap.push(Captured {
                    at: now,
                    from: self.server_addr,
                    to: t.to,
                    bytes,
                });
            }
            let conditions = self
                .index_of
                .get(&t.to)
                .and_then(|&i| self.clients[i].link)
                .unwrap_or(self.conditions);
            self.net.send(now, self.server_addr, t, &conditions);
        }
        for c in &mut self.clients {
            if c.paused {
                continue;
            }
            c.session.update(now);
            c.session.drain_transmits(&mut buf);
            let conditions = c.link.unwrap_or(self.conditions);
            for t in buf.drain(..) {
                if let Some(tap) = &mut self.tap {
                    tap.push(Captured {
                        at: now,
                        from: c.addr,
                        to: t.to,
                        bytes: t.bytes.clone(),
                    });
                }
                self.net.send(now, c.addr, t, &conditions);
            }
        }
        self.buf = buf;
    }
}

fn derive_key(seed: u64) -> [u8; 32] {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6b65_795f_7365_6564);
    let mut key = [0u8; 32];
    for b in &mut key {
        *b = rng.random();
    }
    key
}
