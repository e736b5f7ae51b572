//! What the load test reads from the server side: the Prometheus text of `/metrics` (parsed
//! into a [`ServerSample`]: tick times per phase, overruns, skipped ticks, traffic, calls,
//! process CPU and memory) through the client's control-plane GET, which also polls
//! `/health`, and
//! `/proc/<pid>` CPU and memory of a local process.

use std::collections::BTreeMap;
use std::time::Duration;

use orrery_client::ClientError;
use orrery_client::http::ControlPlane;
pub use orrery_client::metrics::Exposition;
use serde::{Deserialize, Serialize};

/// Why a scrape failed.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    /// The GET failed: bad URL, network, timeout or a non-2xx answer.
    #[error("GET {url}: {source}")]
    Get {
        /// The URL.
        url: String,
        /// What went wrong.
        #[source]
        source: Box<ClientError>,
    },
}

/// `GET url` (optionally with a bearer token): the body of a 2xx answer as text. `url` is a
/// whole URL with its path (`http://host:port/metrics`); `https://` works too.
pub async fn http_get(
    url: &str,
    bearer: Option<&str>,
    timeout: Duration,
) -> Result<String, ScrapeError> {
    let failed = |source: ClientError| ScrapeError::Get {
        url: url.to_owned(),
        source: Box::new(source),
    };
    // The URL's path becomes the endpoint's prefix, so the request path is empty.
    let endpoint = ControlPlane::new(url)
        .map_err(failed)?
        .with_timeout(timeout);
    endpoint.get_text("", bearer).await.map_err(failed)
}

/// The tick phases the server reports, in order.
pub const PHASES: [&str; 9] = [
    "input",
    "reducers",
    "scheduled",
    "systems",
    "capture",
    "commit",
    "publish",
    "flush",
    "total",
];

/// p50, p99 and max of one tick phase over the server's window of recent ticks (1,024),
/// milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PhaseTimes {
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Maximum.
    pub max_ms: f64,
}

/// One scrape of the server's `/metrics` (plus process usage when known).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerSample {
    /// Clients connected.
    pub clients: f64,
    /// Ticks run so far.
    pub ticks: f64,
    /// Ticks the clock dropped so far (the loop fell behind by more than it catches up).
    pub ticks_skipped: f64,
    /// Ticks over budget among the last 1,024.
    pub window_overruns: f64,
    /// Tick time per phase (`PHASES`, `total` last).
    pub phases: BTreeMap<String, PhaseTimes>,
    /// UDP bytes received so far.
    pub udp_bytes_in: f64,
    /// UDP bytes sent so far.
    pub udp_bytes_out: f64,
    /// UDP datagrams received so far.
    pub udp_datagrams_in: f64,
    /// UDP datagrams sent so far.
    pub udp_datagrams_out: f64,
    /// Reducer calls received so far.
    pub calls: f64,
    /// Reducer calls that failed (returned an error) so far.
    pub calls_failed: f64,
    /// Reducer calls refused by the rate limit so far.
    pub calls_rate_limited: f64,
    /// Subscription payload bytes handed out so far.
    pub publisher_bytes: f64,
    /// Clients disconnected for a full backlog so far.
    pub backlog_disconnects: f64,
    /// Reliable message bytes resent so far (charged to their clients' budgets).
    #[serde(default)]
    pub resent_bytes: f64,
    /// Process CPU seconds so far (user + system), if known.
    pub cpu_seconds: Option<f64>,
    /// Resident memory, bytes, if known.
    pub resident_bytes: Option<f64>,
}

impl ServerSample {
    /// The sample in an exposition.
    pub fn from_exposition(e: &Exposition) -> Self {
        let g = |name: &str| e.get(name, &[]).unwrap_or(0.0);
        let d = |name: &str, dir: &str| e.get(name, &[("direction", dir)]).unwrap_or(0.0);
        let phases = PHASES
            .iter()
            .map(|phase| {
                let q = |q: &str| {
                    e.get(
                        "orrery_tick_duration_seconds",
                        &[("phase", phase), ("quantile", q)],
                    )
                    .unwrap_or(0.0)
                        * 1_000.0
                };
                (
                    (*phase).to_owned(),
                    PhaseTimes {
                        p50_ms: q("0.5"),
                        p99_ms: q("0.99"),
                        max_ms: q("1"),
                    },
                )
            })
            .collect();
        ServerSample {
            clients: g("orrery_clients_connected"),
            ticks: g("orrery_ticks_total"),
            ticks_skipped: g("orrery_ticks_skipped_total"),
            window_overruns: g("orrery_tick_window_overruns"),
            phases,
            udp_bytes_in: d("orrery_udp_bytes_total", "in"),
            udp_bytes_out: d("orrery_udp_bytes_total", "out"),
            udp_datagrams_in: d("orrery_udp_datagrams_total", "in"),
            udp_datagrams_out: d("orrery_udp_datagrams_total", "out"),
            calls: g("orrery_reducer_calls_total"),
            calls_failed: g("orrery_reducer_calls_failed_total"),
            calls_rate_limited: e
                .get(
                    "orrery_reducer_calls_rejected_total",
                    &[("reason", "rate_limit")],
                )
                .unwrap_or(0.0),
            publisher_bytes: g("orrery_publisher_bytes_total"),
            backlog_disconnects: g("orrery_backlog_disconnects_total"),
            resent_bytes: g("orrery_resent_bytes_total"),
            cpu_seconds: e.get("orrery_process_cpu_seconds_total", &[]),
            resident_bytes: e.get("orrery_process_resident_bytes", &[]),
        }
    }

    /// The `total` phase.
    pub fn total(&self) -> PhaseTimes {
        self.phases.get("total").copied().unwrap_or_default()
    }
}

/// Where the server's metrics come from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricsSource {
    /// The `/metrics` URL (plain HTTP).
    pub url: String,
    /// The admin token, for the control plane's `/metrics`.
    pub admin_token: Option<String>,
}

impl MetricsSource {
    /// One scrape.
    pub async fn scrape(&self) -> Result<ServerSample, ScrapeError> {
        let text = http_get(
            &self.url,
            self.admin_token.as_deref(),
            Duration::from_secs(5),
        )
        .await?;
        Ok(ServerSample::from_exposition(&Exposition::parse(&text)))
    }
}

/// CPU time and resident memory of a process.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProcessUsage {
    /// User plus system CPU seconds of every thread.
    pub cpu_seconds: f64,
    /// Resident set size, bytes.
    pub resident_bytes: u64,
}

/// Clock ticks per second of `/proc/<pid>/stat` CPU times (`USER_HZ`, 100 on Linux).
const USER_HZ: f64 = 100.0;

impl ProcessUsage {
    /// Usage of process `pid` (`None` when `/proc/<pid>` cannot be read: not Linux, or gone).
    pub fn of(pid: u32) -> Option<Self> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        Self::parse(&stat, &status)
    }

    /// Usage of this process.
    pub fn current() -> Option<Self> {
        Self::of(std::process::id())
    }

    /// Parses `/proc/<pid>/stat` (utime and stime, fields 14 and 15) and `/proc/<pid>/status`
    /// (`VmRSS`).
    pub fn parse(stat: &str, status: &str) -> Option<Self> {
        let rest = &stat[stat.rfind(')')? + 1..];
        let mut fields = rest.split_whitespace().skip(11);
        let utime: f64 = fields.next()?.parse().ok()?;
        let stime: f64 = fields.next()?.parse().ok()?;
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(ProcessUsage {
            cpu_seconds: (utime + stime) / USER_HZ,
            resident_bytes: kib * 1024,
        })
    }
}

/// The whole machine's CPU time so far: `(busy, total)` clock ticks over every CPU, from the
/// first line of `/proc/stat` (busy excludes idle and iowait). `None` off Linux.
pub fn machine_cpu() -> Option<(u64, u64)> {
    parse_machine_cpu(&std::fs::read_to_string("/proc/stat").ok()?)
}

fn parse_machine_cpu(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

/// The one-minute load average (`/proc/loadavg`).
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_machine_cpu() {
        let stat = "cpu  100 5 50 800 20 1 2 3 0 0\ncpu0 1 2 3 4\n";
        assert_eq!(parse_machine_cpu(stat), Some((161, 981)));
        assert_eq!(parse_machine_cpu("garbage"), None);
    }

    const TEXT: &str = "# HELP orrery_clients_connected Clients connected.
# TYPE orrery_clients_connected gauge
orrery_clients_connected 12
orrery_ticks_total 400
orrery_ticks_skipped_total 2
orrery_tick_duration_seconds{phase=\"total\",quantile=\"0.5\"} 0.004
orrery_tick_duration_seconds{phase=\"total\",quantile=\"0.99\"} 0.02
orrery_tick_duration_seconds{phase=\"total\",quantile=\"1\"} 0.031
orrery_tick_duration_seconds{phase=\"publish\",quantile=\"0.99\"} 0.01
orrery_tick_window_overruns 0
orrery_udp_bytes_total{direction=\"in\"} 1000
orrery_udp_bytes_total{direction=\"out\"} 5000
orrery_reducer_calls_rejected_total{reason=\"rate_limit\"} 3
orrery_resent_bytes_total 700
orrery_process_cpu_seconds_total 1.5
not a sample line
";

    #[test]
    fn parses_the_server_exposition() {
        let e = Exposition::parse(TEXT);
        assert_eq!(e.get("orrery_clients_connected", &[]), Some(12.0));
        assert_eq!(
            e.get(
                "orrery_tick_duration_seconds",
                &[("quantile", "0.99"), ("phase", "total")]
            ),
            Some(0.02)
        );
        let s = ServerSample::from_exposition(&e);
        assert_eq!(s.clients, 12.0);
        assert_eq!(s.ticks_skipped, 2.0);
        assert_eq!(s.total().p99_ms, 20.0);
        assert_eq!(s.total().max_ms, 31.0);
        assert_eq!(s.phases["publish"].p99_ms, 10.0);
        assert_eq!((s.udp_bytes_in, s.udp_bytes_out), (1000.0, 5000.0));
        assert_eq!(s.calls_rate_limited, 3.0);
        assert_eq!(s.resent_bytes, 700.0);
        assert_eq!(s.cpu_seconds, Some(1.5));
        assert_eq!(s.resident_bytes, None);
    }

    /// Serves `answer` to one connection on a local port; returns its URL.
    async fn one_answer(answer: &'static [u8]) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 1024];
            let _ = stream.read(&mut request).await;
            stream.write_all(answer).await.unwrap();
        });
        format!("http://{addr}/metrics")
    }

    #[tokio::test]
    async fn gets_bodies_and_refuses_errors() {
        let second = Duration::from_secs(5);
        let ok = one_answer(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello").await;
        assert_eq!(http_get(&ok, None, second).await.unwrap(), "hello");
        let chunked = one_answer(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n",
        )
        .await;
        assert_eq!(http_get(&chunked, None, second).await.unwrap(), "hello");
        let denied =
            one_answer(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 14\r\n\r\n{\"error\":\"no\"}")
                .await;
        let err = http_get(&denied, None, second).await.unwrap_err();
        assert!(
            matches!(&err, ScrapeError::Get { source, .. } if matches!(&**source, ClientError::Status { status: 403, message, .. } if message == "no")),
            "{err:?}"
        );
        let garbage = one_answer(b"garbage\r\n\r\n").await;
        assert!(http_get(&garbage, None, second).await.is_err());
        assert!(http_get("ftp://x/metrics", None, second).await.is_err());
    }

    #[test]
    fn parses_proc_files() {
        let stat = "99 (a b) R 1 2 3 4 5 6 7 8 9 10 300 100 0 0";
        let status = "Name: x\nVmRSS:\t  2048 kB\n";
        assert_eq!(
            ProcessUsage::parse(stat, status),
            Some(ProcessUsage {
                cpu_seconds: 4.0,
                resident_bytes: 2048 * 1024
            })
        );
        #[cfg(target_os = "linux")]
        assert!(ProcessUsage::current().is_some_and(|u| u.resident_bytes > 0));
    }
}
