//! The four Triad resource types (`triad.dev/v1alpha1`) and their status types.
//!
//! Types only: no decisions live here. Field names follow the design brief because
//! users, dashboards and checks rely on them.

mod agentpool;
mod common;
mod workitem;
mod workqueue;
mod workrequest;

pub use agentpool::*;
pub use common::*;
pub use workitem::*;
pub use workqueue::*;
pub use workrequest::*;

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
