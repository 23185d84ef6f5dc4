//! Integration tests against the real local cluster: control plane and kubelet (see `support`).

mod agent;
mod api;
mod chaos;
mod chart;
mod corners;
mod crd_fuzz;
// Shared with the cluster-free `fuzz` test crate.
#[path = "../fuzz/crd_model.rs"]
mod crd_model;
mod deep_payload;
mod escalation;
mod execution;
mod kubectl_triad;
mod ladder;
mod leader;
mod node;
mod pool;
mod scale_down;
mod scheduler;
mod supervisor;
mod support;
mod work_container;
