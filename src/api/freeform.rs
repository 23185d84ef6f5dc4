//! Schemaless JSON fields (`x-kubernetes-preserve-unknown-fields`): WorkItem and task
//! payloads, fan-out values, a pool's pod template.
//!
//! serde_json refuses input nested more than 128 levels deep, counted from the root of
//! the document it decodes, and for a list or watch that root is the list. The API server
//! cannot bound the depth of a schemaless field (CEL cannot measure it), so one object
//! with a payload nested about 125 levels deep used to fail every typed list and watch
//! of its kind in the namespace: the scheduler, agents and supervisor all went blind.
//!
//! A [`FreeForm`] field is therefore taken as raw text first (serde_json steps over a
//! value it only keeps as text without recursing, so the list's depth never grows by the
//! field's), measured, and parsed only when it is at most [`MAX_FREE_FORM_DEPTH`] levels
//! deep. A deeper one decodes to [`FreeForm::TooDeep`], which keeps the text, so that
//! the object still decodes and serializes unchanged, and which the roles refuse with a
//! message naming the field. The API server's record of who owns which field nests as
//! deep as such a field; `root.rs` decodes that (`metadata.managedFields`) whatever its
//! depth.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use serde_json::value::RawValue;

/// Deepest nesting of objects and arrays Triad reads in a schemaless field (`{}` is one
/// level, `{"a": [1]}` two). Far beyond what real data needs, and far enough below
/// serde_json's 128 that a work command decoding its payload with serde_json defaults,
/// or anything else that nests it one level further, still can.
pub const MAX_FREE_FORM_DEPTH: usize = 64;

/// A schemaless JSON value as Triad decodes it.
#[derive(Clone, Debug, PartialEq)]
pub enum FreeForm {
    /// At most [`MAX_FREE_FORM_DEPTH`] levels deep.
    Value(Value),
    /// Nested deeper than [`MAX_FREE_FORM_DEPTH`]: kept as text, never acted on.
    TooDeep(TooDeep),
}

/// A schemaless value nested deeper than [`MAX_FREE_FORM_DEPTH`].
#[derive(Clone, Debug)]
pub struct TooDeep {
    /// Levels of nested objects and arrays.
    pub depth: usize,
    /// Size of its JSON text as received.
    pub bytes: usize,
    /// The text as received, so that serializing the object changes nothing. None in a
    /// cached copy that dropped it ([`FreeForm::into_marker`]).
    text: Option<Box<RawValue>>,
}

impl PartialEq for TooDeep {
    fn eq(&self, other: &Self) -> bool {
        self.depth == other.depth
            && self.bytes == other.bytes
            && self.text.as_ref().map(|t| t.get()) == other.text.as_ref().map(|t| t.get())
    }
}

impl TooDeep {
    /// "`field` is nested N levels deep; the limit is 64", for messages that go on
    /// with the fix.
    pub fn describe(&self, field: &str) -> String {
        format!(
            "{field} is nested {} levels deep; the limit is {MAX_FREE_FORM_DEPTH}",
            self.depth
        )
    }

    /// Why an item with this payload does not run, as both the scheduler (the item's
    /// `lastError`) and an agent that claimed it (its outcome) say it.
    pub fn payload_refusal(&self) -> String {
        format!(
            "{}: flatten it or pass it by reference (for example an object-storage URL)",
            self.describe("spec.payload")
        )
    }
}

impl FreeForm {
    /// Measures `raw` and parses it when it is shallow enough.
    pub fn from_raw(raw: Box<RawValue>) -> Result<FreeForm, serde_json::Error> {
        let text = raw.get();
        let depth = depth_of_text(text);
        if depth > MAX_FREE_FORM_DEPTH {
            return Ok(FreeForm::TooDeep(TooDeep {
                depth,
                bytes: text.len(),
                text: Some(raw),
            }));
        }
        serde_json::from_str(text).map(FreeForm::Value)
    }

    /// The value, unless it is too deep.
    pub fn value(&self) -> Option<&Value> {
        match self {
            FreeForm::Value(v) => Some(v),
            FreeForm::TooDeep(_) => None,
        }
    }

    pub fn too_deep(&self) -> Option<&TooDeep> {
        match self {
            FreeForm::Value(_) => None,
            FreeForm::TooDeep(t) => Some(t),
        }
    }

    /// What a cache that drops payloads keeps of this one: nothing for a value; for a
    /// too-deep one the marker, without its text (such a copy cannot be serialized;
    /// nothing is ever written back from a cached copy).
    pub fn into_marker(self) -> Option<FreeForm> {
        match self {
            FreeForm::Value(_) => None,
            FreeForm::TooDeep(t) => Some(FreeForm::TooDeep(TooDeep { text: None, ..t })),
        }
    }
}

impl Default for FreeForm {
    fn default() -> Self {
        FreeForm::Value(Value::Null)
    }
}

/// A value built in code is judged as if decoded: too deep is too deep.
impl From<Value> for FreeForm {
    fn from(value: Value) -> Self {
        let depth = depth(&value);
        if depth <= MAX_FREE_FORM_DEPTH {
            return FreeForm::Value(value);
        }
        let text = RawValue::from_string(value.to_string()).ok();
        FreeForm::TooDeep(TooDeep {
            depth,
            bytes: text.as_ref().map_or(0, |t| t.get().len()),
            text,
        })
    }
}

impl<'de> Deserialize<'de> for FreeForm {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // serde_json skips over a raw value iteratively: no recursion limit here.
        let raw = Box::<RawValue>::deserialize(deserializer)?;
        FreeForm::from_raw(raw).map_err(D::Error::custom)
    }
}

impl Serialize for FreeForm {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            FreeForm::Value(v) => v.serialize(serializer),
            FreeForm::TooDeep(TooDeep {
                text: Some(text), ..
            }) => text.serialize(serializer),
            FreeForm::TooDeep(TooDeep { depth, .. }) => Err(serde::ser::Error::custom(format!(
                "a value nested {depth} levels deep whose text this cached copy dropped cannot be serialized"
            ))),
        }
    }
}

/// Levels of nested objects and arrays in valid JSON text, without parsing it.
pub fn depth_of_text(json: &str) -> usize {
    let (mut depth, mut max) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    // Multi-byte UTF-8 sequences never contain ASCII bytes, so bytes will do.
    for &b in json.as_bytes() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                max = max.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// Levels of nested objects and arrays in a value (iterative: any depth).
pub fn depth(value: &Value) -> usize {
    let mut max = 0;
    let mut stack = vec![(value, 0usize)];
    while let Some((v, d)) = stack.pop() {
        match v {
            Value::Array(a) => {
                max = max.max(d + 1);
                stack.extend(a.iter().map(|x| (x, d + 1)));
            }
            Value::Object(o) => {
                max = max.max(d + 1);
                stack.extend(o.values().map(|x| (x, d + 1)));
            }
            _ => {}
        }
    }
    max
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{AgentPool, WorkItem, WorkRequest};
    use kube::core::ObjectList;
    use serde_json::json;

    /// `{"d":{"d":…{"x":1}…}}`, `levels` objects deep, as text (a `Value` this deep is
    /// fine to build, but text is how it arrives).
    fn nested(levels: usize) -> String {
        let mut s = String::new();
        for _ in 1..levels {
            s.push_str(r#"{"d":"#);
        }
        s.push_str(r#"{"x":1}"#);
        s.push_str(&"}".repeat(levels - 1));
        s
    }

    fn item_json(name: &str, payload: &str) -> String {
        format!(
            r#"{{"apiVersion":"triad.dev/v1alpha1","kind":"WorkItem","metadata":{{"name":"{name}","namespace":"ns"}},"spec":{{"queue":"q","payload":{payload}}}}}"#
        )
    }

    #[test]
    fn depth_counts_objects_and_arrays_not_brackets_in_strings() {
        for (text, want) in [
            ("1", 0),
            ("\"{[{[\"", 0),
            ("{}", 1),
            ("[1, {\"a\": []}]", 3),
            (r#"{"a": "\"{", "b": {"c": "\\"}}"#, 2),
            (r#"{"ключ": {"значение": ["}"]}}"#, 3),
        ] {
            assert_eq!(depth_of_text(text), want, "{text}");
            let value: Value = serde_json::from_str(text).unwrap();
            assert_eq!(depth(&value), want, "{text}");
        }
        assert_eq!(depth_of_text(&nested(200)), 200);
    }

    #[test]
    fn serde_json_skips_raw_values_without_its_recursion_limit() {
        // The premise of this module: a plain decode of a 200-deep value fails…
        let deep = nested(200);
        assert!(
            serde_json::from_str::<Value>(&deep)
                .unwrap_err()
                .to_string()
                .contains("recursion limit")
        );
        // …while taking it as raw text (or skipping it) does not, even inside a list.
        let list = format!(r#"{{"items":[{{"spec":{{"payload":{deep}}}}}]}}"#);
        #[derive(Deserialize)]
        struct Spec {
            #[allow(dead_code)]
            payload: Box<RawValue>,
        }
        #[derive(Deserialize)]
        struct Item {
            #[allow(dead_code)]
            spec: Spec,
        }
        #[derive(Deserialize)]
        struct List {
            #[allow(dead_code)]
            items: Vec<Item>,
        }
        serde_json::from_str::<List>(&list).expect("raw value skipped iteratively");
        serde_json::from_str::<serde::de::IgnoredAny>(&format!("[{list}]")).expect("ignored");
    }

    #[test]
    fn a_deep_payload_decodes_to_the_marker_alone_and_in_a_list() {
        let deep = item_json("deep", &nested(200));
        let item: WorkItem = serde_json::from_str(&deep).expect("decodes");
        let marker = item.spec.payload.as_ref().and_then(FreeForm::too_deep);
        assert_eq!(marker.map(|m| m.depth), Some(200));
        assert_eq!(marker.map(|m| m.bytes), Some(nested(200).len()));

        let list = format!(
            r#"{{"apiVersion":"triad.dev/v1alpha1","kind":"WorkItemList","metadata":{{"resourceVersion":"7"}},"items":[{},{deep},{}]}}"#,
            item_json("a", r#"{"n":1}"#),
            item_json("b", &nested(MAX_FREE_FORM_DEPTH)),
        );
        let list: ObjectList<WorkItem> = serde_json::from_str(&list).expect("the list decodes");
        let payloads: Vec<_> = list.items.iter().map(|i| i.spec.payload.clone()).collect();
        assert_eq!(payloads[0], Some(FreeForm::Value(json!({"n": 1}))));
        assert!(payloads[1].as_ref().is_some_and(|p| p.too_deep().is_some()));
        assert_eq!(
            payloads[2].as_ref().and_then(FreeForm::value).map(depth),
            Some(MAX_FREE_FORM_DEPTH),
            "the limit itself is fine"
        );

        // And as a watch event, the way kube decodes each line of a watch.
        let event = format!(r#"{{"type":"ADDED","object":{deep}}}"#);
        let event: kube::core::WatchEvent<WorkItem> =
            serde_json::from_str(&event).expect("the event decodes");
        assert!(
            matches!(event, kube::core::WatchEvent::Added(i) if i.spec.payload.as_ref().is_some_and(|p| p.too_deep().is_some()))
        );
    }

    #[test]
    fn deep_request_values_and_pool_templates_decode_to_the_marker() {
        let request = format!(
            r#"{{"apiVersion":"triad.dev/v1alpha1","kind":"WorkRequest","metadata":{{"name":"r"}},"spec":{{"tasks":[{{"name":"t","queue":"q","payload":{},"forEach":{{"values":[1,{},[]]}}}}]}}}}"#,
            nested(150),
            nested(150)
        );
        let list = format!(r#"{{"items":[{request}]}}"#);
        let list: ObjectList<WorkRequest> = serde_json::from_str(&list).expect("decodes");
        let task = &list.items[0].spec.tasks[0];
        assert!(
            task.payload
                .as_ref()
                .is_some_and(|p| p.too_deep().is_some())
        );
        let values = &task.for_each.as_ref().unwrap().values;
        assert_eq!(values[0], FreeForm::Value(json!(1)));
        assert_eq!(values[1].too_deep().map(|m| m.depth), Some(150));
        assert_eq!(values[2], FreeForm::Value(json!([])));

        let pool = format!(
            r#"{{"apiVersion":"triad.dev/v1alpha1","kind":"AgentPool","metadata":{{"name":"p"}},"spec":{{"queues":[{{"name":"q"}}],"template":{}}}}}"#,
            nested(300)
        );
        let pool: AgentPool = serde_json::from_str(&pool).expect("decodes");
        assert_eq!(pool.spec.template.too_deep().map(|m| m.depth), Some(300));
    }

    #[test]
    fn serialized_form_is_unchanged() {
        // Valid payloads: exactly what a plain Value gives.
        for payload in [
            json!({}),
            json!({"a": [1, 2.5, null, true, "ü"], "b": {"c": {"d": []}}}),
            json!({"big": 1e300, "neg": -7, "u": u64::MAX}),
        ] {
            let item = json!({"apiVersion": "triad.dev/v1alpha1", "kind": "WorkItem",
                "metadata": {"name": "x"}, "spec": {"queue": "q", "priority": 500, "payload": payload}});
            let typed: WorkItem = serde_json::from_value(item.clone()).unwrap();
            assert_eq!(typed.spec.payload, Some(FreeForm::Value(payload.clone())));
            assert_eq!(serde_json::to_value(&typed).unwrap(), item);
            let text = serde_json::to_string(&typed).unwrap();
            let again: WorkItem = serde_json::from_str(&text).unwrap();
            assert_eq!(again, typed);
        }
        // A too-deep one: its text, byte for byte.
        let deep = nested(130);
        let typed: WorkItem = serde_json::from_str(&item_json("d", &deep)).unwrap();
        let text = serde_json::to_string(&typed).unwrap();
        assert!(text.contains(&format!(r#""payload":{deep}"#)), "{text}");
        let again: WorkItem = serde_json::from_str(&text).unwrap();
        assert_eq!(again, typed);
    }

    #[test]
    fn values_built_in_code_are_judged_like_decoded_ones() {
        let deep: FreeForm = serde_json::from_str::<Box<RawValue>>(&nested(70))
            .map(|r| FreeForm::from_raw(r).unwrap())
            .unwrap();
        let mut value = json!({"x": 1});
        for _ in 1..70 {
            value = json!({"d": value});
        }
        assert_eq!(FreeForm::from(value), deep);
        assert_eq!(
            FreeForm::from(json!({"a": 1})),
            FreeForm::Value(json!({"a": 1}))
        );
    }

    #[test]
    fn a_cached_marker_has_no_text_and_refuses_to_serialize() {
        let typed: WorkItem = serde_json::from_str(&item_json("d", &nested(100))).unwrap();
        let marker = typed.spec.payload.clone().and_then(FreeForm::into_marker);
        assert_eq!(
            marker.as_ref().and_then(|m| m.too_deep()).map(|m| m.depth),
            Some(100)
        );
        assert!(serde_json::to_string(&marker).is_err());
        assert_eq!(FreeForm::Value(json!({})).into_marker(), None);
    }
}
