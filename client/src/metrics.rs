//! Reading a server's `/metrics`: the Prometheus text exposition parsed into samples keyed by
//! name and labels ([`Exposition`]), and fetched with [`crate::http::ControlPlane::get_text`].
//! The load test and `orrery-profiler ticks` read tick times, traffic and counters through it.

use std::collections::BTreeMap;

/// Labels of one sample, sorted by name.
pub type Labels = Vec<(String, String)>;

/// Parsed Prometheus text: every sample by `(name, sorted labels)`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Exposition {
    samples: BTreeMap<(String, Labels), f64>,
}

/// `{a="x",b="y"}`'s inside as sorted pairs (malformed pairs are skipped).
fn parse_labels(inside: &str) -> Labels {
    let mut labels: Labels = inside
        .split(',')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            Some((k.trim().to_owned(), v.trim().trim_matches('"').to_owned()))
        })
        .collect();
    labels.sort_unstable();
    labels
}

impl Exposition {
    /// Parses the text format. Comments, blank and malformed lines are skipped; label values
    /// holding `,` or `}` are not supported (the server emits none).
    pub fn parse(text: &str) -> Self {
        let mut samples = BTreeMap::new();
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
                Some((name, rest)) => (name, parse_labels(rest.trim_end_matches('}'))),
                None => (series, Labels::new()),
            };
            samples.insert((name.trim().to_owned(), labels), value);
        }
        Exposition { samples }
    }

    /// The sample `name` with exactly these labels (in any order).
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut labels: Labels = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        labels.sort_unstable();
        self.samples.get(&(name.to_owned(), labels)).copied()
    }

    /// Every sample of `name`, with its labels, in label order.
    pub fn series<'a>(&'a self, name: &'a str) -> impl Iterator<Item = (&'a Labels, f64)> + 'a {
        self.samples
            .range((name.to_owned(), Labels::new())..)
            .take_while(move |((n, _), _)| n == name)
            .map(|((_, labels), value)| (labels, *value))
    }

    /// Samples parsed.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether nothing was parsed.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
}

/// A label's value.
pub fn label<'a>(labels: &'a Labels, name: &str) -> Option<&'a str> {
    labels
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# HELP orrery_tick_duration_seconds Tick time per phase.
# TYPE orrery_tick_duration_seconds summary
orrery_tick_duration_seconds{phase=\"publish\",quantile=\"0.5\"} 0.002
orrery_tick_duration_seconds{quantile=\"0.99\",phase=\"publish\"} 0.004
orrery_tick_duration_seconds{phase=\"total\",quantile=\"0.5\"} 0.003
orrery_ticks_total 120
orrery_bytes_sent_total 5e3
garbage line
orrery_broken{phase=\"x\"} not-a-number
";

    #[test]
    fn samples_are_found_by_name_and_labels_in_any_order() {
        let e = Exposition::parse(TEXT);
        assert_eq!(e.len(), 5);
        assert_eq!(e.get("orrery_ticks_total", &[]), Some(120.0));
        assert_eq!(e.get("orrery_bytes_sent_total", &[]), Some(5000.0));
        assert_eq!(
            e.get(
                "orrery_tick_duration_seconds",
                &[("quantile", "0.99"), ("phase", "publish")]
            ),
            Some(0.004)
        );
        assert_eq!(
            e.get("orrery_tick_duration_seconds", &[("phase", "publish")]),
            None
        );
        assert_eq!(e.get("orrery_broken", &[("phase", "x")]), None);
    }

    #[test]
    fn a_series_lists_every_sample_of_one_name() {
        let e = Exposition::parse(TEXT);
        let phases: Vec<(&str, &str, f64)> = e
            .series("orrery_tick_duration_seconds")
            .map(|(l, v)| (label(l, "phase").unwrap(), label(l, "quantile").unwrap(), v))
            .collect();
        assert_eq!(
            phases,
            [
                ("publish", "0.5", 0.002),
                ("publish", "0.99", 0.004),
                ("total", "0.5", 0.003)
            ]
        );
        assert_eq!(e.series("orrery_tick").count(), 0, "names match whole");
        assert_eq!(e.series("orrery_ticks_total").count(), 1);
    }
}
