//! Orrery patch: a map from channel id to channel, stored in a `Vec` indexed by the id.
//!
//! A connection has a handful of channels with small ids, and every message sent or received
//! looks its channel up. With `std::collections::HashMap` (SipHash) each lookup hashed the id
//! and probed a separate heap table: for a server holding thousands of connections, whose
//! state is cold in cache each tick, the probe was the most expensive instruction of the
//! network workers. Indexing by id is one bounds check and one load.

/// Channels by id (`None` for ids the connection does not use).
#[derive(Debug)]
pub(crate) struct ChannelMap<T> {
    slots: Vec<Option<T>>,
}

impl<T> ChannelMap<T> {
    pub(crate) fn new() -> Self {
        Self { slots: Vec::new() }
    }

    /// Puts `channel` at `id`, returning the channel that was there.
    pub(crate) fn insert(&mut self, id: u8, channel: T) -> Option<T> {
        let index = usize::from(id);
        if self.slots.len() <= index {
            self.slots.resize_with(index + 1, || None);
        }
        self.slots[index].replace(channel)
    }

    #[inline]
    pub(crate) fn get(&self, id: &u8) -> Option<&T> {
        self.slots.get(usize::from(*id))?.as_ref()
    }

    #[inline]
    pub(crate) fn get_mut(&mut self, id: &u8) -> Option<&mut T> {
        self.slots.get_mut(usize::from(*id))?.as_mut()
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &T> {
        self.slots.iter().flatten()
    }

    pub(crate) fn values_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.slots.iter_mut().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::ChannelMap;

    #[test]
    fn channels_are_found_by_id() {
        let mut map = ChannelMap::new();
        assert!(map.get(&0).is_none());
        assert!(map.insert(3, "three").is_none());
        assert!(map.insert(0, "zero").is_none());
        assert_eq!(map.insert(3, "drei"), Some("three"));
        assert_eq!(map.get(&3), Some(&"drei"));
        assert_eq!(map.get(&0), Some(&"zero"));
        assert!(map.get(&1).is_none() && map.get(&200).is_none());
        *map.get_mut(&0).unwrap() = "null";
        assert!(map.get_mut(&255).is_none());
        assert_eq!(map.values().copied().collect::<Vec<_>>(), ["null", "drei"]);
        assert_eq!(map.values_mut().count(), 2);
    }
}
