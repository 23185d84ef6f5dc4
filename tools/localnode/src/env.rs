//! A container's environment, built the way the kubelet builds it: `envFrom` first, then
//! `env` in order (each value may reference the variables defined before it), downward-API
//! fields, ConfigMap and Secret keys read through the API, and `$(VAR)` expansion.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};
use kube::{Api, Client};

/// Node capacity the runner advertises; `resourceFieldRef` on a limit the container did not
/// set resolves to it, as the kubelet resolves it to the node's allocatable.
pub const NODE_CPU_CORES: f64 = 64.0;
pub const NODE_MEMORY_BYTES: f64 = 256.0 * 1024.0 * 1024.0 * 1024.0;

/// Kubernetes `$(VAR)` expansion (k8s.io/kubernetes third_party/forked/golang/expansion):
/// `$(NAME)` is replaced when NAME is defined and kept verbatim when it is not, `$$` is an
/// escaped `$`, anything else is copied unchanged.
pub fn expand(input: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('(') {
            match body.find(')') {
                Some(end) => {
                    let name = &body[..end];
                    match lookup(name) {
                        Some(value) => out.push_str(&value),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &body[end + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = body;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// What the downward API needs to know about the pod beyond its object.
pub struct PodFacts<'a> {
    pub pod: &'a Pod,
    pub pod_ip: &'a str,
    pub host_ip: &'a str,
}

/// Resolves a `fieldRef.fieldPath` the way the kubelet does for environment variables.
pub fn field_ref(facts: &PodFacts<'_>, path: &str) -> Result<String, String> {
    let meta = &facts.pod.metadata;
    let spec = facts.pod.spec.as_ref();
    let keyed = |prefix: &str, map: Option<&BTreeMap<String, String>>| -> Option<String> {
        let key = path
            .strip_prefix(prefix)?
            .strip_prefix("['")?
            .strip_suffix("']")?;
        Some(map.and_then(|m| m.get(key)).cloned().unwrap_or_default())
    };
    if let Some(v) = keyed("metadata.labels", meta.labels.as_ref()) {
        return Ok(v);
    }
    if let Some(v) = keyed("metadata.annotations", meta.annotations.as_ref()) {
        return Ok(v);
    }
    let value = match path {
        "metadata.name" => meta.name.clone(),
        "metadata.namespace" => meta.namespace.clone(),
        "metadata.uid" => meta.uid.clone(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()),
        "spec.serviceAccountName" => Some(service_account_name(facts.pod)),
        "status.podIP" | "status.podIPs" => Some(facts.pod_ip.to_string()),
        "status.hostIP" | "status.hostIPs" => Some(facts.host_ip.to_string()),
        _ => return Err(format!("unsupported fieldRef.fieldPath {path:?}")),
    };
    Ok(value.unwrap_or_default())
}

pub fn service_account_name(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| {
            s.service_account_name
                .clone()
                .or_else(|| s.service_account.clone())
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".to_string())
}

/// Parses a Kubernetes quantity ("500m", "1.5Gi", "2", "1e3") into base units. Precision of
/// an f64 is plenty for the downward API's rounded-up values.
pub fn parse_quantity(q: &str) -> Option<f64> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        s if s.starts_with(['e', 'E']) => 10f64.powi(s[1..].parse().ok()?),
        _ => return None,
    };
    Some(number * factor)
}

/// Resolves a `resourceFieldRef` (limits/requests of cpu, memory, ephemeral-storage),
/// divided by the divisor and rounded up as the kubelet does.
pub fn resource_field(
    container: &Container,
    resource: &str,
    divisor: Option<&str>,
) -> Result<String, String> {
    let res = container.resources.as_ref();
    let (kind, name) = resource
        .split_once('.')
        .ok_or_else(|| format!("unsupported resourceFieldRef.resource {resource:?}"))?;
    let set = match kind {
        "limits" => res.and_then(|r| r.limits.as_ref()),
        "requests" => res.and_then(|r| r.requests.as_ref()),
        _ => {
            return Err(format!(
                "unsupported resourceFieldRef.resource {resource:?}"
            ));
        }
    };
    let given = set
        .and_then(|m| m.get(name))
        .and_then(|q| parse_quantity(&q.0));
    let value = match (name, kind, given) {
        (_, _, Some(v)) => v,
        ("cpu", "limits", None) => NODE_CPU_CORES,
        ("memory", "limits", None) => NODE_MEMORY_BYTES,
        ("cpu" | "memory" | "ephemeral-storage", _, None) => 0.0,
        _ => {
            return Err(format!(
                "unsupported resourceFieldRef.resource {resource:?}"
            ));
        }
    };
    let divisor = match divisor {
        Some(d) => parse_quantity(d)
            .filter(|d| *d > 0.0)
            .ok_or_else(|| format!("invalid divisor {d:?}"))?,
        None => 1.0,
    };
    // Round the quotient up, but forgive float noise such as 0.5/0.001 = 500.0000000001.
    let quotient = value / divisor;
    let rounded = (quotient - 1e-9).ceil().max(0.0) as i64;
    Ok(rounded.to_string())
}

/// Reads ConfigMaps and Secrets once per container start.
struct Sources<'a> {
    client: &'a Client,
    namespace: &'a str,
    config_maps: HashMap<String, Option<BTreeMap<String, String>>>,
    secrets: HashMap<String, Option<BTreeMap<String, String>>>,
}

impl Sources<'_> {
    async fn config_map(
        &mut self,
        name: &str,
    ) -> Result<Option<&BTreeMap<String, String>>, String> {
        if !self.config_maps.contains_key(name) {
            let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), self.namespace);
            let data = api
                .get_opt(name)
                .await
                .map_err(|e| format!("reading configmap {name:?}: {e}"))?
                .map(|cm| cm.data.unwrap_or_default());
            self.config_maps.insert(name.to_string(), data);
        }
        Ok(self.config_maps.get(name).and_then(Option::as_ref))
    }

    async fn secret(&mut self, name: &str) -> Result<Option<&BTreeMap<String, String>>, String> {
        if !self.secrets.contains_key(name) {
            let api: Api<Secret> = Api::namespaced(self.client.clone(), self.namespace);
            let data = api
                .get_opt(name)
                .await
                .map_err(|e| format!("reading secret {name:?}: {e}"))?
                .map(|s| {
                    s.data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                        .collect()
                });
            self.secrets.insert(name.to_string(), data);
        }
        Ok(self.secrets.get(name).and_then(Option::as_ref))
    }
}

/// Builds the environment of one container on top of `base` (the variables the runner sets
/// itself; the pod's own definitions win over them, as pod env wins over service env).
/// An error is a message for a `CreateContainerConfigError` waiting state.
pub async fn container_env(
    client: &Client,
    facts: &PodFacts<'_>,
    container: &Container,
    base: BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, String> {
    let namespace = facts.pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut sources = Sources {
        client,
        namespace,
        config_maps: HashMap::new(),
        secrets: HashMap::new(),
    };
    let mut env = base;

    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.as_deref().unwrap_or("");
        let (data, optional, what, name) = if let Some(r) = &from.config_map_ref {
            let d = sources.config_map(&r.name).await?.cloned();
            (d, r.optional.unwrap_or(false), "configmap", &r.name)
        } else if let Some(r) = &from.secret_ref {
            let d = sources.secret(&r.name).await?.cloned();
            (d, r.optional.unwrap_or(false), "secret", &r.name)
        } else {
            continue;
        };
        match data {
            Some(data) => {
                for (k, v) in data {
                    env.insert(format!("{prefix}{k}"), v);
                }
            }
            None if optional => {}
            None => return Err(format!("{what} {name:?} not found")),
        }
    }

    for var in container.env.iter().flatten() {
        let value = match &var.value_from {
            None => {
                let raw = var.value.as_deref().unwrap_or("");
                Some(expand(raw, |n| env.get(n).cloned()))
            }
            Some(src) => {
                if let Some(f) = &src.field_ref {
                    Some(field_ref(facts, &f.field_path)?)
                } else if let Some(r) = &src.resource_field_ref {
                    let target = match r.container_name.as_deref() {
                        Some(name) if !name.is_empty() && name != container.name => facts
                            .pod
                            .spec
                            .as_ref()
                            .and_then(|s| s.containers.iter().find(|c| c.name == name))
                            .ok_or_else(|| {
                                format!("resourceFieldRef names unknown container {name:?}")
                            })?,
                        _ => container,
                    };
                    Some(resource_field(
                        target,
                        &r.resource,
                        r.divisor.as_ref().map(|d| d.0.as_str()),
                    )?)
                } else if let Some(r) = &src.config_map_key_ref {
                    let optional = r.optional.unwrap_or(false);
                    match sources.config_map(&r.name).await? {
                        Some(d) => match d.get(&r.key) {
                            Some(v) => Some(v.clone()),
                            None if optional => None,
                            None => {
                                return Err(format!(
                                    "key {:?} not found in configmap {:?}",
                                    r.key, r.name
                                ));
                            }
                        },
                        None if optional => None,
                        None => return Err(format!("configmap {:?} not found", r.name)),
                    }
                } else if let Some(r) = &src.secret_key_ref {
                    let optional = r.optional.unwrap_or(false);
                    match sources.secret(&r.name).await? {
                        Some(d) => match d.get(&r.key) {
                            Some(v) => Some(v.clone()),
                            None if optional => None,
                            None => {
                                return Err(format!(
                                    "key {:?} not found in secret {:?}",
                                    r.key, r.name
                                ));
                            }
                        },
                        None if optional => None,
                        None => return Err(format!("secret {:?} not found", r.name)),
                    }
                } else {
                    return Err(format!("env {:?}: empty valueFrom", var.name));
                }
            }
        };
        if let Some(value) = value {
            env.insert(var.name.clone(), value);
        }
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodSpec, ResourceRequirements};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use kube::api::ObjectMeta;

    fn vars(name: &str) -> Option<String> {
        match name {
            "A" => Some("alpha".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expansion_follows_kubernetes_rules() {
        let cases = [
            ("$(A)", "alpha"),
            ("x$(A)y", "xalphay"),
            ("$(UNKNOWN)", "$(UNKNOWN)"),
            ("$$(A)", "$(A)"),
            ("$$$(A)", "$alpha"),
            ("$A", "$A"),
            ("$", "$"),
            ("a$", "a$"),
            ("$(A", "$(A"),
            ("$()", "$()"),
            ("$(EMPTY)z", "z"),
            ("$(A)$(A)", "alphaalpha"),
            ("é$(A)ü", "éalphaü"),
            ("$$", "$"),
            ("no vars", "no vars"),
        ];
        for (input, want) in cases {
            assert_eq!(expand(input, vars), want, "input {input:?}");
        }
    }

    fn pod() -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                namespace: Some("ns".into()),
                uid: Some("u-1".into()),
                labels: Some([("app".to_string(), "web".to_string())].into()),
                annotations: Some([("a/b".to_string(), "c".to_string())].into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some("n1".into()),
                ..Default::default()
            }),
            status: None,
        }
    }

    #[test]
    fn field_refs_resolve() {
        let pod = pod();
        let facts = PodFacts {
            pod: &pod,
            pod_ip: "127.1.0.2",
            host_ip: "127.0.0.1",
        };
        let get = |p: &str| field_ref(&facts, p).unwrap_or_else(|e| format!("ERR {e}"));
        assert_eq!(get("metadata.name"), "p");
        assert_eq!(get("metadata.namespace"), "ns");
        assert_eq!(get("metadata.uid"), "u-1");
        assert_eq!(get("metadata.labels['app']"), "web");
        assert_eq!(get("metadata.labels['missing']"), "");
        assert_eq!(get("metadata.annotations['a/b']"), "c");
        assert_eq!(get("spec.nodeName"), "n1");
        assert_eq!(get("spec.serviceAccountName"), "default");
        assert_eq!(get("status.podIP"), "127.1.0.2");
        assert_eq!(get("status.hostIP"), "127.0.0.1");
        assert!(field_ref(&facts, "spec.bogus").is_err());
    }

    #[test]
    fn quantities_parse() {
        assert_eq!(parse_quantity("500m"), Some(0.5));
        assert_eq!(parse_quantity("2"), Some(2.0));
        assert_eq!(parse_quantity("1Ki"), Some(1024.0));
        assert_eq!(
            parse_quantity("1.5Gi"),
            Some(1.5 * 1024.0 * 1024.0 * 1024.0)
        );
        assert_eq!(parse_quantity("1e3"), Some(1000.0));
        assert_eq!(parse_quantity("1k"), Some(1000.0));
        assert_eq!(parse_quantity("x"), None);
        assert_eq!(parse_quantity("1Q"), None);
    }

    #[test]
    fn resource_fields_round_up_and_default_to_node() {
        let c = Container {
            name: "c".into(),
            resources: Some(ResourceRequirements {
                limits: Some([("cpu".to_string(), Quantity("500m".into()))].into()),
                requests: Some([("memory".to_string(), Quantity("64Mi".into()))].into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(resource_field(&c, "limits.cpu", None).as_deref(), Ok("1"));
        assert_eq!(
            resource_field(&c, "limits.cpu", Some("1m")).as_deref(),
            Ok("500")
        );
        assert_eq!(
            resource_field(&c, "requests.memory", Some("1Mi")).as_deref(),
            Ok("64")
        );
        assert_eq!(
            resource_field(&c, "limits.memory", Some("1Gi")).as_deref(),
            Ok("256")
        );
        assert_eq!(resource_field(&c, "requests.cpu", None).as_deref(), Ok("0"));
        assert!(resource_field(&c, "limits.gpu", None).is_err());
    }
}
