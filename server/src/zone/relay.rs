//! The handoff relay: carries a zone's outgoing characters to the zones that take them.
//!
//! A module that hands characters over keeps an outbox table, `handoff_out`, visible only to
//! the zones' peer identity ([`crate::Secrets::zone_peer`]), with the columns `id` (primary key),
//! `target_zone`, `started_at` and `character`, and two reducers callable by that identity:
//! `accept_handoff(source_zone, id, started_at, character)` applies a character exactly once
//! (it remembers the handoffs it applied), `handoff_delivered(id)` ends the handoff at the
//! source (the character's rows there go with the outbox row), `handoff_refused(id, reason)`
//! cancels one the target refused for good (400 or 422: nothing was written there).
//!
//! The relay reads the outbox as the peer identity, waits until the tick it read is durable
//! (a handoff written in a tick that a crash undoes is never sent), calls `accept_handoff` on
//! the target zone's control plane (answered once the target's tick is durable), and then
//! `handoff_delivered` here. A failure anywhere leaves the outbox row in place; it is sent
//! again, with backoff, until the target acknowledges it. A crash of either side repeats at
//! most the delivery, which the target recognises. So each character is applied once.
//!
//! Connections follow their characters. After a delivery the relay asks the target for a
//! connect token for the character's identity (`POST /v1/zone/connect-token`, the outbox's
//! `owner` column) and has this zone send it through the identity's connections
//! (`POST /v1/zone/move`, [`orrery_netcode::ServerMessage::ZoneMove`]). A client that reaches
//! a zone its character has already left (it crossed twice quickly) is sent on the same way:
//! the module writes a `zone_redirect` row (`identity`, `zone`, `requested_at`) for it, the
//! relay moves the identity's connections and calls `redirect_sent(identity, requested_at)`,
//! which deletes the row unless a later request replaced it (a connection that came up while
//! the relay was moving the others, which the move missed: the next poll moves it).
//!
//! The relay holds no state that matters across a restart: the outbox is in the commit log.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::body::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower::ServiceExt as _;

use super::map::{ZoneId, ZoneMap};
use crate::runtime::ServerHandle;

/// The largest response the relay reads, bytes (an outbox read is at most the server's
/// `max_sql_rows` handoffs of a few KiB each).
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;
/// Deliveries under way at once at most; the rest wait for the next poll.
pub const MAX_IN_FLIGHT: usize = 256;

/// What went wrong with one request of the relay.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The peer could not be reached or the exchange broke.
    #[error("zone at {addr}: {message}")]
    Transport {
        /// The peer.
        addr: String,
        /// What failed.
        message: String,
    },
    /// The peer answered with an error.
    #[error("{path} answered {status}: {body}")]
    Refused {
        /// The request.
        path: String,
        /// The answer's status.
        status: u16,
        /// The answer.
        body: String,
    },
    /// An answer that is not what the control plane sends.
    #[error("unexpected answer from {path}: {message}")]
    BadAnswer {
        /// The request.
        path: String,
        /// What was wrong.
        message: String,
    },
    /// The map names no zone for an outbox row's `target_zone`.
    #[error("handoff {id} is for zone {zone}, which is not in the zone map")]
    UnknownZone {
        /// The handoff.
        id: u64,
        /// Its target.
        zone: u64,
    },
}

/// How a relay runs.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// The zone this process is.
    pub zone: ZoneId,
    /// Every zone's control plane.
    pub map: ZoneMap,
    /// How often the outbox is read.
    pub poll: Duration,
    /// A request not answered in this time is abandoned and retried.
    pub request_timeout: Duration,
    /// The first retry's delay; it doubles per failure up to `max_backoff`.
    pub backoff: Duration,
    /// The longest delay between retries.
    pub max_backoff: Duration,
    /// Sending this zone's rows near each border to the zone across it, if the module
    /// mirrors them (border interest).
    pub border: Option<BorderSync>,
}

/// How a relay sends the rows near its borders to the neighbouring zones: every `period` it
/// reads `table` (public, as the zone peer), and sends each other zone whose region lies within
/// `band` metres of a row's `position` (a 2-D point column) those rows, by calling its
/// `reducer(source_zone, generation, last, rows)` in parts of at most `rows_per_call` rows.
/// The generation is the sync's time in microseconds; `last` marks its final part, after
/// which the neighbour drops the rows of older generations. A neighbour is sent a sync even
/// when no row is near it, so the rows that left the band go.
#[derive(Debug, Clone)]
pub struct BorderSync {
    /// The table whose rows are mirrored (`avatar`).
    pub table: String,
    /// Its position column.
    pub position: String,
    /// How far from a border rows are sent, metres: at least the widest `within` radius
    /// clients subscribe with.
    pub band: f32,
    /// How often.
    pub period: Duration,
    /// The neighbour's reducer.
    pub reducer: String,
    /// Rows per call at most (a call's JSON must fit the control plane's body limit).
    pub rows_per_call: usize,
}

impl RelayConfig {
    /// A relay for `zone` of `map`: reads the outbox every 50 ms, gives up on a request
    /// after 5 s, retries after 100 ms doubling up to 5 s.
    pub fn new(zone: ZoneId, map: ZoneMap) -> Self {
        RelayConfig {
            zone,
            map,
            poll: Duration::from_millis(50),
            request_timeout: Duration::from_secs(5),
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            border: None,
        }
    }

    /// With border interest: `sync` every `sync.period`.
    pub fn with_border(mut self, sync: BorderSync) -> Self {
        self.border = Some(sync);
        self
    }
}

/// What a relay has done (shared with whoever watches it).
#[derive(Debug, Default)]
pub struct RelayStats {
    /// Handoffs the target acknowledged and this zone forgot.
    pub delivered: AtomicU64,
    /// Handoffs the target refused for good (cancelled here).
    pub refused: AtomicU64,
    /// Deliveries or acknowledgements that failed (each is retried).
    pub failures: AtomicU64,
    /// Outbox reads.
    pub polls: AtomicU64,
    /// Delivered characters whose connections were told to move.
    pub moved: AtomicU64,
    /// Connections sent on from a zone their character had left (the module's `zone_redirect`
    /// rows).
    pub sent_on: AtomicU64,
    /// Border syncs a neighbour accepted (one per neighbour and period).
    pub border_syncs: AtomicU64,
}

/// A running relay; dropping it stops it.
#[derive(Debug)]
pub struct Relay {
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
    stats: Arc<RelayStats>,
}

impl Relay {
    /// Starts relaying `server`'s outbox on the current tokio runtime.
    pub fn start(server: &ServerHandle, config: RelayConfig) -> Self {
        let (stop, stopped) = watch::channel(false);
        let stats = Arc::new(RelayStats::default());
        let stats_for_run = stats.clone();
        let local = Local {
            router: server.router(),
            stats: stats.clone(),
            metrics: server.metrics().clone(),
            secrets: server.secrets().clone(),
        };
        let border = config.border.clone().map(|sync| {
            tokio::spawn(sync_borders(
                local.clone(),
                config.clone(),
                sync,
                stats.clone(),
                stopped.clone(),
            ))
        });
        let task = tokio::spawn(async move {
            run(local, config, stats_for_run, stopped).await;
            if let Some(border) = border {
                let _ = border.await;
            }
        });
        Relay {
            stop,
            task: Some(task),
            stats,
        }
    }

    /// What it has done so far.
    pub fn stats(&self) -> &Arc<RelayStats> {
        &self.stats
    }

    /// Stops it and waits for its deliveries in flight to end.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// This process's side: its control plane in-process, its durability watermark, its keys.
#[derive(Clone)]
struct Local {
    router: axum::Router,
    stats: Arc<RelayStats>,
    metrics: Arc<crate::Metrics>,
    secrets: Arc<crate::Secrets>,
}

impl Local {
    fn token(&self) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        self.secrets
            .issue(&self.secrets.zone_peer(), now, Duration::from_secs(3600))
    }

    async fn post(&self, path: &str, token: &str, body: String) -> Result<Bytes, RelayError> {
        let request = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(hyper::header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::from(body))
            .map_err(|e| transport("local", e))?;
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .map_err(|e| transport("local", e))?;
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), MAX_RESPONSE_BYTES)
            .await
            .map_err(|e| transport("local", e))?;
        answer(path, status, body)
    }
}

fn transport(addr: impl ToString, error: impl std::fmt::Display) -> RelayError {
    RelayError::Transport {
        addr: addr.to_string(),
        message: error.to_string(),
    }
}

fn answer(path: &str, status: StatusCode, body: Bytes) -> Result<Bytes, RelayError> {
    if status.is_success() {
        Ok(body)
    } else {
        Err(RelayError::Refused {
            path: path.to_owned(),
            status: status.as_u16(),
            body: String::from_utf8_lossy(&body).chars().take(500).collect(),
        })
    }
}

/// One POST to another zone's control plane, on a connection of its own.
async fn post_remote(
    addr: SocketAddr,
    path: &str,
    token: &str,
    body: String,
) -> Result<Bytes, RelayError> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| transport(addr, e))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| transport(addr, e))?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let request = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(hyper::header::HOST, addr.to_string())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(hyper::header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| transport(addr, e))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| transport(addr, e))?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
        .collect()
        .await
        .map_err(|e| transport(addr, e))?
        .to_bytes();
    driver.abort();
    answer(path, status, body)
}

/// An outbox row, as the relay needs it.
#[derive(Debug, Clone)]
struct Outgoing {
    id: u64,
    target_zone: u64,
    /// The character's identity (hex), when the module names it (`owner`).
    owner: Option<String>,
    started_at: serde_json::Value,
    character: serde_json::Value,
}

fn parse_outbox(body: &[u8]) -> Result<(u64, Vec<Outgoing>), RelayError> {
    let bad = |message: String| RelayError::BadAnswer {
        path: "/v1/sql".into(),
        message,
    };
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("not JSON: {e}")))?;
    let tick = value["tick"]
        .as_u64()
        .ok_or_else(|| bad("no tick".into()))?;
    let rows = value["rows"]
        .as_array()
        .ok_or_else(|| bad("no rows".into()))?;
    let rows = rows
        .iter()
        .map(|row| {
            Ok(Outgoing {
                id: row["id"]
                    .as_u64()
                    .ok_or_else(|| bad(format!("no id in {row}")))?,
                target_zone: row["target_zone"]
                    .as_u64()
                    .ok_or_else(|| bad(format!("no target_zone in {row}")))?,
                owner: row["owner"].as_str().map(str::to_owned),
                started_at: row["started_at"].clone(),
                character: row["character"].clone(),
            })
        })
        .collect::<Result<_, RelayError>>()?;
    Ok((tick, rows))
}

/// When a failed handoff may be tried again.
struct Retry {
    at: Instant,
    delay: Duration,
}

/// What the relay works on: a handoff (by outbox id) or a connection to send on (by the
/// character's identity, hex).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Job {
    Handoff(u64),
    Redirect(String),
}

/// A `zone_redirect` row: send `identity`'s connections here to `zone`, as asked at
/// `requested_at` (passed back to `redirect_sent` as read).
#[derive(Debug, Clone)]
struct Redirect {
    identity: String,
    zone: u64,
    requested_at: serde_json::Value,
}

fn parse_redirects(body: &[u8]) -> Result<Vec<Redirect>, RelayError> {
    let bad = |message: String| RelayError::BadAnswer {
        path: "/v1/sql".into(),
        message,
    };
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("not JSON: {e}")))?;
    let rows = value["rows"]
        .as_array()
        .ok_or_else(|| bad("no rows".into()))?;
    rows.iter()
        .map(|row| {
            Ok(Redirect {
                identity: row["identity"]
                    .as_str()
                    .ok_or_else(|| bad(format!("no identity in {row}")))?
                    .to_owned(),
                zone: row["zone"]
                    .as_u64()
                    .ok_or_else(|| bad(format!("no zone in {row}")))?,
                requested_at: row
                    .get("requested_at")
                    .filter(|at| at.is_number())
                    .cloned()
                    .ok_or_else(|| bad(format!("no requested_at in {row}")))?,
            })
        })
        .collect()
}

/// The relay's loop: reads the outbox (and the redirects) every poll, runs up to
/// [`MAX_IN_FLIGHT`] jobs at once, retries failed ones with backoff.
async fn run(
    local: Local,
    config: RelayConfig,
    stats: Arc<RelayStats>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut poll = tokio::time::interval(config.poll);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut in_flight: JoinSet<(Job, Result<Delivery, RelayError>)> = JoinSet::new();
    let mut busy: HashSet<Job> = HashSet::new();
    let mut retries: HashMap<Job, Retry> = HashMap::new();
    let mut token = local.token();
    let mut token_at = Instant::now();
    loop {
        tokio::select! {
            _ = stopped.changed() => break,
            Some(Ok((job, outcome))) = in_flight.join_next() => {
                settle(job, outcome, &mut busy, &mut retries, &stats, &config);
            }
            _ = poll.tick() => {
                // Every job that finished since, before choosing what to launch: this loop
                // settles one per turn, a turn can take long (a poll's reads wait for the
                // tick), and a finished job stays busy until settled.
                while let Some(result) = in_flight.try_join_next() {
                    if let Ok((job, outcome)) = result {
                        settle(job, outcome, &mut busy, &mut retries, &stats, &config);
                    }
                }
                if token_at.elapsed() > Duration::from_secs(600) {
                    token = local.token();
                    token_at = Instant::now();
                }
                stats.polls.fetch_add(1, Relaxed);
                let outbox = match local.post("/v1/sql", &token, "SELECT * FROM handoff_out".into()).await {
                    Ok(body) => parse_outbox(&body),
                    Err(error) => Err(error),
                };
                let (tick, rows) = match outbox {
                    Ok(read) => read,
                    Err(error) => {
                        tracing::warn!(%error, "cannot read the handoff outbox");
                        continue;
                    }
                };
                // A module without redirects (no `zone_redirect` table) answers 400: none.
                let redirects = match local.post("/v1/sql", &token, "SELECT * FROM zone_redirect".into()).await {
                    Ok(body) => parse_redirects(&body).unwrap_or_else(|error| {
                        tracing::warn!(%error, "cannot read the zone redirects");
                        Vec::new()
                    }),
                    Err(_) => Vec::new(),
                };
                let now = Instant::now();
                retries.retain(|job, _| match job {
                    Job::Handoff(id) => rows.iter().any(|row| row.id == *id),
                    Job::Redirect(who) => redirects.iter().any(|r| &r.identity == who),
                });
                let ready = |job: &Job| !busy.contains(job) && retries.get(job).is_none_or(|r| r.at <= now);
                let handoffs: Vec<Outgoing> = rows
                    .into_iter()
                    .filter(|row| ready(&Job::Handoff(row.id)))
                    .take(MAX_IN_FLIGHT.saturating_sub(busy.len()))
                    .collect();
                let redirects: Vec<Redirect> = redirects
                    .into_iter()
                    .filter(|r| ready(&Job::Redirect(r.identity.clone())))
                    .take(MAX_IN_FLIGHT.saturating_sub(busy.len() + handoffs.len()))
                    .collect();
                let timeout = config.request_timeout;
                let give_up = move || Err(transport("zone", format!("no answer in {timeout:?}")));
                for redirect in redirects {
                    let job = Job::Redirect(redirect.identity.clone());
                    busy.insert(job.clone());
                    let (local, token, map) = (local.clone(), token.clone(), config.map.clone());
                    in_flight.spawn(async move {
                        let outcome = tokio::time::timeout(timeout, send_on(&local, &token, &map, redirect))
                            .await
                            .unwrap_or_else(|_| give_up());
                        (job, outcome)
                    });
                }
                if handoffs.is_empty() {
                    continue;
                }
                // Never send what a crash could still undo here.
                while local.metrics.durable_seq.load(Relaxed) < tick {
                    tokio::select! {
                        _ = stopped.changed() => return,
                        () = tokio::time::sleep(Duration::from_millis(2)) => {}
                    }
                }
                for row in handoffs {
                    let job = Job::Handoff(row.id);
                    busy.insert(job.clone());
                    let (local, token, map, zone) =
                        (local.clone(), token.clone(), config.map.clone(), config.zone);
                    in_flight.spawn(async move {
                        let outcome = tokio::time::timeout(timeout, deliver(&local, &token, &map, zone, row))
                            .await
                            .unwrap_or_else(|_| give_up());
                        (job, outcome)
                    });
                }
            }
        }
    }
    in_flight.shutdown().await;
}

/// Books a finished job: counted, and retried with backoff if it failed.
fn settle(
    job: Job,
    outcome: Result<Delivery, RelayError>,
    busy: &mut HashSet<Job>,
    retries: &mut HashMap<Job, Retry>,
    stats: &RelayStats,
    config: &RelayConfig,
) {
    busy.remove(&job);
    match outcome {
        Ok(delivery) => {
            retries.remove(&job);
            let counter = match delivery {
                Delivery::Delivered => &stats.delivered,
                Delivery::Refused => &stats.refused,
                Delivery::SentOn => &stats.sent_on,
            };
            counter.fetch_add(1, Relaxed);
        }
        Err(error) => {
            stats.failures.fetch_add(1, Relaxed);
            let delay = retries
                .get(&job)
                .map_or(config.backoff, |r| (r.delay * 2).min(config.max_backoff));
            tracing::warn!(?job, %error, retry_in = ?delay, "zone relay job failed");
            retries.insert(
                job,
                Retry {
                    at: Instant::now() + delay,
                    delay,
                },
            );
        }
    }
}

/// How far `point` is from `zone`'s region (0 inside).
fn distance_to(zone: &super::ZoneSpec, point: [f32; 2]) -> f32 {
    let dx = (zone.min[0] - point[0])
        .max(point[0] - zone.max[0])
        .max(0.0);
    let dy = (zone.min[1] - point[1])
        .max(point[1] - zone.max[1])
        .max(0.0);
    dx.hypot(dy)
}

/// The rows of `rows` near each other zone of `map`, by zone id.
fn near_borders(
    map: &ZoneMap,
    own: ZoneId,
    position: &str,
    band: f32,
    rows: &[serde_json::Value],
) -> Vec<(ZoneId, Vec<serde_json::Value>)> {
    map.zones()
        .iter()
        .filter(|zone| zone.id != own)
        .map(|zone| {
            let near = rows
                .iter()
                .filter(|row| {
                    let point = [row[position][0].as_f64(), row[position][1].as_f64()];
                    match point {
                        [Some(x), Some(y)] => distance_to(zone, [x as f32, y as f32]) <= band,
                        _ => false,
                    }
                })
                .cloned()
                .collect();
            (zone.id, near)
        })
        .collect()
}

/// The border-interest loop (see [`BorderSync`]).
async fn sync_borders(
    local: Local,
    config: RelayConfig,
    sync: BorderSync,
    stats: Arc<RelayStats>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut period = tokio::time::interval(sync.period);
    period.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let sql = format!("SELECT * FROM {}", sync.table);
    loop {
        tokio::select! {
            _ = stopped.changed() => return,
            _ = period.tick() => {}
        }
        let token = local.token();
        let rows = match local.post("/v1/sql", &token, sql.clone()).await {
            Ok(body) => match serde_json::from_slice::<serde_json::Value>(&body) {
                Ok(mut answer) => match answer["rows"].take() {
                    serde_json::Value::Array(rows) => rows,
                    _ => Vec::new(),
                },
                Err(_) => Vec::new(),
            },
            Err(error) => {
                tracing::warn!(%error, table = sync.table, "cannot read the rows near the borders");
                continue;
            }
        };
        let generation = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let path = format!("/v1/call/{}", sync.reducer);
        let mut sends = JoinSet::new();
        for (zone, near) in near_borders(&config.map, config.zone, &sync.position, sync.band, &rows)
        {
            let Ok(target) = config.map.get(u32::from(zone)) else {
                continue;
            };
            let (addr, token, path, own) = (target.http, token.clone(), path.clone(), config.zone);
            let parts: Vec<Vec<serde_json::Value>> = if near.is_empty() {
                vec![Vec::new()]
            } else {
                near.chunks(sync.rows_per_call.max(1))
                    .map(<[_]>::to_vec)
                    .collect()
            };
            let timeout = config.request_timeout;
            sends.spawn(async move {
                let count = parts.len();
                for (i, part) in parts.into_iter().enumerate() {
                    let args =
                        serde_json::json!([own, generation, i + 1 == count, part]).to_string();
                    match tokio::time::timeout(timeout, post_remote(addr, &path, &token, args))
                        .await
                    {
                        Ok(Ok(_)) => {}
                        Ok(Err(error)) => return Err(error),
                        Err(_) => return Err(transport(addr, format!("no answer in {timeout:?}"))),
                    }
                }
                Ok(())
            });
        }
        while let Some(done) = sends.join_next().await {
            match done {
                Ok(Ok(())) => {
                    stats.border_syncs.fetch_add(1, Relaxed);
                }
                Ok(Err(error)) => {
                    stats.failures.fetch_add(1, Relaxed);
                    tracing::debug!(%error, "border sync not delivered");
                }
                Err(_) => {}
            }
        }
    }
}

/// Sends a connection whose character is elsewhere on to the zone holding it.
async fn send_on(
    local: &Local,
    token: &str,
    map: &ZoneMap,
    redirect: Redirect,
) -> Result<Delivery, RelayError> {
    let target = u32::try_from(redirect.zone)
        .ok()
        .and_then(|id| map.get(id).ok())
        .ok_or(RelayError::UnknownZone {
            id: 0,
            zone: redirect.zone,
        })?;
    move_clients(local, token, target, &redirect.identity).await?;
    let args = serde_json::json!([redirect.identity, redirect.requested_at]).to_string();
    local.post("/v1/call/redirect_sent", token, args).await?;
    Ok(Delivery::SentOn)
}

async fn deliver(
    local: &Local,
    token: &str,
    map: &ZoneMap,
    zone: ZoneId,
    row: Outgoing,
) -> Result<Delivery, RelayError> {
    let target = u32::try_from(row.target_zone)
        .ok()
        .and_then(|id| map.get(id).ok())
        .ok_or(RelayError::UnknownZone {
            id: row.id,
            zone: row.target_zone,
        })?;
    let args = serde_json::json!([zone, row.id, row.started_at, row.character]).to_string();
    match post_remote(target.http, "/v1/call/accept_handoff", token, args).await {
        Ok(_) => {}
        // The target refused the character for good (its reducer failed or the arguments are
        // not its handoff's): nothing was written there, so the handoff is cancelled here and
        // the character goes on in this zone.
        Err(RelayError::Refused { status, body, .. }) if status == 400 || status == 422 => {
            tracing::warn!(handoff = row.id, zone = target.id, status, %body, "handoff refused");
            let args = serde_json::json!([row.id, body]).to_string();
            local.post("/v1/call/handoff_refused", token, args).await?;
            return Ok(Delivery::Refused);
        }
        Err(error) => return Err(error),
    }
    // The character is in the target zone now; its connections here follow it. Best effort:
    // a client that misses this finds its character gone and connects again.
    if let Some(owner) = &row.owner {
        match move_clients(local, token, target, owner).await {
            Ok(()) => {
                local.stats.moved.fetch_add(1, Relaxed);
            }
            Err(error) => {
                tracing::warn!(handoff = row.id, %error, "could not move the character's connections");
            }
        }
    }
    local
        .post(
            "/v1/call/handoff_delivered",
            token,
            serde_json::json!([row.id]).to_string(),
        )
        .await?;
    Ok(Delivery::Delivered)
}

/// Asks `target` for a connect token for `owner` and has this zone send it to `owner`'s
/// connections ([`orrery_netcode::ServerMessage::ZoneMove`]).
async fn move_clients(
    local: &Local,
    token: &str,
    target: &super::ZoneSpec,
    owner: &str,
) -> Result<(), RelayError> {
    let path = "/v1/zone/connect-token";
    let body = serde_json::json!({ "identity": owner }).to_string();
    let answer = post_remote(target.http, path, token, body).await?;
    let answer: serde_json::Value =
        serde_json::from_slice(&answer).map_err(|e| RelayError::BadAnswer {
            path: path.into(),
            message: e.to_string(),
        })?;
    let Some(connect_token) = answer["connect_token"].as_str() else {
        return Err(RelayError::BadAnswer {
            path: path.into(),
            message: "no connect_token".into(),
        });
    };
    let body = serde_json::json!({
        "identity": owner,
        "zone": target.id,
        "connect_token": connect_token,
    });
    local.post("/v1/zone/move", token, body.to_string()).await?;
    Ok(())
}

/// How a handoff ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivery {
    /// The target holds the character.
    Delivered,
    /// The target refused it; it stays here.
    Refused,
    /// A connection was sent on to the zone holding its character.
    SentOn,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_go_to_the_zones_whose_border_they_are_near() {
        let zone = |id: ZoneId, min: [f32; 2], max: [f32; 2]| super::super::ZoneSpec {
            id,
            min,
            max,
            http: SocketAddr::from(([127, 0, 0, 1], 3000 + 2 * id)),
            udp: SocketAddr::from(([127, 0, 0, 1], 3001 + 2 * id)),
        };
        let map = ZoneMap::new(vec![
            zone(0, [-100.0, -100.0], [0.0, 100.0]),
            zone(1, [0.0, -100.0], [100.0, 0.0]),
            zone(2, [0.0, 0.0], [100.0, 100.0]),
        ])
        .unwrap();
        let row = |id: u64, x: f32, y: f32| serde_json::json!({"id": id, "position": [x, y]});
        let rows = [
            row(1, -5.0, -50.0), // 5 m from zone 1
            row(2, -5.0, 50.0),  // 5 m from zone 2
            row(3, -50.0, 0.0),  // deep in zone 0
            row(4, -5.0, -3.0),  // near both (a corner: 5 m and 5.8 m)
            serde_json::json!({"id": 5, "position": "bad"}),
        ];
        let near = near_borders(&map, 0, "position", 10.0, &rows);
        let ids = |zone: ZoneId| -> Vec<u64> {
            near.iter()
                .find(|(z, _)| *z == zone)
                .unwrap()
                .1
                .iter()
                .map(|row| row["id"].as_u64().unwrap())
                .collect()
        };
        assert_eq!(
            near.len(),
            2,
            "every other zone gets a sync, even an empty one"
        );
        assert_eq!(ids(1), [1, 4]);
        assert_eq!(ids(2), [2, 4]);
        assert!(
            near_borders(&map, 0, "position", 1.0, &rows)
                .iter()
                .all(|(_, r)| r.is_empty())
        );
    }

    #[test]
    fn an_outbox_page_is_read_and_a_malformed_one_refused() {
        let body = br#"{"table":"handoff_out","tick":42,"rows":[
            {"id":7,"relay":"00","target_zone":3,"started_at":1000,"character":[1,2,3]}]}"#;
        let (tick, rows) = parse_outbox(body).unwrap();
        assert_eq!(tick, 42);
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].id, rows[0].target_zone), (7, 3));
        assert_eq!(rows[0].character, serde_json::json!([1, 2, 3]));
        for bad in [
            &b"not json"[..],
            br#"{"rows":[]}"#,
            br#"{"tick":1}"#,
            br#"{"tick":1,"rows":[{"target_zone":1}]}"#,
            br#"{"tick":1,"rows":[{"id":1}]}"#,
        ] {
            assert!(matches!(
                parse_outbox(bad),
                Err(RelayError::BadAnswer { .. })
            ));
        }
    }
}
