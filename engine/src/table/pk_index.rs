//! The primary index: primary key → [`RowSlot`], hashed with the table's seeded hasher.
//!
//! A plain `HashMap` hashes the key on every probe, so a write that needs the key's hash for
//! the change log hashed it twice, and the look-ahead could not split a probe into "hash the
//! key" and "find its bucket". This index takes the hash from the caller where that matters:
//! the look-ahead hashes a batch's keys first, then probes them in a short loop of its own, so
//! the processor keeps many of the probes' cache misses in flight at once.
//!
//! Seeding and hash flooding are as for [`KeyMap`](super::key_map::KeyMap): the hasher is
//! seeded at random per index, and nothing depends on iteration order.

use std::hash::{BuildHasher, Hash};

use bevy_ecs::entity::Entity;
use hashbrown::HashTable;

use super::store::{KeyHasher, RowSlot};

/// Primary key → the row's slot, with probes by a hash the caller computed.
pub(crate) struct PkIndex<K> {
    hasher: KeyHasher,
    table: HashTable<(K, RowSlot)>,
}

impl<K> Default for PkIndex<K> {
    fn default() -> Self {
        PkIndex {
            hasher: KeyHasher::default(),
            table: HashTable::new(),
        }
    }
}

impl<K: Hash + Eq> PkIndex<K> {
    /// The seeded hasher, which the change log also hashes keys with.
    #[inline]
    pub(crate) fn hasher(&self) -> &KeyHasher {
        &self.hasher
    }

    /// `key`'s hash under this index's hasher.
    #[inline(always)]
    pub(crate) fn hash(&self, key: &K) -> u64 {
        self.hasher.hash_one(key)
    }

    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    #[inline(always)]
    pub(crate) fn get(&self, key: &K) -> Option<&RowSlot> {
        self.get_hashed(self.hash(key), key)
    }

    /// The slot of `key`, whose hash is `hash`.
    #[inline(always)]
    pub(crate) fn get_hashed(&self, hash: u64, key: &K) -> Option<&RowSlot> {
        self.table
            .find(hash, |(stored, _)| stored == key)
            .map(|(_, slot)| slot)
    }

    /// The slot of `key`, whose hash is `hash`, for writing.
    #[inline(always)]
    pub(crate) fn get_mut_hashed(&mut self, hash: u64, key: &K) -> Option<&mut RowSlot> {
        self.table
            .find_mut(hash, |(stored, _)| stored == key)
            .map(|(_, slot)| slot)
    }

    pub(crate) fn contains_key(&self, key: &K) -> bool {
        self.get(key).is_some()
    }

    /// Inserts or replaces `key`'s slot; returns the slot it replaced.
    pub(crate) fn insert(&mut self, key: K, slot: RowSlot) -> Option<RowSlot> {
        let hash = self.hash(&key);
        let hasher = &self.hasher;
        match self.table.entry(
            hash,
            |(stored, _)| *stored == key,
            |(stored, _)| hasher.hash_one(stored),
        ) {
            hashbrown::hash_table::Entry::Occupied(mut occupied) => {
                Some(std::mem::replace(&mut occupied.get_mut().1, slot))
            }
            hashbrown::hash_table::Entry::Vacant(vacant) => {
                vacant.insert((key, slot));
                None
            }
        }
    }

    /// Removes `key`; returns its slot.
    pub(crate) fn remove(&mut self, key: &K) -> Option<RowSlot> {
        let hash = self.hash(key);
        self.table
            .find_entry(hash, |(stored, _)| stored == key)
            .ok()
            .map(|entry| entry.remove().0.1)
    }

    /// Empties the index, yielding every key and slot.
    pub(crate) fn drain(&mut self) -> impl Iterator<Item = (K, RowSlot)> + '_ {
        self.table.drain()
    }

    /// Every key and slot, in no meaningful order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&K, &RowSlot)> + '_ {
        self.table.iter().map(|(key, slot)| (key, slot))
    }

    /// Every slot, in no meaningful order.
    pub(crate) fn values(&self) -> impl Iterator<Item = &RowSlot> + '_ {
        self.table.iter().map(|(_, slot)| slot)
    }

    /// Makes room for `additional` more keys.
    pub(crate) fn reserve(&mut self, additional: usize) {
        let hasher = &self.hasher;
        self.table
            .reserve(additional, |(stored, _)| hasher.hash_one(stored));
    }

    /// For the look-ahead: loads the control bytes `hash` probes first (and, for the rare
    /// full group, the next ones), without reading any bucket.
    #[inline(always)]
    pub(crate) fn touch_control(&self, hash: u64) {
        std::hint::black_box(self.table.find(hash, |_| false).is_some());
    }

    /// For the look-ahead: the bucket `hash` most likely names (the first in its probe
    /// sequence whose tag bits match), found from the control bytes alone: nothing of the
    /// bucket is read yet, so a loop of these issues no cache miss of its own.
    #[inline(always)]
    pub(crate) fn bucket_guess(&self, hash: u64) -> Option<&(K, RowSlot)> {
        self.table.find(hash, |_| true)
    }

    /// For the look-ahead: reads a bucket from [`PkIndex::bucket_guess`] whole (key, entity,
    /// log position: a 24-byte bucket can straddle two cache lines), as a write will, and
    /// returns its entity if its key's hash is `hash`; otherwise (another key's tag bits
    /// matched first, a few in a hundred) probes properly.
    #[inline(always)]
    pub(crate) fn entity_in(&self, bucket: &(K, RowSlot), hash: u64) -> Option<Entity> {
        let (key, slot) = bucket;
        if self.hasher.hash_one(key) == hash {
            std::hint::black_box(slot.logged);
            Some(slot.entity)
        } else {
            self.entity_by_hash(hash)
        }
    }

    /// The entity of the key whose hash is `hash`, found by comparing hashes instead of keys
    /// (the look-ahead keeps no typed keys). Two keys of one table with the same 64-bit hash
    /// would only bring the wrong row into cache.
    #[inline(never)]
    pub(crate) fn entity_by_hash(&self, hash: u64) -> Option<Entity> {
        self.table
            .find(hash, |(stored, _)| self.hasher.hash_one(stored) == hash)
            .map(|(_, slot)| slot.entity)
    }
}

#[cfg(test)]
mod tests {
    use bevy_ecs::world::World;

    use super::*;

    #[test]
    fn keys_map_to_their_slots_through_every_way_in() {
        let mut world = World::new();
        let entities: Vec<Entity> = (0..100).map(|_| world.spawn_empty().id()).collect();
        let mut index = PkIndex::<u64>::default();
        for (key, &entity) in entities.iter().enumerate() {
            assert!(index.insert(key as u64 * 7, RowSlot::new(entity)).is_none());
        }
        assert_eq!(index.len(), 100);
        // Replacing returns the old slot.
        let replaced = index.insert(0, RowSlot::new(entities[99])).unwrap();
        assert_eq!(replaced.entity, entities[0]);
        assert_eq!(index.len(), 100);
        for (key, &entity) in entities.iter().enumerate().skip(1) {
            let key = key as u64 * 7;
            let hash = index.hash(&key);
            assert_eq!(index.get(&key).unwrap().entity, entity);
            assert_eq!(index.get_hashed(hash, &key).unwrap().entity, entity);
            assert_eq!(index.get_mut_hashed(hash, &key).unwrap().entity, entity);
            // The look-ahead's probe finds the same entity from the hash alone.
            index.touch_control(hash);
            assert_eq!(index.entity_by_hash(hash), Some(entity));
            let bucket = index.bucket_guess(hash).unwrap();
            assert_eq!(index.entity_in(bucket, hash), Some(entity));
        }
        let absent = index.hash(&1);
        assert!(index.get(&1).is_none() && index.entity_by_hash(absent).is_none());
        // A guessed bucket whose key does not hash alike falls back to a real probe.
        let other = index.bucket_guess(index.hash(&7)).unwrap();
        assert_eq!(index.entity_in(other, index.hash(&21)), Some(entities[3]));
        assert_eq!(index.remove(&14).unwrap().entity, entities[2]);
        assert!(index.remove(&14).is_none() && !index.contains_key(&14));
        assert_eq!(index.iter().count(), 99);
        assert_eq!(index.drain().count(), 99);
        assert!(index.is_empty());
    }

    #[test]
    fn each_index_hashes_with_its_own_seed() {
        let (a, b) = (PkIndex::<u64>::default(), PkIndex::<u64>::default());
        let same = (0..4u64).filter(|k| a.hash(k) == b.hash(k)).count();
        assert!(same < 4);
    }
}
