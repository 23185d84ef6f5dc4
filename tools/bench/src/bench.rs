//! `triad-bench bench`: throughput, write cost, Job comparison, claim latency, conflicts,
//! memory with 50 000 items, scheduler reconcile time. Writes target/bench/report.json.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::batch::v1::Job;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Api, Client};
use serde_json::{Value, json};
use triad::api::{Phase, WorkItem, WorkMode};
use triad::pool::template::AGENT_CONTAINER;

use crate::common::*;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: PathBuf,
    /// The cluster's state directory (hack/cluster.sh): the kubeconfig, *.pid, and the
    /// node's containerd socket (containerd/containerd.sock).
    #[arg(long)]
    pub state_dir: PathBuf,
    #[arg(long)]
    pub triad_bin: PathBuf,
    #[arg(long, default_value = "target/bench")]
    pub out: PathBuf,
    #[arg(long, default_value = "bench")]
    pub namespace: String,
    /// Items per throughput run for 1, 10 and 50 agents.
    #[arg(long, value_delimiter = ',', default_value = "200,1000,1000")]
    pub items: Vec<usize>,
    #[arg(long, value_delimiter = ',', default_value = "1,10,50")]
    pub agents: Vec<usize>,
    /// Jobs in the Job-per-item comparison (default: the last throughput run's items).
    #[arg(long)]
    pub jobs: Option<usize>,
    #[arg(long, default_value_t = 50_000)]
    pub big: usize,
    #[arg(long, default_value_t = 200)]
    pub latency_items: usize,
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    #[arg(long, default_value = "")]
    pub versions: String,
}

/// `triad-bench memory`: only the operator-memory part of `bench` (idle RSS, then RSS
/// after `big` items are created in a queue no agent serves and the operator has settled),
/// measured the same way. Writes `<out>/memory.json`.
#[derive(clap::Args, Debug)]
pub struct MemoryArgs {
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: PathBuf,
    #[arg(long)]
    pub triad_bin: PathBuf,
    #[arg(long, default_value = "target/bench")]
    pub out: PathBuf,
    #[arg(long, default_value = "mem")]
    pub namespace: String,
    #[arg(long, default_value_t = 50_000)]
    pub big: usize,
    #[arg(long, default_value_t = 96)]
    pub concurrency: usize,
    /// Seconds to let the operator settle after the last create.
    #[arg(long, default_value_t = 20)]
    pub settle: u64,
    #[arg(long, default_value = "scheduler,pools,supervisor")]
    pub roles: String,
}

/// A WorkQueue with the defaults.
async fn apply_queue(client: &Client, ns: &str, name: &str) -> anyhow::Result<()> {
    apply(
        client,
        ns,
        json!({"apiVersion": "triad.dev/v1alpha1", "kind": "WorkQueue",
        "metadata": {"name": name}, "spec": {}}),
    )
    .await
}

pub async fn memory(a: MemoryArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&a.out)?;
    let client = client(&a.kubeconfig).await?;
    let ns = a.namespace.as_str();
    prepare(&client, ns).await?;
    apply_queue(&client, ns, "big").await?;
    let op = Operator::start(&a.triad_bin, &a.kubeconfig, &a.out, "operator", &a.roles)?;
    op.wait_ready(Duration::from_secs(60)).await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle = rss_mb(op.pid()).unwrap_or(0.0);
    log(format!("operator idle RSS {idle:.1} MB"));
    let t0 = Instant::now();
    create_items(&client, ns, "big", "big", a.big, a.concurrency).await?;
    let create_rate = a.big as f64 / t0.elapsed().as_secs_f64();
    log(format!(
        "created {} items at {create_rate:.0}/s; letting the operator settle {} s",
        a.big, a.settle
    ));
    tokio::time::sleep(Duration::from_secs(a.settle)).await;
    let big = rss_mb(op.pid()).unwrap_or(0.0);
    log(format!("operator RSS with {} items {big:.1} MB", a.big));
    drop(op);
    // A restart lists all items at once (the initial list) instead of hearing them
    // one by one.
    let op = Operator::start(&a.triad_bin, &a.kubeconfig, &a.out, "operator", &a.roles)?;
    op.wait_ready(Duration::from_secs(120)).await?;
    tokio::time::sleep(Duration::from_secs(a.settle)).await;
    let restarted = rss_mb(op.pid()).unwrap_or(0.0);
    log(format!(
        "operator RSS after a restart with {} items {restarted:.1} MB",
        a.big
    ));
    let report = json!({
        "roles": a.roles,
        "items": a.big,
        "create_rate": round(create_rate, 0),
        "operator_rss_mb": {"idle": round(idle, 1), "with_items": round(big, 1),
            "after_restart": round(restarted, 1)},
    });
    std::fs::write(
        a.out.join("memory.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    println!("{report}");
    Ok(())
}

const MUTATING: [&str; 4] = ["POST", "PUT", "PATCH", "APPLY"];

fn item(name: &str, queue: &str, run: &str) -> WorkItem {
    serde_json::from_value(json!({
        "apiVersion": "triad.dev/v1alpha1", "kind": "WorkItem",
        "metadata": {"name": name, "labels": {"bench.triad.dev/run": run}},
        "spec": {"queue": queue}
    }))
    .expect("item")
}

/// Watches a run's items; remembers when each was first seen claimed, Running and
/// Succeeded.
#[derive(Default)]
struct Tracker {
    succeeded: HashMap<String, Instant>,
    claimed_at: HashMap<String, Instant>,
    running_at: HashMap<String, Instant>,
    last_success: Option<Instant>,
}

fn track(
    client: &Client,
    ns: &str,
    run: &str,
) -> (Arc<Mutex<Tracker>>, tokio::task::JoinHandle<()>) {
    let api: Api<WorkItem> = Api::namespaced(client.clone(), ns);
    let t = Arc::new(Mutex::new(Tracker::default()));
    let t2 = t.clone();
    let cfg = watcher::Config::default().labels(&format!("bench.triad.dev/run={run}"));
    let h = tokio::spawn(async move {
        let mut s = watcher(api, cfg).boxed();
        loop {
            let ev = match s.try_next().await {
                Ok(Some(ev)) => ev,
                Ok(None) => return,
                Err(_) => continue,
            };
            let now = Instant::now();
            let objs = match ev {
                watcher::Event::Apply(o) | watcher::Event::InitApply(o) => vec![o],
                _ => vec![],
            };
            let mut t = t2.lock().unwrap();
            for o in objs {
                let name = o.metadata.name.clone().unwrap_or_default();
                let st = o.status.as_ref();
                if st.and_then(|s| s.claim.as_ref()).is_some() {
                    t.claimed_at.entry(name.clone()).or_insert(now);
                }
                let phase = st.and_then(|s| s.phase);
                if phase == Some(Phase::Running) {
                    t.running_at.entry(name.clone()).or_insert(now);
                }
                if phase == Some(Phase::Succeeded) && !t.succeeded.contains_key(&name) {
                    t.succeeded.insert(name, now);
                    t.last_success = Some(now);
                }
            }
        }
    });
    (t, h)
}

async fn create_items(
    client: &Client,
    ns: &str,
    queue: &str,
    run: &str,
    n: usize,
    conc: usize,
) -> anyhow::Result<HashMap<String, Instant>> {
    let api: Api<WorkItem> = Api::namespaced(client.clone(), ns);
    let created: Vec<(String, Instant)> = stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            let name = format!("{run}-{i:06}");
            let obj = item(&name, queue, run);
            async move {
                for attempt in 0..20 {
                    match api.create(&PostParams::default(), &obj).await {
                        Ok(_) => return Ok((name, Instant::now())),
                        Err(kube::Error::Api(e)) if e.code == 409 => {
                            return Ok((name, Instant::now()));
                        }
                        Err(e) if attempt < 19 => {
                            let _ = e;
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        Err(e) => return Err(anyhow::anyhow!("create {name}: {e}")),
                    }
                }
                unreachable!()
            }
        })
        .buffer_unordered(conc)
        .try_collect()
        .await?;
    Ok(created.into_iter().collect())
}

async fn delete_run(client: &Client, ns: &str, run: &str) {
    let api: Api<WorkItem> = Api::namespaced(client.clone(), ns);
    let _ = api
        .delete_collection(
            &DeleteParams::default(),
            &ListParams::default().labels(&format!("bench.triad.dev/run={run}")),
        )
        .await;
}

/// Successful (2xx) mutating requests on `resource`: the writes that reached etcd.
/// The labels of one `apiserver_request_total` series.
struct Request<'a> {
    resource: &'a str,
    verb: &'a str,
    code: &'a str,
}

impl Request<'_> {
    /// An accepted write. DELETEs are left out: only the harness's cleanup sends them.
    fn is_write(&self) -> bool {
        self.code.starts_with('2') && MUTATING.contains(&self.verb)
    }
}

/// Requests the API server counted whose labels pass `filter`.
fn requests(samples: &[Sample], filter: impl Fn(&Request) -> bool) -> f64 {
    sum(samples, "apiserver_request_total", |l| {
        let label = |k: &str| l.get(k).map(String::as_str).unwrap_or("");
        filter(&Request {
            resource: label("resource"),
            verb: label("verb"),
            code: label("code"),
        })
    })
}

/// Watch events the API server sent for WorkItems, to all watchers together: the
/// fan-out that the agents' watch selectors decide.
fn workitem_watch_events(samples: &[Sample]) -> f64 {
    sum(samples, "apiserver_watch_events_total", |l| {
        // The label is `resource` in current API servers, `kind` in older ones.
        l.get("resource").map(String::as_str) == Some("workitems")
            || l.get("kind").map(String::as_str) == Some("WorkItem")
    })
}

async fn agent_metrics(client: &Client, ns: &str, pool: &str) -> Vec<Sample> {
    let pods = pool_pods(client, ns, pool).await.unwrap_or_default();
    let mut all = Vec::new();
    for p in pods {
        if let Some(ip) = pod_ip(&p)
            && let Ok(text) = http_get(&format!("{ip}:9090"), "/metrics").await
        {
            all.extend(parse_prom(&text));
        }
    }
    all
}

async fn raw_writes(client: &Client, ns: &str, clients: usize, secs: u64) -> anyhow::Result<f64> {
    // Trivial objects with a status subresource: WorkQueues in a namespace no operator
    // watches would do, but the operator watches all; so use a tiny CRD of our own.
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "counters.bench.triad.dev"},
        "spec": {"group": "bench.triad.dev", "scope": "Namespaced",
            "names": {"plural": "counters", "singular": "counter", "kind": "Counter"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}
    }))?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        "counters.bench.triad.dev",
        &PatchParams::apply("triad-bench").force(),
        &Patch::Apply(&crd),
    )
    .await?;
    let ar = kube::api::ApiResource {
        group: "bench.triad.dev".into(),
        version: "v1".into(),
        api_version: "bench.triad.dev/v1".into(),
        kind: "Counter".into(),
        plural: "counters".into(),
    };
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    wait_until(Duration::from_secs(30), "counter CRD", || async {
        api.list(&ListParams::default().limit(1))
            .await
            .ok()
            .map(|_| ())
    })
    .await?;
    for i in 0..clients {
        let obj: kube::api::DynamicObject = serde_json::from_value(json!({
            "apiVersion": "bench.triad.dev/v1", "kind": "Counter", "metadata": {"name": format!("c{i}")}}))?;
        let _ = api.create(&PostParams::default(), &obj).await;
    }
    let deadline = Instant::now() + Duration::from_secs(secs);
    let count = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..clients {
        let api = api.clone();
        let count = count.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                n += 1;
                let patch = json!({"status": {"n": n}});
                if api
                    .patch_status(
                        &format!("c{i}"),
                        &PatchParams::default(),
                        &Patch::Merge(&patch),
                    )
                    .await
                    .is_ok()
                {
                    count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }));
    }
    let t0 = Instant::now();
    for t in tasks {
        let _ = t.await;
    }
    Ok(count.load(std::sync::atomic::Ordering::Relaxed) as f64 / t0.elapsed().as_secs_f64())
}

/// Versions of what runs the agent pods: the kubelet (from its Node), containerd (from
/// the CRI, through the cluster's own socket) and runc. What cannot be asked is left out.
async fn node_versions(client: &Client, state_dir: &std::path::Path) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    match nodes.list(&ListParams::default()).await {
        Ok(list) => {
            if let Some(info) = list
                .items
                .first()
                .and_then(|n| n.status.as_ref()?.node_info.as_ref())
            {
                out.push(("kubelet".to_owned(), json!(info.kubelet_version)));
            }
        }
        Err(e) => log(format!("node version: {e}")),
    }
    match node_tool(state_dir, NodeTool::Crictl, &["version"]).await {
        Ok(text) => {
            if let Some(v) = text.lines().find_map(|l| l.strip_prefix("RuntimeVersion:")) {
                out.push(("containerd".to_owned(), json!(v.trim())));
            }
        }
        Err(e) => log(format!("containerd version: {e}")),
    }
    match tokio::process::Command::new("runc")
        .arg("--version")
        .output()
        .await
    {
        Ok(o) if o.status.success() => {
            let text = String::from_utf8_lossy(&o.stdout);
            if let Some(v) = text
                .lines()
                .next()
                .and_then(|l| l.strip_prefix("runc version"))
            {
                out.push(("runc".to_owned(), json!(v.trim())));
            }
        }
        Ok(o) => log(format!(
            "runc version: {}: {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => log(format!("runc version: {e}")),
    }
    out
}

/// A stream-mode worker in busybox sh: ends every item it reads at once, successfully.
/// (No `$` in it: the kubelet would expand `$$` in a container's command.)
const STREAM_WORKER: [&str; 3] = [
    "sh",
    "-c",
    r#"while read -r line; do echo '{"done": {}}'; done"#,
];

/// p50, p90 and p99 (nearest rank) of `values`, rounded to 0.1.
fn percentiles(mut values: Vec<f64>) -> Value {
    values.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        values
            .get(((values.len() as f64 - 1.0) * p).round() as usize)
            .map(|v| round(*v, 1))
    };
    json!({"p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99)})
}

/// What a latency run saw: items created one every 50 ms on a pool's idle agents.
struct Latency {
    /// The agents' `triad_agent_claim_latency_seconds` over the run: p50/p90/p99 in ms.
    claim_ms: Value,
    /// Per item, ms from its create returning to its claim in the harness's watch.
    claimed_ms: Vec<f64>,
    /// ... to its first Running observation in the harness's watch.
    running_ms: Vec<f64>,
    /// ... to its first Succeeded observation in the harness's watch.
    succeeded_ms: Vec<f64>,
}

async fn latency_run(
    client: &Client,
    ns: &str,
    pool: &str,
    run: &str,
    items: usize,
) -> anyhow::Result<Latency> {
    let before = agent_metrics(client, ns, pool).await;
    let (tr, h) = track(client, ns, run);
    let api: Api<WorkItem> = Api::namespaced(client.clone(), ns);
    let mut created = HashMap::new();
    for i in 0..items {
        let name = format!("{run}-{i:06}");
        api.create(&PostParams::default(), &item(&name, "q", run))
            .await?;
        created.insert(name, Instant::now());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_until(
        Duration::from_secs(120),
        &format!("latency items done ({pool})"),
        || async { (tr.lock().unwrap().succeeded.len() >= items).then_some(()) },
    )
    .await?;
    h.abort();
    let after = agent_metrics(client, ns, pool).await;
    let b = bucket_delta(
        &buckets(&after, "triad_agent_claim_latency_seconds", |_| true),
        &buckets(&before, "triad_agent_claim_latency_seconds", |_| true),
    );
    let q = |p| quantile(&b, p).map(|s| round(s * 1000.0, 2));
    let t = tr.lock().unwrap();
    let since_created = |seen: &HashMap<String, Instant>| -> Vec<f64> {
        created
            .iter()
            .filter_map(|(k, c)| {
                seen.get(k)
                    .map(|x| x.saturating_duration_since(*c).as_secs_f64() * 1000.0)
            })
            .collect()
    };
    Ok(Latency {
        claim_ms: json!({"p50": q(0.5), "p90": q(0.9), "p99": q(0.99)}),
        claimed_ms: since_created(&t.claimed_at),
        running_ms: since_created(&t.running_at),
        succeeded_ms: since_created(&t.succeeded),
    })
}

/// One throughput run: `items` items on queue q, created by `conc` clients at once,
/// timed from the first create to the last Succeeded seen in the harness's watch.
struct Throughput {
    items: usize,
    seconds: f64,
    create_seconds: f64,
    cpu_ms_per_item: Value,
    api_before: Vec<Sample>,
    api_after: Vec<Sample>,
}

impl Throughput {
    fn items_per_s(&self) -> f64 {
        self.items as f64 / self.seconds
    }

    /// API requests per item whose labels pass `filter`, over the run.
    fn per_item(&self, filter: impl Fn(&Request) -> bool) -> f64 {
        (requests(&self.api_after, &filter) - requests(&self.api_before, &filter))
            / self.items as f64
    }
}

async fn throughput(
    client: &Client,
    ns: &str,
    run: &str,
    items: usize,
    conc: usize,
    what: &str,
) -> anyhow::Result<Throughput> {
    let api_before = parse_prom(&apiserver_metrics(client).await?);
    let (tr, h) = track(client, ns, run);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cpu_before = cpu_seconds_by_process();
    let t0 = Instant::now();
    create_items(client, ns, "q", run, items, conc).await?;
    let create_seconds = t0.elapsed().as_secs_f64();
    wait_until(
        Duration::from_secs(900),
        &format!("{items} items Succeeded with {what}"),
        || async { (tr.lock().unwrap().succeeded.len() >= items).then_some(()) },
    )
    .await?;
    let seconds = tr
        .lock()
        .unwrap()
        .last_success
        .unwrap_or_else(Instant::now)
        .duration_since(t0)
        .as_secs_f64();
    let cpu_ms_per_item = cpu_ms_per_item(&cpu_before, &cpu_seconds_by_process(), items, seconds);
    h.abort();
    let api_after = parse_prom(&apiserver_metrics(client).await?);
    Ok(Throughput {
        items,
        seconds,
        create_seconds,
        cpu_ms_per_item,
        api_before,
        api_after,
    })
}

/// The summed RSS of each part of an idle agent pod of `pool`: the agent container
/// (`triad agent`) and the work containers (the runner, waiting for an item).
async fn agent_pod_rss(client: &Client, ns: &str, pool: &str) -> Value {
    let pods = pool_pods(client, ns, pool).await.unwrap_or_default();
    let Some(pod) = pods.first() else {
        log(format!("no pod of pool {pool}; agent pod RSS not measured"));
        return json!(null);
    };
    let by_container = pod_rss_mb_by_container(pod);
    let agent = by_container.get(AGENT_CONTAINER).copied().unwrap_or(0.0);
    let runner: f64 = by_container
        .iter()
        .filter(|(name, _)| name.as_str() != AGENT_CONTAINER)
        .map(|(_, mb)| mb)
        .sum();
    if agent == 0.0 || runner == 0.0 {
        log(format!(
            "agent pod RSS: no processes found for some container of {:?}: {by_container:?}",
            pod.metadata.name
        ));
    }
    log(format!(
        "agent pod RSS (idle): agent container {agent:.1} MB, work container (runner) {runner:.1} MB"
    ));
    json!({"agent": round(agent, 1), "runner": round(runner, 1), "total": round(agent + runner, 1)})
}

fn apiserver_ms(cpu_ms_per_item: &Value) -> f64 {
    cpu_ms_per_item["kube-apiserver"].as_f64().unwrap_or(0.0)
}

/// The agent admission policies' cost at 10 agents: the run just made without them,
/// then the same run with the chart's policies installed, then without them once more
/// (so a drift over the three runs shows as a difference between the two without).
/// items/s and kube-apiserver CPU ms per item for each.
async fn admission_cost_runs(
    client: &Client,
    kubeconfig: &std::path::Path,
    ns: &str,
    items: usize,
    conc: usize,
    without: (f64, f64),
) -> anyhow::Result<Value> {
    log("admission cost: the 10-agent run again with the chart's agent policies");
    install_agent_policy(kubeconfig, ns).await?;
    // A policy binding takes effect within a second or two; this is a benchmark's
    // settle time, not a synchronisation a test relies on.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let with = throughput(
        client,
        ns,
        "n10-policy",
        items,
        conc,
        "10 agents, policies on",
    )
    .await?;
    delete_run(client, ns, "n10-policy").await;
    remove_agent_policy(kubeconfig)?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let again = throughput(
        client,
        ns,
        "n10-again",
        items,
        conc,
        "10 agents, policies off",
    )
    .await?;
    delete_run(client, ns, "n10-again").await;
    let with_rate = with.items_per_s();
    let with_ms = apiserver_ms(&with.cpu_ms_per_item);
    let off = [
        without,
        (again.items_per_s(), apiserver_ms(&again.cpu_ms_per_item)),
    ];
    let mean = |f: fn(&(f64, f64)) -> f64| off.iter().map(f).sum::<f64>() / off.len() as f64;
    let (off_rate, off_ms) = (mean(|x| x.0), mean(|x| x.1));
    log(format!(
        "admission cost: {with_rate:.1} items/s with the policies vs {off_rate:.1} without ({:.1} and {:.1}); kube-apiserver {with_ms:.2} vs {off_ms:.2} CPU ms/item",
        off[0].0, off[1].0
    ));
    Ok(json!({
        "method": "10 agents, the same item count three times in a row: without the chart's agent admission policies, with them (helm template --show-only templates/agent-policy.yaml), without again; 'without' is the mean of the two",
        "items_per_s": {"without": round(off_rate, 1), "with": round(with_rate, 1),
            "without_runs": [round(off[0].0, 1), round(off[1].0, 1)]},
        "apiserver_cpu_ms_per_item": {"without": round(off_ms, 2), "with": round(with_ms, 2),
            "without_runs": [round(off[0].1, 2), round(off[1].1, 2)]},
        "ratio_items_per_s": round(with_rate / off_rate.max(1e-9), 3),
    }))
}

pub async fn run(a: BenchArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&a.out)?;
    let client = client(&a.kubeconfig).await?;
    let ns = a.namespace.as_str();
    prepare(&client, ns).await?;
    apply_queue(&client, ns, "q").await?;
    apply_queue(&client, ns, "big").await?;

    log("starting the operator (release build, all roles, one process)");
    let op = Operator::start(
        &a.triad_bin,
        &a.kubeconfig,
        &a.out,
        "operator",
        "scheduler,pools,supervisor",
    )?;
    op.wait_ready(Duration::from_secs(60)).await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let op_rss_idle = rss_mb(op.pid()).unwrap_or(0.0);
    log(format!("operator idle RSS {op_rss_idle:.1} MB"));

    let max_agents = a.agents.iter().copied().max().unwrap_or(50);
    log(format!(
        "raw write ceiling: {max_agents} clients patching status of trivial objects for 10 s"
    ));
    let raw = raw_writes(&client, ns, max_agents, 10).await?;
    log(format!("raw_writes_per_s {raw:.0}"));

    let mut items_per_s = serde_json::Map::new();
    let mut runs = Vec::new();
    let mut writes_per_item = 0.0;
    let mut all_writes_per_item = 0.0;
    let mut conflict_requests_per_item = 0.0;
    let mut conflicts = json!(null);
    let mut claim_latency = json!(null);
    let mut claim_latency_e2e = json!(null);
    let mut per_item_latency: Option<Latency> = None;
    let mut agent_pod_rss_mb = json!(null);
    let mut admission_cost = json!(null);
    for (idx, &n) in a.agents.iter().enumerate() {
        let m = a.items.get(idx).copied().unwrap_or(1000);
        log(format!("{n} agents: scaling the pool"));
        apply_pool(&client, ns, "bench", &["q"], n as i32, 15, &["true"]).await?;
        wait_pool_ready(&client, ns, "bench", n, Duration::from_secs(300)).await?;
        tokio::time::sleep(Duration::from_secs(3)).await;

        if n == 10 || (a.agents.len() == 1) {
            // Ready and idle: what an agent pod holds before any item.
            agent_pod_rss_mb = agent_pod_rss(&client, ns, "bench").await;
            // Claim latency with idle agents: items one at a time, spaced out.
            let run = "lat";
            let lat = latency_run(&client, ns, "bench", run, a.latency_items).await?;
            claim_latency = lat.claim_ms.clone();
            claim_latency["method"] = json!(
                "agents' triad_agent_claim_latency_seconds (item first seen in the agent's watch cache -> claim write returned), 10 idle agents, items created one every 50 ms"
            );
            claim_latency_e2e = percentiles(lat.claimed_ms.clone());
            claim_latency_e2e["method"] = json!(
                "harness: create returned -> claim visible in the harness's own watch (includes watch delivery)"
            );
            log(format!(
                "claim latency {claim_latency} / end to end {claim_latency_e2e}"
            ));
            per_item_latency = Some(lat);
            delete_run(&client, ns, run).await;
        }

        let run = format!("n{n}");
        let agents_before = agent_metrics(&client, ns, "bench").await;
        let t = throughput(&client, ns, &run, m, a.concurrency, &format!("{n} agents")).await?;
        let agents_after = agent_metrics(&client, ns, "bench").await;
        let (elapsed, created_s, rate) = (t.seconds, t.create_seconds, t.items_per_s());
        let cpu = &t.cpu_ms_per_item;
        let on_items = |r: &Request| r.resource == "workitems";
        let wi = t.per_item(|r| on_items(r) && r.is_write());
        // Writes refused with 409 Conflict: lost claim races.
        let c409 = t.per_item(|r| on_items(r) && r.code == "409");
        let aw = t.per_item(|r| r.is_write());
        let gets = t.per_item(|r| on_items(r) && r.verb == "GET");
        let agent_delta =
            |name: &str| sum(&agents_after, name, |_| true) - sum(&agents_before, name, |_| true);
        let events =
            (workitem_watch_events(&t.api_after) - workitem_watch_events(&t.api_before)) / m as f64;
        let attempts = agent_delta("triad_agent_claim_attempts_total");
        let confl = agent_delta("triad_agent_claim_conflicts_total");
        let prechecks = agent_delta("triad_agent_claim_prechecks_total");
        let prechecks_taken = agent_delta("triad_agent_claim_prechecks_taken_total");
        log(format!(
            "{n} agents: claim prechecks {prechecks} ({prechecks_taken} found the item taken); workitem GETs/item {gets:.2}"
        ));
        let shown = bucket_delta(
            &buckets(&agents_after, "triad_agent_claim_shown_seconds", |_| true),
            &buckets(&agents_before, "triad_agent_claim_shown_seconds", |_| true),
        );
        let shown_ms = |p| quantile(&shown, p).map(|s| round(s * 1000.0, 1));
        let claim_shown =
            json!({"p50": shown_ms(0.5), "p90": shown_ms(0.9), "p99": shown_ms(0.99)});
        log(format!(
            "{n} agents: claim shown in own watch after (ms) {claim_shown}"
        ));
        log(format!(
            "{n} agents: {m} items in {elapsed:.1} s = {rate:.1} items/s (created in {created_s:.1} s); workitem writes/item {wi:.2}, all writes/item {aw:.2}, watch events/item {events:.1}; claim attempts {attempts} conflicts {confl}"
        ));
        log(format!("{n} agents: CPU ms per item {cpu}"));
        items_per_s.insert(n.to_string(), json!(round(rate, 1)));
        runs.push(json!({"agents": n, "items": m, "seconds": round(elapsed, 2), "create_seconds": round(created_s, 2),
            "items_per_s": round(rate, 1), "workitem_writes_per_item": round(wi, 3), "workitem_409_per_item": round(c409, 3), "all_writes_per_item": round(aw, 3),
"cpu_ms_per_item": cpu, "claim_prechecks": prechecks, "claim_prechecks_taken": prechecks_taken, "workitem_gets_per_item": round(gets, 3), "claim_shown_ms": claim_shown,
            "watch_events_per_item": round(events, 1), "claim_attempts": attempts, "claim_conflicts": confl,
            "conflicts_per_claim": if attempts > 0.0 { round(confl / attempts, 3) } else { 0.0 }}));
        if n == max_agents {
            writes_per_item = wi;
            conflict_requests_per_item = c409;
            all_writes_per_item = aw;
            conflicts = json!(if attempts > 0.0 {
                round(confl / attempts, 3)
            } else {
                0.0
            });
        }
        delete_run(&client, ns, &run).await;
        if n == 10 {
            let without = (rate, apiserver_ms(cpu));
            admission_cost =
                admission_cost_runs(&client, &a.kubeconfig, ns, m, a.concurrency, without).await?;
        }
    }
    let headline = items_per_s
        .get(&max_agents.to_string())
        .and_then(Value::as_f64)
        .unwrap_or(0.0);
    let efficiency = headline / (raw / 3.0);

    // Stream mode: 10 agents whose work containers start the work once and hand it each
    // item as a line on stdin; the same queue, item count and method as the 10-agent
    // per-item run, with the per-item pool scaled away.
    let stream_agents = 10;
    let stream_m = a
        .agents
        .iter()
        .position(|&n| n == stream_agents)
        .and_then(|i| a.items.get(i).copied())
        .unwrap_or(1000);
    log(format!(
        "stream mode: {stream_agents} agents, {stream_m} items"
    ));
    apply_pool(&client, ns, "bench", &["q"], 0, 15, &["true"]).await?;
    wait_pool_ready(&client, ns, "bench", 0, Duration::from_secs(120)).await?;
    let stream_pool = |replicas: i32| {
        pool_object_with_mode(
            "stream",
            &["q"],
            replicas,
            15,
            &STREAM_WORKER,
            WorkMode::Stream,
        )
    };
    apply(&client, ns, stream_pool(stream_agents as i32)).await?;
    wait_pool_ready(
        &client,
        ns,
        "stream",
        stream_agents,
        Duration::from_secs(300),
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stream_latency = latency_run(&client, ns, "stream", "lat-stream", a.latency_items).await?;
    delete_run(&client, ns, "lat-stream").await;
    let t = throughput(
        &client,
        ns,
        "stream",
        stream_m,
        a.concurrency,
        &format!("{stream_agents} agents in stream mode"),
    )
    .await?;
    let stream_rate = t.items_per_s();
    let stream_efficiency = stream_rate / (raw / 3.0);
    let stream_wi = t.per_item(|r| r.resource == "workitems" && r.is_write());
    log(format!(
        "stream mode: {stream_m} items in {:.1} s = {stream_rate:.1} items/s; workitem writes/item {stream_wi:.2}; CPU ms per item {}",
        t.seconds, t.cpu_ms_per_item
    ));
    let stream = json!({"agents": stream_agents, "items": stream_m, "seconds": round(t.seconds, 2),
        "items_per_s": round(stream_rate, 1), "workitem_writes_per_item": round(stream_wi, 3),
        "cpu_ms_per_item": t.cpu_ms_per_item});
    delete_run(&client, ns, "stream").await;
    apply(&client, ns, stream_pool(0)).await?;
    wait_pool_ready(&client, ns, "stream", 0, Duration::from_secs(120)).await?;
    let by_mode = |f: fn(&Latency) -> &Vec<f64>| {
        json!({
            "per_item": per_item_latency.as_ref().map(|l| percentiles(f(l).clone())),
            "stream": percentiles(f(&stream_latency).clone()),
        })
    };
    let mut queued_to_started = by_mode(|l| &l.running_ms);
    queued_to_started["method"] = json!(
        "harness: create returned -> the item first seen Running in the harness's own watch (the claim write is what moves it to Running; the agent hands the item to the runner after that write returns, so the work itself starts a little later), 10 idle agents, items created one every 50 ms; per_item with `true` per item, stream with one busybox sh loop per agent"
    );
    let mut queued_to_succeeded = by_mode(|l| &l.succeeded_ms);
    queued_to_succeeded["method"] = json!(
        "same runs: create returned -> the item first seen Succeeded in the harness's own watch (includes starting the work, or handing it a line, and its end)"
    );
    log(format!(
        "queued -> started (ms) {queued_to_started}; queued -> succeeded (ms) {queued_to_succeeded}"
    ));

    // Jobs: one batch/v1 Job per item, running `true`, on the same kubelet and image.
    apply_pool(&client, ns, "bench", &["q"], 0, 15, &["true"]).await?;
    wait_pool_ready(&client, ns, "bench", 0, Duration::from_secs(120)).await?;
    let nj = a
        .jobs
        .unwrap_or_else(|| a.items.last().copied().unwrap_or(500));
    log(format!("{nj} Jobs, one per item, running `true`"));
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    let t0 = Instant::now();
    stream::iter(0..nj)
        .map(|i| {
            let jobs = jobs.clone();
            async move {
                let job: Job = serde_json::from_value(json!({
                    "metadata": {"name": format!("job-{i:06}"), "labels": {"bench.triad.dev/run": "jobs"}},
                    "spec": {"backoffLimit": 6, "template": {"spec": {
                        "restartPolicy": "Never",
                        "containers": [{"name": "work", "image": SHELL_IMAGE, "command": ["true"]}]}}}
                }))
                .expect("job");
                for _ in 0..20 {
                    match jobs.create(&PostParams::default(), &job).await {
                        Ok(_) => return,
                        Err(kube::Error::Api(e)) if e.code == 409 => return,
                        Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                    }
                }
            }
        })
        .buffer_unordered(a.concurrency)
        .collect::<Vec<_>>()
        .await;
    let jobs_done = wait_until(Duration::from_secs(1800), "all Jobs Complete", || async {
        let list = jobs
            .list(&ListParams::default().labels("bench.triad.dev/run=jobs"))
            .await
            .ok()?;
        let done = list
            .items
            .iter()
            .filter(|j| {
                j.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| {
                        cs.iter()
                            .any(|c| c.type_ == "Complete" && c.status == "True")
                    })
            })
            .count();
        tokio::time::sleep(Duration::from_millis(800)).await;
        (done >= nj).then_some(Instant::now())
    })
    .await?;
    let jobs_rate = nj as f64 / jobs_done.duration_since(t0).as_secs_f64();
    log(format!("Jobs: {jobs_rate:.2} items/s"));
    let _ = jobs
        .delete_collection(
            &DeleteParams::background(),
            &ListParams::default().labels("bench.triad.dev/run=jobs"),
        )
        .await;

    // 50 000 items in a queue no agent serves yet.
    log(format!("creating {} items in queue big (no agents)", a.big));
    let op_metrics_before = parse_prom(&http_get(&op.addr(), "/metrics").await?);
    let t0 = Instant::now();
    create_items(&client, ns, "big", "big", a.big, a.concurrency.max(96)).await?;
    let create_rate = a.big as f64 / t0.elapsed().as_secs_f64();
    log(format!(
        "created {} items at {create_rate:.0}/s; letting the operator settle 20 s",
        a.big
    ));
    tokio::time::sleep(Duration::from_secs(20)).await;
    let op_metrics_after = parse_prom(&http_get(&op.addr(), "/metrics").await?);
    let op_rss_big = rss_mb(op.pid()).unwrap_or(0.0);
    let is_wi =
        |l: &BTreeMap<String, String>| l.get("controller").map(String::as_str) == Some("workitem");
    let rb = bucket_delta(
        &buckets(&op_metrics_after, "triad_reconcile_duration_seconds", is_wi),
        &buckets(
            &op_metrics_before,
            "triad_reconcile_duration_seconds",
            is_wi,
        ),
    );
    let reconciles = rb.get(&u64::MAX).copied().unwrap_or(0.0);
    let sched_p99 = quantile(&rb, 0.99).map(|s| round(s * 1000.0, 2));
    let sched_p50 = quantile(&rb, 0.5).map(|s| round(s * 1000.0, 2));
    log(format!(
        "operator RSS with {} items {op_rss_big:.1} MB; workitem reconcile p50 {sched_p50:?} p99 {sched_p99:?} ms over {reconciles} reconciles",
        a.big
    ));

    // One agent on the big queue; its work never ends, so 50 000 stay queued around it.
    apply_pool(&client, ns, "idle", &["big"], 1, 15, &["sleep", "3600"]).await?;
    let pods = wait_pool_ready(&client, ns, "idle", 1, Duration::from_secs(120)).await?;
    tokio::time::sleep(Duration::from_secs(20)).await;
    let pod_name = pods[0].metadata.name.clone().unwrap_or_default();
    let agent = agent_containers(&client, ns)
        .await
        .unwrap_or_else(|e| {
            log(format!("listing the agent containers: {e}"));
            Vec::new()
        })
        .into_iter()
        .find(|c| c.pod == pod_name)
        .map(|c| c.pid);
    if agent.is_none() {
        log(format!(
            "no running agent container found for pod {pod_name}; agent RSS not measured"
        ));
    }
    let agent_rss = agent.and_then(rss_mb).unwrap_or(0.0);
    // Anonymous memory is the agent's own data; file-backed is mostly its binary's pages.
    let (agent_anon, agent_file) = agent.and_then(rss_parts_mb).unwrap_or((0.0, 0.0));
    log(format!(
        "agent RSS with {} items queued {agent_rss:.1} MB (anonymous {agent_anon:.1}, file-backed {agent_file:.1})",
        a.big
    ));
    let op_rss_big2 = rss_mb(op.pid()).unwrap_or(0.0);
    let kube_version: Value = {
        let req = http::Request::get("/version").body(Vec::new())?;
        serde_json::from_str(&client.request_text(req).await?).unwrap_or(json!(null))
    };

    let mut versions: serde_json::Map<String, Value> = a
        .versions
        .split(';')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), json!(v.trim())))
        .collect();
    versions.insert("kube_apiserver".into(), kube_version["gitVersion"].clone());
    versions.insert("triad".into(), json!(env!("CARGO_PKG_VERSION")));
    versions.extend(node_versions(&client, &a.state_dir).await);

    let report = json!({
        "raw_writes_per_s": round(raw, 1),
        "raw_writes_method": format!("{max_agents} concurrent clients, merge patches of /status on trivial custom objects (one per client) for 10 s"),
        "writes_per_item": round(writes_per_item, 3),
        "writes_per_item_all_resources": round(all_writes_per_item, 3),
        "conflict_requests_per_item": round(conflict_requests_per_item, 3),
        "writes_per_item_method": "apiserver_request_total delta, 2xx responses to POST/PUT/PATCH/APPLY on resource workitems (all subresources; 409s are counted apart as conflict_requests_per_item), over the run with the most agents; _all_resources counts every resource (leases, events, pods, ...)",
        "items_per_s": items_per_s,
        "runs": runs,
        "efficiency_vs_write_limit": round(efficiency, 3),
        "stream_items_per_s": round(stream_rate, 1),
        "stream_efficiency_vs_write_limit": round(stream_efficiency, 3),
        "stream": stream,
        "queued_to_started_ms": queued_to_started,
        "queued_to_succeeded_ms": queued_to_succeeded,
        "jobs": nj,
        "jobs_items_per_s": round(jobs_rate, 2),
        "speedup_vs_jobs": round(headline / jobs_rate, 2),
        "claim_latency_ms": claim_latency,
        "claim_latency_ms_end_to_end": claim_latency_e2e,
        "conflicts_per_claim": conflicts,
        "conflicts_method": "agents' triad_agent_claim_conflicts_total / triad_agent_claim_attempts_total over the run with the most agents",
        "operator_rss_mb": {"idle": round(op_rss_idle, 1), "with_50k_items": round(op_rss_big.max(op_rss_big2), 1)},
        "agent_rss_mb": round(agent_rss, 1),
        "agent_rss_parts_mb": {"anonymous": round(agent_anon, 1), "file": round(agent_file, 1)},
        "agent_pod_rss_mb": agent_pod_rss_mb,
        "admission_cost": admission_cost,
        "agent_pod_rss_method": "one pod of the 10-agent per-item pool, ready and idle: the VmRSS of every process of its `triad-agent` container (agent) and of its work container (runner: `triad runner` waiting for an item), found by cgroup; pages shared between processes count once per process",
        "items_stored": a.big,
        "create_rate_per_s": round(create_rate, 1),
        "scheduler_reconcile_ms": {"p50": sched_p50, "p99": sched_p99, "reconciles": reconciles,
            "method": "triad_reconcile_duration_seconds{controller=\"workitem\"} delta while the 50 000 items were created and for 20 s after"},
        "agents_are": format!("pods of an AgentPool: an agent container `triad-agent` of Triad's image ({TRIAD_IMAGE}, release build) plus a work container of the busybox work image ({SHELL_IMAGE}) started through the runner (`triad runner`), on a kubelet (containerd, runc)"),
        "operator_is": "one `triad controller` process (release), all roles",
        "etcd_fsync": std::env::var("TRIAD_ETCD_FSYNC").unwrap_or_default() == "1",
        "machine": machine(),
        "versions": versions,
    });
    let path = a.out.join("report.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    let targets = [
        ("efficiency_vs_write_limit >= 0.7", efficiency >= 0.7),
        (
            "stream_efficiency_vs_write_limit >= 0.4",
            stream_efficiency >= 0.4,
        ),
        ("speedup_vs_jobs >= 10", headline / jobs_rate >= 10.0),
        (
            "conflicts_per_claim <= 0.2",
            conflicts.as_f64().unwrap_or(9.9) <= 0.2,
        ),
        (
            "claim_latency_ms.p99 <= 50",
            claim_latency["p99"].as_f64().unwrap_or(9e9) <= 50.0,
        ),
        (
            "operator_rss_mb.with_50k_items <= 150",
            op_rss_big.max(op_rss_big2) <= 150.0,
        ),
        ("agent_rss_mb <= 30", agent_rss <= 30.0),
    ];
    println!("\nTriad benchmark ({})", path.display());
    println!("  raw writes/s            {raw:.0}");
    println!(
        "  items/s                 {}",
        Value::Object(items_per_s.clone())
    );
    println!(
        "  writes/item (workitems) {writes_per_item:.2}   (all resources {all_writes_per_item:.2})"
    );
    println!("  efficiency vs limit     {efficiency:.2}");
    println!(
        "  stream items/s @{stream_agents}       {stream_rate:.1}   efficiency vs limit {stream_efficiency:.2}"
    );
    println!(
        "  queued->started ms      per-item {}   stream {}",
        queued_to_started["per_item"], queued_to_started["stream"]
    );
    println!(
        "  Jobs items/s            {jobs_rate:.2}   speedup {:.1}x",
        headline / jobs_rate
    );
    println!("  claim latency ms        {claim_latency}");
    println!("  conflicts/claim @{max_agents}      {conflicts}");
    println!(
        "  operator RSS MB         idle {op_rss_idle:.1}, with {} items {:.1}",
        a.big,
        op_rss_big.max(op_rss_big2)
    );
    println!("  agent RSS MB            {agent_rss:.1}");
    println!(
        "  agent pod RSS MB        agent {}, runner {}, total {}",
        agent_pod_rss_mb["agent"], agent_pod_rss_mb["runner"], agent_pod_rss_mb["total"]
    );
    println!("  workitem reconcile ms   p50 {sched_p50:?} p99 {sched_p99:?}");
    for (t, ok) in targets {
        println!("  [{}] {t}", if ok { "met" } else { "MISSED" });
    }
    Ok(())
}
