//! One client connection behind a handle: the sans-IO [`ClientCore`] on a non-blocking std UDP
//! socket, driven by the caller's [`Connection::poll`] (no thread of its own), its events
//! flattened into one C event per row change, and the memory the last handed-out event points
//! into.
//!
//! Connecting makes the control-plane calls (identity, schema, connect token) on a private
//! current-thread tokio runtime that lives only for the call.

use std::collections::VecDeque;
use std::ffi::{CString, c_char};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ptr;
use std::sync::Arc;
use std::time::Duration;

use orrery_client::http::ControlPlane;
use orrery_client::netcode::udp::UdpEndpoint;
use orrery_client::netcode::{ClientSessionConfig, unix_now};
use orrery_client::{ClientCore, ClientError, Event, MirrorChange, Row};

use crate::error::FfiError;

/// What an [`OrreryEvent`] reports.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OrreryEventKind {
    /// No event was pending (the other fields are zero).
    None = 0,
    /// The server accepted the connection: `identity`, `connection_id`.
    Connected = 1,
    /// The connection closed (or never came up): `message` says why. No event follows.
    Disconnected = 2,
    /// A row entered the client's view: `table_id`, `tick`, `row`, `pk`.
    RowInsert = 3,
    /// A row in view changed: `table_id`, `tick`, `old_row`, `row` (the new one), `pk`.
    RowUpdate = 4,
    /// A row left the client's view (deleted, or out of range): `table_id`, `tick`, `row`
    /// (its last version), `pk`.
    RowDelete = 5,
    /// A reducer call was answered: `id` (request id), `tick`, `ok` (1 committed, 0 failed),
    /// `message` (the error text when it failed).
    ReducerReply = 6,
    /// A subscription was accepted: `id` (query id), `tick`. Its initial rows come as
    /// `RowInsert` events (before or after this one).
    SubscriptionApplied = 7,
    /// A subscription was refused: `id` (query id), `message`. It is no longer active.
    SubscriptionError = 8,
    /// A table update could not be applied (a broken server): `table_id`, `tick`, `message`.
    UpdateRejected = 9,
    /// The character moved to another zone: `id` (the zone). The connection follows it by
    /// itself (same subscriptions, rows kept); a `Connected` event follows.
    ZoneMove = 10,
}

/// One event, as [`crate::orrery_client_next_event`] fills it in. Pointers are NULL when
/// their length is 0 and otherwise point into memory the library owns, valid until the next
/// `orrery_client_next_event` or `orrery_client_destroy` on the same handle: copy what you
/// keep. Rows are in the row format (`netcode/ROW_FORMAT.md` §3; quantized columns as their
/// reconstructed floats).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct OrreryEvent {
    /// An [`OrreryEventKind`] value.
    pub kind: u32,
    /// The table of a row event.
    pub table_id: u32,
    /// The request id of a reducer reply, the query id of a subscription event.
    pub id: u32,
    /// For a reducer reply: 1 when the reducer committed, 0 when it failed.
    pub ok: u32,
    /// The server tick the event is from.
    pub tick: u64,
    /// For `Connected`: this connection's id.
    pub connection_id: u64,
    /// For `Connected`: the client's identity.
    pub identity: [u8; 32],
    /// The row (new version for an update).
    pub row: *const u8,
    /// Length of `row` in bytes.
    pub row_len: usize,
    /// For an update: the previous version of the row.
    pub old_row: *const u8,
    /// Length of `old_row` in bytes.
    pub old_row_len: usize,
    /// The row's primary key, encoded (§2).
    pub pk: *const u8,
    /// Length of `pk` in bytes.
    pub pk_len: usize,
    /// NUL-terminated UTF-8 text: a disconnect reason or an error message.
    pub message: *const c_char,
    /// Length of `message` in bytes, without the NUL.
    pub message_len: usize,
}

impl OrreryEvent {
    /// The event for "nothing pending".
    pub const NONE: OrreryEvent = OrreryEvent {
        kind: OrreryEventKind::None as u32,
        table_id: 0,
        id: 0,
        ok: 0,
        tick: 0,
        connection_id: 0,
        identity: [0; 32],
        row: ptr::null(),
        row_len: 0,
        old_row: ptr::null(),
        old_row_len: 0,
        pk: ptr::null(),
        pk_len: 0,
        message: ptr::null(),
        message_len: 0,
    };
}

/// An event with its own memory (what the queue holds).
#[derive(Debug)]
pub struct OwnedEvent {
    kind: OrreryEventKind,
    table_id: u32,
    id: u32,
    ok: bool,
    tick: u64,
    connection_id: u64,
    identity: [u8; 32],
    row: Vec<u8>,
    old_row: Vec<u8>,
    pk: Vec<u8>,
    message: Option<CString>,
}

fn text(message: &str) -> Option<CString> {
    CString::new(message.replace('\0', "\u{fffd}")).ok()
}

impl OwnedEvent {
    fn new(kind: OrreryEventKind) -> Self {
        OwnedEvent {
            kind,
            table_id: 0,
            id: 0,
            ok: false,
            tick: 0,
            connection_id: 0,
            identity: [0; 32],
            row: Vec::new(),
            old_row: Vec::new(),
            pk: Vec::new(),
            message: None,
        }
    }

    fn row(kind: OrreryEventKind, tick: u64, row: &Row) -> Self {
        OwnedEvent {
            table_id: row.table_id(),
            tick,
            row: row.to_bytes(),
            pk: row.pk_bytes().to_vec(),
            ..OwnedEvent::new(kind)
        }
    }

    /// The event's kind.
    pub fn kind(&self) -> OrreryEventKind {
        self.kind
    }

    /// The C view of this event; its pointers borrow from `self`.
    pub fn as_c(&self) -> OrreryEvent {
        fn bytes(v: &[u8]) -> (*const u8, usize) {
            if v.is_empty() {
                (ptr::null(), 0)
            } else {
                (v.as_ptr(), v.len())
            }
        }
        let (row, row_len) = bytes(&self.row);
        let (old_row, old_row_len) = bytes(&self.old_row);
        let (pk, pk_len) = bytes(&self.pk);
        let (message, message_len) = match &self.message {
            Some(m) => (m.as_ptr(), m.as_bytes().len()),
            None => (ptr::null(), 0),
        };
        OrreryEvent {
            kind: self.kind as u32,
            table_id: self.table_id,
            id: self.id,
            ok: u32::from(self.ok),
            tick: self.tick,
            connection_id: self.connection_id,
            identity: self.identity,
            row,
            row_len,
            old_row,
            old_row_len,
            pk,
            pk_len,
            message,
            message_len,
        }
    }
}

/// Flattens one client event into C events (one per row change) at the back of `out`.
fn flatten(event: Event, out: &mut VecDeque<OwnedEvent>) -> Option<Vec<MirrorChange>> {
    use OrreryEventKind as K;
    match event {
        Event::Connected {
            identity,
            connection_id,
        } => out.push_back(OwnedEvent {
            identity: identity.0,
            connection_id: connection_id.0,
            ..OwnedEvent::new(K::Connected)
        }),
        Event::Disconnected { reason } => out.push_back(OwnedEvent {
            message: text(&reason.to_string()),
            ..OwnedEvent::new(K::Disconnected)
        }),
        Event::ReducerReply {
            request_id,
            tick,
            result,
            ..
        } => out.push_back(OwnedEvent {
            id: request_id,
            tick,
            ok: result.is_ok(),
            message: result.err().as_deref().and_then(text),
            ..OwnedEvent::new(K::ReducerReply)
        }),
        Event::SubscriptionApplied { query_id, tick } => out.push_back(OwnedEvent {
            id: query_id,
            tick,
            ..OwnedEvent::new(K::SubscriptionApplied)
        }),
        Event::SubscriptionError { query_id, message } => out.push_back(OwnedEvent {
            id: query_id,
            message: text(&message),
            ..OwnedEvent::new(K::SubscriptionError)
        }),
        Event::UpdateRejected {
            table_id,
            tick,
            error,
        } => out.push_back(OwnedEvent {
            table_id,
            tick,
            message: text(&error.to_string()),
            ..OwnedEvent::new(K::UpdateRejected)
        }),
        Event::ZoneMove { zone } => out.push_back(OwnedEvent {
            id: zone,
            ..OwnedEvent::new(K::ZoneMove)
        }),
        Event::TableUpdate { tick, changes, .. } => {
            for change in &changes {
                out.push_back(match change {
                    MirrorChange::Insert(row) => OwnedEvent::row(K::RowInsert, tick, row),
                    MirrorChange::Delete(row) => OwnedEvent::row(K::RowDelete, tick, row),
                    MirrorChange::Update { old, new } => OwnedEvent {
                        old_row: old.to_bytes(),
                        ..OwnedEvent::row(K::RowUpdate, tick, new)
                    },
                });
            }
            // Copied out: the mirror may reuse the old rows.
            return Some(changes);
        }
    }
    None
}

/// A client connection (see the module docs).
#[derive(Debug)]
pub struct Connection {
    core: ClientCore,
    udp: UdpEndpoint,
    token: CString,
    schema_json: CString,
    queue: VecDeque<OwnedEvent>,
    /// The event last handed out; its memory backs the caller's [`OrreryEvent`].
    current: Option<OwnedEvent>,
}

impl Connection {
    /// Connects through the control plane at `url` (blocking for its calls, each limited to
    /// `timeout`): uses `token`'s identity or creates one, fetches the schema and a connect
    /// token, binds a UDP socket and starts the handshake. `Connected` (or `Disconnected`)
    /// arrives through [`Connection::poll`].
    pub fn connect(url: &str, token: Option<&str>, timeout: Duration) -> Result<Self, FfiError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("orrery-ffi-http")
            .build()
            .map_err(FfiError::Runtime)?;
        let http = ControlPlane::new(url)?.with_timeout(timeout);
        let (token, schema, connect) = runtime.block_on(async {
            let token = match token {
                Some(token) => token.to_owned(),
                None => http.create_identity().await?.token,
            };
            let schema = http.schema().await?;
            let connect = http.connect_token(&token).await?;
            Ok::<_, ClientError>((token, schema, connect))
        })?;
        let schema_json = serde_json::to_string(&schema).unwrap_or_default();
        let core = ClientCore::from_token_bytes(
            Arc::new(schema),
            ClientSessionConfig::default(),
            &connect.token_bytes()?,
            unix_now(),
        )?;
        let server = core.session().server_addr();
        let bind = if server.is_ipv4() {
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))
        } else {
            SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0))
        };
        let udp = UdpEndpoint::bind(bind).map_err(|source| ClientError::Io {
            context: "binding the UDP socket",
            source,
        })?;
        tracing::debug!(%server, local = %udp.local_addr(), "connecting");
        let mut connection = Connection {
            core,
            udp,
            token: text(&token).unwrap_or_default(),
            schema_json: text(&schema_json).unwrap_or_default(),
            queue: VecDeque::new(),
            current: None,
        };
        connection.poll()?;
        Ok(connection)
    }

    /// The identity token (save it to connect as the same identity later).
    pub fn token(&self) -> &CString {
        &self.token
    }

    /// The module schema as JSON (`GET /v1/schema`).
    pub fn schema_json(&self) -> &CString {
        &self.schema_json
    }

    /// The sans-IO client.
    pub fn core(&self) -> &ClientCore {
        &self.core
    }

    /// Receives what the socket holds, advances the session (handshake, keep-alives,
    /// resends), sends, and queues the resulting events. Returns how many events are queued.
    pub fn poll(&mut self) -> Result<usize, FfiError> {
        let now = unix_now();
        self.udp
            .recv(&mut self.core, now)
            .map_err(|source| ClientError::Io {
                context: "receiving UDP datagrams",
                source,
            })?;
        self.core.update(now);
        self.flush()?;
        while let Some(event) = self.core.poll_event() {
            if let Some(changes) = flatten(event, &mut self.queue) {
                self.core.mirror_mut().recycle(changes);
            }
        }
        Ok(self.queue.len())
    }

    fn flush(&mut self) -> Result<(), FfiError> {
        self.udp
            .flush(&mut self.core)
            .map_err(|source| ClientError::Io {
                context: "sending UDP datagrams",
                source,
            })?;
        Ok(())
    }

    /// Sends what was just queued on the session without waiting for the next poll.
    fn send_now(&mut self) -> Result<(), FfiError> {
        self.core.update(unix_now());
        self.flush()
    }

    /// The next queued event (kept as the current one, whose memory the returned view
    /// borrows), or [`OrreryEvent::NONE`].
    pub fn next_event(&mut self) -> OrreryEvent {
        self.current = self.queue.pop_front();
        self.current
            .as_ref()
            .map_or(OrreryEvent::NONE, OwnedEvent::as_c)
    }

    /// Calls `reducer` with arguments already in the row format; returns the request id.
    pub fn call_raw(
        &mut self,
        reducer: &str,
        args: Vec<u8>,
        durable: bool,
    ) -> Result<u32, FfiError> {
        if self.core.schema().reducer(reducer).is_none() {
            return Err(ClientError::UnknownReducer(reducer.to_owned()).into());
        }
        let id = self.core.call_raw(reducer, args, durable)?;
        self.send_now()?;
        Ok(id)
    }

    /// Calls `reducer` with JSON arguments (array by position, object by name, `null` for
    /// none), encoded with the schema; returns the request id.
    pub fn call_json(
        &mut self,
        reducer: &str,
        args: &serde_json::Value,
        durable: bool,
    ) -> Result<u32, FfiError> {
        let id = self.core.call(reducer, args, durable)?;
        self.send_now()?;
        Ok(id)
    }

    /// Subscribes to `sql`; returns the query id.
    pub fn subscribe(&mut self, sql: &str) -> Result<u32, FfiError> {
        let id = self.core.subscribe(sql)?;
        self.send_now()?;
        Ok(id)
    }

    /// Drops a subscription.
    pub fn unsubscribe(&mut self, query_id: u32) -> Result<(), FfiError> {
        self.core.unsubscribe(query_id)?;
        self.send_now()
    }

    /// Starts disconnecting (tells the server); `Disconnected` follows through polling.
    pub fn disconnect(&mut self) -> Result<(), FfiError> {
        self.core.disconnect();
        self.flush()?;
        while let Some(event) = self.core.poll_event() {
            if let Some(changes) = flatten(event, &mut self.queue) {
                self.core.mirror_mut().recycle(changes);
            }
        }
        Ok(())
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if self.core.is_connected() {
            self.core.disconnect();
            let _ = self.udp.flush(&mut self.core);
        }
    }
}
