use clap::Args;

#[derive(Args, Debug)]
pub struct SimulateArgs {}

pub async fn run(_args: SimulateArgs) -> anyhow::Result<()> {
    anyhow::bail!("simulate is not built yet")
}
