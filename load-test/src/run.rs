//! A whole run: start (or attach to) the server, start the bots (in this process, or in
//! `--processes` worker processes of this binary that stream their [`FleetSnapshot`]s as JSON
//! lines on stdout), sample the bots, the server's `/metrics` and the server process once a
//! second, and build the [`Report`] when the bots are done.

use std::io::BufRead as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::fleet::{Fleet, FleetConfig, FleetSnapshot, Phase};
use crate::report::{self, Budgets, Point, RawSample, Report, RunSettings};
use crate::scrape::{MetricsSource, ProcessUsage, load_average, machine_cpu};
use crate::server::{ServerOptions, ServerProcess};

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The server could not be started.
    #[error(transparent)]
    Server(#[from] crate::server::ServerError),
    /// A worker process could not be started or died.
    #[error("worker {index}: {message}")]
    Worker {
        /// The worker.
        index: usize,
        /// What happened.
        message: String,
    },
    /// The report could not be written.
    #[error("writing the report to {dir}: {error}")]
    Report {
        /// The directory.
        dir: PathBuf,
        /// The error.
        error: std::io::Error,
    },
}

/// Which server the bots play on.
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    /// A running server's control plane; metrics from `metrics` if given, CPU and memory from
    /// `/proc/<pid>` if given (else from the metrics' process gauges).
    Attach {
        /// Control plane URL.
        url: String,
        /// Where its metrics are.
        metrics: Option<MetricsSource>,
        /// Its process id, when local.
        pid: Option<u32>,
    },
    /// Start `sample-mmo` as a child process.
    Spawn(ServerOptions),
}

/// Everything a run needs.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// What the bots do (`server` is filled in from the target).
    pub fleet: FleetConfig,
    /// Bot processes (1: the bots run in this process).
    pub processes: usize,
    /// The server.
    pub target: Target,
    /// Where to write `report.json`, `report.html` (and the spawned server's log).
    pub report_dir: Option<PathBuf>,
    /// Budgets for the checks.
    pub budgets: Budgets,
    /// The server's tick rate (echoed; the tick budget is derived from it by the caller).
    pub tick_rate: u32,
    /// The executable to start workers from (this binary).
    pub worker_exe: Option<PathBuf>,
}

/// Where the bots run.
enum Bots {
    Local(Fleet),
    Workers {
        children: Vec<Child>,
        latest: Arc<Mutex<Vec<Option<FleetSnapshot>>>>,
    },
}

impl Bots {
    fn snapshot(&mut self) -> Result<FleetSnapshot, RunError> {
        match self {
            Bots::Local(fleet) => Ok(fleet.snapshot()),
            Bots::Workers { children, latest } => {
                let latest = latest.lock().unwrap_or_else(|e| e.into_inner());
                let mut merged = FleetSnapshot::default();
                for (index, (snap, child)) in latest.iter().zip(children.iter_mut()).enumerate() {
                    match snap {
                        Some(s) => merged.merge(s),
                        None => merged.merge(&FleetSnapshot {
                            phase: Some(Phase::Ramping),
                            ..FleetSnapshot::default()
                        }),
                    }
                    let finished = snap.as_ref().and_then(|s| s.phase) == Some(Phase::Done);
                    if !finished && let Ok(Some(status)) = child.try_wait() {
                        return Err(RunError::Worker {
                            index,
                            message: format!("exited early ({status})"),
                        });
                    }
                }
                Ok(merged)
            }
        }
    }

    fn stop(self) {
        if let Bots::Workers { mut children, .. } = self {
            for c in &mut children {
                let deadline = Instant::now() + Duration::from_secs(10);
                while Instant::now() < deadline {
                    if let Ok(Some(_)) = c.try_wait() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

fn start_workers(config: &RunConfig) -> Result<Bots, RunError> {
    let exe = config
        .worker_exe
        .clone()
        .or_else(|| std::env::current_exe().ok())
        .ok_or_else(|| RunError::Worker {
            index: 0,
            message: "cannot find this executable".into(),
        })?;
    let n = config.processes;
    let latest = Arc::new(Mutex::new(vec![None; n]));
    let mut children = Vec::with_capacity(n);
    for index in 0..n {
        let fleet = FleetConfig {
            first: index,
            stride: n,
            ..config.fleet.clone()
        };
        let json = serde_json::to_string(&fleet).map_err(|e| RunError::Worker {
            index,
            message: e.to_string(),
        })?;
        let mut child = Command::new(&exe)
            .arg("--worker")
            .arg(json)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| RunError::Worker {
                index,
                message: format!("{}: {e}", exe.display()),
            })?;
        let Some(stdout) = child.stdout.take() else {
            return Err(RunError::Worker {
                index,
                message: "no stdout".into(),
            });
        };
        let latest = latest.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<FleetSnapshot>(&line) {
                    Ok(snap) => {
                        latest.lock().unwrap_or_else(|e| e.into_inner())[index] = Some(snap);
                    }
                    Err(error) => tracing::warn!(index, %error, "unreadable worker line"),
                }
            }
        });
        children.push(child);
    }
    Ok(Bots::Workers { children, latest })
}

/// Runs the load test; `progress` sees every sample. The report is written when `report_dir`
/// is set.
pub async fn run(
    mut config: RunConfig,
    mut progress: impl FnMut(&Point, &FleetSnapshot),
) -> Result<Report, RunError> {
    let started = Instant::now();
    let log_dir = match &config.report_dir {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir().join(format!("orrery-load-test-{}", std::process::id())),
    };
    let (server, metrics, pid, command) = match &config.target {
        Target::Spawn(options) => {
            let server = ServerProcess::start(options, &log_dir).await?;
            tracing::info!(url = %server.http_url, pid = server.pid, log = %server.log.display(), "sample-mmo started");
            let metrics = server.metrics()?;
            let (pid, command) = (server.pid, server.command.clone());
            config.fleet.server = server.http_url.clone();
            (Some(server), Some(metrics), Some(pid), Some(command))
        }
        Target::Attach { url, metrics, pid } => {
            config.fleet.server = url.clone();
            (None, metrics.clone(), *pid, None)
        }
    };
    let settings = RunSettings {
        bots: config.fleet.bots,
        ramp: config.fleet.ramp,
        spread_s: config.fleet.spread.as_secs_f64(),
        duration_s: config.fleet.duration.as_secs_f64(),
        behavior: config.fleet.behavior.name().to_owned(),
        input_hz: config.fleet.input_hz,
        loss: config.fleet.link.loss,
        latency_ms: config.fleet.link.latency_ms,
        jitter_ms: config.fleet.link.jitter_ms,
        seed: config.fleet.seed,
        processes: config.processes.max(1),
        server: config.fleet.server.clone(),
        server_command: command,
        tick_rate: config.tick_rate,
        verify: config.fleet.verify,
    };
    let mut bots = if config.processes <= 1 {
        Bots::Local(Fleet::start(config.fleet.clone()))
    } else {
        start_workers(&config)?
    };
    let planned_end = config.fleet.stop_at()
        + config.fleet.settle
        + if config.fleet.verify {
            config.fleet.verify_timeout
        } else {
            Duration::ZERO
        };
    let grace = Duration::from_secs(120);
    let mut samples: Vec<RawSample> = Vec::new();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let result = loop {
        ticker.tick().await;
        let fleet = match bots.snapshot() {
            Ok(f) => f,
            Err(e) => break Err(e),
        };
        let server = match &metrics {
            Some(m) => match m.scrape().await {
                Ok(s) => Some(s),
                Err(error) => {
                    tracing::debug!(%error, "metrics scrape failed");
                    None
                }
            },
            None => None,
        };
        let server_proc = pid
            .and_then(ProcessUsage::of)
            .map(|u| (u.cpu_seconds, u.resident_bytes));
        let done = fleet.phase == Some(Phase::Done);
        samples.push(RawSample {
            t_s: started.elapsed().as_secs_f64(),
            fleet,
            server,
            server_proc,
            machine: machine_cpu(),
            load1: load_average(),
        });
        let points = report::points(&samples[samples.len().saturating_sub(2)..]);
        if let (Some(point), Some(last)) = (points.last(), samples.last()) {
            progress(point, &last.fleet);
        }
        if done {
            break Ok(());
        }
        if started.elapsed() > planned_end + grace {
            // An overloaded server: report what was measured; the unfinished verification
            // fails its check.
            tracing::warn!(
                ?grace,
                "the bots did not finish in time; reporting what they did"
            );
            break Ok(());
        }
    };
    // Workers print their final snapshot as they finish; wait for it.
    let last = match &mut bots {
        Bots::Local(_) => samples.last().map(|s| s.fleet.clone()).unwrap_or_default(),
        Bots::Workers { .. } => bots.snapshot().unwrap_or_default(),
    };
    bots.stop();
    if let Some(server) = server {
        server.stop().await;
    }
    result?;
    let report = report::build(
        settings,
        config.budgets,
        &samples,
        &last,
        started.elapsed().as_secs_f64(),
    );
    if let Some(dir) = &config.report_dir {
        report::write(&report, dir).map_err(|error| RunError::Report {
            dir: dir.clone(),
            error,
        })?;
    }
    Ok(report)
}
