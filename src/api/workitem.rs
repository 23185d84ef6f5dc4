use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::bounds::{
    MAX_CHECKPOINT_LEN, MAX_MESSAGE_LEN, MAX_NAME_LEN, MAX_PROGRESS_MESSAGE_LEN, MAX_REASON_LEN,
    MAX_RESULT_PROPERTIES, MAX_STATUS_COUNTERS, MAX_WAITING_LEN, MAX_WORD_LEN, bounded_conditions,
};
use super::common::{Counters, default_priority};
use super::freeform::FreeForm;

/// Largest payload, serialized, that Triad accepts on a WorkItem. CEL cannot measure a
/// free-form object's serialized size, so the API server bounds its shape (keys) and the
/// scheduler and agents check the bytes.
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;
/// Deepest payload nesting Triad accepts (see `FreeForm`): deeper payloads still decode,
/// as a marker, and their items fail with [`PAYLOAD_TOO_DEEP`].
pub const MAX_PAYLOAD_DEPTH: usize = super::freeform::MAX_FREE_FORM_DEPTH;
/// The reason an item (or request) with a too-deep payload fails (is refused) with.
pub const PAYLOAD_TOO_DEEP: &str = "PayloadTooDeep";
/// Largest result, serialized, an agent writes back to an item. The schema cannot bound
/// a schemaless object's bytes (only its keys, [`super::MAX_RESULT_PROPERTIES`]): the
/// agent refuses a larger `result` report line (`core::report`), and an attempt that
/// exits 0 after one ends FailedPermanently, reason `ResultTooLarge`.
pub const MAX_RESULT_BYTES: usize = 16 * 1024;
/// RFC 3339 as Triad's `Time` decodes it. The API server's `date-time` format alone also
/// takes more than nine fraction digits, which the operator then cannot read, and a
/// lower-case `t`, which the CEL rule below then cannot read.
const RFC3339: &str = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})$";
/// Times Triad can decode (jiff ends on 9999-12-30). The rule also makes the API server
/// refuse an array here: for a string with a `format`, its schema check lets arrays through.
const TIME_RANGE: &str =
    "self >= timestamp('0001-01-01T00:00:00Z') && self <= timestamp('9999-12-30T00:00:00Z')";
/// Bounded histories kept in status.
pub const MAX_ATTEMPT_HISTORY: usize = 10;
pub const MAX_INTERVENTION_HISTORY: usize = 20;

/// One unit of work.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "triad.dev",
    version = "v1alpha1",
    kind = "WorkItem",
    namespaced,
    status = "WorkItemStatus",
    shortname = "wi",
    category = "triad",
    doc = "One unit of work: pulled from a WorkQueue by an agent, run, supervised and retried by Triad.",
    derive = "PartialEq",
    derive = "Default",
    selectable = ".spec.queue",
    selectable = ".status.queue",
    selectable = ".status.phase",
    selectable = ".status.claim.agent",
    printcolumn(name = "Queue", type_ = "string", json_path = ".spec.queue"),
    printcolumn(
        name = "Type",
        type_ = "string",
        json_path = ".spec.type",
        priority = "1"
    ),
    printcolumn(
        name = "Routed",
        type_ = "string",
        json_path = ".status.queue",
        priority = "1"
    ),
    printcolumn(name = "Priority", type_ = "integer", json_path = ".spec.priority"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Agent", type_ = "string", json_path = ".status.claim.agent"),
    printcolumn(name = "Attempt", type_ = "integer", json_path = ".status.attempt"),
    printcolumn(
        name = "Progress",
        type_ = "integer",
        json_path = ".status.progress.percent"
    ),
    printcolumn(name = "Why", type_ = "string", json_path = ".status.waiting"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.queue) || has(self.type)").message(
    "spec.queue or spec.type is required: set spec.queue to a WorkQueue name, or spec.type to a type that a WorkQueue's spec.types accepts"
))]
pub struct WorkItemSpec {
    /// The WorkQueue to run on. Either this or `type` is required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.size() > 0 && self.size() <= 63").message(
        "spec.queue must be a WorkQueue name of 1 to 63 characters"
    ))]
    #[schemars(length(max = 63))]
    pub queue: Option<String>,
    /// The item's type; routed to the WorkQueue whose `spec.types` lists it.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.size() > 0 && self.size() <= 63").message(
        "spec.type must be 1 to 63 characters"
    ))]
    #[schemars(length(max = 63))]
    pub type_: Option<String>,
    /// 0 to 1000, higher runs first. Default 500.
    #[serde(default = "default_priority")]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 1000").message(
        "spec.priority must be between 0 and 1000 (higher runs first; the default is 500)"
    ))]
    pub priority: i32,
    /// Free-form JSON object handed to the work command on stdin and in `TRIAD_PAYLOAD`.
    /// At most 64 KiB serialized and nested at most 64 levels deep (objects and arrays);
    /// an item over either limit fails (reason `PayloadTooLarge` or `PayloadTooDeep`):
    /// flatten large or deep inputs, or pass them by reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "bounded_free_form_object")]
    pub payload: Option<FreeForm>,
    /// Names of WorkItems in the same namespace that must succeed before this one runs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 253)))]
    pub depends_on: Vec<String>,
    /// Do not run before this time (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("pattern" = RFC3339))]
    #[x_kube(validation = Rule::new(TIME_RANGE).message(
        "spec.notBefore must be an RFC 3339 time from year 0001 to 9999-12-30, for example 2030-01-01T00:00:00Z"
    ))]
    pub not_before: Option<Time>,
    /// Give up (DeadLettered, reason DeadlineExceeded) after this time, even with attempts left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("pattern" = RFC3339))]
    #[x_kube(validation = Rule::new(TIME_RANGE).message(
        "spec.deadline must be an RFC 3339 time from year 0001 to 9999-12-30, for example 2030-01-01T00:00:00Z"
    ))]
    pub deadline: Option<Time>,
    /// Limits per counter (`wallSeconds`, `cpuSeconds`, `tokens`, `cost`, …); missing
    /// counters take the queue's `defaultBudget`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32))]
    #[x_kube(validation = Rule::new("self.all(k, self[k] >= 0.0)").message(
        "spec.budget values must be non-negative numbers, for example {tokens: 20000, cost: 0.5}"
    ))]
    pub budget: Counters,
    /// Set to true to cancel: queued work ends at once, running work is stopped.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cancel: bool,
}

/// Where an item is in its life; see the design brief's diagram.
#[derive(
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    schemars::JsonSchema,
)]
pub enum Phase {
    Pending,
    Queued,
    Running,
    Backoff,
    Succeeded,
    Failed,
    DeadLettered,
    Held,
    Cancelled,
}

impl Phase {
    pub const ALL: [Phase; 9] = [
        Phase::Pending,
        Phase::Queued,
        Phase::Running,
        Phase::Backoff,
        Phase::Succeeded,
        Phase::Failed,
        Phase::DeadLettered,
        Phase::Held,
        Phase::Cancelled,
    ];

    /// Succeeded, Failed and Cancelled never change again.
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Failed | Phase::Cancelled)
    }

    /// Done for now: terminal, or DeadLettered (which only a redrive revives).
    pub fn is_finished(self) -> bool {
        self.is_terminal() || self == Phase::DeadLettered
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Queued => "Queued",
            Phase::Running => "Running",
            Phase::Backoff => "Backoff",
            Phase::Succeeded => "Succeeded",
            Phase::Failed => "Failed",
            Phase::DeadLettered => "DeadLettered",
            Phase::Held => "Held",
            Phase::Cancelled => "Cancelled",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The status the API server shows for an item nobody has written status to: the CRD
/// defaults `status` to `{phase: Queued}` when it reads an item from storage, so
/// `kubectl get wi` shows Queued, `kubectl get wi -w` starts at Queued and
/// `--field-selector status.phase=Queued` finds a fresh item, without a write on the
/// fast path. Triad decodes exactly this status as no status (`api::root`): a fresh item
/// is not yet admitted, and the scheduler and agents keep telling the two apart.
pub const SERVER_DEFAULT_PHASE: Phase = Phase::Queued;

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("default" = {"phase": "Queued"}))]
#[x_kube(validation = Rule::new(
    "!has(oldSelf.phase) || !(oldSelf.phase in ['Succeeded', 'Failed', 'Cancelled']) || (has(self.phase) && self.phase == oldSelf.phase)"
).message("status.phase: Succeeded, Failed and Cancelled are terminal and cannot change; create a new WorkItem to run the work again"))]
pub struct WorkItemStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// The queue the scheduler routed a typed (or escalated) item to; overrides spec.queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_NAME_LEN))]
    pub queue: Option<String>,
    /// Priority in effect, when the scheduler raised it by escalation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    /// Attempts started so far.
    #[serde(default)]
    pub attempt: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<Claim>,
    /// Earliest time the next attempt may start (Backoff).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<Time>,
    /// Why a non-running item is not running, in a few words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_WAITING_LEN))]
    pub waiting: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = MAX_STATUS_COUNTERS))]
    pub usage: Counters,
    /// Budget granted on top of spec.budget by `Extend` interventions.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = MAX_STATUS_COUNTERS))]
    pub budget_extension: Counters,
    /// What the work returned: the last `result` it reported. At most 16 KiB serialized
    /// and nested at most 32 levels deep: the agent refuses a larger or deeper one, and
    /// an attempt that exits 0 after it ends FailedPermanently, reason `ResultTooLarge`.
    // Decoded depth-safely (FreeForm): an agent's token can write any JSON here, and one
    // value nested past serde_json's limit must not make every role's list of items
    // undecodable. The schema bounds only its keys: neither OpenAPI nor CEL can measure
    // a schemaless object's bytes or depth, so those are the writer's (core::report).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "result_object")]
    pub result: Option<FreeForm>,
    /// The outcome the holding agent (or the supervisor, fencing it out) reported for
    /// the current attempt; the scheduler turns it into the next phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<ItemError>,
    /// The newest attempts' records, at most 10.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_ATTEMPT_HISTORY))]
    pub attempts: Vec<AttemptRecord>,
    /// The newest interventions, at most 20.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_INTERVENTION_HISTORY))]
    pub interventions: Vec<Intervention>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "bounded_conditions")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
}

/// Who holds the item. The epoch fences every write of the holder.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.epoch >= oldSelf.epoch").message(
    "status.claim.epoch may never decrease: every claim and every fence-out raises it"
))]
pub struct Claim {
    #[schemars(length(max = MAX_NAME_LEN))]
    pub agent: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_NAME_LEN))]
    pub pod: Option<String>,
    pub epoch: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acquired_at: Option<Time>,
    /// Name of the agent's Lease (namespace of the item), the holder's heartbeat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_NAME_LEN))]
    pub lease: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_PROGRESS_MESSAGE_LEN))]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_CHECKPOINT_LEN))]
    pub checkpoint: Option<String>,
    /// Last time progress or usage changed: what the stall monitor watches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<Time>,
}

/// What ended an attempt.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum OutcomeKind {
    /// The work command exited 0 (the agent also sets phase Succeeded).
    Succeeded,
    /// A retryable failure: the scheduler decides between Backoff and DeadLettered.
    Failed,
    /// A non-retryable failure (the agent also sets phase Failed).
    FailedPermanently,
    /// The attempt was stopped on request (cancel, supervisor restart).
    Cancelled,
    /// The holder lost its lease; the supervisor fenced it out.
    LeaseExpired,
    /// The agent gave the item back unfinished (drain); not counted as a failure.
    Released,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Outcome {
    pub kind: OutcomeKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_REASON_LEN))]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_MESSAGE_LEN))]
    pub message: Option<String>,
    /// The attempt this outcome belongs to.
    pub attempt: i32,
    /// The claim epoch the outcome was written under.
    pub epoch: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<Time>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ItemError {
    #[schemars(length(max = MAX_REASON_LEN))]
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_MESSAGE_LEN))]
    pub message: Option<String>,
    #[serde(default)]
    pub attempt: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<Time>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AttemptRecord {
    pub attempt: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_NAME_LEN))]
    pub agent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<OutcomeKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_REASON_LEN))]
    pub reason: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Intervention {
    pub at: Time,
    /// Which monitor raised it: health, budget, progress, violation.
    #[schemars(length(max = MAX_WORD_LEN))]
    pub monitor: String,
    #[schemars(length(max = MAX_REASON_LEN))]
    pub reason: String,
    /// What was done: Warn, CancelRequested, FenceOut, DeletePod, Escalate, Extend, Cancel.
    #[schemars(length(max = MAX_WORD_LEN))]
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_MESSAGE_LEN))]
    pub message: Option<String>,
}

/// A payload: any JSON object, bounded in keys (CEL cannot see inside it).
pub(crate) fn bounded_free_form_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "maxProperties": 256,
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// `status.result`: any JSON object, bounded in keys (its bytes are the agent's to bound,
/// see [`MAX_RESULT_BYTES`]).
fn result_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "maxProperties": MAX_RESULT_PROPERTIES,
        "x-kubernetes-preserve-unknown-fields": true
    })
}

pub(crate) fn free_form_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

impl WorkItemStatus {
    /// Whether this is the status the API server defaults for an item nobody has written
    /// status to (see [`SERVER_DEFAULT_PHASE`]). Every status Triad writes carries more:
    /// an agent's claim, the scheduler's routed queue or its "why waiting" note.
    pub fn is_server_default(&self) -> bool {
        *self
            == Self {
                phase: Some(SERVER_DEFAULT_PHASE),
                ..Self::default()
            }
    }
}

// On the root type Triad decodes with (`api::root`), not the derived one of this module.
impl super::WorkItem {
    pub fn phase(&self) -> Option<Phase> {
        self.status.as_ref().and_then(|s| s.phase)
    }

    /// The queue the item runs on: the scheduler's routing wins over spec.queue.
    pub fn effective_queue(&self) -> Option<&str> {
        self.status
            .as_ref()
            .and_then(|s| s.queue.as_deref())
            .or(self.spec.queue.as_deref())
    }

    pub fn effective_priority(&self) -> i32 {
        self.status
            .as_ref()
            .and_then(|s| s.priority)
            .unwrap_or(self.spec.priority)
    }

    pub fn epoch(&self) -> i64 {
        self.status
            .as_ref()
            .and_then(|s| s.claim.as_ref())
            .map_or(0, |c| c.epoch)
    }
}
