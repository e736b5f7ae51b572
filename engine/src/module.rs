//! [`Module`]: a game's tables, reducers, systems and resources, assembled with
//! [`ModuleBuilder`] and validated before an engine runs it.

use std::any::TypeId;

use bevy_ecs::resource::Resource;
use bevy_ecs::schedule::{IntoScheduleConfigs, Schedule, ScheduleLabel};
use bevy_ecs::system::ScheduleSystem;
use bevy_ecs::world::World;

use crate::codec::TypeDesc;
use crate::reducer::ReducerDef;
use crate::schema::{ReducerKind, TableSchema, Visibility};
use crate::table::{ErasedStore, Table, TableId, TableStore, take_store_from_world};

/// The label of the schedule that holds a module's systems (the tick's systems phase).
#[derive(ScheduleLabel, Debug, Clone, PartialEq, Eq, Hash)]
pub struct Simulation;

pub(crate) struct TableRegistration {
    pub(crate) type_id: TypeId,
    pub(crate) schema: TableSchema,
    pub(crate) create: fn(&mut World, TableId, TableSchema) -> Box<dyn ErasedStore>,
    pub(crate) take: fn(&mut World) -> Option<Box<dyn ErasedStore>>,
}

fn create_store<T: Table>(
    world: &mut World,
    id: TableId,
    schema: TableSchema,
) -> Box<dyn ErasedStore> {
    Box::new(TableStore::<T>::new(world, id, schema))
}

type Setup = Box<dyn FnOnce(&mut World) + Send>;

/// A validated game module.
pub struct Module {
    pub(crate) name: String,
    pub(crate) tables: Vec<TableRegistration>,
    pub(crate) reducers: Vec<ReducerDef>,
    pub(crate) schedule: Schedule,
    pub(crate) setup: Vec<Setup>,
}

impl Module {
    /// Starts a module definition.
    pub fn builder(name: impl Into<String>) -> ModuleBuilder {
        ModuleBuilder {
            name: name.into(),
            tables: Vec::new(),
            reducers: Vec::new(),
            schedule: Schedule::new(Simulation),
            setup: Vec::new(),
        }
    }

    /// The module name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Why a module definition is invalid.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModuleError {
    /// Two tables share a name or a row type.
    #[error("table {0:?} is registered twice")]
    DuplicateTable(String),
    /// Two reducers share a name.
    #[error("reducer {0:?} is registered twice")]
    DuplicateReducer(String),
    /// More than one reducer of a lifecycle kind.
    #[error("more than one {kind:?} reducer: {first:?} and {second:?}")]
    DuplicateLifecycle {
        /// The lifecycle kind.
        kind: ReducerKind,
        /// The first one registered.
        first: String,
        /// The second one.
        second: String,
    },
    /// A schedule table names a reducer that is not registered.
    #[error("schedule table {table:?} fires reducer {reducer:?}, which is not registered")]
    MissingScheduledReducer {
        /// The schedule table.
        table: String,
        /// The reducer it names.
        reducer: String,
    },
    /// A scheduled reducer's parameters are not exactly the schedule row.
    #[error(
        "reducer {reducer:?} is fired by table {table:?} and must take exactly one `{row}` argument"
    )]
    ScheduledReducerSignature {
        /// The schedule table.
        table: String,
        /// The reducer.
        reducer: String,
        /// The row type expected.
        row: String,
    },
    /// A reducer is fired by two schedule tables.
    #[error("reducer {reducer:?} is fired by both {first:?} and {second:?}")]
    ScheduledTwice {
        /// The reducer.
        reducer: String,
        /// One table.
        first: String,
        /// The other.
        second: String,
    },
    /// `owner = col` names a missing column or one that is not an `Identity`.
    #[error("table {table:?}: owner column {column:?} {problem}")]
    OwnerColumn {
        /// The table.
        table: String,
        /// The column named.
        column: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// A lifecycle reducer with parameters.
    #[error("{kind:?} reducer {reducer:?} must take no arguments besides the context")]
    LifecycleParams {
        /// The reducer.
        reducer: String,
        /// Its kind.
        kind: ReducerKind,
    },
}

/// Assembles a [`Module`].
pub struct ModuleBuilder {
    name: String,
    tables: Vec<TableRegistration>,
    reducers: Vec<ReducerDef>,
    schedule: Schedule,
    setup: Vec<Setup>,
}

impl ModuleBuilder {
    /// Registers table `T`. Table ids follow registration order.
    pub fn table<T: Table>(mut self) -> Self {
        self.tables.push(TableRegistration {
            type_id: TypeId::of::<T>(),
            schema: T::schema(),
            create: create_store::<T>,
            take: take_store_from_world::<T>,
        });
        self
    }

    /// Registers a reducer (see the `reducers!` macro).
    pub fn reducer(mut self, def: ReducerDef) -> Self {
        self.reducers.push(def);
        self
    }

    /// Registers several reducers: `.reducers(reducers![transfer, deposit])`.
    pub fn reducers(mut self, defs: impl IntoIterator<Item = ReducerDef>) -> Self {
        self.reducers.extend(defs);
        self
    }

    /// Adds bevy_ecs systems to the tick's systems phase. Systems that touch the same data must
    /// be ordered explicitly (`.chain()`, `.before()`): ambiguous orderings are rejected when the
    /// engine starts, because they would make the simulation nondeterministic.
    pub fn add_systems<M>(mut self, systems: impl IntoScheduleConfigs<ScheduleSystem, M>) -> Self {
        self.schedule.add_systems(systems);
        self
    }

    /// Inserts a resource into the world when the engine starts.
    pub fn resource<R: Resource>(mut self, resource: R) -> Self {
        self.setup.push(Box::new(move |world: &mut World| {
            world.insert_resource(resource);
        }));
        self
    }

    /// Validates the definition.
    pub fn build(mut self) -> Result<Module, ModuleError> {
        for (i, table) in self.tables.iter_mut().enumerate() {
            table.schema.id = i as u32;
        }
        for (i, table) in self.tables.iter().enumerate() {
            if self.tables[..i]
                .iter()
                .any(|t| t.schema.name == table.schema.name || t.type_id == table.type_id)
            {
                return Err(ModuleError::DuplicateTable(table.schema.name.clone()));
            }
            if let Visibility::Owner { column } = &table.schema.visibility {
                match table.schema.column(column) {
                    None => {
                        return Err(ModuleError::OwnerColumn {
                            table: table.schema.name.clone(),
                            column: column.clone(),
                            problem: "does not exist",
                        });
                    }
                    Some((_, c)) if c.ty != TypeDesc::Identity => {
                        return Err(ModuleError::OwnerColumn {
                            table: table.schema.name.clone(),
                            column: column.clone(),
                            problem: "is not an Identity",
                        });
                    }
                    Some(_) => {}
                }
            }
        }
        for (i, reducer) in self.reducers.iter().enumerate() {
            if self.reducers[..i]
                .iter()
                .any(|r| r.name() == reducer.name())
            {
                return Err(ModuleError::DuplicateReducer(reducer.name().to_owned()));
            }
            let kind = reducer.schema.kind;
            if kind != ReducerKind::User && kind != ReducerKind::Scheduled {
                if !reducer.schema.params.is_empty() {
                    return Err(ModuleError::LifecycleParams {
                        reducer: reducer.name().to_owned(),
                        kind,
                    });
                }
                if let Some(first) = self.reducers[..i].iter().find(|r| r.schema.kind == kind) {
                    return Err(ModuleError::DuplicateLifecycle {
                        kind,
                        first: first.name().to_owned(),
                        second: reducer.name().to_owned(),
                    });
                }
            }
        }
        let mut fired_by: Vec<(String, String)> = Vec::new();
        for table in &self.tables {
            let Some(scheduled) = &table.schema.scheduled else {
                continue;
            };
            let Some(reducer) = self
                .reducers
                .iter_mut()
                .find(|r| r.schema.name == scheduled.reducer)
            else {
                return Err(ModuleError::MissingScheduledReducer {
                    table: table.schema.name.clone(),
                    reducer: scheduled.reducer.clone(),
                });
            };
            let takes_row = matches!(
                reducer.schema.params.as_slice(),
                [p] if matches!(&p.ty, TypeDesc::Struct { name, .. } if *name == table.schema.rust_type)
            );
            if !takes_row {
                return Err(ModuleError::ScheduledReducerSignature {
                    table: table.schema.name.clone(),
                    reducer: scheduled.reducer.clone(),
                    row: table.schema.rust_type.clone(),
                });
            }
            if let Some((_, first)) = fired_by.iter().find(|(r, _)| *r == scheduled.reducer) {
                return Err(ModuleError::ScheduledTwice {
                    reducer: scheduled.reducer.clone(),
                    first: first.clone(),
                    second: table.schema.name.clone(),
                });
            }
            fired_by.push((scheduled.reducer.clone(), table.schema.name.clone()));
            reducer.schema.kind = ReducerKind::Scheduled;
        }
        Ok(Module {
            name: self.name,
            tables: self.tables,
            reducers: self.reducers,
            schedule: self.schedule,
            setup: self.setup,
        })
    }
}
