//! What happens after an attempt: the scheduler's retry decision.
//!
//! Only the scheduler computes retry policy; agents and the supervisor only write an
//! outcome for the attempt. [`after_attempt`] turns the outcome of the *current*
//! attempt (`outcome.attempt == status.attempt`, phase Running) into the next step,
//! checking rows top to bottom:
//!
//! | Condition | Decision | Next phase |
//! |---|---|---|
//! | no outcome for the current attempt, or not Running | [`AfterAttempt::Undecided`] | unchanged |
//! | outcome `Succeeded` | `Complete` (the agent's fenced completion stands, even if cancel was asked) | Succeeded |
//! | `spec.cancel` | `Cancelled` | Cancelled |
//! | outcome `FailedPermanently` | `Fail { reason }` (outcome reason, default `FailedPermanently`) | Failed |
//! | deadline passed | `DeadLetter(DeadlineExceeded)`, even with attempts left | DeadLettered |
//! | outcome `Cancelled` with reason [`ESCALATED`] | `Hold` (the scheduler then applies [`escalate`]) | Held |
//! | outcome `Released` | `Requeue { attempt: attempt − 1 }`: a drain is not a failure, so the attempt is given back | Queued |
//! | `Failed`, `LeaseExpired`, other `Cancelled`, attempts ≥ maxAttempts | `DeadLetter(MaxAttemptsExceeded)` | DeadLettered |
//! | `Failed`, `LeaseExpired`, other `Cancelled` | `Retry { at: now + backoff_delay(failures = attempt) }` | Backoff |
//!
//! `LeaseExpired` counts as a failed attempt: the work may have run and may have had
//! effects. A `Cancelled` outcome without `spec.cancel` is a supervisor restart
//! (stall, timeout) and counts too, or a stalling item would be restarted forever.
//!
//! [`after_backoff`] then moves Backoff → Queued when `retryAt` passes, or dead-letters
//! when the deadline passes first.

use std::time::Duration;

use jiff::Timestamp;
use rand::Rng;

use super::{add, signed, ts};
use crate::api::{
    Backoff, Escalation, EscalationAction, OutcomeKind, Phase, RetryPolicy, Timeouts, WorkItem,
};

/// Outcome reason (with kind `Cancelled`) that marks an attempt stopped for escalation.
pub const ESCALATED: &str = "Escalated";

/// No backoff is longer than this, whatever the policy says, so time arithmetic stays
/// finite.
pub const MAX_DELAY: Duration = Duration::from_secs(366 * 24 * 3600);

/// How much escalation's `RaisePriority` adds when the queue sets no `raisePriority`.
pub const DEFAULT_RAISE_PRIORITY: i32 = 100;

/// `min(base × 2^(failures−1), max)`, then scaled by `1 + jitter × jitterPercent/100`.
///
/// `jitter` is a fraction in [-1, 1] (clamped; NaN counts as 0), drawn by the caller
/// (see [`random_jitter`]). `failures` 0 is treated as 1. The result is never negative,
/// never above [`MAX_DELAY`], and does not overflow for any `failures`. Jitter applies
/// after the cap, so a capped delay may exceed `max` by up to jitterPercent: retries
/// of many items that all hit the cap still spread out.
pub fn backoff_delay(policy: &Backoff, failures: u32, jitter: f64) -> Duration {
    let base = if policy.base_seconds.is_finite() && policy.base_seconds > 0.0 {
        policy.base_seconds
    } else {
        0.0
    };
    let max = if policy.max_seconds.is_nan() {
        base
    } else {
        policy.max_seconds.max(0.0)
    };
    // 2^1023 is the largest finite power of two; beyond it the cap applies anyway.
    let exp = failures.saturating_sub(1).min(1023) as i32;
    let capped = (base * 2f64.powi(exp)).min(max);
    let jitter = if jitter.is_nan() {
        0.0
    } else {
        jitter.clamp(-1.0, 1.0)
    };
    let percent = f64::from(policy.jitter_percent.clamp(0, 100)) / 100.0;
    let secs = (capped * (1.0 + jitter * percent)).clamp(0.0, MAX_DELAY.as_secs_f64());
    Duration::from_millis((secs * 1000.0).round() as u64)
}

/// A jitter fraction, uniform in [-1, 1].
pub fn random_jitter(rng: &mut impl Rng) -> f64 {
    rng.random_range(-1.0..=1.0)
}

/// The item's deadline: `spec.deadline`, else creation + the queue's
/// `timeouts.deadlineSeconds`, else none.
pub fn effective_deadline(item: &WorkItem, timeouts: &Timeouts) -> Option<Timestamp> {
    ts(item.spec.deadline.as_ref()).or_else(|| {
        let created = ts(item.metadata.creation_timestamp.as_ref())?;
        let secs = timeouts.deadline_seconds?;
        Some(add(created, jiff::SignedDuration::from_secs(secs.max(0))))
    })
}

/// A deadline passes at its instant.
pub fn deadline_passed(deadline: Option<Timestamp>, now: Timestamp) -> bool {
    deadline.is_some_and(|d| d <= now)
}

/// Why an item is dead-lettered; the string is `lastError.reason`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeadLetterReason {
    MaxAttemptsExceeded,
    DeadlineExceeded,
}

impl DeadLetterReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MaxAttemptsExceeded => "MaxAttemptsExceeded",
            Self::DeadlineExceeded => "DeadlineExceeded",
        }
    }
}

/// The scheduler's decision after an attempt; see the module table.
#[derive(Clone, Debug, PartialEq)]
pub enum AfterAttempt {
    /// Nothing to decide: the attempt is still running, or was decided already.
    Undecided,
    /// The attempt succeeded; the agent's completion stands.
    Complete,
    /// Backoff until `at` (now + delay, rounded up to a whole second); `failures` is
    /// the count the delay was computed from.
    Retry {
        at: Timestamp,
        delay: Duration,
        failures: u32,
    },
    /// Back to Queued at once, with `status.attempt` set to `attempt` (one less: the
    /// released attempt does not count).
    Requeue {
        attempt: i32,
    },
    DeadLetter(DeadLetterReason),
    /// FailedPermanently: `reason` goes to `lastError.reason`.
    Fail {
        reason: String,
    },
    Cancelled,
    /// Escalated: Held until the escalation policy is applied.
    Hold,
}

impl AfterAttempt {
    /// The phase this decision moves the item to, if it moves it.
    pub fn phase(&self) -> Option<Phase> {
        Some(match self {
            Self::Undecided => return None,
            Self::Complete => Phase::Succeeded,
            Self::Retry { .. } => Phase::Backoff,
            Self::Requeue { .. } => Phase::Queued,
            Self::DeadLetter(_) => Phase::DeadLettered,
            Self::Fail { .. } => Phase::Failed,
            Self::Cancelled => Phase::Cancelled,
            Self::Hold => Phase::Held,
        })
    }
}

/// Decides what follows the current attempt of a Running item; see the module table.
/// `deadline` is [`effective_deadline`]; `jitter` as for [`backoff_delay`].
pub fn after_attempt(
    item: &WorkItem,
    retry: &RetryPolicy,
    deadline: Option<Timestamp>,
    now: Timestamp,
    jitter: f64,
) -> AfterAttempt {
    let Some(status) = item.status.as_ref() else {
        return AfterAttempt::Undecided;
    };
    let Some(outcome) = status.outcome.as_ref() else {
        return AfterAttempt::Undecided;
    };
    if status.phase != Some(Phase::Running) || outcome.attempt != status.attempt {
        return AfterAttempt::Undecided;
    }
    match outcome.kind {
        OutcomeKind::Succeeded => return AfterAttempt::Complete,
        _ if item.spec.cancel => return AfterAttempt::Cancelled,
        OutcomeKind::FailedPermanently => {
            return AfterAttempt::Fail {
                reason: outcome
                    .reason
                    .clone()
                    .filter(|r| !r.is_empty())
                    .unwrap_or_else(|| "FailedPermanently".into()),
            };
        }
        _ if deadline_passed(deadline, now) => {
            return AfterAttempt::DeadLetter(DeadLetterReason::DeadlineExceeded);
        }
        OutcomeKind::Cancelled if outcome.reason.as_deref() == Some(ESCALATED) => {
            return AfterAttempt::Hold;
        }
        OutcomeKind::Released => {
            return AfterAttempt::Requeue {
                attempt: (status.attempt - 1).max(0),
            };
        }
        OutcomeKind::Failed | OutcomeKind::LeaseExpired | OutcomeKind::Cancelled => {}
    }
    let failures = u32::try_from(status.attempt).unwrap_or(0).max(1);
    if i64::from(failures) >= i64::from(retry.max_attempts) {
        return AfterAttempt::DeadLetter(DeadLetterReason::MaxAttemptsExceeded);
    }
    let delay = backoff_delay(&retry.backoff, failures, jitter);
    AfterAttempt::Retry {
        at: ceil_second(add(now, signed(delay))),
        delay,
        failures,
    }
}

/// API `Time` keeps whole seconds; rounding up means the stored retryAt is never
/// earlier than the delay decided.
fn ceil_second(t: Timestamp) -> Timestamp {
    t.round(
        jiff::TimestampRound::new()
            .smallest(jiff::Unit::Second)
            .mode(jiff::RoundMode::Ceil),
    )
    .unwrap_or(t)
}

/// What to do with an item in Backoff.
#[derive(Clone, Debug, PartialEq)]
pub enum AfterBackoff {
    /// Check again at `until` (the earlier of retryAt and the deadline).
    Wait {
        until: Timestamp,
    },
    Requeue,
    DeadLetter(DeadLetterReason),
}

/// Backoff → Queued once `retry_at` passes; DeadLettered if the deadline passes first.
pub fn after_backoff(
    retry_at: Option<Timestamp>,
    deadline: Option<Timestamp>,
    now: Timestamp,
) -> AfterBackoff {
    if deadline_passed(deadline, now) {
        return AfterBackoff::DeadLetter(DeadLetterReason::DeadlineExceeded);
    }
    match retry_at {
        Some(at) if at > now => AfterBackoff::Wait {
            until: deadline.map_or(at, |d| d.min(at)),
        },
        _ => AfterBackoff::Requeue,
    }
}

/// What the scheduler does with a Held item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EscalationDecision {
    /// Queued on another queue (`status.queue`).
    Reroute { queue: String },
    /// Queued here again with `status.priority` raised (capped at 1000).
    RaisePriority { priority: i32 },
    /// Failed; `reason` goes to `lastError.reason` and the request lists the item.
    Fail { reason: String },
    /// No escalation policy: stays Held for a person (cancel, or edit the queue).
    Stay,
}

/// Applies the queue's escalation policy. With no `action`, `toQueue` implies Reroute;
/// with neither, the item stays Held, because an escalation with nowhere to go is a
/// question for a person, not a reason to throw the work away.
pub fn escalate(policy: &Escalation, current_priority: i32) -> EscalationDecision {
    let reroute = || {
        policy
            .to_queue
            .clone()
            .filter(|q| !q.is_empty())
            .map_or(EscalationDecision::Stay, |queue| {
                EscalationDecision::Reroute { queue }
            })
    };
    match policy.action {
        None | Some(EscalationAction::Reroute) => reroute(),
        Some(EscalationAction::RaisePriority) => EscalationDecision::RaisePriority {
            priority: current_priority
                .saturating_add(
                    policy
                        .raise_priority
                        .unwrap_or(DEFAULT_RAISE_PRIORITY)
                        .max(0),
                )
                .min(1000),
        },
        Some(EscalationAction::Fail) => EscalationDecision::Fail {
            reason: ESCALATED.into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Outcome, WorkItemSpec, WorkItemStatus};
    use crate::core::testutil::{t, time};
    use proptest::prelude::*;
    use rand::SeedableRng;

    fn secs(d: Duration) -> f64 {
        d.as_secs_f64()
    }

    #[test]
    fn default_backoff_doubles_from_ten_seconds_to_the_cap() {
        let b = Backoff::default();
        let got: Vec<f64> = (1..=8).map(|f| secs(backoff_delay(&b, f, 0.0))).collect();
        assert_eq!(got, [10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 600.0, 600.0]);
    }

    #[test]
    fn zero_failures_counts_as_first() {
        assert_eq!(secs(backoff_delay(&Backoff::default(), 0, 0.0)), 10.0);
    }

    #[test]
    fn jitter_spreads_by_jitter_percent() {
        let b = Backoff::default();
        assert_eq!(secs(backoff_delay(&b, 1, 1.0)), 11.0);
        assert_eq!(secs(backoff_delay(&b, 1, -1.0)), 9.0);
        assert_eq!(secs(backoff_delay(&b, 1, 0.5)), 10.5);
        // Out-of-range jitter is clamped, NaN ignored.
        assert_eq!(secs(backoff_delay(&b, 1, 7.0)), 11.0);
        assert_eq!(secs(backoff_delay(&b, 1, f64::NAN)), 10.0);
        let none = Backoff {
            jitter_percent: 0,
            ..b
        };
        assert_eq!(secs(backoff_delay(&none, 1, 1.0)), 10.0);
    }

    #[test]
    fn huge_failure_counts_do_not_overflow() {
        let b = Backoff::default();
        assert_eq!(secs(backoff_delay(&b, u32::MAX, 0.0)), 600.0);
        let unbounded = Backoff {
            max_seconds: f64::INFINITY,
            ..b
        };
        assert_eq!(backoff_delay(&unbounded, u32::MAX, 1.0), MAX_DELAY);
    }

    #[test]
    fn never_negative_even_with_bad_policy() {
        let b = Backoff {
            base_seconds: -5.0,
            max_seconds: -1.0,
            jitter_percent: 100,
        };
        assert_eq!(backoff_delay(&b, 3, -1.0), Duration::ZERO);
        let full = Backoff {
            jitter_percent: 100,
            ..Backoff::default()
        };
        assert_eq!(backoff_delay(&full, 1, -1.0), Duration::ZERO);
        let nan = Backoff {
            base_seconds: f64::NAN,
            max_seconds: f64::NAN,
            jitter_percent: 10,
        };
        assert_eq!(backoff_delay(&nan, 3, 0.0), Duration::ZERO);
    }

    #[test]
    fn random_jitter_is_in_range_and_varies() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let draws: Vec<f64> = (0..200).map(|_| random_jitter(&mut rng)).collect();
        assert!(draws.iter().all(|j| (-1.0..=1.0).contains(j)));
        assert!(draws.iter().any(|j| *j < -0.5) && draws.iter().any(|j| *j > 0.5));
    }

    proptest! {
        #[test]
        fn delay_is_bounded_and_monotone(
            base in 0.0f64..1e6, extra in 0.0f64..1e7, pct in 0i32..=100,
            f in 0u32..2000, j in -1.0f64..=1.0,
        ) {
            let b = Backoff { base_seconds: base, max_seconds: base + extra, jitter_percent: pct };
            let d = secs(backoff_delay(&b, f, j));
            let hi = (base + extra) * (1.0 + f64::from(pct) / 100.0);
            prop_assert!(d >= 0.0 && d <= hi.min(MAX_DELAY.as_secs_f64()) + 0.001);
            // Without jitter, more failures never means a shorter wait.
            prop_assert!(backoff_delay(&b, f, 0.0) <= backoff_delay(&b, f.saturating_add(1), 0.0));
        }
    }

    fn running(attempt: i32, kind: OutcomeKind, reason: Option<&str>) -> WorkItem {
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
            attempt,
            outcome: Some(Outcome {
                kind,
                reason: reason.map(Into::into),
                message: None,
                attempt,
                epoch: 1,
                at: None,
            }),
            ..Default::default()
        });
        wi
    }

    fn decide(wi: &WorkItem, deadline: Option<Timestamp>) -> AfterAttempt {
        after_attempt(wi, &RetryPolicy::default(), deadline, t(100), 0.0)
    }

    #[test]
    fn failure_with_attempts_left_backs_off() {
        let d = decide(&running(2, OutcomeKind::Failed, None), None);
        assert_eq!(
            d,
            AfterAttempt::Retry {
                at: t(120),
                delay: Duration::from_secs(20),
                failures: 2
            }
        );
        assert_eq!(d.phase(), Some(Phase::Backoff));
    }

    #[test]
    fn retry_time_is_rounded_up_to_a_whole_second() {
        let wi = running(1, OutcomeKind::Failed, None);
        let now = t(100) + jiff::SignedDuration::from_millis(300);
        let d = after_attempt(&wi, &RetryPolicy::default(), None, now, 0.55);
        // 10 s × (1 + 0.55 × 10 %) = 10.55 s after 100.3 s → 110.85 s → 111 s.
        assert_eq!(
            d,
            AfterAttempt::Retry {
                at: t(111),
                delay: Duration::from_millis(10_550),
                failures: 1
            }
        );
    }

    #[test]
    fn lease_expired_and_supervisor_restart_count_as_failures() {
        for kind in [OutcomeKind::LeaseExpired, OutcomeKind::Cancelled] {
            assert!(matches!(
                decide(&running(1, kind, Some("Stalled")), None),
                AfterAttempt::Retry { failures: 1, .. }
            ));
            assert_eq!(
                decide(&running(7, kind, None), None),
                AfterAttempt::DeadLetter(DeadLetterReason::MaxAttemptsExceeded)
            );
        }
    }

    #[test]
    fn last_attempt_dead_letters() {
        assert!(matches!(
            decide(&running(6, OutcomeKind::Failed, None), None),
            AfterAttempt::Retry { .. }
        ));
        let d = decide(&running(7, OutcomeKind::Failed, None), None);
        assert_eq!(
            d,
            AfterAttempt::DeadLetter(DeadLetterReason::MaxAttemptsExceeded)
        );
        assert_eq!(d.phase(), Some(Phase::DeadLettered));
    }

    #[test]
    fn deadline_wins_over_attempts_left() {
        let wi = running(1, OutcomeKind::Failed, None);
        assert_eq!(
            decide(&wi, Some(t(100))),
            AfterAttempt::DeadLetter(DeadLetterReason::DeadlineExceeded)
        );
        assert!(matches!(
            decide(&wi, Some(t(101))),
            AfterAttempt::Retry { .. }
        ));
        // Also for a drained attempt: there is no time left to run it again.
        assert_eq!(
            decide(&running(1, OutcomeKind::Released, None), Some(t(50))),
            AfterAttempt::DeadLetter(DeadLetterReason::DeadlineExceeded)
        );
    }

    #[test]
    fn released_gives_the_attempt_back() {
        let d = decide(&running(3, OutcomeKind::Released, None), None);
        assert_eq!(d, AfterAttempt::Requeue { attempt: 2 });
        assert_eq!(d.phase(), Some(Phase::Queued));
        // Even at the attempt limit: a drain is not a failure.
        assert_eq!(
            decide(&running(7, OutcomeKind::Released, None), None),
            AfterAttempt::Requeue { attempt: 6 }
        );
    }

    #[test]
    fn permanent_failure_fails_with_its_reason() {
        assert_eq!(
            decide(
                &running(1, OutcomeKind::FailedPermanently, Some("BudgetExceeded")),
                Some(t(0))
            ),
            AfterAttempt::Fail {
                reason: "BudgetExceeded".into()
            }
        );
        assert_eq!(
            decide(&running(1, OutcomeKind::FailedPermanently, None), None),
            AfterAttempt::Fail {
                reason: "FailedPermanently".into()
            }
        );
    }

    #[test]
    fn escalated_attempt_is_held() {
        let d = decide(&running(1, OutcomeKind::Cancelled, Some(ESCALATED)), None);
        assert_eq!(d, AfterAttempt::Hold);
        assert_eq!(d.phase(), Some(Phase::Held));
    }

    #[test]
    fn cancel_flag_ends_cancelled_unless_it_already_succeeded() {
        for kind in [
            OutcomeKind::Failed,
            OutcomeKind::Cancelled,
            OutcomeKind::LeaseExpired,
            OutcomeKind::Released,
            OutcomeKind::FailedPermanently,
        ] {
            let mut wi = running(1, kind, None);
            wi.spec.cancel = true;
            assert_eq!(decide(&wi, None), AfterAttempt::Cancelled, "{kind:?}");
        }
        let mut ok = running(1, OutcomeKind::Succeeded, None);
        ok.spec.cancel = true;
        assert_eq!(decide(&ok, None), AfterAttempt::Complete);
    }

    #[test]
    fn stale_or_missing_outcome_is_undecided() {
        let mut wi = running(2, OutcomeKind::Failed, None);
        wi.status
            .as_mut()
            .unwrap()
            .outcome
            .as_mut()
            .unwrap()
            .attempt = 1;
        assert_eq!(
            decide(&wi, None),
            AfterAttempt::Undecided,
            "outcome of an earlier attempt"
        );
        let mut backoff = running(2, OutcomeKind::Failed, None);
        backoff.status.as_mut().unwrap().phase = Some(Phase::Backoff);
        assert_eq!(
            decide(&backoff, None),
            AfterAttempt::Undecided,
            "already decided"
        );
        let mut none = running(2, OutcomeKind::Failed, None);
        none.status.as_mut().unwrap().outcome = None;
        assert_eq!(decide(&none, None), AfterAttempt::Undecided);
        let mut no_status = running(2, OutcomeKind::Failed, None);
        no_status.status = None;
        assert_eq!(decide(&no_status, None), AfterAttempt::Undecided);
    }

    #[test]
    fn queue_policy_overrides_defaults() {
        let policy = RetryPolicy {
            max_attempts: 2,
            backoff: Backoff {
                base_seconds: 1.0,
                max_seconds: 5.0,
                jitter_percent: 0,
            },
        };
        let wi = running(1, OutcomeKind::Failed, None);
        assert_eq!(
            after_attempt(&wi, &policy, None, t(0), 1.0),
            AfterAttempt::Retry {
                at: t(1),
                delay: Duration::from_secs(1),
                failures: 1
            }
        );
        assert_eq!(
            after_attempt(
                &running(2, OutcomeKind::Failed, None),
                &policy,
                None,
                t(0),
                0.0
            ),
            AfterAttempt::DeadLetter(DeadLetterReason::MaxAttemptsExceeded)
        );
    }

    #[test]
    fn effective_deadline_prefers_spec_then_queue_default() {
        let mut wi = running(1, OutcomeKind::Failed, None);
        wi.metadata.creation_timestamp = Some(time(0));
        let timeouts = Timeouts {
            attempt_seconds: None,
            deadline_seconds: Some(60),
        };
        assert_eq!(effective_deadline(&wi, &timeouts), Some(t(60)));
        assert_eq!(effective_deadline(&wi, &Timeouts::default()), None);
        wi.spec.deadline = Some(time(30));
        assert_eq!(effective_deadline(&wi, &timeouts), Some(t(30)));
    }

    #[test]
    fn backoff_elapses_or_dead_letters() {
        assert_eq!(
            after_backoff(Some(t(10)), None, t(5)),
            AfterBackoff::Wait { until: t(10) }
        );
        assert_eq!(
            after_backoff(Some(t(10)), None, t(10)),
            AfterBackoff::Requeue
        );
        assert_eq!(after_backoff(None, None, t(10)), AfterBackoff::Requeue);
        assert_eq!(
            after_backoff(Some(t(10)), Some(t(7)), t(5)),
            AfterBackoff::Wait { until: t(7) },
            "wake up at the deadline to dead-letter"
        );
        assert_eq!(
            after_backoff(Some(t(10)), Some(t(7)), t(7)),
            AfterBackoff::DeadLetter(DeadLetterReason::DeadlineExceeded)
        );
    }

    #[test]
    fn escalation_policy() {
        let to = |q: &str| Escalation {
            to_queue: Some(q.into()),
            ..Default::default()
        };
        assert_eq!(
            escalate(&to("experts"), 500),
            EscalationDecision::Reroute {
                queue: "experts".into()
            }
        );
        assert_eq!(
            escalate(&Escalation::default(), 500),
            EscalationDecision::Stay
        );
        let raise = Escalation {
            action: Some(EscalationAction::RaisePriority),
            raise_priority: Some(200),
            ..Default::default()
        };
        assert_eq!(
            escalate(&raise, 500),
            EscalationDecision::RaisePriority { priority: 700 }
        );
        assert_eq!(
            escalate(&raise, 900),
            EscalationDecision::RaisePriority { priority: 1000 }
        );
        let raise_default = Escalation {
            action: Some(EscalationAction::RaisePriority),
            ..Default::default()
        };
        assert_eq!(
            escalate(&raise_default, 500),
            EscalationDecision::RaisePriority { priority: 600 }
        );
        let fail = Escalation {
            action: Some(EscalationAction::Fail),
            to_queue: Some("x".into()),
            ..Default::default()
        };
        assert_eq!(
            escalate(&fail, 500),
            EscalationDecision::Fail {
                reason: "Escalated".into()
            }
        );
    }

    #[test]
    fn dead_letter_reasons_are_the_documented_strings() {
        assert_eq!(
            DeadLetterReason::MaxAttemptsExceeded.as_str(),
            "MaxAttemptsExceeded"
        );
        assert_eq!(
            DeadLetterReason::DeadlineExceeded.as_str(),
            "DeadlineExceeded"
        );
    }
}
