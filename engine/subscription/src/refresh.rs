//! Spatial views: each publish, a client's `within(col, :focus, r)` subscriptions are
//! refreshed against the mirror's grids around its focus, with enter/leave hysteresis so that
//! rows at the edge do not flap. A client whose focus has not moved (and whose subscriptions
//! have not changed) since its last refresh is refreshed incrementally, from the rows that
//! changed near its region (`moves`), with the same outcome as a full refresh.

use crate::client_state::{ClientState, SubKind};
use crate::mirror::{MirrorTable, SlotData};
use crate::view::{EntryUpdate, ViewEntry};

/// Changed rows beyond a view's size that an incremental refresh still takes on.
const INCREMENTAL_SLACK: usize = 16;

/// Brings `client`'s spatial views up to date around its focus: rows within `radius` of the
/// focus enter, rows beyond `radius + margin` leave (hysteresis), rows in between keep their
/// state. Entries that change are settled and queued on the client's dirty list; slots of dead
/// rows whose entry went are pushed to `release` (by table id), to be freed once every client
/// is published.
pub(crate) fn refresh_spatial(
    client: &mut ClientState,
    tables: &[Option<MirrorTable>],
    margin: f32,
    tick: u64,
    scratch: &mut RefreshScratch,
    release: &mut [Vec<u32>],
) {
    let identity = client.identity;
    let focus = client.focus;
    // Since the last refresh, entries can only have changed through rows that changed (their
    // records are in the table's `moves`), unless the focus moved or the subscriptions changed.
    let unmoved = !client.stale && client.refreshed_focus == focus;
    client.refreshed_focus = focus;
    client.stale = false;
    for sub in &client.subs {
        let SubKind::Spatial(spatial) = &sub.kind else {
            continue;
        };
        let Some(Some(t)) = tables.get(sub.table as usize) else {
            continue;
        };
        let release = &mut release[sub.table as usize];
        let (table, bit, within) = (sub.table, sub.bit, spatial.within);
        let event = t.schema.event;
        let MirrorTable {
            grids,
            moves,
            meta,
            data,
            schema,
            ..
        } = t;
        let passes = |data: &[SlotData], slot: u32| {
            spatial
                .condition
                .as_ref()
                .is_none_or(|c| c.matches(MirrorTable::values(data, schema, slot), identity))
        };
        let view = &mut client.views[table as usize];
        let mut update = EntryUpdate {
            table,
            event,
            tick,
            dirty: &mut client.dirty,
        };
        let reach = within.radius + margin;
        let grid = grids.iter().position(|(c, _)| *c == within.column);
        if unmoved && let Some(g) = grid.filter(|&g| moves[g].ready()) {
            let grid = &grids[g].1;
            // The rows that changed in the blocks the region overlaps, in slot order: they are
            // the only ones a full refresh could treat differently from the last one.
            scratch.found.clear();
            let complete = match focus {
                Some(focus) => moves[g].collect(focus, reach, &mut scratch.found),
                None => true,
            };
            // Each candidate costs a grid lookup and a search of the view: with more of them
            // than the view has rows (cells much larger than the region, or most rows moving
            // nearby), re-querying the region costs less.
            if complete && scratch.found.len() <= view.entries.len() + INCREMENTAL_SLACK {
                scratch.found.sort_unstable();
                scratch.found.dedup();
                scratch.entering_at.clear();
                let mut removed = false;
                for &slot in &scratch.found {
                    let s = slot as usize;
                    let near = focus.and_then(|f| grid.within(slot, f, reach));
                    match view.find(slot) {
                        Ok(index) => {
                            let e = &mut view.entries[index].1;
                            if visit(e, near, within.radius, || passes(data, slot), bit)
                                && !update.keep(e, &meta[s], slot, release)
                            {
                                removed = true;
                            }
                        }
                        Err(_) => {
                            if let Some(d) = near
                                && d <= within.radius
                                && meta[s].live
                                && passes(data, slot)
                            {
                                scratch.entering_at.push((slot, d));
                            }
                        }
                    }
                }
                if removed {
                    // `keep` refused exactly the entries it left dead.
                    view.entries.retain(|(_, e)| !e.is_dead());
                }
                scratch.incremental += 1;
                if !scratch.entering_at.is_empty() {
                    let entering = std::mem::take(&mut scratch.entering_at);
                    let mut merged = Vec::with_capacity(view.entries.len() + entering.len());
                    let mut old = std::mem::take(&mut view.entries).into_iter().peekable();
                    for &(slot, d) in &entering {
                        merged.extend(std::iter::from_fn(|| old.next_if(|(s, _)| *s < slot)));
                        merged.push(update.enter(&meta[slot as usize], slot, bit, d));
                    }
                    merged.extend(old);
                    view.entries = merged;
                    scratch.entering_at = entering;
                }
                continue;
            }
        }
        scratch.full += 1;
        // Full refresh: mark the region's rows in dense per-slot arrays (which stay in cache)
        // instead of sorting them: the view is walked once in its own (slot) order against the
        // marks.
        scratch.epoch += 1;
        let epoch = scratch.epoch;
        if scratch.mark.len() < meta.len() {
            scratch.mark.resize(meta.len(), 0);
            scratch.distance.resize(meta.len(), 0.0);
        }
        scratch.found.clear();
        if let (Some(focus), Some(g)) = (focus, grid) {
            let (mark, distance, found) =
                (&mut scratch.mark, &mut scratch.distance, &mut scratch.found);
            grids[g].1.for_each_within(focus, reach, |slot, d| {
                mark[slot as usize] = epoch;
                distance[slot as usize] = d;
                found.push(slot);
            });
        }
        let (mark, dist) = (&mut scratch.mark, &scratch.distance);
        view.entries.retain_mut(|(slot, e)| {
            let s = *slot as usize;
            let near = if mark.get(s) == Some(&epoch) {
                mark[s] = epoch - 1;
                Some(dist[s])
            } else {
                None
            };
            if !visit(e, near, within.radius, || passes(data, *slot), bit) {
                return true;
            }
            update.keep(e, &meta[s], *slot, release)
        });
        // Region rows the view did not have (still marked) may enter.
        scratch.entering.clear();
        for &slot in &scratch.found {
            let s = slot as usize;
            if mark[s] == epoch && dist[s] <= within.radius && meta[s].live && passes(data, slot) {
                scratch.entering.push(slot);
            }
        }
        if !scratch.entering.is_empty() {
            scratch.entering.sort_unstable();
            let mut merged = Vec::with_capacity(view.entries.len() + scratch.entering.len());
            let mut old = std::mem::take(&mut view.entries).into_iter().peekable();
            for &slot in &scratch.entering {
                merged.extend(std::iter::from_fn(|| old.next_if(|(s, _)| *s < slot)));
                merged.push(update.enter(&meta[slot as usize], slot, bit, dist[slot as usize]));
            }
            merged.extend(old);
            view.entries = merged;
        }
    }
}

/// One view entry against its row's place in the region (`near`: its distance from the focus
/// if within `radius + margin`), for the subscription `bit` with its `radius`: a row in the
/// region stays, enters (within `radius`) or leaves by the query's condition; a row out of it
/// leaves. Returns false if the entry was not touched (out of the region and not in the
/// subscription), true if it must be settled.
fn visit(
    e: &mut ViewEntry,
    near: Option<f32>,
    radius: f32,
    passes: impl FnOnce() -> bool,
    bit: u32,
) -> bool {
    let inside_before = e.mask & (1 << bit) != 0;
    match near {
        Some(d) => {
            if (d <= radius || inside_before) && passes() {
                e.mask |= 1 << bit;
            } else {
                e.mask &= !(1 << bit);
            }
            e.distance = d;
        }
        None if inside_before => {
            e.mask &= !(1 << bit);
            e.distance = f32::INFINITY;
        }
        None => return false,
    }
    true
}

/// Dense per-slot scratch for spatial refreshes, shared by all clients.
#[derive(Default)]
pub(crate) struct RefreshScratch {
    /// Monotonic refresh counter; `mark[slot] == epoch` means "in the current region".
    epoch: u64,
    mark: Vec<u64>,
    distance: Vec<f32>,
    found: Vec<u32>,
    entering: Vec<u32>,
    /// Rows entering in an incremental refresh, with their distance.
    entering_at: Vec<(u32, f32)>,
    /// Spatial subscriptions refreshed in full, since start.
    pub(crate) full: u64,
    /// Spatial subscriptions refreshed incrementally, since start.
    pub(crate) incremental: u64,
}
