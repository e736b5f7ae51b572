//! [`Engine`]: owns the world and the module, runs reducer calls as transactions and steps the
//! simulation one tick at a time.
//!
//! The engine is sans-IO: it never reads a clock or touches a socket. `step(now)` runs the
//! tick phases that belong to the engine (reducers, scheduled, systems, capture and, for an
//! engine opened with [`Engine::open`], commit to the log) and returns the tick's change set
//! and per-phase timings; the server adds publish and flush.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

use bevy_ecs::change_detection::Tick as EcsTick;
use bevy_ecs::resource::Resource;
use bevy_ecs::schedule::{
    LogLevel, MultiThreadedExecutor, Schedule, ScheduleBuildSettings, SingleThreadedExecutor,
};
use bevy_ecs::world::World;
use orrery_tick::{Phase, PhaseTimer, Tick, TickStats, TickStatsSummary, TickTiming};
use rustc_hash::FxHashMap;

use crate::changes::ChangeSet;
use crate::durability::ConnectionEvent;
use crate::identity::{ConnectionId, Identity};
use crate::module::Module;
use crate::prefetch::{self, Prefetch};
use crate::profiling;
use crate::reducer::{
    Db, FocusUpdates, ReducerArgs, ReducerContext, ReducerDef, ReducerError, ReducerRng,
};
use crate::schema::{ModuleSchema, ReducerKind};
use crate::table::{CaptureStats, CellMove, DueFire, Table, TableId};
use crate::tables::TableSet;
use crate::time::Timestamp;

/// Queued calls per look-ahead batch: enough rows in flight to overlap their memory waits, few
/// enough that they are all still in cache when their calls run.
const LOOK_AHEAD_BATCH: usize = 32;

/// How the systems phase executes the module's schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SystemsExecutor {
    /// One system after another on the tick thread.
    SingleThreaded,
    /// Non-conflicting systems in parallel on bevy's task pool.
    MultiThreaded,
}

/// Engine settings.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Seed for reducer RNGs; the same seed and inputs give the same draws.
    pub seed: u64,
    /// How many ticks the phase statistics window holds.
    pub stats_window: usize,
    /// A tick whose total time exceeds this counts as an overrun in the statistics.
    pub tick_budget: Duration,
    /// The fixed simulation step `dt` that systems integrate with ([`TickInfo::dt`]), and the
    /// spacing of the tick grid ([`Engine::grid_timestamp`]).
    pub tick_interval: Duration,
    /// How systems run.
    pub executor: SystemsExecutor,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            seed: 0x0_4e_e4_7e_11,
            stats_window: 1024,
            tick_budget: Duration::from_millis(50),
            tick_interval: Duration::from_millis(50),
            executor: SystemsExecutor::MultiThreaded,
        }
    }
}

/// Why an engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The module's systems cannot be scheduled (for example an ambiguous order between systems
    /// that write the same data).
    #[error("systems schedule rejected: {0}")]
    Schedule(String),
    /// The data directory could not be opened or recovered (see [`Engine::open`]).
    #[error(transparent)]
    Durability(#[from] crate::durability::DurabilityError),
}

/// Who made a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Caller {
    /// The caller's identity.
    pub identity: Identity,
    /// The caller's connection, if any.
    pub connection_id: Option<ConnectionId>,
}

impl Caller {
    /// The engine itself (init, schedules): the zero identity, no connection.
    pub const MODULE: Caller = Caller {
        identity: Identity::ZERO,
        connection_id: None,
    };

    /// A connected client.
    pub fn client(identity: Identity, connection_id: ConnectionId) -> Self {
        Caller {
            identity,
            connection_id: Some(connection_id),
        }
    }
}

impl From<Identity> for Caller {
    fn from(identity: Identity) -> Self {
        Caller {
            identity,
            connection_id: None,
        }
    }
}

/// Something for the next tick's reducers phase to do, in arrival order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// A reducer call.
    Call {
        /// Echoed in the outcome so the caller can match the reply.
        request_id: u64,
        /// Who called.
        caller: Caller,
        /// Reducer name.
        reducer: String,
        /// Arguments in the Orrery row format.
        args: Vec<u8>,
    },
    /// A client connected: runs `client_connected`.
    Connect {
        /// The client.
        caller: Caller,
    },
    /// A client disconnected: runs `client_disconnected`.
    Disconnect {
        /// The client.
        caller: Caller,
    },
}

/// The result of one [`Input`].
#[derive(Clone, Debug, PartialEq)]
pub struct InputOutcome {
    /// The request id for calls, `None` for connects and disconnects.
    pub request_id: Option<u64>,
    /// Who made the input.
    pub caller: Caller,
    /// Committed, or why not.
    pub result: Result<(), ReducerError>,
}

/// Engine counters since start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineCounters {
    /// Reducer calls made (all kinds).
    pub calls: u64,
    /// Calls that committed.
    pub committed: u64,
    /// Calls that returned an error.
    pub failed: u64,
    /// Calls that panicked.
    pub panicked: u64,
    /// Calls rejected before running (unknown reducer, bad arguments, not callable).
    pub rejected: u64,
    /// Ticks in which a system panicked.
    pub system_panics: u64,
    /// Steps whose timestamp was not after the previous tick's: the engine refused it and ran
    /// the tick one `tick_interval` after the previous one instead.
    pub clock_corrections: u64,
}

/// The tick as systems see it, as a resource.
#[derive(Resource, Clone, Copy, Debug, PartialEq, Eq)]
pub struct TickInfo {
    /// The tick being simulated.
    pub tick: Tick,
    /// Its timestamp: on the tick grid when the caller steps on it (the server does).
    pub timestamp: Timestamp,
    /// The fixed simulation step ([`EngineConfig::tick_interval`]): integrate motion, timers
    /// and cooldowns with this, so the simulation does not depend on when ticks ran.
    pub dt: Duration,
    /// Timestamp distance to the previous tick: `dt`, or a multiple of it after ticks the
    /// overrun policy skipped. `dt` on the first tick of an engine, fresh or recovered (never
    /// the downtime).
    pub delta: Duration,
}

/// A row of a `#[spatial]` table that changed grid cell during a tick (for interest
/// management). A row that moved and was moved back by a rollback appears twice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpatialMove {
    /// The table.
    pub table: TableId,
    /// The spatial column.
    pub column: &'static str,
    /// The row's entity, its cells as `[x, y, z]` (`z = 0` in 2D).
    pub moved: CellMove<[i32; 3]>,
}

/// What one tick produced.
#[derive(Debug)]
pub struct TickOutput {
    /// The tick.
    pub tick: Tick,
    /// The tick's sequence number: like `tick` but a `u64` that never wraps. It is what the
    /// commit log records and what [`crate::DurabilityHandle::wait_durable`] takes: a durable
    /// reply to an outcome of this tick may be sent once `durable_up_to() >= seq`.
    pub seq: u64,
    /// Its timestamp.
    pub timestamp: Timestamp,
    /// Net row changes of the tick (including calls made since the previous step).
    pub changes: ChangeSet,
    /// Outcomes of the queued inputs, in order.
    pub outcomes: Vec<InputOutcome>,
    /// Time spent per phase.
    pub timing: TickTiming,
    /// What capture found after the systems phase.
    pub capture: CaptureStats,
    /// Rows of spatial tables that changed grid cell, in the order they moved.
    pub cell_moves: Vec<SpatialMove>,
    /// Subscription focus changes made by reducers and systems, in order (the last one per
    /// connection wins).
    pub focus: Vec<(ConnectionId, glam::Vec3)>,
    /// Set when the commit log has failed: the step ran nothing, changed nothing, and every
    /// queued input was refused with [`ReducerError::Storage`].
    pub storage_error: Option<String>,
    /// The state hash after the tick, when recording ([`Engine::record_inputs`]).
    pub state_hash: Option<u64>,
}

/// The Orrery engine.
pub struct Engine {
    pub(crate) world: World,
    pub(crate) tables: TableSet,
    reducers: Vec<ReducerDef>,
    reducer_index: FxHashMap<String, usize>,
    /// The callable reducer called last: calls come in runs of the same name, and comparing
    /// the name beats hashing it.
    last_callable: Option<usize>,
    init_reducer: Option<usize>,
    connected_reducer: Option<usize>,
    disconnected_reducer: Option<usize>,
    scheduled_reducer: Vec<Option<usize>>,
    schedule: Schedule,
    /// Per table: whether some system may write its rows in place, so capture must scan the
    /// table's change ticks.
    systems_write: Vec<bool>,
    /// Set by `world_mut`: the caller may have written any row, so the next capture scans all.
    scan_all_once: bool,
    schema: ModuleSchema,
    pub(crate) config: EngineConfig,
    pub(crate) tick: Tick,
    /// The last completed tick's sequence (never wraps; see `TickOutput::seq`).
    pub(crate) seq: u64,
    pub(crate) timestamp: Timestamp,
    pub(crate) previous_timestamp: Option<Timestamp>,
    /// No tick has run in this engine instance yet (after a recovery too).
    pub(crate) first_step: bool,
    /// Connections admitted and not yet gone (durable: logged and snapshotted).
    pub(crate) connections: std::collections::BTreeMap<ConnectionId, Identity>,
    /// This tick's connection events, for the commit log.
    pub(crate) connection_events: Vec<ConnectionEvent>,
    calls_this_tick: u64,
    touched: Vec<usize>,
    pub(crate) queue: VecDeque<Input>,
    /// Scratch of the reducers phase's look-ahead, kept for its capacity.
    looked_ahead: Vec<prefetch::Found>,
    /// The look-ahead's hashed keys (kept to reuse the allocation).
    named_keys: Vec<prefetch::Named>,
    /// Scratch of the look-ahead: the reducer each call of the batch names, looked up once for
    /// the look-ahead and the call.
    resolved: Vec<Option<usize>>,
    stats: TickStats,
    counters: EngineCounters,
    due: Vec<DueFire>,
    /// The commit log and snapshots (`None` for an in-memory engine).
    pub(crate) durability: Option<crate::durability::DurabilityRuntime>,
    /// The input log and state hash, when recording ([`Engine::record_inputs`]).
    pub(crate) recorder: Option<crate::replay::Recorder>,
}

impl Engine {
    /// Builds an engine running `module`. Nothing runs yet: call [`Engine::init`] for a new
    /// database, then [`Engine::step`] once per tick.
    pub fn new(module: Module, config: EngineConfig) -> Result<Engine, EngineError> {
        let mut world = World::new();
        let mut tables = TableSet::default();
        let mut table_schemas = Vec::with_capacity(module.tables.len());
        for registration in module.tables {
            let id = TableId(tables.len() as u32);
            let store = (registration.create)(&mut world, id, registration.schema.clone());
            table_schemas.push(registration.schema.clone());
            tables.push(
                registration.type_id,
                registration.schema.name.clone(),
                store,
                registration.take,
            );
        }
        world.insert_resource(FocusUpdates::default());
        for setup in module.setup {
            setup(&mut world);
        }

        let reducer_index = module
            .reducers
            .iter()
            .enumerate()
            .map(|(i, r)| (r.name().to_owned(), i))
            .collect::<FxHashMap<_, _>>();
        let find_kind =
            |kind: ReducerKind| module.reducers.iter().position(|r| r.schema.kind == kind);
        let scheduled_reducer = table_schemas
            .iter()
            .map(|t| {
                t.scheduled
                    .as_ref()
                    .and_then(|s| reducer_index.get(&s.reducer).copied())
            })
            .collect();
        let schema = ModuleSchema {
            name: module.name.clone(),
            tables: table_schemas,
            reducers: module.reducers.iter().map(|r| r.schema.clone()).collect(),
        };

        let mut schedule = module.schedule;
        match config.executor {
            SystemsExecutor::SingleThreaded => schedule.set_executor(SingleThreadedExecutor::new()),
            SystemsExecutor::MultiThreaded => schedule.set_executor(MultiThreadedExecutor::new()),
        };
        schedule.set_build_settings(ScheduleBuildSettings {
            ambiguity_detection: LogLevel::Error,
            ..Default::default()
        });
        // Systems are initialized with the table stores in the world, as they will run.
        tables.move_into_world(&mut world);
        let initialized = schedule.initialize(&mut world);
        tables.take_from_world(&mut world);
        if let Err(error) = initialized {
            return Err(EngineError::Schedule(
                error.to_string(schedule.graph(), &world),
            ));
        }
        let systems_write = (0..tables.len())
            .map(|index| {
                let Some(component) = tables.erased(index).component_id(&world) else {
                    return false;
                };
                schedule.systems_with_access().is_ok_and(|mut systems| {
                    systems.any(|(_, system)| {
                        let access = system.access();
                        access.is_exclusive() || {
                            let set = access.to_filtered_access_set();
                            let combined = set.combined_access();
                            combined.has_write_all() || combined.has_write(component)
                        }
                    })
                })
            })
            .collect();
        world.clear_trackers();

        let stats = TickStats::with_capacity(config.stats_window, config.tick_budget);
        Ok(Engine {
            world,
            tables,
            init_reducer: find_kind(ReducerKind::Init),
            connected_reducer: find_kind(ReducerKind::ClientConnected),
            disconnected_reducer: find_kind(ReducerKind::ClientDisconnected),
            reducers: module.reducers,
            reducer_index,
            last_callable: None,
            scheduled_reducer,
            schedule,
            systems_write,
            scan_all_once: false,
            schema,
            config,
            tick: Tick::ZERO,
            seq: 0,
            timestamp: Timestamp::UNIX_EPOCH,
            previous_timestamp: None,
            first_step: true,
            connections: std::collections::BTreeMap::new(),
            connection_events: Vec::new(),
            calls_this_tick: 0,
            touched: Vec::new(),
            queue: VecDeque::new(),
            looked_ahead: Vec::new(),
            named_keys: Vec::new(),
            resolved: Vec::new(),
            stats,
            counters: EngineCounters::default(),
            due: Vec::new(),
            durability: None,
            recorder: None,
        })
    }

    /// The module schema.
    pub fn schema(&self) -> &ModuleSchema {
        &self.schema
    }

    /// The last completed tick (`Tick::ZERO` before the first step).
    pub fn tick(&self) -> Tick {
        self.tick
    }

    /// The fixed simulation step ([`EngineConfig::tick_interval`]).
    pub fn tick_interval(&self) -> Duration {
        self.config.tick_interval
    }

    /// The timestamp of the last step (or of `init`).
    pub fn timestamp(&self) -> Timestamp {
        self.timestamp
    }

    /// Counters since start.
    pub fn counters(&self) -> EngineCounters {
        self.counters
    }

    /// Phase timing statistics over the configured window.
    pub fn stats(&self) -> TickStatsSummary {
        self.stats.summary()
    }

    /// The ECS world, for module setup and tests. Writing row components here bypasses the undo
    /// log; such writes are picked up by the next capture like system writes (calling this
    /// makes the next capture scan every table). They are not inputs: while the engine records
    /// its input log, a replay cannot reproduce them (the first call logs a warning).
    pub fn world_mut(&mut self) -> &mut World {
        self.scan_all_once = true;
        if let Some(recorder) = self.recorder.as_mut() {
            recorder.note_unrecorded_access();
        }
        &mut self.world
    }

    /// A module resource, for tools and tests (resources are not rows, so this does not make
    /// capture scan anything).
    ///
    /// # Panics
    /// If the resource does not exist.
    pub fn resource_mut<R: Resource<Mutability = bevy_ecs::component::Mutable>>(
        &mut self,
    ) -> bevy_ecs::change_detection::Mut<'_, R> {
        self.world.resource_mut::<R>()
    }

    /// The ECS world.
    pub fn world(&self) -> &World {
        &self.world
    }

    /// Runs the `init` reducer (for a new database) at `now`.
    pub fn init(&mut self, now: Timestamp) -> Result<(), ReducerError> {
        if let Some(recorder) = self.recorder.as_mut() {
            recorder.init(now);
        }
        self.timestamp = now;
        match self.init_reducer {
            Some(index) => self.run_reducer(index, Caller::MODULE, &[]),
            None => Ok(()),
        }
    }

    /// Runs `client_connected` for `caller` now. An error means the connection should be refused.
    pub fn client_connected(&mut self, caller: Caller) -> Result<(), ReducerError> {
        if let Some(recorder) = self.recorder.as_mut() {
            recorder.lifecycle(true, caller);
        }
        let result = match self.connected_reducer {
            Some(index) => self.run_reducer(index, caller, &[]),
            None => Ok(()),
        };
        // An admitted connection is remembered durably, so that if the process dies with it
        // still open, the next open runs its `client_disconnected`.
        if let (Ok(()), Some(connection)) = (&result, caller.connection_id) {
            self.connections.insert(connection, caller.identity);
            self.connection_events.push(ConnectionEvent {
                connected: true,
                connection,
                identity: caller.identity,
            });
        }
        result
    }

    /// Runs `client_disconnected` for `caller` now. The connection is forgotten whatever the
    /// reducer does: it is gone.
    pub fn client_disconnected(&mut self, caller: Caller) -> Result<(), ReducerError> {
        if let Some(recorder) = self.recorder.as_mut() {
            recorder.lifecycle(false, caller);
        }
        let result = match self.disconnected_reducer {
            Some(index) => self.run_reducer(index, caller, &[]),
            None => Ok(()),
        };
        if let Some(connection) = caller.connection_id
            && self.connections.remove(&connection).is_some()
        {
            self.connection_events.push(ConnectionEvent {
                connected: false,
                connection,
                identity: caller.identity,
            });
        }
        result
    }

    /// Connections admitted by `client_connected` that have not disconnected, as recorded in
    /// the commit log: after [`Engine::open`], those that were open when the previous process
    /// stopped, until [`Engine::disconnect_stale_connections`] ends them.
    pub fn open_connections(&self) -> Vec<Caller> {
        self.connections
            .iter()
            .map(|(&connection, &identity)| Caller::client(identity, connection))
            .collect()
    }

    /// Runs `client_disconnected` for every connection the commit log says is open: after a
    /// crash or a shutdown that did not disconnect everyone, none of them is connected to
    /// this process, and presence rows (`online`) must say so. Call it after
    /// [`Engine::open`] and before admitting any client; the calls belong to the next tick.
    /// Returns how many connections it ended.
    pub fn disconnect_stale_connections(&mut self) -> usize {
        let stale = self.open_connections();
        for caller in &stale {
            if let Err(error) = self.client_disconnected(*caller) {
                tracing::warn!(%error, identity = %caller.identity, "client_disconnected failed for a connection left open by the previous run");
            }
        }
        stale.len()
    }

    /// Calls a reducer now with typed arguments, checked against its parameter types. Its
    /// changes belong to the next tick.
    pub fn call_reducer<A: ReducerArgs>(
        &mut self,
        name: &str,
        caller: impl Into<Caller>,
        args: A,
    ) -> Result<(), ReducerError> {
        let index = self.callable(name)?;
        let expected = &self.reducers[index].schema.params;
        let given = A::type_descs();
        if expected.len() != given.len() || expected.iter().zip(&given).any(|(p, g)| p.ty != *g) {
            self.counters.rejected += 1;
            let list = |types: Vec<String>| types.join(", ");
            return Err(ReducerError::ArgTypes {
                reducer: name.to_owned(),
                expected: list(expected.iter().map(|p| p.ty.display_name()).collect()),
                got: list(given.iter().map(|t| t.display_name()).collect()),
            });
        }
        let mut bytes = Vec::new();
        args.encode_args(&mut bytes);
        let caller = caller.into();
        if let Some(recorder) = self.recorder.as_mut() {
            recorder.call(caller, name, &bytes);
        }
        self.run_reducer(index, caller, &bytes)
    }

    /// Calls a reducer now with arguments in the Orrery row format (as a client sends them).
    /// Bad bytes are an error, never a panic. Its changes belong to the next tick.
    pub fn call_reducer_bytes(
        &mut self,
        name: &str,
        caller: impl Into<Caller>,
        args: &[u8],
    ) -> Result<(), ReducerError> {
        let caller = caller.into();
        if let Some(recorder) = self.recorder.as_mut() {
            recorder.call(caller, name, args);
        }
        let index = self.callable(name)?;
        self.run_reducer(index, caller, args)
    }

    /// [`Engine::call_reducer_bytes`] for a call whose reducer name the look-ahead already
    /// looked up as `index` (one string compare per call instead of two).
    fn call_resolved(
        &mut self,
        index: usize,
        name: &str,
        caller: Caller,
        args: &[u8],
    ) -> Result<(), ReducerError> {
        if self.reducers[index].schema.kind != ReducerKind::User {
            // Refused, and counted, as a call by name is.
            return self.call_reducer_bytes(name, caller, args);
        }
        if let Some(recorder) = self.recorder.as_mut() {
            recorder.call(caller, name, args);
        }
        self.last_callable = Some(index);
        self.run_reducer(index, caller, args)
    }

    /// Queues an input for the next tick's reducers phase.
    pub fn enqueue(&mut self, input: Input) {
        self.queue.push_back(input);
    }

    /// Number of queued inputs.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    fn callable(&mut self, name: &str) -> Result<usize, ReducerError> {
        if let Some(index) = self.last_callable
            && self.reducers[index].name() == name
        {
            return Ok(index);
        }
        let Some(&index) = self.reducer_index.get(name) else {
            self.counters.rejected += 1;
            return Err(ReducerError::UnknownReducer(name.to_owned()));
        };
        let kind = self.reducers[index].schema.kind;
        if kind != ReducerKind::User {
            self.counters.rejected += 1;
            return Err(ReducerError::NotCallable {
                reducer: name.to_owned(),
                kind,
            });
        }
        self.last_callable = Some(index);
        Ok(index)
    }

    fn run_reducer(
        &mut self,
        index: usize,
        caller: Caller,
        args: &[u8],
    ) -> Result<(), ReducerError> {
        if let Some(failure) = self.storage_failure() {
            self.counters.rejected += 1;
            return Err(ReducerError::Storage(failure));
        }
        let invoke = self.reducers[index].invoke;
        let tick = self.tick.next();
        let call_index = self.calls_this_tick;
        self.calls_this_tick += 1;
        self.counters.calls += 1;
        let _zone = profiling::reducer(self.reducers[index].name());
        let (outcome, focus_mark) = {
            let mut ctx = ReducerContext {
                db: Db {
                    world: &mut self.world,
                    tables: &mut self.tables,
                    touched: &mut self.touched,
                },
                sender: caller.identity,
                connection_id: caller.connection_id,
                tick,
                timestamp: self.timestamp,
                rng: ReducerRng::new(self.config.seed, tick, call_index),
                focus_mark: None,
            };
            let outcome = catch_unwind(AssertUnwindSafe(|| invoke(&mut ctx, args)));
            (outcome, ctx.focus_mark)
        };
        let deferred = match outcome {
            Ok(Ok(Ok(()))) => self.commit_unless_deferred_error(),
            _ => None,
        };
        let reducer = || self.reducers[index].name().to_owned();
        let error = match outcome {
            Ok(Ok(Ok(()))) => match deferred {
                None => {
                    self.counters.committed += 1;
                    return Ok(());
                }
                Some(error) => {
                    self.counters.failed += 1;
                    ReducerError::Failed {
                        reducer: reducer(),
                        message: error.to_string(),
                    }
                }
            },
            Ok(Ok(Err(message))) => {
                self.counters.failed += 1;
                ReducerError::Failed {
                    reducer: reducer(),
                    message,
                }
            }
            Ok(Err(error)) => {
                self.counters.rejected += 1;
                ReducerError::BadArgs {
                    reducer: reducer(),
                    error,
                }
            }
            Err(panic) => {
                self.counters.panicked += 1;
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "non-string panic payload".to_owned());
                ReducerError::Panicked {
                    reducer: reducer(),
                    message,
                }
            }
        };
        self.rollback();
        if let Some(mark) = focus_mark {
            self.world
                .resource_mut::<FocusUpdates>()
                .updates
                .truncate(mark);
        }
        profiling::message(profiling::ERROR_COLOR, || format!("reducer error: {error}"));
        Err(error)
    }

    /// Commits the call's writes, unless a dropped row guard left a constraint violation in one
    /// of the tables it touched: that fails the call, and nothing is committed.
    fn commit_unless_deferred_error(&mut self) -> Option<crate::table::TableError> {
        if let [index] = self.touched[..] {
            // One table (most calls): one virtual call checks and commits.
            let error = self
                .tables
                .erased_mut(index)
                .commit_unless_error(&mut self.world, self.timestamp);
            if error.is_none() {
                self.touched.clear();
            }
            return error;
        }
        let error = self.deferred_error();
        if error.is_none() {
            self.commit();
        }
        error
    }

    /// A constraint violation that a dropped row guard left in one of the tables the call
    /// touched: it fails the call.
    fn deferred_error(&mut self) -> Option<crate::table::TableError> {
        let mut found = None;
        for &index in &self.touched {
            if let Some(error) = self.tables.erased_mut(index).take_error() {
                found.get_or_insert(error);
            }
        }
        found
    }

    fn commit(&mut self) {
        for index in self.touched.drain(..) {
            self.tables
                .erased_mut(index)
                .commit(&mut self.world, self.timestamp);
        }
    }

    fn rollback(&mut self) {
        for index in self.touched.drain(..).rev() {
            self.tables.erased_mut(index).rollback(&mut self.world);
        }
    }

    /// Runs one tick at `now`: queued inputs, due schedules, systems, capture. Returns the
    /// tick's net changes, including those of calls made directly since the previous step.
    pub fn step(&mut self, now: Timestamp) -> TickOutput {
        if let Some(failure) = self.storage_failure() {
            return self.refuse_step(failure);
        }
        let tick = self.tick.next();
        let _span = tracing::debug_span!("tick", tick = tick.get()).entered();
        let now = self.monotonic(now);
        self.timestamp = now;
        let mut timer = PhaseTimer::start();
        timer.lap(Phase::Input);

        let zone = profiling::phase(Phase::Reducers);
        if let Some(recorder) = self.recorder.as_mut() {
            recorder.in_step = true;
        }
        let outcomes = self.run_inputs();
        if let Some(recorder) = self.recorder.as_mut() {
            recorder.in_step = false;
        }
        drop(zone);
        timer.lap(Phase::Reducers);

        let zone = profiling::phase(Phase::Scheduled);
        self.run_scheduled(now);
        drop(zone);
        timer.lap(Phase::Scheduled);

        let zone = profiling::phase(Phase::Systems);
        let systems_start = self.run_systems(tick, now);
        drop(zone);
        timer.lap(Phase::Systems);

        let zone = profiling::phase(Phase::Capture);
        let mut capture = CaptureStats::default();
        let scan_all = std::mem::take(&mut self.scan_all_once);
        for index in 0..self.tables.len() {
            let scan = scan_all || self.systems_write[index];
            capture +=
                self.tables
                    .erased_mut(index)
                    .capture(&mut self.world, systems_start, now, scan);
        }
        let mut changes = ChangeSet {
            tick,
            timestamp: now,
            tables: Vec::new(),
        };
        for index in 0..self.tables.len() {
            if let Some(table) = self.tables.erased_mut(index).drain_changes() {
                changes.tables.push(table);
            }
        }
        let mut cell_moves = Vec::new();
        let mut scratch = Vec::new();
        for index in 0..self.tables.len() {
            let store = self.tables.erased_mut(index);
            store.drain_cell_moves(&mut scratch);
            let table = TableId(index as u32);
            cell_moves.extend(scratch.drain(..).map(|(column, moved)| SpatialMove {
                table,
                column,
                moved,
            }));
            store.end_tick(&mut self.world);
        }
        self.world.clear_trackers();
        drop(zone);
        timer.lap(Phase::Capture);

        let seq = self.seq + 1;
        let connection_events = std::mem::take(&mut self.connection_events);
        // The zone is opened without durability too (then empty), so every tick shows every phase.
        let zone = profiling::phase(Phase::Commit);
        let state_hash = self.recorder.as_mut().map(|r| r.hash(&changes));
        if let Some(durability) = self.durability.as_mut() {
            let replay = self
                .recorder
                .as_ref()
                .map(|r| r.section(self.config.seed, self.config.tick_interval));
            durability.commit(
                seq,
                now,
                &changes,
                &connection_events,
                replay.as_ref(),
                &mut self.tables,
            );
            timer.lap(Phase::Commit);
        }
        if let Some(recorder) = self.recorder.as_mut() {
            recorder.end_tick();
        }
        drop(zone);

        let timing = timer.finish();
        self.stats.record(&timing);
        self.tick = tick;
        self.seq = seq;
        self.previous_timestamp = Some(now);
        self.calls_this_tick = 0;
        TickOutput {
            tick,
            seq,
            timestamp: now,
            changes,
            outcomes,
            timing,
            capture,
            cell_moves,
            focus: std::mem::take(&mut self.world.resource_mut::<FocusUpdates>().updates),
            storage_error: None,
            state_hash,
        }
    }

    fn run_inputs(&mut self) -> Vec<InputOutcome> {
        let mut outcomes = Vec::with_capacity(self.queue.len());
        let mut found = std::mem::take(&mut self.looked_ahead);
        let mut named = std::mem::take(&mut self.named_keys);
        let mut resolved = std::mem::take(&mut self.resolved);
        while !self.queue.is_empty() {
            // Each call still runs alone, in order, as its own transaction; the batch only
            // shares the look-ahead that brings the rows its calls name into cache.
            let batch = self.queue.len().min(LOOK_AHEAD_BATCH);
            named.clear();
            resolved.clear();
            self.look_ahead(batch, &mut named, &mut resolved);
            if !named.is_empty() {
                prefetch::look_up(&self.world, &self.tables, &named, &mut found);
            }
            for &reducer in &resolved {
                let Some(input) = self.queue.pop_front() else {
                    break;
                };
                outcomes.push(self.run_input(input, reducer));
            }
        }
        self.looked_ahead = found;
        self.named_keys = named;
        self.resolved = resolved;
        outcomes
    }

    /// Names the rows that the next `batch` queued calls' key arguments key, and the reducer
    /// each input calls (`None` for connects and disconnects and unknown names).
    fn look_ahead(
        &self,
        batch: usize,
        named: &mut Vec<prefetch::Named>,
        resolved: &mut Vec<Option<usize>>,
    ) {
        let mut prefetch = Prefetch::new(&self.tables, named);
        for input in self.queue.range(..batch) {
            let index = match input {
                Input::Call { reducer, .. } => self.reducer_named(reducer),
                _ => None,
            };
            resolved.push(index);
            if let (Some(index), Input::Call { args, .. }) = (index, input)
                && let Some(look) = self.reducers[index].prefetch
            {
                look(&mut prefetch, args);
            }
        }
    }

    /// The reducer called `name`, without counting anything (the call itself does).
    fn reducer_named(&self, name: &str) -> Option<usize> {
        match self.last_callable {
            Some(index) if same_name(self.reducers[index].name(), name) => Some(index),
            _ => self.reducer_index.get(name).copied(),
        }
    }

    /// Runs one queued input; `resolved` is the reducer a call names, if the look-ahead found it.
    fn run_input(&mut self, input: Input, resolved: Option<usize>) -> InputOutcome {
        let _span = tracing::trace_span!("input").entered();
        match input {
            Input::Call {
                request_id,
                caller,
                reducer,
                args,
            } => InputOutcome {
                request_id: Some(request_id),
                caller,
                result: match resolved {
                    Some(index) => self.call_resolved(index, &reducer, caller, &args),
                    None => self.call_reducer_bytes(&reducer, caller, &args),
                },
            },
            Input::Connect { caller } => InputOutcome {
                request_id: None,
                caller,
                result: self.client_connected(caller),
            },
            Input::Disconnect { caller } => InputOutcome {
                request_id: None,
                caller,
                result: self.client_disconnected(caller),
            },
        }
    }

    fn run_scheduled(&mut self, now: Timestamp) {
        let mut due = std::mem::take(&mut self.due);
        due.clear();
        for index in 0..self.tables.len() {
            self.tables
                .erased_mut(index)
                .collect_due(now, index, &mut due);
        }
        // Fire order: due time, then table id, then primary key (the stash is in key order).
        due.sort_unstable();
        for fire in &due {
            let Some(row) =
                self.tables
                    .erased(fire.table)
                    .due_row_bytes(&self.world, fire.ordinal, fire.due)
            else {
                continue;
            };
            if let Some(reducer) = self.scheduled_reducer[fire.table]
                && let Err(error) = self.run_reducer(reducer, Caller::MODULE, &row)
            {
                tracing::warn!(%error, "scheduled reducer failed");
            }
            let store = self.tables.erased_mut(fire.table);
            if store.begin() {
                self.touched.push(fire.table);
            }
            store.after_fire(&mut self.world, fire.ordinal, fire.due, now);
            self.commit();
        }
        self.due = due;
    }

    /// `now`, or, if it is not after the previous tick's timestamp (a clock that stepped
    /// back, a caller's mistake), one `tick_interval` after that: tick timestamps are strictly
    /// increasing, which schedules and replay rely on.
    fn monotonic(&mut self, now: Timestamp) -> Timestamp {
        match self.previous_timestamp {
            Some(previous) if now <= previous => {
                let corrected = previous + self.config.tick_interval.max(Duration::from_micros(1));
                self.counters.clock_corrections += 1;
                tracing::warn!(
                    %now,
                    %previous,
                    %corrected,
                    "step timestamp not after the previous tick's; refused and corrected"
                );
                corrected
            }
            _ => now,
        }
    }

    /// The timestamp for the next tick on the grid of `tick_interval` multiples (since the
    /// Unix epoch): the first grid point at or after `wall` that is after the last tick's
    /// timestamp. A server steps tick `k` at `grid_timestamp(start) + k · dt`, so every tick,
    /// catch-up ticks included, has its own exact grid time, and a restarted server stays on
    /// the same grid (interval schedules keep their phase).
    pub fn grid_timestamp(&self, wall: Timestamp) -> Timestamp {
        let dt = i64::try_from(self.config.tick_interval.as_micros())
            .unwrap_or(i64::MAX)
            .max(1);
        let ceil = |t: i64| {
            t.div_euclid(dt)
                .saturating_add(i64::from(t.rem_euclid(dt) != 0))
        };
        let at_or_after_wall = ceil(wall.as_micros());
        let after_last = match self.previous_timestamp {
            Some(last) => last.as_micros().div_euclid(dt).saturating_add(1),
            None => i64::MIN,
        };
        Timestamp::from_micros(at_or_after_wall.max(after_last).saturating_mul(dt))
    }

    fn run_systems(&mut self, tick: Tick, now: Timestamp) -> EcsTick {
        let dt = self.config.tick_interval;
        let delta = match self.previous_timestamp {
            Some(previous) if !self.first_step => now.saturating_duration_since(previous),
            _ => dt,
        };
        self.first_step = false;
        self.world.insert_resource(TickInfo {
            tick,
            timestamp: now,
            dt,
            delta,
        });
        self.tables.move_into_world(&mut self.world);
        // Reducer writes carry the current change tick; systems run with later ones (each system
        // takes the value *before* incrementing, so bump once first). Capture keeps only writes
        // newer than `systems_start`.
        let systems_start = self.world.increment_change_tick();
        if let Some(check) = self.world.check_change_ticks() {
            self.schedule.check_change_ticks(check);
        }
        let ran = catch_unwind(AssertUnwindSafe(|| self.schedule.run(&mut self.world)));
        if ran.is_err() {
            self.counters.system_panics += 1;
            profiling::message(profiling::ERROR_COLOR, || {
                format!("tick {}: a system panicked", tick.get())
            });
            tracing::error!(
                tick = tick.get(),
                "a system panicked; the rest of the systems phase was skipped"
            );
        }
        self.tables.take_from_world(&mut self.world);
        systems_start
    }

    /// Runs `f` against the tables and then undoes whatever it wrote: a read-only view for tools
    /// and tests.
    pub fn read<R>(&mut self, f: impl FnOnce(&mut Db<'_>) -> R) -> R {
        let result = {
            let mut db = Db {
                world: &mut self.world,
                tables: &mut self.tables,
                touched: &mut self.touched,
            };
            f(&mut db)
        };
        self.rollback();
        result
    }

    /// The row of `T` with primary key `pk`.
    pub fn find<T: Table>(&self, pk: &T::Pk) -> Option<T> {
        let entity = self.tables.store::<T>()?.entity(pk)?;
        self.world.get::<T>(entity).cloned()
    }

    /// The entity holding the row of `T` with primary key `pk`.
    pub fn entity<T: Table>(&self, pk: &T::Pk) -> Option<bevy_ecs::entity::Entity> {
        self.tables.store::<T>()?.entity(pk)
    }

    /// All rows of `T`, ordered by primary key.
    pub fn rows<T: Table>(&self) -> Vec<T> {
        let Some(store) = self.tables.store::<T>() else {
            return Vec::new();
        };
        let mut rows: Vec<T> = store
            .pk
            .values()
            .filter_map(|slot| self.world.get::<T>(slot.entity).cloned())
            .collect();
        rows.sort_by(|a, b| a.pk().cmp(b.pk()));
        rows
    }

    /// Calls `f(primary key, row)` for every row of table `table`, both encoded in the Orrery
    /// row format as change sets carry them (for example to load a subscription publisher's
    /// mirror after recovery). Rows come in storage order; an unknown table calls nothing.
    pub fn for_each_row_bytes(&mut self, table: TableId, mut f: impl FnMut(&[u8], &[u8])) {
        if (table.0 as usize) < self.tables.len() {
            self.tables
                .erased_mut(table.0 as usize)
                .for_each_row_bytes(&self.world, &mut f);
        }
    }

    /// Number of rows of `T`.
    pub fn count<T: Table>(&self) -> usize {
        self.tables.store::<T>().map_or(0, |s| s.len())
    }

    /// Checks that every table's indexes agree exactly with its rows. For tests and tools.
    pub fn check_integrity(&mut self) -> Result<(), String> {
        for index in 0..self.tables.len() {
            self.tables.erased(index).check_integrity(&mut self.world)?;
        }
        Ok(())
    }
}

/// Whether two reducer names are equal. Names of 8 to 16 bytes (most) are compared as two
/// possibly overlapping words, without the `memcmp` call `==` makes: every queued call's name
/// is compared once.
#[inline]
fn same_name(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    match (
        a.first_chunk::<8>(),
        b.first_chunk::<8>(),
        a.last_chunk::<8>(),
        b.last_chunk::<8>(),
    ) {
        (Some(a0), Some(b0), Some(a1), Some(b1)) if a.len() <= 16 => {
            u64::from_ne_bytes(*a0) == u64::from_ne_bytes(*b0)
                && u64::from_ne_bytes(*a1) == u64::from_ne_bytes(*b1)
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::same_name;

    #[test]
    fn reducer_names_compare_like_strings() {
        let names = [
            "",
            "a",
            "transfer",
            "transfeR",
            "transfer2",
            "tran_fer2",
            "a_sixteen_byte_n",
            "a_sixteen_bzte_n",
            "seventeen_bytes_x",
            "seventeen_bytes_y",
        ];
        for a in names {
            for b in names {
                assert_eq!(same_name(a, b), a == b, "{a:?} vs {b:?}");
            }
        }
    }
}
