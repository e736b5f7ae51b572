//! The server's own per-phase tick statistics, read from its Prometheus `/metrics`
//! (`orrery_tick_duration_seconds{phase,quantile}` and a few gauges), for
//! `orrery-profiler ticks`: a minimal blocking HTTP/1.1 GET, the parser, and the table.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use orrery_tick::Phase;
use thiserror::Error;

/// Why `/metrics` could not be read.
#[derive(Debug, Error)]
pub enum MetricsError {
    /// The URL is not `http://host:port[/path]`.
    #[error("not an http:// URL: {0:?} (the metrics listener or an http control plane)")]
    Url(String),
    /// The request failed.
    #[error("GET {url}: {source}")]
    Io {
        /// The URL.
        url: String,
        /// The error.
        source: std::io::Error,
    },
    /// The answer was not a 200 with a body.
    #[error("GET {url}: {reason}")]
    Response {
        /// The URL.
        url: String,
        /// What was wrong.
        reason: String,
    },
}

/// Most bytes of a `/metrics` answer read.
const MAX_BODY: u64 = 4 << 20;

/// `GET {server}/metrics` (plain HTTP), with a bearer token for the control plane's endpoint.
pub fn fetch(server: &str, token: Option<&str>, timeout: Duration) -> Result<String, MetricsError> {
    let base = server.trim_end_matches('/');
    let url = if base.ends_with("/metrics") {
        base.to_owned()
    } else {
        format!("{base}/metrics")
    };
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| MetricsError::Url(server.to_owned()))?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    if authority.is_empty() {
        return Err(MetricsError::Url(server.to_owned()));
    }
    let io = |source| MetricsError::Io {
        url: url.clone(),
        source,
    };
    let addr = authority
        .to_socket_addrs()
        .map_err(io)?
        .next()
        .ok_or_else(|| MetricsError::Url(server.to_owned()))?;
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(io)?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\n{auth}Connection: close\r\nAccept: text/plain\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).map_err(io)?;
    let mut answer = Vec::new();
    stream.take(MAX_BODY).read_to_end(&mut answer).map_err(io)?;
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| MetricsError::Response {
            url: url.clone(),
            reason: "no HTTP header".into(),
        })?;
    let status = head.lines().next().unwrap_or("");
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(MetricsError::Response {
            url: url.clone(),
            reason: format!("answered {status:?}"),
        });
    }
    if head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    }) {
        return Ok(dechunk(body));
    }
    Ok(body.to_owned())
}

/// The body of a chunked HTTP answer (what is well-formed of it).
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// p50, p99 and max of one phase, in seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Quantiles {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Maximum.
    pub max: f64,
}

/// The tick statistics of one `/metrics` answer.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TickTable {
    /// Per phase (and `total`), by name.
    pub phases: BTreeMap<String, Quantiles>,
    /// `orrery_ticks_total`.
    pub ticks: f64,
    /// `orrery_ticks_skipped_total`.
    pub skipped: f64,
    /// `orrery_tick_window_overruns`.
    pub overruns: f64,
    /// `orrery_clients_connected`.
    pub clients: f64,
}

/// A label's value in `{a="x",b="y"}`.
fn label<'a>(labels: &'a str, name: &str) -> Option<&'a str> {
    labels.split(',').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k.trim() == name).then(|| v.trim().trim_matches('"'))
    })
}

impl TickTable {
    /// Parses the Prometheus text exposition.
    pub fn parse(text: &str) -> TickTable {
        let mut table = TickTable::default();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let (name, labels) = match series.split_once('{') {
                Some((n, l)) => (n, l.trim_end_matches('}')),
                None => (series, ""),
            };
            match name {
                "orrery_tick_duration_seconds" => {
                    let (Some(phase), Some(q)) =
                        (label(labels, "phase"), label(labels, "quantile"))
                    else {
                        continue;
                    };
                    let slot = table.phases.entry(phase.to_owned()).or_default();
                    match q {
                        "0.5" => slot.p50 = value,
                        "0.99" => slot.p99 = value,
                        "1" => slot.max = value,
                        _ => {}
                    }
                }
                "orrery_ticks_total" => table.ticks = value,
                "orrery_ticks_skipped_total" => table.skipped = value,
                "orrery_tick_window_overruns" => table.overruns = value,
                "orrery_clients_connected" => table.clients = value,
                _ => {}
            }
        }
        table
    }
}

impl fmt::Display for TickTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "ticks {}   skipped {}   overruns in window {}   clients {}",
            self.ticks, self.skipped, self.overruns, self.clients
        )?;
        writeln!(
            f,
            "  {:<10} {:>10} {:>10} {:>10}",
            "phase", "p50 ms", "p99 ms", "max ms"
        )?;
        let names = Phase::ALL.iter().map(|p| p.name()).chain(["total"]);
        for name in names {
            let q = self.phases.get(name).copied().unwrap_or_default();
            writeln!(
                f,
                "  {:<10} {:>10.3} {:>10.3} {:>10.3}",
                name,
                q.p50 * 1e3,
                q.p99 * 1e3,
                q.max * 1e3
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_servers_tick_metrics() {
        let text = "\
# HELP orrery_clients_connected Clients connected.
# TYPE orrery_clients_connected gauge
orrery_clients_connected 3
orrery_ticks_total 120
orrery_ticks_skipped_total 0
orrery_tick_duration_seconds{phase=\"input\",quantile=\"0.5\"} 0.0001
orrery_tick_duration_seconds{phase=\"input\",quantile=\"0.99\"} 0.0003
orrery_tick_duration_seconds{phase=\"input\",quantile=\"1\"} 0.0009
orrery_tick_duration_seconds{phase=\"total\",quantile=\"0.99\"} 0.004
orrery_tick_window_overruns 2
";
        let t = TickTable::parse(text);
        assert_eq!(t.clients, 3.0);
        assert_eq!(t.ticks, 120.0);
        assert_eq!(t.overruns, 2.0);
        assert_eq!(
            t.phases["input"],
            Quantiles {
                p50: 0.0001,
                p99: 0.0003,
                max: 0.0009
            }
        );
        assert_eq!(t.phases["total"].p99, 0.004);
        let shown = t.to_string();
        assert!(shown.contains("input"), "{shown}");
        assert!(shown.contains("0.300"), "{shown}");
        for phase in Phase::ALL {
            assert!(shown.contains(phase.name()), "{shown}");
        }
    }

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(
            dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
            "hello world"
        );
    }

    #[test]
    fn only_http_urls_are_fetched() {
        let err = fetch("https://x:1", None, Duration::from_millis(10)).unwrap_err();
        assert!(matches!(err, MetricsError::Url(_)), "{err}");
    }
}
