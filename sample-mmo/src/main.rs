//! `sample-mmo`: the sample MMO module served by `orrery-server`.
//!
//! `cargo run --release -p sample-mmo` works on a fresh machine: data in `./orrery-data`
//! (created; the commit log in `db/`, the admin token in `admin-token`), HTTP on
//! 127.0.0.1:3000 and UDP on 127.0.0.1:7777, or ports the OS chooses when those are taken. The
//! actual addresses, the admin token's path and a curl example are logged at start. Ctrl-C
//! stops the server cleanly (clients are told, the commit log is flushed and fsynced).
//!
//! `sample-mmo [world flags] replay DIR [--from TICK] [--to TICK] [--dump TICK]` re-runs a
//! recorded data directory with this module (give it the world flags the server ran with) and
//! reports the first tick whose state hash differs (`docs/replay.md`).

use std::time::Duration;

use clap::Parser;
use orrery_engine::Identity;
use orrery_server::{ReplayArgs, ServerArgs};
use sample_mmo::WorldSettings;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Run the Orrery sample MMO server.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    server: ServerArgs,
    /// Stop after this many seconds (runs until Ctrl-C when absent).
    #[arg(long)]
    duration: Option<f64>,
    /// Seconds between statistics log lines.
    #[arg(long, default_value_t = 10.0)]
    stats_every: f64,
    /// NPCs a new world starts with.
    #[arg(long, default_value_t = 10_000)]
    npcs: u32,
    /// Edge of the square world in metres (a new world only).
    #[arg(long, default_value_t = 4_000.0)]
    world_size: f32,
    /// Distance between towns in metres, where new characters start (a new world only): one
    /// at the origin and one every this many metres at least 500 m inside the edge; 0: the
    /// origin's only.
    #[arg(long, default_value_t = 1_000.0)]
    town_spacing: f32,
    /// New characters start in the first town with fewer online avatars than this within
    /// 100 m (else in the least crowded).
    #[arg(long, default_value_t = 100)]
    town_capacity: u32,
    /// Seconds between supply drops.
    #[arg(long, default_value_t = 60.0)]
    supply_drop_every: f64,
    /// An identity (64 hex characters) allowed to call `set_config`; repeatable.
    #[arg(long = "admin", value_name = "IDENTITY")]
    admins: Vec<String>,
    /// Run as one zone of a zoned world: the map of zones (TOML, `docs/zones.md`). The
    /// zone's addresses come from the map; the data directory defaults to
    /// `./orrery-data/zone-N` and the shared secret directory to the map's directory.
    #[arg(long, requires = "zone")]
    zone_map: Option<std::path::PathBuf>,
    /// The zone of `--zone-map` this process is.
    #[arg(long, requires = "zone_map")]
    zone: Option<u32>,
    /// Run as an Agones game server: report Ready, health pings and connected players to the
    /// Agones SDK sidecar (`AGONES_SDK_GRPC_PORT`, default 9357), label the GameServer
    /// `orrery.dev/zone=<id>` with `--zone`, and call Shutdown on exit (`docs/agones.md`).
    #[arg(long)]
    agones: bool,
}

/// The zone this process is, when it is one.
struct Zoning {
    map: orrery_server::zone::ZoneMap,
    zone: orrery_server::zone::ZoneId,
}

/// What to do instead of serving.
#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Re-run a recorded data directory and check every tick's state hash.
    Replay(ReplayArgs),
}

impl Args {
    fn world(&self) -> anyhow::Result<WorldSettings> {
        anyhow::ensure!(
            self.world_size.is_finite() && (100.0..=100_000.0).contains(&self.world_size),
            "--world-size must be 100-100000 metres, got {}",
            self.world_size
        );
        anyhow::ensure!(
            self.town_spacing == 0.0
                || (self.town_spacing.is_finite() && self.town_spacing >= 500.0),
            "--town-spacing must be 0 or at least 500 metres, got {}",
            self.town_spacing
        );
        anyhow::ensure!(
            self.supply_drop_every.is_finite() && self.supply_drop_every >= 1.0,
            "--supply-drop-every must be at least 1 second, got {}",
            self.supply_drop_every
        );
        let admins = self
            .admins
            .iter()
            .map(|hex| {
                Identity::from_hex(hex)
                    .map_err(|e| anyhow::anyhow!("--admin {hex:?} is not an identity: {e}"))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(WorldSettings {
            npc_count: self.npcs,
            world_size: self.world_size,
            town_spacing: self.town_spacing,
            town_capacity: self.town_capacity,
            supply_drop_every: Duration::from_secs_f64(self.supply_drop_every),
            admins,
            zone: None,
        })
    }
}

/// The log filter: `RUST_LOG`, else `info`.
fn log_filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
}

#[cfg(not(feature = "tracy"))]
fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(log_filter())
        .init();
}

/// Logs as without the feature, starts the Tracy client (it then waits for a profiler: on
/// demand, on localhost, port `TRACY_PORT` or 8086) and adds the server's layer that turns
/// system spans into zones and warnings and errors into messages.
#[cfg(feature = "tracy")]
fn init_logging() {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::{Layer as _, fmt};
    let client = tracy_client::Client::start();
    client.set_thread_name("main");
    tracing_subscriber::registry()
        .with(fmt::layer().with_filter(log_filter()))
        .with(orrery_server::profiling::layer())
        .init();
    tracing::info!(
        port = std::env::var("TRACY_PORT").unwrap_or_else(|_| "8086".into()),
        "Tracy client started: connect the Tracy GUI or `orrery-profiler capture` on localhost"
    );
}

fn main() -> anyhow::Result<()> {
    init_logging();
    let args = Args::parse();
    anyhow::ensure!(
        args.stats_every > 0.0 && args.stats_every.is_finite(),
        "--stats-every must be a positive number of seconds"
    );
    if let Some(d) = args.duration {
        anyhow::ensure!(
            d >= 0.0 && d.is_finite(),
            "--duration must be a non-negative number of seconds"
        );
    }
    let world = args.world()?;
    if let Some(Command::Replay(replay)) = &args.command {
        let outcome =
            orrery_server::replay::run(replay, &|| sample_mmo::module_with(world.clone()))?;
        // The replay report is the subcommand's output.
        #[allow(clippy::print_stdout)]
        {
            print!("{}", outcome.summary());
        }
        anyhow::ensure!(outcome.matched(), "the replay diverged");
        return Ok(());
    }
    let mut world = world;
    let mut server_args = args.server;
    let zoning = match (&args.zone_map, args.zone) {
        (Some(path), Some(zone)) => {
            let map = orrery_server::zone::ZoneMap::load(path)?;
            let spec = map.get(zone)?.clone();
            if server_args.data_dir == std::path::Path::new("./orrery-data") {
                server_args.data_dir = format!("./orrery-data/zone-{zone}").into();
            }
            let secret_dir = server_args.secret_dir.get_or_insert_with(|| {
                path.parent()
                    .filter(|dir| !dir.as_os_str().is_empty())
                    .unwrap_or(std::path::Path::new("."))
                    .to_owned()
            });
            let relay = orrery_server::Secrets::load_or_create(secret_dir)?.zone_peer();
            server_args.http = spec.http;
            server_args.udp = spec.udp;
            // Other zones find this one at the map's addresses, so no fallback port.
            server_args.strict_ports = true;
            world.zone = Some(sample_mmo::zone::ZoneRules {
                zone: spec.id,
                regions: map
                    .zones()
                    .iter()
                    .map(|z| sample_mmo::zone::ZoneRegion {
                        zone: z.id,
                        min: z.min.into(),
                        max: z.max.into(),
                    })
                    .collect(),
                relay,
            });
            Some(Zoning { map, zone: spec.id })
        }
        _ => None,
    };
    let config = server_args.into_config()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("orrery-net")
        .enable_all()
        .build()?;
    runtime.block_on(run(
        world,
        config,
        zoning,
        args.agones,
        args.duration,
        args.stats_every,
    ))
}

async fn run(
    world: WorldSettings,
    config: orrery_server::ServerConfig,
    zoning: Option<Zoning>,
    agones: bool,
    duration: Option<f64>,
    stats_every: f64,
) -> anyhow::Result<()> {
    #[cfg(not(feature = "agones"))]
    anyhow::ensure!(
        !agones,
        "--agones needs sample-mmo built with the `agones` feature (on by default)"
    );
    let server = orrery_server::start(sample_mmo::module_with(world), config).await?;
    // Started once the server serves: Ready must not come before the ports answer.
    #[cfg(feature = "agones")]
    let agones = match agones {
        true => {
            let mut config = orrery_server::agones::AgonesConfig::default();
            if let Some(zoning) = &zoning {
                config = config.with_zone(zoning.zone);
            }
            Some(orrery_server::agones::Agones::start(&server, config)?)
        }
        false => None,
    };
    tracing::info!(
        http = %server.http_url,
        udp = ?server.udp_addrs,
        admin_token = %server.admin_token_path.display(),
        fresh_world = server.fresh,
        "sample-mmo ready"
    );
    let relay = zoning.map(|Zoning { map, zone }| {
        tracing::info!(
            zone,
            zones = map.zones().len(),
            "relaying handoffs to the other zones"
        );
        let config = orrery_server::zone::RelayConfig::new(zone, map).with_border(border_sync());
        orrery_server::zone::Relay::start(&server, config)
    });
    tracing::info!(
        "play: cargo run --release -p sample-mmo --example walk -- {}   (README: Play with it)",
        server.http_url
    );

    let stop = async {
        match duration {
            Some(secs) => tokio::time::sleep(Duration::from_secs_f64(secs)).await,
            None => orrery_server::shutdown_signal().await,
        }
    };
    tokio::pin!(stop);
    let mut stats = tokio::time::interval(Duration::from_secs_f64(stats_every));
    stats.tick().await;
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = stats.tick() => log_stats(&server),
        }
        if server.is_finished() {
            tracing::error!("the tick thread stopped");
            break;
        }
    }
    tracing::info!("shutting down");
    if let Some(relay) = relay {
        relay.stop().await;
    }
    #[cfg(feature = "agones")]
    if let Some(agones) = agones {
        let status = agones.shutdown().await?;
        tracing::info!(
            shutdown_sent = status.shutdown_sent,
            "Agones integration stopped"
        );
    }
    server.shutdown().await?;
    tracing::info!("stopped cleanly");
    Ok(())
}

/// Border interest of the sample world: avatars within `BORDER_BAND` of a border are sent to
/// the zone across it five times a second (its `border_avatar` table).
fn border_sync() -> orrery_server::zone::BorderSync {
    orrery_server::zone::BorderSync {
        table: "avatar".into(),
        position: "position".into(),
        band: sample_mmo::zone::BORDER_BAND,
        period: Duration::from_millis(200),
        reducer: "sync_border".into(),
        rows_per_call: 150,
    }
}

fn log_stats(server: &orrery_server::ServerHandle) {
    use std::sync::atomic::Ordering::Relaxed;
    let m = server.metrics();
    let summary = m
        .tick_stats
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .summary();
    tracing::info!(
        tick = m.tick_seq.load(Relaxed),
        clients = m.clients.load(Relaxed),
        calls = m.calls.load(Relaxed),
        total_p50_us = summary.total.p50.as_micros() as u64,
        total_p99_us = summary.total.p99.as_micros() as u64,
        overruns = summary.overruns,
        bytes_out = m.bytes_out.load(Relaxed),
        "tick stats"
    );
}
