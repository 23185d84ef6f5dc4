//! Every write the agent makes to an item it holds, each one fenced
//! (`k8s::fence::fenced_patch`): progress and usage, a reported violation, and the
//! attempt's outcome. The op builders are pure and unit-tested; [`ItemWriter`] only
//! sends them.

use std::collections::BTreeMap;

use json_patch::jsonptr::PointerBuf;
use json_patch::{PatchOperation, ReplaceOperation};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::Api;
use serde_json::{Value, json};

use super::report::cut;
use crate::api::{
    AttemptRecord, ItemError, MAX_ATTEMPT_HISTORY, MAX_CONDITIONS, Outcome, OutcomeKind, WorkItem,
};
use crate::core::report::{ProgressReport, ViolationReport as Violation};
use crate::k8s::fence::{Fence, FenceError, complete_ops, fenced_patch, set};

/// The condition type under which the agent records what the work command reported as
/// a violation; the supervisor's violation monitor acts on it.
pub const VIOLATION_REPORTED: &str = "ViolationReported";

/// What ended an attempt, as the agent writes it.
#[derive(Clone, Debug, PartialEq)]
pub struct Ending {
    pub kind: OutcomeKind,
    pub reason: Option<String>,
    pub message: Option<String>,
}

impl Ending {
    pub fn new(kind: OutcomeKind, reason: &str, message: impl Into<String>) -> Self {
        let message: String = message.into();
        Ending {
            kind,
            reason: Some(reason.to_owned()),
            message: (!message.is_empty()).then_some(message),
        }
    }
}

/// The fence and the facts of the attempt, taken from the claimed item.
#[derive(Clone, Debug)]
pub struct Attempt {
    pub name: String,
    pub fence: Fence,
    pub attempt: i32,
    pub started_at: Option<Time>,
    /// The item's attempt history at claim time.
    pub history: Vec<AttemptRecord>,
}

impl Attempt {
    pub fn of(item: &WorkItem) -> Option<Attempt> {
        let status = item.status.as_ref()?;
        Some(Attempt {
            name: item.metadata.name.clone()?,
            fence: Fence::of(item)?,
            attempt: status.attempt,
            started_at: status
                .started_at
                .clone()
                .or_else(|| status.claim.as_ref()?.acquired_at.clone()),
            history: status.attempts.clone(),
        })
    }
}

/// The progress object; `updatedAt` moves only when something reported changed, because
/// it is what the supervisor's stall monitor watches.
pub fn progress_value(progress: &ProgressReport, updated_at: &Time) -> Value {
    let mut v = json!({"updatedAt": updated_at});
    if let Some(p) = progress.percent {
        v["percent"] = json!(p);
    }
    if let Some(m) = &progress.message {
        v["message"] = json!(m);
    }
    if let Some(c) = &progress.checkpoint {
        v["checkpoint"] = json!(c);
    }
    v
}

/// Progress (when it changed) and usage.
pub fn progress_ops(
    progress: Option<(&ProgressReport, &Time)>,
    usage: &BTreeMap<String, f64>,
) -> Vec<PatchOperation> {
    let mut ops = vec![set("usage", json!(usage))];
    if let Some((p, at)) = progress {
        ops.push(set("progress", progress_value(p, at)));
    }
    ops
}

/// A condition reason must match `^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$`.
pub fn condition_reason(rule: &str) -> String {
    let mut r: String = rule
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    r = cut(r.trim_matches('_'), 128);
    if !r.starts_with(|c: char| c.is_ascii_alphabetic()) {
        r = format!("Rule_{r}");
    }
    r.trim_end_matches('_').to_owned()
}

/// The `ViolationReported` condition, replacing one already there (found by type in
/// the freshest view of the item we have) or appended. None when the list is already
/// full (`MAX_CONDITIONS`, of others' conditions) and has no `ViolationReported`: an
/// append would get the whole write refused, progress and ending with it.
pub fn violation_op(
    conditions: Option<&[Condition]>,
    v: &Violation,
    count: u32,
    now: &Time,
) -> Option<PatchOperation> {
    let message = match &v.detail {
        Some(d) => format!("{}: {}", v.rule, d),
        None => v.rule.clone(),
    };
    let message = if count > 1 {
        format!("{message} ({count} violations reported)")
    } else {
        message
    };
    let condition = Condition {
        type_: VIOLATION_REPORTED.into(),
        status: "True".into(),
        reason: condition_reason(&v.rule),
        message: cut(&message, 1024),
        last_transition_time: now.clone(),
        observed_generation: None,
    };
    let value = json!(condition);
    Some(match conditions {
        Some(list) => match list.iter().position(|c| c.type_ == VIOLATION_REPORTED) {
            Some(i) => PatchOperation::Replace(ReplaceOperation {
                path: PointerBuf::parse(format!("/status/conditions/{i}")).unwrap_or_default(),
                value,
            }),
            None if list.len() >= MAX_CONDITIONS => return None,
            None => set("conditions/-", value),
        },
        None => set("conditions", json!([value])),
    })
}

/// History with this attempt's record appended, keeping the newest entries, each within
/// the schema's bounds.
pub fn history_with(
    attempt: &Attempt,
    kind: OutcomeKind,
    reason: Option<&str>,
    now: &Time,
) -> Vec<AttemptRecord> {
    let mut history = attempt.history.clone();
    history.retain(|r| r.attempt != attempt.attempt);
    history.push(AttemptRecord {
        attempt: attempt.attempt,
        agent: Some(attempt.fence.agent.clone()),
        started_at: attempt.started_at.clone(),
        finished_at: Some(now.clone()),
        outcome: Some(kind),
        reason: reason.map(str::to_owned),
    });
    let excess = history.len().saturating_sub(MAX_ATTEMPT_HISTORY);
    history.drain(..excess);
    history.iter_mut().for_each(AttemptRecord::fit);
    history
}

/// The ops that end an attempt.
///
/// - `Succeeded`: the completion (`complete_ops`: phase Succeeded, outcome, result,
///   this attempt's history record).
/// - Anything else: the outcome (and `lastError` for failures) only. The phase stays
///   Running because the scheduler decides what follows (Backoff, DeadLettered,
///   Failed, Cancelled, Held, or Queued after a drain) and appends the history record
///   then; a Released attempt is given back and must leave no record.
///
/// Progress and usage ride along so the final numbers need no extra write. Reasons and
/// messages are cut to the schema's bounds (a message can carry the work's stderr).
pub fn ending_ops(
    attempt: &Attempt,
    ending: &Ending,
    result: Option<Value>,
    usage: &BTreeMap<String, f64>,
    progress: Option<Value>,
    now: &Time,
) -> Vec<PatchOperation> {
    if ending.kind == OutcomeKind::Succeeded {
        let history = json!(history_with(
            attempt,
            ending.kind,
            ending.reason.as_deref(),
            now
        ));
        // complete_ops takes the attempt and epoch from an item: give it a minimal one.
        let mut shell = WorkItem::new(&attempt.name, Default::default());
        shell.status = Some(crate::api::WorkItemStatus {
            attempt: attempt.attempt,
            claim: Some(crate::api::Claim {
                agent: attempt.fence.agent.clone(),
                epoch: attempt.fence.epoch,
                ..Default::default()
            }),
            ..Default::default()
        });
        let mut ops = complete_ops(&shell, result, json!(usage), history);
        if let Some(p) = progress {
            // Before the phase, which complete_ops puts last on purpose.
            ops.insert(ops.len().saturating_sub(1), set("progress", p));
        }
        return ops;
    }
    let mut outcome = Outcome {
        kind: ending.kind,
        reason: ending.reason.clone(),
        message: ending.message.clone(),
        attempt: attempt.attempt,
        epoch: attempt.fence.epoch,
        at: Some(now.clone()),
    };
    outcome.fit();
    let mut ops = vec![set("outcome", json!(outcome)), set("usage", json!(usage))];
    if let Some(p) = progress {
        ops.push(set("progress", p));
    }
    if matches!(
        ending.kind,
        OutcomeKind::Failed | OutcomeKind::FailedPermanently
    ) {
        let mut error = ItemError {
            reason: ending.reason.clone().unwrap_or_else(|| "Failed".into()),
            message: ending.message.clone(),
            attempt: attempt.attempt,
            at: Some(now.clone()),
        };
        error.fit();
        ops.push(set("lastError", json!(error)));
    }
    ops
}

/// Sends fenced writes for one held item.
#[derive(Clone)]
pub struct ItemWriter {
    pub api: Api<WorkItem>,
    pub attempt: Attempt,
}

impl ItemWriter {
    pub async fn send(&self, ops: Vec<PatchOperation>) -> Result<WorkItem, FenceError> {
        fenced_patch(&self.api, &self.attempt.name, &self.attempt.fence, ops).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::now;

    fn attempt(history: usize) -> Attempt {
        Attempt {
            name: "item".into(),
            fence: Fence {
                agent: "agent-0".into(),
                epoch: 4,
            },
            attempt: 3,
            started_at: Some(now()),
            history: (0..history as i32)
                .map(|a| AttemptRecord {
                    attempt: a,
                    ..Default::default()
                })
                .collect(),
        }
    }

    fn paths(ops: &[PatchOperation]) -> Vec<String> {
        ops.iter()
            .map(|o| {
                serde_json::to_value(o).unwrap()["path"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    }

    #[test]
    fn success_completes_with_progress_before_the_phase() {
        let t = now();
        let ops = ending_ops(
            &attempt(0),
            &Ending {
                kind: OutcomeKind::Succeeded,
                reason: None,
                message: None,
            },
            Some(json!({"ok": true})),
            &[("wallSeconds".to_owned(), 1.0)].into(),
            Some(json!({"percent": 100})),
            &t,
        );
        let p = paths(&ops);
        assert_eq!(p.last().map(String::as_str), Some("/status/phase"));
        assert!(
            p.contains(&"/status/progress".to_owned()) && p.contains(&"/status/result".to_owned())
        );
        let outcome = serde_json::to_value(&ops[0]).unwrap();
        assert_eq!(outcome["value"]["epoch"], 4);
        assert_eq!(outcome["value"]["attempt"], 3);
    }

    #[test]
    fn retryable_failure_leaves_the_phase_to_the_scheduler() {
        let ops = ending_ops(
            &attempt(0),
            &Ending::new(OutcomeKind::Failed, "ExitCode", "exit code 2"),
            None,
            &BTreeMap::new(),
            None,
            &now(),
        );
        let p = paths(&ops);
        assert!(!p.contains(&"/status/phase".to_owned()), "{p:?}");
        assert!(p.contains(&"/status/lastError".to_owned()));
        let v = serde_json::to_value(&ops).unwrap();
        assert_eq!(v[0]["value"]["kind"], "Failed");
        assert_eq!(v[0]["value"]["reason"], "ExitCode");
    }

    #[test]
    fn other_endings_write_the_outcome_only() {
        let ops = ending_ops(
            &attempt(2),
            &Ending::new(OutcomeKind::FailedPermanently, "ResultTooLarge", "too big"),
            None,
            &BTreeMap::new(),
            None,
            &now(),
        );
        let p = paths(&ops);
        assert_eq!(p, ["/status/outcome", "/status/usage", "/status/lastError"]);
        let released = ending_ops(
            &attempt(2),
            &Ending::new(OutcomeKind::Released, "Drained", ""),
            None,
            &BTreeMap::new(),
            None,
            &now(),
        );
        assert_eq!(paths(&released), ["/status/outcome", "/status/usage"]);
    }

    #[test]
    fn history_is_bounded_and_ends_with_this_attempt() {
        let h = history_with(
            &attempt(MAX_ATTEMPT_HISTORY + 5),
            OutcomeKind::Failed,
            Some("ExitCode"),
            &now(),
        );
        assert_eq!(h.len(), MAX_ATTEMPT_HISTORY);
        let last = h.last().unwrap();
        assert_eq!(
            (last.attempt, last.outcome, last.agent.as_deref()),
            (3, Some(OutcomeKind::Failed), Some("agent-0"))
        );
    }

    #[test]
    fn progress_only_when_changed() {
        let usage = BTreeMap::new();
        assert_eq!(paths(&progress_ops(None, &usage)), vec!["/status/usage"]);
        let p = ProgressReport {
            percent: Some(5),
            message: Some("m".into()),
            checkpoint: None,
        };
        let t = now();
        let ops = progress_ops(Some((&p, &t)), &usage);
        let v = serde_json::to_value(&ops[1]).unwrap();
        assert_eq!(v["value"]["percent"], 5);
        assert_eq!(v["value"]["message"], "m");
        assert!(v["value"]["updatedAt"].is_string());
    }

    #[test]
    fn violation_condition_replaces_appends_or_creates() {
        let v = Violation {
            rule: "no-network".into(),
            detail: Some("curl".into()),
        };
        let t = now();
        let create = serde_json::to_value(violation_op(None, &v, 1, &t)).unwrap();
        assert_eq!(create["path"], "/status/conditions");
        assert_eq!(create["value"][0]["reason"], "no_network");
        assert_eq!(create["value"][0]["message"], "no-network: curl");
        let other = Condition {
            type_: "Stalled".into(),
            status: "True".into(),
            reason: "R".into(),
            message: String::new(),
            last_transition_time: t.clone(),
            observed_generation: None,
        };
        let append =
            serde_json::to_value(violation_op(Some(std::slice::from_ref(&other)), &v, 2, &t))
                .unwrap();
        assert_eq!(append["path"], "/status/conditions/-");
        let mine = Condition {
            type_: VIOLATION_REPORTED.into(),
            ..other.clone()
        };
        let replace = serde_json::to_value(violation_op(Some(&[other, mine]), &v, 3, &t)).unwrap();
        assert_eq!(replace["op"], "replace");
        assert_eq!(replace["path"], "/status/conditions/1");
        assert!(
            replace["value"]["message"]
                .as_str()
                .unwrap()
                .contains("3 violations")
        );
    }

    #[test]
    fn endings_are_cut_to_the_schema_bounds() {
        use crate::api::{MAX_MESSAGE_LEN, MAX_NAME_LEN, MAX_REASON_LEN};
        // A message carries the work's stderr (a remote runner's is not cut on the
        // way), and a reason a condition's: neither may get the ending refused.
        let ending = Ending::new(OutcomeKind::Failed, &"R".repeat(5000), "é".repeat(100_000));
        let ops = serde_json::to_value(ending_ops(
            &attempt(0),
            &ending,
            None,
            &BTreeMap::new(),
            None,
            &now(),
        ))
        .unwrap();
        let chars = |v: &Value| v.as_str().map_or(0, |s| s.chars().count());
        for field in [&ops[0]["value"], &ops[2]["value"]] {
            assert_eq!(chars(&field["reason"]), MAX_REASON_LEN, "{field}");
            assert_eq!(chars(&field["message"]), MAX_MESSAGE_LEN);
        }
        // The history record of a success, and the older records copied with it.
        let mut a = attempt(2);
        a.history[0].reason = Some("x".repeat(1000));
        a.history[1].agent = Some("a".repeat(1000));
        let h = history_with(&a, OutcomeKind::Succeeded, Some(&"y".repeat(1000)), &now());
        for r in &h {
            assert!(
                r.reason
                    .as_ref()
                    .is_none_or(|s| s.chars().count() <= MAX_REASON_LEN)
            );
            assert!(
                r.agent
                    .as_ref()
                    .is_none_or(|s| s.chars().count() <= MAX_NAME_LEN)
            );
        }
        assert_eq!(
            h[2].reason.as_ref().map(|r| r.chars().count()),
            Some(MAX_REASON_LEN)
        );
    }

    #[test]
    fn a_violation_is_not_appended_to_a_full_condition_list() {
        let v = Violation {
            rule: "no-network".into(),
            detail: None,
        };
        let t = now();
        let others: Vec<Condition> = (0..MAX_CONDITIONS)
            .map(|i| Condition {
                type_: format!("Other{i}"),
                status: "True".into(),
                reason: "R".into(),
                message: String::new(),
                last_transition_time: t.clone(),
                observed_generation: None,
            })
            .collect();
        assert_eq!(violation_op(Some(&others), &v, 1, &t), None);
        assert!(violation_op(Some(&others[1..]), &v, 1, &t).is_some());
        // A full list that has ours still gets it replaced.
        let mut full = others;
        full[7].type_ = VIOLATION_REPORTED.into();
        let replace = serde_json::to_value(violation_op(Some(&full), &v, 2, &t)).unwrap();
        assert_eq!(replace["path"], "/status/conditions/7");
    }

    #[test]
    fn condition_reasons_are_valid() {
        assert_eq!(condition_reason("no-network"), "no_network");
        assert_eq!(condition_reason("9lives"), "Rule_9lives");
        assert_eq!(condition_reason("--"), "Rule");
        assert_eq!(condition_reason("ok_"), "ok");
    }
}
