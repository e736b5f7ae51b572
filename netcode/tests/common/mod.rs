//! Helpers shared by the integration tests: a test "server" loop that answers reducer calls.

#![allow(dead_code)]

use std::collections::HashMap;
use std::time::Duration;

use orrery_netcode::sim::Harness;
use orrery_netcode::{
    ClientEvent, ClientMessage, ConnectionId, Identity, ServerEvent, ServerMessage,
};

/// What the test server saw.
#[derive(Debug, Default)]
pub struct ServerLog {
    pub connected: HashMap<ConnectionId, Identity>,
    pub disconnected: Vec<(ConnectionId, orrery_netcode::DisconnectReason)>,
    pub rejected: Vec<ServerEvent>,
    pub calls: u64,
    pub tick: u64,
}

/// Drains server events, answering each `CallReducer` with a reply carrying its request id.
pub fn serve(h: &mut Harness, log: &mut ServerLog) {
    log.tick += 1;
    while let Some(ev) = h.server.poll_event() {
        match ev {
            ServerEvent::Connected {
                client, identity, ..
            } => {
                log.connected.insert(client, identity);
            }
            ServerEvent::Disconnected { client, reason } => log.disconnected.push((client, reason)),
            ServerEvent::Message {
                client,
                msg:
                    ClientMessage::CallReducer {
                        request_id,
                        reducer,
                        ..
                    },
                ..
            } => {
                log.calls += 1;
                let result = if reducer == "fail" {
                    Err(format!("call {request_id} failed"))
                } else {
                    Ok(())
                };
                let reply = ServerMessage::ReducerReply {
                    request_id,
                    tick: log.tick,
                    result,
                    durable: false,
                };
                let _ = h.server.send(client, &reply);
            }
            ServerEvent::Message { .. } => {}
            ev @ ServerEvent::Rejected { .. } => log.rejected.push(ev),
        }
    }
}

/// Replies seen by one client, and whether it connected.
#[derive(Debug, Default, Clone)]
pub struct ClientLog {
    pub connected: Option<(Identity, ConnectionId)>,
    pub replies: Vec<u32>,
    pub messages: Vec<ServerMessage>,
    pub disconnected: Option<orrery_netcode::DisconnectReason>,
}

/// Drains every client's events into `logs`.
pub fn collect(h: &mut Harness, logs: &mut Vec<ClientLog>) {
    logs.resize_with(h.clients.len(), ClientLog::default);
    for (i, c) in h.clients.iter_mut().enumerate() {
        while let Some(ev) = c.session.poll_event() {
            match ev {
                ClientEvent::Connected {
                    identity,
                    connection_id,
                } => logs[i].connected = Some((identity, connection_id)),
                ClientEvent::Message {
                    msg: ServerMessage::ReducerReply { request_id, .. },
                    ..
                } => logs[i].replies.push(request_id),
                ClientEvent::Message { msg, .. } => logs[i].messages.push(msg),
                ClientEvent::Disconnected { reason } => logs[i].disconnected = Some(reason),
            }
        }
    }
}

/// Steps the harness (serving and collecting) until `done` or `max` virtual time passed.
pub fn run_until(
    h: &mut Harness,
    slog: &mut ServerLog,
    clogs: &mut Vec<ClientLog>,
    tick: Duration,
    max: Duration,
    mut done: impl FnMut(&Harness, &ServerLog, &[ClientLog]) -> bool,
) -> bool {
    let end = h.now + max;
    while h.now < end {
        h.step(tick);
        serve(h, slog);
        collect(h, clogs);
        if done(h, slog, clogs) {
            return true;
        }
    }
    false
}

pub fn call(request_id: u32) -> ClientMessage {
    ClientMessage::CallReducer {
        request_id,
        reducer: "ping".into(),
        args: vec![request_id as u8; 8],
        durable: false,
    }
}
