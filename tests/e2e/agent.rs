//! The agent runtime against the real API server: agents run as child processes of the
//! test (`triad agent -- <command>`), without the pool controller or the supervisor, and
//! without the scheduler except where a test shows an attempt's outcome retried.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use triad::api::{Outcome, OutcomeKind, Phase, WorkItem, WorkQueue};

use crate::support::{Role, TestNamespace, kubeconfig_path, start_role, wait_for};

/// One `triad` child process (an agent here, a controller in `leader.rs`) with its
/// metrics server on `port`; stopped (SIGTERM, then SIGKILL) when dropped. On a failing
/// test the end of its log is printed.
pub(crate) struct Agent {
    name: String,
    child: Child,
    port: u16,
    log: PathBuf,
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Agent {
    pub(crate) fn start(
        ns: &TestNamespace,
        dir: &Path,
        name: &str,
        env: &[(&str, &str)],
        command: &[&str],
    ) -> Agent {
        let port = free_port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_triad"));
        cmd.arg("agent")
            .arg("--")
            .args(command)
            .env("POD_NAME", name)
            .env("POD_NAMESPACE", &ns.name)
            .env("TRIAD_QUEUES", "q")
            .env("TRIAD_METRICS_ADDR", format!("127.0.0.1:{port}"))
            .env("TRIAD_LEASE_SECONDS", "6")
            .env("TRIAD_PROGRESS_INTERVAL_MS", "1000")
            .env_remove("POD_UID");
        for (k, v) in env {
            cmd.env(k, v);
        }
        Self::spawn(dir, name, port, cmd)
    }

    /// Starts `cmd` (a `triad` command whose metrics server listens on `port`) against
    /// the test cluster, logging to `<dir>/<name>.log`.
    pub(crate) fn spawn(dir: &Path, name: &str, port: u16, mut cmd: Command) -> Agent {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).expect("process log");
        let err = out.try_clone().expect("process log");
        cmd.env("KUBECONFIG", kubeconfig_path())
            .env("RUST_LOG", "info,kube=warn")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = cmd.spawn().expect("start triad");
        Agent {
            name: name.to_owned(),
            child,
            port,
            log,
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    async fn get(&self, path: &str) -> Option<String> {
        http_get(self.port, path).await
    }

    pub(crate) async fn wait_ready(&mut self) {
        let (port, name, child) = (self.port, self.name.clone(), &mut self.child);
        wait_for(
            Duration::from_secs(30),
            &format!("agent {name} to be ready"),
            || {
                // Its log's last lines are printed when the Agent is dropped.
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("agent {name} exited before it was ready: {status}");
                }
                async move { http_get(port, "/readyz").await.map(|_| ()) }
            },
        )
        .await;
    }

    /// The value of one metric sample (exact name with labels), 0 when absent.
    /// Waits until the agent has counted an item it gave up as taken from it.
    async fn wait_fenced(&self, within: Duration, what: &str) {
        wait_for(within, what, || async {
            (self
                .metric("triad_agent_items_total{outcome=\"Fenced\"}")
                .await
                >= 1.0)
                .then_some(())
        })
        .await;
    }

    pub(crate) async fn metric(&self, sample: &str) -> f64 {
        let body = self.get("/metrics").await.expect("metrics");
        body.lines()
            .filter_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
            .filter_map(|v| v.trim().parse::<f64>().ok())
            .next()
            .unwrap_or(0.0)
    }

    pub(crate) fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    pub(crate) async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let (name, child) = (self.name.clone(), &mut self.child);
        wait_for(timeout, &format!("agent {name} to exit"), || {
            std::future::ready(child.try_wait().expect("try_wait"))
        })
        .await
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

/// GET `path` from an agent's metrics server on `port`: the body of a 200, else None.
async fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: agent\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).await.ok()?;
    let ok = body.starts_with("HTTP/1.0 200") || body.starts_with("HTTP/1.1 200");
    ok.then_some(body)
}

impl Drop for Agent {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- last lines of agent {} ---\n{}",
                self.name,
                self.log_tail()
            );
        }
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A directory for one test's logs and files; kept when the test fails.
pub(crate) struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("test files kept in {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

pub(crate) fn scratch(ns: &TestNamespace) -> Scratch {
    let dir = std::env::temp_dir().join(format!("triad-e2e-{}", ns.name));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    Scratch(dir)
}

fn item(name: &str, payload: Value) -> WorkItem {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"queue": "q", "payload": payload}
    }))
    .expect("valid WorkItem")
}

/// The guard survives the signals meant for the work, but the work itself starts with
/// their default dispositions: SIGTERM/SIGINT/SIGHUP end it unless it says otherwise.
#[test]
fn the_guard_starts_the_work_with_default_signal_handling() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_triad"))
        .args(["agent", "--work-guard", "--", "cat", "/proc/self/status"])
        .output()
        .expect("run the guard");
    assert!(out.status.success(), "{out:?}");
    let status = String::from_utf8_lossy(&out.stdout);
    let ignored = status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .expect("SigIgn line");
    for sig in [libc::SIGHUP, libc::SIGINT, libc::SIGTERM] {
        assert_eq!(
            ignored & (1 << (sig - 1)),
            0,
            "signal {sig} ignored in the work"
        );
    }
}

pub(crate) async fn create(api: &Api<WorkItem>, name: &str, payload: Value) {
    api.create(&PostParams::default(), &item(name, payload))
        .await
        .expect("create item");
}

/// The item once `agent` holds it.
async fn wait_claimed(api: &Api<WorkItem>, name: &str, agent: &str) -> WorkItem {
    wait_item(api, name, Duration::from_secs(20), "claimed", |wi| {
        claimed_by(wi) == Some(agent)
    })
    .await
}

async fn wait_item(
    api: &Api<WorkItem>,
    name: &str,
    timeout: Duration,
    what: &str,
    ok: impl Fn(&WorkItem) -> bool,
) -> WorkItem {
    wait_for(timeout, &format!("{name}: {what}"), || async {
        let wi = api.get(name).await.ok()?;
        ok(&wi).then_some(wi)
    })
    .await
}

fn outcome(wi: &WorkItem) -> Option<&Outcome> {
    wi.status.as_ref()?.outcome.as_ref()
}

fn outcome_kind(wi: &WorkItem) -> Option<OutcomeKind> {
    outcome(wi).map(|o| o.kind)
}

fn claimed_by(wi: &WorkItem) -> Option<&str> {
    wi.status.as_ref()?.claim.as_ref().map(|c| c.agent.as_str())
}

/// Live processes whose command line starts with `prefix`.
fn processes(prefix: &str) -> usize {
    let out = Command::new("pgrep")
        .arg("-f")
        .arg(format!("^{prefix}"))
        .output()
        .expect("run pgrep");
    String::from_utf8_lossy(&out.stdout).lines().count()
}

fn marker() -> String {
    format!("{}", rand::random::<u32>() % 1_000_000_000)
}

/// What [`drain`] leaves: the agents, the items (all Succeeded) and the run log, a
/// line `<item> <attempt>` per run of the work command.
struct Drained {
    agents: Vec<Agent>,
    items: Vec<WorkItem>,
    log: String,
}

/// Starts `agents` agents named `<name>-<i>` with `env`, whose work logs its item and
/// attempt and then runs `then`; creates `items` items and waits until all succeed.
async fn drain(
    ns: &TestNamespace,
    name: &str,
    agents: usize,
    items: usize,
    env: &[(&str, &str)],
    then: &str,
) -> Drained {
    let api: Api<WorkItem> = ns.api();
    let dir = scratch(ns);
    let ran = dir.join("ran.log");
    let ran_s = ran.to_string_lossy().into_owned();
    let mut env = env.to_vec();
    env.push(("RAN_LOG", &ran_s));
    let script = format!(r#"echo "$TRIAD_ITEM $TRIAD_ATTEMPT" >> "$RAN_LOG"; {then}"#);
    let mut started: Vec<Agent> = (0..agents)
        .map(|i| {
            Agent::start(
                ns,
                &dir,
                &format!("{name}-{i}"),
                &env,
                &["sh", "-c", &script],
            )
        })
        .collect();
    for a in &mut started {
        a.wait_ready().await;
    }
    let names: Vec<String> = (0..items).map(|i| format!("item-{i:02}")).collect();
    futures::future::join_all(names.iter().map(|n| create(&api, n, json!({"n": n})))).await;
    let done = wait_for(
        Duration::from_secs(120),
        &format!("all {items} items Succeeded"),
        || async {
            let list = api.list(&ListParams::default()).await.ok()?;
            (list.items.len() == items
                && list
                    .items
                    .iter()
                    .all(|i| i.phase() == Some(Phase::Succeeded)))
            .then_some(list.items)
        },
    )
    .await;
    Drained {
        agents: started,
        items: done,
        log: std::fs::read_to_string(&ran).expect("ran log"),
    }
}

#[tokio::test]
async fn three_agents_drain_sixty_items_each_run_once() {
    let ns = TestNamespace::new("agent-drain").await;
    let drained = drain(&ns, "agent", 3, 60, &[], "sleep 0.05").await;
    let (agents, items, log) = (drained.agents, drained.items, drained.log);
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(
        lines.len(),
        60,
        "every work command ran exactly once:\n{log}"
    );
    let distinct: HashSet<&str> = lines
        .iter()
        .map(|l| l.split(' ').next().unwrap_or(""))
        .collect();
    assert_eq!(distinct.len(), 60);
    assert!(
        lines.iter().all(|l| l.ends_with(" 1")),
        "every item ran on attempt 1:\n{log}"
    );

    let mut per_agent: BTreeMap<String, usize> = BTreeMap::new();
    for wi in &items {
        let status = wi.status.as_ref().expect("status");
        assert_eq!(status.attempt, 1, "{}", wi.name_any());
        assert_eq!(outcome_kind(wi), Some(OutcomeKind::Succeeded));
        assert!(
            status.usage.contains_key("wallSeconds") && status.usage.contains_key("cpuSeconds"),
            "{:?}",
            status.usage
        );
        *per_agent
            .entry(claimed_by(wi).expect("claimed").to_owned())
            .or_default() += 1;
        // Claim and completion are both the agent's: one field manager, so one
        // managedFields entry for the status (`kubectl get --show-managed-fields`).
        let status_managers: Vec<_> = wi
            .metadata
            .managed_fields
            .iter()
            .flatten()
            .filter(|m| m.subresource.as_deref() == Some("status"))
            .map(|m| m.manager.clone().unwrap_or_default())
            .collect();
        assert_eq!(status_managers, ["triad-agent"], "{}", wi.name_any());
    }
    assert!(
        per_agent.len() >= 2,
        "at least two agents did work: {per_agent:?}"
    );

    // Exactly one accepted completion per item: the agents' own counts add up to 60.
    let mut completions = 0.0;
    for a in &agents {
        completions += a
            .metric("triad_agent_items_total{outcome=\"Succeeded\"}")
            .await;
    }
    assert_eq!(completions, 60.0, "{per_agent:?}");
}

/// Agents told to read every candidate before claiming it (what they do on their own
/// under contention) still run every item exactly once, and do read.
#[tokio::test]
async fn agents_that_check_before_claiming_run_every_item_once() {
    let ns = TestNamespace::new("agent-precheck").await;
    let drained = drain(
        &ns,
        "checker",
        2,
        30,
        &[("TRIAD_CLAIM_PRECHECK_ABOVE", "0")],
        "true",
    )
    .await;
    let (agents, log) = (drained.agents, drained.log);
    let runs: HashSet<&str> = log.lines().collect();
    assert_eq!(log.lines().count(), 30, "each item ran once:\n{log}");
    assert_eq!(runs.len(), 30, "{log}");
    let mut prechecks = 0.0;
    for a in &agents {
        prechecks += a.metric("triad_agent_claim_prechecks_total").await;
    }
    assert!(
        prechecks >= 30.0,
        "every claim was checked first: {prechecks}"
    );
}

#[tokio::test]
async fn a_fenced_out_agent_cannot_complete_and_carries_on() {
    let ns = TestNamespace::new("agent-fence").await;
    let api: Api<WorkItem> = ns.api();
    let dir = scratch(&ns);
    let ran = dir.join("ran.log");
    let ran_s = ran.to_string_lossy().into_owned();
    let script =
        r#"case "$TRIAD_ITEM" in */slow) sleep 5;; esac; echo "$TRIAD_ITEM" >> "$RAN_LOG""#;
    let mut agent = Agent::start(
        &ns,
        &dir,
        "fenced",
        &[("RAN_LOG", &ran_s)],
        &["sh", "-c", script],
    );
    agent.wait_ready().await;

    create(&api, "slow", json!({})).await;
    let running = wait_claimed(&api, "slow", "fenced").await;
    assert_eq!(running.epoch(), 1);

    // Another writer (the supervisor) takes the item away: epoch + 1 with an outcome.
    let mut current = running;
    loop {
        let out = Outcome {
            kind: OutcomeKind::LeaseExpired,
            reason: Some("LeaseExpired".into()),
            message: Some("fenced out by the test".into()),
            attempt: 1,
            epoch: 0,
            at: None,
        };
        match triad::k8s::fence::fence_out(&api, &current, out).await {
            Ok(_) => break,
            Err(triad::k8s::fence::ClaimError::Conflict) => {
                current = api.get("slow").await.expect("get")
            }
            Err(e) => panic!("fence out: {e}"),
        }
    }

    // The agent gives the item up (counted Fenced) once its work has stopped; from then
    // on it never writes to it, so what the item shows now is final.
    agent
        .wait_fenced(
            Duration::from_secs(20),
            "the agent abandoned the fenced item",
        )
        .await;
    let wi = api.get("slow").await.expect("get");
    assert_eq!(
        wi.phase(),
        Some(Phase::Running),
        "not completed by the fenced agent"
    );
    assert_eq!(outcome_kind(&wi), Some(OutcomeKind::LeaseExpired));
    assert_eq!(wi.epoch(), 2);
    let log = std::fs::read_to_string(&ran).unwrap_or_default();
    assert!(
        !log.contains("/slow"),
        "the abandoned work was stopped, not finished: {log}"
    );

    // And it carries on with the next item.
    create(&api, "next", json!({})).await;
    let next = wait_item(&api, "next", Duration::from_secs(20), "Succeeded", |wi| {
        wi.phase() == Some(Phase::Succeeded)
    })
    .await;
    assert_eq!(claimed_by(&next), Some("fenced"));
    assert!(agent.running());
    assert_eq!(
        agent
            .metric("triad_agent_items_total{outcome=\"Fenced\"}")
            .await,
        1.0
    );
}

/// The held-items watch is the agent's only news of an item that leaves it without a
/// fence-out first (here: deleted); the work must stop, not run to its end.
#[tokio::test]
async fn an_agent_whose_item_is_deleted_stops_the_work() {
    let ns = TestNamespace::new("agent-deleted").await;
    let api: Api<WorkItem> = ns.api();
    let dir = scratch(&ns);
    let ran = dir.join("ran.log");
    let ran_s = ran.to_string_lossy().into_owned();
    let script = r#"sleep 30; echo "$TRIAD_ITEM" >> "$RAN_LOG""#;
    let mut agent = Agent::start(
        &ns,
        &dir,
        "deleted",
        &[("RAN_LOG", &ran_s)],
        &["sh", "-c", script],
    );
    agent.wait_ready().await;

    create(&api, "doomed", json!({})).await;
    wait_claimed(&api, "doomed", "deleted").await;
    api.delete("doomed", &DeleteParams::default())
        .await
        .expect("delete the held item");

    // At once (the watch event), not at its next refused write some 10 s later.
    agent
        .wait_fenced(Duration::from_secs(8), "the agent gave up the deleted item")
        .await;
    let log = std::fs::read_to_string(&ran).unwrap_or_default();
    assert!(
        !log.contains("/doomed"),
        "the work was stopped, not finished: {log}"
    );
    assert!(agent.running(), "the agent carries on");
}

#[tokio::test]
async fn cancel_requested_stops_the_work_within_the_grace_period() {
    let ns = TestNamespace::new("agent-cancel").await;
    let api: Api<WorkItem> = ns.api();
    let dir = scratch(&ns);
    let mark = marker();
    // The shell ignores SIGTERM and so does its child: only the SIGKILL after the
    // queue's grace period stops it, which shows the grace period is honoured.
    let script = r#"trap '' TERM; sleep 600 "0.$MARK"; true"#;
    ns.api::<triad::api::WorkQueue>()
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "q"},
                "spec": {"supervision": {"cancelGraceSeconds": 2}}}))
            .expect("queue"),
        )
        .await
        .expect("create queue");
    let mut agent = Agent::start(
        &ns,
        &dir,
        "canceller",
        &[("MARK", &mark)],
        &["sh", "-c", script],
    );
    agent.wait_ready().await;
    create(&api, "long", json!({})).await;
    wait_claimed(&api, "long", "canceller").await;
    let sleeper = format!("sleep 600 0.{mark}");
    wait_for(Duration::from_secs(10), "the work is running", || async {
        (processes(&sleeper) == 1).then_some(())
    })
    .await;

    let now = triad::k8s::now();
    let body = json!({"status": {"conditions": [{
        "type": "CancelRequested", "status": "True", "reason": "Cancelled",
        "message": "cancel: asked by the test", "lastTransitionTime": now,
    }]}});
    api.patch_status(
        "long",
        &PatchParams::apply("test-supervisor"),
        &Patch::Merge(&body),
    )
    .await
    .expect("request cancel");
    let asked = Instant::now();

    let wi = wait_item(
        &api,
        "long",
        Duration::from_secs(15),
        "outcome Cancelled",
        |wi| outcome(wi).is_some(),
    )
    .await;
    let took = asked.elapsed();
    assert_eq!(
        outcome_kind(&wi),
        Some(OutcomeKind::Cancelled),
        "{:?}",
        outcome(&wi)
    );
    assert!(
        took >= Duration::from_millis(1500),
        "SIGKILL came only after the grace period: {took:?}"
    );
    assert!(
        took < Duration::from_secs(10),
        "stopped within the grace period (+ slack): {took:?}"
    );
    assert_eq!(processes(&sleeper), 0, "the work process is gone");
    assert!(agent.running());
}

#[tokio::test]
async fn bad_report_lines_are_survived_and_a_flood_costs_few_writes() {
    let ns = TestNamespace::new("agent-report").await;
    let api: Api<WorkItem> = ns.api();
    let dir = scratch(&ns);
    let script = r#"
R="$TRIAD_REPORT"
case "$TRIAD_ITEM" in
*/bad)
  echo 'not json' >> "$R"
  head -c 70000 /dev/zero | tr '\0' a >> "$R"; echo >> "$R"
  echo '{"usage": {"tokens": -1}}' >> "$R"
  echo '{"progress": {"percent": 50, "message": "half"}}' >> "$R"
  echo '{"result": {"ok": true}}' >> "$R"
  ;;
*/flood)
  i=0
  while [ $i -lt 20000 ]; do
    echo "{\"progress\": {\"percent\": $((i / 200))}}"
    echo "{\"usage\": {\"tokens\": $i}}"
    i=$((i + 1))
    if [ $((i % 2000)) -eq 0 ]; then sleep 0.3; fi
  done >> "$R"
  echo '{"progress": {"percent": 100, "message": "done"}}' >> "$R"
  ;;
esac
"#;
    let mut agent = Agent::start(&ns, &dir, "reporter", &[], &["sh", "-c", script]);
    agent.wait_ready().await;

    create(&api, "bad", json!({})).await;
    let bad = wait_item(&api, "bad", Duration::from_secs(20), "Succeeded", |wi| {
        wi.phase() == Some(Phase::Succeeded)
    })
    .await;
    let status = bad.status.as_ref().expect("status");
    assert_eq!(
        status.result.as_ref().and_then(|r| r.value().cloned()),
        Some(json!({"ok": true}))
    );
    assert_eq!(status.progress.as_ref().and_then(|p| p.percent), Some(50));
    assert!(agent.running(), "bad lines never crash the agent");
    assert!(
        agent
            .metric("triad_agent_report_lines_rejected_total")
            .await
            >= 3.0
    );

    // Count every version of the flood item the API server stores.
    let versions: Arc<Mutex<HashSet<String>>> = Arc::default();
    let seen = versions.clone();
    let watch_api = api.clone();
    let (listed_tx, listed) = tokio::sync::oneshot::channel::<()>();
    let watch = tokio::spawn(async move {
        let cfg = watcher::Config::default().fields("metadata.name=flood");
        let mut events = watcher::watcher(watch_api, cfg).boxed();
        let mut listed_tx = Some(listed_tx);
        while let Some(Ok(event)) = events.next().await {
            match event {
                watcher::Event::Apply(wi) | watcher::Event::InitApply(wi) => {
                    if let Some(rv) = wi.resource_version() {
                        seen.lock().expect("lock").insert(rv);
                    }
                }
                // Listed: from here on every version reaches this watch.
                watcher::Event::InitDone => {
                    if let Some(tx) = listed_tx.take() {
                        let _ = tx.send(());
                    }
                }
                _ => {}
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), listed)
        .await
        .expect("the watch listed within 10 s")
        .expect("the watch runs");
    create(&api, "flood", json!({})).await;
    let flood = wait_item(&api, "flood", Duration::from_secs(60), "Succeeded", |wi| {
        wi.phase() == Some(Phase::Succeeded)
    })
    .await;
    // The watch has seen every version once it has seen the last.
    let last = flood.resource_version().expect("a version");
    wait_for(
        Duration::from_secs(10),
        "the watch to see the final version",
        || async { versions.lock().expect("lock").contains(&last).then_some(()) },
    )
    .await;
    watch.abort();
    let status = flood.status.as_ref().expect("status");
    assert_eq!(
        status.usage.get("tokens"),
        Some(&19999.0),
        "{:?}",
        status.usage
    );
    assert_eq!(status.progress.as_ref().and_then(|p| p.percent), Some(100));
    let writes = versions.lock().expect("lock").len();
    eprintln!("the flood item was stored in {writes} versions");
    assert!(writes >= 3, "create, claim and complete at least: {writes}");
    assert!(
        writes < 30,
        "40 000 report lines must cost few writes, not {writes}"
    );
}

#[tokio::test]
async fn sigterm_drains_releases_the_unfinished_item_and_exits_zero() {
    let ns = TestNamespace::new("agent-sigterm").await;
    let api: Api<WorkItem> = ns.api();
    let dir = scratch(&ns);
    let mark = marker();
    let script = r#"case "$TRIAD_ITEM" in */short) sleep 2;; *) sleep 30 "0.$MARK";; esac"#;

    // A long item does not finish within TRIAD_DRAIN_SECONDS: released.
    let mut agent = Agent::start(
        &ns,
        &dir,
        "drainer",
        &[("MARK", &mark), ("TRIAD_DRAIN_SECONDS", "1")],
        &["sh", "-c", script],
    );
    agent.wait_ready().await;
    create(&api, "long", json!({})).await;
    wait_claimed(&api, "long", "drainer").await;
    let sleeper = format!("sleep 30 0.{mark}");
    wait_for(Duration::from_secs(10), "the work is running", || async {
        (processes(&sleeper) == 1).then_some(())
    })
    .await;
    agent.signal(libc::SIGTERM);
    let status = agent.wait_exit(Duration::from_secs(15)).await;
    assert_eq!(status.code(), Some(0), "{}", agent.log_tail());
    let wi = api.get("long").await.expect("get");
    assert_eq!(
        outcome_kind(&wi),
        Some(OutcomeKind::Released),
        "{:?}",
        outcome(&wi)
    );
    assert_eq!(processes(&sleeper), 0, "the work process is gone");

    // A short item finishes within the drain time: completed, then the agent exits.
    let mut agent = Agent::start(
        &ns,
        &dir,
        "finisher",
        &[("MARK", &mark), ("TRIAD_DRAIN_SECONDS", "10")],
        &["sh", "-c", script],
    );
    agent.wait_ready().await;
    create(&api, "short", json!({})).await;
    wait_claimed(&api, "short", "finisher").await;
    agent.signal(libc::SIGTERM);
    let status = agent.wait_exit(Duration::from_secs(15)).await;
    assert_eq!(status.code(), Some(0), "{}", agent.log_tail());
    let wi = api.get("short").await.expect("get");
    assert_eq!(wi.phase(), Some(Phase::Succeeded), "{:?}", wi.status);
}

#[tokio::test]
async fn simulate_outcomes_failures_and_violations() {
    let ns = TestNamespace::new("agent-simulate").await;
    let api: Api<WorkItem> = ns.api();
    let dir = scratch(&ns);
    let triad = env!("CARGO_BIN_EXE_triad");
    let mut agent = Agent::start(&ns, &dir, "simulator", &[], &[triad, "simulate"]);
    agent.wait_ready().await;

    create(&api, "ok", json!({"steps": 3, "stepMillis": 50, "tokensPerStep": 100, "costPerStep": 0.01, "result": {"answer": 42}})).await;
    create(
        &api,
        "flaky",
        json!({"steps": 1, "stepMillis": 10, "failOnAttempts": [1]}),
    )
    .await;
    create(
        &api,
        "exit3",
        json!({"steps": 1, "stepMillis": 10, "exitCode": 3}),
    )
    .await;
    create(&api, "rulebreaker", json!({"steps": 2, "stepMillis": 10, "violation": {"rule": "no-network", "detail": "tried curl"}})).await;
    create(&api, "huge", json!({"blob": "x".repeat(70 * 1024)})).await;

    let ok = wait_item(&api, "ok", Duration::from_secs(30), "Succeeded", |wi| {
        wi.phase() == Some(Phase::Succeeded)
    })
    .await;
    let s = ok.status.as_ref().expect("status");
    assert_eq!(
        s.result.as_ref().and_then(|r| r.value().cloned()),
        Some(json!({"answer": 42}))
    );
    assert_eq!(s.usage.get("tokens"), Some(&300.0));
    assert_eq!(s.usage.get("cost"), Some(&0.03));
    assert!(
        s.usage.get("wallSeconds").is_some_and(|w| *w >= 0.15),
        "{:?}",
        s.usage
    );
    assert!(s.usage.contains_key("cpuSeconds"));
    let p = s.progress.as_ref().expect("progress");
    assert_eq!(
        (p.percent, p.checkpoint.as_deref()),
        (Some(100), Some("step-3"))
    );
    assert_eq!(
        s.attempts.last().and_then(|a| a.outcome),
        Some(OutcomeKind::Succeeded)
    );

    // Failures only write the outcome: the scheduler decides what follows.
    let flaky = wait_item(&api, "flaky", Duration::from_secs(30), "an outcome", |wi| {
        outcome(wi).is_some()
    })
    .await;
    let o = outcome(&flaky).expect("outcome");
    assert_eq!(
        (o.kind, o.reason.as_deref(), o.attempt, o.epoch),
        (OutcomeKind::Failed, Some("ExitCode"), 1, 1)
    );
    assert!(
        o.message
            .as_deref()
            .is_some_and(|m| m.contains("exit code 1")),
        "{o:?}"
    );
    assert_eq!(flaky.phase(), Some(Phase::Running));
    assert_eq!(
        flaky
            .status
            .as_ref()
            .and_then(|s| s.last_error.as_ref())
            .map(|e| e.reason.as_str()),
        Some("ExitCode")
    );

    let exit3 = wait_item(&api, "exit3", Duration::from_secs(30), "an outcome", |wi| {
        outcome(wi).is_some()
    })
    .await;
    assert!(
        outcome(&exit3)
            .and_then(|o| o.message.as_deref())
            .is_some_and(|m| m.contains("exit code 3"))
    );

    let rb = wait_item(
        &api,
        "rulebreaker",
        Duration::from_secs(30),
        "Succeeded",
        |wi| wi.phase() == Some(Phase::Succeeded),
    )
    .await;
    let c = rb
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "ViolationReported"))
        .expect("violation condition");
    assert_eq!(c.reason, "no_network");
    assert!(
        c.message.contains("no-network: tried curl"),
        "{}",
        c.message
    );

    let huge = wait_item(&api, "huge", Duration::from_secs(30), "an outcome", |wi| {
        outcome(wi).is_some()
    })
    .await;
    let o = outcome(&huge).expect("outcome");
    assert_eq!(
        (o.kind, o.reason.as_deref()),
        (OutcomeKind::FailedPermanently, Some("PayloadTooLarge"))
    );
    assert!(agent.running());
}

#[tokio::test]
async fn mortal_agents_exit_after_their_items_and_exit_policy_when_empty() {
    let ns = TestNamespace::new("agent-life").await;
    let api: Api<WorkItem> = ns.api();
    let dir = scratch(&ns);
    for i in 0..3 {
        create(&api, &format!("m-{i}"), json!({})).await;
    }
    let mut mortal = Agent::start(
        &ns,
        &dir,
        "mortal",
        &[("TRIAD_LIFECYCLE", "Mortal"), ("TRIAD_MAX_ITEMS", "2")],
        &["true"],
    );
    let status = mortal.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0), "{}", mortal.log_tail());
    let list = api.list(&ListParams::default()).await.expect("list");
    let done = list
        .items
        .iter()
        .filter(|i| i.phase() == Some(Phase::Succeeded))
        .count();
    assert_eq!(
        done, 2,
        "a Mortal agent with maxItems 2 ran exactly two items"
    );

    let mut quitter = Agent::start(
        &ns,
        &dir,
        "quitter",
        &[
            ("TRIAD_EMPTY_QUEUE_POLICY", "Exit"),
            ("TRIAD_IDLE_EXIT_SECONDS", "2"),
        ],
        &["true"],
    );
    let status = quitter.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0), "{}", quitter.log_tail());
    let list = api.list(&ListParams::default()).await.expect("list");
    assert!(
        list.items
            .iter()
            .all(|i| i.phase() == Some(Phase::Succeeded)),
        "it took the last item before exiting"
    );
}

/// Freezes `agent` (SIGSTOP) until the Lease named in `claimed`'s claim has not been
/// renewed for a whole lease duration (the agent's next renewal then counts as a lapse),
/// and thaws it.
async fn freeze_past_lease(ns: &TestNamespace, agent: &Agent, claimed: &WorkItem) {
    let lease_name = claimed
        .status
        .as_ref()
        .and_then(|s| s.claim.as_ref()?.lease.clone())
        .expect("claim names its lease");
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = ns.api();
    agent.signal(libc::SIGSTOP);
    wait_for(
        Duration::from_secs(30),
        "the frozen agent's lease to lapse",
        || async {
            let spec = leases.get(&lease_name).await.ok()?.spec?;
            let renewed = spec.renew_time?.0;
            let duration = i64::from(spec.lease_duration_seconds?);
            let stale = renewed + jiff::SignedDuration::from_secs(duration);
            (jiff::Timestamp::now() > stale).then_some(())
        },
    )
    .await;
    agent.signal(libc::SIGCONT);
}

/// The scheduler (to act on a failed attempt) and queue `q` retrying after a second.
async fn retrying_scheduler(ns: &TestNamespace) -> tokio::task::JoinHandle<()> {
    crate::support::create::<WorkQueue>(
        ns,
        json!({"metadata": {"name": "q"}, "spec": {"retry": {"backoff": {"baseSeconds": 1, "maxSeconds": 2, "jitterPercent": 0}}}}),
    )
    .await;
    start_role(ns, Role::Scheduler).0
}

fn succeeded_records(wi: &WorkItem) -> usize {
    wi.status.as_ref().map_or(0, |s| {
        s.attempts
            .iter()
            .filter(|a| a.outcome == Some(OutcomeKind::Succeeded))
            .count()
    })
}

#[tokio::test]
async fn an_agent_whose_lease_lapsed_hands_its_item_back_for_retry() {
    let ns = TestNamespace::new("agent-lapse").await;
    let api: Api<WorkItem> = ns.api();
    let dir = scratch(&ns);
    let _scheduler = retrying_scheduler(&ns).await;
    let ran = dir.join("ran.log");
    let ran_s = ran.to_string_lossy().into_owned();
    // The first attempt outlives the freeze, so it is running when the agent notices
    // the lapse; later attempts finish at once.
    let script = r#"echo "$TRIAD_ATTEMPT start" >> "$RAN_LOG"
[ "$TRIAD_ATTEMPT" = 1 ] && sleep 600
echo "$TRIAD_ATTEMPT done" >> "$RAN_LOG""#;
    // Lease 6 s: renewals every 2 s, given up after 4.8 s without one.
    let mut agent = Agent::start(
        &ns,
        &dir,
        "sleepy",
        &[("RAN_LOG", &ran_s)],
        &["sh", "-c", script],
    );
    agent.wait_ready().await;
    create(&api, "paused", json!({})).await;
    let claimed = wait_claimed(&api, "paused", "sleepy").await;
    wait_for(Duration::from_secs(10), "attempt 1 started", || async {
        std::fs::read_to_string(&ran)
            .ok()?
            .contains("1 start")
            .then_some(())
    })
    .await;

    // When it wakes its heartbeat may renew at once, but the lapse is remembered: the
    // agent stops the work and hands the item back with a fenced Failed/LeaseLost
    // outcome, which the scheduler retries like any failed attempt.
    freeze_past_lease(&ns, &agent, &claimed).await;
    let done = wait_item(
        &api,
        "paused",
        Duration::from_secs(60),
        "Succeeded on a later attempt",
        |wi| wi.phase() == Some(Phase::Succeeded),
    )
    .await;
    let status = done.status.as_ref().expect("status");
    assert_eq!(status.attempt, 2, "{status:?}");
    assert_eq!(
        claimed_by(&done),
        Some("sleepy"),
        "the agent went on working"
    );
    let first = status
        .attempts
        .iter()
        .find(|a| a.attempt == 1)
        .expect("attempt 1 recorded");
    assert_eq!(
        (first.outcome, first.reason.as_deref()),
        (Some(OutcomeKind::Failed), Some("LeaseLost")),
        "{:?}",
        status.attempts
    );
    assert_eq!(succeeded_records(&done), 1, "{:?}", status.attempts);
    assert_eq!(outcome(&done).map(|o| o.attempt), Some(2));
    let log = std::fs::read_to_string(&ran).expect("ran log");
    assert_eq!(
        log.lines().collect::<Vec<_>>(),
        ["1 start", "2 start", "2 done"],
        "attempt 1 was stopped, attempt 2 ran to the end"
    );
    assert_eq!(
        agent
            .metric("triad_agent_items_total{outcome=\"LeaseLost\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn work_that_finished_while_its_agent_was_frozen_is_not_left_running() {
    let ns = TestNamespace::new("agent-lapse-done").await;
    let api: Api<WorkItem> = ns.api();
    let dir = scratch(&ns);
    let _scheduler = retrying_scheduler(&ns).await;
    let script = r#"[ "$TRIAD_ATTEMPT" = 1 ] && sleep 2; true"#;
    let mut agent = Agent::start(&ns, &dir, "sleepy", &[], &["sh", "-c", script]);
    agent.wait_ready().await;
    create(&api, "paused", json!({})).await;
    let claimed = wait_claimed(&api, "paused", "sleepy").await;

    // The work ends during the freeze. On waking the agent sees the exit and the lapse
    // in either order: the completion is written under the fence (the claim is still
    // ours), or the attempt is handed back as Failed/LeaseLost and retried. Either way
    // the item does not stay Running and exactly one completion is accepted.
    freeze_past_lease(&ns, &agent, &claimed).await;
    let done = wait_item(&api, "paused", Duration::from_secs(60), "Succeeded", |wi| {
        wi.phase() == Some(Phase::Succeeded)
    })
    .await;
    let status = done.status.as_ref().expect("status");
    assert_eq!(succeeded_records(&done), 1, "{:?}", status.attempts);
    let lease_lost = agent
        .metric("triad_agent_items_total{outcome=\"LeaseLost\"}")
        .await;
    match status.attempt {
        1 => assert_eq!(lease_lost, 0.0),
        2 => {
            assert_eq!(lease_lost, 1.0);
            let first = status.attempts.iter().find(|a| a.attempt == 1);
            assert_eq!(
                first.and_then(|a| a.reason.as_deref()),
                Some("LeaseLost"),
                "{:?}",
                status.attempts
            );
        }
        n => panic!("attempt {n}: {:?}", status.attempts),
    }
}

#[tokio::test]
async fn work_never_outlives_a_killed_agent() {
    let ns = TestNamespace::new("agent-orphan").await;
    let api: Api<WorkItem> = ns.api();
    let dir = scratch(&ns);
    let mark = marker();
    // The sleep is a grandchild of the agent: only killing the work's whole process
    // group gets it, and the agent cannot do that once it is SIGKILLed.
    let script = r#"sleep 600 "0.$MARK"; true"#;
    let mut agent = Agent::start(
        &ns,
        &dir,
        "doomed",
        &[("MARK", &mark)],
        &["sh", "-c", script],
    );
    agent.wait_ready().await;
    create(&api, "orphan", json!({})).await;
    wait_claimed(&api, "orphan", "doomed").await;
    let sleeper = format!("sleep 600 0.{mark}");
    wait_for(Duration::from_secs(10), "the work is running", || async {
        (processes(&sleeper) == 1).then_some(())
    })
    .await;
    agent.signal(libc::SIGKILL);
    agent.wait_exit(Duration::from_secs(5)).await;
    wait_for(
        Duration::from_secs(5),
        "the work to die with its agent",
        || async { (processes(&sleeper) == 0).then_some(()) },
    )
    .await;
}
