//! Shared queries: identical non-spatial queries (same text, and same sender where the query
//! depends on it) are evaluated once per tick and shared by all their subscribers, reference
//! counted and freed with their last subscriber.

use orrery_row::{ConnectionId, Identity};
use rustc_hash::FxHashSet;

use crate::mirror::MirrorTable;
use crate::publisher::Publisher;
use crate::sql::Condition;
use crate::view::EntryUpdate;

/// A shared query's key: its canonical text, and the sender when the query depends on it
/// (`:sender`, owner tables).
pub(crate) type SharedKey = (String, Option<Identity>);

/// A non-spatial query evaluated once per tick for all its subscribers: the slots it selects.
pub(crate) struct SharedQuery {
    pub(crate) table: u32,
    pub(crate) condition: Option<Condition>,
    pub(crate) sender: Identity,
    pub(crate) members: FxHashSet<u32>,
    /// (client, bit of the client's view of this table).
    pub(crate) subscribers: Vec<(ConnectionId, u32)>,
}

impl Publisher {
    /// Re-evaluates the rows of `table` changed this tick against its shared queries and
    /// updates every subscriber's view; event rows die afterwards.
    pub(crate) fn evaluate_shared(&mut self, table: u32) {
        let Some(Some(t)) = self.tables.get_mut(table as usize) else {
            return;
        };
        let changed = std::mem::take(&mut t.changed);
        let tick = self.tick;
        let event = t.schema.event;
        for &slot in &changed {
            let live = t.meta[slot as usize].live;
            for key in &t.shared {
                let Some(query) = self.shared.get_mut(key) else {
                    continue;
                };
                let was = query.members.contains(&slot);
                let is = live
                    && query.condition.as_ref().is_none_or(|c| {
                        c.matches(MirrorTable::values(&t.data, &t.schema, slot), query.sender)
                    });
                match (was, is) {
                    (false, true) => {
                        query.members.insert(slot);
                    }
                    (true, false) => {
                        query.members.remove(&slot);
                    }
                    (false, false) => continue,
                    (true, true) => {}
                }
                for &(client_id, bit) in &query.subscribers {
                    if let Some(client) = self.clients.get_mut(&client_id) {
                        let meta = &t.meta[slot as usize];
                        let view = &mut client.views[table as usize];
                        let mut update = EntryUpdate {
                            table,
                            event,
                            tick,
                            dirty: &mut client.dirty,
                        };
                        if update.touch(view, meta, slot, bit, is, 0.0) {
                            t.release.push(slot);
                        }
                    }
                }
            }
        }
        // Event rows live for the tick that produced them only: until the end of the next
        // publish, whose spatial refresh must still find them in the grids.
        if event {
            t.events
                .extend(changed.iter().filter(|&&s| t.meta[s as usize].live));
        }
        t.release.extend_from_slice(&changed);
        t.release_pending();
    }

    /// Ends the event rows of the tick just published: no longer live, out of the grids and the
    /// shared queries, released once no view holds them.
    pub(crate) fn retire_events(&mut self) {
        for t in self.tables.iter_mut().flatten() {
            let events = std::mem::take(&mut t.events);
            for &slot in &events {
                if !t.meta[slot as usize].live {
                    continue;
                }
                t.meta[slot as usize].live = false;
                t.remove_from_grids(slot);
                for key in &t.shared {
                    if let Some(query) = self.shared.get_mut(key) {
                        query.members.remove(&slot);
                    }
                }
            }
            t.release.extend_from_slice(&events);
            t.release_pending();
        }
    }

    /// Drops one subscription (`client`, `bit`) from a shared query; the same client may hold
    /// the same query under other ids, which stay.
    pub(crate) fn release_shared(&mut self, key: &SharedKey, client: ConnectionId, bit: u32) {
        let Some(query) = self.shared.get_mut(key) else {
            return;
        };
        query.subscribers.retain(|&(c, b)| (c, b) != (client, bit));
        if query.subscribers.is_empty() {
            let table = query.table;
            self.shared.remove(key);
            if let Some(Some(t)) = self.tables.get_mut(table as usize) {
                t.shared.retain(|k| k != key);
            }
        }
    }
}
