use std::path::Path;

use kube::config::{
    AuthInfo, Cluster, Context, KubeConfigOptions, Kubeconfig, NamedAuthInfo, NamedCluster,
    NamedContext,
};
use kube::{Client, Config};

/// Builds the client every Triad process uses.
///
/// Inside a real pod this is the usual inference (in-cluster service account). Under the
/// local node runner pods cannot see `/var/run/secrets/...`, so the runner mounts the
/// pod's bound service-account token in `TRIAD_SERVICEACCOUNT_DIR` and Triad builds the
/// same in-cluster identity from there: agents run with their real RBAC.
pub async fn client() -> crate::Result<Client> {
    let config = match std::env::var_os("TRIAD_SERVICEACCOUNT_DIR") {
        Some(dir) => service_account_dir_config(Path::new(&dir)).await?,
        None => Config::infer().await.map_err(|e| {
            crate::Error::Invalid(format!("no Kubernetes configuration found: {e}"))
        })?,
    };
    Ok(Client::try_from(config)?)
}

async fn service_account_dir_config(dir: &Path) -> crate::Result<Config> {
    let host = std::env::var("KUBERNETES_SERVICE_HOST")
        .map_err(|_| crate::Error::Invalid("KUBERNETES_SERVICE_HOST is not set".into()))?;
    let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
    let namespace = std::fs::read_to_string(dir.join("namespace"))
        .ok()
        .map(|s| s.trim().to_owned());
    let kubeconfig = Kubeconfig {
        clusters: vec![NamedCluster {
            name: "incluster".into(),
            cluster: Some(Cluster {
                server: Some(format!("https://{host}:{port}")),
                certificate_authority: Some(dir.join("ca.crt").to_string_lossy().into_owned()),
                ..Default::default()
            }),
            ..Default::default()
        }],
        auth_infos: vec![NamedAuthInfo {
            name: "serviceaccount".into(),
            auth_info: Some(AuthInfo {
                token_file: Some(dir.join("token").to_string_lossy().into_owned()),
                ..Default::default()
            }),
            ..Default::default()
        }],
        contexts: vec![NamedContext {
            name: "incluster".into(),
            context: Some(Context {
                cluster: "incluster".into(),
                user: Some("serviceaccount".into()),
                namespace,
                ..Default::default()
            }),
            ..Default::default()
        }],
        current_context: Some("incluster".into()),
        ..Default::default()
    };
    Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|e| crate::Error::Invalid(format!("service account in {}: {e}", dir.display())))
}
