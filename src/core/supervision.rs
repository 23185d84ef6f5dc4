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
    BudgetAction, Counters, Intervention, MAX_STATUS_COUNTERS, OutcomeKind, Phase, StallAction,
    Supervision, Timeouts, ViolationAction, WorkItem, find_condition,
};
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

/// Condition types the supervisor sets.
pub mod conditions {
    pub const STALLED: &str = "Stalled";
    pub const BUDGET_WARNING: &str = "BudgetWarning";
    pub const OVER_BUDGET: &str = "OverBudget";
    pub const VIOLATION: &str = "Violation";
    pub const ESCALATED: &str = "Escalated";
    pub const CANCEL_REQUESTED: &str = "CancelRequested";
    /// Written by the agent runtime (not the supervisor): the latest violation the
    /// work command reported in this attempt. `reason` is the rule made a valid
    /// condition reason; `message` is "rule[: detail][ (N violations reported)]".
    pub const VIOLATION_REPORTED: &str = "ViolationReported";

    /// Supervision conditions that describe one attempt; the supervisor sets them False
    /// when a new attempt starts, so a retried item does not carry the last attempt's
    /// warnings. `Escalated` is kept: it tells where the item has been.
    pub const PER_ATTEMPT: [&str; 5] = [
        STALLED,
        BUDGET_WARNING,
        OVER_BUDGET,
        VIOLATION,
        CANCEL_REQUESTED,
    ];
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

/// Tracks one thing an agent renews, as the supervisor sees it on its own clock: a
/// Lease (`marker`: its resourceVersion) or an item's progress ([`progress_marker`]).
/// What the agent writes about time is never compared with the supervisor's clock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangeObserver {
    marker: String,
    changed_at: Timestamp,
}

impl ChangeObserver {
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

/// What the supervisor has seen of one Running item, on its own clock: when its current
/// attempt (epoch) was first seen, and when its progress last changed. The monitors time
/// stalls and attempt timeouts from these, never from `claim.acquiredAt` or
/// `progress.updatedAt`, which are the agent's clock: an agent minutes behind would have
/// every attempt timed out at once, one minutes ahead would run past its limit.
///
/// After the supervisor starts (not after a failover: standbys watch too) an attempt
/// counts from when it was first seen, so a limit can only act later, never earlier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ItemClock {
    attempt: ChangeObserver,
    progress: ChangeObserver,
}

impl ItemClock {
    pub fn new(item: &WorkItem, now: Timestamp) -> Self {
        Self {
            attempt: ChangeObserver::new(item.epoch().to_string(), now),
            progress: ChangeObserver::new(progress_marker(item), now),
        }
    }

    pub fn observe(&mut self, item: &WorkItem, now: Timestamp) {
        self.attempt.observe(&item.epoch().to_string(), now);
        self.progress.observe(&progress_marker(item), now);
    }

    /// When the current attempt was first seen Running.
    pub fn attempt_seen_at(&self) -> Timestamp {
        self.attempt.last_change_seen_at()
    }

    /// When progress last changed (or the attempt started).
    pub fn progress_seen_at(&self) -> Timestamp {
        self.progress.last_change_seen_at()
    }
}

// --- Monitors' pure parts ----------------------------------------------------------

/// What changes whenever the holder reports progress (percent, checkpoint or usage
/// change: each write sets `progress.updatedAt`) or a new attempt starts (the epoch).
/// Its value is compared only with itself: the agent's clock never meets ours.
pub fn progress_marker(item: &WorkItem) -> String {
    let updated = item
        .status
        .as_ref()
        .and_then(|s| s.progress.as_ref())
        .and_then(|p| p.updated_at.as_ref())
        .map(|t| t.0.to_string())
        .unwrap_or_default();
    format!("{}|{updated}", item.epoch())
}

/// When the stall began, if the item has stalled: no progress for `stall_seconds`,
/// counted from the later of the last progress and the attempt's start, so progress of
/// an earlier attempt does not count. Both are when the supervisor saw them (a
/// [`ChangeObserver`] of [`progress_marker`]), never the agent's timestamps: an agent
/// whose clock runs behind would otherwise look stalled on every attempt. None while
/// unknown or not stalled.
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

/// A violation the work command reported in the current attempt, read back from the
/// agent's `ViolationReported` condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportedViolation {
    /// The rule as the work command named it.
    pub rule: String,
    /// The rule as a condition reason (what the agent wrote as `reason`).
    pub reason: String,
    pub detail: Option<String>,
    /// Violations reported in this attempt so far.
    pub count: u32,
    /// When the latest one was written (the agent's clock).
    pub at: Timestamp,
}

/// The violation reported in the item's current attempt, if any: a True
/// `ViolationReported` condition written at or after the attempt started.
pub fn reported_violation(item: &WorkItem) -> Option<ReportedViolation> {
    let status = item.status.as_ref()?;
    let c = find_condition(&status.conditions, conditions::VIOLATION_REPORTED)
        .filter(|c| c.status == "True")?;
    let at = c.last_transition_time.0;
    if attempt_started_at(item).is_some_and(|s| at < s) {
        return None;
    }
    // Whole-second times: a report of the last attempt may carry the second the new
    // one started in. It is the last attempt's if that attempt ended (or was acted on
    // for a violation) at or after the report.
    let earlier_ended = status
        .attempts
        .iter()
        .any(|r| r.attempt < status.attempt && r.finished_at.as_ref().is_some_and(|f| f.0 >= at));
    let earlier_acted = status.interventions.iter().any(|i| {
        i.monitor == Monitor::Violation.as_str()
            && i.at.0 >= at
            && i.message
                .as_deref()
                .and_then(attempt_tag)
                .is_some_and(|n| n < status.attempt)
    });
    if earlier_ended || earlier_acted {
        return None;
    }
    let mut text = c.message.as_str();
    let mut count = 1;
    if let Some(head) = text.strip_suffix(" violations reported)")
        && let Some((rest, n)) = head.rsplit_once(" (")
        && let Ok(n) = n.parse::<u32>()
    {
        text = rest;
        count = n.max(1);
    }
    let (rule, detail) = match text.split_once(": ") {
        Some((r, d)) => (r, Some(d.to_string())),
        None => (text, None),
    };
    let rule = if rule.is_empty() { &c.reason } else { rule };
    Some(ReportedViolation {
        rule: rule.to_string(),
        reason: c.reason.clone(),
        detail,
        count,
        at: c.last_transition_time.0,
    })
}

/// The `Violation` signal for a reported violation. The rule is named as the policy
/// names it: `violationRules` may use the work command's spelling or the condition
/// reason's.
pub fn violation_signal(v: &ReportedViolation, policy: &Supervision) -> Signal {
    let rule = if !policy.violation_rules.contains_key(&v.rule)
        && policy.violation_rules.contains_key(&v.reason)
    {
        v.reason.clone()
    } else {
        v.rule.clone()
    };
    Signal::Violation {
        rule,
        detail: v.detail.clone().unwrap_or_else(|| "reported".into()),
    }
}

/// When the current attempt ran out of time (`timeouts.attemptSeconds` after the
/// supervisor first saw it, [`ItemClock::attempt_seen_at`]), if it has.
pub fn attempt_timed_out(
    attempt_seen_at: Option<Timestamp>,
    timeouts: &Timeouts,
    now: Timestamp,
) -> Option<Timestamp> {
    let limit = timeouts.attempt_seconds.filter(|s| *s > 0)?;
    let at = add(attempt_seen_at?, SignedDuration::from_secs(limit));
    (now >= at).then_some(at)
}

/// When the item's deadline (its own, else the queue's default) passed, if it has.
pub fn deadline_passed_at(
    item: &WorkItem,
    timeouts: &Timeouts,
    now: Timestamp,
) -> Option<Timestamp> {
    super::retry::effective_deadline(item, timeouts).filter(|d| now >= *d)
}

/// Per-attempt supervision conditions still True from an earlier attempt (set before
/// the current one started): the supervisor sets them False.
pub fn leftover_conditions(item: &WorkItem) -> Vec<&'static str> {
    let Some(start) = attempt_started_at(item) else {
        return vec![];
    };
    let Some(status) = item.status.as_ref() else {
        return vec![];
    };
    conditions::PER_ATTEMPT
        .into_iter()
        .filter(|t| {
            find_condition(&status.conditions, t).is_some_and(|c| {
                c.status == "True"
                    && match attempt_tag(&c.message) {
                        Some(n) => n != status.attempt,
                        None => c.last_transition_time.0 < start,
                    }
            })
        })
        .collect()
}

// --- Agent pods ----------------------------------------------------------------------

/// A pod that has not started for this long is unhealthy (as the pool controller's
/// `PodsHealthy` condition sees it).
pub const PENDING_TOO_LONG: SignedDuration = SignedDuration::from_secs(180);
/// A container that restarted this often and is not ready is crash looping, whether or
/// not the node reports `CrashLoopBackOff`.
pub const CRASH_RESTARTS: i32 = 3;

/// An agent pod's health, the `health` label of `triad_agents`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AgentHealth {
    Healthy,
    /// Pending, not yet for long.
    Starting,
    /// Its Lease was observed stale (set by the health monitor, not [`pod_health`]).
    Stale,
    CrashLooping,
    OomKilled,
    ImagePullFailing,
    Unschedulable,
    PendingTooLong,
    /// The agent container ended and is not restarted.
    Exited,
    Terminating,
}

impl AgentHealth {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentHealth::Healthy => "healthy",
            AgentHealth::Starting => "starting",
            AgentHealth::Stale => "stale",
            AgentHealth::CrashLooping => "crashlooping",
            AgentHealth::OomKilled => "oomkilled",
            AgentHealth::ImagePullFailing => "imagepullfailing",
            AgentHealth::Unschedulable => "unschedulable",
            AgentHealth::PendingTooLong => "pendingtoolong",
            AgentHealth::Exited => "exited",
            AgentHealth::Terminating => "terminating",
        }
    }

    /// Worth an Event on the pod and its pool.
    pub fn is_unhealthy(self) -> bool {
        !matches!(
            self,
            AgentHealth::Healthy | AgentHealth::Starting | AgentHealth::Terminating
        )
    }
}

/// Which claims naming a pod belong to an agent process that is gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Orphans {
    None,
    /// The agent is not running at all (never started, crash-looping, exited).
    All,
    /// The agent container restarted at this time: claims acquired before it were made
    /// by the process that died (the new one takes its Lease over, so the lease never
    /// goes stale and only this tells).
    ClaimedBefore(Timestamp),
}

/// What the health monitor concludes about one agent pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodHealth {
    pub health: AgentHealth,
    /// CamelCase: the intervention's and the outcome's reason.
    pub reason: String,
    pub detail: String,
    pub orphans: Orphans,
}

impl PodHealth {
    /// Whether the claim made at `acquired_at` on this pod is held by no live agent.
    pub fn orphans_claim(&self, acquired_at: Option<Timestamp>) -> bool {
        match self.orphans {
            Orphans::None => false,
            Orphans::All => true,
            Orphans::ClaimedBefore(t) => acquired_at.is_some_and(|a| a < t),
        }
    }

    /// Whether the pod should go (the pool controller replaces it): not when it runs
    /// again after a restart, only the claims of the dead process are void then.
    pub fn delete_pod(&self) -> bool {
        self.health.is_unhealthy()
    }
}

fn waiting_problem(reason: &str) -> Option<AgentHealth> {
    Some(match reason {
        "CrashLoopBackOff" | "RunContainerError" => AgentHealth::CrashLooping,
        "ImagePullBackOff" | "ErrImagePull" | "InvalidImageName" | "ErrImageNeverPull" => {
            AgentHealth::ImagePullFailing
        }
        "CreateContainerError" | "CreateContainerConfigError" => AgentHealth::CrashLooping,
        _ => return None,
    })
}

/// Whether `s` may be a condition or intervention reason.
fn camel(s: &str, fallback: &str) -> String {
    let ok = s.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && s.chars().all(|c| c.is_ascii_alphanumeric());
    if ok { s.into() } else { fallback.into() }
}

/// The health of an agent pod from its status: the agent container is the first one.
pub fn pod_health(pod: &Pod, now: Timestamp) -> PodHealth {
    let verdict = |health, reason: &str, detail: String, orphans| PodHealth {
        health,
        reason: reason.into(),
        detail,
        orphans,
    };
    if pod.metadata.deletion_timestamp.is_some() {
        return verdict(
            AgentHealth::Terminating,
            "Terminating",
            "being deleted".into(),
            Orphans::None,
        );
    }
    let status = pod.status.clone().unwrap_or_default();
    let agent_name = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .map(|c| c.name.clone());
    let statuses = status.container_statuses.clone().unwrap_or_default();
    let agent: Option<&ContainerStatus> = statuses
        .iter()
        .find(|c| Some(&c.name) == agent_name.as_ref())
        .or(statuses.first());
    let phase = status.phase.as_deref().unwrap_or("Pending");

    if let Some(c) = agent {
        let state = c.state.clone().unwrap_or_default();
        let last = c.last_state.as_ref().and_then(|s| s.terminated.as_ref());
        if let Some(w) = &state.waiting
            && let Some(reason) = w.reason.as_deref()
            && let Some(health) = waiting_problem(reason)
        {
            let why = match (last.and_then(|t| t.reason.as_deref()), &w.message) {
                (Some("OOMKilled"), _) => "OOMKilled: out of memory, restarted".to_string(),
                (_, Some(m)) if !m.is_empty() => format!("{reason}: {m}"),
                _ => format!("{reason} after {} restarts", c.restart_count),
            };
            let health = if last.and_then(|t| t.reason.as_deref()) == Some("OOMKilled") {
                AgentHealth::OomKilled
            } else {
                health
            };
            let reason = if health == AgentHealth::OomKilled {
                "OOMKilled".to_string()
            } else {
                camel(reason, "AgentUnhealthy")
            };
            return verdict(health, &reason, why, Orphans::All);
        }
        if let Some(t) = &state.terminated {
            let oom = t.reason.as_deref() == Some("OOMKilled");
            return verdict(
                if oom {
                    AgentHealth::OomKilled
                } else {
                    AgentHealth::Exited
                },
                if oom { "OOMKilled" } else { "AgentExited" },
                format!(
                    "agent container exited with code {}{}",
                    t.exit_code,
                    t.reason
                        .as_deref()
                        .map(|r| format!(" ({r})"))
                        .unwrap_or_default()
                ),
                Orphans::All,
            );
        }
        if let Some(r) = &state.running {
            let restarted_at = (c.restart_count > 0)
                .then(|| {
                    r.started_at
                        .as_ref()
                        .map(|t| t.0)
                        .or_else(|| last.and_then(|t| t.finished_at.as_ref()).map(|t| t.0))
                })
                .flatten();
            let orphans = restarted_at.map_or(Orphans::None, Orphans::ClaimedBefore);
            if c.restart_count >= CRASH_RESTARTS && !c.ready {
                return verdict(
                    AgentHealth::CrashLooping,
                    "CrashLoopBackOff",
                    format!("restarted {} times and not ready", c.restart_count),
                    orphans,
                );
            }
            if let Some(t) = last
                && t.reason.as_deref() == Some("OOMKilled")
                && !c.ready
            {
                return verdict(
                    AgentHealth::OomKilled,
                    "OOMKilled",
                    format!("out of memory (exit code {}), restarted", t.exit_code),
                    orphans,
                );
            }
            return verdict(
                AgentHealth::Healthy,
                "AgentRestarted",
                format!("agent container restarted {} times", c.restart_count),
                orphans,
            );
        }
    }
    if phase == "Pending" {
        let unschedulable = status.conditions.iter().flatten().find(|c| {
            c.type_ == "PodScheduled"
                && c.status == "False"
                && c.reason.as_deref() == Some("Unschedulable")
        });
        if let Some(c) = unschedulable {
            return verdict(
                AgentHealth::Unschedulable,
                "Unschedulable",
                c.message.clone().unwrap_or_else(|| "no node fits".into()),
                Orphans::All,
            );
        }
        let age = pod
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| now.duration_since(t.0));
        if let Some(age) = age.filter(|a| *a >= PENDING_TOO_LONG) {
            return verdict(
                AgentHealth::PendingTooLong,
                "PendingTooLong",
                format!("pending for {}s", age.as_secs()),
                Orphans::All,
            );
        }
        return verdict(
            AgentHealth::Starting,
            "Starting",
            "pending".into(),
            Orphans::None,
        );
    }
    if matches!(phase, "Succeeded" | "Failed") {
        return verdict(
            AgentHealth::Exited,
            "AgentExited",
            format!("pod {phase}"),
            Orphans::All,
        );
    }
    verdict(
        AgentHealth::Healthy,
        "Healthy",
        String::new(),
        Orphans::None,
    )
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
    /// The agent process that made the claim is gone but its pod runs again (the
    /// container restarted): fence the claim out, keep the pod.
    HolderGone {
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

/// The (monitor, action) pairs [`decide`] can produce, as the metric labels say them.
/// The supervisor's intervention counter starts each at 0: `increase()` in an alert or
/// dashboard sees an intervention only as a step between two scrapes, so a series born
/// at 1 with the first intervention would go unseen. A pair missing here only costs that
/// first step.
pub const INTERVENTION_KINDS: &[(Monitor, &[&str])] = &[
    (Monitor::Health, &["FenceOut", "DeletePod"]),
    (
        Monitor::Progress,
        &[
            "Warn",
            "CancelRequested",
            "Escalate",
            "FenceOut",
            "DeletePod",
        ],
    ),
    (
        Monitor::Budget,
        &[
            "Warn",
            "Extend",
            "CancelRequested",
            "Escalate",
            "FenceOut",
            "DeletePod",
        ],
    ),
    (
        Monitor::Violation,
        &[
            "Warn",
            "CancelRequested",
            "Escalate",
            "FenceOut",
            "DeletePod",
        ],
    ),
    (Monitor::User, &["Cancel", "FenceOut", "DeletePod"]),
];

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

/// `message` tagged with the attempt it is about: API times have whole seconds only,
/// so an attempt claimed in the same second as the last one's intervention cannot be
/// told apart by time alone.
pub fn tagged(message: &str, attempt: i32) -> String {
    format!("{message} [attempt {attempt}]")
}

/// The attempt a [`tagged`] message is about.
pub fn attempt_tag(message: &str) -> Option<i32> {
    let head = message.strip_suffix(']')?;
    let (_, n) = head.rsplit_once(" [attempt ")?;
    n.parse().ok()
}

/// Whether a record (intervention, condition) written at `at` with `message` is about
/// the item's current attempt: by its attempt tag, else by time (at or after the
/// attempt started).
pub fn of_current_attempt(item: &WorkItem, message: &str, at: Timestamp) -> bool {
    match attempt_tag(message) {
        Some(n) => item.status.as_ref().is_some_and(|s| s.attempt == n),
        None => attempt_started_at(item).is_none_or(|s| at >= s),
    }
}

/// Interventions recorded for the item's current attempt.
pub fn current_attempt_interventions(item: &WorkItem) -> Vec<&Intervention> {
    let Some(status) = item.status.as_ref() else {
        return vec![];
    };
    status
        .interventions
        .iter()
        .filter(|i| of_current_attempt(item, i.message.as_deref().unwrap_or(""), i.at.0))
        .collect()
}

/// The stop asked of the current attempt, as the holding agent reads it: a True
/// `CancelRequested` condition set at or after the attempt started (one left over
/// from an earlier attempt does not stop this one).
pub fn requested_stop(item: &WorkItem) -> Option<StopRequest> {
    let status = item.status.as_ref()?;
    let c = find_condition(&status.conditions, conditions::CANCEL_REQUESTED)
        .filter(|c| c.status == "True")?;
    if !of_current_attempt(item, &c.message, c.last_transition_time.0) {
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
            Signal::HolderGone { reason } => {
                let mut steps = fence(
                    Monitor::Health,
                    reason,
                    OutcomeKind::LeaseExpired,
                    reason.clone(),
                    "the agent process that claimed the item is gone (its container restarted)",
                );
                steps.retain(|s| s.action != Action::DeletePod);
                return steps;
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
    // `status.budgetExtension` holds at most MAX_STATUS_COUNTERS counters: a budget
    // that changed its counters often enough to need more is cut, not extended, rather
    // than the whole status write being refused.
    let mut extended_counters = extension.len();
    let mut extensions = item.status.as_ref().map_or(0, |s| {
        s.interventions
            .iter()
            .filter(|i| i.action == "Extend")
            .count()
    });
    let warn_fraction = f64::from(policy.budget_warning_percent.clamp(1, 100)) / 100.0;

    for s in signals {
        match s {
            Signal::LeaseStale { .. } | Signal::PodUnhealthy { .. } | Signal::HolderGone { .. } => {
            }
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
                            && amount > 0.0
                            && (extension.contains_key(counter)
                                || extended_counters < MAX_STATUS_COUNTERS) =>
                    {
                        extensions += 1;
                        if !extension.contains_key(counter) {
                            extended_counters += 1;
                        }
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
    fn every_action_name_is_a_known_intervention_kind() {
        let known: Vec<&str> = INTERVENTION_KINDS
            .iter()
            .flat_map(|(_, actions)| actions.iter().copied())
            .collect();
        let stop = |end| {
            Action::RequestCancel(StopRequest {
                end,
                cause: "Stalled".into(),
            })
        };
        for action in [
            Action::Warn,
            stop(StopEnd::Retry),
            stop(StopEnd::Fail),
            stop(StopEnd::Escalate),
            stop(StopEnd::Cancel),
            Action::FenceOut {
                outcome: OutcomeKind::LeaseExpired,
                reason: "LeaseExpired".into(),
            },
            Action::DeletePod,
            Action::Extend {
                counter: "tokens".into(),
                amount: 1.0,
            },
        ] {
            assert!(known.contains(&action.name()), "{}", action.name());
        }
    }

    #[test]
    fn lease_staleness_is_measured_on_our_clock() {
        let d = 15 * SEC;
        assert!(!lease_is_stale(t(0), d, t(14)));
        assert!(lease_is_stale(t(0), d, t(15)));
        let mut obs = ChangeObserver::new("rv1", t(0));
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
        let obs = ChangeObserver::new("renewed-long-ago", t(100));
        assert!(!obs.is_stale(15 * SEC, t(110)));
    }

    #[test]
    fn no_reclaim_within_a_lease_duration_of_our_start() {
        assert!(!may_reclaim(t(0), 15 * SEC, t(14)));
        assert!(may_reclaim(t(0), 15 * SEC, t(15)));
    }

    #[test]
    fn the_progress_marker_changes_with_each_report_and_each_attempt() {
        let mut wi = running();
        let first = progress_marker(&wi);
        let status = wi.status.get_or_insert_with(Default::default);
        status.progress = Some(crate::api::Progress {
            updated_at: Some(Time(t(5))),
            ..Default::default()
        });
        let reported = progress_marker(&wi);
        assert_ne!(first, reported);
        // The same report read again is no change, whatever our clock says.
        assert_eq!(reported, progress_marker(&wi.clone()));
        if let Some(c) = wi.status.as_mut().and_then(|s| s.claim.as_mut()) {
            c.epoch += 1;
        }
        assert_ne!(reported, progress_marker(&wi), "a new attempt is a change");
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
    fn extend_of_a_new_counter_cuts_when_the_extension_map_is_full() {
        let policy = Supervision {
            on_budget_exceeded: BudgetAction::Extend,
            extend: ExtendPolicy {
                max_extensions: 3,
                percent: 50,
            },
            ..Default::default()
        };
        let mut wi = running();
        wi.status.as_mut().unwrap().budget_extension = (0..MAX_STATUS_COUNTERS)
            .map(|i| (format!("c{i}"), 1.0))
            .collect();
        // A counter already extended may be extended again…
        let old = Signal::BudgetUsage {
            counter: "c0".into(),
            used: 11.0,
            limit: 10.0,
        };
        assert_eq!(actions(&decide(&wi, &policy, &[old], t(1))), ["Extend"]);
        // …but a new one would take the map past the schema's maxProperties: cut.
        let steps = decide(&wi, &policy, &[budget(5.0, 1.0)], t(1));
        assert_eq!(actions(&steps), ["CancelRequested"]);
        // With room, the same signal extends.
        wi.status.as_mut().unwrap().budget_extension.remove("c0");
        let steps = decide(&wi, &policy, &[budget(5.0, 1.0)], t(1));
        assert_eq!(actions(&steps), ["Extend"]);
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

    fn with_condition(
        mut wi: WorkItem,
        type_: &str,
        reason: &str,
        message: &str,
        at: i64,
    ) -> WorkItem {
        wi.status.as_mut().unwrap().conditions.push(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
                type_: type_.into(),
                status: "True".into(),
                reason: reason.into(),
                message: message.into(),
                last_transition_time: time(at),
                observed_generation: None,
            },
        );
        wi
    }

    #[test]
    fn reported_violation_reads_the_agents_condition() {
        let wi = with_condition(
            running(),
            conditions::VIOLATION_REPORTED,
            "no_network",
            "no-network: curl example.com (3 violations reported)",
            5,
        );
        let v = reported_violation(&wi).expect("a violation");
        assert_eq!(v.rule, "no-network");
        assert_eq!(v.reason, "no_network");
        assert_eq!(v.detail.as_deref(), Some("curl example.com"));
        assert_eq!(v.count, 3);
        assert_eq!(v.at, t(5));

        let bare = with_condition(running(), conditions::VIOLATION_REPORTED, "pii", "pii", 1);
        let v = reported_violation(&bare).unwrap();
        assert_eq!((v.rule.as_str(), v.detail, v.count), ("pii", None, 1));
        let counted = with_condition(
            running(),
            conditions::VIOLATION_REPORTED,
            "pii",
            "pii (2 violations reported)",
            1,
        );
        assert_eq!(reported_violation(&counted).unwrap().count, 2);
    }

    #[test]
    fn a_violation_of_an_earlier_attempt_is_not_reported_again() {
        let mut wi = with_condition(
            running(),
            conditions::VIOLATION_REPORTED,
            "pii",
            "pii: x",
            5,
        );
        wi.status
            .as_mut()
            .unwrap()
            .claim
            .as_mut()
            .unwrap()
            .acquired_at = Some(time(10));
        assert_eq!(reported_violation(&wi), None);
        assert_eq!(reported_violation(&running()), None);

        // Same second as the new attempt's claim, but the last attempt ended then.
        let mut wi = with_condition(
            running(),
            conditions::VIOLATION_REPORTED,
            "pii",
            "pii: x",
            10,
        );
        let s = wi.status.as_mut().unwrap();
        s.attempt = 2;
        s.claim.as_mut().unwrap().acquired_at = Some(time(10));
        assert!(reported_violation(&wi).is_some(), "ambiguous by time alone");
        s_push_attempt(&mut wi, 1, 10);
        assert_eq!(reported_violation(&wi), None);
    }

    fn s_push_attempt(wi: &mut WorkItem, attempt: i32, finished: i64) {
        wi.status
            .as_mut()
            .unwrap()
            .attempts
            .push(crate::api::AttemptRecord {
                attempt,
                finished_at: Some(time(finished)),
                ..Default::default()
            });
    }

    #[test]
    fn violation_signal_names_the_rule_as_the_policy_does() {
        let v = ReportedViolation {
            rule: "no-network".into(),
            reason: "no_network".into(),
            detail: None,
            count: 1,
            at: t(0),
        };
        let mut policy = Supervision::default();
        assert_eq!(
            violation_signal(&v, &policy),
            Signal::Violation {
                rule: "no-network".into(),
                detail: "reported".into()
            }
        );
        policy
            .violation_rules
            .insert("no_network".into(), ViolationAction::Warn);
        let sig = violation_signal(&v, &policy);
        assert_eq!(
            actions(&decide(&running(), &policy, &[sig], t(1))),
            ["Warn"]
        );
        policy
            .violation_rules
            .insert("no-network".into(), ViolationAction::Cancel);
        let sig = violation_signal(&v, &policy);
        assert_eq!(
            actions(&decide(&running(), &policy, &[sig], t(1))),
            ["CancelRequested"]
        );
    }

    #[test]
    fn a_reported_violation_escalates_by_default() {
        let wi = with_condition(
            running(),
            conditions::VIOLATION_REPORTED,
            "pii",
            "pii: leak",
            5,
        );
        let policy = Supervision::default();
        let sig = violation_signal(&reported_violation(&wi).unwrap(), &policy);
        let steps = decide(&wi, &policy, &[sig], t(6));
        assert_eq!(actions(&steps), ["Escalate"]);
        assert_eq!(steps[0].monitor, Monitor::Violation);
        assert_eq!(steps[0].condition, Some(conditions::ESCALATED));
        assert_eq!(steps[0].message, "escalate: rule pii: leak");
    }

    #[test]
    fn the_item_clock_times_attempts_and_progress_by_what_the_supervisor_saw() {
        let mut wi = running();
        // The agent's clock is an hour behind: its stamps say the attempt is old.
        if let Some(c) = wi.status.as_mut().and_then(|s| s.claim.as_mut()) {
            c.acquired_at = Some(time(-3600));
        }
        let mut clock = ItemClock::new(&wi, t(100));
        assert_eq!(clock.attempt_seen_at(), t(100));
        let tm = Timeouts {
            attempt_seconds: Some(60),
            deadline_seconds: None,
        };
        assert_eq!(
            attempt_timed_out(Some(clock.attempt_seen_at()), &tm, t(130)),
            None
        );
        // Progress moves the progress clock, not the attempt's.
        wi.status.as_mut().unwrap().progress = Some(crate::api::Progress {
            updated_at: Some(time(-3590)),
            ..Default::default()
        });
        clock.observe(&wi, t(120));
        assert_eq!(
            (clock.attempt_seen_at(), clock.progress_seen_at()),
            (t(100), t(120))
        );
        assert_eq!(
            attempt_timed_out(Some(clock.attempt_seen_at()), &tm, t(160)),
            Some(t(160))
        );
        // A new attempt (epoch) restarts both.
        if let Some(c) = wi.status.as_mut().and_then(|s| s.claim.as_mut()) {
            c.epoch += 1;
        }
        clock.observe(&wi, t(200));
        assert_eq!(
            (clock.attempt_seen_at(), clock.progress_seen_at()),
            (t(200), t(200))
        );
    }

    #[test]
    fn attempt_timeout_and_deadline_are_dated() {
        let seen = Some(t(0)); // the supervisor saw the attempt at t(0)
        let none = Timeouts::default();
        assert_eq!(attempt_timed_out(seen, &none, t(1000)), None);
        let tm = Timeouts {
            attempt_seconds: Some(60),
            deadline_seconds: None,
        };
        assert_eq!(attempt_timed_out(None, &tm, t(1000)), None, "never seen");
        assert_eq!(attempt_timed_out(seen, &tm, t(59)), None);
        assert_eq!(attempt_timed_out(seen, &tm, t(60)), Some(t(60)));
        let mut wi = running();
        wi.spec.deadline = Some(time(30));
        assert_eq!(deadline_passed_at(&wi, &none, t(29)), None);
        assert_eq!(deadline_passed_at(&wi, &none, t(31)), Some(t(30)));
    }

    #[test]
    fn leftover_conditions_are_those_of_earlier_attempts() {
        let mut wi = with_condition(running(), conditions::STALLED, "Stalled", "x", 5);
        wi = with_condition(wi, conditions::BUDGET_WARNING, "BudgetWarning", "x", 5);
        wi = with_condition(wi, conditions::ESCALATED, "Violation", "x", 5);
        assert!(leftover_conditions(&wi).is_empty(), "same attempt");
        wi.status
            .as_mut()
            .unwrap()
            .claim
            .as_mut()
            .unwrap()
            .acquired_at = Some(time(10));
        assert_eq!(
            leftover_conditions(&wi),
            [conditions::STALLED, conditions::BUDGET_WARNING],
            "Escalated is kept"
        );
        wi.status.as_mut().unwrap().conditions[0].status = "False".into();
        assert_eq!(leftover_conditions(&wi), [conditions::BUDGET_WARNING]);
    }

    #[test]
    fn a_gone_holder_is_fenced_but_its_pod_kept() {
        let steps = decide(
            &running(),
            &Supervision::default(),
            &[Signal::HolderGone {
                reason: "AgentRestarted".into(),
            }],
            t(1),
        );
        assert_eq!(actions(&steps), ["FenceOut"]);
        assert_eq!(
            steps[0].action,
            Action::FenceOut {
                outcome: OutcomeKind::LeaseExpired,
                reason: "AgentRestarted".into()
            }
        );
    }

    fn pod(v: serde_json::Value) -> Pod {
        let mut base = serde_json::json!({
            "metadata": {"name": "p", "creationTimestamp": "2030-01-01T00:00:00Z"},
            "spec": {"containers": [{"name": "agent", "image": "triad"}]},
        });
        base["status"] = v;
        serde_json::from_value(base).unwrap()
    }

    fn container(
        state: serde_json::Value,
        last: serde_json::Value,
        restarts: i32,
        ready: bool,
    ) -> serde_json::Value {
        serde_json::json!({"phase": "Running", "containerStatuses": [{
            "name": "agent", "image": "triad", "imageID": "", "ready": ready,
            "restartCount": restarts, "state": state, "lastState": last}]})
    }

    #[test]
    fn pod_health_classifies_agent_pods() {
        let h = |p: &Pod, s: i64| pod_health(p, t(s));
        let crash = pod(container(
            serde_json::json!({"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}}),
            serde_json::json!({"terminated": {"exitCode": 1, "finishedAt": "2030-01-01T00:00:50Z"}}),
            4,
            false,
        ));
        let v = h(&crash, 60);
        assert_eq!(
            (v.health, v.reason.as_str()),
            (AgentHealth::CrashLooping, "CrashLoopBackOff")
        );
        assert!(v.orphans_claim(Some(t(59))) && v.delete_pod());

        let oom = pod(container(
            serde_json::json!({"waiting": {"reason": "CrashLoopBackOff"}}),
            serde_json::json!({"terminated": {"exitCode": 137, "reason": "OOMKilled"}}),
            1,
            false,
        ));
        assert_eq!(h(&oom, 60).health, AgentHealth::OomKilled);
        assert_eq!(h(&oom, 60).reason, "OOMKilled");

        let pull = pod(container(
            serde_json::json!({"waiting": {"reason": "ImagePullBackOff"}}),
            serde_json::json!({}),
            0,
            false,
        ));
        assert_eq!(h(&pull, 60).health, AgentHealth::ImagePullFailing);

        let unsched = pod(serde_json::json!({"phase": "Pending", "conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/1 nodes"}]}));
        let v = h(&unsched, 10);
        assert_eq!(
            (v.health, v.orphans),
            (AgentHealth::Unschedulable, Orphans::All)
        );

        let pending = pod(serde_json::json!({"phase": "Pending"}));
        assert_eq!(h(&pending, 10).health, AgentHealth::Starting);
        assert!(!h(&pending, 10).orphans_claim(Some(t(1))));
        assert_eq!(h(&pending, 180).health, AgentHealth::PendingTooLong);

        let ok = pod(container(
            serde_json::json!({"running": {"startedAt": "2030-01-01T00:00:05Z"}}),
            serde_json::json!({}),
            0,
            true,
        ));
        let v = h(&ok, 60);
        assert_eq!((v.health, v.orphans), (AgentHealth::Healthy, Orphans::None));
        assert!(!v.health.is_unhealthy());
    }

    #[test]
    fn a_restarted_agent_orphans_only_claims_made_before_the_restart() {
        let restarted = pod(container(
            serde_json::json!({"running": {"startedAt": "2030-01-01T00:01:40Z"}}),
            serde_json::json!({"terminated": {"exitCode": 1, "finishedAt": "2030-01-01T00:01:39Z"}}),
            1,
            true,
        ));
        let v = pod_health(&restarted, t(200));
        assert_eq!(v.health, AgentHealth::Healthy);
        assert_eq!(v.orphans, Orphans::ClaimedBefore(t(100)));
        assert!(
            v.orphans_claim(Some(t(50))),
            "held by the process that died"
        );
        assert!(!v.orphans_claim(Some(t(150))), "claimed by the new process");
        assert!(!v.delete_pod());

        let looping = pod(container(
            serde_json::json!({"running": {"startedAt": "2030-01-01T00:01:40Z"}}),
            serde_json::json!({"terminated": {"exitCode": 1}}),
            CRASH_RESTARTS,
            false,
        ));
        let v = pod_health(&looping, t(200));
        assert_eq!(v.health, AgentHealth::CrashLooping);
        assert!(v.delete_pod());
    }

    #[test]
    fn exited_and_terminating_agents() {
        let exited = pod(container(
            serde_json::json!({"terminated": {"exitCode": 2}}),
            serde_json::json!({}),
            0,
            false,
        ));
        let v = pod_health(&exited, t(1));
        assert_eq!((v.health, v.orphans), (AgentHealth::Exited, Orphans::All));
        let mut gone = exited.clone();
        gone.metadata.deletion_timestamp = Some(time(0));
        assert_eq!(pod_health(&gone, t(1)).health, AgentHealth::Terminating);
        assert_eq!(pod_health(&gone, t(1)).orphans, Orphans::None);
    }

    #[test]
    fn attempt_tags_tell_attempts_apart_within_one_second() {
        assert_eq!(attempt_tag(&tagged("retry: x", 3)), Some(3));
        assert_eq!(attempt_tag("retry: x"), None);
        let policy = Supervision::default();
        let mut wi = running(); // attempt 1, claimed at t(0)
        let steps = decide(&wi, &policy, &[stalled()], t(300));
        let s = wi.status.as_mut().unwrap();
        for step in &steps {
            let mut rec = step.intervention(t(300));
            rec.message = rec.message.map(|m| tagged(&m, 1));
            s.interventions.push(rec);
        }
        s.conditions = vec![cancel_condition(
            300,
            "Stalled",
            &tagged(&steps[1].message, 1),
        )];
        assert!(requested_stop(&wi).is_some());
        assert!(
            decide(&wi, &policy, &[stalled()], t(305)).is_empty(),
            "pending"
        );
        // Attempt 2 claimed in the very second of the stop: not its stop.
        let s = wi.status.as_mut().unwrap();
        s.attempt = 2;
        s.claim.as_mut().unwrap().acquired_at = Some(time(300));
        assert_eq!(requested_stop(&wi), None);
        assert!(current_attempt_interventions(&wi).is_empty());
        assert_eq!(leftover_conditions(&wi), [conditions::CANCEL_REQUESTED]);
        assert!(
            decide(&wi, &policy, &[], t(320)).is_empty(),
            "no fence of attempt 2"
        );
    }
}
