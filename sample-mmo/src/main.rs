//! `sample-mmo`: runs the sample MMO module on a fixed tick.
//!
//! Networking (UDP sessions and the HTTP control plane) joins through `orrery-server`; until
//! then the binary runs the world headless and logs tick statistics.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use orrery_engine::{Engine, EngineConfig, Phase, Timestamp};
use orrery_tick::{FixedClock, OverrunPolicy};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Run the Orrery sample MMO server.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Where the world's data lives.
    #[arg(long, default_value = "./orrery-data")]
    data_dir: PathBuf,
    /// Simulation ticks per second.
    #[arg(long, default_value_t = 20)]
    tick_rate: u32,
    /// Stop after this many seconds (runs until Ctrl-C when absent).
    #[arg(long)]
    duration: Option<f64>,
    /// Seconds between statistics log lines.
    #[arg(long, default_value_t = 5.0)]
    stats_every: f64,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    anyhow::ensure!(
        args.tick_rate > 0 && args.tick_rate <= 1000,
        "tick rate must be 1..=1000"
    );
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating data dir {}", args.data_dir.display()))?;

    let tick = Duration::from_secs(1) / args.tick_rate;
    let config = EngineConfig {
        tick_budget: tick,
        ..EngineConfig::default()
    };
    let mut engine = Engine::new(sample_mmo::module(), config)?;
    engine
        .init(Timestamp::now())
        .map_err(|e| anyhow::anyhow!("init reducer failed: {e}"))?;
    tracing::info!(
        data_dir = %args.data_dir.display(),
        tick_rate = args.tick_rate,
        "sample-mmo running headless (network and durability arrive with orrery-server)"
    );

    let start = Instant::now();
    let mut clock = FixedClock::new(
        tick,
        start,
        OverrunPolicy::Burst {
            max_ticks_per_poll: 5,
        },
    )?;
    let mut last_report = start;
    loop {
        let now = Instant::now();
        if args
            .duration
            .is_some_and(|d| now.duration_since(start).as_secs_f64() >= d)
        {
            break;
        }
        let due = clock.poll(now);
        if due.skipped > 0 {
            tracing::warn!(
                skipped = due.skipped,
                "simulation fell behind; ticks dropped"
            );
        }
        for _ in 0..due.run {
            engine.step(Timestamp::now());
        }
        if now.duration_since(last_report).as_secs_f64() >= args.stats_every {
            last_report = now;
            let stats = engine.stats();
            tracing::info!(
                tick = engine.tick().get(),
                npcs = engine.count::<sample_mmo::Npc>(),
                total_p50_us = stats.total.p50.as_micros() as u64,
                total_p99_us = stats.total.p99.as_micros() as u64,
                systems_p99_us = stats.phase(Phase::Systems).p99.as_micros() as u64,
                capture_p99_us = stats.phase(Phase::Capture).p99.as_micros() as u64,
                overruns = stats.overruns,
                "tick stats"
            );
        }
        std::thread::sleep(
            clock
                .next_deadline()
                .saturating_duration_since(Instant::now()),
        );
    }
    tracing::info!(ticks = engine.tick().get(), "stopped");
    Ok(())
}
