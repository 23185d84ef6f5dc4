//! One WorkItem's reconcile: read (from the watch caches) → decide (pure) → write (one
//! status patch at the resourceVersion it decided on).

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use serde_json::{Map, Value, json};

use crate::api::{
    AttemptRecord, ItemError, MAX_ATTEMPT_HISTORY, MAX_PAYLOAD_BYTES, OutcomeKind, Phase, WorkItem,
    WorkQueueSpec,
};
use crate::core::admission::{Admission, DEPENDENCY_FAILED, admit};
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
    pub position: Option<(usize, usize)>,
    /// Serialized payload size, measured before the cache dropped the payload.
    pub payload_bytes: usize,
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

fn error_json(reason: &str, message: Option<String>, attempt: i32, now: Timestamp) -> Value {
    json!(ItemError {
        reason: reason.into(),
        message,
        attempt,
        at: Some(Time(now))
    })
}

/// The attempts history with this attempt's record appended, bounded.
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
                let mut m = set_phase(Phase::Failed, now);
                m.insert(
                    "lastError".into(),
                    error_json(
                        "PayloadTooLarge",
                        Some(format!(
                            "spec.payload is {} bytes; the limit is {MAX_PAYLOAD_BYTES}: store large inputs elsewhere and pass a reference",
                            view.payload_bytes
                        )),
                        status.attempt,
                        now,
                    ),
                );
                return Plan {
                    status: Some(m),
                    counted: Some("failed"),
                    finished: true,
                    event: Some(("PayloadTooLarge", "spec.payload is over 64 KiB".into())),
                    ..Plan::default()
                };
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
                    let mut m = set_phase(Phase::Failed, now);
                    m.insert(
                        "lastError".into(),
                        error_json(
                            DEPENDENCY_FAILED,
                            Some(format!("dependency {dependency} did not succeed")),
                            status.attempt,
                            now,
                        ),
                    );
                    Plan {
                        status: Some(m),
                        event: Some((
                            DEPENDENCY_FAILED,
                            format!("dependency {dependency} did not succeed"),
                        )),
                        counted: Some("failed"),
                        finished: true,
                        ..Plan::default()
                    }
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
    }
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
    let ctx = WaitContext {
        phase,
        unmet_dependency: unmet,
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
    if !has_routed_condition(routed_reason) {
        let mut conditions: Vec<_> = status
            .conditions
            .iter()
            .filter(|c| c.type_ != ROUTED)
            .cloned()
            .collect();
        if let Some(reason) = routed_reason {
            let message = m
                .get("waiting")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .or(status.waiting.clone())
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
        m.insert("conditions".into(), json!(conditions));
    }
    let cosmetic = !m.contains_key("phase") && !m.contains_key("conditions");
    if !m.is_empty() {
        plan.status = Some(m);
        plan.cosmetic = cosmetic;
    }
    plan
}
