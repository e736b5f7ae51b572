//! Real UDP over loopback: one server process (a thread with one socket) and many clients
//! (one socket each), beyond renet_netcode's 1,024-client cap.
//!
//! CI runs 1,100 clients. `cargo test --release -p orrery-netcode --test udp -- --ignored
//! --nocapture` runs 4,096 and prints connect time and server CPU per tick.

use orrery_netcode::{ConnectionId, Identity};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use orrery_netcode::udp::UdpEndpoint;
use orrery_netcode::{
    ClientEvent, ClientMessage, ClientSession, ClientSessionConfig, ConnectTokenIssuer,
    DEFAULT_PROTOCOL_ID, Encoded, PrivateKey, ServerEvent, ServerMessage, ServerSession,
    ServerSessionConfig, ServerStats, unix_now,
};

const TICK: Duration = Duration::from_millis(50); // 20 Hz

/// What one load run measured (printed through `Debug` by the `--ignored` runs).
#[derive(Debug)]
#[allow(dead_code)]
struct Report {
    clients: usize,
    connect_time: Duration,
    /// Server ticks during the steady phase.
    ticks: usize,
    /// Server thread CPU time per tick while every client gets a 100-byte update each tick
    /// (from /proc/thread-self/schedstat: preemption by other processes is not counted).
    cpu_per_tick: Duration,
    /// Server thread CPU time per tick with connected, idle clients (keep-alives only).
    idle_cpu_per_tick: Duration,
    idle_ticks: u32,
    /// Server thread busy wall time (receive + events + update + send) per tick, mean and max.
    busy_mean: Duration,
    busy_max: Duration,
    /// `update` + `flush` per tick, mean.
    update_flush_mean: Duration,
    replies: u64,
    updates_received: u64,
    server: ServerStats,
}

struct ServerOutcome {
    /// CPU time and ticks per mode (0 none, 1 idle, 2 broadcast).
    cpu: [Duration; 3],
    ticks: [u32; 3],
    busy: Vec<Duration>,
    update_flush: Vec<Duration>,
    stats: ServerStats,
    rejections: u64,
}

fn noise(len: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// CPU time of the calling thread (Linux: first field of /proc/thread-self/schedstat, in ns).
fn thread_cpu() -> Duration {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .map_or(Duration::ZERO, Duration::from_nanos)
}

fn server_thread(
    mut session: ServerSession,
    mut udp: UdpEndpoint,
    stop: Arc<AtomicBool>,
    mode: Arc<AtomicU8>,
) -> ServerOutcome {
    let mut outcome = ServerOutcome {
        cpu: [Duration::ZERO; 3],
        ticks: [0; 3],
        busy: Vec::new(),
        update_flush: Vec::new(),
        stats: ServerStats::default(),
        rejections: 0,
    };
    let update = Encoded::server(&ServerMessage::TableUpdate {
        table_id: 1,
        tick: 0,
        rows: noise(100),
    });
    let mut clients = Vec::new();
    let mut next_tick = Instant::now() + TICK;
    let mut busy = Duration::ZERO;
    let mut tick = 0u64;
    let mut cpu_last = thread_cpu();
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now < next_tick {
            let _ = udp.wait(next_tick - now);
        }
        let t0 = Instant::now();
        if let Err(e) = udp.recv(&mut session, unix_now()) {
            panic!("server recv: {e}");
        }
        while let Some(ev) = session.poll_event() {
            match ev {
                ServerEvent::Connected { client, .. } => clients.push(client),
                ServerEvent::Message {
                    client,
                    msg: ClientMessage::CallReducer { request_id, .. },
                    ..
                } => {
                    let reply = ServerMessage::ReducerReply {
                        request_id,
                        tick,
                        result: Ok(()),
                        durable: false,
                    };
                    let _ = session.send(client, &reply);
                }
                ServerEvent::Rejected { .. } => outcome.rejections += 1,
                _ => {}
            }
        }
        let is_tick = Instant::now() >= next_tick;
        if is_tick {
            tick += 1;
            let m = mode.load(Ordering::Relaxed) as usize % 3;
            let steady_now = m == 2;
            if steady_now {
                for &c in &clients {
                    let _ = session.send_encoded(c, &update);
                }
            }
            let u0 = Instant::now();
            session.update(unix_now());
            let _ = udp.flush(&mut session);
            let uf = u0.elapsed();
            busy += t0.elapsed();
            if steady_now {
                outcome.busy.push(busy);
                outcome.update_flush.push(uf);
            }
            let cpu_now = thread_cpu();
            outcome.cpu[m] += cpu_now.saturating_sub(cpu_last);
            outcome.ticks[m] += 1;
            cpu_last = cpu_now;
            busy = Duration::ZERO;
            next_tick += TICK;
            if next_tick < Instant::now() {
                next_tick = Instant::now() + TICK; // overran: skip, do not catch up
            }
        } else {
            let _ = udp.flush(&mut session); // handshake answers go out at once
            busy += t0.elapsed();
        }
    }
    outcome.stats = session.stats().clone();
    outcome
}

struct Client {
    session: ClientSession,
    udp: UdpEndpoint,
    connected: bool,
    replies: Vec<u32>,
    updates: u64,
}

fn run_load(n: usize, calls: u32, steady_for: Duration) -> Report {
    let server_udp = UdpEndpoint::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let server_addr: SocketAddr = server_udp.local_addr();
    let key = PrivateKey::generate().unwrap();
    let mut config = ServerSessionConfig::new(key.clone(), DEFAULT_PROTOCOL_ID, vec![server_addr]);
    config.max_pending = n.max(1024);
    // Every client of this test shares one loopback address.
    config.max_pending_per_ip = n;
    let session = ServerSession::new(config, unix_now()).unwrap();
    let mut issuer = ConnectTokenIssuer::new(key, DEFAULT_PROTOCOL_ID, vec![server_addr]);
    issuer.expire_after = Duration::from_secs(120);
    issuer.timeout = Duration::from_secs(30);

    let stop = Arc::new(AtomicBool::new(false));
    let mode = Arc::new(AtomicU8::new(0));
    let server = {
        let (stop, mode) = (stop.clone(), mode.clone());
        thread::spawn(move || server_thread(session, server_udp, stop, mode))
    };

    let mut clients: Vec<Client> = (0..n)
        .map(|i| {
            let mut identity = [0u8; 32];
            identity[..8].copy_from_slice(&(i as u64).to_le_bytes());
            let token = issuer
                .issue(&Identity(identity), ConnectionId(i as u64 + 1), unix_now())
                .unwrap();
            // Through bytes, as a real client gets it from the control plane.
            let session = ClientSession::from_token_bytes(
                ClientSessionConfig::default(),
                &token.to_bytes(),
                unix_now(),
            )
            .unwrap();
            let udp = UdpEndpoint::bind("127.0.0.1:0".parse().unwrap()).unwrap();
            Client {
                session,
                udp,
                connected: false,
                replies: Vec::new(),
                updates: 0,
            }
        })
        .collect();

    let pass = |clients: &mut [Client]| {
        for c in clients.iter_mut() {
            let now = unix_now();
            c.udp.recv(&mut c.session, now).unwrap();
            while let Some(ev) = c.session.poll_event() {
                match ev {
                    ClientEvent::Connected { .. } => c.connected = true,
                    ClientEvent::Message {
                        msg: ServerMessage::ReducerReply { request_id, .. },
                        ..
                    } => c.replies.push(request_id),
                    ClientEvent::Message {
                        msg: ServerMessage::TableUpdate { .. },
                        ..
                    } => c.updates += 1,
                    ClientEvent::Message { .. } => {}
                    ClientEvent::Disconnected { reason } => {
                        panic!("client disconnected: {reason}; {:?}", c.session.stats())
                    }
                }
            }
            c.session.update(now);
            c.udp.flush(&mut c.session).unwrap();
        }
    };

    // Connect everyone at once.
    let start = Instant::now();
    let deadline = start + Duration::from_secs(120);
    while !clients.iter().all(|c| c.connected) {
        assert!(
            Instant::now() < deadline,
            "{} of {n} connected",
            clients.iter().filter(|c| c.connected).count()
        );
        pass(&mut clients);
        thread::sleep(Duration::from_millis(2));
    }
    let connect_time = start.elapsed();

    // Every client calls `calls` reducers; every reply arrives once, in order.
    for c in clients.iter_mut() {
        for id in 0..calls {
            c.session
                .send(&ClientMessage::CallReducer {
                    request_id: id,
                    reducer: "r".into(),
                    args: noise(16),
                    durable: false,
                })
                .unwrap();
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while !clients.iter().all(|c| c.replies.len() >= calls as usize) {
        assert!(Instant::now() < deadline, "replies missing");
        pass(&mut clients);
        thread::sleep(Duration::from_millis(2));
    }
    let expected: Vec<u32> = (0..calls).collect();
    for c in &clients {
        assert_eq!(c.replies, expected);
    }

    // Broadcast: the server sends every client a 100-byte update each tick.
    // Idle: connected clients, keep-alives only.
    mode.store(1, Ordering::Relaxed);
    let end = Instant::now() + steady_for;
    while Instant::now() < end {
        pass(&mut clients);
        thread::sleep(Duration::from_millis(2));
    }
    mode.store(2, Ordering::Relaxed);
    let end = Instant::now() + steady_for;
    while Instant::now() < end {
        pass(&mut clients);
        thread::sleep(Duration::from_millis(2));
    }
    mode.store(0, Ordering::Relaxed);
    let settle = Instant::now() + Duration::from_millis(300);
    while Instant::now() < settle {
        pass(&mut clients);
        thread::sleep(Duration::from_millis(2));
    }
    stop.store(true, Ordering::Relaxed);
    let outcome = server.join().unwrap();
    assert_eq!(outcome.rejections, 0, "no connection attempt was refused");
    assert!(clients.iter().all(|c| c.session.is_connected()));

    let ticks = outcome.busy.len().max(1);
    let sum = |v: &[Duration]| v.iter().sum::<Duration>();
    Report {
        clients: n,
        connect_time,
        ticks: outcome.busy.len(),
        cpu_per_tick: outcome.cpu[2] / outcome.ticks[2].max(1),
        idle_cpu_per_tick: outcome.cpu[1] / outcome.ticks[1].max(1),
        idle_ticks: outcome.ticks[1],
        busy_mean: sum(&outcome.busy) / ticks as u32,
        busy_max: outcome.busy.iter().copied().max().unwrap_or_default(),
        update_flush_mean: sum(&outcome.update_flush) / ticks as u32,
        replies: clients.iter().map(|c| c.replies.len() as u64).sum(),
        updates_received: clients.iter().map(|c| c.updates).sum(),
        server: outcome.stats,
    }
}

/// More clients than renet_netcode's 1,024 cap, on one server socket, in CI.
#[test]
fn eleven_hundred_clients_over_real_udp() {
    let r = run_load(1_100, 3, Duration::from_millis(500));
    assert_eq!(r.replies, 3 * 1_100);
    assert!(r.updates_received > 0);
    assert!(r.connect_time < Duration::from_secs(60), "{r:?}");
    assert_eq!(r.server.connects, 1_100);
}

#[test]
#[ignore = "load: run with --release -- --ignored --nocapture"]
#[allow(clippy::print_stderr)] // reports the measured numbers
fn report_1100_clients() {
    let r = run_load(1_100, 3, Duration::from_secs(5));
    eprintln!("{r:#?}");
}

#[test]
#[ignore = "load: run with --release -- --ignored --nocapture"]
#[allow(clippy::print_stderr)] // reports the measured numbers
fn four_thousand_ninety_six_clients_over_real_udp() {
    let r = run_load(4_096, 3, Duration::from_secs(5));
    eprintln!("{r:#?}");
    assert_eq!(r.replies, 3 * 4_096);
    assert_eq!(r.server.connects, 4_096);
}
