//! # orrery-engine
//!
//! The Orrery engine owns the game world: tables whose rows are bevy_ecs components on
//! entities, with primary, unique, btree and spatial indexes; reducers that run as transactions
//! (undone on error or panic); schedule tables; the module's ECS systems; and the fixed-tick
//! step that runs them and reports each tick's net row changes.
//!
//! It must not depend on sockets, tokio, HTTP or the netcode crate: it is driven by calls
//! (`Engine::call_reducer`, `Engine::step(now)`) and returns change sets and statistics. Time
//! comes in as arguments, never from the system clock.
//!
//! ```
//! use orrery_engine::prelude::*;
//!
//! #[table(name = account, public)]
//! #[derive(Clone, Debug)]
//! pub struct Account {
//!     #[primary_key]
//!     #[auto_inc]
//!     pub id: u64,
//!     pub balance: i64,
//! }
//!
//! #[reducer]
//! pub fn transfer(ctx: &mut ReducerContext, from: u64, to: u64, amount: i64) -> Result<(), String> {
//!     let mut a = ctx.db.account().id().find(&from).ok_or("no such account")?;
//!     let mut b = ctx.db.account().id().find(&to).ok_or("no such account")?;
//!     if a.balance < amount {
//!         return Err("insufficient funds".into());
//!     }
//!     a.balance -= amount;
//!     b.balance += amount;
//!     ctx.db.account().id().update(a)?;
//!     ctx.db.account().id().update(b)?;
//!     Ok(())
//! }
//!
//! #[reducer]
//! pub fn open(ctx: &mut ReducerContext, balance: i64) -> Result<(), String> {
//!     ctx.db.account().insert(Account { id: 0, balance })?;
//!     Ok(())
//! }
//!
//! let module = Module::builder("bank")
//!     .table::<Account>()
//!     .reducers(reducers![transfer, open])
//!     .build()
//!     .unwrap();
//! let mut engine = Engine::new(module, EngineConfig::default()).unwrap();
//! engine.call_reducer("open", Identity::ZERO, (100i64,)).unwrap();
//! engine.call_reducer("open", Identity::ZERO, (0i64,)).unwrap();
//! engine.call_reducer("transfer", Identity::ZERO, (1u64, 2u64, 30i64)).unwrap();
//! let err = engine.call_reducer("transfer", Identity::ZERO, (1u64, 2u64, 500i64)).unwrap_err();
//! assert_eq!(err.client_message(), "insufficient funds");
//! let tick = engine.step(Timestamp::from_micros(50_000));
//! assert_eq!(tick.changes.len(), 2); // two accounts, inserted this tick
//! assert_eq!(engine.find::<Account>(&2).unwrap().balance, 30);
//! ```

pub mod changes;
pub mod durability;
mod engine;
mod module;
mod prefetch;
pub mod profiling;
mod reducer;
pub mod replay;
pub mod table;
mod tables;

/// The data model lives in `orrery-row`; re-exported so modules and the engine's own code name
/// it through one path.
pub use orrery_row::{codec, identity, schema, time, value, wire};

pub use changes::{ChangeKind, ChangeSet, RowChange, RowOp, TableChanges};
pub use codec::{OrreryType, RowDecodeError, TypeDesc};
pub use durability::{
    DurabilityConfig, DurabilityError, DurabilityHandle, FsyncPolicy, RecoveryReport,
};
pub use engine::{
    Caller, Engine, EngineConfig, EngineCounters, EngineError, Input, InputOutcome, SpatialMove,
    SystemsExecutor, TickInfo, TickOutput,
};
pub use identity::{ConnectionId, Identity};
pub use module::{Module, ModuleBuilder, ModuleError, Simulation};
pub use prefetch::{Prefetch, PrefetchFn};
pub use reducer::{
    ArgsError, Db, FocusUpdates, IntoFocus, IntoReducerResult, ReducerArgs, ReducerContext,
    ReducerDef, ReducerError, ReducerRng,
};
pub use table::{
    CellMove, RowMut, SpatialIndex, Table, TableError, TableHandle, TableId, TableStore,
};
pub use time::{ScheduleAt, Timestamp};

pub use orrery_macros::{OrreryType, reducer, reducers, table};
pub use orrery_tick::{Phase, Tick, TickStatsSummary, TickTiming};

/// The README's module example, compiled and run as a doctest so that it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeModuleExample;

/// Re-exported so modules use the engine's exact versions.
pub use bevy_ecs;
pub use glam;
pub use rand;

/// What a module file usually imports.
pub mod prelude {
    pub use crate::{
        Caller, ConnectionId, Db, Engine, EngineConfig, FocusUpdates, Identity, Module, OrreryType,
        ReducerContext, ScheduleAt, Table, TableError, Tick, TickInfo, Timestamp, reducer,
        reducers, table,
    };
    pub use rand::RngExt as _;
}

/// Items used by macro-generated code. Not a stable API.
#[doc(hidden)]
pub mod __private {
    pub use crate::codec::{
        FieldDesc, OrreryType, RowDecodeError, TypeDesc, VariantDesc, read_varint, write_varint,
    };
    pub use crate::reducer::{ArgsError, InvokeFn, decode_arg, finish_args, param};
    pub use crate::schema::{
        ColumnSchema, Durability, IndexKind, IndexSchema, ReducerKind, ScheduleSchema, TableSchema,
        Visibility,
    };
    pub use crate::table::{
        BTreeColumn, BTreeIndex, BTreeIndexColumn, CellMove, PrimaryColumn, RowHook, SpatialColumn,
        SpatialIndex, SpatialIndexColumn, TableIndexes, UniqueColumn, UniqueIndex,
        UniqueIndexColumn, on_row_discarded,
    };
    pub use bevy_ecs::component::{Component, Mutable, StorageType};
    pub use bevy_ecs::entity::Entity;

    use crate::table::{Table, TableError};

    /// An integer column that `#[auto_inc]` can fill.
    pub trait AutoIncValue: Copy + PartialEq {
        /// Whether the value asks for the next sequence value.
        fn is_zero(self) -> bool;
        /// The sequence value as this type, if it fits.
        fn from_seq(seq: u64) -> Option<Self>;
        /// The value as a sequence position, if positive.
        fn to_seq(self) -> Option<u64>;
    }

    macro_rules! auto_inc_ints {
        ($($t:ty),*) => {$(
            impl AutoIncValue for $t {
                fn is_zero(self) -> bool { self == 0 }
                fn from_seq(seq: u64) -> Option<Self> { <$t>::try_from(seq).ok() }
                fn to_seq(self) -> Option<u64> { u64::try_from(self).ok() }
            }
        )*};
    }
    auto_inc_ints!(u8, u16, u32, u64, i8, i16, i32, i64);

    /// Fills or observes one `#[auto_inc]` column.
    pub fn auto_inc<T: Table, V: AutoIncValue>(
        value: &mut V,
        next: &mut u64,
        column: &'static str,
    ) -> Result<(), TableError> {
        if value.is_zero() {
            *value = V::from_seq(*next).ok_or(TableError::SequenceExhausted {
                table: T::NAME,
                column,
            })?;
            *next = next.saturating_add(1);
        } else if let Some(seen) = value.to_seq()
            && seen >= *next
        {
            *next = seen.saturating_add(1);
        }
        Ok(())
    }

    /// Builds the unique-violation error for generated index code.
    pub fn unique_violation<T: Table>(
        column: &'static str,
        key: &dyn std::fmt::Debug,
    ) -> TableError {
        TableError::unique::<T>(column, key)
    }

    /// Builds an index-verification error for generated code.
    pub fn index_mismatch<T: Table>(column: &'static str, key: &dyn std::fmt::Debug) -> String {
        format!(
            "{}.{column}: key {key:?} is not indexed at its row",
            T::NAME
        )
    }
}
