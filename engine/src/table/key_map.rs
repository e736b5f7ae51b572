//! The hash map behind primary-key, unique and schedule lookups, whose keys clients choose
//! (names, titles, any `String` or struct key).
//!
//! An unkeyed hash such as FxHash lets anyone who knows it pick keys that collide, so a few
//! thousand crafted names make every probe walk one long chain: hash flooding. [`KeyMap`]
//! hashes with foldhash seeded at random per map, so colliding keys cannot be computed ahead
//! (foldhash is as fast as FxHash on the integer keys most tables use; it does not claim to
//! resist an attacker who can observe hash values or table iteration, and these maps expose
//! neither).
//!
//! The seed differs between runs, so nothing may depend on these maps' iteration order: the
//! engine only probes them, and the one place that drains one (event rows at the end of a
//! tick) sorts what it drains first. Outcomes, recovery and replay therefore do not depend on
//! the seed.

use std::collections::HashMap;

/// A map keyed by client-chosen values, hashed with a per-map random seed.
pub type KeyMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;

    use super::*;

    #[test]
    fn each_map_hashes_with_its_own_seed() {
        let (a, b) = (
            KeyMap::<String, u8>::default(),
            KeyMap::<String, u8>::default(),
        );
        let keys = ["alice", "bob", "carol", "dave"];
        // With unkeyed hashing every map agrees on every key; with seeded hashing two maps
        // agreeing on four keys by chance has probability about 2^-256.
        let same = keys
            .iter()
            .filter(|k| a.hasher().hash_one(k) == b.hasher().hash_one(k))
            .count();
        assert!(same < keys.len());
    }
}
