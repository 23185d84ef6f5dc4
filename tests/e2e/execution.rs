//! The whole execution layer on the real control plane and a real node: the pool
//! controller creates agent pods, the kubelet runs them as containers of Triad's image on
//! containerd and runc, with their own service-account identity; agents claim and run
//! items, the scheduler and the supervisor do their parts. All three roles run in the
//! test process, scoped to the test's namespace.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use triad::api::{AgentPool, Phase, WorkItem, WorkQueue, labels};

use crate::support::{
    AGENT_CONTAINER, PRIVILEGED, Role, TestNamespace, agent_pod_spec, container_id,
    container_processes, create, kubeconfig_path, scratch_dir, start_role, wait_for,
};

/// `triad controller` as a child process scoped to the test namespace; killed on drop.
struct ControllerProcess(std::process::Child);

impl ControllerProcess {
    fn start(ns: &TestNamespace, roles: &str) -> Self {
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_triad"))
            .args([
                "controller",
                "--roles",
                roles,
                "--namespace",
                &ns.name,
                "--metrics-addr",
                "127.0.0.1:0",
            ])
            .env("KUBECONFIG", kubeconfig_path())
            .env("RUST_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("start triad controller");
        Self(child)
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn pool(name: &str, queue: &str, extra: serde_json::Value, script: &str) -> serde_json::Value {
    let mut spec = json!({
        "queues": [{"name": queue}],
        "leaseSeconds": 3,
        "podSecurity": PRIVILEGED,
        "template": {"spec": agent_pod_spec(script, json!([]))}
    });
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            spec.insert(k.clone(), v.clone());
        }
    }
    json!({"metadata": {"name": name}, "spec": spec})
}

async fn items_in(api: &Api<WorkItem>) -> Vec<WorkItem> {
    api.list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
}

async fn agent_pods(ns: &TestNamespace, pool: &str) -> Vec<Pod> {
    ns.api::<Pod>()
        .list(&ListParams::default().labels(&format!("{}={pool}", labels::POOL)))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pool_of_three_agents_drains_300_items_each_run_once() {
    let ns = TestNamespace::new("drain").await;
    let _roles = [Role::Scheduler, Role::Pools, Role::Supervisor].map(|r| start_role(&ns, r));
    let dir = scratch_dir("drain");
    let log = dir.join("runs.log");
    create::<WorkQueue>(&ns, json!({"metadata": {"name": "q"}, "spec": {}})).await;
    let script = format!(
        "echo \"$TRIAD_ITEM $TRIAD_ATTEMPT $POD_NAME\" >> {}",
        log.display()
    );
    create::<AgentPool>(&ns, pool("workers", "q", json!({"replicas": 3}), &script)).await;
    let items: Api<WorkItem> = ns.api();
    for i in 0..300 {
        create::<WorkItem>(
            &ns,
            json!({"metadata": {"name": format!("item-{i:03}")}, "spec": {"queue": "q"}}),
        )
        .await;
    }
    let done = wait_for(Duration::from_secs(240), "300 items Succeeded", || async {
        let list = items_in(&items).await;
        (list.len() == 300 && list.iter().all(|i| i.phase() == Some(Phase::Succeeded)))
            .then_some(list)
    })
    .await;
    let runs = std::fs::read_to_string(&log).expect("run log");
    let mut per_item: BTreeMap<String, usize> = BTreeMap::new();
    for line in runs.lines() {
        let item = line
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned();
        *per_item.entry(item).or_default() += 1;
    }
    assert_eq!(per_item.len(), 300, "every work command ran");
    assert!(
        per_item.values().all(|n| *n == 1),
        "each ran exactly once: {per_item:?}"
    );
    // Exactly one accepted completion per item: one attempt, one Succeeded outcome.
    assert!(
        done.iter()
            .all(|i| i.status.as_ref().map(|s| s.attempt) == Some(1))
    );
    let agents: BTreeSet<String> = done
        .iter()
        .filter_map(|i| i.status.as_ref()?.claim.as_ref().map(|c| c.agent.clone()))
        .collect();
    assert!(
        agents.len() >= 2,
        "at least two agents did work: {agents:?}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_item_whose_agent_pod_is_killed_runs_again_elsewhere() {
    let ns = TestNamespace::new("podkill").await;
    let _roles = [Role::Scheduler, Role::Pools, Role::Supervisor].map(|r| start_role(&ns, r));
    let dir = scratch_dir("podkill");
    let log = dir.join("runs.log");
    create::<WorkQueue>(
        &ns,
        json!({"metadata": {"name": "q"}, "spec": {"retry": {"backoff": {"baseSeconds": 1, "maxSeconds": 2}}}}),
    )
    .await;
    let script = format!(
        "echo \"$TRIAD_ITEM $TRIAD_ATTEMPT $POD_NAME\" >> {}; sleep 4",
        log.display()
    );
    create::<AgentPool>(&ns, pool("workers", "q", json!({"replicas": 2}), &script)).await;
    let items: Api<WorkItem> = ns.api();
    create::<WorkItem>(
        &ns,
        json!({"metadata": {"name": "victim"}, "spec": {"queue": "q"}}),
    )
    .await;
    let first = wait_for(Duration::from_secs(90), "victim running", || async {
        let i = items.get("victim").await.ok()?;
        let claim = i.status.as_ref()?.claim.clone()?;
        (i.phase() == Some(Phase::Running)).then_some(claim)
    })
    .await;
    // Kill it once the work has started (claimed is not yet running: under load the
    // pod could die between the claim and the work's first line).
    wait_for(
        Duration::from_secs(30),
        "the first attempt started",
        || async {
            let runs = std::fs::read_to_string(&log).unwrap_or_default();
            runs.lines().any(|l| l.contains("/victim 1 ")).then_some(())
        },
    )
    .await;
    let pod = first.pod.clone().unwrap_or(first.agent.clone());
    ns.api::<Pod>()
        .delete(
            &pod,
            &DeleteParams {
                grace_period_seconds: Some(0),
                ..Default::default()
            },
        )
        .await
        .expect("kill the agent pod");
    let done = wait_for(
        Duration::from_secs(90),
        "victim Succeeded on another agent",
        || async {
            let i = items.get("victim").await.ok()?;
            (i.phase() == Some(Phase::Succeeded)).then_some(i)
        },
    )
    .await;
    let status = done.status.expect("status");
    assert_eq!(
        status.attempt, 2,
        "the interrupted attempt counted, the second succeeded"
    );
    assert_ne!(
        status.claim.expect("claim").agent,
        first.agent,
        "another agent finished it"
    );
    // The killed attempt ended one of two ways, depending on which container the
    // kubelet stopped first: the supervisor fenced it out once the agent's Lease went
    // stale, or the agent saw its work container go and failed the attempt itself.
    let first_attempt = status
        .attempts
        .iter()
        .find(|a| a.attempt == 1)
        .expect("the first attempt is recorded");
    assert!(
        first_attempt.outcome == Some(triad::api::OutcomeKind::LeaseExpired)
            || (first_attempt.outcome == Some(triad::api::OutcomeKind::Failed)
                && first_attempt.reason.as_deref() == Some("WorkContainerExited")),
        "{first_attempt:?}"
    );
    let runs = std::fs::read_to_string(&log).expect("run log");
    assert_eq!(
        runs.lines().count(),
        2,
        "run twice: the interrupted attempt and the retry"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_pool_scales_from_zero_to_max_and_back_without_deleting_busy_agents() {
    let ns = TestNamespace::new("scaling").await;
    let _roles = [Role::Scheduler, Role::Pools, Role::Supervisor].map(|r| start_role(&ns, r));
    create::<WorkQueue>(&ns, json!({"metadata": {"name": "q"}, "spec": {}})).await;
    create::<AgentPool>(
        &ns,
        pool(
            "elastic",
            "q",
            json!({"minReplicas": 0, "maxReplicas": 3, "scaling": {"itemsPerAgent": 5, "scaleDownDelaySeconds": 3}}),
            "sleep 0.3",
        ),
    )
    .await;
    let pools: Api<AgentPool> = ns.api();
    // No work: no agents.
    wait_for(Duration::from_secs(30), "pool at zero", || async {
        let p = pools.get("elastic").await.ok()?;
        (p.status.as_ref()?.desired == 0).then_some(())
    })
    .await;
    assert!(agent_pods(&ns, "elastic").await.is_empty());
    let items: Api<WorkItem> = ns.api();
    for i in 0..50 {
        create::<WorkItem>(
            &ns,
            json!({"metadata": {"name": format!("w-{i:02}")}, "spec": {"queue": "q"}}),
        )
        .await;
    }
    wait_for(
        Duration::from_secs(60),
        "scaled up to maxReplicas",
        || async { (agent_pods(&ns, "elastic").await.len() == 3).then_some(()) },
    )
    .await;
    let done = wait_for(Duration::from_secs(180), "50 items Succeeded", || async {
        let list = items_in(&items).await;
        (list.len() == 50 && list.iter().all(|i| i.phase() == Some(Phase::Succeeded)))
            .then_some(list)
    })
    .await;
    wait_for(
        Duration::from_secs(60),
        "back to zero after the delay",
        || async { agent_pods(&ns, "elastic").await.is_empty().then_some(()) },
    )
    .await;
    // A busy agent deleted to scale in would have left an interrupted attempt behind.
    for item in &done {
        let status = item.status.as_ref().expect("status");
        assert_eq!(status.attempt, 1, "{} was interrupted", item.name_any());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deleted_idle_agent_is_replaced_and_leaves_no_process_behind() {
    let ns = TestNamespace::new("replace").await;
    // The pool controller as its own process, as it runs in a cluster.
    let _pools = ControllerProcess::start(&ns, "pools");
    create::<WorkQueue>(&ns, json!({"metadata": {"name": "q"}, "spec": {}})).await;
    create::<AgentPool>(&ns, pool("idle", "q", json!({"replicas": 1}), "true")).await;
    let running = wait_for(Duration::from_secs(60), "an agent pod Running", || async {
        agent_pods(&ns, "idle")
            .await
            .into_iter()
            .find(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
    })
    .await;
    let uid = running.metadata.uid.clone().expect("uid");
    let mut processes = Vec::new();
    for name in [AGENT_CONTAINER, "work"] {
        let container = container_id(&running, name).expect("the container runs");
        let found = container_processes(&container);
        assert!(
            !found.is_empty(),
            "{name} runs as container {container} with processes on the host"
        );
        processes.extend(found);
    }
    ns.api::<Pod>()
        .delete(&running.name_any(), &DeleteParams::default())
        .await
        .expect("delete pod");
    let replacement = wait_for(Duration::from_secs(60), "a replacement agent", || async {
        agent_pods(&ns, "idle")
            .await
            .into_iter()
            .find(|p| p.metadata.uid.as_deref() != Some(uid.as_str()))
    })
    .await;
    assert_ne!(replacement.name_any(), running.name_any());
    wait_for(
        Duration::from_secs(30),
        "the deleted agent's processes to be gone",
        || async {
            processes
                .iter()
                // SAFETY: kill with signal 0 only checks whether the process exists.
                .all(|pid| unsafe { libc::kill(*pid, 0) } != 0)
                .then_some(())
        },
    )
    .await;
}
