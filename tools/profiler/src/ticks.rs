//! The server's own per-phase tick statistics, read from its Prometheus `/metrics`
//! (`orrery_tick_duration_seconds{phase,quantile}` and a few gauges), for
//! `orrery-profiler ticks`: the GET (the client's control-plane request, run on a
//! current-thread runtime), the table and its display.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use orrery_client::ClientError;
use orrery_client::http::ControlPlane;
use orrery_client::metrics::{Exposition, label};
use orrery_tick::Phase;
use thiserror::Error;

/// Why `/metrics` could not be read.
#[derive(Debug, Error)]
pub enum MetricsError {
    /// No runtime for the request.
    #[error("cannot start a runtime for the request: {0}")]
    Runtime(#[source] std::io::Error),
    /// The GET failed: bad URL, network, timeout or a non-2xx answer.
    #[error("GET {url}/metrics: {source}")]
    Get {
        /// The server's base URL.
        url: String,
        /// What went wrong.
        #[source]
        source: Box<ClientError>,
    },
}

/// `GET {server}/metrics` (`http://` or `https://`), with a bearer token for the control
/// plane's endpoint; `server` may already end in `/metrics`.
pub fn fetch(server: &str, token: Option<&str>, timeout: Duration) -> Result<String, MetricsError> {
    let base = server.trim_end_matches('/');
    let base = base.strip_suffix("/metrics").unwrap_or(base);
    let failed = |source: ClientError| MetricsError::Get {
        url: base.to_owned(),
        source: Box::new(source),
    };
    let endpoint = ControlPlane::new(base)
        .map_err(failed)?
        .with_timeout(timeout);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(MetricsError::Runtime)?;
    runtime
        .block_on(endpoint.get_text("/metrics", token))
        .map_err(failed)
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

impl TickTable {
    /// Parses the Prometheus text exposition.
    pub fn parse(text: &str) -> TickTable {
        let e = Exposition::parse(text);
        let mut table = TickTable::default();
        for (labels, value) in e.series("orrery_tick_duration_seconds") {
            let (Some(phase), Some(q)) = (label(labels, "phase"), label(labels, "quantile")) else {
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
        let gauge = |name| e.get(name, &[]).unwrap_or(0.0);
        table.ticks = gauge("orrery_ticks_total");
        table.skipped = gauge("orrery_ticks_skipped_total");
        table.overruns = gauge("orrery_tick_window_overruns");
        table.clients = gauge("orrery_clients_connected");
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
    fn unusable_urls_are_refused_before_any_request() {
        let err = fetch("ftp://x:1", None, Duration::from_millis(10)).unwrap_err();
        let MetricsError::Get { source, .. } = &err else {
            panic!("{err}");
        };
        assert!(matches!(**source, ClientError::InvalidUrl { .. }), "{err}");
    }
}
