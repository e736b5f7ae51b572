//! Wire compatibility with `renetcode` 2.0 (netcode 1.02): our tokens and handshake are the
//! standard's, so the security analysis of netcode applies to them.

use orrery_netcode::{ConnectionId, Identity};
use std::net::SocketAddr;
use std::time::Duration;

use orrery_netcode::sim::SIM_EPOCH;
use orrery_netcode::{
    ClientSession, ClientSessionConfig, ConnectTokenIssuer, DEFAULT_PROTOCOL_ID, PrivateKey,
    ServerSession, ServerSessionConfig,
};

const SERVER: &str = "127.0.0.1:40000";
const CLIENT: &str = "127.0.0.1:50000";

#[test]
fn renetcode_client_completes_the_handshake_with_our_server() {
    let server_addr: SocketAddr = SERVER.parse().unwrap();
    let client_addr: SocketAddr = CLIENT.parse().unwrap();
    let key = PrivateKey::from_bytes([3; 32]);
    let issuer = ConnectTokenIssuer::new(key.clone(), DEFAULT_PROTOCOL_ID, vec![server_addr]);
    let token = issuer
        .issue(&Identity([5; 32]), ConnectionId(77), SIM_EPOCH)
        .unwrap();
    let bytes = token.to_bytes();

    // renetcode reads our token bytes...
    let theirs = renetcode::ConnectToken::read(&mut &bytes[..]).unwrap();
    assert_eq!(theirs.client_id, 77);
    assert_eq!(theirs.protocol_id, DEFAULT_PROTOCOL_ID);
    assert_eq!(theirs.server_addresses[0], Some(server_addr));
    // ...and writes the same bytes back.
    let mut rewritten = Vec::new();
    theirs.write(&mut rewritten).unwrap();
    assert_eq!(rewritten, bytes);

    let mut server = ServerSession::new(
        ServerSessionConfig::new(key, DEFAULT_PROTOCOL_ID, vec![server_addr]),
        SIM_EPOCH,
    )
    .unwrap();
    let auth = renetcode::ClientAuthentication::Secure {
        connect_token: theirs,
    };
    let mut client = renetcode::NetcodeClient::new(SIM_EPOCH, auth).unwrap();
    let mut out = Vec::new();
    let mut now = SIM_EPOCH;
    for _ in 0..20 {
        now += Duration::from_millis(100);
        if let Some((packet, to)) = client.update(Duration::from_millis(100)) {
            assert_eq!(to, server_addr);
            server.handle_datagram(now, client_addr, packet);
        }
        server.update(now);
        server.drain_transmits(&mut out);
        for mut t in out.drain(..) {
            assert_eq!(t.to, client_addr);
            client.process_packet(&mut t.bytes);
        }
        if client.is_connected() {
            break;
        }
    }
    assert!(
        client.is_connected(),
        "renetcode client connected to our server"
    );
    assert_eq!(server.pending_clients(), 0);
}

#[test]
fn our_client_completes_the_handshake_with_a_renetcode_server() {
    let server_addr: SocketAddr = SERVER.parse().unwrap();
    let client_addr: SocketAddr = CLIENT.parse().unwrap();
    let key = [9u8; 32];
    let mut user_data = [0u8; 256];
    user_data[..32].copy_from_slice(&[0x42; 32]);
    let token = renetcode::ConnectToken::generate(
        SIM_EPOCH,
        DEFAULT_PROTOCOL_ID,
        30,
        12,
        10,
        vec![server_addr],
        Some(&user_data),
        &key,
    )
    .unwrap();
    let mut bytes = Vec::new();
    token.write(&mut bytes).unwrap();

    let mut server = renetcode::NetcodeServer::new(renetcode::ServerConfig {
        current_time: SIM_EPOCH,
        max_clients: 4,
        protocol_id: DEFAULT_PROTOCOL_ID,
        public_addresses: vec![server_addr],
        authentication: renetcode::ServerAuthentication::Secure { private_key: key },
    });
    let mut client =
        ClientSession::from_token_bytes(ClientSessionConfig::default(), &bytes, SIM_EPOCH).unwrap();
    let mut now = SIM_EPOCH;
    let mut out = Vec::new();
    let mut connected = None;
    for _ in 0..20 {
        now += Duration::from_millis(100);
        server.update(Duration::from_millis(100));
        client.update(now);
        client.drain_transmits(&mut out);
        for mut t in out.drain(..) {
            assert_eq!(t.to, server_addr);
            match server.process_packet(client_addr, &mut t.bytes) {
                renetcode::ServerResult::PacketToSend { payload, addr } => {
                    assert_eq!(addr, client_addr);
                    client.handle_datagram(now, server_addr, payload);
                }
                renetcode::ServerResult::ClientConnected {
                    client_id,
                    user_data,
                    payload,
                    ..
                } => {
                    connected = Some((client_id, user_data[..32].to_vec()));
                    client.handle_datagram(now, server_addr, payload);
                }
                _ => {}
            }
        }
        if connected.is_some() {
            break;
        }
    }
    assert_eq!(
        connected,
        Some((12, vec![0x42; 32])),
        "renetcode server accepted our client"
    );
}

/// Why Orrery has its own netcode server: renetcode 2.0 panics on an 18-byte datagram whose
/// prefix announces a 9-byte sequence, if it comes from (or is spoofed as) a connected client's
/// address. Ours counts it as malformed. If a renetcode upgrade fixes it, this test fails.
#[test]
fn crafted_prefix_panics_renetcode_but_not_us() {
    let server_addr: SocketAddr = SERVER.parse().unwrap();
    let client_addr: SocketAddr = CLIENT.parse().unwrap();
    let key = [9u8; 32];
    let token =
        renetcode::ConnectToken::generate(SIM_EPOCH, 1, 30, 12, 10, vec![server_addr], None, &key)
            .unwrap();
    let mut server = renetcode::NetcodeServer::new(renetcode::ServerConfig {
        current_time: SIM_EPOCH,
        max_clients: 4,
        protocol_id: 1,
        public_addresses: vec![server_addr],
        authentication: renetcode::ServerAuthentication::Secure { private_key: key },
    });
    let mut client = renetcode::NetcodeClient::new(
        SIM_EPOCH,
        renetcode::ClientAuthentication::Secure {
            connect_token: token,
        },
    )
    .unwrap();
    for _ in 0..10 {
        if let Some((packet, _)) = client.update(Duration::from_millis(100)) {
            let mut packet = packet.to_vec();
            if let renetcode::ServerResult::PacketToSend { payload, .. }
            | renetcode::ServerResult::ClientConnected { payload, .. } =
                server.process_packet(client_addr, &mut packet)
            {
                client.process_packet(payload);
            }
        }
    }
    assert!(client.is_connected());
    let mut crafted = [0u8; 18];
    crafted[0] = 0x95; // payload packet, "9-byte" sequence
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        server.process_packet(client_addr, &mut crafted);
    }));
    assert!(
        result.is_err(),
        "renetcode no longer panics on a 9-byte sequence length"
    );

    // Our server, with a connected client at that address: dropped and counted.
    let mut h = orrery_netcode::sim::Harness::new(1, orrery_netcode::sim::LinkConditions::PERFECT);
    let c = h.add_client();
    for _ in 0..20 {
        h.step(Duration::from_millis(20));
    }
    assert_eq!(h.server.connected_clients(), 1);
    let before = h.server.stats().dropped_malformed;
    let addr = h.clients[c].addr;
    h.inject(addr, &[0x95; 18]);
    assert_eq!(h.server.stats().dropped_malformed, before + 1);
    assert_eq!(h.server.connected_clients(), 1);
}
