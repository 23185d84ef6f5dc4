//! `triad-bench chaos`: 2 000 items on 10 agents while agents, operator roles and the
//! API server are killed, paused and restarted, and invalid input is submitted.
//! Writes target/chaos/report.json.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, Config, ResourceExt};
use rand::Rng;
use serde_json::{Value, json};
use triad::api::{OutcomeKind, Phase, WorkItem};

use crate::common::*;

#[derive(clap::Args, Debug)]
pub struct ChaosArgs {
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: PathBuf,
    /// The cluster's state directory (hack/cluster.sh): apiserver.pid and .log, and the
    /// node's containerd socket (containerd/containerd.sock) for `crictl` and `ctr`.
    #[arg(long)]
    pub state_dir: PathBuf,
    #[arg(long)]
    pub triad_bin: PathBuf,
    #[arg(long, default_value = "target/chaos")]
    pub out: PathBuf,
    #[arg(long, default_value = "chaos")]
    pub namespace: String,
    #[arg(long, default_value_t = 2000)]
    pub items: usize,
    #[arg(long, default_value_t = 10)]
    pub agents: usize,
    /// Seconds between two faults.
    #[arg(long, default_value_t = 3)]
    pub interval: u64,
    #[arg(long, default_value_t = 1500)]
    pub deadline: u64,
    /// Seeds every random choice the run makes (victims, attack targets); the report
    /// records it. Default: a fresh one. Faults still land at times the machine decides,
    /// so a replay repeats the choices, not every interleaving.
    #[arg(long, env = "TRIAD_CHAOS_SEED")]
    pub seed: Option<u64>,
}

/// The run's one random source, seeded from `--seed` (see [`ChaosArgs::seed`]).
static RNG: std::sync::Mutex<Option<rand::rngs::StdRng>> = std::sync::Mutex::new(None);

/// A random index below `n` (n > 0) from the run's seeded source.
fn pick(n: usize) -> usize {
    use rand::SeedableRng;
    let mut rng = RNG.lock().unwrap_or_else(|p| p.into_inner());
    rng.get_or_insert_with(|| rand::rngs::StdRng::seed_from_u64(0))
        .random_range(0..n)
}

fn seed_rng(seed: u64) {
    use rand::SeedableRng;
    *RNG.lock().unwrap_or_else(|p| p.into_inner()) = Some(rand::rngs::StdRng::seed_from_u64(seed));
}

const LEASE: u64 = 6;

struct Roles {
    ops: Vec<Operator>,
    crashes: usize,
    exits: usize,
}

impl Roles {
    /// Restarts any role that exited on its own, counting it.
    async fn check(&mut self) {
        for op in &mut self.ops {
            if let Some(panicked) = op.exited() {
                self.exits += 1;
                if panicked {
                    self.crashes += 1;
                }
                log(format!(
                    "operator role {} exited on its own (panic: {panicked}); restarting",
                    op.name
                ));
                let _ = op.restart(false).await;
            }
        }
    }
}

/// Restarts kube-apiserver with the same argv (etcd and its data stay).
async fn restart_apiserver(state: &Path) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let pid: u32 = std::fs::read_to_string(state.join("apiserver.pid"))?
        .trim()
        .parse()?;
    let argv: Vec<String> = std::fs::read(format!("/proc/{pid}/cmdline"))?
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    anyhow::ensure!(
        argv.first().is_some_and(|a| a.ends_with("kube-apiserver")),
        "pid {pid} is not kube-apiserver: {argv:?}"
    );
    signal(pid, libc::SIGTERM);
    for _ in 0..150 {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    signal(pid, libc::SIGKILL);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let out = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(state.join("apiserver.log"))?;
    let err = out.try_clone()?;
    let mut cmd = std::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err);
    // SAFETY: setsid in the child before exec, as hack/cluster.sh's `setsid`.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    std::fs::write(state.join("apiserver.pid"), format!("{}\n", child.id()))?;
    std::mem::forget(child); // it outlives us; hack/cluster.sh down stops it
    Ok(())
}

/// Thaws a container paused with `ctr task pause`, trying again for a while: a container
/// left frozen would hold its pod's agent away for the rest of the run.
async fn resume(state_dir: &Path, id: &str) {
    for attempt in 1..=10 {
        match node_tool(state_dir, NodeTool::Ctr, &["task", "resume", id]).await {
            Ok(_) => return,
            Err(e) => {
                log(format!("  resume failed (attempt {attempt}): {e}"));
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

async fn apiserver_ready(client: &Client) -> bool {
    let Ok(req) = http::Request::get("/readyz").body(Vec::new()) else {
        return false;
    };
    client.request_text(req).await.is_ok()
}

async fn count_succeeded(api: &Api<WorkItem>) -> Option<usize> {
    let list = api
        .list(&ListParams::default().labels("chaos.triad.dev/run=main"))
        .await
        .ok()?;
    Some(
        list.items
            .iter()
            .filter(|i| i.status.as_ref().and_then(|s| s.phase) == Some(Phase::Succeeded))
            .count(),
    )
}

/// Invalid input: each case is a closure result: Some(true) rejected/surfaced, Some(false) not.
async fn invalid_inputs(client: &Client, ns: &str) -> Vec<(String, bool, String)> {
    let mut out = Vec::new();
    let wi: Api<WorkItem> = Api::namespaced(client.clone(), ns);
    let dyn_api = |kind: &str, plural: &str| {
        let ar = kube::api::ApiResource {
            group: "triad.dev".into(),
            version: "v1alpha1".into(),
            api_version: "triad.dev/v1alpha1".into(),
            kind: kind.into(),
            plural: plural.into(),
        };
        Api::<kube::api::DynamicObject>::namespaced_with(client.clone(), ns, &ar)
    };
    let create = |kind: &'static str, plural: &'static str, body: Value| {
        let api = dyn_api(kind, plural);
        async move {
            let mut body = body;
            body["apiVersion"] = json!("triad.dev/v1alpha1");
            body["kind"] = json!(kind);
            let obj: kube::api::DynamicObject = serde_json::from_value(body).expect("object");
            api.create(&PostParams::default(), &obj).await
        }
    };
    let rejected = |r: Result<kube::api::DynamicObject, kube::Error>| match r {
        Err(kube::Error::Api(e)) => (
            true,
            format!(
                "{} {}",
                e.code,
                e.message.chars().take(200).collect::<String>()
            ),
        ),
        Err(e) => (true, e.to_string().chars().take(200).collect()),
        Ok(_) => (false, "accepted".into()),
    };
    let cases: Vec<(&str, &str, &str, Value)> = vec![
        (
            "priority out of range",
            "WorkItem",
            "workitems",
            json!({"metadata": {"name": "bad-prio"}, "spec": {"queue": "q", "priority": 5000}}),
        ),
        (
            "no queue and no type",
            "WorkItem",
            "workitems",
            json!({"metadata": {"name": "bad-noqueue"}, "spec": {}}),
        ),
        (
            "negative budget",
            "WorkItem",
            "workitems",
            json!({"metadata": {"name": "bad-budget"}, "spec": {"queue": "q", "budget": {"tokens": -5}}}),
        ),
        (
            "maxAttempts 0",
            "WorkQueue",
            "workqueues",
            json!({"metadata": {"name": "bad-q1"}, "spec": {"retry": {"maxAttempts": 0}}}),
        ),
        (
            "jitter 500%",
            "WorkQueue",
            "workqueues",
            json!({"metadata": {"name": "bad-q2"}, "spec": {"retry": {"backoff": {"jitterPercent": 500}}}}),
        ),
        (
            "negative replicas",
            "AgentPool",
            "agentpools",
            // A valid work container, so that the replicas are the only thing wrong.
            json!({"metadata": {"name": "bad-pool"}, "spec": {"queues": [{"name": "q"}], "replicas": -1, "template": {"spec": {"containers": [{"name": "work", "image": SHELL_IMAGE, "command": ["true"]}]}}}}),
        ),
        (
            "priority out of range (request)",
            "WorkRequest",
            "workrequests",
            json!({"metadata": {"name": "bad-wr-prio"}, "spec": {"priority": -3, "tasks": [{"name": "a", "type": "t"}]}}),
        ),
    ];
    for (what, kind, plural, body) in cases {
        let (ok, msg) = rejected(create(kind, plural, body).await);
        out.push((what.to_string(), ok, msg));
    }
    // A 3 MiB payload: over the API server's request limit.
    let big = "x".repeat(3 * 1024 * 1024);
    let (ok, msg) = rejected(create("WorkItem", "workitems", json!({"metadata": {"name": "bad-huge"}, "spec": {"queue": "nopool", "payload": {"blob": big}}})).await);
    out.push(("3 MiB payload".into(), ok, msg));
    // Duplicate name.
    let _ = create(
        "WorkItem",
        "workitems",
        json!({"metadata": {"name": "dup"}, "spec": {"queue": "nopool"}}),
    )
    .await;
    let (ok, msg) = rejected(
        create(
            "WorkItem",
            "workitems",
            json!({"metadata": {"name": "dup"}, "spec": {"queue": "nopool"}}),
        )
        .await,
    );
    out.push(("duplicate name".into(), ok, msg));

    // Surfaced in status rather than refused.
    let surfaced_cases: Vec<(&str, &str, &str, Value)> = vec![
        (
            "dependency cycle (request)",
            "WorkRequest",
            "workrequests",
            json!({"metadata": {"name": "bad-cycle"}, "spec": {"tasks": [
            {"name": "a", "type": "t", "dependsOn": ["b"]}, {"name": "b", "type": "t", "dependsOn": ["a"]}]}}),
        ),
        (
            "unknown dependency (request)",
            "WorkRequest",
            "workrequests",
            json!({"metadata": {"name": "bad-dep"}, "spec": {"tasks": [
            {"name": "a", "type": "t", "dependsOn": ["zzz"]}]}}),
        ),
        (
            "unknown queue",
            "WorkItem",
            "workitems",
            json!({"metadata": {"name": "bad-unknown-queue"}, "spec": {"queue": "no-such-queue"}}),
        ),
        (
            "100 KiB payload",
            "WorkItem",
            "workitems",
            json!({"metadata": {"name": "bad-payload"}, "spec": {"queue": "nopool", "payload": {"blob": "y".repeat(100 * 1024)}}}),
        ),
        (
            "cycle between items",
            "WorkItem",
            "workitems",
            json!({"metadata": {"name": "bad-cyc-a"}, "spec": {"queue": "nopool", "dependsOn": ["bad-cyc-b"]}}),
        ),
    ];
    let _ = create("WorkItem", "workitems", json!({"metadata": {"name": "bad-cyc-b"}, "spec": {"queue": "nopool", "dependsOn": ["bad-cyc-a"]}})).await;
    let mut pending = Vec::new();
    for (what, kind, plural, body) in surfaced_cases {
        let name = body["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        match create(kind, plural, body).await {
            Err(e) => out.push((
                what.into(),
                true,
                format!(
                    "rejected: {}",
                    e.to_string().chars().take(200).collect::<String>()
                ),
            )),
            Ok(_) => pending.push((what.to_string(), kind, plural, name)),
        }
    }
    // Wait up to 30 s for each accepted one to say what is wrong.
    let deadline = Instant::now() + Duration::from_secs(30);
    for (what, kind, plural, name) in pending {
        let api = dyn_api(kind, plural);
        let mut verdict = (false, "nothing surfaced in 30 s".to_string());
        loop {
            if let Ok(o) = api.get(&name).await {
                let st = &o.data["status"];
                let conds = st["conditions"].as_array().cloned().unwrap_or_default();
                let bad_cond = conds.iter().find(|c| {
                    (c["type"] == "Valid" && c["status"] == "False")
                        || (c["type"] != "Valid"
                            && c["status"] == "True"
                            && c["reason"].as_str().is_some_and(|r| {
                                r.contains("Cycle")
                                    || r.contains("Unknown")
                                    || r.contains("Invalid")
                            }))
                });
                let msg = if let Some(c) = bad_cond {
                    Some(format!("condition {}: {}", c["type"], c["message"]))
                } else if let Some(e) = st["lastError"]["reason"].as_str() {
                    Some(format!(
                        "phase {} lastError {e}: {}",
                        st["phase"], st["lastError"]["message"]
                    ))
                } else if st["phase"] == "Failed" {
                    Some("phase Failed".into())
                } else {
                    st["waiting"]
                        .as_str()
                        .filter(|w| {
                            let w = w.to_lowercase();
                            w.contains("queue")
                                && (w.contains("no ") || w.contains("not") || w.contains("unknown"))
                                || w.contains("cycle")
                        })
                        .map(|w| format!("waiting: {w}"))
                };
                if let Some(m) = msg {
                    verdict = (true, m);
                    break;
                }
            }
            if Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        out.push((what, verdict.0, verdict.1));
    }
    drop(wi);
    out
}

/// Items on queue "bad" whose work command writes malformed, oversize and flooding
/// report lines; surfaced = the item still finishes and the agent counted rejected lines.
async fn report_abuse(client: &Client, ns: &str) -> anyhow::Result<Vec<(String, bool, String)>> {
    let script = r#"case "$TRIAD_PAYLOAD" in
  *malformed*) printf '{not json\n{"progress": 12}\n' >> "$TRIAD_REPORT" ;;
  *oversize*) { printf '{"result": {"x": "'; head -c 3000000 /dev/zero | tr '\0' x; printf '"}}\n'; } >> "$TRIAD_REPORT" ;;
  *flood*) for i in $(seq 1 20000); do echo "{\"progress\":{\"percent\":$((i % 100))}}"; done >> "$TRIAD_REPORT" ;;
esac
exit 0"#;
    apply_pool(
        client,
        ns,
        "bad",
        &["bad"],
        1,
        LEASE as i32,
        &["sh", "-c", script],
    )
    .await?;
    wait_pool_ready(client, ns, "bad", 1, Duration::from_secs(120)).await?;
    let wi: Api<WorkItem> = Api::namespaced(client.clone(), ns);
    let mut out = Vec::new();
    for mode in ["malformed", "oversize", "flood"] {
        let item: WorkItem =
            serde_json::from_value(json!({"metadata": {"name": format!("report-{mode}")},
            "spec": {"queue": "bad", "payload": {"mode": mode}}}))?;
        wi.create(&PostParams::default(), &item).await?;
        let deadline = Instant::now() + Duration::from_secs(90);
        let verdict = loop {
            if let Ok(i) = wi.get(&format!("report-{mode}")).await {
                let st = i.status.clone().unwrap_or_default();
                if st.phase.is_some_and(Phase::is_finished) {
                    let rv_writes = i
                        .metadata
                        .managed_fields
                        .as_ref()
                        .map(|m| m.len())
                        .unwrap_or(0);
                    break (
                        true,
                        format!(
                            "phase {:?}, lastError {:?}, managers {rv_writes}",
                            st.phase,
                            st.last_error.map(|e| e.reason)
                        ),
                    );
                }
            }
            if Instant::now() > deadline {
                break (false, "item did not finish in 90 s".into());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        out.push((format!("report: {mode}"), verdict.0, verdict.1));
    }
    let pods = pool_pods(client, ns, "bad").await?;
    let mut rejected = 0.0;
    let mut restarts = 0;
    for p in &pods {
        if let Some(ip) = pod_ip(p)
            && let Ok(t) = http_get(&format!("{ip}:9090"), "/metrics").await
        {
            rejected += sum(
                &parse_prom(&t),
                "triad_agent_report_lines_rejected_total",
                |_| true,
            );
        }
        restarts += p
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .map(|cs| cs.iter().map(|c| c.restart_count).sum::<i32>())
            .unwrap_or(0);
    }
    for o in &mut out {
        o.2.push_str(&format!(
            "; agent rejected lines total {rejected}, container restarts {restarts}"
        ));
        if restarts > 0 {
            o.1 = false;
        }
    }
    if rejected < 2.0
        && let Some(o) = out.iter_mut().find(|o| o.0.contains("malformed"))
    {
        o.1 = false;
    }
    apply_pool(client, ns, "bad", &["bad"], 0, LEASE as i32, &["true"]).await?;
    Ok(out)
}

/// The misbehaving agent's writes, one name per kind of attack.
const ATTACKS: [&str; 11] = [
    // A Queued (or status-less) item claimed and completed in one write, result forged.
    "claim_and_complete",
    // Another agent's Running item: set Succeeded with a forged result.
    "complete_foreign",
    // Another agent's Running item claimed as itself with the next epoch.
    "steal_running",
    // Another agent's Running item: usage rewritten to zero.
    "usage_down_foreign",
    // Another agent's Running item: a budget extension granted.
    "budget_extension_foreign",
    // Another agent's Running item: the attempt number lowered.
    "attempt_foreign",
    // A Succeeded item (one the bound pod completed itself when there is one): result
    // rewritten.
    "write_finished",
    // Another agent's Lease taken over (holderIdentity).
    "lease_foreign_holder",
    // Another agent's Lease shortened to 1 s (leaseDurationSeconds).
    "lease_foreign_duration",
    // Its own Lease shortened to 1 s.
    "lease_own_duration",
    // An item with dependsOn that the scheduler never queued (the invalid input
    // `bad-cyc-a`, in a dependency cycle) claimed as itself.
    "claim_waiting_dependency",
];

#[derive(Default, Debug, Clone)]
struct AttackStats {
    /// Answered by the API server: refused + refused_other + accepted.
    tried: usize,
    /// 403 from the agent admission policy.
    refused: usize,
    /// Refused by anything else (RBAC, schema, a missing object).
    refused_other: usize,
    accepted: usize,
    /// No answer from admission: the API server was down (restart fault), or the token's
    /// pod had been deleted (401: a new token is requested).
    no_answer: usize,
    /// 409: the target changed between the attacker's read and its write (the write
    /// carries the read's resourceVersion); not admitted, not counted as tried.
    stale: usize,
    /// Refusals by the rule their message names.
    rules: BTreeMap<String, usize>,
    example: Option<String>,
}

/// What answered one attack.
enum Answer {
    Given,
    Unauthorized,
    Missing,
}

/// The rule a policy refusal names ("rule claim", ...; the first validation has no
/// rule name and is named after its message).
fn rule_of(message: &str) -> String {
    if let Some(i) = message.find("rule ") {
        let rest = &message[i..];
        return rest.split(':').next().unwrap_or(rest).trim().to_owned();
    }
    for (needle, name) in [
        ("may only change items it holds", "holder-only"),
        (
            "may claim this Queued item only as itself",
            "claim-as-itself",
        ),
        ("may not change the claim", "claim-unchanged"),
        ("must use a pod-bound", "pod-bound-token"),
    ] {
        if message.contains(needle) {
            return name.into();
        }
    }
    message.chars().take(60).collect()
}

/// A process with a real agent identity (the pool's service account, a token bound to
/// one of the pool's running agent pods) that, while the chaos load runs, tries the
/// writes the agent admission policy must refuse. Reads go through the same token, as
/// a compromised agent's would.
struct Attacker {
    admin: Client,
    kubeconfig: PathBuf,
    ns: String,
    pool: String,
    /// The pod the token is bound to: the agent this process passes for.
    me: String,
    client: Option<Client>,
    tokens: usize,
    bound_pods: Vec<String>,
    stats: BTreeMap<&'static str, AttackStats>,
    findings: Vec<String>,
}

impl Attacker {
    fn new(admin: &Client, kubeconfig: &Path, ns: &str, pool: &str) -> Self {
        Self {
            admin: admin.clone(),
            kubeconfig: kubeconfig.into(),
            ns: ns.into(),
            pool: pool.into(),
            me: String::new(),
            client: None,
            tokens: 0,
            bound_pods: Vec::new(),
            stats: ATTACKS
                .iter()
                .map(|k| (*k, AttackStats::default()))
                .collect(),
            findings: Vec::new(),
        }
    }

    /// A token (TokenRequest) for `triad-agent-<pool>` bound to a running, ready agent
    /// pod of the pool, and a client that authenticates with it alone.
    async fn bind(&mut self) -> anyhow::Result<()> {
        use k8s_openapi::api::authentication::v1::{
            BoundObjectReference, TokenRequest, TokenRequestSpec,
        };
        use k8s_openapi::api::core::v1::ServiceAccount;
        use kube::config::{AuthInfo, KubeConfigOptions, Kubeconfig};
        self.client = None;
        let pods: Vec<Pod> = pool_pods(&self.admin, &self.ns, &self.pool)
            .await?
            .into_iter()
            .filter(pod_ready)
            .collect();
        anyhow::ensure!(!pods.is_empty(), "no ready agent pod to bind a token to");
        let pod = pods[pick(pods.len())].clone();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec![],
                expiration_seconds: Some(3600),
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: Some(name.clone()),
                    uid: pod.metadata.uid.clone(),
                }),
            },
            ..Default::default()
        };
        let account = triad::pool::template::agent_account(&self.pool);
        let token = Api::<ServiceAccount>::namespaced(self.admin.clone(), &self.ns)
            .create_token_request(&account, &PostParams::default(), &request)
            .await?
            .status
            .ok_or_else(|| anyhow::anyhow!("token request without status"))?
            .token;
        let kc = Kubeconfig::read_from(&self.kubeconfig)?;
        let mut config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
        config.auth_info = AuthInfo {
            token: Some(token.into()),
            ..Default::default()
        };
        config.read_timeout = Some(Duration::from_secs(20));
        self.client = Some(Client::try_from(config)?);
        self.tokens += 1;
        if !self.bound_pods.contains(&name) {
            self.bound_pods.push(name.clone());
        }
        log(format!(
            "misbehaving agent: token of {account} bound to pod {name}"
        ));
        self.me = name;
        Ok(())
    }

    /// Counts one attack's answer.
    fn record<T>(&mut self, kind: &'static str, target: &str, r: kube::Result<T>) -> Answer {
        let s = self.stats.entry(kind).or_default();
        match r {
            Ok(_) => {
                s.tried += 1;
                s.accepted += 1;
                let f = format!(
                    "{kind} on {target} as {} was ACCEPTED by the API server",
                    self.me
                );
                log(format!("misbehaving agent: {f}"));
                self.findings.push(f);
                Answer::Given
            }
            Err(kube::Error::Api(e)) if e.code == 401 => {
                s.no_answer += 1;
                Answer::Unauthorized
            }
            Err(kube::Error::Api(e)) if e.code == 409 => {
                s.stale += 1;
                Answer::Given
            }
            Err(kube::Error::Api(e)) if e.code >= 500 || e.code == 429 => {
                s.no_answer += 1;
                Answer::Missing
            }
            Err(kube::Error::Api(e)) => {
                s.tried += 1;
                if e.code == 403 && e.message.contains("ValidatingAdmissionPolicy") {
                    s.refused += 1;
                    *s.rules.entry(rule_of(&e.message)).or_default() += 1;
                } else {
                    s.refused_other += 1;
                    *s.rules
                        .entry(format!("{} {}", e.code, e.reason))
                        .or_default() += 1;
                }
                if s.example.is_none() {
                    s.example = Some(format!("{} {}", e.code, e.message));
                }
                Answer::Given
            }
            Err(_) => {
                s.no_answer += 1;
                Answer::Missing
            }
        }
    }

    /// Waits until the policy refuses a claim-and-complete (a dry run, on an item no
    /// agent serves): the API server loads a new policy a moment after it is created.
    /// Returns the seconds it took.
    async fn wait_enforced(&mut self, timeout: Duration) -> anyhow::Result<f64> {
        let t0 = Instant::now();
        let admin_items: Api<WorkItem> = Api::namespaced(self.admin.clone(), &self.ns);
        let probe: WorkItem = serde_json::from_value(json!({
            "metadata": {"name": "attack-probe"}, "spec": {"queue": "nopool"}}))?;
        match admin_items.create(&PostParams::default(), &probe).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
        loop {
            if self.client.is_none() {
                let _ = self.bind().await;
            }
            if let Some(c) = &self.client {
                let items: Api<WorkItem> = Api::namespaced(c.clone(), &self.ns);
                let body = json!({"status": {"phase": "Succeeded", "attempt": 1,
                    "claim": {"agent": self.me, "epoch": 1}, "result": {"forgedBy": self.me}}});
                match items
                    .patch_status(
                        "attack-probe",
                        &PatchParams::default().dry_run(),
                        &Patch::Merge(&body),
                    )
                    .await
                {
                    Err(kube::Error::Api(e))
                        if e.code == 403 && e.message.contains("ValidatingAdmissionPolicy") =>
                    {
                        log(format!(
                            "agent policy in force: {}",
                            e.message.chars().take(160).collect::<String>()
                        ));
                        return Ok(t0.elapsed().as_secs_f64());
                    }
                    Err(kube::Error::Api(e)) if e.code == 401 => self.client = None,
                    _ => {}
                }
            }
            anyhow::ensure!(
                t0.elapsed() < timeout,
                "the agent admission policy refused nothing within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// A target for one attack: up to six random candidates from the (cached) list,
    /// each read again through the token (a consistent read), the first that still is
    /// what the attack aims at. The write then carries that read's resourceVersion, so
    /// the API server admits or refuses it against exactly that state; an item that
    /// moved on in between answers 409 and counts as stale, not as tried.
    async fn fresh(
        items: &Api<WorkItem>,
        candidates: &[&WorkItem],
        wanted: impl Fn(&WorkItem) -> bool,
    ) -> Option<WorkItem> {
        for _ in 0..6 {
            if candidates.is_empty() {
                return None;
            }
            let name = candidates[pick(candidates.len())].name_any();
            if let Ok(i) = items.get(&name).await
                && wanted(&i)
            {
                return Some(i);
            }
        }
        None
    }

    /// One round: every attack once on a target picked from what the token can read.
    async fn round(&mut self) {
        use k8s_openapi::api::coordination::v1::Lease;
        if self.client.is_none()
            && let Err(e) = self.bind().await
        {
            log(format!("misbehaving agent: no token this round: {e}"));
            return;
        }
        let Some(client) = self.client.clone() else {
            return;
        };
        let me = self.me.clone();
        let items: Api<WorkItem> = Api::namespaced(client.clone(), &self.ns);
        let leases: Api<Lease> = Api::namespaced(client, &self.ns);
        let list = match items
            .list(
                &ListParams::default()
                    .labels("chaos.triad.dev/run=main")
                    .match_any(),
            )
            .await
        {
            Ok(l) => l.items,
            Err(kube::Error::Api(e)) if e.code == 401 => {
                self.client = None;
                return;
            }
            Err(_) => return,
        };
        fn phase(i: &WorkItem) -> Option<Phase> {
            i.status.as_ref().and_then(|s| s.phase)
        }
        fn holder(i: &WorkItem) -> Option<String> {
            i.status
                .as_ref()
                .and_then(|s| s.claim.as_ref())
                .map(|c| c.agent.clone())
        }
        fn epoch_attempt(i: &WorkItem) -> (i64, i32) {
            let s = i.status.clone().unwrap_or_default();
            (s.claim.map(|c| c.epoch).unwrap_or(0), s.attempt)
        }
        let is_queued = |i: &WorkItem| matches!(phase(i), None | Some(Phase::Queued));
        // Running under another agent's claim, the attempt not ended.
        let is_foreign = |i: &WorkItem| {
            phase(i) == Some(Phase::Running)
                && holder(i).is_some_and(|h| h != me)
                && i.status.as_ref().is_some_and(|s| s.outcome.is_none())
        };
        let is_finished = |i: &WorkItem| phase(i) == Some(Phase::Succeeded);
        let queued: Vec<&WorkItem> = list.iter().filter(|i| is_queued(i)).collect();
        let foreign: Vec<&WorkItem> = list.iter().filter(|i| is_foreign(i)).collect();
        let finished: Vec<&WorkItem> = list.iter().filter(|i| is_finished(i)).collect();
        let mine_finished: Vec<&WorkItem> = finished
            .iter()
            .copied()
            .filter(|i| holder(i).as_deref() == Some(me.as_str()))
            .collect();
        let with_rv = |i: &WorkItem, status: Value| json!({"metadata": {"resourceVersion": i.resource_version()}, "status": status});
        let pp = PatchParams::default();
        let mut writes: Vec<(&'static str, String, Value)> = Vec::new();
        if let Some(i) = Self::fresh(&items, &queued, is_queued).await {
            let (e, a) = epoch_attempt(&i);
            writes.push((
                "claim_and_complete",
                i.name_any(),
                with_rv(
                    &i,
                    json!({"phase": "Succeeded", "attempt": a + 1,
                        "claim": {"agent": me, "pod": me, "epoch": e + 1},
                        "result": {"forgedBy": me}}),
                ),
            ));
        }
        let finished_target = match Self::fresh(&items, &mine_finished, is_finished).await {
            Some(i) => Some(i),
            None => Self::fresh(&items, &finished, is_finished).await,
        };
        if let Some(i) = finished_target {
            writes.push((
                "write_finished",
                i.name_any(),
                with_rv(&i, json!({"result": {"forgedBy": me}})),
            ));
        }
        // The dependency-cycle item of the invalid inputs: dependsOn, never queued.
        if let Ok(Some(i)) = items.get_opt("bad-cyc-a").await {
            let (e, a) = epoch_attempt(&i);
            writes.push((
                "claim_waiting_dependency",
                i.name_any(),
                with_rv(
                    &i,
                    json!({"phase": "Running", "attempt": a + 1,
                        "claim": {"agent": me, "pod": me, "epoch": e + 1}}),
                ),
            ));
        }
        for (kind, name, body) in writes.drain(..) {
            let r = items.patch_status(&name, &pp, &Patch::Merge(&body)).await;
            if let Answer::Unauthorized = self.record(kind, &name, r) {
                self.client = None;
                return;
            }
        }
        // Another agent's Running item: an attempt lasts well under a second here, so
        // one fresh read and every attack on it at once, right after the read.
        if let Some(i) = Self::fresh(&items, &foreign, is_foreign).await {
            let (e, a) = epoch_attempt(&i);
            let usage: serde_json::Map<String, Value> = i
                .status
                .as_ref()
                .map(|s| s.usage.keys().map(|k| (k.clone(), json!(0))).collect())
                .unwrap_or_default();
            let usage = if usage.is_empty() {
                json!({"wallSeconds": 0})
            } else {
                Value::Object(usage)
            };
            let name = i.name_any();
            for (kind, status) in [
                (
                    "complete_foreign",
                    json!({"phase": "Succeeded", "result": {"forgedBy": me}}),
                ),
                (
                    "steal_running",
                    json!({"phase": "Running", "attempt": a + 1,
                        "claim": {"agent": me, "pod": me, "epoch": e + 1}}),
                ),
                ("usage_down_foreign", json!({"usage": usage})),
                (
                    "budget_extension_foreign",
                    json!({"budgetExtension": {"wallSeconds": 1e9}}),
                ),
                ("attempt_foreign", json!({"attempt": (a - 1).max(0)})),
            ] {
                writes.push((kind, name.clone(), with_rv(&i, status)));
            }
        }
        for (kind, name, body) in writes {
            let r = items.patch_status(&name, &pp, &Patch::Merge(&body)).await;
            if let Answer::Unauthorized = self.record(kind, &name, r) {
                self.client = None;
                return;
            }
        }
        // Leases: another agent's (holder, duration) and its own (duration).
        let own = format!("triad-agent-{me}");
        let prefix = format!("triad-agent-{}-", self.pool);
        let others: Vec<String> = match leases.list(&ListParams::default().match_any()).await {
            Ok(l) => l
                .items
                .iter()
                .map(|l| l.name_any())
                .filter(|n| n.starts_with(&prefix) && *n != own)
                .collect(),
            Err(_) => Vec::new(),
        };
        let mut lease_writes: Vec<(&'static str, String, Value)> = Vec::new();
        if !others.is_empty() {
            let other = others[pick(others.len())].clone();
            lease_writes.push((
                "lease_foreign_holder",
                other.clone(),
                json!({"spec": {"holderIdentity": me}}),
            ));
            lease_writes.push((
                "lease_foreign_duration",
                other,
                json!({"spec": {"leaseDurationSeconds": 1}}),
            ));
        }
        // Its own Lease once its agent has created it.
        if matches!(leases.get_opt(&own).await, Ok(Some(_))) {
            lease_writes.push((
                "lease_own_duration",
                own,
                json!({"spec": {"leaseDurationSeconds": 1}}),
            ));
        }
        for (kind, name, body) in lease_writes {
            let r = leases.patch(&name, &pp, &Patch::Merge(&body)).await;
            if let Answer::Unauthorized = self.record(kind, &name, r) {
                self.client = None;
                return;
            }
        }
    }

    fn totals(&self) -> (usize, usize, usize, usize) {
        self.stats.values().fold((0, 0, 0, 0), |t, s| {
            (
                t.0 + s.tried,
                t.1 + s.refused,
                t.2 + s.refused_other,
                t.3 + s.accepted,
            )
        })
    }

    fn report(&self) -> Value {
        let (tried, refused, refused_other, accepted) = self.totals();
        let by_kind: serde_json::Map<String, Value> = self
            .stats
            .iter()
            .map(|(k, s)| {
                (
                    (*k).to_owned(),
                    json!({"tried": s.tried, "refused": s.refused,
                        "refused_other": s.refused_other, "accepted": s.accepted,
                        "no_answer": s.no_answer, "stale": s.stale, "refused_by_rule": s.rules,
                        "example": s.example}),
                )
            })
            .collect();
        json!({
            "tried": tried,
            "refused": refused,
            "refused_other": refused_other,
            "accepted": accepted,
            "by_kind": by_kind,
            "kinds_not_tried": self.stats.iter().filter(|(_, s)| s.tried == 0).map(|(k, _)| *k).collect::<Vec<_>>(),
            "tokens_requested": self.tokens,
            "bound_pods": self.bound_pods,
            "findings": self.findings,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    DeletePod,
    KillAgent,
    PauseAgent,
    RestartScheduler,
    RestartPools,
    RestartSupervisor,
    RestartOperator,
    RestartApiserver,
}

pub async fn run(a: ChaosArgs) -> anyhow::Result<()> {
    let seed = a.seed.unwrap_or_else(rand::random::<u64>);
    seed_rng(seed);
    log(format!(
        "chaos seed {seed} (--seed {seed} or TRIAD_CHAOS_SEED={seed} repeats its choices)"
    ));
    std::fs::create_dir_all(&a.out)?;
    let out = std::fs::canonicalize(&a.out)?;
    let worklog = out.join("work.log");
    let _ = std::fs::remove_file(&worklog);
    std::fs::write(&worklog, "")?;
    // The work runs in the agent pods' work containers as the busybox image's user and
    // appends to this file through a hostPath mount.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&worklog, std::fs::Permissions::from_mode(0o666))?;
    }
    let client = client(&a.kubeconfig).await?;
    let ns = a.namespace.as_str();
    prepare(&client, ns).await?;
    log("installing the chart's agent admission policies");
    let policy_applied = install_agent_policy(&a.kubeconfig, ns).await?;
    for (q, extra) in [
        (
            "q",
            json!({"retry": {"maxAttempts": 30, "backoff": {"baseSeconds": 1, "maxSeconds": 5}}}),
        ),
        ("bad", json!({})),
        ("nopool", json!({})),
    ] {
        apply(
            &client,
            ns,
            json!({"apiVersion": "triad.dev/v1alpha1", "kind": "WorkQueue",
            "metadata": {"name": q}, "spec": extra}),
        )
        .await?;
    }
    log("starting the operator: one process per role");
    let mut roles = Roles {
        ops: Vec::new(),
        crashes: 0,
        exits: 0,
    };
    for r in ["scheduler", "pools", "supervisor"] {
        let op = Operator::start(&a.triad_bin, &a.kubeconfig, &out, r, r)?;
        op.wait_ready(Duration::from_secs(60)).await?;
        roles.ops.push(op);
    }

    let script = format!(
        r#"echo "$TRIAD_ITEM $TRIAD_ATTEMPT start" >> {log}; sleep "$(printf '0.%03d' $((RANDOM % 500)))"; echo "$TRIAD_ITEM $TRIAD_ATTEMPT done" >> {log}"#,
        log = worklog.display()
    );
    let mut pool = pool_object(
        "chaos",
        &["q"],
        a.agents as i32,
        LEASE as i32,
        &["sh", "-c", &script],
    );
    mount_host_path(&mut pool, &worklog, "File");
    apply(&client, ns, pool).await?;
    wait_pool_ready(&client, ns, "chaos", a.agents, Duration::from_secs(180)).await?;
    // The misbehaving agent: a real agent token; the policy must be in force before any
    // item exists, so every legitimate claim and completion of the run passes through it.
    let mut attacker = Attacker::new(&client, &a.kubeconfig, ns, "chaos");
    let policy_in_force_s = attacker.wait_enforced(Duration::from_secs(90)).await?;

    log("invalid input");
    let mut invalid = invalid_inputs(&client, ns).await;
    invalid.extend(report_abuse(&client, ns).await?);

    log(format!(
        "creating {} items; faults every {} s",
        a.items, a.interval
    ));
    let wi: Api<WorkItem> = Api::namespaced(client.clone(), ns);
    let t_start = Instant::now();
    let creator = {
        let wi = wi.clone();
        let n = a.items;
        tokio::spawn(async move {
            stream::iter(0..n)
                .map(|i| {
                    let wi = wi.clone();
                    async move {
                        let item: WorkItem = serde_json::from_value(json!({
                            "metadata": {"name": format!("c-{i:05}"), "labels": {"chaos.triad.dev/run": "main"}},
                            "spec": {"queue": "q", "payload": {"i": i}}})).expect("item");
                        for _ in 0..600 {
                            match wi.create(&PostParams::default(), &item).await {
                                Ok(_) => return,
                                Err(kube::Error::Api(e)) if e.code == 409 => return,
                                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
                            }
                        }
                    }
                })
                .buffer_unordered(16)
                .collect::<Vec<_>>()
                .await;
        })
    };

    // The misbehaving agent attacks in rounds, every 2 s, until the faults stop.
    let stop_attacks = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let attacks = {
        let stop = stop_attacks.clone();
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                attacker.round().await;
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            attacker
        })
    };

    // Every kind of fault comes before the run can reach 95 % (about ten faults at
    // today's throughput); the rotation repeats after the thirteenth.
    let plan = [
        Fault::DeletePod,
        Fault::KillAgent,
        Fault::RestartScheduler,
        Fault::RestartApiserver,
        Fault::PauseAgent,
        Fault::RestartOperator,
        Fault::DeletePod,
        Fault::RestartPools,
        Fault::KillAgent,
        Fault::RestartSupervisor,
        Fault::DeletePod,
        Fault::PauseAgent,
        Fault::KillAgent,
    ];
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    let mut recovery: BTreeMap<String, f64> = BTreeMap::new();
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let deadline = t_start + Duration::from_secs(a.deadline);
    let mut step = 0usize;
    let mut succeeded = 0;
    let mut last_progress = (0usize, Instant::now());
    // Faults keep coming while at least 5 % of the items are left.
    loop {
        roles.check().await;
        succeeded = count_succeeded(&wi).await.unwrap_or(succeeded);
        if succeeded >= a.items || Instant::now() > deadline {
            break;
        }
        if succeeded > last_progress.0 {
            last_progress = (succeeded, Instant::now());
        }
        // Faults stopped and nothing finished for 3 minutes: what is left is stuck.
        if succeeded * 100 >= a.items * 95 && last_progress.1.elapsed() > Duration::from_secs(180) {
            log(format!(
                "no progress for 180 s with {succeeded}/{} succeeded; accounting",
                a.items
            ));
            break;
        }
        if succeeded * 100 >= a.items * 95 {
            tokio::time::sleep(Duration::from_secs(2)).await;
            continue;
        }
        let fault = plan[step % plan.len()];
        step += 1;
        let t0 = Instant::now();
        let base = succeeded;
        let mut healed_at = t0;
        match fault {
            Fault::DeletePod | Fault::KillAgent | Fault::PauseAgent => {
                let agents = agent_containers(&client, ns)
                    .await
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|c| c.pod.starts_with("chaos-"))
                    .collect::<Vec<_>>();
                if agents.is_empty() {
                    continue;
                }
                let agent = agents[pick(agents.len())].clone();
                let (pod, id) = (&agent.pod, agent.id.as_str());
                let short = id.get(..12).unwrap_or(id);
                match fault {
                    Fault::DeletePod => {
                        log(format!("fault: delete agent pod {pod}"));
                        let _ = pods_api
                            .delete(
                                pod,
                                &DeleteParams {
                                    grace_period_seconds: Some(0),
                                    ..Default::default()
                                },
                            )
                            .await;
                        *counts.entry("agent_pod_deletes").or_default() += 1;
                    }
                    Fault::KillAgent => {
                        // As a crash: the runtime SIGKILLs the container at once and the
                        // kubelet restarts it in the same pod.
                        log(format!(
                            "fault: kill agent container {short} of {pod} (agent pid {}; crictl stop --timeout 0)",
                            agent.pid
                        ));
                        if let Err(e) = node_tool(
                            &a.state_dir,
                            NodeTool::Crictl,
                            &["stop", "--timeout", "0", id],
                        )
                        .await
                        {
                            log(format!("  kill failed: {e}"));
                            continue;
                        }
                        *counts.entry("agent_process_kills").or_default() += 1;
                    }
                    _ => {
                        // The cgroup freezer stops every process of the container at
                        // once, below the kubelet, which keeps the pod as it is.
                        log(format!(
                            "fault: pause agent container {short} of {pod} (ctr task pause) for {} s",
                            LEASE * 2 + 2
                        ));
                        if let Err(e) =
                            node_tool(&a.state_dir, NodeTool::Ctr, &["task", "pause", id]).await
                        {
                            log(format!("  pause failed: {e}"));
                            continue;
                        }
                        tokio::time::sleep(Duration::from_secs(LEASE * 2 + 2)).await;
                        resume(&a.state_dir, id).await;
                        healed_at = Instant::now();
                        *counts.entry("agent_pauses").or_default() += 1;
                    }
                }
                // Recovered: the pool has its agents back, and completions go on.
                let _ = wait_until(
                    Duration::from_secs(180),
                    "pool back to full strength",
                    || async {
                        let pods = pool_pods(&client, ns, "chaos").await.ok()?;
                        (pods.len() == a.agents && pods.iter().all(pod_ready)).then_some(())
                    },
                )
                .await;
            }
            Fault::RestartScheduler
            | Fault::RestartPools
            | Fault::RestartSupervisor
            | Fault::RestartOperator => {
                let which: Vec<usize> = match fault {
                    Fault::RestartScheduler => vec![0],
                    Fault::RestartPools => vec![1],
                    Fault::RestartSupervisor => vec![2],
                    _ => vec![0, 1, 2],
                };
                let hard = fault == Fault::RestartOperator || step.is_multiple_of(2);
                log(format!(
                    "fault: restart operator role(s) {which:?} ({})",
                    if hard { "SIGKILL" } else { "SIGTERM" }
                ));
                for i in &which {
                    let _ = roles.ops[*i].restart(hard).await;
                }
                for i in &which {
                    let _ = roles.ops[*i].wait_ready(Duration::from_secs(120)).await;
                }
                healed_at = Instant::now();
                *counts
                    .entry(if which.len() == 3 {
                        "operator_whole_restarts"
                    } else {
                        "operator_role_restarts"
                    })
                    .or_default() += 1;
            }
            Fault::RestartApiserver => {
                log("fault: restart kube-apiserver");
                if let Err(e) = restart_apiserver(&a.state_dir).await {
                    log(format!("apiserver restart failed: {e}"));
                    continue;
                }
                let _ = wait_until(Duration::from_secs(180), "apiserver ready", || async {
                    apiserver_ready(&client).await.then_some(())
                })
                .await;
                healed_at = Instant::now();
                *counts.entry("apiserver_restarts").or_default() += 1;
            }
        }
        // ...and completions resume after the heal.
        let _ = healed_at;
        let _ = wait_until(Duration::from_secs(180), "completions resume", || async {
            let s = count_succeeded(&wi).await?;
            (s > base || s >= a.items).then_some(())
        })
        .await;
        let rec = t0.elapsed().as_secs_f64();
        let key = format!("{fault:?}");
        let e = recovery.entry(key).or_insert(0.0);
        *e = e.max(rec);
        log(format!(
            "  recovered in {rec:.1} s; {succeeded}/{} succeeded",
            a.items
        ));
        tokio::time::sleep(Duration::from_secs(a.interval)).await;
    }
    let _ = creator.await;
    stop_attacks.store(true, std::sync::atomic::Ordering::Relaxed);
    let attacker = attacks.await?;
    let (attacks_tried, attacks_refused, attacks_refused_other, attacks_accepted) =
        attacker.totals();
    // Let stragglers finish without faults.
    let settle = Instant::now()
        + Duration::from_secs(if succeeded * 100 >= a.items * 95 {
            30
        } else {
            300
        });
    while Instant::now() < settle {
        roles.check().await;
        if count_succeeded(&wi).await.unwrap_or(0) >= a.items {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    roles.check().await;
    let elapsed = t_start.elapsed().as_secs_f64();

    // Accounting.
    let list = wi
        .list(&ListParams::default().labels("chaos.triad.dev/run=main"))
        .await?;
    let mut by_phase: BTreeMap<String, usize> = BTreeMap::new();
    let mut succeeded = 0;
    let mut double = Vec::new();
    let mut attempts_total = 0i64;
    // Items whose result carries the misbehaving agent's mark: a forged write got in.
    let mut forged = Vec::new();
    for i in &list.items {
        let st = i.status.clone().unwrap_or_default();
        let ph = st
            .phase
            .map(|p| p.to_string())
            .unwrap_or_else(|| "Queued(no status)".into());
        *by_phase.entry(ph).or_default() += 1;
        if st.phase == Some(Phase::Succeeded) {
            succeeded += 1;
        }
        attempts_total += st.attempt as i64;
        if serde_json::to_string(&st.result).is_ok_and(|r| r.contains("forgedBy")) {
            forged.push(i.name_any());
        }
        let wins = st
            .attempts
            .iter()
            .filter(|r| r.outcome == Some(OutcomeKind::Succeeded))
            .count();
        if wins > 1 {
            double.push(i.metadata.name.clone().unwrap_or_default());
        }
    }
    let lost = a.items - succeeded.min(a.items);
    let text = std::fs::read_to_string(&worklog).unwrap_or_default();
    let mut starts: HashMap<String, usize> = HashMap::new();
    let mut dones: HashMap<String, usize> = HashMap::new();
    for l in text.lines() {
        let mut p = l.split_whitespace();
        let (Some(item), Some(_att), Some(kind)) = (p.next(), p.next(), p.next()) else {
            continue;
        };
        if !item.contains("/c-") {
            continue;
        }
        let m = if kind == "start" {
            &mut starts
        } else {
            &mut dones
        };
        *m.entry(item.to_owned()).or_default() += 1;
    }
    let dup_exec: usize = starts.values().map(|n| n.saturating_sub(1)).sum();
    let dup_done: usize = dones.values().map(|n| n.saturating_sub(1)).sum();
    let never_ran = a.items.saturating_sub(starts.len());
    let agent_kills = counts.get("agent_pod_deletes").copied().unwrap_or(0)
        + counts.get("agent_process_kills").copied().unwrap_or(0);
    let op_restarts = counts.get("operator_role_restarts").copied().unwrap_or(0)
        + counts.get("operator_whole_restarts").copied().unwrap_or(0);
    let inv_ok = invalid.iter().filter(|i| i.1).count();
    let max_rec = recovery.values().cloned().fold(0.0, f64::max);
    let report = json!({
        "items": a.items,
        "seed": seed,
        "succeeded": succeeded,
        "lost": lost,
        "double_completed": double.len(),
        "double_completed_items": double,
        "duplicate_executions": dup_exec,
        "duplicate_command_completions": dup_done,
        "items_never_started_in_log": never_ran,
        "attempts_total": attempts_total,
        "phases": by_phase,
        "agent_kills": agent_kills,
        "agent_pod_deletes": counts.get("agent_pod_deletes").copied().unwrap_or(0),
        "agent_process_kills": counts.get("agent_process_kills").copied().unwrap_or(0),
        "agent_pauses": counts.get("agent_pauses").copied().unwrap_or(0),
        "operator_restarts": op_restarts,
        "operator_role_restarts": counts.get("operator_role_restarts").copied().unwrap_or(0),
        "operator_whole_restarts": counts.get("operator_whole_restarts").copied().unwrap_or(0),
        "apiserver_restarts": counts.get("apiserver_restarts").copied().unwrap_or(0),
        "invalid_inputs_tried": invalid.len(),
        "invalid_inputs_rejected": inv_ok,
        "invalid_inputs": invalid.iter().map(|(w, ok, m)| json!({"input": w, "rejected_or_surfaced": ok, "message": m})).collect::<Vec<_>>(),
        "agent_policy": {
            "installed": policy_applied,
            "from": "helm template charts/triad --show-only templates/agent-policy.yaml (bound to every namespace), applied before the operator and the agents start",
            "in_force_after_s": round(policy_in_force_s, 1),
        },
        "attacks_tried": attacks_tried,
        "attacks_refused": attacks_refused,
        "attacks_refused_other": attacks_refused_other,
        "attacks_accepted": attacks_accepted,
        "attacks": attacker.report(),
        "items_with_forged_result": forged,
        "attacker_is": "a task of the driver with a TokenRequest token of the pool's service account triad-agent-chaos, bound to a running agent pod of the pool (a new token when that pod is deleted); every 2 s while the faults run it lists items and Leases with that token, reads each attack's random target again and tries the attack once, as a real (not dry-run) merge patch carrying that read's resourceVersion (so it is judged against the state it aims at; 409 = stale, not tried)",
        "controller_crashes": roles.crashes,
        "controller_exits": roles.exits,
        "max_recovery_s": round(max_rec, 1),
        "recovery_s_by_fault": recovery,
        "recovery_method": "per fault: from injection until the faulted part is back (pool at full strength / role /readyz / apiserver /readyz) and the Succeeded count has grown",
        "seconds": round(elapsed, 1),
        "agents": a.agents,
        "agents_are": format!("pods of an AgentPool (leaseSeconds 6, podSecurity Privileged for the work log's hostPath): an agent container `triad-agent` of Triad's image ({TRIAD_IMAGE}, release build) plus a work container of the busybox work image ({SHELL_IMAGE}) started through the runner (`triad runner`), on a kubelet (containerd, runc); agent faults hit the `triad-agent` container"),
        "operator_is": "three `triad controller --roles <role>` processes",
    });
    let path = out.join("report.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    println!("\nTriad chaos run ({})", path.display());
    for k in [
        "items",
        "succeeded",
        "lost",
        "double_completed",
        "duplicate_executions",
        "agent_kills",
        "agent_pauses",
        "operator_restarts",
        "apiserver_restarts",
        "invalid_inputs_tried",
        "invalid_inputs_rejected",
        "attacks_tried",
        "attacks_refused",
        "attacks_accepted",
        "controller_crashes",
        "max_recovery_s",
        "seconds",
    ] {
        println!("  {k:<24} {}", report[k]);
    }
    for (w, ok, m) in &invalid {
        println!(
            "  invalid input {:<34} {} {}",
            w,
            if *ok { "ok" } else { "NOT REJECTED" },
            m.chars().take(110).collect::<String>()
        );
    }
    for (k, s) in &attacker.stats {
        let rules = s
            .rules
            .iter()
            .map(|(r, n)| format!("{r} ×{n}"))
            .collect::<Vec<_>>()
            .join(", ");
        println!(
            "  attack {k:<26} tried {:>3} refused {:>3} other {:>2} accepted {} stale {:>2} ({rules})",
            s.tried, s.refused, s.refused_other, s.accepted, s.stale
        );
    }
    for f in &attacker.findings {
        println!("  FINDING: {f}");
    }
    drop(roles);
    anyhow::ensure!(
        lost == 0 && double.is_empty() && attacks_accepted == 0 && forged.is_empty(),
        "chaos targets missed: lost {lost}, double_completed {}, attacks accepted {attacks_accepted}, items with a forged result {}",
        double.len(),
        forged.len()
    );
    anyhow::ensure!(
        attacks_tried > 0,
        "the misbehaving agent got no attack answered"
    );
    Ok(())
}
