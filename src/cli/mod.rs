//! The `triad` command line: one binary for the controller, the agent runtime and the
//! user-facing commands.

mod agent;
mod controller;
mod plugin;
mod runner;
mod simulate;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

#[derive(Parser, Debug)]
#[command(
    name = "triad",
    version,
    about = "Reliable background work on Kubernetes"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the operator's roles (scheduler, pools, supervisor).
    Controller(controller::ControllerArgs),
    /// Run inside an agent pod: claim items from the pool's queues and run the work command.
    Agent(agent::AgentArgs),
    /// Run inside an agent pod's work container: start the work command for each item
    /// the agent container hands over.
    Runner(runner::RunnerArgs),
    /// Print the CustomResourceDefinitions as YAML.
    Crds,
    /// Queues, pools and agents at a glance.
    Status(plugin::StatusArgs),
    /// A request's items with phase, agent, attempt, progress and why they wait.
    Tree(plugin::TreeArgs),
    /// Return DeadLettered items to Queued with attempts reset.
    Redrive(plugin::RedriveArgs),
    /// Cancel items, or whole requests (`wr/<name>`).
    Cancel(plugin::CancelArgs),
    /// The agent pod logs of an item's attempt.
    Logs(plugin::LogsArgs),
    /// A work command that simulates an AI agent from its payload (for demos and tests).
    Simulate(simulate::SimulateArgs),
}

impl Cli {
    pub async fn run(self) -> anyhow::Result<()> {
        match self.command {
            Command::Controller(args) => controller::run(args).await,
            Command::Agent(args) => agent::run(args).await,
            Command::Runner(args) => runner::run(args).await,
            Command::Simulate(args) => simulate::run(args).await,
            Command::Status(args) => plugin::status(args).await,
            Command::Tree(args) => plugin::tree(args).await,
            Command::Redrive(args) => plugin::redrive(args).await,
            Command::Cancel(args) => plugin::cancel(args).await,
            Command::Logs(args) => plugin::logs(args).await,
            Command::Crds => {
                print!("{}", crate::api::crds_yaml()?);
                Ok(())
            }
        }
    }
}

/// Logs go to stderr, filtered by `RUST_LOG` (default `info`); `TRIAD_LOG_FORMAT=json`
/// switches to JSON lines for log collectors.
pub fn init_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only on a terminal: in a container log (`kubectl logs`) escape codes are noise.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    if std::env::var("TRIAD_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Resolves when the process gets SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        // Without a SIGTERM handler only Ctrl-C can stop us; wait for that.
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
}
