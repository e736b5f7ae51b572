//! Connect-token security, limits and misbehaving clients, in memory.

mod common;

use orrery_netcode::{ConnectionId, Identity};
use std::net::SocketAddr;
use std::time::Duration;

use common::{ClientLog, ServerLog, call, collect, run_until, serve};
use orrery_netcode::protocol::MAX_UNRELIABLE_MESSAGE;
use orrery_netcode::sim::{Harness, LinkConditions};
use orrery_netcode::{
    ClientEvent, ClientMessage, ClientSession, ClientSessionConfig, ConnectError, ConnectToken,
    ConnectTokenIssuer, DisconnectReason, PrivateKey, RejectReason, SendError, ServerEvent,
    ServerMessage,
};

const TICK: Duration = Duration::from_millis(20);

/// Incompressible bytes (bitcode packs runs of equal bytes into almost nothing).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn rejections(log: &ServerLog) -> Vec<RejectReason> {
    log.rejected
        .iter()
        .filter_map(|e| match e {
            ServerEvent::Rejected { reason, .. } => Some(reason.clone()),
            _ => None,
        })
        .collect()
}

fn connect_all(h: &mut Harness, slog: &mut ServerLog, clogs: &mut Vec<ClientLog>) {
    let n = h.clients.len();
    assert!(
        run_until(h, slog, clogs, TICK, Duration::from_secs(10), |_, s, _| s
            .connected
            .len()
            == n),
        "all {n} clients connect"
    );
}

#[test]
fn expired_token_is_rejected_by_server_and_client() {
    // Connect token lives 1 s, the link takes 1.5 s: the request arrives expired.
    let mut h = Harness::new(
        3,
        LinkConditions::lossy(0.0, Duration::from_millis(1500), Duration::ZERO),
    );
    h.issuer.expire_after = Duration::from_secs(1);
    h.add_client();
    let (mut slog, mut clogs) = (ServerLog::default(), Vec::new());
    run_until(
        &mut h,
        &mut slog,
        &mut clogs,
        TICK,
        Duration::from_secs(3),
        |_, _, _| false,
    );
    assert!(
        matches!(
            rejections(&slog).first(),
            Some(RejectReason::TokenExpired { .. })
        ),
        "{:?}",
        slog.rejected
    );
    assert!(slog.connected.is_empty());
    assert_eq!(clogs[0].disconnected, Some(DisconnectReason::TokenExpired));

    // A client refuses a token that expired already.
    let token = h
        .issuer
        .issue(
            &Identity([1; 32]),
            ConnectionId(99),
            h.now - Duration::from_secs(60),
        )
        .unwrap();
    let err = ClientSession::new(ClientSessionConfig::default(), token, h.now).unwrap_err();
    assert!(matches!(err, ConnectError::Expired { .. }), "{err}");
}

#[test]
fn replayed_token_from_another_address_is_rejected() {
    let mut h = Harness::new(4, LinkConditions::PERFECT);
    let token = h
        .issuer
        .issue(&Identity([7; 32]), ConnectionId(1), h.now)
        .unwrap();
    let a = h.add_client_with_token(token.clone());
    let (mut slog, mut clogs) = (ServerLog::default(), Vec::new());
    connect_all(&mut h, &mut slog, &mut clogs);
    // An eavesdropper replays the same token from its own address.
    let b = h.add_client_with_token(token);
    run_until(
        &mut h,
        &mut slog,
        &mut clogs,
        TICK,
        Duration::from_secs(1),
        |_, _, _| false,
    );
    let first_addr = h.clients[a].addr;
    assert!(
        rejections(&slog).contains(&RejectReason::TokenReplayed { first_addr }),
        "{:?}",
        slog.rejected
    );
    assert_eq!(slog.connected.len(), 1);
    assert!(clogs[b].connected.is_none());
    // The legitimate client keeps working.
    h.clients[a].session.send(&call(1)).unwrap();
    assert!(run_until(
        &mut h,
        &mut slog,
        &mut clogs,
        TICK,
        Duration::from_secs(2),
        |_, _, c| c[a].replies == [1]
    ));
}

#[test]
fn token_is_single_use_even_from_the_same_address() {
    let mut h = Harness::new(5, LinkConditions::PERFECT);
    let token = h
        .issuer
        .issue(&Identity([7; 32]), ConnectionId(1), h.now)
        .unwrap();
    let a = h.add_client_with_token(token.clone());
    let (mut slog, mut clogs) = (ServerLog::default(), Vec::new());
    connect_all(&mut h, &mut slog, &mut clogs);
    h.clients[a].session.disconnect();
    run_until(
        &mut h,
        &mut slog,
        &mut clogs,
        TICK,
        Duration::from_secs(1),
        |_, s, _| !s.disconnected.is_empty(),
    );
    assert_eq!(slog.disconnected[0].1, DisconnectReason::ByClient);
    // Reconnect with the same token from the same address: refused.
    h.clients[a].session =
        ClientSession::new(ClientSessionConfig::default(), token, h.now).unwrap();
    run_until(
        &mut h,
        &mut slog,
        &mut clogs,
        TICK,
        Duration::from_secs(1),
        |_, _, _| false,
    );
    let first_addr = h.clients[a].addr;
    assert!(
        rejections(&slog).contains(&RejectReason::TokenReplayed { first_addr }),
        "{:?}",
        slog.rejected
    );
}

#[test]
fn replayed_packets_are_dropped() {
    let mut h = Harness::new(6, LinkConditions::PERFECT);
    let a = h.add_client();
    let (mut slog, mut clogs) = (ServerLog::default(), Vec::new());
    connect_all(&mut h, &mut slog, &mut clogs);
    h.tap = Some(Vec::new());
    h.clients[a].session.send(&call(5)).unwrap();
    assert!(run_until(
        &mut h,
        &mut slog,
        &mut clogs,
        TICK,
        Duration::from_secs(2),
        |_, _, c| c[a].replies == [5]
    ));
    let captured: Vec<_> = h
        .tap
        .take()
        .unwrap()
        .into_iter()
        .filter(|c| c.to == h.server_addr)
        .collect();
    assert!(!captured.is_empty());
    let before = h.server.stats().dropped_unauthenticated;
    for c in &captured {
        h.inject(c.from, &c.bytes);
    }
    run_until(
        &mut h,
        &mut slog,
        &mut clogs,
        TICK,
        Duration::from_millis(500),
        |_, _, _| false,
    );
    assert_eq!(slog.calls, 1, "the replayed call was not executed again");
    assert_eq!(clogs[a].replies, vec![5]);
    assert!(h.server.stats().dropped_unauthenticated >= before + captured.len() as u64);
}

/// Sends the client's connection request straight to the server (whatever address it names).
fn deliver_request(h: &mut Harness, token: ConnectToken, from: SocketAddr) {
    let mut client = ClientSession::new(ClientSessionConfig::default(), token, h.now).unwrap();
    client.update(h.now);
    let mut out = Vec::new();
    client.drain_transmits(&mut out);
    assert_eq!(out.len(), 1);
    h.inject(from, &out[0].bytes);
}

#[test]
fn forged_tampered_wrong_protocol_and_wrong_server_tokens_are_rejected() {
    let mut h = Harness::new(7, LinkConditions::PERFECT);
    let from: SocketAddr = "127.9.0.1:6000".parse().unwrap();
    let now = h.now;
    let (mut slog, mut clogs) = (ServerLog::default(), Vec::new());

    // Issued with another key.
    let forger = ConnectTokenIssuer::new(
        PrivateKey::from_bytes([0xaa; 32]),
        h.issuer.protocol_id,
        vec![h.server_addr],
    );
    deliver_request(
        &mut h,
        forger
            .issue(&Identity([1; 32]), ConnectionId(1), now)
            .unwrap(),
        from,
    );
    // Tampered private data (e.g. a changed identity).
    let mut tampered = h
        .issuer
        .issue(&Identity([1; 32]), ConnectionId(2), h.now)
        .unwrap();
    tampered.private_data[40] ^= 1;
    deliver_request(&mut h, tampered, from);
    // Expiry moved forward by the client: authenticated data no longer matches.
    let mut extended = h
        .issuer
        .issue(&Identity([1; 32]), ConnectionId(3), h.now)
        .unwrap();
    extended.expire_timestamp += 3600;
    deliver_request(&mut h, extended, from);
    // Other protocol id.
    let mut other = h.issuer.clone();
    other.protocol_id ^= 1;
    deliver_request(
        &mut h,
        other
            .issue(&Identity([1; 32]), ConnectionId(4), now)
            .unwrap(),
        from,
    );
    // Genuine token for another server address.
    let mut elsewhere = h.issuer.clone();
    elsewhere.server_addresses = vec!["127.0.0.1:40001".parse().unwrap()];
    deliver_request(
        &mut h,
        elsewhere
            .issue(&Identity([1; 32]), ConnectionId(5), now)
            .unwrap(),
        from,
    );

    serve(&mut h, &mut slog);
    collect(&mut h, &mut clogs);
    let r = rejections(&slog);
    assert_eq!(r.len(), 5, "{r:?}");
    assert_eq!(r[0], RejectReason::TokenForged);
    assert_eq!(r[1], RejectReason::TokenForged);
    assert_eq!(r[2], RejectReason::TokenForged);
    assert!(matches!(r[3], RejectReason::ProtocolId { .. }));
    assert!(matches!(r[4], RejectReason::WrongServer { .. }));
    assert_eq!(
        h.server.pending_clients(),
        0,
        "no state kept for refused requests"
    );
    let mut out = Vec::new();
    h.server.drain_transmits(&mut out);
    assert!(
        out.is_empty(),
        "nothing is sent back to refused requests: {out:?}"
    );
}

#[test]
fn duplicate_client_id_is_rejected() {
    let mut h = Harness::new(8, LinkConditions::PERFECT);
    h.add_client(); // client id 1
    let (mut slog, mut clogs) = (ServerLog::default(), Vec::new());
    connect_all(&mut h, &mut slog, &mut clogs);
    let dup = h
        .issuer
        .issue(&Identity([2; 32]), ConnectionId(1), h.now)
        .unwrap();
    h.add_client_with_token(dup);
    run_until(
        &mut h,
        &mut slog,
        &mut clogs,
        TICK,
        Duration::from_secs(1),
        |_, _, _| false,
    );
    assert!(rejections(&slog).contains(&RejectReason::ClientIdInUse(
        orrery_netcode::ConnectionId(1)
    )));
    assert_eq!(slog.connected.len(), 1);
}

#[test]
fn full_server_denies_with_a_clear_reason() {
    let mut h = Harness::with_config(9, LinkConditions::PERFECT, |c| c.max_clients = 2);
    for _ in 0..2 {
        h.add_client();
    }
    let (mut slog, mut clogs) = (ServerLog::default(), Vec::new());
    connect_all(&mut h, &mut slog, &mut clogs);
    let late = h.add_client();
    run_until(
        &mut h,
        &mut slog,
        &mut clogs,
        TICK,
        Duration::from_secs(2),
        |_, _, c| c[late].disconnected.is_some(),
    );
    assert_eq!(
        clogs[late].disconnected,
        Some(DisconnectReason::ConnectionDenied)
    );
    assert!(rejections(&slog).contains(&RejectReason::ServerFull { max_clients: 2 }));
}

#[test]
fn protocol_version_mismatch_is_refused_clearly() {
    let mut h = Harness::new(10, LinkConditions::PERFECT);
    h.client_config.protocol_version = orrery_netcode::PROTOCOL_VERSION + 1;
    let c = h.add_client();
    let (mut slog, mut clogs) = (ServerLog::default(), Vec::new());
    run_until(
        &mut h,
        &mut slog,
        &mut clogs,
        TICK,
        Duration::from_secs(2),
        |_, _, c| c[0].disconnected.is_some(),
    );
    let v = orrery_netcode::PROTOCOL_VERSION;
    let expected = RejectReason::VersionMismatch {
        client: v + 1,
        server: v,
    };
    assert_eq!(rejections(&slog), vec![expected.clone()]);
    assert_eq!(
        clogs[c].disconnected,
        Some(DisconnectReason::HelloRefused(expected.to_string()))
    );
    assert!(
        slog.connected.is_empty() && slog.disconnected.is_empty(),
        "never connected from the app's view"
    );
}

/// A client that stops reading: its reliable backlog grows until the limit, then it is
/// disconnected with a reason; the other client keeps receiving everything.
#[test]
fn stalled_client_is_disconnected_others_unaffected() {
    let mut h = Harness::with_config(
        11,
        LinkConditions::lossy(0.0, Duration::from_millis(10), Duration::ZERO),
        |c| {
            c.max_backlog = 64 * 1024;
        },
    );
    let (healthy, stalled) = (h.add_client(), h.add_client());
    let (mut slog, mut clogs) = (ServerLog::default(), Vec::new());
    connect_all(&mut h, &mut slog, &mut clogs);
    h.clients[stalled].paused = true;
    let ids: Vec<_> = slog.connected.keys().copied().collect();
    let mut sent = 0u64;
    let mut backlog_error = None;
    for tick in 0..100u64 {
        let update = ServerMessage::TableUpdate {
            table_id: 1,
            tick,
            rows: noise(4000, tick),
        };
        let encoded = orrery_netcode::Encoded::server(&update);
        for &id in &ids {
            match h.server.send_encoded(id, &encoded) {
                Ok(()) => {}
                Err(e @ SendError::BacklogExceeded { .. }) => backlog_error = Some((id, e)),
                Err(SendError::UnknownClient(_)) => {}
                Err(e) => panic!("{e}"),
            }
        }
        sent += 1;
        h.step(TICK);
        serve(&mut h, &mut slog);
        collect(&mut h, &mut clogs);
    }
    run_until(
        &mut h,
        &mut slog,
        &mut clogs,
        TICK,
        Duration::from_secs(2),
        |_, _, c| c[healthy].messages.len() == 100,
    );
    let stalled_id = orrery_netcode::ConnectionId(stalled as u64 + 1);
    let (id, err) = backlog_error.expect("the stalled client hit the backlog limit");
    assert_eq!(id, stalled_id);
    assert!(
        matches!(err, SendError::BacklogExceeded { limit: 65536, .. }),
        "{err}"
    );
    assert_eq!(slog.disconnected.len(), 1);
    assert_eq!(slog.disconnected[0].0, stalled_id);
    assert!(matches!(
        slog.disconnected[0].1,
        DisconnectReason::BacklogExceeded { limit: 65536, .. }
    ));
    // The healthy client got every update, in order, and is still connected.
    let ticks: Vec<u64> = clogs[healthy]
        .messages
        .iter()
        .filter_map(|m| match m {
            ServerMessage::TableUpdate { tick, .. } => Some(*tick),
            _ => None,
        })
        .collect();
    assert_eq!(ticks, (0..sent).collect::<Vec<_>>());
    assert!(h.clients[healthy].session.is_connected());
    assert!(h.server.client_stats(stalled_id).is_none());
}

#[test]
fn oversized_messages_are_refused_with_an_error() {
    let mut h = Harness::new(12, LinkConditions::PERFECT);
    let (good, big, just_over) = (h.add_client(), h.add_client(), h.add_client());
    let (mut slog, mut clogs) = (ServerLog::default(), Vec::new());
    connect_all(&mut h, &mut slog, &mut clogs);
    let max = h.server.config().max_client_message;
    let huge = ClientMessage::CallReducer {
        request_id: 1,
        reducer: "x".into(),
        args: noise(max * 2, 1),
        durable: false,
    };
    // The client library refuses it up front.
    let err = h.clients[big].session.send(&huge).unwrap_err();
    assert!(
        matches!(err, SendError::MessageTooLarge { max: m, .. } if m == max),
        "{err}"
    );
    assert!(h.clients[big].session.send_unreliable(&huge).is_err());
    // A client that bypasses the check is rejected by the server (slice count over the limit)...
    h.clients[big]
        .session
        .send_raw_unchecked(bitcode::encode(&huge));
    // ...and so is one whose message is just over the limit (caught after reassembly).
    let over = ClientMessage::CallReducer {
        request_id: 2,
        reducer: "x".into(),
        args: noise(max - 10, 2),
        durable: false,
    };
    h.clients[just_over]
        .session
        .send_raw_unchecked(bitcode::encode(&over));
    h.clients[good].session.send(&call(3)).unwrap();
    assert!(run_until(
        &mut h,
        &mut slog,
        &mut clogs,
        TICK,
        Duration::from_secs(3),
        |_, s, c| { s.disconnected.len() == 2 && c[good].replies == [3] }
    ));
    let r = rejections(&slog);
    assert_eq!(r.len(), 2, "{r:?}");
    assert!(
        r.iter()
            .all(|r| matches!(r, RejectReason::MessageTooLarge { max: m, .. } if *m == max)),
        "{r:?}"
    );
    assert!(h.clients[good].session.is_connected());
    // Server side: too large for the client, or for one unreliable datagram.
    let id = *slog
        .connected
        .keys()
        .find(|id| id.0 == good as u64 + 1)
        .unwrap();
    let big_reply = ServerMessage::TableUpdate {
        table_id: 1,
        tick: 0,
        rows: noise(MAX_UNRELIABLE_MESSAGE, 3),
    };
    assert!(matches!(
        h.server.send_unreliable(id, &big_reply),
        Err(SendError::MessageTooLarge { .. })
    ));
}

#[test]
fn undecodable_envelope_disconnects_only_the_sender() {
    let mut h = Harness::new(13, LinkConditions::PERFECT);
    let (good, bad) = (h.add_client(), h.add_client());
    let (mut slog, mut clogs) = (ServerLog::default(), Vec::new());
    connect_all(&mut h, &mut slog, &mut clogs);
    h.clients[bad].session.send_raw_unchecked(vec![0xff; 40]);
    h.clients[good].session.send(&call(9)).unwrap();
    assert!(run_until(
        &mut h,
        &mut slog,
        &mut clogs,
        TICK,
        Duration::from_secs(2),
        |_, s, c| {
            s.disconnected.len() == 1 && c[good].replies == [9] && c[bad].disconnected.is_some()
        }
    ));
    assert!(matches!(
        rejections(&slog)[..],
        [RejectReason::Malformed(_)]
    ));
    assert!(matches!(
        clogs[bad].disconnected,
        Some(DisconnectReason::ByServer(_))
    ));
}

#[test]
fn server_disconnect_carries_the_reason_and_timeouts_fire() {
    let mut h = Harness::new(14, LinkConditions::PERFECT);
    let (a, b) = (h.add_client(), h.add_client());
    let (mut slog, mut clogs) = (ServerLog::default(), Vec::new());
    connect_all(&mut h, &mut slog, &mut clogs);
    let id_a = orrery_netcode::ConnectionId(a as u64 + 1);
    assert!(h.server.disconnect(id_a, "kicked for testing"));
    run_until(
        &mut h,
        &mut slog,
        &mut clogs,
        TICK,
        Duration::from_secs(1),
        |_, _, c| c[a].disconnected.is_some(),
    );
    assert_eq!(
        clogs[a].disconnected,
        Some(DisconnectReason::ByServer("kicked for testing".into()))
    );
    // A client that vanishes (no datagrams either way) times out on the server.
    h.clients[b].paused = true;
    h.clients[b].link = Some(LinkConditions {
        loss: 1.0,
        ..LinkConditions::PERFECT
    });
    run_until(
        &mut h,
        &mut slog,
        &mut clogs,
        TICK,
        Duration::from_secs(15),
        |_, s, _| s.disconnected.len() == 2,
    );
    assert_eq!(
        slog.disconnected[1],
        (
            orrery_netcode::ConnectionId(b as u64 + 1),
            DisconnectReason::TimedOut
        )
    );
    // Events come in pairs: every Connected has exactly one Disconnected.
    assert_eq!(h.server.stats().connects, 2);
    assert_eq!(h.server.stats().disconnects, 2);
    assert!(matches!(
        h.clients[a].session.poll_event(),
        None | Some(ClientEvent::Message { .. })
    ));
}

/// One IP address holds a bounded share of the handshake table, whatever ports it uses.
#[test]
fn one_address_holds_a_bounded_number_of_pending_handshakes() {
    let mut h = Harness::with_config(21, LinkConditions::PERFECT, |c| c.max_pending_per_ip = 2);
    let (mut slog, mut clogs) = (ServerLog::default(), Vec::new());
    for port in 0..5u16 {
        let token = h
            .issuer
            .issue(
                &Identity([3; 32]),
                ConnectionId(100 + u64::from(port)),
                h.now,
            )
            .unwrap();
        deliver_request(
            &mut h,
            token,
            SocketAddr::from(([127, 9, 0, 1], 6000 + port)),
        );
    }
    h.step(TICK);
    serve(&mut h, &mut slog);
    collect(&mut h, &mut clogs);
    assert_eq!(h.server.pending_clients(), 2);
    let from_address = slog
        .rejected
        .iter()
        .filter(|e| {
            matches!(
                e,
                ServerEvent::Rejected {
                    reason: RejectReason::TooManyPendingFromAddress { max_per_address: 2 },
                    ..
                }
            )
        })
        .count();
    assert_eq!(from_address, 3, "{:?}", slog.rejected);
    // Another address still gets a handshake.
    let token = h
        .issuer
        .issue(&Identity([4; 32]), ConnectionId(200), h.now)
        .unwrap();
    deliver_request(&mut h, token, SocketAddr::from(([127, 9, 0, 2], 6000)));
    h.step(TICK);
    assert_eq!(h.server.pending_clients(), 3);
}

/// A handshake table filled by requests that never answer their challenge does not lock a
/// legitimate player out: the oldest pending handshake makes room, and the player, who answers
/// within a round trip, connects.
#[test]
fn a_full_handshake_table_evicts_its_oldest_entry_instead_of_refusing() {
    let mut h = Harness::with_config(22, LinkConditions::PERFECT, |c| c.max_pending = 8);
    let (mut slog, mut clogs) = (ServerLog::default(), Vec::new());
    for i in 0..20u8 {
        let token = h
            .issuer
            .issue(
                &Identity([5; 32]),
                ConnectionId(1_000 + u64::from(i)),
                h.now,
            )
            .unwrap();
        deliver_request(&mut h, token, SocketAddr::from(([127, 50, 0, i], 7000)));
        h.step(TICK);
    }
    serve(&mut h, &mut slog);
    assert_eq!(h.server.pending_clients(), 8);
    assert_eq!(h.server.stats().pending_evicted, 12);
    assert!(slog.rejected.is_empty(), "{:?}", slog.rejected);
    h.add_client();
    connect_all(&mut h, &mut slog, &mut clogs);
    assert!(h.server.stats().pending_evicted >= 13);
}

/// A client that starts a new session from the address of a connection the server still
/// holds (its disconnect packets were lost: a zone move back to this server, a restart on the
/// same port) connects at once; the old connection ends as `Replaced`, not by timing out.
#[test]
fn a_new_session_from_a_connected_address_replaces_the_old_connection() {
    let mut h = Harness::new(21, LinkConditions::PERFECT);
    let me = Identity([7; 32]);
    let first = h.issuer.issue(&me, ConnectionId(1), h.now).unwrap();
    let a = h.add_client_with_token(first);
    let (mut slog, mut clogs) = (ServerLog::default(), Vec::new());
    connect_all(&mut h, &mut slog, &mut clogs);
    // A new session on the same socket; the old one vanishes without a word.
    let second = h.issuer.issue(&me, ConnectionId(2), h.now).unwrap();
    h.clients[a].session =
        ClientSession::new(ClientSessionConfig::default(), second, h.now).unwrap();
    clogs[a] = ClientLog::default();
    assert!(
        run_until(
            &mut h,
            &mut slog,
            &mut clogs,
            TICK,
            Duration::from_secs(1),
            |_, s, c| c[a].connected.is_some() && !s.disconnected.is_empty()
        ),
        "server {slog:?}, client {:?}",
        clogs[a]
    );
    assert_eq!(
        slog.disconnected,
        vec![(ConnectionId(1), DisconnectReason::Replaced)]
    );
    assert_eq!(clogs[a].connected, Some((me, ConnectionId(2))));
    assert!(rejections(&slog).is_empty(), "{:?}", slog.rejected);
    h.clients[a].session.send(&call(4)).unwrap();
    assert!(run_until(
        &mut h,
        &mut slog,
        &mut clogs,
        TICK,
        Duration::from_secs(2),
        |_, _, c| c[a].replies == [4]
    ));
}

/// Someone who spoofs a connected client's address with a token of their own never gets
/// the challenge (it goes to the address), so the connection there goes on.
#[test]
fn a_spoofed_request_from_a_connected_address_ends_nothing() {
    let mut h = Harness::new(22, LinkConditions::PERFECT);
    let victim = h.add_client();
    let (mut slog, mut clogs) = (ServerLog::default(), Vec::new());
    connect_all(&mut h, &mut slog, &mut clogs);
    let attacker = h
        .issuer
        .issue(&Identity([0xBA; 32]), ConnectionId(99), h.now)
        .unwrap();
    for _ in 0..5 {
        let addr = h.clients[victim].addr;
        deliver_request(&mut h, attacker.clone(), addr);
        run_until(
            &mut h,
            &mut slog,
            &mut clogs,
            TICK,
            Duration::from_millis(200),
            |_, _, _| false,
        );
    }
    assert!(slog.disconnected.is_empty(), "{:?}", slog.disconnected);
    assert_eq!(slog.connected.len(), 1);
    h.clients[victim].session.send(&call(9)).unwrap();
    assert!(run_until(
        &mut h,
        &mut slog,
        &mut clogs,
        TICK,
        Duration::from_secs(2),
        |_, _, c| c[victim].replies == [9]
    ));
}
