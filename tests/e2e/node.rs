//! Triad as a user runs it: the chart installed with `helm install` from Triad's image,
//! agent pods as containers on a real kubelet (containerd and runc), their logs read
//! through the API server, and the image that `make image` builds held against the
//! Dockerfile.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use serde_json::{Value, json};
use triad::api::{AgentPool, Phase, WorkItem, WorkQueue};

use crate::support::{
    PRIVILEGED, TestNamespace, agent_pod_spec, container_id, container_processes, create,
    kubeconfig_path, kubectl, repo_root, wait_for,
};

const WAIT: Duration = Duration::from_secs(120);

fn helm() -> String {
    std::env::var("TRIAD_HELM").unwrap_or_else(|_| "helm".into())
}

/// A Helm release of `charts/triad` in the test's namespace, watching only it;
/// uninstalled (with its cluster-scoped RBAC and policy) when dropped.
struct Release(String);

impl Release {
    fn install(ns: &TestNamespace) -> Self {
        let out = Command::new(helm())
            .env("KUBECONFIG", kubeconfig_path())
            .current_dir(repo_root())
            .args(["install", &ns.name, "charts/triad", "--namespace", &ns.name])
            .args(["--set", &format!("watchNamespace={}", ns.name)])
            .args(["--set", "roles.replicas=1", "--wait", "--timeout", "180s"])
            .output()
            .expect("run helm");
        let release = Self(ns.name.clone());
        assert!(
            out.status.success(),
            "helm install failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&kubectl(&["-n", &ns.name, "describe", "pods"]).stdout)
        );
        release
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        let _ = Command::new(helm())
            .env("KUBECONFIG", kubeconfig_path())
            .args(["uninstall", &self.0, "--namespace", &self.0, "--wait=false"])
            .output();
    }
}

/// The `/proc/<pid>/status` of the container's first process.
fn process_status(container: &str) -> String {
    let pid = *container_processes(container)
        .first()
        .expect("the container has processes");
    std::fs::read_to_string(format!("/proc/{pid}/status")).expect("process status")
}

fn status_field<'a>(status: &'a str, field: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .map(str::trim)
        .unwrap_or_default()
}

/// The mount options of the container's root filesystem, as its first process sees it.
fn root_mount_options(container: &str) -> String {
    let pid = *container_processes(container)
        .first()
        .expect("the container has processes");
    let info = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).expect("mountinfo");
    info.lines()
        .find_map(|l| {
            let fields: Vec<&str> = l.split(' ').collect();
            (fields.get(4) == Some(&"/")).then(|| fields.get(5).map(|s| s.to_string()))?
        })
        .unwrap_or_default()
}

/// `triad logs` (the kubectl plugin's code) as a user runs it.
fn triad_logs(ns: &TestNamespace, item: &str, attempt: i32) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_triad"))
        .env("KUBECONFIG", kubeconfig_path())
        .args([
            "logs",
            item,
            "--attempt",
            &attempt.to_string(),
            "-n",
            &ns.name,
        ])
        .output()
        .expect("run triad logs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_chart_runs_the_operator_from_its_image_and_agents_run_on_the_kubelet() {
    let ns = TestNamespace::new("helm").await;
    let _release = Release::install(&ns);

    // The operator runs from ghcr.io/triad-dev/triad:<appVersion> under the chart's
    // securityContext, and runc enforces it.
    let operator = ns
        .api::<Pod>()
        .list(&ListParams::default().labels("app.kubernetes.io/name=triad"))
        .await
        .expect("list operator pods")
        .items
        .into_iter()
        .next()
        .expect("the operator's pod");
    let image = operator.spec.as_ref().expect("spec").containers[0]
        .image
        .clone()
        .unwrap_or_default();
    assert!(
        image.starts_with("ghcr.io/triad-dev/triad:"),
        "the chart's default image: {image}"
    );
    let id = container_id(&operator, "triad").expect("the operator's container runs");
    let status = process_status(&id);
    assert!(
        status_field(&status, "Uid:").starts_with("65532"),
        "runs as the image's non-root user: {}",
        status_field(&status, "Uid:")
    );
    assert_eq!(
        status_field(&status, "CapEff:"),
        "0000000000000000",
        "no capabilities"
    );
    assert_eq!(status_field(&status, "NoNewPrivs:"), "1");
    assert_eq!(
        status_field(&status, "Seccomp:"),
        "2",
        "seccomp RuntimeDefault"
    );
    assert!(
        root_mount_options(&id).starts_with("ro"),
        "read-only root filesystem"
    );

    // Agents from an AgentPool: the first attempt fails, the retry succeeds.
    create::<WorkQueue>(
        &ns,
        json!({"metadata": {"name": "q"}, "spec": {
            "retry": {"maxAttempts": 3, "backoff": {"baseSeconds": 1, "maxSeconds": 1}}}}),
    )
    .await;
    let script = r#"echo "work of $TRIAD_ITEM attempt $TRIAD_ATTEMPT"; [ "$TRIAD_ATTEMPT" -ge 2 ]"#;
    create::<AgentPool>(
        &ns,
        json!({"metadata": {"name": "workers"}, "spec": {
            "queues": [{"name": "q"}], "replicas": 1, "leaseSeconds": 5, "podSecurity": PRIVILEGED,
            "template": {"spec": agent_pod_spec(script, json!([]))}}}),
    )
    .await;
    create::<WorkItem>(
        &ns,
        json!({"metadata": {"name": "twice"}, "spec": {"queue": "q"}}),
    )
    .await;
    let items = ns.api::<WorkItem>();
    let done = wait_for(WAIT, "the item Succeeded on its second attempt", || async {
        let item = items.get("twice").await.ok()?;
        (item.phase() == Some(Phase::Succeeded)).then_some(item)
    })
    .await;
    let status = done.status.expect("status");
    assert_eq!(status.attempt, 2);
    let pod = status
        .claim
        .and_then(|c| c.pod)
        .expect("the claim names its pod");

    // kubectl logs: the kubelet serves the agent container's log.
    let out = kubectl(&["-n", &ns.name, "logs", &pod]);
    let log = String::from_utf8_lossy(&out.stdout);
    let key = format!("{}/twice", ns.name);
    assert!(out.status.success(), "kubectl logs: {out:?}");
    for attempt in [1, 2] {
        assert!(
            log.contains(&format!("work of {key} attempt {attempt}")),
            "attempt {attempt} in the pod log:\n{log}"
        );
    }

    // kubectl triad logs --attempt N: that attempt's lines, not the other's.
    for (attempt, other) in [(1, 2), (2, 1)] {
        let out = triad_logs(&ns, "twice", attempt);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "triad logs --attempt {attempt}: {out:?}"
        );
        assert!(
            text.contains(&format!("work of {key} attempt {attempt}")),
            "attempt {attempt}:\n{text}"
        );
        assert!(
            !text.contains(&format!("work of {key} attempt {other}")),
            "attempt {attempt} shows attempt {other}:\n{text}"
        );
    }
    let out = triad_logs(&ns, "twice", 3);
    assert!(!out.status.success(), "attempt 3 never ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pool_whose_image_is_missing_says_so_and_loses_no_item() {
    let ns = TestNamespace::new("noimage").await;
    let _roles = [crate::support::Role::Pools].map(|r| crate::support::start_role(&ns, r));
    create::<WorkQueue>(&ns, json!({"metadata": {"name": "q"}, "spec": {}})).await;
    let image = "localhost/triad-no-such-image:1";
    let mut spec = agent_pod_spec("true", json!([]));
    spec["containers"][0]["image"] = json!(image);
    create::<AgentPool>(
        &ns,
        json!({"metadata": {"name": "broken"}, "spec": {
            "queues": [{"name": "q"}], "replicas": 1, "podSecurity": PRIVILEGED,
            "template": {"spec": spec}}}),
    )
    .await;
    create::<WorkItem>(
        &ns,
        json!({"metadata": {"name": "waits"}, "spec": {"queue": "q"}}),
    )
    .await;
    let pools = ns.api::<AgentPool>();
    let message = wait_for(WAIT, "PodsHealthy=False with ImagePullBackOff", || async {
        let pool = pools.get("broken").await.ok()?;
        let condition = pool
            .status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == "PodsHealthy")?;
        (condition.status == "False" && condition.reason == "ImagePullBackOff")
            .then_some(condition.message)
    })
    .await;
    assert!(message.contains(image), "names the image: {message}");
    let item = ns.api::<WorkItem>().get("waits").await.expect("the item");
    assert!(
        !matches!(
            item.phase(),
            Some(Phase::Running | Phase::Failed | Phase::DeadLettered)
        ),
        "the item waits for an agent: {:?}",
        item.phase()
    );
}

// === impl the image against the Dockerfile ===

/// The OCI layout `hack/image.sh` wrote for Triad's image.
fn image_layout() -> PathBuf {
    std::env::var_os("TRIAD_IMAGES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/triad/images")
        })
        .join("triad")
}

fn blob(layout: &std::path::Path, digest: &str) -> Value {
    let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
    let text = std::fs::read_to_string(layout.join("blobs/sha256").join(hex))
        .expect("a blob of the layout");
    serde_json::from_str(&text).expect("a JSON blob")
}

/// The final stage of the Dockerfile: (USER, EXPOSE ports, ENTRYPOINT, CMD).
fn dockerfile_final_stage() -> (String, Vec<String>, Value, Value) {
    let text = std::fs::read_to_string(repo_root().join("Dockerfile")).expect("Dockerfile");
    let last = text.rsplit("\nFROM ").next().expect("a final stage");
    let (mut user, mut ports, mut entrypoint, mut cmd) =
        (String::new(), Vec::new(), Value::Null, Value::Null);
    for line in last.lines() {
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        match word {
            "USER" => user = rest.trim().to_owned(),
            "EXPOSE" => ports.extend(rest.split_whitespace().map(|p| format!("{p}/tcp"))),
            "ENTRYPOINT" => entrypoint = serde_json::from_str(rest).expect("exec-form ENTRYPOINT"),
            "CMD" => cmd = serde_json::from_str(rest).expect("exec-form CMD"),
            _ => {}
        }
    }
    (user, ports, entrypoint, cmd)
}

#[test]
fn the_image_built_here_agrees_with_the_dockerfile() {
    let layout = image_layout();
    let index: Value = serde_json::from_str(
        &std::fs::read_to_string(layout.join("index.json"))
            .expect("the image's layout (hack/image.sh build)"),
    )
    .expect("index.json");
    let manifest = blob(
        &layout,
        index["manifests"][0]["digest"]
            .as_str()
            .expect("a manifest"),
    );
    let config = blob(
        &layout,
        manifest["config"]["digest"].as_str().expect("a config"),
    );
    let config = &config["config"];
    let (user, ports, entrypoint, cmd) = dockerfile_final_stage();
    assert_eq!(config["User"], json!(user), "USER");
    let mut exposed: Vec<String> = config["ExposedPorts"]
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    exposed.sort();
    assert_eq!(exposed, ports, "EXPOSE");
    assert_eq!(config["Entrypoint"], entrypoint, "ENTRYPOINT");
    assert_eq!(config["Cmd"], cmd, "CMD");
}
