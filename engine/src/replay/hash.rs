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

/// Odd 64-bit constants of the byte hash (wyhash's).
const P0: u64 = 0xa076_1d64_78bd_642f;
const P1: u64 = 0xe703_7ed1_a0b4_28db;
const P2: u64 = 0x8ebc_6af0_9c88_c6e3;
const P3: u64 = 0x5899_65cc_7537_4cc3;
/// Seeds that separate the primary-key hash from the row hash.
const KEY_SEED: u64 = 0x243F_6A88_85A3_08D3;
const ROW_SEED: u64 = 0x1319_8A2E_0370_7344;

/// The 128-bit product of `a` and `b`, its halves xored: one multiply mixes 64 bits into 64.
fn folded(a: u64, b: u64) -> u64 {
    let r = u128::from(a) * u128::from(b);
    (r as u64) ^ ((r >> 64) as u64)
}

/// Up to 8 bytes as a little-endian word (zero-padded).
fn word(bytes: &[u8]) -> u64 {
    let mut raw = [0u8; 8];
    raw[..bytes.len()].copy_from_slice(bytes);
    u64::from_le_bytes(raw)
}

/// A fixed (version- and platform-independent) 64-bit hash of a byte string, one multiply per
/// 16 bytes: the state hash must be the same on the machine that recorded and the one that
/// replays, and it runs for every changed row on the tick thread.
fn hash_bytes(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = seed ^ (bytes.len() as u64).wrapping_mul(P0);
    let mut chunks = bytes.chunks_exact(16);
    for chunk in &mut chunks {
        h = folded(word(&chunk[..8]) ^ h ^ P1, word(&chunk[8..]) ^ P2);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let split = rest.len().min(8);
        h = folded(word(&rest[..split]) ^ h ^ P1, word(&rest[split..]) ^ P2);
    }
    folded(h ^ P3, (bytes.len() as u64) ^ P1)
}

/// The map key of a row, and the first half of its contribution: a hash of (table, primary
/// key bytes).
fn key_hash(table: u32, pk: &[u8]) -> u64 {
    hash_bytes(KEY_SEED ^ u64::from(table).wrapping_mul(P3), pk)
}

/// What a row whose key hashes to `key` adds to the state hash.
fn contribution(key: u64, row: &[u8]) -> u64 {
    folded(key ^ P2, hash_bytes(ROW_SEED, row) ^ P0)
}

/// What one row adds to the state hash.
pub fn row_contribution(table: u32, pk: &[u8], row: &[u8]) -> u64 {
    contribution(key_hash(table, pk), row)
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
            Some(row) => {
                let new = contribution(key, row);
                self.total = self.total.wrapping_add(new);
                rows.insert(key, new)
            }
            None => rows.remove(&key),
        };
        if let Some(old) = old {
            self.total = self.total.wrapping_sub(old);
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

    const PINNED: u64 = 0x7130_471a_58fa_3d07;

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
        // Every length, including the 16-byte boundaries, hashes its bytes.
        for len in 1..40 {
            let row = vec![7u8; len];
            let mut other = row.clone();
            other[len - 1] = 8;
            assert_ne!(
                row_contribution(1, b"pk", &row),
                row_contribution(1, b"pk", &other)
            );
        }
        // Fixed constants: the value is the same on every machine and build. Pinned so that a
        // change of the function (old recordings would no longer replay) cannot go unnoticed.
        assert_eq!(row_contribution(3, b"key", b"row"), PINNED);
    }
}
