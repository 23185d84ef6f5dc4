use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::common::Counters;
use super::freeform::FreeForm;
use super::workitem::bounded_free_form_object;

/// What a user asks for; the scheduler decomposes it into owned WorkItems.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "triad.dev",
    version = "v1alpha1",
    kind = "WorkRequest",
    namespaced,
    status = "WorkRequestStatus",
    shortname = "wr",
    category = "triad",
    doc = "A request for work: a task graph (and fan-outs) that the scheduler turns into WorkItems.",
    derive = "PartialEq",
    derive = "Default",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Done", type_ = "string", json_path = ".status.progress"),
    printcolumn(name = "Failed", type_ = "integer", json_path = ".status.failed"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct WorkRequestSpec {
    /// Default priority of the request's items, 0 to 1000.
    #[serde(default = "super::common::default_priority")]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 1000").message(
        "spec.priority must be between 0 and 1000 (higher runs first; the default is 500)"
    ))]
    pub priority: i32,
    #[x_kube(validation = Rule::new("self.size() >= 1 && self.size() <= 500").message(
        "spec.tasks must list 1 to 500 tasks"
    ))]
    #[schemars(length(max = 500))]
    pub tasks: Vec<Task>,
    /// Cancels every item of the request.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cancel: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.queue) || has(self.type)").message(
    "spec.tasks[].queue or spec.tasks[].type is required"
))]
// Each fan-out item's payload is the task's plus forEach.key, and an item's payload
// takes at most 256 keys. The schemaless payload is typed only through dyn(), and `in`
// does not see its keys there, so a key that would replace one of 256 is refused too.
#[x_kube(validation = Rule::new(
    "!has(self.forEach) || !has(self.payload) || size(dyn(self.payload)) < 256"
).message(
    "spec.tasks[].payload may have at most 255 keys with forEach, which adds forEach.key to each item's payload (256 at most)"
))]
pub struct Task {
    /// Unique in the request; lower-case letters, digits and '-'.
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?$')").message(
        "spec.tasks[].name must be 1 to 40 lower-case letters, digits or '-', starting and ending alphanumeric"
    ))]
    #[schemars(length(max = 40))]
    pub name: String,
    // queue and type take the item's bounds: a request must not plan items that the
    // API server then refuses.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    #[x_kube(validation = Rule::new("self.size() > 0 && self.size() <= 63").message(
        "spec.tasks[].type must be 1 to 63 characters"
    ))]
    pub type_: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    #[x_kube(validation = Rule::new("self.size() > 0 && self.size() <= 63").message(
        "spec.tasks[].queue must be a WorkQueue name of 1 to 63 characters"
    ))]
    pub queue: Option<String>,
    /// Overrides the request's priority.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 1000").message(
        "spec.tasks[].priority must be between 0 and 1000"
    ))]
    pub priority: Option<i32>,
    /// Each item's payload (with forEach, plus `forEach.key`); nested at most 64 levels
    /// deep, or the request is refused (`Valid=False`, reason `PayloadTooDeep`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "bounded_free_form_object")]
    pub payload: Option<FreeForm>,
    /// Names of other tasks of this request that must succeed first (all of a fan-out).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 40)))]
    pub depends_on: Vec<String>,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32))]
    #[x_kube(validation = Rule::new("self.all(k, self[k] >= 0.0)").message(
        "spec.tasks[].budget values must be non-negative numbers"
    ))]
    pub budget: Counters,
    /// Fan-out: one item per value, each with the value in its payload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_each: Option<FanOut>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct FanOut {
    /// One item per value; each value goes under `key` in its item's payload, so it may
    /// be nested at most 63 levels deep (the payload's 64 less one), or the request is
    /// refused (`Valid=False`, reason `PayloadTooDeep`).
    #[schemars(schema_with = "free_form_list")]
    pub values: Vec<FreeForm>,
    /// Payload key that receives the value. Default `item`.
    #[serde(default = "default_fan_out_key")]
    #[schemars(length(min = 1, max = 63))]
    pub key: String,
}

fn default_fan_out_key() -> String {
    "item".into()
}

fn free_form_list(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "minItems": 1,
        "maxItems": 1000,
        "items": {"x-kubernetes-preserve-unknown-fields": true}
    })
}

#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema,
)]
pub enum RequestPhase {
    #[default]
    Pending,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    Invalid,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkRequestStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<RequestPhase>,
    #[serde(default)]
    pub total: i64,
    #[serde(default)]
    pub pending: i64,
    #[serde(default)]
    pub queued: i64,
    #[serde(default)]
    pub running: i64,
    #[serde(default)]
    pub backoff: i64,
    #[serde(default)]
    pub held: i64,
    #[serde(default)]
    pub succeeded: i64,
    #[serde(default)]
    pub failed: i64,
    #[serde(default)]
    pub dead_lettered: i64,
    #[serde(default)]
    pub cancelled: i64,
    /// "succeeded/total", for the printer column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = super::bounds::MAX_REQUEST_PROGRESS_LEN))]
    pub progress: Option<String>,
    /// Items that failed, dead-lettered or were escalated to failure: the first 20 by
    /// name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = super::bounds::MAX_FAILED_ITEMS),
        inner(length(max = super::bounds::MAX_NAME_LEN))
    )]
    pub failed_items: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "super::bounds::bounded_conditions")]
    pub conditions: Vec<Condition>,
}
