//! Benchmark and chaos harness for Triad: `make bench` and `make chaos` run it against a
//! dedicated local cluster (hack/harness.sh bench, hack/harness.sh chaos).

mod bench;
mod chaos;
mod common;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "triad-bench")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Throughput, write cost, Job comparison, latency, conflicts, memory.
    Bench(bench::BenchArgs),
    /// Faults while 2 000 items run; counts lost and double-completed items.
    Chaos(chaos::ChaosArgs),
    /// Only the operator-memory measurement of `bench` (idle, and with 50 000 items).
    Memory(bench::MemoryArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Bench(a) => bench::run(a).await,
        Cmd::Chaos(a) => chaos::run(a).await,
        Cmd::Memory(a) => bench::memory(a).await,
    }
}
