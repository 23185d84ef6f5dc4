//! A reconcile queue in the manner of client-go's workqueue: keys are deduplicated, a
//! key is never handed to two workers at once, and keys can be scheduled for later.
//!
//! The scheduler reconciles one WorkItem per key, so the cost of a change is the cost
//! of the keys it touches — never a pass over the whole queue.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

struct Inner<K> {
    ready: VecDeque<K>,
    queued: HashSet<K>,
    processing: HashSet<K>,
    /// Keys added while being processed: requeued when their worker is done.
    dirty: HashSet<K>,
    later: BTreeMap<(Instant, u64), K>,
    later_index: HashMap<K, (Instant, u64)>,
    seq: u64,
}

pub struct ReconcileQueue<K> {
    inner: Mutex<Inner<K>>,
    notify: Notify,
}

impl<K: Clone + Eq + Hash + Send + 'static> ReconcileQueue<K> {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Inner {
                ready: VecDeque::new(),
                queued: HashSet::new(),
                processing: HashSet::new(),
                dirty: HashSet::new(),
                later: BTreeMap::new(),
                later_index: HashMap::new(),
                seq: 0,
            }),
            notify: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<K>> {
        // A panic while holding the lock leaves plain collections behind; keep going.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes `key` ready now.
    pub fn add(&self, key: K) {
        let mut q = self.lock();
        if let Some(at) = q.later_index.remove(&key) {
            q.later.remove(&at);
        }
        if q.processing.contains(&key) {
            q.dirty.insert(key);
            return;
        }
        if q.queued.insert(key.clone()) {
            q.ready.push_back(key);
            drop(q);
            self.notify.notify_one();
        }
    }

    /// Makes `key` ready after `delay`, unless it is already due sooner.
    pub fn add_after(&self, key: K, delay: Duration) {
        if delay.is_zero() {
            return self.add(key);
        }
        let at = Instant::now() + delay;
        let mut q = self.lock();
        if q.queued.contains(&key) {
            return;
        }
        if let Some(existing) = q.later_index.get(&key) {
            if existing.0 <= at {
                return;
            }
            let existing = *existing;
            q.later.remove(&existing);
        }
        q.seq += 1;
        let slot = (at, q.seq);
        q.later.insert(slot, key.clone());
        q.later_index.insert(key, slot);
        drop(q);
        // Wake a waiter so it recomputes its sleep deadline.
        self.notify.notify_one();
    }

    /// Waits for the next ready key and marks it processing; call `done` after.
    pub async fn next(&self) -> K {
        loop {
            let wait_until = {
                let mut q = self.lock();
                let now = Instant::now();
                while let Some((&slot, _)) = q.later.first_key_value() {
                    if slot.0 > now {
                        break;
                    }
                    if let Some(key) = q.later.remove(&slot) {
                        q.later_index.remove(&key);
                        if q.processing.contains(&key) {
                            q.dirty.insert(key);
                        } else if q.queued.insert(key.clone()) {
                            q.ready.push_back(key);
                        }
                    }
                }
                if let Some(key) = q.ready.pop_front() {
                    q.queued.remove(&key);
                    q.processing.insert(key.clone());
                    // Others may be waiting for the rest of the ready keys.
                    if !q.ready.is_empty() {
                        self.notify.notify_one();
                    }
                    return key;
                }
                q.later.first_key_value().map(|(slot, _)| slot.0)
            };
            match wait_until {
                Some(at) => {
                    tokio::select! {
                        _ = self.notify.notified() => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
                None => self.notify.notified().await,
            }
        }
    }

    /// Marks `key` finished; if it was added meanwhile it becomes ready again.
    pub fn done(&self, key: &K) {
        let mut q = self.lock();
        q.processing.remove(key);
        if q.dirty.remove(key) && q.queued.insert(key.clone()) {
            q.ready.push_back(key.clone());
            drop(q);
            self.notify.notify_one();
        }
    }

    /// Keys ready or scheduled (for metrics).
    pub fn len(&self) -> usize {
        let q = self.lock();
        q.ready.len() + q.later.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn duplicate_adds_are_delivered_once() {
        let q = ReconcileQueue::new();
        q.add("a");
        q.add("a");
        q.add("b");
        assert_eq!(q.next().await, "a");
        assert_eq!(q.next().await, "b");
        assert!(q.is_empty());
    }

    #[tokio::test]
    async fn a_key_added_while_processing_comes_back_after_done() {
        let q = ReconcileQueue::new();
        q.add("a");
        let k = q.next().await;
        q.add("a");
        assert!(q.is_empty(), "not handed out twice while processing");
        q.done(&k);
        assert_eq!(q.next().await, "a");
    }

    #[tokio::test(start_paused = true)]
    async fn delayed_keys_arrive_in_time_order_and_earliest_wins() {
        let q = ReconcileQueue::new();
        q.add_after("late", Duration::from_secs(10));
        q.add_after("soon", Duration::from_secs(5));
        q.add_after("late", Duration::from_secs(2));
        let start = Instant::now();
        assert_eq!(q.next().await, "late");
        assert!(start.elapsed() >= Duration::from_secs(2));
        assert_eq!(q.next().await, "soon");
        assert!(start.elapsed() >= Duration::from_secs(5));
    }

    #[tokio::test]
    async fn add_now_overrides_a_later_schedule() {
        let q = ReconcileQueue::new();
        q.add_after("a", Duration::from_secs(3600));
        q.add("a");
        assert_eq!(q.next().await, "a");
        q.done(&"a");
        assert!(q.is_empty());
    }
}
