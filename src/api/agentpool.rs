use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::common::default_weight;
use super::freeform::FreeForm;
use super::workitem::free_form_object;

/// A set of agent pods pulling from weighted queues.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "triad.dev",
    version = "v1alpha1",
    kind = "AgentPool",
    namespaced,
    status = "AgentPoolStatus",
    shortname = "ap",
    category = "triad",
    doc = "A pool of long-lived agent pods that pull WorkItems from weighted WorkQueues.",
    derive = "PartialEq",
    derive = "Default",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Queues", type_ = "string", json_path = ".spec.queues[*].name"),
    printcolumn(name = "Desired", type_ = "integer", json_path = ".status.desired"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.ready"),
    printcolumn(name = "Busy", type_ = "integer", json_path = ".status.busy"),
    printcolumn(
        name = "Idle",
        type_ = "integer",
        json_path = ".status.idle",
        priority = "1"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.minReplicas) || !has(self.maxReplicas) || self.minReplicas <= self.maxReplicas").message(
    "spec.minReplicas must not exceed spec.maxReplicas"
))]
pub struct AgentPoolSpec {
    /// Queues to pull from, with relative weights.
    #[x_kube(validation = Rule::new("self.size() >= 1 && self.size() <= 16").message(
        "spec.queues must list 1 to 16 queues, each {name: <WorkQueue>, weight: <1-100>}"
    ))]
    #[schemars(length(max = 16))]
    pub queues: Vec<PoolQueue>,
    /// Desired agents; the scale subresource writes it, so `kubectl scale`, HPA and KEDA
    /// drive the pool. Without `maxReplicas` it is the count; with `maxReplicas` (Triad
    /// autoscales on queue depth) it is a floor: at least this many agents, more when the
    /// queues call for them, never more than `maxReplicas`.
    // Not nullable in the schema, unlike other `Option`s: the scale subresource refuses
    // `replicas: null` (what a template renders for an unset value); without `nullable`
    // the API server prunes the null first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "replicas")]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 1000").message("spec.replicas must be between 0 and 1000"))]
    pub replicas: Option<i32>,
    /// With `maxReplicas` set, Triad scales the pool on queue depth between these (and
    /// not below `replicas`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0").message("spec.minReplicas must be non-negative"))]
    pub min_replicas: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 1000").message("spec.maxReplicas must be between 1 and 1000"))]
    pub max_replicas: Option<i32>,
    #[serde(default)]
    pub scaling: Scaling,
    /// Agent heartbeat lease duration; agents renew at a third of it.
    #[serde(default = "default_lease_seconds")]
    #[x_kube(validation = Rule::new("self >= 3 && self <= 600").message(
        "spec.leaseSeconds must be between 3 and 600"
    ))]
    pub lease_seconds: i32,
    #[serde(default)]
    pub lifecycle: Lifecycle,
    #[serde(default)]
    pub empty_queue_policy: EmptyQueuePolicy,
    /// How the work container runs items: `PerItem` (one process per item, the
    /// default) or `Stream` (one long-lived process, items as JSON lines on stdin).
    #[serde(default)]
    pub work_mode: WorkMode,
    /// What the template may ask of the node. `Restricted` (the default) is Kubernetes'
    /// restricted Pod Security profile: no privileged containers, host namespaces,
    /// hostPath volumes or added capabilities, and those defaults filled in.
    /// `Privileged` turns the checks off, for work that must touch the node.
    #[serde(default)]
    pub pod_security: PodSecurity,
    /// Pod template of the work: its first container is the work container, whose
    /// `command` (and `args`) Triad runs once per item, through the runner it installs.
    /// Triad adds the agent container, the only one that holds the pod's service-account
    /// token. Kept schemaless here so the CRD stays small; the pool controller reports
    /// a bad template as a condition (one nested more than 64 levels deep too).
    #[schemars(schema_with = "free_form_object")]
    pub template: FreeForm,
}

#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema,
)]
pub enum WorkMode {
    /// One process per item: the payload on stdin and in `TRIAD_PAYLOAD`, reports to
    /// the file `$TRIAD_REPORT`.
    #[default]
    PerItem,
    /// One process for many items: each item a JSON line on stdin, report lines on
    /// stdout, the item ended by a `{"done": {}}` line.
    Stream,
}

#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema,
)]
pub enum PodSecurity {
    /// Kubernetes' restricted Pod Security profile, enforced on the template.
    #[default]
    Restricted,
    /// No checks: the template may ask for host access.
    Privileged,
}

fn replicas(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
    g.subschema_for::<i32>()
}

fn default_lease_seconds() -> i32 {
    15
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolQueue {
    #[x_kube(validation = Rule::new("self.size() > 0").message("spec.queues[].name must name a WorkQueue"))]
    #[schemars(length(max = 63))]
    pub name: String,
    #[serde(default = "default_weight")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 100").message("spec.queues[].weight must be between 1 and 100"))]
    pub weight: i32,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Scaling {
    /// Target queued items per agent.
    #[serde(default = "default_items_per_agent")]
    #[x_kube(validation = Rule::new("self >= 1").message("spec.scaling.itemsPerAgent must be at least 1"))]
    pub items_per_agent: i32,
    /// Wait this long with less work before removing agents.
    #[serde(default = "default_scale_down_delay")]
    #[x_kube(validation = Rule::new("self >= 0").message("spec.scaling.scaleDownDelaySeconds must be non-negative"))]
    pub scale_down_delay_seconds: i64,
}

impl Default for Scaling {
    fn default() -> Self {
        Self {
            items_per_agent: default_items_per_agent(),
            scale_down_delay_seconds: default_scale_down_delay(),
        }
    }
}

fn default_items_per_agent() -> i32 {
    5
}
fn default_scale_down_delay() -> i64 {
    30
}

#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema,
)]
pub enum LifecycleType {
    #[default]
    Persistent,
    Mortal,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.type != 'Mortal' || has(self.maxItems)").message(
    "spec.lifecycle.maxItems is required when spec.lifecycle.type is Mortal"
))]
pub struct Lifecycle {
    #[serde(default, rename = "type")]
    pub type_: LifecycleType,
    /// Mortal agents exit after this many items and are replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1").message("spec.lifecycle.maxItems must be at least 1"))]
    pub max_items: Option<i32>,
}

#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema,
)]
pub enum EmptyQueuePolicy {
    /// Keep waiting for work.
    #[default]
    Wait,
    /// Exit 0 when every queue is empty (the pool replaces it only if more work arrives).
    Exit,
    /// Let the pool controller remove idle agents down to minReplicas.
    ScaleDown,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentPoolStatus {
    /// Agent pods that exist (the scale subresource's status replicas).
    #[serde(default)]
    pub replicas: i32,
    #[serde(default)]
    pub desired: i32,
    #[serde(default)]
    pub ready: i32,
    #[serde(default)]
    pub busy: i32,
    #[serde(default)]
    pub idle: i32,
    /// Label selector of the pool's pods, for the scale subresource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = super::bounds::MAX_SELECTOR_LEN))]
    pub selector: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "super::bounds::bounded_conditions")]
    pub conditions: Vec<Condition>,
}
