//! The pool role: keeps each AgentPool's agent pods in line with its spec and its
//! queues' depth, and reports what they are doing.
//!
//! One reconcile is a pipeline: **read** (the pool, its pods, which of them are busy,
//! its queues' depth — all from slim watch caches) → **validate** and **build** (the pod
//! template, [`template`]) → **decide** (how many agents, which pods to create and
//! delete, [`scaling`]) → **apply** (agent RBAC, pod deletions and creations) →
//! **status** ([`status`], a merge patch of the status subresource) and Events. The
//! decisions are pure functions, unit-tested on their own.
//!
//! Watches (via [`kube::runtime::Controller`]): AgentPools; the pods they own; WorkQueues,
//! mapped to the pools that pull from them; Running WorkItems (field selector
//! `status.phase=Running`), mapped through the claiming pod to its pool. Every pool is
//! also requeued every [`RESYNC`] so a scale-down delay elapses without any event.
//!
//! Only the leader writes ([`crate::k8s::lease::LeaderGate`]); a standby keeps its
//! caches warm and returns early. What is kept in memory, per pool:
//!
//! - the scale-down window (since when the target has been lower, and its peak): lost
//!   on restart or failover, so a scale-down can come later than configured, never
//!   earlier; the status's `desired` seeds the new leader;
//! - expectations: pods this process created or deleted that the watch has not shown
//!   yet, so a reconcile that runs before the watch catches up does not create a second
//!   set of agents (as the ReplicaSet controller does).
//!
//! Busy agents (a Running WorkItem whose `status.claim.pod` or `claim.agent` names the
//! pod) are never deleted to scale in; idle ones go first, unready before ready, newest
//! first. An idle agent that claims an item between our decision and its deletion
//! drains on SIGTERM (the agent runtime releases the item without counting a failure).
//!
//! Choices that differ from the first sketch, and why:
//!
//! - Mortal agents (and `emptyQueuePolicy: Exit`) get `restartPolicy: OnFailure`, not
//!   `Never`: exit 0 still ends the pod (`Succeeded`, then replaced), but a crash
//!   restarts in place with the kubelet's back-off and shows as `CrashLoopBackOff`,
//!   instead of the controller creating a new pod per crash.
//! - With `emptyQueuePolicy: Exit`, agents are created only while the pool's queues
//!   report queued items, so an agent that exited on an empty queue is not replaced by
//!   one that exits again at once.
//! - Pods carry a `triad.dev/template-hash` label; after a template (or queue, lease,
//!   lifecycle) change, idle agents are replaced a few at a time (a quarter of the
//!   desired count, at least one, may be unavailable); busy ones finish first.
//! - `minReplicas` defaults to 0 when `maxReplicas` is set (as in KEDA).
//! - Agent liveness (Leases) is not watched here: that is the supervisor's job.
//!
//! Each watch that triggers reconciles and the slim cache the reconcile reads from are
//! separate watches of the same objects: kube-runtime shares one watch between the two
//! only behind its `unstable-runtime-subscribe` feature. Create/delete expectations
//! and the periodic resync cover a cache that lags the event that triggered a reconcile.

pub mod cache;
pub mod health;
pub mod metrics;
pub mod rbac;
mod reconcile;
pub mod scaling;
pub mod status;
pub mod template;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::controller::Controller;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};

use crate::api::{AgentPool, AgentPoolSpec, WorkItem, WorkQueue, labels};
use crate::k8s::RoleContext;
use crate::k8s::lease::LeaderGate;
use crate::metrics::ControllerMetrics;
use cache::SlimCache;
use health::PodView;
use metrics::PoolMetrics;
use scaling::Depth;

/// The `controller` label of this role's reconcile metrics.
pub const CONTROLLER: &str = "pools";
/// Every pool is reconciled at least this often.
pub const RESYNC: Duration = Duration::from_secs(5);

/// Who holds a Running item: the claim's pod and agent names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claimant {
    pub pod: Option<String>,
    pub agent: String,
}

fn claimant(item: &WorkItem) -> Option<Claimant> {
    let claim = item.status.as_ref()?.claim.as_ref()?;
    Some(Claimant {
        pod: claim.pod.clone(),
        agent: claim.agent.clone(),
    })
}

fn queue_depth(queue: &WorkQueue) -> Option<Depth> {
    let s = queue.status.clone().unwrap_or_default();
    Some(Depth {
        queued: s.queued,
        running: s.running,
        cancel_grace_seconds: queue.spec.supervision.cancel_grace_seconds,
    })
}

/// What every reconcile shares.
pub struct Context {
    pub client: kube::Client,
    pub leader: LeaderGate,
    pub recorder: Recorder,
    pub metrics: ControllerMetrics,
    pub pool_metrics: PoolMetrics,
    pub pods: SlimCache<PodView>,
    pub busy: SlimCache<Claimant>,
    pub queues: SlimCache<Depth>,
    pub pools: Store<AgentPool>,
    /// Triad's image, for the agent and runner-installer containers.
    pub agent_image: String,
    /// The agents' ClusterRole that each pool's RoleBinding grants.
    pub agent_cluster_role: String,
    memory: Mutex<HashMap<String, reconcile::PoolMemory>>,
}

impl Context {
    /// All caches have listed once.
    pub fn synced(&self) -> bool {
        self.pods.synced() && self.busy.synced() && self.queues.synced()
    }

    /// Queued and running items summed over the pool's queues (each queue once).
    pub fn depth(&self, namespace: &str, spec: &AgentPoolSpec) -> Depth {
        let names: HashSet<&str> = spec.queues.iter().map(|q| q.name.as_str()).collect();
        names
            .into_iter()
            .filter_map(|q| self.queues.get(namespace, q))
            .fold(Depth::default(), Depth::plus)
    }

    /// Names of the pods (and agents) in `namespace` that hold a Running item.
    pub fn busy_pods(&self, namespace: &str) -> HashSet<String> {
        self.busy
            .collect(|(ns, _), c| (ns == namespace).then(|| [c.pod.clone(), Some(c.agent.clone())]))
            .into_iter()
            .flatten()
            .flatten()
            .collect()
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, HashMap<String, reconcile::PoolMemory>> {
        self.memory.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The pools that pull from this queue.
fn pools_for_queue(pools: &Store<AgentPool>, queue: &WorkQueue) -> Vec<ObjectRef<AgentPool>> {
    let ns = queue.namespace();
    let name = queue.name_any();
    pools
        .state()
        .iter()
        .filter(|p| p.namespace() == ns && p.spec.queues.iter().any(|q| q.name == name))
        .map(|p| ObjectRef::from_obj(p.as_ref()))
        .collect()
}

/// The pool of the pod that holds this item.
fn pool_for_item(pods: &SlimCache<PodView>, item: &WorkItem) -> Option<ObjectRef<AgentPool>> {
    let ns = item.namespace()?;
    let c = claimant(item)?;
    let pod = [c.pod, Some(c.agent)]
        .into_iter()
        .flatten()
        .find_map(|name| pods.get(&ns, &name))?;
    Some(ObjectRef::new(pod.pool.as_deref()?).within(&ns))
}

/// Runs the pool controller until the process shuts down.
pub async fn run(role: RoleContext) -> crate::Result<()> {
    let metrics = role.serve.controller_metrics();
    let pool_metrics = role.serve.with_registry(PoolMetrics::register);
    let pools_api: Api<AgentPool> = role.api();
    // Fail fast (and visibly) when the CRD is missing or access is denied.
    pools_api
        .list(&kube::api::ListParams::default().limit(1))
        .await?;
    let pods_api: Api<Pod> = role.api();
    let items_api: Api<WorkItem> = role.api();
    let queues_api: Api<WorkQueue> = role.api();
    let pods_config = watcher::Config::default().labels(labels::POOL);
    let running_config = watcher::Config::default().fields("status.phase=Running");

    let pods = SlimCache::<PodView>::new();
    let busy = SlimCache::<Claimant>::new();
    let queues = SlimCache::<Depth>::new();
    let caches = {
        let (pods, busy, queues) = (pods.clone(), busy.clone(), queues.clone());
        let (pods_api, items_api, queues_api) =
            (pods_api.clone(), items_api.clone(), queues_api.clone());
        let (pods_config, running_config) = (pods_config.clone(), running_config.clone());
        async move {
            tokio::join!(
                pods.run(pods_api, pods_config, health::project),
                busy.run(items_api, running_config, claimant),
                queues.run(queues_api, watcher::Config::default(), queue_depth),
            );
        }
    };

    // No debounce: with kube-runtime 5 a debounced controller stopped acting on owned-pod
    // events and requeues after its first reconcile (an integration test caught agents
    // never being replaced). Staleness of the slim caches is covered by the
    // create/delete expectations and the periodic resync instead.
    let controller = Controller::new(pools_api, watcher::Config::default());
    let store = controller.store();
    let queue_pools = store.clone();
    let item_pods = pods.clone();
    let recorder = Recorder::new(
        role.client.clone(),
        Reporter {
            controller: "triad-pools".into(),
            instance: std::env::var("POD_NAME").ok(),
        },
    );
    let ctx = Arc::new(Context {
        client: role.client.clone(),
        leader: role.leader.clone(),
        recorder,
        metrics,
        pool_metrics,
        pods,
        busy,
        queues,
        pools: store,
        agent_image: template::default_agent_image(),
        agent_cluster_role: rbac::agent_cluster_role_name(),
        memory: Mutex::default(),
    });
    let controller = controller
        .owns(pods_api, pods_config)
        .watches(queues_api, watcher::Config::default(), move |q| {
            pools_for_queue(&queue_pools, &q)
        })
        .watches(items_api, running_config, move |item| {
            pool_for_item(&item_pods, &item)
        })
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok(_) => {}
                Err(kube::runtime::controller::Error::ObjectNotFound(_)) => {}
                Err(err) => tracing::debug!(%err, "pool reconcile"),
            }
        });
    tokio::select! {
        () = controller => {}
        () = caches => {}
    }
    Ok(())
}
