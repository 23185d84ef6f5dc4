//! Integration-test harness: one real local control plane per test run, the CRDs
//! installed once, and a fresh namespace per test.
//!
//! `make test` starts the cluster and passes its kubeconfig in `TRIAD_TEST_KUBECONFIG`;
//! run alone (`cargo test --test e2e`), the harness starts (or reuses) the cluster named
//! `test` with `hack/cluster.sh`.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use tokio::sync::OnceCell;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Path of the test cluster's kubeconfig, starting the cluster if needed.
pub fn kubeconfig_path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        if let Ok(p) = std::env::var("TRIAD_TEST_KUBECONFIG") {
            return PathBuf::from(p);
        }
        let out = Command::new(repo_root().join("hack/cluster.sh"))
            .args(["up", "test"])
            .output()
            .expect("run hack/cluster.sh");
        assert!(
            out.status.success(),
            "hack/cluster.sh up test failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("export KUBECONFIG="))
            .expect("cluster.sh prints export KUBECONFIG=<path> last");
        PathBuf::from(line.trim())
    })
}

async fn make_client() -> Client {
    let kubeconfig = Kubeconfig::read_from(kubeconfig_path()).expect("read kubeconfig");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig is valid");
    Client::try_from(config).expect("client")
}

/// An admin client; the CRDs and the agents' ClusterRole (both of which the chart
/// ships) are installed (server-side apply) before it is returned.
pub async fn client() -> Client {
    static CRDS: OnceCell<()> = OnceCell::const_new();
    let client = make_client().await;
    CRDS.get_or_init(|| async {
        use triad::pool::rbac::{DEFAULT_AGENT_CLUSTER_ROLE, agent_cluster_role};
        Api::<k8s_openapi::api::rbac::v1::ClusterRole>::all(make_client().await)
            .patch(
                DEFAULT_AGENT_CLUSTER_ROLE,
                &PatchParams::apply("triad-tests").force(),
                &Patch::Apply(&agent_cluster_role(DEFAULT_AGENT_CLUSTER_ROLE)),
            )
            .await
            .expect("apply the agents' ClusterRole");
        let crds: Api<CustomResourceDefinition> = Api::all(make_client().await);
        for crd in triad::api::crds() {
            let name = crd.metadata.name.clone().expect("crd name");
            crds.patch(
                &name,
                &PatchParams::apply("triad-tests").force(),
                &Patch::Apply(&crd),
            )
            .await
            .expect("apply crd");
            wait_for(
                Duration::from_secs(30),
                &format!("crd {name} established"),
                || {
                    let crds = crds.clone();
                    let name = name.clone();
                    async move {
                        let crd = crds.get(&name).await.ok()?;
                        let established = crd
                            .status?
                            .conditions?
                            .iter()
                            .any(|c| c.type_ == "Established" && c.status == "True");
                        established.then_some(())
                    }
                },
            )
            .await;
        }
    })
    .await;
    client
}

/// A namespace for one test, deleted when dropped (also when the test fails).
pub struct TestNamespace {
    pub name: String,
    pub client: Client,
}

impl TestNamespace {
    pub async fn new(prefix: &str) -> Self {
        let client = client().await;
        let suffix: u32 = rand::random::<u32>() % 1_000_000;
        let name = format!("t-{prefix}-{suffix:06}");
        let ns: Api<Namespace> = Api::all(client.clone());
        let body: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": {"triad.dev/test": "true"}}
        }))
        .expect("namespace");
        ns.create(&PostParams::default(), &body)
            .await
            .expect("create namespace");
        Self { name, client }
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = kube::core::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// Runs kubectl against the test cluster in this namespace.
    pub fn kubectl(&self, args: &[&str]) -> std::process::Output {
        kubectl(&[&["-n", &self.name], args].concat())
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if std::env::var("TRIAD_KEEP_NAMESPACES").is_ok() {
            return;
        }
        let _ = kubectl(&["delete", "namespace", &self.name, "--wait=false"]);
    }
}

pub fn kubectl(args: &[&str]) -> std::process::Output {
    let kubectl = std::env::var("TRIAD_KUBECTL").unwrap_or_else(|_| "kubectl".into());
    Command::new(kubectl)
        .env("KUBECONFIG", kubeconfig_path())
        .args(args)
        .output()
        .expect("run kubectl (is the control plane's bin dir on PATH? make test sets it)")
}

/// Polls `check` until it returns Some or the deadline passes (then panics naming `what`).
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates a namespaced object in the test's namespace from JSON.
pub async fn create<K>(ns: &TestNamespace, value: serde_json::Value) -> K
where
    K: serde::de::DeserializeOwned
        + serde::Serialize
        + Clone
        + std::fmt::Debug
        + kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>,
{
    let obj: K = serde_json::from_value(value).expect("valid object");
    ns.api::<K>()
        .create(&PostParams::default(), &obj)
        .await
        .expect("create")
}

/// One of the operator's roles, run in the test process and scoped to the test's
/// namespace.
#[derive(Clone, Copy, Debug)]
pub enum Role {
    Scheduler,
    Pools,
    Supervisor,
}

/// Starts `role`; returns its task and the metrics registry it reports into.
pub fn start_role(
    ns: &TestNamespace,
    role: Role,
) -> (tokio::task::JoinHandle<()>, triad::serve::State) {
    let serve = triad::serve::State::new();
    let ctx = triad::k8s::RoleContext {
        client: ns.client.clone(),
        leader: triad::k8s::lease::LeaderGate::always(),
        serve: serve.clone(),
        namespace: Some(ns.name.clone()),
    };
    let task = tokio::spawn(async move {
        let result = match role {
            Role::Scheduler => triad::scheduler::run(ctx).await,
            Role::Pools => triad::pool::run(ctx).await,
            Role::Supervisor => triad::supervisor::run(ctx).await,
        };
        if let Err(e) = result {
            eprintln!("{role:?} stopped: {e}");
        }
    });
    (task, serve)
}

/// The value of an unlabelled sample (`name value`) in a registry's exposition.
pub fn metric_value(serve: &triad::serve::State, name: &str) -> Option<f64> {
    serve.encode_metrics().lines().find_map(|line| {
        let (key, value) = line.split_once(' ')?;
        (key == name).then(|| value.trim().parse().ok())?
    })
}

/// The image of the tests' agent pods: Triad's image plus busybox under `/bin`, the image
/// a user builds `FROM` Triad's when the work needs a shell (`hack/image.sh`).
pub const AGENT_IMAGE: &str = "localhost/triad-busybox:dev";

/// Where scratch directories live: world-writable, because agent containers run as uid
/// 65532, and mounted into agent pods at the same path (see [`agent_pod_spec`]).
fn scratch_root() -> PathBuf {
    let root = std::env::temp_dir().join("triad-e2e");
    std::fs::create_dir_all(&root).expect("scratch root");
    set_mode(&root, 0o1777);
    root
}

fn set_mode(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// A fresh scratch directory for logs the test's work commands write, on the host or in
/// an agent pod.
pub fn scratch_dir(prefix: &str) -> PathBuf {
    let dir = scratch_root().join(format!("{prefix}-{}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    set_mode(&dir, 0o777);
    dir
}

/// An AgentPool's pod template: one work container of [`AGENT_IMAGE`] that runs
/// `sh -c <script>` for each item (with `POD_NAME` in its env), with the scratch
/// directories mounted from the host so the test can read what the work wrote. The
/// hostPath needs the pool's `podSecurity: Privileged` ([`PRIVILEGED`]).
/// The pool setting that lets [`agent_pod_spec`]'s hostPath mount through.
pub const PRIVILEGED: &str = "Privileged";

/// The name of the container Triad adds to every agent pod.
pub const AGENT_CONTAINER: &str = "triad-agent";

pub fn agent_pod_spec(script: &str, env: serde_json::Value) -> serde_json::Value {
    let root = scratch_root().display().to_string();
    let mut env = env.as_array().cloned().unwrap_or_default();
    env.insert(
        0,
        serde_json::json!({"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}),
    );
    serde_json::json!({
        "terminationGracePeriodSeconds": 5,
        "containers": [{
            "name": "work", "image": AGENT_IMAGE,
            "command": ["sh", "-c", script],
            "env": env,
            "volumeMounts": [{"name": "scratch", "mountPath": root}]
        }],
        "volumes": [{"name": "scratch", "hostPath": {"path": root, "type": "Directory"}}]
    })
}

// === impl the node's runtime ===

/// The test cluster's containerd socket, for `crictl` and `ctr` as a node's operator uses
/// them.
pub fn containerd_socket() -> PathBuf {
    kubeconfig_path()
        .parent()
        .expect("cluster state dir")
        .join("containerd/containerd.sock")
}

/// The running container of a pod's `container` as containerd knows it: its id (from the
/// pod's status, without the `containerd://` prefix).
pub fn container_id(pod: &k8s_openapi::api::core::v1::Pod, container: &str) -> Option<String> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == container && c.state.as_ref().is_some_and(|s| s.running.is_some()))?
        .container_id
        .as_deref()?
        .strip_prefix("containerd://")
        .map(str::to_owned)
}

/// Host pids of the processes in a container: those whose cgroup path ends in its id.
pub fn container_processes(id: &str) -> Vec<i32> {
    let suffix = format!("/{id}");
    let mut pids: Vec<i32> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                .is_ok_and(|c| c.lines().any(|l| l.ends_with(&suffix)))
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// Runs `crictl` or `ctr` (namespace `k8s.io`) against the test node: its stdout, or
/// what it said when it failed.
pub fn node_tool(tool: &str, args: &[&str]) -> Result<String, String> {
    let socket = containerd_socket().display().to_string();
    let mut cmd = match tool {
        "crictl" => {
            let mut c =
                Command::new(std::env::var("TRIAD_CRICTL").unwrap_or_else(|_| "crictl".into()));
            c.args(["--runtime-endpoint", &format!("unix://{socket}")]);
            c
        }
        _ => {
            let mut c = Command::new("ctr");
            c.args(["--address", &socket, "-n", "k8s.io"]);
            c
        }
    };
    let out = cmd
        .args(args)
        .output()
        .map_err(|e| format!("{tool}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{tool} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
