//! In-memory tests: N clients against one server session through the seeded simulator.

mod common;

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
    assert_eq!(clogs[0].connected, Some((Harness::identity(0), 1)));
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
        assert_eq!(log.connected, Some((Harness::identity(i), i as u64 + 1)));
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
