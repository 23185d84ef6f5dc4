//! The supervisor on the real control plane. Tests play the agent with the claim and
//! fenced-write functions and hold (or stop renewing) its Lease themselves.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::PostParams;
use serde_json::json;
use triad::api::{OutcomeKind, Phase, WorkItem, WorkQueue, find_condition};
use triad::core::supervision::{StopEnd, conditions, requested_stop};
use triad::k8s::RoleContext;
use triad::k8s::fence::{AgentIdentity, Fence, FenceError, claim, fenced_patch, set};
use triad::k8s::lease::{AgentLease, LeaderGate};

use crate::scheduler::start_scheduler;
use crate::support::{TestNamespace, wait_for};

const LONG: Duration = Duration::from_secs(40);
const LEASE: Duration = Duration::from_secs(3);

fn start_supervisor(ns: &TestNamespace) -> tokio::task::JoinHandle<()> {
    let ctx = RoleContext {
        client: ns.client.clone(),
        leader: LeaderGate::always(),
        serve: triad::serve::State::new(),
        namespace: Some(ns.name.clone()),
    };
    tokio::spawn(async move {
        let _ = triad::supervisor::run(ctx).await;
    })
}

async fn create<K>(ns: &TestNamespace, value: serde_json::Value) -> K
where
    K: serde::de::DeserializeOwned
        + serde::Serialize
        + Clone
        + std::fmt::Debug
        + kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>,
{
    let obj: K = serde_json::from_value(value).expect("valid object");
    ns.api::<K>()
        .create(&PostParams::default(), &obj)
        .await
        .expect("create")
}

/// Renews `lease` every second until the returned task is aborted.
fn keep_renewing(lease: AgentLease) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
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
    let _sup = start_supervisor(&ns);
    let _sched = start_scheduler(&ns);
    create::<WorkQueue>(&ns, json!({"metadata": {"name": "q"}, "spec": {}})).await;
    create::<WorkItem>(
        &ns,
        json!({"metadata": {"name": "w"}, "spec": {"queue": "q"}}),
    )
    .await;
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
    // Let the supervisor's own post-start wait pass, so only the lease clock counts.
    tokio::time::sleep(LEASE).await;
    // The lease's only renewal is its creation.
    let renewed_at = jiff::Timestamp::now();
    let lease = AgentLease::acquire(ns.api::<Lease>(), "agent-x", None, LEASE)
        .await
        .expect("lease");
    let claimed = claim_as(&items, "w", "agent-x", &lease.name, Some("agent-x")).await;
    let fence = Fence::of(&claimed).expect("claimed");
    drop(lease); // never renewed again

    // Half a lease duration later the agent still holds the item.
    tokio::time::sleep(LEASE / 2).await;
    let item = items.get("w").await.expect("item");
    assert_eq!(
        item.epoch(),
        fence.epoch,
        "not reclaimed before the lease duration"
    );
    assert!(
        item.status
            .as_ref()
            .and_then(|s| s.outcome.as_ref())
            .is_none()
    );

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
    let ns = TestNamespace::new("sup-stall").await;
    let _sup = start_supervisor(&ns);
    let _sched = start_scheduler(&ns);
    create::<WorkQueue>(
        &ns,
        json!({"metadata": {"name": "q"}, "spec": {"supervision": {"stallSeconds": 2, "cancelGraceSeconds": 2}}}),
    )
    .await;
    create::<WorkItem>(
        &ns,
        json!({"metadata": {"name": "w"}, "spec": {"queue": "q"}}),
    )
    .await;
    let items: Api<WorkItem> = ns.api();
    let lease = AgentLease::acquire(ns.api::<Lease>(), "agent-s", None, LEASE)
        .await
        .expect("lease");
    let lease_name = lease.name.clone();
    let _renew = keep_renewing(lease);
    let claimed = claim_as(&items, "w", "agent-s", &lease_name, None).await;
    let fence = Fence::of(&claimed).expect("claimed");

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
            &items,
            "w",
            &fence,
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
    let _sup = start_supervisor(&ns);
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
    let lease = AgentLease::acquire(ns.api::<Lease>(), "agent-b", None, LEASE)
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
    let sup = start_supervisor(&ns);
    let _sched = start_scheduler(&ns);
    create::<WorkQueue>(&ns, json!({"metadata": {"name": "q"}, "spec": {}})).await;
    create::<WorkItem>(
        &ns,
        json!({"metadata": {"name": "w"}, "spec": {"queue": "q"}}),
    )
    .await;
    let items: Api<WorkItem> = ns.api();
    let lease = AgentLease::acquire(ns.api::<Lease>(), "agent-r", None, LEASE)
        .await
        .expect("lease");
    let lease_name = lease.name.clone();
    let _renew = keep_renewing(lease);
    let claimed = claim_as(&items, "w", "agent-r", &lease_name, None).await;
    let fence = Fence::of(&claimed).expect("claimed");

    tokio::time::sleep(LEASE + Duration::from_secs(1)).await;
    sup.abort();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _sup2 = start_supervisor(&ns);
    // Well past the lease duration and the restart wait.
    tokio::time::sleep(LEASE * 3).await;
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
