use std::time::Duration;

use clap::Args;

use crate::agent::config::{self, AgentConfig};

/// `triad agent`: every setting comes from the env the pool controller injects; the
/// flags are the same settings for running an agent by hand.
#[derive(Args, Debug)]
pub struct AgentArgs {
    /// The agent's name: its pod's name.
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    /// Namespace of the agent, its queues and their items.
    #[arg(long, env = "POD_NAMESPACE")]
    pub namespace: Option<String>,
    /// The pod's UID: makes the pod own the agent's Lease.
    #[arg(long, env = "POD_UID")]
    pub pod_uid: Option<String>,
    /// The pod's IP, where /metrics is served by default.
    #[arg(long, env = "POD_IP")]
    pub pod_ip: Option<String>,
    /// The AgentPool this agent belongs to (for logs).
    #[arg(long, env = "TRIAD_POOL")]
    pub pool: Option<String>,
    /// Queues and weights, e.g. "feature:3,bug:1".
    #[arg(long, env = "TRIAD_QUEUES")]
    pub queues: Option<String>,
    /// Lease duration; the lease is renewed at a third of it.
    #[arg(long, env = "TRIAD_LEASE_SECONDS", default_value_t = 15)]
    pub lease_seconds: u64,
    /// Persistent, or Mortal (exit after --max-items items).
    #[arg(long, env = "TRIAD_LIFECYCLE", default_value = "Persistent")]
    pub lifecycle: String,
    #[arg(long, env = "TRIAD_MAX_ITEMS")]
    pub max_items: Option<u32>,
    /// Wait, Exit or ScaleDown.
    #[arg(long, env = "TRIAD_EMPTY_QUEUE_POLICY", default_value = "Wait")]
    pub empty_queue_policy: String,
    /// On SIGTERM, seconds the running item may take to finish before it is released.
    #[arg(long, env = "TRIAD_DRAIN_SECONDS", default_value_t = 20)]
    pub drain_seconds: u64,
    /// Address of /metrics, /healthz and /readyz (default: $POD_IP:9090).
    #[arg(long, env = "TRIAD_METRICS_ADDR")]
    pub metrics_addr: Option<String>,
    /// How many of the best candidates a claim chooses among.
    #[arg(long, env = "TRIAD_CLAIM_TOP_K", default_value_t = 8)]
    pub claim_top_k: usize,
    /// Above this share of recent claims lost, read each candidate before claiming it
    /// (0 always, 1 never).
    #[arg(long, env = "TRIAD_CLAIM_PRECHECK_ABOVE", default_value_t = crate::agent::decide::PRECHECK_ABOVE_CONTENTION)]
    pub claim_precheck_above: f64,
    /// With the Exit policy: seconds of empty queues before exiting.
    #[arg(long, env = "TRIAD_IDLE_EXIT_SECONDS", default_value_t = 5)]
    pub idle_exit_seconds: u64,
    /// Least milliseconds between two progress/usage writes for one item.
    #[arg(long, env = "TRIAD_PROGRESS_INTERVAL_MS", default_value_t = 2000)]
    pub progress_interval_ms: u64,
    /// Internal: run as the guard of one work command (the agent starts it).
    #[arg(long, hide = true)]
    pub work_guard: bool,
    /// The work container's runner socket (agent pods): the work runs there. Without
    /// it, the work command after `--` runs as this process's child.
    #[arg(long, env = "TRIAD_RUNNER_SOCKET")]
    pub runner_socket: Option<std::path::PathBuf>,
    /// The work command and its arguments, run once per item (without a runner).
    #[arg(last = true)]
    pub command: Vec<String>,
}

/// A required setting: present and not empty.
fn required(value: Option<String>, what: &str) -> anyhow::Result<String> {
    value
        .filter(|v| !v.trim().is_empty())
        .ok_or_else(|| anyhow::anyhow!("{what} is required"))
}

impl AgentArgs {
    fn into_config(self) -> anyhow::Result<AgentConfig> {
        let err = anyhow::Error::msg;
        let name = required(self.pod_name, "POD_NAME (or --pod-name)")?;
        // The name goes into every claim (status.claim.agent) and names the agent's
        // Lease, `triad-agent-<name>`: both are object names of at most 253 characters.
        let longest = crate::api::MAX_NAME_LEN - "triad-agent-".len();
        anyhow::ensure!(
            name.chars().count() <= longest,
            "POD_NAME (or --pod-name) must be at most {longest} characters: the agent's Lease is named triad-agent-<POD_NAME>"
        );
        let namespace = required(self.namespace, "POD_NAMESPACE (or --namespace)")?;
        let queues = required(
            self.queues,
            "TRIAD_QUEUES (or --queues), e.g. \"feature:3,bug:1\",",
        )?;
        anyhow::ensure!(
            self.lease_seconds >= 3,
            "TRIAD_LEASE_SECONDS must be at least 3"
        );
        anyhow::ensure!(
            self.runner_socket.is_some() || !self.command.is_empty(),
            "no work command: run `triad agent -- <command> [args…]`, or set TRIAD_RUNNER_SOCKET to run work in a work container"
        );
        let lifecycle = config::parse_lifecycle(&self.lifecycle).map_err(err)?;
        if lifecycle == crate::api::LifecycleType::Mortal {
            anyhow::ensure!(
                self.max_items.is_some_and(|n| n >= 1),
                "a Mortal agent needs TRIAD_MAX_ITEMS of at least 1"
            );
        }
        Ok(AgentConfig {
            metrics_addr: config::metrics_addr(
                self.metrics_addr.as_deref(),
                self.pod_ip.as_deref(),
            )
            .map_err(err)?,
            queues: config::parse_queues(&queues).map_err(err)?,
            empty_queue_policy: config::parse_empty_queue_policy(&self.empty_queue_policy)
                .map_err(err)?,
            lifecycle,
            name,
            namespace,
            pod_uid: self.pod_uid.filter(|u| !u.is_empty()),
            pool: self.pool,
            lease_duration: Duration::from_secs(self.lease_seconds),
            max_items: self.max_items,
            drain: Duration::from_secs(self.drain_seconds),
            top_k: self.claim_top_k.clamp(1, 64),
            precheck_above: if self.claim_precheck_above.is_finite() {
                self.claim_precheck_above.clamp(0.0, 1.0)
            } else {
                crate::agent::decide::PRECHECK_ABOVE_CONTENTION
            },
            idle_exit: Duration::from_secs(self.idle_exit_seconds),
            progress_interval: Duration::from_millis(self.progress_interval_ms.max(100)),
            guard_work: true,
            command: self.command,
            runner_socket: self.runner_socket.filter(|p| !p.as_os_str().is_empty()),
        })
    }
}

pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    if args.work_guard {
        // Started by an agent for one work command; never returns.
        crate::agent::work::run_guard(&args.command);
    }
    let cfg = args.into_config()?;
    crate::agent::run(cfg, super::shutdown_signal()).await
}
