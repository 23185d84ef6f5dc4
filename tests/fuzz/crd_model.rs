//! What the Triad CRDs must accept, as plain Rust: an oracle of the documented bounds
//! (`src/api` field docs and rule messages) and a generator of objects that probe them.
//!
//! The oracle judges the JSON a user submits, before the API server defaults or prunes
//! it, and returns the fields it finds wrong. It is written from the contract, not from
//! the CRD, so that the two can disagree: `tests/e2e/crd_fuzz.rs` sends generated
//! objects to a real API server and any disagreement is a finding. One contract rule
//! goes beyond the field docs: whatever the API server accepts, the operator must be
//! able to decode and act on. So the oracle refuses what Triad's typed client cannot
//! read (`notBefore: 9999-12-31T23:59:59Z` is outside jiff's range) and what would make
//! a valid request plan invalid items (an empty `tasks[].queue`).
//!
//! Schemaless fields (payloads, fan-out values, a pool's template) are the exception the
//! operator handles instead: the API server cannot bound their depth, so it takes them
//! nested to any depth, and the operator decodes them at any depth too, taking one nested
//! more than 64 levels as a marker that it refuses with a message (`check_free_forms`).
//! The generator nests them around both that limit and serde_json's 128.
//!
//! Shared by the offline `fuzz` test crate and the `e2e` crate; each uses part of it.
#![allow(dead_code)]

use rand::Rng;
use rand::seq::IndexedRandom;
use serde_json::{Map, Value, json};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    WorkItem,
    WorkRequest,
    WorkQueue,
    AgentPool,
}

impl Kind {
    pub const ALL: [Kind; 4] = [
        Kind::WorkItem,
        Kind::WorkRequest,
        Kind::WorkQueue,
        Kind::AgentPool,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::WorkItem => "WorkItem",
            Kind::WorkRequest => "WorkRequest",
            Kind::WorkQueue => "WorkQueue",
            Kind::AgentPool => "AgentPool",
        }
    }

    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Decodes an object as the operator's typed client would: alone (a get, a patch's
    /// answer) and as an item of a list (a list or a watch's initial page, which decode
    /// from the list's root, two levels further from the object's deepest value).
    pub fn decode(self, json: &str) -> Result<(), String> {
        use triad::api::{AgentPool, WorkItem, WorkQueue, WorkRequest};
        let list =
            format!(r#"{{"apiVersion":"v1","kind":"List","metadata":{{}},"items":[{json}]}}"#);
        fn both<K: serde::de::DeserializeOwned + Clone>(
            json: &str,
            list: &str,
        ) -> Result<(), serde_json::Error> {
            serde_json::from_str::<K>(json)?;
            serde_json::from_str::<kube::core::ObjectList<K>>(list).map(drop)
        }
        let r = match self {
            Kind::WorkItem => both::<WorkItem>(json, &list),
            Kind::WorkRequest => both::<WorkRequest>(json, &list),
            Kind::WorkQueue => both::<WorkQueue>(json, &list),
            Kind::AgentPool => both::<AgentPool>(json, &list),
        };
        r.map_err(|e| e.to_string())
    }
}

// ---------------------------------------------------------------------------------
// Schemaless fields
// ---------------------------------------------------------------------------------

/// `levels` nested objects: `{"d": {"d": … {}}}` (`{}` is one level).
pub fn nested(levels: usize) -> Value {
    let mut v = json!({});
    for _ in 1..levels {
        v = json!({"d": v});
    }
    v
}

/// The schemaless fields of an object as sent (present, not null), with how deep each
/// is nested, by path.
pub fn free_form_depths(kind: Kind, obj: &Value) -> Vec<(String, usize)> {
    let spec = present(obj.as_object(), "spec").and_then(Value::as_object);
    let mut out = Vec::new();
    match kind {
        Kind::WorkItem => {
            if let Some(p) = present(spec, "payload") {
                out.push(("spec.payload".to_string(), triad::api::depth(p)));
            }
        }
        Kind::WorkRequest => {
            let tasks = present(spec, "tasks").and_then(Value::as_array);
            for (i, t) in tasks.into_iter().flatten().enumerate() {
                if let Some(p) = present(t.as_object(), "payload") {
                    out.push((format!("spec.tasks[{i}].payload"), triad::api::depth(p)));
                }
                let values = present(t.as_object(), "forEach")
                    .and_then(|f| present(f.as_object(), "values"))
                    .and_then(Value::as_array);
                for (k, v) in values.into_iter().flatten().enumerate() {
                    out.push((
                        format!("spec.tasks[{i}].forEach.values[{k}]"),
                        triad::api::depth(v),
                    ));
                }
            }
        }
        Kind::AgentPool => {
            if let Some(t) = present(spec, "template") {
                out.push(("spec.template".to_string(), triad::api::depth(t)));
            }
        }
        Kind::WorkQueue => {}
    }
    out
}

/// The schemaless fields as the operator decoded them: a value (None) or the too-deep
/// marker with the depth it measured.
pub fn decoded_free_forms(kind: Kind, json: &str) -> Result<Vec<(String, Option<usize>)>, String> {
    use triad::api::{AgentPool, FreeForm, WorkItem, WorkRequest};
    let marker = |f: &FreeForm| f.too_deep().map(|d| d.depth);
    let mut out = Vec::new();
    match kind {
        Kind::WorkItem => {
            let item: WorkItem = serde_json::from_str(json).map_err(|e| e.to_string())?;
            if let Some(p) = &item.spec.payload {
                out.push(("spec.payload".to_string(), marker(p)));
            }
        }
        Kind::WorkRequest => {
            let request: WorkRequest = serde_json::from_str(json).map_err(|e| e.to_string())?;
            for (i, t) in request.spec.tasks.iter().enumerate() {
                if let Some(p) = &t.payload {
                    out.push((format!("spec.tasks[{i}].payload"), marker(p)));
                }
                for (k, v) in t.for_each.iter().flat_map(|f| &f.values).enumerate() {
                    out.push((format!("spec.tasks[{i}].forEach.values[{k}]"), marker(v)));
                }
            }
        }
        Kind::AgentPool => {
            let pool: AgentPool = serde_json::from_str(json).map_err(|e| e.to_string())?;
            out.push(("spec.template".to_string(), marker(&pool.spec.template)));
        }
        Kind::WorkQueue => {}
    }
    Ok(out)
}

/// Every schemaless field of `sent` decodes from `stored` (what the API server keeps of
/// it) as a value when it is nested at most 64 levels deep, and otherwise as the
/// too-deep marker with its exact depth, which the roles refuse.
pub fn check_free_forms(kind: Kind, sent: &Value, stored: &str) -> Result<(), String> {
    let want: Vec<(String, Option<usize>)> = free_form_depths(kind, sent)
        .into_iter()
        .map(|(path, depth)| {
            (
                path,
                (depth > triad::api::MAX_FREE_FORM_DEPTH).then_some(depth),
            )
        })
        .collect();
    let got = decoded_free_forms(kind, stored)?;
    if got == want {
        Ok(())
    } else {
        Err(format!(
            "schemaless fields decode as {got:?}, expected {want:?} (None: a value; Some(depth): too deep)"
        ))
    }
}

// ---------------------------------------------------------------------------------
// Corpus
// ---------------------------------------------------------------------------------

/// One file of `tests/corpus/crds/`: header comments, then one object in YAML (or JSON,
/// which is YAML too). See tests/corpus/README.md.
#[derive(Clone, Debug)]
pub struct CorpusObject {
    pub file: String,
    pub kind: Kind,
    pub valid: bool,
    /// For invalid objects: a substring of the API server's message naming the field.
    pub error: String,
    /// For WorkRequests: the reason `core::graph::plan` refuses it with, or `ok`.
    pub plan: Option<String>,
    pub object: Value,
}

pub fn crd_corpus() -> Vec<CorpusObject> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/crds");
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(&root)
        .expect("tests/corpus/crds")
        .flat_map(|kind_dir| std::fs::read_dir(kind_dir.expect("entry").path()).expect("kind dir"))
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    files
        .iter()
        .map(|path| {
            let file = path
                .strip_prefix(&root)
                .expect("under root")
                .display()
                .to_string();
            let text = std::fs::read_to_string(path).expect("read corpus file");
            let mut valid = None;
            let mut error = String::new();
            let mut plan = None;
            let mut deepen = Vec::new();
            for line in text.lines().take_while(|l| l.starts_with('#')) {
                if let Some(rest) = line.strip_prefix("# deepen: ") {
                    let (pointer, levels) = rest
                        .trim()
                        .rsplit_once(' ')
                        .unwrap_or_else(|| panic!("{file}: deepen: <JSON pointer> <levels>"));
                    let levels: usize = levels
                        .parse()
                        .unwrap_or_else(|e| panic!("{file}: deepen levels: {e}"));
                    deepen.push((pointer.to_string(), levels));
                }
                if let Some(rest) = line.strip_prefix("# expect: ") {
                    let (verdict, msg) = rest.split_once(" | ").unwrap_or((rest, ""));
                    valid = Some(match verdict.trim() {
                        "valid" => true,
                        "invalid" => false,
                        other => panic!("{file}: expect valid or invalid, not {other}"),
                    });
                    error = msg.to_string();
                } else if let Some(rest) = line.strip_prefix("# plan: ") {
                    plan = Some(rest.trim().to_string());
                }
            }
            let valid = valid.unwrap_or_else(|| panic!("{file}: no `# expect:` header"));
            assert!(
                valid || !error.is_empty(),
                "{file}: an invalid object names the message substring"
            );
            let mut object: Value =
                serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{file}: not YAML: {e}"));
            // Deeper than a YAML (or JSON) parser's recursion limit: built here.
            for (pointer, levels) in deepen {
                *object
                    .pointer_mut(&pointer)
                    .unwrap_or_else(|| panic!("{file}: deepen: nothing at {pointer}")) =
                    nested(levels);
            }
            let kind = object
                .get("kind")
                .and_then(Value::as_str)
                .and_then(Kind::from_name)
                .unwrap_or_else(|| panic!("{file}: kind must be a Triad kind"));
            CorpusObject {
                file,
                kind,
                valid,
                error,
                plan,
                object,
            }
        })
        .collect()
}

/// Roughly what the API server stores for an object it accepts, for decoding without a
/// server: `null` members are dropped (the server prunes them and applies the field's
/// default).
pub fn as_stored(v: &mut Value) {
    match v {
        Value::Array(a) => a.iter_mut().for_each(as_stored),
        Value::Object(o) => {
            o.retain(|_, v| !v.is_null());
            o.values_mut().for_each(as_stored);
        }
        _ => {}
    }
}

/// A WorkItem the scheduler would create for a request, as the JSON it sends.
pub fn planned_item_json(item: &triad::core::graph::PlannedItem) -> Value {
    json!({
        "apiVersion": "triad.dev/v1alpha1",
        "kind": "WorkItem",
        "metadata": {"name": item.name, "labels": item.labels},
        "spec": item.spec,
    })
}

// ---------------------------------------------------------------------------------
// Oracle
// ---------------------------------------------------------------------------------

/// The fields of `obj` (a whole object: apiVersion, kind, metadata, spec) that break
/// the contract, as substrings the API server's message must contain (field paths such
/// as `spec.tasks[2].name`). Empty: the object must be accepted.
pub fn violations(kind: Kind, obj: &Value) -> Vec<String> {
    let mut o = Oracle::default();
    match obj.pointer("/metadata/name").and_then(Value::as_str) {
        Some(name) if is_dns_subdomain(name) => {}
        _ => o.bad("metadata.name"),
    }
    let spec = present(obj.as_object(), "spec");
    match (kind, spec) {
        (_, None) => o.bad("spec"),
        (_, Some(s)) if !s.is_object() => o.bad("spec"),
        (Kind::WorkItem, Some(s)) => o.work_item(s),
        (Kind::WorkRequest, Some(s)) => o.work_request(s),
        (Kind::WorkQueue, Some(s)) => o.work_queue(s),
        (Kind::AgentPool, Some(s)) => o.agent_pool(s),
    }
    o.needles
}

/// A key that is missing or `null`: the API server prunes nulls of non-nullable fields
/// (then defaults them) and CEL's `has()` is false for a null nullable one.
fn present<'a>(obj: Option<&'a Map<String, Value>>, key: &str) -> Option<&'a Value> {
    obj?.get(key).filter(|v| !v.is_null())
}

#[derive(Clone, Copy)]
enum Bits {
    I32,
    I64,
}

#[derive(Default)]
struct Oracle {
    needles: Vec<String>,
}

impl Oracle {
    fn bad(&mut self, path: impl Into<String>) {
        self.needles.push(path.into());
    }

    /// An integer field within the format's range and `lo..=hi`. Only JSON integers:
    /// the schema check takes `5.0` for an integer, but the field's CEL rule then fails on
    /// a double, so the API server refuses it (naming the field).
    fn int(&mut self, v: &Value, path: &str, bits: Bits, lo: i64, hi: i64) -> Option<i64> {
        let n: Option<i128> = v
            .as_i64()
            .map(i128::from)
            .or_else(|| v.as_u64().map(i128::from));
        let (min, max) = match bits {
            Bits::I32 => (i128::from(i32::MIN), i128::from(i32::MAX)),
            Bits::I64 => (i128::from(i64::MIN), i128::from(i64::MAX)),
        };
        match n {
            Some(n)
                if (min..=max).contains(&n) && (i128::from(lo)..=i128::from(hi)).contains(&n) =>
            {
                Some(n as i64)
            }
            _ => {
                self.bad(path);
                None
            }
        }
    }

    fn opt_int(
        &mut self,
        obj: &Map<String, Value>,
        key: &str,
        path: &str,
        bits: Bits,
        lo: i64,
        hi: i64,
    ) -> Option<i64> {
        present(Some(obj), key).and_then(|v| self.int(v, path, bits, lo, hi))
    }

    fn number(&mut self, v: &Value, path: &str, min: f64) -> Option<f64> {
        match v.as_f64() {
            Some(n) if n >= min => Some(n),
            _ => {
                self.bad(path);
                None
            }
        }
    }

    /// A string of `min..=max` characters (Unicode scalar values, as both `maxLength`
    /// and CEL's `size()` count them).
    fn string<'a>(&mut self, v: &'a Value, path: &str, min: usize, max: usize) -> Option<&'a str> {
        match v.as_str() {
            Some(s) if (min..=max).contains(&s.chars().count()) => Some(s),
            _ => {
                self.bad(path);
                None
            }
        }
    }

    fn boolean(&mut self, obj: &Map<String, Value>, key: &str, path: &str) {
        if present(Some(obj), key).is_some_and(|v| !v.is_boolean()) {
            self.bad(path);
        }
    }

    fn one_of(&mut self, obj: &Map<String, Value>, key: &str, path: &str, allowed: &[&str]) {
        if let Some(v) = present(Some(obj), key)
            && !v.as_str().is_some_and(|s| allowed.contains(&s))
        {
            self.bad(path);
        }
    }

    fn object<'a>(&mut self, v: &'a Value, path: &str) -> Option<&'a Map<String, Value>> {
        let o = v.as_object();
        if o.is_none() {
            self.bad(path);
        }
        o
    }

    /// An optional sub-object whose fields all have defaults.
    fn sub<'a>(
        &mut self,
        obj: &'a Map<String, Value>,
        key: &str,
        path: &str,
    ) -> Option<&'a Map<String, Value>> {
        present(Some(obj), key).and_then(|v| self.object(v, path))
    }

    fn free_object(&mut self, obj: &Map<String, Value>, key: &str, path: &str, max_keys: usize) {
        if let Some(v) = present(Some(obj), key)
            && let Some(o) = self.object(v, path)
            && o.len() > max_keys
        {
            self.bad(path);
        }
    }

    /// Counters: at most 32, each a non-negative number.
    fn counters(&mut self, obj: &Map<String, Value>, key: &str, path: &str) {
        let Some(v) = present(Some(obj), key) else {
            return;
        };
        let Some(o) = self.object(v, path) else {
            return;
        };
        if o.len() > 32 {
            self.bad(path);
        }
        // The CEL rule reports at the map, the schema at the key: the map's path is in both.
        for v in o.values() {
            self.number(v, path, 0.0);
        }
    }

    fn strings(
        &mut self,
        obj: &Map<String, Value>,
        key: &str,
        path: &str,
        max_items: usize,
        min: usize,
        max: usize,
    ) {
        let Some(v) = present(Some(obj), key) else {
            return;
        };
        let Some(list) = v.as_array() else {
            self.bad(path);
            return;
        };
        if list.len() > max_items {
            self.bad(path);
        }
        // Item errors come from the schema at `path[i]` or from a CEL rule on the list.
        for s in list {
            self.string(s, path, min, max);
        }
    }

    /// RFC 3339 as both the API server (`format: date-time`) and the operator's
    /// `k8s_openapi` `Time` (jiff) read it.
    fn time(&mut self, obj: &Map<String, Value>, key: &str, path: &str) {
        if let Some(v) = present(Some(obj), key)
            && !v.as_str().is_some_and(is_decodable_time)
        {
            self.bad(path);
        }
    }

    fn work_item(&mut self, spec: &Value) {
        let s = spec.as_object().expect("checked by the caller");
        let queue = present(Some(s), "queue");
        let type_ = present(Some(s), "type");
        if let Some(q) = queue {
            self.string(q, "spec.queue", 1, 63);
        }
        if let Some(t) = type_ {
            self.string(t, "spec.type", 1, 63);
        }
        if queue.is_none() && type_.is_none() {
            self.bad("spec.queue or spec.type");
        }
        self.opt_int(s, "priority", "spec.priority", Bits::I32, 0, 1000);
        self.free_object(s, "payload", "spec.payload", 256);
        self.strings(s, "dependsOn", "spec.dependsOn", 64, 1, 253);
        self.time(s, "notBefore", "spec.notBefore");
        self.time(s, "deadline", "spec.deadline");
        self.counters(s, "budget", "spec.budget");
        self.boolean(s, "cancel", "spec.cancel");
    }

    fn work_request(&mut self, spec: &Value) {
        let s = spec.as_object().expect("checked by the caller");
        self.opt_int(s, "priority", "spec.priority", Bits::I32, 0, 1000);
        self.boolean(s, "cancel", "spec.cancel");
        let Some(tasks) = present(Some(s), "tasks") else {
            self.bad("spec.tasks");
            return;
        };
        let Some(tasks) = tasks.as_array() else {
            self.bad("spec.tasks");
            return;
        };
        if tasks.is_empty() || tasks.len() > 500 {
            self.bad("spec.tasks");
        }
        for (i, t) in tasks.iter().enumerate() {
            let path = format!("spec.tasks[{i}]");
            let Some(t) = self.object(t, &path) else {
                continue;
            };
            match present(Some(t), "name") {
                Some(n)
                    if n.as_str()
                        .is_some_and(triad::core::graph::is_valid_task_name) => {}
                _ => self.bad(format!("{path}.name")),
            }
            let queue = present(Some(t), "queue");
            let type_ = present(Some(t), "type");
            // An item needs 1 to 63 characters here; a request whose items cannot be
            // created is no better than a refused one.
            if let Some(q) = queue {
                self.string(q, &format!("{path}.queue"), 1, 63);
            }
            if let Some(ty) = type_ {
                self.string(ty, &format!("{path}.type"), 1, 63);
            }
            if queue.is_none() && type_.is_none() {
                self.bad(path.clone());
            }
            self.opt_int(
                t,
                "priority",
                &format!("{path}.priority"),
                Bits::I32,
                0,
                1000,
            );
            self.free_object(t, "payload", &format!("{path}.payload"), 256);
            self.strings(t, "dependsOn", &format!("{path}.dependsOn"), 64, 0, 40);
            self.counters(t, "budget", &format!("{path}.budget"));
            if let Some(f) = present(Some(t), "forEach") {
                let fpath = format!("{path}.forEach");
                if let Some(f) = self.object(f, &fpath) {
                    match present(Some(f), "values").map(Value::as_array) {
                        Some(Some(v)) if (1..=1000).contains(&v.len()) => {}
                        _ => self.bad(format!("{fpath}.values")),
                    }
                    if let Some(k) = present(Some(f), "key") {
                        self.string(k, &format!("{fpath}.key"), 1, 63);
                    }
                    // Each item's payload is the task's plus the key; it must still fit
                    // the item's 256-key bound (even when the key replaces one: the CRD
                    // rule cannot look into the payload).
                    if let Some(Value::Object(p)) = present(Some(t), "payload")
                        && p.len() >= 256
                    {
                        self.bad(path.clone());
                    }
                }
            }
        }
    }

    fn work_queue(&mut self, spec: &Value) {
        let s = spec.as_object().expect("checked by the caller");
        self.strings(s, "types", "spec.types", 64, 1, 63);
        if let Some(r) = self.sub(s, "retry", "spec.retry") {
            self.opt_int(
                r,
                "maxAttempts",
                "spec.retry.maxAttempts",
                Bits::I32,
                1,
                100,
            );
            if let Some(b) = self.sub(r, "backoff", "spec.retry.backoff") {
                let base = match present(Some(b), "baseSeconds") {
                    Some(v) => self.number(v, "spec.retry.backoff.baseSeconds", 0.0),
                    None => Some(10.0),
                };
                let max = match present(Some(b), "maxSeconds") {
                    Some(v) => self.number(v, "spec.retry.backoff.maxSeconds", f64::NEG_INFINITY),
                    None => Some(600.0),
                };
                if let (Some(base), Some(max)) = (base, max)
                    && max < base
                {
                    self.bad("spec.retry.backoff");
                }
                self.opt_int(
                    b,
                    "jitterPercent",
                    "spec.retry.backoff.jitterPercent",
                    Bits::I32,
                    0,
                    100,
                );
            }
        }
        self.opt_int(s, "maxInFlight", "spec.maxInFlight", Bits::I32, 1, i64::MAX);
        if let Some(t) = self.sub(s, "timeouts", "spec.timeouts") {
            self.opt_int(
                t,
                "attemptSeconds",
                "spec.timeouts.attemptSeconds",
                Bits::I64,
                1,
                i64::MAX,
            );
            self.opt_int(
                t,
                "deadlineSeconds",
                "spec.timeouts.deadlineSeconds",
                Bits::I64,
                1,
                i64::MAX,
            );
        }
        self.counters(s, "defaultBudget", "spec.defaultBudget");
        if let Some(v) = self.sub(s, "supervision", "spec.supervision") {
            let p = "spec.supervision";
            self.opt_int(
                v,
                "stallSeconds",
                &format!("{p}.stallSeconds"),
                Bits::I64,
                1,
                i64::MAX,
            );
            self.one_of(
                v,
                "onStall",
                &format!("{p}.onStall"),
                &["Restart", "Escalate", "Cancel"],
            );
            self.one_of(
                v,
                "onBudgetExceeded",
                &format!("{p}.onBudgetExceeded"),
                &["Cancel", "Escalate", "Extend"],
            );
            self.one_of(
                v,
                "onViolation",
                &format!("{p}.onViolation"),
                VIOLATION_ACTIONS,
            );
            if let Some(rules) = self.sub(v, "violationRules", &format!("{p}.violationRules")) {
                if rules.len() > 64 {
                    self.bad(format!("{p}.violationRules"));
                }
                for k in rules.keys() {
                    self.one_of(
                        rules,
                        k,
                        &format!("{p}.violationRules.{k}"),
                        VIOLATION_ACTIONS,
                    );
                }
            }
            self.opt_int(
                v,
                "budgetWarningPercent",
                &format!("{p}.budgetWarningPercent"),
                Bits::I32,
                1,
                100,
            );
            if let Some(e) = self.sub(v, "extend", &format!("{p}.extend")) {
                self.opt_int(
                    e,
                    "maxExtensions",
                    &format!("{p}.extend.maxExtensions"),
                    Bits::I32,
                    0,
                    10,
                );
                self.opt_int(
                    e,
                    "percent",
                    &format!("{p}.extend.percent"),
                    Bits::I32,
                    1,
                    100,
                );
            }
            self.opt_int(
                v,
                "cancelGraceSeconds",
                &format!("{p}.cancelGraceSeconds"),
                Bits::I64,
                0,
                i64::MAX,
            );
        }
        if let Some(e) = self.sub(s, "escalation", "spec.escalation") {
            self.one_of(
                e,
                "action",
                "spec.escalation.action",
                &["Reroute", "RaisePriority", "Fail"],
            );
            // Rerouting to "" would route items to a queue that cannot exist.
            let to_queue = present(Some(e), "toQueue");
            if let Some(q) = to_queue {
                self.string(q, "spec.escalation.toQueue", 1, 63);
            }
            if present(Some(e), "action").and_then(Value::as_str) == Some("Reroute")
                && to_queue.is_none()
            {
                self.bad("spec.escalation");
            }
            self.opt_int(
                e,
                "raisePriority",
                "spec.escalation.raisePriority",
                Bits::I32,
                1,
                1000,
            );
        }
        if let Some(r) = self.sub(s, "retention", "spec.retention") {
            self.opt_int(
                r,
                "succeededSeconds",
                "spec.retention.succeededSeconds",
                Bits::I64,
                0,
                i64::MAX,
            );
            self.opt_int(
                r,
                "failedSeconds",
                "spec.retention.failedSeconds",
                Bits::I64,
                0,
                i64::MAX,
            );
        }
        self.opt_int(
            s,
            "agingSeconds",
            "spec.agingSeconds",
            Bits::I64,
            0,
            i64::MAX,
        );
    }

    fn agent_pool(&mut self, spec: &Value) {
        let s = spec.as_object().expect("checked by the caller");
        match present(Some(s), "queues").map(Value::as_array) {
            Some(Some(queues)) => {
                if queues.is_empty() || queues.len() > 16 {
                    self.bad("spec.queues");
                }
                for (i, q) in queues.iter().enumerate() {
                    let path = format!("spec.queues[{i}]");
                    let Some(q) = self.object(q, &path) else {
                        continue;
                    };
                    match present(Some(q), "name") {
                        Some(n) => {
                            self.string(n, &format!("{path}.name"), 1, 63);
                        }
                        None => self.bad(format!("{path}.name")),
                    }
                    self.opt_int(q, "weight", &format!("{path}.weight"), Bits::I32, 1, 100);
                }
            }
            _ => self.bad("spec.queues"),
        }
        self.opt_int(s, "replicas", "spec.replicas", Bits::I32, 0, 1000);
        let min = self.opt_int(s, "minReplicas", "spec.minReplicas", Bits::I32, 0, i64::MAX);
        let max = self.opt_int(s, "maxReplicas", "spec.maxReplicas", Bits::I32, 1, 1000);
        if let (Some(min), Some(max)) = (min, max)
            && min > max
        {
            self.bad("spec.minReplicas");
        }
        if let Some(sc) = self.sub(s, "scaling", "spec.scaling") {
            self.opt_int(
                sc,
                "itemsPerAgent",
                "spec.scaling.itemsPerAgent",
                Bits::I32,
                1,
                i64::MAX,
            );
            self.opt_int(
                sc,
                "scaleDownDelaySeconds",
                "spec.scaling.scaleDownDelaySeconds",
                Bits::I64,
                0,
                i64::MAX,
            );
        }
        self.opt_int(s, "leaseSeconds", "spec.leaseSeconds", Bits::I32, 3, 600);
        if let Some(l) = self.sub(s, "lifecycle", "spec.lifecycle") {
            self.one_of(l, "type", "spec.lifecycle.type", &["Persistent", "Mortal"]);
            let max_items = present(Some(l), "maxItems");
            if let Some(m) = max_items {
                self.int(m, "spec.lifecycle.maxItems", Bits::I32, 1, i64::MAX);
            }
            if present(Some(l), "type").and_then(Value::as_str) == Some("Mortal")
                && max_items.is_none()
            {
                self.bad("spec.lifecycle");
            }
        }
        self.one_of(
            s,
            "emptyQueuePolicy",
            "spec.emptyQueuePolicy",
            &["Wait", "Exit", "ScaleDown"],
        );
        match present(Some(s), "template") {
            Some(Value::Object(_)) => {}
            _ => self.bad("spec.template"),
        }
    }
}

const VIOLATION_ACTIONS: &[&str] = &["Warn", "Restart", "Escalate", "Cancel"];

/// A Kubernetes object name (DNS-1123 subdomain).
pub fn is_dns_subdomain(name: &str) -> bool {
    let ok = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let b = name.as_bytes();
    (1..=253).contains(&b.len())
        && ok(b[0])
        && ok(b[b.len() - 1])
        && b.iter().all(|&c| ok(c) || c == b'-' || c == b'.')
        && name.split('.').all(|part| {
            let p = part.as_bytes();
            !p.is_empty() && ok(p[0]) && ok(p[p.len() - 1])
        })
}

/// `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)` with a real calendar date, at most nine
/// fraction digits, from 0001-01-01T00:00:00Z to
/// 9999-12-30T00:00:00Z: what the API server's `date-time` format takes, narrowed to
/// what the operator's `Time` (jiff) decodes.
pub fn is_decodable_time(s: &str) -> bool {
    let (Ok(min), Ok(max)) = (
        "0001-01-01T00:00:00Z".parse::<jiff::Timestamp>(),
        "9999-12-30T00:00:00Z".parse::<jiff::Timestamp>(),
    ) else {
        unreachable!("constant timestamps parse");
    };
    is_rfc3339_shape(s)
        && s.parse::<jiff::Timestamp>()
            .is_ok_and(|t| (min..=max).contains(&t))
}

fn is_rfc3339_shape(s: &str) -> bool {
    let b = s.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    let num = |r: std::ops::Range<usize>| s[r].parse::<u32>().unwrap_or(u32::MAX);
    if b.len() < 20
        || !digits(0..4)
        || b[4] != b'-'
        || !digits(5..7)
        || b[7] != b'-'
        || !digits(8..10)
        || b[10] != b'T'
        || !digits(11..13)
        || b[13] != b':'
        || !digits(14..16)
        || b[16] != b':'
        || !digits(17..19)
    {
        return false;
    }
    let (year, month, day) = (num(0..4), num(5..7), num(8..10));
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    if day == 0 || day > days || num(11..13) > 23 || num(14..16) > 59 || num(17..19) > 59 {
        return false;
    }
    let mut i = 19;
    if b[i] == b'.' {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if !(1..=9).contains(&(i - start)) {
            return false;
        }
    }
    match &b[i..] {
        [b'Z'] => true,
        [b'+' | b'-', _, _, b':', _, _] => {
            digits(i + 1..i + 3)
                && digits(i + 4..i + 6)
                && num(i + 1..i + 3) <= 24
                && num(i + 4..i + 6) <= 59
        }
        _ => false,
    }
}

// ---------------------------------------------------------------------------------
// Generator
// ---------------------------------------------------------------------------------

/// How often a generated field takes a value outside its bounds: a few objects are
/// fully valid, most carry one or two faults, so both verdicts are well exercised.
pub struct Gen<'r, R: Rng> {
    rng: &'r mut R,
    p_bad: f64,
}

/// A random object of `kind` named `name`, covering every spec field.
pub fn generate<R: Rng>(rng: &mut R, kind: Kind, name: &str) -> Value {
    let p_bad = *[0.0, 0.0, 0.03, 0.06, 0.12].choose(rng).expect("non-empty");
    let mut g = Gen { rng, p_bad };
    let spec = match kind {
        Kind::WorkItem => g.work_item(),
        Kind::WorkRequest => g.work_request(),
        Kind::WorkQueue => g.work_queue(),
        Kind::AgentPool => g.agent_pool(),
    };
    json!({
        "apiVersion": "triad.dev/v1alpha1",
        "kind": kind.name(),
        "metadata": {"name": name},
        "spec": spec,
    })
}

/// Builds an object field by field; `None` leaves a field out.
struct Fields(Map<String, Value>);

impl Fields {
    fn new() -> Self {
        Fields(Map::new())
    }
    fn set(&mut self, key: &str, v: Option<Value>) -> &mut Self {
        if let Some(v) = v {
            self.0.insert(key.into(), v);
        }
        self
    }
    fn done(&mut self) -> Value {
        Value::Object(std::mem::take(&mut self.0))
    }
}

const TEXT_POOL: &[&str] = &[
    "q", "batch", "média", "队列", "🚀", "a-b.c_d", " ", "\t", "null", "true", "0", "ÅÅ",
    "\u{200b}", "a\u{301}",
];

impl<R: Rng> Gen<'_, R> {
    fn bad(&mut self) -> bool {
        self.p_bad > 0.0 && self.rng.random_bool(self.p_bad)
    }

    fn maybe(&mut self, p: f64) -> bool {
        self.rng.random_bool(p)
    }

    /// Left out, `null`, or present.
    fn optional(&mut self, v: Value) -> Option<Value> {
        match self.rng.random_range(0..10) {
            0..=2 => None,
            3 => Some(Value::Null),
            _ => Some(v),
        }
    }

    /// A value of the wrong JSON type.
    fn wrong_type(&mut self) -> Value {
        [
            json!("5"),
            json!(true),
            json!([1]),
            json!({"a": 1}),
            json!(1.5),
            json!(""),
            json!("NaN"),
        ]
        .choose(self.rng)
        .expect("non-empty")
        .clone()
    }

    fn int(&mut self, lo: i64, hi: i64, bits: Bits) -> Value {
        let (fmin, fmax) = match bits {
            Bits::I32 => (i64::from(i32::MIN), i64::from(i32::MAX)),
            Bits::I64 => (i64::MIN, i64::MAX),
        };
        if self.bad() {
            return match self.rng.random_range(0..10) {
                0 => json!(lo.saturating_sub(1)),
                1 => json!(hi.saturating_add(1)),
                2 => match bits {
                    Bits::I32 => json!(fmax + 1),
                    Bits::I64 => json!(fmax as u64 + 1),
                },
                3 => match bits {
                    Bits::I32 => json!(fmin - 1),
                    Bits::I64 => json!(-1.0e19),
                },
                4 => json!(u64::MAX),
                5 => json!(-1),
                6 => json!(1e20),
                7 => json!(lo as f64 + 0.5),
                // The API server's schema takes an integral float, its CEL rule does not.
                8 if (lo as f64).abs() < 1e15 => json!(lo as f64 + 1.0),
                _ => self.wrong_type(),
            };
        }
        let lo = lo.max(fmin);
        let hi = hi.min(fmax);
        match self.rng.random_range(0..6) {
            0 => json!(lo),
            1 => json!(hi),
            _ => json!(
                self.rng
                    .random_range(lo..=hi.min(lo.saturating_add(100_000)))
            ),
        }
    }

    fn number(&mut self, min: f64) -> Value {
        if self.bad() {
            return match self.rng.random_range(0..4) {
                0 => json!(min - 1.0),
                1 => json!(-1e-300),
                2 => json!(-f64::MAX),
                _ => self.wrong_type(),
            };
        }
        match self.rng.random_range(0..6) {
            0 => json!(min),
            1 => json!(min + 0.5),
            2 => json!(min + 1e-300),
            3 => json!(1e308),
            4 if min <= 0.0 => json!(-0.0),
            _ => json!(min + f64::from(self.rng.random_range(0..100_000u32))),
        }
    }

    /// A string of `min..=max` characters from a pool with multi-byte and invisible
    /// characters, or (bad) one character too short or too long, or not a string.
    fn text(&mut self, min: usize, max: usize) -> Value {
        if self.bad() {
            return match self.rng.random_range(0..4) {
                0 if min > 0 => json!(""),
                1 => json!("é".repeat(max + 1)),
                2 => json!("x".repeat(max + 1)),
                _ => self.wrong_type(),
            };
        }
        let len = match self.rng.random_range(0..4) {
            0 => min.max(1),
            1 => max,
            _ => self.rng.random_range(min.max(1)..=max.min(12)),
        };
        let mut s = String::new();
        while s.chars().count() < len {
            s.push_str(TEXT_POOL.choose(self.rng).expect("non-empty"));
        }
        json!(s.chars().take(len).collect::<String>())
    }

    fn name_like(&mut self, max: usize) -> String {
        let len = self.rng.random_range(1..=max.min(12));
        (0..len)
            .map(|i| {
                let c = b"abcdefghijklmnopqrstuvwxyz0123456789-"[self.rng.random_range(0..37)];
                if (i == 0 || i + 1 == len) && c == b'-' {
                    'a'
                } else {
                    c as char
                }
            })
            .collect()
    }

    fn time(&mut self) -> Value {
        const GOOD: &[&str] = &[
            "2030-01-01T00:00:00Z",
            "2024-02-29T23:59:59.999999999Z",
            "1970-01-01T00:00:00+05:30",
            "2030-06-15T12:00:00.5-08:00",
            "0001-01-01T00:00:00Z",
            "9999-12-30T00:00:00Z",
            "2030-01-01T00:00:00+24:00",
        ];
        const SUSPECT: &[&str] = &[
            "2030-01-01t00:00:00z",
            "2030-01-01T00:00:00.1234567891Z",
            "9999-12-31T23:59:59Z",
            "9999-12-30T00:00:00.000000001Z",
            "0001-01-01T00:00:00+00:01",
            "0000-01-01T00:00:00Z",
            "2030-01-01T00:00:00-23:59",
            "2030-01-01T00:00:00",
            "2030-01-01 00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2030-13-01T00:00:00Z",
            "2030-01-01T00:00:60Z",
            "2030-01-01",
            "tomorrow",
            "",
        ];
        if self.bad() || self.maybe(0.15) {
            if self.maybe(0.1) {
                return self.wrong_type();
            }
            return json!(SUSPECT.choose(self.rng).expect("non-empty"));
        }
        json!(GOOD.choose(self.rng).expect("non-empty"))
    }

    fn json_value(&mut self, depth: usize) -> Value {
        match self.rng.random_range(0..if depth == 0 { 5 } else { 7 }) {
            0 => Value::Null,
            1 => json!(self.rng.random::<bool>()),
            2 => json!(self.rng.random::<i64>()),
            3 => json!(self.rng.random::<f64>() * 1e10),
            4 => json!(TEXT_POOL.choose(self.rng).expect("non-empty")),
            5 => Value::Array(
                (0..self.rng.random_range(0..3))
                    .map(|_| self.json_value(depth - 1))
                    .collect(),
            ),
            _ => {
                let n = self.rng.random_range(0..3);
                Value::Object(
                    (0..n)
                        .map(|i| (format!("k{i}"), self.json_value(depth - 1)))
                        .collect(),
                )
            }
        }
    }

    /// Nesting depths around the operator's limit (64) and beyond serde_json's (128,
    /// counted from the root of a list), for schemaless fields.
    fn deep_levels(&mut self) -> usize {
        *[2usize, 63, 64, 65, 100, 126, 130, 200]
            .choose(self.rng)
            .expect("non-empty")
    }

    /// A free-form object with 0 to 257 keys; sometimes nested deep (see `deep_levels`).
    fn free_object(&mut self) -> Value {
        let mut object = self.shallow_free_object();
        if let Value::Object(m) = &mut object
            && self.maybe(0.1)
        {
            let levels = self.deep_levels();
            let key = m.keys().next().cloned().unwrap_or_else(|| "deep".into());
            m.insert(key, nested(levels - 1));
        }
        object
    }

    fn shallow_free_object(&mut self) -> Value {
        if self.bad() && self.maybe(0.3) {
            return self.wrong_type();
        }
        let n = *[0usize, 1, 3, 255, 256, 257]
            .choose(self.rng)
            .expect("non-empty");
        let n = if n == 257 && !self.bad() { 256 } else { n };
        let mut m = Map::new();
        for i in 0..n {
            let key = if i % 7 == 3 {
                format!("ключ-{i}")
            } else {
                format!("k{i}")
            };
            let depth = self.rng.random_range(0..5);
            m.insert(key, self.json_value(depth));
        }
        Value::Object(m)
    }

    fn counters(&mut self) -> Value {
        let n = if self.bad() && self.maybe(0.3) {
            33
        } else {
            *[0usize, 1, 2, 32].choose(self.rng).expect("non-empty")
        };
        let mut m = Map::new();
        for i in 0..n {
            let key = match i {
                0 => "tokens".to_string(),
                1 => "wallSeconds".to_string(),
                2 => "cost".to_string(),
                _ => format!("c{i}"),
            };
            m.insert(key, self.number(0.0));
        }
        if self.bad() && self.maybe(0.2) {
            return self.wrong_type();
        }
        Value::Object(m)
    }

    fn strings(&mut self, max_items: usize, min: usize, max: usize) -> Value {
        let n = if self.bad() && self.maybe(0.3) {
            max_items + 1
        } else {
            *[0usize, 1, 2, max_items]
                .choose(self.rng)
                .expect("non-empty")
        };
        Value::Array((0..n).map(|_| self.text(min, max)).collect())
    }

    fn enumerated(&mut self, allowed: &[&str]) -> Value {
        if self.bad() {
            return [
                json!("Explode"),
                json!(allowed[0].to_lowercase()),
                json!(""),
                json!(7),
            ]
            .choose(self.rng)
            .expect("non-empty")
            .clone();
        }
        json!(allowed.choose(self.rng).expect("non-empty"))
    }

    fn work_item(&mut self) -> Value {
        let (queue, type_) = match self.rng.random_range(0..10) {
            0 if self.bad() => (None, None),
            0..=4 => (Some(self.text(1, 63)), None),
            5..=7 => (None, Some(self.text(1, 63))),
            _ => (Some(self.text(1, 63)), Some(self.text(1, 63))),
        };
        let priority = self.int(0, 1000, Bits::I32);
        let payload = self.free_object();
        let depends = self.strings(64, 1, 253);
        let not_before = self.time();
        let deadline = self.time();
        let budget = self.counters();
        let cancel = if self.bad() {
            self.wrong_type()
        } else {
            json!(self.rng.random::<bool>())
        };
        Fields::new()
            .set("queue", queue)
            .set("type", type_)
            .set("priority", self.optional(priority))
            .set("payload", self.optional(payload))
            .set("dependsOn", self.optional(depends))
            .set("notBefore", self.optional(not_before))
            .set("deadline", self.optional(deadline))
            .set("budget", self.optional(budget))
            .set("cancel", self.optional(cancel))
            .done()
    }

    fn task(&mut self, i: usize, names: &[String]) -> Value {
        let name = if self.bad() {
            [
                json!("Upper"),
                json!("-lead"),
                json!("trail-"),
                json!("x".repeat(41)),
                json!(""),
                json!("a_b"),
                json!(3),
            ]
            .choose(self.rng)
            .expect("non-empty")
            .clone()
        } else {
            json!(names[i])
        };
        let (queue, type_) = match self.rng.random_range(0..10) {
            0 if self.bad() => (None, None),
            0..=5 => (Some(self.text(1, 63)), None),
            _ => (None, Some(self.text(1, 63))),
        };
        let priority = self.int(0, 1000, Bits::I32);
        let payload = self.free_object();
        let depends: Vec<Value> = (0..self.rng.random_range(0..3))
            .map(|_| {
                if self.bad() {
                    json!("x".repeat(41))
                } else {
                    json!(names.choose(self.rng).expect("non-empty"))
                }
            })
            .collect();
        let budget = self.counters();
        let for_each = if self.maybe(0.3) {
            let n = if self.bad() {
                *[0usize, 1001].choose(self.rng).expect("non-empty")
            } else {
                self.rng.random_range(1..=4)
            };
            let mut values: Vec<Value> = (0..n).map(|_| self.json_value(2)).collect();
            if !values.is_empty() && self.maybe(0.1) {
                let k = self.rng.random_range(0..values.len());
                values[k] = nested(self.deep_levels());
            }
            let key = if self.maybe(0.5) {
                Some(self.text(1, 63))
            } else {
                None
            };
            Some(
                Fields::new()
                    .set("values", Some(Value::Array(values)))
                    .set("key", key)
                    .done(),
            )
        } else {
            None
        };
        Fields::new()
            .set("name", Some(name))
            .set("queue", queue)
            .set("type", type_)
            .set("priority", self.optional(priority))
            .set("payload", self.optional(payload))
            .set("dependsOn", Some(Value::Array(depends)))
            .set("budget", self.optional(budget))
            .set("forEach", for_each)
            .done()
    }

    fn work_request(&mut self) -> Value {
        let n = if self.bad() && self.maybe(0.3) {
            *[0usize, 501].choose(self.rng).expect("non-empty")
        } else if self.maybe(0.05) {
            500
        } else {
            self.rng.random_range(1..=5)
        };
        let names: Vec<String> = (0..n.max(1))
            .map(|i| format!("{}{i}", self.name_like(30)))
            .collect();
        let tasks: Vec<Value> = (0..n).map(|i| self.task(i, &names)).collect();
        let priority = self.int(0, 1000, Bits::I32);
        Fields::new()
            .set("priority", self.optional(priority))
            .set("tasks", Some(Value::Array(tasks)))
            .set(
                "cancel",
                if self.maybe(0.2) {
                    Some(json!(true))
                } else {
                    None
                },
            )
            .done()
    }

    fn work_queue(&mut self) -> Value {
        let types = self.strings(64, 1, 63);
        let max_attempts = self.int(1, 100, Bits::I32);
        let base = self.number(0.0);
        let max = if self.maybe(0.7) {
            self.number(600.0)
        } else {
            self.number(0.0)
        };
        let jitter = self.int(0, 100, Bits::I32);
        let backoff = Fields::new()
            .set("baseSeconds", self.optional(base))
            .set("maxSeconds", self.optional(max))
            .set("jitterPercent", self.optional(jitter))
            .done();
        let retry = Fields::new()
            .set("maxAttempts", self.optional(max_attempts))
            .set("backoff", self.optional(backoff))
            .done();
        let in_flight = self.int(1, i64::from(i32::MAX), Bits::I32);
        let attempt = self.int(1, i64::MAX, Bits::I64);
        let deadline = self.int(1, i64::MAX, Bits::I64);
        let timeouts = Fields::new()
            .set("attemptSeconds", self.optional(attempt))
            .set("deadlineSeconds", self.optional(deadline))
            .done();
        let budget = self.counters();
        let supervision = self.supervision();
        let escalation = self.escalation();
        let succeeded = self.int(0, i64::MAX, Bits::I64);
        let failed = self.int(0, i64::MAX, Bits::I64);
        let retention = Fields::new()
            .set("succeededSeconds", self.optional(succeeded))
            .set("failedSeconds", self.optional(failed))
            .done();
        let aging = self.int(0, i64::MAX, Bits::I64);
        Fields::new()
            .set("types", self.optional(types))
            .set("retry", self.optional(retry))
            .set("maxInFlight", self.optional(in_flight))
            .set("timeouts", self.optional(timeouts))
            .set("defaultBudget", self.optional(budget))
            .set("supervision", self.optional(supervision))
            .set("escalation", self.optional(escalation))
            .set("retention", self.optional(retention))
            .set("agingSeconds", self.optional(aging))
            .done()
    }

    fn supervision(&mut self) -> Value {
        let stall = self.int(1, i64::MAX, Bits::I64);
        let on_stall = self.enumerated(&["Restart", "Escalate", "Cancel"]);
        let on_budget = self.enumerated(&["Cancel", "Escalate", "Extend"]);
        let on_violation = self.enumerated(VIOLATION_ACTIONS);
        let n = if self.bad() && self.maybe(0.3) {
            65
        } else {
            *[0usize, 1, 64].choose(self.rng).expect("non-empty")
        };
        let rules: Map<String, Value> = (0..n)
            .map(|i| (format!("rule-{i}"), self.enumerated(VIOLATION_ACTIONS)))
            .collect();
        let warn = self.int(1, 100, Bits::I32);
        let max_ext = self.int(0, 10, Bits::I32);
        let percent = self.int(1, 100, Bits::I32);
        let extend = Fields::new()
            .set("maxExtensions", self.optional(max_ext))
            .set("percent", self.optional(percent))
            .done();
        let grace = self.int(0, i64::MAX, Bits::I64);
        Fields::new()
            .set("stallSeconds", self.optional(stall))
            .set("onStall", self.optional(on_stall))
            .set("onBudgetExceeded", self.optional(on_budget))
            .set("onViolation", self.optional(on_violation))
            .set("violationRules", self.optional(Value::Object(rules)))
            .set("budgetWarningPercent", self.optional(warn))
            .set("extend", self.optional(extend))
            .set("cancelGraceSeconds", self.optional(grace))
            .done()
    }

    fn escalation(&mut self) -> Value {
        let action = self.enumerated(&["Reroute", "RaisePriority", "Fail"]);
        let to_queue = self.text(1, 63);
        let raise = self.int(1, 1000, Bits::I32);
        Fields::new()
            .set("action", self.optional(action))
            .set("toQueue", self.optional(to_queue))
            .set("raisePriority", self.optional(raise))
            .done()
    }

    fn agent_pool(&mut self) -> Value {
        let n = if self.bad() && self.maybe(0.3) {
            *[0usize, 17].choose(self.rng).expect("non-empty")
        } else {
            self.rng.random_range(1..=16)
        };
        let queues: Vec<Value> = (0..n)
            .map(|_| {
                let name = self.text(1, 63);
                let weight = self.int(1, 100, Bits::I32);
                Fields::new()
                    .set("name", Some(name))
                    .set("weight", self.optional(weight))
                    .done()
            })
            .collect();
        let replicas = self.int(0, 1000, Bits::I32);
        let min = self.int(0, 1000, Bits::I32);
        let max = self.int(1, 1000, Bits::I32);
        let per_agent = self.int(1, i64::from(i32::MAX), Bits::I32);
        let delay = self.int(0, i64::MAX, Bits::I64);
        let scaling = Fields::new()
            .set("itemsPerAgent", self.optional(per_agent))
            .set("scaleDownDelaySeconds", self.optional(delay))
            .done();
        let lease = self.int(3, 600, Bits::I32);
        let kind = self.enumerated(&["Persistent", "Mortal"]);
        let max_items = self.int(1, i64::from(i32::MAX), Bits::I32);
        let lifecycle = Fields::new()
            .set("type", self.optional(kind))
            .set("maxItems", self.optional(max_items))
            .done();
        let policy = self.enumerated(&["Wait", "Exit", "ScaleDown"]);
        let template = if self.bad() {
            self.wrong_type()
        } else if self.maybe(0.1) {
            let levels = self.deep_levels();
            json!({"deep": nested(levels - 1), "spec": {"containers": [{"name": "agent", "image": "triad"}]}})
        } else {
            json!({"spec": {"containers": [{"name": "agent", "image": "triad"}]}})
        };
        Fields::new()
            .set("queues", Some(Value::Array(queues)))
            .set("replicas", self.optional(replicas))
            .set("minReplicas", self.optional(min))
            .set("maxReplicas", self.optional(max))
            .set("scaling", self.optional(scaling))
            .set("leaseSeconds", self.optional(lease))
            .set("lifecycle", self.optional(lifecycle))
            .set("emptyQueuePolicy", self.optional(policy))
            .set(
                "template",
                if self.maybe(0.95) {
                    Some(template)
                } else {
                    None
                },
            )
            .done()
    }
}
