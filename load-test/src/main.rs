//! The `load-test` command: parses the flags, runs the bots against a running `sample-mmo`
//! (`--server`) or one it starts, shows live progress, writes the report and exits 0 when
//! every check passed, 3 when a check failed, 1 on an error. With the hidden `--worker` flag
//! it is one of the bot processes of a `--processes` run: it plays its share and prints its
//! cumulative snapshot as one JSON line per second on stdout.

// A terminal program: what it prints is its output (the summary, worker snapshots).
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use load_test::behavior::{Behavior, BrainParams};
use load_test::fleet::{Fleet, FleetConfig, LinkSpec, Phase};
use load_test::report::Budgets;
use load_test::run::{RunConfig, Target, run};
use load_test::scrape::MetricsSource;
use load_test::server::{ServerOptions, default_binary};
use load_test::verify::SightRadii;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Parses `250ms`, `60s`, `2m` or a plain number of seconds.
fn duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (number, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else {
        (t, 1.0)
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (try 50ms, 60s, 2m)"))?;
    if !(value.is_finite() && value >= 0.0) {
        return Err(format!("{text:?} must be a non-negative duration"));
    }
    Ok(Duration::from_secs_f64(value * scale))
}

fn point(text: &str) -> Result<[f32; 2], String> {
    let (x, y) = text
        .split_once(',')
        .ok_or_else(|| format!("{text:?} is not a point (x,y)"))?;
    let p = |s: &str| {
        s.trim()
            .parse::<f32>()
            .map_err(|_| format!("{text:?} is not a point (x,y)"))
    };
    Ok([p(x)?, p(y)?])
}

/// A headless bot swarm against the Orrery sample MMO; writes a JSON and HTML report.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The server's control plane (`http://host:port`). Without it, `sample-mmo` is started
    /// (in memory, free ports, raised per-address limits) and stopped at the end.
    #[arg(long)]
    server: Option<String>,
    /// Bots.
    #[arg(long, default_value_t = 100)]
    bots: usize,
    /// Bots started per second.
    #[arg(long, default_value_t = 100.0)]
    ramp: f64,
    /// How long every bot plays after the last one started and spread (`60s`, `2m`): the
    /// steady window the report's numbers cover.
    #[arg(long, default_value = "60s", value_parser = duration)]
    duration: Duration,
    /// First run straight out from town this long (8 m/s, a random direction per bot), so the
    /// population is spread over the world before the steady window; swarm bots do not.
    #[arg(long, default_value = "0s", value_parser = duration)]
    spread: Duration,
    /// What the bots do.
    #[arg(long, value_enum, default_value_t = Behavior::Mixed)]
    behavior: Behavior,
    /// Reducer calls per second per bot.
    #[arg(long, default_value_t = 20.0)]
    input_hz: f64,
    /// Simulated datagram loss (0..1), both ways, on every bot's link.
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Simulated one-way latency (`50ms`).
    #[arg(long, default_value = "0ms", value_parser = duration)]
    latency: Duration,
    /// Simulated jitter, uniform in 0..=jitter (`20ms`).
    #[arg(long, default_value = "0ms", value_parser = duration)]
    jitter: Duration,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write report.json and report.html (and the started server's log) here.
    #[arg(long = "report", value_name = "DIR")]
    report_dir: Option<PathBuf>,
    /// At the end, compare every bot's mirror with the server's rows (docs/load-test.md).
    #[arg(long)]
    verify: bool,
    /// Bot processes (this binary, started as workers; bots are spread over them).
    #[arg(long, default_value_t = 1)]
    processes: usize,
    /// Tokio worker threads per bot process (default: one per CPU).
    #[arg(long)]
    threads: Option<usize>,

    /// The sample-mmo binary to start (default: next to this one).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// NPCs in a started server's world.
    #[arg(long, default_value_t = 10_000)]
    npcs: u32,
    /// World edge of a started server, metres.
    #[arg(long, default_value_t = 4_000.0)]
    world_size: f32,
    /// Town spacing of a started server, metres (`sample-mmo --town-spacing`); default: 0 (one
    /// town, where the swarm gathers) for `swarm`, the server's own (1,000) otherwise.
    #[arg(long)]
    town_spacing: Option<f32>,
    /// Ticks per second of a started server (and the tick budget's base).
    #[arg(long, default_value_t = 20)]
    tick_rate: u32,
    /// Subscription bytes per client per second of a started server.
    #[arg(long, default_value_t = 8 * 1024)]
    publish_budget: u32,
    /// A further flag for a started server (repeatable; `--server-arg=--fsync`).
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    server_args: Vec<String>,

    /// An attached server's metrics: the unauthenticated `--metrics` listener
    /// (`http://127.0.0.1:9100/metrics`), or the control plane's `/metrics` with
    /// `--admin-token`.
    #[arg(long)]
    metrics_url: Option<String>,
    /// The admin token for the control plane's `/metrics`, or `@path` to a file holding it
    /// (`@orrery-data/admin-token`).
    #[arg(long)]
    admin_token: Option<String>,
    /// An attached local server's process id, for CPU and memory from /proc (default: the
    /// server's own process gauges in /metrics).
    #[arg(long)]
    server_pid: Option<u32>,

    /// Each client's driver period (keep-alives, resends).
    #[arg(long, default_value = "50ms", value_parser = duration)]
    client_tick: Duration,
    /// Calls a bot may have in flight; an input tick finding them busy is skipped.
    #[arg(long, default_value_t = 4)]
    max_outstanding: usize,
    /// Wait after input stops before verifying.
    #[arg(long, default_value = "3s", value_parser = duration)]
    settle: Duration,
    /// Give up verifying a bot after this long.
    #[arg(long, default_value = "30s", value_parser = duration)]
    verify_timeout: Duration,
    /// Concurrent /v1/sql reads while verifying, per process.
    #[arg(long, default_value_t = 32)]
    verify_concurrency: usize,
    /// Where swarm bots converge (`x,y`).
    #[arg(long, default_value = "0,0", value_parser = point)]
    swarm_at: [f32; 2],
    /// How far from that spot swarm bots mill about, metres.
    #[arg(long, default_value_t = 20.0)]
    swarm_radius: f32,
    /// Wanderers travel to points at most this far from the town they entered in, metres.
    #[arg(long, default_value_t = 400.0)]
    wander_radius: f32,
    /// Chance that a chat line is global.
    #[arg(long, default_value_t = 0.02)]
    global_chat: f64,

    /// Tick p99 budget, ms (default: one tick).
    #[arg(long)]
    tick_budget_ms: Option<f64>,
    /// Input-to-observed p99 budget, ms.
    #[arg(long, default_value_t = 150.0)]
    observe_budget_ms: f64,
    /// Downstream bytes per second per bot budget.
    #[arg(long, default_value_t = 8_192.0)]
    bytes_budget: f64,
    /// Ticks the server may skip while bots play.
    #[arg(long, default_value_t = 0)]
    skipped_ticks_budget: u64,

    /// Internal: run as a bot worker with this fleet configuration (JSON).
    #[arg(long, hide = true)]
    worker: Option<String>,
}

fn runtime(threads: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = threads {
        b.worker_threads(n.max(1));
    }
    Ok(b.thread_name("load-test").enable_all().build()?)
}

/// A worker: play the share of bots, print a snapshot line a second, the last when done.
fn worker(json: &str, threads: Option<usize>) -> anyhow::Result<()> {
    let config: FleetConfig = serde_json::from_str(json).context("worker configuration")?;
    runtime(threads)?.block_on(async move {
        let fleet = Fleet::start(config);
        let mut every = tokio::time::interval(Duration::from_secs(1));
        loop {
            every.tick().await;
            let snap = fleet.snapshot();
            let done = snap.phase == Some(Phase::Done);
            println!("{}", serde_json::to_string(&snap)?);
            if done {
                return Ok(());
            }
        }
    })
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,load_test=info")),
        )
        .init();
    let args = Args::parse();
    if let Some(json) = &args.worker {
        return worker(json, args.threads);
    }
    anyhow::ensure!(args.bots > 0, "--bots must be at least 1");
    anyhow::ensure!(
        args.ramp.is_finite() && args.ramp > 0.0,
        "--ramp must be positive"
    );
    anyhow::ensure!(
        args.input_hz.is_finite() && args.input_hz > 0.0,
        "--input-hz must be positive"
    );
    anyhow::ensure!((0.0..1.0).contains(&args.loss), "--loss must be in [0, 1)");
    anyhow::ensure!(args.processes >= 1, "--processes must be at least 1");
    anyhow::ensure!(args.tick_rate >= 1, "--tick-rate must be at least 1");

    let admin_token = match &args.admin_token {
        Some(t) => Some(match t.strip_prefix('@') {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("reading the admin token from {path}"))?
                .trim()
                .to_owned(),
            None => t.clone(),
        }),
        None => None,
    };
    let target = match &args.server {
        Some(url) => Target::Attach {
            url: url.trim_end_matches('/').to_owned(),
            metrics: match (&args.metrics_url, &admin_token) {
                (Some(m), token) => Some(MetricsSource {
                    url: m.clone(),
                    admin_token: token.clone(),
                }),
                (None, Some(token)) => Some(MetricsSource {
                    url: format!("{}/metrics", url.trim_end_matches('/')),
                    admin_token: Some(token.clone()),
                }),
                (None, None) => None,
            },
            pid: args.server_pid,
        },
        None => Target::Spawn(ServerOptions {
            binary: args.server_bin.clone().unwrap_or_else(default_binary),
            npcs: args.npcs,
            world_size: args.world_size,
            // Swarm bots all walk to the origin: from towns 1 km out that would take the whole
            // run, so they enter where they gather.
            town_spacing: args
                .town_spacing
                .or((args.behavior == Behavior::Swarm).then_some(0.0)),
            tick_rate: args.tick_rate,
            publish_budget: args.publish_budget,
            rate_limit: (args.input_hz * 1.5).max(30.0),
            max_clients: (args.bots * 2).max(16_384),
            extra_args: args.server_args.clone(),
        }),
    };
    let run_tag = format!(
        "lt{:04x}-",
        (args.seed ^ std::process::id() as u64) & 0xffff
    );
    let fleet = FleetConfig {
        server: String::new(),
        bots: args.bots,
        first: 0,
        stride: 1,
        ramp: args.ramp,
        spread: args.spread,
        duration: args.duration,
        behavior: args.behavior,
        input_hz: args.input_hz,
        link: LinkSpec {
            loss: args.loss,
            latency_ms: args.latency.as_secs_f64() * 1_000.0,
            jitter_ms: args.jitter.as_secs_f64() * 1_000.0,
        },
        seed: args.seed,
        run_tag,
        client_tick: args.client_tick,
        max_outstanding_calls: args.max_outstanding,
        verify: args.verify,
        settle: args.settle,
        verify_timeout: args.verify_timeout,
        verify_concurrency: args.verify_concurrency,
        sight: SightRadii::default(),
        brain: BrainParams {
            swarm_center: args.swarm_at,
            swarm_radius: args.swarm_radius,
            wander_radius: args.wander_radius,
            global_chat: args.global_chat,
            spread_s: 0.0,
        },
    };
    let config = RunConfig {
        fleet,
        processes: args.processes,
        target,
        report_dir: args.report_dir.clone(),
        budgets: Budgets {
            tick_p99_ms: args
                .tick_budget_ms
                .unwrap_or(1_000.0 / f64::from(args.tick_rate)),
            observe_p99_ms: args.observe_budget_ms,
            bytes_in_per_bot_s: args.bytes_budget,
            ticks_skipped: args.skipped_ticks_budget as f64,
        },
        tick_rate: args.tick_rate,
        worker_exe: None,
    };

    let bar = ProgressBar::new(args.bots as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} bots connected | {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let quiet = bar.is_hidden();
    let mut last_log = std::time::Instant::now();
    let report = runtime(args.threads)?.block_on(run(config, |p, f| {
        let tick = p
            .server
            .as_ref()
            .map_or("n/a".to_owned(), |s| format!("{:.1} ms", s.tick_p99_ms));
        let phase = f
            .phase
            .map_or("starting".to_owned(), |p| format!("{p:?}").to_lowercase());
        let msg = format!(
            "{phase} | errors {} (connect {}) | call p99 {:.1} ms | tick p99 {tick} | down {:.0} B/s/bot",
            f.call_errors + f.disconnects,
            f.connect_failures,
            p.rtt_p99_ms,
            p.bytes_in_per_bot_s
        );
        bar.set_position(f.connected);
        if quiet && last_log.elapsed() >= Duration::from_secs(5) {
            last_log = std::time::Instant::now();
            tracing::info!(connected = f.connected, "{msg}");
        }
        bar.set_message(msg);
    }));
    bar.finish_and_clear();
    let report = report?;

    let s = &report.summary;
    println!(
        "{} bots ({}), {} connected at the stop, {} calls/s, rtt p50 {} / p99 {} ms, observed own p99 {} ms, neighbours p99 {} ms",
        s.bots,
        report.settings.behavior,
        s.connected_at_stop,
        s.calls_per_s,
        s.rtt.p50_ms,
        s.rtt.p99_ms,
        s.observe_own.p99_ms,
        s.observe_neighbour.p99_ms
    );
    println!(
        "downstream per bot: mean {} B/s, p99 {}, max {}; upstream mean {} B/s",
        s.bytes_in_per_bot_s.mean,
        s.bytes_in_per_bot_s.p99,
        s.bytes_in_per_bot_s.max,
        s.bytes_out_per_bot_s.mean
    );
    if let Some(v) = &s.server {
        println!(
            "server tick p50 {} / p99 {} / max {} ms, {} overruns in the window, {} ticks skipped, {} ticks/s, CPU {}%, publish p99 {} ms",
            v.tick_p50_ms,
            v.tick_p99_ms,
            v.tick_max_ms,
            v.window_overruns,
            v.ticks_skipped,
            v.ticks_per_s,
            v.cpu_pct.map_or("n/a".into(), |c| format!("{c:.0}")),
            v.phases.get("publish").map_or(0.0, |p| p.p99_ms)
        );
        println!(
            "server UDP out per client {} B/s: published {} B/s, resent {} B/s",
            v.udp_out_per_client_s, v.published_per_client_s, v.resent_per_client_s
        );
    }
    println!(
        "CPU (% of one core): bots {}%, whole machine {} (load average up to {})",
        s.bots_cpu_pct,
        s.machine_cpu_pct
            .map_or("n/a".into(), |c| format!("{c:.0}%")),
        s.load1_max.map_or("n/a".into(), |l| l.to_string())
    );
    if let Some(v) = &report.verify {
        println!(
            "verify: {} bots, {} rows compared, {} divergent, {} errors",
            v.bots, v.rows_compared, v.divergent_rows, v.errors
        );
    }
    for c in &report.checks {
        println!(
            "  [{}] {}: {} {} {}",
            if c.pass { "pass" } else { "FAIL" },
            c.name,
            c.value,
            c.op,
            c.limit
        );
    }
    if let Some(dir) = &args.report_dir {
        println!("report: {}", dir.join("report.html").display());
    }
    if !report.pass {
        std::process::exit(3);
    }
    Ok(())
}
