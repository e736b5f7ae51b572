//! [`TableSet`]: the module's table stores, addressed by position (table id) or by row type.
//!
//! Stores live here, outside the ECS world, while reducers and capture run, so a reducer can
//! borrow a store and the world at once; for the systems phase they move into the world as
//! resources so systems can read indexes through `Res<TableStore<T>>`.

use std::any::{Any, TypeId};

use bevy_ecs::world::World;
use rustc_hash::FxHashMap;

use crate::table::{ErasedStore, Table, TableStore};

pub(crate) struct TableSlot {
    store: Option<Box<dyn ErasedStore>>,
    take: fn(&mut World) -> Option<Box<dyn ErasedStore>>,
    name: String,
}

pub(crate) struct TableSet {
    slots: Vec<TableSlot>,
    by_type: FxHashMap<TypeId, usize>,
    /// The table opened last: a reducer opens the same table again and again
    /// (`ctx.db.account()` per statement), and comparing one type id beats hashing it.
    last: (TypeId, usize),
}

impl Default for TableSet {
    fn default() -> Self {
        TableSet {
            slots: Vec::new(),
            by_type: FxHashMap::default(),
            last: (TypeId::of::<()>(), usize::MAX),
        }
    }
}

impl TableSet {
    pub(crate) fn push(
        &mut self,
        type_id: TypeId,
        name: String,
        store: Box<dyn ErasedStore>,
        take: fn(&mut World) -> Option<Box<dyn ErasedStore>>,
    ) {
        self.by_type.insert(type_id, self.slots.len());
        self.slots.push(TableSlot {
            store: Some(store),
            take,
            name,
        });
    }

    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    pub(crate) fn index_of<T: Table>(&self) -> Option<usize> {
        self.by_type.get(&TypeId::of::<T>()).copied()
    }

    /// # Panics
    /// If `T` is not registered (a module definition error, caught as a reducer panic).
    // Always inlined (into every `ctx.db.<table>()`), its misses and panics out of line: the
    // call itself cost about a third of the open.
    #[inline(always)]
    pub(crate) fn store_mut<T: Table>(&mut self) -> (usize, &mut TableStore<T>) {
        let index = if self.last.0 == TypeId::of::<T>() {
            self.last.1
        } else {
            self.look_up::<T>()
        };
        let store = self.slots[index]
            .store
            .as_mut()
            // Upcast (a vtable load) and one virtual `type_id` call.
            .and_then(|s| (&mut **s as &mut dyn Any).downcast_mut::<TableStore<T>>());
        match store {
            Some(store) => (index, store),
            None => unavailable::<T>(),
        }
    }

    /// [`TableSet::store_mut`] when `T` is not the table opened last.
    #[inline(never)]
    fn look_up<T: Table>(&mut self) -> usize {
        let Some(index) = self.index_of::<T>() else {
            unregistered::<T>()
        };
        self.last = (TypeId::of::<T>(), index);
        index
    }

    /// The store of `T` with its position, when it is not moved into the world.
    #[inline(always)]
    pub(crate) fn indexed_store<T: Table>(&self) -> Option<(usize, &TableStore<T>)> {
        let index = if self.last.0 == TypeId::of::<T>() {
            self.last.1
        } else {
            self.index_of::<T>()?
        };
        let store = self.slots[index]
            .store
            .as_deref()
            .and_then(|s| (s as &dyn Any).downcast_ref::<TableStore<T>>())?;
        Some((index, store))
    }

    pub(crate) fn store<T: Table>(&self) -> Option<&TableStore<T>> {
        let index = self.index_of::<T>()?;
        self.slots[index]
            .store
            .as_deref()
            .and_then(|s| (s as &dyn Any).downcast_ref::<TableStore<T>>())
    }

    pub(crate) fn erased_mut(&mut self, index: usize) -> &mut dyn ErasedStore {
        let slot = &mut self.slots[index];
        match slot.store.as_deref_mut() {
            Some(store) => store,
            None => panic!("table `{}` is not available in this phase", slot.name),
        }
    }

    pub(crate) fn erased(&self, index: usize) -> &dyn ErasedStore {
        match self.slots[index].store.as_deref() {
            Some(store) => store,
            None => panic!(
                "table `{}` is not available in this phase",
                self.slots[index].name
            ),
        }
    }

    pub(crate) fn move_into_world(&mut self, world: &mut World) {
        for slot in &mut self.slots {
            if let Some(store) = slot.store.take() {
                store.move_into_world(world);
            }
        }
    }

    pub(crate) fn take_from_world(&mut self, world: &mut World) {
        for slot in &mut self.slots {
            if slot.store.is_none() {
                slot.store = (slot.take)(world);
                if slot.store.is_none() {
                    // A system removed the resource: the indexes are gone and the engine cannot
                    // continue consistently, which is a module bug worth stopping for.
                    panic!(
                        "a system removed the TableStore resource of table `{}`",
                        slot.name
                    );
                }
            }
        }
    }
}

#[cold]
#[inline(never)]
fn unavailable<T: Table>() -> ! {
    panic!("table `{}` is not available in this phase", T::NAME)
}

#[cold]
fn unregistered<T: Table>() -> ! {
    panic!(
        "table `{}` is not registered in this module (add `.table::<{}>()`)",
        T::NAME,
        std::any::type_name::<T>()
    )
}
