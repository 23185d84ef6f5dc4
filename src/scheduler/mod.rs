//! The scheduler role: turns requests into items, routes and admits them, decides
//! what follows every attempt, and keeps queue and request status. It never watches
//! agent health.
//!
//! Shape: watch caches (items slimmed of payloads, queues, pools, requests) feed O(1)
//! indexes and two reconcile queues; workers decide per key with the pure functions in
//! `item` and `core`, then write one status patch at the resourceVersion they decided
//! on. Only the leader writes; caches stay warm on standbys.

mod index;
pub mod item;
mod metrics;
mod request;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use kube::api::Patch;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use tracing::{debug, info, instrument, warn};

use crate::api::{AgentPool, Phase, WorkItem, WorkQueue, WorkQueueStatus, WorkRequest, labels};
use crate::core::routing::route;
use crate::k8s::queue::ReconcileQueue;
use crate::k8s::watch::{drive, event};
use crate::k8s::{RoleContext, is_conflict, is_not_found, managers, patch_params};
use index::{ItemIndex, Key};
use item::{ItemView, decide};

/// Annotation on the scheduler's cached copy only (never written): the payload's
/// serialized size, measured before the cache drops the payload to save memory.
const PAYLOAD_BYTES: &str = "triad.dev/cached-payload-bytes";

const ITEM_WORKERS: usize = 8;
const REQUEST_WORKERS: usize = 2;
const QUEUE_STATUS_EVERY: Duration = Duration::from_secs(2);

pub(crate) struct Scheduler {
    ctx: RoleContext,
    items: Store<WorkItem>,
    queues: Store<WorkQueue>,
    pools: Store<AgentPool>,
    requests: Store<WorkRequest>,
    index: Mutex<ItemIndex>,
    /// Items that could not be routed: looked at again whenever a queue changes.
    unrouted: Mutex<HashSet<Key>>,
    item_queue: Arc<ReconcileQueue<Key>>,
    request_queue: Arc<ReconcileQueue<Key>>,
    recorder: Recorder,
    metrics: metrics::SchedulerMetrics,
    /// Token bucket for cosmetic "why waiting" writes so they never crowd out real ones.
    cosmetic: Mutex<(f64, tokio::time::Instant)>,
    admission: tokio::sync::Mutex<()>,
    in_transit: Mutex<HashSet<(String, String, String)>>,
    /// Per queue: when positions were last ranked, and each claimable item's
    /// (position, of). Ranking is O(n log n) per queue, so it is refreshed at most every
    /// few seconds and only for queues whose items are being explained.
    positions: Mutex<HashMap<Key, RankedQueue>>,
    /// Per (namespace, queue): when an item of it was last seen claimed.
    last_claim: Mutex<HashMap<Key, tokio::time::Instant>>,
}

/// When a queue was last ranked, and each claimable item's (position, of).
type RankedQueue = (tokio::time::Instant, HashMap<String, (usize, usize)>);

const POSITIONS_EVERY: Duration = Duration::from_secs(5);

/// A queue with a claim this recent is being drained (see `ItemView::queue_draining`).
const DRAINING_WINDOW: Duration = Duration::from_secs(5);

const COSMETIC_PER_SECOND: f64 = 20.0;

/// Most items one dependency-cycle walk looks at, and most dependents one changed
/// cycle verdict wakes. Cycles are mistakes among hand-applied items, so they are
/// short; the bound keeps every waiting item of a long healthy chain (a request with
/// thousands of steps) from walking the whole chain each time it is decided.
const CYCLE_WALK_LIMIT: usize = 256;

/// Removes what the scheduler never reads from cached items, so the cache grows with
/// the number of items and not with their size: payloads, results and managedFields;
/// labels and annotations other than Triad's own (`triad.dev/…`: the request label,
/// the redrive annotation) — a one-entry label map alone is a ~550-byte B-tree node,
/// and `kubectl apply` keeps a whole copy of the object (payload included) in an
/// annotation; and the status parts only the agent and supervisor read (progress,
/// usage, budget extensions, interventions, last error). Nothing is ever written back
/// from a cached copy: status writes are merge patches of the fields decided on.
fn slim(item: &mut WorkItem) {
    let bytes = item
        .spec
        .payload
        .as_ref()
        .map_or(0, |p| serde_json::to_vec(p).map_or(0, |v| v.len()));
    // A too-deep payload stays as its marker (without its text): the item fails on it.
    item.spec.payload = item
        .spec
        .payload
        .take()
        .and_then(crate::api::FreeForm::into_marker);
    let meta = &mut item.metadata;
    meta.managed_fields = None;
    meta.self_link = None;
    meta.generate_name = None;
    meta.finalizers = None;
    meta.labels = only_triad_keys(meta.labels.take());
    meta.annotations = only_triad_keys(meta.annotations.take());
    if let Some(status) = item.status.as_mut() {
        status.result = None;
        status.progress = None;
        status.usage = Default::default();
        status.budget_extension = Default::default();
        status.interventions = Vec::new();
        status.last_error = None;
    }
    if bytes > crate::api::MAX_PAYLOAD_BYTES {
        item.annotations_mut()
            .insert(PAYLOAD_BYTES.into(), bytes.to_string());
    }
}

/// The `triad.dev/` entries of a label or annotation map; None when there are none.
fn only_triad_keys(
    map: Option<std::collections::BTreeMap<String, String>>,
) -> Option<std::collections::BTreeMap<String, String>> {
    let mut map = map?;
    map.retain(|k, _| k.starts_with("triad.dev/"));
    (!map.is_empty()).then_some(map)
}

pub async fn run(ctx: RoleContext) -> crate::Result<()> {
    let items_api: Api<WorkItem> = ctx.api();
    let queues_api: Api<WorkQueue> = ctx.api();
    let pools_api: Api<AgentPool> = ctx.api();
    let requests_api: Api<WorkRequest> = ctx.api();
    let (items, items_writer) = reflector::store();
    let (queues, queues_writer) = reflector::store();
    let (pools, pools_writer) = reflector::store();
    let (requests, requests_writer) = reflector::store();
    let metrics = ctx
        .serve
        .with_registry(metrics::SchedulerMetrics::register)
        .with_controller(ctx.serve.controller_metrics());
    let recorder = Recorder::new(
        ctx.client.clone(),
        Reporter {
            controller: managers::SCHEDULER.into(),
            instance: std::env::var("POD_NAME").ok(),
        },
    );
    let sched = Arc::new(Scheduler {
        ctx: ctx.clone(),
        items,
        queues,
        pools,
        requests,
        index: Mutex::new(ItemIndex::default()),
        unrouted: Mutex::new(HashSet::new()),
        item_queue: ReconcileQueue::new(),
        request_queue: ReconcileQueue::new(),
        recorder,
        metrics,
        cosmetic: Mutex::new((COSMETIC_PER_SECOND, tokio::time::Instant::now())),
        admission: tokio::sync::Mutex::new(()),
        in_transit: Mutex::new(HashSet::new()),
        positions: Mutex::new(Default::default()),
        last_claim: Mutex::new(Default::default()),
    });

    let mut tasks = tokio::task::JoinSet::new();
    {
        let sched = sched.clone();
        let stream = watcher(items_api, watcher::Config::default())
            .default_backoff()
            .modify(slim)
            .reflect(items_writer);
        tasks.spawn(drive(stream, "WorkItem", move |event| {
            sched.on_item_event(event)
        }));
    }
    {
        let sched = sched.clone();
        let stream = watcher(queues_api, watcher::Config::default())
            .default_backoff()
            .reflect(queues_writer);
        tasks.spawn(drive(stream, "WorkQueue", move |_| sched.on_queue_change()));
    }
    {
        let stream = watcher(pools_api, watcher::Config::default())
            .default_backoff()
            .reflect(pools_writer);
        tasks.spawn(drive(stream, "AgentPool", |_| {}));
    }
    {
        let sched = sched.clone();
        let stream = watcher(requests_api, watcher::Config::default())
            .default_backoff()
            .reflect(requests_writer);
        tasks.spawn(drive(stream, "WorkRequest", move |event| {
            if let watcher::Event::Apply(r) | watcher::Event::InitApply(r) = event
                && let Some(key) = key_of(&r)
            {
                sched.request_queue.add(key);
            }
        }));
    }
    // Decide nothing before every cache is complete: an item decided before its queue
    // is cached would get the default policy or a false "queue not found".
    let synced = async {
        sched.items.wait_until_ready().await?;
        sched.queues.wait_until_ready().await?;
        sched.pools.wait_until_ready().await?;
        sched.requests.wait_until_ready().await
    };
    synced
        .await
        .map_err(|e| crate::Error::Invalid(format!("scheduler caches: {e}")))?;
    info!("scheduler caches synced");
    for _ in 0..ITEM_WORKERS {
        let sched = sched.clone();
        tasks.spawn(async move {
            loop {
                let key = sched.item_queue.next().await;
                sched.reconcile_item(&key).await;
                sched.item_queue.done(&key);
            }
        });
    }
    for _ in 0..REQUEST_WORKERS {
        let sched = sched.clone();
        tasks.spawn(async move {
            loop {
                let key = sched.request_queue.next().await;
                request::reconcile(&sched, &key).await;
                sched.request_queue.done(&key);
            }
        });
    }
    {
        let sched = sched.clone();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(QUEUE_STATUS_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                sched.update_queue_statuses().await;
            }
        });
    }
    {
        // On becoming leader, look at everything once: a standby's caches are warm but
        // it made no decisions while following.
        let sched = sched.clone();
        let mut gate = ctx.leader.clone();
        tasks.spawn(async move {
            gate.wait_leading().await;
            sched.items.wait_until_ready().await.ok();
            info!(
                items = sched.items.len(),
                "scheduler leading; reconciling everything once"
            );
            sched.resync_all();
        });
    }
    while let Some(done) = tasks.join_next().await {
        if let Err(err) = done {
            return Err(crate::Error::Invalid(format!(
                "scheduler task failed: {err}"
            )));
        }
    }
    Ok(())
}

fn key_of<K: Resource>(obj: &K) -> Option<Key> {
    Some((obj.meta().namespace.clone()?, obj.meta().name.clone()?))
}

impl Scheduler {
    fn lock_index(&self) -> std::sync::MutexGuard<'_, ItemIndex> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn on_item_event(&self, event: watcher::Event<WorkItem>) {
        match event {
            watcher::Event::Init => self.lock_index().clear(),
            watcher::Event::InitApply(item) | watcher::Event::Apply(item) => {
                let change = self.lock_index().apply(&item);
                if let Some(change) = &change
                    && change.phase_changed
                    && item.phase() == Some(Phase::Running)
                    && let Some(queue) = item.effective_queue()
                {
                    self.last_claim
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(
                            (change.key.0.clone(), queue.to_owned()),
                            tokio::time::Instant::now(),
                        );
                }
                if let Some(change) = change {
                    self.after_change(change, item.phase().is_some_and(Phase::is_finished));
                }
            }
            watcher::Event::Delete(item) => {
                let change = self.lock_index().remove(&item);
                if let Some(change) = change {
                    self.after_change(change, true);
                }
            }
            // The reflector swaps its store only now, at the end of a relist: items
            // enqueued during the relist may have been decided on the old copies, so
            // look at everything once more (the lost-after-apiserver-restart bug the
            // chaos run found).
            watcher::Event::InitDone => self.resync_all(),
        }
    }

    fn after_change(&self, change: index::Change, finished: bool) {
        let (ns, name) = &change.key;
        if change.phase_changed && finished {
            for dependent in self.lock_index().dependents(ns, name) {
                self.item_queue.add((ns.clone(), dependent));
            }
        }
        for request in change.request.iter().chain(change.old_request.iter()) {
            self.request_queue.add((ns.clone(), request.clone()));
        }
        self.item_queue.add(change.key);
    }

    fn on_queue_change(&self) {
        let unrouted: Vec<Key> = self
            .unrouted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .collect();
        for key in unrouted {
            self.item_queue.add(key);
        }
    }

    fn resync_all(&self) {
        for item in self.items.state() {
            if let Some(key) = key_of(item.as_ref()) {
                self.item_queue.add(key);
            }
        }
        for request in self.requests.state() {
            if let Some(key) = key_of(request.as_ref()) {
                self.request_queue.add(key);
            }
        }
    }

    fn take_cosmetic_token(&self) -> bool {
        let mut bucket = self.cosmetic.lock().unwrap_or_else(|p| p.into_inner());
        let now = tokio::time::Instant::now();
        let refill = now.duration_since(bucket.1).as_secs_f64() * COSMETIC_PER_SECOND;
        bucket.0 = (bucket.0 + refill).min(COSMETIC_PER_SECOND);
        bucket.1 = now;
        if bucket.0 >= 1.0 {
            bucket.0 -= 1.0;
            true
        } else {
            false
        }
    }

    fn queue_spec(&self, namespace: &str, name: &str) -> Option<Arc<WorkQueue>> {
        self.queues.get(&ObjectRef::new(name).within(namespace))
    }

    #[instrument(skip(self), fields(item = %format!("{}/{}", key.0, key.1)))]
    async fn reconcile_item(&self, key: &Key) {
        if !self.ctx.leader.is_leading() {
            return;
        }
        let (ns, name) = key;
        let Some(item) = self.items.get(&ObjectRef::new(name).within(ns)) else {
            return;
        };
        let _timer = self.metrics.controller.time_reconcile("workitem");
        let queues_in_ns: Vec<Arc<WorkQueue>> = self
            .queues
            .state()
            .into_iter()
            .filter(|q| q.metadata.namespace.as_deref() == Some(ns.as_str()))
            .collect();
        let route = route(
            &item,
            queues_in_ns
                .iter()
                .filter_map(|q| Some((q.metadata.name.as_deref()?, &q.spec))),
        );
        let queue = route.queue().and_then(|q| self.queue_spec(ns, q));
        {
            let mut unrouted = self.unrouted.lock().unwrap_or_else(|p| p.into_inner());
            if route.queue().is_some() {
                unrouted.remove(key);
            } else {
                unrouted.insert(key.clone());
            }
        }
        let gated = queue
            .as_ref()
            .is_some_and(|q| q.spec.max_in_flight.is_some());
        // Admission into a maxInFlight queue is serialized so two workers never both
        // see the last free slot; admissions not yet back from the watch count too.
        let _admission = if gated {
            Some(self.admission.lock().await)
        } else {
            None
        };
        let (running, admitted) = route.queue().map_or((0, 0), |q| {
            let index = self.lock_index();
            let counts = index.queue_counts(ns, q);
            let in_transit = self.in_transit(ns, q, &index);
            (
                counts.get(Phase::Running),
                index.admitted(ns, q) + in_transit,
            )
        });
        let pool_serves_queue = route.queue().is_some_and(|q| {
            self.pools.state().iter().any(|p| {
                p.metadata.namespace.as_deref() == Some(ns.as_str())
                    && p.spec.queues.iter().any(|pq| pq.name == q)
            })
        });
        let dependency = |dep: &str| {
            self.items
                .get(&ObjectRef::new(dep).within(ns))
                .map(|d| d.phase())
        };
        let payload_bytes = item
            .annotations()
            .get(PAYLOAD_BYTES)
            .and_then(|b| b.parse().ok())
            .unwrap_or(0);
        let position = route.queue().and_then(|q| {
            let waited = item.metadata.creation_timestamp.as_ref().is_some_and(|t| {
                Timestamp::now().duration_since(t.0).as_secs_f64()
                    >= item::EXPLAIN_AFTER.as_secs_f64()
            });
            let claimable = crate::core::phase::is_claimable(&item, Timestamp::now());
            (waited && claimable).then(|| {
                self.position_of(
                    ns,
                    q,
                    name,
                    queue.as_ref().map_or(1, |q| q.spec.aging_seconds),
                )
            })?
        });
        let cycle = || {
            self.lock_index()
                .dependency_cycle(ns, name, CYCLE_WALK_LIMIT)
        };
        let queue_draining = route.queue().is_some_and(|q| {
            self.last_claim
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&(ns.clone(), q.to_owned()))
                .is_some_and(|at| at.elapsed() < DRAINING_WINDOW)
        });
        let view = ItemView {
            queue_draining,
            cycle: &cycle,
            route: route.clone(),
            queue: queue.as_ref().map(|q| &q.spec),
            dependency: &dependency,
            running_in_queue: running,
            admitted_in_queue: admitted,
            pool_serves_queue,
            position,
            payload_bytes,
        };
        let now = Timestamp::now();
        let jitter = crate::core::retry::random_jitter(&mut rand::rng());
        let plan = decide(&item, &view, now, jitter);
        debug!(?plan, "decided");
        let admitting = gated && plan.counted == Some("admitted");
        if self.apply_plan(&item, plan).await
            && admitting
            && let Some(q) = route.queue()
        {
            self.lock_transit()
                .insert((ns.clone(), q.to_owned(), name.clone()));
        }
    }

    /// "position N of M" among the queue's claimable items, from a ranking refreshed at
    /// most every [`POSITIONS_EVERY`].
    fn position_of(
        &self,
        ns: &str,
        queue: &str,
        name: &str,
        aging_seconds: i64,
    ) -> Option<(usize, usize)> {
        let key = (ns.to_owned(), queue.to_owned());
        let mut cache = self.positions.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = cache
            .get(&key)
            .is_some_and(|(at, _)| at.elapsed() < POSITIONS_EVERY);
        if !fresh {
            let now = Timestamp::now();
            let names = self.lock_index().in_phase(ns, queue, Phase::Queued);
            let items: Vec<Arc<WorkItem>> = names
                .iter()
                .filter_map(|(n, _)| self.items.get(&ObjectRef::new(n).within(ns)))
                .filter(|i| crate::core::phase::is_claimable(i, now))
                .collect();
            let candidates: Vec<_> = items
                .iter()
                .map(|i| crate::core::ordering::Candidate::of(i))
                .collect();
            let ranks = crate::core::ordering::positions(&candidates, aging_seconds, now);
            let total = candidates.len();
            let map = candidates
                .iter()
                .zip(ranks)
                .map(|(c, p)| (c.name.to_owned(), (p, total)))
                .collect();
            cache.insert(key.clone(), (tokio::time::Instant::now(), map));
        }
        cache.get(&key).and_then(|(_, m)| m.get(name).copied())
    }

    fn lock_transit(&self) -> std::sync::MutexGuard<'_, HashSet<(String, String, String)>> {
        self.in_transit.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admissions written but not yet seen Queued on the watch.
    fn in_transit(&self, ns: &str, queue: &str, index: &ItemIndex) -> i64 {
        let mut transit = self.lock_transit();
        transit.retain(|(n, q, item)| {
            let seen = self
                .items
                .get(&ObjectRef::new(item).within(n))
                // Seen once the watch shows the admission (any explicit phase past
                // Pending); an item with no status yet has not caught up.
                .is_none_or(|i| !matches!(i.phase(), None | Some(Phase::Pending)));
            let _ = (q, index);
            !seen
        });
        transit
            .iter()
            .filter(|(n, q, _)| n == ns && q == queue)
            .count() as i64
    }

    /// Returns true when a status write succeeded.
    async fn apply_plan(&self, item: &WorkItem, plan: item::Plan) -> bool {
        let mut written = false;
        let key = match key_of(item) {
            Some(k) => k,
            None => return false,
        };
        let api: Api<WorkItem> = Api::namespaced(self.ctx.client.clone(), &key.0);
        if plan.delete {
            match api.delete(&key.1, &Default::default()).await {
                Ok(_) => self.metrics.count("deleted_by_retention"),
                Err(e) if is_not_found(&e) => {}
                Err(e) => {
                    warn!(error = %e, "retention delete failed");
                    self.item_queue
                        .add_after(key.clone(), Duration::from_secs(5));
                }
            }
            return false;
        }
        if let Some(status) = plan.status {
            if plan.cosmetic && !self.take_cosmetic_token() {
                self.item_queue.add_after(key, Duration::from_secs(1));
                return false;
            }
            let body = json!({
                "metadata": {"resourceVersion": item.metadata.resource_version},
                "status": status,
            });
            match api
                .patch_status(
                    &key.1,
                    &patch_params(managers::SCHEDULER),
                    &Patch::Merge(&body),
                )
                .await
            {
                Ok(_) => {
                    written = true;
                    if let Some(counter) = plan.counted {
                        self.metrics.count(counter);
                        if counter == "admitted" {
                            self.metrics.observe_admission(item);
                        }
                    }
                    if let Some((reason, note)) = plan.event {
                        self.publish(item, reason, note).await;
                    }
                    if plan.cycle_changed {
                        // Their own events do not wake them: a cycle member's
                        // dependency never finishes, and an edit elsewhere on the
                        // cycle is not their change.
                        let waiting = self.lock_index().transitive_dependents(
                            &key.0,
                            &key.1,
                            CYCLE_WALK_LIMIT,
                        );
                        for name in waiting {
                            self.item_queue.add((key.0.clone(), name));
                        }
                    }
                    if plan.clear_redrive {
                        let body = json!({"metadata": {"annotations": {labels::REDRIVE: null}}});
                        if let Err(e) = api
                            .patch(
                                &key.1,
                                &patch_params(managers::SCHEDULER),
                                &Patch::Merge(&body),
                            )
                            .await
                        {
                            warn!(error = %e, "could not remove the redrive annotation");
                        }
                    }
                }
                // Someone (an agent claiming, a user) changed it: the watch brings the new
                // version and we decide again on that.
                Err(e) if is_conflict(&e) => self.metrics.count("write_conflicts"),
                Err(e) if is_not_found(&e) => {}
                Err(e) => {
                    warn!(error = %e, "status write failed");
                    self.metrics
                        .controller
                        .reconcile_errors
                        .get_or_create(&crate::metrics::ControllerLabels {
                            controller: "workitem".into(),
                        })
                        .inc();
                    self.item_queue
                        .add_after(key.clone(), Duration::from_secs(2));
                }
            }
        }
        if let Some(after) = plan.recheck {
            self.item_queue
                .add_after(key, after.max(Duration::from_millis(200)));
        }
        written
    }

    async fn publish(&self, item: &WorkItem, reason: &str, note: String) {
        let warning = matches!(
            reason,
            "DeadLettered"
                | "Failed"
                | "QueueNotFound"
                | "AmbiguousType"
                | "DependencyFailed"
                | "PayloadTooLarge"
                | crate::api::PAYLOAD_TOO_DEEP
                | crate::core::cycle::DEPENDENCY_CYCLE
                | crate::core::cycle::DEPENDS_ON_CYCLE
        );
        let event = event(warning, reason, note, "Schedule");
        if let Err(e) = self.recorder.publish(&event, &item.object_ref(&())).await {
            debug!(error = %e, "event not published");
        }
    }

    /// Queue status from the O(1) counters; the oldest-queued scan is per queue with
    /// queued items, every few seconds, off the per-change path.
    async fn update_queue_statuses(&self) {
        if !self.ctx.leader.is_leading() {
            return;
        }
        let now = Timestamp::now();
        for queue in self.queues.state() {
            let (Some(ns), Some(name)) = (
                queue.metadata.namespace.clone(),
                queue.metadata.name.clone(),
            ) else {
                continue;
            };
            let (counts, queued) = {
                let index = self.lock_index();
                (
                    index.queue_counts(&ns, &name),
                    index.in_phase(&ns, &name, Phase::Queued),
                )
            };
            let oldest = queued
                .iter()
                .filter_map(|(item_name, created)| {
                    let item = self.items.get(&ObjectRef::new(item_name).within(&ns))?;
                    crate::core::ordering::queued_since(&item).or(*created)
                })
                .min()
                .map_or(0, |t| now.duration_since(t).as_secs().max(0));
            let status = WorkQueueStatus {
                pending: counts.get(Phase::Pending),
                queued: counts.get(Phase::Queued),
                running: counts.get(Phase::Running),
                backoff: counts.get(Phase::Backoff),
                held: counts.get(Phase::Held),
                succeeded: counts.get(Phase::Succeeded),
                failed: counts.get(Phase::Failed),
                dead_lettered: counts.get(Phase::DeadLettered),
                cancelled: counts.get(Phase::Cancelled),
                oldest_queued_seconds: oldest,
                observed_generation: queue.metadata.generation,
                conditions: queue
                    .status
                    .as_ref()
                    .map(|s| s.conditions.clone())
                    .unwrap_or_default(),
            };
            self.metrics.set_queue_depth(&ns, &name, &counts, oldest);
            if queue.status.as_ref() == Some(&status) {
                continue;
            }
            let api: Api<WorkQueue> = Api::namespaced(self.ctx.client.clone(), &ns);
            let body = json!({"status": status});
            if let Err(e) = api
                .patch_status(
                    &name,
                    &patch_params(managers::SCHEDULER),
                    &Patch::Merge(&body),
                )
                .await
            {
                warn!(queue = %name, error = %e, "queue status write failed");
            }
        }
    }
}

#[cfg(test)]
mod slim_tests {
    use super::*;

    #[test]
    fn slim_keeps_what_the_scheduler_reads_and_drops_the_rest() {
        let mut item: WorkItem = serde_json::from_value(json!({
            "apiVersion": "triad.dev/v1alpha1", "kind": "WorkItem",
            "metadata": {
                "name": "a", "namespace": "ns", "uid": "u1", "generation": 2,
                "creationTimestamp": "2025-01-01T00:00:00Z",
                "labels": {"app": "x", labels::REQUEST: "req", labels::TASK: "t"},
                "annotations": {
                    "kubectl.kubernetes.io/last-applied-configuration": "{\"spec\":{}}",
                    labels::REDRIVE: "1"
                },
                "ownerReferences": [{"apiVersion": "triad.dev/v1alpha1",
                    "kind": "WorkRequest", "name": "req", "uid": "r1"}],
                "managedFields": [{"manager": "m"}]
            },
            "spec": {"queue": "q", "payload": {"x": "y"}, "dependsOn": ["b"]},
            "status": {
                "phase": "Running", "attempt": 2, "result": {"ok": true},
                "claim": {"agent": "ag", "epoch": 3},
                "progress": {"percent": 50, "message": "half"},
                "usage": {"tokens": 5.0}, "budgetExtension": {"tokens": 1.0},
                "interventions": [{"at": "2025-01-01T00:00:00Z", "monitor": "m",
                    "reason": "r", "action": "warn"}],
                "lastError": {"reason": "E", "attempt": 1},
                "attempts": [{"attempt": 1, "outcome": "Failed"}],
                "conditions": [{"type": "Stalled", "status": "True", "reason": "R",
                    "message": "", "lastTransitionTime": "2025-01-01T00:00:00Z"}]
            }
        }))
        .unwrap();
        slim(&mut item);
        let meta = &item.metadata;
        assert_eq!(meta.uid.as_deref(), Some("u1"));
        assert_eq!(meta.generation, Some(2));
        assert!(meta.creation_timestamp.is_some());
        assert!(meta.managed_fields.is_none());
        assert_eq!(
            meta.labels
                .as_ref()
                .map(|l| l.keys().cloned().collect::<Vec<_>>()),
            Some(vec![labels::REQUEST.to_owned(), labels::TASK.to_owned()])
        );
        assert_eq!(
            meta.annotations
                .as_ref()
                .map(|a| a.keys().cloned().collect::<Vec<_>>()),
            Some(vec![labels::REDRIVE.to_owned()])
        );
        assert_eq!(meta.owner_references.as_ref().map(Vec::len), Some(1));
        assert!(item.spec.payload.is_none());
        assert_eq!(item.spec.queue.as_deref(), Some("q"));
        assert_eq!(item.spec.depends_on, vec!["b".to_owned()]);
        let s = item.status.as_ref().unwrap();
        assert_eq!(s.phase, Some(Phase::Running));
        assert_eq!(s.attempt, 2);
        assert!(s.claim.is_some());
        assert_eq!(s.attempts.len(), 1);
        assert_eq!(s.conditions.len(), 1);
        assert!(s.result.is_none() && s.progress.is_none() && s.last_error.is_none());
        assert!(s.usage.is_empty() && s.budget_extension.is_empty());
        assert!(s.interventions.is_empty());
    }

    #[test]
    fn slim_drops_empty_maps_and_marks_oversized_payloads() {
        let mut item: WorkItem = serde_json::from_value(json!({
            "apiVersion": "triad.dev/v1alpha1", "kind": "WorkItem",
            "metadata": {"name": "a", "namespace": "ns", "labels": {"bench": "1"}},
            "spec": {"queue": "q", "payload": "x".repeat(crate::api::MAX_PAYLOAD_BYTES + 1)}
        }))
        .unwrap();
        slim(&mut item);
        assert!(
            item.metadata.labels.is_none(),
            "no Triad label: no map at all"
        );
        assert!(item.annotations().contains_key(PAYLOAD_BYTES));
        assert!(item.spec.payload.is_none());
    }
}
