//! Spatial views: each publish, a client's `within(col, :focus, r)` subscriptions are
//! refreshed against the mirror's grids around its focus, with enter/leave hysteresis so that
//! rows at the edge do not flap.

use crate::client_state::{ClientState, SubKind};
use crate::mirror::{MirrorTable, SlotData};
use crate::view::EntryUpdate;

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
            meta,
            data,
            schema,
            ..
        } = t;
        // Mark the region's rows in dense per-slot arrays (which stay in cache) instead of
        // sorting them: the view is walked once in its own (slot) order against the marks.
        scratch.epoch += 1;
        let epoch = scratch.epoch;
        if scratch.mark.len() < meta.len() {
            scratch.mark.resize(meta.len(), 0);
            scratch.distance.resize(meta.len(), 0.0);
        }
        scratch.found.clear();
        if let (Some(focus), Some((_, grid))) =
            (focus, grids.iter().find(|(c, _)| *c == within.column))
        {
            let (mark, distance, found) =
                (&mut scratch.mark, &mut scratch.distance, &mut scratch.found);
            grid.for_each_within(focus, within.radius + margin, |slot, d| {
                mark[slot as usize] = epoch;
                distance[slot as usize] = d;
                found.push(slot);
            });
        }
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
        let (mark, dist) = (&mut scratch.mark, &scratch.distance);
        view.entries.retain_mut(|(slot, e)| {
            let s = *slot as usize;
            let inside_before = e.mask & (1 << bit) != 0;
            if mark.get(s) == Some(&epoch) {
                // In the region: stays or enters (hysteresis), or leaves by the condition.
                mark[s] = epoch - 1;
                let d = dist[s];
                if (d <= within.radius || inside_before) && passes(data, *slot) {
                    e.mask |= 1 << bit;
                } else {
                    e.mask &= !(1 << bit);
                }
                e.distance = d;
            } else if inside_before {
                // Not in the region (radius + margin): left.
                e.mask &= !(1 << bit);
                e.distance = f32::INFINITY;
            } else {
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

/// Dense per-slot scratch for spatial refreshes, shared by all clients.
#[derive(Default)]
pub(crate) struct RefreshScratch {
    /// Monotonic refresh counter; `mark[slot] == epoch` means "in the current region".
    epoch: u64,
    mark: Vec<u64>,
    distance: Vec<f32>,
    found: Vec<u32>,
    entering: Vec<u32>,
}
