//! [`Summary`]: what a capture saw — frames, zones with counts and mean/p99 durations, plots,
//! messages and threads — as JSON (serde) and as the text table `orrery-profiler capture`
//! prints.

use std::fmt;

use serde::{Deserialize, Serialize};

/// One frame set: Tracy's default `Frame` (one mark per server tick) or a named one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FrameSummary {
    /// The set's name (`Frame` for the default one).
    pub name: String,
    /// Frame marks received.
    pub count: u64,
    /// Mean time between marks, ns.
    pub mean_ns: f64,
    /// 99th percentile of the time between marks, ns.
    pub p99_ns: f64,
    /// Longest time between marks, ns.
    pub max_ns: f64,
}

/// One zone source location (zones of the same name, function and file merged).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ZoneSummary {
    /// The zone's name (the function's when it has none).
    pub name: String,
    /// The function the location names.
    pub function: String,
    /// The source file.
    pub file: String,
    /// The source line.
    pub line: u32,
    /// Zones completed during the capture.
    pub count: u64,
    /// Their total duration, ns.
    pub total_ns: f64,
    /// Mean duration, ns.
    pub mean_ns: f64,
    /// 99th percentile (nearest rank over the kept sample), ns.
    pub p99_ns: f64,
    /// Shortest, ns.
    pub min_ns: f64,
    /// Longest, ns.
    pub max_ns: f64,
}

/// One plot.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlotSummary {
    /// The plot's name.
    pub name: String,
    /// Points received.
    pub points: u64,
    /// Smallest value.
    pub min: f64,
    /// Mean value.
    pub mean: f64,
    /// Largest value.
    pub max: f64,
    /// The last value.
    pub last: f64,
}

/// One message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MessageSummary {
    /// Milliseconds since the client started.
    pub time_ms: f64,
    /// `0xRRGGBB`.
    pub color: u32,
    /// The text.
    pub text: String,
}

/// One thread that sent events.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ThreadSummary {
    /// The client's thread id.
    pub id: u32,
    /// Its name, if resolved.
    pub name: String,
    /// Zones completed on it.
    pub zones: u64,
}

/// What one capture saw.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// The instrumented program's name.
    pub program: Option<String>,
    /// Its process id.
    pub pid: Option<u64>,
    /// Whether it records only while connected.
    pub on_demand: bool,
    /// Frames it marked before the capture connected.
    pub frames_before_capture: u64,
    /// LZ4 frames of the stream.
    pub stream_frames: u64,
    /// Bytes received (compressed).
    pub bytes_received: u64,
    /// Bytes after decompression.
    pub bytes_decompressed: u64,
    /// Queue items walked.
    pub items: u64,
    /// Whether the client ended the stream with `Terminate`.
    pub terminated: bool,
    /// Whether it reported a crash.
    pub crashed: bool,
    /// Frame sets.
    pub frames: Vec<FrameSummary>,
    /// Zones, most total time first.
    pub zones: Vec<ZoneSummary>,
    /// Plots, by name.
    pub plots: Vec<PlotSummary>,
    /// Messages received.
    pub messages_total: u64,
    /// The first messages, in arrival order.
    pub messages: Vec<MessageSummary>,
    /// Threads.
    pub threads: Vec<ThreadSummary>,
}

impl Summary {
    /// Frame marks of the default frame set (one per server tick).
    pub fn frame_count(&self) -> u64 {
        self.frames
            .iter()
            .find(|f| f.name == "Frame")
            .map_or(0, |f| f.count)
    }

    /// The zone named `name`, if any completed.
    pub fn zone(&self, name: &str) -> Option<&ZoneSummary> {
        self.zones.iter().find(|z| z.name == name && z.count > 0)
    }

    /// The plot named `name`, if it got points.
    pub fn plot(&self, name: &str) -> Option<&PlotSummary> {
        self.plots.iter().find(|p| p.name == name && p.points > 0)
    }
}

/// A duration in ns, in the unit that reads best.
fn duration(ns: f64) -> String {
    if ns >= 1e9 {
        format!("{:.2} s", ns / 1e9)
    } else if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.1} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "program {} (pid {}){}",
            self.program.as_deref().unwrap_or("?"),
            self.pid.map_or("?".to_owned(), |p| p.to_string()),
            if self.on_demand { ", on demand" } else { "" }
        )?;
        writeln!(
            f,
            "stream: {} LZ4 frames, {} bytes received, {} decompressed, {} items{}{}",
            self.stream_frames,
            self.bytes_received,
            self.bytes_decompressed,
            self.items,
            if self.terminated {
                ", ended by the client"
            } else {
                ""
            },
            if self.crashed { ", CRASH reported" } else { "" }
        )?;
        writeln!(f, "\nframes")?;
        for fr in &self.frames {
            writeln!(
                f,
                "  {:<24} {:>8} marks   mean {:>10}   p99 {:>10}   max {:>10}",
                fr.name,
                fr.count,
                duration(fr.mean_ns),
                duration(fr.p99_ns),
                duration(fr.max_ns)
            )?;
        }
        writeln!(
            f,
            "\nzones\n  {:<40} {:>8} {:>11} {:>11} {:>11}   function",
            "name", "count", "mean", "p99", "total"
        )?;
        for z in &self.zones {
            writeln!(
                f,
                "  {:<40} {:>8} {:>11} {:>11} {:>11}   {}",
                z.name,
                z.count,
                duration(z.mean_ns),
                duration(z.p99_ns),
                duration(z.total_ns),
                z.function
            )?;
        }
        writeln!(f, "\nplots")?;
        for p in &self.plots {
            writeln!(
                f,
                "  {:<24} {:>8} points   min {:>12.3}   mean {:>12.3}   max {:>12.3}",
                p.name, p.points, p.min, p.mean, p.max
            )?;
        }
        writeln!(f, "\nthreads")?;
        for t in &self.threads {
            writeln!(f, "  {:<24} {:>8} zones   (id {})", t.name, t.zones, t.id)?;
        }
        writeln!(f, "\nmessages: {}", self.messages_total)?;
        for m in self.messages.iter().take(20) {
            writeln!(f, "  {:>12.3} ms  {}", m.time_ms, m.text)?;
        }
        if self.messages.len() > 20 {
            writeln!(f, "  ... (all kept ones are in --json)")?;
        }
        Ok(())
    }
}
