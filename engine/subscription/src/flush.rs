//! Flushing a client: spend its byte budget on its dirty view entries, most urgent first,
//! turning each into an upsert, a (shared) delta or a delete record, batched per table into
//! payloads no larger than the configured message size.

use orrery_row::ConnectionId;
use orrery_row::codec::write_varint;
use orrery_row::wire::{EVENT_HANDLE, WireLayout};

use crate::client_state::{ClientState, SubKind};
use crate::config::MESSAGE_FRAMING_BYTES;
use crate::mirror::{MirrorTable, NO_INLINE_DELTA};
use crate::publisher::{Outgoing, SentCounters};
use crate::view::{Dirty, ViewEntry, kill};

/// How near the focus a row of a spatial subscription must be to count as the row the focus
/// follows (a player's own avatar: the module moves it and sets the focus to where it now is).
pub(crate) const FOCUS_ROW_RADIUS: f32 = 0.5;

/// The priority of a dirty entry: older and nearer first, deletes twice as urgent, rows with
/// news `news_urgency` times (`PublishConfig::news_urgency`; 1 for rows without).
fn priority(e: &ViewEntry, tick: u64, news_urgency: f32) -> f32 {
    let age = ((tick as u32).wrapping_sub(e.since) + 1) as f32;
    let urgency = if e.dirty == Dirty::Delete {
        2.0
    } else {
        news_urgency
    };
    urgency * age / (1.0 + e.distance.min(1.0e6) / 32.0)
}

/// An ascending sort key for a priority `score` (higher first): the order-preserving map of
/// the float's bits, inverted. Scores are finite and non-negative.
pub(crate) fn rank(score: f32) -> u32 {
    let bits = score.to_bits();
    let ordered = if bits >> 31 == 0 {
        bits | 1 << 31
    } else {
        !bits
    };
    !ordered
}

/// One publish worker's flush of its clients: the tables to send from (shared by all workers)
/// and what the sends feed (the worker's own).
pub(crate) struct Flush<'a> {
    /// The mirror, by table id.
    pub(crate) tables: &'a [Option<MirrorTable>],
    /// The publisher's tick sequence.
    pub(crate) tick: u64,
    /// Largest payload before it is split into another message.
    pub(crate) max_message: usize,
    /// Budget charged per flush that sends anything (the datagram around the messages).
    pub(crate) wire_overhead: f64,
    /// `PublishConfig::news_urgency`.
    pub(crate) news_urgency: f32,
    /// `PublishConfig::rebase`.
    pub(crate) rebase: bool,
    /// `PublishConfig::bound_flush_bytes`, at most what a client can bank.
    pub(crate) bound_flush: f64,
    /// Records and bytes handed out.
    pub(crate) counters: &'a mut SentCounters,
    /// Buffers reused across clients.
    pub(crate) scratch: &'a mut FlushScratch,
    /// Slots of dead rows whose last entry may have gone, by table id: freed after the workers
    /// are joined.
    pub(crate) release: &'a mut [Vec<u32>],
    /// Where payloads go, in client order.
    pub(crate) out: &'a mut Vec<Outgoing>,
}

/// Buffers reused by every client's flush.
#[derive(Default)]
pub(crate) struct FlushScratch {
    /// `(rank, table, slot, position in the view)`; see [`rank`].
    candidates: Vec<(u32, u32, u32, u32)>,
    payloads: Vec<(u32, Vec<u8>)>,
    /// Bits of the client's spatial subscriptions, by table.
    spatial_bits: Vec<u32>,
}

impl Flush<'_> {
    /// Spends `client`'s budget on its dirty entries, most urgent first (stale and close to
    /// the focus); what the budget does not reach stays queued for the next publish.
    pub(crate) fn client(&mut self, client_id: ConnectionId, client: &mut ClientState) {
        let Flush {
            tables,
            tick,
            max_message,
            wire_overhead,
            news_urgency,
            rebase,
            bound_flush,
            counters,
            scratch,
            release,
            out,
        } = self;
        let (tick, max_message, wire_overhead, news_urgency, rebase) =
            (*tick, *max_message, *wire_overhead, *news_urgency, *rebase);
        if client.dirty.is_empty() {
            return;
        }
        let candidates = &mut scratch.candidates;
        candidates.clear();
        // Per table, the bits of the client's spatial subscriptions: only their rows have a
        // distance (rows of other subscriptions carry 0).
        let spatial = &mut scratch.spatial_bits;
        spatial.clear();
        spatial.resize(client.views.len(), 0);
        for sub in &client.subs {
            if let (SubKind::Spatial(_), Some(bits)) =
                (&sub.kind, spatial.get_mut(sub.table as usize))
            {
                *bits |= 1 << sub.bit;
            }
        }
        let at_focus = |table: u32, e: &ViewEntry| {
            e.distance < FOCUS_ROW_RADIUS
                && e.mask & spatial.get(table as usize).copied().unwrap_or(0) != 0
        };
        // A client the budget cannot keep up with is ranked again once it has accrued
        // `bound_flush` since its last full flush (accrued, not banked: the focus row's sends
        // must not keep it from ever getting there); until then only the row its focus follows
        // goes out.
        let focus_only = client.bound && client.accrued_since_flush < *bound_flush;
        if focus_only {
            let Some((table, slot)) = client.focus_row else {
                return;
            };
            let Some(view) = client.views.get(table as usize) else {
                return;
            };
            match view.find(slot) {
                Ok(position)
                    if view.entries[position].1.dirty != Dirty::Clean
                        && at_focus(table, &view.entries[position].1) =>
                {
                    candidates.push((rank(f32::MAX), table, slot, position as u32));
                }
                _ => return,
            }
        } else {
            client.accrued_since_flush = 0.0;
        }
        // A cheap estimate of what sending everything would cost (each entry's last record size);
        // when the budget covers it, the queue goes out in its (deterministic) order unranked.
        let mut estimate = 0f64;
        let mut focus_row = None;
        let mut consider = |table: u32, slot: u32, position: usize, e: &ViewEntry| {
            // The row the focus follows (the player's own avatar) goes before everything
            // else: a budget that cannot carry the whole view would otherwise rank it barely
            // above its neighbours and show a player its own moves seconds late.
            let at_focus = at_focus(table, e);
            if at_focus {
                focus_row = Some((table, slot));
            }
            if e.dirty == Dirty::Clean {
                return;
            }
            let score = if at_focus {
                f32::MAX
            } else {
                priority(e, tick, 1.0)
            };
            candidates.push((rank(score), table, slot, position as u32));
            estimate += if e.last_size == 0 {
                64.0
            } else {
                f64::from(e.last_size)
            };
        };
        let viewed: usize = client.views.iter().map(|v| v.entries.len()).sum();
        let scan = client.dirty.len() * 4 >= viewed;
        if focus_only {
            // The one candidate is chosen above.
        } else if scan {
            // Most of the view is queued (a client the budget cannot keep up with): one pass over
            // the views beats a binary search per queued entry. Every dirty entry is queued, so
            // both ways find the same set.
            for (table, view) in client.views.iter().enumerate() {
                for (position, (slot, e)) in view.entries.iter().enumerate() {
                    consider(table as u32, *slot, position, e);
                }
            }
        } else {
            for &(table, slot) in &client.dirty {
                let view = &client.views[table as usize];
                if let Ok(position) = view.find(slot) {
                    consider(table, slot, position, &view.entries[position].1);
                }
            }
        }
        if !focus_only {
            client.bound = estimate > client.budget;
            // A scan sees every entry, so it also finds a clean focus row, or none; a pass
            // over the queue only sees queued ones, so it keeps the last one found (which the
            // focus-only path checks is still at the focus).
            if scan || focus_row.is_some() {
                client.focus_row = focus_row;
            }
        }
        if client.bound && !focus_only {
            // Rows with news (a column other than the quantized ones changed since the
            // version the client holds) move up: motion a client can follow by interpolating
            // while the budget refreshes rows in turns, a turn or a hit it cannot. Looked up only here: a client the budget
            // covers takes its whole queue, and the lookup is a random load per entry.
            let at_focus_rank = rank(f32::MAX);
            for candidate in candidates.iter_mut() {
                let (table, slot, position) = (candidate.1, candidate.2, candidate.3);
                let e = &client.views[table as usize].entries[position as usize].1;
                if candidate.0 == at_focus_rank || e.dirty != Dirty::Upsert || e.sent() == 0 {
                    continue;
                }
                let news = tables
                    .get(table as usize)
                    .and_then(Option::as_ref)
                    .and_then(|t| t.meta.get(slot as usize))
                    .is_some_and(|meta| meta.salient > e.sent());
                if news {
                    candidate.0 = rank(priority(e, tick, news_urgency));
                }
            }
            // Most urgent first: stale entries, then near ones; ties by table and row (plain
            // integer tuples: this sort runs for every budget-bound client every tick).
            // Only what the budget can reach needs an order (twice as many entries as the budget
            // covers at their average last size, for records that grew): select those, sort
            // them; the rest stays queued.
            let average = estimate / candidates.len() as f64;
            let reach = (2.0 * client.budget.max(0.0) / average).ceil() as usize + 8;
            if reach < candidates.len() {
                candidates.select_nth_unstable(reach);
                candidates[..reach].sort_unstable();
            } else {
                candidates.sort_unstable();
            }
        }
        // Touch each candidate's inline delta header first: these loads are independent, so
        // their cache misses overlap here instead of stalling the send loop one by one (slots are
        // spread over the whole table; this was a third of the flush time).
        let mut touched = 0u64;
        for &(_, table, slot, _) in candidates.iter() {
            if let Some(Some(t)) = tables.get(table as usize)
                && let Some(stored) = t.inline.get(slot as usize)
            {
                touched ^= stored.from;
            }
        }
        std::hint::black_box(touched);
        let payloads = &mut scratch.payloads;
        let first_message = out.len();
        let mut sent_count = 0;
        // Tables whose views had entries killed (bit per table id; ids from 63 up share a bit).
        let mut killed = 0u64;
        for &(_, table, slot, position) in candidates.iter() {
            if client.budget <= 0.0 {
                break;
            }
            sent_count += 1;
            let Some(Some(t)) = tables.get(table as usize) else {
                continue;
            };
            // Entries are only marked dead during a flush, never moved: positions stay valid.
            let view = &mut client.views[table as usize];
            let e = &mut view.entries[position as usize].1;
            let index = match payloads.iter().position(|(t, _)| *t == table) {
                Some(index) => index,
                None => {
                    payloads.push((table, Vec::with_capacity(256)));
                    payloads.len() - 1
                }
            };
            if payloads[index].1.len() >= max_message {
                let full = std::mem::replace(&mut payloads[index].1, Vec::with_capacity(256));
                out.push(Outgoing {
                    client: client_id,
                    table,
                    payload: full,
                });
            }
            let payload = &mut payloads[index].1;
            let before = payload.len();
            let meta = &t.meta[slot as usize];
            match e.dirty {
                Dirty::Clean => continue,
                Dirty::Delete => {
                    counters.deletes += 1;
                    WireLayout::delete_record(e.handle, payload);
                    view.handles.take_back(e.handle);
                    kill(e, meta, slot, &mut release[table as usize]);
                    killed |= 1 << table.min(63);
                }
                Dirty::Upsert => {
                    let stored = &t.inline[slot as usize];
                    let sent = e.sent();
                    // A delta goes to a client holding an older version of the row, under the
                    // handle it knows the row by: the handle, then the shared bytes.
                    let mut delta = false;
                    if sent != 0 && sent == stored.from && stored.len != NO_INLINE_DELTA {
                        delta = true;
                        if stored.len > 0 {
                            counters.deltas += 1;
                            write_varint(payload, u64::from(e.handle));
                            payload.extend_from_slice(&stored.bytes[..stored.len as usize]);
                        }
                    } else if sent != 0 {
                        let d = &t.data[slot as usize];
                        write_varint(payload, u64::from(e.handle));
                        match d.append_delta_from(&t.layout, sent, payload) {
                            Some(true) => {
                                counters.deltas += 1;
                                delta = true;
                            }
                            Some(false) => {
                                payload.truncate(before);
                                delta = true;
                            }
                            // Too far behind for the history (a budget-bound client refreshes
                            // a moving row every few dozen ticks): the columns changed since
                            // its version, whole, instead of the whole row. An avatar's walk
                            // costs a few bytes this way, where the full row repeats its
                            // owner and name.
                            None => match d.changed_since(sent).filter(|_| rebase) {
                                Some(0) => {
                                    payload.truncate(before);
                                    delta = true;
                                }
                                Some(mask)
                                    if t.layout.rebase_body(
                                        (&d.wire, &d.bounds),
                                        mask,
                                        payload,
                                    ) =>
                                {
                                    counters.deltas += 1;
                                    delta = true;
                                }
                                _ => payload.truncate(before),
                            },
                        }
                    }
                    if !delta {
                        let d = &t.data[slot as usize];
                        counters.upserts += 1;
                        let handle = if t.schema.event {
                            EVENT_HANDLE
                        } else if sent == 0 {
                            e.handle = view.handles.give();
                            e.handle
                        } else {
                            e.handle
                        };
                        t.layout.upsert_record(handle, &d.pk, &d.wire, payload);
                    }
                    if t.schema.event {
                        kill(e, meta, slot, &mut release[table as usize]);
                        killed |= 1 << table.min(63);
                    } else {
                        e.set_sent(meta.version);
                        e.dirty = Dirty::Clean;
                    }
                }
            }
            let bytes = payload.len() - before;
            e.last_size = u16::try_from(bytes).unwrap_or(u16::MAX);
            counters.bytes += bytes as u64;
            client.budget -= bytes as f64;
        }
        if killed != 0 {
            for (table, view) in client.views.iter_mut().enumerate() {
                if killed & (1 << table.min(63)) != 0 {
                    view.entries.retain(|(_, e)| !e.is_dead());
                }
            }
        }
        for (table, payload) in payloads.drain(..) {
            if !payload.is_empty() {
                out.push(Outgoing {
                    client: client_id,
                    table,
                    payload,
                });
            }
        }
        // The wire around the records: their messages' framing and the datagram. Charged after
        // the fact (the budget may go below zero, and the next publish sends that much less),
        // so the budget bounds the client's downstream on average, not only its rows.
        let messages = out.len() - first_message;
        if messages > 0 {
            let framing = f64::from(MESSAGE_FRAMING_BYTES) * messages as f64;
            client.budget -= wire_overhead + framing;
        }
        if focus_only {
            // The queue stays as it was (the focus row's entry, now clean, is skipped when
            // the queue is next considered).
            return;
        }
        // What was not reached stays queued, once: an entry that went clean and dirty again
        // between flushes can have been queued twice (a scan of the views finds each entry once).
        client.dirty.clear();
        client.dirty.extend(
            candidates[sent_count..]
                .iter()
                .map(|&(_, table, slot, _)| (table, slot)),
        );
        if !scan && client.dirty.len() > 1 {
            client.dirty.sort_unstable();
            client.dirty.dedup();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::rank;

    #[test]
    fn rank_sorts_higher_scores_first() {
        let scores = [0.0f32, 1.0e-30, 0.5, 1.0, 1.5, 2.0, 1.0e6, f32::MAX];
        for pair in scores.windows(2) {
            assert!(rank(pair[1]) < rank(pair[0]), "{pair:?}");
        }
        assert_eq!(rank(3.25), rank(3.25));
    }
}
