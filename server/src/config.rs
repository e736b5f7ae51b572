//! [`ServerConfig`]: everything a server needs to start, with defaults that work on a fresh
//! machine, and [`ServerArgs`], the same settings as command-line flags for binaries (flatten
//! it into a clap parser and call [`ServerArgs::into_config`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use orrery_engine::{FsyncPolicy, SystemsExecutor};
use orrery_subscription::PublishConfig;
use orrery_tick::OverrunPolicy;

use crate::error::ServerError;
use crate::tls::TlsFiles;

/// Per-client limit on reducer calls: a token bucket refilled at `calls_per_second`, holding at
/// most `burst` calls. A call that finds the bucket empty is answered at once with an error
/// reply (`"rate limited: ..."`), counted, and not run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimit {
    /// Sustained calls per second.
    pub calls_per_second: f64,
    /// Calls that may arrive at once after a quiet period.
    pub burst: u32,
}

impl Default for RateLimit {
    /// 30 calls per second, bursts of 60.
    fn default() -> Self {
        RateLimit {
            calls_per_second: 30.0,
            burst: 60,
        }
    }
}

/// Where the world's tables live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Storage {
    /// In memory only (`Engine::new`): nothing survives a restart; `init` runs at every start.
    /// For tests and throw-away servers.
    Memory,
    /// A commit log and snapshots in `<data dir>/db` (`Engine::open`): every tick is durable,
    /// `init` runs only for a fresh database.
    Disk {
        /// When the log is fsynced.
        fsync: FsyncPolicy,
        /// A snapshot every this many ticks (0: never).
        snapshot_every_ticks: u64,
    },
}

/// Server settings. `ServerConfig::default()` is a local development server: data in
/// `./orrery-data`, 20 Hz, UDP on 127.0.0.1:7777, HTTP on 127.0.0.1:3000 (both falling back to
/// ports the OS chooses when taken), durable storage.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Data directory (created): the commit log (`db/`), the token secret (`server-secret`) and
    /// the admin token (`admin-token`), both written with mode 0600 at first start.
    pub data_dir: PathBuf,
    /// Where the token secret and the admin token are kept, if not in `data_dir`. The zones
    /// of one world share it, so an identity's bearer token is good in every zone and the
    /// zones agree on the identity they hand characters over as (`Secrets::zone_peer`).
    pub secret_dir: Option<PathBuf>,
    /// Ticks per second (1..=1000).
    pub tick_rate: u32,
    /// What the tick clock does when a tick runs late.
    pub overrun: OverrunPolicy,
    /// UDP address to bind.
    pub udp_bind: SocketAddr,
    /// Addresses clients send to (put in connect tokens). Empty: the bound addresses (with
    /// 127.0.0.1 in place of an unspecified IP). With several network workers, one address
    /// per worker, in worker order (worker `i` is reached at `udp_public[i]`).
    pub udp_public: Vec<SocketAddr>,
    /// Network workers: threads that each own a netcode session and a UDP socket of their
    /// own (worker `i` binds `udp_bind`'s port + `i`, or a free port when `udp_bind`'s port is
    /// 0 or, with `fallback_ports`, taken). Clients are assigned to workers by connection id
    /// (`client_id % net_workers`). Default [`default_net_workers`].
    pub net_workers: usize,
    /// Batched UDP I/O on the workers' sockets through `quinn-udp` (`recvmmsg`/GRO receives,
    /// GSO sends; default true). Off: one syscall per datagram.
    pub udp_batching: bool,
    /// HTTP control plane address.
    pub http_bind: SocketAddr,
    /// Serve the control plane over TLS (`https://`) with this certificate and key. Without
    /// it bearer and connect tokens cross the network in clear text: leave it unset only on
    /// loopback or behind a TLS-terminating proxy. `/metrics` on `metrics_bind` stays plain.
    pub tls: Option<TlsFiles>,
    /// If set, `/metrics` is also served on this address without authentication (for a
    /// Prometheus scraper on an internal interface). On `http_bind` it needs the admin token.
    pub metrics_bind: Option<SocketAddr>,
    /// When `udp_bind`, `http_bind` or `metrics_bind` is taken, bind port 0 instead (the OS
    /// picks a free port; the handle and the logs report the actual addresses).
    pub fallback_ports: bool,
    /// Per-client (and, over HTTP, per-identity) reducer call limit.
    pub rate_limit: RateLimit,
    /// Largest client → server message in bytes; a larger one disconnects the client.
    pub max_client_message: usize,
    /// Largest server → client message in bytes.
    pub max_server_message: usize,
    /// Unacknowledged reliable bytes per client; beyond it the client is disconnected
    /// (`BacklogExceeded`): a client that stopped reading cannot grow server memory.
    pub max_backlog: usize,
    /// Live connections at most.
    pub max_clients: usize,
    /// Connection handshakes in progress at most.
    pub max_pending: usize,
    /// Connection handshakes in progress from one IP address at most (default 16; raise it
    /// for load tests whose bots share an address, or behind a NAT gateway).
    pub max_pending_per_ip: usize,
    /// Subscription publishing: per-client byte budget, message size, queries per client.
    pub publish: PublishConfig,
    /// Where tables live.
    pub storage: Storage,
    /// With disk storage, record the input log (every tick's inputs, seed and state hash in
    /// its commit-log record) so that `replay` can re-run the world ([`crate::replay`],
    /// `docs/replay.md`). Default on.
    pub input_log: bool,
    /// How the module's systems run.
    pub executor: SystemsExecutor,
    /// Engine RNG seed.
    pub seed: u64,
    /// Lifetime of bearer tokens from `POST /v1/identity` (default 30 days).
    pub identity_token_lifetime: Duration,
    /// Lifetime of connect tokens from `POST /v1/connect-token` (default 30 s).
    pub connect_token_lifetime: Duration,
    /// Silence after which a connection is dropped (put in connect tokens; default 10 s).
    pub connection_timeout: Duration,
    /// Rows a one-off read (`POST /v1/sql`) may return; a query selecting more is refused
    /// (default 10,000).
    pub max_sql_rows: usize,
    /// Largest HTTP request body; larger ones get 413 before they are read (default 64 KiB).
    pub max_http_body: usize,
    /// Open HTTP connections at most (default 1,024); a further one is closed at once.
    pub max_http_connections: usize,
    /// An HTTP connection that neither reads nor writes for this long is closed (default
    /// 30 s): idle and byte-at-a-time clients do not keep their place under the cap.
    pub http_idle_timeout: Duration,
    /// Live connections one identity may hold (default 4); a further one is disconnected
    /// with a reason before `client_connected` runs. Identities are free, so this bounds
    /// what one identity costs, not what one attacker can; the per-address limits on
    /// identities and connect tokens do that.
    pub max_connections_per_identity: usize,
    /// New identities (`POST /v1/identity`) one source address may mint (default 1 per
    /// second, bursts of 10); beyond it 429.
    pub identities_per_address: RateLimit,
    /// Connect tokens (`POST /v1/connect-token`) one source address may fetch (default 5 per
    /// second, bursts of 20); beyond it 429. Each token takes a handshake slot while it is
    /// used, so this also bounds what one address can hold of the handshake table.
    pub connect_tokens_per_address: RateLimit,
}

/// Network workers at most.
pub const MAX_NET_WORKERS: usize = 64;

/// The default number of network workers: min(cores, 4).
pub fn default_net_workers() -> usize {
    std::thread::available_parallelism()
        .map(std::num::NonZero::get)
        .unwrap_or(1)
        .clamp(1, 4)
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            data_dir: PathBuf::from("./orrery-data"),
            secret_dir: None,
            tick_rate: 20,
            overrun: OverrunPolicy::Burst {
                max_ticks_per_poll: 3,
            },
            udp_bind: SocketAddr::from(([127, 0, 0, 1], 7777)),
            udp_public: Vec::new(),
            net_workers: default_net_workers(),
            udp_batching: true,
            http_bind: SocketAddr::from(([127, 0, 0, 1], 3000)),
            tls: None,
            metrics_bind: None,
            fallback_ports: true,
            rate_limit: RateLimit::default(),
            max_client_message: orrery_netcode::protocol::DEFAULT_MAX_CLIENT_MESSAGE,
            max_server_message: orrery_netcode::protocol::DEFAULT_MAX_SERVER_MESSAGE,
            max_backlog: 1024 * 1024,
            max_clients: 16_384,
            max_pending: 4_096,
            max_pending_per_ip: 16,
            publish: PublishConfig::default(),
            storage: Storage::Disk {
                fsync: FsyncPolicy::EveryTick,
                snapshot_every_ticks: 6_000,
            },
            input_log: true,
            executor: SystemsExecutor::MultiThreaded,
            seed: orrery_engine::EngineConfig::default().seed,
            max_http_body: 64 * 1024,
            max_http_connections: 1024,
            http_idle_timeout: Duration::from_secs(30),
            max_connections_per_identity: 4,
            identities_per_address: RateLimit {
                calls_per_second: 1.0,
                burst: 10,
            },
            connect_tokens_per_address: RateLimit {
                calls_per_second: 5.0,
                burst: 20,
            },
            identity_token_lifetime: Duration::from_secs(30 * 24 * 3600),
            connect_token_lifetime: Duration::from_secs(30),
            connection_timeout: Duration::from_secs(10),
            max_sql_rows: 10_000,
        }
    }
}

impl ServerConfig {
    /// A configuration for tests: in-memory storage, every address on 127.0.0.1 port 0,
    /// single-threaded systems, one network worker (tests of sharding set `net_workers`).
    pub fn for_tests(data_dir: impl Into<PathBuf>) -> Self {
        ServerConfig {
            data_dir: data_dir.into(),
            net_workers: 1,
            udp_bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            http_bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            storage: Storage::Memory,
            executor: SystemsExecutor::SingleThreaded,
            ..ServerConfig::default()
        }
    }

    /// The length of one tick.
    pub fn tick_duration(&self) -> Duration {
        Duration::from_secs(1) / self.tick_rate.max(1)
    }

    /// Checks the values that have a valid range.
    pub fn validate(&self) -> Result<(), ServerError> {
        let bad = |field, value: String, reason| {
            Err(ServerError::Config {
                field,
                value,
                reason,
            })
        };
        if !(1..=1000).contains(&self.tick_rate) {
            return bad("tick_rate", self.tick_rate.to_string(), "must be 1..=1000");
        }
        for (rate, burst, r) in [
            (
                "rate_limit.calls_per_second",
                "rate_limit.burst",
                self.rate_limit,
            ),
            (
                "identities_per_address.calls_per_second",
                "identities_per_address.burst",
                self.identities_per_address,
            ),
            (
                "connect_tokens_per_address.calls_per_second",
                "connect_tokens_per_address.burst",
                self.connect_tokens_per_address,
            ),
        ] {
            if !(r.calls_per_second.is_finite() && r.calls_per_second > 0.0) {
                return bad(
                    rate,
                    r.calls_per_second.to_string(),
                    "must be a positive number",
                );
            }
            if r.burst == 0 {
                return bad(burst, "0".into(), "must be at least 1");
            }
        }
        if self.max_pending_per_ip == 0 {
            return bad("max_pending_per_ip", "0".into(), "must be at least 1");
        }
        if self.max_connections_per_identity == 0 {
            return bad(
                "max_connections_per_identity",
                "0".into(),
                "must be at least 1",
            );
        }
        if self.max_clients == 0 {
            return bad("max_clients", "0".into(), "must be at least 1");
        }
        if self.max_client_message < 64 {
            return bad(
                "max_client_message",
                self.max_client_message.to_string(),
                "must be at least 64 bytes",
            );
        }
        if !(1..=MAX_NET_WORKERS).contains(&self.net_workers) {
            return bad(
                "net_workers",
                self.net_workers.to_string(),
                "must be 1..=64",
            );
        }
        if self.net_workers > 1
            && !self.udp_public.is_empty()
            && self.udp_public.len() != self.net_workers
        {
            return bad(
                "udp_public",
                format!("{} addresses", self.udp_public.len()),
                "with several network workers give none or one per worker",
            );
        }
        if self.udp_public.len() > 32 {
            return bad(
                "udp_public",
                self.udp_public.len().to_string(),
                "at most 32 addresses",
            );
        }
        Ok(())
    }
}

/// The server's settings as command-line flags (`#[command(flatten)]` them into a binary's
/// arguments). Defaults are [`ServerConfig::default`]'s.
#[derive(clap::Args, Clone, Debug)]
pub struct ServerArgs {
    /// Data directory (commit log, secrets, admin token).
    #[arg(long, default_value = "./orrery-data")]
    pub data_dir: PathBuf,
    /// Directory of the token secret and admin token, shared by the zones of one world
    /// (default: the data directory).
    #[arg(long)]
    pub secret_dir: Option<PathBuf>,
    /// Simulation ticks per second.
    #[arg(long, default_value_t = 20)]
    pub tick_rate: u32,
    /// UDP address for game clients (falls back to a free port when taken).
    #[arg(long, default_value = "127.0.0.1:7777")]
    pub udp: SocketAddr,
    /// Public UDP address(es) put in connect tokens (default: the bound address); with
    /// several network workers, one per worker in worker order.
    #[arg(long = "public-addr")]
    pub public_addr: Vec<SocketAddr>,
    /// Network worker threads, each with its own UDP socket on port `--udp`'s + i
    /// (0: min(cores, 4)).
    #[arg(long, default_value_t = 0)]
    pub net_workers: usize,
    /// One syscall per datagram instead of batched UDP I/O (recvmmsg, GRO, GSO).
    #[arg(long)]
    pub no_udp_batching: bool,
    /// HTTP control plane address (falls back to a free port when taken).
    #[arg(long, default_value = "127.0.0.1:3000")]
    pub http: SocketAddr,
    /// Serve the control plane over HTTPS with this PEM certificate chain (with --tls-key).
    #[arg(long, requires = "tls_key", value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert", value_name = "PEM")]
    pub tls_key: Option<PathBuf>,
    /// Also serve /metrics without authentication on this address.
    #[arg(long)]
    pub metrics: Option<SocketAddr>,
    /// Fail instead of choosing free ports when the requested ones are taken.
    #[arg(long)]
    pub strict_ports: bool,
    /// Reducer calls per second per client.
    #[arg(long, default_value_t = 30.0)]
    pub rate_limit: f64,
    /// Reducer call burst per client.
    #[arg(long, default_value_t = 60)]
    pub rate_burst: u32,
    /// Most connected clients.
    #[arg(long, default_value_t = 16_384)]
    pub max_clients: usize,
    /// Unacknowledged reliable bytes per client before it is disconnected.
    #[arg(long, default_value_t = 1024 * 1024)]
    pub max_backlog: usize,
    /// Subscription bytes per client per second.
    #[arg(long, default_value_t = 8 * 1024)]
    pub publish_budget: u32,
    /// How much more urgent a row with news (a change besides its quantized columns: a
    /// turn, a hit) is than one that only moved, when a client's budget binds (1: alike).
    #[arg(long, default_value_t = 16.0)]
    pub news_urgency: f32,
    /// Send a client too far behind for a delta the whole row again instead of the columns
    /// that changed since its version (fewer, larger records).
    #[arg(long)]
    pub no_rebase: bool,
    /// Publish a client the budget cannot keep up with once it has accrued this many bytes,
    /// and only the row its focus follows in the ticks between (0: every tick). Ranks a
    /// crowd's queues less often, for news later by up to the ticks waited.
    #[arg(long, default_value_t = 1024)]
    pub bound_flush_bytes: u32,
    /// Threads that publish subscriptions to clients in parallel (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub publish_workers: usize,
    /// Publish each tick on the tick thread instead of the publish thread (which runs it while
    /// the tick loop waits for, or simulates, the next tick; the messages are the same).
    #[arg(long)]
    pub no_pipeline_publish: bool,
    /// Fsync policy: `every-tick`, `never`, or an interval in milliseconds.
    #[arg(long, default_value = "every-tick")]
    pub fsync: String,
    /// Keep the world in memory only (nothing is written to disk but the secrets).
    #[arg(long)]
    pub in_memory: bool,
    /// Do not record the input log (what `replay` re-runs) in the commit log.
    #[arg(long)]
    pub no_input_log: bool,
    /// Run the module's systems on one thread.
    #[arg(long)]
    pub single_threaded: bool,
    /// Connection handshakes in progress from one IP address at most (raise it for load
    /// tests whose bots share an address, or behind a NAT gateway).
    #[arg(long, default_value_t = 16)]
    pub max_pending_per_ip: usize,
    /// Live connections one identity may hold.
    #[arg(long, default_value_t = 4)]
    pub max_connections_per_identity: usize,
    /// New identities (`POST /v1/identity`) one source address may mint per second.
    #[arg(long, default_value_t = 1.0)]
    pub identities_per_second: f64,
    /// New identities one source address may mint at once after a quiet period.
    #[arg(long, default_value_t = 10)]
    pub identity_burst: u32,
    /// Connect tokens (`POST /v1/connect-token`) one source address may fetch per second.
    #[arg(long, default_value_t = 5.0)]
    pub connect_tokens_per_second: f64,
    /// Connect tokens one source address may fetch at once after a quiet period.
    #[arg(long, default_value_t = 20)]
    pub connect_token_burst: u32,
}

impl ServerArgs {
    /// The configuration these flags describe.
    pub fn into_config(self) -> Result<ServerConfig, ServerError> {
        let fsync = match self.fsync.as_str() {
            "every-tick" => FsyncPolicy::EveryTick,
            "never" => FsyncPolicy::Never,
            ms => match ms.parse::<u64>() {
                Ok(ms) if ms > 0 => FsyncPolicy::Interval(Duration::from_millis(ms)),
                _ => {
                    return Err(ServerError::Config {
                        field: "fsync",
                        value: self.fsync,
                        reason: "expected every-tick, never or a positive number of milliseconds",
                    });
                }
            },
        };
        let defaults = ServerConfig::default();
        let config = ServerConfig {
            data_dir: self.data_dir,
            secret_dir: self.secret_dir,
            tick_rate: self.tick_rate,
            udp_bind: self.udp,
            udp_public: self.public_addr,
            net_workers: if self.net_workers == 0 {
                default_net_workers()
            } else {
                self.net_workers
            },
            udp_batching: !self.no_udp_batching,
            http_bind: self.http,
            tls: match (self.tls_cert, self.tls_key) {
                (Some(certificate_chain), Some(private_key)) => Some(TlsFiles {
                    certificate_chain,
                    private_key,
                }),
                _ => None,
            },
            metrics_bind: self.metrics,
            fallback_ports: !self.strict_ports,
            rate_limit: RateLimit {
                calls_per_second: self.rate_limit,
                burst: self.rate_burst,
            },
            max_clients: self.max_clients,
            max_backlog: self.max_backlog,
            publish: PublishConfig {
                budget_bytes_per_second: self.publish_budget,
                news_urgency: self.news_urgency,
                rebase: !self.no_rebase,
                bound_flush_bytes: self.bound_flush_bytes,
                workers: self.publish_workers,
                pipeline: !self.no_pipeline_publish,
                ..defaults.publish.clone()
            },
            storage: if self.in_memory {
                Storage::Memory
            } else {
                Storage::Disk {
                    fsync,
                    snapshot_every_ticks: 6_000,
                }
            },
            input_log: !self.no_input_log,
            executor: if self.single_threaded {
                SystemsExecutor::SingleThreaded
            } else {
                SystemsExecutor::MultiThreaded
            },
            max_pending_per_ip: self.max_pending_per_ip,
            max_connections_per_identity: self.max_connections_per_identity,
            identities_per_address: RateLimit {
                calls_per_second: self.identities_per_second,
                burst: self.identity_burst,
            },
            connect_tokens_per_address: RateLimit {
                calls_per_second: self.connect_tokens_per_second,
                burst: self.connect_token_burst,
            },
            ..defaults
        };
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        server: ServerArgs,
    }

    fn parse(args: &[&str]) -> Result<ServerConfig, ServerError> {
        let cli = Cli::try_parse_from(std::iter::once("server").chain(args.iter().copied()))
            .map_err(|e| ServerError::Config {
                field: "args",
                value: e.to_string(),
                reason: "unparsable",
            })?;
        cli.server.into_config()
    }

    #[test]
    fn net_workers_default_flags_and_public_addresses() {
        let d = parse(&[]).unwrap();
        assert_eq!(d.net_workers, default_net_workers());
        assert!((1..=4).contains(&d.net_workers));
        assert!(d.udp_batching);
        let c = parse(&["--net-workers", "3", "--no-udp-batching"]).unwrap();
        assert_eq!(c.net_workers, 3);
        assert!(!c.udp_batching);
        // Several workers: public addresses are none or one per worker.
        let c = parse(&[
            "--net-workers",
            "2",
            "--public-addr",
            "10.0.0.1:7777",
            "--public-addr",
            "10.0.0.1:7778",
        ])
        .unwrap();
        assert_eq!(c.udp_public.len(), 2);
        let e = parse(&["--net-workers", "2", "--public-addr", "10.0.0.1:7777"]).unwrap_err();
        assert!(
            matches!(
                e,
                ServerError::Config {
                    field: "udp_public",
                    ..
                }
            ),
            "{e}"
        );
        let e = parse(&["--net-workers", "65"]).unwrap_err();
        assert!(
            matches!(
                e,
                ServerError::Config {
                    field: "net_workers",
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn per_address_limits_default_and_flags() {
        let d = parse(&[]).unwrap();
        let defaults = ServerConfig::default();
        assert_eq!(d.max_pending_per_ip, defaults.max_pending_per_ip);
        assert_eq!(
            d.max_connections_per_identity,
            defaults.max_connections_per_identity
        );
        assert_eq!(d.identities_per_address, defaults.identities_per_address);
        assert_eq!(
            d.connect_tokens_per_address,
            defaults.connect_tokens_per_address
        );
        let c = parse(&[
            "--max-pending-per-ip",
            "4096",
            "--max-connections-per-identity",
            "2",
            "--identities-per-second",
            "500",
            "--identity-burst",
            "1000",
            "--connect-tokens-per-second",
            "600",
            "--connect-token-burst",
            "1200",
        ])
        .unwrap();
        assert_eq!(c.max_pending_per_ip, 4096);
        assert_eq!(c.max_connections_per_identity, 2);
        assert_eq!(
            c.identities_per_address,
            RateLimit {
                calls_per_second: 500.0,
                burst: 1000
            }
        );
        assert_eq!(
            c.connect_tokens_per_address,
            RateLimit {
                calls_per_second: 600.0,
                burst: 1200
            }
        );
        for bad in [
            ["--identities-per-second", "0"],
            ["--connect-token-burst", "0"],
            ["--max-pending-per-ip", "0"],
        ] {
            assert!(
                matches!(parse(&bad), Err(ServerError::Config { .. })),
                "{bad:?}"
            );
        }
    }
}
