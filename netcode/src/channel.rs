//! The reliability layer: one renet connection per peer, plus a guard that checks renet's
//! packets before renet parses them.
//!
//! Channels (same ids both ways): [`RELIABLE`] is reliable-ordered (handshake, reducer calls
//! and replies, subscription traffic); [`UNRELIABLE`] is unreliable (anything that may be
//! lost; one message must fit one datagram).
//!
//! Why a guard: renet 2.0.1 trusts the slice header of reliable slices. A slice whose index is
//! not below its slice count indexes out of bounds, and a slice whose count differs from an
//! earlier slice of the same message underflows the channel's memory counter: both panic on
//! one crafted packet from an authenticated peer. The guard parses the header (renet's wire
//! format: QUIC varints) and refuses such packets, refuses unreliable slices altogether, and
//! refuses slice counts that announce a message over the size limit.

use std::collections::BTreeMap;
use std::time::Duration;

#[cfg(test)]
use renet::MAX_RESEND_BACKOFF;
use renet::{Bytes, ChannelConfig, ConnectionConfig, RenetClient, SendType};

use crate::error::{DisconnectReason, RejectReason};

/// Channel id of the reliable-ordered channel.
pub const RELIABLE: u8 = 0;
/// Channel id of the unreliable channel.
pub const UNRELIABLE: u8 = 1;
/// renet's slice size: messages above it are sent in slices of this many bytes.
const SLICE_SIZE: usize = 1200;
/// Sliced messages one peer may have partially sent at once.
const MAX_SLICED_IN_FLIGHT: usize = 256;
/// Longest wait before an unacknowledged reliable packet is sent again, however slow the
/// round trip (the connection times out long before a peer this slow is useful).
const MAX_RESEND: Duration = Duration::from_secs(2);
/// Added to 1.5 round trips before a resend: the peer acknowledges on its next send, which
/// can be a tick or an update later than the data arrived.
const ACK_SLACK: Duration = Duration::from_millis(10);

/// Limits of one side of a connection.
#[derive(Debug, Clone)]
pub(crate) struct LinkLimits {
    /// Unacknowledged reliable bytes this side may hold for the peer.
    pub send_backlog: usize,
    /// Queued unreliable bytes (older ones are dropped beyond this).
    pub send_unreliable: usize,
    /// Largest message accepted from the peer.
    pub max_incoming: usize,
    /// Bytes this side sends per `update`.
    pub bytes_per_update: u64,
    /// How long received data may wait for its acknowledgement when there is nothing else to
    /// send (zero: acknowledge on the next flush).
    pub ack_delay: Duration,
    /// Shortest resend interval of unacknowledged reliable packets: the interval follows the
    /// measured round trip above it (see [`Link::update`]).
    pub resend: Duration,
}

/// One peer's renet connection and its guard.
#[derive(Debug)]
pub(crate) struct Link {
    conn: RenetClient,
    limits: LinkLimits,
    /// Messages handed out on the reliable channel (= renet's next expected message id).
    delivered: u64,
    /// Something was queued since the last flush (data to send).
    dirty: bool,
    /// When data that needs acknowledging first arrived since the last flush.
    acks_since: Option<Duration>,
    /// renet's clock, and when packets were last generated.
    clock: Duration,
    last_flush: Duration,
    /// The resend interval in force (see [`Link::update`]).
    resend: Duration,
    /// Slice count of each partially received reliable message, by message id.
    slicing: BTreeMap<u64, u64>,
    max_slices: u64,
}

impl Link {
    pub(crate) fn new(limits: LinkLimits) -> Self {
        let resend_time = limits.resend;
        let send = vec![
            ChannelConfig {
                channel_id: RELIABLE,
                max_memory_usage_bytes: limits.send_backlog,
                send_type: SendType::ReliableOrdered { resend_time },
            },
            ChannelConfig {
                channel_id: UNRELIABLE,
                max_memory_usage_bytes: limits.send_unreliable,
                send_type: SendType::Unreliable,
            },
        ];
        // Out-of-order reliable messages wait here for the one before them.
        let receive_window = (4 * limits.max_incoming).max(256 * 1024);
        let receive = vec![
            ChannelConfig {
                channel_id: RELIABLE,
                max_memory_usage_bytes: receive_window,
                send_type: SendType::ReliableOrdered { resend_time },
            },
            ChannelConfig {
                channel_id: UNRELIABLE,
                max_memory_usage_bytes: 64 * 1024,
                send_type: SendType::Unreliable,
            },
        ];
        // `RenetClient::new` sends on `client_channels_config` and receives on
        // `server_channels_config`; this works for either side.
        let config = ConnectionConfig {
            available_bytes_per_tick: limits.bytes_per_update,
            client_channels_config: send,
            server_channels_config: receive,
        };
        let mut conn = RenetClient::new(config);
        conn.set_connected();
        let max_slices = limits.max_incoming.div_ceil(SLICE_SIZE).max(1) as u64;
        Self {
            conn,
            limits,
            delivered: 0,
            dirty: false,
            acks_since: None,
            clock: Duration::ZERO,
            last_flush: Duration::ZERO,
            resend: resend_time,
            slicing: BTreeMap::new(),
            max_slices,
        }
    }

    /// Splits a bundle (see [`Link::bundles`]) and processes each renet packet in it.
    pub(crate) fn process_bundle(&mut self, bundle: &[u8]) -> Result<(), DisconnectReason> {
        let mut rest = bundle;
        let bad =
            || DisconnectReason::Rejected(RejectReason::Protocol("bad bundle framing".to_string()));
        while !rest.is_empty() {
            let (len, tail) = match rest {
                [a, b, tail @ ..] => (u16::from_le_bytes([*a, *b]) as usize, tail),
                _ => return Err(bad()),
            };
            if len == 0 || len > tail.len() {
                return Err(bad());
            }
            let (packet, tail) = tail.split_at(len);
            self.process(packet)?;
            rest = tail;
        }
        Ok(())
    }

    /// renet packets to send now, packed into bundles of at most `max` bytes: each packet is
    /// prefixed by its length (u16 little-endian). Bundling puts renet's separate ack packet
    /// and the data into one datagram, which halves the datagrams (and syscalls) per tick.
    pub(crate) fn bundles(&mut self, max: usize) -> Vec<Vec<u8>> {
        // renet emits an ack packet on every call while it holds acks, so a peer updating at
        // 60 Hz would send 60 datagrams a second with nothing new in them. Generate packets only
        // when something arrived (acks due) or was queued, or to resend unacknowledged data.
        let resend_due =
            self.backlog() > 0 && self.clock.saturating_sub(self.last_flush) >= self.resend / 2;
        let acks_due = self
            .acks_since
            .is_some_and(|since| self.clock.saturating_sub(since) >= self.limits.ack_delay);
        if !self.dirty && !resend_due && !acks_due {
            return Vec::new();
        }
        // Whatever goes out now carries every pending ack.
        self.dirty = false;
        self.acks_since = None;
        self.last_flush = self.clock;
        let packets = self.conn.get_packets_to_send();
        let mut out: Vec<Vec<u8>> = Vec::new();
        for p in packets {
            if p.is_empty() || p.len() + 2 > max {
                tracing::error!(len = p.len(), "renet packet too large to bundle; dropped");
                continue;
            }
            match out.last_mut() {
                Some(b) if b.len() + 2 + p.len() <= max => {}
                _ => out.push(Vec::with_capacity(max)),
            }
            if let Some(b) = out.last_mut() {
                b.extend_from_slice(&(p.len() as u16).to_le_bytes());
                b.extend_from_slice(&p);
            }
        }
        out
    }

    /// Checks and processes one renet packet from the peer.
    pub(crate) fn process(&mut self, packet: &[u8]) -> Result<(), DisconnectReason> {
        self.guard(packet).map_err(DisconnectReason::Rejected)?;
        self.conn.process_packet(packet);
        // Data needs acknowledging; an ack-only packet (type 4) does not (acknowledging it
        // would make both sides trade ack packets forever).
        if packet.first() != Some(&4) {
            self.acks_since.get_or_insert(self.clock);
        }
        self.status()
    }

    fn status(&self) -> Result<(), DisconnectReason> {
        match self.conn.disconnect_reason() {
            None => Ok(()),
            Some(renet::DisconnectReason::PacketDeserialization(e)) => {
                Err(DisconnectReason::Rejected(RejectReason::Protocol(format!(
                    "undecodable packet: {e}"
                ))))
            }
            Some(renet::DisconnectReason::ReceivedInvalidChannelId(c)) => Err(
                DisconnectReason::Rejected(RejectReason::Protocol(format!("unknown channel {c}"))),
            ),
            Some(other) => Err(DisconnectReason::Transport(other.to_string())),
        }
    }

    /// Refuses packets renet would mishandle (see the module docs).
    fn guard(&mut self, packet: &[u8]) -> Result<(), RejectReason> {
        let mut r = Varints {
            bytes: packet,
            pos: 0,
        };
        let bad = |what: &str| RejectReason::Protocol(what.to_string());
        match r.u8().ok_or_else(|| bad("empty packet"))? {
            2 => {
                // ReliableSlice: sequence, channel, message id, slice index, slice count.
                let _sequence = r.varint().ok_or_else(|| bad("truncated slice"))?;
                let _channel = r.u8().ok_or_else(|| bad("truncated slice"))?;
                let message_id = r.varint().ok_or_else(|| bad("truncated slice"))?;
                let index = r.varint().ok_or_else(|| bad("truncated slice"))?;
                let count = r.varint().ok_or_else(|| bad("truncated slice"))?;
                if count > self.max_slices {
                    let size = usize::try_from(count)
                        .unwrap_or(usize::MAX)
                        .saturating_sub(1)
                        .saturating_mul(SLICE_SIZE)
                        .saturating_add(1);
                    return Err(RejectReason::MessageTooLarge {
                        size,
                        max: self.limits.max_incoming,
                    });
                }
                if count == 0 || index >= count {
                    return Err(bad("slice index out of range"));
                }
                if message_id < self.delivered {
                    return Ok(()); // already delivered; renet ignores it
                }
                // Forget messages delivered since.
                if self
                    .slicing
                    .first_key_value()
                    .is_some_and(|(&k, _)| k < self.delivered)
                {
                    self.slicing = self.slicing.split_off(&self.delivered);
                }
                match self.slicing.get(&message_id) {
                    Some(&known) if known != count => {
                        Err(bad("slice count changed within a message"))
                    }
                    Some(_) => Ok(()),
                    None if self.slicing.len() >= MAX_SLICED_IN_FLIGHT => {
                        Err(bad("too many sliced messages in flight"))
                    }
                    None => {
                        self.slicing.insert(message_id, count);
                        Ok(())
                    }
                }
            }
            3 => Err(bad("unreliable slices are not allowed")),
            0 | 1 | 4 => Ok(()),
            t => Err(RejectReason::Protocol(format!("unknown packet type {t}"))),
        }
    }

    /// Pops the next message received on `channel`.
    pub(crate) fn receive(&mut self, channel: u8) -> Option<Bytes> {
        let msg = self.conn.receive_message(channel)?;
        if channel == RELIABLE {
            self.delivered += 1;
        }
        Some(msg)
    }

    /// Queues a reliable message. `Err(backlog)` if it would exceed the backlog limit.
    pub(crate) fn send_reliable(&mut self, msg: Bytes) -> Result<(), usize> {
        if !self.conn.can_send_message(RELIABLE, msg.len()) {
            return Err(self.backlog() + msg.len());
        }
        self.conn.send_message(RELIABLE, msg);
        self.dirty = true;
        Ok(())
    }

    /// Queues an unreliable message (dropped by renet if its queue is full).
    pub(crate) fn send_unreliable(&mut self, msg: Bytes) {
        self.conn.send_message(UNRELIABLE, msg);
        self.dirty = true;
    }

    /// Unacknowledged reliable bytes.
    pub(crate) fn backlog(&self) -> usize {
        self.limits
            .send_backlog
            .saturating_sub(self.conn.channel_available_memory(RELIABLE))
    }

    /// Reliable message bytes sent again (resends) since the link began.
    pub(crate) fn resent_bytes(&self) -> u64 {
        self.conn.resent_bytes()
    }

    /// The configured backlog limit.
    pub(crate) fn backlog_limit(&self) -> usize {
        self.limits.send_backlog
    }

    /// Advances renet's clock, and moves the resend interval with the round trip.
    ///
    /// A fixed interval below the round trip sends every reliable message more than once: a
    /// peer 250 ms away got each one about three times at 200 ms, and late acks (a slow
    /// client, a loaded machine) turned into extra sends on top of the load. As TCP does, the interval follows the smoothed round trip (renet's): 1.5 of it
    /// plus [`ACK_SLACK`], never below `LinkLimits::resend` (which keeps losses on a fast link
    /// repaired quickly) nor above [`MAX_RESEND`].
    pub(crate) fn update(&mut self, dt: Duration) -> Result<(), DisconnectReason> {
        self.conn.update(dt);
        self.clock += dt;
        let rtt = Duration::from_secs_f64(self.conn.rtt().clamp(0.0, MAX_RESEND.as_secs_f64()));
        let want = (rtt + rtt / 2 + ACK_SLACK).clamp(self.limits.resend, MAX_RESEND);
        // Only real changes reach renet (it walks its channels on every set).
        if want.abs_diff(self.resend) * 8 > self.resend {
            self.resend = want;
            self.conn.set_resend_time(want);
        }
        self.status()
    }

    /// The resend interval in force.
    pub(crate) fn resend_interval(&self) -> Duration {
        self.resend
    }

    /// renet packets to send now (within the per-update byte budget), unbundled.
    #[cfg(test)]
    pub(crate) fn packets(&mut self) -> Vec<Vec<u8>> {
        self.conn.get_packets_to_send()
    }

    /// Round-trip time in seconds (renet's estimate).
    pub(crate) fn rtt(&self) -> f64 {
        self.conn.rtt()
    }

    /// Packet loss fraction (renet's estimate).
    pub(crate) fn packet_loss(&self) -> f64 {
        self.conn.packet_loss()
    }
}

/// Reader of renet's header fields (octets: big-endian, QUIC varints).
struct Varints<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Varints<'_> {
    fn u8(&mut self) -> Option<u8> {
        let b = *self.bytes.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    fn varint(&mut self) -> Option<u64> {
        let first = self.u8()?;
        let len = 1usize << (first >> 6);
        let mut v = u64::from(first & 0x3f);
        for _ in 1..len {
            v = (v << 8) | u64::from(self.u8()?);
        }
        Some(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> LinkLimits {
        LinkLimits {
            send_backlog: 1 << 20,
            send_unreliable: 1 << 16,
            max_incoming: 64 * 1024,
            bytes_per_update: 60_000,
            ack_delay: Duration::ZERO,
            resend: Duration::from_millis(100),
        }
    }

    fn slice(message_id: u8, index: u8, count: u8) -> Vec<u8> {
        let mut p = vec![2, 0, RELIABLE, message_id, index, count, 0x44, 0xb0];
        p.extend(std::iter::repeat_n(7u8, SLICE_SIZE));
        p
    }

    /// Why the guard exists: renet 2.0.1 panics on this packet. If a renet upgrade fixes it,
    /// this test fails and the guard's slice checks can be reconsidered.
    #[test]
    fn renet_alone_panics_on_a_crafted_slice() {
        let mut conn = Link::new(limits()).conn;
        let crafted = slice(0, 5, 2);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            conn.process_packet(&crafted)
        }));
        assert!(
            result.is_err(),
            "renet no longer panics on an out-of-range slice index"
        );
    }

    #[test]
    fn crafted_slices_are_refused_not_panicking() {
        let mut link = Link::new(limits());
        // Index beyond count: renet would index out of bounds.
        assert!(matches!(
            link.process(&slice(0, 5, 2)),
            Err(DisconnectReason::Rejected(RejectReason::Protocol(_)))
        ));
        let mut link = Link::new(limits());
        assert!(link.process(&slice(0, 0, 2)).is_ok());
        // Same message, other count: renet's memory counter would underflow.
        assert!(link.process(&slice(0, 1, 3)).is_err());
        let mut link = Link::new(limits());
        // 60 slices > 64 KiB.
        assert!(matches!(
            link.process(&slice(0, 0, 60)),
            Err(DisconnectReason::Rejected(
                RejectReason::MessageTooLarge { .. }
            ))
        ));
        let mut link = Link::new(limits());
        assert!(link.process(&[3, 0, 1, 0, 0, 1, 1, 9]).is_err());
    }

    #[test]
    fn bundles_round_trip_and_bad_framing_is_refused() {
        let mut a = Link::new(limits());
        let mut b = Link::new(limits());
        for i in 0..50u8 {
            a.send_reliable(vec![i; 300].into()).unwrap();
        }
        let bundles = a.bundles(1300);
        assert!(bundles.iter().all(|x| x.len() <= 1300));
        for x in &bundles {
            b.process_bundle(x).unwrap();
        }
        for i in 0..50u8 {
            assert_eq!(b.receive(RELIABLE).unwrap()[0], i);
        }
        for bad in [&[5u8][..], &[0, 0], &[9, 0, 1, 2]] {
            let mut c = Link::new(limits());
            assert!(c.process_bundle(bad).is_err());
        }
    }

    /// Random and mutated reliability-layer packets from an authenticated peer: renet's parser
    /// and channels behind the guard never panic. (`--ignored` runs 5,000,000.)
    fn fuzz_link(iterations: u64, seed: u64) -> (u64, u64) {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut sender = Link::new(limits());
        let mut corpus: Vec<Vec<u8>> = Vec::new();
        for i in 0..200u32 {
            let len = [3usize, 40, 700, 1300, 5000][i as usize % 5];
            let msg: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            if i % 3 == 0 {
                sender.send_unreliable(msg[..len.min(1000)].to_vec().into());
            } else {
                let _ = sender.send_reliable(msg.into());
            }
            if i % 7 == 0 {
                sender.conn.process_packet(&[4, 1, 5, 2, 0]); // an ack, so acks get sent back
                let _ = sender.update(Duration::from_millis(250));
                corpus.extend(sender.conn.get_packets_to_send());
            }
        }
        let (mut errors, mut oks) = (0, 0);
        let mut receiver = Link::new(limits());
        for _ in 0..iterations {
            let mut p = if rng.random_range(0..4u8) == 0 {
                (0..rng.random_range(0..64usize))
                    .map(|_| rng.random())
                    .collect()
            } else {
                corpus[rng.random_range(0..corpus.len())].clone()
            };
            for _ in 0..rng.random_range(0..4u32) {
                if p.is_empty() {
                    break;
                }
                let i = rng.random_range(0..p.len());
                match rng.random_range(0..3u8) {
                    0 => p[i] ^= 1 << rng.random_range(0..8u32),
                    1 => p[i] = rng.random(),
                    _ => p.truncate(i),
                }
            }
            let result = if rng.random() {
                receiver.process(&p)
            } else {
                let mut framed = (p.len() as u16).to_le_bytes().to_vec();
                framed.extend_from_slice(&p);
                receiver.process_bundle(&framed)
            };
            while receiver.receive(RELIABLE).is_some() || receiver.receive(UNRELIABLE).is_some() {}
            let _ = receiver.bundles(1300);
            match result {
                Ok(()) => oks += 1,
                Err(_) => {
                    errors += 1;
                    receiver = Link::new(limits());
                }
            }
        }
        (oks, errors)
    }

    #[test]
    fn fuzzed_reliability_packets_never_panic() {
        let (oks, errors) = fuzz_link(100_000, 1);
        assert!(oks > 10_000 && errors > 10_000, "{oks} {errors}");
    }

    #[test]
    #[ignore = "long: run with -- --ignored"]
    fn fuzzed_reliability_packets_never_panic_5m() {
        fuzz_link(5_000_000, 2);
    }

    #[test]
    fn two_links_exchange_big_messages() {
        let mut a = Link::new(limits());
        let mut b = Link::new(limits());
        let big: Bytes = vec![3u8; 10_000].into();
        a.send_reliable(big.clone()).unwrap();
        for p in a.packets() {
            b.process(&p).unwrap();
        }
        assert_eq!(b.receive(RELIABLE), Some(big));
        for p in b.packets() {
            a.process(&p).unwrap();
        }
        assert_eq!(a.backlog(), 0);
    }

    /// Sends a 100-byte reliable message every 50 ms for `seconds` from `a` to `b` over a link
    /// with `one_way` latency each way (10 ms steps, acks flowing back), and returns the bytes
    /// `a` sent in the second half divided by the message bytes queued then.
    fn resend_overhead(a: &mut Link, b: &mut Link, one_way: Duration, seconds: u64) -> f64 {
        use std::collections::VecDeque;
        let step = Duration::from_millis(10);
        let (mut to_b, mut to_a) = (VecDeque::new(), VecDeque::new());
        let (mut sent, mut queued) = (0usize, 0usize);
        let steps = seconds * 100;
        for i in 0..steps {
            let now = step * i as u32;
            let counting = i >= steps / 2;
            if i % 5 == 0 {
                a.send_reliable(Bytes::from(vec![7u8; 100])).unwrap();
                if counting {
                    queued += 100;
                }
            }
            while to_b.front().is_some_and(|(at, _)| *at <= now) {
                let (_, bundle): (Duration, Vec<u8>) = to_b.pop_front().unwrap();
                b.process_bundle(&bundle).unwrap();
            }
            while b.receive(RELIABLE).is_some() {}
            while to_a.front().is_some_and(|(at, _)| *at <= now) {
                let (_, bundle): (Duration, Vec<u8>) = to_a.pop_front().unwrap();
                a.process_bundle(&bundle).unwrap();
            }
            for bundle in a.bundles(1300) {
                if counting {
                    sent += bundle.len();
                }
                to_b.push_back((now + one_way, bundle));
            }
            for bundle in b.bundles(1300) {
                to_a.push_back((now + one_way, bundle));
            }
            a.update(step).unwrap();
            b.update(step).unwrap();
        }
        sent as f64 / queued as f64
    }

    /// A round trip longer than the configured resend interval: the interval grows to 1.5 of
    /// it, so each message goes out about once (headers and acks on top), where a fixed
    /// interval sent each of them about three times.
    #[test]
    fn resends_wait_for_the_measured_round_trip() {
        let one_way = Duration::from_millis(250);
        let (mut a, mut b) = (Link::new(limits()), Link::new(limits()));
        let adaptive = resend_overhead(&mut a, &mut b, one_way, 10);
        let resend = a.resend_interval();
        assert!(
            resend >= Duration::from_millis(700) && resend <= Duration::from_millis(900),
            "{resend:?} for a 500 ms round trip"
        );
        assert!(adaptive < 1.4, "{adaptive:.2} bytes sent per message byte");
        // The same link with renet's fixed interval (the floor pinned at the ceiling keeps the
        // adaptation from ever changing what is set here).
        let (mut a, mut b) = (Link::new(limits()), Link::new(limits()));
        a.limits.resend = MAX_RESEND;
        a.resend = MAX_RESEND;
        a.conn.set_resend_time(limits().resend);
        let pinned = resend_overhead(&mut a, &mut b, one_way, 10);
        assert!(
            pinned > 2.5,
            "{pinned:.2} bytes sent per message byte with a fixed interval"
        );
        // On a fast link the configured floor stays in force, so losses are repaired quickly.
        let (mut a, mut b) = (Link::new(limits()), Link::new(limits()));
        resend_overhead(&mut a, &mut b, Duration::from_millis(10), 2);
        assert_eq!(a.resend_interval(), limits().resend);
    }

    /// A peer that goes silent for three seconds (a stalled process, a congested link) and
    /// comes back: what the sender sends meanwhile, and how soon everything arrives after.
    /// Returns (bytes sent during the silence per message byte queued during it, seconds from
    /// the peer's return until it has every message).
    fn silent_peer(a: &mut Link, b: &mut Link) -> (f64, f64) {
        let step = Duration::from_millis(10);
        let (quiet_from, quiet_until, end) = (100u32, 400u32, 900u32);
        let (mut sent, mut queued, mut messages, mut received) = (0usize, 0usize, 0usize, 0usize);
        let mut all_in_at = None;
        for i in 0..end {
            let quiet = (quiet_from..quiet_until).contains(&i);
            if i % 5 == 0 && i < quiet_until {
                a.send_reliable(Bytes::from(vec![7u8; 100])).unwrap();
                messages += 1;
                if quiet {
                    queued += 100;
                }
            }
            // One-way delay of one step: bundles sent now are handled at the next step.
            let to_b = a.bundles(1300);
            if quiet {
                sent += to_b.iter().map(Vec::len).sum::<usize>();
            } else {
                for bundle in &to_b {
                    b.process_bundle(bundle).unwrap();
                }
            }
            while b.receive(RELIABLE).is_some() {
                received += 1;
            }
            if !quiet {
                for bundle in b.bundles(1300) {
                    a.process_bundle(&bundle).unwrap();
                }
            }
            if i >= quiet_until && received == messages && all_in_at.is_none() {
                all_in_at = Some(i);
            }
            a.update(step).unwrap();
            b.update(step).unwrap();
        }
        let back = all_in_at.expect("every message arrives after the peer returns");
        (
            sent as f64 / queued as f64,
            f64::from(back - quiet_until) * step.as_secs_f64(),
        )
    }

    /// Resends to a silent peer back off (1, 2, 4, ... resend intervals, at most 2 s apart):
    /// a fixed 100 ms interval sent each message of a 3 s silence about 16 times (16.2 bytes
    /// per message byte), the backoff about 4 (4.4). The first acknowledgement after the
    /// silence starts the backoff over, so the backlog follows within a resend interval
    /// instead of waiting out the longest wait (1.55 s without that reset).
    #[test]
    fn resends_to_a_silent_peer_back_off() {
        let (mut a, mut b) = (Link::new(limits()), Link::new(limits()));
        let (overhead, recovery) = silent_peer(&mut a, &mut b);
        assert!(
            overhead < 6.0,
            "{overhead:.2} bytes sent per message byte to a silent peer"
        );
        assert!(
            recovery <= 2.0 * limits().resend.as_secs_f64() + 0.05,
            "everything arrived {recovery:.2} s after the peer came back"
        );
        assert!(
            MAX_RESEND_BACKOFF >= limits().resend * 8,
            "the test backs off at least 3 times"
        );
    }

    /// Resent bytes count each message byte sent again, and nothing sent once.
    #[test]
    fn resent_bytes_count_what_was_sent_again() {
        let (mut a, mut b) = (Link::new(limits()), Link::new(limits()));
        for _ in 0..10 {
            a.send_reliable(Bytes::from(vec![7u8; 100])).unwrap();
        }
        assert!(!a.bundles(1300).is_empty());
        assert_eq!(a.resent_bytes(), 0, "a first send is not a resend");
        // No acknowledgement within the resend interval: everything goes again, once.
        a.update(limits().resend).unwrap();
        let again = a.bundles(1300);
        assert_eq!(a.resent_bytes(), 1_000);
        for bundle in &again {
            b.process_bundle(bundle).unwrap();
        }
        b.update(limits().ack_delay).unwrap();
        for bundle in b.bundles(1300) {
            a.process_bundle(&bundle).unwrap();
        }
        // Acknowledged: nothing more is resent.
        for _ in 0..5 {
            a.update(limits().resend).unwrap();
            let _ = a.bundles(1300);
        }
        assert_eq!(a.resent_bytes(), 1_000);
        assert_eq!(a.backlog(), 0);
    }
}
