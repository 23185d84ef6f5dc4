//! The supervisor role: watches agent Leases and Running WorkItems, turns what it sees
//! into signals for the hub in `core::supervision`, and carries out the hub's steps.
//! It never assigns work and never chooses what follows an attempt: it writes
//! conditions, cancel requests and fence-outs (outcomes), and the scheduler decides.
//!
//! Shape: a Lease watch feeds one `LeaseObserver` per agent Lease (staleness measured
//! on our own clock); a watch of Running items (field selector `status.phase=Running`)
//! and a WorkQueue cache feed a dedup reconcile queue. Each Running item is rechecked
//! on its own timer (at most every [`RECHECK`], sooner when its lease goes stale), so
//! time-based faults are found without full scans. Every write is one merge patch at
//! the resourceVersion the decision was made on; a 409 means "look again".

mod metrics;
mod patch;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, Patch};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource, ResourceExt};
use tracing::{debug, info, warn};

use crate::api::{Phase, Supervision, WorkItem, WorkQueue};
use crate::core::supervision::{
    Action, LeaseObserver, Signal, Step, attempt_started_at, budget_signals, decide,
    effective_budget, may_reclaim, stall_since,
};
use crate::k8s::queue::ReconcileQueue;
use crate::k8s::{RoleContext, is_conflict, is_not_found, managers, patch_params};

type Key = (String, String);

/// Label every agent Lease carries.
const AGENT_LEASE_SELECTOR: &str = "app.kubernetes.io/component=triad-agent";
/// How often a Running item is looked at when nothing about it changes.
const RECHECK: Duration = Duration::from_secs(2);
/// Lease duration assumed for a Lease we have never seen (AgentPool default).
const DEFAULT_LEASE: Duration = Duration::from_secs(15);
/// Extra wait, on top of a lease duration, before an item whose Lease does not exist
/// at all is reclaimed: the agent creates its Lease before it claims.
const MISSING_LEASE_MARGIN: Duration = Duration::from_secs(5);
const WORKERS: usize = 4;

struct SeenLease {
    observer: LeaseObserver,
    duration: Duration,
}

struct Supervisor {
    ctx: RoleContext,
    items: Store<WorkItem>,
    queues: Store<WorkQueue>,
    leases: Mutex<HashMap<Key, SeenLease>>,
    /// Leases named by a claim but not seen, and since when (our clock).
    missing: Mutex<HashMap<Key, Timestamp>>,
    queue: Arc<ReconcileQueue<Key>>,
    recorder: Recorder,
    metrics: metrics::SupervisorMetrics,
    started_at: Timestamp,
}

/// What the supervisor never reads from a cached item.
fn slim(item: &mut WorkItem) {
    item.spec.payload = None;
    item.metadata.managed_fields = None;
    if let Some(s) = item.status.as_mut() {
        s.result = None;
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
    let (items, items_writer) = reflector::store();
    let (queues, queues_writer) = reflector::store();
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
        leases: Mutex::new(HashMap::new()),
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
                    Ok(watcher::Event::Apply(i) | watcher::Event::InitApply(i)) => {
                        if let Some(key) = key_of(&i) {
                            sup.queue.add(key);
                        }
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
        tasks.spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                if let Err(err) = event {
                    warn!(%err, "WorkQueue watch error; retrying");
                }
            }
        });
    }
    let synced = async {
        sup.items.wait_until_ready().await?;
        sup.queues.wait_until_ready().await
    };
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
                                observer: LeaseObserver::new(marker, now),
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
            watcher::Event::Init | watcher::Event::InitDone => {}
        }
    }

    fn lock_leases(&self) -> std::sync::MutexGuard<'_, HashMap<Key, SeenLease>> {
        self.leases.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_missing(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Timestamp>> {
        self.missing.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn policy(&self, item: &WorkItem) -> (Supervision, crate::api::Counters) {
        let queue = item
            .namespace()
            .zip(item.effective_queue().map(str::to_owned));
        queue
            .and_then(|(ns, q)| self.queues.get(&ObjectRef::new(&q).within(&ns)))
            .map(|q| (q.spec.supervision.clone(), q.spec.default_budget.clone()))
            .unwrap_or_default()
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
        let (since, duration) = match self.lock_leases().get(&key) {
            Some(seen) => (seen.observer.last_change_seen_at(), seen.duration),
            None => {
                let since = *self.lock_missing().entry(key).or_insert(now);
                (since, DEFAULT_LEASE + MISSING_LEASE_MARGIN)
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
        let (policy, default_budget) = self.policy(&item);
        let mut signals = Vec::new();
        let mut faults: Vec<Timestamp> = Vec::new();
        let mut again = RECHECK;

        let (lease, wait) = self.lease_signal(ns, &item, now);
        if let Some((signal, since)) = lease {
            signals.push(signal);
            faults.push(since);
        }
        if let Some(wait) = wait {
            again = again.min(wait);
        }
        let last_progress = status
            .progress
            .as_ref()
            .and_then(|p| p.updated_at.as_ref())
            .map(|t| t.0);
        if let Some(since) = stall_since(
            last_progress,
            attempt_started_at(&item),
            policy.stall_seconds,
            now,
        ) {
            signals.push(Signal::Stalled { since });
            faults.push(since);
        }
        let budget = effective_budget(&item.spec.budget, &default_budget, &status.budget_extension);
        signals.extend(budget_signals(&status.usage, &budget));
        if item.spec.deadline.as_ref().is_some_and(|d| now >= d.0) {
            signals.push(Signal::PastDeadline);
        }

        let steps = decide(&item, &policy, &signals, now);
        if steps.is_empty() {
            return Some(again);
        }
        match self.carry_out(&item, &steps, now).await {
            Ok(true) => {
                let fault = faults.into_iter().min();
                for step in &steps {
                    self.metrics
                        .intervention(step.monitor.as_str(), step.action.name());
                    if let Some(f) = fault.filter(|_| {
                        matches!(
                            step.action,
                            Action::FenceOut { .. } | Action::RequestCancel(_)
                        )
                    }) {
                        self.metrics
                            .fault_to_intervention(now.duration_since(f).as_secs_f64());
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

    /// Writes the steps as one CAS patch, then deletes the pod and publishes Events.
    /// Ok(false) on a conflict.
    async fn carry_out(
        &self,
        item: &WorkItem,
        steps: &[Step],
        now: Timestamp,
    ) -> Result<bool, kube::Error> {
        let Some(plan) = patch::plan(item, steps, now) else {
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
        for step in steps {
            self.publish(item, step).await;
        }
        Ok(true)
    }

    async fn publish(&self, item: &WorkItem, step: &Step) {
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
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &item.object_ref(&())).await {
            debug!(error = %e, "event not published");
        }
    }
}
