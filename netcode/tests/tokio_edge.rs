//! The tokio socket edge (`--features tokio`): one server task and one client over loopback.

#![cfg(feature = "tokio")]

use orrery_netcode::{ConnectionId, Identity};
use std::time::Duration;

use orrery_netcode::udp::TokioUdpEndpoint;
use orrery_netcode::{
    ClientEvent, ClientMessage, ClientSession, ClientSessionConfig, ConnectTokenIssuer,
    DEFAULT_PROTOCOL_ID, PrivateKey, ServerEvent, ServerMessage, ServerSession,
    ServerSessionConfig, unix_now,
};

#[tokio::test]
async fn tokio_server_task_answers_a_call() {
    let mut server_udp = TokioUdpEndpoint::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = server_udp.local_addr();
    let key = PrivateKey::generate().unwrap();
    let mut server = ServerSession::new(
        ServerSessionConfig::new(key.clone(), DEFAULT_PROTOCOL_ID, vec![addr]),
        unix_now(),
    )
    .unwrap();
    let token = ConnectTokenIssuer::new(key, DEFAULT_PROTOCOL_ID, vec![addr])
        .issue(&Identity([1; 32]), ConnectionId(1), unix_now())
        .unwrap();

    let server_task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        loop {
            tokio::select! {
                r = server_udp.readable() => {
                    r.unwrap();
                    server_udp.recv(&mut server, unix_now()).unwrap();
                }
                _ = tick.tick() => {
                    while let Some(ev) = server.poll_event() {
                        if let ServerEvent::Message { client, msg: ClientMessage::CallReducer { request_id, .. }, .. } = ev {
                            let reply = ServerMessage::ReducerReply { request_id, tick: 1, result: Ok(()), durable: false };
                            server.send(client, &reply).unwrap();
                        }
                    }
                    server.update(unix_now());
                    server_udp.flush(&mut server).unwrap();
                }
            }
        }
    });

    let mut client_udp = TokioUdpEndpoint::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let mut client = ClientSession::new(ClientSessionConfig::default(), token, unix_now()).unwrap();
    client
        .send(&ClientMessage::CallReducer {
            request_id: 9,
            reducer: "r".into(),
            args: vec![],
            durable: false,
        })
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut got = None;
    while got.is_none() {
        assert!(tokio::time::Instant::now() < deadline, "no reply");
        let _ = tokio::time::timeout(Duration::from_millis(10), client_udp.readable()).await;
        client_udp.recv(&mut client, unix_now()).unwrap();
        while let Some(ev) = client.poll_event() {
            if let ClientEvent::Message {
                msg: ServerMessage::ReducerReply { request_id, .. },
                ..
            } = ev
            {
                got = Some(request_id);
            }
        }
        client.update(unix_now());
        client_udp.flush(&mut client).unwrap();
    }
    assert_eq!(got, Some(9));
    server_task.abort();
}
