//! The agent's own small decisions, pure: how an attempt ended, whether the item we
//! hold asks us to stop, and when to stop trying to write how it ended.

use std::time::Duration;

use serde_json::Value;

use super::candidates;
use super::report::ReportState;
use super::work::Exit;
use super::writer::Ending;
use crate::api::{Counters, OutcomeKind, WorkItem, find_condition};
use crate::core::supervision::{StopRequest, conditions, of_current_attempt};
use crate::k8s::fence::Fence;

/// The reason written when the agent stopped the work because its lease lapsed.
pub const LEASE_LOST: &str = "LeaseLost";

/// How long a draining agent keeps trying to write an attempt's ending. Before it the
/// work had `drain` and then at most `DRAIN_KILL_GRACE`: with the defaults (20 s + 5 s)
/// this keeps the whole drain within a pod's default 30 s grace.
pub const DRAIN_WRITE_GRACE: Duration = Duration::from_secs(5);

/// The outcome of an attempt whose command exited on its own, and the result to write.
///
/// - A `fail` report decides: retryable → `Failed`, otherwise `FailedPermanently`,
///   whatever the exit code (the command said it failed).
/// - Exit 0 → `Succeeded`, unless a `result` line was refused (over `MAX_RESULT_BYTES`,
///   or not an object): then `FailedPermanently` (`ResultTooLarge` / `InvalidResult`),
///   since running it again would produce the same result.
/// - Any other exit → `Failed` / `ExitCode` (or `Signal`), retryable.
pub fn ending(exit: Exit, reports: &ReportState, last_stderr: &str) -> (Ending, Option<Value>) {
    let exited = match exit {
        Exit::Code(c) => format!("exit code {c}"),
        Exit::Signal(s) => format!("killed by signal {s}"),
    };
    let said = if last_stderr.is_empty() {
        exited
    } else {
        format!("{exited}: {last_stderr}")
    };
    if let Some(f) = &reports.fail {
        let kind = if f.retryable {
            OutcomeKind::Failed
        } else {
            OutcomeKind::FailedPermanently
        };
        return (Ending::new(kind, &f.reason, said), None);
    }
    match exit {
        Exit::Code(0) => match &reports.result_refused {
            Some(why) => {
                let reason = if why.contains("limit") {
                    "ResultTooLarge"
                } else {
                    "InvalidResult"
                };
                (
                    Ending::new(
                        OutcomeKind::FailedPermanently,
                        reason,
                        format!("result refused: {why}"),
                    ),
                    None,
                )
            }
            None => (
                Ending {
                    kind: OutcomeKind::Succeeded,
                    reason: None,
                    message: None,
                },
                reports.result.clone(),
            ),
        },
        Exit::Code(_) => (Ending::new(OutcomeKind::Failed, "ExitCode", said), None),
        Exit::Signal(_) => (Ending::new(OutcomeKind::Failed, "Signal", said), None),
    }
}

/// Whether the held item asks us to stop, and how the attempt should then end:
/// `spec.cancel` (Cancelled), or a `CancelRequested` condition raised during this
/// attempt, ending as the supervisor asked (`StopRequest::outcome`: a retryable
/// failure for a restart, Cancelled/Escalated for an escalation, …). A condition
/// whose message the supervisor's format does not explain still stops the work, as
/// Cancelled with the condition's reason.
pub fn stop_requested(view: &WorkItem) -> Option<Ending> {
    if view.spec.cancel {
        return Some(Ending::new(
            OutcomeKind::Cancelled,
            "Cancelled",
            "spec.cancel is set",
        ));
    }
    let status = view.status.as_ref()?;
    let c = find_condition(&status.conditions, conditions::CANCEL_REQUESTED)
        .filter(|c| c.status == "True")?;
    // One left over from an earlier attempt does not stop this one.
    if !of_current_attempt(view, &c.message, c.last_transition_time.0) {
        return None;
    }
    if let Some(stop) = StopRequest::parse(&c.reason, &c.message) {
        let (kind, reason) = stop.outcome();
        return Some(Ending::new(kind, &reason, c.message.clone()));
    }
    let reason = if c.reason.is_empty() {
        conditions::CANCEL_REQUESTED
    } else {
        c.reason.as_str()
    };
    Some(Ending::new(
        OutcomeKind::Cancelled,
        reason,
        c.message.clone(),
    ))
}

/// The ending to write for an attempt whose work the agent stopped because its lease
/// lapsed (`lease` is the lease's duration).
///
/// A cancel or drain already under way keeps the ending it asked for: the lapse only cut
/// short a stop that was happening anyway, and the supervisor's or user's wish (retry,
/// escalate, cancel, release) should still be what the scheduler acts on. Otherwise the
/// attempt ends `Failed` / `LeaseLost`, retryable. It counts towards `maxAttempts`, like
/// the supervisor's `LeaseExpired` for the same event seen from outside, so an item whose
/// work keeps starving its agent still runs out of attempts.
pub fn lease_lost(asked: Option<Ending>, lease: Duration) -> Ending {
    asked.unwrap_or_else(|| {
        Ending::new(
            OutcomeKind::Failed,
            LEASE_LOST,
            format!(
                "the agent's lease ({}s) lapsed during this attempt, so the agent stopped the work and handed the item back for retry",
                lease.as_secs()
            ),
        )
    })
}

/// Reason of an attempt whose work container went away while it ran.
pub const WORK_CONTAINER_EXITED: &str = "WorkContainerExited";

/// How an attempt ends when the work container exits or restarts under it (an
/// out-of-memory kill of the work is the usual cause): `Failed`, retryable, counted
/// towards `maxAttempts`, since the work itself most likely brought it about.
pub fn work_container_gone() -> Ending {
    Ending::new(
        OutcomeKind::Failed,
        WORK_CONTAINER_EXITED,
        "the work container exited or restarted while the item ran (OOMKilled is the usual cause: see the pod's work container status); the item is retried",
    )
}

/// Why the agent stops trying to write an attempt's ending before it was accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GiveUp {
    /// The watch shows the claim moved on or the item left Running: the fence would
    /// refuse the write, and whoever moved the item decides what follows.
    Moved,
    /// Draining, and the ending's share of the pod's grace is used up. The pod exits,
    /// its Lease goes stale and the supervisor reclaims the item.
    Draining,
}

/// Whether to stop trying to write an attempt's ending: `view` is the freshest watched
/// copy of the item (if any), `left` whether the watch saw it leave this agent since
/// the claim, `draining_for` how long the agent has been draining.
/// Neither the lease nor the number of tries is a reason: the fence makes every try
/// safe, and an ending never written leaves the item Running until the stall monitor.
pub fn give_up_writing(
    view: Option<&WorkItem>,
    left: bool,
    fence: &Fence,
    draining_for: Option<Duration>,
) -> Option<GiveUp> {
    if left || view.is_some_and(|v| candidates::fenced(v, &fence.agent, fence.epoch)) {
        return Some(GiveUp::Moved);
    }
    if draining_for.is_some_and(|d| d >= DRAIN_WRITE_GRACE) {
        return Some(GiveUp::Draining);
    }
    None
}

/// Above this share of recent claims lost (or found taken), an agent reads each
/// candidate before writing its claim. Below it the reads would cost more than the few
/// refused claims they save: with 10 agents about one claim in twenty is lost.
pub const PRECHECK_ABOVE_CONTENTION: f64 = 0.2;

/// Whether to read a candidate before claiming it, given the recent `contention` and
/// the agent's threshold (`PRECHECK_ABOVE_CONTENTION` unless configured).
pub fn precheck_claims(contention: f64, above: f64) -> bool {
    contention > above || above <= 0.0
}

/// The moving share of lost claims after one more claim (or precheck) that was
/// `lost` or not; about the last ten count.
pub fn contention_after(contention: f64, lost: bool) -> f64 {
    contention * 0.9 + if lost { 0.1 } else { 0.0 }
}

/// The item's time budgets (`wallSeconds`, `cpuSeconds`: its own, else its queue's
/// `defaultBudget`) as the agent watches them while the work runs. The agent measures
/// these two itself; a command that reports nothing would otherwise have them written
/// only at the periodic refresh, and the supervisor would cut it up to that long after
/// the budget ran out. Crossing a limit asks for one write at once. Extensions the
/// supervisor grants only raise limits, so ignoring them costs at most an early write.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TimeBudgetWatch {
    wall: Option<f64>,
    cpu: Option<f64>,
}

impl TimeBudgetWatch {
    pub fn new(item_budget: &Counters, queue_default: &Counters) -> Self {
        let limit = |counter: &str| {
            item_budget
                .get(counter)
                .or_else(|| queue_default.get(counter))
                .copied()
                .filter(|l| l.is_finite() && *l > 0.0)
        };
        Self {
            wall: limit(crate::api::WALL_SECONDS),
            cpu: limit(crate::api::CPU_SECONDS),
        }
    }

    /// Whether CPU time must be measured now to see a crossing: not while the wall time
    /// is too short for `cores` to have used the CPU budget.
    pub fn needs_cpu(&self, wall: f64, cores: f64) -> bool {
        self.cpu.is_some_and(|l| wall * cores.max(1.0) >= l)
    }

    /// True once for each limit the measurements reach; the caller then writes usage.
    pub fn crossed(&mut self, wall: f64, cpu: Option<f64>) -> bool {
        let mut crossed = false;
        if self.wall.is_some_and(|l| wall >= l) {
            self.wall = None;
            crossed = true;
        }
        if let Some(cpu) = cpu
            && self.cpu.is_some_and(|l| cpu >= l)
        {
            self.cpu = None;
            crossed = true;
        }
        crossed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_budgets_ask_for_one_write_when_each_is_crossed() {
        use crate::api::{CPU_SECONDS, WALL_SECONDS};
        let item: Counters = [(WALL_SECONDS.to_owned(), 3.0)].into();
        let queue: Counters = [
            (WALL_SECONDS.to_owned(), 100.0),
            (CPU_SECONDS.to_owned(), 2.0),
            ("tokens".to_owned(), 5.0),
        ]
        .into();
        // The item's own wall limit wins over the queue's; the CPU limit is the queue's.
        let mut w = TimeBudgetWatch::new(&item, &queue);
        assert!(!w.crossed(2.9, Some(1.9)));
        assert!(
            !w.needs_cpu(0.5, 2.0),
            "2 cores cannot use 2 CPU-s in 0.5 s"
        );
        assert!(w.needs_cpu(1.0, 2.0));
        assert!(w.crossed(3.0, None), "wall crossed");
        assert!(!w.crossed(4.0, None), "once");
        assert!(w.crossed(4.0, Some(2.0)), "CPU crossed");
        assert!(!w.crossed(9.0, Some(9.0)), "nothing left to watch");
        // No time budget: nothing to watch, no CPU to measure.
        let mut none = TimeBudgetWatch::new(&Counters::new(), &Counters::new());
        assert!(!none.needs_cpu(1e9, 64.0));
        assert!(!none.crossed(1e9, Some(1e9)));
        // Nonsense limits are ignored, not crossed at once.
        let bad: Counters = [
            (WALL_SECONDS.to_owned(), 0.0),
            (CPU_SECONDS.to_owned(), f64::NAN),
        ]
        .into();
        assert!(!TimeBudgetWatch::new(&bad, &Counters::new()).crossed(1.0, Some(1.0)));
    }
    use crate::api::{Claim, MAX_RESULT_BYTES, Phase, WorkItemSpec, WorkItemStatus};
    use jiff::Timestamp;

    #[test]
    fn prechecks_start_when_most_recent_claims_are_lost_and_stop_when_they_win() {
        let mut c = 0.0;
        for _ in 0..2 {
            c = contention_after(c, true);
        }
        assert!(
            !precheck_claims(c, PRECHECK_ABOVE_CONTENTION),
            "two losses are no pattern: {c}"
        );
        for _ in 0..3 {
            c = contention_after(c, true);
        }
        assert!(
            precheck_claims(c, PRECHECK_ABOVE_CONTENTION),
            "five in a row are: {c}"
        );
        // One loss in ten (10 agents lose fewer) never switches them on.
        let mut settled = 0.0;
        for i in 0..200 {
            settled = contention_after(settled, i % 10 == 0);
            assert!(
                !precheck_claims(settled, PRECHECK_ABOVE_CONTENTION),
                "{settled} after claim {i}"
            );
        }
        // Winning again switches them off within ten claims.
        for _ in 0..8 {
            c = contention_after(c, false);
        }
        assert!(!precheck_claims(c, PRECHECK_ABOVE_CONTENTION), "{c}");
        assert!(precheck_claims(0.0, 0.0), "0: always");
        assert!(!precheck_claims(1.0, 1.0), "1: never");
    }
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
    use serde_json::json;

    fn state(lines: &[&str]) -> ReportState {
        let mut s = ReportState::default();
        for l in lines {
            s.line(l.as_bytes());
        }
        s
    }

    #[test]
    fn exit_zero_succeeds_with_the_result() {
        let (e, r) = ending(Exit::Code(0), &state(&[r#"{"result": {"a": 1}}"#]), "");
        assert_eq!(e.kind, OutcomeKind::Succeeded);
        assert_eq!(r, Some(json!({"a": 1})));
    }

    #[test]
    fn oversized_result_fails_permanently_with_a_clear_message() {
        let big = format!(
            r#"{{"result": {{"blob": "{}"}}}}"#,
            "x".repeat(MAX_RESULT_BYTES)
        );
        let (e, r) = ending(Exit::Code(0), &state(&[&big]), "");
        assert_eq!(e.kind, OutcomeKind::FailedPermanently);
        assert_eq!(e.reason.as_deref(), Some("ResultTooLarge"));
        assert!(e.message.unwrap().contains(&MAX_RESULT_BYTES.to_string()));
        assert_eq!(r, None);
        let (e, _) = ending(Exit::Code(0), &state(&[r#"{"result": "text"}"#]), "");
        assert_eq!(e.reason.as_deref(), Some("InvalidResult"));
    }

    #[test]
    fn nonzero_exit_is_retryable_with_the_last_stderr_line() {
        let (e, _) = ending(Exit::Code(3), &ReportState::default(), "boom");
        assert_eq!(
            (e.kind, e.reason.as_deref()),
            (OutcomeKind::Failed, Some("ExitCode"))
        );
        assert_eq!(e.message.as_deref(), Some("exit code 3: boom"));
        let (e, _) = ending(Exit::Signal(9), &ReportState::default(), "");
        assert_eq!(e.message.as_deref(), Some("killed by signal 9"));
    }

    #[test]
    fn a_fail_report_decides() {
        let (e, _) = ending(
            Exit::Code(1),
            &state(&[r#"{"fail": {"reason": "BadInput"}}"#]),
            "",
        );
        assert_eq!(
            (e.kind, e.reason.as_deref()),
            (OutcomeKind::FailedPermanently, Some("BadInput"))
        );
        let (e, _) = ending(
            Exit::Code(0),
            &state(&[r#"{"fail": {"reason": "Flaky", "retryable": true}}"#]),
            "",
        );
        assert_eq!(e.kind, OutcomeKind::Failed);
    }

    fn holding(reason: &str, message: &str, condition_at: i64) -> WorkItem {
        let mut wi = WorkItem::new("x", WorkItemSpec::default());
        wi.status = Some(WorkItemStatus {
            claim: Some(Claim {
                agent: "a".into(),
                epoch: 1,
                acquired_at: Some(Time(Timestamp::from_second(1000).unwrap())),
                ..Default::default()
            }),
            conditions: vec![Condition {
                type_: conditions::CANCEL_REQUESTED.into(),
                status: "True".into(),
                reason: reason.into(),
                message: message.into(),
                last_transition_time: Time(Timestamp::from_second(condition_at).unwrap()),
                observed_generation: None,
            }],
            ..Default::default()
        });
        wi
    }

    #[test]
    fn stops_end_as_the_supervisor_asked() {
        let e = stop_requested(&holding("Stalled", "retry: no progress for 300s", 1005)).unwrap();
        assert_eq!(
            (e.kind, e.reason.as_deref()),
            (OutcomeKind::Failed, Some("Stalled"))
        );
        let e = stop_requested(&holding("Violation", "escalate: pii", 1005)).unwrap();
        assert_eq!(
            (e.kind, e.reason.as_deref()),
            (OutcomeKind::Cancelled, Some("Escalated"))
        );
        let e = stop_requested(&holding("ByHand", "please stop", 1005)).unwrap();
        assert_eq!(
            (e.kind, e.reason.as_deref()),
            (OutcomeKind::Cancelled, Some("ByHand"))
        );
    }

    #[test]
    fn a_stale_or_false_condition_does_not_stop() {
        assert_eq!(
            stop_requested(&holding("Stalled", "retry: x", 900)),
            None,
            "left from an earlier attempt"
        );
        assert_eq!(stop_requested(&holding("ByHand", "x", 900)), None);
        let mut off = holding("ByHand", "x", 1005);
        off.status.as_mut().unwrap().conditions[0].status = "False".into();
        assert_eq!(stop_requested(&off), None);
    }

    #[test]
    fn spec_cancel_stops() {
        let mut wi = WorkItem::new("x", WorkItemSpec::default());
        wi.spec.cancel = true;
        let e = stop_requested(&wi).unwrap();
        assert_eq!(
            (e.kind, e.reason.as_deref()),
            (OutcomeKind::Cancelled, Some("Cancelled"))
        );
    }

    #[test]
    fn a_lapse_hands_the_item_back_as_a_retryable_failure() {
        let e = lease_lost(None, Duration::from_secs(6));
        assert_eq!(
            (e.kind, e.reason.as_deref()),
            (OutcomeKind::Failed, Some(LEASE_LOST))
        );
        let m = e.message.unwrap();
        assert!(
            m.contains("lease (6s) lapsed") && m.contains("retry"),
            "{m}"
        );
    }

    #[test]
    fn a_lapse_keeps_the_ending_a_stop_under_way_asked_for() {
        let asked = Ending::new(OutcomeKind::Cancelled, "Escalated", "escalate: pii");
        assert_eq!(
            lease_lost(Some(asked.clone()), Duration::from_secs(6)),
            asked
        );
        let drained = Ending::new(OutcomeKind::Released, "Drained", "stopping");
        assert_eq!(
            lease_lost(Some(drained.clone()), Duration::from_secs(6)),
            drained
        );
    }

    fn claimed(agent: &str, epoch: i64, phase: Phase) -> WorkItem {
        let mut wi = WorkItem::new("x", WorkItemSpec::default());
        wi.status = Some(WorkItemStatus {
            phase: Some(phase),
            claim: Some(Claim {
                agent: agent.into(),
                epoch,
                ..Default::default()
            }),
            ..Default::default()
        });
        wi
    }

    #[test]
    fn writing_goes_on_while_the_claim_may_still_be_ours() {
        let fence = Fence {
            agent: "a".into(),
            epoch: 3,
        };
        let ours = claimed("a", 3, Phase::Running);
        assert_eq!(give_up_writing(Some(&ours), false, &fence, None), None);
        assert_eq!(
            give_up_writing(None, false, &fence, None),
            None,
            "no view: try"
        );
        assert_eq!(
            give_up_writing(Some(&claimed("a", 2, Phase::Queued)), false, &fence, None),
            None,
            "a view from before our claim is no news"
        );
        assert_eq!(
            give_up_writing(Some(&ours), false, &fence, Some(Duration::from_secs(4))),
            None,
            "draining, within the grace"
        );
    }

    #[test]
    fn writing_stops_once_the_item_moved_on_or_the_drain_grace_is_used() {
        let fence = Fence {
            agent: "a".into(),
            epoch: 3,
        };
        for moved in [
            claimed("a", 4, Phase::Running),
            claimed("b", 4, Phase::Running),
            claimed("a", 3, Phase::Backoff),
            claimed("a", 3, Phase::Succeeded),
        ] {
            assert_eq!(
                give_up_writing(Some(&moved), false, &fence, None),
                Some(GiveUp::Moved),
                "{:?}",
                moved.status
            );
        }
        assert_eq!(
            give_up_writing(Some(&claimed("a", 3, Phase::Running)), true, &fence, None),
            Some(GiveUp::Moved),
            "the held-items watch saw it leave us after our claim"
        );
        assert_eq!(
            give_up_writing(
                Some(&claimed("a", 3, Phase::Running)),
                false,
                &fence,
                Some(DRAIN_WRITE_GRACE)
            ),
            Some(GiveUp::Draining)
        );
    }
}
