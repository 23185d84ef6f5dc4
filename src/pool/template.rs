//! From the pool's free-form template to agent pods: validation that names the bad
//! field, and what every agent pod gets injected (identity, the pool's settings, the
//! metrics port, the restart policy and the service account).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapProjection, Container, ContainerPort, DownwardAPIProjection,
    DownwardAPIVolumeFile, EnvVar, EnvVarSource, KeyToPath, ObjectFieldSelector, Pod, PodSpec,
    PodTemplateSpec, ProjectedVolumeSource, SeccompProfile, SecurityContext,
    ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::api::{
    AgentPool, EmptyQueuePolicy, FreeForm, LifecycleType, MAX_FREE_FORM_DEPTH, PodSecurity,
    WorkMode, labels,
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
        FreeForm::Value(template) => {
            let parsed = parse_template(template)?;
            check_work(pool, &parsed)?;
            Ok(parsed)
        }
        FreeForm::TooDeep(deep) => Err(err(
            "spec.template",
            format!(
                "is nested {} levels deep; the limit is {MAX_FREE_FORM_DEPTH}: flatten it (no pod template needs that much)",
                deep.depth
            ),
        )),
    }
}

const HINT: &str = "a PodTemplateSpec whose first container's `command` is the work command";

/// Names Triad adds to every agent pod; a template may not use them.
const RESERVED_CONTAINERS: [&str; 2] = [AGENT_CONTAINER, INSTALL_CONTAINER];
const RESERVED_VOLUMES: [&str; 3] = [BIN_VOLUME, RUN_VOLUME, TOKEN_VOLUME];

/// The restricted profile's user and seccomp rules, for a pod's or a container's
/// security context at `at`: the field that breaks one, and how.
fn runs_as_root_or_unconfined(
    at: &str,
    run_as_non_root: Option<bool>,
    run_as_user: Option<i64>,
    seccomp: Option<&SeccompProfile>,
) -> Option<(String, &'static str)> {
    if run_as_non_root == Some(false) {
        return Some((
            format!("{at}.runAsNonRoot"),
            "running as root is not allowed",
        ));
    }
    if run_as_user == Some(0) {
        return Some((
            format!("{at}.runAsUser"),
            "running as root (user 0) is not allowed",
        ));
    }
    if seccomp.is_some_and(|p| p.type_ == "Unconfined") {
        return Some((
            format!("{at}.seccompProfile.type"),
            "an unconfined seccomp profile is not allowed",
        ));
    }
    None
}

/// What the pod build relies on, and the restricted Pod Security profile unless the
/// pool opts out (`podSecurity: Privileged`). Errors name the field and the fix.
pub fn check_work(pool: &AgentPool, template: &PodTemplateSpec) -> Result<(), TemplateError> {
    const SPEC: &str = "spec.template.spec";
    let Some(spec) = &template.spec else {
        return Err(err(SPEC, format!("is required: {HINT}")));
    };
    if let Some(work) = spec.containers.first() {
        let command = work.command.as_deref().unwrap_or_default();
        if command.is_empty() {
            return Err(err(
                format!("{SPEC}.containers[0].command"),
                "is required: it is the work command Triad runs for each item, e.g. [\"python\", \"agent.py\"] (the image's entrypoint cannot be read from here)",
            ));
        }
        let args = work.args.as_deref().unwrap_or_default();
        let argv: Vec<&str> = command.iter().chain(args).map(String::as_str).collect();
        let program = argv[0].rsplit('/').next().unwrap_or_default();
        if program == "triad" && argv.get(1) == Some(&"agent") {
            return Err(err(
                format!("{SPEC}.containers[0].command"),
                "starts `triad agent`: Triad adds the agent container itself now; give the work command alone (what followed `--`)",
            ));
        }
    }
    let own = agent_account(&pool.name_any());
    for (field, account) in [
        ("serviceAccountName", &spec.service_account_name),
        ("serviceAccount", &spec.service_account),
    ] {
        if let Some(account) = account.as_deref().filter(|a| !a.is_empty() && *a != own) {
            return Err(err(
                format!("{SPEC}.{field}"),
                format!(
                    "{account:?}: agents run as the pool's own account {own:?}, which Triad creates and binds to the agents' role; remove the field"
                ),
            ));
        }
    }
    let all = spec
        .containers
        .iter()
        .enumerate()
        .map(|(i, c)| (format!("{SPEC}.containers[{i}]"), c))
        .chain(
            spec.init_containers
                .iter()
                .flatten()
                .enumerate()
                .map(|(i, c)| (format!("{SPEC}.initContainers[{i}]"), c)),
        );
    let containers: Vec<(String, &Container)> = all.collect();
    for (at, c) in &containers {
        if RESERVED_CONTAINERS.contains(&c.name.as_str()) {
            return Err(err(
                format!("{at}.name"),
                format!(
                    "{:?} is the name of a container Triad adds: choose another",
                    c.name
                ),
            ));
        }
    }
    for (i, v) in spec.volumes.iter().flatten().enumerate() {
        if RESERVED_VOLUMES.contains(&v.name.as_str()) {
            return Err(err(
                format!("{SPEC}.volumes[{i}].name"),
                format!(
                    "{:?} is the name of a volume Triad adds: choose another",
                    v.name
                ),
            ));
        }
    }
    if pool.spec.pod_security == PodSecurity::Privileged {
        return Ok(());
    }
    const OPT_OUT: &str = "the work runs under Kubernetes' restricted Pod Security profile; set spec.podSecurity: Privileged on the pool if it truly needs this";
    let refuse = |field: String, what: &str| err(field, format!("{what}: {OPT_OUT}"));
    for (flag, name) in [
        (spec.host_network, "hostNetwork"),
        (spec.host_pid, "hostPID"),
        (spec.host_ipc, "hostIPC"),
    ] {
        if flag == Some(true) {
            return Err(refuse(
                format!("{SPEC}.{name}"),
                "host namespaces are not allowed",
            ));
        }
    }
    for (i, v) in spec.volumes.iter().flatten().enumerate() {
        if v.host_path.is_some() {
            return Err(refuse(
                format!("{SPEC}.volumes[{i}].hostPath"),
                "hostPath volumes are not allowed",
            ));
        }
        for (j, source) in v
            .projected
            .iter()
            .flat_map(|p| p.sources.iter().flatten())
            .enumerate()
        {
            if source.service_account_token.is_some() {
                return Err(refuse(
                    format!("{SPEC}.volumes[{i}].projected.sources[{j}].serviceAccountToken"),
                    "the work containers hold no cluster credentials",
                ));
            }
        }
    }
    if let Some(psc) = &spec.security_context
        && let Some((field, what)) = runs_as_root_or_unconfined(
            &format!("{SPEC}.securityContext"),
            psc.run_as_non_root,
            psc.run_as_user,
            psc.seccomp_profile.as_ref(),
        )
    {
        return Err(refuse(field, what));
    }
    if spec.automount_service_account_token == Some(true) {
        return Err(refuse(
            format!("{SPEC}.automountServiceAccountToken"),
            "the work containers hold no cluster credentials (the agent container gets its own token)",
        ));
    }
    for (at, c) in &containers {
        for (j, p) in c.ports.iter().flatten().enumerate() {
            if p.host_port.is_some_and(|h| h != 0) {
                return Err(refuse(
                    format!("{at}.ports[{j}].hostPort"),
                    "host ports are not allowed",
                ));
            }
        }
        let Some(sc) = &c.security_context else {
            continue;
        };
        let at = format!("{at}.securityContext");
        if sc.privileged == Some(true) {
            return Err(refuse(
                format!("{at}.privileged"),
                "privileged containers are not allowed",
            ));
        }
        if sc.allow_privilege_escalation == Some(true) {
            return Err(refuse(
                format!("{at}.allowPrivilegeEscalation"),
                "privilege escalation is not allowed",
            ));
        }
        if let Some(add) = sc.capabilities.as_ref().and_then(|c| c.add.as_ref())
            && add.iter().any(|cap| cap != "NET_BIND_SERVICE")
        {
            return Err(refuse(
                format!("{at}.capabilities.add"),
                "added capabilities (other than NET_BIND_SERVICE) are not allowed",
            ));
        }
        if let Some((field, what)) = runs_as_root_or_unconfined(
            &at,
            sc.run_as_non_root,
            sc.run_as_user,
            sc.seccomp_profile.as_ref(),
        ) {
            return Err(refuse(field, what));
        }
        if sc.proc_mount.as_deref().is_some_and(|m| m != "Default") {
            return Err(refuse(
                format!("{at}.procMount"),
                "an unmasked /proc is not allowed",
            ));
        }
    }
    Ok(())
}

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

/// What the pod build needs besides the pool.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// Triad's own image: the agent and the runner's installer run it.
    pub agent_image: String,
    /// The longest `cancelGraceSeconds` among the pool's queues.
    pub cancel_grace_seconds: i64,
}

/// Triad's image, as the chart sets it (`TRIAD_AGENT_IMAGE`), or this release's.
pub fn default_agent_image() -> String {
    std::env::var("TRIAD_AGENT_IMAGE")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("ghcr.io/triad-dev/triad:{}", env!("CARGO_PKG_VERSION")))
}

/// The agent's container: claims, heartbeats, status writes. The only one with a token.
pub const AGENT_CONTAINER: &str = "triad-agent";
/// The init container that installs the runner for the work container.
pub const INSTALL_CONTAINER: &str = "triad-install-runner";
const BIN_VOLUME: &str = "triad-bin";
const RUN_VOLUME: &str = "triad-run";
const TOKEN_VOLUME: &str = "triad-token";
/// Where in-cluster clients look for the token (kube-rs, client-go).
const TOKEN_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// A bound token's life; the kubelet refreshes it at 80 %, kube-rs rereads the file.
const TOKEN_SECONDS: i64 = 3607;
/// How long a draining agent lets the running item go on (the agent's default).
const DRAIN_SECONDS: i64 = 20;
/// Slack in the termination grace for the agent's last writes.
const WRITE_SLACK_SECONDS: i64 = 10;
/// The grace period when neither the template nor the queues ask for more.
const DEFAULT_TERMINATION_GRACE: i64 = 30;

/// The termination grace a pod of this pool needs: the drain, then the queue's cancel
/// grace between SIGTERM and SIGKILL to the work, then the agent's ending write.
pub fn termination_grace(template: Option<i64>, cancel_grace_seconds: i64) -> i64 {
    let needed = DRAIN_SECONDS + cancel_grace_seconds.max(0) + WRITE_SLACK_SECONDS;
    template.unwrap_or(DEFAULT_TERMINATION_GRACE).max(needed)
}

fn restricted_container_defaults(c: &mut Container) {
    let sc = c.security_context.get_or_insert_with(Default::default);
    sc.allow_privilege_escalation.get_or_insert(false);
    let caps = sc.capabilities.get_or_insert_with(Default::default);
    if caps.drop.as_ref().is_none_or(Vec::is_empty) {
        caps.drop = Some(vec!["ALL".into()]);
    }
}

fn agent_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..Default::default()
    }
}

fn empty_dir(name: &str) -> Volume {
    Volume {
        name: name.into(),
        empty_dir: Some(Default::default()),
        ..Default::default()
    }
}

/// The token, the cluster CA and the namespace, as the kubelet's own automount lays
/// them out, but mounted in the agent container alone.
fn token_volume() -> Volume {
    Volume {
        name: TOKEN_VOLUME.into(),
        projected: Some(ProjectedVolumeSource {
            default_mode: Some(0o444),
            sources: Some(vec![
                VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        path: "token".into(),
                        expiration_seconds: Some(TOKEN_SECONDS),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                VolumeProjection {
                    config_map: Some(ConfigMapProjection {
                        name: "kube-root-ca.crt".into(),
                        items: Some(vec![KeyToPath {
                            key: "ca.crt".into(),
                            path: "ca.crt".into(),
                            ..Default::default()
                        }]),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                VolumeProjection {
                    downward_api: Some(DownwardAPIProjection {
                        items: Some(vec![DownwardAPIVolumeFile {
                            path: "namespace".into(),
                            field_ref: Some(ObjectFieldSelector {
                                field_path: "metadata.namespace".into(),
                                api_version: Some("v1".into()),
                            }),
                            ..Default::default()
                        }]),
                    }),
                    ..Default::default()
                },
            ]),
        }),
        ..Default::default()
    }
}

/// The work container's command: the runner, then the template's command and args.
pub fn runner_command(pool: &AgentPool, work: &Container) -> Vec<String> {
    let mut argv = vec![
        format!("{}/triad", crate::runner::protocol::BIN_DIR),
        "runner".to_owned(),
    ];
    if pool.spec.work_mode == WorkMode::Stream {
        argv.push("--stream".into());
    }
    argv.push("--".into());
    argv.extend(work.command.iter().flatten().cloned());
    argv.extend(work.args.iter().flatten().cloned());
    argv
}

/// Builds the agent pod from the validated template: the agent container first, the
/// runner's installer before the template's init containers, the template's first
/// container started through the runner, and the token in the agent container alone.
pub fn build(pool: &AgentPool, mut template: PodTemplateSpec, settings: &Settings) -> Blueprint {
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
    // No container gets the token by default; the agent's comes from its own volume.
    spec.automount_service_account_token = Some(false);
    // Service links would hand the work every Service address in the namespace.
    spec.enable_service_links = Some(false);
    spec.termination_grace_period_seconds = Some(termination_grace(
        spec.termination_grace_period_seconds,
        settings.cancel_grace_seconds,
    ));
    let restricted = pool.spec.pod_security == PodSecurity::Restricted;
    if restricted {
        let psc = spec.security_context.get_or_insert_with(Default::default);
        psc.run_as_non_root.get_or_insert(true);
        psc.seccomp_profile.get_or_insert_with(|| SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        });
        for c in spec
            .containers
            .iter_mut()
            .chain(spec.init_containers.iter_mut().flatten())
        {
            restricted_container_defaults(c);
        }
    }

    let mut work_container = None;
    if let Some(work) = spec.containers.first_mut() {
        work.command = Some(runner_command(pool, work));
        work.args = None;
        let mounts = work.volume_mounts.get_or_insert_with(Vec::new);
        mounts.push(mount(BIN_VOLUME, crate::runner::protocol::BIN_DIR, true));
        mounts.push(mount(RUN_VOLUME, crate::runner::protocol::RUN_DIR, false));
        work_container = Some(work.name.clone());
    }

    let mut env = agent_env(pool);
    env.push(value_env(
        "TRIAD_RUNNER_SOCKET",
        crate::runner::protocol::SOCKET,
    ));
    let agent = Container {
        name: AGENT_CONTAINER.into(),
        image: Some(settings.agent_image.clone()),
        args: Some(vec!["agent".into()]),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some(METRICS_PORT_NAME.into()),
            container_port: METRICS_PORT,
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        volume_mounts: Some(vec![
            mount(RUN_VOLUME, crate::runner::protocol::RUN_DIR, false),
            mount(TOKEN_VOLUME, TOKEN_DIR, true),
        ]),
        security_context: Some(agent_security()),
        ..Default::default()
    };
    spec.containers.insert(0, agent);
    let install = Container {
        name: INSTALL_CONTAINER.into(),
        image: Some(settings.agent_image.clone()),
        args: Some(vec![
            "runner".into(),
            "--install".into(),
            crate::runner::protocol::BIN_DIR.into(),
        ]),
        volume_mounts: Some(vec![mount(
            BIN_VOLUME,
            crate::runner::protocol::BIN_DIR,
            false,
        )]),
        security_context: Some(agent_security()),
        ..Default::default()
    };
    spec.init_containers
        .get_or_insert_with(Vec::new)
        .insert(0, install);
    let volumes = spec.volumes.get_or_insert_with(Vec::new);
    volumes.push(empty_dir(BIN_VOLUME));
    volumes.push(empty_dir(RUN_VOLUME));
    volumes.push(token_volume());

    if let Some(work) = work_container {
        // `kubectl logs <pod>` shows the work's output, not the agent's.
        meta.annotations
            .get_or_insert_with(BTreeMap::new)
            .insert("kubectl.kubernetes.io/default-container".into(), work);
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
                    {"name": "work", "image": "work:1", "command": ["python", "agent.py"], "args": ["--fast"],
                     "env": [{"name": "MINE", "value": "1"}]},
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

    fn settings() -> Settings {
        Settings {
            agent_image: "triad:dev".into(),
            cancel_grace_seconds: 10,
        }
    }

    fn built(p: &AgentPool) -> Blueprint {
        build(p, validate(p).unwrap(), &settings())
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

    fn mounts_of(c: &Container) -> Vec<(&str, &str, bool)> {
        c.volume_mounts
            .iter()
            .flatten()
            .map(|m| {
                (
                    m.name.as_str(),
                    m.mount_path.as_str(),
                    m.read_only == Some(true),
                )
            })
            .collect()
    }

    #[test]
    fn build_adds_the_agent_container_with_the_pools_settings() {
        let p = basic();
        let bp = built(&p);
        let spec = bp.template.spec.as_ref().unwrap();
        let names: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["triad-agent", "work", "sidecar"], "the agent first");
        let agent = &spec.containers[0];
        assert_eq!(agent.image.as_deref(), Some("triad:dev"));
        assert_eq!(agent.args.as_deref(), Some(&["agent".to_owned()][..]));
        let env = env_of(agent);
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
            ("TRIAD_RUNNER_SOCKET", "/triad/run/runner.sock"),
        ];
        let got: Vec<(&str, &str)> = env.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        assert_eq!(got, want);
        let port = &agent.ports.as_ref().unwrap()[0];
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
        let meta = bp.template.metadata.as_ref().unwrap();
        let labels = meta.labels.as_ref().unwrap();
        assert_eq!(
            labels["triad.dev/pool"], "workers",
            "the pool label cannot be spoofed"
        );
        assert_eq!(labels["app"], "demo");
        assert_eq!(
            meta.annotations.as_ref().unwrap()["kubectl.kubernetes.io/default-container"],
            "work"
        );
    }

    #[test]
    fn only_the_agent_container_holds_the_token() {
        let p = basic();
        let bp = built(&p);
        let spec = bp.template.spec.as_ref().unwrap();
        assert_eq!(spec.automount_service_account_token, Some(false));
        assert_eq!(spec.enable_service_links, Some(false));
        let token = spec
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == "triad-token")
            .expect("the token volume");
        let sources = token.projected.as_ref().unwrap().sources.as_ref().unwrap();
        assert!(sources[0].service_account_token.is_some());
        let token_mounts: Vec<&str> = spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .filter(|c| mounts_of(c).iter().any(|m| m.0 == "triad-token"))
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(token_mounts, ["triad-agent"]);
        assert!(mounts_of(&spec.containers[0]).contains(&(
            "triad-token",
            "/var/run/secrets/kubernetes.io/serviceaccount",
            true
        )));
        let work = &spec.containers[1];
        assert!(
            env_of(work).iter().all(|(k, _)| !k.starts_with("TRIAD_")),
            "the work gets none of the agent's settings: {:?}",
            env_of(work)
        );
    }

    #[test]
    fn the_work_container_starts_through_the_runner() {
        let p = basic();
        let bp = built(&p);
        let spec = bp.template.spec.as_ref().unwrap();
        let work = &spec.containers[1];
        assert_eq!(
            work.command.as_deref().unwrap(),
            [
                "/triad/bin/triad",
                "runner",
                "--",
                "python",
                "agent.py",
                "--fast"
            ]
        );
        assert_eq!(work.args, None);
        assert_eq!(env_of(work), vec![("MINE".to_owned(), "1".to_owned())]);
        assert_eq!(
            mounts_of(work),
            vec![
                ("triad-bin", "/triad/bin", true),
                ("triad-run", "/triad/run", false)
            ]
        );
        assert_eq!(spec.containers[2].command, None, "sidecars are left alone");
        let init = &spec.init_containers.as_ref().unwrap()[0];
        assert_eq!(init.name, "triad-install-runner");
        assert_eq!(
            init.args.as_deref().unwrap(),
            ["runner", "--install", "/triad/bin"]
        );

        let mut stream = basic();
        stream.spec.work_mode = WorkMode::Stream;
        let bp = built(&stream);
        assert_eq!(
            bp.template.spec.as_ref().unwrap().containers[1]
                .command
                .as_deref()
                .unwrap()[..4],
            ["/triad/bin/triad", "runner", "--stream", "--"]
        );
    }

    #[test]
    fn restricted_defaults_are_filled_in_and_privileged_pools_keep_theirs() {
        let p = basic();
        let spec = built(&p).template.spec.unwrap();
        let psc = spec.security_context.as_ref().unwrap();
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(
            psc.seccomp_profile.as_ref().map(|s| s.type_.as_str()),
            Some("RuntimeDefault")
        );
        for c in &spec.containers {
            let sc = c.security_context.as_ref().unwrap();
            assert_eq!(sc.allow_privilege_escalation, Some(false), "{}", c.name);
            assert_eq!(
                sc.capabilities.as_ref().unwrap().drop.as_deref(),
                Some(&["ALL".to_owned()][..]),
                "{}",
                c.name
            );
        }
        let mut open = basic();
        open.spec.pod_security = PodSecurity::Privileged;
        let spec = built(&open).template.spec.unwrap();
        assert!(spec.security_context.is_none());
        assert!(spec.containers[1].security_context.is_none());
    }

    #[test]
    fn the_termination_grace_covers_drain_and_cancel_grace() {
        assert_eq!(termination_grace(None, 10), 40);
        assert_eq!(termination_grace(Some(5), 10), 40, "a floor");
        assert_eq!(termination_grace(Some(120), 10), 120);
        assert_eq!(termination_grace(None, 60), 90);
        let p = basic();
        let bp = build(
            &p,
            validate(&p).unwrap(),
            &Settings {
                cancel_grace_seconds: 45,
                ..settings()
            },
        );
        assert_eq!(
            bp.template.spec.unwrap().termination_grace_period_seconds,
            Some(75)
        );
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
        let bp = built(&p);
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
    fn agents_run_as_the_pools_own_account_only() {
        let e = refused(json!({"serviceAccountName": "admin"}));
        assert_eq!(e.field, "spec.template.spec.serviceAccountName");
        assert!(e.message.contains("\"triad-agent-workers\""), "{e}");
        let e = refused(json!({"serviceAccount": "admin"}));
        assert_eq!(e.field, "spec.template.spec.serviceAccount");
        let p = pool(json!({
            "queues": [{"name": "q"}],
            "template": {"spec": {"serviceAccountName": "triad-agent-workers", "containers": [
                {"name": "a", "image": "i", "command": ["true"]}
            ]}}
        }));
        assert_eq!(built(&p).service_account, "triad-agent-workers");
    }

    #[test]
    fn the_hash_changes_with_the_template_and_the_pool_settings_only() {
        let p = basic();
        let h = built(&p).hash;
        assert_eq!(h.len(), 10);
        assert_eq!(built(&p).hash, h, "deterministic");
        let mut q = p.clone();
        q.spec.lease_seconds = 60;
        assert_ne!(built(&q).hash, h);
        let mut r = p.clone();
        let mut template = good_template();
        template["spec"]["containers"][0]["image"] = json!("work:2");
        r.spec.template = template.into();
        assert_ne!(built(&r).hash, h);
        let upgraded = Settings {
            agent_image: "triad:next".into(),
            ..settings()
        };
        assert_ne!(
            build(&p, validate(&p).unwrap(), &upgraded).hash,
            h,
            "a new Triad image rolls the agents"
        );
        let mut s = p.clone();
        s.spec.replicas = Some(9);
        assert_eq!(built(&s).hash, h, "scaling does not roll pods");
    }

    fn refused(spec: Value) -> TemplateError {
        let mut template =
            json!({"spec": {"containers": [{"name": "w", "image": "i", "command": ["true"]}]}});
        for (k, v) in spec.as_object().unwrap() {
            template["spec"][k] = v.clone();
        }
        let p = pool(json!({"queues": [{"name": "q"}], "template": template}));
        validate(&p).expect_err("must be refused")
    }

    #[test]
    fn the_work_command_is_required_and_without_triad_agent() {
        let e = refused(json!({"containers": [{"name": "w", "image": "i"}]}));
        assert_eq!(e.field, "spec.template.spec.containers[0].command");
        assert!(e.message.contains("is required"), "{e}");
        let e = refused(
            json!({"containers": [{"name": "w", "image": "i", "command": ["triad", "agent", "--", "true"]}]}),
        );
        assert_eq!(e.field, "spec.template.spec.containers[0].command");
        assert!(e.message.contains("Triad adds the agent container"), "{e}");
        let e = refused(
            json!({"containers": [{"name": "triad-agent", "image": "i", "command": ["true"]}]}),
        );
        assert_eq!(e.field, "spec.template.spec.containers[0].name");
        let e = refused(json!({"volumes": [{"name": "triad-run", "emptyDir": {}}]}));
        assert_eq!(e.field, "spec.template.spec.volumes[0].name");
    }

    #[test]
    fn restricted_pools_refuse_host_access_naming_the_field() {
        let c = |sc: Value| json!({"containers": [{"name": "w", "image": "i", "command": ["true"], "securityContext": sc}]});
        let cases: Vec<(Value, &str)> = vec![
            (
                json!({"hostNetwork": true}),
                "spec.template.spec.hostNetwork",
            ),
            (json!({"hostPID": true}), "spec.template.spec.hostPID"),
            (json!({"hostIPC": true}), "spec.template.spec.hostIPC"),
            (
                json!({"volumes": [{"name": "h", "hostPath": {"path": "/"}}]}),
                "spec.template.spec.volumes[0].hostPath",
            ),
            (
                json!({"volumes": [{"name": "t", "projected": {"sources": [{"serviceAccountToken": {"path": "t"}}]}}]}),
                "spec.template.spec.volumes[0].projected.sources[0].serviceAccountToken",
            ),
            (
                json!({"automountServiceAccountToken": true}),
                "spec.template.spec.automountServiceAccountToken",
            ),
            (
                json!({"securityContext": {"runAsUser": 0}}),
                "spec.template.spec.securityContext.runAsUser",
            ),
            (
                c(json!({"privileged": true})),
                "spec.template.spec.containers[0].securityContext.privileged",
            ),
            (
                c(json!({"capabilities": {"add": ["SYS_ADMIN"]}})),
                "spec.template.spec.containers[0].securityContext.capabilities.add",
            ),
            (
                c(json!({"allowPrivilegeEscalation": true})),
                "spec.template.spec.containers[0].securityContext.allowPrivilegeEscalation",
            ),
            (
                c(json!({"runAsNonRoot": false})),
                "spec.template.spec.containers[0].securityContext.runAsNonRoot",
            ),
            (
                c(json!({"seccompProfile": {"type": "Unconfined"}})),
                "spec.template.spec.containers[0].securityContext.seccompProfile.type",
            ),
            (
                json!({"containers": [{"name": "w", "image": "i", "command": ["true"], "ports": [{"containerPort": 80, "hostPort": 80}]}]}),
                "spec.template.spec.containers[0].ports[0].hostPort",
            ),
            (
                json!({"initContainers": [{"name": "x", "image": "i", "securityContext": {"privileged": true}}]}),
                "spec.template.spec.initContainers[0].securityContext.privileged",
            ),
        ];
        for (spec, field) in cases {
            let e = refused(spec.clone());
            assert_eq!(e.field, field, "{spec}: {e}");
            assert!(
                e.message.contains("spec.podSecurity: Privileged"),
                "{spec}: {e}"
            );
        }
        // NET_BIND_SERVICE is the one capability the restricted profile allows.
        let p = pool(
            json!({"queues": [{"name": "q"}], "template": {"spec": c(json!({"capabilities": {"add": ["NET_BIND_SERVICE"]}}))}}),
        );
        assert!(validate(&p).is_ok());
        // The opt-out takes all of it.
        let p = pool(
            json!({"queues": [{"name": "q"}], "podSecurity": "Privileged",
            "template": {"spec": {"hostNetwork": true, "volumes": [{"name": "h", "hostPath": {"path": "/"}}],
                "containers": [{"name": "w", "image": "i", "command": ["true"], "securityContext": {"privileged": true}}]}}}),
        );
        assert!(validate(&p).is_ok());
    }

    #[test]
    fn pod_is_named_owned_and_labelled() {
        let p = basic();
        let bp = built(&p);
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
