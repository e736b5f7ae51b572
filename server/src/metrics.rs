//! Server counters shared by the tick thread, the network task and the HTTP handlers, and
//! their Prometheus text exposition ([`Metrics::render`]), which also reports the process's
//! CPU time and resident memory (read from `/proc/self` on Linux). Names are listed in
//! `docs/server.md`.

use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use orrery_tick::{Phase, PhaseSummary, TickStats, TickTiming};

/// Why a reducer call was not run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectKind {
    /// The per-client rate limit.
    RateLimit,
    /// Unknown or not callable reducer, or arguments that do not decode.
    Invalid,
    /// The commit log failed.
    Storage,
    /// The HTTP call queue to the tick thread was full.
    Busy,
}

impl RejectKind {
    /// Every kind, in exposition order.
    pub const ALL: [RejectKind; 4] = [
        RejectKind::RateLimit,
        RejectKind::Invalid,
        RejectKind::Storage,
        RejectKind::Busy,
    ];

    /// The `reason` label value.
    pub fn label(self) -> &'static str {
        match self {
            RejectKind::RateLimit => "rate_limit",
            RejectKind::Invalid => "invalid",
            RejectKind::Storage => "storage",
            RejectKind::Busy => "busy",
        }
    }
}

/// Counters and gauges (all `Relaxed` atomics: each is read on its own).
#[derive(Debug)]
pub struct Metrics {
    /// Clients connected (completed `client_connected`).
    pub clients: AtomicU64,
    /// Ticks run.
    pub ticks: AtomicU64,
    /// Sequence of the last tick.
    pub tick_seq: AtomicU64,
    /// Ticks the clock dropped because the loop fell behind.
    pub ticks_skipped: AtomicU64,
    /// UDP datagrams received (all, valid or not).
    pub datagrams_in: AtomicU64,
    /// UDP datagrams sent.
    pub datagrams_out: AtomicU64,
    /// UDP bytes received.
    pub bytes_in: AtomicU64,
    /// UDP bytes sent.
    pub bytes_out: AtomicU64,
    /// Datagrams dropped by the session (malformed, unauthenticated, unknown address).
    pub datagrams_dropped: AtomicU64,
    /// Reducer calls received from clients and HTTP.
    pub calls: AtomicU64,
    /// Calls that committed.
    pub calls_committed: AtomicU64,
    /// Calls whose reducer returned an error or panicked.
    pub calls_failed: AtomicU64,
    rejected: [AtomicU64; 4],
    /// One-off SQL reads received (`POST /v1/sql`).
    pub sql_reads: AtomicU64,
    /// SQL reads refused (bad query, private table, too many rows, rate limit).
    pub sql_refused: AtomicU64,
    /// Identity and connect-token requests refused by the per-address limit.
    pub http_address_limited: AtomicU64,
    /// HTTP connections closed at once because `max_http_connections` were open.
    pub http_connections_refused: AtomicU64,
    /// Connections that completed `client_connected`.
    pub connects: AtomicU64,
    /// Connections that ended.
    pub disconnects: AtomicU64,
    /// Connections refused by `client_connected`.
    pub connections_refused: AtomicU64,
    /// Connection attempts and messages the netcode layer refused (tokens, protocol).
    pub netcode_rejections: AtomicU64,
    /// Clients disconnected because their reliable backlog was full.
    pub backlog_disconnects: AtomicU64,
    /// Reliable message bytes sent again (resends), charged to their clients' budgets.
    pub resent_bytes: AtomicU64,
    /// Subscriptions applied.
    pub subscriptions_applied: AtomicU64,
    /// Subscriptions refused.
    pub subscription_errors: AtomicU64,
    /// Subscriptions alive (sampled about once a second).
    pub subscriptions_active: AtomicU64,
    /// Rows mirrored by the publisher (sampled).
    pub publisher_rows: AtomicU64,
    /// Subscription payload bytes handed out.
    pub publisher_bytes: AtomicU64,
    /// Subscription records handed out (upserts, deltas, deletes).
    pub publisher_records: AtomicU64,
    /// Time each publish worker has spent publishing clients, microseconds, by worker (sampled).
    pub publish_worker_busy_us: Mutex<Vec<u64>>,
    /// Time pipelined publishes ran off the tick thread, microseconds.
    pub publish_offloaded_us: AtomicU64,
    /// Time the tick thread waited for a pipelined publish to finish, microseconds.
    pub publish_wait_us: AtomicU64,
    /// Ticks whose input had to wait for the pipelined publish in flight (a disconnect,
    /// confirmed reads): their engine step did not overlap it.
    pub publish_early_joins: AtomicU64,
    /// Each network worker's counters, by worker (written by the worker after each wake-up;
    /// the whole-server UDP counters above are their sums).
    pub net_workers: Mutex<Vec<NetWorkerSample>>,
    /// Every tick up to this sequence is durable.
    pub durable_seq: AtomicU64,
    /// Replies waiting for their tick to be durable.
    pub replies_held: AtomicU64,
    /// The commit log failed: the server accepts no writes.
    pub storage_failed: AtomicBool,
    /// The storage failure's message.
    pub storage_error: Mutex<Option<String>>,
    /// Per-phase timings of recent ticks.
    pub tick_stats: Mutex<TickStats>,
}

impl Metrics {
    /// Zeroed metrics keeping timings of `window` ticks; `budget` is the tick length.
    pub fn new(window: usize, budget: std::time::Duration) -> Self {
        let z = || AtomicU64::new(0);
        Metrics {
            clients: z(),
            ticks: z(),
            tick_seq: z(),
            ticks_skipped: z(),
            datagrams_in: z(),
            datagrams_out: z(),
            bytes_in: z(),
            bytes_out: z(),
            datagrams_dropped: z(),
            calls: z(),
            calls_committed: z(),
            calls_failed: z(),
            sql_reads: z(),
            sql_refused: z(),
            http_address_limited: z(),
            http_connections_refused: z(),
            rejected: [z(), z(), z(), z()],
            connects: z(),
            disconnects: z(),
            connections_refused: z(),
            netcode_rejections: z(),
            backlog_disconnects: z(),
            resent_bytes: z(),
            subscriptions_applied: z(),
            subscription_errors: z(),
            subscriptions_active: z(),
            publisher_rows: z(),
            publisher_bytes: z(),
            publisher_records: z(),
            publish_worker_busy_us: Mutex::new(Vec::new()),
            publish_offloaded_us: z(),
            publish_wait_us: z(),
            publish_early_joins: z(),
            net_workers: Mutex::new(Vec::new()),
            durable_seq: z(),
            replies_held: z(),
            storage_failed: AtomicBool::new(false),
            storage_error: Mutex::new(None),
            tick_stats: Mutex::new(TickStats::with_capacity(window, budget)),
        }
    }

    /// Records network worker `worker`'s counters and updates the whole-server UDP counters
    /// (sums over the workers).
    pub fn record_net_worker(&self, worker: usize, sample: NetWorkerSample) {
        let mut workers = self.net_workers.lock().unwrap_or_else(|e| e.into_inner());
        if workers.len() <= worker {
            workers.resize(worker + 1, NetWorkerSample::default());
        }
        workers[worker] = sample;
        let mut total = NetWorkerSample::default();
        for w in workers.iter() {
            total.datagrams_in += w.datagrams_in;
            total.datagrams_out += w.datagrams_out;
            total.bytes_in += w.bytes_in;
            total.bytes_out += w.bytes_out;
            total.datagrams_dropped += w.datagrams_dropped;
            total.rejections += w.rejections;
        }
        drop(workers);
        self.datagrams_in.store(total.datagrams_in, Relaxed);
        self.datagrams_out.store(total.datagrams_out, Relaxed);
        self.bytes_in.store(total.bytes_in, Relaxed);
        self.bytes_out.store(total.bytes_out, Relaxed);
        self.datagrams_dropped
            .store(total.datagrams_dropped, Relaxed);
        self.netcode_rejections.store(total.rejections, Relaxed);
    }

    /// A copy of the network workers' counters.
    pub fn net_worker_samples(&self) -> Vec<NetWorkerSample> {
        self.net_workers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Counts a rejected call.
    pub fn reject(&self, kind: RejectKind) {
        self.rejected[kind as usize].fetch_add(1, Relaxed);
    }

    /// Calls rejected for `kind`.
    pub fn rejected(&self, kind: RejectKind) -> u64 {
        self.rejected[kind as usize].load(Relaxed)
    }

    /// Records one tick's timing.
    pub fn record_tick(&self, timing: &TickTiming) {
        let mut stats = self.tick_stats.lock().unwrap_or_else(|e| e.into_inner());
        stats.record(timing);
    }

    /// Marks the storage as failed with `message`.
    pub fn set_storage_failed(&self, message: &str) {
        self.storage_failed.store(true, Relaxed);
        let mut slot = self.storage_error.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(message.to_owned());
        }
    }

    /// The storage failure, if any.
    pub fn storage_error(&self) -> Option<String> {
        if !self.storage_failed.load(Relaxed) {
            return None;
        }
        self.storage_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The Prometheus text exposition (format 0.0.4) of every metric.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, f64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in samples {
                if labels.is_empty() {
                    let _ = writeln!(out, "{name} {value}");
                } else {
                    let _ = writeln!(out, "{name}{{{labels}}} {value}");
                }
            }
        };
        let g = |a: &AtomicU64| a.load(Relaxed) as f64;
        metric(
            "orrery_clients_connected",
            "gauge",
            "Clients connected.",
            &[("", g(&self.clients))],
        );
        metric(
            "orrery_ticks_total",
            "counter",
            "Ticks run.",
            &[("", g(&self.ticks))],
        );
        metric(
            "orrery_tick_seq",
            "gauge",
            "Sequence of the last tick.",
            &[("", g(&self.tick_seq))],
        );
        metric(
            "orrery_ticks_skipped_total",
            "counter",
            "Ticks dropped because the tick loop fell behind.",
            &[("", g(&self.ticks_skipped))],
        );
        metric(
            "orrery_durable_tick_seq",
            "gauge",
            "Every tick up to this sequence is durable.",
            &[("", g(&self.durable_seq))],
        );
        metric(
            "orrery_storage_failed",
            "gauge",
            "1 when the commit log has failed and the server accepts no writes.",
            &[("", f64::from(u8::from(self.storage_failed.load(Relaxed))))],
        );
        let summary = self
            .tick_stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .summary();
        let mut labels = Vec::new();
        let mut values = Vec::new();
        let mut push = |phase: &str, s: PhaseSummary| {
            for (q, d) in [("0.5", s.p50), ("0.99", s.p99), ("1", s.max)] {
                labels.push(format!("phase=\"{phase}\",quantile=\"{q}\""));
                values.push(d.as_secs_f64());
            }
        };
        for phase in Phase::ALL {
            push(phase.name(), summary.phase(phase));
        }
        push("total", summary.total);
        let samples: Vec<(&str, f64)> = labels
            .iter()
            .map(String::as_str)
            .zip(values.iter().copied())
            .collect();
        metric(
            "orrery_tick_duration_seconds",
            "gauge",
            "Tick time per phase over the recent window (quantile 1 is the maximum).",
            &samples,
        );
        metric(
            "orrery_tick_window_overruns",
            "gauge",
            "Ticks in the recent window that took longer than the tick.",
            &[("", summary.overruns as f64)],
        );
        metric(
            "orrery_udp_datagrams_total",
            "counter",
            "UDP datagrams.",
            &[
                ("direction=\"in\"", g(&self.datagrams_in)),
                ("direction=\"out\"", g(&self.datagrams_out)),
            ],
        );
        metric(
            "orrery_udp_bytes_total",
            "counter",
            "UDP bytes.",
            &[
                ("direction=\"in\"", g(&self.bytes_in)),
                ("direction=\"out\"", g(&self.bytes_out)),
            ],
        );
        metric(
            "orrery_udp_datagrams_dropped_total",
            "counter",
            "Datagrams dropped as malformed, unauthenticated or from unknown addresses.",
            &[("", g(&self.datagrams_dropped))],
        );
        metric(
            "orrery_reducer_calls_total",
            "counter",
            "Reducer calls received (UDP and HTTP).",
            &[("", g(&self.calls))],
        );
        metric(
            "orrery_reducer_calls_committed_total",
            "counter",
            "Reducer calls that committed.",
            &[("", g(&self.calls_committed))],
        );
        metric(
            "orrery_reducer_calls_failed_total",
            "counter",
            "Reducer calls that returned an error or panicked (rolled back).",
            &[("", g(&self.calls_failed))],
        );
        metric(
            "orrery_sql_reads_total",
            "counter",
            "One-off SQL reads received (POST /v1/sql).",
            &[("", g(&self.sql_reads))],
        );
        metric(
            "orrery_sql_reads_refused_total",
            "counter",
            "SQL reads refused: bad query, private table, too many rows or rate limit.",
            &[("", g(&self.sql_refused))],
        );
        metric(
            "orrery_http_address_limited_total",
            "counter",
            "Identity and connect-token requests refused by the per-address limit.",
            &[("", g(&self.http_address_limited))],
        );
        metric(
            "orrery_http_connections_refused_total",
            "counter",
            "HTTP connections closed at once because the connection cap was reached.",
            &[("", g(&self.http_connections_refused))],
        );
        let rejected: Vec<(String, f64)> = RejectKind::ALL
            .iter()
            .map(|k| {
                (
                    format!("reason=\"{}\"", k.label()),
                    self.rejected(*k) as f64,
                )
            })
            .collect();
        let rejected: Vec<(&str, f64)> = rejected.iter().map(|(l, v)| (l.as_str(), *v)).collect();
        metric(
            "orrery_reducer_calls_rejected_total",
            "counter",
            "Reducer calls not run, by reason.",
            &rejected,
        );
        metric(
            "orrery_replies_held",
            "gauge",
            "Durable replies waiting for their tick to reach the disk.",
            &[("", g(&self.replies_held))],
        );
        metric(
            "orrery_connections_total",
            "counter",
            "Connections accepted by client_connected.",
            &[("", g(&self.connects))],
        );
        metric(
            "orrery_disconnections_total",
            "counter",
            "Connections ended.",
            &[("", g(&self.disconnects))],
        );
        metric(
            "orrery_connections_refused_total",
            "counter",
            "Connections refused, by reason.",
            &[
                ("reason=\"client_connected\"", g(&self.connections_refused)),
                ("reason=\"netcode\"", g(&self.netcode_rejections)),
            ],
        );
        metric(
            "orrery_backlog_disconnects_total",
            "counter",
            "Clients disconnected because their reliable backlog was full.",
            &[("", g(&self.backlog_disconnects))],
        );
        metric(
            "orrery_resent_bytes_total",
            "counter",
            "Reliable message bytes sent again (resends), charged to their clients' budgets.",
            &[("", g(&self.resent_bytes))],
        );
        metric(
            "orrery_subscriptions_total",
            "counter",
            "Subscribe requests, by result.",
            &[
                ("result=\"applied\"", g(&self.subscriptions_applied)),
                ("result=\"error\"", g(&self.subscription_errors)),
            ],
        );
        metric(
            "orrery_subscriptions_active",
            "gauge",
            "Subscriptions alive (sampled about once a second).",
            &[("", g(&self.subscriptions_active))],
        );
        metric(
            "orrery_publisher_rows",
            "gauge",
            "Rows mirrored by the subscription publisher (sampled).",
            &[("", g(&self.publisher_rows))],
        );
        metric(
            "orrery_publisher_bytes_total",
            "counter",
            "Subscription payload bytes handed to clients.",
            &[("", g(&self.publisher_bytes))],
        );
        metric(
            "orrery_publisher_records_total",
            "counter",
            "Subscription records (upserts, deltas, deletes) handed to clients.",
            &[("", g(&self.publisher_records))],
        );
        let busy = self
            .publish_worker_busy_us
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let labels: Vec<String> = (0..busy.len()).map(|w| format!("worker=\"{w}\"")).collect();
        let samples: Vec<(&str, f64)> = labels
            .iter()
            .zip(&busy)
            .map(|(l, &us)| (l.as_str(), us as f64 / 1e6))
            .collect();
        metric(
            "orrery_publish_worker_busy_seconds_total",
            "counter",
            "Time each publish worker thread spent publishing clients (sampled about once a second).",
            &samples,
        );
        let seconds = |v: &AtomicU64| v.load(Relaxed) as f64 / 1e6;
        metric(
            "orrery_publish_offloaded_seconds_total",
            "counter",
            "Time pipelined publishes ran on the publish thread, off the tick thread's critical path.",
            &[("", seconds(&self.publish_offloaded_us))],
        );
        metric(
            "orrery_publish_wait_seconds_total",
            "counter",
            "Time the tick thread waited for a pipelined publish to finish (on its critical path).",
            &[("", seconds(&self.publish_wait_us))],
        );
        metric(
            "orrery_publish_early_joins_total",
            "counter",
            "Ticks whose input waited for the pipelined publish in flight (no overlap that tick).",
            &[("", g(&self.publish_early_joins))],
        );
        let net = self.net_worker_samples();
        let labels: Vec<String> = (0..net.len()).map(|w| format!("worker=\"{w}\"")).collect();
        let per_worker = |f: &dyn Fn(&NetWorkerSample) -> f64| -> Vec<(&str, f64)> {
            labels
                .iter()
                .map(String::as_str)
                .zip(net.iter().map(f))
                .collect()
        };
        metric(
            "orrery_net_worker_busy_seconds_total",
            "counter",
            "Time each network worker thread spent working (receiving, applying commands, updating sessions, sending), not waiting.",
            &per_worker(&|w| w.busy_us as f64 / 1e6),
        );
        let dir_labels: Vec<String> = (0..net.len())
            .flat_map(|w| {
                [
                    format!("worker=\"{w}\",direction=\"in\""),
                    format!("worker=\"{w}\",direction=\"out\""),
                ]
            })
            .collect();
        let dir_values: Vec<f64> = net
            .iter()
            .flat_map(|w| [w.datagrams_in as f64, w.datagrams_out as f64])
            .collect();
        metric(
            "orrery_net_worker_datagrams_total",
            "counter",
            "UDP datagrams per network worker.",
            &dir_labels
                .iter()
                .map(String::as_str)
                .zip(dir_values.iter().copied())
                .collect::<Vec<_>>(),
        );
        metric(
            "orrery_net_worker_clients",
            "gauge",
            "Clients connected to each network worker.",
            &per_worker(&|w| w.clients as f64),
        );
        if let Some(process) = ProcessUsage::read_self() {
            metric(
                "orrery_process_cpu_seconds_total",
                "counter",
                "CPU time (user and system) of the server process, every thread.",
                &[("", process.cpu_seconds)],
            );
            metric(
                "orrery_process_resident_bytes",
                "gauge",
                "Resident memory of the server process.",
                &[("", process.resident_bytes as f64)],
            );
        }
        out
    }
}

/// One network worker's counters (see [`Metrics::record_net_worker`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetWorkerSample {
    /// Datagrams received.
    pub datagrams_in: u64,
    /// Datagrams sent.
    pub datagrams_out: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Bytes sent.
    pub bytes_out: u64,
    /// Datagrams dropped as malformed, unauthenticated or from unknown addresses.
    pub datagrams_dropped: u64,
    /// Handshakes the netcode refused.
    pub rejections: u64,
    /// Clients connected.
    pub clients: u64,
    /// Time spent working, microseconds.
    pub busy_us: u64,
}

/// CPU time and resident memory of a process, from `/proc/<pid>/stat` and `/proc/<pid>/status`
/// (Linux; `None` elsewhere or when the files cannot be read).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProcessUsage {
    /// User plus system CPU time of every thread, seconds.
    pub cpu_seconds: f64,
    /// Resident set size, bytes.
    pub resident_bytes: u64,
}

/// Clock ticks per second of the CPU times in `/proc/<pid>/stat` (`USER_HZ`, 100 on every
/// Linux architecture's ABI).
const USER_HZ: f64 = 100.0;

impl ProcessUsage {
    /// This process's usage.
    pub fn read_self() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        Self::parse(&stat, &status)
    }

    /// Parses the text of `/proc/<pid>/stat` and `/proc/<pid>/status`.
    pub fn parse(stat: &str, status: &str) -> Option<Self> {
        // The command name (field 2) is in parentheses and may hold spaces: count fields
        // after the last ')'. utime and stime are fields 14 and 15.
        let rest = &stat[stat.rfind(')')? + 1..];
        let mut fields = rest.split_whitespace().skip(11);
        let utime: f64 = fields.next()?.parse().ok()?;
        let stime: f64 = fields.next()?.parse().ok()?;
        let resident_kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(ProcessUsage {
            cpu_seconds: (utime + stime) / USER_HZ,
            resident_bytes: resident_kib * 1024,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_stat_and_status() {
        let stat = "4242 (orrery tick) S 1 4242 4242 0 -1 4194560 5 0 0 0 250 75 0 0 20 0 9 0 \
                    100 2000 300 18446744073709551615";
        let status = "Name:\tsample-mmo\nVmPeak:\t  9000 kB\nVmRSS:\t  51200 kB\nThreads:\t9\n";
        assert_eq!(
            ProcessUsage::parse(stat, status),
            Some(ProcessUsage {
                cpu_seconds: 3.25,
                resident_bytes: 51200 * 1024
            })
        );
        assert_eq!(ProcessUsage::parse("garbage", status), None);
        assert_eq!(ProcessUsage::parse(stat, "Name: x\n"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn renders_process_gauges_on_linux() {
        let text = Metrics::new(16, std::time::Duration::from_millis(50)).render();
        assert!(
            text.contains("\norrery_process_cpu_seconds_total "),
            "{text}"
        );
        assert!(text.contains("\norrery_process_resident_bytes "), "{text}");
    }
}
