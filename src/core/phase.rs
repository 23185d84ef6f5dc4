//! Which phase changes are legal, and for whom.
//!
//! The brief's command-authority table, as code. Every role asks [`can_transition`]
//! before it writes a phase, so a bug in one role shows up as a refused write in that
//! role, not as a corrupted item. The API server enforces terminal immutability with a
//! CEL rule as well; this table is stricter (it also knows the writer).
//!
//! | From | Scheduler may go to | Agent may go to |
//! |---|---|---|
//! | none (no status yet) | Pending, Queued, Failed, DeadLettered, Cancelled | Running (fast-path claim) |
//! | Pending | Queued, Failed (`DependencyFailed`), DeadLettered (deadline), Cancelled | — |
//! | Queued | DeadLettered (deadline), Cancelled | Running (claim) |
//! | Running | Queued (released), Backoff, Failed, DeadLettered, Held, Cancelled | Succeeded, Failed |
//! | Backoff | Queued, DeadLettered (deadline), Cancelled | — |
//! | Held | Queued (re-route, raise), Failed, DeadLettered (deadline), Cancelled | — |
//! | DeadLettered | Queued (redrive), Cancelled | — |
//! | Succeeded, Failed, Cancelled | — (terminal) | — |
//!
//! The supervisor writes no phase: it fences agents out (epoch bump with an outcome)
//! and sets conditions; the scheduler turns that into the next phase, so retry policy
//! stays in one place. The brief's table omits Failed for the scheduler, but it must
//! write it: `DependencyFailed`, an escalation policy of `Fail`, and a supervisor's cut
//! (outcome `FailedPermanently` written by fencing out a running item) all end Failed
//! without an agent to write it.

use jiff::{SignedDuration, Timestamp};

use super::{add, ts};
use crate::api::{Phase, Retention, WorkItem};

/// Who is writing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Writer {
    Scheduler,
    Agent,
    Supervisor,
}

/// Whether `writer` may move an item from `from` (None = no status yet) to `to`.
/// Writing the phase an item already has is a no-op and always allowed.
pub fn can_transition(from: Option<Phase>, to: Phase, writer: Writer) -> bool {
    use Phase::*;
    if from == Some(to) {
        return true;
    }
    if from.is_some_and(Phase::is_terminal) {
        return false;
    }
    match writer {
        Writer::Supervisor => false,
        Writer::Agent => matches!(
            (from, to),
            (None | Some(Queued), Running) | (Some(Running), Succeeded | Failed)
        ),
        Writer::Scheduler => match from {
            None => matches!(to, Pending | Queued | Failed | DeadLettered | Cancelled),
            Some(Pending) => matches!(to, Queued | Failed | DeadLettered | Cancelled),
            Some(Queued) => matches!(to, DeadLettered | Cancelled),
            Some(Running) => matches!(
                to,
                Queued | Backoff | Failed | DeadLettered | Held | Cancelled
            ),
            Some(Backoff) => matches!(to, Queued | DeadLettered | Cancelled),
            Some(Held) => matches!(to, Queued | Failed | DeadLettered | Cancelled),
            Some(DeadLettered) => matches!(to, Queued | Cancelled),
            Some(Succeeded | Failed | Cancelled) => false,
        },
    }
}

/// True when an item with no status yet may be claimed as created: it names a queue
/// and has no dependencies and no not-before. This is what lets an item cost only
/// three writes (create, claim, complete).
pub fn is_fast_path(item: &WorkItem) -> bool {
    item.spec.queue.is_some() && item.spec.depends_on.is_empty() && item.spec.not_before.is_none()
}

/// The phase an item is in for counting and ordering: its status phase, or for an item
/// without status, Queued on the fast path and Pending otherwise.
pub fn effective_phase(item: &WorkItem) -> Phase {
    item.phase().unwrap_or(if is_fast_path(item) {
        Phase::Queued
    } else {
        Phase::Pending
    })
}

/// When an item may be claimed, as far as its current state says: from `from` (its
/// notBefore or retryAt) until `until` (its deadline), either open-ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClaimWindow {
    pub from: Option<Timestamp>,
    pub until: Option<Timestamp>,
}

impl ClaimWindow {
    pub fn contains(&self, now: Timestamp) -> bool {
        self.from.is_none_or(|f| f <= now) && self.until.is_none_or(|u| u > now)
    }
}

/// The window in which `item` is claimable, or None when it is not claimable at any
/// time in its current state: cancelled, on no queue, or neither Queued nor fast-path
/// with no status. Agents keep only the window, not the item.
pub fn claim_window(item: &WorkItem) -> Option<ClaimWindow> {
    if item.spec.cancel || item.effective_queue().is_none() {
        return None;
    }
    let phase_ok = match item.phase() {
        None => is_fast_path(item),
        Some(p) => p == Phase::Queued,
    };
    if !phase_ok {
        return None;
    }
    let retry_at = item.status.as_ref().and_then(|s| ts(s.retry_at.as_ref()));
    Some(ClaimWindow {
        from: ts(item.spec.not_before.as_ref()).max(retry_at),
        // Past its own deadline the scheduler dead-letters it; running it would waste
        // an attempt.
        until: ts(item.spec.deadline.as_ref()),
    })
}

/// Whether an agent may try to claim `item` now: it runs on a queue, is Queued (or
/// fast-path with no status), is not cancelled, and any retryAt, notBefore or deadline
/// allows it.
pub fn is_claimable(item: &WorkItem, now: Timestamp) -> bool {
    claim_window(item).is_some_and(|w| w.contains(now))
}

/// When a finished item is due for deletion under the queue's retention: Succeeded and
/// Cancelled after `succeededSeconds`, Failed and DeadLettered after `failedSeconds`,
/// counted from `finished_at`. None for unfinished items or without a finish time.
pub fn retention_expires_at(
    phase: Phase,
    finished_at: Option<Timestamp>,
    retention: &Retention,
) -> Option<Timestamp> {
    let keep = match phase {
        Phase::Succeeded | Phase::Cancelled => retention.succeeded_seconds,
        Phase::Failed | Phase::DeadLettered => retention.failed_seconds,
        _ => return None,
    };
    Some(add(finished_at?, SignedDuration::from_secs(keep.max(0))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{WorkItemSpec, WorkItemStatus};
    use crate::core::testutil::{t, time};
    use Phase::*;

    fn item(queue: Option<&str>, phase: Option<Phase>) -> WorkItem {
        let mut wi = WorkItem::new(
            "x",
            WorkItemSpec {
                queue: queue.map(Into::into),
                type_: Some("t".into()),
                priority: 500,
                ..Default::default()
            },
        );
        if phase.is_some() {
            wi.status = Some(WorkItemStatus {
                phase,
                ..Default::default()
            });
        }
        wi
    }

    #[test]
    fn terminal_phases_are_immutable_for_everyone() {
        for from in [Succeeded, Failed, Cancelled] {
            for to in Phase::ALL {
                for w in [Writer::Scheduler, Writer::Agent, Writer::Supervisor] {
                    assert_eq!(
                        can_transition(Some(from), to, w),
                        from == to,
                        "{from}→{to} by {w:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn supervisor_never_writes_a_phase() {
        for from in Phase::ALL.map(Some).into_iter().chain([None]) {
            for to in Phase::ALL {
                if from != Some(to) {
                    assert!(
                        !can_transition(from, to, Writer::Supervisor),
                        "{from:?}→{to}"
                    );
                }
            }
        }
    }

    #[test]
    fn agent_claims_and_completes_only() {
        let allowed = [
            (None, Running),
            (Some(Queued), Running),
            (Some(Running), Succeeded),
            (Some(Running), Failed),
        ];
        for from in Phase::ALL.map(Some).into_iter().chain([None]) {
            for to in Phase::ALL {
                let expect = from == Some(to) || allowed.contains(&(from, to));
                assert_eq!(
                    can_transition(from, to, Writer::Agent),
                    expect,
                    "{from:?}→{to}"
                );
            }
        }
    }

    #[test]
    fn scheduler_owns_the_life_cycle_but_not_claims_or_success() {
        let s = Writer::Scheduler;
        assert!(can_transition(Some(Pending), Queued, s));
        assert!(can_transition(Some(Pending), Failed, s), "DependencyFailed");
        assert!(can_transition(Some(Running), Backoff, s));
        assert!(can_transition(Some(Running), Held, s));
        assert!(can_transition(Some(Running), Queued, s), "released");
        assert!(can_transition(Some(Backoff), Queued, s));
        assert!(can_transition(Some(Held), Queued, s), "re-route");
        assert!(can_transition(Some(DeadLettered), Queued, s), "redrive");
        assert!(can_transition(None, Cancelled, s));
        // Claims and success are the agent's.
        assert!(!can_transition(Some(Queued), Running, s));
        assert!(!can_transition(None, Running, s));
        assert!(!can_transition(Some(Running), Succeeded, s));
        // Nothing skips the queue.
        assert!(!can_transition(Some(Backoff), Running, s));
        assert!(!can_transition(Some(Pending), Backoff, s));
        assert!(!can_transition(Some(DeadLettered), Pending, s));
    }

    #[test]
    fn every_phase_is_reachable_from_creation() {
        // Walk the scheduler and agent graph from "no status".
        let mut seen = vec![];
        let mut frontier = vec![None::<Phase>];
        while let Some(from) = frontier.pop() {
            for to in Phase::ALL {
                if seen.contains(&to) {
                    continue;
                }
                if can_transition(from, to, Writer::Scheduler)
                    || can_transition(from, to, Writer::Agent)
                {
                    seen.push(to);
                    frontier.push(Some(to));
                }
            }
        }
        assert_eq!(seen.len(), Phase::ALL.len(), "{seen:?}");
    }

    #[test]
    fn fast_path_item_without_status_is_claimable() {
        let wi = item(Some("q"), None);
        assert!(is_fast_path(&wi));
        assert_eq!(effective_phase(&wi), Queued);
        assert!(is_claimable(&wi, t(0)));
    }

    #[test]
    fn item_without_status_needs_admission_when_not_fast_path() {
        let mut deps = item(Some("q"), None);
        deps.spec.depends_on = vec!["a".into()];
        assert!(!is_claimable(&deps, t(0)));
        assert_eq!(effective_phase(&deps), Pending);

        let mut later = item(Some("q"), None);
        later.spec.not_before = Some(time(0));
        assert!(
            !is_claimable(&later, t(10)),
            "not-before items are admitted by the scheduler"
        );

        let typed = item(None, None);
        assert!(
            !is_claimable(&typed, t(0)),
            "a typed item must be routed first"
        );
        assert_eq!(effective_phase(&typed), Pending);
    }

    #[test]
    fn only_queued_items_are_claimable() {
        for p in Phase::ALL {
            assert_eq!(
                is_claimable(&item(Some("q"), Some(p)), t(0)),
                p == Queued,
                "{p}"
            );
        }
    }

    #[test]
    fn routed_typed_item_is_claimable() {
        let mut wi = item(None, Some(Queued));
        assert!(!is_claimable(&wi, t(0)));
        wi.status.as_mut().unwrap().queue = Some("q".into());
        assert!(is_claimable(&wi, t(0)));
    }

    #[test]
    fn cancelled_item_is_not_claimable() {
        let mut wi = item(Some("q"), Some(Queued));
        wi.spec.cancel = true;
        assert!(!is_claimable(&wi, t(0)));
    }

    #[test]
    fn retry_at_and_not_before_gate_claims() {
        let mut wi = item(Some("q"), Some(Queued));
        wi.status.as_mut().unwrap().retry_at = Some(time(10));
        assert!(!is_claimable(&wi, t(9)));
        assert!(is_claimable(&wi, t(10)));
        wi.spec.not_before = Some(time(20));
        assert!(!is_claimable(&wi, t(15)));
        assert!(is_claimable(&wi, t(20)));
    }

    #[test]
    fn past_deadline_is_not_claimable() {
        let mut wi = item(Some("q"), Some(Queued));
        wi.spec.deadline = Some(time(10));
        assert!(is_claimable(&wi, t(9)));
        assert!(!is_claimable(&wi, t(10)));
    }

    #[test]
    fn retention_by_phase() {
        let r = Retention {
            succeeded_seconds: 100,
            failed_seconds: 1000,
        };
        assert_eq!(
            retention_expires_at(Succeeded, Some(t(0)), &r),
            Some(t(100))
        );
        assert_eq!(
            retention_expires_at(Cancelled, Some(t(0)), &r),
            Some(t(100))
        );
        assert_eq!(retention_expires_at(Failed, Some(t(0)), &r), Some(t(1000)));
        assert_eq!(
            retention_expires_at(DeadLettered, Some(t(0)), &r),
            Some(t(1000))
        );
        assert_eq!(retention_expires_at(Running, Some(t(0)), &r), None);
        assert_eq!(retention_expires_at(Succeeded, None, &r), None);
    }
}
