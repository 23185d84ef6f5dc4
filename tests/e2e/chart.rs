//! The Helm chart against the real control plane: the agent admission policy with real
//! agent identities (pod-bound service-account tokens), the per-role RBAC as the API
//! server's authorizer sees it, and the metrics the dashboard and the alerts use, scraped
//! from running `triad` processes.
//!
//! Everything cluster-scoped the chart renders (the policy, ClusterRoles) is rendered
//! with the test namespace as the release name, so parallel tests never share them, and
//! is deleted when the test ends.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Patch, PatchParams, PostParams};
use kube::config::{AuthInfo, KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use triad::api::{Phase, WorkItem};
use triad::k8s::fence::{AgentIdentity, Fence, claim, fenced_patch, set};

use crate::support::{TestNamespace, kubeconfig_path, kubectl, repo_root, wait_for};

const WAIT: Duration = Duration::from_secs(30);

/// The helm binary: `TRIAD_HELM`, else the one `need_tools helm` (hack/lib.sh) builds.
fn helm() -> PathBuf {
    if let Ok(p) = std::env::var("TRIAD_HELM") {
        return p.into();
    }
    let out = Command::new("bash")
        .arg("-c")
        .arg("source hack/lib.sh >/dev/null && need_tools helm >&2 && command -v helm")
        .current_dir(repo_root())
        .output()
        .expect("run bash");
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        out.status.success() && !path.is_empty(),
        "helm not found: run `make tools` (or set TRIAD_HELM)"
    );
    path.into()
}

/// `helm template <release> charts/triad <args…>`, as a string of YAML documents.
fn render(release: &str, args: &[&str]) -> String {
    let out = Command::new(helm())
        .args(["template", release, "charts/triad", "--namespace", release])
        .args(args)
        .current_dir(repo_root())
        .output()
        .expect("run helm");
    assert!(
        out.status.success(),
        "helm template failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .filter_map(|d| {
            let v: Value = serde::Deserialize::deserialize(d).expect("rendered YAML parses");
            (!v.is_null()).then_some(v)
        })
        .collect()
}

/// `kubectl apply -f -` of `yaml`.
fn apply(yaml: &str) {
    let mut child =
        Command::new(std::env::var("TRIAD_KUBECTL").unwrap_or_else(|_| "kubectl".into()))
            .env("KUBECONFIG", kubeconfig_path())
            .args(["apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run kubectl");
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(yaml.as_bytes())
        .expect("write manifest");
    let out = child.wait_with_output().expect("kubectl apply");
    assert!(
        out.status.success(),
        "kubectl apply failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Deletes the cluster-scoped objects of a rendered release when the test ends.
struct ClusterScoped {
    release: String,
    kinds: &'static str,
}

impl Drop for ClusterScoped {
    fn drop(&mut self) {
        let selector = format!("app.kubernetes.io/instance={}", self.release);
        let _ = kubectl(&["delete", self.kinds, "-l", &selector, "--wait=false"]);
    }
}

/// A client that authenticates with `token` only (the admin kubeconfig gives the
/// server and its CA).
async fn client_with_token(token: String) -> Client {
    let kubeconfig = Kubeconfig::read_from(kubeconfig_path()).expect("read kubeconfig");
    let mut config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig is valid");
    config.auth_info = AuthInfo {
        token: Some(token.into()),
        ..Default::default()
    };
    Client::try_from(config).expect("client")
}

/// A real agent identity: the ServiceAccount `triad-agent-<pool>` with the agents' Role
/// (the very rules the pool controller grants), a Pod running as it, and a token bound
/// to that Pod, so the API server puts the pod's name in the request's user info.
async fn agent_identity(ns: &TestNamespace, pool: &str, pod: &str) -> Client {
    let account = format!("triad-agent-{pool}");
    let meta = json!({"name": account, "namespace": ns.name});
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": meta})).unwrap();
    ns.api::<ServiceAccount>()
        .create(&PostParams::default(), &sa)
        .await
        .expect("create service account");
    let role = Role {
        metadata: serde_json::from_value(meta.clone()).unwrap(),
        rules: Some(triad::pool::rbac::rules()),
    };
    ns.api::<Role>()
        .create(&PostParams::default(), &role)
        .await
        .expect("create role");
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": meta,
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": account},
        "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": ns.name}]
    }))
    .unwrap();
    ns.api::<RoleBinding>()
        .create(&PostParams::default(), &binding)
        .await
        .expect("create role binding");
    // The pod only has to exist (a bound token names it); no node matches it.
    let pod_obj: Pod = serde_json::from_value(json!({
        "metadata": {"name": pod},
        "spec": {
            "serviceAccountName": account,
            "nodeSelector": {"triad.dev/test-node": "none"},
            "containers": [{"name": "agent", "image": "triad:dev", "command": ["true"]}]
        }
    }))
    .unwrap();
    let created = ns
        .api::<Pod>()
        .create(&PostParams::default(), &pod_obj)
        .await
        .expect("create pod");
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![],
            expiration_seconds: Some(3600),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(pod.into()),
                uid: created.metadata.uid.clone(),
            }),
        },
        ..Default::default()
    };
    let token = ns
        .api::<ServiceAccount>()
        .create_token_request(&account, &PostParams::default(), &request)
        .await
        .expect("token request")
        .status
        .expect("token status")
        .token;
    client_with_token(token).await
}

async fn create_item(ns: &TestNamespace, name: &str) -> WorkItem {
    let item: WorkItem = serde_json::from_value(json!({
        "apiVersion": "triad.dev/v1alpha1",
        "kind": "WorkItem",
        "metadata": {"name": name},
        "spec": {"queue": "q"}
    }))
    .unwrap();
    ns.api::<WorkItem>()
        .create(&PostParams::default(), &item)
        .await
        .expect("create item")
}

fn denial(err: kube::Error) -> String {
    match err {
        kube::Error::Api(s) if s.code == 403 => s.message,
        other => panic!("expected 403 Forbidden from the admission policy, got {other:?}"),
    }
}

#[tokio::test]
async fn agent_policy_lets_an_agent_claim_and_change_only_its_own_items() {
    let ns = TestNamespace::new("vap").await;
    // The chart's policies, bound to this namespace only.
    let _cleanup = install_agent_policy(&ns).await;

    let me = "agent-x-0";
    let agent = agent_identity(&ns, "x", me).await;
    let as_agent: Api<WorkItem> = Api::namespaced(agent, &ns.name);
    let items = ns.api::<WorkItem>();

    // An item another agent holds (the admin plays that agent's claim).
    create_item(&ns, "theirs").await;
    items
        .patch_status(
            "theirs",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
                "phase": "Running", "attempt": 1,
                "claim": {"agent": "agent-y-0", "epoch": 1}
            }})),
        )
        .await
        .expect("admin sets the other agent's claim");
    let steal = json!({"status": {"progress": {"percent": 100, "message": "mine now"}}});

    // The policy starts enforcing once the API server has loaded it: probe with dry runs.
    let message = wait_refused(&as_agent, "theirs", &steal, "").await;
    assert!(
        message.contains(&format!(
            "agent {me} may only change items it holds; this item is held by agent-y-0"
        )),
        "{message}"
    );

    // Completing it under the other agent's fence is refused too (the fence would pass).
    let fence = Fence {
        agent: "agent-y-0".into(),
        epoch: 1,
    };
    let completed = fenced_patch(
        &as_agent,
        "theirs",
        &fence,
        vec![set("phase", json!(Phase::Succeeded))],
    )
    .await;
    assert!(
        matches!(&completed, Err(triad::k8s::fence::FenceError::Api(kube::Error::Api(s))) if s.code == 403),
        "{completed:?}"
    );
    // So is taking the claim over (epoch + 1 on a Running item).
    let err = as_agent
        .patch_status(
            "theirs",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"claim": {"agent": me, "epoch": 2}}})),
        )
        .await
        .expect_err("stealing a running item's claim is denied");
    assert!(denial(err).contains("this item is held by agent-y-0"));

    // A Queued item: claiming it in another agent's name is refused…
    let queued = create_item(&ns, "queued").await;
    let err = claim(
        &as_agent,
        &queued,
        &AgentIdentity {
            agent: "agent-y-0".into(),
            pod: None,
            lease: None,
        },
    )
    .await
    .expect_err("claiming as someone else is denied");
    let msg = match err {
        triad::k8s::fence::ClaimError::Api(e) => denial(e),
        other => panic!("expected a denial, got {other:?}"),
    };
    assert!(
        msg.contains(&format!(
            "agent {me} may claim this Queued item only as itself"
        )),
        "{msg}"
    );

    // …claiming it as itself is allowed, and then it may write under its own fence.
    let mine = claim(
        &as_agent,
        &queued,
        &AgentIdentity {
            agent: me.into(),
            pod: Some(me.into()),
            lease: None,
        },
    )
    .await
    .expect("an agent may claim a Queued item as itself");
    assert_eq!(mine.phase(), Some(Phase::Running));
    let fence = Fence::of(&mine).expect("claimed");
    assert_eq!((fence.agent.as_str(), fence.epoch), (me, 1));
    let done = fenced_patch(
        &as_agent,
        "queued",
        &fence,
        vec![
            set("progress", json!({"percent": 100})),
            set("phase", json!(Phase::Succeeded)),
        ],
    )
    .await
    .expect("the holder may complete its item");
    assert_eq!(done.phase(), Some(Phase::Succeeded));

    // The policy does not touch other writers: the admin (a stand-in for the
    // scheduler and supervisor identities) still writes the other agent's item.
    items
        .patch_status(
            "theirs",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"claim": {"agent": "agent-y-0", "epoch": 2}}})),
        )
        .await
        .expect("non-agent identities are not restricted");
}

/// Installs the chart's agent policies bound to `ns` only; they are deleted when the
/// returned guard drops. The API server enforces them a moment later: tests probe.
async fn install_agent_policy(ns: &TestNamespace) -> ClusterScoped {
    let selector = format!(
        r#"agentPolicy.namespaceSelector={{"matchLabels":{{"kubernetes.io/metadata.name":"{}"}}}}"#,
        ns.name
    );
    let rendered = render(
        &ns.name,
        &[
            "--show-only",
            "templates/agent-policy.yaml",
            "--set-json",
            &selector,
        ],
    );
    let cleanup = ClusterScoped {
        release: ns.name.clone(),
        kinds: "validatingadmissionpolicy,validatingadmissionpolicybinding",
    };
    apply(&rendered);
    cleanup
}

/// The message of the policy's refusal of `result`; panics on anything else.
fn refused<T: std::fmt::Debug>(result: kube::Result<T>) -> String {
    match result {
        Err(kube::Error::Api(s)) if s.code == 403 => s.message,
        other => panic!("expected the admission policy's 403, got {other:?}"),
    }
}

/// Once the API server has loaded a policy, it refuses `patch` on `item`'s status (a dry
/// run) with a message containing `rule`: waits for that and returns the message.
async fn wait_refused(as_agent: &Api<WorkItem>, item: &str, patch: &Value, rule: &str) -> String {
    wait_for(
        WAIT,
        &format!("the admission policy to refuse with {rule:?}"),
        || async {
            match as_agent
                .patch_status(
                    item,
                    &PatchParams::default().dry_run(),
                    &Patch::Merge(patch),
                )
                .await
            {
                Err(kube::Error::Api(s)) if s.code == 403 && s.message.contains(rule) => {
                    Some(s.message)
                }
                _ => None,
            }
        },
    )
    .await
}

/// The admission policy's refusal of a fenced write; panics on anything else.
fn refused_fenced<T: std::fmt::Debug>(result: Result<T, triad::k8s::fence::FenceError>) -> String {
    match result {
        Err(triad::k8s::fence::FenceError::Api(e)) => refused::<()>(Err(e)),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Each attack an agent's own token could make on item status and Leases, replayed
/// against the real API server with a pod-bound agent token: every one is refused with
/// the rule's message, while the legitimate writes of the same agent pass.
#[tokio::test]
async fn agent_policy_refuses_forged_transitions_and_foreign_leases() {
    use k8s_openapi::api::coordination::v1::Lease;
    let ns = TestNamespace::new("vap-attacks").await;
    let _cleanup = install_agent_policy(&ns).await;
    let me = "agent-z-0";
    let agent = agent_identity(&ns, "z", me).await;
    let as_agent: Api<WorkItem> = Api::namespaced(agent.clone(), &ns.name);
    let items = ns.api::<WorkItem>();
    let merge = |v: Value| Patch::Merge(v);
    let pp = PatchParams::default();

    // 1. Claim and complete in one write, with a forged result. Wait for enforcement.
    create_item(&ns, "forge").await;
    let forged = json!({"status": {"phase": "Succeeded", "attempt": 1,
        "claim": {"agent": me, "epoch": 1}, "result": {"merged": true}}});
    let message = wait_refused(&as_agent, "forge", &forged, "rule claim").await;
    assert!(message.contains("rule claim"), "{message}");
    let mut refused_count = 1;

    // 2. A claim that skips attempts, or carries an outcome.
    for body in [
        json!({"status": {"phase": "Running", "attempt": 5, "claim": {"agent": me, "epoch": 1}}}),
        json!({"status": {"phase": "Running", "attempt": 1, "claim": {"agent": me, "epoch": 1},
            "outcome": {"kind": "Succeeded", "attempt": 1, "epoch": 1}}}),
    ] {
        let m = refused(as_agent.patch_status("forge", &pp, &merge(body)).await);
        assert!(m.contains("rule claim:"), "{m}");
        refused_count += 1;
    }

    // 3. Claiming an item that waits for its dependencies before the scheduler queued it.
    let waiting: WorkItem = serde_json::from_value(json!({"metadata": {"name": "waits"},
        "spec": {"queue": "q", "dependsOn": ["forge"]}}))
    .unwrap();
    items
        .create(&PostParams::default(), &waiting)
        .await
        .expect("create");
    let m = refused(
        as_agent
            .patch_status(
                "waits",
                &pp,
                &merge(json!({"status": {"phase": "Running", "attempt": 1,
                    "claim": {"agent": me, "epoch": 1}}})),
            )
            .await,
    );
    assert!(m.contains("rule claim-dependencies"), "{m}");
    refused_count += 1;

    // The legitimate claim passes.
    let held = claim(
        &as_agent,
        &items.get("forge").await.expect("item"),
        &AgentIdentity {
            agent: me.into(),
            pod: Some(me.into()),
            lease: None,
        },
    )
    .await
    .expect("the real claim passes");
    let fence = Fence::of(&held).expect("claimed");

    // 4. The holder rewriting its attempt number, budget extension or interventions.
    for (ops, rule) in [
        (vec![set("attempt", json!(0))], "rule attempt"),
        (
            vec![set("budgetExtension", json!({"tokens": 1e9}))],
            "rule theirs",
        ),
        (
            vec![set(
                "interventions",
                json!([{"action": "Extend", "monitor": "budget", "reason": "Forged", "at": "2030-01-01T00:00:00Z"}]),
            )],
            "rule theirs",
        ),
    ] {
        let r = fenced_patch(&as_agent, "forge", &fence, ops).await;
        let m = refused_fenced(r);
        assert!(m.contains(rule), "{rule}: {m}");
        refused_count += 1;
    }
    // Progress and rising usage under the claim pass; lowering or dropping a counter
    // (to escape a budget) does not.
    fenced_patch(
        &as_agent,
        "forge",
        &fence,
        vec![
            set("progress", json!({"percent": 50})),
            set("usage", json!({"tokens": 900.0, "cost": 0.5})),
        ],
    )
    .await
    .expect("the holder reports progress and usage");
    for usage in [
        json!({"tokens": 10.0, "cost": 0.5}),
        json!({"tokens": 950.0}),
    ] {
        let r = fenced_patch(&as_agent, "forge", &fence, vec![set("usage", usage)]).await;
        let m = refused_fenced(r);
        assert!(m.contains("rule usage"), "{m}");
        refused_count += 1;
    }
    fenced_patch(
        &as_agent,
        "forge",
        &fence,
        vec![set("usage", json!({"tokens": 1000.0, "cost": 0.5}))],
    )
    .await
    .expect("usage rises");

    // Conditions: the holder writes its ViolationReported (as the agent does), never
    // the others'; dropping the supervisor's CancelRequested is refused.
    items
        .patch_status(
            "forge",
            &pp,
            &merge(json!({"status": {"conditions": [{"type": "CancelRequested", "status": "True",
                "reason": "Cancelled", "message": "cancel", "lastTransitionTime": "2030-01-01T00:00:00Z"}]}})),
        )
        .await
        .expect("the supervisor (admin) asks for a cancel");
    let view = items.get("forge").await.expect("item");
    let report = triad::agent::writer::violation_op(
        view.status.as_ref().map(|s| s.conditions.as_slice()),
        &triad::core::report::ViolationReport {
            rule: "pii".into(),
            detail: None,
        },
        1,
        &triad::k8s::now(),
    )
    .expect("room for the condition");
    fenced_patch(&as_agent, "forge", &fence, vec![report])
        .await
        .expect("the holder reports a violation");
    for conditions in [
        json!([]),
        json!([{"type": "Stalled", "status": "True", "reason": "Forged",
        "message": "forged", "lastTransitionTime": "2030-01-01T00:00:00Z"}]),
    ] {
        let r = fenced_patch(
            &as_agent,
            "forge",
            &fence,
            vec![set("conditions", conditions)],
        )
        .await;
        let m = refused_fenced(r);
        assert!(m.contains("rule conditions"), "{m}");
        refused_count += 1;
    }

    // 5. Fenced out (the supervisor's fence-out: a new epoch and an outcome, the claim
    // still naming the agent): the former holder cannot complete it under the new epoch.
    items
        .patch_status(
            "forge",
            &pp,
            &merge(
                json!({"status": {"claim": {"agent": me, "epoch": fence.epoch + 1},
                "outcome": {"kind": "LeaseExpired", "attempt": 1, "epoch": fence.epoch + 1}}}),
            ),
        )
        .await
        .expect("the supervisor (admin) fences the agent out");
    let r = fenced_patch(
        &as_agent,
        "forge",
        &Fence {
            agent: me.into(),
            epoch: fence.epoch + 1,
        },
        vec![set("phase", json!(Phase::Succeeded))],
    )
    .await;
    let m = refused_fenced(r);
    assert!(
        m.contains("rule holder") && m.contains("LeaseExpired"),
        "{m}"
    );
    refused_count += 1;

    // 6. A dead-lettered item whose claim still names the agent: no rewriting its result.
    items
        .patch_status(
            "forge",
            &pp,
            &merge(json!({"status": {"phase": "DeadLettered", "outcome": null}})),
        )
        .await
        .expect("the scheduler (admin) dead-letters it");
    let m = refused(
        as_agent
            .patch_status(
                "forge",
                &pp,
                &merge(json!({"status": {"result": {"forged": 1}}})),
            )
            .await,
    );
    assert!(m.contains("rule holder"), "{m}");
    refused_count += 1;

    // 6b. Another pool's queue: agent z's pool serves q; an item on queue "other" is
    // not its to claim (the rule reads the AgentPool; its binding may lag a moment).
    let pool: triad::api::AgentPool = serde_json::from_value(json!({
        "apiVersion": "triad.dev/v1alpha1", "kind": "AgentPool",
        "metadata": {"name": "z"},
        "spec": {"queues": [{"name": "q"}], "replicas": 0,
                 "template": {"spec": {"containers": [{"name": "work", "image": "triad:dev",
                                                       "command": ["true"]}]}}}
    }))
    .expect("pool");
    ns.api::<triad::api::AgentPool>()
        .create(&PostParams::default(), &pool)
        .await
        .expect("create pool z");
    // A second pool that does serve "other": the rule is judged per pool, and every
    // pool's judgement must pass, so y's cannot let z's agent in.
    let mut y = pool.clone();
    y.metadata.name = Some("y".into());
    y.spec.queues[0].name = "other".into();
    ns.api::<triad::api::AgentPool>()
        .create(&PostParams::default(), &y)
        .await
        .expect("create pool y");
    let other: WorkItem = serde_json::from_value(json!({
        "apiVersion": "triad.dev/v1alpha1", "kind": "WorkItem",
        "metadata": {"name": "elsewhere"}, "spec": {"queue": "other"}
    }))
    .expect("item");
    items
        .create(&PostParams::default(), &other)
        .await
        .expect("create item on another queue");
    let claim_other = json!({"status": {"phase": "Running", "attempt": 1,
        "claim": {"agent": me, "epoch": 1}}});
    let m = wait_refused(&as_agent, "elsewhere", &claim_other, "rule claim-queue").await;
    assert!(m.contains("serve q, not queue other"), "{m}");
    refused_count += 1;
    // The same agent's claim on its own pool's queue still passes (dry run).
    create_item(&ns, "mine").await;
    as_agent
        .patch_status(
            "mine",
            &PatchParams::default().dry_run(),
            &Patch::Merge(&claim_other),
        )
        .await
        .expect("a claim on its own pool's queue passes");

    // 7. Leases: another agent's, a foreign holder, a changed duration.
    let leases: Api<Lease> = Api::namespaced(agent, &ns.name);
    let lease = |name: &str, holder: &str, secs: i32| -> Lease {
        serde_json::from_value(json!({"metadata": {"name": name},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": secs}}))
        .unwrap()
    };
    for (l, rule) in [
        (
            lease("triad-agent-agent-y-0", "agent-y-0", 15),
            "rule own-lease",
        ),
        (
            lease(&format!("triad-agent-{me}"), "agent-y-0", 15),
            "rule own-lease",
        ),
    ] {
        let m = refused(leases.create(&PostParams::default(), &l).await);
        assert!(m.contains(rule), "{m}");
        refused_count += 1;
    }
    leases
        .create(
            &PostParams::default(),
            &lease(&format!("triad-agent-{me}"), me, 15),
        )
        .await
        .expect("its own Lease");
    leases
        .patch(
            &format!("triad-agent-{me}"),
            &pp,
            &merge(json!({"spec": {"renewTime": "2030-01-01T00:00:00.000000Z"}})),
        )
        .await
        .expect("renewing its own Lease");
    let m = refused(
        leases
            .patch(
                &format!("triad-agent-{me}"),
                &pp,
                &merge(json!({"spec": {"leaseDurationSeconds": 1}})),
            )
            .await,
    );
    assert!(m.contains("rule lease-duration"), "{m}");
    refused_count += 1;
    // The admin's (a peer's) Lease cannot be renewed in its name either.
    ns.api::<Lease>()
        .create(
            &PostParams::default(),
            &lease("triad-agent-agent-y-0", "agent-y-0", 15),
        )
        .await
        .expect("a peer's Lease");
    let m = refused(
        leases
            .patch(
                "triad-agent-agent-y-0",
                &pp,
                &merge(json!({"spec": {"renewTime": "2030-01-01T00:00:00.000000Z"}})),
            )
            .await,
    );
    assert!(m.contains("rule own-lease"), "{m}");
    refused_count += 1;
    assert_eq!(refused_count, 18, "attacks tried and refused");
}

/// What `kubectl auth can-i` says for a service account.
fn can_i(ns: &str, account: &str, verb: &str, resource: &str, in_ns: &str) -> bool {
    let who = format!("system:serviceaccount:{ns}:{account}");
    let mut args = vec!["auth", "can-i", verb];
    match resource.split_once('/') {
        Some((r, sub)) => args.extend([r, "--subresource", sub]),
        None => args.push(resource),
    }
    args.extend(["--as", &who, "-n", in_ns]);
    let out = kubectl(&args);
    String::from_utf8_lossy(&out.stdout).trim() == "yes"
}

/// Applies the ServiceAccounts, roles and bindings among a rendered release's `docs`;
/// the cluster-scoped ones are deleted when the returned guard drops.
fn apply_rbac(release: &str, docs: &[Value]) -> ClusterScoped {
    let yaml: String = docs
        .iter()
        .filter(|d| {
            matches!(
                d["kind"].as_str(),
                Some(
                    "ServiceAccount"
                        | "ClusterRole"
                        | "ClusterRoleBinding"
                        | "Role"
                        | "RoleBinding"
                )
            )
        })
        .map(|d| format!("---\n{}", serde_yaml::to_string(d).unwrap()))
        .collect();
    let cleanup = ClusterScoped {
        release: release.to_owned(),
        kinds: "clusterrole,clusterrolebinding",
    };
    apply(&yaml);
    cleanup
}

#[tokio::test]
async fn split_roles_get_least_privilege_rbac() {
    let ns = TestNamespace::new("rbac").await;
    let release = ns.name.clone();
    let rendered = render(&release, &["--set", "roles.split=true"]);
    let docs = documents(&rendered);
    let kinds: Vec<(String, String)> = docs
        .iter()
        .map(|d| {
            (
                d["kind"].as_str().unwrap_or_default().to_owned(),
                d["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect();
    let deployments: BTreeSet<&str> = kinds
        .iter()
        .filter(|(k, _)| k == "Deployment")
        .map(|(_, n)| n.as_str())
        .collect();
    let prefix = format!("{release}-triad");
    assert_eq!(
        deployments,
        BTreeSet::from([
            format!("{prefix}-pools").as_str(),
            format!("{prefix}-scheduler").as_str(),
            format!("{prefix}-supervisor").as_str()
        ])
    );
    for d in docs.iter().filter(|d| d["kind"] == "Deployment") {
        let pod = &d["spec"]["template"]["spec"];
        let c = &pod["containers"][0];
        assert_eq!(c["ports"][0]["name"], "metrics");
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
        assert_eq!(d["spec"]["replicas"], 2);
        let env: Vec<&str> = c["env"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["name"].as_str())
            .collect();
        for want in [
            "TRIAD_ROLES",
            "TRIAD_LEADER_ELECT",
            "POD_NAME",
            "POD_NAMESPACE",
            "TRIAD_METRICS_ADDR",
        ] {
            assert!(env.contains(&want), "{want} missing in {env:?}");
        }
    }

    // Install the RBAC (ServiceAccounts, ClusterRoles, bindings) and ask the authorizer.
    let _cleanup = apply_rbac(&release, &docs);

    let elsewhere = "default";
    let (sched, pools, sup) = (
        format!("{prefix}-scheduler"),
        format!("{prefix}-pools"),
        format!("{prefix}-supervisor"),
    );
    wait_for(WAIT, "RBAC to take effect", || async {
        can_i(&release, &sup, "delete", "pods", elsewhere).then_some(())
    })
    .await;
    let cases: &[(&str, &str, &str, &str, bool)] = &[
        // The supervisor may delete agent pods; the scheduler may not touch pods at all.
        (&sup, "delete", "pods", elsewhere, true),
        (&sched, "delete", "pods", elsewhere, false),
        (&sched, "list", "pods", elsewhere, false),
        (&sup, "create", "pods", elsewhere, false),
        (&pools, "create", "pods", elsewhere, true),
        (&pools, "delete", "pods", elsewhere, true),
        // Items: the scheduler creates and deletes them; no one else does.
        (&sched, "create", "workitems.triad.dev", elsewhere, true),
        (&sched, "delete", "workitems.triad.dev", elsewhere, true),
        (&sup, "create", "workitems.triad.dev", elsewhere, false),
        (&pools, "delete", "workitems.triad.dev", elsewhere, false),
        (&sup, "patch", "workitems.triad.dev/status", elsewhere, true),
        (&sup, "watch", "leases.coordination.k8s.io", elsewhere, true),
        (
            &sched,
            "watch",
            "leases.coordination.k8s.io",
            elsewhere,
            false,
        ),
        // Leader election only in the release namespace.
        (
            &sched,
            "update",
            "leases.coordination.k8s.io",
            &release,
            true,
        ),
        (
            &sched,
            "update",
            "leases.coordination.k8s.io",
            elsewhere,
            false,
        ),
        // The pools role binds the agents' ClusterRole; it holds none of its writes.
        (
            &pools,
            "create",
            "rolebindings.rbac.authorization.k8s.io",
            elsewhere,
            true,
        ),
        (
            &pools,
            "create",
            "roles.rbac.authorization.k8s.io",
            elsewhere,
            false,
        ),
        (
            &pools,
            "patch",
            "workitems.triad.dev/status",
            elsewhere,
            false,
        ),
        (
            &pools,
            "update",
            "leases.coordination.k8s.io",
            elsewhere,
            false,
        ),
        (
            &pools,
            "create",
            "leases.coordination.k8s.io",
            elsewhere,
            false,
        ),
        (
            &sched,
            "create",
            "roles.rbac.authorization.k8s.io",
            elsewhere,
            false,
        ),
        (&sup, "get", "secrets", elsewhere, false),
        (&pools, "get", "secrets", elsewhere, false),
        (
            &sched,
            "patch",
            "workrequests.triad.dev/status",
            elsewhere,
            true,
        ),
        (
            &sup,
            "patch",
            "workrequests.triad.dev/status",
            elsewhere,
            false,
        ),
    ];
    let mut wrong = Vec::new();
    for (who, verb, resource, in_ns, want) in cases {
        if can_i(&release, who, verb, resource, in_ns) != *want {
            wrong.push(format!(
                "{who} {verb} {resource} in {in_ns}: expected {want}"
            ));
        }
    }
    assert!(wrong.is_empty(), "RBAC mismatches:\n{}", wrong.join("\n"));

    // The agents' ClusterRole in the chart is the one the code means (src/pool/rbac.rs).
    let agent_role = format!("{prefix}-agent");
    let shipped = docs
        .iter()
        .find(|d| d["kind"] == "ClusterRole" && d["metadata"]["name"] == agent_role.as_str())
        .expect("the chart ships the agents' ClusterRole");
    let shipped: k8s_openapi::api::rbac::v1::ClusterRole =
        serde_json::from_value(shipped.clone()).expect("a ClusterRole");
    assert_eq!(
        grants(&shipped.rules.unwrap_or_default()),
        grants(&triad::pool::rbac::rules()),
        "charts/triad/templates/rbac.yaml and src/pool/rbac.rs disagree on the agents' rules"
    );
    // The pools role may grant exactly that ClusterRole, by binding it, and nothing
    // more: the API server's escalation check refuses a binding to any other role.
    let bind = |role: &str| {
        kubectl(&[
            "create",
            "rolebinding",
            "triad-agent-x",
            &format!("--clusterrole={role}"),
            &format!("--serviceaccount={elsewhere}:triad-agent-x"),
            "-n",
            elsewhere,
            "--dry-run=server",
            "--as",
            &format!("system:serviceaccount:{release}:{pools}"),
        ])
    };
    let granted = bind(&agent_role);
    assert!(
        granted.status.success(),
        "the pools role binds the agents' ClusterRole: {}",
        String::from_utf8_lossy(&granted.stderr)
    );
    for other in ["cluster-admin", "edit", &format!("{prefix}-supervisor")] {
        let refused = bind(other);
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(
            !refused.status.success() && stderr.contains("forbidden"),
            "the pools role must not grant {other}: {stderr}"
        );
    }
}

/// `group/resource:verb` for every grant in `rules`, sorted.
fn grants(rules: &[k8s_openapi::api::rbac::v1::PolicyRule]) -> Vec<String> {
    let mut out = Vec::new();
    for r in rules {
        for g in r.api_groups.iter().flatten() {
            for res in r.resources.iter().flatten() {
                for v in &r.verbs {
                    out.push(format!("{g}/{res}:{v}"));
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// With `watchNamespace`, every role's RBAC is a Role and RoleBinding in that
/// namespace: Triad's identities can do their work there and nothing anywhere else.
#[tokio::test]
async fn watch_namespace_scopes_every_roles_rbac_to_it() {
    let ns = TestNamespace::new("rbac-scoped").await;
    let release = ns.name.clone();
    let watched = &ns.name;
    let rendered = render(
        &release,
        &[
            "--set",
            "roles.split=true",
            "--set",
            &format!("watchNamespace={watched}"),
        ],
    );
    let docs = documents(&rendered);
    let cluster_wide: Vec<String> = docs
        .iter()
        .filter(|d| {
            matches!(
                d["kind"].as_str(),
                Some("ClusterRole" | "ClusterRoleBinding")
            )
        })
        .filter_map(|d| d["metadata"]["name"].as_str().map(str::to_owned))
        .collect();
    let prefix = format!("{release}-triad");
    assert_eq!(
        cluster_wide,
        [format!("{prefix}-agent")],
        "only the agents' ClusterRole (bound per namespace) is cluster-scoped"
    );
    let _cleanup = apply_rbac(&release, &docs);
    let (sched, pools, sup) = (
        format!("{prefix}-scheduler"),
        format!("{prefix}-pools"),
        format!("{prefix}-supervisor"),
    );
    wait_for(WAIT, "RBAC to take effect", || async {
        can_i(&release, &sup, "delete", "pods", watched).then_some(())
    })
    .await;
    let work: &[(&str, &str, &str)] = &[
        (&sup, "delete", "pods"),
        (&sup, "watch", "leases.coordination.k8s.io"),
        (&sup, "patch", "workitems.triad.dev/status"),
        (&pools, "create", "pods"),
        (&pools, "create", "rolebindings.rbac.authorization.k8s.io"),
        (&pools, "patch", "agentpools.triad.dev/status"),
        (&sched, "create", "workitems.triad.dev"),
        (&sched, "patch", "workrequests.triad.dev/status"),
        (&sched, "create", "events.events.k8s.io"),
    ];
    let mut wrong = Vec::new();
    for (who, verb, resource) in work {
        if !can_i(&release, who, verb, resource, watched) {
            wrong.push(format!("{who} cannot {verb} {resource} in {watched}"));
        }
        if can_i(&release, who, verb, resource, "default") {
            wrong.push(format!("{who} can {verb} {resource} in default"));
        }
    }
    assert!(wrong.is_empty(), "RBAC mismatches:\n{}", wrong.join("\n"));
}

/// GET `path` from `addr` over plain HTTP/1.0; the body.
async fn http_get(addr: &str, path: &str) -> Option<String> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = String::new();
    stream.read_to_string(&mut buf).await.ok()?;
    let (head, body) = buf.split_once("\r\n\r\n")?;
    (head.split_whitespace().nth(1) == Some("200")).then(|| body.to_owned())
}

fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").to_string()
}

/// Metric names (PromQL selectors) used by the dashboard and the alert rules.
fn used_metric_names() -> BTreeSet<String> {
    let mut text = std::fs::read_to_string(repo_root().join("charts/triad/dashboards/triad.json"))
        .expect("dashboard");
    text.push_str(
        &std::fs::read_to_string(repo_root().join("charts/triad/files/alerts.yaml"))
            .expect("alerts"),
    );
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("triad_") {
        let start = i + pos;
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end = text[start..]
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .map_or(text.len(), |e| start + e);
        if boundary {
            names.insert(text[start..end].to_owned());
        }
        i = end;
    }
    names
}

/// Families in an exposition (`# TYPE <family> <kind>`) and the sample names they
/// produce: counters `_total`, histograms `_bucket`, `_sum`, `_count`.
fn exported(body: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(family), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            names.insert(family.to_owned());
            match kind {
                "counter" => {
                    names.insert(format!("{family}_total"));
                }
                "histogram" => {
                    for s in ["_bucket", "_sum", "_count"] {
                        names.insert(format!("{family}{s}"));
                    }
                }
                _ => {}
            }
        }
    }
    names
}

struct Process(std::process::Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn every_metric_the_dashboard_and_alerts_use_is_exported() {
    let ns = TestNamespace::new("metrics").await;
    let queue: triad::api::WorkQueue = serde_json::from_value(json!({
        "apiVersion": "triad.dev/v1alpha1", "kind": "WorkQueue",
        "metadata": {"name": "q"}, "spec": {"supervision": {"cancelGraceSeconds": 5}}
    }))
    .unwrap();
    ns.api::<triad::api::WorkQueue>()
        .create(&PostParams::default(), &queue)
        .await
        .expect("queue");
    let pool: triad::api::AgentPool = serde_json::from_value(json!({
        "apiVersion": "triad.dev/v1alpha1", "kind": "AgentPool",
        "metadata": {"name": "p"},
        "spec": {"queues": [{"name": "q"}], "replicas": 0,
                 "template": {"spec": {"containers": [{"name": "agent", "image": "triad:dev",
                                                       "command": ["true"]}]}}}
    }))
    .unwrap();
    ns.api::<triad::api::AgentPool>()
        .create(&PostParams::default(), &pool)
        .await
        .expect("pool");

    // The real processes, as the chart runs them: the controller with every role and
    // leader election on (its Leases in this namespace), and an agent.
    let triad = env!("CARGO_BIN_EXE_triad");
    let controller_addr = free_addr();
    let _controller = Process(
        Command::new(triad)
            .arg("controller")
            .env("KUBECONFIG", kubeconfig_path())
            .env("TRIAD_ROLES", "scheduler,pools,supervisor")
            .env("TRIAD_METRICS_ADDR", &controller_addr)
            .env("TRIAD_WATCH_NAMESPACE", &ns.name)
            .env("TRIAD_LEADER_ELECT", "true")
            .env("POD_NAMESPACE", &ns.name)
            .env("POD_NAME", "controller-0")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("start triad controller"),
    );
    let agent_addr = free_addr();
    let _agent = Process(
        Command::new(triad)
            .args(["agent", "--pod-name", "agent-0", "--namespace", &ns.name])
            .args([
                "--queues",
                "q:1",
                "--metrics-addr",
                &agent_addr,
                "--",
                "sh",
                "-c",
                // The slow item ignores SIGTERM, so the cancel lasts the queue's grace:
                // long enough for the supervisor to record it as an intervention
                // (the agent alone would otherwise end it first, now and then).
                r#"case "$TRIAD_PAYLOAD" in *slow*) trap '' TERM; sleep 60;; esac"#,
            ])
            .env("KUBECONFIG", kubeconfig_path())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("start triad agent"),
    );
    // Work that makes every family report: an item the agent runs, one the scheduler
    // admits once its dependency succeeded, and one cancelled while it runs (a
    // supervisor intervention, then a scheduler decision).
    let items = ns.api::<WorkItem>();
    let mk = |name: &str, extra: Value| {
        let mut spec = json!({"queue": "q"});
        spec.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        serde_json::from_value::<WorkItem>(json!({
            "apiVersion": "triad.dev/v1alpha1", "kind": "WorkItem",
            "metadata": {"name": name}, "spec": spec
        }))
        .unwrap()
    };
    for (name, extra) in [("one", json!({})), ("two", json!({"dependsOn": ["one"]}))] {
        items
            .create(&PostParams::default(), &mk(name, extra))
            .await
            .expect("create item");
    }
    for name in ["one", "two"] {
        wait_for(WAIT, &format!("the agent to finish {name}"), || async {
            (items.get(name).await.ok()?.phase() == Some(Phase::Succeeded)).then_some(())
        })
        .await;
    }
    items
        .create(
            &PostParams::default(),
            &mk("slow", json!({"payload": {"slow": true}})),
        )
        .await
        .expect("create item");
    wait_for(WAIT, "the slow item to run", || async {
        (items.get("slow").await.ok()?.phase() == Some(Phase::Running)).then_some(())
    })
    .await;
    items
        .patch(
            "slow",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"cancel": true}})),
        )
        .await
        .expect("cancel");
    wait_for(WAIT, "the slow item to be cancelled", || async {
        (items.get("slow").await.ok()?.phase() == Some(Phase::Cancelled)).then_some(())
    })
    .await;

    // Scrape until the roles have reported on this namespace's queue and pool.
    let queue_series = format!("triad_queue_items{{namespace=\"{}\",queue=\"q\"", ns.name);
    let pool_series = format!("triad_pool_agents{{namespace=\"{}\",pool=\"p\"", ns.name);
    let controller = wait_for(
        Duration::from_secs(90),
        "the controller's metrics for the queue and pool",
        || {
            let (addr, q, p) = (
                controller_addr.clone(),
                queue_series.clone(),
                pool_series.clone(),
            );
            async move {
                let body = http_get(&addr, "/metrics").await?;
                let want = [
                    q.as_str(),
                    p.as_str(),
                    "triad_leader{role=\"scheduler\"} 1",
                    "triad_scheduler_decisions_total{decision=\"admitted\"}",
                    "triad_interventions_total{monitor=\"user\"",
                ];
                let absent: Vec<String> = want
                    .iter()
                    .filter(|w| !body.contains(*w))
                    .map(|w| (*w).to_owned())
                    .collect();
                if !absent.is_empty() {
                    // Shown when the wait times out.
                    eprintln!("controller metrics still missing: {absent:?}");
                }
                absent.is_empty().then_some(body)
            }
        },
    )
    .await;
    let agent = wait_for(WAIT, "the agent's metrics", || {
        let addr = agent_addr.clone();
        async move {
            let body = http_get(&addr, "/metrics").await?;
            body.contains("triad_agent_items_total{outcome=\"Succeeded\"}")
                .then_some(body)
        }
    })
    .await;
    assert!(http_get(&controller_addr, "/healthz").await.is_some());
    assert!(http_get(&controller_addr, "/readyz").await.is_some());

    let mut available = exported(&controller);
    available.extend(exported(&agent));
    let used = used_metric_names();
    assert!(
        used.len() > 10,
        "found only {used:?} in the dashboard and alerts"
    );
    let missing: Vec<&String> = used.iter().filter(|n| !available.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "used by the dashboard or alerts but not exported by any triad process: {missing:?}\nexported: {available:?}"
    );
}

/// The chart's operator policy with the controller's own token: RBAC lets it create and
/// delete any pod in a namespace it serves, the policy only agent pods, running as their
/// pool's agent account. Each refusal names its rule.
#[tokio::test]
async fn the_operator_may_create_and_delete_only_agent_pods() {
    let ns = TestNamespace::new("vap-operator").await;
    let release = ns.name.clone();
    let rendered = render(&release, &["--show-only", "templates/operator-policy.yaml"]);
    let _cleanup = ClusterScoped {
        release: release.clone(),
        kinds: "validatingadmissionpolicy,validatingadmissionpolicybinding",
    };
    apply(&rendered);
    // The combined controller's account, granted pods in this namespace as the chart's
    // pools and supervisor roles are.
    let account = format!("{release}-triad-controller");
    let rbac = format!(
        r#"
apiVersion: v1
kind: ServiceAccount
metadata: {{name: {account}, namespace: {ns}}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: triad-agent-p, namespace: {ns}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: pods, namespace: {ns}}}
rules: [{{apiGroups: [""], resources: [pods], verbs: [get, create, delete]}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: pods, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: pods}}
subjects: [{{kind: ServiceAccount, name: {account}, namespace: {ns}}}]
"#,
        ns = ns.name
    );
    apply(&rbac);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![],
            expiration_seconds: Some(3600),
            bound_object_ref: None,
        },
        ..Default::default()
    };
    let token = wait_for(WAIT, "a token for the controller", || async {
        ns.api::<ServiceAccount>()
            .create_token_request(&account, &PostParams::default(), &request)
            .await
            .ok()?
            .status
            .map(|s| s.token)
    })
    .await;
    let as_operator: Api<Pod> = Api::namespaced(client_with_token(token).await, &ns.name);
    let pod = |name: &str, pool: Option<&str>, account: Option<&str>| -> Pod {
        let mut p = json!({
            "metadata": {"name": name},
            "spec": {
                "nodeSelector": {"triad.dev/test-node": "none"},
                "containers": [{"name": "c", "image": "triad:dev", "command": ["true"]}]
            }
        });
        if let Some(pool) = pool {
            p["metadata"]["labels"] = json!({"triad.dev/pool": pool});
        }
        if let Some(a) = account {
            p["spec"]["serviceAccountName"] = json!(a);
        }
        serde_json::from_value(p).expect("pod")
    };
    let pp = PostParams::default();

    // A pod of no pool: refused once the policy enforces (its binding takes a moment).
    let message = wait_for(WAIT, "the operator policy to enforce", || async {
        match as_operator.create(&pp, &pod("loose", None, None)).await {
            Err(kube::Error::Api(s)) if s.code == 403 && s.message.contains("rule ") => {
                Some(s.message)
            }
            Ok(_) => {
                let _ = ns.api::<Pod>().delete("loose", &Default::default()).await;
                None
            }
            Err(_) => None,
        }
    })
    .await;
    assert!(message.contains("rule agent-pods-only"), "{message}");
    // An agent pod that would run as another account (and so hold its token).
    let message = refused(
        as_operator
            .create(&pp, &pod("borrow", Some("p"), Some("default")))
            .await,
    );
    assert!(
        message.contains("rule agent-account") && message.contains("triad-agent-p"),
        "{message}"
    );
    // The pool's own agent pod passes.
    as_operator
        .create(&pp, &pod("agent-p-0", Some("p"), Some("triad-agent-p")))
        .await
        .expect("the operator creates an agent pod");

    // Deleting: someone else's pod is refused, the agent pod is not.
    ns.api::<Pod>()
        .create(&pp, &pod("theirs", None, None))
        .await
        .expect("admin creates a pod");
    let message = refused(as_operator.delete("theirs", &Default::default()).await);
    assert!(
        message.contains("rule agent-pods-only") && message.contains("theirs"),
        "{message}"
    );
    assert!(
        ns.api::<Pod>()
            .get_opt("theirs")
            .await
            .expect("get")
            .is_some()
    );
    as_operator
        .delete("agent-p-0", &Default::default())
        .await
        .expect("the operator deletes an agent pod");
}
