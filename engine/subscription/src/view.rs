//! A client's view of a table: the rows its subscriptions include, as entries sorted by slot
//! that record what the client holds and what it is owed (upsert or delete), and the rules
//! that settle an entry when the row or the client's subscriptions change.

use crate::mirror::SlotMeta;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Dirty {
    Clean,
    Upsert,
    Delete,
}

/// A client's view of one row (32 bytes with its slot: views stream through the cache, so the
/// version is two `u32` halves, which keeps the entry 4-aligned and the slot in no padding).
#[derive(Clone, Copy)]
pub(crate) struct ViewEntry {
    /// Version the client holds (0 = none), low and high halves; see [`ViewEntry::sent`].
    sent: [u32; 2],
    /// The client's handle for the row (see `orrery_row::wire`): given with the first upsert,
    /// freed with the delete; meaningless while `sent` is 0.
    pub(crate) handle: u32,
    /// Bits of this client's subscriptions on the table that include the row.
    pub(crate) mask: u32,
    /// Tick the entry became dirty (wrapping; only differences matter).
    pub(crate) since: u32,
    /// Distance to the focus at the last spatial refresh (0 for non-spatial rows).
    pub(crate) distance: f32,
    /// Size of the last record sent for this row, a cheap estimate of the next one.
    pub(crate) last_size: u16,
    pub(crate) dirty: Dirty,
}

const _: () = assert!(std::mem::size_of::<(u32, ViewEntry)>() == 32);

impl ViewEntry {
    /// Version the client holds (0 = none).
    #[inline]
    pub(crate) fn sent(&self) -> u64 {
        u64::from(self.sent[0]) | u64::from(self.sent[1]) << 32
    }

    #[inline]
    pub(crate) fn set_sent(&mut self, version: u64) {
        self.sent = [version as u32, (version >> 32) as u32];
    }

    /// Removed by a send during a flush (its delete went out): the flush compacts its views
    /// before returning, so dead entries are never seen outside it. Marking instead of
    /// removing keeps the flush's positions valid.
    pub(crate) fn is_dead(&self) -> bool {
        self.mask == 0 && self.dirty == Dirty::Clean
    }
}

/// One client's rows of one table, sorted by slot. A spatial refresh is a sequential merge of
/// this with the (sorted) region query result, which streams through memory instead of probing
/// a hash map per row; lookups are binary searches.
#[derive(Default)]
pub(crate) struct View {
    pub(crate) entries: Vec<(u32, ViewEntry)>,
    /// The client's row handles for this table.
    pub(crate) handles: HandlePool,
}

/// A client's row handles of one table: the lowest numbers, freed ones reused last-in
/// first-out, so they stay below the most rows the client held at once (what its decoder
/// allows) and encode in one byte for views of up to 128 rows.
#[derive(Default)]
pub(crate) struct HandlePool {
    next: u32,
    free: Vec<u32>,
}

impl HandlePool {
    pub(crate) fn give(&mut self) -> u32 {
        self.free.pop().unwrap_or_else(|| {
            self.next += 1;
            self.next - 1
        })
    }

    pub(crate) fn take_back(&mut self, handle: u32) {
        self.free.push(handle);
    }
}

impl View {
    pub(crate) fn find(&self, slot: u32) -> Result<usize, usize> {
        self.entries.binary_search_by_key(&slot, |(s, _)| *s)
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

/// What updating a client's view entries of one table needs besides the entries: the table,
/// the tick, and the client's queue of entries that became dirty.
pub(crate) struct EntryUpdate<'q> {
    /// The table's id.
    pub(crate) table: u32,
    /// Whether it is an event table (rows live one tick; nothing to delete on the client).
    pub(crate) event: bool,
    /// The publisher's tick sequence.
    pub(crate) tick: u64,
    /// The client's dirty queue: `(table, slot)` of entries that became dirty.
    pub(crate) dirty: &'q mut Vec<(u32, u32)>,
}

impl EntryUpdate<'_> {
    /// Updates the entry for `slot` and one of the client's subscriptions (`bit`): `member`
    /// says whether that subscription now includes the row. Returns true if the entry was
    /// removed from a dead row (whose slot may now be freed).
    pub(crate) fn touch(
        &mut self,
        view: &mut View,
        meta: &SlotMeta,
        slot: u32,
        bit: u32,
        member: bool,
        distance: f32,
    ) -> bool {
        match view.find(slot) {
            Ok(index) => {
                let e = &mut view.entries[index].1;
                if member {
                    e.mask |= 1 << bit;
                } else {
                    e.mask &= !(1 << bit);
                }
                e.distance = distance;
                if settle(e, meta, self.event, self.tick) {
                    self.dirty.push((self.table, slot));
                }
                if e.mask == 0 && e.dirty == Dirty::Clean {
                    view.entries.remove(index);
                    meta.drop_view();
                    return !meta.live;
                }
                false
            }
            Err(index) => {
                if member && meta.live {
                    view.entries
                        .insert(index, (slot, new_entry(bit, distance, self.tick)));
                    meta.add_view();
                    self.dirty.push((self.table, slot));
                }
                false
            }
        }
    }

    /// After an entry's mask changed: settles what it owes and says whether to keep it (an
    /// entry is dropped when no subscription covers it and nothing is owed; a dead row's slot
    /// then goes to `release`).
    pub(crate) fn keep(
        &mut self,
        e: &mut ViewEntry,
        meta: &SlotMeta,
        slot: u32,
        release: &mut Vec<u32>,
    ) -> bool {
        if settle(e, meta, self.event, self.tick) {
            self.dirty.push((self.table, slot));
        }
        if e.mask == 0 && e.dirty == Dirty::Clean {
            meta.drop_view();
            if !meta.live {
                release.push(slot);
            }
            return false;
        }
        true
    }

    /// A new entry for a row that entered the view, queued to be sent; the caller inserts it
    /// in slot order.
    pub(crate) fn enter(
        &mut self,
        meta: &SlotMeta,
        slot: u32,
        bit: u32,
        distance: f32,
    ) -> (u32, ViewEntry) {
        meta.add_view();
        self.dirty.push((self.table, slot));
        (slot, new_entry(bit, distance, self.tick))
    }
}

/// Marks an entry removed (its delete went out, or its event was delivered) and releases its
/// hold on the slot.
pub(crate) fn kill(e: &mut ViewEntry, meta: &SlotMeta, slot: u32, release: &mut Vec<u32>) {
    e.mask = 0;
    e.dirty = Dirty::Clean;
    e.set_sent(0);
    meta.drop_view();
    if !meta.live {
        release.push(slot);
    }
}

pub(crate) fn new_entry(bit: u32, distance: f32, tick: u64) -> ViewEntry {
    ViewEntry {
        mask: 1 << bit,
        sent: [0; 2],
        handle: 0,
        dirty: Dirty::Upsert,
        since: tick as u32,
        distance,
        last_size: 0,
    }
}

/// Works out what an entry owes its client after its mask or the row changed; returns true if it
/// just became dirty (and must be queued).
pub(crate) fn settle(e: &mut ViewEntry, meta: &SlotMeta, event: bool, tick: u64) -> bool {
    let want = if e.mask != 0 && meta.live {
        if e.sent() != meta.version {
            Dirty::Upsert
        } else {
            Dirty::Clean
        }
    } else if e.sent() != 0 && !event {
        Dirty::Delete
    } else {
        Dirty::Clean
    };
    let newly = e.dirty == Dirty::Clean && want != Dirty::Clean;
    if newly {
        e.since = tick as u32;
    }
    e.dirty = want;
    newly
}
