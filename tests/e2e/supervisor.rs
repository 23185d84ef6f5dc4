//! The supervisor on the real control plane. Tests play the agent with the claim and
//! fenced-write functions and hold (or stop renewing) its Lease themselves.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;
use triad::api::{AgentPool, OutcomeKind, Phase, WorkItem, WorkQueue, find_condition};
use triad::core::supervision::{StopEnd, conditions, requested_stop};
use triad::k8s::fence::{AgentIdentity, Fence, FenceError, claim, complete_ops, fenced_patch, set};
use triad::k8s::lease::AgentLease;

use crate::scheduler::start_scheduler;
use crate::support::{
    PRIVILEGED, Role, TestNamespace, agent_pod_spec, create, metric_value, start_role, wait_for,
};

const LONG: Duration = Duration::from_secs(40);
const LEASE: Duration = Duration::from_secs(3);

/// Events in the namespace about the object named `name` (of `kind`) with `reason`.
pub(crate) async fn events_about(
    ns: &TestNamespace,
    kind: &str,
    name: &str,
    reason: &str,
) -> Vec<k8s_openapi::api::events::v1::Event> {
    let api: Api<k8s_openapi::api::events::v1::Event> = ns.api();
    api.list(&Default::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| {
            e.regarding
                .as_ref()
                .is_some_and(|r| r.kind.as_deref() == Some(kind) && r.name.as_deref() == Some(name))
                && e.reason.as_deref() == Some(reason)
        })
        .collect()
}

/// Heartbeats `lease` every second, as a healthy agent does, until the returned task is
/// aborted.
fn keep_renewing(lease: AgentLease) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut beat = tokio::time::interval(Duration::from_secs(1));
        loop {
            beat.tick().await;
            let _ = lease.renew().await;
        }
    })
}

/// Claims `name` as `agent` holding `lease`, retrying while the scheduler writes to it.
async fn claim_as(
    api: &Api<WorkItem>,
    name: &str,
    agent: &str,
    lease: &str,
    pod: Option<&str>,
) -> WorkItem {
    let who = AgentIdentity {
        agent: agent.into(),
        pod: pod.map(str::to_owned),
        lease: Some(lease.into()),
    };
    wait_for(LONG, &format!("claim {name}"), || async {
        let item = api.get(name).await.ok()?;
        if !triad::core::phase::is_claimable(&item, jiff::Timestamp::now()) {
            return None;
        }
        claim(api, &item, &who).await.ok()
    })
    .await
}

fn condition_true<'a>(
    item: &'a WorkItem,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    let status = item.status.as_ref()?;
    find_condition(&status.conditions, type_).filter(|c| c.status == "True")
}

#[tokio::test]
async fn a_stale_lease_is_reclaimed_only_after_a_whole_lease_duration() {
    let ns = TestNamespace::new("sup-lease").await;
    let _sup = start_role(&ns, Role::Supervisor).0;
    let _sched = start_scheduler(&ns);
    create::<WorkQueue>(&ns, json!({"metadata": {"name": "q"}, "spec": {}})).await;
    for name in ["w", "canary"] {
        create::<WorkItem>(
            &ns,
            json!({"metadata": {"name": name}, "spec": {"queue": "q"}}),
        )
        .await;
    }
    // A pod standing for the agent; it never schedules (no such node).
    let pods: Api<Pod> = ns.api();
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "agent-x"},
        "spec": {"nodeSelector": {"triad.dev/no-such-node": "x"},
                 "containers": [{"name": "agent", "image": "triad"}]}
    }))
    .expect("pod");
    wait_for(LONG, "agent pod created", || async {
        pods.create(&PostParams::default(), &pod).await.ok()
    })
    .await;

    let items: Api<WorkItem> = ns.api();
    let leases: Api<Lease> = ns.api();
    // agent-x holds `w` and renews its lease.
    let lease = AgentLease::acquire(leases.clone(), "agent-x", &[], None, LEASE)
        .await
        .expect("lease");
    let lease_name = lease.name.clone();
    let claimed = claim_as(&items, "w", "agent-x", &lease_name, Some("agent-x")).await;
    let fence = Fence::of(&claimed).expect("claimed");
    let renewing = keep_renewing(lease);
    // A canary under a lease never renewed: once it is reclaimed, the supervisor is past
    // the lease duration it waits after its own start (when it judges no lease) and is
    // judging leases by what it saw change.
    let canary_lease = AgentLease::acquire(leases.clone(), "agent-c", &[], None, LEASE)
        .await
        .expect("lease");
    let canary = claim_as(&items, "canary", "agent-c", &canary_lease.name, None).await;
    let canary_epoch = canary.epoch();
    drop(canary_lease);
    wait_for(LONG, "the canary reclaimed", || async {
        let item = items.get("canary").await.ok()?;
        (item.epoch() > canary_epoch).then_some(())
    })
    .await;
    // Now agent-x goes silent; its last renewal is the one the Lease shows (one in flight
    // as the renewals stop lands later, which only makes the check below stricter).
    renewing.abort();
    let _ = renewing.await;
    let renewed_at = leases
        .get(&lease_name)
        .await
        .expect("lease")
        .spec
        .and_then(|s| s.renew_time)
        .expect("renewTime")
        .0;

    // When the supervisor fenced agent-x out is read from its own record below, and must
    // be a whole lease duration after the last renewal.
    let fenced = wait_for(LONG, "fence-out with LeaseExpired", || async {
        let item = items.get("w").await.ok()?;
        (item.epoch() > fence.epoch).then_some(item)
    })
    .await;
    let status = fenced.status.clone().expect("status");
    let outcome = status.outcome.clone();
    // The scheduler may already have turned the outcome into Backoff (and cleared it);
    // the attempt record or the outcome says LeaseExpired either way.
    let kind = outcome
        .as_ref()
        .map(|o| o.kind)
        .or_else(|| status.attempts.last().and_then(|a| a.outcome));
    assert_eq!(kind, Some(OutcomeKind::LeaseExpired));
    let rec = status
        .interventions
        .iter()
        .find(|i| i.action == "FenceOut")
        .expect("FenceOut intervention recorded");
    assert_eq!(rec.monitor, "health");
    assert_eq!(rec.reason, "LeaseExpired");
    let waited = rec.at.0.duration_since(renewed_at);
    // `at` is a Kubernetes Time: whole seconds, so it may read up to 1 s early.
    assert!(
        waited
            >= jiff::SignedDuration::try_from(LEASE).expect("duration")
                - jiff::SignedDuration::from_secs(1),
        "reclaimed {waited:?} after the last renewal, before the lease duration"
    );

    // The stale agent wakes up: its writes are refused.
    let late = fenced_patch(
        &items,
        "w",
        &fence,
        vec![set("progress", json!({"percent": 99}))],
    )
    .await;
    assert!(late.is_err(), "a fenced-out agent's write went through");

    wait_for(LONG, "item in Backoff", || async {
        let item = items.get("w").await.ok()?;
        (item.phase() == Some(Phase::Backoff)).then_some(())
    })
    .await;
    wait_for(LONG, "agent pod deleted", || async {
        let p = pods.get_opt("agent-x").await.ok()?;
        p.is_none_or(|p| p.metadata.deletion_timestamp.is_some())
            .then_some(())
    })
    .await;
    // Last, so the checks above still run: the refusal must read as "fenced out".
    assert!(matches!(late, Err(FenceError::Fenced)), "got {late:?}");
}

#[tokio::test]
async fn no_progress_for_stall_seconds_marks_stalled_and_requests_a_restart() {
    let run = HeldItem::stalling("sup-stall", "agent-s").await;
    let (items, fence) = (&run.items, &run.fence);

    let item = wait_for(LONG, "Stalled and CancelRequested", || async {
        let item = items.get("w").await.ok()?;
        (condition_true(&item, conditions::STALLED).is_some()
            && condition_true(&item, conditions::CANCEL_REQUESTED).is_some())
        .then_some(item)
    })
    .await;
    let cancel = condition_true(&item, conditions::CANCEL_REQUESTED).expect("cancel");
    assert_eq!(cancel.reason, "Stalled");
    assert!(cancel.message.starts_with("retry:"), "{}", cancel.message);
    assert_eq!(requested_stop(&item).map(|s| s.end), Some(StopEnd::Retry));
    assert_eq!(
        item.epoch(),
        fence.epoch,
        "a live agent is asked, not fenced"
    );
    let status = item.status.as_ref().expect("status");
    assert!(
        status
            .interventions
            .iter()
            .any(|i| i.monitor == "progress" && i.action == "CancelRequested")
    );

    // The agent ignores the request: after the grace period it is fenced out with the
    // outcome the stop asked for (a failed attempt), and the scheduler retries.
    let fenced = wait_for(LONG, "fence-out after the cancel grace", || async {
        let item = items.get("w").await.ok()?;
        (item.epoch() > fence.epoch).then_some(item)
    })
    .await;
    let status = fenced.status.as_ref().expect("status");
    let rec = status
        .interventions
        .iter()
        .find(|i| i.action == "FenceOut")
        .expect("FenceOut recorded");
    assert_eq!(
        (rec.monitor.as_str(), rec.reason.as_str()),
        ("progress", "Stalled")
    );
    assert!(
        fenced_patch(
            items,
            "w",
            fence,
            vec![set("progress", json!({"percent": 1}))]
        )
        .await
        .is_err()
    );
    wait_for(LONG, "item retried (Backoff or Queued)", || async {
        let item = items.get("w").await.ok()?;
        matches!(item.phase(), Some(Phase::Backoff | Phase::Queued)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn usage_over_budget_warns_then_cuts() {
    let ns = TestNamespace::new("sup-budget").await;
    let _sup = start_role(&ns, Role::Supervisor).0;
    let _sched = start_scheduler(&ns);
    create::<WorkQueue>(
        &ns,
        json!({"metadata": {"name": "q"}, "spec": {"supervision": {"onBudgetExceeded": "Cancel"}}}),
    )
    .await;
    create::<WorkItem>(
        &ns,
        json!({"metadata": {"name": "w"}, "spec": {"queue": "q", "budget": {"tokens": 1000}}}),
    )
    .await;
    let items: Api<WorkItem> = ns.api();
    let lease = AgentLease::acquire(ns.api::<Lease>(), "agent-b", &[], None, LEASE)
        .await
        .expect("lease");
    let lease_name = lease.name.clone();
    let _renew = keep_renewing(lease);
    let claimed = claim_as(&items, "w", "agent-b", &lease_name, None).await;
    let fence = Fence::of(&claimed).expect("claimed");

    fenced_patch(
        &items,
        "w",
        &fence,
        vec![set("usage", json!({"tokens": 850}))],
    )
    .await
    .expect("usage 85 %");
    let item = wait_for(LONG, "BudgetWarning", || async {
        let item = items.get("w").await.ok()?;
        condition_true(&item, conditions::BUDGET_WARNING)
            .is_some()
            .then_some(item)
    })
    .await;
    assert!(
        condition_true(&item, conditions::CANCEL_REQUESTED).is_none(),
        "only a warning below 100 %"
    );

    fenced_patch(
        &items,
        "w",
        &fence,
        vec![set("usage", json!({"tokens": 1200}))],
    )
    .await
    .expect("usage 120 %");
    let item = wait_for(LONG, "CancelRequested for BudgetExceeded", || async {
        let item = items.get("w").await.ok()?;
        condition_true(&item, conditions::CANCEL_REQUESTED)
            .is_some()
            .then_some(item)
    })
    .await;
    let cancel = condition_true(&item, conditions::CANCEL_REQUESTED).expect("cancel");
    assert_eq!(cancel.reason, "BudgetExceeded");
    assert!(cancel.message.starts_with("fail:"), "{}", cancel.message);
    assert!(condition_true(&item, conditions::OVER_BUDGET).is_some());
    assert_eq!(requested_stop(&item).map(|s| s.end), Some(StopEnd::Fail));
}

#[tokio::test]
async fn restarting_the_supervisor_causes_no_false_reclaim() {
    let ns = TestNamespace::new("sup-restart").await;
    let (sup, serve) = start_role(&ns, Role::Supervisor);
    let _sched = start_scheduler(&ns);
    create::<WorkQueue>(&ns, json!({"metadata": {"name": "q"}, "spec": {}})).await;
    for name in ["w", "dead"] {
        create::<WorkItem>(
            &ns,
            json!({"metadata": {"name": name}, "spec": {"queue": "q"}}),
        )
        .await;
    }
    let items: Api<WorkItem> = ns.api();
    let lease = AgentLease::acquire(ns.api::<Lease>(), "agent-r", &[], None, LEASE)
        .await
        .expect("lease");
    let lease_name = lease.name.clone();
    let _renew = keep_renewing(lease);
    let claimed = claim_as(&items, "w", "agent-r", &lease_name, None).await;
    let fence = Fence::of(&claimed).expect("claimed");
    // A control: an agent that never renews. Its reclaim by the restarted supervisor
    // proves that supervisor is judging leases again, so the healthy item's survival
    // below means something.
    let dead_lease = AgentLease::acquire(ns.api::<Lease>(), "agent-d", &[], None, LEASE)
        .await
        .expect("lease");
    let dead = claim_as(&items, "dead", "agent-d", &dead_lease.name, None).await;

    wait_for(LONG, "the first supervisor watching both items", || async {
        (metric_value(&serve, "triad_supervised_items") == Some(2.0)).then_some(())
    })
    .await;
    sup.abort();
    let _sup2 = start_role(&ns, Role::Supervisor).0;
    wait_for(
        LONG,
        "the restarted supervisor to reclaim the dead agent's item",
        || async {
            let i = items.get("dead").await.ok()?;
            (i.epoch() > dead.epoch()).then_some(())
        },
    )
    .await;
    let item = items.get("w").await.expect("item");
    assert_eq!(item.epoch(), fence.epoch, "no reclaim of a healthy agent");
    assert_eq!(item.phase(), Some(Phase::Running));
    let status = item.status.as_ref().expect("status");
    assert!(status.outcome.is_none());
    assert!(
        status.interventions.is_empty(),
        "{:?}",
        status.interventions
    );
    // The agent's writes still go through.
    fenced_patch(
        &items,
        "w",
        &fence,
        vec![set("progress", json!({"percent": 50}))],
    )
    .await
    .expect("still holds the item");
}

#[tokio::test]
async fn a_reported_violation_escalates_and_the_item_finishes_on_the_escalation_queue() {
    let ns = TestNamespace::new("sup-violation").await;
    let (_sup, metrics) = start_role(&ns, Role::Supervisor);
    let _sched = start_scheduler(&ns);
    create::<WorkQueue>(
        &ns,
        json!({"metadata": {"name": "q"}, "spec": {
            "supervision": {"onViolation": "Escalate", "violationRules": {"noisy": "Warn"}},
            "escalation": {"toQueue": "experts"}}}),
    )
    .await;
    create::<WorkQueue>(&ns, json!({"metadata": {"name": "experts"}, "spec": {}})).await;
    create::<WorkItem>(
        &ns,
        json!({"metadata": {"name": "w"}, "spec": {"queue": "q"}}),
    )
    .await;
    let items: Api<WorkItem> = ns.api();
    let lease = AgentLease::acquire(ns.api::<Lease>(), "agent-v", &[], None, LEASE)
        .await
        .expect("lease");
    let lease_name = lease.name.clone();
    let _renew = keep_renewing(lease);
    let claimed = claim_as(&items, "w", "agent-v", &lease_name, None).await;
    let fence = Fence::of(&claimed).expect("claimed");
    // Counts reported before the supervisor first sees an item are its baseline (so a
    // restarted supervisor does not count them twice): report only once it watches it.
    wait_for(LONG, "the supervisor watching the running item", || async {
        (metric_value(&metrics, "triad_supervised_items")? >= 1.0).then_some(())
    })
    .await;

    // The work command reports a violation; the agent runtime records it as it does.
    let report = |rule: &str, count| {
        triad::agent::writer::violation_op(
            claimed
                .status
                .as_ref()
                .map(|s| s.conditions.as_slice())
                .filter(|c| !c.is_empty()),
            &triad::core::report::ViolationReport {
                rule: rule.into(),
                detail: Some("wrote outside its workspace".into()),
            },
            count,
            &triad::k8s::now(),
        )
    };
    fenced_patch(
        &items,
        "w",
        &fence,
        vec![report("pii-leak", 2).expect("a violation to record")],
    )
    .await
    .expect("violation recorded");

    let item = wait_for(LONG, "Escalated and CancelRequested", || async {
        let item = items.get("w").await.ok()?;
        (condition_true(&item, conditions::ESCALATED).is_some()
            && condition_true(&item, conditions::CANCEL_REQUESTED).is_some())
        .then_some(item)
    })
    .await;
    assert_eq!(item.epoch(), fence.epoch, "a live agent is asked first");
    let stop = requested_stop(&item).expect("a stop");
    assert_eq!(stop.end, StopEnd::Escalate);
    let rec = item
        .status
        .as_ref()
        .expect("status")
        .interventions
        .iter()
        .find(|i| i.monitor == "violation")
        .cloned()
        .expect("violation intervention");
    assert_eq!(
        (rec.action.as_str(), rec.reason.as_str()),
        ("Escalate", "Violation")
    );
    assert!(
        rec.message
            .as_deref()
            .unwrap_or("")
            .contains("rule pii-leak"),
        "{rec:?}"
    );

    // The agent stops the work as asked, writing the outcome the stop names.
    let (kind, reason) = stop.outcome();
    let outcome = json!({"kind": kind, "reason": reason, "message": "stopped on request",
        "attempt": item.status.as_ref().expect("status").attempt, "epoch": fence.epoch});
    fenced_patch(&items, "w", &fence, vec![set("outcome", outcome)])
        .await
        .expect("outcome");

    // The scheduler holds and re-routes it to the escalation queue.
    wait_for(LONG, "re-routed to experts and Queued", || async {
        let item = items.get("w").await.ok()?;
        (item.effective_queue() == Some("experts") && item.phase() == Some(Phase::Queued))
            .then_some(())
    })
    .await;

    // Another agent, serving the experts queue, takes it.
    let lease2 = AgentLease::acquire(ns.api::<Lease>(), "agent-e", &[], None, LEASE)
        .await
        .expect("lease");
    let lease2_name = lease2.name.clone();
    let _renew2 = keep_renewing(lease2);
    let second = claim_as(&items, "w", "agent-e", &lease2_name, None).await;
    let fence2 = Fence::of(&second).expect("claimed again");
    assert!(fence2.epoch > fence.epoch);
    // The first attempt's stop does not follow the item into its new attempt.
    let fresh = wait_for(LONG, "leftover CancelRequested withdrawn", || async {
        let item = items.get("w").await.ok()?;
        let status = item.status.as_ref()?;
        let c = find_condition(&status.conditions, conditions::CANCEL_REQUESTED)?;
        (c.status == "False").then_some(item)
    })
    .await;
    assert_eq!(requested_stop(&fresh), None);
    assert_eq!(
        fresh.epoch(),
        fence2.epoch,
        "the new holder is not disturbed"
    );

    fenced_patch(
        &items,
        "w",
        &fence2,
        complete_ops(&second, None, json!({}), json!([])),
    )
    .await
    .expect("completed on the experts queue");
    let done = items.get("w").await.expect("item");
    assert_eq!(done.phase(), Some(Phase::Succeeded));

    wait_for(LONG, "an Event on the item saying why", || async {
        let events = events_about(&ns, "WorkItem", "w", "Violation").await;
        (!events.is_empty()).then_some(())
    })
    .await;
    let text = metrics.encode_metrics();
    assert!(
        text.contains(r#"triad_violations_total{rule="pii-leak"} 2"#),
        "{text}"
    );
    assert!(
        text.contains(r#"triad_interventions_total{monitor="violation",action="Escalate"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"triad_fault_to_intervention_seconds_count{monitor="violation"} 1"#),
        "{text}"
    );
}

/// A supervisor and a scheduler on a queue with `queue_spec`, and its item `w` claimed
/// by `agent` under a Lease that keeps being renewed: the agent is alive, only its
/// progress or its time is in question.
struct HeldItem {
    _ns: TestNamespace,
    _roles: [tokio::task::JoinHandle<()>; 2],
    _renew: tokio::task::JoinHandle<()>,
    metrics: triad::serve::State,
    items: Api<WorkItem>,
    claimed: WorkItem,
    fence: Fence,
    /// Just before the claim was sent.
    before_claim: jiff::Timestamp,
}

impl HeldItem {
    async fn start(prefix: &str, agent: &str, queue_spec: serde_json::Value) -> Self {
        let ns = TestNamespace::new(prefix).await;
        let (sup, metrics) = start_role(&ns, Role::Supervisor);
        let roles = [sup, start_scheduler(&ns)];
        create::<WorkQueue>(&ns, json!({"metadata": {"name": "q"}, "spec": queue_spec})).await;
        create::<WorkItem>(
            &ns,
            json!({"metadata": {"name": "w"}, "spec": {"queue": "q"}}),
        )
        .await;
        let items: Api<WorkItem> = ns.api();
        let lease = AgentLease::acquire(ns.api::<Lease>(), agent, &[], None, LEASE)
            .await
            .expect("lease");
        let lease_name = lease.name.clone();
        let renew = keep_renewing(lease);
        let before_claim = jiff::Timestamp::now();
        let claimed = claim_as(&items, "w", agent, &lease_name, None).await;
        let fence = Fence::of(&claimed).expect("claimed");
        Self {
            _ns: ns,
            _roles: roles,
            _renew: renew,
            metrics,
            items,
            claimed,
            fence,
            before_claim,
        }
    }

    /// On a queue with `stallSeconds: 2`.
    async fn stalling(prefix: &str, agent: &str) -> Self {
        Self::start(
            prefix,
            agent,
            json!({"supervision": {"stallSeconds": 2, "cancelGraceSeconds": 2}}),
        )
        .await
    }

    /// On a queue with `timeouts.attemptSeconds`.
    async fn timed(prefix: &str, agent: &str, attempt_seconds: i64) -> Self {
        Self::start(
            prefix,
            agent,
            json!({"timeouts": {"attemptSeconds": attempt_seconds}}),
        )
        .await
    }

    /// The item once the supervisor asked its holder to stop, for AttemptTimeout.
    async fn stopped(&self) -> WorkItem {
        let item = wait_for(LONG, "CancelRequested for AttemptTimeout", || async {
            let item = self.items.get("w").await.ok()?;
            condition_true(&item, conditions::CANCEL_REQUESTED)
                .is_some()
                .then_some(item)
        })
        .await;
        let stop = requested_stop(&item).expect("stop");
        assert_eq!(
            (stop.end, stop.cause.as_str()),
            (StopEnd::Retry, "AttemptTimeout")
        );
        item
    }
}

#[tokio::test]
async fn an_attempt_past_its_timeout_is_stopped_as_a_violation() {
    let run = HeldItem::timed("sup-timeout", "agent-t", 2).await;
    let item = run.stopped().await;
    assert!(condition_true(&item, conditions::VIOLATION).is_some());
    wait_for(LONG, "violation counted", || async {
        let text = run.metrics.encode_metrics();
        text.contains(r#"triad_violations_total{rule="AttemptTimeout"} 1"#)
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn an_unhealthy_agent_pod_loses_only_its_own_items() {
    let ns = TestNamespace::new("sup-pods").await;
    let (_sup, metrics) = start_role(&ns, Role::Supervisor);
    let _sched = start_scheduler(&ns);
    create::<WorkQueue>(&ns, json!({"metadata": {"name": "q"}, "spec": {}})).await;
    for name in ["mine", "other"] {
        create::<WorkItem>(
            &ns,
            json!({"metadata": {"name": name}, "spec": {"queue": "q"}}),
        )
        .await;
    }
    // An agent pod of pool x that no node can run.
    let pods: Api<Pod> = ns.api();
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "agent-bad", "labels": {"triad.dev/pool": "x"}},
        "spec": {"nodeSelector": {"triad.dev/no-such-node": "x"},
                 "containers": [{"name": "agent", "image": "triad"}]}
    }))
    .expect("pod");
    wait_for(LONG, "agent pod created", || async {
        pods.create(&PostParams::default(), &pod).await.ok()
    })
    .await;
    let items: Api<WorkItem> = ns.api();
    // Both holders keep their leases fresh: only the pod's health can be the reason.
    let bad = AgentLease::acquire(ns.api::<Lease>(), "agent-bad", &[], None, LEASE)
        .await
        .expect("lease");
    let bad_lease = bad.name.clone();
    let _renew_bad = keep_renewing(bad);
    let good = AgentLease::acquire(ns.api::<Lease>(), "agent-good", &[], None, LEASE)
        .await
        .expect("lease");
    let good_lease = good.name.clone();
    let _renew_good = keep_renewing(good);
    let other = claim_as(
        &items,
        "other",
        "agent-good",
        &good_lease,
        Some("agent-good"),
    )
    .await;
    let other_fence = Fence::of(&other).expect("claimed");
    let mine = claim_as(&items, "mine", "agent-bad", &bad_lease, Some("agent-bad")).await;
    let fence = Fence::of(&mine).expect("claimed");

    let fenced = wait_for(LONG, "the unschedulable pod's item fenced out", || async {
        let item = items.get("mine").await.ok()?;
        (item.epoch() > fence.epoch).then_some(item)
    })
    .await;
    let status = fenced.status.clone().expect("status");
    let kind = status
        .outcome
        .as_ref()
        .map(|o| o.kind)
        .or_else(|| status.attempts.last().and_then(|a| a.outcome));
    assert_eq!(kind, Some(OutcomeKind::LeaseExpired), "retried, not failed");
    let rec = status
        .interventions
        .iter()
        .find(|i| i.action == "FenceOut")
        .expect("FenceOut recorded");
    assert_eq!(
        (rec.monitor.as_str(), rec.reason.as_str()),
        ("health", "Unschedulable")
    );
    wait_for(LONG, "unhealthy pod deleted", || async {
        let p = pods.get_opt("agent-bad").await.ok()?;
        p.is_none_or(|p| p.metadata.deletion_timestamp.is_some())
            .then_some(())
    })
    .await;
    wait_for(LONG, "Events on the pod and the pool", || async {
        let on_pod = events_about(&ns, "Pod", "agent-bad", "Unschedulable").await;
        let on_pool = events_about(&ns, "AgentPool", "x", "Unschedulable").await;
        (!on_pod.is_empty() && !on_pool.is_empty()).then_some(())
    })
    .await;

    // The item of another pod is untouched.
    let item = items.get("other").await.expect("item");
    assert_eq!(item.epoch(), other_fence.epoch);
    assert_eq!(item.phase(), Some(Phase::Running));
    let status = item.status.as_ref().expect("status");
    assert!(status.outcome.is_none());
    assert!(
        status.interventions.is_empty(),
        "{:?}",
        status.interventions
    );

    wait_for(LONG, "intervention metrics", || async {
        let text = metrics.encode_metrics();
        text.contains(r#"triad_interventions_total{monitor="health",action="FenceOut"} 1"#)
            .then_some(())
    })
    .await;
}

/// An agent's Lease says of itself how long it lives, but its holder writes that. The
/// supervisor judges it by the pool's `leaseSeconds`: a Lease rewritten to 1 s (by an
/// admin here; the agent admission policy refuses it to agents) does not get a healthy
/// agent that renews every 3 s fenced out.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_lease_is_judged_by_its_pools_lease_seconds_not_by_what_it_says() {
    let ns = TestNamespace::new("sup-poollease").await;
    let _roles = [Role::Scheduler, Role::Pools, Role::Supervisor].map(|r| start_role(&ns, r));
    create::<WorkQueue>(&ns, json!({"metadata": {"name": "q"}, "spec": {}})).await;
    create::<AgentPool>(
        &ns,
        json!({"metadata": {"name": "p"}, "spec": {
            "queues": [{"name": "q"}], "replicas": 1, "leaseSeconds": 9, "podSecurity": PRIVILEGED,
            "template": {"spec": agent_pod_spec("sleep 15", json!([]))}}}),
    )
    .await;
    create::<WorkItem>(
        &ns,
        json!({"metadata": {"name": "w"}, "spec": {"queue": "q"}}),
    )
    .await;
    let items: Api<WorkItem> = ns.api();
    let lease = wait_for(LONG, "the item claimed under a Lease", || async {
        let i = items.get("w").await.ok()?;
        (i.phase() == Some(Phase::Running)).then_some(())?;
        i.status?.claim?.lease
    })
    .await;
    let leases: Api<Lease> = ns.api();
    let short = json!({"spec": {"leaseDurationSeconds": 1}});
    leases
        .patch(&lease, &PatchParams::default(), &Patch::Merge(&short))
        .await
        .expect("shorten the Lease");
    let done = wait_for(LONG, "the item finished", || async {
        let i = items.get("w").await.ok()?;
        matches!(
            i.phase(),
            Some(Phase::Succeeded | Phase::Backoff | Phase::Failed)
        )
        .then_some(i)
    })
    .await;
    let phase = done.phase();
    let status = done.status.expect("status");
    assert_eq!(
        (phase, status.attempt),
        (Some(Phase::Succeeded), 1),
        "the agent kept its item: {status:?}"
    );
    assert!(
        status.interventions.iter().all(|i| i.action != "FenceOut"),
        "no fence-out: {:?}",
        status.interventions
    );
    let lease = leases.get(&lease).await.expect("lease");
    assert_eq!(
        lease.spec.and_then(|s| s.lease_duration_seconds),
        Some(1),
        "the Lease still says 1 s (the test shortened it for the whole attempt)"
    );
}

/// An agent whose wall clock runs ten minutes behind writes `progress.updatedAt` in its
/// own time. The supervisor judges stalls by when it sees progress change, on its own
/// clock, so that agent is not stalled while it reports; once it stops, it is.
#[tokio::test]
async fn stalls_are_judged_on_the_supervisors_clock_with_an_agent_clock_behind() {
    stalls_on_the_supervisors_clock("sup-skew-behind", -jiff::SignedDuration::from_mins(10)).await;
}

#[tokio::test]
async fn stalls_are_judged_on_the_supervisors_clock_with_an_agent_clock_ahead() {
    stalls_on_the_supervisors_clock("sup-skew-ahead", jiff::SignedDuration::from_mins(10)).await;
}

/// An agent whose wall clock is `skew` off reports progress every second: it is never
/// stalled while it reports, and stalls soon after it stops. Judged by the agent's stamps,
/// an agent behind would stall at once and one ahead would not stall for ten minutes.
async fn stalls_on_the_supervisors_clock(prefix: &str, skew: jiff::SignedDuration) {
    let run = HeldItem::stalling(prefix, "agent-k").await;
    let (items, fence) = (&run.items, &run.fence);

    // The agent reports once a second (as an agent's own timer would), each report
    // stamped by its skewed clock; the test waits for eight of them, four stall periods,
    // checking at every look that the item is not stalled.
    let reports = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let reporter = {
        let (items, fence, reports) = (items.clone(), fence.clone(), reports.clone());
        tokio::spawn(async move {
            let mut beat = tokio::time::interval(Duration::from_secs(1));
            loop {
                beat.tick().await;
                let skewed = jiff::Timestamp::now() + skew;
                let percent = reports.load(std::sync::atomic::Ordering::SeqCst) + 1;
                let progress = json!({"percent": percent, "updatedAt": skewed.to_string()});
                if fenced_patch(&items, "w", &fence, vec![set("progress", progress)])
                    .await
                    .is_ok()
                {
                    reports.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            }
        })
    };
    wait_for(LONG, "eight skewed reports", || async {
        let item = items.get("w").await.ok()?;
        assert!(
            condition_true(&item, conditions::STALLED).is_none(),
            "stalled while reporting every second: {:?}",
            item.status
        );
        (reports.load(std::sync::atomic::Ordering::SeqCst) >= 8).then_some(())
    })
    .await;
    reporter.abort();
    let item = items.get("w").await.expect("item");
    let status = item.status.as_ref().expect("status");
    assert!(
        status.interventions.is_empty(),
        "{:?}",
        status.interventions
    );

    // Silence: now it stalls (the supervisor was judging all along).
    wait_for(LONG, "Stalled once the reports stop", || async {
        let item = items.get("w").await.ok()?;
        condition_true(&item, conditions::STALLED).map(|_| ())
    })
    .await;
}

#[tokio::test]
async fn attempt_timeouts_are_timed_on_the_supervisors_clock_with_an_agent_clock_behind() {
    attempt_timeout_on_the_supervisors_clock(
        "sup-tskew-behind",
        -jiff::SignedDuration::from_mins(10),
    )
    .await;
}

#[tokio::test]
async fn attempt_timeouts_are_timed_on_the_supervisors_clock_with_an_agent_clock_ahead() {
    attempt_timeout_on_the_supervisors_clock(
        "sup-tskew-ahead",
        jiff::SignedDuration::from_mins(10),
    )
    .await;
}

/// An agent whose clock is `skew` off stamps its claim: the attempt is stopped for
/// AttemptTimeout `attemptSeconds` after the claim on the supervisor's clock. Judged by
/// the agent's stamps, an agent behind would be stopped at once and one ahead not for
/// ten minutes.
async fn attempt_timeout_on_the_supervisors_clock(prefix: &str, skew: jiff::SignedDuration) {
    const ATTEMPT_SECONDS: i64 = 4;
    let run = HeldItem::timed(prefix, "agent-c", ATTEMPT_SECONDS).await;
    let before_claim = run.before_claim;
    let fence = &run.fence;
    // The agent's clock stamps every time it writes.
    let skewed = (before_claim + skew).to_string();
    let mut stamp = run
        .claimed
        .status
        .clone()
        .and_then(|s| s.claim)
        .expect("claim");
    stamp.acquired_at = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        before_claim + skew,
    ));
    fenced_patch(
        &run.items,
        "w",
        fence,
        vec![
            set("claim", json!(stamp)),
            set("startedAt", json!(skewed)),
            set("progress", json!({"updatedAt": skewed})),
        ],
    )
    .await
    .expect("the agent's stamps");

    let item = run.stopped().await;
    let stopped_at = item
        .status
        .as_ref()
        .and_then(|s| {
            s.interventions
                .iter()
                .find(|i| i.reason == "AttemptTimeout")
        })
        .map(|i| i.at.0)
        .expect("the AttemptTimeout intervention");
    // Interventions carry whole seconds; the supervisor (this process's clock) cannot
    // have seen the attempt before the claim was sent.
    let earliest = jiff::Timestamp::from_second(
        (before_claim + jiff::SignedDuration::from_secs(ATTEMPT_SECONDS)).as_second(),
    )
    .expect("whole second");
    assert!(
        stopped_at >= earliest,
        "stopped at {stopped_at}, before {ATTEMPT_SECONDS}s after the claim at {before_claim}"
    );
}
