//! The WorkItem, WorkRequest and AgentPool objects as Triad decodes them.
//!
//! `#[derive(CustomResource)]` makes each kind's root type (in its own module; it still
//! renders the CRD), but its derived `Deserialize` decodes `metadata` with
//! `k8s-openapi`'s `ObjectMeta`, whose `managedFields[].fieldsV1` is a plain JSON value.
//! The API server records field ownership inside schemaless objects map by map, so a
//! payload (or pool template) nested N levels deep makes a `fieldsV1` nested about N
//! levels too, and serde_json's recursion limit would fail the whole list or watch on
//! it, as it would on the payload itself (see `freeform.rs`). The root types here are
//! the same shape with the same wire form, with one difference when decoding: metadata
//! is taken as raw text first, and a `managedFields` entry whose `fieldsV1` is too deep
//! to parse loses its `fieldsV1` (Triad never reads it, and never writes metadata back
//! from a decoded object; every cache drops managedFields anyway).
//!
//! `api/mod.rs` re-exports these by name, which shadows the derived types of the same
//! name that its glob re-exports bring in.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use super::freeform::depth_of_text;

/// Metadata nested at most this deep (objects and arrays, from its own root) is decoded
/// as it is; serde_json's limit is 128.
const META_DEPTH: usize = 120;
/// In deeper metadata, a `managedFields` entry keeps its `fieldsV1` up to this depth.
const FIELDS_V1_DEPTH: usize = 100;

/// `ObjectMeta`, whatever the depth of its `managedFields`.
fn bounded_meta<'de, D: Deserializer<'de>>(deserializer: D) -> Result<ObjectMeta, D::Error> {
    // serde_json skips over a raw value iteratively: no recursion limit here.
    let raw = Box::<RawValue>::deserialize(deserializer)?;
    decode_meta(raw.get()).map_err(D::Error::custom)
}

fn decode_meta(text: &str) -> Result<ObjectMeta, serde_json::Error> {
    if depth_of_text(text) <= META_DEPTH {
        return serde_json::from_str(text);
    }
    type Members = BTreeMap<String, Box<RawValue>>;
    let mut meta: Members = serde_json::from_str(text)?;
    if let Some(managed) = meta.get_mut("managedFields") {
        let mut entries: Option<Vec<Members>> = serde_json::from_str(managed.get())?;
        for entry in entries.iter_mut().flatten() {
            if entry
                .get("fieldsV1")
                .is_some_and(|f| depth_of_text(f.get()) > FIELDS_V1_DEPTH)
            {
                entry.remove("fieldsV1");
            }
        }
        *managed = serde_json::value::to_raw_value(&entries)?;
    }
    serde_json::from_str(&serde_json::to_string(&meta)?)
}

/// A status the API server fills in by the CRD's default when nobody has written one.
/// Triad decodes it as no status, so "never written" stays visible to its decisions
/// (for a WorkItem: not yet admitted) while users see the defaulted phase.
pub trait ServerDefault {
    fn is_server_default(&self) -> bool {
        false
    }
}

impl ServerDefault for super::WorkItemStatus {
    fn is_server_default(&self) -> bool {
        super::WorkItemStatus::is_server_default(self)
    }
}
impl ServerDefault for super::WorkRequestStatus {}
impl ServerDefault for super::AgentPoolStatus {}

/// A root type for `$kind`: the derived one's fields, impls and wire form, decoded with
/// [`bounded_meta`].
macro_rules! bounded_root {
    ($(#[$doc:meta])* $kind:ident, $derived:ty, $spec:ty, $status:ty) => {
        $(#[$doc])*
        #[derive(Clone, Debug, Default, PartialEq)]
        pub struct $kind {
            pub metadata: ObjectMeta,
            pub spec: $spec,
            pub status: Option<$status>,
        }

        impl $kind {
            pub fn new(name: &str, spec: $spec) -> Self {
                Self {
                    metadata: ObjectMeta {
                        name: Some(name.to_string()),
                        ..Default::default()
                    },
                    spec,
                    status: None,
                }
            }
        }

        impl kube::Resource for $kind {
            type DynamicType = ();
            type Scope = <$derived as kube::Resource>::Scope;

            fn group(dt: &()) -> std::borrow::Cow<'_, str> {
                <$derived as kube::Resource>::group(dt)
            }
            fn kind(dt: &()) -> std::borrow::Cow<'_, str> {
                <$derived as kube::Resource>::kind(dt)
            }
            fn version(dt: &()) -> std::borrow::Cow<'_, str> {
                <$derived as kube::Resource>::version(dt)
            }
            fn api_version(dt: &()) -> std::borrow::Cow<'_, str> {
                <$derived as kube::Resource>::api_version(dt)
            }
            fn plural(dt: &()) -> std::borrow::Cow<'_, str> {
                <$derived as kube::Resource>::plural(dt)
            }
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }

        impl kube::core::object::HasSpec for $kind {
            type Spec = $spec;
            fn spec(&self) -> &$spec {
                &self.spec
            }
            fn spec_mut(&mut self) -> &mut $spec {
                &mut self.spec
            }
        }

        impl kube::core::object::HasStatus for $kind {
            type Status = $status;
            fn status(&self) -> Option<&$status> {
                self.status.as_ref()
            }
            fn status_mut(&mut self) -> &mut Option<$status> {
                &mut self.status
            }
        }

        impl kube::CustomResourceExt for $kind {
            fn crd() -> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
                <$derived as kube::CustomResourceExt>::crd()
            }
            fn crd_name() -> &'static str {
                <$derived as kube::CustomResourceExt>::crd_name()
            }
            fn api_resource() -> kube::core::ApiResource {
                kube::core::ApiResource::erase::<Self>(&())
            }
            fn shortnames() -> &'static [&'static str] {
                <$derived as kube::CustomResourceExt>::shortnames()
            }
        }

        /// As the derived type writes it.
        impl serde::Serialize for $kind {
            fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeStruct;
                let mut obj =
                    ser.serialize_struct(stringify!($kind), 4 + usize::from(self.status.is_some()))?;
                obj.serialize_field("apiVersion", &<Self as kube::Resource>::api_version(&()))?;
                obj.serialize_field("kind", &<Self as kube::Resource>::kind(&()))?;
                obj.serialize_field("metadata", &self.metadata)?;
                obj.serialize_field("spec", &self.spec)?;
                if let Some(status) = &self.status {
                    obj.serialize_field("status", status)?;
                }
                obj.end()
            }
        }

        /// As the derived type reads it, but with [`bounded_meta`].
        impl<'de> Deserialize<'de> for $kind {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                #[derive(Deserialize)]
                struct Wire {
                    #[serde(deserialize_with = "bounded_meta")]
                    metadata: ObjectMeta,
                    spec: $spec,
                    status: Option<$status>,
                }
                let Wire {
                    metadata,
                    spec,
                    status,
                } = Wire::deserialize(deserializer)?;
                let status = status.filter(|s| !ServerDefault::is_server_default(s));
                Ok(Self {
                    metadata,
                    spec,
                    status,
                })
            }
        }
    };
}

bounded_root!(
    /// One unit of work: pulled from a WorkQueue by an agent, run, supervised and retried
    /// by Triad.
    WorkItem,
    super::workitem::WorkItem,
    super::WorkItemSpec,
    super::WorkItemStatus
);
bounded_root!(
    /// A request for work: a task graph (and fan-outs) that the scheduler turns into
    /// WorkItems.
    WorkRequest,
    super::workrequest::WorkRequest,
    super::WorkRequestSpec,
    super::WorkRequestStatus
);
bounded_root!(
    /// A pool of long-lived agent pods that pull WorkItems from weighted WorkQueues.
    AgentPool,
    super::agentpool::AgentPool,
    super::AgentPoolSpec,
    super::AgentPoolStatus
);

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::ObjectList;
    use kube::{CustomResourceExt, Resource};
    use serde_json::json;

    /// `levels` nested objects as text.
    fn nested(levels: usize) -> String {
        format!(
            "{}{{}}{}",
            r#"{"f:d":"#.repeat(levels - 1),
            "}".repeat(levels - 1)
        )
    }

    fn item_with_fields_v1(fields_v1: &str) -> String {
        format!(
            r#"{{"apiVersion":"triad.dev/v1alpha1","kind":"WorkItem","metadata":{{"name":"a","namespace":"ns","labels":{{"l":"v"}},"managedFields":[{{"manager":"kubectl","operation":"Update","fieldsType":"FieldsV1","fieldsV1":{fields_v1}}},{{"manager":"triad-scheduler","operation":"Update","fieldsV1":{{"f:status":{{}}}}}}]}},"spec":{{"queue":"q"}}}}"#
        )
    }

    #[test]
    fn the_api_servers_defaulted_status_decodes_as_no_status() {
        use crate::api::Phase;
        let decode = |status: serde_json::Value| -> WorkItem {
            serde_json::from_value(json!({
                "apiVersion": "triad.dev/v1alpha1", "kind": "WorkItem",
                "metadata": {"name": "a"}, "spec": {"queue": "q"}, "status": status
            }))
            .expect("decodes")
        };
        // What the CRD's default fills in for an item nobody wrote status to.
        let fresh = decode(json!({"phase": "Queued"}));
        assert_eq!(fresh.status, None);
        assert_eq!(fresh.phase(), None, "a fresh item is not admitted");
        // The scheduler's admission records the routed queue; its explanation a note.
        for written in [
            json!({"phase": "Queued", "queue": "q"}),
            json!({"phase": "Queued", "waiting": "no agent serves queue q"}),
            json!({"phase": "Queued", "attempt": 1}),
            json!({"phase": "Pending"}),
        ] {
            assert!(decode(written.clone()).status.is_some(), "{written}");
        }
        // The CRD carries that default.
        let crd = serde_json::to_value(super::super::workitem::WorkItem::crd()).expect("crd");
        assert_eq!(
            crd.pointer("/spec/versions/0/schema/openAPIV3Schema/properties/status/default"),
            Some(&json!({"phase": Phase::Queued.as_str()}))
        );
    }

    #[test]
    fn deep_managed_fields_lose_their_fields_v1_not_the_object() {
        // The API server tracks fields inside a schemaless payload map by map, so
        // managedFields nest as deep as the payload.
        let text = item_with_fields_v1(&nested(200));
        assert!(serde_json::from_str::<super::super::workitem::WorkItem>(&text).is_err());
        let item: WorkItem = serde_json::from_str(&text).expect("decodes");
        let managed = item.metadata.managed_fields.as_ref().expect("entries kept");
        assert_eq!(managed.len(), 2);
        assert_eq!(managed[0].manager.as_deref(), Some("kubectl"));
        assert!(
            managed[0].fields_v1.is_none(),
            "the deep fieldsV1 is dropped"
        );
        assert!(managed[1].fields_v1.is_some(), "a shallow one is kept");
        assert_eq!(
            item.metadata.labels.as_ref().map(|l| l["l"].as_str()),
            Some("v")
        );

        let list = format!(
            r#"{{"items":[{text},{}]}}"#,
            item_with_fields_v1(&nested(60))
        );
        let list: ObjectList<WorkItem> = serde_json::from_str(&list).expect("the list decodes");
        assert!(
            list.items[1].metadata.managed_fields.as_ref().unwrap()[0]
                .fields_v1
                .is_some(),
            "shallow metadata is decoded as it is"
        );
    }

    #[test]
    fn same_wire_form_and_resource_as_the_derived_types() {
        let value = json!({
            "apiVersion": "triad.dev/v1alpha1", "kind": "WorkItem",
            "metadata": {"name": "a", "namespace": "ns", "resourceVersion": "7"},
            "spec": {"queue": "q", "priority": 3, "payload": {"x": [1, {"y": null}]}},
            "status": {"phase": "Queued", "attempt": 2}
        });
        let ours: WorkItem = serde_json::from_value(value.clone()).unwrap();
        let derived: super::super::workitem::WorkItem =
            serde_json::from_value(value.clone()).unwrap();
        assert_eq!(serde_json::to_value(&ours).unwrap(), value);
        assert_eq!(
            serde_json::to_string(&ours).unwrap(),
            serde_json::to_string(&derived).unwrap()
        );
        let fresh = WorkItem::new("b", Default::default());
        assert_eq!(
            serde_json::to_value(&fresh).unwrap(),
            serde_json::to_value(super::super::workitem::WorkItem::new(
                "b",
                Default::default()
            ))
            .unwrap()
        );
        assert!(serde_json::from_value::<WorkItem>(json!({"spec": {"queue": "q"}})).is_err());

        assert_eq!(WorkItem::kind(&()), "WorkItem");
        assert_eq!(WorkRequest::plural(&()), "workrequests");
        assert_eq!(AgentPool::api_version(&()), "triad.dev/v1alpha1");
        assert_eq!(
            WorkItem::url_path(&(), Some("ns")),
            "/apis/triad.dev/v1alpha1/namespaces/ns/workitems"
        );
        assert_eq!(AgentPool::crd_name(), "agentpools.triad.dev");
        assert_eq!(WorkRequest::shortnames(), ["wr"]);
        assert_eq!(WorkItem::api_resource().kind, "WorkItem");
    }
}
