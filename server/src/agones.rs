//! Running a server under [Agones](https://agones.dev): the lifecycle calls to the Agones SDK
//! sidecar (`Ready`, `Health`, `Shutdown`), player tracking and labels.
//!
//! This module owns the conversation with the sidecar of one game-server pod, through the
//! Agones Rust SDK (`agones`, vendored in `third_party/agones/`): [`Agones::start`] spawns one
//! tokio task that, for the [`ServerHandle`] it was given,
//!
//! 1. connects to the sidecar on `localhost` ([`AgonesConfig::port`], else the
//!    `AGONES_SDK_GRPC_PORT` environment variable, else 9357), retrying every
//!    [`AgonesConfig::connect_retry`] for as long as it takes (a sidecar that starts after the
//!    server is normal in a pod);
//! 2. sets the configured labels (e.g. `orrery.dev/zone`), then lists the connected clients
//!    once through the control plane (which proves the network workers answer) and calls
//!    `Ready`;
//! 3. sends a `Health` ping every [`AgonesConfig::health_interval`] (a missed interval is not
//!    made up: [`MissedTickBehavior::Delay`]); the fleet's `health.periodSeconds` must be
//!    longer (`deploy/fleet.yaml` uses 2 s pings and a 5 s period);
//! 4. every [`AgonesConfig::players_interval`] lists the connected clients
//!    (`GET /v1/admin/clients`, in-process on [`ServerHandle::router`] with the admin token)
//!    and reports the difference with the alpha player-tracking API: `PlayerConnect` for each
//!    identity (64 hex characters) that appeared, `PlayerDisconnect` for each that left;
//! 5. on [`Agones::shutdown`] calls `Shutdown`, so that Agones deletes the pod.
//!
//! A failed SDK call is logged (`tracing`) and tried again on the next round; nothing here
//! panics or stops the server. See `docs/agones.md`.

use std::collections::BTreeSet;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt as _;
use serde::Deserialize;
use tokio::sync::{mpsc, watch};
use tokio::time::MissedTickBehavior;
use tower::ServiceExt as _;

use crate::runtime::ServerHandle;

/// The port the Agones SDK sidecar serves gRPC on when `AGONES_SDK_GRPC_PORT` is not set.
pub const DEFAULT_SDK_PORT: u16 = 9357;

/// The label naming the zone a game server runs (`--zone`).
pub const ZONE_LABEL: &str = "orrery.dev/zone";

/// What [`Agones::start`] does and how often.
#[derive(Debug, Clone)]
pub struct AgonesConfig {
    /// The sidecar's gRPC port on `localhost`. `None`: `AGONES_SDK_GRPC_PORT`, else
    /// [`DEFAULT_SDK_PORT`] (the SDK's own rule).
    pub port: Option<u16>,
    /// Interval between `Health` pings. Default 2 s.
    pub health_interval: Duration,
    /// Interval between player-tracking rounds (one listing of the connected clients and the
    /// `PlayerConnect`/`PlayerDisconnect` calls for the difference). Default 1 s.
    pub players_interval: Duration,
    /// How long one connection attempt to the sidecar may take. Default 5 s.
    pub connect_timeout: Duration,
    /// Wait between connection attempts. Default 1 s.
    pub connect_retry: Duration,
    /// How long one SDK call may take before it counts as failed. Default 5 s.
    pub call_timeout: Duration,
    /// How long [`Agones::shutdown`] keeps trying `Shutdown`. Default 10 s.
    pub shutdown_timeout: Duration,
    /// Whether to report players (the alpha `PlayerTracking` feature gate of Agones must be
    /// on). Default true.
    pub track_players: bool,
    /// Labels to set on the `GameServer` (key, value), before `Ready`.
    pub labels: Vec<(String, String)>,
}

impl Default for AgonesConfig {
    fn default() -> Self {
        AgonesConfig {
            port: None,
            health_interval: Duration::from_secs(2),
            players_interval: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(5),
            connect_retry: Duration::from_secs(1),
            call_timeout: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(10),
            track_players: true,
            labels: Vec::new(),
        }
    }
}

impl AgonesConfig {
    /// Adds the label [`ZONE_LABEL`]` = zone`.
    pub fn with_zone(mut self, zone: crate::zone::ZoneId) -> Self {
        self.labels.push((ZONE_LABEL.to_owned(), zone.to_string()));
        self
    }

    /// The sidecar port this configuration connects to: [`AgonesConfig::port`], else a valid
    /// `AGONES_SDK_GRPC_PORT`, else [`DEFAULT_SDK_PORT`].
    pub fn sdk_port(&self) -> Result<u16, AgonesError> {
        if let Some(port) = self.port {
            return Ok(port);
        }
        match std::env::var("AGONES_SDK_GRPC_PORT") {
            Ok(value) => value
                .trim()
                .parse()
                .map_err(|_| AgonesError::InvalidPort { value }),
            Err(_) => Ok(DEFAULT_SDK_PORT),
        }
    }

    /// Checks the labels against Kubernetes' rules for label keys and values.
    pub fn validate(&self) -> Result<u16, AgonesError> {
        for (key, value) in &self.labels {
            if !valid_label_key(key) {
                return Err(AgonesError::InvalidLabelKey { key: key.clone() });
            }
            if !valid_label_value(value) {
                return Err(AgonesError::InvalidLabelValue {
                    key: key.clone(),
                    value: value.clone(),
                });
            }
        }
        if self.health_interval.is_zero() {
            return Err(AgonesError::ZeroInterval {
                what: "health_interval",
            });
        }
        if self.players_interval.is_zero() {
            return Err(AgonesError::ZeroInterval {
                what: "players_interval",
            });
        }
        self.sdk_port()
    }
}

/// Why the Agones integration could not start, or what one of its steps failed with (those
/// are logged and retried).
#[derive(Debug, thiserror::Error)]
pub enum AgonesError {
    /// `AGONES_SDK_GRPC_PORT` is not a port number.
    #[error("AGONES_SDK_GRPC_PORT={value:?} is not a port number")]
    InvalidPort {
        /// The variable's value.
        value: String,
    },
    /// A label key Kubernetes would refuse.
    #[error(
        "label key {key:?} is not a valid Kubernetes label key ([prefix/]name, name of at most 63 characters [A-Za-z0-9._-], alphanumeric at both ends)"
    )]
    InvalidLabelKey {
        /// The key.
        key: String,
    },
    /// A label value Kubernetes would refuse.
    #[error(
        "label {key:?} value {value:?} is not a valid Kubernetes label value (at most 63 characters [A-Za-z0-9._-], alphanumeric at both ends)"
    )]
    InvalidLabelValue {
        /// The key.
        key: String,
        /// The value.
        value: String,
    },
    /// An interval of zero.
    #[error("{what} must not be zero")]
    ZeroInterval {
        /// Which setting.
        what: &'static str,
    },
    /// No sidecar answered on the port within the connection timeout.
    #[error("no Agones SDK sidecar answered on localhost:{port}: {reason}")]
    Connect {
        /// The port.
        port: u16,
        /// The SDK's error, or the timeout.
        reason: String,
    },
    /// An SDK call failed or timed out.
    #[error("Agones SDK call {call} failed: {reason}")]
    Call {
        /// The call (`Ready`, `PlayerConnect(<id>)`, ...).
        call: String,
        /// The SDK's error, or the timeout.
        reason: String,
    },
    /// The control plane refused or failed the listing of the connected clients.
    #[error("listing the connected clients: HTTP {status}: {body}")]
    ListClients {
        /// The HTTP status.
        status: u16,
        /// The response body (an error message).
        body: String,
    },
    /// The listing of the connected clients was not the expected JSON.
    #[error("the connected-clients listing is not the expected JSON ({reason}): {body}")]
    ClientsJson {
        /// The parse error.
        reason: String,
        /// The body, at most 200 characters of it.
        body: String,
    },
    /// The integration's task ended abnormally.
    #[error("the Agones task failed: {reason}")]
    Task {
        /// The join error.
        reason: String,
    },
}

/// Where the integration is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgonesState {
    /// Trying to reach the sidecar.
    Connecting,
    /// Connected; labels and `Ready` not yet through.
    Connected,
    /// `Ready` was accepted; health pings and player tracking run.
    Ready,
    /// Stopping: `Shutdown` is being sent.
    ShuttingDown,
    /// `Shutdown` was accepted (or could not be sent before the timeout), the task ended.
    Stopped,
}

/// What the integration has done so far ([`Agones::status`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgonesStatus {
    /// Where it is.
    pub state: AgonesState,
    /// Failed connection attempts so far.
    pub connect_failures: u64,
    /// Failed SDK calls so far (each is retried).
    pub call_failures: u64,
    /// Health pings handed to the SDK's health stream.
    pub health_pings: u64,
    /// Players the sidecar has been told are connected.
    pub players: usize,
    /// Whether `Shutdown` was accepted.
    pub shutdown_sent: bool,
}

/// The running integration: one tokio task. Stop it with [`Agones::shutdown`] before
/// stopping the server; dropping it aborts the task without calling `Shutdown`.
#[derive(Debug)]
pub struct Agones {
    stop: watch::Sender<bool>,
    status: watch::Receiver<AgonesStatus>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Agones {
    /// Starts the integration for `server` (call it once [`crate::start`] returned, i.e. when
    /// the server is serving) inside the current tokio runtime. Fails only on a configuration
    /// error; an absent sidecar is waited for.
    pub fn start(server: &ServerHandle, config: AgonesConfig) -> Result<Agones, AgonesError> {
        let port = config.validate()?;
        let (stop, stop_rx) = watch::channel(false);
        let (status_tx, status) = watch::channel(AgonesStatus {
            state: AgonesState::Connecting,
            connect_failures: 0,
            call_failures: 0,
            health_pings: 0,
            players: 0,
            shutdown_sent: false,
        });
        let clients = ClientLister {
            router: server.router(),
            admin_token: server.admin_token().to_owned(),
        };
        let task = tokio::spawn(
            Driver {
                config,
                port,
                clients,
                stop: stop_rx,
                status: status_tx,
            }
            .run(),
        );
        Ok(Agones {
            stop,
            status,
            task: Some(task),
        })
    }

    /// What the integration has done so far.
    pub fn status(&self) -> AgonesStatus {
        self.status.borrow().clone()
    }

    /// A receiver of every status change.
    pub fn watch_status(&self) -> watch::Receiver<AgonesStatus> {
        self.status.clone()
    }

    /// Stops health pings and player tracking, calls `Shutdown` (retried until
    /// [`AgonesConfig::shutdown_timeout`]) and waits for the task. Returns the final status;
    /// `shutdown_sent` says whether the sidecar accepted `Shutdown`.
    pub async fn shutdown(mut self) -> Result<AgonesStatus, AgonesError> {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            task.await.map_err(|e| AgonesError::Task {
                reason: e.to_string(),
            })?;
        }
        Ok(self.status())
    }
}

impl Drop for Agones {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Lists the server's connected clients in-process.
struct ClientLister {
    router: axum::Router,
    admin_token: String,
}

#[derive(Deserialize)]
struct ClientList {
    clients: Vec<ListedClient>,
}

#[derive(Deserialize)]
struct ListedClient {
    identity: String,
}

impl ClientLister {
    /// The identities (hex) of the connected clients.
    async fn identities(&self) -> Result<BTreeSet<String>, AgonesError> {
        let request = Request::get("/v1/admin/clients")
            .header(
                header::AUTHORIZATION,
                format!("Bearer {}", self.admin_token),
            )
            .body(Body::empty())
            .map_err(|e| AgonesError::ListClients {
                status: 0,
                body: e.to_string(),
            })?;
        let response = match self.router.clone().oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| AgonesError::ListClients {
                status: status.as_u16(),
                body: e.to_string(),
            })?
            .to_bytes();
        if status != StatusCode::OK {
            return Err(AgonesError::ListClients {
                status: status.as_u16(),
                body: String::from_utf8_lossy(&bytes).into_owned(),
            });
        }
        let list: ClientList =
            serde_json::from_slice(&bytes).map_err(|e| AgonesError::ClientsJson {
                reason: e.to_string(),
                body: String::from_utf8_lossy(&bytes).chars().take(200).collect(),
            })?;
        Ok(list.clients.into_iter().map(|c| c.identity).collect())
    }
}

/// The task's state.
struct Driver {
    config: AgonesConfig,
    port: u16,
    clients: ClientLister,
    stop: watch::Receiver<bool>,
    status: watch::Sender<AgonesStatus>,
}

/// How a step ended when the stop signal may have come first.
enum Step<T> {
    Done(T),
    Stopped,
}

impl Driver {
    async fn run(mut self) {
        if let Step::Done(mut sdk) = self.connect().await {
            self.set_state(AgonesState::Connected);
            if let Step::Done(()) = self.labels_and_ready(&mut sdk).await {
                self.set_state(AgonesState::Ready);
                tracing::info!(port = self.port, "Agones: Ready");
                self.serve(&mut sdk).await;
            }
            self.set_state(AgonesState::ShuttingDown);
            self.shutdown(&mut sdk).await;
        } else {
            tracing::info!("Agones: stopped before the sidecar was reached");
        }
        self.set_state(AgonesState::Stopped);
    }

    fn set_state(&self, state: AgonesState) {
        self.status.send_modify(|s| s.state = state);
    }

    fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    /// Waits `duration` unless stopped first.
    async fn wait(&mut self, duration: Duration) -> Step<()> {
        tokio::select! {
            _ = tokio::time::sleep(duration) => Step::Done(()),
            _ = stopped(&mut self.stop) => Step::Stopped,
        }
    }

    async fn connect(&mut self) -> Step<agones::Sdk> {
        let port = self.port;
        let (timeout, retry) = (self.config.connect_timeout, self.config.connect_retry);
        loop {
            if self.stopped() {
                return Step::Stopped;
            }
            let attempt = tokio::time::timeout(timeout, agones::Sdk::new(Some(port), None));
            let mut stop = self.stop.clone();
            let result = tokio::select! {
                r = attempt => r,
                _ = stopped(&mut stop) => return Step::Stopped,
            };
            let error = match result {
                Ok(Ok(sdk)) => {
                    tracing::info!(port, "Agones: connected to the SDK sidecar");
                    return Step::Done(sdk);
                }
                Ok(Err(e)) => AgonesError::Connect {
                    port,
                    reason: e.to_string(),
                },
                Err(_) => AgonesError::Connect {
                    port,
                    reason: format!("no answer within {timeout:?}"),
                },
            };
            let failures = {
                let mut n = 0;
                self.status.send_modify(|s| {
                    s.connect_failures += 1;
                    n = s.connect_failures;
                });
                n
            };
            // Every failure at first, then one in ten, so that a long wait does not flood.
            if failures <= 3 || failures.is_multiple_of(10) {
                tracing::warn!(%error, failures, retry_in = ?retry, "Agones: sidecar not reachable yet");
            }
            if let Step::Stopped = self.wait(retry).await {
                return Step::Stopped;
            }
        }
    }

    /// Runs one SDK call with the call timeout; failures are counted and logged.
    async fn call<T, F>(&self, call: impl FnOnce() -> String, fut: F) -> Result<T, AgonesError>
    where
        F: Future<Output = agones::errors::Result<T>>,
    {
        let result = match tokio::time::timeout(self.config.call_timeout, fut).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(AgonesError::Call {
                call: call(),
                reason: e.to_string(),
            }),
            Err(_) => Err(AgonesError::Call {
                call: call(),
                reason: format!("no answer within {:?}", self.config.call_timeout),
            }),
        };
        if let Err(error) = &result {
            self.status.send_modify(|s| s.call_failures += 1);
            tracing::warn!(%error, "Agones: SDK call failed; will retry");
        }
        result
    }

    /// Sets the labels, checks the control plane answers, calls `Ready`; each step retried
    /// until it succeeds or the integration is stopped.
    async fn labels_and_ready(&mut self, sdk: &mut agones::Sdk) -> Step<()> {
        let retry = self.config.connect_retry;
        for (key, value) in self.config.labels.clone() {
            loop {
                let set = sdk.set_label(key.clone(), value.clone());
                if self
                    .call(|| format!("SetLabel({key}={value})"), set)
                    .await
                    .is_ok()
                {
                    tracing::info!(%key, %value, "Agones: label set");
                    break;
                }
                if let Step::Stopped = self.wait(retry).await {
                    return Step::Stopped;
                }
            }
        }
        loop {
            match self.clients.identities().await {
                Ok(_) => break,
                Err(error) => {
                    tracing::warn!(%error, "Agones: the control plane does not answer yet; Ready waits")
                }
            }
            if let Step::Stopped = self.wait(retry).await {
                return Step::Stopped;
            }
        }
        loop {
            if self.call(|| "Ready".into(), sdk.ready()).await.is_ok() {
                return Step::Done(());
            }
            if let Step::Stopped = self.wait(retry).await {
                return Step::Stopped;
            }
        }
    }

    /// Health pings and player tracking until stopped.
    async fn serve(&mut self, sdk: &mut agones::Sdk) {
        let mut health_interval = tokio::time::interval(self.config.health_interval);
        health_interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut players_interval = tokio::time::interval(self.config.players_interval);
        players_interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut health = sdk.health_check();
        let mut alpha = sdk.alpha().clone();
        // Identities the sidecar was told are connected.
        let mut reported = BTreeSet::new();
        let mut stop = self.stop.clone();
        loop {
            tokio::select! {
                _ = stopped(&mut stop) => return,
                _ = health_interval.tick() => self.ping(sdk, &mut health),
                _ = players_interval.tick(), if self.config.track_players => {
                    self.track_players(&mut alpha, &mut reported).await;
                }
            }
        }
    }

    /// Hands one ping to the SDK's health stream; a stream that ended (the sidecar went away
    /// or restarted) is opened again.
    fn ping(&self, sdk: &agones::Sdk, health: &mut mpsc::Sender<()>) {
        match health.try_send(()) {
            Ok(()) => self.status.send_modify(|s| s.health_pings += 1),
            Err(mpsc::error::TrySendError::Full(())) => {
                self.status.send_modify(|s| s.call_failures += 1);
                tracing::warn!("Agones: the health stream is not taking pings (sidecar stalled?)");
            }
            Err(mpsc::error::TrySendError::Closed(())) => {
                self.status.send_modify(|s| s.call_failures += 1);
                tracing::warn!("Agones: the health stream ended; opening a new one");
                *health = sdk.health_check();
                if health.try_send(()).is_ok() {
                    self.status.send_modify(|s| s.health_pings += 1);
                }
            }
        }
    }

    /// One player-tracking round.
    async fn track_players(
        &self,
        alpha: &mut agones::alpha::Alpha,
        reported: &mut BTreeSet<String>,
    ) {
        let connected = match self.clients.identities().await {
            Ok(ids) => ids,
            Err(error) => {
                tracing::warn!(%error, "Agones: cannot list the connected clients");
                return;
            }
        };
        for id in connected.difference(&reported.clone()) {
            let call = alpha.player_connect(id.clone());
            if self
                .call(|| format!("PlayerConnect({id})"), call)
                .await
                .is_ok()
            {
                tracing::debug!(player = %id, "Agones: player connected");
                reported.insert(id.clone());
            }
        }
        for id in reported.clone().difference(&connected) {
            let call = alpha.player_disconnect(id.clone());
            if self
                .call(|| format!("PlayerDisconnect({id})"), call)
                .await
                .is_ok()
            {
                tracing::debug!(player = %id, "Agones: player disconnected");
                reported.remove(id);
            }
        }
        let n = reported.len();
        self.status.send_modify(|s| s.players = n);
    }

    /// `Shutdown`, retried until accepted or the shutdown timeout.
    async fn shutdown(&self, sdk: &mut agones::Sdk) {
        let deadline = tokio::time::Instant::now() + self.config.shutdown_timeout;
        loop {
            if self
                .call(|| "Shutdown".into(), sdk.shutdown())
                .await
                .is_ok()
            {
                self.status.send_modify(|s| s.shutdown_sent = true);
                tracing::info!("Agones: Shutdown sent");
                return;
            }
            let retry = self.config.connect_retry.min(Duration::from_secs(1));
            if tokio::time::Instant::now() + retry >= deadline {
                tracing::error!(
                    timeout = ?self.config.shutdown_timeout,
                    "Agones: the sidecar did not take Shutdown; Agones will not delete this pod by itself"
                );
                return;
            }
            tokio::time::sleep(retry).await;
        }
    }
}

/// Resolves once the stop signal is set (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// A Kubernetes label key: an optional DNS-subdomain prefix and `/`, then a name.
fn valid_label_key(key: &str) -> bool {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|part| {
                !part.is_empty()
                    && part
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !part.starts_with('-')
                    && !part.ends_with('-')
            })
    });
    prefix_ok && !name.is_empty() && valid_label_value(name)
}

/// A Kubernetes label value (may be empty).
fn valid_label_value(value: &str) -> bool {
    value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && value
            .bytes()
            .next()
            .is_none_or(|b| b.is_ascii_alphanumeric())
        && value
            .bytes()
            .last()
            .is_none_or(|b| b.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_rules() {
        assert!(valid_label_key(ZONE_LABEL));
        assert!(valid_label_key("zone"));
        assert!(!valid_label_key("orrery.dev/"));
        assert!(!valid_label_key("Orrery.dev/zone"));
        assert!(!valid_label_key("-a"));
        assert!(valid_label_value("12"));
        assert!(valid_label_value(""));
        assert!(!valid_label_value("a b"));
        assert!(!valid_label_value(&"x".repeat(64)));
        let config = AgonesConfig {
            port: Some(1),
            labels: vec![("k".into(), "bad value".into())],
            ..AgonesConfig::default()
        };
        assert!(matches!(
            config.validate(),
            Err(AgonesError::InvalidLabelValue { value, .. }) if value == "bad value"
        ));
    }

    #[test]
    fn zone_label_and_explicit_port() {
        let config = AgonesConfig {
            port: Some(9400),
            ..AgonesConfig::default()
        }
        .with_zone(3);
        assert_eq!(config.labels, vec![(ZONE_LABEL.to_owned(), "3".to_owned())]);
        assert_eq!(config.validate().unwrap(), 9400);
        let zero = AgonesConfig {
            port: Some(1),
            health_interval: Duration::ZERO,
            ..AgonesConfig::default()
        };
        assert!(matches!(
            zero.validate(),
            Err(AgonesError::ZeroInterval {
                what: "health_interval"
            })
        ));
    }
}
