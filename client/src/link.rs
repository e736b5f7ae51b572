//! Client-side link simulation: loss, latency, jitter, duplication and reordering applied by
//! the [`crate::Client`] driver to every datagram it sends and receives, so one process can
//! play many clients on bad networks over a real loopback socket (load tests, soak tests).
//!
//! The conditions are netcode's [`LinkConditions`]; every decision (lost or not, how long
//! delayed) comes from a small seeded generator, so a given seed and the same sequence of
//! datagrams give the same drops and delays. Delays are measured on the driver's clock
//! (`unix_now()`); the driver wakes when the next held datagram is due.
//!
//! ```
//! use std::time::Duration;
//! use orrery_client::link::{Direction, LinkSim};
//! use orrery_client::netcode::sim::LinkConditions;
//!
//! let mut sim = LinkSim::new(LinkConditions::lossy(0.0, Duration::from_millis(50), Duration::ZERO), 7);
//! let peer = "127.0.0.1:7777".parse().unwrap();
//! sim.push(Duration::ZERO, Direction::Outbound, peer, vec![1, 2, 3]);
//! assert!(sim.pop_due(Duration::from_millis(49)).is_none());
//! let held = sim.pop_due(Duration::from_millis(50)).unwrap();
//! assert_eq!((held.direction, held.bytes), (Direction::Outbound, vec![1, 2, 3]));
//! ```

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::time::Duration;

use orrery_netcode::sim::LinkConditions;

/// Which way a datagram travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Direction {
    /// From this client to the server.
    Outbound,
    /// From the server to this client.
    Inbound,
}

/// A datagram the link held back and now delivers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivered {
    /// When it became due.
    pub at: Duration,
    /// Which way it travels.
    pub direction: Direction,
    /// The other end: the destination of an outbound datagram, the sender of an inbound one.
    pub peer: SocketAddr,
    /// The datagram.
    pub bytes: Vec<u8>,
}

/// Counters of a [`LinkSim`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Datagrams offered to the link, outbound.
    pub sent_out: u64,
    /// Datagrams offered to the link, inbound.
    pub sent_in: u64,
    /// Outbound datagrams dropped.
    pub lost_out: u64,
    /// Inbound datagrams dropped.
    pub lost_in: u64,
    /// Extra copies made.
    pub duplicated: u64,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Held {
    at: Duration,
    seq: u64,
    direction: Direction,
    peer: SocketAddr,
    bytes: Vec<u8>,
}

/// SplitMix64: tiny, fast, and good enough to decide drops and delays reproducibly.
#[derive(Clone, Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `0..=max`.
    fn up_to(&mut self, max: u64) -> u64 {
        if max == u64::MAX {
            return self.next_u64();
        }
        self.next_u64() % (max + 1)
    }
}

/// A seeded lossy, delaying link between a client and its server (see the module docs).
#[derive(Debug)]
pub struct LinkSim {
    conditions: LinkConditions,
    rng: SplitMix64,
    held: BinaryHeap<Reverse<Held>>,
    seq: u64,
    stats: LinkStats,
}

impl LinkSim {
    /// A link with `conditions`, its decisions drawn from `seed`.
    pub fn new(conditions: LinkConditions, seed: u64) -> Self {
        LinkSim {
            conditions,
            rng: SplitMix64(seed ^ 0x6c69_6e6b_5f73_696d),
            held: BinaryHeap::new(),
            seq: 0,
            stats: LinkStats::default(),
        }
    }

    /// The conditions.
    pub fn conditions(&self) -> &LinkConditions {
        &self.conditions
    }

    /// Counters.
    pub fn stats(&self) -> LinkStats {
        self.stats
    }

    /// Datagrams held (in flight on the simulated link).
    pub fn in_flight(&self) -> usize {
        self.held.len()
    }

    /// When the next held datagram is due, if any.
    pub fn next_due(&self) -> Option<Duration> {
        self.held.peek().map(|Reverse(h)| h.at)
    }

    /// Offers a datagram to the link at `now`: it is dropped, or held until its delay passes
    /// (possibly twice, with `duplicate`).
    pub fn push(&mut self, now: Duration, direction: Direction, peer: SocketAddr, bytes: Vec<u8>) {
        let c = self.conditions;
        match direction {
            Direction::Outbound => self.stats.sent_out += 1,
            Direction::Inbound => self.stats.sent_in += 1,
        }
        if self.rng.unit() < c.loss {
            match direction {
                Direction::Outbound => self.stats.lost_out += 1,
                Direction::Inbound => self.stats.lost_in += 1,
            }
            return;
        }
        let copies = if self.rng.unit() < c.duplicate { 2 } else { 1 };
        self.stats.duplicated += copies - 1;
        let mut bytes = Some(bytes);
        for copy in 0..copies {
            let jitter_us = u64::try_from(c.jitter.as_micros()).unwrap_or(u64::MAX);
            let mut delay = c.latency + Duration::from_micros(self.rng.up_to(jitter_us));
            if self.rng.unit() < c.reorder {
                delay += c.latency + c.jitter;
            }
            let payload = if copy + 1 == copies {
                bytes.take().unwrap_or_default()
            } else {
                bytes.clone().unwrap_or_default()
            };
            self.seq += 1;
            self.held.push(Reverse(Held {
                at: now + delay,
                seq: self.seq,
                direction,
                peer,
                bytes: payload,
            }));
        }
    }

    /// The next datagram due at or before `now`, earliest first (ties in the order offered).
    pub fn pop_due(&mut self, now: Duration) -> Option<Delivered> {
        if self.held.peek().is_some_and(|Reverse(h)| h.at <= now) {
            let Reverse(h) = self.held.pop()?;
            return Some(Delivered {
                at: h.at,
                direction: h.direction,
                peer: h.peer,
                bytes: h.bytes,
            });
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> SocketAddr {
        "127.0.0.1:7777".parse().unwrap()
    }

    fn run(seed: u64, conditions: LinkConditions) -> Vec<(Duration, Direction, Vec<u8>)> {
        let mut sim = LinkSim::new(conditions, seed);
        for i in 0..1_000u32 {
            let now = Duration::from_millis(u64::from(i));
            let direction = if i % 2 == 0 {
                Direction::Outbound
            } else {
                Direction::Inbound
            };
            sim.push(now, direction, peer(), i.to_le_bytes().to_vec());
        }
        let mut out = Vec::new();
        while let Some(d) = sim.pop_due(Duration::from_secs(3600)) {
            out.push((d.at, d.direction, d.bytes));
        }
        out
    }

    #[test]
    fn same_seed_same_drops_and_delays() {
        let c = LinkConditions::lossy(0.2, Duration::from_millis(30), Duration::from_millis(20));
        assert_eq!(run(5, c), run(5, c));
        assert_ne!(run(5, c), run(6, c));
    }

    #[test]
    fn loss_and_delay_follow_the_conditions() {
        let c = LinkConditions::lossy(0.1, Duration::from_millis(30), Duration::from_millis(20));
        let mut sim = LinkSim::new(c, 1);
        for i in 0..10_000u32 {
            sim.push(
                Duration::ZERO,
                Direction::Inbound,
                peer(),
                i.to_le_bytes().to_vec(),
            );
        }
        let stats = sim.stats();
        assert_eq!(stats.sent_in, 10_000);
        assert!(
            (800..1_200).contains(&stats.lost_in),
            "lost {} of 10,000 at 10%",
            stats.lost_in
        );
        assert_eq!(sim.in_flight() as u64, 10_000 - stats.lost_in);
        assert_eq!(sim.next_due().map(|d| d >= c.latency), Some(true));
        assert!(sim.pop_due(Duration::from_millis(29)).is_none());
        let mut last = Duration::ZERO;
        let mut delivered = 0;
        while let Some(d) = sim.pop_due(Duration::from_millis(50)) {
            assert!(d.at >= last, "delivered in due order");
            assert!(d.at >= c.latency && d.at <= c.latency + c.jitter);
            last = d.at;
            delivered += 1;
        }
        assert_eq!(delivered, 10_000 - stats.lost_in);
        assert_eq!(sim.in_flight(), 0);
    }

    #[test]
    fn perfect_link_delivers_everything_at_once_in_order() {
        let mut sim = LinkSim::new(LinkConditions::PERFECT, 3);
        for i in 0..10u8 {
            sim.push(Duration::ZERO, Direction::Outbound, peer(), vec![i]);
        }
        let got: Vec<u8> = std::iter::from_fn(|| sim.pop_due(Duration::ZERO))
            .map(|d| d.bytes[0])
            .collect();
        assert_eq!(got, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn duplicates_are_counted_and_delivered() {
        let c = LinkConditions {
            duplicate: 1.0,
            ..LinkConditions::PERFECT
        };
        let mut sim = LinkSim::new(c, 9);
        sim.push(Duration::ZERO, Direction::Inbound, peer(), vec![42]);
        assert_eq!(sim.stats().duplicated, 1);
        assert_eq!(sim.pop_due(Duration::ZERO).map(|d| d.bytes), Some(vec![42]));
        assert_eq!(sim.pop_due(Duration::ZERO).map(|d| d.bytes), Some(vec![42]));
        assert!(sim.pop_due(Duration::ZERO).is_none());
    }
}
