use std::path::PathBuf;

use clap::Args;

use crate::runner::protocol::{self, Mode};

/// `triad runner`: the work container's entrypoint (the pool controller writes it in
/// front of the template's command), or with `--install` the init container's copy step.
#[derive(Args, Debug)]
pub struct RunnerArgs {
    /// Copy this binary into DIR (as DIR/triad) and exit.
    #[arg(long, value_name = "DIR")]
    pub install: Option<PathBuf>,
    /// The socket the agent container connects to.
    #[arg(long, env = "TRIAD_RUNNER_SOCKET", default_value = protocol::SOCKET)]
    pub socket: PathBuf,
    /// Keep one process for many items (items as JSON lines on stdin).
    #[arg(long)]
    pub stream: bool,
    /// The work command and its arguments.
    #[arg(last = true)]
    pub command: Vec<String>,
}

pub async fn run(args: RunnerArgs) -> anyhow::Result<()> {
    if let Some(dir) = &args.install {
        return crate::runner::install(dir);
    }
    anyhow::ensure!(
        !args.command.is_empty(),
        "no work command: run `triad runner -- <command> [args…]`"
    );
    crate::runner::run(crate::runner::RunnerConfig {
        socket: args.socket,
        mode: if args.stream {
            Mode::Stream
        } else {
            Mode::PerItem
        },
        command: args.command,
        guard_work: true,
    })
    .await
}
