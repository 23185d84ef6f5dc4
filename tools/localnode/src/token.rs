//! Service-account identity of a pod's processes.
//!
//! A real kubelet projects a bound token into /var/run/secrets/kubernetes.io/serviceaccount.
//! Host processes cannot see a per-pod mount there, so the runner writes the same three files
//! (`token`, `ca.crt`, `namespace`) into `<pod dir>/serviceaccount/` and points the processes
//! at it with `TRIAD_SERVICEACCOUNT_DIR`; the `triad` binary builds its in-cluster config
//! from that directory plus `KUBERNETES_SERVICE_HOST`/`KUBERNETES_SERVICE_PORT`. The token
//! comes from the TokenRequest API, bound to the pod (it dies with the pod), so agents run
//! with their real RBAC identity, never the runner's admin credentials.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::PostParams;
use kube::{Api, Client};

pub const EXPIRATION_SECONDS: i64 = 3600;

pub struct Token {
    pub token: String,
    /// How long until the runner should fetch a fresh one (80 % of its life, as the kubelet).
    pub refresh_in: Duration,
}

/// Whether the pod wants a token: the pod's `automountServiceAccountToken` wins, then the
/// service account's, then the default (yes).
pub async fn wanted(client: &Client, pod: &Pod, sa: &str) -> Result<bool, String> {
    if let Some(v) = pod
        .spec
        .as_ref()
        .and_then(|s| s.automount_service_account_token)
    {
        return Ok(v);
    }
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    match api.get_opt(sa).await {
        Ok(Some(account)) => Ok(account.automount_service_account_token.unwrap_or(true)),
        Ok(None) => Err(format!("serviceaccount {ns}/{sa} not found")),
        Err(e) => Err(format!("reading serviceaccount {ns}/{sa}: {e}")),
    }
}

pub async fn request(client: &Client, pod: &Pod, sa: &str) -> Result<Token, String> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            // Empty audiences means the apiserver's own, which is what in-cluster clients need.
            audiences: vec![],
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
            expiration_seconds: Some(EXPIRATION_SECONDS),
        },
        ..Default::default()
    };
    let response = api
        .create_token_request(sa, &PostParams::default(), &request)
        .await
        .map_err(|e| format!("requesting a token for serviceaccount {ns}/{sa}: {e}"))?;
    let status = response
        .status
        .ok_or_else(|| format!("token request for {ns}/{sa} returned no status"))?;
    let now = k8s_openapi::jiff::Timestamp::now();
    let life = status
        .expiration_timestamp
        .0
        .duration_since(now)
        .as_secs()
        .max(60);
    let refresh_secs = u64::try_from(life).unwrap_or(60) * 4 / 5;
    Ok(Token {
        token: status.token,
        refresh_in: Duration::from_secs(refresh_secs),
    })
}

/// Writes a file so that a reader sees either the old or the new content, never a torn one:
/// clients re-read the token file while the runner refreshes it.
fn write_atomic(dir: &Path, name: &str, content: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(content)?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(name))
}

pub fn write_files(dir: &Path, token: &str, ca_pem: &[u8], namespace: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    write_atomic(dir, "ca.crt", ca_pem)?;
    write_atomic(dir, "namespace", namespace.as_bytes())?;
    write_atomic(dir, "token", token.as_bytes())
}
