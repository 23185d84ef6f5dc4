//! The supervisor's ladder with real agent processes: budget cuts and extensions end
//! where the policy says, and a frozen agent is reclaimed only after its lease lapsed
//! on the supervisor's clock. Scheduler and supervisor run in the test process.

use std::time::Duration;

use kube::Api;
use serde_json::json;
use triad::api::{OutcomeKind, Phase, WorkItem, WorkQueue};

use crate::agent::Agent;
use crate::scheduler::start_scheduler;
use crate::support::{Role, TestNamespace, create, scratch_dir, start_role, wait_for};

const LONG: Duration = Duration::from_secs(60);

pub(crate) async fn finished(items: &Api<WorkItem>, name: &str) -> WorkItem {
    wait_for(LONG, &format!("{name} to finish"), || async {
        items
            .get(name)
            .await
            .ok()
            .filter(|i| i.phase().is_some_and(Phase::is_finished))
    })
    .await
}

/// An agent running `triad simulate` whose usage reaches the API every 500 ms, so a
/// budget is seen crossed soon after the work crosses it.
pub(crate) fn spender(ns: &TestNamespace, prefix: &str) -> Agent {
    Agent::start(
        ns,
        &scratch_dir(prefix),
        "spender",
        &[("TRIAD_PROGRESS_INTERVAL_MS", "500")],
        &["triad", "simulate"],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_budget_overrun_is_warned_then_cut_and_ends_failed() {
    let ns = TestNamespace::new("cut").await;
    let _sched = start_scheduler(&ns);
    let _sup = start_role(&ns, Role::Supervisor).0;
    create::<WorkQueue>(&ns, json!({"metadata": {"name": "q"}, "spec": {"supervision": {"onBudgetExceeded": "Cancel", "cancelGraceSeconds": 3}}})).await;
    create::<WorkItem>(
        &ns,
        json!({"metadata": {"name": "greedy"}, "spec": {"queue": "q", "budget": {"tokens": 1000},
            "payload": {"steps": 30, "stepMillis": 300, "tokensPerStep": 50}}}),
    )
    .await;
    // Usage reaches the API every 500 ms and crosses 80–100 % over about 1.2 s.
    let _agent = spender(&ns, "cut");
    let items: Api<WorkItem> = ns.api();
    let item = finished(&items, "greedy").await;
    let status = item.status.expect("status");
    assert_eq!(item.metadata.name.as_deref(), Some("greedy"));
    assert_eq!(status.phase, Some(Phase::Failed));
    assert_eq!(
        status.last_error.expect("lastError").reason,
        "BudgetExceeded"
    );
    let actions: Vec<&str> = status
        .interventions
        .iter()
        .map(|i| i.action.as_str())
        .collect();
    assert!(
        actions.contains(&"Warn"),
        "warned at the threshold first: {actions:?}"
    );
    let tokens = status.usage.get("tokens").copied().unwrap_or_default();
    assert!(
        tokens < 1500.0,
        "cut before the work finished: {tokens} tokens"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn extend_grants_exactly_the_configured_extensions_then_cuts() {
    let ns = TestNamespace::new("extend").await;
    let _sched = start_scheduler(&ns);
    let _sup = start_role(&ns, Role::Supervisor).0;
    create::<WorkQueue>(
        &ns,
        json!({"metadata": {"name": "q"}, "spec": {"supervision": {"onBudgetExceeded": "Extend",
            "extend": {"maxExtensions": 1, "percent": 50}, "cancelGraceSeconds": 3}}}),
    )
    .await;
    create::<WorkItem>(
        &ns,
        json!({"metadata": {"name": "greedy"}, "spec": {"queue": "q", "budget": {"tokens": 1000},
            "payload": {"steps": 25, "stepMillis": 400, "tokensPerStep": 150}}}),
    )
    .await;
    let dir = scratch_dir("extend");
    let _agent = Agent::start(&ns, &dir, "spender", &[], &["triad", "simulate"]);
    let items: Api<WorkItem> = ns.api();
    let item = finished(&items, "greedy").await;
    let status = item.status.expect("status");
    let extensions = status
        .interventions
        .iter()
        .filter(|i| i.action == "Extend")
        .count();
    assert_eq!(
        extensions, 1,
        "exactly maxExtensions: {:?}",
        status.interventions
    );
    assert_eq!(
        status.budget_extension.get("tokens").copied(),
        Some(500.0),
        "50 % of 1000 once"
    );
    assert_eq!(
        status.phase,
        Some(Phase::Failed),
        "cut after the extension ran out"
    );
    assert_eq!(
        status.last_error.expect("lastError").reason,
        "BudgetExceeded"
    );
    let tokens = status.usage.get("tokens").copied().unwrap_or_default();
    assert!(tokens >= 1500.0, "the extension was usable: {tokens}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frozen_agent_is_reclaimed_only_after_its_lease_lapses_and_its_writes_are_refused() {
    let ns = TestNamespace::new("freeze").await;
    let _sched = start_scheduler(&ns);
    let _sup = start_role(&ns, Role::Supervisor).0;
    create::<WorkQueue>(&ns, json!({"metadata": {"name": "q"}, "spec": {"retry": {"backoff": {"baseSeconds": 1, "maxSeconds": 2}}}})).await;
    create::<WorkItem>(
        &ns,
        json!({"metadata": {"name": "slow"}, "spec": {"queue": "q"}}),
    )
    .await;
    let dir = scratch_dir("freeze");
    let agent = Agent::start(
        &ns,
        &dir,
        "sleeper",
        &[("TRIAD_LEASE_SECONDS", "4")],
        &["sleep", "3"],
    );
    let items: Api<WorkItem> = ns.api();
    let claimed = wait_for(LONG, "slow running", || async {
        let i = items.get("slow").await.ok()?;
        (i.phase() == Some(Phase::Running)).then_some(i)
    })
    .await;
    let epoch = claimed.epoch();
    agent.signal(libc::SIGSTOP);
    // The renewal read next is at or before the agent's last (one in flight when it froze
    // may land after the read): timing from it only makes the check below stricter.
    let lease_name = claimed
        .status
        .as_ref()
        .and_then(|s| s.claim.as_ref()?.lease.clone())
        .expect("claim names its lease");
    let lease = ns
        .api::<k8s_openapi::api::coordination::v1::Lease>()
        .get(&lease_name)
        .await
        .expect("lease");
    let renewed = lease.spec.and_then(|s| s.renew_time).expect("renewTime").0;
    let fenced = wait_for(LONG, "fence-out", || async {
        let i = items.get("slow").await.ok()?;
        (i.epoch() > epoch).then_some(i)
    })
    .await;
    // Not before a whole lease duration since that renewal, by the supervisor's own
    // record of when it fenced the agent out (whole seconds).
    let fenced_at = fenced
        .status
        .as_ref()
        .and_then(|s| s.interventions.iter().find(|i| i.action == "FenceOut"))
        .map(|i| i.at.0)
        .expect("the FenceOut intervention");
    let lapsed =
        jiff::Timestamp::from_second((renewed + jiff::SignedDuration::from_secs(4)).as_second())
            .expect("whole second");
    assert!(
        fenced_at >= lapsed,
        "reclaimed at {fenced_at}, before the lease lapsed at {lapsed}"
    );
    let outcome = fenced.status.and_then(|s| s.outcome).expect("outcome");
    assert_eq!(outcome.kind, OutcomeKind::LeaseExpired);
    agent.signal(libc::SIGCONT);
    let done = wait_for(LONG, "slow Succeeded on a later attempt", || async {
        let i = items.get("slow").await.ok()?;
        (i.phase() == Some(Phase::Succeeded)).then_some(i)
    })
    .await;
    let status = done.status.expect("status");
    assert!(
        status.attempt >= 2,
        "the frozen attempt did not complete the item"
    );
    let first = status
        .attempts
        .iter()
        .find(|a| a.attempt == 1)
        .expect("attempt 1 recorded");
    assert_eq!(
        first.outcome,
        Some(OutcomeKind::LeaseExpired),
        "the stale agent's completion was refused"
    );
}
