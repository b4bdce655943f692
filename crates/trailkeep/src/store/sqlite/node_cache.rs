//! Upper tree nodes kept in memory once read, for proofs.
//!
//! A proof reads about one node per level of its tenant's tree, and each
//! folded node lives in the row of the leaf that completed it, so a cold
//! proof touches one random `events` page per level. Nodes at level
//! [`MIN_LEVEL`] and above are few (about one per 128 leaves, all these
//! levels together) and shared by every proof under them, so they stay
//! here. Stored nodes never change, so an entry never goes stale.
//!
//! Nodes under a running server that are damaged on disk are found by
//! `fsck` at once (it checks every node against its children); this cache
//! keeps serving what it read until the server restarts or the node is
//! dropped.

use std::collections::HashMap;
use std::sync::Mutex;

use tlog::{Hash, NodeId};

/// Lowest level kept: one node per 256 leaves.
pub(super) const MIN_LEVEL: u8 = 8;
/// Most nodes held: 7/8 of 2^17, the load at which the map still has 2^17
/// slots of 57 bytes, so at most about 7 MiB (allocated once, touched as
/// it fills). Enough for every node of these levels in a store of about
/// 14 M events. A full cache drops its lowest level, which holds about
/// half of it and is shared by the fewest proofs.
pub(super) const MAX_ENTRIES: usize = 114_688;

/// Folded tree nodes of level [`MIN_LEVEL`] and above, by tenant.
#[derive(Debug)]
pub(super) struct NodeCache {
    map: Mutex<HashMap<(i64, u8, u64), Hash>>,
}

impl Default for NodeCache {
    fn default() -> Self {
        // Sized once, so the map never rehashes under its lock.
        Self {
            map: Mutex::new(HashMap::with_capacity(MAX_ENTRIES)),
        }
    }
}

impl NodeCache {
    /// The cached node, if any.
    pub(super) fn get(&self, tenant_id: i64, id: &NodeId) -> Option<Hash> {
        if id.level < MIN_LEVEL {
            return None;
        }
        self.lock().get(&(tenant_id, id.level, id.index)).copied()
    }

    /// Keeps a node read from the database, if its level is cached.
    pub(super) fn put(&self, tenant_id: i64, id: &NodeId, hash: Hash) {
        if id.level < MIN_LEVEL {
            return;
        }
        let mut map = self.lock();
        if map.len() >= MAX_ENTRIES {
            let lowest = map.keys().map(|k| k.1).min().unwrap_or(MIN_LEVEL);
            map.retain(|k, _| k.1 > lowest);
            // Should the lowest level be a small part, start over rather
            // than scan the whole map again a few inserts later.
            if map.len() > MAX_ENTRIES / 4 * 3 {
                map.clear();
            }
        }
        map.insert((tenant_id, id.level, id.index), hash);
    }

    /// How many nodes are held.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(i64, u8, u64), Hash>> {
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(level: u8, index: u64) -> NodeId {
        NodeId { level, index }
    }

    #[test]
    fn only_upper_levels_are_kept() {
        let c = NodeCache::default();
        c.put(1, &id(MIN_LEVEL - 1, 0), [1; 32]);
        c.put(1, &id(MIN_LEVEL, 0), [2; 32]);
        assert_eq!(c.get(1, &id(MIN_LEVEL - 1, 0)), None);
        assert_eq!(c.get(1, &id(MIN_LEVEL, 0)), Some([2; 32]));
        assert_eq!(c.get(2, &id(MIN_LEVEL, 0)), None, "nodes are per tenant");
        assert_eq!(c.len(), 1);
    }

    /// The upper nodes, which every proof below them shares, outlive a
    /// full cache.
    #[test]
    fn a_full_cache_drops_its_lowest_level() {
        let c = NodeCache::default();
        let half = MAX_ENTRIES as u64 / 2;
        for i in 0..half {
            c.put(1, &id(MIN_LEVEL, i), [3; 32]);
            c.put(1, &id(MIN_LEVEL + 1, i), [4; 32]);
        }
        assert_eq!(c.len(), MAX_ENTRIES);
        c.put(1, &id(MIN_LEVEL + 2, 0), [5; 32]);
        assert_eq!(c.len(), MAX_ENTRIES / 2 + 1);
        assert_eq!(c.get(1, &id(MIN_LEVEL, 0)), None);
        assert_eq!(c.get(1, &id(MIN_LEVEL + 1, 0)), Some([4; 32]));
        assert_eq!(c.get(1, &id(MIN_LEVEL + 2, 0)), Some([5; 32]));
    }

    /// When the lowest level is only a small part of a full cache, the
    /// cache starts over instead of scanning itself again soon after.
    #[test]
    fn a_full_cache_of_upper_levels_starts_over() {
        let c = NodeCache::default();
        c.put(1, &id(MIN_LEVEL, 0), [3; 32]);
        for i in 1..MAX_ENTRIES as u64 {
            c.put(1, &id(MIN_LEVEL + 1, i), [4; 32]);
        }
        assert_eq!(c.len(), MAX_ENTRIES);
        c.put(1, &id(MIN_LEVEL + 2, 0), [5; 32]);
        assert_eq!(c.len(), 1);
        assert_eq!(c.get(1, &id(MIN_LEVEL + 2, 0)), Some([5; 32]));
    }
}
