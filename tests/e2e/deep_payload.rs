//! Schemaless fields nested deeper than serde_json's recursion limit. The API server
//! takes them (CEL cannot measure depth); before the operator decoded such fields as raw
//! text, one such WorkItem failed every typed list and watch of WorkItems in its
//! namespace, and the scheduler, agents and supervisor there stopped seeing anything.
//! Now the item fails with `PayloadTooDeep` (a request is refused, a pool reports its
//! template) and everything else runs.

use std::time::Duration;

use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::ListParams;
use serde_json::json;
use triad::api::{
    AgentPool, FreeForm, OutcomeKind, Phase, WorkItem, WorkQueue, WorkRequest, find_condition,
};
use triad::k8s::fence::{AgentIdentity, Fence, claim, complete_ops, fenced_patch};

use crate::agent::Agent;
use crate::crd_model::nested;
use crate::scheduler::start_scheduler;
use crate::support::{Role, TestNamespace, create, scratch_dir, start_role, wait_for};

const LONG: Duration = Duration::from_secs(60);

async fn wait_item(
    api: &Api<WorkItem>,
    name: &str,
    what: &str,
    ok: impl Fn(&WorkItem) -> bool,
) -> WorkItem {
    wait_for(LONG, &format!("{name}: {what}"), || async {
        let wi = api.get(name).await.ok()?;
        ok(&wi).then_some(wi)
    })
    .await
}

fn last_error(wi: &WorkItem) -> Option<(String, String)> {
    let e = wi.status.as_ref()?.last_error.as_ref()?;
    Some((e.reason.clone(), e.message.clone().unwrap_or_default()))
}

async fn warning_event(ns: &TestNamespace, name: &str, reason: &str) -> Option<Event> {
    let events: Api<Event> = ns.api();
    events
        .list(&ListParams::default())
        .await
        .ok()?
        .items
        .into_iter()
        .find(|e| {
            e.regarding
                .as_ref()
                .is_some_and(|r| r.name.as_deref() == Some(name))
                && e.reason.as_deref() == Some(reason)
                && e.type_.as_deref() == Some("Warning")
        })
}

/// Claims `name` as a fake agent would and completes it.
async fn run_to_success(api: &Api<WorkItem>, name: &str) {
    let who = AgentIdentity {
        agent: "fake-agent".into(),
        pod: None,
        lease: None,
    };
    let claimed = wait_for(LONG, &format!("claim {name}"), || async {
        let item = api.get(name).await.ok()?;
        if !triad::core::phase::is_claimable(&item, jiff::Timestamp::now()) {
            return None;
        }
        claim(api, &item, &who).await.ok()
    })
    .await;
    let fence = Fence::of(&claimed).expect("claimed item has a claim");
    fenced_patch(
        api,
        name,
        &fence,
        complete_ops(&claimed, None, json!({}), json!([])),
    )
    .await
    .expect("complete");
}

#[tokio::test]
async fn deep_payload_fails_its_item_and_the_scheduler_runs_the_rest() {
    let ns = TestNamespace::new("deep-sched").await;
    create::<WorkQueue>(&ns, json!({"metadata": {"name": "q"}, "spec": {}})).await;
    // Created before the scheduler starts: its first list of items includes it.
    let deep: WorkItem = create(
        &ns,
        json!({"metadata": {"name": "deep"}, "spec": {"queue": "q", "payload": nested(150)}}),
    )
    .await;
    assert_eq!(
        deep.spec
            .payload
            .as_ref()
            .and_then(FreeForm::too_deep)
            .map(|d| d.depth),
        Some(150),
        "the create's answer decodes, as the marker"
    );
    let _s = start_scheduler(&ns);
    create::<WorkItem>(
        &ns,
        json!({"metadata": {"name": "ok"}, "spec": {"queue": "q", "payload": {"n": 1}}}),
    )
    .await;
    // Only the scheduler admits this one, once `ok` has succeeded.
    create::<WorkItem>(
        &ns,
        json!({"metadata": {"name": "after"}, "spec": {"queue": "q", "dependsOn": ["ok"]}}),
    )
    .await;
    create::<WorkRequest>(
        &ns,
        json!({"metadata": {"name": "fan"}, "spec": {"tasks": [
            {"name": "f", "queue": "q", "forEach": {"values": ["x", nested(150)]}}
        ]}}),
    )
    .await;
    create::<WorkRequest>(
        &ns,
        json!({"metadata": {"name": "good"}, "spec": {"tasks": [{"name": "a", "queue": "q"}]}}),
    )
    .await;

    let items: Api<WorkItem> = ns.api();
    let list = items
        .list(&ListParams::default())
        .await
        .expect("typed list");
    assert!(
        list.items
            .iter()
            .any(|i| i.metadata.name.as_deref() == Some("deep")),
        "the list decodes, the deep item with it"
    );

    let failed = wait_item(&items, "deep", "Failed", |wi| {
        wi.phase() == Some(Phase::Failed)
    })
    .await;
    let (reason, message) = last_error(&failed).expect("lastError");
    assert_eq!(reason, "PayloadTooDeep");
    assert_eq!(
        message,
        "spec.payload is nested 150 levels deep; the limit is 64: flatten it or pass it by reference (for example an object-storage URL)"
    );
    wait_for(LONG, "a PayloadTooDeep Warning Event on deep", || {
        warning_event(&ns, "deep", "PayloadTooDeep")
    })
    .await;

    // The rest runs: a fast-path item, one that only the scheduler admits, a request.
    run_to_success(&items, "ok").await;
    wait_item(&items, "ok", "Succeeded", |wi| {
        wi.phase() == Some(Phase::Succeeded)
    })
    .await;
    wait_item(&items, "after", "Queued", |wi| {
        wi.phase() == Some(Phase::Queued)
    })
    .await;
    run_to_success(&items, "good-a").await;

    // The request with a too-deep fan-out value is refused, naming the value.
    let requests: Api<WorkRequest> = ns.api();
    let condition = wait_for(LONG, "fan: Valid=False", || async {
        let r = requests.get("fan").await.ok()?;
        find_condition(&r.status?.conditions, "Valid")
            .filter(|c| c.status == "False")
            .cloned()
    })
    .await;
    assert_eq!(condition.reason, "PayloadTooDeep");
    assert!(
        condition
            .message
            .contains("spec.tasks[0].forEach.values[1] is nested 150 levels deep"),
        "{}",
        condition.message
    );
    assert!(
        items.get_opt("fan-f-0").await.expect("get").is_none(),
        "a refused request makes no items"
    );
    wait_for(LONG, "request good Succeeded", || async {
        let r = requests.get("good").await.ok()?;
        (r.status?.phase? == triad::api::RequestPhase::Succeeded).then_some(())
    })
    .await;
}

#[tokio::test]
async fn an_agent_fails_a_deep_item_it_claims_and_runs_the_rest() {
    let ns = TestNamespace::new("deep-agent").await;
    let api: Api<WorkItem> = ns.api();
    let dir = scratch_dir("deep-agent");
    // No scheduler at first (it would fail the deep items before an agent claims
    // them): agents claim fast-path items as created. One deep item is there before the
    // agent's first list, one arrives by its watch.
    create::<WorkItem>(
        &ns,
        json!({"metadata": {"name": "deep-1"}, "spec": {"queue": "q", "payload": nested(200)}}),
    )
    .await;
    create::<WorkItem>(
        &ns,
        json!({"metadata": {"name": "ok-1"}, "spec": {"queue": "q", "payload": {"n": 1}}}),
    )
    .await;
    let mut agent = Agent::start(&ns, &dir, "deep", &[], &["sh", "-c", "cat >/dev/null"]);
    agent.wait_ready().await;
    create::<WorkItem>(
        &ns,
        json!({"metadata": {"name": "deep-2"}, "spec": {"queue": "q", "payload": {"a": [nested(130)]}}}),
    )
    .await;
    create::<WorkItem>(
        &ns,
        json!({"metadata": {"name": "ok-2"}, "spec": {"queue": "q", "payload": {"n": 2}}}),
    )
    .await;

    for (name, depth) in [("deep-1", 200), ("deep-2", 132)] {
        // The agent writes the outcome; the scheduler makes it the phase.
        let wi = wait_item(&api, name, "an outcome", |wi| {
            wi.status.as_ref().is_some_and(|s| s.outcome.is_some())
        })
        .await;
        let outcome = wi
            .status
            .as_ref()
            .and_then(|s| s.outcome.clone())
            .expect("outcome");
        assert_eq!(
            (outcome.kind, outcome.reason.as_deref()),
            (OutcomeKind::FailedPermanently, Some("PayloadTooDeep"))
        );
        assert_eq!(
            outcome.message.as_deref(),
            Some(
                format!(
                    "spec.payload is nested {depth} levels deep; the limit is 64: flatten it or pass it by reference (for example an object-storage URL)"
                )
                .as_str()
            )
        );
    }
    for name in ["ok-1", "ok-2"] {
        wait_item(&api, name, "Succeeded", |wi| {
            wi.phase() == Some(Phase::Succeeded)
        })
        .await;
    }
    let _s = start_scheduler(&ns);
    for name in ["deep-1", "deep-2"] {
        let wi = wait_item(&api, name, "Failed", |wi| wi.phase() == Some(Phase::Failed)).await;
        assert_eq!(
            last_error(&wi).map(|(reason, _)| reason).as_deref(),
            Some("PayloadTooDeep")
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_deep_pool_template_is_reported_not_crashed_on() {
    let ns = TestNamespace::new("deep-pool").await;
    let (_pools, _) = start_role(&ns, Role::Pools);
    create::<AgentPool>(
        &ns,
        json!({"metadata": {"name": "deep"}, "spec": {"replicas": 1, "queues": [{"name": "q"}],
            "template": {"metadata": {"deep": nested(140)},
                "spec": {"containers": [{"name": "agent", "image": "triad:dev"}]}}}}),
    )
    .await;
    let pools: Api<AgentPool> = ns.api();
    let condition = wait_for(LONG, "TemplateValid=False", || async {
        let p = pools.get("deep").await.ok()?;
        find_condition(&p.status?.conditions, "TemplateValid")
            .filter(|c| c.status == "False")
            .cloned()
    })
    .await;
    assert_eq!(condition.reason, "InvalidTemplate");
    assert_eq!(
        condition.message,
        "spec.template: is nested 142 levels deep; the limit is 64: flatten it (no pod template needs that much)"
    );
}

/// `status.result` is the one schemaless field an agent's token writes. A result nested
/// past serde_json's limit (a hostile or broken agent can write one; the report parser
/// refuses them from honest work) must not blind the scheduler, agents or supervisor.
#[tokio::test]
async fn a_deep_result_blinds_no_role() {
    let ns = TestNamespace::new("deep-result").await;
    let api: Api<WorkItem> = ns.api();
    let dir = scratch_dir("deep-result");
    create::<WorkQueue>(&ns, json!({"metadata": {"name": "q"}, "spec": {}})).await;
    create::<WorkItem>(
        &ns,
        json!({"metadata": {"name": "poisoned"}, "spec": {"queue": "q"}}),
    )
    .await;
    // Its holder completes it with a result 200 levels deep.
    let who = AgentIdentity {
        agent: "rogue".into(),
        pod: None,
        lease: None,
    };
    let item = api.get("poisoned").await.expect("item");
    let claimed = claim(&api, &item, &who).await.expect("claim");
    let fence = Fence::of(&claimed).expect("claimed");
    fenced_patch(
        &api,
        "poisoned",
        &fence,
        complete_ops(&claimed, Some(nested(200)), json!({}), json!([])),
    )
    .await
    .expect("the API server takes a deep result");
    // Every role starts with the poisoned item in its first list.
    let _roles = [Role::Scheduler, Role::Supervisor].map(|r| start_role(&ns, r));
    let mut agent = Agent::start(&ns, &dir, "after", &[], &["true"]);
    agent.wait_ready().await;
    for i in 0..3 {
        create::<WorkItem>(
            &ns,
            json!({"metadata": {"name": format!("ok-{i}")}, "spec": {"queue": "q"}}),
        )
        .await;
    }
    for i in 0..3 {
        wait_item(&api, &format!("ok-{i}"), "Succeeded", |wi| {
            wi.phase() == Some(Phase::Succeeded)
        })
        .await;
    }
    let poisoned = api.get("poisoned").await.expect("a typed read decodes it");
    let result = poisoned.status.and_then(|s| s.result).expect("its result");
    assert_eq!(result.too_deep().map(|d| d.depth), Some(200));
    assert!(matches!(result, FreeForm::TooDeep(_)));
    let _ = std::fs::remove_dir_all(&dir);
}
