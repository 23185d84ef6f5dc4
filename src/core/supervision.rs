//! The supervisor: lease staleness, the monitors' pure parts, and the hub that turns
//! signals into interventions by the queue's supervision policy.
//!
//! The ladder for a running item ("fish or cut bait"):
//!
//! 1. **Warn**: set a condition (`BudgetWarning`, `Stalled`, `Violation`).
//! 2. **Cooperative cancel**: `CancelRequested`; the agent stops the work and writes
//!    the outcome the supervisor asked for ([`StopRequest::outcome`]).
//! 3. **Fence out and delete the pod**, when the agent has not stopped within
//!    `cancelGraceSeconds`, or at once when its lease is stale or its pod unhealthy
//!    (a dead agent cannot cooperate). Fencing bumps the epoch and writes the outcome,
//!    so the agent's later writes fail.
//! 4. **Escalate**: a stop whose end is [`StopEnd::Escalate`]; the outcome is
//!    `Cancelled` with reason `Escalated` and the scheduler moves the item to Held.
//!
//! The supervisor never chooses what happens next (retry, dead letter): the outcome
//! it asks for says only how the attempt ended, and the scheduler decides.
//!
//! A stop request is written twice, both in the same words: as the `CancelRequested`
//! condition (`reason` = cause, `message` = "<end>: <detail>") for the agent, and as an
//! intervention record for the supervisor's own memory; [`StopRequest::parse`] reads
//! either back. Which interventions belong to the current attempt is decided by time
//! (recorded at or after the claim's `acquiredAt`), because `Intervention` has no
//! attempt number; node clocks are NTP-synchronised far tighter than attempts last.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::retry::ESCALATED;
use super::{add, signed, ts};
use crate::api::{
    BudgetAction, Counters, Intervention, OutcomeKind, Phase, StallAction, Supervision,
    ViolationAction, WorkItem, find_condition,
};

/// Condition types the supervisor sets.
pub mod conditions {
    pub const STALLED: &str = "Stalled";
    pub const BUDGET_WARNING: &str = "BudgetWarning";
    pub const OVER_BUDGET: &str = "OverBudget";
    pub const VIOLATION: &str = "Violation";
    pub const ESCALATED: &str = "Escalated";
    pub const CANCEL_REQUESTED: &str = "CancelRequested";
}

/// Built-in violation rules; `violationRules` may name them to override the default
/// action, which is `Restart` for both (stop the attempt, let the scheduler decide:
/// a retry after a timeout, a dead letter after the deadline).
pub const RULE_ATTEMPT_TIMEOUT: &str = "AttemptTimeout";
pub const RULE_PAST_DEADLINE: &str = "PastDeadline";

// --- Leases ------------------------------------------------------------------------

/// Whether an agent's lease is stale: the supervisor has itself seen no change of it
/// for a whole lease duration, measured on its own clock from when it last saw the
/// lease change. The lease's `renewTime` is never compared with our clock: the agent's
/// clock may be skewed, and a supervisor that just started has seen nothing yet.
pub fn lease_is_stale(
    last_change_seen_at: Timestamp,
    lease_duration: Duration,
    now: Timestamp,
) -> bool {
    now >= add(last_change_seen_at, signed(lease_duration))
}

/// After its own (re)start the supervisor waits one full lease duration before it
/// reclaims anything, so that it has had the chance to see every live lease renew.
pub fn may_reclaim(
    supervisor_started_at: Timestamp,
    lease_duration: Duration,
    now: Timestamp,
) -> bool {
    now >= add(supervisor_started_at, signed(lease_duration))
}

/// Tracks one lease as the supervisor sees it: `marker` is anything that changes on
/// every renewal (its resourceVersion, or its renewTime as a string).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseObserver {
    marker: String,
    changed_at: Timestamp,
}

impl LeaseObserver {
    /// First sight counts as a change: we cannot know how old the renewal is.
    pub fn new(marker: impl Into<String>, now: Timestamp) -> Self {
        Self {
            marker: marker.into(),
            changed_at: now,
        }
    }

    /// Records an observation; true when the lease changed since the last one.
    pub fn observe(&mut self, marker: &str, now: Timestamp) -> bool {
        if marker == self.marker {
            return false;
        }
        self.marker = marker.to_string();
        self.changed_at = now;
        true
    }

    pub fn last_change_seen_at(&self) -> Timestamp {
        self.changed_at
    }

    /// How long we have seen no change.
    pub fn unchanged_for(&self, now: Timestamp) -> Duration {
        Duration::try_from(now.duration_since(self.changed_at)).unwrap_or(Duration::ZERO)
    }

    pub fn is_stale(&self, lease_duration: Duration, now: Timestamp) -> bool {
        lease_is_stale(self.changed_at, lease_duration, now)
    }
}

// --- Monitors' pure parts ----------------------------------------------------------

/// When the stall began, if the item has stalled: no progress (percent, checkpoint or
/// usage change, i.e. `progress.updatedAt`) for `stall_seconds`, counted from the later
/// of the last progress and the attempt's start, so progress of an earlier attempt
/// does not count. None while unknown (no attempt start) or not stalled.
pub fn stall_since(
    last_progress: Option<Timestamp>,
    attempt_started: Option<Timestamp>,
    stall_seconds: i64,
    now: Timestamp,
) -> Option<Timestamp> {
    let since = last_progress.max(attempt_started)?;
    (now >= add(since, SignedDuration::from_secs(stall_seconds.max(1)))).then_some(since)
}

/// The budget in force per counter: the item's budget, else the queue's default, plus
/// extensions granted so far.
pub fn effective_budget(
    item: &Counters,
    queue_default: &Counters,
    extension: &Counters,
) -> Counters {
    let mut out: Counters = queue_default.clone();
    out.extend(item.iter().map(|(k, v)| (k.clone(), *v)));
    for (k, v) in out.iter_mut() {
        *v += extension.get(k).copied().unwrap_or(0.0);
    }
    out
}

/// One `BudgetUsage` signal per budgeted counter that has usage.
pub fn budget_signals(usage: &Counters, budget: &Counters) -> Vec<Signal> {
    budget
        .iter()
        .filter_map(|(counter, limit)| {
            usage.get(counter).map(|used| Signal::BudgetUsage {
                counter: counter.clone(),
                used: *used,
                limit: *limit,
            })
        })
        .collect()
}

// --- Signals, decisions -------------------------------------------------------------

/// What the monitors report about one running item.
#[derive(Clone, Debug, PartialEq)]
pub enum Signal {
    /// The holder's lease was observed stale (see [`lease_is_stale`]); the monitor
    /// sends it only once [`may_reclaim`] allows.
    LeaseStale {
        agent: String,
        observed_for: Duration,
    },
    /// The holder's pod is crash-looping, OOM-killed, failing to pull, unschedulable…
    PodUnhealthy {
        reason: String,
    },
    Stalled {
        since: Timestamp,
    },
    /// `limit` is the budget in force (see [`effective_budget`]).
    BudgetUsage {
        counter: String,
        used: f64,
        limit: f64,
    },
    Violation {
        rule: String,
        detail: String,
    },
    AttemptTimeout,
    PastDeadline,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Monitor {
    Health,
    Budget,
    Progress,
    Violation,
    /// Not a monitor: the user's `spec.cancel` on a running item.
    User,
}

impl Monitor {
    pub fn as_str(self) -> &'static str {
        match self {
            Monitor::Health => "health",
            Monitor::Budget => "budget",
            Monitor::Progress => "progress",
            Monitor::Violation => "violation",
            Monitor::User => "user",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "budget" => Monitor::Budget,
            "progress" => Monitor::Progress,
            "violation" => Monitor::Violation,
            "user" => Monitor::User,
            _ => Monitor::Health,
        }
    }
}

/// How an attempt stopped by the supervisor should end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StopEnd {
    /// A failed attempt: the scheduler retries or dead-letters (policy `Restart`).
    Retry,
    /// A permanent failure: the item ends Failed with the cause as `lastError.reason`.
    Fail,
    /// Held for the scheduler's escalation policy.
    Escalate,
    /// The user cancelled (`spec.cancel`).
    Cancel,
}

impl StopEnd {
    pub fn as_str(self) -> &'static str {
        match self {
            StopEnd::Retry => "retry",
            StopEnd::Fail => "fail",
            StopEnd::Escalate => "escalate",
            StopEnd::Cancel => "cancel",
        }
    }
}

/// A stop the supervisor asks for: how the attempt should end, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StopRequest {
    pub end: StopEnd,
    /// CamelCase cause: `Stalled`, `BudgetExceeded`, `Violation`, `AttemptTimeout`,
    /// `DeadlineExceeded`, `Cancelled`.
    pub cause: String,
}

impl StopRequest {
    /// The outcome (kind, reason) the attempt ends with, written by the agent when it
    /// stops or by the supervisor when it fences the agent out.
    pub fn outcome(&self) -> (OutcomeKind, String) {
        match self.end {
            StopEnd::Retry => (OutcomeKind::Failed, self.cause.clone()),
            StopEnd::Fail => (OutcomeKind::FailedPermanently, self.cause.clone()),
            StopEnd::Escalate => (OutcomeKind::Cancelled, ESCALATED.into()),
            StopEnd::Cancel => (OutcomeKind::Cancelled, "Cancelled".into()),
        }
    }

    /// "<end>: <detail>", the message of the condition and the intervention.
    pub fn message(&self, detail: &str) -> String {
        format!("{}: {detail}", self.end.as_str())
    }

    /// Reads a stop back from a `CancelRequested` condition's or an intervention's
    /// reason and message.
    pub fn parse(reason: &str, message: &str) -> Option<Self> {
        let word = message.split(':').next().unwrap_or("").trim();
        let end = [
            StopEnd::Retry,
            StopEnd::Fail,
            StopEnd::Escalate,
            StopEnd::Cancel,
        ]
        .into_iter()
        .find(|e| e.as_str() == word)?;
        Some(StopRequest {
            end,
            cause: reason.to_string(),
        })
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Set the step's condition; nothing is stopped.
    Warn,
    /// Cooperative cancel: set `CancelRequested` True with the step's reason and
    /// message (what [`requested_stop`] reads back), plus the step's condition.
    RequestCancel(StopRequest),
    /// Bump the claim epoch and write this outcome: the holder is out.
    FenceOut {
        outcome: OutcomeKind,
        reason: String,
    },
    /// Delete the holder's pod; the pool controller replaces it.
    DeletePod,
    /// Add `amount` to `status.budgetExtension[counter]`.
    Extend { counter: String, amount: f64 },
}

impl Action {
    /// The `action` of the intervention record (and the metric label).
    pub fn name(&self) -> &'static str {
        match self {
            Action::Warn => "Warn",
            Action::RequestCancel(s) => match s.end {
                StopEnd::Escalate => "Escalate",
                StopEnd::Cancel => "Cancel",
                StopEnd::Retry | StopEnd::Fail => "CancelRequested",
            },
            Action::FenceOut { .. } => "FenceOut",
            Action::DeletePod => "DeletePod",
            Action::Extend { .. } => "Extend",
        }
    }
}

/// One intervention: an Event, an entry in `status.interventions`, a metric.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub monitor: Monitor,
    /// CamelCase; also the reason of `condition`.
    pub reason: String,
    pub action: Action,
    pub message: String,
    /// A supervision condition to set True with this reason and message.
    pub condition: Option<&'static str>,
}

impl Step {
    pub fn intervention(&self, at: Timestamp) -> Intervention {
        Intervention {
            at: Time(at),
            monitor: self.monitor.as_str().into(),
            reason: self.reason.clone(),
            action: self.action.name().into(),
            message: Some(self.message.clone()),
        }
    }
}

const STOP_ACTIONS: [&str; 3] = ["CancelRequested", "Escalate", "Cancel"];

/// When the current attempt started: the claim's `acquiredAt`, else `startedAt`.
pub fn attempt_started_at(item: &WorkItem) -> Option<Timestamp> {
    let status = item.status.as_ref()?;
    status
        .claim
        .as_ref()
        .and_then(|c| ts(c.acquired_at.as_ref()))
        .or_else(|| ts(status.started_at.as_ref()))
}

/// Interventions recorded for the item's current attempt (at or after its start).
pub fn current_attempt_interventions(item: &WorkItem) -> Vec<&Intervention> {
    let Some(status) = item.status.as_ref() else {
        return vec![];
    };
    let start = attempt_started_at(item);
    status
        .interventions
        .iter()
        .filter(|i| start.is_none_or(|s| i.at.0 >= s))
        .collect()
}

/// The stop asked of the current attempt, as the holding agent reads it: a True
/// `CancelRequested` condition set at or after the attempt started (one left over
/// from an earlier attempt does not stop this one).
pub fn requested_stop(item: &WorkItem) -> Option<StopRequest> {
    let status = item.status.as_ref()?;
    let c = find_condition(&status.conditions, conditions::CANCEL_REQUESTED)
        .filter(|c| c.status == "True")?;
    if attempt_started_at(item).is_some_and(|s| c.last_transition_time.0 < s) {
        return None;
    }
    StopRequest::parse(&c.reason, &c.message)
}

/// The hub: what to do about a Running item now, given the monitors' signals and the
/// queue's policy. Returns the steps in the order to carry them out; empty when there
/// is nothing (new) to do. Steps already recorded for this attempt are not repeated.
pub fn decide(
    item: &WorkItem,
    policy: &Supervision,
    signals: &[Signal],
    now: Timestamp,
) -> Vec<Step> {
    if item.phase() != Some(Phase::Running) {
        return vec![];
    }
    let history = current_attempt_interventions(item);
    if history.iter().any(|i| i.action == "FenceOut") {
        return vec![];
    }
    let done = |action: &str, reason: &str| {
        history
            .iter()
            .any(|i| i.action == action && i.reason == reason)
    };

    // A dead or broken holder cannot cooperate: fence at once.
    for s in signals {
        let (reason, message) = match s {
            Signal::LeaseStale {
                agent,
                observed_for,
            } => (
                "LeaseExpired".to_string(),
                format!(
                    "lease of agent {agent} not renewed for {}s",
                    observed_for.as_secs()
                ),
            ),
            Signal::PodUnhealthy { reason } => {
                (reason.clone(), format!("agent pod unhealthy: {reason}"))
            }
            _ => continue,
        };
        return fence(
            Monitor::Health,
            &reason,
            OutcomeKind::LeaseExpired,
            reason.clone(),
            &message,
        );
    }

    // A stop is pending: wait out the grace period, then cut.
    let pending = history
        .iter()
        .rev()
        .find(|i| STOP_ACTIONS.contains(&i.action.as_str()));
    if let Some(p) = pending {
        let stop = StopRequest::parse(&p.reason, p.message.as_deref().unwrap_or(""))
            .unwrap_or_else(|| StopRequest {
                end: match p.action.as_str() {
                    "Escalate" => StopEnd::Escalate,
                    "Cancel" => StopEnd::Cancel,
                    _ => StopEnd::Retry,
                },
                cause: p.reason.clone(),
            });
        let grace = SignedDuration::from_secs(policy.cancel_grace_seconds.max(0));
        if now >= add(p.at.0, grace) {
            let (kind, reason) = stop.outcome();
            let message = format!(
                "agent did not stop within {}s of the cancel request",
                policy.cancel_grace_seconds.max(0)
            );
            return fence(
                Monitor::parse(&p.monitor),
                &stop.cause,
                kind,
                reason,
                &message,
            );
        }
        return vec![];
    }

    let mut steps = Vec::new();
    let mut stop: Option<Step> = None;
    let mut consider = |candidate: Step| {
        let rank = |s: &Step| match &s.action {
            Action::RequestCancel(r) => Some(r.end),
            _ => None,
        };
        if stop.as_ref().is_none_or(|cur| rank(&candidate) > rank(cur)) {
            stop = Some(candidate);
        }
    };

    if item.spec.cancel {
        consider(stop_step(
            Monitor::User,
            StopEnd::Cancel,
            "Cancelled",
            "cancelled by the user",
            None,
        ));
    }

    let extension = item
        .status
        .as_ref()
        .map(|s| s.budget_extension.clone())
        .unwrap_or_default();
    let mut extensions = item.status.as_ref().map_or(0, |s| {
        s.interventions
            .iter()
            .filter(|i| i.action == "Extend")
            .count()
    });
    let warn_fraction = f64::from(policy.budget_warning_percent.clamp(1, 100)) / 100.0;

    for s in signals {
        match s {
            Signal::LeaseStale { .. } | Signal::PodUnhealthy { .. } => {}
            Signal::Stalled { since } => {
                let detail = format!("no progress since {since:.0}");
                if !done("Warn", "Stalled") {
                    steps.push(warn(
                        Monitor::Progress,
                        "Stalled",
                        &detail,
                        conditions::STALLED,
                    ));
                }
                let end = match policy.on_stall {
                    StallAction::Restart => StopEnd::Retry,
                    StallAction::Escalate => StopEnd::Escalate,
                    StallAction::Cancel => StopEnd::Fail,
                };
                consider(stop_step(Monitor::Progress, end, "Stalled", &detail, None));
            }
            Signal::BudgetUsage {
                counter,
                used,
                limit,
            } => {
                let (used, limit) = (*used, *limit);
                if !used.is_finite() || !limit.is_finite() {
                    continue;
                }
                let exceeded = used > 0.0 && used >= limit;
                if !exceeded {
                    if used >= limit * warn_fraction
                        && limit > 0.0
                        && !done("Warn", "BudgetWarning")
                    {
                        steps.push(warn(
                            Monitor::Budget,
                            "BudgetWarning",
                            &format!(
                                "{counter} reached {}% of its budget of {limit}",
                                policy.budget_warning_percent
                            ),
                            conditions::BUDGET_WARNING,
                        ));
                    }
                    continue;
                }
                let detail = format!("{counter} used {used} of {limit}");
                let base = limit - extension.get(counter).copied().unwrap_or(0.0);
                let amount = base * f64::from(policy.extend.percent.clamp(1, 100)) / 100.0;
                let end = match policy.on_budget_exceeded {
                    BudgetAction::Extend
                        if extensions
                            < usize::try_from(policy.extend.max_extensions).unwrap_or(0)
                            && amount > 0.0 =>
                    {
                        extensions += 1;
                        steps.push(Step {
                            monitor: Monitor::Budget,
                            reason: "BudgetExceeded".into(),
                            action: Action::Extend {
                                counter: counter.clone(),
                                amount,
                            },
                            message: format!(
                                "{detail}: extension {extensions} of {} adds {amount}",
                                policy.extend.max_extensions
                            ),
                            condition: None,
                        });
                        continue;
                    }
                    BudgetAction::Escalate => StopEnd::Escalate,
                    BudgetAction::Cancel | BudgetAction::Extend => StopEnd::Fail,
                };
                consider(stop_step(
                    Monitor::Budget,
                    end,
                    "BudgetExceeded",
                    &detail,
                    Some(conditions::OVER_BUDGET),
                ));
            }
            Signal::Violation { rule, detail } => {
                let action = policy
                    .violation_rules
                    .get(rule)
                    .copied()
                    .unwrap_or(policy.on_violation);
                violation(
                    action,
                    "Violation",
                    &format!("rule {rule}: {detail}"),
                    &done,
                    &mut steps,
                    &mut consider,
                );
            }
            Signal::AttemptTimeout => {
                let action = rule_action(&policy.violation_rules, RULE_ATTEMPT_TIMEOUT);
                violation(
                    action,
                    "AttemptTimeout",
                    "attempt ran past its timeout",
                    &done,
                    &mut steps,
                    &mut consider,
                );
            }
            Signal::PastDeadline => {
                let action = rule_action(&policy.violation_rules, RULE_PAST_DEADLINE);
                violation(
                    action,
                    "DeadlineExceeded",
                    "item ran past its deadline",
                    &done,
                    &mut steps,
                    &mut consider,
                );
            }
        }
    }
    steps.extend(stop);
    steps
}

fn rule_action(rules: &BTreeMap<String, ViolationAction>, rule: &str) -> ViolationAction {
    rules.get(rule).copied().unwrap_or(ViolationAction::Restart)
}

fn violation(
    action: ViolationAction,
    cause: &str,
    detail: &str,
    done: &impl Fn(&str, &str) -> bool,
    steps: &mut Vec<Step>,
    consider: &mut impl FnMut(Step),
) {
    let end = match action {
        ViolationAction::Warn => {
            if !done("Warn", cause) {
                steps.push(warn(
                    Monitor::Violation,
                    cause,
                    detail,
                    conditions::VIOLATION,
                ));
            }
            return;
        }
        ViolationAction::Restart => StopEnd::Retry,
        ViolationAction::Escalate => StopEnd::Escalate,
        ViolationAction::Cancel => StopEnd::Fail,
    };
    consider(stop_step(
        Monitor::Violation,
        end,
        cause,
        detail,
        Some(conditions::VIOLATION),
    ));
}

fn warn(monitor: Monitor, reason: &str, message: &str, condition: &'static str) -> Step {
    Step {
        monitor,
        reason: reason.into(),
        action: Action::Warn,
        message: message.into(),
        condition: Some(condition),
    }
}

fn stop_step(
    monitor: Monitor,
    end: StopEnd,
    cause: &str,
    detail: &str,
    condition: Option<&'static str>,
) -> Step {
    let stop = StopRequest {
        end,
        cause: cause.into(),
    };
    Step {
        monitor,
        reason: cause.into(),
        message: stop.message(detail),
        action: Action::RequestCancel(stop),
        condition: if end == StopEnd::Escalate {
            Some(conditions::ESCALATED)
        } else {
            condition
        },
    }
}

fn fence(
    monitor: Monitor,
    cause: &str,
    outcome: OutcomeKind,
    reason: String,
    message: &str,
) -> Vec<Step> {
    vec![
        Step {
            monitor,
            reason: cause.into(),
            action: Action::FenceOut { outcome, reason },
            message: message.into(),
            condition: None,
        },
        Step {
            monitor,
            reason: cause.into(),
            action: Action::DeletePod,
            message: message.into(),
            condition: None,
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Claim, ExtendPolicy, WorkItemSpec, WorkItemStatus};
    use crate::core::testutil::{t, time};

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn lease_staleness_is_measured_on_our_clock() {
        let d = 15 * SEC;
        assert!(!lease_is_stale(t(0), d, t(14)));
        assert!(lease_is_stale(t(0), d, t(15)));
        let mut obs = LeaseObserver::new("rv1", t(0));
        assert!(!obs.observe("rv1", t(10)), "no change");
        assert!(!obs.is_stale(d, t(14)));
        assert!(obs.observe("rv2", t(14)), "renewed");
        assert_eq!(obs.last_change_seen_at(), t(14));
        assert!(!obs.is_stale(d, t(28)));
        assert!(obs.is_stale(d, t(29)));
        assert_eq!(obs.unchanged_for(t(29)), 15 * SEC);
        assert_eq!(obs.unchanged_for(t(0)), Duration::ZERO, "clock went back");
    }

    #[test]
    fn first_sight_of_an_old_lease_is_not_stale() {
        // However old its renewTime, we have not watched it for a lease duration yet.
        let obs = LeaseObserver::new("renewed-long-ago", t(100));
        assert!(!obs.is_stale(15 * SEC, t(110)));
    }

    #[test]
    fn no_reclaim_within_a_lease_duration_of_our_start() {
        assert!(!may_reclaim(t(0), 15 * SEC, t(14)));
        assert!(may_reclaim(t(0), 15 * SEC, t(15)));
    }

    #[test]
    fn stall_counts_from_progress_or_attempt_start() {
        assert_eq!(stall_since(Some(t(0)), Some(t(10)), 60, t(69)), None);
        assert_eq!(stall_since(Some(t(0)), Some(t(10)), 60, t(70)), Some(t(10)));
        assert_eq!(stall_since(Some(t(50)), Some(t(10)), 60, t(100)), None);
        assert_eq!(
            stall_since(Some(t(50)), Some(t(10)), 60, t(110)),
            Some(t(50))
        );
        assert_eq!(stall_since(None, Some(t(0)), 60, t(60)), Some(t(0)));
        assert_eq!(stall_since(None, None, 60, t(1000)), None);
    }

    #[test]
    fn budget_in_force_and_signals() {
        let item = Counters::from([("tokens".into(), 100.0)]);
        let default = Counters::from([("tokens".into(), 5.0), ("cost".into(), 1.0)]);
        let ext = Counters::from([("tokens".into(), 50.0)]);
        let b = effective_budget(&item, &default, &ext);
        assert_eq!(
            b,
            Counters::from([("tokens".into(), 150.0), ("cost".into(), 1.0)])
        );
        let usage = Counters::from([("tokens".into(), 120.0), ("other".into(), 9.0)]);
        assert_eq!(
            budget_signals(&usage, &b),
            vec![Signal::BudgetUsage {
                counter: "tokens".into(),
                used: 120.0,
                limit: 150.0
            }]
        );
    }

    #[test]
    fn stop_request_round_trips_and_maps_to_outcomes() {
        for end in [
            StopEnd::Retry,
            StopEnd::Fail,
            StopEnd::Escalate,
            StopEnd::Cancel,
        ] {
            let s = StopRequest {
                end,
                cause: "BudgetExceeded".into(),
            };
            assert_eq!(
                StopRequest::parse(&s.cause, &s.message("tokens: used 5 of 4")),
                Some(s)
            );
        }
        assert_eq!(StopRequest::parse("x", "whatever"), None);
        let o = |end| {
            StopRequest {
                end,
                cause: "BudgetExceeded".into(),
            }
            .outcome()
        };
        assert_eq!(
            o(StopEnd::Retry),
            (OutcomeKind::Failed, "BudgetExceeded".into())
        );
        assert_eq!(
            o(StopEnd::Fail),
            (OutcomeKind::FailedPermanently, "BudgetExceeded".into())
        );
        assert_eq!(
            o(StopEnd::Escalate),
            (OutcomeKind::Cancelled, "Escalated".into())
        );
        assert_eq!(
            o(StopEnd::Cancel),
            (OutcomeKind::Cancelled, "Cancelled".into())
        );
    }

    fn running() -> WorkItem {
        let mut wi = WorkItem::new(
            "x",
            WorkItemSpec {
                queue: Some("q".into()),
                priority: 500,
                ..Default::default()
            },
        );
        wi.status = Some(WorkItemStatus {
            phase: Some(Phase::Running),
            attempt: 1,
            claim: Some(Claim {
                agent: "a1".into(),
                pod: Some("p1".into()),
                epoch: 1,
                acquired_at: Some(time(0)),
                lease: None,
            }),
            ..Default::default()
        });
        wi
    }

    /// Records the steps as the supervisor would, at `at`.
    fn record(wi: &mut WorkItem, steps: &[Step], at: i64) {
        let s = wi.status.as_mut().unwrap();
        for step in steps {
            s.interventions.push(step.intervention(t(at)));
            if let Action::Extend { counter, amount } = &step.action {
                *s.budget_extension.entry(counter.clone()).or_default() += amount;
            }
        }
    }

    fn actions(steps: &[Step]) -> Vec<&'static str> {
        steps.iter().map(|s| s.action.name()).collect()
    }

    fn stalled() -> Signal {
        Signal::Stalled { since: t(0) }
    }

    #[test]
    fn only_running_items_are_supervised() {
        let mut wi = running();
        wi.status.as_mut().unwrap().phase = Some(Phase::Queued);
        assert!(decide(&wi, &Supervision::default(), &[stalled()], t(400)).is_empty());
    }

    #[test]
    fn stale_lease_fences_at_once_with_lease_expired() {
        let sig = Signal::LeaseStale {
            agent: "a1".into(),
            observed_for: 15 * SEC,
        };
        let steps = decide(
            &running(),
            &Supervision::default(),
            &[stalled(), sig],
            t(100),
        );
        assert_eq!(actions(&steps), ["FenceOut", "DeletePod"]);
        assert_eq!(
            steps[0].action,
            Action::FenceOut {
                outcome: OutcomeKind::LeaseExpired,
                reason: "LeaseExpired".into()
            }
        );
        assert_eq!(steps[0].monitor, Monitor::Health);
    }

    #[test]
    fn unhealthy_pod_fences_with_the_pod_reason() {
        let sig = Signal::PodUnhealthy {
            reason: "OOMKilled".into(),
        };
        let steps = decide(&running(), &Supervision::default(), &[sig], t(100));
        assert_eq!(
            steps[0].action,
            Action::FenceOut {
                outcome: OutcomeKind::LeaseExpired,
                reason: "OOMKilled".into()
            }
        );
        assert_eq!(steps[1].action, Action::DeletePod);
    }

    #[test]
    fn stall_ladder_restart_then_fence_after_grace() {
        let policy = Supervision::default(); // Restart, grace 10 s
        let mut wi = running();
        let steps = decide(&wi, &policy, &[stalled()], t(300));
        assert_eq!(actions(&steps), ["Warn", "CancelRequested"]);
        assert_eq!(steps[0].condition, Some(conditions::STALLED));
        assert_eq!(
            steps[1].action,
            Action::RequestCancel(StopRequest {
                end: StopEnd::Retry,
                cause: "Stalled".into()
            })
        );
        assert!(steps[1].message.starts_with("retry: no progress since"));
        record(&mut wi, &steps, 300);

        // Within the grace period: nothing new, however often asked.
        assert!(decide(&wi, &policy, &[stalled()], t(309)).is_empty());
        // Grace over and the agent is still running: cut it off.
        let steps = decide(&wi, &policy, &[stalled()], t(310));
        assert_eq!(actions(&steps), ["FenceOut", "DeletePod"]);
        assert_eq!(
            steps[0].action,
            Action::FenceOut {
                outcome: OutcomeKind::Failed,
                reason: "Stalled".into()
            }
        );
        assert_eq!(steps[0].monitor, Monitor::Progress);
        record(&mut wi, &steps, 310);
        assert!(
            decide(&wi, &policy, &[stalled()], t(400)).is_empty(),
            "fenced once"
        );
    }

    #[test]
    fn stall_policy_escalate_and_cancel() {
        let esc = Supervision {
            on_stall: StallAction::Escalate,
            ..Default::default()
        };
        let steps = decide(&running(), &esc, &[stalled()], t(300));
        assert_eq!(actions(&steps), ["Warn", "Escalate"]);
        assert_eq!(steps[1].condition, Some(conditions::ESCALATED));

        let cut = Supervision {
            on_stall: StallAction::Cancel,
            ..Default::default()
        };
        let steps = decide(&running(), &cut, &[stalled()], t(300));
        assert_eq!(
            steps[1].action,
            Action::RequestCancel(StopRequest {
                end: StopEnd::Fail,
                cause: "Stalled".into()
            })
        );
    }

    #[test]
    fn escalation_fences_with_the_escalated_outcome() {
        let esc = Supervision {
            on_stall: StallAction::Escalate,
            ..Default::default()
        };
        let mut wi = running();
        let steps = decide(&wi, &esc, &[stalled()], t(300));
        record(&mut wi, &steps, 300);
        let steps = decide(&wi, &esc, &[], t(311));
        assert_eq!(
            steps[0].action,
            Action::FenceOut {
                outcome: OutcomeKind::Cancelled,
                reason: "Escalated".into()
            }
        );
    }

    #[test]
    fn interventions_of_an_earlier_attempt_do_not_count() {
        let policy = Supervision::default();
        let mut wi = running();
        let steps = decide(&wi, &policy, &[stalled()], t(300));
        record(&mut wi, &steps, 300);
        // A new attempt is claimed at t(500).
        let s = wi.status.as_mut().unwrap();
        s.attempt = 2;
        s.claim.as_mut().unwrap().acquired_at = Some(time(500));
        let steps = decide(&wi, &policy, &[Signal::Stalled { since: t(500) }], t(800));
        assert_eq!(actions(&steps), ["Warn", "CancelRequested"]);
    }

    fn budget(used: f64, limit: f64) -> Signal {
        Signal::BudgetUsage {
            counter: "tokens".into(),
            used,
            limit,
        }
    }

    #[test]
    fn budget_warns_once_at_the_threshold() {
        let policy = Supervision::default(); // 80 %
        let mut wi = running();
        assert!(decide(&wi, &policy, &[budget(799.0, 1000.0)], t(1)).is_empty());
        let steps = decide(&wi, &policy, &[budget(800.0, 1000.0)], t(1));
        assert_eq!(actions(&steps), ["Warn"]);
        assert_eq!(steps[0].condition, Some(conditions::BUDGET_WARNING));
        assert_eq!(steps[0].reason, "BudgetWarning");
        record(&mut wi, &steps, 1);
        assert!(
            decide(&wi, &policy, &[budget(900.0, 1000.0)], t(2)).is_empty(),
            "once per attempt"
        );
    }

    #[test]
    fn budget_exceeded_cuts_by_default() {
        let steps = decide(
            &running(),
            &Supervision::default(),
            &[budget(1000.0, 1000.0)],
            t(1),
        );
        assert_eq!(actions(&steps), ["CancelRequested"]);
        assert_eq!(steps[0].condition, Some(conditions::OVER_BUDGET));
        let Action::RequestCancel(stop) = &steps[0].action else {
            panic!()
        };
        assert_eq!(
            stop.outcome(),
            (OutcomeKind::FailedPermanently, "BudgetExceeded".into()),
            "ends Failed with lastError.reason BudgetExceeded"
        );
    }

    #[test]
    fn budget_exceeded_escalates_per_policy() {
        let policy = Supervision {
            on_budget_exceeded: BudgetAction::Escalate,
            ..Default::default()
        };
        let steps = decide(&running(), &policy, &[budget(2000.0, 1000.0)], t(1));
        assert_eq!(actions(&steps), ["Escalate"]);
    }

    #[test]
    fn extend_grants_exactly_max_extensions_then_cuts() {
        let policy = Supervision {
            on_budget_exceeded: BudgetAction::Extend,
            extend: ExtendPolicy {
                max_extensions: 2,
                percent: 50,
            },
            ..Default::default()
        };
        let mut wi = running();
        let limit = |wi: &WorkItem| {
            1000.0
                + wi.status
                    .as_ref()
                    .unwrap()
                    .budget_extension
                    .get("tokens")
                    .copied()
                    .unwrap_or(0.0)
        };
        let mut granted = vec![];
        for round in 0..4 {
            let steps = decide(&wi, &policy, &[budget(limit(&wi), limit(&wi))], t(round));
            if let [
                Step {
                    action: Action::Extend { amount, .. },
                    ..
                },
            ] = steps.as_slice()
            {
                granted.push(*amount);
                record(&mut wi, &steps, round);
            } else {
                assert_eq!(actions(&steps), ["CancelRequested"], "round {round}");
                break;
            }
        }
        assert_eq!(
            granted,
            [500.0, 500.0],
            "bounded extensions of 50 % of the base budget"
        );
    }

    #[test]
    fn extend_with_zero_allowed_cuts_at_once() {
        let policy = Supervision {
            on_budget_exceeded: BudgetAction::Extend,
            extend: ExtendPolicy {
                max_extensions: 0,
                percent: 50,
            },
            ..Default::default()
        };
        let steps = decide(&running(), &policy, &[budget(5.0, 1.0)], t(1));
        assert_eq!(actions(&steps), ["CancelRequested"]);
    }

    #[test]
    fn zero_budget_is_exceeded_by_any_use_and_bad_numbers_are_ignored() {
        let p = Supervision::default();
        assert!(decide(&running(), &p, &[budget(0.0, 0.0)], t(1)).is_empty());
        assert_eq!(
            actions(&decide(&running(), &p, &[budget(0.1, 0.0)], t(1))),
            ["CancelRequested"]
        );
        assert!(decide(&running(), &p, &[budget(f64::NAN, 1.0)], t(1)).is_empty());
    }

    #[test]
    fn violation_uses_rule_then_default_action() {
        let mut policy = Supervision::default(); // onViolation Escalate
        policy
            .violation_rules
            .insert("noisy".into(), ViolationAction::Warn);
        policy
            .violation_rules
            .insert("pii".into(), ViolationAction::Cancel);
        let v = |rule: &str| Signal::Violation {
            rule: rule.into(),
            detail: "d".into(),
        };
        assert_eq!(
            actions(&decide(&running(), &policy, &[v("other")], t(1))),
            ["Escalate"]
        );
        let warn = decide(&running(), &policy, &[v("noisy")], t(1));
        assert_eq!(actions(&warn), ["Warn"]);
        assert_eq!(warn[0].condition, Some(conditions::VIOLATION));
        assert_eq!(warn[0].message, "rule noisy: d");
        let cut = decide(&running(), &policy, &[v("pii")], t(1));
        assert_eq!(
            cut[0].action,
            Action::RequestCancel(StopRequest {
                end: StopEnd::Fail,
                cause: "Violation".into()
            })
        );
    }

    #[test]
    fn timeouts_restart_unless_a_rule_says_otherwise() {
        let mut policy = Supervision::default();
        let steps = decide(&running(), &policy, &[Signal::AttemptTimeout], t(1));
        assert_eq!(
            steps[0].action,
            Action::RequestCancel(StopRequest {
                end: StopEnd::Retry,
                cause: "AttemptTimeout".into()
            })
        );
        let steps = decide(&running(), &policy, &[Signal::PastDeadline], t(1));
        assert_eq!(steps[0].reason, "DeadlineExceeded");
        policy
            .violation_rules
            .insert(RULE_ATTEMPT_TIMEOUT.into(), ViolationAction::Escalate);
        assert_eq!(
            actions(&decide(
                &running(),
                &policy,
                &[Signal::AttemptTimeout],
                t(1)
            )),
            ["Escalate"]
        );
    }

    #[test]
    fn strongest_stop_wins_and_only_one_is_requested() {
        let policy = Supervision::default(); // stall Restart, violation Escalate
        let v = Signal::Violation {
            rule: "r".into(),
            detail: "d".into(),
        };
        let steps = decide(
            &running(),
            &policy,
            &[stalled(), v, Signal::AttemptTimeout],
            t(300),
        );
        assert_eq!(actions(&steps), ["Warn", "Escalate"]);
        let mut wi = running();
        wi.spec.cancel = true;
        let steps = decide(&wi, &policy, &[stalled()], t(300));
        assert_eq!(
            actions(&steps),
            ["Warn", "Cancel"],
            "the user's cancel beats all"
        );
        let Action::RequestCancel(stop) = &steps[1].action else {
            panic!()
        };
        assert_eq!(stop.outcome(), (OutcomeKind::Cancelled, "Cancelled".into()));
    }

    #[test]
    fn user_cancel_of_a_running_item_is_cooperative_then_fenced() {
        let policy = Supervision {
            cancel_grace_seconds: 5,
            ..Default::default()
        };
        let mut wi = running();
        wi.spec.cancel = true;
        let steps = decide(&wi, &policy, &[], t(10));
        assert_eq!(actions(&steps), ["Cancel"]);
        assert_eq!(steps[0].monitor, Monitor::User);
        record(&mut wi, &steps, 10);
        assert!(decide(&wi, &policy, &[], t(14)).is_empty());
        let steps = decide(&wi, &policy, &[], t(15));
        assert_eq!(
            steps[0].action,
            Action::FenceOut {
                outcome: OutcomeKind::Cancelled,
                reason: "Cancelled".into()
            }
        );
    }

    #[test]
    fn nothing_to_do_without_signals() {
        assert!(decide(&running(), &Supervision::default(), &[], t(1)).is_empty());
    }

    #[test]
    fn intervention_record_carries_monitor_reason_action() {
        let steps = decide(&running(), &Supervision::default(), &[stalled()], t(300));
        let rec = steps[1].intervention(t(300));
        assert_eq!(
            (
                rec.monitor.as_str(),
                rec.reason.as_str(),
                rec.action.as_str()
            ),
            ("progress", "Stalled", "CancelRequested")
        );
        assert_eq!(rec.at, time(300));
        assert_eq!(
            StopRequest::parse(&rec.reason, rec.message.as_deref().unwrap()).map(|s| s.end),
            Some(StopEnd::Retry)
        );
    }

    fn cancel_condition(
        at: i64,
        reason: &str,
        message: &str,
    ) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
            type_: conditions::CANCEL_REQUESTED.into(),
            status: "True".into(),
            reason: reason.into(),
            message: message.into(),
            last_transition_time: time(at),
            observed_generation: None,
        }
    }

    #[test]
    fn agent_reads_the_stop_of_its_own_attempt_only() {
        let mut wi = running(); // claimed at t(0)
        assert_eq!(requested_stop(&wi), None);
        let steps = decide(&wi, &Supervision::default(), &[stalled()], t(300));
        let stop = &steps[1];
        wi.status.as_mut().unwrap().conditions =
            vec![cancel_condition(300, &stop.reason, &stop.message)];
        assert_eq!(
            requested_stop(&wi),
            Some(StopRequest {
                end: StopEnd::Retry,
                cause: "Stalled".into()
            })
        );
        wi.status
            .as_mut()
            .unwrap()
            .claim
            .as_mut()
            .unwrap()
            .acquired_at = Some(time(301));
        assert_eq!(
            requested_stop(&wi),
            None,
            "left over from the previous attempt"
        );
        wi.status.as_mut().unwrap().conditions[0].last_transition_time = time(301);
        wi.status.as_mut().unwrap().conditions[0].status = "False".into();
        assert_eq!(requested_stop(&wi), None, "withdrawn");
    }

    #[test]
    fn monitor_names_round_trip() {
        for m in [
            Monitor::Health,
            Monitor::Budget,
            Monitor::Progress,
            Monitor::Violation,
            Monitor::User,
        ] {
            assert_eq!(Monitor::parse(m.as_str()), m);
        }
    }
}
