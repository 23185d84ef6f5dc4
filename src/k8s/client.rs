use kube::{Client, Config};

/// Builds the client every Triad process uses: `KUBECONFIG` or `~/.kube/config` when set
/// up (a developer's shell, `kubectl triad`), else the pod's in-cluster service account,
/// whose token the kubelet projects into the agent's and the controller's containers.
pub async fn client() -> crate::Result<Client> {
    let config = Config::infer()
        .await
        .map_err(|e| crate::Error::Invalid(format!("no Kubernetes configuration found: {e}")))?;
    Ok(Client::try_from(config)?)
}
