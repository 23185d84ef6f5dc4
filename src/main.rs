use clap::Parser;

/// mimalloc instead of the C library's allocator: with 50 000 cached WorkItems the
/// operator's RSS is ~20 MB lower than with glibc malloc, whose arenas kept ~25 MB free
/// but not returned (docs/performance.md §3); the static musl build gets the same
/// allocator as the glibc one. `no_thp`: without it mimalloc asks for transparent huge
/// pages for its arenas, which cost ~11 MB of RSS at idle.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc's `mi_option_e` (mimalloc.h); the sys crate
/// exports no constant for it.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// An agent gives memory it freed back to the system at once. mimalloc otherwise keeps
/// it for a delay that only runs out on later allocator activity, which an agent
/// waiting on a long item hardly has: with 50 000 queued items the initial list's
/// freed pages stayed resident (42.6 MB RSS instead of 25.5 MB, measured locally).
/// Agents allocate little once running, so purging at once costs them next to nothing;
/// the operator, which allocates constantly, keeps the default.
fn return_freed_memory_at_once() {
    // SAFETY: sets one of mimalloc's process-wide options, a plain integer it reads
    // whenever it decides to purge; any value is valid.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
}

fn main() -> std::process::ExitCode {
    // The work guard runs once per item, so it starts without the CLI parser, tracing
    // or the async runtime it has no use for: 2.9 → 0.9 ms of CPU per start (perf stat).
    let argv: Vec<String> = std::env::args().collect();
    if let Some(command) = triad::agent::work::guard_command(&argv) {
        triad::agent::work::run_guard(command);
    }
    let cli = triad::cli::Cli::parse();
    if matches!(cli.command, triad::cli::Command::Agent(_)) {
        return_freed_memory_at_once();
    }
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
