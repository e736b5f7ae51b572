//! Recovery: [`Engine::open`] locks the data directory, loads the newest valid snapshot,
//! replays the later log records without running reducers, truncates a torn tail, restores the
//! tick counter, timestamp and auto-increment sequences, rebuilds schedule queues and starts the
//! writer and snapshot threads.

use std::fs::{self, OpenOptions, TryLockError};
use std::path::Path;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use orrery_tick::Tick;

use super::fingerprint;
use super::log::{self, AppendAt, LogWriter, WriterConfig};
use super::materializer::{Materialized, Materializer, SnapshotPolicy, TableCopy};
use super::record::{self, SEGMENT_HEADER_LEN, TickRecord};
use super::snapshot::{self, Snapshot};
use super::{DurabilityConfig, DurabilityError, DurabilityRuntime, Shared, is_durable};
use crate::engine::{Engine, EngineConfig, EngineError};
use crate::module::Module;
use crate::table::TableId;
use crate::tables::TableSet;
use crate::time::Timestamp;

/// What [`Engine::open`] found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// The directory held no database: the caller must run [`Engine::init`].
    pub fresh: bool,
    /// The tick sequence of the snapshot recovery started from, if any.
    pub snapshot_tick: Option<u64>,
    /// Log records replayed on top of the snapshot.
    pub replayed_ticks: u64,
    /// Bytes cut off a torn log tail (never acknowledged as durable).
    pub truncated_bytes: u64,
    /// Ticks whose records were (partly) present in the torn tail and dropped.
    pub truncated_ticks: u64,
    /// The tick sequence the engine resumes after ([`Engine::tick_seq`]).
    pub last_tick: u64,
    /// Rows in durable tables after recovery.
    pub rows: u64,
    /// Time spent reading and loading the snapshot.
    pub snapshot_load: Duration,
    /// Time spent reading and replaying the log.
    pub replay: Duration,
    /// Total time spent in [`Engine::open`].
    pub elapsed: Duration,
    /// Connections the log says were open when the previous process stopped: their
    /// `client_disconnected` has not run ([`Engine::disconnect_stale_connections`]).
    pub open_connections: usize,
}

impl Engine {
    /// Opens (or creates) the database in `durability.dir` and recovers it: the newest valid
    /// snapshot, then every later log record, without running any reducer. Run
    /// [`Engine::init`] only when the report says `fresh`.
    ///
    /// A torn or corrupt log tail is truncated with a warning (the report says how many bytes
    /// and ticks were dropped); damage anywhere else is an error naming the segment and byte
    /// offset. See `docs/durability.md`.
    pub fn open(
        module: Module,
        config: EngineConfig,
        durability: DurabilityConfig,
    ) -> Result<(Engine, RecoveryReport), EngineError> {
        let started = Instant::now();
        let mut engine = Engine::new(module, config)?;
        let _span = tracing::info_span!("recovery", dir = %durability.dir.display()).entered();
        let record_inputs = durability.record_inputs;
        let mut report = recover(&mut engine, durability)?;
        if record_inputs {
            engine.record_inputs();
            if let Some(recorder) = engine.recorder.as_mut() {
                // The log marks where a recovered engine took over: replay does what recovery
                // did before this tick's inputs.
                recorder.session_start = !report.fresh;
            }
        }
        report.elapsed = started.elapsed();
        tracing::info!(
            fresh = report.fresh,
            snapshot = ?report.snapshot_tick,
            replayed = report.replayed_ticks,
            rows = report.rows,
            elapsed_ms = report.elapsed.as_millis() as u64,
            "recovered"
        );
        Ok((engine, report))
    }
}

fn recover(
    engine: &mut Engine,
    config: DurabilityConfig,
) -> Result<RecoveryReport, DurabilityError> {
    let dir = config.dir.clone();
    fs::create_dir_all(&dir).map_err(|e| DurabilityError::io("create", &dir, e))?;
    let lock_path = dir.join("LOCK");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| DurabilityError::io("open", &lock_path, e))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => return Err(DurabilityError::Locked(dir)),
        Err(TryLockError::Error(e)) => return Err(DurabilityError::io("lock", &lock_path, e)),
    }
    snapshot::remove_temp_files(&dir)?;

    let durable: Vec<bool> = (0..engine.tables.len())
        .map(|i| is_durable(engine.tables.erased(i).schema()))
        .collect();
    let mut report = RecoveryReport::default();

    let module_schema = engine.schema().clone();
    let check_schema =
        |written: u32, file: &Path| fingerprint::check(&dir, written, &module_schema, file);
    let load_started = Instant::now();
    let mut base = None;
    for (_, path) in snapshot::list_snapshots(&dir)? {
        match Snapshot::read(&path) {
            Ok(snapshot) => {
                check_schema(snapshot.schema, &snapshot.path)?;
                base = Some(snapshot);
                break;
            }
            Err(error @ DurabilityError::Version { .. }) => return Err(error),
            Err(error) => tracing::warn!(%error, "skipping an invalid snapshot"),
        }
    }
    if let Some(snapshot) = &base {
        load_snapshot(engine, snapshot, &durable)?;
        let connections = snapshot
            .connections()
            .map_err(|detail| DurabilityError::Snapshot {
                path: snapshot.path.clone(),
                detail,
            })?;
        engine.connections = connections.into_iter().collect();
    }
    report.snapshot_load = load_started.elapsed();
    let after = base.as_ref().map_or(0, |s| s.seq);

    let replay_started = Instant::now();
    let scan = {
        let tables = &mut engine.tables;
        let world = &mut engine.world;
        let connections = &mut engine.connections;
        log::replay(&dir, after, &check_schema, &mut |record| {
            for event in &record.connections {
                if event.connected {
                    connections.insert(event.connection, event.identity);
                } else {
                    connections.remove(&event.connection);
                }
            }
            apply_record(tables, world, &durable, record)
        })?
    };
    report.replay = replay_started.elapsed();

    let last = scan.last.or(base.as_ref().map(|s| (s.seq, s.micros)));
    report.fresh = last.is_none() && scan.last_seen == 0;
    report.snapshot_tick = base.as_ref().map(|s| s.seq);
    report.replayed_ticks = scan.replayed;
    report.truncated_bytes = scan.truncated_bytes;
    report.truncated_ticks = scan.truncated_ticks;
    let last_seq = after.max(scan.last_seen);
    if let Some((_, micros)) = last {
        restore_position(engine, last_seq, Timestamp::from_micros(micros));
    }
    engine.world.clear_trackers();
    report.last_tick = last_seq;
    report.open_connections = engine.connections.len();
    report.rows = (0..engine.tables.len())
        .filter(|&i| durable[i])
        .map(|i| engine.tables.erased(i).row_count() as u64)
        .sum();

    // The writer continues the last segment if it holds the newest record; otherwise (no log,
    // an empty segment, or a log that ends before the snapshot) it starts a new one.
    // A segment of an older format, or written by another (compatible) schema, is closed:
    // new records go to a new segment whose header names this module's schema.
    let append = match scan.append {
        Some((path, len, version, schema))
            if len > SEGMENT_HEADER_LEN as u64
                && scan.last_seen >= after
                && version == record::FORMAT_VERSION
                && schema == fingerprint::fingerprint(engine.schema()) =>
        {
            AppendAt::Existing { path, len }
        }
        Some((_, len, _, _)) if len > SEGMENT_HEADER_LEN as u64 && scan.last_seen >= after => {
            AppendAt::New
        }
        Some((path, _, _, _)) => {
            remove_unused_segment(&dir, &path, last_seq)?;
            AppendAt::New
        }
        None => AppendAt::New,
    };
    start(engine, config, append, last_seq, after, durable, lock)?;
    Ok(report)
}

/// Removes a segment holding no record that is still needed (a header-only segment, or one
/// that ends before the snapshot), so that the writer can start a fresh one.
fn remove_unused_segment(dir: &Path, path: &Path, last_seq: u64) -> Result<(), DurabilityError> {
    let segments = log::list_segments(dir)?;
    let Some(segment) = segments.iter().find(|s| s.path == path) else {
        return Ok(());
    };
    let len = fs::metadata(path)
        .map_err(|e| DurabilityError::io("stat", path, e))?
        .len();
    if len <= SEGMENT_HEADER_LEN as u64 || segment.first_seq > last_seq {
        fs::remove_file(path).map_err(|e| DurabilityError::io("remove", path, e))?;
        log::sync_dir(dir).map_err(|e| DurabilityError::io("fsync", dir, e))?;
    }
    Ok(())
}

fn start(
    engine: &mut Engine,
    config: DurabilityConfig,
    append: AppendAt,
    last_seq: u64,
    snapshot_seq: u64,
    durable: Vec<bool>,
    lock: fs::File,
) -> Result<(), DurabilityError> {
    let schema = fingerprint::fingerprint(engine.schema());
    fingerprint::save(&config.dir, engine.schema())?;
    let shared = Arc::new(Shared::default());
    shared.set_durable(last_seq);
    shared.set_snapshot(snapshot_seq);
    let (records, receiver) = mpsc::sync_channel(config.queue_ticks.max(1));
    let (recycle, recycled) = mpsc::channel();
    // The materializer starts from the recovered state (a copy of every durable table's rows
    // in stored form) and follows the log from there.
    let (written, materializer_input) = mpsc::channel();
    let mut copies = Vec::new();
    for (index, _) in durable.iter().enumerate().filter(|(_, d)| **d) {
        let store = engine.tables.erased(index);
        let mut copy = TableCopy::new(index as u32, store.schema().name.clone());
        engine.for_each_row_bytes(TableId(index as u32), |pk, row| copy.upsert(pk, row));
        copy.set_sequences(engine.tables.erased(index).sequences());
        copies.push(copy);
    }
    let state = Materialized::new(
        last_seq,
        engine.timestamp.as_micros(),
        copies,
        engine.connections.clone(),
    );
    let materializer = Materializer::spawn(
        config.dir.clone(),
        state,
        materializer_input,
        recycle.clone(),
        Arc::clone(&shared),
        SnapshotPolicy {
            every_ticks: config.snapshot_every_ticks,
            every_log_bytes: config.snapshot_every_log_bytes,
            prune: config.prune,
        },
        schema,
    )?;
    let writer = LogWriter::open(
        WriterConfig {
            dir: config.dir.clone(),
            fsync: config.fsync,
            segment_max_bytes: config.segment_max_bytes,
            fail_after_bytes: config.fail_after_bytes,
            schema,
        },
        append,
        last_seq,
        Arc::clone(&shared),
        recycle,
        Some(written),
    )?;
    let writer = std::thread::Builder::new()
        .name("orrery-commit-log".into())
        .spawn(move || writer.run(receiver))
        .map_err(|e| DurabilityError::io("spawn the log writer for", &config.dir, e))?;
    let logged_sequences = (0..engine.tables.len())
        .map(|i| engine.tables.erased(i).sequences().to_vec())
        .collect();
    engine.durability = Some(DurabilityRuntime {
        shared,
        records: Some(records),
        recycled: std::sync::Mutex::new(recycled),
        writer: Some(writer),
        materializer,
        durable_tables: durable,
        logged_sequences,
        _lock: lock,
    });
    Ok(())
}

/// Puts a loaded engine after tick `seq` at `now`, as recovery leaves it: tick counter,
/// timestamp, and every schedule table's due queue rebuilt from its rows.
pub(crate) fn restore_position(engine: &mut Engine, seq: u64, now: Timestamp) {
    engine.seq = seq;
    engine.tick = Tick::new(seq as u32);
    engine.timestamp = now;
    engine.previous_timestamp = Some(now);
    for index in 0..engine.tables.len() {
        engine
            .tables
            .erased_mut(index)
            .rebuild_schedule(&engine.world, now);
    }
    engine.world.clear_trackers();
}

pub(crate) fn load_snapshot(
    engine: &mut Engine,
    snapshot: &Snapshot,
    durable: &[bool],
) -> Result<(), DurabilityError> {
    let mismatch = |detail: String| DurabilityError::Mismatch {
        path: snapshot.path.clone(),
        seq: snapshot.seq,
        detail,
    };
    let tables = snapshot
        .tables()
        .map_err(|detail| DurabilityError::Snapshot {
            path: snapshot.path.clone(),
            detail,
        })?;
    for table in tables {
        let index = table.id as usize;
        if index >= engine.tables.len() {
            return Err(mismatch(format!(
                "table {} ({}) does not exist in the module",
                table.id, table.name
            )));
        }
        let store = engine.tables.erased_mut(index);
        if store.schema().name != table.name {
            return Err(mismatch(format!(
                "table {} is `{}` in the snapshot but `{}` in the module",
                table.id,
                table.name,
                store.schema().name
            )));
        }
        if !durable[index] {
            tracing::warn!(
                table = table.name,
                "table is no longer durable; its snapshot rows are ignored"
            );
            continue;
        }
        store.restore_sequences(&table.sequences);
        store
            .load_rows(&mut engine.world, table.rows, table.row_bytes)
            .map_err(|e| mismatch(format!("table `{}`: {e}", table.name)))?;
    }
    Ok(())
}

fn apply_record(
    tables: &mut TableSet,
    world: &mut bevy_ecs::world::World,
    durable: &[bool],
    record: &TickRecord<'_>,
) -> Result<(), String> {
    for table in &record.tables {
        let index = table.table as usize;
        if index >= tables.len() || !durable[index] {
            return Err(format!(
                "table id {} is not a durable table of this module",
                table.table
            ));
        }
        let store = tables.erased_mut(index);
        if let Some(sequences) = &table.sequences {
            store.restore_sequences(sequences);
        }
        store
            .apply_changes(world, &table.entries)
            .map_err(|e| format!("table `{}`: {e}", store.schema().name))?;
    }
    Ok(())
}
