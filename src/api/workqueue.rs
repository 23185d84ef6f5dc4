use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::common::Counters;

/// A typed, prioritised queue and its policy.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "triad.dev",
    version = "v1alpha1",
    kind = "WorkQueue",
    namespaced,
    status = "WorkQueueStatus",
    shortname = "wq",
    category = "triad",
    doc = "A typed, prioritised queue of WorkItems and its retry, supervision, escalation and retention policy.",
    derive = "PartialEq",
    derive = "Default",
    printcolumn(name = "Types", type_ = "string", json_path = ".spec.types"),
    printcolumn(name = "Queued", type_ = "integer", json_path = ".status.queued"),
    printcolumn(name = "Running", type_ = "integer", json_path = ".status.running"),
    printcolumn(
        name = "DeadLettered",
        type_ = "integer",
        json_path = ".status.deadLettered"
    ),
    printcolumn(
        name = "Oldest",
        type_ = "integer",
        json_path = ".status.oldestQueuedSeconds",
        description = "Seconds the oldest queued item has waited"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct WorkQueueSpec {
    /// Item types this queue accepts; items with a matching `spec.type` are routed here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 63)))]
    #[x_kube(validation = Rule::new("self.all(t, t.size() > 0 && t.size() <= 63)").message(
        "spec.types entries must be 1 to 63 characters"
    ))]
    pub types: Vec<String>,
    #[serde(default)]
    pub retry: RetryPolicy,
    /// At most this many items of the queue run at once; unset means no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1").message(
        "spec.maxInFlight must be at least 1; leave it unset for no limit"
    ))]
    pub max_in_flight: Option<i32>,
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Budget for items that do not set one (per counter).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32))]
    #[x_kube(validation = Rule::new("self.all(k, self[k] >= 0.0)").message(
        "spec.defaultBudget values must be non-negative numbers"
    ))]
    pub default_budget: Counters,
    #[serde(default)]
    pub supervision: Supervision,
    #[serde(default)]
    pub escalation: Escalation,
    #[serde(default)]
    pub retention: Retention,
    /// Seconds of waiting worth one priority point, so low-priority work is never
    /// starved: effective priority = priority + waited / agingSeconds. 0 disables aging.
    #[serde(default = "default_aging_seconds")]
    #[x_kube(validation = Rule::new("self >= 0").message("spec.agingSeconds must be 0 (off) or positive"))]
    pub aging_seconds: i64,
}

fn default_aging_seconds() -> i64 {
    1
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicy {
    /// Attempts before an item is DeadLettered. Default 7.
    #[serde(default = "default_max_attempts")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 100").message(
        "spec.retry.maxAttempts must be between 1 and 100"
    ))]
    pub max_attempts: i32,
    #[serde(default)]
    pub backoff: Backoff,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: default_max_attempts(),
            backoff: Backoff::default(),
        }
    }
}

fn default_max_attempts() -> i32 {
    7
}

/// `min(baseSeconds × 2^(failures−1), maxSeconds)` with ±jitterPercent.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.maxSeconds >= self.baseSeconds").message(
    "spec.retry.backoff.maxSeconds must be at least baseSeconds"
))]
pub struct Backoff {
    #[serde(default = "default_base_seconds")]
    #[x_kube(validation = Rule::new("self >= 0.0").message("spec.retry.backoff.baseSeconds must be non-negative"))]
    pub base_seconds: f64,
    #[serde(default = "default_max_seconds")]
    pub max_seconds: f64,
    #[serde(default = "default_jitter_percent")]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 100").message(
        "spec.retry.backoff.jitterPercent must be between 0 and 100"
    ))]
    pub jitter_percent: i32,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base_seconds: default_base_seconds(),
            max_seconds: default_max_seconds(),
            jitter_percent: default_jitter_percent(),
        }
    }
}

fn default_base_seconds() -> f64 {
    10.0
}
fn default_max_seconds() -> f64 {
    600.0
}
fn default_jitter_percent() -> i32 {
    10
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Timeouts {
    /// One attempt may run at most this long (a violation when exceeded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1").message("spec.timeouts.attemptSeconds must be at least 1"))]
    pub attempt_seconds: Option<i64>,
    /// Default deadline, from creation, for items that set none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1").message("spec.timeouts.deadlineSeconds must be at least 1"))]
    pub deadline_seconds: Option<i64>,
}

#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema,
)]
pub enum StallAction {
    #[default]
    Restart,
    Escalate,
    Cancel,
}

#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema,
)]
pub enum BudgetAction {
    #[default]
    Cancel,
    Escalate,
    Extend,
}

#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema,
)]
pub enum ViolationAction {
    Warn,
    Restart,
    #[default]
    Escalate,
    Cancel,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Supervision {
    /// No progress (percent, checkpoint or usage change) for this long marks an item Stalled.
    #[serde(default = "default_stall_seconds")]
    #[x_kube(validation = Rule::new("self >= 1").message("spec.supervision.stallSeconds must be at least 1"))]
    pub stall_seconds: i64,
    #[serde(default)]
    pub on_stall: StallAction,
    #[serde(default)]
    pub on_budget_exceeded: BudgetAction,
    /// Default action for violations; `violationRules` overrides it per rule.
    #[serde(default)]
    pub on_violation: ViolationAction,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    pub violation_rules: std::collections::BTreeMap<String, ViolationAction>,
    /// Percent of a budget at which `BudgetWarning` is set.
    #[serde(default = "default_warn_percent")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 100").message(
        "spec.supervision.budgetWarningPercent must be between 1 and 100"
    ))]
    pub budget_warning_percent: i32,
    #[serde(default)]
    pub extend: ExtendPolicy,
    /// Seconds an agent has to stop a cancelled attempt before it is fenced out.
    #[serde(default = "default_grace_seconds")]
    #[x_kube(validation = Rule::new("self >= 0").message("spec.supervision.cancelGraceSeconds must be non-negative"))]
    pub cancel_grace_seconds: i64,
}

impl Default for Supervision {
    fn default() -> Self {
        Self {
            stall_seconds: default_stall_seconds(),
            on_stall: StallAction::default(),
            on_budget_exceeded: BudgetAction::default(),
            on_violation: ViolationAction::default(),
            violation_rules: Default::default(),
            budget_warning_percent: default_warn_percent(),
            extend: ExtendPolicy::default(),
            cancel_grace_seconds: default_grace_seconds(),
        }
    }
}

fn default_stall_seconds() -> i64 {
    300
}
fn default_warn_percent() -> i32 {
    80
}
fn default_grace_seconds() -> i64 {
    10
}

/// `Extend` grants up to `maxExtensions` extra budgets of `percent` % each, then cuts.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExtendPolicy {
    #[serde(default = "default_max_extensions")]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 10").message(
        "spec.supervision.extend.maxExtensions must be between 0 and 10"
    ))]
    pub max_extensions: i32,
    #[serde(default = "default_extend_percent")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 100").message(
        "spec.supervision.extend.percent must be between 1 and 100"
    ))]
    pub percent: i32,
}

impl Default for ExtendPolicy {
    fn default() -> Self {
        Self {
            max_extensions: default_max_extensions(),
            percent: default_extend_percent(),
        }
    }
}

fn default_max_extensions() -> i32 {
    1
}
fn default_extend_percent() -> i32 {
    50
}

#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema,
)]
pub enum EscalationAction {
    /// Move the item to `toQueue` (the default when `toQueue` is set).
    #[default]
    Reroute,
    /// Requeue here with priority raised by `raisePriority`.
    RaisePriority,
    /// Fail the item and report it on its request.
    Fail,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.action) || self.action != 'Reroute' || has(self.toQueue)").message(
    "spec.escalation.toQueue is required when spec.escalation.action is Reroute"
))]
pub struct Escalation {
    // The enum's own schema, not a nullable one: kube lists a nullable enum without
    // `null`, so the API server refused `action: null` (what a template renders for an
    // unset value). Without `nullable`, it prunes the null like any unset field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "escalation_action")]
    pub action: Option<EscalationAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    #[x_kube(validation = Rule::new("self.size() > 0").message(
        "spec.escalation.toQueue must name a WorkQueue"
    ))]
    pub to_queue: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 1000").message(
        "spec.escalation.raisePriority must be between 1 and 1000"
    ))]
    pub raise_priority: Option<i32>,
}

fn escalation_action(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
    g.subschema_for::<EscalationAction>()
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Retention {
    /// Succeeded and Cancelled items are deleted this long after finishing. Default 24 h.
    #[serde(default = "default_retain_succeeded")]
    #[x_kube(validation = Rule::new("self >= 0").message("spec.retention.succeededSeconds must be non-negative"))]
    pub succeeded_seconds: i64,
    /// Failed and DeadLettered items are deleted this long after finishing. Default 7 days.
    #[serde(default = "default_retain_failed")]
    #[x_kube(validation = Rule::new("self >= 0").message("spec.retention.failedSeconds must be non-negative"))]
    pub failed_seconds: i64,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            succeeded_seconds: default_retain_succeeded(),
            failed_seconds: default_retain_failed(),
        }
    }
}

fn default_retain_succeeded() -> i64 {
    24 * 3600
}
fn default_retain_failed() -> i64 {
    7 * 24 * 3600
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkQueueStatus {
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
    #[serde(default)]
    pub oldest_queued_seconds: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "super::bounds::bounded_conditions")]
    pub conditions: Vec<Condition>,
}
