//! Secondary index containers used by generated `TableIndexes` code: hashed unique indexes and
//! ordered btree indexes whose entries are ordered by (key, primary key) so iteration is
//! deterministic.

use std::collections::BTreeMap;
use std::ops::{Bound, Range, RangeFrom, RangeFull, RangeInclusive, RangeTo, RangeToInclusive};

use bevy_ecs::entity::Entity;

use super::IndexKey;
use super::key_map::KeyMap;

/// A hashed unique index: key → row entity.
#[derive(Debug)]
pub struct UniqueIndex<K: IndexKey> {
    map: KeyMap<K, Entity>,
}

impl<K: IndexKey> Default for UniqueIndex<K> {
    fn default() -> Self {
        UniqueIndex {
            map: KeyMap::default(),
        }
    }
}

impl<K: IndexKey> UniqueIndex<K> {
    /// The row holding `key`.
    #[inline]
    pub fn get(&self, key: &K) -> Option<Entity> {
        self.map.get(key).copied()
    }

    /// Whether some row holds `key`.
    #[inline]
    pub fn contains(&self, key: &K) -> bool {
        self.map.contains_key(key)
    }

    /// Whether `key` is held by a row other than `entity`.
    #[inline]
    pub fn taken_by_other(&self, key: &K, entity: Entity) -> bool {
        self.map.get(key).is_some_and(|&e| e != entity)
    }

    /// Maps `key` to `entity`.
    #[inline]
    pub fn insert(&mut self, key: K, entity: Entity) {
        self.map.insert(key, entity);
    }

    /// Unmaps `key`.
    #[inline]
    pub fn remove(&mut self, key: &K) {
        self.map.remove(key);
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the index is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// Orders a btree entry's primary key between sentinels so that range bounds on the indexed
/// key alone can be expressed on (key, primary key) entries.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum PkSlot<P> {
    Min,
    Key(P),
    Max,
}

/// An ordered, non-unique index: (key, primary key) → row entity.
#[derive(Debug)]
pub struct BTreeIndex<K: IndexKey, P: IndexKey> {
    map: BTreeMap<(K, PkSlot<P>), Entity>,
}

impl<K: IndexKey, P: IndexKey> Default for BTreeIndex<K, P> {
    fn default() -> Self {
        BTreeIndex {
            map: BTreeMap::new(),
        }
    }
}

impl<K: IndexKey, P: IndexKey> BTreeIndex<K, P> {
    /// Adds the row `pk` (entity `entity`) under `key`.
    #[inline]
    pub fn insert(&mut self, key: K, pk: P, entity: Entity) {
        self.map.insert((key, PkSlot::Key(pk)), entity);
    }

    /// Removes the row `pk` from under `key`.
    #[inline]
    pub fn remove(&mut self, key: &K, pk: &P) {
        self.map.remove(&(key.clone(), PkSlot::Key(pk.clone())));
    }

    /// The entity stored for (`key`, `pk`).
    pub fn get(&self, key: &K, pk: &P) -> Option<Entity> {
        self.map
            .get(&(key.clone(), PkSlot::Key(pk.clone())))
            .copied()
    }

    /// Rows whose key lies in `range`, ordered by key then primary key. An empty or inverted
    /// range yields nothing.
    pub fn range(&self, range: impl IndexRange<K>) -> impl Iterator<Item = Entity> + '_ {
        let (lo, hi) = range.into_bounds();
        let lo = match lo {
            Bound::Included(k) => Bound::Included((k, PkSlot::Min)),
            Bound::Excluded(k) => Bound::Excluded((k, PkSlot::Max)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let hi = match hi {
            Bound::Included(k) => Bound::Included((k, PkSlot::Max)),
            Bound::Excluded(k) => Bound::Excluded((k, PkSlot::Min)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let valid = match (&lo, &hi) {
            (Bound::Included(a), Bound::Included(b)) => a <= b,
            (Bound::Included(a) | Bound::Excluded(a), Bound::Excluded(b))
            | (Bound::Excluded(a), Bound::Included(b)) => a < b,
            _ => true,
        };
        // BTreeMap::range panics on inverted bounds; a user's `5..3` must be an empty result.
        valid
            .then(|| self.map.range((lo, hi)).map(|(_, &e)| e))
            .into_iter()
            .flatten()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the index is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// A key range for btree filters: a single key (`&k`) or any std range (`3..10`, `..=7`, `..`).
pub trait IndexRange<K> {
    /// The range as owned bounds.
    fn into_bounds(self) -> (Bound<K>, Bound<K>);
}

impl<K: Clone> IndexRange<K> for &K {
    fn into_bounds(self) -> (Bound<K>, Bound<K>) {
        (Bound::Included(self.clone()), Bound::Included(self.clone()))
    }
}

impl<K> IndexRange<K> for Range<K> {
    fn into_bounds(self) -> (Bound<K>, Bound<K>) {
        (Bound::Included(self.start), Bound::Excluded(self.end))
    }
}

impl<K> IndexRange<K> for RangeInclusive<K> {
    fn into_bounds(self) -> (Bound<K>, Bound<K>) {
        let (start, end) = self.into_inner();
        (Bound::Included(start), Bound::Included(end))
    }
}

impl<K> IndexRange<K> for RangeFrom<K> {
    fn into_bounds(self) -> (Bound<K>, Bound<K>) {
        (Bound::Included(self.start), Bound::Unbounded)
    }
}

impl<K> IndexRange<K> for RangeTo<K> {
    fn into_bounds(self) -> (Bound<K>, Bound<K>) {
        (Bound::Unbounded, Bound::Excluded(self.end))
    }
}

impl<K> IndexRange<K> for RangeToInclusive<K> {
    fn into_bounds(self) -> (Bound<K>, Bound<K>) {
        (Bound::Unbounded, Bound::Included(self.end))
    }
}

impl<K> IndexRange<K> for RangeFull {
    fn into_bounds(self) -> (Bound<K>, Bound<K>) {
        (Bound::Unbounded, Bound::Unbounded)
    }
}

impl<K> IndexRange<K> for (Bound<K>, Bound<K>) {
    fn into_bounds(self) -> (Bound<K>, Bound<K>) {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entity(n: u32) -> Entity {
        Entity::from_raw_u32(n).unwrap()
    }

    #[test]
    fn btree_ranges_respect_bounds_and_order_by_pk_within_a_key() {
        let mut ix = BTreeIndex::<u32, u64>::default();
        for (key, pk) in [(5, 9), (3, 1), (5, 2), (7, 4), (10, 3)] {
            ix.insert(key, pk, entity(pk as u32));
        }
        let pks = |it: Vec<Entity>| it.iter().map(|e| e.index_u32()).collect::<Vec<_>>();
        assert_eq!(pks(ix.range(3..7).collect()), vec![1, 2, 9]);
        assert_eq!(pks(ix.range(3..=7).collect()), vec![1, 2, 9, 4]);
        assert_eq!(pks(ix.range(&5).collect()), vec![2, 9]);
        assert_eq!(pks(ix.range(8..).collect()), vec![3]);
        assert_eq!(pks(ix.range(..5).collect()), vec![1]);
        assert_eq!(pks(ix.range(..).collect()), vec![1, 2, 9, 4, 3]);
        assert_eq!(
            pks(ix
                .range((Bound::Excluded(5), Bound::Included(10)))
                .collect()),
            vec![4, 3]
        );
        // Inverted and empty ranges are empty, not a panic.
        #[allow(clippy::reversed_empty_ranges)] // an inverted range is exactly what is tested
        let inverted = 7..3;
        assert!(ix.range(inverted).next().is_none());
        assert!(ix.range(5..5).next().is_none());
        assert!(
            ix.range((Bound::Excluded(5), Bound::Excluded(5)))
                .next()
                .is_none()
        );
        ix.remove(&5, &9);
        assert_eq!(pks(ix.range(&5).collect()), vec![2]);
        assert_eq!(ix.len(), 4);
    }
}
