use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = triad::cli::Cli::parse();
    triad::cli::init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("triad: cannot start the async runtime: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli.run()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("triad: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
