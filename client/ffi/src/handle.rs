//! Handles: what the C side holds instead of pointers. A handle is a slot index (low 32 bits)
//! and the slot's generation (high 32 bits); destroying a value bumps its slot's generation,
//! so a stale copy of the handle, a double destroy or a made-up number finds nothing instead
//! of freed memory. Handle 0 is never issued.

/// A slot: its current generation and its value, if live.
#[derive(Debug)]
struct Slot<T> {
    generation: u32,
    value: Option<T>,
}

/// Values addressed by generation-checked handles (see the module docs).
#[derive(Debug)]
pub struct HandleTable<T> {
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
}

impl<T> Default for HandleTable<T> {
    fn default() -> Self {
        HandleTable {
            slots: Vec::new(),
            free: Vec::new(),
        }
    }
}

fn split(handle: u64) -> (usize, u32) {
    ((handle & 0xffff_ffff) as usize, (handle >> 32) as u32)
}

impl<T> HandleTable<T> {
    /// An empty table.
    pub const fn new() -> Self {
        HandleTable {
            slots: Vec::new(),
            free: Vec::new(),
        }
    }

    /// Stores `value` and returns its handle (never 0). `None` when all 2³² slots are in use
    /// or retired.
    pub fn insert(&mut self, value: T) -> Option<u64> {
        let index = match self.free.pop() {
            Some(index) => index,
            None => {
                let index = u32::try_from(self.slots.len()).ok()?;
                self.slots.push(Slot {
                    generation: 1,
                    value: None,
                });
                index
            }
        };
        let slot = &mut self.slots[index as usize];
        slot.value = Some(value);
        Some((u64::from(slot.generation) << 32) | u64::from(index))
    }

    /// The value `handle` names, if it is live.
    pub fn get(&self, handle: u64) -> Option<&T> {
        let (index, generation) = split(handle);
        let slot = self.slots.get(index)?;
        if slot.generation == generation {
            slot.value.as_ref()
        } else {
            None
        }
    }

    /// Takes the value `handle` names out of the table; the handle (and every copy of it) is
    /// dead afterwards.
    pub fn remove(&mut self, handle: u64) -> Option<T> {
        let (index, generation) = split(handle);
        let slot = self.slots.get_mut(index)?;
        if slot.generation != generation {
            return None;
        }
        let value = slot.value.take()?;
        // A slot whose generation would wrap is retired, so no handle ever names two values.
        if let Some(next) = slot.generation.checked_add(1) {
            slot.generation = next;
            self.free.push(index as u32);
        }
        Some(value)
    }

    /// How many values are live.
    pub fn len(&self) -> usize {
        self.slots.iter().filter(|s| s.value.is_some()).count()
    }

    /// Whether no value is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_and_forged_handles_find_nothing() {
        let mut table = HandleTable::new();
        let a = table.insert("a").unwrap();
        assert_ne!(a, 0);
        assert_eq!(table.get(a), Some(&"a"));
        assert_eq!(table.remove(a), Some("a"));
        assert_eq!(table.get(a), None, "use after destroy");
        assert_eq!(table.remove(a), None, "double destroy");
        // The slot is reused under a new generation: the old handle still finds nothing.
        let b = table.insert("b").unwrap();
        assert_eq!(b & 0xffff_ffff, a & 0xffff_ffff);
        assert_ne!(b, a);
        assert_eq!(table.get(a), None);
        assert_eq!(table.get(b), Some(&"b"));
        for forged in [0, 1, u64::MAX, b + 1, b ^ (1 << 40)] {
            assert_eq!(table.get(forged), None, "{forged:#x}");
        }
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn a_slot_at_the_last_generation_is_retired() {
        let mut table = HandleTable::new();
        let h = table.insert(1).unwrap();
        table.slots[0].generation = u32::MAX;
        let h_max = (u64::from(u32::MAX) << 32) | (h & 0xffff_ffff);
        assert_eq!(table.remove(h_max), Some(1));
        assert!(table.free.is_empty());
        let next = table.insert(2).unwrap();
        assert_eq!(next & 0xffff_ffff, 1, "a fresh slot, not the retired one");
        assert!(table.is_empty() || table.len() == 1);
    }
}
