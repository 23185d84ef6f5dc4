//! Bounds on the strings, lists and maps of the four CRDs' status (and some spec).
//!
//! The API server refuses a write that breaks one of these (`maxLength`, `maxItems`,
//! `maxProperties` in the schema), so every Triad writer keeps within them: a refused
//! status write could lose an attempt's ending. Each bound is at least what its writers
//! can produce, and the writers cut what comes from outside (a work command's report,
//! an API error, a pod's status, a value written before the bound existed) to fit:
//! reasons to [`MAX_REASON_LEN`], messages to [`MAX_MESSAGE_LEN`], names are object names.
//! They also keep the CEL cost estimates of rules over status bounded (the agent
//! admission policy compares status lists and maps).
//!
//! Lengths are in characters (Unicode code points), as the API server counts
//! `maxLength`; a writer that cuts to N bytes is within N characters too.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use serde_json::{Value, json};

use super::workitem::MAX_RESULT_BYTES;

/// A Kubernetes object name (DNS subdomain): `status.queue`, the claim's agent, pod
/// and Lease, `attempts[].agent`, a request's `failedItems`.
pub const MAX_NAME_LEN: usize = 253;
/// A reason: a CamelCase word (outcome, lastError, attempts, interventions, conditions).
/// The work command's `fail.reason` is cut to 128 (`core::report::MAX_REASON`).
pub const MAX_REASON_LEN: usize = 256;
/// A human-readable message (outcome, lastError, interventions, conditions).
pub const MAX_MESSAGE_LEN: usize = 4096;
/// An intervention's `monitor` and `action`: words from fixed sets.
pub const MAX_WORD_LEN: usize = 64;
/// A condition's `type` (Kubernetes' own bound for `metav1.Condition`).
pub const MAX_CONDITION_TYPE_LEN: usize = 316;
/// Conditions on one object. Triad writes at most 9 types on an item, 3 on a pool and
/// 3 on a request; the rest is room for other controllers' conditions.
pub const MAX_CONDITIONS: usize = 32;
/// `status.waiting`; the scheduler writes at most 80 (`core::waiting::MAX_MESSAGE`).
pub const MAX_WAITING_LEN: usize = 256;
/// `progress.message`; the report parser cuts it to 1024 (`core::report::MAX_TEXT`).
pub const MAX_PROGRESS_MESSAGE_LEN: usize = 1024;
/// `progress.checkpoint`; the report parser refuses more than 4096 bytes
/// (`core::report::MAX_CHECKPOINT`).
pub const MAX_CHECKPOINT_LEN: usize = 4096;
/// Counters in `status.usage` and `status.budgetExtension`. Usage holds at most 32
/// reported counters plus the two measured ones; an extension only counters of the
/// budget (`spec.budget` and the queue's `defaultBudget`, 32 each).
pub const MAX_STATUS_COUNTERS: usize = 64;
/// Top-level keys of `status.result`. Its bytes are bounded by the agent (at most
/// [`MAX_RESULT_BYTES`] serialized, see `core::report`), which the schema cannot
/// express for a schemaless object; this is what that byte bound implies (a key
/// and its value take at least 5 bytes, `"":0,`), so only its shape is checked here.
pub const MAX_RESULT_PROPERTIES: usize = MAX_RESULT_BYTES / 4;
/// Names in a request's `status.failedItems` (the first ones by name).
pub const MAX_FAILED_ITEMS: usize = 20;
/// A request's `status.progress`, "succeeded/total".
pub const MAX_REQUEST_PROGRESS_LEN: usize = 64;
/// A pool's `status.selector`, `triad.dev/pool=<pool name>`.
pub const MAX_SELECTOR_LEN: usize = 512;

/// `status.conditions`: Kubernetes' `Condition` with its own bounds on `type` and
/// `status`, Triad's on `reason` and `message`, and at most
/// [`MAX_CONDITIONS`] of them.
pub(crate) fn bounded_conditions(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut item = g.subschema_for::<Condition>();
    if let Some(Value::Object(props)) = item.get_mut("properties") {
        let mut bound = |field: &str, extra: Value| {
            if let (Some(Value::Object(p)), Value::Object(extra)) = (props.get_mut(field), extra) {
                p.extend(extra);
            }
        };
        bound("type", json!({"maxLength": MAX_CONDITION_TYPE_LEN}));
        bound("status", json!({"enum": ["True", "False", "Unknown"]}));
        bound("reason", json!({"maxLength": MAX_REASON_LEN}));
        bound("message", json!({"maxLength": MAX_MESSAGE_LEN}));
    }
    schemars::json_schema!({
        "type": "array",
        "maxItems": MAX_CONDITIONS,
        "items": item,
    })
}

/// Cuts `s` to at most `max` characters, ending in "…" when cut.
pub fn fit(s: &mut String, max: usize) {
    if max == 0 {
        s.clear();
        return;
    }
    if let Some((end, _)) = s.char_indices().nth(max - 1)
        && s[end..].chars().nth(1).is_some()
    {
        s.truncate(end);
        s.push('…');
    }
}

/// [`fit`] on a copy.
pub fn fitted(s: &str, max: usize) -> String {
    let mut s = s.to_owned();
    fit(&mut s, max);
    s
}

impl super::AttemptRecord {
    /// Within the schema's bounds, whatever it was copied from.
    pub fn fit(&mut self) {
        if let Some(a) = self.agent.as_mut() {
            fit(a, MAX_NAME_LEN);
        }
        if let Some(r) = self.reason.as_mut() {
            fit(r, MAX_REASON_LEN);
        }
    }
}

impl super::Intervention {
    /// Within the schema's bounds, whatever it was made from.
    pub fn fit(&mut self) {
        fit(&mut self.monitor, MAX_WORD_LEN);
        fit(&mut self.reason, MAX_REASON_LEN);
        fit(&mut self.action, MAX_WORD_LEN);
        if let Some(m) = self.message.as_mut() {
            fit(m, MAX_MESSAGE_LEN);
        }
    }
}

impl super::Outcome {
    /// Within the schema's bounds, whatever it was made from.
    pub fn fit(&mut self) {
        if let Some(r) = self.reason.as_mut() {
            fit(r, MAX_REASON_LEN);
        }
        if let Some(m) = self.message.as_mut() {
            fit(m, MAX_MESSAGE_LEN);
        }
    }
}

impl super::ItemError {
    /// Within the schema's bounds, whatever it was made from.
    pub fn fit(&mut self) {
        fit(&mut self.reason, MAX_REASON_LEN);
        if let Some(m) = self.message.as_mut() {
            fit(m, MAX_MESSAGE_LEN);
        }
    }
}

/// A condition within the schema's bounds on its strings (its `status` is the writer's
/// to get right).
pub fn fit_condition(c: &mut Condition) {
    fit(&mut c.type_, MAX_CONDITION_TYPE_LEN);
    fit(&mut c.reason, MAX_REASON_LEN);
    fit(&mut c.message, MAX_MESSAGE_LEN);
}

/// Conditions within the schema's bounds: each one's strings, and at most
/// [`MAX_CONDITIONS`] of them. Triad writes only a few types per object, so the list
/// is full only with others' conditions; then the oldest of those not in `keep` (the
/// types this write sets) make room, rather than the whole write being refused.
pub fn fit_conditions(list: &mut Vec<Condition>, keep: &[&str]) {
    list.iter_mut().for_each(fit_condition);
    while list.len() > MAX_CONDITIONS {
        let oldest = list
            .iter()
            .enumerate()
            .filter(|(_, c)| !keep.contains(&c.type_.as_str()))
            .min_by_key(|(_, c)| c.last_transition_time.0)
            .map(|(i, _)| i);
        match oldest {
            Some(i) => {
                list.remove(i);
            }
            None => list.truncate(MAX_CONDITIONS),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{MAX_ATTEMPT_HISTORY, MAX_INTERVENTION_HISTORY};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    #[test]
    fn fit_cuts_to_characters_with_an_ellipsis() {
        assert_eq!(fitted("abc", 3), "abc");
        assert_eq!(fitted("abcd", 3), "ab…");
        assert_eq!(fitted("üüüü", 3), "üü…");
        assert_eq!(fitted("", 3), "");
        assert_eq!(fitted("ab", 0), "");
        assert_eq!(fitted(&"é".repeat(5000), 256).chars().count(), 256);
    }

    /// Each bound is in the generated CRD where the writers expect it.
    #[test]
    fn the_crds_carry_the_bounds() {
        let schema = |kind: &str| {
            let crd = crate::api::crds()
                .into_iter()
                .find(|c| c.spec.names.kind == kind)
                .expect(kind);
            let v = serde_json::to_value(&crd.spec.versions[0].schema).expect("schema");
            v["openAPIV3Schema"]["properties"]["status"].clone()
        };
        let at = |v: &Value, path: &str| {
            path.split('.').fold(v.clone(), |v, p| match p {
                "[]" => v["items"].clone(),
                p => v["properties"][p].clone(),
            })
        };
        let item = schema("WorkItem");
        for (path, key, want) in [
            ("queue", "maxLength", MAX_NAME_LEN),
            ("waiting", "maxLength", MAX_WAITING_LEN),
            ("claim.agent", "maxLength", MAX_NAME_LEN),
            ("claim.pod", "maxLength", MAX_NAME_LEN),
            ("claim.lease", "maxLength", MAX_NAME_LEN),
            ("progress.message", "maxLength", MAX_PROGRESS_MESSAGE_LEN),
            ("progress.checkpoint", "maxLength", MAX_CHECKPOINT_LEN),
            ("usage", "maxProperties", MAX_STATUS_COUNTERS),
            ("budgetExtension", "maxProperties", MAX_STATUS_COUNTERS),
            ("result", "maxProperties", MAX_RESULT_PROPERTIES),
            ("outcome.reason", "maxLength", MAX_REASON_LEN),
            ("outcome.message", "maxLength", MAX_MESSAGE_LEN),
            ("lastError.reason", "maxLength", MAX_REASON_LEN),
            ("lastError.message", "maxLength", MAX_MESSAGE_LEN),
            ("attempts", "maxItems", MAX_ATTEMPT_HISTORY),
            ("attempts.[].agent", "maxLength", MAX_NAME_LEN),
            ("attempts.[].reason", "maxLength", MAX_REASON_LEN),
            ("interventions", "maxItems", MAX_INTERVENTION_HISTORY),
            ("interventions.[].monitor", "maxLength", MAX_WORD_LEN),
            ("interventions.[].reason", "maxLength", MAX_REASON_LEN),
            ("interventions.[].action", "maxLength", MAX_WORD_LEN),
            ("interventions.[].message", "maxLength", MAX_MESSAGE_LEN),
        ] {
            assert_eq!(at(&item, path)[key], json!(want), "WorkItem status.{path}");
        }
        let request = schema("WorkRequest");
        assert_eq!(
            at(&request, "progress")["maxLength"],
            MAX_REQUEST_PROGRESS_LEN
        );
        assert_eq!(at(&request, "failedItems")["maxItems"], MAX_FAILED_ITEMS);
        assert_eq!(at(&request, "failedItems.[]")["maxLength"], MAX_NAME_LEN);
        assert_eq!(
            at(&schema("AgentPool"), "selector")["maxLength"],
            MAX_SELECTOR_LEN
        );
        for kind in ["WorkItem", "WorkQueue", "AgentPool", "WorkRequest"] {
            let conditions = at(&schema(kind), "conditions");
            assert_eq!(conditions["maxItems"], MAX_CONDITIONS, "{kind}");
            for (field, want) in [
                ("type", MAX_CONDITION_TYPE_LEN),
                ("reason", MAX_REASON_LEN),
                ("message", MAX_MESSAGE_LEN),
            ] {
                assert_eq!(at(&conditions, &format!("[].{field}"))["maxLength"], want);
            }
            assert_eq!(
                at(&conditions, "[].status")["enum"],
                json!(["True", "False", "Unknown"])
            );
        }
    }

    /// The writers' own limits, elsewhere, are within the bounds here.
    #[test]
    fn the_writers_limits_are_within_the_bounds() {
        use crate::core::{report, waiting};
        const {
            assert!(waiting::MAX_MESSAGE <= MAX_WAITING_LEN);
            assert!(report::MAX_TEXT <= MAX_PROGRESS_MESSAGE_LEN);
            assert!(report::MAX_CHECKPOINT <= MAX_CHECKPOINT_LEN);
            assert!(report::MAX_REASON <= MAX_REASON_LEN);
            // A budget has 32 counters at most in spec.budget and 32 in defaultBudget.
            assert!(32 + 32 <= MAX_STATUS_COUNTERS);
            // Lease names are `triad-agent-<agent>`.
            assert!("triad-agent-".len() < MAX_NAME_LEN);
        }
    }

    /// A result within the agent's byte bound has fewer keys than the schema allows:
    /// one key more than the schema allows, each as short as JSON lets distinct keys
    /// be, is over the byte bound and refused by the report parser.
    #[test]
    fn the_result_key_bound_follows_from_the_byte_bound() {
        let short_keys = std::iter::once(String::new())
            .chain((b'a'..=b'z').map(|c| (c as char).to_string()))
            .chain((b'a'..=b'z').flat_map(|a| {
                (b'a'..=b'z').flat_map(move |b| {
                    (b'a'..=b'z').map(move |c| format!("{}{}{}", a as char, b as char, c as char))
                })
            }));
        let with_keys = |n: usize| {
            let map: serde_json::Map<String, Value> =
                short_keys.clone().take(n).map(|k| (k, json!(0))).collect();
            assert_eq!(map.len(), n);
            format!("{{\"result\": {}}}", Value::Object(map))
        };
        let over = with_keys(MAX_RESULT_PROPERTIES + 1);
        assert!(crate::core::report::parse_line(over.as_bytes()).is_err());
        // While a result of many keys within the byte bound is taken.
        let many = with_keys(MAX_RESULT_BYTES / 9);
        assert!(crate::core::report::parse_line(many.as_bytes()).is_ok());
    }

    #[test]
    fn fit_conditions_drops_the_oldest_of_others_never_the_kept() {
        let c = |type_: &str, at: i64| Condition {
            type_: type_.into(),
            status: "True".into(),
            reason: "R".repeat(2 * MAX_REASON_LEN),
            message: String::new(),
            last_transition_time: Time(jiff::Timestamp::from_second(at).expect("time")),
            observed_generation: None,
        };
        let mut list: Vec<Condition> = (0..MAX_CONDITIONS + 2)
            .map(|i| c(&format!("T{i}"), 100 + i as i64))
            .collect();
        list.push(c("Mine", 0));
        fit_conditions(&mut list, &["Mine"]);
        assert_eq!(list.len(), MAX_CONDITIONS);
        let types: Vec<&str> = list.iter().map(|c| c.type_.as_str()).collect();
        assert!(types.contains(&"Mine"));
        assert!(!types.contains(&"T0") && !types.contains(&"T1") && !types.contains(&"T2"));
        assert!(
            list.iter()
                .all(|c| c.reason.chars().count() == MAX_REASON_LEN)
        );
    }
}
