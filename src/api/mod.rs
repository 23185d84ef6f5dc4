//! The four Triad resource types (`triad.dev/v1alpha1`) and their status types.
//!
//! Types only: no decisions live here. Field names follow the design brief because
//! users, dashboards and checks rely on them.

// kube-derive repeats `type_ = "..."` across printcolumn(...) entries, which clippy
// mistakes for duplicated attributes.
#![allow(clippy::duplicated_attributes)]

mod agentpool;
mod bounds;
mod common;
mod freeform;
mod root;
mod workitem;
mod workqueue;
mod workrequest;

pub use agentpool::*;
pub use bounds::*;
pub use common::*;
pub use freeform::*;
pub use workitem::*;
pub use workqueue::*;
pub use workrequest::*;
// By name, so that these shadow the derived root types of the globs above: they decode
// metadata whatever its depth (see `root`).
pub use root::{AgentPool, WorkItem, WorkRequest};

use kube::CustomResourceExt;

pub const GROUP: &str = "triad.dev";
pub const VERSION: &str = "v1alpha1";

/// Every CRD Triad installs, in a stable order.
pub fn crds()
-> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>
{
    vec![
        WorkQueue::crd(),
        WorkItem::crd(),
        AgentPool::crd(),
        WorkRequest::crd(),
    ]
}

/// The CRDs as one multi-document YAML stream, as committed under `crds/`.
pub fn crds_yaml() -> Result<String, serde_yaml::Error> {
    let mut out = String::new();
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    /// `crds/` is what users `kubectl apply`; it must match the types. Regenerate with
    /// `make crds` when this fails.
    #[test]
    fn committed_crds_match_the_types() {
        let committed = include_str!("../../crds/triad.dev.yaml");
        let generated = super::crds_yaml().expect("CRDs render as YAML");
        assert!(
            committed == generated,
            "crds/triad.dev.yaml is stale: run `make crds` and commit the result"
        );
    }

    #[test]
    fn every_kind_is_in_the_triad_category_with_a_short_name() {
        for crd in super::crds() {
            let names = &crd.spec.names;
            assert_eq!(
                names.categories.as_deref(),
                Some(&["triad".to_string()][..]),
                "{}",
                names.kind
            );
            assert_eq!(
                names.short_names.as_ref().map(Vec::len),
                Some(1),
                "{}",
                names.kind
            );
            let version = &crd.spec.versions[0];
            assert!(
                version
                    .subresources
                    .as_ref()
                    .and_then(|s| s.status.as_ref())
                    .is_some(),
                "{} has status",
                names.kind
            );
        }
    }
}
