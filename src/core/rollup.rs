//! Request and queue status from item phases.
//!
//! A request's phase:
//!
//! | Items | Request phase |
//! |---|---|
//! | none yet | Pending |
//! | all Succeeded | Succeeded |
//! | some still active (Pending, Queued, Running, Backoff, Held), all Pending or Queued | Pending |
//! | some still active, otherwise | Running |
//! | all finished, request cancelled | Cancelled |
//! | all finished, any Failed or DeadLettered | Failed |
//! | all finished, the rest Cancelled or Succeeded | Cancelled |
//!
//! A failure does not end the request while other items still run: dependents of the
//! failed item fail at once (`DependencyFailed`), but independent branches finish, as
//! in Argo's DAGs, so their results are not thrown away. The request says Failed when
//! nothing else can run, and lists the failed items from the first failure on, so a
//! person sees the problem early. A redriven dead letter makes it Running again.
//!
//! [`PhaseCounts`] can be kept incrementally (`add`/`remove`), so a scheduler that
//! follows a 50 000-item queue updates counts in O(1) per change.

use jiff::Timestamp;

use super::seconds_since;
use super::waiting::truncate;
/// At most this many names in `status.failedItems` (the CRD's `maxItems`).
pub use crate::api::MAX_FAILED_ITEMS;
use crate::api::{Phase, RequestPhase, WorkQueueStatus, WorkRequestStatus};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PhaseCounts {
    pub pending: i64,
    pub queued: i64,
    pub running: i64,
    pub backoff: i64,
    pub held: i64,
    pub succeeded: i64,
    pub failed: i64,
    pub dead_lettered: i64,
    pub cancelled: i64,
}

impl PhaseCounts {
    pub fn of(phases: impl IntoIterator<Item = Phase>) -> Self {
        let mut c = Self::default();
        for p in phases {
            c.add(p);
        }
        c
    }

    fn slot(&mut self, p: Phase) -> &mut i64 {
        match p {
            Phase::Pending => &mut self.pending,
            Phase::Queued => &mut self.queued,
            Phase::Running => &mut self.running,
            Phase::Backoff => &mut self.backoff,
            Phase::Held => &mut self.held,
            Phase::Succeeded => &mut self.succeeded,
            Phase::Failed => &mut self.failed,
            Phase::DeadLettered => &mut self.dead_lettered,
            Phase::Cancelled => &mut self.cancelled,
        }
    }

    pub fn get(&self, p: Phase) -> i64 {
        let mut c = *self;
        *c.slot(p)
    }

    pub fn add(&mut self, p: Phase) {
        *self.slot(p) += 1;
    }

    /// Never goes below zero, so a missed event cannot make a count negative.
    pub fn remove(&mut self, p: Phase) {
        let s = self.slot(p);
        *s = (*s - 1).max(0);
    }

    pub fn total(&self) -> i64 {
        Phase::ALL.iter().map(|p| self.get(*p)).sum()
    }

    /// Items that may still run: Pending, Queued, Running, Backoff, Held.
    pub fn active(&self) -> i64 {
        self.pending + self.queued + self.running + self.backoff + self.held
    }

    pub fn write_queue(&self, s: &mut WorkQueueStatus) {
        s.pending = self.pending;
        s.queued = self.queued;
        s.running = self.running;
        s.backoff = self.backoff;
        s.held = self.held;
        s.succeeded = self.succeeded;
        s.failed = self.failed;
        s.dead_lettered = self.dead_lettered;
        s.cancelled = self.cancelled;
    }

    pub fn write_request(&self, s: &mut WorkRequestStatus) {
        s.total = self.total();
        s.pending = self.pending;
        s.queued = self.queued;
        s.running = self.running;
        s.backoff = self.backoff;
        s.held = self.held;
        s.succeeded = self.succeeded;
        s.failed = self.failed;
        s.dead_lettered = self.dead_lettered;
        s.cancelled = self.cancelled;
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct RequestRollup {
    pub counts: PhaseCounts,
    pub phase: RequestPhase,
    /// "succeeded/total".
    pub progress: String,
    /// Failed and DeadLettered items, sorted, at most [`MAX_FAILED_ITEMS`].
    pub failed_items: Vec<String>,
    /// One line for a condition, naming failed items when there are any.
    pub message: String,
}

impl RequestRollup {
    /// Writes phase, counts, progress and failed items into the request's status.
    pub fn write(&self, s: &mut WorkRequestStatus) {
        self.counts.write_request(s);
        s.phase = Some(self.phase);
        s.progress = Some(self.progress.clone());
        s.failed_items = self.failed_items.clone();
    }
}

/// Rolls up a request's items, given as (name, effective phase); `cancel` is the
/// request's `spec.cancel`. See the module table.
pub fn request_rollup<'a>(
    items: impl IntoIterator<Item = (&'a str, Phase)>,
    cancel: bool,
) -> RequestRollup {
    let mut counts = PhaseCounts::default();
    let mut failed = Vec::new();
    for (name, phase) in items {
        counts.add(phase);
        if matches!(phase, Phase::Failed | Phase::DeadLettered) {
            failed.push(name);
        }
    }
    failed.sort_unstable();
    let n_failed = failed.len();
    let total = counts.total();
    let phase = if total == 0 {
        RequestPhase::Pending
    } else if counts.succeeded == total {
        RequestPhase::Succeeded
    } else if counts.active() > 0 {
        if counts.pending + counts.queued == total {
            RequestPhase::Pending
        } else {
            RequestPhase::Running
        }
    } else if cancel || n_failed == 0 {
        RequestPhase::Cancelled
    } else {
        RequestPhase::Failed
    };
    let progress = format!("{}/{}", counts.succeeded, total);
    let message = if n_failed > 0 {
        let shown = failed
            .iter()
            .take(3)
            .copied()
            .collect::<Vec<_>>()
            .join(", ");
        let more = if n_failed > 3 {
            format!(" and {} more", n_failed - 3)
        } else {
            String::new()
        };
        truncate(
            format!("{n_failed} of {total} items failed: {shown}{more}"),
            200,
        )
    } else {
        format!("{progress} items succeeded")
    };
    RequestRollup {
        counts,
        phase,
        progress,
        failed_items: failed
            .into_iter()
            .take(MAX_FAILED_ITEMS)
            .map(Into::into)
            .collect(),
        message,
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueRollup {
    pub counts: PhaseCounts,
    /// Seconds the longest-waiting Queued item has waited; 0 when none.
    pub oldest_queued_seconds: i64,
}

impl QueueRollup {
    pub fn write(&self, s: &mut WorkQueueStatus) {
        self.counts.write_queue(s);
        s.oldest_queued_seconds = self.oldest_queued_seconds;
    }
}

/// Rolls up a queue's items, given as (effective phase, when it became claimable; see
/// `ordering::queued_since`).
pub fn queue_rollup(
    items: impl IntoIterator<Item = (Phase, Option<Timestamp>)>,
    now: Timestamp,
) -> QueueRollup {
    let mut r = QueueRollup::default();
    for (phase, since) in items {
        r.counts.add(phase);
        if phase == Phase::Queued
            && let Some(since) = since
        {
            r.oldest_queued_seconds = r.oldest_queued_seconds.max(seconds_since(since, now));
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::testutil::t;
    use Phase::*;

    fn roll(items: &[(&str, Phase)], cancel: bool) -> RequestRollup {
        request_rollup(items.iter().copied(), cancel)
    }

    #[test]
    fn counts_add_remove_and_total() {
        let mut c = PhaseCounts::of(Phase::ALL);
        assert_eq!(c.total(), 9);
        for p in Phase::ALL {
            assert_eq!(c.get(p), 1, "{p}");
        }
        assert_eq!(c.active(), 5);
        c.remove(Queued);
        c.remove(Queued);
        assert_eq!(c.queued, 0, "never negative");
        c.add(Running);
        assert_eq!(c.running, 2);
    }

    #[test]
    fn counts_are_written_to_status() {
        let c = PhaseCounts::of([Queued, Queued, Running, DeadLettered]);
        let mut q = WorkQueueStatus::default();
        c.write_queue(&mut q);
        assert_eq!(
            (q.queued, q.running, q.dead_lettered, q.pending),
            (2, 1, 1, 0)
        );
        let mut r = WorkRequestStatus::default();
        c.write_request(&mut r);
        assert_eq!(
            (r.total, r.queued, r.running, r.dead_lettered),
            (4, 2, 1, 1)
        );
    }

    #[test]
    fn empty_request_is_pending() {
        let r = roll(&[], false);
        assert_eq!(r.phase, RequestPhase::Pending);
        assert_eq!(r.progress, "0/0");
    }

    #[test]
    fn all_succeeded() {
        let r = roll(&[("a", Succeeded), ("b", Succeeded)], false);
        assert_eq!(r.phase, RequestPhase::Succeeded);
        assert_eq!(r.progress, "2/2");
        assert_eq!(r.message, "2/2 items succeeded");
        assert!(r.failed_items.is_empty());
    }

    #[test]
    fn pending_until_something_starts() {
        assert_eq!(
            roll(&[("a", Pending), ("b", Queued)], false).phase,
            RequestPhase::Pending
        );
        assert_eq!(
            roll(&[("a", Running), ("b", Pending)], false).phase,
            RequestPhase::Running
        );
        assert_eq!(
            roll(&[("a", Succeeded), ("b", Queued)], false).phase,
            RequestPhase::Running
        );
        assert_eq!(roll(&[("a", Backoff)], false).phase, RequestPhase::Running);
        assert_eq!(roll(&[("a", Held)], false).phase, RequestPhase::Running);
    }

    #[test]
    fn failure_is_listed_at_once_but_the_request_fails_when_nothing_can_run() {
        let r = roll(&[("b", Failed), ("a", Running)], false);
        assert_eq!(r.phase, RequestPhase::Running);
        assert_eq!(r.failed_items, ["b"]);
        assert_eq!(r.message, "1 of 2 items failed: b");

        let r = roll(
            &[("b", Failed), ("a", Succeeded), ("c", DeadLettered)],
            false,
        );
        assert_eq!(r.phase, RequestPhase::Failed);
        assert_eq!(r.failed_items, ["b", "c"]);
        assert_eq!(r.progress, "1/3");
    }

    #[test]
    fn cancelled_requests_and_items() {
        assert_eq!(
            roll(&[("a", Cancelled), ("b", Succeeded)], false).phase,
            RequestPhase::Cancelled
        );
        assert_eq!(
            roll(&[("a", Cancelled), ("b", Failed)], true).phase,
            RequestPhase::Cancelled,
            "the user's cancel explains the end"
        );
        assert_eq!(
            roll(&[("a", Cancelled), ("b", Failed)], false).phase,
            RequestPhase::Failed
        );
        assert_eq!(
            roll(&[("a", Running), ("b", Cancelled)], true).phase,
            RequestPhase::Running,
            "still stopping"
        );
    }

    #[test]
    fn failed_list_is_bounded_and_message_short() {
        let names: Vec<String> = (0..50).map(|i| format!("item-{i:02}")).collect();
        let items: Vec<(&str, Phase)> = names.iter().map(|n| (n.as_str(), Failed)).collect();
        let r = request_rollup(items, false);
        assert_eq!(r.failed_items.len(), MAX_FAILED_ITEMS);
        assert_eq!(r.failed_items[0], "item-00");
        assert_eq!(
            r.message,
            "50 of 50 items failed: item-00, item-01, item-02 and 47 more"
        );
    }

    #[test]
    fn request_rollup_writes_status() {
        let r = roll(&[("a", Succeeded), ("b", Failed)], false);
        let mut s = WorkRequestStatus::default();
        r.write(&mut s);
        assert_eq!(s.phase, Some(RequestPhase::Failed));
        assert_eq!(s.progress.as_deref(), Some("1/2"));
        assert_eq!(s.failed_items, ["b"]);
        assert_eq!((s.total, s.succeeded, s.failed), (2, 1, 1));
    }

    #[test]
    fn queue_rollup_counts_and_oldest() {
        let r = queue_rollup(
            [
                (Queued, Some(t(40))),
                (Queued, Some(t(10))),
                (Running, Some(t(0))),
                (Queued, None),
                (Backoff, Some(t(0))),
            ],
            t(100),
        );
        assert_eq!(r.oldest_queued_seconds, 90, "only Queued items count");
        assert_eq!(
            (r.counts.queued, r.counts.running, r.counts.backoff),
            (3, 1, 1)
        );
        let mut s = WorkQueueStatus::default();
        r.write(&mut s);
        assert_eq!((s.queued, s.oldest_queued_seconds), (3, 90));
        assert_eq!(queue_rollup([], t(0)).oldest_queued_seconds, 0);
        assert_eq!(
            queue_rollup([(Queued, Some(t(200)))], t(100)).oldest_queued_seconds,
            0,
            "clock skew"
        );
    }
}
