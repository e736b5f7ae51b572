//! The batching socket edge (`Endpoint::enable_batching`, quinn-udp) over loopback: batched
//! receives deliver every datagram intact with its sender; GSO sends split back into the
//! queued datagrams at the receiver, in order.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use orrery_netcode::Transmit;
use orrery_netcode::udp::{Session, UdpEndpoint};

/// Records what it receives and sends what it is given.
#[derive(Default)]
struct Recorder {
    received: Vec<(SocketAddr, Vec<u8>)>,
    to_send: Vec<Transmit>,
}

impl Session for Recorder {
    fn handle_datagram(&mut self, _now: Duration, from: SocketAddr, bytes: &[u8]) {
        self.received.push((from, bytes.to_vec()));
    }
    fn drain_transmits(&mut self, out: &mut Vec<Transmit>) {
        out.append(&mut self.to_send);
    }
}

fn payload(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|j| (i * 31 + j) as u8).collect()
}

fn receive(endpoint: &mut UdpEndpoint, into: &mut Recorder, count: usize) {
    let end = Instant::now() + Duration::from_secs(10);
    while into.received.len() < count {
        assert!(
            Instant::now() < end,
            "got {} of {count}",
            into.received.len()
        );
        endpoint.recv(into, Duration::ZERO).unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn batched_receive_delivers_every_datagram_with_its_sender() {
    let mut server = UdpEndpoint::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    server.enable_batching().unwrap();
    assert!(server.is_batching());
    let senders: Vec<std::net::UdpSocket> = (0..4)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    let mut expected = Vec::new();
    for i in 0..200 {
        let sender = &senders[i % senders.len()];
        // Sizes vary (GRO coalesces only equal sizes from one flow; both cases occur).
        let bytes = payload(i, if i % 3 == 0 { 1200 } else { 40 + i });
        sender.send_to(&bytes, server.local_addr()).unwrap();
        expected.push((sender.local_addr().unwrap(), bytes));
    }
    let mut got = Recorder::default();
    receive(&mut server, &mut got, expected.len());
    assert_eq!(got.received.len(), expected.len());
    // Per sender, datagrams arrive in the order sent.
    for sender in &senders {
        let addr = sender.local_addr().unwrap();
        let sent: Vec<_> = expected.iter().filter(|(a, _)| *a == addr).collect();
        let recv: Vec<_> = got.received.iter().filter(|(a, _)| *a == addr).collect();
        assert_eq!(sent, recv);
    }
    let stats = server.stats();
    assert_eq!(stats.received, 200);
    assert!(stats.recv_calls <= stats.received);
}

#[test]
fn gso_sends_arrive_as_the_queued_datagrams() {
    let mut server = UdpEndpoint::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    server.enable_batching().unwrap();
    let mut a = UdpEndpoint::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let mut b = UdpEndpoint::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let mut session = Recorder::default();
    // To a: ten full fragments and a short last one (one GSO send where offered);
    // to b: sizes that differ (one send each but the equal pair).
    let mut to_a = Vec::new();
    for i in 0..10 {
        to_a.push(payload(i, 1000));
    }
    to_a.push(payload(10, 300));
    let to_b = vec![payload(20, 500), payload(21, 700), payload(22, 700)];
    for bytes in &to_a {
        session.to_send.push(Transmit {
            to: a.local_addr(),
            bytes: bytes.clone(),
        });
    }
    for bytes in &to_b {
        session.to_send.push(Transmit {
            to: b.local_addr(),
            bytes: bytes.clone(),
        });
    }
    let sent = server.flush(&mut session).unwrap();
    assert_eq!(sent, 14);
    let stats = server.stats();
    assert_eq!(stats.sent, 14);
    if server.max_gso_segments() > 1 {
        // a: 11 in one; b: 500 alone, then 700 + 700 together.
        assert_eq!(stats.send_calls, 3, "{stats:?}");
    } else {
        assert_eq!(stats.send_calls, 14);
    }
    let (mut got_a, mut got_b) = (Recorder::default(), Recorder::default());
    receive(&mut a, &mut got_a, to_a.len());
    receive(&mut b, &mut got_b, to_b.len());
    let bytes = |r: &Recorder| {
        r.received
            .iter()
            .map(|(_, b)| b.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(bytes(&got_a), to_a);
    assert_eq!(bytes(&got_b), to_b);
    assert!(
        got_a
            .received
            .iter()
            .all(|(from, _)| *from == server.local_addr())
    );
}
