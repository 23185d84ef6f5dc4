//! The Node object and its liveness: a Lease in `kube-node-lease` renewed every 10 s, and
//! the Ready condition's heartbeat refreshed through `nodes/status`, which is what the node
//! lifecycle controller reads before it taints a node `not-ready`/`unreachable` and evicts
//! its pods.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    Node, NodeAddress, NodeCondition, NodeSpec, NodeStatus, NodeSystemInfo, Taint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

pub const LEASE_NAMESPACE: &str = "kube-node-lease";
pub const LEASE_SECONDS: i32 = 40;
pub const RENEW_EVERY: Duration = Duration::from_secs(10);
pub const HOST_IP: &str = "127.0.0.1";

/// Taints the node lifecycle controller puts on a node that stopped reporting; a runner
/// that is back should not wait for the controller's next pass to lose them.
const STALE_TAINTS: [&str; 2] = [
    "node.kubernetes.io/not-ready",
    "node.kubernetes.io/unreachable",
];

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn labels(name: &str) -> BTreeMap<String, String> {
    [
        ("triad.dev/localnode", "true"),
        ("kubernetes.io/hostname", name),
        ("kubernetes.io/os", "linux"),
        ("kubernetes.io/arch", arch()),
        ("beta.kubernetes.io/os", "linux"),
        ("beta.kubernetes.io/arch", arch()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn resources() -> BTreeMap<String, Quantity> {
    [
        ("cpu", "64"),
        ("memory", "256Gi"),
        ("pods", "1000"),
        ("ephemeral-storage", "1Ti"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
    .collect()
}

fn condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    since: Timestamp,
    now: Timestamp,
) -> NodeCondition {
    NodeCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_heartbeat_time: Some(Time(now)),
        last_transition_time: Some(Time(since)),
    }
}

fn status(ready_since: Timestamp) -> NodeStatus {
    let now = Timestamp::now();
    NodeStatus {
        capacity: Some(resources()),
        allocatable: Some(resources()),
        // Only the IP: the node name does not resolve on the host.
        addresses: Some(vec![NodeAddress {
            type_: "InternalIP".into(),
            address: HOST_IP.into(),
        }]),
        conditions: Some(vec![
            condition(
                "Ready",
                "True",
                "KubeletReady",
                "triad-localnode is posting ready status",
                ready_since,
                now,
            ),
            condition(
                "MemoryPressure",
                "False",
                "KubeletHasSufficientMemory",
                "no memory pressure",
                ready_since,
                now,
            ),
            condition(
                "DiskPressure",
                "False",
                "KubeletHasNoDiskPressure",
                "no disk pressure",
                ready_since,
                now,
            ),
            condition(
                "PIDPressure",
                "False",
                "KubeletHasSufficientPID",
                "no PID pressure",
                ready_since,
                now,
            ),
        ]),
        node_info: Some(NodeSystemInfo {
            architecture: arch().into(),
            operating_system: "linux".into(),
            os_image: "triad-localnode (host processes)".into(),
            kubelet_version: format!("v0.0.0-triad-localnode-{}", env!("CARGO_PKG_VERSION")),
            container_runtime_version: "localnode://host-process".into(),
            kernel_version: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            boot_id: std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            machine_id: std::fs::read_to_string("/etc/machine-id")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Creates the Node or brings an existing one up to date (labels, no stale taints, Ready).
/// Returns the time the node became Ready, kept across heartbeats as lastTransitionTime.
pub async fn register(client: &Client, name: &str) -> anyhow::Result<Timestamp> {
    let api: Api<Node> = Api::all(client.clone());
    let now = Timestamp::now();
    let existing = api.get_opt(name).await?;
    let ready_since = existing
        .as_ref()
        .and_then(|n| n.status.as_ref()?.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready" && c.status == "True"))
        .and_then(|c| c.last_transition_time.as_ref())
        .map_or(now, |t| t.0);
    match existing {
        None => {
            let node = Node {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    labels: Some(labels(name)),
                    ..Default::default()
                },
                spec: Some(NodeSpec::default()),
                status: Some(status(ready_since)),
            };
            api.create(&PostParams::default(), &node).await?;
            tracing::info!(node = name, "registered node");
        }
        Some(node) => {
            let taints: Vec<Taint> = node
                .spec
                .as_ref()
                .and_then(|s| s.taints.clone())
                .unwrap_or_default();
            let kept: Vec<&Taint> = taints
                .iter()
                .filter(|t| !STALE_TAINTS.contains(&t.key.as_str()))
                .collect();
            let mut patch = json!({ "metadata": { "labels": labels(name) } });
            if kept.len() != taints.len() {
                patch["spec"] =
                    json!({ "taints": if kept.is_empty() { json!(null) } else { json!(kept) } });
                tracing::info!(
                    node = name,
                    removed = taints.len() - kept.len(),
                    "removing stale taints"
                );
            }
            api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            tracing::info!(node = name, "node already registered; updated it");
        }
    }
    post_status(&api, name, ready_since).await?;
    Ok(ready_since)
}

async fn post_status(api: &Api<Node>, name: &str, ready_since: Timestamp) -> kube::Result<()> {
    let patch = json!({ "status": status(ready_since) });
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(drop)
}

async fn renew_lease(client: &Client, name: &str) -> kube::Result<()> {
    let api: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
    let now = MicroTime(Timestamp::now());
    if api.get_opt(name).await?.is_some() {
        let patch = json!({ "spec": {
            "holderIdentity": name,
            "leaseDurationSeconds": LEASE_SECONDS,
            "renewTime": now,
        }});
        api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        return Ok(());
    }
    // Owned by the Node, as the kubelet does, so deleting the Node collects its Lease.
    let nodes: Api<Node> = Api::all(client.clone());
    let owner = nodes
        .get(name)
        .await?
        .metadata
        .uid
        .map(|uid| OwnerReference {
            api_version: "v1".into(),
            kind: "Node".into(),
            name: name.into(),
            uid,
            ..Default::default()
        });
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(LEASE_NAMESPACE.into()),
            owner_references: owner.map(|o| vec![o]),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(name.into()),
            lease_duration_seconds: Some(LEASE_SECONDS),
            renew_time: Some(now.clone()),
            acquire_time: Some(now),
            ..Default::default()
        }),
    };
    api.create(&PostParams::default(), &lease).await.map(drop)
}

/// Keeps the node alive until the runner exits.
pub async fn heartbeat(client: Client, name: String, ready_since: Timestamp) {
    let api: Api<Node> = Api::all(client.clone());
    let mut tick = tokio::time::interval(RENEW_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = renew_lease(&client, &name).await {
            tracing::warn!(node = %name, error = %e, "renewing node lease");
        }
        match post_status(&api, &name, ready_since).await {
            Ok(()) => {}
            // Someone deleted the Node: register it again rather than heartbeat into a void.
            Err(kube::Error::Api(s)) if s.code == 404 => {
                if let Err(e) = register(&client, &name).await {
                    tracing::warn!(node = %name, error = %e, "re-registering deleted node");
                }
            }
            Err(e) => tracing::warn!(node = %name, error = %e, "posting node status"),
        }
    }
}
