//! Corners of claiming and supervision with real agent processes (`triad agent` on the
//! host, this build): weighted queues share one agent's claims by weight, FIFO holds
//! within a creation second, and wall-clock and CPU budgets cut a command that reports
//! nothing. The scheduler and supervisor run in the test process where a test needs them.

use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;
use triad::api::{Phase, WorkItem, WorkQueue};

use crate::agent::Agent;
use crate::scheduler::start_scheduler;
use crate::support::{Role, TestNamespace, create, scratch_dir, start_role, wait_for};

const LONG: Duration = Duration::from_secs(120);

/// A work script that appends its item's name to `claims.log` in `dir`: an agent runs
/// one item at a time, so the file lists its claims in order.
fn log_claim(dir: &Path) -> String {
    format!(
        r#"echo "${{TRIAD_ITEM#*/}}" >> "{}/claims.log""#,
        dir.display()
    )
}

fn claims(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("claims.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Creates the items `(name, queue)` on the fast path (no status), a few at a time.
async fn create_items(api: &Api<WorkItem>, items: &[(String, &str)]) {
    futures::stream::iter(items)
        .for_each_concurrent(8, |(name, queue)| async move {
            let item: WorkItem = serde_json::from_value(
                json!({"metadata": {"name": name}, "spec": {"queue": queue}}),
            )
            .expect("item");
            api.create(&PostParams::default(), &item)
                .await
                .expect("create item");
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_on_two_full_queues_shares_its_claims_by_weight() {
    let ns = TestNamespace::new("weights").await;
    let api: Api<WorkItem> = ns.api();
    // Both queues hold more than the claims counted, so both stay full throughout.
    const COUNTED: usize = 100;
    let items: Vec<(String, &str)> = (0..COUNTED)
        .flat_map(|i| {
            [
                (format!("heavy-{i:03}"), "heavy"),
                (format!("light-{i:03}"), "light"),
            ]
        })
        .collect();
    create_items(&api, &items).await;
    let dir = scratch_dir("weights");
    // The attachment an AgentPool with queues [{heavy, 4}, {light, 1}] gives its pods.
    let _agent = Agent::start(
        &ns,
        &dir,
        "weighed",
        &[("TRIAD_QUEUES", "heavy:4,light:1")],
        &["sh", "-c", &log_claim(&dir)],
    );
    let first = wait_for(LONG, &format!("{COUNTED} claims"), || async {
        let c = claims(&dir);
        (c.len() >= COUNTED).then(|| c[..COUNTED].to_vec())
    })
    .await;
    let heavy = first.iter().filter(|n| n.starts_with("heavy-")).count();
    eprintln!("heavy took {heavy} of the first {COUNTED} claims");
    // Weights 4:1 give 80 of 100 (binomial sd 4): 65..=95 fails about once in 5000 runs.
    // Ignoring the weights gives about 50 (outside unless 3 sd out), and taking the
    // queues in a fixed order gives 100 or 0.
    assert!(
        (65..=95).contains(&heavy),
        "heavy took {heavy} of the first {COUNTED} claims with weights 4:1: {first:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn items_created_within_one_second_are_claimed_in_creation_order() {
    let ns = TestNamespace::new("fifo").await;
    let _sched = start_scheduler(&ns);
    create::<WorkQueue>(&ns, json!({"metadata": {"name": "q"}, "spec": {}})).await;
    let api: Api<WorkItem> = ns.api();
    let dir = scratch_dir("fifo");
    let go = dir.join("go");
    // The agent is busy with `blocker` until the test creates `go`, so the items below
    // queue up in its cache (as they would behind a busy agent) and are then taken by
    // its order, not by their arrival.
    let script = format!(
        r#"{log}; if [ "${{TRIAD_ITEM#*/}}" = blocker ]; then while [ ! -e "{go}" ]; do sleep 0.1; done; fi"#,
        log = log_claim(&dir),
        go = go.display()
    );
    create_items(&api, &[("blocker".to_owned(), "q")]).await;
    let mut agent = Agent::start(
        &ns,
        &dir,
        "solo",
        &[("TRIAD_CLAIM_TOP_K", "1")],
        &["sh", "-c", &script],
    );
    agent.wait_ready().await;
    wait_for(LONG, "blocker claimed", || async {
        (claims(&dir) == ["blocker"]).then_some(())
    })
    .await;
    // Eight items created one after another (each create returns before the next is
    // sent, so creation order is defined), milliseconds apart: they share creation
    // seconds. Named so that name order is the reverse of creation order.
    let created: Vec<String> = (0..8).map(|i| format!("fifo-{}", 7 - i)).collect();
    for name in &created {
        create_items(&api, &[(name.clone(), "q")]).await;
    }
    // Writes while they wait, newest first (as a user's `kubectl label` or the
    // scheduler's "position N" would): their resourceVersions are now out of creation
    // order, which must not reorder them.
    for name in created.iter().rev() {
        api.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"touched": "yes"}}})),
        )
        .await
        .expect("label item");
    }
    std::fs::write(&go, "").expect("release the blocker");
    let order = wait_for(LONG, "all eight claimed", || async {
        let c = claims(&dir);
        (c.len() > created.len()).then(|| c[1..].to_vec())
    })
    .await;
    assert_eq!(order, created, "claimed in creation order");
}

/// What one budgeted item ended with, and the pid its work command had.
struct Cut {
    item: WorkItem,
    pid: i32,
}

async fn cut(api: &Api<WorkItem>, dir: &Path, name: &str) -> Cut {
    let item = wait_for(LONG, &format!("{name} to end"), || async {
        api.get(name)
            .await
            .ok()
            .filter(|i| i.phase().is_some_and(Phase::is_finished))
    })
    .await;
    let pid = std::fs::read_to_string(dir.join(format!("{name}.pid")))
        .expect("the work command ran")
        .trim()
        .parse()
        .expect("pid");
    Cut { item, pid }
}

/// Checks that `cut` ended Failed by its `counter` budget of `limit`, with its use
/// recorded, and that its work process is gone.
async fn assert_cut_by(cut: &Cut, counter: &str, limit: f64) {
    let status = cut.item.status.as_ref().expect("status");
    assert_eq!(status.phase, Some(Phase::Failed), "{status:?}");
    let error = status.last_error.as_ref().expect("lastError");
    assert_eq!(error.reason, "BudgetExceeded", "{error:?}");
    assert!(
        error
            .message
            .as_deref()
            .is_some_and(|m| m.contains(counter)),
        "the message names {counter}: {error:?}"
    );
    let used = status.usage.get(counter).copied().unwrap_or_default();
    assert!(
        used >= limit,
        "{counter} recorded {used}, at least the budget of {limit}"
    );
    // Cut soon after the budget ran out: the agent writes its measurements as a time
    // budget is crossed, not only at its 15 s refresh (which would record 15 or more).
    assert!(
        used < limit + 9.0,
        "{counter} recorded {used}: the work ran far past its budget of {limit}"
    );
    let proc_dir = format!("/proc/{}", cut.pid);
    wait_for(
        Duration::from_secs(10),
        &format!("work process {} gone", cut.pid),
        || std::future::ready((!Path::new(&proc_dir).exists()).then_some(())),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wall_and_cpu_budgets_cut_a_command_that_reports_nothing() {
    let ns = TestNamespace::new("timebudget").await;
    let _sched = start_scheduler(&ns);
    let _sup = start_role(&ns, Role::Supervisor).0;
    create::<WorkQueue>(
        &ns,
        json!({"metadata": {"name": "q"}, "spec": {"supervision": {"onBudgetExceeded": "Cancel", "cancelGraceSeconds": 2}}}),
    )
    .await;
    // Neither would ever end by itself, and neither reports anything: only the
    // runtime's own measurements can stop them.
    create::<WorkItem>(
        &ns,
        json!({"metadata": {"name": "spin"}, "spec": {"queue": "q", "budget": {"cpuSeconds": 2},
            "payload": {"mode": "spin"}}}),
    )
    .await;
    create::<WorkItem>(
        &ns,
        json!({"metadata": {"name": "nap"}, "spec": {"queue": "q", "budget": {"wallSeconds": 3},
            "payload": {"mode": "nap"}}}),
    )
    .await;
    // No budget of its own: its queue's defaultBudget holds it.
    create::<WorkQueue>(
        &ns,
        json!({"metadata": {"name": "qd"}, "spec": {"defaultBudget": {"wallSeconds": 3},
            "supervision": {"onBudgetExceeded": "Cancel", "cancelGraceSeconds": 2}}}),
    )
    .await;
    create::<WorkItem>(
        &ns,
        json!({"metadata": {"name": "doze"}, "spec": {"queue": "qd", "payload": {"mode": "nap"}}}),
    )
    .await;
    let dir = scratch_dir("timebudget");
    let script = format!(
        r#"echo $$ > "{dir}/${{TRIAD_ITEM#*/}}.pid"
case "$TRIAD_PAYLOAD" in *spin*) while :; do :; done;; *) exec sleep 100000;; esac"#,
        dir = dir.display()
    );
    // One agent per item, so all run at once.
    let _agents: Vec<Agent> = [("worker-0", "q"), ("worker-1", "q"), ("worker-d", "qd")]
        .into_iter()
        .map(|(name, queue)| {
            Agent::start(
                &ns,
                &dir,
                name,
                &[("TRIAD_QUEUES", queue)],
                &["sh", "-c", &script],
            )
        })
        .collect();
    let api: Api<WorkItem> = ns.api();
    let spin = cut(&api, &dir, "spin").await;
    let nap = cut(&api, &dir, "nap").await;
    let doze = cut(&api, &dir, "doze").await;
    for c in [&spin, &nap, &doze] {
        let s = c.item.status.as_ref();
        eprintln!(
            "{}: usage {:?}, lastError {:?}",
            c.item.metadata.name.as_deref().unwrap_or_default(),
            s.map(|s| &s.usage),
            s.and_then(|s| s.last_error.as_ref())
        );
    }
    assert_cut_by(&spin, "cpuSeconds", 2.0).await;
    assert_cut_by(&nap, "wallSeconds", 3.0).await;
    assert_cut_by(&doze, "wallSeconds", 3.0).await;
    // The sleeper used next to no CPU: the wall budget, not a CPU one, cut it.
    let nap_cpu = nap
        .item
        .status
        .as_ref()
        .and_then(|s| s.usage.get("cpuSeconds").copied())
        .unwrap_or_default();
    assert!(nap_cpu < 1.0, "nap used {nap_cpu} CPU seconds");
}
