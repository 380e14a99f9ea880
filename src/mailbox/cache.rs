//! A bounded cache of decrypted messages (least recently used goes first), so a mail client
//! that fetches the same message several times pays for decryption once.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::crypto::ObjectId;

#[derive(Debug)]
pub struct Cache {
    budget: usize,
    used: usize,
    map: HashMap<ObjectId, (Arc<Vec<u8>>, u64)>,
    /// (object, generation) in use order; stale pairs are skipped on eviction.
    order: VecDeque<(ObjectId, u64)>,
    generation: u64,
}

impl Cache {
    pub fn new(budget: usize) -> Cache {
        Cache {
            budget,
            used: 0,
            map: HashMap::new(),
            order: VecDeque::new(),
            generation: 0,
        }
    }

    pub fn get(&mut self, id: &ObjectId) -> Option<Arc<Vec<u8>>> {
        self.generation += 1;
        let g = self.generation;
        let (bytes, gen_slot) = self.map.get_mut(id)?;
        *gen_slot = g;
        let out = Arc::clone(bytes);
        self.order.push_back((*id, g));
        self.compact();
        Some(out)
    }

    pub fn insert(&mut self, id: ObjectId, bytes: Arc<Vec<u8>>) {
        if bytes.len() > self.budget / 4 {
            return; // one huge message must not flush everything else
        }
        self.generation += 1;
        let g = self.generation;
        self.used += bytes.len();
        if let Some((old, _)) = self.map.insert(id, (bytes, g)) {
            self.used -= old.len();
        }
        self.order.push_back((id, g));
        while self.used > self.budget {
            let Some((victim, vg)) = self.order.pop_front() else {
                break;
            };
            if self.map.get(&victim).is_some_and(|(_, cur)| *cur == vg)
                && let Some((b, _)) = self.map.remove(&victim)
            {
                self.used -= b.len();
            }
        }
        self.compact();
    }

    /// Keeps the order queue from growing without bound under repeated hits.
    fn compact(&mut self) {
        if self.order.len() > 4 * self.map.len() + 64 {
            let map = &self.map;
            self.order
                .retain(|(id, g)| map.get(id).is_some_and(|(_, cur)| cur == g));
        }
    }

    pub fn used(&self) -> usize {
        self.used
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used_within_budget() {
        let mut c = Cache::new(100);
        let id = |n: u8| ObjectId([n; 32]);
        c.insert(id(1), Arc::new(vec![0; 20]));
        c.insert(id(2), Arc::new(vec![0; 20]));
        c.insert(id(3), Arc::new(vec![0; 20]));
        assert!(c.get(&id(1)).is_some()); // 1 is now most recent
        c.insert(id(4), Arc::new(vec![0; 20]));
        c.insert(id(5), Arc::new(vec![0; 20]));
        c.insert(id(6), Arc::new(vec![0; 20])); // over budget: 2 goes first
        assert!(c.used() <= 100);
        assert!(c.get(&id(2)).is_none());
        assert!(c.get(&id(1)).is_some());
        c.insert(id(7), Arc::new(vec![0; 60])); // over a quarter of the budget: not cached
        assert!(c.get(&id(7)).is_none());
        for _ in 0..1000 {
            c.get(&id(1));
        }
        assert!(c.order.len() <= 4 * c.map.len() + 64);
    }
}
