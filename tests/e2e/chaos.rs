//! A short chaos run inside `make test` (the long one is `make chaos`): 200 items on an
//! AgentPool of 4 agent pods (work: 0.2–1 s of sleep), containers on the test node, while
//! the test kills agent containers (`crictl stop`), deletes agent pods, freezes an agent
//! container past its lease (`ctr task pause`), and aborts and respawns the scheduler, pool
//! and supervisor roles (in-process, scoped to the test namespace). The shared API server
//! is never touched. Every item must succeed exactly once.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use triad::api::{AgentPool, OutcomeKind, Phase, WorkItem, WorkQueue};

use crate::support::{
    AGENT_CONTAINER, PRIVILEGED, Role, TestNamespace, agent_pod_spec, container_id, node_tool,
    scratch_dir, start_role, wait_for,
};

const ITEMS: usize = 200;
/// Items that must succeed after one fault before the next is injected.
const PROGRESS_BETWEEN_FAULTS: usize = 5;
const AGENTS: usize = 4;
const LEASE_SECONDS: u64 = 4;

/// The running agent containers of the chaos pool: (pod, container id).
async fn agent_containers(pods: &Api<Pod>) -> Vec<(String, String)> {
    pods.list(&ListParams::default().labels("triad.dev/pool=chaos"))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| Some((p.name_any(), container_id(p, AGENT_CONTAINER)?)))
        .collect()
}

fn ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

async fn ready_agents(pods: &Api<Pod>) -> usize {
    pods.list(&ListParams::default().labels("triad.dev/pool=chaos"))
        .await
        .map(|l| {
            l.items
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none() && ready(p))
                .count()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_loses_nothing_and_completes_nothing_twice() {
    let ns = TestNamespace::new("chaos").await;
    let scratch = scratch_dir("chaos");
    // Created by the work itself: agent containers run as uid 65532.
    let worklog = scratch.join("work.log");

    let mut roles: Vec<(Role, tokio::task::JoinHandle<()>)> =
        [Role::Scheduler, Role::Pools, Role::Supervisor]
            .into_iter()
            .map(|r| (r, start_role(&ns, r).0))
            .collect();

    let queue: WorkQueue = serde_json::from_value(json!({"metadata": {"name": "q"}, "spec": {
        "retry": {"maxAttempts": 30, "backoff": {"baseSeconds": 1, "maxSeconds": 3}}}}))
    .expect("queue");
    ns.api::<WorkQueue>()
        .create(&PostParams::default(), &queue)
        .await
        .expect("create queue");
    let script = format!(
        r#"echo "$TRIAD_ITEM $TRIAD_ATTEMPT start" >> {log}; sleep "$(printf '0.%03d' $((200 + $(od -An -N2 -tu2 /dev/urandom) % 800)))"; echo "$TRIAD_ITEM $TRIAD_ATTEMPT done" >> {log}"#,
        log = worklog.display()
    );
    let pool: AgentPool = serde_json::from_value(json!({"metadata": {"name": "chaos"}, "spec": {
        "queues": [{"name": "q"}], "replicas": AGENTS,
        "leaseSeconds": LEASE_SECONDS, "lifecycle": {"type": "Persistent"}, "podSecurity": PRIVILEGED,
        "template": {"spec": agent_pod_spec(&script, json!([{"name": "RUST_LOG", "value": "info,kube=warn"}]))}}}))
    .expect("pool");
    ns.api::<AgentPool>()
        .create(&PostParams::default(), &pool)
        .await
        .expect("create pool");
    let pods: Api<Pod> = ns.api();
    wait_for(Duration::from_secs(60), "agent pods ready", || async {
        (ready_agents(&pods).await == AGENTS).then_some(())
    })
    .await;

    let items: Api<WorkItem> = ns.api();
    stream::iter(0..ITEMS)
        .map(|i| {
            let items = items.clone();
            async move {
                let item: WorkItem = serde_json::from_value(json!({
                    "metadata": {"name": format!("c-{i:04}")}, "spec": {"queue": "q"}}))
                .expect("item");
                items
                    .create(&PostParams::default(), &item)
                    .await
                    .expect("create item");
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;

    // Faults, each once some items have succeeded since the one before: each kind at
    // least twice.
    let succeeded = |list: &[WorkItem]| {
        list.iter()
            .filter(|i| i.status.as_ref().and_then(|s| s.phase) == Some(Phase::Succeeded))
            .count()
    };
    let plan = [
        "kill",
        "scheduler",
        "pause",
        "delete",
        "pools",
        "kill",
        "supervisor",
        "pause",
        "all",
        "delete",
    ];
    let t0 = Instant::now();
    let mut injected = Vec::new();
    let mut done = succeeded(
        &items
            .list(&ListParams::default())
            .await
            .expect("list")
            .items,
    );
    // Victims come from one seeded source, printed so a failure can be replayed.
    let seed = std::env::var("TRIAD_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("chaos seed {seed}: TRIAD_CHAOS_SEED={seed} picks the same victims");
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
    for fault in plan {
        injected.push((fault, done));
        let containers = agent_containers(&pods).await;
        let victim = containers
            .get(rand::Rng::random_range(
                &mut rng,
                0..containers.len().max(1),
            ))
            .cloned();
        match (fault, victim) {
            // A victim that died since the list was read makes the fault a no-op.
            ("kill", Some((_, id))) => {
                let _ = node_tool("crictl", &["stop", "--timeout", "0", &id]);
            }
            // The cgroup freezer: the agent and its work stop at once, past the lease.
            ("pause", Some((_, id))) if node_tool("ctr", &["task", "pause", &id]).is_ok() => {
                tokio::time::sleep(Duration::from_secs(LEASE_SECONDS * 2 + 1)).await;
                let _ = node_tool("ctr", &["task", "resume", &id]);
            }
            ("delete", Some((pod, _))) => {
                let _ = pods
                    .delete(
                        &pod,
                        &DeleteParams {
                            grace_period_seconds: Some(0),
                            ..Default::default()
                        },
                    )
                    .await;
            }
            ("scheduler" | "pools" | "supervisor" | "all", _) => {
                for (role, handle) in roles.iter_mut() {
                    let hit = fault == "all"
                        || matches!(
                            (fault, *role),
                            ("scheduler", Role::Scheduler)
                                | ("pools", Role::Pools)
                                | ("supervisor", Role::Supervisor)
                        );
                    if hit {
                        handle.abort();
                        // Gone once the aborted task has ended: restart it.
                        let _ = (&mut *handle).await;
                        *handle = start_role(&ns, *role).0;
                    }
                }
            }
            _ => {}
        }
        // The next fault once the system has made progress since this one (as the
        // make-chaos driver does), so every fault meets work it can disturb. The count
        // that ends the wait is the one the next fault is injected at.
        let target = (done + PROGRESS_BETWEEN_FAULTS).min(ITEMS);
        done = wait_for(
            Duration::from_secs(60),
            &format!(
                "items succeeding again after the fault {fault} (faults so far: {injected:?})"
            ),
            || async {
                let now = succeeded(&items.list(&ListParams::default()).await.ok()?.items);
                (now >= target).then_some(now)
            },
        )
        .await;
    }

    let all = wait_for(
        Duration::from_secs(150),
        "every item Succeeded after the faults",
        || async {
            let list = items.list(&ListParams::default()).await.ok()?.items;
            (succeeded(&list) == ITEMS).then_some(list)
        },
    )
    .await;
    eprintln!(
        "chaos: all {ITEMS} succeeded {:?} after the first fault; faults (kind, items done before it): {injected:?}",
        t0.elapsed()
    );
    assert!(
        injected.iter().filter(|(_, done)| *done < ITEMS).count() >= 6,
        "most faults must hit while work is in flight: {injected:?}"
    );

    // Exactly one accepted completion per item.
    let double: Vec<String> = all
        .iter()
        .filter(|i| {
            i.status
                .as_ref()
                .map(|s| {
                    s.attempts
                        .iter()
                        .filter(|a| a.outcome == Some(OutcomeKind::Succeeded))
                        .count()
                })
                .unwrap_or(0)
                > 1
        })
        .map(|i| i.name_any())
        .collect();
    assert!(double.is_empty(), "completed twice: {double:?}");
    // Every item ran, and every Succeeded item's work ran to its end at least once.
    let text = std::fs::read_to_string(&worklog).expect("work log");
    let mut done: HashMap<String, usize> = HashMap::new();
    for l in text.lines() {
        if let Some(item) = l.strip_suffix(" done").and_then(|l| l.split(' ').next()) {
            *done.entry(item.to_owned()).or_default() += 1;
        }
    }
    let never = all
        .iter()
        .filter(|i| !done.contains_key(&format!("{}/{}", ns.name, i.name_any())))
        .count();
    assert_eq!(never, 0, "items Succeeded without their work having run");

    for (_, h) in roles {
        h.abort();
    }
    // Stop the agents before the namespace goes (their pods would be deleted anyway).
    let _ = ns
        .api::<AgentPool>()
        .delete("chaos", &DeleteParams::default())
        .await;
    let _ = std::fs::remove_dir_all(&scratch);
}
