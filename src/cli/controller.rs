use std::net::SocketAddr;

use clap::Args;
use tracing::info;

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
}

pub async fn run(args: ControllerArgs) -> anyhow::Result<()> {
    let state = serve::State::new();
    let server = serve::spawn(args.metrics_addr, state.clone()).await?;
    info!(roles = ?args.roles, addr = %server.local_addr, "triad controller started");
    state.set_ready(true);
    super::shutdown_signal().await;
    info!("shutting down");
    state.set_ready(false);
    server.shutdown().await;
    Ok(())
}
