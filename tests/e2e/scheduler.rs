//! The scheduler on the real control plane. Tests play the agent through the same
//! claim and fenced-write functions the agent runtime uses.

use std::time::Duration;

use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use triad::api::{FreeForm, OutcomeKind, Phase, WorkItem, WorkQueue, WorkRequest};
use triad::k8s::fence::{AgentIdentity, Fence, claim, complete_ops, fenced_patch, set};

use crate::support::{Role, TestNamespace, create, scratch_dir, start_role, wait_for};

const LONG: Duration = Duration::from_secs(60);

pub fn start_scheduler(ns: &TestNamespace) -> tokio::task::JoinHandle<()> {
    start_role(ns, Role::Scheduler).0
}

fn agent(name: &str) -> AgentIdentity {
    AgentIdentity {
        agent: name.into(),
        pod: None,
        lease: None,
    }
}

pub async fn phase_of(api: &Api<WorkItem>, name: &str) -> Option<Phase> {
    api.get_opt(name)
        .await
        .ok()
        .flatten()
        .and_then(|i| i.phase())
}

async fn wait_phase(api: &Api<WorkItem>, name: &str, phase: Phase) -> WorkItem {
    wait_for(LONG, &format!("{name} to be {phase}"), || async {
        api.get_opt(name)
            .await
            .ok()
            .flatten()
            .filter(|i| i.phase() == Some(phase))
    })
    .await
}

/// Claims `name` (retrying while the scheduler still writes to it) and reports the
/// attempt's outcome as an agent would.
async fn run_attempt(api: &Api<WorkItem>, name: &str, who: &str, succeed: bool) {
    let claimed = wait_for(LONG, &format!("claim {name}"), || async {
        let item = api.get(name).await.ok()?;
        if !triad::core::phase::is_claimable(&item, jiff::Timestamp::now()) {
            return None;
        }
        claim(api, &item, &agent(who)).await.ok()
    })
    .await;
    let fence = Fence::of(&claimed).expect("claimed item has a claim");
    if succeed {
        fenced_patch(
            api,
            name,
            &fence,
            complete_ops(&claimed, None, json!({}), json!([])),
        )
        .await
        .expect("complete");
    } else {
        let status = claimed.status.clone().unwrap_or_default();
        let outcome = json!({"kind": OutcomeKind::Failed, "reason": "ExitCode", "message": "exit code 1",
            "attempt": status.attempt, "epoch": fence.epoch});
        fenced_patch(api, name, &fence, vec![set("outcome", outcome)])
            .await
            .expect("report failure");
    }
}

#[tokio::test]
async fn a_request_runs_its_graph_in_dependency_order() {
    let ns = TestNamespace::new("graph").await;
    let _s = start_scheduler(&ns);
    create::<WorkQueue>(
        &ns,
        json!({"metadata": {"name": "work"}, "spec": {"types": ["step"]}}),
    )
    .await;
    create::<WorkRequest>(
        &ns,
        json!({"metadata": {"name": "rel"}, "spec": {"priority": 700, "tasks": [
            {"name": "a", "type": "step"},
            {"name": "b", "type": "step", "dependsOn": ["a"]},
            {"name": "c", "type": "step", "dependsOn": ["a"], "priority": 900},
            {"name": "fan", "type": "step", "dependsOn": ["a"], "forEach": {"values": ["x", "y", "z"], "key": "part"}}
        ]}}),
    )
    .await;
    let items: Api<WorkItem> = ns.api();
    let all = wait_for(LONG, "6 items created", || async {
        let list = items.list(&Default::default()).await.ok()?;
        (list.items.len() == 6).then_some(list.items)
    })
    .await;
    for item in &all {
        let owner = item
            .owner_references()
            .first()
            .expect("owned by the request");
        assert_eq!(owner.name, "rel");
    }
    let b = items.get("rel-b").await.expect("b");
    assert_eq!(b.spec.priority, 700, "priority inherited from the request");
    assert_eq!(
        items.get("rel-c").await.expect("c").spec.priority,
        900,
        "task priority wins"
    );
    let fan = items.get("rel-fan-1").await.expect("fan-out item");
    assert_eq!(
        fan.spec
            .payload
            .as_ref()
            .and_then(FreeForm::value)
            .and_then(|p| p.get("part")),
        Some(&json!("y"))
    );

    // b waits for a, and says so.
    let waiting = wait_for(LONG, "b to say why it waits", || async {
        let b = items.get("rel-b").await.ok()?;
        b.status
            .and_then(|s| s.waiting)
            .filter(|w| w.contains("dependency rel-a"))
    })
    .await;
    assert!(waiting.contains("rel-a"));
    assert!(!triad::core::phase::is_claimable(
        &items.get("rel-b").await.expect("b"),
        jiff::Timestamp::now()
    ));

    run_attempt(&items, "rel-a", "agent-1", true).await;
    for name in ["rel-b", "rel-c", "rel-fan-0", "rel-fan-1", "rel-fan-2"] {
        wait_phase(&items, name, Phase::Queued).await;
        run_attempt(&items, name, "agent-1", true).await;
    }
    let requests: Api<WorkRequest> = ns.api();
    let done = wait_for(LONG, "request Succeeded", || async {
        let r = requests.get("rel").await.ok()?;
        (r.status.as_ref()?.phase == Some(triad::api::RequestPhase::Succeeded)).then_some(r)
    })
    .await;
    let status = done.status.expect("status");
    assert_eq!((status.succeeded, status.total), (6, 6));
}

#[tokio::test]
async fn a_cycle_is_refused_with_a_condition_naming_it_and_no_items() {
    let ns = TestNamespace::new("cycle").await;
    let _s = start_scheduler(&ns);
    create::<WorkRequest>(
        &ns,
        json!({"metadata": {"name": "loop"}, "spec": {"tasks": [
            {"name": "a", "queue": "q", "dependsOn": ["c"]},
            {"name": "b", "queue": "q", "dependsOn": ["a"]},
            {"name": "c", "queue": "q", "dependsOn": ["b"]}
        ]}}),
    )
    .await;
    let requests: Api<WorkRequest> = ns.api();
    let condition = wait_for(LONG, "Valid=False", || async {
        let r = requests.get("loop").await.ok()?;
        r.status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Valid" && c.status == "False")
    })
    .await;
    assert!(
        condition.message.contains("cycle") && condition.message.contains('→'),
        "{}",
        condition.message
    );
    for task in ["a", "b", "c"] {
        assert!(condition.message.contains(task), "{}", condition.message);
    }
    let items: Api<WorkItem> = ns.api();
    assert!(
        items
            .list(&Default::default())
            .await
            .expect("list")
            .items
            .is_empty(),
        "no items for an invalid request"
    );
}

#[tokio::test]
async fn failures_back_off_then_dead_letter_and_redrive_brings_the_item_back() {
    let ns = TestNamespace::new("retry").await;
    let _s = start_scheduler(&ns);
    create::<WorkQueue>(
        &ns,
        json!({"metadata": {"name": "q"}, "spec": {"retry": {"maxAttempts": 3, "backoff": {"baseSeconds": 3, "maxSeconds": 30, "jitterPercent": 0}}}}),
    )
    .await;
    create::<WorkItem>(
        &ns,
        json!({"metadata": {"name": "flaky"}, "spec": {"queue": "q"}}),
    )
    .await;
    let items: Api<WorkItem> = ns.api();
    let mut delays = Vec::new();
    for attempt in 1..=3 {
        run_attempt(&items, "flaky", "agent-1", false).await;
        if attempt < 3 {
            let backoff = wait_for(LONG, "Backoff after this attempt", || async {
                let i = items.get("flaky").await.ok()?;
                let s = i.status.as_ref()?;
                (s.phase == Some(Phase::Backoff) && s.last_error.as_ref()?.attempt == attempt)
                    .then_some(i)
            })
            .await;
            let status = backoff.status.expect("status");
            let retry_at = status.retry_at.expect("retryAt").0;
            let last_error = status.last_error.expect("lastError");
            let failed_at = last_error.at.expect("lastError.at").0;
            delays.push(retry_at.duration_since(failed_at).as_secs_f64());
            assert_eq!(last_error.reason, "ExitCode");
        }
    }
    // Status times have second precision: 3 s then 6 s, each ±1.
    assert!(delays[1] >= delays[0] + 1.5, "delays grow: {delays:?}");
    let dead = wait_phase(&items, "flaky", Phase::DeadLettered).await;
    let status = dead.status.expect("status");
    assert_eq!(
        status.last_error.expect("lastError").reason,
        "MaxAttemptsExceeded"
    );
    assert_eq!(status.attempts.len(), 3, "attempt history kept");

    // Redrive by annotation: back to Queued with attempts reset.
    items
        .patch(
            "flaky",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"triad.dev/redrive": "now"}}})),
        )
        .await
        .expect("annotate");
    let back = wait_phase(&items, "flaky", Phase::Queued).await;
    assert_eq!(back.status.expect("status").attempt, 0);
    wait_for(LONG, "redrive annotation removed", || async {
        let i = items.get("flaky").await.ok()?;
        (!i.annotations().contains_key("triad.dev/redrive")).then_some(())
    })
    .await;
    run_attempt(&items, "flaky", "agent-1", true).await;
    wait_phase(&items, "flaky", Phase::Succeeded).await;
}

#[tokio::test]
async fn a_passed_deadline_dead_letters_with_attempts_left() {
    let ns = TestNamespace::new("deadline").await;
    let _s = start_scheduler(&ns);
    create::<WorkQueue>(&ns, json!({"metadata": {"name": "q"}, "spec": {"retry": {"maxAttempts": 5, "backoff": {"baseSeconds": 30, "maxSeconds": 60}}}})).await;
    let deadline = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(4);
    create::<WorkItem>(&ns, json!({"metadata": {"name": "late"}, "spec": {"queue": "q", "deadline": deadline.to_string()}})).await;
    let items: Api<WorkItem> = ns.api();
    run_attempt(&items, "late", "agent-1", false).await;
    wait_phase(&items, "late", Phase::Backoff).await;
    let dead = wait_phase(&items, "late", Phase::DeadLettered).await;
    let status = dead.status.expect("status");
    assert_eq!(
        status.last_error.expect("lastError").reason,
        "DeadlineExceeded"
    );
    assert_eq!(status.attempt, 1, "dead-lettered with 4 attempts left");
}

#[tokio::test]
async fn waiting_items_say_why() {
    let ns = TestNamespace::new("why").await;
    let _s = start_scheduler(&ns);
    create::<WorkQueue>(
        &ns,
        json!({"metadata": {"name": "a1"}, "spec": {"types": ["dup"]}}),
    )
    .await;
    create::<WorkQueue>(
        &ns,
        json!({"metadata": {"name": "a2"}, "spec": {"types": ["dup"]}}),
    )
    .await;
    create::<WorkQueue>(
        &ns,
        json!({"metadata": {"name": "narrow"}, "spec": {"maxInFlight": 1}}),
    )
    .await;
    create::<triad::api::AgentPool>(
        &ns,
        json!({"metadata": {"name": "narrow-pool"}, "spec": {"queues": [{"name": "narrow"}], "replicas": 0, "template": {}}}),
    )
    .await;
    let later = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(3600);
    create::<WorkItem>(
        &ns,
        json!({"metadata": {"name": "typed"}, "spec": {"type": "nobody"}}),
    )
    .await;
    create::<WorkItem>(
        &ns,
        json!({"metadata": {"name": "ambiguous"}, "spec": {"type": "dup"}}),
    )
    .await;
    create::<WorkItem>(
        &ns,
        json!({"metadata": {"name": "dep"}, "spec": {"queue": "a1", "dependsOn": ["missing"]}}),
    )
    .await;
    create::<WorkItem>(&ns, json!({"metadata": {"name": "future"}, "spec": {"queue": "a1", "notBefore": later.to_string()}})).await;
    create::<WorkItem>(
        &ns,
        json!({"metadata": {"name": "first"}, "spec": {"queue": "narrow"}}),
    )
    .await;
    create::<WorkItem>(
        &ns,
        json!({"metadata": {"name": "second"}, "spec": {"queue": "narrow"}}),
    )
    .await;
    create::<WorkItem>(
        &ns,
        json!({"metadata": {"name": "lonely"}, "spec": {"queue": "a1"}}),
    )
    .await;
    create::<WorkQueue>(
        &ns,
        json!({"metadata": {"name": "line"}, "spec": {"agingSeconds": 0}}),
    )
    .await;
    create::<triad::api::AgentPool>(
        &ns,
        json!({"metadata": {"name": "line-pool"}, "spec": {"queues": [{"name": "line"}], "replicas": 0, "template": {}}}),
    )
    .await;
    create::<WorkItem>(
        &ns,
        json!({"metadata": {"name": "p-low"}, "spec": {"queue": "line", "priority": 100}}),
    )
    .await;
    create::<WorkItem>(
        &ns,
        json!({"metadata": {"name": "p-high"}, "spec": {"queue": "line", "priority": 900}}),
    )
    .await;
    let items: Api<WorkItem> = ns.api();
    let why = |name: &'static str, needle: &'static str| {
        let items = items.clone();
        async move {
            wait_for(LONG, &format!("{name} to explain '{needle}'"), || async {
                let i = items.get(name).await.ok()?;
                i.status
                    .and_then(|s| s.waiting)
                    .filter(|w| w.contains(needle))
            })
            .await
        }
    };
    why("typed", "no queue accepts type nobody").await;
    why("ambiguous", "queues a1, a2 all accept type dup").await;
    why("dep", "waiting for dependency missing").await;
    why("future", "not before").await;
    why("lonely", "no agent pool serves queue a1").await;
    why("p-low", "position 2 of 2 in queue").await;
    why("p-high", "position 1 of 2 in queue").await;
    // maxInFlight 1: one item admitted, the other waits for room.
    let admitted = wait_for(LONG, "one narrow item admitted", || async {
        let a = phase_of(&items, "first").await;
        let b = phase_of(&items, "second").await;
        match (a, b) {
            (Some(Phase::Queued), Some(Phase::Pending)) => Some("second"),
            (Some(Phase::Pending), Some(Phase::Queued)) => Some("first"),
            _ => None,
        }
    })
    .await;
    why(admitted, "at maxInFlight").await;
    let typed = items.get("typed").await.expect("typed");
    let condition = typed
        .status
        .expect("status")
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Routed")
        .expect("Routed condition");
    assert_eq!(
        (condition.status.as_str(), condition.reason.as_str()),
        ("False", "QueueNotFound")
    );

    // The queue appears: the typed item moves on by itself.
    create::<WorkQueue>(
        &ns,
        json!({"metadata": {"name": "late-queue"}, "spec": {"types": ["nobody"]}}),
    )
    .await;
    wait_phase(&items, "typed", Phase::Queued).await;
}

#[tokio::test]
async fn restarting_the_scheduler_loses_and_duplicates_nothing() {
    let ns = TestNamespace::new("restart").await;
    let first = start_scheduler(&ns);
    create::<WorkQueue>(
        &ns,
        json!({"metadata": {"name": "q"}, "spec": {"types": ["t"]}}),
    )
    .await;
    let tasks: Vec<_> = (0..10).map(|i| json!({"name": format!("t{i}"), "type": "t", "dependsOn": if i == 0 { json!([]) } else { json!(["t0"]) }})).collect();
    create::<WorkRequest>(
        &ns,
        json!({"metadata": {"name": "big"}, "spec": {"tasks": tasks}}),
    )
    .await;
    let items: Api<WorkItem> = ns.api();
    wait_for(LONG, "10 items", || async {
        (items.list(&Default::default()).await.ok()?.items.len() == 10).then_some(())
    })
    .await;
    run_attempt(&items, "big-t0", "agent-1", true).await;
    first.abort();
    let _ = first.await;
    let _second = start_scheduler(&ns);
    for i in 1..10 {
        run_attempt(&items, &format!("big-t{i}"), "agent-1", true).await;
    }
    let requests: Api<WorkRequest> = ns.api();
    wait_for(LONG, "request Succeeded", || async {
        let r = requests.get("big").await.ok()?;
        (r.status.as_ref()?.phase == Some(triad::api::RequestPhase::Succeeded)).then_some(())
    })
    .await;
    let list = items.list(&Default::default()).await.expect("list");
    assert_eq!(list.items.len(), 10, "no duplicates");
    assert!(
        list.items
            .iter()
            .all(|i| i.phase() == Some(Phase::Succeeded)
                && i.status.as_ref().map(|s| s.attempt) == Some(1))
    );
}

fn triad_cli(ns: &TestNamespace, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_triad"))
        .env("KUBECONFIG", crate::support::kubeconfig_path())
        .args(args)
        .args(["-n", &ns.name])
        .output()
        .expect("run triad")
}

#[tokio::test]
async fn the_cli_redrives_cancels_and_draws_the_request_tree() {
    let ns = TestNamespace::new("cli").await;
    let _s = start_scheduler(&ns);
    create::<WorkQueue>(
        &ns,
        json!({"metadata": {"name": "q"}, "spec": {"retry": {"maxAttempts": 1}}}),
    )
    .await;
    create::<WorkRequest>(
        &ns,
        json!({"metadata": {"name": "job"}, "spec": {"tasks": [
            {"name": "first", "queue": "q"},
            {"name": "then", "queue": "q", "dependsOn": ["first"]}
        ]}}),
    )
    .await;
    let items: Api<WorkItem> = ns.api();
    wait_for(LONG, "items", || async {
        items.get_opt("job-first").await.ok().flatten()
    })
    .await;
    run_attempt(&items, "job-first", "agent-1", false).await;
    wait_phase(&items, "job-first", Phase::DeadLettered).await;
    // The scheduler fails the dependent on its next look; draw the tree after that.
    wait_phase(&items, "job-then", Phase::Failed).await;

    let tree = triad_cli(&ns, &["tree", "job"]);
    let text = String::from_utf8_lossy(&tree.stdout);
    assert!(
        tree.status.success(),
        "{}",
        String::from_utf8_lossy(&tree.stderr)
    );
    assert!(
        text.contains("job-first")
            && text.contains("DeadLettered")
            && text.contains("MaxAttemptsExceeded"),
        "{text}"
    );
    // A dead-lettered dependency fails its dependents (reason DependencyFailed).
    assert!(
        text.contains("job-then") && text.contains("DependencyFailed ← job-first"),
        "{text}"
    );

    let out = triad_cli(&ns, &["redrive", "job-first"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let back = wait_phase(&items, "job-first", Phase::Queued).await;
    assert_eq!(back.status.expect("status").attempt, 0);

    let out = triad_cli(&ns, &["cancel", "wr/job"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_phase(&items, "job-first", Phase::Cancelled).await;
    assert_eq!(
        phase_of(&items, "job-then").await,
        Some(Phase::Failed),
        "terminal phases stay"
    );
    let requests: Api<WorkRequest> = ns.api();
    wait_for(LONG, "request Cancelled", || async {
        let r = requests.get("job").await.ok()?;
        (r.status.as_ref()?.phase == Some(triad::api::RequestPhase::Cancelled)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn claims_follow_priority_and_aging_lets_low_priority_work_through() {
    let ns = TestNamespace::new("aging").await;
    let _s = start_scheduler(&ns);
    // One point of priority per second waited.
    create::<WorkQueue>(
        &ns,
        json!({"metadata": {"name": "q"}, "spec": {"agingSeconds": 1}}),
    )
    .await;
    let items: Api<WorkItem> = ns.api();
    create::<WorkItem>(
        &ns,
        json!({"metadata": {"name": "low"}, "spec": {"queue": "q", "priority": 0}}),
    )
    .await;
    for i in 0..3 {
        create::<WorkItem>(&ns, json!({"metadata": {"name": format!("high-{i}")}, "spec": {"queue": "q", "priority": 4}})).await;
    }
    let dir = scratch_dir("aging");
    // A single agent that always takes the head (top-k 1) and needs 1 s per item.
    let _agent = crate::agent::Agent::start(
        &ns,
        &dir,
        "solo",
        &[("TRIAD_CLAIM_TOP_K", "1")],
        &["sleep", "1"],
    );
    // Higher-priority work keeps arriving for 12 s.
    let arrivals = {
        let ns_items = items.clone();
        tokio::spawn(async move {
            for i in 3..27 {
                let item: WorkItem = serde_json::from_value(json!({"metadata": {"name": format!("high-{i}")}, "spec": {"queue": "q", "priority": 4}})).expect("item");
                let _ = ns_items.create(&PostParams::default(), &item).await;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    let first = wait_for(LONG, "the first claim", || async {
        let list = items.list(&Default::default()).await.ok()?;
        // Each item takes the agent 1 s, so polling every 100 ms sees the first claim alone.
        list.items
            .into_iter()
            .find(|i| i.status.as_ref().and_then(|s| s.claim.as_ref()).is_some())
    })
    .await;
    assert!(
        first.name_any().starts_with("high-"),
        "the higher priority is claimed first, got {}",
        first.name_any()
    );
    wait_phase(&items, "low", Phase::Succeeded).await;
    let still_waiting = items
        .list(&Default::default())
        .await
        .expect("list")
        .items
        .iter()
        .filter(|i| i.name_any().starts_with("high-") && i.phase() != Some(Phase::Succeeded))
        .count();
    assert!(
        still_waiting > 0,
        "low finished while higher-priority work was still waiting (aging), not after the stream dried up"
    );
    arrivals.abort();
}

/// The scheduler's dependency-cycle condition on an item (`Valid=False`), if any.
fn cycle_condition(item: &WorkItem) -> Option<Condition> {
    item.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Valid" && c.status == "False")
        .cloned()
}

fn waiting_of(item: &WorkItem) -> String {
    item.status
        .as_ref()
        .and_then(|s| s.waiting.clone())
        .unwrap_or_default()
}

/// Whether an Event about the WorkItem `name` with `reason` was published.
async fn has_event(ns: &TestNamespace, name: &str, reason: &str) -> bool {
    let events: Api<Event> = ns.api();
    events
        .list(&Default::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .iter()
        .any(|e| {
            e.regarding.as_ref().is_some_and(|r| {
                r.kind.as_deref() == Some("WorkItem") && r.name.as_deref() == Some(name)
            }) && e.reason.as_deref() == Some(reason)
        })
}

#[tokio::test]
async fn a_cycle_among_applied_items_is_named_on_each_and_released_when_broken() {
    let ns = TestNamespace::new("itemcycle").await;
    let _s = start_scheduler(&ns);
    create::<WorkQueue>(&ns, json!({"metadata": {"name": "q"}, "spec": {}})).await;
    // Applied one by one, as kubectl would: the cycle exists only once b arrives.
    for (name, dep) in [("a", "b"), ("b", "a"), ("c", "a")] {
        create::<WorkItem>(
            &ns,
            json!({"metadata": {"name": name}, "spec": {"queue": "q", "dependsOn": [dep]}}),
        )
        .await;
    }
    let items: Api<WorkItem> = ns.api();
    let named = |name: &'static str, reason: &'static str, cycle: &'static str| {
        let items = items.clone();
        async move {
            wait_for(
                LONG,
                &format!("{name}: {reason} naming {cycle}"),
                || async {
                    let i = items.get(name).await.ok()?;
                    let c = cycle_condition(&i)?;
                    (c.reason == reason && c.message.contains(cycle)).then_some((i, c))
                },
            )
            .await
        }
    };
    for (name, path) in [("a", "a → b → a"), ("b", "b → a → b")] {
        let (item, condition) = named(name, "DependencyCycle", path).await;
        assert_eq!(
            condition.message,
            format!("dependency cycle: {path}; remove one of these dependsOn entries")
        );
        assert_eq!(waiting_of(&item), format!("dependency cycle: {path}"));
        assert_eq!(item.phase(), Some(Phase::Pending), "stays fixable");
    }
    let (c, condition) = named("c", "DependsOnCycle", "a → b → a").await;
    assert!(
        condition.message.contains("(via c → a)")
            && condition
                .message
                .contains("remove one of the cycle's dependsOn entries"),
        "{}",
        condition.message
    );
    assert_eq!(waiting_of(&c), "waits on dependency cycle a → b → a");
    for name in ["a", "b"] {
        wait_for(
            LONG,
            &format!("a DependencyCycle Event on {name}"),
            || async { has_event(&ns, name, "DependencyCycle").await.then_some(()) },
        )
        .await;
    }

    // Break the cycle: a is released, and so is everything behind it once it is done.
    items
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"dependsOn": []}})),
        )
        .await
        .expect("patch a");
    let a = wait_phase(&items, "a", Phase::Queued).await;
    assert_eq!(cycle_condition(&a), None, "a's condition is gone");
    for name in ["b", "c"] {
        wait_for(LONG, &format!("{name} to wait for a, no cycle"), || async {
            let i = items.get(name).await.ok()?;
            (cycle_condition(&i).is_none() && waiting_of(&i) == "waiting for dependency a")
                .then_some(())
        })
        .await;
    }
    wait_for(LONG, "a DependencyCycleResolved Event on b", || async {
        has_event(&ns, "b", "DependencyCycleResolved")
            .await
            .then_some(())
    })
    .await;
    run_attempt(&items, "a", "agent-1", true).await;
    for name in ["b", "c"] {
        wait_phase(&items, name, Phase::Queued).await;
        run_attempt(&items, name, "agent-1", true).await;
        wait_phase(&items, name, Phase::Succeeded).await;
    }
}
