//! What a user types and reads: `kubectl triad status` (the `triad` binary installed as
//! the kubectl plugin `kubectl-triad`), `kubectl get triad` (the CRDs' category) and the
//! README's other `kubectl` examples, run against a namespace with a queue, a pool of
//! real agent pods, a request and items. Each printed cell is checked against what the
//! objects are; the README's own words for the columns are read from README.md, so the
//! README and the columns cannot drift apart unnoticed.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use kube::{Api, ResourceExt};
use serde_json::json;
use triad::api::{AgentPool, Phase, WorkItem, WorkQueue, WorkRequest};

use crate::pool::wait_pods;
use crate::support::{
    AGENT_IMAGE, Role, TestNamespace, create, kubeconfig_path, repo_root, start_role, wait_for,
};

const LONG: Duration = Duration::from_secs(60);

/// A directory holding `kubectl-triad`, a symlink to the `triad` binary under test, as
/// the README installs it.
fn plugin_dir() -> PathBuf {
    let dir = crate::support::scratch_dir("kubectl-plugin");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_triad"), dir.join("kubectl-triad"))
        .expect("link kubectl-triad");
    dir
}

/// Runs kubectl with `plugins` first on PATH and its own discovery cache (under
/// `plugins`): its stdout, or its stderr when it fails.
fn try_kubectl(plugins: &std::path::Path, args: &[&str]) -> Result<String, String> {
    let kubectl = std::env::var("TRIAD_KUBECTL").unwrap_or_else(|_| "kubectl".into());
    let path = std::env::var("PATH").unwrap_or_default();
    let cache = plugins.join("cache");
    let out = Command::new(kubectl)
        .env("KUBECONFIG", kubeconfig_path())
        .env("PATH", format!("{}:{path}", plugins.display()))
        .env("KUBECACHEDIR", &cache)
        .args(args)
        .output()
        .expect("run kubectl");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn kubectl(plugins: &std::path::Path, args: &[&str]) -> String {
    try_kubectl(plugins, args).unwrap_or_else(|e| panic!("kubectl {args:?}: {e}"))
}

/// One printed table: its column names and its rows, each cell the text under its
/// column's header (columns start where their header starts, as both kubectl and
/// `triad status` print them).
#[derive(Debug)]
struct Table {
    columns: Vec<String>,
    rows: Vec<BTreeMap<String, String>>,
}

impl Table {
    fn parse(block: &str) -> Table {
        let mut lines = block.lines();
        let header = lines.next().expect("a header line");
        let mut starts = Vec::new();
        let mut columns = Vec::new();
        let mut prev = ' ';
        for (i, c) in header.char_indices() {
            if c != ' ' && prev == ' ' {
                starts.push(i);
                columns.push(String::new());
            }
            if c != ' ' {
                columns.last_mut().expect("a column").push(c);
            }
            prev = c;
        }
        let rows = lines
            .map(|line| {
                let mut row = BTreeMap::new();
                for (k, name) in columns.iter().enumerate() {
                    // Right-aligned numbers are as wide as their header, so they
                    // start under it too.
                    let from = starts[k];
                    let to = starts.get(k + 1).copied().unwrap_or(line.len());
                    let cell = line.get(from.min(line.len())..to.min(line.len()));
                    row.insert(name.clone(), cell.unwrap_or("").trim().to_owned());
                }
                row
            })
            .collect();
        Table { columns, rows }
    }

    /// Every table in `text` (tables are separated by blank lines).
    fn all(text: &str) -> Vec<Table> {
        text.split("\n\n")
            .filter(|b| !b.trim().is_empty())
            .map(Table::parse)
            .collect()
    }

    fn row(&self, column: &str, value: &str) -> Option<&BTreeMap<String, String>> {
        self.rows
            .iter()
            .find(|r| r.get(column).map(String::as_str) == Some(value))
    }

    fn names(&self) -> Vec<&str> {
        self.columns.iter().map(String::as_str).collect()
    }
}

fn cells<'a>(row: &'a BTreeMap<String, String>, columns: &[&str]) -> Vec<&'a str> {
    columns
        .iter()
        .map(|c| row.get(*c).map_or("<missing>", String::as_str))
        .collect()
}

/// The line of the README's code that starts with `prefix`, trimmed.
fn readme_line(prefix: &str) -> String {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("README.md");
    readme
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("README.md has a line starting {prefix:?}"))
        .to_owned()
}

/// The comment after `#` on a README line, split on commas.
fn readme_comment(prefix: &str) -> Vec<String> {
    let line = readme_line(prefix);
    let (_, comment) = line.split_once('#').expect("a comment");
    comment.split(',').map(|w| w.trim().to_owned()).collect()
}

/// A queue `jobs`, a pool `workers` of one real agent whose work reports 40 % and then
/// runs for ten minutes, the item `lone` (priority 900, so the agent takes it first) and
/// the request `release` (`build`, then `ship` after it). Returns the agent pod's name
/// once `lone` runs on it.
async fn a_busy_namespace(ns: &TestNamespace) -> String {
    create::<WorkQueue>(
        ns,
        json!({"metadata": {"name": "jobs"}, "spec": {"types": ["job"]}}),
    )
    .await;
    create::<WorkItem>(
        ns,
        json!({"metadata": {"name": "lone"}, "spec": {"queue": "jobs", "priority": 900}}),
    )
    .await;
    create::<WorkRequest>(
        ns,
        json!({"metadata": {"name": "release"}, "spec": {"tasks": [
            {"name": "build", "type": "job"},
            {"name": "ship", "type": "job", "dependsOn": ["build"]}]}}),
    )
    .await;
    let items: Api<WorkItem> = ns.api();
    wait_for(LONG, "the request's items", || async {
        items.get("release-ship").await.ok().map(|_| ())
    })
    .await;
    let script = r#"echo '{"progress": {"percent": 40, "message": "halfway"}}' >> "$TRIAD_REPORT"; exec sleep 600"#;
    create::<AgentPool>(
        ns,
        json!({"metadata": {"name": "workers"}, "spec": {
            "queues": [{"name": "jobs", "weight": 2}], "replicas": 1,
            "template": {"spec": {"terminationGracePeriodSeconds": 2, "containers": [
                {"name": "work", "image": AGENT_IMAGE, "command": ["sh", "-c", script]}]}}}}),
    )
    .await;
    let pod = wait_pods(ns, "workers", 1).await[0].name_any();
    wait_for(LONG, "lone running at 40 %", || async {
        let s = items.get("lone").await.ok()?.status?;
        (s.phase == Some(Phase::Running) && s.progress?.percent == Some(40)).then_some(())
    })
    .await;
    pod
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kubectl_triad_status_and_kubectl_get_triad_show_what_runs() {
    let ns = TestNamespace::new("kubectl-triad").await;
    let _roles = [Role::Scheduler, Role::Pools].map(|r| start_role(&ns, r));
    let pod = a_busy_namespace(&ns).await;
    let plugins = plugin_dir();
    let n = ns.name.as_str();

    // `kubectl triad status`: once the controllers have counted, one table per kind.
    let last = std::sync::Mutex::new(String::new());
    let status = wait_for(LONG, "kubectl triad status to show the counts", || async {
        let text = kubectl(&plugins, &["triad", "status", "-n", n]);
        // Each new output once, so a timeout shows what the user saw instead.
        let mut last = last.lock().expect("lock");
        if *last != text {
            eprintln!("kubectl triad status:\n{text}");
            last.clone_from(&text);
        }
        let tables = Table::all(&text);
        let settled = tables.len() == 3
            && tables[0]
                .row("QUEUE", "jobs")
                .is_some_and(|r| cells(r, &["QUEUED", "RUNNING"]) == ["1", "1"])
            && tables[1]
                .row("POOL", "workers")
                .is_some_and(|r| cells(r, &["READY", "BUSY"]) == ["1", "1"]);
        settled.then_some((text, tables))
    })
    .await;
    let (text, tables) = status;
    println!("kubectl triad status:\n{text}");
    assert_eq!(
        tables[0].names(),
        [
            "QUEUE",
            "QUEUED",
            "RUNNING",
            "BACKOFF",
            "HELD",
            "DEAD-LETTERED",
            "OLDEST"
        ]
    );
    let jobs = tables[0].row("QUEUE", "jobs").expect("the jobs row");
    assert_eq!(
        cells(jobs, &["BACKOFF", "HELD", "DEAD-LETTERED"]),
        ["0", "0", "0"]
    );
    assert!(jobs["OLDEST"].ends_with('s'), "{jobs:?}");
    assert_eq!(
        tables[1].names(),
        ["POOL", "DESIRED", "READY", "BUSY", "IDLE", "QUEUES"]
    );
    let workers = tables[1].row("POOL", "workers").expect("the workers row");
    assert_eq!(
        cells(workers, &["DESIRED", "READY", "BUSY", "IDLE", "QUEUES"]),
        ["1", "1", "1", "0", "jobs:2"]
    );
    assert_eq!(
        tables[2].names(),
        ["AGENT", "POOL", "POD", "ITEM", "PROGRESS"]
    );
    let agent = tables[2].row("AGENT", &pod).expect("the agent's row");
    assert_eq!(
        cells(agent, &["POOL", "POD", "ITEM", "PROGRESS"]),
        ["workers", "Running", "lone", "[####......]  40%"]
    );

    // `kubectl get triad -A`, as the README has it: every kind of the category, with
    // this namespace's objects among everyone's.
    // Other tests apply the CRDs too; a lookup during such an update may miss the
    // category for a moment.
    let text = wait_for(LONG, "kubectl get triad -A", || async {
        try_kubectl(&plugins, &["get", "triad", "-A"])
            .inspect_err(|e| eprintln!("kubectl get triad -A: {e}"))
            .ok()
    })
    .await;
    let tables = Table::all(&text);
    let find = |name: &str| {
        tables
            .iter()
            .find_map(|t| {
                t.rows.iter().find(|r| {
                    r.get("NAMESPACE").map(String::as_str) == Some(n)
                        && r.get("NAME").map(String::as_str) == Some(name)
                })
            })
            .unwrap_or_else(|| panic!("{name} in namespace {n} in:\n{text}"))
    };
    let queue = find("workqueue.triad.dev/jobs");
    assert_eq!(
        cells(queue, &["TYPES", "QUEUED", "RUNNING", "DEADLETTERED"]),
        [r#"["job"]"#, "1", "1", "0"]
    );
    let pool = find("agentpool.triad.dev/workers");
    assert_eq!(
        cells(pool, &["QUEUES", "DESIRED", "READY", "BUSY"]),
        ["jobs", "1", "1", "1"]
    );
    let lone = find("workitem.triad.dev/lone");
    assert_eq!(
        cells(
            lone,
            &["QUEUE", "PRIORITY", "PHASE", "AGENT", "ATTEMPT", "PROGRESS"]
        ),
        ["jobs", "900", "Running", pod.as_str(), "1", "40"]
    );
    let ship = find("workitem.triad.dev/release-ship");
    assert_eq!(
        cells(ship, &["QUEUE", "PHASE", "ATTEMPT"]),
        ["jobs", "Pending", "0"]
    );
    assert!(
        ship["WHY"].contains("build"),
        "says what it waits for: {ship:?}"
    );
    let release = find("workrequest.triad.dev/release");
    assert_eq!(cells(release, &["DONE", "FAILED"]), ["0/2", "0"]);
    let requests: Api<WorkRequest> = ns.api();
    let phase = requests
        .get("release")
        .await
        .expect("release")
        .status
        .and_then(|s| s.phase)
        .expect("a phase");
    assert_eq!(release["PHASE"], format!("{phase:?}"));
}

/// The README's `kubectl get` and `kubectl triad tree` examples, against the same kind of
/// namespace: the columns are those the README names, and the field selector it shows
/// selects.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_readmes_kubectl_examples_print_what_it_says() {
    let ns = TestNamespace::new("readme-kubectl").await;
    let _roles = [Role::Scheduler, Role::Pools].map(|r| start_role(&ns, r));
    let pod = a_busy_namespace(&ns).await;
    let plugins = plugin_dir();
    let n = ns.name.as_str();
    let get = |args: &[&str]| {
        let text = kubectl(&plugins, &[&["-n", n, "get"], args].concat());
        Table::parse(&text)
    };

    // `kubectl get wi   # queue, priority, phase, agent, attempt, progress, why waiting, age`
    let said: Vec<String> = readme_comment("kubectl get wi  ")
        .iter()
        .map(|w| w.split(' ').next().unwrap_or_default().to_uppercase())
        .collect();
    let wi = get(&["wi"]);
    assert_eq!(wi.columns[0], "NAME");
    assert_eq!(
        wi.columns[1..],
        said,
        "the README's words for `kubectl get wi`"
    );
    let lone = wi.row("NAME", "lone").expect("lone");
    assert_eq!(
        cells(
            lone,
            &["QUEUE", "PRIORITY", "PHASE", "AGENT", "ATTEMPT", "PROGRESS"]
        ),
        ["jobs", "900", "Running", pod.as_str(), "1", "40"]
    );

    // `kubectl get wi -o wide   # plus type and the queue the scheduler routed to`
    assert!(
        readme_line("kubectl get wi -o wide")
            .ends_with("# plus type and the queue the scheduler routed to")
    );
    // An item given by type alone: the scheduler routes it to the queue that takes it.
    create::<WorkItem>(
        &ns,
        json!({"metadata": {"name": "typed"}, "spec": {"type": "job", "priority": 100}}),
    )
    .await;
    let items: Api<WorkItem> = ns.api();
    wait_for(LONG, "typed routed", || async {
        let i = items.get("typed").await.ok()?;
        (i.status?.queue.as_deref() == Some("jobs")).then_some(())
    })
    .await;
    let wide = get(&["wi", "-o", "wide"]);
    let plain: Vec<&str> = wi.names();
    let extra: Vec<&str> = wide
        .names()
        .into_iter()
        .filter(|c| !plain.contains(c))
        .collect();
    assert_eq!(extra, ["TYPE", "ROUTED"]);
    let typed = wide.row("NAME", "typed").expect("typed");
    assert_eq!(
        cells(typed, &["QUEUE", "TYPE", "ROUTED"]),
        ["", "job", "jobs"]
    );
    let lone = wide.row("NAME", "lone").expect("lone");
    assert_eq!(cells(lone, &["QUEUE", "TYPE", "ROUTED"]), ["jobs", "", ""]);

    // `kubectl get wi --field-selector spec.queue=bug,status.phase=Queued`, on this
    // namespace's queue and the phase of the item that runs.
    let line = readme_line("kubectl get wi --field-selector");
    let selector = line
        .split_whitespace()
        .nth(4)
        .expect("a selector")
        .replace("spec.queue=bug", "spec.queue=jobs")
        .replace("status.phase=Queued", "status.phase=Running");
    assert_eq!(selector, "spec.queue=jobs,status.phase=Running");
    let selected = get(&["wi", "--field-selector", &selector]);
    let names: Vec<&str> = selected.rows.iter().map(|r| r["NAME"].as_str()).collect();
    assert_eq!(names, ["lone"]);

    // The request line of the demo's summary is `kubectl get wr`.
    let said = readme_line("NAME          PHASE");
    let wr = get(&["wr"]);
    assert_eq!(wr.names(), said.split_whitespace().collect::<Vec<_>>());
    let release = wr.row("NAME", "release").expect("release");
    assert_eq!(cells(release, &["DONE", "FAILED"]), ["0/2", "0"]);

    // `kubectl triad tree release-1-2   # a request's items: phase, agent, attempt, progress, why waiting`
    let tree = kubectl(&plugins, &["triad", "tree", "release", "-n", n]);
    println!("kubectl triad tree release:\n{tree}");
    let lines: Vec<&str> = tree.lines().collect();
    assert!(lines[0].starts_with("release "), "{tree}");
    assert!(lines[0].ends_with("(0/2)"), "{tree}");
    let ship = lines
        .iter()
        .find(|l| l.contains("release-ship"))
        .unwrap_or_else(|| panic!("release-ship in:\n{tree}"));
    assert!(ship.starts_with("└─ release-ship"), "{tree}");
    assert!(ship.contains(" Pending "), "{ship}");
    assert!(ship.contains(" attempt 0 "), "{ship}");
    assert!(ship.ends_with("← release-build"), "{ship}");
}

/// `kubectl apply -f config/samples/` creates the queues, pools and request the README
/// describes.
#[tokio::test]
async fn the_samples_apply_and_are_what_the_readme_describes() {
    let ns = TestNamespace::new("samples").await;
    let samples = repo_root().join("config/samples");
    let plugins = plugin_dir();
    let n = ns.name.as_str();
    kubectl(
        &plugins,
        &["-n", n, "apply", "-f", &format!("{}/", samples.display())],
    );
    let names = kubectl(&plugins, &["-n", n, "get", "wq,ap,wr", "-o", "name"]);
    let mut names: Vec<&str> = names.lines().collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "agentpool.triad.dev/drones",
            "agentpool.triad.dev/engineers",
            "workqueue.triad.dev/bug",
            "workqueue.triad.dev/drone",
            "workqueue.triad.dev/feature",
            "workrequest.triad.dev/release-1-2",
        ]
    );
    let pools: Api<AgentPool> = ns.api();
    let drones = pools.get("drones").await.expect("drones");
    assert_eq!(drones.spec.work_mode, triad::api::WorkMode::Stream);
    assert_eq!(
        drones.spec.empty_queue_policy,
        triad::api::EmptyQueuePolicy::ScaleDown
    );
    let engineers = pools.get("engineers").await.expect("engineers");
    assert_eq!(
        engineers.spec.lifecycle.type_,
        triad::api::LifecycleType::Mortal
    );
}
