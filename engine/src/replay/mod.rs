//! Deterministic replay: the **input log** (what entered the engine each tick, recorded in the
//! tick's commit-log record together with the seed, the tick interval and the state hash), the
//! incrementally maintained **state hash**, and the replayer that rebuilds a recorded world
//! from a snapshot, re-runs its inputs and reports the first tick whose hash differs.
//!
//! See `docs/replay.md` for the format, the guarantees and what a module must avoid.

mod hash;
mod input;
mod run;

use std::time::Duration;

pub use hash::{hash_rows, row_contribution};
pub use input::{MAX_REDUCER_NAME, RecordedInput, decode_inputs};
pub use run::{
    Divergence, RecordedChange, RecordedTable, RecordedTick, Recording, ReplayError, ReplayOptions,
    ReplayReport, RowDiff, TableDiff, TickInputs, dump_json, replay,
};

use crate::changes::ChangeSet;
use crate::durability::is_durable;
use crate::durability::record::ReplayRef;
use crate::engine::{Caller, Engine};
use crate::time::Timestamp;
use hash::StateHasher;

/// The engine side of recording: this tick's encoded inputs and the state hash.
#[derive(Debug)]
pub(crate) struct Recorder {
    hasher: StateHasher,
    inputs: Vec<u8>,
    count: u64,
    /// The next record is the first of an engine recovered from an existing database.
    pub(crate) session_start: bool,
    /// Inputs now come from the queue, inside `step`.
    pub(crate) in_step: bool,
    /// `Engine::world_mut` was called while recording (warned once).
    warned_world_mut: bool,
}

impl Recorder {
    pub(crate) fn init(&mut self, now: Timestamp) {
        input::encode_init(&mut self.inputs, now);
        self.count += 1;
    }

    pub(crate) fn call(&mut self, caller: Caller, reducer: &str, args: &[u8]) {
        input::encode_call(&mut self.inputs, self.in_step, caller, reducer, args);
        self.count += 1;
    }

    pub(crate) fn lifecycle(&mut self, connected: bool, caller: Caller) {
        input::encode_lifecycle(&mut self.inputs, self.in_step, connected, caller);
        self.count += 1;
    }

    /// `Engine::world_mut` hands out the world: whatever is written through it is not an
    /// input, so a replay will not reproduce it.
    pub(crate) fn note_unrecorded_access(&mut self) {
        if !self.warned_world_mut {
            self.warned_world_mut = true;
            tracing::warn!(
                "Engine::world_mut called while recording the input log: writes through it are \
                 not inputs and a replay will not reproduce them"
            );
        }
    }

    /// Folds the tick's changes into the state hash and returns it.
    pub(crate) fn hash(&mut self, changes: &ChangeSet) -> u64 {
        self.hasher.apply(changes);
        self.hasher.value()
    }

    /// The record section of the tick (after [`Recorder::hash`]).
    pub(crate) fn section(&self, seed: u64, dt: Duration) -> ReplayRef<'_> {
        ReplayRef {
            session_start: self.session_start,
            seed,
            dt_micros: u64::try_from(dt.as_micros()).unwrap_or(u64::MAX),
            state_hash: self.hasher.value(),
            count: self.count,
            inputs: &self.inputs,
        }
    }

    /// The tick is committed (or refused): start the next one's inputs.
    pub(crate) fn end_tick(&mut self) {
        self.inputs.clear();
        self.count = 0;
        self.session_start = false;
    }
}

impl Engine {
    /// Which tables the state hash covers: durable, non-event tables (what the commit log
    /// keeps and recovery restores).
    fn hashed_tables(&self) -> Vec<bool> {
        (0..self.tables.len())
            .map(|i| is_durable(self.tables.erased(i).schema()))
            .collect()
    }

    /// Starts recording: from the next input on, every input is encoded for the tick's
    /// commit-log record, and every step maintains the state hash ([`TickOutput::state_hash`],
    /// [`Engine::state_hash`]). Seeding the hash scans the durable tables once; after that no
    /// tick scans anything. [`Engine::open`] calls this when
    /// [`crate::DurabilityConfig::record_inputs`] is set; an in-memory engine may call it to
    /// get hashes. Calling it again re-seeds the hash.
    ///
    /// [`TickOutput::state_hash`]: crate::TickOutput::state_hash
    pub fn record_inputs(&mut self) {
        let hashed = self.hashed_tables();
        let mut hasher = StateHasher::new(&hashed);
        for (index, _) in hashed.iter().enumerate().filter(|(_, h)| **h) {
            self.tables
                .erased_mut(index)
                .for_each_row_bytes(&self.world, &mut |pk, row| {
                    hasher.set(index as u32, pk, Some(row))
                });
        }
        let session_start = self.recorder.as_ref().is_some_and(|r| r.session_start);
        self.recorder = Some(Recorder {
            hasher,
            inputs: Vec::new(),
            count: 0,
            session_start,
            in_step: false,
            warned_world_mut: false,
        });
    }

    /// The state hash as of the last step (and the direct calls since), when recording.
    /// Calls made directly since the last step are folded in at the next step.
    pub fn state_hash(&self) -> Option<u64> {
        self.recorder.as_ref().map(|r| r.hasher.value())
    }

    /// The state hash computed by scanning every durable table: what [`Engine::state_hash`]
    /// maintains incrementally. For verification and tools; costs a pass over all rows.
    pub fn full_state_hash(&mut self) -> u64 {
        let hashed = self.hashed_tables();
        hash::full_state_hash(self, &hashed)
    }
}
