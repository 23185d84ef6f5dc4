//! The scaling decision, as pure functions of the pool's spec, its queues' depth, its
//! pods and the time: how many agents the work calls for ([`target`]), when a lower
//! count takes effect ([`stabilize`]), and which pods to create and delete ([`plan`]).
//!
//! The invariant that matters most lives in [`plan`]: a busy agent (one holding a
//! Running WorkItem) is never chosen for deletion to scale in.

use jiff::{SignedDuration, Timestamp};

use crate::api::{AgentPoolSpec, EmptyQueuePolicy};

/// Work in the pool's queues, summed over the queues it pulls from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Depth {
    pub queued: i64,
    pub running: i64,
    /// The longest `cancelGraceSeconds` of these queues (not a depth, but read from the
    /// same objects: the agent pods' termination grace must cover it).
    pub cancel_grace_seconds: i64,
}

impl Depth {
    pub fn total(&self) -> i64 {
        self.queued.max(0).saturating_add(self.running.max(0))
    }

    pub fn plus(self, other: Depth) -> Depth {
        Depth {
            queued: self.queued.saturating_add(other.queued.max(0)),
            running: self.running.saturating_add(other.running.max(0)),
            cancel_grace_seconds: self.cancel_grace_seconds.max(other.cancel_grace_seconds),
        }
    }
}

/// How the pool's size is chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `maxReplicas` set: Triad scales on queue depth between `min` and `max`, where
    /// `min` is the higher of `minReplicas` and `spec.replicas`: the scale subresource
    /// (`kubectl scale`, HPA, KEDA) sets a floor under the queue-driven count.
    Auto {
        min: i32,
        max: i32,
        items_per_agent: i32,
    },
    /// `maxReplicas` unset: `spec.replicas` (the scale subresource) decides, so
    /// `kubectl scale`, HPA and KEDA drive the pool.
    Manual { replicas: i32 },
}

/// Default agents when neither `maxReplicas` nor `replicas` is set.
pub const DEFAULT_REPLICAS: i32 = 1;

pub fn mode(spec: &AgentPoolSpec) -> Mode {
    match spec.max_replicas {
        Some(max) => {
            let max = max.max(0);
            // Like KEDA, a queue-driven pool may sleep at zero unless told otherwise.
            let floor = spec
                .min_replicas
                .unwrap_or(0)
                .max(spec.replicas.unwrap_or(0));
            Mode::Auto {
                min: floor.clamp(0, max),
                max,
                items_per_agent: spec.scaling.items_per_agent.max(1),
            }
        }
        None => Mode::Manual {
            replicas: spec.replicas.unwrap_or(DEFAULT_REPLICAS).max(0),
        },
    }
}

/// The agents the work calls for right now.
///
/// - Auto: `clamp(ceil((queued + running) / itemsPerAgent), min, max)` with `min` the
///   higher of `minReplicas` and `spec.replicas`, so an empty pool with neither set
///   sleeps at zero and wakes with the first item, and `kubectl scale` or an HPA keeps at
///   least its count running.
/// - Manual: `spec.replicas`; with `emptyQueuePolicy: ScaleDown` and every queue empty,
///   `minReplicas` (default 0) instead.
pub fn target(spec: &AgentPoolSpec, depth: Depth) -> i32 {
    match mode(spec) {
        Mode::Auto {
            min,
            max,
            items_per_agent,
        } => {
            let (total, per) = (depth.total(), i64::from(items_per_agent));
            let need = total / per + i64::from(total % per != 0);
            need.clamp(i64::from(min), i64::from(max)) as i32
        }
        Mode::Manual { replicas } => {
            if scales_down_when_empty(spec) && depth.total() == 0 {
                spec.min_replicas.unwrap_or(0).clamp(0, replicas)
            } else {
                replicas
            }
        }
    }
}

fn scales_down_when_empty(spec: &AgentPoolSpec) -> bool {
    spec.empty_queue_policy == EmptyQueuePolicy::ScaleDown
}

/// How long a lower target must hold before it takes effect. An explicit `spec.replicas`
/// (a person, HPA or KEDA) takes effect at once: they do their own stabilization.
pub fn scale_down_delay(spec: &AgentPoolSpec, depth: Depth) -> SignedDuration {
    let configured = SignedDuration::from_secs(spec.scaling.scale_down_delay_seconds.max(0));
    match mode(spec) {
        Mode::Auto { .. } => configured,
        Mode::Manual { .. } if scales_down_when_empty(spec) && depth.total() == 0 => configured,
        Mode::Manual { .. } => SignedDuration::ZERO,
    }
}

/// The range the desired count must lie in; a remembered count outside it (the spec
/// changed) is clamped at once.
pub fn bounds(spec: &AgentPoolSpec) -> (i32, i32) {
    match mode(spec) {
        Mode::Auto { min, max, .. } => (min, max),
        Mode::Manual { replicas } => (0, replicas),
    }
}

/// What the controller remembers between reconciles of one pool (in memory: after a
/// restart or failover the window starts again, so a scale-down can only come later,
/// never earlier).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScaleState {
    /// The desired count last decided.
    pub desired: i32,
    /// While the target is below `desired`: since when, and the highest target seen
    /// since then (what the pool may shrink to once the delay has passed).
    pub lower_since: Option<(Timestamp, i32)>,
}

/// Scale up at once; scale down only after the target has stayed below the current
/// count for `delay`, and then only to the highest target seen during that time.
///
/// `previous` is the remembered state (`None` after a restart: then `fallback` — the
/// desired count in the pool's status — is the current count, and the window starts now).
pub fn stabilize(
    previous: Option<ScaleState>,
    fallback: i32,
    target: i32,
    (lo, hi): (i32, i32),
    delay: SignedDuration,
    now: Timestamp,
) -> ScaleState {
    let hi = hi.max(lo);
    let target = target.clamp(lo, hi);
    let current = previous.map_or(fallback, |p| p.desired).clamp(lo, hi);
    if target >= current {
        return ScaleState {
            desired: target,
            lower_since: None,
        };
    }
    let (since, peak) = match previous.and_then(|p| p.lower_since) {
        Some((since, peak)) => (since, peak.max(target).min(current)),
        None => (now, target),
    };
    if now.duration_since(since) >= delay {
        ScaleState {
            desired: peak,
            // The target is only known to have been this low since now.
            lower_since: (target < peak).then_some((now, target)),
        }
    } else {
        ScaleState {
            desired: current,
            lower_since: Some((since, peak)),
        }
    }
}

/// A pod's phase, as far as scaling cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodPhase {
    Pending,
    Running,
    Succeeded,
    Failed,
    Unknown,
}

impl PodPhase {
    pub fn parse(phase: Option<&str>) -> Self {
        match phase {
            Some("Running") => Self::Running,
            Some("Succeeded") => Self::Succeeded,
            Some("Failed") => Self::Failed,
            Some("Unknown") => Self::Unknown,
            _ => Self::Pending,
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed)
    }
}

/// One of the pool's pods, as the plan sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodState {
    pub name: String,
    pub created: Option<Timestamp>,
    pub phase: PodPhase,
    /// Has a deletionTimestamp (or we just deleted it): no longer counted.
    pub terminating: bool,
    pub ready: bool,
    /// Holds a Running WorkItem.
    pub busy: bool,
    /// Built from the pool's current template (false: an older template, to replace).
    pub current: bool,
}

impl PodState {
    /// Counts towards the pool's replicas.
    pub fn active(&self) -> bool {
        !self.terminating && !self.phase.is_terminal()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeleteReason {
    /// Exited 0 (a Mortal agent after `maxItems`, or `emptyQueuePolicy: Exit`).
    Completed,
    /// The pod failed; a replacement is created.
    Failed,
    /// More agents than desired.
    ScaleIn,
    /// Built from an older template; a replacement is created.
    Outdated,
}

impl DeleteReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::ScaleIn => "scale in",
            Self::Outdated => "outdated template",
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub delete: Vec<(String, DeleteReason)>,
    pub create: i32,
    /// Agents above the desired count that stay because they are busy.
    pub waiting_for_busy: i32,
}

/// At most this many agents may be unavailable while outdated ones are replaced.
pub fn max_unavailable(desired: i32) -> i32 {
    (desired / 4).max(1)
}

/// Which pods to delete and how many to create so that `desired` agents run.
///
/// - Finished pods (Succeeded, Failed) are deleted and replaced.
/// - Scale in removes idle pods only: unready ones first (they serve no one), then the
///   newest. Busy pods are never removed to scale in; if only busy pods are in excess
///   the pool waits for them to finish (`waiting_for_busy`).
/// - Outdated idle pods are replaced: unready ones at once, ready ones while fewer than
///   `max_unavailable` agents are unavailable.
/// - Missing pods are created when `can_create` (the template is valid, and with
///   `emptyQueuePolicy: Exit` only while there is queued work).
pub fn plan(pods: &[PodState], desired: i32, can_create: bool, max_unavailable: i32) -> Plan {
    let desired = desired.max(0);
    let mut out = Plan::default();
    for pod in pods.iter().filter(|p| !p.terminating) {
        match pod.phase {
            PodPhase::Succeeded => out.delete.push((pod.name.clone(), DeleteReason::Completed)),
            PodPhase::Failed => out.delete.push((pod.name.clone(), DeleteReason::Failed)),
            _ => {}
        }
    }

    let mut active: Vec<&PodState> = pods.iter().filter(|p| p.active()).collect();
    let excess = active.len() as i64 - i64::from(desired);
    if excess > 0 {
        let mut idle: Vec<&PodState> = active.iter().copied().filter(|p| !p.busy).collect();
        // Unready first, then newest first; names break ties so the choice is stable.
        idle.sort_by(|a, b| {
            a.ready
                .cmp(&b.ready)
                .then(b.created.cmp(&a.created))
                .then(a.name.cmp(&b.name))
        });
        let take = idle.len().min(excess as usize);
        let chosen: Vec<String> = idle[..take].iter().map(|p| p.name.clone()).collect();
        out.waiting_for_busy = (excess as usize - take) as i32;
        active.retain(|p| !chosen.contains(&p.name));
        out.delete
            .extend(chosen.into_iter().map(|n| (n, DeleteReason::ScaleIn)));
    }

    // Replace outdated idle agents without dropping below the availability budget.
    let mut unavailable = active.iter().filter(|p| !p.ready).count() as i32;
    let mut outdated: Vec<&PodState> = active
        .iter()
        .copied()
        .filter(|p| !p.current && !p.busy)
        .collect();
    outdated.sort_by(|a, b| a.ready.cmp(&b.ready).then(a.created.cmp(&b.created)));
    let mut replaced = Vec::new();
    for pod in outdated {
        if pod.ready {
            if unavailable >= max_unavailable {
                break;
            }
            unavailable += 1;
        }
        replaced.push(pod.name.clone());
    }
    active.retain(|p| !replaced.contains(&p.name));
    out.delete
        .extend(replaced.into_iter().map(|n| (n, DeleteReason::Outdated)));

    if can_create {
        out.create = (i64::from(desired) - active.len() as i64).max(0) as i32;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_893_456_000 + s).unwrap()
    }

    fn spec(v: serde_json::Value) -> AgentPoolSpec {
        let mut base = serde_json::json!({"queues": [{"name": "q"}], "template": {}});
        base.as_object_mut()
            .unwrap()
            .extend(v.as_object().unwrap().clone());
        serde_json::from_value(base).unwrap()
    }

    fn depth(queued: i64, running: i64) -> Depth {
        Depth {
            queued,
            running,
            ..Depth::default()
        }
    }

    #[test]
    fn manual_mode_follows_spec_replicas_defaulting_to_one() {
        assert_eq!(target(&spec(serde_json::json!({})), depth(100, 0)), 1);
        assert_eq!(
            target(&spec(serde_json::json!({"replicas": 4})), depth(0, 0)),
            4
        );
        assert_eq!(
            target(&spec(serde_json::json!({"replicas": 0})), depth(50, 0)),
            0
        );
        assert_eq!(
            mode(&spec(serde_json::json!({"replicas": 3, "minReplicas": 1}))),
            Mode::Manual { replicas: 3 }
        );
    }

    #[test]
    fn manual_mode_with_scale_down_policy_sleeps_when_every_queue_is_empty() {
        let s = spec(serde_json::json!({"replicas": 4, "emptyQueuePolicy": "ScaleDown"}));
        assert_eq!(target(&s, depth(0, 0)), 0);
        assert_eq!(target(&s, depth(1, 0)), 4);
        assert_eq!(target(&s, depth(0, 1)), 4, "running work keeps its agents");
        let s = spec(
            serde_json::json!({"replicas": 4, "minReplicas": 2, "emptyQueuePolicy": "ScaleDown"}),
        );
        assert_eq!(target(&s, depth(0, 0)), 2);
        assert_eq!(
            scale_down_delay(&s, depth(0, 0)),
            SignedDuration::from_secs(30)
        );
        assert_eq!(scale_down_delay(&s, depth(3, 0)), SignedDuration::ZERO);
    }

    #[test]
    fn auto_mode_divides_queued_plus_running_by_items_per_agent_and_clamps() {
        let s = spec(
            serde_json::json!({"minReplicas": 1, "maxReplicas": 5, "scaling": {"itemsPerAgent": 4}}),
        );
        let cases = [
            (0, 0, 1),
            (1, 0, 1),
            (4, 0, 1),
            (5, 0, 2),
            (4, 4, 2),
            (0, 9, 3),
            (16, 0, 4),
            (17, 0, 5),
            (1000, 1000, 5),
            (-5, 0, 1),
        ];
        for (queued, running, want) in cases {
            assert_eq!(
                target(&s, depth(queued, running)),
                want,
                "queued {queued} running {running}"
            );
        }
    }

    #[test]
    fn auto_mode_scales_to_zero_only_when_allowed_and_wakes_on_the_first_item() {
        let zero = spec(serde_json::json!({"maxReplicas": 3}));
        assert_eq!(target(&zero, depth(0, 0)), 0, "minReplicas defaults to 0");
        assert_eq!(target(&zero, depth(1, 0)), 1);
        let one = spec(serde_json::json!({"minReplicas": 1, "maxReplicas": 3}));
        assert_eq!(target(&one, depth(0, 0)), 1);
    }

    #[test]
    fn auto_mode_takes_spec_replicas_as_a_floor() {
        // `kubectl scale --replicas=2` (or an HPA) on a queue-driven pool: at least 2.
        let floor = spec(serde_json::json!({"replicas": 2, "maxReplicas": 4}));
        assert_eq!(
            target(&floor, depth(0, 0)),
            2,
            "empty queues keep the floor"
        );
        let per = i64::from(spec(serde_json::json!({})).scaling.items_per_agent);
        assert_eq!(
            target(&floor, depth(3 * per, 0)),
            3,
            "work above the floor scales up"
        );
        assert_eq!(target(&floor, depth(100, 0)), 4, "never above maxReplicas");
        assert_eq!(bounds(&floor), (2, 4));
        // The higher of minReplicas and replicas; clamped to maxReplicas.
        let min_wins = spec(serde_json::json!({"replicas": 1, "minReplicas": 2, "maxReplicas": 4}));
        assert_eq!(target(&min_wins, depth(0, 0)), 2);
        let above_max = spec(serde_json::json!({"replicas": 7, "maxReplicas": 3}));
        assert_eq!(target(&above_max, depth(0, 0)), 3);
        assert_eq!(bounds(&above_max), (3, 3));
        // Scaling to 0 lowers the floor back to minReplicas, after the pool's delay.
        let zero = spec(serde_json::json!({"replicas": 0, "maxReplicas": 3}));
        assert_eq!(target(&zero, depth(0, 0)), 0);
        assert_eq!(
            scale_down_delay(&zero, depth(5, 0)),
            SignedDuration::from_secs(30)
        );
    }

    #[test]
    fn auto_mode_tolerates_nonsense_the_api_would_refuse() {
        let s = spec(
            serde_json::json!({"minReplicas": 9, "maxReplicas": 3, "scaling": {"itemsPerAgent": 0}}),
        );
        assert_eq!(
            mode(&s),
            Mode::Auto {
                min: 3,
                max: 3,
                items_per_agent: 1
            }
        );
        assert_eq!(target(&s, depth(i64::MAX, i64::MAX)), 3);
    }

    const DELAY: SignedDuration = SignedDuration::from_secs(10);

    fn st(desired: i32, lower: Option<(i64, i32)>) -> ScaleState {
        ScaleState {
            desired,
            lower_since: lower.map(|(s, p)| (t(s), p)),
        }
    }

    #[test]
    fn stabilize_scales_up_at_once_and_forgets_a_pending_scale_down() {
        assert_eq!(
            stabilize(Some(st(2, Some((0, 1)))), 0, 5, (0, 10), DELAY, t(3)),
            st(5, None)
        );
        assert_eq!(
            stabilize(Some(st(2, Some((0, 1)))), 0, 2, (0, 10), DELAY, t(3)),
            st(2, None),
            "back at the current count ends the window"
        );
    }

    #[test]
    fn stabilize_scales_down_only_after_the_delay_to_the_peak_of_the_window() {
        let s = stabilize(Some(st(5, None)), 0, 1, (0, 10), DELAY, t(0));
        assert_eq!(s, st(5, Some((0, 1))));
        let s = stabilize(Some(s), 0, 3, (0, 10), DELAY, t(4));
        assert_eq!(s, st(5, Some((0, 3))), "peak remembered");
        let s = stabilize(Some(s), 0, 2, (0, 10), DELAY, t(9));
        assert_eq!(s, st(5, Some((0, 3))));
        let s = stabilize(Some(s), 0, 2, (0, 10), DELAY, t(10));
        assert_eq!(
            s,
            st(3, Some((10, 2))),
            "down to the peak; a new window for 2"
        );
        let s = stabilize(Some(s), 0, 2, (0, 10), DELAY, t(20));
        assert_eq!(s, st(2, None));
    }

    #[test]
    fn stabilize_to_zero_after_the_delay() {
        let s = stabilize(Some(st(3, None)), 0, 0, (0, 3), DELAY, t(0));
        assert_eq!(s.desired, 3);
        let s = stabilize(Some(s), 0, 0, (0, 3), DELAY, t(11));
        assert_eq!(s, st(0, None));
    }

    #[test]
    fn stabilize_with_zero_delay_is_immediate() {
        assert_eq!(
            stabilize(Some(st(5, None)), 0, 2, (0, 10), SignedDuration::ZERO, t(0)),
            st(2, None)
        );
    }

    #[test]
    fn stabilize_after_a_restart_starts_from_the_status_and_a_fresh_window() {
        let s = stabilize(None, 4, 1, (0, 10), DELAY, t(100));
        assert_eq!(s, st(4, Some((100, 1))));
        assert_eq!(stabilize(None, 0, 3, (0, 10), DELAY, t(0)), st(3, None));
    }

    #[test]
    fn stabilize_applies_new_bounds_at_once() {
        // maxReplicas lowered from 10 to 3: no waiting.
        assert_eq!(
            stabilize(Some(st(10, None)), 0, 3, (0, 3), DELAY, t(0)),
            st(3, None)
        );
        // minReplicas raised: up at once.
        assert_eq!(
            stabilize(Some(st(0, None)), 0, 0, (2, 5), DELAY, t(0)),
            st(2, None)
        );
    }

    fn pod(name: &str, created: i64) -> PodState {
        PodState {
            name: name.into(),
            created: Some(t(created)),
            phase: PodPhase::Running,
            terminating: false,
            ready: true,
            busy: false,
            current: true,
        }
    }

    fn deleted(plan: &Plan) -> Vec<(&str, DeleteReason)> {
        plan.delete.iter().map(|(n, r)| (n.as_str(), *r)).collect()
    }

    #[test]
    fn plan_creates_missing_agents() {
        assert_eq!(
            plan(&[], 3, true, 1),
            Plan {
                create: 3,
                ..Default::default()
            }
        );
        assert_eq!(plan(&[pod("a", 0)], 3, true, 1).create, 2);
        assert_eq!(plan(&[], 3, false, 1).create, 0, "cannot create");
        assert_eq!(plan(&[pod("a", 0)], 1, true, 1), Plan::default());
    }

    #[test]
    fn plan_scales_in_idle_agents_newest_first_and_unready_before_ready() {
        let pods = [pod("old", 0), pod("mid", 5), pod("new", 9)];
        assert_eq!(
            deleted(&plan(&pods, 1, true, 1)),
            [
                ("new", DeleteReason::ScaleIn),
                ("mid", DeleteReason::ScaleIn)
            ]
        );
        let mut pending = pod("pending-old", -10);
        pending.ready = false;
        pending.phase = PodPhase::Pending;
        let pods = [pod("old", 0), pending, pod("new", 9)];
        assert_eq!(
            deleted(&plan(&pods, 2, true, 1)),
            [("pending-old", DeleteReason::ScaleIn)]
        );
    }

    #[test]
    fn plan_never_deletes_a_busy_agent_to_scale_in() {
        let mut busy = pod("busy", 9);
        busy.busy = true;
        let pods = [pod("idle", 0), busy.clone()];
        let p = plan(&pods, 0, true, 1);
        assert_eq!(deleted(&p), [("idle", DeleteReason::ScaleIn)]);
        assert_eq!(p.waiting_for_busy, 1);
        let p = plan(std::slice::from_ref(&busy), 0, true, 1);
        assert!(p.delete.is_empty());
        assert_eq!(p.waiting_for_busy, 1);
    }

    #[test]
    fn plan_replaces_finished_pods() {
        let mut done = pod("done", 0);
        done.phase = PodPhase::Succeeded;
        done.ready = false;
        let mut failed = pod("failed", 1);
        failed.phase = PodPhase::Failed;
        failed.ready = false;
        let p = plan(&[done, failed, pod("ok", 2)], 3, true, 1);
        assert_eq!(
            deleted(&p),
            [
                ("done", DeleteReason::Completed),
                ("failed", DeleteReason::Failed)
            ]
        );
        assert_eq!(p.create, 2);
    }

    #[test]
    fn plan_ignores_terminating_pods_but_replaces_them() {
        let mut going = pod("going", 0);
        going.terminating = true;
        let p = plan(&[going, pod("ok", 1)], 2, true, 1);
        assert!(p.delete.is_empty());
        assert_eq!(p.create, 1);
    }

    #[test]
    fn plan_rolls_outdated_idle_agents_within_the_unavailability_budget() {
        let mut a = pod("a", 0);
        a.current = false;
        let mut b = pod("b", 1);
        b.current = false;
        let mut c = pod("c", 2);
        c.current = false;
        c.busy = true;
        let p = plan(&[a.clone(), b.clone(), c.clone(), pod("d", 3)], 4, true, 1);
        assert_eq!(
            deleted(&p),
            [("a", DeleteReason::Outdated)],
            "one at a time, oldest first, busy kept"
        );
        assert_eq!(p.create, 1);

        // An unready outdated pod costs no availability: replaced at once.
        let mut unready = b.clone();
        unready.ready = false;
        let p = plan(&[a.clone(), unready], 2, true, 1);
        assert_eq!(deleted(&p), [("b", DeleteReason::Outdated)]);

        // Budget already used up by an unready pod: wait.
        let mut pending = pod("p", 5);
        pending.ready = false;
        let p = plan(&[a, pending], 2, true, 1);
        assert!(p.delete.is_empty());
    }

    #[test]
    fn plan_never_deletes_one_pod_for_two_reasons() {
        let mut a = pod("a", 0);
        a.current = false;
        let p = plan(&[a], 0, false, 1);
        assert_eq!(deleted(&p), [("a", DeleteReason::ScaleIn)]);
    }

    fn arb_pod() -> impl Strategy<Value = PodState> {
        (
            0i64..100,
            prop_oneof![
                Just(PodPhase::Pending),
                Just(PodPhase::Running),
                Just(PodPhase::Succeeded),
                Just(PodPhase::Failed),
                Just(PodPhase::Unknown)
            ],
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(
                |(created, phase, terminating, ready, busy, current)| PodState {
                    name: String::new(),
                    created: Some(t(created)),
                    phase,
                    terminating,
                    ready,
                    busy,
                    current,
                },
            )
    }

    proptest! {
        #[test]
        fn plan_invariants(
            mut pods in proptest::collection::vec(arb_pod(), 0..12),
            desired in 0i32..12,
            can_create in any::<bool>(),
            budget in 1i32..4,
        ) {
            for (i, p) in pods.iter_mut().enumerate() {
                p.name = format!("p{i}");
            }
            let out = plan(&pods, desired, can_create, budget);
            let by_name = |n: &str| pods.iter().find(|p| p.name == n).unwrap();
            let mut seen = std::collections::HashSet::new();
            for (name, reason) in &out.delete {
                let p = by_name(name);
                prop_assert!(seen.insert(name.clone()), "deleted twice: {name}");
                prop_assert!(!p.terminating, "terminating pods are left alone");
                match reason {
                    DeleteReason::ScaleIn | DeleteReason::Outdated => {
                        prop_assert!(!p.busy, "busy pod {name} deleted for {reason:?}");
                        prop_assert!(p.active());
                    }
                    DeleteReason::Completed => prop_assert_eq!(p.phase, PodPhase::Succeeded),
                    DeleteReason::Failed => prop_assert_eq!(p.phase, PodPhase::Failed),
                }
            }
            let remaining = pods
                .iter()
                .filter(|p| p.active() && !seen.contains(&p.name))
                .count() as i32;
            let busy = pods.iter().filter(|p| p.active() && p.busy).count() as i32;
            if can_create {
                prop_assert_eq!(remaining + out.create, desired.max(remaining));
            } else {
                prop_assert_eq!(out.create, 0);
            }
            // Above the desired count only by busy agents waiting to finish.
            prop_assert!(remaining <= desired + out.waiting_for_busy);
            prop_assert!(out.waiting_for_busy <= busy);
        }

        #[test]
        fn stabilize_never_goes_below_the_target_nor_outside_bounds(
            prev in proptest::option::of((0i32..20, proptest::option::of((0i64..50, 0i32..20)))),
            fallback in 0i32..20,
            target in 0i32..20,
            lo in 0i32..5,
            hi in 5i32..20,
            delay in 0i64..30,
            now in 0i64..100,
        ) {
            let prev = prev.map(|(d, l)| st(d, l));
            let s = stabilize(prev, fallback, target, (lo, hi), SignedDuration::from_secs(delay), t(now));
            prop_assert!(s.desired >= target.clamp(lo, hi));
            prop_assert!(s.desired >= lo && s.desired <= hi);
            let current = prev.map_or(fallback, |p| p.desired).clamp(lo, hi);
            prop_assert!(s.desired <= current.max(target.clamp(lo, hi)), "never above current unless scaling up");
        }
    }
}
