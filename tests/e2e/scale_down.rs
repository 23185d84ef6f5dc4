//! `emptyQueuePolicy: ScaleDown` with real agent pods: a pool with a fixed `replicas`
//! runs no agents while its queues are empty, starts `replicas` agents when work
//! arrives, and removes them again once the queues have stayed empty for
//! `scaling.scaleDownDelaySeconds`. Scheduler and pool controller run in the test
//! process; the agents are pods on the test node.

use std::collections::BTreeSet;
use std::time::Duration;

use kube::{Api, ResourceExt};
use serde_json::json;
use triad::api::{AgentPool, Phase, WorkItem, WorkQueue};

use crate::pool::{condition, live_pods, wait_pods, wait_pool};
use crate::supervisor::events_about;
use crate::support::{AGENT_IMAGE, Role, TestNamespace, create, start_role, wait_for};

const LONG: Duration = Duration::from_secs(90);

async fn create_items(ns: &TestNamespace, names: &[&str]) {
    for name in names {
        create::<WorkItem>(
            ns,
            json!({"metadata": {"name": name}, "spec": {"queue": "jobs"}}),
        )
        .await;
    }
}

/// Waits for `names` to succeed; returns the agents that ran them.
async fn ran_by(ns: &TestNamespace, names: &[&str]) -> BTreeSet<String> {
    let items: Api<WorkItem> = ns.api();
    let mut agents = BTreeSet::new();
    for name in names {
        let item = wait_for(LONG, &format!("{name} Succeeded"), || async {
            let i = items.get(name).await.ok()?;
            (i.phase() == Some(Phase::Succeeded)).then_some(i)
        })
        .await;
        let agent = item
            .status
            .and_then(|s| s.attempts.last().and_then(|a| a.agent.clone()))
            .expect("the attempt names its agent");
        agents.insert(agent);
    }
    agents
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scale_down_runs_no_agents_on_empty_queues_and_wakes_for_work() {
    let ns = TestNamespace::new("scale-down").await;
    let _roles = [Role::Scheduler, Role::Pools].map(|r| start_role(&ns, r));
    create::<WorkQueue>(&ns, json!({"metadata": {"name": "jobs"}, "spec": {}})).await;
    create::<AgentPool>(
        &ns,
        json!({"metadata": {"name": "idlers"}, "spec": {
            "queues": [{"name": "jobs"}], "replicas": 2, "leaseSeconds": 3,
            "emptyQueuePolicy": "ScaleDown", "scaling": {"scaleDownDelaySeconds": 2},
            "template": {"spec": {"terminationGracePeriodSeconds": 5, "containers": [
                {"name": "work", "image": AGENT_IMAGE, "command": ["sh", "-c", "sleep 1"]}]}}}}),
    )
    .await;

    // Empty queues: replicas 2 is not what runs, minReplicas (default 0) is.
    let pool = wait_pool(&ns, "idlers", "the pool's status at zero", |p| {
        p.status
            .as_ref()
            .is_some_and(|s| s.observed_generation.is_some() && s.desired == 0)
    })
    .await;
    assert!(live_pods(&ns, "idlers").await.is_empty());
    let ready = condition(&pool, "Ready").expect("Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", "ScaledToZero")
    );

    // Work arrives: replicas agents start and do it.
    let first = ["a-1", "a-2", "a-3", "a-4"];
    create_items(&ns, &first).await;
    let pods: BTreeSet<String> = wait_pods(&ns, "idlers", 2)
        .await
        .iter()
        .map(|p| p.name_any())
        .collect();
    let agents = ran_by(&ns, &first).await;
    assert!(
        agents.is_subset(&pods),
        "{agents:?} ran by the pool's pods {pods:?}"
    );

    // Drained: after the delay, back to no agents, and the Event says why.
    wait_pods(&ns, "idlers", 0).await;
    wait_pool(&ns, "idlers", "status back at zero", |p| {
        p.status
            .as_ref()
            .is_some_and(|s| s.desired == 0 && s.replicas == 0)
    })
    .await;
    let down = wait_for(LONG, "a ScaledDown Event", || async {
        let events = events_about(&ns, "AgentPool", "idlers", "ScaledDown").await;
        events.into_iter().find_map(|e| e.note)
    })
    .await;
    assert_eq!(
        down,
        "desired agents 2 → 0: every queue is empty (spec.replicas is 2, emptyQueuePolicy ScaleDown)"
    );

    // More work: new agents start and take it.
    let second = ["b-1"];
    create_items(&ns, &second).await;
    let again: BTreeSet<String> = wait_pods(&ns, "idlers", 2)
        .await
        .iter()
        .map(|p| p.name_any())
        .collect();
    assert!(again.is_disjoint(&pods), "new agent pods: {again:?}");
    // Ran by one of the pool's new pods (the pool may have replaced one of those two
    // since they were listed, so membership is by name, not by that list).
    let agents = ran_by(&ns, &second).await;
    assert!(
        agents
            .iter()
            .all(|a| a.starts_with("idlers-") && !pods.contains(a)),
        "{agents:?} ran by a new pod of the pool, not one of {pods:?}"
    );
}
