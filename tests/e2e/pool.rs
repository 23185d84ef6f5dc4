//! The AgentPool controller against the real control plane, run inside the test process
//! and scoped to the test's namespace.
//!
//! Agent pods carry a node selector no node matches, so they stay Pending (and
//! Unschedulable) whether or not a node runner is up: these tests are about the
//! controller's decisions (which pods exist, what they look like, the pool's status),
//! not about agents doing work. Queue depth is set on the WorkQueues' status by hand,
//! standing in for the scheduler.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use triad::api::{AgentPool, WorkItem, WorkQueue, find_condition};
use triad::k8s::RoleContext;
use triad::k8s::lease::LeaderGate;

use crate::support::{TestNamespace, wait_for};

const WAIT: Duration = Duration::from_secs(30);

/// Reconciles the pool controller has finished (its duration histogram's count).
fn reconciles(serve: &triad::serve::State) -> f64 {
    let prefix = format!(
        "triad_reconcile_duration_seconds_count{{controller=\"{}\"}}",
        triad::pool::CONTROLLER
    );
    serve
        .encode_metrics()
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str())?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Starts the pool controller for this namespace; returns its metrics endpoint state.
fn start_controller(ns: &TestNamespace) -> triad::serve::State {
    let serve = triad::serve::State::new();
    let ctx = RoleContext {
        client: ns.client.clone(),
        leader: LeaderGate::always(),
        serve: serve.clone(),
        namespace: Some(ns.name.clone()),
    };
    tokio::spawn(async move {
        if let Err(e) = triad::pool::run(ctx).await {
            panic!("pool controller stopped: {e}");
        }
    });
    serve
}

fn template() -> Value {
    json!({
        "metadata": {"labels": {"app": "agents"}},
        "spec": {
            // No node carries this label: pods stay Pending, deterministically.
            "nodeSelector": {"triad.dev/test-node": "none"},
            "containers": [{
                "name": "agent",
                "image": "triad:dev",
                "command": ["true"],
                "env": [{"name": "WORK_MODE", "value": "test"}]
            }]
        }
    })
}

pub(crate) async fn create_pool(ns: &TestNamespace, name: &str, mut spec: Value) -> AgentPool {
    let obj = spec.as_object_mut().expect("spec object");
    obj.entry("template").or_insert_with(template);
    obj.entry("queues")
        .or_insert_with(|| json!([{"name": "jobs"}]));
    let pool: AgentPool = serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec}))
        .expect("valid AgentPool");
    ns.api::<AgentPool>()
        .create(&PostParams::default(), &pool)
        .await
        .expect("create pool")
}

async fn create_queue(ns: &TestNamespace, name: &str) {
    let queue: WorkQueue =
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": {}})).expect("queue");
    ns.api::<WorkQueue>()
        .create(&PostParams::default(), &queue)
        .await
        .expect("create queue");
}

/// Stands in for the scheduler: sets the queue's depth.
async fn set_depth(ns: &TestNamespace, queue: &str, queued: i64, running: i64) {
    ns.api::<WorkQueue>()
        .patch_status(
            queue,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"queued": queued, "running": running}})),
        )
        .await
        .expect("set queue status");
}

/// The pool's pods that are not terminating, by name.
pub(crate) async fn live_pods(ns: &TestNamespace, pool: &str) -> Vec<Pod> {
    let mut pods: Vec<Pod> = ns
        .api::<Pod>()
        .list(&ListParams::default().labels(&format!("triad.dev/pool={pool}")))
        .await
        .expect("list pods")
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    pods.sort_by_key(|p| p.name_any());
    pods
}

pub(crate) async fn wait_pods(ns: &TestNamespace, pool: &str, n: usize) -> Vec<Pod> {
    wait_for(WAIT, &format!("{n} pods of pool {pool}"), || async {
        let pods = live_pods(ns, pool).await;
        (pods.len() == n).then_some(pods)
    })
    .await
}

pub(crate) async fn wait_pool(
    ns: &TestNamespace,
    name: &str,
    what: &str,
    check: impl Fn(&AgentPool) -> bool,
) -> AgentPool {
    let api: Api<AgentPool> = ns.api();
    wait_for(WAIT, what, || async {
        let pool = api.get(name).await.ok()?;
        check(&pool).then_some(pool)
    })
    .await
}

pub(crate) fn condition<'a>(pool: &'a AgentPool, type_: &str) -> Option<&'a Condition> {
    find_condition(&pool.status.as_ref()?.conditions, type_)
}

fn env(pod: &Pod, index: usize) -> Vec<(String, String)> {
    let container = &pod.spec.as_ref().expect("spec").containers[index];
    container
        .env
        .iter()
        .flatten()
        .map(|e| {
            let value = e.value.clone().unwrap_or_else(|| {
                let field = e.value_from.as_ref().and_then(|v| v.field_ref.as_ref());
                format!("fieldRef:{}", field.map_or("", |f| f.field_path.as_str()))
            });
            (e.name.clone(), value)
        })
        .collect()
}

fn kubectl_ok(ns: &TestNamespace, args: &[&str]) -> String {
    let out = ns.kubectl(args);
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn replicas_make_agent_pods_with_the_runtime_env_and_kubectl_scale_drives_them() {
    let ns = TestNamespace::new("pool-replicas").await;
    let serve = start_controller(&ns);
    let pool = create_pool(
        &ns,
        "workers",
        json!({"replicas": 2, "queues": [{"name": "fast", "weight": 3}, {"name": "slow"}]}),
    )
    .await;
    let uid = pool.uid().expect("uid");

    let pods = wait_pods(&ns, "workers", 2).await;
    for pod in &pods {
        let name = pod.name_any();
        assert!(
            name.starts_with("workers-") && name.len() == "workers-".len() + 5,
            "{name}"
        );
        let owner = &pod.owner_references()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
            ("AgentPool", uid.as_str(), Some(true))
        );
        assert_eq!(pod.labels()["triad.dev/pool"], "workers");
        assert_eq!(pod.labels()["app"], "agents", "template labels kept");
        let agent_env = env(pod, 0);
        for (k, v) in [
            ("POD_NAME", "fieldRef:metadata.name"),
            ("POD_NAMESPACE", "fieldRef:metadata.namespace"),
            ("POD_UID", "fieldRef:metadata.uid"),
            ("POD_IP", "fieldRef:status.podIP"),
            ("TRIAD_POOL", "workers"),
            ("TRIAD_QUEUES", "fast:3,slow:1"),
            ("TRIAD_LEASE_SECONDS", "15"),
            ("TRIAD_LIFECYCLE", "Persistent"),
            ("TRIAD_EMPTY_QUEUE_POLICY", "Wait"),
            ("TRIAD_METRICS_ADDR", "$(POD_IP):9090"),
            ("TRIAD_RUNNER_SOCKET", "/triad/run/runner.sock"),
        ] {
            assert!(
                agent_env.contains(&(k.to_string(), v.to_string())),
                "{name}: {k}={v} missing in {agent_env:?}"
            );
        }
        // The template's container is the work container: its own env only, started
        // through the runner.
        assert_eq!(
            env(pod, 1),
            vec![("WORK_MODE".to_owned(), "test".to_owned())]
        );
        let spec = pod.spec.as_ref().expect("spec");
        assert_eq!(spec.containers[0].name, "triad-agent");
        assert_eq!(
            spec.containers[1].command.as_deref().expect("command"),
            ["/triad/bin/triad", "runner", "--", "true"]
        );
        let port = &spec.containers[0].ports.as_ref().expect("ports")[0];
        assert_eq!(
            (port.name.as_deref(), port.container_port),
            (Some("metrics"), 9090)
        );
        assert_eq!(spec.restart_policy.as_deref(), Some("Always"));
        assert_eq!(
            spec.service_account_name.as_deref(),
            Some("triad-agent-workers")
        );
    }
    let pool = wait_pool(&ns, "workers", "status of 2 agents", |p| {
        p.status
            .as_ref()
            .is_some_and(|s| s.replicas == 2 && s.desired == 2)
    })
    .await;
    let status = pool.status.as_ref().expect("status");
    assert_eq!(status.selector.as_deref(), Some("triad.dev/pool=workers"));
    assert_eq!(status.observed_generation, pool.metadata.generation);
    assert_eq!((status.ready, status.busy, status.idle), (0, 0, 0));

    // The scale subresource drives the pool both ways.
    kubectl_ok(&ns, &["scale", "ap/workers", "--replicas=4"]);
    wait_pods(&ns, "workers", 4).await;
    wait_pool(&ns, "workers", "status.replicas 4", |p| {
        p.status.as_ref().is_some_and(|s| s.replicas == 4)
    })
    .await;
    let scale = kubectl_ok(
        &ns,
        &[
            "get",
            "ap/workers",
            "--subresource=scale",
            "-o",
            "jsonpath={.status.replicas} {.status.selector}",
        ],
    );
    assert_eq!(scale, "4 triad.dev/pool=workers");
    kubectl_ok(&ns, &["scale", "ap/workers", "--replicas=1"]);
    let pods = wait_pods(&ns, "workers", 1).await;

    // A deleted agent is replaced.
    let gone = pods[0].name_any();
    ns.api::<Pod>()
        .delete(&gone, &DeleteParams::default())
        .await
        .expect("delete pod");
    let pods = wait_for(WAIT, "a replacement pod", || async {
        let pods = live_pods(&ns, "workers").await;
        (pods.len() == 1 && pods[0].name_any() != gone).then_some(pods)
    })
    .await;
    assert_ne!(pods[0].name_any(), gone);

    let metrics = serve.encode_metrics();
    let desired = format!(
        "triad_pool_agents{{namespace=\"{}\",pool=\"workers\",state=\"desired\"}} 1",
        ns.name
    );
    assert!(metrics.contains(&desired), "{desired} not in\n{metrics}");
    assert!(metrics.contains("triad_reconcile_duration_seconds_count{controller=\"pools\"}"));
}

#[tokio::test]
async fn autoscaling_follows_queue_depth_from_zero_to_max_and_back_after_the_delay() {
    let ns = TestNamespace::new("pool-auto").await;
    create_queue(&ns, "jobs").await;
    create_queue(&ns, "other").await;
    set_depth(&ns, "jobs", 0, 0).await;
    // Another pool's queue: its depth must not count.
    set_depth(&ns, "other", 100, 0).await;
    start_controller(&ns);
    create_pool(
        &ns,
        "auto",
        json!({"minReplicas": 0, "maxReplicas": 3,
               "scaling": {"itemsPerAgent": 2, "scaleDownDelaySeconds": 2}}),
    )
    .await;
    wait_pool(&ns, "auto", "status at zero", |p| {
        p.status
            .as_ref()
            .is_some_and(|s| s.observed_generation.is_some() && s.desired == 0)
    })
    .await;
    assert!(
        live_pods(&ns, "auto").await.is_empty(),
        "no work, minReplicas 0: no agents"
    );

    // Up at once, clamped to maxReplicas.
    set_depth(&ns, "jobs", 10, 0).await;
    wait_pods(&ns, "auto", 3).await;
    wait_pool(&ns, "auto", "desired 3", |p| {
        p.status.as_ref().is_some_and(|s| s.desired == 3)
    })
    .await;

    // 3 queued → ceil(3 / 2) = 2 agents, but only after the delay.
    let lowered = Instant::now();
    set_depth(&ns, "jobs", 2, 1).await;
    wait_pods(&ns, "auto", 2).await;
    assert!(
        lowered.elapsed() >= Duration::from_secs(2),
        "scaled down after {:?}, before scaleDownDelaySeconds",
        lowered.elapsed()
    );

    // Running items count as work too.
    set_depth(&ns, "jobs", 0, 5).await;
    wait_pods(&ns, "auto", 3).await;

    // Drained: to zero after the delay.
    let drained = Instant::now();
    set_depth(&ns, "jobs", 0, 0).await;
    wait_pods(&ns, "auto", 0).await;
    assert!(drained.elapsed() >= Duration::from_secs(2));
    let pool = wait_pool(&ns, "auto", "status back at zero", |p| {
        p.status
            .as_ref()
            .is_some_and(|s| s.desired == 0 && s.replicas == 0)
    })
    .await;
    let ready = condition(&pool, "Ready").expect("Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", "ScaledToZero")
    );

    // And up from zero as soon as an item appears.
    set_depth(&ns, "jobs", 1, 0).await;
    wait_pods(&ns, "auto", 1).await;

    let events: Api<Event> = ns.api();
    let reasons: BTreeSet<String> = events
        .list(&ListParams::default())
        .await
        .expect("events")
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("auto"))
        .filter_map(|e| e.reason)
        .collect();
    assert!(
        reasons.contains("ScaledUp") && reasons.contains("ScaledDown"),
        "{reasons:?}"
    );
}

/// On a queue-driven pool (`maxReplicas` set) the scale subresource sets a floor:
/// `kubectl scale` and an HPA on the pool change what runs, and queue depth still scales
/// above it.
#[tokio::test]
async fn kubectl_scale_and_an_hpa_set_a_floor_under_an_autoscaled_pool() {
    use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
    let ns = TestNamespace::new("pool-floor").await;
    create_queue(&ns, "jobs").await;
    set_depth(&ns, "jobs", 0, 0).await;
    start_controller(&ns);
    create_pool(
        &ns,
        "drones",
        json!({"minReplicas": 0, "maxReplicas": 4,
               "scaling": {"itemsPerAgent": 1, "scaleDownDelaySeconds": 1}}),
    )
    .await;
    wait_pool(&ns, "drones", "status at zero", |p| {
        p.status
            .as_ref()
            .is_some_and(|s| s.observed_generation.is_some() && s.desired == 0)
    })
    .await;

    // A person: `kubectl scale` with empty queues keeps two agents.
    kubectl_ok(&ns, &["scale", "ap/drones", "--replicas=2"]);
    wait_pods(&ns, "drones", 2).await;
    // Work above the floor still scales up to maxReplicas, and back to the floor.
    set_depth(&ns, "jobs", 3, 0).await;
    wait_pods(&ns, "drones", 3).await;
    set_depth(&ns, "jobs", 0, 0).await;
    wait_pods(&ns, "drones", 2).await;

    // An HPA: below its minReplicas it raises the pool's replicas (through the scale
    // subresource) without needing metrics, and the pool runs that many.
    let hpa: HorizontalPodAutoscaler = serde_json::from_value(json!({
        "metadata": {"name": "drones"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "triad.dev/v1alpha1", "kind": "AgentPool", "name": "drones"},
            "minReplicas": 3, "maxReplicas": 4,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu",
                         "target": {"type": "Utilization", "averageUtilization": 80}}}]
        }
    }))
    .expect("hpa");
    ns.api::<HorizontalPodAutoscaler>()
        .create(&PostParams::default(), &hpa)
        .await
        .expect("create hpa");
    // The HPA controller syncs every 15 s.
    wait_for(
        Duration::from_secs(60),
        "the HPA to set replicas 3",
        || async {
            let pool = ns.api::<AgentPool>().get("drones").await.ok()?;
            (pool.spec.replicas == Some(3)).then_some(())
        },
    )
    .await;
    wait_pods(&ns, "drones", 3).await;
    let pool = wait_pool(&ns, "drones", "status replicas 3", |p| {
        p.status.as_ref().is_some_and(|s| s.replicas == 3)
    })
    .await;
    assert_eq!(pool.status.map(|s| s.desired), Some(3));
}

#[tokio::test]
async fn a_busy_agent_is_not_deleted_to_scale_in() {
    let ns = TestNamespace::new("pool-busy").await;
    let serve = start_controller(&ns);
    create_pool(&ns, "busy", json!({"replicas": 2})).await;
    let pods = wait_pods(&ns, "busy", 2).await;
    let (busy, idle) = (pods[0].name_any(), pods[1].name_any());

    // An item Running, claimed by the first pod.
    let items: Api<WorkItem> = ns.api();
    let item: WorkItem =
        serde_json::from_value(json!({"metadata": {"name": "job-1"}, "spec": {"queue": "jobs"}}))
            .expect("item");
    items
        .create(&PostParams::default(), &item)
        .await
        .expect("create item");
    items
        .patch_status(
            "job-1",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
                "phase": "Running", "attempt": 1,
                "claim": {"agent": busy, "pod": busy, "epoch": 1}
            }})),
        )
        .await
        .expect("claim item");
    wait_pool(&ns, "busy", "status.busy 1", |p| {
        p.status.as_ref().is_some_and(|s| s.busy == 1)
    })
    .await;

    kubectl_ok(&ns, &["scale", "ap/busy", "--replicas=0"]);
    let left = wait_pods(&ns, "busy", 1).await;
    assert_eq!(left[0].name_any(), busy, "the idle agent {idle} goes first");
    let pool = wait_pool(&ns, "busy", "status desired 0, one busy left", |p| {
        p.status
            .as_ref()
            .is_some_and(|s| s.desired == 0 && s.replicas == 1 && s.busy == 1)
    })
    .await;
    let ready = condition(&pool, "Ready").expect("Ready");
    assert!(ready.message.contains("busy"), "{}", ready.message);

    // Through two more reconciles (resyncs included) it stays.
    let seen = reconciles(&serve);
    wait_for(WAIT, "two more reconciles of the pool", || async {
        (reconciles(&serve) >= seen + 2.0).then_some(())
    })
    .await;
    let left = live_pods(&ns, "busy").await;
    assert_eq!(
        left.iter().map(|p| p.name_any()).collect::<Vec<_>>(),
        std::slice::from_ref(&busy),
        "the busy agent must not be deleted while its item runs"
    );

    // The item finishes: now the agent goes.
    items
        .patch_status(
            "job-1",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Succeeded"}})),
        )
        .await
        .expect("complete item");
    wait_pods(&ns, "busy", 0).await;
    wait_pool(&ns, "busy", "status empty", |p| {
        p.status
            .as_ref()
            .is_some_and(|s| s.replicas == 0 && s.busy == 0)
    })
    .await;
}

#[tokio::test]
async fn a_bad_template_is_reported_not_crashed_on() {
    let ns = TestNamespace::new("pool-template").await;
    start_controller(&ns);
    create_pool(
        &ns,
        "broken",
        json!({"replicas": 1, "template": {"spec": {"containers": [
            {"name": "agent", "image": "triad:dev", "ports": "9090"}
        ]}}}),
    )
    .await;
    let pool = wait_pool(&ns, "broken", "TemplateValid=False", |p| {
        condition(p, "TemplateValid").is_some_and(|c| c.status == "False")
    })
    .await;
    let c = condition(&pool, "TemplateValid").expect("TemplateValid");
    assert_eq!(c.reason, "InvalidTemplate");
    assert!(
        c.message.contains("spec.template.spec.containers[0].ports"),
        "{}",
        c.message
    );
    let ready = condition(&pool, "Ready").expect("Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "TemplateInvalid")
    );
    assert!(live_pods(&ns, "broken").await.is_empty());
    let events: Api<Event> = ns.api();
    wait_for(WAIT, "an InvalidTemplate event", || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items
            .into_iter()
            .find(|e| {
                e.reason.as_deref() == Some("InvalidTemplate")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("broken")
            })
            .map(|_| ())
    })
    .await;

    // Host access under the default restricted profile: refused, naming the field and
    // the opt-out.
    let pools: Api<AgentPool> = ns.api();
    pools
        .patch(
            "broken",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"template": {"spec": {
                "volumes": [{"name": "host", "hostPath": {"path": "/"}}],
                "containers": [{"name": "work", "image": "triad:dev", "command": ["true"]}]}}}})),
        )
        .await
        .expect("patch template");
    let pool = wait_pool(&ns, "broken", "TemplateValid=False for hostPath", |p| {
        condition(p, "TemplateValid").is_some_and(|c| {
            c.status == "False" && c.message.contains("spec.template.spec.volumes[0].hostPath")
        })
    })
    .await;
    let c = condition(&pool, "TemplateValid").expect("TemplateValid");
    assert!(
        c.message.contains("spec.podSecurity: Privileged"),
        "{}",
        c.message
    );
    assert!(live_pods(&ns, "broken").await.is_empty());

    // A template that parses but that the API server refuses: reported the same way.
    pools
        .patch(
            "broken",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"template": {"spec": {"volumes": null, "containers": [
                    {"name": "Not_A_DNS_Label", "image": "triad:dev", "command": ["true"]}
                ]}}}}),
            ),
        )
        .await
        .expect("patch template");
    let pool = wait_pool(&ns, "broken", "TemplateValid=False from the API", |p| {
        condition(p, "TemplateValid")
            .is_some_and(|c| c.status == "False" && c.message.contains("Not_A_DNS_Label"))
    })
    .await;
    assert!(live_pods(&ns, "broken").await.is_empty(), "{pool:?}");

    // Fixed: valid again, and the agent is created.
    pools
        .patch(
            "broken",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"template": template()}})),
        )
        .await
        .expect("fix template");
    wait_pool(&ns, "broken", "TemplateValid=True", |p| {
        condition(p, "TemplateValid").is_some_and(|c| c.status == "True")
    })
    .await;
    wait_pods(&ns, "broken", 1).await;
}

#[tokio::test]
async fn agents_get_a_least_privilege_identity() {
    let ns = TestNamespace::new("pool-rbac").await;
    start_controller(&ns);
    let pool = create_pool(&ns, "secure", json!({"replicas": 0})).await;
    let uid = pool.uid().expect("uid");
    let name = "triad-agent-secure";

    let sa = wait_for(WAIT, "the agents' ServiceAccount", || async {
        ns.api::<ServiceAccount>().get(name).await.ok()
    })
    .await;
    let binding = wait_for(WAIT, "the agents' RoleBinding", || async {
        ns.api::<RoleBinding>().get(name).await.ok()
    })
    .await;
    for owners in [sa.owner_references(), binding.owner_references()] {
        assert_eq!(owners[0].uid, uid, "owned by the pool");
    }
    // The grant is the agents' ClusterRole (the chart's), bound in this namespace only;
    // the pool controller writes no Role of its own.
    assert_eq!(
        (
            binding.role_ref.kind.as_str(),
            binding.role_ref.name.as_str()
        ),
        ("ClusterRole", triad::pool::rbac::DEFAULT_AGENT_CLUSTER_ROLE)
    );
    let subject = &binding.subjects.as_ref().expect("subjects")[0];
    assert_eq!(
        (subject.kind.as_str(), subject.name.as_str()),
        ("ServiceAccount", name)
    );
    assert!(
        ns.api::<Role>()
            .get_opt(name)
            .await
            .expect("get role")
            .is_none(),
        "no per-pool Role"
    );

    // Ask the API server's authorizer, as the agent.
    let who = format!("--as=system:serviceaccount:{}:{name}", ns.name);
    let can = |verb: &str, resource: &str, sub: Option<&str>| {
        let mut args = vec!["auth", "can-i", verb, resource, who.as_str()];
        if let Some(s) = sub {
            args.push(s);
        }
        let out = ns.kubectl(&args);
        String::from_utf8_lossy(&out.stdout).trim() == "yes"
    };
    for (verb, resource, sub) in [
        ("get", "workitems.triad.dev", None),
        ("watch", "workitems.triad.dev", None),
        ("patch", "workitems.triad.dev", Some("--subresource=status")),
        ("list", "workqueues.triad.dev", None),
        ("create", "leases.coordination.k8s.io", None),
        ("create", "events.events.k8s.io", None),
    ] {
        assert!(
            can(verb, resource, sub),
            "agents need {verb} {resource} {sub:?}"
        );
    }
    for (verb, resource) in [
        ("create", "pods"),
        ("delete", "pods"),
        ("get", "secrets"),
        ("create", "workitems.triad.dev"),
        ("patch", "workitems.triad.dev"),
        ("delete", "workitems.triad.dev"),
        ("patch", "workqueues.triad.dev"),
        ("get", "agentpools.triad.dev"),
        ("delete", "leases.coordination.k8s.io"),
        ("create", "roles.rbac.authorization.k8s.io"),
    ] {
        assert!(
            !can(verb, resource, None),
            "agents must not {verb} {resource}"
        );
    }
}

#[tokio::test]
async fn unschedulable_agents_are_explained_in_the_status() {
    let ns = TestNamespace::new("pool-health").await;
    start_controller(&ns);
    create_pool(&ns, "stuck", json!({"replicas": 1})).await;
    let pool = wait_pool(&ns, "stuck", "PodsHealthy=False", |p| {
        condition(p, "PodsHealthy").is_some_and(|c| c.status == "False")
    })
    .await;
    let c = condition(&pool, "PodsHealthy").expect("PodsHealthy");
    assert_eq!(c.reason, "Unschedulable");
    assert!(
        c.message.contains("1 of 1 agent pods not ready"),
        "{}",
        c.message
    );
    let ready = condition(&pool, "Ready").expect("Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "AgentsNotReady")
    );
    assert!(ready.message.contains("Unschedulable"), "{}", ready.message);
}

#[tokio::test]
async fn a_mortal_agent_that_finished_is_replaced() {
    let ns = TestNamespace::new("pool-mortal").await;
    start_controller(&ns);
    create_pool(
        &ns,
        "mortal",
        json!({"replicas": 1, "lifecycle": {"type": "Mortal", "maxItems": 3}}),
    )
    .await;
    let pods = wait_pods(&ns, "mortal", 1).await;
    let first = pods[0].name_any();
    let spec = pods[0].spec.as_ref().expect("spec");
    assert_eq!(spec.restart_policy.as_deref(), Some("OnFailure"));
    let env = env(&pods[0], 0);
    assert!(env.contains(&("TRIAD_MAX_ITEMS".into(), "3".into())));
    assert!(env.contains(&("TRIAD_LIFECYCLE".into(), "Mortal".into())));

    // The agent exits 0 after maxItems: the pod ends Succeeded (set here by hand, as a
    // node would).
    ns.api::<Pod>()
        .patch_status(
            &first,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Succeeded"}})),
        )
        .await
        .expect("mark pod Succeeded");
    wait_for(WAIT, "the finished pod replaced", || async {
        let pods = ns.api::<Pod>().list(&ListParams::default()).await.ok()?;
        let names: Vec<String> = pods.items.iter().map(|p| p.name_any()).collect();
        (names.len() == 1 && names[0] != first).then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_exit_policy_starts_agents_only_while_work_is_queued() {
    let ns = TestNamespace::new("pool-exit").await;
    create_queue(&ns, "jobs").await;
    set_depth(&ns, "jobs", 0, 0).await;
    start_controller(&ns);
    create_pool(
        &ns,
        "exiting",
        json!({"replicas": 2, "emptyQueuePolicy": "Exit"}),
    )
    .await;
    wait_pool(&ns, "exiting", "a status", |p| {
        p.status
            .as_ref()
            .is_some_and(|s| s.observed_generation.is_some())
    })
    .await;
    assert!(live_pods(&ns, "exiting").await.is_empty());
    set_depth(&ns, "jobs", 1, 0).await;
    let pods = wait_pods(&ns, "exiting", 2).await;
    assert_eq!(
        pods[0]
            .spec
            .as_ref()
            .expect("spec")
            .restart_policy
            .as_deref(),
        Some("OnFailure")
    );
}

/// Server-side apply without force: a ServiceAccount of the agents' name that someone
/// else made is reported on the pool and left alone (no agent runs as it), and the pool
/// gets its identity once it is gone.
#[tokio::test]
async fn an_agent_account_triad_does_not_own_is_reported_not_taken_over() {
    let ns = TestNamespace::new("pool-foreign-sa").await;
    start_controller(&ns);
    let name = "triad-agent-taken";
    let theirs: ServiceAccount = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"team": "payments"}}
    }))
    .expect("service account");
    ns.api::<ServiceAccount>()
        .create(&PostParams::default(), &theirs)
        .await
        .expect("create their account");
    create_pool(&ns, "taken", json!({"replicas": 1})).await;
    let pool = wait_pool(&ns, "taken", "the pool reports the account", |p| {
        condition(p, "Ready").is_some_and(|c| {
            c.status == "False" && c.message.contains("not owned by AgentPool taken")
        })
    })
    .await;
    let ready = condition(&pool, "Ready").expect("Ready");
    assert_eq!(ready.reason, "FailedCreate", "{ready:?}");
    assert!(
        ready.message.contains(&format!("ServiceAccount {name}")),
        "{ready:?}"
    );
    let sa = ns
        .api::<ServiceAccount>()
        .get(name)
        .await
        .expect("their account");
    assert!(sa.owner_references().is_empty(), "not taken over: {sa:?}");
    assert_eq!(
        sa.labels().get("team").map(String::as_str),
        Some("payments")
    );
    assert!(
        live_pods(&ns, "taken").await.is_empty(),
        "no agent runs as their account"
    );
    assert!(
        ns.api::<RoleBinding>()
            .get_opt(name)
            .await
            .expect("get")
            .is_none(),
        "their account is granted nothing"
    );

    ns.api::<ServiceAccount>()
        .delete(name, &DeleteParams::default())
        .await
        .expect("delete their account");
    wait_pods(&ns, "taken", 1).await;
    let sa = ns
        .api::<ServiceAccount>()
        .get(name)
        .await
        .expect("the pool's account");
    assert_eq!(sa.owner_references()[0].name, "taken");
}
