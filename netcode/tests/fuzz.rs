//! Fuzzing a running server session: random and mutated datagrams from strangers and from
//! spoofed client addresses, and random and mutated reliability-layer packets and envelopes
//! from an authenticated attacker. The server must never panic, and the legitimate clients
//! must stay connected and keep getting replies.
//!
//! CI runs a proptest target and a seeded 100,000-item run; the 1,000,000-item run is
//! `cargo test --release -p orrery-netcode --test fuzz -- --ignored`.

mod common;

use orrery_netcode::{ConnectionId, Identity};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use common::{ClientLog, ServerLog, call, collect, run_until, serve};
use orrery_netcode::sim::{Captured, Harness, LinkConditions};
use orrery_netcode::{ClientMessage, ClientSession, ClientSessionConfig, ClientState, protocol};
use proptest::prelude::*;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

const TICK: Duration = Duration::from_millis(20);
const LEGIT: usize = 3;
const ATTACKERS: usize = 8;

struct Fuzzer {
    h: Harness,
    slog: ServerLog,
    clogs: Vec<ClientLog>,
    corpus: Vec<Captured>,
    /// Valid envelopes to mutate.
    envelopes: Vec<Vec<u8>>,
    /// Authenticated attacker clients (indices into the harness).
    attackers: Vec<usize>,
    /// Items that reached the server as datagrams from strangers or spoofed addresses,
    /// as authenticated reliability-layer packets, and as envelopes of a ready attacker.
    raw_datagrams: u64,
    attacker_packets: u64,
    attacker_envelopes: u64,
    next_client_id: u64,
    /// Items thrown so far: datagrams + attacker payloads + attacker envelopes.
    thrown: u64,
    attacker_sessions: u64,
}

impl Fuzzer {
    fn new(seed: u64) -> Self {
        let mut h = Harness::new(seed, LinkConditions::PERFECT);
        h.tap = Some(Vec::new());
        for _ in 0..LEGIT {
            h.add_client();
        }
        let attackers: Vec<usize> = (0..ATTACKERS).map(|_| h.add_client()).collect();
        let (mut slog, mut clogs) = (ServerLog::default(), Vec::new());
        for (i, c) in h.clients.iter_mut().enumerate() {
            c.session.send(&call(i as u32)).unwrap();
        }
        let ok = run_until(
            &mut h,
            &mut slog,
            &mut clogs,
            TICK,
            Duration::from_secs(5),
            |_, s, c| {
                s.connected.len() == LEGIT + ATTACKERS && c.iter().all(|l| l.replies.len() == 1)
            },
        );
        assert!(ok, "setup connects");
        let corpus = h.tap.take().unwrap_or_default();
        let envelopes = vec![
            bitcode::encode(&call(7)),
            bitcode::encode(&ClientMessage::Subscribe {
                query_id: 3,
                sql: "SELECT * FROM player WHERE x > 3".into(),
            }),
            bitcode::encode(&ClientMessage::Unsubscribe { query_id: 3 }),
            bitcode::encode(&protocol::ClientHello {
                magic: protocol::HELLO_MAGIC,
                protocol_version: 1,
            }),
        ];
        Self {
            h,
            slog,
            clogs,
            corpus,
            envelopes,
            attackers,
            raw_datagrams: 0,
            attacker_packets: 0,
            attacker_envelopes: 0,
            next_client_id: 1000,
            thrown: 0,
            attacker_sessions: ATTACKERS as u64,
        }
    }

    /// Replaces attacker sessions the server threw out.
    fn revive_attackers(&mut self) {
        for &a in &self.attackers {
            if matches!(
                self.h.clients[a].session.state(),
                ClientState::Disconnected(_)
            ) {
                self.next_client_id += 1;
                let token = self
                    .h
                    .issuer
                    .issue(
                        &Identity([0xee; 32]),
                        ConnectionId(self.next_client_id),
                        self.h.now,
                    )
                    .unwrap();
                self.h.clients[a].session =
                    ClientSession::new(ClientSessionConfig::default(), token, self.h.now).unwrap();
                self.attacker_sessions += 1;
            }
        }
    }

    /// A connected attacker, if any.
    fn ready_attacker(&self, rng: &mut ChaCha8Rng) -> Option<usize> {
        let start = rng.random_range(0..self.attackers.len());
        (0..self.attackers.len())
            .map(|k| self.attackers[(start + k) % self.attackers.len()])
            .find(|&a| self.h.clients[a].session.is_connected())
    }

    /// Throws one random or mutated item at the server.
    fn throw(&mut self, rng: &mut ChaCha8Rng) {
        self.thrown += 1;
        let before = self.h.server.stats().datagrams_in;
        let legit_addr = |rng: &mut ChaCha8Rng| Harness::client_addr(rng.random_range(0..LEGIT));
        let stranger = |rng: &mut ChaCha8Rng| {
            SocketAddr::new(
                IpAddr::V4(Ipv4Addr::new(127, 200, rng.random(), rng.random())),
                rng.random_range(1..65535),
            )
        };
        let mut pick = rng.random_range(0..100u32);
        let attacker = if pick >= 85 {
            self.ready_attacker(rng)
        } else {
            None
        };
        if pick >= 85 && attacker.is_none() {
            pick = rng.random_range(0..85u32);
        }
        match (pick, attacker) {
            // Random bytes from a stranger or a spoofed client address.
            (0..25, _) => {
                let len = rng.random_range(0..1500usize);
                let bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                let from = if rng.random() {
                    legit_addr(rng)
                } else {
                    stranger(rng)
                };
                self.h.inject(from, &bytes);
            }
            // Random bytes with a plausible prefix byte (packet type + sequence length).
            (25..40, _) => {
                let len = rng.random_range(1..200usize);
                let mut bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                bytes[0] = rng.random_range(0..7u8) | (rng.random_range(0..16u8) << 4);
                let from = if rng.random() {
                    legit_addr(rng)
                } else {
                    stranger(rng)
                };
                self.h.inject(from, &bytes);
            }
            // Captured real datagrams, mutated, replayed from their sender or elsewhere.
            (40..80, _) => {
                let c = &self.corpus[rng.random_range(0..self.corpus.len())];
                let mut bytes = c.bytes.clone();
                mutate(&mut bytes, rng);
                let from = match rng.random_range(0..3u8) {
                    0 => c.from,
                    1 => legit_addr(rng),
                    _ => stranger(rng),
                };
                self.h.inject(from, &bytes);
            }
            // Connection requests with the right header and garbage token data.
            (80..85, _) | (_, None) => {
                let request = self
                    .corpus
                    .iter()
                    .find(|c| c.bytes.len() == 1078 && c.bytes[0] == 0);
                if let Some(r) = request {
                    let mut bytes = r.bytes.clone();
                    for b in &mut bytes[30 + rng.random_range(0..24usize)..] {
                        if rng.random_range(0..16u8) == 0 {
                            *b = rng.random();
                        }
                    }
                    let from = stranger(rng);
                    self.h.inject(from, &bytes);
                }
            }
            // Authenticated attacker: arbitrary / mutated reliability-layer packets.
            (85..93, Some(a)) => {
                self.attacker_packets += 1;
                let mut payload = match rng.random_range(0..3u8) {
                    0 => vec![0, 1, 0, 0, 1, 0, 3, 1, 2, 3], // a small reliable message
                    1 => vec![2, 1, 0, 5, 0, 2, 0x44, 0xb0], // a slice header
                    _ => (0..rng.random_range(1..64usize))
                        .map(|_| rng.random())
                        .collect(),
                };
                mutate(&mut payload, rng);
                if payload.is_empty() {
                    payload.push(4);
                }
                payload.truncate(1290);
                if rng.random() {
                    // Well-framed bundle around the (mutated) renet packet.
                    let mut framed = (payload.len() as u16).to_le_bytes().to_vec();
                    framed.extend_from_slice(&payload);
                    payload = framed;
                }
                self.h.clients[a].session.send_raw_payload(&payload);
            }
            // Authenticated attacker: random / mutated envelopes on the reliable channel.
            (_, Some(a)) => {
                self.attacker_envelopes += 1;
                let mut env = self.envelopes[rng.random_range(0..self.envelopes.len())].clone();
                if rng.random_range(0..4u8) > 0 {
                    mutate(&mut env, rng);
                } else {
                    env = (0..rng.random_range(0..300usize))
                        .map(|_| rng.random())
                        .collect();
                }
                self.h.clients[a].session.send_raw_unchecked(env);
            }
        }
        self.raw_datagrams += self.h.server.stats().datagrams_in - before;
    }

    /// Advances the network and checks that the legitimate clients are fine.
    fn step(&mut self) {
        self.revive_attackers();
        self.h.step(TICK);
        serve(&mut self.h, &mut self.slog);
        collect(&mut self.h, &mut self.clogs);
        for i in 0..LEGIT {
            assert!(
                self.h.clients[i].session.is_connected(),
                "legit client {i}: {:?}",
                self.clogs[i].disconnected
            );
        }
    }

    /// Every legitimate client makes a call and gets its reply.
    fn round_trip(&mut self, request_id: u32) {
        for i in 0..LEGIT {
            self.h.clients[i].session.send(&call(request_id)).unwrap();
        }
        let ok = run_until(
            &mut self.h,
            &mut self.slog,
            &mut self.clogs,
            TICK,
            Duration::from_secs(5),
            |_, _, c| {
                c[..LEGIT]
                    .iter()
                    .all(|l| l.replies.last() == Some(&request_id))
            },
        );
        assert!(ok, "legit clients answered after {} items", self.thrown);
        for i in 0..LEGIT {
            assert!(self.h.clients[i].session.is_connected());
        }
    }

    fn run(&mut self, seed: u64, items: u64, batch: u64, round_trip_every: u64) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut batches = 0u64;
        while self.thrown < items {
            for _ in 0..batch.min(items - self.thrown) {
                self.throw(&mut rng);
            }
            self.step();
            batches += 1;
            if batches.is_multiple_of(round_trip_every) {
                self.round_trip(1_000 + batches as u32);
            }
        }
        self.round_trip(u32::MAX);
        // Legit clients saw no disconnect; the server only ever disconnected attackers.
        for (client, _) in &self.slog.disconnected {
            assert!(client.0 > LEGIT as u64, "legit {client} was disconnected");
        }
    }
}

fn mutate(bytes: &mut Vec<u8>, rng: &mut ChaCha8Rng) {
    for _ in 0..rng.random_range(1..6u32) {
        match rng.random_range(0..6u32) {
            0 | 1 if !bytes.is_empty() => {
                let i = rng.random_range(0..bytes.len());
                bytes[i] ^= 1 << rng.random_range(0..8u32);
            }
            2 if !bytes.is_empty() => {
                let i = rng.random_range(0..bytes.len());
                bytes[i] = rng.random();
            }
            3 => {
                let keep = rng.random_range(0..=bytes.len());
                bytes.truncate(keep);
            }
            4 => {
                let extra = rng.random_range(1..32usize);
                bytes.extend((0..extra).map(|_| rng.random::<u8>()));
            }
            _ if !bytes.is_empty() => bytes[0] = rng.random(),
            _ => bytes.push(rng.random()),
        }
    }
}

/// Envelope decoders are total: random and mutated bytes give a value or an error.
#[test]
fn envelope_decoders_never_panic() {
    let mut rng = ChaCha8Rng::seed_from_u64(77);
    let f = Fuzzer::new(1);
    for _ in 0..20_000 {
        let mut b = f.envelopes[rng.random_range(0..f.envelopes.len())].clone();
        mutate(&mut b, &mut rng);
        let _ = protocol::decode_client(&b, 64 * 1024);
        let _ = protocol::decode_server(&b, 64 * 1024);
        let _ = protocol::decode_client_hello(&b);
        let _ = protocol::decode_server_hello(&b);
        let _ = orrery_netcode::ConnectToken::from_bytes(&b);
    }
}

#[test]
fn seeded_fuzz_run_ci_sized() {
    let mut f = Fuzzer::new(2);
    f.run(2, 100_000, 250, 20);
    assert!(
        f.attacker_sessions > 1,
        "the attacker was thrown out and came back"
    );
    assert!(
        f.h.server.stats().dropped_malformed > 0 && f.h.server.stats().dropped_unauthenticated > 0
    );
}

/// The issue's 1,000,000-item run (a few minutes in release).
#[test]
#[ignore = "long: run with --release -- --ignored"]
#[allow(clippy::print_stderr)] // reports the run's numbers
fn fuzz_one_million() {
    let start = std::time::Instant::now();
    // ORRERY_FUZZ_SEED picks another run.
    let seed = std::env::var("ORRERY_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let mut f = Fuzzer::new(seed);
    f.run(seed, 1_000_000, 500, 100);
    let s = f.h.server.stats().clone();
    // And a million mutated envelopes straight into the decoders.
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let mut decoded = 0u64;
    for _ in 0..1_000_000 {
        let mut b = f.envelopes[rng.random_range(0..f.envelopes.len())].clone();
        mutate(&mut b, &mut rng);
        decoded += u64::from(protocol::decode_client(&b, 64 * 1024).is_ok());
        let _ = protocol::decode_server(&b, 64 * 1024);
    }
    eprintln!("fuzz: 1000000 mutated envelopes decoded without panic ({decoded} still valid)");
    eprintln!(
        "fuzz: {} items in {:.1?}: {} raw datagrams, {} authenticated renet packets, {} envelopes; \
         attacker sessions {}; server stats {s:?}",
        f.thrown,
        start.elapsed(),
        f.raw_datagrams,
        f.attacker_packets,
        f.attacker_envelopes,
        f.attacker_sessions
    );
    assert!(f.thrown >= 1_000_000);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Arbitrary datagrams (any bytes, from strangers or spoofed client addresses), then the
    /// legitimate clients still work.
    #[test]
    fn arbitrary_datagrams_leave_clients_working(
        datagrams in prop::collection::vec(
            (prop::collection::vec(any::<u8>(), 0..1500), 0u8..5, any::<u16>()),
            1..200,
        ),
        seed in any::<u64>(),
    ) {
        let mut f = Fuzzer::new(seed);
        for (bytes, who, port) in &datagrams {
            let from = match who {
                0..=2 => Harness::client_addr(*who as usize),
                3 => f.h.server_addr,
                _ => SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 9, 9, 9)), *port),
            };
            f.h.inject(from, bytes);
        }
        f.step();
        f.round_trip(99);
    }
}
