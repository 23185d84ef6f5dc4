//! In-memory indexes over the scheduler's WorkItem watch, updated per event in O(1):
//! per-queue counts by phase, who depends on whom, and which items belong to which
//! request. They let one change cost O(changed objects), never a pass over a queue.
//! Dependency-cycle walks are bounded by a limit on the items they look at.

use std::collections::{HashMap, HashSet, VecDeque};

use jiff::Timestamp;

use crate::api::{Phase, WorkItem, labels};
use crate::core::cycle::{self, ItemCycle};
use crate::core::phase::effective_phase;

/// (namespace, name)
pub type Key = (String, String);

#[derive(Clone, Debug, PartialEq)]
struct Entry {
    queue: Option<String>,
    phase: Phase,
    request: Option<String>,
    depends_on: Vec<String>,
    created: Option<Timestamp>,
    /// Queued by an explicit status (admitted), not merely claimable as created.
    admitted: bool,
}

impl Entry {
    fn of(item: &WorkItem) -> Self {
        Self {
            queue: item.effective_queue().map(str::to_owned),
            phase: effective_phase(item),
            request: item
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(labels::REQUEST))
                .cloned(),
            depends_on: item.spec.depends_on.clone(),
            created: item.metadata.creation_timestamp.as_ref().map(|t| t.0),
            admitted: item.phase() == Some(Phase::Queued),
        }
    }
}

/// Counts of one queue's items by phase.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PhaseCounts(pub [i64; 9]);

impl PhaseCounts {
    fn slot(phase: Phase) -> usize {
        Phase::ALL.iter().position(|p| *p == phase).unwrap_or(0)
    }
    pub fn get(&self, phase: Phase) -> i64 {
        self.0[Self::slot(phase)]
    }
    fn add(&mut self, phase: Phase, n: i64) {
        self.0[Self::slot(phase)] += n;
    }
}

#[derive(Default)]
pub struct ItemIndex {
    entries: HashMap<Key, Entry>,
    per_queue: HashMap<Key, PhaseCounts>,
    admitted: HashMap<Key, i64>,
    dependents: HashMap<Key, HashSet<String>>,
    request_items: HashMap<Key, HashSet<String>>,
}

impl ItemIndex {
    fn key(item: &WorkItem) -> Option<Key> {
        Some((
            item.metadata.namespace.clone()?,
            item.metadata.name.clone()?,
        ))
    }

    /// Records the item's current state; returns what changed for the caller to enqueue.
    pub fn apply(&mut self, item: &WorkItem) -> Option<Change> {
        let key = Self::key(item)?;
        let entry = Entry::of(item);
        let old = self.entries.get(&key).cloned();
        if old.as_ref() == Some(&entry) {
            return Some(Change {
                key,
                phase_changed: false,
                request: entry.request,
                old_request: None,
            });
        }
        if let Some(old) = &old {
            self.unlink(&key, old);
        }
        self.link(&key, &entry);
        let phase_changed = old.as_ref().map(|o| o.phase) != Some(entry.phase);
        let old_request = old
            .and_then(|o| o.request)
            .filter(|r| Some(r) != entry.request.as_ref());
        self.entries.insert(key.clone(), entry.clone());
        Some(Change {
            key,
            phase_changed,
            request: entry.request,
            old_request,
        })
    }

    pub fn remove(&mut self, item: &WorkItem) -> Option<Change> {
        let key = Self::key(item)?;
        let old = self.entries.remove(&key)?;
        self.unlink(&key, &old);
        Some(Change {
            key,
            phase_changed: true,
            request: old.request,
            old_request: None,
        })
    }

    /// Forgets everything (a relist follows).
    pub fn clear(&mut self) {
        *self = Self::default();
    }

    fn link(&mut self, key: &Key, e: &Entry) {
        if let Some(q) = &e.queue {
            self.per_queue
                .entry((key.0.clone(), q.clone()))
                .or_default()
                .add(e.phase, 1);
            if e.admitted {
                *self.admitted.entry((key.0.clone(), q.clone())).or_default() += 1;
            }
        }
        for dep in &e.depends_on {
            self.dependents
                .entry((key.0.clone(), dep.clone()))
                .or_default()
                .insert(key.1.clone());
        }
        if let Some(r) = &e.request {
            self.request_items
                .entry((key.0.clone(), r.clone()))
                .or_default()
                .insert(key.1.clone());
        }
    }

    fn unlink(&mut self, key: &Key, e: &Entry) {
        if let Some(q) = &e.queue {
            let qk = (key.0.clone(), q.clone());
            if let Some(c) = self.per_queue.get_mut(&qk) {
                c.add(e.phase, -1);
                if c.0.iter().all(|n| *n == 0) {
                    self.per_queue.remove(&qk);
                }
            }
            if e.admitted
                && let Some(n) = self.admitted.get_mut(&qk)
            {
                *n -= 1;
                if *n <= 0 {
                    self.admitted.remove(&qk);
                }
            }
        }
        for dep in &e.depends_on {
            let dk = (key.0.clone(), dep.clone());
            if let Some(set) = self.dependents.get_mut(&dk) {
                set.remove(&key.1);
                if set.is_empty() {
                    self.dependents.remove(&dk);
                }
            }
        }
        if let Some(r) = &e.request {
            let rk = (key.0.clone(), r.clone());
            if let Some(set) = self.request_items.get_mut(&rk) {
                set.remove(&key.1);
                if set.is_empty() {
                    self.request_items.remove(&rk);
                }
            }
        }
    }

    pub fn queue_counts(&self, namespace: &str, queue: &str) -> PhaseCounts {
        self.per_queue
            .get(&(namespace.to_owned(), queue.to_owned()))
            .cloned()
            .unwrap_or_default()
    }

    /// Items of the queue Queued by the scheduler's admission (explicit status).
    pub fn admitted(&self, namespace: &str, queue: &str) -> i64 {
        self.admitted
            .get(&(namespace.to_owned(), queue.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    pub fn dependents(&self, namespace: &str, name: &str) -> Vec<String> {
        self.dependents
            .get(&(namespace.to_owned(), name.to_owned()))
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Items that depend on `name` directly or through others, without `name` itself,
    /// at most `limit` of them, nearest first.
    pub fn transitive_dependents(&self, namespace: &str, name: &str, limit: usize) -> Vec<String> {
        let mut seen: HashSet<&str> = HashSet::from([name]);
        let mut out = Vec::new();
        let mut todo = VecDeque::from([name.to_owned()]);
        while let Some(n) = todo.pop_front() {
            let Some(set) = self.dependents.get(&(namespace.to_owned(), n)) else {
                continue;
            };
            for d in set {
                if out.len() >= limit {
                    return out;
                }
                if seen.insert(d.as_str()) {
                    out.push(d.clone());
                    todo.push_back(d.clone());
                }
            }
        }
        out
    }

    /// A dependency cycle `name` is on or waits on, looking at no more than `limit`
    /// items. Only items that themselves wait on dependencies (Pending, or Queued with a
    /// `dependsOn` the scheduler will look at again) pass a wait on; running, finished and
    /// unknown items end the walk.
    pub fn dependency_cycle(&self, namespace: &str, name: &str, limit: usize) -> Option<ItemCycle> {
        let waits_on = |n: &str| -> &[String] {
            self.entries
                .get(&(namespace.to_owned(), n.to_owned()))
                .filter(|e| matches!(e.phase, Phase::Pending | Phase::Queued))
                .map_or(&[], |e| e.depends_on.as_slice())
        };
        cycle::find(name, waits_on, limit)
    }

    pub fn request_items(&self, namespace: &str, request: &str) -> Vec<String> {
        self.request_items
            .get(&(namespace.to_owned(), request.to_owned()))
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Items of one queue in a phase, with their creation time (for age and position).
    pub fn in_phase(
        &self,
        namespace: &str,
        queue: &str,
        phase: Phase,
    ) -> Vec<(String, Option<Timestamp>)> {
        self.entries
            .iter()
            .filter(|((ns, _), e)| {
                ns == namespace && e.queue.as_deref() == Some(queue) && e.phase == phase
            })
            .map(|((_, name), e)| (name.clone(), e.created))
            .collect()
    }
}

/// What one event changed.
pub struct Change {
    pub key: Key,
    pub phase_changed: bool,
    pub request: Option<String>,
    pub old_request: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn item(name: &str, queue: &str, phase: Option<&str>, deps: &[&str]) -> WorkItem {
        let mut v = json!({
            "metadata": {"name": name, "namespace": "ns", "labels": {"triad.dev/request": "r"}},
            "spec": {"queue": queue, "dependsOn": deps},
        });
        if let Some(p) = phase {
            v["status"] = json!({"phase": p});
        }
        serde_json::from_value(v).expect("item")
    }

    #[test]
    fn counts_follow_phase_changes_and_deletes() {
        let mut idx = ItemIndex::default();
        idx.apply(&item("a", "q", None, &[]));
        idx.apply(&item("b", "q", Some("Running"), &[]));
        assert_eq!(
            idx.queue_counts("ns", "q").get(Phase::Queued),
            1,
            "no status counts as Queued"
        );
        assert_eq!(idx.queue_counts("ns", "q").get(Phase::Running), 1);
        idx.apply(&item("a", "q", Some("Running"), &[]));
        assert_eq!(idx.queue_counts("ns", "q").get(Phase::Queued), 0);
        assert_eq!(idx.queue_counts("ns", "q").get(Phase::Running), 2);
        idx.remove(&item("b", "q", Some("Running"), &[]));
        assert_eq!(idx.queue_counts("ns", "q").get(Phase::Running), 1);
    }

    #[test]
    fn dependents_and_request_members_are_indexed() {
        let mut idx = ItemIndex::default();
        idx.apply(&item("b", "q", None, &["a"]));
        idx.apply(&item("c", "q", None, &["a"]));
        let mut deps = idx.dependents("ns", "a");
        deps.sort();
        assert_eq!(deps, vec!["b", "c"]);
        assert_eq!(idx.request_items("ns", "r").len(), 2);
        idx.remove(&item("b", "q", None, &["a"]));
        assert_eq!(idx.dependents("ns", "a"), vec!["c"]);
    }

    #[test]
    fn cycles_are_found_over_waiting_items_only() {
        let mut idx = ItemIndex::default();
        idx.apply(&item("a", "q", None, &["b"]));
        assert_eq!(
            idx.dependency_cycle("ns", "a", 100),
            None,
            "b does not exist"
        );
        idx.apply(&item("b", "q", None, &["a"]));
        idx.apply(&item("c", "q", None, &["a"]));
        assert!(matches!(
            idx.dependency_cycle("ns", "b", 100),
            Some(ItemCycle::On { path }) if path == ["b", "a", "b"]
        ));
        assert!(matches!(
            idx.dependency_cycle("ns", "c", 100),
            Some(ItemCycle::Behind { .. })
        ));
        assert_eq!(
            idx.dependency_cycle("other", "b", 100),
            None,
            "per namespace"
        );
        // b running no longer waits on a: nothing is stuck.
        idx.apply(&item("b", "q", Some("Running"), &["a"]));
        assert_eq!(idx.dependency_cycle("ns", "a", 100), None);
        idx.apply(&item("b", "q", Some("Pending"), &["a"]));
        // Breaking the cycle by editing dependsOn.
        idx.apply(&item("a", "q", Some("Pending"), &[]));
        assert_eq!(idx.dependency_cycle("ns", "b", 100), None);
        assert_eq!(idx.dependency_cycle("ns", "c", 100), None);
    }

    #[test]
    fn transitive_dependents_are_bounded_and_exclude_the_start() {
        let mut idx = ItemIndex::default();
        idx.apply(&item("a", "q", None, &["b"]));
        idx.apply(&item("b", "q", None, &["a"]));
        idx.apply(&item("c", "q", None, &["a"]));
        idx.apply(&item("d", "q", None, &["c"]));
        let mut all = idx.transitive_dependents("ns", "a", 100);
        all.sort();
        assert_eq!(all, ["b", "c", "d"]);
        assert_eq!(idx.transitive_dependents("ns", "a", 2).len(), 2);
        assert!(idx.transitive_dependents("ns", "d", 100).is_empty());
    }

    #[test]
    fn a_pending_item_with_dependencies_is_not_counted_as_queued() {
        let mut idx = ItemIndex::default();
        idx.apply(&item("b", "q", None, &["a"]));
        assert_eq!(idx.queue_counts("ns", "q").get(Phase::Pending), 1);
        assert_eq!(idx.queue_counts("ns", "q").get(Phase::Queued), 0);
    }
}
