//! Shared pieces of the bench and chaos drivers: clients, Prometheus text parsing,
//! process control of the operator, the agent containers on the cluster's node.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use triad::api::{AgentPool, WorkMode};
use triad::pool::template::AGENT_CONTAINER;

pub async fn client(kubeconfig: &Path) -> anyhow::Result<Client> {
    let kc = Kubeconfig::read_from(kubeconfig).context("read kubeconfig")?;
    let mut config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    config.read_timeout = Some(Duration::from_secs(60));
    Ok(Client::try_from(config)?)
}

pub fn log(msg: impl AsRef<str>) {
    let now = jiff::Zoned::now();
    eprintln!("[{}] {}", now.strftime("%H:%M:%S"), msg.as_ref());
}

/// Creates (or keeps) a namespace and applies the Triad CRDs.
pub async fn prepare(client: &Client, ns: &str) -> anyhow::Result<()> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in triad::api::crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        crds.patch(
            &name,
            &PatchParams::apply("triad-bench").force(),
            &Patch::Apply(&crd),
        )
        .await?;
        wait_until(Duration::from_secs(60), &format!("crd {name}"), || {
            let crds = crds.clone();
            let name = name.clone();
            async move {
                let c = crds.get(&name).await.ok()?;
                c.status?
                    .conditions?
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
                    .then_some(())
            }
        })
        .await?;
    }
    // The agents' ClusterRole, which the chart ships and each pool's RoleBinding grants
    // (the harness runs the operator as a process, without the chart).
    let role = triad::pool::rbac::agent_cluster_role(triad::pool::rbac::DEFAULT_AGENT_CLUSTER_ROLE);
    Api::<k8s_openapi::api::rbac::v1::ClusterRole>::all(client.clone())
        .patch(
            triad::pool::rbac::DEFAULT_AGENT_CLUSTER_ROLE,
            &PatchParams::apply("triad-bench").force(),
            &Patch::Apply(&role),
        )
        .await?;
    let nss: Api<Namespace> = Api::all(client.clone());
    if nss.get_opt(ns).await?.is_none() {
        let body: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}}))?;
        nss.create(&PostParams::default(), &body).await?;
    }
    let sa: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(client.clone(), ns);
    wait_until(Duration::from_secs(60), "default service account", || {
        let sa = sa.clone();
        async move { sa.get_opt("default").await.ok().flatten() }
    })
    .await?;
    Ok(())
}

pub async fn wait_until<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn apply(client: &Client, ns: &str, obj: Value) -> anyhow::Result<()> {
    let kind = obj["kind"].as_str().unwrap_or_default().to_owned();
    let name = obj["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let pp = PatchParams::apply("triad-bench").force();
    match kind.as_str() {
        "WorkQueue" => {
            Api::<triad::api::WorkQueue>::namespaced(client.clone(), ns)
                .patch(&name, &pp, &Patch::Apply(&obj))
                .await?;
        }
        "AgentPool" => {
            Api::<AgentPool>::namespaced(client.clone(), ns)
                .patch(&name, &pp, &Patch::Apply(&obj))
                .await?;
        }
        _ => anyhow::bail!("apply: unsupported kind {kind}"),
    }
    Ok(())
}

/// Triad's image as hack/image.sh builds it and loads it into the node: only
/// /usr/local/bin/triad, user 65532, no shell. Tagged, so the kubelet never tries to pull
/// it (an untagged name means pull policy Always, and nothing can be pulled here).
pub const TRIAD_IMAGE: &str = "ghcr.io/triad-dev/triad:0.1.0";

/// Triad's image plus busybox under /bin (sh, true, sleep, ...): the image a user builds
/// FROM Triad's when the work needs a shell.
pub const SHELL_IMAGE: &str = "localhost/triad-busybox:dev";

/// The image an agent needs for its work: Triad's own when the work is `triad` itself,
/// the one with busybox for anything else.
pub fn agent_image(work: &[&str]) -> &'static str {
    match work.first() {
        None | Some(&"triad") | Some(&"/usr/local/bin/triad") => TRIAD_IMAGE,
        Some(_) => SHELL_IMAGE,
    }
}

/// An AgentPool with `replicas` agents running `command` once per item on `queues`.
pub fn pool_object(
    name: &str,
    queues: &[&str],
    replicas: i32,
    lease_seconds: i32,
    command: &[&str],
) -> Value {
    pool_object_with_mode(
        name,
        queues,
        replicas,
        lease_seconds,
        command,
        WorkMode::PerItem,
    )
}

/// An AgentPool with `replicas` agents on `queues` whose work container runs `command`
/// in `mode`: once per item, or once for many items read as JSON lines on stdin. The
/// template holds the work container alone; Triad adds the agent container and starts
/// `command` through its runner.
pub fn pool_object_with_mode(
    name: &str,
    queues: &[&str],
    replicas: i32,
    lease_seconds: i32,
    command: &[&str],
    mode: WorkMode,
) -> Value {
    let queues: Vec<Value> = queues.iter().map(|q| json!({"name": q})).collect();
    json!({
        "apiVersion": "triad.dev/v1alpha1", "kind": "AgentPool",
        "metadata": {"name": name},
        "spec": {
            "queues": queues, "replicas": replicas, "leaseSeconds": lease_seconds,
            "lifecycle": {"type": "Persistent"},
            "workMode": mode,
            "template": {"spec": {
                "containers": [{"name": "work", "image": agent_image(command), "command": command,
                                "env": [{"name": "RUST_LOG", "value": "info,kube=warn"}]}]
            }}
        }
    })
}

/// Mounts a host path (`kind`: a hostPath type such as `File` or `Directory`) into the
/// work container of a [`pool_object`] at the same path, so work in the container can
/// write what the harness reads on the host. A hostPath is outside the restricted
/// profile Triad enforces by default, so the pool asks for `Privileged`.
pub fn mount_host_path(pool: &mut Value, path: &Path, kind: &str) {
    let path = path.display().to_string();
    pool["spec"]["podSecurity"] = json!("Privileged");
    let spec = &mut pool["spec"]["template"]["spec"];
    spec["volumes"] = json!([{"name": "host", "hostPath": {"path": path, "type": kind}}]);
    spec["containers"][0]["volumeMounts"] = json!([{"name": "host", "mountPath": path}]);
}

/// Applies an AgentPool with `replicas` agents running `command` on `queues`.
pub async fn apply_pool(
    client: &Client,
    ns: &str,
    name: &str,
    queues: &[&str],
    replicas: i32,
    lease_seconds: i32,
    command: &[&str],
) -> anyhow::Result<()> {
    apply(
        client,
        ns,
        pool_object(name, queues, replicas, lease_seconds, command),
    )
    .await
}

/// Running agent pods of a pool with their IPs.
pub async fn pool_pods(client: &Client, ns: &str, pool: &str) -> anyhow::Result<Vec<Pod>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let list = pods
        .list(&ListParams::default().labels(&format!("triad.dev/pool={pool}")))
        .await?;
    Ok(list
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect())
}

pub fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

pub fn pod_ip(p: &Pod) -> Option<String> {
    p.status.as_ref()?.pod_ip.clone()
}

/// Waits until the pool has exactly `n` ready pods (and no others).
pub async fn wait_pool_ready(
    client: &Client,
    ns: &str,
    pool: &str,
    n: usize,
    timeout: Duration,
) -> anyhow::Result<Vec<Pod>> {
    wait_until(
        timeout,
        &format!("{n} ready agents in pool {pool}"),
        || async {
            let pods = pool_pods(client, ns, pool).await.ok()?;
            (pods.len() == n && pods.iter().all(pod_ready)).then_some(pods)
        },
    )
    .await
}

/// A minimal HTTP/1.0 GET (metrics endpoints of operators and agent pods).
pub async fn http_get(addr: &str, path: &str) -> anyhow::Result<String> {
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        anyhow::ensure!(
            head.contains(" 200"),
            "GET {addr}{path}: {}",
            head.lines().next().unwrap_or("")
        );
        Ok::<_, anyhow::Error>(body.to_owned())
    };
    tokio::time::timeout(Duration::from_secs(10), fut).await?
}

/// The API server's own /metrics (admin client).
pub async fn apiserver_metrics(client: &Client) -> anyhow::Result<String> {
    let req = http::Request::get("/metrics").body(Vec::new())?;
    Ok(client.request_text(req).await?)
}

/// One Prometheus sample: name, labels, value.
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

pub fn parse_prom(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (name, labels, rest) = match line.find('{') {
            Some(i) => {
                let Some(j) = line.rfind('}') else { continue };
                (&line[..i], &line[i + 1..j], &line[j + 1..])
            }
            None => {
                let Some((n, r)) = line.split_once(' ') else {
                    continue;
                };
                (n, "", r)
            }
        };
        let Some(value) = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        else {
            continue;
        };
        let mut map = BTreeMap::new();
        let mut s = labels;
        while let Some(eq) = s.find("=\"") {
            let key = s[..eq].trim_start_matches(',').trim().to_owned();
            let after = &s[eq + 2..];
            // values in these metrics have no escaped quotes that matter here
            let end = after.find("\"").unwrap_or(after.len());
            map.insert(key, after[..end].to_owned());
            s = after.get(end + 1..).unwrap_or("");
        }
        out.push(Sample {
            name: name.to_owned(),
            labels: map,
            value,
        });
    }
    out
}

pub fn sum(
    samples: &[Sample],
    name: &str,
    filter: impl Fn(&BTreeMap<String, String>) -> bool,
) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name && filter(&s.labels))
        .map(|s| s.value)
        .sum()
}

/// Cumulative histogram buckets (le → count), summed over every series that passes `filter`.
pub fn buckets(
    samples: &[Sample],
    name: &str,
    filter: impl Fn(&BTreeMap<String, String>) -> bool,
) -> BTreeMap<u64, f64> {
    let mut out = BTreeMap::new();
    for s in samples
        .iter()
        .filter(|s| s.name == format!("{name}_bucket") && filter(&s.labels))
    {
        let le = s.labels.get("le").map(String::as_str).unwrap_or("+Inf");
        let key = if le == "+Inf" {
            u64::MAX
        } else {
            (le.parse::<f64>().unwrap_or(0.0) * 1e9) as u64
        };
        *out.entry(key).or_insert(0.0) += s.value;
    }
    out
}

pub fn bucket_delta(after: &BTreeMap<u64, f64>, before: &BTreeMap<u64, f64>) -> BTreeMap<u64, f64> {
    after
        .iter()
        .map(|(k, v)| (*k, v - before.get(k).copied().unwrap_or(0.0)))
        .collect()
}

/// Quantile (seconds) from cumulative buckets, interpolated linearly inside a bucket.
pub fn quantile(b: &BTreeMap<u64, f64>, q: f64) -> Option<f64> {
    let total = *b.get(&u64::MAX).or_else(|| b.values().last())?;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut prev_le = 0.0;
    let mut prev_count = 0.0;
    for (le, count) in b {
        let le_s = if *le == u64::MAX {
            prev_le
        } else {
            *le as f64 / 1e9
        };
        if *count >= rank {
            if *le == u64::MAX {
                return Some(prev_le);
            }
            let in_bucket = count - prev_count;
            let frac = if in_bucket > 0.0 {
                (rank - prev_count) / in_bucket
            } else {
                1.0
            };
            return Some(prev_le + (le_s - prev_le) * frac);
        }
        prev_le = le_s;
        prev_count = *count;
    }
    Some(prev_le)
}

/// A `kB` line of a `/proc/<pid>/status` text (`name` with its colon), in MB.
fn status_mb(status: &str, name: &str) -> Option<f64> {
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(name))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

fn proc_status(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/status")).ok()
}

pub fn rss_mb(pid: u32) -> Option<f64> {
    status_mb(&proc_status(pid)?, "VmRSS:")
}

/// `RssAnon` and `RssFile` of a process, in MB.
pub fn rss_parts_mb(pid: u32) -> Option<(f64, f64)> {
    let status = proc_status(pid)?;
    Some((
        status_mb(&status, "RssAnon:")?,
        status_mb(&status, "RssFile:")?,
    ))
}

/// A running process as `/proc` shows it.
struct Process {
    pid: u32,
    /// The fields of `/proc/<pid>/stat` after the command name: index 0 is the state,
    /// 1 the parent, 2 the process group, 11–14 utime, stime, cutime and cstime in clock
    /// ticks.
    stat: Vec<String>,
    args: Vec<String>,
    /// The id of the container the process runs in, if any (see [`container_of`]).
    container: Option<String>,
}

impl Process {
    fn stat_u64(&self, index: usize) -> Option<u64> {
        self.stat.get(index)?.parse().ok()
    }

    /// A `triad agent` process (the agent itself; the guard starts as `/proc/self/exe`).
    fn is_agent(&self) -> bool {
        is_triad_agent(&self.args)
    }

    /// The runner or a guard it runs an item's work under: the Triad side of a work
    /// container.
    fn is_runner(&self) -> bool {
        is_runner(&self.args)
    }
}

/// The file name of a command line's program.
fn exe_name(args: &[String]) -> &str {
    args.first()
        .and_then(|a| a.rsplit('/').next())
        .unwrap_or_default()
}

fn is_triad_agent(args: &[String]) -> bool {
    exe_name(args) == "triad" && args.get(1).is_some_and(|a| a == "agent")
}

/// `triad runner …` (PID 1 of a work container), or the guard the runner re-executes
/// itself as for each item (`/proc/self/exe agent --work-guard -- <command…>`).
fn is_runner(args: &[String]) -> bool {
    (exe_name(args) == "triad" && args.get(1).is_some_and(|a| a == "runner"))
        || triad::agent::work::guard_command(args).is_some()
}

/// Which part of an agent pod a container is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    /// The `triad-agent` container: claims, heartbeats, status writes.
    Agent,
    /// The work container: the runner, its guards and the work they start.
    Work,
}

/// The agent and work containers among the processes' containers, by id: a container
/// is the agent's when one of its processes is `triad agent`, a work container when one
/// is the runner or a guard.
fn container_sides(procs: &[Process]) -> std::collections::HashMap<&str, Side> {
    let mut out = std::collections::HashMap::new();
    for p in procs {
        let Some(id) = p.container.as_deref() else {
            continue;
        };
        if p.is_agent() {
            out.insert(id, Side::Agent);
        } else if p.is_runner() {
            out.entry(id).or_insert(Side::Work);
        }
    }
    out
}

/// The container a process runs in, from its `/proc/<pid>/cgroup` text: with the
/// kubelet's cgroupfs driver every hierarchy's path of a container's process ends in the
/// container's id (64 hex digits), which is also containerd's id for it. Host processes
/// have other paths.
fn container_of(cgroup: &str) -> Option<String> {
    cgroup.lines().find_map(|line| {
        let path = line.splitn(3, ':').nth(2)?;
        let last = path.rsplit('/').next()?;
        (last.len() == 64 && last.bytes().all(|b| b.is_ascii_hexdigit())).then(|| last.to_owned())
    })
}

/// Every process on the machine (those that exit while being read are left out).
fn processes() -> Vec<Process> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let (_, after) = stat.rsplit_once(") ")?;
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
            Some(Process {
                pid,
                stat: after.split_whitespace().map(str::to_owned).collect(),
                args: cmd
                    .split(|b| *b == 0)
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect(),
                container: container_of(&cgroup),
            })
        })
        .collect()
}

/// The host pid of a container's `triad agent` process: the member of the container
/// whose parent is outside it (the container's first process, which the runtime's shim
/// started), or failing that the lowest agent pid in it.
fn container_agent_pid(procs: &[Process], id: &str) -> Option<u32> {
    let members: Vec<&Process> = procs
        .iter()
        .filter(|p| p.container.as_deref() == Some(id))
        .collect();
    let agents = || members.iter().filter(|p| p.is_agent());
    agents()
        .find(|p| {
            p.stat_u64(1)
                .is_none_or(|ppid| !members.iter().any(|m| u64::from(m.pid) == ppid))
        })
        .or_else(|| agents().min_by_key(|p| p.pid))
        .map(|p| p.pid)
}

/// A running agent container (`triad-agent`) of a pool's pod.
#[derive(Clone, Debug)]
pub struct AgentContainer {
    pub pod: String,
    /// containerd's id of the container (the pod status's `containerd://<id>`), as
    /// `crictl` and `ctr` take it.
    pub id: String,
    /// The host pid of its `triad agent` process.
    pub pid: u32,
}

/// The running agent containers (`triad-agent`, not the work containers) of a
/// namespace's pool pods: the pods come from the API, the processes from `/proc` (this
/// harness runs on the cluster's only node).
pub async fn agent_containers(client: &Client, ns: &str) -> anyhow::Result<Vec<AgentContainer>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let list = pods
        .list(&ListParams::default().labels("triad.dev/pool"))
        .await?;
    let procs = processes();
    let mut out = Vec::new();
    for pod in list.items {
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let name = pod.metadata.name.clone().unwrap_or_default();
        let statuses = pod
            .status
            .and_then(|s| s.container_statuses)
            .unwrap_or_default();
        let found = statuses.iter().find_map(|c| {
            (c.name == AGENT_CONTAINER).then_some(())?;
            c.state.as_ref()?.running.as_ref()?;
            let id = c.container_id.as_deref()?.strip_prefix("containerd://")?;
            let pid = container_agent_pid(&procs, id)?;
            Some(AgentContainer {
                pod: name.clone(),
                id: id.to_owned(),
                pid,
            })
        });
        out.extend(found);
    }
    Ok(out)
}

/// The summed RSS (MB) of the processes of each running container of `pod`, by
/// container name; the processes come from `/proc`, matched by their cgroup. Pages two
/// processes share (a binary's, say) count once for each.
pub fn pod_rss_mb_by_container(pod: &Pod) -> BTreeMap<String, f64> {
    let procs = processes();
    let statuses = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref());
    let mut out = BTreeMap::new();
    for c in statuses.into_iter().flatten() {
        if c.state.as_ref().and_then(|s| s.running.as_ref()).is_none() {
            continue;
        }
        let Some(id) = c
            .container_id
            .as_deref()
            .and_then(|i| i.strip_prefix("containerd://"))
        else {
            continue;
        };
        let mb: f64 = procs
            .iter()
            .filter(|p| p.container.as_deref() == Some(id))
            .filter_map(|p| rss_mb(p.pid))
            .sum();
        out.insert(c.name.clone(), mb);
    }
    out
}

/// The node's runtime tools, as a node's operator uses them.
#[derive(Clone, Copy, Debug)]
pub enum NodeTool {
    /// `crictl` on the CRI: what the kubelet sees (a stopped container is restarted).
    Crictl,
    /// `ctr` in containerd's `k8s.io` namespace, below the kubelet (task pause/resume).
    Ctr,
}

impl NodeTool {
    fn program(self) -> &'static str {
        match self {
            NodeTool::Crictl => "crictl",
            NodeTool::Ctr => "ctr",
        }
    }
}

/// Runs `crictl` or `ctr` against the containerd of the cluster in `state_dir`; its
/// stdout, or an error with what it wrote to stderr.
pub async fn node_tool(state_dir: &Path, tool: NodeTool, args: &[&str]) -> anyhow::Result<String> {
    let socket = state_dir.join("containerd/containerd.sock");
    let program = tool.program();
    let mut cmd = tokio::process::Command::new(program);
    match tool {
        NodeTool::Crictl => {
            cmd.arg("--runtime-endpoint")
                .arg(format!("unix://{}", socket.display()));
        }
        NodeTool::Ctr => {
            cmd.arg("--address").arg(&socket).args(["-n", "k8s.io"]);
        }
    }
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        cmd.args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .with_context(|| format!("{program} {args:?}: timed out"))?
    .with_context(|| format!("{program} {args:?}: cannot run it"))?;
    anyhow::ensure!(
        out.status.success(),
        "{program} {args:?}: {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn signal(pid: u32, sig: i32) -> bool {
    // SAFETY: kill(2) with a pid we read from /proc; no memory is touched.
    unsafe { libc::kill(pid as i32, sig) == 0 }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(18080)
}

/// A `triad controller` process run by the harness.
pub struct Operator {
    pub name: String,
    pub roles: String,
    pub port: u16,
    pub child: Child,
    pub log: PathBuf,
    triad: PathBuf,
    kubeconfig: PathBuf,
}

impl Operator {
    pub fn start(
        triad: &Path,
        kubeconfig: &Path,
        dir: &Path,
        name: &str,
        roles: &str,
    ) -> anyhow::Result<Self> {
        let port = free_port();
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let child = Self::spawn(triad, kubeconfig, roles, port, out)?;
        Ok(Self {
            name: name.into(),
            roles: roles.into(),
            port,
            child,
            log,
            triad: triad.into(),
            kubeconfig: kubeconfig.into(),
        })
    }

    fn spawn(
        triad: &Path,
        kubeconfig: &Path,
        roles: &str,
        port: u16,
        out: std::fs::File,
    ) -> anyhow::Result<Child> {
        use std::os::unix::process::CommandExt;
        let err = out.try_clone()?;
        Ok(Command::new(triad)
            .args([
                "controller",
                "--roles",
                roles,
                "--metrics-addr",
                &format!("127.0.0.1:{port}"),
            ])
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info,kube=warn")
            .env("NO_COLOR", "1")
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()?)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let addr = self.addr();
        wait_until(timeout, &format!("{} /readyz", self.name), || async {
            http_get(&addr, "/readyz").await.ok().map(|_| ())
        })
        .await
    }

    /// Exited on its own? Returns whether it exited with a panic in its log.
    pub fn exited(&mut self) -> Option<bool> {
        match self.child.try_wait() {
            Ok(Some(_)) => {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                Some(log.contains("panicked"))
            }
            _ => None,
        }
    }

    /// Stops (SIGTERM, or SIGKILL when `hard`) and starts again on the same port.
    pub async fn restart(&mut self, hard: bool) -> anyhow::Result<()> {
        self.stop(hard).await;
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        self.child = Self::spawn(&self.triad, &self.kubeconfig, &self.roles, self.port, out)?;
        Ok(())
    }

    pub async fn stop(&mut self, hard: bool) {
        let pid = self.pid();
        signal(pid, if hard { libc::SIGKILL } else { libc::SIGTERM });
        for _ in 0..100 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn machine() -> Value {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem_kb: f64 = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0.0);
    let cpu = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|c| {
        c.lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
    });
    json!({"cores": cores, "memory_gb": (mem_kb / 1024.0 / 1024.0 * 10.0).round() / 10.0, "cpu": cpu})
}

pub fn round(v: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (v * p).round() / p
}

/// CPU seconds used so far by the processes on this machine, by what they are:
/// `kube-apiserver`, `etcd`, `operator` (`triad controller`), `agents`, `runner`,
/// `node` (kubelet, containerd, its shims, runc and the pods' pause processes),
/// `harness`, `control-plane-other` (controller-manager, scheduler) and `other`.
///
/// Agents are the processes of the agent pods' `triad-agent` containers: `triad
/// agent`. Runner is every process of their work containers: the runner, the guards it
/// runs items under and the work they run, whatever that work's program is. A process's
/// reaped children count with it as well, so work that has finished counts with the
/// runner that ran it. `agents` + `runner` is what `agents` alone was when the agent
/// ran the work in its own container.
pub fn cpu_seconds_by_process() -> BTreeMap<&'static str, f64> {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let procs = processes();
    let sides = container_sides(&procs);
    let mut out = BTreeMap::new();
    for p in &procs {
        let used: u64 = (11..15).filter_map(|i| p.stat_u64(i)).sum();
        let side = p.container.as_deref().and_then(|c| sides.get(c).copied());
        *out.entry(process_kind(&p.args, side)).or_insert(0.0) += used as f64 / ticks;
    }
    out
}

/// What a process is, for [`cpu_seconds_by_process`], from its command line and which
/// part of an agent pod it runs in, if any.
fn process_kind(args: &[String], side: Option<Side>) -> &'static str {
    match side {
        Some(Side::Agent) => return "agents",
        Some(Side::Work) => return "runner",
        None => {}
    }
    if is_runner(args) {
        return "runner";
    }
    let has = |word: &str| args.iter().skip(1).any(|a| a == word);
    match exe_name(args) {
        "kube-apiserver" => "kube-apiserver",
        "etcd" => "etcd",
        "kube-controller-manager" | "kube-scheduler" => "control-plane-other",
        "kubelet" | "containerd" | "containerd-shim-runc-v2" | "runc" => "node",
        // The pod sandbox (pause) image is busybox sleeping.
        "busybox" if args.get(1).is_some_and(|a| a == "sleep") => "node",
        "triad-bench" => "harness",
        "triad" if has("controller") => "operator",
        "triad" if has("agent") => "agents",
        _ => "other",
    }
}

/// `helm template` of the chart's agent admission policies (templates/agent-policy.yaml,
/// bound to every namespace as a default install binds them), applied with kubectl.
/// Release `triad`, so [`remove_agent_policy`] finds them by label. Returns kubectl's
/// lines.
pub async fn install_agent_policy(kubeconfig: &Path, ns: &str) -> anyhow::Result<Vec<String>> {
    use std::process::{Command, Stdio};
    // The checkout the harness runs in (hack/harness.sh starts it at the root); the
    // build's own path only when run from elsewhere.
    let root = std::env::current_dir()
        .ok()
        .filter(|d| d.join("charts/triad").is_dir())
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."));
    let helm = match std::env::var("TRIAD_HELM") {
        Ok(p) if !p.is_empty() => PathBuf::from(p),
        _ => {
            let out = Command::new("bash")
                .arg("-c")
                .arg("source hack/lib.sh >/dev/null && need_tools helm >&2 && command -v helm")
                .current_dir(&root)
                .output()?;
            let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            anyhow::ensure!(
                out.status.success() && !path.is_empty(),
                "helm not found: run `make tools` (or set TRIAD_HELM)"
            );
            PathBuf::from(path)
        }
    };
    let out = Command::new(&helm)
        .args(["template", "triad", "charts/triad", "--namespace", ns])
        .args(["--show-only", "templates/agent-policy.yaml"])
        .current_dir(&root)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "helm template failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let kubectl = std::env::var("TRIAD_KUBECTL").unwrap_or_else(|_| "kubectl".into());
    let mut child = Command::new(kubectl)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    {
        use std::io::Write;
        let mut stdin = child
            .stdin
            .take()
            .ok_or_else(|| anyhow::anyhow!("kubectl has no stdin"))?;
        stdin.write_all(&out.stdout)?;
    }
    let applied = child.wait_with_output()?;
    anyhow::ensure!(
        applied.status.success(),
        "kubectl apply of the agent policy failed: {}",
        String::from_utf8_lossy(&applied.stderr)
    );
    Ok(String::from_utf8_lossy(&applied.stdout)
        .lines()
        .map(str::to_owned)
        .collect())
}

/// Deletes what [`install_agent_policy`] applied.
pub fn remove_agent_policy(kubeconfig: &Path) -> anyhow::Result<()> {
    let kubectl = std::env::var("TRIAD_KUBECTL").unwrap_or_else(|_| "kubectl".into());
    let out = std::process::Command::new(kubectl)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args([
            "delete",
            "validatingadmissionpolicy,validatingadmissionpolicybinding",
            "-l",
            "app.kubernetes.io/instance=triad",
        ])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "kubectl delete of the agent policy failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// CPU time per item of each kind of process between two `cpu_seconds_by_process`
/// samples, in milliseconds, with `total` and the machine's busy fraction over `wall_s`.
pub fn cpu_ms_per_item(
    before: &BTreeMap<&'static str, f64>,
    after: &BTreeMap<&'static str, f64>,
    items: usize,
    wall_s: f64,
) -> Value {
    let mut per = serde_json::Map::new();
    let mut total = 0.0;
    for (kind, a) in after {
        let used = (a - before.get(kind).copied().unwrap_or(0.0)).max(0.0);
        total += used;
        per.insert(
            (*kind).to_owned(),
            json!(round(used * 1000.0 / items.max(1) as f64, 2)),
        );
    }
    per.insert(
        "total".into(),
        json!(round(total * 1000.0 / items.max(1) as f64, 2)),
    );
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as f64;
    per.insert(
        "machine_busy_fraction".into(),
        json!(round(total / (wall_s * cores).max(1e-9), 2)),
    );
    Value::Object(per)
}

#[cfg(test)]
mod process_tests {
    use super::*;

    #[test]
    fn processes_include_this_one_with_its_group_and_cpu() {
        let me = std::process::id();
        let mine = processes()
            .into_iter()
            .find(|p| p.pid == me)
            .expect("this process in /proc");
        // SAFETY: getpgrp has no preconditions.
        let group = unsafe { libc::getpgrp() } as u64;
        assert_eq!(mine.stat_u64(2), Some(group));
        assert!(mine.args.first().is_some_and(|a| !a.is_empty()));
        let busy: u64 = (0..2_000_000u64).map(|i| i ^ (i >> 3)).sum();
        assert!(busy > 0);
        let cpu = cpu_seconds_by_process();
        assert!(cpu.values().sum::<f64>() > 0.0, "{cpu:?}");
    }

    fn argv(args: &[&str]) -> Vec<String> {
        args.iter().map(|a| (*a).to_owned()).collect()
    }

    #[test]
    fn processes_are_classified_by_command_and_pod_side() {
        let kind = |args: &[&str]| process_kind(&argv(args), None);
        assert_eq!(kind(&["/opt/k8s/kubelet", "--config", "c.yaml"]), "node");
        assert_eq!(kind(&["containerd", "--config", "c.toml"]), "node");
        assert_eq!(
            kind(&["/usr/bin/containerd-shim-runc-v2", "-namespace", "k8s.io"]),
            "node"
        );
        assert_eq!(kind(&["runc", "--root", "/run", "state"]), "node");
        assert_eq!(kind(&["/bin/busybox", "sleep", "2147483647"]), "node");
        assert_eq!(kind(&["/usr/local/bin/triad", "agent"]), "agents");
        assert_eq!(
            kind(&["/triad/bin/triad", "runner", "--", "true"]),
            "runner"
        );
        assert_eq!(
            kind(&[
                "/triad/bin/triad",
                "runner",
                "--stream",
                "--",
                "sh",
                "-c",
                "x"
            ]),
            "runner"
        );
        assert_eq!(
            kind(&["/proc/self/exe", "agent", "--work-guard", "--", "true"]),
            "runner",
            "the guard is the runner re-executed, not an agent"
        );
        assert_eq!(
            kind(&["triad", "controller", "--roles", "pools"]),
            "operator"
        );
        assert_eq!(kind(&["/x/kube-apiserver", "--v=1"]), "kube-apiserver");
        assert_eq!(kind(&["/x/triad-bench", "bench"]), "harness");
        assert_eq!(kind(&["sleep", "3600"]), "other");
        // Work in a work container counts as the runner's, whatever its program.
        assert_eq!(
            process_kind(&argv(&["sleep", "3600"]), Some(Side::Work)),
            "runner"
        );
        assert_eq!(
            process_kind(&argv(&["/bin/busybox", "sleep", "1"]), Some(Side::Work)),
            "runner"
        );
        assert_eq!(
            process_kind(&argv(&["/usr/local/bin/triad", "agent"]), Some(Side::Agent)),
            "agents"
        );
    }

    #[test]
    fn containers_are_agent_or_work_by_their_processes() {
        let proc = |pid, container: &str, args: &[&str]| Process {
            pid,
            stat: Vec::new(),
            args: argv(args),
            container: Some(container.to_owned()),
        };
        let procs = [
            proc(1, "a", &["/usr/local/bin/triad", "agent"]),
            proc(
                2,
                "w",
                &["/triad/bin/triad", "runner", "--", "sh", "-c", "x"],
            ),
            proc(
                3,
                "w",
                &["/proc/self/exe", "agent", "--work-guard", "--", "sh"],
            ),
            proc(4, "w", &["sh", "-c", "x"]),
            proc(5, "s", &["/bin/busybox", "sleep", "1"]),
        ];
        let sides = container_sides(&procs);
        assert_eq!(sides.get("a"), Some(&Side::Agent));
        assert_eq!(sides.get("w"), Some(&Side::Work), "the guard is no agent");
        assert_eq!(sides.get("s"), None);
        assert_eq!(container_agent_pid(&procs, "a"), Some(1));
        assert_eq!(container_agent_pid(&procs, "w"), None);
    }

    #[test]
    fn containers_are_found_by_their_cgroup_path() {
        let id = "0123456789abcdef".repeat(4);
        let in_container = format!(
            "12:freezer:/triad-bench/kubepods/besteffort/pod1234-56/{id}\n\
             11:cpu,cpuacct:/triad-bench/kubepods/besteffort/pod1234-56/{id}\n"
        );
        assert_eq!(container_of(&in_container), Some(id));
        assert_eq!(container_of("12:freezer:/\n11:memory:/user.slice\n"), None);
        assert_eq!(
            container_of("12:freezer:/triad-bench/kubepods/besteffort/pod1234-56\n"),
            None
        );
    }
}
