//! triad-localnode: a development-only node runner. It registers a Node, keeps it Ready,
//! and runs the containers of the pods bound to it as local processes (the `triad` binary
//! standing in for the image), reporting their status to the API server like a kubelet.
//! See README.md in this directory.

mod command;
mod env;
mod ipalloc;
mod node;
mod pod;
mod pods;
mod podstatus;
mod probe;
mod runtime;
mod status;
mod token;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::Context as _;
use base64::Engine as _;
use clap::Parser;
use kube::Client;

/// Runs the pods bound to a Node as local processes (development and tests only).
#[derive(Parser, Debug)]
#[command(name = "triad-localnode", version)]
struct Args {
    /// Name of the Node to register and serve.
    #[arg(long)]
    node_name: String,
    /// Directory for per-pod working directories, logs and service-account files.
    #[arg(long)]
    work_dir: PathBuf,
    /// The `triad` binary that runs wherever a container's command is `triad` (default:
    /// `triad` on PATH).
    #[arg(long, env = "TRIAD_BIN")]
    triad_bin: Option<PathBuf>,
}

/// What every pod worker shares.
pub struct Ctx {
    pub client: Client,
    pub node_name: String,
    pub work_dir: PathBuf,
    pub triad_bin: Option<PathBuf>,
    pub api_host: String,
    pub api_port: u16,
    /// PEM bundle of the cluster CA, written as the pods' `ca.crt`.
    pub ca_pem: Vec<u8>,
    /// PATH of the runner, the default PATH of containers.
    pub path: String,
    ips: Mutex<ipalloc::IpPool>,
}

impl Ctx {
    pub fn ips(&self) -> MutexGuard<'_, ipalloc::IpPool> {
        // The pool stays consistent even if a holder panicked mid-call (each method is a
        // single set operation), so a poisoned lock is still usable.
        self.ips
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn pem_bundle(ders: &[Vec<u8>]) -> Vec<u8> {
    let mut out = String::new();
    for der in ders {
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        for chunk in b64.as_bytes().chunks(64) {
            out.push_str(&String::from_utf8_lossy(chunk));
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    out.into_bytes()
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    if path.is_absolute() {
        Ok(path.to_path_buf())
    } else {
        Ok(std::env::current_dir()?.join(path))
    }
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

async fn wait_for_stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!(
            "cannot install signal handlers; stop with SIGKILL (pods die with the runner)"
        );
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = int.recv() => tracing::info!("SIGINT: stopping"),
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let work_dir = absolute(&args.work_dir)?;
    std::fs::create_dir_all(&work_dir)
        .with_context(|| format!("creating {}", work_dir.display()))?;
    // Pods of an earlier runner are restarted by policy; their old processes must go first.
    runtime::sweep_stale_groups(&work_dir);

    let config = kube::Config::infer().await.context("loading kubeconfig")?;
    let api_host = config.cluster_url.host().unwrap_or("127.0.0.1").to_string();
    let api_port = config.cluster_url.port_u16().unwrap_or(443);
    let ca_pem = pem_bundle(config.root_cert.as_deref().unwrap_or_default());
    let client = Client::try_from(config).context("building API client")?;

    let triad_bin = match args.triad_bin {
        Some(p) => Some(absolute(&p)?),
        None => find_on_path("triad"),
    };
    match &triad_bin {
        Some(p) if p.is_file() => {
            tracing::info!(triad = %p.display(), "containers running `triad` use this binary")
        }
        Some(p) => {
            tracing::warn!(triad = %p.display(), "triad binary does not exist yet; pods running it will wait")
        }
        None => tracing::warn!(
            "no triad binary (--triad-bin / TRIAD_BIN); pods running `triad` will not start"
        ),
    }

    let ips = ipalloc::IpPool::claim(
        &args.node_name,
        &std::env::temp_dir().join("triad-localnode-ip-ranges"),
    );
    let ready_since = node::register(&client, &args.node_name)
        .await
        .context("registering the node")?;
    let heartbeat = tokio::spawn(node::heartbeat(
        client.clone(),
        args.node_name.clone(),
        ready_since,
    ));

    let ctx = Arc::new(Ctx {
        client,
        node_name: args.node_name,
        work_dir: work_dir.clone(),
        triad_bin,
        api_host,
        api_port,
        ca_pem,
        path: std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".to_string()),
        ips: Mutex::new(ips),
    });
    tracing::info!(node = %ctx.node_name, work_dir = %work_dir.display(), "serving pods");
    pods::run(ctx, wait_for_stop_signal()).await;
    heartbeat.abort();
    // Belt and braces: any group a worker could not stop in time.
    runtime::sweep_stale_groups(&work_dir);
    tracing::info!("stopped");
    Ok(())
}

fn main() -> std::process::ExitCode {
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == runtime::PAUSE_ARG)
    {
        runtime::pause_main();
    }
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn")),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("triad-localnode: starting the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "triad-localnode failed");
            std::process::ExitCode::FAILURE
        }
    }
}
