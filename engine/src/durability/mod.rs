//! Durability: the commit log, snapshots and crash recovery of durable tables.
//!
//! This module owns the configuration ([`DurabilityConfig`], [`FsyncPolicy`]), the errors
//! ([`DurabilityError`]), what recovery reports ([`RecoveryReport`]), the handle that network
//! threads use to hold replies until their tick is on disk ([`DurabilityHandle`]) and the
//! engine-side runtime that turns each tick's [`ChangeSet`] into one log record and, every N
//! ticks, into a snapshot. The byte formats live in `record` and `snapshot`, the writer thread
//! and the log reader in `log`, and `Engine::open` in `recovery`. The format and guarantees are
//! documented in `docs/durability.md`.
//!
//! Threads: the tick thread encodes the record (a copy of the change set's bytes) and hands it
//! to the log writer thread through a bounded channel; the writer groups whatever is queued
//! into one write and one fsync (group commit) and publishes the highest durable tick sequence.
//! Snapshots are encoded on the tick thread (they must be consistent) and written, fsynced and
//! renamed by a snapshot thread.

mod engine_ext;
mod fingerprint;
pub(crate) mod log;
mod materializer;
pub(crate) mod record;
pub(crate) mod recovery;
pub(crate) mod snapshot;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::changes::ChangeSet;
use crate::schema::{Durability, TableSchema};
use crate::tables::TableSet;
use crate::time::Timestamp;

pub(crate) use record::ConnectionEvent;
pub use recovery::RecoveryReport;

/// When the log writer calls `fsync` (`fdatasync`) on the active segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// After every group of records written (the default): a tick is durable, and its durable
    /// replies may be sent, once it survives an OS crash or power loss.
    EveryTick,
    /// At most once per interval (and at shutdown). A tick counts as durable only once an fsync
    /// covering it returned, so durable replies wait up to one interval.
    Interval(Duration),
    /// Never (except at clean shutdown and segment rotation). A tick counts as durable as soon
    /// as it is written to the OS: it survives a crash of the process (`kill -9`) but not of the
    /// machine.
    Never,
}

/// Where and how the engine keeps its durable tables.
#[derive(Clone, Debug)]
pub struct DurabilityConfig {
    /// The data directory (created if missing). It holds the log segments, the snapshots and a
    /// lock file; one engine at a time may open it.
    pub dir: PathBuf,
    /// When the log is fsynced.
    pub fsync: FsyncPolicy,
    /// A segment that has reached this size is closed (fsynced) and a new one started.
    pub segment_max_bytes: u64,
    /// Take a snapshot every this many ticks (0: never by ticks).
    pub snapshot_every_ticks: u64,
    /// Take a snapshot once this many bytes of log records were written since the last one
    /// (0: never by bytes), so that replay after a crash stays bounded however busy the
    /// world is.
    pub snapshot_every_log_bytes: u64,
    /// Delete log segments and snapshots that the two newest snapshots make unnecessary.
    pub prune: bool,
    /// How many ticks may wait for the log writer before `Engine::step` blocks (backpressure
    /// instead of unbounded memory when the disk is slower than the tick).
    pub queue_ticks: usize,
    /// Testing aid (fault injection): the log writer behaves as if the disk filled up after
    /// this many bytes written to log segments by this engine (the last write is cut short and
    /// fails with `StorageFull`). `None` in production.
    pub fail_after_bytes: Option<u64>,
    /// Record the input log (every tick's inputs, seed and state hash) in the commit-log
    /// records, for `replay` (`docs/replay.md`). Costs an encode of each input and an
    /// incremental hash of each changed durable row on the tick thread.
    pub record_inputs: bool,
}

impl DurabilityConfig {
    /// The defaults for `dir`: fsync every tick, 64 MiB segments, a snapshot every 6,000 ticks
    /// (5 minutes at 20 Hz) or every 64 MiB of log, whichever comes first, pruning on, 256
    /// ticks of queue, no input log.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        DurabilityConfig {
            dir: dir.into(),
            fsync: FsyncPolicy::EveryTick,
            segment_max_bytes: 64 << 20,
            snapshot_every_ticks: 6_000,
            snapshot_every_log_bytes: 64 << 20,
            prune: true,
            queue_ticks: 256,
            fail_after_bytes: None,
            record_inputs: false,
        }
    }
}

/// What went wrong with the data directory. Every variant names the offending file and, for
/// corruption, the byte offset and tick sequence.
#[derive(Debug, thiserror::Error)]
pub enum DurabilityError {
    /// A log segment or snapshot was written by a module schema whose tables differ from the
    /// module's (other than tables added at the end).
    #[error("{path} was written by a different module schema: tables {tables:?} differ: {detail}")]
    SchemaMismatch {
        /// The segment or snapshot file.
        path: PathBuf,
        /// The tables that differ, each with what changed.
        tables: Vec<String>,
        /// Which schemas, and what to do.
        detail: String,
    },
    /// A file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Another engine holds the directory's lock.
    #[error("data directory {0} is in use by another process")]
    Locked(PathBuf),
    /// A log segment is damaged somewhere other than its tail: recovery stops rather than lose
    /// the records after the damage.
    #[error("commit log corrupt in {segment} at byte {offset}: {detail}")]
    Corrupt {
        /// The segment file.
        segment: PathBuf,
        /// Byte offset of the damaged record (or header) in the segment.
        offset: u64,
        /// What is wrong.
        detail: String,
    },
    /// The log skips ticks that no snapshot covers.
    #[error("commit log has no record of tick {missing} (next found: {found} in {segment})")]
    Gap {
        /// The first missing tick sequence.
        missing: u64,
        /// The next sequence found.
        found: u64,
        /// Where it was found.
        segment: PathBuf,
    },
    /// A file was written by a format version this build cannot read.
    #[error("{path}: format version {version} is not supported")]
    Version {
        /// The file.
        path: PathBuf,
        /// Its version.
        version: u32,
    },
    /// A snapshot is damaged and no older snapshot can replace it.
    #[error("snapshot {path} is invalid: {detail}")]
    Snapshot {
        /// The snapshot file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The commit log failed while the engine ran (reported by [`crate::Engine::close`]).
    #[error("the commit log failed: {0}")]
    Failed(String),
    /// The data does not fit the module (a table's id or name changed, or a row does not
    /// decode).
    #[error("{path}: tick {seq}: {detail}")]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// The tick sequence (the snapshot's, for snapshots).
        seq: u64,
        /// What does not fit.
        detail: String,
    },
}

impl DurabilityError {
    pub(crate) fn io(op: &'static str, path: &Path, source: std::io::Error) -> Self {
        DurabilityError::Io {
            op,
            path: path.to_owned(),
            source,
        }
    }
}

/// Whether a table's rows go to the log and snapshots.
pub(crate) fn is_durable(schema: &TableSchema) -> bool {
    schema.durability == Durability::Durable && !schema.event
}

#[derive(Debug, Default)]
struct SharedState {
    durable: u64,
    failure: Option<String>,
}

/// State shared by the engine, the writer and snapshot threads and every handle.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    state: Mutex<SharedState>,
    changed: Condvar,
    durable: AtomicU64,
    snapshot: AtomicU64,
    materialized_bytes: AtomicU64,
    failed: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, SharedState> {
        // A panicking holder cannot leave the two plain fields inconsistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes that every tick up to `seq` is durable.
    pub(crate) fn set_durable(&self, seq: u64) {
        let mut state = self.lock();
        if seq > state.durable {
            state.durable = seq;
            self.durable.store(seq, Ordering::Release);
            self.changed.notify_all();
        }
    }

    /// Puts the engine in the failed state (the first failure wins).
    pub(crate) fn fail(&self, message: String) {
        let mut state = self.lock();
        if state.failure.is_none() {
            tracing::error!(error = %message, "durability failed; the engine accepts no more writes");
            state.failure = Some(message);
            self.failed.store(true, Ordering::Release);
        }
        self.changed.notify_all();
    }

    pub(crate) fn failure(&self) -> Option<String> {
        self.lock().failure.clone()
    }

    pub(crate) fn set_materialized_bytes(&self, bytes: u64) {
        self.materialized_bytes.store(bytes, Ordering::Release);
    }

    pub(crate) fn set_snapshot(&self, seq: u64) {
        self.snapshot.fetch_max(seq, Ordering::AcqRel);
        let _state = self.lock();
        self.changed.notify_all();
    }

    /// Waits until `seq` is durable; false on timeout or failure.
    pub(crate) fn wait(&self, seq: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        loop {
            if state.durable >= seq {
                return true;
            }
            if state.failure.is_some() {
                return false;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// A cloneable, `Send` view of an engine's durability, for threads that hold replies until the
/// tick that produced them is on disk. Tick sequences are [`crate::TickOutput::seq`].
#[derive(Clone, Debug)]
pub struct DurabilityHandle {
    shared: Arc<Shared>,
}

impl DurabilityHandle {
    /// Every tick with a sequence up to this one is durable (per the fsync policy).
    pub fn durable_up_to(&self) -> u64 {
        self.shared.durable.load(Ordering::Acquire)
    }

    /// Blocks until tick `seq` is durable (true), the log failed (false) or `timeout` passed
    /// (false).
    pub fn wait_durable(&self, seq: u64, timeout: Duration) -> bool {
        self.shared.wait(seq, timeout)
    }

    /// The storage error that stopped the engine, if any. Ticks after
    /// [`DurabilityHandle::durable_up_to`] will never become durable.
    pub fn failure(&self) -> Option<String> {
        self.shared.failure()
    }

    /// The sequence of the newest snapshot written by this engine (0: none yet).
    pub fn last_snapshot(&self) -> u64 {
        self.shared.snapshot.load(Ordering::Acquire)
    }

    /// Memory held by the snapshot materializer's copy of the durable tables (arenas, slot
    /// arrays and indexes), as of the last record it applied: what snapshots cost in memory
    /// over the live state.
    pub fn snapshot_copy_bytes(&self) -> u64 {
        self.shared.materialized_bytes.load(Ordering::Acquire)
    }
}

/// The engine-side part of durability: encodes records on the tick thread and owns the log
/// writer and the snapshot materializer threads.
pub(crate) struct DurabilityRuntime {
    shared: Arc<Shared>,
    records: Option<SyncSender<log::Record>>,
    /// Buffers the writer is done with (a `Mutex` only to keep the engine `Sync`; uncontended).
    recycled: Mutex<Receiver<Vec<u8>>>,
    writer: Option<JoinHandle<()>>,
    materializer: materializer::Materializer,
    durable_tables: Vec<bool>,
    logged_sequences: Vec<Vec<u64>>,
    _lock: std::fs::File,
}

impl DurabilityRuntime {
    /// The handle for other threads.
    pub(crate) fn handle(&self) -> DurabilityHandle {
        DurabilityHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// The failure that stopped the log, if any.
    pub(crate) fn failure(&self) -> Option<String> {
        if self.shared.failed.load(Ordering::Acquire) {
            self.shared.failure()
        } else {
            None
        }
    }

    /// Every tick up to this sequence is durable.
    pub(crate) fn durable_up_to(&self) -> u64 {
        self.shared.durable.load(Ordering::Acquire)
    }

    /// The commit phase of tick `seq`: hands the durable tables' changes (and changed
    /// sequences) to the writer as one record, and takes a snapshot when one is due.
    pub(crate) fn commit(
        &mut self,
        seq: u64,
        now: Timestamp,
        changes: &ChangeSet,
        connection_events: &[ConnectionEvent],
        replay: Option<&record::ReplayRef<'_>>,
        tables: &mut TableSet,
    ) {
        let buf = self
            .recycled
            .get_mut()
            .ok()
            .and_then(|r| r.try_recv().ok())
            .unwrap_or_default();
        let mut record = record::RecordBuilder::new(buf, seq, now.as_micros());
        let mut changed = changes.tables.iter().peekable();
        for index in 0..tables.len() {
            let table_changes = changed
                .next_if(|t| t.table().0 as usize == index)
                .filter(|_| self.durable_tables[index]);
            if !self.durable_tables[index] {
                continue;
            }
            let sequences = tables.erased(index).sequences();
            let sequences_changed = sequences != self.logged_sequences[index].as_slice();
            if table_changes.is_none() && !sequences_changed {
                continue;
            }
            record.table(
                index as u32,
                sequences_changed.then_some(sequences),
                table_changes.map_or(0, |t| t.len()),
            );
            for change in table_changes.into_iter().flat_map(|t| t.iter()) {
                record.entry(change.kind, change.pk, change.row);
            }
            if sequences_changed {
                self.logged_sequences[index] = sequences.to_vec();
            }
        }
        record.connections(connection_events);
        record.replay(replay);
        match record.finish() {
            Ok(frame) => self.send(log::Record { seq, frame }),
            Err(len) => self.shared.fail(format!(
                "tick {seq}: record of {len} bytes exceeds the 4 GiB record limit"
            )),
        }
    }

    fn send(&mut self, record: log::Record) {
        let Some(records) = self.records.as_ref() else {
            return;
        };
        let record = match records.try_send(record) {
            Ok(()) => return,
            Err(TrySendError::Full(record)) => record,
            Err(TrySendError::Disconnected(_)) => {
                self.shared.fail("the commit log writer stopped".to_owned());
                return;
            }
        };
        let _span = tracing::debug_span!("commit_backpressure").entered();
        if records.send(record).is_err() {
            self.shared.fail("the commit log writer stopped".to_owned());
        }
    }

    /// Flushes and fsyncs everything queued, stops the threads and reports the first failure.
    pub(crate) fn close(&mut self) -> Result<(), String> {
        self.records = None;
        if let Some(writer) = self.writer.take()
            && writer.join().is_err()
        {
            self.shared
                .fail("the commit log writer panicked".to_owned());
        }
        // The writer was the materializer's only sender: it stops after the last record.
        self.materializer.close();
        match self.shared.failure() {
            Some(failure) => Err(failure),
            None => Ok(()),
        }
    }
}

impl Drop for DurabilityRuntime {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_engine_and_the_handle_can_cross_threads() {
        fn check<T: Send + Sync>() {}
        check::<crate::Engine>();
        check::<DurabilityHandle>();
    }

    #[test]
    fn waiting_ends_on_durability_failure_or_timeout() {
        let shared = Arc::new(Shared::default());
        let handle = DurabilityHandle {
            shared: Arc::clone(&shared),
        };
        assert!(!handle.wait_durable(1, Duration::from_millis(1)));
        let waiter = {
            let handle = handle.clone();
            std::thread::spawn(move || handle.wait_durable(3, Duration::from_secs(30)))
        };
        shared.set_durable(3);
        assert!(waiter.join().unwrap());
        assert_eq!(handle.durable_up_to(), 3);
        shared.set_durable(2);
        assert_eq!(handle.durable_up_to(), 3, "durability never goes back");
        let waiter = {
            let handle = handle.clone();
            std::thread::spawn(move || handle.wait_durable(4, Duration::from_secs(30)))
        };
        shared.fail("disk full".into());
        assert!(!waiter.join().unwrap());
        assert!(handle.wait_durable(3, Duration::ZERO));
        assert_eq!(handle.failure().as_deref(), Some("disk full"));
    }
}
