//! Reading a recorded data directory (read-only: no lock, no truncation) into a [`Recording`],
//! and [`replay`]: rebuild the world from the snapshot before the first tick to replay, re-run
//! every tick's inputs at its recorded time, check the state hash after each tick, and report
//! the first tick that diverges with the tables and rows whose changes differ.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::changes::ChangeKind;
use crate::codec::RowDecodeError;
use crate::durability::record::{self, Frame, HeaderProblem, SEGMENT_HEADER_LEN};
use crate::durability::snapshot::{self, Snapshot};
use crate::durability::{DurabilityError, is_durable, log, recovery};
use crate::engine::{Engine, EngineConfig, EngineError, Input, TickOutput};
use crate::module::Module;
use crate::table::TableId;
use crate::time::Timestamp;
use crate::value::{Value, row_to_json};

use super::input::{RecordedInput, decode_inputs};

/// Most rows listed per table in a [`Divergence`] (the count says how many differ).
const MAX_ROWS_PER_TABLE: usize = 50;

/// Why a recording could not be read or replayed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// Reading the directory or a snapshot failed.
    #[error(transparent)]
    Durability(#[from] DurabilityError),
    /// A log segment is damaged (other than a torn tail of the last segment).
    #[error("{segment} at byte {offset}: {detail}")]
    Corrupt {
        /// The segment file.
        segment: PathBuf,
        /// Byte offset of the bad record or header.
        offset: u64,
        /// What is wrong.
        detail: String,
    },
    /// No snapshot and log records cover the requested start.
    #[error("cannot start replay at tick {from}: {detail}")]
    NoStart {
        /// The requested first tick.
        from: u64,
        /// What is missing.
        detail: String,
    },
    /// A tick in the range was recorded without its inputs (input log off).
    #[error("tick {0} was recorded without its inputs (the input log was off)")]
    NotRecorded(u64),
    /// The module could not be started.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The recorded data does not fit the module.
    #[error("tick {seq}: {detail}")]
    Mismatch {
        /// The tick.
        seq: u64,
        /// What does not fit.
        detail: String,
    },
}

/// One change of a recorded tick.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedChange {
    /// Insert, update or delete.
    pub kind: ChangeKind,
    /// The primary key, row format.
    pub pk: Vec<u8>,
    /// The row after the tick (inserts and updates), row format.
    pub row: Option<Vec<u8>>,
}

/// A durable table's changes in a recorded tick.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedTable {
    /// The table id.
    pub table: u32,
    /// Its net changes, in the tick's order.
    pub entries: Vec<RecordedChange>,
}

/// The input-log part of a recorded tick.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TickInputs {
    /// The first tick of an engine recovered from the directory (a restart).
    pub session_start: bool,
    /// The engine seed.
    pub seed: u64,
    /// The engine's tick interval (`TickInfo::dt`).
    pub dt: Duration,
    /// The state hash after the tick.
    pub state_hash: u64,
    /// The inputs, in the order they ran.
    pub inputs: Vec<RecordedInput>,
}

/// One tick of a recording.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedTick {
    /// The tick sequence.
    pub seq: u64,
    /// Its timestamp.
    pub timestamp: Timestamp,
    /// Its net changes to durable tables.
    pub changes: Vec<RecordedTable>,
    /// Its inputs, if recorded.
    pub inputs: Option<TickInputs>,
}

/// A recorded data directory, read without taking its lock or changing it.
#[derive(Clone, Debug, Default)]
pub struct Recording {
    /// The snapshots, oldest first: (tick sequence, file).
    pub snapshots: Vec<(u64, PathBuf)>,
    /// The logged ticks, contiguous, oldest first.
    pub ticks: Vec<RecordedTick>,
    /// Bytes of an unreadable tail of the last segment that were not read (a torn write or
    /// a segment being written).
    pub torn_tail_bytes: u64,
}

fn corrupt(segment: &Path, offset: usize, detail: String) -> ReplayError {
    ReplayError::Corrupt {
        segment: segment.to_owned(),
        offset: offset as u64,
        detail,
    }
}

fn owned_tick(record: &record::TickRecord<'_>) -> Result<RecordedTick, RowDecodeError> {
    let changes = record
        .tables
        .iter()
        .map(|t| RecordedTable {
            table: t.table,
            entries: t
                .entries
                .iter()
                .map(|e| RecordedChange {
                    kind: e.kind,
                    pk: e.pk.to_vec(),
                    row: e.row.map(<[u8]>::to_vec),
                })
                .collect(),
        })
        .collect();
    let inputs = match &record.replay {
        Some(section) => Some(TickInputs {
            session_start: section.session_start,
            seed: section.seed,
            dt: Duration::from_micros(section.dt_micros),
            state_hash: section.state_hash,
            inputs: decode_inputs(section.count, section.inputs)?,
        }),
        None => None,
    };
    Ok(RecordedTick {
        seq: record.seq,
        timestamp: Timestamp::from_micros(record.micros),
        changes,
        inputs,
    })
}

impl Recording {
    /// Reads the snapshots list and every log record up to tick `up_to` (all when `None`) of
    /// the data directory `dir` (the engine's, e.g. `<data dir>/db`). Nothing is written and
    /// no lock is taken, so a copy of a live server's directory can be read. An unreadable
    /// tail of the last segment is left out (`torn_tail_bytes`); damage anywhere else is an
    /// error naming the file and byte offset. Any bytes give a recording or an error, never a
    /// panic.
    pub fn read(dir: &Path, up_to: Option<u64>) -> Result<Recording, ReplayError> {
        let mut recording = Recording {
            snapshots: snapshot::list_snapshots(dir)?,
            ..Recording::default()
        };
        recording.snapshots.sort();
        let segments = log::list_segments(dir)?;
        let mut expected: Option<u64> = None;
        'segments: for (i, segment) in segments.iter().enumerate() {
            let is_last = i + 1 == segments.len();
            let data = fs::read(&segment.path)
                .map_err(|e| DurabilityError::io("read", &segment.path, e))?;
            let version = match record::parse_segment_header(&data) {
                Ok(header) if header.first_seq == segment.first_seq => header.version,
                Ok(header) => {
                    return Err(corrupt(
                        &segment.path,
                        0,
                        format!(
                            "header says first tick {}, file name says {}",
                            header.first_seq, segment.first_seq
                        ),
                    ));
                }
                Err(HeaderProblem::Version(version)) => {
                    return Err(DurabilityError::Version {
                        path: segment.path.clone(),
                        version,
                    }
                    .into());
                }
                Err(problem) if is_last => {
                    tracing::warn!(segment = %segment.path.display(), ?problem, "last segment has no valid header; not read");
                    recording.torn_tail_bytes += data.len() as u64;
                    break;
                }
                Err(problem) => {
                    return Err(corrupt(
                        &segment.path,
                        0,
                        format!("segment header is {problem:?}"),
                    ));
                }
            };
            let mut offset = SEGMENT_HEADER_LEN;
            while offset < data.len() {
                let Frame::Valid { seq, payload, len } = record::read_frame(&data[offset..]) else {
                    if is_last {
                        recording.torn_tail_bytes += (data.len() - offset) as u64;
                        break 'segments;
                    }
                    return Err(corrupt(
                        &segment.path,
                        offset,
                        "record fails its length/CRC check in a closed segment".into(),
                    ));
                };
                if let Some(want) = expected
                    && seq != want
                {
                    return Err(corrupt(
                        &segment.path,
                        offset,
                        format!("expected tick {want}, found tick {seq}"),
                    ));
                }
                if up_to.is_some_and(|last| seq > last) {
                    break 'segments;
                }
                let decoded = record::decode_payload(seq, payload, version)
                    .and_then(|r| owned_tick(&r))
                    .map_err(|e| corrupt(&segment.path, offset, format!("tick {seq}: {e}")))?;
                recording.ticks.push(decoded);
                expected = Some(seq + 1);
                offset += len;
            }
        }
        Ok(recording)
    }

    /// The recorded tick `seq`.
    pub fn tick(&self, seq: u64) -> Option<&RecordedTick> {
        let first = self.ticks.first()?.seq;
        let index = usize::try_from(seq.checked_sub(first)?).ok()?;
        self.ticks.get(index)
    }
}

/// What to replay.
#[derive(Clone, Debug, Default)]
pub struct ReplayOptions {
    /// Replay from the snapshot before this tick (`None`: from the oldest possible start, the
    /// beginning of the world if the log still holds tick 1).
    pub from: Option<u64>,
    /// Stop after this tick (`None`: the last logged tick).
    pub to: Option<u64>,
    /// Capture the world after this tick as JSON ([`dump_json`]).
    pub dump: Option<u64>,
    /// The engine configuration (seed and tick interval are taken from the log).
    pub engine: EngineConfig,
}

/// A row whose change differs between the recording and the replay in a divergent tick.
#[derive(Clone, Debug, PartialEq)]
pub struct RowDiff {
    /// The primary key, as JSON.
    pub key: serde_json::Value,
    /// The recorded change (`{"kind": .., "row": ..}`), `null` if the row did not change.
    pub recorded: serde_json::Value,
    /// The replayed change, `null` if the row did not change.
    pub replayed: serde_json::Value,
}

/// A table whose changes differ in a divergent tick.
#[derive(Clone, Debug, PartialEq)]
pub struct TableDiff {
    /// The table name.
    pub table: String,
    /// How many rows differ.
    pub differing: usize,
    /// The first of them (at most 50), in primary key byte order.
    pub rows: Vec<RowDiff>,
}

/// The first tick whose replayed state differs from the recorded one.
#[derive(Clone, Debug, PartialEq)]
pub struct Divergence {
    /// The tick sequence.
    pub seq: u64,
    /// The recorded state hash.
    pub recorded_hash: u64,
    /// The state hash after replaying the tick.
    pub replayed_hash: u64,
    /// The recorded and replayed timestamps, when they differ.
    pub timestamps: Option<(Timestamp, Timestamp)>,
    /// The tables whose changes in this tick differ, and how.
    pub tables: Vec<TableDiff>,
}

/// What a replay did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReplayReport {
    /// The state replay started from: a snapshot's tick, or 0 for an empty world.
    pub base: u64,
    /// The first and last tick replayed (none if the range was empty).
    pub range: Option<(u64, u64)>,
    /// Ticks replayed whose hashes matched.
    pub matched: u64,
    /// Restarts of the recorded server that the replay went through.
    pub restarts: u64,
    /// The first divergent tick, if any (replay stops there).
    pub divergence: Option<Divergence>,
    /// The world after [`ReplayOptions::dump`]'s tick, if it was reached.
    pub dump: Option<serde_json::Value>,
}

fn durable_flags(engine: &Engine) -> Vec<bool> {
    (0..engine.tables.len())
        .map(|i| is_durable(engine.tables.erased(i).schema()))
        .collect()
}

/// An engine holding the state after tick `base` (a snapshot's, or 0: empty), positioned as
/// recovery leaves it, recording.
fn engine_at(
    module: &dyn Fn() -> Module,
    config: &EngineConfig,
    recording: &Recording,
    base: u64,
) -> Result<Engine, ReplayError> {
    let mut engine = Engine::new(module(), config.clone())?;
    if base > 0 {
        let Some((_, path)) = recording.snapshots.iter().find(|(s, _)| *s == base) else {
            return Err(ReplayError::NoStart {
                from: base + 1,
                detail: format!("snapshot {base} is gone"),
            });
        };
        let snapshot = Snapshot::read(path)?;
        let durable = durable_flags(&engine);
        recovery::load_snapshot(&mut engine, &snapshot, &durable)?;
        engine.connections = snapshot
            .connections()
            .map_err(|detail| DurabilityError::Snapshot {
                path: path.clone(),
                detail,
            })?
            .into_iter()
            .collect();
        recovery::restore_position(
            &mut engine,
            snapshot.seq,
            Timestamp::from_micros(snapshot.micros),
        );
    }
    engine.record_inputs();
    Ok(engine)
}

/// What recovery does at a restart, done to the replaying engine: a new engine holding only
/// the durable rows, sequences and open connections, positioned after the last tick (the
/// module's transient tables start empty, systems see `delta == dt` on the next tick).
fn restart(
    module: &dyn Fn() -> Module,
    config: &EngineConfig,
    old: &mut Engine,
) -> Result<Engine, ReplayError> {
    let mut engine = Engine::new(module(), config.clone())?;
    let durable = durable_flags(&engine);
    for (index, _) in durable.iter().enumerate().filter(|(_, d)| **d) {
        let mut rows = Vec::new();
        let mut count = 0u64;
        old.for_each_row_bytes(TableId(index as u32), |_, row| {
            rows.extend_from_slice(&(row.len() as u32).to_le_bytes());
            rows.extend_from_slice(row);
            count += 1;
        });
        let sequences = old.tables.erased(index).sequences().to_vec();
        let store = engine.tables.erased_mut(index);
        store.restore_sequences(&sequences);
        store
            .load_rows(&mut engine.world, count, &rows)
            .map_err(|detail| ReplayError::Mismatch {
                seq: old.seq,
                detail,
            })?;
    }
    engine.connections = old.connections.clone();
    recovery::restore_position(&mut engine, old.seq, old.timestamp);
    engine.record_inputs();
    Ok(engine)
}

fn apply(engine: &mut Engine, input: &RecordedInput) {
    // Outcomes are not compared: what they changed is, through the state hash.
    match input {
        RecordedInput::Init { timestamp } => {
            let _ = engine.init(*timestamp);
        }
        RecordedInput::Call {
            queued: true,
            caller,
            reducer,
            args,
        } => engine.enqueue(Input::Call {
            request_id: 0,
            caller: *caller,
            reducer: reducer.clone(),
            args: args.clone(),
        }),
        RecordedInput::Call {
            queued: false,
            caller,
            reducer,
            args,
        } => {
            let _ = engine.call_reducer_bytes(reducer, *caller, args);
        }
        RecordedInput::Connect {
            queued: true,
            caller,
        } => engine.enqueue(Input::Connect { caller: *caller }),
        RecordedInput::Connect {
            queued: false,
            caller,
        } => {
            let _ = engine.client_connected(*caller);
        }
        RecordedInput::Disconnect {
            queued: true,
            caller,
        } => engine.enqueue(Input::Disconnect { caller: *caller }),
        RecordedInput::Disconnect {
            queued: false,
            caller,
        } => {
            let _ = engine.client_disconnected(*caller);
        }
    }
}

/// Picks the state to start from: the newest snapshot before `from` whose following records
/// are all logged, or the empty world if the log starts at tick 1.
fn choose_base(recording: &Recording, from: Option<u64>) -> Result<u64, ReplayError> {
    let Some(first) = recording.ticks.first().map(|t| t.seq) else {
        return Err(ReplayError::NoStart {
            from: from.unwrap_or(1),
            detail: "the log holds no records".into(),
        });
    };
    let last = recording.ticks.last().map_or(0, |t| t.seq);
    let mut bases: Vec<u64> = recording
        .snapshots
        .iter()
        .map(|(s, _)| *s)
        .filter(|&s| s + 1 >= first && s <= last)
        .collect();
    if first == 1 {
        bases.push(0);
    }
    let chosen = match from {
        Some(from) => bases.into_iter().filter(|&b| b < from).max(),
        None => bases.into_iter().min(),
    };
    chosen.ok_or_else(|| ReplayError::NoStart {
        from: from.unwrap_or(first),
        detail: format!(
            "no snapshot before it is followed by the log (log holds ticks {first}..={last}, \
             snapshots {:?})",
            recording
                .snapshots
                .iter()
                .map(|(s, _)| *s)
                .collect::<Vec<_>>()
        ),
    })
}

/// Replays `recording` with the module `module()` builds (called once per engine: at the
/// start and at every recorded restart). See the module docs and `docs/replay.md`.
pub fn replay(
    module: &dyn Fn() -> Module,
    recording: &Recording,
    options: &ReplayOptions,
) -> Result<ReplayReport, ReplayError> {
    let base = choose_base(recording, options.from)?;
    let last = recording.ticks.last().map_or(0, |t| t.seq);
    let to = options.to.unwrap_or(last).min(last);
    let mut config = options.engine.clone();
    if let Some(inputs) = recording.tick(base + 1).and_then(|t| t.inputs.as_ref()) {
        config.seed = inputs.seed;
        config.tick_interval = inputs.dt;
    }
    let mut engine = engine_at(module, &config, recording, base)?;
    let mut report = ReplayReport {
        base,
        ..ReplayReport::default()
    };
    if base > 0
        && let Some(inputs) = recording.tick(base).and_then(|t| t.inputs.as_ref())
    {
        let loaded = engine.state_hash().unwrap_or_default();
        if loaded != inputs.state_hash {
            report.divergence = Some(Divergence {
                seq: base,
                recorded_hash: inputs.state_hash,
                replayed_hash: loaded,
                timestamps: None,
                tables: Vec::new(),
            });
            return Ok(report);
        }
    }
    if options.dump == Some(base) {
        report.dump = Some(dump_json(&mut engine));
    }
    for seq in base + 1..=to {
        let Some(tick) = recording.tick(seq) else {
            return Err(ReplayError::NoStart {
                from: seq,
                detail: "the log does not hold this tick".into(),
            });
        };
        let Some(inputs) = &tick.inputs else {
            return Err(ReplayError::NotRecorded(seq));
        };
        if inputs.session_start && seq > base + 1 {
            engine = restart(module, &config, &mut engine)?;
            report.restarts += 1;
        }
        engine.config.seed = inputs.seed;
        engine.config.tick_interval = inputs.dt;
        for input in &inputs.inputs {
            apply(&mut engine, input);
        }
        let out = engine.step(tick.timestamp);
        report.range = Some((report.range.map_or(seq, |r| r.0), seq));
        let hash = out.state_hash.unwrap_or_default();
        if hash != inputs.state_hash || out.timestamp != tick.timestamp {
            report.divergence = Some(Divergence {
                seq,
                recorded_hash: inputs.state_hash,
                replayed_hash: hash,
                timestamps: (out.timestamp != tick.timestamp)
                    .then_some((tick.timestamp, out.timestamp)),
                tables: diff(&engine, tick, &out),
            });
            if options.dump == Some(seq) {
                report.dump = Some(dump_json(&mut engine));
            }
            return Ok(report);
        }
        report.matched += 1;
        if options.dump == Some(seq) {
            report.dump = Some(dump_json(&mut engine));
        }
    }
    Ok(report)
}

type ChangeMap = BTreeMap<(u32, Vec<u8>), (ChangeKind, Option<Vec<u8>>)>;

fn diff(engine: &Engine, recorded: &RecordedTick, out: &TickOutput) -> Vec<TableDiff> {
    let durable = durable_flags(engine);
    let mut want = ChangeMap::new();
    for table in &recorded.changes {
        for e in &table.entries {
            want.insert((table.table, e.pk.clone()), (e.kind, e.row.clone()));
        }
    }
    let mut got = ChangeMap::new();
    for table in &out.changes.tables {
        let id = table.table().0;
        if !durable.get(id as usize).copied().unwrap_or(false) {
            continue;
        }
        for c in table.iter() {
            got.insert((id, c.pk.to_vec()), (c.kind, c.row.map(<[u8]>::to_vec)));
        }
    }
    let mut keys: Vec<&(u32, Vec<u8>)> = want.keys().chain(got.keys()).collect();
    keys.sort();
    keys.dedup();
    let mut tables: BTreeMap<u32, TableDiff> = BTreeMap::new();
    for key in keys {
        let (a, b) = (want.get(key), got.get(key));
        if a == b {
            continue;
        }
        let Some(schema) = engine.schema().tables.get(key.0 as usize) else {
            continue;
        };
        let entry = tables.entry(key.0).or_insert_with(|| TableDiff {
            table: schema.name.clone(),
            differing: 0,
            rows: Vec::new(),
        });
        entry.differing += 1;
        if entry.rows.len() < MAX_ROWS_PER_TABLE {
            let change = |c: Option<&(ChangeKind, Option<Vec<u8>>)>| match c {
                None => serde_json::Value::Null,
                Some((kind, row)) => serde_json::json!({
                    "kind": format!("{kind:?}").to_lowercase(),
                    "row": row.as_deref().map(|r| row_json(schema, r)),
                }),
            };
            entry.rows.push(RowDiff {
                key: pk_json(schema, &key.1),
                recorded: change(a),
                replayed: change(b),
            });
        }
    }
    tables.into_values().collect()
}

fn hex(bytes: &[u8]) -> serde_json::Value {
    serde_json::Value::String(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn row_json(schema: &crate::schema::TableSchema, row: &[u8]) -> serde_json::Value {
    row_to_json(schema, row).unwrap_or_else(|_| hex(row))
}

fn pk_json(schema: &crate::schema::TableSchema, pk: &[u8]) -> serde_json::Value {
    let Some(column) = schema.columns.get(schema.primary_key) else {
        return hex(pk);
    };
    let mut input = pk;
    match Value::decode(&column.ty, &mut input) {
        Ok(value) if input.is_empty() => value.to_json(&column.ty),
        _ => hex(pk),
    }
}

/// The world as JSON: `{"tick", "timestamp_micros", "state_hash", "tables": {name: [rows]}}`,
/// every table's rows (transient ones too) in primary key byte order, each an object keyed by
/// column name.
pub fn dump_json(engine: &mut Engine) -> serde_json::Value {
    let schema = engine.schema().clone();
    let mut tables = serde_json::Map::new();
    for table in &schema.tables {
        let mut rows: Vec<(Vec<u8>, serde_json::Value)> = Vec::new();
        engine.for_each_row_bytes(TableId(table.id), |pk, row| {
            rows.push((pk.to_vec(), row_json(table, row)));
        });
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        tables.insert(
            table.name.clone(),
            serde_json::Value::Array(rows.into_iter().map(|(_, r)| r).collect()),
        );
    }
    serde_json::json!({
        "tick": engine.tick_seq(),
        "timestamp_micros": engine.timestamp().as_micros(),
        "state_hash": engine.state_hash().map(|h| format!("{h:016x}")),
        "tables": tables,
    })
}
