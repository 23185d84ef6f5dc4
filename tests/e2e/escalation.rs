//! A queue's escalation policy as a user meets it: the supervisor escalates a running
//! item (a stall, a budget overrun), the agent stops it, and the scheduler applies the
//! queue's `spec.escalation`. `Reroute` is covered in `supervisor.rs`; here are
//! `RaisePriority` (requeued here, claimed ahead of the work that waited at the old
//! priority) and `Fail` (Failed, said so on the item, in an Event and on its request).
//! Scheduler and supervisor run in the test process, the agent as a host process running
//! `triad simulate`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use serde_json::json;
use triad::api::{
    Phase, RequestPhase, WorkItem, WorkItemStatus, WorkQueue, WorkRequest, find_condition,
};
use triad::core::supervision::conditions;

use crate::agent::Agent;
use crate::ladder::{finished, spender};
use crate::scheduler::start_scheduler;
use crate::supervisor::events_about;
use crate::support::{Role, TestNamespace, create, scratch_dir, start_role, wait_for};

const LONG: Duration = Duration::from_secs(60);

fn escalated(item: &WorkItem) -> bool {
    item.status
        .as_ref()
        .and_then(|s| find_condition(&s.conditions, conditions::ESCALATED))
        .is_some_and(|c| c.status == "True")
}

/// The item's Escalate intervention: which monitor raised it, and why.
fn escalation_record(status: &WorkItemStatus) -> (&str, &str) {
    let rec = status
        .interventions
        .iter()
        .find(|i| i.action == "Escalate")
        .unwrap_or_else(|| panic!("an Escalate intervention: {:?}", status.interventions));
    (rec.monitor.as_str(), rec.reason.as_str())
}

/// The note of an Event with `reason` on the WorkItem `item`, once there is one.
async fn event_note(ns: &TestNamespace, item: &str, reason: &str) -> String {
    wait_for(LONG, &format!("a {reason} Event on {item}"), || async {
        let events = events_about(ns, "WorkItem", item, reason).await;
        events
            .into_iter()
            .next()
            .map(|e| e.note.unwrap_or_default())
    })
    .await
}

/// Every claim in the namespace, in the order the API server committed them (one watch
/// sees the writes in that order): item name and claim epoch. Claim timestamps are whole
/// seconds, too coarse to order claims a second or less apart.
async fn record_claims(ns: &TestNamespace) -> Arc<Mutex<Vec<(String, i64)>>> {
    let claims = Arc::new(Mutex::new(Vec::new()));
    let (listed_tx, listed) = tokio::sync::oneshot::channel::<()>();
    let api: Api<WorkItem> = ns.api();
    let seen = claims.clone();
    tokio::spawn(async move {
        let mut events = watcher::watcher(api, watcher::Config::default()).boxed();
        let mut listed_tx = Some(listed_tx);
        while let Some(Ok(event)) = events.next().await {
            match event {
                watcher::Event::Apply(wi) | watcher::Event::InitApply(wi) => {
                    let claim = (wi.name_any(), wi.epoch());
                    let mut seen = seen.lock().expect("lock");
                    if claim.1 > 0 && !seen.contains(&claim) {
                        seen.push(claim);
                    }
                }
                watcher::Event::InitDone => {
                    if let Some(tx) = listed_tx.take() {
                        let _ = tx.send(());
                    }
                }
                watcher::Event::Delete(_) | watcher::Event::Init => {}
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), listed)
        .await
        .expect("the watch listed within 10 s")
        .expect("the watch runs");
    claims
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn raise_priority_requeues_a_stalled_item_above_the_work_waiting_below_it() {
    let ns = TestNamespace::new("esc-raise").await;
    let _sched = start_scheduler(&ns);
    let _sup = start_role(&ns, Role::Supervisor).0;
    // Aging off, so the order below is by priority alone.
    create::<WorkQueue>(
        &ns,
        json!({"metadata": {"name": "q"}, "spec": {"agingSeconds": 0,
            "supervision": {"stallSeconds": 2, "onStall": "Escalate", "cancelGraceSeconds": 2},
            "escalation": {"action": "RaisePriority", "raisePriority": 300}}}),
    )
    .await;
    create::<WorkItem>(
        &ns,
        json!({"metadata": {"name": "stuck"}, "spec": {"queue": "q", "priority": 100,
            "payload": {"stallOnAttempt": 1, "steps": 1, "stepMillis": 100}}}),
    )
    .await;
    let claims = record_claims(&ns).await;
    let dir = scratch_dir("esc-raise");
    // One agent: items run one at a time, in the order it claims them.
    let _agent = Agent::start(&ns, &dir, "solo", &[], &["triad", "simulate"]);
    let items: Api<WorkItem> = ns.api();
    wait_for(LONG, "stuck running its first attempt", || async {
        let i = items.get("stuck").await.ok()?;
        (i.phase() == Some(Phase::Running)).then_some(())
    })
    .await;
    // Work that arrives while it runs, above its priority and below the raised one.
    // Each peer runs about 1.5 s, so the agent decides what to claim next long after the
    // scheduler has requeued the escalated item.
    let peers: Vec<String> = (1..=4).map(|n| format!("peer-{n}")).collect();
    for name in &peers {
        create::<WorkItem>(
            &ns,
            json!({"metadata": {"name": name}, "spec": {"queue": "q", "priority": 300,
                "payload": {"steps": 3, "stepMillis": 500}}}),
        )
        .await;
    }

    // Escalated on the stall and requeued at 100 + 300.
    let raised = wait_for(LONG, "stuck's priority raised", || async {
        let i = items.get("stuck").await.ok()?;
        (i.status.as_ref()?.priority == Some(400)).then_some(i)
    })
    .await;
    assert_eq!(raised.spec.priority, 100, "the user's spec is left alone");
    // The peers still unclaimed now (at most one ran while it was stalled and held).
    let mut waiting = Vec::new();
    for name in &peers {
        let peer = items.get(name).await.expect("peer");
        if peer.status.as_ref().is_none_or(|s| s.attempt == 0) {
            waiting.push(name.clone());
        }
    }
    assert!(
        waiting.len() >= 2,
        "peers left to overtake: {waiting:?} (the test needs the agent busy with them)"
    );

    let stuck = finished(&items, "stuck").await;
    let status = stuck.status.clone().expect("status");
    assert_eq!(status.phase, Some(Phase::Succeeded), "{status:?}");
    assert_eq!(status.attempt, 2, "one stalled attempt, then a good one");
    let second = (String::from("stuck"), stuck.epoch());
    for name in &waiting {
        let peer = finished(&items, name).await;
        assert_eq!(peer.phase(), Some(Phase::Succeeded));
    }
    let order = claims.lock().expect("lock").clone();
    let at = |claim: &(String, i64)| {
        order
            .iter()
            .position(|c| c == claim)
            .unwrap_or_else(|| panic!("{claim:?} among the claims {order:?}"))
    };
    for name in &waiting {
        let peer = items.get(name).await.expect("peer");
        assert!(
            at(&(name.clone(), peer.epoch())) > at(&second),
            "{name} (priority 300) was claimed before stuck (raised to 400): {order:?}"
        );
    }

    // What a user reads: the intervention, the condition that says where it has been,
    // and Events on the item from the supervisor and the scheduler.
    assert_eq!(escalation_record(&status), ("progress", "Stalled"));
    assert!(
        escalated(&stuck),
        "Escalated=True is kept: {:?}",
        status.conditions
    );
    let first = status
        .attempts
        .iter()
        .find(|a| a.attempt == 1)
        .expect("attempt 1 recorded");
    assert_eq!(first.reason.as_deref(), Some("Escalated"), "{first:?}");
    for (reason, says) in [
        ("Held", "escalated; applying the queue's escalation policy"),
        ("PriorityRaised", "escalated: priority 100 → 400"),
    ] {
        assert_eq!(event_note(&ns, "stuck", reason).await, says);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fail_ends_an_escalated_item_failed_and_its_request_says_so() {
    let ns = TestNamespace::new("esc-fail").await;
    let _sched = start_scheduler(&ns);
    let _sup = start_role(&ns, Role::Supervisor).0;
    create::<WorkQueue>(
        &ns,
        json!({"metadata": {"name": "q"}, "spec": {
            "retry": {"maxAttempts": 3, "backoff": {"baseSeconds": 1, "maxSeconds": 2}},
            "defaultBudget": {"tokens": 1000},
            "supervision": {"onBudgetExceeded": "Escalate", "cancelGraceSeconds": 2},
            "escalation": {"action": "Fail"}}}),
    )
    .await;
    // 30 × 200 tokens runs far over the queue's 1000-token budget.
    create::<WorkRequest>(
        &ns,
        json!({"metadata": {"name": "rel"}, "spec": {"tasks": [
            {"name": "greedy", "queue": "q",
             "payload": {"steps": 30, "stepMillis": 300, "tokensPerStep": 200}},
            {"name": "modest", "queue": "q", "payload": {"steps": 2, "stepMillis": 100}}]}}),
    )
    .await;
    let _agent = spender(&ns, "esc-fail");
    let items: Api<WorkItem> = ns.api();
    let item = finished(&items, "rel-greedy").await;
    let status = item.status.clone().expect("status");
    assert_eq!(status.phase, Some(Phase::Failed), "{status:?}");
    let error = status.last_error.clone().expect("lastError");
    assert_eq!(error.reason, "Escalated");
    assert_eq!(
        error.message.as_deref(),
        Some("escalated and the queue's policy is to fail")
    );
    // Failed by the policy, not retried, although the queue allows three attempts.
    assert_eq!(status.attempt, 1);
    assert!(escalated(&item), "{:?}", status.conditions);
    assert_eq!(escalation_record(&status), ("budget", "BudgetExceeded"));
    let tokens = status.usage.get("tokens").copied().unwrap_or_default();
    assert!(
        tokens < 6000.0,
        "stopped before the work finished: {tokens}"
    );

    for (reason, says) in [
        ("BudgetExceeded", "Escalate (budget monitor)"),
        ("Failed", "escalation policy failed the item (Escalated)"),
    ] {
        let note = event_note(&ns, "rel-greedy", reason).await;
        assert!(note.contains(says), "{reason}: {note:?}");
    }

    // The request finishes Failed and names the item, once its other task is done.
    let requests: Api<WorkRequest> = ns.api();
    let request = wait_for(LONG, "rel finished", || async {
        let r = requests.get("rel").await.ok()?;
        let s = r.status.clone()?;
        matches!(s.phase, Some(RequestPhase::Failed)).then_some(s)
    })
    .await;
    assert_eq!(request.failed, 1, "{request:?}");
    assert_eq!(request.succeeded, 1, "{request:?}");
    assert_eq!(request.failed_items, ["rel-greedy"]);
    assert_eq!(request.progress.as_deref(), Some("1/2"));
}
