//! The `replay` subcommand of a module's server binary: [`ReplayArgs`] (a `clap::Args`) and
//! [`run`], which reads a recorded data directory, replays it with the module, writes a
//! requested dump, and returns a report for the binary to print. Implemented once here so any
//! module binary offers it (`sample-mmo replay DIR ...`); the engine does the work
//! (`orrery_engine::replay`). See `docs/replay.md`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use orrery_engine::replay::{Recording, ReplayError, ReplayOptions, ReplayReport};
use orrery_engine::{EngineConfig, Module, SystemsExecutor};

/// `replay DIR [--from TICK] [--to TICK] [--dump TICK]`.
#[derive(clap::Args, Clone, Debug)]
pub struct ReplayArgs {
    /// The data directory of the recorded server (or its `db/` directory).
    pub dir: PathBuf,
    /// Start from the snapshot before this tick (default: the oldest possible start).
    #[arg(long)]
    pub from: Option<u64>,
    /// Stop after this tick (default: the last logged tick).
    #[arg(long)]
    pub to: Option<u64>,
    /// Write the world after this tick as JSON.
    #[arg(long, value_name = "TICK")]
    pub dump: Option<u64>,
    /// Where `--dump` writes (default: `world-<TICK>.json` in the current directory).
    #[arg(long, value_name = "FILE", requires = "dump")]
    pub dump_file: Option<PathBuf>,
    /// Run the module's systems on one thread.
    #[arg(long)]
    pub single_threaded: bool,
}

/// Why `replay` failed (a divergence is not a failure: it is in the report).
#[derive(Debug, thiserror::Error)]
pub enum ReplayRunError {
    /// Reading or replaying the recording failed.
    #[error(transparent)]
    Replay(#[from] ReplayError),
    /// The dump could not be written.
    #[error("writing the dump to {path}: {source}")]
    Write {
        /// The dump file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// `--dump TICK` was not reached (outside the range, or after the divergence).
    #[error("tick {0} was not reached: nothing dumped")]
    DumpNotReached(u64),
}

/// What [`run`] did.
#[derive(Debug)]
pub struct ReplayOutcome {
    /// The engine's report.
    pub report: ReplayReport,
    /// Where the dump went, if one was asked for.
    pub dump_file: Option<PathBuf>,
    /// Bytes of a torn last-segment tail that were not read.
    pub torn_tail_bytes: u64,
}

impl ReplayOutcome {
    /// Whether every replayed tick matched its recorded hash.
    pub fn matched(&self) -> bool {
        self.report.divergence.is_none()
    }

    /// A human-readable summary: the range, the restarts, and the first divergent tick with
    /// its differing tables and rows.
    pub fn summary(&self) -> String {
        let r = &self.report;
        let mut out = String::new();
        let from = if r.base == 0 {
            "an empty world".to_owned()
        } else {
            format!("the snapshot after tick {}", r.base)
        };
        match r.range {
            Some((first, last)) => {
                let _ = writeln!(
                    out,
                    "replayed ticks {first}..={last} from {from}, {} restart(s); {} tick(s) matched",
                    r.restarts, r.matched
                );
            }
            None => {
                let _ = writeln!(out, "nothing to replay after {from}");
            }
        }
        if self.torn_tail_bytes > 0 {
            let _ = writeln!(
                out,
                "note: {} byte(s) of an unreadable log tail were not read",
                self.torn_tail_bytes
            );
        }
        match &r.divergence {
            None => {
                let _ = writeln!(out, "every tick's state hash matched");
            }
            Some(d) => {
                let _ = writeln!(
                    out,
                    "DIVERGED at tick {}: recorded hash {:016x}, replayed {:016x}",
                    d.seq, d.recorded_hash, d.replayed_hash
                );
                if let Some((recorded, replayed)) = d.timestamps {
                    let _ = writeln!(out, "  timestamp: recorded {recorded}, replayed {replayed}");
                }
                for table in &d.tables {
                    let _ = writeln!(
                        out,
                        "  table {}: {} row(s) differ",
                        table.table, table.differing
                    );
                    for row in &table.rows {
                        let _ = writeln!(
                            out,
                            "    key {}: recorded {}, replayed {}",
                            row.key, row.recorded, row.replayed
                        );
                    }
                }
            }
        }
        if let Some(path) = &self.dump_file {
            let _ = writeln!(out, "dump written to {}", path.display());
        }
        out
    }
}

/// The engine directory inside `dir`: `dir/db` when `dir` is a server's data directory.
fn db_dir(dir: &Path) -> PathBuf {
    let db = dir.join("db");
    if db.is_dir() { db } else { dir.to_owned() }
}

/// Replays the recording in `args.dir` with the module `module()` builds (see the module
/// docs). Pass the module the same settings the recorded server had.
pub fn run(
    args: &ReplayArgs,
    module: &dyn Fn() -> Module,
) -> Result<ReplayOutcome, ReplayRunError> {
    let dir = db_dir(&args.dir);
    let recording = Recording::read(&dir, args.to)?;
    let options = ReplayOptions {
        from: args.from,
        to: args.to,
        dump: args.dump,
        engine: EngineConfig {
            executor: if args.single_threaded {
                SystemsExecutor::SingleThreaded
            } else {
                SystemsExecutor::MultiThreaded
            },
            ..EngineConfig::default()
        },
    };
    let report = orrery_engine::replay::replay(module, &recording, &options)?;
    let dump_file = match (args.dump, &report.dump) {
        (None, _) => None,
        (Some(tick), None) => return Err(ReplayRunError::DumpNotReached(tick)),
        (Some(tick), Some(json)) => {
            let path = args
                .dump_file
                .clone()
                .unwrap_or_else(|| PathBuf::from(format!("world-{tick}.json")));
            let text = serde_json::to_string_pretty(json).unwrap_or_else(|_| json.to_string());
            std::fs::write(&path, text).map_err(|source| ReplayRunError::Write {
                path: path.clone(),
                source,
            })?;
            Some(path)
        }
    };
    Ok(ReplayOutcome {
        report,
        dump_file,
        torn_tail_bytes: recording.torn_tail_bytes,
    })
}
