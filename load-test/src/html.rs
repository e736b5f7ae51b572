//! The report as one self-contained HTML page: tables of the checks and headline numbers,
//! and plots drawn here as inline SVG (time series as polylines, histograms as bars on a log
//! axis). No scripts, no external files.

use std::fmt::Write as _;

use crate::hist::Histogram;
use crate::report::{Point, Report};

const W: f64 = 760.0;
const H: f64 = 220.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 175.0;
const TOP: f64 = 26.0;
const BOTTOM: f64 = 30.0;
const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];

/// Escapes text for HTML.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A "nice" upper bound for an axis.
fn nice_max(x: f64) -> f64 {
    if x <= 0.0 || !x.is_finite() {
        return 1.0;
    }
    let mag = 10f64.powf(x.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if x <= m * mag {
            return m * mag;
        }
    }
    10.0 * mag
}

fn fmt_num(x: f64) -> String {
    if x.abs() >= 100.0 || x == x.trunc() {
        format!("{x:.0}")
    } else if x.abs() >= 1.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

/// One line of a chart.
pub struct Line<'a> {
    /// Legend.
    pub name: &'a str,
    /// `(x, y)` points.
    pub points: Vec<(f64, f64)>,
    /// Dashed (for limits).
    pub dashed: bool,
}

/// A time-series chart: seconds on x, `unit` on y.
pub fn line_chart(title: &str, unit: &str, lines: &[Line<'_>]) -> String {
    let xmax = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.0))
        .fold(0.0, f64::max)
        .max(1.0);
    let ymax = nice_max(
        lines
            .iter()
            .flat_map(|l| l.points.iter().map(|p| p.1))
            .filter(|y| y.is_finite())
            .fold(0.0, f64::max),
    );
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let sx = |x: f64| LEFT + x / xmax * pw;
    let sy = |y: f64| TOP + ph - (y / ymax).clamp(0.0, 1.0) * ph;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" class="chart"><text x="{LEFT}" y="16" class="title">{} ({})</text>"#,
        esc(title),
        esc(unit)
    );
    for i in 0..=4 {
        let y = ymax * f64::from(i) / 4.0;
        let _ = write!(
            svg,
            r##"<line x1="{LEFT}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" class="tick" text-anchor="end">{}</text>"##,
            LEFT + pw,
            sy(y),
            sy(y),
            LEFT - 4.0,
            sy(y) + 4.0,
            fmt_num(y)
        );
    }
    let xstep = nice_max(xmax / 6.0);
    let mut x = 0.0;
    while x <= xmax + 1e-9 {
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" class="tick" text-anchor="middle">{}</text>"#,
            sx(x),
            H - BOTTOM + 14.0,
            fmt_num(x)
        );
        x += xstep;
    }
    let _ = write!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" class="tick" text-anchor="end">s</text>"#,
        LEFT + pw,
        H - 2.0,
    );
    for (i, line) in lines.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let pts: Vec<String> = line
            .points
            .iter()
            .filter(|(_, y)| y.is_finite())
            .map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
            .collect();
        let dash = if line.dashed {
            r#" stroke-dasharray="5,4""#
        } else {
            ""
        };
        let _ = write!(
            svg,
            r#"<polyline fill="none" stroke="{color}" stroke-width="1.5"{dash} points="{}"/>"#,
            pts.join(" ")
        );
        let ly = TOP + 14.0 * i as f64 + 6.0;
        let _ = write!(
            svg,
            r#"<line x1="{:.1}" x2="{:.1}" y1="{ly:.1}" y2="{ly:.1}" stroke="{color}" stroke-width="2"{dash}/><text x="{:.1}" y="{:.1}" class="tick">{}</text>"#,
            W - RIGHT + 10.0,
            W - RIGHT + 28.0,
            W - RIGHT + 32.0,
            ly + 4.0,
            esc(line.name)
        );
    }
    svg.push_str("</svg>");
    svg
}

/// Bars over `(low, high, count)` buckets on a log x axis (`unit` on x).
pub fn bar_chart(title: &str, unit: &str, buckets: &[(f64, f64, u64)]) -> String {
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" class="chart"><text x="{LEFT}" y="16" class="title">{}</text>"#,
        esc(title)
    );
    let buckets: Vec<(f64, f64, u64)> = buckets
        .iter()
        .copied()
        .filter(|(lo, hi, c)| *c > 0 && *hi > 0.0 && hi > lo)
        .collect();
    if buckets.is_empty() {
        let _ = write!(
            svg,
            r#"<text x="{LEFT}" y="60" class="tick">no values</text></svg>"#
        );
        return svg;
    }
    let lo = buckets
        .iter()
        .map(|b| b.0.max(1e-3))
        .fold(f64::INFINITY, f64::min);
    let hi = buckets.iter().map(|b| b.1).fold(0.0, f64::max);
    let (l0, l1) = (
        lo.log10().floor(),
        hi.log10().ceil().max(lo.log10().floor() + 1.0),
    );
    let total: u64 = buckets.iter().map(|b| b.2).sum();
    let cmax = nice_max(buckets.iter().map(|b| b.2).max().unwrap_or(1) as f64);
    let (pw, ph) = (W - LEFT - 20.0, H - TOP - BOTTOM);
    let sx = |x: f64| LEFT + (x.max(1e-3).log10() - l0) / (l1 - l0) * pw;
    let sy = |c: f64| TOP + ph - c / cmax * ph;
    for i in 0..=4 {
        let c = cmax * f64::from(i) / 4.0;
        let _ = write!(
            svg,
            r##"<line x1="{LEFT}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" class="tick" text-anchor="end">{}</text>"##,
            LEFT + pw,
            sy(c),
            sy(c),
            LEFT - 4.0,
            sy(c) + 4.0,
            fmt_num(c)
        );
    }
    let mut decade = l0;
    while decade <= l1 + 1e-9 {
        let x = 10f64.powf(decade);
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" class="tick" text-anchor="middle">{}</text>"#,
            sx(x),
            H - BOTTOM + 14.0,
            fmt_num(x)
        );
        decade += 1.0;
    }
    let _ = write!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" class="tick" text-anchor="end">{} (log) — {} values</text>"#,
        LEFT + pw,
        H - 2.0,
        esc(unit),
        total
    );
    for (lo, hi, c) in &buckets {
        let (x0, x1) = (sx(lo.max(1e-3)), sx(*hi));
        let _ = write!(
            svg,
            r##"<rect x="{x0:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="#1f77b4"><title>{}–{} {}: {c}</title></rect>"##,
            sy(*c as f64),
            (x1 - x0).max(1.0),
            TOP + ph - sy(*c as f64),
            fmt_num(*lo),
            fmt_num(*hi),
            esc(unit)
        );
    }
    svg.push_str("</svg>");
    svg
}

fn series<'a>(name: &'a str, pts: &[Point], f: impl Fn(&Point) -> Option<f64>) -> Line<'a> {
    Line {
        name,
        points: pts.iter().filter_map(|p| Some((p.t_s, f(p)?))).collect(),
        dashed: false,
    }
}

fn limit<'a>(name: &'a str, pts: &[Point], y: f64) -> Line<'a> {
    let end = pts.last().map_or(1.0, |p| p.t_s);
    Line {
        name,
        points: vec![(0.0, y), (end, y)],
        dashed: true,
    }
}

fn hist_ms(title: &str, h: &Histogram) -> String {
    bar_chart(title, "ms", &h.buckets_ms())
}

/// Buckets of per-bot rates (log-spaced, 20 per decade).
fn rate_buckets(values: impl Iterator<Item = f64>) -> Vec<(f64, f64, u64)> {
    let mut counts: std::collections::BTreeMap<i64, u64> = std::collections::BTreeMap::new();
    for v in values.filter(|v| *v > 0.0) {
        *counts.entry((v.log10() * 20.0).floor() as i64).or_default() += 1;
    }
    counts
        .into_iter()
        .map(|(k, c)| {
            (
                10f64.powf(k as f64 / 20.0),
                10f64.powf((k + 1) as f64 / 20.0),
                c,
            )
        })
        .collect()
}

fn row(out: &mut String, k: &str, v: impl std::fmt::Display) {
    let _ = write!(
        out,
        "<tr><th>{}</th><td>{}</td></tr>",
        esc(k),
        esc(&v.to_string())
    );
}

/// The page.
pub fn render(r: &Report) -> String {
    let s = &r.summary;
    let pts = &r.series;
    let mut out = String::with_capacity(256 * 1024);
    let verdict = if r.pass { "PASS" } else { "FAIL" };
    let _ = write!(
        out,
        r#"<!doctype html><html><head><meta charset="utf-8"><title>Orrery load test: {} bots, {} — {verdict}</title><style>
body{{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1100px}}
table{{border-collapse:collapse;margin:8px 0 20px}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:left;font-size:13px}}
th{{background:#f4f4f4;font-weight:600}}.pass{{color:#176b20;font-weight:700}}.fail{{color:#b00020;font-weight:700}}
.chart{{display:block;margin:6px 0 14px;background:#fff;border:1px solid #eee}}.title{{font-size:13px;font-weight:600}}.tick{{font-size:10px;fill:#555}}
code{{background:#f4f4f4;padding:1px 4px}}</style></head><body>"#,
        r.settings.bots,
        esc(&r.settings.behavior)
    );
    let _ = write!(
        out,
        "<h1>Orrery load test — <span class=\"{}\">{verdict}</span></h1><p>{} bots, behaviour <code>{}</code>, {} calls/s each, ramp {}/s, {} s spreading out and {} s of play after the ramp, loss {} latency {} ms jitter {} ms, seed {}, {} bot process(es), server <code>{}</code>; {} CPUs; the run took {:.0} s.</p>",
        if r.pass { "pass" } else { "fail" },
        r.settings.bots,
        esc(&r.settings.behavior),
        r.settings.input_hz,
        r.settings.ramp,
        r.settings.spread_s,
        r.settings.duration_s,
        r.settings.loss,
        r.settings.latency_ms,
        r.settings.jitter_ms,
        r.settings.seed,
        r.settings.processes,
        esc(&r.settings.server),
        r.cpus,
        r.wall_s
    );
    if let Some(cmd) = &r.settings.server_command {
        let _ = write!(
            out,
            "<p>Server command: <code>{}</code></p>",
            esc(&cmd.join(" "))
        );
    }

    out.push_str(
        "<h2>Checks</h2><table><tr><th>check</th><th>value</th><th>limit</th><th></th></tr>",
    );
    for c in &r.checks {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{} {}</td><td class=\"{}\">{}</td></tr>",
            esc(&c.name),
            c.value,
            esc(&c.op),
            c.limit,
            if c.pass { "pass" } else { "fail" },
            if c.pass { "pass" } else { "FAIL" }
        );
    }
    out.push_str("</table>");

    out.push_str("<h2>Summary</h2><table>");
    row(
        &mut out,
        "bots connected when input stopped",
        format!("{} of {}", s.connected_at_stop, s.bots),
    );
    row(
        &mut out,
        "never connected / failed attempts / disconnects",
        format!(
            "{} / {} / {}",
            s.never_connected, s.connect_failures, s.disconnects
        ),
    );
    row(
        &mut out,
        "calls / per second (steady) / unanswered / refused by the game",
        format!(
            "{} / {} / {} / {}",
            s.calls, s.calls_per_s, s.call_errors, s.reducer_errors
        ),
    );
    row(
        &mut out,
        "inputs skipped (calls in flight at the limit)",
        s.inputs_skipped,
    );
    let lat = |h: &crate::hist::Summary| {
        format!(
            "p50 {} ms, p90 {} ms, p99 {} ms, max {} ms ({} values)",
            h.p50_ms, h.p90_ms, h.p99_ms, h.max_ms, h.count
        )
    };
    row(&mut out, "reducer round trip", lat(&s.rtt));
    row(&mut out, "input to own mirror", lat(&s.observe_own));
    row(
        &mut out,
        "input to neighbours' mirrors",
        lat(&s.observe_neighbour),
    );
    row(
        &mut out,
        "connect (identity to subscribed)",
        lat(&s.connect_time),
    );
    let spread = |x: &crate::report::Spread| {
        format!(
            "mean {} B/s, p50 {}, p99 {}, max {} ({} bots)",
            x.mean, x.p50, x.p99, x.max, x.bots
        )
    };
    row(
        &mut out,
        "downstream per bot (steady window)",
        spread(&s.bytes_in_per_bot_s),
    );
    row(
        &mut out,
        "upstream per bot (steady window)",
        spread(&s.bytes_out_per_bot_s),
    );
    row(
        &mut out,
        "downstream per bot by role (mean B/s)",
        format!("{:?}", s.bytes_in_by_role),
    );
    row(
        &mut out,
        "datagrams lost on the simulated link",
        s.link_lost,
    );
    row(
        &mut out,
        "mirror records skipped / updates refused",
        format!("{} / {}", s.mirror_skipped, s.mirror_rejected),
    );
    row(
        &mut out,
        "bot processes: CPU (% of a core) / max RSS",
        format!("{}% / {} MiB", s.bots_cpu_pct, s.bots_rss_max_mib),
    );
    if let Some(v) = &s.server {
        row(
            &mut out,
            "server tick p50 / p99 / max (last 1,024 ticks before the stop)",
            format!(
                "{} / {} / {} ms",
                v.tick_p50_ms, v.tick_p99_ms, v.tick_max_ms
            ),
        );
        row(
            &mut out,
            "ticks over budget in that window / worst windowed p99 while playing",
            format!(
                "{} of {} / {} ms",
                v.window_overruns, v.window_ticks, v.worst_tick_p99_ms
            ),
        );
        row(
            &mut out,
            "ticks per second / skipped while playing",
            format!("{} / {}", v.ticks_per_s, v.ticks_skipped),
        );
        row(
            &mut out,
            "server CPU (% of a core) / max RSS",
            format!(
                "{} % / {} MiB",
                v.cpu_pct.map_or("n/a".into(), |c| c.to_string()),
                v.rss_max_mib.map_or("n/a".into(), |c| c.to_string())
            ),
        );
        row(
            &mut out,
            "server UDP per client out / in",
            format!("{} / {} B/s", v.udp_out_per_client_s, v.udp_in_per_client_s),
        );
        row(
            &mut out,
            "published / resent per client (both part of UDP out)",
            format!(
                "{} / {} B/s",
                v.published_per_client_s, v.resent_per_client_s
            ),
        );
        row(
            &mut out,
            "calls refused by the rate limit / backlog disconnects",
            format!("{} / {}", v.calls_rate_limited, v.backlog_disconnects),
        );
    }
    out.push_str("</table>");

    if let Some(v) = &s.server {
        out.push_str("<h2>Where the tick goes</h2><p>Per phase, over the server's last 1,024 ticks before input stopped.</p><table><tr><th>phase</th><th>p50 ms</th><th>p99 ms</th><th>max ms</th></tr>");
        for phase in crate::scrape::PHASES {
            if let Some(t) = v.phases.get(phase) {
                let _ = write!(
                    out,
                    "<tr><td>{phase}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td></tr>",
                    t.p50_ms, t.p99_ms, t.max_ms
                );
            }
        }
        out.push_str("</table>");
    }

    out.push_str("<h2>Over time</h2>");
    out.push_str(&line_chart(
        "Bots",
        "bots",
        &[
            series("connected", pts, |p| Some(p.connected as f64)),
            series("started", pts, |p| Some(p.started as f64)),
            series("server clients", pts, |p| {
                p.server.as_ref().map(|s| s.clients)
            }),
        ],
    ));
    out.push_str(&line_chart(
        "Failures (cumulative)",
        "count",
        &[
            series("connect failures", pts, |p| Some(p.connect_failures as f64)),
            series("disconnects", pts, |p| Some(p.disconnects as f64)),
            series("unanswered calls", pts, |p| Some(p.call_errors as f64)),
        ],
    ));
    let budget = r.budgets.tick_p99_ms;
    out.push_str(&line_chart(
        "Server tick time (window of the last 1,024 ticks)",
        "ms",
        &[
            series("p50", pts, |p| p.server.as_ref().map(|s| s.tick_p50_ms)),
            series("p99", pts, |p| p.server.as_ref().map(|s| s.tick_p99_ms)),
            series("max", pts, |p| p.server.as_ref().map(|s| s.tick_max_ms)),
            series("publish p99", pts, |p| {
                p.server.as_ref().map(|s| s.publish_p99_ms)
            }),
            limit("budget", pts, budget),
        ],
    ));
    out.push_str(&line_chart(
        "Server ticks",
        "count",
        &[
            series("ticks/s", pts, |p| p.server.as_ref().map(|s| s.ticks_per_s)),
            series("overruns in window", pts, |p| {
                p.server.as_ref().map(|s| s.window_overruns)
            }),
            series("skipped (cumulative)", pts, |p| {
                p.server.as_ref().map(|s| s.ticks_skipped)
            }),
        ],
    ));
    out.push_str(&line_chart(
        "Reducer round trip (per second)",
        "ms",
        &[
            series("p50", pts, |p| Some(p.rtt_p50_ms)),
            series("p99", pts, |p| Some(p.rtt_p99_ms)),
        ],
    ));
    out.push_str(&line_chart(
        "Input to observed, p99 (per second)",
        "ms",
        &[
            series("own mirror", pts, |p| Some(p.observe_own_p99_ms)),
            series("neighbours", pts, |p| Some(p.observe_neighbour_p99_ms)),
            limit("budget", pts, r.budgets.observe_p99_ms),
        ],
    ));
    out.push_str(&line_chart(
        "Traffic per connected bot",
        "B/s",
        &[
            series("down (in)", pts, |p| Some(p.bytes_in_per_bot_s)),
            series("up (out)", pts, |p| Some(p.bytes_out_per_bot_s)),
            series("server out per client", pts, |p| {
                p.server.as_ref().map(|s| s.udp_out_per_client_s)
            }),
            limit("budget", pts, r.budgets.bytes_in_per_bot_s),
        ],
    ));
    out.push_str(&line_chart(
        "CPU",
        "% of a core",
        &[
            series("server", pts, |p| p.server.as_ref().and_then(|s| s.cpu_pct)),
            series("bots", pts, |p| Some(p.bots_cpu_pct)),
        ],
    ));
    out.push_str(&line_chart(
        "Resident memory",
        "MiB",
        &[
            series("server", pts, |p| p.server.as_ref().and_then(|s| s.rss_mib)),
            series("bots", pts, |p| Some(p.bots_rss_mib)),
        ],
    ));

    out.push_str("<h2>Distributions</h2>");
    out.push_str(&hist_ms("Reducer round trip", &r.histograms.rtt));
    out.push_str(&hist_ms("Input to own mirror", &r.histograms.observe_own));
    out.push_str(&hist_ms(
        "Input to neighbours' mirrors",
        &r.histograms.observe_neighbour,
    ));
    out.push_str(&hist_ms("Connect time", &r.histograms.connect_time));
    out.push_str(&bar_chart(
        "Downstream bytes/s per bot (steady window)",
        "B/s",
        &rate_buckets(r.traffic.iter().map(|t| t.bytes_in_per_s)),
    ));
    if let Some(v) = &r.verify {
        out.push_str(&hist_ms(
            "Verification: time until a mirror matched",
            &v.converge_time,
        ));
    }

    if let Some(v) = &r.verify {
        out.push_str("<h2>Verification</h2><table>");
        row(
            &mut out,
            "bots verified / converged / errors",
            format!("{} / {} / {}", v.bots, v.converged, v.errors),
        );
        row(
            &mut out,
            "rows compared / divergent",
            format!("{} / {}", v.rows_compared, v.divergent_rows),
        );
        row(
            &mut out,
            "divergent by table",
            format!("{:?}", v.divergent_by_table),
        );
        out.push_str("</table>");
        if !v.examples.is_empty() {
            out.push_str("<table><tr><th>bot</th><th>table</th><th>key</th><th>kind</th><th>detail</th></tr>");
            for d in &v.examples {
                let _ = write!(
                    out,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    d.bot,
                    esc(&d.table),
                    esc(&d.key),
                    esc(&d.kind),
                    esc(&d.detail)
                );
            }
            out.push_str("</table>");
        }
        for e in &v.error_examples {
            let _ = write!(out, "<p><code>{}</code></p>", esc(e));
        }
    }

    if !r.errors.is_empty() {
        out.push_str("<h2>Errors and refusals</h2><table><tr><th>what (digits folded to N)</th><th>count</th></tr>");
        let mut errors: Vec<(&String, &u64)> = r.errors.iter().collect();
        errors.sort_by(|a, b| b.1.cmp(a.1));
        for (k, n) in errors.iter().take(40) {
            let _ = write!(out, "<tr><td>{}</td><td>{n}</td></tr>", esc(k));
        }
        out.push_str("</table>");
    }
    out.push_str("<p>Numbers and their meaning: <code>docs/load-test.md</code>. The raw data is in <code>report.json</code> beside this page.</p></body></html>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_svg_and_escape_text() {
        let svg = line_chart(
            "a <b>",
            "ms",
            &[Line {
                name: "x&y",
                points: vec![(0.0, 1.0), (10.0, 3.0)],
                dashed: false,
            }],
        );
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(svg.contains("a &lt;b&gt;") && svg.contains("x&amp;y"));
        assert!(svg.contains("<polyline"));
        let bars = bar_chart("h", "ms", &[(1.0, 2.0, 5), (10.0, 12.0, 1)]);
        assert_eq!(bars.matches("<rect").count(), 2);
        assert!(bar_chart("h", "ms", &[]).contains("no values"));
        assert_eq!(nice_max(37.0), 50.0);
        assert_eq!(nice_max(0.0), 1.0);
        let rb = rate_buckets([100.0, 105.0, 5_000.0].into_iter());
        assert_eq!(rb.iter().map(|b| b.2).sum::<u64>(), 3);
    }
}
