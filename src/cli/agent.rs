use clap::Args;

#[derive(Args, Debug)]
pub struct AgentArgs {
    /// The work command and its arguments, run once per item.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    anyhow::bail!("the agent runtime is not built yet (command {:?})", args.command)
}
