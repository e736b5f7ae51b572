//! `crash-harness <dir> [--fsync every-tick|never|<N>ms] [--snapshot-every N] [--segment-bytes N]`
//!
//! A minimal server process for the crash test: opens a durable engine running the crash-test
//! bank in `<dir>` (running `init` only for a fresh database), prints `ready <tick seq>`, then
//! reads transfer requests from stdin, one per line: `<request_id> <from> <to> <amount>`. It
//! runs them in ticks (a tick every 5 ms, or as soon as requests arrive) and answers
//! `<request_id> ok` or `<request_id> err` on stdout **only after the tick holding the request
//! is durable**, the way a server holds a `durable = true` reply. At the end of stdin it shuts
//! down cleanly. It is meant to be killed with SIGKILL at any moment.
//!
//! The protocol is stdout, written through a locked handle rather than `println!`.

use std::io::{self, BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use orrery_engine::prelude::*;
use orrery_engine::{DurabilityConfig, FsyncPolicy, Input};
use orrery_integration_tests::bank;

const TICK: Duration = Duration::from_millis(5);
const MAX_PER_TICK: usize = 2_000;

fn parse_args() -> Result<DurabilityConfig, String> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().ok_or("usage: crash-harness <dir> [options]")?;
    let mut config = DurabilityConfig::new(PathBuf::from(dir));
    config.snapshot_every_ticks = 200;
    config.segment_max_bytes = 256 << 10;
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = || {
            value
                .trim_end_matches("ms")
                .parse::<u64>()
                .map_err(|e| e.to_string())
        };
        match flag.as_str() {
            "--fsync" => {
                config.fsync = match value.as_str() {
                    "every-tick" => FsyncPolicy::EveryTick,
                    "never" => FsyncPolicy::Never,
                    _ => FsyncPolicy::Interval(Duration::from_millis(number()?)),
                }
            }
            "--snapshot-every" => config.snapshot_every_ticks = number()?,
            "--segment-bytes" => config.segment_max_bytes = number()?,
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(config)
}

fn parse_request(line: &str) -> Option<(u64, u32, u32, i64)> {
    let mut parts = line.split_whitespace();
    let request = (
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
    );
    parts.next().is_none().then_some(request)
}

fn run() -> Result<(), String> {
    let config = parse_args()?;
    let engine_config = EngineConfig {
        executor: orrery_engine::SystemsExecutor::SingleThreaded,
        ..EngineConfig::default()
    };
    let (mut engine, report) =
        Engine::open(bank::module(), engine_config, config).map_err(|e| e.to_string())?;
    let handle = engine.durability().ok_or("no durability")?;
    if report.fresh {
        engine.init(Timestamp::now()).map_err(|e| e.to_string())?;
        let out = engine.step(Timestamp::now());
        if !handle.wait_durable(out.seq, Duration::from_secs(60)) {
            return Err("the init tick did not become durable".into());
        }
    }
    {
        let mut out = io::stdout().lock();
        writeln!(out, "ready {}", engine.tick_seq()).map_err(|e| e.to_string())?;
        out.flush().map_err(|e| e.to_string())?;
    }

    let (lines, requests) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    // Replies wait for durability on their own thread, so ticks keep running meanwhile.
    let (replies, pending) = mpsc::channel::<(u64, Vec<(u64, bool)>)>();
    let replier = {
        let handle = handle.clone();
        std::thread::spawn(move || -> Result<(), String> {
            let mut out = io::stdout().lock();
            for (seq, batch) in pending {
                if !handle.wait_durable(seq, Duration::from_secs(60)) {
                    return Err(format!(
                        "tick {seq} never became durable: {:?}",
                        handle.failure()
                    ));
                }
                for (id, ok) in batch {
                    let verdict = if ok { "ok" } else { "err" };
                    writeln!(out, "{id} {verdict}").map_err(|e| e.to_string())?;
                }
                out.flush().map_err(|e| e.to_string())?;
            }
            Ok(())
        })
    };

    let mut open = true;
    while open {
        let mut queued = 0;
        match requests.recv_timeout(TICK) {
            Ok(line) => {
                enqueue(&mut engine, &line);
                queued += 1;
                while queued < MAX_PER_TICK {
                    match requests.try_recv() {
                        Ok(line) => {
                            enqueue(&mut engine, &line);
                            queued += 1;
                        }
                        Err(mpsc::TryRecvError::Empty) => break,
                        Err(mpsc::TryRecvError::Disconnected) => {
                            open = false;
                            break;
                        }
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => open = false,
        }
        let out = engine.step(Timestamp::now());
        if let Some(error) = out.storage_error {
            return Err(error);
        }
        let batch: Vec<(u64, bool)> = out
            .outcomes
            .iter()
            .filter_map(|o| Some((o.request_id?, o.result.is_ok())))
            .collect();
        if !batch.is_empty() && replies.send((out.seq, batch)).is_err() {
            break;
        }
    }
    drop(replies);
    let replied = replier.join().map_err(|_| "replier panicked".to_owned());
    engine.close().map_err(|e| e.to_string())?;
    replied?
}

fn enqueue(engine: &mut Engine, line: &str) {
    match parse_request(line) {
        Some((request_id, from, to, amount)) => engine.enqueue(Input::Call {
            request_id,
            caller: Identity::ZERO.into(),
            reducer: "transfer".into(),
            args: bank::transfer_args(request_id, from, to, amount),
        }),
        None => {
            let _ = writeln!(
                io::stderr(),
                "crash-harness: ignoring malformed line {line:?}"
            );
        }
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let _ = writeln!(io::stderr(), "crash-harness: {error}");
            ExitCode::FAILURE
        }
    }
}
