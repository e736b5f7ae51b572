//! The engine's durability API outside recovery: tick sequences, the durable tick, the handle
//! for network threads, the failed state and clean shutdown.

use orrery_tick::TickTiming;

use super::{DurabilityError, DurabilityHandle};
use crate::changes::ChangeSet;
use crate::engine::{Engine, Input, InputOutcome, TickOutput};
use crate::reducer::ReducerError;
use crate::table::CaptureStats;

impl Engine {
    /// The sequence of the last completed tick (0 before the first). Unlike [`Engine::tick`]
    /// it never wraps, and it survives restarts. Calls made directly between steps
    /// ([`Engine::call_reducer`]) belong to the next tick, `tick_seq() + 1`.
    pub fn tick_seq(&self) -> u64 {
        self.seq
    }

    /// Every tick up to this sequence is durable. An engine without durability
    /// ([`Engine::new`]) has nothing to wait for and reports every completed tick.
    pub fn durable_tick(&self) -> u64 {
        match &self.durability {
            Some(durability) => durability.durable_up_to(),
            None => self.seq,
        }
    }

    /// A handle other threads can poll or wait on, if the engine has durability.
    pub fn durability(&self) -> Option<DurabilityHandle> {
        self.durability.as_ref().map(|d| d.handle())
    }

    /// The storage error that put the engine in the failed state, if any: reducer calls are
    /// refused with [`ReducerError::Storage`] and steps change nothing.
    pub fn storage_failure(&self) -> Option<String> {
        self.durability.as_ref().and_then(|d| d.failure())
    }

    /// Shuts down cleanly: writes and fsyncs every queued tick (whatever the fsync policy),
    /// finishes a snapshot in progress and releases the data directory. Dropping the engine does
    /// the same but cannot report an error.
    pub fn close(mut self) -> Result<(), DurabilityError> {
        match self.durability.take() {
            Some(mut durability) => durability.close().map_err(DurabilityError::Failed),
            None => Ok(()),
        }
    }

    /// A step in the failed state: every queued input is refused, nothing else happens.
    pub(crate) fn refuse_step(&mut self, failure: String) -> TickOutput {
        // Nothing of this tick is logged: neither are its inputs.
        if let Some(recorder) = self.recorder.as_mut() {
            recorder.end_tick();
        }
        let outcomes = std::mem::take(&mut self.queue)
            .into_iter()
            .map(|input| {
                let (request_id, caller) = match input {
                    Input::Call {
                        request_id, caller, ..
                    } => (Some(request_id), caller),
                    Input::Connect { caller } | Input::Disconnect { caller } => (None, caller),
                };
                InputOutcome {
                    request_id,
                    caller,
                    result: Err(ReducerError::Storage(failure.clone())),
                }
            })
            .collect();
        TickOutput {
            tick: self.tick,
            seq: self.seq,
            timestamp: self.timestamp,
            changes: ChangeSet {
                tick: self.tick,
                timestamp: self.timestamp,
                tables: Vec::new(),
            },
            outcomes,
            timing: TickTiming::default(),
            capture: CaptureStats::default(),
            cell_moves: Vec::new(),
            focus: Vec::new(),
            storage_error: Some(failure),
            state_hash: None,
        }
    }
}
