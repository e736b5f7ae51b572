//! The run's report: per-second time series ([`Point`]), the headline numbers ([`Summary`]),
//! pass/fail [`CheckResult`]s against the budgets, the latency histograms, per-bot traffic,
//! errors and verification; written as `report.json` and (by [`crate::html`]) `report.html`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::fleet::{BotTraffic, FleetSnapshot, Phase, VerifyTotals};
use crate::hist::{Histogram, Summary as HistSummary, round3};
use crate::scrape::{PhaseTimes, ServerSample};

/// What the run was asked to do (echoed into the report).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunSettings {
    /// Bots.
    pub bots: usize,
    /// Bots started per second.
    pub ramp: f64,
    /// Seconds bots ran out from town after the ramp.
    pub spread_s: f64,
    /// Seconds of play after the ramp and the spread (the steady window).
    pub duration_s: f64,
    /// The behaviour.
    pub behavior: String,
    /// Calls per second per bot.
    pub input_hz: f64,
    /// Simulated loss.
    pub loss: f64,
    /// Simulated one-way latency, ms.
    pub latency_ms: f64,
    /// Simulated jitter, ms.
    pub jitter_ms: f64,
    /// Seed.
    pub seed: u64,
    /// Bot processes.
    pub processes: usize,
    /// The control plane.
    pub server: String,
    /// The server's command line, when the load test started it.
    pub server_command: Option<Vec<String>>,
    /// Server ticks per second (for the tick budget).
    pub tick_rate: u32,
    /// Verification requested.
    pub verify: bool,
}

/// Budgets the checks compare against.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Budgets {
    /// Server tick p99, ms.
    pub tick_p99_ms: f64,
    /// Input-to-observed p99, ms.
    pub observe_p99_ms: f64,
    /// Downstream bytes per second per bot.
    pub bytes_in_per_bot_s: f64,
    /// Ticks the server may skip while bots play (catching up after an overrun).
    #[serde(default)]
    pub ticks_skipped: f64,
}

/// The server side of one sample.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerPoint {
    /// Clients connected.
    pub clients: f64,
    /// Tick time p50 over the server's window of the last 1,024 ticks, ms.
    pub tick_p50_ms: f64,
    /// Tick time p99 over the window, ms.
    pub tick_p99_ms: f64,
    /// Tick time max over the window, ms.
    pub tick_max_ms: f64,
    /// Publish phase p99 over the window, ms.
    pub publish_p99_ms: f64,
    /// Ticks over budget in the window.
    pub window_overruns: f64,
    /// Ticks run in the last second.
    pub ticks_per_s: f64,
    /// Ticks skipped so far (since the first sample).
    pub ticks_skipped: f64,
    /// CPU of the server process, % of one core, over the last second.
    pub cpu_pct: Option<f64>,
    /// Resident memory, MiB.
    pub rss_mib: Option<f64>,
    /// UDP bytes sent per second per connected client.
    pub udp_out_per_client_s: f64,
}

/// One second of the run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// Seconds since the start.
    pub t_s: f64,
    /// The fleet's phase.
    pub phase: Option<Phase>,
    /// Bots started.
    pub started: u64,
    /// Bots connected.
    pub connected: u64,
    /// Failed connection attempts so far.
    pub connect_failures: u64,
    /// Disconnects while playing so far.
    pub disconnects: u64,
    /// Unanswered calls so far.
    pub call_errors: u64,
    /// Calls answered with a reducer error so far.
    pub reducer_errors: u64,
    /// Calls per second.
    pub calls_per_s: f64,
    /// Call round trip p50 this second, ms.
    pub rtt_p50_ms: f64,
    /// Call round trip p99 this second, ms.
    pub rtt_p99_ms: f64,
    /// Input-to-observed p99 (own avatar) this second, ms.
    pub observe_own_p99_ms: f64,
    /// Input-to-observed p99 (neighbours) this second, ms.
    pub observe_neighbour_p99_ms: f64,
    /// Bytes received per second per connected bot.
    pub bytes_in_per_bot_s: f64,
    /// Bytes sent per second per connected bot.
    pub bytes_out_per_bot_s: f64,
    /// CPU of the bot processes, % of one core.
    pub bots_cpu_pct: f64,
    /// Resident memory of the bot processes, MiB.
    pub bots_rss_mib: f64,
    /// CPU of the whole machine (every process), % of one core.
    pub machine_cpu_pct: Option<f64>,
    /// One-minute load average.
    pub load1: Option<f64>,
    /// The server, when its metrics could be read.
    pub server: Option<ServerPoint>,
}

/// Mean, median, p99 and max of per-bot rates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    /// Bots measured.
    pub bots: usize,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Maximum.
    pub max: f64,
}

impl Spread {
    /// The spread of `values`.
    pub fn of(mut values: Vec<f64>) -> Spread {
        if values.is_empty() {
            return Spread::default();
        }
        values.sort_by(f64::total_cmp);
        let at =
            |q: f64| values[((q * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1];
        Spread {
            bots: values.len(),
            mean: round3(values.iter().sum::<f64>() / values.len() as f64),
            p50: round3(at(0.5)),
            p99: round3(at(0.99)),
            max: round3(values[values.len() - 1]),
        }
    }
}

/// The server's numbers for the run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerSummary {
    /// Tick time p50 over the last 1,024 ticks before input stopped, ms.
    pub tick_p50_ms: f64,
    /// Tick time p99 over the same window, ms.
    pub tick_p99_ms: f64,
    /// Tick time max over the same window, ms.
    pub tick_max_ms: f64,
    /// Ticks over budget in that window.
    pub window_overruns: f64,
    /// Ticks in that window (1,024, or fewer early in a server's life).
    pub window_ticks: f64,
    /// The largest windowed p99 seen while bots played, ms.
    pub worst_tick_p99_ms: f64,
    /// Ticks skipped while bots played (the loop fell behind beyond catching up).
    pub ticks_skipped: f64,
    /// Ticks per second while every bot played.
    pub ticks_per_s: f64,
    /// Per-phase times at the stop (the same window).
    pub phases: BTreeMap<String, PhaseTimes>,
    /// CPU of the server process while every bot played, % of one core.
    pub cpu_pct: Option<f64>,
    /// Largest resident memory, MiB.
    pub rss_max_mib: Option<f64>,
    /// UDP bytes sent per second per client while every bot played.
    pub udp_out_per_client_s: f64,
    /// UDP bytes received per second per client while every bot played.
    pub udp_in_per_client_s: f64,
    /// Subscription payload bytes published per second per client while every bot played.
    #[serde(default)]
    pub published_per_client_s: f64,
    /// Reliable bytes resent per second per client while every bot played (part of
    /// `udp_out_per_client_s`, and charged to the clients' budgets).
    #[serde(default)]
    pub resent_per_client_s: f64,
    /// Calls refused by the rate limit during the run.
    pub calls_rate_limited: f64,
    /// Clients disconnected for a full backlog during the run.
    pub backlog_disconnects: f64,
}

/// The run's headline numbers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Bots asked for.
    pub bots: usize,
    /// Bots connected when input stopped.
    pub connected_at_stop: u64,
    /// Bots that never connected.
    pub never_connected: u64,
    /// Failed connection attempts (retries count).
    pub connect_failures: u64,
    /// Bots disconnected while playing.
    pub disconnects: u64,
    /// Calls sent.
    pub calls: u64,
    /// Calls per second while every bot played.
    pub calls_per_s: f64,
    /// Unanswered calls.
    pub call_errors: u64,
    /// Calls the game refused (cooldowns, reach, chat rate, rate limit).
    pub reducer_errors: u64,
    /// Input ticks skipped (calls in flight at the limit).
    pub inputs_skipped: u64,
    /// Call round trip.
    pub rtt: HistSummary,
    /// Input to the mover's own mirror.
    pub observe_own: HistSummary,
    /// Input to neighbours' mirrors.
    pub observe_neighbour: HistSummary,
    /// Connect time per bot.
    pub connect_time: HistSummary,
    /// Downstream bytes per second per bot, steady window.
    pub bytes_in_per_bot_s: Spread,
    /// Upstream bytes per second per bot, steady window.
    pub bytes_out_per_bot_s: Spread,
    /// Downstream bytes per second per bot by role (mean).
    pub bytes_in_by_role: BTreeMap<String, f64>,
    /// Datagrams the simulated link dropped.
    pub link_lost: u64,
    /// Mirror records skipped (a broken server).
    pub mirror_skipped: u64,
    /// Table updates the mirrors refused.
    pub mirror_rejected: u64,
    /// CPU of the bot processes while every bot played, % of one core.
    pub bots_cpu_pct: f64,
    /// Largest resident memory of the bot processes, MiB.
    pub bots_rss_max_mib: f64,
    /// CPU of the whole machine while every bot played, % of one core (the machine has
    /// `cpus` × 100%): what the server and the bots use, plus anything else running.
    pub machine_cpu_pct: Option<f64>,
    /// Highest one-minute load average seen.
    pub load1_max: Option<f64>,
    /// The server, when its metrics could be read.
    pub server: Option<ServerSummary>,
}

/// One pass/fail check.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckResult {
    /// What is checked.
    pub name: String,
    /// The measured value.
    pub value: f64,
    /// The limit (inclusive).
    pub limit: f64,
    /// `<=` or `>=`.
    pub op: String,
    /// Whether it held.
    pub pass: bool,
}

impl CheckResult {
    fn at_most(name: &str, value: f64, limit: f64) -> Self {
        CheckResult {
            name: name.to_owned(),
            value: round3(value),
            limit: round3(limit),
            op: "<=".into(),
            pass: value <= limit,
        }
    }

    fn at_least(name: &str, value: f64, limit: f64) -> Self {
        CheckResult {
            name: name.to_owned(),
            value: round3(value),
            limit: round3(limit),
            op: ">=".into(),
            pass: value >= limit,
        }
    }
}

/// Histograms kept whole.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Histograms {
    /// Call round trip.
    pub rtt: Histogram,
    /// Input to own mirror.
    pub observe_own: Histogram,
    /// Input to neighbours' mirrors.
    pub observe_neighbour: Histogram,
    /// Connect time.
    pub connect_time: Histogram,
}

/// The whole report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// What was run.
    pub settings: RunSettings,
    /// Budgets checked.
    pub budgets: Budgets,
    /// CPUs of the machine.
    pub cpus: usize,
    /// Seconds the run took.
    pub wall_s: f64,
    /// Headline numbers.
    pub summary: Summary,
    /// Checks.
    pub checks: Vec<CheckResult>,
    /// Whether every check passed.
    pub pass: bool,
    /// Per-second samples.
    pub series: Vec<Point>,
    /// Latency histograms.
    pub histograms: Histograms,
    /// Per-bot traffic over the steady window.
    pub traffic: Vec<BotTraffic>,
    /// Errors by kind.
    pub errors: BTreeMap<String, u64>,
    /// Verification, with `--verify`.
    pub verify: Option<VerifyTotals>,
    /// The last server sample before input stopped.
    pub server_at_stop: Option<ServerSample>,
}

/// One raw sample the orchestrator took: the fleet (all processes merged) and the server.
#[derive(Clone, Debug, Default)]
pub struct RawSample {
    /// Seconds since the start.
    pub t_s: f64,
    /// The fleets.
    pub fleet: FleetSnapshot,
    /// The server's metrics.
    pub server: Option<ServerSample>,
    /// The server process's CPU seconds and resident bytes from `/proc`, when local.
    pub server_proc: Option<(f64, u64)>,
    /// The machine's busy and total CPU clock ticks (`/proc/stat`).
    pub machine: Option<(u64, u64)>,
    /// The one-minute load average.
    pub load1: Option<f64>,
}

/// The machine's busy CPU between two samples, % of one core.
fn machine_pct(a: &RawSample, b: &RawSample, cpus: f64) -> Option<f64> {
    let ((busy0, total0), (busy1, total1)) = (a.machine?, b.machine?);
    let total = total1.checked_sub(total0)?;
    (total > 0).then(|| (busy1.saturating_sub(busy0)) as f64 / total as f64 * cpus * 100.0)
}

fn cpus() -> f64 {
    std::thread::available_parallelism().map_or(1, |n| n.get()) as f64
}

fn server_cpu(s: &RawSample) -> Option<f64> {
    s.server_proc
        .map(|(cpu, _)| cpu)
        .or_else(|| s.server.as_ref()?.cpu_seconds)
}

fn server_rss(s: &RawSample) -> Option<f64> {
    s.server_proc
        .map(|(_, rss)| rss as f64)
        .or_else(|| s.server.as_ref()?.resident_bytes)
}

/// Turns consecutive raw samples into points.
pub fn points(samples: &[RawSample]) -> Vec<Point> {
    let first_skipped = samples
        .iter()
        .find_map(|s| s.server.as_ref().map(|v| v.ticks_skipped))
        .unwrap_or(0.0);
    let mut out = Vec::with_capacity(samples.len());
    for (i, s) in samples.iter().enumerate() {
        let prev = i.checked_sub(1).map(|j| &samples[j]);
        let dt = prev.map_or(0.0, |p| s.t_s - p.t_s);
        let f = &s.fleet;
        let per_bot = |now: u64, before: u64| {
            if dt <= 0.0 || f.connected == 0 {
                0.0
            } else {
                now.saturating_sub(before) as f64 / dt / f.connected as f64
            }
        };
        let (rtt, own, nb) = match prev {
            Some(p) => (
                f.rtt.since(&p.fleet.rtt),
                f.observe_own.since(&p.fleet.observe_own),
                f.observe_neighbour.since(&p.fleet.observe_neighbour),
            ),
            None => (
                f.rtt.clone(),
                f.observe_own.clone(),
                f.observe_neighbour.clone(),
            ),
        };
        let server = s.server.as_ref().map(|v| {
            let total = v.total();
            let rate = |now: f64, before: Option<f64>| match before {
                Some(b) if dt > 0.0 => (now - b) / dt,
                _ => 0.0,
            };
            let p_server = prev.and_then(|p| p.server.as_ref());
            let cpu = match (server_cpu(s), prev.and_then(server_cpu)) {
                (Some(a), Some(b)) if dt > 0.0 => Some(round3((a - b) / dt * 100.0)),
                _ => None,
            };
            ServerPoint {
                clients: v.clients,
                tick_p50_ms: round3(total.p50_ms),
                tick_p99_ms: round3(total.p99_ms),
                tick_max_ms: round3(total.max_ms),
                publish_p99_ms: round3(v.phases.get("publish").map_or(0.0, |p| p.p99_ms)),
                window_overruns: v.window_overruns,
                ticks_per_s: round3(rate(v.ticks, p_server.map(|p| p.ticks))),
                ticks_skipped: v.ticks_skipped - first_skipped,
                cpu_pct: cpu,
                rss_mib: server_rss(s).map(|b| round3(b / 1_048_576.0)),
                udp_out_per_client_s: if v.clients > 0.0 {
                    round3(rate(v.udp_bytes_out, p_server.map(|p| p.udp_bytes_out)) / v.clients)
                } else {
                    0.0
                },
            }
        });
        out.push(Point {
            t_s: round3(s.t_s),
            phase: f.phase,
            started: f.started,
            connected: f.connected,
            connect_failures: f.connect_failures,
            disconnects: f.disconnects,
            call_errors: f.call_errors,
            reducer_errors: f.reducer_errors,
            calls_per_s: if dt > 0.0 {
                round3(f.calls.saturating_sub(prev.map_or(0, |p| p.fleet.calls)) as f64 / dt)
            } else {
                0.0
            },
            rtt_p50_ms: round3(rtt.quantile_ms(0.5)),
            rtt_p99_ms: round3(rtt.quantile_ms(0.99)),
            observe_own_p99_ms: round3(own.quantile_ms(0.99)),
            observe_neighbour_p99_ms: round3(nb.quantile_ms(0.99)),
            bytes_in_per_bot_s: round3(per_bot(f.bytes_in, prev.map_or(0, |p| p.fleet.bytes_in))),
            bytes_out_per_bot_s: round3(per_bot(
                f.bytes_out,
                prev.map_or(0, |p| p.fleet.bytes_out),
            )),
            bots_cpu_pct: if dt > 0.0 {
                round3((f.cpu_seconds - prev.map_or(0.0, |p| p.fleet.cpu_seconds)) / dt * 100.0)
            } else {
                0.0
            },
            bots_rss_mib: round3(f.resident_bytes as f64 / 1_048_576.0),
            machine_cpu_pct: prev.and_then(|p| machine_pct(p, s, cpus())).map(round3),
            load1: s.load1,
            server,
        });
    }
    out
}

/// The index of the last sample in which every bot still played (the phase before the stop)
/// and of the first sample after the ramp.
fn steady_window(samples: &[RawSample]) -> (Option<usize>, Option<usize>) {
    let stop = samples
        .iter()
        .rposition(|s| s.fleet.phase.is_some_and(|p| p <= Phase::Running));
    let start = samples
        .iter()
        .position(|s| s.fleet.phase == Some(Phase::Running));
    (start, stop)
}

/// Builds the report from the samples and the final (merged) fleet snapshot.
pub fn build(
    settings: RunSettings,
    budgets: Budgets,
    samples: &[RawSample],
    last: &FleetSnapshot,
    wall_s: f64,
) -> Report {
    let series = points(samples);
    let (start, stop) = steady_window(samples);
    let at_stop = stop.map(|i| &samples[i]);
    let rate = |f: &dyn Fn(&RawSample) -> Option<f64>| -> Option<f64> {
        let (a, b) = (&samples[start?], &samples[stop?]);
        let dt = b.t_s - a.t_s;
        (dt > 0.0).then_some(())?;
        Some((f(b)? - f(a)?) / dt)
    };
    let server = at_stop.and_then(|s| s.server.as_ref()).map(|v| {
        let total = v.total();
        let during: Vec<&ServerPoint> = match (start, stop) {
            (Some(a), Some(b)) if a <= b => series[a..=b]
                .iter()
                .filter_map(|p| p.server.as_ref())
                .collect(),
            _ => Vec::new(),
        };
        let first_skipped = samples
            .iter()
            .find_map(|s| s.server.as_ref().map(|v| v.ticks_skipped))
            .unwrap_or(0.0);
        let clients = v.clients.max(1.0);
        ServerSummary {
            tick_p50_ms: round3(total.p50_ms),
            tick_p99_ms: round3(total.p99_ms),
            tick_max_ms: round3(total.max_ms),
            window_overruns: v.window_overruns,
            window_ticks: v.ticks.min(1_024.0),
            worst_tick_p99_ms: during.iter().map(|p| p.tick_p99_ms).fold(0.0, f64::max),
            ticks_skipped: v.ticks_skipped - first_skipped,
            ticks_per_s: round3(rate(&|s| s.server.as_ref().map(|v| v.ticks)).unwrap_or(0.0)),
            phases: v.phases.clone(),
            cpu_pct: rate(&server_cpu).map(|r| round3(r * 100.0)),
            rss_max_mib: samples
                .iter()
                .filter_map(server_rss)
                .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))))
                .map(|b| round3(b / 1_048_576.0)),
            udp_out_per_client_s: round3(
                rate(&|s| s.server.as_ref().map(|v| v.udp_bytes_out)).unwrap_or(0.0) / clients,
            ),
            udp_in_per_client_s: round3(
                rate(&|s| s.server.as_ref().map(|v| v.udp_bytes_in)).unwrap_or(0.0) / clients,
            ),
            published_per_client_s: round3(
                rate(&|s| s.server.as_ref().map(|v| v.publisher_bytes)).unwrap_or(0.0) / clients,
            ),
            resent_per_client_s: round3(
                rate(&|s| s.server.as_ref().map(|v| v.resent_bytes)).unwrap_or(0.0) / clients,
            ),
            calls_rate_limited: v.calls_rate_limited,
            backlog_disconnects: v.backlog_disconnects,
        }
    });
    let traffic = last.traffic.clone();
    let mut by_role: BTreeMap<String, (f64, usize)> = BTreeMap::new();
    for t in &traffic {
        let e = by_role
            .entry(
                serde_json::to_value(t.role)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
            )
            .or_default();
        e.0 += t.bytes_in_per_s;
        e.1 += 1;
    }
    let connected_at_stop = at_stop.map_or(0, |s| s.fleet.connected);
    let summary = Summary {
        bots: settings.bots,
        connected_at_stop,
        never_connected: last.never_connected,
        connect_failures: last.connect_failures,
        disconnects: last.disconnects,
        calls: last.calls,
        calls_per_s: round3(rate(&|s| Some(s.fleet.calls as f64)).unwrap_or(0.0)),
        call_errors: last.call_errors,
        reducer_errors: last.reducer_errors,
        inputs_skipped: last.inputs_skipped,
        rtt: last.rtt.summary(),
        observe_own: last.observe_own.summary(),
        observe_neighbour: last.observe_neighbour.summary(),
        connect_time: last.connect_time.summary(),
        bytes_in_per_bot_s: Spread::of(traffic.iter().map(|t| t.bytes_in_per_s).collect()),
        bytes_out_per_bot_s: Spread::of(traffic.iter().map(|t| t.bytes_out_per_s).collect()),
        bytes_in_by_role: by_role
            .into_iter()
            .map(|(k, (sum, n))| (k, round3(sum / n.max(1) as f64)))
            .collect(),
        link_lost: last.link_lost,
        mirror_skipped: last.mirror_skipped,
        mirror_rejected: last.mirror_rejected,
        bots_cpu_pct: round3(rate(&|s| Some(s.fleet.cpu_seconds)).unwrap_or(0.0) * 100.0),
        bots_rss_max_mib: round3(
            samples
                .iter()
                .map(|s| s.fleet.resident_bytes)
                .max()
                .unwrap_or(0) as f64
                / 1_048_576.0,
        ),
        machine_cpu_pct: match (start, stop) {
            (Some(a), Some(b)) if a < b => {
                machine_pct(&samples[a], &samples[b], cpus()).map(round3)
            }
            _ => None,
        },
        load1_max: samples
            .iter()
            .filter_map(|s| s.load1)
            .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x)))),
        server,
    };
    let checks = checks(&settings, &budgets, &summary, last.verify.as_ref());
    Report {
        pass: checks.iter().all(|c| c.pass),
        settings,
        budgets,
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        wall_s: round3(wall_s),
        summary,
        checks,
        series,
        histograms: Histograms {
            rtt: last.rtt.clone(),
            observe_own: last.observe_own.clone(),
            observe_neighbour: last.observe_neighbour.clone(),
            connect_time: last.connect_time.clone(),
        },
        traffic,
        errors: last.errors.clone(),
        verify: last.verify.clone(),
        server_at_stop: at_stop.and_then(|s| s.server.clone()),
    }
}

/// The checks against the budgets.
pub fn checks(
    settings: &RunSettings,
    budgets: &Budgets,
    s: &Summary,
    verify: Option<&VerifyTotals>,
) -> Vec<CheckResult> {
    let mut out = vec![
        CheckResult::at_least(
            "bots connected when input stopped",
            s.connected_at_stop as f64,
            settings.bots as f64,
        ),
        CheckResult::at_most("unanswered calls", s.call_errors as f64, 0.0),
        CheckResult::at_most("mirror records skipped", s.mirror_skipped as f64, 0.0),
        CheckResult::at_most(
            "downstream bytes/s per bot (max over bots)",
            s.bytes_in_per_bot_s.max,
            budgets.bytes_in_per_bot_s,
        ),
    ];
    if let Some(server) = &s.server {
        out.push(CheckResult::at_most(
            "server tick p99 ms (last 1,024 ticks before the stop)",
            server.tick_p99_ms,
            budgets.tick_p99_ms,
        ));
        out.push(CheckResult::at_most(
            "ticks skipped while bots played",
            server.ticks_skipped,
            budgets.ticks_skipped,
        ));
    }
    if s.observe_own.count > 0 {
        out.push(CheckResult::at_most(
            "input-to-observed p99 ms, own avatar",
            s.observe_own.p99_ms,
            budgets.observe_p99_ms,
        ));
    }
    if s.observe_neighbour.count > 0 {
        out.push(CheckResult::at_most(
            "input-to-observed p99 ms, neighbours",
            s.observe_neighbour.p99_ms,
            budgets.observe_p99_ms,
        ));
    }
    if settings.verify {
        let v = verify.cloned().unwrap_or_default();
        out.push(CheckResult::at_most(
            "divergent rows",
            v.divergent_rows as f64,
            0.0,
        ));
        out.push(CheckResult::at_least(
            "bots verified",
            (v.bots - v.errors) as f64,
            s.connected_at_stop as f64,
        ));
    }
    out
}

/// Writes `report.json` and `report.html` into `dir` (created); returns their paths.
pub fn write(report: &Report, dir: &Path) -> std::io::Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir)?;
    let json = dir.join("report.json");
    let html = dir.join("report.html");
    let text = serde_json::to_string_pretty(report).map_err(std::io::Error::other)?;
    std::fs::write(&json, text)?;
    std::fs::write(&html, crate::html::render(report))?;
    Ok((json, html))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn settings() -> RunSettings {
        RunSettings {
            bots: 2,
            ramp: 2.0,
            spread_s: 0.0,
            duration_s: 2.0,
            behavior: "wander".into(),
            input_hz: 20.0,
            loss: 0.0,
            latency_ms: 0.0,
            jitter_ms: 0.0,
            seed: 1,
            processes: 1,
            server: "http://x".into(),
            server_command: None,
            tick_rate: 20,
            verify: true,
        }
    }

    fn sample(t: f64, phase: Phase, calls: u64, ticks: f64) -> RawSample {
        let mut fleet = FleetSnapshot {
            phase: Some(phase),
            connected: 2,
            calls,
            bytes_in: (t * 2_000.0) as u64,
            ..FleetSnapshot::default()
        };
        fleet.rtt.record(Duration::from_millis(30));
        let mut server = ServerSample {
            clients: 2.0,
            ticks,
            ..ServerSample::default()
        };
        server.phases.insert(
            "total".into(),
            PhaseTimes {
                p50_ms: 2.0,
                p99_ms: 9.0,
                max_ms: 12.0,
            },
        );
        RawSample {
            t_s: t,
            fleet,
            server: Some(server),
            server_proc: Some((t * 0.5, 10 << 20)),
            machine: Some(((t * 150.0) as u64, (t * 200.0) as u64)),
            load1: Some(1.5),
        }
    }

    #[test]
    fn builds_points_summary_and_checks() {
        let samples = vec![
            sample(0.0, Phase::Ramping, 0, 0.0),
            sample(1.0, Phase::Running, 40, 20.0),
            sample(2.0, Phase::Running, 80, 40.0),
            sample(3.0, Phase::Settling, 82, 60.0),
        ];
        let mut last = samples[3].fleet.clone();
        last.traffic = vec![BotTraffic {
            bot: 0,
            role: crate::behavior::Role::Wander,
            bytes_in_per_s: 1_000.0,
            bytes_out_per_s: 300.0,
        }];
        last.verify = Some(VerifyTotals {
            bots: 2,
            converged: 2,
            ..VerifyTotals::default()
        });
        let budgets = Budgets {
            tick_p99_ms: 50.0,
            observe_p99_ms: 150.0,
            bytes_in_per_bot_s: 8_192.0,
            ticks_skipped: 0.0,
        };
        let report = build(settings(), budgets, &samples, &last, 4.0);
        assert_eq!(report.series.len(), 4);
        assert_eq!(report.series[2].calls_per_s, 40.0);
        assert_eq!(report.series[2].bytes_in_per_bot_s, 1_000.0);
        let server = report.summary.server.as_ref().unwrap();
        assert_eq!(server.tick_p99_ms, 9.0);
        assert_eq!(server.ticks_per_s, 20.0);
        assert_eq!(server.cpu_pct, Some(50.0));
        assert_eq!(report.summary.connected_at_stop, 2);
        assert_eq!(report.summary.calls_per_s, 40.0);
        let machine = report.summary.machine_cpu_pct.unwrap();
        assert!((machine - 75.0 * cpus()).abs() < 1e-6, "{machine}");
        assert_eq!(report.summary.load1_max, Some(1.5));
        assert!(report.pass, "{:#?}", report.checks);
        let dir = tempfile::tempdir().unwrap();
        let (json, html) = write(&report, dir.path()).unwrap();
        let back: Report = serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
        assert_eq!(back.summary, report.summary);
        let page = std::fs::read_to_string(html).unwrap();
        assert!(page.contains("<svg") && page.contains("server tick p99"));
    }

    #[test]
    fn failing_checks_fail_the_report() {
        let s = Summary {
            bots: 10,
            connected_at_stop: 9,
            ..Summary::default()
        };
        let budgets = Budgets {
            tick_p99_ms: 50.0,
            observe_p99_ms: 150.0,
            bytes_in_per_bot_s: 8_192.0,
            ticks_skipped: 0.0,
        };
        let mut settings = settings();
        settings.bots = 10;
        let checks = checks(&settings, &budgets, &s, None);
        assert!(!checks[0].pass);
        let divergent = checks.iter().find(|c| c.name == "divergent rows").unwrap();
        assert!(divergent.pass, "no verification results: nothing divergent");
        let verified = checks.iter().find(|c| c.name == "bots verified").unwrap();
        assert!(!verified.pass);
        assert_eq!(Spread::of(vec![3.0, 1.0, 2.0]).p50, 2.0);
        assert_eq!(Spread::of(vec![]).bots, 0);
    }
}
