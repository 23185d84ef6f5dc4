//! One reconcile of one AgentPool: read → validate → build → decide → apply → status.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::RoleBinding;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use tracing::{debug, info, instrument, warn};

use super::health::{self, PodView};
use super::scaling::{self, DeleteReason, Depth, Mode, PodPhase, PodState, ScaleState};
use super::status::{self, Counts, Observed};
use super::template::{self, Blueprint, TemplateError};
use super::{CONTROLLER, Context, RESYNC, rbac};
use crate::api::{AgentPool, AgentPoolStatus, EmptyQueuePolicy, find_condition};
use crate::k8s::{is_conflict, is_not_found, managers};
use crate::metrics::ControllerLabels;

/// Pods we created or deleted are expected in the watch within this time; after it we
/// stop waiting for them (the watch is the truth again).
const EXPECTATION_TTL: Duration = Duration::from_secs(60);
/// Agent RBAC is re-applied this often (it is also applied on the first reconcile of
/// a pool by this process, and when the agents' service account changes).
const RBAC_REFRESH: Duration = Duration::from_secs(300);
/// A template the API server refused is not tried again for this long.
const REJECTED_RETRY: Duration = Duration::from_secs(30);

/// What this process remembers about one pool (see the module docs of `pool`).
#[derive(Default)]
pub(super) struct PoolMemory {
    namespace: String,
    name: String,
    scale: Option<ScaleState>,
    creating: HashMap<String, Instant>,
    deleting: HashMap<String, Instant>,
    rbac: Option<(Instant, String)>,
    /// A template hash the API server refused pods for, the error, and when.
    rejected: Option<(String, TemplateError, Instant)>,
}

pub(super) fn error_policy(
    pool: Arc<AgentPool>,
    error: &crate::Error,
    ctx: Arc<Context>,
) -> Action {
    warn!(pool = %pool.name_any(), namespace = ?pool.namespace(), %error, "reconcile failed");
    ctx.metrics
        .reconcile_errors
        .get_or_create(&ControllerLabels {
            controller: CONTROLLER.into(),
        })
        .inc();
    Action::requeue(RESYNC)
}

#[instrument(skip_all, fields(namespace = %pool.namespace().unwrap_or_default(), pool = %pool.name_any()))]
pub(super) async fn reconcile(pool: Arc<AgentPool>, ctx: Arc<Context>) -> crate::Result<Action> {
    let _timer = ctx.metrics.time_reconcile(CONTROLLER);
    forget_deleted_pools(&ctx);
    if !ctx.synced() {
        return Ok(Action::requeue(Duration::from_millis(500)));
    }
    if !ctx.leader.is_leading() {
        return Ok(Action::requeue(RESYNC));
    }
    if pool.metadata.deletion_timestamp.is_some() {
        // The garbage collector removes the pods, Role, RoleBinding and ServiceAccount.
        return Ok(Action::await_change());
    }
    let (Some(ns), Some(uid)) = (pool.namespace(), pool.uid()) else {
        return Ok(Action::await_change());
    };
    let name = pool.name_any();
    let now = Timestamp::now();
    let clock = Instant::now();

    // Read.
    let depth = ctx.depth(&ns, &pool.spec);
    let busy = ctx.busy_pods(&ns);
    let cached: Vec<PodView> = ctx.pods.collect(|(pod_ns, _), v| {
        (pod_ns == &ns && v.owner_uid.as_deref() == Some(uid.as_str())).then(|| v.clone())
    });

    // Validate and build.
    let settings = template::Settings {
        agent_image: ctx.agent_image.clone(),
        // Queues not yet created count with the default grace.
        cancel_grace_seconds: depth
            .cancel_grace_seconds
            .max(crate::api::Supervision::default().cancel_grace_seconds),
    };
    let mut blueprint: Result<Blueprint, TemplateError> =
        template::validate(&pool).map(|t| template::build(&pool, t, &settings));

    // Decide.
    let target = scaling::target(&pool.spec, depth);
    let previous_status = pool.status.as_ref();
    let (states, desired, rbac_due) = {
        let mut memory = ctx.memory();
        let m = memory.entry(uid.clone()).or_default();
        m.namespace.clone_from(&ns);
        m.name.clone_from(&name);
        settle_expectations(m, &cached, clock);
        if let (Ok(bp), Some((hash, e, at))) = (&blueprint, &m.rejected)
            && *hash == bp.hash
            && clock.duration_since(*at) < REJECTED_RETRY
        {
            blueprint = Err(e.clone());
        }
        let fallback = previous_status
            .filter(|s| s.observed_generation.is_some())
            .map_or(target, |s| s.desired);
        let scale = scaling::stabilize(
            m.scale,
            fallback,
            target,
            scaling::bounds(&pool.spec),
            scaling::scale_down_delay(&pool.spec, depth),
            now,
        );
        m.scale = Some(scale);
        let hash = blueprint.as_ref().ok().map(|b| b.hash.as_str());
        let states = pod_states(&cached, m, &busy, hash, now);
        let account = service_account(&pool, &blueprint);
        let rbac_due = m
            .rbac
            .as_ref()
            .is_none_or(|(at, sa)| *sa != account || clock.duration_since(*at) >= RBAC_REFRESH);
        (states, scale.desired, rbac_due)
    };
    let can_create = blueprint.is_ok()
        && (pool.spec.empty_queue_policy != EmptyQueuePolicy::Exit || depth.queued > 0);
    let plan = scaling::plan(
        &states,
        desired,
        can_create,
        scaling::max_unavailable(desired),
    );

    // Apply: agent identity first (pods need their ServiceAccount to exist).
    let mut create_error: Option<String> = None;
    let account = service_account(&pool, &blueprint);
    if rbac_due {
        match apply_rbac(&ctx, &pool, &ns, &account).await {
            Ok(()) => {
                if let Some(m) = ctx.memory().get_mut(&uid) {
                    m.rbac = Some((clock, account.clone()));
                }
            }
            Err(e) => create_error = Some(format!("the agents' identity: {e}")),
        }
    }

    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let mut deleted: Vec<(String, DeleteReason)> = Vec::new();
    for (pod_name, reason) in &plan.delete {
        let uid = cached
            .iter()
            .find(|p| &p.name == pod_name)
            .map(|p| p.uid.clone());
        let dp = DeleteParams {
            preconditions: uid.filter(|u| !u.is_empty()).map(|uid| Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match pods.delete(pod_name, &dp).await {
            Ok(_) => deleted.push((pod_name.clone(), *reason)),
            Err(e) if is_not_found(&e) || is_conflict(&e) => {
                deleted.push((pod_name.clone(), *reason))
            }
            Err(e) => warn!(pod = %pod_name, error = %e, "deleting agent pod failed"),
        }
    }

    let mut created: Vec<String> = Vec::new();
    let mut rejected: Option<TemplateError> = None;
    if let (Ok(bp), None) = (&blueprint, &create_error) {
        let pp = PostParams {
            field_manager: Some(managers::POOLS.into()),
            ..PostParams::default()
        };
        let mut attempts = 0;
        while (created.len() as i32) < plan.create && attempts < plan.create + 3 {
            attempts += 1;
            let pod_name = template::pod_name(&name, &mut rand::rng());
            match pods.create(&pp, &template::pod(&pool, bp, &pod_name)).await {
                Ok(_) => created.push(pod_name),
                Err(e) if is_conflict(&e) => continue,
                Err(kube::Error::Api(s)) if s.code == 422 => {
                    rejected = Some(TemplateError {
                        field: "spec.template".into(),
                        message: s.message,
                    });
                    break;
                }
                Err(e) => {
                    create_error = Some(api_message(&e));
                    break;
                }
            }
        }
    }
    {
        let mut memory = ctx.memory();
        if let Some(m) = memory.get_mut(&uid) {
            for n in &created {
                m.creating.insert(n.clone(), clock);
            }
            for (n, _) in &deleted {
                m.deleting.insert(n.clone(), clock);
            }
            if let (Some(e), Ok(bp)) = (&rejected, &blueprint) {
                m.rejected = Some((bp.hash.clone(), e.clone(), clock));
            }
        }
    }
    if let Some(e) = rejected {
        blueprint = Err(e);
    }

    // Status.
    let finals = after_plan(&states, &deleted, &created, now);
    let counts = counts(&finals);
    let problems: Vec<(String, health::Problem, String)> = cached
        .iter()
        .filter(|p| !deleted.iter().any(|(n, _)| n == &p.name))
        .filter_map(|p| health::diagnose(p, now).map(|(pr, msg)| (p.name.clone(), pr, msg)))
        .collect();
    let health = health::pods_healthy(&problems, counts.replicas as usize);
    let observed = Observed {
        pool: &name,
        generation: pool.metadata.generation,
        desired,
        counts,
        template: blueprint.as_ref().err(),
        create_error: create_error.as_deref(),
        health,
        waiting_for_busy: plan.waiting_for_busy,
    };
    let new_status = status::build(previous_status, &observed, &Time(now));
    if previous_status != Some(&new_status) {
        let api: Api<AgentPool> = Api::namespaced(ctx.client.clone(), &ns);
        api.patch_status(
            &name,
            &PatchParams {
                field_manager: Some(managers::POOLS.into()),
                ..PatchParams::default()
            },
            &Patch::Merge(json!({ "status": new_status })),
        )
        .await?;
    }
    ctx.pool_metrics.set(&ns, &name, desired, counts);

    publish_events(
        &ctx,
        &pool,
        previous_status,
        &new_status,
        depth,
        &created,
        &deleted,
        create_error.as_deref(),
    )
    .await;
    Ok(Action::requeue(RESYNC))
}

/// Drops expectations the watch has caught up with (or that are too old to trust).
fn settle_expectations(m: &mut PoolMemory, cached: &[PodView], clock: Instant) {
    m.creating.retain(|name, at| {
        !cached.iter().any(|p| &p.name == name) && clock.duration_since(*at) < EXPECTATION_TTL
    });
    m.deleting.retain(|name, at| {
        cached.iter().any(|p| &p.name == name && !p.deleting)
            && clock.duration_since(*at) < EXPECTATION_TTL
    });
}

/// The pods as the plan sees them: the cache, corrected by our own recent writes.
fn pod_states(
    cached: &[PodView],
    m: &PoolMemory,
    busy: &std::collections::HashSet<String>,
    hash: Option<&str>,
    now: Timestamp,
) -> Vec<PodState> {
    let mut states: Vec<PodState> = cached
        .iter()
        .map(|p| PodState {
            name: p.name.clone(),
            created: p.created,
            phase: p.phase(),
            terminating: p.deleting || m.deleting.contains_key(&p.name),
            ready: p.ready,
            busy: busy.contains(&p.name),
            // With no valid template there is nothing to roll to.
            current: hash.is_none_or(|h| p.template_hash.as_deref() == Some(h)),
        })
        .collect();
    states.extend(m.creating.keys().map(|name| placeholder(name, now)));
    states
}

/// A pod we created that the watch has not shown yet.
fn placeholder(name: &str, now: Timestamp) -> PodState {
    PodState {
        name: name.to_owned(),
        created: Some(now),
        phase: PodPhase::Pending,
        terminating: false,
        ready: false,
        busy: false,
        current: true,
    }
}

fn after_plan(
    states: &[PodState],
    deleted: &[(String, DeleteReason)],
    created: &[String],
    now: Timestamp,
) -> Vec<PodState> {
    let mut out: Vec<PodState> = states
        .iter()
        .filter(|s| !deleted.iter().any(|(n, _)| n == &s.name))
        .cloned()
        .collect();
    out.extend(created.iter().map(|n| placeholder(n, now)));
    out
}

fn counts(states: &[PodState]) -> Counts {
    let active: Vec<&PodState> = states.iter().filter(|s| s.active()).collect();
    let n = |f: &dyn Fn(&PodState) -> bool| active.iter().filter(|s| f(s)).count() as i32;
    Counts {
        replicas: active.len() as i32,
        ready: n(&|s| s.ready),
        busy: n(&|s| s.busy),
        idle: n(&|s| s.ready && !s.busy),
    }
}

fn service_account(pool: &AgentPool, blueprint: &Result<Blueprint, TemplateError>) -> String {
    match blueprint {
        Ok(bp) => bp.service_account.clone(),
        Err(_) => template::agent_account(&pool.name_any()),
    }
}

/// Applies the pool's agent identity: its ServiceAccount, then the RoleBinding that grants
/// it the agents' ClusterRole. Server-side apply without `force`: a same-named object
/// that this pool does not own (someone's own ServiceAccount, say) is reported and left
/// as it is, never taken over. Errors are messages for the pool's status.
async fn apply_rbac(
    ctx: &Context,
    pool: &AgentPool,
    ns: &str,
    account: &str,
) -> Result<(), String> {
    let pp = PatchParams::apply(managers::POOLS);
    let name = template::agent_account(&pool.name_any());
    let pool_uid = pool.uid().unwrap_or_default();
    let sa: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), ns);
    let existing = sa.get_opt(&name).await.map_err(|e| api_message(&e))?;
    check_owned(
        existing.as_ref(),
        &pool_uid,
        "ServiceAccount",
        &name,
        &pool.name_any(),
    )?;
    sa.patch(&name, &pp, &Patch::Apply(&rbac::service_account(pool)))
        .await
        .map_err(|e| format!("applying ServiceAccount {name}: {}", api_message(&e)))?;
    let bindings: Api<RoleBinding> = Api::namespaced(ctx.client.clone(), ns);
    let want = rbac::role_binding(pool, account, &ctx.agent_cluster_role);
    let existing = bindings.get_opt(&name).await.map_err(|e| api_message(&e))?;
    check_owned(
        existing.as_ref(),
        &pool_uid,
        "RoleBinding",
        &name,
        &pool.name_any(),
    )?;
    if let Some(old) = existing.filter(|b| b.role_ref != want.role_ref) {
        // roleRef is immutable: an earlier Triad bound a per-pool Role, or the chart's
        // agent ClusterRole was renamed. Replace our own binding.
        info!(binding = %name, from = ?old.role_ref.name, to = %want.role_ref.name, "replacing the agents' RoleBinding");
        let dp = DeleteParams {
            preconditions: old.uid().map(|uid| Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match bindings.delete(&name, &dp).await {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(format!("replacing RoleBinding {name}: {}", api_message(&e))),
        }
    }
    bindings
        .patch(&name, &pp, &Patch::Apply(&want))
        .await
        .map_err(|e| format!("applying RoleBinding {name}: {}", api_message(&e)))?;
    debug!(account, "applied agent RBAC");
    Ok(())
}

/// Refuses an existing object that the pool does not control.
fn check_owned<K: Resource>(
    existing: Option<&K>,
    pool_uid: &str,
    kind: &str,
    name: &str,
    pool: &str,
) -> Result<(), String> {
    let Some(obj) = existing else { return Ok(()) };
    let ours = obj
        .meta()
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true) && o.uid == pool_uid);
    if ours {
        Ok(())
    } else {
        Err(format!(
            "{kind} {name} exists and is not owned by AgentPool {pool}; Triad does not take \
             over objects it did not create: delete or rename it, then the pool's agents \
             get their identity"
        ))
    }
}

fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => s.message.clone(),
        other => other.to_string(),
    }
}

/// Forgets pools that no longer exist: their memory and their metric series.
fn forget_deleted_pools(ctx: &Context) {
    let mut memory = ctx.memory();
    memory.retain(|uid, m| {
        let key =
            kube::runtime::reflector::ObjectRef::<AgentPool>::new(&m.name).within(&m.namespace);
        let alive = ctx
            .pools
            .get(&key)
            .is_some_and(|p| p.uid().as_deref() == Some(uid.as_str()));
        if !alive {
            ctx.pool_metrics.forget(&m.namespace, &m.name);
        }
        alive
    });
}

fn scale_reason(pool: &AgentPool, depth: Depth) -> String {
    let queues: Vec<&str> = pool.spec.queues.iter().map(|q| q.name.as_str()).collect();
    match scaling::mode(&pool.spec) {
        Mode::Auto {
            min,
            max,
            items_per_agent,
        } => format!(
            "{} queued and {} running in {}; {items_per_agent} items per agent, between {min} and {max} agents",
            depth.queued,
            depth.running,
            queues.join(", ")
        ),
        Mode::Manual { replicas }
            if depth.total() == 0
                && pool.spec.empty_queue_policy == EmptyQueuePolicy::ScaleDown =>
        {
            format!(
                "every queue is empty (spec.replicas is {replicas}, emptyQueuePolicy ScaleDown)"
            )
        }
        Mode::Manual { replicas } => format!("spec.replicas is {replicas}"),
    }
}

#[allow(clippy::too_many_arguments)]
async fn publish_events(
    ctx: &Context,
    pool: &AgentPool,
    previous: Option<&AgentPoolStatus>,
    new: &AgentPoolStatus,
    depth: Depth,
    created: &[String],
    deleted: &[(String, DeleteReason)],
    create_error: Option<&str>,
) {
    let mut events: Vec<Event> = Vec::new();
    let before = previous.map_or(0, |s| s.desired);
    if new.desired != before {
        let up = new.desired > before;
        events.push(Event {
            type_: EventType::Normal,
            reason: if up { "ScaledUp" } else { "ScaledDown" }.into(),
            note: Some(format!(
                "desired agents {before} → {}: {}",
                new.desired,
                scale_reason(pool, depth)
            )),
            action: "Scale".into(),
            secondary: None,
        });
        info!(from = before, to = new.desired, "scaled");
    }
    if !created.is_empty() {
        events.push(Event {
            type_: EventType::Normal,
            reason: "SuccessfulCreate".into(),
            note: Some(format!("created agent pods {}", created.join(", "))),
            action: "CreatePod".into(),
            secondary: None,
        });
    }
    if !deleted.is_empty() {
        let list: Vec<String> = deleted
            .iter()
            .map(|(n, r)| format!("{n} ({})", r.as_str()))
            .collect();
        events.push(Event {
            type_: EventType::Normal,
            reason: "SuccessfulDelete".into(),
            note: Some(format!("deleted agent pods {}", list.join(", "))),
            action: "DeletePod".into(),
            secondary: None,
        });
    }
    if let Some(e) = create_error {
        events.push(Event {
            type_: EventType::Warning,
            reason: "FailedCreate".into(),
            note: Some(e.chars().take(1000).collect()),
            action: "CreatePod".into(),
            secondary: None,
        });
    }
    let prev_conditions = previous
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let changed_to_false = |type_: &str| {
        let now = find_condition(&new.conditions, type_)?;
        let was = find_condition(prev_conditions, type_);
        (now.status == "False"
            && was.is_none_or(|w| {
                w.status != "False" || w.reason != now.reason || w.message != now.message
            }))
        .then(|| now.clone())
    };
    if let Some(c) = changed_to_false(status::TEMPLATE_VALID) {
        events.push(Event {
            type_: EventType::Warning,
            reason: "InvalidTemplate".into(),
            note: Some(c.message.chars().take(1000).collect()),
            action: "Validate".into(),
            secondary: None,
        });
    }
    if let Some(c) = find_condition(&new.conditions, status::PODS_HEALTHY).filter(|c| {
        c.status == "False"
            && find_condition(prev_conditions, status::PODS_HEALTHY)
                .is_none_or(|w| w.status != "False" || w.reason != c.reason)
    }) {
        events.push(Event {
            type_: EventType::Warning,
            reason: "UnhealthyAgents".into(),
            note: Some(c.message.chars().take(1000).collect()),
            action: "Observe".into(),
            secondary: None,
        });
    }
    let reference = pool.object_ref(&());
    for event in events {
        if let Err(e) = ctx.recorder.publish(&event, &reference).await {
            warn!(error = %e, reason = %event.reason, "publishing event failed");
        }
    }
}
