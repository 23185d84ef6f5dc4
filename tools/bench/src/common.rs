//! Shared pieces of the bench and chaos drivers: clients, Prometheus text parsing,
//! process control of the operator, the node runner's pod directories.

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
use triad::api::AgentPool;

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
    let mut argv = vec!["triad", "agent", "--"];
    argv.extend_from_slice(command);
    let queues: Vec<Value> = queues.iter().map(|q| json!({"name": q})).collect();
    apply(
        client,
        ns,
        json!({
            "apiVersion": "triad.dev/v1alpha1", "kind": "AgentPool",
            "metadata": {"name": name},
            "spec": {
                "queues": queues, "replicas": replicas, "leaseSeconds": lease_seconds,
                "lifecycle": {"type": "Persistent"},
                "template": {"spec": {
                    "nodeSelector": {"triad.dev/localnode": "true"},
                    "containers": [{"name": "agent", "image": "triad", "command": argv,
                                    "env": [{"name": "RUST_LOG", "value": "info,kube=warn"}]}]
                }}
            }
        }),
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

/// Pod directories of the node runner for a namespace: (pod name, pid of its process group).
pub fn pod_pids(state_dir: &Path, ns: &str) -> Vec<(String, PathBuf, u32)> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(state_dir.join("pods")) else {
        return out;
    };
    for e in rd.flatten() {
        let fname = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = fname.strip_prefix(&format!("{ns}_")) else {
            continue;
        };
        let pod = rest
            .rsplit_once('_')
            .map(|(p, _)| p.to_owned())
            .unwrap_or_default();
        if let Some(pid) = std::fs::read_to_string(e.path().join("pid"))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            && std::path::Path::new(&format!("/proc/{pid}")).exists()
        {
            out.push((pod, e.path(), pid));
        }
    }
    out
}

/// A running process as `/proc` shows it.
struct Process {
    pid: u32,
    /// The fields of `/proc/<pid>/stat` after the command name: index 0 is the state,
    /// 2 the process group, 11–14 utime, stime, cutime and cstime in clock ticks.
    stat: Vec<String>,
    args: Vec<String>,
}

impl Process {
    fn stat_u64(&self, index: usize) -> Option<u64> {
        self.stat.get(index)?.parse().ok()
    }
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
            Some(Process {
                pid,
                stat: after.split_whitespace().map(str::to_owned).collect(),
                args: cmd
                    .split(|b| *b == 0)
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect(),
            })
        })
        .collect()
}

/// The `triad agent` process inside a pod's process group (the group leader or a member).
pub fn agent_pid(pgid: u32) -> Option<u32> {
    let mut best = None;
    for p in processes() {
        if p.stat_u64(2) != Some(u64::from(pgid)) {
            continue;
        }
        if p.args.iter().any(|a| a == "agent") && !p.args.iter().any(|a| a == "--work-guard") {
            if p.pid == pgid {
                return Some(p.pid);
            }
            best = Some(p.pid);
        }
    }
    best
}

pub fn signal(pid: u32, sig: i32) -> bool {
    // SAFETY: kill(2) with a pid we read from /proc; no memory is touched.
    unsafe { libc::kill(pid as i32, sig) == 0 }
}

pub fn signal_group(pgid: u32, sig: i32) -> bool {
    // SAFETY: as above, for a process group.
    unsafe { libc::kill(-(pgid as i32), sig) == 0 }
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
/// `kube-apiserver`, `etcd`, `operator` (`triad controller`), `agents` (`triad agent`
/// and the work it ran and reaped), `node-runner`, `harness`, `control-plane-other`
/// (controller-manager, scheduler) and `other`. A process's reaped children count
/// with it, so an agent's work processes count as the agent's.
pub fn cpu_seconds_by_process() -> BTreeMap<&'static str, f64> {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut out = BTreeMap::new();
    for p in processes() {
        let used: u64 = (11..15).filter_map(|i| p.stat_u64(i)).sum();
        let args = &p.args;
        let exe = args
            .first()
            .and_then(|a| a.rsplit('/').next())
            .unwrap_or_default();
        let has = |word: &str| args.iter().skip(1).any(|a| a == word);
        let kind = match exe {
            "kube-apiserver" => "kube-apiserver",
            "etcd" => "etcd",
            "kube-controller-manager" | "kube-scheduler" => "control-plane-other",
            "triad-localnode" => "node-runner",
            "triad-bench" => "harness",
            "triad" if has("controller") => "operator",
            "triad" if has("agent") => "agents",
            _ => "other",
        };
        *out.entry(kind).or_insert(0.0) += used as f64 / ticks;
    }
    out
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
}
