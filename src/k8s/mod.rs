//! The thin Kubernetes layer shared by the roles: building a client, the claim and
//! fence protocol on WorkItems, agent leases and leader election.

pub mod client;
pub mod fence;
pub mod lease;
pub mod queue;
pub mod watch;

/// What every controller role gets: a client, its leader gate, the metrics registry
/// holder, and the namespace it watches (`None` = all namespaces).
#[derive(Clone)]
pub struct RoleContext {
    pub client: kube::Client,
    pub leader: lease::LeaderGate,
    pub serve: crate::serve::State,
    pub namespace: Option<String>,
}

impl RoleContext {
    /// An API handle in the watched scope.
    pub fn api<K>(&self) -> kube::Api<K>
    where
        K: kube::Resource<Scope = kube::core::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        match &self.namespace {
            Some(ns) => kube::Api::namespaced(self.client.clone(), ns),
            None => kube::Api::all(self.client.clone()),
        }
    }
}

/// Field managers, one per role, so server-side apply and managedFields say who wrote what.
pub mod managers {
    pub const SCHEDULER: &str = "triad-scheduler";
    pub const AGENT: &str = "triad-agent";
    pub const POOLS: &str = "triad-pools";
    pub const SUPERVISOR: &str = "triad-supervisor";
    /// The `kubectl triad` plugin's writes (redrive, cancel).
    pub const CLI: &str = "kubectl-triad";
}

/// The current time as a Kubernetes `Time`.
pub fn now() -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Time {
    k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now())
}

/// True for 404 Not Found.
pub fn is_not_found(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(s) if s.code == 404)
}

/// True for 409 Conflict (a stale resourceVersion or an existing name).
pub fn is_conflict(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(s) if s.code == 409)
}

/// Patch parameters that name the writing role as field manager.
pub fn patch_params(manager: &str) -> kube::api::PatchParams {
    kube::api::PatchParams {
        field_manager: Some(manager.to_owned()),
        ..Default::default()
    }
}
