use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

/// Named non-negative counters: a budget, or usage against it. `wallSeconds` and
/// `cpuSeconds` are measured by the agent runtime; other names (`tokens`, `cost`, …)
/// come from the work command's usage reports.
pub type Counters = BTreeMap<String, f64>;

pub const WALL_SECONDS: &str = "wallSeconds";
pub const CPU_SECONDS: &str = "cpuSeconds";

/// Labels and annotations Triad sets or reads.
pub mod labels {
    /// Set on items a WorkRequest creates: the owning request's name.
    pub const REQUEST: &str = "triad.dev/request";
    /// Set on items a WorkRequest creates: the task name inside the request.
    pub const TASK: &str = "triad.dev/task";
    /// Set on agent pods: the owning pool's name.
    pub const POOL: &str = "triad.dev/pool";
    /// Setting this annotation on a DeadLettered item (any value) asks the scheduler
    /// to redrive it; the scheduler removes it once acted on.
    pub const REDRIVE: &str = "triad.dev/redrive";
}

/// Finds a condition by type.
pub fn find_condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// True when the condition of that type is present with status "True".
pub fn condition_is_true(conditions: &[Condition], type_: &str) -> bool {
    find_condition(conditions, type_).is_some_and(|c| c.status == "True")
}

pub(crate) fn default_priority() -> i32 {
    500
}

pub(crate) fn default_weight() -> i32 {
    1
}
