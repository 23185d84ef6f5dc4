//! The candidate set: a slim cache of the items on the agent's queues, fed by field-
//! selected watches, and the choice of what to try to claim next.
//!
//! Per queue there are two watches, `spec.queue=<q>` and `status.queue=<q>` (the
//! scheduler's routing writes `status.queue`, which overrides `spec.queue`), never a
//! watch of the whole namespace. Each watch keeps its own store so a relist replaces
//! exactly what that watch saw; readers merge the stores by name, newest
//! resourceVersion first. Items are kept slim (no payload, result, history…), so the
//! cache's memory does not grow with payloads: the full item arrives only in the
//! claim's response.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::StreamExt;
use jiff::Timestamp;
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use rand::Rng;
use tokio::sync::Notify;

use super::config::QueueWeight;
use crate::api::{Phase, WorkItem, WorkQueue};
use crate::core::{ordering, phase};

/// What the agent needs to know about one of its WorkQueues.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueInfo {
    pub max_in_flight: Option<i32>,
    pub aging_seconds: i64,
}

impl QueueInfo {
    fn of(q: &WorkQueue) -> Self {
        QueueInfo {
            max_in_flight: q.spec.max_in_flight,
            aging_seconds: q.spec.aging_seconds,
        }
    }
}

/// Without a WorkQueue object the agent assumes the queue's defaults: no in-flight
/// limit and aging one point per second.
const DEFAULT_QUEUE: QueueInfo = QueueInfo {
    max_in_flight: None,
    aging_seconds: 1,
};

/// Longest condition message kept in the cache; only types and reasons matter here.
const MAX_CONDITION_MESSAGE: usize = 256;

/// Strips everything the candidate choice and the held-item checks do not read.
pub fn slim(mut item: WorkItem) -> WorkItem {
    let meta = &mut item.metadata;
    meta.managed_fields = None;
    meta.annotations = None;
    meta.labels = None;
    meta.owner_references = None;
    meta.finalizers = None;
    item.spec.payload = None;
    item.spec.budget.clear();
    // Only "has dependencies" matters for claimability.
    item.spec.depends_on.truncate(1);
    if let Some(s) = item.status.as_mut() {
        s.waiting = None;
        s.progress = None;
        s.usage.clear();
        s.budget_extension.clear();
        s.result = None;
        s.outcome = None;
        s.last_error = None;
        s.attempts.clear();
        s.interventions.clear();
        s.started_at = None;
        s.finished_at = None;
        for c in &mut s.conditions {
            if c.message.len() > MAX_CONDITION_MESSAGE {
                c.message = super::report::cut(&c.message, MAX_CONDITION_MESSAGE);
            }
        }
    }
    item
}

/// Whether `item` may be claimed from `queue` now.
///
/// On a queue with `maxInFlight` an item without status is not claimable: the
/// scheduler admits such items (phase Queued) only while the queue has room, so agents
/// never need to count what runs. Otherwise the core rule applies (fast path, or
/// Queued with retryAt and notBefore passed; never when cancelled).
pub fn claimable(item: &WorkItem, queue: &str, info: Option<&QueueInfo>, now: Timestamp) -> bool {
    if item.effective_queue() != Some(queue) {
        return false;
    }
    let info = info.copied().unwrap_or(DEFAULT_QUEUE);
    if info.max_in_flight.is_some() && item.phase().is_none() {
        return false;
    }
    phase::is_claimable(item, now)
}

/// resourceVersions are opaque, but the API server's are etcd revisions: compare them
/// as numbers when they are, else treat the later-seen one as newer.
pub fn is_newer(candidate: &WorkItem, than: &WorkItem) -> bool {
    let rv = |i: &WorkItem| {
        i.metadata
            .resource_version
            .as_deref()
            .and_then(|v| v.parse::<u64>().ok())
    };
    match (rv(candidate), rv(than)) {
        (Some(a), Some(b)) => a > b,
        _ => candidate.metadata.resource_version != than.metadata.resource_version,
    }
}

#[derive(Default)]
struct Store {
    items: HashMap<String, WorkItem>,
    /// Objects of a relist in progress; swapped in at InitDone.
    relist: Option<HashMap<String, WorkItem>>,
    synced: bool,
}

/// The watch-fed state the run loop reads.
#[derive(Default)]
pub struct Cache {
    stores: Vec<Store>,
    queues: HashMap<String, QueueInfo>,
    queues_synced: bool,
    /// When this agent first saw each claimable item claimable (claim latency).
    first_seen: HashMap<String, Instant>,
}

/// One pick: the queue and the candidates to try, in order.
pub struct Pick {
    pub queue: String,
    pub order: Vec<WorkItem>,
}

impl Cache {
    pub fn new(streams: usize) -> Self {
        Cache {
            stores: (0..streams).map(|_| Store::default()).collect(),
            ..Default::default()
        }
    }

    pub fn synced(&self) -> bool {
        self.queues_synced && self.stores.iter().all(|s| s.synced)
    }

    /// The freshest copy of one item across the watches.
    pub fn get(&self, name: &str) -> Option<&WorkItem> {
        let mut best: Option<&WorkItem> = None;
        for item in self.stores.iter().filter_map(|s| s.items.get(name)) {
            if best.is_none_or(|b| is_newer(item, b)) {
                best = Some(item);
            }
        }
        best
    }

    fn merged(&self) -> HashMap<&str, &WorkItem> {
        let mut all: HashMap<&str, &WorkItem> = HashMap::new();
        for (name, item) in self.stores.iter().flat_map(|s| s.items.iter()) {
            match all.get(name.as_str()) {
                Some(existing) if !is_newer(item, existing) => {}
                _ => {
                    all.insert(name, item);
                }
            }
        }
        all
    }

    fn apply_item(&mut self, stream: usize, event: Event<WorkItem>) {
        let Some(store) = self.stores.get_mut(stream) else {
            return;
        };
        match event {
            Event::Apply(item) => {
                if let Some(name) = item.metadata.name.clone() {
                    store.items.insert(name, slim(item));
                }
            }
            Event::Delete(item) => {
                if let Some(name) = item.metadata.name.as_deref() {
                    store.items.remove(name);
                }
            }
            Event::Init => store.relist = Some(HashMap::new()),
            Event::InitApply(item) => {
                if let (Some(relist), Some(name)) =
                    (store.relist.as_mut(), item.metadata.name.clone())
                {
                    relist.insert(name, slim(item));
                }
            }
            Event::InitDone => {
                if let Some(relist) = store.relist.take() {
                    store.items = relist;
                }
                store.synced = true;
            }
        }
    }

    fn apply_queue(&mut self, wanted: &[QueueWeight], event: Event<WorkQueue>) {
        fn name_if_wanted<'a>(q: &'a WorkQueue, wanted: &[QueueWeight]) -> Option<&'a str> {
            q.metadata
                .name
                .as_deref()
                .filter(|n| wanted.iter().any(|w| w.name == *n))
        }
        let wanted = |q| name_if_wanted(q, wanted);
        match event {
            Event::Apply(q) | Event::InitApply(q) => {
                if let Some(name) = wanted(&q) {
                    self.queues.insert(name.to_owned(), QueueInfo::of(&q));
                }
            }
            Event::Delete(q) => {
                if let Some(name) = wanted(&q) {
                    self.queues.remove(name);
                }
            }
            // A relist re-applies every queue; entries of deleted queues fall back to
            // the defaults, which is what a missing queue means anyway.
            Event::Init => self.queues.clear(),
            Event::InitDone => self.queues_synced = true,
        }
    }

    /// Chooses a queue by weight among those with claimable items, then orders that
    /// queue's best `top_k` candidates randomly, so agents spread over the head of the
    /// queue instead of racing for one item. Items in `skip` at the resourceVersion
    /// recorded there (a lost race, our own last claim) are left out until they change.
    pub fn pick(
        &mut self,
        queues: &[QueueWeight],
        skip: &HashMap<String, String>,
        top_k: usize,
        now: Timestamp,
        seen_at: Instant,
        rng: &mut impl Rng,
    ) -> Option<Pick> {
        let merged = self.merged();
        let mut per_queue: Vec<Vec<&WorkItem>> = vec![Vec::new(); queues.len()];
        let mut first_seen = HashMap::new();
        for (name, item) in merged {
            let Some(qi) = queues
                .iter()
                .position(|q| item.effective_queue() == Some(q.name.as_str()))
            else {
                continue;
            };
            let queue = &queues[qi].name;
            if !claimable(item, queue, self.queues.get(queue), now) {
                continue;
            }
            let seen = self.first_seen.get(name).copied().unwrap_or(seen_at);
            first_seen.insert(name.to_owned(), seen);
            if skip.get(name).map(String::as_str) == item.metadata.resource_version.as_deref() {
                continue;
            }
            per_queue[qi].push(item);
        }
        let weighted: Vec<ordering::WeightedQueue> = queues
            .iter()
            .zip(&per_queue)
            .map(|(q, items)| ordering::WeightedQueue {
                weight: q.weight,
                has_work: !items.is_empty(),
            })
            .collect();
        let pick = ordering::weighted_queue_pick(&weighted, rng).map(|qi| {
            let items = &per_queue[qi];
            let queue = &queues[qi].name;
            let aging = self
                .queues
                .get(queue)
                .copied()
                .unwrap_or(DEFAULT_QUEUE)
                .aging_seconds;
            let candidates: Vec<ordering::Candidate<'_>> =
                items.iter().map(|i| ordering::Candidate::of(i)).collect();
            let order = ordering::claim_order(&candidates, top_k, aging, now, rng);
            Pick {
                queue: queue.clone(),
                order: order.into_iter().map(|i| items[i].clone()).collect(),
            }
        });
        self.first_seen = first_seen;
        pick
    }

    /// When the item was first seen claimable (for the claim-latency histogram).
    pub fn first_seen(&self, name: &str) -> Option<Instant> {
        self.first_seen.get(name).copied()
    }

    /// Records "first seen claimable" at event time, so the latency includes the time
    /// the agent was busy with another item.
    fn note_claimable(
        &mut self,
        queues: &[QueueWeight],
        stream: usize,
        name: &str,
        now: Timestamp,
    ) {
        let Some(item) = self.stores.get(stream).and_then(|s| s.items.get(name)) else {
            return;
        };
        let Some(queue) = item.effective_queue() else {
            return;
        };
        if queues.iter().any(|q| q.name == queue)
            && claimable(item, queue, self.queues.get(queue), now)
        {
            self.first_seen
                .entry(name.to_owned())
                .or_insert_with(Instant::now);
        }
    }
}

pub type SharedCache = Arc<Mutex<Cache>>;

/// Locks the cache; a panic elsewhere while holding the lock leaves plain data behind,
/// so a poisoned lock is still usable.
pub fn lock(cache: &SharedCache) -> std::sync::MutexGuard<'_, Cache> {
    cache.lock().unwrap_or_else(|p| p.into_inner())
}

/// The watches for `queues`: two per queue (spec.queue and status.queue), plus one on
/// the namespace's WorkQueues. Each runs until the returned handles are aborted.
pub fn spawn_watches(
    items: Api<WorkItem>,
    queues_api: Api<WorkQueue>,
    queues: Vec<QueueWeight>,
    cache: SharedCache,
    changed: Arc<Notify>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    let mut stream = 0;
    for q in &queues {
        for field in ["spec.queue", "status.queue"] {
            let selector = format!("{field}={}", q.name);
            let config = watcher::Config::default().fields(&selector);
            let (cache, changed, queues, index) =
                (cache.clone(), changed.clone(), queues.clone(), stream);
            let api = items.clone();
            tasks.push(tokio::spawn(async move {
                let mut events = watcher::watcher(api, config).default_backoff().boxed();
                while let Some(event) = events.next().await {
                    match event {
                        Ok(event) => {
                            let name = match &event {
                                Event::Apply(i) => i.metadata.name.clone(),
                                _ => None,
                            };
                            let mut c = lock(&cache);
                            c.apply_item(index, event);
                            if let Some(name) = name {
                                c.note_claimable(&queues, index, &name, Timestamp::now());
                            }
                            drop(c);
                            changed.notify_one();
                        }
                        Err(err) => tracing::warn!(%err, selector = %selector, "work item watch failed; retrying"),
                    }
                }
            }));
            stream += 1;
        }
    }
    tasks.push(tokio::spawn(async move {
        let mut events = watcher::watcher(queues_api, watcher::Config::default())
            .default_backoff()
            .boxed();
        while let Some(event) = events.next().await {
            match event {
                Ok(event) => {
                    lock(&cache).apply_queue(&queues, event);
                    changed.notify_one();
                }
                Err(err) => tracing::warn!(%err, "work queue watch failed; retrying"),
            }
        }
    }));
    tasks
}

/// Number of watch streams [`spawn_watches`] feeds for `queues` (the cache's size).
pub fn item_streams(queues: &[QueueWeight]) -> usize {
    queues.len() * 2
}

/// The item is no longer ours: a newer epoch (fenced out), or the same epoch under
/// another agent, or it left Running (cancelled, finished) without us.
pub fn fenced(view: &WorkItem, agent: &str, epoch: i64) -> bool {
    let Some(status) = view.status.as_ref() else {
        return false;
    };
    let Some(claim) = status.claim.as_ref() else {
        return false;
    };
    if claim.epoch > epoch {
        return true;
    }
    // An older epoch is a view from before our own claim arrived: no news.
    claim.epoch == epoch && (claim.agent != agent || status.phase != Some(Phase::Running))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Claim, WorkItemSpec, WorkItemStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_893_456_000 + s).unwrap()
    }

    fn item(name: &str, queue: &str, priority: i32, rv: u64) -> WorkItem {
        let mut wi = WorkItem::new(
            name,
            WorkItemSpec {
                queue: Some(queue.into()),
                priority,
                ..Default::default()
            },
        );
        wi.metadata.resource_version = Some(rv.to_string());
        wi.metadata.creation_timestamp = Some(Time(t(0)));
        wi
    }

    fn queued(mut wi: WorkItem) -> WorkItem {
        wi.status = Some(WorkItemStatus {
            phase: Some(Phase::Queued),
            ..Default::default()
        });
        wi
    }

    fn qs(list: &[(&str, i32)]) -> Vec<QueueWeight> {
        list.iter()
            .map(|(n, w)| QueueWeight {
                name: (*n).into(),
                weight: *w,
            })
            .collect()
    }

    fn cache_with(items: Vec<WorkItem>) -> Cache {
        let mut c = Cache::new(2);
        for i in items {
            c.apply_item(0, Event::Apply(i));
        }
        c.apply_item(0, Event::InitDone);
        c.apply_item(1, Event::InitDone);
        c.apply_queue(&[], Event::InitDone);
        c
    }

    #[test]
    fn slim_drops_payload_and_history_but_keeps_what_claims_need() {
        let mut wi = item("a", "q", 7, 5);
        wi.spec.payload = Some(serde_json::json!({"big": "x".repeat(10_000)}));
        wi.spec.depends_on = vec!["x".into(), "y".into()];
        wi.status = Some(WorkItemStatus {
            attempt: 2,
            claim: Some(Claim {
                agent: "g".into(),
                epoch: 3,
                ..Default::default()
            }),
            result: Some(serde_json::json!({"r": 1})),
            ..Default::default()
        });
        let s = slim(wi);
        assert!(s.spec.payload.is_none());
        assert_eq!(s.spec.depends_on.len(), 1);
        let st = s.status.unwrap();
        assert_eq!((st.attempt, st.claim.unwrap().epoch), (2, 3));
        assert!(st.result.is_none());
        assert_eq!(s.metadata.resource_version.as_deref(), Some("5"));
    }

    #[test]
    fn max_in_flight_queues_need_admission() {
        let fresh = item("a", "q", 500, 1);
        let limited = QueueInfo {
            max_in_flight: Some(2),
            aging_seconds: 1,
        };
        assert!(claimable(&fresh, "q", None, t(1)));
        assert!(!claimable(&fresh, "q", Some(&limited), t(1)));
        assert!(claimable(&queued(fresh.clone()), "q", Some(&limited), t(1)));
        assert!(!claimable(&fresh, "other", None, t(1)), "wrong queue");
        let mut cancelled = fresh;
        cancelled.spec.cancel = true;
        assert!(!claimable(&cancelled, "q", None, t(1)));
    }

    #[test]
    fn routing_overrides_spec_queue() {
        let mut routed = queued(item("a", "q", 500, 1));
        routed.status.as_mut().unwrap().queue = Some("escalated".into());
        assert!(!claimable(&routed, "q", None, t(1)));
        assert!(claimable(&routed, "escalated", None, t(1)));
    }

    #[test]
    fn pick_prefers_the_top_and_skips_lost_races() {
        let mut c = cache_with(vec![
            item("low", "q", 1, 1),
            item("high", "q", 900, 2),
            item("mid", "q", 500, 3),
        ]);
        let queues = qs(&[("q", 1)]);
        let mut rng = StdRng::seed_from_u64(1);
        let p = c
            .pick(&queues, &HashMap::new(), 1, t(0), Instant::now(), &mut rng)
            .unwrap();
        assert_eq!(
            p.order
                .iter()
                .map(|i| i.metadata.name.clone().unwrap())
                .collect::<Vec<_>>(),
            ["high"]
        );
        let skip = [("high".to_owned(), "2".to_owned())].into();
        let p = c
            .pick(&queues, &skip, 1, t(0), Instant::now(), &mut rng)
            .unwrap();
        assert_eq!(p.order[0].metadata.name.as_deref(), Some("mid"));
        // A newer version of a skipped item is a new chance.
        c.apply_item(0, Event::Apply(item("high", "q", 900, 9)));
        let p = c
            .pick(&queues, &skip, 1, t(0), Instant::now(), &mut rng)
            .unwrap();
        assert_eq!(p.order[0].metadata.name.as_deref(), Some("high"));
    }

    #[test]
    fn pick_spreads_over_top_k() {
        let items: Vec<WorkItem> = (0..20)
            .map(|i| item(&format!("i{i:02}"), "q", 500, i + 1))
            .collect();
        let mut c = cache_with(items);
        let queues = qs(&[("q", 1)]);
        let mut rng = StdRng::seed_from_u64(7);
        let mut firsts = std::collections::BTreeSet::new();
        for _ in 0..50 {
            let p = c
                .pick(&queues, &HashMap::new(), 4, t(0), Instant::now(), &mut rng)
                .unwrap();
            assert_eq!(p.order.len(), 4);
            firsts.insert(p.order[0].metadata.name.clone().unwrap());
        }
        assert!(
            firsts.len() > 1,
            "agents must not all try the same head first"
        );
        assert!(
            firsts.iter().all(|n| n.as_str() < "i04"),
            "only the top 4 (FIFO): {firsts:?}"
        );
    }

    #[test]
    fn weighted_queues_and_empty_ones() {
        let mut c = cache_with(vec![item("a", "feature", 500, 1), item("b", "bug", 500, 2)]);
        let queues = qs(&[("feature", 3), ("bug", 1), ("docs", 5)]);
        let mut rng = StdRng::seed_from_u64(3);
        let mut counts: HashMap<String, u32> = HashMap::new();
        for _ in 0..400 {
            let p = c
                .pick(&queues, &HashMap::new(), 2, t(0), Instant::now(), &mut rng)
                .unwrap();
            *counts.entry(p.queue).or_default() += 1;
        }
        assert!(counts["feature"] > counts["bug"] * 2, "{counts:?}");
        assert!(!counts.contains_key("docs"));
    }

    #[test]
    fn relist_replaces_a_stream_and_newest_version_wins() {
        let mut c = cache_with(vec![item("a", "q", 500, 1), item("gone", "q", 500, 2)]);
        c.apply_item(0, Event::Init);
        c.apply_item(0, Event::InitApply(item("a", "q", 500, 3)));
        c.apply_item(0, Event::InitDone);
        assert!(c.get("gone").is_none());
        c.apply_item(1, Event::Apply(item("a", "q", 500, 10)));
        assert_eq!(
            c.get("a").unwrap().metadata.resource_version.as_deref(),
            Some("10")
        );
    }

    #[test]
    fn not_synced_until_every_watch_listed() {
        let mut c = Cache::new(2);
        c.apply_item(0, Event::InitDone);
        c.apply_queue(&[], Event::InitDone);
        assert!(!c.synced());
        c.apply_item(1, Event::InitDone);
        assert!(c.synced());
    }

    #[test]
    fn fence_detection() {
        let mut wi = item("a", "q", 500, 1);
        wi.status = Some(WorkItemStatus {
            phase: Some(Phase::Running),
            claim: Some(Claim {
                agent: "me".into(),
                epoch: 5,
                ..Default::default()
            }),
            ..Default::default()
        });
        assert!(!fenced(&wi, "me", 5));
        assert!(!fenced(&wi, "me", 6), "a view older than our claim");
        assert!(fenced(&wi, "me", 4), "epoch bumped past ours");
        assert!(fenced(&wi, "other", 5));
        wi.status.as_mut().unwrap().phase = Some(Phase::Cancelled);
        assert!(fenced(&wi, "me", 5));
    }
}
