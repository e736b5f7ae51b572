//! Reducers: transactional functions over the tables. [`ReducerContext`] is what a reducer
//! sees; [`ReducerDef`] is what `#[reducer]` generates so the engine can call a reducer by name
//! with arguments in the Orrery row format.

use std::convert::Infallible;
use std::fmt::{self, Display};

use bevy_ecs::world::World;
use orrery_tick::Tick;
use rand::SeedableRng;
use rand::TryRng;
use rand_chacha::ChaCha8Rng;

use crate::codec::{OrreryType, RowDecodeError, TypeDesc};
use crate::identity::{ConnectionId, Identity};
use crate::prefetch::PrefetchFn;
use crate::schema::{ParamSchema, ReducerKind, ReducerSchema};
use crate::table::{Table, TableHandle};
use crate::tables::TableSet;
use crate::time::Timestamp;

/// The database as a reducer sees it. `#[table]` adds one accessor per table
/// (`ctx.db.account()`), through a trait named after the table.
pub struct Db<'a> {
    pub(crate) world: &'a mut World,
    pub(crate) tables: &'a mut TableSet,
    pub(crate) touched: &'a mut Vec<usize>,
}

impl<'a> Db<'a> {
    /// Opens table `T` in the running transaction.
    ///
    /// # Panics
    /// If `T` is not registered in the module; inside a reducer this becomes that reducer's error.
    // Always inlined: reducers open a table per statement, and the open is a type-id compare,
    // one virtual call and two flag checks, less than the call around it.
    #[inline(always)]
    pub fn table<T: Table>(&mut self) -> TableHandle<'_, T> {
        let (index, store) = self.tables.store_mut::<T>();
        if store.begin() {
            self.touched.push(index);
        }
        store.refresh_rows_query(self.world);
        TableHandle {
            world: self.world,
            store,
        }
    }
}

/// Deterministic per-call randomness: seeded from the engine seed, the tick and the call's
/// position in the tick, so replaying the same inputs draws the same numbers. Seeded lazily so
/// reducers that never draw pay nothing. Use it through `rand::RngExt`
/// (`ctx.rng.random_range(0..10)`).
pub struct ReducerRng {
    /// Engine seed, tick and call index, mixed into the seed only when the call first draws.
    engine_seed: u64,
    tick: Tick,
    call_index: u64,
    rng: Option<ChaCha8Rng>,
}

impl ReducerRng {
    pub(crate) fn new(engine_seed: u64, tick: Tick, call_index: u64) -> Self {
        ReducerRng {
            engine_seed,
            tick,
            call_index,
            rng: None,
        }
    }

    fn rng(&mut self) -> &mut ChaCha8Rng {
        let seed = call_seed(self.engine_seed, self.tick, self.call_index);
        self.rng
            .get_or_insert_with(|| ChaCha8Rng::seed_from_u64(seed))
    }
}

impl TryRng for ReducerRng {
    type Error = Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        self.rng().try_next_u32()
    }
    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        self.rng().try_next_u64()
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        self.rng().try_fill_bytes(dst)
    }
}

/// What a reducer sees.
pub struct ReducerContext<'a> {
    /// The tables.
    pub db: Db<'a>,
    /// Who called: the client's identity, or [`Identity::ZERO`] for init and schedules.
    pub sender: Identity,
    /// The caller's connection, if the call came from one.
    pub connection_id: Option<ConnectionId>,
    /// The tick this call belongs to.
    pub tick: Tick,
    /// The tick's timestamp.
    pub timestamp: Timestamp,
    /// Deterministic randomness for this call.
    pub rng: ReducerRng,
    /// How many focus updates there were before this call's first `set_focus`, to drop this
    /// call's on rollback; `None` while it has set none (most calls, which then never look the
    /// resource up).
    pub(crate) focus_mark: Option<usize>,
}

impl ReducerContext<'_> {
    /// Sets where `connection` is looking from: the `:focus` of its spatial subscriptions
    /// (usually its player's position). Undone if the reducer fails.
    pub fn set_focus(&mut self, connection: ConnectionId, point: impl IntoFocus) {
        let mut updates = self.db.world.resource_mut::<FocusUpdates>();
        self.focus_mark.get_or_insert(updates.updates.len());
        updates.set(connection, point);
    }

    /// A module setting: a resource the module was built with (`ModuleBuilder::resource`),
    /// read-only. Reducers write state only through tables, whose writes roll back; settings
    /// are fixed inputs like the module's code (world size, admin identities), so a replay
    /// with the same module sees the same values. `None` if the module has no such resource.
    pub fn setting<R: bevy_ecs::resource::Resource>(&self) -> Option<&R> {
        self.db.world.get_resource::<R>()
    }
}

/// A point usable as a subscription focus: `Vec2` (as `z = 0`) or `Vec3`.
pub trait IntoFocus {
    /// The point in 3D.
    fn into_focus(self) -> glam::Vec3;
}

impl IntoFocus for glam::Vec3 {
    fn into_focus(self) -> glam::Vec3 {
        self
    }
}

impl IntoFocus for glam::Vec2 {
    fn into_focus(self) -> glam::Vec3 {
        self.extend(0.0)
    }
}

/// Focus changes made this tick by reducers (`ctx.set_focus`) and systems
/// (`ResMut<FocusUpdates>`); the engine hands them out with the tick's output.
#[derive(bevy_ecs::resource::Resource, Default, Debug)]
pub struct FocusUpdates {
    pub(crate) updates: Vec<(ConnectionId, glam::Vec3)>,
}

impl FocusUpdates {
    /// Sets `connection`'s focus. Non-finite points are ignored.
    pub fn set(&mut self, connection: ConnectionId, point: impl IntoFocus) {
        let point = point.into_focus();
        if point.is_finite() {
            self.updates.push((connection, point));
        }
    }
}

/// Converts what a reducer returns into the engine's outcome: `()` is success, `Err(e)` fails
/// the transaction with `e`'s message.
pub trait IntoReducerResult {
    /// The outcome.
    fn into_reducer_result(self) -> Result<(), String>;
}

impl IntoReducerResult for () {
    fn into_reducer_result(self) -> Result<(), String> {
        Ok(())
    }
}

impl<E: Display> IntoReducerResult for Result<(), E> {
    fn into_reducer_result(self) -> Result<(), String> {
        self.map_err(|e| e.to_string())
    }
}

/// A reducer argument payload that did not decode.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ArgsError {
    /// One argument did not decode.
    #[error("argument {index} `{name}` ({ty}): {error}")]
    Arg {
        /// Zero-based position.
        index: usize,
        /// Parameter name.
        name: &'static str,
        /// Parameter type.
        ty: String,
        /// Why.
        error: RowDecodeError,
    },
    /// Bytes were left after the last argument.
    #[error("{extra} trailing byte(s) after the {expected} expected argument(s)")]
    Trailing {
        /// Number of parameters.
        expected: usize,
        /// Bytes left over.
        extra: usize,
    },
}

/// The signature of generated reducer entry points: decode arguments, run, report.
pub type InvokeFn = fn(&mut ReducerContext<'_>, &[u8]) -> Result<Result<(), String>, ArgsError>;

/// A registered reducer: name, kind, parameters and entry point.
#[derive(Clone)]
pub struct ReducerDef {
    pub(crate) schema: ReducerSchema,
    pub(crate) invoke: InvokeFn,
    /// Names the rows a call's `#[key(Row)]` arguments key, for batched look-ahead.
    pub(crate) prefetch: Option<PrefetchFn>,
}

impl fmt::Debug for ReducerDef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReducerDef")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

impl ReducerDef {
    /// Builds a definition; called by `#[reducer]`-generated code.
    pub fn new(name: &str, kind: ReducerKind, params: Vec<ParamSchema>, invoke: InvokeFn) -> Self {
        ReducerDef {
            schema: ReducerSchema {
                name: name.to_owned(),
                kind,
                params,
            },
            invoke,
            prefetch: None,
        }
    }

    /// Adds the look-ahead of the reducer's `#[key(Row)]` arguments; called by
    /// `#[reducer]`-generated code.
    pub fn with_prefetch(mut self, prefetch: PrefetchFn) -> Self {
        self.prefetch = Some(prefetch);
        self
    }

    /// The reducer's name.
    pub fn name(&self) -> &str {
        &self.schema.name
    }

    /// The reducer's schema.
    pub fn schema(&self) -> &ReducerSchema {
        &self.schema
    }
}

/// Why a reducer call did not commit.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReducerError {
    /// No reducer has this name.
    #[error("no reducer named {0:?}")]
    UnknownReducer(String),
    /// The reducer exists but clients may not call it (lifecycle and scheduled reducers).
    #[error("reducer {reducer:?} is a {kind:?} reducer and cannot be called directly")]
    NotCallable {
        /// Reducer name.
        reducer: String,
        /// Its kind.
        kind: ReducerKind,
    },
    /// The arguments did not decode.
    #[error("bad arguments for reducer {reducer:?}: {error}")]
    BadArgs {
        /// Reducer name.
        reducer: String,
        /// What was wrong.
        error: ArgsError,
    },
    /// Typed arguments whose types do not match the reducer's parameters.
    #[error("reducer {reducer:?} takes ({expected}), got ({got})")]
    ArgTypes {
        /// Reducer name.
        reducer: String,
        /// The parameter types.
        expected: String,
        /// The argument types given.
        got: String,
    },
    /// The reducer returned an error; its writes were rolled back.
    #[error("reducer {reducer:?} failed: {message}")]
    Failed {
        /// Reducer name.
        reducer: String,
        /// The reducer's error message.
        message: String,
    },
    /// The reducer panicked; its writes were rolled back.
    #[error("reducer {reducer:?} panicked: {message}")]
    Panicked {
        /// Reducer name.
        reducer: String,
        /// The panic message.
        message: String,
    },
    /// The commit log failed (for example the disk is full): the engine accepts no more writes
    /// and the call did not run.
    #[error("storage failure, the engine accepts no writes: {0}")]
    Storage(String),
}

impl ReducerError {
    /// The message a client should see.
    pub fn client_message(&self) -> String {
        match self {
            ReducerError::Failed { message, .. } => message.clone(),
            other => other.to_string(),
        }
    }
}

/// A typed argument list for `Engine::call_reducer`: a tuple of [`OrreryType`]s.
pub trait ReducerArgs {
    /// The argument types.
    fn type_descs() -> Vec<TypeDesc>;
    /// Encodes the arguments back to back.
    fn encode_args(&self, out: &mut Vec<u8>);
}

macro_rules! impl_reducer_args {
    ($($name:ident),*) => {
        impl<$($name: OrreryType),*> ReducerArgs for ($($name,)*) {
            fn type_descs() -> Vec<TypeDesc> {
                vec![$($name::type_desc()),*]
            }
            #[allow(non_snake_case, unused_variables)]
            fn encode_args(&self, out: &mut Vec<u8>) {
                let ($($name,)*) = self;
                $($name.encode(out);)*
            }
        }
    };
}
impl_reducer_args!();
impl_reducer_args!(A);
impl_reducer_args!(A, B);
impl_reducer_args!(A, B, C);
impl_reducer_args!(A, B, C, D);
impl_reducer_args!(A, B, C, D, E);
impl_reducer_args!(A, B, C, D, E, F);
impl_reducer_args!(A, B, C, D, E, F, G);
impl_reducer_args!(A, B, C, D, E, F, G, H);
impl_reducer_args!(A, B, C, D, E, F, G, H, I);
impl_reducer_args!(A, B, C, D, E, F, G, H, I, J);
impl_reducer_args!(A, B, C, D, E, F, G, H, I, J, K);
impl_reducer_args!(A, B, C, D, E, F, G, H, I, J, K, L);

/// Decodes argument `index`; used by `#[reducer]`-generated code.
// Always inlined, with the error built out of line: the call and the large `Result` it returns
// cost more than decoding a small argument.
#[inline(always)]
pub fn decode_arg<T: OrreryType>(
    input: &mut &[u8],
    index: usize,
    name: &'static str,
) -> Result<T, ArgsError> {
    match T::decode(input) {
        Ok(value) => Ok(value),
        Err(error) => Err(arg_error::<T>(index, name, error)),
    }
}

#[cold]
#[inline(never)]
fn arg_error<T: OrreryType>(index: usize, name: &'static str, error: RowDecodeError) -> ArgsError {
    ArgsError::Arg {
        index,
        name,
        ty: T::type_desc().display_name(),
        error,
    }
}

/// Checks that no bytes follow the last argument; used by `#[reducer]`-generated code.
pub fn finish_args(input: &[u8], expected: usize) -> Result<(), ArgsError> {
    if input.is_empty() {
        Ok(())
    } else {
        Err(ArgsError::Trailing {
            expected,
            extra: input.len(),
        })
    }
}

/// A parameter's schema; used by `#[reducer]`-generated code.
pub fn param<T: OrreryType>(name: &str) -> ParamSchema {
    ParamSchema {
        name: name.to_owned(),
        ty: T::type_desc(),
    }
}

/// Mixes the engine seed, tick and call index into one well-spread RNG seed (SplitMix64).
pub(crate) fn call_seed(engine_seed: u64, tick: Tick, call_index: u64) -> u64 {
    let mut z = engine_seed
        ^ (u64::from(tick.get())).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ call_index.wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
