//! The agents' identity: per pool, a ServiceAccount and a RoleBinding in the pool's
//! namespace, owned by the pool, binding the chart's agents' ClusterRole (`rules()`;
//! the chart's copy is checked against it). That role grants exactly what the agent
//! runtime does (read items and queues, write item status under the fence and the agent
//! admission policy, hold its Lease, publish Events) and nothing else: agents cannot
//! create pods, read Secrets or touch any other pool's objects beyond reading the
//! namespace's items.
//!
//! The pools controller binds that ClusterRole (it holds `bind` on it) rather than
//! holding its rules: Kubernetes lets a controller grant only what it holds otherwise,
//! and a controller that could write every item's status and every Lease is what the
//! agent policy exists to prevent.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};

use super::template::agent_account;
use crate::api::{AgentPool, labels};

fn meta(pool: &AgentPool) -> ObjectMeta {
    ObjectMeta {
        name: Some(agent_account(&pool.name_any())),
        namespace: pool.namespace(),
        labels: Some(BTreeMap::from([
            (labels::POOL.to_owned(), pool.name_any()),
            (
                "app.kubernetes.io/component".to_owned(),
                "triad-agent".to_owned(),
            ),
            (
                "app.kubernetes.io/managed-by".to_owned(),
                "triad".to_owned(),
            ),
        ])),
        owner_references: pool.controller_owner_ref(&()).map(|o| vec![o]),
        ..Default::default()
    }
}

pub fn service_account(pool: &AgentPool) -> ServiceAccount {
    ServiceAccount {
        metadata: meta(pool),
        ..Default::default()
    }
}

fn rule(group: &[&str], resources: &[&str], verbs: &[&str]) -> PolicyRule {
    let strings = |xs: &[&str]| xs.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    PolicyRule {
        api_groups: Some(strings(group)),
        resources: Some(strings(resources)),
        verbs: strings(verbs),
        ..Default::default()
    }
}

/// The agent runtime's permissions, and no more.
pub fn rules() -> Vec<PolicyRule> {
    vec![
        rule(&["triad.dev"], &["workitems"], &["get", "list", "watch"]),
        rule(
            &["triad.dev"],
            &["workitems/status"],
            &["get", "patch", "update"],
        ),
        rule(&["triad.dev"], &["workqueues"], &["get", "list", "watch"]),
        rule(
            &["coordination.k8s.io"],
            &["leases"],
            // list and watch: agents learn who shares their queues from the Leases.
            &["get", "list", "watch", "create", "update", "patch"],
        ),
        // Both Event APIs: kube's Recorder writes events.k8s.io, older tools core/v1.
        rule(&["", "events.k8s.io"], &["events"], &["create", "patch"]),
    ]
}

/// The agents' ClusterRole when the chart does not name it (`TRIAD_AGENT_CLUSTER_ROLE`).
pub const DEFAULT_AGENT_CLUSTER_ROLE: &str = "triad-agent";

/// The agents' ClusterRole, as the chart names it, or [`DEFAULT_AGENT_CLUSTER_ROLE`].
pub fn agent_cluster_role_name() -> String {
    std::env::var("TRIAD_AGENT_CLUSTER_ROLE")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| DEFAULT_AGENT_CLUSTER_ROLE.to_owned())
}

/// The agents' ClusterRole itself: what the chart ships (and what a cluster without
/// the chart, such as the tests', is given).
pub fn agent_cluster_role(name: &str) -> ClusterRole {
    ClusterRole {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/component".to_owned(),
                "triad-agent".to_owned(),
            )])),
            ..Default::default()
        },
        rules: Some(rules()),
        ..Default::default()
    }
}

/// Binds the agents' ClusterRole, in the pool's namespace only, to the account its
/// agents run as.
pub fn role_binding(pool: &AgentPool, service_account: &str, cluster_role: &str) -> RoleBinding {
    RoleBinding {
        metadata: meta(pool),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: cluster_role.into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: service_account.into(),
            namespace: pool.namespace(),
            ..Default::default()
        }]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> AgentPool {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "triad.dev/v1alpha1",
            "kind": "AgentPool",
            "metadata": {"name": "w", "namespace": "ns", "uid": "u"},
            "spec": {"queues": [{"name": "q"}], "template": {}}
        }))
        .unwrap()
    }

    #[test]
    fn objects_are_named_for_the_pool_and_owned_by_it() {
        let p = pool();
        for m in [
            service_account(&p).metadata,
            role_binding(&p, "x", "r").metadata,
        ] {
            assert_eq!(m.name.as_deref(), Some("triad-agent-w"));
            assert_eq!(m.namespace.as_deref(), Some("ns"));
            let o = &m.owner_references.unwrap()[0];
            assert_eq!((o.uid.as_str(), o.controller), ("u", Some(true)));
        }
        let b = role_binding(&p, "custom", "release-triad-agent");
        assert_eq!(
            (b.role_ref.kind.as_str(), b.role_ref.name.as_str()),
            ("ClusterRole", "release-triad-agent")
        );
        let s = &b.subjects.unwrap()[0];
        assert_eq!(
            (s.kind.as_str(), s.name.as_str(), s.namespace.as_deref()),
            ("ServiceAccount", "custom", Some("ns"))
        );
    }

    #[test]
    fn the_role_is_least_privilege() {
        let mut grants: Vec<String> = Vec::new();
        for r in rules() {
            assert!(r.resource_names.is_none() && r.non_resource_urls.is_none());
            for g in r.api_groups.unwrap() {
                for res in r.resources.as_ref().unwrap() {
                    for v in &r.verbs {
                        grants.push(format!("{g}/{res}:{v}"));
                    }
                }
            }
        }
        grants.sort();
        assert_eq!(
            grants,
            [
                "/events:create",
                "/events:patch",
                "coordination.k8s.io/leases:create",
                "coordination.k8s.io/leases:get",
                "coordination.k8s.io/leases:list",
                "coordination.k8s.io/leases:patch",
                "coordination.k8s.io/leases:update",
                "coordination.k8s.io/leases:watch",
                "events.k8s.io/events:create",
                "events.k8s.io/events:patch",
                "triad.dev/workitems/status:get",
                "triad.dev/workitems/status:patch",
                "triad.dev/workitems/status:update",
                "triad.dev/workitems:get",
                "triad.dev/workitems:list",
                "triad.dev/workitems:watch",
                "triad.dev/workqueues:get",
                "triad.dev/workqueues:list",
                "triad.dev/workqueues:watch",
            ]
        );
    }
}
