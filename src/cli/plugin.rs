//! User-facing commands, also installed as the kubectl plugin `kubectl triad`
//! (a copy or symlink of the binary named `kubectl-triad` on PATH).

use std::collections::BTreeMap;

use clap::Args;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, LogParams, Patch};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use crate::api::{AgentPool, Phase, WorkItem, WorkQueue, WorkRequest, labels};
use crate::core::attempt_log;
use crate::core::phase::effective_phase;

#[derive(Args, Debug, Clone)]
pub struct Scope {
    /// Namespace (default: the kubeconfig context's).
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
}

impl Scope {
    fn ns(&self, client: &Client) -> String {
        self.namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_owned())
    }
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub scope: Scope,
}

#[derive(Args, Debug)]
pub struct TreeArgs {
    /// The WorkRequest.
    pub request: String,
    #[command(flatten)]
    pub scope: Scope,
}

#[derive(Args, Debug)]
pub struct RedriveArgs {
    /// DeadLettered WorkItems to return to Queued with attempts reset.
    pub items: Vec<String>,
    /// Every DeadLettered item of this queue.
    #[arg(long)]
    pub queue: Option<String>,
    #[command(flatten)]
    pub scope: Scope,
}

#[derive(Args, Debug)]
pub struct CancelArgs {
    /// WorkItems, or WorkRequests as `wr/<name>` (cancels all their items).
    pub targets: Vec<String>,
    #[command(flatten)]
    pub scope: Scope,
}

#[derive(Args, Debug)]
pub struct LogsArgs {
    /// The WorkItem.
    pub item: String,
    /// Which attempt (default: the latest).
    #[arg(long)]
    pub attempt: Option<i32>,
    #[command(flatten)]
    pub scope: Scope,
}

fn progress_bar(percent: Option<i32>) -> String {
    let Some(p) = percent else {
        return String::new();
    };
    let filled = (p.clamp(0, 100) / 10) as usize;
    format!(
        "[{}{}] {p:>3}%",
        "#".repeat(filled),
        ".".repeat(10 - filled)
    )
}

pub async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let client = crate::k8s::client::client().await?;
    let ns = args.scope.ns(&client);
    let queues: Api<WorkQueue> = Api::namespaced(client.clone(), &ns);
    let pools: Api<AgentPool> = Api::namespaced(client.clone(), &ns);
    let items: Api<WorkItem> = Api::namespaced(client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    println!("QUEUE            QUEUED  RUNNING  BACKOFF  HELD  DEAD-LETTERED  OLDEST");
    for q in queues.list(&ListParams::default()).await?.items {
        let s = q.status.clone().unwrap_or_default();
        println!(
            "{:<16} {:>6}  {:>7}  {:>7}  {:>4}  {:>13}  {:>5}s",
            q.name_any(),
            s.queued,
            s.running,
            s.backoff,
            s.held,
            s.dead_lettered,
            s.oldest_queued_seconds
        );
    }
    println!();
    println!("POOL             DESIRED  READY  BUSY  IDLE  QUEUES");
    for p in pools.list(&ListParams::default()).await?.items {
        let s = p.status.clone().unwrap_or_default();
        let queues: Vec<String> = p
            .spec
            .queues
            .iter()
            .map(|q| format!("{}:{}", q.name, q.weight))
            .collect();
        println!(
            "{:<16} {:>7}  {:>5}  {:>4}  {:>4}  {}",
            p.name_any(),
            s.desired,
            s.ready,
            s.busy,
            s.idle,
            queues.join(",")
        );
    }
    let running: Vec<WorkItem> = items
        .list(&ListParams::default().fields("status.phase=Running"))
        .await?
        .items;
    let mut busy: BTreeMap<String, &WorkItem> = BTreeMap::new();
    for item in &running {
        if let Some(agent) = item
            .status
            .as_ref()
            .and_then(|s| s.claim.as_ref())
            .map(|c| c.agent.clone())
        {
            busy.insert(agent, item);
        }
    }
    println!();
    println!(
        "AGENT                    POOL         POD       ITEM                          PROGRESS"
    );
    for pod in pods
        .list(&ListParams::default().labels(labels::POOL))
        .await?
        .items
    {
        let pool = pod.labels().get(labels::POOL).cloned().unwrap_or_default();
        let phase = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default();
        let name = pod.name_any();
        let (item, progress) = busy
            .get(&name)
            .map_or((String::from("-"), String::new()), |i| {
                (
                    i.name_any(),
                    progress_bar(
                        i.status
                            .as_ref()
                            .and_then(|s| s.progress.as_ref())
                            .and_then(|p| p.percent),
                    ),
                )
            });
        println!("{name:<24} {pool:<12} {phase:<9} {item:<29} {progress}");
    }
    Ok(())
}

pub async fn tree(args: TreeArgs) -> anyhow::Result<()> {
    let client = crate::k8s::client::client().await?;
    let ns = args.scope.ns(&client);
    let requests: Api<WorkRequest> = Api::namespaced(client.clone(), &ns);
    let items: Api<WorkItem> = Api::namespaced(client.clone(), &ns);
    let request = requests.get(&args.request).await?;
    let status = request.status.clone().unwrap_or_default();
    println!(
        "{} {} ({}){}",
        request.name_any(),
        status.phase.map_or("Pending".into(), |p| format!("{p:?}")),
        status.progress.unwrap_or_default(),
        status
            .conditions
            .iter()
            .find(|c| c.type_ == "Valid" && c.status == "False")
            .map(|c| format!("\n  invalid: {}", c.message))
            .unwrap_or_default()
    );
    let mut list = items
        .list(&ListParams::default().labels(&format!("{}={}", labels::REQUEST, args.request)))
        .await?
        .items;
    list.sort_by_key(|i| {
        (
            i.metadata.creation_timestamp.as_ref().map(|t| t.0),
            i.name_any(),
        )
    });
    let n = list.len();
    for (idx, item) in list.iter().enumerate() {
        let s = item.status.clone().unwrap_or_default();
        let branch = if idx + 1 == n { "└─" } else { "├─" };
        let deps = if item.spec.depends_on.is_empty() {
            String::new()
        } else {
            format!(" ← {}", item.spec.depends_on.join(", "))
        };
        let agent = s
            .claim
            .as_ref()
            .map(|c| c.agent.clone())
            .unwrap_or_else(|| "-".into());
        let why = s
            .waiting
            .clone()
            .or_else(|| s.last_error.as_ref().map(|e| e.reason.clone()))
            .unwrap_or_default();
        println!(
            "{branch} {:<32} {:<12} attempt {:<2} {:<22} {:<17} {why}{deps}",
            item.name_any(),
            effective_phase(item).to_string(),
            s.attempt,
            agent,
            progress_bar(s.progress.as_ref().and_then(|p| p.percent)),
        );
    }
    Ok(())
}

pub async fn redrive(args: RedriveArgs) -> anyhow::Result<()> {
    let client = crate::k8s::client::client().await?;
    let ns = args.scope.ns(&client);
    let items: Api<WorkItem> = Api::namespaced(client, &ns);
    let mut names = args.items.clone();
    if let Some(queue) = &args.queue {
        for item in items
            .list(&ListParams::default().fields("status.phase=DeadLettered"))
            .await?
            .items
        {
            if item.effective_queue() == Some(queue.as_str()) {
                names.push(item.name_any());
            }
        }
    }
    anyhow::ensure!(
        !names.is_empty(),
        "name DeadLettered items, or pass --queue <name> to redrive a whole queue"
    );
    let stamp = jiff::Timestamp::now().to_string();
    for name in names {
        let item = items.get(&name).await?;
        if item.phase() != Some(Phase::DeadLettered) {
            eprintln!(
                "{name}: not DeadLettered ({}); skipped",
                effective_phase(&item)
            );
            continue;
        }
        let body = json!({"metadata": {"annotations": {labels::REDRIVE: stamp}}});
        items
            .patch(
                &name,
                &crate::k8s::patch_params(crate::k8s::managers::CLI),
                &Patch::Merge(&body),
            )
            .await?;
        println!(
            "{name}: redrive requested (the scheduler returns it to Queued with attempts reset)"
        );
    }
    Ok(())
}

pub async fn cancel(args: CancelArgs) -> anyhow::Result<()> {
    let client = crate::k8s::client::client().await?;
    let ns = args.scope.ns(&client);
    let items: Api<WorkItem> = Api::namespaced(client.clone(), &ns);
    let requests: Api<WorkRequest> = Api::namespaced(client, &ns);
    anyhow::ensure!(
        !args.targets.is_empty(),
        "name WorkItems, or WorkRequests as wr/<name>"
    );
    let body = json!({"spec": {"cancel": true}});
    for target in args.targets {
        if let Some(request) = target
            .strip_prefix("wr/")
            .or_else(|| target.strip_prefix("workrequest/"))
        {
            requests
                .patch(
                    request,
                    &crate::k8s::patch_params(crate::k8s::managers::CLI),
                    &Patch::Merge(&body),
                )
                .await?;
            println!("workrequest/{request}: cancel requested for all its items");
        } else {
            items
                .patch(
                    &target,
                    &crate::k8s::patch_params(crate::k8s::managers::CLI),
                    &Patch::Merge(&body),
                )
                .await?;
            println!(
                "{target}: cancel requested (queued work ends at once; running work is stopped by its agent)"
            );
        }
    }
    Ok(())
}

const DEFAULT_CONTAINER: &str = "kubectl.kubernetes.io/default-container";

pub async fn logs(args: LogsArgs) -> anyhow::Result<()> {
    let client = crate::k8s::client::client().await?;
    let ns = args.scope.ns(&client);
    let items: Api<WorkItem> = Api::namespaced(client.clone(), &ns);
    let item = items.get(&args.item).await?;
    let status = item.status.clone().unwrap_or_default();
    let attempt = args.attempt.unwrap_or(status.attempt);
    let pod = if attempt == status.attempt {
        status
            .claim
            .as_ref()
            .and_then(|c| c.pod.clone().or(Some(c.agent.clone())))
    } else {
        status
            .attempts
            .iter()
            .find(|a| a.attempt == attempt)
            .and_then(|a| a.agent.clone())
    };
    let Some(pod) = pod else {
        anyhow::bail!("{}: no agent ran attempt {attempt}", args.item);
    };
    let pods: Api<Pod> = Api::namespaced(client, &ns);
    eprintln!("# {} attempt {attempt} ran on agent pod {pod}", args.item);
    let key = format!("{ns}/{}", args.item);
    // The work container's log (the pod's default container): the runner brackets each
    // attempt there. Pods without one ran the work in their first container.
    let work_container = match pods.get(&pod).await {
        Ok(p) => p
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(DEFAULT_CONTAINER).cloned())
            .or_else(|| {
                p.spec
                    .and_then(|s| s.containers.into_iter().next())
                    .map(|c| c.name)
            }),
        Err(e) => anyhow::bail!("agent pod {pod}: {e} (a deleted pod's log goes with it)"),
    };
    // That container's log, and the one before it if it restarted since.
    let mut logs = String::new();
    let mut last_error = None;
    for previous in [true, false] {
        let params = LogParams {
            container: work_container.clone(),
            previous,
            ..Default::default()
        };
        match pods.logs(&pod, &params).await {
            Ok(text) => logs.push_str(&text),
            Err(e) => last_error = Some(e),
        }
    }
    if logs.is_empty()
        && let Some(e) = last_error
    {
        anyhow::bail!("logs of pod {pod}: {e} (a deleted pod's log goes with it)");
    }
    match attempt_log::slice(&logs, &key, attempt) {
        Some(text) => {
            print!("{text}");
            Ok(())
        }
        None => anyhow::bail!(
            "pod {pod}'s log has no attempt {attempt} of {key} (the container that ran it may have been replaced)"
        ),
    }
}
