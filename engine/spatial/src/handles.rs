//! Where each handle's entry lives: the grid's `handle -> location` map. Pluggable, because
//! the best structure depends on the handles: a hash map for arbitrary handles
//! ([`HashedHandles`], the default), a plain array for small dense integers such as slot or
//! entity indices ([`DenseHandles`]), which saves a hash probe (a cache miss in large grids)
//! on every update.

use std::hash::Hash;

use rustc_hash::FxHashMap;

/// An entry's place in the grid: bucket and position in the bucket. Opaque outside the crate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loc {
    pub(crate) bucket: u32,
    pub(crate) slot: u32,
}

/// A `handle -> location` map for [`SpatialGrid`](crate::SpatialGrid).
pub trait HandleIndex<H>: Default + Clone {
    /// The location of `h`.
    fn get(&self, h: H) -> Option<Loc>;
    /// The location of `h`, to repoint it.
    fn get_mut(&mut self, h: H) -> Option<&mut Loc>;
    /// Records `h` at `loc`; returns false (changing nothing) if `h` is already present.
    fn insert_new(&mut self, h: H, loc: Loc) -> bool;
    /// Forgets `h`, returning its location.
    fn remove(&mut self, h: H) -> Option<Loc>;
    /// Number of handles.
    fn len(&self) -> usize;
    /// Whether there are none.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Forgets every handle.
    fn clear(&mut self);
    /// Room for `additional` more handles.
    fn reserve(&mut self, additional: usize);
}

/// The default index: an `FxHashMap`, for any hashable handle.
#[derive(Clone, Debug)]
pub struct HashedHandles<H>(FxHashMap<H, Loc>);

impl<H> Default for HashedHandles<H> {
    fn default() -> Self {
        HashedHandles(FxHashMap::default())
    }
}

impl<H: Copy + Eq + Hash> HandleIndex<H> for HashedHandles<H> {
    #[inline]
    fn get(&self, h: H) -> Option<Loc> {
        self.0.get(&h).copied()
    }
    #[inline]
    fn get_mut(&mut self, h: H) -> Option<&mut Loc> {
        self.0.get_mut(&h)
    }
    #[inline]
    fn insert_new(&mut self, h: H, loc: Loc) -> bool {
        match self.0.entry(h) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(loc);
                true
            }
        }
    }
    #[inline]
    fn remove(&mut self, h: H) -> Option<Loc> {
        self.0.remove(&h)
    }
    fn len(&self) -> usize {
        self.0.len()
    }
    fn clear(&mut self) {
        self.0.clear();
    }
    fn reserve(&mut self, additional: usize) {
        self.0.reserve(additional);
    }
}

/// An array indexed by the handle itself, for `u32` handles that are small and dense (slot
/// numbers). Memory is proportional to the largest handle, so use it only for dense handles.
#[derive(Clone, Debug, Default)]
pub struct DenseHandles {
    slots: Vec<Option<Loc>>,
    len: usize,
}

impl HandleIndex<u32> for DenseHandles {
    #[inline]
    fn get(&self, h: u32) -> Option<Loc> {
        self.slots.get(h as usize).copied().flatten()
    }
    #[inline]
    fn get_mut(&mut self, h: u32) -> Option<&mut Loc> {
        self.slots.get_mut(h as usize).and_then(Option::as_mut)
    }
    #[inline]
    fn insert_new(&mut self, h: u32, loc: Loc) -> bool {
        let i = h as usize;
        if i >= self.slots.len() {
            self.slots.resize(i + 1, None);
        }
        if self.slots[i].is_some() {
            return false;
        }
        self.slots[i] = Some(loc);
        self.len += 1;
        true
    }
    #[inline]
    fn remove(&mut self, h: u32) -> Option<Loc> {
        let loc = self.slots.get_mut(h as usize)?.take()?;
        self.len -= 1;
        Some(loc)
    }
    fn len(&self) -> usize {
        self.len
    }
    fn clear(&mut self) {
        self.slots.clear();
        self.len = 0;
    }
    fn reserve(&mut self, additional: usize) {
        self.slots.reserve(additional);
    }
}
