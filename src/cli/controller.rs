use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use tracing::{error, info};

use crate::k8s::RoleContext;
use crate::k8s::lease::{LeaderElector, LeaderGate, run_election};
use crate::metrics::RoleLabels;
use crate::serve;

#[derive(Args, Debug)]
pub struct ControllerArgs {
    /// Roles this process runs, comma separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "scheduler,pools,supervisor",
        env = "TRIAD_ROLES"
    )]
    pub roles: Vec<String>,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080", env = "TRIAD_METRICS_ADDR")]
    pub metrics_addr: SocketAddr,
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "TRIAD_WATCH_NAMESPACE")]
    pub namespace: Option<String>,
    /// Elect a leader per role (off for a single local process).
    #[arg(long, default_value_t = false, env = "TRIAD_LEADER_ELECT")]
    pub leader_elect: bool,
    /// Namespace of the leader-election Leases.
    #[arg(long, env = "POD_NAMESPACE", default_value = "triad-system")]
    pub lease_namespace: String,
    /// This replica's identity in leader election (the pod name).
    #[arg(long, env = "POD_NAME", default_value = "triad-controller")]
    pub identity: String,
    /// Leader lease duration in seconds.
    #[arg(long, default_value_t = 15, env = "TRIAD_LEADER_LEASE_SECONDS")]
    pub leader_lease_seconds: u64,
}

const ROLES: [&str; 3] = ["scheduler", "pools", "supervisor"];

pub async fn run(args: ControllerArgs) -> anyhow::Result<()> {
    for role in &args.roles {
        anyhow::ensure!(
            ROLES.contains(&role.as_str()),
            "unknown role {role:?}: choose from {ROLES:?}"
        );
    }
    let client = crate::k8s::client::client().await?;
    let state = serve::State::new();
    let metrics = state.controller_metrics();
    let server = serve::spawn(args.metrics_addr, state.clone()).await?;
    info!(roles = ?args.roles, addr = %server.local_addr, "triad controller starting");

    let mut tasks = tokio::task::JoinSet::new();
    let mut releases = Vec::new();
    for role in args.roles.clone() {
        let gate = if args.leader_elect {
            let leases: Api<Lease> = Api::namespaced(client.clone(), &args.lease_namespace);
            releases.push(LeaderElector::new(
                leases.clone(),
                &role,
                &args.identity,
                Duration::from_secs(args.leader_lease_seconds),
            ));
            let elector = LeaderElector::new(
                leases,
                &role,
                &args.identity,
                Duration::from_secs(args.leader_lease_seconds),
            );
            let leader = metrics
                .leader
                .get_or_create(&RoleLabels { role: role.clone() })
                .clone();
            let (gate, election) = run_election(elector, move |leading| {
                leader.set(i64::from(leading));
            })
            .await;
            let name = role.clone();
            tasks.spawn(async move {
                match election.await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(anyhow::anyhow!("{name} leader election: {e}")),
                    Err(e) => Err(anyhow::anyhow!("{name} leader election task: {e}")),
                }
            });
            gate
        } else {
            metrics
                .leader
                .get_or_create(&RoleLabels { role: role.clone() })
                .set(1);
            LeaderGate::always()
        };
        let ctx = RoleContext {
            client: client.clone(),
            leader: gate,
            serve: state.clone(),
            namespace: args.namespace.clone(),
        };
        tasks.spawn(async move {
            let result = match role.as_str() {
                "scheduler" => crate::scheduler::run(ctx).await,
                "pools" => crate::pool::run(ctx).await,
                _ => crate::supervisor::run(ctx).await,
            };
            result.map_err(|e| anyhow::anyhow!("{role}: {e}"))
        });
    }
    state.set_ready(true);

    let outcome = tokio::select! {
        _ = super::shutdown_signal() => Ok(()),
        Some(ended) = tasks.join_next() => match ended {
            Ok(Ok(())) => Err(anyhow::anyhow!("a role stopped unexpectedly")),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(anyhow::anyhow!("a role panicked: {e}")),
        },
    };
    if let Err(e) = &outcome {
        // Exiting lets the Deployment restart us with clean caches and a fresh election.
        error!(error = %e, "controller stopping");
    }
    info!("shutting down");
    state.set_ready(false);
    tasks.shutdown().await;
    // Hand leadership over now rather than after a lease duration: rollouts and
    // scale-downs then fail over at once.
    for elector in releases {
        elector.release().await;
    }
    server.shutdown().await;
    outcome
}
