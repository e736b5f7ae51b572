//! In-memory tests: N clients against one server session through the seeded simulator.

mod common;

use orrery_netcode::ConnectionId;
use std::time::Duration;

use common::{ClientLog, ServerLog, call, run_until};
use orrery_netcode::sim::{Harness, LinkConditions};

const TICK: Duration = Duration::from_millis(20);

#[test]
fn one_client_connects_calls_and_gets_its_identity() {
    let mut h = Harness::new(1, LinkConditions::PERFECT);
    let c = h.add_client();
    let (mut slog, mut clogs) = (ServerLog::default(), Vec::new());
    for id in 0..5 {
        h.clients[c].session.send(&call(id)).unwrap();
    }
    assert!(run_until(
        &mut h,
        &mut slog,
        &mut clogs,
        TICK,
        Duration::from_secs(5),
        |_, _, c| c[0].replies.len() == 5
    ));
    assert_eq!(clogs[0].replies, vec![0, 1, 2, 3, 4]);
    assert_eq!(
        clogs[0].connected,
        Some((Harness::identity(0), ConnectionId(1)))
    );
    assert_eq!(slog.connected.len(), 1);
    assert_eq!(slog.connected.values().next(), Some(&Harness::identity(0)));
}

/// The acceptance test: 200 clients at 10% loss and 100 ms jitter each get every
/// reply exactly once, in order.
#[test]
fn two_hundred_clients_lossy_jittery_every_reply_once_in_order() {
    let conditions = LinkConditions {
        loss: 0.10,
        latency: Duration::from_millis(30),
        jitter: Duration::from_millis(100),
        duplicate: 0.02,
        reorder: 0.02,
    };
    let mut h = Harness::new(200, conditions);
    const CLIENTS: usize = 200;
    const CALLS: u32 = 30;
    for _ in 0..CLIENTS {
        h.add_client();
    }
    let (mut slog, mut clogs) = (ServerLog::default(), Vec::<ClientLog>::new());
    // Calls go out over time: a few per tick per client, some while still connecting.
    let mut next = vec![0u32; CLIENTS];
    let end = h.now + Duration::from_secs(60);
    while h.now < end {
        for (i, n) in next.iter_mut().enumerate() {
            if *n < CALLS && (h.now.as_millis() / 20 + i as u128).is_multiple_of(3) {
                h.clients[i].session.send(&call(*n)).unwrap();
                *n += 1;
            }
        }
        h.step(TICK);
        common::serve(&mut h, &mut slog);
        common::collect(&mut h, &mut clogs);
        if clogs.iter().all(|l| l.replies.len() == CALLS as usize) {
            break;
        }
    }
    let expected: Vec<u32> = (0..CALLS).collect();
    for (i, log) in clogs.iter().enumerate() {
        assert_eq!(log.disconnected, None, "client {i}");
        assert_eq!(
            log.replies, expected,
            "client {i}: replies exactly once and in order"
        );
        assert_eq!(
            log.connected,
            Some((Harness::identity(i), ConnectionId(i as u64 + 1)))
        );
    }
    assert_eq!(
        slog.calls,
        CLIENTS as u64 * CALLS as u64,
        "server saw every call once"
    );
    assert!(slog.rejected.is_empty(), "{:?}", slog.rejected);
    let net = h.net.stats();
    assert!(
        net.lost > net.sent / 20,
        "the link really lost datagrams: {net:?}"
    );
}

/// Server session cost without sockets: 4,096 connected clients, per-tick `update` when idle
/// and when every client gets a 100-byte update. Run with `--release -- --ignored --nocapture`.
#[test]
#[ignore = "measurement: run with --release -- --ignored --nocapture"]
#[allow(clippy::print_stderr)] // reports the measured numbers
fn session_cost_4096_clients() {
    // Per-datagram and per-client costs stay flat from 256 to 4,096 clients.
    for n in [256, 1024, 4096] {
        session_cost(n);
    }
}

#[allow(clippy::print_stderr)] // reports the measured numbers
fn session_cost(n: usize) {
    use std::time::Instant;
    let mut h = Harness::new(n as u64, LinkConditions::PERFECT);
    for _ in 0..n {
        h.add_client();
    }
    let (mut slog, mut clogs) = (ServerLog::default(), Vec::<ClientLog>::new());
    assert!(run_until(
        &mut h,
        &mut slog,
        &mut clogs,
        TICK,
        Duration::from_secs(30),
        |_, s, _| s.connected.len() == n
    ));
    let ids: Vec<_> = slog.connected.keys().copied().collect();
    // Inverse of `Harness::client_addr`.
    let index_of = |a: std::net::SocketAddr| match a.ip() {
        std::net::IpAddr::V4(ip) => {
            let o = ip.octets();
            ((((o[1] as usize) - 1) << 16) | ((o[2] as usize) << 8) | o[3] as usize) - 1
        }
        std::net::IpAddr::V6(_) => usize::MAX,
    };
    let update = orrery_netcode::Encoded::server(&orrery_netcode::ServerMessage::TableUpdate {
        table_id: 1,
        tick: 0,
        rows: (0..100u32).map(|i| (i * 97 % 251) as u8).collect(),
    });
    for broadcast in [false, true] {
        let (mut update_time, mut recv_time, mut datagrams_out, mut datagrams_in) =
            (Duration::ZERO, Duration::ZERO, 0, 0);
        let mut out = Vec::new();
        let ticks = 40;
        for _ in 0..ticks {
            // Deliver what the clients sent, timing the server's receive path.
            let until = h.now + Duration::from_millis(50);
            let mut to_server = Vec::new();
            while let Some(d) = h.net.pop_due(until) {
                to_server.push(d);
            }
            let t = Instant::now();
            for (at, from, to, bytes) in &to_server {
                if *to == h.server_addr {
                    h.server.handle_datagram(*at, *from, bytes);
                    datagrams_in += 1;
                }
            }
            recv_time += t.elapsed();
            for (at, from, to, bytes) in &to_server {
                if *to != h.server_addr
                    && let Some(c) = h.clients.get_mut(index_of(*to))
                {
                    c.session.handle_datagram(*at, *from, bytes);
                }
            }
            h.now = until;
            common::serve(&mut h, &mut slog);
            let t = Instant::now();
            if broadcast {
                for &id in &ids {
                    h.server.send_encoded(id, &update).unwrap();
                }
            }
            h.server.update(h.now);
            h.server.drain_transmits(&mut out);
            update_time += t.elapsed();
            datagrams_out += out.len();
            for tr in out.drain(..) {
                let cond = h.conditions;
                h.net.send(h.now, h.server_addr, tr, &cond);
            }
            let now = h.now;
            let mut buf = Vec::new();
            for c in &mut h.clients {
                c.session.update(now);
                c.session.drain_transmits(&mut buf);
                for tr in buf.drain(..) {
                    let cond = h.conditions;
                    h.net.send(now, c.addr, tr, &cond);
                }
            }
        }
        eprintln!(
            "{n} clients, broadcast={broadcast}: per tick: send+update+drain {:?}, receive {:?}; \
             datagrams out/tick {}, in/tick {}; per client: update {:?}, per received datagram {:?}",
            update_time / ticks,
            recv_time / ticks,
            datagrams_out / ticks as usize,
            datagrams_in / ticks as usize,
            update_time / ticks / n as u32,
            recv_time / (datagrams_in.max(1) as u32),
        );
    }
}

/// Same seed, same calls: the same datagrams are lost and delayed, so the same things happen
/// at the same virtual times (keys and nonces differ run to run; sizes and timing do not).
#[test]
fn simulator_is_deterministic_for_a_seed() {
    let run = |seed: u64| {
        let conditions = LinkConditions {
            loss: 0.2,
            latency: Duration::from_millis(20),
            jitter: Duration::from_millis(60),
            duplicate: 0.05,
            reorder: 0.05,
        };
        let mut h = Harness::new(seed, conditions);
        for _ in 0..20 {
            h.add_client();
        }
        let mut trace = Vec::new();
        let (mut slog, mut clogs) = (ServerLog::default(), Vec::<ClientLog>::new());
        for step in 0..150u32 {
            if step % 10 == 0 {
                for c in &mut h.clients {
                    c.session.send(&call(step)).unwrap();
                }
            }
            h.step(TICK);
            common::serve(&mut h, &mut slog);
            common::collect(&mut h, &mut clogs);
            let replies: usize = clogs.iter().map(|l| l.replies.len()).sum();
            trace.push((slog.connected.len(), slog.calls, replies));
        }
        (trace, h.net.stats(), h.server.stats().clone())
    };
    let (a, b, c) = (run(42), run(42), run(43));
    assert_eq!(a, b);
    assert_ne!(a.1, c.1, "another seed gives another run");
}
