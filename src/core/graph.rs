//! A WorkRequest's task graph: validation and the items it plans.
//!
//! [`plan`] is the whole "build" step: it validates the request (task names, unknown
//! dependencies, cycles, fan-outs, payloads) and returns the WorkItems to create, in
//! dependency order, with deterministic names so that re-reconciling never duplicates.
//! Any error refuses the whole request (no items), and its message names the fix.
//!
//! Names are `<request>-<task>` and `<request>-<task>-<index>` for fan-out values.
//! When that exceeds 253 characters (long request names), the request part is cut and
//! followed by a hash of the full request name, so the task and index stay readable
//! and two long requests with a common prefix still get distinct names. Two tasks of
//! one request can still spell the same name (task `x` with a fan-out and a task
//! `x-0`); that is refused as [`GraphError::NameCollision`].

use std::collections::{BTreeMap, HashMap};

use crate::api::{
    FreeForm, MAX_PAYLOAD_BYTES, MAX_PAYLOAD_DEPTH, PAYLOAD_TOO_DEEP, Task, WorkItemSpec,
    WorkRequestSpec, labels,
};

/// Kubernetes object names (DNS-1123 subdomain).
pub const MAX_NAME: usize = 253;
/// Kubernetes label values.
pub const MAX_LABEL_VALUE: usize = 63;
/// The API's bound on `WorkItem.spec.dependsOn`.
pub const MAX_DEPENDS_ON: usize = 64;

/// Why a request is refused; the `Display` text is the condition message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GraphError {
    #[error(
        "task name {name:?} is invalid: use 1 to 40 lower-case letters, digits or '-', starting and ending with a letter or digit"
    )]
    InvalidTaskName { name: String },
    #[error("task name {name:?} is used more than once; task names must be unique")]
    DuplicateTask { name: String },
    #[error("task {task} depends on {missing:?}, which is not a task of this request")]
    UnknownDependency { task: String, missing: String },
    #[error("dependency cycle: {}; remove one of these dependsOn entries", path.join(" → "))]
    Cycle { path: Vec<String> },
    #[error("task {task}: forEach.values is empty; list at least one value or drop forEach")]
    EmptyFanOut { task: String },
    #[error("task {task}: payload must be a JSON object to take forEach key {key:?}")]
    PayloadNotObject { task: String, key: String },
    #[error("task {task}: payload is {size} bytes, over the {MAX_PAYLOAD_BYTES}-byte limit")]
    PayloadTooLarge { task: String, size: usize },
    /// `field` is the task's payload or a fan-out value, which goes one level deeper in
    /// its item's payload and so has a limit one lower.
    #[error(
        "task {task}: {field} is nested {depth} levels deep; the limit is {limit}{}: flatten it or pass it by reference (for example an object-storage URL)",
        if *limit < MAX_PAYLOAD_DEPTH {
            " (each value goes one level deeper, under forEach.key, in its item's payload)"
        } else {
            ""
        }
    )]
    PayloadTooDeep {
        task: String,
        field: String,
        depth: usize,
        limit: usize,
    },
    #[error(
        "task {task} depends on {count} items (fan-outs count each value), over the limit of {MAX_DEPENDS_ON}"
    )]
    TooManyDependencies { task: String, count: usize },
    #[error("tasks {first} and {second} both make an item named {name}; rename one")]
    NameCollision {
        name: String,
        first: String,
        second: String,
    },
}

impl GraphError {
    /// The condition reason.
    pub fn reason(&self) -> &'static str {
        match self {
            GraphError::InvalidTaskName { .. } => "InvalidTaskName",
            GraphError::DuplicateTask { .. } => "DuplicateTask",
            GraphError::UnknownDependency { .. } => "UnknownDependency",
            GraphError::Cycle { .. } => "DependencyCycle",
            GraphError::EmptyFanOut { .. } => "EmptyFanOut",
            GraphError::PayloadNotObject { .. } => "InvalidPayload",
            GraphError::PayloadTooLarge { .. } => "PayloadTooLarge",
            GraphError::PayloadTooDeep { .. } => PAYLOAD_TOO_DEEP,
            GraphError::TooManyDependencies { .. } => "TooManyDependencies",
            GraphError::NameCollision { .. } => "NameCollision",
        }
    }
}

/// One WorkItem to create for a request.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedItem {
    pub name: String,
    pub task: String,
    /// Index of the fan-out value, for fan-out items.
    pub index: Option<usize>,
    /// `triad.dev/request` and `triad.dev/task`.
    pub labels: BTreeMap<String, String>,
    pub spec: WorkItemSpec,
}

/// Whether `name` is a valid task name (what the CRD's CEL rule enforces).
pub fn is_valid_task_name(name: &str) -> bool {
    let b = name.as_bytes();
    let ok = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    (1..=40).contains(&b.len())
        && ok(&b[0])
        && ok(&b[b.len() - 1])
        && b.iter().all(|c| ok(c) || *c == b'-')
}

/// Validates the task graph and returns the task indexes in dependency order
/// (dependencies first; otherwise in the order listed). A cycle path reads in
/// `dependsOn` direction: "a → b" means a depends on b.
pub fn validate(tasks: &[Task]) -> Result<Vec<usize>, GraphError> {
    let mut index = HashMap::with_capacity(tasks.len());
    for (i, t) in tasks.iter().enumerate() {
        if !is_valid_task_name(&t.name) {
            return Err(GraphError::InvalidTaskName {
                name: t.name.clone(),
            });
        }
        if index.insert(t.name.as_str(), i).is_some() {
            return Err(GraphError::DuplicateTask {
                name: t.name.clone(),
            });
        }
    }
    let mut deps: Vec<Vec<usize>> = Vec::with_capacity(tasks.len());
    for t in tasks {
        let mut d = Vec::with_capacity(t.depends_on.len());
        for name in &t.depends_on {
            let j = *index
                .get(name.as_str())
                .ok_or_else(|| GraphError::UnknownDependency {
                    task: t.name.clone(),
                    missing: name.clone(),
                })?;
            if !d.contains(&j) {
                d.push(j);
            }
        }
        deps.push(d);
    }
    // Iterative depth-first search: the order is deterministic and a long chain
    // cannot overflow the stack.
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    let mut mark = vec![Mark::New; tasks.len()];
    let mut order = Vec::with_capacity(tasks.len());
    let mut stack: Vec<(usize, usize)> = Vec::new();
    for root in 0..tasks.len() {
        if mark[root] != Mark::New {
            continue;
        }
        mark[root] = Mark::Open;
        stack.push((root, 0));
        while let Some((v, next)) = stack.last_mut() {
            let v = *v;
            if let Some(&w) = deps[v].get(*next) {
                *next += 1;
                match mark[w] {
                    Mark::New => {
                        mark[w] = Mark::Open;
                        stack.push((w, 0));
                    }
                    Mark::Open => {
                        let from = stack.iter().position(|(u, _)| *u == w).unwrap_or(0);
                        let mut path: Vec<String> = stack[from..]
                            .iter()
                            .map(|(u, _)| tasks[*u].name.clone())
                            .collect();
                        path.push(tasks[w].name.clone());
                        return Err(GraphError::Cycle { path });
                    }
                    Mark::Done => {}
                }
            } else {
                mark[v] = Mark::Done;
                order.push(v);
                stack.pop();
            }
        }
    }
    Ok(order)
}

/// The items a request decomposes into, dependencies first. `request` is the
/// request's name.
pub fn plan(request: &str, spec: &WorkRequestSpec) -> Result<Vec<PlannedItem>, GraphError> {
    let order = validate(&spec.tasks)?;
    let mut names: Vec<Vec<String>> = vec![Vec::new(); spec.tasks.len()];
    let mut owner: HashMap<String, usize> = HashMap::new();
    for &i in &order {
        let task = &spec.tasks[i];
        names[i] = match &task.for_each {
            None => vec![item_name(request, &task.name, None)],
            Some(f) if f.values.is_empty() => {
                return Err(GraphError::EmptyFanOut {
                    task: task.name.clone(),
                });
            }
            Some(f) => (0..f.values.len())
                .map(|k| item_name(request, &task.name, Some(k)))
                .collect(),
        };
        for n in &names[i] {
            if let Some(&j) = owner.get(n) {
                return Err(GraphError::NameCollision {
                    name: n.clone(),
                    first: spec.tasks[j].name.clone(),
                    second: task.name.clone(),
                });
            }
            owner.insert(n.clone(), i);
        }
    }
    let by_name: HashMap<&str, usize> = spec
        .tasks
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.as_str(), i))
        .collect();
    let request_label = label_value(request);
    let mut out = Vec::new();
    for &i in &order {
        let task = &spec.tasks[i];
        let mut depends_on: Vec<String> = Vec::new();
        for d in &task.depends_on {
            for n in &names[by_name[d.as_str()]] {
                if !depends_on.contains(n) {
                    depends_on.push(n.clone());
                }
            }
        }
        if depends_on.len() > MAX_DEPENDS_ON {
            return Err(GraphError::TooManyDependencies {
                task: task.name.clone(),
                count: depends_on.len(),
            });
        }
        let payloads: Vec<(Option<usize>, Option<serde_json::Value>)> = match &task.for_each {
            None => vec![(None, task_payload(task, i)?.cloned())],
            Some(f) => f
                .values
                .iter()
                .enumerate()
                .map(|(k, v)| Ok((Some(k), Some(merge(task, i, &f.key, k, v)?))))
                .collect::<Result<_, GraphError>>()?,
        };
        for ((index, payload), name) in payloads.into_iter().zip(&names[i]) {
            if let Some(p) = &payload {
                let size = serde_json::to_vec(p).map_or(usize::MAX, |b| b.len());
                if size > MAX_PAYLOAD_BYTES {
                    return Err(GraphError::PayloadTooLarge {
                        task: task.name.clone(),
                        size,
                    });
                }
            }
            out.push(PlannedItem {
                name: name.clone(),
                task: task.name.clone(),
                index,
                labels: BTreeMap::from([
                    (labels::REQUEST.to_string(), request_label.clone()),
                    (labels::TASK.to_string(), task.name.clone()),
                ]),
                spec: WorkItemSpec {
                    queue: task.queue.clone(),
                    type_: task.type_.clone(),
                    priority: task.priority.unwrap_or(spec.priority),
                    payload: payload.map(FreeForm::Value),
                    depends_on: depends_on.clone(),
                    not_before: None,
                    deadline: None,
                    budget: task.budget.clone(),
                    cancel: spec.cancel,
                },
            });
        }
    }
    Ok(out)
}

/// The payload of task number `i`, unless it is too deep.
fn task_payload(task: &Task, i: usize) -> Result<Option<&serde_json::Value>, GraphError> {
    match &task.payload {
        None => Ok(None),
        Some(FreeForm::Value(v)) => Ok(Some(v)),
        Some(FreeForm::TooDeep(deep)) => Err(GraphError::PayloadTooDeep {
            task: task.name.clone(),
            field: format!("spec.tasks[{i}].payload"),
            depth: deep.depth,
            limit: MAX_PAYLOAD_DEPTH,
        }),
    }
}

/// The payload of task number `i` with `{key: value}` added (replacing a key of that
/// name), for fan-out value number `k`. The value goes one level deeper than it is, so
/// it may be nested one level less than a payload.
fn merge(
    task: &Task,
    i: usize,
    key: &str,
    k: usize,
    value: &FreeForm,
) -> Result<serde_json::Value, GraphError> {
    let value_depth = match value {
        FreeForm::Value(v) => crate::api::depth(v),
        FreeForm::TooDeep(deep) => deep.depth,
    };
    let limit = MAX_PAYLOAD_DEPTH - 1;
    let value = match value {
        FreeForm::Value(v) if value_depth <= limit => v,
        _ => {
            return Err(GraphError::PayloadTooDeep {
                task: task.name.clone(),
                field: format!("spec.tasks[{i}].forEach.values[{k}]"),
                depth: value_depth,
                limit,
            });
        }
    };
    let mut obj = match task_payload(task, i)? {
        None => serde_json::Map::new(),
        Some(serde_json::Value::Object(m)) => m.clone(),
        Some(_) => {
            return Err(GraphError::PayloadNotObject {
                task: task.name.clone(),
                key: key.into(),
            });
        }
    };
    obj.insert(key.into(), value.clone());
    Ok(serde_json::Value::Object(obj))
}

/// `<request>-<task>` or `<request>-<task>-<index>`, shortened to [`MAX_NAME`] with a
/// stable hash of the request name when needed (see the module doc).
pub fn item_name(request: &str, task: &str, index: Option<usize>) -> String {
    let suffix = match index {
        None => format!("-{task}"),
        Some(i) => format!("-{task}-{i}"),
    };
    if request.len() + suffix.len() <= MAX_NAME {
        return format!("{request}{suffix}");
    }
    format!(
        "{}{suffix}",
        shorten(request, MAX_NAME.saturating_sub(suffix.len()))
    )
}

/// A label value for `value` (≤ 63 characters), shortened with a hash like names.
pub fn label_value(value: &str) -> String {
    if value.len() <= MAX_LABEL_VALUE {
        return value.to_string();
    }
    shorten(value, MAX_LABEL_VALUE)
}

/// `s` cut to fit `max` together with "-" and an 8-hex-digit hash of all of `s`; the
/// cut part never ends in '-' or '.', so the result stays a valid DNS subdomain and
/// label value.
fn shorten(s: &str, max: usize) -> String {
    let hash = format!("{:08x}", fnv1a(s.as_bytes()) as u32);
    let keep = max.saturating_sub(hash.len() + 1);
    let mut cut: &str = &s[..floor_char_boundary(s, keep)];
    cut = cut.trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
    if cut.is_empty() {
        hash
    } else {
        format!("{cut}-{hash}")
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// FNV-1a, 64 bit: stable across Rust versions and platforms, unlike `DefaultHasher`.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Whether `s` is a DNS-1123 subdomain (a valid Kubernetes object name).
pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME
        && s.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::FanOut;
    use proptest::prelude::*;
    use serde_json::json;

    fn task(name: &str, deps: &[&str]) -> Task {
        Task {
            name: name.into(),
            type_: Some("work".into()),
            depends_on: deps.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn fan(name: &str, deps: &[&str], values: Vec<serde_json::Value>) -> Task {
        Task {
            for_each: Some(FanOut {
                values: values.into_iter().map(FreeForm::from).collect(),
                key: "item".into(),
            }),
            ..task(name, deps)
        }
    }

    fn request(tasks: Vec<Task>) -> WorkRequestSpec {
        WorkRequestSpec {
            priority: 500,
            tasks,
            cancel: false,
        }
    }

    fn names(tasks: &[Task], order: &[usize]) -> Vec<String> {
        order.iter().map(|i| tasks[*i].name.clone()).collect()
    }

    #[test]
    fn order_puts_dependencies_first() {
        let tasks = vec![
            task("c", &["a"]),
            task("b", &["a"]),
            task("a", &[]),
            task("d", &["b", "c"]),
        ];
        let order = validate(&tasks).unwrap();
        assert_eq!(names(&tasks, &order), ["a", "c", "b", "d"]);
    }

    #[test]
    fn duplicate_names_are_refused() {
        let err = validate(&[task("a", &[]), task("a", &[])]).unwrap_err();
        assert_eq!(err, GraphError::DuplicateTask { name: "a".into() });
        assert_eq!(err.reason(), "DuplicateTask");
    }

    #[test]
    fn invalid_names_are_refused() {
        for bad in ["", "A", "-a", "a-", "a_b", &"a".repeat(41)] {
            assert!(!is_valid_task_name(bad), "{bad}");
            assert_eq!(
                validate(&[task(bad, &[])]).unwrap_err().reason(),
                "InvalidTaskName"
            );
        }
        for good in ["a", "a-b", "0", &"a".repeat(40)] {
            assert!(is_valid_task_name(good), "{good}");
        }
    }

    #[test]
    fn unknown_dependency_names_the_missing_task_and_referrer() {
        let err = validate(&[task("a", &[]), task("b", &["a", "ghost"])]).unwrap_err();
        assert_eq!(
            err,
            GraphError::UnknownDependency {
                task: "b".into(),
                missing: "ghost".into()
            }
        );
        assert_eq!(
            err.to_string(),
            "task b depends on \"ghost\", which is not a task of this request"
        );
    }

    #[test]
    fn cycle_is_reported_as_a_path() {
        let err = validate(&[
            task("a", &["b"]),
            task("b", &["c"]),
            task("c", &["a"]),
            task("d", &[]),
        ])
        .unwrap_err();
        assert_eq!(
            err,
            GraphError::Cycle {
                path: vec!["a".into(), "b".into(), "c".into(), "a".into()]
            }
        );
        assert_eq!(err.reason(), "DependencyCycle");
        assert!(
            err.to_string()
                .starts_with("dependency cycle: a → b → c → a"),
            "{err}"
        );
    }

    #[test]
    fn cycle_path_omits_the_lead_in() {
        let err = validate(&[task("x", &["a"]), task("a", &["b"]), task("b", &["a"])]).unwrap_err();
        assert_eq!(
            err,
            GraphError::Cycle {
                path: vec!["a".into(), "b".into(), "a".into()]
            }
        );
    }

    #[test]
    fn self_dependency_is_a_cycle() {
        assert_eq!(
            validate(&[task("a", &["a"])]).unwrap_err(),
            GraphError::Cycle {
                path: vec!["a".into(), "a".into()]
            }
        );
    }

    #[test]
    fn long_chain_does_not_overflow() {
        let tasks: Vec<Task> = (0..5000)
            .map(|i| {
                let deps: Vec<String> = if i > 0 {
                    vec![format!("t{}", i - 1)]
                } else {
                    vec![]
                };
                Task {
                    name: format!("t{i}"),
                    depends_on: deps,
                    ..Default::default()
                }
            })
            .rev()
            .collect();
        let order = validate(&tasks).unwrap();
        assert_eq!(tasks[order[0]].name, "t0");
    }

    #[test]
    fn plan_expands_fan_out_and_dependencies() {
        let mut b = task("b", &["a"]);
        b.priority = Some(900);
        b.payload = Some(json!({"mode": "fast"}).into());
        b.budget = BTreeMap::from([("tokens".to_string(), 100.0)]);
        let mut f = fan("f", &["a"], vec![json!("x"), json!({"n": 1}), json!("x")]);
        f.payload = Some(json!({"mode": "slow", "item": "replaced"}).into());
        let join = task("join", &["f", "b"]);
        let spec = request(vec![join, b, f, task("a", &[])]);
        let items = plan("req", &spec).unwrap();
        let got: Vec<&str> = items.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(
            got,
            [
                "req-a", "req-f-0", "req-f-1", "req-f-2", "req-b", "req-join"
            ]
        );

        let a = &items[0];
        assert_eq!(a.spec.priority, 500, "inherits the request's priority");
        assert!(a.spec.depends_on.is_empty());
        assert_eq!(a.spec.payload, None);
        assert_eq!(a.spec.type_.as_deref(), Some("work"));
        assert_eq!(a.index, None);
        assert_eq!(a.labels[labels::REQUEST], "req");
        assert_eq!(a.labels[labels::TASK], "a");

        let f1 = &items[2];
        assert_eq!(f1.index, Some(1));
        assert_eq!(f1.task, "f");
        assert_eq!(
            f1.spec.payload,
            Some(json!({"mode": "slow", "item": {"n": 1}}).into())
        );
        assert_eq!(f1.spec.depends_on, ["req-a"]);
        assert_eq!(
            items[3].spec.payload,
            Some(json!({"mode": "slow", "item": "x"}).into())
        );

        let b = &items[4];
        assert_eq!(b.spec.priority, 900, "task priority wins");
        assert_eq!(b.spec.payload, Some(json!({"mode": "fast"}).into()));
        assert_eq!(b.spec.budget["tokens"], 100.0);

        assert_eq!(
            items[5].spec.depends_on,
            ["req-f-0", "req-f-1", "req-f-2", "req-b"],
            "a dependency on a fan-out waits for all of its items"
        );
    }

    #[test]
    fn plan_is_deterministic() {
        let spec = request(vec![
            task("a", &[]),
            fan("f", &["a"], vec![json!(1), json!(2)]),
        ]);
        assert_eq!(plan("r", &spec).unwrap(), plan("r", &spec).unwrap());
    }

    #[test]
    fn plan_carries_queue_and_cancel() {
        let mut t = task("a", &[]);
        t.queue = Some("fast".into());
        let mut spec = request(vec![t]);
        spec.cancel = true;
        let items = plan("r", &spec).unwrap();
        assert_eq!(items[0].spec.queue.as_deref(), Some("fast"));
        assert!(items[0].spec.cancel);
    }

    #[test]
    fn fan_out_key_is_configurable() {
        let mut f = fan("f", &[], vec![json!("v")]);
        f.for_each.as_mut().unwrap().key = "url".into();
        let items = plan("r", &request(vec![f])).unwrap();
        assert_eq!(items[0].spec.payload, Some(json!({"url": "v"}).into()));
    }

    #[test]
    fn plan_refuses_bad_fan_outs() {
        assert_eq!(
            plan("r", &request(vec![fan("f", &[], vec![])])).unwrap_err(),
            GraphError::EmptyFanOut { task: "f".into() }
        );
        let mut f = fan("f", &[], vec![json!(1)]);
        f.payload = Some(json!([1, 2]).into());
        assert_eq!(
            plan("r", &request(vec![f])).unwrap_err().reason(),
            "InvalidPayload"
        );
    }

    #[test]
    fn plan_refuses_oversized_payloads() {
        let mut f = fan("f", &[], vec![json!("x".repeat(MAX_PAYLOAD_BYTES))]);
        f.payload = Some(json!({}).into());
        assert!(matches!(
            plan("r", &request(vec![f])).unwrap_err(),
            GraphError::PayloadTooLarge { .. }
        ));
    }

    /// `levels` objects deep.
    fn nested(levels: usize) -> serde_json::Value {
        let mut v = json!({});
        for _ in 1..levels {
            v = json!({"d": v});
        }
        v
    }

    #[test]
    fn plan_refuses_payloads_nested_too_deep_naming_the_field() {
        // A task's own payload: up to 64 levels.
        let mut t = task("t", &[]);
        t.payload = Some(nested(MAX_PAYLOAD_DEPTH).into());
        let items = plan("r", &request(vec![task("a", &[]), t.clone()])).unwrap();
        assert_eq!(
            crate::api::depth(items[1].spec.payload.as_ref().unwrap().value().unwrap()),
            64
        );
        t.payload = Some(nested(200).into());
        let err = plan("r", &request(vec![task("a", &[]), t])).unwrap_err();
        assert_eq!(err.reason(), "PayloadTooDeep");
        assert_eq!(
            err.to_string(),
            "task t: spec.tasks[1].payload is nested 200 levels deep; the limit is 64: flatten it or pass it by reference (for example an object-storage URL)"
        );

        // A fan-out value goes one level deeper in its item's payload: up to 63.
        let f = fan("f", &[], vec![json!(1), nested(MAX_PAYLOAD_DEPTH - 1)]);
        let items = plan("r", &request(vec![f])).unwrap();
        assert_eq!(
            crate::api::depth(items[1].spec.payload.as_ref().unwrap().value().unwrap()),
            64
        );
        for levels in [MAX_PAYLOAD_DEPTH, 150] {
            let f = fan("f", &[], vec![json!(1), nested(levels)]);
            let err = plan("r", &request(vec![f])).unwrap_err();
            assert_eq!(
                err,
                GraphError::PayloadTooDeep {
                    task: "f".into(),
                    field: "spec.tasks[0].forEach.values[1]".into(),
                    depth: levels,
                    limit: 63
                }
            );
            assert!(
                err.to_string().contains(
                    "the limit is 63 (each value goes one level deeper, under forEach.key, in its item's payload)"
                ),
                "{err}"
            );
        }
        // A too-deep task payload with a fan-out is named as the payload.
        let mut f = fan("f", &[], vec![json!(1)]);
        f.payload = Some(nested(100).into());
        assert!(matches!(
            plan("r", &request(vec![f])).unwrap_err(),
            GraphError::PayloadTooDeep { field, .. } if field == "spec.tasks[0].payload"
        ));
    }

    #[test]
    fn plan_refuses_more_dependencies_than_the_api_allows() {
        let values: Vec<_> = (0..=MAX_DEPENDS_ON).map(|i| json!(i)).collect();
        let spec = request(vec![fan("f", &[], values), task("after", &["f"])]);
        assert_eq!(
            plan("r", &spec).unwrap_err(),
            GraphError::TooManyDependencies {
                task: "after".into(),
                count: 65
            }
        );
        let ok: Vec<_> = (0..MAX_DEPENDS_ON).map(|i| json!(i)).collect();
        assert!(
            plan(
                "r",
                &request(vec![fan("f", &[], ok), task("after", &["f"])])
            )
            .is_ok()
        );
    }

    #[test]
    fn plan_refuses_colliding_item_names() {
        let spec = request(vec![fan("x", &[], vec![json!(1)]), task("x-0", &[])]);
        assert_eq!(
            plan("r", &spec).unwrap_err(),
            GraphError::NameCollision {
                name: "r-x-0".into(),
                first: "x".into(),
                second: "x-0".into()
            }
        );
    }

    #[test]
    fn plan_refuses_invalid_graphs_without_items() {
        let spec = request(vec![task("a", &["b"]), task("b", &["a"])]);
        assert_eq!(plan("r", &spec).unwrap_err().reason(), "DependencyCycle");
    }

    #[test]
    fn short_names_are_plain() {
        assert_eq!(item_name("req", "task", None), "req-task");
        assert_eq!(item_name("req", "task", Some(12)), "req-task-12");
        assert_eq!(label_value("req"), "req");
    }

    #[test]
    fn long_names_are_cut_with_a_stable_hash() {
        let long = format!("{}.{}", "a".repeat(200), "b".repeat(52));
        let n = item_name(&long, "task", Some(999));
        assert_eq!(n.len(), MAX_NAME);
        assert!(n.ends_with("-task-999"), "{n}");
        assert!(is_dns1123_subdomain(&n), "{n}");
        assert_eq!(n, item_name(&long, "task", Some(999)), "stable");
        let other = format!("{}.{}", "a".repeat(200), "c".repeat(52));
        assert_ne!(
            n,
            item_name(&other, "task", Some(999)),
            "hash tells them apart"
        );
        // The hash is pinned: changing it would rename every long item.
        assert_eq!(&n[n.len() - 18..n.len() - 9], "-479483b9", "{n}");
    }

    #[test]
    fn cut_never_leaves_a_dot_or_dash_before_the_hash() {
        // The cut lands right after a '.', which must be trimmed.
        let req = format!("{}.{}", "a".repeat(230), "b".repeat(22));
        let n = item_name(&req, "t", None);
        assert!(is_dns1123_subdomain(&n), "{n}");
        assert!(!n.contains(".-"), "{n}");
    }

    #[test]
    fn long_label_values_are_cut() {
        let v = label_value(&"r".repeat(100));
        assert_eq!(v.len(), MAX_LABEL_VALUE);
        assert!(v.starts_with("rrrr"));
        assert_ne!(v, label_value(&format!("{}x", "r".repeat(99))));
    }

    #[test]
    fn dns_subdomain_check() {
        assert!(is_dns1123_subdomain("a.b-c.d0"));
        for bad in ["", "A", "a..b", "-a", "a-", "a_b", ".a", &"a".repeat(254)] {
            assert!(!is_dns1123_subdomain(bad), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn item_names_are_valid_and_distinct(
            request in "[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?){0,3}",
            task in "[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?",
            i in 0usize..1000,
        ) {
            let a = item_name(&request, &task, Some(i));
            let b = item_name(&request, &task, Some(i + 1));
            let plain = item_name(&request, &task, None);
            for n in [&a, &b, &plain] {
                prop_assert!(is_dns1123_subdomain(n), "{}", n);
            }
            prop_assert_ne!(&a, &b);
            let l = label_value(&request);
            prop_assert!(l.len() <= MAX_LABEL_VALUE);
            prop_assert!(l.starts_with(|c: char| c.is_ascii_alphanumeric()));
            prop_assert!(l.ends_with(|c: char| c.is_ascii_alphanumeric()));
        }

        #[test]
        fn validate_never_panics_and_orders_dependencies_first(
            edges in proptest::collection::vec(proptest::collection::vec(0usize..12, 0..4), 1..12),
        ) {
            let n = edges.len();
            let tasks: Vec<Task> = edges.iter().enumerate().map(|(i, d)| Task {
                name: format!("t{i}"),
                depends_on: d.iter().map(|j| format!("t{}", j % (n + 1))).collect(),
                ..Default::default()
            }).collect();
            if let Ok(order) = validate(&tasks) {
                prop_assert_eq!(order.len(), n);
                let pos: HashMap<usize, usize> = order.iter().enumerate().map(|(p, i)| (*i, p)).collect();
                for (i, t) in tasks.iter().enumerate() {
                    for d in &t.depends_on {
                        let j: usize = d[1..].parse().unwrap();
                        prop_assert!(pos[&j] < pos[&i]);
                    }
                }
            }
        }
    }
}
