//! The HTTP control plane (axum): identities, connect tokens, the schema, HTTP reducer calls,
//! health, metrics and admin endpoints. The API with request and response examples is in
//! `docs/server.md`.
//!
//! | endpoint | auth | success | errors |
//! |---|---|---|---|
//! | `GET /health` | none | 200 `{"status":"ok","tick":n,"clients":n}` | 503 when storage failed |
//! | `GET /metrics` | admin | 200 Prometheus text | 401, 403 |
//! | `POST /v1/identity` | none | 200 `{"identity","token"}` | |
//! | `POST /v1/connect-token` | bearer | 200 `{"connect_token","server_addresses","identity","client_id"}` | 401 |
//! | `GET /v1/schema` | none | 200 module schema | |
//! | `POST /v1/call/{reducer}` | bearer | 200 `{"ok":true,"tick":n}` | 400, 401, 422, 429, 503 |
//! | `POST /v1/sql` | bearer | 200 `{"table","tick","rows":[{..}]}` | 400, 401, 429, 503 |
//! | `GET /v1/admin/clients` | admin | 200 `{"clients":[..]}` | 401, 403 |
//! | `POST /v1/admin/clients/{id}/disconnect` | admin | 200 `{"disconnected":true}` | 401, 403, 404 |
//!
//! Every error body is JSON: `{"error": "<message>"}`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use orrery_engine::glam::Vec3;
use orrery_engine::schema::{ModuleSchema, ReducerKind};
use orrery_netcode::{ConnectTokenIssuer, ConnectionId, Identity, unix_now};
use orrery_subscription::{QueryLimits, check_limits};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use crate::auth::{AuthError, Secrets, random_bytes};
use crate::listener::PeerAddr;
use crate::metrics::{Metrics, RejectKind};
use crate::net::ClientInfo;
use crate::rate::{AddressLimiter, KeyedLimiter, rate_limited_message};
use crate::tick::{CallOutcome, ClientMove, HttpCall, HttpRequest, SqlOutcome, SqlRead};

/// A request for the network side (which owns the sessions).
#[derive(Debug)]
pub enum AdminRequest {
    /// List connected clients.
    ListClients(oneshot::Sender<Vec<ClientInfo>>),
    /// Disconnect a client; answers whether it was connected.
    Disconnect {
        /// The connection.
        client: ConnectionId,
        /// Why (sent to the client).
        reason: String,
        /// The answer.
        reply: oneshot::Sender<bool>,
    },
}

/// What the handlers share.
#[derive(Debug)]
pub struct ControlPlaneState {
    /// Token secrets.
    pub secrets: Arc<Secrets>,
    /// Issues connect tokens, one issuer per network worker (each names only its worker's
    /// addresses): a client goes to worker `client_id % issuers.len()`
    /// ([`crate::net::shard_of`]).
    pub issuers: Vec<ConnectTokenIssuer>,
    /// Next connection id to hand out.
    pub next_client_id: AtomicU64,
    /// The module schema (for argument encoding).
    pub schema: ModuleSchema,
    /// The schema as JSON (served as is).
    pub schema_json: serde_json::Value,
    /// HTTP calls and reads to the tick thread (bounded; full means busy).
    pub calls: mpsc::Sender<HttpRequest>,
    /// Admin requests to the network workers, by worker.
    pub admin: Vec<mpsc::Sender<AdminRequest>>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Lifetime of bearer tokens.
    pub identity_token_lifetime: Duration,
    /// Size limits on queries, checked here so that an oversized one never reaches the tick
    /// thread's queue.
    pub query_limits: QueryLimits,
    /// Largest request body.
    pub max_body: usize,
    /// New identities per source address.
    pub identities_per_address: AddressLimiter,
    /// Connect tokens per source address.
    pub connect_tokens_per_address: AddressLimiter,
    /// HTTP calls and reads per identity, admitted here so that one identity cannot fill
    /// the tick thread's shared queue for everyone else.
    pub http_per_identity: KeyedLimiter<Identity>,
}

impl ControlPlaneState {
    /// Connection ids start at a random 32-bit block so that ids from a previous run of the
    /// server (which may still sit in tables) are not handed out again right away.
    pub fn first_client_id() -> Result<u64, crate::ServerError> {
        let r = random_bytes::<4>()?;
        Ok((u64::from(u32::from_le_bytes(r)) << 24).max(1))
    }

    /// The network worker `client` is assigned to.
    pub fn shard_of(&self, client: ConnectionId) -> usize {
        crate::net::shard_of(client, self.issuers.len())
    }

    /// The server addresses a client with connection id `client` connects to (those of its
    /// network worker).
    pub fn server_addresses(&self, client: ConnectionId) -> &[SocketAddr] {
        &self.issuers[self.shard_of(client)].server_addresses
    }
}

/// The handlers' state.
pub type AppState = Arc<ControlPlaneState>;

/// The control-plane router.
pub fn router(state: AppState) -> Router {
    let max_body = state.max_body;
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics_admin))
        .route("/v1/identity", post(new_identity))
        .route("/v1/connect-token", post(connect_token))
        .route("/v1/schema", get(schema))
        .route("/v1/call/{reducer}", post(call))
        .route("/v1/sql", post(sql))
        .route("/v1/zone/connect-token", post(zone_connect_token))
        .route("/v1/zone/move", post(zone_move))
        .route("/v1/admin/clients", get(admin_clients))
        .route(
            "/v1/admin/clients/{client_id}/disconnect",
            post(admin_disconnect),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), admit_address))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

/// Per-address admission for the endpoints that mint credentials, before any work is done
/// for the request. Requests without a peer address (the router driven in-process, as tests
/// and embedders do) are not limited: the address comes from the socket
/// (`into_make_service_with_connect_info`), never from a header a client could forge.
async fn admit_address(
    State(state): State<AppState>,
    request: axum::extract::Request,
    next: middleware::Next,
) -> Response {
    let limiter = match request.uri().path() {
        "/v1/identity" => &state.identities_per_address,
        "/v1/connect-token" => &state.connect_tokens_per_address,
        _ => return next.run(request).await,
    };
    if let Some(ConnectInfo(PeerAddr(peer))) = request.extensions().get::<ConnectInfo<PeerAddr>>()
        && !limiter.admit(peer.ip(), unix_now())
    {
        state.metrics.http_address_limited.fetch_add(1, Relaxed);
        let limit = limiter.limit();
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "rate limited: at most {} requests per second (burst {}) to {} from one address",
                limit.calls_per_second,
                limit.burst,
                request.uri().path()
            ),
        );
    }
    next.run(request).await
}

/// A router serving only `GET /metrics`, without authentication (bind it to an internal
/// interface).
pub fn metrics_router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_public))
        .with_state(metrics)
}

fn rate_limited(state: &ControlPlaneState) -> Response {
    error(
        StatusCode::TOO_MANY_REQUESTS,
        rate_limited_message(state.http_per_identity.limit()),
    )
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, axum::Json(json!({ "error": message.to_string() }))).into_response()
}

fn bearer(headers: &HeaderMap) -> Result<&str, AuthError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or(AuthError::Missing)?
        .to_str()
        .map_err(|_| AuthError::Malformed("authorization header is not text".into()))?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or(AuthError::Missing)?;
    Ok(token.trim())
}

/// An authentication failure and its status (401 or 403).
struct Refused(StatusCode, AuthError);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        error(self.0, self.1)
    }
}

fn authenticate(state: &ControlPlaneState, headers: &HeaderMap) -> Result<Identity, Refused> {
    let token = bearer(headers).map_err(|e| Refused(StatusCode::UNAUTHORIZED, e))?;
    state
        .secrets
        .verify(token, unix_now())
        .map(|c| c.identity)
        .map_err(|e| Refused(StatusCode::UNAUTHORIZED, e))
}

fn require_admin(secrets: &Secrets, headers: &HeaderMap) -> Result<(), Refused> {
    let token = bearer(headers).map_err(|e| Refused(StatusCode::UNAUTHORIZED, e))?;
    if secrets.is_admin(token) {
        Ok(())
    } else {
        Err(Refused(StatusCode::FORBIDDEN, AuthError::NotAdmin))
    }
}

async fn health(State(state): State<AppState>) -> Response {
    let m = &state.metrics;
    let tick = m.tick_seq.load(Relaxed);
    let clients = m.clients.load(Relaxed);
    match m.storage_error() {
        Some(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "failed", "error": e, "tick": tick, "clients": clients})),
        )
            .into_response(),
        None => {
            axum::Json(json!({"status": "ok", "tick": tick, "clients": clients})).into_response()
        }
    }
}

fn metrics_text(metrics: &Metrics) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics.render(),
    )
        .into_response()
}

async fn metrics_admin(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(r) = require_admin(&state.secrets, &headers) {
        return r.into_response();
    }
    metrics_text(&state.metrics)
}

async fn metrics_public(State(metrics): State<Arc<Metrics>>) -> Response {
    metrics_text(&metrics)
}

async fn new_identity(State(state): State<AppState>) -> Response {
    let identity = match random_bytes::<32>() {
        Ok(i) => Identity(i),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    let token = state
        .secrets
        .issue(&identity, unix_now(), state.identity_token_lifetime);
    axum::Json(json!({
        "identity": identity.to_hex(),
        "token": token,
    }))
    .into_response()
}

async fn connect_token(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let identity = match authenticate(&state, &headers) {
        Ok(i) => i,
        Err(r) => return r.into_response(),
    };
    issue_connect_token(&state, identity)
}

/// A zone endpoint's refusal: the status and what was wrong.
struct ZoneRefused(StatusCode, String);

impl IntoResponse for ZoneRefused {
    fn into_response(self) -> Response {
        error(self.0, self.1)
    }
}

/// Refuses callers other than the zones' relay (`Secrets::zone_peer`).
fn zone_peer_only(state: &ControlPlaneState, headers: &HeaderMap) -> Result<(), ZoneRefused> {
    let identity = authenticate(state, headers).map_err(|r| ZoneRefused(r.0, r.1.to_string()))?;
    if identity == state.secrets.zone_peer() {
        Ok(())
    } else {
        Err(ZoneRefused(
            StatusCode::FORBIDDEN,
            "zone relays only".into(),
        ))
    }
}

/// A zone endpoint's JSON body and the identity it names.
fn zone_body(body: &[u8]) -> Result<(Identity, serde_json::Value), ZoneRefused> {
    let bad = |message: String| ZoneRefused(StatusCode::BAD_REQUEST, message);
    let json: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("request body is not JSON: {e}")))?;
    let hex = json["identity"]
        .as_str()
        .ok_or_else(|| bad("no \"identity\"".into()))?;
    let identity =
        Identity::from_hex(hex).map_err(|e| bad(format!("bad identity {hex:?}: {e}")))?;
    Ok((identity, json))
}

/// `POST /v1/zone/connect-token {"identity"}`: a connect token for a character another zone
/// hands over (zone relays only; not limited per address, the relays make many).
async fn zone_connect_token(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(refused) = zone_peer_only(&state, &headers) {
        return refused.into_response();
    }
    match zone_body(&body) {
        Ok((identity, _)) => issue_connect_token(&state, identity),
        Err(refused) => refused.into_response(),
    }
}

/// `POST /v1/zone/move {"identity", "zone", "connect_token"}`: tells the identity's
/// connections that its character is in `zone` now (zone relays only); answers
/// `{"clients": n}`, the connections told.
async fn zone_move(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(refused) = zone_peer_only(&state, &headers) {
        return refused.into_response();
    }
    let (identity, json) = match zone_body(&body) {
        Ok(parsed) => parsed,
        Err(refused) => return refused.into_response(),
    };
    let zone = json["zone"].as_u64().and_then(|z| u32::try_from(z).ok());
    let token = json["connect_token"]
        .as_str()
        .and_then(|t| base64::engine::general_purpose::STANDARD.decode(t).ok());
    let (Some(zone), Some(connect_token)) = (zone, token) else {
        return error(
            StatusCode::BAD_REQUEST,
            "expected {\"identity\", \"zone\", \"connect_token\" (base64)}",
        );
    };
    let (tx, rx) = oneshot::channel();
    let sent = state.calls.try_send(HttpRequest::MoveClients(ClientMove {
        identity,
        zone,
        connect_token,
        reply: tx,
    }));
    if let Err(e) = sent {
        return busy(e);
    }
    match rx.await {
        Ok(clients) => axum::Json(json!({ "clients": clients })).into_response(),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "server shutting down"),
    }
}

fn issue_connect_token(state: &ControlPlaneState, identity: Identity) -> Response {
    let connection = ConnectionId(state.next_client_id.fetch_add(1, Relaxed));
    let issuer = &state.issuers[state.shard_of(connection)];
    match issuer.issue(&identity, connection, unix_now()) {
        Ok(token) => axum::Json(json!({
            "connect_token": base64::engine::general_purpose::STANDARD.encode(token.to_bytes()),
            "server_addresses": issuer.server_addresses.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "identity": identity.to_hex(),
            "client_id": connection.0,
        }))
        .into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

async fn schema(State(state): State<AppState>) -> Response {
    axum::Json(state.schema_json.clone()).into_response()
}

async fn call(
    State(state): State<AppState>,
    Path(reducer): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let identity = match authenticate(&state, &headers) {
        Ok(i) => i,
        Err(r) => return r.into_response(),
    };
    if identity != state.secrets.zone_peer() && !state.http_per_identity.admit(identity, unix_now())
    {
        state.metrics.calls.fetch_add(1, Relaxed);
        state.metrics.reject(RejectKind::RateLimit);
        return rate_limited(&state);
    }
    let bad = |message: String| {
        state.metrics.calls.fetch_add(1, Relaxed);
        state.metrics.reject(RejectKind::Invalid);
        error(StatusCode::BAD_REQUEST, message)
    };
    let json: serde_json::Value = if body.iter().all(u8::is_ascii_whitespace) {
        serde_json::Value::Null
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => return bad(format!("request body is not JSON: {e}")),
        }
    };
    let Some(def) = state.schema.reducer(&reducer) else {
        return bad(format!("no reducer named {reducer:?}"));
    };
    if def.kind != ReducerKind::User {
        return bad(format!(
            "reducer {reducer:?} is a {:?} reducer and cannot be called directly",
            def.kind
        ));
    }
    let args = match orrery_engine::value::encode_args_json(&def.params, &json) {
        Ok(a) => a,
        Err(e) => return bad(format!("bad arguments for reducer {reducer:?}: {e}")),
    };
    let (tx, rx) = oneshot::channel();
    let sent = state.calls.try_send(HttpRequest::Call(HttpCall {
        identity,
        reducer,
        args,
        reply: tx,
    }));
    if let Err(e) = sent {
        state.metrics.calls.fetch_add(1, Relaxed);
        state.metrics.reject(RejectKind::Busy);
        return busy(e);
    }
    match rx.await {
        Ok(CallOutcome::Committed { tick }) => {
            axum::Json(json!({"ok": true, "tick": tick})).into_response()
        }
        Ok(CallOutcome::Failed { tick, message }) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            axum::Json(json!({"ok": false, "error": message, "tick": tick})),
        )
            .into_response(),
        Ok(CallOutcome::Invalid { message }) => error(StatusCode::BAD_REQUEST, message),
        Ok(CallOutcome::Storage { message }) => error(StatusCode::SERVICE_UNAVAILABLE, message),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "server shutting down"),
    }
}

fn busy<T>(e: mpsc::error::TrySendError<T>) -> Response {
    let why = match e {
        mpsc::error::TrySendError::Full(_) => "server busy: too many HTTP requests queued",
        mpsc::error::TrySendError::Closed(_) => "server shutting down",
    };
    error(StatusCode::SERVICE_UNAVAILABLE, why)
}

/// The body of `POST /v1/sql`: either the query as plain text, or JSON
/// `{"sql": "...", "focus": [x, y] | [x, y, z]}` (the focus a `within(..)` measures from).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SqlBody {
    sql: String,
    #[serde(default)]
    focus: Option<Vec<f32>>,
}

fn parse_sql_body(body: &[u8]) -> Result<(String, Option<Vec3>), String> {
    let text = std::str::from_utf8(body).map_err(|e| format!("request body is not UTF-8: {e}"))?;
    let trimmed = text.trim();
    if !trimmed.starts_with('{') {
        if trimmed.is_empty() {
            return Err("empty query: send the SQL as the body or as {\"sql\": ..}".into());
        }
        return Ok((trimmed.to_owned(), None));
    }
    let body: SqlBody =
        serde_json::from_str(trimmed).map_err(|e| format!("request body is not valid: {e}"))?;
    let focus = match body.focus.as_deref() {
        None => None,
        Some(&[x, y]) => Some(Vec3::new(x, y, 0.0)),
        Some(&[x, y, z]) => Some(Vec3::new(x, y, z)),
        Some(other) => {
            return Err(format!(
                "focus must be [x, y] or [x, y, z], got {} numbers",
                other.len()
            ));
        }
    };
    if focus.is_some_and(|f| !f.is_finite()) {
        return Err("focus must be finite".into());
    }
    Ok((body.sql, focus))
}

async fn sql(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let identity = match authenticate(&state, &headers) {
        Ok(i) => i,
        Err(r) => return r.into_response(),
    };
    // Reads refused here never reach the tick thread, which counts the others.
    let count_refused = || {
        state.metrics.sql_reads.fetch_add(1, Relaxed);
        state.metrics.sql_refused.fetch_add(1, Relaxed);
    };
    if identity != state.secrets.zone_peer() && !state.http_per_identity.admit(identity, unix_now())
    {
        count_refused();
        return rate_limited(&state);
    }
    let (sql, focus) = match parse_sql_body(&body) {
        Ok(parsed) => parsed,
        Err(message) => {
            count_refused();
            return error(StatusCode::BAD_REQUEST, message);
        }
    };
    if let Err(e) = check_limits(&sql, &state.query_limits) {
        count_refused();
        return error(StatusCode::BAD_REQUEST, e);
    }
    let (tx, rx) = oneshot::channel();
    let sent = state.calls.try_send(HttpRequest::Sql(SqlRead {
        identity,
        sql,
        focus,
        reply: tx,
    }));
    if let Err(e) = sent {
        count_refused();
        return busy(e);
    }
    match rx.await {
        Ok(SqlOutcome::Rows { tick, table, rows }) => {
            let Some(schema) = state.schema.tables.get(table as usize) else {
                return error(StatusCode::INTERNAL_SERVER_ERROR, "unknown table id");
            };
            let mut json_rows = Vec::with_capacity(rows.len());
            for row in &rows {
                match orrery_engine::value::row_to_json(schema, row) {
                    Ok(v) => json_rows.push(v),
                    Err(e) => {
                        tracing::error!(table = %schema.name, error = %e, "stored row does not decode");
                        return error(StatusCode::INTERNAL_SERVER_ERROR, "a row did not decode");
                    }
                }
            }
            axum::Json(json!({"table": schema.name, "tick": tick, "rows": json_rows}))
                .into_response()
        }
        Ok(SqlOutcome::Invalid { message }) => error(StatusCode::BAD_REQUEST, message),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "server shutting down"),
    }
}

async fn admin_clients(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(r) = require_admin(&state.secrets, &headers) {
        return r.into_response();
    }
    let mut clients = Vec::new();
    for admin in &state.admin {
        let (tx, rx) = oneshot::channel();
        if admin.send(AdminRequest::ListClients(tx)).await.is_err() {
            return error(StatusCode::SERVICE_UNAVAILABLE, "server shutting down");
        }
        match rx.await {
            Ok(shard) => clients.extend(shard),
            Err(_) => return error(StatusCode::SERVICE_UNAVAILABLE, "server shutting down"),
        }
    }
    clients.sort_by_key(|c| c.client_id);
    axum::Json(json!({ "clients": clients })).into_response()
}

async fn admin_disconnect(
    State(state): State<AppState>,
    Path(client_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = require_admin(&state.secrets, &headers) {
        return r.into_response();
    }
    let Ok(client) = client_id.parse::<u64>().map(ConnectionId) else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("client id {client_id:?} is not a number"),
        );
    };
    let (tx, rx) = oneshot::channel();
    let request = AdminRequest::Disconnect {
        client,
        reason: "disconnected by an administrator".into(),
        reply: tx,
    };
    let admin = &state.admin[state.shard_of(client)];
    if admin.send(request).await.is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "server shutting down");
    }
    match rx.await {
        Ok(true) => axum::Json(json!({"disconnected": true})).into_response(),
        Ok(false) => error(
            StatusCode::NOT_FOUND,
            format!("no connected client {client}"),
        ),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "server shutting down"),
    }
}
