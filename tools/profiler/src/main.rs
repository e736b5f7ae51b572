//! The `orrery-profiler` command: `capture` records a live Tracy-instrumented process (a server
//! built with `--features tracy`) for some seconds and prints a summary (optionally JSON and the
//! raw stream to files), `replay` decodes a raw stream again, and `ticks` prints the server's own
//! per-phase tick statistics from `/metrics` as a live table.

// A terminal program: what it prints is its output.
#![allow(clippy::print_stdout)]

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use orrery_profiler::ticks::{TickTable, fetch};
use orrery_profiler::{CaptureOptions, Limits, Summary, capture, replay};

/// Headless Tracy capture and tick statistics for Orrery servers.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Connect to a Tracy-instrumented process, record, and print a summary.
    Capture {
        /// The process's Tracy address (its `TRACY_PORT`, 8086 by default; localhost only).
        #[arg(long, default_value = "127.0.0.1:8086")]
        addr: SocketAddr,
        /// How long to record, in seconds.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// How long to keep trying to connect, in seconds.
        #[arg(long, default_value_t = 10.0)]
        connect_timeout: f64,
        /// Also write every byte received to this file (decode it again with `replay`).
        #[arg(long)]
        raw: Option<PathBuf>,
        /// Also write the summary as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Decode a raw stream written by `capture --raw` and print its summary.
    Replay {
        /// The raw stream.
        file: PathBuf,
        /// Also write the summary as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Print the server's per-phase tick statistics from its /metrics, refreshed.
    Ticks {
        /// The metrics listener (`http://127.0.0.1:9100`) or the control plane (with `--token`).
        #[arg(long)]
        server: String,
        /// Bearer token (the admin token) for the control plane's /metrics.
        #[arg(long, conflicts_with = "token_file")]
        token: Option<String>,
        /// File holding the admin token (the server's `admin-token`).
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// Seconds between refreshes.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
        /// Stop after this many tables (runs until Ctrl-C when absent).
        #[arg(long)]
        count: Option<u64>,
    },
}

fn write_json(path: &PathBuf, summary: &Summary) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(summary)?;
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn seconds(name: &str, value: f64) -> anyhow::Result<Duration> {
    anyhow::ensure!(
        value.is_finite() && value > 0.0,
        "--{name} must be a positive number of seconds, got {value}"
    );
    Ok(Duration::from_secs_f64(value))
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    match Args::parse().command {
        Command::Capture {
            addr,
            seconds: secs,
            connect_timeout,
            raw,
            json,
        } => {
            let mut options = CaptureOptions::new(addr, seconds("seconds", secs)?);
            options.connect_timeout = seconds("connect-timeout", connect_timeout)?;
            options.raw = raw;
            let summary = capture(&options)?;
            print!("{summary}");
            if let Some(path) = json {
                write_json(&path, &summary)?;
            }
        }
        Command::Replay { file, json } => {
            let summary = replay(&file, Limits::default())?;
            print!("{summary}");
            if let Some(path) = json {
                write_json(&path, &summary)?;
            }
        }
        Command::Ticks {
            server,
            token,
            token_file,
            interval,
            count,
        } => {
            let token = match token_file {
                Some(path) => Some(
                    std::fs::read_to_string(&path)
                        .with_context(|| format!("reading {}", path.display()))?
                        .trim()
                        .to_owned(),
                ),
                None => token,
            };
            let every = seconds("interval", interval)?;
            let live = std::io::stdout().is_terminal();
            let mut shown = 0u64;
            loop {
                let text = fetch(&server, token.as_deref(), Duration::from_secs(5))?;
                let table = TickTable::parse(&text);
                if live {
                    // Redraw in place: clear the screen, cursor home.
                    print!("\x1b[2J\x1b[H");
                }
                println!("{server}/metrics\n{table}");
                shown += 1;
                if count.is_some_and(|c| shown >= c) {
                    break;
                }
                std::thread::sleep(every);
            }
        }
    }
    Ok(())
}
