//! Folding one table's changes of a tick into its mirror ([`apply_changes`]), with the
//! per-row work spread over the publish workers.
//!
//! A change has three parts. Finding (or allocating) its row's slot and placing the row in the
//! grids touch state every row shares (the key maps, the free list, grid cells), so they run
//! on the calling thread, in change order. Storing the row's new version (wire encoding, the
//! delta from the version before, the history) touches only that row's slot, so with workers
//! the batch's upserts are sorted by slot and split into runs of slots that workers store at
//! once (`rayon::join` over disjoint halves of the per-slot arrays). A row changed twice in
//! one batch (deleted and inserted again in one tick) ends the batch there, so every slot is
//! stored at most once per batch and the outcome is that of applying the changes one by one,
//! whatever the worker count.

use glam::Vec3;
use orrery_engine::{ChangeKind, RowChange};

use crate::mirror::{EncodeScratch, MirrorTable, SlotArrays, StoreContext};

/// Runs a closure with the encode scratch of the calling pool thread.
pub(crate) type WithScratch<'w> = &'w (dyn Fn(&mut dyn FnMut(&mut EncodeScratch)) + Sync);

/// The publish workers, as [`apply_changes`] uses them.
pub(crate) struct ApplyWorkers<'w> {
    pub(crate) pool: &'w rayon::ThreadPool,
    pub(crate) with_scratch: WithScratch<'w>,
    /// Upserts one worker stores without splitting further; batches of at most twice this
    /// many are stored on the calling thread.
    pub(crate) run: usize,
}

/// One change of a batch, in change order.
#[derive(Clone, Copy)]
enum Step {
    Delete(u32),
    /// Index into the batch's upserts.
    Upsert(u32),
}

/// An upsert of a batch.
struct Upsert<'c> {
    slot: u32,
    /// Its place among the batch's steps.
    step: u32,
    exact: &'c [u8],
    stored: bool,
}

/// A batch of changes whose slots are all different.
#[derive(Default)]
struct Batch<'c> {
    steps: Vec<Step>,
    upserts: Vec<Upsert<'c>>,
    /// Each upsert's position in each grid (`upserts.len() × grids`).
    positions: Vec<Option<Vec3>>,
}

/// Folds `changes` (one table's, in order) into `t` at `tick`, queueing every changed row for
/// re-evaluation against the shared queries. `scratch` serves the calling thread.
pub(crate) fn apply_changes<'c>(
    t: &mut MirrorTable,
    changes: impl Iterator<Item = RowChange<'c>>,
    tick: u64,
    scratch: &mut EncodeScratch,
    workers: Option<&ApplyWorkers<'_>>,
) {
    let mut batch = Batch::default();
    t.batch_epoch += 1;
    for change in changes {
        let (slot, upsert) = match (change.kind, change.row) {
            (ChangeKind::Delete, _) => match t.find(change.pk, change.entity) {
                Some(slot) => (slot, None),
                None => continue,
            },
            (_, Some(row)) => {
                // A new row, or one on an entity the entity map does not know, changes the key
                // maps: check that it encodes first, as a lone upsert does, so that a row that
                // does not match the schema changes nothing.
                let mapped = match change.entity {
                    Some(_) => t.by_entity(change.entity).is_some(),
                    None => t.find(change.pk, None).is_some(),
                };
                if !mapped && !t.split(tick).0.encode(row, scratch) {
                    continue;
                }
                (t.resolve(change.pk, change.entity), Some(row))
            }
            (_, None) => continue,
        };
        let s = slot as usize;
        if t.batch_marks.len() <= s {
            t.batch_marks.resize(t.data.len().max(s + 1), 0);
        }
        if t.batch_marks[s] == t.batch_epoch {
            finish(t, &mut batch, tick, scratch, workers);
            t.batch_epoch += 1;
        }
        t.batch_marks[s] = t.batch_epoch;
        let step = batch.steps.len() as u32;
        match upsert {
            None => batch.steps.push(Step::Delete(slot)),
            Some(exact) => {
                batch.steps.push(Step::Upsert(batch.upserts.len() as u32));
                batch.upserts.push(Upsert {
                    slot,
                    step,
                    exact,
                    stored: false,
                });
            }
        }
    }
    finish(t, &mut batch, tick, scratch, workers);
}

/// Stores the batch's rows, then deletes and places them in change order, and empties it.
fn finish(
    t: &mut MirrorTable,
    batch: &mut Batch<'_>,
    tick: u64,
    scratch: &mut EncodeScratch,
    workers: Option<&ApplyWorkers<'_>>,
) {
    let grids = t.grids.len();
    batch.positions.clear();
    batch.positions.resize(batch.upserts.len() * grids, None);
    {
        let (store, slots) = t.split(tick);
        match workers {
            Some(workers) if batch.upserts.len() > 2 * workers.run => {
                batch.upserts.sort_unstable_by_key(|u| u.slot);
                for (i, u) in batch.upserts.iter().enumerate() {
                    batch.steps[u.step as usize] = Step::Upsert(i as u32);
                }
                workers.pool.install(|| {
                    store_split(
                        &store,
                        &mut batch.upserts,
                        &mut batch.positions,
                        slots,
                        workers,
                    )
                });
            }
            _ => {
                let mut slots = slots;
                store_run(
                    &store,
                    &mut batch.upserts,
                    &mut batch.positions,
                    &mut slots,
                    scratch,
                );
            }
        }
    }
    for step in batch.steps.drain(..) {
        match step {
            Step::Delete(slot) => t.delete_slot(slot, tick),
            Step::Upsert(i) => {
                let i = i as usize;
                let u = &batch.upserts[i];
                if u.stored {
                    t.place(u.slot, &batch.positions[i * grids..(i + 1) * grids]);
                    t.changed.push(u.slot);
                }
            }
        }
    }
    batch.upserts.clear();
}

/// Stores `upserts` (sorted by slot, all within `slots`) on the pool, halving the run until
/// it is short enough for one worker.
fn store_split(
    store: &StoreContext<'_>,
    upserts: &mut [Upsert<'_>],
    positions: &mut [Option<Vec3>],
    slots: SlotArrays<'_>,
    workers: &ApplyWorkers<'_>,
) {
    if upserts.len() <= workers.run {
        let mut slots = slots;
        (workers.with_scratch)(&mut |scratch| {
            store_run(store, upserts, positions, &mut slots, scratch);
        });
        return;
    }
    let mid = upserts.len() / 2;
    let (left, right) = upserts.split_at_mut(mid);
    let (left_positions, right_positions) = positions.split_at_mut(mid * store.grids());
    let (left_slots, right_slots) = slots.split_at(right[0].slot);
    rayon::join(
        || store_split(store, left, left_positions, left_slots, workers),
        || store_split(store, right, right_positions, right_slots, workers),
    );
}

/// Stores `upserts` (each with its `positions`, all within `slots`) with `scratch`.
fn store_run(
    store: &StoreContext<'_>,
    upserts: &mut [Upsert<'_>],
    positions: &mut [Option<Vec3>],
    slots: &mut SlotArrays<'_>,
    scratch: &mut EncodeScratch,
) {
    let grids = store.grids();
    for (i, u) in upserts.iter_mut().enumerate() {
        let positions = &mut positions[i * grids..(i + 1) * grids];
        u.stored = store.store(u.exact, slots.parts(u.slot), scratch, positions);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bevy_ecs::entity::Entity;
    use glam::Vec2;
    use orrery_row::{
        ColumnSchema, Durability, IndexKind, IndexSchema, TableSchema, TypeDesc, Value, Visibility,
    };
    use std::sync::Mutex;

    fn schema() -> TableSchema {
        let column = |name: &str, ty| ColumnSchema {
            name: name.into(),
            ty,
            auto_inc: false,
            quantize: None,
        };
        TableSchema {
            id: 0,
            name: "mob".into(),
            rust_type: "Mob".into(),
            columns: vec![
                column("id", TypeDesc::U32),
                column("pos", TypeDesc::Vec2),
                column("hp", TypeDesc::I32),
            ],
            primary_key: 0,
            indexes: vec![
                IndexSchema {
                    column: "id".into(),
                    kind: IndexKind::Primary,
                },
                IndexSchema {
                    column: "pos".into(),
                    kind: IndexKind::Spatial { cell: 10.0 },
                },
            ],
            visibility: Visibility::Public,
            durability: Durability::Durable,
            event: false,
            scheduled: None,
        }
    }

    /// An owned change: (kind, pk, row, entity).
    type Owned = (ChangeKind, Vec<u8>, Option<Vec<u8>>, Option<Entity>);

    /// A tick's worth of changes over few keys, so that rows are deleted, put back and
    /// changed twice within one tick, with a row that does not match the schema now and then.
    fn changes(state: &mut u64, schema: &TableSchema) -> Vec<Owned> {
        let mut next = |n: u64| {
            *state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (*state >> 33) % n
        };
        (0..60)
            .map(|_| {
                let id = next(40) as u32;
                let pk = orrery_row::encode_row(
                    &TableSchema {
                        columns: schema.columns[..1].to_vec(),
                        ..schema.clone()
                    },
                    &[Value::Unsigned(u64::from(id))],
                )
                .unwrap();
                let entity = (next(3) > 0).then(|| Entity::from_raw_u32(id + 1).unwrap());
                match next(8) {
                    0 => (ChangeKind::Delete, pk, None, entity),
                    1 => (ChangeKind::Update, pk, Some(vec![0xff]), entity),
                    kind => {
                        let pos = Vec2::new(next(100) as f32, next(100) as f32);
                        let row = orrery_row::encode_row(
                            schema,
                            &[
                                Value::Unsigned(u64::from(id)),
                                Value::Vec2(pos),
                                Value::Signed(next(5) as i64),
                            ],
                        )
                        .unwrap();
                        let kind = if kind == 2 {
                            ChangeKind::Insert
                        } else {
                            ChangeKind::Update
                        };
                        (kind, pk, Some(row), entity)
                    }
                }
            })
            .collect()
    }

    fn borrowed(changes: &[Owned]) -> impl Iterator<Item = RowChange<'_>> {
        changes.iter().map(|(kind, pk, row, entity)| RowChange {
            kind: *kind,
            pk,
            row: row.as_deref(),
            entity: *entity,
        })
    }

    /// What applying changes leaves in a table, slot by slot.
    fn state(t: &MirrorTable) -> Vec<String> {
        let mut out: Vec<String> = (0..t.data.len())
            .map(|s| {
                let (d, m, i) = (&t.data[s], &t.meta[s], &t.inline[s]);
                let history: Vec<u64> = d.history.iter().map(|v| v.version).collect();
                format!(
                    "{s}: pk {:?} live {} v {} salient {} exact {:?} wire {:?} history \
                     {history:?} changed_at {:?} inline {}/{}/{:?} at {:?}",
                    d.pk,
                    m.live,
                    m.version,
                    m.salient,
                    d.exact,
                    d.wire,
                    d.changed_at,
                    i.len,
                    i.from,
                    &i.bytes[..usize::from(i.len).min(i.bytes.len())],
                    t.grids[0].1.distance(s as u32, Vec3::ZERO),
                )
            })
            .collect();
        out.push(format!("free {:?} changed {:?}", t.free, t.changed));
        let mut keys: Vec<(Vec<u8>, u32)> = t
            .data
            .iter()
            .enumerate()
            .filter(|(_, d)| d.allocated)
            .map(|(s, d)| (d.pk.to_vec(), s as u32))
            .collect();
        keys.sort();
        out.push(format!("keys {keys:?}"));
        out
    }

    /// Batches, split by slot over workers or not, leave every table as applying the changes
    /// one at a time does, tick after tick.
    #[test]
    fn batched_and_parallel_apply_match_one_change_at_a_time() {
        let schema = schema();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let scratches: Vec<Mutex<EncodeScratch>> = (0..2)
            .map(|_| Mutex::new(EncodeScratch::default()))
            .collect();
        let with_scratch = |f: &mut dyn FnMut(&mut EncodeScratch)| {
            let index = rayon::current_thread_index().unwrap_or(0);
            f(&mut scratches[index].lock().unwrap());
        };
        let workers = ApplyWorkers {
            pool: &pool,
            with_scratch: &with_scratch,
            run: 1,
        };
        let mut one_by_one = MirrorTable::new(&schema);
        let mut serial = MirrorTable::new(&schema);
        let mut parallel = MirrorTable::new(&schema);
        let mut scratch = EncodeScratch::default();
        let mut state_seed = 5u64;
        let mut freed = 0;
        for tick in 1..200u64 {
            let changes = changes(&mut state_seed, &schema);
            for change in borrowed(&changes) {
                match change.row {
                    None => {
                        if let Some(slot) = one_by_one.find(change.pk, change.entity) {
                            one_by_one.delete_slot(slot, tick);
                        }
                    }
                    Some(row) => {
                        one_by_one.upsert(change.pk, row, true, change.entity, tick, &mut scratch)
                    }
                }
            }
            apply_changes(&mut serial, borrowed(&changes), tick, &mut scratch, None);
            apply_changes(
                &mut parallel,
                borrowed(&changes),
                tick,
                &mut scratch,
                Some(&workers),
            );
            let expected = state(&one_by_one);
            assert_eq!(state(&serial), expected, "tick {tick}: batched");
            assert_eq!(state(&parallel), expected, "tick {tick}: parallel");
            // What a publish does after applying: free the slots of deleted rows.
            for t in [&mut one_by_one, &mut serial, &mut parallel] {
                t.changed.clear();
                for slot in 0..t.data.len() as u32 {
                    t.free_if_unused(slot);
                }
            }
            freed = freed.max(one_by_one.free.len());
        }
        assert!(freed > 0, "some deleted rows' slots were freed and reused");
    }
}
