//! The supervisor role: watches agent Leases and Running WorkItems, turns what it sees
//! into signals for the hub in `core::supervision`, and carries out the hub's steps.
//! It never assigns work and never chooses what follows an attempt: it writes
//! conditions, cancel requests and fence-outs (outcomes), and the scheduler decides.
//!
//! Shape: a Lease watch feeds one `ChangeObserver` per agent Lease (staleness measured
//! on our own clock); a watch of agent pods (label `triad.dev/pool`) feeds the pod
//! health monitor; a watch of Running items (field selector `status.phase=Running`)
//! and a WorkQueue cache feed a dedup reconcile queue. Each Running item is rechecked
//! on its own timer (at most every [`RECHECK`], sooner when its lease goes stale), so
//! time-based faults are found without full scans. Every write is one merge patch at
//! the resourceVersion the decision was made on; a 409 means "look again".

mod accounting;
mod metrics;
mod patch;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Container, ObjectReference, Pod, PodSpec};
use kube::api::{DeleteParams, Patch};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource, ResourceExt};
use tracing::{debug, info, warn};

use crate::api::{AgentPool, Counters, Phase, Supervision, Timeouts, WorkItem, WorkQueue, labels};
use crate::core::supervision::{
    Action, AgentHealth, ChangeObserver, ItemClock, Monitor, Orphans, PodHealth,
    RULE_ATTEMPT_TIMEOUT, RULE_PAST_DEADLINE, Signal, Step, attempt_timed_out, budget_signals,
    deadline_passed_at, decide, effective_budget, leftover_conditions, may_reclaim, pod_health,
    reported_violation, stall_since, violation_signal,
};
use crate::k8s::lease::AGENT_LEASE_SELECTOR;
use crate::k8s::queue::ReconcileQueue;
use crate::k8s::{RoleContext, is_conflict, is_not_found, managers, patch_params};

type Key = (String, String);

/// How often a Running item is looked at when nothing about it changes.
const RECHECK: Duration = Duration::from_secs(2);
/// Lease duration assumed for a Lease we have never seen (AgentPool default).
const DEFAULT_LEASE: Duration = Duration::from_secs(15);
/// Extra wait, on top of a lease duration, before an item whose Lease does not exist
/// at all is reclaimed: the agent creates its Lease before it claims.
const MISSING_LEASE_MARGIN: Duration = Duration::from_secs(5);
const WORKERS: usize = 4;
/// How often agent pods' health (and the gauges) is looked at when no pod changes.
const POD_CHECK: Duration = Duration::from_secs(5);

struct SeenLease {
    observer: ChangeObserver,
    /// What the Lease says of itself: trusted only for an agent whose pool is unknown.
    duration: Duration,
}

struct Supervisor {
    ctx: RoleContext,
    items: Store<WorkItem>,
    queues: Store<WorkQueue>,
    pods: Store<Pod>,
    pools: Store<AgentPool>,
    leases: Mutex<HashMap<Key, SeenLease>>,
    /// Per Running item: what its usage and violations counters last counted.
    seen: Mutex<HashMap<Key, accounting::Seen>>,
    /// Per Running item: when we first saw its attempt and last saw its progress change
    /// (our clock).
    progress: Mutex<HashMap<Key, ItemClock>>,
    /// Per agent pod: the health last reported with an Event.
    health: Mutex<HashMap<Key, AgentHealth>>,
    pods_changed: tokio::sync::Notify,
    /// Leases named by a claim but not seen, and since when (our clock).
    missing: Mutex<HashMap<Key, Timestamp>>,
    queue: Arc<ReconcileQueue<Key>>,
    recorder: Recorder,
    metrics: metrics::SupervisorMetrics,
    started_at: Timestamp,
}

/// What the supervisor never reads from a cached (Running) item.
fn slim(item: &mut WorkItem) {
    item.spec.payload = None;
    item.metadata.managed_fields = None;
    item.metadata.labels = None;
    item.metadata.annotations = None;
    if let Some(s) = item.status.as_mut() {
        s.result = None;
    }
}

/// What the supervisor never reads from a cached pod: all of the spec but the
/// containers' names (the agent container is the first).
fn slim_pod(pod: &mut Pod) {
    pod.metadata.managed_fields = None;
    pod.metadata.annotations = None;
    if let Some(spec) = pod.spec.as_mut() {
        *spec = PodSpec {
            containers: spec
                .containers
                .iter()
                .map(|c| Container {
                    name: c.name.clone(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
    }
}

/// What the supervisor never reads from a cached pool: all of the spec but its
/// leaseSeconds.
fn slim_pool(pool: &mut AgentPool) {
    pool.metadata.managed_fields = None;
    pool.metadata.annotations = None;
    pool.spec.template = Default::default();
    pool.status = None;
}

/// Drives a reflector's watch for a cache nothing reacts to, logging its errors.
async fn keep_cached<K>(
    stream: impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
    kind: &'static str,
) {
    let mut stream = std::pin::pin!(stream);
    while let Some(event) = stream.next().await {
        if let Err(err) = event {
            warn!(%err, "{kind} watch error; retrying");
        }
    }
}

fn key_of<K: Resource>(obj: &K) -> Option<Key> {
    Some((obj.meta().namespace.clone()?, obj.meta().name.clone()?))
}

/// Runs the supervisor until the process shuts down.
pub async fn run(ctx: RoleContext) -> crate::Result<()> {
    let items_api: Api<WorkItem> = ctx.api();
    let queues_api: Api<WorkQueue> = ctx.api();
    let leases_api: Api<Lease> = ctx.api();
    let pods_api: Api<Pod> = ctx.api();
    let (items, items_writer) = reflector::store();
    let (queues, queues_writer) = reflector::store();
    let (pods, pods_writer) = reflector::store();
    let (pools, pools_writer) = reflector::store();
    let pools_api: Api<AgentPool> = ctx.api();
    let metrics = ctx
        .serve
        .with_registry(metrics::SupervisorMetrics::register);
    let recorder = Recorder::new(
        ctx.client.clone(),
        Reporter {
            controller: managers::SUPERVISOR.into(),
            instance: std::env::var("POD_NAME").ok(),
        },
    );
    let sup = Arc::new(Supervisor {
        ctx: ctx.clone(),
        items,
        queues,
        pods,
        pools,
        leases: Mutex::new(HashMap::new()),
        seen: Mutex::new(HashMap::new()),
        progress: Mutex::new(HashMap::new()),
        health: Mutex::new(HashMap::new()),
        pods_changed: tokio::sync::Notify::new(),
        missing: Mutex::new(HashMap::new()),
        queue: ReconcileQueue::new(),
        recorder,
        metrics,
        started_at: Timestamp::now(),
    });

    let mut tasks = tokio::task::JoinSet::new();
    {
        let sup = sup.clone();
        let stream = watcher(
            leases_api,
            watcher::Config::default().labels(AGENT_LEASE_SELECTOR),
        )
        .default_backoff();
        tasks.spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                match event {
                    Ok(event) => sup.on_lease_event(event),
                    Err(err) => warn!(%err, "Lease watch error; retrying"),
                }
            }
        });
    }
    {
        let sup = sup.clone();
        let config = watcher::Config::default().fields("status.phase=Running");
        let stream = watcher(items_api, config)
            .default_backoff()
            .modify(slim)
            .reflect(items_writer);
        tasks.spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                match event {
                    Ok(watcher::Event::Apply(i)) => {
                        sup.observe_progress(&i);
                        sup.account(&i, false, false);
                        if let Some(key) = key_of(&i) {
                            sup.queue.add(key);
                        }
                    }
                    Ok(watcher::Event::InitApply(i)) => {
                        sup.observe_progress(&i);
                        sup.account(&i, true, false);
                        if let Some(key) = key_of(&i) {
                            sup.queue.add(key);
                        }
                    }
                    // Left Running (or deleted): the last usage it reported counts.
                    Ok(watcher::Event::Delete(i)) => {
                        if let Some(key) = key_of(&i) {
                            sup.lock_progress().remove(&key);
                        }
                        sup.account(&i, false, true);
                    }
                    Ok(_) => {}
                    Err(err) => warn!(%err, "WorkItem watch error; retrying"),
                }
                sup.metrics.set_running(sup.items.len());
            }
        });
    }
    {
        let stream = watcher(queues_api, watcher::Config::default())
            .default_backoff()
            .reflect(queues_writer);
        tasks.spawn(keep_cached(stream, "WorkQueue"));
    }
    {
        // Pools: whose leaseSeconds judges their agents' Leases.
        let stream = watcher(pools_api, watcher::Config::default())
            .default_backoff()
            .modify(slim_pool)
            .reflect(pools_writer);
        tasks.spawn(keep_cached(stream, "AgentPool"));
    }
    {
        let sup = sup.clone();
        let stream = watcher(pods_api, watcher::Config::default().labels(labels::POOL))
            .default_backoff()
            .modify(slim_pod)
            .reflect(pods_writer);
        tasks.spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                match event {
                    Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => {
                        sup.enqueue_held_by(&p);
                        sup.pods_changed.notify_one();
                    }
                    Ok(watcher::Event::Delete(p)) => {
                        if let Some(key) = key_of(&p) {
                            sup.lock_health().remove(&key);
                        }
                        sup.pods_changed.notify_one();
                    }
                    Ok(_) => {}
                    Err(err) => warn!(%err, "Pod watch error; retrying"),
                }
            }
        });
    }
    let synced = async {
        sup.items.wait_until_ready().await?;
        sup.queues.wait_until_ready().await
    };
    // The pod cache is not waited for: without it (still syncing, or no RBAC to watch
    // pods) the pod side of the health monitor is idle and leases still count.
    synced
        .await
        .map_err(|e| crate::Error::Invalid(format!("supervisor caches: {e}")))?;
    info!("supervisor caches synced");
    for _ in 0..WORKERS {
        let sup = sup.clone();
        tasks.spawn(async move {
            loop {
                let key = sup.queue.next().await;
                let again = sup.reconcile(&key).await;
                sup.queue.done(&key);
                if let Some(after) = again {
                    sup.queue.add_after(key, after);
                }
            }
        });
    }
    {
        let sup = sup.clone();
        tasks.spawn(async move {
            loop {
                sup.check_pods().await;
                let _ = tokio::time::timeout(POD_CHECK, sup.pods_changed.notified()).await;
                // Coalesce a burst of pod changes.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
    }
    {
        // On becoming leader, look at every Running item once.
        let sup = sup.clone();
        let mut gate = ctx.leader.clone();
        tasks.spawn(async move {
            gate.wait_leading().await;
            for item in sup.items.state() {
                if let Some(key) = key_of(item.as_ref()) {
                    sup.queue.add(key);
                }
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        if let Err(err) = done {
            return Err(crate::Error::Invalid(format!(
                "supervisor task failed: {err}"
            )));
        }
    }
    Ok(())
}

impl Supervisor {
    fn on_lease_event(&self, event: watcher::Event<Lease>) {
        let now = Timestamp::now();
        match event {
            watcher::Event::Apply(l) | watcher::Event::InitApply(l) => {
                let Some(key) = key_of(&l) else { return };
                let marker = l.resource_version().unwrap_or_default();
                let duration = l
                    .spec
                    .as_ref()
                    .and_then(|s| s.lease_duration_seconds)
                    .and_then(|s| u64::try_from(s).ok())
                    .filter(|s| *s > 0)
                    .map_or(DEFAULT_LEASE, Duration::from_secs);
                self.lock_missing().remove(&key);
                let mut leases = self.lock_leases();
                match leases.get_mut(&key) {
                    Some(seen) => {
                        seen.observer.observe(&marker, now);
                        seen.duration = duration;
                    }
                    None => {
                        leases.insert(
                            key,
                            SeenLease {
                                observer: ChangeObserver::new(marker, now),
                                duration,
                            },
                        );
                    }
                }
            }
            watcher::Event::Delete(l) => {
                if let Some(key) = key_of(&l) {
                    self.lock_leases().remove(&key);
                }
            }
            // A relist follows a broken watch (an API server restart, a network cut):
            // while it was broken we saw no renewals, and agents could not renew
            // either. Start every lease clock afresh, as after our own restart, so an
            // outage never reads as every agent going stale at once.
            watcher::Event::Init => {
                self.lock_leases().clear();
                self.lock_missing().clear();
            }
            watcher::Event::InitDone => {}
        }
    }

    fn lock_leases(&self) -> std::sync::MutexGuard<'_, HashMap<Key, SeenLease>> {
        self.leases.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_missing(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Timestamp>> {
        self.missing.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_health(&self) -> std::sync::MutexGuard<'_, HashMap<Key, AgentHealth>> {
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_seen(&self) -> std::sync::MutexGuard<'_, HashMap<Key, accounting::Seen>> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_progress(&self) -> std::sync::MutexGuard<'_, HashMap<Key, ItemClock>> {
        self.progress.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes, on our clock, whether a Running item's attempt or progress changed since
    /// we last saw it.
    fn observe_progress(&self, item: &WorkItem) {
        let Some(key) = key_of(item) else { return };
        let now = Timestamp::now();
        self.lock_progress()
            .entry(key)
            .and_modify(|c| c.observe(item, now))
            .or_insert_with(|| ItemClock::new(item, now));
    }

    /// When we last saw this item's progress change, or its attempt start.
    fn progress_seen_at(&self, key: &Key) -> Option<Timestamp> {
        self.lock_progress()
            .get(key)
            .map(ItemClock::progress_seen_at)
    }

    /// When we first saw this item's current attempt.
    fn attempt_seen_at(&self, key: &Key) -> Option<Timestamp> {
        self.lock_progress()
            .get(key)
            .map(ItemClock::attempt_seen_at)
    }

    /// The queue's supervision policy, default budget and timeouts.
    fn policy(&self, item: &WorkItem) -> (Supervision, Counters, Timeouts) {
        let queue = item
            .namespace()
            .zip(item.effective_queue().map(str::to_owned));
        queue
            .and_then(|(ns, q)| self.queues.get(&ObjectRef::new(&q).within(&ns)))
            .map(|q| {
                (
                    q.spec.supervision.clone(),
                    q.spec.default_budget.clone(),
                    q.spec.timeouts.clone(),
                )
            })
            .unwrap_or_default()
    }

    /// Counts what a Running item reported since we last looked: usage per queue and
    /// counter, violations by rule. Every replica keeps the baselines; the leader counts.
    /// `gone`: the item left Running (its last report counts, then it is forgotten).
    fn account(&self, item: &WorkItem, startup: bool, gone: bool) {
        let Some(key) = key_of(item) else { return };
        let Some(status) = item.status.as_ref() else {
            return;
        };
        let violation = reported_violation(item);
        let mut seen = self.lock_seen();
        let (used, violations, now_seen) = accounting::account(
            seen.get(&key),
            status.attempt,
            &status.usage,
            violation.as_ref().map_or(0, |v| v.count),
            startup,
        );
        if gone {
            seen.remove(&key);
        } else {
            seen.insert(key.clone(), now_seen);
        }
        drop(seen);
        if !self.ctx.leader.is_leading() {
            return;
        }
        let queue = item.effective_queue().unwrap_or("");
        for (counter, amount) in used {
            self.metrics.budget_used(&key.0, queue, &counter, amount);
        }
        if let Some(v) = violation {
            self.metrics.violations(&v.rule, u64::from(violations));
        }
    }

    /// Running items whose claim names this pod are looked at again.
    fn enqueue_held_by(&self, pod: &Pod) {
        let Some((ns, name)) = key_of(pod) else {
            return;
        };
        for item in self.items.state() {
            let held = item
                .status
                .as_ref()
                .and_then(|s| s.claim.as_ref())
                .and_then(|c| c.pod.as_deref())
                == Some(name.as_str());
            if held
                && item.namespace().as_deref() == Some(ns.as_str())
                && let Some(key) = key_of(item.as_ref())
            {
                self.queue.add(key);
            }
        }
    }

    /// The health monitor's pod side: every agent pod's health (its status, and its
    /// Lease as seen on our clock), an Event on the pod and its pool when a pod turns
    /// unhealthy, the agents and stalled-items gauges. Items held by an unhealthy pod are
    /// dealt with by their own reconcile (the hub decides).
    async fn check_pods(&self) {
        let now = Timestamp::now();
        let leading = self.ctx.leader.is_leading();
        let mut counts: BTreeMap<(String, String, String), i64> = BTreeMap::new();
        let mut turned: Vec<(std::sync::Arc<Pod>, PodHealth)> = Vec::new();
        let pods = self.pods.state();
        {
            let mut health = self.lock_health();
            health.retain(|k, _| pods.iter().any(|p| key_of(p.as_ref()).as_ref() == Some(k)));
            for pod in &pods {
                let Some(key) = key_of(pod.as_ref()) else {
                    continue;
                };
                let pool = pod.labels().get(labels::POOL).cloned().unwrap_or_default();
                let mut h = pod_health(pod, now);
                if h.health == AgentHealth::Healthy
                    && let Some(unchanged) = self.stale_lease_of(&key, now)
                {
                    h = PodHealth {
                        health: AgentHealth::Stale,
                        reason: "LeaseExpired".into(),
                        detail: format!(
                            "agent lease not renewed for {}s (seen on the supervisor's clock)",
                            unchanged.as_secs()
                        ),
                        orphans: Orphans::None,
                    };
                }
                *counts
                    .entry((key.0.clone(), pool, h.health.as_str().to_owned()))
                    .or_default() += 1;
                let before = health.insert(key, h.health);
                if h.health.is_unhealthy() && before != Some(h.health) {
                    turned.push((pod.clone(), h));
                }
            }
        }
        if !leading {
            self.metrics.set_agents(&BTreeMap::new());
            self.metrics.set_stalled(&BTreeMap::new());
            return;
        }
        self.metrics.set_agents(&counts);
        self.metrics.set_stalled(&self.stalled_counts(now));
        for (pod, h) in turned {
            self.publish_pod_health(&pod, &h).await;
        }
    }

    /// The lease duration an agent's Lease is judged by: its pool's `leaseSeconds`, found
    /// through the pod the Lease is named after (the admission policy lets an agent hold
    /// only `triad-agent-<its pod>`, and only the pools role labels pods). Never what
    /// the Lease says of itself, which its holder writes. None when the pod or its pool
    /// is not (yet) known.
    fn pool_lease_seconds(&self, lease: &Key) -> Option<Duration> {
        let (ns, name) = lease;
        let pod_name = name.strip_prefix("triad-agent-")?;
        let pod = self.pods.get(&ObjectRef::new(pod_name).within(ns))?;
        let pool_name = pod.labels().get(labels::POOL)?;
        let pool = self.pools.get(&ObjectRef::new(pool_name).within(ns))?;
        u64::try_from(pool.spec.lease_seconds)
            .ok()
            .filter(|s| *s > 0)
            .map(Duration::from_secs)
    }

    /// How long the agent Lease of this pod has been unchanged, when that is a whole
    /// lease duration and we may judge (after our own start-up wait).
    fn stale_lease_of(&self, pod: &Key, now: Timestamp) -> Option<Duration> {
        let key = (pod.0.clone(), format!("triad-agent-{}", pod.1));
        let leases = self.lock_leases();
        let seen = leases.get(&key)?;
        let duration = self.pool_lease_seconds(&key).unwrap_or(seen.duration);
        (seen.observer.is_stale(duration, now) && may_reclaim(self.started_at, duration, now))
            .then(|| seen.observer.unchanged_for(now))
    }

    /// Running items per namespace with no progress for their queue's stallSeconds.
    fn stalled_counts(&self, now: Timestamp) -> BTreeMap<String, i64> {
        let mut out = BTreeMap::new();
        for item in self.items.state() {
            let Some(ns) = item.namespace() else { continue };
            let (policy, ..) = self.policy(&item);
            let last = key_of(item.as_ref()).and_then(|k| self.progress_seen_at(&k));
            let stalled = item.phase() == Some(Phase::Running)
                && stall_since(last, None, policy.stall_seconds, now).is_some();
            let n = out.entry(ns).or_insert(0);
            if stalled {
                *n += 1;
            }
        }
        out
    }

    /// An Event on the pod and one on its pool saying why the pod is unhealthy. The
    /// pool controller owns the pool's `PodsHealthy` condition; we only add Events.
    async fn publish_pod_health(&self, pod: &Pod, h: &PodHealth) {
        let name = pod.name_any();
        let ns = pod.namespace().unwrap_or_default();
        let note = if h.health.is_unhealthy() {
            format!("agent pod {name} is {}: {}", h.health.as_str(), h.detail)
        } else {
            format!(
                "agent pod {name}: {}; claims made before are void",
                h.detail
            )
        };
        info!(pod = %name, namespace = %ns, health = h.health.as_str(), "{}", h.detail);
        let event = Event {
            type_: EventType::Warning,
            reason: h.reason.clone(),
            note: Some(note.clone()),
            action: "Diagnose".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &pod.object_ref(&())).await {
            debug!(error = %e, "event not published");
        }
        let Some(pool) = pod.labels().get(labels::POOL).cloned() else {
            return;
        };
        let reference = match self.ctx.api::<AgentPool>().get_opt(&pool).await {
            Ok(Some(p)) => p.object_ref(&()),
            _ => ObjectReference {
                api_version: Some("triad.dev/v1alpha1".into()),
                kind: Some("AgentPool".into()),
                name: Some(pool.clone()),
                namespace: Some(ns.clone()),
                ..Default::default()
            },
        };
        let event = Event {
            secondary: Some(pod.object_ref(&())),
            ..event
        };
        if let Err(e) = self.recorder.publish(&event, &reference).await {
            debug!(error = %e, "event not published");
        }
    }

    /// The health signal for the holder's pod: when the process that made the claim is
    /// gone (the pod is crash-looping, OOM-killed, never started, exited, or its agent
    /// container restarted since the claim). Only claims that name the pod are touched,
    /// so items are never burned by agents that never held them. Also when the fault
    /// began, if the pod says.
    fn pod_signal(
        &self,
        ns: &str,
        item: &WorkItem,
        now: Timestamp,
    ) -> Option<(Signal, Option<Timestamp>, Arc<Pod>, PodHealth)> {
        let claim = item.status.as_ref()?.claim.as_ref()?;
        let pod = self
            .pods
            .get(&ObjectRef::new(claim.pod.as_deref()?).within(ns))?;
        let h = pod_health(&pod, now);
        if !h.orphans_claim(claim.acquired_at.as_ref().map(|t| t.0)) {
            return None;
        }
        let fault = match h.orphans {
            Orphans::ClaimedBefore(t) => Some(t),
            _ => pod.status.as_ref().and_then(|s| {
                s.container_statuses.iter().flatten().find_map(|c| {
                    let now = c.state.as_ref().and_then(|s| s.terminated.as_ref());
                    let last = c.last_state.as_ref().and_then(|s| s.terminated.as_ref());
                    now.or(last)?.finished_at.as_ref().map(|t| t.0)
                })
            }),
        };
        let signal = if h.delete_pod() {
            Signal::PodUnhealthy {
                reason: h.reason.clone(),
            }
        } else {
            Signal::HolderGone {
                reason: h.reason.clone(),
            }
        };
        Some((signal, fault, pod, h))
    }

    /// The health signal for the holder's lease, when it is stale on our clock and we
    /// may reclaim; also when to look again for it. Returns the time the fault began
    /// (last change we saw) for the latency metric.
    fn lease_signal(
        &self,
        ns: &str,
        item: &WorkItem,
        now: Timestamp,
    ) -> (Option<(Signal, Timestamp)>, Option<Duration>) {
        let Some(claim) = item.status.as_ref().and_then(|s| s.claim.as_ref()) else {
            return (None, None);
        };
        // An item claimed without a Lease has no heartbeat to judge.
        let Some(lease) = claim.lease.clone() else {
            return (None, None);
        };
        let key = (ns.to_owned(), lease);
        let pool_says = self.pool_lease_seconds(&key);
        let (since, duration) = match self.lock_leases().get(&key) {
            Some(seen) => (
                seen.observer.last_change_seen_at(),
                pool_says.unwrap_or(seen.duration),
            ),
            None => {
                let since = *self.lock_missing().entry(key).or_insert(now);
                (
                    since,
                    pool_says.unwrap_or(DEFAULT_LEASE) + MISSING_LEASE_MARGIN,
                )
            }
        };
        let stale_at = since
            .checked_add(jiff::SignedDuration::try_from(duration).unwrap_or_default())
            .unwrap_or(since);
        let reclaim_at = self
            .started_at
            .checked_add(jiff::SignedDuration::try_from(duration).unwrap_or_default())
            .unwrap_or(self.started_at);
        if now >= stale_at && may_reclaim(self.started_at, duration, now) {
            let observed_for =
                Duration::try_from(now.duration_since(since)).unwrap_or(Duration::ZERO);
            let signal = Signal::LeaseStale {
                agent: claim.agent.clone(),
                observed_for,
            };
            return (Some((signal, since)), None);
        }
        let until = stale_at.max(reclaim_at).duration_since(now);
        let wait = Duration::try_from(until).unwrap_or(Duration::ZERO);
        (None, Some(wait + Duration::from_millis(50)))
    }

    /// Looks at one Running item; returns when to look again (None: not Running).
    async fn reconcile(&self, key: &Key) -> Option<Duration> {
        let (ns, name) = key;
        let item = self.items.get(&ObjectRef::new(name).within(ns))?;
        if item.phase() != Some(Phase::Running) {
            return None;
        }
        let status = item.status.as_ref()?;
        // The attempt already has its outcome: the scheduler acts on it next.
        if status.outcome.is_some() {
            return Some(RECHECK);
        }
        if !self.ctx.leader.is_leading() {
            return Some(RECHECK);
        }
        let now = Timestamp::now();
        let (policy, default_budget, timeouts) = self.policy(&item);
        let mut signals = Vec::new();
        // When each monitor's fault began, for the fault-to-intervention metric.
        let mut faults: HashMap<Monitor, Timestamp> = HashMap::new();
        let mut fault = |m: Monitor, at: Timestamp| {
            let e = faults.entry(m).or_insert(at);
            *e = (*e).min(at);
        };
        let mut again = RECHECK;

        // Health: the holder's lease, the holder's pod.
        let (lease, wait) = self.lease_signal(ns, &item, now);
        if let Some((signal, since)) = lease {
            signals.push(signal);
            fault(Monitor::Health, since);
        }
        if let Some(wait) = wait {
            again = again.min(wait);
        }
        let unhealthy_pod = self
            .pod_signal(ns, &item, now)
            .map(|(signal, since, pod, h)| {
                signals.push(signal);
                if let Some(since) = since {
                    fault(Monitor::Health, since);
                }
                (pod, h)
            });
        // Progress.
        // Judged by when we saw progress change (our clock), not by the agent's stamps.
        let last_progress = self.progress_seen_at(key);
        let started = self.attempt_seen_at(key);
        if let Some(since) = stall_since(last_progress, None, policy.stall_seconds, now) {
            signals.push(Signal::Stalled { since });
            fault(Monitor::Progress, since);
        }
        // Budget: usage is written with progress, so its last write dates a crossing.
        let budget = effective_budget(&item.spec.budget, &default_budget, &status.budget_extension);
        let usage = budget_signals(&status.usage, &budget);
        if !usage.is_empty()
            && let Some(at) = last_progress.or(started)
        {
            fault(Monitor::Budget, at);
        }
        signals.extend(usage);
        // Violations: reported by the work command, and the rule-based ones.
        if let Some(v) = reported_violation(&item) {
            signals.push(violation_signal(&v, &policy));
            fault(Monitor::Violation, v.at);
        }
        if let Some(at) = attempt_timed_out(started, &timeouts, now) {
            signals.push(Signal::AttemptTimeout);
            fault(Monitor::Violation, at);
        }
        if let Some(at) = deadline_passed_at(&item, &timeouts, now) {
            signals.push(Signal::PastDeadline);
            fault(Monitor::Violation, at);
        }

        let steps = decide(&item, &policy, &signals, now);
        let clear = leftover_conditions(&item);
        if steps.is_empty() && clear.is_empty() {
            return Some(again);
        }
        match self.carry_out(&item, &steps, &clear, now).await {
            Ok(true) => {
                // The pod and its pool hear why (once per state; the pod may be gone
                // before the pod check sees it).
                if let Some((pod, h)) = unhealthy_pod
                    && steps
                        .iter()
                        .any(|s| matches!(s.action, Action::FenceOut { .. }))
                {
                    let first = key_of(pod.as_ref())
                        .is_some_and(|k| self.lock_health().insert(k, h.health) != Some(h.health));
                    if first || !h.health.is_unhealthy() {
                        self.publish_pod_health(&pod, &h).await;
                    }
                }
                let mut timed: Vec<Monitor> = Vec::new();
                for step in &steps {
                    self.metrics
                        .intervention(step.monitor.as_str(), step.action.name());
                    if step.monitor == Monitor::Violation
                        && step.action != Action::Warn
                        && let Some(rule) = match step.reason.as_str() {
                            "AttemptTimeout" => Some(RULE_ATTEMPT_TIMEOUT),
                            "DeadlineExceeded" => Some(RULE_PAST_DEADLINE),
                            _ => None,
                        }
                    {
                        self.metrics.violations(rule, 1);
                    }
                    if step.action != Action::DeletePod
                        && !timed.contains(&step.monitor)
                        && let Some(f) = faults.get(&step.monitor)
                    {
                        timed.push(step.monitor);
                        self.metrics.fault_to_intervention(
                            step.monitor.as_str(),
                            now.duration_since(*f).as_secs_f64(),
                        );
                    }
                }
                Some(Duration::from_millis(500))
            }
            // 409: the item changed since we looked; decide again on the new version.
            Ok(false) => Some(Duration::from_millis(300)),
            Err(err) => {
                warn!(item = %name, namespace = %ns, error = %err, "supervisor write failed");
                Some(RECHECK)
            }
        }
    }

    /// Writes the steps (and withdraws conditions left from an earlier attempt) as one
    /// CAS patch, then deletes the pod and publishes Events. Ok(false) on a conflict.
    async fn carry_out(
        &self,
        item: &WorkItem,
        steps: &[Step],
        clear: &[&str],
        now: Timestamp,
    ) -> Result<bool, kube::Error> {
        let Some(plan) = patch::plan(item, steps, clear, now) else {
            return Ok(true);
        };
        let ns = item.namespace().unwrap_or_default();
        let name = item.name_any();
        let api: Api<WorkItem> = Api::namespaced(self.ctx.client.clone(), &ns);
        match api
            .patch_status(
                &name,
                &patch_params(managers::SUPERVISOR),
                &Patch::Merge(&plan.body),
            )
            .await
        {
            Ok(_) => {}
            Err(e) if is_conflict(&e) => return Ok(false),
            Err(e) if is_not_found(&e) => return Ok(true),
            Err(e) => return Err(e),
        }
        for step in steps {
            info!(item = %name, namespace = %ns, monitor = step.monitor.as_str(),
                action = step.action.name(), reason = %step.reason, "{}", step.message);
        }
        let pod = item
            .status
            .as_ref()
            .and_then(|s| s.claim.as_ref())
            .and_then(|c| c.pod.clone());
        if plan.delete_pod
            && let Some(pod) = &pod
        {
            let pods: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &ns);
            match pods.delete(pod, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => warn!(%pod, error = %e, "could not delete agent pod"),
            }
        }
        // The pod involved (fenced out of it, or deleted) hears about it too.
        let pod_ref = pod.as_ref().map(|p| {
            self.pods
                .get(&ObjectRef::new(p).within(&ns))
                .map(|p| p.object_ref(&()))
                .unwrap_or_else(|| ObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: Some(p.clone()),
                    namespace: Some(ns.clone()),
                    ..Default::default()
                })
        });
        for step in steps {
            self.publish(item, step).await;
            if let Some(r) = &pod_ref
                && matches!(step.action, Action::FenceOut { .. } | Action::DeletePod)
            {
                self.publish_on(item, step, r).await;
            }
        }
        Ok(true)
    }

    async fn publish(&self, item: &WorkItem, step: &Step) {
        self.publish_on(item, step, &item.object_ref(&())).await;
    }

    /// The step's Event on `reference` (the item, or the pod involved).
    async fn publish_on(&self, item: &WorkItem, step: &Step, reference: &ObjectReference) {
        let warning = !matches!(step.action, Action::Extend { .. });
        let event = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: step.reason.clone(),
            note: Some(format!(
                "{} ({} monitor): {}",
                step.action.name(),
                step.monitor.as_str(),
                step.message
            )),
            action: step.action.name().into(),
            secondary: (reference.kind.as_deref() != Some("WorkItem"))
                .then(|| item.object_ref(&())),
        };
        if let Err(e) = self.recorder.publish(&event, reference).await {
            debug!(error = %e, "event not published");
        }
    }
}
