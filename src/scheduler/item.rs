//! One WorkItem's reconcile: read (from the watch caches) → decide (pure) → write (one
//! status patch at the resourceVersion it decided on).

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use serde_json::{Map, Value, json};

use crate::api::{
    AttemptRecord, FreeForm, ItemError, MAX_ATTEMPT_HISTORY, MAX_PAYLOAD_BYTES, OutcomeKind,
    PAYLOAD_TOO_DEEP, Phase, WorkItem, WorkQueueSpec, fit_conditions,
};
use crate::core::admission::{Admission, DEPENDENCY_FAILED, admit};
use crate::core::cycle::{DEPENDENCY_CYCLE, DEPENDS_ON_CYCLE, ItemCycle};
use crate::core::phase::{effective_phase, is_fast_path, retention_expires_at};
use crate::core::retry::{
    AfterAttempt, AfterBackoff, EscalationDecision, after_attempt, after_backoff,
    effective_deadline, escalate,
};
use crate::core::routing::Route;
use crate::core::waiting::{WaitContext, explain};

/// Condition type set False (reason QueueNotFound or AmbiguousType) while an item
/// cannot be routed.
pub const ROUTED: &str = "Routed";

/// Condition type set False (reason DependencyCycle or DependsOnCycle) while an item is
/// on, or waits on, a dependency cycle among items; the same type a WorkRequest uses for
/// a cycle in its tasks. Removed when the cycle is broken.
pub const VALID: &str = "Valid";
/// Event reason when an item's dependency cycle is gone.
pub const CYCLE_RESOLVED: &str = "DependencyCycleResolved";

/// How long a claimable item may sit unclaimed before the scheduler writes why it is
/// waiting. Items that agents pick up sooner never cost that write.
pub const EXPLAIN_AFTER: Duration = Duration::from_secs(3);
/// How often a waiting item's explanation is refreshed at most.
pub const EXPLAIN_EVERY: Duration = Duration::from_secs(15);

/// What the scheduler knows about an item's surroundings, read from its caches.
pub struct ItemView<'a> {
    pub route: Route,
    pub queue: Option<&'a WorkQueueSpec>,
    /// Phase of a dependency by name: None = not found, Some(None) = no status yet.
    pub dependency: &'a (dyn Fn(&str) -> Option<Option<Phase>> + Sync),
    pub running_in_queue: i64,
    pub admitted_in_queue: i64,
    pub pool_serves_queue: bool,
    /// Agents claimed an item of this queue in the last few seconds: it is being
    /// drained, so "position N of M" would change under the reader's eyes and each such
    /// write would only make agents' cached copies stale (a lost claim for each).
    pub queue_draining: bool,
    pub position: Option<(usize, usize)>,
    /// Serialized payload size, measured before the cache dropped the payload.
    pub payload_bytes: usize,
    /// Looks for a dependency cycle the item is on or waits on. A walk over other
    /// items, so it is only called for an item that waits on a dependency.
    pub cycle: &'a (dyn Fn() -> Option<ItemCycle> + Sync),
}

/// The decision for one item.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Status fields to merge (null removes), written at the observed resourceVersion.
    pub status: Option<Map<String, Value>>,
    /// Only cosmetic ("why waiting"): written when the cosmetic budget allows.
    pub cosmetic: bool,
    pub delete: bool,
    /// Remove the redrive annotation after the status write.
    pub clear_redrive: bool,
    pub recheck: Option<Duration>,
    /// Event reason and message for the item.
    pub event: Option<(&'static str, String)>,
    /// Counter to bump: admitted, retried, dead_lettered, cancelled, failed, escalated.
    pub counted: Option<&'static str>,
    /// Dependents must be looked at again (this item finished).
    pub finished: bool,
    /// The item's dependency-cycle condition was set, changed or removed: the items that
    /// wait on it, directly or not, must look again, since their verdict runs through it.
    pub cycle_changed: bool,
}

fn until(at: Timestamp, now: Timestamp) -> Duration {
    let d = at.duration_since(now);
    if d.is_negative() {
        Duration::ZERO
    } else {
        d.unsigned_abs()
    }
}

fn time(t: Timestamp) -> Value {
    json!(t.to_string())
}

/// `lastError`, its reason and message cut to the schema's bounds: they can come from
/// the outcome an agent wrote.
fn error_json(reason: &str, message: Option<String>, attempt: i32, now: Timestamp) -> Value {
    let mut error = ItemError {
        reason: reason.into(),
        message,
        attempt,
        at: Some(Time(now)),
    };
    error.fit();
    json!(error)
}

/// The attempts history with this attempt's record appended, bounded in length and
/// each record within the schema's bounds.
fn attempts_with_record(item: &WorkItem) -> Value {
    let status = item.status.clone().unwrap_or_default();
    let mut attempts = status.attempts.clone();
    let outcome = status.outcome.as_ref();
    if !attempts.iter().any(|a| a.attempt == status.attempt) {
        attempts.push(AttemptRecord {
            attempt: status.attempt,
            agent: status.claim.as_ref().map(|c| c.agent.clone()),
            started_at: status.started_at.clone(),
            finished_at: outcome.and_then(|o| o.at.clone()),
            outcome: outcome.map(|o| o.kind),
            reason: outcome.and_then(|o| o.reason.clone()),
        });
    }
    let excess = attempts.len().saturating_sub(MAX_ATTEMPT_HISTORY);
    attempts.drain(..excess);
    attempts.iter_mut().for_each(AttemptRecord::fit);
    json!(attempts)
}

fn set_phase(phase: Phase, now: Timestamp) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("phase".into(), json!(phase));
    if phase.is_finished() {
        m.insert("finishedAt".into(), time(now));
        m.insert("waiting".into(), Value::Null);
    }
    m
}

/// Decides what the scheduler does with `item` now. Pure: everything comes in.
pub fn decide(item: &WorkItem, view: &ItemView<'_>, now: Timestamp, jitter: f64) -> Plan {
    if item.metadata.deletion_timestamp.is_some() {
        return Plan::default();
    }
    let status = item.status.clone().unwrap_or_default();
    let default_queue = WorkQueueSpec::default();
    let policy = view.queue.unwrap_or(&default_queue);
    let deadline = effective_deadline(item, &policy.timeouts);
    let phase = effective_phase(item);
    let finished_at = status.finished_at.as_ref().map(|t| t.0);

    match phase {
        Phase::Succeeded | Phase::Failed | Phase::Cancelled => {
            retention(phase, finished_at, policy, now)
        }
        Phase::DeadLettered => {
            let redrive = item
                .metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key(crate::api::labels::REDRIVE));
            if !redrive {
                return retention(phase, finished_at, policy, now);
            }
            let mut m = set_phase(Phase::Queued, now);
            for field in ["retryAt", "outcome", "finishedAt", "waiting"] {
                m.insert(field.into(), Value::Null);
            }
            m.insert("attempt".into(), json!(0));
            Plan {
                status: Some(m),
                clear_redrive: true,
                event: Some((
                    "Redriven",
                    "redriven from DeadLettered with attempts reset".into(),
                )),
                counted: Some("redriven"),
                ..Plan::default()
            }
        }
        Phase::Running => {
            let decision = after_attempt(item, &policy.retry, deadline, now, jitter);
            let attempt = status.attempt;
            let outcome = status.outcome.clone();
            let reason = outcome.as_ref().and_then(|o| o.reason.clone());
            let message = outcome.as_ref().and_then(|o| o.message.clone());
            let kind = outcome.as_ref().map(|o| o.kind);
            let mut plan = Plan::default();
            let mut m = match decision.phase() {
                None => return plan,
                Some(Phase::Succeeded) => {
                    return Plan {
                        finished: true,
                        ..plan
                    };
                }
                Some(p) => set_phase(p, now),
            };
            if !matches!(decision, AfterAttempt::Requeue { .. }) {
                m.insert("attempts".into(), attempts_with_record(item));
            }
            let failure_reason = || {
                reason.clone().unwrap_or_else(|| match kind {
                    Some(OutcomeKind::LeaseExpired) => "LeaseExpired".into(),
                    Some(OutcomeKind::Cancelled) => "Cancelled".into(),
                    _ => "Failed".into(),
                })
            };
            match &decision {
                AfterAttempt::Retry {
                    at,
                    delay,
                    failures,
                } => {
                    m.insert("retryAt".into(), time(*at));
                    m.insert(
                        "lastError".into(),
                        error_json(&failure_reason(), message.clone(), attempt, now),
                    );
                    plan.event = Some((
                        "Retrying",
                        format!(
                            "attempt {attempt} failed ({}); retry {} in {}s",
                            failure_reason(),
                            failures + 1,
                            delay.as_secs()
                        ),
                    ));
                    plan.counted = Some("retried");
                    plan.recheck = Some(*delay);
                }
                AfterAttempt::DeadLetter(why) => {
                    m.insert(
                        "lastError".into(),
                        error_json(
                            why.as_str(),
                            Some(format!("after attempt {attempt}: {}", failure_reason())),
                            attempt,
                            now,
                        ),
                    );
                    plan.event = Some((
                        "DeadLettered",
                        format!(
                            "{}: last attempt {attempt} ended {}",
                            why.as_str(),
                            failure_reason()
                        ),
                    ));
                    plan.counted = Some("dead_lettered");
                    plan.finished = true;
                }
                AfterAttempt::Fail { reason } => {
                    m.insert(
                        "lastError".into(),
                        error_json(reason, message.clone(), attempt, now),
                    );
                    plan.event = Some((
                        "Failed",
                        format!("attempt {attempt} failed permanently: {reason}"),
                    ));
                    plan.counted = Some("failed");
                    plan.finished = true;
                }
                AfterAttempt::Cancelled => {
                    plan.event = Some((
                        "Cancelled",
                        "cancelled while running; the agent stopped the work".into(),
                    ));
                    plan.counted = Some("cancelled");
                    plan.finished = true;
                }
                AfterAttempt::Requeue { attempt } => {
                    m.insert("attempt".into(), json!(attempt));
                    m.insert("outcome".into(), Value::Null);
                    plan.event = Some(("Released", "the agent gave the item back unfinished (drain); requeued without counting a failure".into()));
                }
                AfterAttempt::Hold => {
                    plan.event = Some((
                        "Held",
                        "escalated; applying the queue's escalation policy".into(),
                    ));
                    plan.counted = Some("escalated");
                    plan.recheck = Some(Duration::ZERO);
                }
                AfterAttempt::Undecided | AfterAttempt::Complete => {}
            }
            plan.status = Some(m);
            plan
        }
        Phase::Held => {
            if item.spec.cancel {
                return cancelled(now);
            }
            let held_priority = item.effective_priority();
            match escalate(&policy.escalation, held_priority) {
                EscalationDecision::Reroute { queue } => {
                    let mut m = set_phase(Phase::Queued, now);
                    m.insert("queue".into(), json!(queue));
                    m.insert("waiting".into(), Value::Null);
                    Plan {
                        status: Some(m),
                        event: Some(("Rerouted", format!("escalated to queue {queue}"))),
                        ..Plan::default()
                    }
                }
                EscalationDecision::RaisePriority { priority } => {
                    let mut m = set_phase(Phase::Queued, now);
                    m.insert("priority".into(), json!(priority));
                    Plan {
                        status: Some(m),
                        event: Some((
                            "PriorityRaised",
                            format!("escalated: priority {held_priority} → {priority}"),
                        )),
                        ..Plan::default()
                    }
                }
                EscalationDecision::Fail { reason } => {
                    let mut m = set_phase(Phase::Failed, now);
                    m.insert(
                        "lastError".into(),
                        error_json(
                            &reason,
                            Some("escalated and the queue's policy is to fail".into()),
                            status.attempt,
                            now,
                        ),
                    );
                    Plan {
                        status: Some(m),
                        event: Some((
                            "Failed",
                            format!("escalation policy failed the item ({reason})"),
                        )),
                        counted: Some("failed"),
                        finished: true,
                        ..Plan::default()
                    }
                }
                EscalationDecision::Stay => explain_plan(item, view, phase, now),
            }
        }
        Phase::Backoff => {
            if item.spec.cancel {
                return cancelled(now);
            }
            match after_backoff(status.retry_at.as_ref().map(|t| t.0), deadline, now) {
                AfterBackoff::Wait { until: at } => Plan {
                    recheck: Some(until(at, now)),
                    ..explain_plan(item, view, phase, now)
                },
                AfterBackoff::Requeue => {
                    let mut m = set_phase(Phase::Queued, now);
                    m.insert("retryAt".into(), Value::Null);
                    m.insert("outcome".into(), Value::Null);
                    m.insert("waiting".into(), Value::Null);
                    Plan {
                        status: Some(m),
                        ..Plan::default()
                    }
                }
                AfterBackoff::DeadLetter(why) => dead_letter(
                    why.as_str(),
                    "the deadline passed during backoff",
                    status.attempt,
                    now,
                ),
            }
        }
        Phase::Pending | Phase::Queued => {
            let mut plan = waiting_or_admitted(item, view, policy, deadline, now);
            drop_cycle_on_leaving(item, &mut plan, now);
            plan
        }
    }
}

/// Decides for a Pending or Queued item: admit, wait (and say why), or end it.
fn waiting_or_admitted(
    item: &WorkItem,
    view: &ItemView<'_>,
    policy: &WorkQueueSpec,
    deadline: Option<Timestamp>,
    now: Timestamp,
) -> Plan {
    let status = item.status.clone().unwrap_or_default();
    if item.spec.cancel {
        return cancelled(now);
    }
    if deadline.is_some_and(|d| d <= now) {
        return dead_letter(
            "DeadlineExceeded",
            "the deadline passed before the item could run",
            status.attempt,
            now,
        );
    }
    if view.payload_bytes > MAX_PAYLOAD_BYTES {
        return failed(
            "PayloadTooLarge",
            format!(
                "spec.payload is {} bytes; the limit is {MAX_PAYLOAD_BYTES}: store large inputs elsewhere and pass a reference",
                view.payload_bytes
            ),
            "spec.payload is over 64 KiB".into(),
            status.attempt,
            now,
        );
    }
    if let Some(deep) = item.spec.payload.as_ref().and_then(FreeForm::too_deep) {
        let message = deep.payload_refusal();
        return failed(
            PAYLOAD_TOO_DEEP,
            message.clone(),
            message,
            status.attempt,
            now,
        );
    }
    let Route::To(queue) = &view.route else {
        return explain_plan(item, view, Phase::Pending, now);
    };
    let routed = item.spec.queue.as_deref() == Some(queue.as_str())
        || status.queue.as_deref() == Some(queue.as_str());
    match admit(
        &item.spec.depends_on,
        view.dependency,
        item.spec.not_before.as_ref().map(|t| t.0),
        now,
    ) {
        Admission::FailDependency { dependency } => {
            let message = format!("dependency {dependency} did not succeed");
            failed(
                DEPENDENCY_FAILED,
                message.clone(),
                message,
                status.attempt,
                now,
            )
        }
        Admission::Wait { why } => {
            let mut plan = explain_plan(item, view, Phase::Pending, now);
            plan.recheck = why.recheck_at().map(|at| until(at, now));
            if !routed {
                plan.status
                    .get_or_insert_with(Map::new)
                    .insert("queue".into(), json!(queue));
                plan.cosmetic = false;
            }
            plan
        }
        Admission::Admit => {
            let gated = policy.max_in_flight.map(i64::from);
            if let Some(max) = gated
                && item.phase() != Some(Phase::Queued)
                && view.running_in_queue + view.admitted_in_queue >= max
            {
                let mut plan = explain_plan(item, view, Phase::Pending, now);
                plan.recheck = Some(Duration::from_secs(2));
                return plan;
            }
            let explicit_queued = item.phase() == Some(Phase::Queued);
            let fast = item.phase().is_none() && is_fast_path(item) && gated.is_none();
            if explicit_queued || fast {
                // Already claimable: only explain if it keeps waiting.
                let waited = item
                    .metadata
                    .creation_timestamp
                    .as_ref()
                    .map_or(Duration::ZERO, |t| until(now, t.0));
                if waited < EXPLAIN_AFTER {
                    return Plan {
                        recheck: Some(EXPLAIN_AFTER - waited),
                        ..Plan::default()
                    };
                }
                if view.queue_draining && !has_waiting_note(item) {
                    return Plan {
                        recheck: Some(EXPLAIN_AFTER),
                        ..Plan::default()
                    };
                }
                return Plan {
                    recheck: Some(EXPLAIN_EVERY),
                    ..explain_plan(item, view, Phase::Queued, now)
                };
            }
            let mut m = set_phase(Phase::Queued, now);
            m.insert("queue".into(), json!(queue));
            m.insert("waiting".into(), Value::Null);
            Plan {
                status: Some(m),
                counted: Some("admitted"),
                recheck: Some(EXPLAIN_AFTER),
                ..Plan::default()
            }
        }
    }
}

/// Whether the item already shows a "why waiting" note, which must then be kept true
/// (or cleared) even while its queue drains.
fn has_waiting_note(item: &WorkItem) -> bool {
    item.status.as_ref().is_some_and(|s| s.waiting.is_some())
}

fn cancelled(now: Timestamp) -> Plan {
    Plan {
        status: Some(set_phase(Phase::Cancelled, now)),
        event: Some(("Cancelled", "spec.cancel is set".into())),
        counted: Some("cancelled"),
        finished: true,
        ..Plan::default()
    }
}

/// Ends a waiting item Failed with `reason` as its last error and its event.
fn failed(
    reason: &'static str,
    message: String,
    event: String,
    attempt: i32,
    now: Timestamp,
) -> Plan {
    let mut m = set_phase(Phase::Failed, now);
    m.insert(
        "lastError".into(),
        error_json(reason, Some(message), attempt, now),
    );
    Plan {
        status: Some(m),
        event: Some((reason, event)),
        counted: Some("failed"),
        finished: true,
        ..Plan::default()
    }
}

fn dead_letter(reason: &str, message: &str, attempt: i32, now: Timestamp) -> Plan {
    let mut m = set_phase(Phase::DeadLettered, now);
    m.insert(
        "lastError".into(),
        error_json(reason, Some(message.into()), attempt, now),
    );
    Plan {
        status: Some(m),
        event: Some(("DeadLettered", format!("{reason}: {message}"))),
        counted: Some("dead_lettered"),
        finished: true,
        ..Plan::default()
    }
}

fn retention(
    phase: Phase,
    finished_at: Option<Timestamp>,
    policy: &WorkQueueSpec,
    now: Timestamp,
) -> Plan {
    match retention_expires_at(phase, finished_at, &policy.retention) {
        Some(at) if at <= now => Plan {
            delete: true,
            finished: true,
            ..Plan::default()
        },
        Some(at) => Plan {
            recheck: Some(until(at, now)),
            finished: true,
            ..Plan::default()
        },
        None => Plan {
            finished: true,
            ..Plan::default()
        },
    }
}

/// Writes "why is it waiting" (and the phase it waits in) when it changed.
fn explain_plan(item: &WorkItem, view: &ItemView<'_>, phase: Phase, now: Timestamp) -> Plan {
    let status = item.status.clone().unwrap_or_default();
    let unmet = item
        .spec
        .depends_on
        .iter()
        .find(|d| (view.dependency)(d.as_str()) != Some(Some(Phase::Succeeded)))
        .map(String::as_str);
    let held_reason = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Escalated" && c.status == "True")
        .map(|c| c.reason.as_str());
    // Only an item that waits on a dependency can wait on a cycle, and only then is the
    // walk over other items worth its cost.
    let cycle = if phase == Phase::Pending && unmet.is_some() {
        (view.cycle)()
    } else {
        None
    };
    let ctx = WaitContext {
        phase,
        unmet_dependency: unmet,
        cycle: cycle.as_ref(),
        not_before: item.spec.not_before.as_ref().map(|t| t.0),
        retry_at: status.retry_at.as_ref().map(|t| t.0),
        route: &view.route,
        pool_serves_queue: view.pool_serves_queue,
        // Admitted items hold a maxInFlight slot too.
        running_in_queue: view.running_in_queue + view.admitted_in_queue,
        max_in_flight: view.queue.and_then(|q| q.max_in_flight),
        position: view.position,
        held_reason,
    };
    let why = explain(&ctx, now).map(|w| w.message());
    let mut m = Map::new();
    if item.phase() != Some(phase) {
        m.insert("phase".into(), json!(phase));
    }
    if status.waiting != why {
        m.insert("waiting".into(), why.map_or(Value::Null, Value::String));
    }
    // A routing problem is also a condition, so `kubectl wait` and alerts can see it.
    let routed_reason = view.route.condition_reason();
    let has_routed_condition = |reason: Option<&str>| {
        status
            .conditions
            .iter()
            .any(|c| c.type_ == ROUTED && Some(c.reason.as_str()) == reason)
            || (reason.is_none() && !status.conditions.iter().any(|c| c.type_ == ROUTED))
    };
    let mut plan = Plan {
        recheck: Some(EXPLAIN_EVERY),
        ..Plan::default()
    };
    let mut conditions = status.conditions.clone();
    let mut conditions_changed = false;
    if !has_routed_condition(routed_reason) {
        conditions_changed = true;
        conditions.retain(|c| c.type_ != ROUTED);
        if let Some(reason) = routed_reason {
            // The routing problem itself, not whatever the item waits on first (a
            // dependency or a cycle is shown in `waiting` and its own condition).
            let routing_only = WaitContext {
                phase: Phase::Pending,
                unmet_dependency: None,
                cycle: None,
                not_before: None,
                retry_at: None,
                ..ctx.clone()
            };
            let message = explain(&routing_only, now)
                .map(|w| w.message())
                .unwrap_or_default();
            conditions.push(Condition {
                type_: ROUTED.into(),
                status: "False".into(),
                reason: reason.into(),
                message: message.clone(),
                last_transition_time: Time(now),
                observed_generation: item.metadata.generation,
            });
            plan.event = Some((reason, message));
        }
    }
    // A cycle is a condition and an Event too, not only the Why column: it never clears
    // by itself, so `kubectl describe` and alerts must show it.
    if let Some(event) = sync_cycle_condition(
        &mut conditions,
        cycle.as_ref(),
        item.metadata.generation,
        now,
    ) {
        conditions_changed = true;
        plan.cycle_changed = true;
        plan.event = Some(event);
    }
    if conditions_changed {
        fit_conditions(&mut conditions, &[ROUTED, VALID]);
        m.insert("conditions".into(), json!(conditions));
    }
    let cosmetic = !m.contains_key("phase") && !m.contains_key("conditions");
    if !m.is_empty() {
        plan.status = Some(m);
        plan.cosmetic = cosmetic;
    }
    plan
}

/// Sets, replaces or removes the `Valid=False` dependency-cycle condition in
/// `conditions` to match `cycle`; returns the Event to publish when it changed. A
/// `Valid` condition with another reason is not the scheduler's and is kept when there
/// is no cycle.
fn sync_cycle_condition(
    conditions: &mut Vec<Condition>,
    cycle: Option<&ItemCycle>,
    generation: Option<i64>,
    now: Timestamp,
) -> Option<(&'static str, String)> {
    let Some(cycle) = cycle else {
        let before = conditions.len();
        conditions.retain(|c| {
            !(c.type_ == VALID && (c.reason == DEPENDENCY_CYCLE || c.reason == DEPENDS_ON_CYCLE))
        });
        return (conditions.len() != before).then(|| {
            (
                CYCLE_RESOLVED,
                "no longer on or waiting on a dependency cycle".to_owned(),
            )
        });
    };
    let (reason, message) = (cycle.reason(), cycle.message());
    let old = conditions.iter().find(|c| c.type_ == VALID);
    if old.is_some_and(|c| c.status == "False" && c.reason == reason && c.message == message) {
        return None;
    }
    // Still False, only a different path: the transition time stays.
    let since = old
        .filter(|c| c.status == "False")
        .map_or(Time(now), |c| c.last_transition_time.clone());
    conditions.retain(|c| c.type_ != VALID);
    conditions.push(Condition {
        type_: VALID.into(),
        status: "False".into(),
        reason: reason.into(),
        message: message.clone(),
        last_transition_time: since,
        observed_generation: generation,
    });
    Some((reason, message))
}

/// A write that moves an item out of Pending (admitted, failed, cancelled,
/// dead-lettered) also drops its dependency-cycle condition: only [`explain_plan`] keeps
/// it, and only for an item that still waits.
fn drop_cycle_on_leaving(item: &WorkItem, plan: &mut Plan, now: Timestamp) {
    let Some(m) = plan.status.as_mut() else {
        return;
    };
    let leaving = m.get("phase").is_some_and(|p| *p != json!(Phase::Pending));
    // explain_plan already decided the conditions when it wrote them.
    if !leaving || m.contains_key("conditions") {
        return;
    }
    let mut conditions = item
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    if let Some(event) = sync_cycle_condition(&mut conditions, None, item.metadata.generation, now)
    {
        fit_conditions(&mut conditions, &[]);
        m.insert("conditions".into(), json!(conditions));
        plan.cycle_changed = true;
        plan.event.get_or_insert(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::testutil::t;

    #[test]
    fn errors_and_attempt_records_are_cut_to_the_schema_bounds() {
        use crate::api::{MAX_MESSAGE_LEN, MAX_REASON_LEN, Outcome, WorkItemStatus};
        let e = error_json(&"R".repeat(1000), Some("m".repeat(10_000)), 1, t(0));
        assert_eq!(
            e["reason"].as_str().unwrap().chars().count(),
            MAX_REASON_LEN
        );
        assert_eq!(
            e["message"].as_str().unwrap().chars().count(),
            MAX_MESSAGE_LEN
        );
        // An outcome written before the bounds existed is copied into the history.
        let mut wi = WorkItem::new("a", Default::default());
        wi.status = Some(WorkItemStatus {
            attempt: 2,
            outcome: Some(Outcome {
                kind: OutcomeKind::Failed,
                reason: Some("R".repeat(1000)),
                message: None,
                attempt: 2,
                epoch: 2,
                at: None,
            }),
            attempts: vec![AttemptRecord {
                attempt: 1,
                reason: Some("Q".repeat(1000)),
                ..Default::default()
            }],
            ..Default::default()
        });
        let records: Vec<AttemptRecord> =
            serde_json::from_value(attempts_with_record(&wi)).unwrap();
        assert_eq!(records.len(), 2);
        for r in records {
            assert_eq!(r.reason.map(|r| r.chars().count()), Some(MAX_REASON_LEN));
        }
    }

    fn item(phase: Option<&str>, deps: &[&str], conditions: Value) -> WorkItem {
        let mut v = json!({
            "metadata": {"name": "a", "namespace": "ns", "generation": 1,
                "creationTimestamp": "2030-01-01T00:00:00Z"},
            "spec": {"queue": "q", "dependsOn": deps},
            "status": {"conditions": conditions},
        });
        if let Some(p) = phase {
            v["status"]["phase"] = json!(p);
        }
        serde_json::from_value(v).expect("item")
    }

    fn on_cycle() -> ItemCycle {
        ItemCycle::On {
            path: vec!["a".into(), "b".into(), "a".into()],
        }
    }

    /// Decides for `wi` whose dependencies are all in `dep`, with `cycle` as the walk's
    /// answer; also returns how often the walk ran.
    fn decide_with(wi: &WorkItem, dep: Option<Phase>, cycle: Option<ItemCycle>) -> (Plan, usize) {
        decide_routed(wi, Route::To("q".into()), dep, cycle)
    }

    fn decide_routed(
        wi: &WorkItem,
        route: Route,
        dep: Option<Phase>,
        cycle: Option<ItemCycle>,
    ) -> (Plan, usize) {
        decide_in(wi, route, dep, cycle, false)
    }

    fn decide_in(
        wi: &WorkItem,
        route: Route,
        dep: Option<Phase>,
        cycle: Option<ItemCycle>,
        queue_draining: bool,
    ) -> (Plan, usize) {
        let walks = std::sync::atomic::AtomicUsize::new(0);
        let dependency = move |_: &str| Some(dep);
        let find = || {
            walks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            cycle.clone()
        };
        let view = ItemView {
            route,
            queue: None,
            dependency: &dependency,
            running_in_queue: 0,
            admitted_in_queue: 0,
            pool_serves_queue: true,
            queue_draining,
            position: None,
            payload_bytes: 0,
            cycle: &find,
        };
        let plan = decide(wi, &view, t(10), 0.0);
        (plan, walks.into_inner())
    }

    #[test]
    fn a_queue_being_drained_gets_no_position_notes() {
        // Fast path, claimable, created 10 s ago: past the explain delay.
        let wi = item(None, &[], json!([]));
        let route = || Route::To("q".into());
        let (plan, _) = decide_in(&wi, route(), None, None, false);
        assert!(
            plan.status.is_some(),
            "an idle queue explains the wait: {plan:?}"
        );
        let (plan, _) = decide_in(&wi, route(), None, None, true);
        assert_eq!(plan.status, None, "no write while agents are claiming");
        assert_eq!(plan.recheck, Some(EXPLAIN_AFTER), "looks again later");
        assert!(!has_waiting_note(&wi));
    }

    /// `wi` with `plan`'s status merged in, as the API server would store it.
    fn written(wi: &WorkItem, plan: &Plan) -> WorkItem {
        let mut v = serde_json::to_value(wi).expect("json");
        for (k, val) in plan.status.clone().unwrap_or_default() {
            v["status"][k] = val;
        }
        serde_json::from_value(v).expect("item")
    }

    fn cycle_condition(wi: &WorkItem) -> Option<Condition> {
        wi.status
            .as_ref()?
            .conditions
            .iter()
            .find(|c| c.type_ == VALID)
            .cloned()
    }

    #[test]
    fn a_cycle_is_a_condition_a_why_and_an_event_written_once() {
        let wi = item(None, &["b"], json!([]));
        let (plan, walks) = decide_with(&wi, Some(Phase::Pending), Some(on_cycle()));
        assert_eq!(walks, 1);
        assert!(!plan.cosmetic, "a condition is not cosmetic");
        assert!(plan.cycle_changed);
        let (reason, message) = plan.event.clone().expect("event");
        assert_eq!(reason, "DependencyCycle");
        assert_eq!(
            message,
            "dependency cycle: a → b → a; remove one of these dependsOn entries"
        );
        let wi = written(&wi, &plan);
        assert_eq!(wi.phase(), Some(Phase::Pending), "stays Pending, fixable");
        let c = cycle_condition(&wi).expect("Valid condition");
        assert_eq!(
            (c.status.as_str(), c.reason.as_str(), c.message.as_str()),
            ("False", "DependencyCycle", message.as_str())
        );
        assert_eq!(
            wi.status.as_ref().and_then(|s| s.waiting.as_deref()),
            Some("dependency cycle: a → b → a")
        );

        // The same verdict again writes nothing and wakes nobody.
        let (again, _) = decide_with(&wi, Some(Phase::Pending), Some(on_cycle()));
        assert_eq!(again.status, None);
        assert_eq!(again.event, None);
        assert!(!again.cycle_changed);
    }

    #[test]
    fn a_changed_path_replaces_the_condition_and_keeps_its_transition_time() {
        let wi = item(None, &["b"], json!([]));
        let (plan, _) = decide_with(&wi, Some(Phase::Pending), Some(on_cycle()));
        let wi = written(&wi, &plan);
        let since = cycle_condition(&wi)
            .expect("condition")
            .last_transition_time;
        let longer = ItemCycle::On {
            path: vec!["a".into(), "b".into(), "c".into(), "a".into()],
        };
        let (plan, _) = decide_with(&wi, Some(Phase::Pending), Some(longer));
        assert!(plan.cycle_changed);
        let wi = written(&wi, &plan);
        let c = cycle_condition(&wi).expect("condition");
        assert!(c.message.contains("a → b → c → a"), "{}", c.message);
        assert_eq!(c.last_transition_time, since);
        let conditions = &wi.status.as_ref().expect("status").conditions;
        assert_eq!(conditions.iter().filter(|c| c.type_ == VALID).count(), 1);
    }

    #[test]
    fn waiting_behind_a_cycle_says_so() {
        let wi = item(None, &["a"], json!([]));
        let behind = ItemCycle::Behind {
            via: vec!["c".into(), "a".into()],
            cycle: vec!["a".into(), "b".into(), "a".into()],
        };
        let (plan, _) = decide_with(&wi, Some(Phase::Pending), Some(behind));
        assert_eq!(plan.event.as_ref().map(|e| e.0), Some("DependsOnCycle"));
        let wi = written(&wi, &plan);
        assert_eq!(
            wi.status.as_ref().and_then(|s| s.waiting.as_deref()),
            Some("waits on dependency cycle a → b → a")
        );
    }

    #[test]
    fn breaking_the_cycle_clears_the_condition_and_wakes_the_dependents() {
        let wi = item(None, &["b"], json!([]));
        let (plan, _) = decide_with(&wi, Some(Phase::Pending), Some(on_cycle()));
        let wi = written(&wi, &plan);

        // Still waiting on b, but b no longer leads back.
        let (plan, _) = decide_with(&wi, Some(Phase::Pending), None);
        assert!(plan.cycle_changed);
        assert_eq!(plan.event.as_ref().map(|e| e.0), Some(CYCLE_RESOLVED));
        let still = written(&wi, &plan);
        assert_eq!(cycle_condition(&still), None);
        assert_eq!(
            still.status.as_ref().and_then(|s| s.waiting.as_deref()),
            Some("waiting for dependency b")
        );

        // Or the dependency was dropped (or succeeded): admitted, condition gone with it.
        let (plan, walks) = decide_with(&wi, Some(Phase::Succeeded), None);
        assert_eq!(walks, 0, "no walk for an item that does not wait");
        assert_eq!(plan.counted, Some("admitted"));
        assert!(plan.cycle_changed);
        let admitted = written(&wi, &plan);
        assert_eq!(admitted.phase(), Some(Phase::Queued));
        assert_eq!(cycle_condition(&admitted), None);
    }

    #[test]
    fn cancelling_an_item_on_a_cycle_drops_the_condition() {
        let wi = item(None, &["b"], json!([]));
        let (plan, _) = decide_with(&wi, Some(Phase::Pending), Some(on_cycle()));
        let mut wi = written(&wi, &plan);
        wi.spec.cancel = true;
        let (plan, _) = decide_with(&wi, Some(Phase::Pending), Some(on_cycle()));
        assert!(plan.cycle_changed);
        assert_eq!(plan.event.as_ref().map(|e| e.0), Some("Cancelled"));
        let cancelled = written(&wi, &plan);
        assert_eq!(cancelled.phase(), Some(Phase::Cancelled));
        assert_eq!(cycle_condition(&cancelled), None);
    }

    #[test]
    fn items_that_do_not_wait_on_a_dependency_are_not_walked() {
        // No dependencies at all, or a not-before: nothing to walk.
        let (_, walks) = decide_with(&item(None, &[], json!([])), None, Some(on_cycle()));
        assert_eq!(walks, 0);
        let mut later = item(None, &["b"], json!([]));
        later.spec.not_before = Some(Time(t(100)));
        let (plan, walks) = decide_with(&later, Some(Phase::Succeeded), Some(on_cycle()));
        assert_eq!(walks, 0);
        assert!(!plan.cycle_changed);
    }

    #[test]
    fn an_unroutable_item_on_a_cycle_gets_both_conditions() {
        // The chaos run's case: items on a queue that does not exist.
        let wi = item(None, &["b"], json!([]));
        let missing = Route::QueueMissing {
            queue: "nopool".into(),
        };
        let (plan, walks) = decide_routed(&wi, missing, Some(Phase::Pending), Some(on_cycle()));
        assert_eq!(walks, 1);
        assert_eq!(plan.event.as_ref().map(|e| e.0), Some("DependencyCycle"));
        let wi = written(&wi, &plan);
        let types: Vec<_> = wi
            .status
            .as_ref()
            .expect("status")
            .conditions
            .iter()
            .map(|c| (c.type_.as_str(), c.status.as_str(), c.reason.as_str()))
            .collect();
        assert_eq!(
            types,
            [
                ("Routed", "False", "QueueNotFound"),
                ("Valid", "False", "DependencyCycle")
            ]
        );
        let routed = &wi.status.as_ref().expect("status").conditions[0].message;
        assert_eq!(
            routed, "queue nopool not found",
            "names the routing problem"
        );
    }

    #[test]
    fn a_valid_condition_for_another_reason_is_left_alone() {
        let other = json!([{"type": "Valid", "status": "False", "reason": "SomethingElse",
            "message": "not ours", "lastTransitionTime": "2030-01-01T00:00:00Z"}]);
        let wi = item(Some("Pending"), &["b"], other);
        let (plan, _) = decide_with(&wi, Some(Phase::Pending), None);
        assert!(!plan.cycle_changed);
        let wi = written(&wi, &plan);
        assert_eq!(
            cycle_condition(&wi).map(|c| c.reason),
            Some("SomethingElse".into())
        );
    }

    /// A WorkItem as the API server sends it, its payload `levels` objects deep.
    fn item_with_payload_depth(phase: Option<&str>, levels: usize) -> WorkItem {
        let payload = format!(
            "{}{{}}{}",
            r#"{"d":"#.repeat(levels - 1),
            "}".repeat(levels - 1)
        );
        let status = phase.map_or(String::new(), |p| format!(r#","status":{{"phase":"{p}"}}"#));
        let text = format!(
            r#"{{"metadata":{{"name":"a","namespace":"ns","creationTimestamp":"2030-01-01T00:00:00Z"}},"spec":{{"queue":"q","payload":{payload}}}{status}}}"#
        );
        let mut wi: WorkItem = serde_json::from_str(&text).expect("decodes at any depth");
        // What the scheduler decides on: its cached copy.
        super::super::slim(&mut wi);
        wi
    }

    #[test]
    fn a_too_deep_payload_fails_the_item_naming_the_field_and_the_fix() {
        for phase in [None, Some("Pending"), Some("Queued")] {
            let wi = item_with_payload_depth(phase, 200);
            let (plan, _) = decide_with(&wi, None, None);
            let status = plan.status.clone().expect("a status write");
            assert_eq!(status["phase"], json!("Failed"), "{phase:?}");
            let error = &status["lastError"];
            assert_eq!(error["reason"], json!("PayloadTooDeep"));
            let message = "spec.payload is nested 200 levels deep; the limit is 64: flatten it or pass it by reference (for example an object-storage URL)";
            assert_eq!(error["message"], json!(message));
            assert_eq!(plan.event, Some(("PayloadTooDeep", message.to_owned())));
            assert_eq!(plan.counted, Some("failed"));
            assert!(plan.finished);
        }
        // At the limit the item runs as usual.
        let wi = item_with_payload_depth(None, crate::api::MAX_PAYLOAD_DEPTH);
        assert!(wi.spec.payload.is_none(), "the cache drops a payload");
        let (plan, _) = decide_with(&wi, None, None);
        assert!(
            plan.status
                .as_ref()
                .is_none_or(|s| s.get("phase") != Some(&json!("Failed"))),
            "{plan:?}"
        );
    }
}
