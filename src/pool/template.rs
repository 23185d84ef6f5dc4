//! From the pool's free-form template to agent pods: validation that names the bad
//! field, and what every agent pod gets injected (identity, the pool's settings, the
//! metrics port, the restart policy and the service account).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, EnvVarSource, ObjectFieldSelector, Pod, PodSpec,
    PodTemplateSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::api::{
    AgentPool, EmptyQueuePolicy, FreeForm, LifecycleType, MAX_FREE_FORM_DEPTH, labels,
};

/// Label on agent pods: a hash of what they were built from, so that pods from an older
/// template (or older pool settings) are replaced.
pub const TEMPLATE_HASH_LABEL: &str = "triad.dev/template-hash";
/// The port agents serve `/metrics` on.
pub const METRICS_PORT: i32 = 9090;
pub const METRICS_PORT_NAME: &str = "metrics";

/// The per-pool agent identity: ServiceAccount, Role and RoleBinding share this name.
pub fn agent_account(pool: &str) -> String {
    format!("triad-agent-{pool}")
}

/// Why the template cannot be used: the field, and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TemplateError {
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for TemplateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

fn err(field: impl Into<String>, message: impl Into<String>) -> TemplateError {
    TemplateError {
        field: field.into(),
        message: message.into(),
    }
}

/// The longest pool name: it is the value of the `triad.dev/pool` label.
const MAX_POOL_NAME: usize = 63;

/// Checks the pool's template and parses it as a PodTemplateSpec. Errors name the field
/// as a path under `spec.template` (for example `spec.template.spec.containers[0].ports`).
pub fn validate(pool: &AgentPool) -> Result<PodTemplateSpec, TemplateError> {
    if pool.name_any().len() > MAX_POOL_NAME {
        return Err(err(
            "metadata.name",
            format!(
                "pool names are limited to {MAX_POOL_NAME} characters because they label the agent pods"
            ),
        ));
    }
    match &pool.spec.template {
        FreeForm::Value(template) => parse_template(template),
        FreeForm::TooDeep(deep) => Err(err(
            "spec.template",
            format!(
                "is nested {} levels deep; the limit is {MAX_FREE_FORM_DEPTH}: flatten it (no pod template needs that much)",
                deep.depth
            ),
        )),
    }
}

const HINT: &str = "a PodTemplateSpec whose first container runs `triad agent -- <work command…>`";

pub fn parse_template(template: &Value) -> Result<PodTemplateSpec, TemplateError> {
    const ROOT: &str = "spec.template";
    let Some(obj) = template.as_object() else {
        return Err(err(ROOT, format!("must be an object: {HINT}")));
    };
    let metadata = match obj.get("metadata") {
        None | Some(Value::Null) => ObjectMeta::default(),
        Some(m) => {
            parse_located::<ObjectMeta>(m, &format!("{ROOT}.metadata"), &Value::Object(Map::new()))?
        }
    };
    let spec_path = format!("{ROOT}.spec");
    let Some(spec) = obj.get("spec").filter(|s| !s.is_null()) else {
        return Err(err(spec_path, format!("is required: {HINT}")));
    };
    let Some(spec_obj) = spec.as_object() else {
        return Err(err(spec_path, "must be an object (a PodSpec)"));
    };
    match spec_obj.get("containers") {
        Some(Value::Array(c)) if !c.is_empty() => {}
        Some(Value::Array(_)) | None | Some(Value::Null) => {
            return Err(err(
                format!("{spec_path}.containers"),
                format!("needs at least one container: {HINT}"),
            ));
        }
        Some(_) => {
            return Err(err(
                format!("{spec_path}.containers"),
                "must be a list of containers",
            ));
        }
    }
    let pod_spec: PodSpec = match serde_json::from_value(spec.clone()) {
        Ok(s) => s,
        Err(e) => return Err(locate_pod_spec(spec_obj, &spec_path, e)),
    };
    for (i, c) in pod_spec.containers.iter().enumerate() {
        if c.name.is_empty() {
            return Err(err(
                format!("{spec_path}.containers[{i}].name"),
                "is required",
            ));
        }
        if c.image.as_deref().is_none_or(str::is_empty) {
            return Err(err(
                format!("{spec_path}.containers[{i}].image"),
                "is required",
            ));
        }
    }
    Ok(PodTemplateSpec {
        metadata: Some(metadata),
        spec: Some(pod_spec),
    })
}

/// Deserializes `value` as `T`; on failure, finds the first key of `value` that fails
/// on its own (added to `base`, a minimal valid `T`), so the error names the field.
fn parse_located<T: DeserializeOwned>(
    value: &Value,
    path: &str,
    base: &Value,
) -> Result<T, TemplateError> {
    match serde_json::from_value::<T>(value.clone()) {
        Ok(v) => Ok(v),
        Err(e) => Err(match value.as_object() {
            Some(obj) => {
                first_bad_key::<T>(obj, base, path).unwrap_or_else(|| err(path, e.to_string()))
            }
            None => err(path, e.to_string()),
        }),
    }
}

fn first_bad_key<T: DeserializeOwned>(
    obj: &Map<String, Value>,
    base: &Value,
    path: &str,
) -> Option<TemplateError> {
    obj.iter().find_map(|(k, v)| {
        let mut probe = base.as_object().cloned().unwrap_or_default();
        probe.insert(k.clone(), v.clone());
        serde_json::from_value::<T>(Value::Object(probe))
            .err()
            .map(|e| err(format!("{path}.{k}"), e.to_string()))
    })
}

fn locate_pod_spec(
    spec: &Map<String, Value>,
    path: &str,
    whole: serde_json::Error,
) -> TemplateError {
    const LISTS: [&str; 3] = ["containers", "initContainers", "ephemeralContainers"];
    let base = serde_json::json!({"containers": []});
    for list in ["containers", "initContainers"] {
        let Some(items) = spec.get(list) else {
            continue;
        };
        let Some(items) = items.as_array() else {
            return err(format!("{path}.{list}"), "must be a list of containers");
        };
        for (i, item) in items.iter().enumerate() {
            let at = format!("{path}.{list}[{i}]");
            if let Err(e) =
                parse_located::<Container>(item, &at, &serde_json::json!({"name": "probe"}))
            {
                return e;
            }
        }
    }
    let rest: Map<String, Value> = spec
        .iter()
        .filter(|(k, _)| !LISTS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    first_bad_key::<PodSpec>(&rest, &base, path).unwrap_or_else(|| err(path, whole.to_string()))
}

/// A validated template with everything injected, and its hash.
#[derive(Clone, Debug, PartialEq)]
pub struct Blueprint {
    pub template: PodTemplateSpec,
    pub hash: String,
    /// The service account the agents run as (the template's, or the per-pool one).
    pub service_account: String,
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                api_version: Some("v1".into()),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn value_env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

/// `name:weight,…` as the agent runtime reads it from `TRIAD_QUEUES`.
pub fn queues_env(pool: &AgentPool) -> String {
    pool.spec
        .queues
        .iter()
        .map(|q| format!("{}:{}", q.name, q.weight))
        .collect::<Vec<_>>()
        .join(",")
}

/// What the agent runtime needs, in the order it must appear (POD_IP before the
/// variable that refers to it; all before the template's own, which may refer to them).
pub fn agent_env(pool: &AgentPool) -> Vec<EnvVar> {
    let spec = &pool.spec;
    let lifecycle = match spec.lifecycle.type_ {
        LifecycleType::Persistent => "Persistent",
        LifecycleType::Mortal => "Mortal",
    };
    let policy = match spec.empty_queue_policy {
        EmptyQueuePolicy::Wait => "Wait",
        EmptyQueuePolicy::Exit => "Exit",
        EmptyQueuePolicy::ScaleDown => "ScaleDown",
    };
    let mut env = vec![
        field_env("POD_NAME", "metadata.name"),
        field_env("POD_NAMESPACE", "metadata.namespace"),
        field_env("POD_UID", "metadata.uid"),
        field_env("POD_IP", "status.podIP"),
        value_env("TRIAD_POOL", pool.name_any()),
        value_env("TRIAD_QUEUES", queues_env(pool)),
        value_env("TRIAD_LEASE_SECONDS", spec.lease_seconds.to_string()),
        value_env("TRIAD_LIFECYCLE", lifecycle),
    ];
    if let Some(max) = spec.lifecycle.max_items {
        env.push(value_env("TRIAD_MAX_ITEMS", max.to_string()));
    }
    env.push(value_env("TRIAD_EMPTY_QUEUE_POLICY", policy));
    env.push(value_env(
        "TRIAD_METRICS_ADDR",
        format!("$(POD_IP):{METRICS_PORT}"),
    ));
    env
}

/// The restart policy the lifecycle needs.
///
/// A Persistent agent that waits for work restarts in place (`Always`). An agent that
/// is meant to end — Mortal after `maxItems`, or `emptyQueuePolicy: Exit` — gets
/// `OnFailure`: its exit 0 ends the pod (`Succeeded`) and the controller replaces it,
/// while a crash restarts in place with the kubelet's back-off, so a crashing agent
/// shows up as `CrashLoopBackOff` instead of a stream of new pods.
pub fn restart_policy(pool: &AgentPool) -> &'static str {
    if pool.spec.lifecycle.type_ == LifecycleType::Mortal
        || pool.spec.empty_queue_policy == EmptyQueuePolicy::Exit
    {
        "OnFailure"
    } else {
        "Always"
    }
}

/// Injects what every agent pod needs into the validated template.
pub fn build(pool: &AgentPool, mut template: PodTemplateSpec) -> Blueprint {
    let name = pool.name_any();
    let mut meta = template.metadata.take().unwrap_or_default();
    let mut labels_map = meta.labels.take().unwrap_or_default();
    labels_map.insert(labels::POOL.into(), name.clone());
    labels_map.remove(TEMPLATE_HASH_LABEL);
    meta.labels = Some(labels_map);
    // Identity comes from the pool, never from the template.
    meta.name = None;
    meta.generate_name = None;
    meta.namespace = None;
    meta.owner_references = None;

    let mut spec = template.spec.take().unwrap_or_default();
    spec.restart_policy = Some(restart_policy(pool).into());
    let service_account = spec
        .service_account_name
        .clone()
        .filter(|s| !s.is_empty())
        .or_else(|| spec.service_account.clone().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| agent_account(&name));
    spec.service_account_name = Some(service_account.clone());
    spec.service_account = None;

    if let Some(first) = spec.containers.first_mut() {
        let ours = agent_env(pool);
        let theirs = first.env.take().unwrap_or_default();
        let mut env = ours.clone();
        env.extend(
            theirs
                .into_iter()
                .filter(|e| !ours.iter().any(|o| o.name == e.name)),
        );
        first.env = Some(env);
        let ports = first.ports.get_or_insert_with(Vec::new);
        let taken = ports.iter().any(|p| {
            p.name.as_deref() == Some(METRICS_PORT_NAME) || p.container_port == METRICS_PORT
        });
        if !taken {
            ports.push(ContainerPort {
                name: Some(METRICS_PORT_NAME.into()),
                container_port: METRICS_PORT,
                protocol: Some("TCP".into()),
                ..Default::default()
            });
        }
    }

    let template = PodTemplateSpec {
        metadata: Some(meta),
        spec: Some(spec),
    };
    let hash = template_hash(&template);
    Blueprint {
        template,
        hash,
        service_account,
    }
}

/// FNV-1a over the serialized template: stable across builds and Rust versions (unlike
/// `DefaultHasher`), so pods are not rolled by an upgrade of the controller alone.
pub fn template_hash(template: &PodTemplateSpec) -> String {
    let bytes = serde_json::to_vec(template).unwrap_or_default();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{:010x}", h & 0xff_ffff_ffff)
}

/// Characters of the random name suffix (Kubernetes' own: no vowels, no look-alikes).
const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// `<pool>-<5 random characters>`.
pub fn pod_name(pool: &str, rng: &mut impl rand::Rng) -> String {
    let suffix: String = (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{pool}-{suffix}")
}

/// The agent pod: the blueprint, named, owned by the pool, labelled with the hash.
pub fn pod(pool: &AgentPool, blueprint: &Blueprint, name: &str) -> Pod {
    let mut meta = blueprint.template.metadata.clone().unwrap_or_default();
    meta.name = Some(name.into());
    meta.namespace = pool.namespace();
    meta.owner_references = pool.controller_owner_ref(&()).map(|mut o| {
        o.block_owner_deletion = Some(true);
        vec![o]
    });
    meta.labels
        .get_or_insert_with(BTreeMap::new)
        .insert(TEMPLATE_HASH_LABEL.into(), blueprint.hash.clone());
    Pod {
        metadata: meta,
        spec: blueprint.template.spec.clone(),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pool(spec: Value) -> AgentPool {
        serde_json::from_value(json!({
            "apiVersion": "triad.dev/v1alpha1",
            "kind": "AgentPool",
            "metadata": {"name": "workers", "namespace": "ns", "uid": "pool-uid"},
            "spec": spec
        }))
        .unwrap()
    }

    fn good_template() -> Value {
        json!({
            "metadata": {"labels": {"app": "demo", "triad.dev/pool": "spoofed"}, "annotations": {"a": "b"}},
            "spec": {
                "containers": [
                    {"name": "agent", "image": "triad:dev", "command": ["triad", "agent", "--", "work"],
                     "env": [{"name": "MINE", "value": "1"}, {"name": "TRIAD_POOL", "value": "spoofed"}]},
                    {"name": "sidecar", "image": "side:1"}
                ]
            }
        })
    }

    fn basic() -> AgentPool {
        pool(json!({
            "queues": [{"name": "fast", "weight": 3}, {"name": "slow"}],
            "template": good_template()
        }))
    }

    fn env_of(c: &Container) -> Vec<(String, String)> {
        c.env
            .iter()
            .flatten()
            .map(|e| {
                let v = e.value.clone().unwrap_or_else(|| {
                    format!(
                        "fieldRef:{}",
                        e.value_from
                            .as_ref()
                            .unwrap()
                            .field_ref
                            .as_ref()
                            .unwrap()
                            .field_path
                    )
                });
                (e.name.clone(), v)
            })
            .collect()
    }

    #[test]
    fn build_injects_identity_settings_port_and_account_into_the_first_container() {
        let p = basic();
        let bp = build(&p, validate(&p).unwrap());
        let spec = bp.template.spec.as_ref().unwrap();
        let env = env_of(&spec.containers[0]);
        let want: Vec<(&str, &str)> = vec![
            ("POD_NAME", "fieldRef:metadata.name"),
            ("POD_NAMESPACE", "fieldRef:metadata.namespace"),
            ("POD_UID", "fieldRef:metadata.uid"),
            ("POD_IP", "fieldRef:status.podIP"),
            ("TRIAD_POOL", "workers"),
            ("TRIAD_QUEUES", "fast:3,slow:1"),
            ("TRIAD_LEASE_SECONDS", "15"),
            ("TRIAD_LIFECYCLE", "Persistent"),
            ("TRIAD_EMPTY_QUEUE_POLICY", "Wait"),
            ("TRIAD_METRICS_ADDR", "$(POD_IP):9090"),
            ("MINE", "1"),
        ];
        let got: Vec<(&str, &str)> = env.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        assert_eq!(got, want, "ours first, theirs after, ours win on a clash");
        assert!(spec.containers[1].env.is_none(), "only the first container");
        let port = &spec.containers[0].ports.as_ref().unwrap()[0];
        assert_eq!(
            (port.name.as_deref(), port.container_port),
            (Some("metrics"), 9090)
        );
        assert_eq!(spec.restart_policy.as_deref(), Some("Always"));
        assert_eq!(
            spec.service_account_name.as_deref(),
            Some("triad-agent-workers")
        );
        assert_eq!(bp.service_account, "triad-agent-workers");
        let labels = bp
            .template
            .metadata
            .as_ref()
            .unwrap()
            .labels
            .as_ref()
            .unwrap();
        assert_eq!(
            labels["triad.dev/pool"], "workers",
            "the pool label cannot be spoofed"
        );
        assert_eq!(labels["app"], "demo");
    }

    #[test]
    fn build_for_mortal_pools_sets_max_items_and_on_failure() {
        let p = pool(json!({
            "queues": [{"name": "q"}],
            "lifecycle": {"type": "Mortal", "maxItems": 10},
            "leaseSeconds": 30,
            "emptyQueuePolicy": "ScaleDown",
            "template": good_template()
        }));
        let bp = build(&p, validate(&p).unwrap());
        let spec = bp.template.spec.as_ref().unwrap();
        let env = env_of(&spec.containers[0]);
        assert!(env.contains(&("TRIAD_MAX_ITEMS".into(), "10".into())));
        assert!(env.contains(&("TRIAD_LIFECYCLE".into(), "Mortal".into())));
        assert!(env.contains(&("TRIAD_LEASE_SECONDS".into(), "30".into())));
        assert!(env.contains(&("TRIAD_EMPTY_QUEUE_POLICY".into(), "ScaleDown".into())));
        assert_eq!(spec.restart_policy.as_deref(), Some("OnFailure"));
        let exit = pool(
            json!({"queues": [{"name": "q"}], "emptyQueuePolicy": "Exit", "template": good_template()}),
        );
        assert_eq!(restart_policy(&exit), "OnFailure");
    }

    #[test]
    fn build_keeps_the_templates_service_account_and_metrics_port() {
        let p = pool(json!({
            "queues": [{"name": "q"}],
            "template": {"spec": {"serviceAccountName": "mine", "containers": [
                {"name": "a", "image": "i", "ports": [{"name": "metrics", "containerPort": 9100}]}
            ]}}
        }));
        let bp = build(&p, validate(&p).unwrap());
        let spec = bp.template.spec.as_ref().unwrap();
        assert_eq!(spec.service_account_name.as_deref(), Some("mine"));
        assert_eq!(bp.service_account, "mine");
        assert_eq!(spec.containers[0].ports.as_ref().unwrap().len(), 1);
    }

    #[test]
    fn the_hash_changes_with_the_template_and_the_pool_settings_only() {
        let p = basic();
        let h = build(&p, validate(&p).unwrap()).hash;
        assert_eq!(h.len(), 10);
        assert_eq!(build(&p, validate(&p).unwrap()).hash, h, "deterministic");
        let mut q = p.clone();
        q.spec.lease_seconds = 60;
        assert_ne!(build(&q, validate(&q).unwrap()).hash, h);
        let mut r = p.clone();
        let mut template = good_template();
        template["spec"]["containers"][0]["image"] = json!("triad:next");
        r.spec.template = template.into();
        assert_ne!(build(&r, validate(&r).unwrap()).hash, h);
        let mut s = p.clone();
        s.spec.replicas = Some(9);
        assert_eq!(
            build(&s, validate(&s).unwrap()).hash,
            h,
            "scaling does not roll pods"
        );
    }

    #[test]
    fn pod_is_named_owned_and_labelled() {
        let p = basic();
        let bp = build(&p, validate(&p).unwrap());
        let mut rng = rand::rng();
        let name = pod_name("workers", &mut rng);
        assert!(name.starts_with("workers-") && name.len() == "workers-".len() + 5);
        assert!(
            name["workers-".len()..]
                .bytes()
                .all(|b| ALPHABET.contains(&b))
        );
        let pod = pod(&p, &bp, &name);
        assert_eq!(pod.metadata.name.as_deref(), Some(name.as_str()));
        assert_eq!(pod.metadata.namespace.as_deref(), Some("ns"));
        let owner = &pod.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (
                owner.kind.as_str(),
                owner.name.as_str(),
                owner.uid.as_str(),
                owner.controller
            ),
            ("AgentPool", "workers", "pool-uid", Some(true))
        );
        assert_eq!(pod.labels()[TEMPLATE_HASH_LABEL], bp.hash);
        assert_eq!(pod.annotations()["a"], "b");
    }

    fn invalid(template: Value) -> TemplateError {
        parse_template(&template).expect_err("must be refused")
    }

    #[test]
    fn validation_names_the_bad_field() {
        let cases: Vec<(Value, &str, &str)> = vec![
            (json!("nope"), "spec.template", "must be an object"),
            (json!({}), "spec.template.spec", "is required"),
            (
                json!({"spec": []}),
                "spec.template.spec",
                "must be an object",
            ),
            (
                json!({"spec": {}}),
                "spec.template.spec.containers",
                "at least one container",
            ),
            (
                json!({"spec": {"containers": []}}),
                "spec.template.spec.containers",
                "at least one container",
            ),
            (
                json!({"spec": {"containers": {}}}),
                "spec.template.spec.containers",
                "must be a list",
            ),
            (
                json!({"spec": {"containers": [{"name": "a", "image": "i", "ports": "9090"}]}}),
                "spec.template.spec.containers[0].ports",
                "invalid type",
            ),
            (
                json!({"spec": {"containers": [{"name": "a", "image": "i"}, {"image": "i"}]}}),
                "spec.template.spec.containers[1].name",
                "is required",
            ),
            (
                json!({"spec": {"containers": [{"name": "a"}]}}),
                "spec.template.spec.containers[0].image",
                "is required",
            ),
            (
                json!({"spec": {"containers": [{"name": "a", "image": "i"}], "restartPolicy": 3}}),
                "spec.template.spec.restartPolicy",
                "invalid type",
            ),
            (
                json!({"spec": {"containers": [{"name": "a", "image": "i"}], "initContainers": [{"name": "x", "env": 1}]}}),
                "spec.template.spec.initContainers[0].env",
                "invalid type",
            ),
            (
                json!({"metadata": {"labels": ["x"]}, "spec": {"containers": [{"name": "a", "image": "i"}]}}),
                "spec.template.metadata.labels",
                "invalid type",
            ),
        ];
        for (template, field, words) in cases {
            let e = invalid(template.clone());
            assert_eq!(e.field, field, "{template}: {e}");
            assert!(e.message.contains(words), "{template}: {e}");
        }
    }

    #[test]
    fn validation_refuses_a_template_nested_too_deep() {
        let mut deep = json!({});
        for _ in 0..100 {
            deep = json!({"x": deep});
        }
        let mut template = good_template();
        template["metadata"] = json!({"annotations": {"a": "b"}, "deep": deep});
        let mut p = basic();
        p.spec.template = template.into();
        let e = validate(&p).unwrap_err();
        assert_eq!(e.field, "spec.template");
        assert!(
            e.message
                .contains("nested 103 levels deep; the limit is 64"),
            "{e}"
        );
    }

    #[test]
    fn validation_refuses_pool_names_too_long_for_a_label() {
        let mut p = basic();
        p.metadata.name = Some("x".repeat(64));
        assert_eq!(validate(&p).unwrap_err().field, "metadata.name");
    }
}
