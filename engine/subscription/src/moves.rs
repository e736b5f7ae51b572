//! Rows of one grid that changed since the last publish, by block of the grid's cells: what
//! an incremental spatial refresh reads instead of re-querying a view's whole region.
//!
//! Every insert, update, delete (and end of an event row) of a table with a position column
//! records the row's slot under the grid cell of its old position and of its new one (as the
//! grid reports them while moving the row: no extra lookups). At the
//! start of a publish the records are sorted into an index; a client whose focus has not
//! moved since its last refresh then only looks at the rows recorded in the blocks its
//! region (radius plus hysteresis margin) overlaps: every row whose entry can change is there
//! (it changed, and it is in the region now or was in it before), and every other entry would
//! come out of a full refresh exactly as it is.

use glam::Vec3;
use rustc_hash::FxHashMap;

/// Most blocks one incremental lookup visits; a larger region is refreshed in full.
const MAX_LOOKUP_BLOCKS: i64 = 4096;

/// Changed rows by block, for one grid. A block is one cell of the grid.
pub(crate) struct Moves {
    /// Side of a block.
    side: f32,
    planar: bool,
    /// `(block key, slot)` recorded since the last publish; sorted and deduplicated by
    /// [`Moves::build`].
    records: Vec<(u64, u32)>,
    /// Slots of `records` in block order, after [`Moves::build`].
    slots: Vec<u32>,
    /// Range of `slots` by block key.
    index: FxHashMap<u64, (u32, u32)>,
    /// Too many records to be worth indexing (or to keep): this publish refreshes in full.
    overflow: bool,
    /// The index is built and valid for this publish.
    ready: bool,
}

/// A block coordinate as 21 bits (offset, saturating far out, which only merges blocks).
fn offset(v: i64) -> u64 {
    (v + (1 << 20)).clamp(0, (1 << 21) - 1) as u64
}

impl Moves {
    pub(crate) fn new(side: f32, planar: bool) -> Self {
        Moves {
            side,
            planar,
            records: Vec::new(),
            slots: Vec::new(),
            index: FxHashMap::default(),
            overflow: false,
            ready: false,
        }
    }

    fn key(&self, cell: [i32; 3]) -> u64 {
        let z = if self.planar {
            0
        } else {
            offset(i64::from(cell[2]))
        };
        offset(i64::from(cell[0])) | offset(i64::from(cell[1])) << 21 | z << 42
    }

    /// Records that `slot` changed, from grid cell `old` to `new` (`None`: not in the grid,
    /// or for `old` also: in the same cell as `new`). `cap` bounds the records kept: beyond
    /// it, the next publish refreshes in full.
    pub(crate) fn record(
        &mut self,
        slot: u32,
        old: Option<[i32; 3]>,
        new: Option<[i32; 3]>,
        cap: usize,
    ) {
        if self.overflow {
            return;
        }
        if self.records.len() + 2 > cap {
            self.overflow = true;
            self.records.clear();
            return;
        }
        let old = old.map(|p| self.key(p));
        let new = new.map(|p| self.key(p));
        if let Some(old) = old {
            self.records.push((old, slot));
        }
        if new.is_some() && new != old {
            self.records.push((new.unwrap_or_default(), slot));
        }
    }

    /// Something changed that was not recorded: the next publish refreshes in full.
    pub(crate) fn invalidate(&mut self) {
        self.overflow = true;
        self.records.clear();
    }

    /// Indexes what was recorded, for this publish's incremental refreshes: unless more than
    /// `max_records` rows were recorded (then, as after an overflow, views of this grid are
    /// refreshed in full; past a share of the table, a full refresh costs less).
    pub(crate) fn build(&mut self, max_records: usize) {
        self.ready = false;
        self.index.clear();
        self.slots.clear();
        if self.overflow || self.records.len() > max_records {
            return;
        }
        self.records.sort_unstable();
        self.records.dedup();
        let mut start = 0;
        while start < self.records.len() {
            let key = self.records[start].0;
            let end = start
                + self.records[start..]
                    .iter()
                    .take_while(|(k, _)| *k == key)
                    .count();
            self.index.insert(key, (start as u32, end as u32));
            start = end;
        }
        self.slots
            .extend(self.records.iter().map(|&(_, slot)| slot));
        self.ready = true;
    }

    /// Whether [`Moves::build`] indexed this publish's records.
    pub(crate) fn ready(&self) -> bool {
        self.ready
    }

    /// Forgets what was recorded (after every view was refreshed).
    pub(crate) fn clear(&mut self) {
        self.records.clear();
        self.slots.clear();
        self.index.clear();
        self.overflow = false;
        self.ready = false;
    }

    /// Appends to `out` the slots recorded in the blocks that a ball of `radius` around
    /// `center` may touch (rounding included), possibly with repeats. Returns false (having
    /// appended nothing useful) if the region spans too many blocks to look up.
    pub(crate) fn collect(&self, center: Vec3, radius: f32, out: &mut Vec<u32>) -> bool {
        // A hundredth of a block each side covers any rounding of the division.
        let lo = |v: f32| ((v - radius) / self.side - 0.01).floor() as i64;
        let hi = |v: f32| ((v + radius) / self.side + 0.01).floor() as i64;
        let (x, y) = ((lo(center.x), hi(center.x)), (lo(center.y), hi(center.y)));
        let z = if self.planar {
            (0, 0)
        } else {
            (lo(center.z), hi(center.z))
        };
        let span = |(a, b): (i64, i64)| (b - a + 1).max(0);
        if span(x)
            .saturating_mul(span(y))
            .saturating_mul(span(z).max(1))
            > MAX_LOOKUP_BLOCKS
        {
            return false;
        }
        if self.index.is_empty() {
            return true;
        }
        for bz in z.0..=z.1 {
            let kz = if self.planar { 0 } else { offset(bz) << 42 };
            for by in y.0..=y.1 {
                let ky = offset(by) << 21;
                for bx in x.0..=x.1 {
                    if let Some(&(start, end)) = self.index.get(&(offset(bx) | ky | kz)) {
                        out.extend_from_slice(&self.slots[start as usize..end as usize]);
                    }
                }
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_find_rows_by_old_and_new_block() {
        let mut moves = Moves::new(10.0, true);
        moves.record(1, Some([0, 0, 0]), Some([9, 0, 0]), 100);
        moves.record(2, None, Some([-2, 0, 7]), 100);
        moves.record(3, Some([5, 5, 0]), None, 100);
        moves.build(100);
        assert!(moves.ready());
        let found = |center: Vec3, radius: f32| {
            let mut out = Vec::new();
            assert!(moves.collect(center, radius, &mut out));
            out.sort_unstable();
            out
        };
        assert_eq!(found(Vec3::new(0.0, 0.0, 0.0), 3.0), [1]);
        assert_eq!(found(Vec3::new(100.0, 0.0, 0.0), 3.0), [1]);
        assert_eq!(found(Vec3::new(-10.0, 0.0, -50.0), 4.0), [2]);
        assert_eq!(found(Vec3::new(-5.0, 5.0, -50.0), 6.0), [1, 2]);
        assert_eq!(found(Vec3::new(50.0, 50.0, 0.0), 1.0), [3]);
        assert!(found(Vec3::new(30.0, 30.0, 0.0), 1.0).is_empty());
        let mut out = Vec::new();
        assert!(!moves.collect(Vec3::ZERO, 1.0e6, &mut out));
        moves.clear();
        assert!(!moves.ready());
        for slot in 0..120 {
            moves.record(slot, None, Some([0, 0, 0]), 100);
        }
        moves.build(100);
        assert!(!moves.ready(), "over the cap: refresh in full");
        moves.clear();
        moves.record(1, None, Some([0, 0, 0]), 100);
        moves.build(0);
        assert!(!moves.ready(), "over the share: refresh in full");
    }
}
