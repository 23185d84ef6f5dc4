//! A WorkRequest's reconcile: validate the task graph → plan the items (pure, in
//! `core::graph`) → create the missing ones → cascade cancel → roll item phases up.

use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time};
use kube::api::{Patch, PostParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource};
use serde_json::json;
use tracing::{instrument, warn};

use crate::api::{
    RequestPhase, WorkItem, WorkQueue, WorkRequest, WorkRequestStatus, fit_condition,
};
use crate::core::graph::plan;
use crate::core::phase::effective_phase;
use crate::core::rollup::request_rollup;
use crate::core::routing::{Route, route};
use crate::k8s::{is_conflict, managers, patch_params};

use super::Scheduler;
use super::index::Key;

pub const VALID: &str = "Valid";

fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
) -> Condition {
    let mut c = Condition {
        type_: type_.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message,
        last_transition_time: Time(jiff::Timestamp::now()),
        observed_generation: generation,
    };
    // Within the schema's bounds: a message can name many items or tasks.
    fit_condition(&mut c);
    c
}

/// Keeps the transition time when a condition did not change, so status writes stop.
fn merge_conditions(old: &[Condition], new: Vec<Condition>) -> Vec<Condition> {
    new.into_iter()
        .map(|mut c| {
            if let Some(prev) = old.iter().find(|o| o.type_ == c.type_)
                && prev.status == c.status
                && prev.reason == c.reason
                && prev.message == c.message
            {
                c.last_transition_time = prev.last_transition_time.clone();
            }
            c
        })
        .collect()
}

#[instrument(skip(sched), fields(request = %format!("{}/{}", key.0, key.1)))]
pub(super) async fn reconcile(sched: &Arc<Scheduler>, key: &Key) {
    if !sched.ctx.leader.is_leading() {
        return;
    }
    let (ns, name) = key;
    let Some(request) = sched.requests.get(&ObjectRef::new(name).within(ns)) else {
        return;
    };
    if request.metadata.deletion_timestamp.is_some() {
        return;
    }
    let _timer = sched.metrics.controller.time_reconcile("workrequest");
    let old = request.status.clone().unwrap_or_default();
    let generation = request.metadata.generation;
    let requests: Api<WorkRequest> = Api::namespaced(sched.ctx.client.clone(), ns);
    let items: Api<WorkItem> = Api::namespaced(sched.ctx.client.clone(), ns);

    let planned = match plan(name, &request.spec) {
        Ok(p) => p,
        Err(err) => {
            // Refused as a whole: no items, and a condition that names the problem.
            let status = WorkRequestStatus {
                phase: Some(RequestPhase::Invalid),
                observed_generation: generation,
                conditions: merge_conditions(
                    &old.conditions,
                    vec![condition(
                        VALID,
                        false,
                        err.reason(),
                        err.to_string(),
                        generation,
                    )],
                ),
                ..Default::default()
            };
            if old != status {
                write_status(&requests, name, &status).await;
                sched
                    .publish_request(&request, err.reason(), err.to_string(), true)
                    .await;
            }
            return;
        }
    };

    let queues_in_ns: Vec<Arc<WorkQueue>> = sched
        .queues
        .state()
        .into_iter()
        .filter(|q| q.metadata.namespace.as_deref() == Some(ns.as_str()))
        .collect();
    let owner = request.controller_owner_ref(&());
    let uid = request.metadata.uid.clone();
    let mut collisions = Vec::new();
    for planned_item in &planned {
        if let Some(existing) = sched
            .items
            .get(&ObjectRef::new(&planned_item.name).within(ns))
        {
            let ours = existing
                .metadata
                .owner_references
                .as_ref()
                .is_some_and(|refs| refs.iter().any(|r| Some(&r.uid) == uid.as_ref()));
            if !ours {
                collisions.push(planned_item.name.clone());
            }
            continue;
        }
        let mut spec = planned_item.spec.clone();
        let mut item = WorkItem::new(&planned_item.name, spec.clone());
        // Route typed tasks now, at creation, so an item without dependencies is
        // claimable as created (no extra write).
        if spec.queue.is_none()
            && let Route::To(q) = route(
                &item,
                queues_in_ns
                    .iter()
                    .filter_map(|q| Some((q.metadata.name.as_deref()?, &q.spec))),
            )
        {
            spec.queue = Some(q);
        }
        item = WorkItem {
            metadata: ObjectMeta {
                name: Some(planned_item.name.clone()),
                namespace: Some(ns.clone()),
                labels: Some(planned_item.labels.clone()),
                owner_references: owner.clone().map(|o| vec![o]),
                ..Default::default()
            },
            spec,
            status: None,
        };
        match items
            .create(
                &PostParams {
                    field_manager: Some(managers::SCHEDULER.into()),
                    ..Default::default()
                },
                &item,
            )
            .await
        {
            Ok(_) => {}
            Err(e) if is_conflict(&e) => {}
            Err(e) => {
                warn!(item = %planned_item.name, error = %e, "creating a WorkItem failed");
                sched
                    .request_queue
                    .add_after(key.clone(), std::time::Duration::from_secs(2));
            }
        }
    }

    let members = sched.lock_index().request_items(ns, name);
    if request.spec.cancel {
        for member in &members {
            let Some(item) = sched.items.get(&ObjectRef::new(member).within(ns)) else {
                continue;
            };
            if !item.spec.cancel && !effective_phase(&item).is_finished() {
                let body = json!({"spec": {"cancel": true}});
                if let Err(e) = items
                    .patch(
                        member,
                        &patch_params(managers::SCHEDULER),
                        &Patch::Merge(&body),
                    )
                    .await
                {
                    warn!(item = %member, error = %e, "cascading cancel failed");
                }
            }
        }
    }

    let phases: Vec<(String, crate::api::Phase)> = members
        .iter()
        .filter_map(|m| {
            sched
                .items
                .get(&ObjectRef::new(m).within(ns))
                .map(|i| (m.clone(), effective_phase(&i)))
        })
        .collect();
    let rollup = request_rollup(
        phases.iter().map(|(n, p)| (n.as_str(), *p)),
        request.spec.cancel,
    );
    let mut status = WorkRequestStatus {
        observed_generation: generation,
        ..Default::default()
    };
    rollup.write(&mut status);
    // Items not created yet count as pending.
    let missing = planned.len() as i64 - status.total;
    if missing > 0 {
        status.total += missing;
        status.pending += missing;
        status.progress = Some(format!("{}/{}", status.succeeded, status.total));
        if status.phase == Some(RequestPhase::Succeeded) {
            status.phase = Some(RequestPhase::Running);
        }
    }
    let mut conditions = vec![condition(
        VALID,
        true,
        "Valid",
        format!("{} items planned", planned.len()),
        generation,
    )];
    if !collisions.is_empty() {
        conditions.push(condition(
            "NameCollision",
            true,
            "NameCollision",
            format!(
                "items already exist and are not owned by this request: {}",
                collisions.join(", ")
            ),
            generation,
        ));
    }
    let done = matches!(
        status.phase,
        Some(RequestPhase::Succeeded | RequestPhase::Failed | RequestPhase::Cancelled)
    );
    conditions.push(condition(
        "Complete",
        done,
        status
            .phase
            .map_or("Pending".into(), |p| format!("{p:?}"))
            .as_str(),
        rollup.message.clone(),
        generation,
    ));
    status.conditions = merge_conditions(&old.conditions, conditions);
    if old != status {
        if done && old.phase != status.phase {
            let failed = status.phase == Some(RequestPhase::Failed);
            sched
                .publish_request(
                    &request,
                    if failed { "Failed" } else { "Finished" },
                    rollup.message.clone(),
                    failed,
                )
                .await;
        }
        write_status(&requests, name, &status).await;
    }
}

async fn write_status(api: &Api<WorkRequest>, name: &str, status: &WorkRequestStatus) {
    let body = json!({"status": status});
    if let Err(e) = api
        .patch_status(
            name,
            &patch_params(managers::SCHEDULER),
            &Patch::Merge(&body),
        )
        .await
    {
        warn!(request = %name, error = %e, "request status write failed");
    }
}

impl Scheduler {
    async fn publish_request(
        &self,
        request: &WorkRequest,
        reason: &str,
        note: String,
        warning: bool,
    ) {
        let event = crate::k8s::watch::event(warning, reason, note, "Decompose");
        let _ = self
            .recorder
            .publish(&event, &request.object_ref(&()))
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_are_cut_to_the_schema_bounds() {
        // A name collision lists every colliding item.
        let names: Vec<String> = (0..2000).map(|i| format!("request-task-{i}")).collect();
        let c = condition(
            "NameCollision",
            true,
            "NameCollision",
            format!("items already exist: {}", names.join(", ")),
            None,
        );
        assert_eq!(c.message.chars().count(), crate::api::MAX_MESSAGE_LEN);
        assert!(c.message.ends_with('…'));
    }
}
